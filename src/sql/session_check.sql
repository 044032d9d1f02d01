-- The session check: after a hook ran statements (tx:exec), did it leave
-- anything behind that would outlive the operation (cl__db_tx_close,
-- cl__db_hook_end)?  Not a statement of the table: a DO block, sent
-- unprepared right in front of the committing Sync, so it costs no round
-- trip of its own.
--
-- Raises SQLSTATE CL001 with the changes as its message (", "-separated),
-- which aborts the transaction it runs in:
--   - a setting whose source is the session: set_config(name, value, ...)
--     in a SELECT, whether session-wide or local (the transaction_*
--     settings, which only a transaction's own start sets, aside);
--   - role and session_authorization, which pg_settings does not show:
--     RESET puts each back to the session's value from the connection
--     (client options, ALTER ROLE/DATABASE ... SET), and a difference
--     means the hook changed it.  When nothing changed the RESET changes
--     nothing; when something did, the abort undoes everything anyway;
--   - a relation created by this transaction (SELECT ... INTO [TEMP]);
--   - an advisory lock held by this session, session-level or not: the
--     engine takes none during an operation.  Session-level ones survive
--     the abort: the caller releases them (pg_advisory_unlock_all).
--
-- Every name is schema-qualified: the hook may have moved search_path, or
-- created a temporary table named like a catalog view.
-- (The block's body is indented: PQtrace prints the text line by line, and
-- the round-trip test reads lines that start with F or B as messages.)
DO $cl_check$
  DECLARE
    role_was text := pg_catalog.current_setting('role');
    auth_was text := pg_catalog.current_setting('session_authorization');
    changed text;
  BEGIN
    RESET role;
    RESET session_authorization;
    SELECT pg_catalog.string_agg(c.what, ', ') INTO changed FROM (
      SELECT s.name AS what FROM pg_catalog.pg_settings s
      WHERE s.source = 'session' AND s.name NOT LIKE 'transaction\_%'
      UNION ALL
      SELECT 'role' WHERE pg_catalog.current_setting('role') IS DISTINCT FROM role_was
      UNION ALL
      SELECT 'session_authorization'
      WHERE pg_catalog.current_setting('session_authorization') IS DISTINCT FROM auth_was
      UNION ALL
      SELECT CASE WHEN r.relpersistence = 't' THEN 'temporary ' ELSE '' END
             || 'relation ' || r.relname
      FROM pg_catalog.pg_class r
      WHERE r.xmin OPERATOR(pg_catalog.=) pg_catalog.pg_current_xact_id_if_assigned()::xid
        AND r.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
      UNION ALL
      SELECT 'advisory lock' WHERE EXISTS (
        SELECT FROM pg_catalog.pg_locks l
        WHERE l.locktype = 'advisory' AND l.pid = pg_catalog.pg_backend_pid())
    ) AS c;
    IF changed IS NOT NULL THEN
      RAISE EXCEPTION USING ERRCODE = 'CL001', MESSAGE = changed;
    END IF;
  END
$cl_check$
