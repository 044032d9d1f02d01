-- cl_next_due: how long an idle worker may sleep (cl_work_wait).
--
-- Parameters: $1 the schema's job channel.
-- Columns:    due_in_ms: milliseconds until the next job comes due or the
--             next lease expires (<= 0: one is due now; NULL: nothing is
--             pending, or delivery is paused); listening: whether this
--             session already LISTENs on the channel; paused: whether
--             delivery is paused (cl_pause).
--
-- The first waiting job is the head of the index of unfinished jobs (past
-- the ones being delivered); the leases are read only when nothing is due
-- (CASE evaluates the subquery lazily), and then the jobs due by now are
-- exactly the ones in flight.  While paused nothing is due at all, expired
-- leases included: the worker sleeps until the fallback poll or until
-- cl_resume notifies the channel.
SELECT CASE WHEN w.paused THEN NULL ELSE
       ceil(extract(epoch FROM CASE WHEN w.at <= now() THEN w.at ELSE least(w.at,
         (SELECT min(lease_expires_at) FROM @S.cairnloop_delivery_jobs
          WHERE completed_at IS NULL AND discarded_at IS NULL AND scheduled_at <= now()
            AND state = 'executing')) END
       - clock_timestamp()) * 1000)::bigint END AS due_in_ms,
       $1 IN (SELECT pg_listening_channels()) AS listening,
       w.paused
FROM (SELECT (SELECT scheduled_at FROM @S.cairnloop_delivery_jobs
              WHERE completed_at IS NULL AND discarded_at IS NULL AND state <> 'executing'
              ORDER BY scheduled_at, id LIMIT 1) AS at,
             EXISTS (SELECT 1 FROM @S.cairnloop_queue_control WHERE paused) AS paused) w;
