-- The durable audit row per bulk outbound action: one row per attempt,
-- submitted or refused, snapshotting template, rendered body, cohort and the
-- cap of the moment.  Column for column the upstream migration
-- (priv/repo/migrations/20260527063000_add_outbound_bulk_envelopes.exs):
-- :binary_id -> uuid, :string -> varchar(255), :utc_datetime_usec ->
-- timestamp, timestamps() -> timestamp(0) NOT NULL, plus CHECK constraints
-- for what the changeset validated.
--
-- No FK from recipient_conversation_ids to cairnloop_conversations: it is an
-- array, and the join is audit-time only.
CREATE TABLE cairnloop_outbound_bulk_envelopes (
  id uuid PRIMARY KEY,
  template_id varchar(255) NOT NULL,
  rendered_body text NOT NULL,
  recipient_conversation_ids bigint[] NOT NULL,
  count integer NOT NULL,
  effective_cap integer NOT NULL,
  requested_by varchar(255),
  requested_at timestamp NOT NULL,
  status varchar(255) NOT NULL DEFAULT 'submitted',
  refused_reason varchar(255),
  inserted_at timestamp(0) NOT NULL,
  updated_at timestamp(0) NOT NULL,
  CONSTRAINT cairnloop_outbound_bulk_envelopes_count_positive CHECK (count > 0),
  CONSTRAINT cairnloop_outbound_bulk_envelopes_effective_cap_positive CHECK (effective_cap > 0),
  CONSTRAINT cairnloop_outbound_bulk_envelopes_status_enum
    CHECK (status IN ('submitted', 'refused_cap_exceeded'))
);

CREATE INDEX cairnloop_outbound_bulk_envelopes_requested_at_index
  ON cairnloop_outbound_bulk_envelopes (requested_at);
CREATE INDEX cairnloop_outbound_bulk_envelopes_template_id_index
  ON cairnloop_outbound_bulk_envelopes (template_id);
