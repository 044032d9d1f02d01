--- The policy of the demo (`cairnloop demo`, lua/examples/campaign.lua): a
-- policy file, loaded into the engine's own sandboxed Lua state with
--
--   cairnloop run --policy lua/examples/demo_policy.lua SCRIPT.lua
--
-- It puts the ready-made parts of lua/cairnloop/ together:
--   - the table auditor: one row of cairnloop_audit_events per trigger and
--     bulk_trigger, written through `tx` inside the operation's transaction;
--   - an actor resolver: the demo's operator session maps to the operator's
--     identity, any other actor is refused (actor_rejected);
--   - a notifier that "sends": a real one would call a mail or chat API with
--     the idempotency key.  Policy scripts have no files or sockets, and a
--     notifier gets no `tx`, so this one only logs (at debug level: run with
--     CAIRNLOOP_LOG_LEVEL=debug to see each delivery) and reports success;
--     the engine then marks the message sent.
-- Metrics are collected by the host script instead (cairnloop.metrics on
-- its engine), since the report that prints them runs there.
local cl = require "cairnloop"

require("cairnloop.table_auditor").install(cl)

require("cairnloop.actor_resolver").install(cl, {
  map = { ["session:demo"] = "operator:demo" },
  unknown = "reject",
})

cl.notifier(function(message, conversation, delivery)
  cl.log("debug", string.format("delivered message %d to conversation %d (%s), key %s",
    message.id, conversation.id, conversation.customer_ref or "no customer ref",
    delivery.idempotency_key))
  return true
end)
