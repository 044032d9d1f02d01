/*
 * policy.c - the engine's own Lua 5.4 state: policy scripts and their hooks.
 *
 * Creates the state on the first cl_load_policy(), sandboxed before any
 * script runs, and registers `cairnloop` in it as the hook registration API.
 * Every call into the state (loading a file, every hook) goes through one
 * call point, policy_call(), under an instruction budget, a deadline and a
 * memory cap.  The hook adapters and the registration functions are the
 * glue's (lua_glue.inc, compiled here for Lua 5.4); this file keeps the
 * call point, the sandbox and loading.  The library functions that loop in
 * C, where no count hook fires, are replaced by bounded ones
 * (lua_bounded.c) that report to this file's budget.  Uses the engine's
 * hook, telemetry and log functions.
 */
#include "policy.h"
#include "lua_bounded.h"
#include "lua_glue.inc"

#include "crypto.h"
#include "hooks.h"
#include "http.h"

#include <dlfcn.h>
#include <limits.h>
#include <link.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct cl__policy {
  glue_side side; /* first: the glue's view of this state */
  lua_State *L;
  cl_engine *eng;
  size_t mem_used;  /* bytes the state holds now */
  size_t mem_limit; /* the allocator refuses growth past this */
  cl__budget budget;
  bool armed;   /* the count hook counts only during a call */
  bool running; /* a call is in progress: the state is not re-entrant */
  bool loading; /* a policy file is loading: new globals are allowed */
  char *lua_path;
  struct pdelivery *current;       /* the delivery whose coroutine runs now */
  char warn[CL_ERROR_MESSAGE_MAX]; /* pieces of a warning being assembled */
  size_t warn_len;
};

/* cl.log's level names, NULL-terminated for luaL_checkoption: the index
 * it returns is the cl_log_level. */
static const char *const level_options[] = {
#define XX(name, str) str,
    CL_LOG_LEVEL_MAP(XX)
#undef XX
        NULL};

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
 * It counts only while a call is armed (glue_count does the counting and
 * the raising).
 */
static void count_hook(lua_State *L, lua_Debug *ar) {
  struct cl__policy *p = policy_of(L);
  (void)ar;
  glue_count(L, count_hook, p->armed ? &p->budget : NULL);
}

/*
 * cl__bounds.check, for the loops in C of the bounded library functions
 * (lua_bounded.c), which the count hook never interrupts: once the
 * deadline has passed (or the budget was spent), raise as the count hook
 * would, and re-arm the hook to fire on the next instruction so that a
 * script's pcall cannot swallow the error for long.
 */
static void bounds_check(lua_State *L) {
  struct cl__policy *p = policy_of(L);
  if (!p->armed || cl__budget_clock(&p->budget) == CL__BUDGET_WITHIN) return;
  lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
  luaL_error(L, "%s", cl__budget_what(&p->budget));
}

/* cl__bounds.spent: xpcall skips a script's message handler then. */
static int bounds_spent(lua_State *L) {
  struct cl__policy *p = policy_of(L);
  return p->armed && p->budget.exceeded != CL__BUDGET_WITHIN;
}

static const cl__bounds policy_bounds = {bounds_check, bounds_spent};

/*
 * The call point: every call into the state.  Runs `frame` under lua_pcall
 * with the traceback handler and the budget armed, and maps the outcome
 * (glue_call_end).  The state is not re-entrant: a call while another runs
 * is refused with c->busy set.  Hook calls (`is_hook`) set in_hook;
 * loading a file does not, since that is when a script registers its hooks.
 */
static cl_status policy_call(struct cl__policy *p, lua_CFunction frame, glue_call *c,
                             bool is_hook) {
  lua_State *L = p->L;
  cl_engine *eng = p->eng;
  bool was_in_hook = eng->in_hook;
  int base, rc;

  if (p->running) {
    c->busy = 1;
    return cl__fail(c->err, CL_HOOK_ERROR, "%s: called while another policy hook runs", c->hook);
  }
  if (!lua_checkstack(L, 3))
    return cl__fail(c->err, CL_HOOK_ERROR, "%s: Lua stack exhausted", c->hook);
  base = glue_call_begin(L, frame, c);
  cl__budget_arm(&p->budget, eng->hook_instruction_limit, eng->hook_time_limit_ms);
  p->armed = p->running = true;
  if (is_hook) eng->in_hook = true;
  rc = lua_pcall(L, 1, 0, base + 1);
  eng->in_hook = was_in_hook;
  p->armed = p->running = false;
  return glue_call_end(L, eng, base, rc, &p->budget, p->mem_limit, c);
}

