-- cl_ops_prune: deletes finished jobs past their retention, oldest first,
-- at most $3 of each kind per call (cl_prune, and the workers' own
-- retention pass in cl_work_batch).
--
-- Parameters: $1 completed jobs older than this many seconds (NULL: keep
--             them), $2 discarded and cancelled jobs older than this many
--             seconds (NULL: keep them), $3 the limit per kind.
-- Columns:    deleted.
--
-- Found through the finishing-time indexes (migration 20260701000100).
-- SKIP LOCKED: a row someone else holds is left for the next pass, so
-- retention never waits on delivery or on another worker's pass.  Only
-- jobs go: messages and envelopes are the audit record, and the
-- messages keep the dedup key.
WITH c AS (
  SELECT j.id FROM @S.cairnloop_delivery_jobs j
  WHERE j.completed_at < now() - make_interval(secs => $1::float8) AND j.state = 'completed'
  ORDER BY j.completed_at LIMIT $3::int FOR UPDATE SKIP LOCKED
), d AS (
  SELECT j.id FROM @S.cairnloop_delivery_jobs j
  WHERE j.discarded_at < now() - make_interval(secs => $2::float8)
    AND j.state IN ('discarded', 'cancelled')
  ORDER BY j.discarded_at LIMIT $3::int FOR UPDATE SKIP LOCKED
), gone AS (
  DELETE FROM @S.cairnloop_delivery_jobs j
  WHERE j.id = ANY (ARRAY(SELECT id FROM c UNION ALL SELECT id FROM d))
  RETURNING j.id
)
SELECT count(*) AS deleted FROM gone;
