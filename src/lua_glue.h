/*
 * lua_glue.h - Lua glue shared by the two places hooks run: the engine's own
 * policy state (policy.c, always Lua 5.4) and the host's state (lua_module.c,
 * Lua 5.4 or LuaJIT).  It is a header of static functions rather than a .c
 * file because it is compiled once per Lua runtime: inside nginx the host
 * module and the policy state bind to different Lua libraries.
 *
 * Provides: the traceback message handler, the hook budget, the "box"
 * userdata that owns C memory while Lua code may still raise, JSON <-> Lua
 * (jansson), the `tx` handle of auditor calls, telemetry argument tables,
 * event-name parsing and the hook frames (argument marshalling and result
 * checking, run inside lua_pcall).  Uses lua_compat.h and the public API.
 */
#ifndef CL_LUA_GLUE_H
#define CL_LUA_GLUE_H

#include "engine.h"
#include "lua_compat.h"

#include <jansson.h>

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Registry names of the metatables the glue registers in each state. */
#define GLUE_BOX "cairnloop.box"
#define GLUE_TX "cairnloop.tx"

/*
 * The count hook fires every 1000 VM instructions.  HAProxy measured hook
 * intervals of 500 to 10000 instructions as free; 1000 keeps the overshoot
 * past the budget and past the deadline (checked in the same hook) small.
 */
#define GLUE_HOOK_EVERY 1000

/* Deepest table nesting converted to JSON; deeper (or cyclic) is refused. */
#define GLUE_JSON_MAX_DEPTH 64

/* ------------------------------------------------------------------ */
/* Error messages                                                       */
/* ------------------------------------------------------------------ */

/* Copies `s` into buf as one printable line (control bytes become spaces). */
static inline void glue_one_line(char *buf, size_t cap, const char *s, size_t len) {
  size_t i, n = 0;
  if (cap == 0) return;
  for (i = 0; i < len && n + 1 < cap; i++) {
    unsigned char ch = (unsigned char)s[i];
    buf[n++] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
  }
  buf[n] = '\0';
}

/*
 * Describes the value at `idx` in buf without calling Lua code and without
 * allocating: used for `nil, reason` results, where nothing may raise.
 */
static inline void glue_describe(lua_State *L, int idx, char *buf, size_t cap) {
  size_t len;
  const char *s;
  int64_t i;
  switch (lua_type(L, idx)) {
  case LUA_TSTRING:
    s = lua_tolstring(L, idx, &len);
    glue_one_line(buf, cap, s, len);
    break;
  case LUA_TNUMBER:
    if (compat_tointeger(L, idx, &i))
      snprintf(buf, cap, "%lld", (long long)i);
    else
      snprintf(buf, cap, "%.14g", (double)lua_tonumber(L, idx));
    break;
  case LUA_TBOOLEAN:
    snprintf(buf, cap, "%s", lua_toboolean(L, idx) ? "true" : "false");
    break;
  default:
    snprintf(buf, cap, "(a %s value)", lua_typename(L, lua_type(L, idx)));
    break;
  }
}

/*
 * Message handler for every hook call: turns any error object into
 * "message\nstack traceback:...".  Error objects that are not strings are
 * described; their __tostring runs under its own pcall, so one that raises
 * (or loops into the budget) cannot turn into "error in error handling".
 * Not called for memory errors: those arrive as LUA_ERRMEM.
 */
static inline int glue_msghandler(lua_State *L) {
  const char *msg = NULL;
  if (lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER) {
    msg = lua_tostring(L, 1);
  } else if (luaL_getmetafield(L, 1, "__tostring") != 0) { /* pushes the field */
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING)
      msg = lua_tostring(L, -1);
  }
  if (msg == NULL)
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/*
 * Fills err with "<hook>: <first part of what the handler produced>" as one
 * line and returns where the traceback starts in `full` (NULL if none), so
 * that the caller can log it.
 */
static inline const char *glue_error_text(const char *hook, const char *full, cl_error *err) {
  const char *tb = NULL, *p = full;
  char line[CL_ERROR_MESSAGE_MAX];
  /* The handler appends "\nstack traceback:"; the last one is ours. */
  while ((p = strstr(p, "\nstack traceback:")) != NULL) tb = p++;
  glue_one_line(line, sizeof line, full, tb ? (size_t)(tb - full) : strlen(full));
  cl__fail(err, CL_HOOK_ERROR, "%s: %s", hook, line);
  return tb ? tb + 1 : NULL;
}

/* Pushes `nil, code, message` and returns 3: every foreseeable failure. */
static inline int glue_push_failure(lua_State *L, cl_status st, const cl_error *err) {
  lua_pushnil(L);
  lua_pushstring(L, cl_status_name(st));
  lua_pushstring(L, err ? err->message : "");
  return 3;
}

/* ------------------------------------------------------------------ */
/* The hook budget                                                      */
/* ------------------------------------------------------------------ */

enum { GLUE_WITHIN = 0, GLUE_OVER_INSTRUCTIONS, GLUE_OVER_TIME };

