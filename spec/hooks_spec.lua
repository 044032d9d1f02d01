-- Hooks registered from the host's Lua (engine:auditor, actor_resolver,
-- notifier, attach...): their contracts, the tx handle, and how their
-- failures map to codes.  They run in the host's own state.
local H = require "spec.support.helper"
local C = require "spec.support.compat"
local cairnloop = require "cairnloop"

local function ok_auditor(calls)
  return {
    audit = function(tx, action, actor, metadata)
      calls[#calls + 1] = { tx = tx, action = action, actor = actor, metadata = metadata }
      return { seen = action }
    end,
  }
end

describe("engine:auditor (host)", function()
  local engine, schema

  before_each(function()
    engine, schema = H.open("host_auditor")
  end)

  after_each(function()
    engine:close()
  end)

  it("is called once per trigger with exactly the documented metadata", function()
    local calls = {}
    assert.is_true(engine:auditor(ok_auditor(calls)))
    assert(engine:trigger(1, { template_id = "t1", actor = "op:1" }))
    assert.equals(1, #calls)
    assert.equals("outbound_trigger", calls[1].action)
    assert.equals("op:1", calls[1].actor)
    assert.same({ conversation_id = 1, template_id = "t1" }, calls[1].metadata)
    assert.equals("userdata", type(calls[1].tx))
  end)

  it("is called once per bulk with exactly the documented metadata", function()
    local calls = {}
    engine:auditor(ok_auditor(calls))
    local res = assert(engine:bulk_trigger({ 1, 2, 3 }, { template_id = "b1", rendered_body = "x" }))
    assert.equals(1, #calls)
    assert.equals("bulk_outbound_trigger", calls[1].action)
    assert.is_nil(calls[1].actor)
    assert.same({ bulk_envelope_id = res.envelope.id, count = 3, template_id = "b1" }, calls[1].metadata)
  end)

  it("exposes the returned value itself as res.audit", function()
    local value = { nested = { 1, 2 } }
    local fn = function() end
    engine:auditor { audit = function() return value end }
    assert.equals(value, assert(engine:trigger(1, { template_id = "same" })).audit)
    engine:auditor { audit = function() return fn end }
    assert.equals(fn, assert(engine:bulk_trigger({ 2 }, { template_id = "fn", rendered_body = "b" })).audit)
    engine:auditor { audit = function() return false end }
    assert.is_false(assert(engine:trigger(3, { template_id = "false" })).audit)
  end)

  it("returns audit_rejected for nil, reason and writes nothing", function()
    engine:auditor { audit = function() return nil, "not on a Sunday" end }
    local before = H.written(schema)
    local res, code, msg = engine:trigger(1, { template_id = "t" })
    assert.is_nil(res)
    assert.equals("audit_rejected", code)
    assert.equals("auditor.audit: not on a Sunday", msg)
    res, code = engine:bulk_trigger({ 1, 2 }, { template_id = "t", rendered_body = "b" })
    assert.is_nil(res)
    assert.equals("audit_rejected", code)
    assert.same(before, H.written(schema))
  end)

  it("returns hook_error when audit raises, writes nothing, and logs the traceback", function()
    local logs
    engine:close()
    engine, schema, logs = H.open("host_auditor")
    engine:auditor { audit = function() error("audit exploded") end }
    local before = H.written(schema)
    local res, code, msg = engine:trigger(1, { template_id = "t" })
    assert.is_nil(res)
    assert.equals("hook_error", code)
    assert.matches("^auditor%.audit: .*audit exploded$", msg)
    assert.same(before, H.written(schema))
    assert.is_truthy(logs:find("stack traceback"))
  end)

  -- Regression: an auditor whose tx:exec met the transaction the
  -- operation's own failed statement had aborted logged its error at level
  -- error, though the failure reported is the statement's (fixed in 96255da).
  it("keeps its error out of the error log when the operation's own statement failed", function()
    local logs
    engine:close()
    engine, schema, logs = H.open("host_auditor")
    engine:auditor { audit = function(tx)
      tx:exec("SELECT 1")
      return true
    end }
    local res, code = engine:trigger(999999, { template_id = "t" })
    assert.is_nil(res)
    assert.equals("unknown_conversation", code)
    assert.is_nil(logs:find("^error: "))
    assert.is_truthy(logs:find("^debug: auditor%.audit: "))
  end)

  it("runs tx:exec in the operation's transaction, parameters bound", function()
    local rows
    -- 2^53 + 1: an integer on Lua 5.4; on LuaJIT, where it has no exact
    -- number, it is bound as text and comes back as its decimal string.
    local big = C.int64("9007199254740993")
    engine:auditor { audit = function(tx, action, actor, md)
      tx:exec("INSERT INTO " .. schema .. ".cairnloop_audit_events (action, template_id, conversation_id)"
        .. " VALUES ($1, $2, $3)", action, md.template_id, md.conversation_id)
      rows = tx:exec("SELECT $1::int AS i, $2::bigint AS big, $3::bool AS b, $4::float8 AS f,"
        .. " $5::numeric AS n, $6::text AS s, $7::text AS z, $8::text AS inj,"
        .. " (SELECT count(*) FROM " .. schema .. ".cairnloop_messages WHERE conversation_id = $9) AS mine",
        41, big, true, 1.5, "2.25", "text", nil, "'); DROP TABLE x; --", md.conversation_id)
      return true
    end }
    assert(engine:trigger(7, { template_id = "tx" }))
    assert.equals(1, #rows)
    local r = rows[1]
    assert.equals(41, r.i)
    assert.equals("integer", C.math_type(r.i))
    assert.equals(big, r.big)
    assert.equals(C.lua54 and "integer" or "string", C.math_type(r.big) or type(r.big))
    assert.is_true(r.b)
    assert.equals(1.5, r.f)
    assert.equals(2.25, r.n)
    assert.equals("text", r.s)
    assert.is_nil(r.z)
    assert.equals("'); DROP TABLE x; --", r.inj)
    assert.equals(1, r.mine) -- the operation's own insert is visible: same transaction
    assert.equals(1, H.count(schema, "cairnloop_audit_events"))
  end)

  it("rolls back the auditor's writes with the operation", function()
    engine:auditor { audit = function(tx)
      tx:exec("INSERT INTO " .. schema .. ".cairnloop_audit_events (action, template_id) VALUES ('x', 'y')")
      return nil, "changed my mind"
    end }
    local _, code = engine:trigger(1, { template_id = "t" })
    assert.equals("audit_rejected", code)
    assert.equals(0, H.count(schema, "cairnloop_audit_events"))
  end)

  it("raises SQL errors inside the hook: hook_error when not caught", function()
    local caught
    engine:auditor { audit = function(tx)
      local ok, err = pcall(tx.exec, tx, "SELECT 1 +")
      caught = not ok and err
      error(caught, 0)
    end }
    local before = H.written(schema)
    local _, code, msg = engine:trigger(1, { template_id = "t" })
    assert.equals("hook_error", code)
    assert.matches("syntax error", caught)
    assert.matches("syntax error", msg)
    assert.same(before, H.written(schema))
  end)

  it("fails the operation when the script swallows an SQL error", function()
    engine:auditor { audit = function(tx)
      pcall(tx.exec, tx, "SELECT 1 +")
      return "fine?"
    end }
    local before = H.written(schema)
    local _, code = engine:trigger(1, { template_id = "t" })
    assert.equals("hook_error", code)
    assert.same(before, H.written(schema))
  end)

  it("raises when tx is used after its call, or given a table to bind", function()
    local kept
    engine:auditor { audit = function(tx)
      kept = tx
      assert.has_error(function() tx:exec("SELECT $1", {}) end)
      return true
    end }
    assert(engine:trigger(1, { template_id = "t" }))
    assert.has_error(function() kept:exec("SELECT 1") end,
      "attempt to use a transaction handle outside its audit call")
  end)

  it("is removed by engine:auditor(nil)", function()
    local calls = {}
    engine:auditor(ok_auditor(calls))
    assert.is_true(engine:auditor(nil))
    assert.is_nil(assert(engine:trigger(1, { template_id = "t" })).audit)
    assert.equals(0, #calls)
  end)

  it("raises for a spec without an audit function", function()
    assert.has_error(function() engine:auditor {} end)
    assert.has_error(function() engine:auditor { audit = 1 } end)
    assert.has_error(function() engine:auditor { audit = function() end, list_events = 2 } end)
    assert.has_error(function() engine:auditor(function() end) end)
  end)

  it("answers engine:audit_events through list_events(opts, tx)", function()
    local got
    engine:auditor {
      audit = function() return true end,
      list_events = function(opts, tx)
        got = opts
        return tx:exec("SELECT 1 AS one, 'a' AS name")
      end,
    }
    assert.same({ { one = 1, name = "a" } }, engine:audit_events { limit = 2, action = "x" })
    assert.same({ limit = 2, action = "x" }, got)
  end)

  it("returns hook_error when list_events raises", function()
    engine:auditor { audit = function() return true end, list_events = function() error("no list") end }
    local list, code, msg = engine:audit_events()
    assert.is_nil(list)
    assert.equals("hook_error", code)
    assert.matches("no list", msg)
  end)
end)

describe("engine:actor_resolver (host)", function()
  local engine, schema

  before_each(function()
    engine, schema = H.open("host_resolver")
  end)

  after_each(function()
    engine:close()
  end)

  it("is called with the actor and ctx.action, and its result is recorded", function()
    local seen = {}
    assert.is_true(engine:actor_resolver(function(actor, ctx)
      seen[#seen + 1] = { actor = actor, action = ctx.action }
      return actor and ("resolved:" .. actor)
    end))
    local res = assert(engine:bulk_trigger({ 1 }, { template_id = "t", rendered_body = "b", actor = "u1" }))
    assert.equals("resolved:u1", res.envelope.requested_by)
    assert(engine:trigger(2, { template_id = "t" }))
    assert.same({ { actor = "u1", action = "bulk_outbound_trigger" },
      { action = "outbound_trigger" } }, seen)
  end)

  it("records no actor when it returns nil", function()
    engine:actor_resolver(function() return nil end)
    local res = assert(engine:bulk_trigger({ 1 }, { template_id = "t", rendered_body = "b", actor = "x" }))
    assert.is_nil(res.envelope.requested_by)
  end)

  it("returns actor_rejected for nil, reason and writes nothing", function()
    engine:actor_resolver(function() return nil, "unknown operator" end)
    local before = H.written(schema)
    local res, code, msg = engine:trigger(1, { template_id = "t", actor = "x" })
    assert.is_nil(res)
    assert.equals("actor_rejected", code)
    assert.equals("actor_resolver: unknown operator", msg)
    assert.same(before, H.written(schema))
  end)

  it("returns hook_error when it raises or returns a non-string", function()
    local before = H.written(schema)
    engine:actor_resolver(function() error("resolver down") end)
    local _, code, msg = engine:trigger(1, { template_id = "t", actor = "x" })
    assert.equals("hook_error", code)
    assert.matches("resolver down", msg)
    engine:actor_resolver(function() return 42 end)
    _, code = engine:trigger(1, { template_id = "t", actor = "x" })
    assert.equals("hook_error", code)
    engine:actor_resolver(function() return "a\0b" end)
    _, code = engine:trigger(1, { template_id = "t", actor = "x" })
    assert.equals("hook_error", code)
    assert.same(before, H.written(schema))
  end)

  it("raises when given something other than a function", function()
    assert.has_error(function() engine:actor_resolver("op") end)
  end)
end)

describe("engine:attach, attach_many, detach (host)", function()
  local engine, schema, logs

  before_each(function()
    engine, schema, logs = H.open("host_telemetry")
  end)

  after_each(function()
    engine:close()
  end)

  it("calls a handler with event parts, measurements, metadata and config", function()
    local got = {}
    local config = { tag = "cfg" }
    assert.is_true(engine:attach("stop", "cairnloop.outbound.triggered.stop",
      function(event, measurements, metadata, cfg)
        got[#got + 1] = { event = event, m = measurements, md = metadata, cfg = cfg }
      end, config))
    assert(engine:trigger(1, { template_id = "t" }))
    assert.equals(1, #got)
    assert.same({ "cairnloop", "outbound", "triggered", "stop" }, got[1].event)
    assert.same({ outcome = "triggered" }, got[1].md)
    assert.equals("integer", C.math_type(got[1].m.duration))
    assert.equals(config, got[1].cfg)
  end)

  it("accepts the list form of an event name and attach_many", function()
    local n = 0
    assert.is_true(engine:attach("list", { "cairnloop", "outbound", "triggered", "start" },
      function() n = n + 1 end))
    assert.is_true(engine:attach_many("many", { "cairnloop.outbound.triggered.start",
      { "cairnloop", "outbound", "triggered", "stop" } }, function() n = n + 10 end))
    assert(engine:trigger(1, { template_id = "t" }))
    assert.equals(21, n)
  end)

  it("attaches to any name, including ones never emitted", function()
    assert.is_true(engine:attach("future", "cairnloop.some.future.event", function() end))
  end)

  it("returns invalid_argument for a taken id or a bad name", function()
    assert(engine:attach("dup", "a.b", function() end))
    local ok, code, msg = engine:attach("dup", "a.c", function() end)
    assert.is_nil(ok)
    assert.equals("invalid_argument", code)
    assert.matches("dup", msg)
    for _, args in ipairs {
      { "", "a.b" }, { 42, "a.b" }, { "x", "" }, { "x", {} }, { "x", { "a", "" } },
      { "x", { "a.b", "c" } }, { "x", 5 }, { "x\0y", "a.b" },
    } do
      ok, code = engine:attach(args[1], args[2], function() end)
      assert.is_nil(ok)
      assert.equals("invalid_argument", code)
    end
    ok, code = engine:attach_many("x", {}, function() end)
    assert.equals("invalid_argument", code)
  end)

  it("raises when the handler is not a function", function()
    assert.has_error(function() engine:attach("x", "a.b", "not a function") end)
  end)

  it("detaches: true once, then false", function()
    local n = 0
    engine:attach("d", "cairnloop.outbound.triggered.stop", function() n = n + 1 end)
    assert.is_true(engine:detach("d"))
    assert.is_false(engine:detach("d"))
    assert.is_false(engine:detach(42))
    assert(engine:trigger(1, { template_id = "t" }))
    assert.equals(0, n)
  end)

  it("lets a handler detach itself", function()
    local n = 0
    engine:attach("once", "cairnloop.outbound.triggered.stop", function()
      n = n + 1
      assert.is_true(engine:detach("once"))
    end)
    assert(engine:trigger(1, { template_id = "t" }))
    assert(engine:trigger(2, { template_id = "t" }))
    assert.equals(1, n)
  end)

  it("detaches and logs a raising handler; the operation commits", function()
    local n = 0
    engine:attach("raising", "cairnloop.outbound.triggered.stop", function()
      n = n + 1
      error("handler bug")
    end)
    local res = assert(engine:trigger(1, { template_id = "t" }))
    assert.equals(1, H.count(schema, "cairnloop_messages", "id = " .. res.message.id))
    assert(engine:trigger(2, { template_id = "t" }))
    assert.equals(1, n)
    assert.is_truthy(logs:find("handler raising: .*handler bug"))
    assert.is_truthy(logs:find("handler raising detached"))
    assert.is_false(engine:detach("raising"))
  end)
end)

describe("re-entry from a host hook", function()
  local engine, schema

  setup(function()
    engine, schema = H.open("host_reentry")
  end)

  teardown(function()
    engine:close()
  end)

  it("refuses engine calls from inside a hook and stays usable", function()
    for _, call in ipairs {
      function() engine:trigger(2, { template_id = "inner" }) end,
      function() engine:close() end,
      function() engine:migrate() end,
      function() engine:auditor(nil) end,
    } do
      engine:auditor { audit = function() call() return true end }
      local before = H.written(schema)
      local _, code, msg = engine:trigger(1, { template_id = "outer" })
      assert.equals("hook_error", code)
      assert.matches("inside one of this engine's hooks", msg)
      assert.same(before, H.written(schema))
    end
    engine:auditor { audit = function() return true end }
    assert(engine:trigger(1, { template_id = "outer" }))
  end)
end)

describe("engine:notifier and engine:work (host)", function()
  local engine

  before_each(function()
    engine = H.open("host_notifier")
  end)

  after_each(function()
    engine:close()
  end)

  it("delivers through the notifier", function()
    local got = {}
    assert.is_true(engine:notifier(function(message, conversation, ctx)
      got[#got + 1] = { message = message, conversation = conversation, ctx = ctx }
      return true
    end))
    local res = assert(engine:trigger(4, { template_id = "n1", content = "hello" }))
    local stats = assert(engine:work { limit = 10 })
    assert.same({ sent = 1, failed = 0, no_op = 0, retried = 0, discarded = 0 }, stats)
    assert.equals(1, #got)
    assert.equals(res.message.id, got[1].message.id)
    assert.equals("hello", got[1].message.content)
    assert.equals(4, got[1].conversation.id)
    assert.equals(1, got[1].ctx.attempt)
    assert.equals("cl-msg-" .. res.message.id, got[1].ctx.idempotency_key)
  end)

  it("counts a notifier that returns nil, reason or raises as failed", function()
    engine:notifier(function(message)
      if message.conversation_id == 5 then return nil, "smtp down" end
      error("notifier bug")
    end)
    assert(engine:trigger(5, { template_id = "n2" }))
    assert(engine:trigger(6, { template_id = "n2" }))
    local stats = assert(engine:work { limit = 10 })
    assert.equals(2, stats.failed)
    assert.equals(0, stats.sent)
  end)

  it("completes jobs as no_op without a notifier", function()
    assert(engine:trigger(7, { template_id = "n3" }))
    assert.equals(1, assert(engine:work()).no_op)
  end)

  it("returns invalid_argument for a bad limit", function()
    local stats, code = engine:work { limit = 0 }
    assert.is_nil(stats)
    assert.equals("invalid_argument", code)
  end)

  it("delivers with a concurrency too (a host notifier delivers in turn)", function()
    local n = 0
    engine:notifier(function() n = n + 1 return true end)
    for id = 1, 5 do assert(engine:trigger(id, { template_id = "c1" })) end
    local stats = assert(engine:work { limit = 10, concurrency = 4 })
    assert.same({ sent = 5, failed = 0, no_op = 0, retried = 0, discarded = 0 }, stats)
    assert.equals(5, n)
  end)

  it("refuses a bad concurrency or rate", function()
    for _, opts in ipairs { { concurrency = 0 }, { concurrency = 1001 }, { concurrency = 1.5 },
                            { rate = 0 }, { rate = "fast" }, { concurrency = 2, limit = 10001 } } do
      local stats, code = engine:work(opts)
      assert.is_nil(stats)
      assert.equals("invalid_argument", code)
    end
  end)
end)

describe("engine:work with a policy notifier", function()
  it("records the verdicts a policy notifier returns", function()
    local policy = H.policy_file([[
      local cl = require "cairnloop"
      cl.notifier(function(m)
        if m.conversation_id == 1 then return true end
        if m.conversation_id == 2 then return nil, "gone", { reason = "http_status", discard = true } end
        return nil, "later", { reason = "http_status", retry_after = 600 }
      end)
    ]])
    local engine, schema = H.open("policy_verdicts", { policy = policy })
    for id = 1, 3 do assert(engine:trigger(id, { template_id = "v1" })) end
    local stats = assert(engine:work { limit = 10, concurrency = 3 })
    assert.same({ sent = 1, failed = 2, no_op = 0, retried = 1, discarded = 1 }, stats)
    assert.equals("discarded", H.scalar("SELECT state FROM " .. schema ..
      ".cairnloop_delivery_jobs WHERE conversation_id = 2"))
    assert.equals("t", H.scalar("SELECT scheduled_at > now() + interval '590 s' FROM " .. schema ..
      ".cairnloop_delivery_jobs WHERE conversation_id = 3"))
    engine:close()
    os.remove(policy)
  end)
end)

describe("cairnloop.open{ http_allow }", function()
  it("accepts a list of patterns", function()
    local engine = H.open("http_allow_ok", { http_allow = { "https://hooks.example.com/", "http://127.0.0.1:*" } })
    engine:close()
  end)

  it("refuses a malformed pattern or a value that is not a list of strings", function()
    for _, allow in ipairs { { "ftp://example.com/" }, "http://127.0.0.1:*", { 42 } } do
      local engine, code, msg = cairnloop.open { schema = H.schema_name("http_allow_bad"), http_allow = allow }
      assert.is_nil(engine)
      assert.equals("invalid_argument", code)
      assert.matches("http_allow", msg)
    end
  end)
end)
