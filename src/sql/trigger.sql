-- cl_trigger: one trigger's message and delivery job (cl_trigger).
--
-- Parameters: $1 conversation_id, $2 template_id, $3 content,
--             $4 bulk_envelope_id (NULL: none), $5 schedule_in (seconds).
-- Columns:    duplicate (false here), job_id, message_id, state,
--             scheduled_at, content and status (NULL here; cl_existing
--             fills them for a duplicate, in this same shape).
--
-- Inserts optimistically and fails, rather than quietly inserting nothing,
-- on anything that must not be written: an unknown conversation through
-- the foreign key (23503), a duplicate through the messages' key
-- (conversation_id, template_id, bulk_envelope_id; 23505, migration
-- 20260701000000), which deleting finished jobs never re-opens.  That lets the auditor path commit without looking at the rows
-- first, and saves a probe on every call.
WITH msg AS (
  INSERT INTO @S.cairnloop_messages (conversation_id, content, role, metadata, template_id,
         bulk_envelope_id)
  VALUES ($1::bigint, $3, 'system_outbound', jsonb_build_object('template_id', $2::text,
          'status', 'pending', 'bulk_envelope_id', $4::uuid), $2, $4::uuid)
  RETURNING id
), job AS (
  INSERT INTO @S.cairnloop_delivery_jobs (message_id, conversation_id, template_id,
         bulk_envelope_id, args, state, scheduled_at)
  SELECT m.id, $1::bigint, $2, $4::uuid, jsonb_build_object('message_id', m.id,
         'conversation_id', $1::bigint, 'template_id', $2::text,
         'bulk_envelope_id', $4::uuid),
         CASE WHEN $5::int > 0 THEN 'scheduled' ELSE 'available' END,
         now() + make_interval(secs => $5::int)
  FROM msg m
  RETURNING id, message_id, state, scheduled_at
)
SELECT false AS duplicate, j.id AS job_id, j.message_id, j.state,
       to_char(j.scheduled_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS scheduled_at,
       NULL AS content, NULL AS status
FROM job j;
