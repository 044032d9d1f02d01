-- The policy state: `require "cairnloop"` as the registration API, the
-- sandbox, and hooks registered by a policy (same contracts as the host's,
-- with res.audit carried as JSON).
local cairnloop = require "cairnloop"
local H = require "spec.support.helper"
local C = require "spec.support.compat"

-- Opens an engine whose policy is `source`; returns engine, schema, logs.
local function with_policy(tag, source, opts)
  local o = { policy = H.policy_file(source) }
  for k, v in pairs(opts or {}) do o[k] = v end
  return H.open(tag, o)
end

describe("the policy state's cairnloop module", function()
  it("offers the registration API, the schema, the version and EVENTS, and no engine methods", function()
    local engine, schema = with_policy("api", [[
      local cl = require "cairnloop"
      local names = {}
      for k in pairs(cl) do names[#names + 1] = k end
      table.sort(names)
      cl.auditor { audit = function() return { names = names, schema = cl.schema, version = cl.VERSION } end }
    ]])
    local res = assert(engine:trigger(1, { template_id = "t" }))
    assert.same({ "EVENTS", "VERSION", "actor_resolver", "attach", "attach_many", "auditor", "crypto",
      "detach", "getenv", "http", "log", "notifier", "schema" }, res.audit.names)
    assert.equals(schema, res.audit.schema)
    assert.equals(cairnloop.VERSION, res.audit.version)
    engine:close()
  end)

  it("carries the auditor's return value as JSON into res.audit", function()
    local engine = with_policy("json", [[
      require("cairnloop").auditor { audit = function(tx, action, actor, md)
        if md.template_id == "fn" then return function() end end
        if md.template_id == "nan" then return 0/0 end
        return { action = action, n = 3, f = 1.5, yes = true, list = { 1, "two", { x = 1 } },
                 md = md, big = 9007199254740993 }
      end }
    ]])
    local res = assert(engine:trigger(1, { template_id = "t" }))
    -- The policy runs on Lua 5.4, so 2^53 + 1 is exact there; the host gets
    -- it as an integer on Lua 5.4 and as its decimal string on LuaJIT.
    assert.same({ action = "outbound_trigger", n = 3, f = 1.5, yes = true,
      list = { 1, "two", { x = 1 } }, md = { conversation_id = 1, template_id = "t" },
      big = C.int64("9007199254740993") }, res.audit)
    assert.equals("integer", C.math_type(res.audit.n))
    assert.equals("float", C.math_type(res.audit.f))
    for _, t in ipairs { "fn", "nan" } do
      local r, code, msg = engine:trigger(2, { template_id = t })
      assert.is_nil(r)
      assert.equals("hook_error", code)
      assert.matches("cannot be encoded as JSON", msg)
    end
    engine:close()
  end)

  it("registers an actor resolver", function()
    local engine, schema = with_policy("resolver", [[
      require("cairnloop").actor_resolver(function(actor, ctx)
        if actor == "banned" then return nil, "banned actor" end
        if actor == nil then return nil end
        return ctx.action .. ":" .. actor
      end)
    ]])
    local res = assert(engine:bulk_trigger({ 1 }, { template_id = "t", rendered_body = "b", actor = "u" }))
    assert.equals("bulk_outbound_trigger:u", res.envelope.requested_by)
    local before = H.written(schema)
    local r, code, msg = engine:trigger(1, { template_id = "t", actor = "banned" })
    assert.is_nil(r)
    assert.equals("actor_rejected", code)
    assert.equals("actor_resolver: banned actor", msg)
    assert.same(before, H.written(schema))
    engine:close()
  end)

  it("registers telemetry handlers, with config, and detaches them", function()
    local engine = with_policy("handlers", [[
      local cl = require "cairnloop"
      local seen = {}
      assert(cl.attach("one", "cairnloop.outbound.triggered.stop", function(event, m, md, config)
        seen[#seen + 1] = table.concat(event, ".") .. " " .. md.outcome .. " " .. config.tag
      end, { tag = "cfg" }))
      assert(cl.attach_many("many", { { "cairnloop", "outbound", "triggered", "start" } },
        function() seen[#seen + 1] = "start" end))
      local ok, code = cl.attach("one", "x.y", function() end)
      assert(ok == nil and code == "invalid_argument")
      cl.auditor { audit = function(tx, action, actor, md)
        if md.template_id == "detach" then
          return { detached = cl.detach("one"), again = cl.detach("one") }
        end
        return { seen = seen }
      end }
    ]])
    assert(engine:trigger(1, { template_id = "a" }))
    local res = assert(engine:trigger(2, { template_id = "b" }))
    assert.same({ "start", "cairnloop.outbound.triggered.stop triggered cfg", "start" }, res.audit.seen)
    res = assert(engine:trigger(3, { template_id = "detach" }))
    assert.same({ detached = true, again = false }, res.audit)
    engine:close()
  end)

  it("registers a notifier used by engine:work", function()
    local engine = with_policy("notifier", [[
      require("cairnloop").notifier(function(message, conversation, ctx)
        if conversation.id == 2 then return nil, "no address" end
        return message.content == "hi" and ctx.attempt == 1
      end)
    ]])
    assert(engine:trigger(1, { template_id = "n", content = "hi" }))
    assert(engine:trigger(2, { template_id = "n", content = "hi" }))
    local stats = assert(engine:work { limit = 10 })
    assert.equals(1, stats.sent)
    assert.equals(1, stats.failed)
    engine:close()
  end)

  it("answers engine:audit_events through list_events(opts, tx)", function()
    local engine = with_policy("list", [[
      local cl = require "cairnloop"
      cl.auditor {
        audit = function() return true end,
        list_events = function(opts, tx)
          local rows = tx:exec("SELECT count(*) AS n FROM " .. cl.schema .. ".cairnloop_messages")
          return { { opts = opts, messages = rows[1].n } }
        end,
      }
    ]])
    assert(engine:trigger(1, { template_id = "t" }))
    assert.same({ { opts = { limit = 3 }, messages = 1 } }, engine:audit_events { limit = 3 })
    engine:close()
  end)

  it("refuses registering hooks from inside a hook", function()
    local engine = with_policy("reregister", [[
      local cl = require "cairnloop"
      cl.auditor { audit = function() cl.auditor(nil) end }
    ]])
    local r, code, msg = engine:trigger(1, { template_id = "t" })
    assert.is_nil(r)
    assert.equals("hook_error", code)
    assert.matches("from inside a hook", msg)
    engine:close()
  end)

  it("logs through cl.log, print and warn", function()
    local engine, _, logs = with_policy("log", [[
      local cl = require "cairnloop"
      cl.log("debug", "d-line")
      cl.log("error", "two\nlines")
      print("printed", 42, nil)
      warn("warned ", "once")
      assert(not pcall(cl.log, "loud", "x"))
    ]])
    assert.is_truthy(logs:find("^debug: policy: d%-line$"))
    assert.is_truthy(logs:find("^error: policy: two$"))
    assert.is_truthy(logs:find("^error: policy: lines$"))
    assert.is_truthy(logs:find("^info: policy: printed 42 nil$")) -- tabs become spaces
    assert.is_truthy(logs:find("^warn: policy warning: warned once$"))
    engine:close()
  end)
end)

describe("the policy sandbox", function()
  it("has no io, os.execute, debug, dofile, loadfile or C loaders", function()
    local engine = with_policy("sandbox", [[
      local cl = require "cairnloop"
      local found = {
        io = rawget(_G, "io") ~= nil,
        debug = rawget(_G, "debug") ~= nil,
        dofile = rawget(_G, "dofile") ~= nil,
        loadfile = rawget(_G, "loadfile") ~= nil,
        execute = os.execute ~= nil,
        getenv = os.getenv ~= nil,
        remove = os.remove ~= nil,
        loadlib = package.loadlib ~= nil,
        cpath = package.cpath,
        searchers = #package.searchers,
        time = type(os.time()),
        require_io = pcall(require, "io"),
        require_debug = pcall(require, "debug"),
        require_c = pcall(require, "cjson"),
      }
      cl.auditor { audit = function() return found end }
    ]])
    local found = assert(engine:trigger(1, { template_id = "t" })).audit
    assert.same({ io = false, debug = false, dofile = false, loadfile = false, execute = false,
      getenv = false, remove = false, loadlib = false, cpath = "", searchers = 2,
      time = "number", require_io = false, require_debug = false, require_c = false }, found)
    engine:close()
  end)

  it("loads text chunks only", function()
    local engine = with_policy("load", [[
      local text = load("return 1 + 1")()
      local bin, err = load(string.dump(function() return 1 end))
      local withenv = load("return x", "chunk", "b", { x = 7 })()
      require("cairnloop").auditor { audit = function()
        return { text = text, bin = bin == nil, err = err, withenv = withenv }
      end }
    ]])
    local audit = assert(engine:trigger(1, { template_id = "t" })).audit
    assert.equals(2, audit.text)
    assert.is_true(audit.bin)
    assert.matches("binary", audit.err)
    assert.equals(7, audit.withenv)
    engine:close()
  end)

  it("refuses __gc finalisers", function()
    local engine, code, msg = cairnloop.open { policy = H.policy_file([[
      setmetatable({}, { __gc = function() while true do end end })
    ]]) }
    assert.is_nil(engine)
    assert.equals("hook_error", code)
    assert.matches("__gc", msg)
  end)

  it("makes globals strict once loading ends", function()
    local engine = with_policy("strict", [[
      declared = 1
      local probe = undeclared_at_load -- reads nil while loading
      require("cairnloop").auditor { audit = function(tx, action, actor, md)
        if md.template_id == "write" then fresh_global = 1 end
        if md.template_id == "read" then return missing_global end
        declared = declared + 1
        return declared
      end }
    ]])
    assert.equals(2, assert(engine:trigger(1, { template_id = "ok" })).audit)
    local _, code, msg = engine:trigger(1, { template_id = "write" })
    assert.equals("hook_error", code)
    assert.matches("assign to undeclared global 'fresh_global'", msg)
    _, code, msg = engine:trigger(1, { template_id = "read" })
    assert.equals("hook_error", code)
    assert.matches("read undeclared global 'missing_global'", msg)
    engine:close()
  end)

  it("requires the ready-made modules from the lua/ tree", function()
    local engine = with_policy("require", [[
      local m = require "cairnloop.metrics"
      require("cairnloop").auditor { audit = function() return #m.EVENTS end }
    ]])
    assert.equals(11, assert(engine:trigger(1, { template_id = "t" })).audit)
    engine:close()
  end)

  it("keeps each engine's policy state apart", function()
    local a = with_policy("apart_a", "shared = 'a'; require('cairnloop').auditor { audit = function() return shared end }")
    local b = with_policy("apart_b", "require('cairnloop').auditor { audit = function() return rawget(_G, 'shared') or 'none' end }")
    assert.equals("a", assert(a:trigger(1, { template_id = "t" })).audit)
    assert.equals("none", assert(b:trigger(1, { template_id = "t" })).audit)
    a:close()
    b:close()
  end)
end)
