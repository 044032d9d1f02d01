/*
 * main.c - main() of the `cairnloop` command: the command table, option
 * parsing (getopt_long, common options before or after the command), help,
 * the one-line error channel and opening an engine on the right database.
 * The commands themselves live in commands.c, db.c, ops.c and work.c; the JSON
 * shapes in json.c.  Uses only the public API of libcairnloop.
 */
#include "cli.h"
#include "parse.h"
#include "run.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* Command flags. */
#define CLI_ENGINE \
  0x1                    /* opens an engine: accepts --database, --schema, --policy,
                          --no-prepared-statements */
#define CLI_ARGS_RAW 0x2 /* options end at the first argument: the rest is the script's */

typedef struct cli_command {
  const char *name;
  int (*run)(cli_ctx *ctx);
  unsigned flags;
  const int *options; /* the command's own option ids, 0-terminated */
  int min_args, max_args;
  const char *summary; /* one line in `cairnloop --help` */
  const char *help;    /* synopsis, description and the command's options */
} cli_command;

/* Every option any command takes; the commands pick theirs by id. */
static const struct option all_options[] = {
    {"help", no_argument, NULL, CLI_OPT_HELP},
    {"version", no_argument, NULL, CLI_OPT_VERSION},
    {"json", no_argument, NULL, CLI_OPT_JSON},
    {"database", required_argument, NULL, CLI_OPT_DATABASE},
    {"schema", required_argument, NULL, CLI_OPT_SCHEMA},
    {"policy", required_argument, NULL, CLI_OPT_POLICY},
    {"template", required_argument, NULL, CLI_OPT_TEMPLATE},
    {"content", required_argument, NULL, CLI_OPT_CONTENT},
    {"schedule-in", required_argument, NULL, CLI_OPT_SCHEDULE_IN},
    {"actor", required_argument, NULL, CLI_OPT_ACTOR},
    {"bulk-envelope-id", required_argument, NULL, CLI_OPT_BULK_ENVELOPE_ID},
    {"body", required_argument, NULL, CLI_OPT_BODY},
    {"body-file", required_argument, NULL, CLI_OPT_BODY_FILE},
    {"ids", required_argument, NULL, CLI_OPT_IDS},
    {"ids-file", required_argument, NULL, CLI_OPT_IDS_FILE},
    {"envelope-id", required_argument, NULL, CLI_OPT_ENVELOPE_ID},
    {"max-batch-size", required_argument, NULL, CLI_OPT_MAX_BATCH_SIZE},
    {"status", required_argument, NULL, CLI_OPT_STATUS},
    {"limit", required_argument, NULL, CLI_OPT_LIMIT},
    {"once", no_argument, NULL, CLI_OPT_ONCE},
    {"max-attempts", required_argument, NULL, CLI_OPT_MAX_ATTEMPTS},
    {"lease-seconds", required_argument, NULL, CLI_OPT_LEASE_SECONDS},
    {"backoff-base-ms", required_argument, NULL, CLI_OPT_BACKOFF_BASE_MS},
    {"state", required_argument, NULL, CLI_OPT_STATE},
    {"envelope", required_argument, NULL, CLI_OPT_ENVELOPE},
    {"all-discarded", no_argument, NULL, CLI_OPT_ALL_DISCARDED},
    {"older-than", required_argument, NULL, CLI_OPT_OLDER_THAN},
    {"retention-completed", required_argument, NULL, CLI_OPT_RETENTION_COMPLETED},
    {"retention-failed", required_argument, NULL, CLI_OPT_RETENTION_FAILED},
    {"retention-interval-ms", required_argument, NULL, CLI_OPT_RETENTION_INTERVAL_MS},
    {"status", no_argument, NULL, CLI_OPT_MIGRATE_STATUS},
    {"metrics", required_argument, NULL, CLI_OPT_METRICS},
    {"no-prepared-statements", no_argument, NULL, CLI_OPT_NO_PREPARED_STATEMENTS},
    {"concurrency", required_argument, NULL, CLI_OPT_CONCURRENCY},
    {"rate", required_argument, NULL, CLI_OPT_RATE},
    {"http-allow", required_argument, NULL, CLI_OPT_HTTP_ALLOW},
};
#define N_ALL_OPTIONS (sizeof all_options / sizeof all_options[0])

/* Accepted everywhere, and before the command. */
static const int output_options[] = {CLI_OPT_HELP, CLI_OPT_VERSION, CLI_OPT_JSON, 0};
/* Accepted by the commands that open an engine, and before the command. */
static const int engine_options[] = {CLI_OPT_DATABASE, CLI_OPT_SCHEMA, CLI_OPT_POLICY,
                                     CLI_OPT_NO_PREPARED_STATEMENTS, 0};

