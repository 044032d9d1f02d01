/*
 * bench.c - `make bench`: cl_bulk_trigger and cl_trigger against the best
 * hand-written libpq programs for the same rows, on a durable PostgreSQL.
 * Sets up and seeds one database, checks every contender writes the
 * engine's rows, times them interleaved (a random order per round) and
 * reports tables as text and markdown, ending with the targets met or
 * missed.  Contenders: the engine through the C API, the Lua module, the
 * command line and with the ready-made policy (hosts.c), the hand-written
 * shapes (shapes.c).  Uses cairnloop.h, db.h (round-trip counter), worker.c
 * (delivery) and probes.c (the rest).
 */
#include "bench.h"

#include "cairnloop.h"
#include "db.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SCHEMA BENCH_SCHEMA
#define DBNAME "cl_bench"
#define CONVERSATIONS 20000
#define HISTORY_PER_CONVERSATION 5
#define HISTORY_ENVELOPES 2000
#define STR_(x) #x
#define STR(x) STR_(x)
#define MAX_N 10000
#define MAX_CONTENDERS 12

/* ------------------------------------------------------------------ */
/* Small utilities                                                      */
/* ------------------------------------------------------------------ */

double bench_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* CPU time of this thread: what a contender costs the client itself. */
static double cpu_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* xorshift64*: a fixed seed keeps cohorts the same from run to run. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545f4914f6cdd1dull;
}

uint64_t bench_rng(void) { return rng(); }

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted sample (p in 0..100); the median of
 * an even sample is the mean of its two middle values. */
