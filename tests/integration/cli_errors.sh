#!/usr/bin/env bash
# The contract of `cairnloop` for help, usage and failures: --help on every
# command, --version, the one-line stderr format `cairnloop: <code>:
# <message>` and every exit status (2 usage, 3 over the cap, 4 refusals,
# 5 hook_error, 6 db_error).  Runs in its own schema (--schema).
set -u
. "$(dirname "$0")/cli_lib.bash"
need_database

S=cli_errors
# A failure ends stderr with one line in this format; any line before it is
# a log line `cairnloop: [level] ...` (a hook's traceback); stdout is empty.
one_error_line() { # CODE DESC
  like "$(tail -n 1 <<<"$err")" "^cairnloop: $1: .+$" "$2: ends with one line 'cairnloop: $1: ...'"
  is "$(head -n -1 <<<"$err" | grep -vc '^cairnloop: \[')" "0" "$2: other stderr lines are log lines"
  is "$out" "" "$2: nothing on stdout"
}

# --- help and version
cl --help
exits 0 "cairnloop --help"
for c in migrate trigger bulk envelopes db; do
  like "$out" $'\n'"  $c " "--help lists $c"
done
like "$out" "Exit status: 0 success, 2 " "--help documents the exit statuses"
cl -h
exits 0 "cairnloop -h"
cl --version
is "$rc $out" "0 cairnloop 0.1.0" "--version"
for c in migrate trigger bulk envelopes db; do
  cl "$c" --help
  exits 0 "cairnloop $c --help"
  like "$out" "^Usage: cairnloop $c" "$c --help starts with its usage"
done
cl bulk -h
like "$out" "--ids-file F" "bulk -h documents --ids-file"

# --- usage errors: exit 2, invalid_argument
cl
exits 2 "no command"
one_error_line invalid_argument "no command"
for c in frobnicate; do
  cl "$c"
  exits 2 "$c is an unknown command"
  is "$err" "cairnloop: invalid_argument: unknown command '$c'" "unknown command '$c' is named"
done
cl trigger --template x
exits 2 "trigger without CONVERSATION_ID"
one_error_line invalid_argument "missing argument"
cl trigger 1 2 --template x
exits 2 "trigger with two ids"
cl trigger 1
exits 2 "trigger without --template"
like "$err" "--template is required" "names the missing option"
cl trigger abc --template x
exits 2 "a conversation id that is not a number"
like "$err" "'abc' is not an integer" "names the bad value"
cl trigger 1 --template x --bogus
exits 2 "an unknown option"
like "$err" "unknown option '--bogus'" "names the unknown option"
cl trigger 1 --template
exits 2 "an option without its value"
cl trigger 1 --template a --template b
exits 2 "an option given twice"
cl trigger 1 --template x --schedule-in soon
exits 2 "--schedule-in must be an integer"
cl bulk --template t --ids 1
exits 2 "bulk without a body"
cl bulk --template t --body b --body-file /dev/null --ids 1
exits 2 "bulk with --body and --body-file"
like "$err" "not both" "says not both"
cl bulk --template t --body b
exits 2 "bulk without ids"
cl bulk --template t --body b --ids 1,x,3
exits 2 "a bad id in --ids"
like "$err" "'x' is not a conversation id" "names the bad id"
cl bulk --template t --body b --ids 1,,3
exits 2 "an empty id in --ids"
cl_in $'1\n2\n\nthree\n' bulk --template t --body b --ids-file -
exits 2 "a bad line in --ids-file -"
like "$err" "line 4" "names the line number of the bad line"
one_error_line invalid_argument "bad ids file"
cl bulk --template t --body b --ids-file "$cl_tmp/missing"
exits 2 "a missing --ids-file"
printf 'a\0b' >"$cl_tmp/nul.txt"
cl bulk --template t --body-file "$cl_tmp/nul.txt" --ids 1
exits 2 "a body with a NUL byte"
cl envelopes --limit 0
exits 2 "--limit 0"
cl envelopes --body x
exits 2 "an option of another command"
cl db
exits 2 "db without an action"
cl db restart
exits 2 "an unknown db action"
cl db status --database "$CAIRNLOOP_DATABASE_URL"
exits 2 "db takes no --database"

# --- engine validation: invalid_argument, exit 2, nothing written
cl migrate --schema "$S"
exits 0 "migrate --schema"
seed_conversations 1 30 "$S"
cl trigger 0 --template x --schema "$S"
exits 2 "conversation id 0"
one_error_line invalid_argument "non-positive id"
cl bulk --template t --body b --ids 1,2,1 --schema "$S"
exits 2 "a duplicate id in the cohort"
like "$err" "duplicate conversation id 1" "names the duplicate id"
cl bulk --template t --body b --ids 1 --max-batch-size 0 --schema "$S"
exits 2 "--max-batch-size 0"
cl trigger 1 --template x --bulk-envelope-id not-a-uuid --schema "$S"
exits 2 "a bad --bulk-envelope-id"
cl migrate --schema "Bad-Schema"
exits 2 "a bad schema name"

# --- over the cap: exit 3, and the refused envelope is recorded
cl bulk --template capped --body b --ids "$(seq -s, 1 26)" --schema "$S" --json
exits 3 "26 recipients over the default cap of 25"
is "$err" "cairnloop: batch_too_large: batch_size 26 exceeds cap 25" "the refusal message"
# Regression: under --json a refusal printed nothing on stdout, and the
# refused envelope's id was lost to the caller.
refused=$out
is "$(jget 'r.status .. " " .. r.count .. " " .. r.refused_reason' "$refused")" \
  "refused_cap_exceeded 26 batch_size 26 exceeds cap 25" "--json prints the refused envelope as its result"
