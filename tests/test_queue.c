/*
 * test_queue.c - the delivery queue: cl_work's claim, notifier call and
 * completion (sent, no_op, failed with backoff, discarded), idempotency
 * keys, lease rescue and lease loss, scheduling, the stoppable batch,
 * constant round trips, delivery telemetry, and the idle worker's wait
 * (LISTEN/NOTIFY, next due time, wake fd).  Real PostgreSQL throughout;
 * the notifier is a C hook whose behaviour each test chooses.
 */
#include "support.h"
#include "db.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define S CT_SCHEMA

/* ------------------------------------------------------------ notifier */

typedef struct call {
  int64_t message_id, conversation_id;
  int attempt;
  char key[48];
  char *content, *role, *template_id, *status, *envelope;
  char *conv_status, *subject, *customer_ref;
} call;

/* A C notifier that fails the first `fail_first` attempts of every
 * message (or all, with fail_always) and records every call. */
typedef struct notifier {
  int fail_first;
  bool fail_always;
  const char *reason;
  call calls[64];
  int ncalls;
  /* Optional action run inside the call (before the outcome is decided). */
  void (*during)(struct notifier *n, const cl_message *m, int attempt);
  void *ctx;
  int released;
} notifier;

static char *dup0(const char *s) { return s ? strdup(s) : NULL; }

static cl_status deliver(void *ud, const cl_message *m, const cl_conversation *c, const char *key,
                         int attempt, cl_error *err) {
  notifier *n = ud;
  if (n->ncalls < (int)CT_ARRAY_LEN(n->calls)) {
    call *k = &n->calls[n->ncalls];
    k->message_id = m->id;
    k->conversation_id = m->conversation_id;
    k->attempt = attempt;
    snprintf(k->key, sizeof k->key, "%s", key);
    k->content = dup0(m->content);
    k->role = dup0(m->role);
    k->template_id = dup0(m->template_id);
    k->status = dup0(m->status);
    k->envelope = dup0(m->bulk_envelope_id);
    k->conv_status = dup0(c->status);
    k->subject = dup0(c->subject);
    k->customer_ref = dup0(c->customer_ref);
  }
  n->ncalls++;
  if (n->during) n->during(n, m, attempt);
  if (n->fail_always || attempt <= n->fail_first) {
    snprintf(err->message, sizeof err->message, "%s", n->reason ? n->reason : "boom");
    err->code = CL_HOOK_ERROR;
    return CL_HOOK_ERROR;
  }
  return CL_OK;
}

static void release_notifier(void *ud) { ((notifier *)ud)->released++; }

static void install(cl_engine *eng, notifier *n) {
  cl_notifier hook = {deliver, release_notifier, n};
  cl_error err;
  ct_assert_ok(cl_set_notifier(eng, &hook, &err), &err);
}

/* Uninstalls the notifier (it lives on the test's stack) and frees what it recorded. */
static void notifier_free(cl_engine *eng, notifier *n) {
  if (eng) {
    cl_error err;
    ct_assert_ok(cl_set_notifier(eng, NULL, &err), &err);
  }
  int m = n->ncalls < (int)CT_ARRAY_LEN(n->calls) ? n->ncalls : (int)CT_ARRAY_LEN(n->calls);
  for (int i = 0; i < m; i++) {
    call *k = &n->calls[i];
    free(k->content), free(k->role), free(k->template_id), free(k->status);
    free(k->envelope), free(k->conv_status), free(k->subject), free(k->customer_ref);
  }
}

/* ------------------------------------------------------------- helpers */

static int64_t trigger(cl_engine *eng, int64_t conv, const char *tmpl, int64_t schedule_in) {
  cl_trigger_opts opts = {.template_id = tmpl, .schedule_in = schedule_in};
  cl_trigger_result res = {0};
  cl_error err;
  ct_assert_ok(cl_trigger(eng, conv, &opts, &res, &err), &err);
  int64_t mid = res.message.id;
  cl_trigger_result_clear(&res);
  return mid;
}

static cl_work_stats work(cl_engine *eng, int limit) {
  cl_work_stats st;
  cl_error err;
  ct_assert_ok(cl_work(eng, limit, &st, &err), &err);
  return st;
}

#define assert_stats(st, s, f, n, r, d) assert_stats_at((st), (s), (f), (n), (r), (d), __LINE__)
static void assert_stats_at(cl_work_stats st, int s, int f, int n, int r, int d, int line) {
  if (st.sent != s || st.failed != f || st.no_op != n || st.retried != r || st.discarded != d) {
    print_error("line %d: stats sent %d failed %d no_op %d retried %d discarded %d, expected "
                "%d %d %d %d %d\n",
                line, st.sent, st.failed, st.no_op, st.retried, st.discarded, s, f, n, r, d);
    fail();
  }
}

/* Makes every pending job due now (instead of waiting out a backoff). */
static void make_due(void) {
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET scheduled_at = now() - interval '1 ms' "
          "WHERE state IN ('available', 'scheduled', 'retryable')",
          S);
}

static char *job_field(int64_t mid, const char *expr) {
  return ct_scalar("SELECT %s FROM %s.cairnloop_delivery_jobs WHERE message_id = %" PRId64, expr, S,
                   mid);
}

static void assert_job(int64_t mid, const char *expr, const char *expected) {
  ct_assert_scalar(expected,
                   "SELECT %s FROM %s.cairnloop_delivery_jobs WHERE message_id = %" PRId64, expr, S,
                   mid);
}

static void assert_message_status(int64_t mid, const char *expected) {
  ct_assert_scalar(expected,
                   "SELECT metadata->>'status' FROM %s.cairnloop_messages WHERE id = %" PRId64, S,
                   mid);
}

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------- no_op */

