-- cl_envelopes: stored envelopes, newest first (cl_envelopes_list).
--
-- Parameters: $1 template_id (NULL: any), $2 status (NULL: any),
--             $3 limit (C checks it against CL_ENVELOPES_MAX_LIMIT).
-- Columns:    those of cl_envelope_get: id, template_id, rendered_body,
--             recipient_conversation_ids, count, effective_cap,
--             requested_by, requested_at, status, refused_reason.
--
-- The id breaks ties between equal requested_at, so the order is stable.
SELECT id, template_id, rendered_body,
       recipient_conversation_ids::text AS recipient_conversation_ids, count,
       effective_cap, requested_by,
       to_char(requested_at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS requested_at,
       status, refused_reason
FROM @S.cairnloop_outbound_bulk_envelopes
WHERE ($1::text IS NULL OR template_id = $1::text)
  AND ($2::text IS NULL OR status = $2::text)
ORDER BY requested_at DESC, id DESC
LIMIT $3::int;
