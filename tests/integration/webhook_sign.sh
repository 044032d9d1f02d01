#!/usr/bin/env bash
# The ready-made webhook notifier (lua/cairnloop/webhook.lua) signs what it
# sends as a real receiver checks it: the test receiver (receiver.py)
# verifies every Standard Webhooks signature with Python's own hmac.
#   - the receiver's check reproduces the specification's test vector;
#   - loaded as a --policy file configured by CAIRNLOOP_WEBHOOK_*: the
#     receiver verifies signature and timestamp, the event carries the
#     message (content with quotes, backslashes, control characters and
#     non-ASCII text arrives intact), webhook-id is cl-msg-<message id>;
#   - signed with a secret the receiver does not hold: it refuses (401),
#     so the check can fail, and the job records why;
#   - rotation: several secrets (a list given to install(), or the
#     variable with spaces or commas) sign each request once per secret,
#     and a receiver holding any one of them accepts;
#   - install() from a policy script of one's own, with extra headers;
#   - a Lua host opening an engine with the policy file and http_allow;
#   - configuration errors stop the worker at start with one line naming
#     the option, never showing the secret, with nothing delivered.
set -u
. "$(dirname "$0")/webhook_lib.bash"
need_database
need_python

if out=$("$PYTHON" "$RECEIVER" --self-test 2>&1); then
  tap 0 "the receiver's verification reproduces the specification's test vector ($out)"
else
  tap 1 "the receiver's verification reproduces the specification's test vector" "$out"
fi

cl migrate
exits 0 "migrate"
seed_conversations 1 20
sql "UPDATE cairnloop.cairnloop_conversations SET customer_ref = 'cus_3' WHERE id = 3" >/dev/null

S1=$(new_secret)
S2=$(new_secret)
S3=$(new_secret)

final=0
# run_until_final NAME N: waits until N more jobs are final, stops NAME.
run_until_final() {
  final=$((final + $2))
  if wait_until 20 all_final "$final"; then
    tap 0 "$1: the jobs reached a final state"
  else
    tap 1 "$1: the jobs reached a final state" "$(job_states)"
  fi
  stop_worker "$1" TERM
  exits 0 "$1: the worker stops with status 0"
}

# --- as a --policy file, configured by the environment
start_receiver good --secret "$S1"
content=$(printf 'Quote " backslash \\ newline\nTab\tbell\001 DEL\177 caf\303\251 \342\202\254 \360\237\230\200 end')
cl trigger 3 --template plain --content "$content"
exits 0 "trigger one message"
mid=$(job_of plain message_id)
cl bulk --template bulky --body "Hello all" --ids 4,5
exits 0 "bulk of two messages"
env_id=$(sql "SELECT DISTINCT bulk_envelope_id FROM cairnloop.cairnloop_delivery_jobs WHERE template_id = 'bulky'")
started=$(date +%s)
webhook_worker w1 "$(rcv_url good)" "$S1" --http-allow "$(rcv_allow good)" --max-attempts 1
run_until_final w1 3
is "$(job_of plain "concat_ws('|', state, attempt)")" "completed|1" "the delivery succeeded on attempt 1"
is "$(msg_status_of plain)" "sent" "the message is sent"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE state = 'completed'")" "3" \
  "the two bulk messages too"
is "$(rcv_stat good 'r.requests .. " " .. r.valid .. " " .. r.invalid .. " " .. r.bad_body')" "3 3 0 0" \
  "the receiver got three requests; every signature and timestamp verified"
like "$err" "webhook: POST to $(rcv_url good), 1 signing secret, timeout 5000 ms" \
  "the worker logs where it posts, with the default timeout"
if grep -qF -- "${S1#whsec_}" "$cl_tmp/w1.err" "$cl_tmp/w1.out"; then
  tap 1 "the secret appears in no log line"
else
  tap 0 "the secret appears in no log line"
fi

# The single message's request, by its webhook-id.
req() { rcv_requests good "(function() for _, q in ipairs(r) do if q.webhook_id == 'cl-msg-$mid' then return $1 end end end)()"; }
is "$(req 'q.webhook_id')" "cl-msg-$mid" "webhook-id is cl-msg-<message id>"
is "$(req 'q.content')" "$content" \
  "the content arrives intact (quotes, backslash, control characters, UTF-8)"
