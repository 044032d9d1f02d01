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
#include <time.h>

#define S CT_SCHEMA

static const char *const ENV_A = "8d1f6a52-3c2e-4b7a-9f10-2a3b4c5d6e7f";

static void trigger(ct_world *w, int64_t conv, const char *tmpl, const char *env,
                    cl_trigger_result *res) {
  cl_trigger_opts opts = {.template_id = tmpl, .bulk_envelope_id = env};
  cl_error err;
  memset(res, 0, sizeof *res);
  ct_assert_ok(cl_trigger(w->eng, conv, &opts, res, &err), &err);
}

/* A C notifier that fails every attempt (or none, with `ok`). */
typedef struct notifier {
  bool ok;
  int calls;
} notifier;

static cl_status deliver(void *ud, const cl_message *m, const cl_conversation *c, const char *key,
                         int attempt, cl_error *err) {
  (void)m;
  (void)c;
  (void)key;
  (void)attempt;
  notifier *n = ud;
  n->calls++;
  if (n->ok) return CL_OK;
  snprintf(err->message, sizeof err->message, "gateway said no");
  err->code = CL_HOOK_ERROR;
  return CL_HOOK_ERROR;
}

static void install_notifier(cl_engine *eng, notifier *n) {
  cl_notifier hook = {deliver, NULL, n};
  cl_error err;
  ct_assert_ok(cl_set_notifier(eng, n ? &hook : NULL, &err), &err);
}

