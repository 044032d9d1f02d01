/*
 * test_work_concurrent.c - cl_work_run with an asynchronous notifier: up
 * to `concurrency` deliveries in flight, completed later from the
 * notifier's poll (as a C host completes them from its own I/O), finished
 * ones recorded in batches while others run, verdicts beyond sent/failed
 * (discard now, retry no sooner than a wait, the event's reason), the
 * stop flag with deliveries in flight, lease renewal for slow ones, and
 * the rate limit.  Real PostgreSQL; the "network" is the test's own queue
 * of started deliveries, finished in start order after `latency_ms`.
 */
#include "support.h"
#include "db.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S CT_SCHEMA

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct pending {
  cl_delivery *d;
  int64_t message_id;
  int64_t due_ms;
} pending;

/* The asynchronous notifier under test: starts record the delivery, poll
 * finishes those whose latency has passed with `verdict` (per message id
 * through `choose`, if set). */
typedef struct anotifier {
  int latency_ms;
  pending q[256];
  int head, tail; /* q[head..tail) in flight */
  int started, max_in_flight, polls;
  int done_inline;                         /* finish inside start instead */
  volatile sig_atomic_t *stop_after_start; /* set once `stop_at` deliveries started */
  int stop_at;
  cl_delivery_result (*choose)(int64_t message_id);
  cl_delivery *saved; /* a handle kept past its completion (misuse test) */
  int releases;
} anotifier;

static void finish_one(anotifier *n, pending *p) {
  cl_delivery_result r = {CL_DELIVERY_SENT, CL_REASON_NOTIFIER_ERROR, NULL, 0};
  if (n->choose) r = n->choose(p->message_id);
  n->saved = p->d;
  cl_delivery_done(p->d, &r);
}

static void a_start(void *ud, cl_delivery *d, const cl_message *m, const cl_conversation *c,
                    const char *key, int attempt) {
  anotifier *n = ud;
  (void)c, (void)key, (void)attempt;
  n->started++;
  if (n->stop_after_start && n->started == n->stop_at) *n->stop_after_start = 1;
  pending p = {d, m->id, now_ms() + n->latency_ms};
  if (n->done_inline) {
    finish_one(n, &p);
    return;
  }
  assert_true(n->tail < (int)CT_ARRAY_LEN(n->q));
  n->q[n->tail++] = p;
  if (n->tail - n->head > n->max_in_flight) n->max_in_flight = n->tail - n->head;
}

static void a_poll(void *ud, int timeout_ms) {
  anotifier *n = ud;
  n->polls++;
  if (n->head == n->tail) return;
  int64_t wait = n->q[n->head].due_ms - now_ms();
  if (wait > timeout_ms) wait = timeout_ms;
  if (wait > 0) {
    struct timespec ts = {wait / 1000, (long)(wait % 1000) * 1000000L};
    nanosleep(&ts, NULL);
  }
  int64_t t = now_ms();
  while (n->head < n->tail && n->q[n->head].due_ms <= t) finish_one(n, &n->q[n->head++]);
}

static void a_release(void *ud) { ((anotifier *)ud)->releases++; }

static void install(cl_engine *eng, anotifier *n) {
  cl_async_notifier a = {a_start, a_poll, a_release, n};
  cl_error err;
  ct_assert_ok(cl_set_async_notifier(eng, &a, &err), &err);
}

static void trigger_n(cl_engine *eng, int n) {
  for (int i = 1; i <= n; i++) {
    cl_trigger_opts opts = {.template_id = "t"};
    cl_trigger_result res = {0};
    cl_error err;
    ct_assert_ok(cl_trigger(eng, i, &opts, &res, &err), &err);
    cl_trigger_result_clear(&res);
  }
}

static cl_work_stats run(cl_engine *eng, int limit, int concurrency, double rate,
                         const volatile sig_atomic_t *stop, cl_batch_info *b) {
  cl_work_options o = {.limit = limit, .concurrency = concurrency, .rate = rate, .stop = stop};
  cl_work_stats st;
  cl_error err;
  ct_assert_ok(cl_work_run(eng, &o, &st, b, &err), &err);
  return st;
}

/* ------------------------------------------------------------ in flight */

