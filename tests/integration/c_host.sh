#!/usr/bin/env bash
# The C host example (examples/c-host) built the way a user builds it: the
# engine installed with `make install DESTDIR=... PREFIX=/usr`, the example
# copied out of the tree and compiled with nothing but
# `pkg-config --cflags --libs cairnloop` pointed at the staged install
# (PKG_CONFIG_PATH + PKG_CONFIG_SYSROOT_DIR).  Then a night on the game
# server: seeded players, 20 ticks, and every row it should have written
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
# 36 players (player:1..36, three guilds of 12) and two conversations that
# are not players, which the server must leave alone.
if "$stage/usr/bin/cairnloop" migrate >"$tmp/migrate.log" 2>&1 &&
  [ "$(sql "SELECT count(*) FROM $S.cairnloop_conversations")" = 0 ] &&
  sql "INSERT INTO $S.cairnloop_conversations (subject, customer_ref)
         SELECT 'player support', 'player:' || g FROM generate_series(1, 36) g;
       INSERT INTO $S.cairnloop_conversations (subject, customer_ref)
         VALUES ('web form', 'web:1'), ('no customer', NULL)" >/dev/null; then
  ok "a fresh database is migrated (installed command) and seeded with 36 players"
else
  bail "a fresh database is migrated (installed command) and seeded with 36 players" \
    "$(cat "$tmp/migrate.log")"
fi

# ---------------------------------------------------------------- one night
cap=5
run_server() { # run_server NAME: stdout to $tmp/NAME.out, stderr to $tmp/NAME.err
  (cd "$src" && CAIRNLOOP_MAX_BATCH_SIZE=$cap timeout 120 ./game-server policy.lua) \
    >"$tmp/$1.out" 2>"$tmp/$1.err"
}
rc=0
run_server night || rc=$?
out=$(cat "$tmp/night.out")
if [ "$rc" -eq 0 ]; then
  ok "the server runs 20 ticks and exits 0"
else
  nok "the server runs 20 ticks and exits 0" "exit status $rc" "$out" "$(cat "$tmp/night.err")"
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
is "${sum_result:-}" "ok" "the summary reports every triggered message sent"
created=${sum_created:-0}
if [ "${sum_checkins:-0}" -gt 0 ] && [ "${sum_envelopes:-0}" -gt 0 ] &&
  [ "$created" -eq $((sum_checkins + sum_raid_messages)) ] && [ "${sum_raids:-0}" -eq 4 ]; then
  ok "the night had check-ins and 4 raid wipes ($sum_checkins check-ins, $sum_envelopes envelopes)"
else
  nok "the night had check-ins and 4 raid wipes" "$out"
fi

# Messages: every one sent, all ours, none to a conversation that is not a player.
is "$(sql "SELECT count(*) FILTER (WHERE metadata->>'status' = 'sent'
                                    AND role = 'system_outbound'), count(*)
           FROM $S.cairnloop_messages")" "$created|$created" \
  "every message written is marked sent ($created)"
is "$(sql "SELECT count(*) FROM $S.cairnloop_messages m
           JOIN $S.cairnloop_conversations c ON c.id = m.conversation_id
           WHERE c.customer_ref IS NULL OR c.customer_ref NOT LIKE 'player:%'")" "0" \
  "no message went to a conversation that is not a player"

# Check-ins: one per player who rage-quit, however often they did.
is "$(sql "SELECT count(*), count(DISTINCT conversation_id) FROM $S.cairnloop_messages
           WHERE metadata->>'template_id' = 'ragequit_checkin_v1'")" \
  "$sum_checkins|$sum_checkins" "one check-in per player who rage-quit"
is "$((sum_checkins + sum_duplicate_checkins))" "$sum_ragequits" \
  "repeat rage-quits came back as duplicates"

# Jobs: all completed; the notifier's refused first attempts were retried once.
is "$(sql "SELECT count(*) FILTER (WHERE state = 'completed' AND completed_at IS NOT NULL),
                  count(*) FROM $S.cairnloop_delivery_jobs")" "$created|$created" \
  "every delivery job completed"
