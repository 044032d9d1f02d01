--- cairnloop.actor_resolver: maps host identities to the actor an
-- operation records (requested_by, the auditor's actor, the trace lane).
--
--   cairnloop --policy lua/cairnloop/actor_resolver.lua ...    as a policy file:
--                      well-formed identities pass through, others are refused
--   require("cairnloop.actor_resolver").install(cl, {
--     map = { ["session:4f2a"] = "operator:7" },  -- or function(actor, ctx)
--     unknown = "reject",                         -- or "pass" (the default)
--   })
--
-- The resolver returns nil for a nil actor (the system), the mapped actor for
-- a known identity, and for an unknown one either the identity itself
-- ("pass", if it matches `pattern`) or `nil, reason` ("reject"), which the
-- engine reports as actor_rejected.  A function map decides itself: its
-- string result is still checked against `pattern`.
local M = {}

-- Printable identities such as "operator:7", "agent_1", "svc/cron@host".
M.DEFAULT_PATTERN = "^[%w][%w_.:@/+-]*$"

local function check(actor, pattern)
  if type(actor) ~= "string" or #actor > 255 or not actor:match(pattern) then
    return nil, "malformed actor " .. string.format("%q", tostring(actor)):sub(1, 80)
  end
  return actor
end

--- Builds the resolver function for `opts` (see above).
function M.new(opts)
  opts = opts or {}
  local map, pattern = opts.map, opts.pattern or M.DEFAULT_PATTERN
  local unknown = opts.unknown or "pass"
  if unknown ~= "pass" and unknown ~= "reject" then
    error("actor_resolver: unknown must be \"pass\" or \"reject\"", 2)
  end
  if map ~= nil and type(map) ~= "table" and type(map) ~= "function" then
    error("actor_resolver: map must be a table or a function", 2)
  end

  return function(actor, ctx)
    if actor == nil then return nil end
    if type(map) == "function" then
      local resolved, reason = map(actor, ctx)
      if resolved == nil then return nil, reason end
      return check(resolved, pattern)
    end
    local mapped = map and map[actor]
    if mapped ~= nil then return check(mapped, pattern) end
    if unknown == "reject" then
      return nil, "unknown actor " .. string.format("%q", actor):sub(1, 80)
    end
    return check(actor, pattern)
  end
end

--- Installs the resolver on `target`: the policy API or a host engine.
function M.install(target, opts)
  if type(target) == "userdata" then return target:actor_resolver(M.new(opts)) end
  return target.actor_resolver(M.new(opts))
end

if ... == nil then
  local ok, cl = pcall(require, "cairnloop")
  if ok and type(cl) == "table" and type(cl.actor_resolver) == "function" then M.install(cl) end
end

return M
