#!/usr/bin/env bash
# `make demo`: the outbound lane of Cairnloop, step by step, on the embedded
# default database (a private PostgreSQL under ./.cairnloop, started on
# demand).  A bulk send over the cap is refused and still recorded, one
# within the cap is accepted, one message is triggered on its own, and the
# envelope list shows both lanes.  Running it again is safe: the fixed
# envelope id makes the bulk replay and the trigger reports a duplicate.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
CL=${CAIRNLOOP_BIN:-build/cairnloop}
[ -x "$CL" ] || { echo "demo: $CL is not built (run make)" >&2; exit 1; }

# The demo always runs on the embedded cluster, whatever the environment
# points at, and with the default cap of 25.
unset CAIRNLOOP_DATABASE_URL PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGSERVICE \
  CAIRNLOOP_MAX_BATCH_SIZE

ENVELOPE_ID=5e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b
BODY="Hi, the sync issue you reported is fixed. Reply here if anything looks off."

if [ -t 1 ]; then bold=$'\e[1m' dim=$'\e[2m' off=$'\e[0m'; else bold= dim= off=; fi
step_no=0
step() {
  step_no=$((step_no + 1))
  printf '\n%s%d. %s%s\n' "$bold" "$step_no" "$1" "$off"
  [ $# -lt 2 ] || printf '%s   %s%s\n' "$dim" "$2" "$off"
}
die() { printf '\ndemo: %s\n' "$*" >&2; exit 1; }

# An argument as a person would type it: quoted only when it needs to be.
shell_word() {
  if [[ $1 =~ ^[A-Za-z0-9_./:,=@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Shows a command line (with the input piped in, if any), then runs it.
shown() {
  local line="" arg
  for arg in "$@"; do line+=" $(shell_word "$arg")"; done
  printf '%s$ %s%s%s\n' "$dim" "${PIPED:+$PIPED | }" "${line# }" "$off"
}
cairnloop() {
  shown cairnloop "$@"
  "$CL" "$@"
}

step "Start the embedded PostgreSQL" \
  "Unix socket only, under ./.cairnloop; created on first use."
cairnloop db start || die "the embedded database did not start"
URL=$("$CL" db url) || die "cairnloop db url failed"

step "Apply the migrations" "Idempotent: a second run changes nothing."
cairnloop migrate || die "migrate failed"

step "Seed 30 demo conversations" \
  "Conversations belong to the host application; here psql plays that part."
psql "$URL" -X -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL' || die "seeding failed"
INSERT INTO cairnloop.cairnloop_conversations (id, subject, customer_ref)
SELECT g, 'Demo conversation ' || g, 'customer-' || g FROM generate_series(1, 30) AS g
ON CONFLICT (id) DO NOTHING;
SELECT setval(pg_get_serial_sequence('cairnloop.cairnloop_conversations', 'id'),
              (SELECT max(id) FROM cairnloop.cairnloop_conversations));
SQL
# (stdout above is setval's row; errors still show on stderr.)
count=$(psql "$URL" -X -qAt -c 'SELECT count(*) FROM cairnloop.cairnloop_conversations') ||
  die "counting conversations failed"
echo "conversations in the database: $count"

step "Bulk send to 26 conversations: over the cap of 25" \
  "Refused with exit status 3, and the refused envelope is still recorded."
seq 1 26 | PIPED="seq 1 26" cairnloop bulk --template recovery_v1 --body "$BODY" \
  --ids-file - --actor operator:demo
rc=$?
[ "$rc" -eq 3 ] || die "expected exit status 3 (batch_too_large), got $rc"
echo "exit status 3 (batch_too_large), as expected: nothing was sent"

step "Bulk send to 3 conversations: within the cap" \
  "One transaction: the envelope, 3 messages and 3 delivery jobs.  The fixed envelope id makes a rerun replay it instead of sending twice."
cairnloop bulk --template recovery_v1 --body "$BODY" --ids 1,2,3 --actor operator:demo \
  --envelope-id "$ENVELOPE_ID" || die "the bulk send within the cap failed"

step "Trigger one message" \
  "At most once per conversation and template: a rerun reports the duplicate."
cairnloop trigger 4 --template welcome_v1 --content "Welcome aboard!" --actor operator:demo ||
  die "trigger failed"

step "List the envelopes" "Both lanes in one table: submitted and refused_cap_exceeded."
cairnloop envelopes --limit 10 || die "listing envelopes failed"

printf '\n%sDone.%s The database keeps running:\n' "$bold" "$off"
printf '  %-32s %s\n' "psql \"\$($CL db url)\"" "to look at the tables (schema cairnloop)" \
  "$CL db stop" "to stop it"
