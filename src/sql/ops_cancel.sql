-- cl_ops_cancel: jobs not started yet (available, scheduled, retryable)
-- become cancelled, their messages cancelled (cl_cancel).
--
-- Parameters: $1 job ids (bigint[] text; NULL: none), $2 envelope id
--             (NULL: none), $3 the count the auditor was told (NULL
--             without an auditor).
-- Columns:    cancelled.
--
-- A job being delivered right now (executing) is not touched: its
-- delivery finishes and records its outcome.  The locks taken here make
-- claiming workers skip these rows (SKIP LOCKED) until the cancel
-- commits, after which the rows are finished.  A cancelled job carries
-- its finishing time in discarded_at (migration 20260701000100).
WITH target AS (
  SELECT j.id FROM @S.cairnloop_delivery_jobs j
  WHERE j.state IN ('available', 'scheduled', 'retryable')
    AND (j.id = ANY ($1::bigint[])
         OR j.message_id IN (SELECT m.id FROM @S.cairnloop_messages m
                             WHERE m.bulk_envelope_id = $2::uuid))
  FOR UPDATE
), job AS (
  UPDATE @S.cairnloop_delivery_jobs j
  SET state = 'cancelled', discarded_at = now(), lease_owner = NULL, lease_expires_at = NULL
  WHERE j.id = ANY (ARRAY(SELECT id FROM target))
  RETURNING j.message_id
), msg AS (
  UPDATE @S.cairnloop_messages m
  SET metadata = jsonb_set(m.metadata, '{status}', '"cancelled"'::jsonb), updated_at = now()
  FROM job WHERE m.id = job.message_id
)
SELECT @S.cairnloop_expect_count(count(*), $3::bigint) AS cancelled FROM job;
