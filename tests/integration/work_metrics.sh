#!/usr/bin/env bash
# `cairnloop work --metrics HOST:PORT`: a worker delivering a few hundred
# jobs serves Prometheus text on /metrics while it delivers and after; the
# delivery counters, batches and histogram count match what it delivered,
# the queue gauges match the jobs table, promtool accepts a scrape, other
# paths are 404 and other methods 405.  A bad value is a usage error and a
# port in use a clear one.
set -u
. "$(dirname "$0")/work_lib.bash"
need_database

cl migrate
exits 0 "migrate"
seed_conversations 1 400
N=300

# --- option errors (no engine is opened for these)
for bad in "127.0.0.1" "127.0.0.1:" ":9100" "127.0.0.1:65536" "127.0.0.1:9x" "::1:9100" \
  "[::1]9100" "no.such.host.invalid:9100"; do
  cl work --metrics "$bad"
  exits 2 "--metrics $bad is a usage error"
done
like "$err" "^cairnloop: invalid_argument: --metrics" "the error names --metrics"
cl work --once --metrics 127.0.0.1:0
exits 2 "--metrics with --once is refused"

# A port another socket holds: a clear error, before any database work.
start_worker busy --metrics 127.0.0.1:0
wait_log 10 busy 'metrics at http://127\.0\.0\.1:[0-9]+/metrics' || true
busy_port=$(sed -n -E 's|.*metrics at http://127\.0\.0\.1:([0-9]+)/metrics.*|\1|p' "$cl_tmp/busy.err")
cl work --metrics "127.0.0.1:$busy_port"
exits 2 "a port in use: exit 2"
like "$err" "^cairnloop: invalid_argument: --metrics 127\.0\.0\.1:$busy_port: cannot listen: Address already in use" \
  "a port in use says so"
stop_worker busy

# IPv6 loopback and localhost, when this host has them.
start_worker v6 --metrics "[::1]:0"
if wait_log 10 v6 'metrics at http://\[::1\]:[0-9]+/metrics'; then
  p=$(sed -n -E 's|.*metrics at http://\[::1\]:([0-9]+)/metrics.*|\1|p' "$cl_tmp/v6.err")
  is "$(curl -s -o /dev/null -w '%{http_code}' "http://[::1]:$p/metrics")" "200" "[::1]:0 serves /metrics"
else
  tap 0 "[::1]:0 serves /metrics # SKIP no IPv6 loopback here"
fi
stop_worker v6
start_worker lh --metrics localhost:0
wait_log 10 lh 'metrics at http://[^ ]+:[0-9]+/metrics' || true
url=$(sed -n -E 's|.*metrics at (http://[^ ]+/metrics).*|\1|p' "$cl_tmp/lh.err")
is "$(curl -sg -o /dev/null -w '%{http_code}' "$url")" "200" "localhost:0 serves /metrics ($url)"
stop_worker lh

# --- a delivery run
# A notifier that takes ~5 ms per call (CPU time: the sandbox has no
# sleep), so the run lasts over a second and a scrape lands in its middle.
slow=$(recording_policy slow 5)
cl_in "$(seq 1 $N)" bulk --template "metrics_$$" --body "Hi" --ids-file - --max-batch-size $N
exits 0 "bulk of $N"
start_worker m --policy "$slow" --limit 20 --metrics 127.0.0.1:0
wait_log 10 m 'metrics at http://127\.0\.0\.1:[0-9]+/metrics' || true
port=$(sed -n -E 's|.*metrics at http://127\.0\.0\.1:([0-9]+)/metrics.*|\1|p' "$cl_tmp/m.err")
like "$port" '^[1-9][0-9]*$' "port 0: the worker logs the port it picked"
base="http://127.0.0.1:$port"

metric() { # metric NAME_WITH_LABELS FILE: the sample's value, empty if absent
  awk -v k="$1" '$1 == k { print $2 }' "$2"
}
sent_now() {
  curl -sf "$base/metrics" >"$cl_tmp/scrape" || return 1
  local v
  v=$(metric 'cairnloop_worker_deliveries_total{outcome="sent",reason="notifier_ok"}' "$cl_tmp/scrape")
  [ "${v:-0}" -gt 0 ] && [ "$v" -lt $N ]
}
if wait_until 20 sent_now; then
  cp "$cl_tmp/scrape" "$cl_tmp/during"
  tap 0 "a scrape during the run shows deliveries in progress ($(metric 'cairnloop_worker_deliveries_total{outcome="sent",reason="notifier_ok"}' "$cl_tmp/during") of $N)"
  if out=$(promtool check metrics <"$cl_tmp/during" 2>&1); then tap 0 "promtool check metrics accepts a scrape taken during the run"
  else tap 1 "promtool check metrics accepts a scrape taken during the run" "$out"; fi
else
  tap 1 "a scrape during the run shows deliveries in progress" "$(cat "$cl_tmp/scrape" 2>/dev/null | head -20)"
  tap 1 "promtool check metrics accepts a scrape taken during the run"
fi

