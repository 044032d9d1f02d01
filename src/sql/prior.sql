-- cl_prior: the stored envelope whose id made cl_bulk_tx fail on the
-- unique key; nothing was written, the caller decides replay or conflict.
--
-- Parameters: $1 envelope id.
-- Columns:    id, template_id, rendered_body, recipient_conversation_ids,
--             count, effective_cap, requested_by, requested_at, status,
--             refused_reason (the first columns of cl_bulk, in its order).
SELECT p.id, p.template_id, p.rendered_body,
       p.recipient_conversation_ids::text AS recipient_conversation_ids, p.count,
       p.effective_cap, p.requested_by,
       to_char(p.requested_at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS requested_at,
       p.status, p.refused_reason
FROM @S.cairnloop_outbound_bulk_envelopes p
WHERE p.id = $1::uuid;
