-- The durable delivery queue.  One job per outbound message.  At most one
-- job per (conversation, template, envelope), a missing envelope id being a
-- value of its own (NULLS NOT DISTINCT), as upstream's unique job keys.
-- No FK to the envelope table: trigger's bulk_envelope_id is a free
-- correlation key.
--
-- Shaped for the delivery lane's writes (src/queue.c).  One partial index
-- holds every job not finished yet, keyed by when it was due: workers find
-- due jobs and expired leases in it alike.  Its key and predicate use only
-- columns a claim leaves alone (scheduled_at, id, completed_at,
-- discarded_at), so a claim, which sets state, attempt and the lease, is a
-- HOT update: a new row version on the same page and no index entry
-- anywhere.  Only finishing a job (or scheduling a retry) writes index
-- entries.  HOT needs room on the page for the new version, and a batch
-- claims every job of a page at once: hence fillfactor 50.  The price is
-- space (rows are stored at most half a page full); the gain is about a
-- fifth of the server's work per delivered job.
CREATE TABLE cairnloop_delivery_jobs (
  id bigserial PRIMARY KEY,
  worker text NOT NULL DEFAULT 'outbound',
  message_id bigint NOT NULL REFERENCES cairnloop_messages (id),
  conversation_id bigint NOT NULL,
  template_id varchar(255) NOT NULL,
  bulk_envelope_id uuid,
  args jsonb NOT NULL,
  state text NOT NULL DEFAULT 'available',
  attempt integer NOT NULL DEFAULT 0,
  max_attempts integer NOT NULL DEFAULT 20,
  scheduled_at timestamptz NOT NULL DEFAULT now(),
  attempted_at timestamptz,
  completed_at timestamptz,
  discarded_at timestamptz,
  errors jsonb NOT NULL DEFAULT '[]'::jsonb,
  lease_owner text,
  lease_expires_at timestamptz,
  inserted_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT cairnloop_delivery_jobs_state_enum CHECK (state IN
    ('available', 'scheduled', 'executing', 'completed', 'retryable', 'discarded')),
  CONSTRAINT cairnloop_delivery_jobs_attempts CHECK (attempt >= 0 AND max_attempts > 0),
  -- A finished job, and only a finished one, carries its finishing time:
  -- the partial index below relies on it, and a hand-made update that
  -- requeues a job must clear completed_at / discarded_at as well.
  CONSTRAINT cairnloop_delivery_jobs_finished CHECK
    ((state IN ('completed', 'discarded')) = (completed_at IS NOT NULL OR discarded_at IS NOT NULL)),
  CONSTRAINT cairnloop_delivery_jobs_unique_recipient
    UNIQUE NULLS NOT DISTINCT (conversation_id, template_id, bulk_envelope_id)
) WITH (fillfactor = 50);

-- Jobs not finished (available, scheduled, retryable, executing) in due
-- order: workers claim from its head, the idle worker's wait reads the
-- next due time from it.  An executing job keeps the entry of the time it
-- was due; its lease is checked on the row.
CREATE INDEX cairnloop_delivery_jobs_pending_index
  ON cairnloop_delivery_jobs (scheduled_at, id)
  WHERE completed_at IS NULL AND discarded_at IS NULL;
-- For the foreign key: deleting a message (or changing its id) looks up
-- the jobs that reference it.  Nothing in the engine reads jobs by message.
CREATE INDEX cairnloop_delivery_jobs_message_id_index
  ON cairnloop_delivery_jobs (message_id);
