/*
 * test_ops.c - operating the queue: the at-most-once key survives pruning
 * (it lives on the messages), and the operator verbs cl_jobs, cl_stats,
 * cl_retry, cl_cancel, cl_pause/cl_resume and cl_prune, with the workers'
 * own retention: rows before and after, audit calls, telemetry.
 */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S CT_SCHEMA

static const char *const ENV_A = "8d1f6a52-3c2e-4b7a-9f10-2a3b4c5d6e7f";

static void trigger(ct_world *w, int64_t conv, const char *tmpl, const char *env,
                    cl_trigger_result *res) {
  cl_trigger_opts opts = {.template_id = tmpl, .bulk_envelope_id = env};
  cl_error err;
  memset(res, 0, sizeof *res);
  ct_assert_ok(cl_trigger(w->eng, conv, &opts, res, &err), &err);
}

static cl_work_stats work(ct_world *w, int limit) {
  cl_work_stats s;
  cl_error err;
  ct_assert_ok(cl_work(w->eng, limit, &s, &err), &err);
  return s;
}

/* ------------------------------------------------------------ dedup */

/* Bug: the key (conversation, template, envelope) lived only on the jobs,
 * so deleting completed jobs by hand re-opened it and the same trigger
 * stored and sent a second message.  Fixed by migration 20260701000000,
 * which moves the key to the messages. */
static void test_dedup__deleting_finished_jobs_keeps_a_trigger_a_duplicate(void **state) {
  ct_world *w = *state;
  cl_trigger_result first, again;
  trigger(w, 2, "t", NULL, &first);
  trigger(w, 3, "t", ENV_A, &again);
  cl_trigger_result_clear(&again);
  assert_int_equal(work(w, 10).no_op, 2);
  ct_exec("DELETE FROM %s.cairnloop_delivery_jobs WHERE state = 'completed'", S);
  ct_assert_counts(S, 0, 2, 0);

  trigger(w, 2, "t", NULL, &again);
  assert_int_equal(again.duplicate, 1);
  assert_int_equal(again.message.id, first.message.id);
  assert_string_equal(again.message.status, "sent");
  /* The job is gone: the duplicate says so rather than invent one. */
  assert_int_equal(again.delivery_job.id, 0);
  assert_null(again.delivery_job.state);
  cl_trigger_result_clear(&again);
  trigger(w, 3, "t", ENV_A, &again);
  assert_int_equal(again.duplicate, 1);
  cl_trigger_result_clear(&again);

  /* Nothing new was stored, so nothing is delivered again. */
  ct_assert_counts(S, 0, 2, 0);
  assert_int_equal(work(w, 10).no_op, 0);
  ct_assert_str(&ct_capture_nth(&w->cap, "cairnloop.outbound.triggered.stop", 3)->metadata,
                "outcome", "duplicate");
  cl_trigger_result_clear(&first);
}

static void test_dedup__replaying_a_bulk_after_pruning_writes_nothing(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {4, 5, 6};
  cl_bulk_opts opts = {.template_id = "camp", .rendered_body = "hi", .envelope_id = ENV_A};
  cl_bulk_result res = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(w->eng, ids, 3, &opts, &res, &err), &err);
  cl_bulk_result_clear(&res);
  assert_int_equal(work(w, 10).no_op, 3);
  ct_exec("DELETE FROM %s.cairnloop_delivery_jobs WHERE state = 'completed'", S);

  ct_assert_ok(cl_bulk_trigger(w->eng, ids, 3, &opts, &res, &err), &err);
  assert_int_equal(res.replayed, 1);
  assert_int_equal(res.count, 3);
  for (size_t i = 0; i < 3; i++) {
    assert_int_equal(res.messages[i].conversation_id, ids[i]);
    assert_string_equal(res.messages[i].status, "sent");
    assert_int_equal(res.delivery_jobs[i].id, 0);
  }
  cl_bulk_result_clear(&res);
  /* A single trigger of a recipient is the same key. */
  cl_trigger_result t;
  trigger(w, 5, "camp", ENV_A, &t);
  assert_int_equal(t.duplicate, 1);
  cl_trigger_result_clear(&t);
  ct_assert_counts(S, 1, 3, 0);
}

