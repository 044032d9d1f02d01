/*
 * queue.c - the delivery lane: cl_work, its stoppable batch and the idle
 * worker's wait.
 *
 * A batch costs two round trips whatever its size: one statement claims up
 * to `limit` due jobs (rescuing expired leases on the way) together with
 * their message and conversation; the notifier runs per job in C; one
 * statement completes every outcome, passed as arrays.  Without a
 * notifier, claiming and completing are one statement.  Jobs are only
 * completed after delivery, so a worker that dies loses nothing: its lease
 * expires and another claim rescues the job (at-least-once delivery; the
 * idempotency key, "cl-msg-<message id>", is the same on every attempt, so
 * a receiver drops the repeats).  A worker that delivered and then lost
 * its connection keeps the outcomes and records them first thing once it
 * reconnects, while its lease still names it: only a worker that dies
 * causes a repeat.  Uses db.c (the statement table), telemetry.c and the
 * notifier's call point in hooks.c.
 */
#include "engine.h"
#include "hooks.h"

#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/*
 * Where the server's time goes: per delivered job it writes the job row
 * twice (claim, completion) and the message row once, and most of its
 * work is index maintenance.  So a claim changes no indexed column (a HOT
 * update: no index entry written, see migration 20260527064000), and only
 * a job's completion writes index entries.  The statements (src/sql/
 * claim.sql, complete.sql, no_op.sql, next_due.sql) are rows of the
 * statement table, prepared once per connection.
 */

/* ------------------------------------------------------------------ */
/* Small helpers                                                        */
/* ------------------------------------------------------------------ */

/* A growable text buffer for the array parameters of the completion. */
typedef struct sbuf {
  char *p;
  size_t n, cap;
  bool oom;
} sbuf;

static void sb_grow(sbuf *b, size_t more) {
  if (b->oom || b->n + more + 1 <= b->cap) return;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->n + more + 1) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) {
    b->oom = true;
    return;
  }
  b->p = p;
  b->cap = cap;
}

static void sb_put(sbuf *b, const char *s, size_t len) {
  sb_grow(b, len);
  if (b->oom) return;
  memcpy(b->p + b->n, s, len);
  b->n += len;
  b->p[b->n] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_int(sbuf *b, int64_t v) {
  char tmp[24];
  int len = snprintf(tmp, sizeof tmp, "%" PRId64, v);
  sb_put(b, tmp, (size_t)len);
}

/* A JSON string: quotes, backslashes and control characters escaped; bytes
 * that are not UTF-8 (a notifier's reason is arbitrary) become '?'. */
static void sb_json_string(sbuf *b, const char *s) {
  bool utf8 = cl__utf8_valid(s, strlen(s));
  sb_put(b, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') {
      char esc[2] = {'\\', (char)*p};
      sb_put(b, esc, 2);
    } else if (*p < 0x20) {
      char esc[8];
      snprintf(esc, sizeof esc, "\\u%04x", *p);
      sb_str(b, esc);
    } else {
      char c = (!utf8 && *p >= 0x80) ? '?' : (char)*p;
      sb_put(b, &c, 1);
    }
  }
  sb_put(b, "\"", 1);
}

/* "host:pid:random": unique per process (and per engine), readable in the
 * jobs table so an operator can tell which worker holds a lease. */
static void ensure_worker_id(cl_engine *eng) {
  if (eng->worker_id[0]) return;
  char host[64] = "localhost";
  if (gethostname(host, sizeof host) != 0) strcpy(host, "localhost");
  host[sizeof host - 1] = '\0';
  char uuid[CL_UUID_LEN + 1];
  cl__uuid_v4(uuid);
  snprintf(eng->worker_id, sizeof eng->worker_id, "%s:%ld:%.8s", host, (long)getpid(), uuid);
}

static int64_t to_i64(const char *s) { return s ? strtoll(s, NULL, 10) : 0; }

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------ */
/* Telemetry                                                            */
/* ------------------------------------------------------------------ */

#define KV_STR(k, v) \
  { (k), CL_VALUE_STRING, 0, (v) }
#define KV_INT(k, v) \
  { (k), CL_VALUE_INT, (v), NULL }
#define KV_OPT_STR(k, v) \
  { (k), (v) ? CL_VALUE_STRING : CL_VALUE_NIL, 0, (v) }
#define KV_NIL(k) \
  { (k), CL_VALUE_NIL, 0, NULL }
#define NKV(a) (sizeof(a) / sizeof((a)[0]))

/* The metric event (enum-only) and, for sent/failed, the trace event. */
static void emit_delivery(cl_engine *eng, char kind, cl_delivery_reason why,
                          const cl_message *msg) {
  cl__event ev = kind == 's' ? CL__EV_DELIVERY_SENT
               : kind == 'f' ? CL__EV_DELIVERY_FAILED
                             : CL__EV_DELIVERY_NO_OP;
  const char *outcome = kind == 's' ? "sent" : kind == 'f' ? "failed" : "no_op";
  cl_kv m[] = {KV_INT("count", 1)};
  if (cl__tel_on(&eng->tel, ev)) {
    const char *reason = kind == 's' ? "notifier_ok"
                       : kind == 'f' ? cl_delivery_reason_name(why)
                                     : "no_notifier_configured";
    cl_kv md[] = {KV_STR("outcome", outcome), KV_STR("reason", reason)};
    cl__tel_emit(&eng->tel, ev, m, NKV(m), md, NKV(md));
  }
  if (kind == 'n') return; /* no trace event for no_op */
  cl__event tev = kind == 's' ? CL__EV_TRACE_DELIVERY_SENT : CL__EV_TRACE_DELIVERY_FAILED;
  if (!cl__tel_on(&eng->tel, tev)) return;
  cl_kv md[] = {
      KV_STR("openinference.span.kind", "TOOL"),
      KV_OPT_STR("bulk_envelope_id", msg->bulk_envelope_id),
      KV_INT("conversation_id", msg->conversation_id),
      KV_STR("template_id", msg->template_id),
      KV_NIL("actor_id"),
      KV_STR("outcome", outcome),
  };
  cl__tel_emit(&eng->tel, tev, m, NKV(m), md, NKV(md));
}

