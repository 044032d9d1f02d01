/*
 * lua_module.c - luaopen_cairnloop: the engine as a Lua module.
 *
 * One source for Lua 5.4 and LuaJIT (version branches in lua_compat.h).
 * Provides cairnloop.open, cairnloop.EVENTS and the engine methods of
 * API.md: foreseeable failures return `nil, code, message`, misuse raises;
 * and cairnloop.open_async (lua_async.inc, on the same argument and result
 * helpers).
 * Hooks registered from the host's Lua run in the host's state, through
 * this side's call point, host_call(): the calling thread, a traceback
 * handler, and an instruction budget and deadline installed for the call.
 * The hook adapters and the registration functions are the glue's
 * (lua_glue.inc, compiled here for the host's Lua ABI).  Uses the public
 * API, engine.h (in_hook, the budgets) and glue.h.
 */
#include "lua_glue.inc"
#include "policy.h"

#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define ENGINE_MT "cairnloop.engine"

/* Only luaopen_cairnloop leaves the module: everything else is hidden. */
#define CL_LUA_EXPORT __attribute__((visibility("default")))

/*
 * The engine userdata.  Hooks registered through it hold refs in the host's
 * registry, so a hook that captures its engine keeps it alive until
 * engine:close() (or the state's close) breaks the cycle.
 */
typedef struct lengine {
  glue_side side; /* first: the glue's view of the host's state */
  cl_engine *eng; /* NULL once closed */
  /* The thread of the method in progress: hooks run there.  Set on every
   * method entry, except re-entries from inside a hook, which keep the
   * operation's thread. */
  lua_State *L;
  int log_ref;   /* open{ log = fn }; released by engine_close_now() */
  int audit_ref; /* the host auditor's value for the call in progress (side.audit_slot);
                  * taken by push_audit(), released by drop_audit() */
  bool logging;  /* the log function is running: its own log lines are dropped */
} lengine;

/* registry[&armed_key]: the cl__budget of the host hook call in progress,
 * or false.  Created by luaopen_cairnloop, so that arming and disarming
 * assign an existing key and can never allocate. */
static const char armed_key = 0;

/* ------------------------------------------------------------------ */
/* The call point of host hooks                                         */
/* ------------------------------------------------------------------ */

/*
 * The count hook of a host hook call (glue_count counts and raises).  A
 * coroutine created during an earlier call inherited this hook: outside a
 * call it removes itself from that thread.
 */
static void host_count_hook(lua_State *L, lua_Debug *ar) {
  cl__budget *b;
  (void)ar;
  compat_rawgetp(L, LUA_REGISTRYINDEX, &armed_key);
  b = (cl__budget *)lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (b == NULL) lua_sethook(L, NULL, 0, 0);
  else glue_count(L, host_count_hook, b);
}

/*
 * The call point for host hooks (glue_side.call): runs `frame` in the
 * thread of the method in progress under lua_pcall with the traceback
 * handler, in_hook set, and the engine's instruction budget and deadline
 * armed on that thread (the host's own hook is put back afterwards).  Maps
 * the outcome like the policy state's call point (glue_call_end).  Never
 * raises: the core's C frames are below.  The host's state has no memory
 * cap (its allocator is the host's), and a coroutine the host created
 * before the call runs without the budget: the policy state, whose hook is
 * set at creation, has neither gap.
 */
static cl_status host_call(glue_side *side, lua_CFunction frame, glue_call *c) {
  lengine *le = (lengine *)side;
  lua_State *L = le->L;
  cl_engine *eng = le->eng;
  cl__budget budget;
  void *prev;
  lua_Hook hook;
  int mask, count, base, rc, jit_was_on;
  bool was_in_hook;

  if (L == NULL || !lua_checkstack(L, 4))
    return cl__fail(c->err, CL_HOOK_ERROR, "%s: no Lua stack to run on", c->hook);
  base = glue_call_begin(L, frame, c);

  compat_rawgetp(L, LUA_REGISTRYINDEX, &armed_key);
  prev = lua_touserdata(L, -1); /* an outer call's budget (another engine), or NULL */
  lua_pop(L, 1);
  cl__budget_arm(&budget, eng->hook_instruction_limit, eng->hook_time_limit_ms);
  lua_pushlightuserdata(L, &budget);
  compat_rawsetp(L, LUA_REGISTRYINDEX, &armed_key);
  hook = lua_gethook(L);
  mask = lua_gethookmask(L);
  count = lua_gethookcount(L);
  lua_sethook(L, host_count_hook, LUA_MASKCOUNT, GLUE_HOOK_EVERY);
  jit_was_on = compat_hook_begin(L, c->fn_ref); /* LuaJIT: the JIT would skip the count hook */
  was_in_hook = eng->in_hook;
  eng->in_hook = true;

  rc = lua_pcall(L, 1, 0, base + 1);

  eng->in_hook = was_in_hook;
  compat_hook_end(L, jit_was_on);
  lua_sethook(L, hook, mask, count);
  if (prev) lua_pushlightuserdata(L, prev);
  else lua_pushboolean(L, 0);
  compat_rawsetp(L, LUA_REGISTRYINDEX, &armed_key);
  return glue_call_end(L, eng, base, rc, &budget, 0, c);
}

/* glue_side.state: the method's thread, where the records' refs go. */
static lua_State *host_state(glue_side *side) { return ((lengine *)side)->L; }

/* ------------------------------------------------------------------ */
/* The log sink: open{ log = function(level, line) end }                */
/* ------------------------------------------------------------------ */

/* The engine's log sink when open{} got a log function: the call point of
 * glue_log_frame.  Its errors are reported on stderr and otherwise
 * ignored: logging must not fail calls. */
static void host_log(void *ud, cl_log_level level, const char *line) {
  lengine *le = (lengine *)ud;
  lua_State *L = le->L;
  glue_call c;
  bool was_in_hook = false;
  int base;
  if (L == NULL || le->logging || !lua_checkstack(L, 3)) return;
  memset(&c, 0, sizeof c);
  c.fn_ref = le->log_ref;
  c.level = level;
  c.line = line;
  le->logging = true;
  if (le->eng) {
    was_in_hook = le->eng->in_hook;
    le->eng->in_hook = true; /* the log function may not call back in */
  }
  base = lua_gettop(L);
  lua_pushcfunction(L, glue_log_frame);
  lua_pushlightuserdata(L, &c);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK)
    fprintf(stderr, "cairnloop: the log function failed: %s\n",
            lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(not a string)");
  lua_settop(L, base);
  if (le->eng) le->eng->in_hook = was_in_hook;
  le->logging = false;
}

/* ------------------------------------------------------------------ */
/* Arguments                                                            */
/* ------------------------------------------------------------------ */

/*
 * The engine at 1, open.  Raises on misuse: not an engine, a closed one, or
 * (unless `in_hook_ok`) a call from inside one of its own hooks.
 */
static lengine *check_engine(lua_State *L, const char *method, bool in_hook_ok) {
  lengine *le = (lengine *)luaL_checkudata(L, 1, ENGINE_MT);
  if (le->eng == NULL) {
    luaL_error(L, "attempt to use a closed engine");
    return NULL; /* not reached: luaL_error raises */
  }
  if (le->eng->in_hook) {
    if (!in_hook_ok)
      luaL_error(L, "engine:%s cannot be called from inside one of this engine's hooks", method);
  } else {
    le->L = L;
  }
  return le;
}

/* An optional opts table at `idx`: nil/none is allowed, anything else but
 * a table raises. */
