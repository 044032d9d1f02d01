-- engine:envelope, engine:envelopes and engine:audit_events.
local H = require "spec.support.helper"

describe("engine reads", function()
  local engine, first, second

  setup(function()
    engine = H.open("reads")
    first = assert(engine:bulk_trigger({ 1, 2 }, { template_id = "read_a", rendered_body = "a" }))
    second = assert(engine:bulk_trigger({ 3 }, { template_id = "read_b", rendered_body = "b" }))
    assert(engine:configure { max_batch_size = 1 })
    assert.is_nil(engine:bulk_trigger({ 4, 5 }, { template_id = "read_b", rendered_body = "c" }))
  end)

  teardown(function()
    engine:close()
  end)

  it("engine:envelope returns the stored envelope", function()
    local e = assert(engine:envelope(first.envelope.id))
    assert.same(first.envelope, e)
  end)

  it("engine:envelope returns nil for an id that names no envelope", function()
    local e, code = engine:envelope("00000000-0000-4000-8000-000000000000")
    assert.is_nil(e)
    assert.is_nil(code)
  end)

  it("engine:envelope returns invalid_argument for a bad id", function()
    for _, id in ipairs { "nope", 42, "a\0b" } do
      local e, code = engine:envelope(id)
      assert.is_nil(e)
      assert.equals("invalid_argument", code)
    end
  end)

  it("engine:envelopes lists newest first and filters", function()
    local all = assert(engine:envelopes())
    assert.equals(3, #all)
    assert.equals("read_b", all[1].template_id)
    assert.equals("refused_cap_exceeded", all[1].status)
    assert.equals(first.envelope.id, all[3].id)

    local b = assert(engine:envelopes { template_id = "read_b", status = "submitted" })
    assert.equals(1, #b)
    assert.equals(second.envelope.id, b[1].id)
    assert.equals(1, #assert(engine:envelopes { limit = 1 }))
  end)

  it("engine:envelopes returns invalid_argument for bad options", function()
    for _, opts in ipairs { { limit = 0 }, { limit = "5" }, { status = 3 }, { order = "asc" } } do
      local list, code = engine:envelopes(opts)
      assert.is_nil(list)
      assert.equals("invalid_argument", code)
    end
    assert.has_error(function() engine:envelopes("read_a") end)
  end)

  it("engine:audit_events returns {} without an auditor", function()
    assert.same({}, engine:audit_events())
    assert.same({}, engine:audit_events { limit = 5 })
  end)

  it("engine:audit_events returns invalid_argument for options without a JSON form", function()
    local list, code = engine:audit_events { f = function() end }
    assert.is_nil(list)
    assert.equals("invalid_argument", code)
    assert.has_error(function() engine:audit_events(5) end)
  end)
end)