const char *cl_delivery_reason_name(cl_delivery_reason reason) {
  static const char *const names[] = {
#define XX(name, str) str,
      CL_DELIVERY_REASON_MAP(XX)
#undef XX
  };
  return (unsigned)reason < NKV(names) ? names[reason] : NULL;
}

/* ------------------------------------------------------------------ */
/* Outcomes                                                             */
/* ------------------------------------------------------------------ */

/* The completion's parameters, built as deliveries finish: array literals
 * of all, failed, handed-back and to-be-discarded job ids, the failures'
 * reasons and the least waits as JSON objects keyed by job id; with the
 * counts of what the notifier did, reported when they are recorded. */
typedef struct outcomes {
  sbuf all, failed, released, discard, reasons, waits;
  int n, nfailed, nreleased, ndiscard, nwaits;
  int sent, delivery_failed;
} outcomes;

#define OUTCOME_LISTS(o) \
  { &(o)->all, &(o)->failed, &(o)->released, &(o)->discard, &(o)->reasons, &(o)->waits }

/* A batch delivered but not recorded: eng->pending (engine.h). */
struct cl__pending {
  outcomes o;
};

static void id_list_add(sbuf *b, int *count, int64_t id) {
  sb_str(b, *count ? "," : "{");
  sb_int(b, id);
  (*count)++;
}

/* kind: 's' sent, 'f' failed, 'd' failed and discarded now, 'r' handed back. */
static void outcome_add(outcomes *o, int64_t id, char kind, const char *error, int64_t wait_s) {
  int n = o->n;
  id_list_add(&o->all, &n, id);
  if (kind == 'f' || kind == 'd') {
    sb_str(&o->reasons, o->nfailed ? ",\"" : "{\"");
    sb_int(&o->reasons, id);
    sb_str(&o->reasons, "\":");
    sb_json_string(&o->reasons, error);
    id_list_add(&o->failed, &o->nfailed, id);
    if (kind == 'd') id_list_add(&o->discard, &o->ndiscard, id);
    if (kind == 'f' && wait_s > 0) {
      sb_str(&o->waits, o->nwaits++ ? ",\"" : "{\"");
      sb_int(&o->waits, id);
      sb_str(&o->waits, "\":");
      sb_int(&o->waits, wait_s);
    }
  } else if (kind == 'r') {
    id_list_add(&o->released, &o->nreleased, id);
  }
  o->n++;
}

/* Closes each list ("{}" when empty) for the statement, remembering where
 * it ended so outcomes_reopen can take more; false when memory ran out. */
static bool outcomes_close(outcomes *o, size_t ends[6]) {
  sbuf *lists[] = OUTCOME_LISTS(o);
  bool ok = true;
  for (size_t i = 0; i < NKV(lists); i++) {
    ends[i] = lists[i]->n;
    sb_str(lists[i], lists[i]->n ? "}" : "{}");
    ok = ok && !lists[i]->oom;
  }
  return ok;
}

static void outcomes_reopen(outcomes *o, const size_t ends[6]) {
  sbuf *lists[] = OUTCOME_LISTS(o);
  for (size_t i = 0; i < NKV(lists); i++) {
    lists[i]->n = ends[i];
    if (lists[i]->p) lists[i]->p[ends[i]] = '\0';
  }
}

static void outcomes_free(outcomes *o) {
  sbuf *lists[] = OUTCOME_LISTS(o);
  for (size_t i = 0; i < NKV(lists); i++) free(lists[i]->p);
  memset(o, 0, sizeof *o);
}

/* Runs the completion of closed outcomes once; on success adds what it
 * recorded to stats and batch. */
static cl_status complete_once(cl_engine *eng, const outcomes *o, cl_work_stats *stats,
                               cl_batch_info *batch, cl_error *err) {
  char p_base[32];
  snprintf(p_base, sizeof p_base, "%.3f", eng->backoff_base_ms / 1000.0);
  const char *params[] = {o->all.p,       o->failed.p, o->released.p, o->reasons.p,
                          eng->worker_id, p_base,      o->discard.p,  o->waits.p};
  cl_rows *rows = NULL;
  cl_status st = cl__db_exec(&eng->db, CL__STMT_COMPLETE, false, CL__NPARAMS(params), params, &rows,
                             err);
  if (st != CL_OK) return st;
  stats->sent += o->sent;
  stats->failed += o->delivery_failed;
  stats->retried += (int)to_i64(cl_rows_value(rows, 0, CL__COMPLETE_RETRIED));
  stats->discarded += (int)to_i64(cl_rows_value(rows, 0, CL__COMPLETE_DISCARDED));
  int done = (int)to_i64(cl_rows_value(rows, 0, CL__COMPLETE_RECORDED));
  cl_rows_free(rows);
  if (batch) batch->lost += o->n - done;
  if (done < o->n)
    cl_log(eng, CL_LOG_WARN,
           "%d of %d delivered jobs had lost their lease to another worker: not recorded here",
           o->n - done, o->n);
  return CL_OK;
}

