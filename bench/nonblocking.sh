#!/usr/bin/env bash
# The non-blocking hosts of `make bench`, side by side in one run, on the
# durable cluster of bench/pg.sh, each against a policy whose auditor runs
# a 20 ms statement (SELECT pg_sleep(0.02): a database across a network):
#
#   openresty  the OpenResty example (examples/openresty/nginx.conf, engine
#              calls on nginx's thread pool through cairnloop.resty) with 1
#              and 2 workers, 8 and 32 wrk clients writing on POST /trigger,
#              against a yielding baseline (POST /trigger_yield: the same
#              body checks, then ngx.sleep(0.02); bench/nonblocking/
#              baseline.locations) on the same server; meanwhile /healthz is
#              timed on a new connection each time, at a steady rate, from
#              a client of its own (bench/nonblocking/probe.py)
#   loop       the 60 Hz game loop (examples/c-host, the asynchronous C
#              API): ticks over budget and the completion latency of each
#              kind of operation, with the example's policy and with the
#              same policy plus the 20 ms statement in its auditor
#   overhead   the asynchronous C API's per-call cost against the blocking
#              one, no hook loaded (bench/nonblocking/async_overhead.c)
#
# The runs of each part are interleaved, in a random order per round; the
# report is medians over the rounds (and, for /healthz, quantiles over all
# the probes of a configuration), ending with a table of targets, each met
# or missed.
#
#   bench/nonblocking.sh [--quick] [--parts LIST] [--cli PATH] [--out FILE.md]
#                        [--work DIR] [--overhead PATH] [--game PATH]
#
#   --quick          one short round of each: a smoke run of the same paths
#   --parts LIST     comma-separated parts to run (default openresty,loop,overhead)
#   --cli PATH       the command (default build/cairnloop)
#   --out FILE       append the tables, as markdown, to FILE
#   --work DIR       where nginx's prefixes, policies and logs go (default build/bench)
#   --overhead PATH  async_overhead (default build/bench/async_overhead)
#   --game PATH      the game server (default build/bench/game-server)
#
# Needs bench/pg.sh's environment (CAIRNLOOP_PG_URL_BASE, PG_BIN); run it as
# `bench/pg.sh run bench/nonblocking.sh ...` (bench/bench.mk does).  It
# drops and re-creates the databases cl_bench_nb_http, cl_bench_nb_game and
# cl_bench_nb_async.  The OpenResty part needs nginx with the Lua module,
# build/luajit/cairnloop.so, wrk and python3; a part that cannot run is
# skipped with a note.  A run that fails (a write not answered 201, a
# /healthz probe not answered 200, the game server's own checks) makes the
# exit status 1.
set -uo pipefail
TARGET_WORDS="met MISSED"
. "$(dirname "$0")/lib.bash"

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)

QUICK=0
PARTS=openresty,loop,overhead
CLI=build/cairnloop
OUT=
WORK=build/bench
OVERHEAD=build/bench/async_overhead
GAME=build/bench/game-server
usage="usage: bench/nonblocking.sh [--quick] [--parts LIST] [--cli PATH] [--out FILE.md] [--work DIR] [--overhead PATH] [--game PATH]"
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --parts) PARTS=$2; shift ;;
    --cli) CLI=$2; shift ;;
    --out) OUT=$2; shift ;;
    --work) WORK=$2; shift ;;
    --overhead) OVERHEAD=$2; shift ;;
    --game) GAME=$2; shift ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
  [ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }
  shift
done

die() { echo "hosts bench: $*" >&2; exit 1; }
[ -n "${CAIRNLOOP_PG_URL_BASE:-}" ] || die "CAIRNLOOP_PG_URL_BASE is not set: run it under bench/pg.sh run"
abs() { printf '%s/%s' "$(cd "$(dirname "$1")" && pwd)" "$(basename "$1")"; }
for b in "$CLI" "$OVERHEAD" "$GAME"; do [ -x "$b" ] || die "$b is not built (make bench builds it)"; done
CLI=$(abs "$CLI") OVERHEAD=$(abs "$OVERHEAD") GAME=$(abs "$GAME")
mkdir -p "$WORK/nonblocking" || die "cannot create $WORK/nonblocking"
WORK=$(cd "$WORK/nonblocking" && pwd)
chmod 755 "$WORK"
PSQL=psql
[ -x "${PG_BIN:-}/psql" ] && PSQL=$PG_BIN/psql
# Policies' require finds this checkout's lua/ (cairnloop.table_auditor).
export CAIRNLOOP_LUA_PATH=$ROOT/lua
unset CAIRNLOOP_MAX_BATCH_SIZE CAIRNLOOP_POLICY

want() { [[ ,$PARTS, == *,$1,* ]]; }

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# Milliseconds: two decimals below 10, one above.
ms() { awk -v x="$1" 'BEGIN { printf(x < 10 ? "%.2f" : "%.1f", x) }'; }

notes=()
note() { notes+=("$1"); echo "hosts bench: $1" >&2; }
failed=0
run_failed() { failed=1; echo "hosts bench: run FAILED: $*" >&2; }

# ---------------------------------------------------------------------------
# Processes: everything started here is stopped at exit, whatever happens.
# ---------------------------------------------------------------------------
nginx_pid=
bg_pids=()




