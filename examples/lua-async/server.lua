-- server.lua - a Lua server loop (luv, the libuv binding) that never waits
-- for the database: the asynchronous engine's descriptor is one more thing
-- the loop watches.
--
--   lua5.4 examples/lua-async/server.lua TEMPLATE ID...
--
-- Migrates the database named by CAIRNLOOP_DATABASE_URL (schema
-- CAIRNLOOP_SCHEMA, default "cairnloop"), triggers TEMPLATE for each
-- conversation ID, delivers what is due, and prints every outcome.  Beside
-- it a 60 Hz timer stands for the game's tick; it keeps ticking while the
-- engine works, and the longest gap between two ticks is printed at the
-- end.  Exits 0 when every operation succeeded.
local uv = require "luv"
local cairnloop = require "cairnloop"

local unpack = table.unpack or unpack -- Lua 5.4 or LuaJIT

local template = arg[1]
if not template or not arg[2] then
  io.stderr:write("usage: server.lua TEMPLATE ID...\n")
  os.exit(2)
end

-- ---- the adapter: the engine's completions in the luv loop ----------

--- Watches `a`'s descriptor: when it is readable, a:poll() runs the ready
-- callbacks on this thread.  Returns the handle; close it (detach) before
-- a:close(), since the descriptor belongs to the engine.
local function attach(a)
  local handle = assert(uv.new_poll(a:fd()))
  handle:start("r", function(err)
    assert(not err, err)
    a:poll()
  end)
  return handle
end

local function detach(handle)
  handle:stop()
  handle:close()
end

-- ---- the host -------------------------------------------------------

local a, code, msg = cairnloop.open_async {
  schema = os.getenv("CAIRNLOOP_SCHEMA"),
  -- Engine log lines reach this function on the loop's thread, from poll().
  log = function(level, line) print(("log %s: %s"):format(level, line)) end,
}
if not a then
  io.stderr:write(("server.lua: %s: %s\n"):format(code, msg))
  os.exit(1)
end

local failed, outstanding = 0, 0
local handle = attach(a)

--- Submits one operation; `name` labels its outcome.  A refused
-- submission (queue full) gets no callback: it is reported here.
local function submit(name, method, ...)
  local args = { ... }
  local n = select("#", ...)
  args[n + 1] = function(res, err_code, err_msg)
    outstanding = outstanding - 1
    if res == nil then
      failed = failed + 1
      print(("%s: %s: %s"):format(name, err_code, err_msg))
    elseif name:match("^trigger") then
      print(("%s: message %s, job %s%s"):format(name, res.message.id, res.delivery_job.id,
        res.duplicate and " (duplicate)" or ""))
    elseif name == "work" then
      print(("work: sent %d, no_op %d, failed %d"):format(res.sent, res.no_op, res.failed))
    else
      print(name .. ": ok")
    end
  end
  local ok, sub_code, sub_msg = a[method](a, unpack(args, 1, n + 1))
  if ok then
    outstanding = outstanding + 1
  else
    failed = failed + 1
    print(("submit %s: %s: %s"):format(name, sub_code, sub_msg))
  end
end

-- Operations run in submission order: the triggers after the migration,
-- the delivery after the triggers.
submit("migrate", "migrate")
for i = 2, #arg do
  local id = math.tointeger and math.tointeger(tonumber(arg[i])) or tonumber(arg[i])
  submit("trigger " .. arg[i], "trigger", id, { template_id = template })
end
submit("work", "work", { limit = 100, concurrency = 4 })

-- The game's tick: stops the loop once every outcome is in.
local ticks, last, longest = 0, uv.now(), 0
local tick = uv.new_timer()
tick:start(16, 16, function()
  ticks = ticks + 1
  local now = uv.now()
  longest = math.max(longest, now - last)
  last = now
  -- ... the rest of the tick: game logic, sending state to players ...
  if outstanding == 0 then uv.stop() end
end)

uv.run()
tick:close()
detach(handle)
a:close()
print(("ticks: %d, longest gap between ticks: %d ms"):format(ticks, longest))
os.exit(failed == 0 and 0 or 1)