static double percentile(const double *sorted, size_t n, double p) {
  if (n == 0) return NAN;
  if (p == 50 && n % 2 == 0) return (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  size_t rank = (size_t)ceil(p / 100.0 * (double)n);
  if (rank < 1) rank = 1;
  return sorted[rank - 1];
}

static void fmt_ms(char *out, size_t n, double ms) {
  if (ms < 10) snprintf(out, n, "%.3f", ms);
  else if (ms < 100) snprintf(out, n, "%.2f", ms);
  else snprintf(out, n, "%.1f", ms);
}

void bench_fmt_ms(char *out, size_t n, double ms) { fmt_ms(out, n, ms); }

double bench_median(double *v, size_t n) {
  qsort(v, n, sizeof *v, cmp_double);
  return percentile(v, n, 50);
}

/* 1234567 -> "1,234,567" */
void bench_fmt_int(char *out, size_t n, double v) {
  char t[32];
  snprintf(t, sizeof t, "%.0f", v);
  size_t len = strlen(t), o = 0;
  for (size_t i = 0; i < len && o + 2 < n; i++) {
    out[o++] = t[i];
    size_t left = len - i - 1;
    if (left && left % 3 == 0 && t[i] != '-') out[o++] = ',';
  }
  out[o] = '\0';
}

/* ------------------------------------------------------------------ */
/* Report: paragraphs and tables, printed as text and as markdown       */
/* ------------------------------------------------------------------ */

#define MAX_COLS 10
#define MAX_ROWS 48
#define MAX_SECTIONS 32

typedef struct table {
  char *title;
  char *note;
  int ncols, nrows;
  const char *head[MAX_COLS];
  char align[MAX_COLS]; /* 'l' or 'r' */
  char *cell[MAX_ROWS][MAX_COLS];
} table;

typedef struct section {
  table *t;    /* a table, or */
  char *lines; /* a paragraph of "key: value" lines */
} section;

static section sections[MAX_SECTIONS];
static int nsections;

static table *table_new(const char *title, const char *cols, const char *align) {
  table *t = calloc(1, sizeof *t);
  if (!t || nsections == MAX_SECTIONS) abort();
  t->title = strdup(title);
  /* cols: names separated by '|' */
  char *c = strdup(cols), *save = NULL;
  for (char *tok = strtok_r(c, "|", &save); tok && t->ncols < MAX_COLS;
       tok = strtok_r(NULL, "|", &save))
    t->head[t->ncols++] = strdup(tok);
  free(c);
  for (int i = 0; i < t->ncols; i++) t->align[i] = align[i] ? align[i] : 'r';
  sections[nsections++].t = t;
  return t;
}

static void table_row(table *t, ...) {
  if (t->nrows == MAX_ROWS) return;
  va_list ap;
  va_start(ap, t);
  for (int i = 0; i < t->ncols; i++) {
    const char *v = va_arg(ap, const char *);
    t->cell[t->nrows][i] = strdup(v ? v : "");
  }
  va_end(ap);
  t->nrows++;
}

__attribute__((format(printf, 2, 3))) static void table_note(table *t, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  t->note = strdup(buf);
}

__attribute__((format(printf, 1, 2))) static void para(const char *fmt, ...) {
  char buf[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (nsections == MAX_SECTIONS) abort();
  sections[nsections++].lines = strdup(buf);
}

static void print_text(FILE *f) {
  for (int s = 0; s < nsections; s++) {
    if (sections[s].lines) {
      fprintf(f, "%s\n", sections[s].lines);
      continue;
    }
    table *t = sections[s].t;
    int w[MAX_COLS];
    for (int i = 0; i < t->ncols; i++) {
      w[i] = (int)strlen(t->head[i]);
      for (int r = 0; r < t->nrows; r++)
        if ((int)strlen(t->cell[r][i]) > w[i]) w[i] = (int)strlen(t->cell[r][i]);
    }
    fprintf(f, "\n%s\n", t->title);
    for (int i = 0; i < t->ncols; i++)
      fprintf(f, "  %*s", t->align[i] == 'l' ? -w[i] : w[i], t->head[i]);
    fputc('\n', f);
    for (int r = 0; r < t->nrows; r++) {
      for (int i = 0; i < t->ncols; i++)
        fprintf(f, "  %*s", t->align[i] == 'l' ? -w[i] : w[i], t->cell[r][i]);
      fputc('\n', f);
    }
    if (t->note) fprintf(f, "  %s\n", t->note);
  }
}

static void print_markdown(FILE *f) {
  for (int s = 0; s < nsections; s++) {
    if (sections[s].lines) {
      /* "key: value" lines become a list. */
      const char *p = sections[s].lines;
      while (*p) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (len) fprintf(f, "- %.*s\n", (int)len, p);
        p += len + (nl ? 1 : 0);
      }
      fputc('\n', f);
      continue;
    }
    table *t = sections[s].t;
    fprintf(f, "**%s**\n\n|", t->title);
    for (int i = 0; i < t->ncols; i++) fprintf(f, " %s |", t->head[i]);
    fputs("\n|", f);
    for (int i = 0; i < t->ncols; i++) fputs(t->align[i] == 'l' ? ":---|" : "---:|", f);
    fputc('\n', f);
    for (int r = 0; r < t->nrows; r++) {
      fputc('|', f);
      for (int i = 0; i < t->ncols; i++) fprintf(f, " %s |", t->cell[r][i]);
      fputc('\n', f);
    }
    if (t->note) fprintf(f, "\n%s\n", t->note);
    fputc('\n', f);
  }
}

/* ------------------------------------------------------------------ */
/* Contenders                                                           */
/* ------------------------------------------------------------------ */

/* ROLE_ENGINE is engine-c, the C API without hooks: the reference the
 * other ways of reaching the engine (ROLE_VARIANT) are set against. */
typedef enum role { ROLE_SHAPE, ROLE_PER_ROW, ROLE_ENGINE, ROLE_VARIANT } role;

/* How often a contender runs in a bulk round: every round, or one round of
 * every `per_row_every` / `cli_every` of the phase's plan. */
typedef enum cadence { EVERY_ROUND, PER_ROW_CADENCE, CLI_CADENCE } cadence;

typedef struct contender {
  const char *name;
  role role;
  cadence cadence;
  bulk_fn bulk;
  trigger_fn trigger;
  /* Optional, outside the clock: the caller's data before the call (a Lua
   * list, an ids file), reading the result after it. */
  void (*prepare)(void *ctx, const bulk_call *call);
  void (*finish)(void *ctx, bulk_call *call, ids_out *out);
  /* Optional: CPU time of a child process in the last call (the command). */
  double (*child_cpu)(void *ctx);
  bool counts_round_trips; /* the engine's counter or a shape's */
  bool audits;             /* writes one audit row per call */
  void *ctx;
  shape *sh;   /* NULL for the engine */
  double *ms;  /* samples of the current phase */
  double *cpu; /* this process's CPU time in each of those calls */
  size_t nms;
  uint64_t rt0; /* round-trip counter at the phase start */
  double rt_per_call;
} contender;

/* The engine as a contender: ctx is the cl_engine. */
int bench_engine_bulk(void *ctx, bulk_call *call, ids_out *out) {
  cl_engine *eng = ctx;
  cl_bulk_opts o = {0};
  o.template_id = call->template_id;
  o.rendered_body = call->body;
  cl_bulk_result res;
  cl_error err;
  cl_status st = cl_bulk_trigger(eng, call->ids, call->n, &o, &res, &err);
  if (st != CL_OK) {
    fprintf(stderr, "bench: cl_bulk_trigger: %s: %s\n", cl_status_name(st), err.message);
    cl_bulk_result_clear(&res);
    return -1;
  }
  memcpy(call->envelope_id, res.envelope.id, sizeof call->envelope_id);
  for (size_t i = 0; i < res.count && i < call->n; i++) {
    out->message_ids[i] = res.messages[i].id;
    out->job_ids[i] = res.delivery_jobs[i].id;
  }
  cl_bulk_result_clear(&res);
  return 0;
}

int bench_engine_trigger(void *ctx, const trigger_call *call, int64_t *mid, int64_t *jid) {
  cl_engine *eng = ctx;
  cl_trigger_opts o = {0};
  o.template_id = call->template_id;
  cl_trigger_result res;
  cl_error err;
  cl_status st = cl_trigger(eng, call->conversation_id, &o, &res, &err);
  if (st != CL_OK) {
    fprintf(stderr, "bench: cl_trigger: %s: %s\n", cl_status_name(st), err.message);
    cl_trigger_result_clear(&res);
    return -1;
  }
  *mid = res.message.id;
  *jid = res.delivery_job.id;
  cl_trigger_result_clear(&res);
  return 0;
}

static uint64_t contender_rt(const contender *c) {
  if (!c->counts_round_trips) return 0;
  if (c->sh) return shape_round_trips(c->sh);
  return cl__db_round_trips(c->ctx);
}

/* ------------------------------------------------------------------ */
/* Database setup and checks                                            */
/* ------------------------------------------------------------------ */

/* Server notices ("database ... does not exist, skipping") are noise here. */
static void quiet(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

static PGconn *connect_or_die(const char *conninfo) {
  PGconn *c = PQconnectdb(conninfo);
  if (PQstatus(c) != CONNECTION_OK) {
    bench_pg_error(c, NULL, "connect");
    exit(1);
  }
  PQsetNoticeProcessor(c, quiet, NULL);
  return c;
}

static void exec_or_die(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
    bench_pg_error(c, r, sql);
    exit(1);
  }
  PQclear(r);
}

PGconn *bench_connect(const char *conninfo) { return connect_or_die(conninfo); }

void bench_exec(PGconn *c, const char *sql) { exec_or_die(c, sql); }

char *bench_conninfo(const char *base, const char *db) {
  size_t n = strlen(base) + strlen(db) + 16;
  char *s = malloc(n);
  if (!s) abort();
  snprintf(s, n, "%s%sdbname=%s", base, strchr(base, '?') ? "&" : "?", db);
  return s;
}

void bench_create_database(const char *base, const char *db) {
  char *info = bench_conninfo(base, "postgres");
  PGconn *c = connect_or_die(info);
  char sql[256];
  snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s", db);
  exec_or_die(c, sql);
  snprintf(sql, sizeof sql, "CREATE DATABASE %s", db);
  exec_or_die(c, sql);
  PQfinish(c);
  free(info);
}

/* Conversations, plus a history of messages and completed jobs: a
 * production database is never empty, and the foreign-key checks each
 * session plans (and caches) on its first insert must see tables of a
 * realistic size, or they pick sequential scans that stay cached while
 * the tables grow. */
int64_t *bench_seed(PGconn *c, size_t *n) {
  char seed[1024];
  snprintf(seed, sizeof seed,
           "INSERT INTO " SCHEMA ".cairnloop_conversations (subject, customer_ref)"
           " SELECT 'Conversation ' || g, 'customer-' || g FROM generate_series(1, %d) g",
           CONVERSATIONS);
  exec_or_die(c, seed);
  snprintf(seed, sizeof seed,
           "INSERT INTO " SCHEMA ".cairnloop_messages (conversation_id, content, role, metadata)"
           " SELECT c.id, 'History message ' || k, CASE WHEN k %% 2 = 0 THEN 'customer'"
           "        ELSE 'agent' END, '{}'::jsonb"
           " FROM " SCHEMA ".cairnloop_conversations c, generate_series(1, %d) k",
           HISTORY_PER_CONVERSATION);
  exec_or_die(c, seed);
  exec_or_die(c,
              "INSERT INTO " SCHEMA ".cairnloop_delivery_jobs (message_id, conversation_id,"
              "       template_id, args, state, attempt, completed_at)"
              " SELECT m.id, m.conversation_id, 'history', jsonb_build_object('message_id', m.id,"
              "        'conversation_id', m.conversation_id, 'template_id', 'history',"
              "        'bulk_envelope_id', NULL), 'completed', 1, now()"
              " FROM (SELECT DISTINCT ON (conversation_id) id, conversation_id"
              "       FROM " SCHEMA ".cairnloop_messages ORDER BY conversation_id, id) m");
  exec_or_die(
      c,
      "INSERT INTO " SCHEMA ".cairnloop_outbound_bulk_envelopes (id, template_id,"
      "       rendered_body, recipient_conversation_ids, count, effective_cap,"
      "       requested_at, status, refused_reason, inserted_at, updated_at)"
      " SELECT gen_random_uuid(), 'history-' || k, 'History body ' || k,"
      "        ARRAY(SELECT (k * 25 + i) % " STR(
          CONVERSATIONS) " + 1"
                         "              FROM generate_series(0, 24) i), 25, 25,"
                         "        now() - make_interval(mins => k), CASE WHEN k % 10 = 0"
                         "        THEN 'refused_cap_exceeded' ELSE 'submitted' END,"
                         "        CASE WHEN k % 10 = 0 THEN 'batch_size 26 exceeds cap 25' END, now(), now()"
                         " FROM generate_series(1, " STR(HISTORY_ENVELOPES) ") k");
  exec_or_die(c, "VACUUM ANALYZE");
  PGresult *r = PQexec(c, "SELECT id FROM " SCHEMA ".cairnloop_conversations ORDER BY id");
  *n = (size_t)PQntuples(r);
  int64_t *ids = malloc(*n * sizeof *ids);
  if (!ids) abort();
  for (size_t i = 0; i < *n; i++) ids[i] = strtoll(PQgetvalue(r, (int)i, 0), NULL, 10);
  PQclear(r);
  return ids;
}

/* Checks that a bulk wrote exactly the engine's rows: the envelope, N
 * messages and N jobs with the same columns and JSON, ids as returned. */
static bool verify_bulk(PGconn *c, const bulk_call *call, const ids_out *out) {
  static const char sql[] =
      "SELECT"
      " (SELECT count(*) FROM " SCHEMA ".cairnloop_outbound_bulk_envelopes e"
      "   WHERE e.id = $1::uuid AND e.template_id = $2 AND e.rendered_body = $3"
      "     AND e.recipient_conversation_ids = $4::bigint[]"
      "     AND e.count = cardinality($4::bigint[]) AND e.effective_cap = $5::int"
      "     AND e.requested_by IS NULL AND e.status = 'submitted' AND e.refused_reason IS NULL"
      "     AND e.requested_at IS NOT NULL AND e.inserted_at IS NOT NULL),"
      " (SELECT count(*) FROM unnest($4::bigint[], $6::bigint[], $7::bigint[]) t(cid, mid, jid)"
      "   JOIN " SCHEMA ".cairnloop_messages m ON m.id = t.mid AND m.conversation_id = t.cid"
      "   JOIN " SCHEMA ".cairnloop_delivery_jobs j ON j.id = t.jid AND j.message_id = m.id"
      "   WHERE m.content = $3 AND m.role = 'system_outbound'"
      "     AND m.metadata = jsonb_build_object('template_id', $2::text, 'status', 'pending',"
      "                                         'bulk_envelope_id', $1::uuid)"
      "     AND j.conversation_id = t.cid AND j.template_id = $2 AND j.bulk_envelope_id = $1::uuid"
      "     AND j.args = jsonb_build_object('message_id', m.id, 'conversation_id', t.cid,"
      "                                     'template_id', $2::text, 'bulk_envelope_id', $1::uuid)"
      "     AND j.worker = 'outbound' AND j.state = 'available' AND j.attempt = 0"
      "     AND j.errors = '[]'::jsonb AND j.scheduled_at <= now()),"
      " (SELECT count(*) FROM " SCHEMA ".cairnloop_messages m"
      "   WHERE m.metadata->>'bulk_envelope_id' = $1::text),"
      " (SELECT count(*) FROM " SCHEMA
      ".cairnloop_delivery_jobs j WHERE j.bulk_envelope_id = $1::uuid)";
  size_t n = call->n;
  char *a[3];
  const int64_t *src[3] = {call->ids, out->message_ids, out->job_ids};
  for (int k = 0; k < 3; k++) {
    a[k] = malloc(n * 21 + 3);
    char *p = a[k];
    *p++ = '{';
    for (size_t i = 0; i < n; i++) p += sprintf(p, "%s%" PRId64, i ? "," : "", src[k][i]);
    *p++ = '}';
    *p = '\0';
  }
  char cap[16];
  snprintf(cap, sizeof cap, "%d", call->cap);
  const char *v[] = {call->envelope_id, call->template_id, call->body, a[0], cap, a[1], a[2]};
  PGresult *r = PQexecParams(c, sql, 7, NULL, v, NULL, NULL, 0);
  bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
  if (!ok) bench_pg_error(c, r, "verify bulk");
  long got[4] = {0};
  for (int k = 0; ok && k < 4; k++) got[k] = strtol(PQgetvalue(r, 0, k), NULL, 10);
  ok = ok && got[0] == 1 && got[1] == (long)n && got[2] == (long)n && got[3] == (long)n;
  if (!ok)
    fprintf(stderr,
            "bench: verify bulk: envelope %ld/1, matching rows %ld/%zu, messages %ld, jobs %ld\n",
            got[0], got[1], n, got[2], got[3]);
  PQclear(r);
  for (int k = 0; k < 3; k++) free(a[k]);
  return ok;
}

static bool verify_trigger(PGconn *c, const trigger_call *call, int64_t mid, int64_t jid) {
  static const char sql[] =
      "SELECT count(*) FROM " SCHEMA ".cairnloop_messages m"
      " JOIN " SCHEMA ".cairnloop_delivery_jobs j ON j.message_id = m.id"
      " WHERE m.id = $1::bigint AND j.id = $2::bigint AND m.conversation_id = $3::bigint"
      "   AND m.content = $5 AND m.role = 'system_outbound'"
      "   AND m.metadata = jsonb_build_object('template_id', $4::text, 'status', 'pending',"
      "                                       'bulk_envelope_id', NULL)"
      "   AND j.conversation_id = $3::bigint AND j.template_id = $4 AND j.bulk_envelope_id IS NULL"
      "   AND j.args = jsonb_build_object('message_id', m.id, 'conversation_id', $3::bigint,"
      "                                   'template_id', $4::text, 'bulk_envelope_id', NULL)"
      "   AND j.worker = 'outbound' AND j.state = 'available' AND j.attempt = 0";
  char a[24], b[24], cid[24];
  snprintf(a, sizeof a, "%" PRId64, mid);
  snprintf(b, sizeof b, "%" PRId64, jid);
  snprintf(cid, sizeof cid, "%" PRId64, call->conversation_id);
  const char *v[] = {a, b, cid, call->template_id, call->content};
  PGresult *r = PQexecParams(c, sql, 5, NULL, v, NULL, NULL, 0);
  bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 0), "1") == 0;
  if (!ok) bench_pg_error(c, r, "verify trigger (rows differ from the engine's)");
  PQclear(r);
  return ok;
}

