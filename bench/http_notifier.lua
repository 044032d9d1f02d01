-- A stand-in for lua/cairnloop/webhook.lua while it is written: POSTs each
-- message as JSON, signed with the Standard Webhooks headers, to
-- $CAIRNLOOP_WEBHOOK_URL with the key of $CAIRNLOOP_WEBHOOK_SECRET.
local cl = require "cairnloop"

local url = assert(cl.getenv("CAIRNLOOP_WEBHOOK_URL"), "CAIRNLOOP_WEBHOOK_URL is not set")
local key = assert(cl.crypto.base64_decode((cl.getenv("CAIRNLOOP_WEBHOOK_SECRET") or ""):gsub("^whsec_", "")))

local function str(s)
  return '"' .. tostring(s):gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

cl.notifier(function(message, conversation, delivery)
  local body = string.format(
    '{"type":"message.outbound","data":{"message":{"id":%d,"conversation_id":%d,"content":%s,'
      .. '"template_id":%s},"conversation":{"id":%d},"attempt":%d}}',
    message.id, conversation.id, str(message.content), str(message.template_id or ""),
    conversation.id, delivery.attempt)
  local ts = tostring(os.time())
  local id = delivery.idempotency_key
  local sig = cl.crypto.base64_encode(cl.crypto.hmac_sha256(key, id .. "." .. ts .. "." .. body))
  local res, reason = cl.http.request {
    method = "POST", url = url, body = body, timeout_ms = 5000,
    headers = { ["content-type"] = "application/json", ["webhook-id"] = id,
      ["webhook-timestamp"] = ts, ["webhook-signature"] = "v1," .. sig },
  }
  if not res then return nil, reason, { reason = reason == "timeout" and "http_timeout" or "http_error" } end
  if res.status >= 200 and res.status < 300 then return true end
  return nil, "HTTP " .. res.status, { reason = "http_status" }
end)
