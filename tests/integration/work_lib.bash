# Shared by the tests/integration/work_*.sh fault tests of `cairnloop work`
# (sourced, not run).  Builds on cli_lib.bash (TAP, sql, seeding) and adds
# worker processes:
#
#   start_worker NAME ARGS...  runs `cairnloop work ARGS` in the background,
#                              stdout/stderr to $cl_tmp/NAME.out/.err
#   stop_worker NAME [SIGNAL]  signals it (default TERM), waits, sets $rc
#   worker_pid NAME            its pid
#   wait_for SECS SQL          polls until SQL returns "t"; false on timeout
#   wait_log SECS NAME REGEX [COUNT]
#                              polls until NAME's stderr has COUNT (default 1)
#                              matching lines
#   wait_idle SECS N           polls until N workers sit in their idle wait
#   log_has NAME REGEX DESC    passes when a line of NAME's stderr matches
#   delivery_log NAMES...      the "delivered <message id>:<attempt> <key>"
#                              lines the recording policy logged, as "id:attempt"
#   delivery_keys NAMES...     the same lines as "id key" (the idempotency key)
#   policy_file NAME BODY      writes a policy script, prints its path
#   drain_two N TEMPLATE SECS  with workers a and b started: waits until both
#                              are idle, bulks N recipients, waits (at most
#                              SECS) until every job completed, stops both;
#                              sets elapsed_ms, a_out and b_out
#
# Deliveries are observed through the policy itself: its notifier logs one
# line per call with cl.log (policy scripts cannot open files or sockets),
# and `cairnloop work` writes engine log lines to stderr.  Every worker
# still running at exit is killed.

. "$(dirname "${BASH_SOURCE[0]}")/cli_lib.bash"

declare -A worker_pids=()

on_exit() {
  local name
  for name in "${!worker_pids[@]}"; do
    kill -KILL "${worker_pids[$name]}" 2>/dev/null || true
  done
  if declare -F on_exit_more >/dev/null; then on_exit_more; fi
}

start_worker() {
  local name=$1
  shift
  cairnloop work "$@" >"$cl_tmp/$name.out" 2>"$cl_tmp/$name.err" </dev/null &
  worker_pids[$name]=$!
}

worker_pid() { echo "${worker_pids[$1]}"; }

stop_worker() {
  local name=$1 sig=${2:-TERM} pid=${worker_pids[$1]}
  rc=0
  kill -"$sig" "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || rc=$?
  unset "worker_pids[$name]"
  out=$(cat "$cl_tmp/$name.out")
  err=$(cat "$cl_tmp/$name.err")
}

# Both poll (wait_until); the deadline keeps a hung test from eating the
# suite's budget.
sql_is_true() { [ "$(sql "$1")" = t ]; }
wait_for() { wait_until "$1" sql_is_true "$2"; }

log_count_at_least() { # NAME REGEX COUNT (no file yet: none)
  local n
  n=$(grep -cE "$2" "$cl_tmp/$1.err" 2>/dev/null)
  [ "${n:-0}" -ge "$3" ]
}
wait_log() { wait_until "$1" log_count_at_least "$2" "$3" "${4:-1}"; }

# A worker is idle once its session's last statement is the one
# cl_work_wait runs after subscribing (it asks pg_listening_channels()) and
# the session waits for the client: the worker sleeps in its wait,
# listening, until a notification, a due job or its fallback poll.
wait_idle() {
  wait_for "$1" "SELECT count(*) = $2 FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND state = 'idle' AND query LIKE '%pg_listening_channels()%'"
}

log_has() {
  if grep -qE "$2" "$cl_tmp/$1.err"; then tap 0 "$3"; else tap 1 "$3" "no line matching /$2/" "$(grep -v 'policy: delivered' "$cl_tmp/$1.err" | tail -5)"; fi
}

delivery_log() {
  local name
  for name in "$@"; do
    sed -n -E 's/.*policy: delivered ([0-9]+:[0-9]+).*/\1/p' "$cl_tmp/$name.err"
  done
}

delivery_keys() {
  local name
  for name in "$@"; do
    sed -n -E 's/.*policy: delivered ([0-9]+):[0-9]+ ([^ ]+).*/\1 \2/p' "$cl_tmp/$name.err"
  done
}

policy_file() {
  local path="$cl_tmp/$1.lua"
  printf '%s\n' "$2" >"$path"
  echo "$path"
}

# recording_policy [NAME [BUSY_MS]]: a notifier that logs every call and
# succeeds; BUSY_MS spins that long per delivery (CPU time: the sandbox has
# no sleep), standing in for a slow provider.  Prints the script's path.
recording_policy() {
  policy_file "${1:-record}" 'local cl = require "cairnloop"
local busy = '"${2:-0}"' / 1000
cl.notifier(function(message, conversation, delivery)
  cl.log("info", "delivered " .. message.id .. ":" .. delivery.attempt .. " " .. delivery.idempotency_key)
  if busy > 0 then
    local t = os.clock() + busy
    while os.clock() < t do end
  end
  return true
end)'
}

# private_cluster DB: a throwaway cluster of the suite's own (tests/pg.sh),
# for tests that stop and crash the server, with DB created in it and every
# client pointed at it; stopped at exit.  pg_ctl_ ARGS runs its pg_ctl
# ($PG_BIN, as tests/pg.sh found it).
private_cluster() {
  local root db=$1 pg_env
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  if ! pg_env=$("$root/tests/pg.sh" start 2>"$cl_tmp/pg.err"); then
    tap 1 "start a private cluster" "$(cat "$cl_tmp/pg.err")"
    exit 1
  fi
  eval "$pg_env"
  PRIVATE_PG_SH="$root/tests/pg.sh"
  on_exit_more() { "$PRIVATE_PG_SH" stop "$CL_PG_DIR" >/dev/null 2>&1 || true; }
  createdb "$db"
  export PGDATABASE=$db
  export CAIRNLOOP_DATABASE_URL="postgresql:///$db?host=$PGHOST&port=$PGPORT&user=$PGUSER"
}

pg_ctl_() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$PG_BIN/pg_ctl" "$@"; else "$PG_BIN/pg_ctl" "$@"; fi
}

drain_two() {
  local n=$1 template=$2 secs=$3 started
  # Both are up and subscribed once they sit in their idle wait.
  if wait_idle 10 2; then
    tap 0 "both workers are idle, listening"
  else
    tap 1 "both workers are idle, listening" "$(sql "SELECT state, query FROM pg_stat_activity WHERE datname = current_database()")"
  fi
  started=$(date +%s%N)
  cl_in "$(seq 1 "$n")" bulk --template "$template" --body "Hello" --ids-file - --max-batch-size "$n"
  exits 0 "bulk of $n recipients is accepted"
  if wait_for "$secs" "SELECT count(*) = $n FROM cairnloop.cairnloop_delivery_jobs WHERE state = 'completed'"; then
    tap 0 "all $n jobs completed"
  else
    tap 1 "all $n jobs completed" "$(sql "SELECT state, count(*) FROM cairnloop.cairnloop_delivery_jobs GROUP BY 1")"
  fi
  elapsed_ms=$((($(date +%s%N) - started) / 1000000))
  stop_worker a TERM
  exits 0 "worker a stops with status 0 on SIGTERM"
  a_out=$out
  stop_worker b TERM
  exits 0 "worker b stops with status 0 on SIGTERM"
  b_out=$out
}
