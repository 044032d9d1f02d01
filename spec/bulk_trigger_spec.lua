-- engine:bulk_trigger and engine:configure: the envelope, the cap of the
-- moment, replays and conflicts, and refusals that write nothing (or only
-- the refused envelope).
local H = require "spec.support.helper"

describe("engine:bulk_trigger", function()
  local engine, schema

  setup(function()
    engine, schema = H.open("bulk")
  end)

  teardown(function()
    engine:close()
  end)

  before_each(function()
    assert(engine:configure { max_batch_size = 25 })
  end)

  it("returns the envelope, one message and job per id, in order", function()
    local res = assert(engine:bulk_trigger({ 3, 1, 2 }, {
      template_id = "recovery_v1", rendered_body = "We fixed it.", actor = "agent_7",
    }))
    assert.same({ "delivery_jobs", "envelope", "messages", "replayed" }, H.keys(res))
    assert.is_false(res.replayed)
    local e = res.envelope
    assert.same({ "count", "effective_cap", "id", "recipient_conversation_ids", "rendered_body",
      "requested_at", "requested_by", "status", "template_id" }, H.keys(e))
    assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", e.id)
    assert.same({ 3, 1, 2 }, e.recipient_conversation_ids)
    assert.equals(3, e.count)
    assert.equals(25, e.effective_cap)
    assert.equals("agent_7", e.requested_by)
    assert.equals("submitted", e.status)
    assert.equals("We fixed it.", e.rendered_body)
    for i, id in ipairs { 3, 1, 2 } do
      local m, j = res.messages[i], res.delivery_jobs[i]
      assert.equals(id, m.conversation_id)
      assert.equals("We fixed it.", m.content)
      assert.same({ template_id = "recovery_v1", status = "pending", bulk_envelope_id = e.id }, m.metadata)
      assert.same({ message_id = m.id, conversation_id = id, template_id = "recovery_v1",
        bulk_envelope_id = e.id }, j.args)
    end
  end)

  it("returns batch_too_large over the cap and stores only the refused envelope", function()
    assert(engine:configure { max_batch_size = 3 })
    local before = H.written(schema)
    local res, code, msg = engine:bulk_trigger({ 1, 2, 3, 4 }, {
      template_id = "over_cap", rendered_body = "b",
    })
    assert.is_nil(res)
    assert.equals("batch_too_large", code)
    assert.equals("batch_size 4 exceeds cap 3", msg)
    local after = H.written(schema)
    assert.equals(before.envelopes + 1, after.envelopes)
    assert.equals(before.messages, after.messages)
    assert.equals(before.jobs, after.jobs)
    local refused = engine:envelopes { template_id = "over_cap" }
    assert.equals(1, #refused)
    assert.equals("refused_cap_exceeded", refused[1].status)
    assert.equals("batch_size 4 exceeds cap 3", refused[1].refused_reason)
    assert.equals(3, refused[1].effective_cap)
  end)

  it("reads the cap fresh on every call", function()
    assert(engine:configure { max_batch_size = 2 })
    local _, code = engine:bulk_trigger({ 1, 2, 3 }, { template_id = "fresh", rendered_body = "b" })
    assert.equals("batch_too_large", code)
    assert(engine:configure { max_batch_size = 3 })
    local res = assert(engine:bulk_trigger({ 1, 2, 3 }, { template_id = "fresh", rendered_body = "b" }))
    assert.equals(3, res.envelope.effective_cap)
  end)

  it("replays a caller-supplied envelope id with the same content", function()
    local id = "0d6f4c38-9b7e-4f7b-8d1c-2a7f0e6b5c41"
    local opts = { template_id = "replay", rendered_body = "same", envelope_id = id }
    local first = assert(engine:bulk_trigger({ 10, 11 }, opts))
    assert.equals(id, first.envelope.id)
    local before = H.written(schema)
    local again = assert(engine:bulk_trigger({ 10, 11 }, opts))
    assert.is_true(again.replayed)
    assert.equals(id, again.envelope.id)
    assert.same(before, H.written(schema))
  end)

  it("returns envelope_conflict for an envelope id stored with other content", function()
    local id = "7c1e2d3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
    assert(engine:bulk_trigger({ 12 }, { template_id = "conflict", rendered_body = "one", envelope_id = id }))
    local before = H.written(schema)
    local res, code, msg = engine:bulk_trigger({ 12 }, {
      template_id = "conflict", rendered_body = "two", envelope_id = id,
    })
    assert.is_nil(res)
    assert.equals("envelope_conflict", code)
    assert.is_string(msg)
    assert.same(before, H.written(schema))
  end)

  it("returns unknown_conversation and rolls everything back", function()
    local before = H.written(schema)
    local res, code, msg = engine:bulk_trigger({ 1, 998, 2 }, { template_id = "unknown", rendered_body = "b" })
    assert.is_nil(res)
    assert.equals("unknown_conversation", code)
    assert.matches("998", msg)
    assert.same(before, H.written(schema))
  end)

  describe("returns invalid_argument and writes nothing", function()
    local body = { template_id = "t", rendered_body = "b" }
    local cases = {
      { "an empty cohort", {}, body },
      { "a duplicate id", { 1, 2, 1 }, body },
      { "a non-positive id", { 1, 0 }, body },
      { "a fractional id", { 1, 2.5 }, body },
      { "a string id", { 1, "2" }, body },
      { "a list with a hole", { 1, nil, 3 }, body },
      { "a map instead of a list", { a = 1 }, body },
      { "ids that are not a table", "1,2,3", body },
      { "no rendered_body", { 1 }, { template_id = "t" } },
      { "no template_id", { 1 }, { rendered_body = "b" } },
      { "a NUL in the body", { 1 }, { template_id = "t", rendered_body = "a\0b" } },
      { "invalid UTF-8 in the body", { 1 }, { template_id = "t", rendered_body = "\xc3\x28" } },
      { "a bad envelope id", { 1 }, { template_id = "t", rendered_body = "b", envelope_id = "x" } },
      { "an unknown option", { 1 }, { template_id = "t", rendered_body = "b", body = "b" } },
    }
    for _, case in ipairs(cases) do
      it("for " .. case[1], function()
        local before = H.written(schema)
        local res, code, msg = engine:bulk_trigger(case[2], case[3])
        assert.is_nil(res)
        assert.equals("invalid_argument", code)
        assert.is_string(msg)
        assert.same(before, H.written(schema))
      end)
    end
  end)

  it("raises when opts is not a table", function()
    assert.has_error(function() engine:bulk_trigger({ 1 }, nil) end)
  end)
end)

describe("engine:configure", function()
  local engine

  setup(function()
    engine = H.open("configure")
  end)

  teardown(function()
    engine:close()
  end)

  it("returns true for a positive cap", function()
    assert.is_true(engine:configure { max_batch_size = 1 })
  end)

  it("returns invalid_argument for a bad cap or an unknown option", function()
    for _, opts in ipairs { { max_batch_size = 0 }, { max_batch_size = -2 },
      { max_batch_size = "5" }, { max_batch_size = 1.5 }, { cap = 3 } } do
      local ok, code = engine:configure(opts)
      assert.is_nil(ok)
      assert.equals("invalid_argument", code)
    end
  end)

  it("raises when opts is not a table", function()
    assert.has_error(function() engine:configure(5) end)
  end)
end)
