/*
 * test_dedup.c - at most once per (conversation, template, bulk_envelope_id),
 * a missing envelope id being a key value of its own: a repeat returns the
 * existing message and job flagged duplicate and writes nothing, while any
 * change of the key writes new rows.
 */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S CT_SCHEMA
#define STOP "cairnloop.outbound.triggered.stop"

static const char *const ENV_A = "8d1f6a52-3c2e-4b7a-9f10-2a3b4c5d6e7f";
static const char *const ENV_B = "1a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d";

static void trigger(ct_world *w, int64_t conv, const char *tmpl, const char *env,
                    const char *content, cl_trigger_result *res) {
  cl_trigger_opts opts = {.template_id = tmpl, .bulk_envelope_id = env, .content = content};
  cl_error err;
  memset(res, 0, sizeof *res);
  ct_assert_ok(cl_trigger(w->eng, conv, &opts, res, &err), &err);
}

static void assert_same_rows(const cl_trigger_result *a, const cl_trigger_result *b) {
  assert_int_equal(a->message.id, b->message.id);
  assert_int_equal(a->delivery_job.id, b->delivery_job.id);
  assert_int_equal(a->message.conversation_id, b->message.conversation_id);
  assert_string_equal(a->message.content, b->message.content);
  assert_string_equal(a->message.template_id, b->message.template_id);
  assert_string_equal(a->message.status, b->message.status);
  assert_string_equal(a->delivery_job.state, b->delivery_job.state);
  assert_string_equal(a->delivery_job.scheduled_at, b->delivery_job.scheduled_at);
  assert_int_equal(a->delivery_job.message_id, b->delivery_job.message_id);
  if (a->message.bulk_envelope_id == NULL) {
    assert_null(b->message.bulk_envelope_id);
    assert_null(b->delivery_job.bulk_envelope_id);
  } else {
    assert_string_equal(a->message.bulk_envelope_id, b->message.bulk_envelope_id);
    assert_string_equal(a->delivery_job.bulk_envelope_id, b->delivery_job.bulk_envelope_id);
  }
}

static void test_trigger__same_key_without_envelope_is_a_duplicate(void **state) {
  ct_world *w = *state;
  cl_trigger_result first, again;
  trigger(w, 3, "t1", NULL, "first content", &first);
  assert_int_equal(first.duplicate, 0);
  trigger(w, 3, "t1", NULL, "other content", &again);
  assert_int_equal(again.duplicate, 1);
  /* The existing rows come back, the new content is not written. */
  assert_same_rows(&first, &again);
  assert_string_equal(again.message.content, "first content");
  ct_assert_counts(S, 0, 1, 1);

  /* The span ends with outcome "duplicate". */
  assert_int_equal(ct_capture_count(&w->cap, STOP), 2);
  ct_assert_str(&ct_capture_nth(&w->cap, STOP, 0)->metadata, "outcome", "triggered");
  ct_assert_str(&ct_capture_nth(&w->cap, STOP, 1)->metadata, "outcome", "duplicate");
  cl_trigger_result_clear(&first);
  cl_trigger_result_clear(&again);
}

static void test_trigger__same_key_with_envelope_is_a_duplicate(void **state) {
  ct_world *w = *state;
  cl_trigger_result first, again, third;
  trigger(w, 4, "t1", ENV_A, NULL, &first);
  trigger(w, 4, "t1", ENV_A, NULL, &again);
  assert_int_equal(again.duplicate, 1);
  assert_same_rows(&first, &again);
  /* The same id in upper case is the same key. */
  trigger(w, 4, "t1", "8D1F6A52-3C2E-4B7A-9F10-2A3B4C5D6E7F", NULL, &third);
  assert_int_equal(third.duplicate, 1);
  assert_same_rows(&first, &third);
  ct_assert_counts(S, 0, 1, 1);
  cl_trigger_result_clear(&first);
  cl_trigger_result_clear(&again);
  cl_trigger_result_clear(&third);
}

