-- cl_bulk_rows: the stored rows of a replayed envelope, in cohort order,
-- found through the messages' key (cl_bulk_trigger).
--
-- Parameters: $1 envelope id, $2 conversation ids (bigint[] text), $3 template_id.
-- Columns:    job_id, message_id, state, scheduled_at, content, status (of
--             the message), conversation_id.  A job pruned since (finished,
--             then deleted by retention) leaves job_id, state and
--             scheduled_at NULL: the message stays the record.
SELECT j.id AS job_id, m.id AS message_id, j.state,
       to_char(j.scheduled_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS scheduled_at,
       m.content, m.metadata->>'status' AS status, t.cid AS conversation_id
FROM unnest($2::bigint[]) WITH ORDINALITY AS t(cid, ord)
JOIN @S.cairnloop_messages m
  ON m.conversation_id = t.cid AND m.template_id = $3 AND m.bulk_envelope_id = $1::uuid
LEFT JOIN @S.cairnloop_delivery_jobs j ON j.message_id = m.id
ORDER BY t.ord;
