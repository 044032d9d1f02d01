/*
 * migrate.c - cl_migrate: applies the embedded migrations.
 *
 * Serialised by a session advisory lock keyed on the schema, so two
 * migrators at once are safe: the second waits, then finds everything
 * recorded.  Each migration runs in its own transaction with search_path
 * set to the schema (so the SQL files stay unqualified, as upstream's), and
 * is recorded in cairnloop_schema_migrations in that same transaction.
 * Its own statements are rows of the statement table (src/sql/migrate_*.sql).
 * Uses db.c.
 */
#include "migrate.h"
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

cl_status cl_migrate(cl_engine *eng, cl_error *err) {
  CL__ENTER(eng, err);
  cl__db *db = &eng->db;
  cl_status st;
  cl_rows *applied = NULL;
  const char *params[] = {eng->schema};

  st = cl__db_exec(db, CL__STMT_MIGRATE_LOCK, false, CL__NPARAMS(params), params, NULL, err);
  if (st != CL_OK) return st;

  char *sql = cl__db_with_schema(cl__sql_migrate_bootstrap, eng->schema);
  st = sql ? cl__db_exec_script(db, sql, err) : cl__fail(err, CL_DB_ERROR, "out of memory");
  free(sql);
  if (st != CL_OK) goto done;

  st = cl__db_exec(db, CL__STMT_MIGRATE_APPLIED, false, 0, NULL, &applied, err);
  if (st != CL_OK) goto done;

  for (size_t i = 0; i < cl__migrations_count; i++) {
    const cl__migration *m = &cl__migrations[i];
    bool done_already = false;
    for (int r = 0; r < cl_rows_count(applied); r++)
      if (strcmp(cl_rows_value(applied, r, CL__MIGRATE_APPLIED_VERSION), m->version) == 0)
        done_already = true;
    if (done_already) continue;

    char *q = cl__db_quote_ident(eng->schema);
    size_t n = strlen(m->sql) + 2 * strlen(q) + strlen(m->version) + 256;
    char *script = malloc(n);
    if (!q || !script) {
      free(q);
      free(script);
      st = cl__fail(err, CL_DB_ERROR, "out of memory");
      break;
    }
    /* The version is a file name from our own tree ([0-9a-z_]), safe to inline. */
    snprintf(script, n,
             "BEGIN; SET LOCAL search_path TO %s; %s;\n"
             "INSERT INTO %s.cairnloop_schema_migrations (version) VALUES ('%s'); COMMIT;",
             q, m->sql, q, m->version);
    free(q);
    st = cl__db_exec_script(db, script, err);
    free(script);
    if (st != CL_OK) {
      /* A failed statement leaves the transaction aborted: close it. */
      cl__db_exec_script(db, "ROLLBACK", NULL);
      char why[CL_ERROR_MESSAGE_MAX];
      snprintf(why, sizeof why, "%s", err ? err->message : "");
      st = cl__fail(err, CL_DB_ERROR, "migration %s failed: %s", m->version, why);
      break;
    }
    cl_log(eng, CL_LOG_DEBUG, "applied migration %s", m->version);
  }

done:
  cl_rows_free(applied);
  cl_error ignore;
  cl__db_exec(db, CL__STMT_MIGRATE_UNLOCK, false, CL__NPARAMS(params), params, NULL, &ignore);
  if (st == CL_OK) cl__ok(err);
  return st;
}
