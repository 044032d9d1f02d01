/*
 * test_async.c - the asynchronous engine (cl_async_*): many operations in
 * flight, the bounded queue, close with operations pending (cancel and
 * drain), a database restart with operations pending (on a private
 * cluster), the completion descriptor under poll() and select(), the
 * reads, inputs copied at submission, callbacks on the host thread and
 * hooks on the engine thread, and the refusals.
 *
 * Nothing here sleeps: a test that must hold the engine thread does it
 * with a gate, an auditor that blocks on a condition the test opens; every
 * wait is bounded by WAIT_MS and fails the test when it runs out.  Hooks
 * run on the engine thread, so they only record (under a mutex); the
 * assertions run on the test's thread.
 */
#include "support.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#define S CT_SCHEMA
/* The bound of every wait: a hang fails its test instead of the suite. */
#define WAIT_MS 60000
#define CLOSED_MESSAGE "async: engine closed before the operation ran"

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------ */
/* Recording completions                                                */
/* ------------------------------------------------------------------ */

/* What every callback shares: the host thread and the running order. */
typedef struct tally {
  pthread_t host;
  int callbacks;
  int off_host; /* callbacks that ran on another thread than the host's */
} tally;

/* One operation's completion, as its callback saw it. */
typedef struct rec {
  tally *t;
  int calls;
  int seq; /* position among all callbacks */
  cl_status status;
  cl_error err;
  /* trigger */
  int64_t message_id, conversation_id;
  char template_id[64];
  char content[64];
  char *audit_json;
  /* bulk: the ids it was given, to compare the messages with */
  const int64_t *want_ids;
  size_t count;
  bool ids_match;
  char envelope_id[CL_UUID_LEN + 1];
  /* reads */
  size_t items;
  char value[64];
  cl_work_stats stats;
} rec;

static void recs_init(rec *r, size_t n, tally *t) {
  memset(r, 0, n * sizeof *r);
  for (size_t i = 0; i < n; i++) r[i].t = t;
}

static void tally_init(tally *t) {
  memset(t, 0, sizeof *t);
  t->host = pthread_self();
}

static void note(rec *r, cl_status st, const cl_error *err) {
  r->calls++;
  r->seq = r->t->callbacks++;
  if (!pthread_equal(pthread_self(), r->t->host)) r->t->off_host++;
  r->status = st;
  r->err = *err;
}

static void on_trigger(void *ud, cl_status st, const cl_error *err, cl_trigger_result *res) {
  rec *r = ud;
  note(r, st, err);
  if (st != CL_OK) return;
  r->message_id = res->message.id;
  r->conversation_id = res->message.conversation_id;
  snprintf(r->template_id, sizeof r->template_id, "%s", res->message.template_id);
  snprintf(r->content, sizeof r->content, "%s", res->message.content);
  free(r->audit_json);
  r->audit_json = res->audit_json ? strdup(res->audit_json) : NULL;
}

static void on_bulk(void *ud, cl_status st, const cl_error *err, cl_bulk_result *res) {
  rec *r = ud;
  note(r, st, err);
  if (st != CL_OK) return;
  r->count = res->count;
  r->ids_match = res->count == res->envelope.count;
  for (size_t i = 0; i < res->count && r->want_ids; i++)
    if (res->messages[i].conversation_id != r->want_ids[i] ||
        res->envelope.recipient_conversation_ids[i] != r->want_ids[i])
      r->ids_match = false;
  snprintf(r->envelope_id, sizeof r->envelope_id, "%s", res->envelope.id);
  snprintf(r->template_id, sizeof r->template_id, "%s", res->envelope.template_id);
}

static void on_envelopes(void *ud, cl_status st, const cl_error *err, cl_envelope_list *list) {
  rec *r = ud;
  note(r, st, err);
  r->items = list->count;
  if (list->count > 0) {
    snprintf(r->envelope_id, sizeof r->envelope_id, "%s", list->items[0].id);
    r->count = list->items[0].count;
  }
}

static void on_rows(void *ud, cl_status st, const cl_error *err, cl_rows **rows) {
  rec *r = ud;
  note(r, st, err);
  if (st == CL_OK && cl_rows_count(*rows) > 0)
    snprintf(r->value, sizeof r->value, "%s", cl_rows_value(*rows, 0, 0));
}

static void on_work(void *ud, cl_status st, const cl_error *err, const cl_work_stats *stats) {
  rec *r = ud;
  note(r, st, err);
  r->stats = *stats;
}

static void on_done(void *ud, cl_status st, const cl_error *err) { note(ud, st, err); }

static void recs_free(rec *r, size_t n) {
  for (size_t i = 0; i < n; i++) free(r[i].audit_json);
}

/* ------------------------------------------------------------------ */
/* Engines, waiting, the gate                                           */
/* ------------------------------------------------------------------ */

/* Migrates the suite database, empties it and seeds `seed` conversations. */
static void prepare(int seed) {
  cl_engine *e = ct_open(NULL);
  ct_reset(S);
  ct_seed(S, seed);
  cl_close(e);
}

static cl_async *open_on(const char *database, const cl_async_options *opts) {
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.database = database;
  cl_async *a = NULL;
  cl_error err;
  ct_assert_ok(cl_async_open(&a, &cfg, opts, &err), &err);
  assert_non_null(a);
  return a;
}

static cl_async *open_async(const cl_async_options *opts) {
  return open_on(ct_database_url(), opts);
}

/* Runs completions as the descriptor announces them until every submitted
 * operation's callback has run. */
static void drain(cl_async *a) {
  int64_t deadline = now_ms() + WAIT_MS;
  while (cl_async_pending(a) > 0) {
    int64_t left = deadline - now_ms();
    if (left <= 0)
      fail_msg("%zu operations still pending after %d ms", cl_async_pending(a), WAIT_MS);
    struct pollfd p = {.fd = cl_async_fd(a), .events = POLLIN};
    if (poll(&p, 1, (int)left) < 0 && errno != EINTR) fail_msg("poll: %s", strerror(errno));
    cl_async_poll(a);
  }
}

static cl_status submit_trigger(cl_async *a, int64_t id, const char *template_id, rec *r,
                                cl_error *err) {
  cl_trigger_opts opts = {.template_id = template_id};
  return cl_async_trigger(a, id, &opts, on_trigger, r, err);
}

static void trigger_ok(cl_async *a, int64_t id, const char *template_id, rec *r) {
  cl_error err;
  ct_assert_ok(submit_trigger(a, id, template_id, r, &err), &err);
}

/*
 * The gate: an auditor that holds the engine thread inside the operation
 * whose template is `hold` until the test opens it.  Installed on the
 * engine thread by the setup function; it also records the thread it ran on.
 */
typedef struct gate {
  pthread_mutex_t mu;
  pthread_cond_t cond;
  const char *hold;
  bool entered, open;
  int audits;
  pthread_t thread; /* of the last audit */
} gate;

static void gate_init(gate *g, const char *hold) {
  memset(g, 0, sizeof *g);
  pthread_mutex_init(&g->mu, NULL);
  pthread_cond_init(&g->cond, NULL);
  g->hold = hold;
}

