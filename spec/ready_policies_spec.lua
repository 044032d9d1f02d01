-- The ready-made policies of lua/cairnloop/, each used both ways: loaded as
-- a policy file (open{ policy = ... }, the CLI's --policy) and required
-- from the host.
local H = require "spec.support.helper"

describe("cairnloop.table_auditor", function()
  it("as a policy file: writes one row per operation in its transaction and lists them", function()
    local engine, schema = H.open("tbl_policy", { policy = H.lua_dir .. "table_auditor.lua" })
    local t = assert(engine:trigger(1, { template_id = "welcome", actor = "op:1" }))
    assert.same({ "action", "actor", "conversation_id", "id", "inserted_at", "template_id" },
      H.keys(t.audit))
    assert.equals("outbound_trigger", t.audit.action)
    assert.equals("op:1", t.audit.actor)
    assert.equals(1, t.audit.conversation_id)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d+Z$", t.audit.inserted_at)

    local b = assert(engine:bulk_trigger({ 2, 3 }, { template_id = "bulk", rendered_body = "x" }))
    assert.equals("bulk_outbound_trigger", b.audit.action)
    assert.equals(b.envelope.id, b.audit.bulk_envelope_id)
    assert.equals(2, b.audit.count)

    local events = assert(engine:audit_events())
    assert.equals(2, #events)
    assert.equals(b.audit.id, events[1].id) -- newest first
    assert.same(t.audit, events[2])
    assert.same({ b.audit }, engine:audit_events { action = "bulk_outbound_trigger" })
    assert.same({ b.audit }, engine:audit_events { bulk_envelope_id = b.envelope.id })
    assert.same({ t.audit }, engine:audit_events { conversation_id = 1 })
    assert.equals(1, #engine:audit_events { limit = 1 })
    local list, code = engine:audit_events { limit = 0 }
    assert.is_nil(list)
    assert.equals("hook_error", code)

    -- Rolled back with the operation: an unknown conversation leaves no row.
    local before = H.count(schema, "cairnloop_audit_events")
    assert.is_nil(engine:bulk_trigger({ 1, 999 }, { template_id = "bulk", rendered_body = "x" }))
    assert.equals(before, H.count(schema, "cairnloop_audit_events"))
    engine:close()
  end)

  it("installed from the host on an engine", function()
    local engine, schema = H.open("tbl_host")
    local auditor = require "cairnloop.table_auditor"
    assert.is_true(auditor.install(engine, { schema = schema }))
    local t = assert(engine:trigger(4, { template_id = "host" }))
    assert.equals("outbound_trigger", t.audit.action)
    assert.same({ t.audit }, engine:audit_events())
    assert.has_error(function() auditor.new { schema = "Bad Schema" } end)
    engine:close()
  end)
end)

describe("cairnloop.actor_resolver", function()
  it("as a policy file: passes well-formed identities, refuses malformed ones", function()
    local engine, schema = H.open("actor_policy", { policy = H.lua_dir .. "actor_resolver.lua" })
    local res = assert(engine:bulk_trigger({ 1 }, { template_id = "t", rendered_body = "b", actor = "operator:7" }))
    assert.equals("operator:7", res.envelope.requested_by)
    res = assert(engine:bulk_trigger({ 2 }, { template_id = "t", rendered_body = "b" }))
    assert.is_nil(res.envelope.requested_by)
    local before = H.written(schema)
    local r, code, msg = engine:trigger(3, { template_id = "t", actor = "two words" })
    assert.is_nil(r)
    assert.equals("actor_rejected", code)
    assert.matches("malformed actor", msg)
    assert.same(before, H.written(schema))
    engine:close()
  end)

  it("maps identities through a table, rejecting unknown ones when asked", function()
    local engine = H.open("actor_map")
    require("cairnloop.actor_resolver").install(engine, {
      map = { ["session:4f2a"] = "operator:7" }, unknown = "reject",
    })
    local res = assert(engine:bulk_trigger({ 1 }, { template_id = "t", rendered_body = "b", actor = "session:4f2a" }))
    assert.equals("operator:7", res.envelope.requested_by)
    local r, code, msg = engine:trigger(2, { template_id = "t", actor = "session:nope" })
    assert.is_nil(r)
    assert.equals("actor_rejected", code)
    assert.matches("unknown actor", msg)
    engine:close()
  end)

  it("maps identities through a function", function()
    local resolve = require("cairnloop.actor_resolver").new {
      map = function(actor, ctx)
        if actor == "root" then return nil, "root may not send" end
        return "user:" .. actor .. "@" .. ctx.action
      end,
    }
    assert.equals("user:ann@outbound_trigger", resolve("ann", { action = "outbound_trigger" }))
    assert.same({ nil, "root may not send" }, { resolve("root", {}) })
    assert.is_nil(resolve(nil, {}))
    assert.same({ nil, 'malformed actor "user:a b@x"' }, { resolve("a b", { action = "x" }) })
    assert.has_error(function() require("cairnloop.actor_resolver").new { unknown = "maybe" } end)
  end)
end)

describe("cairnloop.metrics", function()
  it("counts the bounded lane and renders the Prometheus text format", function()
    local engine = H.open("metrics")
    local metrics = require("cairnloop.metrics").install(engine)
    assert(engine:trigger(1, { template_id = "m" }))
    assert(engine:trigger(1, { template_id = "m" })) -- duplicate
    assert(engine:bulk_trigger({ 2, 3 }, { template_id = "m", rendered_body = "b" }))
    assert(engine:configure { max_batch_size = 1 })
    assert.is_nil(engine:bulk_trigger({ 4, 5 }, { template_id = "m", rendered_body = "b" }))
    engine:auditor { audit = function() error("x") end }
    assert.is_nil(engine:trigger(6, { template_id = "m2" }))
    engine:auditor(nil)
    assert(engine:work { limit = 10 })

    local text = metrics:render()
    local function has(line)
      assert.is_truthy(text:find(line, 1, true), "missing: " .. line .. "\n" .. text)
    end
    has("# TYPE cairnloop_outbound_trigger_total counter")
    has('cairnloop_outbound_trigger_total{outcome="triggered"} 3') -- 1 + 2 bulk recipients
    has('cairnloop_outbound_trigger_total{outcome="duplicate"} 1')
    has('cairnloop_outbound_trigger_exceptions_total{kind="hook_error"} 1')
    has('cairnloop_outbound_bulk_total{outcome="submitted"} 1')
    has('cairnloop_outbound_bulk_recipients_total{outcome="submitted"} 2')
    has('cairnloop_outbound_bulk_refused_total{outcome="refused_cap_exceeded"} 1')
    has('cairnloop_outbound_bulk_refused_recipients_total{outcome="refused_cap_exceeded"} 2')
    has('cairnloop_outbound_delivery_total{outcome="no_op",reason="no_notifier_configured"} 3')
    has("# TYPE cairnloop_outbound_trigger_duration_seconds histogram")
    has('cairnloop_outbound_trigger_duration_seconds_count{outcome="triggered"} 3')
    has('cairnloop_outbound_trigger_duration_seconds_bucket{outcome="triggered",le="+Inf"} 3')
    -- The delivery events carry no duration: counted, never timed.
    assert.is_nil(text:find("cairnloop_outbound_delivery_duration_seconds", 1, true))
    -- Every sample line is a metric name, enum labels (and le) and a number.
    for line in text:gmatch("[^\n]+") do
      if not line:find("^#") then
        assert.matches('^cairnloop_[a-z_]+{?[a-z_="%,%d%.%+I]*}? [%d%.e%-]+$', line)
      end
    end
    engine:close()
  end)

  it("counts a label value outside the enums as \"other\"", function()
    local m = require("cairnloop.metrics").new()
    m.handler({ "cairnloop", "outbound", "triggered", "stop" }, { duration = 5e6 },
      { outcome = "conversation 42" })
    assert.is_truthy(m.render():find('cairnloop_outbound_trigger_total{outcome="other"} 1', 1, true))
    m.reset()
    assert.equals("", m.render())
  end)

  it("renders durations as cumulative histograms in seconds, at full precision", function()
    local m = require("cairnloop.metrics").new { buckets = { 0.001, 0.5 } }
    local stop = { "cairnloop", "outbound", "triggered", "stop" }
    m.handler(stop, { duration = 1234567891 }, { outcome = "triggered" }) -- 1.234567891 s
    m.handler(stop, { duration = 250000 }, { outcome = "triggered" })     -- 0.00025 s
    m.handler(stop, { duration = 1000000 }, { outcome = "triggered" })    -- 0.001 s: le is inclusive
    local text = m.render()
    local prefix = 'cairnloop_outbound_trigger_duration_seconds'
    local want = table.concat({
      "# TYPE " .. prefix .. " histogram",
      prefix .. '_bucket{outcome="triggered",le="0.001"} 2',
      prefix .. '_bucket{outcome="triggered",le="0.5"} 2',
      prefix .. '_bucket{outcome="triggered",le="+Inf"} 3',
      prefix .. '_sum{outcome="triggered"} 1.235817891',
      prefix .. '_count{outcome="triggered"} 3',
    }, "\n")
    assert.is_truthy(text:find(want, 1, true), text)
  end)

  it("prints floats as the shortest decimal that reads back exactly", function()
    local number = require("cairnloop.metrics").number
    assert.equals("0.1", number(0.1))
    assert.equals("1.234567891", number(1.234567891)) -- %g would print 1.23457
    assert.equals("0.3333333333333333", number(1 / 3))
    assert.equals("42", number(42))
    assert.equals("+Inf", number(math.huge))
  end)

  it("times delivery events that carry a duration, by outcome", function()
    local m = require("cairnloop.metrics").new()
    local sent = { "cairnloop", "outbound", "delivery", "sent" }
    m.handler(sent, { count = 1 }, { outcome = "sent", reason = "notifier_ok" })
    assert.is_nil(m.render():find("delivery_duration", 1, true))
    m.handler(sent, { count = 1, duration = 20000000 }, { outcome = "sent", reason = "notifier_ok" })
    local text = m.render()
    assert.is_truthy(text:find('cairnloop_outbound_delivery_duration_seconds_bucket{outcome="sent",le="0.025"} 1', 1, true), text)
    assert.is_truthy(text:find('cairnloop_outbound_delivery_duration_seconds_sum{outcome="sent"} 0.02', 1, true), text)
    assert.is_truthy(text:find('cairnloop_outbound_delivery_total{outcome="sent",reason="notifier_ok"} 2', 1, true), text)
  end)

  it("loads as a policy file", function()
    local engine, _, logs = H.open("metrics_policy", { policy = H.lua_dir .. "metrics.lua" })
    assert(engine:trigger(1, { template_id = "m" }))
    assert.is_nil(logs:find("detached"))
    engine:close()
  end)
end)

describe("cairnloop.log_handler", function()
  it("logs one line per event, with levels from the outcome", function()
    local engine = H.open("log_host")
    local lines = {}
    require("cairnloop.log_handler").install(engine, {
      sink = function(level, line) lines[#lines + 1] = level .. " " .. line end,
    })
    assert(engine:trigger(1, { template_id = "l" }))
    assert(engine:configure { max_batch_size = 1 })
    assert.is_nil(engine:bulk_trigger({ 2, 3 }, { template_id = "l", rendered_body = "b" }))
    assert.equals("info cairnloop.outbound.triggered.start outcome=triggered", lines[1])
    assert.matches("^info cairnloop%.outbound%.triggered%.stop outcome=triggered duration_ms=%d+%.%d+$", lines[2])
    assert.equals("warn cairnloop.outbound.bulk.triggered count=2 outcome=refused_cap_exceeded", lines[3])
    engine:close()
  end)

  it("loads as a policy file and logs through cl.log", function()
    local engine, _, logs = H.open("log_policy", { policy = H.lua_dir .. "log_handler.lua" })
    assert(engine:trigger(1, { template_id = "l" }))
    assert.is_truthy(logs:find("^info: policy: cairnloop%.outbound%.triggered%.stop outcome=triggered"))
    engine:close()
  end)

  it("adds the trace lane only when asked", function()
    local engine = H.open("log_trace")
    local lines = {}
    require("cairnloop.log_handler").install(engine, {
      trace = true, sink = function(_, line) lines[#lines + 1] = line end,
    })
    assert(engine:trigger(1, { template_id = "l", actor = "op:9" }))
    local trace
    for _, l in ipairs(lines) do
      if l:find("trace.trigger_completed", 1, true) then trace = l end
    end
    assert.is_truthy(trace)
    assert.matches("actor_id=op:9", trace)
    engine:close()
  end)
end)