/* A world whose jobs are discarded after one failed attempt. */
static int one_attempt_setup(void **state) {
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.max_attempts = 1;
  *state = ct_world_new(10, &cfg);
  return 0;
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
  ct_assert_scalar("2:t:",
                   "SELECT string_agg(id || ':' || coalesce(template_id, '') || ':' "
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

/* ------------------------------------------------------------ helpers */

static void bulk(ct_world *w, const int64_t *ids, size_t n, const char *env, int64_t schedule_in) {
  cl_bulk_opts opts = {.template_id = "camp",
                       .rendered_body = "hello",
                       .envelope_id = env,
                       .schedule_in = schedule_in};
  cl_bulk_result res = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(w->eng, ids, n, &opts, &res, &err), &err);
  cl_bulk_result_clear(&res);
}

static int64_t job_of(int64_t conversation_id, const char *tmpl) {
  return ct_int("SELECT id FROM %s.cairnloop_delivery_jobs WHERE conversation_id = %lld "
                "AND template_id = '%s'",
                S, (long long)conversation_id, tmpl);
}

static void assert_job(int64_t id, const char *state, const char *message_status) {
  char want[64];
  snprintf(want, sizeof want, "%s/%s", state, message_status);
  ct_assert_scalar(want,
                   "SELECT j.state || '/' || (m.metadata->>'status') FROM "
                   "%s.cairnloop_delivery_jobs j JOIN %s.cairnloop_messages m "
                   "ON m.id = j.message_id WHERE j.id = %lld",
                   S, S, (long long)id);
}

/* ------------------------------------------------------------ jobs and stats */

static void test_jobs__lists_newest_first_filtered_by_state_envelope_and_template(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {1, 2, 3};
  bulk(w, ids, 3, ENV_A, 0);
  cl_trigger_result t;
  trigger(w, 4, "single", NULL, &t);
  cl_trigger_result_clear(&t);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'scheduled' WHERE conversation_id = 2", S);

  cl_job_list list = {0};
  cl_error err;
  ct_assert_ok(cl_jobs(w->eng, NULL, &list, &err), &err);
  assert_int_equal(list.count, 4);
  assert_int_equal(list.items[0].job.conversation_id, 4); /* newest first */
  assert_string_equal(list.items[0].job.state, "available");
  assert_string_equal(list.items[0].job.worker, "outbound");
  assert_null(list.items[0].job.bulk_envelope_id);
  assert_null(list.items[0].finished_at);
  assert_int_equal(list.items[0].attempt, 0);
  assert_true(ct_is_iso_utc(list.items[0].inserted_at));
  cl_job_list_clear(&list);

  cl_job_query q = {.envelope_id = "8D1F6A52-3C2E-4B7A-9F10-2A3B4C5D6E7F"};
  ct_assert_ok(cl_jobs(w->eng, &q, &list, &err), &err);
  assert_int_equal(list.count, 3);
  for (size_t i = 0; i < list.count; i++) {
    assert_string_equal(list.items[i].job.bulk_envelope_id, ENV_A);
    assert_string_equal(list.items[i].job.template_id, "camp");
  }
  cl_job_list_clear(&list);

  q = (cl_job_query){.state = "scheduled"};
  ct_assert_ok(cl_jobs(w->eng, &q, &list, &err), &err);
  assert_int_equal(list.count, 1);
  assert_int_equal(list.items[0].job.conversation_id, 2);
  cl_job_list_clear(&list);

  q = (cl_job_query){.template_id = "single", .limit = 1};
  ct_assert_ok(cl_jobs(w->eng, &q, &list, &err), &err);
  assert_int_equal(list.count, 1);
  cl_job_list_clear(&list);

  q = (cl_job_query){.state = "lost"};
  ct_assert_error(cl_jobs(w->eng, &q, &list, &err), &err, CL_INVALID_ARGUMENT, "state 'lost'");
  q = (cl_job_query){.envelope_id = "nope"};
  ct_assert_error(cl_jobs(w->eng, &q, &list, &err), &err, CL_INVALID_ARGUMENT, "envelope_id");
  q = (cl_job_query){.limit = CL_JOBS_MAX_LIMIT + 1};
  ct_assert_error(cl_jobs(w->eng, &q, &list, &err), &err, CL_INVALID_ARGUMENT, "limit");
  assert_int_equal(list.count, 0);
  cl_job_list_clear(&list);
}

static void test_stats__counts_states_oldest_due_age_and_pause(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {1, 2, 3};
  bulk(w, ids, 3, ENV_A, 0);
  cl_trigger_result t;
  trigger(w, 4, "single", NULL, &t);
  cl_trigger_result_clear(&t);
  trigger(w, 5, "later", NULL, &t);
  cl_trigger_result_clear(&t);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'scheduled', "
          "scheduled_at = now() + interval '1 hour' WHERE conversation_id = 5",
          S);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET scheduled_at = now() - interval '90 seconds' "
          "WHERE conversation_id = 1",
          S);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'completed', completed_at = now() "
          "WHERE conversation_id = 2",
          S);

  cl_queue_stats st;
  cl_error err;
  ct_assert_ok(cl_stats(w->eng, NULL, &st, &err), &err);
  assert_int_equal(st.count[CL_JOB_AVAILABLE], 3);
  assert_int_equal(st.count[CL_JOB_SCHEDULED], 1);
  assert_int_equal(st.count[CL_JOB_COMPLETED], 1);
  assert_int_equal(st.count[CL_JOB_EXECUTING] + st.count[CL_JOB_RETRYABLE] +
                       st.count[CL_JOB_DISCARDED] + st.count[CL_JOB_CANCELLED],
                   0);
  assert_in_range(st.oldest_due_age_seconds, 90, 120);
  assert_int_equal(st.paused, 0);

  ct_assert_ok(cl_stats(w->eng, ENV_A, &st, &err), &err);
  assert_int_equal(st.count[CL_JOB_AVAILABLE], 2);
  assert_int_equal(st.count[CL_JOB_COMPLETED], 1);
  assert_int_equal(st.count[CL_JOB_SCHEDULED], 0);

  ct_assert_ok(cl_pause(w->eng, NULL, &err), &err);
  ct_exec("DELETE FROM %s.cairnloop_delivery_jobs", S);
  ct_assert_ok(cl_stats(w->eng, NULL, &st, &err), &err);
  for (int i = 0; i < CL_JOB_STATE__COUNT; i++) assert_int_equal(st.count[i], 0);
  assert_int_equal(st.oldest_due_age_seconds, 0);
  assert_int_equal(st.paused, 1);
  ct_assert_error(cl_stats(w->eng, "x", &st, &err), &err, CL_INVALID_ARGUMENT, "envelope_id");
  ct_assert_ok(cl_resume(w->eng, NULL, &err), &err);
}

static void test_job_states__table_names_and_parses_every_state(void **state) {
  (void)state;
  static const char *const want[] = {"available", "scheduled", "executing", "retryable",
                                     "completed", "discarded", "cancelled"};
  assert_int_equal(CL_JOB_STATE__COUNT, CT_ARRAY_LEN(want));
  for (int i = 0; i < CL_JOB_STATE__COUNT; i++) {
    cl_job_state s;
    cl_error err;
    assert_string_equal(cl_job_state_name((cl_job_state)i), want[i]);
    ct_assert_ok(cl_job_state_parse(want[i], &s, &err), &err);
    assert_int_equal(s, i);
  }
  assert_null(cl_job_state_name(CL_JOB_STATE__COUNT));
  /* The database accepts exactly these. */
  cl_engine *eng = ct_open(NULL);
  char msg[256];
  assert_false(ct_try_exec(msg, sizeof msg,
                           "INSERT INTO %s.cairnloop_delivery_jobs (message_id, conversation_id, "
                           "template_id, args, state) VALUES (1, 1, 't', '{}', 'lost')",
                           S));
  assert_non_null(strstr(msg, "state_enum"));
  cl_close(eng);
}

/* ------------------------------------------------------------ retry */

