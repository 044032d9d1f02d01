-- The schema and its migrations table, before any migration runs
-- (cl_migrate).  A script, not a prepared statement: it runs as one simple
-- query, and it is safe to repeat.
CREATE SCHEMA IF NOT EXISTS @S;
CREATE TABLE IF NOT EXISTS @S.cairnloop_schema_migrations (
  version text PRIMARY KEY,
  inserted_at timestamptz NOT NULL DEFAULT now()
);
