-- Hostile policies (issue 10, sections 2 and 3): every hook call ends
-- within its wall-clock budget and memory cap whatever library function it
-- calls, what a hook returns is copied out within the same bounds, engine
-- objects keep their metatables to themselves, the sandbox cannot probe the
-- host's files, and an actor may be any plain value when a resolver maps it.
--
-- Each case failed before the change that added it (the loops in C hung the
-- process, the DAG copy peaked at 1.46 GB, xpcall's handler spun with hooks
-- off, __gc on the tx metatable hung lua_close, the actor was refused):
--   src/lua_bounded.c   bounded string, table, load and xpcall functions
--   src/lua_glue.inc    locked metatables, bounded copy out, staged actors
local cairnloop = require "cairnloop"
local H = require "spec.support.helper"
local C = require "spec.support.compat"

-- A small deadline, so that a loop the budget ends costs the suite little;
-- the bound is the same at any size.
local LIMITS = {
  hook_instruction_limit = 5000000,
  hook_time_limit_ms = 200,
  hook_memory_limit = 8 * 1024 * 1024,
}

local function with(t, extra)
  local o = {}
  for k, v in pairs(t) do o[k] = v end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

-- The auditor of the hostile policy runs the case named by the template id,
-- then writes its audit row and returns what the case returned.
local POLICY = [=[
local cl = require "cairnloop"

local function huge_len() return 1 << 60 end

local cases = {
  -- Backtracking patterns: exponential in C, no instruction in between.
  find_backtrack = function() return string.find(("a"):rep(40), ("a*"):rep(40) .. "b") end,
  match_backtrack = function() return string.match(("a"):rep(40), ("a*"):rep(40) .. "b") end,
  gmatch_backtrack = function()
    for _ in string.gmatch(("a"):rep(40), ("a*"):rep(40) .. "b") do end
  end,
  gsub_backtrack = function() return (("a"):rep(40):gsub(("a*"):rep(40) .. "b", "")) end,
  -- Quadratic without backtracking: every start position scans the rest.
  find_quadratic = function() return string.find(("a"):rep(1 << 20), ".-b") end,
  -- Loops over index ranges that exist only as numbers.
  move_huge = function() return table.move({}, 1, 1 << 60, 2) end,
  insert_huge = function() table.insert(setmetatable({}, { __len = huge_len }), 1, "x") end,
  remove_huge = function() return table.remove(setmetatable({}, { __len = huge_len }), 1) end,
  -- 2^31 - 2 equal elements read through C functions: a sort in C alone.
  sort_huge = function()
    table.sort(setmetatable({}, { __len = function() return (1 << 31) - 2 end,
      __index = rawlen, __newindex = rawequal }))
  end,
  -- The message handler loops: before, the budget error re-entered it with
  -- hooks off, from inside the count hook.
  xpcall_handler_loop = function()
    return xpcall(function() error("x") end, function() while true do end end)
  end,
  xpcall_both_loop = function()
    return xpcall(function() while true do end end, function() while true do end end)
  end,
  -- Engine objects keep their metatables.
  tx_metatable = function(tx) return getmetatable(tx) end,
  tx_gc_nil = function(tx)
    getmetatable(tx).__gc = nil
    tx = nil
    collectgarbage()
  end,
  tx_setmetatable = function(tx) setmetatable(tx, {}) end,
  -- Results copied out of the state: 22 tables, 2^21 leaves.
  dag = function()
    local t = {}
    for _ = 1, 21 do t = { t, t } end
    return t
  end,
  cycle = function()
    local t = {}
    t.self = t
    return t
  end,
  -- Bounded before, kept so: each ends at once with a Lua error.
  unpack_huge = function() return table.unpack({}, 1, 1 << 40) end,
  format_wide = function() return string.format("%99999d", 1) end,
  utf8_huge = function() return utf8.char(0x7FFFFFFF + 1) end,
  rep_too_large = function() return string.rep("x", 1 << 40) end,
  -- Ends in time with a result.
  rep_empty = function()
    return { a = string.rep("", 1 << 60), b = string.rep("", 1 << 60, ""),
             c = string.rep("ab", 3, "-") }
  end,
  find_plain_long = function()
    -- A plain search for a long needle that almost matches everywhere.
    return { string.find(("a"):rep(1 << 21), ("a"):rep(1 << 19) .. "b", 1, true) }
  end,
  probes = function()
    return { searchpath = package.searchpath == nil, loadlib = package.loadlib == nil }
  end,
}

cl.auditor {
  audit = function(tx, action, actor, metadata)
    local case = cases[metadata.template_id]
    local result
    if case then result = case(tx) end
    tx:exec("INSERT INTO " .. cl.schema .. ".cairnloop_audit_events"
      .. " (action, actor, conversation_id, template_id) VALUES ($1, $2, $3, $4)",
      action, actor, metadata.conversation_id, metadata.template_id)
    return { result = result, template_id = metadata.template_id }
  end,
  list_events = function(opts)
    if opts.dag then return cases.dag() end
    return {}
  end,
}
]=]