/* glue_side.call: how the glue's adapters run a hook here. */
static cl_status policy_hook_call(glue_side *side, lua_CFunction frame, glue_call *c) {
  return policy_call((struct cl__policy *)side, frame, c, true);
}

/* glue_side.state */
static lua_State *policy_state(glue_side *side) { return ((struct cl__policy *)side)->L; }

/* ------------------------------------------------------------------ */
/* The notifier: one coroutine per delivery                             */
/* ------------------------------------------------------------------ */

/*
 * The policy's notifier is an asynchronous one (cl_async_notifier): each
 * delivery runs in a coroutine of this state, which cl.http.request
 * suspends while its request is in flight, so one worker keeps many
 * deliveries going.  The engine's poll drives the HTTP client; a finished
 * request resumes its coroutine from there.  A delivery's instruction and
 * time budget is its own and runs only while its coroutine does: the time
 * spent waiting for the network is not charged.
 */
struct pdelivery {
  glue_call c; /* first: the setup frame's call */
  struct cl__policy *p;
  cl_delivery *d;
  lua_State *co;
  int co_ref;
  cl__budget budget;
  int64_t waited_from_ns; /* 0: not waiting */
  bool waiting;           /* suspended in cl.http.request */
  /* The response being handed to the coroutine (during that resume only). */
  const cl__http_response *res;
  cl_delivery_result result;
  char message[CL_ERROR_MESSAGE_MAX];
};

/* Makes the coroutine with the notifier and its three arguments on it. */
static int pd_setup_frame(lua_State *L) {
  struct pdelivery *pd = (struct pdelivery *)lua_touserdata(L, 1);
  lua_State *co = lua_newthread(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, pd->c.fn_ref);
  glue_push_message(L, pd->c.message);
  glue_push_conversation(L, pd->c.conversation);
  lua_createtable(L, 0, 2);
  glue_setstr(L, "idempotency_key", pd->c.idempotency_key);
  glue_setint(L, "attempt", pd->c.attempt);
  if (!lua_checkstack(co, 4 + LUA_MINSTACK)) return luaL_error(L, "not enough memory");
  lua_xmove(L, co, 4);
  pd->co = co;
  pd->co_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* the thread */
  return 0;
}

/* The delivery's result from what its coroutine ended with: values 3..
 * are its return values (LUA_OK) or its error object.  Runs unarmed,
 * calls no script code. */
static int pd_verdict_frame(lua_State *L) {
  struct pdelivery *pd = (struct pdelivery *)lua_touserdata(L, 1);
  int rc = (int)lua_tointeger(L, 2), n = lua_gettop(L) - 2;
  cl_delivery_result *r = &pd->result;
  char what[CL_ERROR_MESSAGE_MAX - 16];
  r->message = pd->message;
  if (rc == LUA_YIELD) {
    snprintf(pd->message, sizeof pd->message,
             "notifier: yielded outside cl.http.request (a coroutine.yield of its own)");
    cl_log(pd->p->eng, CL_LOG_ERROR, "%s", pd->message);
    return 0;
  }
  if (rc != LUA_OK) {
    const char *msg = lua_type(L, 3) == LUA_TSTRING ? lua_tostring(L, 3) : NULL;
    if (msg == NULL) {
      glue_describe(L, 3, what, sizeof what);
      msg = what;
    }
    cl_error e;
    if (rc != LUA_ERRMEM) msg = (luaL_traceback(L, pd->co, msg, 0), lua_tostring(L, -1));
    cl__hook_failed(pd->p->eng, "notifier", msg, rc == LUA_ERRMEM, &pd->budget, pd->p->mem_limit,
                    &e);
    snprintf(pd->message, sizeof pd->message, "%s", e.message);
    return 0;
  }
  if (pd->budget.exceeded != CL__BUDGET_WITHIN) {
    cl_error e;
    cl__budget_fail(&pd->budget, "notifier", &e);
    snprintf(pd->message, sizeof pd->message, "%s", e.message);
    return 0;
  }
  if (n >= 1 && lua_toboolean(L, 3)) {
    r->verdict = CL_DELIVERY_SENT;
    return 0;
  }
  if (n >= 2 && !lua_isnil(L, 4)) {
    glue_describe(L, 4, what, sizeof what);
    snprintf(pd->message, sizeof pd->message, "notifier: %s", what);
  } else {
    snprintf(pd->message, sizeof pd->message, "notifier: returned %s",
             n >= 1 && !lua_isnil(L, 3) ? "false" : "nil");
  }
  if (n < 3 || lua_type(L, 5) != LUA_TTABLE) return 0;
  /* opts: raw reads, so no metamethod of the script runs here. */
  lua_pushliteral(L, "reason");
  if (lua_rawget(L, 5) == LUA_TSTRING) {
    const char *name = lua_tostring(L, -1);
    int i = 0;
#define XX(id, str) \
  if (strcmp(name, str) == 0) r->reason = CL_REASON_##id, i = 1;
    CL_DELIVERY_REASON_MAP(XX)
#undef XX
    if (!i)
      cl_log(pd->p->eng, CL_LOG_WARN,
             "notifier: reason \"%.64s\" is not one of the delivery reasons: "
             "notifier_returned_error recorded",
             name);
  }
  lua_pushliteral(L, "retry_after");
  if (lua_rawget(L, 5) == LUA_TNUMBER) {
    lua_Number s = lua_tonumber(L, -1);
    /* Whole seconds, rounded up, at most a day (a longer wait is an hour of
     * backoff anyway, and a day keeps a mistaken header from parking a job). */
    if (s > 0) r->retry_after_seconds = s >= 86400 ? 86400 : (int64_t)ceil(s);
  }
  lua_pushliteral(L, "discard");
  if (lua_rawget(L, 5) != LUA_TNIL && lua_toboolean(L, -1)) r->verdict = CL_DELIVERY_DISCARDED;
  return 0;
}

