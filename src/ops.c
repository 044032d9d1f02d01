/*
 * ops.c - operating the queue: cl_jobs, cl_stats, cl_retry, cl_cancel,
 * cl_pause/cl_resume, cl_prune, cl_envelopes_progress, and the workers' own
 * retention pass.
 *
 * Every state change is one statement (src/sql/ops_*.sql).  With an
 * auditor it runs in the auditor's transaction (hooks.c, cl__audited),
 * where the statement is sent before the audit call and read after it, so
 * the auditor is told a count taken just before (cl_ops_targets) and the
 * statement fails when it would change another number of jobs; the whole
 * is then counted and tried again.  Uses db.c (the statement table),
 * hooks.c, telemetry.c and arena.c.
 */
#include "ops.h"
#include "arena.h"
#include "hooks.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KV_INT(k, v) \
  { (k), CL_VALUE_INT, (v), NULL }
#define KV_STR(k, v) \
  { (k), CL_VALUE_STRING, 0, (v) }
#define KV_OPT_STR(k, v) \
  { (k), (v) ? CL_VALUE_STRING : CL_VALUE_NIL, 0, (v) }
#define NKV(a) (sizeof(a) / sizeof((a)[0]))

/* Rows a retention pass deletes at most, per kind (completed; discarded and
 * cancelled): small enough that the statement takes milliseconds and its
 * row locks never hold up a claim for long, large enough that a pass every
 * interval keeps up with a busy queue (a full batch brings the next pass
 * forward to the next cl_work_batch). */
#define RETENTION_BATCH 500
/* cl_prune's batch: an operator's command, each batch committed on its own. */
#define PRUNE_BATCH 5000
/* Attempts of an audited retry or cancel whose jobs keep moving under it
 * (each attempt is a count and a change, see the header comment). */
#define AUDITED_ATTEMPTS 5

static int64_t to_i64(const char *s) { return s ? strtoll(s, NULL, 10) : 0; }

/* ------------------------------------------------------------------ */
/* Job states                                                           */
/* ------------------------------------------------------------------ */

static const char *const state_names[] = {
#define XX(name, str) str,
    CL_JOB_STATE_MAP(XX)
#undef XX
};

const char *cl_job_state_name(cl_job_state state) {
  return (unsigned)state < CL_JOB_STATE__COUNT ? state_names[state] : NULL;
}

cl_status cl_job_state_parse(const char *name, cl_job_state *state, cl_error *err) {
  for (int i = 0; name && i < CL_JOB_STATE__COUNT; i++)
    if (strcmp(name, state_names[i]) == 0) {
      *state = (cl_job_state)i;
      return CL_OK;
    }
  return cl__fail(err, CL_INVALID_ARGUMENT,
                  "state '%.32s' is unknown: use available, scheduled, executing, retryable, "
                  "completed, discarded or cancelled",
                  name ? name : "(null)");
}

/* The table's own copy of a state name (results need not copy them). */
static const char *state_of(const char *s) {
  cl_job_state st;
  return s && cl_job_state_parse(s, &st, NULL) == CL_OK ? state_names[st] : NULL;
}

/* ------------------------------------------------------------------ */
/* Validation                                                           */
/* ------------------------------------------------------------------ */

