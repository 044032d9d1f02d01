/*
 * test_round_trips.c - set-based SQL: the number of client/server round
 * trips of trigger and bulk_trigger, counted from libpq's own protocol
 * trace (PQtrace) of the engine's connection as the turns from client to
 * server messages.  A trigger takes at most two; a
 * bulk takes the same number for 1 and for 1000 recipients.  Every test
 * runs twice: with statements prepared per connection, and with
 * cl_config.no_prepared_statements (each statement sent with its text,
 * for a transaction pooler), which must cost no extra round trip.
 * Uses the internal accessor cl__db_conn() from src/db.h.
 */
#include "support.h"

#include "db.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S CT_SCHEMA

typedef struct tracer {
  PGconn *conn;
  FILE *out;
  uint64_t internal_before;
  cl_engine *eng;
} tracer;

static void trace_start(tracer *t, cl_engine *eng) {
  t->eng = eng;
  t->conn = cl__db_conn(eng);
  assert_non_null(t->conn);
  t->out = tmpfile();
  assert_non_null(t->out);
  PQtrace(t->conn, t->out);
  PQsetTraceFlags(t->conn, PQTRACE_SUPPRESS_TIMESTAMPS);
  t->internal_before = cl__db_round_trips(eng);
}

/*
 * Stops tracing and returns the number of round trips: the times the client
 * sent something and then read the server's answer, i.e. the turns from
 * client ("F") to server ("B") messages in the protocol trace.  A wait
 * inside a transaction (flush request, no Sync) counts as well as one that
 * ends in ReadyForQuery.
 */
static int trace_stop(tracer *t, const char *what) {
  /* The engine must not have swapped its connection under the trace. */
  assert_ptr_equal(cl__db_conn(t->eng), t->conn);
  PQuntrace(t->conn);
  fflush(t->out);
  rewind(t->out);
  char line[4096];
  int n = 0;
  char last = 0;
  while (fgets(line, sizeof line, t->out) != NULL) {
    char dir = line[0] == 'F' || line[0] == 'B' ? line[0] : 0;
    if (!dir) continue;
    if (dir == 'B' && last == 'F') n++;
    last = dir;
  }
  assert_int_equal(fclose(t->out), 0);
  print_message("# %s: %d round trips (engine's own count %llu)\n", what, n,
                (unsigned long long)(cl__db_round_trips(t->eng) - t->internal_before));
  return n;
}

static int trigger_trips(cl_engine *eng, int64_t conv, const char *tmpl, const char *what) {
  cl_trigger_opts opts = {.template_id = tmpl};
  cl_trigger_result res = {0};
  cl_error err;
  tracer t;
  trace_start(&t, eng);
  cl_status st = cl_trigger(eng, conv, &opts, &res, &err);
  int n = trace_stop(&t, what);
  ct_assert_ok(st, &err);
  cl_trigger_result_clear(&res);
  return n;
}

static int bulk_trips(cl_engine *eng, size_t count, const char *tmpl, cl_status want,
                      const char *what) {
  int64_t *ids = malloc(count * sizeof *ids);
  assert_non_null(ids);
  for (size_t i = 0; i < count; i++) ids[i] = (int64_t)i + 1;
  cl_bulk_opts opts = {.template_id = tmpl, .rendered_body = "body"};
  cl_bulk_result res = {0};
  cl_error err;
  tracer t;
  trace_start(&t, eng);
  cl_status st = cl_bulk_trigger(eng, ids, count, &opts, &res, &err);
  int n = trace_stop(&t, what);
  if (want == CL_OK) {
    ct_assert_ok(st, &err);
    assert_int_equal(res.count, count);
  } else {
    ct_assert_error(st, &err, want, NULL);
  }
  cl_bulk_result_clear(&res);
  free(ids);
  return n;
}

static int setup_with(void **state, bool unnamed) {
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.no_prepared_statements = unnamed;
  ct_world *w = ct_world_new(2000, &cfg);
  cl_error err;
  ct_assert_ok(cl_set_max_batch_size(w->eng, 1000, &err), &err);
  *state = w;
  return 0;
}

static int setup(void **state) { return setup_with(state, false); }
static int setup_unnamed(void **state) { return setup_with(state, true); }

/* The session's named prepared statements (pg_prepared_statements). */
static int named_statements(cl_engine *eng) {
  PGresult *r = PQexec(cl__db_conn(eng), "SELECT count(*) FROM pg_prepared_statements");
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  int n = (int)strtol(PQgetvalue(r, 0, 0), NULL, 10);
  PQclear(r);
  return n;
}

/* Statements are prepared once per connection, so the first call of each
 * kind may carry the preparation; the bound is about every call after it. */
static void warm_up(cl_engine *eng) {
  trigger_trips(eng, 2000, "warm", "warm-up trigger");
  bulk_trips(eng, 1, "warm", CL_OK, "warm-up bulk");
}

static void test_round_trips__trigger_takes_at_most_two(void **state) {
  ct_world *w = *state;
  warm_up(w->eng);
  int n = trigger_trips(w->eng, 1, "t", "trigger");
  assert_true(n >= 1);
  assert_true(n <= 2);
  /* A duplicate is answered as cheaply. */
  int d = trigger_trips(w->eng, 1, "t", "duplicate trigger");
  assert_true(d >= 1);
  assert_true(d <= 2);
}

