#!/usr/bin/env bash
# The operator commands on a real database: migrate's report and --status,
# jobs, stats, retry, cancel, pause, resume, prune, envelopes' delivery
# progress and `work --retention-*`: rows before and after, audit rows
# through the shipped table auditor, --json shapes and exit statuses.  A
# schema of its own, dropped at exit.
set -u
. "$(dirname "$0")/cli_lib.bash"
need_database

schema="cli_ops_$$"
auditor="$CLI_TEST_ROOT/lua/cairnloop/table_auditor.lua"
on_exit() { sql "DROP SCHEMA IF EXISTS $schema, ${schema}_b CASCADE" >/dev/null 2>&1; }
c() { cl --schema "$schema" "$@"; }
jobs_sql() { sql "SELECT string_agg(conversation_id || ':' || state, ',' ORDER BY conversation_id) FROM $schema.cairnloop_delivery_jobs"; }

# --- migrate: what it applied, then --status
c migrate --status --json
exits 0 "migrate --status on an unmigrated schema"
n=$(jlines)
like "$n" "^[1-9][0-9]*$" "migrate --status --json: one JSON line per migration"
is "$(jget 'r.version .. " " .. r.status .. " " .. tostring(r.applied_at == null)' "$(head -n 1 <<<"$out")")" \
  "20260101000000_create_conversations pending true" "--status --json: {version, status, applied_at = null}"
is "$(sql "SELECT count(*) FROM pg_namespace WHERE nspname = '$schema'")" "0" "--status creates nothing"
c migrate --json
exits 0 "migrate applies every migration"
is "$(jget '#r.applied')" "$n" "migrate --json lists every migration it applied"
is "$(jget 'r.applied[1] .. " " .. r.applied[#r.applied]')" \
  "20260101000000_create_conversations 20260701000100_queue_operations" "... in order"
c migrate --status
like "$out" "^applied  20260101000000_create_conversations  [0-9]{4}-" "--status shows when each was applied"
like "$out" $'\n'"schema $schema: $n applied, 0 pending$" "--status counts applied and pending"
sql "DELETE FROM $schema.cairnloop_schema_migrations WHERE version = '20260701000100_queue_operations'" >/dev/null
c migrate --status
like "$out" $'\n'"pending  20260701000100_queue_operations"$'\n' "a migration not recorded is pending"
sql "INSERT INTO $schema.cairnloop_schema_migrations (version) VALUES ('20260701000100_queue_operations')" >/dev/null
cl --schema "${schema}_b" migrate
like "$out" "^applied 20260101000000_create_conversations"$'\n'"applied " "migrate prints each migration it applied"
like "$out" $'\n'"schema ${schema}_b: $n migrations applied$" "... and how many"

seed_conversations 1 10 "$schema"

# --- jobs and stats
c bulk --template camp --body hi --ids 1,2,3 --json
env=$(jget 'r.envelope.id')
c trigger 4 --template single
c trigger 5 --template later --schedule-in 3600
c jobs
exits 0 "jobs lists"
is "$(sed -n 1p <<<"$out" | tr -s ' ')" "ID STATE ATTEMPT CONVERSATION TEMPLATE ENVELOPE SCHEDULED_AT FINISHED_AT LAST_ERROR" "jobs prints a header"
is "$(wc -l <<<"$out")" "6" "one line per job"
c jobs --json --envelope "$env"
is "$(jlines)" "3" "jobs --envelope --json: one object per job of the envelope"
is "$(jget 'r.args.bulk_envelope_id == "'"$env"'" and r.worker .. " " .. r.state .. " " .. r.attempt')" "outbound available 0" \
  "jobs --json: the job table of API.md"
c jobs --state scheduled --json
is "$(jget 'r.args.conversation_id')" "5" "jobs --state filters"
c jobs --template single --limit 1 --json
is "$(jget 'r.args.template_id')" "single" "jobs --template filters"
c jobs --state lost
exits 2 "jobs --state with an unknown state is a usage error"
like "$err" "^cairnloop: invalid_argument: --state: state 'lost' is unknown" "... naming the state"
c jobs --envelope nope
exits 2 "jobs --envelope with a bad UUID is invalid_argument"
c stats --json
exits 0 "stats"
is "$(jget 'r.available .. " " .. r.scheduled .. " " .. r.cancelled .. " " .. tostring(r.paused)')" "4 1 0 false" \
  "stats --json: counts by state and paused"
is "$(jget 'type(r.oldest_due_age_seconds)')" "number" "stats --json: oldest_due_age_seconds"
c stats --envelope "$env"
like "$out" "^envelope $env"$'\n'"available  3" "stats --envelope counts the envelope's jobs"

# --- cancel
c --policy "$auditor" cancel --envelope "$env" --actor op:9
exits 0 "cancel --envelope"
is "$out" "cancelled 3 jobs" "cancel says how many"
is "$(jobs_sql)" "1:cancelled,2:cancelled,3:cancelled,4:available,5:scheduled" "the envelope's jobs are cancelled, others not"
is "$(sql "SELECT count(*) FROM $schema.cairnloop_messages WHERE metadata->>'status' = 'cancelled'")" "3" \
  "their messages are cancelled"