/* NULL stays "" (none); a UUID is copied in canonical lowercase. */
static cl_status check_uuid(const char *field, const char *s, char *out, cl_error *err) {
  out[0] = '\0';
  if (!s) return CL_OK;
  if (!cl__uuid_valid(s))
    return cl__fail(err, CL_INVALID_ARGUMENT, "%s '%.40s' is not a UUID", field, s);
  cl__uuid_lower(s, out);
  return CL_OK;
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/*
 * The selector of a retry or cancel: exactly one way of naming jobs; ids
 * positive and distinct.  On success *ids_text is the bigint[] literal of
 * the ids (malloc'd) or NULL.
 */
static cl_status check_selector(const cl_job_selector *sel, bool retry, char *envelope_id,
                                char **ids_text, cl_error *err) {
  *ids_text = NULL;
  if (!sel) return cl__fail(err, CL_INVALID_ARGUMENT, "a job selector is required");
  int ways = (sel->count > 0 || sel->ids) + (sel->envelope_id != NULL) + (sel->all_discarded != 0);
  if (!retry && sel->all_discarded)
    return cl__fail(err, CL_INVALID_ARGUMENT, "all_discarded applies to retry only");
  if (ways != 1)
    return cl__fail(err, CL_INVALID_ARGUMENT,
                    retry ? "give exactly one of ids, envelope_id or all_discarded"
                          : "give exactly one of ids or envelope_id");
  cl_status st = cl__check_text("actor", sel->actor, CL_MAX_ACTOR_BYTES, false, err);
  if (st == CL_OK) st = check_uuid("envelope_id", sel->envelope_id, envelope_id, err);
  if (st != CL_OK || !(sel->count > 0 || sel->ids)) return st;

  if (!sel->ids || sel->count == 0)
    return cl__fail(err, CL_INVALID_ARGUMENT, "job ids must not be empty");
  if (sel->count > CL_JOBS_MAX_LIMIT)
    return cl__fail(err, CL_INVALID_ARGUMENT, "job ids has %zu ids, at most %d", sel->count,
                    CL_JOBS_MAX_LIMIT);
  for (size_t i = 0; i < sel->count; i++)
    if (sel->ids[i] <= 0)
      return cl__fail(err, CL_INVALID_ARGUMENT, "job id %" PRId64 " is not positive", sel->ids[i]);
  int64_t *sorted = malloc(sel->count * sizeof *sorted);
  char *text = malloc(sel->count * 21 + 3), *p = text;
  if (!sorted || !text) {
    free(sorted);
    free(text);
    return cl__fail(err, CL_INVALID_ARGUMENT, "out of memory");
  }
  memcpy(sorted, sel->ids, sel->count * sizeof *sorted);
  qsort(sorted, sel->count, sizeof *sorted, cmp_i64);
  for (size_t i = 1; i < sel->count; i++)
    if (sorted[i] == sorted[i - 1]) {
      st = cl__fail(err, CL_INVALID_ARGUMENT, "duplicate job id %" PRId64, sorted[i]);
      free(sorted);
      free(text);
      return st;
    }
  *p++ = '{';
  for (size_t i = 0; i < sel->count; i++) p += sprintf(p, i ? ",%" PRId64 : "%" PRId64, sorted[i]);
  *p++ = '}';
  *p = '\0';
  free(sorted);
  *ids_text = text;
  return CL_OK;
}

/* ------------------------------------------------------------------ */
/* Reads                                                                */
/* ------------------------------------------------------------------ */

void cl_job_list_clear(cl_job_list *list) {
  if (!list) return;
  cl__arena_free(list->priv_);
  memset(list, 0, sizeof *list);
}

/* Fills one cl_job from row r of cl_ops_jobs; false when memory runs out. */
static bool job_from_row(cl__arena *a, const cl_rows *rows, int r, cl_job *j) {
  memset(j, 0, sizeof *j);
  j->job.id = to_i64(cl_rows_value(rows, r, CL__OPS_JOBS_ID));
  j->job.worker = "outbound";
  j->job.state = state_of(cl_rows_value(rows, r, CL__OPS_JOBS_STATE));
  j->job.message_id = to_i64(cl_rows_value(rows, r, CL__OPS_JOBS_MESSAGE_ID));
  j->job.conversation_id = to_i64(cl_rows_value(rows, r, CL__OPS_JOBS_CONVERSATION_ID));
  j->attempt = (int)to_i64(cl_rows_value(rows, r, CL__OPS_JOBS_ATTEMPT));
  j->max_attempts = (int)to_i64(cl_rows_value(rows, r, CL__OPS_JOBS_MAX_ATTEMPTS));
  /* The nullable text columns: a NULL stays NULL, a value must copy. */
  static const struct {
    int col;
    size_t off;
  } texts[] = {
      {CL__OPS_JOBS_SCHEDULED_AT, offsetof(cl_job, job.scheduled_at)},
      {CL__OPS_JOBS_TEMPLATE_ID, offsetof(cl_job, job.template_id)},
      {CL__OPS_JOBS_ENVELOPE_ID, offsetof(cl_job, job.bulk_envelope_id)},
      {CL__OPS_JOBS_ATTEMPTED_AT, offsetof(cl_job, attempted_at)},
      {CL__OPS_JOBS_FINISHED_AT, offsetof(cl_job, finished_at)},
      {CL__OPS_JOBS_INSERTED_AT, offsetof(cl_job, inserted_at)},
      {CL__OPS_JOBS_LAST_ERROR, offsetof(cl_job, last_error)},
  };
  for (size_t i = 0; i < NKV(texts); i++) {
    const char *v = cl_rows_value(rows, r, texts[i].col);
    char *copy = cl__arena_strdup(a, v);
    if (v && !copy) return false;
    *(const char **)((char *)j + texts[i].off) = copy;
  }
  return true;
}

cl_status cl_jobs(cl_engine *eng, const cl_job_query *query, cl_job_list *out, cl_error *err) {
  if (out) memset(out, 0, sizeof *out);
  CL__ENTER(eng, err);
  if (!out) return cl__fail(err, CL_INVALID_ARGUMENT, "jobs: no place for the result");
  cl_job_query none = {0};
  const cl_job_query *q = query ? query : &none;
  char envelope_id[CL_UUID_LEN + 1];
  cl_job_state state;
  cl_status st = CL_OK;
  if (q->state) st = cl_job_state_parse(q->state, &state, err);
  if (st == CL_OK) st = check_uuid("envelope_id", q->envelope_id, envelope_id, err);
  if (st == CL_OK)
    st = cl__check_text("template_id", q->template_id, CL_MAX_TEMPLATE_ID_BYTES, false, err);
  if (st != CL_OK) return st;
  if (q->limit < 0 || q->limit > CL_JOBS_MAX_LIMIT)
    return cl__fail(err, CL_INVALID_ARGUMENT, "limit must be from 1 to %d, got %d",
                    CL_JOBS_MAX_LIMIT, q->limit);

  char limit[16];
  snprintf(limit, sizeof limit, "%d", q->limit ? q->limit : CL_JOBS_DEFAULT_LIMIT);
  const char *params[] = {q->state, envelope_id[0] ? envelope_id : NULL, q->template_id, limit};
  cl_rows *rows = NULL;
  st = cl__db_exec(&eng->db, CL__STMT_OPS_JOBS, false, CL__NPARAMS(params), params, &rows, err);
  if (st != CL_OK) return st;

  size_t n = (size_t)cl_rows_count(rows);
  cl__arena *a = cl__arena_new();
  cl_job *items = a ? cl__arena_alloc(a, (n ? n : 1) * sizeof *items) : NULL;
  bool ok = items != NULL;
  for (size_t i = 0; ok && i < n; i++) ok = job_from_row(a, rows, (int)i, &items[i]);
  cl_rows_free(rows);
  if (!ok) {
    cl__arena_free(a);
    return cl__fail(err, CL_DB_ERROR, "out of memory reading %zu jobs", n);
  }
  out->items = items;
  out->count = n;
  out->priv_ = a;
  cl__ok(err);
  return CL_OK;
}

cl_status cl_stats(cl_engine *eng, const char *envelope_id, cl_queue_stats *out, cl_error *err) {
  if (out) memset(out, 0, sizeof *out);
  CL__ENTER(eng, err);
  if (!out) return cl__fail(err, CL_INVALID_ARGUMENT, "stats: no place for the result");
  char env[CL_UUID_LEN + 1];
  cl_status st = check_uuid("envelope_id", envelope_id, env, err);
  if (st != CL_OK) return st;
  const char *params[] = {env[0] ? env : NULL};
  cl_rows *rows = NULL;
  st = cl__db_exec(&eng->db, CL__STMT_OPS_STATS, false, CL__NPARAMS(params), params, &rows, err);
  if (st != CL_OK) return st;
  /* At least one row: the queue-wide values ride on every row. */
  for (int r = 0; r < cl_rows_count(rows); r++) {
    cl_job_state s;
    const char *name = cl_rows_value(rows, r, CL__OPS_STATS_STATE);
    if (name && cl_job_state_parse(name, &s, NULL) == CL_OK)
      out->count[s] = to_i64(cl_rows_value(rows, r, CL__OPS_STATS_COUNT));
  }
  if (cl_rows_count(rows) > 0) {
    out->oldest_due_age_seconds = to_i64(cl_rows_value(rows, 0, CL__OPS_STATS_OLDEST));
    const char *paused = cl_rows_value(rows, 0, CL__OPS_STATS_PAUSED);
    out->paused = paused && paused[0] == 't';
  }
  cl_rows_free(rows);
  cl__ok(err);
  return CL_OK;
}

cl_status cl_envelopes_progress(cl_engine *eng, const char *const *envelope_ids, size_t count,
                                cl_envelope_progress *out, cl_error *err) {
  CL__ENTER(eng, err);
  if (count > 0 && (!envelope_ids || !out))
    return cl__fail(err, CL_INVALID_ARGUMENT, "envelope_progress: ids and a result are required");
  if (count > CL_ENVELOPES_MAX_LIMIT)
    return cl__fail(err, CL_INVALID_ARGUMENT, "envelope_progress: %zu ids, at most %d", count,
                    CL_ENVELOPES_MAX_LIMIT);
  if (count == 0) {
    cl__ok(err);
    return CL_OK;
  }
  memset(out, 0, count * sizeof *out);
  char *text = malloc(count * (CL_UUID_LEN + 1) + 3), *p = text;
  if (!text) return cl__fail(err, CL_DB_ERROR, "out of memory");
  *p++ = '{';
  for (size_t i = 0; i < count; i++) {
    char id[CL_UUID_LEN + 1];
    cl_status st = check_uuid("envelope id", envelope_ids[i], id, err);
    if (st == CL_OK && !envelope_ids[i])
      st = cl__fail(err, CL_INVALID_ARGUMENT, "envelope id is NULL");
    if (st != CL_OK) {
      free(text);
      return st;
    }
    if (i) *p++ = ',';
    memcpy(p, id, CL_UUID_LEN);
    p += CL_UUID_LEN;
  }
  *p++ = '}';
  *p = '\0';
  const char *params[] = {text};
  cl_rows *rows = NULL;
  cl_status st = cl__db_exec(&eng->db, CL__STMT_ENVELOPE_PROGRESS, false, CL__NPARAMS(params),
                             params, &rows, err);
  free(text);
  if (st != CL_OK) return st;
  /* One row per id, in their order. */
  for (int r = 0; r < cl_rows_count(rows) && (size_t)r < count; r++) {
    out[r].pending = to_i64(cl_rows_value(rows, r, CL__PROGRESS_PENDING));
    out[r].sent = to_i64(cl_rows_value(rows, r, CL__PROGRESS_SENT));
    out[r].failed = to_i64(cl_rows_value(rows, r, CL__PROGRESS_FAILED));
    out[r].cancelled = to_i64(cl_rows_value(rows, r, CL__PROGRESS_CANCELLED));
  }
  cl_rows_free(rows);
  cl__ok(err);
  return CL_OK;
}

/* ------------------------------------------------------------------ */
/* State changes                                                        */
/* ------------------------------------------------------------------ */

/* The statement failed on its own count check (cairnloop_expect_count):
 * jobs moved between counting and changing them. */
static bool jobs_moved(const cl_engine *eng) { return strcmp(eng->db.sqlstate, "40001") == 0; }

/* Runs a one-column change statement and reads its count. */
static cl_status run_change(cl_engine *eng, cl__stmt id, int nparams, const char *const *params,
                            const char *action, const char *actor, const cl_kv *md, size_t nmd,
                            int64_t *changed, cl_error *err) {
  cl_rows *rows = NULL;
  char *audit_json = NULL;
  cl_status st;
  if (eng->has_auditor)
    st = cl__audited(eng, id, nparams, params, action, actor, md, nmd, &audit_json, &rows, err);
  else st = cl__db_exec(&eng->db, id, false, nparams, params, &rows, err);
  /* The operations return counts; the auditor's answer is its own record. */
  free(audit_json);
  if (st == CL_OK && changed)
    *changed = cl_rows_count(rows) > 0 ? to_i64(cl_rows_value(rows, 0, CL__OPS_CHANGED)) : 0;
  cl_rows_free(rows);
  return st;
}

static void emit_cancelled(cl_engine *eng, int64_t n) {
  if (n <= 0 || !cl__tel_on(&eng->tel, CL__EV_DELIVERY_CANCELLED)) return;
  cl_kv m[] = {KV_INT("count", n)};
  cl_kv md[] = {KV_STR("outcome", "cancelled")};
  cl__tel_emit(&eng->tel, CL__EV_DELIVERY_CANCELLED, m, NKV(m), md, NKV(md));
}

/* cl_retry and cl_cancel: validate, resolve the actor, change (counted
 * first and retried while jobs move, when audited). */
static cl_status change_jobs(cl_engine *eng, bool retry, const cl_job_selector *sel,
                             int64_t *changed, cl_error *err) {
  const char *action = retry ? "retry_jobs" : "cancel_jobs";
  cl__stmt stmt = retry ? CL__STMT_OPS_RETRY : CL__STMT_OPS_CANCEL;
  char envelope_id[CL_UUID_LEN + 1] = "";
  char *ids_text = NULL, *actor = NULL;
  cl_status st = check_selector(sel, retry, envelope_id, &ids_text, err);
  if (st != CL_OK) return st;
  st = cl__resolve_actor(eng, sel->actor, action, &actor, err);
  if (st != CL_OK) {
    free(ids_text);
    return st;
  }
  const char *env = envelope_id[0] ? envelope_id : NULL;
  const char *all = sel->all_discarded ? "true" : "false";
  int64_t n = 0;

  if (!eng->has_auditor) {
    /* One statement selects and changes; nothing to tell beforehand. */
    const char *rparams[] = {ids_text, env, all, NULL};
    const char *cparams[] = {ids_text, env, NULL};
    st = retry
           ? run_change(eng, stmt, CL__NPARAMS(rparams), rparams, action, actor, NULL, 0, &n, err)
           : run_change(eng, stmt, CL__NPARAMS(cparams), cparams, action, actor, NULL, 0, &n, err);
  } else {
    const char *tparams[] = {retry ? "retry" : "cancel", ids_text, env, all};
    for (int attempt = 1;; attempt++) {
      cl_rows *rows = NULL;
      st = cl__db_exec(&eng->db, CL__STMT_OPS_TARGETS, false, CL__NPARAMS(tparams), tparams, &rows,
                       err);
      if (st != CL_OK) break;
      n = to_i64(cl_rows_value(rows, 0, CL__OPS_TARGETS_COUNT));
      if (n == 0) { /* nothing would change: no change, no audit */
        cl_rows_free(rows);
        break;
      }
      /* Change exactly the jobs counted, and fail if they moved meanwhile. */
      char expected[24];
      snprintf(expected, sizeof expected, "%" PRId64, n);
      const char *target = cl_rows_value(rows, 0, CL__OPS_TARGETS_IDS);
      const char *rparams[] = {target, NULL, "false", expected};
      const char *cparams[] = {target, NULL, expected};
      cl_kv md[] = {KV_INT("count", n), KV_OPT_STR("bulk_envelope_id", env)};
      int64_t done = 0;
      st = retry ? run_change(eng, stmt, CL__NPARAMS(rparams), rparams, action, actor, md, NKV(md),
                              &done, err)
                 : run_change(eng, stmt, CL__NPARAMS(cparams), cparams, action, actor, md, NKV(md),
                              &done, err);
      cl_rows_free(rows);
      if (st == CL_OK) {
        n = done;
        break;
      }
      n = 0;
      if (!(st == CL_DB_ERROR && jobs_moved(eng)) || attempt == AUDITED_ATTEMPTS) break;
      cl_log(eng, CL_LOG_DEBUG, "%s: jobs moved while being changed; counting again", action);
    }
  }
  free(ids_text);
  free(actor);
  if (st != CL_OK) return st;
  if (!retry) emit_cancelled(eng, n);
  if (changed) *changed = n;
  cl__ok(err);
  return CL_OK;
}

cl_status cl_retry(cl_engine *eng, const cl_job_selector *selector, int64_t *retried,
                   cl_error *err) {
  if (retried) *retried = 0;
  CL__ENTER(eng, err);
  return change_jobs(eng, true, selector, retried, err);
}

cl_status cl_cancel(cl_engine *eng, const cl_job_selector *selector, int64_t *cancelled,
                    cl_error *err) {
  if (cancelled) *cancelled = 0;
  CL__ENTER(eng, err);
  return change_jobs(eng, false, selector, cancelled, err);
}

/* cl_pause and cl_resume. */
static cl_status set_paused(cl_engine *eng, bool paused, const char *actor_in, cl_error *err) {
  const char *action = paused ? "pause_delivery" : "resume_delivery";
  cl_status st = cl__check_text("actor", actor_in, CL_MAX_ACTOR_BYTES, false, err);
  if (st != CL_OK) return st;
  char *actor = NULL;
  st = cl__resolve_actor(eng, actor_in, action, &actor, err);
  if (st != CL_OK) return st;
  /* The channel workers LISTEN on (queue.c, migration 20260527065000). */
  char channel[64];
  snprintf(channel, sizeof channel, "cairnloop_jobs:%.48s", eng->schema);
  const char *params[] = {paused ? "true" : "false", channel};
  st = run_change(eng, CL__STMT_OPS_PAUSE, CL__NPARAMS(params), params, action, actor, NULL, 0,
                  NULL, err);
  free(actor);
  if (st != CL_OK) return st;
  cl_log(eng, CL_LOG_DEBUG, "%s: workers of schema %s %s", action, eng->schema,
         paused ? "claim nothing now" : "claim again");
  cl__ok(err);
  return CL_OK;
}

cl_status cl_pause(cl_engine *eng, const char *actor, cl_error *err) {
  CL__ENTER(eng, err);
  return set_paused(eng, true, actor, err);
}

cl_status cl_resume(cl_engine *eng, const char *actor, cl_error *err) {
  CL__ENTER(eng, err);
  return set_paused(eng, false, actor, err);
}

/* ------------------------------------------------------------------ */
/* Retention                                                            */
/* ------------------------------------------------------------------ */

void cl__ops_init(cl__ops *ops, const cl_config *cfg) {
  memset(ops, 0, sizeof *ops);
  ops->retention_completed_s = cfg->retention_completed_seconds ? cfg->retention_completed_seconds
                                                                : CL_DEFAULT_RETENTION_COMPLETED_S;
  ops->retention_failed_s = cfg->retention_failed_seconds ? cfg->retention_failed_seconds
                                                          : CL_DEFAULT_RETENTION_FAILED_S;
  ops->retention_interval_ms = cfg->retention_interval_ms ? cfg->retention_interval_ms
                                                          : CL_DEFAULT_RETENTION_INTERVAL_MS;
  /* Not at once: a one-shot cl_work (a script, a test) pays nothing extra. */
  ops->next_retention_ms = cl__monotonic_ns() / 1000000 + ops->retention_interval_ms;
}

/* One cl_ops_prune: at most `limit` of each kind; *deleted jobs gone. */
static cl_status prune_once(cl_engine *eng, int64_t completed_s, int64_t failed_s, int limit,
                            int64_t *deleted, cl_error *err) {
  char c[24], f[24], l[16];
  snprintf(c, sizeof c, "%" PRId64, completed_s);
  snprintf(f, sizeof f, "%" PRId64, failed_s);
  snprintf(l, sizeof l, "%d", limit);
  const char *params[] = {completed_s >= 0 ? c : NULL, failed_s >= 0 ? f : NULL, l};
  cl_rows *rows = NULL;
  cl_status st = cl__db_exec(&eng->db, CL__STMT_OPS_PRUNE, false, CL__NPARAMS(params), params,
                             &rows, err);
  if (st == CL_OK) *deleted = to_i64(cl_rows_value(rows, 0, CL__OPS_CHANGED));
  cl_rows_free(rows);
  return st;
}

int64_t cl__ops_retention_pass(cl_engine *eng) {
  cl__ops *ops = &eng->ops;
  if (ops->retention_interval_ms < 0) return 0;
  if (ops->retention_completed_s < 0 && ops->retention_failed_s < 0) return 0;
  int64_t now = cl__monotonic_ns() / 1000000;
  if (now < ops->next_retention_ms) return 0;
  int64_t deleted = 0;
  cl_error err;
  cl_status st = prune_once(eng, ops->retention_completed_s, ops->retention_failed_s,
                            RETENTION_BATCH, &deleted, &err);
  if (st != CL_OK)
    cl_log(eng, CL_LOG_WARN, "retention: %s (next pass in %d ms)", err.message,
           ops->retention_interval_ms);
  else if (deleted > 0)
    cl_log(eng, CL_LOG_DEBUG, "retention: deleted %" PRId64 " finished jobs", deleted);
  /* A full batch: more are waiting, so the next batch prunes again. */
  ops->next_retention_ms = st == CL_OK && deleted >= RETENTION_BATCH
                             ? now
                             : now + ops->retention_interval_ms;
  return st == CL_OK ? deleted : 0;
}

cl_status cl_prune(cl_engine *eng, int64_t older_than_seconds, int64_t *deleted, cl_error *err) {
  if (deleted) *deleted = 0;
  CL__ENTER(eng, err);
  int64_t completed_s = older_than_seconds >= 0 ? older_than_seconds
                                                : eng->ops.retention_completed_s;
  int64_t failed_s = older_than_seconds >= 0 ? older_than_seconds : eng->ops.retention_failed_s;
  int64_t total = 0, n;
  cl_status st = CL_OK;
  if (completed_s >= 0 || failed_s >= 0) {
    /* Fewer than a batch of each kind: none left but rows others hold. */
    do {
      st = prune_once(eng, completed_s, failed_s, PRUNE_BATCH, &n, err);
      if (st == CL_OK) total += n;
    } while (st == CL_OK && n >= PRUNE_BATCH);
  }
  if (deleted) *deleted = total;
  if (st == CL_OK) cl__ok(err);
  return st;
}

void cl__ops_note_paused(cl_engine *eng, bool paused) {
  if (paused == eng->ops.paused_seen) return;
  eng->ops.paused_seen = paused;
  if (paused)
    cl_log(eng, CL_LOG_INFO,
           "delivery is paused: claiming nothing until it is resumed "
           "(cairnloop resume)");
  else cl_log(eng, CL_LOG_INFO, "delivery resumed: claiming again");
}
