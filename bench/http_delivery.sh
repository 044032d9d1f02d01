#!/usr/bin/env bash
# The HTTP delivery lane of `make bench`: `cairnloop work` with the webhook
# notifier against graphile-worker, each job one signed POST to a local
# receiver that answers after a fixed delay (bench/receiver/: nginx with the
# Lua module, counting requests, repeated webhook-ids and the most requests
# in flight).  The contenders run interleaved, in a random order per round,
# on the durable cluster of bench/pg.sh; the run ends with a table of
# targets, each met or missed.
#
#   bench/http_delivery.sh [--quick] [--cli PATH] [--out FILE.md] [--work DIR]
#
#   --quick      one round of four short runs: a smoke run of the same paths
#   --cli PATH   the command (default build/cairnloop)
#   --out FILE   append the tables, as markdown, to FILE
#   --work DIR   where the receiver, graphile-worker (installed there with
#                npm from bench/graphile/) and the logs go (default build/bench)
#
# Needs bench/pg.sh's environment (CAIRNLOOP_PG_URL_BASE, PG_BIN); run it as
# `bench/pg.sh run bench/http_delivery.sh ...` (bench/bench.mk does).  It
# drops and re-creates the databases cl_bench_http and cl_bench_graphile.
# A contender that cannot run here (no npm registry, an engine without
# concurrent HTTP delivery) is skipped with a note; a run that fails (a job
# not delivered exactly once) makes the exit status 1.
set -uo pipefail
. "$(dirname "$0")/lib.bash"

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)

QUICK=0
CLI=build/cairnloop
OUT=
WORK=build/bench
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --cli) CLI=$2; shift ;;
    --out) OUT=$2; shift ;;
    --work) WORK=$2; shift ;;
    *) echo "usage: bench/http_delivery.sh [--quick] [--cli PATH] [--out FILE.md] [--work DIR]" >&2; exit 2 ;;
  esac
  shift
done

die() { echo "http bench: $*" >&2; exit 1; }
[ -n "${CAIRNLOOP_PG_URL_BASE:-}" ] || die "CAIRNLOOP_PG_URL_BASE is not set: run it under bench/pg.sh run"
[ -x "$CLI" ] || die "$CLI is not built"
CLI=$(cd "$(dirname "$CLI")" && pwd)/$(basename "$CLI")
mkdir -p "$WORK" || die "cannot create $WORK"
WORK=$(cd "$WORK" && pwd)
PSQL=psql
[ -x "${PG_BIN:-}/psql" ] && PSQL=$PG_BIN/psql

# The body every job sends (bench/bench.h's BENCH_BODY).
BODY="Hello from support: we have an update on your conversation."
# How long each run delivers (jobs_for sizes it), and the rounds: long
# enough that the first and last requests' tails weigh little.
if [ "$QUICK" = 1 ]; then RUN_SECONDS=0.5 ROUNDS=1; else RUN_SECONDS=2 ROUNDS=3; fi
MAX_JOBS=10000  # one `cairnloop bulk` call, and plenty for a few seconds
FIRST_JOBS=4000 # at most, before a configuration's rate is known
STALL_S=15      # a run fails when no request arrives for this long



notes=()
note() { notes+=("$1"); echo "http bench: $1" >&2; }

# ---------------------------------------------------------------------------
# Processes: everything started here is stopped at exit, whatever happens.
# ---------------------------------------------------------------------------
recv_pid=
worker_pids=()



cleanup() {
  local p
  for p in "${worker_pids[@]}"; do stop_pid "$p" TERM; done
  [ -n "$recv_pid" ] && stop_pid "$recv_pid" QUIT
}
trap cleanup EXIT
trap 'exit 130' INT TERM




