#!/usr/bin/env bash
# A campaign killed in the middle and run again: `cairnloop run` sends 400
# recipients in 50 envelopes of 8 through a policy whose auditor is slow
# (pg_sleep inside each chunk's transaction), is killed with SIGKILL once a
# few envelopes are stored, and is run again.  The rerun replays exactly the
# envelopes stored before the kill, sends the rest, and the totals come out
# exact: 50 envelopes, 400 messages, one per conversation, 400 jobs, one
# audit row per envelope.  A third run replays everything and writes nothing.
set -u
. "$(dirname "$0")/cli_lib.bash"
need_database

S="camp_resume_$$_$RANDOM"
N=400
SIZE=8
CHUNKS=$((N / SIZE))
KEY="resume-$$-$RANDOM"
on_exit() { sql "DROP SCHEMA IF EXISTS $S CASCADE" >/dev/null 2>&1 || true; }

cl migrate --schema "$S"
exits 0 "migrate a fresh schema"
seed_conversations 1 "$N" "$S"

# The table auditor, slowed down inside the operation's transaction: the
# kill then most likely lands in the middle of a chunk.
cat >"$cl_tmp/slow_policy.lua" <<'LUA'
local cl = require "cairnloop"
local auditor = require("cairnloop.table_auditor").new { schema = cl.schema }
cl.auditor {
  audit = function(tx, action, actor, metadata)
    tx:exec("SELECT pg_sleep(0.02)")
    return auditor.audit(tx, action, actor, metadata)
  end,
  list_events = auditor.list_events,
}
LUA

cat >"$cl_tmp/campaign.lua" <<'LUA'
local campaign = require "cairnloop.campaign"
local n, size, key = tonumber(arg[1]), tonumber(arg[2]), arg[3]
local ids = {}
for i = 1, n do ids[i] = i end
local s, code, msg = campaign.run(engine, {
  key = key, template_id = "resume_v1", rendered_body = "We are back online.",
  cohort = ids, max_recipients = n, chunk_size = size,
})
if not s then error({ code = code, message = msg }) end
print(string.format("chunks=%d submitted=%d replayed=%d refused=%d recipients=%d+%d/%d",
  s.chunks, s.envelopes.submitted, s.envelopes.replayed, s.envelopes.refused,
  s.recipients.submitted, s.recipients.replayed, s.recipients.total))
LUA

count_envelopes() {
  sql "SELECT count(*) FROM $S.cairnloop_outbound_bulk_envelopes WHERE template_id = 'resume_v1'"
}

# Other sessions of this database: the killed command's, until the server
# notices it is gone (at the end of its pg_sleep at the latest).
other_sessions() {
  sql "SELECT count(*) FROM pg_stat_activity
       WHERE datname = current_database() AND pid <> pg_backend_pid()
         AND backend_type = 'client backend'"
}

# --- 1. the first run, killed once some envelopes are stored
cairnloop --schema "$S" --policy "$cl_tmp/slow_policy.lua" run "$cl_tmp/campaign.lua" \
  "$N" "$SIZE" "$KEY" >"$cl_tmp/run1.out" 2>"$cl_tmp/run1.err" &
pid=$!
# Until six envelopes are stored (or the run ended by itself: the next
# check then fails).
six_stored_or_done() { [ "$(count_envelopes)" -ge 6 ] || ! kill -0 "$pid" 2>/dev/null; }
wait_until 12 six_stored_or_done || true
# (stderr off: bash reports the killed job, which is the point here)
rc=0
{
  kill -KILL "$pid"
  wait "$pid"
} 2>/dev/null || rc=$?
out=$(cat "$cl_tmp/run1.out")
err=$(cat "$cl_tmp/run1.err")
is "$rc" 137 "the first run was killed (SIGKILL) before it finished"
no_other_session() { [ "$(other_sessions)" -eq 0 ]; }
wait_until 5 no_other_session || true
before=$(count_envelopes)
messages_before=$(sql "SELECT count(*) FROM $S.cairnloop_messages")
if [ "$before" -ge 1 ] && [ "$before" -lt "$CHUNKS" ]; then
  tap 0 "the kill landed mid-campaign ($before of $CHUNKS envelopes stored)"
else
  tap 1 "the kill landed mid-campaign" "stored envelopes: $before of $CHUNKS"
fi
is "$messages_before" "$((before * SIZE))" \
  "every stored envelope has all its messages: the interrupted chunk left nothing"

# --- 2. the rerun replays what was stored and sends the rest
cl --schema "$S" --policy "$cl_tmp/slow_policy.lua" run "$cl_tmp/campaign.lua" "$N" "$SIZE" "$KEY"
exits 0 "the rerun succeeds"
is "$out" "chunks=$CHUNKS submitted=$((CHUNKS - before)) replayed=$before refused=0 recipients=$((N - before * SIZE))+$((before * SIZE))/$N" \
  "the rerun replays the $before stored envelopes and submits the other $((CHUNKS - before))"

is "$(sql "SELECT count(*), count(*) FILTER (WHERE status = 'submitted'), count(DISTINCT id)
           FROM $S.cairnloop_outbound_bulk_envelopes WHERE template_id = 'resume_v1'")" \
  "$CHUNKS|$CHUNKS|$CHUNKS" "$CHUNKS envelopes in all, every one submitted"
is "$(sql "SELECT count(*), count(DISTINCT conversation_id) FROM $S.cairnloop_messages
           WHERE metadata->>'template_id' = 'resume_v1'")" \
  "$N|$N" "$N messages, one per conversation: no duplicates"
is "$(sql "SELECT count(*) FROM $S.cairnloop_messages m
           JOIN $S.cairnloop_outbound_bulk_envelopes e
             ON e.id = (m.metadata->>'bulk_envelope_id')::uuid
           WHERE m.conversation_id = ANY (e.recipient_conversation_ids)")" \
  "$N" "every message belongs to the envelope that lists its conversation"
is "$(sql "SELECT count(*), count(DISTINCT conversation_id) FROM $S.cairnloop_delivery_jobs")" \
  "$N|$N" "$N delivery jobs, one per conversation"
is "$(sql "SELECT count(*), sum(count) FROM $S.cairnloop_audit_events
           WHERE action = 'bulk_outbound_trigger'")" \
  "$CHUNKS|$N" "one audit row per envelope: replays are not audited again"
is "$(sql "SELECT count(*) FROM $S.cairnloop_outbound_bulk_envelopes
           WHERE NOT recipient_conversation_ids <@ ARRAY(SELECT generate_series(1, $N)::bigint)")" \
  "0" "no envelope names a conversation outside the cohort"

# --- 3. once more: everything replays, nothing is written
cl --schema "$S" run "$cl_tmp/campaign.lua" "$N" "$SIZE" "$KEY"
exits 0 "a third run succeeds"
is "$out" "chunks=$CHUNKS submitted=0 replayed=$CHUNKS refused=0 recipients=0+$N/$N" \
  "a third run replays all $CHUNKS envelopes"
is "$(sql "SELECT count(*) FROM $S.cairnloop_messages")" "$N" "still $N messages"
