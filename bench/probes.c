/*
 * probes.c - what the bench measures besides call latency: the header
 * (machine, server settings), peak RSS of one 10,000-recipient bulk
 * (forked children, ru_maxrss; the C API, the Lua module, the ready-made
 * policy, the shapes), the telemetry emit path (cl__tel_on and
 * cl__tel_emit timed directly, with C and Lua handlers) and the server's
 * plans for the engine's statements (auto_explain on its own connection).
 * Uses bench.c's report helpers, hosts.c, shapes.c and the engine
 * internals (engine.h, telemetry.h).
 */
#include "bench.h"

#include "engine.h"
#include "telemetry.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* Header                                                               */
/* ------------------------------------------------------------------ */

static void file_field(const char *path, const char *key, char *out, size_t n) {
  out[0] = '\0';
  FILE *f = fopen(path, "r");
  if (!f) return;
  char line[512];
  size_t klen = strlen(key);
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, key, klen) != 0) continue;
    char *v = strchr(line, ':');
    if (!v) continue;
    v++;
    while (*v == ' ' || *v == '\t') v++;
    v[strcspn(v, "\n")] = '\0';
    snprintf(out, n, "%s", v);
    break;
  }
  (void)fclose(f); /* read only */
}

void bench_loadavg(char *out, size_t n) {
  out[0] = '\0';
  FILE *f = fopen("/proc/loadavg", "r");
  if (!f) return;
  char line[256];
  if (fgets(line, sizeof line, f)) {
    char *p = line, *end = NULL;
    double avg[3];
    int got = 0;
    for (; got < 3; got++, p = end) {
      avg[got] = strtod(p, &end);
      if (end == p) break;
    }
    if (got == 3) snprintf(out, n, "%.2f %.2f %.2f", avg[0], avg[1], avg[2]);
  }
  (void)fclose(f); /* read only */
}

void bench_machine(char *out, size_t n) {
  char cpu[256], mem[64];
  file_field("/proc/cpuinfo", "model name", cpu, sizeof cpu);
  file_field("/proc/meminfo", "MemTotal", mem, sizeof mem);
  double gib = strtod(mem, NULL) / (1024.0 * 1024.0);
  struct utsname u;
  if (uname(&u) != 0) memset(&u, 0, sizeof u);
  char load[64];
  bench_loadavg(load, sizeof load);
  snprintf(out, n,
           "machine: %ld CPUs (nproc), %s, %.1f GiB RAM, %s %s %s; load average at "
           "the start %s",
           sysconf(_SC_NPROCESSORS_ONLN), cpu[0] ? cpu : "unknown CPU", gib, u.sysname, u.release,
           u.machine, load);
}

void bench_server(PGconn *c, char *out, size_t n) {
  static const char sql[] =
      "SELECT version(), string_agg(s || '=' || current_setting(s), ' ' ORDER BY o)"
      " FROM unnest(ARRAY['fsync', 'synchronous_commit', 'full_page_writes', 'wal_sync_method',"
      "  'shared_buffers', 'wal_level', 'wal_buffers', 'max_wal_size', 'checkpoint_timeout',"
      "  'commit_delay', 'wal_compression', 'jit', 'work_mem', 'autovacuum'])"
      "  WITH ORDINALITY AS t(s, o)";
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) == PGRES_TUPLES_OK) {
    char ver[256];
    snprintf(ver, sizeof ver, "%s", PQgetvalue(r, 0, 0));
    char *comma = strstr(ver, " on ");
    if (comma) *comma = '\0'; /* "PostgreSQL 15.x (Debian ...)" is enough */
    snprintf(out, n, "postgres: %s; %s", ver, PQgetvalue(r, 0, 1));
  } else {
    snprintf(out, n, "postgres: (settings unavailable)");
  }
  PQclear(r);
}

/* ------------------------------------------------------------------ */
/* Peak RSS of one bulk                                                 */
/* ------------------------------------------------------------------ */

