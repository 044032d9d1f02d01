/*
 * hooks.c - the engine's hooks: where C calls into host policy.
 *
 * Provides the three call points of the operations (the actor resolver,
 * the audited transaction with its cl_tx handle, the notifier), the
 * cl_set_* setters and cl_audit_events.  Each call point sets in_hook for
 * the duration of the call, so that the entry guard (cl__enter) refuses a
 * hook that calls back into its own engine, and the call's wall-clock
 * deadline, which bounds the SQL the hook runs.  cl_tx_exec is where a
 * hook's SQL is held to its bounds: the keyword test (sqlguard.c), the
 * deadline, and afterwards the session check (db.c).  Uses db.c (the
 * auditor's transaction), sqlguard.c and nothing of the operations that
 * call it.
 */
#include "hooks.h"
#include "sqlguard.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Starts the wall clock of one hook call (C and Lua hooks alike: the Lua
 * runtime keeps its own deadline for Lua code, this one bounds the SQL). */
static void arm_deadline(cl_engine *eng) {
  int64_t now = cl__monotonic_ns();
  /* A limit too large to add (the C config takes any int64) is no limit. */
  eng->hook_deadline_ns = eng->hook_time_limit_ms > (INT64_MAX - now) / 1000000
                            ? INT64_MAX
                            : now + eng->hook_time_limit_ms * 1000000;
}

/* ------------------------------------------------------------------ */
/* Call points                                                          */
/* ------------------------------------------------------------------ */

cl_status cl__resolve_actor(cl_engine *eng, const char *actor, const char *action, char **resolved,
                            cl_error *err) {
  *resolved = NULL;
  if (!eng->has_resolver) {
    if (actor && !(*resolved = strdup(actor))) return cl__fail(err, CL_DB_ERROR, "out of memory");
    return CL_OK;
  }
  eng->in_hook = true;
  arm_deadline(eng);
  cl_status st = eng->resolver.resolve(eng->resolver.ud, actor, action, resolved, err);
  eng->in_hook = false;
  if (st != CL_OK && (!err || err->code != st || !err->message[0]))
    cl__fail(err, st == CL_ACTOR_REJECTED ? st : CL_HOOK_ERROR, "actor_resolver: %s",
             st == CL_ACTOR_REJECTED ? "refused" : "failed");
  if (st == CL_OK && *resolved &&
      cl__check_text("resolved actor", *resolved, CL_MAX_ACTOR_BYTES, false, err) != CL_OK) {
    char why[CL_ERROR_MESSAGE_MAX];
    snprintf(why, sizeof why, "%s", err ? err->message : "");
    st = cl__fail(err, CL_HOOK_ERROR, "actor_resolver: %s", why);
  } else if (st != CL_OK && st != CL_ACTOR_REJECTED && st != CL_HOOK_ERROR) {
    st = CL_HOOK_ERROR;
    if (err) err->code = st;
  }
  if (st != CL_OK) {
    free(*resolved);
    *resolved = NULL;
  }
  return st;
}

static cl_status call_auditor(cl_engine *eng, const char *action, const char *actor,
                              const cl_kv *md, size_t nmd, char **audit_json, cl_error *err) {
  cl_map map = {md, nmd};
  struct cl_tx *tx = &eng->tx;
  tx->eng = eng;
  tx->active = true;
  tx->failed = false;
  tx->sent = 0;
  eng->in_hook = true;
  arm_deadline(eng);
  cl_status st = eng->auditor.audit(eng->auditor.ud, tx, action, actor, &map, audit_json, err);
  eng->in_hook = false;
  tx->active = false;
  if (st != CL_OK && !tx->failed && (!err || err->code != st || !err->message[0]))
    cl__fail(err, st, "auditor.audit: %s", st == CL_AUDIT_REJECTED ? "refused" : "failed");
  /* A statement refused or stopped at the budget fails the hook, whatever
   * it returned after catching the error (even a refusal). */
  if (tx->failed && tx->fail_code == CL_HOOK_ERROR && st != CL_HOOK_ERROR)
    st = cl__fail(err, CL_HOOK_ERROR, "auditor.audit: tx:exec: %s", tx->failure);
  else if (st == CL_OK && tx->failed)
    st = cl__fail(err, CL_HOOK_ERROR,
                  "auditor.audit: a statement failed and aborted the transaction: %s", tx->failure);
  else if (st != CL_OK && st != CL_AUDIT_REJECTED && st != CL_HOOK_ERROR && st != CL_DB_ERROR) {
    st = CL_HOOK_ERROR;
    if (err) err->code = st;
  }
  if (st != CL_OK) {
    free(*audit_json);
    *audit_json = NULL;
  }
  return st;
}

/* Marks the hook's transaction failed; returns the code. */
static cl_status tx_fail(cl_tx *tx, cl_status code, const cl_error *err) {
  tx->failed = true;
  tx->fail_code = code;
  snprintf(tx->failure, sizeof tx->failure, "%s", err ? err->message : "statement failed");
  return code;
}

