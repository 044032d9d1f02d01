/*
 * test_trust_faults.c - a database crash (issue 10, section 4), on a
 * private cluster (tests/pg.sh) that the test restarts with
 * `pg_ctl -m immediate`, so no other suite sees the outage:
 *   - after the restart, at most the first call fails (db_error, nothing
 *     written); the next one reconnects;
 *   - a worker that delivered a batch and lost its connection before
 *     recording it keeps the outcomes and records them once it reconnects,
 *     so no message reaches the notifier twice.
 *
 * Bugs: two calls in a row failed after an immediate restart (libpq's
 * "server closed the connection unexpectedly" came back as one statement's
 * error while the connection still looked good, so the next call used it
 * again); a batch whose completion could not be recorded within the retry
 * window was delivered again after its lease.  Fixed in db.c (the call
 * that meets a lost session marks it, the next one reconnects) and
 * queue.c (pending outcomes on the engine).
 */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define S CT_SCHEMA

/* The private cluster: tests/pg.sh's exports. */
typedef struct cluster {
  char dir[256];
  char url[600];
} cluster;

static cluster C;

static const char *pg_bin(void) {
  const char *b = getenv("PG_BIN");
  return b ? b : "/usr/lib/postgresql/15/bin";
}

/* pg_ctl as a user the server accepts (tests/pg.sh runs it as postgres). */
static int pg_ctl(const char *args) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "%s%s/pg_ctl -D '%s/data' %s >/dev/null 2>&1",
           geteuid() == 0 ? "runuser -u postgres -- " : "", pg_bin(), C.dir, args);
  return system(cmd);  // NOLINT(cert-env33-c): pg_ctl on the test's own cluster
}

static void restart_immediately(void) {
  assert_int_equal(pg_ctl("-m immediate -w -t 30 stop"), 0);
  char args[600];
  snprintf(args, sizeof args, "-l '%s/server.log' -w -t 30 start", C.dir);
  assert_int_equal(pg_ctl(args), 0);
}

/* One statement on a connection of the test's own, opened for it: the
 * restarts would end a kept one.  Returns the first value as an integer. */
static int64_t pg_run(const char *sql) {
  PGconn *c = PQconnectdb(C.url);
  if (PQstatus(c) != CONNECTION_OK) fail_msg("test connection: %s", PQerrorMessage(c));
  PGresult *r = PQexec(c, sql);
  ExecStatusType s = PQresultStatus(r);
  if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) fail_msg("%s: %s", sql, PQerrorMessage(c));
  int64_t v = s == PGRES_TUPLES_OK ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : 0;
  PQclear(r);
  PQfinish(c);
  return v;
}

static void pg_exec(const char *sql) { pg_run(sql); }

static int64_t pg_int(const char *sql) { return pg_run(sql); }

/* Starts the cluster and reads the exports tests/pg.sh prints. */
static int group_setup(void **state) {
  (void)state;
  FILE *p = popen("tests/pg.sh start", "r");  // NOLINT(cert-env33-c): a fixed command
  assert_non_null(p);
  char line[1024], host[512] = "", port[16] = "";
  while (fgets(line, sizeof line, p)) {
    char *v = strchr(line, '\'');
    char *end = v ? strrchr(v + 1, '\'') : NULL;
    if (!end) continue;
    *end = '\0';
    if (strncmp(line, "export CL_PG_DIR=", 17) == 0) snprintf(C.dir, sizeof C.dir, "%s", v + 1);
    if (strncmp(line, "export PGHOST=", 14) == 0) snprintf(host, sizeof host, "%s", v + 1);
    if (strncmp(line, "export PGPORT=", 14) == 0) snprintf(port, sizeof port, "%s", v + 1);
  }
  assert_int_equal(pclose(p), 0);
  assert_true(C.dir[0] && host[0] && port[0]);
  snprintf(C.url, sizeof C.url, "postgresql:///postgres?host=%s&port=%s&user=postgres", host, port);
  return 0;
}