typedef struct rss_result {
  char name[32];
  long before_kib, after_kib;
  bool ok;
} rss_result;

static rss_result rss_results[10];
static int nrss;
static size_t rss_n;

static long maxrss_kib(void) {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss; /* KiB on Linux */
}

/* In the child: one contender, one warm-up call (statements prepared,
 * buffers grown), then the measured call.  Resetting the peak first
 * (clear_refs 5) keeps the parent's history out of the baseline. */
static void rss_child(int fd, const bench_paths *p, const char *conninfo, const char *schema,
                      const char *name, const int64_t *pool, size_t npool, size_t n) {
  rss_result res = {{0}, 0, 0, false};
  snprintf(res.name, sizeof res.name, "%s", name);
  void *ctx = NULL;
  cl_engine *eng = NULL;
  shape *sh = NULL;
  int (*bulk)(void *, bulk_call *, ids_out *) = NULL;
  void (*prepare)(void *, const bulk_call *) = NULL;
  void (*finish)(void *, bulk_call *, ids_out *) = NULL;
  if (strcmp(name, "engine-lua") == 0) {
    lua_host *h = lua_host_open(p, conninfo, schema, (int)n);
    if (!h) _exit(1);
    ctx = h;
    bulk = lua_host_bulk;
    prepare = lua_host_prepare;
    finish = lua_host_finish;
  } else if (strcmp(name, "engine+policy") == 0) {
    if (!(eng = policy_engine_open(p, conninfo, schema, (int)n, "ready"))) _exit(1);
    ctx = eng;
    bulk = bench_engine_bulk;
  } else if (strcmp(name, "engine-c") == 0) {
    cl_config cfg;
    cl_config_init(&cfg);
    cfg.database = conninfo;
    cfg.schema = schema;
    cfg.max_batch_size = (int)n;
    cl_error err;
    if (cl_open(&eng, &cfg, &err) != CL_OK) _exit(1);
    ctx = eng;
    bulk = bench_engine_bulk;
  } else {
    if (!(sh = shape_open(conninfo, schema, name))) _exit(1);
    ctx = sh;
    bulk = shape_bulk;
  }
  int64_t *ids = malloc(n * sizeof *ids), *copy = malloc(npool * sizeof *copy);
  ids_out out = {malloc(n * sizeof(int64_t)), malloc(n * sizeof(int64_t))};
  memcpy(copy, pool, npool * sizeof *copy);
  /* A fixed-seed shuffle: distinct ids, different for each child. */
  uint64_t x = 0x243f6a8885a308d3ull ^ (uint64_t)getpid();
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    size_t j = i + (size_t)(x % (npool - i));
    int64_t t = copy[i];
    copy[i] = copy[j];
    copy[j] = t;
    ids[i] = copy[i];
  }
  memset(out.message_ids, 0, n * sizeof(int64_t)); /* the caller's storage is resident */
  memset(out.job_ids, 0, n * sizeof(int64_t));
  char tid[64];
  snprintf(tid, sizeof tid, "bench-rss-warm-%s-%d", name, (int)getpid());
  bulk_call warm = {ids + n - 25, 25, tid, BENCH_BODY, {0}, (int)n};
  if (prepare) prepare(ctx, &warm);
  if (bulk(ctx, &warm, &out) != 0) _exit(1);
  if (finish) finish(ctx, &warm, &out);
  int cr = open("/proc/self/clear_refs", O_WRONLY);
  if (cr >= 0) {
    if (write(cr, "5", 1) != 1) { /* not resettable: the baseline may be high */
    }
    close(cr);
  }
  snprintf(tid, sizeof tid, "bench-rss-%s-%d", name, (int)getpid());
  bulk_call call = {ids, n, tid, BENCH_BODY, {0}, (int)n};
  /* The Lua list of ids is the caller's data, like the C array above. */
  if (prepare) prepare(ctx, &call);
  res.before_kib = maxrss_kib();
  res.ok = bulk(ctx, &call, &out) == 0; /* a Lua result stays referenced until finish */
  res.after_kib = maxrss_kib();
  if (write(fd, &res, sizeof res) != (ssize_t)sizeof res) _exit(1);
  /* No cleanup: _exit keeps the parent's connections (shared sockets) untouched. */
  _exit(0);
}

