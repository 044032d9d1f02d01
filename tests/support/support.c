/*
 * support.c - the database side of the test support: opening engines on the
 * suite's database, the test's own libpq connection, data reset and seeding,
 * error assertions and format checks, and the per-test fixture.
 * Uses libpq directly (tests may; the engine keeps it inside db.c).
 */
#include "support.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The only file-scope state of the tests: one connection per test process,
 * which is one cmocka binary running its tests one after another. */
static PGconn *test_conn;

const char *ct_database_url(void) {
  const char *url = getenv("CAIRNLOOP_DATABASE_URL");
  if (url == NULL || *url == '\0') {
    fail_msg("CAIRNLOOP_DATABASE_URL is not set: run the suite through `make check` "
             "or `tests/pg.sh run`");
  }
  return url;
}

cl_engine *ct_open_config(cl_config *cfg) {
  cl_engine *eng = NULL;
  cl_error err;
  if (cfg->database == NULL) cfg->database = ct_database_url();
  cl_status st = cl_open(&eng, cfg, &err);
  ct_assert_ok(st, &err);
  assert_non_null(eng);
  st = cl_migrate(eng, &err);
  ct_assert_ok(st, &err);
  return eng;
}

cl_engine *ct_open(const char *schema) {
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.schema = schema;
  return ct_open_config(&cfg);
}

/* TRUNCATE ... CASCADE and IF NOT EXISTS talk at NOTICE level; keep test
 * output to what matters. */
static void quiet_notices(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

PGconn *ct_pg(void) {
  if (test_conn != NULL && PQstatus(test_conn) == CONNECTION_OK) return test_conn;
  if (test_conn != NULL) PQfinish(test_conn);
  test_conn = PQconnectdb(ct_database_url());
  if (PQstatus(test_conn) != CONNECTION_OK) {
    fail_msg("cannot connect to %s: %s", ct_database_url(), PQerrorMessage(test_conn));
  }
  PQsetNoticeProcessor(test_conn, quiet_notices, NULL);
  return test_conn;
}

void ct_pg_close(void) {
  if (test_conn != NULL) PQfinish(test_conn);
  test_conn = NULL;
}

__attribute__((format(printf, 1, 0))) static char *vformat(const char *fmt, va_list ap) {
  char *out = NULL;
  if (vasprintf(&out, fmt, ap) < 0) fail_msg("out of memory");
  return out;
}

void ct_exec(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *sql = vformat(fmt, ap);
  va_end(ap);
  PGresult *r = PQexec(ct_pg(), sql);
  ExecStatusType st = PQresultStatus(r);
  bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
  if (!ok) print_error("SQL failed: %s\n  %s\n", sql, PQresultErrorMessage(r));
  /* Freed before fail(), whose longjmp the analysers do not see. */
  PQclear(r);
  free(sql);
  if (!ok) fail();
}

bool ct_try_exec(char *msg, size_t msglen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *sql = vformat(fmt, ap);
  va_end(ap);
  PGresult *r = PQexec(ct_pg(), sql);
  ExecStatusType st = PQresultStatus(r);
  bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
  if (!ok && msg != NULL && msglen > 0) snprintf(msg, msglen, "%s", PQresultErrorMessage(r));
  PQclear(r);
  free(sql);
  return ok;
}

PGresult *ct_query(const char *sql, int nparams, const char *const *params) {
  PGresult *r = PQexecParams(ct_pg(), sql, nparams, NULL, params, NULL, NULL, 0);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    print_error("query failed: %s\n  %s\n", sql, PQresultErrorMessage(r));
    PQclear(r);
    fail();
  }
  return r;
}

static PGresult *one_value(char *sql) {
  PGresult *r = PQexec(ct_pg(), sql);
  bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && PQnfields(r) == 1;
  if (!ok) {
    print_error("expected one value from: %s\n  got %d rows: %s\n", sql,
                PQresultStatus(r) == PGRES_TUPLES_OK ? PQntuples(r) : -1, PQresultErrorMessage(r));
    PQclear(r);
    r = NULL;
  }
  free(sql);
  if (!ok) fail();
  return r;
}

