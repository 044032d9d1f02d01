--- cairnloop_http: the HTTP routes of the OpenResty example (nginx.conf).
--
-- Every engine call goes through cairnloop.resty, which runs it on a
-- thread of nginx's thread pool with an engine of that thread's own: the
-- request yields meanwhile and the worker keeps serving (README.md,
-- "Blocking and sizing").  Policy files run in each engine's own Lua 5.4;
-- a metrics collector lives beside each engine and /metrics sums them.
--
-- JSON in: lua-cjson decodes the body after a scan that admits only integer
-- number literals up to 2^53, because LuaJIT numbers are doubles and cjson
-- would round a larger id to a different one without a word.
-- JSON out: encoded here, because Debian's lua-cjson prints numbers with 14
-- significant digits (ids above 10^14 would come out as 1.2345678901234e+14)
-- and cannot tell an empty list from an empty object.
local cairnloop = require "cairnloop"
-- cairnloop.resty is required on first use, not when this file loads:
-- M.decode_object is also run outside nginx (tests/fuzz/fuzz_json_body.c),
-- with only this directory and stubs on the path.
local resty = setmetatable({}, {
  __index = function(proxy, k)
    local r = require "cairnloop.resty"
    setmetatable(proxy, { __index = r })
    return r[k]
  end,
})
local cjson = require("cjson.safe").new() -- a private instance: its settings are ours

cjson.decode_invalid_numbers(false) -- no NaN, Infinity or hex
cjson.decode_max_depth(16)

local M = {}

-- The policy loaded when CAIRNLOOP_POLICY is unset (relative to nginx's
-- working directory, like the Lua paths in nginx.conf).
M.DEFAULT_POLICY = "examples/openresty/policy.lua"

-- ------------------------------------------------------------------ JSON out

local NULL = cjson.null
local RAW = {}   -- metatable: { text } is written as is (an exact 64-bit integer)
local ARRAY = {} -- metatable: a list, also when empty

local ESCAPES = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}

local function escape_char(c)
  return ESCAPES[c] or string.format("\\u%04x", c:byte())
end

-- The length of the UTF-8 sequence at s[i], or nil if it is not one
-- (RFC 3629: no overlongs, no surrogates, nothing past U+10FFFF).
local function utf8_sequence(s, i)
  local c, d = s:byte(i, i + 1)
  local n, lo, hi
  if c >= 0xC2 and c <= 0xDF then n, lo, hi = 2, 0x80, 0xBF
  elseif c == 0xE0 then n, lo, hi = 3, 0xA0, 0xBF
  elseif c == 0xED then n, lo, hi = 3, 0x80, 0x9F
  elseif c >= 0xE1 and c <= 0xEF then n, lo, hi = 3, 0x80, 0xBF
  elseif c == 0xF0 then n, lo, hi = 4, 0x90, 0xBF
  elseif c >= 0xF1 and c <= 0xF3 then n, lo, hi = 4, 0x80, 0xBF
  elseif c == 0xF4 then n, lo, hi = 4, 0x80, 0x8F
  else return nil end
  if d == nil or d < lo or d > hi then return nil end
  for k = i + 2, i + n - 1 do
    local b = s:byte(k)
    if b == nil or b < 0x80 or b > 0xBF then return nil end
  end
  return n
end

