-- The durable delivery queue.  One job per outbound message.  At most one
-- job per (conversation, template, envelope), a missing envelope id being a
-- value of its own (NULLS NOT DISTINCT), as upstream's unique job keys.
-- No FK to the envelope table: trigger's bulk_envelope_id is a free
-- correlation key.
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
  CONSTRAINT cairnloop_delivery_jobs_unique_recipient
    UNIQUE NULLS NOT DISTINCT (conversation_id, template_id, bulk_envelope_id)
);

-- Workers claim due jobs in scheduled order; the partial index keeps the
-- claim cheap however many completed jobs accumulate.
CREATE INDEX cairnloop_delivery_jobs_due_index
  ON cairnloop_delivery_jobs (scheduled_at, id)
  WHERE state IN ('available', 'scheduled', 'retryable');
CREATE INDEX cairnloop_delivery_jobs_lease_index
  ON cairnloop_delivery_jobs (lease_expires_at)
  WHERE state = 'executing';
CREATE INDEX cairnloop_delivery_jobs_message_id_index
  ON cairnloop_delivery_jobs (message_id);
