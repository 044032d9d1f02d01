-- The hook-safety cases: each hostile hook must end in hook_error, with
-- nothing written, and the engine must work for the next call.  The
-- policy-state cases use spec/support/policies/hostile.lua, whose auditor
-- misbehaves according to the template id.
local cairnloop = require "cairnloop"
local H = require "spec.support.helper"
local C = require "spec.support.compat"

-- Budgets small enough to keep the suite fast; the guards are the same.
-- The wall clock is left at its default, so that on a loaded machine
-- (suites run side by side) it never ends a case before the budget the case
-- is about; the deadline case runs on an engine of its own, with
-- DEADLINE_MS.
local LIMITS = {
  hook_instruction_limit = 2000000,
  hook_time_limit_ms = 5000,
  hook_memory_limit = 8 * 1024 * 1024,
}
local DEADLINE_MS = 150

local function with(t, extra)
  local o = {}
  for k, v in pairs(t) do o[k] = v end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

describe("hook safety in the policy state", function()
  local engine, schema, logs

  setup(function()
    engine, schema, logs = H.open("safety", with(LIMITS, { policy = H.policies .. "hostile.lua" }))
  end)

  teardown(function()
    engine:close()
  end)

  -- Runs the hostile case, then checks the code, the message, that nothing
  -- was written and that the engine still triggers.
  local function refuses(template, pattern, code)
    local before = H.written(schema)
    local started = os.time()
    local res, got, msg = engine:trigger(1, { template_id = template })
    assert.is_nil(res)
    assert.equals(code or "hook_error", got)
    assert.matches(pattern, msg)
    assert.is_nil(msg:find("\n"))
    assert.is_true(os.time() - started <= 5)
    assert.same(before, H.written(schema))
    local ok = assert(engine:trigger(2, { template_id = "ok_after_" .. template }))
    assert.equals("ok_after_" .. template, ok.audit.template_id)
  end

  it("stops an endless loop", function()
    refuses("loop", "^auditor%.audit: instruction budget exceeded %(2000000 instructions%)$")
  end)

  it("stops an endless loop inside pcall", function()
    refuses("pcall_loop", "^auditor%.audit: instruction budget exceeded")
  end)

  it("stops a coroutine stashed at load time", function()
    refuses("stashed_coroutine", "^auditor%.audit: instruction budget exceeded")
  end)

  it("turns a yield from the hook into hook_error", function()
    refuses("yield", "attempt to yield from outside a coroutine")
  end)

  it("stops an allocation past the memory cap", function()
    refuses("memory", "^auditor%.audit: memory limit exceeded %(8388608 bytes%)$")
  end)

  it("handles error({}) (an error object that is not a string)", function()
    refuses("error_table", "^auditor%.audit: %(error object is a table value%)$")
  end)

  it("handles an error raised in __tostring of the error object", function()
    refuses("error_tostring", "^auditor%.audit: %(error object is a table value%)$")
  end)

  it("raises when tx is used after its call", function()
    assert(engine:trigger(3, { template_id = "stash_tx" }))
    refuses("stale_tx", "attempt to use a transaction handle outside its audit call")
  end)

  it("stops a hook past its wall-clock deadline (time spent in tx:exec)", function()
    local shared_engine, shared_schema = engine, schema
    engine, schema = H.open("safety_deadline",
      with(LIMITS, { policy = H.policies .. "hostile.lua", hook_time_limit_ms = DEADLINE_MS }))
    local ok, err = pcall(refuses, "sleep", "^auditor%.audit: .*time budget %(150 ms%)$")
    engine:close()
    engine, schema = shared_engine, shared_schema
    assert(ok, err)
  end)

  it("fails on an SQL error, caught or not", function()
    refuses("bad_sql", "syntax error")
    refuses("caught_sql", "transaction is aborted")
  end)

  it("refuses reading an undeclared global after loading", function()
    refuses("undeclared", "attempt to read undeclared global 'undeclared_global'")
  end)

  it("maps nil, reason to audit_rejected", function()
    refuses("reject", "^auditor%.audit: refused by policy$", "audit_rejected")
  end)

  it("detaches a raising telemetry handler while the operation commits", function()
    -- An engine of its own, so that the handler's first call is this test's.
    local e, s, l = H.open("safety_handler", with(LIMITS, { policy = H.policies .. "hostile.lua" }))
    local before = H.written(s)
    local first = assert(e:trigger(4, { template_id = "handler_a" }))
    local second = assert(e:trigger(5, { template_id = "handler_b" }))
    local third = assert(e:trigger(6, { template_id = "handler_c" }))
    assert.equals(before.messages + 3, H.written(s).messages)
    -- The auditor runs before the stop event: it sees the handler's calls so
    -- far.  The handler ran once, after the first commit, raised, and was gone.
    assert.equals(0, first.audit.handler_calls)
    assert.equals(1, second.audit.handler_calls)
    assert.equals(1, third.audit.handler_calls)
    assert.is_truthy(l:find("handler raising: .*handler failure"))
    assert.is_truthy(l:find("handler raising detached"))
    e:close()
  end)
end)