/* ------------------------------------------------------------------ */
/* Phases                                                               */
/* ------------------------------------------------------------------ */

typedef struct bench_ctx {
  PGconn *admin; /* on the bench database: checks, checkpoints */
  int64_t *pool; /* conversation ids */
  size_t npool;
  int64_t *cohort;
  ids_out out;
  uint64_t seq; /* template id counter: every call gets a fresh one */
  contender bulk[MAX_CONTENDERS];
  int nbulk;
  contender trig[MAX_CONTENDERS];
  int ntrig;
  int cap;
} bench_ctx;

/* A random cohort of n distinct ids (partial Fisher-Yates over the pool);
 * returns its size, n or the pool's size if that is smaller. */
static size_t sample_cohort(bench_ctx *b, size_t n) {
  if (n > b->npool) n = b->npool; /* a cohort cannot outgrow the pool */
  for (size_t i = 0; i < n; i++) {
    size_t j = i + (size_t)(rng() % (b->npool - i));
    int64_t t = b->pool[i];
    b->pool[i] = b->pool[j];
    b->pool[j] = t;
    b->cohort[i] = b->pool[i];
  }
  return n;
}

static double run_bulk(bench_ctx *b, contender *c, size_t n, double *cpu) {
  char tid[64];
  snprintf(tid, sizeof tid, "bench-%s-%" PRIu64, c->name, ++b->seq);
  bulk_call call = {b->cohort, n, tid, BENCH_BODY, {0}, b->cap};
  if (c->prepare) c->prepare(c->ctx, &call);
  double c0 = cpu_ms(), t0 = bench_now_ms();
  int rc = c->bulk(c->ctx, &call, &b->out);
  double ms = bench_now_ms() - t0;
  if (cpu) *cpu = cpu_ms() - c0 + (c->child_cpu ? c->child_cpu(c->ctx) : 0);
  if (rc != 0) {
    fprintf(stderr, "bench: %s failed at N=%zu\n", c->name, n);
    exit(1);
  }
  if (c->finish) c->finish(c->ctx, &call, &b->out);
  return ms;
}

static void trigger_content(char *out, size_t n, const char *tid) {
  /* The engine's default content, which every contender writes. */
  snprintf(out, n, "Outbound message using template: %s", tid);
}

static double run_trigger(bench_ctx *b, contender *c, trigger_call *call, int64_t *mid,
                          int64_t *jid, double *cpu) {
  (void)b;
  double c0 = cpu_ms(), t0 = bench_now_ms();
  int rc = c->trigger(c->ctx, call, mid, jid);
  double ms = bench_now_ms() - t0;
  if (cpu) *cpu = cpu_ms() - c0;
  if (rc != 0) {
    fprintf(stderr, "bench: %s trigger failed\n", c->name);
    exit(1);
  }
  return ms;
}