static bool opt_table(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return false;
  luaL_checktype(L, idx, LUA_TTABLE);
  return true;
}

/* Every key of the opts table at `idx` must be one of `allowed`. */
static bool check_keys(lua_State *L, int idx, const char *const *allowed, cl_error *err) {
  int i;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1); /* value */
    if (lua_type(L, -1) != LUA_TSTRING) {
      cl__fail(err, CL_INVALID_ARGUMENT, "option names must be strings, got a %s",
               luaL_typename(L, -1));
      lua_pop(L, 1);
      return false;
    }
    for (i = 0; allowed[i]; i++)
      if (strcmp(allowed[i], lua_tostring(L, -1)) == 0) break;
    if (allowed[i] == NULL) {
      cl__fail(err, CL_INVALID_ARGUMENT, "unknown option '%.64s'", lua_tostring(L, -1));
      lua_pop(L, 1);
      return false;
    }
  }
  return true;
}

/* A string without NUL bytes, or NULL for nil, from the value on top. */
static bool top_string(lua_State *L, const char *name, const char **out, cl_error *err) {
  size_t len;
  *out = NULL;
  if (lua_isnil(L, -1)) return true;
  if (lua_type(L, -1) != LUA_TSTRING) {
    cl__fail(err, CL_INVALID_ARGUMENT, "%s must be a string, got a %s", name, luaL_typename(L, -1));
    return false;
  }
  *out = lua_tolstring(L, -1, &len);
  if (strlen(*out) != len) {
    cl__fail(err, CL_INVALID_ARGUMENT, "%s contains a NUL byte", name);
    return false;
  }
  return true;
}

/*
 * opts[name] as a string or NULL.  The value stays pushed: the pointer
 * must live as long as the call, even if a hook empties the opts table.
 */
static bool opt_string(lua_State *L, int idx, const char *name, const char **out, cl_error *err) {
  lua_getfield(L, idx, name);
  return top_string(L, name, out, err);
}

/*
 * opts.actor at `idx`.  nil or a string is the actor itself (*out).  Any
 * other plain value (a boolean, a number, a table) is for the actor
 * resolver to map, as API.md allows: *value_idx is set to its stack slot
 * when the resolver was registered from this state (it gets the value
 * itself), or *json to a box holding the value's JSON when the resolver
 * is the policy state's (it gets a copy made there, within `json_limit`
 * bytes, the copy bounds of a hook's result).  stage_actor hands either
 * over just before the operation.  Without a resolver such an actor is
 * invalid.  `le` NULL is the asynchronous engine, whose resolver lives on
 * its thread and can only be a policy's: a plain value always becomes
 * JSON there, and the engine thread checks the resolver.  The value stays
 * pushed; raises only on memory.
 */
static bool opt_actor(lua_State *L, const lengine *le, size_t json_limit, int idx, const char **out,
                      int *value_idx, cl__box **json, cl_error *err) {
  int t;
  char why[96];
  json_t *j;
  *value_idx = 0;
  *json = NULL;
  lua_getfield(L, idx, "actor");
  t = lua_type(L, -1);
  if (t == LUA_TNIL || t == LUA_TSTRING) return top_string(L, "actor", out, err);
  *out = NULL;
  if ((le && !le->eng->has_resolver) ||
      (t != LUA_TBOOLEAN && t != LUA_TNUMBER && t != LUA_TTABLE)) {
    cl__fail(err, CL_INVALID_ARGUMENT,
             "actor must be a string, got a %s (an actor resolver may take plain values)",
             luaL_typename(L, -1));
    return false;
  }
  if (le && glue_owns_resolver(&le->side, le->eng)) {
    *value_idx = lua_gettop(L);
    return true;
  }
  *json = glue_newbox(L, 0);
  lua_insert(L, -2); /* box actor: the actor stays on top */
  if ((j = glue_to_json(L, -1, 0, json_limit, why, sizeof why)) == NULL) {
    cl__fail(err, CL_INVALID_ARGUMENT, "actor cannot be copied into the policy state: %s", why);
    return false;
  }
  if (((*json)->p = cl__json_take_text(j, true)) == NULL) luaL_error(L, "not enough memory");
  (*json)->drop = free;
  if (le == NULL || cl__policy_owns_resolver(le->eng)) return true;
  cl__fail(err, CL_INVALID_ARGUMENT, "actor must be a string for this actor resolver, got a %s",
           luaL_typename(L, -1));
  return false;
}

/* Hands the actor opt_actor prepared to the side that runs the resolver,
 * for one operation.  Raises only on memory, before anything is staged:
 * call it after the last call that may raise before the operation. */
static void stage_actor(lua_State *L, lengine *le, int value_idx, cl__box *json) {
  if (value_idx) {
    lua_pushvalue(L, value_idx);
    le->side.actor_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  } else if (json) {
    cl__policy_stage_actor(le->eng, (const char *)json->p);
  }
}

/* Takes a staged actor back after the operation, on every path. */
static void unstage_actor(lua_State *L, lengine *le, cl__box *json) {
  luaL_unref(L, LUA_REGISTRYINDEX, le->side.actor_ref);
  le->side.actor_ref = LUA_NOREF;
  if (json) {
    cl__policy_stage_actor(le->eng, NULL);
    cl__box_release(json);
  }
}

/* opts[name] as an integer from min to max; *out untouched when absent. */
static bool opt_int(lua_State *L, int idx, const char *name, int64_t min, int64_t max, int64_t *out,
                    cl_error *err) {
  int64_t v;
  lua_getfield(L, idx, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return true;
  }
  if (!compat_tointeger(L, -1, &v) || v < min || v > max) {
    lua_pop(L, 1);
    cl__fail(err, CL_INVALID_ARGUMENT, "%s must be an integer from %lld to %lld", name,
             (long long)min, (long long)max);
    return false;
  }
  lua_pop(L, 1);
  *out = v;
  return true;
}

/* A conversation id: an integer (no fraction; LuaJIT: up to 2^53).  The
 * core checks that it is positive. */
static bool check_id(lua_State *L, int idx, const char *what, int64_t *out, cl_error *err) {
  if (compat_tointeger(L, idx, out)) return true;
  cl__fail(err, CL_INVALID_ARGUMENT, "%s must be an integer, got %s", what,
           lua_type(L, idx) == LUA_TNUMBER ? "a number with a fraction or out of range"
                                           : luaL_typename(L, idx));
  return false;
}

/* ------------------------------------------------------------------ */
/* Results                                                              */
/* ------------------------------------------------------------------ */

/* { id, worker, state, scheduled_at, args = { message_id, conversation_id, template_id, bulk_envelope_id } } */
static void push_job(lua_State *L, const cl_delivery_job *j) {
  lua_createtable(L, 0, 5);
  glue_setint(L, "id", j->id);
  glue_setstr(L, "worker", j->worker);
  glue_setstr(L, "state", j->state);
  glue_setstr(L, "scheduled_at", j->scheduled_at);
  lua_createtable(L, 0, 4);
  glue_setint(L, "message_id", j->message_id);
  glue_setint(L, "conversation_id", j->conversation_id);
  glue_setstr(L, "template_id", j->template_id);
  glue_setstr(L, "bulk_envelope_id", j->bulk_envelope_id);
  lua_setfield(L, -2, "args");
}

