/*
 * cli.h - what the units of the `cairnloop` command share.
 *
 * main.c owns main(), the command table, option parsing, error reporting and
 * opening the engine; commands.c, db.c, ops.c, work.c and json.c implement
 * the commands and their output.  Nothing here is part of libcairnloop.
 */
#ifndef CL_CLI_H
#define CL_CLI_H

#include "cairnloop.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* Option ids.  Long-only options start above the character range so that
 * getopt_long's return value names the option directly. */
enum cli_opt {
  CLI_OPT_HELP = 'h',
  CLI_OPT_FIRST_LONG = 256,
  CLI_OPT_DATABASE = CLI_OPT_FIRST_LONG,
  CLI_OPT_SCHEMA,
  CLI_OPT_POLICY,
  CLI_OPT_JSON,
  CLI_OPT_VERSION,
  CLI_OPT_TEMPLATE,
  CLI_OPT_CONTENT,
  CLI_OPT_SCHEDULE_IN,
  CLI_OPT_ACTOR,
  CLI_OPT_BULK_ENVELOPE_ID,
  CLI_OPT_BODY,
  CLI_OPT_BODY_FILE,
  CLI_OPT_IDS,
  CLI_OPT_IDS_FILE,
  CLI_OPT_ENVELOPE_ID,
  CLI_OPT_MAX_BATCH_SIZE,
  CLI_OPT_STATUS,
  CLI_OPT_LIMIT,
  CLI_OPT_ONCE,
  CLI_OPT_MAX_ATTEMPTS,
  CLI_OPT_LEASE_SECONDS,
  CLI_OPT_BACKOFF_BASE_MS,
  CLI_OPT_STATE,
  CLI_OPT_ENVELOPE,
  CLI_OPT_ALL_DISCARDED,
  CLI_OPT_OLDER_THAN,
  CLI_OPT_RETENTION_COMPLETED,
  CLI_OPT_RETENTION_FAILED,
  CLI_OPT_RETENTION_INTERVAL_MS,
  CLI_OPT_MIGRATE_STATUS, /* migrate --status: a flag, unlike envelopes --status S */
  CLI_OPT_METRICS,
  CLI_OPT_NO_PREPARED_STATEMENTS,
  CLI_OPT_CONCURRENCY,
  CLI_OPT_RATE,
  CLI_OPT_HTTP_ALLOW,
  CLI_OPT_END
};

#define CLI_MAX_POLICIES 32
#define CLI_MAX_HTTP_ALLOW 64

/* The parsed command line of one invocation. */
typedef struct cli_ctx {
  const char *command;
  /* Common options. */
  const char *database;
  const char *schema;
  const char *policies[CLI_MAX_POLICIES];
  int npolicies;
  /* --http-allow patterns, NULL-terminated (cl_config.http_allow). */
  const char *http_allow[CLI_MAX_HTTP_ALLOW + 1];
  int nhttp_allow;
  bool json;
  bool no_prepared_statements; /* for a transaction pooler (cl_config) */
  /* Command options by id (NULL when absent); values are argv strings. */
  const char *opt[CLI_OPT_END - CLI_OPT_FIRST_LONG];
  /* Positional arguments. */
  char **args;
  int nargs;
} cli_ctx;

/* The value of a command option, or NULL. */
static inline const char *cli_opt(const cli_ctx *ctx, enum cli_opt id) {
  return ctx->opt[id - CLI_OPT_FIRST_LONG];
}

/* Exit status of `db status` when the cluster is not running. */
#define CLI_EXIT_NOT_RUNNING 1

/*
 * Prints `cairnloop: <code>: <message>` on stderr (newlines in the message
 * become spaces, so the error is always one line) and returns the exit
 * status of `code`.
 */
/* What a parsing step returns when the command should go on, beside exit statuses. */
#define CLI_CONTINUE (-1)

/*
 * Parses the whole command line: the common options, the command, its
 * options and arguments.  Returns an exit status (a usage error, or 0
 * after --help/--version), or CLI_CONTINUE with ctx filled and *run the
 * command to run.  Runs nothing else, so the fuzz target can drive it.
 */
int cli_parse(cli_ctx *ctx, int argc, char **argv, int (**run)(cli_ctx *ctx));

int cli_fail(cl_status code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* The same for an engine call that returned `status` and filled `err`. */
int cli_fail_status(cl_status status, const cl_error *err);

/* Opens an engine on the configured database (starting the embedded cluster
 * when none is configured) and loads the --policy files.  On failure the
 * error is reported and the exit status returned; 0 means *out is open. */
int cli_open(const cli_ctx *ctx, cl_engine **out);
/* As cli_open, starting from a config the caller filled (delivery
 * settings, a log sink); database, schema and the log level are set here,
 * and the log sink only when the caller left it NULL. */
int cli_open_config(const cli_ctx *ctx, const cl_config *cfg, cl_engine **out);

/* $CAIRNLOOP_LOG_LEVEL, one of the engine's level names (CL_LOG_LEVEL_MAP):
 * sets *out (CL_LOG_INFO when unset) and returns 0, or reports the unknown
 * name and returns the exit status. */
int cli_log_level(cl_log_level *out);

/* Strict decimal int64 ("-7" yes; " 7", "+7", "7x", overflow no). */

/* Strict integer parsing for option values; on failure the error is
 * reported (naming `what`) and the exit status is returned, else 0. */
int cli_parse_i64(const char *what, const char *text, int64_t min, int64_t max, int64_t *out);

/* Prints one JSON value as a line on stdout and releases it (json.c). */
int cli_json_print(json_t *value);

/* JSON shapes of API.md's Lua result tables (json.c).  Each returns a
 * new reference. */
json_t *cli_json_trigger(const cl_trigger_result *res);
json_t *cli_json_bulk(const cl_bulk_result *res);
json_t *cli_json_envelope(const cl_envelope *env);

/* The commands (one function each). */
int cli_cmd_migrate(cli_ctx *ctx);
int cli_cmd_trigger(cli_ctx *ctx);
int cli_cmd_bulk(cli_ctx *ctx);
int cli_cmd_envelopes(cli_ctx *ctx);
int cli_cmd_db(cli_ctx *ctx);
int cli_cmd_work(cli_ctx *ctx); /* work.c */
/* ops.c */
int cli_cmd_jobs(cli_ctx *ctx);
int cli_cmd_stats(cli_ctx *ctx);
int cli_cmd_retry(cli_ctx *ctx);
int cli_cmd_cancel(cli_ctx *ctx);
int cli_cmd_pause(cli_ctx *ctx);
int cli_cmd_resume(cli_ctx *ctx);
int cli_cmd_prune(cli_ctx *ctx);

/* A duration: a whole number with an optional unit s, m, h, d or w ("36h",
 * "7d"; none: seconds), at most ten years.  On failure the error is
 * reported (naming `what`) and the exit status returned, else 0 (ops.c). */
int cli_parse_duration(const char *what, const char *text, int64_t *seconds);

/* The embedded cluster (db.c): starts it if needed and writes its
 * connection URL (malloc'd) to *url.  Returns 0 or a reported exit status. */
int cli_db_ensure(char **url);

#endif