static void test_run__keeps_concurrency_deliveries_in_flight_and_records_in_batches(void **state) {
  (void)state;
  ct_world *w = ct_world_new(100, NULL);
  trigger_n(w->eng, 100);
  anotifier n = {.latency_ms = 20};
  install(w->eng, &n);
  uint64_t before = cl__db_round_trips(w->eng);
  cl_batch_info b;
  cl_work_stats st = run(w->eng, 100, 10, 0, NULL, &b);
  uint64_t trips = cl__db_round_trips(w->eng) - before;
  assert_int_equal(st.sent, 100);
  assert_int_equal(b.claimed, 100);
  /* Exactly the concurrency: never more, and reached. */
  assert_int_equal(n.max_in_flight, 10);
  /* Set-based: claims and completions take several jobs each (one job
   * each would be 200 round trips). */
  assert_true(trips <= 60);
  ct_assert_scalar("100|0",
                   "SELECT count(*) FILTER (WHERE state = 'completed') || '|' || "
                   "count(*) FILTER (WHERE state = 'executing') FROM %s.cairnloop_delivery_jobs",
                   S);
  ct_assert_scalar("100",
                   "SELECT count(*) FROM %s.cairnloop_messages WHERE metadata->>'status' = "
                   "'sent'",
                   S);
  ct_world_free(w);
}

/* Finished deliveries are recorded while others are still in flight. */
static cl_delivery_result sent_v(int64_t id) {
  (void)id;
  return (cl_delivery_result){CL_DELIVERY_SENT, CL_REASON_NOTIFIER_ERROR, NULL, 0};
}

static void test_run__records_finished_deliveries_while_others_run(void **state) {
  (void)state;
  ct_world *w = ct_world_new(40, NULL);
  trigger_n(w->eng, 40);
  anotifier n = {.latency_ms = 5, .choose = sent_v};
  install(w->eng, &n);
  cl_work_stats st = run(w->eng, 40, 4, 0, NULL, NULL);
  assert_int_equal(st.sent, 40);
  /* Completed in several statements spread over the run, not one at the
   * end: completion times differ across the batch. */
  assert_true(ct_int("SELECT count(DISTINCT completed_at) FROM %s.cairnloop_delivery_jobs", S) >=
              5);
  ct_world_free(w);
}

/* Deliveries that finish inside start keep the two round trips of a batch. */
static void test_run__inline_completions_cost_two_round_trips(void **state) {
  (void)state;
  ct_world *w = ct_world_new(150, NULL);
  trigger_n(w->eng, 150);
  anotifier n = {.done_inline = 1};
  install(w->eng, &n);
  run(w->eng, 150, 10, 0, NULL, NULL); /* learns they finish at once */
  ct_exec("UPDATE %s.cairnloop_delivery_jobs SET state = 'available', attempt = 0, "
          "completed_at = NULL",
          S);
  uint64_t before = cl__db_round_trips(w->eng);
  cl_work_stats st = run(w->eng, 150, 10, 0, NULL, NULL);
  assert_int_equal(st.sent, 150);
  /* First claim of 2 x concurrency, then the rest at once, one completion
   * each, and the claim that finds nothing more: at most 5. */
  assert_true(cl__db_round_trips(w->eng) - before <= 5);
  ct_world_free(w);
}

/* ------------------------------------------------------------ verdicts */

static cl_delivery_result by_id(int64_t id) {
  switch (id % 3) {
  case 0:
    return (cl_delivery_result){CL_DELIVERY_DISCARDED, CL_REASON_HTTP_STATUS, "HTTP 410 Gone", 0};
  case 1:
    return (cl_delivery_result){CL_DELIVERY_FAILED, CL_REASON_HTTP_STATUS,
                                "HTTP 503 (retry after 120 s)", 120};
  default:
    return (cl_delivery_result){CL_DELIVERY_FAILED, CL_REASON_HTTP_TIMEOUT, NULL, 0};
  }
}

