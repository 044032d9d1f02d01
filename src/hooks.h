/*
 * hooks.h - the call points of the host's hooks (hooks.c), used by the
 * operations (outbound.c) and the delivery lane (queue.c).
 */
#ifndef CL_HOOKS_H
#define CL_HOOKS_H

#include "engine.h"

/* Resolves the caller's actor for `action`: *resolved is the actor to
 * record (malloc'd, or NULL for none).  Without a resolver the actor is
 * copied as it is.  Returns CL_OK, CL_ACTOR_REJECTED or CL_HOOK_ERROR. */
cl_status cl__resolve_actor(cl_engine *eng, const char *actor, const char *action, char **resolved,
                            cl_error *err);

/*
 * Runs the auditor's transaction: the opening statement `id` and the audit
 * call share the pipeline, COMMIT follows when the auditor accepts.  A
 * failure of the statement itself (unknown conversation, duplicate) wins
 * over what the auditor said, since the auditor then saw an aborted
 * transaction; its sqlstate stays readable for the caller.  *audit_json is
 * the auditor's answer (malloc'd) on CL_OK, *rows the statement's rows.
 */
cl_status cl__audited(cl_engine *eng, cl__stmt id, int nparams, const char *const *params,
                      const char *action, const char *actor, const cl_kv *md, size_t nmd,
                      char **audit_json, cl_rows **rows, cl_error *err);

/* Calls the installed notifier for one delivery (in_hook set meanwhile). */
cl_status cl__deliver(cl_engine *eng, const cl_message *msg, const cl_conversation *conv,
                      const char *idempotency_key, int attempt, cl_error *err);
/* Starts one delivery with the asynchronous notifier, and runs its poll
 * (in_hook set meanwhile, so neither can call back into the engine). */
void cl__deliver_start(cl_engine *eng, cl_delivery *d, const cl_message *msg,
                       const cl_conversation *conv, const char *idempotency_key, int attempt);
void cl__deliver_poll(cl_engine *eng, int timeout_ms);

#endif
