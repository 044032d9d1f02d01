/*
 * test_bulk_cap.c - the cohort cap: the boundary (cap accepted, cap + 1
 * refused), the refused envelope stored on its own with the cap of the
 * moment, the cap changed at run time and snapshotted on both lanes, the
 * cap read from CAIRNLOOP_MAX_BATCH_SIZE at open, and a refused-envelope
 * insert that fails being reported loudly rather than swallowed.
 */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S CT_SCHEMA
#define REFUSED "cairnloop.outbound.bulk.triggered"
#define TRACE_REFUSED "cairnloop.outbound.trace.bulk_refused"

static int setup(void **state) {
  unsetenv("CAIRNLOOP_MAX_BATCH_SIZE");
  *state = ct_world_new(40, NULL);
  return 0;
}

static int teardown(void **state) {
  ct_world_free(*state);
  unsetenv("CAIRNLOOP_MAX_BATCH_SIZE");
  /* Leave no failing trigger behind for the next test. */
  ct_exec("DROP TRIGGER IF EXISTS refuse_refusals ON %s.cairnloop_outbound_bulk_envelopes", S);
  ct_exec("DROP FUNCTION IF EXISTS %s.refuse_refusals()", S);
  return 0;
}

static int64_t ids_1_to_40[40];

static cl_status bulk(ct_world *w, size_t n, const char *actor, cl_error *err) {
  cl_bulk_opts opts = {.template_id = "cap_t", .rendered_body = "cap body", .actor = actor};
  cl_bulk_result res = {0};
  cl_status st = cl_bulk_trigger(w->eng, ids_1_to_40, n, &opts, &res, err);
  if (st == CL_OK) {
    assert_int_equal(res.envelope.effective_cap, cl_max_batch_size(w->eng));
    assert_string_equal(res.envelope.status, "submitted");
  }
  cl_bulk_result_clear(&res);
  return st;
}

static void test_bulk_trigger__default_cap_is_25(void **state) {
  ct_world *w = *state;
  assert_int_equal(cl_max_batch_size(w->eng), 25);
}

static void test_bulk_trigger__cohort_at_the_cap_is_accepted(void **state) {
  ct_world *w = *state;
  cl_error err;
  ct_assert_ok(bulk(w, 25, NULL, &err), &err);
  ct_assert_counts(S, 1, 25, 25);
  ct_assert_scalar("submitted|25|25|t",
                   "SELECT concat_ws('|', status, count, effective_cap, refused_reason IS NULL) "
                   "FROM %s.cairnloop_outbound_bulk_envelopes",
                   S);
  assert_int_equal(ct_capture_count(&w->cap, REFUSED), 0);
}

static void test_bulk_trigger__over_cap_records_refused_envelope(void **state) {
  ct_world *w = *state;
  cl_error err;
  ct_assert_error(bulk(w, 26, "operator:7", &err), &err, CL_BATCH_TOO_LARGE, NULL);
  assert_string_equal(err.message, "batch_size 26 exceeds cap 25");

  /* Only the refused envelope: no messages, no jobs. */
  ct_assert_counts(S, 1, 0, 0);
  ct_assert_scalar("refused_cap_exceeded|batch_size 26 exceeds cap 25|25|26|cap_t|cap body|"
                   "operator:7|t",
                   "SELECT concat_ws('|', status, refused_reason, effective_cap, count, "
                   "template_id, rendered_body, requested_by, requested_at IS NOT NULL) "
                   "FROM %s.cairnloop_outbound_bulk_envelopes",
                   S);
  /* The cohort that was attempted is kept, in order, for the audit. */
  ct_assert_scalar("t",
                   "SELECT recipient_conversation_ids = ARRAY(SELECT generate_series(1, 26))"
                   "::bigint[] FROM %s.cairnloop_outbound_bulk_envelopes",
                   S);
  ct_assert_scalar("t",
                   "SELECT id::text ~ '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}"
                   "-[0-9a-f]{12}$' FROM %s.cairnloop_outbound_bulk_envelopes",
                   S);

  /* One refusal point event, enum-only. */
  assert_int_equal(ct_capture_count(&w->cap, REFUSED), 1);
  const ct_event *e = ct_capture_nth(&w->cap, REFUSED, 0);
  ct_assert_keys(&e->measurements, "count");
  ct_assert_int(&e->measurements, "count", 26);
  ct_assert_keys(&e->metadata, "outcome", "count");
  ct_assert_str(&e->metadata, "outcome", "refused_cap_exceeded");
  ct_assert_int(&e->metadata, "count", 26);
  /* No fan-out happened, so no per-recipient trigger events. */
  assert_int_equal(ct_capture_count(&w->cap, "cairnloop.outbound.triggered.start"), 0);
  assert_int_equal(ct_capture_count(&w->cap, "cairnloop.outbound.triggered.stop"), 0);
}