typedef struct glue_budget {
  int64_t used;        /* instructions counted so far in this call */
  int64_t limit;       /* instruction budget of one call */
  int64_t deadline_ns; /* CLOCK_MONOTONIC */
  int64_t time_limit_ms;
  int exceeded;        /* GLUE_WITHIN until the budget is spent, then sticky */
} glue_budget;

static inline int64_t glue_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void glue_budget_arm(glue_budget *b, int64_t instructions, int64_t ms) {
  b->used = 0;
  b->limit = instructions;
  b->time_limit_ms = ms;
  b->deadline_ns = glue_now_ns() + ms * 1000000;
  b->exceeded = GLUE_WITHIN;
}

/* Counts one firing of `count` instructions; returns the sticky verdict. */
static inline int glue_budget_tick(glue_budget *b, int count) {
  if (b->exceeded != GLUE_WITHIN) return b->exceeded;
  b->used += count;
  if (b->used >= b->limit)
    b->exceeded = GLUE_OVER_INSTRUCTIONS;
  /* tx:exec burns time without burning instructions: check the clock too. */
  else if (glue_now_ns() >= b->deadline_ns)
    b->exceeded = GLUE_OVER_TIME;
  return b->exceeded;
}

static inline const char *glue_budget_what(const glue_budget *b) {
  return b->exceeded == GLUE_OVER_INSTRUCTIONS ? "instruction budget exceeded"
                                               : "time limit exceeded";
}

static inline void glue_budget_fail(const glue_budget *b, const char *hook, cl_error *err) {
  if (b->exceeded == GLUE_OVER_INSTRUCTIONS)
    cl__fail(err, CL_HOOK_ERROR, "%s: instruction budget exceeded (%lld instructions)", hook,
             (long long)b->limit);
  else
    cl__fail(err, CL_HOOK_ERROR, "%s: time limit exceeded (%lld ms)", hook,
             (long long)b->time_limit_ms);
}

/* ------------------------------------------------------------------ */
/* The box: C memory owned by a userdata while Lua code may raise       */
/* ------------------------------------------------------------------ */

/*
 * A box owns one C resource (a result struct, a cl_rows, a JSON tree)
 * while the code that uses it may still raise: if it does, the box's __gc
 * releases the resource; on the normal path glue_box_release() does it at
 * once.  The resource is a pointer, or inline storage in the box itself.
 */
typedef struct glue_box {
  void (*drop)(void *p); /* releases p; NULL once released */
  void *p;
  max_align_t data[];    /* inline storage when asked for */
} glue_box;

static inline void glue_box_release(glue_box *b) {
  void (*drop)(void *) = b->drop;
  b->drop = NULL; /* before the call: drop must run once only */
  if (drop) drop(b->p);
}

/* __gc of GLUE_BOX userdata. */
static inline int box_gc(lua_State *L) {
  glue_box_release((glue_box *)lua_touserdata(L, 1));
  return 0;
}

/* Pushes an empty box with `size` zeroed bytes of inline storage.  Raises
 * on memory, so call it before acquiring what it will own. */
static inline glue_box *glue_newbox(lua_State *L, size_t size) {
  glue_box *b = (glue_box *)compat_newuserdata(L, sizeof *b + size);
  b->drop = NULL;
  b->p = NULL;
  if (size) {
    memset(b->data, 0, size);
    b->p = b->data;
  }
  luaL_setmetatable(L, GLUE_BOX);
  return b;
}

static inline void glue_drop_json(void *p) { json_decref((json_t *)p); }
static inline void glue_drop_rows(void *p) { cl_rows_free((cl_rows *)p); }

/* ------------------------------------------------------------------ */
/* JSON <-> Lua                                                         */
/* ------------------------------------------------------------------ */

static inline json_t *glue_to_json(lua_State *L, int idx, int depth, int empty_is_array,
                                   char *why, size_t cap);

