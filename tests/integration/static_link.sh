#!/usr/bin/env bash
# libcairnloop.a links into a program that carries its own static Lua 5.4
# (a game server embedding Lua, say): the engine's private Lua is local to
# the archive, so the two never collide, and each side runs its own Lua.
# Regression: 190 Lua internals (luaE_setdebt, luaV_execute, ...) stayed
# global in the archive and the link failed with "multiple definition".
set -u
cd "$(dirname "$0")/../.."
n=0 fail=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
nok() { n=$((n + 1)); fail=1; echo "not ok $n - $1"; shift; for l in "$@"; do echo "#   $l"; done; }

tmp=$(mktemp -d /tmp/cairnloop-static.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
lua_a="$(pkg-config --variable=libdir lua5.4)/liblua5.4.a"

extra=$(nm --defined-only build/libcairnloop.a 2>/dev/null | awk '$2 ~ /^[A-Z]$/ {print $3}' | grep -v '^cl_' | head -n 5 | tr '\n' ' ')
if [ -z "$extra" ]; then ok "libcairnloop.a defines only cl_* global symbols"
else nok "libcairnloop.a defines only cl_* global symbols" "also: $extra..."; fi

cat >"$tmp/host.c" <<'C'
#include <cairnloop.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>

int main(void) {
  /* The host's own Lua... */
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  if (luaL_dostring(L, "return 6 * 7") != LUA_OK || lua_tointeger(L, -1) != 42) return 1;
  lua_close(L);
  /* ... and the engine, whose validation runs before any connection. */
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.schema = "Not-A-Schema";
  cl_engine *eng = NULL;
  cl_error err;
  if (cl_open(&eng, &cfg, &err) != CL_INVALID_ARGUMENT) return 2;
  printf("%s %s\n", cl_status_name(err.code), strstr(err.message, "schema") ? "schema" : "?");
  return 0;
}
C
if out=$(cc -std=c11 -Iinclude $(pkg-config --cflags lua5.4) -o "$tmp/host" "$tmp/host.c" \
      build/libcairnloop.a "$lua_a" $(pkg-config --libs libpq uuid jansson libcurl libcrypto) -lm -ldl 2>&1); then
  ok "a program with its own static Lua 5.4 links libcairnloop.a"
else
  nok "a program with its own static Lua 5.4 links libcairnloop.a" "$(echo "$out" | head -n 3)"
  rm -f "$tmp/host"
fi
out="not built"
if [ -x "$tmp/host" ] && out=$("$tmp/host" 2>&1) && [ "$out" = "invalid_argument schema" ]; then
  ok "both Lua states and the engine work in that program"
else
  nok "both Lua states and the engine work in that program" "$out"
fi
echo "1..$n"
exit $fail