# nginx's CPU so far, in ms: the master and its live workers (whose thread
# pools are threads of theirs).
nginx_cpu_ms() {
  local p ms
  ms=$(proc_cpu_ms "$1")
  for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do ms=$((ms + $(proc_cpu_ms "$p"))); done
  echo "$ms"
}


cleanup() {
  local p
  for p in "${bg_pids[@]}"; do stop_pid "$p" TERM; done
  [ -n "$nginx_pid" ] && stop_pid "$nginx_pid" QUIT
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------
# Tables: rows of '|'-separated cells, printed aligned on stdout and as
# markdown into $md.
# ---------------------------------------------------------------------------
md=$WORK/results.md
: >"$md"

# med FILE COLUMN [FILTER_AWK]: "median min max n" of a column over the
# lines that match the filter.
med() {
  awk -v col="$2" "${3:-1}"' { v[++n] = $col }
    END {
      if (!n) { print "0 0 0 0"; exit }
      for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
      printf "%s %s %s %d\n", n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2, v[1], v[n], n
    }' "$1"
}

# quantiles FILE: "n p50 p99 max" of the first column (nearest rank).
quantiles() {
  sort -n "$1" | awk '{ v[NR] = $1 } END {
    if (!NR) { print "0 0 0 0"; exit }
    i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999); if (i99 > NR) i99 = NR
    printf "%d %s %s %s\n", NR, v[i50], v[i99], v[NR] }'
}

targets=()
met=0
total=0

t_start=$(now_us)
machine="machine: $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), $(awk '/MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo), $(uname -sr); load average at the start $(loadavg)"
server="postgres: $(sql postgres "SELECT split_part(version(), ' on ', 1) || '; fsync=' || current_setting('fsync')
  || ' synchronous_commit=' || current_setting('synchronous_commit') || ' wal_sync_method=' || current_setting('wal_sync_method')"), a Unix socket"
echo
echo "Non-blocking hosts bench: OpenResty's thread path, the 60 Hz game loop, the asynchronous C API; durable PostgreSQL"
echo "$machine"
echo "$server"
loads=()

# The policies with the 20 ms statement: the examples' own, with one line
# added at the top of the auditor's audit function.
slow_policy() { # SOURCE DEST SIGNATURE_LINE
  sed "/^$3\$/a\\    tx:exec(\"SELECT pg_sleep(0.02)\") -- 20 ms: a database across a network" "$1" >"$2"
  grep -q 'pg_sleep(0.02)' "$2" || die "cannot add the 20 ms statement to $1 (its audit function changed?)"
}

# ---------------------------------------------------------------------------
# OpenResty
# ---------------------------------------------------------------------------
OR_DB=cl_bench_nb_http
CONVERSATIONS=10000
if [ "$QUICK" = 1 ]; then OR_ROUNDS=1 OR_SECONDS=2 PROBE_RATE=50; else OR_ROUNDS=3 OR_SECONDS=5 PROBE_RATE=100; fi


openresty_missing() {
  local f
  for f in /usr/lib/nginx/modules/ndk_http_module.so /usr/lib/nginx/modules/ngx_http_lua_module.so; do
    [ -r "$f" ] || { echo "$f is missing (apt-get install nginx libnginx-mod-http-lua)"; return; }
  done
  command -v nginx >/dev/null || { echo "no nginx"; return; }
  command -v wrk >/dev/null || { echo "no wrk (tools/deps.sh)"; return; }
  command -v python3 >/dev/null || { echo "no python3"; return; }
  [ -r build/luajit/cairnloop.so ] || { echo "build/luajit/cairnloop.so is missing (make luajit)"; return; }
}

# start_nginx WORKERS THREADS POLICY: the example's nginx.conf with that
# many workers and pool threads (the resty concurrency follows the
# threads), the baseline's location added, on a free port, with the policy
# slow (the example's + the 20 ms statement), example (the example's own)
# or none; sets nginx_pid, NGX_PORT, NGX_DIR.
start_nginx() {
  local workers=$1 threads=$2 dir="$WORK/nginx-$1x$2-$3" port i globals= policy
  local vms=$((threads * 2 > 16 ? threads * 2 : 16))
  [ "$(id -u)" -eq 0 ] && globals="user root;" # workers must reach the socket and the checkout
  case $3 in
    slow) policy=$WORK/openresty_policy.lua ;;
    example) policy=$ROOT/examples/openresty/policy.lua ;;
    none) policy= ;; # CAIRNLOOP_POLICY empty: no policy file
  esac
  rm -rf "$dir"
  mkdir -p "$dir"
  for _ in 1 2 3 4 5; do
    port=$(free_port) || continue
    sed -e "s/listen 127\.0\.0\.1:8080;/listen 127.0.0.1:$port;/" \
      -e "s/^worker_processes 2;/worker_processes $workers;/" \
      -e "s/^thread_pool cairnloop threads=8;/thread_pool cairnloop threads=$threads;/" \
      -e "s/init_worker { concurrency = 8 }/init_worker { concurrency = $threads }/" \
      -e "s/lua_worker_thread_vm_pool_size 16;/lua_worker_thread_vm_pool_size $vms;/" \
      -e "s|^\( *\)location = /metrics {|\1include $ROOT/bench/nonblocking/baseline.locations;\n\n&|" \
      examples/openresty/nginx.conf >"$dir/nginx.conf"
    for i in "listen 127.0.0.1:$port;" "worker_processes $workers;" "threads=$threads;" \
      "concurrency = $threads }" "vm_pool_size $vms;" "baseline.locations;"; do
      grep -qF "$i" "$dir/nginx.conf" || die "examples/openresty/nginx.conf changed: cannot set '$i'"
    done
    rm -f "$dir/error.log"
    env CAIRNLOOP_DATABASE_URL="$(db_url $OR_DB)" CAIRNLOOP_POLICY="$policy" \
      nginx -p "$dir/" -c "$dir/nginx.conf" -g "daemon off; $globals" >"$dir/stdout" 2>&1 &
    nginx_pid=$!
    # Ready once /healthz answers 200: a worker has opened its engine.
    for i in $(seq 1 200); do
      alive "$nginx_pid" || break
      if [ "$(curl -s -o /dev/null --max-time 2 -w '%{http_code}' "http://127.0.0.1:$port/healthz")" = 200 ]; then
        NGX_PORT=$port NGX_DIR=$dir
        return 0
      fi
      sleep 0.05
    done
    stop_pid "$nginx_pid" QUIT
    nginx_pid=
    grep -qs 'Address already in use' "$dir/error.log" "$dir/stdout" || break
  done
  cat "$dir/stdout" "$dir/error.log" >&2 2>/dev/null
  die "nginx did not start (workers $workers, threads $threads)"
}