static void test_trigger__any_change_of_key_writes_new_rows(void **state) {
  ct_world *w = *state;
  cl_trigger_result r[5];
  trigger(w, 5, "t1", NULL, NULL, &r[0]);
  trigger(w, 5, "t2", NULL, NULL, &r[1]);  /* other template */
  trigger(w, 6, "t1", NULL, NULL, &r[2]);  /* other conversation */
  trigger(w, 5, "t1", ENV_A, NULL, &r[3]); /* an envelope id where there was none */
  trigger(w, 5, "t1", ENV_B, NULL, &r[4]); /* another envelope id */
  for (int i = 0; i < 5; i++) {
    assert_int_equal(r[i].duplicate, 0);
    for (int j = 0; j < i; j++) {
      assert_int_not_equal(r[i].message.id, r[j].message.id);
      assert_int_not_equal(r[i].delivery_job.id, r[j].delivery_job.id);
    }
  }
  ct_assert_counts(S, 0, 5, 5);
  for (int i = 0; i < 5; i++) cl_trigger_result_clear(&r[i]);
}

static void test_trigger__repeat_of_a_bulk_recipient_is_a_duplicate(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {7, 8};
  cl_bulk_opts bopts = {.template_id = "camp", .rendered_body = "bulk body"};
  cl_bulk_result bres = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(w->eng, ids, 2, &bopts, &bres, &err), &err);

  cl_trigger_result t;
  trigger(w, 8, "camp", bres.envelope.id, "single", &t);
  assert_int_equal(t.duplicate, 1);
  assert_int_equal(t.message.id, bres.messages[1].id);
  assert_int_equal(t.delivery_job.id, bres.delivery_jobs[1].id);
  assert_string_equal(t.message.content, "bulk body");
  ct_assert_counts(S, 1, 2, 2);
  cl_trigger_result_clear(&t);

  /* Without the envelope id it is another key. */
  trigger(w, 8, "camp", NULL, "single", &t);
  assert_int_equal(t.duplicate, 0);
  ct_assert_counts(S, 1, 3, 3);
  cl_trigger_result_clear(&t);
  cl_bulk_result_clear(&bres);
}

static void test_trigger__duplicates_stay_single_under_repetition(void **state) {
  ct_world *w = *state;
  cl_trigger_result first;
  trigger(w, 9, "t", NULL, NULL, &first);
  for (int i = 0; i < 20; i++) {
    cl_trigger_result again;
    trigger(w, 9, "t", NULL, NULL, &again);
    assert_int_equal(again.duplicate, 1);
    assert_int_equal(again.message.id, first.message.id);
    cl_trigger_result_clear(&again);
  }
  ct_assert_counts(S, 0, 1, 1);
  cl_trigger_result_clear(&first);
}

/* Regression: with an auditor that runs no statement, a duplicate or an
 * unknown conversation failed the pipelined insert, the server skipped the
 * pipelined COMMIT, and the connection was left inside an aborted
 * transaction: every later call failed with "current transaction is
 * aborted" (fixed in 3c4dda8). */
static void test_trigger__duplicate_under_a_quiet_auditor_leaves_the_engine_usable(void **state) {
  ct_world *w = *state;
  ct_auditor a = {0};
  ct_install_auditor(w->eng, &a);
  cl_trigger_result first, again, next;
  trigger(w, 4, "quiet", NULL, "first", &first);
  trigger(w, 4, "quiet", NULL, "second", &again);
  assert_int_equal(again.duplicate, 1);
  assert_same_rows(&first, &again);

  cl_trigger_opts opts = {.template_id = "quiet"};
  cl_trigger_result res = {0};
  cl_error err;
  ct_assert_error(cl_trigger(w->eng, 999999, &opts, &res, &err), &err, CL_UNKNOWN_CONVERSATION,
                  "conversation 999999 does not exist");
  trigger(w, 5, "quiet", NULL, "next", &next);
  assert_int_equal(next.duplicate, 0);
  ct_assert_counts(S, 0, 2, 2);
  cl_trigger_result_clear(&first);
  cl_trigger_result_clear(&again);
  cl_trigger_result_clear(&next);
  ct_assert_ok(cl_set_auditor(w->eng, NULL, &err), &err); /* `a` lives on this stack */
  ct_auditor_free(&a);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, ct_world_setup, ct_world_teardown)
  const struct CMUnitTest tests[] = {
      T(test_trigger__same_key_without_envelope_is_a_duplicate),
      T(test_trigger__same_key_with_envelope_is_a_duplicate),
      T(test_trigger__any_change_of_key_writes_new_rows),
      T(test_trigger__repeat_of_a_bulk_recipient_is_a_duplicate),
      T(test_trigger__duplicates_stay_single_under_repetition),
      T(test_trigger__duplicate_under_a_quiet_auditor_leaves_the_engine_usable),
  };
  return cmocka_run_group_tests_name("dedup", tests, NULL, ct_group_teardown);
}