static void test_bulk_trigger__far_over_cap_is_refused_the_same_way(void **state) {
  ct_world *w = *state;
  cl_error err;
  ct_assert_error(bulk(w, 40, NULL, &err), &err, CL_BATCH_TOO_LARGE, NULL);
  assert_string_equal(err.message, "batch_size 40 exceeds cap 25");
  ct_assert_counts(S, 1, 0, 0);
  ct_assert_scalar(NULL, "SELECT requested_by FROM %s.cairnloop_outbound_bulk_envelopes", S);
}

static void test_bulk_trigger__cap_changed_at_run_time_is_snapshotted(void **state) {
  ct_world *w = *state;
  cl_error err;
  ct_assert_ok(cl_set_max_batch_size(w->eng, 3, &err), &err);
  assert_int_equal(cl_max_batch_size(w->eng), 3);
  ct_assert_ok(bulk(w, 3, NULL, &err), &err);
  ct_assert_error(bulk(w, 4, NULL, &err), &err, CL_BATCH_TOO_LARGE, NULL);
  assert_string_equal(err.message, "batch_size 4 exceeds cap 3");

  ct_assert_ok(cl_set_max_batch_size(w->eng, 5, &err), &err);
  ct_assert_ok(bulk(w, 4, NULL, &err), &err);
  ct_assert_error(bulk(w, 6, NULL, &err), &err, CL_BATCH_TOO_LARGE, NULL);
  assert_string_equal(err.message, "batch_size 6 exceeds cap 5");

  /* Each envelope keeps the cap of its own moment, on both lanes. */
  ct_assert_scalar("submitted:3/3,refused_cap_exceeded:4/3,submitted:4/5,refused_cap_exceeded:6/5",
                   "SELECT string_agg(status || ':' || count || '/' || effective_cap, ',' "
                   "ORDER BY requested_at, count) FROM %s.cairnloop_outbound_bulk_envelopes",
                   S);
  ct_assert_counts(S, 4, 7, 7);
}

static void test_set_max_batch_size__rejects_values_below_one(void **state) {
  ct_world *w = *state;
  cl_error err;
  ct_assert_error(cl_set_max_batch_size(w->eng, 0, &err), &err, CL_INVALID_ARGUMENT,
                  "max_batch_size");
  ct_assert_error(cl_set_max_batch_size(w->eng, -3, &err), &err, CL_INVALID_ARGUMENT,
                  "max_batch_size");
  assert_int_equal(cl_max_batch_size(w->eng), 25);
}

static void test_open__reads_cap_from_environment(void **state) {
  (void)state;
  setenv("CAIRNLOOP_MAX_BATCH_SIZE", "4", 1);
  ct_world *w = ct_world_new(10, NULL);
  assert_int_equal(cl_max_batch_size(w->eng), 4);
  /* Read at open: a later change of the variable does not move it. */
  setenv("CAIRNLOOP_MAX_BATCH_SIZE", "100", 1);
  cl_error err;
  ct_assert_ok(bulk(w, 4, NULL, &err), &err);
  ct_assert_error(bulk(w, 5, NULL, &err), &err, CL_BATCH_TOO_LARGE, NULL);
  assert_string_equal(err.message, "batch_size 5 exceeds cap 4");
  ct_assert_scalar("4,4",
                   "SELECT string_agg(effective_cap::text, ',') FROM "
                   "%s.cairnloop_outbound_bulk_envelopes",
                   S);
  ct_world_free(w);
}

static void test_open__config_cap_overrides_environment(void **state) {
  (void)state;
  setenv("CAIRNLOOP_MAX_BATCH_SIZE", "4", 1);
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.max_batch_size = 7;
  ct_world *w = ct_world_new(10, &cfg);
  assert_int_equal(cl_max_batch_size(w->eng), 7);
  ct_world_free(w);
}

