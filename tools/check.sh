#!/usr/bin/env bash
# The `make check` harness.  Starts one throwaway PostgreSQL cluster
# (tests/pg.sh), then runs every suite against its own fresh database:
#   1. the cmocka binaries in build/tests/, then the same from build/asan/tests/
#      under AddressSanitizer + UBSan (+ LeakSanitizer where it can run);
#   2. the busted specs in spec/, twice: on Lua 5.4 with build/lua5.4/cairnloop.so
#      and on LuaJIT with build/luajit/cairnloop.so, each a suite of its own;
#   3. every tests/integration/*.sh (TAP on stdout, `cairnloop` from build/ on PATH).
# Counts TAP `ok` / `not ok` lines per suite, shows failing suites in full and
# ends with one line "N passed, M failed"; exits 1 when anything failed.
#
# The suites share nothing but the server (each has its own database, and
# the ones that need more make it themselves: a private cluster, a
# temporary directory, a free port), so they run CHECK_JOBS at a time.
# Their reports still come out in the order above, each as its suite ends.
#
# Every suite sees the Lua search paths of tests/integration/lua_env.bash:
# the checkout's lua/ and build/ and the system's packages, nothing from
# /usr/local.
#
# Environment: CHECK_SUITE_TIMEOUT (seconds per suite, default 300),
# CHECK_ONLY (a substring; only suites whose label contains it run),
# CHECK_JOBS (suites run at once, default 2; 1 runs them one by one),
# CHECK_VERBOSE=1 (show the output of passing suites too).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
# Lua finds our modules in this checkout only, never in an installed copy.
. tests/integration/lua_env.bash
cl_lua_env "$ROOT"
SUITE_TIMEOUT=${CHECK_SUITE_TIMEOUT:-300}
ONLY=${CHECK_ONLY:-}
VERBOSE=${CHECK_VERBOSE:-0}
JOBS=${CHECK_JOBS:-2}
case $JOBS in '' | *[!0-9]* | 0) echo "check: CHECK_JOBS must be a positive integer" >&2; exit 2 ;; esac

total_pass=0
total_fail=0
suite_seq=0
CL_PG_DIR=
WORK=

# The plan: what is printed, in order.  An entry is a line of text (a
# section title, a note, a failure of the harness itself, counted in
# e_fails) or a suite (e_label, e_cmd: its command line, quoted for eval;
# e_seq: the number in its database's name).
n_entries=0
e_kind=()
e_text=()
e_fails=()
e_label=()
e_cmd=()
e_seq=()
# The running suites' jobs, by entry: pid, and whether it has been reaped.
job_pids=()
job_reaped=()
declare -A job_entry=()

cleanup() {
  local i
  # Suites still running first (after an interrupt): their server and
  # files are about to go.
  for i in "${!job_pids[@]}"; do
    [ -n "${job_reaped[i]:-}" ] || kill -TERM "${job_pids[i]}" 2>/dev/null || true
  done
  wait 2>/dev/null
  if [ -n "$CL_PG_DIR" ]; then
    tests/pg.sh stop "$CL_PG_DIR" >/dev/null 2>&1 || true
  fi
  if [ -n "$WORK" ]; then
    rm -rf -- "$WORK"
  fi
}
trap cleanup EXIT
trap 'echo "check: interrupted" >&2; exit 130' INT TERM

# The closing line is the one thing CI reads: print it exactly once.
finish() {
  echo "$total_pass passed, $total_fail failed"
  [ "$total_fail" -eq 0 ]
  exit $?
}

add_text() { # add_text TEXT [FAILS]
  e_kind[n_entries]=text
  e_text[n_entries]=$1
  e_fails[n_entries]=${2:-0}
  n_entries=$((n_entries + 1))
}

section() { add_text "$(printf '\n== %s' "$1")"; }
note() { add_text "$(printf '   note: %s' "$1")"; }

# Records a failure that is not a suite's own output (a missing binary, a
# cluster that would not start): it must still count.
harness_failure() { add_text "$(printf '   FAIL %s' "$1")" 1; }