static void test_work__without_notifier_completes_as_no_op_and_marks_sent(void **state) {
  ct_world *w = *state;
  int64_t m1 = trigger(w->eng, 1, "t", 0), m2 = trigger(w->eng, 2, "t", 0);
  cl_work_stats st = work(w->eng, 10);
  assert_stats(st, 0, 0, 2, 0, 0);
  assert_job(m1,
             "concat_ws('|', state, attempt, completed_at IS NOT NULL, attempted_at IS NOT NULL,"
             " lease_owner IS NULL, lease_expires_at IS NULL, discarded_at IS NULL, errors)",
             "completed|1|t|t|t|t|t|[]");
  assert_job(m2, "state", "completed");
  assert_message_status(m1, "sent");
  assert_message_status(m2, "sent");
  /* Nothing left: a second batch claims nothing. */
  assert_stats(work(w->eng, 10), 0, 0, 0, 0, 0);

  assert_int_equal(ct_capture_count(&w->cap, "cairnloop.outbound.delivery.no_op"), 2);
  const ct_event *e = ct_capture_nth(&w->cap, "cairnloop.outbound.delivery.no_op", 0);
  ct_assert_keys(&e->measurements, "count");
  ct_assert_int(&e->measurements, "count", 1);
  ct_assert_keys(&e->metadata, "outcome", "reason");
  ct_assert_str(&e->metadata, "outcome", "no_op");
  ct_assert_str(&e->metadata, "reason", "no_notifier_configured");
  /* No trace event for no_op. */
  assert_int_equal(ct_capture_count(&w->cap, "cairnloop.outbound.trace.delivery_sent"), 0);
  assert_int_equal(ct_capture_count(&w->cap, "cairnloop.outbound.trace.delivery_failed"), 0);
}

/* ------------------------------------------------------------- sent */

static void test_work__notifier_gets_message_conversation_and_idempotency_key(void **state) {
  ct_world *w = *state;
  ct_exec("UPDATE %s.cairnloop_conversations SET subject = 'Refund', customer_ref = 'cus_9' "
          "WHERE id = 4",
          S);
  cl_trigger_opts opts = {.template_id = "recovery_v1", .content = "Hello \"there\""};
  cl_trigger_result res = {0};
  cl_error err;
  ct_assert_ok(cl_trigger(w->eng, 4, &opts, &res, &err), &err);
  int64_t mid = res.message.id;
  cl_trigger_result_clear(&res);

  notifier n = {0};
  install(w->eng, &n);
  assert_stats(work(w->eng, 10), 1, 0, 0, 0, 0);
  assert_int_equal(n.ncalls, 1);
  call *k = &n.calls[0];
  assert_int_equal(k->message_id, mid);
  assert_int_equal(k->conversation_id, 4);
  assert_int_equal(k->attempt, 1);
  char key[48];
  snprintf(key, sizeof key, "cl-msg-%" PRId64, mid);
  assert_string_equal(k->key, key);
  assert_string_equal(k->content, "Hello \"there\"");
  assert_string_equal(k->role, "system_outbound");
  assert_string_equal(k->template_id, "recovery_v1");
  assert_string_equal(k->status, "pending");
  assert_null(k->envelope);
  assert_string_equal(k->conv_status, "open");
  assert_string_equal(k->subject, "Refund");
  assert_string_equal(k->customer_ref, "cus_9");

  assert_job(mid, "concat_ws('|', state, attempt, completed_at IS NOT NULL)", "completed|1|t");
  assert_message_status(mid, "sent");

  const ct_event *e = ct_capture_nth(&w->cap, "cairnloop.outbound.delivery.sent", 0);
  assert_non_null(e);
  ct_assert_keys(&e->measurements, "count");
  ct_assert_int(&e->measurements, "count", 1);
  ct_assert_keys(&e->metadata, "outcome", "reason");
  ct_assert_str(&e->metadata, "outcome", "sent");
  ct_assert_str(&e->metadata, "reason", "notifier_ok");

  const ct_event *t = ct_capture_nth(&w->cap, "cairnloop.outbound.trace.delivery_sent", 0);
  assert_non_null(t);
  ct_assert_keys(&t->measurements, "count");
  ct_assert_keys(&t->metadata, "openinference.span.kind", "bulk_envelope_id", "conversation_id",
                 "template_id", "actor_id", "outcome");
  ct_assert_str(&t->metadata, "openinference.span.kind", "TOOL");
  ct_assert_str(&t->metadata, "bulk_envelope_id", NULL);
  ct_assert_int(&t->metadata, "conversation_id", 4);
  ct_assert_str(&t->metadata, "template_id", "recovery_v1");
  ct_assert_str(&t->metadata, "actor_id", NULL);
  ct_assert_str(&t->metadata, "outcome", "sent");
  assert_int_equal(ct_capture_count(&w->cap, "cairnloop.outbound.delivery.no_op"), 0);
  notifier_free(w->eng, &n);
}

static void test_work__bulk_jobs_carry_their_envelope_to_notifier_and_trace(void **state) {
  ct_world *w = *state;
  int64_t ids[] = {1, 2, 3};
  cl_bulk_opts opts = {.template_id = "promo", .rendered_body = "Hi all"};
  cl_bulk_result res = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(w->eng, ids, 3, &opts, &res, &err), &err);
  char env[CL_UUID_LEN + 1];
  snprintf(env, sizeof env, "%s", res.envelope.id);
  cl_bulk_result_clear(&res);

  notifier n = {0};
  install(w->eng, &n);
  assert_stats(work(w->eng, 10), 3, 0, 0, 0, 0);
  assert_int_equal(n.ncalls, 3);
  for (int i = 0; i < 3; i++) {
    assert_string_equal(n.calls[i].envelope, env);
    assert_string_equal(n.calls[i].content, "Hi all");
  }
  assert_int_equal(ct_capture_count(&w->cap, "cairnloop.outbound.trace.delivery_sent"), 3);
  const ct_event *t = ct_capture_nth(&w->cap, "cairnloop.outbound.trace.delivery_sent", 2);
  ct_assert_str(&t->metadata, "bulk_envelope_id", env);
  ct_assert_str(&t->metadata, "template_id", "promo");
  notifier_free(w->eng, &n);
}

