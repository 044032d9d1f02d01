/*
 * test_trust_race.c - racing callers (issue 10, section 3): eight engines,
 * one per thread, submit the same caller-chosen envelope id at the same
 * moment (a barrier), without an auditor.  Each must get a verdict about
 * the stored envelope: the content it asked for (one writes, the others
 * replay) or envelope_conflict; never db_error from the duplicate key the
 * losers ran into while they waited for the winner's commit.
 *
 * Bug: cl_bulk looks for a stored envelope in its snapshot, so concurrent
 * submits all saw none, all inserted, and every one but the first failed
 * with db_error (duplicate key).  Fixed in outbound.c by reading the
 * envelope that won after a unique violation, on every path (it was done
 * for the auditor's path only), and by looking again in the refusal path.
 */
#include "support.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S CT_SCHEMA
#define RACERS 8
#define ROUNDS 4
#define COHORT 5

typedef struct racer {
  cl_engine *eng;
  pthread_barrier_t *start;
  const char *envelope_id;
  const char *body;
  size_t n; /* recipients 1..n */
  cl_status st;
  cl_error err;
  int replayed;
  size_t count;
} racer;

static void *race(void *arg) {
  racer *r = arg;
  int64_t ids[64];
  for (size_t i = 0; i < r->n; i++) ids[i] = (int64_t)i + 1;
  cl_bulk_opts opts = {
      .template_id = "race", .rendered_body = r->body, .envelope_id = r->envelope_id};
  cl_bulk_result res;
  pthread_barrier_wait(r->start);
  r->st = cl_bulk_trigger(r->eng, ids, r->n, &opts, &res, &r->err);
  if (r->st == CL_OK) {
    r->replayed = res.replayed;
    r->count = res.count;
  }
  cl_bulk_result_clear(&res);
  return NULL;
}

/* Runs RACERS submits of `envelope_id` at once; body i is bodies[i % nbodies]. */
static void run_race(cl_engine **engines, racer *r, const char *envelope_id,
                     const char *const *bodies, int nbodies, size_t n) {
  pthread_barrier_t start;
  pthread_t threads[RACERS];
  assert_int_equal(pthread_barrier_init(&start, NULL, RACERS), 0);
  for (int i = 0; i < RACERS; i++) {
    r[i] = (racer){.eng = engines[i],
                   .start = &start,
                   .envelope_id = envelope_id,
                   .body = bodies[i % nbodies],
                   .n = n};
    assert_int_equal(pthread_create(&threads[i], NULL, race, &r[i]), 0);
  }
  for (int i = 0; i < RACERS; i++) pthread_join(threads[i], NULL);
  pthread_barrier_destroy(&start);
}

typedef struct fixture {
  cl_engine *engines[RACERS];
  ct_log logs[RACERS]; /* one per engine, so each thread writes its own */
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  for (int i = 0; i < RACERS; i++) {
    cl_config cfg;
    cl_config_init(&cfg);
    cfg.max_batch_size = 10;
    cfg.log = ct_log_fn;
    cfg.log_ud = &f->logs[i];
    f->engines[i] = ct_open_config(&cfg);
  }
  ct_reset(S);
  ct_seed(S, 20);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  for (int i = 0; i < RACERS; i++) {
    cl_close(f->engines[i]);
    ct_log_free(&f->logs[i]);
  }
  free(f);
  return 0;
}

static void uuid_for(char *out, size_t size, int round, int kind) {
  snprintf(out, size, "00000000-0000-4000-8000-%04d%08d", kind, round);
}

