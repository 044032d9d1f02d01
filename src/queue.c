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
 * idempotency key tells the repeats apart).  Uses db.c, telemetry.c and the
 * engine's notifier.
 */
#include "engine.h"
#include "hooks.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* Statements (@S: the quoted schema)                                   */
/* ------------------------------------------------------------------ */

#define STR_(x) #x
#define STR(x) STR_(x)

/* The longest retry backoff, in seconds. */
#define CL__BACKOFF_MAX_SECONDS 3600

/*
 * Where the server's time goes: per delivered job it writes the job row
 * twice (claim, completion) and the message row once, and most of its
 * work is index maintenance.  So a claim changes no indexed column (a HOT
 * update: no index entry written, see migration 20260527064000), and only
 * a job's completion writes index entries.  The statements are prepared
 * once per connection.
 */

/*
 * $1 limit.  Due jobs and jobs whose lease expired (their worker died),
 * both found in the index of unfinished jobs in the order they came due.
 * The index also holds the jobs other workers are delivering right now:
 * their rows are read and passed over (the lease is checked on the row),
 * a cost that grows with the jobs in flight, not with the table.  SKIP
 * LOCKED lets any number of workers claim side by side, each getting
 * different rows; the row lock re-checks the conditions, so a job
 * finished or claimed since the snapshot is skipped rather than claimed
 * twice.
 */
#define PICK_DUE_JOBS                                                                    \
  "WITH due AS ("                                                                        \
  "  SELECT id, state = 'executing' AS rescued FROM @S.cairnloop_delivery_jobs"          \
  "  WHERE completed_at IS NULL AND discarded_at IS NULL AND scheduled_at <= now()"      \
  "    AND (state <> 'executing' OR lease_expires_at < now())"                           \
  "  ORDER BY scheduled_at, id LIMIT $1::int FOR UPDATE SKIP LOCKED"                     \
  ")"

/*
 * $1 limit, $2 lease owner, $3 lease seconds, $4 max_attempts.  The
 * claiming worker's max_attempts is stamped on the job so the row shows
 * the limit that governs it.  `= ANY(ARRAY(...))` keeps the update on the
 * primary key whatever the planner thinks of the table's size.  Every row
 * carries the batch's count of rescued jobs.
 */
static const char SQL_CLAIM[] =
    PICK_DUE_JOBS
    ", claimed AS ("
    "  UPDATE @S.cairnloop_delivery_jobs j"
    "  SET state = 'executing', attempt = j.attempt + 1, max_attempts = $4::int,"
    "      attempted_at = now(), lease_owner = $2,"
    "      lease_expires_at = now() + make_interval(secs => $3::int)"
    "  WHERE j.id = ANY (ARRAY(SELECT id FROM due))"
    "  RETURNING j.id, j.message_id, j.conversation_id, j.attempt, j.template_id,"
    "            j.bulk_envelope_id, j.scheduled_at"
    ") "
    "SELECT c.id, c.message_id, c.conversation_id, c.attempt, c.template_id,"
    "       c.bulk_envelope_id::text, m.content, m.role, m.metadata->>'status',"
    "       v.status, v.subject, v.customer_ref,"
    "       (SELECT count(*) FROM due WHERE rescued)"
    " FROM claimed c"
    " JOIN @S.cairnloop_messages m ON m.id = c.message_id"
    " JOIN @S.cairnloop_conversations v ON v.id = c.conversation_id"
    " ORDER BY c.scheduled_at, c.id";

/*
 * $1 limit, $2 max_attempts.  Without a notifier there is nothing to
 * deliver, so claiming and completing are one step: the same jobs are
 * picked the same way and end exactly as a claim followed by a no_op
 * completion would leave them (attempt + 1, attempted_at, completed_at,
 * lease cleared, message sent), each job row written once instead of
 * twice, which doubles the rate.  Returns the number completed and, of
 * them, the rescued ones.
 */
static const char SQL_NO_OP[] =
    PICK_DUE_JOBS
    ", done AS ("
    "  UPDATE @S.cairnloop_delivery_jobs j"
    "  SET state = 'completed', attempt = j.attempt + 1, max_attempts = $2::int,"
    "      attempted_at = now(), completed_at = now(), lease_owner = NULL,"
    "      lease_expires_at = NULL"
    "  WHERE j.id = ANY (ARRAY(SELECT id FROM due))"
    "  RETURNING j.message_id"
    "), m AS ("
    "  UPDATE @S.cairnloop_messages m"
    "  SET metadata = jsonb_set(m.metadata, '{status}', '\"sent\"'::jsonb), updated_at = now()"
    "  FROM done WHERE m.id = done.message_id"
    ") "
    "SELECT count(*), (SELECT count(*) FROM due WHERE rescued) FROM done";