static void test_run__verdicts_discard_wait_and_reason(void **state) {
  (void)state;
  ct_world *w = ct_world_new(6, NULL);
  trigger_n(w->eng, 6);
  anotifier n = {.latency_ms = 1, .choose = by_id};
  install(w->eng, &n);
  cl_work_stats st = run(w->eng, 6, 3, 0, NULL, NULL);
  assert_int_equal(st.sent, 0);
  assert_int_equal(st.failed, 6);
  assert_int_equal(st.discarded, 2);
  assert_int_equal(st.retried, 4);
  /* 410: discarded at its first attempt, message failed. */
  ct_assert_scalar("2",
                   "SELECT count(*) FROM %s.cairnloop_delivery_jobs j JOIN %s.cairnloop_messages m "
                   "ON m.id = j.message_id WHERE j.state = 'discarded' AND j.attempt = 1 "
                   "AND j.discarded_at IS NOT NULL AND m.id %% 3 = 0 "
                   "AND m.metadata->>'status' = 'failed'",
                   S, S);
  /* Retry-After 120 s: no sooner than that (the backoff alone is ~2 s). */
  ct_assert_scalar("2",
                   "SELECT count(*) FROM %s.cairnloop_delivery_jobs WHERE state = 'retryable' "
                   "AND message_id %% 3 = 1 AND scheduled_at >= now() + interval '119 s'",
                   S);
  /* No wait given: the plain backoff. */
  ct_assert_scalar("2",
                   "SELECT count(*) FROM %s.cairnloop_delivery_jobs WHERE state = 'retryable' "
                   "AND message_id %% 3 = 2 AND scheduled_at < now() + interval '5 s'",
                   S);
  /* The message says which; without one, the reason's name. */
  ct_assert_scalar(
      "HTTP 410 Gone|HTTP 503 (retry after 120 s)|http_timeout",
      "SELECT string_agg(e, '|' ORDER BY e) FROM (SELECT DISTINCT errors->0->>'error' AS e "
      "FROM %s.cairnloop_delivery_jobs) x",
      S);
  /* Telemetry carries the enum reason. */
  size_t failed = ct_capture_count(&w->cap, "cairnloop.outbound.delivery.failed");
  assert_int_equal(failed, 6);
  int status = 0, timeout = 0;
  for (size_t i = 0; i < failed; i++) {
    const ct_event *e = ct_capture_nth(&w->cap, "cairnloop.outbound.delivery.failed", i);
    const ct_kv *r = ct_map_get(&e->metadata, "reason");
    assert_non_null(r);
    status += strcmp(r->s, "http_status") == 0;
    timeout += strcmp(r->s, "http_timeout") == 0;
  }
  assert_int_equal(status, 4);
  assert_int_equal(timeout, 2);
  ct_world_free(w);
}

/* A handle completed twice, or completed late, is ignored, not a crash
 * (the second call sees the delivery gone). */
static void test_run__a_second_completion_is_ignored(void **state) {
  (void)state;
  ct_world *w = ct_world_new(1, NULL);
  trigger_n(w->eng, 1);
  anotifier n = {.done_inline = 1};
  install(w->eng, &n);
  cl_work_stats st = run(w->eng, 1, 2, 0, NULL, NULL);
  assert_int_equal(st.sent, 1);
  cl_delivery_done(NULL, NULL);
  ct_world_free(w);
}

/* ------------------------------------------------------------ stopping */

static void test_run__stop_finishes_what_is_in_flight_and_hands_back_the_rest(void **state) {
  (void)state;
  ct_world *w = ct_world_new(30, NULL);
  trigger_n(w->eng, 30);
  volatile sig_atomic_t stop = 0;
  anotifier n = {.latency_ms = 30, .stop_after_start = &stop, .stop_at = 5};
  install(w->eng, &n);
  cl_batch_info b;
  cl_work_stats st = run(w->eng, 30, 5, 0, &stop, &b);
  /* The five in flight when stop came were finished and recorded; the
   * claimed rest went back unstarted. */
  assert_int_equal(n.started, 5);
  assert_int_equal(st.sent, 5);
  assert_int_equal(b.released, b.claimed - 5);
  ct_assert_scalar("5|25|0",
                   "SELECT count(*) FILTER (WHERE state = 'completed') || '|' || "
                   "count(*) FILTER (WHERE state = 'available' AND attempt = 0) || '|' || "
                   "count(*) FILTER (WHERE state = 'executing') FROM %s.cairnloop_delivery_jobs",
                   S);
  ct_world_free(w);
}

/* ------------------------------------------------------------ leases */