RECV_DIR=$WORK/receiver
start_receiver() {
  local port i
  command -v nginx >/dev/null || die "nginx is not installed (tools/deps.sh)"
  [ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ] || die "nginx's Lua module is not installed"
  rm -rf "$RECV_DIR"
  mkdir -p "$RECV_DIR" && chmod 755 "$RECV_DIR"
  cp bench/receiver/receiver.lua "$RECV_DIR/"
  for _ in 1 2 3 4 5; do
    port=$(free_port) || continue
    sed "s/127\.0\.0\.1:8089/127.0.0.1:$port/" bench/receiver/nginx.conf >"$RECV_DIR/nginx.conf"
    rm -f "$RECV_DIR/error.log"
    nginx -p "$RECV_DIR/" -c "$RECV_DIR/nginx.conf" -g 'daemon off;' >"$RECV_DIR/stdout" 2>&1 &
    recv_pid=$!
    for i in $(seq 1 100); do
      alive "$recv_pid" || break
      if curl -s --max-time 2 "http://127.0.0.1:$port/stats" 2>/dev/null | grep -q '"requests"'; then
        RECV=http://127.0.0.1:$port
        return 0
      fi
      sleep 0.05
    done
    stop_pid "$recv_pid" QUIT
    recv_pid=
    grep -qs 'Address already in use' "$RECV_DIR/error.log" "$RECV_DIR/stdout" || break
  done
  cat "$RECV_DIR/stdout" "$RECV_DIR/error.log" >&2 2>/dev/null
  die "the receiver did not start"
}

recv_stats() { curl -s --max-time 5 "$RECV/stats"; }
# A number of the receiver's JSON.
field() { sed -n "s/.*\"$1\":\([-0-9.e+]*\).*/\1/p" <<<"$2"; }

# ---------------------------------------------------------------------------
# The contenders
# ---------------------------------------------------------------------------
SECRET=whsec_$(head -c 24 /dev/urandom | base64)

have_cl=1
cl_policy=
if ! "$CLI" work --help 2>&1 | grep -q -- '--concurrency' ||
  ! "$CLI" work --help 2>&1 | grep -q -- '--http-allow'; then
  have_cl=0
  note "cairnloop: this engine's \`cairnloop work\` has no --concurrency / --http-allow yet: contender skipped"
elif [ ! -f lua/cairnloop/webhook.lua ]; then
  have_cl=0
  note "cairnloop: lua/cairnloop/webhook.lua is missing: contender skipped"
else
  cl_policy=$ROOT/lua/cairnloop/webhook.lua
fi

GW_DIR=$WORK/graphile
have_gw=1
gw_version=
install_graphile() {
  local f
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    note "graphile-worker: node and npm are not installed: contender skipped"
    return 1
  fi
  mkdir -p "$GW_DIR"
  for f in package.json package-lock.json deliver.mjs; do cp "bench/graphile/$f" "$GW_DIR/"; done
  # Installed once per lockfile; `npm ci` installs exactly the locked tree.
  if [ ! -f "$GW_DIR/node_modules/graphile-worker/package.json" ] ||
    ! cmp -s "$GW_DIR/package-lock.json" "$GW_DIR/node_modules/.bench-lock"; then
    echo "http bench: installing graphile-worker into $GW_DIR (npm ci)"
    if ! (cd "$GW_DIR" && timeout 300 npm ci --no-audit --no-fund --loglevel=error \
      --engine-strict=false) >"$GW_DIR/npm.log" 2>&1; then
      note "graphile-worker: npm could not install it (the registry unreachable? see $GW_DIR/npm.log): contender skipped"
      return 1
    fi
    cp "$GW_DIR/package-lock.json" "$GW_DIR/node_modules/.bench-lock"
  fi
  gw_version=$(node -p 'require(process.argv[1]).version' "$GW_DIR/node_modules/graphile-worker/package.json")
}
install_graphile || have_gw=0

[ "$have_cl" = 1 ] || [ "$have_gw" = 1 ] || die "no contender can run: ${notes[*]}"

