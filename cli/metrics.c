/*
 * metrics.c - the worker's Prometheus endpoint (`cairnloop work --metrics`).
 *
 * Two threads, one engine.  The worker thread owns the engine and all
 * recording: a telemetry handler on the delivery events (cl_attach_many),
 * the batch results, and cl_stats every STATS_EVERY_MS.  It records into
 * `live`, which only it touches, and copies `live` into `shared` under the
 * mutex.  libmicrohttpd's polling thread answers GET /metrics by copying
 * `shared` under the same mutex and rendering the copy; it never calls the
 * engine (an engine belongs to one thread).  The lock is held for one
 * struct copy on either side, and the worker's per-delivery publish only
 * tries it, so a scrape never holds up a delivery.  Uses the public API
 * and libmicrohttpd.
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Queue gauges: one cl_stats (a count over the jobs table) at most this
 * often, whatever the batch rate; the idle wait's 5 s fallback poll
 * bounds how stale they get while nothing moves. */
#define STATS_EVERY_MS 5000
/* While a batch delivers, counters reach the endpoint at most this often
 * (and at the batch's end): cheap, and fresh enough for a 1 s scrape. */
#define PUBLISH_EVERY_MS 200
/* A scraper is one client or a few: bound the connections and how long
 * an idle or slow one may hold a slot. */
#define MAX_CONNECTIONS 16
#define CONNECTION_TIMEOUT_S 10

/* Label values are these enums only, whatever a policy's notifier does;
 * anything else is counted as "other".  Reasons are the delivery events'
 * (queue.c) and the webhook notifier's (API.md). */
#define OUTCOME_MAP(XX) \
  XX(SENT, "sent")      \
  XX(FAILED, "failed")  \
  XX(NO_OP, "no_op")    \
  XX(OTHER, "other")
#define REASON_MAP(XX)                                   \
  XX(NOTIFIER_OK, "notifier_ok")                         \
  XX(NOTIFIER_RETURNED_ERROR, "notifier_returned_error") \
  XX(NO_NOTIFIER_CONFIGURED, "no_notifier_configured")   \
  XX(HTTP_STATUS, "http_status")                         \
  XX(HTTP_TIMEOUT, "http_timeout")                       \
  XX(HTTP_ERROR, "http_error")                           \
  XX(NOT_ALLOWED, "not_allowed")                         \
  XX(OTHER, "other")

enum outcome {
#define XX(name, str) OUTCOME_##name,
  OUTCOME_MAP(XX)
#undef XX
};
enum reason {
#define XX(name, str) REASON_##name,
  REASON_MAP(XX)
#undef XX
};
static const char *const outcome_names[] = {
#define XX(name, str) str,
    OUTCOME_MAP(XX)
#undef XX
};
static const char *const reason_names[] = {
#define XX(name, str) str,
    REASON_MAP(XX)
#undef XX
};
/* The enums' sizes, from the tables (integer constant expressions). */
#define N_OUTCOMES ((int)(sizeof outcome_names / sizeof outcome_names[0]))
#define N_REASONS ((int)(sizeof reason_names / sizeof reason_names[0]))

/* Upper bounds of the duration buckets, in seconds, as text and as
 * numbers: a notifier that answers in under a millisecond up to a slow
 * webhook near its timeout.  +Inf is the last bucket. */
#define BUCKET_MAP(XX) \
  XX("0.0005", 0.0005) \
  XX("0.001", 0.001)   \
  XX("0.0025", 0.0025) \
  XX("0.005", 0.005)   \
  XX("0.01", 0.01)     \
  XX("0.025", 0.025)   \
  XX("0.05", 0.05)     \
  XX("0.1", 0.1)       \
  XX("0.25", 0.25)     \
  XX("0.5", 0.5)       \
  XX("1", 1.0)         \
  XX("2.5", 2.5)       \
  XX("5", 5.0)         \
  XX("10", 10.0)       \
  XX("30", 30.0)
