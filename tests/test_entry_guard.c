/*
 * test_entry_guard.c - the one entry guard of the public API (CL__ENTER)
 * and the database layer's check behind it.
 *
 * Every public function taking an engine refuses a NULL engine with
 * CL_INVALID_ARGUMENT (or returns its documented NULL result) and does not
 * crash; every one refuses a call from inside the engine's own hooks
 * (auditor, actor resolver, notifier) with CL_HOOK_ERROR naming itself.
 * A hook that tries anyway leaves nothing written when the operation is
 * refused, and the connection usable for the next call.  Below the
 * guard, db.c refuses anything but the auditor's own statements while the
 * audited transaction is open, and rolls that transaction back.
 * Uses the internals engine.h and db.h for that last part only.
 */
#include "support.h"

#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S CT_SCHEMA

/* ------------------------------------------------------------------ */
/* Probes: one call of each guarded entry, with otherwise valid arguments */
/* ------------------------------------------------------------------ */

typedef cl_status (*probe_fn)(cl_engine *eng, cl_error *err);

typedef struct probe {
  const char *name; /* the function, as the guard's message names it */
  probe_fn call;
} probe;

#define SOME_UUID "0b7c3e9a-5f1d-4c2a-9e8b-3d6f1a2b4c5d"

static cl_status p_migrate(cl_engine *eng, cl_error *err) { return cl_migrate(eng, err); }

static cl_status p_set_max_batch_size(cl_engine *eng, cl_error *err) {
  return cl_set_max_batch_size(eng, 3, err);
}

static cl_status p_set_auditor(cl_engine *eng, cl_error *err) {
  return cl_set_auditor(eng, NULL, err);
}

static cl_status p_set_actor_resolver(cl_engine *eng, cl_error *err) {
  return cl_set_actor_resolver(eng, NULL, err);
}

static cl_status p_set_notifier(cl_engine *eng, cl_error *err) {
  return cl_set_notifier(eng, NULL, err);
}

static cl_status p_trigger(cl_engine *eng, cl_error *err) {
  cl_trigger_opts opts = {.template_id = "inner"};
  cl_trigger_result res;
  memset(&res, 0xff, sizeof res); /* the call must clear it, refused or not */
  cl_status st = cl_trigger(eng, 2, &opts, &res, err);
  assert_null(res.priv_);
  cl_trigger_result_clear(&res);
  return st;
}

static cl_status p_bulk_trigger(cl_engine *eng, cl_error *err) {
  const int64_t ids[] = {2, 3};
  cl_bulk_opts opts = {.template_id = "inner", .rendered_body = "b"};
  cl_bulk_result res;
  memset(&res, 0xff, sizeof res);
  cl_status st = cl_bulk_trigger(eng, ids, CT_ARRAY_LEN(ids), &opts, &res, err);
  assert_null(res.priv_);
  cl_bulk_result_clear(&res);
  return st;
}

static cl_status p_work(cl_engine *eng, cl_error *err) {
  cl_work_stats stats;
  return cl_work(eng, 1, &stats, err);
}

static cl_status p_work_batch(cl_engine *eng, cl_error *err) {
  cl_work_stats stats;
  cl_batch_info batch;
  return cl_work_batch(eng, 1, NULL, &stats, &batch, err);
}

static cl_status p_work_run(cl_engine *eng, cl_error *err) {
  cl_work_stats stats;
  cl_work_options o = {.limit = 1, .concurrency = 4};
  return cl_work_run(eng, &o, &stats, NULL, err);
}

static void p_noop_start(void *ud, cl_delivery *d, const cl_message *m, const cl_conversation *c,
                         const char *key, int attempt) {
  (void)ud, (void)m, (void)c, (void)key, (void)attempt;
  cl_delivery_done(d, NULL);
}
static void p_noop_poll(void *ud, int timeout_ms) { (void)ud, (void)timeout_ms; }

static cl_status p_set_async_notifier(cl_engine *eng, cl_error *err) {
  cl_async_notifier n = {p_noop_start, p_noop_poll, NULL, NULL};
  return cl_set_async_notifier(eng, &n, err);
}