void bench_rss_report(const bench_paths *p, const char *conninfo, const char *schema,
                      const int64_t *pool, size_t npool, size_t n) {
  static const char *const names[] = {"engine-c",   "engine-lua", "engine+policy", "cte",
                                      "cte-binary", "copy",       "pipeline",      "per-row"};
  rss_n = n;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    int fd[2];
    if (pipe(fd) != 0) return;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
      close(fd[0]);
      rss_child(fd[1], p, conninfo, schema, names[i], pool, npool, n);
    }
    close(fd[1]);
    rss_result r = {{0}, 0, 0, false};
    ssize_t got = pid > 0 ? read(fd[0], &r, sizeof r) : -1;
    close(fd[0]);
    int status = 0;
    if (pid > 0) waitpid(pid, &status, 0);
    if (got != (ssize_t)sizeof r) {
      r.ok = false;
      snprintf(r.name, sizeof r.name, "%s", names[i]);
    }
    rss_results[nrss++] = r;
  }
}

void bench_rss_table(long cli_peak_kib) {
  char title[128], nn[16];
  bench_fmt_int(nn, sizeof nn, (double)rss_n);
  snprintf(title, sizeof title, "peak RSS of one %s-recipient bulk (forked child, ru_maxrss)", nn);
  void *t = bench_table(title, "contender|RSS before KiB|peak after KiB|delta KiB", "lrrr");
  for (int i = 0; i < nrss; i++) {
    char a[24], b[24], d[24];
    const rss_result *r = &rss_results[i];
    if (!r->ok) {
      const char *row[] = {r->name, "failed", "", ""};
      bench_table_row(t, row);
      if (strcmp(r->name, "engine-c") == 0 || strcmp(r->name, "engine-lua") == 0) {
        bench_target(strcmp(r->name, "engine-c") == 0
                         ? "C API: one 10,000-recipient bulk adds < 16 MiB (peak RSS)"
                         : "Lua module: one 10,000-recipient bulk adds < 16 MiB (peak RSS)",
                     "failed", false);
      }
      continue;
    }
    long delta = r->after_kib - r->before_kib;
    bench_fmt_int(a, sizeof a, (double)r->before_kib);
    bench_fmt_int(b, sizeof b, (double)r->after_kib);
    bench_fmt_int(d, sizeof d, (double)delta);
    const char *row[] = {r->name, a, b, d};
    bench_table_row(t, row);
    if (strcmp(r->name, "engine-c") == 0 || strcmp(r->name, "engine-lua") == 0) {
      char what[96], got[64];
      snprintf(what, sizeof what, "%s: one 10,000-recipient bulk adds < 16 MiB (peak RSS)",
               strcmp(r->name, "engine-c") == 0 ? "C API" : "Lua module");
      snprintf(got, sizeof got, "%.1f MiB", (double)delta / 1024.0);
      bench_target(what, got, delta < 16 * 1024);
    }
  }
  if (cli_peak_kib > 0) {
    char b[24];
    bench_fmt_int(b, sizeof b, (double)cli_peak_kib);
    const char *row[] = {"cli (whole process)", "", b, ""};
    bench_table_row(t, row);
  }
  bench_table_note(t, "Each child opens its own connection, runs one 25-recipient warm-up "
                      "call, resets its peak (/proc/self/clear_refs 5), then measures "
                      "ru_maxrss around the call: client memory only (libpq buffers, "
                      "parameters, results; for engine-lua the Lua result table too, alive "
                      "at the peak), the server's is not included.  engine+policy: the "
                      "ready-made policy's state included.  cli: the largest ru_maxrss "
                      "(wait4) of a `cairnloop bulk` process over the N = 10,000 calls, the "
                      "whole process from exec on.");
}

