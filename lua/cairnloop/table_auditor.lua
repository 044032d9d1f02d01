--- cairnloop.table_auditor: an auditor that writes one row of
-- cairnloop_audit_events per trigger and bulk_trigger (and per retry,
-- cancel, pause and resume of the queue: their rows have no template and
-- carry count and bulk_envelope_id), inside the operation's own
-- transaction (so a rolled-back operation leaves no audit row), and lists
-- the rows back for engine:audit_events.
--
--   cairnloop --policy lua/cairnloop/table_auditor.lua ...     as a policy file
--   require("cairnloop.table_auditor").install(cl)              from a policy script
--   require("cairnloop.table_auditor").install(engine, { schema = "cairnloop" })
--                                                               from the host
--
-- audit() returns the stored row, which becomes res.audit:
--   { id, action, actor, conversation_id, bulk_envelope_id, template_id,
--     count, inserted_at }   (nil fields are absent; inserted_at is ISO 8601 UTC)
-- list_events{ action =, conversation_id =, bulk_envelope_id =, limit = 50 }
-- returns such rows, newest first.
--
-- The table lives in the engine's schema (migration
-- 20260601000000_create_audit_events).  Statements name it schema-qualified:
-- in a policy state the schema is `cl.schema`; from the host pass it.
local M = {}

local DEFAULT_LIMIT, MAX_LIMIT = 50, 1000

local COLUMNS = [[id, action, actor, conversation_id, bulk_envelope_id::text AS bulk_envelope_id,
  template_id, count,
  to_char(inserted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS inserted_at]]

local function table_name(schema)
  if type(schema) ~= "string" or not schema:match("^[a-z_][a-z0-9_]*$") then
    error("table_auditor: schema must match [a-z_][a-z0-9_]*, got " .. tostring(schema), 3)
  end
  return '"' .. schema .. '".cairnloop_audit_events'
end

--- Builds the auditor table { audit = fn, list_events = fn } for `opts.schema`.
function M.new(opts)
  opts = opts or {}
  local tbl = table_name(opts.schema or "cairnloop")
  local insert = "INSERT INTO " .. tbl
    .. " (action, actor, conversation_id, bulk_envelope_id, template_id, count)"
    .. " VALUES ($1, $2, $3, $4::uuid, $5, $6) RETURNING " .. COLUMNS
  local select = "SELECT " .. COLUMNS .. " FROM " .. tbl
    .. " WHERE ($1::text IS NULL OR action = $1)"
    .. " AND ($2::bigint IS NULL OR conversation_id = $2)"
    .. " AND ($3::uuid IS NULL OR bulk_envelope_id = $3::uuid)"
    .. " ORDER BY id DESC LIMIT $4"

  local function audit(tx, action, actor, metadata)
    local rows = tx:exec(insert, action, actor, metadata.conversation_id,
      metadata.bulk_envelope_id, metadata.template_id, metadata.count)
    return rows[1]
  end

  local function list_events(query, tx)
    query = query or {}
    if tx == nil then
      error("table_auditor: list_events needs the engine's tx handle", 2)
    end
    local limit = query.limit or DEFAULT_LIMIT
    if type(limit) ~= "number" or limit % 1 ~= 0 or limit < 1 or limit > MAX_LIMIT then
      error("table_auditor: limit must be an integer from 1 to " .. MAX_LIMIT, 2)
    end
    return tx:exec(select, query.action, query.conversation_id, query.bulk_envelope_id, limit)
  end

  return { audit = audit, list_events = list_events }
end

--- Installs the auditor on `target`: the policy API (`require "cairnloop"`
-- inside a policy) or an engine from the host.
function M.install(target, opts)
  opts = opts or {}
  if type(target) == "userdata" then
    return target:auditor(M.new(opts))
  end
  return target.auditor(M.new { schema = opts.schema or target.schema })
end

-- Loaded as a policy file (not through require, which passes the module
-- name): install at once.
if ... == nil then
  local ok, cl = pcall(require, "cairnloop")
  if ok and type(cl) == "table" and type(cl.auditor) == "function" then M.install(cl) end
end

return M