stop_nginx() {
  [ -n "$nginx_pid" ] && stop_pid "$nginx_pid" QUIT
  nginx_pid=
}

# wrk_run CLIENTS SECONDS PATH TAG OUTFILE: the write load, in the background
# (its pid in wrk_pid).
wrk_run() {
  wrk -t 2 -c "$1" -d "${2}s" --timeout 10s -s bench/nonblocking/writes.lua \
    "http://127.0.0.1:$NGX_PORT" -- "$3" "$4" "$CONVERSATIONS" >"$5" 2>&1 &
  wrk_pid=$!
}

engine_connections() {
  sql postgres "SELECT count(*) FROM pg_stat_activity WHERE datname = '$OR_DB' AND backend_type = 'client backend'"
}

# Handlers: yield (the baseline), thread (the engine, 20 ms auditor), and
# the diagnostics thread-example and thread-none (other policies).
path_of() { [ "$1" = yield ] && echo /trigger_yield || echo /trigger; }

# One run: wrk on the path for OR_SECONDS while probe.py times /healthz from
# 0.5 s in to 0.5 s before the end.  Appends a line to $or_raw and the
# probes to $WORK/healthz-<key>.txt.
or_seq=0
or_run() { # WORKERS THREADS CLIENTS HANDLER
  local w=$1 t=$2 c=$3 h=$4 key="$1-$2-$3-$4" tag out probes result stored
  or_seq=$((or_seq + 1))
  tag="nb${or_seq}_$RANDOM"
  out=$WORK/wrk-$or_seq.out probes=$WORK/probes-$or_seq.txt
  sql postgres "CHECKPOINT" >/dev/null
  local ncpu0 scpu0 ncpu1 scpu1
  ncpu0=$(nginx_cpu_ms "$nginx_pid") scpu0=$(server_cpu_ms "$POSTMASTER")
  wrk_run "$c" "$OR_SECONDS" "$(path_of "$h")" "$tag" "$out"
  python3 bench/nonblocking/probe.py 127.0.0.1 "$NGX_PORT" /healthz --rate "$PROBE_RATE" \
    --start 0.5 --duration "$(awk -v s="$OR_SECONDS" 'BEGIN { print s - 1 }')" >"$probes" &
  local probe_pid=$!
  bg_pids=("$wrk_pid" "$probe_pid")
  wait "$probe_pid"
  wait "$wrk_pid"
  bg_pids=()
  ncpu1=$(nginx_cpu_ms "$nginx_pid") scpu1=$(server_cpu_ms "$POSTMASTER")
  result=$(grep '^RESULT ' "$out")
  if [ -z "$result" ]; then
    run_failed "$key: wrk did not report: $(head -c 500 "$out")"
    return
  fi
  read -r _ requests not201 sockerr rps p50 p99 wmax <<<"$result"
  local n bad
  n=$(wc -l <"$probes")
  bad=$(awk '$2 != 200' "$probes" | wc -l)
  awk '$2 == 200 { print $1 }' "$probes" >>"$WORK/healthz-$key.txt"
  [ "$not201 $sockerr" = "0 0" ] || run_failed "$key: $not201 writes not answered 201, $sockerr socket errors"
  [ "$bad" = 0 ] || run_failed "$key: $bad of $n /healthz probes not answered 200"
  if [ "$h" != yield ]; then
    # Answered writes are committed; those in flight at the end may still land.
    stored=$(sql $OR_DB "SELECT count(*) FROM cairnloop.cairnloop_messages WHERE metadata->>'template_id' LIKE '${tag}\\_%'")
    if [ "$stored" -lt "$requests" ] || [ "$stored" -gt $((requests + c)) ]; then
      run_failed "$key: $requests writes answered, $stored messages stored"
    fi
  fi
  if grep -E 'no available Lua vm|\[(alert|crit|emerg)\]|route failed|worker thread failed' \
    "$NGX_DIR/error.log" >"$WORK/bad.log"; then
    run_failed "$key: nginx's error log: $(head -n 3 "$WORK/bad.log")"
    : >"$NGX_DIR/error.log"
  fi
  # CPU per 1,000 writes: the run's requests, plus those in flight at its
  # end (which the CPU figures include), are about the same.
  echo "$key $requests $rps $p50 $p99 $wmax $n $bad $(((ncpu1 - ncpu0) * 1000 / (requests > 0 ? requests : 1))) $(((scpu1 - scpu0) * 1000 / (requests > 0 ? requests : 1)))" >>"$or_raw"
  printf '  round %d: workers %d threads %2d clients %2d %-7s %7.1f writes/s  write p99 %6.1f ms  /healthz p99 %6.2f ms (%d probes)\n' \
    "$round" "$w" "$t" "$c" "$h" "$rps" "$p99" "$(quantiles "$probes" | cut -d' ' -f3)" "$n"
}

