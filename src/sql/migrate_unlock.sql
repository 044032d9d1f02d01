-- cl_migrate_unlock: releases cl_migrate_lock (cl_migrate).
--
-- Parameters: $1 the schema name.
-- Columns:    unlocked (whether the session held the lock).
SELECT pg_advisory_unlock(hashtext('cairnloop.migrate.' || $1)) AS unlocked;
