/*
 * engine.h - the engine struct and the internal helpers every unit shares.
 *
 * Provides struct cl_engine (one per host thread, owning one connection,
 * the hooks, the telemetry bus and the policy state), cl__fail() for the
 * error channel and the logging helper.  Used by every src/ unit; it
 * includes neither libpq nor Lua: those stay in db.c and policy.c.
 */
#ifndef CL_ENGINE_H
#define CL_ENGINE_H

#include "cairnloop.h"
#include "db.h"
#include "ops.h"
#include "telemetry.h"

#include <stdarg.h>
#include <stdbool.h>

/* Defaults of the hook budgets (documented in cairnloop.h and README). */
#define CL_DEFAULT_HOOK_INSTRUCTIONS 10000000LL
#define CL_DEFAULT_HOOK_TIME_MS 5000LL
#define CL_DEFAULT_HOOK_MEMORY ((size_t)64 * 1024 * 1024)
#define CL_DEFAULT_MAX_BATCH_SIZE 25
#define CL_DEFAULT_MAX_ATTEMPTS 20
#define CL_DEFAULT_LEASE_SECONDS 60
#define CL_DEFAULT_BACKOFF_BASE_MS 1000

struct cl__policy; /* policy.c: the engine's own Lua 5.4 state */

/* The auditor's view of the operation's transaction.  It lives in the
 * engine, so a handle kept past its call is detected, not dereferenced. */
struct cl_tx {
  cl_engine *eng;
  bool active;         /* true only during the auditor call */
  bool failed;         /* a statement failed: the transaction is aborted */
  cl_status fail_code; /* CL_DB_ERROR (SQL), CL_HOOK_ERROR (refused, over budget) */
  int sent;            /* statements sent to the server during this call */
  char failure[CL_ERROR_MESSAGE_MAX];
};

struct cl__pending; /* queue.c: delivered outcomes not yet recorded */

struct cl_engine {
  cl__db db;
  char schema[64];
  /* The cap of the moment: read fresh by every bulk_trigger call. */
  int max_batch_size;

  int64_t hook_instruction_limit;
  int64_t hook_time_limit_ms;
  size_t hook_memory_limit;

  cl_log_fn log;
  void *log_ud;
  cl_log_level log_level;

  /* Installed hooks; `has_*` is false when none.  Each is released through
   * its own release() by cl_set_*() or cl_close(). */
  cl_auditor auditor;
  bool has_auditor;
  cl_actor_resolver resolver;
  bool has_resolver;
  cl_notifier notifier;
  bool has_notifier;
  /* An asynchronous notifier (cl_set_async_notifier, and the policy
   * state's): has_notifier is set too, and `notifier` is unused. */
  cl_async_notifier anotifier;
  bool notifier_async;
  /* The notifiers' HTTP client (http.c): made by cl_open when
   * destinations are allowed, NULL otherwise. */
  struct cl__http *http;
  /* cl_work_options.rate's token bucket, kept across calls. */
  double rate, rate_tokens;
  int64_t rate_at_ns;
  /* The deliveries of the cl_work_run in progress (queue.c), NULL between
   * calls: cl_delivery_done finds its slot through it. */
  struct cl__run *run;

  /* Delivery settings (cl_config) and this worker's lease owner name. */
  int max_attempts;
  int lease_seconds;
  int backoff_base_ms;
  char worker_id[96];
  /* Retention settings and the workers' pass and pause notice (ops.c). */
  cl__ops ops;
  /* cl_work_wait said once that it polls (no_prepared_statements). */
  bool poll_noted;

  cl__telemetry tel;
  struct cl_tx tx;

  /* Created by the first cl_load_policy(); freed by cl__policy_free(). */
  struct cl__policy *policy;
  /* Set while a hook runs: a hook calling back into its own engine fails
   * loudly instead of corrupting the transaction in progress. */
  bool in_hook;
  /* The wall-clock deadline of the hook call in progress (CLOCK_MONOTONIC
   * ns), set by every call point in hooks.c: the SQL a hook runs is
   * bounded by what is left of it (hook_time_limit_ms per call). */
  int64_t hook_deadline_ns;
  /* Set while list_events runs: its tx:exec statements go to a read-only
   * transaction that hooks.c rolls back when the call ends. */
  bool listing;
  /* Outcomes of a delivered batch whose completion failed (the connection
   * was lost): recorded first by the next cl_work_batch, while this
   * worker's lease still names it.  Freed by cl__queue_release(). */
  struct cl__pending *pending;
};

/* Fills `err` (may be NULL) with `code` and a printf-formatted line; returns code. */
cl_status cl__fail(cl_error *err, cl_status code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Clears `err` to CL_OK with an empty message. */
void cl__ok(cl_error *err);

/*
 * The entry guard of every public function that takes an engine: a NULL
 * engine is CL_INVALID_ARGUMENT, and a call from inside one of the
 * engine's own hooks (which would run in, or around, the transaction in
 * progress) is CL_HOOK_ERROR, naming the function.  Functions a hook may
 * call (cl_tx_exec, cl_log, cl_detach, the plain reads of the
 * configuration) check only for NULL.
 */
cl_status cl__enter(const cl_engine *eng, const char *fn, cl_error *err);
#define CL__ENTER(eng, err)                                   \
  do {                                                        \
    cl_status cl__entry_ = cl__enter((eng), __func__, (err)); \
    if (cl__entry_ != CL_OK) return cl__entry_;               \
  } while (0)

void cl__vlog(cl_engine *eng, cl_log_level level, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
/* The default log sink (log.c): warnings and errors to stderr. */
void cl__log_stderr(void *ud, cl_log_level level, const char *line);

/* Frees the policy state (policy.c). NULL-safe. */
void cl__policy_free(struct cl__policy *policy);

/* Tries once more to record eng->pending, then frees it (queue.c; cl_close). */
void cl__queue_release(cl_engine *eng);

/* Validation helpers shared by outbound.c, envelope.c and the bindings. */
bool cl__utf8_valid(const char *s, size_t len);
/* A text field: NULL allowed unless `required`, at most `max` bytes, UTF-8
 * without NUL; CL_INVALID_ARGUMENT naming `field` otherwise. */
cl_status cl__check_text(const char *field, const char *s, size_t max, bool required,
                         cl_error *err);
bool cl__uuid_valid(const char *s);
/* Canonical lowercase copy of a valid UUID into out[CL_UUID_LEN + 1]. */
void cl__uuid_lower(const char *s, char *out);
/* A fresh random (v4) UUID from libuuid. */
void cl__uuid_v4(char *out);

#endif