openresty_part() {
  local why
  why=$(openresty_missing)
  if [ -n "$why" ]; then
    note "OpenResty part skipped: $why"
    return
  fi
  echo
  echo "OpenResty: $(nginx -v 2>&1 | sed 's/^nginx version: //'), wrk $(wrk -v 2>&1 | sed -n 's/^wrk \([^ ]*\).*/\1/p'); $OR_ROUNDS round(s) of ${OR_SECONDS} s runs; load average $(loadavg)"
  loads+=("OpenResty part: load average at the start $(loadavg)")
  sql postgres "DROP DATABASE IF EXISTS $OR_DB" >/dev/null && sql postgres "CREATE DATABASE $OR_DB" >/dev/null ||
    die "cannot create the database $OR_DB"
  "$CLI" migrate --database "$(db_url $OR_DB)" >/dev/null || die "cairnloop migrate failed"
  sql $OR_DB "INSERT INTO cairnloop.cairnloop_conversations (id, subject)
              SELECT g, 'conversation ' || g FROM generate_series(1, $CONVERSATIONS) AS g;
              SELECT setval(pg_get_serial_sequence('cairnloop.cairnloop_conversations', 'id'), $CONVERSATIONS)" \
    >/dev/null && sql $OR_DB "VACUUM ANALYZE" >/dev/null || die "cannot seed $OR_DB"
  POSTMASTER=$(postmaster)
  slow_policy examples/openresty/policy.lua "$WORK/openresty_policy.lua" \
    '  audit = function(tx, action, actor, metadata)'
  or_raw=$WORK/openresty-runs.txt
  : >"$or_raw"
  rm -f "$WORK"/healthz-*.txt "$WORK"/wrk-*.out "$WORK"/probes-*.txt
  declare -gA or_conns=()
  # Servers: "workers threads policy"; the shipped 8 threads, and (full
  # run) the pool sized to the 32 clients, and two diagnostics: the
  # example's policy without the 20 ms statement, and no policy.
  local servers=("1 8 slow" "2 8 slow") srv w t pol runs r
  [ "$QUICK" = 1 ] || servers+=("1 32 slow" "2 32 slow" "1 8 example" "1 8 none")
  for round in $(seq 1 "$OR_ROUNDS"); do
    while IFS= read -r srv; do
      read -r w t pol <<<"$srv"
      start_nginx "$w" "$t" "$pol"
      # Warm-up, untimed: every thread VM opens its engine on its first
      # call; a second of writes on each path gets them all opened.
      for r in thread yield; do
        wrk_run 32 1 "$(path_of $r)" "warm${round}_$RANDOM" "$WORK/warm.out"
        wait "$wrk_pid"
      done
      or_conns[$w-$t-$pol]=$(engine_connections)
      if [ "$pol" != slow ]; then
        runs=("8 thread-$pol")
      elif [ "$t" = 8 ]; then
        runs=("8 thread" "8 yield" "32 thread" "32 yield")
      else
        runs=("32 thread")
      fi
      while IFS= read -r r; do
        or_run "$w" "$t" $r
      done < <(printf '%s\n' "${runs[@]}" | shuf)
      stop_nginx
    done < <(printf '%s\n' "${servers[@]}" | shuf)
  done
  loads+=("OpenResty part: load average at the end $(loadavg)")
  openresty_report
}