/* ------------------------------------------------------------------ */
/* Telemetry emit path                                                  */
/* ------------------------------------------------------------------ */

static volatile uint64_t handler_calls;

static void noop_handler(const char *const *event, const cl_measurements *m, const cl_metadata *md,
                         void *config) {
  (void)event;
  (void)m;
  (void)md;
  (void)config;
  handler_calls++;
}

/* The memory clobber makes every iteration reload the handler count, as
 * an emit site between two engine statements does. */
#define BARRIER() __asm__ __volatile__("" ::: "memory")

static double ns_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median over 7 runs of `iters` iterations, ns per iteration. */
#define MEASURE(out, iters, body)                              \
  do {                                                         \
    double runs_[7];                                           \
    const long n_ = (iters); /* a whole count of iterations */ \
    for (int r_ = 0; r_ < 7; r_++) {                           \
      double t0_ = ns_now();                                   \
      for (long i_ = 0; i_ < n_; i_++) {                       \
        body;                                                  \
        BARRIER();                                             \
      }                                                        \
      runs_[r_] = (ns_now() - t0_) / (double)n_;               \
    }                                                          \
    qsort(runs_, 7, sizeof runs_[0], cmp_d);                   \
    (out) = runs_[3];                                          \
  } while (0)

/* The engine's span-stop emit (outbound.c emit_stop): checks for a
 * listener, reads the clock, builds the maps, emits. */
static inline void span_stop(cl__telemetry *t, int64_t t0) {
  if (!cl__tel_on(t, CL__EV_TRIGGER_STOP)) return;
  int64_t now = cl__monotonic_ns();
  cl_kv m[] = {{"duration", CL_VALUE_INT, now - t0, NULL},
               {"monotonic_time", CL_VALUE_INT, now, NULL}};
  cl_kv md[] = {{"outcome", CL_VALUE_STRING, 0, "triggered"}};
  cl__tel_emit(t, CL__EV_TRIGGER_STOP, m, 2, md, 1);
}

void bench_telemetry_report(cl_engine *eng, cl_engine *lua_eng) {
  cl__telemetry *t = &eng->tel;
  const long iters = 2000000;
  static const cl_kv m[] = {{"duration", CL_VALUE_INT, 1234, NULL},
                            {"monotonic_time", CL_VALUE_INT, 5678, NULL}};
  static const cl_kv md[] = {{"outcome", CL_VALUE_STRING, 0, "triggered"}};
  int64_t t0 = cl__monotonic_ns();
  double guard0, emit0, span0, emit1, span1, clock1;

  /* Make sure nothing listens (the bench attached nothing). */
  MEASURE(guard0, iters * 10, if (cl__tel_on(t, CL__EV_TRIGGER_STOP)) handler_calls++);
  MEASURE(span0, iters * 10, span_stop(t, t0));
  MEASURE(emit0, iters, cl__tel_emit(t, CL__EV_TRIGGER_STOP, m, 2, md, 1));

  cl_error err;
  if (cl_attach(eng, "bench-noop", "cairnloop.outbound.triggered.stop", noop_handler, NULL, NULL,
                &err) != CL_OK) {
    fprintf(stderr, "bench: attach: %s\n", err.message);
    return;
  }
  uint64_t before = handler_calls;
  MEASURE(emit1, iters, cl__tel_emit(t, CL__EV_TRIGGER_STOP, m, 2, md, 1));
  MEASURE(span1, iters, span_stop(t, t0));
  MEASURE(clock1, iters, handler_calls += (uint64_t)cl__monotonic_ns() & 1);
  uint64_t calls = handler_calls - before;
  cl_detach(eng, "bench-noop");

  /* A Lua handler: the no-op policy's, in the engine's policy state.  Each
   * emit builds the event, measurement and metadata tables and calls it
   * under the hook budget. */
  double lua1 = -1;
  if (lua_eng && cl__tel_on(&lua_eng->tel, CL__EV_TRIGGER_STOP))
    MEASURE(lua1, iters / 20, span_stop(&lua_eng->tel, t0));

  void *tab = bench_table("telemetry emit path (ns per emit, median of 7 runs)",
                          "path|handlers|ns per emit", "lrr");
  struct {
    const char *what;
    const char *h;
    double ns;
  } rows[] = {
      {"cl__tel_on check (the guard at every emit site)", "0", guard0},
      {"engine span stop: guard, clock read, maps, emit", "0", span0},
      {"cl__tel_emit called unguarded", "0", emit0},
      {"cl__tel_emit, prebuilt maps", "1 no-op", emit1},
      {"engine span stop: guard, clock read, maps, emit", "1 no-op", span1},
      {"cl__monotonic_ns alone (the span's clock read)", "", clock1},
      {"engine span stop, a no-op Lua handler (policy state)", "1 Lua", lua1},
  };
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    char ns[32];
    if (rows[i].ns < 0) continue;
    snprintf(ns, sizeof ns, "%.2f", rows[i].ns);
    const char *row[] = {rows[i].what, rows[i].h, ns};
    bench_table_row(tab, row);
  }
  char note[512];
  snprintf(note, sizeof note,
           "Timed directly (telemetry.h), not through cl_trigger, whose cost is the database's; "
           "the C handler ran %" PRIu64 " times.  A bulk with handlers attached emits 2N + 2 "
           "such events (N per-recipient trigger starts and stops), a trigger 2.",
           calls);
  bench_table_note(tab, note);
  char got[64];
  snprintf(got, sizeof got, "%.2f ns", span0);
  bench_target("telemetry emit with no handler < 20 ns (engine span stop)", got, span0 < 20);
}

