--- A webhook receiver that checks Standard Webhooks signatures
-- (examples/receiver/nginx.conf; https://www.standardwebhooks.com): what a
-- service receiving Cairnloop's webhook notifier does before it trusts a
-- delivery.
--
-- A delivery carries `webhook-id`, `webhook-timestamp` (Unix seconds) and
-- `webhook-signature`: space-separated `v1,<base64 HMAC-SHA256>` entries,
-- each over "<id>.<timestamp>.<body>" with the key of the secret
-- "whsec_<base64 key>".  One matching entry and a timestamp within five
-- minutes of now accept it (200); anything else is refused (401) and never
-- processed.  An id accepted before is acknowledged again (200) but counted
-- as a duplicate: the notifier keeps the id of a message across attempts,
-- so this is how a receiver stays idempotent.
--
-- HMAC-SHA256 is OpenSSL's, called through LuaJIT's FFI: nginx itself
-- links libcrypto, so its symbols are already there.
local ffi = require "ffi"
local cjson = require "cjson.safe"

ffi.cdef [[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md,
                    unsigned int *md_len);
int CRYPTO_memcmp(const void *a, const void *b, size_t len);
]]

local M = {}

-- Signatures older or newer than this are refused: a captured delivery
-- cannot be replayed later (the specification's recommendation).
local TOLERANCE_S = 5 * 60

local crypto -- the library that has HMAC: nginx's own, else libcrypto loaded
local key    -- the secret's raw key bytes

local function load_crypto()
  if pcall(function() return ffi.C.HMAC end) then return ffi.C end
  for _, name in ipairs { "crypto", "libcrypto.so.3" } do
    local ok, lib = pcall(ffi.load, name)
    if ok then return lib end
  end
  error("receiver: OpenSSL's libcrypto was not found")
end

local function hmac_sha256(k, data)
  local md = ffi.new("unsigned char[32]")
  local len = ffi.new("unsigned int[1]")
  if crypto.HMAC(crypto.EVP_sha256(), k, #k, data, #data, md, len) == nil then
    return nil
  end
  return ffi.string(md, len[0])
end

--- Called once, in the master: the secret, libcrypto, and the ids of the
-- deliveries accepted by earlier runs (deliveries.log under the prefix).
function M.init()
  crypto = load_crypto()
  local secret = os.getenv("CAIRNLOOP_WEBHOOK_SECRET") or ""
  key = ngx.decode_base64((secret:gsub("^whsec_", "")))
  if not key or #key == 0 then
    error("receiver: CAIRNLOOP_WEBHOOK_SECRET must be whsec_<base64 key>")
  end
  local seen = ngx.shared.receiver
  local log = io.open(ngx.config.prefix() .. "deliveries.log", "r")
  if log then
    for line in log:lines() do
      local id = line:match(" accepted id=(%S+)")
      if id then seen:set("id:" .. id, true) end
    end
    log:close()
  end
end

--- The refusal reason, or nil when the delivery is authentic.
local function check(id, ts, sigs, body)
  if not id or not ts or not sigs then return "unsigned" end
  local t = tonumber(ts)
  if not t or math.abs(ngx.time() - t) > TOLERANCE_S then return "stale_timestamp" end
  local want = hmac_sha256(key, id .. "." .. ts .. "." .. body)
  if not want then return "hmac_failed" end
  for entry in sigs:gmatch("%S+") do
    local version, b64 = entry:match("^(v1),(.+)$")
    local got = version and ngx.decode_base64(b64)
    -- Constant time, so the answer's timing tells nothing about the key.
    if got and #got == #want and crypto.CRYPTO_memcmp(got, want, #want) == 0 then
      return nil
    end
  end
  return "bad_signature"
end

--- The log's fields from the delivery's JSON body (lua/cairnloop/webhook.lua's
-- event: {"type":..,"timestamp":..,"data":{"message_id":..,"conversation_id":..,
-- "template_id":..,"attempt":..,...}}).  Ids are read from the text itself:
-- lua-cjson would turn a large one into a rounded double.
local function describe(body)
  local doc = cjson.decode(body)
  local data = type(doc) == "table" and doc.data
  if type(data) ~= "table" then return end
  local v = ngx.var
  v.cl_conversation = body:match('"conversation_id":(%d+)') or "-"
  v.cl_attempt = body:match('"attempt":(%d+)') or "-"
  if type(data.template_id) == "string" then v.cl_template = data.template_id end
end

--- POST /webhooks
function M.webhook()
  if ngx.req.get_method() ~= "POST" then
    ngx.status = 405
    ngx.say('{"error":"method_not_allowed"}')
    return
  end
  ngx.req.read_body()
  local body = ngx.req.get_body_data() or ""
  local h = ngx.req.get_headers()
  local id = h["webhook-id"]
  if type(id) == "table" then id = nil end -- repeated: not a delivery we trust
  local d = ngx.shared.receiver
  ngx.var.cl_id = id or "-"
  local reason = check(id, h["webhook-timestamp"], h["webhook-signature"], body)
  if reason then
    d:incr("rejected", 1, 0)
    ngx.var.cl_outcome = "rejected"
    ngx.var.cl_reason = " reason=" .. reason
    ngx.status = 401
    ngx.say(cjson.encode { error = reason })
    return
  end
  describe(body)
  if d:add("id:" .. id, true) then
    d:incr("accepted", 1, 0)
    ngx.var.cl_outcome = "accepted"
  else
    d:incr("duplicates", 1, 0)
    ngx.var.cl_outcome = "duplicate"
  end
  ngx.say('{"received":true}')
end

--- GET /stats
function M.stats()
  local d = ngx.shared.receiver
  ngx.say(string.format('{"accepted":%d,"rejected":%d,"duplicates":%d}',
    d:get("accepted") or 0, d:get("rejected") or 0, d:get("duplicates") or 0))
end

return M
