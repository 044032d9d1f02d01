/*
 * cairnloop.h - the public C API of the Cairnloop engine.
 *
 * An engine sends outbound support messages to conversations stored in
 * PostgreSQL: one at a time (cl_trigger) or a whole cohort under one durable
 * audit envelope (cl_bulk_trigger), and delivers them through a durable job
 * queue.  This is the only header a host includes; it exposes neither libpq
 * nor Lua.  The contract shared with the Lua module and the command line is
 * API.md; names and codes here match it.
 *
 * Conventions:
 *   - every function returns a cl_status and fills a caller-provided
 *     cl_error (which may be NULL) with the same one-line message;
 *   - input strings are borrowed for the duration of the call;
 *   - results are caller-owned structs released with their cl_*_clear(),
 *     handles are released with cl_close(); both accept NULL and are
 *     idempotent;
 *   - one engine per thread; engines share nothing.
 */
#ifndef CAIRNLOOP_H
#define CAIRNLOOP_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define CL_API __attribute__((visibility("default")))
#else
#define CL_API
#endif

#define CL_VERSION "0.1.0"

/*
 * The status table.  One row per status: enum suffix, the code string used
 * by Lua and the CLI, and the CLI exit status.  Everything else derives
 * from it, so C, Lua and the CLI cannot drift apart.
 */
#define CL_STATUS_MAP(XX)                             \
  XX(OK, "ok", 0)                                     \
  XX(INVALID_ARGUMENT, "invalid_argument", 2)         \
  XX(BATCH_TOO_LARGE, "batch_too_large", 3)           \
  XX(ACTOR_REJECTED, "actor_rejected", 4)             \
  XX(AUDIT_REJECTED, "audit_rejected", 4)             \
  XX(UNKNOWN_CONVERSATION, "unknown_conversation", 4) \
  XX(ENVELOPE_CONFLICT, "envelope_conflict", 4)       \
  XX(HOOK_ERROR, "hook_error", 5)                     \
  XX(DB_ERROR, "db_error", 6)

typedef enum cl_status {
#define CL__STATUS_ENUM(name, str, exit_code) CL_##name,
  CL_STATUS_MAP(CL__STATUS_ENUM)
#undef CL__STATUS_ENUM
      CL_STATUS__COUNT
} cl_status;

/* The code string of API.md ("invalid_argument", ...); "unknown" if out of range. */
CL_API const char *cl_status_name(cl_status status);
/* The `cairnloop` command's exit status for a status (0, 2..6). */
CL_API int cl_status_exit_code(cl_status status);

/* One human line naming the offending field or id, never a trailing newline. */
#define CL_ERROR_MESSAGE_MAX 256
typedef struct cl_error {
  cl_status code;
  char message[CL_ERROR_MESSAGE_MAX];
} cl_error;

/* Limits enforced by validation (CL_INVALID_ARGUMENT past them). */
#define CL_MAX_TEMPLATE_ID_BYTES 255
#define CL_MAX_ACTOR_BYTES 255
#define CL_MAX_BODY_BYTES (256 * 1024)
#define CL_MAX_SCHEDULE_IN (10LL * 366 * 24 * 3600)
#define CL_MAX_COHORT 1000000

/* ------------------------------------------------------------------ */
/* Engine lifecycle                                                     */
/* ------------------------------------------------------------------ */

typedef struct cl_engine cl_engine;

/* The log levels: enum suffix and the name used by Lua (`cl.log`), the
 * command ($CAIRNLOOP_LOG_LEVEL) and log lines. */
#define CL_LOG_LEVEL_MAP(XX) \
  XX(DEBUG, "debug")         \
  XX(INFO, "info")           \
  XX(WARN, "warn")           \
  XX(ERROR, "error")

typedef enum cl_log_level {
#define CL__LOG_LEVEL_ENUM(name, str) CL_LOG_##name,
  CL_LOG_LEVEL_MAP(CL__LOG_LEVEL_ENUM)
#undef CL__LOG_LEVEL_ENUM
      CL_LOG__COUNT
} cl_log_level;

/* "debug", "info", "warn", "error"; NULL if out of range. */
CL_API const char *cl_log_level_name(cl_log_level level);
/* Parses a level name; CL_INVALID_ARGUMENT (naming the accepted ones) if unknown. */
CL_API cl_status cl_log_level_parse(const char *name, cl_log_level *level, cl_error *err);

/* A log sink.  `line` is one line without a newline, valid for the call. */
typedef void (*cl_log_fn)(void *ud, cl_log_level level, const char *line);

typedef struct cl_config {
  /* libpq URI or conninfo.  NULL: env CAIRNLOOP_DATABASE_URL, else libpq's
   * own defaults (PGHOST, PGDATABASE, ...). */
  const char *database;
  /* Schema holding every table; [a-z_][a-z0-9_]* up to 63 bytes.  NULL: "cairnloop". */
  const char *schema;
  /* Cohort cap.  0: env CAIRNLOOP_MAX_BATCH_SIZE, else 25. */
  int max_batch_size;
  /* Budgets for every policy hook call; 0 selects the documented default:
   * 10,000,000 Lua instructions, 5,000 ms wall clock, 64 MiB of Lua memory. */
  int64_t hook_instruction_limit;
  int64_t hook_time_limit_ms;
  size_t hook_memory_limit;
  /* Where the engine logs.  NULL: warnings and errors to stderr. */
  cl_log_fn log;
  void *log_ud;
  /* Below this level log lines are dropped.  Default CL_LOG_INFO. */
  cl_log_level log_level;
  /* Delivery: attempts before a job is discarded (0: 20), and how long a
   * claimed job stays leased to its worker before it is rescued (0: 60 s). */
  int max_attempts;
  int lease_seconds;
  /* Retry backoff after failed attempt n: min(base * 2^n, 1 hour) plus up
   * to 10% jitter.  0: a base of 1,000 ms (2 s, 4 s, 8 s, ...). */
  int backoff_base_ms;
  /* Retention of finished jobs, in seconds: completed ones, and discarded
   * and cancelled ones.  0: the defaults, 1 day and 7 days; negative: kept
   * forever.  Messages and envelopes are never deleted. */
  int64_t retention_completed_seconds;
  int64_t retention_failed_seconds;
  /* How often a worker's cl_work_batch deletes expired finished jobs (a
   * pass of at most 500 per kind, SKIP LOCKED), in ms.  0: every 30 s,
   * the first pass one interval after cl_open; negative: never (prune on
   * demand with cl_prune). */
  int retention_interval_ms;
  /* For a transaction pooler (PgBouncer in transaction mode), where each
   * transaction may run on another server session: no named prepared
   * statements (each statement is sent with its text and parsed and planned
   * every time, in the same round trips), and cl_work_wait does not LISTEN
   * (a subscription would land on a random session) but polls, waking at
   * the next due job or after CL_POOLER_POLL_MS at most.  Nonzero: on.
   * 0: env CAIRNLOOP_NO_PREPARED_STATEMENTS (1/true/yes/on or
   * 0/false/no/off), else off: statements are prepared once per connection
   * and idle workers LISTEN. */
  int no_prepared_statements;
  /* Destinations a policy's notifier may reach with cl.http.request,
   * NULL-terminated; env CAIRNLOOP_HTTP_ALLOW (comma-separated) adds its
   * own.  NULL and no env: nothing is allowed.  A pattern is
   * "scheme://host[:port][/path-prefix]" (http or https; host "*" or
   * "*.domain"; port "*"; no port: the scheme's default), e.g.
   * "https://hooks.example.com/" or "http://127.0.0.1:*".  A malformed
   * pattern makes cl_open fail with CL_INVALID_ARGUMENT. */
  const char *const *http_allow;
} cl_config;