CL_DB=cl_bench_http
GW_DB=cl_bench_graphile
setup_databases() {
  local db
  for db in $CL_DB $GW_DB; do
    sql postgres "DROP DATABASE IF EXISTS $db" >/dev/null && sql postgres "CREATE DATABASE $db" >/dev/null ||
      die "cannot create the database $db"
  done
  if [ "$have_cl" = 1 ]; then
    "$CLI" migrate --database "$(db_url $CL_DB)" >/dev/null || die "cairnloop migrate failed"
    # As many open conversations as the largest run has recipients.
    sql $CL_DB "INSERT INTO cairnloop.cairnloop_conversations (id, status, subject, customer_ref)
                SELECT g, 'open', 'Bench conversation ' || g, 'customer-' || g
                FROM generate_series(1, $MAX_JOBS) AS g;
                SELECT setval(pg_get_serial_sequence('cairnloop.cairnloop_conversations', 'id'), $MAX_JOBS)" \
      >/dev/null && sql $CL_DB "VACUUM ANALYZE cairnloop.cairnloop_conversations" ||
      die "cannot seed $CL_DB"
    seq 1 $MAX_JOBS >"$WORK/http-ids.txt"
  fi
  if [ "$have_gw" = 1 ]; then
    (cd "$GW_DIR" && node node_modules/graphile-worker/dist/cli.js -c "$(db_url $GW_DB)" --schema-only) \
      >"$WORK/graphile-migrate.log" 2>&1 || die "graphile-worker --schema-only failed: $(cat "$WORK/graphile-migrate.log")"
  fi
  # The postmaster: the parent of a server process that stays (not of our
  # own backend, gone when psql is).
  POSTMASTER=$(ps -o ppid= -p "$(sql postgres "SELECT pid FROM pg_stat_activity
                                               WHERE backend_type = 'checkpointer'")" | tr -d ' ')
}

# enqueue CONTENDER N SEQ: N jobs, untimed, then what autovacuum and the
# checkpointer would do between bursts.
enqueue() {
  local who=$1 n=$2 seq=$3
  if [ "$who" = cairnloop ]; then
    head -n "$n" "$WORK/http-ids.txt" >"$WORK/http-run-ids.txt"
    "$CLI" bulk --database "$(db_url $CL_DB)" --template "http-$seq" --body "$BODY" \
      --ids-file "$WORK/http-run-ids.txt" --max-batch-size $MAX_JOBS >/dev/null || return 1
    sql $CL_DB "VACUUM ANALYZE cairnloop.cairnloop_delivery_jobs, cairnloop.cairnloop_messages" >/dev/null
  else
    # graphile's own SQL API, one statement.
    sql $GW_DB "SELECT count(*) FROM graphile_worker.add_jobs(ARRAY(
                  SELECT ROW('deliver', json_build_object('message_id', g, 'conversation_id', g,
                             'customer_ref', 'customer-' || g, 'template_id', 'http-$seq',
                             'bulk_envelope_id', '$(cat /proc/sys/kernel/random/uuid)',
                             'content', '$BODY'),
                             NULL, NULL, NULL, NULL, NULL, NULL)::graphile_worker.job_spec
                  FROM generate_series(1, $n) AS g))" >/dev/null || return 1
    sql $GW_DB "VACUUM ANALYZE graphile_worker._private_jobs" >/dev/null
  fi
  sql postgres "CHECKPOINT" >/dev/null
}

# Jobs not finished yet.
remaining() {
  if [ "$1" = cairnloop ]; then
    sql $CL_DB "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs
                WHERE state NOT IN ('completed', 'discarded', 'cancelled')"
  else
    sql $GW_DB "SELECT count(*) FROM graphile_worker._private_jobs"
  fi
}