describe("hostile policies: the budget bounds library functions implemented in C", function()
  local engine, schema, runs = nil, nil, 0

  setup(function()
    engine, schema = H.open("hostile", with(LIMITS, { policy = H.policy_file(POLICY) }))
  end)

  teardown(function()
    engine:close()
  end)

  -- Runs a case that must fail: code, message, time, nothing written, and
  -- the engine still works afterwards.
  local function refuses(template, pattern)
    local before = H.written(schema)
    local started = os.time()
    runs = runs + 1
    local res, code, msg = engine:trigger(1 + runs % 30, { template_id = template })
    assert.is_nil(res, template .. " returned a result")
    assert.equals("hook_error", code)
    assert.matches(pattern, msg)
    assert.is_nil(msg:find("\n"))
    assert.is_true(os.time() - started <= 5, template .. " took too long")
    assert.same(before, H.written(schema))
    local ok = assert(engine:trigger(2, { template_id = "ok_after_" .. template .. runs }))
    assert.equals("ok_after_" .. template .. runs, ok.audit.template_id)
  end

  -- Runs a case that must succeed in time; returns its result.
  local function returns(template)
    local started = os.time()
    runs = runs + 1
    local res = assert(engine:trigger(1 + runs % 30, { template_id = template }))
    assert.is_true(os.time() - started <= 5, template .. " took too long")
    return res.audit.result
  end
  local TIME = "^auditor%.audit: time limit exceeded %(200 ms%)$"

  it("stops backtracking patterns in string.find, match, gmatch and gsub", function()
    refuses("find_backtrack", TIME)
    refuses("match_backtrack", TIME)
    refuses("gmatch_backtrack", TIME)
    refuses("gsub_backtrack", TIME)
  end)

  it("stops a quadratic pattern search", function()
    refuses("find_quadratic", TIME)
  end)

  it("stops table.move, insert and remove over huge ranges", function()
    refuses("move_huge", TIME)
    refuses("insert_huge", TIME)
    refuses("remove_huge", TIME)
  end)

  it("stops table.sort over elements that C functions provide", function()
    refuses("sort_huge", TIME)
  end)

  it("stops a looping xpcall message handler", function()
    refuses("xpcall_handler_loop", "^auditor%.audit: [a-z ]+ exceeded %(")
    refuses("xpcall_both_loop", "^auditor%.audit: [a-z ]+ exceeded %(")
  end)

  it("returns string.rep of an empty string at once, whatever the count", function()
    assert.same({ a = "", b = "", c = "ab-ab-ab" }, returns("rep_empty"))
  end)

  it("searches plain strings in linear time", function()
    assert.same({}, returns("find_plain_long"))
  end)

  it("keeps library functions that were bounded already bounded", function()
    refuses("unpack_huge", "too many results to unpack")
    refuses("format_wide", "invalid conversion")
    refuses("utf8_huge", "value out of range")
    refuses("rep_too_large", "resulting string too large")
  end)

  it("locks the tx handle's metatable", function()
    assert.equals("locked", returns("tx_metatable"))
    refuses("tx_gc_nil", "attempt to index a string value")
    refuses("tx_setmetatable", "table expected, got cairnloop.tx")
  end)

  it("refuses a result whose copy would outgrow the memory cap (a shared-subtable DAG)", function()
    refuses("dag", "^auditor%.audit: return value cannot be encoded as JSON: larger than the hook "
      .. "memory limit %(8388608 bytes%)$")
    local res, code, msg = engine:audit_events { dag = true }
    assert.is_nil(res)
    assert.equals("hook_error", code)
    assert.matches("^auditor%.list_events: .*larger than the hook memory limit", msg)
  end)

  it("names a cycle in a result as a cycle", function()
    refuses("cycle", "a table that contains itself %(a cycle%)")
  end)

  it("offers no function that probes the host's files", function()
    assert.same({ searchpath = true, loadlib = true }, returns("probes"))
  end)
end)

