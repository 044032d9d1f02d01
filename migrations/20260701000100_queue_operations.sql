-- Operating the queue (src/ops.c): cancelled jobs, pausing delivery, the
-- finishing-time indexes retention deletes by, and the audit rows of the
-- operator actions.

-- A cancelled job is finished like a completed or discarded one.  It
-- carries its finishing time in discarded_at (an operator discarded it
-- before delivery), so it leaves the index of unfinished jobs, and the
-- claim, wait and completion statements, which read only that index and
-- completed_at / discarded_at, pass it over without knowing the state.
ALTER TABLE cairnloop_delivery_jobs
  DROP CONSTRAINT cairnloop_delivery_jobs_state_enum,
  ADD CONSTRAINT cairnloop_delivery_jobs_state_enum CHECK (state IN
    ('available', 'scheduled', 'executing', 'completed', 'retryable', 'discarded', 'cancelled')),
  DROP CONSTRAINT cairnloop_delivery_jobs_finished,
  ADD CONSTRAINT cairnloop_delivery_jobs_finished CHECK
    ((state IN ('completed', 'discarded', 'cancelled'))
     = (completed_at IS NOT NULL OR discarded_at IS NOT NULL));

-- Retention deletes finished jobs oldest first, by state: completed ones by
-- completed_at, discarded and cancelled ones by discarded_at.  Without
-- these a worker's retention pass would read the whole table.  Both
-- columns already decide the partial index of unfinished jobs, so a claim
-- stays a HOT update; a job's completion, which already writes an entry in
-- every index, writes one more here (and one fewer since the jobs' copy of
-- the dedup key went, migration 20260701000000).
CREATE INDEX cairnloop_delivery_jobs_completed_at_index
  ON cairnloop_delivery_jobs (completed_at) WHERE completed_at IS NOT NULL;
CREATE INDEX cairnloop_delivery_jobs_discarded_at_index
  ON cairnloop_delivery_jobs (discarded_at) WHERE discarded_at IS NOT NULL;

-- Delivery paused or not: at most one row (id is always true).  No row is
-- "not paused", so emptying the table resumes delivery.  Workers read it in
-- every claim (a one-row lookup).
CREATE TABLE cairnloop_queue_control (
  id boolean PRIMARY KEY DEFAULT true CHECK (id),
  paused boolean NOT NULL DEFAULT false,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- The audited retry and cancel tell the auditor how many jobs they change
-- before the change runs (the audit call shares the statement's
-- transaction, see src/hooks.c), so the statement then checks that it
-- changed exactly that many: a job that moved meanwhile (a worker claimed
-- it) fails it with serialization_failure, the transaction rolls back, and
-- the operation is counted and tried again.
CREATE FUNCTION cairnloop_expect_count(changed bigint, expected bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
  IF expected IS NOT NULL AND changed IS DISTINCT FROM expected THEN
    RAISE EXCEPTION 'jobs changed state meanwhile: % of % changed', changed, expected
      USING ERRCODE = 'serialization_failure';
  END IF;
  RETURN changed;
END
$$;

-- Operator actions (retry_jobs, cancel_jobs, pause_delivery,
-- resume_delivery) have no template: the shipped table auditor stores them
-- with template_id NULL.
ALTER TABLE cairnloop_audit_events ALTER COLUMN template_id DROP NOT NULL;