openresty_report() {
  local rows=() w t c h pol key runs rps lo hi p99w n p50 p99 max base_rps base_p99 vs hvs label ncpu scpu
  for w in 1 2; do
    for c in 8 32; do
      for th in "8 thread slow" "8 yield slow" "32 thread slow" "8 thread-example example" "8 thread-none none"; do
        read -r t h pol <<<"$th"
        [ "$t" = 32 ] && [ "$c" = 8 ] && continue
        key="$w-$t-$c-$h"
        read -r rps lo hi runs <<<"$(med "$or_raw" 3 "\$1 == \"$key\"")"
        [ "$runs" = 0 ] && continue
        read -r p99w _ <<<"$(med "$or_raw" 5 "\$1 == \"$key\"")"
        read -r ncpu _ <<<"$(med "$or_raw" 9 "\$1 == \"$key\"")"
        read -r scpu _ <<<"$(med "$or_raw" 10 "\$1 == \"$key\"")"
        read -r n p50 p99 max <<<"$(quantiles "$WORK/healthz-$key.txt")"
        vs='' hvs=''
        if [ "$h" = thread ]; then
          read -r base_rps _ _ bruns <<<"$(med "$or_raw" 3 "\$1 == \"$w-8-$c-yield\"")"
          if [ "$bruns" != 0 ]; then
            read -r _ _ base_p99 _ <<<"$(quantiles "$WORK/healthz-$w-8-$c-yield.txt")"
            vs=$(awk -v a="$rps" -v b="$base_rps" 'BEGIN { printf "%.2fx", a / b }')
            hvs=$(awk -v a="$p99" -v b="$base_p99" 'BEGIN { printf "%.2fx", a / b }')
          fi
          label="engine on the thread pool"
        elif [ "$h" = yield ]; then
          label="yielding baseline (ngx.sleep)"
        elif [ "$h" = thread-example ]; then
          label="engine, the example's policy without the 20 ms"
        else
          label="engine, no policy"
        fi
        rows+=("$w|$t|$c|$label|$runs|$(fmt "$rps")|$(fmt "$lo")-$(fmt "$hi")|$vs|$(ms "$p99w")|$n|$(ms "$p50")|$(ms "$p99")|$(ms "$max")|$hvs|${or_conns[$w-$t-$pol]:-}|$(fmt "$ncpu")|$(fmt "$scpu")")
      done
    done
  done
  print_table \
    "OpenResty: writes on POST /trigger while /healthz is timed on new connections (median of $OR_ROUNDS runs of ${OR_SECONDS} s; /healthz quantiles over all probes)" \
    "workers|threads|clients|handler|runs|writes/s|range writes/s|x baseline|write p99 ms|/healthz probes|/healthz p50 ms|/healthz p99 ms|/healthz max ms|p99 x baseline|engine connections|nginx CPU ms / 1,000 writes|server CPU ms / 1,000 writes" \
    "rrrlrrrrrrrrrrrrr" \
    "Each run: wrk (2 threads, keep-alive, the given clients) POSTs a new trigger per request (its own template id, one of $(fmt $CONVERSATIONS) conversations) for ${OR_SECONDS} s; meanwhile bench/nonblocking/probe.py opens a new connection for each GET /healthz, $PROBE_RATE a second from 0.5 s in to 0.5 s before the end, timing connect to last byte.  The engine on the thread pool: examples/openresty/nginx.conf as shipped (threads = the resty concurrency; 32: the pool sized to the clients), whose policy (the example's) has its auditor first run SELECT pg_sleep(0.02); two diagnostics run the engine with the example's policy as shipped and with no policy.  Yielding baseline: the same body checks, then ngx.sleep(0.02) and a 201, on the same server (bench/nonblocking/baseline.locations).  Every write answered 201 (and, on the thread path, is in PostgreSQL); every probe 200.  write p99: wrk's, median over the runs.  x baseline: over the baseline's at the same workers and clients.  engine connections: PostgreSQL sessions of the server after its warm-up.  CPU: user + system of nginx (master, workers and their thread pools) and of the whole PostgreSQL server over the run, per 1,000 writes answered (medians).  nginx, its threads, wrk, the prober and PostgreSQL share $(nproc) CPUs." \
    "${rows[@]}"
  # Targets: the shipped pool against the baseline.
  for w in 1 2; do
    for c in 8 32; do
      local tk="$w-8-$c-thread" bk="$w-8-$c-yield" tr br tp bp
      read -r tr _ _ truns <<<"$(med "$or_raw" 3 "\$1 == \"$tk\"")"
      read -r br _ _ bruns <<<"$(med "$or_raw" 3 "\$1 == \"$bk\"")"
      [ "$truns" = 0 ] || [ "$bruns" = 0 ] && continue
      read -r _ _ tp _ <<<"$(quantiles "$WORK/healthz-$tk.txt")"
      read -r _ _ bp _ <<<"$(quantiles "$WORK/healthz-$bk.txt")"
      target "OpenResty $w worker(s), $c clients: /healthz p99 <= 3x the baseline's and <= 10 ms" \
        "$(ms "$tp") ms vs $(ms "$bp") ms ($(awk -v a="$tp" -v b="$bp" 'BEGIN { printf "%.3fx", a / b }'))" \
        "$(awk -v a="$tp" -v b="$bp" 'BEGIN { print (a <= 3 * b && a <= 10) ? 1 : 0 }')"
      target "OpenResty $w worker(s), $c clients: writes/s >= 0.75x the baseline's" \
        "$(fmt "$tr") vs $(fmt "$br") ($(awk -v a="$tr" -v b="$br" 'BEGIN { printf "%.3fx", a / b }'))" \
        "$(awk -v a="$tr" -v b="$br" 'BEGIN { print (a >= 0.75 * b) ? 1 : 0 }')"
    done
  done
}

# ---------------------------------------------------------------------------
# The 60 Hz game loop
# ---------------------------------------------------------------------------
GAME_DB=cl_bench_nb_game
if [ "$QUICK" = 1 ]; then LOOP_ROUNDS=1 TICKS=300; else LOOP_ROUNDS=3 TICKS=1200; fi

