/*
 * test_bulk_trigger.c - cl_bulk_trigger within the cap: the envelope it
 * snapshots (result and row), the envelope id threaded into every message
 * and job, byte-exact bodies, hostile strings stored as data, and reading
 * envelopes back with cl_envelope_get / cl_envelopes_list.
 */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S CT_SCHEMA

static void assert_bulk_result_consistent(const cl_bulk_result *res, const int64_t *ids, size_t n,
                                          const char *body, const char *tmpl) {
  assert_true(ct_is_uuid_v4(res->envelope.id));
  assert_int_equal(res->count, n);
  assert_int_equal(res->envelope.count, n);
  for (size_t i = 0; i < n; i++) {
    const cl_message *m = &res->messages[i];
    const cl_delivery_job *j = &res->delivery_jobs[i];
    assert_int_equal(m->conversation_id, ids[i]);
    assert_true(m->id > 0);
    assert_string_equal(m->role, "system_outbound");
    assert_string_equal(m->content, body);
    assert_string_equal(m->template_id, tmpl);
    assert_string_equal(m->status, "pending");
    assert_non_null(m->bulk_envelope_id);
    assert_string_equal(m->bulk_envelope_id, res->envelope.id);
    assert_true(j->id > 0);
    assert_string_equal(j->worker, "outbound");
    assert_int_equal(j->message_id, m->id);
    assert_int_equal(j->conversation_id, ids[i]);
    assert_string_equal(j->template_id, tmpl);
    assert_non_null(j->bulk_envelope_id);
    assert_string_equal(j->bulk_envelope_id, res->envelope.id);
    assert_true(ct_is_iso_utc(j->scheduled_at));
  }
}

static void test_bulk_trigger__writes_envelope_messages_and_jobs(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {5, 2, 9};
  cl_bulk_opts opts = {
      .template_id = "recovery_v1", .rendered_body = "Hi there", .actor = "agent_1"};
  cl_bulk_result res = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(w->eng, ids, 3, &opts, &res, &err), &err);

  const cl_envelope *e = &res.envelope;
  assert_string_equal(e->template_id, "recovery_v1");
  assert_string_equal(e->rendered_body, "Hi there");
  assert_int_equal(e->count, 3);
  for (size_t i = 0; i < 3; i++) assert_int_equal(e->recipient_conversation_ids[i], ids[i]);
  assert_int_equal(e->effective_cap, 25);
  assert_string_equal(e->requested_by, "agent_1");
  assert_true(ct_is_iso_utc(e->requested_at));
  assert_string_equal(e->status, "submitted");
  assert_null(e->refused_reason);
  assert_int_equal(res.replayed, 0);
  assert_null(res.audit_json);
  assert_bulk_result_consistent(&res, ids, 3, "Hi there", "recovery_v1");
  for (size_t i = 0; i < 3; i++) assert_string_equal(res.delivery_jobs[i].state, "available");

  ct_assert_counts(S, 1, 3, 3);
  ct_assert_scalar1("recovery_v1|Hi there|{5,2,9}|3|25|agent_1|submitted|t|t|t",
                    "SELECT concat_ws('|', template_id, rendered_body, recipient_conversation_ids, "
                    "count, effective_cap, requested_by, status, refused_reason IS NULL, "
                    "inserted_at IS NOT NULL, updated_at IS NOT NULL) "
                    "FROM " S ".cairnloop_outbound_bulk_envelopes WHERE id = $1::uuid",
                    e->id);
  /* requested_at is the time of the call, and the result reports the stored value. */
  ct_assert_scalar1("t",
                    "SELECT requested_at BETWEEN (now() AT TIME ZONE 'UTC') - interval '1 minute' "
                    "AND (now() AT TIME ZONE 'UTC') + interval '1 minute' "
                    "FROM " S ".cairnloop_outbound_bulk_envelopes WHERE id = $1::uuid",
                    e->id);
  char *stored = ct_scalar("SELECT to_char(requested_at, 'YYYY-MM-DD\"T\"HH24:MI:SS') FROM "
                           "%s.cairnloop_outbound_bulk_envelopes",
                           S);
  assert_memory_equal(e->requested_at, stored, strlen(stored));
  free(stored);

  /* Every message and job names the envelope: metadata, column and args. */
  ct_assert_scalar1("3",
                    "SELECT count(*) FROM " S ".cairnloop_messages WHERE "
                    "metadata->>'bulk_envelope_id' = $1 AND content = 'Hi there' AND "
                    "role = 'system_outbound' AND metadata->>'status' = 'pending' AND "
                    "metadata->>'template_id' = 'recovery_v1'",
                    e->id);
  ct_assert_scalar1("3",
                    "SELECT count(*) FROM " S ".cairnloop_delivery_jobs j JOIN " S
                    ".cairnloop_messages m ON m.id = j.message_id WHERE "
                    "j.bulk_envelope_id = $1::uuid AND j.args->>'bulk_envelope_id' = $1::text AND "
                    "(j.args->>'message_id')::bigint = j.message_id AND "
                    "(j.args->>'conversation_id')::bigint = m.conversation_id AND "
                    "j.conversation_id = m.conversation_id AND "
                    "j.args->>'template_id' = 'recovery_v1' AND j.state = 'available'",
                    e->id);
  ct_assert_scalar("{2,5,9}",
                   "SELECT array_agg(conversation_id ORDER BY conversation_id)::text "
                   "FROM %s.cairnloop_messages",
                   S);
  cl_bulk_result_clear(&res);
}