/* The idle worker's poll interval when no_prepared_statements is set, in ms. */
#define CL_POOLER_POLL_MS 1000

/* Fills `cfg` with the defaults (all zero/NULL, log level info). */
CL_API void cl_config_init(cl_config *cfg);

/*
 * Opens an engine: validates the configuration, connects to PostgreSQL.
 * On success *out owns the engine until cl_close().  `cfg` may be NULL.
 * Returns CL_OK, CL_INVALID_ARGUMENT (bad schema, bad cap) or CL_DB_ERROR.
 */
CL_API cl_status cl_open(cl_engine **out, const cl_config *cfg, cl_error *err);

/* Closes the connection, releases every hook and handler.  NULL is a no-op. */
CL_API void cl_close(cl_engine *eng);

/*
 * Applies the embedded migrations in file-name order, each in its own
 * transaction, serialised by an advisory lock; re-running is a no-op.
 * Returns CL_OK or CL_DB_ERROR.
 */
CL_API cl_status cl_migrate(cl_engine *eng, cl_error *err);

/* Sets the cohort cap; it takes effect on the next call.  CL_INVALID_ARGUMENT if < 1. */
CL_API cl_status cl_set_max_batch_size(cl_engine *eng, int max_batch_size, cl_error *err);
/* The cohort cap of the moment. */
CL_API int cl_max_batch_size(const cl_engine *eng);
/* The schema the engine uses (owned by the engine). */
CL_API const char *cl_schema(const cl_engine *eng);

