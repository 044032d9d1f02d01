-- The specs run on Lua 5.4 and on LuaJIT (the OpenResty host), against the
-- module built for each.  Everything that differs between the two runtimes
-- is named here, so that a spec says per runtime what it expects instead of
-- asserting less on both.  Policy scripts are not concerned: the engine
-- always runs them on its own Lua 5.4.
local C = {}

C.luajit = type(rawget(_G, "jit")) == "table"
C.lua54 = not C.luajit and _VERSION == "Lua 5.4"
C.runtime = C.luajit and "LuaJIT" or _VERSION

-- On LuaJIT numbers are doubles: integers are exact up to 2^53 only, and the
-- module refuses ids above it rather than round them.
C.MAX_EXACT_ID = 2 ^ 53

--- math.type where it exists; on LuaJIT a number with no fraction that is
-- exact in a double counts as "integer", any other number as "float".
function C.math_type(v)
  if math.type then return math.type(v) end
  if type(v) ~= "number" then return nil end
  if v == math.floor(v) and v >= -C.MAX_EXACT_ID and v <= C.MAX_EXACT_ID then
    return "integer"
  end
  return "float"
end

--- A 64-bit integer (given as decimal text) the way the module hands it to
-- this runtime: a Lua integer on 5.4; on LuaJIT, past 2^53, the decimal
-- string itself (API.md: never a rounded number).
function C.int64(decimal)
  if C.lua54 then
    local v = math.tointeger(tonumber(decimal))
    assert(v, "not a 64-bit integer: " .. decimal)
    return v
  end
  -- tonumber() would round 2^53 + 1 to 2^53: compare the text instead.
  local n = tonumber(decimal)
  if n and string.format("%.0f", n) == decimal and n >= -C.MAX_EXACT_ID
      and n <= C.MAX_EXACT_ID then
    return n
  end
  return decimal
end

--- Compiles a chunk written in Lua 5.4 syntax (`<close>`, `//`) only where
-- it parses; nil elsewhere.  The spec file itself must parse on both.
function C.load54(source, name)
  if not C.lua54 then return nil end
  return assert(load(source, "=" .. (name or "spec chunk"), "t"))
end

return C
