/*
 * test_atomicity.c - all or nothing: an unknown conversation, an auditor
 * that refuses or fails, an SQL error inside the auditor's transaction, a
 * failing insert and a rejecting actor resolver each leave no envelope, no
 * message and no job; an auditor's own write through cl_tx_exec commits
 * with the operation, and sees the operation's rows.
 */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S CT_SCHEMA

typedef struct fixture {
  ct_world *w;
  ct_auditor auditor;
  ct_resolver resolver;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  f->w = ct_world_new(10, NULL);
  ct_exec("CREATE TABLE IF NOT EXISTS %s.cl_test_audit (action text, seen_messages bigint, "
          "seen_jobs bigint, seen_envelopes bigint)",
          S);
  ct_exec("TRUNCATE %s.cl_test_audit", S);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  ct_world_free(f->w);
  ct_auditor_free(&f->auditor);
  ct_resolver_free(&f->resolver);
  free(f);
  ct_exec("DROP TABLE IF EXISTS %s.cl_test_audit", S);
  ct_exec("DROP TRIGGER IF EXISTS fail_inserts ON %s.cairnloop_messages", S);
  ct_exec("DROP FUNCTION IF EXISTS %s.fail_inserts()", S);
  return 0;
}

/* The auditor records what the transaction holds when it runs. */
#define AUDIT_INSERT                                                             \
  "INSERT INTO " S ".cl_test_audit SELECT $1, (SELECT count(*) FROM " S          \
  ".cairnloop_messages), (SELECT count(*) FROM " S ".cairnloop_delivery_jobs), " \
  "(SELECT count(*) FROM " S ".cairnloop_outbound_bulk_envelopes)"

static const int64_t cohort[] = {1, 2, 3, 4};

static cl_status do_bulk(fixture *f, const int64_t *ids, size_t n, cl_error *err) {
  cl_bulk_opts opts = {.template_id = "t", .rendered_body = "b", .actor = "op"};
  cl_bulk_result res = {0};
  cl_status st = cl_bulk_trigger(f->w->eng, ids, n, &opts, &res, err);
  cl_bulk_result_clear(&res);
  return st;
}

static cl_status do_trigger(fixture *f, int64_t conv, cl_error *err) {
  cl_trigger_opts opts = {.template_id = "t", .actor = "op"};
  cl_trigger_result res = {0};
  cl_status st = cl_trigger(f->w->eng, conv, &opts, &res, err);
  cl_trigger_result_clear(&res);
  return st;
}

/* ---------------------------------------------------- unknown conversation */

/* Regression: a statement prepared in the same pipeline as a first run that
 * failed was not remembered as prepared, so the next call's PREPARE
 * collided with it and failed too (fixed in 56f07cd). */
static void test_bulk_trigger__unknown_id_mid_cohort_writes_nothing(void **state) {
  fixture *f = *state;
  const int64_t ids[] = {1, 2, 999, 3};
  cl_error err;
  ct_assert_error(do_bulk(f, ids, 4, &err), &err, CL_UNKNOWN_CONVERSATION, NULL);
  assert_string_equal(err.message, "conversation 999 does not exist");
  ct_assert_counts(S, 0, 0, 0);
  /* The engine is still usable after the rollback. */
  cl_error err2;
  ct_assert_ok(do_bulk(f, cohort, 4, &err2), &err2);
  ct_assert_counts(S, 1, 4, 4);
}

static void test_bulk_trigger__unknown_id_last_in_large_cohort_writes_nothing(void **state) {
  fixture *f = *state;
  /* 24 known conversations, then one that is not: the whole cap's worth of
   * rows must be undone. */
  int64_t ids[25];
  ct_reset(S);
  ct_seed(S, 24);
  for (int i = 0; i < 24; i++) ids[i] = i + 1;
  ids[24] = 5000;
  cl_error err;
  ct_assert_ok(cl_set_max_batch_size(f->w->eng, 25, &err), &err);
  ct_assert_error(do_bulk(f, ids, 25, &err), &err, CL_UNKNOWN_CONVERSATION, NULL);
  assert_string_equal(err.message, "conversation 5000 does not exist");
  ct_assert_counts(S, 0, 0, 0);
}

static void test_trigger__unknown_conversation_writes_nothing(void **state) {
  fixture *f = *state;
  cl_error err;
  ct_assert_error(do_trigger(f, 999, &err), &err, CL_UNKNOWN_CONVERSATION, NULL);
  assert_string_equal(err.message, "conversation 999 does not exist");
  ct_assert_counts(S, 0, 0, 0);
}

