-- Operating the queue from Lua: engine:jobs, :stats, :retry, :cancel,
-- :pause, :resume and :prune (API.md, "Operations"), their audit rows
-- through the shipped table auditor and the cancelled event.
local H = require "spec.support.helper"

local STATES = { "available", "scheduled", "executing", "retryable", "completed", "discarded",
  "cancelled" }

describe("operating the queue", function()
  local engine, schema

  before_each(function()
    engine, schema = H.open("ops", { max_attempts = 1 })
  end)

  after_each(function()
    engine:close()
  end)

  local function bulk(ids, envelope_id)
    return assert(engine:bulk_trigger(ids, { template_id = "camp", rendered_body = "hi",
      envelope_id = envelope_id }))
  end

  local function failing_notifier()
    assert(engine:notifier(function() return nil, "gateway said no" end))
  end

  describe("engine:jobs", function()
    it("lists job tables newest first, filtered", function()
      local res = bulk({ 1, 2 })
      assert(engine:trigger(3, { template_id = "single" }))
      local all = assert(engine:jobs())
      assert.equals(3, #all)
      assert.equals(3, all[1].args.conversation_id)
      assert.equals("available", all[1].state)
      assert.equals("outbound", all[1].worker)
      assert.equals(0, all[1].attempt)
      assert.is_number(all[1].max_attempts)
      assert.is_string(all[1].inserted_at)
      assert.is_nil(all[1].finished_at)

      local mine = assert(engine:jobs { envelope_id = res.envelope.id })
      assert.equals(2, #mine)
      assert.equals(res.envelope.id, mine[1].args.bulk_envelope_id)
      assert.equals(res.delivery_jobs[2].id, mine[1].id)
      assert.equals(1, #assert(engine:jobs { template_id = "single" }))
      assert.equals(1, #assert(engine:jobs { limit = 1 }))
      assert.equals(0, #assert(engine:jobs { state = "cancelled" }))
    end)

    it("returns invalid_argument for bad options and raises on misuse", function()
      for _, opts in ipairs { { state = "lost" }, { limit = 0 }, { envelope_id = "x" },
        { order = "asc" } } do
        local list, code = engine:jobs(opts)
        assert.is_nil(list)
        assert.equals("invalid_argument", code)
      end
      assert.has_error(function() engine:jobs("available") end)
    end)
  end)

  describe("engine:stats", function()
    it("counts every state and says whether delivery is paused", function()
      local res = bulk({ 1, 2, 3 })
      assert(engine:trigger(4, { template_id = "single", schedule_in = 3600 }))
      local s = assert(engine:stats())
      assert.same({ "available", "cancelled", "completed", "discarded", "executing",
        "oldest_due_age_seconds", "paused", "retryable", "scheduled" }, H.keys(s))
      assert.equals(3, s.available)
      assert.equals(1, s.scheduled)
      for _, st in ipairs { "executing", "retryable", "completed", "discarded", "cancelled" } do
        assert.equals(0, s[st])
      end
      assert.is_true(s.oldest_due_age_seconds >= 0)
      assert.is_false(s.paused)
      local e = assert(engine:stats { envelope_id = res.envelope.id })
      assert.equals(3, e.available)
      assert.equals(0, e.scheduled)
    end)
  end)

  describe("engine:retry", function()
    it("sends a discarded message again; triggering it again does not", function()
      failing_notifier()
      local t = assert(engine:trigger(5, { template_id = "t" }))
      local w = assert(engine:work())
      assert.equals(1, w.discarded)
      local again = assert(engine:trigger(5, { template_id = "t" }))
      assert.is_true(again.duplicate)
      assert.equals("discarded", again.delivery_job.state)

      local jobs = assert(engine:jobs { state = "discarded" })
      assert.matches("gateway said no", jobs[1].last_error)
      assert.same({ retried = 1 }, assert(engine:retry { ids = { t.delivery_job.id } }))
      assert(engine:notifier(function() return true end))
      assert.equals(1, assert(engine:work()).sent)
      assert.equals("completed", assert(engine:jobs())[1].state)
    end)

    it("takes an envelope or all discarded jobs, and is audited", function()
      require("cairnloop.table_auditor").install(engine, { schema = schema })
      local res = bulk({ 1, 2 })
      assert(engine:trigger(3, { template_id = "t" }))
      failing_notifier()
      assert.equals(3, assert(engine:work()).discarded)
      assert.same({ retried = 2 }, assert(engine:retry { envelope_id = res.envelope.id,
        actor = "operator:7" }))
      assert.same({ retried = 1 }, assert(engine:retry { all_discarded = true }))
      assert.same({ retried = 0 }, assert(engine:retry { all_discarded = true }))
      local rows = H.sql(string.format("SELECT action, actor, count, bulk_envelope_id, "
        .. "template_id IS NULL FROM %s.cairnloop_audit_events WHERE action = 'retry_jobs' "
        .. "ORDER BY id", schema))
      assert.same({ { "retry_jobs", "operator:7", "2", res.envelope.id, "t" },
        { "retry_jobs", "", "1", "", "t" } }, rows)
    end)

    it("refuses anything but exactly one selector", function()
      for _, opts in ipairs { {}, { ids = { 1 }, all_discarded = true }, { ids = {} },
        { ids = { 1, 1 } }, { ids = { 1.5 } }, { ids = 3 }, { all_discarded = "yes" },
        { envelope_id = "nope" }, { state = "discarded" } } do
        local res, code = engine:retry(opts)
        assert.is_nil(res)
        assert.equals("invalid_argument", code)
      end
      assert.has_error(function() engine:retry() end)
      local res, code = engine:cancel { all_discarded = true }
      assert.is_nil(res)
      assert.equals("invalid_argument", code)
    end)
  end)

  describe("engine:cancel", function()
    it("cancels what is not started, marks the messages and emits the event", function()
      require("cairnloop.table_auditor").install(engine, { schema = schema })
      local events = {}
      assert(engine:attach("cancel-spec", "cairnloop.outbound.delivery.cancelled",
        function(event, measurements, metadata)
          events[#events + 1] = { table.concat(event, "."), measurements, metadata }
        end))
      local metrics = require("cairnloop.metrics").install(engine)
      local res = bulk({ 1, 2, 3 })
      H.sql(string.format("UPDATE %s.cairnloop_delivery_jobs SET state = 'executing', "
        .. "attempt = 1, lease_owner = 'w', lease_expires_at = now() + interval '1 minute' "
        .. "WHERE conversation_id = 3", schema))
      assert.same({ cancelled = 2 }, assert(engine:cancel { envelope_id = res.envelope.id }))
      assert.equals(2, #assert(engine:jobs { state = "cancelled" }))
      assert.equals(2, H.count(schema, "cairnloop_messages",
        "metadata->>'status' = 'cancelled'"))
      assert.equals(1, #events)
      assert.same({ "cairnloop.outbound.delivery.cancelled", { count = 2 },
        { outcome = "cancelled" } }, events[1])
      assert.matches('cairnloop_outbound_delivery_cancelled_total{outcome="cancelled"} 2',
        metrics.render(), 1, true)
      local audit = assert(engine:audit_events { action = "cancel_jobs" })
      assert.equals(1, #audit)
      assert.equals(2, audit[1].count)
      assert.equals(res.envelope.id, audit[1].bulk_envelope_id)
      assert.is_nil(audit[1].template_id)
      assert.equals(0, assert(engine:work()).no_op)
      local s = assert(engine:stats())
      assert.equals(2, s.cancelled)
      assert.equals(1, s.executing)
    end)
  end)

  describe("engine:pause and engine:resume", function()
    it("stop and restart claiming, audited", function()
      require("cairnloop.table_auditor").install(engine, { schema = schema })
      assert(engine:trigger(1, { template_id = "t" }))
      assert.is_true(engine:pause())
      assert.is_true(assert(engine:stats()).paused)
      assert.equals(0, assert(engine:work()).no_op)
      assert.is_true(engine:resume { actor = "operator:2" })
      assert.is_false(assert(engine:stats()).paused)
      assert.equals(1, assert(engine:work()).no_op)
      local rows = H.sql(string.format("SELECT action, coalesce(actor, '-') FROM "
        .. "%s.cairnloop_audit_events WHERE action LIKE '%%_delivery' ORDER BY id", schema))
      assert.same({ { "pause_delivery", "-" }, { "resume_delivery", "operator:2" } }, rows)
    end)
  end)

  describe("engine:prune", function()
    it("deletes finished jobs and keeps the key on the messages", function()
      bulk({ 1, 2 })
      assert(engine:trigger(3, { template_id = "t", schedule_in = 3600 }))
      assert.equals(2, assert(engine:work()).no_op)
      assert.same({ deleted = 0 }, assert(engine:prune()))
      assert.same({ deleted = 2 }, assert(engine:prune { older_than_seconds = 0 }))
      local w = H.written(schema)
      assert.equals(3, w.messages)
      assert.equals(1, w.jobs)
      local again = assert(engine:trigger(1, { template_id = "camp",
        bulk_envelope_id = assert(engine:envelopes())[1].id }))
      assert.is_true(again.duplicate)
      assert.equals("sent", again.message.metadata.status)
      assert.equals(0, again.delivery_job.id)
      assert.is_nil(again.delivery_job.state)
      local res, code = engine:prune { older_than_seconds = -1 }
      assert.is_nil(res)
      assert.equals("invalid_argument", code)
    end)
  end)

  it("the job states are the engine's", function()
    local s = assert(engine:stats())
    for _, st in ipairs(STATES) do assert.is_number(s[st]) end
  end)
end)