static void push_envelope(lua_State *L, const cl_envelope *e) {
  size_t i;
  lua_createtable(L, 0, 10);
  glue_setstr(L, "id", e->id);
  glue_setstr(L, "template_id", e->template_id);
  glue_setstr(L, "rendered_body", e->rendered_body);
  lua_createtable(L, (int)e->count, 0);
  for (i = 0; i < e->count; i++) {
    compat_pushint64(L, e->recipient_conversation_ids[i]);
    lua_rawseti(L, -2, (int)i + 1);
  }
  lua_setfield(L, -2, "recipient_conversation_ids");
  glue_setint(L, "count", (int64_t)e->count);
  glue_setint(L, "effective_cap", e->effective_cap);
  glue_setstr(L, "requested_by", e->requested_by);
  glue_setstr(L, "requested_at", e->requested_at);
  glue_setstr(L, "status", e->status);
  glue_setstr(L, "refused_reason", e->refused_reason);
}

/*
 * Pushes what becomes res.audit: the host auditor's own value (its ref is
 * taken here), else the policy auditor's JSON decoded, else nil.  `le` is
 * NULL for the asynchronous engine, whose auditor can only be a policy's.
 */
static void push_audit(lua_State *L, lengine *le, const char *audit_json) {
  int ref = le ? le->audit_ref : LUA_NOREF;
  if (le) le->audit_ref = LUA_NOREF;
  if (ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
  } else {
    glue_push_json_text(L, audit_json);
  }
}

/* Drops a host auditor's value left by a call that failed. */
static void drop_audit(lua_State *L, lengine *le) {
  luaL_unref(L, LUA_REGISTRYINDEX, le->audit_ref);
  le->audit_ref = LUA_NOREF;
}

/* trigger's res: { message, delivery_job, audit, duplicate } (`le` as push_audit). */
static void push_trigger_result(lua_State *L, lengine *le, const cl_trigger_result *res) {
  lua_createtable(L, 0, 4);
  glue_push_message(L, &res->message);
  lua_setfield(L, -2, "message");
  push_job(L, &res->delivery_job);
  lua_setfield(L, -2, "delivery_job");
  push_audit(L, le, res->audit_json);
  lua_setfield(L, -2, "audit");
  lua_pushboolean(L, res->duplicate);
  lua_setfield(L, -2, "duplicate");
}

/* bulk_trigger's res: { envelope, messages, delivery_jobs, audit, replayed } (`le` as push_audit). */
static void push_bulk_result(lua_State *L, lengine *le, const cl_bulk_result *res) {
  size_t i;
  lua_createtable(L, 0, 5);
  push_envelope(L, &res->envelope);
  lua_setfield(L, -2, "envelope");
  lua_createtable(L, (int)res->count, 0);
  for (i = 0; i < res->count; i++) {
    glue_push_message(L, &res->messages[i]);
    lua_rawseti(L, -2, (int)i + 1);
  }
  lua_setfield(L, -2, "messages");
  lua_createtable(L, (int)res->count, 0);
  for (i = 0; i < res->count; i++) {
    push_job(L, &res->delivery_jobs[i]);
    lua_rawseti(L, -2, (int)i + 1);
  }
  lua_setfield(L, -2, "delivery_jobs");
  push_audit(L, le, res->audit_json);
  lua_setfield(L, -2, "audit");
  lua_pushboolean(L, res->replayed);
  lua_setfield(L, -2, "replayed");
}

/* envelopes' list, newest first as read. */
static void push_envelope_list(lua_State *L, const cl_envelope_list *list) {
  size_t i;
  lua_createtable(L, (int)list->count, 0);
  for (i = 0; i < list->count; i++) {
    push_envelope(L, &list->items[i]);
    lua_rawseti(L, -2, (int)i + 1);
  }
}

/* work's { sent, failed, no_op, retried, discarded }. */
static void push_work_stats(lua_State *L, const cl_work_stats *stats) {
  lua_createtable(L, 0, 5);
  glue_setint(L, "sent", stats->sent);
  glue_setint(L, "failed", stats->failed);
  glue_setint(L, "no_op", stats->no_op);
  glue_setint(L, "retried", stats->retried);
  glue_setint(L, "discarded", stats->discarded);
}

static void drop_trigger_result(void *p) { cl_trigger_result_clear((cl_trigger_result *)p); }
static void drop_bulk_result(void *p) { cl_bulk_result_clear((cl_bulk_result *)p); }
static void drop_envelope_list(void *p) { cl_envelope_list_clear((cl_envelope_list *)p); }

/* ------------------------------------------------------------------ */
/* cairnloop.open and the engine's lifecycle                            */
/* ------------------------------------------------------------------ */

static void engine_close_now(lua_State *L, lengine *le) {
  le->L = L;
  cl_close(le->eng); /* releases every hook: their refs go through le->L */
  le->eng = NULL;
  drop_audit(L, le);
  luaL_unref(L, LUA_REGISTRYINDEX, le->log_ref);
  le->log_ref = LUA_NOREF;
}

/*
 * The policy path(s) at `idx` (nil, a path, or a list of paths) as an
 * array of *n strings, in a userdata left pushed; the strings themselves
 * stay anchored where they are (the caller's opts table).  False with
 * `err` set when a path is not a string or holds a NUL byte.
 */
static bool policy_paths(lua_State *L, int idx, const char ***paths, size_t *n, cl_error *err) {
  size_t i;
  idx = compat_absindex(L, idx);
  *n = lua_isnil(L, idx) ? 0 : lua_type(L, idx) == LUA_TTABLE ? compat_rawlen(L, idx) : 1;
  *paths = (const char **)compat_newuserdata(L, (*n ? *n : 1) * sizeof **paths);
  if (lua_isnil(L, idx)) return true;
  if (lua_type(L, idx) == LUA_TSTRING) {
    lua_pushvalue(L, idx);
    if (!top_string(L, "policy", &(*paths)[0], err)) return false;
    lua_pop(L, 1);
    return true;
  }
  if (lua_type(L, idx) != LUA_TTABLE) {
    cl__fail(err, CL_INVALID_ARGUMENT, "policy must be a path or a list of paths");
    return false;
  }
  for (i = 0; i < *n; i++) {
    lua_rawgeti(L, idx, (int)i + 1);
    if (!top_string(L, "policy", &(*paths)[i], err) || (*paths)[i] == NULL) {
      cl__fail(err, CL_INVALID_ARGUMENT, "policy %zu must be a path", i + 1);
      return false;
    }
    lua_pop(L, 1);
  }
  return true;
}

/*
 * The options cairnloop.open and cairnloop.open_async share, from the
 * table at `idx` into `cfg`: every one but `log` (only checked to be nil
 * or a function) and `policy`, which each opener handles its own way.
 * `allowed` lists every key the caller accepts.  What the strings need
 * to stay alive (their values, http_allow's array) is left pushed: keep
 * it there until the engine is open.
 * False with `err` set on a bad option.
 */