/* Re-triggering a discarded message is a duplicate that sends nothing
 * (the key holds); retry is how it goes out again, with every attempt. */
static void test_retry__discarded_job_is_delivered_again_and_a_retrigger_is_not(void **state) {
  ct_world *w = *state;
  notifier n = {0};
  install_notifier(w->eng, &n);
  cl_trigger_result t;
  trigger(w, 3, "t", NULL, &t);
  int64_t job = t.delivery_job.id;
  cl_trigger_result_clear(&t);
  cl_work_stats s = work(w, 10);
  assert_int_equal(s.failed, 1);
  assert_int_equal(s.discarded, 1);
  assert_job(job, "discarded", "failed");

  trigger(w, 3, "t", NULL, &t);
  assert_int_equal(t.duplicate, 1);
  assert_string_equal(t.delivery_job.state, "discarded");
  cl_trigger_result_clear(&t);
  assert_int_equal(work(w, 10).failed, 0);

  cl_job_list list = {0};
  cl_error err;
  cl_job_query q = {.state = "discarded"};
  ct_assert_ok(cl_jobs(w->eng, &q, &list, &err), &err);
  assert_int_equal(list.count, 1);
  assert_string_equal(list.items[0].last_error, "gateway said no");
  assert_int_equal(list.items[0].attempt, 1);
  assert_non_null(list.items[0].finished_at);
  cl_job_list_clear(&list);

  int64_t retried = -1;
  cl_job_selector sel = {.ids = &job, .count = 1};
  ct_assert_ok(cl_retry(w->eng, &sel, &retried, &err), &err);
  assert_int_equal(retried, 1);
  assert_job(job, "available", "pending");
  ct_assert_scalar("0", "SELECT attempt FROM %s.cairnloop_delivery_jobs WHERE id = %lld", S,
                   (long long)job);
  /* The failure stays in the job's history. */
  ct_assert_scalar("1",
                   "SELECT jsonb_array_length(errors) FROM %s.cairnloop_delivery_jobs "
                   "WHERE id = %lld",
                   S, (long long)job);
  /* n is read by the notifier installed above, through its pointer. */
  // cppcheck-suppress unreadVariable
  n.ok = true;
  s = work(w, 10);
  assert_int_equal(s.sent, 1);
  assert_job(job, "completed", "sent");
  /* A completed job is not retried. */
  ct_assert_ok(cl_retry(w->eng, &sel, &retried, &err), &err);
  assert_int_equal(retried, 0);
  install_notifier(w->eng, NULL);
}

static void test_retry__by_envelope_and_all_discarded(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {1, 2, 3};
  bulk(w, ids, 3, ENV_A, 0);
  cl_trigger_result t;
  trigger(w, 5, "other", NULL, &t);
  cl_trigger_result_clear(&t);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'discarded', discarded_at = now(), "
          "attempt = 20 WHERE conversation_id IN (1, 5)",
          S);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'retryable', attempt = 3, "
          "scheduled_at = now() + interval '1 hour' WHERE conversation_id = 2",
          S);

  int64_t retried = -1;
  cl_error err;
  cl_job_selector sel = {.envelope_id = ENV_A};
  ct_assert_ok(cl_retry(w->eng, &sel, &retried, &err), &err);
  assert_int_equal(retried, 2); /* the discarded and the retryable one of the envelope */
  assert_job(job_of(1, "camp"), "available", "pending");
  assert_job(job_of(2, "camp"), "available", "pending");
  ct_assert_scalar("t",
                   "SELECT scheduled_at <= now() FROM %s.cairnloop_delivery_jobs "
                   "WHERE id = %lld",
                   S, (long long)job_of(2, "camp"));
  assert_job(job_of(5, "other"), "discarded", "pending");

  sel = (cl_job_selector){.all_discarded = 1};
  ct_assert_ok(cl_retry(w->eng, &sel, &retried, &err), &err);
  assert_int_equal(retried, 1);
  assert_job(job_of(5, "other"), "available", "pending");
}

