-- cairnloop.open_async: the asynchronous engine from Lua.  Operations are
-- submitted and return at once; their callbacks run later, from
-- async:poll(), in the polling coroutine, with what the blocking method
-- returns.  Every wait here is bounded (a deadline on a condition).
local H = require "spec.support.helper"
local C = require "spec.support.compat"
local cairnloop = require "cairnloop"
local system = require "system" -- lua-system, which busted itself needs

local unpack = table.unpack or unpack
local has_luv, uv = pcall(require, "luv")

local function pack(...) return { n = select("#", ...), ... } end

--- Opens an asynchronous engine on a fresh schema, migrated and holding 30
-- conversations (made by the blocking engine).  Returns it, the schema
-- and the captured log.
local function open_async(tag, opts)
  local engine, schema, logs = H.open(tag)
  engine:close()
  local o = { schema = schema, log = logs.sink, log_level = "debug" }
  for k, v in pairs(opts or {}) do o[k] = v end
  local a, code, msg = cairnloop.open_async(o)
  assert(a, tostring(code) .. ": " .. tostring(msg))
  return a, schema, logs
end

--- Waits until cond() is true, for `seconds` at most (default 30).
local function wait_until(cond, what, seconds)
  local deadline = system.monotime() + (seconds or 30)
  while not cond() do
    if system.monotime() > deadline then error("timed out waiting for " .. what, 2) end
    system.sleep(0.002)
  end
end

--- Polls `a` until every submitted operation's callback has run.
local function drain(a)
  wait_until(function()
    a:poll()
    return a:pending() == 0
  end, "every callback")
end

--- Whether the eventfd `fd` of this process is readable: the kernel's own
-- count of it (readable exactly while the count is above 0).
local function readable(fd)
  local f = assert(io.open("/proc/self/fdinfo/" .. fd))
  local info = f:read("*a")
  f:close()
  local count = assert(info:match("eventfd%-count:%s*(%x+)"), info)
  return tonumber(count, 16) > 0
end

local function collect()
  for _ = 1, 4 do collectgarbage() end
end

