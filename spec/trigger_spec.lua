-- engine:trigger: the result shape of API.md, duplicates, and every way it
-- refuses (invalid_argument, unknown_conversation) without writing.
local H = require "spec.support.helper"
local C = require "spec.support.compat"

describe("engine:trigger", function()
  local engine, schema

  setup(function()
    engine, schema = H.open("trigger")
  end)

  teardown(function()
    engine:close()
  end)

  it("returns message, delivery_job, audit and duplicate, exactly", function()
    local res = assert(engine:trigger(1, { template_id = "welcome_v1", content = "Hi there" }))
    assert.same({ "delivery_job", "duplicate", "message" }, H.keys(res)) -- audit is nil
    assert.is_false(res.duplicate)
    assert.is_nil(res.audit)

    local m = res.message
    assert.same({ "content", "conversation_id", "id", "metadata", "role" }, H.keys(m))
    assert.equals("integer", C.math_type(m.id))
    assert.equals(1, m.conversation_id)
    assert.equals("system_outbound", m.role)
    assert.equals("Hi there", m.content)
    assert.same({ template_id = "welcome_v1", status = "pending" }, m.metadata)

    local j = res.delivery_job
    assert.same({ "args", "id", "scheduled_at", "state", "worker" }, H.keys(j))
    assert.equals("integer", C.math_type(j.id))
    assert.equals("outbound", j.worker)
    assert.equals("available", j.state)
    assert.is_string(j.scheduled_at)
    assert.same({ message_id = m.id, conversation_id = 1, template_id = "welcome_v1" }, j.args)
    assert.equals(1, H.count(schema, "cairnloop_messages", "id = " .. m.id))
  end)

  it("defaults the content from the template id", function()
    local res = assert(engine:trigger(2, { template_id = "t_default" }))
    assert.equals("Outbound message using template: t_default", res.message.content)
  end)

  it("schedules the job schedule_in seconds ahead", function()
    local res = assert(engine:trigger(3, { template_id = "t_later", schedule_in = 3600 }))
    assert.equals("scheduled", res.delivery_job.state)
    local ahead = H.scalar(string.format(
      "SELECT extract(epoch FROM scheduled_at - now())::int FROM %s.cairnloop_delivery_jobs WHERE id = %d",
      schema, res.delivery_job.id))
    assert.is_true(ahead > 3500 and ahead <= 3600)
  end)

  it("carries bulk_envelope_id as a correlation key", function()
    local id = "5b2c2a52-8f0e-4c47-9a3e-3f6a1c2b9d10"
    local res = assert(engine:trigger(4, { template_id = "t_corr", bulk_envelope_id = id }))
    assert.equals(id, res.message.metadata.bulk_envelope_id)
    assert.equals(id, res.delivery_job.args.bulk_envelope_id)
  end)

  it("flags a duplicate and writes nothing new", function()
    local first = assert(engine:trigger(5, { template_id = "t_dup" }))
    local before = H.written(schema)
    local again = assert(engine:trigger(5, { template_id = "t_dup", content = "other" }))
    assert.is_true(again.duplicate)
    assert.equals(first.message.id, again.message.id)
    assert.equals(first.delivery_job.id, again.delivery_job.id)
    assert.same(before, H.written(schema))
  end)

  it("accepts an integral float id", function()
    assert.is_truthy(engine:trigger(6.0, { template_id = "t_float" }))
  end)

  describe("returns invalid_argument and writes nothing", function()
    local cases = {
      { "a string id", "7", { template_id = "t" } },
      { "a fractional id", 7.5, { template_id = "t" } },
      { "a zero id", 0, { template_id = "t" } },
      { "a negative id", -3, { template_id = "t" } },
      { "a nil id", nil, { template_id = "t" } },
      { "no template_id", 7, {} },
      { "an empty template_id", 7, { template_id = "" } },
      { "a template_id too long", 7, { template_id = string.rep("t", 256) } },
      { "a numeric template_id", 7, { template_id = 12 } },
      { "a NUL byte", 7, { template_id = "t\0x" } },
      { "invalid UTF-8", 7, { template_id = "t\xff" } },
      { "a NUL byte in content", 7, { template_id = "t", content = "a\0b" } },
      { "a body too large", 7, { template_id = "t", content = string.rep("x", 256 * 1024 + 1) } },
      { "a negative schedule_in", 7, { template_id = "t", schedule_in = -1 } },
      { "a fractional schedule_in", 7, { template_id = "t", schedule_in = 1.5 } },
      { "a table actor", 7, { template_id = "t", actor = {} } },
      { "a bad envelope uuid", 7, { template_id = "t", bulk_envelope_id = "nope" } },
      { "an unknown option", 7, { template_id = "t", templat_id = "t" } },
    }
    for _, case in ipairs(cases) do
      it("for " .. case[1], function()
        local before = H.written(schema)
        local res, code, msg = engine:trigger(case[2], case[3])
        assert.is_nil(res)
        assert.equals("invalid_argument", code)
        assert.is_string(msg)
        assert.is_nil(msg:find("\n"))
        assert.same(before, H.written(schema))
      end)
    end
  end)

  it("returns unknown_conversation and writes nothing", function()
    local before = H.written(schema)
    local res, code, msg = engine:trigger(999, { template_id = "t" })
    assert.is_nil(res)
    assert.equals("unknown_conversation", code)
    assert.equals("conversation 999 does not exist", msg)
    assert.same(before, H.written(schema))
  end)

  it("raises when opts is not a table", function()
    assert.has_error(function() engine:trigger(1, "welcome_v1") end)
    assert.has_error(function() engine:trigger(1) end)
  end)

  it("returns db_error when the database refuses, and works again after", function()
    local before = H.written(schema)
    H.sql("ALTER TABLE " .. schema .. ".cairnloop_delivery_jobs RENAME TO jobs_away")
    local res, code = engine:trigger(8, { template_id = "t_db" })
    H.sql("ALTER TABLE " .. schema .. ".jobs_away RENAME TO cairnloop_delivery_jobs")
    assert.is_nil(res)
    assert.equals("db_error", code)
    assert.same(before, H.written(schema))
    assert.is_truthy(engine:trigger(8, { template_id = "t_db" }))
  end)
end)