/* ------------------------------------------------------------- failure */

static void test_work__failure_records_error_and_schedules_backoff(void **state) {
  ct_world *w = *state;
  int64_t mid = trigger(w->eng, 1, "t", 0);
  notifier n = {.fail_always = true, .reason = "smtp: 451 try later"};
  install(w->eng, &n);
  assert_stats(work(w->eng, 10), 0, 1, 0, 1, 0);

  assert_job(mid,
             "concat_ws('|', state, attempt, completed_at IS NULL, discarded_at IS NULL,"
             " lease_owner IS NULL, jsonb_array_length(errors), errors->0->>'error',"
             " errors->0->>'attempt', errors->0->>'at' IS NOT NULL)",
             "retryable|1|t|t|t|1|smtp: 451 try later|1|t");
  /* Attempt 1: 2 s plus up to 10% jitter. */
  char *delay = job_field(mid, "extract(epoch FROM scheduled_at - attempted_at)");
  double d = strtod(delay, NULL);
  free(delay);
  assert_true(d >= 2.0 && d <= 2.25);
  assert_message_status(mid, "failed");
  /* Not due yet: nothing to claim. */
  assert_stats(work(w->eng, 10), 0, 0, 0, 0, 0);
  assert_int_equal(n.ncalls, 1);

  const ct_event *e = ct_capture_nth(&w->cap, "cairnloop.outbound.delivery.failed", 0);
  assert_non_null(e);
  ct_assert_keys(&e->metadata, "outcome", "reason");
  ct_assert_str(&e->metadata, "outcome", "failed");
  ct_assert_str(&e->metadata, "reason", "notifier_returned_error");
  const ct_event *t = ct_capture_nth(&w->cap, "cairnloop.outbound.trace.delivery_failed", 0);
  assert_non_null(t);
  ct_assert_keys(&t->metadata, "openinference.span.kind", "bulk_envelope_id", "conversation_id",
                 "template_id", "actor_id", "outcome");
  ct_assert_str(&t->metadata, "openinference.span.kind", "TOOL");
  ct_assert_str(&t->metadata, "outcome", "failed");
  ct_assert_int(&t->metadata, "conversation_id", 1);
  notifier_free(w->eng, &n);
}

static void test_work__retry_succeeds_with_the_same_key_and_message_turns_sent(void **state) {
  ct_world *w = *state;
  int64_t mid = trigger(w->eng, 1, "t", 0);
  notifier n = {.fail_first = 2, .reason = "down"};
  install(w->eng, &n);
  assert_stats(work(w->eng, 10), 0, 1, 0, 1, 0);
  make_due();
  assert_stats(work(w->eng, 10), 0, 1, 0, 1, 0);
  /* Attempt 2 waits 4 s (+10%). */
  char *delay = job_field(mid, "extract(epoch FROM scheduled_at - attempted_at)");
  double d = strtod(delay, NULL);
  free(delay);
  assert_true(d >= 4.0 && d <= 4.45);
  make_due();
  assert_stats(work(w->eng, 10), 1, 0, 0, 0, 0);

  assert_int_equal(n.ncalls, 3);
  char key[48];
  /* One key for every attempt: the receiver drops repeats by it. */
  snprintf(key, sizeof key, "cl-msg-%" PRId64, mid);
  for (int i = 0; i < 3; i++) {
    assert_string_equal(n.calls[i].key, key);
    assert_int_equal(n.calls[i].attempt, i + 1);
  }
  /* The notifier saw the message's status of the moment. */
  assert_string_equal(n.calls[0].status, "pending");
  assert_string_equal(n.calls[1].status, "failed");
  assert_job(mid,
             "concat_ws('|', state, attempt, jsonb_array_length(errors),"
             " errors->1->>'attempt', completed_at IS NOT NULL)",
             "completed|3|2|2|t");
  assert_message_status(mid, "sent");
  notifier_free(w->eng, &n);
}

static void test_work__discards_after_max_attempts(void **state) {
  (void)state;
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.max_attempts = 2;
  ct_world *w = ct_world_new(3, &cfg);
  int64_t mid = trigger(w->eng, 1, "t", 0);
  notifier n = {.fail_always = true};
  install(w->eng, &n);
  assert_stats(work(w->eng, 10), 0, 1, 0, 1, 0);
  assert_job(mid, "max_attempts", "2");
  make_due();
  assert_stats(work(w->eng, 10), 0, 1, 0, 0, 1);
  assert_job(mid,
             "concat_ws('|', state, attempt, discarded_at IS NOT NULL, completed_at IS NULL,"
             " jsonb_array_length(errors), lease_owner IS NULL)",
             "discarded|2|t|t|2|t");
  assert_message_status(mid, "failed");
  /* A discarded job is never claimed again. */
  make_due();
  assert_stats(work(w->eng, 10), 0, 0, 0, 0, 0);
  assert_int_equal(n.ncalls, 2);
  notifier_free(w->eng, &n);
  ct_world_free(w);
}

static void test_work__backoff_doubles_and_caps_at_an_hour(void **state) {
  ct_world *w = *state;
  int64_t m3 = trigger(w->eng, 1, "t", 0), m12 = trigger(w->eng, 2, "t", 0);
  /* As if they had failed before: their next attempts are 3 and 12. */
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET attempt = 2, state = 'retryable' "
          "WHERE message_id = %" PRId64,
          S, m3);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET attempt = 11, state = 'retryable' "
          "WHERE message_id = %" PRId64,
          S, m12);
  notifier n = {.fail_always = true};
  install(w->eng, &n);
  assert_stats(work(w->eng, 10), 0, 2, 0, 2, 0);
  char *a = job_field(m3, "extract(epoch FROM scheduled_at - attempted_at)");
  char *b = job_field(m12, "extract(epoch FROM scheduled_at - attempted_at)");
  double da = strtod(a, NULL), db = strtod(b, NULL);
  free(a);
  free(b);
  assert_true(da >= 8.0 && da <= 8.85);
  assert_true(db >= 3600.0 && db <= 3960.5);
  notifier_free(w->eng, &n);
}

