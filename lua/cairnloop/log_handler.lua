--- cairnloop.log_handler: logs telemetry events, one line each.
--
--   cairnloop --policy lua/cairnloop/log_handler.lua ...   as a policy file
--                  (the bounded lane, through cl.log)
--   require("cairnloop.log_handler").install(cl, { trace = true })
--   require("cairnloop.log_handler").install(engine, { sink = function(level, line) ... end })
--
-- A line reads "cairnloop.outbound.triggered.stop outcome=triggered duration_ms=1.204".
-- Metadata keys are sorted; of the measurements, durations are shown in
-- milliseconds and counts as they are (clock readings are left out).
-- Exceptions log at "error", failures and refusals at "warn", the rest at
-- "info".  The trace lane (opt-in with trace = true) carries ids and actors:
-- enable it only where the log may hold them.
local cl = require "cairnloop"

local M = {}

-- The two lanes of API.md, from the events the engine emits (cl.EVENTS, in
-- its order): the bounded-metrics lane, and the trace lane
-- "cairnloop.outbound.trace.*".
M.EVENTS, M.TRACE_EVENTS = {}, {}
for _, name in ipairs(cl.EVENTS) do
  local lane = cl.EVENTS[name][3] == "trace" and M.TRACE_EVENTS or M.EVENTS
  lane[#lane + 1] = name
end

local WARN_OUTCOMES = {
  failed = true, refused_cap_exceeded = true, refused_cap_exceeded_audit_failed = true,
}

local function level_of(metadata)
  local outcome = metadata.outcome
  if outcome == "exception" or outcome == "refused_cap_exceeded_audit_failed" then
    return "error"
  end
  if WARN_OUTCOMES[outcome] then return "warn" end
  return "info"
end

local function value(v)
  v = tostring(v)
  if v:find("[%s\"=]") then return string.format("%q", v) end
  return v
end

--- Formats one event as a line.
function M.format(event, measurements, metadata)
  local parts = { table.concat(event, ".") }
  local keys = {}
  for k in pairs(metadata) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. value(metadata[k]) end
  if measurements.duration then
    parts[#parts + 1] = string.format("duration_ms=%.3f", measurements.duration / 1e6)
  end
  if measurements.count and metadata.count == nil then
    parts[#parts + 1] = "count=" .. value(measurements.count)
  end
  return table.concat(parts, " ")
end

--- The handler function for `opts.sink(level, line)`.
function M.new(opts)
  opts = opts or {}
  local sink = opts.sink
  if type(sink) ~= "function" then error("log_handler: sink must be a function", 2) end
  return function(event, measurements, metadata)
    sink(level_of(metadata), M.format(event, measurements, metadata))
  end
end

--- Attaches the handler to `target` (the policy API or a host engine) under
-- `opts.id` (default "cairnloop.log").  The sink defaults to cl.log in a
-- policy state and to stderr in the host.
function M.install(target, opts)
  opts = opts or {}
  local events = M.EVENTS
  if opts.trace then
    events = {}
    for _, e in ipairs(M.EVENTS) do events[#events + 1] = e end
    for _, e in ipairs(M.TRACE_EVENTS) do events[#events + 1] = e end
  end
  local sink = opts.sink
  if sink == nil then
    if type(target) == "table" and type(target.log) == "function" then
      sink = target.log
    else
      sink = function(level, line) io.stderr:write("cairnloop: ", level, ": ", line, "\n") end
    end
  end
  local handler = M.new { sink = sink }
  local id = opts.id or "cairnloop.log"
  local ok, code, msg
  if type(target) == "userdata" then
    ok, code, msg = target:attach_many(id, events, handler)
  else
    ok, code, msg = target.attach_many(id, events, handler)
  end
  if not ok then error("log_handler: cannot attach: " .. tostring(code) .. ": " .. tostring(msg), 2) end
  return handler
end

-- Loaded as a --policy file (no module name): install into the policy
-- state, whose cairnloop is the registration API (the host module has no
-- attach_many).
if ... == nil and type(cl.attach_many) == "function" then M.install(cl) end

return M
