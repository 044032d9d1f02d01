#!/usr/bin/env bash
# What the webhook notifier makes of the receiver's answer, against a real
# receiver scripted per template (one worker, --max-attempts 3,
# --backoff-base-ms 50: a plain retry comes ~100 ms later):
#   - 200 and 201: sent;
#   - 410: discarded at once, the message failed, one request;
#   - 500 then 200: retried with the error recorded, then sent;
#   - always 500: discarded after 3 attempts, every error recorded; after
#     one batch (--once) the job is retryable in `cairnloop jobs --json`;
#   - 429 with Retry-After: 2 and 503 with an HTTP date 3 s ahead: the next
#     attempt no sooner than that (the engine's schedule and the arrival at
#     the receiver both say so); 503 without the header: plain backoff;
#   - the delivery metrics count the reasons (http_status, notifier_ok);
#   - a receiver that never answers: failed at CAIRNLOOP_WEBHOOK_TIMEOUT_MS,
#     reason http_timeout, the connection given up;
#   - nothing refused: a request to a port where nothing listens fails as
#     http_error;
#   - no --http-allow (or one for another port): every delivery fails
#     "not_allowed", nothing reaches the receiver, the worker carries on
#     and exits 0.
set -u
. "$(dirname "$0")/webhook_lib.bash"
need_database
need_python

cl migrate
exits 0 "migrate"
seed_conversations 1 20
S=$(new_secret)
BASE_MS=50

st() { job_of "$1" "concat_ws('|', state, attempt, jsonb_array_length(errors))"; }
seen() { rcv_ids r "r['cl-msg-$(job_of "$1" message_id)'].requests"; }
err_of() { job_of "$1" "errors->$2->>'error'"; }
gap() { # TEMPLATE: seconds between the first two requests at the receiver
  rcv_ids r "(function() local e = r['cl-msg-$(job_of "$1" message_id)'] return string.format('%.3f', e.at[2] - e.at[1]) end)()"
}
# metric WORKER OUTCOME REASON WANT: the worker's delivery counter for
# that outcome and reason, once it reads WANT (the worker publishes its
# figures per batch) or after 5 s; prints what it read.
metric() {
  local url v=
  url=$(sed -n -E 's|.*metrics at (http://127\.0\.0\.1:[0-9]+/metrics).*|\1|p' "$cl_tmp/$1.err")
  metric_read() {
    v=$(curl -sf --max-time 5 "$url" | awk -v want="cairnloop_worker_deliveries_total{outcome=\"$1\",reason=\"$2\"}" \
      '$1 == want { print $2 }')
    [ "$v" = "$3" ]
  }
  wait_until 5 metric_read "$2" "$3" "$4" || true
  echo "${v:-none}"
}
at_least() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
below() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

start_receiver r --secret "$S"
rcv_control r '{"by_template": {
  "ok": [{"status": 200}],
  "created": [{"status": 201}],
  "gone": [{"status": 410}],
  "flaky": [{"status": 500}, {"status": 200}],
  "broken": [{"status": 500}],
  "busy429": [{"status": 429, "retry_after": "2"}, {"status": 200}],
  "busy503date": [{"status": 503, "retry_after_in": 3}, {"status": 200}],
  "busy503bare": [{"status": 503}, {"status": 200}]
}}' || tap 1 "script the receiver"
URL=$(rcv_url r)

n=0
for t in ok created gone flaky broken busy429 busy503date busy503bare; do
  n=$((n + 1))
  cl trigger "$n" --template "$t"
done
exits 0 "$n messages triggered, one per scripted answer"

webhook_worker w "$URL" "$S" --http-allow "$(rcv_allow r)" --max-attempts 3 \
  --backoff-base-ms "$BASE_MS" --metrics 127.0.0.1:0
if wait_until 30 all_final "$n"; then
  tap 0 "every job reached a final state"
else
  tap 1 "every job reached a final state" "$(job_states)"
fi
w_http_status=$(metric w failed http_status 8)
w_sent=$(metric w sent notifier_ok 6)
stop_worker w TERM
exits 0 "the worker stops with status 0"

is "$(rcv_stat r 'r.invalid')" "0" "every request verified at the receiver"

# --- 2xx
is "$(st ok)|$(msg_status_of ok)|$(seen ok)" "completed|1|0|sent|1" "200: sent on the first attempt"
is "$(st created)|$(msg_status_of created)|$(seen created)" "completed|1|0|sent|1" "201: sent too"