static void test_open__rejects_bad_caps(void **state) {
  (void)state;
  cl_config cfg;
  cl_engine *eng = NULL;
  cl_error err;

  cl_config_init(&cfg);
  cfg.database = ct_database_url();
  cfg.max_batch_size = -1;
  ct_assert_error(cl_open(&eng, &cfg, &err), &err, CL_INVALID_ARGUMENT, "max_batch_size");
  assert_null(eng);

  static const char *const bad_env[] = {"abc", "0", "-2", "12x", "1e3"};
  for (size_t i = 0; i < CT_ARRAY_LEN(bad_env); i++) {
    setenv("CAIRNLOOP_MAX_BATCH_SIZE", bad_env[i], 1);
    cl_config_init(&cfg);
    cfg.database = ct_database_url();
    cl_status st = cl_open(&eng, &cfg, &err);
    if (st != CL_INVALID_ARGUMENT) print_error("CAIRNLOOP_MAX_BATCH_SIZE=%s\n", bad_env[i]);
    ct_assert_error(st, &err, CL_INVALID_ARGUMENT, "CAIRNLOOP_MAX_BATCH_SIZE");
    assert_null(eng);
  }
  unsetenv("CAIRNLOOP_MAX_BATCH_SIZE");
}

/* Fail closed: when even the refused envelope cannot be stored, the caller
 * still gets batch_too_large, the point event says the audit failed, and
 * the failure is logged as an error. */
static void test_bulk_trigger__refused_envelope_insert_failure_is_loud(void **state) {
  ct_world *w = *state;
  ct_exec("CREATE FUNCTION %s.refuse_refusals() RETURNS trigger LANGUAGE plpgsql AS $$ "
          "BEGIN IF NEW.status = 'refused_cap_exceeded' THEN "
          "RAISE EXCEPTION 'refused envelopes are not accepted here'; END IF; "
          "RETURN NEW; END $$",
          S);
  ct_exec("CREATE TRIGGER refuse_refusals BEFORE INSERT ON %s.cairnloop_outbound_bulk_envelopes "
          "FOR EACH ROW EXECUTE FUNCTION %s.refuse_refusals()",
          S, S);

  cl_error err;
  ct_assert_error(bulk(w, 26, "op", &err), &err, CL_BATCH_TOO_LARGE,
                  "batch_size 26 exceeds cap 25");
  ct_assert_counts(S, 0, 0, 0);

  assert_int_equal(ct_capture_count(&w->cap, REFUSED), 1);
  const ct_event *e = ct_capture_nth(&w->cap, REFUSED, 0);
  ct_assert_keys(&e->measurements, "count");
  ct_assert_int(&e->measurements, "count", 26);
  ct_assert_keys(&e->metadata, "outcome", "count");
  ct_assert_str(&e->metadata, "outcome", "refused_cap_exceeded_audit_failed");
  ct_assert_int(&e->metadata, "count", 26);

  assert_int_equal(ct_capture_count(&w->cap, TRACE_REFUSED), 1);
  e = ct_capture_nth(&w->cap, TRACE_REFUSED, 0);
  ct_assert_str(&e->metadata, "outcome", "refused_cap_exceeded_audit_failed");

  if (ct_log_count(&w->log, CL_LOG_ERROR, NULL) < 1) {
    ct_log_dump(&w->log);
    fail_msg("no error was logged for the failed refused-envelope insert");
  }

  /* The trigger only refuses refusals: submissions still go through. */
  ct_assert_ok(bulk(w, 2, NULL, &err), &err);
  ct_assert_counts(S, 1, 2, 2);
}

int main(void) {
  for (int i = 0; i < 40; i++) ids_1_to_40[i] = i + 1;
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_bulk_trigger__default_cap_is_25),
      T(test_bulk_trigger__cohort_at_the_cap_is_accepted),
      T(test_bulk_trigger__over_cap_records_refused_envelope),
      T(test_bulk_trigger__far_over_cap_is_refused_the_same_way),
      T(test_bulk_trigger__cap_changed_at_run_time_is_snapshotted),
      T(test_set_max_batch_size__rejects_values_below_one),
      T(test_open__reads_cap_from_environment),
      T(test_open__config_cap_overrides_environment),
      T(test_open__rejects_bad_caps),
      T(test_bulk_trigger__refused_envelope_insert_failure_is_loud),
  };
  return cmocka_run_group_tests_name("bulk_cap", tests, NULL, ct_group_teardown);
}
