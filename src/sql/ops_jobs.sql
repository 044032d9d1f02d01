-- cl_ops_jobs: delivery jobs, newest first, for operators (cl_jobs).
--
-- Parameters: $1 state (NULL: any), $2 envelope id (NULL: any),
--             $3 template_id (NULL: any), $4 limit (C checks it against
--             CL_JOBS_MAX_LIMIT).
-- Columns:    id, state, scheduled_at, message_id, conversation_id,
--             template_id, bulk_envelope_id, attempt, max_attempts,
--             attempted_at, finished_at (completed_at, or discarded_at for
--             discarded and cancelled jobs), inserted_at, last_error (the
--             reason of the latest failed attempt).
--
-- An envelope's jobs are found through its messages (both indexed), not
-- by a scan of the jobs' own copy of the envelope id.
SELECT j.id, j.state,
       to_char(j.scheduled_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS scheduled_at,
       j.message_id, j.conversation_id, j.template_id,
       j.bulk_envelope_id::text AS bulk_envelope_id, j.attempt, j.max_attempts,
       to_char(j.attempted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS attempted_at,
       to_char(coalesce(j.completed_at, j.discarded_at) AT TIME ZONE 'UTC',
               'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS finished_at,
       to_char(j.inserted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS inserted_at,
       j.errors -> -1 ->> 'error' AS last_error
FROM @S.cairnloop_delivery_jobs j
WHERE ($1::text IS NULL OR j.state = $1::text)
  AND ($3::text IS NULL OR j.template_id = $3::text)
  AND ($2::uuid IS NULL OR j.message_id IN (
        SELECT m.id FROM @S.cairnloop_messages m WHERE m.bulk_envelope_id = $2::uuid))
ORDER BY j.id DESC
LIMIT $4::int;
