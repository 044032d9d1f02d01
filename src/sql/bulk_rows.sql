-- cl_bulk_rows: the stored rows of a replayed envelope, in cohort order,
-- found through the jobs' unique key (cl_bulk_trigger).
--
-- Parameters: $1 envelope id, $2 conversation ids (bigint[] text), $3 template_id.
-- Columns:    job_id, message_id, state, scheduled_at, content, status (of
--             the message), conversation_id.
SELECT j.id AS job_id, j.message_id, j.state,
       to_char(j.scheduled_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS scheduled_at,
       m.content, m.metadata->>'status' AS status, t.cid AS conversation_id
FROM unnest($2::bigint[]) WITH ORDINALITY AS t(cid, ord)
JOIN @S.cairnloop_delivery_jobs j
  ON j.conversation_id = t.cid AND j.template_id = $3 AND j.bulk_envelope_id = $1::uuid
JOIN @S.cairnloop_messages m ON m.id = j.message_id
ORDER BY t.ord;
