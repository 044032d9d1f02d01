#!/usr/bin/env bash
# `cairnloop run SCRIPT.lua [ARGS...]`, the host of campaign scripts: the
# module registered in-process, the open engine, `arg` and the varargs as
# lua sets them, package.path over lua/ (and $CAIRNLOOP_LUA_PATH), the
# common options, and how errors end: uncaught errors exit 1 with a
# traceback, coded errors { code, message } exit with their code's status.
set -u
. "$(dirname "$0")/cli_lib.bash"
need_database

S="camp_run_$$_$RANDOM"
on_exit() { sql "DROP SCHEMA IF EXISTS $S CASCADE" >/dev/null 2>&1 || true; }

script() { # script NAME BODY: writes $cl_tmp/NAME.lua
  printf '%s\n' "$2" >"$cl_tmp/$1.lua"
}

# --- help and usage
cl run --help
exits 0 "run --help"
like "$out" "^Usage: cairnloop run SCRIPT.lua \[ARGS...\]" "run --help shows the synopsis"
like "$out" "default_config" "run --help documents what the script gets"
cl run
exits 2 "run without a script"
like "$err" "^cairnloop: invalid_argument: run: missing argument" "names the missing script"
cl run "$cl_tmp/none.lua"
exits 2 "a script that does not exist"
like "$err" "^cairnloop: invalid_argument: run: cannot open .*none.lua" "says it cannot open it"
cl demo --help
exits 0 "demo --help"
like "$out" "^Usage: cairnloop demo" "demo --help shows the synopsis"
cl demo --database "$CAIRNLOOP_DATABASE_URL"
exits 2 "demo takes no --database: it always runs on the embedded cluster"

# --- what the script gets
cl migrate --schema "$S"
exits 0 "migrate a fresh schema"
seed_conversations 1 30 "$S"