static void gate_destroy(gate *g) {
  pthread_cond_destroy(&g->cond);
  pthread_mutex_destroy(&g->mu);
}

static cl_status gate_audit(void *ud, cl_tx *tx, const char *action, const char *actor,
                            const cl_metadata *metadata, char **audit_json, cl_error *err) {
  (void)tx;
  (void)action;
  (void)actor;
  (void)audit_json;
  (void)err;
  gate *g = ud;
  const cl_kv *t = cl_map_get(metadata, "template_id");
  pthread_mutex_lock(&g->mu);
  g->audits++;
  g->thread = pthread_self();
  if (g->hold && t && t->type == CL_VALUE_STRING && strcmp(t->s, g->hold) == 0) {
    g->entered = true;
    pthread_cond_broadcast(&g->cond);
    while (!g->open) pthread_cond_wait(&g->cond, &g->mu);
  }
  pthread_mutex_unlock(&g->mu);
  return CL_OK;
}

static cl_status install_gate(void *ud, cl_engine *eng, cl_error *err) {
  cl_auditor auditor = {.audit = gate_audit, .ud = ud};
  return cl_set_auditor(eng, &auditor, err);
}

/* Arms the gate for the operation with template `hold`. */
static void gate_arm(gate *g, const char *hold) {
  pthread_mutex_lock(&g->mu);
  g->hold = hold;
  g->entered = g->open = false;
  pthread_mutex_unlock(&g->mu);
}

static void gate_wait_entered(gate *g) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += WAIT_MS / 1000;
  pthread_mutex_lock(&g->mu);
  int rc = 0;
  while (!g->entered && rc == 0) rc = pthread_cond_timedwait(&g->cond, &g->mu, &until);
  bool entered = g->entered;
  pthread_mutex_unlock(&g->mu);
  if (!entered) fail_msg("the gated operation did not start within %d ms", WAIT_MS);
}

static void gate_open(gate *g) {
  pthread_mutex_lock(&g->mu);
  g->open = true;
  pthread_cond_broadcast(&g->cond);
  pthread_mutex_unlock(&g->mu);
}

static cl_async_options gate_options(gate *g) {
  cl_async_options opts;
  cl_async_options_init(&opts);
  opts.setup = install_gate;
  opts.setup_ud = g;
  return opts;
}

/* ------------------------------------------------------------------ */
/* Many operations in flight                                            */
/* ------------------------------------------------------------------ */

#define N_TRIGGERS 500
#define N_BULKS 20
#define BULK_SIZE 25 /* the default cap */

static void test_async__many_operations_in_flight_complete_once_on_the_host_thread(void **state) {
  (void)state;
  prepare(100);
  cl_async *a = open_async(NULL);
  tally t;
  tally_init(&t);
  rec *trig = calloc(N_TRIGGERS, sizeof *trig), *bulk = calloc(N_BULKS, sizeof *bulk);
  int64_t(*ids)[BULK_SIZE] = calloc(N_BULKS, sizeof *ids);
  assert_true(trig && bulk && ids);
  recs_init(trig, N_TRIGGERS, &t);
  recs_init(bulk, N_BULKS, &t);

  /* Every submission before the first poll: 520 operations in flight. */
  cl_error err;
  char tmpl[32];
  for (int i = 0; i < N_TRIGGERS; i++) {
    snprintf(tmpl, sizeof tmpl, "many_t%d", i / 100);
    trigger_ok(a, i % 100 + 1, tmpl, &trig[i]);
    if (i % (N_TRIGGERS / N_BULKS) == 0) {
      int b = i / (N_TRIGGERS / N_BULKS);
      for (int k = 0; k < BULK_SIZE; k++) ids[b][k] = (b * 5 + k) % 100 + 1;
      bulk[b].want_ids = ids[b];
      snprintf(tmpl, sizeof tmpl, "many_b%d", b);
      cl_bulk_opts bo = {.template_id = tmpl, .rendered_body = "hello"};
      ct_assert_ok(cl_async_bulk_trigger(a, ids[b], BULK_SIZE, &bo, on_bulk, &bulk[b], &err), &err);
    }
  }
  assert_int_equal(t.callbacks, 0);
  assert_int_equal(cl_async_pending(a), N_TRIGGERS + N_BULKS);

  drain(a);
  assert_int_equal(t.callbacks, N_TRIGGERS + N_BULKS);
  assert_int_equal(t.off_host, 0);
  for (int i = 0; i < N_TRIGGERS; i++) {
    assert_int_equal(trig[i].calls, 1);
    ct_assert_ok(trig[i].status, &trig[i].err);
    assert_int_equal(trig[i].conversation_id, i % 100 + 1);
    snprintf(tmpl, sizeof tmpl, "many_t%d", i / 100);
    assert_string_equal(trig[i].template_id, tmpl);
  }
  for (int b = 0; b < N_BULKS; b++) {
    assert_int_equal(bulk[b].calls, 1);
    ct_assert_ok(bulk[b].status, &bulk[b].err);
    assert_int_equal(bulk[b].count, BULK_SIZE);
    assert_true(bulk[b].ids_match);
    assert_true(ct_is_uuid_v4(bulk[b].envelope_id));
  }
  /* Run in submission order: each callback in the order it was submitted. */
  for (int i = 1; i < N_TRIGGERS; i++) assert_true(trig[i].seq > trig[i - 1].seq);
  ct_assert_counts(S, N_BULKS, N_TRIGGERS + N_BULKS * BULK_SIZE, N_TRIGGERS + N_BULKS * BULK_SIZE);
  ct_assert_scalar("500",
                   "SELECT count(DISTINCT (conversation_id, metadata->>'template_id')) "
                   "FROM %s.cairnloop_messages WHERE metadata->>'template_id' LIKE 'many_t%%'",
                   S);
  assert_int_equal(cl_async_poll(a), 0);

  cl_async_close(a, CL_ASYNC_CANCEL);
  assert_int_equal(t.callbacks, N_TRIGGERS + N_BULKS);
  recs_free(trig, N_TRIGGERS);
  free(trig);
  free(bulk);
  free(ids);
}

/* ------------------------------------------------------------------ */
/* The bounded queue                                                    */
/* ------------------------------------------------------------------ */

