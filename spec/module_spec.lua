-- cairnloop.open, the engine's lifecycle and the failures that happen before
-- any operation: options, schema names, the database, policy files.
local cairnloop = require "cairnloop"
local H = require "spec.support.helper"
local C = require "spec.support.compat"

describe("cairnloop module", function()
  it("has a version string", function()
    assert.is_string(cairnloop.VERSION)
    assert.matches("^%d+%.%d+%.%d+", cairnloop.VERSION)
  end)

  it("exports only open, open_async, VERSION and EVENTS", function()
    assert.same({ "EVENTS", "VERSION", "open", "open_async" }, H.keys(cairnloop))
  end)
end)

describe("cairnloop.open", function()
  it("opens an engine and migrates idempotently", function()
    local engine = cairnloop.open { schema = H.schema_name("open") }
    assert.is_not_nil(engine)
    assert.is_true(engine:migrate())
    assert.is_true(engine:migrate())
    assert.matches("^cairnloop.engine", tostring(engine))
    assert.is_true(engine:close())
    assert.equals("cairnloop.engine (closed)", tostring(engine))
  end)

  it("defaults the database to CAIRNLOOP_DATABASE_URL", function()
    local engine = cairnloop.open()
    assert.is_not_nil(engine)
    engine:close()
  end)

  it("returns invalid_argument for a bad schema name", function()
    local engine, code, msg = cairnloop.open { schema = "Bad-Schema" }
    assert.is_nil(engine)
    assert.equals("invalid_argument", code)
    assert.matches("schema", msg)
  end)

  it("returns invalid_argument for unknown and mistyped options", function()
    local cases = {
      { schemo = "x" },
      { schema = 7 },
      { max_batch_size = 0 },
      { max_batch_size = 2.5 },
      { max_batch_size = "3" },
      { hook_instruction_limit = -1 },
      { hook_memory_limit = 10 },
      { database = "postgresql:///x\0y" },
      { log = "stderr" },
      { log_level = "loud" },
      { policy = 42 },
      { policy = { 42 } },
    }
    for _, opts in ipairs(cases) do
      local engine, code, msg = cairnloop.open(opts)
      assert.is_nil(engine)
      assert.equals("invalid_argument", code)
      assert.is_string(msg)
      assert.is_nil(msg:find("\n"))
    end
  end)

  it("raises when opts is not a table", function()
    assert.has_error(function() cairnloop.open("postgresql:///x") end)
  end)

  it("returns db_error when the database cannot be reached", function()
    local engine, code, msg = cairnloop.open {
      database = "postgresql:///none?host=/nonexistent-socket-dir&connect_timeout=2",
    }
    assert.is_nil(engine)
    assert.equals("db_error", code)
    assert.is_string(msg)
  end)

  it("returns invalid_argument for a policy file that is missing or does not compile", function()
    local engine, code, msg = cairnloop.open { policy = "/nonexistent/policy.lua" }
    assert.is_nil(engine)
    assert.equals("invalid_argument", code)
    assert.matches("nonexistent", msg)

    engine, code, msg = cairnloop.open { policy = H.policy_file("this is not lua") }
    assert.is_nil(engine)
    assert.equals("invalid_argument", code)
    assert.matches("syntax error", msg)
  end)

  it("returns hook_error for a policy file that raises while loading", function()
    local engine, code, msg = cairnloop.open { policy = H.policy_file("error('boom at load')") }
    assert.is_nil(engine)
    assert.equals("hook_error", code)
    assert.matches("boom at load", msg)
  end)

  it("loads a list of policy files in order", function()
    local logs = H.log_capture()
    local engine = assert(cairnloop.open {
      log = logs.sink,
      policy = {
        H.policy_file("require('cairnloop').log('info', 'first')"),
        H.policy_file("require('cairnloop').log('info', 'second')"),
      },
    })
    engine:close()
    local first, second
    for i, l in ipairs(logs.lines) do
      if l:find("first") then first = i end
      if l:find("second") then second = i end
    end
    assert.is_truthy(first and second and first < second)
  end)

  it("routes the engine's log lines to the log function", function()
    local logs = H.log_capture()
    local engine = assert(cairnloop.open {
      log = logs.sink,
      policy = H.policy_file("require('cairnloop').log('warn', 'hello from policy')"),
    })
    engine:close()
    assert.is_truthy(logs:find("^warn: policy: hello from policy$"))
  end)
end)

describe("engine lifecycle", function()
  it("raises on any method of a closed engine", function()
    local engine = assert(cairnloop.open())
    engine:close()
    for _, call in ipairs {
      function() engine:migrate() end,
      function() engine:trigger(1, { template_id = "t" }) end,
      function() engine:bulk_trigger({ 1 }, { template_id = "t", rendered_body = "b" }) end,
      function() engine:envelopes() end,
      function() engine:audit_events() end,
      function() engine:configure { max_batch_size = 2 } end,
      function() engine:attach("h", "a.b", function() end) end,
      function() engine:close() end,
    } do
      assert.has_error(call, "attempt to use a closed engine")
    end
  end)

  if C.lua54 then
    it("closes through __close (a <close> variable)", function()
      -- Compiled at run time: LuaJIT must still parse this file.
      local scope = C.load54([[
        local cairnloop = ...
        local copy
        do
          local engine <close> = assert(cairnloop.open())
          copy = engine
        end
        return copy
      ]], "close_scope")
      assert.equals("cairnloop.engine (closed)", tostring(scope(cairnloop)))
    end)
  else
    it("closes through __close, called as the metamethod (" .. C.runtime .. " has no <close>)", function()
      local engine = assert(cairnloop.open())
      local close = getmetatable(engine).__close
      assert.is_function(close)
      close(engine)
      assert.equals("cairnloop.engine (closed)", tostring(engine))
      close(engine) -- closing a closed engine again is a no-op
    end)
  end

  it("closes through __gc", function()
    do
      local engine = assert(cairnloop.open())
      engine:attach("h", "cairnloop.outbound.triggered.stop", function() end)
    end
    collectgarbage()
    collectgarbage()
  end)
end)
