-- The at-most-once key (conversation, template, envelope; a missing
-- envelope id a value of its own) moves from the delivery jobs to the
-- messages.  Jobs are finished work that retention deletes (src/ops.c);
-- messages are the audit record the engine never deletes.  With the key on
-- the jobs, deleting a completed job re-opened it, and the same trigger
-- stored and sent a second message.
--
-- Real columns rather than a unique index over metadata expressions:
-- delivery rewrites metadata (the message's status) once per delivery, and
-- that update is HOT only while no index covers metadata (migration
-- 20260527066000).  An expression index on metadata->>'template_id' would
-- make every status update write an entry in every index of the table.
-- template_id and bulk_envelope_id never change after the insert, so
-- indexing them costs the insert alone.  The metadata keeps both keys as
-- before: they are part of the message as hosts read it.
--
-- The key covers only outbound messages (the partial predicate): a host's
-- own messages in the same table leave the columns NULL and are never
-- constrained.
ALTER TABLE cairnloop_messages
  ADD COLUMN template_id varchar(255),
  ADD COLUMN bulk_envelope_id uuid;

-- Existing outbound messages take their key from their metadata.  Where a
-- key is held by more than one message (a completed job deleted by hand,
-- then the same trigger sent again: the bug this fixes), only one of them
-- holds it: the one whose job still exists, else the newest.  The others
-- stay as the record of what was sent, with their metadata untouched.
WITH keyed AS (
  SELECT m.id, m.conversation_id, m.metadata->>'template_id' AS template_id,
         (m.metadata->>'bulk_envelope_id')::uuid AS bulk_envelope_id,
         EXISTS (SELECT 1 FROM cairnloop_delivery_jobs j WHERE j.message_id = m.id) AS has_job
  FROM cairnloop_messages m
  WHERE m.role = 'system_outbound' AND m.metadata->>'template_id' IS NOT NULL
), holder AS (
  SELECT DISTINCT ON (conversation_id, template_id, bulk_envelope_id)
         id, template_id, bulk_envelope_id
  FROM keyed
  ORDER BY conversation_id, template_id, bulk_envelope_id, has_job DESC, id DESC
)
UPDATE cairnloop_messages m
SET template_id = h.template_id, bulk_envelope_id = h.bulk_envelope_id
FROM holder h
WHERE m.id = h.id;

-- The key.  The insert statements (src/sql/trigger.sql, bulk.sql,
-- bulk_tx.sql) fail on it with a unique violation, after which the
-- existing rows are read through it (existing.sql, bulk_rows.sql).
CREATE UNIQUE INDEX cairnloop_messages_outbound_key_index
  ON cairnloop_messages (conversation_id, template_id, bulk_envelope_id) NULLS NOT DISTINCT
  WHERE template_id IS NOT NULL;

-- An envelope's messages, and through them its jobs (job by message_id has
-- its index): what cancel, retry, stats and jobs by envelope read, and the
-- per-envelope progress of `cairnloop envelopes`.  Bulk messages only.
CREATE INDEX cairnloop_messages_bulk_envelope_id_index
  ON cairnloop_messages (bulk_envelope_id)
  WHERE bulk_envelope_id IS NOT NULL;

-- The jobs' own copy of the key is gone: it guarded nothing the messages
-- do not, and cost an index entry per insert and per finished job.
ALTER TABLE cairnloop_delivery_jobs
  DROP CONSTRAINT cairnloop_delivery_jobs_unique_recipient;