/* --------------------------------------------------------------- auditor */

static void test_bulk_trigger__auditor_rejection_rolls_back(void **state) {
  fixture *f = *state;
  f->auditor.mode = CT_AUDIT_REJECT;
  f->auditor.reason = "cohort not approved";
  ct_install_auditor(f->w->eng, &f->auditor);
  cl_error err;
  ct_assert_error(do_bulk(f, cohort, 4, &err), &err, CL_AUDIT_REJECTED, "cohort not approved");
  assert_int_equal(f->auditor.calls, 1);
  ct_assert_counts(S, 0, 0, 0);
}

static void test_trigger__auditor_rejection_rolls_back(void **state) {
  fixture *f = *state;
  f->auditor.mode = CT_AUDIT_REJECT;
  f->auditor.reason = "not today";
  ct_install_auditor(f->w->eng, &f->auditor);
  cl_error err;
  ct_assert_error(do_trigger(f, 2, &err), &err, CL_AUDIT_REJECTED, "not today");
  assert_int_equal(f->auditor.calls, 1);
  ct_assert_counts(S, 0, 0, 0);
}

static void test_bulk_trigger__auditor_hook_error_rolls_back(void **state) {
  fixture *f = *state;
  f->auditor.mode = CT_AUDIT_HOOK_ERROR;
  f->auditor.reason = "auditor exploded";
  ct_install_auditor(f->w->eng, &f->auditor);
  cl_error err;
  ct_assert_error(do_bulk(f, cohort, 4, &err), &err, CL_HOOK_ERROR, "auditor exploded");
  ct_assert_counts(S, 0, 0, 0);
}

static void test_trigger__auditor_hook_error_rolls_back(void **state) {
  fixture *f = *state;
  f->auditor.mode = CT_AUDIT_HOOK_ERROR;
  f->auditor.reason = "auditor exploded";
  ct_install_auditor(f->w->eng, &f->auditor);
  cl_error err;
  ct_assert_error(do_trigger(f, 2, &err), &err, CL_HOOK_ERROR, "auditor exploded");
  ct_assert_counts(S, 0, 0, 0);
}

static void test_bulk_trigger__auditor_write_commits_with_the_operation(void **state) {
  fixture *f = *state;
  f->auditor.mode = CT_AUDIT_EXEC;
  f->auditor.sql = AUDIT_INSERT;
  ct_install_auditor(f->w->eng, &f->auditor);
  cl_error err;
  ct_assert_ok(do_bulk(f, cohort, 4, &err), &err);
  ct_assert_ok(f->auditor.exec_status, &f->auditor.exec_err);
  ct_assert_counts(S, 1, 4, 4);
  /* It ran after the inserts, inside the same transaction. */
  ct_assert_scalar("bulk_outbound_trigger|4|4|1",
                   "SELECT concat_ws('|', action, seen_messages, "
                   "seen_jobs, seen_envelopes) FROM %s.cl_test_audit",
                   S);
}

static void test_trigger__auditor_write_commits_with_the_operation(void **state) {
  fixture *f = *state;
  f->auditor.mode = CT_AUDIT_EXEC;
  f->auditor.sql = AUDIT_INSERT;
  ct_install_auditor(f->w->eng, &f->auditor);
  cl_error err;
  ct_assert_ok(do_trigger(f, 3, &err), &err);
  ct_assert_counts(S, 0, 1, 1);
  ct_assert_scalar("outbound_trigger|1|1|0",
                   "SELECT concat_ws('|', action, seen_messages, "
                   "seen_jobs, seen_envelopes) FROM %s.cl_test_audit",
                   S);
}

static void test_bulk_trigger__auditor_write_rolls_back_with_a_rejection(void **state) {
  fixture *f = *state;
  f->auditor.mode = CT_AUDIT_EXEC_REJECT;
  f->auditor.sql = AUDIT_INSERT;
  f->auditor.reason = "no";
  ct_install_auditor(f->w->eng, &f->auditor);
  cl_error err;
  ct_assert_error(do_bulk(f, cohort, 4, &err), &err, CL_AUDIT_REJECTED, "no");
  ct_assert_ok(f->auditor.exec_status, &f->auditor.exec_err);
  ct_assert_counts(S, 0, 0, 0);
  assert_int_equal(ct_rows(S, "cl_test_audit"), 0);
}