offline=$(sql "SELECT count(*) FROM $S.cairnloop_delivery_jobs
               WHERE attempt = 2 AND jsonb_array_length(errors) = 1
                 AND errors->0->>'error' ~ '^player:[0-9]+ is offline$'")
is "$offline|$(sql "SELECT count(*) FROM $S.cairnloop_delivery_jobs WHERE attempt <> 1 AND attempt <> 2")" \
  "$sum_offline_attempts|0" "each offline player's job was retried once, the reason recorded ($offline)"
is "$(sql "SELECT count(*) FROM $S.cairnloop_messages WHERE id % 7 = 0")" "$sum_offline_attempts" \
  "exactly the messages the notifier refused once were retried"

# Envelopes: within the cap, signed by the GM, each raid reaching its whole
# guild exactly once, and every raid message pointing at its envelope.
is "$(sql "SELECT count(*), count(*) FILTER (WHERE status = 'submitted' AND effective_cap = $cap
                                             AND count <= $cap
                                             AND requested_by = 'gm:night_shift'),
                  coalesce(sum(count), 0)
           FROM $S.cairnloop_outbound_bulk_envelopes")" \
  "$sum_envelopes|$sum_envelopes|$sum_raid_messages" \
  "envelopes are submitted within the cap of $cap, signed gm:night_shift"
is "$(sql "SELECT count(*), count(*) FILTER (WHERE n = 12 AND members = 12 AND guilds = 1)
           FROM (SELECT split_part(e.id::text, '-', 3) AS raid, count(*) AS n,
                        count(DISTINCT r) AS members,
                        count(DISTINCT (substr(c.customer_ref, 8)::int - 1) % 3) AS guilds
                 FROM $S.cairnloop_outbound_bulk_envelopes e
                 CROSS JOIN unnest(e.recipient_conversation_ids) r
                 JOIN $S.cairnloop_conversations c ON c.id = r
                 GROUP BY 1) x")" "4|4" \
  "each raid wipe reached its whole guild (12) exactly once, in envelopes of one guild"
is "$(sql "SELECT count(*) FROM $S.cairnloop_messages m
           WHERE metadata->>'template_id' = 'raid_wipe_comp_v1'
             AND (m.content NOT LIKE 'Tough wipe in the Sunken Spire, %'
                  OR NOT EXISTS (SELECT 1 FROM $S.cairnloop_outbound_bulk_envelopes e
                                 WHERE e.id::text = m.metadata->>'bulk_envelope_id'
                                   AND m.conversation_id = ANY (e.recipient_conversation_ids)
                                   AND e.rendered_body = m.content))")" "0" \
  "every raid message carries its envelope's body and id"

# The Lua policy: one audit row per operation with the resolved actor, and
# the telemetry handler's warning per refused attempt.
is "$(sql "SELECT count(*) FILTER (WHERE action = 'outbound_trigger' AND actor = 'system:matchmaker'),
                  count(*) FILTER (WHERE action = 'bulk_outbound_trigger' AND actor = 'gm:night_shift'
                                   AND count <= $cap),
                  count(*)
           FROM $S.cairnloop_audit_events")" \
  "$sum_checkins|$sum_envelopes|$((sum_checkins + sum_envelopes))" \
  "the policy's auditor wrote one row per check-in and per envelope"
is "$(grep -c 'policy: delivery attempt failed: reason=notifier_returned_error' "$tmp/night.err")" \
  "$sum_offline_attempts" "the policy's telemetry handler warned once per failed attempt"

# ---------------------------------------------------------------- the same night again
# A restarted server replaying the night: the raid envelopes come back
# replayed and the check-ins as duplicates; nothing is written or sent twice.
before=$(sql "SELECT (SELECT count(*) FROM $S.cairnloop_messages),
                     (SELECT count(*) FROM $S.cairnloop_delivery_jobs),
                     (SELECT count(*) FROM $S.cairnloop_outbound_bulk_envelopes),
                     (SELECT count(*) FROM $S.cairnloop_audit_events)")
rc=0
run_server replay || rc=$?
sum_result= sum_created=
summary "$tmp/replay.out"
if [ "$rc" -eq 0 ] && [ "$sum_result" = ok ] && [ "$sum_created" = 0 ] &&
  [ "$sum_replayed_envelopes" = "$(sql "SELECT count(*) FROM $S.cairnloop_outbound_bulk_envelopes")" ] &&
  [ "$sum_checkins" = 0 ]; then
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
