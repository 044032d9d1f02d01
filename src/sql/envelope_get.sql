-- cl_envelope_get: one stored envelope (cl_envelope_get).
--
-- Parameters: $1 envelope id (canonical lowercase UUID).
-- Columns:    id, template_id, rendered_body, recipient_conversation_ids,
--             count, effective_cap, requested_by, requested_at, status,
--             refused_reason.
SELECT id, template_id, rendered_body,
       recipient_conversation_ids::text AS recipient_conversation_ids, count,
       effective_cap, requested_by,
       to_char(requested_at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS requested_at,
       status, refused_reason
FROM @S.cairnloop_outbound_bulk_envelopes
WHERE id = $1::uuid;