static void test_async__full_queue_refuses_with_a_clear_error_and_loses_nothing(void **state) {
  (void)state;
  prepare(20);
  cl_async_options opts;
  cl_async_options_init(&opts);
  opts.queue_capacity = 8;
  cl_async *a = open_async(&opts);
  tally t;
  tally_init(&t);
  rec r[12];
  recs_init(r, 12, &t);
  cl_error err;

  /* Completed but not polled still counts: without polling, the 9th
   * submission is refused however fast the engine thread is. */
  for (int i = 0; i < 8; i++) trigger_ok(a, i + 1, "full", &r[i]);
  ct_assert_error(submit_trigger(a, 9, "full", &r[8], &err), &err, CL_INVALID_ARGUMENT,
                  "async: queue full: 8 operations in flight (queue_capacity 8)");
  int64_t ids[] = {10, 11};
  cl_bulk_opts bo = {.template_id = "full_bulk", .rendered_body = "b"};
  ct_assert_error(cl_async_bulk_trigger(a, ids, 2, &bo, on_bulk, &r[9], &err), &err,
                  CL_INVALID_ARGUMENT, "queue full");
  ct_assert_error(cl_async_work(a, 10, on_work, &r[10], &err), &err, CL_INVALID_ARGUMENT,
                  "queue full");
  assert_int_equal(cl_async_pending(a), 8);

  drain(a);
  assert_int_equal(t.callbacks, 8);
  for (int i = 0; i < 8; i++) {
    assert_int_equal(r[i].calls, 1);
    ct_assert_ok(r[i].status, &r[i].err);
  }
  /* The refused ones never ran: their callbacks never came, nothing was written. */
  for (int i = 8; i < 11; i++) assert_int_equal(r[i].calls, 0);
  ct_assert_counts(S, 0, 8, 8);

  /* Room again once polled: the refused submission goes through. */
  trigger_ok(a, 9, "full", &r[8]);
  drain(a);
  assert_int_equal(r[8].calls, 1);
  ct_assert_ok(r[8].status, &r[8].err);
  ct_assert_counts(S, 0, 9, 9);
  cl_async_close(a, CL_ASYNC_CANCEL);
  recs_free(r, 12);
}

/* ------------------------------------------------------------------ */
/* Close                                                                */
/* ------------------------------------------------------------------ */

/*
 * Submits from its own thread until submissions are refused because the
 * engine is closing, then opens the gate: the operation the gate holds
 * can only finish after close has begun, so what was queued behind it is
 * cancelled, deterministically.  Its accepted probes are cancelled too;
 * once the queue is full it spins on the refusals, so however long the
 * test's thread takes to call close, the prober is still watching.
 */
typedef struct prober {
  cl_async *a;
  gate *g;
  rec *recs;
  int max, accepted, full;
  int64_t elapsed_ms;
  bool saw_closing;
  cl_status other;
  char other_msg[CL_ERROR_MESSAGE_MAX];
} prober;

static void *probe_main(void *arg) {
  prober *p = arg;
  int64_t deadline = now_ms() + WAIT_MS;
  while (now_ms() < deadline) {
    cl_error err;
    /* recs has one spare entry: an acceptance past the capacity lands there. */
    cl_status st = submit_trigger(p->a, 1, "probe", &p->recs[p->accepted], &err);
    if (st == CL_OK) {
      if (++p->accepted > p->max) {
        p->other = CL_INVALID_ARGUMENT;
        snprintf(p->other_msg, sizeof p->other_msg, "more probes accepted than the queue holds");
        break;
      }
    } else if (strstr(err.message, "async: engine is closing")) {
      p->saw_closing = true;
      break;
    } else if (strstr(err.message, "queue full")) {
      p->full++;
    } else {
      p->other = st;
      snprintf(p->other_msg, sizeof p->other_msg, "%s", err.message);
      break;
    }
    sched_yield();
  }
  p->elapsed_ms = now_ms() - (deadline - WAIT_MS);
  gate_open(p->g);
  return NULL;
}

#define PRE 5
#define QUEUED 99
#define PROBES 64

static void test_async__close_cancels_operations_not_started_and_runs_every_callback(void **state) {
  (void)state;
  prepare(QUEUED + 10);
  gate g;
  gate_init(&g, "gate");
  cl_async_options opts = gate_options(&g);
  opts.queue_capacity = PRE + 1 + QUEUED + PROBES;
  cl_async *a = open_async(&opts);
  tally t;
  tally_init(&t);
  rec pre[PRE], held, queued[QUEUED], *probes = calloc(PROBES + 1, sizeof *probes);
  assert_non_null(probes);
  recs_init(pre, PRE, &t);
  recs_init(&held, 1, &t);
  recs_init(queued, QUEUED, &t);
  recs_init(probes, PROBES + 1, &t);

  /* Completed, never polled; then one running (held); then queued. */
  for (int i = 0; i < PRE; i++) trigger_ok(a, i + 1, "before", &pre[i]);
  trigger_ok(a, 1, "gate", &held);
  gate_wait_entered(&g);
  for (int i = 0; i < QUEUED; i++) trigger_ok(a, i + 1, "queued", &queued[i]);

  prober p = {.a = a, .g = &g, .recs = probes, .max = PROBES};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, probe_main, &p), 0);
  cl_async_close(a, CL_ASYNC_CANCEL);
  int at_close = t.callbacks;
  assert_int_equal(pthread_join(th, NULL), 0);

  if (p.other != CL_OK) fail_msg("prober: %s", p.other_msg);
  if (!p.saw_closing)
    fail_msg("prober never saw the engine closing (%d accepted, %d refused as full, %lld ms)",
             p.accepted, p.full, (long long)p.elapsed_ms);
  /* Every callback ran before close returned, on this thread, in order. */
  assert_int_equal(at_close, PRE + 1 + QUEUED + p.accepted);
  assert_int_equal(t.callbacks, at_close);
  assert_int_equal(t.off_host, 0);
  for (int i = 0; i < PRE; i++) {
    assert_int_equal(pre[i].calls, 1);
    ct_assert_ok(pre[i].status, &pre[i].err);
    assert_int_equal(pre[i].seq, i);
  }
  assert_int_equal(held.calls, 1);
  ct_assert_ok(held.status, &held.err); /* running at close: it finishes */
  assert_int_equal(held.seq, PRE);
  for (int i = 0; i < QUEUED; i++) {
    assert_int_equal(queued[i].calls, 1);
    ct_assert_error(queued[i].status, &queued[i].err, CL_DB_ERROR, CLOSED_MESSAGE);
    assert_int_equal(queued[i].seq, PRE + 1 + i);
  }
  for (int i = 0; i < p.accepted; i++) {
    assert_int_equal(probes[i].calls, 1);
    ct_assert_error(probes[i].status, &probes[i].err, CL_DB_ERROR, CLOSED_MESSAGE);
  }
  for (int i = p.accepted; i <= PROBES; i++) assert_int_equal(probes[i].calls, 0);
  /* Only what ran was written. */
  ct_assert_counts(S, 0, PRE + 1, PRE + 1);
  ct_assert_scalar("0",
                   "SELECT count(*) FROM %s.cairnloop_messages WHERE metadata->>'template_id' "
                   "IN ('queued', 'probe')",
                   S);
  free(probes);
  gate_destroy(&g);
}

static void test_async__close_drain_runs_every_queued_operation_first(void **state) {
  (void)state;
  prepare(60);
  cl_async *a = open_async(NULL);
  tally t;
  tally_init(&t);
  rec r[60];
  recs_init(r, 60, &t);
  for (int i = 0; i < 60; i++) trigger_ok(a, i + 1, "drain", &r[i]);
  cl_async_close(a, CL_ASYNC_DRAIN);
  assert_int_equal(t.callbacks, 60);
  assert_int_equal(t.off_host, 0);
  for (int i = 0; i < 60; i++) {
    assert_int_equal(r[i].calls, 1);
    ct_assert_ok(r[i].status, &r[i].err);
    assert_int_equal(r[i].seq, i);
  }
  ct_assert_counts(S, 0, 60, 60);
  recs_free(r, 60);
}