/* Ends a delivery whose coroutine returned, raised or misbehaved. */
static void pd_finish(struct pdelivery *pd, int rc, int nres) {
  struct cl__policy *p = pd->p;
  lua_State *L = p->L;
  int n = rc == LUA_OK ? nres : rc == LUA_YIELD ? 0 : 1;
  int base = lua_gettop(L);
  memset(&pd->result, 0, sizeof pd->result);
  pd->result.verdict = CL_DELIVERY_FAILED;
  pd->result.reason = CL_REASON_NOTIFIER_ERROR;
  pd->result.message = pd->message;
  snprintf(pd->message, sizeof pd->message, "notifier: out of memory");
  if (lua_checkstack(L, n + 3)) {
    lua_pushcfunction(L, pd_verdict_frame);
    lua_pushlightuserdata(L, pd);
    lua_pushinteger(L, rc);
    lua_xmove(pd->co, L, n);
    if (lua_pcall(L, 2 + n, 0, 0) != LUA_OK) {
      pd->result.verdict = CL_DELIVERY_FAILED;
      snprintf(pd->message, sizeof pd->message, "notifier: out of memory");
    }
  }
  lua_settop(L, base);
  luaL_unref(L, LUA_REGISTRYINDEX, pd->co_ref);
  cl_delivery_result r = pd->result;
  cl_delivery *d = pd->d;
  cl_delivery_done(d, &r); /* copies the message */
  free(pd);
}

/* Runs the delivery's coroutine until it returns or waits again. */
static void pd_resume(struct pdelivery *pd, int nargs) {
  struct cl__policy *p = pd->p;
  cl_engine *eng = p->eng;
  bool was_in_hook = eng->in_hook;
  int nres = 0;
  if (pd->waited_from_ns) {
    pd->budget.deadline_ns += cl__monotonic_ns() - pd->waited_from_ns;
    pd->waited_from_ns = 0;
  }
  p->budget = pd->budget;
  p->armed = p->running = true;
  eng->in_hook = true;
  p->current = pd;
  pd->waiting = false;
  int rc = lua_resume(pd->co, p->L, nargs, &nres);
  p->current = NULL;
  p->armed = p->running = false;
  eng->in_hook = was_in_hook;
  pd->budget = p->budget;
  if (rc == LUA_YIELD && pd->waiting) {
    pd->waited_from_ns = cl__monotonic_ns();
    return;
  }
  pd_finish(pd, rc, nres);
}