/*
 * The one door of a hook's SQL.  Before anything is sent: the statement's
 * keyword (rows only), and what is left of the call's time.  Then the
 * statement runs in the auditor's transaction (or list_events' read-only
 * one) with its wait bounded by the deadline.  What a permitted statement
 * can still do to the session is caught when the hook's transaction ends
 * (cl__db_tx_close, cl__db_hook_end).
 */
cl_status cl_tx_exec(cl_tx *tx, const char *sql, int nparams, const char *const *params,
                     cl_rows **rows, cl_error *err) {
  cl_error local;
  if (!err) err = &local;
  if (rows) *rows = NULL;
  if (!tx || !tx->active)
    return cl__fail(err, CL_INVALID_ARGUMENT, "transaction handle used outside its audit call");
  if (!sql) return cl__fail(err, CL_INVALID_ARGUMENT, "tx exec: sql is required");
  if (nparams < 0 || (nparams > 0 && !params))
    return cl__fail(err, CL_INVALID_ARGUMENT, "tx exec: %d parameters without a list", nparams);
  if (tx->failed) return cl__fail(err, tx->fail_code, "transaction is aborted: %s", tx->failure);
  cl_engine *eng = tx->eng;
  cl__db *db = &eng->db;
  if (!db->pipe_open && !eng->listing)
    return tx_fail(tx, cl__fail(err, CL_HOOK_ERROR, "no hook transaction is open"), err);
  char why[CL_ERROR_MESSAGE_MAX];
  if (!cl__sql_hook_allowed(sql, why, sizeof why))
    return tx_fail(tx, cl__fail(err, CL_HOOK_ERROR, "%s", why), err);
  if (cl__monotonic_ns() >= eng->hook_deadline_ns)
    return tx_fail(tx,
                   cl__fail(err, CL_HOOK_ERROR, "the hook's time budget (%" PRId64 " ms) is spent",
                            eng->hook_time_limit_ms),
                   err);
  tx->sent++;
  db->deadline_ns = eng->hook_deadline_ns;
  cl_status st = cl__db_hook_exec(db, sql, nparams, params, rows, err);
  db->deadline_ns = 0;
  if (db->timed_out) {
    cl_rows_free(rows ? *rows : NULL);
    if (rows) *rows = NULL;
    return tx_fail(tx,
                   cl__fail(err, CL_HOOK_ERROR,
                            "the statement was cancelled at the hook's time budget (%" PRId64
                            " ms)",
                            eng->hook_time_limit_ms),
                   err);
  }
  return st == CL_OK ? st : tx_fail(tx, st, err);
}

cl_status cl__audited(cl_engine *eng, cl__stmt id, int nparams, const char *const *params,
                      const char *action, const char *actor, const cl_kv *md, size_t nmd,
                      char **audit_json, cl_rows **rows, cl_error *err) {
  *rows = NULL;
  cl_status st = cl__db_tx_open(&eng->db, id, nparams, params, err);
  if (st != CL_OK) return st;
  cl_error aerr;
  cl__ok(&aerr);
  cl_status ast = call_auditor(eng, action, actor, md, nmd, audit_json, &aerr);
  /* An auditor that ran SQL is checked before the commit (or has its
   * advisory locks released with the rollback); one that ran none cannot
   * have changed anything and costs nothing. */
  st = cl__db_tx_close(&eng->db, ast == CL_OK, eng->tx.sent > 0, rows, err);
  if (st == CL_HOOK_ERROR && eng->db.session_changed && err) {
    char why[CL_ERROR_MESSAGE_MAX];
    snprintf(why, sizeof why, "%s", err->message);
    cl__fail(err, st, "auditor.audit: %s", why);
  }
  if (st == CL_OK && ast != CL_OK) {
    if (err) *err = aerr;
    st = ast;
  }
  if (st != CL_OK) {
    free(*audit_json);
    *audit_json = NULL;
  }
  return st;
}

cl_status cl__deliver(cl_engine *eng, const cl_message *msg, const cl_conversation *conv,
                      const char *idempotency_key, int attempt, cl_error *err) {
  cl__ok(err);
  eng->in_hook = true;
  arm_deadline(eng);
  cl_status st = eng->notifier.deliver(eng->notifier.ud, msg, conv, idempotency_key, attempt, err);
  eng->in_hook = false;
  return st;
}

void cl__deliver_start(cl_engine *eng, cl_delivery *d, const cl_message *msg,
                       const cl_conversation *conv, const char *idempotency_key, int attempt) {
  eng->in_hook = true;
  arm_deadline(eng);
  eng->anotifier.start(eng->anotifier.ud, d, msg, conv, idempotency_key, attempt);
  eng->in_hook = false;
}

void cl__deliver_poll(cl_engine *eng, int timeout_ms) {
  eng->in_hook = true;
  arm_deadline(eng);
  eng->anotifier.poll(eng->anotifier.ud, timeout_ms);
  eng->in_hook = false;
}

