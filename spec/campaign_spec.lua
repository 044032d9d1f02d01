-- cairnloop.campaign (lua/cairnloop/campaign.lua): SHA-1 and UUID v5
-- against published vectors, template rendering, the progress bar, and
-- campaigns on a real database: cap-sized envelopes with derived ids, the
-- refusals that write nothing, replays, and resuming after a crash or a
-- changed cohort without sending anyone the message twice.
local H = require "spec.support.helper"
local campaign = require "cairnloop.campaign"

describe("campaign.sha1", function()
  -- FIPS 180-2 appendix A, and the padding boundaries (55, 56, 64 bytes).
  local vectors = {
    { "", "da39a3ee5e6b4b0d3255bfef95601890afd80709" },
    { "abc", "a9993e364706816aba3e25717850c26c9cd0d89d" },
    { "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
      "84983e441c3bd26ebaae4aa1f95129e5e54670f1" },
    { "The quick brown fox jumps over the lazy dog", "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12" },
    { string.rep("a", 55), "c1c8bbdc22796e28c0e15163d20899b65621d65a" },
    { string.rep("a", 56), "c2db330f6083854c99d4b5bfb6e8f29f201be699" },
    { string.rep("a", 64), "0098ba824b5c16427bd7a1122a5a442a25ec644d" },
    { "\0\255\128\1", "f83fa0e751b27c7e5c0c8e68757cca55606dc0e4" },
  }

  it("matches the published digests", function()
    for _, v in ipairs(vectors) do
      assert.equals(v[2], campaign.sha1(v[1]), string.format("sha1(%q)", v[1]))
    end
  end)

  it("matches the million-a digest (many blocks)", function()
    assert.equals("34aa973cd4c4daa4f61eeb2bdbad27316534016f", campaign.sha1(string.rep("a", 1000000)))
  end)
end)

