/*
 * test_trigger.c - cl_trigger on its success paths: the message and job it
 * writes (result fields and stored rows), default content, scheduling, the
 * additive bulk_envelope_id, and payloads that must be stored as data, byte
 * for byte.
 */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S CT_SCHEMA

static void test_trigger__writes_pending_message_and_available_job(void **state) {
  ct_world *w = *state;
  cl_trigger_opts opts = {.template_id = "recovery_v1", .content = "hello"};
  cl_trigger_result res = {0};
  cl_error err;
  ct_assert_ok(cl_trigger(w->eng, 3, &opts, &res, &err), &err);

  const cl_message *m = &res.message;
  assert_true(m->id > 0);
  assert_int_equal(m->conversation_id, 3);
  assert_string_equal(m->role, "system_outbound");
  assert_string_equal(m->content, "hello");
  assert_string_equal(m->template_id, "recovery_v1");
  assert_string_equal(m->status, "pending");
  assert_null(m->bulk_envelope_id);

  const cl_delivery_job *j = &res.delivery_job;
  assert_true(j->id > 0);
  assert_string_equal(j->worker, "outbound");
  assert_string_equal(j->state, "available");
  assert_true(ct_is_iso_utc(j->scheduled_at));
  assert_int_equal(j->message_id, m->id);
  assert_int_equal(j->conversation_id, 3);
  assert_string_equal(j->template_id, "recovery_v1");
  assert_null(j->bulk_envelope_id);
  assert_int_equal(res.duplicate, 0);
  assert_null(res.audit_json);

  ct_assert_counts(S, 0, 1, 1);
  long long mid = (long long)m->id, jid = (long long)j->id;
  ct_assert_scalar(
      "3|system_outbound|hello|recovery_v1|pending|t",
      "SELECT concat_ws('|', conversation_id, role, content, "
      "metadata->>'template_id', metadata->>'status', "
      "metadata->>'bulk_envelope_id' IS NULL) FROM %s.cairnloop_messages WHERE id = %lld",
      S, mid);
  /* metadata holds the designed keys and nothing else. */
  ct_assert_scalar("t",
                   "SELECT (SELECT array_agg(k) FROM jsonb_object_keys(metadata) k) <@ "
                   "ARRAY['template_id', 'status', 'bulk_envelope_id'] FROM "
                   "%s.cairnloop_messages WHERE id = %lld",
                   S, mid);
  ct_assert_scalar("outbound|3|recovery_v1|t|available|0|t|t",
                   "SELECT concat_ws('|', worker, conversation_id, template_id, "
                   "bulk_envelope_id IS NULL, state, attempt, max_attempts > 0, "
                   "scheduled_at <= now()) FROM %s.cairnloop_delivery_jobs WHERE id = %lld",
                   S, jid);
  ct_assert_scalar("t", "SELECT message_id = %lld FROM %s.cairnloop_delivery_jobs WHERE id = %lld",
                   mid, S, jid);
  /* The job's args carry the same four facts. */
  ct_assert_scalar(
      "t",
      "SELECT (args->>'message_id')::bigint = %lld AND "
      "(args->>'conversation_id')::bigint = 3 AND args->>'template_id' = 'recovery_v1' "
      "AND args->>'bulk_envelope_id' IS NULL AND "
      "(SELECT array_agg(k) FROM jsonb_object_keys(args) k) <@ ARRAY['message_id', "
      "'conversation_id', 'template_id', 'bulk_envelope_id'] "
      "FROM %s.cairnloop_delivery_jobs WHERE id = %lld",
      mid, S, jid);
  cl_trigger_result_clear(&res);
}

static void test_trigger__default_content_names_the_template(void **state) {
  ct_world *w = *state;
  cl_trigger_opts opts = {.template_id = "welcome_v2"};
  cl_trigger_result res = {0};
  cl_error err;
  ct_assert_ok(cl_trigger(w->eng, 1, &opts, &res, &err), &err);
  assert_string_equal(res.message.content, "Outbound message using template: welcome_v2");
  ct_assert_scalar("Outbound message using template: welcome_v2",
                   "SELECT content FROM %s.cairnloop_messages WHERE id = %lld", S,
                   (long long)res.message.id);
  cl_trigger_result_clear(&res);
}

