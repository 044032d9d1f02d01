#!/usr/bin/env bash
# `cairnloop work` as a command: --once and --json, option errors, and
# stopping.  SIGTERM in the middle of a batch finishes the job in hand,
# hands the claimed but unstarted jobs back (another worker takes them at
# once, no lease to wait out) and exits 0; SIGINT while idle exits 0 too.
set -u
. "$(dirname "$0")/work_lib.bash"
need_database

cl migrate
exits 0 "migrate"
seed_conversations 1 200

# --- options
cl work --limit 0
exits 2 "--limit 0 is a usage error"
like "$err" "^cairnloop: invalid_argument: --limit" "the error names --limit"
cl work --limit 10001
exits 2 "--limit above 10000 is refused"
cl work --max-attempts 0
exits 2 "--max-attempts 0 is refused"
cl work --lease-seconds x
exits 2 "--lease-seconds must be an integer"
cl work --backoff-base-ms 0
exits 2 "--backoff-base-ms 0 is refused"
like "$err" "^cairnloop: invalid_argument: --backoff-base-ms" "the error names --backoff-base-ms"
cl work --once extra
exits 2 "work takes no arguments"
cl work --help
exits 0 "work --help"
like "$out" "--once" "the help lists --once"
like "$out" "--backoff-base-ms MS" "the help lists --backoff-base-ms"
cl work --once --database "postgresql:///nonexistent_db_$$?host=${PGHOST:-/nonexistent}"
exits 6 "an unreachable database is a db_error"

# --- --once
cl trigger 1 --template once_a
cl trigger 2 --template once_b
cl work --once --limit 1
exits 0 "work --once delivers one batch"
is "$out" "sent 0, failed 0, no_op 1, retried 0, discarded 0" "--once --limit 1: one job, no notifier: no_op"
cl work --once --json
is "$out" '{"sent":0,"failed":0,"no_op":1,"retried":0,"discarded":0}' "--once --json prints the counts as one object"
cl work --once --json
is "$out" '{"sent":0,"failed":0,"no_op":0,"retried":0,"discarded":0}' "nothing due: zero counts"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_messages WHERE metadata->>'status' = 'sent'")" "2" \
  "no_op deliveries mark the messages sent"

# --- SIGTERM mid-batch hands the rest back
slow=$(recording_policy slow 40)
cl_in "$(seq 1 100)" bulk --template "stop_$$" --body "Hi" --ids-file - --max-batch-size 100
start_worker w --policy "$slow" --limit 100
wait_log 10 w 'delivered [0-9]+:1' || true
t0=$(date +%s%N)
stop_worker w TERM
ms=$((($(date +%s%N) - t0) / 1000000))
exits 0 "SIGTERM mid-batch: exit status 0"
if [ "$ms" -lt 2000 ]; then tap 0 "it stops without finishing the batch (${ms} ms)"; else tap 1 "it stops promptly (${ms} ms)"; fi
delivered=$(delivery_log w | wc -l)
like "$err" "handed back [0-9]+ claimed jobs not yet started" "it reports the jobs it handed back"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE template_id = 'stop_$$' AND state = 'completed'")" \
  "$delivered" "the jobs it delivered are completed"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE template_id = 'stop_$$' AND state = 'available' AND attempt = 0 AND lease_owner IS NULL")" \
  "$((100 - delivered))" "the others are available again, attempt and lease reset"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE state = 'executing'")" "0" "no lease is left behind"
like "$out" "^sent $delivered, failed 0" "the totals count what it delivered"

# Another worker takes the rest at once.
fast=$(recording_policy fast)
start_worker w2 --policy "$fast" --limit 100
if wait_for 5 "SELECT count(*) = 100 FROM cairnloop.cairnloop_delivery_jobs WHERE template_id = 'stop_$$' AND state = 'completed'"; then
  tap 0 "another worker delivers the handed-back jobs right away"
else
  tap 1 "another worker delivers the handed-back jobs right away"
fi
# --- SIGINT while idle
wait_idle 5 1 || true
stop_worker w2 INT
exits 0 "SIGINT while idle: exit status 0"
like "$err" "stopped by SIGINT" "it says why it stopped"
is "$(delivery_log w w2 | cut -d: -f1 | sort | uniq -d | wc -l)" "0" "no message was delivered twice"

# --- on a terminal the progress line is redrawn with an escape sequence;
# on a dumb one (TERM=dumb) or under NO_COLOR it is plain text
for term in xterm dumb nocolor; do
  tpl="tty_${term}_$$"
  cl_in "$(seq 101 150)" bulk --template "$tpl" --body Hi --ids-file - --max-batch-size 100
  env_term=$term env_nc=
  [ "$term" = nocolor ] && env_term=xterm env_nc=1
  # exec: the worker is script's own child, whatever sh does with -c.
  TERM=$env_term NO_COLOR=$env_nc script -qefc "exec cairnloop work --limit 10" "$cl_tmp/$tpl.tty" \
    >/dev/null 2>&1 </dev/null &
  spid=$!
  wait_for 10 "SELECT count(*) = 50 FROM cairnloop.cairnloop_delivery_jobs WHERE template_id = '$tpl' AND state = 'completed'" ||
    tap 1 "the worker on a terminal ($term) delivers"
  pkill -INT -P "$spid" -x cairnloop 2>/dev/null
  # Bounded: a worker that ignored the signal is killed, and the test fails below.
  for _ in $(seq 100); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$spid" 2>/dev/null; then
    pkill -KILL -P "$spid" 2>/dev/null
    kill -KILL "$spid" 2>/dev/null
    tap 1 "the worker on a terminal ($term) stops on SIGINT"
  fi
  wait "$spid" 2>/dev/null
  escapes=$(tr -cd '\033' <"$cl_tmp/$tpl.tty" | wc -c)
  case $term in
    xterm) [ "$escapes" -gt 0 ]; tap $? "TERM=xterm: the progress line is redrawn in place ($escapes escapes)" ;;
    *) is "$escapes" 0 "TERM=$env_term${env_nc:+ NO_COLOR=1}: no escape sequence in the worker's output" ;;
  esac
done

# --- a running worker prunes finished jobs past their retention, as often
# as --retention-interval-ms says; the message stays (the audit record)
cl trigger 3 --template "prune_$$"
cl work --once
sql "UPDATE cairnloop.cairnloop_delivery_jobs SET completed_at = now() - interval '2 days'
     WHERE template_id = 'prune_$$'" >/dev/null
start_worker w3 --retention-completed 1d --retention-interval-ms 100
if wait_for 10 "SELECT count(*) = 0 FROM cairnloop.cairnloop_delivery_jobs WHERE template_id = 'prune_$$'"; then
  tap 0 "a worker with --retention-interval-ms 100 deletes a job finished 2 days ago"
else
  tap 1 "a worker with --retention-interval-ms 100 deletes a job finished 2 days ago"
fi
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_messages WHERE metadata->>'template_id' = 'prune_$$'")" "1" \
  "its message stays"
stop_worker w3 INT
exits 0 "the pruning worker stops with status 0"
cl work --retention-interval-ms 5 --once
exits 2 "--retention-interval-ms below 10 ms is a usage error"