describe("campaign.uuid_v5", function()
  local DNS = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
  local URL = "6ba7b811-9dad-11d1-80b4-00c04fd430c8"

  it("matches the RFC 4122 name-based UUIDs other implementations give", function()
    assert.equals("886313e1-3b8a-5372-9b90-0c9aee199e5d", campaign.uuid_v5(DNS, "python.org"))
    assert.equals("2ed6657d-e927-568b-95e1-2665a8aea6a2", campaign.uuid_v5(DNS, "www.example.com"))
    assert.equals("6639460f-3425-5329-8097-a58f06127860", campaign.uuid_v5(URL, "https://example.com/a"))
    -- Upper-case namespaces are the same UUID.
    assert.equals(campaign.uuid_v5(DNS, "x"), campaign.uuid_v5(DNS:upper(), "x"))
  end)

  it("derives envelope ids per key and chunk: version 5, RFC variant, all distinct", function()
    local seen = {}
    for _, key in ipairs { "spring", "spring2", "Spring" } do
      for i = 1, 50 do
        local id = campaign.envelope_id(key, i)
        assert.matches("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-5%x%x%x%-[89ab]%x%x%x%-%x+$", id)
        assert.equals(36, #id)
        assert.is_nil(seen[id])
        seen[id] = true
        assert.equals(id, campaign.envelope_id(key, i)) -- deterministic
      end
    end
    assert.equals(campaign.uuid_v5(campaign.campaign_id("spring"), "chunk:3"),
      campaign.envelope_id("spring", 3))
    -- The namespace is fixed for good: these ids are stored in databases.
    assert.equals("ddbbde32-688a-5a40-8587-026355dc119d", campaign.campaign_id("spring"))
  end)

  it("raises for a namespace that is not a UUID", function()
    assert.has_error(function() campaign.uuid_v5("not-a-uuid", "x") end)
    assert.has_error(function() campaign.uuid_v5(DNS .. "0", "x") end)
  end)
end)

describe("campaign.render", function()
  it("fills {{name}} placeholders from vars, spaces allowed", function()
    assert.equals("Hi Ann, your 3 tickets", campaign.render("Hi {{name}}, your {{ n }} tickets",
      { name = "Ann", n = 3 }))
    assert.equals("no placeholders", campaign.render("no placeholders"))
    assert.equals("a{b}c", campaign.render("a{b}c", {}))
    assert.equals("ÄÖ 😀", campaign.render("{{x}} 😀", { x = "ÄÖ" }))
  end)

  it("refuses a missing value, a non-text value, a malformed placeholder", function()
    local cases = {
      { "Hi {{name}}", {}, "template variable 'name' has no value" },
      { "Hi {{name}}", { name = true }, "has no value %(a boolean is not text%)" },
      { "Hi {{name}", { name = "x" }, "malformed placeholder at byte 4" },
      { "Hi {{ two words }}", {}, "malformed placeholder" },
      { "Hi {{}}", {}, "malformed placeholder" },
      { "Hi }} there", {}, "unmatched }}" },
    }
    for _, c in ipairs(cases) do
      local out, code, msg = campaign.render(c[1], c[2])
      assert.is_nil(out)
      assert.equals("invalid_argument", code)
      assert.matches(c[3], msg)
    end
  end)
end)

describe("campaign.progress", function()
  local function fake()
    local s = { text = "" }
    function s:write(...) self.text = self.text .. table.concat({ ... }) end
    return s
  end

  it("draws a bar in place, and a newline at the end, when forced", function()
    local s = fake()
    local bar = campaign.progress("envelopes", 4, { stream = s, force = true })
    bar:update(1, "25 recipients")
    bar:update(4)
    bar:finish()
    assert.equals("\renvelopes [#######-----------------------] 1/4  25 recipients\27[K"
      .. "\renvelopes [##############################] 4/4\27[K\n", s.text)
  end)

  it("draws nothing on a stream that is not a terminal, or when disabled", function()
    local s = fake()
    local bar = campaign.progress("x", 2, { stream = s })
    bar:update(1)
    bar:finish("done")
    local off = campaign.progress("x", 2, { stream = s, force = true, enabled = false })
    off:update(1)
    off:finish()
    assert.equals("", s.text)
  end)
end)

describe("engine:max_batch_size", function()
  it("returns the cap of the moment", function()
    local engine = H.open("cap_read")
    assert.equals(25, engine:max_batch_size())
    assert.is_true(engine:configure { max_batch_size = 7 })
    assert.equals(7, engine:max_batch_size())
    engine:close()
    assert.has_error(function() engine:max_batch_size() end, "attempt to use a closed engine")
  end)
end)

describe("campaign.run", function()
  local function range(a, b)
    local t = {}
    for i = a, b do t[#t + 1] = i end
    return t
  end

  -- The messages of a template, per conversation: no key may hold two.
  local function messages_by_conversation(schema, template_id)
    local per = {}
    for _, row in ipairs(H.sql(string.format(
      "SELECT conversation_id, count(*) FROM %s.cairnloop_messages"
        .. " WHERE metadata->>'template_id' = '%s' GROUP BY 1", schema, template_id))) do
      per[tonumber(row[1])] = tonumber(row[2])
    end
    return per
  end

  local function spec(over)
    local s = {
      key = "spec-campaign", template_id = "camp_v1", template = "Hello {{who}}",
      vars = { who = "there" }, cohort = range(1, 10), max_recipients = 100, progress = false,
    }
    for k, v in pairs(over or {}) do s[k] = v end
    return s
  end

  it("sends the sorted cohort in envelopes of the cap's size with derived ids", function()
    local engine, schema = H.open("camp_send", { max_batch_size = 4 })
    local cohort = range(1, 10)
    table.sort(cohort, function(a, b) return a > b end) -- any order in, sorted out
    local chunks = {}
    local s = assert(campaign.run(engine, spec {
      cohort = cohort, actor = "operator:1",
      on_chunk = function(info) chunks[#chunks + 1] = info end,
    }))
    assert.equals(4, s.chunk_size)
    assert.equals(3, s.chunks)
    assert.same({ submitted = 3, replayed = 0, refused = 0 }, s.envelopes)
    assert.same({ total = 10, submitted = 10, replayed = 0 }, s.recipients)
    assert.equals(campaign.campaign_id("spec-campaign"), s.campaign_id)
    local want = { range(1, 4), range(5, 8), range(9, 10) }
    for i = 1, 3 do
      local id = campaign.envelope_id("spec-campaign", i)
      assert.equals(id, s.envelope_ids[i])
      local env = assert(engine:envelope(id))
      assert.equals("submitted", env.status)
      assert.equals("Hello there", env.rendered_body)
      assert.equals("camp_v1", env.template_id)
      assert.equals("operator:1", env.requested_by)
      assert.same(want[i], env.recipient_conversation_ids)
      assert.same({ index = i, chunks = 3, envelope_id = id, count = #want[i],
        outcome = "submitted", summary = s }, chunks[i])
    end
    assert.equals(10, H.count(schema, "cairnloop_messages", "content = 'Hello there'"))
    assert.equals(10, H.count(schema, "cairnloop_delivery_jobs"))
    engine:close()
  end)

  it("takes ids as integers or integral floats, up to 64 bits on Lua 5.4", function()
    local engine, schema = H.open("camp_ids", { max_batch_size = 4 })
    local big = math.tointeger and math.tointeger(2 ^ 53) + 1 -- not exact as a double
    if big then
      H.sql(string.format("INSERT INTO %s.cairnloop_conversations (id) VALUES (%d)", schema, big))
    end
    local s = assert(campaign.run(engine, spec { cohort = { 2.0, 1, big } }))
    assert.same({ total = big and 3 or 2, submitted = big and 3 or 2, replayed = 0 }, s.recipients)
    local env = assert(engine:envelope(campaign.envelope_id("spec-campaign", 1)))
    assert.same(big and { 1, 2, big } or { 1, 2 }, env.recipient_conversation_ids)
    engine:close()
  end)

  it("takes an explicit chunk_size up to the cap", function()
    local engine, schema = H.open("camp_chunk")
    local plain = spec { chunk_size = 3 }
    plain.template, plain.vars, plain.rendered_body = nil, nil, "Plain"
    local s = assert(campaign.run(engine, plain))
    assert.equals(4, s.chunks)
    assert.equals(10, H.count(schema, "cairnloop_messages", "content = 'Plain'"))
    engine:close()
  end)

  it("refuses a cohort over max_recipients before writing anything", function()
    local engine, schema = H.open("camp_max")
    local before = H.written(schema)
    local s, code, msg, partial = campaign.run(engine, spec { max_recipients = 9 })
    assert.is_nil(s)
    assert.equals("batch_too_large", code)
    assert.equals("cohort of 10 recipients exceeds max_recipients 9", msg)
    assert.equals(0, partial.envelopes.submitted)
    assert.same(before, H.written(schema))
    engine:close()
  end)

  it("refuses bad input before writing anything", function()
    local engine, schema = H.open("camp_invalid", { max_batch_size = 4 })
    local before = H.written(schema)
    local cases = {
      { { chunk_size = 5 }, "chunk_size 5 exceeds the engine's cap 4" },
      { { cohort = { 1, 2, 2 } }, "duplicate conversation id 2 in cohort" },
      { { cohort = { 1, 2.5 } }, "cohort entry 2 is not a positive integer id" },
      { { cohort = { 1, 0 } }, "cohort entry 2 is not a positive integer id" },
      { { cohort = { 1, "2" } }, "cohort entry 2 is not a positive integer id" },
      { { cohort = { [1] = 1, [3] = 3 } }, "without holes" },
      { { cohort = {} }, "cohort is empty" },
      { { cohort = 7 }, "cohort must be a list" },
      { { max_recipients = 0 }, "max_recipients must be a positive integer" },
      { { max_recipients = false }, "max_recipients must be a positive integer" },
      { { key = "" }, "key must be a non%-empty string" },
      { { key = string.rep("k", 201) }, "at most 200 bytes" },
      { { template_id = 3 }, "template_id must be a non%-empty string" },
      { { rendered_body = "x" }, "exactly one of template" },
      { { template = "Hi {{nobody}}" }, "template variable 'nobody' has no value" },
      { { max_recipent = 3 }, "unknown option 'max_recipent'" },
      { { schedule_in = -1 }, "schedule_in must be an integer >= 0" },
      { { progress = "yes" }, "progress must be a boolean" },
      { { cohort = function() return nil, "db_error", "cohort query failed" end }, "cohort query failed" },
    }
    for _, c in ipairs(cases) do
      local s, code, msg = campaign.run(engine, spec(c[1]))
      assert.is_nil(s)
      assert.matches(c[2], msg)
      assert.equals(c[2] == "cohort query failed" and "db_error" or "invalid_argument", code)
    end
    assert.same(before, H.written(schema))
    engine:close()
  end)

  it("raises on misuse: a spec that is not a table, something that is not an engine", function()
    local engine = H.open("camp_misuse")
    assert.has_error(function() campaign.run(engine, "spec") end, "campaign.run: spec must be a table")
    assert.has_error(function() campaign.run({}, spec()) end,
      "campaign.run: engine must be a cairnloop engine")
    assert.has_error(function() campaign.run(nil, spec()) end,
      "campaign.run: engine must be a cairnloop engine")
    engine:close()
  end)

  it("replays every envelope when run again: nothing new is written", function()
    local engine, schema = H.open("camp_replay", { max_batch_size = 4 })
    assert(campaign.run(engine, spec()))
    local before = H.written(schema)
    local s = assert(campaign.run(engine, spec()))
    assert.same({ submitted = 0, replayed = 3, refused = 0 }, s.envelopes)
    assert.same({ total = 10, submitted = 0, replayed = 10 }, s.recipients)
    assert.same(before, H.written(schema))
    engine:close()
  end)

  it("resumes after a crash mid-campaign: replays what was stored, sends the rest once", function()
    local engine, schema = H.open("camp_crash", { max_batch_size = 3 })
    local crash = spec {
      cohort = range(1, 20),
      on_chunk = function(info) if info.index == 3 then error("worker died") end end,
    }
    assert.has_error(function() campaign.run(engine, crash) end)
    assert.equals(3, H.count(schema, "cairnloop_outbound_bulk_envelopes"))
    assert.equals(9, H.count(schema, "cairnloop_messages"))

    local s = assert(campaign.run(engine, spec { cohort = range(1, 20) }))
    assert.equals(7, s.chunks)
    assert.same({ submitted = 4, replayed = 3, refused = 0 }, s.envelopes)
    assert.same({ total = 20, submitted = 11, replayed = 9 }, s.recipients)
    local per = messages_by_conversation(schema, "camp_v1")
    for id = 1, 20 do assert.equals(1, per[id], "conversation " .. id) end
    assert.equals(20, H.count(schema, "cairnloop_delivery_jobs"))
    engine:close()
  end)

  it("resumes when the cohort changed in between, without a conflict or a duplicate", function()
    local engine, schema = H.open("camp_drift", { max_batch_size = 4 })
    local stop = spec {
      cohort = range(1, 10),
      on_chunk = function(info) if info.index == 2 then error("stopped") end end,
    }
    assert.has_error(function() campaign.run(engine, stop) end)
    -- Conversation 3 (already sent) closed, 11 and 12 opened since.
    local cohort = { 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12 }
    local s = assert(campaign.run(engine, spec { cohort = cohort }))
    assert.same({ submitted = 1, replayed = 2, refused = 0 }, s.envelopes)
    assert.same({ total = 11, submitted = 4, replayed = 8 }, s.recipients)
    local env = assert(engine:envelope(campaign.envelope_id("spec-campaign", 3)))
    assert.same({ 9, 10, 11, 12 }, env.recipient_conversation_ids)
    local per = messages_by_conversation(schema, "camp_v1")
    for id = 1, 12 do assert.equals(1, per[id], "conversation " .. id) end
    engine:close()
  end)

  it("stops at a chunk that fails and reports what was done; the rerun finishes", function()
    local engine, schema = H.open("camp_fail", { max_batch_size = 4 })
    local cohort = range(1, 10)
    cohort[6] = 999 -- no such conversation: sorted last, in chunk 3
    local s, code, msg, partial = campaign.run(engine, spec { cohort = cohort })
    assert.is_nil(s)
    assert.equals("unknown_conversation", code)
    assert.equals("chunk 3 (envelope " .. campaign.envelope_id("spec-campaign", 3)
      .. "): conversation 999 does not exist", msg)
    assert.same({ submitted = 2, replayed = 0, refused = 0 }, partial.envelopes)
    assert.equals(8, H.count(schema, "cairnloop_messages"))

    -- Fixed: 6 was not in any stored chunk, so it goes out with 10.
    cohort[6] = 6
    s = assert(campaign.run(engine, spec { cohort = cohort }))
    assert.same({ submitted = 1, replayed = 2, refused = 0 }, s.envelopes)
    assert.same({ 6, 10 },
      assert(engine:envelope(campaign.envelope_id("spec-campaign", 3))).recipient_conversation_ids)
    assert.equals(10, H.count(schema, "cairnloop_messages"))
    engine:close()
  end)

  it("refuses a key already used for a different body: envelope_conflict, nothing written", function()
    local engine, schema = H.open("camp_conflict", { max_batch_size = 4 })
    assert(campaign.run(engine, spec()))
    local before = H.written(schema)
    local s, code, msg = campaign.run(engine, spec { vars = { who = "again" } })
    assert.is_nil(s)
    assert.equals("envelope_conflict", code)
    assert.matches('campaign "spec%-campaign" chunk 1 .* different template or body', msg)
    s, code = campaign.run(engine, spec { template_id = "camp_v2" })
    assert.is_nil(s)
    assert.equals("envelope_conflict", code)
    assert.same(before, H.written(schema))
    engine:close()
  end)

  it("counts a chunk the engine refused, and sends its recipients in later chunks", function()
    local engine, schema = H.open("camp_refused", { max_batch_size = 4 })
    -- The cap drops while the campaign runs: chunk 2 is refused and recorded.
    local s, code, msg, partial = campaign.run(engine, spec {
      on_chunk = function(info)
        if info.index == 1 then engine:configure { max_batch_size = 2 } end
      end,
    })
    assert.is_nil(s)
    assert.equals("batch_too_large", code)
    assert.matches("batch_size 4 exceeds cap 2", msg)
    assert.same({ submitted = 1, replayed = 0, refused = 1 }, partial.envelopes)
    assert.equals("refused_cap_exceeded",
      assert(engine:envelope(campaign.envelope_id("spec-campaign", 2))).status)

    -- With the cap of 2 now, the rest goes out in chunks 3.. of 2.
    s = assert(campaign.run(engine, spec()))
    assert.equals(2, s.chunk_size)
    assert.same({ submitted = 3, replayed = 1, refused = 1 }, s.envelopes)
    assert.same({ total = 10, submitted = 6, replayed = 4 }, s.recipients)
    local per = messages_by_conversation(schema, "camp_v1")
    for id = 1, 10 do assert.equals(1, per[id], "conversation " .. id) end
    engine:close()
  end)

  it("formats a summary for people", function()
    local text = campaign.format {
      key = "k", template_id = "t", chunk_size = 25, chunks = 5,
      envelopes = { submitted = 3, replayed = 2, refused = 0 },
      recipients = { total = 108, submitted = 58, replayed = 50 },
    }
    assert.equals("campaign k (template t): 108 recipients in 5 envelopes of up to 25\n"
      .. "  envelopes:  3 submitted, 2 replayed, 0 refused\n"
      .. "  recipients: 58 submitted, 50 replayed", text)
  end)
end)
