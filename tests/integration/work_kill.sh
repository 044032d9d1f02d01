#!/usr/bin/env bash
# A worker SIGKILLed in the middle of a delivery: its job stays leased
# until the lease expires, then another worker rescues and delivers it.
# Nothing is lost; only the job that was in flight may reach the notifier
# twice, and its second delivery (attempt 2) carries the same idempotency
# key as the first.  The victim works one job per batch (--limit 1) with a slow
# notifier, so "in flight" is exactly one job.
set -u
. "$(dirname "$0")/work_lib.bash"
need_database

N=30
cl migrate
exits 0 "migrate"
seed_conversations 1 "$N"
slow=$(recording_policy slow 30)
fast=$(recording_policy fast)
cl_in "$(seq 1 "$N")" bulk --template "kill_$$" --body "Hello" --ids-file - --max-batch-size "$N"
exits 0 "bulk of $N recipients is accepted"

start_worker victim --policy "$slow" --limit 1 --lease-seconds 1
pid=$(worker_pid victim)
wait_log 10 victim 'delivered [0-9]+:1' || true

# Freeze the victim until the database shows it holding a lease (it is
# between its claim and its completion), then kill it there.
inflight=
for _ in $(seq 1 200); do
  kill -STOP "$pid"
  inflight=$(sql "SELECT message_id FROM cairnloop.cairnloop_delivery_jobs
                  WHERE state = 'executing' AND lease_owner LIKE '%:$pid:%'")
  if [ -n "$inflight" ]; then break; fi
  kill -CONT "$pid"
  sleep 0.01
done
if [ -n "$inflight" ]; then tap 0 "caught the victim holding a lease (message $inflight)"; else tap 1 "caught the victim holding a lease"; fi
lease_end=$(sql "SELECT lease_expires_at FROM cairnloop.cairnloop_delivery_jobs WHERE message_id = ${inflight:-0}")
stop_worker victim KILL
is "$rc" "137" "the victim died of SIGKILL"
before=$(delivery_log victim | wc -l)
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE state = 'executing'")" "1" \
  "its job is left executing under the dead worker's lease"

start_worker rescuer --policy "$fast"
if wait_for 15 "SELECT count(*) = $N FROM cairnloop.cairnloop_delivery_jobs WHERE state = 'completed'"; then
  tap 0 "every job completed after the rescue"
else
  tap 1 "every job completed after the rescue" "$(sql "SELECT state, count(*) FROM cairnloop.cairnloop_delivery_jobs GROUP BY 1")"
fi
stop_worker rescuer TERM
exits 0 "the rescuer stops with status 0"
like "$err" "rescued 1 jobs whose lease expired" "the rescuer reports the rescue"

all=$(delivery_log victim rescuer)
is "$(cut -d: -f1 <<<"$all" | sort -u | wc -l)" "$N" "every message was delivered"
twice=$(cut -d: -f1 <<<"$all" | sort | uniq -d | tr '\n' ' ')
if [ -z "$twice" ] || [ "$twice" = "$inflight " ]; then
  tap 0 "only the in-flight message may have been delivered twice (twice: '${twice}')"
else
  tap 1 "only the in-flight message may have been delivered twice" "twice: $twice" "in flight: $inflight"
fi
is "$(delivery_log rescuer | grep -c "^$inflight:")" "1" "the rescuer delivered the in-flight message once"
is "$(delivery_log rescuer | grep "^$inflight:")" "$inflight:2" "as attempt 2"
is "$(delivery_keys victim rescuer | awk -v m="$inflight" '$1 == m { print $2 }' | sort -u)" "cl-msg-$inflight" \
  "with the first attempt's idempotency key, so the receiver can drop the repeat"
is "$(sql "SELECT concat_ws('|', attempt, attempted_at >= '$lease_end'::timestamptz) FROM cairnloop.cairnloop_delivery_jobs WHERE message_id = $inflight")" \
  "2|t" "the rescue came only after the lease had expired"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE attempt <> 1")" "1" \
  "no other job needed a second attempt"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_messages WHERE metadata->>'status' = 'sent'")" "$N" \
  "every message is marked sent"
echo "# victim delivered $before before it was killed"
