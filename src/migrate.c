/*
 * migrate.c - cl_migrate: applies the embedded migrations, and reports
 * which it applied (cl_migrate_report) or which are applied and pending
 * (cl_migrations).
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
#include "arena.h"
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cl_migration_list_clear(cl_migration_list *list) {
  if (!list) return;
  cl__arena_free(list->priv_);
  memset(list, 0, sizeof *list);
}

/* A list with room for `cap` items, its storage owned by the list. */
static bool list_init(cl_migration_list *list, size_t cap) {
  cl__arena *a = cl__arena_new();
  list->items = a ? cl__arena_alloc(a, (cap ? cap : 1) * sizeof *list->items) : NULL;
  if (!list->items) {
    cl__arena_free(a);
    return false;
  }
  list->count = 0;
  list->priv_ = a;
  return true;
}

/* Appends one migration (strings copied); false when memory runs out. */
static bool list_add(cl_migration_list *list, const char *version, const char *applied_at) {
  cl__arena *a = list->priv_;
  cl_migration *m = &list->items[list->count];
  m->version = cl__arena_strdup(a, version);
  m->applied_at = cl__arena_strdup(a, applied_at);
  if (!m->version || (applied_at && !m->applied_at)) return false;
  list->count++;
  return true;
}

static cl_status migrate(cl_engine *eng, cl_migration_list *report, cl_error *err) {
  cl__db *db = &eng->db;
  cl_status st;
  cl_rows *applied = NULL;
  const char *params[] = {eng->schema};

  if (report && !list_init(report, cl__migrations_count))
    return cl__fail(err, CL_DB_ERROR, "out of memory");
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
    size_t n = q ? strlen(m->sql) + 2 * strlen(q) + strlen(m->version) + 256 : 0;
    char *script = q ? malloc(n) : NULL;
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
    /* Applied and committed: it is reported even if a later one fails. */
    if (report && !list_add(report, m->version, NULL)) {
      st = cl__fail(err, CL_DB_ERROR, "out of memory");
      break;
    }
  }

done:
  cl_rows_free(applied);
  cl_error ignore;
  cl__db_exec(db, CL__STMT_MIGRATE_UNLOCK, false, CL__NPARAMS(params), params, NULL, &ignore);
  if (st == CL_OK) cl__ok(err);
  return st;
}

cl_status cl_migrate(cl_engine *eng, cl_error *err) {
  CL__ENTER(eng, err);
  return migrate(eng, NULL, err);
}

cl_status cl_migrate_report(cl_engine *eng, cl_migration_list *applied, cl_error *err) {
  if (applied) memset(applied, 0, sizeof *applied);
  CL__ENTER(eng, err);
  return migrate(eng, applied, err);
}

cl_status cl_migrations(cl_engine *eng, cl_migration_list *out, cl_error *err) {
  if (out) memset(out, 0, sizeof *out);
  CL__ENTER(eng, err);
  if (!out) return cl__fail(err, CL_INVALID_ARGUMENT, "migrations: no place for the result");
  cl_rows *rows = NULL;
  cl_status st = cl__db_exec(&eng->db, CL__STMT_MIGRATE_STATUS, false, 0, NULL, &rows, err);
  /* No migrations table (42P01) or no schema (3F000): nothing applied. */
  if (st == CL_DB_ERROR &&
      (strcmp(eng->db.sqlstate, "42P01") == 0 || strcmp(eng->db.sqlstate, "3F000") == 0))
    st = CL_OK;
  if (st != CL_OK) return st;
  int nrows = cl_rows_count(rows);
  bool ok = list_init(out, cl__migrations_count + (size_t)nrows);
  /* The library's migrations in order, then applied ones it does not know. */
  for (size_t i = 0; ok && i < cl__migrations_count; i++) {
    const char *at = NULL;
    for (int r = 0; r < nrows && !at; r++)
      if (strcmp(cl_rows_value(rows, r, CL__MIGRATE_STATUS_VERSION), cl__migrations[i].version) ==
          0)
        at = cl_rows_value(rows, r, CL__MIGRATE_STATUS_APPLIED_AT);
    ok = list_add(out, cl__migrations[i].version, at);
  }
  for (int r = 0; ok && r < nrows; r++) {
    const char *v = cl_rows_value(rows, r, CL__MIGRATE_STATUS_VERSION);
    bool known = false;
    for (size_t i = 0; i < cl__migrations_count && !known; i++)
      known = strcmp(v, cl__migrations[i].version) == 0;
    if (!known) ok = list_add(out, v, cl_rows_value(rows, r, CL__MIGRATE_STATUS_APPLIED_AT));
  }
  cl_rows_free(rows);
  if (!ok) {
    cl_migration_list_clear(out);
    return cl__fail(err, CL_DB_ERROR, "out of memory");
  }
  cl__ok(err);
  return CL_OK;
}
