/*
 * run.h - the `run` and `demo` commands of `cairnloop` (run.c): a
 * host Lua 5.4 state with the `cairnloop` module registered in-process and
 * an open engine, running a script (`run`) or the example campaign on the
 * embedded cluster (`demo`).
 */
#ifndef CL_CLI_RUN_H
#define CL_CLI_RUN_H

#include "cli.h"

#include <limits.h>

/* `run` takes the script and any number of arguments for it. */
#define CLI_RUN_MAX_ARGS INT_MAX

int cli_cmd_run(cli_ctx *ctx);
int cli_cmd_demo(cli_ctx *ctx);

/*
 * From a build in a checkout, points $CAIRNLOOP_LUA_PATH (when unset) at
 * the checkout's lua/, so that the engine's policy state and scripts find
 * the ready-made modules there; an installed program finds its own.
 */
void cli_lua_path_default(void);

#endif
