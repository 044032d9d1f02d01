-- cl_existing: the stored rows of a duplicate trigger, read only, after
-- cl_trigger failed on the messages' key.
--
-- Parameters: $1 conversation_id, $2 template_id, $3 bulk_envelope_id (NULL: none).
-- Columns:    those of cl_trigger: duplicate (true), job_id, message_id,
--             state, scheduled_at, content, status (of the message).
--
-- The message holds the key and is never deleted; its job may be gone
-- (finished, then pruned), and then job_id, state and scheduled_at are
-- NULL: still a duplicate, nothing is sent again.  The key's index
-- (migration 20260701000000) finds the message by conversation and
-- template; the job is found by its message.
SELECT true AS duplicate, j.id AS job_id, m.id AS message_id, j.state,
       to_char(j.scheduled_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS scheduled_at,
       m.content, m.metadata->>'status' AS status
FROM @S.cairnloop_messages m
LEFT JOIN @S.cairnloop_delivery_jobs j ON j.message_id = m.id
WHERE m.conversation_id = $1::bigint AND m.template_id = $2
  AND m.bulk_envelope_id IS NOT DISTINCT FROM $3::uuid;
