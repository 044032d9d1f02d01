/*
 * policy.c - the engine's own Lua 5.4 state: policy scripts and their hooks.
 *
 * Creates the state on the first cl_load_policy(), sandboxed before any
 * script runs, and registers `cairnloop` in it as the hook registration API.
 * Every call into the state (loading a file, every hook) goes through one
 * choke point, policy_call(), under an instruction budget, a deadline and a
 * memory cap.  Uses lua_glue.h for the hook frames and the engine's hook,
 * telemetry and log functions.
 */
#include "policy.h"
#include "lua_glue.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/*
 * One registration a script made (auditor, resolver, notifier, telemetry
 * handler).  The engine owns it from cl_set_*()/cl_attach*() on and gives
 * it back through phook_release().  If the state is freed first, the record
 * is orphaned (p = NULL): its refs died with the state, and a call through
 * it fails instead of touching freed memory.
 */
struct phook {
  struct cl__policy *p;
  struct phook **pprev, *next; /* p->hooks list; pprev NULL when unlinked */
  int fn_ref;                  /* registry refs, released by phook_release() */
  int aux_ref;                 /* list_events, or the handler's config */
  const char *id;              /* telemetry handler id: points into label */
  char label[];                /* "handler <id>", names it in messages */
};

struct cl__policy {
  lua_State *L;
  cl_engine *eng;
  size_t mem_used;  /* bytes the state holds now */
  size_t mem_limit; /* the allocator refuses growth past this */
  glue_budget budget;
  bool armed;   /* the count hook counts only during a call */
  bool running; /* a call is in progress: the state is not re-entrant */
  bool loading; /* a policy file is loading: new globals are allowed */
  char *lua_path;
  struct phook *hooks;
  char warn[CL_ERROR_MESSAGE_MAX]; /* pieces of a warning being assembled */
  size_t warn_len;
};

static const char *const level_names[] = {"debug", "info", "warn", "error", NULL};

/*
 * The allocator's ud is the policy, so the count hook and the C functions
 * without an upvalue find it through lua_getallocf: no stack, no registry
 * lookup, nothing that can fail.
 */
static struct cl__policy *policy_of(lua_State *L) {
  void *ud = NULL;
  lua_getallocf(L, &ud);
  return (struct cl__policy *)ud;
}

/* ------------------------------------------------------------------ */
/* Bounds: memory, instructions, time                                   */
/* ------------------------------------------------------------------ */

/* Counts every byte of the state and refuses growth past the cap; Lua then
 * collects garbage, retries, and raises LUA_ERRMEM if still too much.
 * Shrinking never fails, as Lua requires. */
static void *policy_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  struct cl__policy *p = (struct cl__policy *)ud;
  void *np;
  if (ptr == NULL) osize = 0; /* osize is then a type tag */
  if (nsize == 0) {
    free(ptr);
    p->mem_used -= osize;
    return NULL;
  }
  if (nsize > osize && nsize - osize > p->mem_limit - p->mem_used) return NULL;
  if ((np = realloc(ptr, nsize)) == NULL) return NULL;
  p->mem_used = p->mem_used - osize + nsize;
  return np;
}

/*
 * The count hook, set right after lua_newstate and never removed: every
 * coroutine inherits it, including ones a script stashed while loading.
 * It counts only while a call is armed.  Once the budget is spent it
 * re-arms itself to fire on every instruction and raises each time, so a
 * script's own pcall cannot swallow it for long: the first instruction after
 * the pcall raises again.  Back within budget it returns to the normal
 * interval in that thread.
 */
static void count_hook(lua_State *L, lua_Debug *ar) {
  struct cl__policy *p = policy_of(L);
  (void)ar;
  if (!p->armed || glue_budget_tick(&p->budget, lua_gethookcount(L)) == GLUE_WITHIN) {
    if (lua_gethookcount(L) != GLUE_HOOK_EVERY)
      lua_sethook(L, count_hook, LUA_MASKCOUNT, GLUE_HOOK_EVERY);
    return;
  }
  lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
  luaL_error(L, "%s", glue_budget_what(&p->budget));
}