/* A callback that tries everything a callback may and may not do. */
typedef struct reentry {
  rec r;
  cl_async *a;
  int poll_result;
  size_t pending_after_close;
  cl_status follow_st;
  rec follow;
} reentry;

static void reentering_trigger(void *ud, cl_status st, const cl_error *err,
                               cl_trigger_result *res) {
  reentry *x = ud;
  on_trigger(&x->r, st, err, res);
  x->poll_result = cl_async_poll(x->a);
  cl_async_close(x->a, CL_ASYNC_CANCEL); /* ignored: the engine stays usable */
  x->pending_after_close = cl_async_pending(x->a);
  cl_error e;
  x->follow_st = submit_trigger(x->a, 2, "follow", &x->follow, &e);
}

static void test_async__callbacks_may_submit_but_not_poll_or_close(void **state) {
  (void)state;
  prepare(5);
  cl_async *a = open_async(NULL);
  tally t;
  tally_init(&t);
  reentry x = {.a = a};
  recs_init(&x.r, 1, &t);
  recs_init(&x.follow, 1, &t);
  cl_trigger_opts o = {.template_id = "reenter"};
  cl_error err;
  ct_assert_ok(cl_async_trigger(a, 1, &o, reentering_trigger, &x, &err), &err);
  drain(a);
  assert_int_equal(x.r.calls, 1);
  assert_int_equal(x.poll_result, 0);
  assert_int_equal(x.pending_after_close, 0);
  assert_int_equal(x.follow_st, CL_OK);
  assert_int_equal(x.follow.calls, 1);
  ct_assert_ok(x.follow.status, &x.follow.err);
  assert_string_equal(x.follow.template_id, "follow");
  cl_async_close(a, CL_ASYNC_CANCEL);
  ct_assert_counts(S, 0, 2, 2);
}

/* A function on the engine thread (as a hook would) tries to poll and close. */
typedef struct inside {
  rec r;
  cl_async *a;
  int poll_result;
  cl_status submit_st;
  rec later;
} inside;

static cl_status poll_and_close_inside(void *ud, cl_engine *eng, cl_error *err) {
  (void)eng;
  (void)err;
  inside *in = ud;
  in->poll_result = cl_async_poll(in->a);
  cl_async_close(in->a, CL_ASYNC_CANCEL); /* ignored: it would wait for itself */
  cl_error e;
  in->submit_st = submit_trigger(in->a, 3, "from_engine", &in->later, &e); /* queued after */
  return CL_OK;
}

static void on_inside_done(void *ud, cl_status st, const cl_error *err) {
  inside *in = ud;
  note(&in->r, st, err);
}

static void test_async__the_engine_thread_cannot_poll_or_close(void **state) {
  (void)state;
  prepare(5);
  cl_async *a = open_async(NULL);
  tally t;
  tally_init(&t);
  inside in = {.a = a};
  rec unpolled;
  recs_init(&in.r, 1, &t);
  recs_init(&in.later, 1, &t);
  recs_init(&unpolled, 1, &t);
  cl_error err;
  /* Completed, not yet polled, when the function runs: its callback must
   * wait for the host's poll, not run on the engine thread. */
  trigger_ok(a, 1, "unpolled", &unpolled);
  ct_assert_ok(cl_async_call(a, poll_and_close_inside, on_inside_done, &in, &err), &err);
  drain(a);
  ct_assert_ok(in.r.status, &in.r.err);
  assert_int_equal(in.poll_result, 0);
  assert_int_equal(in.submit_st, CL_OK);
  assert_int_equal(t.off_host, 0);
  assert_int_equal(unpolled.calls, 1);
  assert_true(unpolled.seq < in.r.seq);
  assert_int_equal(in.later.calls, 1);
  ct_assert_ok(in.later.status, &in.later.err);
  assert_string_equal(in.later.template_id, "from_engine");
  cl_async_close(a, CL_ASYNC_CANCEL);
  ct_assert_counts(S, 0, 2, 2);
}

/* A callback run by close cannot queue anything new. */
static void resubmitting_trigger(void *ud, cl_status st, const cl_error *err,
                                 cl_trigger_result *res) {
  reentry *x = ud;
  on_trigger(&x->r, st, err, res);
  cl_error e;
  x->follow_st = submit_trigger(x->a, 2, "late", &x->follow, &e);
  snprintf(x->follow.err.message, sizeof x->follow.err.message, "%s", e.message);
}

static void test_async__callbacks_run_by_close_cannot_submit(void **state) {
  (void)state;
  prepare(5);
  cl_async *a = open_async(NULL);
  tally t;
  tally_init(&t);
  reentry x = {.a = a};
  recs_init(&x.r, 1, &t);
  recs_init(&x.follow, 1, &t);
  cl_trigger_opts o = {.template_id = "last"};
  cl_error err;
  ct_assert_ok(cl_async_trigger(a, 1, &o, resubmitting_trigger, &x, &err), &err);
  cl_async_close(a, CL_ASYNC_DRAIN);
  assert_int_equal(x.r.calls, 1);
  ct_assert_ok(x.r.status, &x.r.err);
  assert_int_equal(x.follow_st, CL_INVALID_ARGUMENT);
  assert_string_equal(x.follow.err.message, "async: engine is closing");
  assert_int_equal(x.follow.calls, 0);
  ct_assert_counts(S, 0, 1, 1);
}

/* ------------------------------------------------------------------ */
/* The completion descriptor                                            */
/* ------------------------------------------------------------------ */

static bool fd_ready(int fd, int timeout_ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int r = poll(&p, 1, timeout_ms);
  assert_true(r >= 0);
  return r == 1 && (p.revents & POLLIN);
}

static void test_async__fd_becomes_readable_when_a_completion_is_ready(void **state) {
  (void)state;
  prepare(5);
  gate g;
  gate_init(&g, "fd_gate");
  cl_async_options opts = gate_options(&g);
  cl_async *a = open_async(&opts);
  int fd = cl_async_fd(a);
  assert_true(fd >= 0);
  tally t;
  tally_init(&t);
  rec r[3];
  recs_init(r, 3, &t);

  trigger_ok(a, 1, "fd_gate", &r[0]);
  gate_wait_entered(&g);
  /* Held: nothing is ready, the descriptor is quiet, poll runs nothing. */
  assert_false(fd_ready(fd, 0));
  assert_int_equal(cl_async_poll(a), 0);

  int64_t t0 = now_ms();
  gate_open(&g);
  assert_true(fd_ready(fd, WAIT_MS)); /* wakes when the completion is queued */
  assert_true(now_ms() - t0 < WAIT_MS);
  assert_int_equal(r[0].calls, 0); /* only poll runs callbacks */
  assert_int_equal(cl_async_poll(a), 1);
  assert_int_equal(r[0].calls, 1);
  ct_assert_ok(r[0].status, &r[0].err);
  assert_false(fd_ready(fd, 0)); /* drained by poll */

  /* select() sees the same readiness. */
  trigger_ok(a, 2, "fd_select", &r[1]);
  fd_set rd;
  FD_ZERO(&rd);
  FD_SET(fd, &rd);
  struct timeval tv = {.tv_sec = WAIT_MS / 1000};
  assert_int_equal(select(fd + 1, &rd, NULL, NULL, &tv), 1);
  assert_true(FD_ISSET(fd, &rd));
  assert_int_equal(cl_async_poll(a), 1);
  assert_int_equal(r[1].calls, 1);
  FD_ZERO(&rd);
  FD_SET(fd, &rd);
  struct timeval zero = {0};
  assert_int_equal(select(fd + 1, &rd, NULL, NULL, &zero), 0);

  cl_async_close(a, CL_ASYNC_CANCEL);
  assert_int_equal(t.callbacks, 2);
  recs_free(r, 3);
  gate_destroy(&g);
}

