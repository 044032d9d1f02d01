/*
 * policy.h - the engine's own Lua 5.4 state for policy scripts.
 *
 * policy.c implements cl_load_policy() (cairnloop.h) and cl__policy_free()
 * (engine.h, called by cl_close after the hooks are released).  A policy
 * script sees `require "cairnloop"` as the registration API of API.md:
 *
 *   cl.auditor{ audit = fn, list_events = fn } | cl.auditor(nil)
 *   cl.actor_resolver(fn | nil)     cl.notifier(fn | nil)
 *   cl.attach(id, event, fn, config)  cl.attach_many(id, events, fn, config)
 *   cl.detach(id) -> boolean          cl.log(level, message)
 *   cl.schema    the engine's schema, for schema-qualified SQL in tx:exec
 *   cl.VERSION
 *   cl.EVENTS    the events the engine emits (as cairnloop.EVENTS, README)
 *
 * list_events(opts, tx) also gets a tx handle whose statements run outside
 * any transaction.  `require` finds pure-Lua modules (text only) in the
 * directories of CAIRNLOOP_LUA_PATH (';'-separated; an entry containing '?'
 * is used as a template as is), then in the share/lua/5.4 that belongs
 * with the installed object the engine runs from, then in
 * CL_LUA_INSTALL_DIR; no directory of the build tree is compiled in.
 */
#ifndef CL_POLICY_H
#define CL_POLICY_H

#include "engine.h"

#include <stdbool.h>

/* Where `require` looks when CAIRNLOOP_LUA_PATH is not set. */
#ifndef CL_LUA_INSTALL_DIR
#define CL_LUA_INSTALL_DIR "/usr/local/share/lua/5.4"
#endif

void cl__policy_free(struct cl__policy *policy);

/*
 * Stages an actor that is not a string (its JSON text, borrowed until the
 * call that clears it) for the next call of the engine's actor resolver,
 * when that resolver is one a policy script registered: the resolver gets
 * the value decoded in the policy state in place of the actor string.
 * False, staging nothing, when the resolver is not the policy state's.
 * NULL clears.  Used by the host module (lua_module.c) around one
 * operation.
 */
bool cl__policy_stage_actor(cl_engine *eng, const char *actor_json);
/* Whether the engine's actor resolver is one a policy script registered. */
bool cl__policy_owns_resolver(const cl_engine *eng);

#endif