static void test_retry__refuses_selectors_that_are_not_exactly_one(void **state) {
  ct_world *w = *state;
  int64_t ids[] = {1, 1}, bad[] = {0};
  int64_t n = -1;
  cl_error err;
  cl_job_selector sel = {0};
  ct_assert_error(cl_retry(w->eng, &sel, &n, &err), &err, CL_INVALID_ARGUMENT, "exactly one");
  sel = (cl_job_selector){.ids = ids, .count = 1, .envelope_id = ENV_A};
  ct_assert_error(cl_retry(w->eng, &sel, &n, &err), &err, CL_INVALID_ARGUMENT, "exactly one");
  sel = (cl_job_selector){.ids = ids, .count = 2};
  ct_assert_error(cl_retry(w->eng, &sel, &n, &err), &err, CL_INVALID_ARGUMENT,
                  "duplicate job id 1");
  sel = (cl_job_selector){.ids = bad, .count = 1};
  ct_assert_error(cl_retry(w->eng, &sel, &n, &err), &err, CL_INVALID_ARGUMENT, "not positive");
  sel = (cl_job_selector){.envelope_id = "not-a-uuid"};
  ct_assert_error(cl_retry(w->eng, &sel, &n, &err), &err, CL_INVALID_ARGUMENT, "not a UUID");
  ct_assert_error(cl_retry(w->eng, NULL, &n, &err), &err, CL_INVALID_ARGUMENT, "selector");
  sel = (cl_job_selector){.all_discarded = 1};
  ct_assert_error(cl_cancel(w->eng, &sel, &n, &err), &err, CL_INVALID_ARGUMENT, "retry only");
  assert_int_equal(n, 0);
}

static void test_retry__goes_through_the_auditor_in_its_transaction(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {1, 2};
  bulk(w, ids, 2, ENV_A, 0);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'discarded', discarded_at = now()", S);
  ct_auditor a = {.mode = CT_AUDIT_REJECT, .reason = "not today"};
  ct_install_auditor(w->eng, &a);
  int64_t n = -1;
  cl_error err;
  cl_job_selector sel = {.envelope_id = ENV_A, .actor = "operator:7"};
  ct_assert_error(cl_retry(w->eng, &sel, &n, &err), &err, CL_AUDIT_REJECTED, "not today");
  assert_int_equal(a.calls, 1);
  assert_string_equal(a.action, "retry_jobs");
  assert_string_equal(a.actor, "operator:7");
  ct_assert_keys(&a.metadata, "count", "bulk_envelope_id");
  ct_assert_int(&a.metadata, "count", 2);
  ct_assert_str(&a.metadata, "bulk_envelope_id", ENV_A);
  /* Rolled back: nothing changed. */
  assert_job(job_of(1, "camp"), "discarded", "pending");

  a.mode = CT_AUDIT_EXEC;
  a.sql = "SELECT count(*) FROM cairnloop.cairnloop_delivery_jobs WHERE state = 'available' "
          "AND $1 = 'retry_jobs'";
  int64_t one = job_of(2, "camp");
  sel = (cl_job_selector){.ids = &one, .count = 1};
  ct_assert_ok(cl_retry(w->eng, &sel, &n, &err), &err);
  assert_int_equal(n, 1);
  assert_int_equal(a.calls, 2);
  ct_assert_int(&a.metadata, "count", 1);
  ct_assert_str(&a.metadata, "bulk_envelope_id", NULL);
  assert_null(a.actor);
  assert_job(one, "available", "pending");
  /* Nothing to change: no change, no audit call. */
  ct_assert_ok(cl_retry(w->eng, &sel, &n, &err), &err);
  assert_int_equal(n, 0);
  assert_int_equal(a.calls, 2);
  ct_assert_ok(cl_set_auditor(w->eng, NULL, &err), &err);
  ct_auditor_free(&a);
}

/* The audited change is counted first; the statement refuses to change
 * another number of jobs (a worker claimed one meanwhile), so the count the
 * auditor recorded is always the number changed. */
static void test_retry__count_check_refuses_a_changed_selection(void **state) {
  (void)state;
  char msg[256];
  assert_true(ct_try_exec(msg, sizeof msg, "SELECT %s.cairnloop_expect_count(2, 2)", S));
  assert_true(ct_try_exec(msg, sizeof msg, "SELECT %s.cairnloop_expect_count(1, NULL)", S));
  assert_false(ct_try_exec(msg, sizeof msg, "SELECT %s.cairnloop_expect_count(1, 2)", S));
  assert_non_null(strstr(msg, "1 of 2 changed"));
  /* serialization_failure, which ops.c reads as "count again". */
  PGresult *r = PQexec(ct_pg(), "SELECT " S ".cairnloop_expect_count(0, 1)");
  assert_string_equal(PQresultErrorField(r, PG_DIAG_SQLSTATE), "40001");
  PQclear(r);
}

/* ------------------------------------------------------------ cancel */

