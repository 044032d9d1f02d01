--- The delivery bench's receiver (bench/receiver/nginx.conf): answers a
-- webhook after a fixed delay and keeps the run's counts in the shared
-- dictionary `receiver`.  One nginx worker runs it, so the in-flight
-- maximum is exact.
local cjson = require "cjson.safe"

local M = {}
local d = ngx.shared.receiver

--- POST /hook/<ms>: counts the request, and its webhook-id if it was seen
-- before (a duplicate delivery), then answers 200 after `delay` seconds.
function M.hook(delay)
  ngx.update_time()
  -- add: only the first arrival of a run sets it.
  d:add("first", ngx.now())
  local n = d:incr("in_flight", 1, 0)
  if n > (d:get("max_in_flight") or 0) then d:set("max_in_flight", n) end
  d:incr("requests", 1, 0)
  ngx.req.read_body()
  local id = ngx.var.http_webhook_id
  if not id then
    d:incr("missing_id", 1, 0)
  elseif not d:add("id:" .. id, true) then
    d:incr("duplicates", 1, 0)
  end
  ngx.sleep(delay)
  d:incr("in_flight", -1, 0)
  ngx.update_time()
  d:set("last", ngx.now())
  ngx.say('{"ok":true}')
end

function M.stats()
  local out = {}
  for _, k in ipairs { "requests", "duplicates", "missing_id", "max_in_flight", "in_flight",
    "first", "last" } do
    out[k] = d:get(k) or 0
  end
  ngx.say(cjson.encode(out))
end

function M.reset()
  d:flush_all()
  d:flush_expired()
  ngx.say('{"ok":true}')
end

return M