static bool read_config(lua_State *L, int idx, const char *const *allowed, cl_config *cfg,
                        cl_error *err) {
  int64_t v;
  cl_config_init(cfg);
  if (!check_keys(L, idx, allowed, err)) return false;
  if (!opt_string(L, idx, "database", &cfg->database, err) ||
      !opt_string(L, idx, "schema", &cfg->schema, err))
    return false;
  v = 0;
  if (!opt_int(L, idx, "max_batch_size", 1, CL_MAX_COHORT, &v, err)) return false;
  cfg->max_batch_size = (int)v;
  if (!opt_int(L, idx, "hook_instruction_limit", 1, INT64_MAX, &cfg->hook_instruction_limit, err) ||
      !opt_int(L, idx, "hook_time_limit_ms", 1, INT64_MAX / 1000000, &cfg->hook_time_limit_ms, err))
    return false;
  v = 0;
  if (!opt_int(L, idx, "hook_memory_limit", 64 * 1024, INT64_MAX, &v, err)) return false;
  cfg->hook_memory_limit = (size_t)v;
  v = 0;
  if (!opt_int(L, idx, "max_attempts", 1, INT_MAX, &v, err)) return false;
  cfg->max_attempts = (int)v;
  v = 0;
  if (!opt_int(L, idx, "lease_seconds", 1, INT_MAX, &v, err)) return false;
  cfg->lease_seconds = (int)v;
  lua_getfield(L, idx, "prepared_statements");
  if (!lua_isnil(L, -1) && !lua_isboolean(L, -1)) {
    cl__fail(err, CL_INVALID_ARGUMENT, "prepared_statements must be a boolean, got a %s",
             luaL_typename(L, -1));
    return false;
  }
  cfg->no_prepared_statements = lua_isboolean(L, -1) && !lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, idx, "log_level");
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) {
      cl__fail(err, CL_INVALID_ARGUMENT, "log_level must be a string, got a %s",
               luaL_typename(L, -1));
      return false;
    }
    if (cl_log_level_parse(lua_tostring(L, -1), &cfg->log_level, err) != CL_OK) return false;
  }
  lua_pop(L, 1);
  lua_getfield(L, idx, "log");
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TFUNCTION) {
    cl__fail(err, CL_INVALID_ARGUMENT, "log must be a function");
    return false;
  }
  lua_pop(L, 1);
  /* http_allow: the strings stay anchored in opts while the engine copies them. */
  lua_getfield(L, idx, "http_allow");
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TTABLE) {
      cl__fail(err, CL_INVALID_ARGUMENT, "http_allow must be a list of URL patterns, got a %s",
               luaL_typename(L, -1));
      return false;
    }
    size_t n = compat_rawlen(L, -1);
    const char **list = (const char **)compat_newuserdata(L, sizeof *list * (n + 1));
    for (size_t i = 0; i < n; i++) {
      lua_rawgeti(L, -2, (int)i + 1);
      if (lua_type(L, -1) != LUA_TSTRING) {
        cl__fail(err, CL_INVALID_ARGUMENT, "http_allow[%zu] must be a string, got a %s", i + 1,
                 luaL_typename(L, -1));
        return false;
      }
      list[i] = lua_tostring(L, -1);
      lua_pop(L, 1);
    }
    list[n] = NULL;
    cfg->http_allow = list;
    lua_replace(L, -2); /* the array; the table stays reachable from opts */
  }
  return true;
}

/* Pushes an empty opts table in place of a nil or absent one at 1. */
static void opts_or_empty(lua_State *L) {
  lua_settop(L, 1);
  if (lua_isnil(L, 1)) {
    lua_newtable(L);
    lua_replace(L, 1);
  }
}

/*
 * cairnloop.open([opts]) -> engine | nil, code, msg; raises if opts is not a table
 * opts: database, schema, max_batch_size, policy (path or list),
 * hook_instruction_limit, hook_time_limit_ms, hook_memory_limit,
 * max_attempts, lease_seconds, log (function(level, line)), log_level,
 * prepared_statements (boolean, default true; false for PgBouncer in
 * transaction mode: cl_config.no_prepared_statements), http_allow (a list
 * of URL patterns a policy's notifier may reach: cl_config.http_allow).
 */
static int engine_open(lua_State *L) {
  static const char *const allowed[] = {"database",
                                        "schema",
                                        "max_batch_size",
                                        "policy",
                                        "hook_instruction_limit",
                                        "hook_time_limit_ms",
                                        "hook_memory_limit",
                                        "max_attempts",
                                        "lease_seconds",
                                        "log",
                                        "log_level",
                                        "prepared_statements",
                                        "http_allow",
                                        NULL};
  const char **paths;
  size_t npaths, i;
  cl_config cfg;
  cl_error err;
  cl_status st;
  lengine *le;
  int log_idx;

  opt_table(L, 1);
  opts_or_empty(L);
  if (!read_config(L, 1, allowed, &cfg, &err))
    return glue_push_failure(L, CL_INVALID_ARGUMENT, &err);
  /* What read_config pushed stays until cl_open has run. */
  lua_getfield(L, 1, "log");
  log_idx = lua_gettop(L);
  lua_getfield(L, 1, "policy");
  if (!policy_paths(L, -1, &paths, &npaths, &err))
    return glue_push_failure(L, CL_INVALID_ARGUMENT, &err);

  le = (lengine *)compat_newuserdata(L, sizeof *le);
  le->side.call = host_call;
  le->side.state = host_state;
  le->side.api = "";
  le->side.audit_slot = &le->audit_ref; /* res.audit is the value itself */
  le->side.hooks = NULL;
  le->side.actor_ref = LUA_NOREF;
  le->side.actor_json = NULL;
  le->side.set_notifier = NULL; /* host notifiers are plain ones */
  le->eng = NULL;
  le->L = L;
  le->log_ref = LUA_NOREF;
  le->audit_ref = LUA_NOREF;
  le->logging = false;
  luaL_setmetatable(L, ENGINE_MT); /* from here on __gc cleans up */
  if (!lua_isnil(L, log_idx)) {
    lua_pushvalue(L, log_idx);
    le->log_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    cfg.log = host_log;
    cfg.log_ud = le;
  }
  st = cl_open(&le->eng, &cfg, &err);
  for (i = 0; st == CL_OK && i < npaths; i++) st = cl_load_policy(le->eng, paths[i], &err);
  if (st != CL_OK) {
    engine_close_now(L, le);
    return glue_push_failure(L, st, &err);
  }
  return 1;
}

/* engine:close() -> true; raises if already closed or called from a hook */
static int engine_close(lua_State *L) {
  lengine *le = check_engine(L, "close", false);
  engine_close_now(L, le);
  lua_pushboolean(L, 1);
  return 1;
}

/* __gc and __close: closes the engine if it is still open. */
static int engine_gc(lua_State *L) {
  lengine *le = (lengine *)luaL_checkudata(L, 1, ENGINE_MT);
  if (le->eng == NULL || !le->eng->in_hook) engine_close_now(L, le);
  return 0;
}

static int engine_tostring(lua_State *L) {
  lengine *le = (lengine *)luaL_checkudata(L, 1, ENGINE_MT);
  if (le->eng) lua_pushfstring(L, "cairnloop.engine (%s)", cl_schema(le->eng));
  else lua_pushliteral(L, "cairnloop.engine (closed)");
  return 1;
}

/* engine:migrate() -> true | nil, code, msg */
static int engine_migrate(lua_State *L) {
  lengine *le = check_engine(L, "migrate", false);
  cl_error err;
  cl_status st = cl_migrate(le->eng, &err);
  if (st != CL_OK) return glue_push_failure(L, st, &err);
  lua_pushboolean(L, 1);
  return 1;
}

/* engine:configure{ max_batch_size = n } -> true | nil, code, msg; raises if opts is not a table */
static int engine_configure(lua_State *L) {
  static const char *const allowed[] = {"max_batch_size", NULL};
  lengine *le = check_engine(L, "configure", false);
  int64_t cap = -1;
  cl_error err;
  cl_status st;
  luaL_checktype(L, 2, LUA_TTABLE);
  if (!check_keys(L, 2, allowed, &err) ||
      !opt_int(L, 2, "max_batch_size", 1, CL_MAX_COHORT, &cap, &err))
    return glue_push_failure(L, CL_INVALID_ARGUMENT, &err);
  if (cap > 0 && (st = cl_set_max_batch_size(le->eng, (int)cap, &err)) != CL_OK)
    return glue_push_failure(L, st, &err);
  lua_pushboolean(L, 1);
  return 1;
}

