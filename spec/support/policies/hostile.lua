-- A policy that misbehaves on request: the auditor dispatches on the
-- template id, so one engine can run every hook-safety case and then show
-- that it still works ("ok" behaves).  res.audit reports what the telemetry
-- handlers saw.
local cl = require "cairnloop"

-- Stashed while loading, before any hook call is armed: the count hook set
-- at state creation must still reach it.
local stashed = coroutine.wrap(function()
  while true do end
end)

local stale_tx
local handler_calls = 0

local behaviours = {
  loop = function() while true do end end,
  pcall_loop = function()
    while true do pcall(function() while true do end end) end
  end,
  stashed_coroutine = function() stashed() end,
  yield = function() coroutine.yield("out") end,
  memory = function()
    local t = {}
    for i = 1, 1e9 do t[i] = string.rep("x", 1024) .. i end
  end,
  error_table = function() error({ code = 42 }) end,
  error_tostring = function()
    error(setmetatable({}, { __tostring = function() error("nested failure") end }))
  end,
  stash_tx = function(tx) stale_tx = tx end,
  stale_tx = function() stale_tx:exec("SELECT 1") end,
  sleep = function(tx)
    tx:exec("SELECT pg_sleep(0.3)")
    while true do end
  end,
  bad_sql = function(tx) tx:exec("SELECT 1 +") end,
  caught_sql = function(tx) pcall(tx.exec, tx, "SELECT 1 +") end,
  reject = function() return nil, "refused by policy" end,
  undeclared = function() return undeclared_global end,
}

cl.auditor {
  audit = function(tx, action, actor, metadata)
    local b = behaviours[metadata.template_id]
    if b then
      local r, reason = b(tx)
      if reason then return r, reason end
    end
    tx:exec("INSERT INTO " .. cl.schema .. ".cairnloop_audit_events"
      .. " (action, actor, conversation_id, bulk_envelope_id, template_id, count)"
      .. " VALUES ($1, $2, $3, $4, $5, $6)", action, actor, metadata.conversation_id,
      metadata.bulk_envelope_id, metadata.template_id, metadata.count)
    return { handler_calls = handler_calls, template_id = metadata.template_id }
  end,
}

-- Raises on every stop event, after the operation committed.
cl.attach("raising", "cairnloop.outbound.triggered.stop", function()
  handler_calls = handler_calls + 1
  error("handler failure")
end)