/* ------------------------------------------------------------------ */
/* Plans: auto_explain on the engine's own connection                   */
/* ------------------------------------------------------------------ */

typedef struct capture {
  char *p;
  size_t len, cap;
} capture;

static void capture_notice(void *arg, const char *msg) {
  capture *c = arg;
  size_t n = strlen(msg);
  if (c->len + n + 1 > c->cap) {
    size_t cap = c->cap ? c->cap * 2 : 65536;
    while (cap < c->len + n + 1) cap *= 2;
    char *p = realloc(c->p, cap);
    if (!p) return;
    c->p = p;
    c->cap = cap;
  }
  memcpy(c->p + c->len, msg, n + 1);
  c->len += n;
}

static bool exec_all(PGconn *c, const char *const *sqls, size_t n) {
  for (size_t i = 0; i < n; i++) {
    PGresult *r = PQexec(c, sqls[i]);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!ok) bench_pg_error(c, r, sqls[i]);
    PQclear(r);
    if (!ok) return false;
  }
  return true;
}

static const char *const EXPLAIN_ON[] = {
    "LOAD 'auto_explain'",
    "SET auto_explain.log_min_duration = 0",
    "SET auto_explain.log_analyze = on",
    "SET auto_explain.log_buffers = on",
    "SET auto_explain.log_triggers = on",
    "SET auto_explain.log_wal = on",
    "SET auto_explain.log_level = notice",
    "SET client_min_messages = notice",
};
static const char *const EXPLAIN_OFF[] = {
    "SET auto_explain.log_min_duration = -1",
    "RESET client_min_messages",
};