wait_for 60 "SELECT count(*) = $N FROM cairnloop.cairnloop_delivery_jobs WHERE template_id = 'metrics_$$' AND state = 'completed'" || true
delivered=$(delivery_log m | wc -l)
is "$delivered" "$N" "the worker delivered all $N jobs"
wait_idle 10 1 || true
# The gauges refresh every 5 s at most: wait for the one that sees none due.
settled() {
  curl -sf "$base/metrics" >"$cl_tmp/after" || return 1
  [ "$(metric 'cairnloop_worker_queue_jobs{state="available"}' "$cl_tmp/after")" = 0 ] &&
    [ "$(metric cairnloop_worker_batch_in_progress "$cl_tmp/after")" = 0 ]
}
wait_until 15 settled || true
f=$cl_tmp/after
is "$(metric 'cairnloop_worker_deliveries_total{outcome="sent",reason="notifier_ok"}' "$f")" "$N" \
  "deliveries_total{sent,notifier_ok} counts every delivery"
is "$(metric 'cairnloop_worker_deliveries_total{outcome="failed",reason="notifier_returned_error"}' "$f")" "0" \
  "no failed deliveries counted"
is "$(metric cairnloop_worker_delivery_duration_seconds_count "$f")" "$N" "the duration histogram counts every delivery"
is "$(metric 'cairnloop_worker_delivery_duration_seconds_bucket{le="+Inf"}' "$f")" "$N" "its +Inf bucket holds them all"
is "$(metric cairnloop_worker_jobs_claimed_total "$f")" "$N" "jobs_claimed_total = $N"
batches=$(metric cairnloop_worker_batches_total "$f")
if [ "${batches:-0}" -ge $((N / 20)) ]; then tap 0 "batches_total counts the batches ($batches for $N jobs at --limit 20)"
else tap 1 "batches_total counts the batches" "got: $batches"; fi
completed=$(sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE state = 'completed'")
is "$(metric 'cairnloop_worker_queue_jobs{state="completed"}' "$f")" "$completed" "queue_jobs{completed} matches the jobs table"
is "$(metric cairnloop_worker_queue_oldest_due_age_seconds "$f")" "0" "nothing due: oldest due age 0"
is "$(metric cairnloop_worker_paused "$f")" "0" "not paused"
if out=$(promtool check metrics <"$f" 2>&1); then tap 0 "promtool check metrics accepts the scrape after the run"
else tap 1 "promtool check metrics accepts the scrape after the run" "$out"; fi
grep -q '^# TYPE cairnloop_worker_delivery_duration_seconds histogram$' "$f"
tap $? "the duration is a histogram"
like "$(curl -s -D - -o /dev/null "$base/metrics" | tr -d '\r' | grep -i '^content-type:')" \
  "text/plain; version=0\.0\.4" "served as text format 0.0.4"

# --- paused shows within a refresh
cl pause
exits 0 "pause"
is_paused() { curl -sf "$base/metrics" | grep -qx 'cairnloop_worker_paused 1'; }
if wait_until 15 is_paused; then tap 0 "the paused gauge turns 1"; else tap 1 "the paused gauge turns 1"; fi
cl resume

# --- other paths and methods
is "$(curl -s -o /dev/null -w '%{http_code}' "$base/")" "404" "/ is 404"
is "$(curl -s -o /dev/null -w '%{http_code}' "$base/metricsx")" "404" "/metricsx is 404"
is "$(curl -s -o /dev/null -w '%{http_code}' -X POST -d x "$base/metrics")" "405" "POST /metrics is 405"
is "$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$base/metrics")" "405" "DELETE /metrics is 405"

stop_worker m TERM
exits 0 "the worker stops on SIGTERM with --metrics"
like "$out" "^sent $N, failed 0" "its totals agree with the metrics"
if curl -s -o /dev/null "$base/metrics"; then tap 1 "the endpoint is gone once it stopped"
else tap 0 "the endpoint is gone once it stopped"; fi

# --- the rate limit's waits and the retention pass show as counters
# A worker limited to 20 starts a second, pruning completed jobs one second
# after they finished, every 50 ms: 20 jobs take about a second, of which
# it sits mostly waiting for tokens; once a job is a second old it goes.
cl_in "$(seq 1 20)" bulk --template "metrics_rate_$$" --body "Hi" --ids-file - --max-batch-size 20
exits 0 "bulk of 20 for the rate run"
start_worker r --policy "$slow" --limit 20 --rate 20 --retention-completed 1s \
  --retention-interval-ms 50 --metrics 127.0.0.1:0
wait_log 10 r 'metrics at http://127\.0\.0\.1:[0-9]+/metrics' || true
rport=$(sed -n -E 's|.*metrics at http://127\.0\.0\.1:([0-9]+)/metrics.*|\1|p' "$cl_tmp/r.err")
rbase="http://127.0.0.1:$rport"
pruned_some() {
  curl -sf "$rbase/metrics" >"$cl_tmp/rscrape" || return 1
  v=$(metric cairnloop_worker_pruned_jobs_total "$cl_tmp/rscrape")
  [ -n "$v" ] && [ "$v" -gt 0 ]
}
if wait_until 20 pruned_some; then tap 0 "the retention pass's deletions are counted ($v)"
else tap 1 "the retention pass's deletions are counted" "$(grep -E 'pruned|rate_limited' "$cl_tmp/rscrape")"; fi
w=$(metric cairnloop_worker_rate_limited_seconds_total "$cl_tmp/rscrape")
like "$w" '^0\.[1-9]|^[1-9]' "the time spent waiting for --rate's tokens is counted ($w s)"
if out=$(promtool check metrics <"$cl_tmp/rscrape" 2>&1); then tap 0 "promtool accepts the scrape with the new counters"
else tap 1 "promtool accepts the scrape with the new counters" "$out"; fi
stop_worker r TERM
exits 0 "the rate-limited worker stops on SIGTERM"
