#!/usr/bin/env bash
# The C host example (examples/c-host) built the way a user builds it: the
# engine installed with `make install DESTDIR=... PREFIX=/usr`, the example
# copied out of the tree and compiled with nothing but
# `pkg-config --cflags --libs cairnloop` pointed at the staged install
# (PKG_CONFIG_PATH + PKG_CONFIG_SYSROOT_DIR).  Then a night on the 60 Hz
# game server (asynchronous engine): 1,000 seeded players, 300 ticks, its
# tick statistics and own checks, and every row it should have written
# checked with psql.  Prints TAP.
#
# Needs CAIRNLOOP_DATABASE_URL naming a fresh database (as tools/check.sh
# sets it); without it the suite is skipped.
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
# is GOT WANT DESC
is() { if [ "$1" = "$2" ]; then ok "$3"; else nok "$3" "got:  $1" "want: $2"; fi; }
# Stops here: later checks would only repeat the failure.
bail() { nok "$@"; exit 1; }

if [ -z "${CAIRNLOOP_DATABASE_URL:-}" ]; then
  echo "1..0 # SKIP no test database (run under tools/check.sh)"
  trap - EXIT
  exit 0
fi
unset CAIRNLOOP_MAX_BATCH_SIZE CAIRNLOOP_LUA_PATH

tmp=$(mktemp -d /tmp/cairnloop-c-host.XXXXXXXX) || exit 1
chmod 755 "$tmp"
stage=$tmp/root
S=cairnloop # the example runs on the engine's default schema

# The engine, the installed command and psql all use the same database.
sql() { psql "$CAIRNLOOP_DATABASE_URL" -X -q -A -t -v ON_ERROR_STOP=1 -c "$1"; }

# ---------------------------------------------------------------- install
# A build directory of its own: what is generated from PREFIX (the .pc
# file, the policy state's compiled-in `require` path) must say /usr, not
# what build/ was configured with.
if make -C "$ROOT" --no-print-directory -j"$(nproc)" install BUILD="$tmp/build" \
    DESTDIR="$stage" PREFIX=/usr >"$tmp/install.log" 2>&1; then
  ok "make install DESTDIR=<stage> PREFIX=/usr"
else
  bail "make install DESTDIR=<stage> PREFIX=/usr" "$(tail -n 20 "$tmp/install.log")"
fi

pc=$stage/usr/lib/pkgconfig/cairnloop.pc
export PKG_CONFIG_PATH=$stage/usr/lib/pkgconfig
export PKG_CONFIG_SYSROOT_DIR=$stage
if pkg-config --exists cairnloop 2>"$tmp/pc.err" && [ -s "$pc" ]; then
  ok "the installed cairnloop.pc is usable"
else
  bail "the installed cairnloop.pc is usable" "$pc: $(wc -c <"$pc" 2>&1) bytes" \
    "$(cat "$tmp/pc.err")"
fi
is "$(sed -n 's/^prefix=//p' "$pc")" "/usr" "cairnloop.pc names the prefix it was installed for"

# ---------------------------------------------------------------- build
# Out of the source tree, so that nothing can reach the repository's own
# header or library by a relative path.
src=$tmp/game
cp -R "$ROOT/examples/c-host" "$src"
rm -f "$src/game-server"
if make -C "$src" --no-print-directory >"$tmp/build.log" 2>&1; then
  ok "the example builds with pkg-config alone"
else
  bail "the example builds with pkg-config alone" "$(cat "$tmp/build.log")"
fi
if grep -qF -- "$ROOT" "$tmp/build.log"; then
  nok "its compile and link lines name only the staged install" "$(cat "$tmp/build.log")"
elif grep -qF -- "-I$stage/usr/include" "$tmp/build.log" && grep -qF -- "-L$stage/usr/lib" "$tmp/build.log"; then
  ok "its compile and link lines name only the staged install"
else
  nok "its compile and link lines name only the staged install" "$(cat "$tmp/build.log")"
fi
export LD_LIBRARY_PATH=$stage/usr/lib
lib=$(ldd "$src/game-server" | awk '$1 == "libcairnloop.so.0" { print $3 }')
is "$lib" "$stage/usr/lib/libcairnloop.so.0" "it runs on the installed libcairnloop.so.0"

