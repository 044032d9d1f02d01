-- cairnloop.EVENTS: the engine's one table of the events it emits, as the
-- host module and the policy state's registration API expose it, checked
-- against the events the engine actually emits, and against the lanes the
-- ready-made handlers derive from it.
local cairnloop = require "cairnloop"
local H = require "spec.support.helper"

local EVENTS = cairnloop.EVENTS

describe("cairnloop.EVENTS", function()
  it("lists each dotted name once, and maps it to its parts", function()
    assert.is_true(#EVENTS > 0)
    local seen = {}
    for _, name in ipairs(EVENTS) do
      assert.is_string(name)
      assert.is_nil(seen[name], "listed twice: " .. name)
      seen[name] = true
      assert.is_table(EVENTS[name], "no parts for " .. name)
      assert.equals(name, table.concat(EVENTS[name], "."))
      for _, part in ipairs(EVENTS[name]) do
        assert.matches("^[a-z_]+$", part)
      end
    end
    -- Nothing else: the list and one key per name.
    local keys = 0
    for _ in pairs(EVENTS) do keys = keys + 1 end
    assert.equals(2 * #EVENTS, keys)
  end)

  it("names exactly the events the engine emits, with the parts handlers receive", function()
    local engine, schema = H.open("events")
    local got = {}
    assert.is_true(engine:attach_many("all", EVENTS, function(event)
      got[table.concat(event, ".")] = event
    end))

    -- Triggers: one that succeeds, one that fails (unknown conversation),
    -- one that ends in an exception (an auditor that raises).
    assert(engine:trigger(1, { template_id = "ok" }))
    assert.is_nil(engine:trigger(9999, { template_id = "unknown" }))
    engine:auditor { audit = function() error("audit exploded") end }
    assert.is_nil(engine:trigger(2, { template_id = "raises" }))
    assert.is_nil(engine:bulk_trigger({ 3, 4 }, { template_id = "raises", rendered_body = "b" }))
    engine:auditor(nil)
    -- Bulks: submitted, failed (an unknown conversation), refused over the cap.
    assert(engine:bulk_trigger({ 5, 6 }, { template_id = "bulk", rendered_body = "b" }))
    assert.is_nil(engine:bulk_trigger({ 7, 9999 }, { template_id = "bulk_unknown", rendered_body = "b" }))
    assert(engine:configure { max_batch_size = 1 })
    assert.is_nil(engine:bulk_trigger({ 8, 9 }, { template_id = "over", rendered_body = "b" }))
    -- Deliveries: no notifier, one that delivers, one that fails.
    assert(engine:work { limit = 100 })
    engine:notifier(function() return true end)
    assert(engine:trigger(10, { template_id = "sent" }))
    assert(engine:work { limit = 100 })
    engine:notifier(function() return false, "mailbox full" end)
    assert(engine:trigger(11, { template_id = "failed" }))
    assert(engine:work { limit = 100 })
    -- An operator cancels a job not started yet.
    local later = assert(engine:trigger(12, { template_id = "later", schedule_in = 3600 }))
    assert(engine:cancel { ids = { later.delivery_job.id } })
    engine:close()

    for _, name in ipairs(EVENTS) do
      assert.is_not_nil(got[name], "never emitted: " .. name .. " (schema " .. schema .. ")")
      assert.same(EVENTS[name], got[name])
    end
    for name in pairs(got) do
      assert.is_not_nil(EVENTS[name], "emitted but not listed: " .. name)
    end
  end)

  it("is the same in the policy state's registration API", function()
    local path = H.policy_file([[
      local cl = require "cairnloop"
      local names, parts = {}, {}
      for i, name in ipairs(cl.EVENTS) do
        names[i] = name
        parts[name] = cl.EVENTS[name]
      end
      cl.auditor { audit = function() return { names = names, parts = parts } end }
    ]])
    local engine = H.open("events_policy", { policy = path })
    local audit = assert(engine:trigger(1, { template_id = "t" })).audit
    engine:close()
    os.remove(path)
    local names, parts = {}, {}
    for i, name in ipairs(EVENTS) do
      names[i] = name
      parts[name] = EVENTS[name]
    end
    assert.same(names, audit.names)
    assert.same(parts, audit.parts)
  end)

  it("splits into the two lanes the ready-made handlers attach to", function()
    local metrics = require "cairnloop.metrics"
    local log_handler = require "cairnloop.log_handler"
    local joined = {}
    for _, name in ipairs(log_handler.EVENTS) do joined[#joined + 1] = name end
    for _, name in ipairs(log_handler.TRACE_EVENTS) do
      assert.matches("^cairnloop%.outbound%.trace%.", name)
      joined[#joined + 1] = name
    end
    local list = {}
    for i, name in ipairs(EVENTS) do list[i] = name end
    assert.same(list, joined)
    assert.same(log_handler.EVENTS, metrics.EVENTS)
  end)
end)
