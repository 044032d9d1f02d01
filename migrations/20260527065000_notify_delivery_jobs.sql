-- Wakes idle workers when jobs are inserted.  One NOTIFY per inserting
-- statement (a bulk of N jobs is one notification, and PostgreSQL folds
-- identical notifications of one transaction into one), delivered at
-- commit, so a worker never wakes for a row it cannot see yet.  The channel
-- names the schema, so workers of different schemas in one database do not
-- wake each other; channel names are identifiers, hence the 63-byte cut
-- (a collision past it only costs a spurious wake-up).  Workers LISTEN on
-- the same string (src/queue.c).  The insert statements need not know.
CREATE FUNCTION cairnloop_delivery_jobs_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify(left('cairnloop_jobs:' || TG_TABLE_SCHEMA, 63), '');
  RETURN NULL;
END
$$;

CREATE TRIGGER cairnloop_delivery_jobs_notify
  AFTER INSERT ON cairnloop_delivery_jobs
  FOR EACH STATEMENT EXECUTE FUNCTION cairnloop_delivery_jobs_notify();