static void test_trigger__schedule_in_schedules_the_job_ahead(void **state) {
  ct_world *w = *state;
  cl_trigger_opts opts = {.template_id = "later", .schedule_in = 3600};
  cl_trigger_result res = {0};
  cl_error err;
  ct_assert_ok(cl_trigger(w->eng, 2, &opts, &res, &err), &err);
  assert_string_equal(res.delivery_job.state, "scheduled");
  assert_true(ct_is_iso_utc(res.delivery_job.scheduled_at));
  ct_assert_scalar("scheduled|t",
                   "SELECT concat_ws('|', state, scheduled_at BETWEEN now() + interval '3540 s' "
                   "AND now() + interval '3660 s') FROM %s.cairnloop_delivery_jobs WHERE id = %lld",
                   S, (long long)res.delivery_job.id);
  /* The returned time is the stored one. */
  char *stored = ct_scalar("SELECT to_char(scheduled_at AT TIME ZONE 'UTC', "
                           "'YYYY-MM-DD\"T\"HH24:MI:SS') FROM %s.cairnloop_delivery_jobs "
                           "WHERE id = %lld",
                           S, (long long)res.delivery_job.id);
  assert_non_null(stored);
  assert_memory_equal(res.delivery_job.scheduled_at, stored, strlen(stored));
  free(stored);
  cl_trigger_result_clear(&res);

  /* schedule_in = 0 is due now. */
  opts.template_id = "now";
  opts.schedule_in = 0;
  ct_assert_ok(cl_trigger(w->eng, 2, &opts, &res, &err), &err);
  assert_string_equal(res.delivery_job.state, "available");
  cl_trigger_result_clear(&res);
}

static void test_trigger__threads_bulk_envelope_id_into_message_and_job(void **state) {
  ct_world *w = *state;
  const char *id = "0b9e3c1e-6f4a-4d2b-9a57-1f0c2d3e4f50";
  cl_trigger_opts opts = {.template_id = "t", .bulk_envelope_id = id};
  cl_trigger_result res = {0};
  cl_error err;
  ct_assert_ok(cl_trigger(w->eng, 4, &opts, &res, &err), &err);
  assert_string_equal(res.message.bulk_envelope_id, id);
  assert_string_equal(res.delivery_job.bulk_envelope_id, id);
  ct_assert_scalar(id,
                   "SELECT metadata->>'bulk_envelope_id' FROM %s.cairnloop_messages "
                   "WHERE id = %lld",
                   S, (long long)res.message.id);
  ct_assert_scalar(id,
                   "SELECT bulk_envelope_id::text FROM %s.cairnloop_delivery_jobs "
                   "WHERE id = %lld",
                   S, (long long)res.delivery_job.id);
  ct_assert_scalar(id,
                   "SELECT args->>'bulk_envelope_id' FROM %s.cairnloop_delivery_jobs "
                   "WHERE id = %lld",
                   S, (long long)res.delivery_job.id);
  cl_trigger_result_clear(&res);
}

static void test_trigger__uppercase_envelope_id_is_stored_canonical(void **state) {
  ct_world *w = *state;
  cl_trigger_opts opts = {.template_id = "t",
                          .bulk_envelope_id = "0B9E3C1E-6F4A-4D2B-9A57-1F0C2D3E4F50"};
  cl_trigger_result res = {0};
  cl_error err;
  ct_assert_ok(cl_trigger(w->eng, 4, &opts, &res, &err), &err);
  const char *lower = "0b9e3c1e-6f4a-4d2b-9a57-1f0c2d3e4f50";
  assert_string_equal(res.message.bulk_envelope_id, lower);
  ct_assert_scalar(lower,
                   "SELECT metadata->>'bulk_envelope_id' FROM %s.cairnloop_messages "
                   "WHERE id = %lld",
                   S, (long long)res.message.id);
  ct_assert_scalar(lower,
                   "SELECT args->>'bulk_envelope_id' FROM %s.cairnloop_delivery_jobs "
                   "WHERE id = %lld",
                   S, (long long)res.delivery_job.id);
  cl_trigger_result_clear(&res);
}

/* Text that would break naive quoting or formatting, stored unchanged. */
static const char *const tricky_content =
    "'); DROP TABLE cairnloop_messages; --\n"
    "Dear \"customer\", it's $1 and $$body$$ and \\backslash\\ \\x00 %s %n %%\r\n"
    "\ttabbed \xc3\xa9\xe2\x82\xac \xf0\x9f\x91\x8b \xe4\xbd\xa0\xe5\xa5\xbd {\"json\": null}";

