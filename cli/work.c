/*
 * work.c - `cairnloop work`: the delivery worker process.
 *
 * Delivers batches until SIGINT/SIGTERM, sleeping between them until jobs
 * are inserted (LISTEN/NOTIFY), the next scheduled job or expired lease is
 * due, or the 5 s fallback poll (with --no-prepared-statements, for a
 * transaction pooler, no LISTEN: the engine polls every second and says so
 * once in the log); rides out a database that goes away with
 * capped exponential backoff.  Shows progress on a terminal, periodic
 * counts otherwise, and prints the totals as its result.  Uses the public
 * API (cl_work_batch, the stoppable batch, and cl_work_wait, the idle wait);
 * --metrics serves what it records through metrics.c.
 */
#include "cli.h"
#include "metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Longest idle sleep: a safety net under LISTEN/NOTIFY and the computed
 * next due time (a missed notification, clocks that disagree). */
#define POLL_MS 5000
/* Jobs per batch by default: large enough that the two round trips of a
 * batch are cheap per job, small enough that a stop hands back little. */
#define DEFAULT_LIMIT 500
/* Deliveries in flight by default (a notifier that calls cl.http.request). */
#define DEFAULT_CONCURRENCY 10
/* Reconnect backoff: doubles from the first to the last. */
#define RETRY_FIRST_MS 100
#define RETRY_MAX_MS 5000
/* Largest --backoff-base-ms: the engine caps every retry delay at an hour,
 * so a larger base would only make every retry wait the cap. */
#define BACKOFF_BASE_MAX_MS 3600000
/* Pause when jobs are due but none could be claimed (they are locked). */
#define SPIN_PAUSE_MS 50
/* Progress: redrawn this often on a terminal, printed this often otherwise. */
#define TTY_EVERY_MS 250
#define LOG_EVERY_MS 10000

/*
 * What the signal handler touches.  A handler cannot be given context, so
 * these are the process's own (the engine keeps no such state).  The pipe
 * wakes a worker sleeping in poll(): writing to it is async-signal-safe.
 */
static volatile sig_atomic_t stop_signal;
static int wake_pipe[2] = {-1, -1};

static void on_signal(int sig) {
  if (stop_signal) {
    /* Asked twice: leave now.  Jobs in flight are rescued after their lease. */
    if (signal(sig, SIG_DFL) == SIG_ERR || raise(sig) != 0) _exit(128 + sig);
    return;
  }
  stop_signal = sig;
  int saved = errno;
  ssize_t n = write(wake_pipe[1], "x", 1);
  (void)n; /* a full pipe already wakes the worker */
  errno = saved;
}

