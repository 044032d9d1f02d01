-- cl_refuse: stores a bulk attempt refused over the cap, on its own
-- (cl_bulk_trigger).  Fail closed: the refusal is recorded too.
--
-- Parameters: $1 envelope id, $2 template_id, $3 rendered_body,
--             $4 conversation ids (bigint[] text), $5 effective cap,
--             $6 requested_by (NULL: none), $7 refused_reason.
-- Columns:    the envelope with id $1 as it stands after the statement (id,
--             template_id, rendered_body, recipient_conversation_ids, count,
--             effective_cap, requested_by, requested_at, status,
--             refused_reason): the refusal just stored, or the envelope
--             stored before; then inserted (1 when the refusal was stored,
--             0 when the stored envelope stands).
WITH prior AS (
  SELECT * FROM @S.cairnloop_outbound_bulk_envelopes WHERE id = $1::uuid
), ins AS (
  INSERT INTO @S.cairnloop_outbound_bulk_envelopes (id, template_id, rendered_body,
         recipient_conversation_ids, count, effective_cap, requested_by, requested_at,
         status, refused_reason, inserted_at, updated_at)
  SELECT $1::uuid, $2, $3, $4::bigint[], cardinality($4::bigint[]), $5::int, $6,
         now() AT TIME ZONE 'UTC', 'refused_cap_exceeded', $7,
         now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'
  WHERE NOT EXISTS (SELECT 1 FROM prior)
  RETURNING *
), env AS (
  SELECT * FROM prior UNION ALL SELECT * FROM ins
)
SELECT p.id, p.template_id, p.rendered_body,
       p.recipient_conversation_ids::text AS recipient_conversation_ids, p.count,
       p.effective_cap, p.requested_by,
       to_char(p.requested_at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS requested_at,
       p.status, p.refused_reason,
       (SELECT count(*) FROM ins) AS inserted
FROM (SELECT 1) d LEFT JOIN env p ON true;