static cl_status p_work_wait(cl_engine *eng, cl_error *err) {
  cl_wake why;
  return cl_work_wait(eng, 0, -1, &why, err);
}

static cl_status p_envelope_get(cl_engine *eng, cl_error *err) {
  cl_envelope_list list;
  memset(&list, 0xff, sizeof list);
  cl_status st = cl_envelope_get(eng, SOME_UUID, &list, err);
  assert_null(list.priv_);
  cl_envelope_list_clear(&list);
  return st;
}

static cl_status p_envelopes_list(cl_engine *eng, cl_error *err) {
  cl_envelope_list list;
  memset(&list, 0xff, sizeof list);
  cl_status st = cl_envelopes_list(eng, NULL, &list, err);
  assert_null(list.priv_);
  cl_envelope_list_clear(&list);
  return st;
}

static cl_status p_query(cl_engine *eng, cl_error *err) {
  cl_rows *rows = (cl_rows *)&rows; /* must be reset to NULL when refused */
  cl_status st = cl_query(eng, "SELECT 1", 0, NULL, &rows, err);
  if (st != CL_OK) assert_null(rows);
  cl_rows_free(rows);
  return st;
}

static cl_status p_audit_events(cl_engine *eng, cl_error *err) {
  char *json = (char *)&json;
  cl_status st = cl_audit_events(eng, "{}", &json, err);
  if (st != CL_OK) assert_null(json);
  free(st == CL_OK ? json : NULL);
  return st;
}

/*
 * Every public entry that takes an engine and goes through the guard.
 * Not listed: cl_attach, cl_attach_many (telemetry.c) and cl_load_policy
 * (policy.c), which check the engine and re-entry on their own and do not
 * go through the guard.
 */
static const probe probes[] = {
    {"cl_migrate", p_migrate},
    {"cl_set_max_batch_size", p_set_max_batch_size},
    {"cl_set_auditor", p_set_auditor},
    {"cl_set_actor_resolver", p_set_actor_resolver},
    {"cl_set_notifier", p_set_notifier},
    {"cl_trigger", p_trigger},
    {"cl_bulk_trigger", p_bulk_trigger},
    {"cl_work", p_work},
    {"cl_work_batch", p_work_batch},
    {"cl_work_run", p_work_run},
    {"cl_set_async_notifier", p_set_async_notifier},
    {"cl_work_wait", p_work_wait},
    {"cl_envelope_get", p_envelope_get},
    {"cl_envelopes_list", p_envelopes_list},
    {"cl_query", p_query},
    {"cl_audit_events", p_audit_events},
};
#define NPROBES CT_ARRAY_LEN(probes)

/* ------------------------------------------------------------------ */
/* Hooks that run probes from inside themselves                        */
/* ------------------------------------------------------------------ */

/* What a hook does: run `probes` (all of the table when NULL) against
 * `eng`, record each status and message, then answer `verdict`. */
typedef struct inner {
  cl_engine *eng;
  const probe *probes;
  size_t nprobes;
  cl_status verdict; /* CL_OK or CL_AUDIT_REJECTED */
  bool close_too;    /* then call cl_close(eng), which must be ignored */
  int calls;
  cl_status status[NPROBES];
  cl_error errs[NPROBES];
} inner;

static void run_probes(inner *in) {
  in->calls++;
  const probe *list = in->probes ? in->probes : probes;
  size_t n = in->probes ? in->nprobes : NPROBES;
  for (size_t i = 0; i < n; i++) {
    memset(&in->errs[i], 0, sizeof in->errs[i]);
    in->status[i] = list[i].call(in->eng, &in->errs[i]);
  }
  if (in->close_too) cl_close(in->eng);
}

/* Asserts every probe of the last call was refused as re-entry. */
static void assert_all_refused(const inner *in) {
  const probe *list = in->probes ? in->probes : probes;
  size_t n = in->probes ? in->nprobes : NPROBES;
  assert_true(in->calls > 0);
  for (size_t i = 0; i < n; i++) {
    if (in->status[i] != CL_HOOK_ERROR)
      fail_msg("%s from inside a hook: expected hook_error, got %s (%s)", list[i].name,
               cl_status_name(in->status[i]), in->errs[i].message);
    ct_assert_error(in->status[i], &in->errs[i], CL_HOOK_ERROR, list[i].name);
  }
}

