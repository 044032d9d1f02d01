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
-- The notifier, which "sends" by writing to an outbox file, and the metrics
-- handler are registered by the host script instead (on its engine): a
-- policy script has no files, and the report that prints the metrics runs
-- in the host.
local cl = require "cairnloop"

require("cairnloop.table_auditor").install(cl)

require("cairnloop.actor_resolver").install(cl, {
  map = { ["session:demo"] = "operator:demo" },
  unknown = "reject",
})
