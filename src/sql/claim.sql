-- cl_claim: claims up to $1 due jobs for delivery, with their message and
-- conversation (cl_work_batch, with a notifier).
--
-- Parameters: $1 limit, $2 lease owner (this worker), $3 lease seconds,
--             $4 max_attempts.
-- Columns:    job_id, message_id, conversation_id, attempt, template_id,
--             bulk_envelope_id, content, role, status (of the message),
--             conversation_status, subject, customer_ref, rescued (the
--             batch's count of rescued jobs, on every row).  One row per
--             claimed job, in the order they came due.
--
-- `due` (also in cl_no_op): due jobs and jobs whose lease expired (their
-- worker died), both found in the index of unfinished jobs in the order
-- they came due.  The index also holds the jobs other workers are
-- delivering right now: their rows are read and passed over (the lease is
-- checked on the row), a cost that grows with the jobs in flight, not with
-- the table.  SKIP LOCKED lets any number of workers claim side by side,
-- each getting different rows; the row lock re-checks the conditions, so a
-- job finished or claimed since the snapshot is skipped rather than
-- claimed twice.
--
-- While delivery is paused (cl_pause: a row of cairnloop_queue_control)
-- nothing is claimed, not even an expired lease: a one-row lookup per
-- claim, planned once as a one-time filter.
--
-- The claim changes no indexed column, so it is a HOT update (see
-- migration 20260527064000).  The claiming worker's max_attempts is
-- stamped on the job so the row shows the limit that governs it.
-- `= ANY(ARRAY(...))` keeps the update on the primary key whatever the
-- planner thinks of the table's size.
WITH due AS (
  SELECT id, state = 'executing' AS rescued FROM @S.cairnloop_delivery_jobs
  WHERE completed_at IS NULL AND discarded_at IS NULL AND scheduled_at <= now()
    AND (state <> 'executing' OR lease_expires_at < now())
    AND NOT EXISTS (SELECT 1 FROM @S.cairnloop_queue_control WHERE paused)
  ORDER BY scheduled_at, id LIMIT $1::int FOR UPDATE SKIP LOCKED
), claimed AS (
  UPDATE @S.cairnloop_delivery_jobs j
  SET state = 'executing', attempt = j.attempt + 1, max_attempts = $4::int,
      attempted_at = now(), lease_owner = $2,
      lease_expires_at = now() + make_interval(secs => $3::int)
  WHERE j.id = ANY (ARRAY(SELECT id FROM due))
  RETURNING j.id, j.message_id, j.conversation_id, j.attempt, j.template_id,
            j.bulk_envelope_id, j.scheduled_at
)
SELECT c.id AS job_id, c.message_id, c.conversation_id, c.attempt, c.template_id,
       c.bulk_envelope_id::text AS bulk_envelope_id, m.content, m.role,
       m.metadata->>'status' AS status,
       v.status AS conversation_status, v.subject, v.customer_ref,
       (SELECT count(*) FROM due WHERE rescued) AS rescued
FROM claimed c
JOIN @S.cairnloop_messages m ON m.id = c.message_id
JOIN @S.cairnloop_conversations v ON v.id = c.conversation_id
ORDER BY c.scheduled_at, c.id;
