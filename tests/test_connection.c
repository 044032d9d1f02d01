/*
 * test_connection.c - a lost connection: when the server ends the engine's
 * session (between calls, or in the middle of an operation's transaction)
 * the call reports db_error or reconnects, never writes half an operation,
 * and the engine works again on the next call.
 * Uses the internal accessor cl__db_conn() from src/db.h for the backend pid.
 */
#include "support.h"

#include "db.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S CT_SCHEMA

static void kill_backend_of(cl_engine *eng) {
  PGconn *conn = cl__db_conn(eng);
  assert_non_null(conn);
  int pid = PQbackendPID(conn);
  assert_true(pid > 0);
  ct_assert_scalar("t", "SELECT pg_terminate_backend(%d, 5000)", pid);
}

static cl_status trigger(ct_world *w, int64_t conv, const char *tmpl, cl_error *err) {
  cl_trigger_opts opts = {.template_id = tmpl};
  cl_trigger_result res = {0};
  cl_status st = cl_trigger(w->eng, conv, &opts, &res, err);
  cl_trigger_result_clear(&res);
  return st;
}

static cl_status bulk(ct_world *w, const char *tmpl, cl_error *err) {
  const int64_t ids[] = {1, 2, 3};
  cl_bulk_opts opts = {.template_id = tmpl, .rendered_body = "b"};
  cl_bulk_result res = {0};
  cl_status st = cl_bulk_trigger(w->eng, ids, 3, &opts, &res, err);
  cl_bulk_result_clear(&res);
  return st;
}

static void test_connection__engine_recovers_after_session_killed_between_calls(void **state) {
  ct_world *w = *state;
  cl_error err;
  ct_assert_ok(trigger(w, 1, "before", &err), &err);
  ct_assert_ok(bulk(w, "before", &err), &err);

  kill_backend_of(w->eng);
  /* The next call either reconnects transparently or reports the loss. */
  cl_status st = trigger(w, 2, "after", &err);
  if (st != CL_OK) {
    ct_assert_error(st, &err, CL_DB_ERROR, NULL);
    ct_assert_counts(S, 1, 4, 4);
  }
  /* Either way the engine works again, prepared statements included. */
  ct_assert_ok(trigger(w, 3, "again", &err), &err);
  ct_assert_ok(bulk(w, "again", &err), &err);
  assert_int_equal(ct_int("SELECT count(*) FROM %s.cairnloop_messages WHERE "
                          "metadata->>'template_id' = 'again'",
                          S),
                   4);

  kill_backend_of(w->eng);
  st = bulk(w, "after bulk kill", &err);
  if (st != CL_OK) ct_assert_error(st, &err, CL_DB_ERROR, NULL);
  ct_assert_ok(bulk(w, "after bulk kill 2", &err), &err);
}

/* The auditor ends the engine's own session in the middle of the
 * transaction: nothing of the operation may remain. */
static void test_connection__session_lost_mid_transaction_writes_nothing(void **state) {
  ct_world *w = *state;
  ct_auditor a = {0};
  a.mode = CT_AUDIT_EXEC;
  a.sql = "SELECT $1::text, pg_terminate_backend(pg_backend_pid())";
  ct_install_auditor(w->eng, &a);
  cl_error err;
  cl_status st = bulk(w, "doomed", &err);
  if (st != CL_DB_ERROR && st != CL_HOOK_ERROR) {
    fail_msg("expected db_error or hook_error, got %s: %s", cl_status_name(st), err.message);
  }
  ct_assert_error(st, &err, st, NULL);
  ct_assert_counts(S, 0, 0, 0);

  st = trigger(w, 1, "doomed", &err);
  if (st != CL_DB_ERROR && st != CL_HOOK_ERROR) {
    fail_msg("expected db_error or hook_error, got %s: %s", cl_status_name(st), err.message);
  }
  ct_assert_counts(S, 0, 0, 0);

  ct_assert_ok(cl_set_auditor(w->eng, NULL, &err), &err); /* `a` lives on this stack */
  ct_assert_ok(bulk(w, "recovered", &err), &err);
  ct_assert_ok(trigger(w, 5, "recovered", &err), &err);
  ct_assert_counts(S, 1, 4, 4);
  ct_auditor_free(&a);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, ct_world_setup, ct_world_teardown)
  const struct CMUnitTest tests[] = {
      T(test_connection__engine_recovers_after_session_killed_between_calls),
      T(test_connection__session_lost_mid_transaction_writes_nothing),
  };
  return cmocka_run_group_tests_name("connection", tests, NULL, ct_group_teardown);
}