static int group_teardown(void **state) {
  char cmd[400];
  snprintf(cmd, sizeof cmd, "tests/pg.sh stop '%s' >/dev/null 2>&1", C.dir);
  // NOLINTNEXTLINE(cert-env33-c): the test's own directory, quoted
  if (C.dir[0] && system(cmd) != 0) fprintf(stderr, "# could not stop the cluster in %s\n", C.dir);
  return ct_group_teardown(state);
}

static cl_engine *open_engine(cl_config *cfg, ct_log *log) {
  cfg->database = C.url;
  cfg->log = ct_log_fn;
  cfg->log_ud = log;
  cfg->log_level = CL_LOG_DEBUG;
  cl_engine *eng = ct_open_config(cfg);
  char sql[200];
  snprintf(sql, sizeof sql,
           "TRUNCATE %s.cairnloop_delivery_jobs, %s.cairnloop_messages, "
           "%s.cairnloop_outbound_bulk_envelopes, %s.cairnloop_conversations RESTART IDENTITY",
           S, S, S, S);
  pg_exec(sql);
  snprintf(
      sql, sizeof sql,
      "INSERT INTO %s.cairnloop_conversations (subject) SELECT 'c' FROM generate_series(1, 50)", S);
  pg_exec(sql);
  return eng;
}

static int64_t messages(void) {
  char sql[100];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.cairnloop_messages", S);
  return pg_int(sql);
}

static cl_status trigger(cl_engine *eng, int64_t conv, cl_error *err) {
  char tmpl[32];
  snprintf(tmpl, sizeof tmpl, "t%lld", (long long)conv);
  cl_trigger_opts opts = {.template_id = tmpl};
  cl_trigger_result res;
  cl_status st = cl_trigger(eng, conv, &opts, &res, err);
  cl_trigger_result_clear(&res);
  return st;
}

/* After each restart, every kind of call: at most the first one fails, and
 * a failed one wrote nothing. */
static void test_trust_faults__only_the_first_call_after_a_restart_may_fail(void **state) {
  (void)state;
  ct_log log = {0};
  cl_config cfg;
  cl_config_init(&cfg);
  cl_engine *eng = open_engine(&cfg, &log);
  cl_error err;
  int64_t conv = 1;
  ct_assert_ok(trigger(eng, conv++, &err), &err);
  int first_failed = 0;
  for (int round = 0; round < 3; round++) {
    restart_immediately();
    int64_t before = messages();
    cl_status st = trigger(eng, conv++, &err);
    if (st != CL_OK) {
      ct_assert_error(st, &err, CL_DB_ERROR, NULL);
      assert_int_equal(messages(), before);
      first_failed++;
    }
    /* The second call reconnects, whatever it is. */
    switch (round) {
    case 0:
      st = trigger(eng, conv++, &err);
      break;
    case 1: {
      int64_t ids[] = {conv, conv + 1};
      conv += 2;
      cl_bulk_opts opts = {.template_id = "bulk", .rendered_body = "b"};
      cl_bulk_result res;
      st = cl_bulk_trigger(eng, ids, 2, &opts, &res, &err);
      cl_bulk_result_clear(&res);
      break;
    }
    default: {
      cl_work_stats stats;
      st = cl_work(eng, 100, &stats, &err);
      break;
    }
    }
    if (st != CL_OK) fail_msg("round %d: the second call failed: %s", round, err.message);
  }
  print_message("# the first call after a restart failed %d of 3 times\n", first_failed);
  cl_close(eng);
  ct_log_free(&log);
}

/* A notifier that stops the server while the batch is in its hands. */
typedef struct crashing {
  int calls;
  int crash_at;  /* the call that stops the server (1-based), 0: never */
  int64_t *seen; /* message ids, in call order */
  int cap;
} crashing;