# Every job of the run completed on its first attempt, every message sent
# (cairnloop); graphile deletes a job when it completes.
verify() {
  local who=$1 n=$2 seq=$3 got
  if [ "$who" = cairnloop ]; then
    got=$(sql $CL_DB "SELECT (SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs j
                               JOIN cairnloop.cairnloop_messages m ON m.id = j.message_id
                               WHERE m.metadata->>'template_id' = 'http-$seq'
                                 AND j.state = 'completed' AND j.attempt = 1)
                           || ' ' ||
                           (SELECT count(*) FROM cairnloop.cairnloop_messages
                            WHERE metadata->>'template_id' = 'http-$seq'
                              AND metadata->>'status' = 'sent')")
    [ "$got" = "$n $n" ] || { echo "$got of $n jobs completed on attempt 1 / messages sent" >&2; return 1; }
  else
    got=$(remaining graphile)
    [ "$got" = 0 ] || { echo "$got graphile jobs left" >&2; return 1; }
  fi
}

# spawn CONTENDER CONCURRENCY DELAY_MS LOG: one worker process; its pid in
# worker_pids.
spawn() {
  local who=$1 c=$2 delay=$3 log=$4
  case $who in
    cairnloop)
      env CAIRNLOOP_WEBHOOK_URL="$RECV/hook/$delay" CAIRNLOOP_WEBHOOK_SECRET="$SECRET" \
        "$CLI" work --database "$(db_url $CL_DB)" --concurrency "$c" --policy "$cl_policy" \
        --http-allow "$RECV/" >>"$log" 2>&1 </dev/null &
      ;;
    graphile | graphile-batched)
      (cd "$GW_DIR" && exec env DATABASE_URL="$(db_url $GW_DB)" GW_CONCURRENCY="$c" \
        GW_URL="$RECV/hook/$delay" GW_SECRET="$SECRET" \
        GW_BATCHED="$([ "$who" = graphile-batched ] && echo 1 || echo 0)" node deliver.mjs) \
        >>"$log" 2>&1 </dev/null &
      ;;
  esac
  worker_pids+=($!)
}

