/*
 * outbound.c - cl_trigger and cl_bulk_trigger.
 *
 * Validation first (so CL_INVALID_ARGUMENT always means nothing happened),
 * then the actor resolver, the cap of the moment, and one transaction whose
 * writes are a single set-based statement (data-modifying CTEs over
 * unnest, src/sql/trigger.sql, bulk.sql, bulk_tx.sql): the number of round
 * trips never grows with the cohort.  Without an auditor the statement
 * commits on its own (one round trip); with one, the statement and the
 * audit call share the auditor's transaction (hooks.c).  Telemetry spans
 * and trace events are emitted only when a handler listens.
 * Uses db.c (the statement table), hooks.c, envelope.c (the envelope row
 * mapping), telemetry.c, arena.c.
 */
#include "outbound.h"
#include "envelope.h"
#include "hooks.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Validation                                                           */
/* ------------------------------------------------------------------ */

static cl_status check_schedule(int64_t s, cl_error *err) {
  if (s < 0 || s > CL_MAX_SCHEDULE_IN)
    return cl__fail(err, CL_INVALID_ARGUMENT,
                    "schedule_in must be from 0 to %lld seconds, got %" PRId64,
                    (long long)CL_MAX_SCHEDULE_IN, s);
  return CL_OK;
}

static cl_status check_uuid(const char *field, const char *s, char *out, cl_error *err) {
  if (!s) {
    out[0] = '\0';
    return CL_OK;
  }
  if (!cl__uuid_valid(s))
    return cl__fail(err, CL_INVALID_ARGUMENT, "%s '%.40s' is not a UUID", field, s);
  cl__uuid_lower(s, out);
  return CL_OK;
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* Non-empty, positive, distinct.  Duplicates are found on a sorted copy
 * (O(n log n), no hashing), and the one reported is the smallest. */
static cl_status check_ids(const int64_t *ids, size_t n, cl_error *err) {
  if (!ids || n == 0)
    return cl__fail(err, CL_INVALID_ARGUMENT, "conversation_ids must not be empty");
  if (n > CL_MAX_COHORT)
    return cl__fail(err, CL_INVALID_ARGUMENT, "conversation_ids has %zu ids, at most %d", n,
                    CL_MAX_COHORT);
  for (size_t i = 0; i < n; i++)
    if (ids[i] <= 0)
      return cl__fail(err, CL_INVALID_ARGUMENT,
                      "conversation id %" PRId64 " at position %zu is not positive", ids[i], i + 1);
  int64_t *sorted = malloc(n * sizeof *sorted);
  if (!sorted) return cl__fail(err, CL_INVALID_ARGUMENT, "out of memory");
  memcpy(sorted, ids, n * sizeof *sorted);
  qsort(sorted, n, sizeof *sorted, cmp_i64);
  cl_status st = CL_OK;
  for (size_t i = 1; i < n; i++)
    if (sorted[i] == sorted[i - 1]) {
      st = cl__fail(err, CL_INVALID_ARGUMENT, "duplicate conversation id %" PRId64 " in cohort",
                    sorted[i]);
      break;
    }
  free(sorted);
  return st;
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
#define KV_OPT_INT(k, v) \
  { (k), (v) ? CL_VALUE_INT : CL_VALUE_NIL, (v), NULL }
#define NKV(a) (sizeof(a) / sizeof((a)[0]))

static void emit_start(cl_engine *eng, cl__event ev, const char *outcome, int64_t count,
                       bool with_count) {
  if (!cl__tel_on(&eng->tel, ev)) return;
  cl_kv m[] = {KV_INT("system_time", cl__system_ns()),
               KV_INT("monotonic_time", cl__monotonic_ns())};
  cl_kv md[] = {KV_STR("outcome", outcome), KV_INT("count", count)};
  cl__tel_emit(&eng->tel, ev, m, NKV(m), md, with_count ? 2 : 1);
}

static void emit_stop(cl_engine *eng, cl__event ev, int64_t t0, const char *outcome, int64_t count,
                      bool with_count) {
  if (!cl__tel_on(&eng->tel, ev)) return;
  int64_t now = cl__monotonic_ns();
  cl_kv m[] = {KV_INT("duration", now - t0), KV_INT("monotonic_time", now)};
  cl_kv md[] = {KV_STR("outcome", outcome), KV_INT("count", count)};
  cl__tel_emit(&eng->tel, ev, m, NKV(m), md, with_count ? 2 : 1);
}

static void emit_exception(cl_engine *eng, cl__event ev, int64_t t0, cl_status st, int64_t count,
                           bool with_count) {
  if (!cl__tel_on(&eng->tel, ev)) return;
  cl_kv m[] = {KV_INT("duration", cl__monotonic_ns() - t0)};
  cl_kv md[] = {KV_STR("outcome", "exception"), KV_STR("kind", cl_status_name(st)),
                KV_INT("count", count)};
  cl__tel_emit(&eng->tel, ev, m, NKV(m), md, with_count ? 3 : 2);
}

typedef struct trace_ctx {
  const char *envelope_id;
  int64_t conversation_id; /* 0: none */
  const char *template_id;
  const char *actor;
} trace_ctx;

static void emit_trace(cl_engine *eng, cl__event ev, const trace_ctx *t, const char *outcome,
                       int effective_cap) {
  if (!cl__tel_on(&eng->tel, ev)) return;
  cl_kv m[] = {KV_INT("count", 1)};
  cl_kv md[] = {
      KV_STR("openinference.span.kind", "GUARDRAIL"),
      KV_OPT_STR("bulk_envelope_id", t->envelope_id && *t->envelope_id ? t->envelope_id : NULL),
      KV_OPT_INT("conversation_id", t->conversation_id),
      KV_STR("template_id", t->template_id),
      KV_OPT_STR("actor_id", t->actor),
      KV_STR("outcome", outcome),
      KV_INT("effective_cap", effective_cap),
  };
  cl__tel_emit(&eng->tel, ev, m, NKV(m), md, ev == CL__EV_TRACE_BULK_REFUSED ? 7 : 6);
}

/* Per-recipient trigger events of a bulk: n of them, only if listened to. */
static void emit_recipients(cl_engine *eng, bool stop, int64_t t0, const char *outcome, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (stop) emit_stop(eng, CL__EV_TRIGGER_STOP, t0, outcome, 0, false);
    else emit_start(eng, CL__EV_TRIGGER_START, "triggered", 0, false);
  }
}

static bool failure_is_exception(cl_status st) { return st == CL_HOOK_ERROR || st == CL_DB_ERROR; }

/* ------------------------------------------------------------------ */
/* Results                                                              */
/* ------------------------------------------------------------------ */

static int64_t to_i64(const char *s) { return s ? strtoll(s, NULL, 10) : 0; }

static void fill_message(cl_message *m, int64_t id, int64_t conv, const char *content,
                         const char *template_id, const char *status, const char *env) {
  m->id = id;
  m->conversation_id = conv;
  m->role = "system_outbound";
  m->content = content;
  m->template_id = template_id;
  m->status = status;
  m->bulk_envelope_id = env;
}

static void fill_job(cl_delivery_job *j, int64_t id, const char *state, const char *scheduled_at,
                     const cl_message *m) {
  j->id = id;
  j->worker = "outbound";
  j->state = state;
  j->scheduled_at = scheduled_at;
  j->message_id = m->id;
  j->conversation_id = m->conversation_id;
  j->template_id = m->template_id;
  j->bulk_envelope_id = m->bulk_envelope_id;
}

/* Statuses and states come back from the database; intern the known ones
 * so results do not copy them per row. */
static const char *intern(cl__arena *a, const char *s) {
  static const char *const known[] = {"pending",   "sent",      "failed",
                                      "available", "scheduled", "executing",
                                      "completed", "retryable", "discarded"};
  if (!s) return NULL;
  for (size_t i = 0; i < NKV(known); i++)
    if (strcmp(s, known[i]) == 0) return known[i];
  return cl__arena_strdup(a, s);
}

void cl_trigger_result_clear(cl_trigger_result *res) {
  if (!res) return;
  cl__arena_free(res->priv_);
  free(res->audit_json);
  memset(res, 0, sizeof *res);
}

void cl_bulk_result_clear(cl_bulk_result *res) {
  if (!res) return;
  cl__arena_free(res->priv_);
  free(res->audit_json);
  memset(res, 0, sizeof *res);
}

/* ------------------------------------------------------------------ */
/* trigger                                                              */
/* ------------------------------------------------------------------ */

cl_status cl_trigger(cl_engine *eng, int64_t conversation_id, const cl_trigger_opts *opts,
                     cl_trigger_result *res, cl_error *err) {
  char envelope_id[CL_UUID_LEN + 1] = "";
  cl_status st;
  if (res) memset(res, 0, sizeof *res);
  CL__ENTER(eng, err);
  if (!opts || !res) return cl__fail(err, CL_INVALID_ARGUMENT, "opts and result are required");
  if (conversation_id <= 0)
    return cl__fail(err, CL_INVALID_ARGUMENT, "conversation id %" PRId64 " is not positive",
                    conversation_id);
  if ((st = cl__check_text("template_id", opts->template_id, CL_MAX_TEMPLATE_ID_BYTES, true,
                           err)) ||
      (st = cl__check_text("content", opts->content, CL_MAX_BODY_BYTES, false, err)) ||
      (st = cl__check_text("actor", opts->actor, CL_MAX_ACTOR_BYTES, false, err)) ||
      (st = check_schedule(opts->schedule_in, err)) ||
      (st = check_uuid("bulk_envelope_id", opts->bulk_envelope_id, envelope_id, err)))
    return st;

  int64_t t0 = cl__monotonic_ns();
  char *actor = NULL;
  trace_ctx trace = {envelope_id, conversation_id, opts->template_id, NULL};
  st = cl__resolve_actor(eng, opts->actor, "outbound_trigger", &actor, err);
  if (st == CL_ACTOR_REJECTED) return st;
  if (st != CL_OK) { /* the resolver failed: an exception, with nothing written */
    emit_exception(eng, CL__EV_TRIGGER_EXCEPTION, t0, st, 0, false);
    emit_trace(eng, CL__EV_TRACE_TRIGGER_FAILED, &trace, "exception", 0);
    return st;
  }
  trace.actor = actor;

  cl__arena *arena = cl__arena_new();
  if (!arena) {
    free(actor);
    return cl__fail(err, CL_DB_ERROR, "out of memory");
  }
  res->priv_ = arena;

  t0 = cl__monotonic_ns();
  emit_start(eng, CL__EV_TRIGGER_START, "triggered", 0, false);
  emit_trace(eng, CL__EV_TRACE_TRIGGER_STARTED, &trace, "triggered", 0);

  char idbuf[24], schedbuf[24], defcontent[CL_MAX_TEMPLATE_ID_BYTES + 48];
  snprintf(idbuf, sizeof idbuf, "%" PRId64, conversation_id);
  snprintf(schedbuf, sizeof schedbuf, "%" PRId64, opts->schedule_in);
  const char *content = opts->content;
  if (!content) {
    snprintf(defcontent, sizeof defcontent, "Outbound message using template: %s",
             opts->template_id);
    content = defcontent;
  }
  const char *params[] = {idbuf, opts->template_id, content, envelope_id[0] ? envelope_id : NULL,
                          schedbuf};
  bool audit = eng->has_auditor;
  cl_rows *rows = NULL;
  const char *outcome = "triggered";

  /* Optimistic: insert, and let the keys say what is wrong.  A duplicate
   * (23505) costs one more round trip to read the existing rows; an unknown
   * conversation (23503) none.  Probing first would cost every call. */
  if (!audit) {
    st = cl__db_exec(&eng->db, CL__STMT_TRIGGER, false, CL__NPARAMS(params), params, &rows, err);
  } else {
    cl_kv md[] = {KV_INT("conversation_id", conversation_id),
                  KV_STR("template_id", opts->template_id)};
    st = cl__audited(eng, CL__STMT_TRIGGER, CL__NPARAMS(params), params, "outbound_trigger", actor,
                     md, NKV(md), &res->audit_json, &rows, err);
  }
  if (st == CL_DB_ERROR && cl__db_unique_violation(&eng->db)) {
    /* A duplicate: nothing was written; return the existing rows. */
    const char *eparams[] = {idbuf, opts->template_id, envelope_id[0] ? envelope_id : NULL};
    st = cl__db_exec(&eng->db, CL__STMT_EXISTING, false, CL__NPARAMS(eparams), eparams, &rows, err);
    if (st == CL_OK && cl_rows_count(rows) == 0)
      st = cl__fail(err, CL_DB_ERROR, "duplicate trigger whose rows have gone");
  } else if (st == CL_DB_ERROR && cl__db_fk_violation(&eng->db)) {
    st = CL_OK; /* no rows: reported as the unknown conversation below */
  }
  if (st != CL_OK) goto fail;

  if (cl_rows_count(rows) == 0) {
    st = cl__fail(err, CL_UNKNOWN_CONVERSATION, "conversation %" PRId64 " does not exist",
                  conversation_id);
    goto fail;
  }
  /* cl_trigger and cl_existing rows: the same columns. */
  bool dup = strcmp(cl_rows_value(rows, 0, CL__TRIGGER_DUPLICATE), "t") == 0;
  const char *tid = cl__arena_strdup(arena, opts->template_id);
  const char *env = envelope_id[0] ? cl__arena_strdup(arena, envelope_id) : NULL;
  const char *body = cl__arena_strdup(arena,
                                      dup ? cl_rows_value(rows, 0, CL__TRIGGER_CONTENT) : content);
  const char *status = dup ? intern(arena, cl_rows_value(rows, 0, CL__TRIGGER_STATUS)) : "pending";
  const char *sched = cl__arena_strdup(arena, cl_rows_value(rows, 0, CL__TRIGGER_SCHEDULED_AT));
  const char *state = intern(arena, cl_rows_value(rows, 0, CL__TRIGGER_STATE));
  /* A duplicate whose job was pruned (finished, then deleted): the message
   * is the record; the job reads as id 0 with no state or time. */
  bool pruned = dup && !cl_rows_value(rows, 0, CL__TRIGGER_JOB_ID);
  if (!tid || !body || (!pruned && (!sched || !state)) || (envelope_id[0] && !env)) {
    /* Rows may be committed by now: say so rather than pretend a rollback. */
    st = cl__fail(err, CL_DB_ERROR, "out of memory reading the result");
    goto fail;
  }
  fill_message(&res->message, to_i64(cl_rows_value(rows, 0, CL__TRIGGER_MESSAGE_ID)),
               conversation_id, body, tid, status, env);
  fill_job(&res->delivery_job, to_i64(cl_rows_value(rows, 0, CL__TRIGGER_JOB_ID)), state, sched,
           &res->message);
  res->duplicate = dup;
  if (dup) outcome = "duplicate";
  cl_rows_free(rows);
  rows = NULL;

  emit_stop(eng, CL__EV_TRIGGER_STOP, t0, outcome, 0, false);
  emit_trace(eng, CL__EV_TRACE_TRIGGER_COMPLETED, &trace, outcome, 0);
  free(actor);
  cl__ok(err);
  return CL_OK;

fail:
  cl_rows_free(rows);
  if (failure_is_exception(st)) {
    emit_exception(eng, CL__EV_TRIGGER_EXCEPTION, t0, st, 0, false);
    emit_trace(eng, CL__EV_TRACE_TRIGGER_FAILED, &trace, "exception", 0);
  } else {
    emit_stop(eng, CL__EV_TRIGGER_STOP, t0, "failed", 0, false);
    emit_trace(eng, CL__EV_TRACE_TRIGGER_FAILED, &trace, "failed", 0);
  }
  free(actor);
  cl_trigger_result_clear(res);
  return st;
}

/* ------------------------------------------------------------------ */
/* bulk_trigger                                                         */
/* ------------------------------------------------------------------ */

/* '{1,2,3}' for a bigint[] parameter. */
static char *ids_literal(const int64_t *ids, size_t n) {
  char *buf = malloc(n * 21 + 3), *p = buf;
  if (!buf) return NULL;
  *p++ = '{';
  for (size_t i = 0; i < n; i++) {
    if (i) *p++ = ',';
    p += sprintf(p, "%" PRId64, ids[i]);
  }
  *p++ = '}';
  *p = '\0';
  return buf;
}

/* Same content as a stored envelope (the first columns of `rows`):
 * template, body and cohort, in order. */
static bool same_content(const cl_rows *rows, const cl_bulk_opts *opts, const char *ids_text) {
  const char *tid = cl_rows_value(rows, 0, CL__ENVELOPE_TEMPLATE_ID);
  const char *body = cl_rows_value(rows, 0, CL__ENVELOPE_RENDERED_BODY);
  const char *ids = cl_rows_value(rows, 0, CL__ENVELOPE_RECIPIENTS);
  return tid && body && ids && strcmp(tid, opts->template_id) == 0 &&
         strcmp(body, opts->rendered_body) == 0 && strcmp(ids, ids_text) == 0;
}

/* Fills res from a stored, submitted envelope and its rows. */
static cl_status load_replay(cl_engine *eng, const cl_rows *prior, const char *ids_text,
                             cl_bulk_result *res, cl_error *err) {
  cl__arena *a = res->priv_;
  cl_envelope *e = &res->envelope;
  if (!cl__envelope_from_row(a, prior, 0, e)) return cl__fail(err, CL_DB_ERROR, "out of memory");
  const char *params[] = {e->id, ids_text, e->template_id};
  cl_rows *rows = NULL;
  cl_status st = cl__db_exec(&eng->db, CL__STMT_BULK_ROWS, false, CL__NPARAMS(params), params,
                             &rows, err);
  if (st != CL_OK) return st;
  size_t n = (size_t)cl_rows_count(rows);
  res->messages = cl__arena_alloc(a, (n ? n : 1) * sizeof *res->messages);
  res->delivery_jobs = cl__arena_alloc(a, (n ? n : 1) * sizeof *res->delivery_jobs);
  const char *env_id = cl__arena_strdup(a, e->id);
  if (!res->messages || !res->delivery_jobs || !env_id) {
    cl_rows_free(rows);
    return cl__fail(err, CL_DB_ERROR, "out of memory");
  }
  for (size_t i = 0; i < n; i++) {
    int r = (int)i;
    const char *content = cl_rows_value(rows, r, CL__BULK_ROWS_CONTENT);
    /* Bodies are the snapshot: share the envelope's copy when equal. */
    content = content && strcmp(content, e->rendered_body) == 0 ? e->rendered_body
                                                                : cl__arena_strdup(a, content);
    fill_message(&res->messages[i], to_i64(cl_rows_value(rows, r, CL__BULK_ROWS_MESSAGE_ID)),
                 to_i64(cl_rows_value(rows, r, CL__BULK_ROWS_CONVERSATION_ID)), content,
                 e->template_id, intern(a, cl_rows_value(rows, r, CL__BULK_ROWS_STATUS)), env_id);
    fill_job(&res->delivery_jobs[i], to_i64(cl_rows_value(rows, r, CL__BULK_ROWS_JOB_ID)),
             intern(a, cl_rows_value(rows, r, CL__BULK_ROWS_STATE)),
             cl__arena_strdup(a, cl_rows_value(rows, r, CL__BULK_ROWS_SCHEDULED_AT)),
             &res->messages[i]);
  }
  res->count = n;
  res->replayed = 1;
  cl_rows_free(rows);
  return CL_OK;
}

/* Over the cap: store the refused attempt on its own, report the outcome. */
static cl_status refuse(cl_engine *eng, size_t n, const cl_bulk_opts *opts, const char *envelope_id,
                        const char *ids_text, const char *actor, int cap, cl_bulk_result *res,
                        cl_error *err) {
  char reason[96], capbuf[16];
  snprintf(reason, sizeof reason, "batch_size %zu exceeds cap %d", n, cap);
  snprintf(capbuf, sizeof capbuf, "%d", cap);
  const char *params[] = {
      envelope_id, opts->template_id, opts->rendered_body, ids_text, capbuf, actor, reason};
  trace_ctx trace = {envelope_id, 0, opts->template_id, actor};
  cl_rows *rows = NULL;
  cl_error dberr;
  const char *outcome = "refused_cap_exceeded";
  cl_status st = cl__db_exec(&eng->db, CL__STMT_REFUSE, false, CL__NPARAMS(params), params, &rows,
                             &dberr);
  /* The same caller-chosen id refused (or submitted) concurrently: that
   * envelope committed while this insert waited on the key.  Looked at
   * again, it is the stored envelope, and nothing more is written. */
  if (st == CL_DB_ERROR && cl__db_unique_violation(&eng->db))
    st = cl__db_exec(&eng->db, CL__STMT_REFUSE, false, CL__NPARAMS(params), params, &rows, &dberr);
  if (st != CL_OK) {
    /* Fail closed, and loudly: the refusal stands, its record is missing. */
    outcome = "refused_cap_exceeded_audit_failed";
    cl_log(eng, CL_LOG_ERROR, "refused bulk envelope %s (%s) could not be recorded: %s",
           envelope_id, reason, dberr.message);
  } else if (strcmp(cl_rows_value(rows, 0, CL__REFUSE_INSERTED), "0") == 0) {
    /* The caller's envelope id names a stored envelope: its outcome stands. */
    if (!same_content(rows, opts, ids_text)) {
      st = cl__fail(err, CL_ENVELOPE_CONFLICT, "envelope %s already exists with different content",
                    envelope_id);
      cl_rows_free(rows);
      return st;
    }
    const char *status = cl_rows_value(rows, 0, CL__ENVELOPE_STATUS);
    if (status && strcmp(status, "submitted") == 0) {
      st = load_replay(eng, rows, ids_text, res, err);
      cl_rows_free(rows);
      return st;
    }
    const char *stored = cl_rows_value(rows, 0, CL__ENVELOPE_REFUSED_REASON);
    if (stored) snprintf(reason, sizeof reason, "%s", stored);
  }
  /* The caller learns the refused envelope as recorded: its id is the key
   * to the refusal in the audit record (`cairnloop bulk --json` prints it). */
  if (st == CL_OK && !cl__envelope_from_row(res->priv_, rows, 0, &res->envelope))
    memset(&res->envelope, 0, sizeof res->envelope);
  cl_rows_free(rows);
  if (cl__tel_on(&eng->tel, CL__EV_BULK_REFUSED)) {
    cl_kv m[] = {KV_INT("count", (int64_t)n)};
    cl_kv md[] = {KV_STR("outcome", outcome), KV_INT("count", (int64_t)n)};
    cl__tel_emit(&eng->tel, CL__EV_BULK_REFUSED, m, NKV(m), md, NKV(md));
  }
  emit_trace(eng, CL__EV_TRACE_BULK_REFUSED, &trace, outcome, cap);
  return cl__fail(err, CL_BATCH_TOO_LARGE, "%s", reason);
}

typedef struct pair {
  int64_t key, value;
} pair;

static int cmp_pair(const void *a, const void *b) { return cmp_i64(a, b); }

/*
 * Orders `values` (returned alongside `keys`) by `want`: out[i] is the value
 * whose key is want[i].  Insert order normally matches already, which is
 * checked in one pass; otherwise a sorted copy is searched.  False if a key
 * is missing.
 */
static bool align(const int64_t *want, const int64_t *keys, const int64_t *values, size_t n,
                  int64_t *out) {
  size_t i = 0;
  while (i < n && keys[i] == want[i]) {
    out[i] = values[i];
    i++;
  }
  if (i == n) return true;
  pair *p = malloc(n * sizeof *p);
  if (!p) return false;
  for (size_t k = 0; k < n; k++) p[k] = (pair){keys[k], values[k]};
  qsort(p, n, sizeof *p, cmp_pair);
  bool ok = true;
  for (; i < n && ok; i++) {
    pair probe = {want[i], 0}, *hit = bsearch(&probe, p, n, sizeof *p, cmp_pair);
    if (hit) out[i] = hit->value;
    else ok = false;
  }
  free(p);
  return ok;
}

/* Fills res from a fresh submit, recipients in cohort order. */
static cl_status load_submit(const cl_rows *rows, const int64_t *ids, size_t n,
                             const cl_bulk_opts *opts, const char *envelope_id, const char *actor,
                             int cap, cl_bulk_result *res, cl_error *err) {
  cl__arena *a = res->priv_;
  cl_envelope *e = &res->envelope;
  size_t n1 = 0, n2 = 0, n3 = 0, n4 = 0;
  int64_t *mids = cl__parse_int_array(a, cl_rows_value(rows, 0, CL__BULK_MESSAGE_IDS), &n1);
  int64_t *mcids = cl__parse_int_array(a, cl_rows_value(rows, 0, CL__BULK_MESSAGE_CONVERSATION_IDS),
                                       &n2);
  int64_t *jids = cl__parse_int_array(a, cl_rows_value(rows, 0, CL__BULK_JOB_IDS), &n3);
  int64_t *jmids = cl__parse_int_array(a, cl_rows_value(rows, 0, CL__BULK_JOB_MESSAGE_IDS), &n4);
  int64_t *cids = cl__arena_alloc(a, n * sizeof *cids);
  int64_t *msg_by_ord = cl__arena_alloc(a, n * sizeof *msg_by_ord);
  int64_t *job_by_ord = cl__arena_alloc(a, n * sizeof *job_by_ord);
  res->messages = cl__arena_alloc(a, n * sizeof *res->messages);
  res->delivery_jobs = cl__arena_alloc(a, n * sizeof *res->delivery_jobs);
  memcpy(e->id, envelope_id, CL_UUID_LEN + 1);
  e->template_id = cl__arena_strdup(a, opts->template_id);
  e->rendered_body = cl__arena_strdup(a, opts->rendered_body);
  e->requested_by = cl__arena_strdup(a, actor);
  e->requested_at = cl__arena_strdup(a, cl_rows_value(rows, 0, CL__BULK_SUBMITTED_AT));
  const char *sched = cl__arena_strdup(a, cl_rows_value(rows, 0, CL__BULK_SCHEDULED_AT));
  const char *env_id = cl__arena_strdup(a, envelope_id);
  if (!mids || !mcids || !jids || !jmids || !cids || !msg_by_ord || !job_by_ord || !res->messages ||
      !res->delivery_jobs || !e->template_id || !e->rendered_body || (actor && !e->requested_by) ||
      !e->requested_at || !sched || !env_id)
    return cl__fail(err, CL_DB_ERROR, "out of memory");
  if (n1 != n || n2 != n || n3 != n || n4 != n || !align(ids, mcids, mids, n, msg_by_ord) ||
      !align(msg_by_ord, jmids, jids, n, job_by_ord))
    return cl__fail(err, CL_DB_ERROR, "bulk insert returned rows that do not match the cohort");
  memcpy(cids, ids, n * sizeof *cids);
  e->recipient_conversation_ids = cids;
  e->count = n;
  e->effective_cap = cap;
  e->status = "submitted";
  e->refused_reason = NULL;
  const char *state = opts->schedule_in > 0 ? "scheduled" : "available";
  for (size_t i = 0; i < n; i++) {
    fill_message(&res->messages[i], msg_by_ord[i], ids[i], e->rendered_body, e->template_id,
                 "pending", env_id);
    fill_job(&res->delivery_jobs[i], job_by_ord[i], state, sched, &res->messages[i]);
  }
  res->count = n;
  return CL_OK;
}

/* After a foreign-key failure: name the first id that has no conversation. */
static cl_status name_missing(cl_engine *eng, const char *ids_text, cl_error *err) {
  char why[CL_ERROR_MESSAGE_MAX];
  snprintf(why, sizeof why, "%s", err ? err->message : "");
  const char *params[] = {ids_text};
  cl_rows *rows = NULL;
  cl_status st = cl__db_exec(&eng->db, CL__STMT_MISSING, false, CL__NPARAMS(params), params, &rows,
                             err);
  if (st != CL_OK) return st;
  if (cl_rows_count(rows) == 1)
    st = cl__fail(err, CL_UNKNOWN_CONVERSATION, "conversation %s does not exist",
                  cl_rows_value(rows, 0, CL__MISSING_CONVERSATION_ID));
  else /* it exists now: a concurrent insert raced us */ st = cl__fail(err, CL_DB_ERROR, "%s", why);
  cl_rows_free(rows);
  return st;
}

cl_status cl_bulk_trigger(cl_engine *eng, const int64_t *ids, size_t n, const cl_bulk_opts *opts,
                          cl_bulk_result *res, cl_error *err) {
  char envelope_id[CL_UUID_LEN + 1] = "";
  cl_status st;
  if (res) memset(res, 0, sizeof *res);
  CL__ENTER(eng, err);
  if (!opts || !res) return cl__fail(err, CL_INVALID_ARGUMENT, "opts and result are required");
  if ((st = check_ids(ids, n, err)) ||
      (st = cl__check_text("template_id", opts->template_id, CL_MAX_TEMPLATE_ID_BYTES, true,
                           err)) ||
      (st = cl__check_text("rendered_body", opts->rendered_body, CL_MAX_BODY_BYTES, true, err)) ||
      (st = cl__check_text("actor", opts->actor, CL_MAX_ACTOR_BYTES, false, err)) ||
      (st = check_schedule(opts->schedule_in, err)) ||
      (st = check_uuid("envelope_id", opts->envelope_id, envelope_id, err)))
    return st;
  bool caller_id = envelope_id[0] != '\0';
  if (!caller_id) cl__uuid_v4(envelope_id);

  int64_t t0 = cl__monotonic_ns();
  char *actor = NULL;
  trace_ctx trace = {envelope_id, 0, opts->template_id, NULL};
  st = cl__resolve_actor(eng, opts->actor, "bulk_outbound_trigger", &actor, err);
  if (st == CL_ACTOR_REJECTED) return st;
  if (st != CL_OK) {
    emit_exception(eng, CL__EV_BULK_EXCEPTION, t0, st, (int64_t)n, true);
    emit_trace(eng, CL__EV_TRACE_BULK_FAILED, &trace, "exception", 0);
    return st;
  }
  trace.actor = actor;

  char *ids_text = ids_literal(ids, n);
  cl__arena *arena = cl__arena_new();
  if (!ids_text || !arena) {
    free(ids_text);
    cl__arena_free(arena);
    free(actor);
    return cl__fail(err, CL_DB_ERROR, "out of memory");
  }
  res->priv_ = arena;

  /* The cap of the moment, read now: a configure() between calls counts. */
  int cap = eng->max_batch_size;
  if (n > (size_t)cap) {
    st = refuse(eng, n, opts, envelope_id, ids_text, actor, cap, res, err);
    goto done;
  }

  t0 = cl__monotonic_ns();
  emit_start(eng, CL__EV_BULK_START, "submitted", (int64_t)n, true);
  if (cl__tel_on(&eng->tel, CL__EV_TRIGGER_START)) emit_recipients(eng, false, t0, NULL, n);

  char capbuf[16], schedbuf[24];
  snprintf(capbuf, sizeof capbuf, "%d", cap);
  snprintf(schedbuf, sizeof schedbuf, "%" PRId64, opts->schedule_in);
  const char *params[] = {envelope_id, opts->template_id, opts->rendered_body, ids_text, capbuf,
                          actor,       schedbuf};
  const char *outcome = "submitted", *recipient_outcome = "triggered";
  cl_rows *rows = NULL;
  if (!eng->has_auditor) {
    /* A fresh random id cannot name a stored envelope: skip that lookup. */
    st = cl__db_exec(&eng->db, caller_id ? CL__STMT_BULK : CL__STMT_BULK_TX, false,
                     CL__NPARAMS(params), params, &rows, err);
  } else {
    cl_kv md[] = {KV_STR("bulk_envelope_id", envelope_id), KV_INT("count", (int64_t)n),
                  KV_STR("template_id", opts->template_id)};
    st = cl__audited(eng, CL__STMT_BULK_TX, CL__NPARAMS(params), params, "bulk_outbound_trigger",
                     actor, md, NKV(md), &res->audit_json, &rows, err);
  }
  if (st == CL_DB_ERROR && cl__db_unique_violation(&eng->db)) {
    /* The envelope id is taken: by a stored envelope (the auditor's insert
     * is optimistic), or by a submit of the same caller-chosen id that
     * committed while this one waited on the key (cl_bulk's look for a
     * stored envelope cannot see a concurrent one).  Nothing was written:
     * read the envelope that won and decide replay or conflict below. */
    cl_error why = err ? *err : (cl_error){0};
    const char *pparams[] = {envelope_id};
    st = cl__db_exec(&eng->db, CL__STMT_PRIOR, false, CL__NPARAMS(pparams), pparams, &rows, err);
    if (st == CL_OK && cl_rows_count(rows) == 0) st = cl__fail(err, CL_DB_ERROR, "%s", why.message);
  }
  if (st != CL_OK && cl__db_fk_violation(&eng->db)) st = name_missing(eng, ids_text, err);
  if (st != CL_OK) goto fail;

  /* cl_bulk, cl_bulk_tx and cl_prior rows all begin with the stored envelope. */
  if (cl_rows_value(rows, 0, CL__ENVELOPE_ID)) {
    /* The caller's envelope id names a stored envelope: nothing was written. */
    if (!same_content(rows, opts, ids_text)) {
      st = cl__fail(err, CL_ENVELOPE_CONFLICT, "envelope %s already exists with different content",
                    envelope_id);
      goto fail;
    }
    const char *status = cl_rows_value(rows, 0, CL__ENVELOPE_STATUS);
    const char *reason = cl_rows_value(rows, 0, CL__ENVELOPE_REFUSED_REASON);
    if (!status || strcmp(status, "submitted") != 0) {
      st = cl__fail(err, CL_BATCH_TOO_LARGE, "%s", reason ? reason : "envelope was refused");
      goto fail;
    }
    st = load_replay(eng, rows, ids_text, res, err);
    if (st != CL_OK) goto fail;
    recipient_outcome = "duplicate";
  } else {
    st = load_submit(rows, ids, n, opts, envelope_id, actor, cap, res, err);
    if (st != CL_OK) goto fail;
  }
  cl_rows_free(rows);

  if (cl__tel_on(&eng->tel, CL__EV_TRIGGER_STOP))
    emit_recipients(eng, true, t0, recipient_outcome, n);
  emit_stop(eng, CL__EV_BULK_STOP, t0, outcome, (int64_t)n, true);
  if (!res->replayed) emit_trace(eng, CL__EV_TRACE_BULK_SUBMITTED, &trace, outcome, 0);
  goto done;

fail:
  cl_rows_free(rows);
  if (cl__tel_on(&eng->tel, CL__EV_TRIGGER_STOP)) emit_recipients(eng, true, t0, "failed", n);
  if (failure_is_exception(st)) {
    emit_exception(eng, CL__EV_BULK_EXCEPTION, t0, st, (int64_t)n, true);
    emit_trace(eng, CL__EV_TRACE_BULK_FAILED, &trace, "exception", 0);
  } else {
    emit_stop(eng, CL__EV_BULK_STOP, t0, "failed", (int64_t)n, true);
    emit_trace(eng, CL__EV_TRACE_BULK_FAILED, &trace, "failed", 0);
  }

done:
  free(ids_text);
  free(actor);
  /* A refusal keeps the refused envelope (refuse()); any other failure
   * leaves nothing behind. */
  if (st != CL_OK && st != CL_BATCH_TOO_LARGE) cl_bulk_result_clear(res);
  else if (st == CL_OK) cl__ok(err);
  return st;
}