/* ------------------------------------------------------------------ */
/* Reads, work, migrate, call                                           */
/* ------------------------------------------------------------------ */

typedef struct cap_call {
  rec r;
  pthread_t thread;
} cap_call;

static cl_status lower_cap(void *ud, cl_engine *eng, cl_error *err) {
  cap_call *c = ud;
  c->thread = pthread_self();
  return cl_set_max_batch_size(eng, 2, err);
}

static void on_cap_done(void *ud, cl_status st, const cl_error *err) {
  cap_call *c = ud;
  note(&c->r, st, err);
}

static void test_async__reads_work_migrate_and_call_complete_with_their_results(void **state) {
  (void)state;
  prepare(5);
  cl_async *a = open_async(NULL);
  tally t;
  tally_init(&t);
  rec r[12];
  recs_init(r, 12, &t);
  cl_error err;

  ct_assert_ok(cl_async_migrate(a, on_done, &r[0], &err), &err);
  int64_t ids[] = {1, 2, 3};
  r[1].want_ids = ids;
  cl_bulk_opts bo = {.template_id = "reads", .rendered_body = "body"};
  ct_assert_ok(cl_async_bulk_trigger(a, ids, 3, &bo, on_bulk, &r[1], &err), &err);
  drain(a);
  ct_assert_ok(r[0].status, &r[0].err);
  ct_assert_ok(r[1].status, &r[1].err);

  ct_assert_ok(cl_async_envelope_get(a, r[1].envelope_id, on_envelopes, &r[2], &err), &err);
  ct_assert_ok(cl_async_envelope_get(a, "00000000-0000-4000-8000-000000000000", on_envelopes, &r[3],
                                     &err),
               &err);
  cl_envelope_query q = {.template_id = "reads", .limit = 10};
  ct_assert_ok(cl_async_envelopes_list(a, &q, on_envelopes, &r[4], &err), &err);
  const char *params[] = {"reads"};
  ct_assert_ok(cl_async_query(a,
                              "SELECT count(*) FROM " S ".cairnloop_messages "
                              "WHERE metadata->>'template_id' = $1",
                              1, params, on_rows, &r[5], &err),
               &err);
  ct_assert_ok(cl_async_work(a, 100, on_work, &r[6], &err), &err);
  /* The engine validates: an invalid argument is an outcome, not a refusal. */
  ct_assert_ok(cl_async_trigger(a, 1, NULL, on_trigger, &r[7], &err), &err);
  ct_assert_ok(cl_async_envelope_get(a, "not-a-uuid", on_envelopes, &r[8], &err), &err);
  /* cl_async_call runs in turn: the cap it lowers holds for the next bulk. */
  cap_call c = {0};
  recs_init(&c.r, 1, &t);
  ct_assert_ok(cl_async_call(a, lower_cap, on_cap_done, &c, &err), &err);
  ct_assert_ok(cl_async_bulk_trigger(a, ids, 3, &bo, on_bulk, &r[9], &err), &err);
  /* cl_work_run's options travel too (the stop flag does not: close stops). */
  cl_trigger_opts to = {.template_id = "reads_run"};
  ct_assert_ok(cl_async_trigger(a, 4, &to, on_trigger, &r[10], &err), &err);
  volatile sig_atomic_t never = 1;
  cl_work_options wo = {.limit = 100, .concurrency = 4, .stop = &never};
  ct_assert_ok(cl_async_work_run(a, &wo, on_work, &r[11], &err), &err);
  ct_assert_error(cl_async_work_run(a, NULL, on_work, &r[11], &err), &err, CL_INVALID_ARGUMENT,
                  "no options");
  drain(a);

  assert_int_equal(t.off_host, 0);
  ct_assert_ok(r[11].status, &r[11].err);
  assert_int_equal(r[11].stats.no_op, 1);
  assert_int_equal(r[11].calls, 1);
  ct_assert_ok(r[2].status, &r[2].err);
  assert_int_equal(r[2].items, 1);
  assert_string_equal(r[2].envelope_id, r[1].envelope_id);
  assert_int_equal(r[2].count, 3);
  ct_assert_ok(r[3].status, &r[3].err);
  assert_int_equal(r[3].items, 0);
  ct_assert_ok(r[4].status, &r[4].err);
  assert_int_equal(r[4].items, 1);
  ct_assert_ok(r[5].status, &r[5].err);
  assert_string_equal(r[5].value, "3");
  ct_assert_ok(r[6].status, &r[6].err);
  assert_int_equal(r[6].stats.no_op, 3);
  ct_assert_error(r[7].status, &r[7].err, CL_INVALID_ARGUMENT, NULL);
  ct_assert_error(r[8].status, &r[8].err, CL_INVALID_ARGUMENT, "not a UUID");
  ct_assert_ok(c.r.status, &c.r.err);
  assert_false(pthread_equal(c.thread, pthread_self()));
  ct_assert_error(r[9].status, &r[9].err, CL_BATCH_TOO_LARGE, "batch_size 3 exceeds cap 2");
  for (int i = 0; i < 10; i++) assert_int_equal(r[i].calls, 1);
  cl_async_close(a, CL_ASYNC_CANCEL);
  recs_free(r, 12);
}

/* Callbacks that take their results instead of letting them be cleared. */
typedef struct taker {
  rec r;
  cl_trigger_result res;
  cl_rows *rows;
} taker;

static void take_trigger(void *ud, cl_status st, const cl_error *err, cl_trigger_result *res) {
  taker *k = ud;
  note(&k->r, st, err);
  k->res = *res;
  memset(res, 0, sizeof *res);
}

static void take_rows(void *ud, cl_status st, const cl_error *err, cl_rows **rows) {
  taker *k = ud;
  note(&k->r, st, err);
  k->rows = *rows;
  *rows = NULL;
}