static cl_status audit_cb(void *ud, cl_tx *tx, const char *action, const char *actor,
                          const cl_metadata *md, char **audit_json, cl_error *err) {
  (void)tx, (void)action, (void)actor, (void)md, (void)audit_json;
  inner *in = ud;
  run_probes(in);
  if (in->verdict == CL_OK) return CL_OK;
  snprintf(err->message, sizeof err->message, "refused after reading");
  err->code = in->verdict;
  return in->verdict;
}

static void install_auditor(cl_engine *eng, inner *in) {
  cl_auditor a = {.audit = audit_cb, .ud = in};
  cl_error err;
  ct_assert_ok(cl_set_auditor(eng, &a, &err), &err);
}

static cl_status resolve_cb(void *ud, const char *actor, const char *action, char **resolved,
                            cl_error *err) {
  (void)action, (void)err;
  run_probes(ud);
  *resolved = actor ? strdup(actor) : NULL;
  return CL_OK;
}

static cl_status deliver_cb(void *ud, const cl_message *m, const cl_conversation *c,
                            const char *key, int attempt, cl_error *err) {
  (void)m, (void)c, (void)key, (void)attempt, (void)err;
  run_probes(ud);
  return CL_OK;
}

static void trigger_ok(cl_engine *eng, int64_t conversation, const char *template_id) {
  cl_trigger_opts opts = {.template_id = template_id};
  cl_trigger_result res = {0};
  cl_error err;
  ct_assert_ok(cl_trigger(eng, conversation, &opts, &res, &err), &err);
  cl_trigger_result_clear(&res);
}

static int setup(void **state) {
  *state = ct_world_new(10, NULL);
  return 0;
}

static int teardown(void **state) {
  ct_world_free(*state);
  return 0;
}

/* ------------------------------------------------------------------ */
/* A NULL engine                                                        */
/* ------------------------------------------------------------------ */

/* Every guarded entry refuses a NULL engine with invalid_argument naming
 * itself, with or without an error struct, and clears its outputs. */
static void test_entry_guard__null_engine_is_invalid_argument_everywhere(void **state) {
  (void)state;
  for (size_t i = 0; i < NPROBES; i++) {
    cl_error err;
    memset(&err, 0, sizeof err);
    cl_status st = probes[i].call(NULL, &err);
    if (st != CL_INVALID_ARGUMENT)
      fail_msg("%s(NULL): expected invalid_argument, got %s", probes[i].name, cl_status_name(st));
    ct_assert_error(st, &err, CL_INVALID_ARGUMENT, probes[i].name);
    assert_int_equal(probes[i].call(NULL, NULL), CL_INVALID_ARGUMENT);
  }
  cl_error err;
  ct_assert_error(cl_tx_exec(NULL, "SELECT 1", 0, NULL, NULL, &err), &err, CL_INVALID_ARGUMENT,
                  NULL);
}

/* The entries that return no status have documented NULL results. */
static void test_entry_guard__null_engine_gives_the_documented_null_results(void **state) {
  (void)state;
  assert_int_equal(cl_max_batch_size(NULL), 0);
  assert_null(cl_schema(NULL));
  assert_int_equal(cl_detach(NULL, "any"), 0);
  cl_log(NULL, CL_LOG_ERROR, "nobody hears this");
  cl_close(NULL);
}

/* Result clear functions and the cl_rows accessors accept NULL, and a
 * clear may be repeated. */
