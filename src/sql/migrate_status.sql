-- cl_migrate_status: the migrations recorded as applied, with when
-- (cl_migrations).
--
-- Parameters: none.
-- Columns:    version, applied_at (ISO 8601, UTC).
--
-- Fails with undefined_table (42P01) or invalid_schema_name (3F000) on a
-- database never migrated: C reads that as "nothing applied" (a status
-- must not create the schema the way cl_migrate does).
SELECT version,
       to_char(inserted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS applied_at
FROM @S.cairnloop_schema_migrations
ORDER BY version;