static const int trigger_options[] = {CLI_OPT_TEMPLATE,         CLI_OPT_CONTENT,
                                      CLI_OPT_SCHEDULE_IN,      CLI_OPT_ACTOR,
                                      CLI_OPT_BULK_ENVELOPE_ID, 0};
static const int bulk_options[] = {CLI_OPT_TEMPLATE,    CLI_OPT_BODY,
                                   CLI_OPT_BODY_FILE,   CLI_OPT_IDS,
                                   CLI_OPT_IDS_FILE,    CLI_OPT_ACTOR,
                                   CLI_OPT_ENVELOPE_ID, CLI_OPT_MAX_BATCH_SIZE,
                                   CLI_OPT_SCHEDULE_IN, 0};
static const int envelopes_options[] = {CLI_OPT_TEMPLATE, CLI_OPT_STATUS, CLI_OPT_LIMIT, 0};
static const int work_options[] = {CLI_OPT_ONCE,
                                   CLI_OPT_LIMIT,
                                   CLI_OPT_CONCURRENCY,
                                   CLI_OPT_RATE,
                                   CLI_OPT_HTTP_ALLOW,
                                   CLI_OPT_MAX_ATTEMPTS,
                                   CLI_OPT_LEASE_SECONDS,
                                   CLI_OPT_BACKOFF_BASE_MS,
                                   CLI_OPT_RETENTION_COMPLETED,
                                   CLI_OPT_RETENTION_FAILED,
                                   CLI_OPT_RETENTION_INTERVAL_MS,
                                   CLI_OPT_METRICS,
                                   0};
static const int migrate_options[] = {CLI_OPT_MIGRATE_STATUS, 0};
static const int jobs_options[] = {CLI_OPT_STATE, CLI_OPT_ENVELOPE, CLI_OPT_TEMPLATE, CLI_OPT_LIMIT,
                                   0};
static const int stats_options[] = {CLI_OPT_ENVELOPE, 0};
static const int retry_options[] = {CLI_OPT_ENVELOPE, CLI_OPT_ALL_DISCARDED, CLI_OPT_ACTOR, 0};
static const int cancel_options[] = {CLI_OPT_ENVELOPE, CLI_OPT_ACTOR, 0};
static const int actor_options[] = {CLI_OPT_ACTOR, 0};
static const int prune_options[] = {CLI_OPT_OLDER_THAN, 0};
static const int no_options[] = {0};