static void test_bulk_trigger__envelope_ids_are_fresh_uuid_v4(void **state) {
  ct_world *w = *state;
  char seen[5][CL_UUID_LEN + 1];
  for (int k = 0; k < 5; k++) {
    const int64_t ids[] = {k + 1};
    cl_bulk_opts opts = {.template_id = "t", .rendered_body = "b"};
    cl_bulk_result res = {0};
    cl_error err;
    ct_assert_ok(cl_bulk_trigger(w->eng, ids, 1, &opts, &res, &err), &err);
    if (!ct_is_uuid_v4(res.envelope.id)) fail_msg("not a UUID v4: %s", res.envelope.id);
    memcpy(seen[k], res.envelope.id, sizeof seen[k]);
    for (int j = 0; j < k; j++) assert_string_not_equal(seen[j], seen[k]);
    cl_bulk_result_clear(&res);
  }
  assert_int_equal(ct_rows(S, "cairnloop_outbound_bulk_envelopes"), 5);
}

static const char *const tricky_body =
    "Hello \"friend\", it's 'quoted' and `ticked`; $1 $2 $$dollar$$ \\backslash\\ \\\\ \\n\n"
    "line two\r\nline three\ttab %s %d %% \xc3\xa9\xc3\xa8 \xe2\x82\xac \xf0\x9f\x9a\x80 "
    "\xe6\x97\xa5\xe6\x9c\xac '); DROP TABLE cairnloop_outbound_bulk_envelopes; -- "
    "{\"a\": [1, \"\\u0000\"]}\n";

static void test_bulk_trigger__rendered_body_is_stored_byte_exact(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {1, 2};
  cl_bulk_opts opts = {.template_id = "t", .rendered_body = tricky_body};
  cl_bulk_result res = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(w->eng, ids, 2, &opts, &res, &err), &err);
  assert_string_equal(res.envelope.rendered_body, tricky_body);
  assert_bulk_result_consistent(&res, ids, 2, tricky_body, "t");
  ct_assert_scalar1(tricky_body,
                    "SELECT rendered_body FROM " S ".cairnloop_outbound_bulk_envelopes "
                    "WHERE id = $1::uuid",
                    res.envelope.id);
  ct_assert_scalar1("2",
                    "SELECT count(*) FROM " S ".cairnloop_messages m JOIN " S
                    ".cairnloop_outbound_bulk_envelopes e ON m.content = e.rendered_body "
                    "WHERE e.id = $1::uuid AND m.metadata->>'bulk_envelope_id' = $1::text",
                    res.envelope.id);
  cl_bulk_result_clear(&res);
}

