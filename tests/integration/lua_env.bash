# Sourced by tools/check.sh and the integration test libraries (not run:
# its name keeps it out of the *.sh suites).
#
#   cl_lua_env ROOT   points every Lua search at the checkout ROOT
#
# The suites test the checkout, so Lua must find our modules only in its
# lua/ and build/, never in a copy that `make install` left under
# /usr/local: Lua's default search paths start there, and the engine's
# policy state and `cairnloop run` fall back to the install directory
# compiled into them.  A stale installed module would then stand in for
# one the checkout lacks or that a test expects to be missing.  So:
#   - CAIRNLOOP_LUA_PATH is ROOT/lua: the policy state's require and
#     `cairnloop run` search it instead of lua/ and then the install dir;
#   - LUA_PATH_5_4 / LUA_CPATH_5_4 (Lua 5.4 reads these first) and
#     LUA_PATH / LUA_CPATH (LuaJIT) are each interpreter's default paths
#     without their /usr/local entries.  The system's packages (busted,
#     dkjson, lua-cjson under /usr) stay reachable; the checkout's lua/ and
#     build/ come from the suites' own --lpath/--cpath and the engine.
# Suites that test the search path itself set these their own way.

# cl_lua_default_path INTERP path|cpath: INTERP's built-in path, /usr/local left out.
cl_lua_default_path() {
  env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u LUA_INIT -u LUA_INIT_5_4 \
    "$1" -e "io.write(package.$2)" 2>/dev/null |
    tr ';' '\n' | grep -v '^/usr/local/' | paste -sd ';' -
}

cl_lua_env() {
  local root=$1
  export CAIRNLOOP_LUA_PATH="$root/lua"
  if command -v lua5.4 >/dev/null; then
    LUA_PATH_5_4=$(cl_lua_default_path lua5.4 path)
    LUA_CPATH_5_4=$(cl_lua_default_path lua5.4 cpath)
    export LUA_PATH_5_4 LUA_CPATH_5_4
  fi
  if command -v luajit >/dev/null; then
    LUA_PATH=$(cl_lua_default_path luajit path)
    LUA_CPATH=$(cl_lua_default_path luajit cpath)
    export LUA_PATH LUA_CPATH
  fi
}
