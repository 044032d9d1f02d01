--- cairnloop.resty: the engine in OpenResty without blocking the worker.
--
--   thread_pool cairnloop threads=8;              # nginx.conf, main context
--   lua_worker_thread_vm_pool_size 16;            # >= concurrency (+ other users)
--   init_worker_by_lua_block {
--     require("cairnloop.resty").configure{ thread_pool = "cairnloop", concurrency = 8,
--       open = { database = "postgresql:///app", policy = { "policy.lua" } },
--       metrics = "cairnloop_metrics" }         -- a lua_shared_dict, optional
--   }
--   local resty = require "cairnloop.resty"       -- in a request
--   local res, code, msg = resty.trigger(42, { template_id = "welcome" })
--
-- Every engine call runs through ngx.run_worker_thread on the thread side
-- (cairnloop.resty_thread), which opens one engine per thread VM on first
-- use and keeps it: the request's coroutine yields while the thread waits
-- on PostgreSQL, so the worker keeps serving.  A semaphore sized to
-- `concurrency` (set it to the pool's `threads`) bounds the calls in
-- flight, so a call never meets "no available Lua vm" and at most
-- `concurrency` thread VMs, engines and connections exist per worker;
-- callers past it wait (yielding) up to `wait_timeout` seconds.
--
-- Values cross the thread boundary as plain data only: ids are numbers up
-- to 2^53 (or the decimal strings the LuaJIT module returns past it), and
-- results are the engine's plain tables.  Failures are the engine's
-- `nil, code, message`; a failure to open the thread's engine adds a
-- fourth value, true.  Misuse raises, as the engine's methods do.
--
-- Hooks cannot run in the worker: policy files run in each engine's own
-- Lua 5.4 (as always), log lines are carried back and written with
-- ngx.log (or `log(level, line)` if given), and metrics are counted by a
-- collector per thread VM whose rendering comes back with the calls that
-- changed it; it is stored in the `metrics` shared dict under
-- "<worker id>:<VM>" and M.metrics_text() sums every entry.  The sum is
-- exact for the engines alive; a restarted worker starts its entries again
-- from zero, as any restarted process does.
local M = {}

local THREAD_MODULE = "cairnloop.resty_thread"
-- A failed open is retried (by health()) at most once a second.
local REOPEN_INTERVAL = 1

local cfg        -- the configuration, once configure() ran
local sema       -- bounds the calls in flight to cfg.concurrency
local opened     -- a call of this worker found its engine open (and none failed to open since)
local failure    -- { code, message } of the last failed open in this worker
local warming    -- a background open is in flight
local last_warm = 0

-- Nothing here touches `ngx` or ngx.* modules when the module loads, so
-- that code which only shares a file with its callers (the example's
-- M.decode_object, fuzzed outside nginx) can still require it.
local LOG_LEVELS = {
  debug = "DEBUG",
  -- nginx's info level is full of per-connection chatter; the engine's info
  -- lines (policy loads, reconnections) are notices in nginx's terms.
  info = "NOTICE",
  warn = "WARN",
  error = "ERR",
}

local function default_log(level, line)
  ngx.log(ngx[LOG_LEVELS[level] or "ERR"], "cairnloop: ", line)
end

-- A deep copy of `v`, raising unless it is plain data (what crosses to a
-- thread VM): the check happens at configure time, not on the first call.
local function plain(v, path)
  local t = type(v)
  if t == "table" then
    local out = {}
    for k, x in pairs(v) do
      if type(k) ~= "string" and type(k) ~= "number" then
        error("cairnloop.resty: " .. path .. " has a key that is a " .. type(k), 3)
      end
      out[k] = plain(x, path .. "." .. tostring(k))
    end
    return out
  elseif t == "string" or t == "number" or t == "boolean" or t == "nil" then
    return v
  end
  error("cairnloop.resty: " .. path .. " is a " .. t .. "; only plain data reaches the engine thread"
    .. (path == "open.log" and " (log lines come back to configure's `log`)" or ""), 3)
end

local function publish(key, text)
  local shm = cfg.shm
  if not shm then return end
  local ok, err = shm:set(cfg.prefix .. key, text)
  if not ok then ngx.log(ngx.WARN, "cairnloop.resty: cannot publish metrics: ", err) end
end

-- Runs op on a thread.  Level: where a raised error points.
local function call(op, a, b)
  if cfg == nil then
    error("cairnloop.resty: call configure{...} in init_worker_by_lua first", 3)
  end
  local ok, err = sema:wait(cfg.wait_timeout)
  if not ok then
    return nil, "db_error", "cairnloop.resty: no engine thread became free within "
      .. cfg.wait_timeout .. " s (" .. tostring(err) .. ")"
  end
  -- pcall, so that the slot is given back whatever happens; LuaJIT yields
  -- across it.
  local tok, terr, outcome, res, code, msg, logs, text, key =
    pcall(ngx.run_worker_thread, cfg.thread_pool, THREAD_MODULE, "call", cfg.open, op, a, b)
  sema:post(1)
  if not tok or not terr then
    -- The thread could not run (a missing module, a value that is not
    -- plain data): a deployment error, not an engine outcome.
    error("cairnloop.resty: worker thread failed: " .. tostring(tok and outcome or terr), 3)
  end
  if logs then
    for i = 1, #logs, 2 do cfg.log(logs[i], logs[i + 1]) end
  end
  if text then publish(key, text) end
  if outcome == "raised" then error(res, 3) end
  if outcome == "open_failed" then
    opened, failure = false, { code, msg }
    return nil, code, "cannot open the engine: " .. tostring(msg), true
  end
  opened, failure = true, nil
  return res, code, msg
end

local function warm(premature)
  if premature then return end
  local ok, err = pcall(call, "ping")
  if not ok then ngx.log(ngx.ERR, "cairnloop.resty: warm-up failed: ", err) end
  warming = false
end

-- Opens an engine in the background (a timer), unless one is being opened.
local function start_warm()
  if warming then return end
  local ok, err = ngx.timer.at(0, warm)
  if ok then
    warming, last_warm = true, ngx.now()
  else
    ngx.log(ngx.WARN, "cairnloop.resty: cannot start the warm-up: ", err)
  end
end

--- Configures this worker; call it in init_worker_by_lua*.
-- opts.thread_pool: the thread_pool's name (default "cairnloop");
-- opts.concurrency: calls in flight per worker, the pool's `threads`
--   (default 8); lua_worker_thread_vm_pool_size must be at least this;
-- opts.open: cairnloop.open options, plain data only (no `log` function);
-- opts.log: function(level, line) for the engines' log lines (default
--   ngx.log);
-- opts.metrics: the name of a lua_shared_dict for the metrics (optional);
-- opts.wait_timeout: seconds a call waits for a free thread (default 30);
-- opts.warm: open one engine now, in the background (default true).
function M.configure(opts)
  if type(opts) ~= "table" then error("cairnloop.resty: configure expects a table", 2) end
  local c = {
    thread_pool = opts.thread_pool or "cairnloop",
    concurrency = opts.concurrency or 8,
    open = plain(opts.open or {}, "open"),
    log = opts.log or default_log,
    wait_timeout = opts.wait_timeout or 30,
  }
  if type(c.thread_pool) ~= "string" then error("cairnloop.resty: thread_pool must be a string", 2) end
  if type(c.concurrency) ~= "number" or c.concurrency < 1 or c.concurrency % 1 ~= 0 then
    error("cairnloop.resty: concurrency must be a positive integer", 2)
  end
  if type(c.log) ~= "function" then error("cairnloop.resty: log must be a function", 2) end
  if type(c.wait_timeout) ~= "number" or c.wait_timeout < 0 then
    error("cairnloop.resty: wait_timeout must be a number of seconds", 2)
  end
  if opts.metrics ~= nil then
    c.shm = ngx.shared[opts.metrics]
    if c.shm == nil then
      error("cairnloop.resty: no lua_shared_dict named '" .. tostring(opts.metrics) .. "'", 2)
    end
    -- A restarted worker starts again from zero: drop what its previous
    -- incarnation published.
    c.prefix = (ngx.worker.id() or 0) .. ":"
    for _, k in ipairs(c.shm:get_keys(0)) do
      if k:sub(1, #c.prefix) == c.prefix then c.shm:delete(k) end
    end
  end
  local s, err = require("ngx.semaphore").new(c.concurrency)
  if not s then error("cairnloop.resty: cannot create the semaphore: " .. tostring(err), 2) end
  cfg, sema = c, s
  opened, failure, warming = nil, nil, false
  if opts.warm ~= false then start_warm() end
end

--- Whether this worker has an engine, without waiting for anything:
-- true, or nil, code, message (db_error "the engine is not open yet" before
-- the first open finished).  When none is open it starts a background
-- open, at most once a second.  For health probes: no query, no wait.
function M.health()
  if cfg == nil then return nil, "db_error", "cairnloop.resty is not configured" end
  if opened then return true end
  if ngx.now() >= last_warm + REOPEN_INTERVAL then start_warm() end
  if failure then return nil, failure[1], "cannot open the engine: " .. tostring(failure[2]) end
  return nil, "db_error", "the engine is not open yet"
end

--- engine:trigger(id, opts) on a thread.
function M.trigger(id, opts) return call("trigger", id, opts) end
--- engine:bulk_trigger(ids, opts) on a thread.
function M.bulk_trigger(ids, opts) return call("bulk_trigger", ids, opts) end
--- engine:envelope(id) on a thread.
function M.envelope(id) return call("envelope", id) end
--- engine:envelopes(opts) on a thread.
function M.envelopes(opts) return call("envelopes", opts) end

-- As metrics.lua prints them: counts as integers, sums as floats.
local function metric_number(v)
  if v % 1 == 0 and v < 2 ^ 53 then return string.format("%d", v) end
  return string.format("%.9g", v)
end

--- The sum of every thread VM's rendering in the metrics dict, of every
-- worker, family by family: Prometheus text (version 0.0.4).
function M.metrics_text()
  local shm = cfg and cfg.shm
  if shm == nil then return "" end
  local families, names = {}, {}
  for _, key in ipairs(shm:get_keys(0)) do
    local fam
    for line in (shm:get(key) or ""):gmatch("[^\n]+") do
      local name, help = line:match("^# HELP (%S+) (.*)$")
      if name then
        fam = families[name]
        if not fam then
          fam = { help = help, samples = {}, series = {} }
          families[name] = fam
          names[#names + 1] = name
        end
      elseif line:find("^# TYPE ") then
        if fam then fam.type = line:match("^# TYPE %S+ (%S+)") end
      elseif fam then
        local series, value = line:match("^(.*) (%S+)$") -- label values hold no spaces
        value = tonumber(value)
        if series and value then
          if fam.samples[series] == nil then fam.series[#fam.series + 1] = series end
          fam.samples[series] = (fam.samples[series] or 0) + value
        end
      end
    end
  end
  table.sort(names)
  local out = {}
  for _, name in ipairs(names) do
    local fam = families[name]
    out[#out + 1] = "# HELP " .. name .. " " .. fam.help
    out[#out + 1] = "# TYPE " .. name .. " " .. (fam.type or "untyped")
    table.sort(fam.series)
    for _, series in ipairs(fam.series) do
      out[#out + 1] = series .. " " .. metric_number(fam.samples[series])
    end
  end
  out[#out + 1] = ""
  return table.concat(out, "\n")
end

return M