enum {
  CLAIM_ID, CLAIM_MESSAGE_ID, CLAIM_CONVERSATION_ID, CLAIM_ATTEMPT, CLAIM_TEMPLATE_ID,
  CLAIM_ENVELOPE_ID, CLAIM_CONTENT, CLAIM_ROLE, CLAIM_STATUS, CLAIM_CONV_STATUS,
  CLAIM_SUBJECT, CLAIM_CUSTOMER_REF, CLAIM_RESCUED_COUNT
};

/*
 * $1 the batch's job ids, $2 those whose delivery failed, $3 those handed
 * back unstarted, $4 the failures' reasons as a JSON object keyed by job
 * id, $5 the lease owner, $6 the backoff base in seconds.  Every other job was sent: it completes and its
 * message is marked sent.  A failed one marks its message failed, appends
 * {attempt, at, error} to the job's errors and becomes retryable after the
 * backoff, or discarded once attempt reaches max_attempts.  A job handed
 * back gets its lease cleared and its attempt restored; its message is
 * untouched.
 *
 * Outcomes are told apart by membership (= ANY over arrays that are empty
 * in the common case) and reasons looked up by key, never joined from
 * unnest(): a join's plan rests on row estimates, and with stale
 * statistics ("no job is executing") the planner may pick a nested loop
 * that rescans the whole array per job, quadratic in the batch.
 *
 * Backoff after failed attempt n: d = min(base * 2^n, 3600) seconds, plus uniform
 * jitter in [0, d/10): 2 s, 4 s, 8 s ... up to an hour, the jitter keeping
 * jobs that failed together from retrying in lockstep.
 *
 * Only rows this worker still leases are touched: if the lease expired and
 * another worker rescued the job, that worker owns its outcome now.  (Its
 * own claims cannot overlap: a worker completes a batch, or gives up on
 * it, before it claims the next.)  The statement is therefore also safe to
 * repeat after a lost reply.  Returns one row: jobs retried, discarded,
 * and touched in total.
 *
 * Row writes: a completed or discarded job leaves the index of unfinished
 * jobs (new entries in the others); a retry moves within it; a job handed
 * back changes no indexed column (HOT); the message's status is not
 * indexed either.
 */
#define FAILED "j.id = ANY ($2::bigint[])"
#define RELEASED "j.id = ANY ($3::bigint[])"
#define LAST_TRY "j.attempt >= j.max_attempts"
static const char SQL_COMPLETE[] =
    "WITH j AS ("
    "  UPDATE @S.cairnloop_delivery_jobs j SET"
    "    state = CASE"
    "      WHEN " RELEASED " THEN CASE WHEN j.attempt > 1 THEN 'retryable' ELSE 'available' END"
    "      WHEN " FAILED " THEN CASE WHEN " LAST_TRY " THEN 'discarded' ELSE 'retryable' END"
    "      ELSE 'completed' END,"
    "    attempt = CASE WHEN " RELEASED " THEN j.attempt - 1 ELSE j.attempt END,"
    "    attempted_at = CASE WHEN " RELEASED " AND j.attempt = 1 THEN NULL"
    "                        ELSE j.attempted_at END,"
    "    completed_at = CASE WHEN " FAILED " OR " RELEASED " THEN NULL ELSE now() END,"
    "    discarded_at = CASE WHEN " FAILED " AND " LAST_TRY " THEN now() END,"
    "    scheduled_at = CASE WHEN " FAILED " AND NOT " LAST_TRY
    "      THEN now() + make_interval(secs => least($6::float8 * power(2, j.attempt), " STR(CL__BACKOFF_MAX_SECONDS) ")"
    "                                          * (1 + 0.1 * random()))"
    "      ELSE j.scheduled_at END,"
    "    errors = CASE WHEN " FAILED " THEN j.errors || jsonb_build_array(jsonb_build_object("
    "      'attempt', j.attempt, 'at', now(), 'error', $4::jsonb ->> j.id::text))"
    "      ELSE j.errors END,"
    "    lease_owner = NULL, lease_expires_at = NULL"
    "  WHERE j.id = ANY ($1::bigint[]) AND j.state = 'executing' AND j.lease_owner = $5"
    "  RETURNING j.message_id, j.state, " FAILED " AS failed, " RELEASED " AS released"
    "), m AS ("
    "  UPDATE @S.cairnloop_messages m"
    "  SET metadata = jsonb_set(m.metadata, '{status}',"
    "        CASE WHEN j.failed THEN '\"failed\"'::jsonb ELSE '\"sent\"'::jsonb END),"
    "      updated_at = now()"
    "  FROM j WHERE m.id = j.message_id AND NOT j.released"
    ") "
    "SELECT count(*) FILTER (WHERE state = 'retryable' AND failed),"
    "       count(*) FILTER (WHERE state = 'discarded'), count(*) FROM j";