/*
 * Records closed outcomes.  A connection lost on the way (a restarting
 * server) is retried with a short backoff, bounded well inside the lease
 * (from `since_ms`, when the oldest of them was claimed or extended): the
 * deliveries happened, and recording them now spares every one of them a
 * second delivery after the lease runs out.  The statement is idempotent
 * (it only touches rows still leased to this worker).
 */
static cl_status complete(cl_engine *eng, const outcomes *o, int64_t since_ms, cl_work_stats *stats,
                          cl_batch_info *batch, cl_error *err) {
  int64_t window = (int64_t)eng->lease_seconds * 1000 / 2;
  if (window > 10000) window = 10000;
  int delay = 100, retries = 0;
  for (;;) {
    cl_status st = complete_once(eng, o, stats, batch, err);
    if (st == CL_OK && retries)
      cl_log(eng, CL_LOG_INFO, "recorded %d delivered jobs after reconnecting", o->n);
    if (st == CL_OK) return CL_OK;
    /* Only a lost connection is worth retrying; an SQL error would repeat. */
    if (cl__db_session(&eng->db) != 0) return st;
    int64_t now = cl__monotonic_ns() / 1000000;
    if (now - since_ms + delay > window) return st;
    cl_log(eng, CL_LOG_WARN, "completing %d delivered jobs failed (%s); retrying in %d ms", o->n,
           err ? err->message : "connection lost", delay);
    sleep_ms(delay);
    cl_error ignore;
    cl__db_ensure(&eng->db, &ignore);
    delay = delay * 2 > 2000 ? 2000 : delay * 2;
    retries++;
  }
}

/* Keeps outcomes that could not be recorded on the engine (taking over
 * their buffers, closed), for the next call; false when memory ran out. */
static bool keep_pending(cl_engine *eng, outcomes *o) {
  struct cl__pending *p = malloc(sizeof *p);
  if (!p) return false;
  p->o = *o;
  memset(o, 0, sizeof *o);
  eng->pending = p;
  return true;
}

static void pending_free(cl_engine *eng) {
  if (!eng->pending) return;
  outcomes_free(&eng->pending->o);
  free(eng->pending);
  eng->pending = NULL;
}

/* Records the outcomes an earlier call could not (once; the caller's loop
 * retries).  Their lease still names this worker unless it expired and
 * another worker rescued the job, which complete.sql leaves alone. */
static cl_status record_pending(cl_engine *eng, cl_work_stats *stats, cl_batch_info *batch,
                                cl_error *err) {
  outcomes *o = &eng->pending->o;
  cl_status st = complete_once(eng, o, stats, batch, err);
  if (st != CL_OK) return st;
  cl_log(eng, CL_LOG_INFO, "recorded %d delivered jobs after reconnecting", o->n);
  if (batch) batch->recorded_late = o->n;
  pending_free(eng);
  return CL_OK;
}

void cl__queue_release(cl_engine *eng) {
  if (!eng->pending) return;
  cl_work_stats ignore_stats;
  cl_error ignore;
  memset(&ignore_stats, 0, sizeof ignore_stats);
  if (cl__db_ensure(&eng->db, &ignore) == CL_OK &&
      complete_once(eng, &eng->pending->o, &ignore_stats, NULL, &ignore) == CL_OK) {
    cl_log(eng, CL_LOG_INFO, "recorded %d delivered jobs before closing", eng->pending->o.n);
  } else {
    cl_log(eng, CL_LOG_WARN,
           "%d delivered jobs could not be recorded before closing: they will be delivered again "
           "once their lease expires",
           eng->pending->o.n);
  }
  pending_free(eng);
}

/* The batch without a notifier: one statement, then the no_op events. */
static cl_status work_no_op(cl_engine *eng, int limit, cl_work_stats *stats, cl_batch_info *batch,
                            cl_error *err) {
  char p_limit[16], p_max[16];
  snprintf(p_limit, sizeof p_limit, "%d", limit);
  snprintf(p_max, sizeof p_max, "%d", eng->max_attempts);
  const char *params[] = {p_limit, p_max};
  cl_rows *rows = NULL;
  cl_status st = cl__db_exec(&eng->db, CL__STMT_NO_OP, false, CL__NPARAMS(params), params, &rows,
                             err);
  if (st != CL_OK) return st;
  int n = (int)to_i64(cl_rows_value(rows, 0, CL__NO_OP_COMPLETED));
  if (batch) {
    batch->claimed = n;
    batch->rescued = (int)to_i64(cl_rows_value(rows, 0, CL__NO_OP_RESCUED));
  }
  cl_rows_free(rows);
  stats->no_op = n;
  for (int i = 0; i < n && cl__tel_on(&eng->tel, CL__EV_DELIVERY_NO_OP); i++)
    emit_delivery(eng, 'n', CL_REASON_NOTIFIER_ERROR, NULL);
  cl__ok(err);
  return CL_OK;
}

