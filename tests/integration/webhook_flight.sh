#!/usr/bin/env bash
# Webhook deliveries in flight, against a real receiver that counts the
# requests it is handling at once:
#   - concurrency: a receiver answering in 300 ms, `--concurrency 20`, 60
#     jobs: the receiver handles at least 15 requests at a time, and the
#     run takes a fraction of the 18 s one at a time would;
#   - SIGTERM with deliveries in flight: the worker waits for their
#     answers, exits 0, those messages are sent exactly once, no job is
#     left executing, and the jobs it had not started go to the next worker;
#   - SIGKILL with deliveries in flight (the receiver holding every request
#     open): the jobs stay leased until --lease-seconds 2 runs out, then a
#     second worker redelivers each with the SAME webhook-id (attempt 2);
#     the receiver sees each id exactly twice and accepts it once.
set -u
. "$(dirname "$0")/webhook_lib.bash"
need_database
need_python

cl migrate
exits 0 "migrate"
seed_conversations 1 60
S=$(new_secret)
start_receiver r --secret "$S"
URL=$(rcv_url r)
ALLOW=$(rcv_allow r)
count_state() { sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE template_id = '$1' AND state = '$2'"; }

# --- concurrency
rcv_control r '{"delay_ms": 300}'
webhook_worker c "$URL" "$S" --http-allow "$ALLOW" --concurrency 20
wait_idle 10 1 || true
started=$(date +%s%N)
cl_in "$(seq 1 60)" bulk --template conc --body "Hello" --ids-file - --max-batch-size 60
exits 0 "bulk of 60"
if wait_for 30 "SELECT count(*) = 60 FROM cairnloop.cairnloop_delivery_jobs WHERE template_id = 'conc' AND state = 'completed'"; then
  tap 0 "concurrency: all 60 jobs completed"
else
  tap 1 "concurrency: all 60 jobs completed" "$(sql "SELECT state, count(*) FROM cairnloop.cairnloop_delivery_jobs GROUP BY 1")"
fi
elapsed_ms=$((($(date +%s%N) - started) / 1000000))
stop_worker c TERM
exits 0 "concurrency: the worker stops with status 0"
peak=$(rcv_stat r 'r.max_in_flight')
if [ "$peak" -ge 15 ]; then
  tap 0 "concurrency: the receiver handled $peak requests at once (at least 15 of 20)"
else
  tap 1 "concurrency: the receiver handled at least 15 requests at once" "max in flight: $peak"
fi
if [ "$elapsed_ms" -lt 9000 ]; then
  tap 0 "concurrency: 60 deliveries of 300 ms took ${elapsed_ms} ms (one at a time: 18,000)"
else
  tap 1 "concurrency: 60 deliveries of 300 ms took less than half of 18 s" "${elapsed_ms} ms"
fi
is "$(rcv_stat r 'r.requests .. " " .. r.ids_ok .. " " .. r.duplicates .. " " .. r.invalid')" "60 60 0 0" \
  "concurrency: 60 verified requests, one per message"

# --- SIGTERM with deliveries in flight (each answered after 3 s: long
# enough that the signal lands while all ten are still open, even on a
# loaded machine)
rcv_control r '{"reset": true, "delay_ms": 3000}'
webhook_worker t "$URL" "$S" --http-allow "$ALLOW" --concurrency 10
wait_idle 10 1 || true
cl_in "$(seq 1 30)" bulk --template term --body "Hello" --ids-file - --max-batch-size 30
exits 0 "bulk of 30"
if rcv_wait 15 r 'r.in_flight == 10'; then
  tap 0 "SIGTERM: 10 requests in flight at the receiver"
else
  tap 1 "SIGTERM: 10 requests in flight at the receiver" "$(rcv_get r /_stats)"
fi
kill -TERM "$(worker_pid t)"
if wait_worker_exit 20 t; then tap 0 "SIGTERM: the worker exits"; else tap 1 "SIGTERM: the worker exits"; fi
stop_worker t KILL
exits 0 "SIGTERM: exit status 0"
term_done=$(count_state term completed)
is "$(rcv_stat r 'r.in_flight')" "0" "SIGTERM: no request was left open at the receiver"
is "$(rcv_stat r 'r.requests .. " " .. r.ids_ok .. " " .. r.duplicates')" "10 10 0" \
  "SIGTERM: the 10 requests in flight were answered, each id once, none started after"
is "$term_done" "10" "SIGTERM: the 10 deliveries in flight completed"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_messages m JOIN cairnloop.cairnloop_delivery_jobs j
            ON j.message_id = m.id WHERE j.template_id = 'term' AND j.state = 'completed'
            AND m.metadata->>'status' = 'sent'")" "10" "SIGTERM: their messages are sent"
is "$(count_state term executing)" "0" "SIGTERM: no job is left executing"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE template_id = 'term' AND state = 'available'")" \
  "20" "SIGTERM: the 20 jobs not started are available again"
is "$(rcv_ids r "(function() local bad = 0 for id, e in pairs(r) do
    if not id:match('^cl%-msg%-%d+$') or e.requests ~= 1 then bad = bad + 1 end end return bad end)()")" "0" \
  "SIGTERM: each id reached the receiver once"

rcv_control r '{"delay_ms": 0}'
webhook_worker t2 "$URL" "$S" --http-allow "$ALLOW" --concurrency 10
if wait_for 20 "SELECT count(*) = 30 FROM cairnloop.cairnloop_delivery_jobs WHERE template_id = 'term' AND state = 'completed'"; then
  tap 0 "SIGTERM: the next worker delivers the rest"
else
  tap 1 "SIGTERM: the next worker delivers the rest" "$(sql "SELECT state, count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE template_id = 'term' GROUP BY 1")"
fi
stop_worker t2 TERM
exits 0 "SIGTERM: the next worker stops with status 0"
is "$(rcv_stat r 'r.requests .. " " .. r.ids_ok .. " " .. r.duplicates')" "30 30 0" \
  "SIGTERM: 30 messages, 30 requests, no duplicate"

# --- SIGKILL with deliveries in flight
N=20
rcv_control r '{"reset": true, "hang": true}'
webhook_worker victim "$URL" "$S" --http-allow "$ALLOW" --concurrency "$N" --lease-seconds 2
wait_idle 10 1 || true
cl_in "$(seq 1 "$N")" bulk --template kill --body "Hello" --ids-file - --max-batch-size "$N"
exits 0 "bulk of $N"
if rcv_wait 15 r "r.in_flight == $N"; then
  tap 0 "SIGKILL: $N requests in flight, held open by the receiver"
else
  tap 1 "SIGKILL: $N requests in flight, held open by the receiver" "$(rcv_get r /_stats)"
fi
stop_worker victim KILL
is "$rc" "137" "SIGKILL: the worker died of SIGKILL"
if rcv_wait 10 r "r.abandoned == $N and r.in_flight == 0"; then
  tap 0 "SIGKILL: its $N connections closed with it, unanswered"
else
  tap 1 "SIGKILL: its $N connections closed with it, unanswered" "$(rcv_get r /_stats)"
fi
is "$(count_state kill executing)" "$N" "SIGKILL: its jobs are left executing under its lease"
rcv_control r '{"hang": false}'
webhook_worker rescuer "$URL" "$S" --http-allow "$ALLOW" --concurrency "$N" --lease-seconds 2
if wait_for 20 "SELECT count(*) = $N FROM cairnloop.cairnloop_delivery_jobs WHERE template_id = 'kill' AND state = 'completed'"; then
  tap 0 "SIGKILL: every job completed after the rescue"
else
  tap 1 "SIGKILL: every job completed after the rescue" "$(sql "SELECT state, count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE template_id = 'kill' GROUP BY 1")"
fi
stop_worker rescuer TERM
exits 0 "SIGKILL: the rescuer stops with status 0"
is "$(grep -oE 'rescued [0-9]+ jobs whose lease expired' <<<"$err" | awk '{ n += $2 } END { print n + 0 }')" "$N" \
  "SIGKILL: the rescuer reports rescuing the $N jobs"
is "$(rcv_stat r 'r.requests .. " " .. r.ids .. " " .. r.ids_ok .. " " .. r.duplicates .. " " .. r.max_requests_per_id .. " " .. r.invalid')" \
  "$((2 * N)) $N $N 0 2 0" "SIGKILL: each id reached the receiver exactly twice and was accepted once"
is "$(rcv_ids r "(function() local bad = 0 for id, e in pairs(r) do
    if table.concat(e.attempts, ',') ~= '1,2' or table.concat(e.statuses, ',') ~= '0,200' then bad = bad + 1 end
  end return bad end)()")" "0" "SIGKILL: per id, attempt 1 unanswered, then attempt 2 accepted"
is "$(rcv_requests r "(function() local bad = 0 for _, q in ipairs(r) do
    if q.webhook_id ~= 'cl-msg-' .. q.message_id then bad = bad + 1 end end return bad end)()")" "0" \
  "SIGKILL: the redelivery carries the same webhook-id, cl-msg-<message id>"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE template_id = 'kill'
            AND attempt = 2 AND attempted_at >= inserted_at + interval '2 s'")" "$N" \
  "SIGKILL: redelivered as attempt 2, after the lease ran out"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_messages WHERE metadata->>'status' = 'sent'")" "$((60 + 30 + N))" \
  "every message of the suite is sent"