/*
 * $1 the schema's job channel.  Milliseconds until the next job comes due
 * or the next lease expires (<= 0: one is due now; NULL: nothing is
 * pending), and whether this session already LISTENs on the channel.  The
 * first waiting job is the head of the index of unfinished jobs (past the
 * ones being delivered); the leases are read only when nothing is due
 * (CASE evaluates the subquery lazily), and then the jobs due by now are
 * exactly the ones in flight.
 */
static const char SQL_NEXT_DUE[] =
    "SELECT ceil(extract(epoch FROM CASE WHEN w.at <= now() THEN w.at ELSE least(w.at,"
    "         (SELECT min(lease_expires_at) FROM @S.cairnloop_delivery_jobs"
    "          WHERE completed_at IS NULL AND discarded_at IS NULL AND scheduled_at <= now()"
    "            AND state = 'executing')) END"
    "       - clock_timestamp()) * 1000)::bigint,"
    "       $1 IN (SELECT pg_listening_channels())"
    " FROM (SELECT (SELECT scheduled_at FROM @S.cairnloop_delivery_jobs"
    "               WHERE completed_at IS NULL AND discarded_at IS NULL AND state <> 'executing'"
    "               ORDER BY scheduled_at, id LIMIT 1) AS at) w";

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

/* This file's statements, prepared once per connection like the engine's
 * others: the first batch of an engine registers them (cl__db_register
 * only stores the text; each is prepared on its first execution). */
static cl_status exec_q(cl_engine *eng, cl__stmt id, int nparams, const char *const *params,
                        cl_rows **rows, cl_error *err) {
  static const struct {
    cl__stmt id;
    const char *sql;
  } stmts[] = {
      {CL__STMT_CLAIM, SQL_CLAIM},
      {CL__STMT_COMPLETE, SQL_COMPLETE},
      {CL__STMT_NO_OP, SQL_NO_OP},
      {CL__STMT_NEXT_DUE, SQL_NEXT_DUE},
  };
  for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++) {
    if (eng->db.sql[stmts[i].id]) continue;
    cl_status st = cl__db_register(&eng->db, stmts[i].id, stmts[i].sql, eng->schema, err);
    if (st != CL_OK) return st;
  }
  return cl__db_exec(&eng->db, id, false, nparams, params, rows, err);
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

#define KV_STR(k, v) {(k), CL_VALUE_STRING, 0, (v)}
#define KV_INT(k, v) {(k), CL_VALUE_INT, (v), NULL}
#define KV_OPT_STR(k, v) {(k), (v) ? CL_VALUE_STRING : CL_VALUE_NIL, 0, (v)}
#define KV_NIL(k) {(k), CL_VALUE_NIL, 0, NULL}
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
 * reasons as a JSON object keyed by job id. */
typedef struct outcomes {
  sbuf all, failed, released, reasons;
  int n, nfailed, nreleased;
} outcomes;

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

/*
 * Completes the batch.  A connection lost on the way (a restarting server)
 * is retried with a short backoff, bounded well inside the lease: the
 * deliveries happened, and recording them now spares every one of them a
 * second delivery after the lease runs out.  The statement is idempotent
 * (it only touches rows still leased for that attempt).
 */
