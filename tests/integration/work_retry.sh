#!/usr/bin/env bash
# Failures, backoff and scheduling with one worker (--max-attempts 3):
#   - a notifier that fails twice, then succeeds: three attempts, the
#     backoff (2 s, then 4 s, + up to 10%) honoured, the message ends sent;
#   - a notifier that always fails: discarded after the third attempt, the
#     message stays failed, every error recorded;
#   - a job triggered with --schedule-in 3 is not delivered before its time
#     (and is delivered when it comes due, without waiting for a poll).
set -u
. "$(dirname "$0")/work_lib.bash"
need_database

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
cl trigger 3 --template later --schedule-in 3
cl trigger 4 --template now
exits 0 "four jobs triggered, one scheduled 3 s ahead"
flaky_id=$(job flaky message_id)

start_worker w --policy "$policy" --max-attempts 3
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
gap1=$(job flaky "extract(epoch FROM (errors->1->>'at')::timestamptz - (errors->0->>'at')::timestamptz)")
gap2=$(job flaky "extract(epoch FROM completed_at - (errors->1->>'at')::timestamptz)")
if awk -v g="$gap1" 'BEGIN { exit !(g >= 2.0 && g < 3.2) }'; then
  tap 0 "flaky: attempt 2 came 2 s (+ jitter) after attempt 1 (${gap1} s)"
else
  tap 1 "flaky: attempt 2 came 2 s (+ jitter) after attempt 1" "gap ${gap1} s"
fi
if awk -v g="$gap2" 'BEGIN { exit !(g >= 4.0 && g < 5.4) }'; then
  tap 0 "flaky: attempt 3 came 4 s (+ jitter) after attempt 2 (${gap2} s)"
else
  tap 1 "flaky: attempt 3 came 4 s (+ jitter) after attempt 2" "gap ${gap2} s"
fi

# --- always fails
is "$(job broken "concat_ws('|', state, attempt, discarded_at IS NOT NULL, completed_at IS NULL, jsonb_array_length(errors))")" \
  "discarded|3|t|t|3" "broken: discarded after 3 attempts, every error recorded"
is "$(job broken "errors->2->>'error'")" "notifier: provider rejects it" "broken: the last reason is kept"
is "$(msg_status broken)" "failed" "broken: the message stays failed"
is "$(grep -c "call broken" "$cl_tmp/w.err")" "3" "broken: the notifier was called exactly 3 times"

# --- scheduled
is "$(job later "concat_ws('|', state, attempt, attempted_at >= scheduled_at, scheduled_at - inserted_at >= interval '3 s')")" \
  "completed|1|t|t" "later: delivered once, not before its scheduled time"
late=$(job later "extract(epoch FROM attempted_at - scheduled_at)")
if awk -v g="$late" 'BEGIN { exit !(g < 1.5) }'; then
  tap 0 "later: delivered as it came due (${late} s after), not at the next poll"
else
  tap 1 "later: delivered as it came due" "${late} s late"
fi
is "$(job now "concat_ws('|', state, attempt)")" "completed|1" "now: delivered at once"
