--- cairnloop.webhook: a ready-made notifier that POSTs every message to one
-- URL as a JSON event, signed per the Standard Webhooks specification
-- (https://www.standardwebhooks.com).
--
--   CAIRNLOOP_WEBHOOK_URL=https://hooks.example.com/cairnloop \
--   CAIRNLOOP_WEBHOOK_SECRET=whsec_... \
--   cairnloop work --http-allow https://hooks.example.com/ --policy lua/cairnloop/webhook.lua
--
--   -- or from a policy script of one's own:
--   local cl = require "cairnloop"
--   require("cairnloop.webhook").install(cl, { url = "https://...", secret = "whsec_...",
--     timeout_ms = 5000, headers = { ["x-tenant"] = "acme" } })
--
-- Loaded as a policy file it reads CAIRNLOOP_WEBHOOK_URL,
-- CAIRNLOOP_WEBHOOK_SECRET (several secrets, for rotation: separated by
-- spaces or commas) and CAIRNLOOP_WEBHOOK_TIMEOUT_MS.
--
-- Each delivery sends
--   {"type":"message.outbound","timestamp":"2024-05-01T12:00:00Z",
--    "data":{"message_id":42,"conversation_id":7,"customer_ref":"cus_1"|null,
--            "template_id":"welcome_v1","bulk_envelope_id":"<uuid>"|null,
--            "role":"...","content":"...","attempt":1,"idempotency_key":"cl-msg-42"}}
-- with the headers webhook-id (the delivery's idempotency key, the same on
-- every attempt), webhook-timestamp (Unix seconds) and webhook-signature
-- ("v1,<base64 HMAC-SHA256 of '<id>.<timestamp>.<body>'>", one per secret,
-- space-separated).  The receiver's answer decides the outcome: 2xx sent;
-- 410 discarded at once; 429 and 503 retried no sooner than their
-- Retry-After; anything else (and a failed request) retried with backoff.
-- Secrets never appear in a message or a log line.
local modname = ...

local M = {}

M.EVENT_TYPE = "message.outbound"
M.DEFAULT_TIMEOUT_MS = 5000
-- The engine's HTTP client refuses longer transfers (src/http.h).
M.MAX_TIMEOUT_MS = 300000
-- The engine waits at most a day for a Retry-After (src/policy.c); the
-- message says what it will do.
M.MAX_RETRY_AFTER = 86400

-- Headers the notifier sets itself: a caller's value would break the
-- signature or the body's meaning.
local RESERVED = {
  ["webhook-id"] = true, ["webhook-timestamp"] = true, ["webhook-signature"] = true,
  ["content-type"] = true,
}

local OPTIONS = { url = true, secret = true, timeout_ms = true, headers = true }

-- ------------------------------------------------------------------ JSON

local ESCAPES = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
  ["\r"] = "\\r", ["\t"] = "\\t",
}
local function escape_char(c) return ESCAPES[c] or string.format("\\u%04x", c:byte()) end