static cl_status complete(cl_engine *eng, outcomes *o, int64_t claimed_at_ms, cl_work_stats *stats,
                          cl_batch_info *batch, cl_error *err) {
  if (!outcomes_close(o)) return cl__fail(err, CL_DB_ERROR, "out of memory completing %d jobs", o->n);
  char p_base[32];
  snprintf(p_base, sizeof p_base, "%.3f", eng->backoff_base_ms / 1000.0);
  const char *params[] = {o->all.p, o->failed.p, o->released.p, o->reasons.p, eng->worker_id, p_base};
  int64_t window = (int64_t)eng->lease_seconds * 1000 / 2;
  if (window > 10000) window = 10000;
  int delay = 100, retries = 0;
  for (;;) {
    cl_rows *rows = NULL;
    cl_status st = exec_q(eng, CL__STMT_COMPLETE, 6, params, &rows, err);
    if (st == CL_OK && retries)
      cl_log(eng, CL_LOG_INFO, "recorded %d delivered jobs after reconnecting", o->n);
    if (st == CL_OK) {
      stats->retried += (int)to_i64(cl_rows_value(rows, 0, 0));
      stats->discarded += (int)to_i64(cl_rows_value(rows, 0, 1));
      int done = (int)to_i64(cl_rows_value(rows, 0, 2));
      cl_rows_free(rows);
      if (batch) batch->lost += o->n - done;
      if (done < o->n)
        cl_log(eng, CL_LOG_WARN,
               "%d of %d delivered jobs had lost their lease to another worker: not recorded here",
               o->n - done, o->n);
      return CL_OK;
    }
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

/* The batch without a notifier: one statement, then the no_op events. */
static cl_status work_no_op(cl_engine *eng, const char *p_limit, const char *p_max,
                            cl_work_stats *stats, cl_batch_info *batch, cl_error *err) {
  const char *params[] = {p_limit, p_max};
  cl_rows *rows = NULL;
  cl_status st = exec_q(eng, CL__STMT_NO_OP, 2, params, &rows, err);
  if (st != CL_OK) return st;
  int n = (int)to_i64(cl_rows_value(rows, 0, 0));
  if (batch) {
    batch->claimed = n;
    batch->rescued = (int)to_i64(cl_rows_value(rows, 0, 1));
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
  cl_work_stats scratch;
  cl_work_stats *stats = stats_out ? stats_out : &scratch;
  memset(stats, 0, sizeof *stats);
  if (batch) memset(batch, 0, sizeof *batch);
  if (!eng) return cl__fail(err, CL_INVALID_ARGUMENT, "no engine");
  if (limit < 1 || limit > CL_WORK_MAX_LIMIT)
    return cl__fail(err, CL_INVALID_ARGUMENT, "limit must be from 1 to %d, got %d",
                    CL_WORK_MAX_LIMIT, limit);
  if (eng->in_hook)
    return cl__fail(err, CL_INVALID_ARGUMENT, "work called from inside a hook");
  ensure_worker_id(eng);

  char p_limit[16], p_lease[16], p_max[16];
  snprintf(p_limit, sizeof p_limit, "%d", limit);
  snprintf(p_lease, sizeof p_lease, "%d", eng->lease_seconds);
  snprintf(p_max, sizeof p_max, "%d", eng->max_attempts);
  if (!eng->has_notifier) return work_no_op(eng, p_limit, p_max, stats, batch, err);
  const char *params[] = {p_limit, eng->worker_id, p_lease, p_max};
  cl_rows *rows = NULL;
  int64_t claimed_at_ms = cl__monotonic_ns() / 1000000;
  cl_status st = exec_q(eng, CL__STMT_CLAIM, 4, params, &rows, err);
  if (st != CL_OK) return st;

  int n = cl_rows_count(rows);
  if (batch) {
    batch->claimed = n;
    batch->rescued = n ? (int)to_i64(cl_rows_value(rows, 0, CLAIM_RESCUED_COUNT)) : 0;
  }
  if (n == 0) {
    cl_rows_free(rows);
    cl__ok(err);
    return CL_OK;
  }

  outcomes o = {0};
  int64_t lease_half_ms = (int64_t)eng->lease_seconds * 500;
  for (int i = 0; i < n; i++) {
    const char *v_bulk = cl_rows_value(rows, i, CLAIM_ENVELOPE_ID);
    int64_t id = to_i64(cl_rows_value(rows, i, CLAIM_ID));
    int attempt = (int)to_i64(cl_rows_value(rows, i, CLAIM_ATTEMPT));
    /* Hand back what is not started when asked to stop, and once half the
     * lease is spent: a slow notifier must not keep jobs leased past their
     * expiry, where another worker would rescue and deliver them again. */
    if ((stop && *stop) || cl__monotonic_ns() / 1000000 - claimed_at_ms > lease_half_ms) {
      outcome_add(&o, id, 'r', NULL);
      if (batch) batch->released++;
      continue;
    }
    cl_message msg = {
        .id = to_i64(cl_rows_value(rows, i, CLAIM_MESSAGE_ID)),
        .conversation_id = to_i64(cl_rows_value(rows, i, CLAIM_CONVERSATION_ID)),
        .role = cl_rows_value(rows, i, CLAIM_ROLE),
        .content = cl_rows_value(rows, i, CLAIM_CONTENT),
        .template_id = cl_rows_value(rows, i, CLAIM_TEMPLATE_ID),
        .status = cl_rows_value(rows, i, CLAIM_STATUS),
        .bulk_envelope_id = v_bulk,
    };
    cl_conversation conv = {
        .id = msg.conversation_id,
        .status = cl_rows_value(rows, i, CLAIM_CONV_STATUS),
        .subject = cl_rows_value(rows, i, CLAIM_SUBJECT),
        .customer_ref = cl_rows_value(rows, i, CLAIM_CUSTOMER_REF),
    };
    char key[48];
    snprintf(key, sizeof key, "%" PRId64 ":%d", msg.id, attempt);
    cl_error nerr;
    cl_status ns = cl__deliver(eng, &msg, &conv, key, attempt, &nerr);
    char kind = ns == CL_OK ? 's' : 'f';
    const char *error = NULL;
    if (kind == 's') {
      stats->sent++;
    } else {
      stats->failed++;
      error = nerr.message[0] ? nerr.message : cl_status_name(ns);
    }
    outcome_add(&o, id, kind, error);
    emit_delivery(eng, kind, &msg);
  }
  cl_rows_free(rows);

  st = complete(eng, &o, claimed_at_ms, stats, batch, err);
  outcomes_free(&o);
  if (st == CL_OK) cl__ok(err);
  return st;
}

cl_status cl_work(cl_engine *eng, int limit, cl_work_stats *stats, cl_error *err) {
  return cl_work_batch(eng, limit, NULL, stats, NULL, err);
}

/* ------------------------------------------------------------------ */
/* The idle worker's wait                                               */
/* ------------------------------------------------------------------ */

cl_status cl_work_wait(cl_engine *eng, int max_ms, int wake_fd, cl_wake *why, cl_error *err) {
  *why = CL_WAKE_TIMEOUT;
  cl__db *db = &eng->db;
  cl_status st = cl__db_ensure(db, err);
  if (st != CL_OK) return st;

  /* The job channel, as the trigger of migration 20260527065000 names it:
   * cut to 63 bytes, an identifier's length (schema names are ASCII). */
  char channel[64];
  snprintf(channel, sizeof channel, "cairnloop_jobs:%.48s", eng->schema);
  const char *params[] = {channel};
  cl_rows *rows = NULL;
  st = exec_q(eng, CL__STMT_NEXT_DUE, 1, params, &rows, err);
  if (st != CL_OK) return st;
  if (cl_rows_value(rows, 0, 1)[0] != 't') {
    /* A new session (first wait, or after a reconnect) does not listen
     * yet.  Subscribe, then look again: a job inserted before the LISTEN
     * shows in the second look, one inserted after it sends a wake-up. */
    cl_rows_free(rows);
    rows = NULL;
    st = cl__db_listen(db, channel, err);
    if (st == CL_OK) st = exec_q(eng, CL__STMT_NEXT_DUE, 1, params, &rows, err);
    if (st != CL_OK) return st;
  }
  const char *v = cl_rows_value(rows, 0, 0);
  int64_t wait = max_ms < 0 ? 0 : max_ms;
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
  case CL__DB_WAKE_NOTIFY: *why = CL_WAKE_NOTIFIED; break;
  case CL__DB_WAKE_FD: *why = CL_WAKE_FD; break;
  case CL__DB_WAKE_SIGNAL: *why = CL_WAKE_SIGNAL; break;
  case CL__DB_WAKE_TIMEOUT: *why = wait < max_ms ? CL_WAKE_DUE : CL_WAKE_TIMEOUT; break;
  case CL__DB_WAKE_LOST:
    return cl__fail(err, CL_DB_ERROR, "connection lost while waiting for jobs");
  }
  cl__ok(err);
  return CL_OK;
}
