#!/usr/bin/env bash
# The OpenResty example under load: 8 clients (wrk) writing on POST /trigger
# through a policy whose auditor waits 20 ms on PostgreSQL
# (pg_sleep(0.02), a database across a network), while /healthz is timed
# on a new connection each time.  Engine calls run on nginx's thread pool
# (cairnloop.resty), so the workers keep answering: /healthz p99 must stay
# under 100 ms (with calls that block the worker it was seconds), every
# write must succeed and be in PostgreSQL, /metrics must count each one
# across all thread VMs, and no call may meet "no available Lua vm".
# Prints the measured figures as TAP comments.  About 8 s.
#
# Needs what tests/integration/openresty.sh needs, plus wrk.
set -u
cd "$(dirname "$0")/../.." || exit 1
ROOT=$(pwd)
. tests/integration/openresty_lib.bash

if [ -z "${CAIRNLOOP_DATABASE_URL:-}" ] && [ -z "${PGHOST:-}" ]; then
  skip_all "no test database (run under tools/check.sh or tests/pg.sh run)"
fi
for f in /usr/lib/nginx/modules/ndk_http_module.so /usr/lib/nginx/modules/ngx_http_lua_module.so; do
  [ -r "$f" ] || skip_all "$f is missing (apt-get install nginx libnginx-mod-http-lua)"
done
command -v nginx >/dev/null || skip_all "no nginx"
command -v wrk >/dev/null || skip_all "no wrk (apt-get install wrk, or tools/deps.sh)"
[ -r build/luajit/cairnloop.so ] || bail "build/luajit/cairnloop.so is missing: run make luajit"

CLIENTS=8
DURATION=5 # seconds of load
unset CAIRNLOOP_MAX_BATCH_SIZE
run=$$_$RANDOM