static void test_entry_guard__clear_functions_and_rows_are_null_safe(void **state) {
  (void)state;
  cl_trigger_result_clear(NULL);
  cl_bulk_result_clear(NULL);
  cl_envelope_list_clear(NULL);
  cl_rows_free(NULL);
  assert_int_equal(cl_rows_count(NULL), 0);
  assert_int_equal(cl_rows_columns(NULL), 0);
  assert_null(cl_rows_name(NULL, 0));
  assert_int_equal(cl_rows_type(NULL, 0), 0);
  assert_null(cl_rows_value(NULL, 0, 0));

  cl_trigger_result t = {0};
  cl_bulk_result b = {0};
  cl_envelope_list l = {0};
  for (int i = 0; i < 2; i++) {
    cl_trigger_result_clear(&t);
    cl_bulk_result_clear(&b);
    cl_envelope_list_clear(&l);
  }
}

/* cl_work_wait wrote through `why` before checking anything: a NULL
 * engine or a NULL `why` crashed instead of being refused. */
static void test_entry_guard__work_wait_refuses_a_null_why(void **state) {
  ct_world *w = *state;
  cl_error err;
  ct_assert_error(cl_work_wait(w->eng, 0, -1, NULL, &err), &err, CL_INVALID_ARGUMENT, NULL);
  ct_assert_error(cl_work_wait(NULL, 0, -1, NULL, &err), &err, CL_INVALID_ARGUMENT, NULL);
}

/* ------------------------------------------------------------------ */
/* Re-entry from the engine's own hooks                                */
/* ------------------------------------------------------------------ */

/* From inside a C auditor every entry is refused (hook_error, naming
 * the function), cl_close is ignored, and the operation itself completes
 * with exactly its own rows: the refused trigger and bulk wrote nothing,
 * the refused setters changed nothing. */
static void test_entry_guard__every_entry_refuses_a_call_from_an_auditor(void **state) {
  ct_world *w = *state;
  inner in = {.eng = w->eng, .verdict = CL_OK, .close_too = true};
  install_auditor(w->eng, &in);
  int cap = cl_max_batch_size(w->eng);
  trigger_ok(w->eng, 1, "outer");
  assert_int_equal(in.calls, 1);
  assert_all_refused(&in);
  ct_assert_counts(S, 0, 1, 1);
  ct_assert_scalar("outer", "SELECT metadata->>'template_id' FROM %s.cairnloop_messages", S);
  assert_int_equal(cl_max_batch_size(w->eng), cap);
  assert_int_equal(ct_log_count(&w->log, CL_LOG_ERROR, "cl_close"), 1);
  /* Still open, the auditor still installed. */
  trigger_ok(w->eng, 2, "again");
  assert_int_equal(in.calls, 2);
  ct_assert_counts(S, 0, 2, 2);
}

/* The same from inside the actor resolver, which runs before the
 * transaction: refused all the same, and the operation goes on. */
static void test_entry_guard__every_entry_refuses_a_call_from_an_actor_resolver(void **state) {
  ct_world *w = *state;
  inner in = {.eng = w->eng};
  cl_actor_resolver r = {.resolve = resolve_cb, .ud = &in};
  cl_error err;
  ct_assert_ok(cl_set_actor_resolver(w->eng, &r, &err), &err);
  trigger_ok(w->eng, 1, "outer");
  assert_all_refused(&in);
  ct_assert_counts(S, 0, 1, 1);
}

/* From inside a notifier every entry is refused too, the cl_work
 * functions included (a nested batch would claim the jobs being
 * delivered); the delivery itself completes. */
static void test_entry_guard__every_entry_refuses_a_call_from_a_notifier(void **state) {
  ct_world *w = *state;
  trigger_ok(w->eng, 1, "t");
  inner in = {.eng = w->eng};
  cl_notifier n = {.deliver = deliver_cb, .ud = &in};
  cl_error err;
  ct_assert_ok(cl_set_notifier(w->eng, &n, &err), &err);
  cl_work_stats stats;
  ct_assert_ok(cl_work(w->eng, 10, &stats, &err), &err);
  assert_int_equal(in.calls, 1);
  assert_all_refused(&in);
  assert_int_equal(stats.sent, 1);
  ct_assert_counts(S, 0, 1, 1);
  ct_assert_scalar("completed", "SELECT state FROM %s.cairnloop_delivery_jobs", S);
}

/* ------------------------------------------------------------------ */
/* The bug: reads from inside the auditor's transaction                */
/* ------------------------------------------------------------------ */