static const char *const bucket_text[] = {
#define XX(text, value) text,
    BUCKET_MAP(XX)
#undef XX
};
static const double bucket_le[] = {
#define XX(text, value) value,
    BUCKET_MAP(XX)
#undef XX
};
#define N_BUCKETS (sizeof bucket_le / sizeof bucket_le[0])

/* What a scrape shows: plain values, copied whole. */
typedef struct snapshot {
  uint64_t deliveries[N_OUTCOMES][N_REASONS];
  uint64_t bucket[N_BUCKETS + 1]; /* per bucket, not cumulative; the last is +Inf */
  double duration_sum;
  uint64_t duration_count;
  uint64_t batches, claimed, rescued, released, retried, discarded, pruned;
  uint64_t rate_wait_ms;
  int batch_in_progress;
  int64_t batch_claimed; /* the latest finished batch's claim */
  bool have_queue;       /* cl_stats has answered at least once */
  cl_queue_stats queue;
} snapshot;

struct cli_metrics {
  struct MHD_Daemon *daemon;
  pthread_mutex_t lock; /* guards `shared` */
  snapshot shared;      /* what the server thread reads */
  snapshot live;        /* the worker thread's own */
  /* The batch in progress (worker thread only). */
  int64_t batch_t0_ns;
  uint64_t batch_deliveries, batch_timed;
  int64_t last_publish_ms, last_stats_ms;
};

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ------------------------------------------------------------------ */
/* Recording (the worker thread)                                        */
/* ------------------------------------------------------------------ */

/* Copies live to shared.  Unforced, it gives up if a scrape holds the lock
 * (the next publish carries the counts). */
static void publish(cli_metrics *m, bool force) {
  if (force) {
    pthread_mutex_lock(&m->lock);
  } else if (pthread_mutex_trylock(&m->lock) != 0) {
    return;
  }
  m->shared = m->live;
  pthread_mutex_unlock(&m->lock);
  m->last_publish_ms = mono_ns() / 1000000;
}

static void observe(snapshot *s, double seconds, uint64_t n) {
  size_t i = 0;
  while (i < N_BUCKETS && seconds > bucket_le[i]) i++;
  s->bucket[i] += n;
  s->duration_sum += seconds * (double)n;
  s->duration_count += n;
}

static int lookup(const char *const *names, int n, const cl_kv *kv) {
  if (kv && kv->type == CL_VALUE_STRING && kv->s)
    for (int i = 0; i < n - 1; i++)
      if (strcmp(names[i], kv->s) == 0) return i;
  return n - 1; /* other */
}

/* The telemetry handler of cairnloop.outbound.delivery.{sent,failed,no_op}:
 * metadata {outcome, reason}, measurements {count} and, when the engine
 * measures it, {duration} in ns (the notifier call). */
static void on_delivery(const char *const *event, const cl_measurements *ms, const cl_metadata *md,
                        void *config) {
  (void)event; /* the outcome says which of the three events it is */
  cli_metrics *m = config;
  int o = lookup(outcome_names, N_OUTCOMES, cl_map_get(md, "outcome"));
  int r = lookup(reason_names, N_REASONS, cl_map_get(md, "reason"));
  const cl_kv *count = cl_map_get(ms, "count");
  uint64_t n = count && count->type == CL_VALUE_INT && count->i > 0 ? (uint64_t)count->i : 1;
  m->live.deliveries[o][r] += n;
  m->batch_deliveries += n;
  const cl_kv *d = cl_map_get(ms, "duration");
  if (d && d->type == CL_VALUE_INT && d->i >= 0) {
    observe(&m->live, (double)d->i / 1e9, n);
    m->batch_timed += n;
  }
  if (mono_ns() / 1000000 - m->last_publish_ms >= PUBLISH_EVERY_MS) publish(m, false);
}