static void test_trigger__hostile_strings_are_stored_as_data(void **state) {
  ct_world *w = *state;
  int64_t tables = ct_int("SELECT count(*) FROM pg_tables WHERE schemaname = '%s'", S);
  const char *tmpl = "'); DROP TABLE x; --";
  cl_trigger_opts opts = {
      .template_id = tmpl, .content = tricky_content, .actor = "Robert'); DROP TABLE students;--"};
  cl_trigger_result res = {0};
  cl_error err;
  ct_assert_ok(cl_trigger(w->eng, 5, &opts, &res, &err), &err);
  assert_string_equal(res.message.content, tricky_content);
  assert_string_equal(res.message.template_id, tmpl);
  assert_string_equal(res.delivery_job.template_id, tmpl);

  char id[32];
  snprintf(id, sizeof id, "%lld", (long long)res.message.id);
  ct_assert_scalar1(tricky_content,
                    "SELECT content FROM " S ".cairnloop_messages WHERE id = $1::bigint", id);
  ct_assert_scalar1(tmpl,
                    "SELECT metadata->>'template_id' FROM " S ".cairnloop_messages "
                    "WHERE id = $1::bigint",
                    id);
  ct_assert_scalar1(tmpl,
                    "SELECT template_id FROM " S ".cairnloop_delivery_jobs WHERE message_id = "
                    "$1::bigint",
                    id);
  ct_assert_scalar1(tmpl,
                    "SELECT args->>'template_id' FROM " S ".cairnloop_delivery_jobs "
                    "WHERE message_id = $1::bigint",
                    id);
  /* Every table is still there. */
  assert_int_equal(ct_int("SELECT count(*) FROM pg_tables WHERE schemaname = '%s'", S), tables);
  ct_assert_counts(S, 0, 1, 1);
  cl_trigger_result_clear(&res);
}

static void test_trigger__template_id_of_255_bytes_is_accepted(void **state) {
  ct_world *w = *state;
  char tmpl[256];
  memset(tmpl, 'x', 255);
  tmpl[255] = '\0';
  cl_trigger_opts opts = {.template_id = tmpl};
  cl_trigger_result res = {0};
  cl_error err;
  ct_assert_ok(cl_trigger(w->eng, 1, &opts, &res, &err), &err);
  assert_string_equal(res.message.template_id, tmpl);
  cl_trigger_result_clear(&res);
}

static void test_trigger__result_clear_is_idempotent_and_null_safe(void **state) {
  ct_world *w = *state;
  cl_trigger_opts opts = {.template_id = "t"};
  cl_trigger_result res = {0};
  cl_error err;
  ct_assert_ok(cl_trigger(w->eng, 1, &opts, &res, &err), &err);
  cl_trigger_result_clear(&res);
  cl_trigger_result_clear(&res);
  cl_trigger_result_clear(NULL);
  /* A result that was never filled can be cleared too. */
  cl_trigger_result empty = {0};
  cl_trigger_result_clear(&empty);
}

static void test_trigger__accepts_null_error_pointer(void **state) {
  ct_world *w = *state;
  cl_trigger_opts opts = {.template_id = "t"};
  cl_trigger_result res = {0};
  assert_int_equal(cl_trigger(w->eng, 1, &opts, &res, NULL), CL_OK);
  cl_trigger_result_clear(&res);
  opts.template_id = NULL;
  assert_int_equal(cl_trigger(w->eng, 1, &opts, &res, NULL), CL_INVALID_ARGUMENT);
  cl_trigger_result_clear(&res);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, ct_world_setup, ct_world_teardown)
  const struct CMUnitTest tests[] = {
      T(test_trigger__writes_pending_message_and_available_job),
      T(test_trigger__default_content_names_the_template),
      T(test_trigger__schedule_in_schedules_the_job_ahead),
      T(test_trigger__threads_bulk_envelope_id_into_message_and_job),
      T(test_trigger__uppercase_envelope_id_is_stored_canonical),
      T(test_trigger__hostile_strings_are_stored_as_data),
      T(test_trigger__template_id_of_255_bytes_is_accepted),
      T(test_trigger__result_clear_is_idempotent_and_null_safe),
      T(test_trigger__accepts_null_error_pointer),
  };
  return cmocka_run_group_tests_name("trigger", tests, NULL, ct_group_teardown);
}
