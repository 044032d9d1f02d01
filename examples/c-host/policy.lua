-- Policy of the game-server example.  The engine loads it into its own
-- sandboxed Lua 5.4 state (the server itself is plain C): it decides who
-- may send, records every send in the operation's own transaction, and
-- watches the bounded telemetry lane.  Delivery is the server's business:
-- its C notifier hands messages to the game's network layer.
--
-- Self-contained on purpose: it requires nothing but the engine's own
-- `cairnloop` module, so it runs from any directory and any install.
local cl = require "cairnloop"

-- Always schema-qualified: the engine may run on any schema.
local AUDIT = cl.schema .. ".cairnloop_audit_events"

-- Who may send.  The server acts as "system:<subsystem>" (the matchmaker
-- noticing a rage-quit) or "gm:<name>" (the game master on duty who signs
-- raid compensation).  Anything else is refused before anything is
-- written: a bug that forwards a player's name as the actor must not send.
cl.actor_resolver(function(actor, ctx)
  if actor == nil then return nil end
  if actor:match("^system:[%w_]+$") or actor:match("^gm:[%w_]+$") then
    return actor
  end
  return nil, string.format("%s: actor %q is neither system:<name> nor gm:<name>",
    ctx.action, actor)
end)

-- What is recorded.  One audit row per trigger or bulk, inserted inside the
-- operation's transaction: a rolled-back send leaves no row, and a failed
-- insert rolls the send back (fail closed).  The returned table comes back
-- to the server as the result's audit JSON.
cl.auditor {
  audit = function(tx, action, actor, md)
    local rows = tx:exec("INSERT INTO " .. AUDIT
      .. " (action, actor, conversation_id, bulk_envelope_id, template_id, count)"
      .. " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
      action, actor, md.conversation_id, md.bulk_envelope_id, md.template_id, md.count)
    return { audit_id = rows[1].id }
  end,
}

-- What is watched.  Enum-only metadata (outcome, reason, count): safe to
-- turn into log lines or metrics labels.  Failed delivery attempts are
-- worth a warning each; sends are summed up every thousand.
local sent = 0
cl.attach_many("game-server-telemetry", {
  "cairnloop.outbound.delivery.sent",
  "cairnloop.outbound.delivery.failed",
  "cairnloop.outbound.bulk.triggered",
}, function(event, measurements, metadata)
  local what = event[#event]
  if what == "sent" then
    sent = sent + measurements.count
    if sent % 1000 == 0 then cl.log("info", "deliveries sent so far: " .. sent) end
  elseif what == "failed" then
    cl.log("warn", "delivery attempt failed: reason=" .. tostring(metadata.reason))
  else -- a bulk refused at the cap
    cl.log("warn", "bulk refused: outcome=" .. tostring(metadata.outcome)
      .. " count=" .. tostring(metadata.count))
  end
end)
