#!/usr/bin/env bash
# The asynchronous engine under ThreadSanitizer: builds tests/test_async.c
# and the library sources with -fsanitize=thread into build/tsan
# (`make BUILD=build/tsan SANITIZE=thread`), runs it, re-numbers its TAP
# lines and adds one more: ThreadSanitizer reported nothing (no data race,
# no lock-order inversion).  Prints TAP.
#
# No suppressions are needed: the private Lua 5.4 linked into the engine
# (liblua5.4.a) and libpq are not instrumented, but only the engine thread
# ever touches the policy state and the connection, so TSan has nothing to
# misjudge there.  Should that change, add a suppressions file next to this
# script and name it in TSAN_OPTIONS below, one narrow entry per reason.
#
# Needs CAIRNLOOP_DATABASE_URL naming a fresh database (as tools/check.sh
# sets it); without it the suite is skipped.  Runs from the source tree:
# the restart test starts its own cluster with tests/pg.sh.
set -u
cd "$(dirname "$0")/../.." || exit 1
n=0
failed=0
tmp=$(mktemp -d /tmp/cl-async-tsan.XXXXXXXX) || exit 1
trap 'rm -rf -- "$tmp"' EXIT

ok() { n=$((n + 1)); echo "ok $n - $1"; }
nok() { # nok DESC [FILE-WITH-DIAGNOSTICS]
  n=$((n + 1))
  failed=$((failed + 1))
  echo "not ok $n - $1"
  [ -n "${2:-}" ] && sed 's/^/#   /' "$2" | head -n 200
}
finish() {
  echo "1..$n"
  exit $((failed > 0))
}

if [ -z "${CAIRNLOOP_DATABASE_URL:-}" ]; then
  echo "1..0 # SKIP no test database (run under tools/check.sh)"
  exit 0
fi

bin=build/tsan/tests/test_async
jobs=$(nproc 2>/dev/null || echo 2)
if make --no-print-directory -j"$jobs" BUILD=build/tsan SANITIZE=thread "$bin" \
    >"$tmp/build.log" 2>&1; then
  ok "$bin builds with -fsanitize=thread"
else
  nok "$bin builds with -fsanitize=thread" "$tmp/build.log"
  finish
fi

# halt_on_error=0: every report, not only the first; TSan then exits with
# exitcode (66) at the end.
export TSAN_OPTIONS="halt_on_error=0 exitcode=66 second_deadlock_stack=1 history_size=4"
run() { CMOCKA_MESSAGE_OUTPUT=TAP "$@" "$bin" >"$tmp/out" 2>&1; }
rc=0
run || rc=$?
# Where the kernel randomises mmap more than this TSan expects, it cannot
# map its shadow memory; without address randomisation it can.
if grep -q 'unexpected memory mapping' "$tmp/out"; then
  rc=0
  run setarch "$(uname -m)" -R || rc=$?
fi

# The test binary's own results, numbered as ours.
ran=0
own_failures=0
while IFS= read -r line; do
  case $line in
    "ok "*) ok "${line#ok * - }"; ran=$((ran + 1)) ;;
    "not ok "*) nok "${line#not ok * - }"; ran=$((ran + 1)); own_failures=$((own_failures + 1)) ;;
  esac
done <"$tmp/out"
plan=$(sed -n -E 's/^1\.\.([0-9]+).*/\1/p' "$tmp/out" | head -n 1)
if [ -z "$plan" ] || [ "$ran" -ne "$plan" ]; then
  nok "test_async reported all of its ${plan:-?} tests (got $ran, exit $rc)" "$tmp/out"
elif [ "$rc" -ne 0 ] && [ "$rc" -ne 66 ] && [ "$own_failures" -eq 0 ]; then
  nok "test_async exited with $rc without a failing test" "$tmp/out"
elif [ "$own_failures" -gt 0 ]; then
  sed 's/^/#   /' "$tmp/out" | head -n 200
fi

reports=$(grep -c '^WARNING: ThreadSanitizer' "$tmp/out")
if [ "$reports" -eq 0 ] && [ "$rc" -ne 66 ]; then
  ok "ThreadSanitizer reported no race"
else
  grep -A40 '^WARNING: ThreadSanitizer' "$tmp/out" >"$tmp/reports"
  nok "ThreadSanitizer reported no race ($reports reports, exit $rc)" "$tmp/reports"
fi
finish
