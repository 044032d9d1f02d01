#!/usr/bin/env bash
# cairnloop migrate / trigger / bulk / envelopes on a real database: human
# output, --json shapes (parsed), --ids-file from stdin, --body-file, replay
# and the 64-bit ids.  The default schema; a fresh template id per run, so
# the file can run again on the same database.
set -u
. "$(dirname "$0")/cli_lib.bash"
need_database

tpl="welcome_$$_$RANDOM"
bulk_tpl="recovery_$$_$RANDOM"

# --- migrate
cl migrate
exits 0 "migrate succeeds"
like "$out" "^(applied [0-9a-z_]+"$'\n'")*schema cairnloop(: [0-9]+ migrations? applied| is up to date)$" \
  "migrate names each migration it applied, or says the schema is up to date"
cl migrate
is "$out" "schema cairnloop is up to date" "migrate again says which schema is up to date"
cl migrate --json
exits 0 "migrate again is a no-op"
is "$(jget 'r.migrated and r.schema')" "cairnloop" "migrate --json: {migrated, schema}"
is "$(jget '#r.applied')" "0" "migrate --json lists what it applied: nothing"

seed_conversations 1 40
big=9007199254740993 # 2^53 + 1: a double would round it
seed_conversations "$big" "$big"

# --- trigger, human
cl trigger 5 --template "$tpl"
exits 0 "trigger succeeds"
like "$out" "^triggered message [0-9]+ for conversation 5 \(template $tpl, pending\)" \
  "trigger names the message, conversation and template"
like "$out" $'\n''delivery job [0-9]+ available, due [0-9]{4}-' "trigger names the delivery job"
is "$err" "" "trigger prints nothing on stderr"

# --- trigger --json
cl trigger 5 --template "$tpl" --json
exits 0 "a repeated trigger succeeds"
is "$(jget 'r.duplicate')" "true" "a repeated trigger is a duplicate"
is "$(jget 'r.message.conversation_id .. " " .. r.message.role .. " " .. r.message.metadata.status')" \
  "5 system_outbound pending" "trigger --json: message {conversation_id, role, metadata.status}"
is "$(jget 'r.message.content')" "Outbound message using template: $tpl" "the default content"
is "$(jget 'r.delivery_job.worker .. " " .. r.delivery_job.args.conversation_id .. " " .. r.delivery_job.args.template_id')" \
  "outbound 5 $tpl" "trigger --json: delivery_job {worker, args}"
is "$(jget 'r.delivery_job.args.message_id == r.message.id')" "true" "the job carries the message id"
is "$(jget 'r.message.metadata.bulk_envelope_id')" "null" "no envelope: bulk_envelope_id is null"
is "$(jget 'r.audit')" "null" "no auditor: audit is null"
cl trigger 6 --template "$tpl" --content "Your ticket is back" --schedule-in 3600 --actor op:1 --json
exits 0 "trigger with content, schedule-in and actor"
is "$(jget 'r.duplicate')" "false" "a new trigger is not a duplicate"
is "$(jget 'r.message.content')" "Your ticket is back" "--content is the message text"
is "$(jget 'r.delivery_job.state')" "scheduled" "--schedule-in schedules the job"

# 64-bit ids survive the JSON encoding exactly (as text, not via a double).
cl trigger "$big" --template "$tpl" --json
exits 0 "trigger a conversation id above 2^53"
like "$out" "\"conversation_id\":$big[,}]" "--json keeps 64-bit ids exact"

# --- bulk, human
cl bulk --template "$bulk_tpl" --body "Hello there" --ids 1,2,3
exits 0 "bulk within the cap succeeds"
like "$out" "^envelope [0-9a-f-]{36} submitted: 3 recipients \(cap 25\)" \
  "bulk says: envelope <uuid> submitted: 3 recipients (cap 25)"
like "$out" "conversation 3  message [0-9]+  job [0-9]+ \(available\)" "bulk lists the message ids"

# --- bulk --json with --ids-file - (stdin) and --body-file
printf 'line one\nline two\n' >"$cl_tmp/body.txt"
cl_in $'7\n\n 8 \n9\n' bulk --template "$bulk_tpl" --body-file "$cl_tmp/body.txt" --ids-file - \
  --actor agent_1 --json