static inline json_t *glue_table_to_json(lua_State *L, int idx, int depth, int empty_is_array,
                                         char *why, size_t cap) {
  size_t n = 0;
  int64_t key, max = 0;
  int is_array = 1;
  json_t *out, *v;

  if (depth > GLUE_JSON_MAX_DEPTH) {
    snprintf(why, cap, "tables nested deeper than %d levels (or a cycle)", GLUE_JSON_MAX_DEPTH);
    return NULL;
  }
  if (!lua_checkstack(L, 4)) {
    snprintf(why, cap, "Lua stack exhausted");
    return NULL;
  }
  idx = compat_absindex(L, idx);
  /* A table is a JSON array when its keys are exactly 1..n. */
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    n++;
    if (!compat_tointeger(L, -2, &key) || key < 1)
      is_array = 0;
    else if (key > max)
      max = key;
    lua_pop(L, 1); /* value */
  }
  if (n == 0) return empty_is_array ? json_array() : json_object();
  if (is_array && (size_t)max == n) {
    size_t i;
    if ((out = json_array()) == NULL) goto oom;
    for (i = 1; i <= n; i++) {
      lua_rawgeti(L, idx, (int)i);
      v = glue_to_json(L, -1, depth + 1, 0, why, cap);
      lua_pop(L, 1);
      if (v == NULL || json_array_append_new(out, v) != 0) {
        json_decref(out);
        return NULL;
      }
    }
    return out;
  }
  if ((out = json_object()) == NULL) goto oom;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    char kbuf[32];
    const char *k = kbuf;
    size_t klen;
    /* Numeric keys are formatted here: lua_tolstring would convert the
     * key in place and break lua_next. */
    if (lua_type(L, -2) == LUA_TSTRING) {
      k = lua_tolstring(L, -2, &klen);
    } else if (lua_type(L, -2) == LUA_TNUMBER) {
      if (compat_isinteger(L, -2) && compat_tointeger(L, -2, &key))
        snprintf(kbuf, sizeof kbuf, "%lld", (long long)key);
      else
        snprintf(kbuf, sizeof kbuf, "%.17g", (double)lua_tonumber(L, -2));
      klen = strlen(kbuf);
    } else {
      snprintf(why, cap, "a %s key (keys must be strings or numbers)",
               lua_typename(L, lua_type(L, -2)));
      lua_pop(L, 2);
      json_decref(out);
      return NULL;
    }
    v = glue_to_json(L, -1, depth + 1, 0, why, cap);
    if (v == NULL) {
      lua_pop(L, 2);
      json_decref(out);
      return NULL;
    }
    if (json_object_setn_new(out, k, klen, v) != 0) {
      snprintf(why, cap, "a key that is not valid UTF-8");
      lua_pop(L, 2);
      json_decref(out);
      return NULL;
    }
    lua_pop(L, 1); /* value */
  }
  return out;
oom:
  snprintf(why, cap, "out of memory");
  return NULL;
}

/*
 * Converts the value at `idx` to a JSON tree.  Never raises and never runs
 * Lua code (metatables are ignored), so it may run outside protection while
 * C memory is held.  NULL with `why` filled when the value has no JSON form
 * (functions, NaN, cycles, invalid UTF-8).
 */
static inline json_t *glue_to_json(lua_State *L, int idx, int depth, int empty_is_array,
                                   char *why, size_t cap) {
  json_t *v = NULL;
  size_t len;
  const char *s;
  int64_t i;
  double d;
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    v = json_null();
    break;
  case LUA_TBOOLEAN:
    v = json_boolean(lua_toboolean(L, idx));
    break;
  case LUA_TNUMBER:
    if (compat_isinteger(L, idx) && compat_tointeger(L, idx, &i)) {
      v = json_integer((json_int_t)i);
    } else {
      d = (double)lua_tonumber(L, idx);
      if (!isfinite(d)) {
        snprintf(why, cap, "a number that is not finite");
        return NULL;
      }
      v = json_real(d);
    }
    break;
  case LUA_TSTRING:
    s = lua_tolstring(L, idx, &len);
    if ((v = json_stringn(s, len)) == NULL) {
      snprintf(why, cap, "a string that is not valid UTF-8");
      return NULL;
    }
    break;
  case LUA_TTABLE:
    return glue_table_to_json(L, idx, depth, empty_is_array, why, cap);
  default:
    snprintf(why, cap, "a %s value", lua_typename(L, lua_type(L, idx)));
    return NULL;
  }
  if (v == NULL) snprintf(why, cap, "out of memory");
  return v;
}

/* Pushes a JSON tree as Lua values (null becomes nil).  Raises on memory:
 * the caller keeps the tree in a box. */
static inline void glue_push_json(lua_State *L, json_t *v) {
  const char *key;
  json_t *x;
  size_t i;
  luaL_checkstack(L, 4, "JSON nested too deeply");
  switch (json_typeof(v)) {
  case JSON_OBJECT:
    lua_createtable(L, 0, (int)json_object_size(v));
    json_object_foreach(v, key, x) {
      if (json_is_null(x)) continue;
      lua_pushstring(L, key);
      glue_push_json(L, x);
      lua_rawset(L, -3);
    }
    break;
  case JSON_ARRAY:
    lua_createtable(L, (int)json_array_size(v), 0);
    json_array_foreach(v, i, x) {
      if (json_is_null(x)) continue;
      glue_push_json(L, x);
      lua_rawseti(L, -2, (int)i + 1);
    }
    break;
  case JSON_STRING:
    lua_pushlstring(L, json_string_value(v), json_string_length(v));
    break;
  case JSON_INTEGER:
    compat_pushint64(L, (int64_t)json_integer_value(v));
    break;
  case JSON_REAL:
    lua_pushnumber(L, (lua_Number)json_real_value(v));
    break;
  case JSON_TRUE:
    lua_pushboolean(L, 1);
    break;
  case JSON_FALSE:
    lua_pushboolean(L, 0);
    break;
  default:
    lua_pushnil(L);
    break;
  }
}