/* A small backoff base (cl_config.backoff_base_ms) lets a retry be waited
 * for, not forced with make_due: the idle wait wakes when it comes due. */
static void test_work__backoff_base_sets_the_delay_and_the_retry_comes_due(void **state) {
  (void)state;
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.backoff_base_ms = 20;
  ct_world *w = ct_world_new(1, &cfg);
  int64_t mid = trigger(w->eng, 1, "t", 0);
  notifier n = {.fail_first = 1};
  install(w->eng, &n);
  assert_stats(work(w->eng, 10), 0, 1, 0, 1, 0);
  /* Attempt 1: 20 ms * 2 plus up to 10% jitter, from the failure's
   * recorded time (the same statement's now()). */
  char *delay = job_field(mid,
                          "extract(epoch FROM scheduled_at - (errors->0->>'at')::timestamptz)");
  double d = strtod(delay, NULL);
  free(delay);
  assert_true(d >= 0.040 && d <= 0.04401);
  cl_wake why;
  cl_error err;
  int64_t t0 = mono_ms();
  ct_assert_ok(cl_work_wait(w->eng, 5000, -1, &why, &err), &err);
  assert_true(why == CL_WAKE_DUE || why == CL_WAKE_TIMEOUT);
  assert_true(mono_ms() - t0 < 1000);
  assert_stats(work(w->eng, 10), 1, 0, 0, 0, 0);
  assert_job(mid, "concat_ws('|', state, attempt)", "completed|2");
  notifier_free(w->eng, &n);
  ct_world_free(w);
}

static void test_work__failure_reason_is_stored_as_data(void **state) {
  ct_world *w = *state;
  int64_t mid = trigger(w->eng, 1, "t", 0);
  notifier n = {.fail_always = true, .reason = "quote\" back\\slash {brace,comma} NULL \xff"};
  install(w->eng, &n);
  assert_stats(work(w->eng, 10), 0, 1, 0, 1, 0);
  assert_job(mid, "errors->0->>'error'", "quote\" back\\slash {brace,comma} NULL ?");
  notifier_free(w->eng, &n);
}

/* ---------------------------------------------------------- scheduling */

static void test_work__scheduled_job_is_not_claimed_before_its_time(void **state) {
  ct_world *w = *state;
  int64_t later = trigger(w->eng, 1, "t", 3600);
  int64_t now = trigger(w->eng, 2, "t", 0);
  notifier n = {0};
  install(w->eng, &n);
  assert_stats(work(w->eng, 10), 1, 0, 0, 0, 0);
  assert_int_equal(n.calls[0].message_id, now);
  assert_job(later, "concat_ws('|', state, attempt)", "scheduled|0");
  assert_message_status(later, "pending");
  /* Once its time comes, it is claimed like any other. */
  make_due();
  assert_stats(work(w->eng, 10), 1, 0, 0, 0, 0);
  assert_int_equal(n.calls[1].message_id, later);
  notifier_free(w->eng, &n);
}

static void test_work__claims_in_scheduled_order_up_to_limit(void **state) {
  ct_world *w = *state;
  int64_t m[5];
  for (int i = 0; i < 5; i++) m[i] = trigger(w->eng, i + 1, "t", 0);
  /* Reverse the due order: the last triggered is the most overdue. */
  for (int i = 0; i < 5; i++)
    ct_exec("UPDATE %s.cairnloop_delivery_jobs SET scheduled_at = now() - interval '%d minutes' "
            "WHERE message_id = %" PRId64,
            S, 10 + i, m[i]);
  notifier n = {0};
  install(w->eng, &n);
  assert_stats(work(w->eng, 2), 2, 0, 0, 0, 0);
  assert_int_equal(n.calls[0].message_id, m[4]);
  assert_int_equal(n.calls[1].message_id, m[3]);
  assert_stats(work(w->eng, 2), 2, 0, 0, 0, 0);
  assert_stats(work(w->eng, 2), 1, 0, 0, 0, 0);
  assert_int_equal(n.calls[4].message_id, m[0]);
  notifier_free(w->eng, &n);
}

static void test_work__rejects_bad_limit(void **state) {
  ct_world *w = *state;
  trigger(w->eng, 1, "t", 0);
  cl_work_stats st;
  cl_error err;
  ct_assert_error(cl_work(w->eng, 0, &st, &err), &err, CL_INVALID_ARGUMENT, "limit");
  ct_assert_error(cl_work(w->eng, CL_WORK_MAX_LIMIT + 1, &st, &err), &err, CL_INVALID_ARGUMENT,
                  "limit");
  assert_job(1, "state", "available");
  /* stats and err may be NULL. */
  assert_int_equal(cl_work(w->eng, 5, NULL, NULL), CL_OK);
  assert_job(1, "state", "completed");
}

/* -------------------------------------------------------------- leases */

/* Records, from inside the notifier, how the job row looks right then. */
static void peek_job(notifier *n, const cl_message *m, int attempt) {
  (void)attempt;
  n->ctx = ct_scalar("SELECT concat_ws('|', state, "
                     "lease_owner ~ ('^[^:]+:' || %ld || ':[0-9a-f]{8}$'), "
                     "round(extract(epoch FROM lease_expires_at - attempted_at))) "
                     "FROM %s.cairnloop_delivery_jobs WHERE message_id = %" PRId64,
                     (long)getpid(), S, m->id);
}