static void test_cancel__envelope_jobs_not_started_and_their_messages(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {1, 2, 3, 4};
  bulk(w, ids, 4, ENV_A, 0);
  cl_trigger_result t;
  trigger(w, 6, "camp", NULL, &t); /* another key: not of the envelope */
  cl_trigger_result_clear(&t);
  /* 2 is being delivered right now; 3 is scheduled; 4 already sent. */
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'executing', attempt = 1, "
          "lease_owner = 'elsewhere', lease_expires_at = now() + interval '1 minute' "
          "WHERE conversation_id = 2",
          S);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'scheduled', "
          "scheduled_at = now() + interval '1 day' WHERE conversation_id = 3",
          S);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'completed', completed_at = now() "
          "WHERE conversation_id = 4",
          S);

  int64_t n = -1;
  cl_error err;
  cl_job_selector sel = {.envelope_id = ENV_A};
  ct_assert_ok(cl_cancel(w->eng, &sel, &n, &err), &err);
  assert_int_equal(n, 2);
  assert_job(job_of(1, "camp"), "cancelled", "cancelled");
  assert_job(job_of(3, "camp"), "cancelled", "cancelled");
  assert_job(job_of(2, "camp"), "executing", "pending");
  assert_job(job_of(4, "camp"), "completed", "pending");
  assert_job(job_of(6, "camp"), "available", "pending");
  ct_assert_scalar("2",
                   "SELECT count(*) FROM %s.cairnloop_delivery_jobs WHERE state = "
                   "'cancelled' AND discarded_at IS NOT NULL AND completed_at IS NULL",
                   S);

  const ct_event *e = ct_capture_nth(&w->cap, "cairnloop.outbound.delivery.cancelled", 0);
  assert_non_null(e);
  ct_assert_keys(&e->measurements, "count");
  ct_assert_int(&e->measurements, "count", 2);
  ct_assert_keys(&e->metadata, "outcome");
  ct_assert_str(&e->metadata, "outcome", "cancelled");

  /* Workers pass cancelled jobs over; the one in flight finishes. */
  assert_int_equal(work(w, 10).no_op, 1); /* conversation 6 */
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET lease_expires_at = now() - interval '1 s' "
          "WHERE conversation_id = 2",
          S);
  assert_int_equal(work(w, 10).no_op, 1);
  assert_job(job_of(2, "camp"), "completed", "sent");

  /* Cancelling again changes nothing and emits nothing. */
  ct_assert_ok(cl_cancel(w->eng, &sel, &n, &err), &err);
  assert_int_equal(n, 0);
  assert_int_equal(ct_capture_count(&w->cap, "cairnloop.outbound.delivery.cancelled"), 1);
  /* Retry leaves cancelled jobs alone. */
  int64_t c1 = job_of(1, "camp");
  sel = (cl_job_selector){.ids = &c1, .count = 1};
  ct_assert_ok(cl_retry(w->eng, &sel, &n, &err), &err);
  assert_int_equal(n, 0);
}

static void test_cancel__by_ids_is_audited_with_count_and_envelope(void **state) {
  ct_world *w = *state;
  cl_trigger_result t1, t2;
  trigger(w, 1, "t", NULL, &t1);
  trigger(w, 2, "t", ENV_A, &t2);
  int64_t jobs[] = {t1.delivery_job.id, t2.delivery_job.id};
  cl_trigger_result_clear(&t1);
  cl_trigger_result_clear(&t2);
  ct_auditor a = {.mode = CT_AUDIT_ACCEPT};
  ct_install_auditor(w->eng, &a);
  int64_t n = -1;
  cl_error err;
  cl_job_selector sel = {.ids = jobs, .count = 2};
  ct_assert_ok(cl_cancel(w->eng, &sel, &n, &err), &err);
  assert_int_equal(n, 2);
  assert_int_equal(a.calls, 1);
  assert_string_equal(a.action, "cancel_jobs");
  ct_assert_keys(&a.metadata, "count", "bulk_envelope_id");
  ct_assert_int(&a.metadata, "count", 2);
  ct_assert_str(&a.metadata, "bulk_envelope_id", NULL);
  assert_job(jobs[0], "cancelled", "cancelled");

  /* An auditor that fails rolls the cancel back. */
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'available', discarded_at = NULL", S);
  a.mode = CT_AUDIT_HOOK_ERROR;
  a.reason = "boom";
  ct_assert_error(cl_cancel(w->eng, &sel, &n, &err), &err, CL_HOOK_ERROR, "boom");
  assert_job(jobs[1], "available", "cancelled");
  assert_int_equal(ct_capture_count(&w->cap, "cairnloop.outbound.delivery.cancelled"), 1);
  ct_assert_ok(cl_set_auditor(w->eng, NULL, &err), &err);
  ct_auditor_free(&a);
}

/* ------------------------------------------------------------ pause */