static void test_bulk_trigger__auditor_sql_error_rolls_back(void **state) {
  fixture *f = *state;
  f->auditor.mode = CT_AUDIT_EXEC;
  f->auditor.sql = "INSERT INTO " S ".no_such_table VALUES ($1)";
  ct_install_auditor(f->w->eng, &f->auditor);
  cl_error err;
  cl_status st = do_bulk(f, cohort, 4, &err);
  assert_int_equal(f->auditor.exec_status, CL_DB_ERROR);
  assert_non_null(strstr(f->auditor.exec_err.message, "no_such_table"));
  if (st != CL_HOOK_ERROR && st != CL_DB_ERROR) {
    fail_msg("expected hook_error or db_error, got %s: %s", cl_status_name(st), err.message);
  }
  ct_assert_error(st, &err, st, NULL);
  ct_assert_counts(S, 0, 0, 0);
}

/* An auditor that swallows its SQL error cannot commit a transaction the
 * server has already aborted: the operation still fails and writes nothing. */
static void test_bulk_trigger__auditor_ignoring_sql_error_still_rolls_back(void **state) {
  fixture *f = *state;
  f->auditor.mode = CT_AUDIT_EXEC_IGNORE;
  f->auditor.sql = "SELECT 1 / 0";
  ct_install_auditor(f->w->eng, &f->auditor);
  cl_error err;
  cl_status st = do_bulk(f, cohort, 4, &err);
  assert_int_equal(f->auditor.exec_status, CL_DB_ERROR);
  if (st != CL_HOOK_ERROR && st != CL_DB_ERROR) {
    fail_msg("expected hook_error or db_error, got %s: %s", cl_status_name(st), err.message);
  }
  ct_assert_counts(S, 0, 0, 0);
  /* And the connection is clean for the next call. */
  f->auditor.mode = CT_AUDIT_ACCEPT;
  ct_assert_ok(do_bulk(f, cohort, 4, &err), &err);
  ct_assert_counts(S, 1, 4, 4);
}

static void test_trigger__auditor_sql_error_rolls_back(void **state) {
  fixture *f = *state;
  f->auditor.mode = CT_AUDIT_EXEC_IGNORE;
  f->auditor.sql = "SELECT $1::int";
  ct_install_auditor(f->w->eng, &f->auditor);
  cl_error err;
  cl_status st = do_trigger(f, 4, &err);
  assert_int_equal(f->auditor.exec_status, CL_DB_ERROR);
  if (st != CL_HOOK_ERROR && st != CL_DB_ERROR) {
    fail_msg("expected hook_error or db_error, got %s: %s", cl_status_name(st), err.message);
  }
  ct_assert_counts(S, 0, 0, 0);
}

/* ------------------------------------------------------- database errors */

static void install_failing_insert(void) {
  ct_exec("CREATE FUNCTION %s.fail_inserts() RETURNS trigger LANGUAGE plpgsql AS $$ "
          "BEGIN IF NEW.conversation_id = 3 THEN RAISE EXCEPTION 'no messages for 3'; END IF; "
          "RETURN NEW; END $$",
          S);
  ct_exec("CREATE TRIGGER fail_inserts BEFORE INSERT ON %s.cairnloop_messages "
          "FOR EACH ROW EXECUTE FUNCTION %s.fail_inserts()",
          S, S);
}

/* Regression: a statement prepared in the same pipeline as a first run that
 * failed was not remembered as prepared, so the next call's PREPARE
 * collided with it and failed too (fixed in 56f07cd). */
static void test_bulk_trigger__failing_insert_is_db_error_and_rolls_back(void **state) {
  fixture *f = *state;
  install_failing_insert();
  cl_error err;
  ct_assert_error(do_bulk(f, cohort, 4, &err), &err, CL_DB_ERROR, NULL);
  ct_assert_counts(S, 0, 0, 0);
  const int64_t others[] = {1, 2, 4};
  ct_assert_ok(do_bulk(f, others, 3, &err), &err);
  ct_assert_counts(S, 1, 3, 3);
}

/* Regression: a statement prepared in the same pipeline as a first run that
 * failed was not remembered as prepared, so the next call's PREPARE
 * collided with it and failed too (fixed in 56f07cd). */