/* engine:max_batch_size() -> integer: the cohort cap of the moment, the one
 * the next bulk_trigger checks (campaigns size their envelopes by it) */
static int engine_max_batch_size(lua_State *L) {
  lengine *le = check_engine(L, "max_batch_size", true);
  lua_pushinteger(L, cl_max_batch_size(le->eng));
  return 1;
}

/*
 * engine:query(sql, ...) -> { row, ... } | nil, code, msg
 * One read-only statement ($1.. bound to the extra arguments, as tx:exec),
 * rows as tables keyed by column name.  Raises on misuse (a closed engine,
 * a table as a parameter).
 */
static int engine_query(lua_State *L) {
  lengine *le = check_engine(L, "query", true);
  size_t len;
  const char *sql = luaL_checklstring(L, 2, &len);
  int nparams;
  const char **params;
  cl__box *box;
  cl_rows *rows = NULL;
  cl_error err;
  if (strlen(sql) != len) return luaL_argerror(L, 2, "SQL contains a NUL byte");
  params = glue_bind_params(L, 3, &nparams);
  box = glue_newbox(L, 0);
  if (cl_query(le->eng, sql, nparams, params, &rows, &err) != CL_OK)
    return glue_push_failure(L, err.code, &err);
  glue_push_rows(L, box, rows);
  return 1;
}

/* ------------------------------------------------------------------ */
/* trigger and bulk_trigger                                             */
/* ------------------------------------------------------------------ */

/*
 * trigger's arguments, shared with the asynchronous engine: the
 * conversation id at 2, the opts table at 3 (the caller checked that it
 * is a table).  What the options point to stays pushed.  False with `err`
 * set on an invalid argument.  `le` and `json_limit` as opt_actor.
 */
static bool trigger_args(lua_State *L, const lengine *le, size_t json_limit, int64_t *id,
                         cl_trigger_opts *o, int *actor_idx, cl__box **actor_json, cl_error *err) {
  static const char *const allowed[] = {"template_id", "content",          "schedule_in",
                                        "actor",       "bulk_envelope_id", NULL};
  memset(o, 0, sizeof *o);
  *actor_idx = 0;
  *actor_json = NULL;
  return check_id(L, 2, "conversation_id", id, err) && check_keys(L, 3, allowed, err) &&
         opt_string(L, 3, "template_id", &o->template_id, err) &&
         opt_string(L, 3, "content", &o->content, err) &&
         opt_actor(L, le, json_limit, 3, &o->actor, actor_idx, actor_json, err) &&
         opt_string(L, 3, "bulk_envelope_id", &o->bulk_envelope_id, err) &&
         opt_int(L, 3, "schedule_in", INT64_MIN, INT64_MAX, &o->schedule_in, err);
}

/*
 * bulk_trigger's arguments, shared with the asynchronous engine: the list
 * of conversation ids at 2 (copied into a userdata left pushed: *ids, *n),
 * the opts table at 3 (checked as a table by the caller).  As trigger_args.
 */
static bool bulk_args(lua_State *L, const lengine *le, size_t json_limit, int64_t **ids, size_t *n,
                      cl_bulk_opts *o, int *actor_idx, cl__box **actor_json, cl_error *err) {
  static const char *const allowed[] = {"template_id", "rendered_body", "actor",
                                        "envelope_id", "schedule_in",   NULL};
  size_t i, keys = 0;
  memset(o, 0, sizeof *o);
  *ids = NULL;
  *n = 0;
  *actor_idx = 0;
  *actor_json = NULL;
  if (lua_type(L, 2) != LUA_TTABLE) {
    cl__fail(err, CL_INVALID_ARGUMENT, "conversation ids must be a list, got a %s",
             luaL_typename(L, 2));
    return false;
  }
  /* A list: keys exactly 1..n, so {1, nil, 3} is refused, not cut short. */
  *n = compat_rawlen(L, 2);
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    lua_pop(L, 1);
    keys++;
  }
  if (keys != *n) {
    cl__fail(err, CL_INVALID_ARGUMENT, "conversation ids must be a list without holes");
    return false;
  }
  if (*n > CL_MAX_COHORT) {
    cl__fail(err, CL_INVALID_ARGUMENT, "conversation_ids has %zu ids, at most %d", *n,
             CL_MAX_COHORT);
    return false;
  }
  *ids = (int64_t *)compat_newuserdata(L, (*n ? *n : 1) * sizeof **ids);
  for (i = 0; i < *n; i++) {
    char what[48];
    bool ok;
    snprintf(what, sizeof what, "conversation id %zu", i + 1);
    lua_rawgeti(L, 2, (int)i + 1);
    ok = check_id(L, -1, what, &(*ids)[i], err);
    lua_pop(L, 1);
    if (!ok) return false;
  }
  return check_keys(L, 3, allowed, err) && opt_string(L, 3, "template_id", &o->template_id, err) &&
         opt_string(L, 3, "rendered_body", &o->rendered_body, err) &&
         opt_actor(L, le, json_limit, 3, &o->actor, actor_idx, actor_json, err) &&
         opt_string(L, 3, "envelope_id", &o->envelope_id, err) &&
         opt_int(L, 3, "schedule_in", INT64_MIN, INT64_MAX, &o->schedule_in, err);
}

/* engine:trigger(conversation_id, opts) -> res | nil, code, msg; raises if opts is not a table */
static int engine_trigger(lua_State *L) {
  lengine *le = check_engine(L, "trigger", false);
  cl_trigger_opts o;
  cl_trigger_result *res;
  cl__box *box, *actor_json;
  cl_error err;
  cl_status st;
  int64_t id;
  int actor_idx;

  luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  if (!trigger_args(L, le, le->eng->hook_memory_limit, &id, &o, &actor_idx, &actor_json, &err))
    return glue_push_failure(L, CL_INVALID_ARGUMENT, &err);

  box = glue_newbox(L, sizeof *res); /* owns the result while the table is built */
  res = (cl_trigger_result *)box->p;
  le->audit_ref = LUA_NOREF;
  stage_actor(L, le, actor_idx, actor_json);
  st = cl_trigger(le->eng, id, &o, res, &err);
  unstage_actor(L, le, actor_json);
  box->drop = drop_trigger_result;
  if (st != CL_OK) {
    drop_audit(L, le);
    cl__box_release(box);
    return glue_push_failure(L, st, &err);
  }
  push_trigger_result(L, le, res);
  cl__box_release(box);
  return 1;
}

/* engine:bulk_trigger(ids, opts) -> res | nil, code, msg; raises if opts is not a table */
static int engine_bulk_trigger(lua_State *L) {
  lengine *le = check_engine(L, "bulk_trigger", false);
  cl_bulk_opts o;
  cl_bulk_result *res;
  cl__box *box, *actor_json;
  cl_error err;
  cl_status st;
  int64_t *ids;
  size_t n;
  int actor_idx;

  luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  if (!bulk_args(L, le, le->eng->hook_memory_limit, &ids, &n, &o, &actor_idx, &actor_json, &err))
    return glue_push_failure(L, CL_INVALID_ARGUMENT, &err);

  box = glue_newbox(L, sizeof *res);
  res = (cl_bulk_result *)box->p;
  le->audit_ref = LUA_NOREF;
  stage_actor(L, le, actor_idx, actor_json);
  st = cl_bulk_trigger(le->eng, ids, n, &o, res, &err);
  unstage_actor(L, le, actor_json);
  box->drop = drop_bulk_result;
  if (st != CL_OK) {
    drop_audit(L, le);
    cl__box_release(box);
    return glue_push_failure(L, st, &err);
  }
  push_bulk_result(L, le, res);
  cl__box_release(box);
  return 1;
}