# --- 410
is "$(st gone)|$(seen gone)" "discarded|1|1|1" "410: discarded after its first attempt, one request"
is "$(msg_status_of gone)" "failed" "410: the message is failed"
is "$(err_of gone 0)" "notifier: HTTP 410 from $URL (gone: not retried): 410 from the test receiver" \
  "410: the error says so"

# --- 500
is "$(st flaky)|$(seen flaky)" "completed|2|1|2" "500 then 200: retried, then sent"
is "$(err_of flaky 0)" "notifier: HTTP 500 from $URL: 500 from the test receiver" "500: the error is recorded"
is "$(rcv_ids r "table.concat(r['cl-msg-$(job_of flaky message_id)'].attempts, ',')")" "1,2" \
  "the body's attempt counts 1, 2 under one webhook-id"
is "$(st broken)|$(seen broken)|$(msg_status_of broken)" "discarded|3|3|3|failed" \
  "always 500: discarded after 3 attempts, each recorded, the message failed"

# --- 429 / 503 with Retry-After
is "$(st busy429)" "completed|2|1" "429: retried, then sent"
is "$(err_of busy429 0)" "notifier: HTTP 429 from $URL (retry after 2 s): 429 from the test receiver" \
  "429: the error gives the wait"
g=$(gap busy429)
if at_least "$g" 2 && below "$g" 5; then
  tap 0 "429 + Retry-After: 2: the retry reached the receiver ${g} s later (backoff alone: 0.1 s)"
else
  tap 1 "429 + Retry-After: 2: the retry reached the receiver 2 s later or more" "gap ${g} s"
fi
sched=$(job_of busy429 "extract(epoch FROM scheduled_at - (errors->0->>'at')::timestamptz)")
if at_least "$sched" 2; then
  tap 0 "429: the engine scheduled the retry ${sched} s after the failure"
else
  tap 1 "429: the engine scheduled the retry 2 s after the failure or later" "scheduled ${sched} s after"
fi
is "$(st busy503date)" "completed|2|1" "503 with an HTTP date: retried, then sent"
like "$(err_of busy503date 0)" "^notifier: HTTP 503 from $URL \(retry after [23] s\)" \
  "503 with an HTTP date: the wait is the date minus now"
g=$(gap busy503date)
if at_least "$g" 2 && below "$g" 6; then
  tap 0 "503 + Retry-After date: the retry came ${g} s later"
else
  tap 1 "503 + Retry-After date: the retry came 2 s later or more" "gap ${g} s"
fi
is "$(st busy503bare)" "completed|2|1" "503 without Retry-After: retried, then sent"
is "$(err_of busy503bare 0)" "notifier: HTTP 503 from $URL: 503 from the test receiver" \
  "503 without Retry-After: no wait named"
g=$(gap busy503bare)
if below "$g" 2; then
  tap 0 "503 without Retry-After: plain backoff (${g} s)"
else
  tap 1 "503 without Retry-After: plain backoff" "gap ${g} s"
fi

# --- the reasons, as the delivery telemetry carries them
is "$w_http_status" "8" "metrics: 8 failed attempts with reason http_status"
is "$w_sent" "6" "metrics: 6 sent"

# --- one batch (--once) against a 500: the job waits, retryable, as the
# operator sees it in `cairnloop jobs`
rcv_control r '{"by_template": {"once500": [{"status": 500}]}}'
cl trigger 17 --template once500
n=$((n + 1))
rc=0
CAIRNLOOP_WEBHOOK_URL=$URL CAIRNLOOP_WEBHOOK_SECRET=$S cl work --once --policy "$WEBHOOK_POLICY" \
  --http-allow "$(rcv_allow r)"
exits 0 "500, one batch: the worker exits 0"
is "$out" "sent 0, failed 1, no_op 0, retried 1, discarded 0" "500, one batch: one failed attempt, to be retried"
cl jobs --json --template once500
is "$(jget 'r.state .. "|" .. r.attempt .. "|" .. r.last_error')" \
  "retryable|1|notifier: HTTP 500 from $URL: 500 from the test receiver" \
  "500: \`cairnloop jobs\` shows the job retryable, with the error"
is "$(job_of once500 "scheduled_at > now()")" "t" "500: its retry is scheduled ahead (the default backoff)"
cl cancel "$(job_of once500 id)"
exits 0 "cancel it (it is not retried here)"