loop_part() {
  echo
  echo "60 Hz game loop: examples/c-host, $TICKS ticks, $LOOP_ROUNDS round(s); load average $(loadavg)"
  loads+=("game loop part: load average at the start $(loadavg)")
  sql postgres "DROP DATABASE IF EXISTS $GAME_DB" >/dev/null && sql postgres "CREATE DATABASE $GAME_DB" >/dev/null ||
    die "cannot create the database $GAME_DB"
  "$CLI" migrate --database "$(db_url $GAME_DB)" >/dev/null || die "cairnloop migrate failed"
  sql $GAME_DB "INSERT INTO cairnloop.cairnloop_conversations (subject, customer_ref)
                SELECT 'player support', 'player:' || g FROM generate_series(1, 1000) g" >/dev/null ||
    die "cannot seed $GAME_DB"
  cp examples/c-host/policy.lua "$WORK/game_policy.lua"
  slow_policy examples/c-host/policy.lua "$WORK/game_policy_slow.lua" \
    '  audit = function(tx, action, actor, md)'
  loop_raw=$WORK/loop-runs.txt
  : >"$loop_raw"
  local night=0 round p out rc
  for round in $(seq 1 "$LOOP_ROUNDS"); do
    while IFS= read -r p; do
      night=$((night + 1))
      # Untimed: what autovacuum and the checkpointer would do between nights.
      sql $GAME_DB "VACUUM ANALYZE" >/dev/null
      sql postgres "CHECKPOINT" >/dev/null
      out=$WORK/loop-$night.out
      rc=0
      env CAIRNLOOP_DATABASE_URL="$(db_url $GAME_DB)" GAME_NIGHT=$night \
        timeout 600 "$GAME" --ticks "$TICKS" "$WORK/game_policy$([ "$p" = slow ] && echo _slow).lua" \
        >"$out" 2>"$WORK/loop-$night.err" || rc=$?
      if [ "$rc" != 0 ] || ! grep -q '^summary: .*result=ok' "$out"; then
        run_failed "game loop ($p policy, night $night): exit status $rc, $(tail -n 2 "$out" "$WORK/loop-$night.err" | tr '\n' ' ')"
        continue
      fi
      # ticks: N (...) over_budget=K p50=Xms p99=Xms max=Xms
      local line nticks over tp50 tp99 tmax lat k
      line=$(grep '^ticks: ' "$out")
      nticks=$(sed -n 's/^ticks: \([0-9]*\) .*/\1/p' <<<"$line")
      over=$(sed -n 's/.* over_budget=\([0-9]*\) .*/\1/p' <<<"$line")
      tp50=$(sed -n 's/.* p50=\([0-9.]*\)ms.*/\1/p' <<<"$line")
      tp99=$(sed -n 's/.* p99=\([0-9.]*\)ms.*/\1/p' <<<"$line")
      tmax=$(sed -n 's/.* max=\([0-9.]*\)ms.*/\1/p' <<<"$line")
      lat=
      for k in trigger bulk work; do
        lat+=" $(sed -n "s/^latency $k: n=\([0-9]*\) p50=\([0-9.]*\)ms p99=\([0-9.]*\)ms max=\([0-9.]*\)ms$/\1 \2 \3 \4/p" "$out")"
      done
      echo "$p $nticks $over $tp50 $tp99 $tmax$lat" >>"$loop_raw"
      printf '  round %d: %-7s policy  %d ticks, %d over budget, tick p99 %s ms max %s ms; trigger p50/p99 %s ms\n' \
        "$round" "$p" "$nticks" "$over" "$tp99" "$tmax" "$(awk '{ print $8 "/" $9 }' <<<"$p $nticks $over $tp50 $tp99 $tmax$lat")"
    done < <(printf '%s\n' example slow | shuf)
  done
  loads+=("game loop part: load average at the end $(loadavg)")
  loop_report
}

