-- Conversations are host-owned in real deployments; this table makes the
-- engine usable on its own.  Outbound messages reference it.
CREATE TABLE cairnloop_conversations (
  id bigserial PRIMARY KEY,
  status text NOT NULL DEFAULT 'open',
  subject text,
  customer_ref text,
  inserted_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