/*
 * Runs a trigger (or a bulk) whose C auditor calls `p` and then rejects,
 * and checks the outcome: audit_rejected, the read refused, nothing
 * written; then the same engine triggers successfully.
 */
static void read_then_reject(ct_world *w, const probe *p, bool bulk) {
  inner in = {.eng = w->eng, .probes = p, .nprobes = 1, .verdict = CL_AUDIT_REJECTED};
  install_auditor(w->eng, &in);
  cl_error err;
  if (bulk) {
    const int64_t ids[] = {1, 2, 3};
    cl_bulk_opts opts = {.template_id = "camp", .rendered_body = "b"};
    cl_bulk_result res = {0};
    ct_assert_error(cl_bulk_trigger(w->eng, ids, CT_ARRAY_LEN(ids), &opts, &res, &err), &err,
                    CL_AUDIT_REJECTED, "refused after reading");
    cl_bulk_result_clear(&res);
  } else {
    cl_trigger_opts opts = {.template_id = "t"};
    cl_trigger_result res = {0};
    ct_assert_error(cl_trigger(w->eng, 1, &opts, &res, &err), &err, CL_AUDIT_REJECTED,
                    "refused after reading");
    cl_trigger_result_clear(&res);
  }
  assert_int_equal(in.calls, 1);
  assert_all_refused(&in);
  ct_assert_counts(S, 0, 0, 0);

  /* The connection is not wedged: the next operation on it succeeds. */
  in.verdict = CL_OK;
  in.nprobes = 0;
  trigger_ok(w->eng, 4, "next");
  ct_assert_counts(S, 0, 1, 1);
}

/* Bug: cl_envelope_get had no re-entry check.  Called from an auditor it
 * sent its statement and a Sync into the open audited transaction, which
 * committed the trigger's message and job before the auditor rejected;
 * the trigger then failed with db_error, and so did the next call, the
 * connection having been left out of pipeline mode. */
static void test_audited_tx__envelope_get_then_reject_writes_nothing(void **state) {
  const probe p = {"cl_envelope_get", p_envelope_get};
  read_then_reject(*state, &p, false);
}

/* Bug: as above, through cl_envelopes_list. */
static void test_audited_tx__envelopes_list_then_reject_writes_nothing(void **state) {
  const probe p = {"cl_envelopes_list", p_envelopes_list};
  read_then_reject(*state, &p, false);
}

/* Bug: as above, through cl_migrate (its lock and version reads). */
static void test_audited_tx__migrate_then_reject_writes_nothing(void **state) {
  const probe p = {"cl_migrate", p_migrate};
  read_then_reject(*state, &p, false);
}

/* cl_query refused re-entry before, but with invalid_argument; it must
 * stay refused (now hook_error) and write nothing. */
static void test_audited_tx__query_then_reject_writes_nothing(void **state) {
  const probe p = {"cl_query", p_query};
  read_then_reject(*state, &p, false);
}

/* Bug: as for the trigger, a bulk's auditor reading an envelope committed
 * the envelope, messages and jobs before rejecting. */
static void test_audited_tx__bulk_envelope_get_then_reject_writes_nothing(void **state) {
  const probe p = {"cl_envelope_get", p_envelope_get};
  read_then_reject(*state, &p, true);
}

/* ------------------------------------------------------------------ */
/* The database layer's check, below the entry guard                   */
/* ------------------------------------------------------------------ */

/* An internal call that bypasses the entry guard (as a future entry point
 * that forgot it would) while the audited transaction is open. */
typedef enum db_call { DB_EXEC, DB_QUERY, DB_SCRIPT, DB_COMMIT } db_call;

typedef struct db_probe {
  cl_engine *eng;
  db_call call;
  bool exec_after; /* then run a statement of the auditor's own */
  cl_status status;
  cl_error err;
  cl_status after_status; /* of that statement */
  cl_error after_err;
} db_probe;