loop_report() {
  local rows=() lrows=() p label runs overs tp50 tp99 tmax tlo thi k col
  for p in example slow; do
    read -r _ _ _ runs <<<"$(med "$loop_raw" 2 "\$1 == \"$p\"")"
    [ "$runs" = 0 ] && continue
    [ "$p" = slow ] && label="example's + 20 ms statement" || label="the example's"
    overs=$(awk -v p="$p" '$1 == p { printf "%s%s", s, $3; s = ", " }' "$loop_raw")
    read -r tp50 _ <<<"$(med "$loop_raw" 4 "\$1 == \"$p\"")"
    read -r tp99 _ _ <<<"$(med "$loop_raw" 5 "\$1 == \"$p\"")"
    read -r _ _ tmax _ <<<"$(med "$loop_raw" 6 "\$1 == \"$p\"")"
    read -r _ tlo thi _ <<<"$(med "$loop_raw" 2 "\$1 == \"$p\"")"
    rows+=("$label|$runs|$([ "$tlo" = "$thi" ] && echo "$tlo" || echo "$tlo-$thi")|$overs|$(ms "$tp50")|$(ms "$tp99")|$(ms "$tmax")")
    col=7
    for k in trigger bulk work; do
      local n l50 l99 lmax
      read -r n _ <<<"$(med "$loop_raw" "$col" "\$1 == \"$p\"")"
      read -r l50 _ <<<"$(med "$loop_raw" $((col + 1)) "\$1 == \"$p\"")"
      read -r l99 _ <<<"$(med "$loop_raw" $((col + 2)) "\$1 == \"$p\"")"
      read -r _ _ lmax _ <<<"$(med "$loop_raw" $((col + 3)) "\$1 == \"$p\"")"
      lrows+=("$label|$k|$n|$(ms "$l50")|$(ms "$l99")|$(ms "$lmax")")
      col=$((col + 4))
    done
  done
  print_table "60 Hz game loop (examples/c-host, asynchronous C API): tick time (median of $LOOP_ROUNDS runs; max: over all runs)" \
    "policy|runs|ticks per run|ticks over 16.7 ms, each run|tick p50 ms|tick p99 ms|tick max ms" "lrrrrrr" \
    "A tick: ~2 ms of simulated game work, one cl_async_poll (the completion callbacks), the submissions; the time the loop sleeps is not in it.  Every 30 ticks a raid: a 1,000-recipient bulk and 3 triggers; a delivery slice of up to 250 jobs whenever none is in flight.  $TICKS ticks with events, then ticks without until delivery caught up (counted too).  Each run passed the example's own checks (every submission completed once, on the loop's thread; every message written sent)." \
    "${rows[@]}"
  print_table "60 Hz game loop: completion latency, submission to callback (median of the runs' quantiles; max: over all runs)" \
    "policy|operation|per run|p50 ms|p99 ms|max ms" "llrrrr" \
    "Measured by the example from the submission to its callback, which runs at the next once-a-tick poll: it includes up to one tick (16.7 ms) of waiting for that poll, and the operations queued before it (the engine thread runs one at a time, in submission order).  trigger: one check-in, audited; bulk: one 1,000-recipient envelope, audited once; work: one delivery slice (up to 250 jobs, the example's C notifier)." \
    "${lrows[@]}"
  read -r _ _ _ runs <<<"$(med "$loop_raw" 2 '$1 == "slow"')"
  if [ "$runs" != 0 ]; then
    local maxover
    maxover=$(awk '$1 == "slow" && $3 > m { m = $3 } END { print m + 0 }' "$loop_raw")
    read -r tp99 _ <<<"$(med "$loop_raw" 5 '$1 == "slow"')"
    read -r _ _ tmax _ <<<"$(med "$loop_raw" 6 '$1 == "slow"')"
    target "60 Hz loop, 20 ms auditor, durable: 0 ticks over budget in every run" \
      "$(awk '$1 == "slow" { printf "%s%s", s, $3; s = ", " }' "$loop_raw") of $(awk '$1 == "slow" { printf "%s%s", s, $2; s = ", " }' "$loop_raw"); tick p99 $(ms "$tp99") ms, max $(ms "$tmax") ms" \
      "$([ "$maxover" = 0 ] && echo 1 || echo 0)"
  fi
}

# ---------------------------------------------------------------------------
# The asynchronous C API's per-call cost
# ---------------------------------------------------------------------------
ASYNC_DB=cl_bench_nb_async
if [ "$QUICK" = 1 ]; then OVH_ARGS=(--rounds 3 --calls 50 --query-calls 200)
else OVH_ARGS=(--rounds 15 --calls 200 --query-calls 1000); fi

# The postmaster: the parent of a server process that stays.
postmaster() {
  ps -o ppid= -p "$(sql postgres "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")" | tr -d ' '
}