static cl_status crashing_deliver(void *ud, const cl_message *m, const cl_conversation *c,
                                  const char *key, int attempt, cl_error *err) {
  (void)c;
  (void)key;
  (void)attempt;
  (void)err;
  crashing *k = ud;
  if (k->calls < k->cap) k->seen[k->calls] = m->id;
  if (++k->calls == k->crash_at && pg_ctl("-m immediate -w -t 30 stop") != 0)
    fprintf(stderr, "# pg_ctl stop failed\n");
  return CL_OK;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void test_trust_faults__outcomes_of_a_lost_connection_are_recorded_on_reconnect(
    void **state) {
  (void)state;
  enum { N = 20 };
  ct_log log = {0};
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.lease_seconds = 2; /* its retries give up after 1 s; a rescue could come after 2 */
  cl_engine *eng = open_engine(&cfg, &log);
  cl_error err;
  int64_t ids[N];
  for (int i = 0; i < N; i++) ids[i] = i + 1;
  cl_bulk_opts opts = {.template_id = "crash", .rendered_body = "b"};
  cl_bulk_result res;
  ct_assert_ok(cl_bulk_trigger(eng, ids, N, &opts, &res, &err), &err);
  cl_bulk_result_clear(&res);

  int64_t seen[4 * N];
  crashing k = {.crash_at = N, .seen = seen, .cap = 4 * N};
  cl_notifier n = {.deliver = crashing_deliver, .ud = &k};
  ct_assert_ok(cl_set_notifier(eng, &n, &err), &err);

  /* The whole batch is delivered; the server is gone before it is recorded. */
  cl_work_stats stats;
  cl_batch_info batch;
  cl_status st = cl_work_batch(eng, 100, NULL, &stats, &batch, &err);
  ct_assert_error(st, &err, CL_DB_ERROR, NULL);
  assert_int_equal(k.calls, N);
  int sent_unrecorded = stats.sent;

  char args[600];
  snprintf(args, sizeof args, "-l '%s/server.log' -w -t 30 start", C.dir);
  assert_int_equal(pg_ctl(args), 0);

  /* Work on as a worker does until every job is finished, well past the
   * lease: a batch the engine forgot would be rescued and delivered again. */
  char done_sql[160];
  snprintf(done_sql, sizeof done_sql,
           "SELECT count(*) FROM %s.cairnloop_delivery_jobs WHERE state = 'completed'", S);
  int sent = 0, recorded_late = 0, failures = 0;
  int64_t until = now_ms() + 6000;
  while (now_ms() < until) {
    st = cl_work_batch(eng, 100, NULL, &stats, &batch, &err);
    if (st != CL_OK) {
      failures++;
      continue;
    }
    sent += stats.sent;
    recorded_late += batch.recorded_late;
    if (pg_int(done_sql) == N && now_ms() > until - 3000) break;
    cl_wake why;
    cl_work_wait(eng, 100, -1, &why, &err);
  }
  assert_true(failures <= 1);
  assert_int_equal(pg_int(done_sql), N);
  assert_int_equal(k.calls, N); /* no message reached the notifier twice */
  /* The counts come with the recording, not with the call that failed. */
  assert_int_equal(sent_unrecorded, 0);
  assert_int_equal(sent, N);
  assert_int_equal(recorded_late, N);
  char attempts[160];
  snprintf(attempts, sizeof attempts,
           "SELECT count(*) FROM %s.cairnloop_delivery_jobs WHERE attempt = 1", S);
  assert_int_equal(pg_int(attempts), N);
  assert_int_equal(ct_log_count(&log, CL_LOG_INFO, "delivered jobs after reconnecting"), 1);
  cl_close(eng);
  ct_log_free(&log);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_trust_faults__only_the_first_call_after_a_restart_may_fail),
      cmocka_unit_test(test_trust_faults__outcomes_of_a_lost_connection_are_recorded_on_reconnect),
  };
  return cmocka_run_group_tests_name("trust_faults", tests, group_setup, group_teardown);
}