int cli_metrics_attach(cli_metrics *m, cl_engine *eng) {
  if (!m) return 0;
  static const char *const events[] = {
      "cairnloop.outbound.delivery.sent",
      "cairnloop.outbound.delivery.failed",
      "cairnloop.outbound.delivery.no_op",
  };
  cl_error err;
  cl_status st = cl_attach_many(eng, "cairnloop.work.metrics", events,
                                sizeof events / sizeof events[0], on_delivery, m, NULL, &err);
  return st == CL_OK ? 0 : cli_fail_status(st, &err);
}

void cli_metrics_batch_begin(cli_metrics *m) {
  if (!m) return;
  m->batch_t0_ns = mono_ns();
  m->batch_deliveries = m->batch_timed = 0;
  m->live.batch_in_progress = 1;
  publish(m, false);
}

void cli_metrics_batch_end(cli_metrics *m, bool ok, const cl_work_stats *s,
                           const cl_batch_info *b) {
  if (!m) return;
  snapshot *l = &m->live;
  l->batch_in_progress = 0;
  if (ok) {
    /* Deliveries the events did not time get the batch's wall time
     * (claim, notifier calls, completion) shared out evenly. */
    uint64_t untimed = m->batch_deliveries - m->batch_timed;
    if (untimed > 0)
      observe(l, (double)(mono_ns() - m->batch_t0_ns) / 1e9 / (double)m->batch_deliveries, untimed);
    l->batches++;
    l->claimed += (uint64_t)b->claimed;
    l->rescued += (uint64_t)b->rescued;
    l->released += (uint64_t)b->released;
    l->retried += (uint64_t)s->retried;
    l->discarded += (uint64_t)s->discarded;
    l->pruned += (uint64_t)b->pruned;
    l->rate_wait_ms += (uint64_t)b->rate_wait_ms;
    l->batch_claimed = b->claimed;
  }
  publish(m, true);
}

void cli_metrics_refresh(cli_metrics *m, cl_engine *eng, bool force) {
  if (!m) return;
  int64_t now = mono_ns() / 1000000;
  if (!force && m->live.have_queue && now - m->last_stats_ms < STATS_EVERY_MS) return;
  m->last_stats_ms = now;
  cl_queue_stats q;
  cl_error err;
  /* A failure (the database away) keeps the last values; the loop logs
   * the outage itself. */
  if (cl_stats(eng, NULL, &q, &err) != CL_OK) return;
  m->live.queue = q;
  m->live.have_queue = true;
  publish(m, true);
}

/* ------------------------------------------------------------------ */
/* Rendering (the server thread)                                        */
/* ------------------------------------------------------------------ */

typedef struct text {
  char *p;
  size_t len, cap;
  bool oom;
} text;

static void put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text *t, const char *fmt, ...) {
  if (t->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      t->oom = true;
      return;
    }
    if ((size_t)n < t->cap - t->len) {
      t->len += (size_t)n;
      return;
    }
    size_t cap = t->cap * 2 + (size_t)n;
    char *p = realloc(t->p, cap);
    if (!p) {
      t->oom = true;
      return;
    }
    t->p = p;
    t->cap = cap;
  }
}

/* The shortest decimal that reads back as the same double: full
 * precision without the 17-digit noise of 0.1 as 0.10000000000000001. */
static void put_double(text *t, double v) {
  char buf[40];
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (strtod(buf, NULL) == v) break;
  }
  put(t, "%s", buf);
}