static void test_work__lease_names_this_worker_while_delivering(void **state) {
  ct_world *w = *state;
  trigger(w->eng, 1, "t", 0);
  notifier n = {.during = peek_job};
  install(w->eng, &n);
  assert_stats(work(w->eng, 10), 1, 0, 0, 0, 0);
  /* Inside the notifier the job is executing, leased for 60 s to us:
   * "host:pid:random". */
  assert_non_null(n.ctx);
  assert_string_equal(n.ctx, "executing|t|60");
  free(n.ctx);
  notifier_free(w->eng, &n);
}

static void test_work__rescues_a_job_whose_lease_expired(void **state) {
  ct_world *w = *state;
  int64_t dead = trigger(w->eng, 1, "t", 0), alive = trigger(w->eng, 2, "t", 0);
  /* One worker died holding `dead`; another still holds `alive`. */
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'executing', attempt = 1, "
          "attempted_at = now() - interval '2 minutes', lease_owner = 'gone:1:x', "
          "lease_expires_at = now() - interval '1 minute' WHERE message_id = %" PRId64,
          S, dead);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'executing', attempt = 1, "
          "attempted_at = now(), lease_owner = 'busy:2:y', "
          "lease_expires_at = now() + interval '1 minute' WHERE message_id = %" PRId64,
          S, alive);
  notifier n = {0};
  install(w->eng, &n);
  assert_stats(work(w->eng, 10), 1, 0, 0, 0, 0);
  assert_int_equal(n.ncalls, 1);
  assert_int_equal(n.calls[0].message_id, dead);
  /* The redelivery is attempt 2, with the lost attempt's key: a receiver
   * that got the first one drops it. */
  char key[48];
  snprintf(key, sizeof key, "cl-msg-%" PRId64, dead);
  assert_string_equal(n.calls[0].key, key);
  assert_int_equal(n.calls[0].attempt, 2);
  assert_job(dead, "concat_ws('|', state, attempt)", "completed|2");
  assert_job(alive, "concat_ws('|', state, lease_owner)", "executing|busy:2:y");
  assert_message_status(dead, "sent");
  notifier_free(w->eng, &n);
}

/* While we deliver, our lease is taken over (as if we had stalled past it
 * and another worker rescued the job): our completion must not overwrite
 * the new owner's row. */
static void steal_lease(notifier *n, const cl_message *m, int attempt) {
  (void)n;
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET lease_owner = 'thief:3:z', attempt = %d "
          "WHERE message_id = %" PRId64,
          S, attempt + 1, m->id);
}

static void test_work__completion_skips_a_job_whose_lease_was_taken_over(void **state) {
  ct_world *w = *state;
  int64_t mid = trigger(w->eng, 1, "t", 0);
  notifier n = {.during = steal_lease};
  install(w->eng, &n);
  cl_work_stats st;
  cl_batch_info b;
  cl_error err;
  ct_assert_ok(cl_work_batch(w->eng, 10, NULL, &st, &b, &err), &err);
  assert_stats(st, 1, 0, 0, 0, 0);
  assert_int_equal(b.claimed, 1);
  assert_int_equal(b.lost, 1);
  assert_job(mid, "concat_ws('|', state, attempt, lease_owner)", "executing|2|thief:3:z");
  assert_message_status(mid, "pending");
  assert_true(ct_log_count(&w->log, CL_LOG_WARN, "lost their lease") == 1);
  notifier_free(w->eng, &n);
}

/* Two engines (two workers) share the queue: while the first is inside
 * its batch, the second claims only what the first did not. */
typedef struct pair {
  cl_engine *other;
  cl_work_stats other_stats;
  bool done;
} pair;

static void work_other(notifier *n, const cl_message *m, int attempt) {
  (void)m, (void)attempt;
  pair *p = n->ctx;
  if (p->done) return;
  p->done = true;
  cl_error err;
  ct_assert_ok(cl_work(p->other, 100, &p->other_stats, &err), &err);
}

static void test_work__two_workers_never_claim_the_same_job(void **state) {
  ct_world *w = *state;
  /* The second world resets the tables and seeds them again. */
  ct_world *w2 = ct_world_new(10, NULL);
  for (int i = 1; i <= 10; i++) trigger(w->eng, i, "t", 0);

  notifier n2 = {0};
  install(w2->eng, &n2);
  pair p = {.other = w2->eng};
  notifier n1 = {.during = work_other, .ctx = &p};
  install(w->eng, &n1);
  cl_work_stats st = work(w->eng, 4);
  assert_stats(st, 4, 0, 0, 0, 0);
  assert_stats(p.other_stats, 6, 0, 0, 0, 0);
  for (int i = 0; i < n1.ncalls; i++)
    for (int j = 0; j < n2.ncalls; j++)
      assert_true(n1.calls[i].message_id != n2.calls[j].message_id);
  ct_assert_scalar("10",
                   "SELECT count(*) FROM %s.cairnloop_delivery_jobs "
                   "WHERE state = 'completed' AND attempt = 1",
                   S);
  notifier_free(w->eng, &n1);
  notifier_free(w2->eng, &n2);
  ct_world_free(w2);
}

/* ------------------------------------------------------------ stopping */

static void set_stop(notifier *n, const cl_message *m, int attempt) {
  (void)m, (void)attempt;
  *(volatile sig_atomic_t *)n->ctx = 1;
}

