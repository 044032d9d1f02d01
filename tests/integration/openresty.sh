#!/usr/bin/env bash
# The OpenResty example (examples/openresty) in Debian's nginx with the Lua
# module: every route and every HTTP status it maps from the engine's codes,
# the rows each write leaves in PostgreSQL, /metrics summed over two
# workers, the Lua 5.4 policy running inside nginx's LuaJIT process (in the
# engines that cairnloop.resty opens on the thread pool), one connection per
# thread VM in use, recovery from a lost connection, an unreachable
# database, and a QUIT that leaves no process and no connection behind.
# TAP on stdout.
#
# Needs nginx + libnginx-mod-http-lua, build/luajit/cairnloop.so (make
# luajit) and a database: CAIRNLOOP_DATABASE_URL and/or the PG* variables,
# as tools/check.sh sets them.  Run from anywhere.
set -u
cd "$(dirname "$0")/../.." || exit 1
ROOT=$(pwd)
. tests/integration/openresty_lib.bash

if [ -z "${CAIRNLOOP_DATABASE_URL:-}" ] && [ -z "${PGHOST:-}" ]; then
  skip_all "no test database (run under tools/check.sh or tests/pg.sh run)"
fi
for f in /usr/lib/nginx/modules/ndk_http_module.so /usr/lib/nginx/modules/ngx_http_lua_module.so; do
  [ -r "$f" ] || skip_all "$f is missing (apt-get install nginx libnginx-mod-http-lua)"
done
command -v nginx >/dev/null || skip_all "no nginx"

if [ -r build/luajit/cairnloop.so ]; then pass "build/luajit/cairnloop.so is built"
else bail "build/luajit/cairnloop.so is missing: run make luajit"; fi

export PGCLIENTENCODING=UTF8
unset CAIRNLOOP_MAX_BATCH_SIZE
run=$$_$RANDOM # template ids of this run: the file may run again on the same database

