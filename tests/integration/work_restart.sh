#!/usr/bin/env bash
# PostgreSQL stops and comes back while `cairnloop work` is delivering: the
# worker reports the outage, retries with backoff, reconnects, records the
# batch it had in hand and finishes the queue; after the restart it is
# subscribed again, so a new job wakes it at once.  Runs on a private
# cluster (tests/pg.sh) so the restart disturbs no other suite.
set -u
. "$(dirname "$0")/work_lib.bash"

private_cluster work_restart

N=2000
LIMIT=100
cl migrate
exits 0 "migrate"
seed_conversations 1 "$N"
policy=$(recording_policy record 1)
cl_in "$(seq 1 "$N")" bulk --template "restart_$$" --body "Hello" --ids-file - --max-batch-size "$N"
exits 0 "bulk of $N recipients is accepted"

start_worker w --policy "$policy" --limit "$LIMIT" --lease-seconds 6
wait_for 20 "SELECT count(*) >= 400 FROM cairnloop.cairnloop_delivery_jobs WHERE state = 'completed'" || true

# Stop the server while the worker holds a claimed batch: freeze it until
# the database shows its leases, stop PostgreSQL, let the worker go on.
pid=$(worker_pid w)
holding=0
for _ in $(seq 1 200); do
  kill -STOP "$pid"
  holding=$(sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs
                 WHERE state = 'executing' AND lease_owner LIKE '%:$pid:%'")
  [ "$holding" -gt 0 ] && break
  kill -CONT "$pid"
  sleep 0.01
done
pg_ctl_ -D "$CL_PG_DIR/data" -m fast -w -t 30 stop >/dev/null
kill -CONT "$pid"
done_at_stop=$(delivery_log w | wc -l)
# The server stays down until the worker has tried to record its batch.
wait_log 10 w "completing [0-9]+ delivered jobs failed" || true
pg_ctl_ -D "$CL_PG_DIR/data" -l "$CL_PG_DIR/server.log" -w -t 30 start >/dev/null
tap $? "PostgreSQL stopped until the worker met the outage, with $holding jobs in its hands, and started again"

if wait_for 30 "SELECT count(*) = $N FROM cairnloop.cairnloop_delivery_jobs WHERE state = 'completed'"; then
  tap 0 "the worker finished all $N jobs after the restart"
else
  tap 1 "the worker finished all $N jobs after the restart" \
    "$(sql "SELECT state, count(*) FROM cairnloop.cairnloop_delivery_jobs GROUP BY 1")" "$(tail -5 "$cl_tmp/w.err")"
fi
# Busy, the worker had a batch in hand: recording it is retried until the
# server is back, so its deliveries are not repeated.
log_has w "completing [0-9]+ delivered jobs failed .*retrying in [0-9]+ ms" \
  "the outage is reported with the retry delay"
log_has w "recorded [0-9]+ delivered jobs after reconnecting" \
  "the batch in hand is recorded once the server is back"

# Idle, the worker notices the lost connection in its wait and reconnects
# with backoff.
idle_outage='work: db_error: .*\(retrying in [0-9]+ ms\)'
outages=$(grep -cE "$idle_outage" "$cl_tmp/w.err")
reconnects=$(grep -c "database reachable again" "$cl_tmp/w.err")
wait_idle 10 1 || true
pg_ctl_ -D "$CL_PG_DIR/data" -m fast -w -t 30 stop >/dev/null
# Down until the idle worker has noticed the lost connection.
wait_log 10 w "$idle_outage" $((outages + 1)) || true
pg_ctl_ -D "$CL_PG_DIR/data" -l "$CL_PG_DIR/server.log" -w -t 30 start >/dev/null
tap $? "PostgreSQL restarted again while the worker was idle"
if wait_log 10 w "database reachable again" $((reconnects + 1)); then tap 0 "the idle worker reconnects"; else tap 1 "the idle worker reconnects" "$(tail -5 "$cl_tmp/w.err")"; fi
log_has w "db_error: .*\(retrying in [0-9]+ ms\)" "the idle outage is reported with the retry delay"

# Subscribed again after the reconnect: a new job is delivered long before
# the 5 s fallback poll would find it.
sql "INSERT INTO cairnloop.cairnloop_conversations (id) VALUES ($N + 1)" >/dev/null
t0=$(date +%s%N)
cl trigger $((N + 1)) --template "after_$$"
if wait_for 4 "SELECT metadata->>'status' = 'sent' FROM cairnloop.cairnloop_messages WHERE conversation_id = $N + 1"; then
  ms=$((($(date +%s%N) - t0) / 1000000))
  if [ "$ms" -lt 2500 ]; then tap 0 "a job inserted after the restart woke the worker (${ms} ms)"; else tap 1 "woken by NOTIFY (took ${ms} ms)"; fi
else
  tap 1 "a job inserted after the restart was delivered"
fi

stop_worker w TERM
exits 0 "the worker stops with status 0"
all=$(delivery_log w)
is "$(cut -d: -f1 <<<"$all" | sort -u | wc -l)" "$((N + 1))" "every message was delivered"
twice=$(cut -d: -f1 <<<"$all" | sort | uniq -d | wc -l)
if [ "$twice" -le "$LIMIT" ]; then
  tap 0 "at most the batch in hand was delivered twice ($twice twice)"
else
  tap 1 "at most the batch in hand was delivered twice ($twice twice)"
fi
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_messages WHERE metadata->>'status' = 'sent'")" "$((N + 1))" \
  "every message is marked sent"