is "$(sql "SELECT action || ' ' || actor || ' ' || count || ' ' || bulk_envelope_id FROM $schema.cairnloop_audit_events")" \
  "cancel_jobs op:9 3 $env" "cancel is audited with count and envelope"
c envelopes --json
is "$(jget 'r.pending .. " " .. r.sent .. " " .. r.failed .. " " .. r.cancelled')" "0 0 0 3" \
  "envelopes --json: delivery progress keys"
c envelopes
like "$(sed -n 1p <<<"$out")" "COUNT +PENDING +SENT +FAILED +CANCELLED" "envelopes shows the progress columns"
c cancel 5 --json
is "$(jget 'r.cancelled')" "1" "cancel JOB_ID --json"
c cancel
exits 2 "cancel without jobs is a usage error"
c cancel --all-discarded
exits 2 "cancel takes no --all-discarded"

# --- retry: a discarded job; triggering it again is a duplicate
sql "UPDATE $schema.cairnloop_delivery_jobs SET state = 'discarded', discarded_at = now(), attempt = 20
     WHERE conversation_id = 4" >/dev/null
job4=$(sql "SELECT id FROM $schema.cairnloop_delivery_jobs WHERE conversation_id = 4")
c trigger 4 --template single
like "$out" "^duplicate: " "triggering a discarded message again is a duplicate"
like "$out" "to deliver it again: cairnloop retry $job4" "... and the command says how to send it"
c --policy "$auditor" retry "$job4" --json
exits 0 "retry JOB_ID"
is "$(jget 'r.retried')" "1" "retry --json: {retried}"
is "$(sql "SELECT state || ' ' || attempt FROM $schema.cairnloop_delivery_jobs WHERE id = $job4")" "available 0" \
  "the job is available with every attempt allowed again"
is "$(sql "SELECT count(*) FROM $schema.cairnloop_audit_events WHERE action = 'retry_jobs'")" "1" "retry is audited"
c retry --all-discarded
is "$out" "retried 0 jobs" "retry --all-discarded with none"
c retry 1 2 2
exits 2 "retry with a duplicate id is invalid_argument"
c retry abc
exits 2 "retry with a non-integer id is a usage error"

# --- pause and resume
c --policy "$auditor" pause
exits 0 "pause"
like "$out" "^delivery paused" "pause says so"
c stats --json
is "$(jget 'r.paused')" "true" "stats shows the pause"
c work --once --json
is "$(jget 'r.no_op')" "0" "a paused worker claims nothing"
# A running worker says once in its log that delivery is paused, and wakes
# when it is resumed (the loops wait for the log line, bounded).
cairnloop --schema "$schema" work >/dev/null 2>"$cl_tmp/work.err" &
wpid=$!
for _ in $(seq 100); do grep -q "delivery is paused" "$cl_tmp/work.err" && break; sleep 0.1; done
like "$(cat "$cl_tmp/work.err")" "\[info\] delivery is paused: claiming nothing" "a paused worker says so in its log"
c --policy "$auditor" resume --json
is "$(jget 'r.paused')" "false" "resume --json"
for _ in $(seq 100); do grep -q "delivery resumed" "$cl_tmp/work.err" && break; sleep 0.1; done
kill -TERM "$wpid"
wait "$wpid"
is "$(grep -c 'delivery is paused' "$cl_tmp/work.err")" "1" "... once"
like "$(cat "$cl_tmp/work.err")" "delivery resumed" "and that delivery resumed"
is "$(sql "SELECT state FROM $schema.cairnloop_delivery_jobs WHERE id = $job4")" "completed" \
  "after resume the worker delivers the job"
is "$(sql "SELECT string_agg(action, ',' ORDER BY id) FROM $schema.cairnloop_audit_events WHERE action LIKE '%_delivery'")" \
  "pause_delivery,resume_delivery" "pause and resume are audited"

# --- prune, and the workers' own retention
c prune
is "$out" "deleted 0 finished jobs" "prune keeps jobs within their retention"
c prune --older-than 0s --json
is "$(jget 'r.deleted')" "5" "prune --older-than deletes every finished job"
is "$(jobs_sql)" "" "no job left"
is "$(sql "SELECT count(*) FROM $schema.cairnloop_messages")" "5" "messages stay"
c trigger 4 --template single --json
is "$(jget 'tostring(r.duplicate) .. " " .. r.delivery_job.id')" "true 0" "a pruned job's trigger stays a duplicate"
c prune --older-than 3x
exits 2 "a bad duration is a usage error"
c work --once --retention-completed off --retention-failed 12h
exits 0 "work takes --retention-completed off and --retention-failed DURATION"
c work --once --retention-completed 0s
exits 2 "a retention of 0 is refused"