static void family(text *t, const char *name, const char *type, const char *help) {
  put(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render(text *t, const snapshot *s) {
  family(t, "cairnloop_worker_deliveries_total", "counter",
         "Deliveries this worker finished, by outcome and reason.");
  for (int o = 0; o < N_OUTCOMES; o++)
    for (int r = 0; r < N_REASONS; r++) {
      /* The pairs the engine emits without a notifier's say are always
       * shown, from 0; the others once they occur. */
      bool usual = (o == OUTCOME_SENT && r == REASON_NOTIFIER_OK) ||
                   (o == OUTCOME_FAILED && r == REASON_NOTIFIER_RETURNED_ERROR) ||
                   (o == OUTCOME_NO_OP && r == REASON_NO_NOTIFIER_CONFIGURED);
      if (!usual && s->deliveries[o][r] == 0) continue;
      put(t, "cairnloop_worker_deliveries_total{outcome=\"%s\",reason=\"%s\"} %" PRIu64 "\n",
          outcome_names[o], reason_names[r], s->deliveries[o][r]);
    }

  family(t, "cairnloop_worker_delivery_duration_seconds", "histogram",
         "Time per delivery: the notifier call when the delivery event measures it, else the "
         "wall time of its batch (claim, notifier calls, completion) divided by the batch's "
         "deliveries.");
  uint64_t cum = 0;
  for (size_t i = 0; i < N_BUCKETS; i++) {
    cum += s->bucket[i];
    put(t, "cairnloop_worker_delivery_duration_seconds_bucket{le=\"%s\"} %" PRIu64 "\n",
        bucket_text[i], cum);
  }
  cum += s->bucket[N_BUCKETS];
  put(t, "cairnloop_worker_delivery_duration_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n", cum);
  put(t, "cairnloop_worker_delivery_duration_seconds_sum ");
  put_double(t, s->duration_sum);
  put(t, "\ncairnloop_worker_delivery_duration_seconds_count %" PRIu64 "\n", s->duration_count);

  static const struct {
    const char *name, *help;
    size_t offset;
  } counters[] = {
      {"cairnloop_worker_batches_total", "Batches this worker ran to completion.",
       offsetof(snapshot, batches)},
      {"cairnloop_worker_jobs_claimed_total",
       "Jobs this worker claimed, due ones and rescued expired leases.",
       offsetof(snapshot, claimed)},
      {"cairnloop_worker_jobs_rescued_total", "Claimed jobs whose previous lease had expired.",
       offsetof(snapshot, rescued)},
      {"cairnloop_worker_jobs_released_total",
       "Claimed jobs handed back unstarted (stopping, or a lost connection).",
       offsetof(snapshot, released)},
      {"cairnloop_worker_retries_total", "Failed deliveries scheduled for another attempt.",
       offsetof(snapshot, retried)},
      {"cairnloop_worker_discards_total", "Failed deliveries out of attempts (discarded).",
       offsetof(snapshot, discarded)},
      {"cairnloop_worker_pruned_jobs_total",
       "Finished jobs past their retention this worker deleted.", offsetof(snapshot, pruned)},
  };
  for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++) {
    family(t, counters[i].name, "counter", counters[i].help);
    uint64_t v;
    memcpy(&v, (const char *)s + counters[i].offset, sizeof v);
    put(t, "%s %" PRIu64 "\n", counters[i].name, v);
  }

  family(t, "cairnloop_worker_rate_limited_seconds_total", "counter",
         "Time this worker sat with nothing in flight, waiting for --rate's next token.");
  put(t, "cairnloop_worker_rate_limited_seconds_total ");
  put_double(t, (double)s->rate_wait_ms / 1000.0);
  put(t, "\n");

  family(t, "cairnloop_worker_batch_in_progress", "gauge",
         "1 while this worker delivers a batch, else 0.");
  put(t, "cairnloop_worker_batch_in_progress %d\n", s->batch_in_progress);
  family(t, "cairnloop_worker_batch_claimed_jobs", "gauge",
         "Jobs the latest finished batch claimed (the engine reports a claim when its batch "
         "ends; jobs being delivered by every worker are queue_jobs{state=\"executing\"}).");
  put(t, "cairnloop_worker_batch_claimed_jobs %" PRId64 "\n", s->batch_claimed);

  /* Queue gauges only once cl_stats has answered: a 0 before that would
   * claim an empty queue. */
  if (!s->have_queue) return;
  family(t, "cairnloop_worker_queue_jobs", "gauge",
         "Jobs in the queue by state, all workers (cl_stats, refreshed every 5 s at most).");
  for (int st = 0; st < CL_JOB_STATE__COUNT; st++)
    put(t, "cairnloop_worker_queue_jobs{state=\"%s\"} %" PRId64 "\n",
        cl_job_state_name((cl_job_state)st), s->queue.count[st]);
  family(t, "cairnloop_worker_queue_oldest_due_age_seconds", "gauge",
         "How long the longest-waiting due job has waited; 0 when none waits.");
  put(t, "cairnloop_worker_queue_oldest_due_age_seconds %" PRId64 "\n",
      s->queue.oldest_due_age_seconds);
  family(t, "cairnloop_worker_paused", "gauge", "1 while delivery is paused (cairnloop pause).");
  put(t, "cairnloop_worker_paused %d\n", s->queue.paused ? 1 : 0);
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, char *body, size_t len,
                             bool owned, const char *type) {
  struct MHD_Response *res = MHD_create_response_from_buffer(
      len, body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
  if (!res) {
    if (owned) free(body);
    return MHD_NO;
  }
  MHD_add_response_header(res, MHD_HTTP_HEADER_CONTENT_TYPE, type);
  if (status == MHD_HTTP_METHOD_NOT_ALLOWED) MHD_add_response_header(res, "Allow", "GET, HEAD");
  enum MHD_Result ret = MHD_queue_response(conn, status, res);
  MHD_destroy_response(res);
  return ret;
}

/* libmicrohttpd's request callback, on its polling thread. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
  (void)version; /* GET and HEAD carry no body: no upload to read */
  (void)upload_data;
  *upload_data_size = 0; /* any body a client sends anyway is dropped */
  (void)con_cls;
  const char *plain = "text/plain; charset=utf-8";
  cli_metrics *m = cls;
  if (strcmp(url, "/metrics") != 0) {
    static char not_found[] = "not found: the metrics are at /metrics\n";
    return reply(conn, MHD_HTTP_NOT_FOUND, not_found, strlen(not_found), false, plain);
  }
  if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
    static char not_allowed[] = "method not allowed: GET /metrics\n";
    return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, not_allowed, strlen(not_allowed), false, plain);
  }
  snapshot s;
  pthread_mutex_lock(&m->lock);
  s = m->shared;
  pthread_mutex_unlock(&m->lock);
  text t = {.cap = 8192};
  t.p = malloc(t.cap);
  if (!t.p) return MHD_NO;
  render(&t, &s);
  if (t.oom) {
    free(t.p);
    return MHD_NO;
  }
  return reply(conn, MHD_HTTP_OK, t.p, t.len, true, "text/plain; version=0.0.4; charset=utf-8");
}