static void new_trigger_call(bench_ctx *b, const contender *c, trigger_call *call, char *tid,
                             size_t tidn, char *content, size_t cn) {
  snprintf(tid, tidn, "bench-%s-%" PRIu64, c->name, ++b->seq);
  trigger_content(content, cn, tid);
  call->conversation_id = b->pool[rng() % b->npool];
  call->template_id = tid;
  call->content = content;
}

/* One call of every contender, each checked row by row against the engine's
 * shape (and, for the audited ones, their audit row). */
static void verify_all(bench_ctx *b) {
  size_t n = sample_cohort(b, 25);
  for (int i = 0; i < b->nbulk; i++) {
    contender *c = &b->bulk[i];
    char tid[64];
    snprintf(tid, sizeof tid, "bench-verify-%s-%" PRIu64, c->name, ++b->seq);
    bulk_call call = {b->cohort, n, tid, BENCH_BODY, {0}, b->cap};
    if (c->prepare) c->prepare(c->ctx, &call);
    bool ok = c->bulk(c->ctx, &call, &b->out) == 0;
    if (ok && c->finish) c->finish(c->ctx, &call, &b->out);
    ok = ok && verify_bulk(b->admin, &call, &b->out);
    if (ok && c->audits && !bench_audit_row_exists(b->admin, call.envelope_id, 0, tid)) {
      fprintf(stderr, "bench: %s wrote no audit row for envelope %s\n", c->name, call.envelope_id);
      ok = false;
    }
    if (!ok) {
      fprintf(stderr, "bench: %s does not write the engine's rows\n", c->name);
      exit(1);
    }
  }
  for (int i = 0; i < b->ntrig; i++) {
    contender *c = &b->trig[i];
    char tid[64], content[128];
    trigger_call call;
    int64_t mid = 0, jid = 0;
    new_trigger_call(b, c, &call, tid, sizeof tid, content, sizeof content);
    bool ok = c->trigger(c->ctx, &call, &mid, &jid) == 0 &&
              verify_trigger(b->admin, &call, mid, jid);
    if (ok && c->audits &&
        !bench_audit_row_exists(b->admin, NULL, call.conversation_id, call.template_id)) {
      fprintf(stderr, "bench: %s wrote no audit row for its trigger\n", c->name);
      ok = false;
    }
    if (!ok) {
      fprintf(stderr, "bench: %s does not write the engine's rows\n", c->name);
      exit(1);
    }
  }
}

static void phase_start(bench_ctx *b, contender *cs, int nc, size_t reps) {
  /* Start every phase from a clean checkpoint so one phase's dirty
   * buffers are not flushed on the next one's clock. */
  exec_or_die(b->admin, "CHECKPOINT");
  for (int i = 0; i < nc; i++) {
    free(cs[i].ms);
    free(cs[i].cpu);
    cs[i].ms = calloc(reps, sizeof *cs[i].ms);
    cs[i].cpu = calloc(reps, sizeof *cs[i].cpu);
    cs[i].nms = 0;
    cs[i].rt0 = contender_rt(&cs[i]);
  }
}

static void phase_end(contender *cs, int nc) {
  for (int i = 0; i < nc; i++) {
    cs[i].rt_per_call = !cs[i].counts_round_trips ? NAN
                      : cs[i].nms ? (double)(contender_rt(&cs[i]) - cs[i].rt0) / (double)cs[i].nms
                                  : 0;
    qsort(cs[i].ms, cs[i].nms, sizeof *cs[i].ms, cmp_double);
    qsort(cs[i].cpu, cs[i].nms, sizeof *cs[i].cpu, cmp_double);
  }
}

/* The order of one round: a fresh random permutation, so no contender
 * always runs right after the same other one (a fixed rotation did, and
 * what one contender leaves behind -- dirty buffers, WAL to flush, a
 * descheduled client -- then lands on the same neighbour every time). */
