/*
 * worker.c - the delivery lane: how fast `cairnloop work` processes drain
 * a queue.  A database of its own is seeded like the main one; each run
 * enqueues a fresh set of jobs with cl_bulk_trigger, starts 1 or 2 workers
 * (`--limit 1000`, with no notifier or the no-op Lua notifier of
 * bench/noop_notifier.lua) and polls the database until no job is left.
 * The configurations run interleaved, in a random order per round.  Uses
 * bench.c's helpers, cairnloop.h and posix_spawn.
 */
#include "bench.h"

#include "cairnloop.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* environ: <unistd.h> declares it under _GNU_SOURCE (the Makefile's). */

#define WORK_DB "cl_bench_work"
#define WORK_LIMIT "1000"
#define MAX_WORKERS 2
#define POLL_MS 5
/* A run fails when the queue has not shrunk for this long (a worker
 * stuck retrying an error, say), and in any case after RUN_TIMEOUT_MS. */
#define STALL_MS 10000.0
#define RUN_TIMEOUT_MS 120000.0

#define MAX_RUNS 8

typedef struct config {
  const char *notifier; /* "none" or "lua no-op" */
  int workers;
  bool retention;       /* workers prune finished jobs (1 s retention) as they deliver */
  double ms[MAX_RUNS];  /* wall time of each run */
  double cpu[MAX_RUNS]; /* workers' CPU, ms, of each run */
  double srv[MAX_RUNS]; /* the server's CPU, ms, of each run (-1: unknown) */
  int runs;
} config;

/* user + system (+ reaped children's, for the postmaster) of one process
 * from /proc/PID/stat, in ms; -1 if unreadable.  *ppid gets its parent. */
static double proc_cpu_ms(long pid, bool with_children, long *ppid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t got = fread(buf, 1, sizeof buf - 1, f);
  (void)fclose(f); /* read only */
  buf[got] = '\0';
  char *p = strrchr(buf, ')'); /* the command name may hold spaces */
  if (!p || !p[1] || !p[2]) return -1;
  /* After ") " and the state letter: ppid (field 1) ... cstime (field 14),
   * all integers; utime, stime, cutime and cstime are fields 11 to 14. */
  long field[15];
  char *q = p + 3;
  for (int k = 1; k < 15; k++) {
    char *end = NULL;
    field[k] = strtol(q, &end, 10);
    if (end == q) return -1;
    q = end;
  }
  long pp = field[1], ut = field[11], st = field[12], cut = field[13], cst = field[14];
  if (ppid) *ppid = pp;
  double ticks = (double)ut + (double)st + (with_children ? (double)(cut + cst) : 0);
  return ticks * 1000.0 / (double)sysconf(_SC_CLK_TCK);
}

/* CPU the whole server has used so far: the postmaster, its live children
 * (backends, checkpointer, WAL writer, autovacuum) and the children it has
 * reaped (backends of workers that exited).  -1 when the server is not a
 * process of this machine we can read. */
static double server_cpu_ms(long postmaster) {
  if (postmaster <= 0) return -1;
  double total = proc_cpu_ms(postmaster, true, NULL);
  if (total < 0) return -1;
  DIR *d = opendir("/proc");
  if (!d) return -1;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    char *end;
    long pid = strtol(e->d_name, &end, 10);
    if (*end || pid <= 0 || pid == postmaster) continue;
    long pp = 0;
    double ms = proc_cpu_ms(pid, false, &pp);
    if (ms >= 0 && pp == postmaster) total += ms;
  }
  closedir(d);
  return total;
}

/* The postmaster: the parent of our own backend. */
static long find_postmaster(PGconn *c) {
  PGresult *r = PQexec(c, "SELECT pg_backend_pid()");
  long backend = PQresultStatus(r) == PGRES_TUPLES_OK ? strtol(PQgetvalue(r, 0, 0), NULL, 10) : 0;
  PQclear(r);
  long pp = 0;
  if (backend <= 0 || proc_cpu_ms(backend, false, &pp) < 0) return 0;
  return pp;
}

