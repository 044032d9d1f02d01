--- cairnloop.metrics: counts the bounded-metrics telemetry events and
-- renders them in the Prometheus text exposition format (version 0.0.4).
--
--   cairnloop --policy lua/cairnloop/metrics.lua ...      as a policy file
--   local metrics = require("cairnloop.metrics").install(engine)   from the host
--   ... engine:trigger(...) ...
--   io.write(metrics:render())
--
-- Durations are histograms in seconds (buckets M.BUCKETS, or opts.buckets
-- of M.new), from the events' `duration` measurement in ns; an event that
-- carries none is counted but not timed.  Floats print at full precision
-- (the shortest decimal that reads back as the same number).
--
-- Only the bounded lane is counted, and label values are only the enum
-- values API.md lists (anything else is counted as "other"), so the number
-- of series stays fixed whatever the traffic: no ids, actors or templates.
local cl = require "cairnloop"

local M = {}

-- The bounded-metrics lane of API.md: every event the engine emits
-- (cl.EVENTS, in its order) but the trace lane.
M.EVENTS = {}
for _, name in ipairs(cl.EVENTS) do
  if cl.EVENTS[name][3] ~= "trace" then M.EVENTS[#M.EVENTS + 1] = name end
end

local function set(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end

-- The values a label may take; anything else becomes "other".
local ENUMS = {
  outcome = set { "triggered", "failed", "duplicate", "exception", "submitted",
    "refused_cap_exceeded", "refused_cap_exceeded_audit_failed", "sent", "no_op", "cancelled" },
  kind = set { "hook_error", "db_error" },
  reason = set { "notifier_ok", "notifier_returned_error", "no_notifier_configured",
    "http_status", "http_timeout", "http_error", "not_allowed" },
}

-- Metric families: name, type, help.
local FAMILIES = {
  trigger_started = { "cairnloop_outbound_trigger_started_total", "counter",
    "Outbound trigger spans started." },
  trigger = { "cairnloop_outbound_trigger_total", "counter",
    "Outbound trigger spans finished, by outcome." },
  trigger_duration = { "cairnloop_outbound_trigger_duration_seconds", "histogram",
    "Duration of finished outbound trigger spans." },
  trigger_exceptions = { "cairnloop_outbound_trigger_exceptions_total", "counter",
    "Outbound trigger spans ended by an exception, by kind." },
  bulk_started = { "cairnloop_outbound_bulk_started_total", "counter",
    "Bulk trigger spans started." },
  bulk = { "cairnloop_outbound_bulk_total", "counter",
    "Bulk trigger spans finished, by outcome." },
  bulk_recipients = { "cairnloop_outbound_bulk_recipients_total", "counter",
    "Recipients of finished bulk trigger spans, by outcome." },
  bulk_duration = { "cairnloop_outbound_bulk_duration_seconds", "histogram",
    "Duration of finished bulk trigger spans." },
  bulk_exceptions = { "cairnloop_outbound_bulk_exceptions_total", "counter",
    "Bulk trigger spans ended by an exception, by kind." },
  bulk_refused = { "cairnloop_outbound_bulk_refused_total", "counter",
    "Bulk triggers refused over the cap, by outcome." },
  bulk_refused_recipients = { "cairnloop_outbound_bulk_refused_recipients_total", "counter",
    "Recipients of refused bulk triggers, by outcome." },
  delivery = { "cairnloop_outbound_delivery_total", "counter",
    "Delivery attempts, by outcome and reason." },
  delivery_duration = { "cairnloop_outbound_delivery_duration_seconds", "histogram",
    "Duration of delivery attempts that carry a duration measurement, by outcome." },
  delivery_cancelled = { "cairnloop_outbound_delivery_cancelled_total", "counter",
    "Deliveries cancelled by an operator before they started." },
}

-- What each event adds: family, label names, and the value ("one": 1,
-- "count": metadata.count, "measured": measurements.count, "duration":
-- measurements.duration in ns).
local RULES = {
  ["cairnloop.outbound.triggered.start"] = { { "trigger_started", {}, "one" } },
  ["cairnloop.outbound.triggered.stop"] = {
    { "trigger", { "outcome" }, "one" }, { "trigger_duration", { "outcome" }, "duration" } },
  ["cairnloop.outbound.triggered.exception"] = { { "trigger_exceptions", { "kind" }, "one" } },
  ["cairnloop.outbound.bulk.triggered.start"] = { { "bulk_started", {}, "one" } },
  ["cairnloop.outbound.bulk.triggered.stop"] = {
    { "bulk", { "outcome" }, "one" }, { "bulk_recipients", { "outcome" }, "count" },
    { "bulk_duration", { "outcome" }, "duration" } },
  ["cairnloop.outbound.bulk.triggered.exception"] = { { "bulk_exceptions", { "kind" }, "one" } },
  ["cairnloop.outbound.bulk.triggered"] = {
    { "bulk_refused", { "outcome" }, "one" },
    { "bulk_refused_recipients", { "outcome" }, "count" } },
  ["cairnloop.outbound.delivery.sent"] = {
    { "delivery", { "outcome", "reason" }, "one" }, { "delivery_duration", { "outcome" }, "duration" } },
  ["cairnloop.outbound.delivery.failed"] = {
    { "delivery", { "outcome", "reason" }, "one" }, { "delivery_duration", { "outcome" }, "duration" } },
  ["cairnloop.outbound.delivery.no_op"] = {
    { "delivery", { "outcome", "reason" }, "one" }, { "delivery_duration", { "outcome" }, "duration" } },
  ["cairnloop.outbound.delivery.cancelled"] = { { "delivery_cancelled", { "outcome" }, "measured" } },
}

local function escape(v)
  return (v:gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end

-- Label values are enums, so the label strings are few: each is built
-- once and looked up after that (a handler runs for every recipient).
local label_cache = {}

local function labels_of(names, metadata)
  local key
  for i = 1, #names do
    local v = metadata[names[i]]
    if not ENUMS[names[i]][v] then v = "other" end
    key = key and key .. "\0" .. v or v
  end
  local by_names = label_cache[names]
  if not by_names then
    by_names = {}
    label_cache[names] = by_names
  end
  local s = by_names[key or ""]
  if s then return s end
  local parts = {}
  for i, name in ipairs(names) do
    local v = metadata[name]
    if not ENUMS[name][v] then v = "other" end
    parts[i] = name .. '="' .. escape(v) .. '"'
  end
  s = table.concat(parts, ",")
  by_names[key or ""] = s
  return s
end

-- The rules of an event, by its name list; the engine hands the same
-- list for the same event, so most lookups skip the concatenation.
local rules_cache = setmetatable({}, { __mode = "k" })

local function rules_of(event)
  local rules = rules_cache[event]
  if rules == nil then
    rules = RULES[table.concat(event, ".")] or false
    rules_cache[event] = rules
  end
  return rules
end

-- Upper bounds of the duration buckets, in seconds: from a sub-millisecond
-- transaction to a span stuck behind a lock.  +Inf is implied.
M.BUCKETS = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }

-- Counts print as integers, other numbers as the shortest decimal that
-- reads back as the same double (%.17g always would print 0.1 as
-- 0.10000000000000001; %g keeps only 6 digits).  No math.type: LuaJIT too.
local function number(v)
  if v % 1 == 0 and v < 2 ^ 53 and v > -2 ^ 53 then return string.format("%d", v) end
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  for prec = 1, 17 do
    local s = string.format("%." .. prec .. "g", v)
    if tonumber(s) == v then return s end
  end
  return string.format("%.17g", v)
end
M.number = number

--- A new collector: { events, handler, render, reset }.
-- `handler` is a plain function (no self) to give to attach_many.
-- opts.buckets: the histograms' upper bounds in seconds, ascending
-- (default M.BUCKETS).
function M.new(opts)
  local buckets = opts and opts.buckets or M.BUCKETS
  for i = 1, #buckets do
    assert(type(buckets[i]) == "number" and (i == 1 or buckets[i] > buckets[i - 1]),
      "metrics: buckets must be ascending numbers")
  end
  local nb = #buckets
  -- The "le" label values, printed once.
  local le = {}
  for i = 1, nb do le[i] = number(buckets[i]) end
  le[nb + 1] = "+Inf"
  -- family key -> label string -> value (counter) or
  -- { sum, count, per-bucket counts (not cumulative; nb + 1 is +Inf) }
  local series = {}
  local c = { events = M.EVENTS }

  -- One observation of `secs` in a histogram series.
  local function observe(fam, labels, secs)
    local s = fam[labels]
    if not s then
      s = { sum = 0.0, count = 0, buckets = {} }
      for i = 1, nb + 1 do s.buckets[i] = 0 end
      fam[labels] = s
    end
    local i = 1
    while i <= nb and secs > buckets[i] do i = i + 1 end
    s.buckets[i] = s.buckets[i] + 1
    s.sum = s.sum + secs
    s.count = s.count + 1
  end

  function c.handler(event, measurements, metadata)
    local rules = rules_of(event)
    if not rules then return end
    local ns = measurements.duration
    for _, rule in ipairs(rules) do
      local family, kind = rule[1], rule[3]
      -- An untimed event adds no observation, and no empty family.
      if kind ~= "duration" or type(ns) == "number" then
        local labels = labels_of(rule[2], metadata)
        local fam = series[family]
        if not fam then
          fam = {}
          series[family] = fam
        end
        if kind == "duration" then
          observe(fam, labels, ns / 1e9)
        else
          local add = kind == "count" and (metadata.count or 0)
            or kind == "measured" and (measurements.count or 0) or 1
          fam[labels] = (fam[labels] or 0) + add
        end
      end
    end
  end

  --- The exposition text: HELP and TYPE per family, series sorted.
  function c.render()
    local keys, out = {}, {}
    for key in pairs(series) do keys[#keys + 1] = key end
    table.sort(keys, function(a, b) return FAMILIES[a][1] < FAMILIES[b][1] end)
    for _, key in ipairs(keys) do
      local name, kind, help = FAMILIES[key][1], FAMILIES[key][2], FAMILIES[key][3]
      out[#out + 1] = "# HELP " .. name .. " " .. help
      out[#out + 1] = "# TYPE " .. name .. " " .. kind
      local labelsets = {}
      for labels in pairs(series[key]) do labelsets[#labelsets + 1] = labels end
      table.sort(labelsets)
      for _, labels in ipairs(labelsets) do
        local v = series[key][labels]
        local braces = labels ~= "" and "{" .. labels .. "}" or ""
        if kind == "histogram" then
          local prefix = name .. "_bucket{" .. (labels ~= "" and labels .. "," or "") .. 'le="'
          local cum = 0
          for i = 1, nb + 1 do
            cum = cum + v.buckets[i]
            out[#out + 1] = prefix .. le[i] .. '"} ' .. number(cum)
          end
          out[#out + 1] = name .. "_sum" .. braces .. " " .. number(v.sum)
          out[#out + 1] = name .. "_count" .. braces .. " " .. number(v.count)
        else
          out[#out + 1] = name .. braces .. " " .. number(v)
        end
      end
    end
    out[#out + 1] = ""
    return table.concat(out, "\n")
  end

  function c.reset() series = {} end

  -- The functions ignore their arguments, so c:render() works as c.render().
  return c
end

--- Attaches a new collector to `target` (the policy API or a host engine)
-- under `opts.id` (default "cairnloop.metrics") and returns it.
function M.install(target, opts)
  opts = opts or {}
  local c = M.new()
  local id = opts.id or "cairnloop.metrics"
  local ok, code, msg
  if type(target) == "userdata" then
    ok, code, msg = target:attach_many(id, M.EVENTS, c.handler)
  else
    ok, code, msg = target.attach_many(id, M.EVENTS, c.handler)
  end
  if not ok then error("metrics: cannot attach: " .. tostring(code) .. ": " .. tostring(msg), 2) end
  return c
end

-- Loaded as a --policy file (no module name): install into the policy
-- state, whose cairnloop is the registration API (the host module has no
-- attach_many).
if ... == nil and type(cl.attach_many) == "function" then M.install(cl) end

return M
