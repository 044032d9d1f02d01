/*
 * test_hooks.c - the C hook contracts: what the auditor and the actor
 * resolver are given (action, actor, metadata with exactly the documented
 * keys), how the resolved actor and the auditor's reply reach the result,
 * the tx handle expiring after its call, re-entry refused, and hooks
 * released when replaced, removed or at close.
 */
#include "support.h"

#include <jansson.h>
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
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  ct_world_free(f->w);
  ct_auditor_free(&f->auditor);
  ct_resolver_free(&f->resolver);
  free(f);
  return 0;
}

static void assert_json_equal(const char *got, const char *want) {
  assert_non_null(got);
  json_error_t je;
  json_t *a = json_loads(got, JSON_DECODE_ANY, &je);
  json_t *b = json_loads(want, JSON_DECODE_ANY, &je);
  assert_non_null(b);
  if (a == NULL || !json_equal(a, b)) fail_msg("JSON differs: got %s, want %s", got, want);
  json_decref(a);
  json_decref(b);
}

static void test_auditor__trigger_gets_action_actor_and_exact_metadata(void **state) {
  fixture *f = *state;
  f->auditor.reply = "{\"audit_id\": 42, \"note\": \"ok\"}";
  ct_install_auditor(f->w->eng, &f->auditor);
  cl_trigger_opts opts = {.template_id = "recovery_v1", .actor = "operator:7"};
  cl_trigger_result res = {0};
  cl_error err;
  ct_assert_ok(cl_trigger(f->w->eng, 6, &opts, &res, &err), &err);
  assert_int_equal(f->auditor.calls, 1);
  assert_string_equal(f->auditor.action, "outbound_trigger");
  assert_string_equal(f->auditor.actor, "operator:7");
  ct_assert_keys(&f->auditor.metadata, "conversation_id", "template_id");
  ct_assert_int(&f->auditor.metadata, "conversation_id", 6);
  ct_assert_str(&f->auditor.metadata, "template_id", "recovery_v1");
  assert_json_equal(res.audit_json, f->auditor.reply);
  cl_trigger_result_clear(&res);
}

static void test_auditor__bulk_gets_action_actor_and_exact_metadata(void **state) {
  fixture *f = *state;
  f->auditor.reply = "[1, \"two\", {\"three\": null}]";
  ct_install_auditor(f->w->eng, &f->auditor);
  const int64_t ids[] = {1, 2, 3};
  cl_bulk_opts opts = {.template_id = "camp", .rendered_body = "b", .actor = "agent_1"};
  cl_bulk_result res = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(f->w->eng, ids, 3, &opts, &res, &err), &err);
  /* One auditor call for the whole cohort. */
  assert_int_equal(f->auditor.calls, 1);
  assert_string_equal(f->auditor.action, "bulk_outbound_trigger");
  assert_string_equal(f->auditor.actor, "agent_1");
  ct_assert_keys(&f->auditor.metadata, "bulk_envelope_id", "count", "template_id");
  ct_assert_str(&f->auditor.metadata, "bulk_envelope_id", res.envelope.id);
  ct_assert_int(&f->auditor.metadata, "count", 3);
  ct_assert_str(&f->auditor.metadata, "template_id", "camp");
  assert_json_equal(res.audit_json, f->auditor.reply);
  cl_bulk_result_clear(&res);
}

static void test_auditor__without_actor_gets_null(void **state) {
  fixture *f = *state;
  ct_install_auditor(f->w->eng, &f->auditor);
  cl_trigger_opts opts = {.template_id = "t"};
  cl_trigger_result res = {0};
  cl_error err;
  ct_assert_ok(cl_trigger(f->w->eng, 1, &opts, &res, &err), &err);
  assert_null(f->auditor.actor);
  assert_null(res.audit_json);
  cl_trigger_result_clear(&res);
}

static void test_auditor__tx_is_unusable_after_its_call(void **state) {
  fixture *f = *state;
  ct_install_auditor(f->w->eng, &f->auditor);
  cl_trigger_opts opts = {.template_id = "t"};
  cl_trigger_result res = {0};
  cl_error err;
  ct_assert_ok(cl_trigger(f->w->eng, 1, &opts, &res, &err), &err);
  cl_trigger_result_clear(&res);
  assert_non_null(f->auditor.tx);
  cl_rows *rows = (cl_rows *)&err; /* must be reset to NULL by the call */
  ct_assert_error(cl_tx_exec(f->auditor.tx, "SELECT 1", 0, NULL, &rows, &err), &err,
                  CL_INVALID_ARGUMENT, NULL);
  assert_null(rows);
  ct_assert_error(cl_tx_exec(NULL, "SELECT 1", 0, NULL, NULL, &err), &err, CL_INVALID_ARGUMENT,
                  NULL);
}

