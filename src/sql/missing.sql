-- cl_missing: after a foreign-key failure, the id to name in the error.
--
-- Parameters: $1 conversation ids (bigint[] text).
-- Columns:    conversation_id: the first id, in cohort order, naming no
--             conversation (no row when they all exist by now).
SELECT t.cid AS conversation_id
FROM unnest($1::bigint[]) WITH ORDINALITY AS t(cid, ord)
WHERE NOT EXISTS (SELECT 1 FROM @S.cairnloop_conversations c WHERE c.id = t.cid)
ORDER BY t.ord
LIMIT 1;
