-- cl_ops_targets: the jobs a retry or cancel would change, counted before
-- the audited change runs (cl_retry, cl_cancel with an auditor, which is
-- told the count).
--
-- Parameters: $1 'retry' or 'cancel', $2 job ids (bigint[] text; NULL:
--             none), $3 envelope id (NULL: none), $4 all discarded jobs
--             (retry only).
-- Columns:    ids (bigint[] text, ascending), count.
--
-- Exactly one selector is set (C checks it).  Retry takes discarded and
-- retryable jobs; cancel takes those not started: available, scheduled
-- and retryable (a job executing right now finishes).  cl_ops_retry and
-- cl_ops_cancel select the same way: keep them in step.
SELECT coalesce(array_agg(j.id ORDER BY j.id)::text, '{}') AS ids, count(*) AS count
FROM @S.cairnloop_delivery_jobs j
WHERE j.state = ANY (CASE WHEN $1::text = 'retry' THEN ARRAY['discarded', 'retryable']
                          ELSE ARRAY['available', 'scheduled', 'retryable'] END)
  AND (j.id = ANY ($2::bigint[])
       OR j.message_id IN (SELECT m.id FROM @S.cairnloop_messages m
                           WHERE m.bulk_envelope_id = $3::uuid)
       OR ($4::boolean AND j.discarded_at IS NOT NULL AND j.state = 'discarded'));