/* ------------------------------------------------------------------ */
/* Installing hooks                                                     */
/* ------------------------------------------------------------------ */

cl_status cl_set_auditor(cl_engine *eng, const cl_auditor *auditor, cl_error *err) {
  CL__ENTER(eng, err);
  if (auditor && !auditor->audit)
    return cl__fail(err, CL_INVALID_ARGUMENT, "auditor has no audit function");
  if (eng->has_auditor && eng->auditor.release) eng->auditor.release(eng->auditor.ud);
  eng->has_auditor = auditor != NULL;
  if (auditor) eng->auditor = *auditor;
  else memset(&eng->auditor, 0, sizeof eng->auditor);
  cl__ok(err);
  return CL_OK;
}

cl_status cl_set_actor_resolver(cl_engine *eng, const cl_actor_resolver *resolver, cl_error *err) {
  CL__ENTER(eng, err);
  if (resolver && !resolver->resolve)
    return cl__fail(err, CL_INVALID_ARGUMENT, "actor resolver has no resolve function");
  if (eng->has_resolver && eng->resolver.release) eng->resolver.release(eng->resolver.ud);
  eng->has_resolver = resolver != NULL;
  if (resolver) eng->resolver = *resolver;
  else memset(&eng->resolver, 0, sizeof eng->resolver);
  cl__ok(err);
  return CL_OK;
}

/* Releases whichever notifier is installed. */
static void drop_notifier(cl_engine *eng) {
  if (eng->has_notifier) {
    if (eng->notifier_async && eng->anotifier.release) eng->anotifier.release(eng->anotifier.ud);
    if (!eng->notifier_async && eng->notifier.release) eng->notifier.release(eng->notifier.ud);
  }
  memset(&eng->notifier, 0, sizeof eng->notifier);
  memset(&eng->anotifier, 0, sizeof eng->anotifier);
  eng->has_notifier = eng->notifier_async = false;
}

cl_status cl_set_notifier(cl_engine *eng, const cl_notifier *notifier, cl_error *err) {
  CL__ENTER(eng, err);
  if (notifier && !notifier->deliver)
    return cl__fail(err, CL_INVALID_ARGUMENT, "notifier has no deliver function");
  drop_notifier(eng);
  eng->has_notifier = notifier != NULL;
  if (notifier) eng->notifier = *notifier;
  cl__ok(err);
  return CL_OK;
}

cl_status cl_set_async_notifier(cl_engine *eng, const cl_async_notifier *notifier, cl_error *err) {
  CL__ENTER(eng, err);
  if (notifier && !notifier->start)
    return cl__fail(err, CL_INVALID_ARGUMENT, "asynchronous notifier has no start function");
  if (notifier && !notifier->poll)
    return cl__fail(err, CL_INVALID_ARGUMENT, "asynchronous notifier has no poll function");
  drop_notifier(eng);
  eng->has_notifier = eng->notifier_async = notifier != NULL;
  if (notifier) eng->anotifier = *notifier;
  cl__ok(err);
  return CL_OK;
}

cl_status cl_audit_events(cl_engine *eng, const char *opts_json, char **events_json,
                          cl_error *err) {
  if (events_json) *events_json = NULL;
  CL__ENTER(eng, err);
  if (!events_json)
    return cl__fail(err, CL_INVALID_ARGUMENT, "audit_events: no place for the result");
  if (!eng->has_auditor || !eng->auditor.list_events) {
    *events_json = strdup("[]");
    if (!*events_json) return cl__fail(err, CL_DB_ERROR, "out of memory");
    cl__ok(err);
    return CL_OK;
  }
  /* The tx handed to a Lua list_events runs its statements in a READ ONLY
   * transaction that ends with the call, rolled back after the session
   * check: reads see one snapshot, and nothing stays behind. */
  eng->tx.sent = 0;
  eng->tx.failed = false;
  eng->in_hook = true;
  eng->listing = true;
  arm_deadline(eng);
  cl_status st = eng->auditor.list_events(eng->auditor.ud, opts_json ? opts_json : "{}",
                                          events_json, err);
  eng->listing = false;
  eng->in_hook = false;
  if (eng->tx.sent > 0) {
    cl_error cerr;
    cl_status cst = cl__db_hook_end(&eng->db, st == CL_OK && !eng->tx.failed, &cerr);
    if (st == CL_OK && cst != CL_OK) {
      free(*events_json);
      *events_json = NULL;
      return cl__fail(err, cst, "auditor.list_events: %s", cerr.message);
    }
  }
  if (st == CL_OK && eng->tx.failed && eng->tx.fail_code == CL_HOOK_ERROR) {
    free(*events_json);
    *events_json = NULL;
    return cl__fail(err, CL_HOOK_ERROR, "auditor.list_events: tx:exec: %s", eng->tx.failure);
  }
  if (st == CL_OK && !*events_json) *events_json = strdup("[]");
  if (st == CL_OK) cl__ok(err);
  return st;
}
