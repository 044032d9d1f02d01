#!/usr/bin/env bash
# The asynchronous engine's loop adapters (examples/async/): poll_loop.c and
# libuv_loop.c built against the build tree with warnings as errors, then
# run on the suite database: every trigger and the delivery come back
# through the loop, the rows are written and sent, and a failing operation
# is reported with its code and a non-zero exit.  Prints TAP.
#
# Needs CAIRNLOOP_DATABASE_URL naming a fresh database (as tools/check.sh
# sets it) and the build tree (`make all`); without a database the suite
# is skipped.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
n=0
failed=0
tmp=

finish() {
  [ -z "$tmp" ] || rm -rf -- "$tmp"
  echo "1..$n"
  exit $((failed > 0))
}
trap finish EXIT

ok() { n=$((n + 1)); echo "ok $n - $1"; }
nok() { # nok DESC [DIAGNOSTIC...]
  n=$((n + 1))
  failed=$((failed + 1))
  echo "not ok $n - $1"
  shift
  local l
  for l in "$@"; do printf '%s\n' "$l" | sed 's/^/#   /'; done
}
is() { if [ "$1" = "$2" ]; then ok "$3"; else nok "$3" "got:  $1" "want: $2"; fi; }
has() { if grep -qE -- "$2" <<<"$1"; then ok "$3"; else nok "$3" "output: $1" "wanted: $2"; fi; }

if [ -z "${CAIRNLOOP_DATABASE_URL:-}" ]; then
  echo "1..0 # SKIP no test database (run under tools/check.sh)"
  trap - EXIT
  exit 0
fi
unset CAIRNLOOP_MAX_BATCH_SIZE CAIRNLOOP_LUA_PATH
tmp=$(mktemp -d /tmp/cairnloop-async-examples.XXXXXXXX) || exit 1

sql() { psql "$CAIRNLOOP_DATABASE_URL" -X -q -A -t -v ON_ERROR_STOP=1 -c "$1"; }

# build NAME [EXTRA-FLAGS...]: the example as a user builds it, with the
# static library of the build tree.
build() {
  local name=$1
  shift
  # shellcheck disable=SC2046
  if cc -std=c11 -Wall -Wextra -Werror -I"$ROOT/include" "$ROOT/examples/async/$name.c" \
      "$ROOT/build/libcairnloop.a" $(pkg-config --libs libpq uuid jansson libcurl libcrypto) "$@" -lm -ldl -pthread \
      -o "$tmp/$name" >"$tmp/$name.log" 2>&1; then
    ok "examples/async/$name.c builds with -Wall -Wextra -Werror"
  else
    nok "examples/async/$name.c builds with -Wall -Wextra -Werror" "$(tail -n 20 "$tmp/$name.log")"
    return 1
  fi
}

# check NAME TEMPLATE: runs the example on conversations 1..3.
check() {
  local name=$1 template=$2 out rc=0
  out=$("$tmp/$name" "$template" 1 2 3 2>&1) || rc=$?
  is "$rc" 0 "$name: exits 0 when every operation succeeded"
  has "$out" '^migrated$' "$name: the migration completed through the loop"
  is "$(grep -cE '^trigger [123]: message [0-9]+, job [0-9]+$' <<<"$out")" 3 \
    "$name: each trigger's completion came back with its message and job"
  has "$out" '^work: sent 0, no_op 3, failed 0$' "$name: the delivery ran after the triggers"
  is "$(sql "SELECT count(*) FROM cairnloop.cairnloop_messages
             WHERE metadata->>'template_id' = '$template' AND metadata->>'status' = 'sent'")" 3 \
    "$name: three messages written and marked sent"

  rc=0
  out=$("$tmp/$name" "$template" 999 2>&1) || rc=$?
  is "$rc" 1 "$name: exits 1 when an operation failed"
  has "$out" '^trigger 999: unknown_conversation: ' "$name: the failure is reported with its code"
}

if ! cairnloop migrate >"$tmp/migrate.log" 2>&1; then
  nok "cairnloop migrate" "$(cat "$tmp/migrate.log")"
  exit 1
fi
sql "INSERT INTO cairnloop.cairnloop_conversations (status) SELECT 'open' FROM generate_series(1, 3)" \
  >/dev/null

if build poll_loop; then check poll_loop async_poll; fi
# shellcheck disable=SC2046
if build libuv_loop $(pkg-config --cflags --libs libuv); then check libuv_loop async_uv; fi
