-- The bench's delivery policy: a notifier that reports every message as
-- delivered at once, so `cairnloop work` is timed for the queue and the
-- call into the policy state, not for a sender.
local cl = require "cairnloop"

cl.notifier(function() return true end)