is "$(req 'table.concat({ q.type, q.data.message_id, q.data.conversation_id, q.data.customer_ref,
  q.data.template_id, tostring(q.data.bulk_envelope_id == null), q.data.attempt, q.data.idempotency_key,
  q.data.role }, "|")')" \
  "message.outbound|$mid|3|cus_3|plain|true|1|cl-msg-$mid|$(sql "SELECT role FROM cairnloop.cairnloop_messages WHERE id = $mid")" \
  "the event: type, message, conversation, customer, template, no envelope (null), attempt, key, role"
is "$(req 'table.concat((function() local k = {} for n in pairs(q.data) do k[#k + 1] = n end table.sort(k) return k end)(), " ")')" \
  "attempt bulk_envelope_id content conversation_id customer_ref idempotency_key message_id role template_id" \
  "the event's data has exactly the documented fields"
ts=$(req 'q.timestamp')
if [ "$ts" -ge "$((started - 1))" ] && [ "$ts" -le "$(($(date +%s) + 1))" ]; then
  tap 0 "webhook-timestamp is the Unix time of the request"
else
  tap 1 "webhook-timestamp is the Unix time of the request" "got $ts, started $started"
fi
is "$(req 'q.event_time')" "$(date -u -d "@$ts" +%Y-%m-%dT%H:%M:%SZ)" \
  "the event's timestamp is the same instant, ISO 8601 UTC"
like "$(req 'q.signature')" '^v1,[A-Za-z0-9+/]{43}=$' "one secret: one v1 signature"
like "$(req 'q.user_agent')" '^cairnloop/[0-9]' "User-Agent names the engine"
is "$(rcv_requests good "(function() local n = 0 for _, q in ipairs(r) do
  if q.data.bulk_envelope_id == '$env_id' and q.data.template_id == 'bulky' and q.content == 'Hello all' then n = n + 1 end
  end return n end)()")" "2" "bulk messages carry their envelope id"

# --- a secret the receiver does not hold: refused, and the job says so
start_receiver strict --secret "$S2"
cl trigger 6 --template wrong_secret
webhook_worker w2 "$(rcv_url strict)" "$S1" --http-allow "$(rcv_allow strict)" --max-attempts 1
run_until_final w2 1
is "$(rcv_stat strict 'r.requests .. " " .. r.valid .. " " .. r.invalid .. " " .. r.invalid_reasons[1]')" \
  "1 0 1 no signature matches" "the receiver rejects a signature made with another secret"
is "$(job_of wrong_secret "concat_ws('|', state, attempt)")" "discarded|1" "the job failed (its only attempt)"
is "$(job_of wrong_secret "errors->0->>'error'")" \
  "notifier: HTTP 401 from $(rcv_url strict): 401 no signature matches" \
  "the job records the status, the URL and the receiver's reason"
is "$(msg_status_of wrong_secret)" "failed" "the message is failed"

# --- rotation through the environment: old and new secret, either separator
start_receiver rotated_new --secret "$S3"
start_receiver rotated_old --secret "$S1"
cl trigger 7 --template rotate_space
webhook_worker w3 "$(rcv_url rotated_new)" "$S1 $S3" --http-allow "$(rcv_allow rotated_new)" --max-attempts 1
run_until_final w3 1
cl trigger 8 --template rotate_comma
webhook_worker w4 "$(rcv_url rotated_old)" " $S1 , $S3 " --http-allow "$(rcv_allow rotated_old)" --max-attempts 1
run_until_final w4 1
like "$err" "2 signing secrets" "the worker logs two secrets"
is "$(rcv_stat rotated_new 'r.valid .. "/" .. r.requests')" "1/1" "a receiver holding only the new secret accepts"
is "$(rcv_stat rotated_old 'r.valid .. "/" .. r.requests')" "1/1" "a receiver holding only the old secret accepts"
like "$(rcv_requests rotated_new 'r[1].signature')" '^v1,[A-Za-z0-9+/]{43}= v1,[A-Za-z0-9+/]{43}=$' \
  "two secrets: two space-separated v1 signatures"