WORK=$(mktemp -d /tmp/cairnloop-check.XXXXXXXX) || { echo "check: mktemp failed" >&2; exit 1; }
chmod 755 "$WORK"

if ! pg_env=$(tests/pg.sh start 2>"$WORK/pg.err"); then
  printf '\n== %s\n' "PostgreSQL"
  sed 's/^/   | /' "$WORK/pg.err"
  printf '   FAIL %s\n' "could not start the test cluster"
  total_fail=$((total_fail + 1))
  finish
fi
eval "$pg_env"
unset PGDATABASE PGPASSWORD PGSERVICE PGOPTIONS
# Suites decide the cap and schema themselves.
unset CAIRNLOOP_MAX_BATCH_SIZE

# Creates a fresh database named after the suite and points every client at
# it: the engine (CAIRNLOOP_DATABASE_URL) and psql in shell tests (PG*).
# The file_copy strategy (PostgreSQL 15) copies the template's files instead
# of writing them all to the WAL: a third less to write and to delete at the
# end, over some fifty databases.
fresh_database() { # fresh_database LABEL SEQ
  local name
  name=$(printf 'check_%03d_%s' "$2" "$1" | tr -c 'a-zA-Z0-9_\n' '_' | tr 'A-Z' 'a-z')
  name=${name:0:63}
  if ! createdb --strategy=file_copy "$name" 2>"$WORK/createdb.$2.err" &&
    ! createdb "$name" 2>"$WORK/createdb.$2.err"; then
    cat "$WORK/createdb.$2.err" >&2
    return 1
  fi
  export PGDATABASE=$name
  export CAIRNLOOP_DATABASE_URL="postgresql:///$name?host=$PGHOST&port=$PGPORT&user=$PGUSER"
}

# add_suite LABEL CMD [ARGS...]: plans one suite (unless CHECK_ONLY leaves
# it out).  The command runs later, in the environment of that moment plus
# its database: put any other variable it needs on its command line (env).
add_suite() {
  local label=$1
  shift
  if [ -n "$ONLY" ] && [[ "$label" != *"$ONLY"* ]]; then
    return 0
  fi
  suite_seq=$((suite_seq + 1))
  e_kind[n_entries]=suite
  e_label[n_entries]=$label
  e_cmd[n_entries]=$(printf '%q ' "$@")
  e_seq[n_entries]=$suite_seq
  n_entries=$((n_entries + 1))
}