/* cl_async_notifier.start */
static void pd_start(void *ud, cl_delivery *d, const cl_message *message,
                     const cl_conversation *conversation, const char *idempotency_key,
                     int attempt) {
  glue_hook *h = (glue_hook *)ud;
  cl_delivery_result fail = {CL_DELIVERY_FAILED, CL_REASON_NOTIFIER_ERROR, NULL, 0};
  cl_error local;
  struct pdelivery *pd = calloc(1, sizeof *pd);
  if (pd == NULL) {
    fail.message = "notifier: out of memory";
    cl_delivery_done(d, &fail);
    return;
  }
  if (!glue_start(&pd->c, h, "notifier", &local, &local)) {
    fail.message = local.message;
    cl_delivery_done(d, &fail);
    free(pd);
    return;
  }
  struct cl__policy *p = (struct cl__policy *)h->side;
  pd->p = p;
  pd->d = d;
  pd->co_ref = LUA_NOREF;
  pd->c.message = message;
  pd->c.conversation = conversation;
  pd->c.idempotency_key = idempotency_key;
  pd->c.attempt = attempt;
  if (policy_call(p, pd_setup_frame, &pd->c, true) != CL_OK) {
    fail.message = local.message;
    cl_delivery_done(d, &fail);
    free(pd);
    return;
  }
  cl__budget_arm(&pd->budget, p->eng->hook_instruction_limit, p->eng->hook_time_limit_ms);
  pd_resume(pd, 3);
}

/* cl_async_notifier.poll: the HTTP client's sockets; finished requests
 * resume their deliveries from in here. */
static void pd_poll(void *ud, int timeout_ms) {
  glue_hook *h = (glue_hook *)ud;
  cl_engine *eng = h->eng;
  if (eng->http) cl__http_run(eng->http, timeout_ms, -1);
}

/* glue_side.set_notifier */
static cl_status policy_set_notifier(glue_side *side, cl_engine *eng, glue_hook *h, cl_error *err) {
  (void)side;
  cl_async_notifier n = {pd_start, pd_poll, glue_hook_release, h};
  return cl_set_async_notifier(eng, &n, err);
}

/* ------------------------------------------------------------------ */
/* cl.http: requests from a notifier                                    */
/* ------------------------------------------------------------------ */

/* A request's end: hands the response to its coroutine and runs it on. */
static void pd_http_done(void *ud, const cl__http_response *res) {
  struct pdelivery *pd = (struct pdelivery *)ud;
  pd->res = res;
  pd_resume(pd, 0); /* may free pd */
}

/* What cl.http.request returns once its response is in: the coroutine
 * continues here.  A header seen twice is joined with ", ". */
static int http_continue(lua_State *L, int status, lua_KContext ctx) {
  struct pdelivery *pd = policy_of(L)->current; /* set by pd_resume */
  const cl__http_response *res = pd ? pd->res : NULL;
  (void)status, (void)ctx;
  if (res == NULL) return luaL_error(L, "cl.http.request: resumed without a response");
  pd->res = NULL;
  if (res->reason) {
    lua_pushnil(L);
    lua_pushstring(L, res->reason);
    lua_pushstring(L, res->detail);
    return 3;
  }
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, res->status);
  lua_setfield(L, -2, "status");
  lua_createtable(L, 0, (int)res->nheaders);
  for (size_t i = 0; i < res->nheaders; i++) {
    const cl__http_header *hd = &res->headers[i];
    if (lua_getfield(L, -1, hd->name) == LUA_TSTRING) {
      lua_pushliteral(L, ", ");
      lua_pushstring(L, hd->value);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushstring(L, hd->value);
    }
    lua_setfield(L, -2, hd->name);
  }
  lua_setfield(L, -2, "headers");
  lua_pushlstring(L, res->body ? res->body : "", res->body ? res->body_len : 0);
  lua_setfield(L, -2, "body");
  return 1;
}

/* A string field of the request table (or nil); raises naming it otherwise.
 * The value stays on the stack, where the suspended call keeps it alive. */
static const char *http_field(lua_State *L, const char *key, size_t *len) {
  int t = lua_getfield(L, 1, key);
  if (t == LUA_TNIL) return NULL;
  if (t != LUA_TSTRING) luaL_error(L, "cl.http.request: %s must be a string", key);
  return lua_tolstring(L, -1, len);
}

/*
 * cl.http.request{ method =, url =, headers = { [k] = v }, body =,
 * timeout_ms = } -> { status, headers, body } | nil, reason, detail.
 * Only in the notifier's own coroutine: it suspends that delivery until
 * the response is in.
 */
