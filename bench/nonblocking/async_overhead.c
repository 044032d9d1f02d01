/*
 * async_overhead.c - the per-call cost of the asynchronous engine against
 * the blocking one, with no hook loaded (bench/nonblocking.sh runs it).
 *
 * Two engines on the same database, each with its own connection: one
 * opened with cl_open, one with cl_async_open.  A round times N sequential
 * cl_trigger calls, then N sequential round trips through the asynchronous
 * engine (cl_async_trigger, a wait on the completion descriptor with
 * poll(2), cl_async_poll running the callback), the order swapped every
 * other round so that drift (the WAL, the machine's other work) falls on
 * both alike.  The same for cl_query("SELECT 1"), where the server's part
 * is smallest, and for the hand-off alone: cl_async_call with a function
 * that does nothing, against calling that function directly.  Prints one
 * line per round and per operation and mode, then one summary line per
 * operation:
 *
 *   round R OP MODE US_PER_CALL
 *   summary OP blocking_us=M async_us=M ratio=X paired_ratio=X rounds=R calls=N
 *
 * (medians over the rounds; ratio is async over blocking; paired_ratio the
 * median of the rounds' own ratios).  Exits 1 if any call failed.
 *
 * Usage: async_overhead [--rounds R] [--calls N] [--query-calls N]
 *                       [--conversations K]
 * (--query-calls: also the hand-off's calls per round)
 * Database: CAIRNLOOP_DATABASE_URL, migrated, with conversations 1..K
 * (default 100).
 */
// NOLINTNEXTLINE(bugprone-reserved-identifier,cert-dcl37-c,cert-dcl51-cpp): defining a feature-test macro before any header is its documented use
#define _POSIX_C_SOURCE 200809L

#include <cairnloop.h>

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { OP_TRIGGER, OP_QUERY, OP_CALL, NOPS };
enum { M_BLOCKING, M_ASYNC, NMODES };
static const char *const op_names[NOPS] = {"trigger", "query", "call"};
static const char *const mode_names[NMODES] = {"blocking", "async"};

typedef struct bench {
  cl_engine *eng;
  cl_async *a;
  int conversations;
  unsigned run; /* distinguishes this process's template ids from earlier runs' */
  long seq;     /* template ids are unique per call: every trigger writes */
  int failures;
  /* The outcome of the one asynchronous call in flight. */
  bool done;
  cl_status status;
} bench;

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void report(bench *b, const char *what, const cl_error *err) {
  /* One message is enough to see what broke; the count decides the exit. */
  if (b->failures++ == 0)
    fprintf(stderr, "async_overhead: %s: %s: %s\n", what, cl_status_name(err->code), err->message);
}

static void next_template(bench *b, char *buf, size_t size) {
  snprintf(buf, size, "ovh-%u-%ld", b->run, ++b->seq);
}

static void on_trigger(void *ud, cl_status st, const cl_error *err, cl_trigger_result *res) {
  bench *b = ud;
  (void)res; /* cleared by the engine when the callback returns */
  b->done = true;
  b->status = st;
  if (st != CL_OK) report(b, "cl_async_trigger", err);
}

/* The hand-off's operation: nothing, on the engine thread. */
static cl_status nothing(void *ud, cl_engine *eng, cl_error *err) {
  (void)ud, (void)eng, (void)err;
  return CL_OK;
}

static void on_called(void *ud, cl_status st, const cl_error *err) {
  bench *b = ud;
  b->done = true;
  b->status = st;
  if (st != CL_OK) report(b, "cl_async_call", err);
}

static void on_rows(void *ud, cl_status st, const cl_error *err, cl_rows **rows) {
  bench *b = ud;
  (void)rows;
  b->done = true;
  b->status = st;
  if (st != CL_OK) report(b, "cl_async_query", err);
}

/* Waits on the completion descriptor, as an event loop would, until the
 * callback of the one operation in flight has run. */
static void await(bench *b) {
  struct pollfd p;
  p.fd = cl_async_fd(b->a);
  p.events = POLLIN;
  while (!b->done) {
    p.revents = 0;
    if (poll(&p, 1, 10000) < 0 && errno != EINTR) {
      fprintf(stderr, "async_overhead: poll: %s\n", strerror(errno));
      exit(1);
    }
    cl_async_poll(b->a);
  }
}