static void round_order(int *order, int nc) {
  for (int i = 0; i < nc; i++) order[i] = i;
  for (int i = nc - 1; i > 0; i--) {
    int j = (int)(rng() % (uint64_t)(i + 1));
    int t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
}

/* Whether contender c takes part in round r.  The per-row shape runs in one
 * round of every `per_row_every`: at large N it is 5-7 times slower than
 * the rest and its ratio needs no precision.  The command runs in one round
 * of every `cli_every`: at small N its time is mostly process start-up,
 * which varies little. */
static bool takes_part(const contender *c, size_t r, size_t per_row_every, size_t cli_every) {
  switch (c->cadence) {
  case PER_ROW_CADENCE:
    return r % per_row_every == 0;
  case CLI_CADENCE:
    return r % cli_every == 0;
  default:
    return true;
  }
}

static void bulk_phase(bench_ctx *b, size_t n, size_t warmup, size_t reps, size_t per_row_every,
                       size_t cli_every) {
  int nc = b->nbulk, order[MAX_CONTENDERS];
  for (size_t w = 0; w < warmup; w++) {
    size_t got = sample_cohort(b, n);
    round_order(order, nc);
    for (int k = 0; k < nc; k++) {
      contender *c = &b->bulk[order[k]];
      if (c->cadence == EVERY_ROUND || w == 0) run_bulk(b, c, got, NULL);
    }
  }
  phase_start(b, b->bulk, nc, reps);
  for (size_t r = 0; r < reps; r++) {
    size_t got = sample_cohort(b, n);
    round_order(order, nc);
    for (int k = 0; k < nc; k++) {
      contender *c = &b->bulk[order[k]];
      if (!takes_part(c, r, per_row_every, cli_every)) continue;
      c->ms[c->nms] = run_bulk(b, c, got, &c->cpu[c->nms]);
      c->nms++;
    }
  }
  phase_end(b->bulk, nc);
}

static void trigger_phase(bench_ctx *b, size_t warmup, size_t reps) {
  int nc = b->ntrig, order[MAX_CONTENDERS];
  char tid[64], content[128];
  trigger_call call;
  int64_t mid, jid;
  for (size_t w = 0; w < warmup; w++)
    for (int k = 0; k < nc; k++) {
      contender *c = &b->trig[(w + (size_t)k) % (size_t)nc];
      new_trigger_call(b, c, &call, tid, sizeof tid, content, sizeof content);
      run_trigger(b, c, &call, &mid, &jid, NULL);
    }
  phase_start(b, b->trig, nc, reps);
  for (size_t r = 0; r < reps; r++) {
    round_order(order, nc);
    for (int k = 0; k < nc; k++) {
      contender *c = &b->trig[order[k]];
      new_trigger_call(b, c, &call, tid, sizeof tid, content, sizeof content);
      c->ms[c->nms] = run_trigger(b, c, &call, &mid, &jid, &c->cpu[c->nms]);
      c->nms++;
    }
  }
  phase_end(b->trig, nc);
}

/* ------------------------------------------------------------------ */
/* Reporting of the phases                                              */
/* ------------------------------------------------------------------ */

static int ceiling_of(const contender *cs, int nc) {
  int best = -1;
  for (int i = 0; i < nc; i++)
    if (cs[i].role == ROLE_SHAPE && (best < 0 || percentile(cs[i].ms, cs[i].nms, 50) <
                                                     percentile(cs[best].ms, cs[best].nms, 50)))
      best = i;
  return best;
}

static int find_contender(const contender *cs, int nc, const char *name) {
  for (int i = 0; i < nc; i++)
    if (strcmp(cs[i].name, name) == 0) return i;
  return -1;
}

typedef struct bulk_summary {
  size_t n, reps[MAX_CONTENDERS];
  char ceiling[32];
  double median[MAX_CONTENDERS], p95[MAX_CONTENDERS], rt[MAX_CONTENDERS];
  double cpu[MAX_CONTENDERS];
  int ceiling_index;
} bulk_summary;

static void summarize_bulk(const bench_ctx *b, size_t n, bulk_summary *s) {
  s->n = n;
  s->ceiling_index = ceiling_of(b->bulk, b->nbulk);
  snprintf(s->ceiling, sizeof s->ceiling, "%s", b->bulk[s->ceiling_index].name);
  for (int i = 0; i < b->nbulk; i++) {
    const contender *c = &b->bulk[i];
    s->reps[i] = c->nms;
    s->median[i] = percentile(c->ms, c->nms, 50);
    s->p95[i] = percentile(c->ms, c->nms, 95);
    s->rt[i] = c->rt_per_call;
    s->cpu[i] = percentile(c->cpu, c->nms, 50);
  }
}

static void fmt_rt(char *out, size_t n, double rt) {
  if (isnan(rt)) snprintf(out, n, "-");
  else bench_fmt_int(out, n, rt);
}

/* The order of the bulk rows after the ceiling. */
static const char *const BULK_ORDER[] = {"engine-c", "engine-lua", "engine+policy", "cli",
                                         "per-row"};

static void report_bulk(const bench_ctx *b, const bulk_summary *sum, int nsum) {
  table *t = table_new(
      "bulk_trigger: envelope + N messages + N jobs, one transaction",
      "N|contender|reps|median ms|p95 ms|recipients/s|ceiling/contender|round trips|client CPU ms",
      "rlrrrrrrr");
  for (int s = 0; s < nsum; s++) {
    const bulk_summary *x = &sum[s];
    int ci = x->ceiling_index;
    int order[8], no = 0;
    order[no++] = ci;
    for (size_t k = 0; k < sizeof BULK_ORDER / sizeof BULK_ORDER[0]; k++) {
      int i = find_contender(b->bulk, b->nbulk, BULK_ORDER[k]);
      if (i >= 0) order[no++] = i;
    }
    for (int k = 0; k < no; k++) {
      int i = order[k];
      char nn[16], name[64], reps[16], med[16], p95[16], rps[32], rt[24], ratio[16], cpu[16];
      bench_fmt_int(nn, sizeof nn, (double)x->n);
      if (k == 0) snprintf(name, sizeof name, "ceiling (%s)", b->bulk[i].name);
      else snprintf(name, sizeof name, "%s", b->bulk[i].name);
      snprintf(reps, sizeof reps, "%zu", x->reps[i]);
      fmt_ms(med, sizeof med, x->median[i]);
      fmt_ms(p95, sizeof p95, x->p95[i]);
      bench_fmt_int(rps, sizeof rps, (double)x->n / (x->median[i] / 1000.0));
      fmt_rt(rt, sizeof rt, x->rt[i]);
      snprintf(ratio, sizeof ratio, "%.2f", x->median[ci] / x->median[i]);
      fmt_ms(cpu, sizeof cpu, x->cpu[i]);
      table_row(t, k == 0 ? nn : "", name, reps, med, p95, rps, ratio, rt, cpu);
    }
  }
  table_note(t, "ceiling/contender = ceiling median / contender median: 1.00 is equal.  The "
                "ceiling is the fastest hand-written shape at that N (next table).  engine-c: "
                "cl_bulk_trigger, no hooks.  engine-lua: engine:bulk_trigger through "
                "build/lua5.4/cairnloop.so in a Lua 5.4 state of this process (the ids list is "
                "built before the clock, the result table inside it).  engine+policy: engine-c "
                "with lua/cairnloop/table_auditor.lua and metrics.lua loaded by cl_load_policy "
                "(one audit row per bulk, the metrics handler on every event, 2N+2 of them).  "
                "cli: one `cairnloop bulk --ids-file F` process per call, its text output read "
                "to the end: process start-up, connecting and printing included; its client "
                "CPU is the process's own user + system time plus this one's spawning and "
                "reading it.  round trips: client waits for the "
                "server per call (- : not counted outside this process).  client CPU: CPU time "
                "per call (median); the rest of the latency is the server and the wait for it.");

  /* Every ceiling shape, so the winner is visible. */
  char cols[256] = "N";
  char align[MAX_COLS + 1] = "r";
  int shapes[MAX_CONTENDERS], ns = 0;
  for (int i = 0; i < b->nbulk; i++)
    if (b->bulk[i].role == ROLE_SHAPE) {
      shapes[ns++] = i;
      strncat(cols, "|", sizeof cols - strlen(cols) - 1);
      strncat(cols, b->bulk[i].name, sizeof cols - strlen(cols) - 1);
      strncat(align, "r", sizeof align - strlen(align) - 1);
    }
  strncat(cols, "|winner", sizeof cols - strlen(cols) - 1);
  strncat(align, "l", sizeof align - strlen(align) - 1);
  table *u = table_new("ceiling candidates: median ms per call (p95 in brackets)", cols, align);
  for (int s = 0; s < nsum; s++) {
    char cell[MAX_CONTENDERS + 2][48];
    const char *row[MAX_COLS] = {0};
    bench_fmt_int(cell[0], sizeof cell[0], (double)sum[s].n);
    row[0] = cell[0];
    for (int k = 0; k < ns && k + 2 < MAX_COLS; k++) {
      char a[16], p[16];
      fmt_ms(a, sizeof a, sum[s].median[shapes[k]]);
      fmt_ms(p, sizeof p, sum[s].p95[shapes[k]]);
      snprintf(cell[k + 1], sizeof cell[k + 1], "%s (%s)", a, p);
      row[k + 1] = cell[k + 1];
    }
    row[ns + 1] = sum[s].ceiling;
    table_row(u, row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9]);
  }
  char note[1024] = "";
  for (size_t i = 0; i < bench_bulk_shapes_count; i++) {
    if (strcmp(bench_bulk_shapes[i].name, "per-row") == 0) continue;
    char line[256];
    snprintf(line, sizeof line, "%s%s: %s.", note[0] ? "  " : "", bench_bulk_shapes[i].name,
             bench_bulk_shapes[i].what);
    strncat(note, line, sizeof note - strlen(note) - 1);
  }
  table_note(u, "%s", note);

  /* Targets: ratios to the ceiling at every N, and the speed-up over the
   * per-row shape at N = 1,000. */
  static const struct {
    const char *name, *label;
    double min;
  } want[] = {{"engine-c", "bulk via the C API", 0.85},
              {"engine-lua", "bulk via the Lua module", 0.85},
              {"engine+policy", "bulk with the ready-made policy", 0.75}};
  for (size_t w = 0; w < sizeof want / sizeof want[0]; w++) {
    int i = find_contender(b->bulk, b->nbulk, want[w].name);
    if (i < 0) continue;
    for (int s = 0; s < nsum; s++) {
      char what[128], nn[16], got[64];
      bench_fmt_int(nn, sizeof nn, (double)sum[s].n);
      double ratio = sum[s].median[sum[s].ceiling_index] / sum[s].median[i];
      snprintf(what, sizeof what, "%s, N = %s: ceiling/engine >= %.2f", want[w].label, nn,
               want[w].min);
      snprintf(got, sizeof got, "%.2f", ratio);
      bench_target(what, got, ratio >= want[w].min);
    }
  }
  int e = find_contender(b->bulk, b->nbulk, "engine-c");
  int pr = find_contender(b->bulk, b->nbulk, "per-row");
  for (int s = 0; s < nsum; s++)
    if (sum[s].n == 1000 && e >= 0 && pr >= 0) {
      double x = sum[s].median[pr] / sum[s].median[e];
      double cx = sum[s].median[pr] / sum[s].median[sum[s].ceiling_index];
      char got[64];
      snprintf(got, sizeof got, "%.1fx (ceiling: %.1fx)", x, cx);
      bench_target("bulk via the C API, N = 1,000: >= 8x the per-row shape", got, x >= 8);
    }
}

