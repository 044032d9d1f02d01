-- Shared setup for the specs: a schema of our own per engine in the
-- database of CAIRNLOOP_DATABASE_URL (a throwaway one under `make check`),
-- conversations to send to, row counts through psql, and a log capture.
local cairnloop = require "cairnloop"

local H = {}

-- The repository root, found from this file's own path.
H.root = debug.getinfo(1, "S").source:match("^@(.-)spec/support/helper%.lua$") or "./"
if H.root == "" then H.root = "./" end
H.policies = H.root .. "spec/support/policies/"
H.lua_dir = H.root .. "lua/cairnloop/"

local function quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- Runs a shell command; returns its output (stdout and stderr) and its
-- exit status as a number.  The status travels in the output: on LuaJIT a
-- pipe's close() returns true whatever the command's status was.
function H.shell(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"exit-status:$?\""))
  local out = p:read("*a")
  p:close()
  local body, status = out:match("^(.-)exit%-status:(%d+)\n?$")
  return body or out, tonumber(status) or -1
end

--- The shell-quoted words of a command line.
function H.command(...)
  local words = {}
  for i = 1, select("#", ...) do words[i] = quote(select(i, ...)) end
  return table.concat(words, " ")
end

--- Runs the `cairnloop` command built in this tree; raises unless it exits 0.
function H.cli(...)
  local out, status = H.shell(H.command(H.root .. "build/cairnloop", ...))
  if status ~= 0 then error("cairnloop exited " .. status .. ": " .. out, 2) end
  return out
end

-- The server's own psql, not Debian's wrapper script (a Perl program that
-- picks the version): it starts in less than half the time, and the specs
-- run it a few hundred times.
local PSQL = "psql"
do
  local bin = (os.getenv("PG_BIN") or "/usr/lib/postgresql/15/bin") .. "/psql"
  local f = io.open(bin, "r")
  if f then
    f:close()
    PSQL = quote(bin)
  end
end

--- Runs SQL through psql; returns the rows as lists of strings.
function H.sql(query)
  local url = os.getenv("CAIRNLOOP_DATABASE_URL")
  local out, status = H.shell(PSQL .. " -X -q -A -t -F '|' -v ON_ERROR_STOP=1 "
    .. (url and quote(url) or "") .. " -c " .. quote(query))
  if status ~= 0 then error("psql failed: " .. out, 2) end
  local rows = {}
  for line in out:gmatch("[^\n]+") do
    local row = {}
    for field in (line .. "|"):gmatch("(.-)|") do row[#row + 1] = field end
    rows[#rows + 1] = row
  end
  return rows
end

--- The first column of the first row, as a number when it looks like one.
function H.scalar(query)
  local rows = H.sql(query)
  local v = rows[1] and rows[1][1]
  return tonumber(v) or v
end

math.randomseed(os.time() + math.floor(os.clock() * 1e6))
local seq = 0

--- A fresh schema name, unique across runs against the same database.
function H.schema_name(tag)
  seq = seq + 1
  return string.format("spec_%s_%d_%d", tag, math.random(1, 1e9), seq)
end

--- Counts rows of `table` in `schema`, optionally with a WHERE clause.
function H.count(schema, table, where)
  return H.scalar(string.format("SELECT count(*) FROM %s.%s%s", schema, table,
    where and (" WHERE " .. where) or ""))
end

--- Everything an operation can write, counted in one round trip:
-- nothing-written checks compare two of these.
function H.written(schema)
  local row = H.sql(string.format(
    "SELECT (SELECT count(*) FROM %s.cairnloop_messages),"
      .. " (SELECT count(*) FROM %s.cairnloop_delivery_jobs),"
      .. " (SELECT count(*) FROM %s.cairnloop_outbound_bulk_envelopes),"
      .. " (SELECT count(*) FROM %s.cairnloop_audit_events)",
    schema, schema, schema, schema))[1]
  return {
    messages = tonumber(row[1]),
    jobs = tonumber(row[2]),
    envelopes = tonumber(row[3]),
    audit = tonumber(row[4]),
  }
end

--- Inserts `n` conversations; in a fresh schema their ids are 1..n.
function H.conversations(schema, n)
  H.sql(string.format(
    "INSERT INTO %s.cairnloop_conversations (subject) SELECT 'c' || g FROM generate_series(1, %d) g",
    schema, n))
end

--- A log sink that keeps the lines: `logs.lines`, `logs:find(pattern)`.
function H.log_capture()
  local logs = { lines = {} }
  function logs.sink(level, line)
    logs.lines[#logs.lines + 1] = level .. ": " .. line
  end
  function logs:find(pattern)
    for _, l in ipairs(self.lines) do
      if l:find(pattern) then return l end
    end
    return nil
  end
  return logs
end

--- Opens an engine on a fresh, migrated schema with 30 conversations.
-- `opts` are extra open{} options.  Returns engine, schema, logs.
function H.open(tag, opts)
  local schema = H.schema_name(tag)
  local logs = H.log_capture()
  local o = { schema = schema, log = logs.sink, log_level = "debug" }
  for k, v in pairs(opts or {}) do o[k] = v end
  local policy = o.policy
  o.policy = nil
  local engine, code, msg = cairnloop.open(o)
  assert(engine, tostring(code) .. ": " .. tostring(msg))
  assert(engine:migrate())
  H.conversations(schema, 30)
  -- Policies load after migrating, so they may rely on the tables.
  if policy then
    engine:close()
    o.policy = policy
    engine, code, msg = cairnloop.open(o)
    assert(engine, tostring(code) .. ": " .. tostring(msg))
  end
  return engine, schema, logs
end

--- Writes `source` to a temporary .lua file and returns its path.
function H.policy_file(source)
  local base = os.tmpname()
  os.remove(base)
  local path = base .. ".lua"
  local f = assert(io.open(path, "w"))
  f:write(source)
  f:close()
  return path
end

--- The sorted keys of a table, for exact-shape assertions.
function H.keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks)
  return ks
end

return H
