-- cl_existing: the stored rows of a duplicate trigger, read only, after
-- cl_trigger failed on the jobs' unique key.
--
-- Parameters: $1 conversation_id, $2 template_id, $3 bulk_envelope_id (NULL: none).
-- Columns:    those of cl_trigger: duplicate (true), job_id, message_id,
--             state, scheduled_at, content, status (of the message).
SELECT true AS duplicate, e.id AS job_id, e.message_id, e.state,
       to_char(e.scheduled_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS scheduled_at,
       m.content, m.metadata->>'status' AS status
FROM @S.cairnloop_delivery_jobs e
JOIN @S.cairnloop_messages m ON m.id = e.message_id
WHERE e.conversation_id = $1::bigint AND e.template_id = $2
  AND e.bulk_envelope_id IS NOT DISTINCT FROM $3::uuid;