/* ------------------------------------------------------------------ */
/* Reads and delivery                                                   */
/* ------------------------------------------------------------------ */

/* envelope's id at `idx`: a string without NUL bytes (the core checks
 * that it is a UUID), pushed.  False with `err` set otherwise. */
static bool envelope_id_arg(lua_State *L, int idx, const char **id, cl_error *err) {
  lua_pushvalue(L, idx);
  if (lua_type(L, -1) != LUA_TSTRING || !top_string(L, "envelope id", id, err)) {
    cl__fail(err, CL_INVALID_ARGUMENT, "envelope id must be a UUID string");
    return false;
  }
  return true;
}

/* envelopes' optional { template_id =, status =, limit = 50 } at `idx`, into `q`.
 * Raises if it is neither nil nor a table; false with `err` set on a bad value. */
static bool envelope_query_args(lua_State *L, int idx, cl_envelope_query *q, cl_error *err) {
  static const char *const allowed[] = {"template_id", "status", "limit", NULL};
  int64_t limit = 50;
  memset(q, 0, sizeof *q);
  if (opt_table(L, idx) && (!check_keys(L, idx, allowed, err) ||
                            !opt_string(L, idx, "template_id", &q->template_id, err) ||
                            !opt_string(L, idx, "status", &q->status, err) ||
                            !opt_int(L, idx, "limit", 1, 10000, &limit, err)))
    return false;
  q->limit = (int)limit;
  return true;
}

/* engine:envelope(id) -> envelope | nil | nil, code, msg */
static int engine_envelope(lua_State *L) {
  lengine *le = check_engine(L, "envelope", false);
  cl_envelope_list *list;
  const char *id;
  cl__box *box;
  cl_error err;
  cl_status st;
  lua_settop(L, 2);
  if (!envelope_id_arg(L, 2, &id, &err)) return glue_push_failure(L, CL_INVALID_ARGUMENT, &err);
  box = glue_newbox(L, sizeof *list);
  list = (cl_envelope_list *)box->p;
  st = cl_envelope_get(le->eng, id, list, &err);
  box->drop = drop_envelope_list;
  if (st != CL_OK) {
    cl__box_release(box);
    return glue_push_failure(L, st, &err);
  }
  if (list->count == 0) lua_pushnil(L);
  else push_envelope(L, &list->items[0]);
  cl__box_release(box);
  return 1;
}

/* engine:envelopes([{ template_id =, status =, limit = 50 }]) -> list | nil, code, msg */
static int engine_envelopes(lua_State *L) {
  lengine *le = check_engine(L, "envelopes", false);
  cl_envelope_query q;
  cl_envelope_list *list;
  cl__box *box;
  cl_error err;
  cl_status st;
  lua_settop(L, 2);
  if (!envelope_query_args(L, 2, &q, &err)) return glue_push_failure(L, CL_INVALID_ARGUMENT, &err);
  box = glue_newbox(L, sizeof *list);
  list = (cl_envelope_list *)box->p;
  st = cl_envelopes_list(le->eng, &q, list, &err);
  box->drop = drop_envelope_list;
  if (st != CL_OK) {
    cl__box_release(box);
    return glue_push_failure(L, st, &err);
  }
  push_envelope_list(L, list);
  cl__box_release(box);
  return 1;
}

/* engine:audit_events([opts]) -> the auditor's list_events(opts), {} without one | nil, code, msg */
static int engine_audit_events(lua_State *L) {
  lengine *le = check_engine(L, "audit_events", false);
  cl__box *in, *out;
  char *events = NULL;
  cl_error err;
  cl_status st;
  lua_settop(L, 2);
  opt_table(L, 2);
  in = glue_newbox(L, 0);
  out = glue_newbox(L, 0);
  if (!lua_isnil(L, 2)) {
    char why[96];
    json_t *j;
    if ((j = glue_to_json(L, 2, 0, le->eng->hook_memory_limit, why, sizeof why)) == NULL) {
      cl__fail(&err, CL_INVALID_ARGUMENT, "audit_events options cannot be encoded as JSON: %s",
               why);
      return glue_push_failure(L, CL_INVALID_ARGUMENT, &err);
    }
    if ((in->p = cl__json_take_text(j, false)) == NULL) return luaL_error(L, "not enough memory");
    in->drop = free;
  }
  st = cl_audit_events(le->eng, (const char *)in->p, &events, &err);
  out->p = events;
  out->drop = free;
  if (st != CL_OK) return glue_push_failure(L, st, &err);
  glue_push_json_text(L, events ? events : "[]");
  if (!lua_istable(L, -1)) { /* a list_events that returned a scalar */
    lua_pop(L, 1);
    lua_newtable(L);
  }
  cl__box_release(in);
  cl__box_release(out);
  return 1;
}

/* What engine:work{} asks for: a limit, and deliveries in flight and per second (0: unset). */
typedef struct work_req {
  int64_t limit, concurrency;
  double rate;
} work_req;

/* work's optional { limit = 100, concurrency =, rate = } at `idx`, into `w`.
 * Raises if it is neither nil nor a table; false with `err` set on a bad value. */
static bool work_args(lua_State *L, int idx, work_req *w, cl_error *err) {
  static const char *const allowed[] = {"limit", "concurrency", "rate", NULL};
  w->limit = 100;
  w->concurrency = 0;
  w->rate = 0;
  if (!opt_table(L, idx)) return true;
  if (!check_keys(L, idx, allowed, err) || !opt_int(L, idx, "limit", 1, INT_MAX, &w->limit, err) ||
      !opt_int(L, idx, "concurrency", 1, CL_WORK_MAX_CONCURRENCY, &w->concurrency, err))
    return false;
  lua_getfield(L, idx, "rate");
  if (!lua_isnil(L, -1) && (lua_type(L, -1) != LUA_TNUMBER || !(lua_tonumber(L, -1) > 0))) {
    lua_pop(L, 1);
    cl__fail(err, CL_INVALID_ARGUMENT, "rate must be a number of deliveries per second above 0");
    return false;
  }
  w->rate = lua_isnil(L, -1) ? 0 : (double)lua_tonumber(L, -1);
  lua_pop(L, 1);
  return true;
}

/*
 * Delivers as `w` asks: without concurrency (or rate) it is cl_work, one
 * batch delivered in turn; with them cl_work_run.  Plain C, so that the
 * asynchronous engine runs it on its own thread.
 */
static cl_status run_work(cl_engine *eng, const work_req *w, cl_work_stats *stats, cl_error *err) {
  memset(stats, 0, sizeof *stats);
  if (w->concurrency == 0 && w->rate == 0) return cl_work(eng, (int)w->limit, stats, err);
  /* cl_work_run checks the limit, as cl_work does. */
  cl_work_options o = {.limit = (int)w->limit, .concurrency = (int)w->concurrency, .rate = w->rate};
  return cl_work_run(eng, &o, stats, NULL, err);
}

/* engine:work([{ limit = 100, concurrency = N, rate = R }])
 *   -> { sent, failed, no_op, retried, discarded } | nil, code, msg */
