-- cl_ops_stats: jobs per state, the oldest due job's age and whether
-- delivery is paused (cl_stats).
--
-- Parameters: $1 envelope id (NULL: every job).
-- Columns:    state and count, one row per state that has jobs (one row
--             with both NULL when there are none), then on every row
--             oldest_due_age_seconds (how long the longest-waiting due job
--             has waited, whole seconds; 0 when none waits) and paused.
--
-- Counting by state reads every job (of the envelope): an operator's
-- command, kept cheap by retention.  The oldest due job is the head of
-- the index of unfinished jobs.
WITH mine AS (
  SELECT m.id FROM @S.cairnloop_messages m WHERE m.bulk_envelope_id = $1::uuid
), counts AS (
  SELECT j.state, count(*) AS count
  FROM @S.cairnloop_delivery_jobs j
  WHERE $1::uuid IS NULL OR j.message_id IN (SELECT id FROM mine)
  GROUP BY j.state
), oldest AS (
  SELECT coalesce(floor(extract(epoch FROM now() - min(j.scheduled_at))), 0)::bigint AS age
  FROM @S.cairnloop_delivery_jobs j
  WHERE j.completed_at IS NULL AND j.discarded_at IS NULL AND j.state <> 'executing'
    AND j.scheduled_at <= now()
    AND ($1::uuid IS NULL OR j.message_id IN (SELECT id FROM mine))
)
SELECT c.state, c.count, o.age AS oldest_due_age_seconds,
       EXISTS (SELECT 1 FROM @S.cairnloop_queue_control WHERE paused) AS paused
FROM oldest o LEFT JOIN counts c ON true;