/* Pushes the decoded JSON text (NULL pushes nil).  Raises on memory and on
 * text that is not JSON, which only a broken hook contract produces. */
static inline void glue_push_json_text(lua_State *L, const char *text) {
  glue_box *b;
  json_error_t jerr;
  json_t *root;
  if (text == NULL) {
    lua_pushnil(L);
    return;
  }
  b = glue_newbox(L, 0);
  root = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
  if (root == NULL) luaL_error(L, "invalid JSON from the engine: %s", jerr.text);
  b->p = root;
  b->drop = glue_drop_json;
  glue_push_json(L, root); /* box value */
  glue_box_release(b);
  lua_remove(L, -2); /* box */
}

/* ------------------------------------------------------------------ */
/* Telemetry arguments                                                  */
/* ------------------------------------------------------------------ */

/* Pushes a cl_map as a table; nil entries are left out. */
static inline void glue_push_map(lua_State *L, const cl_map *m) {
  size_t i;
  lua_createtable(L, 0, m ? (int)m->count : 0);
  for (i = 0; m && i < m->count; i++) {
    const cl_kv *kv = &m->items[i];
    if (kv->type == CL_VALUE_INT)
      compat_pushint64(L, kv->i);
    else if (kv->type == CL_VALUE_STRING && kv->s)
      lua_pushstring(L, kv->s);
    else
      continue;
    lua_setfield(L, -2, kv->key);
  }
}

/* Registry key of the cache of event name lists (its address is the key). */
static char glue_events_key;

/*
 * Pushes the NULL-terminated event name parts as a list.  The engine's
 * event names are static arrays, so each state builds a name's list once
 * and hands the same table to every handler call after that: handlers
 * must treat it as read-only, like the event lists of Erlang's telemetry.
 */
static inline void glue_push_event(lua_State *L, const char *const *event) {
  int i;
  lua_pushlightuserdata(L, &glue_events_key);
  lua_rawget(L, LUA_REGISTRYINDEX); /* cache */
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushlightuserdata(L, &glue_events_key);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
  }
  lua_pushlightuserdata(L, (void *)event);
  lua_rawget(L, -2); /* cache list? */
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_createtable(L, 6, 0);
    for (i = 0; event && event[i]; i++) {
      lua_pushstring(L, event[i]);
      lua_rawseti(L, -2, i + 1);
    }
    lua_pushlightuserdata(L, (void *)event);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4); /* cache[event] = list */
  }
  lua_remove(L, -2); /* list */
}

/*
 * Reads the event name at `idx` (dotted string or list of parts) and pushes
 * its dotted form.  Returns 0, pushing nothing and filling `why`, when it is
 * not a valid name; raises only on memory.
 */
static inline int glue_push_event_name(lua_State *L, int idx, char *why, size_t cap) {
  int top = lua_gettop(L);
  size_t len, n, i;
  const char *s;
  luaL_Buffer b;
  idx = compat_absindex(L, idx);
  if (lua_type(L, idx) == LUA_TSTRING) {
    s = lua_tolstring(L, idx, &len);
    if (len == 0 || strlen(s) != len) {
      snprintf(why, cap, "an event name must be a non-empty string without NUL bytes");
      return 0;
    }
    lua_pushvalue(L, idx);
    return 1;
  }
  if (lua_type(L, idx) != LUA_TTABLE || (n = compat_rawlen(L, idx)) == 0) {
    snprintf(why, cap, "an event name must be a dotted string or a non-empty list of strings");
    return 0;
  }
  luaL_buffinit(L, &b);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, (int)i);
    s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
    if (s == NULL || len == 0 || strlen(s) != len || memchr(s, '.', len) != NULL) {
      lua_settop(L, top);
      snprintf(why, cap, "event name part %zu must be a non-empty string without dots", i);
      return 0;
    }
    if (i > 1) luaL_addchar(&b, '.');
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  return 1;
}

/* A non-empty string without NUL bytes at `idx`, or NULL. */
static inline const char *glue_checked_id(lua_State *L, int idx) {
  size_t len;
  const char *s;
  if (lua_type(L, idx) != LUA_TSTRING) return NULL;
  s = lua_tolstring(L, idx, &len);
  return (len == 0 || strlen(s) != len) ? NULL : s;
}

/*
 * Reads the arguments of attach (`many` 0) or attach_many at first..first+3:
 * handler_id, event name(s), fn, config.  Returns 1 with *id and *names (an
 * array kept in a userdata, its strings on the stack: valid while the
 * caller's frame lives) or 0 with `why` filled: a foreseeable
 * invalid_argument.  Raises when fn is not a function (misuse) or on memory.
 */