/* ------------------------------------------------------------------ */
/* Deliveries in flight                                                 */
/* ------------------------------------------------------------------ */

/*
 * How the run paces itself.  Finished deliveries are recorded once half
 * the concurrency has finished, once the oldest has waited FLUSH_MS, or
 * when nothing else is going on; the leases of held jobs are renewed once
 * half the lease is spent; with deliveries in flight the notifier's poll
 * waits at most POLL_MS at a time, so the stop flag is read that often.
 */
#define FLUSH_MS 20
#define POLL_MS 100

/* A claim's rows, shared by its deliveries (they point into it). */
typedef struct claim_rows {
  cl_rows *rows;
  int refs;
} claim_rows;

enum { SLOT_READY, SLOT_FLIGHT };

/* One claimed job from its claim until it finishes: the public
 * cl_delivery.  Ready (claimed, not started) and in-flight ones are on the
 * run's `held` list, in claim order; ready ones are its tail part. */
struct cl_delivery {
  struct cl__run *run;
  struct cl_delivery *prev, *next;
  claim_rows *cr;
  int64_t job_id;
  int attempt;
  int state;
  int64_t leased_ms; /* when its lease was last set (claim or renewal) */
  cl_message msg;
  cl_conversation conv;
  char key[48];
};

struct cl__run {
  cl_engine *eng;
  struct cl_delivery *head, *tail; /* held, oldest first */
  struct cl_delivery *ready;       /* first ready one on that list, NULL: none */
  int nready, nflight;
  int started_inline; /* deliveries of this call that finished inside start */
  int started;
  outcomes o;            /* finished, not recorded */
  int64_t first_done_ms; /* when the oldest of them finished */
  int64_t o_since_ms;    /* the oldest lease among them (complete's window) */
  cl_work_stats *stats;
  cl_batch_info *batch;
  const cl_work_options *opts;
  int conc;
};

static int64_t now_ms(void) { return cl__monotonic_ns() / 1000000; }

static void claim_rows_unref(claim_rows *cr) {
  if (--cr->refs > 0) return;
  cl_rows_free(cr->rows);
  free(cr);
}

static void held_unlink(struct cl__run *r, struct cl_delivery *d) {
  if (r->ready == d) r->ready = d->next;
  if (d->prev) d->prev->next = d->next;
  else r->head = d->next;
  if (d->next) d->next->prev = d->prev;
  else r->tail = d->prev;
}

/* Moves a finished (or handed back) delivery into the outcomes and frees it. */
static void finish(struct cl__run *r, struct cl_delivery *d, char kind, cl_delivery_reason why,
                   const char *error, int64_t wait_s) {
  if (d->state == SLOT_READY) r->nready--;
  else r->nflight--;
  held_unlink(r, d);
  if (r->o.n == 0) {
    r->first_done_ms = now_ms();
    r->o_since_ms = d->leased_ms;
  } else if (d->leased_ms < r->o_since_ms) {
    r->o_since_ms = d->leased_ms;
  }
  outcome_add(&r->o, d->job_id, kind, error, wait_s);
  if (kind == 's') r->o.sent++;
  if (kind == 'f' || kind == 'd') r->o.delivery_failed++;
  if (kind != 'r') emit_delivery(r->eng, kind == 's' ? 's' : 'f', why, &d->msg);
  claim_rows_unref(d->cr);
  free(d);
}

void cl_delivery_done(cl_delivery *d, const cl_delivery_result *res) {
  if (d == NULL || d->run == NULL || d->state != SLOT_FLIGHT) return;
  struct cl__run *r = d->run;
  if (res == NULL || res->verdict == CL_DELIVERY_SENT) {
    finish(r, d, 's', CL_REASON_NOTIFIER_ERROR, NULL, 0);
    return;
  }
  cl_delivery_reason why = cl_delivery_reason_name(res->reason) ? res->reason
                                                                : CL_REASON_NOTIFIER_ERROR;
  const char *text = res->message && *res->message ? res->message : cl_delivery_reason_name(why);
  finish(r, d, res->verdict == CL_DELIVERY_DISCARDED ? 'd' : 'f', why, text,
         res->retry_after_seconds > 0 ? res->retry_after_seconds : 0);
}

/* Starts the first ready delivery. */
static void start_one(struct cl__run *r) {
  cl_engine *eng = r->eng;
  struct cl_delivery *d = r->ready;
  r->ready = d->next;
  r->nready--;
  r->nflight++;
  r->started++;
  d->state = SLOT_FLIGHT;
  if (eng->notifier_async) {
    /* Read through eng: start may finish the delivery (cl_delivery_done). */
    int before = eng->run->nflight;
    cl__deliver_start(eng, d, &d->msg, &d->conv, d->key, d->attempt);
    if (eng->run->nflight < before) r->started_inline++;
    return;
  }
  cl_error nerr;
  cl_status ns = cl__deliver(eng, &d->msg, &d->conv, d->key, d->attempt, &nerr);
  r->started_inline++;
  if (ns == CL_OK) {
    finish(r, d, 's', CL_REASON_NOTIFIER_ERROR, NULL, 0);
  } else {
    const char *error = nerr.message[0] ? nerr.message : cl_status_name(ns);
    finish(r, d, 'f', CL_REASON_NOTIFIER_ERROR, error, 0);
  }
}

