-- engine:query: read-only SQL for hosts and campaigns, and campaigns whose
-- cohort is a query.
local H = require "spec.support.helper"
local campaign = require "cairnloop.campaign"

describe("engine:query", function()
  local engine, schema

  setup(function()
    engine, schema = H.open("query")
  end)

  teardown(function()
    engine:close()
  end)

  it("returns rows keyed by column name with typed values, parameters bound", function()
    local rows = assert(engine:query(
      "SELECT id, subject, id > $1 AS big FROM " .. schema ..
      ".cairnloop_conversations WHERE id <= $2 ORDER BY id", 1, 3))
    assert.equals(3, #rows)
    assert.equals(1, rows[1].id)
    assert.equals(false, rows[1].big)
    assert.equals(true, rows[3].big)
    assert.equals("string", type(rows[2].subject))
  end)

  it("binds hostile strings as data", function()
    local rows = assert(engine:query("SELECT $1::text AS t", "'); DROP TABLE x; --"))
    assert.equals("'); DROP TABLE x; --", rows[1].t)
  end)

  it("cannot write: db_error, and nothing is written", function()
    local before = H.count(schema, "cairnloop_conversations")
    local rows, code, msg = engine:query("INSERT INTO " .. schema ..
      ".cairnloop_conversations (subject) VALUES ('x') RETURNING id")
    assert.is_nil(rows)
    assert.equals("db_error", code)
    assert.matches("read%-only", msg)
    assert.equals(before, H.count(schema, "cairnloop_conversations"))
    assert.truthy(engine:query("SELECT 1 AS one")) -- still usable
  end)

  it("reports an SQL error as db_error and raises on misuse", function()
    local rows, code = engine:query("SELECT nope FROM nowhere")
    assert.is_nil(rows)
    assert.equals("db_error", code)
    assert.has_error(function() engine:query("SELECT $1", {}) end)
    assert.has_error(function() engine:query({}) end)
  end)

  it("selects a campaign cohort", function()
    local summary = assert(campaign.run(engine, {
      key = "query-cohort-" .. schema,
      template_id = "q_v1",
      rendered_body = "from a query",
      max_recipients = 10,
      cohort = { sql = "SELECT id FROM " .. schema ..
        ".cairnloop_conversations WHERE id BETWEEN $1 AND $2", params = { 4, 6 } },
    }))
    assert.equals(3, summary.recipients.total)
    assert.equals(3, summary.recipients.submitted)
    assert.equals(3, H.count(schema, "cairnloop_messages", "content = 'from a query'"))
  end)
end)