static void test_work__stop_flag_releases_jobs_not_yet_started(void **state) {
  ct_world *w = *state;
  int64_t m[3];
  for (int i = 0; i < 3; i++) m[i] = trigger(w->eng, i + 1, "t", 0);
  /* The third was a retry: releasing it must keep it retryable. */
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET attempt = 1, state = 'retryable', "
          "scheduled_at = now() - interval '1 second', errors = '[{\"attempt\":1}]' "
          "WHERE message_id = %" PRId64,
          S, m[2]);
  volatile sig_atomic_t stop = 0;
  notifier n = {.during = set_stop, .ctx = (void *)&stop};
  install(w->eng, &n);
  cl_work_stats st;
  cl_batch_info b;
  cl_error err;
  ct_assert_ok(cl_work_batch(w->eng, 10, &stop, &st, &b, &err), &err);
  assert_stats(st, 1, 0, 0, 0, 0);
  assert_int_equal(b.claimed, 3);
  assert_int_equal(b.released, 2);
  assert_int_equal(n.ncalls, 1);
  int64_t first = n.calls[0].message_id;
  assert_job(first, "state", "completed");
  int released_checked = 0;
  for (int i = 0; i < 3; i++) {
    if (m[i] == first) continue;
    const char *expect = m[i] == m[2] ? "retryable|1|t|t|pending" : "available|0|t|t|pending";
    ct_assert_scalar(expect,
                     "SELECT concat_ws('|', j.state, j.attempt, j.lease_owner IS NULL, "
                     "j.lease_expires_at IS NULL, m.metadata->>'status') "
                     "FROM %s.cairnloop_delivery_jobs j JOIN %s.cairnloop_messages m "
                     "ON m.id = j.message_id WHERE j.message_id = %" PRId64,
                     S, S, m[i]);
    released_checked++;
  }
  assert_int_equal(released_checked, 2);
  /* Handed back jobs are due at once, for this worker or another. */
  stop = 0;
  n.during = NULL;
  assert_stats(work(w->eng, 10), 2, 0, 0, 0, 0);
  notifier_free(w->eng, &n);
}

/* A notifier slower than the lease allows for the whole batch. */
static void take_300_ms(notifier *n, const cl_message *m, int attempt) {
  (void)n, (void)m, (void)attempt;
  struct timespec ts = {0, 300 * 1000000L};
  nanosleep(&ts, NULL);
}

/* A slow notifier no longer hands jobs back once half the lease is spent:
 * the leases of the jobs still held are renewed instead (one statement),
 * so none expires while it waits and nothing is delivered twice. */
static void test_work__renews_the_leases_once_half_the_lease_is_spent(void **state) {
  (void)state;
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.lease_seconds = 1;
  ct_world *w = ct_world_new(5, &cfg);
  for (int i = 1; i <= 5; i++) trigger(w->eng, i, "t", 0);
  notifier n = {.during = take_300_ms};
  install(w->eng, &n);
  cl_work_stats st;
  cl_batch_info b;
  cl_error err;
  uint64_t before = cl__db_round_trips(w->eng);
  ct_assert_ok(cl_work_batch(w->eng, 10, NULL, &st, &b, &err), &err);
  /* 5 x 300 ms against a 1 s lease: renewed at 600 ms and at 1200 ms. */
  assert_stats(st, 5, 0, 0, 0, 0);
  assert_int_equal(b.released, 0);
  assert_int_equal(b.lost, 0);
  assert_int_equal(cl__db_round_trips(w->eng) - before, 2 + 2);
  ct_assert_scalar("5", "SELECT count(*) FROM %s.cairnloop_delivery_jobs WHERE state = 'completed'",
                   S);
  notifier_free(w->eng, &n);
  ct_world_free(w);
}

/* ------------------------------------------------------------ costs */

static void test_work__a_batch_costs_two_round_trips_whatever_its_size(void **state) {
  ct_world *w = *state;
  ct_seed(S, 190);
  for (int i = 1; i <= 200; i++) trigger(w->eng, i, "t", 0);
  notifier n = {.fail_first = 0};
  install(w->eng, &n);
  /* Warm up the connection (first statements may reconnect nothing, but
   * keep the measurement to the batch itself). */
  uint64_t before = cl__db_round_trips(w->eng);
  assert_stats(work(w->eng, 150), 150, 0, 0, 0, 0);
  assert_int_equal(cl__db_round_trips(w->eng) - before, 2);
  before = cl__db_round_trips(w->eng);
  assert_stats(work(w->eng, 150), 50, 0, 0, 0, 0);
  assert_int_equal(cl__db_round_trips(w->eng) - before, 2);
  /* An empty batch is one round trip. */
  before = cl__db_round_trips(w->eng);
  assert_stats(work(w->eng, 150), 0, 0, 0, 0, 0);
  assert_int_equal(cl__db_round_trips(w->eng) - before, 1);
  notifier_free(w->eng, &n);
  /* Without a notifier, claiming and completing are one statement. */
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'available', attempt = 0, "
          "completed_at = NULL",
          S);
  ct_exec("UPDATE %s.cairnloop_messages SET metadata = metadata || '{\"status\": \"pending\"}'", S);
  before = cl__db_round_trips(w->eng);
  assert_stats(work(w->eng, 500), 0, 0, 200, 0, 0);
  assert_int_equal(cl__db_round_trips(w->eng) - before, 1);
  assert_int_equal(ct_capture_count(&w->cap, "cairnloop.outbound.delivery.no_op"), 200);
  ct_assert_scalar("200",
                   "SELECT count(*) FROM %s.cairnloop_delivery_jobs j "
                   "JOIN %s.cairnloop_messages m ON m.id = j.message_id "
                   "WHERE j.state = 'completed' AND j.attempt = 1 "
                   "AND m.metadata->>'status' = 'sent'",
                   S, S);
}

/* A table's update counters as the statistics system has them, once the
 * engine's session has reported its own (it does so before it answers). */
static void table_updates(cl_engine *eng, const char *table, int64_t *updated, int64_t *hot) {
  PQclear(PQexec(cl__db_conn(eng), "SELECT pg_stat_force_next_flush()"));
  *updated = ct_int("SELECT n_tup_upd FROM pg_stat_user_tables WHERE schemaname = '%s' "
                    "AND relname = '%s'",
                    S, table);
  *hot = ct_int("SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE schemaname = '%s' "
                "AND relname = '%s'",
                S, table);
}