static void test_round_trips__bulk_is_constant_in_cohort_size(void **state) {
  ct_world *w = *state;
  warm_up(w->eng);
  int one = bulk_trips(w->eng, 1, "t1", CL_OK, "bulk of 1");
  int ten = bulk_trips(w->eng, 10, "t10", CL_OK, "bulk of 10");
  int thousand = bulk_trips(w->eng, 1000, "t1000", CL_OK, "bulk of 1000");
  assert_true(one >= 1);
  assert_true(one <= 2);
  assert_int_equal(ten, one);
  assert_int_equal(thousand, one);
  ct_assert_counts(S, 4, 1013, 1013); /* with the warm-up trigger */
}

static void test_round_trips__refusal_is_constant_in_cohort_size(void **state) {
  ct_world *w = *state;
  warm_up(w->eng);
  cl_error err;
  ct_assert_ok(cl_set_max_batch_size(w->eng, 5, &err), &err);
  bulk_trips(w->eng, 6, "warm-refusal", CL_BATCH_TOO_LARGE, "warm-up refusal");
  int small = bulk_trips(w->eng, 6, "r6", CL_BATCH_TOO_LARGE, "refusal of 6");
  int large = bulk_trips(w->eng, 2000, "r2000", CL_BATCH_TOO_LARGE, "refusal of 2000");
  assert_true(small >= 1);
  assert_true(small <= 2);
  assert_int_equal(large, small);
}

static void test_round_trips__bulk_with_auditor_is_constant_in_cohort_size(void **state) {
  ct_world *w = *state;
  ct_auditor a = {0};
  ct_install_auditor(w->eng, &a);
  warm_up(w->eng);
  int one = bulk_trips(w->eng, 1, "a1", CL_OK, "audited bulk of 1");
  int thousand = bulk_trips(w->eng, 1000, "a1000", CL_OK, "audited bulk of 1000");
  assert_int_equal(thousand, one);
  assert_int_equal(a.calls, 4); /* two warm-up calls, two measured */
  cl_error err;
  ct_assert_ok(cl_set_auditor(w->eng, NULL, &err), &err); /* `a` lives on this stack */
  ct_auditor_free(&a);
}

/* The auditor's transaction is pipelined: an auditor that runs nothing
 * adds no round trip (BEGIN, the insert and COMMIT travel together), and
 * each statement it runs adds exactly one. */
static void test_round_trips__auditor_costs_one_trip_per_statement_it_runs(void **state) {
  ct_world *w = *state;
  ct_auditor a = {0};
  ct_install_auditor(w->eng, &a);
  warm_up(w->eng);
  assert_int_equal(trigger_trips(w->eng, 1, "quiet", "trigger, auditor runs nothing"), 1);
  assert_int_equal(bulk_trips(w->eng, 50, "quiet", CL_OK, "bulk, auditor runs nothing"), 1);
  a.mode = CT_AUDIT_EXEC;
  a.sql = "SELECT $1::text";
  assert_int_equal(trigger_trips(w->eng, 2, "busy", "trigger, auditor runs one statement"), 2);
  assert_int_equal(bulk_trips(w->eng, 50, "busy", CL_OK, "bulk, auditor runs one statement"), 2);
  cl_error err;
  ct_assert_ok(cl_set_auditor(w->eng, NULL, &err), &err);
  ct_auditor_free(&a);
}

/* The option leaves nothing prepared by name on the server, and the
 * default prepares the statements it ran (the test above proves the
 * difference is not in the round trips). */
static void test_round_trips__unnamed_prepares_nothing(void **state) {
  ct_world *w = *state;
  ct_auditor a = {0};
  ct_install_auditor(w->eng, &a);
  a.mode = CT_AUDIT_EXEC;
  a.sql = "SELECT $1::text";
  warm_up(w->eng);
  warm_up(w->eng);
  assert_int_equal(named_statements(w->eng), 0);
  cl_error err;
  ct_assert_ok(cl_set_auditor(w->eng, NULL, &err), &err);
  ct_auditor_free(&a);
}

static void test_round_trips__default_prepares_by_name(void **state) {
  ct_world *w = *state;
  warm_up(w->eng);
  assert_true(named_statements(w->eng) > 0);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, ct_world_teardown)
#define U(f) cmocka_unit_test_setup_teardown(f, setup_unnamed, ct_world_teardown)
  const struct CMUnitTest tests[] = {
      T(test_round_trips__trigger_takes_at_most_two),
      T(test_round_trips__bulk_is_constant_in_cohort_size),
      T(test_round_trips__refusal_is_constant_in_cohort_size),
      T(test_round_trips__bulk_with_auditor_is_constant_in_cohort_size),
      T(test_round_trips__auditor_costs_one_trip_per_statement_it_runs),
      T(test_round_trips__default_prepares_by_name),
      U(test_round_trips__trigger_takes_at_most_two),
      U(test_round_trips__bulk_is_constant_in_cohort_size),
      U(test_round_trips__refusal_is_constant_in_cohort_size),
      U(test_round_trips__bulk_with_auditor_is_constant_in_cohort_size),
      U(test_round_trips__auditor_costs_one_trip_per_statement_it_runs),
      U(test_round_trips__unnamed_prepares_nothing),
  };
  return cmocka_run_group_tests_name("round_trips", tests, NULL, ct_group_teardown);
}