static void test_trigger__failing_insert_is_db_error_and_rolls_back(void **state) {
  fixture *f = *state;
  install_failing_insert();
  cl_error err;
  ct_assert_error(do_trigger(f, 3, &err), &err, CL_DB_ERROR, NULL);
  ct_assert_counts(S, 0, 0, 0);
  ct_assert_ok(do_trigger(f, 2, &err), &err);
  ct_assert_counts(S, 0, 1, 1);
}

/* -------------------------------------------------------- actor resolver */

static void test_bulk_trigger__actor_rejection_writes_nothing_and_emits_nothing(void **state) {
  fixture *f = *state;
  f->resolver.mode = CT_RESOLVE_REJECT;
  f->resolver.reason = "operator:7 is suspended";
  ct_install_resolver(f->w->eng, &f->resolver);
  f->auditor.mode = CT_AUDIT_ACCEPT;
  ct_install_auditor(f->w->eng, &f->auditor);
  cl_error err;
  ct_assert_error(do_bulk(f, cohort, 4, &err), &err, CL_ACTOR_REJECTED, "operator:7 is suspended");
  ct_assert_counts(S, 0, 0, 0);
  assert_int_equal(f->w->cap.count, 0);
  assert_int_equal(f->auditor.calls, 0);
  assert_int_equal(f->resolver.calls, 1);

  /* Also over the cap: the actor is resolved before the cap is read, so no
   * refused envelope is stored for a rejected actor. */
  ct_assert_ok(cl_set_max_batch_size(f->w->eng, 2, &err), &err);
  ct_assert_error(do_bulk(f, cohort, 4, &err), &err, CL_ACTOR_REJECTED, NULL);
  ct_assert_counts(S, 0, 0, 0);
  assert_int_equal(f->w->cap.count, 0);
}

static void test_trigger__actor_rejection_writes_nothing_and_emits_nothing(void **state) {
  fixture *f = *state;
  f->resolver.mode = CT_RESOLVE_REJECT;
  f->resolver.reason = "unknown operator";
  ct_install_resolver(f->w->eng, &f->resolver);
  cl_error err;
  ct_assert_error(do_trigger(f, 1, &err), &err, CL_ACTOR_REJECTED, "unknown operator");
  ct_assert_counts(S, 0, 0, 0);
  assert_int_equal(f->w->cap.count, 0);
}

static void test_bulk_trigger__resolver_hook_error_writes_nothing(void **state) {
  fixture *f = *state;
  f->resolver.mode = CT_RESOLVE_HOOK_ERROR;
  f->resolver.reason = "directory unavailable";
  ct_install_resolver(f->w->eng, &f->resolver);
  cl_error err;
  ct_assert_error(do_bulk(f, cohort, 4, &err), &err, CL_HOOK_ERROR, "directory unavailable");
  ct_assert_counts(S, 0, 0, 0);
  ct_assert_error(do_trigger(f, 1, &err), &err, CL_HOOK_ERROR, "directory unavailable");
  ct_assert_counts(S, 0, 0, 0);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_bulk_trigger__unknown_id_mid_cohort_writes_nothing),
      T(test_bulk_trigger__unknown_id_last_in_large_cohort_writes_nothing),
      T(test_trigger__unknown_conversation_writes_nothing),
      T(test_bulk_trigger__auditor_rejection_rolls_back),
      T(test_trigger__auditor_rejection_rolls_back),
      T(test_bulk_trigger__auditor_hook_error_rolls_back),
      T(test_trigger__auditor_hook_error_rolls_back),
      T(test_bulk_trigger__auditor_write_commits_with_the_operation),
      T(test_trigger__auditor_write_commits_with_the_operation),
      T(test_bulk_trigger__auditor_write_rolls_back_with_a_rejection),
      T(test_bulk_trigger__auditor_sql_error_rolls_back),
      T(test_bulk_trigger__auditor_ignoring_sql_error_still_rolls_back),
      T(test_trigger__auditor_sql_error_rolls_back),
      T(test_bulk_trigger__failing_insert_is_db_error_and_rolls_back),
      T(test_trigger__failing_insert_is_db_error_and_rolls_back),
      T(test_bulk_trigger__actor_rejection_writes_nothing_and_emits_nothing),
      T(test_trigger__actor_rejection_writes_nothing_and_emits_nothing),
      T(test_bulk_trigger__resolver_hook_error_writes_nothing),
  };
  return cmocka_run_group_tests_name("atomicity", tests, NULL, ct_group_teardown);
}
