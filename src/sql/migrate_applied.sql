-- cl_migrate_applied: the migrations recorded as applied (cl_migrate).
--
-- Parameters: none.
-- Columns:    version (a migration's file name without .sql).
SELECT version FROM @S.cairnloop_schema_migrations;
