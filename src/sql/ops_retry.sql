-- cl_ops_retry: discarded and retryable jobs back to available, due now,
-- with every attempt allowed again; their messages pending again
-- (cl_retry).
--
-- Parameters: $1 job ids (bigint[] text; NULL: none), $2 envelope id
--             (NULL: none), $3 all discarded jobs, $4 the count the
--             auditor was told (NULL without an auditor).
-- Columns:    retried.
--
-- The selection is cl_ops_targets'.  Rows are locked (FOR UPDATE) and the
-- state re-checked on the locked row, so a job a worker claimed meanwhile
-- is left alone; with $4 set, cairnloop_expect_count then fails the
-- statement (serialization_failure) and C counts again.  The job keeps its
-- errors as history; attempt restarts at 0.  Back in the index of
-- unfinished jobs, workers claim it like a new one.
WITH target AS (
  SELECT j.id FROM @S.cairnloop_delivery_jobs j
  WHERE j.state IN ('discarded', 'retryable')
    AND (j.id = ANY ($1::bigint[])
         OR j.message_id IN (SELECT m.id FROM @S.cairnloop_messages m
                             WHERE m.bulk_envelope_id = $2::uuid)
         OR ($3::boolean AND j.discarded_at IS NOT NULL AND j.state = 'discarded'))
  FOR UPDATE
), job AS (
  UPDATE @S.cairnloop_delivery_jobs j
  SET state = 'available', attempt = 0, scheduled_at = now(), completed_at = NULL,
      discarded_at = NULL, lease_owner = NULL, lease_expires_at = NULL
  WHERE j.id = ANY (ARRAY(SELECT id FROM target))
  RETURNING j.message_id
), msg AS (
  UPDATE @S.cairnloop_messages m
  SET metadata = jsonb_set(m.metadata, '{status}', '"pending"'::jsonb), updated_at = now()
  FROM job WHERE m.id = job.message_id
)
SELECT @S.cairnloop_expect_count(count(*), $4::bigint) AS retried FROM job;