is "$(job_of rotate_space state)$(job_of rotate_comma state)" "completedcompleted" "both jobs completed"

# --- install() from a policy script of one's own
start_receiver installed --secret "$S2"
policy=$(policy_file installed 'local cl = require "cairnloop"
local webhook = require "cairnloop.webhook"
webhook.install(cl, {
  url = "'"$(rcv_url installed)"'?token=kept-out-of-logs",
  secret = { "'"$S3"'", "'"$S2"'" },
  timeout_ms = 2500,
  headers = { ["X-Test-Header"] = "from install", ["User-Agent"] = "acme-support/2" },
})')
cl trigger 9 --template installed
start_worker w5 --policy "$policy" --http-allow "$(rcv_allow installed)" --max-attempts 1
run_until_final w5 1
is "$(rcv_stat installed 'r.valid .. "/" .. r.requests')" "1/1" "install(): the receiver verifies the request"
is "$(rcv_requests installed 'r[1].extra_header .. "|" .. r[1].user_agent')" "from install|acme-support/2" \
  "install(): the extra headers are sent, the User-Agent replaced"
is "$(job_of installed state)" "completed" "install(): the job completed"
like "$err" "webhook: POST to $(rcv_url installed), 2 signing secrets, timeout 2500 ms" \
  "install(): the log line shows the URL without its query"
if grep -qF "kept-out-of-logs" "$cl_tmp/w5.err"; then tap 1 "the query string is kept out of the log"; else
  tap 0 "the query string is kept out of the log"; fi

# --- a Lua host: open{ policy = webhook.lua, http_allow = ... }, engine:work{ concurrency }
start_receiver lua_host --secret "$S1"
for i in 11 12 13 14; do cl trigger "$i" --template lua_host; done
final=$((final + 4))
rc=0
out=$(CAIRNLOOP_WEBHOOK_URL=$(rcv_url lua_host) CAIRNLOOP_WEBHOOK_SECRET=$S1 \
  LUA_CPATH_5_4="$CLI_TEST_ROOT/build/lua5.4/?.so;${LUA_CPATH_5_4:-;}" \
  lua5.4 - "$WEBHOOK_POLICY" "$(rcv_allow lua_host)" 2>"$cl_tmp/lua_host.err" <<'LUA'
local cairnloop = require "cairnloop"
local engine = assert(cairnloop.open { database = os.getenv("CAIRNLOOP_DATABASE_URL"),
  policy = arg[1], http_allow = { arg[2] } })
local s = assert(engine:work { limit = 10, concurrency = 4 })
io.write(s.sent, " sent, ", s.failed, " failed")
engine:close()
LUA
) || rc=$?
err=$(cat "$cl_tmp/lua_host.err")
is "$out" "4 sent, 0 failed" "a Lua host's engine with the policy file sends 4 in one engine:work call"
is "$(rcv_stat lua_host 'r.valid .. "/" .. r.requests')" "4/4" "a Lua host: the receiver verifies every request"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE template_id = 'lua_host' AND state = 'completed'")" \
  "4" "a Lua host: the jobs completed"

# --- configuration errors: the worker does not start; nothing is delivered
cl trigger 10 --template never_sent
before=$(rcv_stat good 'r.requests')
config_error() { # DESC REGEX [ENV=VALUE...] -- ARGS...
  local desc=$1 regex=$2
  shift 2
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  rc=0
  env "${envs[@]}" cairnloop work --once "$@" >"$cl_tmp/out" 2>"$cl_tmp/err" </dev/null || rc=$?
  out=$(cat "$cl_tmp/out")
  err=$(cat "$cl_tmp/err")
  exits 5 "$desc: exit 5 (hook_error)"
  like "$(tail -n 1 <<<"$err")" "^cairnloop: hook_error: .*webhook: $regex" "$desc: one line naming the option"
}
allow=(--http-allow "$(rcv_allow good)")
config_error "no URL" "CAIRNLOOP_WEBHOOK_URL is required" \
  "CAIRNLOOP_WEBHOOK_SECRET=$S1" -- --policy "$WEBHOOK_POLICY" "${allow[@]}"
config_error "not a URL" "CAIRNLOOP_WEBHOOK_URL must be an http:// or https:// URL" \
  "CAIRNLOOP_WEBHOOK_URL=ftp://127.0.0.1/x" "CAIRNLOOP_WEBHOOK_SECRET=$S1" -- --policy "$WEBHOOK_POLICY" "${allow[@]}"
config_error "no secret" "CAIRNLOOP_WEBHOOK_SECRET is required" \
  "CAIRNLOOP_WEBHOOK_URL=$(rcv_url good)" -- --policy "$WEBHOOK_POLICY" "${allow[@]}"
bare=${S2#whsec_}
config_error "a secret without whsec_" "CAIRNLOOP_WEBHOOK_SECRET must start with \"whsec_\"" \
  "CAIRNLOOP_WEBHOOK_URL=$(rcv_url good)" "CAIRNLOOP_WEBHOOK_SECRET=$bare" -- --policy "$WEBHOOK_POLICY" "${allow[@]}"
if grep -qF -- "$bare" "$cl_tmp/err"; then tap 1 "the refused secret is not shown" "$err"; else
  tap 0 "the refused secret is not shown"; fi
config_error "bad base64 in the second secret" \
  "CAIRNLOOP_WEBHOOK_SECRET \(secret 2 of 2\) is not valid base64 after \"whsec_\"" \
  "CAIRNLOOP_WEBHOOK_URL=$(rcv_url good)" "CAIRNLOOP_WEBHOOK_SECRET=$S1,whsec_not*base64!" \
  -- --policy "$WEBHOOK_POLICY" "${allow[@]}"
if grep -qF -- "not*base64" "$cl_tmp/err" || grep -qF -- "${S1#whsec_}" "$cl_tmp/err"; then
  tap 1 "neither secret is shown" "$err"
else
  tap 0 "neither secret is shown"
fi
config_error "a timeout that is not a number" "CAIRNLOOP_WEBHOOK_TIMEOUT_MS must be an integer" \
  "CAIRNLOOP_WEBHOOK_URL=$(rcv_url good)" "CAIRNLOOP_WEBHOOK_SECRET=$S1" "CAIRNLOOP_WEBHOOK_TIMEOUT_MS=soon" \
  -- --policy "$WEBHOOK_POLICY" "${allow[@]}"
config_error "a timeout out of range" "CAIRNLOOP_WEBHOOK_TIMEOUT_MS must be an integer from 1 to 300000" \
  "CAIRNLOOP_WEBHOOK_URL=$(rcv_url good)" "CAIRNLOOP_WEBHOOK_SECRET=$S1" "CAIRNLOOP_WEBHOOK_TIMEOUT_MS=0" \
  -- --policy "$WEBHOOK_POLICY" "${allow[@]}"
bad_install() { # NAME OPTS-LUA
  policy_file "$1" 'local cl = require "cairnloop"
require("cairnloop.webhook").install(cl, '"$2"')'
}
config_error "install(): no secret" "secret is required" \
  -- --policy "$(bad_install no_secret "{ url = 'http://127.0.0.1:1/' }")"
config_error "install(): a secret list with a bad entry" "secret \(secret 2 of 2\) must start with \"whsec_\"" \
  -- --policy "$(bad_install bad_list "{ url = 'http://127.0.0.1:1/', secret = { '$S1', 'sekrit' } }")"
config_error "install(): an unknown option" "unknown option timeout" \
  -- --policy "$(bad_install unknown "{ url = 'http://127.0.0.1:1/', secret = '$S1', timeout = 5 }")"
config_error "install(): a header the notifier owns" "headers: \"Webhook-Signature\" is set by the notifier itself" \
  -- --policy "$(bad_install reserved "{ url = 'http://127.0.0.1:1/', secret = '$S1', headers = { ['Webhook-Signature'] = 'v1,x' } }")"
config_error "install(): a fractional timeout" "timeout_ms must be an integer from 1 to 300000" \
  -- --policy "$(bad_install frac "{ url = 'http://127.0.0.1:1/', secret = '$S1', timeout_ms = 1.5 }")"
is "$(job_of never_sent "concat_ws('|', state, attempt)")" "available|0" "no configuration error delivered anything"
is "$(rcv_stat good 'r.requests')" "$before" "the receiver got nothing more"