static int engine_work(lua_State *L) {
  lengine *le = check_engine(L, "work", false);
  cl_work_stats stats;
  cl_error err;
  cl_status st;
  work_req w;
  lua_settop(L, 2);
  if (!work_args(L, 2, &w, &err)) return glue_push_failure(L, CL_INVALID_ARGUMENT, &err);
  if ((st = run_work(le->eng, &w, &stats, &err)) != CL_OK) return glue_push_failure(L, st, &err);
  push_work_stats(L, &stats);
  return 1;
}

/* ------------------------------------------------------------------ */
/* Hooks from the host                                                  */
/* ------------------------------------------------------------------ */

/* engine:auditor{ audit = fn [, list_events = fn] } | engine:auditor(nil) -> true; raises on misuse */
static int engine_auditor(lua_State *L) {
  lengine *le = check_engine(L, "auditor", false);
  return glue_set_hook(L, 2, &le->side, le->eng, GLUE_AUDITOR);
}

/* engine:actor_resolver(fn | nil) -> true; raises on misuse */
static int engine_actor_resolver(lua_State *L) {
  lengine *le = check_engine(L, "actor_resolver", false);
  return glue_set_hook(L, 2, &le->side, le->eng, GLUE_RESOLVER);
}

/* engine:notifier(fn | nil) -> true; raises on misuse */
static int engine_notifier(lua_State *L) {
  lengine *le = check_engine(L, "notifier", false);
  return glue_set_hook(L, 2, &le->side, le->eng, GLUE_NOTIFIER);
}

/* engine:attach(handler_id, event_name, fn [, config]) -> true | nil, code, msg; raises if fn is not a function */
static int engine_attach(lua_State *L) {
  lengine *le = check_engine(L, "attach", true);
  return glue_attach(L, 2, 0, &le->side, le->eng);
}

/* engine:attach_many(handler_id, { event_name, ... }, fn [, config]) -> true | nil, code, msg */
static int engine_attach_many(lua_State *L) {
  lengine *le = check_engine(L, "attach_many", true);
  return glue_attach(L, 2, 1, &le->side, le->eng);
}

/* engine:detach(handler_id) -> boolean; allowed inside a handler */
static int engine_detach(lua_State *L) {
  lengine *le = check_engine(L, "detach", true);
  return glue_detach(L, 2, le->eng);
}

/* ------------------------------------------------------------------ */
/* Operating the queue                                                  */
/* ------------------------------------------------------------------ */

static void drop_job_list(void *p) { cl_job_list_clear((cl_job_list *)p); }

/*
 * opts.ids at `idx` as a list of integers without holes, copied into a
 * userdata pushed on the stack (NULL and n = 0 when absent).  False with
 * `err` set on a wrong shape.
 */
static bool opt_ids(lua_State *L, int idx, int64_t **ids, size_t *n, cl_error *err) {
  size_t i, keys = 0;
  *ids = NULL;
  *n = 0;
  lua_getfield(L, idx, "ids"); /* ... ids */
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return true;
  }
  if (lua_type(L, -1) != LUA_TTABLE) {
    cl__fail(err, CL_INVALID_ARGUMENT, "ids must be a list of job ids, got a %s",
             luaL_typename(L, -1));
    return false;
  }
  *n = compat_rawlen(L, -1);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    lua_pop(L, 1);
    keys++;
  }
  if (keys != *n || *n == 0 || *n > CL_JOBS_MAX_LIMIT) {
    cl__fail(err, CL_INVALID_ARGUMENT, "ids must be a list of 1 to %d job ids without holes",
             CL_JOBS_MAX_LIMIT);
    return false;
  }
  *ids = (int64_t *)compat_newuserdata(L, *n * sizeof **ids); /* ... ids buf */
  for (i = 0; i < *n; i++) {
    bool ok;
    lua_rawgeti(L, -2, (int)i + 1);
    ok = check_id(L, -1, "job id", &(*ids)[i], err);
    lua_pop(L, 1);
    if (!ok) return false;
  }
  return true;
}

/* opts[name] as a boolean (nil: false); false with `err` set otherwise. */
static bool opt_flag(lua_State *L, int idx, const char *name, int *out, cl_error *err) {
  lua_getfield(L, idx, name);
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TBOOLEAN) {
    lua_pop(L, 1);
    cl__fail(err, CL_INVALID_ARGUMENT, "%s must be a boolean", name);
    return false;
  }
  *out = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return true;
}

/* { id, worker, state, scheduled_at, args = {...}, attempt, max_attempts,
 *   attempted_at, finished_at, inserted_at, last_error }: a trigger's job
 * table with what an operator reads. */
static void push_job_info(lua_State *L, const cl_job *j) {
  push_job(L, &j->job);
  glue_setint(L, "attempt", j->attempt);
  glue_setint(L, "max_attempts", j->max_attempts);
  glue_setstr(L, "attempted_at", j->attempted_at);
  glue_setstr(L, "finished_at", j->finished_at);
  glue_setstr(L, "inserted_at", j->inserted_at);
  glue_setstr(L, "last_error", j->last_error);
}

/* engine:jobs([{ state =, envelope_id =, template_id =, limit = 50 }]) -> list | nil, code, msg */
static int engine_jobs(lua_State *L) {
  static const char *const allowed[] = {"state", "envelope_id", "template_id", "limit", NULL};
  lengine *le = check_engine(L, "jobs", false);
  cl_job_query q;
  cl_job_list *list;
  cl__box *box;
  cl_error err;
  cl_status st;
  int64_t limit = CL_JOBS_DEFAULT_LIMIT;
  size_t i;
  lua_settop(L, 2);
  memset(&q, 0, sizeof q);
  if (opt_table(L, 2) &&
      (!check_keys(L, 2, allowed, &err) || !opt_string(L, 2, "state", &q.state, &err) ||
       !opt_string(L, 2, "envelope_id", &q.envelope_id, &err) ||
       !opt_string(L, 2, "template_id", &q.template_id, &err) ||
       !opt_int(L, 2, "limit", 1, CL_JOBS_MAX_LIMIT, &limit, &err)))
    return glue_push_failure(L, CL_INVALID_ARGUMENT, &err);
  q.limit = (int)limit;
  box = glue_newbox(L, sizeof *list);
  list = (cl_job_list *)box->p;
  st = cl_jobs(le->eng, &q, list, &err);
  box->drop = drop_job_list;
  if (st != CL_OK) {
    cl__box_release(box);
    return glue_push_failure(L, st, &err);
  }
  lua_createtable(L, (int)list->count, 0);
  for (i = 0; i < list->count; i++) {
    push_job_info(L, &list->items[i]);
    lua_rawseti(L, -2, (int)i + 1);
  }
  cl__box_release(box);
  return 1;
}

/* engine:stats([{ envelope_id = }]) -> { available =, scheduled =, executing =, retryable =,
 *   completed =, discarded =, cancelled =, oldest_due_age_seconds =, paused = } | nil, code, msg */
static int engine_stats(lua_State *L) {
  static const char *const allowed[] = {"envelope_id", NULL};
  lengine *le = check_engine(L, "stats", false);
  const char *envelope_id = NULL;
  cl_queue_stats stats;
  cl_error err;
  cl_status st;
  int i;
  lua_settop(L, 2);
  if (opt_table(L, 2) &&
      (!check_keys(L, 2, allowed, &err) || !opt_string(L, 2, "envelope_id", &envelope_id, &err)))
    return glue_push_failure(L, CL_INVALID_ARGUMENT, &err);
  st = cl_stats(le->eng, envelope_id, &stats, &err);
  if (st != CL_OK) return glue_push_failure(L, st, &err);
  lua_createtable(L, 0, CL_JOB_STATE__COUNT + 2);
  for (i = 0; i < CL_JOB_STATE__COUNT; i++)
    glue_setint(L, cl_job_state_name((cl_job_state)i), stats.count[i]);
  glue_setint(L, "oldest_due_age_seconds", stats.oldest_due_age_seconds);
  lua_pushboolean(L, stats.paused);
  lua_setfield(L, -2, "paused");
  return 1;
}