# ---------------------------------------------------------------- seed
# 1,000 players (the raid) and two conversations that are not players,
# which the server must leave alone.
if "$stage/usr/bin/cairnloop" migrate >"$tmp/migrate.log" 2>&1 &&
  [ "$(sql "SELECT count(*) FROM $S.cairnloop_conversations")" = 0 ] &&
  sql "INSERT INTO $S.cairnloop_conversations (subject, customer_ref)
         SELECT 'player support', 'player:' || g FROM generate_series(1, 1000) g;
       INSERT INTO $S.cairnloop_conversations (subject, customer_ref)
         VALUES ('web form', 'web:1'), ('no customer', NULL)" >/dev/null; then
  ok "a fresh database is migrated (installed command) and seeded with 1,000 players"
else
  bail "a fresh database is migrated (installed command) and seeded with 1,000 players" \
    "$(cat "$tmp/migrate.log")"
fi

# ---------------------------------------------------------------- one night
# 300 ticks at 60 Hz (5 s): 10 raids of 1,000 and 30 rage-quits.  The cap
# in the environment must not matter: the server sets its own.
ticks=300
run_server() { # run_server NAME: stdout to $tmp/NAME.out, stderr to $tmp/NAME.err
  (cd "$src" && CAIRNLOOP_MAX_BATCH_SIZE=5 timeout 120 ./game-server --ticks $ticks policy.lua) \
    >"$tmp/$1.out" 2>"$tmp/$1.err"
}
rc=0
run_server night || rc=$?
out=$(cat "$tmp/night.out")
if [ "$rc" -eq 0 ]; then
  ok "the server runs $ticks ticks and exits 0"
else
  nok "the server runs $ticks ticks and exits 0" "exit status $rc" "$out" "$(cat "$tmp/night.err")"
fi

# The summary line as variables: sum_checkins, sum_envelopes, ...
summary() { # summary FILE
  local line kv
  line=$(grep '^summary: ' "$1" | tail -n 1)
  for kv in ${line#summary: }; do
    case $kv in
      *=*) printf -v "sum_${kv%%=*}" '%s' "${kv#*=}" ;;
    esac
  done
}
summary "$tmp/night.out"
is "${sum_result:-}" "ok" "the server's own checks hold (nothing lost, all on its thread, all sent)"
is "${sum_lost:-x} ${sum_off_thread:-x} ${sum_errors:-x}" "0 0 0" \
  "no operation lost, every completion on the host thread, no failed call"
is "${sum_submitted:-x}" "${sum_completed:-y}" "each submission completed once ($sum_submitted)"
created=${sum_created:-0}
is "${sum_raids:-} ${sum_envelopes:-} ${sum_raid_messages:-} ${sum_ragequits:-}" "10 10 10000 30" \
  "10 raids paid to 1,000 players each, 30 rage-quits"
is "$created" "$((sum_checkins + sum_raid_messages))" "created = check-ins + raid messages"
is "${sum_delivered:-}" "$created" "the notifier (on the engine thread) delivered each message once"

# The tick statistics: printed, and loosely bounded (the machine is shared
# with other suites): at most a quarter of the ticks over budget.
stats=$(grep -E '^(ticks|latency) ' "$tmp/night.out")
printf '%s\n' "$stats" | sed 's/^/# /'
over=$(sed -n 's/^ticks: .* over_budget=\([0-9]*\) .*/\1/p' "$tmp/night.out")
total=$(sed -n 's/^ticks: \([0-9]*\) .*/\1/p' "$tmp/night.out")
if [ -n "$over" ] && [ -n "$total" ] && [ "$total" -ge "$ticks" ] && [ $((over * 4)) -le "$total" ]; then
  ok "tick statistics printed: $over of $total ticks over budget"
else
  nok "tick statistics printed, at most a quarter of the ticks over budget" "$stats"
fi
for k in trigger bulk work query; do
  if grep -qE "^latency $k: n=[1-9][0-9]* p50=[0-9.]+ms p99=[0-9.]+ms max=[0-9.]+ms$" "$tmp/night.out"; then
    ok "completion latency of $k operations printed"
  else
    nok "completion latency of $k operations printed" "$stats"
  fi
done

