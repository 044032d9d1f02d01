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
static void emit_delivery(cl_engine *eng, char kind, const cl_message *msg) {
  cl__event ev = kind == 's' ? CL__EV_DELIVERY_SENT
               : kind == 'f' ? CL__EV_DELIVERY_FAILED
                             : CL__EV_DELIVERY_NO_OP;
  const char *outcome = kind == 's' ? "sent" : kind == 'f' ? "failed" : "no_op";
  cl_kv m[] = {KV_INT("count", 1)};
  if (cl__tel_on(&eng->tel, ev)) {
    const char *reason = kind == 's' ? "notifier_ok"
                       : kind == 'f' ? "notifier_returned_error"
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

/* ------------------------------------------------------------------ */
/* The batch                                                            */
/* ------------------------------------------------------------------ */

/* The completion's parameters, built while the notifier runs: array
 * literals of all, failed and handed-back job ids, and the failures'
 * reasons as a JSON object keyed by job id; with the counts of what the
 * notifier did, reported when the outcomes are recorded. */
typedef struct outcomes {
  sbuf all, failed, released, reasons;
  int n, nfailed, nreleased;
  int sent, delivery_failed;
} outcomes;

/* A batch delivered but not recorded: eng->pending (engine.h). */
struct cl__pending {
  outcomes o;
};

static void id_list_add(sbuf *b, int *count, int64_t id) {
  sb_str(b, *count ? "," : "{");
  sb_int(b, id);
  (*count)++;
}

static void outcome_add(outcomes *o, int64_t id, char kind, const char *error) {
  int n = o->n;
  id_list_add(&o->all, &n, id);
  if (kind == 'f') {
    sb_str(&o->reasons, o->nfailed ? ",\"" : "{\"");
    sb_int(&o->reasons, id);
    sb_str(&o->reasons, "\":");
    sb_json_string(&o->reasons, error);
    id_list_add(&o->failed, &o->nfailed, id);
  } else if (kind == 'r') {
    id_list_add(&o->released, &o->nreleased, id);
  }
  o->n++;
}

/* Closes each list ("{}" when empty); false when memory ran out. */
static bool outcomes_close(outcomes *o) {
  sbuf *lists[] = {&o->all, &o->failed, &o->released, &o->reasons};
  for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
    sb_str(lists[i], lists[i]->n ? "}" : "{}");
    if (lists[i]->oom) return false;
  }
  return true;
}

static void outcomes_free(outcomes *o) {
  free(o->all.p);
  free(o->failed.p);
  free(o->released.p);
  free(o->reasons.p);
}

/* Runs the completion of closed outcomes once; on success adds what it
 * recorded to stats and batch. */
static cl_status complete_once(cl_engine *eng, const outcomes *o, cl_work_stats *stats,
                               cl_batch_info *batch, cl_error *err) {
  char p_base[32];
  snprintf(p_base, sizeof p_base, "%.3f", eng->backoff_base_ms / 1000.0);
  const char *params[] = {o->all.p,     o->failed.p,    o->released.p,
                          o->reasons.p, eng->worker_id, p_base};
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
 * Completes the batch.  A connection lost on the way (a restarting server)
 * is retried with a short backoff, bounded well inside the lease: the
 * deliveries happened, and recording them now spares every one of them a
 * second delivery after the lease runs out.  The statement is idempotent
 * (it only touches rows still leased to this worker).  When the server
 * stays away longer, the outcomes stay on the engine (eng->pending) for
 * the next call to record.
 */
static cl_status complete(cl_engine *eng, outcomes *o, int64_t claimed_at_ms, cl_work_stats *stats,
                          cl_batch_info *batch, cl_error *err) {
  if (!outcomes_close(o))
    return cl__fail(err, CL_DB_ERROR, "out of memory completing %d jobs", o->n);
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
    if (now - claimed_at_ms + delay > window) return st;
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
 * their buffers), for the next call; false when memory ran out. */
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
static cl_status work_no_op(cl_engine *eng, const char *p_limit, const char *p_max,
                            cl_work_stats *stats, cl_batch_info *batch, cl_error *err) {
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
    emit_delivery(eng, 'n', NULL);
  cl__ok(err);
  return CL_OK;
}

cl_status cl_work_batch(cl_engine *eng, int limit, const volatile sig_atomic_t *stop,
                        cl_work_stats *stats_out, cl_batch_info *batch, cl_error *err) {
  cl_work_stats scratch = {0};
  cl_work_stats *stats = stats_out ? stats_out : &scratch;
  memset(stats, 0, sizeof *stats);
  if (batch) memset(batch, 0, sizeof *batch);
  CL__ENTER(eng, err);
  if (limit < 1 || limit > CL_WORK_MAX_LIMIT)
    return cl__fail(err, CL_INVALID_ARGUMENT, "limit must be from 1 to %d, got %d",
                    CL_WORK_MAX_LIMIT, limit);
  ensure_worker_id(eng);
  /* Finished jobs past their retention, at most once an interval (ops.c). */
  cl__ops_retention_pass(eng);

  char p_limit[16], p_lease[16], p_max[16];
  snprintf(p_limit, sizeof p_limit, "%d", limit);
  snprintf(p_lease, sizeof p_lease, "%d", eng->lease_seconds);
  snprintf(p_max, sizeof p_max, "%d", eng->max_attempts);
  /* Outcomes kept from a lost connection go first: until they are
   * recorded, nothing new is claimed. */
  cl_status st = eng->pending ? record_pending(eng, stats, batch, err) : CL_OK;
  if (st != CL_OK) return st;
  if (!eng->has_notifier) return work_no_op(eng, p_limit, p_max, stats, batch, err);
  const char *params[] = {p_limit, eng->worker_id, p_lease, p_max};
  cl_rows *rows = NULL;
  int64_t claimed_at_ms = cl__monotonic_ns() / 1000000;
  st = cl__db_exec(&eng->db, CL__STMT_CLAIM, false, CL__NPARAMS(params), params, &rows, err);
  if (st != CL_OK) return st;

  int n = cl_rows_count(rows);
  if (batch) {
    batch->claimed = n;
    batch->rescued = n ? (int)to_i64(cl_rows_value(rows, 0, CL__CLAIM_RESCUED)) : 0;
  }
  if (n == 0) {
    cl_rows_free(rows);
    cl__ok(err);
    return CL_OK;
  }

  outcomes o = {0};
  int64_t lease_half_ms = (int64_t)eng->lease_seconds * 500;
  for (int i = 0; i < n; i++) {
    const char *v_bulk = cl_rows_value(rows, i, CL__CLAIM_ENVELOPE_ID);
    int64_t id = to_i64(cl_rows_value(rows, i, CL__CLAIM_JOB_ID));
    int attempt = (int)to_i64(cl_rows_value(rows, i, CL__CLAIM_ATTEMPT));
    /* Hand back what is not started when asked to stop, and once half the
     * lease is spent: a slow notifier must not keep jobs leased past their
     * expiry, where another worker would rescue and deliver them again. */
    if ((stop && *stop) || cl__monotonic_ns() / 1000000 - claimed_at_ms > lease_half_ms) {
      outcome_add(&o, id, 'r', NULL);
      if (batch) batch->released++;
      continue;
    }
    cl_message msg = {
        .id = to_i64(cl_rows_value(rows, i, CL__CLAIM_MESSAGE_ID)),
        .conversation_id = to_i64(cl_rows_value(rows, i, CL__CLAIM_CONVERSATION_ID)),
        .role = cl_rows_value(rows, i, CL__CLAIM_ROLE),
        .content = cl_rows_value(rows, i, CL__CLAIM_CONTENT),
        .template_id = cl_rows_value(rows, i, CL__CLAIM_TEMPLATE_ID),
        .status = cl_rows_value(rows, i, CL__CLAIM_STATUS),
        .bulk_envelope_id = v_bulk,
    };
    cl_conversation conv = {
        .id = msg.conversation_id,
        .status = cl_rows_value(rows, i, CL__CLAIM_CONVERSATION_STATUS),
        .subject = cl_rows_value(rows, i, CL__CLAIM_SUBJECT),
        .customer_ref = cl_rows_value(rows, i, CL__CLAIM_CUSTOMER_REF),
    };
    /* Stable per message: the same on every attempt and after a rescue,
     * so a receiver can drop the repeats the queue produces. */
    char key[48];
    snprintf(key, sizeof key, "cl-msg-%" PRId64, msg.id);
    cl_error nerr;
    cl_status ns = cl__deliver(eng, &msg, &conv, key, attempt, &nerr);
    char kind = ns == CL_OK ? 's' : 'f';
    const char *error = NULL;
    if (kind == 's') {
      o.sent++;
    } else {
      o.delivery_failed++;
      error = nerr.message[0] ? nerr.message : cl_status_name(ns);
    }
    outcome_add(&o, id, kind, error);
    emit_delivery(eng, kind, &msg);
  }
  cl_rows_free(rows);

  /* The counts are reported with the outcomes' recording: now, or by the
   * call that records them after a lost connection. */
  st = complete(eng, &o, claimed_at_ms, stats, batch, err);
  if (st != CL_OK && !eng->pending && cl__db_session(&eng->db) == 0 && keep_pending(eng, &o))
    cl_log(eng, CL_LOG_WARN,
           "%d delivered jobs are kept to be recorded once the database is reachable again", o.n);
  outcomes_free(&o);
  if (st == CL_OK) cl__ok(err);
  return st;
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
