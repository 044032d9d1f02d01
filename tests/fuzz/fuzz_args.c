/*
 * libFuzzer target: the command's argument handling (cli_parse in
 * cli/main.c: getopt_long over the common and the command's options, the
 * command table, argument counts) on arbitrary argument vectors.  The
 * input is split at NUL bytes into arguments after "cairnloop".  Nothing
 * is run: cli_parse only decides what would run (usage errors and help go
 * to stdout/stderr, which tests/integration/fuzz.sh closes with
 * -close_fd_mask).  Checks that a parse that succeeds names a command
 * whose argument count it checked, and that a failure is an exit status of
 * the table with nothing to run.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_ARGS 24

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *buf = malloc(size + 1);
  if (!buf) abort();
  memcpy(buf, data, size);
  buf[size] = '\0';
  char *argv[MAX_ARGS + 2];
  int argc = 0;
  argv[argc++] = "cairnloop";
  for (size_t at = 0; at <= size && argc <= MAX_ARGS; argc++) {
    argv[argc] = buf + at;
    at += strlen(buf + at) + 1;
  }
  argv[argc] = NULL;

  cli_ctx ctx;
  memset(&ctx, 0, sizeof ctx);
  int (*run)(cli_ctx * ctx) = NULL;
  int rc = cli_parse(&ctx, argc, argv, &run);
  if (rc == CLI_CONTINUE) {
    if (!run || !ctx.command || ctx.nargs < 0 || ctx.args + ctx.nargs > argv + argc) abort();
  } else if (rc < 0 || rc > 6 || run) {
    abort(); /* an exit status of the table, and nothing to run */
  }
  free(buf);
  return 0;
}