script env '
local cairnloop = require "cairnloop"
assert(package.loaded.cairnloop == cairnloop, "registered in package.loaded")
assert(not package.cpath:find("build/lua5.4", 1, true), "the module does not come from cpath")
print("version", cairnloop.VERSION)
print("engine", tostring(engine), cairnloop.default_engine() == engine)
local cfg = cairnloop.default_config()
print("config", cfg.database, cfg.schema, #cfg.policy, cfg.policy[1])
assert(cairnloop.default_config() ~= cfg, "a fresh table each call")
print("arg", arg[-2], arg[-1], arg[0] == (...) and "" or arg[0]:match("[^/]*$"), #arg, arg[1], arg[2], arg[3])
print("varargs", select("#", ...), ...)
print("cap", engine:max_batch_size())
print("campaign", type(require("cairnloop.campaign").run))
print("stdlib", type(io.open), type(os.getenv), type(debug.traceback))
local other = assert(cairnloop.open(cfg))
print("second engine", tostring(other))
other:close()'
cl --schema "$S" --policy "$CLI_TEST_ROOT/lua/cairnloop/table_auditor.lua" run "$cl_tmp/env.lua" \
  one "two words" --three
exits 0 "a script runs"
is "$(grep ^version <<<"$out")" "version	0.1.0" "require \"cairnloop\" is the module"
is "$(grep ^engine <<<"$out")" "engine	cairnloop.engine ($S)	true" \
  "the global engine is open on the --schema, and default_engine() returns it"
is "$(grep ^config <<<"$out")" \
  "config	$CAIRNLOOP_DATABASE_URL	$S	1	$CLI_TEST_ROOT/lua/cairnloop/table_auditor.lua" \
  "default_config() has the database, schema and policies the engine was opened with"
is "$(grep ^arg <<<"$out")" "arg	cairnloop	run	env.lua	3	one	two words	--three" \
  "arg as lua sets it: the script at 0, its arguments from 1 (dash options after the script are its own)"
is "$(grep ^varargs <<<"$out")" "varargs	3	one	two words	--three" "the arguments are the chunk's varargs"
is "$(grep ^cap <<<"$out")" "cap	25" "engine:max_batch_size() is the default cap"
is "$(grep ^campaign <<<"$out")" "campaign	function" "require \"cairnloop.campaign\" finds lua/"
is "$(grep ^stdlib <<<"$out")" "stdlib	function	function	function" "every standard library is open"
is "$(grep ^second <<<"$out")" "second engine	cairnloop.engine ($S)" \
  "cairnloop.open(default_config()) opens another engine alike"

script audited '
local res = assert(engine:trigger(1, { template_id = "run_v1" }))
print(res.audit.action)'
cl --schema "$S" --policy "$CLI_TEST_ROOT/lua/cairnloop/table_auditor.lua" run "$cl_tmp/audited.lua"
exits 0 "the --policy files are loaded into the engine"
is "$out" "outbound_trigger" "the policy's auditor ran"

printf 'print("from stdin", ...)\n' >"$cl_tmp/stdin.lua"
cl_in "$(cat "$cl_tmp/stdin.lua")" --schema "$S" run - a b
exits 0 "run - reads the script from standard input"
is "$out" "from stdin	a	b" "with its arguments"

mkdir -p "$cl_tmp/lib/extra"
printf 'return { name = "extra.mod" }\n' >"$cl_tmp/lib/extra/mod.lua"
script libpath 'print(require("extra.mod").name, pcall(require, "cairnloop.campaign"))'
CAIRNLOOP_LUA_PATH="$cl_tmp/lib" cl --schema "$S" run "$cl_tmp/libpath.lua"
exits 0 "CAIRNLOOP_LUA_PATH replaces our tree in package.path"
like "$out" "^extra.mod	false" "modules load from it, and lua/ is no longer searched"

script logs 'engine:configure { max_batch_size = 2 }
local _, code = engine:bulk_trigger({ 1, 2, 3 }, { template_id = "t", rendered_body = "b" })
print(code)'
cat >"$cl_tmp/printing_policy.lua" <<'LUA'
print("policy loaded")
LUA
cl --schema "$S" --policy "$cl_tmp/printing_policy.lua" run "$cl_tmp/logs.lua"
exits 0 "a script that handles a refusal itself"
is "$out" "batch_too_large" "engine failures come back as nil, code, msg"
like "$err" "cairnloop: \[info\] .*policy loaded" "policy and engine log lines go to stderr as [level]"

# --- errors
script boom 'local function f() error("boom") end
f()'
cl --schema "$S" run "$cl_tmp/boom.lua"
exits 1 "an uncaught error exits 1"
like "$err" "^cairnloop: [^ ]*boom.lua:1: boom"$'\n'"stack traceback:" \
  "cairnloop: <message>, then the traceback"
like "$err" "boom.lua:2: in main chunk" "the traceback names the script's lines"

script coded 'local ok, code, msg = engine:bulk_trigger({ 1, 999999 }, { template_id = "t", rendered_body = "b" })
if not ok then error({ code = code, message = msg }) end'
cl --schema "$S" run "$cl_tmp/coded.lua"
exits 4 "a coded error exits with its code's status (unknown_conversation: 4)"
is "$err" "cairnloop: unknown_conversation: conversation 999999 does not exist" \
  "and prints the one error line of the other commands"
script coded3 'error({ code = "batch_too_large", message = "cohort of 9 exceeds 5" })'
cl --schema "$S" run "$cl_tmp/coded3.lua"
exits 3 "batch_too_large exits 3"
is "$err" "cairnloop: batch_too_large: cohort of 9 exceeds 5" "the coded error line"
script notcoded 'error({ code = "no_such_code", message = "x" })'
cl --schema "$S" run "$cl_tmp/notcoded.lua"
exits 1 "an error table with an unknown code is an ordinary error"
like "$err" "^cairnloop: \(error object is a table value\)" "named by its type"
script tostr 'error(setmetatable({}, { __tostring = function() return "custom" end }))'
cl --schema "$S" run "$cl_tmp/tostr.lua"
exits 1 "an error object with __tostring"
like "$err" "^cairnloop: custom" "is shown through __tostring"
script syntax 'x = = 1'
cl --schema "$S" run "$cl_tmp/syntax.lua"
exits 1 "a syntax error exits 1"
like "$err" "^cairnloop: [^ ]*syntax.lua:1: unexpected symbol" "and names the line"
script exit7 'io.write("bye") os.exit(7)'
cl --schema "$S" run "$cl_tmp/exit7.lua"
exits 7 "os.exit(n) ends with status n"
is "$out" "bye" "what the script wrote is flushed"

# Opening the engine fails like every other command; the script never runs.
script never 'print("ran")'
cl --schema "Bad-Schema" run "$cl_tmp/never.lua"
exits 2 "a bad --schema: invalid_argument"
is "$out" "" "the script does not run when the engine cannot open"
cl --database "postgresql:///no_such_db_$$?host=/nonexistent" run "$cl_tmp/never.lua"
exits 6 "an unreachable database: db_error"
like "$err" "^cairnloop: db_error: " "the one error line"
cl --schema "$S" --policy "$cl_tmp/none.lua" run "$cl_tmp/never.lua"
exits 2 "a missing --policy file"
CAIRNLOOP_LOG_LEVEL=loud cl --schema "$S" run "$cl_tmp/never.lua"
exits 2 "a bad CAIRNLOOP_LOG_LEVEL"