/* Claims up to `n` due jobs onto the ready part of the held list. */
static cl_status claim(struct cl__run *r, int n, int *got, cl_error *err) {
  cl_engine *eng = r->eng;
  char p_limit[16], p_lease[16], p_max[16];
  snprintf(p_limit, sizeof p_limit, "%d", n);
  snprintf(p_lease, sizeof p_lease, "%d", eng->lease_seconds);
  snprintf(p_max, sizeof p_max, "%d", eng->max_attempts);
  const char *params[] = {p_limit, eng->worker_id, p_lease, p_max};
  cl_rows *rows = NULL;
  int64_t at = now_ms();
  *got = 0;
  cl_status st = cl__db_exec(&eng->db, CL__STMT_CLAIM, false, CL__NPARAMS(params), params, &rows,
                             err);
  if (st != CL_OK) return st;
  int count = cl_rows_count(rows);
  if (r->batch) {
    r->batch->claimed += count;
    r->batch->rescued += count ? (int)to_i64(cl_rows_value(rows, 0, CL__CLAIM_RESCUED)) : 0;
  }
  claim_rows *cr = count ? malloc(sizeof *cr) : NULL;
  if (count && !cr) {
    /* Unrecorded, the jobs go back when their lease expires. */
    cl_rows_free(rows);
    return cl__fail(err, CL_DB_ERROR, "out of memory claiming %d jobs", count);
  }
  if (cr) {
    cr->rows = rows;
    cr->refs = 1; /* this function's, dropped below */
  } else {
    cl_rows_free(rows);
  }
  for (int i = 0; i < count; i++) {
    struct cl_delivery *d = calloc(1, sizeof *d);
    if (!d) {
      cl_log(eng, CL_LOG_ERROR, "out of memory: %d claimed jobs wait for their lease to expire",
             count - i);
      break;
    }
    d->run = r;
    d->cr = cr;
    cr->refs++;
    d->job_id = to_i64(cl_rows_value(rows, i, CL__CLAIM_JOB_ID));
    d->attempt = (int)to_i64(cl_rows_value(rows, i, CL__CLAIM_ATTEMPT));
    d->leased_ms = at;
    d->msg = (cl_message){
        .id = to_i64(cl_rows_value(rows, i, CL__CLAIM_MESSAGE_ID)),
        .conversation_id = to_i64(cl_rows_value(rows, i, CL__CLAIM_CONVERSATION_ID)),
        .role = cl_rows_value(rows, i, CL__CLAIM_ROLE),
        .content = cl_rows_value(rows, i, CL__CLAIM_CONTENT),
        .template_id = cl_rows_value(rows, i, CL__CLAIM_TEMPLATE_ID),
        .status = cl_rows_value(rows, i, CL__CLAIM_STATUS),
        .bulk_envelope_id = cl_rows_value(rows, i, CL__CLAIM_ENVELOPE_ID),
    };
    d->conv = (cl_conversation){
        .id = d->msg.conversation_id,
        .status = cl_rows_value(rows, i, CL__CLAIM_CONVERSATION_STATUS),
        .subject = cl_rows_value(rows, i, CL__CLAIM_SUBJECT),
        .customer_ref = cl_rows_value(rows, i, CL__CLAIM_CUSTOMER_REF),
    };
    /* Stable per message: the same on every attempt and after a rescue,
     * so a receiver can drop the repeats the queue produces. */
    snprintf(d->key, sizeof d->key, "cl-msg-%" PRId64, d->msg.id);
    d->state = SLOT_READY;
    d->prev = r->tail;
    if (r->tail) r->tail->next = d;
    else r->head = d;
    r->tail = d;
    if (!r->ready) r->ready = d;
    r->nready++;
    (*got)++;
  }
  if (cr) claim_rows_unref(cr);
  return CL_OK;
}

/* Renews the lease of every held job once the oldest is half spent. */
static cl_status renew_leases(struct cl__run *r, cl_error *err) {
  cl_engine *eng = r->eng;
  if (!r->head || now_ms() - r->head->leased_ms < (int64_t)eng->lease_seconds * 500) return CL_OK;
  sbuf ids = {0};
  int n = 0;
  for (struct cl_delivery *d = r->head; d; d = d->next) id_list_add(&ids, &n, d->job_id);
  sb_str(&ids, "}");
  if (ids.oom) {
    free(ids.p);
    return cl__fail(err, CL_DB_ERROR, "out of memory renewing %d leases", n);
  }
  char p_lease[16];
  snprintf(p_lease, sizeof p_lease, "%d", eng->lease_seconds);
  const char *params[] = {ids.p, eng->worker_id, p_lease};
  cl_rows *rows = NULL;
  int64_t at = now_ms();
  cl_status st = cl__db_exec(&eng->db, CL__STMT_EXTEND, false, CL__NPARAMS(params), params, &rows,
                             err);
  free(ids.p);
  if (st != CL_OK) return st;
  int kept = (int)to_i64(cl_rows_value(rows, 0, CL__EXTEND_EXTENDED));
  cl_rows_free(rows);
  for (struct cl_delivery *d = r->head; d; d = d->next) d->leased_ms = at;
  if (kept < n)
    cl_log(eng, CL_LOG_WARN,
           "%d of %d held jobs had lost their lease to another worker before it was renewed",
           n - kept, n);
  else cl_log(eng, CL_LOG_DEBUG, "renewed the lease of %d held jobs", n);
  return CL_OK;
}