static void report_trigger(const bench_ctx *b, size_t reps) {
  table *t = table_new(
      "trigger: one message + one job, one transaction",
      "contender|reps|p50 ms|p99 ms|ops/s at p50|ops/s at p99|ceiling/contender|round trips|client CPU ms",
      "lrrrrrrrr");
  int ci = ceiling_of(b->trig, b->ntrig);
  double cmed = percentile(b->trig[ci].ms, b->trig[ci].nms, 50);
  int order[MAX_CONTENDERS], no = 0;
  order[no++] = ci;
  static const char *const first[] = {"engine-c", "engine-lua", "per-row-1"};
  for (size_t k = 0; k < sizeof first / sizeof first[0]; k++) {
    int i = find_contender(b->trig, b->ntrig, first[k]);
    if (i >= 0 && i != ci) order[no++] = i;
  }
  for (int i = 0; i < b->ntrig; i++)
    if (i != ci && b->trig[i].role == ROLE_SHAPE) order[no++] = i;
  for (int k = 0; k < no; k++) {
    const contender *c = &b->trig[order[k]];
    double p50 = percentile(c->ms, c->nms, 50), p99 = percentile(c->ms, c->nms, 99);
    char name[64], rs[16], a[16], p[16], o50[24], o99[24], rt[16], ratio[16], cpu[16];
    if (k == 0) snprintf(name, sizeof name, "ceiling (%s)", c->name);
    else if (c->role == ROLE_SHAPE) snprintf(name, sizeof name, "  shape %s", c->name);
    else snprintf(name, sizeof name, "%s", c->name);
    snprintf(rs, sizeof rs, "%zu", reps);
    fmt_ms(a, sizeof a, p50);
    fmt_ms(p, sizeof p, p99);
    bench_fmt_int(o50, sizeof o50, 1000.0 / p50);
    bench_fmt_int(o99, sizeof o99, 1000.0 / p99);
    fmt_rt(rt, sizeof rt, c->rt_per_call);
    snprintf(ratio, sizeof ratio, "%.2f", cmed / p50);
    fmt_ms(cpu, sizeof cpu, percentile(c->cpu, c->nms, 50));
    table_row(t, name, rs, a, p, o50, o99, ratio, rt, cpu);
    if (c->role == ROLE_ENGINE) {
      char got[64], cm[16];
      fmt_ms(cm, sizeof cm, cmed);
      snprintf(got, sizeof got, "%.2f (p50 %s vs %s ms)", cmed / p50, a, cm);
      bench_target("trigger via the C API: ceiling/engine >= 0.85 (p50)", got, cmed / p50 >= 0.85);
    }
  }
  char note[1024] = "";
  for (size_t i = 0; i < bench_trigger_shapes_count; i++) {
    char line[256];
    snprintf(line, sizeof line, "%s%s: %s.", note[0] ? "  " : "", bench_trigger_shapes[i].name,
             bench_trigger_shapes[i].what);
    strncat(note, line, sizeof note - strlen(note) - 1);
  }
  table_note(t,
             "One caller, one connection: ops/s is 1000 / latency.  engine-lua: engine:trigger "
             "through the Lua module.  %s",
             note);
}

/* Triggers with policy hooks against the same engine without any. */
static void report_hooks(const bench_ctx *b, size_t reps) {
  table *t = table_new(
      "trigger with policy hooks (Lua, loaded by cl_load_policy) against no hooks",
      "contender|reps|p50 ms|p99 ms|ops/s at p50|hooked/no hooks p50|hooked/no hooks p99|target|round trips|client CPU ms",
      "lrrrrrrrrr");
  int base = find_contender(b->trig, b->ntrig, "engine-c");
  if (base < 0) return;
  double b50 = percentile(b->trig[base].ms, b->trig[base].nms, 50);
  double b99 = percentile(b->trig[base].ms, b->trig[base].nms, 99);
  static const struct {
    const char *name, *label;
    double max;
  } rows[] = {{"engine-c", "no hooks (engine-c)", 0},
              {"engine+policy", "(a) table auditor + metrics handler", 1.3},
              {"engine+noop", "(b) no-op auditor + no-op handler", 1.05},
              {"engine+auditor", "    table auditor alone", 0},
              {"engine+c-auditor", "    a C auditor that accepts at once", 0}};
  for (size_t k = 0; k < sizeof rows / sizeof rows[0]; k++) {
    int i = find_contender(b->trig, b->ntrig, rows[k].name);
    if (i < 0) continue;
    const contender *c = &b->trig[i];
    double p50 = percentile(c->ms, c->nms, 50), p99 = percentile(c->ms, c->nms, 99);
    char rs[16], a[16], p[16], o50[24], r50[16], r99[16], tg[16], rt[16], cpu[16];
    snprintf(rs, sizeof rs, "%zu", reps);
    fmt_ms(a, sizeof a, p50);
    fmt_ms(p, sizeof p, p99);
    bench_fmt_int(o50, sizeof o50, 1000.0 / p50);
    snprintf(r50, sizeof r50, "%.2fx", p50 / b50);
    snprintf(r99, sizeof r99, "%.2fx", p99 / b99);
    tg[0] = '\0';
    if (rows[k].max > 0) snprintf(tg, sizeof tg, "<= %.2fx", rows[k].max);
    fmt_rt(rt, sizeof rt, c->rt_per_call);
    fmt_ms(cpu, sizeof cpu, percentile(c->cpu, c->nms, 50));
    table_row(t, rows[k].label, rs, a, p, o50, r50, r99, tg, rt, cpu);
    if (rows[k].max > 0) {
      char what[128], got[64];
      snprintf(what, sizeof what, "trigger with %s: <= %.2fx no hooks (p50)", rows[k].label + 4,
               rows[k].max);
      snprintf(got, sizeof got, "%.2fx (p50 %s vs %.3f ms)", p50 / b50, a, b50);
      bench_target(what, got, p50 / b50 <= rows[k].max);
    }
  }
  table_note(t, "Same run, same rounds as the trigger table (interleaved in random order).  "
                "(a): lua/cairnloop/table_auditor.lua (one INSERT ... RETURNING through tx:exec "
                "inside the trigger's transaction, its row returned as the audit) and "
                "lua/cairnloop/metrics.lua (one handler on the bounded-metrics events: start and "
                "stop per trigger).  (b): bench/noop_policy.lua, an auditor that returns nothing "
                "and a handler that returns at once, on the same events.  With any auditor the "
                "engine sends its statement in pipeline mode, calls the auditor while the server "
                "runs it, then commits with the Sync that follows (the protocol's implicit "
                "transaction); each tx:exec adds a round trip.  Without one the statement "
                "commits on its own.  The last two rows "
                "split the cost (no target): lua/cairnloop/table_auditor.lua without the "
                "metrics handler, and a no-op auditor written in C (no Lua at all).");
}

/* ------------------------------------------------------------------ */
/* Targets                                                              */
/* ------------------------------------------------------------------ */

#define MAX_TARGETS 32

static struct {
  char *what, *measured;
  bool pass;
} targets[MAX_TARGETS];
static int ntargets;

void bench_target(const char *what, const char *measured, bool pass) {
  if (ntargets == MAX_TARGETS) return;
  targets[ntargets].what = strdup(what);
  targets[ntargets].measured = strdup(measured);
  targets[ntargets].pass = pass;
  ntargets++;
}

static void report_targets(void) {
  table *t = table_new("targets (this run)", "target|measured|result", "lrl");
  int met = 0;
  for (int i = 0; i < ntargets; i++) {
    table_row(t, targets[i].what, targets[i].measured, targets[i].pass ? "pass" : "MISS");
    met += targets[i].pass;
  }
  table_note(t,
             "%d of %d targets met.  Ratios to the ceiling are its median over the "
             "contender's, from the same interleaved rounds.",
             met, ntargets);
}

/* ------------------------------------------------------------------ */
/* main                                                                 */
/* ------------------------------------------------------------------ */

