-- Issue 10 ("Trust"), reproduced as a hostile policy script would try it:
-- tx:exec cannot end, split or escape the operation's transaction nor
-- leave session state behind (from audit or from list_events), SQL time
-- counts against the hook's budget, and the idempotency key is stable per
-- message.  Each case asserts hook_error, that nothing was written, and
-- that the next call behaves as on a fresh connection.
--
-- Bugs: COMMIT through tx:exec stored the envelope, messages and jobs of
-- a refused bulk; BEGIN/ROLLBACK lost them behind a success (and, from
-- list_events, opened a transaction under the next bulk); SET ROLE,
-- default_transaction_read_only, DEALLOCATE ALL, search_path and
-- session_replication_role outlived the operation; pg_sleep(8) under a
-- 5 s budget returned ok after 8 s; the key was "<message id>:<attempt>".
-- Fixed in src/hooks.c (cl_tx_exec: keyword test, deadline), src/db.c
-- (session check before the commit, read-only list_events transaction,
-- cancelled wait) and src/queue.c (the key).
local H = require "spec.support.helper"

-- The policy: its auditor misbehaves according to the template id.
local HOSTILE = [[
local cl = require "cairnloop"
local try = {
  commit_refuse = function(tx) tx:exec("COMMIT"); return nil, "refused" end,
  commit_caught_refuse = function(tx) pcall(tx.exec, tx, "COMMIT"); return nil, "refused" end,
  commit_error = function(tx) pcall(tx.exec, tx, "COMMIT"); error("after the commit") end,
  begin = function(tx) tx:exec("BEGIN"); return true end,
  begin_caught = function(tx) pcall(tx.exec, tx, "BEGIN"); return true end,
  rollback_caught = function(tx) pcall(tx.exec, tx, "ROLLBACK"); return true end,
  commented = function(tx) pcall(tx.exec, tx, "/* SELECT */\n-- SELECT\n(COMMIT)"); return true end,
  list = function(tx) pcall(tx.exec, tx, "SELECT 1; COMMIT"); return true end,
  set_role = function(tx) pcall(tx.exec, tx, "SET ROLE pg_monitor"); return true end,
  read_only = function(tx)
    pcall(tx.exec, tx, "SET default_transaction_read_only = on"); return true
  end,
  deallocate = function(tx) pcall(tx.exec, tx, "DEALLOCATE ALL"); return true end,
  search_path = function(tx) pcall(tx.exec, tx, "SET search_path = nowhere"); return true end,
  replica = function(tx) pcall(tx.exec, tx, "SET session_replication_role = replica"); return true end,
  cfg_search_path = function(tx)
    tx:exec("SELECT set_config('search_path', 'nowhere', false)"); return true
  end,
  cfg_role = function(tx) tx:exec("SELECT set_config('role', 'pg_monitor', false)"); return true end,
  cfg_replica = function(tx)
    tx:exec("SELECT set_config('session_replication_role', 'replica', false)"); return true
  end,
  temp = function(tx) tx:exec("SELECT * INTO TEMP kept FROM generate_series(1, 3)"); return true end,
  lock = function(tx) tx:exec("SELECT pg_advisory_lock(4711)"); return true end,
  sleep = function(tx) tx:exec("SELECT pg_sleep(5)"); return true end,
}
cl.auditor {
  audit = function(tx, action, actor, metadata)
    local f = try[metadata.template_id]
    if f then return f(tx) end
    local rows = tx:exec("SELECT $1::text AS action", action)
    return { action = rows[1].action }
  end,
  list_events = function(opts, tx)
    if opts.try == "begin" then tx:exec("BEGIN") end
    if opts.try == "begin_caught" then pcall(tx.exec, tx, "BEGIN") end
    if opts.try == "set_config" then tx:exec("SELECT set_config('search_path', 'nowhere', false)") end
    if opts.try == "lock" then tx:exec("SELECT pg_advisory_lock(4712)") end
    if opts.try == "write" then
      tx:exec("INSERT INTO " .. cl.schema .. ".cairnloop_audit_events (action) VALUES ('x')")
    end
    local rows = tx:exec("SELECT count(*) AS n FROM " .. cl.schema .. ".cairnloop_messages")
    return { { messages = rows[1].n } }
  end,
}
]]