exits 0 "bulk --ids-file - reads ids from stdin"
is "$(jget 'table.concat(r.envelope.recipient_conversation_ids, ",")')" "7,8,9" \
  "blank lines and blanks around ids are ignored"
is "$(jget 'r.envelope.rendered_body == "line one\nline two\n"')" "true" \
  "--body-file is stored byte for byte"
is "$(jget 'r.envelope.count .. " " .. r.envelope.effective_cap .. " " .. r.envelope.status .. " " .. r.envelope.requested_by')" \
  "3 25 submitted agent_1" "bulk --json: envelope {count, effective_cap, status, requested_by}"
is "$(jget '#r.messages .. " " .. #r.delivery_jobs')" "3 3" "one message and one job per recipient"
is "$(jget 'r.messages[2].metadata.bulk_envelope_id == r.envelope.id')" \
  "true" "messages[i] is for ids[i] and carries the envelope id"
is "$(jget 'r.messages[2].conversation_id')" "8" "messages keep the order of the ids"
is "$(jget 'r.delivery_jobs[3].args.bulk_envelope_id == r.envelope.id')" "true" \
  "jobs carry the envelope id"
is "$(jget 'r.replayed')" "false" "a new envelope is not replayed"

# --- replay with a caller-chosen envelope id
eid=$(cat /proc/sys/kernel/random/uuid)
cl bulk --template "$bulk_tpl" --body "Same" --ids 10,11 --envelope-id "$eid" --json
exits 0 "bulk with --envelope-id"
is "$(jget 'r.envelope.id')" "$eid" "the envelope takes the given id"
cl bulk --template "$bulk_tpl" --body "Same" --ids 10,11 --envelope-id "$eid"
exits 0 "the same bulk again succeeds"
like "$out" "replayed: stored earlier with the same content" "and says it replayed"

# --- the cap of the moment
cl bulk --template "$bulk_tpl" --body "Hi" --ids 12,13,14 --max-batch-size 3 --json
exits 0 "--max-batch-size 3 admits 3 recipients"
is "$(jget 'r.envelope.effective_cap')" "3" "the envelope records the cap of the moment"
CAIRNLOOP_MAX_BATCH_SIZE=2 cl bulk --template "$bulk_tpl" --body "Hi" --ids 15,16,17
exits 3 "CAIRNLOOP_MAX_BATCH_SIZE=2 refuses 3 recipients"

# --- envelopes
cl envelopes --template "$bulk_tpl"
exits 0 "envelopes succeeds"
header=$(head -n 1 <<<"$out")
like "$header" "^ID +STATUS +COUNT +PENDING +SENT +FAILED +CANCELLED +CAP +TEMPLATE +REQUESTED_AT +REQUESTED_BY +REFUSED_REASON$" \
  "envelopes prints a table header, delivery progress after the count"
like "$out" "refused_cap_exceeded +3 +0 +0 +0 +0 +2 +$bulk_tpl .* batch_size 3 exceeds cap 2" \
  "the refused lane is listed with its reason (and no messages)"
like "$out" "$eid +submitted +2 +2 +0 +0 +0 +25 +$bulk_tpl" "the submitted lane is listed, its messages pending"
# Columns line up: STATUS starts at the same offset on every line.
offsets=$(awk '{ print index($0, $2) }' <<<"$out" | sort -u | wc -l)
is "$offsets" "1" "the columns are aligned"
cl envelopes --template "$bulk_tpl" --json
exits 0 "envelopes --json"
is "$(jlines)" "5" "envelopes --json: one JSON object per line"
first=$(head -n 1 <<<"$out")
is "$(jget 'r.status .. " " .. r.refused_reason' "$first")" \
  "refused_cap_exceeded batch_size 3 exceeds cap 2" "newest first: the refused envelope"
cl envelopes --template "$bulk_tpl" --status submitted --limit 2 --json
is "$(jlines)" "2" "--limit caps the list"
is "$(jget 'r.status' "$(tail -n 1 <<<"$out")")" "submitted" "--status filters"
cl envelopes --template "no_such_template_$$"
exits 0 "an empty list is no error"
is "$out" "no envelopes" "an empty list says so"

# --- common options after and before the command
cl --json envelopes --template "$bulk_tpl" --limit 1
is "$(jget 'r.template_id')" "$bulk_tpl" "common options may precede the command"
