--- cairnloop.resty_thread: the thread side of cairnloop.resty.
--
-- ngx.run_worker_thread loads this module in one of the worker's thread
-- VMs and calls M.call there.  Thread VMs are pooled and reused, so the
-- engine opened here (lazily, on the first call, with the options the
-- worker passes along) lives in a module-level upvalue and serves every
-- later call that lands on this VM: one engine, hence one PostgreSQL
-- connection, per thread VM.  Nothing here may reach the worker's Lua
-- state: ngx.log and cosockets do not exist in a thread VM, and only plain
-- data (nil, booleans, numbers, strings, tables of those) crosses back.
-- So the engine's log lines and its metrics rendering are returned with
-- each call, for the worker to log and publish.
local cairnloop = require "cairnloop"
local metrics = require "cairnloop.metrics"

local M = {}

-- A failed open is retried by a later call, but at most once a second:
-- a connect attempt holds a thread of the pool.
local REOPEN_INTERVAL = 1

local engine        -- this VM's engine; nil until it could be opened
local collector     -- the metrics collector attached to `engine`
local dirty = false -- the collector counted something since the last call returned
local failure       -- { code, message } of the last failed open
local retry_at = 0  -- os.time() before which an open is not tried again
local logs = {}     -- level, line, level, line, ... since the last call returned

-- Names this VM among the worker's thread VMs (the worker adds its own id):
-- the address of a table that lives as long as the VM.
local VM_KEY = tostring(logs):match("0x%x+") or tostring(logs)

local function log_line(level, line)
  logs[#logs + 1] = level
  logs[#logs + 1] = line
end

local function take_logs()
  if #logs == 0 then return nil end
  local out = logs
  logs = {}
  return out
end

local function take_metrics()
  if not dirty then return nil end
  dirty = false
  return collector.render()
end

local function open(options)
  if os.time() < retry_at then return nil end
  retry_at = os.time() + REOPEN_INTERVAL
  local o = {}
  for k, v in pairs(options) do o[k] = v end
  o.log = log_line
  local e, code, msg = cairnloop.open(o)
  if not e then
    failure = { code, msg }
    log_line("error", "cannot open the engine: " .. tostring(code) .. ": " .. tostring(msg))
    return nil
  end
  local c = metrics.new()
  local handler = c.handler
  local ok, acode, amsg = e:attach_many("cairnloop.resty.metrics", metrics.EVENTS,
    function(...)
      dirty = true
      return handler(...)
    end)
  if not ok then
    e:close()
    failure = { acode, "cannot attach the metrics collector: " .. tostring(amsg) }
    return nil
  end
  engine, collector, failure = e, c, nil
  dirty = true -- a new engine publishes its (empty) rendering once
  return e
end

local OPS = {
  ping = function() return true end,
  trigger = function(e, a, b) return e:trigger(a, b) end,
  bulk_trigger = function(e, a, b) return e:bulk_trigger(a, b) end,
  envelope = function(e, a) return e:envelope(a) end,
  envelopes = function(e, a) return e:envelopes(a) end,
}

--- Runs one engine operation on this VM's engine.
-- options: the cairnloop.open options (plain data) used if the engine is
-- not open yet; op: a name in OPS; a, b: its arguments.
-- Returns outcome, result, code, message, logs, metrics text, VM key, where
-- outcome is "ok" (result, code, message are the method's), "open_failed"
-- (code, message say why) or "raised" (result is the error message: the
-- method raised, which is misuse).  Never raises itself.
function M.call(options, op, a, b)
  if engine == nil and open(options) == nil then
    local f = failure or { "db_error", "the engine could not be opened" }
    return "open_failed", nil, f[1], f[2], take_logs(), nil, VM_KEY
  end
  local fn = OPS[op]
  if fn == nil then
    return "raised", "cairnloop.resty: unknown operation '" .. tostring(op) .. "'", nil, nil,
      take_logs(), nil, VM_KEY
  end
  local ok, res, code, msg = pcall(fn, engine, a, b)
  if not ok then
    return "raised", tostring(res), nil, nil, take_logs(), take_metrics(), VM_KEY
  end
  return "ok", res, code, msg, take_logs(), take_metrics(), VM_KEY
end

return M