# One run: prints "jobs jobs_per_s worker_cpu_ms server_cpu_ms max_in_flight",
# or fails.
run_once() {
  local who=$1 procs=$2 c=$3 delay=$4 n=$5 seq=$6 log=$7
  local base=$who
  [ "$who" = graphile-batched ] && base=graphile
  enqueue "$base" "$n" "$seq" || { echo "enqueue failed" >&2; return 1; }
  curl -s --max-time 5 -X POST "$RECV/reset" >/dev/null || return 1
  local srv0 p got last=-1 t_progress t_now stats left cpu=0 i
  srv0=$(server_cpu_ms "$POSTMASTER")
  worker_pids=()
  for p in $(seq 1 "$procs"); do spawn "$who" "$c" "$delay" "$log"; done
  t_progress=$(now_us)
  # Until the receiver has every request.  The rate comes from the
  # receiver's own times, not from this poll, which only has to be cheap:
  # one curl every 100 ms and nothing else forked, beside the contenders.
  while :; do
    stats=$(recv_stats)
    got=0
    [[ $stats =~ \"requests\":([0-9]+) ]] && got=${BASH_REMATCH[1]}
    t_now=$(now_us)
    [ "$got" != "$last" ] && last=$got t_progress=$t_now
    [ "$got" -ge "$n" ] && break
    if [ $((t_now - t_progress)) -gt $((STALL_S * 1000000)) ]; then
      echo "no request for ${STALL_S} s after $got of $n (log: $log)" >&2
      return 1
    fi
    for p in "${worker_pids[@]}"; do
      kill -0 "$p" 2>/dev/null || { echo "a worker exited (log: $log)" >&2; return 1; }
    done
    sleep 0.1
  done
  # Then until the database has every job finished.
  for i in $(seq 1 300); do
    left=$(remaining "$base")
    [ "$left" = 0 ] && break
    sleep 0.05
  done
  for p in "${worker_pids[@]}"; do cpu=$((cpu + $(proc_cpu_ms "$p"))); done
  for p in "${worker_pids[@]}"; do stop_pid "$p" TERM; done
  worker_pids=()
  sleep 0.05 # the workers' backends exit after them
  local srv1
  srv1=$(server_cpu_ms "$POSTMASTER")
  stats=$(recv_stats)
  [ "$left" = 0 ] || { echo "$left jobs left in the database (log: $log)" >&2; return 1; }
  verify "$base" "$n" "$seq" || return 1
  local requests dups missing first lastt maxf
  requests=$(field requests "$stats") dups=$(field duplicates "$stats")
  missing=$(field missing_id "$stats") first=$(field first "$stats") lastt=$(field last "$stats")
  maxf=$(field max_in_flight "$stats")
  if [ "$requests" != "$n" ] || [ "$dups" != 0 ] || [ "$missing" != 0 ]; then
    echo "the receiver got $requests requests for $n jobs, $dups duplicates, $missing without a webhook-id" >&2
    return 1
  fi
  # Delivery rate at the receiver: from the first request's arrival to the
  # last answer.
  awk -v n="$n" -v a="$first" -v b="$lastt" -v cpu="$cpu" -v srv=$((srv1 - srv0)) -v m="$maxf" \
    'BEGIN { printf "%d %.1f %.1f %.1f %d\n", n, n / (b - a), cpu, srv, m }'
}

# ---------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------
# A configuration: "contender processes concurrency delay_ms".
configs=()
if [ "$QUICK" = 1 ]; then
  delays=(20) concs=(1 50)
else
  delays=(20 2) concs=(1 10 50)
fi
for d in "${delays[@]}"; do
  for c in "${concs[@]}"; do
    if [ "$have_cl" = 1 ]; then
      configs+=("cairnloop 1 $c $d")
      [ "$QUICK" = 1 ] || configs+=("cairnloop 2 $c $d")
    fi
    if [ "$have_gw" = 1 ]; then
      configs+=("graphile 1 $c $d")
      # graphile's batching matters only with jobs to batch.
      [ "$QUICK" = 1 ] || [ "$c" = 1 ] || configs+=("graphile-batched 1 $c $d")
    fi
  done
done

# Jobs per run: RUN_SECONDS of delivery.  The first run of a configuration
# sizes for its limit (in flight / delay), at most FIRST_JOBS; the later
# ones for the rate it reached, so that a slow configuration does not run
# for ten times as long as a fast one.
declare -A next_jobs
jobs_for() { # procs conc delay_ms [rate]
  awk -v p="$1" -v c="$2" -v d="$3" -v rate="${4:-0}" -v s="$RUN_SECONDS" -v first=$FIRST_JOBS \
    -v max=$MAX_JOBS 'BEGIN {
      if (rate > 0) n = rate * s; else { n = p * c * 1000 / d * s; if (n > first) n = first }
      n = int(n / 10 + 0.5) * 10; if (n < 20) n = 20; if (n > max) n = max; print n }'
}

start_receiver
setup_databases

t_start=$(now_us)
machine="machine: $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), $(awk '/MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo), $(uname -sr); load average at the start $(cut -d' ' -f1-3 /proc/loadavg)"
server="postgres: $(sql postgres "SELECT split_part(version(), ' on ', 1) || '; fsync=' || current_setting('fsync')
  || ' synchronous_commit=' || current_setting('synchronous_commit') || ' wal_sync_method=' || current_setting('wal_sync_method')"); node $(node --version 2>/dev/null || echo -)"
echo
echo "HTTP delivery bench: cairnloop work against graphile-worker${gw_version:+ $gw_version}, durable PostgreSQL, local receiver"
echo "$machine"
echo "$server"

# The receiver by itself, driven by wrk (keep-alive, one thread) at each
# concurrency of the plan: what a client with no queue behind it reaches,
# and, with 200 connections, that the receiver's own ceiling is far above
# the contenders'.
recv_rows=()
recv_note=
if [ "$QUICK" = 0 ] && command -v wrk >/dev/null; then
  cat >"$WORK/wrk-hook.lua" <<'EOF'
local threads = 0
function setup(thread) threads = threads + 1; thread:set("tid", threads) end
local n = 0
function request()
  n = n + 1
  return wrk.format("POST", nil, { ["webhook-id"] = "wrk-" .. tid .. "-" .. n }, "{}")
end
EOF
  wrk_rps() { # threads connections delay_ms seconds
    curl -s -X POST "$RECV/reset" >/dev/null
    wrk -t"$1" -c"$2" -d"$4"s -s "$WORK/wrk-hook.lua" "$RECV/hook/$3" 2>/dev/null |
      awk '/Requests\/sec/ { printf "%d", $2 }'
  }
  for d in "${delays[@]}"; do
    for c in "${concs[@]}"; do
      rps=$(wrk_rps 1 "$c" "$d" 2)
      limit=$((c * 1000 / d))
      recv_rows+=("$d|$c|$(fmt "$limit")|$(fmt "${rps:-0}")|$(awk -v r="${rps:-0}" -v l="$limit" 'BEGIN { printf "%.2f", r / l }')")
    done
  done
  rps=$(wrk_rps 2 200 20 3)
  stats=$(recv_stats)
  recv_note="The receiver's capacity: $(fmt "${rps:-0}") requests/s with 200 connections on the 20 ms route (wrk, 2 threads, 3 s; limit 10,000), $(field duplicates "$stats") duplicates counted for distinct ids."
fi

raw=$WORK/http-runs.txt
: >"$raw"
log=$WORK/http-workers.log
: >"$log"
failed=0
seq_no=0
for round in $(seq 1 $ROUNDS); do
  while IFS= read -r cf; do
    read -r who procs c d <<<"$cf"
    n=${next_jobs[$cf]:-$(jobs_for "$procs" "$c" "$d")}
    seq_no=$((seq_no + 1))
    t0=$(now_us)
    if out=$(run_once "$who" "$procs" "$c" "$d" "$n" "$seq_no" "$log"); then
      echo "$cf $out" >>"$raw"
      read -r _ rate _ <<<"$out"
      next_jobs[$cf]=$(jobs_for "$procs" "$c" "$d" "$rate")
      printf '  round %d: %-16s x%d  concurrency %2d  %2d ms  %5d jobs  %8.1f jobs/s  (run %s s)\n' \
        "$round" "$who" "$procs" "$c" "$d" "$n" "$rate" \
        "$(awk -v us=$(($(now_us) - t0)) 'BEGIN { printf "%.1f", us / 1e6 }')"
    else
      failed=1
      echo "http bench: run FAILED: $cf ($n jobs)" >&2
      for p in "${worker_pids[@]}"; do stop_pid "$p" TERM; done
      worker_pids=()
    fi
  done < <(printf '%s\n' "${configs[@]}" | shuf)
done

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
# summary CONFIG: "runs jobs median lo hi cpu_per_1000 srv_per_1000 max_in_flight"
# (jobs: per run, as a range when the runs differ)
# (medians over the config's runs).
summary() {
  awk -v cf="$1" '
    $1 " " $2 " " $3 " " $4 == cf { n++; if (!jlo || $5 < jlo) jlo = $5; if ($5 > jhi) jhi = $5; r[n] = $6; cpu[n] = $7 / $5 * 1000; srv[n] = $8 / $5 * 1000
                                    if ($9 > m) m = $9 }
    function med(a, k,   i, j, t) {
      for (i = 2; i <= k; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
      return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
    }
    END {
      if (!n) { print "0"; exit }
      lo = r[1]; hi = r[1]; for (i = 2; i <= n; i++) { if (r[i] < lo) lo = r[i]; if (r[i] > hi) hi = r[i] }
      printf "%d %s %.1f %.1f %.1f %.2f %.1f %d\n", n, jlo == jhi ? jlo : jlo "-" jhi, med(r, n), lo, hi, med(cpu, n), med(srv, n), m
    }' "$raw"
}

label() {
  case $1 in
    cairnloop) echo "cairnloop work" ;;
    graphile) echo "graphile-worker" ;;
    graphile-batched) echo "graphile-worker, batched" ;;
  esac
}

