-- The bench's "hooks that do nothing" policy: an auditor that accepts
-- without a statement and one telemetry handler on the bounded-metrics
-- events that returns at once.  Timing a trigger with it measures what
-- having hooks costs by itself (the engine's transaction, the calls into
-- the policy state), apart from what the hooks do.
local cl = require "cairnloop"

cl.auditor { audit = function() end }

cl.attach_many("bench.noop", {
  "cairnloop.outbound.triggered.start",
  "cairnloop.outbound.triggered.stop",
  "cairnloop.outbound.triggered.exception",
  "cairnloop.outbound.bulk.triggered.start",
  "cairnloop.outbound.bulk.triggered.stop",
  "cairnloop.outbound.bulk.triggered.exception",
  "cairnloop.outbound.bulk.triggered",
  "cairnloop.outbound.delivery.sent",
  "cairnloop.outbound.delivery.failed",
  "cairnloop.outbound.delivery.no_op",
}, function() end)