describe("hook safety for host hooks", function()
  local engine, schema

  setup(function()
    engine, schema = H.open("host_safety", LIMITS)
  end)

  teardown(function()
    engine:close()
  end)

  local runs = 0

  local function refuses(audit, pattern)
    runs = runs + 1
    engine:auditor { audit = audit }
    local before = H.written(schema)
    local res, code, msg = engine:trigger(1, { template_id = "t" })
    assert.is_nil(res)
    assert.equals("hook_error", code)
    assert.matches(pattern, msg)
    assert.same(before, H.written(schema))
    -- A fresh template each time: a duplicate trigger does not audit again.
    engine:auditor { audit = function() return "fine" end }
    assert.equals("fine", assert(engine:trigger(2, { template_id = "after_" .. runs })).audit)
  end

  it("stops an endless loop", function()
    refuses(function() while true do end end, "instruction budget exceeded")
  end)

  it("stops an endless loop inside pcall", function()
    refuses(function() while true do pcall(function() while true do end end) end end,
      "instruction budget exceeded")
  end)

  -- Regression: LuaJIT runs compiled traces without calling hooks, so a
  -- host hook whose loop was JIT-compiled before the call ran past its
  -- budget forever (fixed in 416d72f: the JIT is off during a host hook).
  it("stops a hook whose own loop was hot (JIT-compiled) before the call", function()
    local limit = 10000
    local function audit()
      local x = 0
      while x < limit do x = x + 1 end
      return true
    end
    for _ = 1, 200 do audit() end
    limit = math.huge -- the same compiled loop now never ends
    refuses(audit, "instruction budget exceeded")
  end)

  if C.luajit then
    it("turns the JIT off for the call only, and leaves it as the host had it (LuaJIT)", function()
      refuses(function() while true do end end, "instruction budget exceeded")
      assert.is_true((jit.status()))
      jit.off()
      local ok, err = pcall(refuses, function() while true do end end, "instruction budget exceeded")
      local after = jit.status()
      jit.on()
      assert(ok, err)
      assert.is_false(after)
    end)
  end

  it("stops a coroutine created in the hook", function()
    refuses(function() coroutine.wrap(function() while true do end end)() end,
      "instruction budget exceeded")
  end)

  it("turns a yield across the engine into hook_error", function()
    engine:auditor { audit = function() coroutine.yield() end }
    local co = coroutine.create(function()
      return engine:trigger(1, { template_id = "t" })
    end)
    local ok, res, code = coroutine.resume(co)
    assert.is_true(ok)
    assert.is_nil(res)
    assert.equals("hook_error", code)
    engine:auditor(nil)
    assert(engine:trigger(2, { template_id = "t" }))
  end)

  it("handles error({}) and a raising __tostring", function()
    refuses(function() error({}) end, "%(error object is a table value%)")
    refuses(function()
      error(setmetatable({}, { __tostring = function() error("nested") end }))
    end, "%(error object is a table value%)")
  end)

  it("uses __tostring of an error object when it works", function()
    refuses(function()
      error(setmetatable({}, { __tostring = function() return "custom error" end }))
    end, "^auditor%.audit: custom error$")
  end)

  it("puts the host's own hook back after the call", function()
    local fired = 0
    local function mine() fired = fired + 1 end
    debug.sethook(mine, "", 1000)
    engine:auditor { audit = function() return true end }
    assert(engine:trigger(3, { template_id = "t" }))
    local hook, mask, count = debug.gethook()
    debug.sethook()
    assert.equals(mine, hook)
    assert.equals("", mask)
    assert.equals(1000, count)
  end)
end)

describe("a policy that raises while loading", function()
  it("leaves no engine behind and the next open works", function()
    local engine, code = cairnloop.open { policy = H.policy_file("while true do end"),
      hook_instruction_limit = 100000 }
    assert.is_nil(engine)
    assert.equals("hook_error", code)
    assert.is_truthy(assert(cairnloop.open()):close())
  end)
end)
