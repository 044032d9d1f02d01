-- Ids on each runtime (API.md): Lua integers on Lua 5.4; numbers on LuaJIT,
-- where an id above 2^53 is refused with invalid_argument on the way in and,
-- written by another client, comes back as its decimal string on the way
-- out.  Never a rounded number: 2^53 + 1 would silently become 2^53 and name
-- someone else's conversation.
local H = require "spec.support.helper"
local C = require "spec.support.compat"

-- 2^53 + 1, the first integer a double cannot hold, and its neighbours.
local BIG = "9007199254740993"
local BIG_NEXT = "9007199254740994"
local BIG_JOB = "9007199254740995"

describe("ids on " .. C.runtime, function()
  local engine, schema

  setup(function()
    engine, schema = H.open("ids")
    H.sql(string.format(
      "INSERT INTO %s.cairnloop_conversations (id, subject) VALUES (%s, 'big'), (%s, 'big next')",
      schema, BIG, BIG_NEXT))
  end)

  teardown(function()
    engine:close()
  end)

  -- Asserts that `call` returns invalid_argument (message matching
  -- `pattern`) and writes nothing.
  local function refused(pattern, call)
    local before = H.written(schema)
    local res, code, msg = call()
    assert.is_nil(res)
    assert.equals("invalid_argument", code)
    assert.matches(pattern, msg)
    assert.same(before, H.written(schema))
  end

  it("accepts 2^53 itself, the largest id exact on both runtimes", function()
    local res, code, msg = engine:trigger(2 ^ 53, { template_id = "t" })
    assert.is_nil(res)
    assert.equals("unknown_conversation", code)
    assert.equals("conversation 9007199254740992 does not exist", msg)
  end)

  it("refuses numbers that are no integer id on either runtime", function()
    for _, id in ipairs { math.huge, -math.huge, 0 / 0, 1e300, 2 ^ 64 } do
      refused("^conversation_id must be an integer", function()
        return engine:trigger(id, { template_id = "t" })
      end)
      refused("^conversation id 2 must be an integer", function()
        return engine:bulk_trigger({ 1, id }, { template_id = "t", rendered_body = "b" })
      end)
    end
  end)

  if C.luajit then
    it("refuses an id above 2^53 with invalid_argument and writes nothing (LuaJIT)", function()
      for _, id in ipairs { 2 ^ 53 + 2, -(2 ^ 53 + 2), 2 ^ 63 } do
        refused("^conversation_id must be an integer", function()
          return engine:trigger(id, { template_id = "t" })
        end)
        refused("^conversation id 3 must be an integer", function()
          return engine:bulk_trigger({ 1, 2, id }, { template_id = "t", rendered_body = "b" })
        end)
      end
    end)

    it("refuses a big id given as a decimal string (LuaJIT)", function()
      refused("^conversation_id must be an integer, got string", function()
        return engine:trigger(BIG, { template_id = "t" })
      end)
      refused("^conversation id 1 must be an integer, got string", function()
        return engine:bulk_trigger({ BIG }, { template_id = "t", rendered_body = "b" })
      end)
    end)
  else
    it("accepts 64-bit ids above 2^53 (" .. C.runtime .. " integers)", function()
      local big, next_big = C.int64(BIG), C.int64(BIG_NEXT)
      local res = assert(engine:trigger(big, { template_id = "big_api" }))
      assert.equals(big, res.message.conversation_id)
      assert.equals("integer", math.type(res.message.conversation_id))
      assert.equals(big, res.delivery_job.args.conversation_id)
      local b = assert(engine:bulk_trigger({ next_big, big, 1 }, {
        template_id = "big_api_bulk", rendered_body = "b",
      }))
      assert.same({ next_big, big, 1 }, b.envelope.recipient_conversation_ids)
      assert.equals(next_big, b.messages[1].conversation_id)
      local r, code, msg = engine:trigger(math.maxinteger, { template_id = "t" })
      assert.is_nil(r)
      assert.equals("unknown_conversation", code)
      assert.equals("conversation 9223372036854775807 does not exist", msg)
    end)
  end

  it("returns message and job ids above 2^53 exactly: " .. (C.lua54 and "integers" or "decimal strings"),
    function()
      -- Past 2^53 from here on: the next message is 2^53 + 1.
      H.sql(string.format("SELECT setval(pg_get_serial_sequence('%s.cairnloop_messages', 'id'), %s - 1),"
        .. " setval(pg_get_serial_sequence('%s.cairnloop_delivery_jobs', 'id'), %s - 1)",
        schema, BIG, schema, BIG_JOB))
      local res = assert(engine:trigger(1, { template_id = "big_seq" }))
      assert.equals(C.int64(BIG), res.message.id)
      assert.equals(C.int64(BIG), res.delivery_job.args.message_id)
      assert.equals(C.int64(BIG_JOB), res.delivery_job.id)
      assert.equals(1, res.message.conversation_id)
      -- The duplicate path reads the same rows back.
      local again = assert(engine:trigger(1, { template_id = "big_seq" }))
      assert.is_true(again.duplicate)
      assert.equals(C.int64(BIG), again.message.id)
    end)

  it("hands rows about big conversations, written by another client, over exactly", function()
    -- The command line carries ids as text, so it can write what LuaJIT
    -- cannot ask for; reading them back must not round them.
    H.cli("--schema", schema, "trigger", BIG, "--template", "big_cli")
    H.cli("--schema", schema, "bulk", "--template", "big_cli_bulk", "--body", "b",
      "--ids", BIG_NEXT .. ",2," .. BIG)
    local listed = assert(engine:envelopes { template_id = "big_cli_bulk" })
    assert.equals(1, #listed)
    assert.same({ C.int64(BIG_NEXT), 2, C.int64(BIG) }, listed[1].recipient_conversation_ids)
    assert.same(listed[1], assert(engine:envelope(listed[1].id)))

    local seen = {}
    engine:notifier(function(message, conversation, ctx)
      if message.metadata.template_id:find("^big_cli") then
        seen[#seen + 1] = { m = message.conversation_id, c = conversation.id,
          subject = conversation.subject, key = ctx.idempotency_key, id = message.id }
      end
      return true
    end)
    local stats = assert(engine:work { limit = 100 })
    assert.equals(0, stats.failed)
    assert.equals(4, #seen)
    table.sort(seen, function(a, b) return tostring(a.subject) < tostring(b.subject) end)
    -- Subjects: "big", "big", "big next", "c2".
    for i, want in ipairs { BIG, BIG, BIG_NEXT } do
      assert.equals(C.int64(want), seen[i].m)
      assert.equals(C.int64(want), seen[i].c)
    end
    assert.equals(2, seen[4].c)
    for _, s in ipairs(seen) do
      assert.equals("cl-msg-" .. tostring(s.id), s.key)
    end
  end)
end)
