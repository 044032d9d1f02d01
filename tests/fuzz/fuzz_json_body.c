/*
 * libFuzzer target: the JSON request bodies of the OpenResty example's
 * routes (M.decode_object in examples/openresty/cairnloop_http.lua: the
 * number scan that keeps LuaJIT's doubles from rounding ids, lua-cjson's
 * decoder, the field check), run in LuaJIT as nginx runs it.  Checks that
 * it never raises, that a refusal is a 400 or 422 with a code and a
 * message, and that an accepted body is an object of known fields whose
 * numbers are all integers within +-2^53.
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;

static void close_state(void) { lua_close(L); }

/* The module needs the engine module and ngx only inside its routes (ngx's
 * log level constants at load): stubs do. */
static const char setup[] =
    "ngx = setmetatable({}, { __index = function() return 0 end })\n"
    "package.path = 'examples/openresty/?.lua;' .. package.path\n"
    "package.preload['cairnloop'] = function() return {} end\n"
    "package.preload['cairnloop.metrics'] = function() return {} end\n"
    "local http = require 'cairnloop_http'\n"
    "local fields = { ids = true, template_id = true, rendered_body = true, actor = true,\n"
    "                 envelope_id = true, schedule_in = true, content = true }\n"
    "local function numbers_safe(v, depth)\n"
    "  if depth > 40 then return true end\n"
    "  if type(v) == 'number' then\n"
    "    return v == math.floor(v) and v >= -2^53 and v <= 2^53\n"
    "  elseif type(v) == 'table' then\n"
    "    for k, x in pairs(v) do\n"
    "      if not numbers_safe(k, depth + 1) or not numbers_safe(x, depth + 1) then return false end\n"
    "    end\n"
    "  end\n"
    "  return true\n"
    "end\n"
    "return function(body)\n"
    "  local v, status, code, message = http.decode_object(body, fields)\n"
    "  if v == nil then\n"
    "    assert(status == 400 or status == 422, 'status ' .. tostring(status))\n"
    "    assert(type(code) == 'string' and type(message) == 'string', 'code and message')\n"
    "    return\n"
    "  end\n"
    "  assert(type(v) == 'table', 'an object')\n"
    "  for k in pairs(v) do assert(fields[k], 'a known field') end\n"
    "  assert(numbers_safe(v, 0), 'every number an integer within 2^53')\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!L) {
    L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_loadstring(L, setup) != 0 || lua_pcall(L, 0, 1, 0) != 0) {
      fprintf(stderr, "setup: %s\n", lua_tostring(L, -1));
      abort();
    }
    lua_setfield(L, LUA_REGISTRYINDEX, "fuzz_check");
    if (atexit(close_state) != 0) abort();
  }
  lua_getfield(L, LUA_REGISTRYINDEX, "fuzz_check");
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 0, 0) != 0) {
    fprintf(stderr, "decode_object failed its contract: %s\n", lua_tostring(L, -1));
    abort();
  }
  /* Bounded memory across runs: collect what each body allocated. */
  lua_gc(L, LUA_GCSTEP, 0);
  return 0;
}