/*
 * The choke point: every call into the state.  Runs `frame` under lua_pcall
 * with the traceback handler and the budget armed, and maps the
 * outcome: a raise, a memory error or a spent budget is CL_HOOK_ERROR with
 * a one-line message naming the hook (the traceback goes to the log);
 * otherwise the frame's verdict in c->status.  The stack is restored on
 * every path.  Hook calls (`is_hook`) set in_hook; loading a file does not,
 * since that is when a script registers its hooks.
 */
static cl_status policy_call(struct cl__policy *p, lua_CFunction frame, glue_call *c,
                             bool is_hook) {
  lua_State *L = p->L;
  cl_engine *eng = p->eng;
  bool was_in_hook = eng->in_hook;
  int base, rc;

  if (p->running)
    return cl__fail(c->err, CL_HOOK_ERROR, "%s: called while another policy hook runs", c->hook);
  if (!lua_checkstack(L, 3))
    return cl__fail(c->err, CL_HOOK_ERROR, "%s: Lua stack exhausted", c->hook);
  base = lua_gettop(L);
  lua_pushcfunction(L, glue_msghandler);
  lua_pushcfunction(L, frame);
  lua_pushlightuserdata(L, c);
  c->status = CL_OK;
  glue_budget_arm(&p->budget, eng->hook_instruction_limit, eng->hook_time_limit_ms);
  p->armed = p->running = true;
  if (is_hook) eng->in_hook = true;
  rc = lua_pcall(L, 1, 0, base + 1);
  eng->in_hook = was_in_hook;
  p->armed = p->running = false;
  if (rc != LUA_OK) {
    glue_call_failed(L, eng, rc, &p->budget, p->mem_limit, c);
    c->status = CL_HOOK_ERROR;
  } else if (p->budget.exceeded != GLUE_WITHIN) {
    /* Spent on the very last instructions: still over budget. */
    glue_budget_fail(&p->budget, c->hook, c->err);
    c->status = CL_HOOK_ERROR;
  }
  lua_settop(L, base);
  return c->status;
}

/* ------------------------------------------------------------------ */
/* Hook records                                                         */
/* ------------------------------------------------------------------ */

/* Releases a record: its refs (if the state still exists) and its memory.
 * The engine calls it when the hook is replaced, detached or closed. */
static void phook_release(void *ud) {
  struct phook *h = (struct phook *)ud;
  if (h->pprev) {
    *h->pprev = h->next;
    if (h->next) h->next->pprev = h->pprev;
  }
  if (h->p) {
    luaL_unref(h->p->L, LUA_REGISTRYINDEX, h->fn_ref);
    luaL_unref(h->p->L, LUA_REGISTRYINDEX, h->aux_ref);
  }
  free(h);
}

/* Box drop for a record not yet handed to the engine. */
static void phook_drop(void *ud) { phook_release(ud); }

/*
 * Makes a record for the function at `fn` and the value at `aux` (0: none)
 * with the telemetry id `id` (may be NULL).  Raises on memory; a record
 * half made is released by its box.  The caller hands the result to the
 * engine, or releases it with phook_release, without raising in between.
 */
static struct phook *phook_new(lua_State *L, struct cl__policy *p, int fn, int aux,
                               const char *id) {
  size_t idlen = id ? strlen(id) : 0;
  glue_box *box = glue_newbox(L, 0);
  struct phook *h = (struct phook *)calloc(1, sizeof *h + sizeof "handler " + idlen);
  if (h == NULL) luaL_error(L, "not enough memory");
  h->p = p;
  h->fn_ref = h->aux_ref = LUA_NOREF;
  memcpy(h->label, "handler ", sizeof "handler " - 1);
  h->id = h->label + sizeof "handler " - 1;
  if (id) memcpy(h->label + sizeof "handler " - 1, id, idlen + 1);
  box->p = h;
  box->drop = phook_drop;
  lua_pushvalue(L, fn);
  h->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (aux) {
    lua_pushvalue(L, aux);
    h->aux_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* LUA_REFNIL for nil */
  }
  box->drop = NULL; /* the caller owns it now */
  lua_pop(L, 1);    /* box */
  return h;
}

static void phook_link(struct cl__policy *p, struct phook *h) {
  h->next = p->hooks;
  if (p->hooks) p->hooks->pprev = &h->next;
  p->hooks = h;
  h->pprev = &p->hooks;
}

/* A call through a record whose state is gone. */
static cl_status orphaned(const char *hook, cl_error *err) {
  return cl__fail(err, CL_HOOK_ERROR, "%s: the policy state is closed", hook);
}