static void test_run__renews_leases_of_slow_deliveries(void **state) {
  (void)state;
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.lease_seconds = 1;
  ct_world *w = ct_world_new(3, &cfg);
  trigger_n(w->eng, 3);
  anotifier n = {.latency_ms = 1300}; /* longer than the whole lease */
  install(w->eng, &n);
  cl_batch_info b;
  cl_work_stats st = run(w->eng, 3, 3, 0, NULL, &b);
  assert_int_equal(st.sent, 3);
  assert_int_equal(b.lost, 0);
  ct_assert_scalar("3",
                   "SELECT count(*) FROM %s.cairnloop_delivery_jobs WHERE state = 'completed' "
                   "AND attempt = 1",
                   S);
  ct_world_free(w);
}

/* ------------------------------------------------------------ rate */

static void test_run__rate_spaces_the_starts(void **state) {
  (void)state;
  ct_world *w = ct_world_new(10, NULL);
  trigger_n(w->eng, 10);
  anotifier n = {.done_inline = 1};
  install(w->eng, &n);
  int64_t t0 = now_ms();
  cl_work_stats st = run(w->eng, 10, 10, 20, NULL, NULL);
  int64_t took = now_ms() - t0;
  assert_int_equal(st.sent, 10);
  /* 20/s with a bucket of 2: the first two at once, then one per 50 ms. */
  assert_true(took >= 350);
  ct_world_free(w);
}

/* ------------------------------------------------------------ arguments */

static void test_run__rejects_bad_options(void **state) {
  ct_world *w = *state;
  cl_work_stats st;
  cl_error err;
  cl_work_options o = {.limit = 10, .concurrency = CL_WORK_MAX_CONCURRENCY + 1};
  ct_assert_error(cl_work_run(w->eng, &o, &st, NULL, &err), &err, CL_INVALID_ARGUMENT,
                  "concurrency must be from 1 to 1000");
  o = (cl_work_options){.limit = 10, .rate = -1};
  ct_assert_error(cl_work_run(w->eng, &o, &st, NULL, &err), &err, CL_INVALID_ARGUMENT, "rate");
  o = (cl_work_options){.limit = 0};
  ct_assert_error(cl_work_run(w->eng, &o, &st, NULL, &err), &err, CL_INVALID_ARGUMENT, "limit");
  ct_assert_error(cl_work_run(w->eng, NULL, &st, NULL, &err), &err, CL_INVALID_ARGUMENT,
                  "no options");
  cl_async_notifier bad = {NULL, a_poll, NULL, NULL};
  ct_assert_error(cl_set_async_notifier(w->eng, &bad, &err), &err, CL_INVALID_ARGUMENT, "start");
  cl_async_notifier no_poll = {a_start, NULL, NULL, NULL};
  ct_assert_error(cl_set_async_notifier(w->eng, &no_poll, &err), &err, CL_INVALID_ARGUMENT, "poll");
}

static void test_run__notifier_is_released_on_replace_and_close(void **state) {
  (void)state;
  ct_world *w = ct_world_new(1, NULL);
  anotifier a = {0}, b2 = {0};
  install(w->eng, &a);
  install(w->eng, &b2);
  assert_int_equal(a.releases, 1);
  cl_error err;
  ct_assert_ok(cl_set_notifier(w->eng, NULL, &err), &err);
  assert_int_equal(b2.releases, 1);
  install(w->eng, &a);
  ct_world_free(w);
  assert_int_equal(a.releases, 2);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, ct_world_setup, ct_world_teardown)
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_run__keeps_concurrency_deliveries_in_flight_and_records_in_batches),
      cmocka_unit_test(test_run__records_finished_deliveries_while_others_run),
      cmocka_unit_test(test_run__inline_completions_cost_two_round_trips),
      cmocka_unit_test(test_run__verdicts_discard_wait_and_reason),
      cmocka_unit_test(test_run__a_second_completion_is_ignored),
      cmocka_unit_test(test_run__stop_finishes_what_is_in_flight_and_hands_back_the_rest),
      cmocka_unit_test(test_run__renews_leases_of_slow_deliveries),
      cmocka_unit_test(test_run__rate_spaces_the_starts),
      T(test_run__rejects_bad_options),
      cmocka_unit_test(test_run__notifier_is_released_on_replace_and_close),
  };
  return cmocka_run_group_tests_name("work_concurrent", tests, NULL, ct_group_teardown);
}