static void test_pause__workers_claim_nothing_until_resumed(void **state) {
  ct_world *w = *state;
  cl_trigger_result t;
  trigger(w, 1, "t", NULL, &t);
  cl_trigger_result_clear(&t);
  ct_auditor a = {.mode = CT_AUDIT_ACCEPT};
  ct_install_auditor(w->eng, &a);
  cl_error err;
  ct_assert_ok(cl_pause(w->eng, "operator:1", &err), &err);
  assert_string_equal(a.action, "pause_delivery");
  assert_string_equal(a.actor, "operator:1");
  assert_int_equal(a.metadata.count, 0);
  ct_assert_scalar("t", "SELECT paused FROM %s.cairnloop_queue_control", S);

  /* Without a notifier and with one. */
  assert_int_equal(work(w, 10).no_op, 0);
  notifier n = {.ok = true};
  install_notifier(w->eng, &n);
  assert_int_equal(work(w, 10).sent, 0);
  assert_int_equal(n.calls, 0);

  /* An idle worker sleeps (nothing is due while paused) and says so once. */
  cl_wake why;
  ct_assert_ok(cl_work_wait(w->eng, 20, -1, &why, &err), &err);
  assert_int_equal(why, CL_WAKE_TIMEOUT);
  ct_assert_ok(cl_work_wait(w->eng, 0, -1, &why, &err), &err);
  assert_int_equal(ct_log_count(&w->log, CL_LOG_INFO, "delivery is paused"), 1);

  ct_assert_ok(cl_resume(w->eng, NULL, &err), &err);
  assert_string_equal(a.action, "resume_delivery");
  assert_int_equal(a.calls, 2);
  /* Resuming wakes idle workers. */
  ct_assert_ok(cl_work_wait(w->eng, 5000, -1, &why, &err), &err);
  assert_true(why == CL_WAKE_NOTIFIED || why == CL_WAKE_DUE);
  assert_int_equal(ct_log_count(&w->log, CL_LOG_INFO, "delivery resumed"), 1);
  assert_int_equal(work(w, 10).sent, 1);
  install_notifier(w->eng, NULL);

  /* A refused pause leaves delivery running. */
  a.mode = CT_AUDIT_REJECT;
  a.reason = "no";
  ct_assert_error(cl_pause(w->eng, NULL, &err), &err, CL_AUDIT_REJECTED, "no");
  ct_assert_scalar("f", "SELECT paused FROM %s.cairnloop_queue_control", S);
  ct_assert_ok(cl_set_auditor(w->eng, NULL, &err), &err);
  ct_auditor_free(&a);
}

/* ------------------------------------------------------------ prune and retention */

static void test_prune__deletes_finished_jobs_only_and_keeps_messages(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {1, 2, 3, 4, 5};
  bulk(w, ids, 5, ENV_A, 0);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'completed', completed_at = now() "
          "WHERE conversation_id = 1",
          S);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'discarded', discarded_at = now() "
          "WHERE conversation_id = 2",
          S);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'cancelled', discarded_at = now() "
          "WHERE conversation_id = 3",
          S);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'retryable' WHERE conversation_id = 4", S);
  int64_t n = -1;
  cl_error err;
  /* Within their retention: kept. */
  ct_assert_ok(cl_prune(w->eng, -1, &n, &err), &err);
  assert_int_equal(n, 0);
  ct_assert_ok(cl_prune(w->eng, 0, &n, &err), &err);
  assert_int_equal(n, 3);
  ct_assert_counts(S, 1, 5, 2);
  ct_assert_scalar("available,retryable",
                   "SELECT string_agg(state, ',' ORDER BY state) FROM "
                   "%s.cairnloop_delivery_jobs",
                   S);
}

static void test_prune__default_retention_by_kind(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {1, 2, 3, 4, 5};
  bulk(w, ids, 5, ENV_A, 0);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'completed', completed_at = now() - "
          "CASE conversation_id WHEN 1 THEN interval '25 hours' ELSE interval '23 hours' END "
          "WHERE conversation_id IN (1, 2)",
          S);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = CASE conversation_id WHEN 3 THEN "
          "'discarded' ELSE 'cancelled' END, discarded_at = now() - CASE conversation_id "
          "WHEN 3 THEN interval '8 days' ELSE interval '6 days' END "
          "WHERE conversation_id IN (3, 4)",
          S);
  int64_t n = -1;
  cl_error err;
  ct_assert_ok(cl_prune(w->eng, -1, &n, &err), &err);
  assert_int_equal(n, 2);
  ct_assert_scalar("2,4,5",
                   "SELECT string_agg(conversation_id::text, ',' ORDER BY "
                   "conversation_id) FROM %s.cairnloop_delivery_jobs",
                   S);
  /* 36 hours: the completed one of 23 hours stays, the cancelled one goes. */
  ct_assert_ok(cl_prune(w->eng, 36 * 3600, &n, &err), &err);
  assert_int_equal(n, 1);
  ct_assert_scalar("2,5",
                   "SELECT string_agg(conversation_id::text, ',' ORDER BY "
                   "conversation_id) FROM %s.cairnloop_delivery_jobs",
                   S);
}

