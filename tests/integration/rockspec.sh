#!/usr/bin/env bash
# `luarocks make` builds the Lua 5.4 module from the rockspec and installs
# it, with the pure-Lua modules, into a LuaRocks tree; a Lua program that
# sees only that tree (not the checkout) loads it, and a policy script
# loaded by the installed module finds the ready-made policies of the tree.
set -u
. "$(dirname "$0")/cli_lib.bash"
need_database
root=$CLI_TEST_ROOT

if ! command -v luarocks >/dev/null; then
  tap 1 "luarocks is installed (tools/deps.sh installs it)"
  exit 1
fi
tree=$cl_tmp/tree
rockspec=$(ls "$root"/cairnloop-*.rockspec | head -n 1)
out=$(cd "$root" && luarocks --lua-version 5.4 --tree "$tree" make "$rockspec" 2>&1)
rc=$?
is "$rc" 0 "luarocks make builds and installs the rock"
[ -f "$tree/lib/lua/5.4/cairnloop.so" ] && [ -f "$tree/share/lua/5.4/cairnloop/metrics.lua" ]
tap $? "the module and the pure-Lua modules are in the tree"
out=$(cd "$root" && luarocks --lua-version 5.4 --tree "$tree" list 2>&1)
like "$out" "cairnloop"$'\n'"   0\.1\.0-1" "luarocks lists the rock"

cat >"$cl_tmp/policy.lua" <<'LUA'
local cl = require "cairnloop"
local metrics = require "cairnloop.metrics"
cl.log("info", "metrics module: " .. type(metrics))
LUA
cat >"$cl_tmp/main.lua" <<'LUA'
local cairnloop = require "cairnloop"
assert(package.searchpath("cairnloop", package.cpath):find(arg[1], 1, true), "module from the tree")
local engine, code, msg = cairnloop.open { policy = arg[2] }
if not engine then error(code .. ": " .. msg) end
engine:close()
print("ok " .. cairnloop.VERSION)
LUA
# Only the tree on the paths, from a directory outside the checkout, and
# no CAIRNLOOP_LUA_PATH: what an installed rock finds, it finds by itself.
rc=0
out=$(cd "$cl_tmp" && env -u CAIRNLOOP_LUA_PATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 \
  LUA_PATH="$tree/share/lua/5.4/?.lua;$tree/share/lua/5.4/?/init.lua;;" \
  LUA_CPATH="$tree/lib/lua/5.4/?.so;;" lua5.4 main.lua "$tree" "$cl_tmp/policy.lua" 2>&1) || rc=$?
is "$rc" 0 "the installed module opens an engine with a policy that requires cairnloop.metrics"
like "$out" "^ok [0-9]+\.[0-9]+\.[0-9]+" "and reports its version"

# Installed objects never look into the checkout they were built in: no
# path of it is compiled into the rock's module, nor into what `make
# install` installs.
hits=$(grep -rlF "$root/lua" "$tree/lib" 2>/dev/null)
is "$hits" "" "the installed rock holds no path into the checkout"
dest=$cl_tmp/dest
out=$(cd "$root" && make --no-print-directory install DESTDIR="$dest" 2>&1) || tap 1 "make install" "$out"
hits=$(grep -rlF "$root/lua" "$dest" 2>/dev/null | sed "s|^$dest||")
is "$hits" "" "what make install installs holds no path into the checkout"