-- Text from the database is valid UTF-8; anything else (a host's own
-- notifier input) would make the body invalid JSON, so each byte that
-- does not start a valid sequence becomes U+FFFD.
local function valid_utf8(s)
  if utf8.len(s) then return s end
  local out, i = {}, 1
  while i <= #s do
    local n, bad = utf8.len(s, i)
    if n then
      out[#out + 1] = s:sub(i)
      break
    end
    out[#out + 1] = s:sub(i, bad - 1)
    out[#out + 1] = "\u{FFFD}"
    i = bad + 1
  end
  return table.concat(out)
end

--- A JSON string literal: quotes, backslashes and control characters
-- escaped (DEL too), everything else passed through as UTF-8.
function M.json_string(s)
  return '"' .. (valid_utf8(s):gsub('[%c"\\]', escape_char)) .. '"'
end

local function json_value(v)
  local t = type(v)
  if v == nil then return "null" end
  if t == "string" then return M.json_string(v) end
  if t == "boolean" then return tostring(v) end
  if t == "number" then
    if math.type(v) == "integer" then return string.format("%d", v) end
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    return string.format("%.17g", v)
  end
  error("webhook: cannot encode a " .. t .. " as JSON", 2)
end

--- A JSON object from an ordered list of { key, value } pairs (a nil value
-- is written as null, and the key order is kept, so the bytes signed are
-- the same for the same input).  A value may itself be such a list,
-- marked { object = true, ... }.
function M.json_object(pairs_)
  local parts = {}
  for i, kv in ipairs(pairs_) do
    local v = kv[2]
    if type(v) == "table" and v.object then v = M.json_object(v) else v = json_value(v) end
    parts[i] = M.json_string(kv[1]) .. ":" .. v
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- ------------------------------------------------------------ the event

-- A message field: at the top of the message table, or in its metadata
-- (the shape older engines pass).
local function field(message, k)
  local v = message[k]
  if v == nil and type(message.metadata) == "table" then v = message.metadata[k] end
  if v == "" then v = nil end
  return v
end

--- The body of one delivery: the event as JSON.
function M.event(message, conversation, delivery, now)
  conversation = conversation or {}
  return M.json_object {
    { "type", M.EVENT_TYPE },
    { "timestamp", os.date("!%Y-%m-%dT%H:%M:%SZ", now) },
    { "data", { object = true,
      { "message_id", message.id },
      { "conversation_id", message.conversation_id or conversation.id },
      { "customer_ref", conversation.customer_ref },
      { "template_id", field(message, "template_id") },
      { "bulk_envelope_id", field(message, "bulk_envelope_id") },
      { "role", message.role },
      { "content", message.content },
      { "attempt", delivery.attempt },
      { "idempotency_key", delivery.idempotency_key },
    } },
  }
end

--- The webhook-signature header value: "v1,<base64>" per key, space-separated.
function M.signature(crypto, keys, id, timestamp, body)
  local signed = id .. "." .. timestamp .. "." .. body
  local sigs = {}
  for i, key in ipairs(keys) do
    sigs[i] = "v1," .. crypto.base64_encode(crypto.hmac_sha256(key, signed))
  end
  return table.concat(sigs, " ")
end

-- ------------------------------------------------------ configuration

-- Configuration errors name the option, not a line of this file.
local function fail(msg) error("webhook: " .. msg, 0) end

-- The signing keys: the base64-decoded part of each "whsec_..." secret.
-- Errors name the option and the secret's position, never its text.
local function decode_secrets(crypto, secret, option)
  local list = secret
  if type(secret) == "string" then list = { secret } end
  if type(list) ~= "table" or #list == 0 then
    fail(option .. " is required: a \"whsec_...\" secret, or a list of them for rotation")
  end
  local keys = {}
  for i, s in ipairs(list) do
    local which = #list > 1 and string.format("%s (secret %d of %d)", option, i, #list) or option
    if type(s) ~= "string" then fail(which .. " must be a string") end
    if s:sub(1, 6) ~= "whsec_" then
      fail(which .. " must start with \"whsec_\" (the base64 of the key follows it)")
    end
    local key = crypto.base64_decode(s:sub(7))
    if not key then fail(which .. " is not valid base64 after \"whsec_\"") end
    if #key == 0 then fail(which .. " has an empty key after \"whsec_\"") end
    keys[i] = key
  end
  return keys
end

local function check_timeout(v, option)
  if math.type(v) ~= "integer" or v < 1 or v > M.MAX_TIMEOUT_MS then
    fail(string.format("%s must be an integer from 1 to %d (milliseconds)", option, M.MAX_TIMEOUT_MS))
  end
  return v
end

local function check_headers(headers)
  local out = {}
  if headers == nil then return out end
  if type(headers) ~= "table" then fail("headers must be a table of name = value") end
  for k, v in pairs(headers) do
    if type(k) ~= "string" or type(v) ~= "string" then fail("headers must map strings to strings") end
    if RESERVED[k:lower()] then fail("headers: \"" .. k .. "\" is set by the notifier itself") end
    if k:find("[^%w!#$%%&'*+.^_`|~-]") or v:find("[\r\n\0]") then
      fail("headers: \"" .. k .. "\" is not a valid header")
    end
    out[k] = v
  end
  return out
end

-- What messages show of the URL: no query or fragment, which may carry a
-- token.
local function shown(url) return (url:gsub("[?#].*$", "")) end

--- Reads the configuration of a --policy load from the environment.
function M.env_options(cl)
  local opts = {
    url = cl.getenv("CAIRNLOOP_WEBHOOK_URL"),
    secret = {},
  }
  local secrets = cl.getenv("CAIRNLOOP_WEBHOOK_SECRET")
  if secrets then
    for s in secrets:gmatch("[^%s,]+") do opts.secret[#opts.secret + 1] = s end
  end
  local timeout = cl.getenv("CAIRNLOOP_WEBHOOK_TIMEOUT_MS")
  if timeout then
    opts.timeout_ms = math.tointeger(tonumber(timeout))
    if not opts.timeout_ms then
      fail("CAIRNLOOP_WEBHOOK_TIMEOUT_MS must be an integer (milliseconds)")
    end
  end
  return opts
end

-- ------------------------------------------------------------ outcome

-- Seconds to wait from a Retry-After value (delay-seconds or an HTTP
-- date), or nil when it says nothing usable.
local function retry_after(cl, value, now)
  if not value then return nil end
  local secs = value:match("^%s*(%d+)%s*$")
  local wait = secs and tonumber(secs)
  if not wait then
    local at = cl.http.parse_date(value)
    if not at then return nil end
    wait = math.max(0, at - now)
  end
  return math.tointeger(math.min(wait, M.MAX_RETRY_AFTER))
end

-- One line of the response body for the failure message (a receiver
-- often says why it refused): at most 200 bytes, valid UTF-8 (the job's
-- errors are JSON), no control characters.
local function excerpt(body)
  if type(body) ~= "string" or body == "" then return "" end
  local line = valid_utf8(body:match("^%s*([^\r\n]*)"):sub(1, 200)):gsub("%c", " ")
  if line == "" then return "" end
  return ": " .. line
end

--- The notifier for validated options (see install).
function M.notifier(cl, cfg)
  local where = shown(cfg.url)
  return function(message, conversation, delivery)
    local now = os.time()
    local id = delivery.idempotency_key
    local body = M.event(message, conversation, delivery, now)
    local headers = {}
    for k, v in pairs(cfg.headers) do headers[k] = v end
    headers["content-type"] = "application/json"
    headers["webhook-id"] = id
    headers["webhook-timestamp"] = tostring(now)
    headers["webhook-signature"] = M.signature(cl.crypto, cfg.keys, id, now, body)

    local res, reason, detail = cl.http.request {
      method = "POST", url = cfg.url, headers = headers, body = body, timeout_ms = cfg.timeout_ms,
    }
    if not res then
      if reason == "timeout" then
        return nil, string.format("timeout after %d ms from %s", cfg.timeout_ms, where),
          { reason = "http_timeout" }
      elseif reason == "not_allowed" then
        return nil, "not allowed: " .. where .. " (allow it with --http-allow)",
          { reason = "not_allowed" }
      end
      local why = tostring(reason)
      if detail and detail ~= "" then why = why .. " (" .. detail .. ")" end
      return nil, why .. " for " .. where, { reason = "http_error" }
    end

    local status = res.status
    if status >= 200 and status < 300 then return true end
    local msg = string.format("HTTP %d from %s", status, where)
    if status == 410 then
      return nil, msg .. " (gone: not retried)" .. excerpt(res.body),
        { reason = "http_status", discard = true }
    end
    if status == 429 or status == 503 then
      local wait = retry_after(cl, res.headers and res.headers["retry-after"], now)
      if wait then
        return nil, string.format("%s (retry after %d s)%s", msg, wait, excerpt(res.body)),
          { reason = "http_status", retry_after = wait }
      end
    elseif status >= 300 and status < 400 then
      msg = msg .. " (redirects are not followed)"
    end
    return nil, msg .. excerpt(res.body), { reason = "http_status" }
  end
end

-- The option names errors use: the table keys of install(), or the
-- environment variables of a --policy load.
local OPTION_NAMES = { url = "url", secret = "secret", timeout_ms = "timeout_ms" }
local ENV_NAMES = {
  url = "CAIRNLOOP_WEBHOOK_URL", secret = "CAIRNLOOP_WEBHOOK_SECRET",
  timeout_ms = "CAIRNLOOP_WEBHOOK_TIMEOUT_MS",
}

local function setup(cl, opts, names)
  if type(cl) ~= "table" or type(cl.notifier) ~= "function" or type(cl.http) ~= "table"
      or type(cl.crypto) ~= "table" then
    fail("install(cl, opts) takes a policy script's require \"cairnloop\" (with cl.http and cl.crypto)")
  end
  local url = opts.url
  if type(url) ~= "string" or url == "" then fail(names.url .. " is required") end
  if not url:lower():find("^https?://[^/?#]") then
    fail(names.url .. " must be an http:// or https:// URL")
  end
  local cfg = {
    url = url,
    keys = decode_secrets(cl.crypto, opts.secret, names.secret),
    timeout_ms = opts.timeout_ms == nil and M.DEFAULT_TIMEOUT_MS
      or check_timeout(opts.timeout_ms, names.timeout_ms),
    headers = check_headers(opts.headers),
  }
  local has_agent = false
  for k in pairs(cfg.headers) do has_agent = has_agent or k:lower() == "user-agent" end
  if not has_agent then cfg.headers["user-agent"] = "cairnloop/" .. tostring(cl.VERSION or "?") end
  local fn = M.notifier(cl, cfg)
  cl.notifier(fn)
  if cl.log then
    cl.log("info", string.format("webhook: POST to %s, %d signing secret%s, timeout %d ms",
      shown(url), #cfg.keys, #cfg.keys == 1 and "" or "s", cfg.timeout_ms))
  end
  return fn
end

--- Validates `opts` and registers the notifier with `cl` (a policy
-- script's require "cairnloop").  Raises, naming the option, on a missing
-- or malformed one.  Returns the notifier function.
function M.install(cl, opts)
  if type(opts) ~= "table" then fail("install(cl, opts): opts must be a table") end
  for k in pairs(opts) do
    if not OPTIONS[k] then fail("unknown option " .. tostring(k)) end
  end
  return setup(cl, opts, OPTION_NAMES)
end

-- Loaded as a --policy file (no module name): configured from the
-- environment, whose variables the errors name.
if modname == nil then
  local cl = require "cairnloop"
  setup(cl, M.env_options(cl), ENV_NAMES)
end

return M
