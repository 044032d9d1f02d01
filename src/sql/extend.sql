-- cl_extend: renews the lease of jobs this worker still holds
-- (cl_work_run, while deliveries run longer than half the lease).
--
-- Parameters: $1 the job ids (a bigint[] text), $2 the lease owner (this
--             worker), $3 lease seconds.
-- Columns:    extended (jobs whose lease was renewed: fewer than asked
--             when a lease had already passed to another worker).
--
-- lease_expires_at is in no index, so this is a HOT update.
WITH j AS (
  UPDATE @S.cairnloop_delivery_jobs SET lease_expires_at = now() + make_interval(secs => $3::int)
  WHERE id = ANY ($1::bigint[]) AND state = 'executing' AND lease_owner = $2
  RETURNING 1
)
SELECT count(*) AS extended FROM j;