/* ------------------------------------------------------------------ */
/* The hooks as the engine sees them                                    */
/* ------------------------------------------------------------------ */

static cl_status policy_audit(void *ud, cl_tx *tx, const char *action, const char *actor,
                              const cl_metadata *metadata, char **audit_json, cl_error *err) {
  struct phook *h = (struct phook *)ud;
  cl_error local;
  glue_call c;
  cl_status st;
  *audit_json = NULL;
  memset(&c, 0, sizeof c);
  c.hook = "auditor.audit";
  c.err = err ? err : &local;
  if (!h->p) return orphaned(c.hook, c.err);
  c.fn_ref = h->fn_ref;
  c.tx = tx;
  c.action = action;
  c.actor = actor;
  c.metadata = metadata;
  c.json_out = audit_json;
  st = policy_call(h->p, glue_audit_frame, &c, true);
  glue_end_tx(&c.txslot);
  if (st != CL_OK) {
    free(*audit_json);
    *audit_json = NULL;
  }
  return st;
}

static cl_status policy_list_events(void *ud, const char *opts_json, char **events_json,
                                    cl_error *err) {
  struct phook *h = (struct phook *)ud;
  cl_error local;
  glue_call c;
  cl_status st;
  *events_json = NULL;
  memset(&c, 0, sizeof c);
  c.hook = "auditor.list_events";
  c.err = err ? err : &local;
  if (!h->p) return orphaned(c.hook, c.err);
  c.fn_ref = h->aux_ref;
  c.opts_json = opts_json;
  c.json_out = events_json;
  c.tx = glue_list_tx_begin(h->p->eng);
  st = policy_call(h->p, glue_list_frame, &c, true);
  glue_end_tx(&c.txslot);
  glue_list_tx_end(h->p->eng);
  if (st != CL_OK) {
    free(*events_json);
    *events_json = NULL;
  }
  return st;
}

static cl_status policy_resolve(void *ud, const char *actor, const char *action, char **resolved,
                                cl_error *err) {
  struct phook *h = (struct phook *)ud;
  cl_error local;
  glue_call c;
  cl_status st;
  *resolved = NULL;
  memset(&c, 0, sizeof c);
  c.hook = "actor_resolver";
  c.err = err ? err : &local;
  if (!h->p) return orphaned(c.hook, c.err);
  c.fn_ref = h->fn_ref;
  c.actor = actor;
  c.action = action;
  c.str_out = resolved;
  st = policy_call(h->p, glue_resolve_frame, &c, true);
  if (st != CL_OK) {
    free(*resolved);
    *resolved = NULL;
  }
  return st;
}

static cl_status policy_deliver(void *ud, const cl_message *message,
                                const cl_conversation *conversation, const char *idempotency_key,
                                int attempt, cl_error *err) {
  struct phook *h = (struct phook *)ud;
  cl_error local;
  glue_call c;
  memset(&c, 0, sizeof c);
  c.hook = "notifier";
  c.err = err ? err : &local;
  if (!h->p) return orphaned(c.hook, c.err);
  c.fn_ref = h->fn_ref;
  c.message = message;
  c.conversation = conversation;
  c.idempotency_key = idempotency_key;
  c.attempt = attempt;
  return policy_call(h->p, glue_deliver_frame, &c, true);
}

/*
 * A telemetry handler.  One that raises (or runs past its budget) is
 * logged and detached, and the operation goes on, as :telemetry does.  The
 * engine frees detached handlers only after the emit, so h stays valid here.
 */
static void policy_handler(const char *const *event, const cl_measurements *measurements,
                           const cl_metadata *metadata, void *config) {
  struct phook *h = (struct phook *)config;
  cl_error err;
  glue_call c;
  if (!h->p) return;
  if (h->p->running) {
    /* Emitted from inside another policy hook: skipped, not the handler's fault. */
    cl_log(h->p->eng, CL_LOG_WARN, "handler %s skipped: emitted while a policy hook runs", h->id);
    return;
  }
  memset(&c, 0, sizeof c);
  c.hook = h->label;
  c.err = &err;
  c.fn_ref = h->fn_ref;
  c.cfg_ref = h->aux_ref;
  c.event = event;
  c.measurements = measurements;
  c.metadata = metadata;
  if (policy_call(h->p, glue_handler_frame, &c, true) != CL_OK) {
    cl_log(h->p->eng, CL_LOG_ERROR, "handler %s detached after an error", h->id);
    cl_detach(h->p->eng, h->id);
  }
}