static void test_async__a_callback_may_take_its_result(void **state) {
  (void)state;
  prepare(3);
  cl_async *a = open_async(NULL);
  tally t;
  tally_init(&t);
  taker k1 = {0}, k2 = {0};
  recs_init(&k1.r, 1, &t);
  recs_init(&k2.r, 1, &t);
  cl_error err;
  cl_trigger_opts o = {.template_id = "taken", .content = "kept after the callback"};
  ct_assert_ok(cl_async_trigger(a, 3, &o, take_trigger, &k1, &err), &err);
  ct_assert_ok(cl_async_query(a, "SELECT 'rows kept'", 0, NULL, take_rows, &k2, &err), &err);
  drain(a);
  cl_async_close(a, CL_ASYNC_CANCEL);
  ct_assert_ok(k1.r.status, &k1.r.err);
  assert_string_equal(k1.res.message.content, "kept after the callback");
  assert_string_equal(k1.res.delivery_job.template_id, "taken");
  cl_trigger_result_clear(&k1.res);
  ct_assert_ok(k2.r.status, &k2.r.err);
  assert_string_equal(cl_rows_value(k2.rows, 0, 0), "rows kept");
  cl_rows_free(k2.rows);
}

/* ------------------------------------------------------------------ */
/* Inputs are copied                                                    */
/* ------------------------------------------------------------------ */

static char *heap_str(const char *s) {
  char *d = strdup(s);
  assert_non_null(d);
  return d;
}

/* The caller's buffers are freed right after each submission, while the
 * engine thread is held: reading them later would be a use after free
 * (which AddressSanitizer reports) or would see the scribbles. */
static void test_async__inputs_are_copied_at_submission(void **state) {
  (void)state;
  prepare(10);
  gate g;
  gate_init(&g, "copy_gate");
  cl_async_options opts = gate_options(&g);
  cl_async *a = open_async(&opts);
  tally t;
  tally_init(&t);
  rec r[6];
  recs_init(r, 6, &t);
  cl_error err;

  trigger_ok(a, 1, "copy_gate", &r[0]);
  gate_wait_entered(&g);

  char *tmpl = heap_str("copied_t"), *content = heap_str("copied content"),
       *actor = heap_str("agent_1");
  cl_trigger_opts to = {.template_id = tmpl, .content = content, .actor = actor};
  ct_assert_ok(cl_async_trigger(a, 2, &to, on_trigger, &r[1], &err), &err);
  memset(tmpl, 'X', strlen(tmpl));
  memset(content, 'X', strlen(content));
  free(tmpl);
  free(content);
  free(actor);

  int64_t *ids = malloc(3 * sizeof *ids);
  assert_non_null(ids);
  ids[0] = 4, ids[1] = 5, ids[2] = 6;
  static const int64_t want[] = {4, 5, 6};
  r[2].want_ids = want;
  char *btmpl = heap_str("copied_b"), *body = heap_str("copied body");
  cl_bulk_opts bo = {.template_id = btmpl, .rendered_body = body};
  ct_assert_ok(cl_async_bulk_trigger(a, ids, 3, &bo, on_bulk, &r[2], &err), &err);
  ids[0] = ids[1] = ids[2] = 9;
  free(ids);
  free(btmpl);
  free(body);

  char *sql = heap_str("SELECT $1::text || '/' || $2::text");
  char **params = malloc(2 * sizeof *params);
  assert_non_null(params);
  params[0] = heap_str("left");
  params[1] = heap_str("right");
  ct_assert_ok(cl_async_query(a, sql, 2, (const char *const *)params, on_rows, &r[3], &err), &err);
  free(params[0]);
  free(params[1]);
  free(params);
  free(sql);

  char *qt = heap_str("copied_b");
  cl_envelope_query q = {.template_id = qt};
  ct_assert_ok(cl_async_envelopes_list(a, &q, on_envelopes, &r[4], &err), &err);
  free(qt);

  gate_open(&g);
  drain(a);
  for (int i = 0; i < 5; i++) {
    assert_int_equal(r[i].calls, 1);
    ct_assert_ok(r[i].status, &r[i].err);
  }
  assert_string_equal(r[1].template_id, "copied_t");
  assert_string_equal(r[1].content, "copied content");
  assert_string_equal(r[2].template_id, "copied_b");
  assert_true(r[2].ids_match);
  assert_string_equal(r[3].value, "left/right");
  assert_int_equal(r[4].items, 1);
  cl_async_close(a, CL_ASYNC_CANCEL);
  recs_free(r, 6);
  gate_destroy(&g);
}

/* ------------------------------------------------------------------ */
/* Which thread runs what                                               */
/* ------------------------------------------------------------------ */

/* Records the threads the engine's hooks and sinks ran on. */
typedef struct threads {
  pthread_mutex_t mu;
  pthread_t setup, log, handler, release;
  int setups, logs, handlers, releases;
} threads;

static void log_thread(void *ud, cl_log_level level, const char *line) {
  (void)level;
  (void)line;
  threads *th = ud;
  pthread_mutex_lock(&th->mu);
  th->log = pthread_self();
  th->logs++;
  pthread_mutex_unlock(&th->mu);
}

static void handler_thread(const char *const *event, const cl_measurements *m,
                           const cl_metadata *md, void *config) {
  (void)event;
  (void)m;
  (void)md;
  threads *th = config;
  pthread_mutex_lock(&th->mu);
  th->handler = pthread_self();
  th->handlers++;
  pthread_mutex_unlock(&th->mu);
}

static void release_thread(void *config) {
  threads *th = config;
  pthread_mutex_lock(&th->mu);
  th->release = pthread_self();
  th->releases++;
  pthread_mutex_unlock(&th->mu);
}

static cl_status setup_thread(void *ud, cl_engine *eng, cl_error *err) {
  threads *th = ud;
  pthread_mutex_lock(&th->mu);
  th->setup = pthread_self();
  th->setups++;
  pthread_mutex_unlock(&th->mu);
  return cl_attach(eng, "threads", "cairnloop.outbound.triggered.stop", handler_thread, th,
                   release_thread, err);
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  assert_true(fputs(text, f) >= 0);
  assert_int_equal(fclose(f), 0);
}

static void test_async__hooks_run_on_the_engine_thread_callbacks_on_the_host(void **state) {
  (void)state;
  prepare(3);
  char dir[] = "/tmp/cl-async-policy.XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[sizeof dir + 16];
  snprintf(path, sizeof path, "%s/policy.lua", dir);
  write_file(path, "local cl = require \"cairnloop\"\n"
                   "cl.log(\"info\", \"async policy loaded\")\n"
                   "cl.auditor{ audit = function(tx, action) return { via = \"policy\" } end }\n");

  threads th = {0};
  pthread_mutex_init(&th.mu, NULL);
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.database = ct_database_url();
  cfg.log = log_thread;
  cfg.log_ud = &th;
  const char *policies[] = {path};
  cl_async_options opts;
  cl_async_options_init(&opts);
  opts.policies = policies;
  opts.policy_count = 1;
  opts.setup = setup_thread;
  opts.setup_ud = &th;
  cl_async *a = NULL;
  cl_error err;
  ct_assert_ok(cl_async_open(&a, &cfg, &opts, &err), &err);

  tally t;
  tally_init(&t);
  rec r[2];
  recs_init(r, 2, &t);
  trigger_ok(a, 1, "threads", &r[0]);
  drain(a);
  cl_async_close(a, CL_ASYNC_CANCEL);
  unlink(path);
  rmdir(dir);

  ct_assert_ok(r[0].status, &r[0].err);
  assert_non_null(r[0].audit_json);
  assert_non_null(strstr(r[0].audit_json, "policy")); /* the policy's auditor ran */
  assert_int_equal(t.off_host, 0);
  pthread_mutex_lock(&th.mu);
  assert_int_equal(th.setups, 1);
  assert_true(th.logs >= 1);
  assert_int_equal(th.handlers, 1);
  assert_int_equal(th.releases, 1); /* released by close, on the engine thread */
  pthread_t main_thread = pthread_self();
  assert_false(pthread_equal(th.setup, main_thread));
  assert_true(pthread_equal(th.log, th.setup));
  assert_true(pthread_equal(th.handler, th.setup));
  assert_true(pthread_equal(th.release, th.setup));
  pthread_mutex_unlock(&th.mu);
  pthread_mutex_destroy(&th.mu);
  recs_free(r, 2);
}

