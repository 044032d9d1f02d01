-- cl_bulk: a bulk submit without an auditor, when the caller chose the
-- envelope id (cl_bulk_trigger).
--
-- Parameters: $1 envelope id, $2 template_id, $3 rendered_body,
--             $4 conversation ids (bigint[] text), $5 effective cap,
--             $6 requested_by (NULL: none), $7 schedule_in (seconds).
-- Columns:    the stored envelope with id $1, if there is one (id,
--             template_id, rendered_body, recipient_conversation_ids, count,
--             effective_cap, requested_by, requested_at, status,
--             refused_reason; all NULL otherwise), then what the submit
--             wrote: submitted_at (the new envelope's requested_at),
--             message_ids with message_conversation_ids, job_ids with
--             job_message_ids (each pair in insert order, which C checks
--             against the cohort), scheduled_at.
--
-- A stored envelope with the same id means nothing is written: the caller
-- decides replay or conflict from its columns.  A missing conversation
-- fails the statement through the foreign key, atomically: the per-row
-- existence check is the key's, paid once.  The number of round trips does
-- not grow with the cohort: every row goes in through unnest.
-- cl_bulk_tx writes the same rows: keep the two in step.
WITH prior AS (
  SELECT * FROM @S.cairnloop_outbound_bulk_envelopes WHERE id = $1::uuid
), env AS (
  INSERT INTO @S.cairnloop_outbound_bulk_envelopes (id, template_id, rendered_body,
         recipient_conversation_ids, count, effective_cap, requested_by, requested_at,
         status, inserted_at, updated_at)
  SELECT $1::uuid, $2, $3, $4::bigint[], cardinality($4::bigint[]), $5::int, $6,
         now() AT TIME ZONE 'UTC', 'submitted', now() AT TIME ZONE 'UTC',
         now() AT TIME ZONE 'UTC'
  WHERE NOT EXISTS (SELECT 1 FROM prior)
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
SELECT p.id, p.template_id, p.rendered_body,
       p.recipient_conversation_ids::text AS recipient_conversation_ids, p.count,
       p.effective_cap, p.requested_by,
       to_char(p.requested_at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS requested_at,
       p.status, p.refused_reason,
       (SELECT to_char(requested_at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') FROM env) AS submitted_at,
       (SELECT array_agg(id)::text FROM msgs) AS message_ids,
       (SELECT array_agg(conversation_id)::text FROM msgs) AS message_conversation_ids,
       (SELECT array_agg(id)::text FROM jobs) AS job_ids,
       (SELECT array_agg(message_id)::text FROM jobs) AS job_message_ids,
       to_char((now() + make_interval(secs => $7::int)) AT TIME ZONE 'UTC',
               'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS scheduled_at
FROM (SELECT 1) d LEFT JOIN prior p ON true;