/* cl_tx_exec binds parameters as text (never interpolated) and returns rows. */
typedef struct rows_probe {
  int ncols, nrows;
  char name0[32], v00[64], v01[64];
  unsigned type0;
  int null11;
  cl_status st;
  cl_error err;
} rows_probe;

static cl_status probe_audit(void *ud, cl_tx *tx, const char *action, const char *actor,
                             const cl_metadata *md, char **audit_json, cl_error *err) {
  (void)action;
  (void)actor;
  (void)md;
  (void)audit_json;
  rows_probe *p = ud;
  const char *params[] = {"'); DROP TABLE x; --", NULL};
  cl_rows *rows = NULL;
  p->st = cl_tx_exec(tx,
                     "SELECT v::text AS first, $1::text AS second FROM (VALUES (1), (2)) t(v) "
                     "UNION ALL SELECT '3', $2::text ORDER BY 1",
                     2, params, &rows, &p->err);
  if (p->st != CL_OK) {
    *err = p->err;
    return p->st;
  }
  p->ncols = cl_rows_columns(rows);
  p->nrows = cl_rows_count(rows);
  snprintf(p->name0, sizeof p->name0, "%s", cl_rows_name(rows, 0));
  snprintf(p->v00, sizeof p->v00, "%s", cl_rows_value(rows, 0, 0));
  snprintf(p->v01, sizeof p->v01, "%s", cl_rows_value(rows, 0, 1));
  p->type0 = cl_rows_type(rows, 0);
  p->null11 = cl_rows_value(rows, 2, 1) == NULL;
  cl_rows_free(rows);
  return CL_OK;
}

static void test_tx_exec__binds_parameters_and_returns_rows(void **state) {
  fixture *f = *state;
  rows_probe probe;
  memset(&probe, 0, sizeof probe);
  cl_auditor hook = {.audit = probe_audit, .ud = &probe};
  cl_error err;
  ct_assert_ok(cl_set_auditor(f->w->eng, &hook, &err), &err);
  cl_trigger_opts opts = {.template_id = "t"};
  cl_trigger_result res = {0};
  ct_assert_ok(cl_trigger(f->w->eng, 1, &opts, &res, &err), &err);
  cl_trigger_result_clear(&res);
  ct_assert_ok(probe.st, &probe.err);
  assert_int_equal(probe.ncols, 2);
  assert_int_equal(probe.nrows, 3);
  assert_string_equal(probe.name0, "first");
  assert_string_equal(probe.v00, "1");
  assert_string_equal(probe.v01, "'); DROP TABLE x; --");
  assert_int_equal(probe.type0, 25); /* text */
  assert_true(probe.null11);
  cl_rows_free(NULL);
}

/* An auditor that fails without saying why still yields one line naming
 * the hook, never an empty message. */
static cl_status silent_audit(void *ud, cl_tx *tx, const char *action, const char *actor,
                              const cl_metadata *md, char **audit_json, cl_error *err) {
  (void)tx;
  (void)action;
  (void)actor;
  (void)md;
  (void)audit_json;
  (void)err;
  cl_status *st = ud;
  return *st;
}

/* Regression: an auditor that failed without filling err left the caller
 * an empty message (fixed in 56f07cd). */
static void test_auditor__failure_without_a_message_still_reports_one_line(void **state) {
  fixture *f = *state;
  const cl_status codes[] = {CL_AUDIT_REJECTED, CL_HOOK_ERROR};
  for (size_t i = 0; i < CT_ARRAY_LEN(codes); i++) {
    cl_status code = codes[i];
    cl_auditor hook = {.audit = silent_audit, .ud = &code};
    cl_error err;
    ct_assert_ok(cl_set_auditor(f->w->eng, &hook, &err), &err);
    cl_trigger_opts opts = {.template_id = "t"};
    cl_trigger_result res = {0};
    memset(&err, 0, sizeof err);
    ct_assert_error(cl_trigger(f->w->eng, 1, &opts, &res, &err), &err, code, NULL);
    cl_trigger_result_clear(&res);
    ct_assert_counts(S, 0, 0, 0);
  }
}

