#!/usr/bin/env bash
# The policy state's network and signing API, through `cairnloop work`
# against a real HTTP server on 127.0.0.1 (Python's http.server): what
# cl.http.request returns, where it may not be called, the allow list,
# the notifier's verdicts (opts.reason, retry_after, discard) as rows,
# cl.crypto against RFC 4231, cl.getenv's fence, and the hook budget of a
# delivery that waited on the network.  Runs in its own schema.
set -u
. "$(dirname "$0")/cli_lib.bash"
need_database

S=policy_http
cl migrate --schema "$S"
exits 0 "migrate --schema $S"
seed_conversations 1 20 "$S"

# A static HTTP server: GET /ok.txt is 200, anything else 404.
www=$cl_tmp/www
mkdir -p "$www"
printf 'hello' >"$www/ok.txt"
port_file=$cl_tmp/port
python3 - "$www" "$port_file" <<'PY' 2>/dev/null &
import functools, http.server, sys
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass
h = functools.partial(Quiet, directory=sys.argv[1])
http.server.ThreadingHTTPServer.request_queue_size = 128
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), h)
open(sys.argv[2] + ".tmp", "w").write(str(s.server_address[1]))
import os; os.rename(sys.argv[2] + ".tmp", sys.argv[2])
s.serve_forever()
PY
server_pid=$!
on_exit() { kill "$server_pid" 2>/dev/null || true; }
wait_until 10 test -s "$port_file" || tap 1 "the HTTP server started"
port=$(cat "$port_file")
base="http://127.0.0.1:$port"

job_errors() { sql "SELECT string_agg(errors->-1->>'error', ' | ' ORDER BY id) FROM $S.cairnloop_delivery_jobs WHERE state <> 'completed'"; }
reset_jobs() { sql "DELETE FROM $S.cairnloop_delivery_jobs; DELETE FROM $S.cairnloop_messages" >/dev/null; }
one_job() { cl trigger "${1:-1}" --template T --schema "$S"; }

# ---------------------------------------------------------------- requests
cat >"$cl_tmp/fetch.lua" <<LUA
local cl = require "cairnloop"
cl.notifier(function(m, c, d)
  local res, why, detail = cl.http.request{ url = "$base/ok.txt", timeout_ms = 5000 }
  if not res then return nil, why .. ": " .. tostring(detail) end
  cl.log("info", string.format("got %d %s %s", res.status, res.body, res.headers["content-length"]))
  local missing = cl.http.request{ url = "$base/missing.txt" }
  cl.log("info", "missing " .. missing.status)
  return res.status == 200 and res.body == "hello"
end)
LUA
reset_jobs
one_job 1
cl work --once --schema "$S" --policy "$cl_tmp/fetch.lua" --http-allow "http://127.0.0.1:*"
exits 0 "work with an allowed destination"
like "$out" "^sent 1, failed 0" "the notifier's GET succeeded"
like "$err" "got 200 hello 5" "the response has status, body and lowercased headers"
like "$err" "missing 404" "a 404 is a response, not an error"

reset_jobs
one_job 1
cl work --once --schema "$S" --policy "$cl_tmp/fetch.lua"
exits 0 "work without an allow list"
like "$out" "^sent 0, failed 1" "without --http-allow the request is refused"
like "$(job_errors)" "not_allowed: no destination is allowed" "the recorded reason says not_allowed and why"

reset_jobs
one_job 1
CAIRNLOOP_HTTP_ALLOW="https://elsewhere.example/, $base/" cl work --once --schema "$S" --policy "$cl_tmp/fetch.lua"
like "$out" "^sent 1, failed 0" "CAIRNLOOP_HTTP_ALLOW allows destinations too"

reset_jobs
one_job 1
cl work --once --schema "$S" --policy "$cl_tmp/fetch.lua" --http-allow "http://127.0.0.1:1/"
like "$(job_errors)" "not_allowed" "a pattern for another port does not allow this one"

cl work --once --schema "$S" --policy "$cl_tmp/fetch.lua" --http-allow "ftp://x/"
exits 2 "a malformed pattern is a usage error"
like "$err" "^cairnloop: invalid_argument: .*ftp://x/" "the error names the pattern"

# ---------------------------------------------------------------- misuse
printf 'local cl = require "cairnloop"\ncl.http.request{ url = "%s/ok.txt" }\n' "$base" >"$cl_tmp/at_load.lua"
cl work --once --schema "$S" --policy "$cl_tmp/at_load.lua" --http-allow "http://127.0.0.1:*"
exits 5 "cl.http.request while the policy loads is a hook error"
like "$err" "only while a notifier runs" "and says where it may be called"

cat >"$cl_tmp/in_coroutine.lua" <<LUA
local cl = require "cairnloop"
cl.notifier(function()
  local co = coroutine.wrap(function() return cl.http.request{ url = "$base/ok.txt" } end)
  return co()
end)
LUA
reset_jobs
one_job 1
cl work --once --schema "$S" --policy "$cl_tmp/in_coroutine.lua" --http-allow "http://127.0.0.1:*"
like "$out" "^sent 0, failed 1" "cl.http.request from a coroutine the notifier made fails the delivery"
like "$(job_errors)" "from the notifier itself" "with a message saying so"

