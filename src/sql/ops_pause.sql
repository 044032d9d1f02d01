-- cl_ops_pause: pauses or resumes delivery (cl_pause, cl_resume).
--
-- Parameters: $1 paused (boolean), $2 the schema's job channel.
-- Columns:    paused (as stored now).
--
-- Workers check the flag in every claim (claim.sql, no_op.sql) and sleep
-- while it is set (next_due.sql).  Resuming notifies the job channel, at
-- commit, so idle workers claim at once instead of at their next poll.
WITH s AS (
  INSERT INTO @S.cairnloop_queue_control (id, paused, updated_at)
  VALUES (true, $1::boolean, now())
  ON CONFLICT (id) DO UPDATE SET paused = EXCLUDED.paused, updated_at = EXCLUDED.updated_at
  RETURNING paused
)
SELECT s.paused
FROM s LEFT JOIN LATERAL (SELECT pg_notify($2, '') WHERE NOT s.paused) n ON true;
