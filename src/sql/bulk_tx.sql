-- cl_bulk_tx: a bulk submit that inserts optimistically: with an auditor
-- (the statement that opens its transaction), or without one when the
-- envelope id is fresh and random, so no stored envelope can have it
-- (cl_bulk_trigger).
--
-- Parameters: those of cl_bulk: $1 envelope id, $2 template_id,
--             $3 rendered_body, $4 conversation ids (bigint[] text),
--             $5 effective cap, $6 requested_by, $7 schedule_in.
-- Columns:    those of cl_bulk, the stored envelope's all NULL: id,
--             template_id, rendered_body, recipient_conversation_ids, count,
--             effective_cap, requested_by, requested_at, status,
--             refused_reason, submitted_at, message_ids,
--             message_conversation_ids, job_ids, job_message_ids, scheduled_at.
--
-- Fails, rather than quietly writes nothing, on a stored envelope id
-- (23505, then cl_prior reads it; the messages' key raises the same for a
-- recipient that trigger() already sent under this envelope id) and on an
-- unknown conversation (23503):
-- the auditor path can then commit without looking at the rows first.
-- cl_bulk writes the same rows: keep the two in step.
WITH env AS (
  INSERT INTO @S.cairnloop_outbound_bulk_envelopes (id, template_id, rendered_body,
         recipient_conversation_ids, count, effective_cap, requested_by, requested_at,
         status, inserted_at, updated_at)
  VALUES ($1::uuid, $2, $3, $4::bigint[], cardinality($4::bigint[]), $5::int, $6,
          now() AT TIME ZONE 'UTC', 'submitted', now() AT TIME ZONE 'UTC',
          now() AT TIME ZONE 'UTC')
  RETURNING requested_at,
         jsonb_build_object('template_id', $2::text, 'status', 'pending',
                            'bulk_envelope_id', $1::uuid) AS metadata
), msgs AS (
  INSERT INTO @S.cairnloop_messages (conversation_id, content, role, metadata, template_id,
         bulk_envelope_id)
  SELECT t.cid, $3, 'system_outbound', env.metadata, $2, $1::uuid
  FROM env, unnest($4::bigint[]) AS t(cid)
  RETURNING id, conversation_id
), jobs AS (
  INSERT INTO @S.cairnloop_delivery_jobs (message_id, conversation_id, template_id,
         bulk_envelope_id, args, state, scheduled_at)
  SELECT m.id, m.conversation_id, $2, $1::uuid, jsonb_build_object('message_id', m.id,
         'conversation_id', m.conversation_id, 'template_id', $2::text,
         'bulk_envelope_id', $1::uuid),
         CASE WHEN $7::int > 0 THEN 'scheduled' ELSE 'available' END,
         now() + make_interval(secs => $7::int)
  FROM msgs m
  RETURNING id, message_id
)
SELECT NULL AS id, NULL AS template_id, NULL AS rendered_body,
       NULL AS recipient_conversation_ids, NULL AS count, NULL AS effective_cap,
       NULL AS requested_by, NULL AS requested_at, NULL AS status, NULL AS refused_reason,
       (SELECT to_char(requested_at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') FROM env) AS submitted_at,
       (SELECT array_agg(id)::text FROM msgs) AS message_ids,
       (SELECT array_agg(conversation_id)::text FROM msgs) AS message_conversation_ids,
       (SELECT array_agg(id)::text FROM jobs) AS job_ids,
       (SELECT array_agg(message_id)::text FROM jobs) AS job_message_ids,
       to_char((now() + make_interval(secs => $7::int)) AT TIME ZONE 'UTC',
               'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS scheduled_at;