static int policy_http_request(lua_State *L) {
  struct cl__policy *p = policy_of(L);
  struct pdelivery *pd = p->current;
  size_t body_len = 0;
  char detail[256] = "";
  if (pd == NULL)
    return luaL_error(L, "cl.http.request: only while a notifier runs (never inside a "
                         "database transaction, nor while the policy loads)");
  if (L != pd->co)
    return luaL_error(L, "cl.http.request: call it from the notifier itself, not from a "
                         "coroutine it made");
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  const char *url = http_field(L, "url", NULL); /* 2 */
  if (url == NULL) return luaL_error(L, "cl.http.request: url is required");
  const char *method = http_field(L, "method", NULL);  /* 3 */
  const char *body = http_field(L, "body", &body_len); /* 4 */
  lua_settop(L, 4);
  lua_Integer timeout = 0;
  int t = lua_getfield(L, 1, "timeout_ms"); /* 5 */
  if (t != LUA_TNIL) {
    int isnum = 0;
    timeout = lua_tointegerx(L, 5, &isnum);
    if (!isnum || timeout < 1 || timeout > CL__HTTP_MAX_TIMEOUT_MS)
      return luaL_error(L, "cl.http.request: timeout_ms must be an integer from 1 to %d",
                        CL__HTTP_MAX_TIMEOUT_MS);
  }
  /* Header lines "Name: value", kept in a table on the stack (6) and
   * pointed to from a userdata array (7). */
  lua_newtable(L);
  int nh = 0;
  if (lua_getfield(L, 1, "headers") != LUA_TNIL) { /* 7, replaced below */
    luaL_checktype(L, 7, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 7)) {
      if (lua_type(L, -2) != LUA_TSTRING ||
          (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
        return luaL_error(L, "cl.http.request: headers must map names to strings");
      lua_pushfstring(L, "%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
      lua_rawseti(L, 6, ++nh);
      lua_pop(L, 1);
    }
  }
  lua_settop(L, 6);
  const char **lines = (const char **)lua_newuserdatauv(L, sizeof *lines * (size_t)(nh + 1), 0);
  for (int i = 0; i < nh; i++) {
    lua_rawgeti(L, 6, i + 1);
    lines[i] = lua_tostring(L, -1); /* anchored in table 6 */
    lua_pop(L, 1);
  }
  lines[nh] = NULL;
  if (p->eng->http == NULL) {
    lua_pushnil(L);
    lua_pushliteral(L, "not_allowed");
    lua_pushliteral(L, "no destination is allowed (allow them with --http-allow, "
                       "CAIRNLOOP_HTTP_ALLOW or the http_allow option)");
    return 3;
  }
  cl__http_request req = {method, url, lines, body, body_len, (long)timeout};
  const char *reason = cl__http_start(p->eng->http, &req, pd_http_done, pd, detail, sizeof detail);
  if (reason) {
    lua_pushnil(L);
    lua_pushstring(L, reason);
    lua_pushstring(L, detail);
    return 3;
  }
  pd->waiting = true;
  return lua_yieldk(L, 0, 0, http_continue);
}

/* cl.http.parse_date(text) -> Unix seconds | nil */
static int policy_http_parse_date(lua_State *L) {
  long long t = cl__http_parse_date(luaL_checkstring(L, 1));
  if (t < 0) lua_pushnil(L);
  else lua_pushinteger(L, (lua_Integer)t);
  return 1;
}

/* cl.crypto.hmac_sha256(key, data) -> 32 raw bytes */
static int policy_hmac_sha256(lua_State *L) {
  size_t klen, dlen;
  const char *key = luaL_checklstring(L, 1, &klen);
  const char *data = luaL_checklstring(L, 2, &dlen);
  unsigned char mac[CL__SHA256_LEN];
  if (!cl__hmac_sha256(key, klen, data, dlen, mac))
    return luaL_error(L, "cl.crypto.hmac_sha256: the crypto library failed");
  lua_pushlstring(L, (const char *)mac, sizeof mac);
  return 1;
}

/* cl.crypto.base64_encode(bytes) -> text */
static int policy_base64_encode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, cl__base64_encoded_len(len) + 1);
  cl__base64_encode(s, len, out);
  luaL_pushresultsize(&b, cl__base64_encoded_len(len));
  return 1;
}

/* cl.crypto.base64_decode(text) -> bytes | nil, "invalid base64" */
static int policy_base64_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  luaL_Buffer b;
  unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, len / 4 * 3 + 3);
  long n = cl__base64_decode(s, len, out);
  if (n < 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "invalid base64");
    return 2;
  }
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

/* cl.getenv(name) -> value | nil, for CAIRNLOOP_* names only: a policy
 * reads its own configuration, not the process's secrets at large. */