describe("tx:exec (issue 10)", function()
  local engine, schema, path, seq

  setup(function()
    path = H.policy_file(HOSTILE)
    engine, schema = H.open("trust", { policy = path, hook_time_limit_ms = 300 })
    seq = 0
  end)

  teardown(function()
    engine:close()
    os.remove(path)
  end)

  -- The session of the engine's connection, as the next call finds it.
  local function session()
    local rows = assert(engine:query([[
      SELECT current_user = session_user AS own_role, current_setting('search_path') AS path,
             current_setting('session_replication_role') AS replication,
             current_setting('default_transaction_read_only') AS read_only,
             (SELECT count(*) FROM pg_settings
              WHERE source = 'session' AND name NOT LIKE 'transaction_%') AS settings,
             (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) AS temp,
             (SELECT count(*) FROM pg_locks
              WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks]]))
    return rows[1]
  end

  -- The next call behaves as on a fresh connection.
  local function assert_fresh()
    seq = seq + 1
    local before = H.written(schema)
    local res = assert(engine:bulk_trigger({ 3, 4 }, { template_id = "after_" .. seq, rendered_body = "b" }))
    assert.same({ action = "bulk_outbound_trigger" }, res.audit)
    local now = H.written(schema)
    assert.equals(before.envelopes + 1, now.envelopes)
    assert.equals(before.messages + 2, now.messages)
    -- Foreign keys hold (session_replication_role is back to origin).
    local _, code = engine:trigger(999999, { template_id = "after_" .. seq })
    assert.equals("unknown_conversation", code)
    assert.same({ own_role = true, path = '"$user", public', replication = "origin",
                  read_only = "off", settings = 0, temp = 0, locks = 0 }, session())
  end

  -- Bulk and trigger under the auditor's `template` behaviour: hook_error
  -- naming `pattern`, nothing written, the next call fresh.
  local function refused(template, pattern)
    local before = H.written(schema)
    local res, code, msg = engine:bulk_trigger({ 1, 2 }, { template_id = template, rendered_body = "b" })
    assert.is_nil(res)
    assert.equals("hook_error", code)
    assert.matches(pattern, msg)
    assert.is_nil(msg:find("\n"))
    res, code, msg = engine:trigger(1, { template_id = template })
    assert.is_nil(res)
    assert.equals("hook_error", code)
    assert.matches(pattern, msg)
    assert.same(before, H.written(schema))
    assert_fresh()
  end

  it("cannot commit the operation before the auditor refuses", function()
    refused("commit_refuse", "not COMMIT")
    refused("commit_caught_refuse", "not COMMIT")
    refused("commit_error", "after the commit")
  end)

  it("cannot open or roll back a transaction under a success", function()
    refused("begin", "not BEGIN")
    refused("begin_caught", "not BEGIN")
    refused("rollback_caught", "not ROLLBACK")
  end)

  it("sees through comments, parentheses and statement lists", function()
    refused("commented", "not COMMIT")
    refused("list", "multiple commands")
  end)

  it("cannot leave settings, roles or prepared statements behind", function()
    refused("set_role", "not SET")
    refused("read_only", "not SET")
    refused("deallocate", "not DEALLOCATE")
    refused("search_path", "not SET")
    refused("replica", "not SET")
  end)

  it("catches set_config, SELECT INTO and advisory locks before the commit", function()
    refused("cfg_search_path", "^auditor%.audit: tx:exec changed the session %(search_path%)$")
    refused("cfg_role", "changed the session %(role%)")
    refused("cfg_replica", "changed the session %(session_replication_role%)")
    refused("temp", "changed the session %(temporary relation kept%)")
    refused("lock", "changed the session %(advisory lock%)")
  end)

  it("counts SQL time against the hook's budget", function()
    local started = os.time()
    refused("sleep", "time budget %(300 ms%)")
    -- pg_sleep(5) was cancelled at 300 ms (the clock here counts seconds).
    assert.is_true(os.time() - started <= 3)
  end)

  it("still runs what reads and writes rows", function()
    local res = assert(engine:trigger(5, { template_id = "plain" }))
    assert.same({ action = "outbound_trigger" }, res.audit)
  end)

  describe("from list_events", function()
    it("runs in a read-only transaction that ends with the call", function()
      local events = assert(engine:audit_events {})
      assert.equals(1, #events)
      local _, code, msg = engine:audit_events { try = "write" }
      assert.equals("hook_error", code)
      assert.matches("read%-only transaction", msg)
      assert_fresh()
    end)

    it("cannot open a transaction under the next bulk", function()
      local _, code, msg = engine:audit_events { try = "begin" }
      assert.equals("hook_error", code)
      assert.matches("not BEGIN", msg)
      _, code, msg = engine:audit_events { try = "begin_caught" }
      assert.equals("hook_error", code)
      assert.matches("not BEGIN", msg)
      -- The bulk that follows is committed: another connection sees it.
      assert_fresh()
    end)

    it("cannot leave settings or locks behind", function()
      local _, code, msg = engine:audit_events { try = "set_config" }
      assert.equals("hook_error", code)
      assert.matches("^auditor%.list_events: tx:exec changed the session %(search_path%)$", msg)
      assert_fresh()
      _, code, msg = engine:audit_events { try = "lock" }
      assert.equals("hook_error", code)
      assert.matches("changed the session %(advisory lock%)", msg)
      assert_fresh()
    end)
  end)
end)

describe("the idempotency key (issue 10)", function()
  local engine, schema

  setup(function()
    engine, schema = H.open("trust_key")
  end)

  teardown(function()
    engine:close()
  end)

  it("is cl-msg-<message id> on every attempt, with the attempt passed apart", function()
    local seen = {}
    engine:notifier(function(message, conversation, delivery)
      seen[#seen + 1] = { key = delivery.idempotency_key, attempt = delivery.attempt }
      if #seen == 1 then return nil, "provider busy" end
      return true
    end)
    local res = assert(engine:trigger(6, { template_id = "key" }))
    local stats = assert(engine:work { limit = 10 })
    assert.equals(1, stats.failed)
    H.sql(string.format("UPDATE %s.cairnloop_delivery_jobs SET scheduled_at = now() WHERE id = %d",
      schema, res.delivery_job.id))
    stats = assert(engine:work { limit = 10 })
    assert.equals(1, stats.sent)
    local key = "cl-msg-" .. tostring(res.message.id)
    assert.same({ { key = key, attempt = 1 }, { key = key, attempt = 2 } }, seen)
  end)
end)
