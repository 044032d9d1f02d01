#!/usr/bin/env bash
# PostgreSQL crashes (`pg_ctl -m immediate`) while two `cairnloop work`
# processes deliver 3,200 messages, and comes back: no worker died, so no
# message may reach the notifier twice.  Every batch a worker delivered
# before the crash is recorded once it reconnects (its lease still names
# it), and every message is delivered exactly once, on attempt 1.
#
# Bug (issue 10): 200 of 3,200 messages went out twice.  The server's
# goodbye was read as the completion's error while libpq still called the
# connection good, so the worker gave the batch up instead of recording it
# after reconnecting, and the jobs were delivered again after their lease.
# Runs on a private cluster (tests/pg.sh) so the crash disturbs no other
# suite.
set -u
. "$(dirname "$0")/work_lib.bash"

private_cluster work_crash

N=3200
LIMIT=100
cl migrate
exits 0 "migrate"
seed_conversations 1 "$N"
policy=$(recording_policy record 2)
cl_in "$(seq 1 "$N")" bulk --template "crash_$$" --body "Hello" --ids-file - --max-batch-size "$N"
exits 0 "bulk of $N recipients is accepted"

completed() { sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE state = 'completed'"; }

# A lease long enough that no batch is rescued while the server is back up
# within it: a repeat could then only come from a worker forgetting what it
# delivered.
start_worker a --policy "$policy" --limit "$LIMIT" --lease-seconds 20
start_worker b --policy "$policy" --limit "$LIMIT" --lease-seconds 20
wait_for 30 "SELECT count(*) >= 600 FROM cairnloop.cairnloop_delivery_jobs WHERE state = 'completed'" || true

# Crash while both hold batches: the deliveries they make meanwhile have
# no server to be recorded on.
holding=$(sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE state = 'executing'")
done_before=$(completed)
pg_ctl_ -D "$CL_PG_DIR/data" -m immediate -w -t 30 stop >/dev/null
delivered_at_crash=$(delivery_log a b | wc -l)
# Down for a moment: both workers see the outage mid-batch.
wait_log 5 a "failed|db_error" || wait_log 1 b "failed|db_error" || true
pg_ctl_ -D "$CL_PG_DIR/data" -l "$CL_PG_DIR/server.log" -w -t 30 start >/dev/null
tap $? "PostgreSQL crashed with $holding jobs leased ($done_before of $N completed) and started again"

if wait_for 60 "SELECT count(*) = $N FROM cairnloop.cairnloop_delivery_jobs WHERE state = 'completed'"; then
  tap 0 "the workers finished all $N jobs after the crash"
else
  tap 1 "the workers finished all $N jobs after the crash" \
    "$(sql "SELECT state, count(*) FROM cairnloop.cairnloop_delivery_jobs GROUP BY 1")" \
    "$(tail -5 "$cl_tmp/a.err")"
fi

stop_worker a TERM
exits 0 "worker a stops with status 0"
stop_worker b TERM
exits 0 "worker b stops with status 0"

all=$(delivery_log a b)
is "$(cut -d: -f1 <<<"$all" | sort -u | wc -l)" "$N" "every message was delivered"
twice=$(cut -d: -f1 <<<"$all" | sort | uniq -d | wc -l)
is "$twice" "0" "no message was delivered twice (no worker died)"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE attempt <> 1")" "0" \
  "every job completed on its first attempt"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_messages WHERE metadata->>'status' = 'sent'")" "$N" \
  "every message is marked sent"
echo "# $delivered_at_crash deliveries made when the server crashed"