describe("cairnloop.open_async", function()
  it("runs many operations in flight, each callback once, in the polling coroutine, with the blocking method's results", function()
    local a, schema = open_async("inflight")
    local calls, results, poller, in_poll = {}, {}, nil, false
    local function cb(key)
      return function(...)
        calls[key] = (calls[key] or 0) + 1
        results[key] = pack(...)
        results[key].in_poll = in_poll
        results[key].thread = coroutine.running()
      end
    end
    for id = 1, 20 do
      assert.is_true(a:trigger(id, { template_id = "inflight", actor = "op:" .. id }, cb(id)))
    end
    assert.is_true(a:bulk_trigger({ 21, 22, 23 }, { template_id = "bulk", rendered_body = "hello" },
      cb("bulk")))
    -- Operations run in submission order: this count sees the 23 messages.
    assert.is_true(a:query("SELECT count(*) AS n FROM " .. schema .. ".cairnloop_messages", cb("count")))
    assert.is_true(a:envelopes({ template_id = "bulk" }, cb("envelopes")))
    assert.is_true(a:envelopes(cb("all_envelopes")))
    assert.is_true(a:trigger(999, { template_id = "inflight" }, cb("unknown")))
    assert.is_true(a:migrate(cb("migrate")))
    assert.equals(26, a:pending())
    assert.matches("^cairnloop%.async %(" .. schema .. ", %d+ pending%)$", tostring(a))

    local ran = 0
    local co = coroutine.wrap(function()
      poller = coroutine.running()
      wait_until(function()
        in_poll = true
        ran = ran + a:poll()
        in_poll = false
        return a:pending() == 0
      end, "every callback")
    end)
    co()
    assert.equals(26, ran)
    for key, n in pairs(calls) do
      assert.equals(1, n, "callback " .. tostring(key))
      assert.is_true(results[key].in_poll, "callback " .. tostring(key))
      assert.equals(poller, results[key].thread, "callback " .. tostring(key))
    end

    -- What the blocking engine says of the same operations.
    local engine = assert(cairnloop.open { schema = schema })
    for id = 1, 20 do
      local r = results[id]
      assert.equals(1, r.n)
      local res = r[1]
      assert.same({ "delivery_job", "duplicate", "message" }, H.keys(res))
      assert.is_false(res.duplicate)
      local again = assert(engine:trigger(id, { template_id = "inflight", actor = "op:" .. id }))
      assert.is_true(again.duplicate)
      assert.same(again.message, res.message)
      assert.same(again.delivery_job, res.delivery_job)
    end
    local bulk = results.bulk[1]
    assert.same({ "delivery_jobs", "envelope", "messages", "replayed" }, H.keys(bulk))
    assert.same({ 21, 22, 23 }, bulk.envelope.recipient_conversation_ids)
    assert.equals(3, #bulk.messages)
    assert.same(engine:envelope(bulk.envelope.id), bulk.envelope)
    assert.equals(23, results.count[1][1].n)
    assert.same(engine:envelopes { template_id = "bulk" }, results.envelopes[1])
    assert.same(engine:envelopes(), results.all_envelopes[1])
    assert.same({ n = 3, nil, "unknown_conversation", "conversation 999 does not exist" },
      { n = results.unknown.n, unpack(results.unknown, 1, 3) })
    assert.equals(true, results.migrate[1])

    -- envelope(id): the envelope, nil for an unknown id, and the engine's
    -- own checks of the value as the callback's outcome.
    local got = {}
    assert.is_true(a:envelope(bulk.envelope.id, function(...) got.found = pack(...) end))
    assert.is_true(a:envelope("00000000-0000-4000-8000-000000000000", function(...) got.missing = pack(...) end))
    assert.is_true(a:envelope("not-a-uuid", function(...) got.bad = pack(...) end))
    drain(a)
    assert.same(engine:envelope(bulk.envelope.id), got.found[1])
    assert.equals(1, got.missing.n)
    assert.is_nil(got.missing[1])
    assert.same({ engine:envelope("not-a-uuid") }, { unpack(got.bad, 1, got.bad.n) })
    assert.equals("invalid_argument", got.bad[2])
    engine:close()
    assert.is_true(a:close())
  end)

  it("makes its descriptor readable while completions wait, and poll clears it", function()
    local a = open_async("fd")
    local fd = a:fd()
    assert.equals("integer", C.math_type(fd))
    assert.is_true(fd > 2)
    assert.is_false(readable(fd))
    local got
    assert.is_true(a:query("SELECT 42 AS answer", function(rows) got = rows[1].answer end))
    wait_until(function() return readable(fd) end, "the descriptor to become readable")
    assert.is_nil(got) -- nothing runs before poll
    assert.equals(1, a:pending())
    assert.equals(1, a:poll())
    assert.equals(42, got)
    assert.is_false(readable(fd))
    assert.equals(0, a:pending())
    assert.equals(0, a:poll())

    if has_luv then
      -- A luv loop: the poll handle fires on the descriptor, then stops it.
      local fired = false
      assert.is_true(a:query("SELECT 7 AS seven", function(rows) got = rows[1].seven end))
      local handle = uv.new_poll(fd)
      handle:start("r", function(err)
        assert(not err, err)
        fired = true
        a:poll()
        uv.stop()
      end)
      local timer = uv.new_timer()
      timer:start(30000, 0, function() uv.stop() end) -- the bound
      uv.run()
      handle:close()
      timer:close()
      uv.run("nowait")
      assert.is_true(fired)
      assert.equals(7, got)
    end
    a:close()
  end)

  it("refuses bad arguments at submit with invalid_argument and never calls their callback", function()
    local a = open_async("badargs")
    local called = 0
    local function cb() called = called + 1 end
    local cases = {
      { "conversation_id must be an integer, got string", function() return a:trigger("1", { template_id = "t" }, cb) end },
      { "conversation_id must be an integer, got a number with a fraction", function() return a:trigger(1.5, { template_id = "t" }, cb) end },
      { "template_id must be a string, got a number", function() return a:trigger(1, { template_id = 7 }, cb) end },
      { "unknown option 'template'", function() return a:trigger(1, { template = "t" }, cb) end },
      { "content contains a NUL byte", function() return a:trigger(1, { template_id = "t", content = "a\0b" }, cb) end },
      { "actor must be a string, got a function", function() return a:trigger(1, { template_id = "t", actor = print }, cb) end },
      { "conversation ids must be a list without holes", function() return a:bulk_trigger({ 1, nil, 3 }, { template_id = "t", rendered_body = "b" }, cb) end },
      { "conversation ids must be a list, got a string", function() return a:bulk_trigger("1,2", { template_id = "t", rendered_body = "b" }, cb) end },
      { "conversation id 2 must be an integer", function() return a:bulk_trigger({ 1, "2" }, { template_id = "t", rendered_body = "b" }, cb) end },
      { "envelope id must be a UUID string", function() return a:envelope(5, cb) end },
      { "limit must be an integer from 1 to 10000", function() return a:envelopes({ limit = 0 }, cb) end },
      { "unknown option 'state'", function() return a:envelopes({ state = "x" }, cb) end },
      { "concurrency must be an integer", function() return a:work({ concurrency = 0 }, cb) end },
      { "rate must be a number of deliveries per second above 0", function() return a:work({ rate = -1 }, cb) end },
      { "limit must be an integer", function() return a:work({ limit = "ten" }, cb) end },
    }
    for _, case in ipairs(cases) do
      local ok, code, msg = case[2]()
      assert.is_nil(ok, case[1])
      assert.equals("invalid_argument", code, case[1])
      assert.is_truthy(msg:find(case[1], 1, true), msg)
    end
    assert.equals(0, a:pending())
    assert.equals(0, a:poll())
    assert.equals(0, called)

    -- Misuse raises, as on the blocking engine.
    assert.has_error(function() a:trigger(1, "opts", cb) end)
    assert.has_error(function() a:trigger(1, { template_id = "t" }) end) -- no callback
    assert.has_error(function() a:migrate() end)
    assert.has_error(function() a:query("SELECT $1", {}, cb) end)
    assert.has_error(function() a:query("SELECT 1") end)
    assert.has_error(function() a:query("SELECT\0 1", cb) end)
    assert.has_error(function() a:close("later") end)
    assert.has_error(function() cairnloop.open_async("opts") end)
    assert.equals(0, a:pending())
    a:close()
    assert.has_error(function() a:trigger(1, { template_id = "t" }, cb) end,
      "attempt to use a closed asynchronous engine")
    assert.has_error(function() a:close() end, "attempt to use a closed asynchronous engine")
    assert.equals(0, called)
  end)

  it("refuses a submission past queue_size with the engine's message, and takes it once poll made room", function()
    local a = open_async("full", { queue_size = 2 })
    local n = 0
    local function cb() n = n + 1 end
    assert.is_true(a:query("SELECT 1", cb))
    assert.is_true(a:query("SELECT 2", cb))
    local ok, code, msg = a:query("SELECT 3", function() n = n + 100 end)
    assert.is_nil(ok)
    assert.equals("invalid_argument", code)
    assert.equals("async: queue full: 2 operations in flight (queue_capacity 2)", msg)
    drain(a)
    assert.equals(2, n) -- the refused one never runs
    assert.is_true(a:query("SELECT 3", cb))
    drain(a)
    assert.equals(3, n)
    a:close()
  end)

  it("close('drain') runs every queued operation and its callback before it returns", function()
    local a, schema = open_async("drain")
    local got = {}
    assert.is_true(a:query("SELECT pg_sleep(0.2)", function(rows, code) got.sleep = rows and "ran" or code end))
    for id = 1, 10 do
      assert.is_true(a:trigger(id, { template_id = "drain" }, function(res, code)
        got[id] = res and res.message.id or code
      end))
    end
    assert.is_true(a:close()) -- "drain" is the default
    assert.equals("ran", got.sleep)
    for id = 1, 10 do assert.equals("number", type(got[id]), tostring(got[id])) end
    assert.equals(10, H.count(schema, "cairnloop_messages"))
    assert.equals("cairnloop.async (closed)", tostring(a))
    assert.has_error(function() a:poll() end, "attempt to use a closed asynchronous engine")
  end)

  it("close('cancel') lets the running operation finish and completes the queued ones with db_error, writing nothing of them", function()
    local a, schema = open_async("cancel")
    local got = {}
    assert.is_true(a:query("SELECT pg_sleep(1) AS slept /* " .. schema .. " */", function(...)
      got.sleep = pack(...)
    end))
    for id = 1, 10 do
      assert.is_true(a:trigger(id, { template_id = "cancel" }, function(...) got[id] = pack(...) end))
    end
    -- Only once the server runs the query is it the running operation.
    wait_until(function()
      return H.scalar("SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
        .. "AND state = 'active' AND query LIKE '%pg_sleep(1)%" .. schema .. "%'") == 1
    end, "the query to run")
    assert.is_true(a:close("cancel"))
    assert.equals(1, got.sleep.n)
    assert.equals("table", type(got.sleep[1]))
    for id = 1, 10 do
      assert.same({ n = 3, nil, "db_error", "async: engine closed before the operation ran" }, got[id])
    end
    assert.equals(0, H.count(schema, "cairnloop_messages"))
  end)

  it("runs every ready callback when one raises, then raises the first error from poll", function()
    local a = open_async("raise")
    local ran = {}
    assert.is_true(a:query("SELECT 1", function() ran[1] = true; error("first callback fails") end))
    assert.is_true(a:query("SELECT 2", function() ran[2] = true end))
    assert.is_true(a:query("SELECT 3", function() ran[3] = true; error({ code = 3 }) end))
    assert.is_true(a:query("SELECT 4", function() ran[4] = true end))
    local errors = {}
    wait_until(function()
      local ok, err = pcall(a.poll, a)
      if not ok then errors[#errors + 1] = err end
      return a:pending() == 0
    end, "every callback")
    assert.same({ true, true, true, true }, ran)
    local all = table.concat(errors, "\n")
    assert.matches("first callback fails", all)
    assert.matches("stack traceback", all)
    if #errors == 1 then
      assert.matches("1 more callbacks raised in this run", all)
    else
      assert.equals(2, #errors)
      assert.matches("error object is a table value", errors[2])
    end

    -- Still usable; and close raises the same way, once it has closed.
    local after = 0
    assert.is_true(a:query("SELECT 5", function() error("raised while closing") end))
    assert.is_true(a:query("SELECT 6", function() after = after + 1 end))
    assert.has_error(function() a:close() end)
    assert.equals(1, after)
    assert.equals("cairnloop.async (closed)", tostring(a))
  end)

  it("lets a callback submit more; poll from a callback returns 0 and close from it raises", function()
    local a = open_async("nested")
    local got = {}
    assert.is_true(a:query("SELECT 1 AS one", function(rows)
      got.one = rows[1].one
      got.inner_poll = a:poll()
      got.close_ok, got.close_err = pcall(a.close, a)
      assert.is_true(a:query("SELECT 2 AS two", function(rows2) got.two = rows2[1].two end))
    end))
    drain(a)
    assert.equals(1, got.one)
    assert.equals(0, got.inner_poll)
    assert.is_false(got.close_ok)
    assert.matches("cannot be called from inside its callbacks", got.close_err)
    assert.equals(2, got.two)
    a:close()
  end)

  it("releases every callback on every path: run, refused, drained, cancelled", function()
    local a = open_async("refs", { queue_size = 3 })
    local weak = setmetatable({}, { __mode = "k" })
    local function cb()
      local f = function() end
      weak[f] = true
      return f
    end
    assert.is_true(a:query("SELECT 1", cb()))
    drain(a)
    assert.is_true(a:query("SELECT 1", cb()))
    assert.is_true(a:query("SELECT 2", cb()))
    assert.is_true(a:query("SELECT 3", cb()))
    assert.is_nil((a:query("SELECT 4", cb()))) -- refused: queue full
    drain(a)
    assert.is_true(a:query("SELECT pg_sleep(0.1)", cb()))
    assert.is_true(a:trigger(1, { template_id = "t" }, cb()))
    assert.is_true(a:trigger(2, { template_id = "t" }, cb()))
    a:close("cancel")
    collect()
    assert.is_nil(next(weak))
  end)

  it("on garbage collection cancels what is pending, calls none of the callbacks and releases them", function()
    local engine, schema = H.open("gc")
    engine:close()
    local called = false
    local weak = setmetatable({}, { __mode = "k" })
    -- In a coroutine that ends, so that no stack slot keeps the engine.
    local start = coroutine.wrap(function()
      local a = assert(cairnloop.open_async { schema = schema })
      weak[a] = true
      assert.is_true(a:query("SELECT pg_sleep(0.1)", function() called = true end))
      for id = 1, 5 do
        local f = function() called = true end
        weak[f] = true
        assert.is_true(a:trigger(id, { template_id = "gc" }, f))
      end
    end)
    start()
    start = nil
    collect()
    assert.is_nil(next(weak)) -- the engine and every callback are gone
    assert.is_false(called)
    -- The engine thread is gone too: what it wrote stays as it is.
    local n = H.count(schema, "cairnloop_messages")
    assert.is_true(n <= 5)
    assert.equals(n, H.count(schema, "cairnloop_messages"))
  end)

  it("runs a policy file's auditor on the engine thread: its row comes back in res.audit", function()
    local a, schema = open_async("auditor", { policy = H.lua_dir .. "table_auditor.lua" })
    local got = {}
    assert.is_true(a:trigger(1, { template_id = "audited", actor = "op:1" }, function(...) got.t = pack(...) end))
    assert.is_true(a:bulk_trigger({ 2, 3 }, { template_id = "audited", rendered_body = "x" },
      function(...) got.b = pack(...) end))
    assert.is_true(a:bulk_trigger({ 4, 999 }, { template_id = "audited", rendered_body = "x" },
      function(...) got.unknown = pack(...) end))
    drain(a)
    local t = got.t[1]
    assert.equals("outbound_trigger", t.audit.action)
    assert.equals("op:1", t.audit.actor)
    assert.equals(1, t.audit.conversation_id)
    local b = got.b[1]
    assert.equals("bulk_outbound_trigger", b.audit.action)
    assert.equals(b.envelope.id, b.audit.bulk_envelope_id)
    assert.equals(2, b.audit.count)
    assert.equals("unknown_conversation", got.unknown[2])
    assert.equals(2, H.count(schema, "cairnloop_audit_events")) -- the refused one rolled back
    a:close()
  end)

  it("hands a plain-value actor to a policy's actor resolver, and refuses it without one", function()
    local policy = H.policy_file([[
      local cl = require "cairnloop"
      cl.actor_resolver(function(actor, ctx)
        if type(actor) == "table" then return "player:" .. actor.id end
        return actor
      end)
    ]])
    local a = open_async("resolver", { policy = policy })
    local got = {}
    assert.is_true(a:bulk_trigger({ 1 }, { template_id = "t", rendered_body = "b", actor = { id = 7 } },
      function(...) got.bulk = pack(...) end))
    assert.is_true(a:trigger(2, { template_id = "t", actor = { id = 8 } }, function(...) got.trigger = pack(...) end))
    assert.is_true(a:bulk_trigger({ 3 }, { template_id = "t", rendered_body = "b", actor = "agent" },
      function(...) got.plain = pack(...) end))
    drain(a)
    assert.equals("player:7", got.bulk[1].envelope.requested_by)
    assert.is_false(got.trigger[1].duplicate)
    assert.equals("agent", got.plain[1].envelope.requested_by)
    a:close()
    os.remove(policy)

    local b = open_async("noresolver")
    assert.is_true(b:trigger(1, { template_id = "t", actor = { id = 1 } }, function(...) got.none = pack(...) end))
    drain(b)
    assert.same({ n = 3, nil, "invalid_argument",
      "actor must be a string, got a table (an actor resolver may take plain values)" }, got.none)
    b:close()
  end)

  it("works with a policy notifier, whose log lines reach the log function from poll", function()
    local policy = H.policy_file([[
      local cl = require "cairnloop"
      cl.log("info", "notifier policy loaded")
      cl.notifier(function(message, conversation, delivery)
        cl.log("info", "notified message " .. message.id .. " attempt " .. delivery.attempt)
        return true
      end)
    ]])
    local lines, in_poll = {}, false
    local a = open_async("notifier", {
      policy = policy,
      log = function(level, line) lines[#lines + 1] = { level = level, line = line, in_poll = in_poll } end,
    })
    -- The policy's load-time line arrived before open_async returned.
    local loaded = false
    for _, l in ipairs(lines) do loaded = loaded or l.line == "policy: notifier policy loaded" end
    assert.is_true(loaded)
    local ids, stats = {}, nil
    for id = 1, 3 do
      assert.is_true(a:trigger(id, { template_id = "notify" }, function(res) ids[#ids + 1] = res.message.id end))
    end
    assert.is_true(a:work({ limit = 10, concurrency = 2 }, function(res, code, msg)
      stats = res or { code = code, msg = msg }
    end))
    wait_until(function()
      in_poll = true
      a:poll()
      in_poll = false
      return a:pending() == 0
    end, "every callback")
    assert.same({ "discarded", "failed", "no_op", "retried", "sent" }, H.keys(stats))
    assert.equals(3, stats.sent)
    local notified = {}
    for _, l in ipairs(lines) do
      local id = l.line:match("^policy: notified message (%d+) attempt 1$")
      if id then
        assert.is_true(l.in_poll)
        assert.equals("info", l.level)
        notified[#notified + 1] = tonumber(id)
      end
    end
    table.sort(notified)
    table.sort(ids)
    assert.same(ids, notified)
    a:close()
    os.remove(policy)
  end)

  it("reports failures to open: bad options, a policy that raises, no database", function()
    local engine, schema = H.open("openfail")
    engine:close()
    local function fails(opts, code, pattern)
      local a, c, msg = cairnloop.open_async(opts)
      assert.is_nil(a)
      assert.equals(code, c)
      assert.matches(pattern, msg)
    end
    fails({ schema = schema, nope = 1 }, "invalid_argument", "unknown option 'nope'")
    fails({ schema = schema, queue_size = 0 }, "invalid_argument", "queue_size must be an integer")
    fails({ schema = schema, log = "stderr" }, "invalid_argument", "log must be a function")
    fails({ schema = schema, policy = { 5 } }, "invalid_argument", "policy 1 must be a path")
    fails({ schema = "Bad Schema" }, "invalid_argument", "schema")
    -- The load's traceback reaches the log function before open_async returns.
    local broken = H.policy_file("error('broken policy')")
    local logs = H.log_capture()
    fails({ schema = schema, policy = broken, log = logs.sink }, "hook_error", "broken policy")
    assert.is_truthy(logs:find("^error: policy: stack traceback:"))
    os.remove(broken)
    fails({ schema = schema, database = "postgresql:///none?host=/nonexistent&connect_timeout=2" },
      "db_error", ".")
  end)

  if C.lua54 then
    it("closes a to-be-closed engine at the end of its scope, draining it (Lua 5.4)", function()
      local engine, schema = H.open("toclose")
      engine:close()
      local got = {}
      local chunk = assert(load([[
        local cairnloop, schema, got = ...
        do
          local a <close> = assert(cairnloop.open_async { schema = schema })
          a:query("SELECT 5 AS five", function(rows) got.five = rows[1].five end)
          got.a = a
        end
      ]]))
      chunk(cairnloop, schema, got)
      assert.equals(5, got.five)
      assert.equals("cairnloop.async (closed)", tostring(got.a))
    end)
  end

  it("examples/lua-async/server.lua triggers and delivers from a luv loop that keeps ticking", function()
    if not has_luv then
      pending("lua-luv is not installed")
      return
    end
    local engine, schema = H.open("example")
    engine:close()
    local interp = C.luajit and "luajit" or "lua5.4"
    local cpath_var = C.luajit and "LUA_CPATH" or "LUA_CPATH_5_4"
    local out, status = H.shell(H.command("env", cpath_var .. "=" .. package.cpath,
      "CAIRNLOOP_SCHEMA=" .. schema, interp, H.root .. "examples/lua-async/server.lua",
      "welcome", "1", "2", "3"))
    assert.equals(0, status, out)
    assert.matches("migrate: ok", out)
    for id = 1, 3 do assert.matches("trigger " .. id .. ": message %d+, job %d+", out) end
    assert.matches("work: sent 0, no_op 3, failed 0", out)
    assert.matches("ticks: %d+", out)
    assert.equals(3, H.count(schema, "cairnloop_messages", "metadata->>'status' = 'sent'"))
  end)
end)
