/*
 * test_replay.c - caller-chosen envelope ids make bulk retries idempotent:
 * the same id with the same content returns the stored outcome (replayed,
 * same rows, nothing new written), the same id with different content is
 * an envelope_conflict that writes nothing.
 */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S CT_SCHEMA

static const char *const ENV = "3f6b2a10-9c8d-4e7f-a1b2-c3d4e5f60718";

static cl_status bulk(ct_world *w, const int64_t *ids, size_t n, const char *tmpl, const char *body,
                      cl_bulk_result *res, cl_error *err) {
  cl_bulk_opts opts = {
      .template_id = tmpl, .rendered_body = body, .envelope_id = ENV, .actor = "agent_1"};
  memset(res, 0, sizeof *res);
  return cl_bulk_trigger(w->eng, ids, n, &opts, res, err);
}

static void test_bulk_trigger__same_envelope_id_and_content_replays(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {3, 1, 2};
  cl_bulk_result first, again;
  cl_error err;
  ct_assert_ok(bulk(w, ids, 3, "t", "body", &first, &err), &err);
  assert_int_equal(first.replayed, 0);
  ct_assert_ok(bulk(w, ids, 3, "t", "body", &again, &err), &err);
  assert_int_equal(again.replayed, 1);

  assert_string_equal(again.envelope.id, ENV);
  assert_string_equal(again.envelope.status, "submitted");
  assert_string_equal(again.envelope.requested_at, first.envelope.requested_at);
  assert_int_equal(again.envelope.effective_cap, first.envelope.effective_cap);
  assert_int_equal(again.count, 3);
  for (size_t i = 0; i < 3; i++) {
    assert_int_equal(again.messages[i].id, first.messages[i].id);
    assert_int_equal(again.messages[i].conversation_id, ids[i]);
    assert_int_equal(again.delivery_jobs[i].id, first.delivery_jobs[i].id);
    assert_string_equal(again.messages[i].bulk_envelope_id, ENV);
    assert_string_equal(again.messages[i].content, "body");
  }
  ct_assert_counts(S, 1, 3, 3);
  cl_bulk_result_clear(&first);
  cl_bulk_result_clear(&again);
}

/* The stored outcome stands even when the cap has since been lowered. */
static void test_bulk_trigger__replay_returns_stored_outcome_after_cap_change(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {1, 2, 3};
  cl_bulk_result first, again;
  cl_error err;
  ct_assert_ok(bulk(w, ids, 3, "t", "body", &first, &err), &err);
  ct_assert_ok(cl_set_max_batch_size(w->eng, 2, &err), &err);
  ct_assert_ok(bulk(w, ids, 3, "t", "body", &again, &err), &err);
  assert_int_equal(again.replayed, 1);
  assert_int_equal(again.envelope.effective_cap, 25);
  assert_int_equal(again.messages[2].id, first.messages[2].id);
  ct_assert_counts(S, 1, 3, 3);
  cl_bulk_result_clear(&first);
  cl_bulk_result_clear(&again);
}

static void test_bulk_trigger__same_envelope_id_other_content_conflicts(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {1, 2, 3};
  const int64_t other_ids[] = {1, 2, 4};
  const int64_t fewer_ids[] = {1, 2};
  const int64_t reordered[] = {3, 2, 1};
  cl_bulk_result first, res;
  cl_error err;
  ct_assert_ok(bulk(w, ids, 3, "t", "body", &first, &err), &err);
  ct_capture_reset(&w->cap);

  struct {
    const char *what;
    const int64_t *ids;
    size_t n;
    const char *tmpl, *body;
  } cases[] = {
      {"other body", ids, 3, "t", "body!"},
      {"other template", ids, 3, "t2", "body"},
      {"other cohort", other_ids, 3, "t", "body"},
      {"smaller cohort", fewer_ids, 2, "t", "body"},
      {"reordered cohort", reordered, 3, "t", "body"},
  };
  for (size_t i = 0; i < CT_ARRAY_LEN(cases); i++) {
    cl_status st = bulk(w, cases[i].ids, cases[i].n, cases[i].tmpl, cases[i].body, &res, &err);
    if (st != CL_ENVELOPE_CONFLICT) print_error("case: %s\n", cases[i].what);
    ct_assert_error(st, &err, CL_ENVELOPE_CONFLICT, ENV);
    cl_bulk_result_clear(&res);
    ct_assert_counts(S, 1, 3, 3);
  }
  /* The stored envelope is untouched. */
  ct_assert_scalar("t|body|{1,2,3}|submitted",
                   "SELECT concat_ws('|', template_id, "
                   "rendered_body, recipient_conversation_ids, status) FROM "
                   "%s.cairnloop_outbound_bulk_envelopes",
                   S);
  cl_bulk_result_clear(&first);
}

/* A conflict is found even when the retry is over the cap: the stored
 * envelope is not overwritten by a refusal. */
static void test_bulk_trigger__conflict_over_cap_writes_nothing(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {1, 2, 3};
  cl_bulk_result first, res;
  cl_error err;
  ct_assert_ok(bulk(w, ids, 3, "t", "body", &first, &err), &err);
  ct_assert_ok(cl_set_max_batch_size(w->eng, 2, &err), &err);
  ct_assert_error(bulk(w, ids, 3, "t", "changed", &res, &err), &err, CL_ENVELOPE_CONFLICT, ENV);
  cl_bulk_result_clear(&res);
  ct_assert_counts(S, 1, 3, 3);
  ct_assert_scalar("submitted|body|25",
                   "SELECT concat_ws('|', status, rendered_body, "
                   "effective_cap) FROM %s.cairnloop_outbound_bulk_envelopes",
                   S);
  cl_bulk_result_clear(&first);
}

/* An envelope id used by a refused attempt cannot be reused for another body. */
static void test_bulk_trigger__refused_envelope_id_conflicts_on_other_content(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {1, 2, 3};
  cl_bulk_result res;
  cl_error err;
  ct_assert_ok(cl_set_max_batch_size(w->eng, 2, &err), &err);
  ct_assert_error(bulk(w, ids, 3, "t", "body", &res, &err), &err, CL_BATCH_TOO_LARGE, NULL);
  cl_bulk_result_clear(&res);
  ct_assert_counts(S, 1, 0, 0);
  ct_assert_error(bulk(w, ids, 3, "t", "another body", &res, &err), &err, CL_ENVELOPE_CONFLICT,
                  ENV);
  cl_bulk_result_clear(&res);
  ct_assert_counts(S, 1, 0, 0);
  ct_assert_scalar("refused_cap_exceeded|body",
                   "SELECT concat_ws('|', status, rendered_body) "
                   "FROM %s.cairnloop_outbound_bulk_envelopes",
                   S);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, ct_world_setup, ct_world_teardown)
  const struct CMUnitTest tests[] = {
      T(test_bulk_trigger__same_envelope_id_and_content_replays),
      T(test_bulk_trigger__replay_returns_stored_outcome_after_cap_change),
      T(test_bulk_trigger__same_envelope_id_other_content_conflicts),
      T(test_bulk_trigger__conflict_over_cap_writes_nothing),
      T(test_bulk_trigger__refused_envelope_id_conflicts_on_other_content),
  };
  return cmocka_run_group_tests_name("replay", tests, NULL, ct_group_teardown);
}