/* Records the finished deliveries; on failure they stay for a later try. */
/* Appends src's outcomes to dst's (both open) and empties src; false when
 * memory ran out.  Every list is "{a,b" text, or empty. */
static bool outcomes_merge(outcomes *dst, outcomes *src) {
  sbuf *d[] = OUTCOME_LISTS(dst), *f[] = OUTCOME_LISTS(src);
  for (size_t i = 0; i < NKV(d); i++) {
    if (f[i]->n == 0) continue;
    if (d[i]->n == 0) sb_put(d[i], f[i]->p, f[i]->n);
    else {
      sb_put(d[i], ",", 1);
      sb_put(d[i], f[i]->p + 1, f[i]->n - 1);
    }
    if (d[i]->oom) return false;
  }
  dst->n += src->n;
  dst->nfailed += src->nfailed;
  dst->nreleased += src->nreleased;
  dst->ndiscard += src->ndiscard;
  dst->nwaits += src->nwaits;
  dst->sent += src->sent;
  dst->delivery_failed += src->delivery_failed;
  outcomes_free(src);
  return true;
}

/* Records the finished deliveries.  They leave r->o first: deliveries that
 * finish while the statement runs (the waiter) start a new set.  On
 * failure they go back in front of those, for a later try. */
static cl_status flush(struct cl__run *r, cl_error *err) {
  outcomes o = r->o;
  int64_t since = r->o_since_ms;
  memset(&r->o, 0, sizeof r->o);
  size_t ends[6];
  cl_status st = outcomes_close(&o, ends)
                   ? complete(r->eng, &o, since, r->stats, r->batch, err)
                   : cl__fail(err, CL_DB_ERROR, "out of memory completing %d jobs", o.n);
  if (st == CL_OK) {
    outcomes_free(&o);
    return CL_OK;
  }
  outcomes_reopen(&o, ends);
  if (r->o.n && r->o_since_ms < since) since = r->o_since_ms;
  if (r->o.n && !outcomes_merge(&o, &r->o))
    cl_log(r->eng, CL_LOG_ERROR, "out of memory: outcomes of delivered jobs were dropped");
  outcomes_free(&r->o);
  r->o = o;
  r->o_since_ms = since;
  if (r->first_done_ms == 0) r->first_done_ms = now_ms();
  return st;
}

/* The token bucket of opts->rate: takes one token if there is one, else
 * says in *wait_ms when the next comes. */
static bool take_token(cl_engine *eng, double rate, int *wait_ms) {
  if (rate <= 0) return true;
  double cap = rate / 10 > 1 ? rate / 10 : 1;
  int64_t now = cl__monotonic_ns();
  if (eng->rate != rate) {
    eng->rate = rate;
    eng->rate_tokens = cap;
    eng->rate_at_ns = now;
  }
  eng->rate_tokens += (double)(now - eng->rate_at_ns) / 1e9 * rate;
  if (eng->rate_tokens > cap) eng->rate_tokens = cap;
  eng->rate_at_ns = now;
  if (eng->rate_tokens >= 1) {
    eng->rate_tokens -= 1;
    return true;
  }
  *wait_ms = (int)((1 - eng->rate_tokens) / rate * 1000) + 1;
  return false;
}

static int min_int(int a, int b) { return a < b ? a : b; }

/*
 * db.c's waiter while the run's statements wait for the server: drives the
 * deliveries in flight (their notifier's poll, without waiting) and starts
 * claimed ones in the slots that freed, then waits on the socket, at most
 * a millisecond while deliveries are in flight.  So the network never
 * waits for the database.
 */
static void run_wait(void *ud, int fd, int ms) {
  struct cl__run *r = ud;
  cl_engine *eng = r->eng;
  const cl_work_options *o = r->opts;
  int token_wait = 0;
  if (r->nflight > 0) cl__deliver_poll(eng, 0);
  while (r->ready && r->nflight < r->conc && !(o->stop && *o->stop) &&
         take_token(eng, o->rate, &token_wait))
    start_one(r);
  struct pollfd p = {.fd = fd, .events = POLLIN};
  (void)poll(&p, 1, r->nflight > 0 && ms > 1 ? 1 : ms); /* EINTR: db.c asks again */
}

/*
 * The run: claim, start, wait, record, until `limit` jobs are done or
 * nothing more is due.  `chunk_all`: claim the whole limit at once and
 * deliver it in one pass (cl_work_batch's two round trips per batch).
 * Nothing is claimed after a database error or once stop is set; the
 * deliveries in flight always finish before it returns.
 */