/* The claim changes no indexed column, so it is a HOT update: no index
 * entry is written until the job finishes (see the jobs migration).  An
 * index over state or the lease would silently double the server's work
 * per job; this keeps it from creeping in. */
static void test_work__a_claim_writes_no_index_entry(void **state) {
  ct_world *w = *state;
  for (int i = 1; i <= 3; i++) trigger(w->eng, i, "t", 0);
  int64_t upd0, hot0, upd1, hot1;
  table_updates(w->eng, "cairnloop_delivery_jobs", &upd0, &hot0);
  notifier n = {0};
  install(w->eng, &n);
  assert_stats(work(w->eng, 10), 3, 0, 0, 0, 0);
  table_updates(w->eng, "cairnloop_delivery_jobs", &upd1, &hot1);
  /* Two updates per job: the claim (HOT) and the completion, which takes
   * the job out of the index of unfinished jobs (not HOT). */
  assert_int_equal(upd1 - upd0, 6);
  assert_int_equal(hot1 - hot0, 3);
  notifier_free(w->eng, &n);
}

static void reenter(notifier *n, const cl_message *m, int attempt) {
  (void)m, (void)attempt;
  cl_engine *eng = n->ctx;
  cl_error err;
  cl_work_stats st;
  /* One status for every public entry re-entered from a hook: the entry
   * guard's CL_HOOK_ERROR (this was CL_INVALID_ARGUMENT before the guard). */
  ct_assert_error(cl_work(eng, 1, &st, &err), &err, CL_HOOK_ERROR, "inside a hook");
}

static void test_work__refuses_to_run_from_inside_a_hook(void **state) {
  ct_world *w = *state;
  trigger(w->eng, 1, "t", 0);
  notifier n = {.during = reenter, .ctx = w->eng};
  install(w->eng, &n);
  assert_stats(work(w->eng, 10), 1, 0, 0, 0, 0);
  notifier_free(w->eng, &n);
}

static void test_work__notifier_is_released_on_replace_and_close(void **state) {
  (void)state;
  ct_world *w = ct_world_new(1, NULL);
  notifier a = {0}, b = {0};
  install(w->eng, &a);
  install(w->eng, &b);
  assert_int_equal(a.released, 1);
  cl_error err;
  ct_assert_ok(cl_set_notifier(w->eng, NULL, &err), &err);
  assert_int_equal(b.released, 1);
  /* Without a notifier again, jobs complete as no_op. */
  trigger(w->eng, 1, "t", 0);
  assert_stats(work(w->eng, 10), 0, 0, 1, 0, 0);
  install(w->eng, &a);
  ct_world_free(w);
  assert_int_equal(a.released, 2);
}

/* ------------------------------------------------------------ waiting */

static void test_wait__returns_due_at_once_when_jobs_are_due(void **state) {
  ct_world *w = *state;
  trigger(w->eng, 1, "t", 0);
  cl_wake why;
  cl_error err;
  int64_t t0 = mono_ms();
  ct_assert_ok(cl_work_wait(w->eng, 5000, -1, &why, &err), &err);
  assert_int_equal(why, CL_WAKE_DUE);
  assert_true(mono_ms() - t0 < 1000);
}

static void test_wait__times_out_when_nothing_is_pending(void **state) {
  ct_world *w = *state;
  cl_wake why;
  cl_error err;
  int64_t t0 = mono_ms();
  ct_assert_ok(cl_work_wait(w->eng, 200, -1, &why, &err), &err);
  assert_int_equal(why, CL_WAKE_TIMEOUT);
  assert_true(mono_ms() - t0 >= 190);
}

static void test_wait__sleeps_until_the_next_scheduled_job(void **state) {
  ct_world *w = *state;
  int64_t mid = trigger(w->eng, 1, "t", 3600);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET scheduled_at = now() + interval '300 ms' "
          "WHERE message_id = %" PRId64,
          S, mid);
  cl_wake why;
  cl_error err;
  int64_t t0 = mono_ms();
  ct_assert_ok(cl_work_wait(w->eng, 5000, -1, &why, &err), &err);
  int64_t took = mono_ms() - t0;
  assert_int_equal(why, CL_WAKE_DUE);
  assert_true(took >= 250 && took < 2000);
  assert_stats(work(w->eng, 10), 0, 0, 1, 0, 0);
}

/* Jobs being delivered stand in the same index as the waiting ones: the
 * wait must look past them, to a due job behind them and to the expiry
 * of their leases. */
static void test_wait__sees_a_due_job_behind_jobs_in_flight(void **state) {
  ct_world *w = *state;
  int64_t busy = trigger(w->eng, 1, "t", 0), due = trigger(w->eng, 2, "t", 0);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET scheduled_at = now() - interval '1 hour', "
          "state = 'executing', attempt = 1, attempted_at = now(), lease_owner = 'busy:2:y', "
          "lease_expires_at = now() + interval '1 hour' WHERE message_id = %" PRId64,
          S, busy);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET scheduled_at = now() - interval '1 minute' "
          "WHERE message_id = %" PRId64,
          S, due);
  cl_wake why;
  cl_error err;
  int64_t t0 = mono_ms();
  ct_assert_ok(cl_work_wait(w->eng, 5000, -1, &why, &err), &err);
  assert_int_equal(why, CL_WAKE_DUE);
  assert_true(mono_ms() - t0 < 1000);
}