static void test_prune__configured_retention_and_keep_forever(void **state) {
  (void)state;
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.retention_completed_seconds = -1; /* keep */
  cfg.retention_failed_seconds = 60;
  ct_world *w = ct_world_new(4, &cfg);
  const int64_t ids[] = {1, 2};
  bulk(w, ids, 2, NULL, 0);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'completed', completed_at = now() - "
          "interval '30 days' WHERE conversation_id = 1",
          S);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'discarded', discarded_at = now() - "
          "interval '2 minutes' WHERE conversation_id = 2",
          S);
  int64_t n = -1;
  cl_error err;
  ct_assert_ok(cl_prune(w->eng, -1, &n, &err), &err);
  assert_int_equal(n, 1);
  ct_assert_scalar("completed", "SELECT state FROM %s.cairnloop_delivery_jobs", S);
  ct_world_free(w);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The workers prune by themselves, in their batches: no operator needed. */
static void test_retention__workers_delete_expired_jobs_while_delivering(void **state) {
  (void)state;
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.retention_interval_ms = 1;
  ct_world *w = ct_world_new(10, &cfg);
  const int64_t ids[] = {1, 2, 3, 4, 5, 6};
  bulk(w, ids, 6, ENV_A, 0);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'completed', completed_at = now() - "
          "interval '2 days' WHERE conversation_id <= 4",
          S);
  /* Within a bounded time (the first pass is one interval after open);
   * each call also delivers. */
  int delivered = 0;
  int64_t deadline = now_ms() + 10000;
  while (ct_rows(S, "cairnloop_delivery_jobs") > 2 && now_ms() < deadline)
    delivered += work(w, 10).no_op;
  ct_assert_scalar("5,6",
                   "SELECT string_agg(conversation_id::text, ',' ORDER BY "
                   "conversation_id) FROM %s.cairnloop_delivery_jobs",
                   S);
  assert_int_equal(delivered, 2);
  ct_assert_counts(S, 1, 6, 2);
  ct_world_free(w);
}

/* ------------------------------------------------------------ envelopes and migrations */

static void test_envelopes_progress__counts_messages_by_status(void **state) {
  ct_world *w = *state;
  const int64_t ids[] = {1, 2, 3, 4};
  bulk(w, ids, 4, ENV_A, 0);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'scheduled', scheduled_at = now() + "
          "interval '1 day' WHERE conversation_id = 4",
          S);
  ct_exec("UPDATE %s.cairnloop_messages SET metadata = metadata || '{\"status\": \"failed\"}' "
          "WHERE conversation_id = 3",
          S);
  assert_int_equal(work(w, 1).no_op, 1); /* conversation 1 sent */
  int64_t four = job_of(4, "camp");
  cl_job_selector sel = {.ids = &four, .count = 1};
  int64_t n;
  cl_error err;
  ct_assert_ok(cl_cancel(w->eng, &sel, &n, &err), &err);
  ct_assert_ok(cl_prune(w->eng, 0, &n, &err), &err);

  const char *envs[] = {ENV_A, "1a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d"};
  cl_envelope_progress p[2];
  ct_assert_ok(cl_envelopes_progress(w->eng, envs, 2, p, &err), &err);
  assert_int_equal(p[0].sent, 1);
  assert_int_equal(p[0].pending, 1);
  assert_int_equal(p[0].failed, 1);
  assert_int_equal(p[0].cancelled, 1);
  assert_int_equal(p[1].pending + p[1].sent + p[1].failed + p[1].cancelled, 0);
  const char *bad[] = {"nope"};
  ct_assert_error(cl_envelopes_progress(w->eng, bad, 1, p, &err), &err, CL_INVALID_ARGUMENT,
                  "not a UUID");
}