/* ------------------------------------------------------------------ */
/* The registration API: require "cairnloop" in the policy state         */
/* ------------------------------------------------------------------ */

/* Raises "<fn>: <why>" for a refused registration (misuse, e.g. from a hook). */
static int refused(lua_State *L, const char *fn, const cl_error *err) {
  return luaL_error(L, "%s: %s", fn, err->message);
}

/* cl.auditor{ audit = fn [, list_events = fn] } | cl.auditor(nil) -> true; raises on misuse */
static int policy_auditor(lua_State *L) {
  struct cl__policy *p = (struct cl__policy *)lua_touserdata(L, lua_upvalueindex(1));
  cl_auditor a;
  cl_error err;
  struct phook *h;
  if (lua_isnoneornil(L, 1)) {
    if (cl_set_auditor(p->eng, NULL, &err) != CL_OK) return refused(L, "cl.auditor", &err);
    lua_pushboolean(L, 1);
    return 1;
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_getfield(L, 1, "audit");       /* 2 */
  lua_getfield(L, 1, "list_events"); /* 3 */
  if (lua_type(L, 2) != LUA_TFUNCTION) return luaL_error(L, "cl.auditor: audit must be a function");
  if (!lua_isnil(L, 3) && lua_type(L, 3) != LUA_TFUNCTION)
    return luaL_error(L, "cl.auditor: list_events must be a function or nil");
  h = phook_new(L, p, 2, lua_isnil(L, 3) ? 0 : 3, NULL);
  a.audit = policy_audit;
  a.list_events = lua_isnil(L, 3) ? NULL : policy_list_events;
  a.release = phook_release;
  a.ud = h;
  if (cl_set_auditor(p->eng, &a, &err) != CL_OK) {
    phook_release(h);
    return refused(L, "cl.auditor", &err);
  }
  phook_link(p, h);
  lua_pushboolean(L, 1);
  return 1;
}

/* cl.actor_resolver(fn | nil) -> true; raises on misuse */
static int policy_actor_resolver(lua_State *L) {
  struct cl__policy *p = (struct cl__policy *)lua_touserdata(L, lua_upvalueindex(1));
  cl_actor_resolver r;
  cl_error err;
  struct phook *h;
  if (lua_isnoneornil(L, 1)) {
    if (cl_set_actor_resolver(p->eng, NULL, &err) != CL_OK)
      return refused(L, "cl.actor_resolver", &err);
    lua_pushboolean(L, 1);
    return 1;
  }
  luaL_checktype(L, 1, LUA_TFUNCTION);
  h = phook_new(L, p, 1, 0, NULL);
  r.resolve = policy_resolve;
  r.release = phook_release;
  r.ud = h;
  if (cl_set_actor_resolver(p->eng, &r, &err) != CL_OK) {
    phook_release(h);
    return refused(L, "cl.actor_resolver", &err);
  }
  phook_link(p, h);
  lua_pushboolean(L, 1);
  return 1;
}

/* cl.notifier(fn | nil) -> true; raises on misuse */
static int policy_notifier(lua_State *L) {
  struct cl__policy *p = (struct cl__policy *)lua_touserdata(L, lua_upvalueindex(1));
  cl_notifier n;
  cl_error err;
  struct phook *h;
  if (lua_isnoneornil(L, 1)) {
    if (cl_set_notifier(p->eng, NULL, &err) != CL_OK) return refused(L, "cl.notifier", &err);
    lua_pushboolean(L, 1);
    return 1;
  }
  luaL_checktype(L, 1, LUA_TFUNCTION);
  h = phook_new(L, p, 1, 0, NULL);
  n.deliver = policy_deliver;
  n.release = phook_release;
  n.ud = h;
  if (cl_set_notifier(p->eng, &n, &err) != CL_OK) {
    phook_release(h);
    return refused(L, "cl.notifier", &err);
  }
  phook_link(p, h);
  lua_pushboolean(L, 1);
  return 1;
}

static int attach_common(lua_State *L, int many) {
  struct cl__policy *p = (struct cl__policy *)lua_touserdata(L, lua_upvalueindex(1));
  const char *id, **names;
  size_t count;
  char why[128];
  cl_error err;
  cl_status st;
  struct phook *h;
  lua_settop(L, 4);
  if (!glue_attach_args(L, 1, many, &id, &names, &count, why, sizeof why)) {
    cl__fail(&err, CL_INVALID_ARGUMENT, "%s", why);
    return glue_push_failure(L, CL_INVALID_ARGUMENT, &err);
  }
  h = phook_new(L, p, 3, 4, id);
  st = cl_attach_many(p->eng, id, names, count, policy_handler, h, phook_release, &err);
  if (st != CL_OK) {
    phook_release(h); /* the engine keeps nothing on failure */
    return glue_push_failure(L, st, &err);
  }
  phook_link(p, h);
  lua_pushboolean(L, 1);
  return 1;
}

/* cl.attach(handler_id, event_name, fn [, config]) -> true | nil, code, msg; raises if fn is not a function */
static int policy_attach(lua_State *L) { return attach_common(L, 0); }

/* cl.attach_many(handler_id, { event_name, ... }, fn [, config]) -> true | nil, code, msg */
static int policy_attach_many(lua_State *L) { return attach_common(L, 1); }

/* cl.detach(handler_id) -> boolean; allowed inside a handler, also on itself */
static int policy_detach(lua_State *L) {
  struct cl__policy *p = (struct cl__policy *)lua_touserdata(L, lua_upvalueindex(1));
  const char *id = glue_checked_id(L, 1);
  lua_pushboolean(L, id && cl_detach(p->eng, id));
  return 1;
}

/* Logs `text` through the engine, one log line per line of text. */
static void log_text(cl_engine *eng, cl_log_level level, const char *text, size_t len) {
  while (len > 0) {
    const char *nl = (const char *)memchr(text, '\n', len);
    size_t n = nl ? (size_t)(nl - text) : len;
    char line[CL_ERROR_MESSAGE_MAX * 2];
    glue_one_line(line, sizeof line, text, n);
    cl_log(eng, level, "policy: %s", line);
    if (!nl) break;
    len -= n + 1;
    text = nl + 1;
  }
}

/* cl.log(level, message); level "debug" | "info" | "warn" | "error"; raises on misuse */
static int policy_log(lua_State *L) {
  struct cl__policy *p = (struct cl__policy *)lua_touserdata(L, lua_upvalueindex(1));
  int level = luaL_checkoption(L, 1, NULL, level_names);
  size_t len;
  const char *msg = luaL_checklstring(L, 2, &len);
  log_text(p->eng, (cl_log_level)level, msg, len);
  return 0;
}

static int open_policy_api(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"auditor", policy_auditor},         {"actor_resolver", policy_actor_resolver},
      {"notifier", policy_notifier},       {"attach", policy_attach},
      {"attach_many", policy_attach_many}, {"detach", policy_detach},
      {"log", policy_log},                 {NULL, NULL}};
  struct cl__policy *p = policy_of(L);
  luaL_newlibtable(L, fns);
  lua_pushlightuserdata(L, p);
  luaL_setfuncs(L, fns, 1);
  lua_pushstring(L, cl_schema(p->eng));
  lua_setfield(L, -2, "schema");
  lua_pushliteral(L, CL_VERSION);
  lua_setfield(L, -2, "VERSION");
  return 1;
}