static pid_t spawn_worker(const bench_paths *p, const char *conninfo, const char *policy,
                          bool retention, const char *log_path) {
  char *argv[24];
  int a = 0;
  argv[a++] = (char *)p->cli;
  argv[a++] = "work";
  argv[a++] = "--limit";
  argv[a++] = WORK_LIMIT;
  argv[a++] = "--database";
  argv[a++] = (char *)conninfo;
  argv[a++] = "--schema";
  argv[a++] = BENCH_SCHEMA;
  if (policy) {
    argv[a++] = "--policy";
    argv[a++] = (char *)policy;
  }
  if (retention) {
    /* Every finished job older than a second is deleted, in passes every
     * 100 ms: the jobs of the earlier runs are pruned while this one is
     * delivered, beside the claims and completions. */
    argv[a++] = "--retention-completed";
    argv[a++] = "1s";
    argv[a++] = "--retention-failed";
    argv[a++] = "1s";
    argv[a++] = "--retention-interval-ms";
    argv[a++] = "100";
  }
  argv[a] = NULL;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, p->cli, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    fprintf(stderr, "bench: spawn %s work: %s\n", p->cli, strerror(rc));
    return -1;
  }
  return pid;
}

/* Jobs not yet finished (the due and the executing ones): the jobs
 * table's partial index of unfinished jobs answers it, so polling does not
 * scan the table under the workers. */
static long remaining(PGconn *c) {
  PGresult *r = PQexec(c, "SELECT count(*) FROM " BENCH_SCHEMA ".cairnloop_delivery_jobs"
                          " WHERE completed_at IS NULL AND discarded_at IS NULL");
  long n = -1;
  if (PQresultStatus(r) == PGRES_TUPLES_OK) n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
  else bench_pg_error(c, r, "poll the queue");
  PQclear(r);
  return n;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Enqueues `njobs` jobs (cohorts of at most 10,000 from the pool) under a
 * fresh template id. */
static bool enqueue(cl_engine *eng, const int64_t *pool, size_t njobs, const char *tid) {
  for (size_t off = 0; off < njobs; off += 10000) {
    size_t n = njobs - off < 10000 ? njobs - off : 10000;
    cl_bulk_opts o = {0};
    o.template_id = tid;
    o.rendered_body = BENCH_BODY;
    cl_bulk_result res;
    cl_error err;
    cl_status st = cl_bulk_trigger(eng, pool + off, n, &o, &res, &err);
    cl_bulk_result_clear(&res);
    if (st != CL_OK) {
      fprintf(stderr, "bench: enqueue: %s: %s\n", cl_status_name(st), err.message);
      return false;
    }
  }
  return true;
}

/* Every job of the run completed on its first attempt (or, with
 * retention, already deleted as finished), every message marked sent. */
static bool verify_run(PGconn *c, const char *tid, size_t njobs) {
  char n[24];
  snprintf(n, sizeof n, "%zu", njobs);
  const char *v2[] = {tid, n};
  PGresult *r = PQexecParams(
      c,
      "SELECT (SELECT $2::bigint - count(*) FROM " BENCH_SCHEMA ".cairnloop_delivery_jobs j"
      "        JOIN " BENCH_SCHEMA ".cairnloop_messages m ON m.id = j.message_id"
      "        WHERE m.metadata->>'template_id' = $1"
      "          AND NOT (j.state = 'completed' AND j.attempt = 1)),"
      "       (SELECT count(*) FROM " BENCH_SCHEMA ".cairnloop_messages"
      "        WHERE metadata->>'template_id' = $1 AND metadata->>'status' = 'sent')",
      2, NULL, v2, NULL, NULL, 0);
  bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
  if (!ok) bench_pg_error(c, r, "verify delivery");
  long jobs = ok ? strtol(PQgetvalue(r, 0, 0), NULL, 10) : -1;
  long msgs = ok ? strtol(PQgetvalue(r, 0, 1), NULL, 10) : -1;
  PQclear(r);
  if (jobs != (long)njobs || msgs != (long)njobs) {
    fprintf(stderr, "bench: delivery run %s: %ld/%zu jobs completed once, %ld messages sent\n", tid,
            jobs, njobs, msgs);
    return false;
  }
  return true;
}

/* One run: enqueue, start the workers, poll until the queue is empty, stop
 * them.  Returns the wall time in ms (-1 on failure); *cpu_ms gets the
 * workers' CPU time. */
static double run_once(const bench_paths *p, const char *conninfo, cl_engine *eng, PGconn *admin,
                       const int64_t *pool, size_t njobs, const config *cf, int seq,
                       const char *log_path, long postmaster, double *cpu_ms, double *srv_ms) {
  char tid[64], policy[512];
  snprintf(tid, sizeof tid, "work-%d", seq);
  snprintf(policy, sizeof policy, "%s/noop_notifier.lua", p->bench_dir);
  if (!enqueue(eng, pool, njobs, tid)) return -1;
  /* Untimed: what the previous run left (dead row versions, dirty
   * buffers) is cleaned up as autovacuum and the checkpointer would. */
  bench_exec(admin, "VACUUM ANALYZE " BENCH_SCHEMA ".cairnloop_delivery_jobs, " BENCH_SCHEMA
                    ".cairnloop_messages");
  bench_exec(admin, "CHECKPOINT");

  pid_t pids[MAX_WORKERS];
  double srv0 = server_cpu_ms(postmaster);
  double t0 = bench_now_ms(), t1 = 0;
  for (int w = 0; w < cf->workers; w++) {
    pids[w] = spawn_worker(p, conninfo, strcmp(cf->notifier, "none") == 0 ? NULL : policy,
                           cf->retention, log_path);
    if (pids[w] < 0) return -1;
  }
  long left = -1, last = -1;
  double progress = t0;
  for (;;) {
    left = remaining(admin);
    t1 = bench_now_ms();
    if (left != last) {
      last = left;
      progress = t1;
    }
    if (left <= 0 || t1 - t0 > RUN_TIMEOUT_MS || t1 - progress > STALL_MS) break;
    sleep_ms(POLL_MS);
  }
  double cpu = 0;
  bool exited_ok = true;
  for (int w = 0; w < cf->workers; w++) {
    kill(pids[w], SIGTERM);
    int status = 0;
    struct rusage ru;
    while (wait4(pids[w], &status, 0, &ru) < 0 && errno == EINTR) {
    }
    cpu += (double)ru.ru_utime.tv_sec * 1e3 + (double)ru.ru_utime.tv_usec / 1e3 +
           (double)ru.ru_stime.tv_sec * 1e3 + (double)ru.ru_stime.tv_usec / 1e3;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) exited_ok = false;
  }
  /* The workers' backends exit after them; the postmaster then adds their
   * CPU to its own children's time.  Give it a moment. */
  sleep_ms(50);
  double srv1 = server_cpu_ms(postmaster);
  *srv_ms = srv0 >= 0 && srv1 >= 0 ? srv1 - srv0 : -1;
  *cpu_ms = cpu;
  if (left != 0) {
    fprintf(stderr,
            "bench: delivery run %s: %ld jobs left after %.0f ms, none delivered in the "
            "last %.0f s (worker log: %s)\n",
            tid, left, t1 - t0, (t1 - progress) / 1000, log_path);
    return -1;
  }
  if (!exited_ok) {
    fprintf(stderr, "bench: a worker of run %s did not exit cleanly (log: %s)\n", tid, log_path);
    return -1;
  }
  if (!verify_run(admin, tid, njobs)) return -1;
  return t1 - t0;
}