static void one_call(bench *b, int op, int mode, long i) {
  cl_error err = {.code = CL_OK}; /* the no-op of OP_CALL writes none */
  char template_id[64];
  cl_trigger_opts t;
  cl_status st;
  memset(&t, 0, sizeof t);
  if (op == OP_TRIGGER) {
    next_template(b, template_id, sizeof template_id);
    t.template_id = template_id;
  }
  int64_t conversation = 1 + i % b->conversations;
  if (mode == M_BLOCKING) {
    if (op == OP_TRIGGER) {
      cl_trigger_result res;
      memset(&res, 0, sizeof res);
      if (cl_trigger(b->eng, conversation, &t, &res, &err) != CL_OK) report(b, "cl_trigger", &err);
      cl_trigger_result_clear(&res);
    } else if (op == OP_QUERY) {
      cl_rows *rows = NULL;
      if (cl_query(b->eng, "SELECT 1", 0, NULL, &rows, &err) != CL_OK) report(b, "cl_query", &err);
      cl_rows_free(rows);
    } else {
      /* Through a pointer the compiler cannot see through, as the engine
       * thread calls it. */
      cl_async_engine_fn volatile fn = nothing;
      if (fn(b, b->eng, &err) != CL_OK) report(b, "call", &err);
    }
    return;
  }
  b->done = false;
  if (op == OP_TRIGGER) st = cl_async_trigger(b->a, conversation, &t, on_trigger, b, &err);
  else if (op == OP_QUERY) st = cl_async_query(b->a, "SELECT 1", 0, NULL, on_rows, b, &err);
  else st = cl_async_call(b->a, nothing, on_called, b, &err);
  if (st != CL_OK) {
    report(b, "submit", &err);
    return;
  }
  await(b);
}

/* Microseconds per call over n sequential calls. */
static double timed(bench *b, int op, int mode, long n) {
  double t0 = now_us();
  for (long i = 0; i < n; i++) one_call(b, op, mode, i);
  return (now_us() - t0) / (double)n;
}

static int cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, c = *(const double *)y;
  return (a > c) - (a < c);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static long arg_long(const char *name, const char *s, long min, long max) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < min || v > max) {
    fprintf(stderr, "async_overhead: %s must be an integer from %ld to %ld\n", name, min, max);
    exit(2);
  }
  return v;
}

int main(int argc, char **argv) {
  bench b;
  cl_config cfg;
  cl_error err;
  long rounds = 15, calls[NOPS] = {200, 1000, 1000};
  double *us[NOPS][NMODES], *ratio[NOPS];

  memset(&b, 0, sizeof b);
  b.conversations = 100;
  for (int i = 1; i < argc; i++) {
    if (i + 1 >= argc) {
      fprintf(stderr, "usage: async_overhead [--rounds R] [--calls N] [--query-calls N]"
                      " [--conversations K]\n");
      return 2;
    }
    if (strcmp(argv[i], "--rounds") == 0) {
      rounds = arg_long("--rounds", argv[++i], 1, 1000);
    } else if (strcmp(argv[i], "--calls") == 0) {
      calls[OP_TRIGGER] = arg_long("--calls", argv[++i], 1, 1000000);
    } else if (strcmp(argv[i], "--query-calls") == 0) {
      calls[OP_QUERY] = calls[OP_CALL] = arg_long("--query-calls", argv[++i], 1, 1000000);
    } else if (strcmp(argv[i], "--conversations") == 0) {
      b.conversations = (int)arg_long("--conversations", argv[++i], 1, 1000000);
    } else {
      fprintf(stderr, "async_overhead: unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  b.run = (unsigned)getpid() ^ (unsigned)time(NULL);

  cl_config_init(&cfg); /* database: CAIRNLOOP_DATABASE_URL */
  if (cl_open(&b.eng, &cfg, &err) != CL_OK) {
    fprintf(stderr, "async_overhead: cl_open: %s: %s\n", cl_status_name(err.code), err.message);
    return 1;
  }
  if (cl_async_open(&b.a, &cfg, NULL, &err) != CL_OK) {
    fprintf(stderr, "async_overhead: cl_async_open: %s: %s\n", cl_status_name(err.code),
            err.message);
    cl_close(b.eng);
    return 1;
  }
  for (int op = 0; op < NOPS; op++) {
    for (int m = 0; m < NMODES; m++) us[op][m] = calloc((size_t)rounds, sizeof(double));
    ratio[op] = calloc((size_t)rounds, sizeof(double));
  }

  /* Warm-up, untimed: both connections prepare their statements and the
   * server caches what the calls touch. */
  for (int op = 0; op < NOPS; op++)
    for (int m = 0; m < NMODES; m++) timed(&b, op, m, 20);

  for (long r = 0; r < rounds; r++) {
    for (int op = 0; op < NOPS; op++) {
      for (int k = 0; k < NMODES; k++) {
        int m = r % 2 ? NMODES - 1 - k : k;
        us[op][m][r] = timed(&b, op, m, calls[op]);
        printf("round %ld %s %s %.1f\n", r + 1, op_names[op], mode_names[m], us[op][m][r]);
      }
      ratio[op][r] = us[op][M_ASYNC][r] / us[op][M_BLOCKING][r];
    }
    fflush(stdout);
  }
  for (int op = 0; op < NOPS; op++) {
    double blocking = median(us[op][M_BLOCKING], (int)rounds);
    double async = median(us[op][M_ASYNC], (int)rounds);
    printf("summary %s blocking_us=%.1f async_us=%.1f ratio=%.3f paired_ratio=%.3f rounds=%ld"
           " calls=%ld\n",
           op_names[op], blocking, async, async / blocking, median(ratio[op], (int)rounds), rounds,
           calls[op]);
    for (int m = 0; m < NMODES; m++) free(us[op][m]);
    free(ratio[op]);
  }
  cl_async_close(b.a, CL_ASYNC_DRAIN);
  cl_close(b.eng);
  return b.failures ? 1 : 0;
}
