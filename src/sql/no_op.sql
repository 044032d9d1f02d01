-- cl_no_op: claims and completes due jobs in one step, without a notifier
-- (cl_work_batch).
--
-- Parameters: $1 limit, $2 max_attempts.
-- Columns:    completed (jobs completed), rescued (of them, jobs whose
--             lease had expired).
--
-- Without a notifier there is nothing to deliver, so the same jobs are
-- picked the same way as cl_claim's `due` (keep the two in step: nothing
-- while delivery is paused) and end
-- exactly as a claim followed by a no_op completion would leave them
-- (attempt + 1, attempted_at, completed_at, lease cleared, message sent),
-- each job row written once instead of twice, which doubles the rate.
WITH due AS (
  SELECT id, state = 'executing' AS rescued FROM @S.cairnloop_delivery_jobs
  WHERE completed_at IS NULL AND discarded_at IS NULL AND scheduled_at <= now()
    AND (state <> 'executing' OR lease_expires_at < now())
    AND NOT EXISTS (SELECT 1 FROM @S.cairnloop_queue_control WHERE paused)
  ORDER BY scheduled_at, id LIMIT $1::int FOR UPDATE SKIP LOCKED
), done AS (
  UPDATE @S.cairnloop_delivery_jobs j
  SET state = 'completed', attempt = j.attempt + 1, max_attempts = $2::int,
      attempted_at = now(), completed_at = now(), lease_owner = NULL,
      lease_expires_at = NULL
  WHERE j.id = ANY (ARRAY(SELECT id FROM due))
  RETURNING j.message_id
), m AS (
  UPDATE @S.cairnloop_messages m
  SET metadata = jsonb_set(m.metadata, '{status}', '"sent"'::jsonb), updated_at = now()
  FROM done WHERE m.id = done.message_id
)
SELECT count(*) AS completed, (SELECT count(*) FROM due WHERE rescued) AS rescued
FROM done;