# Tables: rows of '|'-separated cells, printed aligned on stdout and as
# markdown into $OUT.
md=$WORK/http-results.md
: >"$md"

r() { summary "$1" | cut -d' ' -f3; }
has() { summary "$1" | grep -qv '^0$'; }

rows=()
for d in "${delays[@]}"; do
  for c in "${concs[@]}"; do
    for cf in "cairnloop 1 $c $d" "cairnloop 2 $c $d" "graphile 1 $c $d" "graphile-batched 1 $c $d"; do
      read -r who procs _ _ <<<"$cf"
      read -r runs jobs med lo hi cpu srv maxf <<<"$(summary "$cf")"
      [ "$runs" = 0 ] && continue
      inflight=$((procs * c))
      limit=$(awk -v f=$inflight -v d="$d" 'BEGIN { print f * 1000 / d }')
      ratio=$(awk -v r="$med" -v l="$limit" 'BEGIN { printf "%.2f", r / l }')
      # Against graphile-worker with as many jobs in flight.
      vs=
      if [ "$who" = cairnloop ] && [ "$procs" = 1 ] && has "graphile 1 $c $d"; then
        vs=$(awk -v a="$med" -v b="$(r "graphile 1 $c $d")" 'BEGIN { printf "%.2fx", a / b }')
      fi
      rows+=("$d|$c|$(label "$who")|$procs|$inflight|$(fmt "$limit")|$runs|$jobs|$(fmt "$med")|$(fmt "$lo")-$(fmt "$hi")|$ratio|$vs|$maxf|$(fmt "$cpu")|$(fmt "$srv")")
    done
  done
