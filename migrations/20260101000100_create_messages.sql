-- Messages of a conversation.  Ours have role 'system_outbound' and
-- metadata {template_id, status: pending|sent|failed, bulk_envelope_id}.
CREATE TABLE cairnloop_messages (
  id bigserial PRIMARY KEY,
  conversation_id bigint NOT NULL REFERENCES cairnloop_conversations (id),
  content text NOT NULL,
  role text NOT NULL,
  metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
  inserted_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX cairnloop_messages_conversation_id_index
  ON cairnloop_messages (conversation_id);