char *ct_scalar(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  PGresult *r = one_value(vformat(fmt, ap));
  va_end(ap);
  char *out = NULL;
  if (!PQgetisnull(r, 0, 0)) {
    /* Copy with its length: values may hold any byte but NUL. */
    size_t len = (size_t)PQgetlength(r, 0, 0);
    out = malloc(len + 1);
    assert_non_null(out);
    memcpy(out, PQgetvalue(r, 0, 0), len);
    out[len] = '\0';
  }
  PQclear(r);
  return out;
}

int64_t ct_int(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  PGresult *r = one_value(vformat(fmt, ap));
  va_end(ap);
  if (PQgetisnull(r, 0, 0)) {
    PQclear(r);
    fail_msg("expected an integer, got NULL");
  }
  int64_t v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
  PQclear(r);
  return v;
}

void ct_assert_scalar_at(const char *file, int line, const char *expected, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *sql = vformat(fmt, ap);
  va_end(ap);
  char *got = ct_scalar("%s", sql);
  bool same = (expected == NULL) == (got == NULL) &&
              (expected == NULL || strcmp(expected, got) == 0);
  if (!same)
    print_error("%s:%d: expected %s%s%s, got %s%s%s from: %s\n", file, line, expected ? "\"" : "",
                expected ? expected : "NULL", expected ? "\"" : "", got ? "\"" : "",
                got ? got : "NULL", got ? "\"" : "", sql);
  free(got);
  free(sql);
  if (!same) _fail(file, line);
}

void ct_assert_scalar1_at(const char *file, int line, const char *expected, const char *sql,
                          const char *param) {
  const char *params[] = {param};
  PGresult *r = ct_query(sql, 1, params);
  if (PQntuples(r) != 1 || PQnfields(r) != 1) {
    print_error("%s:%d: expected one value, got %d rows from: %s\n", file, line, PQntuples(r), sql);
    PQclear(r);
    _fail(file, line);
  }
  const char *got = PQgetisnull(r, 0, 0) ? NULL : PQgetvalue(r, 0, 0);
  size_t got_len = got ? (size_t)PQgetlength(r, 0, 0) : 0;
  bool same = (expected == NULL) == (got == NULL) &&
              (expected == NULL ||
               (strlen(expected) == got_len && memcmp(expected, got, got_len) == 0));
  if (!same) {
    print_error("%s:%d: stored value differs (%zu bytes expected, %zu stored)\n"
                "  expected: %s\n  stored:   %s\n  query: %s\n",
                file, line, expected ? strlen(expected) : 0, got_len, expected ? expected : "NULL",
                got ? got : "NULL", sql);
    PQclear(r);
    _fail(file, line);
  }
  PQclear(r);
}

int64_t ct_rows(const char *schema, const char *table) {
  return ct_int("SELECT count(*) FROM %s.%s", schema, table);
}

ct_counts ct_counts_of(const char *schema) {
  ct_counts c;
  c.envelopes = ct_rows(schema, "cairnloop_outbound_bulk_envelopes");
  c.messages = ct_rows(schema, "cairnloop_messages");
  c.jobs = ct_rows(schema, "cairnloop_delivery_jobs");
  return c;
}

void ct_reset(const char *schema) {
  const char *params[] = {schema};
  PGresult *r = ct_query(
      "SELECT string_agg(format('%I.%I', schemaname, tablename), ', ') FROM pg_tables "
      "WHERE schemaname = $1 AND tablename <> 'cairnloop_schema_migrations'",
      1, params);
  if (!PQgetisnull(r, 0, 0)) {
    ct_exec("TRUNCATE %s RESTART IDENTITY CASCADE", PQgetvalue(r, 0, 0));
  }
  PQclear(r);
}

void ct_seed(const char *schema, int n) {
  ct_exec("INSERT INTO %s.cairnloop_conversations (status, subject) "
          "SELECT 'open', 'c' || g FROM generate_series(1, %d) g",
          schema, n);
}