/* ------------------------------------------------------------------ */
/* The sandbox                                                          */
/* ------------------------------------------------------------------ */

/* print(...): to the engine's log at info level, never to stdout. */
static int policy_print(lua_State *L) {
  int i, n = lua_gettop(L);
  size_t len;
  const char *s;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (i = 1; i <= n; i++) {
    if (i > 1) luaL_addchar(&b, '\t');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  s = lua_tolstring(L, -1, &len);
  log_text(policy_of(L)->eng, CL_LOG_INFO, s, len);
  return 0;
}

/* The warn() sink: assembles the pieces and logs them as one warning.
 * Control messages ("@on", "@off") are ignored: warnings always log. */
static void policy_warn(void *ud, const char *msg, int tocont) {
  struct cl__policy *p = (struct cl__policy *)ud;
  size_t n = strlen(msg);
  if (p->warn_len == 0 && !tocont && msg[0] == '@') return;
  if (n > sizeof p->warn - 1 - p->warn_len) n = sizeof p->warn - 1 - p->warn_len;
  memcpy(p->warn + p->warn_len, msg, n);
  p->warn_len += n;
  p->warn[p->warn_len] = '\0';
  if (!tocont) {
    cl_log(p->eng, CL_LOG_WARN, "policy warning: %s", p->warn);
    p->warn_len = 0;
  }
}

/* load(chunk [, chunkname [, mode [, env]]]): text chunks only; binary
 * chunks can crash the VM.  Upvalue 1 is the original load. */
static int sandbox_load(lua_State *L) {
  int n = lua_gettop(L);
  lua_settop(L, n < 4 ? 3 : 4); /* an absent env must stay absent */
  lua_pushliteral(L, "t");
  lua_replace(L, 3);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

/* setmetatable(t, mt): refuses __gc, because finalisers run with hooks
 * disabled, outside every budget, and even inside lua_close.  Upvalue 1 is
 * the original setmetatable. */
static int sandbox_setmetatable(lua_State *L) {
  if (lua_type(L, 2) == LUA_TTABLE) {
    lua_pushliteral(L, "__gc");
    if (lua_rawget(L, 2) != LUA_TNIL)
      return luaL_error(L, "policy scripts cannot set __gc finalisers (they would run unbounded)");
    lua_pop(L, 1);
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

/* Names a global key for the strict-globals errors. */
static const char *key_name(lua_State *L, int idx) {
  return lua_type(L, idx) == LUA_TSTRING ? lua_tostring(L, idx) : luaL_typename(L, idx);
}

/* _G's __index: unknown globals read as nil while loading, and raise after. */
static int globals_index(lua_State *L) {
  if (policy_of(L)->loading) return 0;
  return luaL_error(L, "attempt to read undeclared global '%s'", key_name(L, 2));
}

/* _G's __newindex: new globals only while loading. */
static int globals_newindex(lua_State *L) {
  if (!policy_of(L)->loading)
    return luaL_error(L, "attempt to assign to undeclared global '%s'", key_name(L, 2));
  lua_rawset(L, 1);
  return 0;
}

/* Whether `path` can be opened for reading. */
static bool readable(const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL) return false;
  fclose(f);
  return true;
}

/*
 * package.searchers[2]: looks `name` up in the path fixed at creation (a
 * script changing package.path changes nothing) and loads it as text only.
 */
static int policy_searcher(lua_State *L) {
  struct cl__policy *p = policy_of(L);
  const char *name = luaL_checkstring(L, 1), *t = p->lua_path, *end, *file;
  name = luaL_gsub(L, name, ".", "/"); /* 2 */
  for (; *t; t = *end ? end + 1 : end) {
    end = strchr(t, ';');
    if (end == NULL) end = t + strlen(t);
    if (end == t) continue;
    lua_pushlstring(L, t, (size_t)(end - t));
    file = luaL_gsub(L, lua_tostring(L, -1), "?", name);
    lua_remove(L, -2); /* template */
    if (readable(file)) {
      if (luaL_loadfilex(L, file, "t") != LUA_OK)
        return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s",
                          lua_tostring(L, 1), file, lua_tostring(L, -1));
      lua_pushstring(L, file);
      return 2; /* loader, file */
    }
    lua_pop(L, 1); /* file */
  }
  lua_pushfstring(L, "no file for '%s' in the policy path '%s'", lua_tostring(L, 1), p->lua_path);
  return 1;
}

/* Appends the templates for one directory (or one template) to the path. */
static void path_add(char *out, size_t cap, const char *entry, size_t len) {
  size_t n = strlen(out);
  if (len == 0) return;
  if (memchr(entry, '?', len))
    snprintf(out + n, cap - n, "%.*s;", (int)len, entry);
  else
    snprintf(out + n, cap - n, "%.*s/?.lua;%.*s/?/init.lua;", (int)len, entry, (int)len, entry);
}

/* require's search path: CAIRNLOOP_LUA_PATH if set, else the build tree's
 * lua/ (CL_LUA_SRC_DIR, when built with it) and the installed tree. */
static char *make_lua_path(void) {
  const char *env = secure_getenv("CAIRNLOOP_LUA_PATH");
  size_t cap, n;
  char *out;
  if (env && *env) {
    /* Each entry grows to at most twice its length plus the suffixes. */
    cap = 64;
    for (n = 0; env[n]; n++) cap += env[n] == ';' ? 32 : 2;
    cap += 32;
  } else {
    cap = 2 * strlen(CL_LUA_INSTALL_DIR) + 128;
#ifdef CL_LUA_SRC_DIR
    cap += 2 * strlen(CL_LUA_SRC_DIR);
#endif
  }
  if ((out = (char *)malloc(cap)) == NULL) return NULL;
  out[0] = '\0';
  if (env && *env) {
    const char *t = env, *end;
    for (; *t; t = *end ? end + 1 : end) {
      end = strchr(t, ';');
      if (end == NULL) end = t + strlen(t);
      path_add(out, cap, t, (size_t)(end - t));
    }
  } else {
#ifdef CL_LUA_SRC_DIR
    path_add(out, cap, CL_LUA_SRC_DIR, strlen(CL_LUA_SRC_DIR));
#endif
    path_add(out, cap, CL_LUA_INSTALL_DIR, strlen(CL_LUA_INSTALL_DIR));
  }
  n = strlen(out);
  if (n > 0 && out[n - 1] == ';') out[n - 1] = '\0';
  return out;
}

/* Opens the allowed libraries and seals the state.  Runs inside policy_call. */
static int init_frame(lua_State *L) {
  static const luaL_Reg libs[] = {
      {LUA_GNAME, luaopen_base},          {LUA_LOADLIBNAME, luaopen_package},
      {LUA_COLIBNAME, luaopen_coroutine}, {LUA_TABLIBNAME, luaopen_table},
      {LUA_STRLIBNAME, luaopen_string},   {LUA_MATHLIBNAME, luaopen_math},
      {LUA_UTF8LIBNAME, luaopen_utf8},    {NULL, NULL}};
  static const char *const os_safe[] = {"clock", "date", "difftime", "time", NULL};
  struct cl__policy *p = policy_of(L);
  const luaL_Reg *lib;
  int i;

  for (lib = libs; lib->func; lib++) {
    luaL_requiref(L, lib->name, lib->func, 1);
    lua_pop(L, 1);
  }

  /* os: only the clock functions, under the usual name. */
  lua_pushcfunction(L, luaopen_os);
  lua_call(L, 0, 1); /* full os, never registered */
  lua_createtable(L, 0, 4);
  for (i = 0; os_safe[i]; i++) {
    lua_getfield(L, -2, os_safe[i]);
    lua_setfield(L, -2, os_safe[i]);
  }
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, LUA_OSLIBNAME);
  lua_pop(L, 1); /* LOADED */
  lua_setglobal(L, LUA_OSLIBNAME);
  lua_pop(L, 1); /* full os */

  /* Base: no file access, text-only load, no finalisers, print to the log. */
  lua_pushnil(L);
  lua_setglobal(L, "dofile");
  lua_pushnil(L);
  lua_setglobal(L, "loadfile");
  lua_getglobal(L, "load");
  lua_pushcclosure(L, sandbox_load, 1);
  lua_setglobal(L, "load");
  lua_getglobal(L, "setmetatable");
  lua_pushcclosure(L, sandbox_setmetatable, 1);
  lua_setglobal(L, "setmetatable");
  lua_pushcfunction(L, policy_print);
  lua_setglobal(L, "print");

  /* package: our text-only searcher over the fixed path; no C modules. */
  lua_getglobal(L, LUA_LOADLIBNAME);
  lua_pushstring(L, p->lua_path);
  lua_setfield(L, -2, "path");
  lua_pushliteral(L, "");
  lua_setfield(L, -2, "cpath");
  lua_pushnil(L);
  lua_setfield(L, -2, "loadlib");
  lua_getfield(L, -1, "searchers"); /* package searchers */
  lua_createtable(L, 2, 0);         /* package searchers new */
  lua_rawgeti(L, -2, 1);            /* the preload searcher */
  lua_rawseti(L, -2, 1);
  lua_pushcfunction(L, policy_searcher);
  lua_rawseti(L, -2, 2);
  lua_setfield(L, -3, "searchers");
  lua_pop(L, 2); /* searchers package */

  glue_register(L);
  luaL_requiref(L, "cairnloop", open_policy_api, 0);
  lua_pop(L, 1);

  /* Strict globals once loading ends (Redis does the same). */
  lua_pushglobaltable(L);
  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, globals_index);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, globals_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_setmetatable(L, -2);
  lua_pop(L, 1);
  return 0;
}