static void test_bulk_trigger__large_body_is_stored_byte_exact(void **state) {
  ct_world *w = *state;
  /* Just under the limit, multi-byte characters throughout. */
  size_t n = CL_MAX_BODY_BYTES - 8;
  char *body = malloc(n + 1);
  assert_non_null(body);
  static const char unit[] = "\xc3\xa9z\xe2\x82\xac'\\\n"; /* 8 bytes */
  for (size_t i = 0; i + 8 <= n; i += 8) memcpy(body + i, unit, 8);
  body[n] = '\0';
  const int64_t ids[] = {3};
  cl_bulk_opts opts = {.template_id = "t", .rendered_body = body};
  cl_bulk_result res = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(w->eng, ids, 1, &opts, &res, &err), &err);
  assert_int_equal(strlen(res.envelope.rendered_body), n);
  assert_memory_equal(res.envelope.rendered_body, body, n);
  ct_assert_scalar1(body,
                    "SELECT rendered_body FROM " S ".cairnloop_outbound_bulk_envelopes "
                    "WHERE id = $1::uuid",
                    res.envelope.id);
  ct_assert_scalar1(body,
                    "SELECT content FROM " S ".cairnloop_messages "
                    "WHERE metadata->>'bulk_envelope_id' = $1",
                    res.envelope.id);
  cl_bulk_result_clear(&res);
  free(body);
}

static void test_bulk_trigger__hostile_strings_are_stored_as_data(void **state) {
  ct_world *w = *state;
  int64_t tables = ct_int("SELECT count(*) FROM pg_tables WHERE schemaname = '%s'", S);
  const char *tmpl = "'); DROP TABLE x; --";
  const char *actor = "Robert'); DROP TABLE students;-- \\' \"";
  const int64_t ids[] = {4, 6};
  cl_bulk_opts opts = {.template_id = tmpl,
                       .rendered_body = "'; DELETE FROM cairnloop_messages; --",
                       .actor = actor};
  cl_bulk_result res = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(w->eng, ids, 2, &opts, &res, &err), &err);
  assert_string_equal(res.envelope.template_id, tmpl);
  assert_string_equal(res.envelope.requested_by, actor);
  ct_assert_scalar1(tmpl,
                    "SELECT template_id FROM " S ".cairnloop_outbound_bulk_envelopes "
                    "WHERE id = $1::uuid",
                    res.envelope.id);
  ct_assert_scalar1(actor,
                    "SELECT requested_by FROM " S ".cairnloop_outbound_bulk_envelopes "
                    "WHERE id = $1::uuid",
                    res.envelope.id);
  ct_assert_scalar1("2",
                    "SELECT count(*) FROM " S ".cairnloop_delivery_jobs WHERE "
                    "template_id = $1 AND args->>'template_id' = $1",
                    tmpl);
  ct_assert_scalar1("2",
                    "SELECT count(*) FROM " S ".cairnloop_messages WHERE "
                    "metadata->>'template_id' = $1",
                    tmpl);
  assert_int_equal(ct_int("SELECT count(*) FROM pg_tables WHERE schemaname = '%s'", S), tables);
  ct_assert_counts(S, 1, 2, 2);
  cl_bulk_result_clear(&res);
}

static void test_bulk_trigger__without_actor_requested_by_is_null(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {1};
  cl_bulk_opts opts = {.template_id = "t", .rendered_body = "b"};
  cl_bulk_result res = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(w->eng, ids, 1, &opts, &res, &err), &err);
  assert_null(res.envelope.requested_by);
  ct_assert_scalar(NULL, "SELECT requested_by FROM %s.cairnloop_outbound_bulk_envelopes", S);
  cl_bulk_result_clear(&res);
}

static void test_bulk_trigger__caller_envelope_id_is_used_canonical(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {1, 2};
  cl_bulk_opts opts = {.template_id = "t",
                       .rendered_body = "b",
                       .envelope_id = "5F0C2D3E-4B1A-4C2D-8E9F-0A1B2C3D4E5F"};
  cl_bulk_result res = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(w->eng, ids, 2, &opts, &res, &err), &err);
  const char *lower = "5f0c2d3e-4b1a-4c2d-8e9f-0a1b2c3d4e5f";
  assert_string_equal(res.envelope.id, lower);
  assert_string_equal(res.messages[1].bulk_envelope_id, lower);
  assert_string_equal(res.delivery_jobs[0].bulk_envelope_id, lower);
  ct_assert_scalar(lower, "SELECT id::text FROM %s.cairnloop_outbound_bulk_envelopes", S);
  ct_assert_scalar("2",
                   "SELECT count(*) FROM %s.cairnloop_delivery_jobs WHERE "
                   "args->>'bulk_envelope_id' = '%s'",
                   S, lower);
  cl_bulk_result_clear(&res);
}