# Messages: every one sent, all ours, none to a conversation that is not a player.
is "$(sql "SELECT count(*) FILTER (WHERE metadata->>'status' = 'sent'
                                    AND role = 'system_outbound'), count(*)
           FROM $S.cairnloop_messages")" "$created|$created" \
  "every message written is marked sent ($created)"
is "$(sql "SELECT count(*) FROM $S.cairnloop_messages m
           JOIN $S.cairnloop_conversations c ON c.id = m.conversation_id
           WHERE c.customer_ref IS NULL OR c.customer_ref NOT LIKE 'player:%'")" "0" \
  "no message went to a conversation that is not a player"
is "$(sql "SELECT count(*), count(DISTINCT conversation_id) FROM $S.cairnloop_messages
           WHERE metadata->>'template_id' = 'ragequit_checkin_v1'")" \
  "$sum_checkins|$sum_checkins" "one check-in per player who rage-quit"
is "$((sum_checkins + sum_duplicate_checkins))" "$sum_ragequits" \
  "repeat rage-quits came back as duplicates"
is "$(sql "SELECT count(*) FILTER (WHERE state = 'completed' AND completed_at IS NOT NULL),
                  count(*) FROM $S.cairnloop_delivery_jobs")" "$created|$created" \
  "every delivery job completed"
is "$(sql "SELECT count(*), count(*) FILTER (WHERE status = 'submitted' AND effective_cap = 1000
                                             AND count = 1000 AND requested_by = 'gm:night_shift')
           FROM $S.cairnloop_outbound_bulk_envelopes")" "10|10" \
  "ten envelopes of 1,000 under the server's own cap of 1,000, signed gm:night_shift"
is "$(sql "SELECT count(*) FILTER (WHERE action = 'outbound_trigger' AND actor = 'system:matchmaker'),
                  count(*) FILTER (WHERE action = 'bulk_outbound_trigger' AND actor = 'gm:night_shift'),
                  count(*)
           FROM $S.cairnloop_audit_events")" \
  "$sum_checkins|$sum_envelopes|$((sum_checkins + sum_envelopes))" \
  "the policy's auditor (on the engine thread) wrote one row per check-in and per envelope"

# ---------------------------------------------------------------- the same night again
# A restarted server replaying the night: the raid envelopes come back
# replayed and the check-ins as duplicates; nothing is written or sent twice.
before=$(sql "SELECT (SELECT count(*) FROM $S.cairnloop_messages),
                     (SELECT count(*) FROM $S.cairnloop_delivery_jobs),
                     (SELECT count(*) FROM $S.cairnloop_outbound_bulk_envelopes),
                     (SELECT count(*) FROM $S.cairnloop_audit_events)")
rc=0
run_server replay || rc=$?
sum_result= sum_created= sum_replayed_envelopes= sum_checkins=
summary "$tmp/replay.out"
if [ "$rc" -eq 0 ] && [ "$sum_result" = ok ] && [ "$sum_created" = 0 ] &&
  [ "$sum_replayed_envelopes" = 10 ] && [ "$sum_checkins" = 0 ]; then
  ok "replaying the night writes nothing new (envelopes replayed, check-ins duplicates)"
else
  nok "replaying the night writes nothing new" "exit status $rc" "$(cat "$tmp/replay.out")" \
    "$(cat "$tmp/replay.err")"
fi
is "$(sql "SELECT (SELECT count(*) FROM $S.cairnloop_messages),
                  (SELECT count(*) FROM $S.cairnloop_delivery_jobs),
                  (SELECT count(*) FROM $S.cairnloop_outbound_bulk_envelopes),
                  (SELECT count(*) FROM $S.cairnloop_audit_events)")" "$before" \
  "no row was added by the replay"

# ---------------------------------------------------------------- start-up failures
rc=0
(cd "$src" && ./game-server "$tmp/missing-policy.lua") >"$tmp/missing.out" 2>&1 || rc=$?
if [ "$rc" -eq 2 ] && grep -q 'start-up: invalid_argument' "$tmp/missing.out"; then
  ok "a missing policy file stops the server at start-up (exit 2)"
else
  nok "a missing policy file stops the server at start-up (exit 2)" "exit status $rc" \
    "$(cat "$tmp/missing.out")"
fi
