-- cl_migrate_lock: serialises migrators of one schema (cl_migrate).
--
-- Parameters: $1 the schema name.
-- Columns:    locked (void: waiting for the lock is the point).
--
-- A session advisory lock keyed on the schema, so migrating two schemas
-- does not serialise; cl_migrate_unlock releases it.
SELECT pg_advisory_lock(hashtext('cairnloop.migrate.' || $1)) AS locked;