cl envelopes --template capped --status refused_cap_exceeded --schema "$S" --json
is "$(jget 'r.count .. " " .. r.effective_cap')" "26 25" "the refused envelope is recorded"
is "$(jget 'r.id')" "$(jget 'r.id' "$refused")" "the printed id is the recorded envelope's"
cl bulk --template capped --body b --ids "$(seq -s, 1 26)" --schema "$S"
is "$out" "" "without --json, stdout stays empty on a refusal"

# --- refusals: exit 4
cl trigger 999999 --template x --schema "$S"
exits 4 "an unknown conversation"
is "$err" "cairnloop: unknown_conversation: conversation 999999 does not exist" \
  "names the unknown conversation"
cl bulk --template t --body b --ids 1,999999 --schema "$S"
exits 4 "an unknown conversation in a cohort"
eid=$(cat /proc/sys/kernel/random/uuid)
cl bulk --template t --body "first" --ids 1,2 --envelope-id "$eid" --schema "$S"
exits 0 "a bulk with an envelope id"
cl bulk --template t --body "second" --ids 1,2 --envelope-id "$eid" --schema "$S"
exits 4 "the same envelope id with other content"
one_error_line envelope_conflict "envelope conflict"

# --- policies: --policy FILE, refusals (4) and hook errors (5)
cat >"$cl_tmp/audit_ok.lua" <<'LUA'
local cl = require "cairnloop"
cl.auditor{ audit = function(tx, action, actor, metadata)
  return { action = action, actor = actor, template = metadata.template_id }
end }
LUA
cat >"$cl_tmp/audit_no.lua" <<'LUA'
local cl = require "cairnloop"
cl.auditor{ audit = function() return nil, "audits are closed" end }
LUA
cat >"$cl_tmp/audit_boom.lua" <<'LUA'
local cl = require "cairnloop"
cl.auditor{ audit = function() error("audit exploded") end }
LUA
cat >"$cl_tmp/resolver_no.lua" <<'LUA'
local cl = require "cairnloop"
cl.actor_resolver(function(actor) return nil, "unknown actor " .. tostring(actor) end)
LUA
printf 'error("policy fails to load")\n' >"$cl_tmp/load_boom.lua"

cl trigger 3 --template audited --actor op:7 --policy "$cl_tmp/audit_ok.lua" --schema "$S" --json
exits 0 "trigger with an auditor policy"
is "$(jget 'r.audit.action .. " " .. r.audit.actor .. " " .. r.audit.template')" \
  "outbound_trigger op:7 audited" "the auditor's return value is the audit field, as JSON"
cl bulk --template audited --body b --ids 4,5 --policy "$cl_tmp/audit_ok.lua" --schema "$S" --json
is "$(jget 'r.audit.action')" "bulk_outbound_trigger" "bulk carries the audit too"
cl trigger 3 --template refused --policy "$cl_tmp/audit_no.lua" --schema "$S"
exits 4 "an auditor refusal"
like "$err" "^cairnloop: audit_rejected: .*audits are closed$" "audit_rejected carries the reason"
cl trigger 3 --template refused --actor x --policy "$cl_tmp/resolver_no.lua" --schema "$S"
exits 4 "an actor resolver refusal"
one_error_line actor_rejected "actor rejected"
cl trigger 3 --template boom --policy "$cl_tmp/audit_boom.lua" --schema "$S"
exits 5 "an auditor that raises"
one_error_line hook_error "hook error"
like "$err" "audit exploded" "the hook error names the error"
cl trigger 3 --template boom --policy "$cl_tmp/load_boom.lua" --schema "$S"
exits 5 "a policy that raises while loading"
cl trigger 3 --template x --policy "$cl_tmp/no_such_policy.lua" --schema "$S"
exits 2 "a missing policy file"
printf 'print("hello from the policy")\n' >"$cl_tmp/hello.lua"
cl envelopes --policy "$cl_tmp/hello.lua" --schema "$S" --limit 1
like "$err" "^cairnloop: \[info\] .*hello from the policy" "a policy's print is an info log line on stderr"
CAIRNLOOP_LOG_LEVEL=warn cl envelopes --policy "$cl_tmp/hello.lua" --schema "$S" --limit 1
is "$err" "" "CAIRNLOOP_LOG_LEVEL=warn hides info lines"
CAIRNLOOP_LOG_LEVEL=loud cl envelopes --schema "$S"
exits 2 "a bad CAIRNLOOP_LOG_LEVEL"
is "$err" "cairnloop: invalid_argument: CAIRNLOOP_LOG_LEVEL: 'loud' is not debug, info, warn or error" \
  "the error lists the engine's level names"
is "$(sql "SELECT count(*) FROM $S.cairnloop_messages WHERE metadata->>'template_id' IN ('refused', 'boom')")" \
  "0" "refused and failed triggers wrote nothing"

# --- the database: exit 6
bad='postgresql:///nope?host=/nonexistent/cairnloop-socket-dir&port=1&connect_timeout=3'
cl migrate --database "$bad"
exits 6 "an unreachable database"
one_error_line db_error "unreachable database"
cl envelopes --database "$bad" --json
exits 6 "an unreachable database, --json"
PGHOST=/nonexistent/cairnloop-socket-dir CAIRNLOOP_DATABASE_URL= cl envelopes
exits 6 "PG* variables are used when no URL is given (never the embedded cluster)"
cl trigger 1 --template x --database "$bad"
exits 6 "trigger on an unreachable database"