/* The migration moves existing rows: each outbound message gets its key
 * from its metadata, and where an earlier bug let two messages share a key
 * the one whose job survives holds it.  Replayed here by undoing the
 * migration on a schema of its own and running it again. */
static void test_dedup__migration_moves_the_key_of_existing_messages(void **state) {
  (void)state;
  const char *sch = "cl_test_dedup_mig";
  ct_exec("DROP SCHEMA IF EXISTS %s CASCADE", sch);
  cl_engine *eng = ct_open(sch);
  ct_exec("DROP INDEX %s.cairnloop_messages_outbound_key_index", sch);
  ct_exec("DROP INDEX %s.cairnloop_messages_bulk_envelope_id_index", sch);
  ct_exec("ALTER TABLE %s.cairnloop_messages DROP COLUMN template_id, "
          "DROP COLUMN bulk_envelope_id",
          sch);
  ct_exec("ALTER TABLE %s.cairnloop_delivery_jobs ADD CONSTRAINT "
          "cairnloop_delivery_jobs_unique_recipient UNIQUE NULLS NOT DISTINCT "
          "(conversation_id, template_id, bulk_envelope_id)",
          sch);
  ct_exec("DELETE FROM %s.cairnloop_schema_migrations WHERE version = "
          "'20260701000000_dedup_on_messages'",
          sch);
  ct_seed(sch, 3);
  /* 1: the old duplicate pair (job of message 1 deleted by hand, then sent
   * again as message 2); 3: with an envelope; 4: a host's own message. */
  ct_exec("INSERT INTO %s.cairnloop_messages (conversation_id, content, role, metadata) VALUES "
          "(1, 'a', 'system_outbound', '{\"template_id\": \"t\", \"status\": \"sent\", "
          "\"bulk_envelope_id\": null}'), "
          "(1, 'b', 'system_outbound', '{\"template_id\": \"t\", \"status\": \"pending\", "
          "\"bulk_envelope_id\": null}'), "
          "(2, 'c', 'system_outbound', '{\"template_id\": \"t\", \"status\": \"pending\", "
          "\"bulk_envelope_id\": \"%s\"}'), "
          "(3, 'd', 'user', '{}')",
          sch, ENV_A);
  ct_exec("INSERT INTO %s.cairnloop_delivery_jobs (message_id, conversation_id, template_id, "
          "bulk_envelope_id, args) VALUES (2, 1, 't', NULL, '{}'), (3, 2, 't', '%s', '{}')",
          sch, ENV_A);
  cl_error err;
  ct_assert_ok(cl_migrate(eng, &err), &err);
  ct_assert_scalar("2:t:", "SELECT string_agg(id || ':' || coalesce(template_id, '') || ':' "
                           "|| coalesce(bulk_envelope_id::text, ''), ',' ORDER BY id) "
                           "FROM %s.cairnloop_messages WHERE conversation_id = 1 "
                           "AND template_id IS NOT NULL",
                   sch);
  ct_assert_scalar(ENV_A, "SELECT bulk_envelope_id::text FROM %s.cairnloop_messages WHERE id = 3",
                   sch);
  ct_assert_scalar(NULL, "SELECT template_id FROM %s.cairnloop_messages WHERE id = 4", sch);
  /* The key holds from now on. */
  cl_trigger_opts opts = {.template_id = "t"};
  cl_trigger_result res = {0};
  ct_assert_ok(cl_trigger(eng, 1, &opts, &res, &err), &err);
  assert_int_equal(res.duplicate, 1);
  assert_int_equal(res.message.id, 2);
  cl_trigger_result_clear(&res);
  cl_close(eng);
  ct_exec("DROP SCHEMA %s CASCADE", sch);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, ct_world_setup, ct_world_teardown)
  const struct CMUnitTest tests[] = {
      T(test_dedup__deleting_finished_jobs_keeps_a_trigger_a_duplicate),
      T(test_dedup__replaying_a_bulk_after_pruning_writes_nothing),
      cmocka_unit_test(test_dedup__migration_moves_the_key_of_existing_messages),
  };
  return cmocka_run_group_tests_name("ops", tests, NULL, ct_group_teardown);
}