/* Lua calls this only for an error outside every protected call, which the
 * choke point rules out; say so loudly before Lua aborts. */
static int policy_panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "cairnloop: policy state panic: %s\n", msg ? msg : "(no message)");
  return 0;
}

static cl_status policy_create(cl_engine *eng, cl_error *err) {
  struct cl__policy *p = (struct cl__policy *)calloc(1, sizeof *p);
  glue_call c;
  if (p == NULL) return cl__fail(err, CL_HOOK_ERROR, "policy: out of memory");
  p->eng = eng;
  p->mem_limit = eng->hook_memory_limit;
  if ((p->lua_path = make_lua_path()) == NULL) goto fail_path;
  if ((p->L = lua_newstate(policy_alloc, p)) == NULL) goto fail_state;
  /* Before anything runs in the state, so every thread inherits it. */
  lua_sethook(p->L, count_hook, LUA_MASKCOUNT, GLUE_HOOK_EVERY);
  lua_atpanic(p->L, policy_panic);
  lua_setwarnf(p->L, policy_warn, p);
  memset(&c, 0, sizeof c);
  c.hook = "policy";
  c.err = err;
  if (policy_call(p, init_frame, &c, false) != CL_OK) {
    lua_close(p->L);
    free(p->lua_path);
    free(p);
    return CL_HOOK_ERROR;
  }
  eng->policy = p;
  return CL_OK;

fail_state:
  free(p->lua_path);
  free(p);
  return cl__fail(err, CL_HOOK_ERROR,
                  "policy: cannot create a Lua state within hook_memory_limit (%zu bytes)",
                  eng->hook_memory_limit);
fail_path:
  free(p);
  return cl__fail(err, CL_HOOK_ERROR, "policy: out of memory");
}