/* ------------------------------------------------------------------ */
/* Starting and stopping                                                */
/* ------------------------------------------------------------------ */

/* HOST:PORT or [V6HOST]:PORT into host and port strings. */
static int split(const char *hostport, char *host, size_t hostsz, char *port, size_t portsz) {
  const char *colon;
  size_t hlen;
  if (hostport[0] == '[') {
    const char *close = strchr(hostport, ']');
    if (!close || close[1] != ':') return -1;
    hostport++;
    hlen = (size_t)(close - hostport);
    colon = close + 1;
  } else {
    colon = strrchr(hostport, ':');
    if (!colon) return -1;
    hlen = (size_t)(colon - hostport);
    if (memchr(hostport, ':', hlen)) return -1; /* an IPv6 address needs brackets */
  }
  const char *p = colon + 1;
  size_t plen = strlen(p);
  if (hlen == 0 || hlen >= hostsz || plen == 0 || plen > 5 || plen >= portsz) return -1;
  for (size_t i = 0; i < plen; i++)
    if (p[i] < '0' || p[i] > '9') return -1;
  if (strtol(p, NULL, 10) > 65535) return -1;
  memcpy(host, hostport, hlen);
  host[hlen] = '\0';
  memcpy(port, p, plen + 1);
  return 0;
}

/* A listening socket on the first address of `host` that takes one;
 * -1 with errno from the last attempt. */
