-- wrk script of bench/nonblocking.sh: each request is one POST of a new
-- trigger (a template id of its own, so every request writes), on the path
-- given after `--`: /trigger (the engine, on nginx's thread pool) or
-- /trigger_yield (the yielding baseline, bench/nonblocking/baseline.locations).
--
--   wrk ... -s writes.lua URL -- PATH RUN_TAG CONVERSATIONS
--
-- done() prints one line:
--   RESULT <requests> <not 201> <socket errors> <requests/s> <p50 ms> <p99 ms> <max ms>
local threads = {}
local path, tag, conversations = "/trigger", "run", 10000

function setup(thread)
  thread:set("tid", #threads + 1)
  threads[#threads + 1] = thread
end

-- bad is a global of each thread's state: done() reads it with get().
bad = 0
local n = 0

function init(args)
  path = args[1] or path
  tag = args[2] or tag
  conversations = tonumber(args[3]) or conversations
end

function request()
  n = n + 1
  -- Threads start at different conversations, so that two requests in
  -- flight rarely share one.
  local conversation = (tid * 7919 + n) % conversations + 1
  return wrk.format("POST", path, { ["Content-Type"] = "application/json" },
    '{"conversation_id":' .. conversation .. ',"template_id":"' .. tag .. '_' .. tid .. '_' .. n .. '"}')
end

function response(status)
  if status ~= 201 then bad = bad + 1 end
end

function done(summary, latency)
  local not201 = 0
  for _, t in ipairs(threads) do not201 = not201 + t:get("bad") end
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %.1f %.2f %.2f %.2f\n", summary.requests, not201,
    e.connect + e.read + e.write + e.timeout, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