static inline int glue_attach_args(lua_State *L, int first, int many, const char **id,
                                   const char ***names, size_t *count, char *why, size_t cap) {
  size_t n = 1, i;
  const char **arr;
  int events = first + 1;
  luaL_checktype(L, first + 2, LUA_TFUNCTION);
  if ((*id = glue_checked_id(L, first)) == NULL) {
    snprintf(why, cap, "handler_id must be a non-empty string without NUL bytes");
    return 0;
  }
  if (many) {
    if (lua_type(L, events) != LUA_TTABLE || (n = compat_rawlen(L, events)) == 0) {
      snprintf(why, cap, "attach_many takes a non-empty list of event names");
      return 0;
    }
  }
  luaL_checkstack(L, (int)n + 4, "too many event names");
  arr = (const char **)compat_newuserdata(L, n * sizeof *arr);
  for (i = 0; i < n; i++) {
    if (many) lua_rawgeti(L, events, (int)i + 1);
    if (!glue_push_event_name(L, many ? -1 : events, why, cap)) return 0;
    if (many) lua_remove(L, -2); /* the raw item */
    arr[i] = lua_tostring(L, -1);
  }
  *names = arr;
  *count = n;
  return 1;
}

/* ------------------------------------------------------------------ */
/* Rows as tables                                                       */
/* ------------------------------------------------------------------ */

/* Sets t[key] = s on the table on top; a NULL s leaves the key out. */
static inline void glue_setstr(lua_State *L, const char *key, const char *s) {
  if (s == NULL) return;
  lua_pushstring(L, s);
  lua_setfield(L, -2, key);
}

static inline void glue_setint(lua_State *L, const char *key, int64_t v) {
  compat_pushint64(L, v);
  lua_setfield(L, -2, key);
}

/* { id, conversation_id, role, content, metadata = { template_id, status, bulk_envelope_id } } */
static inline void glue_push_message(lua_State *L, const cl_message *m) {
  lua_createtable(L, 0, 5);
  glue_setint(L, "id", m->id);
  glue_setint(L, "conversation_id", m->conversation_id);
  glue_setstr(L, "role", m->role);
  glue_setstr(L, "content", m->content);
  lua_createtable(L, 0, 3);
  glue_setstr(L, "template_id", m->template_id);
  glue_setstr(L, "status", m->status);
  glue_setstr(L, "bulk_envelope_id", m->bulk_envelope_id);
  lua_setfield(L, -2, "metadata");
}

/* { id, status, subject, customer_ref } */
static inline void glue_push_conversation(lua_State *L, const cl_conversation *cv) {
  lua_createtable(L, 0, 4);
  glue_setint(L, "id", cv->id);
  glue_setstr(L, "status", cv->status);
  glue_setstr(L, "subject", cv->subject);
  glue_setstr(L, "customer_ref", cv->customer_ref);
}

/* ------------------------------------------------------------------ */
/* The tx handle of an auditor call                                     */
/* ------------------------------------------------------------------ */

struct glue_tx;

/* Lives in the C frame of one audit call and links it with its handle. */
typedef struct glue_txslot {
  struct glue_tx *ud; /* the handle, NULL once collected or ended */
} glue_txslot;

typedef struct glue_tx {
  cl_tx *tx;          /* NULL once the call ended: using it then raises */
  glue_txslot *slot;
} glue_tx;

/* Pushes a handle valid for one audit call.  Raises on memory. */
static inline void glue_push_tx(lua_State *L, cl_tx *tx, glue_txslot *slot) {
  glue_tx *t = (glue_tx *)compat_newuserdata(L, sizeof *t);
  t->tx = NULL;
  t->slot = NULL;
  luaL_setmetatable(L, GLUE_TX);
  t->tx = tx;
  t->slot = slot;
  slot->ud = t;
}

/* Ends the handle's validity; runs after every audit call, on every path.
 * The core detects a stale cl_tx too, but the handle can outlive the
 * engine itself, so it must not keep the pointer.  The slot, not a pointer
 * kept to the userdata, tells whether the handle still exists: its __gc may
 * have run while the error unwound. */
static inline void glue_end_tx(glue_txslot *slot) {
  if (slot->ud) {
    slot->ud->tx = NULL;
    slot->ud->slot = NULL;
    slot->ud = NULL;
  }
}

/* __gc of GLUE_TX userdata. */
static inline int tx_gc(lua_State *L) {
  glue_tx *t = (glue_tx *)lua_touserdata(L, 1);
  if (t->slot) t->slot->ud = NULL;
  t->slot = NULL;
  t->tx = NULL;
  return 0;
}

/* Pushes one column value of a row as the Lua type its PostgreSQL type
 * suggests: integers, booleans, numbers, else the text. */
static inline void glue_push_cell(lua_State *L, unsigned type, const char *v) {
  switch (type) {
  case 20: /* int8 */
  case 21: /* int2 */
  case 23: /* int4 */
  case 26: /* oid */
    compat_pushint64(L, (int64_t)strtoll(v, NULL, 10));
    break;
  case 16: /* bool */
    lua_pushboolean(L, v[0] == 't');
    break;
  case 700:  /* float4 */
  case 701:  /* float8 */
  case 1700: /* numeric */
    lua_pushnumber(L, (lua_Number)strtod(v, NULL));
    break;
  default:
    lua_pushstring(L, v);
    break;
  }
}