static cl_status silent_resolve(void *ud, const char *actor, const char *action, char **resolved,
                                cl_error *err) {
  (void)actor;
  (void)action;
  (void)resolved;
  (void)err;
  cl_status *st = ud;
  return *st;
}

/* Regression: an actor resolver that failed without filling err left the
 * caller an empty message (fixed in 56f07cd). */
static void test_resolver__failure_without_a_message_still_reports_one_line(void **state) {
  fixture *f = *state;
  const cl_status codes[] = {CL_ACTOR_REJECTED, CL_HOOK_ERROR};
  for (size_t i = 0; i < CT_ARRAY_LEN(codes); i++) {
    cl_status code = codes[i];
    cl_actor_resolver hook = {.resolve = silent_resolve, .ud = &code};
    cl_error err;
    ct_assert_ok(cl_set_actor_resolver(f->w->eng, &hook, &err), &err);
    const int64_t ids[] = {1};
    cl_bulk_opts opts = {.template_id = "t", .rendered_body = "b", .actor = "x"};
    cl_bulk_result res = {0};
    memset(&err, 0, sizeof err);
    ct_assert_error(cl_bulk_trigger(f->w->eng, ids, 1, &opts, &res, &err), &err, code, NULL);
    cl_bulk_result_clear(&res);
    ct_assert_counts(S, 0, 0, 0);
  }
}

static void test_auditor__reentering_the_engine_is_refused(void **state) {
  fixture *f = *state;
  f->auditor.mode = CT_AUDIT_REENTER;
  f->auditor.eng = f->w->eng;
  ct_install_auditor(f->w->eng, &f->auditor);
  cl_trigger_opts opts = {.template_id = "outer"};
  cl_trigger_result res = {0};
  cl_error err;
  ct_assert_ok(cl_trigger(f->w->eng, 2, &opts, &res, &err), &err);
  cl_trigger_result_clear(&res);
  /* The nested call failed loudly instead of running inside the transaction. */
  ct_assert_error(f->auditor.exec_status, &f->auditor.exec_err, CL_HOOK_ERROR, NULL);
  ct_assert_counts(S, 0, 1, 1);
  ct_assert_scalar("outer", "SELECT metadata->>'template_id' FROM %s.cairnloop_messages", S);
}

static void test_resolver__gets_actor_and_action_and_its_answer_is_recorded(void **state) {
  fixture *f = *state;
  f->resolver.mode = CT_RESOLVE_REPLACE;
  f->resolver.replacement = "operator:42";
  ct_install_resolver(f->w->eng, &f->resolver);
  ct_install_auditor(f->w->eng, &f->auditor);

  const int64_t ids[] = {1, 2};
  cl_bulk_opts bopts = {.template_id = "t", .rendered_body = "b", .actor = "token-abc"};
  cl_bulk_result bres = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(f->w->eng, ids, 2, &bopts, &bres, &err), &err);
  assert_string_equal(f->resolver.actor, "token-abc");
  assert_string_equal(f->resolver.action, "bulk_outbound_trigger");
  assert_string_equal(bres.envelope.requested_by, "operator:42");
  assert_string_equal(f->auditor.actor, "operator:42");
  ct_assert_scalar("operator:42", "SELECT requested_by FROM %s.cairnloop_outbound_bulk_envelopes",
                   S);
  cl_bulk_result_clear(&bres);

  cl_trigger_opts topts = {.template_id = "t", .actor = "token-def"};
  cl_trigger_result tres = {0};
  ct_assert_ok(cl_trigger(f->w->eng, 3, &topts, &tres, &err), &err);
  assert_string_equal(f->resolver.actor, "token-def");
  assert_string_equal(f->resolver.action, "outbound_trigger");
  assert_string_equal(f->auditor.actor, "operator:42");
  cl_trigger_result_clear(&tres);
  assert_int_equal(f->resolver.calls, 2);
}

static void test_resolver__may_resolve_to_no_actor(void **state) {
  fixture *f = *state;
  f->resolver.mode = CT_RESOLVE_REPLACE;
  f->resolver.replacement = NULL;
  ct_install_resolver(f->w->eng, &f->resolver);
  const int64_t ids[] = {1};
  cl_bulk_opts opts = {.template_id = "t", .rendered_body = "b", .actor = "system"};
  cl_bulk_result res = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(f->w->eng, ids, 1, &opts, &res, &err), &err);
  assert_null(res.envelope.requested_by);
  ct_assert_scalar(NULL, "SELECT requested_by FROM %s.cairnloop_outbound_bulk_envelopes", S);
  cl_bulk_result_clear(&res);
}

