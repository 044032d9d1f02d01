/*
 * support.h - what every C test shares: an engine on the suite's database,
 * a second libpq connection for arranging and inspecting rows, a telemetry
 * recorder, a log recorder and configurable C hooks (auditor, resolver).
 *
 * Tests run against a real PostgreSQL named by CAIRNLOOP_DATABASE_URL
 * (tools/check.sh creates one database per suite).  Every helper asserts
 * through cmocka, so a test reads as its arrangement and its expectations.
 */
#ifndef CL_TEST_SUPPORT_H
#define CL_TEST_SUPPORT_H

/* cmocka needs these before its header. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <stdbool.h>

#include "cairnloop.h"

#define CT_SCHEMA "cairnloop"
#define CT_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------ database */

/* The suite's database URL; fails the test when it is not set. */
const char *ct_database_url(void);

/* Opens an engine on the suite database with `schema` (NULL: the default)
 * and migrates it; asserts both succeed. */
cl_engine *ct_open(const char *schema);
/* As ct_open with a caller-filled config; cfg->database defaults to the suite URL. */
cl_engine *ct_open_config(cl_config *cfg);

/* The test's own connection (opened on first use, kept until ct_pg_close). */
PGconn *ct_pg(void);
void ct_pg_close(void);

/* Runs SQL (printf-formatted, no parameters) and asserts it succeeded. */
void ct_exec(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Runs SQL and returns whether it succeeded (for statements expected to fail);
 * the server's message is copied to `msg` when it fails. */
bool ct_try_exec(char *msg, size_t msglen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Runs a parameterised query and asserts it returned tuples; caller PQclear()s. */
PGresult *ct_query(const char *sql, int nparams, const char *const *params);
/* The single value of a one-row, one-column query: malloc'd text, NULL for SQL NULL. */
char *ct_scalar(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The single value of a one-row, one-column query, as an integer. */
int64_t ct_int(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Asserts the single value of a query is `expected` (NULL: SQL NULL). */
#define ct_assert_scalar(expected, ...) \
  ct_assert_scalar_at(__FILE__, __LINE__, (expected), __VA_ARGS__)
void ct_assert_scalar_at(const char *file, int line, const char *expected, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* As ct_assert_scalar for a query with one text parameter $1, comparing
 * bytes and length exactly (for payloads that must round-trip unchanged). */
#define ct_assert_scalar1(expected, sql, param) \
  ct_assert_scalar1_at(__FILE__, __LINE__, (expected), (sql), (param))
void ct_assert_scalar1_at(const char *file, int line, const char *expected, const char *sql,
                          const char *param);
/* count(*) of schema.table. */
int64_t ct_rows(const char *schema, const char *table);

/* Empties every table of `schema` but the migrations table, restarting ids. */
void ct_reset(const char *schema);
/* Inserts n open conversations; right after ct_reset their ids are 1..n. */
void ct_seed(const char *schema, int n);

/* Row counts of the three outbound tables, for "nothing was written". */
typedef struct ct_counts {
  int64_t envelopes, messages, jobs;
} ct_counts;
ct_counts ct_counts_of(const char *schema);
#define ct_assert_counts(schema, env, msg, job) \
  do {                                          \
    ct_counts c_ = ct_counts_of(schema);        \
    assert_int_equal(c_.envelopes, (env));      \
    assert_int_equal(c_.messages, (msg));       \
    assert_int_equal(c_.jobs, (job));           \
  } while (0)

/* --------------------------------------------------------------- errors */

/* Asserts status and err agree on `code`, that the message is one non-empty
 * line, and (when `needle` is not NULL) that it contains `needle`. */
#define ct_assert_error(st, err, code, needle) \
  ct_assert_error_at((st), (err), (code), (needle), __FILE__, __LINE__)
void ct_assert_error_at(cl_status st, const cl_error *err, cl_status code, const char *needle,
                        const char *file, int line);
/* Asserts CL_OK, printing the error message otherwise. */
#define ct_assert_ok(st, err) ct_assert_ok_at((st), (err), __FILE__, __LINE__)
void ct_assert_ok_at(cl_status st, const cl_error *err, const char *file, int line);

/* True for a canonical lowercase version-4 UUID. */
bool ct_is_uuid_v4(const char *s);
/* True for "YYYY-MM-DDTHH:MM:SS[.frac](Z|+00:00|+00)". */
bool ct_is_iso_utc(const char *s);

/* ------------------------------------------------------------ telemetry */

/* A deep copy of one measurement or metadata map. */
typedef struct ct_kv {
  char *key;
  cl_value_type type;
  int64_t i;
  char *s;
} ct_kv;

typedef struct ct_map {
  ct_kv *items;
  size_t count;
} ct_map;

typedef struct ct_event {
  char *name; /* dotted */
  ct_map measurements;
  ct_map metadata;
} ct_event;

typedef struct ct_capture {
  ct_event *events;
  size_t count, cap;
} ct_capture;

/* Every event name API.md lists, dotted. */
extern const char *const ct_all_events[];
extern const size_t ct_all_events_count;

void ct_capture_init(ct_capture *c);
/* Forgets recorded events (the capture stays usable). */
void ct_capture_reset(ct_capture *c);
void ct_capture_free(ct_capture *c);
/* A cl_handler_fn recording into the ct_capture passed as config. */
void ct_capture_handler(const char *const *event, const cl_measurements *measurements,
                        const cl_metadata *metadata, void *config);
/* Attaches ct_capture_handler under `handler_id` to every event of API.md. */
void ct_capture_attach_all(cl_engine *eng, ct_capture *c, const char *handler_id);

size_t ct_capture_count(const ct_capture *c, const char *name);
/* The nth (0-based) event named `name`, NULL if fewer. */
const ct_event *ct_capture_nth(const ct_capture *c, const char *name, size_t nth);
/* Prints every recorded event (for diagnostics when an assertion fails). */
void ct_capture_dump(const ct_capture *c);

const ct_kv *ct_map_get(const ct_map *m, const char *key);
/* Asserts the map's key set is exactly the NULL-terminated list given. */
#define ct_assert_keys(map, ...) \
  ct_assert_keys_at((map), __FILE__, __LINE__, __VA_ARGS__, (const char *)NULL)
void ct_assert_keys_at(const ct_map *m, const char *file, int line, ...);
/* Asserts key is present and a string equal to `expected` (NULL: CL_VALUE_NIL). */
#define ct_assert_str(map, key, expected) \
  ct_assert_str_at((map), (key), (expected), __FILE__, __LINE__)
void ct_assert_str_at(const ct_map *m, const char *key, const char *expected, const char *file,
                      int line);
/* Asserts key is present and an integer equal to `expected`. */
#define ct_assert_int(map, key, expected) \
  ct_assert_int_at((map), (key), (expected), __FILE__, __LINE__)
void ct_assert_int_at(const ct_map *m, const char *key, int64_t expected, const char *file,
                      int line);
/* Asserts key is present and an integer (any value); returns it. */
int64_t ct_get_int(const ct_map *m, const char *key);

/* ------------------------------------------------------------------ log */

typedef struct ct_log {
  struct ct_log_line {
    cl_log_level level;
    char *line;
  } * lines;
  size_t count, cap;
} ct_log;

/* A cl_log_fn recording into the ct_log passed as ud. */
void ct_log_fn(void *ud, cl_log_level level, const char *line);
/* Lines at `level` containing `needle` (NULL: any). */
size_t ct_log_count(const ct_log *log, cl_log_level level, const char *needle);
void ct_log_dump(const ct_log *log);
void ct_log_free(ct_log *log);

/* ---------------------------------------------------------------- hooks */

typedef enum ct_audit_mode {
  CT_AUDIT_ACCEPT,      /* CL_OK, *audit_json = reply (if set) */
  CT_AUDIT_REJECT,      /* CL_AUDIT_REJECTED with `reason` */
  CT_AUDIT_HOOK_ERROR,  /* CL_HOOK_ERROR with `reason` */
  CT_AUDIT_EXEC,        /* runs `sql` through cl_tx_exec, then behaves as ACCEPT
                           (or returns the exec's status when it fails) */
  CT_AUDIT_EXEC_IGNORE, /* runs `sql`, ignores its failure, returns CL_OK */
  CT_AUDIT_EXEC_REJECT, /* runs `sql`, then refuses as REJECT */
  CT_AUDIT_REENTER      /* calls cl_trigger on `eng` (status in exec_status), accepts */
} ct_audit_mode;

/* A C auditor whose behaviour the test sets, recording every call. */
typedef struct ct_auditor {
  ct_audit_mode mode;
  const char *reason;
  const char *reply; /* JSON returned as audit_json on accept */
  const char *sql;   /* CT_AUDIT_EXEC*: statement with $1 = the action */
  cl_engine *eng;    /* CT_AUDIT_REENTER: the engine to call back into */
  int calls;
  char *action;          /* of the last call */
  char *actor;           /* of the last call, NULL for none */
  ct_map metadata;       /* of the last call */
  cl_status exec_status; /* what cl_tx_exec returned (CT_AUDIT_EXEC) */
  cl_error exec_err;
  cl_tx *tx; /* the last call's tx, kept to prove it expires */
  int released;
} ct_auditor;

/* Installs `a` as the engine's auditor (asserts CL_OK). */
void ct_install_auditor(cl_engine *eng, ct_auditor *a);
/* Frees what the auditor recorded. */
void ct_auditor_free(ct_auditor *a);

typedef enum ct_resolve_mode {
  CT_RESOLVE_SAME,      /* resolved = the given actor */
  CT_RESOLVE_REPLACE,   /* resolved = `replacement` (NULL: no actor) */
  CT_RESOLVE_REJECT,    /* CL_ACTOR_REJECTED with `reason` */
  CT_RESOLVE_HOOK_ERROR /* CL_HOOK_ERROR with `reason` */
} ct_resolve_mode;

typedef struct ct_resolver {
  ct_resolve_mode mode;
  const char *replacement;
  const char *reason;
  int calls;
  char *actor;  /* given on the last call */
  char *action; /* of the last call */
  int released;
} ct_resolver;

void ct_install_resolver(cl_engine *eng, ct_resolver *r);
void ct_resolver_free(ct_resolver *r);

/* ------------------------------------------------------------- fixtures */

/* The usual per-test world: an engine on the default schema with data reset,
 * `seed` conversations (ids 1..seed) and every event recorded. */
typedef struct ct_world {
  cl_engine *eng;
  ct_capture cap;
  ct_log log;
} ct_world;

/* cmocka setup/teardown for a ct_world with 10 conversations. */
int ct_world_setup(void **state);
int ct_world_teardown(void **state);
/* Builds a world with a given seed and optional config (NULL: defaults, log captured). */
ct_world *ct_world_new(int seed, cl_config *cfg);
void ct_world_free(ct_world *w);

/* Group teardown closing the test connection (so leak checks stay quiet). */
int ct_group_teardown(void **state);

#endif