/*
 * Binds the arguments from `first` on as text parameters ($1..): strings,
 * numbers, booleans, nil.  Returns the parameter array (a userdata left on
 * the stack, which also keeps converted numbers' text alive in their
 * argument slots).  Raises on misuse, before any C resource is taken.
 */
static inline const char **glue_bind_params(lua_State *L, int first, int *nparams_out) {
  int nparams = lua_gettop(L) - first + 1, i;
  size_t len;
  const char **params;
  if (nparams < 0) nparams = 0;
  if (nparams > 65535) luaL_error(L, "too many parameters (%d)", nparams);
  params = (const char **)compat_newuserdata(L, (size_t)(nparams ? nparams : 1) * sizeof *params);
  for (i = 0; i < nparams; i++) {
    int arg = first + i;
    char buf[40];
    int64_t iv;
    switch (lua_type(L, arg)) {
    case LUA_TNIL:
      params[i] = NULL;
      break;
    case LUA_TBOOLEAN:
      params[i] = lua_toboolean(L, arg) ? "true" : "false";
      break;
    case LUA_TNUMBER:
      if (compat_isinteger(L, arg) && compat_tointeger(L, arg, &iv)) {
        snprintf(buf, sizeof buf, "%lld", (long long)iv);
      } else {
        double d = (double)lua_tonumber(L, arg);
        if (isnan(d))
          snprintf(buf, sizeof buf, "NaN");
        else if (isinf(d))
          snprintf(buf, sizeof buf, "%s", d > 0 ? "Infinity" : "-Infinity");
        else
          snprintf(buf, sizeof buf, "%.17g", d);
      }
      lua_pushstring(L, buf);
      lua_replace(L, arg); /* keeps the text alive in the argument's slot */
      params[i] = lua_tostring(L, arg);
      break;
    case LUA_TSTRING:
      params[i] = lua_tolstring(L, arg, &len);
      if (strlen(params[i]) != len) luaL_argerror(L, arg, "string contains a NUL byte");
      break;
    default:
      luaL_argerror(L, arg, lua_pushfstring(L, "cannot bind a %s value", luaL_typename(L, arg)));
    }
  }
  *nparams_out = nparams;
  return params;
}

/* Replaces `box` (on top of the stack, made by glue_newbox before the rows
 * were acquired) with `rows` as a list of tables keyed by column name, values
 * typed as their PostgreSQL types suggest.  The box owns the rows while the
 * tables are built, so a memory error raised here frees them. */
static inline void glue_push_rows(lua_State *L, glue_box *box, cl_rows *rows) {
  int r, c, nrows, ncols, names;
  box->p = rows;
  box->drop = glue_drop_rows;
  nrows = rows ? cl_rows_count(rows) : 0;
  ncols = rows ? cl_rows_columns(rows) : 0;
  luaL_checkstack(L, ncols + 4, "too many columns");
  names = lua_gettop(L) + 1;
  for (c = 0; c < ncols; c++) lua_pushstring(L, cl_rows_name(rows, c));
  lua_createtable(L, nrows, 0);
  for (r = 0; r < nrows; r++) {
    lua_createtable(L, 0, ncols);
    for (c = 0; c < ncols; c++) {
      const char *v = cl_rows_value(rows, r, c);
      if (v == NULL) continue; /* SQL NULL is nil */
      lua_pushvalue(L, names + c);
      glue_push_cell(L, cl_rows_type(rows, c), v);
      lua_rawset(L, -3);
    }
    lua_rawseti(L, -2, r + 1);
  }
  glue_box_release(box);
  lua_replace(L, names - 1); /* the list over the box */
  lua_settop(L, names - 1);
}

/*
 * tx:exec(sql, ...) -> { row, ... }
 * Runs one statement in the operation's transaction, $1.. bound to the
 * extra arguments (strings, numbers, booleans, nil), never interpolated.
 * Raises on misuse (handle used after its call, a table as a parameter)
 * and on SQL errors; after an SQL error the transaction is aborted and the
 * core fails the operation even if the script catches the error.
 */
static inline int tx_exec(lua_State *L) {
  glue_tx *t = (glue_tx *)luaL_checkudata(L, 1, GLUE_TX);
  size_t len;
  const char *sql = luaL_checklstring(L, 2, &len);
  int nparams;
  const char **params;
  glue_box *box;
  cl_rows *rows = NULL;
  cl_error err;
  cl_status st;

  if (t->tx == NULL)
    return luaL_error(L, "attempt to use a transaction handle outside its audit call");
  if (strlen(sql) != len) return luaL_argerror(L, 2, "SQL contains a NUL byte");
  params = glue_bind_params(L, 3, &nparams);
  box = glue_newbox(L, 0);
  st = cl_tx_exec(t->tx, sql, nparams, params, &rows, &err);
  if (st != CL_OK) {
    if (rows) cl_rows_free(rows);
    return luaL_error(L, "tx:exec: %s", err.message);
  }
  glue_push_rows(L, box, rows);
  return 1;
}