# ------------------------------------------------------------------ database
out=$(luajit -e 'package.cpath = "./build/luajit/?.so;" .. package.cpath' -e '
  local engine, code, msg = require("cairnloop").open()
  if not engine then error(code .. ": " .. msg) end
  local ok, code2, msg2 = engine:migrate()
  if not ok then error(code2 .. ": " .. msg2) end
  engine:close()' 2>&1)
if [ $? -eq 0 ]; then pass "the LuaJIT module migrates the database"
else bail "migration from LuaJIT failed: $out"; fi
sql "INSERT INTO cairnloop.cairnloop_conversations (id, subject)
     SELECT g, 'conversation ' || g FROM generate_series(1, 40) AS g ON CONFLICT (id) DO NOTHING"
sql "DELETE FROM cairnloop.cairnloop_conversations WHERE id = 999" # the unknown one

# ------------------------------------------------------------------ nginx
mkdir "$W/t"
out=$(nginx -t -q -p "$W/t/" -c "$ROOT/examples/openresty/nginx.conf" 2>&1)
if [ $? -eq 0 ]; then pass "nginx -t accepts examples/openresty/nginx.conf as shipped"
else fail "nginx -t accepts examples/openresty/nginx.conf as shipped" "$out"; fi

# Instance A: the shipped config (master + 2 workers), the cap from the
# environment through its `env` directive.  As root the master would run
# the workers as `nobody`, which need not be able to reach the test
# cluster's socket directory nor read this checkout; so here they stay
# root.  (A production server runs them as a user that can reach the
# database socket.)
a_globals=
[ "$(id -u)" -eq 0 ] && a_globals="user root;"
start_nginx A "$a_globals" CAIRNLOOP_MAX_BATCH_SIZE=5 \
  CAIRNLOOP_POLICY="$ROOT/examples/openresty/policy.lua" ||
  bail "nginx (instance A) did not start"
A=$A_url
pass "nginx starts the example on a free loopback port ($A)"

workers=$(ps -o pid= --ppid "$A_pid" | wc -l)
is "$workers" 2 "two worker processes"
wait_for "grep -c 'policy loaded on Lua 5.4 (math.type(7 // 2) = integer)' '$A_dir/error.log'" 2
is "$waited" 2 "each worker's engine loaded the policy on Lua 5.4 (logged through ngx.log)"
wait_for "sql \"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
  AND backend_type = 'client backend' AND pid <> pg_backend_pid()\"" 2
is "$waited" 2 "each worker's warm-up opened one engine on its thread pool: one connection each"

req GET /healthz
is "$code $(j r.status)" "200 ok" "GET /healthz: 200 once the worker has its engine"

# ------------------------------------------------------------------ POST /bulk
tpl="bulk_$run"
req POST /bulk '{"ids":[1,2,3],"template_id":"'"$tpl"'","rendered_body":"Hello there","actor":"Operator:742"}'
is "$code" 201 "POST /bulk: 201 for a submitted envelope"
env1=$(j r.id)
is "$(j 'r.status, r.count, r.effective_cap, table.concat(r.recipient_conversation_ids, ","), r.rendered_body')" \
  "submitted 3 5 1,2,3 Hello there" "the body is the envelope (cap 5 from CAIRNLOOP_MAX_BATCH_SIZE)"
is "$(hdr Location)" "/envelopes/$env1" "Location names the new envelope"
is "$(j r.requested_by)" "operator:742@team7" "the Lua 5.4 resolver ran: 742 // 100 = 7 in requested_by"
is "$(sql "SELECT status, count, effective_cap, requested_by FROM cairnloop.cairnloop_outbound_bulk_envelopes
           WHERE id = '$env1'")" "submitted|3|5|operator:742@team7" "the envelope row is in PostgreSQL"
is "$(sql "SELECT string_agg(conversation_id::text, ',' ORDER BY conversation_id)
           FROM cairnloop.cairnloop_messages WHERE metadata->>'bulk_envelope_id' = '$env1'")" \
  "1,2,3" "one message per recipient, tagged with the envelope"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE bulk_envelope_id = '$env1'")" 3 \
  "one delivery job per recipient"
is "$(sql "SELECT action, actor, count FROM cairnloop.cairnloop_audit_events WHERE bulk_envelope_id = '$env1'")" \
  "bulk_outbound_trigger|operator:742@team7|3" "the policy's auditor wrote its row in the same transaction"

req POST /bulk '{"ids":[4,5],"template_id":"'"$tpl"'","rendered_body":"Hi","actor":"  AGENT:ZOË  "}'
is "$code $(j r.requested_by)" "201 agent:zoë" "the resolver folds case with utf8.codes/utf8.char"
is "$(sql "SELECT requested_by FROM cairnloop.cairnloop_outbound_bulk_envelopes WHERE id = '$(j r.id)'")" \
  "agent:zoë" "requested_by is stored as resolved"

eid=$(cat /proc/sys/kernel/random/uuid)
req POST /bulk '{"ids":[6,7],"template_id":"'"$tpl"'","rendered_body":"Same","envelope_id":"'"$eid"'"}'
is "$code $(j r.id) $(j r.requested_by)" "201 $eid null" "a caller-chosen envelope_id: 201, no actor: null"
req POST /bulk '{"ids":[6,7],"template_id":"'"$tpl"'","rendered_body":"Same","envelope_id":"'"$eid"'"}'
is "$code $(j r.id) $(j r.status)" "200 $eid submitted" "the same request again: 200, replayed"
is "$(hdr Location)" "" "a replay names no new resource"
is "$(sql "SELECT (SELECT count(*) FROM cairnloop.cairnloop_outbound_bulk_envelopes WHERE id = '$eid'),
                  (SELECT count(*) FROM cairnloop.cairnloop_messages WHERE metadata->>'bulk_envelope_id' = '$eid')")" \
  "1|2" "the replay wrote nothing new"
req POST /bulk '{"ids":[6,7],"template_id":"'"$tpl"'","rendered_body":"Different","envelope_id":"'"$eid"'"}'
is "$code $(j r.error)" "409 envelope_conflict" "the same envelope_id with other content: 409 envelope_conflict"
like "$(j r.message)" "$eid" "the message names the envelope"
is "$(sql "SELECT rendered_body FROM cairnloop.cairnloop_outbound_bulk_envelopes WHERE id = '$eid'")" "Same" \
  "the stored envelope is unchanged"

over="over_$run"
req POST /bulk '{"ids":[1,2,3,4,5,6],"template_id":"'"$over"'","rendered_body":"Too many"}'
is "$code $(j r.error)" "413 batch_too_large" "six ids over the cap of five: 413 batch_too_large"
is "$(j r.message)" "batch_size 6 exceeds cap 5" "the message says size and cap"
is "$(sql "SELECT status, count, effective_cap, refused_reason FROM cairnloop.cairnloop_outbound_bulk_envelopes
           WHERE template_id = '$over'")" "refused_cap_exceeded|6|5|batch_size 6 exceeds cap 5" \
  "the refused envelope is recorded in PostgreSQL"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_messages WHERE metadata->>'template_id' = '$over'")" 0 \
  "a refused envelope sends nothing"
req GET "/envelopes?template_id=$over&status=refused_cap_exceeded"
is "$code $(j '#r') $(j 'r[1].status') $(j 'r[1].refused_reason')" \
  "200 1 refused_cap_exceeded batch_size 6 exceeds cap 5" "GET /envelopes shows the refused envelope"
# Two more, which land on either worker: /metrics must still count three.
req POST /bulk '{"ids":[1,2,3,4,5,6],"template_id":"'"$over"'","rendered_body":"Too many"}'
req POST /bulk '{"ids":[1,2,3,4,5,6],"template_id":"'"$over"'","rendered_body":"Too many"}'
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_outbound_bulk_envelopes WHERE template_id = '$over'")" 3 \
  "each refusal is its own audit row"

# Every failure below must leave nothing behind under its template id.
nothing_under() { # TEMPLATE DESC
  is "$(sql "SELECT (SELECT count(*) FROM cairnloop.cairnloop_outbound_bulk_envelopes WHERE template_id = '$1')
               + (SELECT count(*) FROM cairnloop.cairnloop_messages WHERE metadata->>'template_id' = '$1')
               + (SELECT count(*) FROM cairnloop.cairnloop_audit_events WHERE template_id = '$1')")" 0 "$2"
}

t="unknown_$run"
req POST /bulk '{"ids":[1,999],"template_id":"'"$t"'","rendered_body":"x"}'
is "$code $(j r.error) $(j r.message)" "404 unknown_conversation conversation 999 does not exist" \
  "an unknown conversation in the cohort: 404 unknown_conversation"
nothing_under "$t" "unknown_conversation rolled everything back"

t="actor_$run"
req POST /bulk '{"ids":[1],"template_id":"'"$t"'","rendered_body":"x","actor":"robot:1"}'
is "$code $(j r.error)" "403 actor_rejected" "an actor the policy refuses: 403 actor_rejected"
like "$(j r.message)" "^actor_resolver: unknown actor kind 'robot'" "the message is the resolver's reason"
req POST /bulk '{"ids":[1],"template_id":"'"$t"'","rendered_body":"x","actor":"operator:7.5"}'
is "$code $(j r.message)" "403 actor_resolver: operator ids are positive integers, got \"7.5\"" \
  "math.type tells 7.5 from an integer id: 403"
nothing_under "$t" "actor_rejected wrote nothing"

t="audit_$run"
req POST /bulk '{"ids":[1,2,3,4],"template_id":"'"$t"'","rendered_body":"x","actor":"agent:kim"}'
is "$code $(j r.error)" "403 audit_rejected" "an agent's bulk past the policy's limit: 403 audit_rejected"
like "$(j r.message)" "at most 3 recipients, got 4" "the message is the auditor's reason"
nothing_under "$t" "audit_rejected rolled everything back"

t="fault_$run"
req POST /bulk '{"ids":[1],"template_id":"'"$t"'","rendered_body":"x","actor":"fault:boom"}'
is "$code $(j r.error)" "500 hook_error" "a policy hook that raises: 500 hook_error"
like "$(j r.message)" "^actor_resolver: .*policy\.lua:[0-9]+: fault injected" "the message names hook and line"
nothing_under "$t" "hook_error rolled everything back"

t="invalid_$run"
req POST /bulk '{"ids":[1.5],"template_id":"'"$t"'","rendered_body":"x"}'
is "$code $(j r.error)" "422 invalid_argument" "a fractional id: 422 invalid_argument"
req POST /bulk '{"ids":[9007199254740993],"template_id":"'"$t"'","rendered_body":"x"}'
is "$code $(j r.error)" "422 invalid_argument" "an id above 2^53 (not exact in LuaJIT): 422"
like "$(j r.message)" "^number 9007199254740993 " "the message quotes the number as sent"
req POST /bulk '{"ids":[1e2],"template_id":"'"$t"'","rendered_body":"x"}'
is "$code" 422 "an exponent is not an id: 422"
req POST /bulk '{"ids":[],"template_id":"'"$t"'","rendered_body":"x"}'
is "$code $(j r.error)" "422 invalid_argument" "an empty cohort: 422"
req POST /bulk '{"ids":[1],"rendered_body":"x"}'
is "$code $(j r.message)" "422 template_id is required" "a missing template_id: 422 naming the field"
req POST /bulk '{"ids":"1,2","template_id":"'"$t"'","rendered_body":"x"}'
is "$code $(j r.error)" "422 invalid_argument" "ids that are not a list: 422"
req POST /bulk '{"ids":[1],"template_id":"'"$t"'","rendered_body":"x","colour":"red"}'
is "$code $(j r.message)" "422 unknown field 'colour'" "an unknown field: 422 naming it"
req POST /bulk '[1,2]'
is "$code $(j r.message)" "422 the request body must be a JSON object" "a JSON array body: 422"
req POST /bulk '{"ids":[1],"template_id":"'"$t"'",'
is "$code $(j r.error)" "400 malformed_json" "malformed JSON: 400 malformed_json"
like "$(j r.message)" "^malformed JSON: " "with the parser's reason"
req POST /bulk ''
is "$code $(j r.error)" "400 malformed_json" "an empty body: 400"
req GET /bulk
is "$code $(j r.error) $(hdr Allow)" "405 method_not_allowed POST" "GET /bulk: 405 with Allow: POST"
nothing_under "$t" "invalid input wrote nothing"

# ------------------------------------------------------------------ POST /trigger
t="trigger_$run"
req POST /trigger '{"conversation_id":5,"template_id":"'"$t"'","actor":" Service:CRON "}'
is "$code $(j r.duplicate)" "201 false" "POST /trigger: 201, duplicate false"
msg_id=$(j r.message.id)
is "$(j 'r.message.conversation_id, r.message.role, r.message.content, r.message.metadata.status')" \
  "5 system_outbound Outbound message using template: $t pending" "the message"
is "$(j 'r.delivery_job.worker, r.delivery_job.state, r.delivery_job.args.message_id == r.message.id,
         r.delivery_job.args.bulk_envelope_id')" \
  "outbound available true null" "the delivery job"
is "$(sql "SELECT m.conversation_id, m.content, j.state FROM cairnloop.cairnloop_messages m
           JOIN cairnloop.cairnloop_delivery_jobs j ON j.message_id = m.id WHERE m.id = $msg_id")" \
  "5|Outbound message using template: $t|available" "message and job are in PostgreSQL"
is "$(sql "SELECT actor FROM cairnloop.cairnloop_audit_events WHERE template_id = '$t'")" "service:cron" \
  "the resolved actor is audited"
req POST /trigger '{"conversation_id":5,"template_id":"'"$t"'","actor":" Service:CRON "}'
is "$code $(j r.duplicate) $(j r.message.id)" "200 true $msg_id" "the same trigger again: 200, duplicate"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_messages WHERE metadata->>'template_id' = '$t'")" 1 \
  "the duplicate wrote nothing"
req POST /trigger '{"conversation_id":6,"template_id":"'"$t"'","content":"Your ticket is back","schedule_in":3600,"bulk_envelope_id":null}'
is "$code $(j r.delivery_job.state) $(j r.message.content)" "201 scheduled Your ticket is back" \
  "content and schedule_in (a JSON null is an absent option)"
is "$(sql "SELECT state, scheduled_at > now() + interval '50 minutes' FROM cairnloop.cairnloop_delivery_jobs
           WHERE conversation_id = 6 AND template_id = '$t'")" "scheduled|t" "the job is scheduled an hour ahead"
req POST /trigger '{"conversation_id":7,"template_id":"'"$t"'","bulk_envelope_id":"'"$eid"'"}'
is "$code $(j r.message.metadata.bulk_envelope_id)" "201 $eid" "bulk_envelope_id is carried"
req POST /trigger '{"conversation_id":999,"template_id":"'"$t"'"}'
is "$code $(j r.message)" "404 conversation 999 does not exist" "an unknown conversation: 404"
req POST /trigger '{"conversation_id":"5","template_id":"'"$t"'"}'
is "$code $(j r.error)" "422 invalid_argument" "a string conversation_id: 422"
req POST /trigger '{"conversation_id":5,"template_id":"'"$t"'","actor":"robot:9"}'
is "$code $(j r.error)" "403 actor_rejected" "a refused actor: 403"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_messages WHERE metadata->>'template_id' = '$t'")" 3 \
  "only the three successful triggers wrote messages"
big=$(head -c 20000 /dev/zero | tr '\0' a)
req POST /trigger "{\"conversation_id\":5,\"template_id\":\"$t\",\"content\":\"$big\"}"
is "$code $(j r.error)" "413 body_too_large" "a body past client_max_body_size: nginx's 413, as JSON"

# ------------------------------------------------------------------ GET /envelopes
req GET "/envelopes?template_id=$tpl"
is "$code $(j '#r') $(j 'r[1].id')" "200 3 $eid" "GET /envelopes?template_id=: the list, newest first"
req GET "/envelopes?template_id=$tpl&status=submitted&limit=1"
is "$code $(j '#r')" "200 1" "limit=1"
req GET "/envelopes?template_id=nothing_$run"
is "$code $body" "200 []" "no match: an empty JSON list, not an object"
req GET "/envelopes?limit=ten"
is "$code $(j r.error)" "422 invalid_argument" "a non-numeric limit: 422"
req GET "/envelopes?limit=0"
is "$code $(j r.error)" "422 invalid_argument" "limit 0: 422 from the engine"
req GET "/envelopes?colour=red"
is "$code $(j r.message)" "422 unknown query parameter 'colour'" "an unknown parameter: 422"
req GET "/envelopes/$env1"
is "$code $(j r.id) $(j r.requested_by)" "200 $env1 operator:742@team7" "GET /envelopes/<id>"
req GET "/envelopes/00000000-0000-4000-8000-000000000000"
is "$code $(j r.error)" "404 not_found" "an envelope that does not exist: 404"
req GET "/envelopes/not-a-uuid"
is "$code $(j r.error)" "422 invalid_argument" "a malformed envelope id: 422"
req GET /nowhere
is "$code $(j r.error)" "404 not_found" "an unknown route: 404 as JSON"
# Messages that quote broken input stay valid UTF-8: the bad byte becomes U+FFFD.
req GET "/envelopes/ab%C3%28"
if [ "$code" = 422 ] && iconv -f UTF-8 -t UTF-8 <<<"$body" >/dev/null 2>&1 && [[ $body == *$'\xef\xbf\xbd'* ]]; then
  pass "a message quoting invalid UTF-8 is valid UTF-8 JSON"
else fail "a message quoting invalid UTF-8 is valid UTF-8 JSON" "$code $body"; fi
req POST /trigger $'{"conversation_id":1,"template_id":"x","\xff\xfe":1}'
is "$code $(j r.message)" "422 unknown field '??'" "an unknown field with bytes that are not text"

# ------------------------------------------------------------------ GET /metrics
req GET /metrics
is "$code" 200 "GET /metrics: 200"
like "$(hdr Content-Type)" "^text/plain; version=0\.0\.4" "the Prometheus text format"
has_line() { # LINE DESC
  if grep -qxF -- "$1" <<<"$body"; then pass "$2"; else fail "$2" "no line: $1" "$body"; fi
}
has_line 'cairnloop_outbound_bulk_refused_total{outcome="refused_cap_exceeded"} 3' \
  "three refusals counted, whichever worker served them"
has_line 'cairnloop_outbound_bulk_refused_recipients_total{outcome="refused_cap_exceeded"} 18' \
  "their eighteen recipients counted"
has_line 'cairnloop_outbound_bulk_exceptions_total{kind="hook_error"} 1' "the raising hook counted once"
has_line '# TYPE cairnloop_outbound_trigger_total counter' "families carry HELP and TYPE"
like "$body" 'cairnloop_outbound_trigger_total\{outcome="duplicate"\} [1-9]' "duplicates are counted"
like "$body" 'cairnloop_outbound_bulk_duration_seconds_count\{outcome="submitted"\} [1-9]' "durations are summaries"
if grep -qE 'conversation_id|actor|operator|'"$run" <<<"$body"; then
  fail "no ids, actors or templates in the labels" "$body"
else pass "no ids, actors or templates in the labels"; fi

# ------------------------------------------------------------------ lost connection
# Every engine's connection is killed (the call waits until the backends
# are gone).  Whichever thread engine takes the next request finds its
# connection dead: 503 db_error, nothing written.  It reconnects on the next
# call; every other engine fails once too, so allow as many retries as
# there were connections.  (Requests here come one at a time, so each
# worker reuses one thread VM: two engines in all.)
killed=$(sql "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity
              WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()")
is "$killed" 2 "every engine's connection terminated (one thread VM per worker)"
t="lost_$run"
req POST /trigger '{"conversation_id":8,"template_id":"'"$t"'"}'
is "$code $(j r.error) $(hdr Retry-After)" "503 db_error 1" "a lost connection: 503 db_error with Retry-After"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_messages WHERE metadata->>'template_id' = '$t'")" 0 \
  "the failed call wrote nothing"
for attempt in $(seq 1 $((killed + 1))); do
  req POST /trigger '{"conversation_id":8,"template_id":"'"$t"'"}'
  [ "$code" = 503 ] || break
done
is "$code $(j r.duplicate)" "201 false" "the engine reconnects by itself: the next call succeeds"
is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_messages WHERE metadata->>'template_id' = '$t'")" 1 \
  "exactly one message after the retry"

# ------------------------------------------------------------------ no database
# Instance B: one process, a database that cannot be reached (a socket
# directory that does not exist): the engine cannot open, the worker keeps
# serving and answers 503, retrying the open at most once a second.
start_nginx B "master_process off;" \
  CAIRNLOOP_DATABASE_URL="postgresql:///nowhere?host=$W/B/no-such-dir&connect_timeout=2" \
  CAIRNLOOP_POLICY="$ROOT/examples/openresty/policy.lua" ||
  bail "nginx (instance B) did not start"
B=$B_url
req GET /healthz "" "$B"
is "$code $(j r.error)" "503 db_error" "no database: /healthz is 503 db_error"
req POST /bulk '{"ids":[1],"template_id":"x","rendered_body":"x"}' "$B"
is "$code $(j r.error) $(hdr Retry-After)" "503 db_error 1" "no database: POST /bulk is 503 with Retry-After"
like "$(j r.message)" "^cannot open the engine: cannot connect: " "the message says why"

# ------------------------------------------------------------------ shutdown
if grep -E '\[(alert|crit|emerg)\]|cairnloop_http: route failed' "$A_dir/error.log" "$B_dir/error.log" >"$W/bad.log"; then
  fail "no alert, crit or emerg lines and no failed route in the error logs" "$(cat "$W/bad.log")"
else pass "no alert, crit or emerg lines and no failed route in the error logs"; fi

a_workers=$(ps -o pid= --ppid "$A_pid" | tr -s ' \n' ' ')
stop_nginx "$A_pid"
gone=yes
for p in $A_pid $a_workers; do alive "$p" && gone="no: $p"; done
is "$gone" yes "kill -QUIT stops the master and both workers"
wait_for "sql \"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
  AND backend_type = 'client backend' AND pid <> pg_backend_pid()\"" 0
is "$waited" 0 "no connection is left behind"
stop_nginx "$B_pid"
if alive "$B_pid"; then fail "kill -QUIT stops the single-process server"
else pass "kill -QUIT stops the single-process server"; fi