-- Replaces bytes that are not UTF-8 with U+FFFD.  Stored text is valid
-- already (the engine checks it); messages may quote input cut at a byte
-- limit, in the middle of a character.
local function valid_utf8(s)
  local i = s:find("[\128-\255]")
  if i == nil then return s end
  local out, from = {}, 1
  while i do
    local n = utf8_sequence(s, i)
    if n then
      i = i + n
    else
      out[#out + 1] = s:sub(from, i - 1)
      out[#out + 1] = "\239\191\189"
      i = i + 1
      from = i
    end
    i = s:find("[\128-\255]", i)
  end
  out[#out + 1] = s:sub(from)
  return table.concat(out)
end

local function encode_into(v, out)
  local t = type(v)
  if v == nil or v == NULL then
    out[#out + 1] = "null"
  elseif t == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      out[#out + 1] = "null"
    elseif v % 1 == 0 and v >= -2 ^ 53 and v <= 2 ^ 53 then
      out[#out + 1] = string.format("%d", v)
    else
      out[#out + 1] = string.format("%.17g", v)
    end
  elseif t == "string" then
    out[#out + 1] = '"' .. valid_utf8(v):gsub('[%c"\\]', escape_char) .. '"'
  elseif t == "table" then
    local mt = getmetatable(v)
    if mt == RAW then
      out[#out + 1] = v[1]
    elseif mt == ARRAY or v[1] ~= nil then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        encode_into(v[i], out)
      end
      out[#out + 1] = "]"
    else
      -- Sorted keys: the same value always gives the same text.
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = tostring(k) end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        encode_into(k, out)
        out[#out + 1] = ":"
        encode_into(v[k], out)
      end
      out[#out + 1] = "}"
    end
  else
    error("cannot encode a " .. t .. " as JSON")
  end
end

local function encode(v)
  local out = {}
  encode_into(v, out)
  return table.concat(out)
end

-- A 64-bit id from the module: a number up to 2^53, past it the decimal
-- string the LuaJIT build gives instead of a rounded double.
local function int(v)
  if type(v) == "string" then return setmetatable({ v }, RAW) end
  return v
end

local function opt(v)
  if v == nil then return NULL end
  return v
end

-- The response shapes, field by field, so that the JSON contract is
-- written down here and a nil shows as null.
local function envelope_json(e)
  local ids = {}
  for i, id in ipairs(e.recipient_conversation_ids) do ids[i] = int(id) end
  return {
    id = e.id,
    template_id = e.template_id,
    rendered_body = e.rendered_body,
    recipient_conversation_ids = setmetatable(ids, ARRAY),
    count = e.count,
    effective_cap = e.effective_cap,
    requested_by = opt(e.requested_by),
    requested_at = e.requested_at,
    status = e.status,
    refused_reason = opt(e.refused_reason),
  }
end

local function message_json(m)
  return {
    id = int(m.id),
    conversation_id = int(m.conversation_id),
    role = m.role,
    content = m.content,
    metadata = {
      template_id = m.metadata.template_id,
      status = m.metadata.status,
      bulk_envelope_id = opt(m.metadata.bulk_envelope_id),
    },
  }
end

local function job_json(j)
  return {
    id = int(j.id),
    worker = j.worker,
    state = j.state,
    scheduled_at = j.scheduled_at,
    args = {
      message_id = int(j.args.message_id),
      conversation_id = int(j.args.conversation_id),
      template_id = j.args.template_id,
      bulk_envelope_id = opt(j.args.bulk_envelope_id),
    },
  }
end

-- ------------------------------------------------------------------ responses

-- HTTP statuses for the engine's failure codes (API.md).
M.STATUS = {
  invalid_argument = 422,
  batch_too_large = 413,
  envelope_conflict = 409,
  actor_rejected = 403,
  audit_rejected = 403,
  unknown_conversation = 404,
  hook_error = 500,
  db_error = 503,
}

local function send(status, value)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.say(encode(value))
end

local function fail(status, code, message)
  return send(status, { error = code, message = message })
end

-- `open_failed`: the thread's engine could not be opened; any code but
-- db_error is then a configuration error (a bad policy file, a bad URL).
local function engine_failure(code, message, open_failed)
  if code == "db_error" then ngx.header["Retry-After"] = "1" end
  if open_failed and code ~= "db_error" then return fail(500, code, message) end
  return fail(M.STATUS[code] or 500, code, message)
end

-- ------------------------------------------------------------------ the engine

local function getenv(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end

-- CAIRNLOOP_POLICY: unset gives the example's policy, an empty value none,
-- otherwise a ':'-separated list of paths.
local function policy_paths()
  local v = os.getenv("CAIRNLOOP_POLICY")
  if v == nil then return { M.DEFAULT_POLICY } end
  local paths = {}
  for p in v:gmatch("[^:]+") do paths[#paths + 1] = p end
  return paths
end

-- Configures cairnloop.resty for this worker (init_worker_by_lua).
-- opts.concurrency: the `threads` of nginx.conf's `thread_pool cairnloop`.
function M.init_worker(opts)
  opts = opts or {}
  resty.configure {
    thread_pool = "cairnloop",
    concurrency = opts.concurrency or 8,
    metrics = "cairnloop_metrics",
    open = {
      database = getenv("CAIRNLOOP_DATABASE_URL"), -- nil: libpq's PG* defaults
      policy = policy_paths(),
    },
  }
end

-- ------------------------------------------------------------------ requests

-- A piece of the request for a message: printable ASCII, at most n bytes.
local function quote(s, n)
  return (tostring(s):sub(1, n):gsub("[^\32-\126]", "?"))
end

-- Returns the first number literal of a JSON text that is not an integer
-- within +-2^53, or nil.  Strings are skipped, escapes included.
local function unsafe_number(text)
  local i = 1
  while true do
    local s = text:find('["%-%d]', i)
    if s == nil then return nil end
    if text:byte(s) == 34 then -- '"': find the closing quote
      i = s + 1
      while true do
        local q = text:find('["\\]', i)
        if q == nil then return nil end
        if text:byte(q) == 92 then
          i = q + 2
        else
          i = q + 1
          break
        end
      end
    else
      local e = text:find("[^%deE%.%+%-]", s) or #text + 1
      local literal = text:sub(s, e - 1)
      local digits = literal:match("^%-?0*(%d+)$")
      if digits == nil or #digits > 16 or (#digits == 16 and digits > "9007199254740992") then
        return literal
      end
      i = e
    end
  end
end

-- Decodes a request body as a JSON object whose keys are all in `fields`.
-- Returns the object (JSON nulls removed), or nil, HTTP status, code and
-- message.  Pure (no ngx): tests/fuzz/fuzz_json_body.c drives it.
function M.decode_object(body, fields)
  if body == nil or not body:find("%S") then
    return nil, 400, "malformed_json", "the request body is empty: send a JSON object"
  end
  local value, err = cjson.decode(body)
  if value == nil then
    return nil, 400, "malformed_json", "malformed JSON: " .. tostring(err)
  end
  if type(value) ~= "table" or not body:find("^%s*{") then
    return nil, 422, "invalid_argument", "the request body must be a JSON object"
  end
  local bad = unsafe_number(body)
  if bad then
    return nil, 422, "invalid_argument", "number " .. bad:sub(1, 40)
      .. " is not an integer from -2^53 to 2^53 (every number in a request is an id or seconds)"
  end
  for k, v in pairs(value) do
    if not fields[k] then
      return nil, 422, "invalid_argument", "unknown field '" .. quote(k, 64) .. "'"
    end
    if v == NULL then value[k] = nil end
  end
  return value
end

-- Reads the request body as a JSON object whose keys are all in `fields`.
-- Returns the object, or nil after sending a 400/422.
local function read_object(fields)
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if body == nil then
    -- Bodies past client_body_buffer_size land in a temporary file.
    local path = ngx.req.get_body_file()
    local f = path and io.open(path, "rb")
    if f then
      body = f:read("*a")
      f:close()
    end
  end
  local value, status, code, message = M.decode_object(body, fields)
  if value == nil then fail(status, code, message) end
  return value
end

local function only(method)
  if ngx.req.get_method() == method then return true end
  ngx.header["Allow"] = method
  fail(405, "method_not_allowed", "use " .. method .. " for " .. quote(ngx.var.uri, 80))
  return false
end

-- Runs a route: an error raised by a route (a bug, or engine misuse) is
-- logged with its traceback and answered with a JSON 500.
local function route(fn)
  return function(...)
    local ok, err = xpcall(fn, debug.traceback, ...)
    if not ok then
      ngx.log(ngx.ERR, "cairnloop_http: route failed: ", err)
      if not ngx.headers_sent then fail(500, "internal_error", "internal error, see the error log") end
    end
  end
end

local BULK_FIELDS = {
  ids = true, template_id = true, rendered_body = true, actor = true,
  envelope_id = true, schedule_in = true,
}

-- POST /bulk {ids, template_id, rendered_body, actor?, envelope_id?, schedule_in?}
-- 201 + the envelope (Location: /envelopes/<id>); 200 + the envelope when
-- envelope_id named one already stored with the same content.
M.bulk = route(function()
  if not only("POST") then return end
  local body = read_object(BULK_FIELDS)
  if body == nil then return end
  local res, code, msg, open_failed = resty.bulk_trigger(body.ids, {
    template_id = body.template_id,
    rendered_body = body.rendered_body,
    actor = body.actor,
    envelope_id = body.envelope_id,
    schedule_in = body.schedule_in,
  })
  if not res then return engine_failure(code, msg, open_failed) end
  if not res.replayed then ngx.header["Location"] = "/envelopes/" .. res.envelope.id end
  return send(res.replayed and 200 or 201, envelope_json(res.envelope))
end)

local TRIGGER_FIELDS = {
  conversation_id = true, template_id = true, content = true, actor = true,
  schedule_in = true, bulk_envelope_id = true,
}

-- POST /trigger {conversation_id, template_id, content?, actor?, schedule_in?, bulk_envelope_id?}
-- 201 + {message, delivery_job, duplicate = false}; 200 with duplicate = true.
M.trigger = route(function()
  if not only("POST") then return end
  local body = read_object(TRIGGER_FIELDS)
  if body == nil then return end
  local res, code, msg, open_failed = resty.trigger(body.conversation_id, {
    template_id = body.template_id,
    content = body.content,
    actor = body.actor,
    schedule_in = body.schedule_in,
    bulk_envelope_id = body.bulk_envelope_id,
  })
  if not res then return engine_failure(code, msg, open_failed) end
  return send(res.duplicate and 200 or 201, {
    message = message_json(res.message),
    delivery_job = job_json(res.delivery_job),
    duplicate = res.duplicate,
  })
end)

local ENVELOPE_QUERY = { template_id = true, status = true, limit = true }

-- GET /envelopes?template_id=&status=&limit= -> [envelope, ...], newest first
M.envelopes = route(function()
  if not only("GET") then return end
  local args, err = ngx.req.get_uri_args(16)
  if err == "truncated" then return fail(422, "invalid_argument", "too many query parameters") end
  for k, v in pairs(args) do
    if not ENVELOPE_QUERY[k] then
      return fail(422, "invalid_argument", "unknown query parameter '" .. quote(k, 64) .. "'")
    end
    if type(v) ~= "string" then
      return fail(422, "invalid_argument", "query parameter '" .. quote(k, 64) .. "' must be given once, with a value")
    end
  end
  local limit
  if args.limit then
    limit = args.limit:match("^%d+$") and #args.limit <= 9 and tonumber(args.limit)
    if not limit then return fail(422, "invalid_argument", "limit must be an integer from 1 to 10000") end
  end
  local list, code, msg, open_failed = resty.envelopes {
    template_id = args.template_id, status = args.status, limit = limit,
  }
  if not list then return engine_failure(code, msg, open_failed) end
  local out = {}
  for i, env in ipairs(list) do out[i] = envelope_json(env) end
  return send(200, setmetatable(out, ARRAY))
end)

-- GET /envelopes/<uuid> -> envelope | 404
M.envelope = route(function()
  if not only("GET") then return end
  local id = ngx.var.uri:match("^/envelopes/([^/]+)$")
  if id == nil then return fail(404, "not_found", "no such route: " .. quote(ngx.var.uri, 80)) end
  local env, code, msg, open_failed = resty.envelope(id)
  if code then return engine_failure(code, msg, open_failed) end
  if env == nil then return fail(404, "not_found", "envelope " .. id .. " does not exist") end
  return send(200, envelope_json(env))
end)

-- GET /metrics -> the Prometheus text of every worker's collector, summed
M.metrics = route(function()
  if not only("GET") then return end
  ngx.header["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
  ngx.print(resty.metrics_text())
end)

-- GET /healthz -> 200 once this worker has opened an engine, else 503.  It
-- sends no query and waits for no thread: a probe must never queue behind
-- the database (a failed open is retried in the background, at most once a
-- second).
M.healthz = route(function()
  if not only("GET") then return end
  local ok, code, msg = resty.health()
  if not ok then
    if code == "db_error" then ngx.header["Retry-After"] = "1" end
    return fail(code == "db_error" and 503 or 500, code, msg)
  end
  return send(200, { status = "ok", version = cairnloop.VERSION })
end)

return M
