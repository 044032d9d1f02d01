-- cl_envelope_progress: delivery progress of envelopes, by their messages'
-- status (cl_envelopes_progress, `cairnloop envelopes`).
--
-- Parameters: $1 envelope ids (uuid[] text).
-- Columns:    envelope_id, pending, sent, failed, cancelled: one row per
--             element of $1, in its order (zeros for an id without
--             messages), so C reads row i for id i.
--
-- Messages, not jobs: they stay when finished jobs are pruned.  Found
-- through the index of bulk messages by envelope.
SELECT e.id::text AS envelope_id,
       count(m.id) FILTER (WHERE m.metadata->>'status' = 'pending') AS pending,
       count(m.id) FILTER (WHERE m.metadata->>'status' = 'sent') AS sent,
       count(m.id) FILTER (WHERE m.metadata->>'status' = 'failed') AS failed,
       count(m.id) FILTER (WHERE m.metadata->>'status' = 'cancelled') AS cancelled
FROM unnest($1::uuid[]) WITH ORDINALITY AS e(id, ord)
LEFT JOIN @S.cairnloop_messages m ON m.bulk_envelope_id = e.id
GROUP BY e.ord, e.id
ORDER BY e.ord;
