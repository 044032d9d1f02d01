-- Rows of the shipped table auditor (lua/cairnloop/table_auditor.lua): one
-- per trigger or bulk_trigger, written inside the operation's transaction,
-- so an operation that rolls back leaves no audit row behind.  Metadata is
-- flattened into columns: outbound_trigger fills conversation_id and
-- template_id, bulk_outbound_trigger fills bulk_envelope_id, count and
-- template_id.
CREATE TABLE cairnloop_audit_events (
  id bigserial PRIMARY KEY,
  action text NOT NULL,
  actor text,
  conversation_id bigint,
  bulk_envelope_id uuid,
  template_id text NOT NULL,
  count integer,
  inserted_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- list_events reads newest first, optionally narrowed by action or envelope.
CREATE INDEX cairnloop_audit_events_inserted_at_index
  ON cairnloop_audit_events (inserted_at);
CREATE INDEX cairnloop_audit_events_bulk_envelope_id_index
  ON cairnloop_audit_events (bulk_envelope_id);