/* Runs `fn` once with auto_explain on `c`, appending the plans to `f`. */
static void explained(FILE *f, PGconn *c, const char *title,
                      int (*fn)(void *, bulk_call *, ids_out *), void *ctx, bulk_call *call,
                      ids_out *out) {
  capture cap = {0};
  if (!exec_all(c, EXPLAIN_ON, sizeof EXPLAIN_ON / sizeof EXPLAIN_ON[0])) return;
  PQnoticeProcessor prev = PQsetNoticeProcessor(c, capture_notice, &cap);
  double t0 = bench_now_ms();
  int rc = fn(ctx, call, out);
  double ms = bench_now_ms() - t0;
  PQsetNoticeProcessor(c, prev, NULL);
  exec_all(c, EXPLAIN_OFF, sizeof EXPLAIN_OFF / sizeof EXPLAIN_OFF[0]);
  fprintf(f, "==== %s: %s, %.1f ms with instrumentation\n\n%s\n", title, rc == 0 ? "ok" : "FAILED",
          ms, cap.p ? cap.p : "(no plan captured)\n");
  free(cap.p);
}

static int trigger_adapter(void *ctx, bulk_call *call, ids_out *out) {
  trigger_call t = {call->ids[0], call->template_id, call->body};
  return bench_engine_trigger(ctx, &t, &out->message_ids[0], &out->job_ids[0]);
}

void bench_explain(cl_engine *eng, shape *ceiling, const int64_t *pool, size_t npool, size_t n,
                   const char *path) {
  FILE *f = fopen(path, "w");
  if (!f) {
    perror(path);
    return;
  }
  PGconn *c = cl__db_conn(eng);
  fprintf(f,
          "Plans of one %zu-recipient bulk, as the server ran them (auto_explain with "
          "ANALYZE, BUFFERS, WAL, triggers),\nafter the whole benchmark ran on the same "
          "connections: the engine's statements are in whatever\nplan-cache state "
          "(custom or generic) the run left them.\n\n",
          n);

  /* The plan-cache state of the engine's prepared statements. */
  PGresult *r = PQexec(c, "SELECT name, generic_plans, custom_plans FROM pg_prepared_statements"
                          " ORDER BY name");
  char summary[1024] = "engine prepared statements (generic/custom plans so far):";
  if (PQresultStatus(r) == PGRES_TUPLES_OK) {
    fprintf(f, "engine prepared statements: name generic_plans custom_plans\n");
    for (int i = 0; i < PQntuples(r); i++) {
      fprintf(f, "  %s %s %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2));
      char part[128];
      snprintf(part, sizeof part, " %s %s/%s", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
               PQgetvalue(r, i, 2));
      strncat(summary, part, sizeof summary - strlen(summary) - 1);
    }
    fputc('\n', f);
  }
  PQclear(r);

  int64_t *ids = malloc(n * sizeof *ids);
  ids_out out = {malloc(n * sizeof(int64_t)), malloc(n * sizeof(int64_t))};
  /* Every n-th id: distinct, spread over the table. */
  for (size_t i = 0; i < n; i++) ids[i] = pool[(i * 2 + 1) % npool];
  char tid[64];
  snprintf(tid, sizeof tid, "bench-explain-engine-%d", (int)getpid());
  bulk_call call = {ids, n, tid, BENCH_BODY, {0}, (int)n};
  explained(f, c, "engine-c cl_bulk_trigger", bench_engine_bulk, eng, &call, &out);
  if (ceiling) {
    snprintf(tid, sizeof tid, "bench-explain-cte-%d", (int)getpid());
    bulk_call c2 = {ids, n, tid, BENCH_BODY, {0}, (int)n};
    explained(f, shape_conn(ceiling), "ceiling shape cte", shape_bulk, ceiling, &c2, &out);
  }
  snprintf(tid, sizeof tid, "bench-explain-trigger-%d", (int)getpid());
  char content[128];
  snprintf(content, sizeof content, "Outbound message using template: %s", tid);
  bulk_call c3 = {ids, 1, tid, content, {0}, (int)n};
  explained(f, c, "engine-c cl_trigger", trigger_adapter, eng, &c3, &out);
  if (fclose(f) != 0) perror(path);
  free(ids);
  free(out.message_ids);
  free(out.job_ids);

  char line[1400];
  snprintf(line, sizeof line, "\n%s\nplans (auto_explain, ANALYZE) of one %zu-recipient bulk: %s",
           summary, n, path);
  bench_para(line);
}
