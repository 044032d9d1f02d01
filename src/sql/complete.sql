-- cl_complete: records the outcomes of a delivered batch (cl_work_batch).
--
-- Parameters: $1 the batch's job ids, $2 those whose delivery failed,
--             $3 those handed back unstarted (each a bigint[] text),
--             $4 the failures' reasons as a JSON object keyed by job id,
--             $5 the lease owner (this worker), $6 the backoff base in
--             seconds, $7 the failed jobs to discard now (a notifier's
--             verdict, e.g. HTTP 410; a subset of $2), $8 the seconds a
--             failed job must wait at least (e.g. Retry-After), a JSON
--             object keyed by job id.
-- Columns:    retried, discarded, recorded (jobs touched in total; fewer
--             than the batch when leases passed to another worker).
--
-- Every job neither failed nor handed back was sent: it completes and its
-- message is marked sent.  A failed one marks its message failed, appends
-- {attempt, at, error} to the job's errors and becomes retryable after the
-- backoff, or discarded once attempt reaches max_attempts.  A job handed
-- back gets its lease cleared and its attempt restored; its message is
-- untouched.
--
-- Outcomes are told apart by membership (= ANY over arrays that are empty
-- in the common case) and reasons looked up by key, never joined from
-- unnest(): a join's plan rests on row estimates, and with stale
-- statistics ("no job is executing") the planner may pick a nested loop
-- that rescans the whole array per job, quadratic in the batch.
--
-- Backoff after failed attempt n: d = min(base * 2^n, 3600) seconds, plus
-- uniform jitter in [0, d/10): 2 s, 4 s, 8 s ... up to an hour (the
-- longest backoff, defined here only), the jitter keeping jobs that failed
-- together from retrying in lockstep.  A job with a wait in $8 retries no
-- sooner than that wait either.
--
-- Only rows this worker still leases are touched: if the lease expired and
-- another worker rescued the job, that worker owns its outcome now.  (Its
-- own claims cannot overlap: a worker completes a batch, or gives up on
-- it, before it claims the next.)  The statement is therefore also safe to
-- repeat after a lost reply.
--
-- Row writes: a completed or discarded job leaves the index of unfinished
-- jobs (new entries in the others); a retry moves within it; a job handed
-- back changes no indexed column (HOT); the message's status is not
-- indexed either.
WITH j AS (
  UPDATE @S.cairnloop_delivery_jobs j SET
    state = CASE
      WHEN j.id = ANY ($3::bigint[]) THEN
        CASE WHEN j.attempt > 1 THEN 'retryable' ELSE 'available' END
      WHEN j.id = ANY ($2::bigint[]) THEN
        CASE WHEN j.attempt >= j.max_attempts OR j.id = ANY ($7::bigint[]) THEN 'discarded'
             ELSE 'retryable' END
      ELSE 'completed' END,
    attempt = CASE WHEN j.id = ANY ($3::bigint[]) THEN j.attempt - 1 ELSE j.attempt END,
    attempted_at = CASE WHEN j.id = ANY ($3::bigint[]) AND j.attempt = 1 THEN NULL
                        ELSE j.attempted_at END,
    completed_at = CASE WHEN j.id = ANY ($2::bigint[]) OR j.id = ANY ($3::bigint[]) THEN NULL
                        ELSE now() END,
    discarded_at = CASE WHEN j.id = ANY ($2::bigint[])
                         AND (j.attempt >= j.max_attempts OR j.id = ANY ($7::bigint[]))
                        THEN now() END,
    scheduled_at = CASE WHEN j.id = ANY ($2::bigint[]) AND j.attempt < j.max_attempts
                         AND NOT j.id = ANY ($7::bigint[])
      THEN now() + make_interval(secs => greatest(
             least($6::float8 * power(2, j.attempt), 3600) * (1 + 0.1 * random()),
             coalesce(($8::jsonb ->> j.id::text)::float8, 0)))
      ELSE j.scheduled_at END,
    errors = CASE WHEN j.id = ANY ($2::bigint[]) THEN j.errors || jsonb_build_array(
      jsonb_build_object('attempt', j.attempt, 'at', now(), 'error', $4::jsonb ->> j.id::text))
      ELSE j.errors END,
    lease_owner = NULL, lease_expires_at = NULL
  WHERE j.id = ANY ($1::bigint[]) AND j.state = 'executing' AND j.lease_owner = $5
  RETURNING j.message_id, j.state, j.id = ANY ($2::bigint[]) AS failed,
            j.id = ANY ($3::bigint[]) AS released
), m AS (
  UPDATE @S.cairnloop_messages m
  SET metadata = jsonb_set(m.metadata, '{status}',
        CASE WHEN j.failed THEN '"failed"'::jsonb ELSE '"sent"'::jsonb END),
      updated_at = now()
  FROM j WHERE m.id = j.message_id AND NOT j.released
)
SELECT count(*) FILTER (WHERE state = 'retryable' AND failed) AS retried,
       count(*) FILTER (WHERE state = 'discarded') AS discarded,
       count(*) AS recorded
FROM j;