done

table_note="Each run: the jobs enqueued untimed (cairnloop bulk; graphile_worker.add_jobs in one statement), VACUUM ANALYZE of the queue tables and a CHECKPOINT, then the workers start and every job is one POST of a signed JSON webhook (Standard Webhooks headers: webhook-id, webhook-timestamp, webhook-signature over HMAC-SHA256) to the receiver, which answers after the delay.  jobs/s: the jobs over the time from the receiver's first request to its last answer.  limit: what the jobs in flight allow, in flight / delay; of limit: jobs/s over it.  x graphile: over graphile-worker's median at the same delay and concurrency.  Every run is checked: each job delivered exactly once (the receiver counts repeated webhook-ids: none) and finished (cairnloop: completed on its first attempt, its message sent; graphile: its jobs table empty).  cairnloop work: --concurrency N, the webhook notifier (lua/cairnloop/webhook.lua), keep-alive connections (libcurl).  graphile-worker: run() with concurrency N, maxPoolSize max(10, N + 2), a task POSTing with Node's http.request and a keep-alive http.Agent, the HMAC in node:crypto; its log at warnings; batched: localQueue size N + 1 and completeJobBatchDelay 0 (its performance guide).  max in flight: the most requests the receiver had at once.  Worker CPU: user + system of the worker processes, their start-up included; server CPU: the whole PostgreSQL server.  Workers, server and receiver share this machine's $(nproc) CPUs."
print_table \
  "HTTP delivery: one signed webhook POST per job to a local receiver answering after a fixed delay (median of $ROUNDS runs)" \
  "delay ms|concurrency|contender|processes|in flight|limit jobs/s|runs|jobs per run|jobs/s|range jobs/s|of limit|x graphile|max in flight|worker CPU ms / 1,000 jobs|server CPU ms / 1,000 jobs" \
  "rrlrrrrrrrrrrrr" "$table_note" "${rows[@]}"