bool bench_worker_report(const char *base, const bench_paths *p, bool quick) {
  size_t njobs = quick ? 2000 : 20000;
  int rounds = quick ? 1 : 5;
  double t_phase = bench_now_ms();

  bench_create_database(base, WORK_DB);
  char *conninfo = bench_conninfo(base, WORK_DB);
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.database = conninfo;
  cfg.schema = BENCH_SCHEMA;
  cfg.max_batch_size = 10000;
  cl_engine *eng = NULL;
  cl_error err;
  if (cl_open(&eng, &cfg, &err) != CL_OK || cl_migrate(eng, &err) != CL_OK) {
    fprintf(stderr, "bench: work engine: %s\n", err.message);
    exit(1);
  }
  PGconn *admin = bench_connect(conninfo);
  size_t npool = 0;
  int64_t *pool = bench_seed(admin, &npool);
  if (npool < njobs) {
    fprintf(stderr, "bench: only %zu conversations for %zu jobs\n", npool, njobs);
    exit(1);
  }
  long postmaster = find_postmaster(admin);
  char log_path[] = "/tmp/cl-bench-work-XXXXXX.log";
  int lfd = mkstemps(log_path, 4);
  if (lfd >= 0) close(lfd);

  config cfs[] = {
      {"none", 1, false, {0}, {0}, {0}, 0},      {"none", 2, false, {0}, {0}, {0}, 0},
      {"lua no-op", 1, false, {0}, {0}, {0}, 0}, {"lua no-op", 2, false, {0}, {0}, {0}, 0},
      {"lua no-op", 1, true, {0}, {0}, {0}, 0},  {"lua no-op", 2, true, {0}, {0}, {0}, 0}};
  enum { NCF = sizeof cfs / sizeof cfs[0] };
  int ncf = NCF;
  int seq = 0;
  bool failed = false;
  for (int r = 0; r < rounds && !failed; r++) {
    int order[NCF];
    for (int i = 0; i < ncf; i++) order[i] = i;
    for (int i = ncf - 1; i > 0; i--) {
      int j = (int)(bench_rng() % (uint64_t)(i + 1));
      int t = order[i];
      order[i] = order[j];
      order[j] = t;
    }
    for (int k = 0; k < ncf && !failed; k++) {
      config *cf = &cfs[order[k]];
      double cpu = 0, srv = -1;
      double ms = run_once(p, conninfo, eng, admin, pool, njobs, cf, ++seq, log_path, postmaster,
                           &cpu, &srv);
      if (ms < 0) {
        failed = true;
        break;
      }
      cf->ms[cf->runs] = ms;
      cf->cpu[cf->runs] = cpu;
      cf->srv[cf->runs] = srv;
      cf->runs++;
    }
  }

  char title[160], nj[16];
  bench_fmt_int(nj, sizeof nj, (double)njobs);
  snprintf(title, sizeof title,
           "delivery: `cairnloop work --limit " WORK_LIMIT "` draining %s jobs (median of %d runs)",
           nj, rounds);
  void *t = bench_table(
      title,
      "notifier|workers|retention|runs|median s|jobs/s|range jobs/s|worker CPU ms per 1,000 jobs|server CPU ms per 1,000 jobs",
      "lrlrrrrrr");
  for (int i = 0; i < ncf; i++) {
    config *cf = &cfs[i];
    char w[8], runs[8], s[16], js[24], range[48], cpu[16];
    snprintf(w, sizeof w, "%d", cf->workers);
    snprintf(runs, sizeof runs, "%d", cf->runs);
    if (cf->runs == 0) {
      const char *row[] = {cf->notifier, w, cf->retention ? "on" : "off", runs, "failed", "", "",
                           "",           ""};
      bench_table_row(t, row);
      continue;
    }
    double lo = cf->ms[0], hi = cf->ms[0];
    for (int k = 1; k < cf->runs; k++) {
      if (cf->ms[k] < lo) lo = cf->ms[k];
      if (cf->ms[k] > hi) hi = cf->ms[k];
    }
    double med = bench_median(cf->ms, (size_t)cf->runs);
    double cpu_med = bench_median(cf->cpu, (size_t)cf->runs);
    double srv_med = bench_median(cf->srv, (size_t)cf->runs);
    char srv[16];
    if (srv_med < 0) snprintf(srv, sizeof srv, "-");
    else snprintf(srv, sizeof srv, "%.0f", srv_med / ((double)njobs / 1000));
    snprintf(s, sizeof s, "%.2f", med / 1000);
    bench_fmt_int(js, sizeof js, (double)njobs / (med / 1000));
    char a[24], b[24];
    bench_fmt_int(a, sizeof a, (double)njobs / (hi / 1000));
    bench_fmt_int(b, sizeof b, (double)njobs / (lo / 1000));
    snprintf(range, sizeof range, "%s-%s", a, b);
    snprintf(cpu, sizeof cpu, "%.1f", cpu_med / ((double)njobs / 1000));
    const char *row[] = {cf->notifier, w,  cf->retention ? "on" : "off", runs, s, js, range,
                         cpu,          srv};
    bench_table_row(t, row);
  }
  char note[1600];
  snprintf(note, sizeof note,
           "Each run: %s jobs enqueued by cl_bulk_trigger (untimed), VACUUM ANALYZE of jobs and "
           "messages and a CHECKPOINT (untimed), then the clock runs from starting the workers "
           "(process start-up, connecting and loading the policy included) until a poll every "
           "%d ms finds no job due or executing.  Every job is then checked completed on its "
           "first attempt and its message sent.  lua no-op: bench/noop_notifier.lua, a notifier "
           "returning true at once.  retention on: the workers also delete "
           "finished jobs older than 1 s every 100 ms (--retention-completed 1s "
           "--retention-interval-ms 100): the earlier runs' jobs go while this run is "
           "delivered.  Worker CPU: user + system time of the worker processes "
           "(wait4).  Server CPU: what the whole PostgreSQL server (every process, /proc) used "
           "from start to stop, the poll included.  Workers and server share this machine's "
           "2 CPUs.%s",
           nj, POLL_MS, failed ? "  A run FAILED: see the messages above." : "");
  bench_table_note(t, note);
  printf("delivery: %d runs in %.1f s\n", seq, (bench_now_ms() - t_phase) / 1000);

  if (!failed) unlink(log_path);
  free(pool);
  PQfinish(admin);
  cl_close(eng);
  free(conninfo);
  return !failed;
}