static void test_bulk_trigger__schedule_in_schedules_every_job(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {1, 2, 3};
  cl_bulk_opts opts = {.template_id = "t", .rendered_body = "b", .schedule_in = 600};
  cl_bulk_result res = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(w->eng, ids, 3, &opts, &res, &err), &err);
  for (size_t i = 0; i < 3; i++) assert_string_equal(res.delivery_jobs[i].state, "scheduled");
  ct_assert_scalar("3",
                   "SELECT count(*) FROM %s.cairnloop_delivery_jobs WHERE state = "
                   "'scheduled' AND scheduled_at BETWEEN now() + interval '540 s' AND "
                   "now() + interval '660 s'",
                   S);
  cl_bulk_result_clear(&res);
}

static void test_bulk_trigger__result_clear_is_idempotent_and_null_safe(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {1};
  cl_bulk_opts opts = {.template_id = "t", .rendered_body = "b"};
  cl_bulk_result res = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(w->eng, ids, 1, &opts, &res, &err), &err);
  cl_bulk_result_clear(&res);
  cl_bulk_result_clear(&res);
  cl_bulk_result_clear(NULL);
  cl_bulk_result empty = {0};
  cl_bulk_result_clear(&empty);
}

static void assert_same_envelope(const cl_envelope *a, const cl_envelope *b) {
  assert_string_equal(a->id, b->id);
  assert_string_equal(a->template_id, b->template_id);
  assert_string_equal(a->rendered_body, b->rendered_body);
  assert_int_equal(a->count, b->count);
  for (size_t i = 0; i < a->count; i++) {
    assert_int_equal(a->recipient_conversation_ids[i], b->recipient_conversation_ids[i]);
  }
  assert_int_equal(a->effective_cap, b->effective_cap);
  if (a->requested_by == NULL || b->requested_by == NULL) {
    assert_ptr_equal(a->requested_by, b->requested_by);
  } else {
    assert_string_equal(a->requested_by, b->requested_by);
  }
  assert_string_equal(a->requested_at, b->requested_at);
  assert_string_equal(a->status, b->status);
  if (a->refused_reason == NULL || b->refused_reason == NULL) {
    assert_ptr_equal(a->refused_reason, b->refused_reason);
  } else {
    assert_string_equal(a->refused_reason, b->refused_reason);
  }
}

static void test_envelope_get__reads_back_what_was_stored(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {8, 3};
  cl_bulk_opts opts = {.template_id = "t", .rendered_body = tricky_body, .actor = "op"};
  cl_bulk_result res = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(w->eng, ids, 2, &opts, &res, &err), &err);

  cl_envelope_list got = {0};
  ct_assert_ok(cl_envelope_get(w->eng, res.envelope.id, &got, &err), &err);
  assert_int_equal(got.count, 1);
  assert_same_envelope(&got.items[0], &res.envelope);
  cl_envelope_list_clear(&got);

  /* An id that names nothing is not an error. */
  ct_assert_ok(cl_envelope_get(w->eng, "00000000-0000-4000-8000-000000000000", &got, &err), &err);
  assert_int_equal(got.count, 0);
  cl_envelope_list_clear(&got);

  ct_assert_error(cl_envelope_get(w->eng, "nope", &got, &err), &err, CL_INVALID_ARGUMENT, NULL);
  cl_envelope_list_clear(&got);
  cl_envelope_list_clear(&got);
  cl_envelope_list_clear(NULL);
  cl_bulk_result_clear(&res);
}