/* Registers the glue's metatables in a state.  Raises on memory. */
static inline void glue_register(lua_State *L) {
  static const luaL_Reg tx_methods[] = {{"exec", tx_exec}, {NULL, NULL}};
  luaL_newmetatable(L, GLUE_BOX);
  lua_pushcfunction(L, box_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newmetatable(L, GLUE_TX);
  lua_pushcfunction(L, tx_gc);
  lua_setfield(L, -2, "__gc");
  luaL_newlib(L, tx_methods);
  lua_setfield(L, -2, "__index");
  lua_pushliteral(L, "cairnloop.tx");
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
}

/*
 * list_events gets a tx handle too, so that an auditor which writes rows can
 * read them back; it runs its statements outside any transaction.  The
 * engine's own cl_tx is borrowed for that call (cl_auditor.list_events has
 * no tx parameter).
 */
static inline cl_tx *glue_list_tx_begin(cl_engine *eng) {
  eng->tx.eng = eng;
  eng->tx.active = true;
  eng->tx.failed = false;
  return &eng->tx;
}

static inline void glue_list_tx_end(cl_engine *eng) { eng->tx.active = false; }

/* ------------------------------------------------------------------ */
/* Hook frames: run inside lua_pcall, argument 1 a glue_call            */
/* ------------------------------------------------------------------ */

/*
 * One hook call.  The frames below build the arguments inside protection
 * (an out-of-memory there is a hook error, not a panic), call the hook and
 * check the shape of what it returned.  After lua_call returns they use only
 * calls that cannot raise, because they may then hold C memory.
 */
typedef struct glue_call {
  const char *hook; /* "auditor.audit", ...: names the hook in messages */
  int fn_ref;       /* the hook function */
  int cfg_ref;      /* telemetry: the handler's config (LUA_REFNIL for nil) */

  cl_tx *tx; /* auditor */
  glue_txslot txslot;
  const char *action;
  const char *actor;
  const cl_metadata *metadata;       /* auditor and telemetry */
  const cl_measurements *measurements;
  const char *const *event;
  const char *opts_json;             /* list_events */
  const cl_message *message;         /* notifier */
  const cl_conversation *conversation;
  const char *idempotency_key;
  int attempt;

  int keep_ref;    /* host auditor: keep the value itself, not its JSON */
  int audit_ref;   /* out when keep_ref: registry ref of the value */
  char **json_out; /* out: malloc'd JSON (audit_json, events_json) */
  char **str_out;  /* out: malloc'd resolved actor */

  cl_status status; /* the hook's verdict when the call itself succeeded */
  cl_error *err;
} glue_call;

/* The hook returned `nil, reason`: a refusal with that reason. */
static inline int glue_refused(lua_State *L, glue_call *c, cl_status code) {
  char reason[CL_ERROR_MESSAGE_MAX];
  glue_describe(L, -1, reason, sizeof reason);
  c->status = cl__fail(c->err, code, "%s: %s", c->hook, reason);
  return 0;
}

/* Stores the value at `idx` as JSON in *c->json_out, or fails the call. */
static inline int glue_store_json(lua_State *L, int idx, int empty_is_array, glue_call *c) {
  char why[96];
  char *text;
  json_t *j = glue_to_json(L, idx, 0, empty_is_array, why, sizeof why);
  if (j == NULL) {
    c->status = cl__fail(c->err, CL_HOOK_ERROR, "%s: return value cannot be encoded as JSON: %s",
                         c->hook, why);
    return 0;
  }
  text = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
  json_decref(j);
  if (text == NULL) {
    c->status = cl__fail(c->err, CL_HOOK_ERROR, "%s: out of memory", c->hook);
    return 0;
  }
  *c->json_out = text;
  return 0;
}

/* audit(tx, action, actor, metadata) -> value | nil, reason */
static inline int glue_audit_frame(lua_State *L) {
  glue_call *c = (glue_call *)lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->fn_ref);
  glue_push_tx(L, c->tx, &c->txslot);
  lua_pushstring(L, c->action);
  if (c->actor)
    lua_pushstring(L, c->actor);
  else
    lua_pushnil(L);
  glue_push_map(L, c->metadata);
  lua_call(L, 4, 2); /* value reason */
  if (lua_isnil(L, -2) && !lua_isnil(L, -1)) return glue_refused(L, c, CL_AUDIT_REJECTED);
  if (c->keep_ref) {
    lua_pop(L, 1); /* value */
    c->audit_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
  }
  if (lua_isnil(L, -2)) return 0;
  return glue_store_json(L, -2, 0, c);
}

