/*
 * lua_compat.h - the Lua headers and the few version branches between
 * Lua 5.4 and LuaJIT 2.1 (OpenResty's fork), kept here so that the glue
 * code itself has no #if.  Included by policy.c (always Lua 5.4), by
 * lua_module.c (Lua 5.4 or LuaJIT) and by lua_glue.inc.
 */
#ifndef CL_LUA_COMPAT_H
#define CL_LUA_COMPAT_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <stdint.h>
#include <stdio.h>

#if LUA_VERSION_NUM < 502
/* LuaJIT: lua.h does not include luajit.h, which names the runtime. */
#include <luajit.h>
#define CL_LUAJIT 1
#else
#define CL_LUAJIT 0
#endif

#if CL_LUAJIT

/* The OpenResty headers already provide luaL_setfuncs, luaL_newlib,
 * luaL_testudata, luaL_setmetatable, luaL_traceback, luaL_loadfilex,
 * lua_tointegerx and LUA_OK; redefining them would not compile. */
#define compat_absindex(L, i) \
  (((i) > 0 || (i) <= LUA_REGISTRYINDEX) ? (i) : lua_gettop(L) + (i) + 1)
#define compat_rawlen(L, i) lua_objlen((L), (i))
#define compat_newuserdata(L, size) lua_newuserdata((L), (size))

static inline void compat_rawgetp(lua_State *L, int t, const void *p) {
  t = compat_absindex(L, t);
  lua_pushlightuserdata(L, (void *)p);
  lua_rawget(L, t);
}

static inline void compat_rawsetp(lua_State *L, int t, const void *p) {
  t = compat_absindex(L, t);
  lua_pushlightuserdata(L, (void *)p);
  lua_insert(L, -2);
  lua_rawset(L, t);
}

/* Numbers are doubles: only integers up to 2^53 are exact. */
#define CL_LUA_MAX_EXACT_INT ((int64_t)1 << 53)

/*
 * Reads a number that must be an integer.  Returns 1 and sets *out when the
 * value at `i` is a number with no fraction that is exact in a double.
 */
static inline int compat_tointeger(lua_State *L, int i, int64_t *out) {
  lua_Number n;
  if (lua_type(L, i) != LUA_TNUMBER) return 0;
  n = lua_tonumber(L, i);
  if (n != n || n < -(lua_Number)CL_LUA_MAX_EXACT_INT || n > (lua_Number)CL_LUA_MAX_EXACT_INT)
    return 0;
  if ((lua_Number)(int64_t)n != n) return 0;
  *out = (int64_t)n;
  return 1;
}

/* Pushes a 64-bit integer; past 2^53 as its decimal string, never rounded. */
static inline void compat_pushint64(lua_State *L, int64_t v) {
  if (v > CL_LUA_MAX_EXACT_INT || v < -CL_LUA_MAX_EXACT_INT) {
    char buf[24];
    snprintf(buf, sizeof buf, "%lld", (long long)v);
    lua_pushstring(L, buf);
  } else {
    lua_pushnumber(L, (lua_Number)v);
  }
}

static inline int compat_isinteger(lua_State *L, int i) {
  int64_t v;
  return compat_tointeger(L, i, &v);
}

/*
 * LuaJIT runs compiled traces without calling hooks: under a count hook,
 * `while true do end` spins forever once the JIT has compiled it, and a
 * trace compiled before jit.off() still runs after it (both checked with
 * LuaJIT 2.1 here).  So for the length of a host hook call the JIT is off
 * (nothing new gets compiled) and the hook function's own traces are
 * flushed.  Code the JIT compiled earlier in other functions the hook calls
 * still runs unbudgeted.  Never raises.  Returns what compat_hook_end()
 * needs to put the JIT back as it was.
 */
static inline int compat_hook_begin(lua_State *L, int fn_ref) {
  int top = lua_gettop(L), was_on = 1; /* LuaJIT starts with the JIT on */
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "jit");
    if (lua_istable(L, -1)) {
      lua_getfield(L, -1, "status"); /* jit.status() -> on, flags... */
      if (lua_isfunction(L, -1) && lua_pcall(L, 0, 1, 0) == LUA_OK) was_on = lua_toboolean(L, -1);
    }
  }
  lua_settop(L, top);
  if (was_on) luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
  lua_rawgeti(L, LUA_REGISTRYINDEX, fn_ref);
  luaJIT_setmode(L, -1, LUAJIT_MODE_ALLFUNC | LUAJIT_MODE_FLUSH); /* 0 for a C function */
  lua_pop(L, 1);
  return was_on;
}

static inline void compat_hook_end(lua_State *L, int was_on) {
  if (was_on) luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_ON);
}

#else /* Lua 5.4 */

#define compat_absindex(L, i) lua_absindex((L), (i))
#define compat_rawlen(L, i) lua_rawlen((L), (i))
#define compat_newuserdata(L, size) lua_newuserdatauv((L), (size), 0)
#define compat_rawgetp(L, t, p) ((void)lua_rawgetp((L), (t), (p)))
#define compat_rawsetp(L, t, p) lua_rawsetp((L), (t), (p))

/* Integers, and floats with an exact integer value (1.0), are accepted. */
static inline int compat_tointeger(lua_State *L, int i, int64_t *out) {
  int ok = 0;
  lua_Integer v;
  if (lua_type(L, i) != LUA_TNUMBER) return 0; /* no string coercion */
  v = lua_tointegerx(L, i, &ok);
  if (!ok) return 0;
  *out = (int64_t)v;
  return 1;
}

static inline void compat_pushint64(lua_State *L, int64_t v) { lua_pushinteger(L, (lua_Integer)v); }

#define compat_isinteger(L, i) lua_isinteger((L), (i))

/* Lua 5.4 calls count hooks on every path: nothing to do around a hook call. */
#define compat_hook_begin(L, fn_ref) ((void)(L), (void)(fn_ref), 0)
#define compat_hook_end(L, was_on) ((void)(L), (void)(was_on))

#endif

#endif