# suite_job I: runs suite entry I on its own database, counts its TAP lines
# and leaves its report in $WORK/job.I.txt, then "PASSED FAILED" in
# $WORK/job.I.res (last: its presence means the report is complete).
suite_job() {
  local i=$1 label=${e_label[$1]} out="$WORK/job.$1.out" txt="$WORK/job.$1.txt"
  local rc=0 pass fail plan ran started elapsed why="" tpid
  if ! fresh_database "$label" "${e_seq[$i]}" 2>"$out"; then
    { printf '   FAIL %s: createdb failed\n' "$label"; sed 's/^/      | /' "$out"; } >"$txt"
    echo "0 1" >"$WORK/job.$i.res.tmp" && mv "$WORK/job.$i.res.tmp" "$WORK/job.$i.res"
    return 0
  fi
  started=$EPOCHREALTIME
  eval "timeout -k 10 \"\$SUITE_TIMEOUT\" ${e_cmd[$i]}" >"$out" 2>&1 </dev/null &
  tpid=$!
  # Stopped by cleanup (the harness was interrupted): stop the suite too.
  trap 'kill -TERM "$tpid" 2>/dev/null; exit 143' TERM
  wait "$tpid" || rc=$?
  trap - TERM
  elapsed=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')

  pass=$(grep -cE '^ok([[:space:]]|$)' "$out")
  fail=$(grep -cE '^not ok([[:space:]]|$)' "$out")
  ran=$((pass + fail))
  plan=$(sed -n -E 's/^1\.\.([0-9]+).*/\1/p' "$out" | tail -n 1)

  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    fail=$((fail + 1))
    why="timed out after ${SUITE_TIMEOUT}s"
  elif [ "$rc" -ne 0 ] && [ "$fail" -eq 0 ]; then
    # Died without reporting a failing test: a crash, a sanitizer report
    # or a leak found at exit.  It is one failure, not zero.
    fail=1
    if grep -q 'ERROR: LeakSanitizer: detected memory leaks' "$out"; then
      why="exited with status $rc: LeakSanitizer found leaks"
    elif grep -qE 'ERROR: AddressSanitizer|runtime error:' "$out"; then
      why="exited with status $rc: sanitizer report"
    else
      why="exited with status $rc without a failing test (crash?)"
    fi
  elif [ -n "$plan" ] && [ "$ran" -lt "$plan" ]; then
    fail=$((fail + 1))
    why="planned $plan tests, reported $ran"
  elif [ "$ran" -eq 0 ] && [ "$plan" != "0" ]; then
    fail=1
    why="reported no test results"
  fi

  {
    if [ "$fail" -eq 0 ]; then
      printf '   ok   %-44s %4d passed %8ss\n' "$label" "$pass" "$elapsed"
      if [ "$VERBOSE" = 1 ]; then
        sed 's/^/      | /' "$out"
      fi
    else
      printf '   FAIL %-44s %4d passed, %d failed %ss%s\n' "$label" "$pass" "$fail" "$elapsed" \
        "${why:+ ($why)}"
      sed 's/^/      | /' "$out"
    fi
  } >"$txt"
  echo "$pass $fail" >"$WORK/job.$i.res.tmp" && mv "$WORK/job.$i.res.tmp" "$WORK/job.$i.res"
}

# Prints entry I and adds its counts; false while suite I is still running.
print_entry() {
  local i=$1 pass fail
  if [ "${e_kind[$i]}" = text ]; then
    printf '%s\n' "${e_text[$i]}"
    total_fail=$((total_fail + e_fails[i]))
    return 0
  fi
  if [ ! -f "$WORK/job.$i.res" ]; then
    [ -n "${job_reaped[i]:-}" ] || return 1 # still running
    printf '   FAIL %s (the harness lost the suite: no report)\n' "${e_label[$i]}"
    total_fail=$((total_fail + 1))
    return 0
  fi
  cat "$WORK/job.$i.txt"
  read -r pass fail <"$WORK/job.$i.res"
  total_pass=$((total_pass + pass))
  total_fail=$((total_fail + fail))
}

# Runs the plan: up to JOBS suites at once, started in plan order, each
# report printed once every entry before it has been.
run_plan() {
  local next=0 printed=0 running=0 pid
  while [ "$printed" -lt "$n_entries" ]; do
    while [ "$running" -lt "$JOBS" ] && [ "$next" -lt "$n_entries" ]; do
      if [ "${e_kind[$next]}" = suite ]; then
        suite_job "$next" &
        job_pids[next]=$!
        job_entry[$!]=$next
        running=$((running + 1))
      fi
      next=$((next + 1))
    done
    while [ "$printed" -lt "$next" ] && print_entry "$printed"; do
      printed=$((printed + 1))
    done
    if [ "$printed" -lt "$n_entries" ] && [ "$running" -gt 0 ]; then
      pid=
      wait -n -p pid
      if [ -n "$pid" ]; then
        job_reaped[job_entry[$pid]]=1
        running=$((running - 1))
      fi
    fi
  done
}

