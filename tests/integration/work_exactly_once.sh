#!/usr/bin/env bash
# Two `cairnloop work` processes share one queue of 10,000 jobs: every
# message is delivered exactly once (one notifier call, attempt 1), both
# workers take part, and both stop cleanly on SIGTERM.  The workers are
# idle when the jobs arrive, so LISTEN/NOTIFY is what wakes them.
set -u
. "$(dirname "$0")/work_lib.bash"
need_database

N=10000
cl migrate
exits 0 "migrate"
seed_conversations 1 "$N"
policy=$(recording_policy)

start_worker a --policy "$policy" --limit 500
start_worker b --policy "$policy" --limit 500
drain_two "$N" "once_$$" 60

deliveries=$(delivery_log a b | sort)
is "$(wc -l <<<"$deliveries")" "$N" "the notifier ran $N times in all"
is "$(cut -d: -f1 <<<"$deliveries" | sort -u | wc -l)" "$N" "each message reached the notifier once"
is "$(cut -d: -f2 <<<"$deliveries" | sort -u | tr '\n' ' ')" "1 " "every delivery was attempt 1"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_messages WHERE metadata->>'status' = 'sent'")" "$N" \
  "every message is marked sent"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE attempt = 1 AND completed_at IS NOT NULL AND lease_owner IS NULL")" \
  "$N" "every job completed on its first attempt, lease cleared"
is "$(sql "SELECT string_agg(id || ':1', E'\n' ORDER BY id::text) FROM cairnloop.cairnloop_messages" | sort)" \
  "$deliveries" "the deliveries are exactly <message id>:1 of every message"
# The idempotency key is the message's own: cl-msg-<message id>.
is "$(delivery_keys a b | awk '$2 != "cl-msg-" $1' | wc -l)" "0" \
  "every idempotency key is cl-msg-<message id>"

na=$(delivery_log a | wc -l)
nb=$(delivery_log b | wc -l)
if [ "$na" -gt 0 ] && [ "$nb" -gt 0 ]; then
  tap 0 "both workers delivered (a: $na, b: $nb)"
else
  tap 1 "both workers delivered (a: $na, b: $nb)"
fi
sum=$(( $(sed -E 's/^sent ([0-9]+),.*/\1/' <<<"$a_out") + $(sed -E 's/^sent ([0-9]+),.*/\1/' <<<"$b_out") ))
is "$sum" "$N" "the workers' reported totals add up to $N sent"
like "$a_out" "^sent [0-9]+, failed 0, no_op 0, retried 0, discarded 0$" "a worker prints its totals on exit"
echo "# $N jobs through two workers in ${elapsed_ms} ms"