static int policy_getenv(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  if (strncmp(name, "CAIRNLOOP_", 10) != 0)
    return luaL_error(L, "cl.getenv: only CAIRNLOOP_* variables may be read, not %s", name);
  const char *v = getenv(name);
  if (v) lua_pushstring(L, v);
  else lua_pushnil(L);
  return 1;
}

/* ------------------------------------------------------------------ */
/* The registration API: require "cairnloop" in the policy state         */
/* ------------------------------------------------------------------ */

/* The policy of a registration function: its upvalue. */
static struct cl__policy *api_policy(lua_State *L) {
  return (struct cl__policy *)lua_touserdata(L, lua_upvalueindex(1));
}

/* cl.auditor{ audit = fn [, list_events = fn] } | cl.auditor(nil) -> true; raises on misuse */
static int policy_auditor(lua_State *L) {
  struct cl__policy *p = api_policy(L);
  return glue_set_hook(L, 1, &p->side, p->eng, GLUE_AUDITOR);
}

/* cl.actor_resolver(fn | nil) -> true; raises on misuse */
static int policy_actor_resolver(lua_State *L) {
  struct cl__policy *p = api_policy(L);
  return glue_set_hook(L, 1, &p->side, p->eng, GLUE_RESOLVER);
}

/* cl.notifier(fn | nil) -> true; raises on misuse */
static int policy_notifier(lua_State *L) {
  struct cl__policy *p = api_policy(L);
  return glue_set_hook(L, 1, &p->side, p->eng, GLUE_NOTIFIER);
}

/* cl.attach(handler_id, event_name, fn [, config]) -> true | nil, code, msg; raises if fn is not a function */
static int policy_attach(lua_State *L) {
  struct cl__policy *p = api_policy(L);
  return glue_attach(L, 1, 0, &p->side, p->eng);
}

/* cl.attach_many(handler_id, { event_name, ... }, fn [, config]) -> true | nil, code, msg */
static int policy_attach_many(lua_State *L) {
  struct cl__policy *p = api_policy(L);
  return glue_attach(L, 1, 1, &p->side, p->eng);
}

/* cl.detach(handler_id) -> boolean; allowed inside a handler, also on itself */
static int policy_detach(lua_State *L) { return glue_detach(L, 1, api_policy(L)->eng); }

/* Logs `text` through the engine, one log line per line of text. */
static void log_text(cl_engine *eng, cl_log_level level, const char *text, size_t len) {
  while (len > 0) {
    const char *nl = (const char *)memchr(text, '\n', len);
    size_t n = nl ? (size_t)(nl - text) : len;
    char line[CL_ERROR_MESSAGE_MAX * 2];
    cl__one_line(line, sizeof line, text, n);
    cl_log(eng, level, "policy: %s", line);
    if (!nl) break;
    len -= n + 1;
    text = nl + 1;
  }
}

/* cl.log(level, message); level "debug" | "info" | "warn" | "error"; raises on misuse */
static int policy_log(lua_State *L) {
  struct cl__policy *p = api_policy(L);
  int level = luaL_checkoption(L, 1, NULL, level_options);
  size_t len;
  const char *msg = luaL_checklstring(L, 2, &len);
  log_text(p->eng, (cl_log_level)level, msg, len);
  return 0;
}

static int open_policy_api(lua_State *L) {
  static const luaL_Reg fns[] = {{"auditor", policy_auditor},
                                 {"actor_resolver", policy_actor_resolver},
                                 {"notifier", policy_notifier},
                                 {"attach", policy_attach},
                                 {"attach_many", policy_attach_many},
                                 {"detach", policy_detach},
                                 {"log", policy_log},
                                 {NULL, NULL}};
  struct cl__policy *p = policy_of(L);
  luaL_newlibtable(L, fns);
  lua_pushlightuserdata(L, p);
  luaL_setfuncs(L, fns, 1);
  static const luaL_Reg http[] = {
      {"request", policy_http_request}, {"parse_date", policy_http_parse_date}, {NULL, NULL}};
  static const luaL_Reg crypto[] = {{"hmac_sha256", policy_hmac_sha256},
                                    {"base64_encode", policy_base64_encode},
                                    {"base64_decode", policy_base64_decode},
                                    {NULL, NULL}};
  luaL_newlib(L, http);
  lua_setfield(L, -2, "http");
  luaL_newlib(L, crypto);
  lua_setfield(L, -2, "crypto");
  lua_pushcfunction(L, policy_getenv);
  lua_setfield(L, -2, "getenv");
  lua_pushstring(L, p->eng->schema);
  lua_setfield(L, -2, "schema");
  lua_pushliteral(L, CL_VERSION);
  lua_setfield(L, -2, "VERSION");
  glue_push_events(L);
  lua_setfield(L, -2, "EVENTS");
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
  (void)fclose(f); /* opened for reading only: nothing to lose on close */
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
        return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", lua_tostring(L, 1),
                          file, lua_tostring(L, -1));
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
  if (memchr(entry, '?', len)) snprintf(out + n, cap - n, "%.*s;", (int)len, entry);
  else snprintf(out + n, cap - n, "%.*s/?.lua;%.*s/?/init.lua;", (int)len, entry, (int)len, entry);
}

