#!/usr/bin/env bash
# `cairnloop demo`, twice, in a fresh directory: it creates and starts the
# embedded cluster there (whatever the environment points at), and the
# second run sends nothing new: every envelope replays, the refused attempt
# stays one record, the report is the same.  Needs no test database.
set -u
. "$(dirname "$0")/cli_lib.bash"

dir=$(mktemp -d /tmp/cairnloop-demo-test.XXXXXXXX)
chmod 755 "$dir"
cleanup_dirs+=("$dir")
# The cluster is stopped before the directory goes (cli_lib removes it).
on_exit() { (cd "$dir" && cairnloop db stop >/dev/null 2>&1) || true; }
cd "$dir" || exit 1

# The demo ignores these: a test database in the environment must not be
# seeded with demo conversations.
export CAIRNLOOP_DATABASE_URL="postgresql:///must_not_be_used?host=/nonexistent"
export PGHOST=/nonexistent

report() { # the lines of the report that must not change between runs
  grep -E '^(envelopes|messages|audit events|demo conversations|refused|recorded|[0-9]+ recipients)' <<<"$out"
}

cl demo
exits 0 "the first demo succeeds"
is "$(grep -c '' <<<"$err" | tr -d ' ')" "$(grep -c '^cairnloop: \(creating\|started\)' <<<"$err")" \
  "stderr only says that the embedded cluster was created and started"
[ -d "$dir/.cairnloop" ] || [ -L "$dir/.cairnloop" ]
tap $? "the embedded cluster lives under ./.cairnloop"
like "$out" $'\n''demo conversations: 12 closed, 108 open' "120 demo conversations are seeded"
like "$out" $'\n''refused: batch_size 26 exceeds cap 25' "the bulk send over the cap is refused"
like "$out" "refused \(batch_too_large\): cohort of 108 recipients exceeds max_recipients 54; nothing written" \
  "the campaign's own guard refuses before writing"
like "$out" $'\n''  envelopes:  5 submitted, 0 replayed, 0 refused' "the campaign submits 5 envelopes"
like "$out" $'\n''108 sent, 0 failed' "every message is delivered"
like "$out" $'\n''envelopes \(template recovery_v1\): 1 refused_cap_exceeded, 5 submitted' \
  "the report: envelopes by status"
like "$out" $'\n''messages  \(template recovery_v1\): 108 sent' "the report: messages by status"
like "$out" $'\n''audit events: 5 bulk_outbound_trigger' "the report: audit events"
like "$out" $'\n''cairnloop_outbound_delivery_total\{outcome="sent",reason="notifier_ok"\} 108' \
  "the report: Prometheus metrics"
is "$(wc -l <"$dir/.cairnloop/outbox.jsonl" | tr -d ' ')" "108" \
  "the notifier wrote one outbox line per message"
like "$(head -n 1 "$dir/.cairnloop/outbox.jsonl")" '^\{"idempotency_key":"cl-msg-[0-9]+","message_id":[0-9]+' \
  "each outbox line carries the idempotency key"
first=$(report)

cl demo
exits 0 "the second demo succeeds"
like "$out" $'\n''  envelopes:  0 submitted, 5 replayed, 0 refused' "the second run replays every envelope"
like "$out" $'\n''0 sent, 0 failed' "and has nothing left to deliver"
like "$out" 'cairnloop_outbound_trigger_total\{outcome="duplicate"\} 108' \
  "its metrics count the 108 recipients as duplicates"
is "$(report)" "$first" "the report is the same: nothing was sent twice"
is "$(wc -l <"$dir/.cairnloop/outbox.jsonl" | tr -d ' ')" "108" "the outbox got no line twice"

cl demo --schema other
exits 2 "demo takes no --schema"