describe("hostile policies: engine objects", function()
  it("cannot get a finaliser onto the tx handle, so closing the engine returns", function()
    local policy = H.policy_file([[
      require("cairnloop").auditor { audit = function(tx)
        getmetatable(tx).__gc = function() while true do end end
        return true
      end }
    ]])
    local engine, schema = H.open("hostile_gc", with(LIMITS, { policy = policy }))
    local before = H.written(schema)
    local res, code, msg = engine:trigger(1, { template_id = "t" })
    assert.is_nil(res)
    assert.equals("hook_error", code)
    assert.matches("attempt to index a string value", msg)
    assert.same(before, H.written(schema))
    collectgarbage()
    local started = os.time()
    engine:close()
    assert.is_true(os.time() - started <= 5)
  end)

  it("locks the tx handle of host hooks too", function()
    local engine = H.open("hostile_host_tx", LIMITS)
    local seen
    engine:auditor { audit = function(tx) seen = getmetatable(tx) return true end }
    assert(engine:trigger(1, { template_id = "t" }))
    assert.equals("locked", seen)
    engine:close()
  end)
end)

describe("hostile policies: load", function()
  it("ends a load of a large chunk at the deadline", function()
    -- 29 MB of `do end`: it compiles to nothing, so only the parsing takes
    -- time (about a quarter of a second), and no instruction runs meanwhile.
    local policy = H.policy_file([[
      require("cairnloop").auditor { audit = function()
        local f = load(("do end "):rep(1 << 22))
        return true
      end }
    ]])
    local engine, schema = H.open("hostile_load", {
      hook_time_limit_ms = 50, hook_memory_limit = 256 * 1024 * 1024, policy = policy })
    local before = H.written(schema)
    local res, code, msg = engine:trigger(1, { template_id = "t" })
    assert.is_nil(res)
    assert.equals("hook_error", code)
    assert.matches("^auditor%.audit: time limit exceeded %(50 ms%)$", msg)
    assert.same(before, H.written(schema))
    engine:close()
  end)

  it("keeps load text-only and its environment argument", function()
    local policy = H.policy_file([[
      require("cairnloop").auditor { audit = function()
        local env = { y = 2 }
        local f = assert(load("x = 1; return y", "=chunk", "bt", env))
        local pieces, i = { "return ", "4", "0 + ", "2" }, 0
        local g = assert(load(function() i = i + 1 return pieces[i] end))
        local bin, err = load(string.dump(function() end), "bin", "b")
        return { r = f(), x = env.x, g = g(), bin = bin == nil, err = err,
                 bad = select(2, load("return +")) }
      end }
    ]])
    local engine = H.open("hostile_load_ok", with(LIMITS, { policy = policy }))
    local res = assert(engine:trigger(1, { template_id = "t" }))
    assert.same({ r = 2, x = 1, g = 42, bin = true,
      err = "attempt to load a binary chunk (mode is 't')",
      bad = [[[string "return +"]:1: unexpected symbol near '+']] }, res.audit)
    engine:close()
  end)
end)