/* ------------------------------------------------------------------ */
/* Refusals                                                             */
/* ------------------------------------------------------------------ */

/* Fails with the status `ud` points to: CL_HOOK_ERROR with a message, any
 * other without one (cl_async_open then names the status). */
static cl_status failing_setup(void *ud, cl_engine *eng, cl_error *err) {
  (void)eng;
  cl_status st = *(cl_status *)ud;
  if (st == CL_HOOK_ERROR) {
    err->code = st;
    snprintf(err->message, sizeof err->message, "setup refused");
  }
  return st;
}

static void test_async__open_reports_its_failures_and_leaves_nothing_running(void **state) {
  (void)state;
  cl_async *a = (cl_async *)&a; /* must become NULL */
  cl_error err;
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.database = "postgresql:///cl_async_nowhere?host=/nonexistent&connect_timeout=2";
  ct_assert_error(cl_async_open(&a, &cfg, NULL, &err), &err, CL_DB_ERROR, NULL);
  assert_null(a);

  cfg.database = ct_database_url();
  ct_log log = {0};
  cfg.log = ct_log_fn; /* the engine thread logs the missing policy */
  cfg.log_ud = &log;
  const char *missing[] = {"/nonexistent/policy.lua"};
  cl_async_options opts;
  cl_async_options_init(&opts);
  opts.policies = missing;
  opts.policy_count = 1;
  /* Reported once, in the error: a file that cannot be read is not logged
   * with a traceback as well (policy_errors.sh). */
  ct_assert_error(cl_async_open(&a, &cfg, &opts, &err), &err, CL_INVALID_ARGUMENT,
                  "/nonexistent/policy.lua");
  assert_null(a);

  opts.policies = NULL;
  ct_assert_error(cl_async_open(&a, &cfg, &opts, &err), &err, CL_INVALID_ARGUMENT,
                  "policies is NULL");

  cl_async_options_init(&opts);
  cl_status want = CL_HOOK_ERROR;
  opts.setup = failing_setup;
  opts.setup_ud = &want;
  ct_assert_error(cl_async_open(&a, &cfg, &opts, &err), &err, CL_HOOK_ERROR, "setup refused");
  assert_null(a);
  want = CL_ENVELOPE_CONFLICT;
  ct_assert_error(cl_async_open(&a, &cfg, &opts, &err), &err, CL_ENVELOPE_CONFLICT,
                  "envelope_conflict");

  ct_assert_error(cl_async_open(NULL, &cfg, NULL, &err), &err, CL_INVALID_ARGUMENT, NULL);
  assert_int_equal(ct_log_count(&log, CL_LOG_ERROR, "/nonexistent/policy.lua"), 0);
  ct_log_free(&log);
}

static void test_async__null_engine_and_arguments_are_refused_at_submission(void **state) {
  (void)state;
  cl_error err;
  cl_async_close(NULL, CL_ASYNC_CANCEL);
  assert_int_equal(cl_async_poll(NULL), 0);
  assert_int_equal(cl_async_fd(NULL), -1);
  assert_int_equal(cl_async_pending(NULL), 0);
  ct_assert_error(submit_trigger(NULL, 1, "t", NULL, &err), &err, CL_INVALID_ARGUMENT,
                  "cl_async_trigger: no asynchronous engine");
  ct_assert_error(cl_async_work(NULL, 1, NULL, NULL, &err), &err, CL_INVALID_ARGUMENT,
                  "cl_async_work");
  ct_assert_error(cl_async_migrate(NULL, NULL, NULL, &err), &err, CL_INVALID_ARGUMENT, NULL);

  prepare(1);
  cl_async *a = open_async(NULL);
  ct_assert_error(cl_async_call(a, NULL, NULL, NULL, &err), &err, CL_INVALID_ARGUMENT,
                  "no function");
  assert_int_equal(cl_async_pending(a), 0);
  /* A NULL callback drops the outcome; the operation still runs. */
  cl_trigger_opts o = {.template_id = "no_callback"};
  ct_assert_ok(cl_async_trigger(a, 1, &o, NULL, NULL, &err), &err);
  drain(a);
  ct_assert_counts(S, 0, 1, 1);
  cl_async_close(a, CL_ASYNC_CANCEL);
}

/* ------------------------------------------------------------------ */
/* A database restart with operations pending                           */
/* ------------------------------------------------------------------ */

/* A private cluster (tests/pg.sh), so that restarting it disturbs no other suite. */
typedef struct cluster {
  char dir[512];
  char url[1024];
} cluster;

/* Copies the value of `export NAME='value'` from `line` into out. */
static bool export_value(const char *line, const char *name, char *out, size_t len) {
  char prefix[64];
  snprintf(prefix, sizeof prefix, "export %s='", name);
  if (strncmp(line, prefix, strlen(prefix)) != 0) return false;
  const char *v = line + strlen(prefix), *end = strchr(v, '\'');
  if (!end || (size_t)(end - v) >= len) return false;
  memcpy(out, v, (size_t)(end - v));
  out[end - v] = '\0';
  return true;
}

static int cluster_setup(void **state) {
  cluster *c = calloc(1, sizeof *c);
  if (!c) return -1;
  *state = c;
  if (access("tests/pg.sh", X_OK) != 0) {
    fprintf(stderr, "test_async: run from the source tree: tests/pg.sh not found\n");
    return -1;
  }
  /* The private cluster is run by our own script; no outside input is in the
   * command lines below but a directory it made and $PG_BIN. */
  FILE *p = popen("tests/pg.sh start", "r");  // NOLINT(cert-env33-c)
  if (!p) return -1;
  char line[1024], host[600] = "";
  while (fgets(line, sizeof line, p)) {
    export_value(line, "CL_PG_DIR", c->dir, sizeof c->dir);
    export_value(line, "PGHOST", host, sizeof host);
  }
  if (pclose(p) != 0 || !c->dir[0] || !host[0]) return -1;
  snprintf(c->url, sizeof c->url, "postgresql:///postgres?host=%s&port=5432&user=postgres", host);
  return 0;
}

static int cluster_teardown(void **state) {
  cluster *c = *state;
  if (c && c->dir[0]) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "tests/pg.sh stop '%s' >/dev/null 2>&1", c->dir);
    if (system(cmd) != 0)  // NOLINT(cert-env33-c): see cluster_setup
      fprintf(stderr, "test_async: could not stop %s\n", c->dir);
  }
  free(c);
  return 0;
}