static cl_status db_audit_cb(void *ud, cl_tx *tx, const char *action, const char *actor,
                             const cl_metadata *md, char **audit_json, cl_error *err) {
  (void)action, (void)actor, (void)md, (void)audit_json, (void)err;
  db_probe *d = ud;
  cl__db *db = &d->eng->db;
  const char *params[] = {SOME_UUID};
  cl_rows *rows = NULL;
  switch (d->call) {
  case DB_EXEC:
    d->status = cl__db_exec(db, CL__STMT_ENVELOPE_GET, false, CL__NPARAMS(params), params, &rows,
                            &d->err);
    break;
  case DB_QUERY:
    d->status = cl__db_query_readonly(db, "SELECT 1", 0, NULL, &rows, &d->err);
    break;
  case DB_SCRIPT:
    d->status = cl__db_exec_script(db, "SELECT 1", &d->err);
    break;
  case DB_COMMIT:
    d->status = cl__db_commit(db, &d->err);
    break;
  }
  cl_rows_free(rows);
  /* The auditor's own statements fail from now on too: the transaction
   * is doomed. */
  if (d->exec_after) d->after_status = cl_tx_exec(tx, "SELECT 1", 0, NULL, NULL, &d->after_err);
  return CL_OK; /* and accepts, ignoring every failure */
}

/*
 * Guards db.c's check: a statement, a read-only query, a script or a
 * COMMIT sent while the audited transaction is open is refused with
 * hook_error before it reaches the server, and dooms the transaction,
 * so that even an auditor that ignores the refusal and accepts gets the
 * operation rolled back, not committed by a stray Sync.
 */
static void test_db_guard__nothing_else_is_sent_inside_the_audited_transaction(void **state) {
  ct_world *w = *state;
  static const db_call calls[] = {DB_EXEC, DB_QUERY, DB_SCRIPT, DB_COMMIT};
  for (size_t i = 0; i < 2 * CT_ARRAY_LEN(calls); i++) {
    db_probe d = {.eng = w->eng, .call = calls[i / 2], .exec_after = i % 2};
    cl_auditor a = {.audit = db_audit_cb, .ud = &d};
    cl_error err;
    ct_assert_ok(cl_set_auditor(w->eng, &a, &err), &err);
    cl_trigger_opts opts = {.template_id = "t"};
    cl_trigger_result res = {0};
    ct_assert_error(cl_trigger(w->eng, 1, &opts, &res, &err), &err, CL_HOOK_ERROR,
                    "audited transaction is open");
    cl_trigger_result_clear(&res);
    ct_assert_error(d.status, &d.err, CL_HOOK_ERROR, "audited transaction is open");
    if (d.exec_after) ct_assert_error(d.after_status, &d.after_err, CL_DB_ERROR, "aborted");
    ct_assert_counts(S, 0, 0, 0);

    /* The next operation on the same connection succeeds. */
    ct_assert_ok(cl_set_auditor(w->eng, NULL, &err), &err);
    trigger_ok(w->eng, 2, "next");
    ct_assert_counts(S, 0, 1, 1);
    ct_reset(S);
    ct_seed(S, 10);
  }
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_entry_guard__null_engine_is_invalid_argument_everywhere),
      T(test_entry_guard__null_engine_gives_the_documented_null_results),
      T(test_entry_guard__clear_functions_and_rows_are_null_safe),
      T(test_entry_guard__work_wait_refuses_a_null_why),
      T(test_entry_guard__every_entry_refuses_a_call_from_an_auditor),
      T(test_entry_guard__every_entry_refuses_a_call_from_an_actor_resolver),
      T(test_entry_guard__every_entry_refuses_a_call_from_a_notifier),
      T(test_audited_tx__envelope_get_then_reject_writes_nothing),
      T(test_audited_tx__envelopes_list_then_reject_writes_nothing),
      T(test_audited_tx__migrate_then_reject_writes_nothing),
      T(test_audited_tx__query_then_reject_writes_nothing),
      T(test_audited_tx__bulk_envelope_get_then_reject_writes_nothing),
      T(test_db_guard__nothing_else_is_sent_inside_the_audited_transaction),
  };
  return cmocka_run_group_tests_name("entry_guard", tests, NULL, ct_group_teardown);
}