static void test_resolver__is_called_without_an_actor_too(void **state) {
  fixture *f = *state;
  f->resolver.mode = CT_RESOLVE_REPLACE;
  f->resolver.replacement = "system:cron";
  ct_install_resolver(f->w->eng, &f->resolver);
  const int64_t ids[] = {1};
  cl_bulk_opts opts = {.template_id = "t", .rendered_body = "b"};
  cl_bulk_result res = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(f->w->eng, ids, 1, &opts, &res, &err), &err);
  assert_int_equal(f->resolver.calls, 1);
  assert_null(f->resolver.actor);
  assert_string_equal(res.envelope.requested_by, "system:cron");
  cl_bulk_result_clear(&res);
}

static void test_hooks__are_released_when_replaced_removed_or_closed(void **state) {
  fixture *f = *state;
  ct_auditor a1 = {0}, a2 = {0};
  ct_resolver r1 = {0}, r2 = {0};
  cl_error err;
  ct_install_auditor(f->w->eng, &a1);
  ct_install_auditor(f->w->eng, &a2);
  assert_int_equal(a1.released, 1);
  assert_int_equal(a2.released, 0);
  ct_assert_ok(cl_set_auditor(f->w->eng, NULL, &err), &err);
  assert_int_equal(a2.released, 1);

  /* Without an auditor the operation runs and audit is NULL. */
  cl_trigger_opts opts = {.template_id = "t"};
  cl_trigger_result res = {0};
  ct_assert_ok(cl_trigger(f->w->eng, 1, &opts, &res, &err), &err);
  assert_null(res.audit_json);
  assert_int_equal(a2.calls, 0);
  cl_trigger_result_clear(&res);

  ct_install_resolver(f->w->eng, &r1);
  ct_install_resolver(f->w->eng, &r2);
  assert_int_equal(r1.released, 1);
  ct_install_auditor(f->w->eng, &a1);
  cl_close(f->w->eng);
  f->w->eng = NULL;
  assert_int_equal(r2.released, 1);
  assert_int_equal(a1.released, 2);
  ct_auditor_free(&a1);
  ct_auditor_free(&a2);
  ct_resolver_free(&r1);
  ct_resolver_free(&r2);
}

static void test_hooks__incomplete_hooks_are_refused(void **state) {
  fixture *f = *state;
  cl_error err;
  cl_auditor no_audit = {0};
  ct_assert_error(cl_set_auditor(f->w->eng, &no_audit, &err), &err, CL_INVALID_ARGUMENT, NULL);
  cl_actor_resolver no_resolve = {0};
  ct_assert_error(cl_set_actor_resolver(f->w->eng, &no_resolve, &err), &err, CL_INVALID_ARGUMENT,
                  NULL);
}

static void test_audit_events__without_auditor_is_an_empty_list(void **state) {
  fixture *f = *state;
  char *json = NULL;
  cl_error err;
  ct_assert_ok(cl_audit_events(f->w->eng, "{}", &json, &err), &err);
  assert_json_equal(json, "[]");
  free(json);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_auditor__trigger_gets_action_actor_and_exact_metadata),
      T(test_auditor__bulk_gets_action_actor_and_exact_metadata),
      T(test_auditor__without_actor_gets_null),
      T(test_auditor__tx_is_unusable_after_its_call),
      T(test_tx_exec__binds_parameters_and_returns_rows),
      T(test_auditor__failure_without_a_message_still_reports_one_line),
      T(test_resolver__failure_without_a_message_still_reports_one_line),
      T(test_auditor__reentering_the_engine_is_refused),
      T(test_resolver__gets_actor_and_action_and_its_answer_is_recorded),
      T(test_resolver__may_resolve_to_no_actor),
      T(test_resolver__is_called_without_an_actor_too),
      T(test_hooks__are_released_when_replaced_removed_or_closed),
      T(test_hooks__incomplete_hooks_are_refused),
      T(test_audit_events__without_auditor_is_an_empty_list),
  };
  return cmocka_run_group_tests_name("hooks", tests, NULL, ct_group_teardown);
}