/* pg_ctl stop or start on the private cluster, as a user the server accepts. */
static void pg_ctl(const cluster *c, const char *action) {
  const char *bin = getenv("PG_BIN") ? getenv("PG_BIN") : "/usr/lib/postgresql/15/bin";
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "%s'%s/pg_ctl' -D '%s/data' -l '%s/server.log' -w -t 30 %s >/dev/null",
           geteuid() == 0 ? "runuser -u postgres -- " : "", bin, c->dir, c->dir,
           strcmp(action, "stop") == 0 ? "-m fast stop" : "start");
  int rc = system(cmd);  // NOLINT(cert-env33-c): see cluster_setup
  if (rc != 0) fail_msg("pg_ctl %s failed (%d)", action, rc);
}

static void cluster_exec(const cluster *c, const char *sql) {
  PGconn *conn = PQconnectdb(c->url);
  if (PQstatus(conn) != CONNECTION_OK) fail_msg("%s", PQerrorMessage(conn));
  PGresult *r = PQexec(conn, sql);
  ExecStatusType s = PQresultStatus(r);
  if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) fail_msg("%s", PQerrorMessage(conn));
  PQclear(r);
  PQfinish(conn);
}

static long cluster_count(const cluster *c, const char *sql) {
  PGconn *conn = PQconnectdb(c->url);
  if (PQstatus(conn) != CONNECTION_OK) fail_msg("%s", PQerrorMessage(conn));
  PGresult *r = PQexec(conn, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) fail_msg("%s", PQerrorMessage(conn));
  long n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
  PQclear(r);
  PQfinish(conn);
  return n;
}

#define RESTART_OPS 40

static void test_async__database_restart_with_operations_pending(void **state) {
  cluster *c = *state;
  gate g;
  gate_init(&g, NULL);
  cl_async_options opts = gate_options(&g);
  cl_async *a = open_on(c->url, &opts);
  tally t;
  tally_init(&t);
  rec mig, ra[RESTART_OPS], rb[RESTART_OPS], rc[RESTART_OPS];
  recs_init(&mig, 1, &t);
  recs_init(ra, RESTART_OPS, &t);
  recs_init(rb, RESTART_OPS, &t);
  recs_init(rc, RESTART_OPS, &t);
  cl_error err;
  ct_assert_ok(cl_async_migrate(a, on_done, &mig, &err), &err);
  drain(a);
  ct_assert_ok(mig.status, &mig.err);
  cluster_exec(c, "INSERT INTO cairnloop.cairnloop_conversations (status) "
                  "SELECT 'open' FROM generate_series(1, 100)");

  /* A: the server restarts while one operation is in its transaction
   * and the rest wait in the queue. */
  gate_arm(&g, "restart_a0");
  trigger_ok(a, 1, "restart_a0", &ra[0]);
  for (int i = 1; i < RESTART_OPS; i++) trigger_ok(a, i + 1, "restart_a", &ra[i]);
  gate_wait_entered(&g);
  pg_ctl(c, "stop");
  pg_ctl(c, "start");
  gate_open(&g);
  drain(a);
  int ok_a = 0;
  for (int i = 0; i < RESTART_OPS; i++) {
    assert_int_equal(ra[i].calls, 1);
    if (ra[i].status == CL_OK) ok_a++;
    else ct_assert_error(ra[i].status, &ra[i].err, CL_DB_ERROR, NULL);
  }
  /* The one in flight lost its session; the engine reconnected for the rest. */
  ct_assert_error(ra[0].status, &ra[0].err, CL_DB_ERROR, NULL);
  ct_assert_ok(ra[RESTART_OPS - 1].status, &ra[RESTART_OPS - 1].err);

  /* B: the server stops with operations pending and stays down: each
   * fails with db_error, none hangs. */
  gate_arm(&g, "restart_b0");
  trigger_ok(a, 1, "restart_b0", &rb[0]);
  for (int i = 1; i < RESTART_OPS; i++) trigger_ok(a, i + 1, "restart_b", &rb[i]);
  gate_wait_entered(&g);
  pg_ctl(c, "stop");
  gate_open(&g);
  drain(a);
  for (int i = 0; i < RESTART_OPS; i++) {
    assert_int_equal(rb[i].calls, 1);
    ct_assert_error(rb[i].status, &rb[i].err, CL_DB_ERROR, NULL);
  }

  /* Back up: the next operations reconnect and succeed. */
  pg_ctl(c, "start");
  for (int i = 0; i < RESTART_OPS; i++) trigger_ok(a, i + 1, "restart_c", &rc[i]);
  drain(a);
  for (int i = 0; i < RESTART_OPS; i++) {
    assert_int_equal(rc[i].calls, 1);
    ct_assert_ok(rc[i].status, &rc[i].err);
  }
  cl_async_close(a, CL_ASYNC_CANCEL);
  assert_int_equal(t.callbacks, 1 + 3 * RESTART_OPS);
  assert_int_equal(t.off_host, 0);
  /* Exactly the operations reported as done were written. */
  char sql[256];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM cairnloop.cairnloop_messages");
  assert_int_equal(cluster_count(c, sql), ok_a + RESTART_OPS);
  recs_free(ra, RESTART_OPS);
  recs_free(rb, RESTART_OPS);
  recs_free(rc, RESTART_OPS);
  gate_destroy(&g);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_async__many_operations_in_flight_complete_once_on_the_host_thread),
      cmocka_unit_test(test_async__full_queue_refuses_with_a_clear_error_and_loses_nothing),
      cmocka_unit_test(test_async__close_cancels_operations_not_started_and_runs_every_callback),
      cmocka_unit_test(test_async__close_drain_runs_every_queued_operation_first),
      cmocka_unit_test(test_async__callbacks_may_submit_but_not_poll_or_close),
      cmocka_unit_test(test_async__callbacks_run_by_close_cannot_submit),
      cmocka_unit_test(test_async__the_engine_thread_cannot_poll_or_close),
      cmocka_unit_test(test_async__fd_becomes_readable_when_a_completion_is_ready),
      cmocka_unit_test(test_async__reads_work_migrate_and_call_complete_with_their_results),
      cmocka_unit_test(test_async__a_callback_may_take_its_result),
      cmocka_unit_test(test_async__inputs_are_copied_at_submission),
      cmocka_unit_test(test_async__hooks_run_on_the_engine_thread_callbacks_on_the_host),
      cmocka_unit_test(test_async__open_reports_its_failures_and_leaves_nothing_running),
      cmocka_unit_test(test_async__null_engine_and_arguments_are_refused_at_submission),
      cmocka_unit_test_setup_teardown(test_async__database_restart_with_operations_pending,
                                      cluster_setup, cluster_teardown),
  };
  /* CT_FILTER='*close*' runs the matching tests only (for repeated runs). */
  if (getenv("CT_FILTER")) cmocka_set_test_filter(getenv("CT_FILTER"));
  return cmocka_run_group_tests_name("async", tests, NULL, ct_group_teardown);
}