static const cli_command commands[] = {
    {"migrate", cli_cmd_migrate, CLI_ENGINE, migrate_options, 0, 0,
     "apply the database migrations (idempotent)",
     "Usage: cairnloop migrate [--status] [COMMON OPTIONS]\n"
     "\n"
     "Creates or updates the tables in the schema and prints each migration it\n"
     "applied (with --json: one object whose \"applied\" lists them).  Running it\n"
     "again applies nothing and says the schema is up to date.\n"
     "\n"
     "Options:\n"
     "  --status                 apply nothing: list every migration, applied (with\n"
     "                           when) or pending, one a line\n"},
    {"trigger", cli_cmd_trigger, CLI_ENGINE, trigger_options, 1, 1,
     "trigger one outbound message to a conversation",
     "Usage: cairnloop trigger CONVERSATION_ID --template ID [OPTIONS]\n"
     "\n"
     "Writes one pending message and its delivery job in one transaction, with\n"
     "the policy's auditor.  Triggering the same conversation, template and\n"
     "bulk envelope again writes nothing and reports the existing message.\n"
     "\n"
     "Options:\n"
     "  --template ID            template id (required)\n"
     "  --content TEXT           message text (default: \"Outbound message using\n"
     "                           template: ID\")\n"
     "  --schedule-in S          deliver no sooner than S seconds from now (default 0)\n"
     "  --actor A                who asks; passed through the actor resolver\n"
     "  --bulk-envelope-id UUID  correlate the message with a bulk envelope\n"},
    {"bulk", cli_cmd_bulk, CLI_ENGINE, bulk_options, 0, 0,
     "send one body to a cohort under an audited envelope",
     "Usage: cairnloop bulk --template ID (--body TEXT | --body-file F)\n"
     "                      (--ids 1,2,3 | --ids-file F|-) [OPTIONS]\n"
     "\n"
     "Records an envelope with the body, the cohort and the cap of the moment,\n"
     "then one message and one delivery job per conversation, all in one\n"
     "transaction.  A cohort over the cap is refused (exit 3) and the refused\n"
     "envelope is recorded.\n"
     "\n"
     "Options:\n"
     "  --template ID            template id the body was rendered from (required)\n"
     "  --body TEXT              the rendered body, stored exactly as given\n"
     "  --body-file F            read the body from file F (- for standard input)\n"
     "  --ids 1,2,3              conversation ids, comma-separated\n"
     "  --ids-file F             conversation ids, one per line (- for standard\n"
     "                           input); blank lines are ignored\n"
     "  --actor A                who asks; stored as requested_by\n"
     "  --envelope-id UUID       caller-chosen envelope id: a retry with the same\n"
     "                           content replays, different content conflicts\n"
     "  --max-batch-size N       the cap for this call (default: 25, or\n"
     "                           $CAIRNLOOP_MAX_BATCH_SIZE)\n"
     "  --schedule-in S          deliver no sooner than S seconds from now\n"},
    {"envelopes", cli_cmd_envelopes, CLI_ENGINE, envelopes_options, 0, 0,
     "list bulk envelopes, submitted and refused, newest first",
     "Usage: cairnloop envelopes [--template ID] [--status S] [--limit N]\n"
     "\n"
     "Lists bulk envelopes, newest requested_at first: both the submitted and\n"
     "the refused lane.\n"
     "\n"
     "Options:\n"
     "  --template ID            only envelopes of this template\n"
     "  --status S               only this status (submitted, refused_cap_exceeded)\n"
     "  --limit N                at most N envelopes (default 50)\n"},
    {"run", cli_cmd_run, CLI_ENGINE | CLI_ARGS_RAW, no_options, 1, CLI_RUN_MAX_ARGS,
     "run a Lua script with the cairnloop module and an open engine",
     "Usage: cairnloop run SCRIPT.lua [ARGS...]\n"
     "\n"
     "Runs SCRIPT.lua (- reads standard input) in Lua 5.4 with every standard\n"
     "library, like the lua interpreter, and an engine opened on the configured\n"
     "database (the embedded cluster by default) with the --policy files loaded:\n"
     "\n"
     "  engine                    the open engine (a global)\n"
     "  require \"cairnloop\"       the module, registered in-process;\n"
     "                            .default_engine() returns `engine` and\n"
     "                            .default_config() the options it was opened with\n"
     "                            ({database, schema, policy}, for cairnloop.open);\n"
     "                            .json_output() is true under --json: the script\n"
     "                            should then print only JSON objects, one a line\n"
     "  require \"cairnloop.campaign\" and the other modules of lua/ (or of\n"
     "                            $CAIRNLOOP_LUA_PATH), then Lua's own package.path\n"
     "  arg, ...                  the script's arguments, as lua sets them\n"
     "\n"
     "Options of cairnloop go before the script; everything after it is the\n"
     "script's own, as with lua:\n"
     "  cairnloop run --policy p.lua job.lua --dry-run\n"
     "\n"
     "An uncaught error prints `cairnloop: <message>` and a traceback on stderr\n"
     "and exits 1.  An error value { code = \"<code>\", message = \"...\" } with a\n"
     "code of the exit status table prints `cairnloop: <code>: <message>` and\n"
     "exits with that status, e.g. error({ code = code, message = msg }) after\n"
     "an engine method returned nil, code, msg.\n"},
    {"work", cli_cmd_work, CLI_ENGINE, work_options, 0, 0,
     "deliver due messages through the policy's notifier",
     "Usage: cairnloop work [--once] [--limit N] [--concurrency N] [--rate PER_SECOND]\n"
     "                      [--http-allow PATTERN]... [--max-attempts N]\n"
     "                      [--lease-seconds S] [--backoff-base-ms MS]\n"
     "                      [--retention-completed D] [--retention-failed D]\n"
     "                      [--retention-interval-ms MS] [--metrics HOST:PORT]\n"
     "\n"
     "Claims due delivery jobs in batches and hands each message to the policy's\n"
     "notifier (without one, jobs complete as no_op and messages are marked sent).\n"
     "A notifier that calls cl.http.request (such as lua/cairnloop/webhook.lua)\n"
     "keeps up to --concurrency deliveries in flight; finished ones are recorded\n"
     "in batches while others run, and leases of slow ones are renewed.  Runs\n"
     "until SIGINT or SIGTERM: deliveries in flight are finished, jobs claimed\n"
     "but not started are handed back, and the exit status is 0.  Idle, it sleeps\n"
     "until jobs are inserted (LISTEN/NOTIFY) or the next scheduled one is due,\n"
     "polling every 5 s at most; it reconnects when the database goes away.  Any\n"
     "number of workers may share one database.\n"
     "\n"
     "Options:\n"
     "  --once                   deliver one batch, print its counts and exit\n"
     "  --limit N                jobs per batch, 1 to 10000 (default 500)\n"
     "  --concurrency N          deliveries in flight at once, 1 to 1000 (default 10)\n"
     "  --rate PER_SECOND        start at most this many deliveries per second (a\n"
     "                           token bucket; default: no limit)\n"
     "  --http-allow PATTERN     let notifiers reach URLs matching PATTERN, e.g.\n"
     "                           https://hooks.example.com/ or http://127.0.0.1:*\n"
     "                           (repeatable; also CAIRNLOOP_HTTP_ALLOW, comma-\n"
     "                           separated; default: nothing is allowed)\n"
     "  --max-attempts N         attempts before a failing job is discarded\n"
     "                           (default 20)\n"
     "  --lease-seconds S        how long a claimed job stays leased before another\n"
     "                           worker may rescue it (default 60)\n"
     "  --backoff-base-ms MS     retry backoff base: a failed attempt n is retried\n"
     "                           after min(MS * 2^n, 1 hour) plus up to 10% jitter\n"
     "                           (default 1000: 2 s, 4 s, 8 s, ...)\n"
     "  --retention-completed D  delete completed jobs this long after they finished\n"
     "                           (a duration such as 36h or 7d, or off; default 1d)\n"
     "  --retention-failed D     the same for discarded and cancelled jobs (default\n"
     "                           7d)\n"
     "  --retention-interval-ms MS  how often the worker prunes (default 30000)\n"
     "  --metrics HOST:PORT      serve Prometheus metrics on http://HOST:PORT/metrics\n"
     "                           (127.0.0.1:9100, [::1]:9100, localhost:9100; port 0\n"
     "                           picks a free one, logged at start): deliveries by\n"
     "                           outcome and reason, delivery durations, batches,\n"
     "                           queue depth by state, oldest due age, paused\n"
     "\n"
     "The worker deletes finished jobs past their retention itself, a few hundred\n"
     "at a time every 30 s (--retention-interval-ms), never waiting on a row another session holds.\n"
     "Messages and envelopes are never deleted.  While delivery is paused\n"
     "(cairnloop pause) it claims nothing and says so once in its log.\n"},
    {"jobs", cli_cmd_jobs, CLI_ENGINE, jobs_options, 0, 0, "list delivery jobs, newest first",
     "Usage: cairnloop jobs [--state S] [--envelope ID] [--template ID] [--limit N]\n"
     "\n"
     "Lists delivery jobs, newest first, with their attempts, due and finishing\n"
     "times and the reason of the latest failed attempt.  Finished jobs are\n"
     "deleted after their retention (see work); their messages stay.\n"
     "\n"
     "Options:\n"
     "  --state S                only jobs in state S: available, scheduled,\n"
     "                           executing, retryable, completed, discarded, cancelled\n"
     "  --envelope ID            only the jobs of this bulk envelope\n"
     "  --template ID            only jobs of this template\n"
     "  --limit N                at most N jobs, 1 to 10000 (default 50)\n"},
    {"stats", cli_cmd_stats, CLI_ENGINE, stats_options, 0, 0,
     "count jobs by state; the oldest due job's wait; paused or not",
     "Usage: cairnloop stats [--envelope ID]\n"
     "\n"
     "Counts the delivery jobs in each state, says how long the oldest due job\n"
     "has waited and whether delivery is paused.  With --json, one object with\n"
     "the keys available, scheduled, executing, retryable, completed, discarded,\n"
     "cancelled, oldest_due_age_seconds and paused.  An envelope's progress by\n"
     "message status is in `cairnloop envelopes`.\n"
     "\n"
     "Options:\n"
     "  --envelope ID            only the jobs of this bulk envelope\n"},
    {"retry", cli_cmd_retry, CLI_ENGINE, retry_options, 0, CL_JOBS_MAX_LIMIT,
     "deliver failed jobs again, with every attempt",
     "Usage: cairnloop retry (JOB_ID... | --envelope ID | --all-discarded) [--actor A]\n"
     "\n"
     "Makes discarded jobs (out of attempts) and retryable ones (waiting for\n"
     "their backoff) available now, with every attempt allowed again, and their\n"
     "messages pending.  Other jobs named are left alone.  This is how a failed\n"
     "message is sent again: triggering it again is a duplicate and sends\n"
     "nothing.  Audited as retry_jobs.  Prints how many jobs it changed.\n"
     "\n"
     "Options:\n"
     "  --envelope ID            the failed jobs of this bulk envelope\n"
     "  --all-discarded          every discarded job\n"
     "  --actor A                who asks; passed through the actor resolver\n"},
    {"cancel", cli_cmd_cancel, CLI_ENGINE, cancel_options, 0, CL_JOBS_MAX_LIMIT,
     "cancel jobs not started yet, and their messages",
     "Usage: cairnloop cancel (JOB_ID... | --envelope ID) [--actor A]\n"
     "\n"
     "Cancels the jobs named that are not started (available, scheduled,\n"
     "retryable): they become cancelled and their messages' status cancelled.  A\n"
     "job being delivered right now finishes.  Audited as cancel_jobs.  Prints\n"
     "how many jobs it cancelled.\n"
     "\n"
     "Options:\n"
     "  --envelope ID            every job of this bulk envelope not started yet\n"
     "  --actor A                who asks; passed through the actor resolver\n"},
    {"pause", cli_cmd_pause, CLI_ENGINE, actor_options, 0, 0,
     "stop every worker of the schema from claiming jobs",
     "Usage: cairnloop pause [--actor A]\n"
     "\n"
     "Workers of the schema, on every machine, claim nothing until `cairnloop\n"
     "resume`; deliveries in flight finish.  Audited as pause_delivery.\n"
     "\n"
     "Options:\n"
     "  --actor A                who asks; passed through the actor resolver\n"},
    {"resume", cli_cmd_resume, CLI_ENGINE, actor_options, 0, 0,
     "let workers claim jobs again after a pause",
     "Usage: cairnloop resume [--actor A]\n"
     "\n"
     "Ends a pause and wakes idle workers at once.  Audited as resume_delivery.\n"
     "\n"
     "Options:\n"
     "  --actor A                who asks; passed through the actor resolver\n"},
    {"prune", cli_cmd_prune, CLI_ENGINE, prune_options, 0, 0,
     "delete finished jobs now (messages stay)",
     "Usage: cairnloop prune [--older-than DURATION]\n"
     "\n"
     "Deletes completed, discarded and cancelled jobs past their retention (1 day\n"
     "for completed ones, 7 days for the others), or finished longer ago than\n"
     "DURATION, in batches that skip rows others hold.  Messages and envelopes\n"
     "are never deleted, and a message keeps its trigger a duplicate.  Workers\n"
     "do the same by themselves (see work).  Prints how many jobs it deleted.\n"
     "\n"
     "Options:\n"
     "  --older-than DURATION    e.g. 36h, 7d, 90m, 0s (units s, m, h, d, w)\n"},
    {"db", cli_cmd_db, 0, no_options, 1, 1,
     "manage the embedded PostgreSQL cluster under ./.cairnloop",
     "Usage: cairnloop db start|stop|status|url\n"
     "\n"
     "The embedded cluster is a private PostgreSQL server under .cairnloop in the\n"
     "project directory (the current directory, or the nearest parent that has a\n"
     ".cairnloop, as git finds .git), reachable only through its Unix socket.\n"
     "Commands use it when neither --database, $CAIRNLOOP_DATABASE_URL nor a PG*\n"
     "connection variable is set, and start it on demand.\n"
     "\n"
     "  start    initialise (first use) and start it; does nothing if running\n"
     "  stop     stop it\n"
     "  status   say whether it runs (exit 0) or not (exit 1), and where it lives\n"
     "  url      print its connection URL, for psql and other tools\n"
     "\n"
     "PostgreSQL's initdb, pg_ctl and createdb are taken from $CAIRNLOOP_PG_BINDIR,\n"
     "else `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin, else\n"
     "the PATH, and run by absolute path; start and status say which.  As root,\n"
     "the server runs as the postgres user.\n"},
    {"demo", cli_cmd_demo, 0, no_options, 0, 0,
     "the whole outbound lane end to end on the embedded cluster",
     "Usage: cairnloop demo [--json]\n"
     "\n"
     "Runs the example campaign (lua/examples/campaign.lua with the policy\n"
     "lua/examples/demo_policy.lua) on the embedded cluster under ./.cairnloop,\n"
     "whatever the environment points at: starts the cluster, migrates, seeds\n"
     "demo conversations, shows a bulk send over the cap being refused, sends a\n"
     "campaign to the open conversations in envelopes of the cap's size,\n"
     "delivers every message through the policy's notifier and prints a report:\n"
     "envelopes and messages by status, audit events and Prometheus metrics.\n"
     "Running it again sends nothing twice: the campaign's envelope ids derive\n"
     "from its key, so every envelope replays.\n"
     "\n"
     "With --json, stdout is the report alone, as one JSON object on one line\n"
     "(its keys are listed at the top of lua/examples/campaign.lua); there are\n"
     "no steps and no progress bars.  When TERM is dumb or unset, or NO_COLOR\n"
     "is set, no escape sequence is written: no colours, and the progress bars\n"
     "redraw with a plain carriage return.\n"},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static const char common_help[] =
    "Common options (before or after the command):\n"
    "  --database URL           libpq URI or conninfo (default: $CAIRNLOOP_DATABASE_URL,\n"
    "                           else PG* variables, else the embedded cluster)\n"
    "  --schema S               schema of the tables (default: cairnloop)\n"
    "  --policy FILE            load a Lua policy script (repeatable)\n"
    "  --no-prepared-statements send every statement with its text, for PgBouncer in\n"
    "                           transaction mode; workers then poll every 1 s instead\n"
    "                           of LISTEN (also $CAIRNLOOP_NO_PREPARED_STATEMENTS=1)\n"
    "  --json                   print one JSON object per result line\n"
    "  -h, --help               show help\n"
    "  --version                print the version\n";

static const char env_help[] =
    "Environment: CAIRNLOOP_DATABASE_URL, PG* (libpq), CAIRNLOOP_MAX_BATCH_SIZE,\n"
    "CAIRNLOOP_NO_PREPARED_STATEMENTS (1 or 0),\n"
    "CAIRNLOOP_LOG_LEVEL (debug, info, warn, error; default info).\n"
    "\n"
    "Log lines of the engine and policies go to stderr as `cairnloop: [LEVEL] ...`;\n"
    "a failure ends with one line `cairnloop: CODE: message`.\n";

static const char exit_help[] =
    "Exit status: 0 success, 2 invalid argument or usage, 3 batch_too_large,\n"
    "4 other refusals (actor_rejected, audit_rejected, envelope_conflict,\n"
    "unknown_conversation), 5 hook_error, 6 db_error.\n";

static void print_main_help(void) {
  printf("Usage: cairnloop [COMMON OPTIONS] COMMAND [OPTIONS] [ARGS]\n"
         "\n"
         "Outbound support messaging on PostgreSQL: single triggers and bulk\n"
         "sends under a hard cap, each recorded in one durable envelope.\n"
         "\n"
         "Commands:\n");
  for (size_t i = 0; i < N_COMMANDS; i++)
    printf("  %-11s %s\n", commands[i].name, commands[i].summary);
  printf("\n%s\nRun `cairnloop COMMAND --help` for a command's options.\n\n%s\n%s", common_help,
         env_help, exit_help);
}

static void print_command_help(const cli_command *cmd) {
  fputs(cmd->help, stdout);
  if (cmd->flags & CLI_ENGINE) {
    printf("\n%s", common_help);
  } else {
    printf("\nOptions:\n"
           "  --json                   print the result as one JSON object\n"
           "  -h, --help               show this help\n");
  }
}

/* Newlines (libpq's messages have them) would break the one-line contract. */
static void print_error_line(const char *code, const char *message) {
  char line[1024];
  size_t n = 0;
  for (const char *p = message; *p && n + 1 < sizeof line; p++)
    line[n++] = (*p == '\n' || *p == '\r' || *p == '\t') ? ' ' : *p;
  while (n > 0 && line[n - 1] == ' ') n--;
  line[n] = '\0';
  fprintf(stderr, "cairnloop: %s: %s\n", code, n ? line : "(no message)");
}

int cli_fail(cl_status code, const char *fmt, ...) {
  char message[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  print_error_line(cl_status_name(code), message);
  return cl_status_exit_code(code);
}

int cli_fail_status(cl_status status, const cl_error *err) {
  print_error_line(cl_status_name(status), err ? err->message : "");
  return cl_status_exit_code(status);
}

int cli_parse_i64(const char *what, const char *text, int64_t min, int64_t max, int64_t *out) {
  int64_t v;
  if (!cli_to_i64(text, &v))
    return cli_fail(CL_INVALID_ARGUMENT, "%s: '%s' is not an integer", what, text);
  if (v < min || v > max)
    return cli_fail(CL_INVALID_ARGUMENT, "%s: %lld is out of range %lld..%lld", what, (long long)v,
                    (long long)min, (long long)max);
  *out = v;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Opening the engine                                                   */
/* ------------------------------------------------------------------ */

static const char *nonempty_env(const char *name) {
  const char *v = getenv(name);
  return v && *v ? v : NULL;
}

/* libpq's connection variables: any of them means "the user picked a server". */
static bool pg_env_set(void) {
  static const char *const names[] = {"PGHOST",     "PGHOSTADDR", "PGPORT",
                                      "PGDATABASE", "PGUSER",     "PGSERVICE"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (nonempty_env(names[i])) return true;
  return false;
}

/* Engine and policy log lines (a policy's print, a hook's traceback) go to
 * stderr in brackets, so that they never read as the one error line
 * `cairnloop: <code>: <message>`. */
static void log_to_stderr(void *ud, cl_log_level level, const char *line) {
  (void)ud;
  fprintf(stderr, "cairnloop: [%s] %s\n", cl_log_level_name(level), line);
}

int cli_log_level(cl_log_level *out) {
  const char *v = nonempty_env("CAIRNLOOP_LOG_LEVEL");
  *out = CL_LOG_INFO;
  if (!v || cl_log_level_parse(v, out, NULL) == CL_OK) return 0;
  /* The accepted names, from the engine's table: "debug, info, warn or error". */
  char names[128] = "";
  size_t n = 0;
  for (int i = 0; i < CL_LOG__COUNT; i++) {
    int k = snprintf(names + n, sizeof names - n, "%s%s",
                     i == 0                   ? ""
                     : i == CL_LOG__COUNT - 1 ? " or "
                                              : ", ",
                     cl_log_level_name((cl_log_level)i));
    if (k < 0 || (size_t)k >= sizeof names - n) break;
    n += (size_t)k;
  }
  return cli_fail(CL_INVALID_ARGUMENT, "CAIRNLOOP_LOG_LEVEL: '%s' is not %s", v, names);
}

int cli_open(const cli_ctx *ctx, cl_engine **out) {
  cl_config cfg;
  cl_config_init(&cfg);
  return cli_open_config(ctx, &cfg, out);
}

int cli_open_config(const cli_ctx *ctx, const cl_config *cfgp, cl_engine **out) {
  cl_config cfg = *cfgp;
  int rc = cli_log_level(&cfg.log_level);
  if (rc != 0) return rc;
  if (!cfg.log) cfg.log = log_to_stderr;

  const char *url = ctx->database ? ctx->database : nonempty_env("CAIRNLOOP_DATABASE_URL");
  char *embedded = NULL;
  if (!url && !pg_env_set()) {
    if ((rc = cli_db_ensure(&embedded)) != 0) return rc;
    url = embedded;
  }
  cfg.database = url; /* NULL: libpq's own defaults, from the PG* variables */
  cfg.schema = ctx->schema;
  if (ctx->no_prepared_statements)
    cfg.no_prepared_statements = 1; /* else the engine reads $CAIRNLOOP_NO_PREPARED_STATEMENTS */
  if (ctx->nhttp_allow)
    cfg.http_allow = ctx->http_allow; /* the engine adds $CAIRNLOOP_HTTP_ALLOW */
  cl_error err;
  cl_engine *eng = NULL;
  cl_status st = cl_open(&eng, &cfg, &err);
  free(embedded);
  if (st != CL_OK) return cli_fail_status(st, &err);

  for (int i = 0; i < ctx->npolicies; i++) {
    st = cl_load_policy(eng, ctx->policies[i], &err);
    if (st != CL_OK) {
      cl_close(eng);
      return cli_fail_status(st, &err);
    }
  }
  *out = eng;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Parsing                                                              */
/* ------------------------------------------------------------------ */

static const struct option *find_option(int id) {
  for (size_t i = 0; i < N_ALL_OPTIONS; i++)
    if (all_options[i].val == id) return &all_options[i];
  return NULL;
}

/* Appends the options listed in `ids` to `dst` (room is checked by the caller). */
static size_t add_options(struct option *dst, size_t n, const int *ids) {
  for (; *ids; ids++) dst[n++] = *find_option(*ids);
  return n;
}

static const cli_command *find_command(const char *name) {
  for (size_t i = 0; i < N_COMMANDS; i++)
    if (strcmp(commands[i].name, name) == 0) return &commands[i];
  return NULL;
}

/* Stores one option's value in ctx; returns an exit status or CLI_CONTINUE. */
static int store_option(cli_ctx *ctx, const cli_command *cmd, int id, const char *value) {
  switch (id) {
  case CLI_OPT_HELP:
    if (cmd) print_command_help(cmd);
    else print_main_help();
    return 0;
  case CLI_OPT_VERSION:
    printf("cairnloop %s\n", CL_VERSION);
    return 0;
  case CLI_OPT_JSON:
    ctx->json = true;
    return CLI_CONTINUE;
  case CLI_OPT_NO_PREPARED_STATEMENTS:
    ctx->no_prepared_statements = true;
    return CLI_CONTINUE;
  case CLI_OPT_HTTP_ALLOW:
    if (ctx->nhttp_allow == CLI_MAX_HTTP_ALLOW)
      return cli_fail(CL_INVALID_ARGUMENT, "--http-allow: at most %d patterns", CLI_MAX_HTTP_ALLOW);
    ctx->http_allow[ctx->nhttp_allow++] = value;
    return CLI_CONTINUE;
  case CLI_OPT_POLICY:
    if (ctx->npolicies == CLI_MAX_POLICIES)
      return cli_fail(CL_INVALID_ARGUMENT, "--policy: at most %d policy files", CLI_MAX_POLICIES);
    ctx->policies[ctx->npolicies++] = value;
    return CLI_CONTINUE;
  case CLI_OPT_DATABASE:
  case CLI_OPT_SCHEMA: {
    const char **slot = id == CLI_OPT_DATABASE ? &ctx->database : &ctx->schema;
    if (*slot) return cli_fail(CL_INVALID_ARGUMENT, "--%s given twice", find_option(id)->name);
    *slot = value;
    return CLI_CONTINUE;
  }
  default:
    if (ctx->opt[id - CLI_OPT_FIRST_LONG])
      return cli_fail(CL_INVALID_ARGUMENT, "--%s given twice", find_option(id)->name);
    /* A flag (no value) is stored as "" so that presence reads as non-NULL. */
    ctx->opt[id - CLI_OPT_FIRST_LONG] = value ? value : "";
    return CLI_CONTINUE;
  }
}

/*
 * Runs getopt_long over argv with the options `cmd` accepts (with cmd NULL:
 * the common options that may precede the command, stopping at the command
 * name).  Returns an exit status, or CLI_CONTINUE with optind at the first
 * argument left.
 */
static int parse_options(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv) {
  struct option longopts[N_ALL_OPTIONS + 1];
  size_t n = add_options(longopts, 0, output_options);
  if (!cmd || (cmd->flags & CLI_ENGINE)) n = add_options(longopts, n, engine_options);
  if (cmd) n = add_options(longopts, n, cmd->options);
  longopts[n] = (struct option){0};

  /* Errors name the command they are about: "trigger: unknown option ...". */
  char where[64] = "";
  if (cmd) snprintf(where, sizeof where, "%s: ", cmd->name);
  /* "+": stop at the command name (or, for `run`, at the script: its own
   * arguments are not ours); ":": report missing values ourselves. */
  const char *shortopts = (!cmd || (cmd->flags & CLI_ARGS_RAW)) ? "+:h" : ":h";
  optind = 0; /* GNU: a full re-initialisation, so the second pass starts clean */
  opterr = 0;
  for (;;) {
    int c = getopt_long(argc, argv, shortopts, longopts, NULL);
    if (c == -1) return CLI_CONTINUE;
    if (c == ':')
      return cli_fail(CL_INVALID_ARGUMENT, "%soption '%s' needs a value", where, argv[optind - 1]);
    if (c == '?') {
      const char *bad = optopt ? (const char[]){'-', (char)optopt, '\0'} : argv[optind - 1];
      return cli_fail(CL_INVALID_ARGUMENT, "%sunknown option '%s' (see `cairnloop%s%s --help`)",
                      where, bad, cmd ? " " : "", cmd ? cmd->name : "");
    }
    int rc = store_option(ctx, cmd, c, optarg);
    if (rc != CLI_CONTINUE) return rc;
  }
}

int cli_parse(cli_ctx *ctx, int argc, char **argv, int (**run)(cli_ctx *ctx)) {
  *run = NULL;
  int rc = parse_options(ctx, NULL, argc, argv);
  if (rc != CLI_CONTINUE) return rc;
  if (optind >= argc)
    return cli_fail(CL_INVALID_ARGUMENT, "missing command (see `cairnloop --help`)");

  int at = optind;
  const cli_command *cmd = find_command(argv[at]);
  if (!cmd) return cli_fail(CL_INVALID_ARGUMENT, "unknown command '%s'", argv[at]);
  ctx->command = cmd->name;

  /* The command's own pass sees argv[at] as its argv[0]. */
  int cargc = argc - at;
  char **cargv = argv + at;
  rc = parse_options(ctx, cmd, cargc, cargv);
  if (rc != CLI_CONTINUE) return rc;
  if (!(cmd->flags & CLI_ENGINE) &&
      (ctx->database || ctx->schema || ctx->npolicies || ctx->no_prepared_statements))
    return cli_fail(CL_INVALID_ARGUMENT,
                    "%s: --database, --schema, --policy and --no-prepared-statements do not apply",
                    cmd->name);

  ctx->args = cargv + optind;
  ctx->nargs = cargc - optind;
  if (ctx->nargs < cmd->min_args || ctx->nargs > cmd->max_args) {
    const char *synopsis = cmd->help + strlen("Usage: ");
    int len = (int)strcspn(synopsis, "\n");
    if (ctx->nargs < cmd->min_args)
      return cli_fail(CL_INVALID_ARGUMENT, "%s: missing argument (usage: %.*s)", cmd->name, len,
                      synopsis);
    return cli_fail(CL_INVALID_ARGUMENT, "%s: unexpected argument '%s' (usage: %.*s)", cmd->name,
                    ctx->args[cmd->max_args], len, synopsis);
  }
  *run = cmd->run;
  return CLI_CONTINUE;
}

/* Built without main() into the fuzz target of the argument handling
 * (tests/fuzz/fuzz_args.c). */
#ifndef CLI_NO_MAIN
int main(int argc, char **argv) {
  cli_ctx ctx = {0};
  int (*run)(cli_ctx * ctx);
  cli_lua_path_default();
  int rc = cli_parse(&ctx, argc, argv, &run);
  if (rc != CLI_CONTINUE) return rc;
  if (run == NULL) return EXIT_FAILURE; /* cli_parse sets it whenever it continues */
  rc = run(&ctx);
  fflush(stdout);
  return rc;
}
#endif
