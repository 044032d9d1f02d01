#!/usr/bin/env bash
# A --policy file that cannot be read or compiled is a bad argument (issue
# 10, section 3): exit 2 and one stderr line `cairnloop: invalid_argument:
# policy: ...`, with no traceback and no log line, since no hook ran.  A
# file that raises while it runs is a hook error (exit 5), as before.
# Nothing is written either way.  Runs in its own schema.
set -u
. "$(dirname "$0")/cli_lib.bash"
need_database

S=policy_errors
cl migrate --schema "$S"
exits 0 "migrate --schema $S"
seed_conversations 1 5 "$S"
written() { sql "SELECT (SELECT count(*) FROM $S.cairnloop_messages) + (SELECT count(*) FROM $S.cairnloop_outbound_bulk_envelopes)"; }
before=$(written)

cl bulk --template T --body b --ids 1,2 --policy /nonexistent.lua --schema "$S"
exits 2 "a missing policy file exits 2"
is "$err" "cairnloop: invalid_argument: policy: cannot open /nonexistent.lua: No such file or directory" \
  "a missing policy file is one line naming the file and the reason"
is "$out" "" "a missing policy file prints nothing on stdout"

printf 'local x = = 1\n' >"$cl_tmp/syntax.lua"
cl bulk --template T --body b --ids 1,2 --policy "$cl_tmp/syntax.lua" --schema "$S"
exits 2 "a policy that does not compile exits 2"
is "$err" "cairnloop: invalid_argument: policy: $cl_tmp/syntax.lua:1: unexpected symbol near '='" \
  "a policy that does not compile is one line with the compiler's message"

mkdir -p "$cl_tmp/a_directory"
cl trigger 1 --template T --policy "$cl_tmp/a_directory" --schema "$S"
exits 2 "a directory given as the policy exits 2"
like "$err" "^cairnloop: invalid_argument: policy: cannot read $cl_tmp/a_directory" \
  "a directory given as the policy is one line"
is "$(wc -l <<<"$err")" "1" "a directory given as the policy: one stderr line"

printf 'error("policy fails to load")\n' >"$cl_tmp/raises.lua"
cl bulk --template T --body b --ids 1,2 --policy "$cl_tmp/raises.lua" --schema "$S"
exits 5 "a policy that raises while loading is a hook error"
like "$(tail -n 1 <<<"$err")" "^cairnloop: hook_error: policy: .*policy fails to load$" \
  "a policy that raises while loading ends with one hook_error line"

is "$(written)" "$before" "nothing was written"
