#!/usr/bin/env bash
# A clean run of 10,000 webhook deliveries: one bulk of 10,000 recipients,
# two `cairnloop work` processes at --concurrency 50 posting to one real
# receiver that answers in 0-2 ms and verifies every signature.  Every
# message is sent, each reaches the receiver exactly once (no duplicate, no
# retry), every signature verifies, both workers take part and both stop
# cleanly on SIGTERM.  WEBHOOK_LOAD_N changes the count.
set -u
. "$(dirname "$0")/webhook_lib.bash"
need_database
need_python

N=${WEBHOOK_LOAD_N:-10000}
cl migrate
exits 0 "migrate"
seed_conversations 1 "$N"
S=$(new_secret)
start_receiver r --secret "$S" --delay-ms 0 --delay-max-ms 2

webhook_worker a "$(rcv_url r)" "$S" --http-allow "$(rcv_allow r)" --concurrency 50
webhook_worker b "$(rcv_url r)" "$S" --http-allow "$(rcv_allow r)" --concurrency 50
drain_two "$N" "load_$$" 120

stats=$(rcv_get r /_stats)
is "$(jget 'r.requests .. " " .. r.ids .. " " .. r.ids_ok' "$stats")" "$N $N $N" \
  "the receiver got $N requests, one per message, each accepted"
is "$(jget 'r.duplicates .. " " .. r.max_requests_per_id' "$stats")" "0 1" "no webhook-id arrived twice"
is "$(jget 'r.valid .. " " .. r.invalid .. " " .. r.bad_body' "$stats")" "$N 0 0" \
  "every signature verified and every body was a message.outbound event"
is "$(rcv_requests r "(function() local bad = 0 for _, q in ipairs(r) do
    if q.attempt ~= 1 or q.webhook_id ~= 'cl-msg-' .. q.message_id then bad = bad + 1 end end return bad end)()")" \
  "0" "every request was attempt 1 of its own message's webhook-id"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_messages WHERE metadata->>'status' = 'sent'")" "$N" \
  "every message is marked sent"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE attempt = 1 AND jsonb_array_length(errors) = 0")" \
  "$N" "every job completed on its first attempt, without an error"
sent_a=$(sed -n -E 's/^sent ([0-9]+),.*/\1/p' <<<"$a_out")
sent_b=$(sed -n -E 's/^sent ([0-9]+),.*/\1/p' <<<"$b_out")
if [ "${sent_a:-0}" -gt 0 ] && [ "${sent_b:-0}" -gt 0 ]; then
  tap 0 "both workers delivered (a: $sent_a, b: $sent_b)"
else
  tap 1 "both workers delivered" "a: $a_out" "b: $b_out"
fi
is "$((${sent_a:-0} + ${sent_b:-0}))" "$N" "the workers' totals add up to $N sent"
echo "# $N webhooks through two workers at --concurrency 50 in ${elapsed_ms} ms;" \
  "at most $(jget 'r.max_in_flight' "$stats") requests at once at the receiver"