# ---------------------------------------------------------------- C tests
# Every tests/test_*.c must have become a binary; a missing one is a failure
# rather than a silently smaller suite.
c_suites() { # c_suites DIR TITLE [leak_note [ENV=VALUE...]]
  local dir=$1 title=$2 src name
  shift 2
  section "$title ($dir)"
  if [ "${1:-}" = leak_note ]; then
    shift
    if [ "$detect_leaks" = 0 ]; then
      note "LeakSanitizer cannot run here (ptrace is restricted): running with detect_leaks=0"
      add_text "$(head -n 3 "$WORK/lsan_probe.out" | sed 's/^/      | /')"
    fi
  fi
  shopt -s nullglob
  local srcs=(tests/test_*.c)
  shopt -u nullglob
  if [ ${#srcs[@]} -eq 0 ]; then
    note "no tests/test_*.c"
    return 0
  fi
  for src in "${srcs[@]}"; do
    name=$(basename "$src" .c)
    if [ -n "$ONLY" ] && [[ "$dir/$name" != *"$ONLY"* ]]; then
      continue
    fi
    if [ ! -x "$dir/$name" ]; then
      harness_failure "$dir/$name: not built"
      continue
    fi
    add_suite "$dir/$name" env CMOCKA_MESSAGE_OUTPUT=TAP "$@" "$dir/$name"
  done
}

c_suites build/tests "C tests"

# LeakSanitizer stops the process with ptrace to scan its memory; where
# ptrace is not allowed (some containers, a process already being traced)
# it aborts every run with "LeakSanitizer has encountered a fatal error".
# Probe once with a leak-free program and fall back instead of failing
# every suite for a reason that is not theirs.
detect_leaks=1
probe_src="$WORK/lsan_probe.c"
printf '#include <stdlib.h>\nint main(void) { free(malloc(16)); return 0; }\n' >"$probe_src"
: >"$WORK/lsan_probe.out"
if ${CC:-cc} -fsanitize=address -g "$probe_src" -o "$WORK/lsan_probe" 2>/dev/null; then
  if ! ASAN_OPTIONS=detect_leaks=1 "$WORK/lsan_probe" >"$WORK/lsan_probe.out" 2>&1; then
    detect_leaks=0
  fi
fi
if [ -d build/asan/tests ] || [ -z "$ONLY" ]; then
  c_suites build/asan/tests "C tests under ASan+UBSan" leak_note \
    "ASAN_OPTIONS=detect_leaks=$detect_leaks" "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1"
fi

# ---------------------------------------------------------------- Lua specs
# The same specs run on both runtimes the module is built for; each run is
# its own suite on its own database.  spec/support/tap.lua is busted's TAP
# output that still reports a spec file which fails to load (as one failing
# test) instead of crashing on it.
shopt -s nullglob
specs=(spec/*_spec.lua)
shopt -u nullglob

# spec_suite LABEL INTERPRETER MODULE_DIR
spec_suite() {
  local label=$1 interp=$2 dir=$3
  if [ -n "$ONLY" ] && [[ "$label" != *"$ONLY"* ]]; then
    return 0
  fi
  if ! command -v "$interp" >/dev/null; then
    harness_failure "$label: $interp is not installed"
  elif [ ! -f "$dir/cairnloop.so" ]; then
    harness_failure "$label: $dir/cairnloop.so is not built"
  else
    # Run busted under the interpreter explicitly: /usr/bin/busted follows
    # whatever `lua` points at.  Both paths end in ';;' so the default
    # search paths survive.
    add_suite "$label" "$interp" "$busted_bin" -o spec/support/tap.lua \
      --cpath="./$dir/?.so;;" --lpath='./lua/?.lua;./lua/?/init.lua;;' spec/
  fi
}

if [ ${#specs[@]} -gt 0 ]; then
  section "Lua specs (busted, on Lua 5.4 and on LuaJIT)"
  if ! busted_bin=$(command -v busted); then
    harness_failure "busted: not installed"
  else
    spec_suite "spec (busted, Lua 5.4)" lua5.4 build/lua5.4
    spec_suite "spec (busted, LuaJIT)" luajit build/luajit
  fi
fi

# ---------------------------------------------------------------- integration
shopt -s nullglob
integ=(tests/integration/*.sh)
shopt -u nullglob
if [ ${#integ[@]} -gt 0 ]; then
  section "Integration (tests/integration)"
  for t in "${integ[@]}"; do
    add_suite "$t" env PATH="$ROOT/build:$PATH" bash "$t"
  done
fi

run_plan
echo
finish