/* Removes the last component of the path in buf; false if there is none. */
static bool strip_component(char *buf) {
  char *slash = strrchr(buf, '/');
  if (slash == NULL || slash == buf) return false;
  *slash = '\0';
  return true;
}

/* The last component of the path in buf. */
static const char *last_component(const char *buf) {
  const char *slash = strrchr(buf, '/');
  return slash ? slash + 1 : buf;
}

/*
 * The directory of pure-Lua modules installed with the object this engine
 * was loaded from, in out[PATH_MAX]; false when there is none:
 *   <prefix>/lib/libcairnloop.so*, a program in <prefix>/bin
 *       -> <prefix>/share/lua/5.4
 *   <tree>/lib/lua/<version>/cairnloop.so (make install, a LuaRocks tree)
 *       -> <tree>/share/lua/5.4
 * A build directory matches neither, so nothing built in a checkout looks
 * into it: run from a checkout with CAIRNLOOP_LUA_PATH set.  The object is
 * found with dladdr on this file's own data; for the main program (whose
 * name dladdr gives as argv[0]) it is /proc/self/exe.
 */
static bool installed_lua_dir(char *out) {
  char obj[PATH_MAX];
  const char *name;
  struct link_map *map = NULL;
  Dl_info info;
  if (dladdr1((const void *)level_options, &info, (void **)&map, RTLD_DL_LINKMAP) == 0 ||
      map == NULL)
    return false;
  if (map->l_name == NULL || map->l_name[0] == '\0') {
    ssize_t n = readlink("/proc/self/exe", obj, sizeof obj - 1);
    if (n <= 0) return false;
    obj[n] = '\0';
  } else if (realpath(map->l_name, obj) == NULL) {
    return false;
  }
  if (!strip_component(obj)) return false; /* the object's directory */
  name = last_component(obj);
  if (strcmp(name, "bin") != 0 && strcmp(name, "lib") != 0 && strcmp(name, "lib64") != 0) {
    /* Only <tree>/lib/lua/<version> is left: up to <tree>/lib. */
    if (!strip_component(obj) || strcmp(last_component(obj), "lua") != 0 || !strip_component(obj) ||
        strcmp(last_component(obj), "lib") != 0)
      return false;
  }
  if (!strip_component(obj)) return false; /* the prefix, or the tree */
  return snprintf(out, PATH_MAX, "%s/share/lua/5.4", obj) < PATH_MAX;
}

/*
 * require's search path, in this order: the entries of CAIRNLOOP_LUA_PATH
 * (';'-separated directories or templates), the modules installed with
 * this engine (installed_lua_dir), then CL_LUA_INSTALL_DIR.  Nothing of
 * the tree the engine was built in is compiled in.
 */