static int listen_on(const struct addrinfo *ai, int *family) {
  int saved = EADDRNOTAVAIL;
  for (; ai; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      saved = errno;
      continue;
    }
    int one = 1;
    /* A restarted worker gets its port back while old connections sit in
     * TIME_WAIT; a port another process listens on stays refused. */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, MAX_CONNECTIONS) == 0) {
      *family = ai->ai_family;
      return fd;
    }
    saved = errno;
    close(fd);
  }
  errno = saved;
  return -1;
}

int cli_metrics_start(const char *hostport, cli_metrics **out) {
  *out = NULL;
  char host[256], port[8];
  if (split(hostport, host, sizeof host, port, sizeof port) != 0)
    return cli_fail(CL_INVALID_ARGUMENT,
                    "--metrics: expected HOST:PORT (127.0.0.1:9100, [::1]:9100, "
                    "localhost:9100; port 0 picks a free one), got \"%s\"",
                    hostport);
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
  struct addrinfo *ai;
  int gai = getaddrinfo(host, port, &hints, &ai);
  if (gai != 0)
    return cli_fail(CL_INVALID_ARGUMENT, "--metrics %s: cannot resolve %s: %s", hostport, host,
                    gai_strerror(gai));
  int af = AF_INET;
  int fd = listen_on(ai, &af);
  int saved = errno;
  freeaddrinfo(ai);
  if (fd < 0)
    return cli_fail(CL_INVALID_ARGUMENT, "--metrics %s: cannot listen: %s", hostport,
                    strerror(saved));

  cli_metrics *m = calloc(1, sizeof *m);
  if (!m) {
    close(fd);
    return cli_fail(CL_DB_ERROR, "--metrics: out of memory");
  }
  pthread_mutex_init(&m->lock, NULL);
  /* The server thread inherits this mask: SIGINT and SIGTERM always land
   * on the worker thread, whose handler wakes its wait. */
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
  if (af == AF_INET6) flags |= MHD_USE_IPv6;
  m->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, m, MHD_OPTION_LISTEN_SOCKET, fd,
                               MHD_OPTION_CONNECTION_LIMIT, (unsigned)MAX_CONNECTIONS,
                               MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)CONNECTION_TIMEOUT_S,
                               MHD_OPTION_END);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (!m->daemon) {
    close(fd);
    pthread_mutex_destroy(&m->lock);
    free(m);
    return cli_fail(CL_INVALID_ARGUMENT, "--metrics %s: the HTTP server did not start", hostport);
  }

  /* Say where it listens: with port 0 this is how a supervisor (or a
   * test) learns the port. */
  struct sockaddr_storage sa;
  memset(&sa, 0, sizeof sa);
  socklen_t salen = sizeof sa;
  char addr[INET6_ADDRSTRLEN] = "?";
  unsigned bound = 0;
  if (getsockname(fd, (struct sockaddr *)&sa, &salen) == 0) {
    if (sa.ss_family == AF_INET6) {
      const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&sa;
      inet_ntop(AF_INET6, &s6->sin6_addr, addr, sizeof addr);
      bound = ntohs(s6->sin6_port);
    } else {
      const struct sockaddr_in *s4 = (const struct sockaddr_in *)&sa;
      inet_ntop(AF_INET, &s4->sin_addr, addr, sizeof addr);
      bound = ntohs(s4->sin_port);
    }
  }
  fprintf(stderr, "cairnloop: [info] work: metrics at http://%s%s%s:%u/metrics\n",
          sa.ss_family == AF_INET6 ? "[" : "", addr, sa.ss_family == AF_INET6 ? "]" : "", bound);
  *out = m;
  return 0;
}

void cli_metrics_stop(cli_metrics *m) {
  if (!m) return;
  /* Stopping the daemon closes the listening socket it was given. */
  MHD_stop_daemon(m->daemon);
  pthread_mutex_destroy(&m->lock);
  free(m);
}