/* engine:retry{...} and engine:cancel{...}: the shared body.  The opts
 * table is required (misuse raises); its values are checked here. */
static int change_jobs(lua_State *L, bool retry) {
  static const char *const retry_keys[] = {"ids", "envelope_id", "all_discarded", "actor", NULL};
  static const char *const cancel_keys[] = {"ids", "envelope_id", "actor", NULL};
  lengine *le = check_engine(L, retry ? "retry" : "cancel", false);
  cl_job_selector sel;
  int64_t *ids, n = 0;
  size_t count;
  cl_error err;
  cl_status st;
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  memset(&sel, 0, sizeof sel);
  if (!check_keys(L, 2, retry ? retry_keys : cancel_keys, &err) ||
      !opt_ids(L, 2, &ids, &count, &err) ||
      !opt_string(L, 2, "envelope_id", &sel.envelope_id, &err) ||
      !opt_string(L, 2, "actor", &sel.actor, &err) ||
      (retry && !opt_flag(L, 2, "all_discarded", &sel.all_discarded, &err)))
    return glue_push_failure(L, CL_INVALID_ARGUMENT, &err);
  sel.ids = ids;
  sel.count = count;
  le->audit_ref = LUA_NOREF;
  st = retry ? cl_retry(le->eng, &sel, &n, &err) : cl_cancel(le->eng, &sel, &n, &err);
  drop_audit(L, le); /* the auditor's answer is its own record here */
  if (st != CL_OK) return glue_push_failure(L, st, &err);
  lua_createtable(L, 0, 1);
  glue_setint(L, retry ? "retried" : "cancelled", n);
  return 1;
}

/* engine:retry{ ids = {...} | envelope_id = | all_discarded = true [, actor =] }
 *   -> { retried = n } | nil, code, msg; raises if opts is not a table */
static int engine_retry(lua_State *L) { return change_jobs(L, true); }

/* engine:cancel{ ids = {...} | envelope_id = [, actor =] }
 *   -> { cancelled = n } | nil, code, msg; raises if opts is not a table */
static int engine_cancel(lua_State *L) { return change_jobs(L, false); }

static int set_paused(lua_State *L, bool paused) {
  static const char *const allowed[] = {"actor", NULL};
  lengine *le = check_engine(L, paused ? "pause" : "resume", false);
  const char *actor = NULL;
  cl_error err;
  cl_status st;
  lua_settop(L, 2);
  if (opt_table(L, 2) &&
      (!check_keys(L, 2, allowed, &err) || !opt_string(L, 2, "actor", &actor, &err)))
    return glue_push_failure(L, CL_INVALID_ARGUMENT, &err);
  le->audit_ref = LUA_NOREF;
  st = paused ? cl_pause(le->eng, actor, &err) : cl_resume(le->eng, actor, &err);
  drop_audit(L, le);
  if (st != CL_OK) return glue_push_failure(L, st, &err);
  lua_pushboolean(L, 1);
  return 1;
}

/* engine:pause([{ actor = }]) -> true | nil, code, msg */
static int engine_pause(lua_State *L) { return set_paused(L, true); }

/* engine:resume([{ actor = }]) -> true | nil, code, msg */
static int engine_resume(lua_State *L) { return set_paused(L, false); }

/* engine:prune([{ older_than_seconds = }]) -> { deleted = n } | nil, code, msg;
 * without older_than_seconds, the engine's retention periods apply */
static int engine_prune(lua_State *L) {
  static const char *const allowed[] = {"older_than_seconds", NULL};
  lengine *le = check_engine(L, "prune", false);
  int64_t older = -1, deleted = 0;
  cl_error err;
  cl_status st;
  lua_settop(L, 2);
  if (opt_table(L, 2) &&
      (!check_keys(L, 2, allowed, &err) ||
       !opt_int(L, 2, "older_than_seconds", 0, INT64_MAX / 1000000, &older, &err)))
    return glue_push_failure(L, CL_INVALID_ARGUMENT, &err);
  st = cl_prune(le->eng, older, &deleted, &err);
  if (st != CL_OK) return glue_push_failure(L, st, &err);
  lua_createtable(L, 0, 1);
  glue_setint(L, "deleted", deleted);
  return 1;
}

/* cairnloop.open_async: the asynchronous engine, on the helpers above. */
#include "lua_async.inc"

/* ------------------------------------------------------------------ */
/* The module                                                           */
/* ------------------------------------------------------------------ */

CL_LUA_EXPORT int luaopen_cairnloop(lua_State *L);

CL_LUA_EXPORT int luaopen_cairnloop(lua_State *L) {
  static const luaL_Reg methods[] = {{"migrate", engine_migrate},
                                     {"configure", engine_configure},
                                     {"max_batch_size", engine_max_batch_size},
                                     {"query", engine_query},
                                     {"trigger", engine_trigger},
                                     {"bulk_trigger", engine_bulk_trigger},
                                     {"envelope", engine_envelope},
                                     {"envelopes", engine_envelopes},
                                     {"audit_events", engine_audit_events},
                                     {"work", engine_work},
                                     {"auditor", engine_auditor},
                                     {"actor_resolver", engine_actor_resolver},
                                     {"notifier", engine_notifier},
                                     {"attach", engine_attach},
                                     {"attach_many", engine_attach_many},
                                     {"detach", engine_detach},
                                     {"close", engine_close},
                                     {"jobs", engine_jobs},
                                     {"stats", engine_stats},
                                     {"retry", engine_retry},
                                     {"cancel", engine_cancel},
                                     {"pause", engine_pause},
                                     {"resume", engine_resume},
                                     {"prune", engine_prune},
                                     {NULL, NULL}};
  static const luaL_Reg metamethods[] = {
      {"__gc", engine_gc}, {"__close", engine_gc}, {"__tostring", engine_tostring}, {NULL, NULL}};
  static const luaL_Reg module[] = {
      {"open", engine_open}, {"open_async", async_open}, {NULL, NULL}};

#if CL_LUAJIT
  /* ABI guard: this build needs LuaJIT's symbols; loaded into Lua 5.4 it
   * fails to link instead of working by accident. */
  void *volatile guard = (void *)&luaJIT_setmode;
  (void)guard;
#endif
  if (luaL_newmetatable(L, ENGINE_MT)) {
    luaL_setfuncs(L, metamethods, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, ENGINE_MT);
    lua_setfield(L, -2, "__name");
  }
  lua_pop(L, 1);
  async_register(L);
  glue_register(L);
  compat_rawgetp(L, LUA_REGISTRYINDEX, &armed_key);
  if (lua_isnil(L, -1)) { /* first load in this state; never reset a live one */
    lua_pushboolean(L, 0);
    compat_rawsetp(L, LUA_REGISTRYINDEX, &armed_key);
  }
  lua_pop(L, 1);

  luaL_newlib(L, module);
  lua_pushliteral(L, CL_VERSION);
  lua_setfield(L, -2, "VERSION");
  glue_push_events(L);
  lua_setfield(L, -2, "EVENTS");
  return 1;
}
