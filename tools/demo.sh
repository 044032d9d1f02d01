#!/usr/bin/env bash
# `make demo`: the outbound lane of Cairnloop end to end on the embedded
# default database (a private PostgreSQL under ./.cairnloop, started on
# demand), as the commands a person would type.  The campaign script
# (lua/examples/campaign.lua, with the policy lua/examples/demo_policy.lua)
# seeds demo conversations, shows a bulk send over the cap being refused and
# recorded, sends a campaign to the open conversations in envelopes of the
# cap's size, delivers every message and prints the report.
# `cairnloop demo` runs the same script in one command.
#
# Running it again is safe: the campaign's envelope ids derive from its
# fixed key, so every envelope replays and nothing is sent twice.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
CL=${CAIRNLOOP_BIN:-build/cairnloop}
[ -x "$CL" ] || { echo "demo: $CL is not built (run make)" >&2; exit 1; }

# The demo always runs on the embedded cluster, whatever the environment
# points at, and with the default cap of 25.
unset CAIRNLOOP_DATABASE_URL PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGSERVICE \
  CAIRNLOOP_MAX_BATCH_SIZE

# Bold and dim only on a terminal that understands them: none when TERM is
# dumb or unset, nor under NO_COLOR (no-color.org), as the campaign script
# decides for its own output.
if [ -t 1 ] && [ -n "${TERM:-}" ] && [ "$TERM" != dumb ] && [ -z "${NO_COLOR:-}" ]; then
  bold=$'\e[1m' dim=$'\e[2m' off=$'\e[0m'
else
  bold= dim= off=
fi
step() {
  printf '\n%s== %s%s\n' "$bold" "$1" "$off"
  [ $# -lt 2 ] || printf '%s   %s%s\n' "$dim" "$2" "$off"
}
die() { printf '\ndemo: %s\n' "$*" >&2; exit 1; }

# Shows a command line as a person would type it, then runs it.
cairnloop() {
  local line="" arg
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:,=@%+-]+$ ]]; then line+=" $arg"; else line+=" '${arg//\'/\'\\\'\'}'"; fi
  done
  printf '%s$ cairnloop%s%s\n' "$dim" "$line" "$off"
  "$CL" "$@"
}

step "Start the embedded PostgreSQL" "Unix socket only, under ./.cairnloop; created on first use."
cairnloop db start || die "the embedded database did not start"

step "Run the demo campaign" \
  "A Lua script with an open engine and the demo policy (auditor, actor resolver, notifier): it migrates, seeds, sends, delivers and reports."
cairnloop run --policy lua/examples/demo_policy.lua lua/examples/campaign.lua ||
  die "the demo campaign failed"

step "The envelope listing" \
  "Both lanes from one table, newest first: submitted envelopes and the refused attempt."
cairnloop envelopes --template recovery_v1 --limit 10 || die "cannot list the envelopes"

printf '\nThe database keeps running:\n'
printf '  %-34s %s\n' "$CL demo" "the same demo, in one command" \
  "psql \"\$($CL db url)\"" "to look at the tables (schema cairnloop)" \
  "$CL db stop" "to stop it"
