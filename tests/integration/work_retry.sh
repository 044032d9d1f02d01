#!/usr/bin/env bash
# Failures, backoff and scheduling with one worker (--max-attempts 3,
# --backoff-base-ms 50, so the retries come 100 ms and 200 ms apart rather
# than the default 2 s and 4 s):
#   - a notifier that fails twice, then succeeds: three attempts, the
#     backoff (base x 2, then base x 4, + up to 10%) honoured, the message
#     ends sent;
#   - a notifier that always fails: discarded after the third attempt, the
#     message stays failed, every error recorded;
#   - a job triggered with --schedule-in 1 is not delivered before its time
#     (and is delivered when it comes due, without waiting for a poll).
set -u
. "$(dirname "$0")/work_lib.bash"
need_database

BASE_MS=50
# How late a retry may come after its backoff ran out: the worker's wake-up,
# claim and notifier call, on a loaded machine.
LATE_MS=500

cl migrate
exits 0 "migrate"
seed_conversations 1 4
policy=$(policy_file flaky 'local cl = require "cairnloop"
cl.notifier(function(message, conversation, delivery)
  local t = message.metadata.template_id
  cl.log("info", "call " .. t .. " " .. message.id .. ":" .. delivery.attempt .. " " .. delivery.idempotency_key)
  if t == "broken" then return nil, "provider rejects it" end
  if t == "flaky" and delivery.attempt < 3 then
    return nil, "provider busy (attempt " .. delivery.attempt .. ")"
  end
  return true
end)')

job() { # job TEMPLATE EXPR: EXPR over the template's job row
  sql "SELECT $2 FROM cairnloop.cairnloop_delivery_jobs WHERE template_id = '$1'"
}
msg_status() {
  sql "SELECT m.metadata->>'status' FROM cairnloop.cairnloop_messages m
       JOIN cairnloop.cairnloop_delivery_jobs j ON j.message_id = m.id WHERE j.template_id = '$1'"
}

cl trigger 1 --template flaky
cl trigger 2 --template broken
cl trigger 3 --template later --schedule-in 1
cl trigger 4 --template now
exits 0 "four jobs triggered, one scheduled 1 s ahead"
flaky_id=$(job flaky message_id)

start_worker w --policy "$policy" --max-attempts 3 --backoff-base-ms "$BASE_MS"
if wait_for 20 "SELECT count(*) = 4 FROM cairnloop.cairnloop_delivery_jobs WHERE state IN ('completed', 'discarded')"; then
  tap 0 "every job reached a final state"
else
  tap 1 "every job reached a final state" "$(sql "SELECT template_id, state, attempt FROM cairnloop.cairnloop_delivery_jobs")"
fi
stop_worker w TERM
exits 0 "the worker stops with status 0"
is "$out" "sent 3, failed 5, no_op 0, retried 4, discarded 1" "its totals: 3 sent, 5 failed attempts, 4 retries, 1 discarded"

# --- fails twice, then succeeds
is "$(job flaky "concat_ws('|', state, attempt, max_attempts, jsonb_array_length(errors))")" "completed|3|3|2" \
  "flaky: completed on attempt 3 with two errors recorded"
is "$(job flaky "errors->0->>'error' || ' / ' || (errors->1->>'attempt')")" "notifier: provider busy (attempt 1) / 2" \
  "flaky: each error keeps the notifier's reason and its attempt"
is "$(msg_status flaky)" "sent" "flaky: the message ends sent"
is "$(grep -oE "call flaky [0-9]+:[0-9]+" "$cl_tmp/w.err" | awk '{print $3}' | tr '\n' ' ')" \
  "$flaky_id:1 $flaky_id:2 $flaky_id:3 " "flaky: attempts 1, 2 and 3"
is "$(grep -oE "call flaky [0-9]+:[0-9]+ [^ ]+" "$cl_tmp/w.err" | awk '{print $4}' | sort -u | tr '\n' ' ')" \
  "cl-msg-$flaky_id " "flaky: one idempotency key for every attempt"
# Gaps and delays in whole milliseconds (rounded down).  A retry can never
# come early (its claim needs scheduled_at <= now()), so the lower bounds
# are exact; the upper ones allow the 10% jitter and LATE_MS.
ms() { awk -v s="$1" 'BEGIN { printf "%d", s * 1000 }'; }
in_range() { [ "$1" -ge "$2" ] && [ "$1" -lt "$3" ]; } # in_range MS MIN MAX
gap1=$(ms "$(job flaky "extract(epoch FROM (errors->1->>'at')::timestamptz - (errors->0->>'at')::timestamptz)")")
gap2=$(ms "$(job flaky "extract(epoch FROM completed_at - (errors->1->>'at')::timestamptz)")")
if in_range "$gap1" $((2 * BASE_MS)) $((2 * BASE_MS + 2 * BASE_MS / 10 + LATE_MS)); then
  tap 0 "flaky: attempt 2 came base x 2 (+ jitter) after attempt 1 (${gap1} ms)"
else
  tap 1 "flaky: attempt 2 came base x 2 (+ jitter) after attempt 1" "gap ${gap1} ms"
fi
if in_range "$gap2" $((4 * BASE_MS)) $((4 * BASE_MS + 4 * BASE_MS / 10 + LATE_MS)); then
  tap 0 "flaky: attempt 3 came base x 4 (+ jitter) after attempt 2 (${gap2} ms)"
else
  tap 1 "flaky: attempt 3 came base x 4 (+ jitter) after attempt 2" "gap ${gap2} ms"
fi
# The second delay as the engine scheduled it (the row keeps it once the job
# is done): base x 4 plus at most 10%, however loaded the machine is.
delay2=$(ms "$(job flaky "extract(epoch FROM scheduled_at - (errors->1->>'at')::timestamptz)")")
if in_range "$delay2" $((4 * BASE_MS)) $((4 * BASE_MS + 4 * BASE_MS / 10 + 1)); then
  tap 0 "flaky: the retry after attempt 2 was scheduled base x 4 (+ jitter) ahead (${delay2} ms)"
else
  tap 1 "flaky: the retry after attempt 2 was scheduled base x 4 (+ jitter) ahead" "delay ${delay2} ms"
fi

# --- always fails
is "$(job broken "concat_ws('|', state, attempt, discarded_at IS NOT NULL, completed_at IS NULL, jsonb_array_length(errors))")" \
  "discarded|3|t|t|3" "broken: discarded after 3 attempts, every error recorded"
is "$(job broken "errors->2->>'error'")" "notifier: provider rejects it" "broken: the last reason is kept"
is "$(msg_status broken)" "failed" "broken: the message stays failed"
is "$(grep -c "call broken" "$cl_tmp/w.err")" "3" "broken: the notifier was called exactly 3 times"

# --- scheduled
is "$(job later "concat_ws('|', state, attempt, attempted_at >= scheduled_at, scheduled_at - inserted_at >= interval '1 s')")" \
  "completed|1|t|t" "later: delivered once, not before its scheduled time"
late=$(job later "extract(epoch FROM attempted_at - scheduled_at)")
if awk -v g="$late" 'BEGIN { exit !(g < 1.5) }'; then
  tap 0 "later: delivered as it came due (${late} s after), not at the next poll"
else
  tap 1 "later: delivered as it came due" "${late} s late"
fi
is "$(job now "concat_ws('|', state, attempt)")" "completed|1" "now: delivered at once"