# --- a receiver that never answers
rcv_control r '{"by_template": {"slow": [{"hang": true}]}}'
cl trigger 11 --template slow
CAIRNLOOP_WEBHOOK_TIMEOUT_MS=300 webhook_worker t "$URL" "$S" --http-allow "$(rcv_allow r)" --max-attempts 1 \
  --metrics 127.0.0.1:0
n=$((n + 1))
if wait_until 20 all_final "$n"; then tap 0 "timeout: the job reached a final state"; else
  tap 1 "timeout: the job reached a final state" "$(job_states)"; fi
t_timeout=$(metric t failed http_timeout 1)
stop_worker t TERM
exits 0 "timeout: the worker stops with status 0"
like "$err" "timeout 300 ms" "the worker logs the timeout from CAIRNLOOP_WEBHOOK_TIMEOUT_MS"
is "$(st slow)|$(msg_status_of slow)" "discarded|1|1|failed" "timeout: the attempt failed"
is "$(err_of slow 0)" "notifier: timeout after 300 ms from $URL" "timeout: the error says timeout"
is "$t_timeout" "1" "timeout: reason http_timeout"
if rcv_wait 10 r 'r.abandoned == 1'; then tap 0 "timeout: the client gave up the connection"; else
  tap 1 "timeout: the client gave up the connection" "$(rcv_get r /_stats)"; fi

# --- nothing listening
start_receiver closed --secret "$S"
closed_url=$(rcv_url closed)
stop_receiver closed
cl trigger 12 --template refused
webhook_worker c "$closed_url" "$S" --http-allow "http://127.0.0.1:*" --max-attempts 1 --metrics 127.0.0.1:0
n=$((n + 1))
if wait_until 20 all_final "$n"; then tap 0 "refused connection: the job reached a final state"; else
  tap 1 "refused connection: the job reached a final state" "$(job_states)"; fi
c_error=$(metric c failed http_error 1)
stop_worker c TERM
exits 0 "refused connection: the worker stops with status 0"
like "$(err_of refused 0)" "^notifier: connect_failed.* for $closed_url$" "refused connection: connect_failed, for the URL"
is "$c_error" "1" "refused connection: reason http_error"

# --- not allowed
before=$(rcv_stat r 'r.requests')
for i in 13 14 15; do cl trigger "$i" --template "denied_$i"; done
webhook_worker d "$URL" "$S" --max-attempts 2 --backoff-base-ms "$BASE_MS" --metrics 127.0.0.1:0
n=$((n + 3))
if wait_until 20 all_final "$n"; then tap 0 "no --http-allow: the jobs reached a final state"; else
  tap 1 "no --http-allow: the jobs reached a final state" "$(job_states)"; fi
d_denied=$(metric d failed not_allowed 6)
if kill -0 "$(worker_pid d)" 2>/dev/null; then tap 0 "no --http-allow: the worker is still running"; else
  tap 1 "no --http-allow: the worker is still running"; fi
stop_worker d TERM
exits 0 "no --http-allow: the worker stops with status 0"
is "$out" "sent 0, failed 6, no_op 0, retried 3, discarded 3" "no --http-allow: its totals: every attempt failed"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE template_id LIKE 'denied_%'
            AND state = 'discarded' AND attempt = 2
            AND errors->0->>'error' = 'notifier: not allowed: $URL (allow it with --http-allow)'
            AND errors->1->>'error' = errors->0->>'error'")" "3" \
  "no --http-allow: every attempt failed \"not allowed ... (allow it with --http-allow)\""
is "$d_denied" "6" "no --http-allow: reason not_allowed"
is "$(rcv_stat r 'r.requests')" "$before" "no --http-allow: nothing reached the receiver"

cl trigger 16 --template other_port
webhook_worker p "$URL" "$S" --http-allow "http://127.0.0.1:1" --max-attempts 1
n=$((n + 1))
if wait_until 20 all_final "$n"; then tap 0 "another port allowed: the job reached a final state"; else
  tap 1 "another port allowed: the job reached a final state" "$(job_states)"; fi
stop_worker p TERM
exits 0 "another port allowed: the worker stops with status 0"
is "$(err_of other_port 0)" "notifier: not allowed: $URL (allow it with --http-allow)" \
  "another port allowed: not allowed either"
is "$(rcv_stat r 'r.requests')" "$before" "another port allowed: nothing reached the receiver"