out=$(luajit -e 'package.cpath = "./build/luajit/?.so;" .. package.cpath' -e '
  local engine, code, msg = require("cairnloop").open()
  if not engine then error(code .. ": " .. msg) end
  local ok, code2, msg2 = engine:migrate()
  if not ok then error(code2 .. ": " .. msg2) end
  engine:close()' 2>&1)
if [ $? -eq 0 ]; then pass "the database is migrated"
else bail "migration from LuaJIT failed: $out"; fi
sql "INSERT INTO cairnloop.cairnloop_conversations (id, subject)
     SELECT g, 'conversation ' || g FROM generate_series(1, 40) AS g ON CONFLICT (id) DO NOTHING"

# The example's policy, with an auditor that first waits 20 ms in its
# transaction.
cat >"$W/slow_policy.lua" <<'LUA'
local cl = require "cairnloop"
local base = require("cairnloop.table_auditor").new { schema = cl.schema }
cl.auditor {
  audit = function(tx, action, actor, metadata)
    tx:exec("SELECT pg_sleep(0.02)")
    return base.audit(tx, action, actor, metadata)
  end,
  list_events = base.list_events,
}
LUA

globals=
[ "$(id -u)" -eq 0 ] && globals="user root;"
start_nginx L "$globals" CAIRNLOOP_POLICY="$W/slow_policy.lua" || bail "nginx did not start"
wait_for "curl -s -o /dev/null -w '%{http_code}' '$L_url/healthz'" 200 ||
  bail "/healthz never answered 200: $waited"
pass "nginx runs the example with the slow auditor ($L_url)"

# Every request writes a new message: its own template id.
cat >"$W/trigger.lua" <<LUA
-- bad is a global of each thread's state: done() reads it with get().
local threads, n = {}, 0
bad = 0
function setup(thread)
  thread:set("tid", #threads + 1)
  threads[#threads + 1] = thread
end
function request()
  n = n + 1
  return wrk.format("POST", "/trigger", { ["Content-Type"] = "application/json" },
    '{"conversation_id":' .. (n % 40 + 1) .. ',"template_id":"load_${run}_' .. tid .. '_' .. n .. '"}')
end
function response(status)
  if status ~= 201 then bad = bad + 1 end
end
function done(summary)
  local not201 = 0
  for _, t in ipairs(threads) do not201 = not201 + t:get("bad") end
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %.1f\n", summary.requests, not201,
    e.connect + e.read + e.write + e.timeout, summary.requests / (summary.duration / 1e6)))
end
LUA

wrk -t 2 -c "$CLIENTS" -d "${DURATION}s" --timeout 10s -s "$W/trigger.lua" "$L_url" >"$W/wrk.out" 2>&1 &
wrk_pid=$!
# /healthz on a new connection each time, back to back, while wrk runs.
: >"$W/healthz.times"
probes_bad=0
while alive "$wrk_pid"; do
  r=$(curl -s -o /dev/null --max-time 10 -w '%{http_code} %{time_total}' "$L_url/healthz")
  [ "${r%% *}" = 200 ] || probes_bad=$((probes_bad + 1))
  echo "${r#* }" >>"$W/healthz.times"
done
wait "$wrk_pid"
read -r _ requests not201 sockerr rps < <(grep '^RESULT ' "$W/wrk.out")
if [ -n "${requests:-}" ] && [ "$requests" -gt 0 ]; then
  pass "wrk: $requests writes by $CLIENTS clients in ${DURATION} s ($rps requests/s)"
else bail "wrk did not report: $(cat "$W/wrk.out")"; fi
is "$not201 $sockerr" "0 0" "every write answered 201 (no other status, no socket error)"

samples=$(wc -l <"$W/healthz.times")
read -r p50 p99 max < <(sort -n "$W/healthz.times" | awk '{ v[NR] = $1 } END {
  i50 = int(NR * 0.50); if (i50 < 1) i50 = 1; i99 = int(NR * 0.99 + 0.999); if (i99 > NR) i99 = NR
  printf "%.1f %.1f %.1f\n", v[i50] * 1000, v[i99] * 1000, v[NR] * 1000 }')
echo "# /healthz under load: $samples probes, p50 $p50 ms, p99 $p99 ms, max $max ms"
echo "# POST /trigger: $rps requests/s, $CLIENTS clients, 20 ms auditor"
if [ "$samples" -ge 20 ]; then pass "/healthz was probed $samples times during the load"
else fail "/healthz was probed $samples times during the load (want >= 20)"; fi
is "$probes_bad" 0 "every /healthz probe answered 200"
if awk -v p="$p99" 'BEGIN { exit !(p < 100) }'; then pass "/healthz p99 under load is $p99 ms (< 100 ms)"
else fail "/healthz p99 under load is $p99 ms (< 100 ms)" "$(sort -n "$W/healthz.times" | tail -n 5)"; fi

# wrk counts the responses it read before it stopped; writes still in
# flight then complete afterwards.
stored=$(sql "SELECT count(*) FROM cairnloop.cairnloop_messages WHERE metadata->>'template_id' LIKE 'load\\_${run}\\_%'")
if [ "$stored" -ge "$requests" ] && [ "$stored" -le $((requests + CLIENTS)) ]; then
  pass "every write is in PostgreSQL ($stored messages for $requests answers)"
else fail "every write is in PostgreSQL" "stored $stored, answered $requests"; fi

metric() {
  curl -s "$L_url/metrics" | sed -n 's/^cairnloop_outbound_trigger_total{outcome="triggered"} //p'
}
wait_for metric "$stored"
is "$waited" "$stored" "/metrics counts every write, summed over every thread VM of both workers"

conns=$(sql "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
  AND backend_type = 'client backend' AND pid <> pg_backend_pid()")
if [ "$conns" -ge 2 ] && [ "$conns" -le 16 ]; then
  pass "$conns engine connections: at most 2 workers x 8 threads"
else fail "engine connections within 2 workers x 8 threads" "got $conns"; fi

if grep -E 'no available Lua vm|\[(alert|crit|emerg)\]|route failed|worker thread failed' "$L_dir/error.log" >"$W/bad.log"; then
  fail "no 'no available Lua vm', alert or failed route in the error log" "$(head -n 5 "$W/bad.log")"
else pass "no 'no available Lua vm', alert or failed route in the error log"; fi