static char *make_lua_path(void) {
  const char *env = secure_getenv("CAIRNLOOP_LUA_PATH"), *t, *end;
  char near[PATH_MAX];
  bool has_near = installed_lua_dir(near);
  size_t cap = 2 * strlen(CL_LUA_INSTALL_DIR) + 64, n;
  char *out;
  if (env) /* each entry grows to at most twice its length plus the suffixes */
    for (n = 0; env[n]; n++) cap += env[n] == ';' ? 32 : 2;
  if (has_near) cap += 2 * strlen(near) + 32;
  if ((out = (char *)malloc(cap + 32)) == NULL) return NULL;
  out[0] = '\0';
  for (t = env ? env : ""; *t; t = *end ? end + 1 : end) {
    end = strchr(t, ';');
    if (end == NULL) end = t + strlen(t);
    path_add(out, cap, t, (size_t)(end - t));
  }
  if (has_near) path_add(out, cap, near, strlen(near));
  path_add(out, cap, CL_LUA_INSTALL_DIR, strlen(CL_LUA_INSTALL_DIR));
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

  /* Base: no file access, no finalisers, print to the log. */
  lua_pushnil(L);
  lua_setglobal(L, "dofile");
  lua_pushnil(L);
  lua_setglobal(L, "loadfile");
  lua_getglobal(L, "setmetatable");
  lua_pushcclosure(L, sandbox_setmetatable, 1);
  lua_setglobal(L, "setmetatable");
  lua_pushcfunction(L, policy_print);
  lua_setglobal(L, "print");

  /* Loops in C under the deadline; load is text-only (binary chunks can
   * crash the VM). */
  cl__bounded_open(L, &policy_bounds);

  /* package: our text-only searcher over the fixed path; no C modules,
   * and no searchpath, which would tell whether any file on the host
   * exists. */
  lua_getglobal(L, LUA_LOADLIBNAME);
  lua_pushstring(L, p->lua_path);
  lua_setfield(L, -2, "path");
  lua_pushliteral(L, "");
  lua_setfield(L, -2, "cpath");
  lua_pushnil(L);
  lua_setfield(L, -2, "loadlib");
  lua_pushnil(L);
  lua_setfield(L, -2, "searchpath");
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
  /* Audit values leave as JSON (no audit_slot): res.audit is built in the
   * host's state, never from this one's values. */
  p->side.call = policy_hook_call;
  p->side.state = policy_state;
  p->side.api = "cl.";
  p->side.set_notifier = policy_set_notifier;
  p->side.actor_ref = LUA_NOREF;
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
};

/*
 * Compiles the file (text only) and runs it with no arguments, so a
 * ready-made module can tell a --policy load (`...` is nil) from require.
 * A file that cannot be read or compiled is a bad argument, reported as
 * it is, on one line, with nothing logged: there is no hook to blame and
 * no traceback to show.  One that raises while running is a hook error.
 */
static int load_frame(lua_State *L) {
  struct load_call *lc = (struct load_call *)lua_touserdata(L, 1);
  int rc = luaL_loadfilex(L, lc->path, "t");
  if (rc == LUA_ERRFILE || rc == LUA_ERRSYNTAX) {
    size_t len = 0;
    const char *msg = lua_tolstring(L, -1, &len);
    char line[CL_ERROR_MESSAGE_MAX];
    cl__one_line(line, sizeof line, msg ? msg : "", msg ? len : 0);
    lc->c.status = cl__fail(lc->c.err, CL_INVALID_ARGUMENT, "policy: %s", line);
    return 0;
  }
  if (rc != LUA_OK) return lua_error(L); /* out of memory */
  lua_call(L, 0, 0);
  return 0;
}

cl_status cl_load_policy(cl_engine *eng, const char *path, cl_error *err) {
  struct load_call lc;
  cl_error local;
  cl_status st;
  CL__ENTER(eng, err);
  if (err == NULL) err = &local;
  if (path == NULL || *path == '\0')
    return cl__fail(err, CL_INVALID_ARGUMENT, "policy: a file path is required");
  if (eng->policy == NULL) {
    st = policy_create(eng, err);
    if (eng->policy == NULL) return st; /* not created: err says why */
  }
  memset(&lc, 0, sizeof lc);
  lc.c.hook = "policy";
  lc.c.err = err;
  lc.path = path;
  eng->policy->loading = true;
  st = policy_call(eng->policy, load_frame, &lc.c, false);
  eng->policy->loading = false;
  /* Hooks a file registered before raising stay registered:
   * cairnloop.open closes the engine then. */
  if (st == CL_OK) cl__ok(err);
  return st;
}

bool cl__policy_owns_resolver(const cl_engine *eng) {
  return eng->policy != NULL && glue_owns_resolver(&eng->policy->side, eng);
}

bool cl__policy_stage_actor(cl_engine *eng, const char *actor_json) {
  struct cl__policy *p = eng->policy;
  if (actor_json == NULL) {
    if (p) p->side.actor_json = NULL;
    return true;
  }
  if (!cl__policy_owns_resolver(eng)) return false;
  p->side.actor_json = actor_json;
  return true;
}

void cl__policy_free(struct cl__policy *p) {
  if (p == NULL) return;
  /* Records the engine still holds lose their state: their refs go with it. */
  glue_orphan_hooks(&p->side);
  lua_close(p->L);
  free(p->lua_path);
  free(p);
}