static cl_status run_deliveries(struct cl__run *r, const cl_work_options *o, bool chunk_all,
                                cl_error *err) {
  cl_engine *eng = r->eng;
  int conc = o->concurrency > 0 ? o->concurrency : 1;
  int claimed = 0, flush_at = conc / 2 > 1 ? conc / 2 : 1;
  bool drained = false;
  cl_status st = CL_OK;
  cl_error first; /* the failure, reported when the run ends */
  for (;;) {
    bool stopping = (o->stop && *o->stop) || st != CL_OK;
    int token_wait = 0;
    /* Hand back what is not started when asked to stop (or the database
     * failed): another worker takes it at once. */
    while (stopping && r->ready) {
      if (r->batch) r->batch->released++;
      finish(r, r->ready, 'r', CL_REASON_NOTIFIER_ERROR, NULL, 0);
    }
    while (!stopping && r->ready && r->nflight < conc) {
      /* A slow synchronous notifier: renew before a lease runs out. */
      if ((st = renew_leases(r, &first)) != CL_OK) break;
      if (!take_token(eng, o->rate, &token_wait)) break;
      start_one(r);
      if (o->stop && *o->stop) break;
    }
    if (st != CL_OK) {
      /* No more statements: let what is in flight finish; what finished
       * is kept for the next call (work_run). */
      if (r->ready) continue;
      if (r->nflight == 0) break;
      cl__deliver_poll(eng, POLL_MS);
      continue;
    }
    bool idle = !r->ready && r->nflight == 0;
    /* In flight, the next jobs are claimed while the slots are still busy
     * (once fewer than half a round is ready), so a slot that frees starts
     * one at once; otherwise when everything claimed is done. */
    bool ahead = !chunk_all &&
                 (r->started_inline < r->started || (r->started == 0 && eng->notifier_async));
    bool room = ahead ? 2 * r->nready < conc : !r->ready && r->nflight < conc;
    bool want_claim = !stopping && !drained && claimed < o->limit && room;
    if (r->o.n &&
        (idle || want_claim || r->o.n >= flush_at || now_ms() - r->first_done_ms >= FLUSH_MS)) {
      if ((st = flush(r, &first)) != CL_OK) continue;
    }
    if (want_claim) {
      /* Synchronous deliveries gain nothing from small claims; in-flight
       * ones claim what the free slots and one more round can take. */
      int left = o->limit - claimed, n = left;
      if (ahead) n = min_int(left, 2 * conc - r->nflight - r->nready);
      if (o->rate > 0) n = min_int(n, o->rate > 1 ? (int)o->rate : 1);
      int got = 0;
      if ((st = claim(r, n, &got, &first)) != CL_OK) continue;
      claimed += got;
      if (got < n) drained = true;
      continue;
    }
    if (idle) break; /* and nothing left to record: flushed above */
    if (!stopping && (st = renew_leases(r, &first)) != CL_OK) continue;
    if (r->nflight > 0) {
      int wait = POLL_MS;
      if (r->o.n) wait = min_int(wait, (int)(r->first_done_ms + FLUSH_MS - now_ms()));
      if (token_wait) wait = min_int(wait, token_wait);
      cl__deliver_poll(eng, wait > 0 ? wait : 0);
    } else if (token_wait) {
      int ms = min_int(token_wait, POLL_MS);
      sleep_ms(ms);
      if (r->batch) r->batch->rate_wait_ms += ms;
    }
  }
  if (st != CL_OK && err) *err = first;
  return st;
}

/* The common body of cl_work_run and cl_work_batch, after their entry
 * guard (which names the public function). */
static cl_status work_run(cl_engine *eng, const cl_work_options *o, bool chunk_all,
                          cl_work_stats *stats, cl_batch_info *batch, cl_error *err) {
  if (!o) return cl__fail(err, CL_INVALID_ARGUMENT, "work: no options");
  if (o->limit < 1 || o->limit > CL_WORK_MAX_LIMIT)
    return cl__fail(err, CL_INVALID_ARGUMENT, "limit must be from 1 to %d, got %d",
                    CL_WORK_MAX_LIMIT, o->limit);
  if (o->concurrency < 0 || o->concurrency > CL_WORK_MAX_CONCURRENCY)
    return cl__fail(err, CL_INVALID_ARGUMENT, "concurrency must be from 1 to %d, got %d",
                    CL_WORK_MAX_CONCURRENCY, o->concurrency);
  if (!(o->rate >= 0 && o->rate <= 1e6))
    return cl__fail(err, CL_INVALID_ARGUMENT,
                    "rate must be from 0 (no limit) to 1000000 per second");
  if (eng->run) return cl__fail(err, CL_INVALID_ARGUMENT, "work: already running on this engine");
  ensure_worker_id(eng);
  /* Finished jobs past their retention, at most once an interval (ops.c). */
  int64_t pruned = cl__ops_retention_pass(eng);
  if (batch) batch->pruned = (int)pruned;

  /* Outcomes kept from a lost connection go first: until they are
   * recorded, nothing new is claimed. */
  cl_status st = eng->pending ? record_pending(eng, stats, batch, err) : CL_OK;
  if (st != CL_OK) return st;
  if (!eng->has_notifier) return work_no_op(eng, o->limit, stats, batch, err);

  struct cl__run r = {.eng = eng,
                      .stats = stats,
                      .batch = batch,
                      .opts = o,
                      .conc = o->concurrency > 0 ? o->concurrency : 1};
  eng->run = &r;
  if (eng->notifier_async) {
    eng->db.waiter = run_wait;
    eng->db.waiter_ud = &r;
  }
  st = run_deliveries(&r, o, chunk_all, err);
  eng->db.waiter = NULL;
  eng->db.waiter_ud = NULL;
  eng->run = NULL;
  /* What finished but could not be recorded stays on the engine for the
   * next call (the counts are reported then). */
  if (r.o.n) {
    size_t ends[6];
    if (outcomes_close(&r.o, ends) && cl__db_session(&eng->db) == 0 && keep_pending(eng, &r.o))
      cl_log(eng, CL_LOG_WARN,
             "%d delivered jobs are kept to be recorded once the database is reachable again",
             eng->pending->o.n);
  }
  outcomes_free(&r.o);
  if (st == CL_OK) cl__ok(err);
  return st;
}