static int setup_signals(void) {
  if (pipe2(wake_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
    return cli_fail(CL_DB_ERROR, "work: cannot create a pipe: %s", strerror(errno));
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0; /* no SA_RESTART: an interrupted wait returns at once */
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  return 0;
}

static void drain_wake_pipe(void) {
  char buf[64];
  while (read(wake_pipe[0], buf, sizeof buf) > 0) {
  }
}

/* Sleeps up to ms, returning early on a stop signal. */
static void nap(int ms) {
  struct pollfd p = {.fd = wake_pipe[0], .events = POLLIN};
  if (!stop_signal) poll(&p, 1, ms);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------ */
/* Output                                                               */
/* ------------------------------------------------------------------ */

typedef struct worker {
  const cli_ctx *ctx;
  bool tty;            /* stderr is a terminal: a progress line is drawn */
  bool progress_shown; /* the progress line is on screen (no newline yet) */
  cl_work_stats total;
  cli_metrics *metrics; /* NULL without --metrics */
  int64_t last_report_ms;
  long long last_report_jobs;
} worker;

static long long jobs_of(const cl_work_stats *s) {
  return (long long)s->sent + s->failed + s->no_op;
}

/* The engine's log lines, in the format of the other commands; on a
 * terminal the progress line is wiped first so the two never interleave. */
static void log_line(void *ud, cl_log_level level, const char *line) {
  worker *w = ud;
  if (w->progress_shown) {
    fputs("\r\033[K", stderr);
    w->progress_shown = false;
  }
  fprintf(stderr, "cairnloop: [%s] %s\n", cl_log_level_name(level), line);
}

static void add_stats(cl_work_stats *t, const cl_work_stats *s) {
  t->sent += s->sent;
  t->failed += s->failed;
  t->no_op += s->no_op;
  t->retried += s->retried;
  t->discarded += s->discarded;
}

static void format_counts(char *buf, size_t n, const cl_work_stats *s) {
  snprintf(buf, n, "sent %d, failed %d, no_op %d, retried %d, discarded %d", s->sent, s->failed,
           s->no_op, s->retried, s->discarded);
}

/* Progress: a redrawn line on a terminal; elsewhere one log line every
 * LOG_EVERY_MS while jobs move (`force` prints regardless of the clock). */
static void progress(worker *w, bool force) {
  int64_t now = now_ms();
  int64_t every = w->tty ? TTY_EVERY_MS : LOG_EVERY_MS;
  long long jobs = jobs_of(&w->total);
  if (!force && now - w->last_report_ms < every) return;
  if (!w->tty && jobs == w->last_report_jobs) return;
  double secs = (double)(now - w->last_report_ms) / 1000.0;
  double rate = secs > 0 ? (double)(jobs - w->last_report_jobs) / secs : 0;
  char counts[160];
  format_counts(counts, sizeof counts, &w->total);
  if (w->tty) {
    fprintf(stderr, "\r\033[Kwork: %s (%.0f jobs/s)", counts, rate);
    w->progress_shown = true;
  } else {
    fprintf(stderr, "cairnloop: [info] work: %s (%.0f jobs/s)\n", counts, rate);
  }
  fflush(stderr);
  w->last_report_ms = now;
  w->last_report_jobs = jobs;
}

/* The command's result: the counts, as one line of text or JSON. */
static int print_result(const worker *w, const cl_work_stats *s) {
  if (w->ctx->json) {
    json_t *o = json_pack("{s:i, s:i, s:i, s:i, s:i}", "sent", s->sent, "failed", s->failed,
                          "no_op", s->no_op, "retried", s->retried, "discarded", s->discarded);
    if (!o) return cli_fail(CL_DB_ERROR, "work: out of memory");
    return cli_json_print(o);
  }
  char counts[160];
  format_counts(counts, sizeof counts, s);
  printf("%s\n", counts);
  return 0;
}

/* ------------------------------------------------------------------ */
/* The loop                                                             */
/* ------------------------------------------------------------------ */

/* One step of riding out a database outage: report it, sleep, double the
 * next delay.  With the delay capped, a long outage logs a line per
 * RETRY_MAX_MS. */
static void outage(cl_engine *eng, const cl_error *err, int *delay_ms) {
  if (*delay_ms == 0) *delay_ms = RETRY_FIRST_MS;
  cl_log(eng, CL_LOG_WARN, "work: %s: %s (retrying in %d ms)", cl_status_name(err->code),
         err->message, *delay_ms);
  nap(*delay_ms);
  *delay_ms = *delay_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : *delay_ms * 2;
}

static int run_loop(worker *w, cl_engine *eng, const cl_work_options *opts) {
  int delay_ms = 0; /* 0: connected; else the next reconnect delay */
  cl_wake why = CL_WAKE_TIMEOUT;
  cl_error err;
  while (!stop_signal) {
    cl_work_stats s;
    cl_batch_info b;
    cli_metrics_batch_begin(w->metrics);
    cl_status st = cl_work_run(eng, opts, &s, &b, &err);
    cli_metrics_batch_end(w->metrics, st == CL_OK, &s, &b);
    if (st == CL_DB_ERROR) {
      outage(eng, &err, &delay_ms);
      continue;
    }
    if (st != CL_OK) return cli_fail_status(st, &err);
    if (delay_ms) {
      cl_log(eng, CL_LOG_INFO, "work: database reachable again");
      delay_ms = 0;
    }
    add_stats(&w->total, &s);
    if (b.rescued) cl_log(eng, CL_LOG_INFO, "work: rescued %d jobs whose lease expired", b.rescued);
    if (b.released)
      cl_log(eng, CL_LOG_INFO, "work: handed back %d claimed jobs not yet started", b.released);
    progress(w, false);
    cli_metrics_refresh(w->metrics, eng, false);
    /* A full batch suggests more is due: go again without asking. */
    if (b.claimed == opts->limit) continue;
    /* Due jobs that could not be claimed are locked by someone else (a
     * claim about to commit, or a session holding row locks): pause
     * instead of asking again in a tight loop. */
    if (b.claimed == 0 && why == CL_WAKE_DUE) nap(SPIN_PAUSE_MS);
    /* Going idle: a terminal shows the counts as they now stand. */
    if (w->tty && jobs_of(&w->total) != w->last_report_jobs) progress(w, true);

    st = cl_work_wait(eng, POLL_MS, wake_pipe[0], &why, &err);
    if (st == CL_DB_ERROR) {
      outage(eng, &err, &delay_ms);
      continue;
    }
    if (st != CL_OK) return cli_fail_status(st, &err);
    if (why == CL_WAKE_FD) drain_wake_pipe();
  }
  return 0;
}

static int int_flag(const cli_ctx *ctx, enum cli_opt id, const char *name, int64_t min, int64_t max,
                    int64_t *out) {
  const char *text = cli_opt(ctx, id);
  return text ? cli_parse_i64(name, text, min, max, out) : 0;
}

/* A retention flag: a duration of at least 1 s, or "off" (-1: kept
 * forever); 0 (the engine's default) when absent. */
static int retention_flag(const cli_ctx *ctx, enum cli_opt id, const char *name, int64_t *out) {
  const char *text = cli_opt(ctx, id);
  *out = 0;
  if (!text) return 0;
  if (strcmp(text, "off") == 0) {
    *out = -1;
    return 0;
  }
  int rc = cli_parse_duration(name, text, out);
  if (rc == 0 && *out == 0)
    rc = cli_fail(CL_INVALID_ARGUMENT, "%s: at least 1s (or off to keep jobs)", name);
  return rc;
}

/* --rate: deliveries per second, a positive number up to a million
 * ("0.5" is one every two seconds). */
static int rate_flag(const char *text, double *out) {
  char *end;
  errno = 0;
  double v = strtod(text, &end);
  if (errno || end == text || *end || !(v > 0 && v <= 1e6))
    return cli_fail(CL_INVALID_ARGUMENT,
                    "--rate: a number of deliveries per second above 0 and at most 1000000, "
                    "got '%.32s'",
                    text);
  *out = v;
  return 0;
}

int cli_cmd_work(cli_ctx *ctx) {
  int64_t limit = DEFAULT_LIMIT, concurrency = DEFAULT_CONCURRENCY, max_attempts = 0, lease = 0,
          backoff = 0, keep_completed, keep_failed, prune_every = 0;
  int rc = int_flag(ctx, CLI_OPT_LIMIT, "--limit", 1, CL_WORK_MAX_LIMIT, &limit);
  if (rc == 0)
    rc = int_flag(ctx, CLI_OPT_CONCURRENCY, "--concurrency", 1, CL_WORK_MAX_CONCURRENCY,
                  &concurrency);
  double rate = 0;
  if (rc == 0 && cli_opt(ctx, CLI_OPT_RATE)) rc = rate_flag(cli_opt(ctx, CLI_OPT_RATE), &rate);
  if (rc == 0) rc = int_flag(ctx, CLI_OPT_MAX_ATTEMPTS, "--max-attempts", 1, 1000, &max_attempts);
  if (rc == 0) rc = int_flag(ctx, CLI_OPT_LEASE_SECONDS, "--lease-seconds", 1, 86400, &lease);
  if (rc == 0)
    rc = int_flag(ctx, CLI_OPT_BACKOFF_BASE_MS, "--backoff-base-ms", 1, BACKOFF_BASE_MAX_MS,
                  &backoff);
  if (rc == 0)
    rc = retention_flag(ctx, CLI_OPT_RETENTION_COMPLETED, "--retention-completed", &keep_completed);
  if (rc == 0)
    rc = retention_flag(ctx, CLI_OPT_RETENTION_FAILED, "--retention-failed", &keep_failed);
  if (rc == 0)
    rc = int_flag(ctx, CLI_OPT_RETENTION_INTERVAL_MS, "--retention-interval-ms", 10, 86400000,
                  &prune_every);
  if (rc != 0) return rc;
  bool once = cli_opt(ctx, CLI_OPT_ONCE) != NULL;
  const char *metrics_at = cli_opt(ctx, CLI_OPT_METRICS);
  if (once && metrics_at)
    return cli_fail(CL_INVALID_ARGUMENT, "--metrics serves a running worker, not --once");

  /* The redrawn line needs a terminal that understands "\033[K": not a
   * dumb one (TERM=dumb or unset), nor one whose user asked for plain
   * text (NO_COLOR, no-color.org). */
  const char *term = getenv("TERM"), *no_color = getenv("NO_COLOR");
  bool tty = isatty(STDERR_FILENO) == 1 && term && *term && strcmp(term, "dumb") != 0 &&
             !(no_color && *no_color);
  worker w = {.ctx = ctx, .tty = tty};
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.max_attempts = (int)max_attempts; /* 0: the engine's default */
  cfg.lease_seconds = (int)lease;
  cfg.backoff_base_ms = (int)backoff;               /* 0: the engine's default, 1000 ms */
  cfg.retention_completed_seconds = keep_completed; /* 0: the engine's default */
  cfg.retention_failed_seconds = keep_failed;
  cfg.retention_interval_ms = (int)prune_every; /* 0: the engine's default, 30 s */
  cfg.log = log_line;
  cfg.log_ud = &w;
  if (!once && (rc = setup_signals()) != 0) return rc;
  /* Listen before connecting: a port in use fails at once. */
  if (metrics_at && (rc = cli_metrics_start(metrics_at, &w.metrics)) != 0) return rc;

  cl_engine *eng;
  if ((rc = cli_open_config(ctx, &cfg, &eng)) != 0) {
    cli_metrics_stop(w.metrics);
    return rc;
  }
  if ((rc = cli_metrics_attach(w.metrics, eng)) != 0) {
    cl_close(eng);
    cli_metrics_stop(w.metrics);
    return rc;
  }

  cl_work_options opts = {
      .limit = (int)limit, .concurrency = (int)concurrency, .rate = rate, .stop = &stop_signal};
  if (once) {
    cl_work_stats s;
    cl_error err;
    cl_status st = cl_work_run(eng, &opts, &s, NULL, &err);
    rc = st == CL_OK ? print_result(&w, &s) : cli_fail_status(st, &err);
    cl_close(eng);
    return rc;
  }

  w.last_report_ms = now_ms();
  cli_metrics_refresh(w.metrics, eng, true);
  rc = run_loop(&w, eng, &opts);
  if (w.progress_shown) {
    fputs("\n", stderr);
    w.progress_shown = false;
  }
  if (rc == 0) {
    if (stop_signal)
      cl_log(eng, CL_LOG_INFO, "work: stopped by %s", stop_signal == SIGINT ? "SIGINT" : "SIGTERM");
    rc = print_result(&w, &w.total);
  }
  cl_close(eng);
  cli_metrics_stop(w.metrics); /* after the engine: its handler points here */
  close(wake_pipe[0]);
  close(wake_pipe[1]);
  return rc;
}