static void test_migrations__lists_applied_and_pending_and_what_a_run_applied(void **state) {
  (void)state;
  const char *sch = "cl_test_mig_status";
  ct_exec("DROP SCHEMA IF EXISTS %s CASCADE", sch);
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.database = ct_database_url();
  cfg.schema = sch;
  cl_engine *eng = NULL;
  cl_error err;
  ct_assert_ok(cl_open(&eng, &cfg, &err), &err);
  cl_migration_list all = {0}, applied = {0};
  ct_assert_ok(cl_migrations(eng, &all, &err), &err);
  assert_true(all.count >= 9);
  for (size_t i = 0; i < all.count; i++) assert_null(all.items[i].applied_at);
  /* Reading the status created nothing. */
  assert_int_equal(ct_int("SELECT count(*) FROM pg_namespace WHERE nspname = '%s'", sch), 0);

  ct_assert_ok(cl_migrate_report(eng, &applied, &err), &err);
  assert_int_equal(applied.count, all.count);
  for (size_t i = 0; i < applied.count; i++)
    assert_string_equal(applied.items[i].version, all.items[i].version);
  assert_string_equal(applied.items[0].version, "20260101000000_create_conversations");
  cl_migration_list_clear(&applied);
  ct_assert_ok(cl_migrate_report(eng, &applied, &err), &err);
  assert_int_equal(applied.count, 0);
  cl_migration_list_clear(&applied);

  /* One pending again, and one applied by a newer library. */
  ct_exec("DELETE FROM %s.cairnloop_schema_migrations WHERE version = "
          "'20260701000100_queue_operations'",
          sch);
  ct_exec("INSERT INTO %s.cairnloop_schema_migrations (version) VALUES ('29990101000000_future')",
          sch);
  cl_migration_list_clear(&all);
  ct_assert_ok(cl_migrations(eng, &all, &err), &err);
  size_t pending = 0;
  for (size_t i = 0; i < all.count; i++) {
    if (!all.items[i].applied_at) {
      pending++;
      assert_string_equal(all.items[i].version, "20260701000100_queue_operations");
    } else {
      assert_true(ct_is_iso_utc(all.items[i].applied_at));
    }
  }
  assert_int_equal(pending, 1);
  assert_string_equal(all.items[all.count - 1].version, "29990101000000_future");
  cl_migration_list_clear(&all);
  cl_migration_list_clear(&all); /* idempotent */
  cl_close(eng);
  ct_exec("DROP SCHEMA %s CASCADE", sch);
}

static void test_ops__every_entry_refuses_a_null_engine(void **state) {
  (void)state;
  cl_error err;
  int64_t n;
  cl_queue_stats st;
  cl_job_list list;
  cl_migration_list ml;
  ct_assert_error(cl_jobs(NULL, NULL, &list, &err), &err, CL_INVALID_ARGUMENT, NULL);
  ct_assert_error(cl_stats(NULL, NULL, &st, &err), &err, CL_INVALID_ARGUMENT, NULL);
  ct_assert_error(cl_retry(NULL, NULL, &n, &err), &err, CL_INVALID_ARGUMENT, NULL);
  ct_assert_error(cl_cancel(NULL, NULL, &n, &err), &err, CL_INVALID_ARGUMENT, NULL);
  ct_assert_error(cl_pause(NULL, NULL, &err), &err, CL_INVALID_ARGUMENT, NULL);
  ct_assert_error(cl_resume(NULL, NULL, &err), &err, CL_INVALID_ARGUMENT, NULL);
  ct_assert_error(cl_prune(NULL, 0, &n, &err), &err, CL_INVALID_ARGUMENT, NULL);
  ct_assert_error(cl_migrations(NULL, &ml, &err), &err, CL_INVALID_ARGUMENT, NULL);
  ct_assert_error(cl_envelopes_progress(NULL, NULL, 0, NULL, &err), &err, CL_INVALID_ARGUMENT,
                  NULL);
  cl_job_list_clear(NULL);
  cl_migration_list_clear(NULL);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, ct_world_setup, ct_world_teardown)
#define T1(f) cmocka_unit_test_setup_teardown(f, one_attempt_setup, ct_world_teardown)
  const struct CMUnitTest tests[] = {
      T(test_dedup__deleting_finished_jobs_keeps_a_trigger_a_duplicate),
      T(test_dedup__replaying_a_bulk_after_pruning_writes_nothing),
      cmocka_unit_test(test_dedup__migration_moves_the_key_of_existing_messages),
      T(test_jobs__lists_newest_first_filtered_by_state_envelope_and_template),
      T(test_stats__counts_states_oldest_due_age_and_pause),
      cmocka_unit_test(test_job_states__table_names_and_parses_every_state),
      T1(test_retry__discarded_job_is_delivered_again_and_a_retrigger_is_not),
      T(test_retry__by_envelope_and_all_discarded),
      T(test_retry__refuses_selectors_that_are_not_exactly_one),
      T(test_retry__goes_through_the_auditor_in_its_transaction),
      T(test_retry__count_check_refuses_a_changed_selection),
      T(test_cancel__envelope_jobs_not_started_and_their_messages),
      T(test_cancel__by_ids_is_audited_with_count_and_envelope),
      T(test_pause__workers_claim_nothing_until_resumed),
      T(test_prune__deletes_finished_jobs_only_and_keeps_messages),
      T(test_prune__default_retention_by_kind),
      cmocka_unit_test(test_prune__configured_retention_and_keep_forever),
      cmocka_unit_test(test_retention__workers_delete_expired_jobs_while_delivering),
      T(test_envelopes_progress__counts_messages_by_status),
      cmocka_unit_test(test_migrations__lists_applied_and_pending_and_what_a_run_applied),
      cmocka_unit_test(test_ops__every_entry_refuses_a_null_engine),
  };
  return cmocka_run_group_tests_name("ops", tests, NULL, ct_group_teardown);
}