cl_status cl_work_run(cl_engine *eng, const cl_work_options *opts, cl_work_stats *stats,
                      cl_batch_info *batch, cl_error *err) {
  cl_work_stats scratch;
  if (!stats) stats = &scratch;
  memset(stats, 0, sizeof *stats);
  if (batch) memset(batch, 0, sizeof *batch);
  CL__ENTER(eng, err);
  return work_run(eng, opts, false, stats, batch, err);
}

cl_status cl_work_batch(cl_engine *eng, int limit, const volatile sig_atomic_t *stop,
                        cl_work_stats *stats, cl_batch_info *batch, cl_error *err) {
  cl_work_stats scratch;
  if (!stats) stats = &scratch;
  memset(stats, 0, sizeof *stats);
  if (batch) memset(batch, 0, sizeof *batch);
  CL__ENTER(eng, err);
  cl_work_options o = {.limit = limit, .concurrency = 1, .stop = stop};
  return work_run(eng, &o, true, stats, batch, err);
}

cl_status cl_work(cl_engine *eng, int limit, cl_work_stats *stats, cl_error *err) {
  if (stats) memset(stats, 0, sizeof *stats);
  CL__ENTER(eng, err);
  return cl_work_batch(eng, limit, NULL, stats, NULL, err);
}

/* ------------------------------------------------------------------ */
/* The idle worker's wait                                               */
/* ------------------------------------------------------------------ */

cl_status cl_work_wait(cl_engine *eng, int max_ms, int wake_fd, cl_wake *why, cl_error *err) {
  if (why) *why = CL_WAKE_TIMEOUT;
  CL__ENTER(eng, err);
  if (!why) return cl__fail(err, CL_INVALID_ARGUMENT, "work_wait: no place for the reason");
  cl__db *db = &eng->db;
  cl_status st = cl__db_ensure(db, err);
  if (st != CL_OK) return st;

  /* The job channel, as the trigger of migration 20260527065000 names it:
   * cut to 63 bytes, an identifier's length (schema names are ASCII). */
  char channel[64];
  snprintf(channel, sizeof channel, "cairnloop_jobs:%.48s", eng->schema);
  const char *params[] = {channel};
  cl_rows *rows = NULL;
  st = cl__db_exec(db, CL__STMT_NEXT_DUE, false, CL__NPARAMS(params), params, &rows, err);
  if (st != CL_OK) return st;
  /* Behind a transaction pooler (no_prepared_statements) a LISTEN would
   * subscribe whichever server session the pooler lent for it, and the
   * notifications would go nowhere: poll instead, at most every
   * CL_POOLER_POLL_MS, and wake at the next due job as usual. */
  int64_t limit = max_ms < 0 ? 0 : max_ms;
  if (db->unnamed) {
    if (limit > CL_POOLER_POLL_MS) limit = CL_POOLER_POLL_MS;
    if (!eng->poll_noted) {
      eng->poll_noted = true;
      cl_log(eng, CL_LOG_INFO,
             "work: polling for jobs every %d ms (no LISTEN: no_prepared_statements is set)",
             CL_POOLER_POLL_MS);
    }
  } else if (cl_rows_value(rows, 0, CL__NEXT_DUE_LISTENING)[0] != 't') {
    /* A new session (first wait, or after a reconnect) does not listen
     * yet.  Subscribe, then look again: a job inserted before the LISTEN
     * shows in the second look, one inserted after it sends a wake-up. */
    cl_rows_free(rows);
    rows = NULL;
    st = cl__db_listen(db, channel, err);
    if (st == CL_OK)
      st = cl__db_exec(db, CL__STMT_NEXT_DUE, false, CL__NPARAMS(params), params, &rows, err);
    if (st != CL_OK) return st;
  }
  cl__ops_note_paused(eng, cl_rows_value(rows, 0, CL__NEXT_DUE_PAUSED)[0] == 't');
  const char *v = cl_rows_value(rows, 0, CL__NEXT_DUE_IN_MS);
  int64_t wait = limit;
  if (v) {
    int64_t due = to_i64(v);
    if (due <= 0) {
      cl_rows_free(rows);
      *why = CL_WAKE_DUE;
      cl__ok(err);
      return CL_OK;
    }
    if (due < wait) wait = due;
  }
  cl_rows_free(rows);

  switch (cl__db_wait(db, (int)wait, wake_fd)) {
  case CL__DB_WAKE_NOTIFY:
    *why = CL_WAKE_NOTIFIED;
    break;
  case CL__DB_WAKE_FD:
    *why = CL_WAKE_FD;
    break;
  case CL__DB_WAKE_SIGNAL:
    *why = CL_WAKE_SIGNAL;
    break;
  case CL__DB_WAKE_TIMEOUT:
    *why = wait < limit ? CL_WAKE_DUE : CL_WAKE_TIMEOUT;
    break;
  case CL__DB_WAKE_LOST:
    return cl__fail(err, CL_DB_ERROR, "connection lost while waiting for jobs");
  }
  cl__ok(err);
  return CL_OK;
}