static void test_wait__sleeps_until_a_lease_expires(void **state) {
  ct_world *w = *state;
  int64_t busy = trigger(w->eng, 1, "t", 0);
  trigger(w->eng, 2, "t", 3600);
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'executing', attempt = 1, "
          "attempted_at = now(), lease_owner = 'gone:1:x', "
          "lease_expires_at = now() + interval '300 ms' WHERE message_id = %" PRId64,
          S, busy);
  cl_wake why;
  cl_error err;
  int64_t t0 = mono_ms();
  ct_assert_ok(cl_work_wait(w->eng, 5000, -1, &why, &err), &err);
  int64_t took = mono_ms() - t0;
  assert_int_equal(why, CL_WAKE_DUE);
  assert_true(took >= 250 && took < 2000);
  /* The expired lease is rescued; the job scheduled an hour ahead waits. */
  cl_batch_info b;
  ct_assert_ok(cl_work_batch(w->eng, 10, NULL, NULL, &b, &err), &err);
  assert_int_equal(b.claimed, 1);
  assert_int_equal(b.rescued, 1);
  assert_job(busy, "concat_ws('|', state, attempt)", "completed|2");
}

static void test_wait__an_insert_elsewhere_wakes_the_worker(void **state) {
  ct_world *w = *state;
  cl_wake why;
  cl_error err;
  /* The first wait subscribes (and times out at once). */
  ct_assert_ok(cl_work_wait(w->eng, 0, -1, &why, &err), &err);
  assert_int_equal(why, CL_WAKE_TIMEOUT);
  /* Another process inserts a job (scheduled far ahead, so only the
   * notification can end the wait early). */
  ct_world *other = ct_world_new(10, NULL);
  trigger(other->eng, 2, "t", 3600);
  int64_t t0 = mono_ms();
  ct_assert_ok(cl_work_wait(w->eng, 5000, -1, &why, &err), &err);
  assert_int_equal(why, CL_WAKE_NOTIFIED);
  assert_true(mono_ms() - t0 < 1000);
  /* Another schema's inserts do not wake it. */
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.schema = "cl_queue_other";
  ct_world *elsewhere = ct_world_new(2, &cfg);
  trigger(elsewhere->eng, 1, "t", 0);
  ct_assert_ok(cl_work_wait(w->eng, 300, -1, &why, &err), &err);
  assert_int_equal(why, CL_WAKE_TIMEOUT);
  ct_world_free(elsewhere);
  ct_world_free(other);
}

static void test_wait__wake_fd_ends_the_wait(void **state) {
  ct_world *w = *state;
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  assert_int_equal(write(fds[1], "x", 1), 1);
  cl_wake why;
  cl_error err;
  int64_t t0 = mono_ms();
  ct_assert_ok(cl_work_wait(w->eng, 5000, fds[0], &why, &err), &err);
  assert_int_equal(why, CL_WAKE_FD);
  assert_true(mono_ms() - t0 < 1000);
  close(fds[0]);
  close(fds[1]);
}

static void test_wait__resubscribes_after_a_reconnect(void **state) {
  ct_world *w = *state;
  cl_wake why;
  cl_error err;
  ct_assert_ok(cl_work_wait(w->eng, 0, -1, &why, &err), &err);
  /* Kill the engine's session from outside, as a server restart would. */
  ct_exec("SELECT pg_terminate_backend(%d)", PQbackendPID(cl__db_conn(w->eng)));
  /* The wait notices the loss (or the next statement does) ... */
  cl_status st = cl_work_wait(w->eng, 200, -1, &why, &err);
  if (st == CL_OK) st = cl_work_wait(w->eng, 200, -1, &why, &err);
  assert_int_equal(st, CL_DB_ERROR);
  /* ... and the following one reconnects and listens again. */
  ct_assert_ok(cl_work_wait(w->eng, 0, -1, &why, &err), &err);
  ct_world *other = ct_world_new(10, NULL);
  trigger(other->eng, 2, "t", 3600);
  ct_assert_ok(cl_work_wait(w->eng, 5000, -1, &why, &err), &err);
  assert_int_equal(why, CL_WAKE_NOTIFIED);
  ct_world_free(other);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, ct_world_setup, ct_world_teardown)
  const struct CMUnitTest tests[] = {
      T(test_work__without_notifier_completes_as_no_op_and_marks_sent),
      T(test_work__notifier_gets_message_conversation_and_idempotency_key),
      T(test_work__bulk_jobs_carry_their_envelope_to_notifier_and_trace),
      T(test_work__failure_records_error_and_schedules_backoff),
      T(test_work__retry_succeeds_with_the_same_key_and_message_turns_sent),
      cmocka_unit_test(test_work__discards_after_max_attempts),
      T(test_work__backoff_doubles_and_caps_at_an_hour),
      cmocka_unit_test(test_work__backoff_base_sets_the_delay_and_the_retry_comes_due),
      T(test_work__failure_reason_is_stored_as_data),
      T(test_work__scheduled_job_is_not_claimed_before_its_time),
      T(test_work__claims_in_scheduled_order_up_to_limit),
      T(test_work__rejects_bad_limit),
      T(test_work__lease_names_this_worker_while_delivering),
      T(test_work__rescues_a_job_whose_lease_expired),
      T(test_work__completion_skips_a_job_whose_lease_was_taken_over),
      T(test_work__two_workers_never_claim_the_same_job),
      T(test_work__stop_flag_releases_jobs_not_yet_started),
      cmocka_unit_test(test_work__renews_the_leases_once_half_the_lease_is_spent),
      T(test_work__a_batch_costs_two_round_trips_whatever_its_size),
      T(test_work__a_claim_writes_no_index_entry),
      T(test_work__refuses_to_run_from_inside_a_hook),
      cmocka_unit_test(test_work__notifier_is_released_on_replace_and_close),
      T(test_wait__returns_due_at_once_when_jobs_are_due),
      T(test_wait__times_out_when_nothing_is_pending),
      T(test_wait__sleeps_until_the_next_scheduled_job),
      T(test_wait__sees_a_due_job_behind_jobs_in_flight),
      T(test_wait__sleeps_until_a_lease_expires),
      T(test_wait__an_insert_elsewhere_wakes_the_worker),
      T(test_wait__wake_fd_ends_the_wait),
      T(test_wait__resubscribes_after_a_reconnect),
  };
  return cmocka_run_group_tests_name("queue", tests, NULL, ct_group_teardown);
}