describe("hostile policies: pattern matching behaves as Lua's own", function()
  -- The same cases, serialised the same way, on the policy state's bounded
  -- functions and on this host's stock ones (Lua 5.4 only: LuaJIT's
  -- patterns are Lua 5.1's).
  local SERIALISE = [==[
    local function show(v)
      local t = type(v)
      if t == "string" then
        local out = {}
        for i = 1, #v do
          local b = string.byte(v, i)
          out[i] = (b < 32 or b > 126) and ("\\" .. b) or string.char(b)
        end
        return "s:" .. table.concat(out)
      end
      return t:sub(1, 1) .. ":" .. tostring(v)
    end
    local function pack(ok, ...)
      local out = { ok and "ok" or "error" }
      for i = 1, select("#", ...) do out[#out + 1] = show((select(i, ...))) end
      return table.concat(out, " ")
    end
    local function gm(s, p, init)
      local out, it = {}, string.gmatch(s, p, init)
      for _ = 1, 40 do
        local r = table.pack(it())
        if r.n == 0 or r[1] == nil then break end
        out[#out + 1] = pack(true, table.unpack(r, 1, r.n))
      end
      return table.concat(out, " | ")
    end
    local repl_table = { a = "A", ab = false, [""] = "E", ["1"] = 1 }
    local function repl_fn(...)
      local n = select("#", ...)
      if n == 1 and (...) == "b" then return nil end
      return "<" .. n .. ":" .. tostring((...)) .. ">"
    end
    return function(s, p, init)
      return {
        pack(pcall(string.find, s, p, init)),
        pack(pcall(string.find, s, p, init, true)),
        pack(pcall(string.match, s, p, init)),
        pack(pcall(gm, s, p, init)),
        pack(pcall(string.gsub, s, p, "[%0]")),
        pack(pcall(string.gsub, s, p, "%1-%%")),
        pack(pcall(string.gsub, s, p, repl_fn)),
        pack(pcall(string.gsub, s, p, repl_table, 2)),
      }
    end
  ]==]

  local FIXED = {
    { "hello world", "o" }, { "hello world", "o", 6 }, { "hello world", "^h" },
    { "hello world", "^w" }, { "hello world", "d$" }, { "hello$", "o$" }, { "a$b", "$b" },
    { "hello world", "(o)(r)" }, { "hello world", "()ll()" }, { "hello", "" }, { "", "" },
    { "", "a*" }, { "abc", "a*" }, { "abc", ".-" }, { "abc", "x*" }, { "aaa", "a-b" },
    { "aaab", "a-b" }, { "aaa", "a+" }, { "aaa", "a?a?a?a" }, { " key = value ", "(%w+)%s*=%s*(%w+)" },
    { "THE (quick) fox", "%f[%a]%a+" }, { "THE (quick) fox", "%f[%A]" }, { "x(a(b)c)y", "%b()" },
    { "x(a(b)c", "%b()" }, { "[[x]]", "%b[]" }, { "abcabc", "(a)(b)c%1%2" }, { "abab", "(ab)%1" },
    { "a.b", "%." }, { "a.b", "." }, { "a]b", "[]]" }, { "a]b", "[^]]" }, { "a-b", "[a-]" },
    { "a-b", "[-a]" }, { "a%b", "[%%]" }, { "a^b", "[b^]" }, { "a^b", "[%^]" }, { "09azAZ", "[%d%u]+" },
    { "tab\there", "%c" }, { "a1_ b", "%W" }, { "\0a\0", "%z" }, { "\0a\0", "\0" }, { "\0a\0", "[\0]" },
    { "a\255b", "[\128-\255]" }, { "x", "%" }, { "x", "[a" }, { "x", "[a%" }, { "x", "%b" },
    { "x", "%bx" }, { "x", "%f" }, { "x", "%fx" }, { "x", "(x" }, { "x", "x)" }, { "x", "%1" },
    { "xx", "(x)%2" }, { "x", "%0" }, { "xx", "()%1" }, { "abc", "%g+" }, { "abc", "%G" },
    { ("a"):rep(40), ("a?"):rep(250) }, { "x", ("(x?)"):rep(33) }, { "abc", "b", -1 },
    { "abc", "b", -10 }, { "abc", "b", 10 }, { "abc", "", 4 }, { "abc", "", 5 }, { "abc", "c", 0 },
    { "hello world from Lua", "(%w+)" }, { "abc", "%w" }, { "one two", "(%w+) (%w+)" },
    { "a,b,,c", "([^,]*)" }, { "aaa", "a*" }, { "abc", "()" }, { "abc", "b*" },
    { "a.b-c", "%p" }, { "x = 1", "%s*=%s*" }, { "AbC", "%l" }, { "AbC", "%U" }, { "ff0A", "%x+" },
    { "abc", "^(a)" }, { "abc", "(a)(b)(c)" }, { "aXbXc", "X" }, { "a+b", "a+b" }, { "a+b", "a%+b" },
  }

  -- Random short patterns over the pattern language, deterministic.
  local function generated()
    local seed = 12345
    local function rnd(n)
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed % n + 1
    end
    local atoms = { "a", "b", ".", "%a", "%d", "%s", "%w", "%p", "[ab]", "[^a]", "[a-c]", "(",
      ")", "()", "%1", "%b()", "%f[%w]", "^", "$", "%", "[", "]", "-", "x" }
    local quants = { "", "", "", "*", "+", "-", "?" }
    local chars = { "a", "a", "b", "c", "(", ")", " ", "1", ".", "x", "\0" }
    local out = {}
    for _ = 1, 400 do
      local p, s = {}, {}
      for i = 1, rnd(5) do
        local a = atoms[rnd(#atoms)]
        p[i] = a .. (#a == 1 and a:match("%w") and quants[rnd(#quants)] or "")
      end
      for i = 1, rnd(10) - 1 do s[i] = chars[rnd(#chars)] end
      out[#out + 1] = { table.concat(s), table.concat(p), rnd(4) - 1 }
    end
    return out
  end

  local function policy_for(cases)
    local lines = { string.format("local run = assert(load(%q, '=serialise'))()", SERIALISE),
      "local cases = {" }
    for _, c in ipairs(cases) do
      lines[#lines + 1] = string.format("  { %q, %q, %s },", c[1], c[2], tostring(c[3]))
    end
    lines[#lines + 1] = "}"
    lines[#lines + 1] = [[
      require("cairnloop").auditor { audit = function()
        local out = {}
        for i, c in ipairs(cases) do out[i] = run(c[1], c[2], c[3]) end
        return out
      end }]]
    return table.concat(lines, "\n")
  end

  local function policy_results(cases)
    local engine = H.open("hostile_patterns", {
      hook_time_limit_ms = 20000, hook_instruction_limit = 1000000000,
      policy = H.policy_file(policy_for(cases)) })
    local res = assert(engine:trigger(1, { template_id = "t" }))
    engine:close()
    return res.audit
  end

  if C.lua54 then
    it("gives the results and errors of Lua 5.4's own find, match, gmatch and gsub", function()
      local cases = {}
      for _, c in ipairs(FIXED) do cases[#cases + 1] = c end
      for _, c in ipairs(generated()) do cases[#cases + 1] = c end
      local got = policy_results(cases)
      local run = assert(load(SERIALISE, "=serialise"))()
      assert.equals(#cases, #got)
      for i, c in ipairs(cases) do
        local want = run(c[1], c[2], c[3])
        assert.same(want, got[i], string.format("case %d: s=%q p=%q init=%s", i, c[1], c[2],
          tostring(c[3])))
      end
    end)
  end

  it("finds, matches, iterates and substitutes as documented", function()
    local got = policy_results({
      { "hello world", "(o)(r)" }, { " key = value ", "(%w+)%s*=%s*(%w+)" }, { "x(a(b)c)y", "%b()" },
      { "THE (quick) fox", "%f[%a]%a+" }, { "abab", "(ab)%1" }, { "x", "[a" },
    })
    assert.equals("ok n:8 n:9 s:o s:r", got[1][1])
    assert.equals("ok s:key s:value", got[2][3])
    assert.equals("ok s:(a(b)c)", got[3][3])
    assert.equals("ok s:ok s:THE | ok s:quick | ok s:fox", got[4][4])
    assert.equals("ok n:1 n:4 s:ab", got[5][1])
    assert.equals("error s:malformed pattern (missing ']')", got[6][1])
  end)
end)

describe("hostile policies: actors that are not strings", function()
  local engine, schema

  setup(function()
    engine, schema = H.open("hostile_actor", LIMITS)
  end)

  teardown(function()
    engine:close()
  end)

  local function bulk(actor, n)
    return engine:bulk_trigger({ n or 1 }, { template_id = "t", rendered_body = "b", actor = actor })
  end

  it("hands a host resolver the host's value itself", function()
    local seen = {}
    engine:actor_resolver(function(actor, ctx)
      seen[#seen + 1] = actor
      if type(actor) == "table" then return "user:" .. actor.id end
      return ctx.action .. ":" .. tostring(actor)
    end)
    local actor = { id = 42 }
    local res = assert(bulk(actor, 1))
    assert.equals("user:42", res.envelope.requested_by)
    assert.equals(actor, seen[1])
    assert.equals("bulk_outbound_trigger:true", assert(bulk(true, 2)).envelope.requested_by)
    assert.equals("bulk_outbound_trigger:7", assert(bulk(7, 3)).envelope.requested_by)
    assert.equals("bulk_outbound_trigger:a", assert(bulk("a", 4)).envelope.requested_by)
    local t = assert(engine:trigger(5, { template_id = "t", actor = { id = 9 } }))
    assert.is_table(t.message)
    local r, code = bulk(function() end, 6)
    assert.is_nil(r)
    assert.equals("invalid_argument", code)
    engine:actor_resolver(nil)
  end)

  it("copies the value into the policy state for a policy resolver", function()
    local e, s = H.open("hostile_actor_policy", with(LIMITS, { policy = H.policy_file([[
      require("cairnloop").actor_resolver(function(actor, ctx)
        if type(actor) == "table" then
          return "policy:" .. actor.id .. ":" .. actor.tags[2] .. ":" .. math.type(actor.id)
        end
        return ctx.action .. ":" .. tostring(actor)
      end)
    ]]) }))
    local res = assert(e:bulk_trigger({ 1 }, { template_id = "t", rendered_body = "b",
      actor = { id = 42, tags = { "a", "b" } } }))
    assert.equals("policy:42:b:integer", res.envelope.requested_by)
    res = assert(e:bulk_trigger({ 2 }, { template_id = "t", rendered_body = "b", actor = false }))
    assert.equals("bulk_outbound_trigger:false", res.envelope.requested_by)
    -- The copy is bounded as a hook's result is: a DAG is refused before
    -- anything is written.
    local dag = {}
    for _ = 1, 21 do dag = { dag, dag } end
    local before = H.written(s)
    local r, code, msg = e:bulk_trigger({ 3 }, { template_id = "t", rendered_body = "b", actor = dag })
    assert.is_nil(r)
    assert.equals("invalid_argument", code)
    assert.matches("actor cannot be copied into the policy state: larger than the hook memory limit", msg)
    assert.same(before, H.written(s))
    e:close()
  end)

  it("still refuses an actor that is not a string without a resolver", function()
    local before = H.written(schema)
    local r, code, msg = bulk({ id = 42 }, 7)
    assert.is_nil(r)
    assert.equals("invalid_argument", code)
    assert.matches("actor must be a string", msg)
    assert.same(before, H.written(schema))
  end)
end)
