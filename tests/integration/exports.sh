#!/usr/bin/env bash
# The shared objects export exactly their contract: the Lua modules only
# luaopen_cairnloop, libcairnloop only cl_* (no Lua, no internals), and each
# module flavour refuses to load into the other runtime.
set -u
cd "$(dirname "$0")/../.."
n=0 fail=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
nok() { n=$((n + 1)); fail=1; echo "not ok $n - $1"; shift; for l in "$@"; do echo "#   $l"; done; }

for mod in build/lua5.4/cairnloop.so build/luajit/cairnloop.so; do
  syms=$(nm -D --defined-only "$mod" | awk '{print $3}' | sort | tr '\n' ' ')
  if [ "$syms" = "luaopen_cairnloop " ]; then ok "$mod exports only luaopen_cairnloop"
  else nok "$mod exports only luaopen_cairnloop" "got: $syms"; fi
done

extra=$(nm -D --defined-only build/libcairnloop.so | awk '{print $3}' | grep -v '^cl_' | tr '\n' ' ')
if [ -z "$extra" ]; then ok "libcairnloop.so exports only cl_* symbols"
else nok "libcairnloop.so exports only cl_* symbols" "also: $extra"; fi

if nm -D --defined-only build/libcairnloop.so | awk '{print $3}' | grep -q '^cl_bulk_trigger$'; then
  ok "libcairnloop.so exports the public API"
else nok "libcairnloop.so exports the public API"; fi

out=$(luajit -e 'package.cpath="build/lua5.4/?.so"' -e 'print(pcall(require, "cairnloop"))' 2>&1)
case $out in false*) ok "the Lua 5.4 build refuses to load into LuaJIT" ;;
  *) nok "the Lua 5.4 build refuses to load into LuaJIT" "$out" ;; esac
out=$(lua5.4 -e 'package.cpath="build/luajit/?.so"' -e 'print(pcall(require, "cairnloop"))' 2>&1)
case $out in false*luaJIT_setmode*) ok "the LuaJIT build refuses to load into Lua 5.4" ;;
  *) nok "the LuaJIT build refuses to load into Lua 5.4" "$out" ;; esac
echo "1..$n"
exit $fail