/* Logs one line through the engine's sink (used by policy `cl.log`). */
CL_API void cl_log(cl_engine *eng, cl_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* ------------------------------------------------------------------ */
/* Telemetry                                                            */
/* ------------------------------------------------------------------ */

typedef enum cl_value_type { CL_VALUE_NIL, CL_VALUE_INT, CL_VALUE_STRING } cl_value_type;

/* One key of a measurement or metadata map. */
typedef struct cl_kv {
  const char *key;
  cl_value_type type;
  int64_t i;     /* CL_VALUE_INT */
  const char *s; /* CL_VALUE_STRING */
} cl_kv;

typedef struct cl_map {
  const cl_kv *items;
  size_t count;
} cl_map;

typedef cl_map cl_measurements;
typedef cl_map cl_metadata;

/*
 * A telemetry handler.  `event` is the NULL-terminated list of name parts
 * ({"cairnloop","outbound","triggered","start",NULL}); everything passed is
 * valid only for the call.  A handler may call cl_detach(), also on itself.
 */
typedef void (*cl_handler_fn)(const char *const *event, const cl_measurements *measurements,
                              const cl_metadata *metadata, void *config);

/*
 * Attaches `fn` under `handler_id` to one event, named in dotted form
 * ("cairnloop.outbound.bulk.triggered.stop").  Any name may be attached,
 * including ones never emitted.  `config` is passed back to every call.
 * CL_INVALID_ARGUMENT if the id is taken or a name is empty.
 * `release`, if not NULL, is called with `config` when the handler is
 * detached or the engine closes.
 */
CL_API cl_status cl_attach(cl_engine *eng, const char *handler_id, const char *event_name,
                           cl_handler_fn fn, void *config, void (*release)(void *config),
                           cl_error *err);
/* As cl_attach, for `count` event names under one id. */
CL_API cl_status cl_attach_many(cl_engine *eng, const char *handler_id,
                                const char *const *event_names, size_t count, cl_handler_fn fn,
                                void *config, void (*release)(void *config), cl_error *err);
/* Detaches a handler: 1 if it was attached, 0 otherwise. */
CL_API int cl_detach(cl_engine *eng, const char *handler_id);

/* Looks a key up in a map; NULL if absent. */
CL_API const cl_kv *cl_map_get(const cl_map *map, const char *key);

/* ------------------------------------------------------------------ */
/* Hooks (host policy).  Lua policy scripts plug in through these.      */
/* ------------------------------------------------------------------ */

/* The operation's transaction, valid only during an auditor call. */
typedef struct cl_tx cl_tx;
/* Rows returned by cl_tx_exec (text values; NULL for SQL NULL). */
typedef struct cl_rows cl_rows;

/*
 * Runs one parameterised statement in the operation's transaction.
 * `params` are bound as text ($1..$n; NULL is SQL NULL), never interpolated.
 * On success *rows (may be NULL when not wanted) owns the result until
 * cl_rows_free().  An SQL error returns CL_DB_ERROR with the server's
 * message and aborts the operation's transaction; using `tx` after its
 * call returns CL_INVALID_ARGUMENT.
 * The statement may only read and write rows: it must start with SELECT,
 * INSERT, UPDATE, DELETE, WITH, VALUES or TABLE (after comments and
 * parentheses) and be a single statement.  Anything else (COMMIT, SET,
 * DEALLOCATE, ...) is refused before it is sent; that, and a statement
 * still running when the hook's wall-clock budget (hook_time_limit_ms) runs
 * out, which is cancelled, return CL_HOOK_ERROR and fail the hook (the
 * operation rolls back whatever the hook then returns).  Before the
 * transaction commits, the engine checks that the hook's statements left
 * the session as they found it (no setting, role, relation or advisory
 * lock of theirs); if not, the operation fails with CL_HOOK_ERROR "...
 * tx:exec changed the session (<what>)" and nothing is written.
 */
CL_API cl_status cl_tx_exec(cl_tx *tx, const char *sql, int nparams, const char *const *params,
                            cl_rows **rows, cl_error *err);
CL_API int cl_rows_count(const cl_rows *rows);
CL_API int cl_rows_columns(const cl_rows *rows);
CL_API const char *cl_rows_name(const cl_rows *rows, int column);
/* PostgreSQL type oid of a column (20 int8, 23 int4, 16 bool, 25 text, ...). */
CL_API unsigned cl_rows_type(const cl_rows *rows, int column);
CL_API const char *cl_rows_value(const cl_rows *rows, int row, int column);
CL_API void cl_rows_free(cl_rows *rows);

/*
 * The auditor.  audit() runs inside the operation's transaction after its
 * inserts, once per trigger or bulk.  action is "outbound_trigger"
 * (metadata {conversation_id, template_id}) or "bulk_outbound_trigger"
 * (metadata {bulk_envelope_id, count, template_id}); actor is the resolved
 * actor or NULL.  Return CL_OK to accept, optionally setting *audit_json to
 * a malloc'd JSON text that becomes the result's audit; CL_AUDIT_REJECTED
 * (err says why) to refuse; CL_HOOK_ERROR when the hook failed.  Anything
 * but CL_OK rolls the operation back.
 * list_events (may be NULL) answers cl_audit_events: opts and the result
 * are JSON texts; the result is malloc'd.
 */
typedef struct cl_auditor {
  cl_status (*audit)(void *ud, cl_tx *tx, const char *action, const char *actor,
                     const cl_metadata *metadata, char **audit_json, cl_error *err);
  cl_status (*list_events)(void *ud, const char *opts_json, char **events_json, cl_error *err);
  void (*release)(void *ud); /* called when replaced or on close; may be NULL */
  void *ud;
} cl_auditor;

/*
 * The actor resolver, called before anything is written with the caller's
 * actor (may be NULL) and the action.  Return CL_OK with *resolved set to a
 * malloc'd string (or NULL for "no actor"); CL_ACTOR_REJECTED to refuse;
 * CL_HOOK_ERROR on failure.
 */
typedef struct cl_actor_resolver {
  cl_status (*resolve)(void *ud, const char *actor, const char *action, char **resolved,
                       cl_error *err);
  void (*release)(void *ud);
  void *ud;
} cl_actor_resolver;

/*
 * Loads a Lua 5.4 policy script into the engine's own policy state (created
 * on first use, sandboxed).  The script registers hooks through
 * `require "cairnloop"`.  CL_INVALID_ARGUMENT if the file cannot be read or
 * does not compile; CL_HOOK_ERROR if it raises while loading.
 */
CL_API cl_status cl_load_policy(cl_engine *eng, const char *path, cl_error *err);

/* Installs (or with NULL removes) a hook; the previous one is released. */
CL_API cl_status cl_set_auditor(cl_engine *eng, const cl_auditor *auditor, cl_error *err);
CL_API cl_status cl_set_actor_resolver(cl_engine *eng, const cl_actor_resolver *resolver,
                                       cl_error *err);

/* ------------------------------------------------------------------ */
/* Outbound: trigger and bulk_trigger                                   */
/* ------------------------------------------------------------------ */

/* A UUID in canonical lowercase text form, NUL-terminated. */
#define CL_UUID_LEN 36

typedef struct cl_message {
  int64_t id;
  int64_t conversation_id;
  const char *role; /* "system_outbound" */
  const char *content;
  const char *template_id;      /* metadata.template_id */
  const char *status;           /* metadata.status: "pending" | "sent" | "failed" */
  const char *bulk_envelope_id; /* metadata.bulk_envelope_id; NULL when none */
} cl_message;

typedef struct cl_delivery_job {
  int64_t id;
  const char *worker;       /* "outbound" */
  const char *state;        /* "available" | "scheduled" | ... */
  const char *scheduled_at; /* ISO 8601, UTC */
  /* args */
  int64_t message_id;
  int64_t conversation_id;
  const char *template_id;
  const char *bulk_envelope_id; /* NULL when none */
} cl_delivery_job;

typedef struct cl_trigger_opts {
  const char *template_id;      /* required, non-empty, <= 255 bytes */
  const char *content;          /* NULL: "Outbound message using template: <template_id>" */
  int64_t schedule_in;          /* seconds >= 0 */
  const char *actor;            /* NULL: none; passed through the actor resolver */
  const char *bulk_envelope_id; /* NULL: none; a UUID correlation key */
} cl_trigger_opts;

typedef struct cl_trigger_result {
  cl_message message;
  cl_delivery_job delivery_job;
  int duplicate;    /* 1: already triggered, nothing new written */
  char *audit_json; /* the auditor's return value as JSON, or NULL */
  void *priv_;      /* storage; released by cl_trigger_result_clear */
} cl_trigger_result;

/*
 * Triggers one outbound message: one message row (pending) and one delivery
 * job in one transaction, with the auditor in it.  A duplicate
 * (conversation_id, template_id, bulk_envelope_id) writes nothing and
 * returns the existing rows with duplicate = 1; the key lives on the
 * message, so it holds after the job was pruned (delivery_job.id is then 0,
 * its state and scheduled_at NULL).  `res` is filled on CL_OK
 * and must be released with cl_trigger_result_clear() in any case.
 * Returns CL_OK, CL_INVALID_ARGUMENT, CL_ACTOR_REJECTED, CL_AUDIT_REJECTED,
 * CL_UNKNOWN_CONVERSATION, CL_HOOK_ERROR or CL_DB_ERROR.
 */
CL_API cl_status cl_trigger(cl_engine *eng, int64_t conversation_id, const cl_trigger_opts *opts,
                            cl_trigger_result *res, cl_error *err);
CL_API void cl_trigger_result_clear(cl_trigger_result *res);

typedef struct cl_envelope {
  char id[CL_UUID_LEN + 1];
  const char *template_id;
  const char *rendered_body;
  const int64_t *recipient_conversation_ids;
  size_t count;
  int effective_cap;
  const char *requested_by;   /* NULL for system */
  const char *requested_at;   /* ISO 8601, UTC */
  const char *status;         /* "submitted" | "refused_cap_exceeded" */
  const char *refused_reason; /* NULL unless refused */
} cl_envelope;

typedef struct cl_bulk_opts {
  const char *template_id;   /* required */
  const char *rendered_body; /* required; stored exactly as given */
  const char *actor;         /* optional; resolved, stored as requested_by */
  const char *envelope_id;   /* optional caller-chosen UUID: retries become idempotent */
  int64_t schedule_in;       /* seconds >= 0 */
} cl_bulk_opts;

typedef struct cl_bulk_result {
  cl_envelope envelope;
  size_t count;         /* == envelope.count */
  cl_message *messages; /* messages[i] is for ids[i] */
  cl_delivery_job *delivery_jobs;
  int replayed;     /* 1: envelope_id named a stored envelope with the same content */
  char *audit_json; /* the auditor's return value as JSON, or NULL */
  void *priv_;
} cl_bulk_result;

/*
 * Bulk-triggers `count` distinct positive conversation ids under one
 * envelope.  Over the cap of the moment, a refused envelope is stored on its
 * own and CL_BATCH_TOO_LARGE returned ("batch_size N exceeds cap C").
 * Within it, the envelope, N messages and N jobs are written in one
 * transaction with one auditor call, all or nothing, in a constant number of
 * round trips.  On CL_BATCH_TOO_LARGE, res->envelope is the refused
 * envelope as recorded (status "refused_cap_exceeded"; its id names the
 * refusal), or all zero when recording it failed.  `res` must be released
 * with cl_bulk_result_clear().
 * Returns CL_OK, CL_INVALID_ARGUMENT, CL_BATCH_TOO_LARGE, CL_ACTOR_REJECTED,
 * CL_AUDIT_REJECTED, CL_UNKNOWN_CONVERSATION, CL_ENVELOPE_CONFLICT,
 * CL_HOOK_ERROR or CL_DB_ERROR.
 */
CL_API cl_status cl_bulk_trigger(cl_engine *eng, const int64_t *conversation_ids, size_t count,
                                 const cl_bulk_opts *opts, cl_bulk_result *res, cl_error *err);
CL_API void cl_bulk_result_clear(cl_bulk_result *res);

/* ------------------------------------------------------------------ */
/* Delivery                                                             */
/* ------------------------------------------------------------------ */

typedef struct cl_conversation {
  int64_t id;
  const char *status;
  const char *subject;      /* NULL when unset */
  const char *customer_ref; /* NULL when unset */
} cl_conversation;

/*
 * The notifier delivers one message.  `idempotency_key` is
 * "cl-msg-<message id>" (e.g. "cl-msg-42"): the same on every attempt,
 * after a retry and after a rescue from a dead worker, so a receiver that
 * has seen the key can drop the repeat (it fits Standard Webhooks'
 * webhook-id).  `attempt` is 1, 2, ... for that message's job.
 * Return CL_OK when delivered; anything else is a failed attempt and
 * err->message is recorded as its reason (the job is retried with backoff
 * until max_attempts, then discarded).  Everything passed is valid for the
 * call only.
 */
typedef struct cl_notifier {
  cl_status (*deliver)(void *ud, const cl_message *message, const cl_conversation *conversation,
                       const char *idempotency_key, int attempt, cl_error *err);
  void (*release)(void *ud);
  void *ud;
} cl_notifier;

CL_API cl_status cl_set_notifier(cl_engine *eng, const cl_notifier *notifier, cl_error *err);

/*
 * Why a delivery failed, as the `reason` of the
 * cairnloop.outbound.delivery.failed event says it (enum values only):
 * enum suffix and name.
 */
#define CL_DELIVERY_REASON_MAP(XX)              \
  XX(NOTIFIER_ERROR, "notifier_returned_error") \
  XX(HTTP_STATUS, "http_status")                \
  XX(HTTP_TIMEOUT, "http_timeout")              \
  XX(HTTP_ERROR, "http_error")                  \
  XX(NOT_ALLOWED, "not_allowed")

typedef enum cl_delivery_reason {
#define XX(name, str) CL_REASON_##name,
  CL_DELIVERY_REASON_MAP(XX)
#undef XX
} cl_delivery_reason;

/* "http_status", ...; NULL if out of range. */
CL_API const char *cl_delivery_reason_name(cl_delivery_reason reason);

/* One delivery in flight, from an asynchronous notifier's start until its
 * cl_delivery_done. */
typedef struct cl_delivery cl_delivery;

typedef enum cl_delivery_verdict {
  CL_DELIVERY_SENT,     /* delivered: the job completes, the message is sent */
  CL_DELIVERY_FAILED,   /* retried with backoff until max_attempts, then discarded */
  CL_DELIVERY_DISCARDED /* failed for good (e.g. HTTP 410): discarded now */
} cl_delivery_verdict;

typedef struct cl_delivery_result {
  cl_delivery_verdict verdict;
  /* Failures: the event's reason, and one line recorded in the job's
   * errors (copied; NULL: the reason's name). */
  cl_delivery_reason reason;
  const char *message;
  /* Failures: the next attempt no sooner than this many seconds from now
   * (e.g. an HTTP Retry-After), nor sooner than the backoff.  0: the backoff. */
  int64_t retry_after_seconds;
} cl_delivery_result;

/*
 * A notifier that delivers concurrently: `start` begins delivering one
 * message and returns at once; the host completes it later with
 * cl_delivery_done(d, ...), exactly once, on the engine's thread: inside
 * `start` itself (a delivery that finished at once) or inside `poll`.
 * While deliveries are in flight and the engine has nothing else to do,
 * it calls poll(ud, timeout_ms): run the host's I/O for up to timeout_ms
 * and complete what finished.  cl_work_run keeps up to its `concurrency` deliveries started
 * and records finished ones in batches while others are in flight; it
 * never returns with deliveries in flight.  What start receives is valid
 * until its cl_delivery_done (the idempotency key is "cl-msg-<message id>",
 * as for cl_notifier).  Replaces any notifier set before (and vice versa).
 */
typedef struct cl_async_notifier {
  void (*start)(void *ud, cl_delivery *d, const cl_message *message,
                const cl_conversation *conversation, const char *idempotency_key, int attempt);
  void (*poll)(void *ud, int timeout_ms);
  void (*release)(void *ud);
  void *ud;
} cl_async_notifier;

CL_API cl_status cl_set_async_notifier(cl_engine *eng, const cl_async_notifier *notifier,
                                       cl_error *err);
/* Completes a delivery started by an asynchronous notifier; `d` is invalid
 * afterwards.  NULL result: sent. */
CL_API void cl_delivery_done(cl_delivery *d, const cl_delivery_result *result);

typedef struct cl_work_stats {
  int sent, failed, no_op, retried, discarded;
} cl_work_stats;

/*
 * Delivers up to `limit` due jobs once (claimed in one batch under a lease,
 * completed in one batch) and returns the counts.  Without a notifier each
 * job completes as no_op and its message is marked sent.
 * Returns CL_OK, CL_INVALID_ARGUMENT or CL_DB_ERROR.
 */
CL_API cl_status cl_work(cl_engine *eng, int limit, cl_work_stats *stats, cl_error *err);

/* Largest `limit` of one batch: its ids travel as one array parameter and
 * its rows as one result, both held in memory at once. */
#define CL_WORK_MAX_LIMIT 10000

/* What one batch did beyond the cl_work_stats counts. */
typedef struct cl_batch_info {
  int claimed;  /* jobs claimed (due ones and rescued expired leases) */
  int rescued;  /* of them, jobs whose previous lease had expired */
  int released; /* claimed but handed back unstarted (stop, or a lost connection) */
  int lost;     /* delivered, but the lease had passed to another worker */
  /* Outcomes of an earlier batch, delivered before its connection was
   * lost, recorded first thing in this call (their counts are in this
   * call's stats; the failed call reported none of them). */
  int recorded_late;
  /* Finished jobs past their retention that this call's retention pass
   * deleted, and the time it sat with nothing in flight waiting for
   * cl_work_options.rate's next token. */
  int pruned;
  int64_t rate_wait_ms;
} cl_batch_info;

/*
 * cl_work for a long-running worker: `stop` (may be NULL) is read before
 * each notifier call; once it is set, the jobs of the batch not yet started
 * are handed back (lease cleared, attempt restored) in the same completing
 * statement, so another worker takes them at once.  The same happens, flag
 * or not, once half the lease is spent, so a slow notifier never holds jobs
 * past their lease.  `stats` and `batch` may be NULL.
 * When the connection is lost after deliveries and stays lost while the
 * batch is being recorded, the call returns CL_DB_ERROR (its stats count
 * nothing) and the engine keeps the outcomes: the next cl_work or
 * cl_work_batch records them before it claims anything, so those messages
 * are not delivered again (cl_close makes one last try).
 * Returns CL_OK, CL_INVALID_ARGUMENT or CL_DB_ERROR.
 */
CL_API cl_status cl_work_batch(cl_engine *eng, int limit, const volatile sig_atomic_t *stop,
                               cl_work_stats *stats, cl_batch_info *batch, cl_error *err);

/* Largest cl_work_options.concurrency. */
#define CL_WORK_MAX_CONCURRENCY 1000

typedef struct cl_work_options {
  int limit;       /* most jobs this call delivers: 1 to CL_WORK_MAX_LIMIT */
  int concurrency; /* most deliveries in flight at once; 0: 1 */
  /* Most deliveries started per second by this engine (a token bucket
   * holding at most a tenth of a second's worth, at least one; it lives
   * on the engine across calls).  0: no limit. */
  double rate;
  /* Read before each claim and start: once set, nothing more is started,
   * claimed jobs not started are handed back, and the call returns when
   * the deliveries in flight have finished.  May be NULL. */
  const volatile sig_atomic_t *stop;
} cl_work_options;

/*
 * Delivers up to opts->limit due jobs with up to opts->concurrency in
 * flight (an asynchronous notifier or a policy notifier that calls
 * cl.http.request; a synchronous notifier delivers one at a time), and
 * returns once they are recorded or nothing more is due.  Claims and
 * completions are one statement per batch: jobs are claimed as slots come
 * free and finished deliveries are recorded while others are still in
 * flight.  A delivery that runs longer than half the lease gets the lease
 * of every job this call holds extended, in one statement.  Otherwise as
 * cl_work_batch (which is cl_work_run with a concurrency of 1 claiming
 * its whole limit at once).  Returns CL_OK, CL_INVALID_ARGUMENT or
 * CL_DB_ERROR.
 */
CL_API cl_status cl_work_run(cl_engine *eng, const cl_work_options *opts, cl_work_stats *stats,
                             cl_batch_info *batch, cl_error *err);

/* Why cl_work_wait returned. */
typedef enum cl_wake {
  CL_WAKE_DUE,      /* jobs are due now (or a lease expired) */
  CL_WAKE_NOTIFIED, /* jobs were inserted (NOTIFY) */
  CL_WAKE_TIMEOUT,  /* max_ms passed, or the next scheduled job came due */
  CL_WAKE_FD,       /* wake_fd became readable (the caller drains it) */
  CL_WAKE_SIGNAL    /* a signal interrupted the wait */
} cl_wake;

/*
 * The idle worker's sleep, instead of polling the jobs table: subscribes
 * the session to the schema's job channel (again after any reconnect),
 * asks when the next scheduled job or lease comes due, and sleeps until
 * then (at most max_ms, the fallback poll), until jobs are inserted, or
 * until `wake_fd` (-1: none) is readable.  Subscribing before asking
 * closes the gap where an insert could be missed.  Returns CL_OK with *why
 * set, or CL_DB_ERROR when the server is gone (call again later: it
 * reconnects).  A worker loop is cl_work_batch, then cl_work_wait when the
 * batch claimed nothing.  With cl_config.no_prepared_statements it does
 * not subscribe (a transaction pooler would lend the LISTEN a random
 * session) and sleeps at most CL_POOLER_POLL_MS, logging that once at info.
 */
CL_API cl_status cl_work_wait(cl_engine *eng, int max_ms, int wake_fd, cl_wake *why, cl_error *err);

/* ------------------------------------------------------------------ */
/* Envelope reads                                                       */
/* ------------------------------------------------------------------ */

typedef struct cl_envelope_list {
  cl_envelope *items;
  size_t count;
  void *priv_;
} cl_envelope_list;

/* Envelopes one cl_envelopes_list call returns when the query's limit is
 * 0, and the largest limit it accepts (the rows are held in memory at
 * once).  Public so that every host (the command, the Lua binding) can
 * use the same values. */
#define CL_ENVELOPES_DEFAULT_LIMIT 50
#define CL_ENVELOPES_MAX_LIMIT 10000

typedef struct cl_envelope_query {
  const char *template_id; /* NULL: any */
  const char *status;      /* NULL: any */
  int limit;               /* 0: CL_ENVELOPES_DEFAULT_LIMIT; at most CL_ENVELOPES_MAX_LIMIT */
} cl_envelope_query;

/* Reads one envelope: out->count is 1 and out->items[0] filled, or 0 when
 * no envelope has that id.  `out` must be released with cl_envelope_list_clear(). */
CL_API cl_status cl_envelope_get(cl_engine *eng, const char *envelope_id, cl_envelope_list *out,
                                 cl_error *err);
/* Lists envelopes, newest requested_at first. */
CL_API cl_status cl_envelopes_list(cl_engine *eng, const cl_envelope_query *query,
                                   cl_envelope_list *out, cl_error *err);
CL_API void cl_envelope_list_clear(cl_envelope_list *list);

/*
 * Runs one parameterised statement in a READ ONLY transaction (it cannot
 * write) and returns its rows: how hosts and campaigns select cohorts.
 * `params` are bound as text, never interpolated.  *rows is owned by the
 * caller until cl_rows_free().  Returns CL_OK, CL_INVALID_ARGUMENT or
 * CL_DB_ERROR (an SQL error, a write attempt, a lost connection).
 */
CL_API cl_status cl_query(cl_engine *eng, const char *sql, int nparams, const char *const *params,
                          cl_rows **rows, cl_error *err);

/* The auditor's list_events(opts) as a malloc'd JSON text; "[]" without one. */
CL_API cl_status cl_audit_events(cl_engine *eng, const char *opts_json, char **events_json,
                                 cl_error *err);

/* ------------------------------------------------------------------ */
/* Operating the queue                                                  */
/* ------------------------------------------------------------------ */

/*
 * The states of a delivery job: enum suffix and name (the `state` column,
 * Lua's job tables and stats keys, the CLI).  Unfinished: available,
 * scheduled, executing, retryable; finished: completed, discarded (out of
 * attempts), cancelled (by cl_cancel).
 */
#define CL_JOB_STATE_MAP(XX) \
  XX(AVAILABLE, "available") \
  XX(SCHEDULED, "scheduled") \
  XX(EXECUTING, "executing") \
  XX(RETRYABLE, "retryable") \
  XX(COMPLETED, "completed") \
  XX(DISCARDED, "discarded") \
  XX(CANCELLED, "cancelled")

typedef enum cl_job_state {
#define CL__JOB_STATE_ENUM(name, str) CL_JOB_##name,
  CL_JOB_STATE_MAP(CL__JOB_STATE_ENUM)
#undef CL__JOB_STATE_ENUM
      CL_JOB_STATE__COUNT
} cl_job_state;

/* "available", ...; NULL if out of range. */
CL_API const char *cl_job_state_name(cl_job_state state);
/* Parses a state name; CL_INVALID_ARGUMENT (naming the accepted ones) if unknown. */
CL_API cl_status cl_job_state_parse(const char *name, cl_job_state *state, cl_error *err);

/* Jobs one cl_jobs call returns when the query's limit is 0, and the
 * largest limit it accepts; also the most ids one retry or cancel takes. */
#define CL_JOBS_DEFAULT_LIMIT 50
#define CL_JOBS_MAX_LIMIT 10000

typedef struct cl_job_query {
  const char *state;       /* NULL: any; else a name of CL_JOB_STATE_MAP */
  const char *envelope_id; /* NULL: any; a UUID */
  const char *template_id; /* NULL: any */
  int limit;               /* 0: CL_JOBS_DEFAULT_LIMIT; at most CL_JOBS_MAX_LIMIT */
} cl_job_query;

typedef struct cl_job {
  cl_delivery_job job; /* id, worker, state, scheduled_at and the args */
  int attempt;         /* attempts made (0 after a retry) */
  int max_attempts;
  const char *attempted_at; /* ISO 8601, UTC; NULL: never attempted */
  const char *finished_at;  /* when completed, discarded or cancelled; NULL: unfinished */
  const char *inserted_at;
  const char *last_error; /* the latest failed attempt's reason; NULL: none */
} cl_job;

typedef struct cl_job_list {
  cl_job *items;
  size_t count;
  void *priv_;
} cl_job_list;

/*
 * Lists delivery jobs, newest first, filtered by state, envelope and
 * template.  `query` may be NULL (every job, the default limit).  `out`
 * must be released with cl_job_list_clear().  Returns CL_OK,
 * CL_INVALID_ARGUMENT (an unknown state, a bad UUID or limit) or CL_DB_ERROR.
 */
CL_API cl_status cl_jobs(cl_engine *eng, const cl_job_query *query, cl_job_list *out,
                         cl_error *err);
CL_API void cl_job_list_clear(cl_job_list *list);

typedef struct cl_queue_stats {
  int64_t count[CL_JOB_STATE__COUNT]; /* jobs per state, indexed by cl_job_state */
  int64_t oldest_due_age_seconds;     /* how long the longest-waiting due job has
                                         waited; 0 when none waits */
  int paused;                         /* 1: delivery is paused (cl_pause) */
} cl_queue_stats;

/*
 * Counts the jobs per state (of one envelope when `envelope_id` is not
 * NULL), the oldest due job's age and whether delivery is paused.  Pruned
 * jobs are not counted: their messages keep the outcome
 * (cl_envelopes_progress).  Returns CL_OK, CL_INVALID_ARGUMENT or CL_DB_ERROR.
 */
CL_API cl_status cl_stats(cl_engine *eng, const char *envelope_id, cl_queue_stats *out,
                          cl_error *err);

/*
 * Which jobs a retry or cancel changes: exactly one of `ids` (count of
 * them, positive and distinct, at most CL_JOBS_MAX_LIMIT), `envelope_id`
 * (every job of that envelope) or, for a retry only, `all_discarded`.
 * `actor` (may be NULL) goes through the actor resolver and to the auditor.
 */
typedef struct cl_job_selector {
  const int64_t *ids;
  size_t count;
  const char *envelope_id;
  int all_discarded;
  const char *actor;
} cl_job_selector;

/*
 * Retries jobs that failed: discarded (out of attempts) and retryable ones
 * (waiting for their backoff) become available now with every attempt
 * allowed again (attempt restarts at 0; errors are kept), and their
 * messages pending.  Other jobs of the selection are left alone.  This is
 * how a discarded message is sent again: triggering it again is a
 * duplicate (the key holds) and sends nothing.  With an auditor, the
 * change and the audit call ("retry_jobs", metadata exactly
 * {count, bulk_envelope_id}) share one transaction; the auditor is not
 * called when nothing would change.  *retried (may be NULL) is the number
 * of jobs changed.  Returns CL_OK, CL_INVALID_ARGUMENT, CL_ACTOR_REJECTED,
 * CL_AUDIT_REJECTED, CL_HOOK_ERROR or CL_DB_ERROR.
 */
CL_API cl_status cl_retry(cl_engine *eng, const cl_job_selector *selector, int64_t *retried,
                          cl_error *err);

/*
 * Cancels jobs not started: available, scheduled and retryable ones become
 * cancelled (finished; pruned after the discarded jobs' retention), their
 * messages' status "cancelled".  A job being delivered right now finishes
 * its delivery.  Audited as "cancel_jobs" (metadata exactly {count,
 * bulk_envelope_id}), and emits cairnloop.outbound.delivery.cancelled
 * ({count}; {outcome = "cancelled"}) when jobs were cancelled.  `selector`
 * takes ids or envelope_id (all_discarded is refused).  Statuses as cl_retry.
 */
CL_API cl_status cl_cancel(cl_engine *eng, const cl_job_selector *selector, int64_t *cancelled,
                           cl_error *err);

/*
 * Pauses delivery: every worker of the schema claims nothing (jobs being
 * delivered finish) until cl_resume, which also wakes idle workers.  The
 * flag lives in the database, so it reaches workers on every machine.
 * Audited as "pause_delivery" / "resume_delivery" (metadata {}).  `actor`
 * may be NULL.  Returns CL_OK, CL_ACTOR_REJECTED, CL_AUDIT_REJECTED,
 * CL_HOOK_ERROR or CL_DB_ERROR.
 */
CL_API cl_status cl_pause(cl_engine *eng, const char *actor, cl_error *err);
CL_API cl_status cl_resume(cl_engine *eng, const char *actor, cl_error *err);

/*
 * Deletes finished jobs (completed, discarded, cancelled) finished more
 * than `older_than_seconds` ago, or, when it is negative, past the
 * engine's retention periods (cl_config).  Deletes in batches, each
 * committed on its own and skipping rows others hold, until none is left.
 * Messages and envelopes stay.  *deleted (may be NULL) is the number of
 * jobs deleted.  Returns CL_OK or CL_DB_ERROR.
 */
CL_API cl_status cl_prune(cl_engine *eng, int64_t older_than_seconds, int64_t *deleted,
                          cl_error *err);

/* An envelope's delivery progress: its messages by status. */
typedef struct cl_envelope_progress {
  int64_t pending, sent, failed, cancelled;
} cl_envelope_progress;

/*
 * Fills out[i] with the progress of envelope_ids[i] (zeros for an envelope
 * without messages), for `count` ids (at most CL_ENVELOPES_MAX_LIMIT).
 * Messages are never pruned, so the counts stay whole.  Returns CL_OK,
 * CL_INVALID_ARGUMENT (a bad UUID) or CL_DB_ERROR.
 */
CL_API cl_status cl_envelopes_progress(cl_engine *eng, const char *const *envelope_ids,
                                       size_t count, cl_envelope_progress *out, cl_error *err);

/* One migration: its version (the file name without .sql) and when it was
 * applied (ISO 8601, UTC), NULL while pending. */
typedef struct cl_migration {
  const char *version;
  const char *applied_at;
} cl_migration;

typedef struct cl_migration_list {
  cl_migration *items;
  size_t count;
  void *priv_;
} cl_migration_list;

/*
 * As cl_migrate, and lists in `applied` the migrations this call applied,
 * in order (none when the schema was up to date).  `applied` may be NULL;
 * otherwise release it with cl_migration_list_clear().
 */
CL_API cl_status cl_migrate_report(cl_engine *eng, cl_migration_list *applied, cl_error *err);

/*
 * Lists every migration the library carries, in order, with applied_at
 * NULL for a pending one, then any recorded as applied that this library
 * does not know (a newer library migrated the schema).  Reads only: an
 * unmigrated database lists everything pending.  Release `out` with
 * cl_migration_list_clear().  Returns CL_OK or CL_DB_ERROR.
 */
CL_API cl_status cl_migrations(cl_engine *eng, cl_migration_list *out, cl_error *err);
CL_API void cl_migration_list_clear(cl_migration_list *list);

/* ------------------------------------------------------------------ */
/* Asynchronous engine (hosts that never block)                         */
/* ------------------------------------------------------------------ */

/*
 * An asynchronous engine runs one cl_engine on a background thread of its
 * own, so that a host whose thread must never wait for the database (a
 * 60 Hz game loop, a libuv server) submits operations and receives their
 * outcomes later, on its own thread:
 *
 *   1. cl_async_open() starts the engine thread, which opens the engine,
 *      loads the policy files and runs the setup function;
 *   2. the host submits operations (cl_async_trigger, ...); each copies its
 *      inputs and returns at once, and the engine thread runs them one at a
 *      time, in submission order, through the blocking calls above;
 *   3. cl_async_fd() becomes readable when outcomes are ready; the host
 *      watches it in its loop (poll, epoll, uv_poll_t) or simply calls
 *      cl_async_poll() once per tick, which runs the ready callbacks on the
 *      calling thread and never blocks.
 *
 * Which thread runs what:
 *   - the engine thread runs everything the engine calls: the log sink of
 *     cl_config, the policy scripts and every hook they register, the C
 *     hooks and telemetry handlers installed by the setup function (and
 *     their release functions, at close), the setup function itself and the
 *     function given to cl_async_call();
 *   - the thread that calls cl_async_poll() or cl_async_close() runs every
 *     completion callback, and never a hook or a sink of the engine.  A
 *     host's own state (its Lua state, its game objects) is thus touched
 *     from its thread only.
 * The engine thread blocks every signal, so signals reach the host's threads.
 *
 * Submissions may come from any thread.  cl_async_poll() and
 * cl_async_close() belong to one thread, the host's, and are never called
 * concurrently.  After a database restart the engine reconnects by itself
 * on the next operation; the operations that met the lost connection
 * complete with CL_DB_ERROR, like the blocking calls they are.
 */
typedef struct cl_async cl_async;

/* Operations in flight when cl_async_options.queue_capacity is 0. */
#define CL_ASYNC_DEFAULT_QUEUE_CAPACITY 1024

/* The signature of the functions that run on the engine thread with the
 * engine (the setup function, cl_async_call).  They may call any function
 * of the blocking API on `eng`, never cl_close(). */
typedef cl_status (*cl_async_engine_fn)(void *ud, cl_engine *eng, cl_error *err);

typedef struct cl_async_options {
  /* Operations in flight at once: submitted, and whose callback has not run
   * yet (queued, running, or completed but not yet polled), so a host that
   * stops polling also stops queueing.  0: CL_ASYNC_DEFAULT_QUEUE_CAPACITY. */
  size_t queue_capacity;
  /* Lua policy files loaded on the engine thread, in order, before any
   * operation (as cl_load_policy). */
  const char *const *policies;
  size_t policy_count;
  /* Runs once on the engine thread after the policies are loaded and
   * before any operation: where a host installs C hooks and telemetry
   * handlers (cl_set_auditor, cl_set_notifier, cl_attach, ...), which then
   * run on the engine thread.  May be NULL. */
  cl_async_engine_fn setup;
  void *setup_ud;
} cl_async_options;

/* Fills `opts` with the defaults (all zero/NULL). */
CL_API void cl_async_options_init(cl_async_options *opts);

/*
 * Starts an asynchronous engine.  Blocks until its thread has opened the
 * engine with `cfg` (as cl_open; may be NULL), loaded opts->policies and
 * run opts->setup (a connection: call it at start-up, not in a tick), so
 * that the outcome is reported here.  `cfg`, `opts` (may be NULL) and what
 * they point to are borrowed for the call, except the log sink, which the
 * engine keeps and calls on its thread.  On CL_OK *out owns the engine
 * until cl_async_close(); otherwise *out is NULL and nothing is left
 * running.  Returns CL_OK; CL_INVALID_ARGUMENT (a bad option or
 * configuration, an unreadable policy); CL_HOOK_ERROR (a policy raised
 * while loading); the setup function's own status; CL_DB_ERROR (no
 * connection, no thread, no file descriptor, out of memory).
 */
CL_API cl_status cl_async_open(cl_async **out, const cl_config *cfg, const cl_async_options *opts,
                               cl_error *err);

/*
 * Completion callbacks.  Each runs once per accepted submission, on the
 * thread that calls cl_async_poll() (or cl_async_close()), with the `ud`
 * given at submission.  `status` and `err` are the operation's outcome as
 * its blocking call returned them (err->code == status).  The result is
 * valid during the callback only: it is cleared when the callback returns.
 * A callback that wants to keep it takes it: it copies the struct and
 * zeroes the original (`mine = *res; memset(res, 0, sizeof *res);`), then
 * releases its copy with the matching cl_*_clear().  For rows, it takes
 * *rows and sets *rows to NULL, then releases them with cl_rows_free().
 * A callback may submit further operations; it may not call
 * cl_async_poll() (which then returns 0) or cl_async_close() (ignored).
 */
typedef void (*cl_async_done_cb)(void *ud, cl_status status, const cl_error *err);
typedef void (*cl_async_trigger_cb)(void *ud, cl_status status, const cl_error *err,
                                    cl_trigger_result *res);
typedef void (*cl_async_bulk_cb)(void *ud, cl_status status, const cl_error *err,
                                 cl_bulk_result *res);
typedef void (*cl_async_work_cb)(void *ud, cl_status status, const cl_error *err,
                                 const cl_work_stats *stats);
typedef void (*cl_async_envelopes_cb)(void *ud, cl_status status, const cl_error *err,
                                      cl_envelope_list *list);
typedef void (*cl_async_rows_cb)(void *ud, cl_status status, const cl_error *err, cl_rows **rows);

/*
 * Submitting.  Each call copies its inputs (strings, id arrays, options),
 * so the caller's buffers are free when it returns, and queues the
 * operation; the engine thread later runs the blocking call of the same
 * name, which validates the inputs as usual (an invalid argument is then
 * an outcome like any other).  `cb` may be NULL: the outcome is dropped.
 * Returns CL_OK, after which `cb` runs exactly once, later; or, with
 * nothing queued and `cb` never called:
 *   CL_INVALID_ARGUMENT "async: queue full: N operations in flight
 *     (queue_capacity N)": poll to run completed ones, then submit again;
 *   CL_INVALID_ARGUMENT "async: engine is closing" (from a callback that
 *     cl_async_close() runs);
 *   CL_INVALID_ARGUMENT for a NULL engine; CL_DB_ERROR when out of memory.
 */
CL_API cl_status cl_async_trigger(cl_async *a, int64_t conversation_id, const cl_trigger_opts *opts,
                                  cl_async_trigger_cb cb, void *ud, cl_error *err);
CL_API cl_status cl_async_bulk_trigger(cl_async *a, const int64_t *conversation_ids, size_t count,
                                       const cl_bulk_opts *opts, cl_async_bulk_cb cb, void *ud,
                                       cl_error *err);
CL_API cl_status cl_async_work(cl_async *a, int limit, cl_async_work_cb cb, void *ud,
                               cl_error *err);
/* cl_work_run on the engine thread (opts->stop is ignored: closing the
 * asynchronous engine is how a host stops it). */
CL_API cl_status cl_async_work_run(cl_async *a, const cl_work_options *opts, cl_async_work_cb cb,
                                   void *ud, cl_error *err);
CL_API cl_status cl_async_envelope_get(cl_async *a, const char *envelope_id,
                                       cl_async_envelopes_cb cb, void *ud, cl_error *err);
CL_API cl_status cl_async_envelopes_list(cl_async *a, const cl_envelope_query *query,
                                         cl_async_envelopes_cb cb, void *ud, cl_error *err);
CL_API cl_status cl_async_query(cl_async *a, const char *sql, int nparams,
                                const char *const *params, cl_async_rows_cb cb, void *ud,
                                cl_error *err);
CL_API cl_status cl_async_migrate(cl_async *a, cl_async_done_cb cb, void *ud, cl_error *err);
/*
 * Runs `fn(ud, eng, err)` on the engine thread, in turn with the other
 * operations, then `cb(ud, status, err)` on the host's: for any blocking
 * call without an asynchronous twin (cl_work_batch, cl_set_max_batch_size,
 * cl_attach, ...).  Nothing is copied: what `ud` points to belongs to `fn`
 * until `cb` runs.  If the operation is cancelled, `fn` never runs.
 */
CL_API cl_status cl_async_call(cl_async *a, cl_async_engine_fn fn, cl_async_done_cb cb, void *ud,
                               cl_error *err);

/*
 * The completion descriptor: an eventfd (non-blocking, close-on-exec),
 * readable while completed operations wait for cl_async_poll().  Owned by
 * the engine (never read or close it); valid until cl_async_close().
 * -1 for NULL.
 */
CL_API int cl_async_fd(const cl_async *a);

/*
 * Runs the callbacks of the operations completed so far, on the calling
 * thread, in submission order, and clears the descriptor's readiness.
 * Never blocks (it only takes a lock the engine thread holds for a few
 * instructions).  Operations completing meanwhile wait for the next call.
 * Returns how many callbacks ran: 0 when none was ready, for NULL, from
 * inside a callback and on the engine thread (from a hook).
 */
CL_API int cl_async_poll(cl_async *a);

/* Operations in flight: submitted, and whose callback has not run yet. */
CL_API size_t cl_async_pending(cl_async *a);

typedef enum cl_async_close_mode {
  CL_ASYNC_CANCEL, /* operations not yet started are cancelled */
  CL_ASYNC_DRAIN   /* every queued operation runs first */
} cl_async_close_mode;

/*
 * Stops the engine and frees everything; blocks until then.  First the
 * operation running (if any) finishes with its own outcome; with
 * CL_ASYNC_DRAIN every queued operation then runs too, while with
 * CL_ASYNC_CANCEL every operation not yet started completes with
 * CL_DB_ERROR "async: engine closed before the operation ran" (nothing of
 * it ran).  Then the engine is closed on its thread (hooks are released
 * there), and every callback still due -- completed operations not yet
 * polled, the one that was running, the cancelled ones -- runs on the
 * calling thread, in submission order, before close returns.  So each
 * accepted submission's callback runs exactly once, and none after close
 * returns.  Submissions made meanwhile (from those callbacks, from other
 * threads) are refused with "async: engine is closing"; a thread that may
 * race with close must have made its last submission before close returns
 * (the host joins it).  Called from a completion callback or on the
 * engine thread (from a hook), close does nothing: close after
 * cl_async_poll() returns, from the host's thread.  NULL is a no-op.
 */
CL_API void cl_async_close(cl_async *a, cl_async_close_mode mode);

#ifdef __cplusplus
}
#endif

#endif /* CAIRNLOOP_H */
