# Shared by the tests/integration/cli_*.sh tests of the `cairnloop` command
# (sourced, not run: its name keeps it out of the *.sh suites).  Prints TAP:
# one "ok N - ..." / "not ok N - ..." per check and the plan "1..N" at exit.
#
#   cl ARGS...            runs cairnloop; sets $rc, $out (stdout), $err (stderr)
#   cl_in INPUT ARGS...   the same with INPUT on standard input
#   is GOT WANT DESC      passes when GOT = WANT
#   like GOT REGEX DESC   passes when GOT matches the bash REGEX
#   exits WANT DESC       passes when the last command's $rc = WANT
#   jget EXPR [TEXT]      evaluates a Lua expression over the decoded JSON
#                         value `r` (TEXT, default $out); prints the result
#   sql SQL               runs SQL with psql on the test database
#   wait_until SECS CMD [ARGS...]
#                         re-runs CMD every 50 ms until it succeeds; false
#                         once SECS seconds passed without (tests wait for
#                         states this way, never for a fixed time)
#   on_exit               if the test defines it, runs at exit (cleanup)
#
# Lua searches this checkout only (lua_env.bash).
#
# The database: $CAIRNLOOP_DATABASE_URL or the PG* variables (as
# tools/check.sh sets them); without either, the suite is skipped.

CLI_TEST_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export PATH="$CLI_TEST_ROOT/build:$PATH"
. "$CLI_TEST_ROOT/tests/integration/lua_env.bash"
cl_lua_env "$CLI_TEST_ROOT"
unset CAIRNLOOP_MAX_BATCH_SIZE

tap_n=0
tap_failed=0
tap_plan=
cleanup_dirs=()

finish_tap() {
  if declare -F on_exit >/dev/null; then on_exit; fi
  [ ${#cleanup_dirs[@]} -eq 0 ] || rm -rf -- "${cleanup_dirs[@]}"
  echo "${tap_plan:-1..$tap_n}"
  exit $((tap_failed > 0))
}
trap finish_tap EXIT

need_database() {
  if [ -z "${CAIRNLOOP_DATABASE_URL:-}" ] && [ -z "${PGHOST:-}" ]; then
    tap_plan="1..0 # SKIP no test database (run under tools/check.sh or tests/pg.sh run)"
    exit 0
  fi
}

tap() { # tap STATUS DESC [DIAGNOSTIC...]
  local status=$1 desc=$2
  shift 2
  tap_n=$((tap_n + 1))
  if [ "$status" -eq 0 ]; then
    echo "ok $tap_n - $desc"
  else
    tap_failed=$((tap_failed + 1))
    echo "not ok $tap_n - $desc"
    local line
    for line in "$@" "exit status: ${rc:-}" "stdout: ${out:-}" "stderr: ${err:-}"; do
      printf '%s\n' "$line" | sed 's/^/#   /'
    done
  fi
}

cl_tmp=$(mktemp -d /tmp/cairnloop-cli-test.XXXXXXXX)
chmod 755 "$cl_tmp"
cleanup_dirs+=("$cl_tmp")

cl() {
  rc=0
  cairnloop "$@" >"$cl_tmp/out" 2>"$cl_tmp/err" </dev/null || rc=$?
  out=$(cat "$cl_tmp/out")
  err=$(cat "$cl_tmp/err")
}

cl_in() {
  local input=$1
  shift
  rc=0
  printf '%s' "$input" | cairnloop "$@" >"$cl_tmp/out" 2>"$cl_tmp/err" || rc=$?
  out=$(cat "$cl_tmp/out")
  err=$(cat "$cl_tmp/err")
}

is() {
  if [ "$1" = "$2" ]; then tap 0 "$3"; else tap 1 "$3" "got:  $1" "want: $2"; fi
}

like() {
  if [[ $1 =~ $2 ]]; then tap 0 "$3"; else tap 1 "$3" "got:  $1" "want: /$2/"; fi
}

exits() {
  if [ "$rc" = "$1" ]; then tap 0 "$2"; else tap 1 "$2" "want exit status $1"; fi
}

# dkjson keeps 64-bit integers exact (lua-cjson would not: TOOLCHAIN.md).
jget() {
  JGET_EXPR=$1 lua5.4 -e '
    local json = require "dkjson"
    local r, _, e = json.decode(io.read("a"), 1, json.null)
    if e then io.stderr:write("bad JSON: ", e, "\n") os.exit(1) end
    local f = assert(load("local r, null = ...; return " .. os.getenv("JGET_EXPR")))
    local v = f(r, json.null)
    if v == json.null then v = "null" end
    io.write(tostring(v))' <<<"${2-$out}"
}

# Each line of TEXT (default $out) must be one JSON object: prints how many.
jlines() {
  lua5.4 -e '
    local json = require "dkjson"
    local n = 0
    for line in io.lines() do
      local v = json.decode(line, 1, json.null)
      if type(v) ~= "table" then io.stderr:write("not a JSON object: ", line, "\n") os.exit(1) end
      n = n + 1
    end
    io.write(n)' <<<"${1-$out}"
}

# The server's own psql, not Debian's wrapper script: it starts in less
# than half the time, and the fault tests poll with it.
PSQL=psql
[ -x "${PG_BIN:-/usr/lib/postgresql/15/bin}/psql" ] && PSQL=${PG_BIN:-/usr/lib/postgresql/15/bin}/psql

sql() {
  if [ -n "${CAIRNLOOP_DATABASE_URL:-}" ]; then
    "$PSQL" "$CAIRNLOOP_DATABASE_URL" -X -qAt -v ON_ERROR_STOP=1 -c "$1"
  else
    "$PSQL" -X -qAt -v ON_ERROR_STOP=1 -c "$1"
  fi
}

wait_until() {
  local secs=$1 deadline
  shift
  deadline=$(($(date +%s%N) + secs * 1000000000))
  until "$@"; do
    [ "$(date +%s%N)" -lt "$deadline" ] || return 1
    sleep 0.05
  done
}

# Seeds conversations FROM..TO in SCHEMA (default cairnloop); idempotent.
seed_conversations() {
  local schema=${3:-cairnloop}
  sql "INSERT INTO $schema.cairnloop_conversations (id, subject)
       SELECT g, 'test ' || g FROM generate_series($1, $2) AS g ON CONFLICT (id) DO NOTHING" \
    >/dev/null
}
