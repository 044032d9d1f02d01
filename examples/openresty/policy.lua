--- The OpenResty example's policy.  It runs in the engine's own Lua 5.4
-- state, not in nginx's LuaJIT: it uses `//`, math.type and utf8, which
-- LuaJIT does not have (LuaJIT would not even parse this file).
--
-- Actor resolver: identities read "<kind>:<name>" with kind operator, agent
-- or service (any case, surrounding spaces ignored).
--   operator:<id>  ->  "operator:<id>@team<id // 100>"   (id a positive integer)
--   agent:<name>, service:<name>  ->  "<kind>:<name case-folded>"
--     (A-Z and the Latin-1 capitals fold to lower case, code point by code
--     point: "AGENT:ZOË" -> "agent:zoë"; at most 64 code points)
--   fault:<anything>  raises on purpose, to show a failing hook (hook_error,
--                     HTTP 500); delete that line in a real deployment
--   anything else is refused (actor_rejected, HTTP 403).
-- Auditor: the shipped table auditor (one row per operation in
-- cairnloop_audit_events, inside the operation's transaction), except that
-- an agent may not send one bulk to more than AGENT_BULK_LIMIT recipients
-- (audit_rejected, HTTP 403; the whole operation rolls back).
local cl = require "cairnloop"
local table_auditor = require "cairnloop.table_auditor"

local KINDS = { operator = true, agent = true, service = true }
local MAX_NAME_CODE_POINTS = 64
local AGENT_BULK_LIMIT = 3

-- Folds ASCII and Latin-1 capitals (U+00C0..U+00DE but U+00D7, the
-- multiplication sign) to lower case; other code points are kept.
local function fold(name)
  local out = {}
  for _, c in utf8.codes(name) do
    if (c >= 0x41 and c <= 0x5A) or (c >= 0xC0 and c <= 0xDE and c ~= 0xD7) then c = c + 32 end
    out[#out + 1] = utf8.char(c)
  end
  return table.concat(out)
end

local function resolve(actor, ctx)
  if actor == nil then return nil end -- the system itself
  local kind, name = actor:match("^%s*([%a_]+)%s*:%s*(.-)%s*$")
  if kind == nil or name == "" then
    return nil, "actor must read <kind>:<name>, got " .. string.format("%q", actor):sub(1, 80)
  end
  kind = kind:lower()
  if kind == "fault" then
    error("fault injected for actor " .. string.format("%q", actor):sub(1, 80))
  end
  if not KINDS[kind] then return nil, "unknown actor kind '" .. kind:sub(1, 32) .. "'" end

  local length = utf8.len(name)
  if length == nil then return nil, "actor name is not valid UTF-8" end
  if length > MAX_NAME_CODE_POINTS then
    return nil, ("actor name has %d code points, at most %d"):format(length, MAX_NAME_CODE_POINTS)
  end

  if kind == "operator" then
    -- tonumber("742") is the integer 742, tonumber("7.5") a float.
    local id = tonumber(name)
    if math.type(id) ~= "integer" or id <= 0 then
      return nil, "operator ids are positive integers, got " .. string.format("%q", name):sub(1, 40)
    end
    return ("operator:%d@team%d"):format(id, id // 100)
  end
  return kind .. ":" .. fold(name)
end

cl.actor_resolver(resolve)

local base = table_auditor.new { schema = cl.schema }

cl.auditor {
  audit = function(tx, action, actor, metadata)
    if action == "bulk_outbound_trigger" and actor and actor:find("^agent:")
        and metadata.count > AGENT_BULK_LIMIT then
      return nil, ("agents may send one bulk to at most %d recipients, got %d")
        :format(AGENT_BULK_LIMIT, metadata.count)
    end
    return base.audit(tx, action, actor, metadata)
  end,
  list_events = base.list_events,
}

cl.log("info", ("policy loaded on %s (math.type(7 // 2) = %s)"):format(_VERSION, math.type(7 // 2)))