static void test_envelopes_list__newest_first_with_filters(void **state) {
  ct_world *w = *state;
  cl_error err;
  char made[4][CL_UUID_LEN + 1];
  const char *tmpl[] = {"a", "b", "a", "a"};
  for (int k = 0; k < 4; k++) {
    /* The last one is over a cap of 2: a refused envelope. */
    const int64_t ids[] = {1, 2, 3};
    size_t n = k == 3 ? 3 : 1;
    if (k == 3) ct_assert_ok(cl_set_max_batch_size(w->eng, 2, &err), &err);
    cl_bulk_opts opts = {.template_id = tmpl[k], .rendered_body = "b"};
    cl_bulk_result res = {0};
    cl_status st = cl_bulk_trigger(w->eng, ids, n, &opts, &res, &err);
    assert_int_equal(st, k == 3 ? CL_BATCH_TOO_LARGE : CL_OK);
    if (k == 3) {
      char *id = ct_scalar("SELECT id::text FROM %s.cairnloop_outbound_bulk_envelopes WHERE "
                           "status = 'refused_cap_exceeded'",
                           S);
      assert_non_null(id);
      snprintf(made[k], sizeof made[k], "%s", id);
      free(id);
    } else {
      snprintf(made[k], sizeof made[k], "%s", res.envelope.id);
    }
    cl_bulk_result_clear(&res);
  }
  /* Make the order unambiguous whatever the clock resolution. */
  for (int k = 0; k < 4; k++) {
    ct_exec("UPDATE %s.cairnloop_outbound_bulk_envelopes SET requested_at = "
            "timestamp '2030-01-01' + %d * interval '1 minute' WHERE id = '%s'",
            S, k, made[k]);
  }

  cl_envelope_list list = {0};
  cl_envelope_query q = {0};
  ct_assert_ok(cl_envelopes_list(w->eng, &q, &list, &err), &err);
  assert_int_equal(list.count, 4);
  for (int k = 0; k < 4; k++) assert_string_equal(list.items[k].id, made[3 - k]);
  cl_envelope_list_clear(&list);

  q.template_id = "a";
  ct_assert_ok(cl_envelopes_list(w->eng, &q, &list, &err), &err);
  assert_int_equal(list.count, 3);
  assert_string_equal(list.items[0].id, made[3]);
  assert_string_equal(list.items[1].id, made[2]);
  assert_string_equal(list.items[2].id, made[0]);
  cl_envelope_list_clear(&list);

  q.status = "submitted";
  ct_assert_ok(cl_envelopes_list(w->eng, &q, &list, &err), &err);
  assert_int_equal(list.count, 2);
  assert_string_equal(list.items[0].id, made[2]);
  cl_envelope_list_clear(&list);

  q.template_id = NULL;
  q.status = "refused_cap_exceeded";
  ct_assert_ok(cl_envelopes_list(w->eng, &q, &list, &err), &err);
  assert_int_equal(list.count, 1);
  assert_string_equal(list.items[0].status, "refused_cap_exceeded");
  assert_string_equal(list.items[0].refused_reason, "batch_size 3 exceeds cap 2");
  assert_int_equal(list.items[0].effective_cap, 2);
  cl_envelope_list_clear(&list);

  q.status = NULL;
  q.limit = 1;
  ct_assert_ok(cl_envelopes_list(w->eng, &q, &list, &err), &err);
  assert_int_equal(list.count, 1);
  assert_string_equal(list.items[0].id, made[3]);
  cl_envelope_list_clear(&list);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, ct_world_setup, ct_world_teardown)
  const struct CMUnitTest tests[] = {
      T(test_bulk_trigger__writes_envelope_messages_and_jobs),
      T(test_bulk_trigger__envelope_ids_are_fresh_uuid_v4),
      T(test_bulk_trigger__rendered_body_is_stored_byte_exact),
      T(test_bulk_trigger__large_body_is_stored_byte_exact),
      T(test_bulk_trigger__hostile_strings_are_stored_as_data),
      T(test_bulk_trigger__without_actor_requested_by_is_null),
      T(test_bulk_trigger__caller_envelope_id_is_used_canonical),
      T(test_bulk_trigger__schedule_in_schedules_every_job),
      T(test_bulk_trigger__result_clear_is_idempotent_and_null_safe),
      T(test_envelope_get__reads_back_what_was_stored),
      T(test_envelopes_list__newest_first_with_filters),
  };
  return cmocka_run_group_tests_name("bulk_trigger", tests, NULL, ct_group_teardown);
}