/* Same content from all eight: all succeed, exactly one writes. */
static void test_trust_race__same_envelope_id_same_content_all_succeed_one_writes(void **state) {
  fixture *f = *state;
  const char *body[] = {"Hello from the race"};
  for (int round = 0; round < ROUNDS; round++) {
    char id[40];
    uuid_for(id, sizeof id, round, 1);
    racer r[RACERS];
    run_race(f->engines, r, id, body, 1, COHORT);
    int written = 0, replayed = 0;
    for (int i = 0; i < RACERS; i++) {
      if (r[i].st != CL_OK)
        fail_msg("round %d racer %d: %s: %s", round, i, cl_status_name(r[i].st), r[i].err.message);
      assert_int_equal(r[i].count, COHORT);
      if (r[i].replayed) replayed++;
      else written++;
    }
    assert_int_equal(written, 1);
    assert_int_equal(replayed, RACERS - 1);
    assert_int_equal(ct_int("SELECT count(*) FROM %s.cairnloop_outbound_bulk_envelopes "
                            "WHERE id = '%s'",
                            S, id),
                     1);
    assert_int_equal(ct_int("SELECT count(*) FROM %s.cairnloop_messages "
                            "WHERE metadata->>'bulk_envelope_id' = '%s'",
                            S, id),
                     COHORT);
    assert_int_equal(ct_int("SELECT count(*) FROM %s.cairnloop_delivery_jobs "
                            "WHERE bulk_envelope_id = '%s'",
                            S, id),
                     COHORT);
  }
}

/* Two contents racing for one id: whichever wins, the others with its
 * content replay it and those with the other content get a conflict. */
static void test_trust_race__same_envelope_id_different_content_replay_or_conflict(void **state) {
  fixture *f = *state;
  const char *bodies[] = {"Body A", "Body B"};
  for (int round = 0; round < ROUNDS; round++) {
    char id[40];
    uuid_for(id, sizeof id, round, 2);
    racer r[RACERS];
    run_race(f->engines, r, id, bodies, 2, COHORT);
    char *stored = ct_scalar("SELECT rendered_body FROM %s.cairnloop_outbound_bulk_envelopes "
                             "WHERE id = '%s'",
                             S, id);
    assert_non_null(stored);
    int written = 0;
    for (int i = 0; i < RACERS; i++) {
      bool winner_content = strcmp(r[i].body, stored) == 0;
      if (winner_content) {
        if (r[i].st != CL_OK)
          fail_msg("round %d racer %d: %s: %s", round, i, cl_status_name(r[i].st),
                   r[i].err.message);
        if (!r[i].replayed) written++;
      } else {
        if (r[i].st != CL_ENVELOPE_CONFLICT)
          fail_msg("round %d racer %d: %s: %s", round, i, cl_status_name(r[i].st),
                   r[i].err.message);
      }
    }
    free(stored);
    assert_int_equal(written, 1);
    assert_int_equal(ct_int("SELECT count(*) FROM %s.cairnloop_messages "
                            "WHERE metadata->>'bulk_envelope_id' = '%s'",
                            S, id),
                     COHORT);
  }
}

/* Over the cap, the refusal is stored once and every racer is told the
 * cohort is too large (none reports a refusal it could not record). */
static void test_trust_race__same_envelope_id_over_the_cap_is_refused_once(void **state) {
  fixture *f = *state;
  const char *body[] = {"Too many"};
  for (int round = 0; round < ROUNDS; round++) {
    char id[40];
    uuid_for(id, sizeof id, round, 3);
    racer r[RACERS];
    run_race(f->engines, r, id, body, 1, 12);
    for (int i = 0; i < RACERS; i++) {
      if (r[i].st != CL_BATCH_TOO_LARGE)
        fail_msg("round %d racer %d: %s: %s", round, i, cl_status_name(r[i].st), r[i].err.message);
      assert_string_equal(r[i].err.message, "batch_size 12 exceeds cap 10");
      if (ct_log_count(&f->logs[i], CL_LOG_ERROR, NULL) != 0) {
        ct_log_dump(&f->logs[i]);
        fail_msg("round %d racer %d logged an error", round, i);
      }
    }
    assert_int_equal(ct_int("SELECT count(*) FROM %s.cairnloop_outbound_bulk_envelopes "
                            "WHERE id = '%s' AND status = 'refused_cap_exceeded'",
                            S, id),
                     1);
  }
}

int main(void) {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_trust_race__same_envelope_id_same_content_all_succeed_one_writes),
      T(test_trust_race__same_envelope_id_different_content_replay_or_conflict),
      T(test_trust_race__same_envelope_id_over_the_cap_is_refused_once),
  };
#undef T
  return cmocka_run_group_tests_name("trust_race", tests, NULL, ct_group_teardown);
}