static void usage(void) {
  fprintf(stderr,
          "usage: cl_bench [--out FILE.md] [--explain FILE] [--quick] [--n 25|1000|10000]...\n"
          "                [--cli PATH] [--lua-cpath PATTERN] [--lua-dir DIR] [--bench-dir DIR]\n"
          "                [--no-delivery | --delivery-only]\n"
          "  --quick        few repetitions: a smoke run of the same code paths\n"
          "  --n N          run only the bulk phase(s) named (repeatable)\n"
          "  --cli          the cairnloop command (default build/cairnloop)\n"
          "  --lua-cpath    package.cpath entry of the Lua 5.4 module (default\n"
          "                 build/lua5.4/?.so)\n"
          "  --lua-dir      the ready-made policies (default lua/cairnloop)\n"
          "  --bench-dir    the bench's policy files (default bench)\n"
          "  --no-delivery  skip the `cairnloop work` phase\n"
          "  --delivery-only  run only the `cairnloop work` phase\n"
          "  Needs CAIRNLOOP_PG_URL_BASE (a libpq URI without a database, as\n"
          "  bench/pg.sh run exports); creates and drops the databases " DBNAME " and\n"
          "  cl_bench_work.\n");
}

int main(int argc, char **argv) {
  const char *out_path = NULL, *explain_path = NULL;
  bool quick = false, delivery = true, delivery_only = false;
  size_t only_n[3] = {0};
  int nonly = 0;
  bench_paths paths = {"build/cairnloop", "build/lua5.4/?.so", "lua/cairnloop", "bench"};
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) out_path = argv[++i];
    else if (strcmp(argv[i], "--explain") == 0 && i + 1 < argc) explain_path = argv[++i];
    else if (strcmp(argv[i], "--quick") == 0) quick = true;
    else if (strcmp(argv[i], "--no-delivery") == 0) delivery = false;
    else if (strcmp(argv[i], "--delivery-only") == 0) delivery_only = true;
    else if (strcmp(argv[i], "--cli") == 0 && i + 1 < argc) paths.cli = argv[++i];
    else if (strcmp(argv[i], "--lua-cpath") == 0 && i + 1 < argc) paths.lua_cpath = argv[++i];
    else if (strcmp(argv[i], "--lua-dir") == 0 && i + 1 < argc) paths.lua_dir = argv[++i];
    else if (strcmp(argv[i], "--bench-dir") == 0 && i + 1 < argc) paths.bench_dir = argv[++i];
    else if (strcmp(argv[i], "--n") == 0 && i + 1 < argc && nonly < 3)
      only_n[nonly++] = (size_t)strtoul(argv[++i], NULL, 10);
    else {
      usage();
      return 2;
    }
  }
  const char *base = getenv("CAIRNLOOP_PG_URL_BASE");
  if (!base || !*base) {
    usage();
    return 2;
  }
  double t_start = bench_now_ms();
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (delivery_only) {
    /* For work on the queue: the delivery table alone, quickly. */
    bool ok = bench_worker_report(base, &paths, quick);
    print_text(stdout);
    return ok ? 0 : 1;
  }

  /* The database: created fresh, migrated once by the engine, seeded. */
  bench_create_database(base, DBNAME);
  char *conninfo = bench_conninfo(base, DBNAME);

  cl_config cfg;
  cl_config_init(&cfg);
  cfg.database = conninfo;
  cfg.schema = SCHEMA;
  cl_engine *eng = NULL;
  cl_error err;
  if (cl_open(&eng, &cfg, &err) != CL_OK || cl_migrate(eng, &err) != CL_OK) {
    fprintf(stderr, "bench: engine: %s\n", err.message);
    return 1;
  }
  if (cl_set_max_batch_size(eng, MAX_N, &err) != CL_OK) {
    fprintf(stderr, "bench: cap: %s\n", err.message);
    return 1;
  }

  bench_ctx b = {0};
  b.cap = MAX_N;
  b.admin = connect_or_die(conninfo);
  b.pool = bench_seed(b.admin, &b.npool);
  b.cohort = malloc(MAX_N * sizeof *b.cohort);
  b.out.message_ids = malloc(MAX_N * sizeof(int64_t));
  b.out.job_ids = malloc(MAX_N * sizeof(int64_t));
  if (!b.pool || !b.cohort || !b.out.message_ids || !b.out.job_ids) {
    fprintf(stderr, "bench: out of memory\n");
    exit(1);
  }

  /* The header: machine and server. */
  char machine[1024], server[2048];
  bench_machine(machine, sizeof machine);
  bench_server(b.admin, server, sizeof server);
  printf("Cairnloop bench: the engine (C API, Lua module, command line, ready-made policy) "
         "against hand-written libpq, durable PostgreSQL\n");
  para("%s\n%s\n"
       "data: one database, schema " SCHEMA " migrated by cl_migrate; %d conversations "
       "(%d history messages and one completed job each), %d past envelopes; vacuumed and "
       "analyzed; client and server on this machine, Unix socket",
       machine, server, CONVERSATIONS, HISTORY_PER_CONVERSATION, HISTORY_ENVELOPES);
  print_text(stdout);
  int printed = nsections;

  /* The engine as other users reach it. */
  lua_host *lh = lua_host_open(&paths, conninfo, SCHEMA, MAX_N);
  cli_host *ch = cli_host_open(&paths, conninfo, SCHEMA, MAX_N);
  cl_engine *ready = policy_engine_open(&paths, conninfo, SCHEMA, MAX_N, "ready");
  cl_engine *noop = policy_engine_open(&paths, conninfo, SCHEMA, MAX_N, "noop");
  cl_engine *auditor = policy_engine_open(&paths, conninfo, SCHEMA, MAX_N, "auditor");
  cl_engine *c_noop = policy_engine_open(&paths, conninfo, SCHEMA, MAX_N, "c-noop");
  /* Setup failures end the process: exit, not return, says that nothing
   * is left to release. */
  if (!lh || !ch || !ready || !noop || !auditor || !c_noop) exit(1);

  /* Contenders. */
  for (size_t i = 0; i < bench_bulk_shapes_count; i++) {
    contender *c = &b.bulk[b.nbulk++];
    c->name = bench_bulk_shapes[i].name;
    c->role = strcmp(c->name, "per-row") == 0 ? ROLE_PER_ROW : ROLE_SHAPE;
    c->cadence = c->role == ROLE_PER_ROW ? PER_ROW_CADENCE : EVERY_ROUND;
    c->sh = shape_open(conninfo, SCHEMA, c->name);
    if (!c->sh) exit(1);
    c->ctx = c->sh;
    c->bulk = shape_bulk;
    c->counts_round_trips = true;
  }
  b.bulk[b.nbulk++] = (contender){.name = "engine-c",
                                  .role = ROLE_ENGINE,
                                  .bulk = bench_engine_bulk,
                                  .ctx = eng,
                                  .counts_round_trips = true};
  b.bulk[b.nbulk++] = (contender){.name = "engine-lua",
                                  .role = ROLE_VARIANT,
                                  .bulk = lua_host_bulk,
                                  .prepare = lua_host_prepare,
                                  .finish = lua_host_finish,
                                  .ctx = lh};
  b.bulk[b.nbulk++] = (contender){.name = "engine+policy",
                                  .role = ROLE_VARIANT,
                                  .bulk = bench_engine_bulk,
                                  .ctx = ready,
                                  .counts_round_trips = true,
                                  .audits = true};
  b.bulk[b.nbulk++] = (contender){.name = "cli",
                                  .role = ROLE_VARIANT,
                                  .cadence = CLI_CADENCE,
                                  .bulk = cli_host_bulk,
                                  .prepare = cli_host_prepare,
                                  .finish = cli_host_finish,
                                  .child_cpu = cli_host_child_cpu_ms,
                                  .ctx = ch};
  for (size_t i = 0; i < bench_trigger_shapes_count; i++) {
    contender *c = &b.trig[b.ntrig++];
    c->name = bench_trigger_shapes[i].name;
    c->role = strncmp(c->name, "per-row", 7) == 0 ? ROLE_PER_ROW : ROLE_SHAPE;
    c->sh = shape_open(conninfo, SCHEMA, c->name);
    if (!c->sh) exit(1);
    c->ctx = c->sh;
    c->trigger = shape_trigger;
    c->counts_round_trips = true;
  }
  b.trig[b.ntrig++] = (contender){.name = "engine-c",
                                  .role = ROLE_ENGINE,
                                  .trigger = bench_engine_trigger,
                                  .ctx = eng,
                                  .counts_round_trips = true};
  b.trig[b.ntrig++] = (contender){
      .name = "engine-lua", .role = ROLE_VARIANT, .trigger = lua_host_trigger, .ctx = lh};
  b.trig[b.ntrig++] = (contender){.name = "engine+policy",
                                  .role = ROLE_VARIANT,
                                  .trigger = bench_engine_trigger,
                                  .ctx = ready,
                                  .counts_round_trips = true,
                                  .audits = true};
  b.trig[b.ntrig++] = (contender){.name = "engine+noop",
                                  .role = ROLE_VARIANT,
                                  .trigger = bench_engine_trigger,
                                  .ctx = noop,
                                  .counts_round_trips = true};
  /* Diagnostics that split the hooks' cost: the table auditor without the
   * metrics handler, and an auditor in C (the transaction without Lua). */
  b.trig[b.ntrig++] = (contender){.name = "engine+auditor",
                                  .role = ROLE_VARIANT,
                                  .trigger = bench_engine_trigger,
                                  .ctx = auditor,
                                  .counts_round_trips = true,
                                  .audits = true};
  b.trig[b.ntrig++] = (contender){.name = "engine+c-auditor",
                                  .role = ROLE_VARIANT,
                                  .trigger = bench_engine_trigger,
                                  .ctx = c_noop,
                                  .counts_round_trips = true};

  verify_all(&b);
  printf("\nverified: every contender writes the engine's rows (envelope, messages, jobs, JSON; "
         "audit rows where a policy audits)\n");

  /* Peak RSS first, while this process is still small. */
  bench_rss_report(&paths, conninfo, SCHEMA, b.pool, b.npool, MAX_N);

  /* Bulk phases. */
  static const struct {
    size_t n, warmup, reps, quick_reps, per_row_every, cli_every;
  } plan[] = {{25, 40, 400, 40, 1, 4}, {1000, 6, 80, 8, 4, 2}, {MAX_N, 2, 20, 3, 5, 1}};
  bulk_summary sum[3];
  int nsum = 0;
  for (int p = 0; p < 3; p++) {
    bool wanted = nonly == 0;
    for (int k = 0; k < nonly; k++) wanted = wanted || only_n[k] == plan[p].n;
    if (!wanted) continue;
    size_t reps = quick ? plan[p].quick_reps : plan[p].reps;
    size_t warm = quick ? 1 : plan[p].warmup;
    double t0 = bench_now_ms();
    bulk_phase(&b, plan[p].n, warm, reps, quick ? 1 : plan[p].per_row_every,
               quick ? 1 : plan[p].cli_every);
    summarize_bulk(&b, plan[p].n, &sum[nsum++]);
    printf("bulk N=%zu: %zu rounds of %d contenders in %.1f s\n", plan[p].n, reps, b.nbulk,
           (bench_now_ms() - t0) / 1000);
  }
  if (nsum) report_bulk(&b, sum, nsum);
  double cli_start = cli_startup_ms(&paths, quick ? 5 : 30);
  double conn = connect_ms(conninfo, quick ? 5 : 30);
  para("cli start-up: `cairnloop --version` takes %.2f ms (median: exec and dynamic linking of "
       "the command and libpq's dependencies, no database); a new connection (PQconnectdb, "
       "SELECT 1, PQfinish) %.2f ms.  A `cairnloop bulk` call pays both, then prepares its "
       "statement on a fresh server backend (cold catalog caches), runs it and prints one "
       "line per recipient.",
       cli_start, conn);

  size_t treps = quick ? 200 : 2000;
  double t0 = bench_now_ms();
  trigger_phase(&b, quick ? 20 : 200, treps);
  printf("trigger: %zu reps x %d contenders in %.1f s\n", treps, b.ntrig,
         (bench_now_ms() - t0) / 1000);
  report_trigger(&b, treps);
  report_hooks(&b, treps);

  bench_telemetry_report(eng, noop);
  bench_rss_table(cli_host_peak_rss_kib(ch));

  if (explain_path) {
    shape *cte = NULL;
    for (int i = 0; i < b.nbulk; i++)
      if (strcmp(b.bulk[i].name, "cte") == 0) cte = b.bulk[i].sh;
    bench_explain(eng, cte, b.pool, b.npool, MAX_N, explain_path);
  }

  /* The delivery lane last: its database is separate, its workers are
   * processes of their own. */
  bool delivered = !delivery || bench_worker_report(base, &paths, quick);

  report_targets();
  char load[128];
  bench_loadavg(load, sizeof load);
  para("\ntotal run time %.0f s; load average at the end %s", (bench_now_ms() - t_start) / 1000,
       load);
  /* Print what was not printed yet, then everything as markdown. */
  int all = nsections;
  section *saved = malloc(sizeof sections);
  memcpy(saved, sections, sizeof sections);
  memmove(sections, sections + printed, (size_t)(all - printed) * sizeof *sections);
  nsections = all - printed;
  print_text(stdout);
  memcpy(sections, saved, sizeof sections);
  nsections = all;
  free(saved);
  if (out_path) {
    FILE *f = fopen(out_path, "w");
    if (!f) {
      perror(out_path);
      exit(1);
    }
    fprintf(f, "## Benchmark results\n\n");
    print_markdown(f);
    if (fclose(f) != 0) perror(out_path);
    printf("\nmarkdown: %s\n", out_path);
  }

  for (int i = 0; i < b.nbulk; i++) {
    shape_close(b.bulk[i].sh);
    free(b.bulk[i].ms);
    free(b.bulk[i].cpu);
  }
  for (int i = 0; i < b.ntrig; i++) {
    shape_close(b.trig[i].sh);
    free(b.trig[i].ms);
    free(b.trig[i].cpu);
  }
  lua_host_close(lh);
  cli_host_close(ch);
  cl_close(ready);
  cl_close(noop);
  cl_close(auditor);
  cl_close(c_noop);
  cl_close(eng);
  PQfinish(b.admin);
  free(conninfo);
  free(b.pool);
  free(b.cohort);
  free(b.out.message_ids);
  free(b.out.job_ids);
  if (!delivered) fprintf(stderr, "bench: the delivery phase failed (see above)\n");
  return delivered ? 0 : 1;
}

/* Adds a report section from probes.c and worker.c. */
void bench_para(const char *text) { para("%s", text); }

void *bench_table(const char *title, const char *cols, const char *align) {
  return table_new(title, cols, align);
}

void bench_table_row(void *t, const char *const *cells) {
  table *tt = t;
  table_row(tt, cells[0], tt->ncols > 1 ? cells[1] : "", tt->ncols > 2 ? cells[2] : "",
            tt->ncols > 3 ? cells[3] : "", tt->ncols > 4 ? cells[4] : "",
            tt->ncols > 5 ? cells[5] : "", tt->ncols > 6 ? cells[6] : "",
            tt->ncols > 7 ? cells[7] : "", tt->ncols > 8 ? cells[8] : "",
            tt->ncols > 9 ? cells[9] : "");
}

void bench_table_note(void *t, const char *text) { table_note(t, "%s", text); }