printf 'local cl = require "cairnloop"\ncl.notifier(function() coroutine.yield() return true end)\n' >"$cl_tmp/yields.lua"
reset_jobs
one_job 1
cl work --once --schema "$S" --policy "$cl_tmp/yields.lua"
like "$out" "^sent 0, failed 1" "a notifier that yields by itself fails the delivery"
like "$(job_errors)" "yielded outside cl.http.request" "with a message saying so"

cat >"$cl_tmp/bad_request.lua" <<LUA
local cl = require "cairnloop"
cl.notifier(function()
  local res, why = cl.http.request{ url = "$base/ok.txt", headers = { ["x-a"] = "1\r\nx-b: 2" } }
  return nil, tostring(why)
end)
LUA
reset_jobs
one_job 1
cl work --once --schema "$S" --policy "$cl_tmp/bad_request.lua" --http-allow "http://127.0.0.1:*"
like "$(job_errors)" "notifier: invalid_request" "a header with CR/LF is refused before anything is sent"

# ---------------------------------------------------------------- verdicts
cat >"$cl_tmp/verdicts.lua" <<'LUA'
local cl = require "cairnloop"
cl.notifier(function(m)
  local k = m.conversation_id
  if k == 1 then return nil, "gone for good", { reason = "http_status", discard = true } end
  if k == 2 then return nil, "slow down", { reason = "http_status", retry_after = 300 } end
  if k == 3 then return nil, "plain failure" end
  return nil, "odd reason", { reason = "not_a_reason" }
end)
LUA
reset_jobs
for i in 1 2 3 4; do one_job "$i"; done
cl work --once --schema "$S" --policy "$cl_tmp/verdicts.lua"
like "$out" "^sent 0, failed 4, no_op 0, retried 3, discarded 1" "verdicts: one discarded at once, three retried"
is "$(sql "SELECT state || ':' || attempt FROM $S.cairnloop_delivery_jobs WHERE conversation_id = 1")" "discarded:1" \
  "discard = true discards at the first attempt"
is "$(sql "SELECT scheduled_at >= now() + interval '299 s' FROM $S.cairnloop_delivery_jobs WHERE conversation_id = 2")" "t" \
  "retry_after = 300 schedules the retry no sooner than 300 s"
is "$(sql "SELECT scheduled_at < now() + interval '10 s' FROM $S.cairnloop_delivery_jobs WHERE conversation_id = 3")" "t" \
  "no retry_after: the usual backoff"
like "$err" "not_a_reason.*is not one of the delivery reasons" "an unknown reason is logged"

# ---------------------------------------------------------------- crypto, env
cat >"$cl_tmp/crypto.lua" <<'LUA'
local cl = require "cairnloop"
local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end
cl.log("info", "hmac " .. hex(cl.crypto.hmac_sha256("Jefe", "what do ya want for nothing?")))
cl.log("info", "b64 " .. cl.crypto.base64_encode("foobar") .. " " .. cl.crypto.base64_decode("Zm9vYmE="))
cl.log("info", "bad " .. tostring(select(2, cl.crypto.base64_decode("not base64!"))))
cl.log("info", "date " .. tostring(cl.http.parse_date("Sun, 06 Nov 1994 08:49:37 GMT")))
cl.log("info", "env " .. tostring(cl.getenv("CAIRNLOOP_TEST_SETTING")))
local ok, e = pcall(cl.getenv, "HOME")
cl.log("info", "fence " .. tostring(ok) .. " " .. tostring(e))
LUA
CAIRNLOOP_TEST_SETTING=value cl work --once --schema "$S" --policy "$cl_tmp/crypto.lua"
exits 0 "the crypto policy loads"
like "$err" "hmac 5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843" "HMAC-SHA256 matches RFC 4231 test case 2"
like "$err" "b64 Zm9vYmFy fooba" "base64 both ways (RFC 4648)"
like "$err" "bad invalid base64" "bad base64 is nil, reason"
like "$err" "date 784111777" "an HTTP date parses to Unix seconds"
like "$err" "env value" "cl.getenv reads CAIRNLOOP_* variables"
like "$err" "fence false .*only CAIRNLOOP_\\* variables" "and nothing else"

# ---------------------------------------------------------------- budget
cat >"$cl_tmp/spin.lua" <<LUA
local cl = require "cairnloop"
cl.notifier(function()
  assert(cl.http.request{ url = "$base/ok.txt" })
  while true do end
end)
LUA
reset_jobs
one_job 1
cl work --once --schema "$S" --policy "$cl_tmp/spin.lua" --http-allow "http://127.0.0.1:*"
like "$out" "^sent 0, failed 1" "a notifier that spins after a request is stopped by its budget"
like "$(job_errors)" "notifier: .*(instruction|time)" "and the error names the budget"

