/*
 * lua_stdio.c - stdio streams for the engine's private Lua 5.4.
 *
 * Debian's liblua5.4.a is built as position-dependent code: its direct
 * references to stdin/stdout/stderr cannot be linked into a shared object.
 * The build renames those references to the variables below (objcopy
 * --redefine-sym), which are ours, so they link from anywhere; a
 * constructor points them at the real streams before any Lua code runs.
 */
#include <stdio.h>

FILE *cl__lua_stdin;
FILE *cl__lua_stdout;
FILE *cl__lua_stderr;

__attribute__((constructor)) static void lua_stdio_init(void) {
  cl__lua_stdin = stdin;
  cl__lua_stdout = stdout;
  cl__lua_stderr = stderr;
}
