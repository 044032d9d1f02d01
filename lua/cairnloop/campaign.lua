--- cairnloop.campaign: one body to a cohort of any size, as a series of
-- bulk envelopes no larger than the engine's cap, resumable after a crash.
--
--   local campaign = require "cairnloop.campaign"
--   local summary, code, msg = campaign.run(engine, {
--     key = "spring-recovery-2026",   -- required: names the campaign for good
--     template_id = "recovery_v1",    -- required
--     template = "Hi, {{product}} is back.",  -- rendered once with `vars`
--     vars = { product = "Sync" },    --   ({{name}} placeholders), or instead:
--     -- rendered_body = "Hi ...",   --   the body as is
--     cohort = { 1, 2, 3 },           -- conversation ids; or { sql = "SELECT id
--                                     -- FROM ... WHERE x = $1", params = { ... } },
--                                     -- read-only, its `id` column; or a function
--                                     --   returning them (e.g. from the host's SQL)
--     max_recipients = 5000,          -- required: a larger cohort is refused
--                                     --   before anything is written
--     chunk_size = 25,                -- default: engine:max_batch_size()
--     actor = "operator:7",           -- optional, as for bulk_trigger
--     schedule_in = 0,                -- optional, as for bulk_trigger
--     progress = nil,                 -- nil: a bar on stderr when it is a terminal;
--                                     --   false: none
--     on_chunk = function(info) end,  -- optional, after every envelope
--   })
--   print(campaign.format(summary))
--
-- The body is rendered once: one rendered_body goes into every envelope.
-- The cohort is sorted and cut into chunks; chunk i goes out as one
-- bulk_trigger whose envelope id is a UUID v5 of the campaign key and i.
-- Re-running the campaign (after a crash, or twice by mistake) first reads
-- the envelopes an earlier run stored under those ids, replays them through
-- bulk_trigger (nothing new is written: the engine answers `replayed`), and
-- sends only the recipients none of them covers, in new chunks.  So a
-- cohort that changed in between (a conversation closed, one added) still
-- resumes, and nobody gets the message twice.  A key is for one body: an
-- earlier envelope of the key with a different template or body is an
-- envelope_conflict, before anything is written.
--
-- Returns the summary, or nil, code, message[, summary]: the summary of
-- what was done before the failure, whenever the spec itself was valid.  Codes are the engine's; the campaign adds two refusals of
-- its own, both before writing anything: a cohort over max_recipients
-- (batch_too_large) and a chunk_size over the engine's cap
-- (invalid_argument).  The summary:
--   { key, campaign_id, template_id, chunk_size, chunks,
--     envelopes  = { submitted, replayed, refused },
--     recipients = { total, submitted, replayed },
--     envelope_ids = { ... } }          -- in chunk order
-- recipients.replayed counts the recipients of replayed envelopes.
--
-- Runs on Lua 5.4 and LuaJIT (SHA-1 uses the native operators or `bit`).
local M = {}

-- Every campaign id derives from this namespace: changing it would change
-- every envelope id, so it never changes.
M.NAMESPACE = "7b0c5cf4-5f0e-4a43-9c53-2a8e1f9d6e21"

local MAX_KEY_BYTES = 200

---------------------------------------------------------------------------
-- SHA-1 (FIPS 180-4) and UUID v5 (RFC 4122 section 4.3)
---------------------------------------------------------------------------

-- Lua 5.3+ has 64-bit integers and bitwise operators; LuaJIT has neither
-- but has `bit`.  The operator version is compiled from a string so that
-- LuaJIT never has to parse it.
local sha1_hex

if _VERSION ~= "Lua 5.1" then
  sha1_hex = assert(load([[
    local sunpack, spack, srep, sformat = string.unpack, string.pack, string.rep, string.format
    return function(msg)
      local h0, h1, h2, h3, h4 = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0
      local bits = #msg * 8
      msg = msg .. "\128" .. srep("\0", (55 - #msg) % 64) .. spack(">I8", bits)
      local w = {}
      for chunk = 1, #msg, 64 do
        for i = 0, 15 do w[i] = sunpack(">I4", msg, chunk + i * 4) end
        for i = 16, 79 do
          local v = w[i - 3] ~ w[i - 8] ~ w[i - 14] ~ w[i - 16]
          w[i] = ((v << 1) | (v >> 31)) & 0xFFFFFFFF
        end
        local a, b, c, d, e = h0, h1, h2, h3, h4
        for i = 0, 79 do
          local f, k
          if i < 20 then f, k = (b & c) | (~b & d), 0x5A827999
          elseif i < 40 then f, k = b ~ c ~ d, 0x6ED9EBA1
          elseif i < 60 then f, k = (b & c) | (b & d) | (c & d), 0x8F1BBCDC
          else f, k = b ~ c ~ d, 0xCA62C1D6 end
          local t = ((((a << 5) | (a >> 27)) & 0xFFFFFFFF) + f + e + k + w[i]) & 0xFFFFFFFF
          a, b, c, d, e = t, a, ((b << 30) | (b >> 2)) & 0xFFFFFFFF, c, d
        end
        h0 = (h0 + a) & 0xFFFFFFFF
        h1 = (h1 + b) & 0xFFFFFFFF
        h2 = (h2 + c) & 0xFFFFFFFF
        h3 = (h3 + d) & 0xFFFFFFFF
        h4 = (h4 + e) & 0xFFFFFFFF
      end
      return sformat("%08x%08x%08x%08x%08x", h0, h1, h2, h3, h4)
    end]], "=cairnloop.campaign.sha1"))()
else
  -- LuaJIT: `bit` works on signed 32-bit values; tobit wraps a sum of a few
  -- of them (exact in a double) back into that range.
  local bit = require "bit"
  local band, bor, bxor, bnot, rol = bit.band, bit.bor, bit.bxor, bit.bnot, bit.rol
  local lshift, tobit, tohex = bit.lshift, bit.tobit, bit.tohex
  local floor, char, byte = math.floor, string.char, string.byte
  sha1_hex = function(msg)
    local h0, h1, h2, h3, h4 = tobit(0x67452301), tobit(0xEFCDAB89), tobit(0x98BADCFE),
      tobit(0x10325476), tobit(0xC3D2E1F0)
    local bits, len = #msg * 8, {}
    for i = 7, 0, -1 do len[#len + 1] = char(floor(bits / 2 ^ (i * 8)) % 256) end
    msg = msg .. "\128" .. string.rep("\0", (55 - #msg) % 64) .. table.concat(len)
    local w = {}
    for chunk = 1, #msg, 64 do
      for i = 0, 15 do
        local b1, b2, b3, b4 = byte(msg, chunk + i * 4, chunk + i * 4 + 3)
        w[i] = bor(lshift(b1, 24), lshift(b2, 16), lshift(b3, 8), b4)
      end
      for i = 16, 79 do w[i] = rol(bxor(w[i - 3], w[i - 8], w[i - 14], w[i - 16]), 1) end
      local a, b, c, d, e = h0, h1, h2, h3, h4
      for i = 0, 79 do
        local f, k
        if i < 20 then f, k = bor(band(b, c), band(bnot(b), d)), 0x5A827999
        elseif i < 40 then f, k = bxor(b, c, d), 0x6ED9EBA1
        elseif i < 60 then f, k = bor(band(b, c), band(b, d), band(c, d)), 0x8F1BBCDC
        else f, k = bxor(b, c, d), 0xCA62C1D6 end
        local t = tobit(rol(a, 5) + f + e + k + w[i])
        a, b, c, d, e = t, a, rol(b, 30), c, d
      end
      h0, h1, h2 = tobit(h0 + a), tobit(h1 + b), tobit(h2 + c)
      h3, h4 = tobit(h3 + d), tobit(h4 + e)
    end
    return tohex(h0) .. tohex(h1) .. tohex(h2) .. tohex(h3) .. tohex(h4)
  end
end

--- The SHA-1 digest of a string, as 40 lowercase hex digits.
M.sha1 = sha1_hex

local UUID_PATTERN = "^" .. ("%x"):rep(8) .. "%-" .. ("%x"):rep(4) .. "%-" .. ("%x"):rep(4)
  .. "%-" .. ("%x"):rep(4) .. "%-" .. ("%x"):rep(12) .. "$"

local function uuid_bytes(uuid)
  if type(uuid) ~= "string" or not uuid:find(UUID_PATTERN) then
    error("not a UUID: " .. tostring(uuid), 3)
  end
  return (uuid:gsub("-", ""):gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

--- The name-based (SHA-1) UUID of `name` in namespace `ns` (RFC 4122 4.3).
function M.uuid_v5(ns, name)
  local h = sha1_hex(uuid_bytes(ns) .. name)
  -- Version 5 in the high nibble of byte 6, variant 10xx in byte 8.
  local variant = string.format("%x", tonumber(h:sub(17, 17), 16) % 4 + 8)
  return h:sub(1, 8) .. "-" .. h:sub(9, 12) .. "-5" .. h:sub(14, 16) .. "-"
    .. variant .. h:sub(18, 20) .. "-" .. h:sub(21, 32)
end

--- The id of the campaign named `key`: the namespace of its envelope ids.
function M.campaign_id(key)
  return M.uuid_v5(M.NAMESPACE, key)
end

--- The envelope id of chunk `index` (1-based) of the campaign `key`.
function M.envelope_id(key, index)
  return M.uuid_v5(M.campaign_id(key), "chunk:" .. string.format("%d", index))
end

---------------------------------------------------------------------------
-- Templates
---------------------------------------------------------------------------

--- Renders `template` with `vars`: each {{name}} (spaces allowed inside the
-- braces) becomes vars[name], a string or a number.  Returns the text, or
-- nil, "invalid_argument", msg for a placeholder without a value or a
-- malformed one ("{{" must always open a placeholder).
function M.render(template, vars)
  if type(template) ~= "string" then
    return nil, "invalid_argument", "template must be a string"
  end
  vars = vars or {}
  if type(vars) ~= "table" then return nil, "invalid_argument", "vars must be a table" end
  local out, pos = {}, 1
  while true do
    local open = template:find("{{", pos, true)
    if not open then break end
    local close = template:find("}}", open + 2, true)
    local name = close and template:sub(open + 2, close - 1):match("^%s*([%a_][%w_]*)%s*$")
    if not name then
      return nil, "invalid_argument",
        string.format("malformed placeholder at byte %d of the template", open)
    end
    local v = vars[name]
    if type(v) == "number" then
      v = (v % 1 == 0 and v > -2 ^ 53 and v < 2 ^ 53) and string.format("%d", v) or tostring(v)
    elseif type(v) ~= "string" then
      return nil, "invalid_argument", "template variable '" .. name .. "' has no value"
        .. (v ~= nil and " (a " .. type(v) .. " is not text)" or "")
    end
    out[#out + 1] = template:sub(pos, open - 1)
    out[#out + 1] = v
    pos = close + 2
  end
  if template:find("}}", pos, true) then
    return nil, "invalid_argument", "unmatched }} in the template"
  end
  out[#out + 1] = template:sub(pos)
  return table.concat(out)
end

---------------------------------------------------------------------------
-- Progress
---------------------------------------------------------------------------

--- Whether `stream` (io.stdout or io.stderr) is a terminal.
function M.isatty(stream)
  if io == nil or stream == nil then return false end
  local ok, term = pcall(require, "term")
  if ok and type(term) == "table" and type(term.isatty) == "function" then
    local ok2, tty = pcall(term.isatty, stream)
    if ok2 then return tty and true or false end
  end
  -- Without lua-term, the shell's test: the child inherits our descriptors.
  local fd = (stream == io.stdout and 1) or (stream == io.stderr and 2) or nil
  if not fd or os == nil or type(os.execute) ~= "function" then return false end
  local r = os.execute("test -t " .. fd)
  return r == true or r == 0
end

--- Whether escape sequences (colours, erasing a line) may be written to
-- `stream`: it is a terminal, $TERM names one that is not "dumb", and
-- $NO_COLOR is unset or empty (the no-color.org convention).  A terminal
-- without a TERM (a bare pty, a service manager's console) is taken as
-- dumb, as ncurses takes it.
function M.ansi(stream)
  local getenv = os ~= nil and os.getenv or nil
  if getenv == nil then return false end
  local term = getenv("TERM")
  if term == nil or term == "" or term == "dumb" then return false end
  local no_color = getenv("NO_COLOR")
  if no_color ~= nil and no_color ~= "" then return false end
  return M.isatty(stream)
end

local BAR_WIDTH = 30

--- A progress bar on `opts.stream` (default io.stderr), drawn only when
-- it is a terminal, or always with opts.force, or never with opts.enabled
-- = false: bar:update(done, note), bar:finish(note).  Each update redraws
-- the line in place (a carriage return, then the bar); finish ends it with
-- a newline.  Leftovers of a longer earlier line are erased with "\27[K"
-- where M.ansi(stream) allows escape sequences (or with opts.force, which
-- draws as on a capable terminal), else with trailing spaces: a dumb
-- terminal, or one under NO_COLOR, sees no escape sequence.
function M.progress(label, total, opts)
  opts = opts or {}
  local stream = opts.stream or (io and io.stderr)
  local on = opts.enabled ~= false and stream ~= nil and (opts.force or M.isatty(stream))
  local bar = { enabled = on and true or false }
  local drawn = false
  local ansi = on and (opts.force or M.ansi(stream))
  local last = 0 -- the length of the line drawn last, for the plain redraw

  local function draw(done, note)
    local filled = total > 0 and math.floor(BAR_WIDTH * math.min(done, total) / total) or BAR_WIDTH
    local line = string.format("%s [%s%s] %d/%d%s", label, string.rep("#", filled),
      string.rep("-", BAR_WIDTH - filled), done, total, note and ("  " .. note) or "")
    if ansi then
      stream:write("\r", line, "\27[K")
    else
      stream:write("\r", line, string.rep(" ", last - #line))
      last = #line
    end
    if stream.flush then stream:flush() end
    drawn = true
  end

  function bar:update(done, note)
    if on then draw(done, note) end
  end

  function bar:finish(note)
    if on and (drawn or note) then
      if note then draw(total, note) end
      stream:write("\n")
      if stream.flush then stream:flush() end
    end
  end

  return bar
end

---------------------------------------------------------------------------
-- The campaign
---------------------------------------------------------------------------

local OPTIONS = {
  key = true, template_id = true, template = true, vars = true, rendered_body = true,
  cohort = true, max_recipients = true, chunk_size = true, actor = true, schedule_in = true,
  progress = true, on_chunk = true,
}

local function is_int(v, min)
  return type(v) == "number" and v % 1 == 0 and v >= min and v < 2 ^ 53
end

-- A conversation id as an integer, or nil: any Lua 5.4 integer (ids are
-- bigint), or a number without a fraction, exact up to 2^53 (LuaJIT).
local tointeger = math.tointeger
local function to_id(v)
  if type(v) ~= "number" then return nil end
  if tointeger then v = tointeger(v) elseif not is_int(v, 1) then return nil end
  return v and v >= 1 and v or nil
end

local function invalid(msg) return nil, "invalid_argument", msg end

-- Checks the spec and renders the body.  Returns body | nil, code, msg.
local function check_spec(spec)
  for k in pairs(spec) do
    if not OPTIONS[k] then return invalid("unknown option '" .. tostring(k) .. "'") end
  end
  if type(spec.key) ~= "string" or spec.key == "" or #spec.key > MAX_KEY_BYTES then
    return invalid("key must be a non-empty string of at most " .. MAX_KEY_BYTES .. " bytes")
  end
  if type(spec.template_id) ~= "string" or spec.template_id == "" then
    return invalid("template_id must be a non-empty string")
  end
  if not is_int(spec.max_recipients, 1) then
    return invalid("max_recipients must be a positive integer")
  end
  if spec.chunk_size ~= nil and not is_int(spec.chunk_size, 1) then
    return invalid("chunk_size must be a positive integer")
  end
  if spec.actor ~= nil and type(spec.actor) ~= "string" then
    return invalid("actor must be a string")
  end
  if spec.schedule_in ~= nil and not is_int(spec.schedule_in, 0) then
    return invalid("schedule_in must be an integer >= 0")
  end
  if spec.progress ~= nil and type(spec.progress) ~= "boolean" then
    return invalid("progress must be a boolean")
  end
  if spec.on_chunk ~= nil and type(spec.on_chunk) ~= "function" then
    return invalid("on_chunk must be a function")
  end
  local c = spec.cohort
  if type(c) ~= "table" and type(c) ~= "function" then
    return invalid("cohort must be a list of conversation ids, { sql = ... } or a function")
  end
  if type(c) == "table" and c.sql ~= nil then
    if type(c.sql) ~= "string" then return invalid("cohort.sql must be a string") end
    if c.params ~= nil and type(c.params) ~= "table" then
      return invalid("cohort.params must be a list")
    end
  end
  if (spec.template == nil) == (spec.rendered_body == nil) then
    return invalid("give exactly one of template (with vars) and rendered_body")
  end
  if spec.rendered_body ~= nil then
    if type(spec.rendered_body) ~= "string" then return invalid("rendered_body must be a string") end
    if spec.vars ~= nil then return invalid("vars go with template, not rendered_body") end
    return spec.rendered_body
  end
  return M.render(spec.template, spec.vars)
end

local unpack = table.unpack or unpack -- Lua 5.4 / LuaJIT

-- The `id` column of a read-only query over the database (engine:query).
local function query_cohort(engine, q)
  if type(engine.query) ~= "function" then
    return invalid("this engine cannot run a cohort query (no engine:query)")
  end
  local params = q.params or {}
  local rows, code, msg = engine:query(q.sql, unpack(params, 1, params.n or #params))
  if not rows then return nil, code, msg end
  local ids = {}
  for i, row in ipairs(rows) do
    if row.id == nil then
      return invalid(string.format("cohort query row %d has no id column", i))
    end
    ids[i] = row.id
  end
  return ids
end

-- The cohort as a sorted list of distinct positive integers.
-- Returns ids | nil, code, msg.
local function load_cohort(engine, spec)
  local list, code, msg = spec.cohort, nil, nil
  if type(list) == "table" and list.sql ~= nil then
    list, code, msg = query_cohort(engine, list)
    if list == nil then return nil, code, msg end
  elseif type(list) == "function" then
    list, code, msg = list()
    if list == nil then
      return nil, code or "invalid_argument", msg or "the cohort function returned nothing"
    end
    if type(list) ~= "table" then return invalid("the cohort function must return a list") end
  end
  local ids, n = {}, #list
  for k in pairs(list) do
    if not is_int(k, 1) or k > n then return invalid("cohort must be a list without holes") end
  end
  for i = 1, n do
    local id = to_id(list[i])
    if not id then
      return invalid(string.format("cohort entry %d is not a positive integer id (%s)", i,
        tostring(list[i])))
    end
    ids[i] = id
  end
  if n == 0 then return invalid("cohort is empty") end
  table.sort(ids)
  for i = 2, n do
    if ids[i] == ids[i - 1] then
      return invalid(string.format("duplicate conversation id %d in cohort", ids[i]))
    end
  end
  return ids
end

local function new_summary(spec)
  return {
    key = spec.key,
    campaign_id = M.campaign_id(spec.key),
    template_id = spec.template_id,
    chunk_size = nil,
    chunks = 0,
    envelopes = { submitted = 0, replayed = 0, refused = 0 },
    recipients = { total = 0, submitted = 0, replayed = 0 },
    envelope_ids = {},
  }
end

-- The envelopes an earlier run stored under the campaign's ids, in chunk
-- order, up to the first id with none.  Returns list | nil, code, msg.
local function stored_chunks(engine, spec, body)
  local found, i = {}, 1
  while true do
    local id = M.envelope_id(spec.key, i)
    local env, code, msg = engine:envelope(id)
    if env == nil then
      if code then return nil, code, msg end
      return found
    end
    if env.template_id ~= spec.template_id or env.rendered_body ~= body then
      return nil, "envelope_conflict", string.format(
        "campaign %q chunk %d (envelope %s) was sent with a different template or body;"
        .. " a campaign key is for one body", spec.key, i, id)
    end
    found[i] = env
    i = i + 1
  end
end

--- Runs the campaign `spec` (see the top of this file) on `engine`.
-- Returns summary | nil, code, msg, summary.  Raises on misuse (spec not a
-- table, engine without bulk_trigger); errors raised by the cohort function
-- or on_chunk propagate.
function M.run(engine, spec)
  if type(spec) ~= "table" then error("campaign.run: spec must be a table", 2) end
  local is_engine = pcall(function()
    assert(engine.bulk_trigger and engine.envelope)
  end)
  if not is_engine then error("campaign.run: engine must be a cairnloop engine", 2) end

  local body, code, msg = check_spec(spec)
  if not body then return nil, code, msg end
  local summary = new_summary(spec)

  local cap = engine.max_batch_size and engine:max_batch_size() or nil
  local size = spec.chunk_size or cap
  if size == nil then
    return nil, "invalid_argument", "chunk_size is required (this engine cannot tell its cap)"
  end
  if cap and size > cap then
    return nil, "invalid_argument",
      string.format("chunk_size %d exceeds the engine's cap %d", size, cap), summary
  end
  summary.chunk_size = size

  local ids
  ids, code, msg = load_cohort(engine, spec)
  if not ids then return nil, code, msg, summary end
  summary.recipients.total = #ids
  if #ids > spec.max_recipients then
    return nil, "batch_too_large", string.format(
      "cohort of %d recipients exceeds max_recipients %d", #ids, spec.max_recipients), summary
  end

  -- Resume: the earlier run's envelopes replay as they were stored; what
  -- none of them covers goes out in new chunks after them.
  local stored
  stored, code, msg = stored_chunks(engine, spec, body)
  if not stored then return nil, code, msg, summary end
  local plan, covered = {}, {}
  for i, env in ipairs(stored) do
    plan[i] = { index = i, id = env.id, ids = env.recipient_conversation_ids, status = env.status }
    if env.status == "submitted" then
      for _, cid in ipairs(env.recipient_conversation_ids) do covered[cid] = true end
    end
  end
  local chunk
  for _, cid in ipairs(ids) do
    if not covered[cid] then
      if chunk == nil or #chunk.ids == size then
        local index = #plan + 1
        chunk = { index = index, id = M.envelope_id(spec.key, index), ids = {} }
        plan[index] = chunk
      end
      chunk.ids[#chunk.ids + 1] = cid
    end
  end
  summary.chunks = #plan

  local bar = M.progress("envelopes", #plan, { enabled = spec.progress })
  local opts = {
    template_id = spec.template_id, rendered_body = body, actor = spec.actor,
    schedule_in = spec.schedule_in,
  }
  local e, r = summary.envelopes, summary.recipients
  for i, c in ipairs(plan) do
    summary.envelope_ids[i] = c.id
    local outcome
    if c.status ~= nil and c.status ~= "submitted" then
      -- Refused when it was sent; its recipients went into later chunks.
      e.refused = e.refused + 1
      outcome = "refused"
    else
      opts.envelope_id = c.id
      local res
      res, code, msg = engine:bulk_trigger(c.ids, opts)
      if not res then
        if code == "batch_too_large" then e.refused = e.refused + 1 end
        bar:finish()
        return nil, code, string.format("chunk %d (envelope %s): %s", c.index, c.id, msg), summary
      end
      if res.replayed then
        e.replayed = e.replayed + 1
        r.replayed = r.replayed + #c.ids
        outcome = "replayed"
      else
        e.submitted = e.submitted + 1
        r.submitted = r.submitted + #c.ids
        outcome = "submitted"
      end
    end
    bar:update(i, string.format("%d recipients submitted, %d replayed", r.submitted, r.replayed))
    if spec.on_chunk then
      -- The caller's error propagates, after the bar's line is ended.
      local ok, err = pcall(spec.on_chunk, { index = c.index, chunks = #plan, envelope_id = c.id,
        count = #c.ids, outcome = outcome, summary = summary })
      if not ok then
        bar:finish()
        error(err, 0)
      end
    end
  end
  bar:finish()
  return summary
end

--- The summary as text for people, one line per fact.
function M.format(summary)
  local e, r = summary.envelopes, summary.recipients
  return table.concat({
    string.format("campaign %s (template %s): %d recipients in %d envelopes of up to %s",
      summary.key, summary.template_id, r.total, summary.chunks, tostring(summary.chunk_size)),
    string.format("  envelopes:  %d submitted, %d replayed, %d refused", e.submitted, e.replayed,
      e.refused),
    string.format("  recipients: %d submitted, %d replayed", r.submitted, r.replayed),
  }, "\n")
end

return M