overhead_part() {
  echo
  echo "Asynchronous C API per call: $OVERHEAD ${OVH_ARGS[*]}; load average $(loadavg)"
  loads+=("overhead part: load average at the start $(loadavg)")
  sql postgres "DROP DATABASE IF EXISTS $ASYNC_DB" >/dev/null && sql postgres "CREATE DATABASE $ASYNC_DB" >/dev/null ||
    die "cannot create the database $ASYNC_DB"
  "$CLI" migrate --database "$(db_url $ASYNC_DB)" >/dev/null || die "cairnloop migrate failed"
  sql $ASYNC_DB "INSERT INTO cairnloop.cairnloop_conversations (id, subject)
                 SELECT g, 'conversation ' || g FROM generate_series(1, 100) AS g;
                 SELECT setval(pg_get_serial_sequence('cairnloop.cairnloop_conversations', 'id'), 100)" \
    >/dev/null || die "cannot seed $ASYNC_DB"
  local rows=() placement out rc pm mask shown spaired
  # Twice: where the scheduler puts the threads (how a host runs; the
  # target), then with the program and the server's new backends on one
  # CPU (taskset), which takes the cost of waking a thread on another CPU
  # out of both paths and leaves the engine's own.
  for placement in free one-cpu; do
    out=$WORK/overhead-$placement.out rc=0
    sql postgres "CHECKPOINT" >/dev/null
    if [ "$placement" = free ]; then
      CAIRNLOOP_DATABASE_URL=$(db_url $ASYNC_DB) "$OVERHEAD" "${OVH_ARGS[@]}" --conversations 100 \
        >"$out" 2>"$WORK/overhead.err" || rc=$?
    else
      command -v taskset >/dev/null || { note "the one-CPU overhead run needs taskset (util-linux): skipped"; continue; }
      # Backends inherit the postmaster's affinity when they are forked.
      pm=$(postmaster)
      mask=$(taskset -p "$pm" | sed -n 's/.*: //p')
      taskset -p -c 0 "$pm" >/dev/null || { note "cannot pin the server to CPU 0: one-CPU run skipped"; continue; }
      CAIRNLOOP_DATABASE_URL=$(db_url $ASYNC_DB) taskset -c 0 "$OVERHEAD" "${OVH_ARGS[@]}" --conversations 100 \
        >"$out" 2>"$WORK/overhead.err" || rc=$?
      taskset -p "$mask" "$pm" >/dev/null
    fi
    echo "  $placement:"
    sed -n 's/^summary /    /p' "$out"
    if [ "$rc" != 0 ]; then
      run_failed "async_overhead ($placement): exit status $rc: $(cat "$WORK/overhead.err")"
      continue
    fi
    local op line b a ratio paired rounds calls lo hi blo bhi label
    for op in trigger query call; do
      line=$(grep "^summary $op " "$out") || continue
      b=$(sed -n 's/.* blocking_us=\([0-9.]*\).*/\1/p' <<<"$line")
      a=$(sed -n 's/.* async_us=\([0-9.]*\).*/\1/p' <<<"$line")
      ratio=$(sed -n 's/.* ratio=\([0-9.]*\).*/\1/p' <<<"$line")
      paired=$(sed -n 's/.* paired_ratio=\([0-9.]*\).*/\1/p' <<<"$line")
      rounds=$(sed -n 's/.* rounds=\([0-9]*\).*/\1/p' <<<"$line")
      calls=$(sed -n 's/.* calls=\([0-9]*\).*/\1/p' <<<"$line")
      read -r _ lo hi _ <<<"$(awk -v op="$op" '$1 == "round" && $3 == op && $4 == "async" { print $5 }' "$out" | med /dev/stdin 1)"
      read -r _ blo bhi _ <<<"$(awk -v op="$op" '$1 == "round" && $3 == op && $4 == "blocking" { print $5 }' "$out" | med /dev/stdin 1)"
      case $op in
        trigger) label="cl_trigger (message + job, durable commit)" ;;
        query) label="cl_query SELECT 1 (read-only transaction)" ;;
        call) label="the hand-off alone (cl_async_call of a no-op)" ;;
      esac
      shown=- spaired=-
      # Against a direct call of the same no-op, a ratio says nothing.
      if [ "$op" != call ]; then
        shown=$(awk -v x="$ratio" 'BEGIN { printf "%.2f", x }') spaired=$(awk -v x="$paired" 'BEGIN { printf "%.2f", x }')
      fi
      rows+=("$label|$([ "$placement" = free ] && echo "the scheduler's" || echo "one CPU")|$rounds|$calls|$(fmt "$b")|$(fmt "$blo")-$(fmt "$bhi")|$(fmt "$a")|$(fmt "$lo")-$(fmt "$hi")|$shown|$spaired|$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.1f", a - b }')")
      if [ "$op" = trigger ] && [ "$placement" = free ]; then
        # Judged and shown unrounded: 1.154 must not read as a met 1.15.
        target "Asynchronous trigger, no slow hook: <= 1.15x the blocking call" \
          "${ratio}x ($(fmt "$a") vs $(fmt "$b") us per call; paired ${paired}x)" \
          "$(awk -v x="$ratio" 'BEGIN { print (x <= 1.15) ? 1 : 0 }')"
      fi
    done
  done
  loads+=("overhead part: load average at the end $(loadavg)")
  print_table "Asynchronous C API: per-call time against the blocking call, no hook loaded (median of the rounds)" \
    "operation|placement|rounds|calls per round|blocking us/call|range|async us/call|range|ratio|paired ratio|added us/call" \
    "llrrrrrrrrr" \
    "Each round times N sequential blocking calls (cl_open's engine) and N sequential asynchronous round trips on an engine of cl_async_open (submit, poll(2) on cl_async_fd, cl_async_poll running the callback), the order swapped every other round; both engines on the same database, each with its connection.  ratio: the async median over the blocking one; paired ratio: the median of the rounds' own ratios.  Placement: the scheduler's (as a host runs; the target), or one CPU: the program (taskset -c 0) and the server's backends (the postmaster pinned while they are forked) on CPU 0, so that no round trip wakes a thread on another CPU." \
    "${rows[@]}"
}

want openresty && openresty_part
want loop && loop_part
want overhead && overhead_part

# ---------------------------------------------------------------------------
# Targets and the tail
# ---------------------------------------------------------------------------
if [ $total -gt 0 ]; then
  print_table "Non-blocking hosts: targets (this run)" "target|measured|result" "lrl" \
    "$met of $total targets met." "${targets[@]}"
fi

elapsed=$(awk -v us=$(($(now_us) - t_start)) 'BEGIN { printf "%.0f", us / 1e6 }')
tail="non-blocking hosts: $elapsed s; load average at the end $(loadavg)"
echo
echo "$tail"
for n in "${loads[@]}"; do echo "$n"; done
for n in "${notes[@]}"; do echo "note: $n"; done
{
  printf -- '- %s\n' "$machine" "$server" "${loads[@]}" "$tail" "${notes[@]}"
  printf '\n'
} >>"$md"

if [ -n "$OUT" ]; then
  {
    printf '## Non-blocking hosts: OpenResty, the 60 Hz game loop, the asynchronous C API\n\n'
    cat "$md"
  } >>"$OUT"
  echo "markdown: appended to $OUT"
fi
[ "$failed" = 0 ] || { echo "hosts bench: a run FAILED (see above; logs in $WORK)" >&2; exit 1; }
exit 0