/* ------------------------------------------------------------- errors */

void ct_assert_error_at(cl_status st, const cl_error *err, cl_status code, const char *needle,
                        const char *file, int line) {
  if (st != code) {
    print_error("%s:%d: expected status %s, got %s (\"%s\")\n", file, line, cl_status_name(code),
                cl_status_name(st), err->message);
    _fail(file, line);
  }
  if (err->code != code) {
    print_error("%s:%d: err->code is %s, the status %s\n", file, line, cl_status_name(err->code),
                cl_status_name(st));
    _fail(file, line);
  }
  size_t len = strnlen(err->message, sizeof err->message);
  if (len == 0 || len == sizeof err->message || strchr(err->message, '\n') != NULL) {
    print_error("%s:%d: error message is not one non-empty line: \"%s\"\n", file, line,
                err->message);
    _fail(file, line);
  }
  if (needle != NULL && strstr(err->message, needle) == NULL) {
    print_error("%s:%d: error message \"%s\" does not contain \"%s\"\n", file, line, err->message,
                needle);
    _fail(file, line);
  }
}

void ct_assert_ok_at(cl_status st, const cl_error *err, const char *file, int line) {
  if (st != CL_OK) {
    print_error("%s:%d: expected ok, got %s: %s\n", file, line, cl_status_name(st),
                err != NULL ? err->message : "");
    _fail(file, line);
  }
}

bool ct_is_uuid_v4(const char *s) {
  if (s == NULL || strlen(s) != CL_UUID_LEN) return false;
  for (int i = 0; i < CL_UUID_LEN; i++) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-') return false;
    } else if (!(isdigit((unsigned char)s[i]) || (s[i] >= 'a' && s[i] <= 'f'))) {
      return false;
    }
  }
  /* Version nibble 4, RFC 4122 variant 10xx. */
  return s[14] == '4' && strchr("89ab", s[19]) != NULL;
}

bool ct_is_iso_utc(const char *s) {
  if (s == NULL) return false;
  static const char shape[] = "dddd-dd-ddTdd:dd:dd";
  for (size_t i = 0; i < sizeof shape - 1; i++) {
    if (s[i] == '\0') return false;
    if (shape[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != shape[i]) return false;
  }
  const char *p = s + sizeof shape - 1;
  if (*p == '.') {
    p++;
    if (!isdigit((unsigned char)*p)) return false;
    while (isdigit((unsigned char)*p)) p++;
  }
  return strcmp(p, "Z") == 0 || strcmp(p, "+00:00") == 0 || strcmp(p, "+00") == 0;
}

/* ------------------------------------------------------------ fixtures */

ct_world *ct_world_new(int seed, cl_config *cfg) {
  ct_world *w = calloc(1, sizeof *w);
  assert_non_null(w);
  cl_config local;
  if (cfg == NULL) {
    cl_config_init(&local);
    cfg = &local;
  }
  if (cfg->log == NULL) {
    cfg->log = ct_log_fn;
    cfg->log_ud = &w->log;
    cfg->log_level = CL_LOG_DEBUG;
  }
  w->eng = ct_open_config(cfg);
  const char *schema = cl_schema(w->eng);
  ct_reset(schema);
  if (seed > 0) ct_seed(schema, seed);
  ct_capture_init(&w->cap);
  ct_capture_attach_all(w->eng, &w->cap, "test-capture");
  return w;
}

void ct_world_free(ct_world *w) {
  if (w == NULL) return;
  cl_close(w->eng);
  ct_capture_free(&w->cap);
  ct_log_free(&w->log);
  free(w);
}

int ct_world_setup(void **state) {
  *state = ct_world_new(10, NULL);
  return 0;
}

int ct_world_teardown(void **state) {
  ct_world_free(*state);
  *state = NULL;
  return 0;
}

int ct_group_teardown(void **state) {
  (void)state;
  ct_pg_close();
  return 0;
}