if [ ${#recv_rows[@]} -gt 0 ]; then
  print_table "The receiver alone: wrk at the same concurrency (keep-alive connections, one thread, 2 s)" \
    "delay ms|concurrency|limit requests/s|requests/s|of limit" "rrrrr" "$recv_note" "${recv_rows[@]}"
fi

# Targets.
targets=()
met=0
total=0
if has "cairnloop 1 50 20"; then
  v=$(r "cairnloop 1 50 20")
  target "20 ms, concurrency 50, one process: >= 0.8x the limit (2,000 jobs/s)" \
    "$(fmt "$v") jobs/s ($(awk -v v="$v" 'BEGIN { printf "%.2f", v / 2500 }')x)" \
    "$(awk -v v="$v" 'BEGIN { print (v >= 2000) ? 1 : 0 }')"
fi
if has "cairnloop 1 1 20"; then
  v=$(r "cairnloop 1 1 20")
  g=
  has "graphile 1 1 20" && g=$(r "graphile 1 1 20")
  target "20 ms, concurrency 1: >= 0.9x the limit (45 of 50 jobs/s)" \
    "$(fmt "$v") jobs/s ($(awk -v v="$v" 'BEGIN { printf "%.2f", v / 50 }')x)${g:+; graphile-worker $(fmt "$g") ($(awk -v v="$g" 'BEGIN { printf "%.2f", v / 50 }')x)}" \
    "$(awk -v v="$v" 'BEGIN { print (v >= 45) ? 1 : 0 }')"
fi
for d in "${delays[@]}"; do
  for c in 10 50; do
    if has "cairnloop 1 $c $d" && has "graphile 1 $c $d"; then
      v=$(r "cairnloop 1 $c $d") g=$(r "graphile 1 $c $d")
      b=
      has "graphile-batched 1 $c $d" && b=$(r "graphile-batched 1 $c $d")
      # Twice graphile-worker's rate may be more than the limit allows.
      above=$(awk -v g="$g" -v l=$((c * 1000 / d)) 'BEGIN { if (2 * g > l) printf "; 2x graphile-worker is above the limit, %d", l }')
      target "$d ms, concurrency $c, one process: >= 2x graphile-worker" \
        "$(awk -v v="$v" -v g="$g" 'BEGIN { printf "%.2fx", v / g }') ($(fmt "$v") vs $(fmt "$g") jobs/s${b:+; vs batched: $(awk -v v="$v" -v g="$b" 'BEGIN { printf "%.2fx", v / g }')}$above)" \
        "$(awk -v v="$v" -v g="$g" 'BEGIN { print (v >= 2 * g) ? 1 : 0 }')"
    fi
  done
done
if [ $total -gt 0 ]; then
  print_table "HTTP delivery targets (this run)" "target|measured|result" "lrl" \
    "$met of $total targets met.  Rates are medians of the runs above; the limit is jobs in flight / delay." \
    "${targets[@]}"
fi

elapsed=$(awk -v us=$(($(now_us) - t_start)) 'BEGIN { printf "%.0f", us / 1e6 }')
tail="HTTP delivery: $seq_no runs in $elapsed s; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "$tail"
for n in "${notes[@]}"; do echo "note: $n"; done
{
  printf -- '- %s\n' "$machine" "$server" "receiver: bench/receiver/ (nginx $(nginx -v 2>&1 | sed -n 's|.*nginx/||p') with the Lua module, one worker)" \
    "$tail" "${notes[@]}"
  printf '\n'
} >>"$md"

if [ -n "$OUT" ]; then
  {
    printf '## HTTP delivery: cairnloop work against graphile-worker%s\n\n' "${gw_version:+ $gw_version}"
    cat "$md"
  } >>"$OUT"
  echo "markdown: appended to $OUT"
fi
[ "$failed" = 0 ] || { echo "http bench: a run FAILED (see above; worker log $log)" >&2; exit 1; }
exit 0