/* resolve(actor, ctx) -> actor | nil | nil, reason */
static inline int glue_resolve_frame(lua_State *L) {
  glue_call *c = (glue_call *)lua_touserdata(L, 1);
  size_t len;
  const char *s;
  char *copy;
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->fn_ref);
  if (c->actor)
    lua_pushstring(L, c->actor);
  else
    lua_pushnil(L);
  lua_createtable(L, 0, 1);
  lua_pushstring(L, c->action);
  lua_setfield(L, -2, "action");
  lua_call(L, 2, 2); /* actor reason */
  if (lua_isnil(L, -2)) return lua_isnil(L, -1) ? 0 : glue_refused(L, c, CL_ACTOR_REJECTED);
  if (lua_type(L, -2) != LUA_TSTRING) {
    c->status = cl__fail(c->err, CL_HOOK_ERROR, "%s: returned a %s (expected a string or nil)",
                         c->hook, luaL_typename(L, -2));
    return 0;
  }
  s = lua_tolstring(L, -2, &len);
  if (strlen(s) != len) {
    c->status = cl__fail(c->err, CL_HOOK_ERROR, "%s: returned a string with a NUL byte", c->hook);
    return 0;
  }
  if ((copy = (char *)malloc(len + 1)) == NULL) {
    c->status = cl__fail(c->err, CL_HOOK_ERROR, "%s: out of memory", c->hook);
    return 0;
  }
  memcpy(copy, s, len + 1);
  *c->str_out = copy;
  return 0;
}

/* list_events(opts, tx) -> { event, ... }; tx runs reads outside any transaction */
static inline int glue_list_frame(lua_State *L) {
  glue_call *c = (glue_call *)lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->fn_ref);
  glue_push_json_text(L, c->opts_json);
  if (c->tx)
    glue_push_tx(L, c->tx, &c->txslot);
  else
    lua_pushnil(L);
  lua_call(L, 2, 2); /* events reason */
  if (lua_isnil(L, -2) && !lua_isnil(L, -1)) return glue_refused(L, c, CL_HOOK_ERROR);
  if (lua_isnil(L, -2)) {
    lua_newtable(L); /* no events: an empty list */
    lua_replace(L, -3);
  }
  return glue_store_json(L, -2, 1, c);
}

/* deliver(message, conversation, { idempotency_key, attempt }) -> truthy | false/nil, reason */
static inline int glue_deliver_frame(lua_State *L) {
  glue_call *c = (glue_call *)lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->fn_ref);
  glue_push_message(L, c->message);
  glue_push_conversation(L, c->conversation);
  lua_createtable(L, 0, 2);
  glue_setstr(L, "idempotency_key", c->idempotency_key);
  glue_setint(L, "attempt", c->attempt);
  lua_call(L, 3, 2); /* delivered reason */
  if (lua_toboolean(L, -2)) return 0;
  if (lua_isnil(L, -1)) {
    c->status = cl__fail(c->err, CL_HOOK_ERROR, "%s: returned %s", c->hook,
                         lua_isnil(L, -2) ? "nil" : "false");
    return 0;
  }
  return glue_refused(L, c, CL_HOOK_ERROR);
}

/* handler(event, measurements, metadata, config) */
static inline int glue_handler_frame(lua_State *L) {
  glue_call *c = (glue_call *)lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->fn_ref);
  glue_push_event(L, c->event);
  glue_push_map(L, c->measurements);
  glue_push_map(L, c->metadata);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->cfg_ref);
  lua_call(L, 4, 0);
  return 0;
}

/*
 * Fills c->err (never NULL here) after a failed lua_pcall of a frame, the
 * error object on top, and logs the message and the traceback.  `budget`
 * says whether the budget ran out: the flag decides, never the message
 * text, which a script could forge or swallow.
 */
static inline void glue_call_failed(lua_State *L, cl_engine *eng, int rc, const glue_budget *budget,
                                    size_t mem_limit, glue_call *c) {
  const char *full = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(no message)";
  const char *tb = glue_error_text(c->hook, full, c->err), *line;
  if (budget && budget->exceeded != GLUE_WITHIN) {
    glue_budget_fail(budget, c->hook, c->err);
  } else if (rc == LUA_ERRMEM) {
    /* No traceback: Lua does not call the handler for memory errors. */
    if (mem_limit)
      cl__fail(c->err, CL_HOOK_ERROR, "%s: memory limit exceeded (%zu bytes)", c->hook, mem_limit);
    else
      cl__fail(c->err, CL_HOOK_ERROR, "%s: not enough memory", c->hook);
    tb = NULL;
  }
  /* An auditor that raised only because the operation's own statement
   * already failed (a duplicate, an unknown conversation: its tx:exec then
   * meets an aborted transaction) is not the failure: the operation
   * reports the statement's.  Keep that out of the error log. */
  cl_log_level level = cl__db_tx_doomed(&eng->db) ? CL_LOG_DEBUG : CL_LOG_ERROR;
  cl_log(eng, level, "%s", c->err->message);
  /* One log line per traceback line: the sink takes single lines. */
  for (line = tb; line && *line;) {
    const char *end = strchr(line, '\n');
    size_t n = end ? (size_t)(end - line) : strlen(line);
    char buf[CL_ERROR_MESSAGE_MAX];
    glue_one_line(buf, sizeof buf, line, n);
    cl_log(eng, level, "%s: %s", c->hook, buf);
    line = end ? end + 1 : NULL;
  }
}

#endif
