# Shared by the tests/integration/webhook_*.sh suites of the ready-made
# webhook notifier (lua/cairnloop/webhook.lua), sourced, not run.  Builds
# on work_lib.bash (TAP, sql, workers, wait_until) and adds real HTTP
# receivers (tests/integration/receiver.py, on 127.0.0.1), which verify
# every request's Standard Webhooks signature with Python's hmac:
#
#   new_secret                    prints a fresh "whsec_<base64 of 24 bytes>"
#   start_receiver NAME ARGS...   starts receiver.py (ARGS: --secret S,
#                                 --delay-ms N, ...); waits for its port
#   rcv_url NAME                  its delivery URL, http://127.0.0.1:PORT/hook
#   rcv_allow NAME                the --http-allow pattern for just that port
#   rcv_get NAME PATH             prints GET PATH (/_stats, /_ids, /_requests)
#   rcv_control NAME JSON         POSTs JSON to /_control (scripts, delays)
#   rcv_stat NAME EXPR            EXPR (Lua, over the decoded /_stats as `r`)
#   rcv_ids NAME EXPR             the same over /_ids
#   rcv_requests NAME EXPR        the same over /_requests
#   rcv_wait SECS NAME EXPR       waits until EXPR over /_stats is true
#   stop_receiver NAME            stops it
#   webhook_worker NAME URL SECRET ARGS...
#                                 starts `cairnloop work --policy webhook.lua
#                                 ARGS` configured by the environment
#   wait_worker_exit SECS NAME    waits until NAME's process ended
#   job_of TEMPLATE EXPR          EXPR over the template's (single) job row
#   all_final N                   true when N jobs are completed, discarded or cancelled
#
# Every receiver also watches this shell (--parent-pid) and ends with it.

. "$(dirname "${BASH_SOURCE[0]}")/work_lib.bash"

WEBHOOK_POLICY="$CLI_TEST_ROOT/lua/cairnloop/webhook.lua"
RECEIVER="$CLI_TEST_ROOT/tests/integration/receiver.py"
# The receiver needs Python 3 (standard library only).
PYTHON=$(command -v python3 || true)
[ -x /usr/bin/python3 ] && PYTHON=/usr/bin/python3

# A test's own variables must not leak in from the caller's environment.
unset CAIRNLOOP_HTTP_ALLOW CAIRNLOOP_WEBHOOK_URL CAIRNLOOP_WEBHOOK_SECRET CAIRNLOOP_WEBHOOK_TIMEOUT_MS

declare -A rcv_pids=() rcv_ports=()

on_exit_more() {
  local name
  for name in "${!rcv_pids[@]}"; do
    kill -TERM "${rcv_pids[$name]}" 2>/dev/null || true
  done
}

need_python() {
  if [ -z "$PYTHON" ]; then
    tap_plan="1..0 # SKIP python3 is not installed (the test receiver needs it)"
    exit 0
  fi
}

new_secret() { echo "whsec_$(head -c 24 /dev/urandom | base64)"; }

start_receiver() {
  local name=$1 port_file="$cl_tmp/$1.port"
  shift
  rm -f "$port_file"
  "$PYTHON" "$RECEIVER" --port-file "$port_file" --parent-pid $$ --max-lifetime 290 "$@" \
    >"$cl_tmp/rcv_$name.out" 2>"$cl_tmp/rcv_$name.err" </dev/null &
  rcv_pids[$name]=$!
  if ! wait_until 10 test -s "$port_file"; then
    tap 1 "receiver $name starts" "$(cat "$cl_tmp/rcv_$name.err")"
    exit 1
  fi
  rcv_ports[$name]=$(cat "$port_file")
}

stop_receiver() {
  kill -TERM "${rcv_pids[$1]}" 2>/dev/null || true
  wait "${rcv_pids[$1]}" 2>/dev/null || true
  unset "rcv_pids[$1]"
}

rcv_url() { echo "http://127.0.0.1:${rcv_ports[$1]}/hook"; }
rcv_allow() { echo "http://127.0.0.1:${rcv_ports[$1]}"; }
rcv_get() { curl -sf --max-time 10 "http://127.0.0.1:${rcv_ports[$1]}$2"; }
rcv_control() {
  curl -sf --max-time 10 -o /dev/null -H 'Content-Type: application/json' --data "$2" \
    "http://127.0.0.1:${rcv_ports[$1]}/_control"
}
rcv_stat() { jget "$2" "$(rcv_get "$1" /_stats)"; }
rcv_ids() { jget "$2" "$(rcv_get "$1" /_ids)"; }
rcv_requests() { jget "$2" "$(rcv_get "$1" /_requests)"; }
rcv_true() { [ "$(rcv_stat "$1" "$2")" = true ]; }
rcv_wait() { wait_until "$1" rcv_true "$2" "$3"; }

# webhook_worker NAME URL SECRET [ARGS...]: the policy file configured by
# the environment, as an operator runs it.
webhook_worker() {
  local name=$1 url=$2 secret=$3
  shift 3
  CAIRNLOOP_WEBHOOK_URL=$url CAIRNLOOP_WEBHOOK_SECRET=$secret \
    start_worker "$name" --policy "$WEBHOOK_POLICY" "$@"
}

worker_gone() { ! kill -0 "${worker_pids[$1]}" 2>/dev/null; }
wait_worker_exit() { wait_until "$1" worker_gone "$2"; }

job_of() {
  sql "SELECT $2 FROM cairnloop.cairnloop_delivery_jobs WHERE template_id = '$1'"
}
msg_status_of() {
  sql "SELECT m.metadata->>'status' FROM cairnloop.cairnloop_messages m
       JOIN cairnloop.cairnloop_delivery_jobs j ON j.message_id = m.id WHERE j.template_id = '$1'"
}
all_final() {
  sql_is_true "SELECT count(*) = $1 FROM cairnloop.cairnloop_delivery_jobs
               WHERE state IN ('completed', 'discarded', 'cancelled')"
}
job_states() { sql "SELECT template_id, state, attempt, errors FROM cairnloop.cairnloop_delivery_jobs ORDER BY id"; }
