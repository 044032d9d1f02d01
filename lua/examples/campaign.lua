--- The demo campaign: Cairnloop's outbound lane end to end, as a host
-- script.  It runs under the `cairnloop` command, which hands it an open
-- engine (the global `engine`) with the demo policy loaded:
--
--   cairnloop demo                    on the embedded cluster under ./.cairnloop
--   cairnloop run --policy lua/examples/demo_policy.lua lua/examples/campaign.lua [CONVERSATIONS]
--                                     on whatever database the command is given
--   ... campaign.lua [CONVERSATIONS] --no-deliver
--                                     everything but step 7: the jobs stay due
--                                     for a `cairnloop work` process (`make demo`,
--                                     tools/demo.sh, delivers them so, through the
--                                     webhook notifier to a local receiver)
--
-- 1. migrate; 2. seed CONVERSATIONS (default 120) demo conversations, every
-- tenth closed; 3. select the cohort (the open ones) with a read-only query; 4. show a
-- bulk send over the cap being refused, and recorded; 5. show the
-- campaign's own max_recipients guard; 6. send the campaign in cap-sized
-- envelopes; 7. deliver with engine:work until no job is due; 8. report
-- envelopes and messages by status, audit events and metrics.
--
-- Running it again sends nothing twice: the campaign key is fixed, so every
-- envelope id is the same and every envelope replays; the refused attempt
-- has a fixed id too and stays one record.  Conversations (and the message
-- counts of the report) are the host's tables: this script reaches them
-- with psql, as any host uses its own database access.
--
-- Output.  For people, the steps and the report go to stdout, with bold
-- titles and progress bars (on stderr) when they are terminals; no escape
-- sequence is written when TERM is dumb or unset or NO_COLOR is set
-- (cairnloop.campaign's ansi(): the bars then redraw with a plain "\r").
-- With --json (cairnloop.json_output()), stdout is the report alone: one
-- JSON object on one line, written at the end, with no steps and no bars.
-- Its keys (every count an integer; a "by status" object has one key per
-- status present, so an empty one is {}):
--   conversations  the demo conversations 1..CONVERSATIONS by status
--                  ({ open =, closed = })
--   cohort         the number of recipients (the open conversations)
--   cap            the engine's cap (max_batch_size) during the run
--   refusals       the refusals the demo shows, each { code, message }:
--                    over_cap: the bulk send of cap + 1 recipients, with the
--                      recorded envelope's envelope_id, status, effective_cap;
--                    max_recipients: the campaign's own guard, with its limit
--                  (a refusal is absent when the cohort is too small for it)
--   campaign       the campaign's summary (cairnloop.campaign): key,
--                  campaign_id, template_id, chunk_size, chunks,
--                  envelopes { submitted, replayed, refused },
--                  recipients { total, submitted, replayed }
--   delivery       this run's engine:work totals: sent, failed, retried,
--                  discarded, no_op (absent with --no-deliver)
--   outbox         { path, appended }: the notifier's file, and the lines
--                  this run appended to it (absent with --no-deliver)
--   due            the jobs due when the script ends: 0 after delivery; with
--                  --no-deliver, what is left to `cairnloop work`
--   envelopes      the template's envelopes in the database, by status
--   messages       the template's messages in the database, by status
--   audit_events   the audit events in the database, by action
-- So a first run on a fresh cluster reports campaign.recipients.submitted =
-- delivery.sent = 108, and a second one 0 for both.
local cairnloop = require "cairnloop"
local campaign = require "cairnloop.campaign"

local KEY = "demo-recovery-2026"
local TEMPLATE_ID = "recovery_v1"
local TEMPLATE = "Hi, the {{product}} sync issue you reported is fixed. Reply here if"
  .. " anything still looks off. -- {{team}}"
local VARS = { product = "Calendar", team = "The Cairnloop support team" }
-- The operator's session: the policy's actor resolver maps it to "operator:demo".
local ACTOR = "session:demo"

-- Arguments: CONVERSATIONS and --no-deliver, in any order.
local count_arg, DELIVER = nil, true
for _, a in ipairs(arg) do
  if a == "--no-deliver" then
    DELIVER = false
  elseif count_arg == nil then
    count_arg = a
  else
    error({ code = "invalid_argument", message = "usage: campaign.lua [CONVERSATIONS] [--no-deliver]" })
  end
end
local n_conversations = math.tointeger(tonumber(count_arg or "120"))
if not n_conversations or n_conversations < 1 or n_conversations > 100000 then
  error({ code = "invalid_argument", message = "CONVERSATIONS must be an integer from 1 to 100000" })
end

local config = cairnloop.default_config()
local JSON = cairnloop.json_output ~= nil and cairnloop.json_output()
-- The report, built along the way; printed as JSON at the end under --json.
local report = { refusals = {} }
local SCHEMA = '"' .. (config.schema or "cairnloop") .. '"' -- the engine checked the name

--- Raises an engine failure as a coded error: `cairnloop run` reports it
-- as `cairnloop: <code>: <message>` and exits with that code's status.
local function check(ok, code, msg, ...)
  if ok == nil then error({ code = code, message = msg }, 0) end
  return ok, code, msg, ...
end

---------------------------------------------------------------------------
-- The host's own database access (psql)
---------------------------------------------------------------------------

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

--- Runs SQL with psql on the engine's database; returns the rows as lists
-- of strings.
local function sql(query)
  local cmd = "psql -X -q -A -t -F '|' -v ON_ERROR_STOP=1 "
    .. (config.database and shell_quote(config.database) .. " " or "")
    .. "-c " .. shell_quote(query) .. " 2>&1"
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  if not p:close() then error("psql failed: " .. out, 2) end
  local rows = {}
  for line in out:gmatch("[^\n]+") do
    local row = {}
    for field in (line .. "|"):gmatch("(.-)|") do row[#row + 1] = field end
    rows[#rows + 1] = row
  end
  return rows
end

---------------------------------------------------------------------------
-- Output
---------------------------------------------------------------------------

local BOLD, DIM, OFF = "", "", ""
if not JSON and campaign.ansi(io.stdout) then BOLD, DIM, OFF = "\27[1m", "\27[2m", "\27[0m" end
local step_no = 0

-- The text for people: nothing of it under --json, whose stdout is the
-- report's one JSON line.
local function step(title, note)
  if JSON then return end
  step_no = step_no + 1
  io.write(string.format("\n%s%d. %s%s\n", BOLD, step_no, title, OFF))
  if note then io.write(string.format("%s   %s%s\n", DIM, note, OFF)) end
  io.flush()
end

local function say(fmt, ...)
  if JSON then return end
  io.write(string.format(fmt, ...), "\n")
  io.flush()
end

-- A JSON string (for the outbox lines and the report).
local function json_string(v)
  return '"' .. tostring(v):gsub('[%c"\\]', function(c)
    return ({ ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" })[c]
      or string.format("\\u%04x", c:byte())
  end) .. '"'
end

-- A JSON text of `v`: tables are objects with string keys, written in
-- sorted order so that two runs' reports compare line for line.  The
-- report holds no lists, so there is no array case.
local function json_encode(v)
  local t = type(v)
  if t == "table" then
    local keys, parts = {}, {}
    for k in pairs(v) do
      assert(type(k) == "string", "JSON object keys must be strings")
      keys[#keys + 1] = k
    end
    table.sort(keys)
    for i, k in ipairs(keys) do parts[i] = json_string(k) .. ":" .. json_encode(v[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif t == "string" then
    return json_string(v)
  elseif t == "number" then
    if math.type(v) == "integer" then return string.format("%d", v) end
    assert(v == v and v ~= math.huge and v ~= -math.huge, "JSON has no NaN or infinity")
    return string.format("%.17g", v)
  elseif t == "boolean" then
    return tostring(v)
  end
  error("cannot write a " .. t .. " as JSON")
end

-- "3 submitted, 1 refused_cap_exceeded" from { submitted = 3, ... }, sorted.
local function tally(counts)
  local keys, parts = {}, {}
  for k in pairs(counts) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = string.format("%d %s", counts[k], k) end
  return #parts > 0 and table.concat(parts, ", ") or "none"
end

---------------------------------------------------------------------------
-- The lane
---------------------------------------------------------------------------

-- Counted from the start, so the refusal below shows up too.  The metrics
-- collector runs in this (the host's) state, where the report reads it.
local metrics = require("cairnloop.metrics").install(engine)

say("%sCairnloop demo%s: %s, policy %s", BOLD, OFF, tostring(engine),
  config.policy[1] or "(none)")

step("Migrate", "Idempotent: a second run changes nothing.")
check(engine:migrate())
say("schema %s is up to date", config.schema or "cairnloop")

step(string.format("Seed %d demo conversations", n_conversations),
  "Conversations belong to the host application; here it writes them with psql.")
sql(string.format([[
INSERT INTO %s.cairnloop_conversations (id, status, subject, customer_ref)
SELECT g, CASE WHEN g %% 10 = 0 THEN 'closed' ELSE 'open' END,
       'Demo conversation ' || g, 'customer-' || g
FROM generate_series(1, %d) AS g
ON CONFLICT (id) DO NOTHING;
SELECT setval(pg_get_serial_sequence('%s.cairnloop_conversations', 'id'),
              (SELECT max(id) FROM %s.cairnloop_conversations));]],
  SCHEMA, n_conversations, (SCHEMA:gsub("'", "''")), SCHEMA))
local by_status = {}
for _, row in ipairs(check(engine:query(string.format(
  "SELECT status, count(*) AS n FROM %s.cairnloop_conversations WHERE id BETWEEN 1 AND $1"
    .. " GROUP BY 1", SCHEMA), n_conversations))) do
  by_status[row.status] = row.n
end
say("demo conversations: %s", tally(by_status))
report.conversations = by_status

step("Select the cohort", "A read-only query over the host's conversations: the open ones.")
-- The campaign runs this itself (engine:query); it is read here only to
-- show the cohort's size before sending.
local COHORT = {
  sql = "SELECT id FROM " .. SCHEMA .. ".cairnloop_conversations"
    .. " WHERE status = 'open' AND id BETWEEN 1 AND $1 ORDER BY id",
  params = { n_conversations },
}
local cohort = {}
for i, row in ipairs(check(engine:query(COHORT.sql, n_conversations))) do cohort[i] = row.id end
local body = check(campaign.render(TEMPLATE, VARS))
local cap = engine:max_batch_size()
report.cohort, report.cap = #cohort, cap
say("%d recipients; the body, rendered once from template %s:", #cohort, TEMPLATE_ID)
say("  %q", body)

step("A bulk send over the cap is refused",
  string.format("%d recipients against the engine's cap of %d: refused with batch_too_large,"
    .. " and the refused envelope is recorded all the same.", cap + 1, cap))
if #cohort > cap then
  local over = table.move(cohort, 1, cap + 1, 1, {})
  -- A fixed id: a rerun finds this refusal instead of recording another.
  local refused_id = campaign.uuid_v5(campaign.campaign_id(KEY), "over-cap:" .. (cap + 1))
  local res, code, msg = engine:bulk_trigger(over, {
    template_id = TEMPLATE_ID, rendered_body = body, actor = ACTOR, envelope_id = refused_id,
  })
  if res or code ~= "batch_too_large" then
    error(string.format("expected batch_too_large, got %s: %s", tostring(code), tostring(msg)))
  end
  local env = check(engine:envelope(refused_id))
  report.refusals.over_cap = { code = code, message = msg, envelope_id = env.id,
    status = env.status, effective_cap = env.effective_cap }
  say("refused: %s", msg)
  say("recorded: envelope %s, status %s, effective cap %d", env.id, env.status, env.effective_cap)
else
  say("(skipped: the cohort has only %d recipients)", #cohort)
end

local spec = {
  key = KEY,
  template_id = TEMPLATE_ID,
  template = TEMPLATE,
  vars = VARS,
  cohort = COHORT,
  max_recipients = 500,
  actor = ACTOR,
}
-- No bar under --json (left nil, there is one on stderr when it is a terminal).
if JSON then spec.progress = false end

step("The campaign's own guard",
  "max_recipients is the campaign's explicit limit: a larger cohort is refused before"
    .. " anything is written.")
if #cohort >= 2 then
  local guarded = {}
  for k, v in pairs(spec) do guarded[k] = v end
  guarded.max_recipients = #cohort // 2
  local ok, code, msg = campaign.run(engine, guarded)
  assert(ok == nil and code == "batch_too_large", "the guard did not refuse")
  report.refusals.max_recipients = { code = code, message = msg,
    limit = guarded.max_recipients }
  say("refused (%s): %s; nothing written", code, msg)
else
  say("(skipped: the cohort is too small)")
end

step("Send the campaign",
  string.format("Envelopes of up to %d recipients (the cap); their ids derive from the key %q,"
    .. " so a rerun or a resumed crash replays them instead of sending twice.", cap, KEY))
local summary = check(campaign.run(engine, spec))
say("%s", campaign.format(summary))
report.campaign = {
  key = summary.key, campaign_id = summary.campaign_id, template_id = summary.template_id,
  chunk_size = summary.chunk_size, chunks = summary.chunks, envelopes = summary.envelopes,
  recipients = summary.recipients,
}

local function jobs_due()
  return check(engine:query(string.format(
    "SELECT count(*) AS n FROM %s.cairnloop_delivery_jobs"
      .. " WHERE state IN ('available', 'scheduled', 'retryable') AND scheduled_at <= now()",
    SCHEMA)))[1].n
end

if DELIVER then
  -- The notifier "sends" by appending one JSON line per delivery to an outbox
  -- file: a real one would call a mail or chat API with the same fields.  It
  -- is registered from this host script (engine:notifier), because a policy
  -- script has no files; it runs in this script's Lua state.
  local OUTBOX = os.getenv("CAIRNLOOP_OUTBOX") or ".cairnloop/outbox.jsonl"

  local outbox = io.open(OUTBOX, "a")
  if not outbox then -- no ./.cairnloop (a --database run): beside it instead
    OUTBOX = "cairnloop-outbox.jsonl"
    outbox = assert(io.open(OUTBOX, "a"))
  end
  local written = 0
  check(engine:notifier(function(message, conversation, delivery)
    outbox:write(string.format(
      '{"idempotency_key":%s,"message_id":%d,"conversation_id":%d,"to":%s,"body":%s}\n',
      json_string(delivery.idempotency_key), message.id, conversation.id,
      json_string(conversation.customer_ref or ""), json_string(message.content)))
    written = written + 1
    return true
  end))

  step("Deliver", "engine:work in a loop until no job is due; the notifier sends each message"
    .. " to the outbox " .. OUTBOX .. ".")
  local due = jobs_due()
  local bar = campaign.progress("delivered", due, { enabled = not JSON })
  local done = { sent = 0, failed = 0, no_op = 0, retried = 0, discarded = 0 }
  local handled = 0
  while true do
    local stats = check(engine:work { limit = 50 })
    local n = 0
    for k, v in pairs(stats) do
      done[k] = done[k] + v
      n = n + v
    end
    if n == 0 then break end
    handled = handled + n
    bar:update(math.min(handled, due), string.format("%d sent, %d failed", done.sent, done.failed))
  end
  bar:finish()
  outbox:close()
  say("%d lines appended to %s", written, OUTBOX)
  report.delivery = done
  report.outbox = { path = OUTBOX, appended = written }
  say("%d sent, %d failed (%d to retry, %d discarded), %d without a notifier", done.sent,
    done.failed, done.retried, done.discarded, done.no_op)
else
  step("Leave delivery to `cairnloop work`",
    "The jobs stay due: a worker process claims them and hands each message to its notifier.")
  say("%d jobs due", jobs_due())
end
report.due = jobs_due()

step("Report")
local envelopes = check(engine:envelopes { template_id = TEMPLATE_ID, limit = 10000 })
local env_counts = {}
for _, e in ipairs(envelopes) do env_counts[e.status] = (env_counts[e.status] or 0) + 1 end
say("envelopes (template %s): %s", TEMPLATE_ID, tally(env_counts))
report.envelopes = env_counts

local msg_counts = {}
for _, row in ipairs(check(engine:query(string.format(
  "SELECT metadata->>'status' AS status, count(*) AS n FROM %s.cairnloop_messages"
    .. " WHERE role = 'system_outbound' AND metadata->>'template_id' = $1 GROUP BY 1",
  SCHEMA), TEMPLATE_ID))) do
  msg_counts[row.status] = row.n
end
say("messages  (template %s): %s", TEMPLATE_ID, tally(msg_counts))
report.messages = msg_counts

local events = check(engine:audit_events { limit = 1000 })
local ev_counts = {}
for _, ev in ipairs(events) do ev_counts[ev.action] = (ev_counts[ev.action] or 0) + 1 end
say("audit events: %s; the newest:", tally(ev_counts))
report.audit_events = ev_counts
for i = 1, math.min(3, #events) do
  local ev = events[i]
  say("  #%d %s by %s: envelope %s, %s recipients, %s", ev.id, ev.action, ev.actor or "system",
    ev.bulk_envelope_id or "-", tostring(ev.count or 1), ev.inserted_at)
end

if JSON then
  io.write(json_encode(report), "\n")
  io.flush()
  return
end

say("\nmetrics of this run (Prometheus text format):")
io.write(metrics.render())

if DELIVER then
  say("\n%sDone.%s Run it again: nothing is sent twice, every envelope replays.", BOLD, OFF)
else
  say("\n%sSent.%s The jobs are due: `cairnloop work` delivers them.", BOLD, OFF)
end