/* ------------------------------------------------------------------ */
/* Loading and freeing                                                  */
/* ------------------------------------------------------------------ */

struct load_call {
  glue_call c; /* first: the frame receives &c */
  const char *path;
  int load_rc; /* luaL_loadfilex's status when the file did not compile */
};

/* Compiles the file (text only) and runs it with no arguments, so a
 * ready-made module can tell a --policy load (`...` is nil) from require. */
static int load_frame(lua_State *L) {
  struct load_call *lc = (struct load_call *)lua_touserdata(L, 1);
  int rc = luaL_loadfilex(L, lc->path, "t");
  if (rc != LUA_OK) {
    lc->load_rc = rc;
    return lua_error(L);
  }
  lua_call(L, 0, 0);
  return 0;
}

cl_status cl_load_policy(cl_engine *eng, const char *path, cl_error *err) {
  struct load_call lc;
  cl_error local;
  cl_status st;
  if (err == NULL) err = &local;
  if (eng == NULL || path == NULL || *path == '\0')
    return cl__fail(err, CL_INVALID_ARGUMENT, "policy: a file path is required");
  if (eng->in_hook)
    return cl__fail(err, CL_INVALID_ARGUMENT, "policy: cannot load a policy from inside a hook");
  if (eng->policy == NULL && (st = policy_create(eng, err)) != CL_OK) return st;
  memset(&lc, 0, sizeof lc);
  lc.c.hook = "policy";
  lc.c.err = err;
  lc.path = path;
  eng->policy->loading = true;
  st = policy_call(eng->policy, load_frame, &lc.c, false);
  eng->policy->loading = false;
  /* A file that cannot be read or compiled is a bad argument; one that
   * raises while running is a hook error.  Hooks it registered before
   * raising stay registered: cairnloop.open closes the engine then. */
  if (st != CL_OK && (lc.load_rc == LUA_ERRFILE || lc.load_rc == LUA_ERRSYNTAX))
    err->code = st = CL_INVALID_ARGUMENT;
  if (st == CL_OK) cl__ok(err);
  return st;
}

void cl__policy_free(struct cl__policy *p) {
  struct phook *h;
  if (p == NULL) return;
  /* Records the engine still holds lose their state: their refs go with it. */
  for (h = p->hooks; h; h = h->next) {
    h->p = NULL;
    h->pprev = NULL;
  }
  lua_close(p->L);
  free(p->lua_path);
  free(p);
}
