/*
 * ops.c - the operator commands of `cairnloop`: jobs, stats, retry,
 * cancel, pause, resume and prune, and the duration syntax they and
 * `work` share ("36h", "7d").  Each validates its options before it opens
 * an engine, calls the public API (cl_jobs, cl_stats, ...) once and prints
 * the result for people or, with --json, as the Lua result tables of
 * API.md.
 */
#include "cli.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Durations                                                            */
/* ------------------------------------------------------------------ */

/* Longest duration accepted: ten years, far past any retention. */
#define MAX_DURATION_S (10LL * 366 * 24 * 3600)

int cli_parse_duration(const char *what, const char *text, int64_t *seconds) {
  static const struct {
    char unit;
    int64_t seconds;
  } units[] = {{'s', 1}, {'m', 60}, {'h', 3600}, {'d', 86400}, {'w', 7 * 86400}};
  const char *p = text;
  int64_t n = 0;
  if (!(*p >= '0' && *p <= '9')) goto bad;
  for (; *p >= '0' && *p <= '9'; p++) {
    n = n * 10 + (*p - '0');
    if (n > MAX_DURATION_S) goto bad;
  }
  int64_t scale = 1;
  if (*p) {
    size_t i = 0;
    while (i < sizeof units / sizeof units[0] && units[i].unit != *p) i++;
    if (i == sizeof units / sizeof units[0] || p[1] != '\0') goto bad;
    scale = units[i].seconds;
  }
  if (n > MAX_DURATION_S / scale) goto bad;
  *seconds = n * scale;
  return 0;
bad:
  return cli_fail(CL_INVALID_ARGUMENT,
                  "%s: '%s' is not a duration (a number with s, m, h, d or w, e.g. 36h or 7d)",
                  what, text);
}

/* ------------------------------------------------------------------ */
/* Helpers                                                              */
/* ------------------------------------------------------------------ */

static json_t *str_or_null(const char *s) {
  json_t *v = s ? json_string(s) : NULL;
  return v ? v : json_null();
}

/* A job as the Lua job table: the trigger result's job plus what an
 * operator reads. */
static json_t *job_json(const cl_job *j) {
  const cl_delivery_job *d = &j->job;
  return json_pack("{s:I, s:s, s:o, s:o, s:{s:I, s:I, s:o, s:o}, s:i, s:i, s:o, s:o, s:o, s:o}",
                   "id", (json_int_t)d->id, "worker", "outbound", "state", str_or_null(d->state),
                   "scheduled_at", str_or_null(d->scheduled_at), "args", "message_id",
                   (json_int_t)d->message_id, "conversation_id", (json_int_t)d->conversation_id,
                   "template_id", str_or_null(d->template_id), "bulk_envelope_id",
                   str_or_null(d->bulk_envelope_id), "attempt", j->attempt, "max_attempts",
                   j->max_attempts, "attempted_at", str_or_null(j->attempted_at), "finished_at",
                   str_or_null(j->finished_at), "inserted_at", str_or_null(j->inserted_at),
                   "last_error", str_or_null(j->last_error));
}

/* `{"<key>": n}` with --json, else the line; the operations' one result. */
static int print_count(const cli_ctx *ctx, const char *key, int64_t n, const char *line) {
  if (ctx->json) return cli_json_print(json_pack("{s:I}", key, (json_int_t)n));
  printf("%s\n", line);
  return 0;
}

/* ------------------------------------------------------------------ */
/* jobs and stats                                                       */
/* ------------------------------------------------------------------ */

/* Code points, for column widths (job errors are any UTF-8). */
static int width_of(const char *s) {
  int w = 0;
  for (; *s; s++) w += ((unsigned char)*s & 0xC0) != 0x80;
  return w;
}

enum { J_ID, J_STATE, J_ATTEMPT, J_CONV, J_TEMPLATE, J_ENVELOPE, J_DUE, J_FINISHED, J_ERROR, J_N };

static void job_cells(const cl_job *j, char nums[3][48], const char *cells[J_N]) {
  snprintf(nums[0], 48, "%lld", (long long)j->job.id);
  snprintf(nums[1], 48, "%d/%d", j->attempt, j->max_attempts);
  snprintf(nums[2], 48, "%lld", (long long)j->job.conversation_id);
  cells[J_ID] = nums[0];
  cells[J_STATE] = j->job.state ? j->job.state : "-";
  cells[J_ATTEMPT] = nums[1];
  cells[J_CONV] = nums[2];
  cells[J_TEMPLATE] = j->job.template_id ? j->job.template_id : "-";
  cells[J_ENVELOPE] = j->job.bulk_envelope_id ? j->job.bulk_envelope_id : "-";
  cells[J_DUE] = j->job.scheduled_at ? j->job.scheduled_at : "-";
  cells[J_FINISHED] = j->finished_at ? j->finished_at : "-";
  cells[J_ERROR] = j->last_error ? j->last_error : "-";
}

static void print_job_table(const cl_job_list *list) {
  static const char *const header[J_N] = {"ID",           "STATE",       "ATTEMPT",
                                          "CONVERSATION", "TEMPLATE",    "ENVELOPE",
                                          "SCHEDULED_AT", "FINISHED_AT", "LAST_ERROR"};
  if (list->count == 0) {
    printf("no jobs\n");
    return;
  }
  int width[J_N];
  for (int c = 0; c < J_N; c++) width[c] = width_of(header[c]);
  for (size_t i = 0; i < list->count; i++) {
    char nums[3][48];
    const char *cells[J_N];
    job_cells(&list->items[i], nums, cells);
    for (int c = 0; c < J_N; c++)
      if (width_of(cells[c]) > width[c]) width[c] = width_of(cells[c]);
  }
  for (size_t i = 0; i <= list->count; i++) {
    /* Here, not in the else: cells may point into nums until the row ends. */
    // cppcheck-suppress variableScope
    char nums[3][48];
    const char *cells[J_N];
    if (i == 0) memcpy(cells, header, sizeof cells);
    else job_cells(&list->items[i - 1], nums, cells);
    for (int c = 0; c < J_N; c++) {
      fputs(cells[c], stdout);
      if (c + 1 == J_N) break; /* the last column is not padded */
      for (int w = width_of(cells[c]); w < width[c] + 2; w++) putchar(' ');
    }
    putchar('\n');
  }
}

int cli_cmd_jobs(cli_ctx *ctx) {
  cl_job_query q = {0};
  int64_t limit = CL_JOBS_DEFAULT_LIMIT;
  const char *limit_text = cli_opt(ctx, CLI_OPT_LIMIT);
  int rc = limit_text ? cli_parse_i64("--limit", limit_text, 1, CL_JOBS_MAX_LIMIT, &limit) : 0;
  cl_job_state state;
  cl_error err;
  q.state = cli_opt(ctx, CLI_OPT_STATE);
  if (rc == 0 && q.state && cl_job_state_parse(q.state, &state, &err) != CL_OK)
    rc = cli_fail(CL_INVALID_ARGUMENT, "--state: %s", err.message);
  if (rc != 0) return rc;
  q.envelope_id = cli_opt(ctx, CLI_OPT_ENVELOPE);
  q.template_id = cli_opt(ctx, CLI_OPT_TEMPLATE);
  q.limit = (int)limit;

  cl_engine *eng;
  if ((rc = cli_open(ctx, &eng)) != 0) return rc;
  cl_job_list list = {0};
  cl_status st = cl_jobs(eng, &q, &list, &err);
  if (st != CL_OK) rc = cli_fail_status(st, &err);
  else if (ctx->json)
    for (size_t i = 0; i < list.count && rc == 0; i++)
      rc = cli_json_print(job_json(&list.items[i]));
  else print_job_table(&list);
  cl_job_list_clear(&list);
  cl_close(eng);
  return rc;
}

int cli_cmd_stats(cli_ctx *ctx) {
  const char *envelope_id = cli_opt(ctx, CLI_OPT_ENVELOPE);
  cl_engine *eng;
  int rc = cli_open(ctx, &eng);
  if (rc != 0) return rc;
  cl_queue_stats s;
  cl_error err;
  cl_status st = cl_stats(eng, envelope_id, &s, &err);
  if (st != CL_OK) {
    rc = cli_fail_status(st, &err);
  } else if (ctx->json) {
    json_t *o = json_object();
    for (int i = 0; i < CL_JOB_STATE__COUNT; i++)
      json_object_set_new(o, cl_job_state_name((cl_job_state)i), json_integer(s.count[i]));
    json_object_set_new(o, "oldest_due_age_seconds", json_integer(s.oldest_due_age_seconds));
    json_object_set_new(o, "paused", json_boolean(s.paused));
    rc = cli_json_print(o);
  } else {
    if (envelope_id) printf("envelope %s\n", envelope_id);
    for (int i = 0; i < CL_JOB_STATE__COUNT; i++)
      printf("%-10s %lld\n", cl_job_state_name((cl_job_state)i), (long long)s.count[i]);
    printf("oldest due job waiting: %llds\n", (long long)s.oldest_due_age_seconds);
    printf("delivery: %s\n", s.paused ? "paused (cairnloop resume continues it)" : "running");
  }
  cl_close(eng);
  return rc;
}

/* ------------------------------------------------------------------ */
/* retry and cancel                                                     */
/* ------------------------------------------------------------------ */

/* The selector from JOB_ID... | --envelope ID [| --all-discarded]. */
static int read_selector(cli_ctx *ctx, bool retry, cl_job_selector *sel, int64_t **ids) {
  const char *synopsis = retry ? "JOB_ID..., --envelope ID or --all-discarded"
                               : "JOB_ID... or --envelope ID";
  memset(sel, 0, sizeof *sel);
  *ids = NULL;
  sel->envelope_id = cli_opt(ctx, CLI_OPT_ENVELOPE);
  sel->all_discarded = retry && cli_opt(ctx, CLI_OPT_ALL_DISCARDED) != NULL;
  sel->actor = cli_opt(ctx, CLI_OPT_ACTOR);
  int ways = (ctx->nargs > 0) + (sel->envelope_id != NULL) + sel->all_discarded;
  if (ways != 1)
    return cli_fail(CL_INVALID_ARGUMENT, "%s: give exactly one of %s (see `cairnloop %s --help`)",
                    ctx->command, synopsis, ctx->command);
  if (ctx->nargs == 0) return 0;
  *ids = calloc((size_t)ctx->nargs, sizeof **ids);
  if (!*ids) return cli_fail(CL_INVALID_ARGUMENT, "%s: out of memory", ctx->command);
  for (int i = 0; i < ctx->nargs; i++) {
    int rc = cli_parse_i64("job id", ctx->args[i], 1, INT64_MAX, &(*ids)[i]);
    if (rc != 0) {
      free(*ids);
      *ids = NULL;
      return rc;
    }
  }
  sel->ids = *ids;
  sel->count = (size_t)ctx->nargs;
  return 0;
}

static int change(cli_ctx *ctx, bool retry) {
  cl_job_selector sel;
  int64_t *ids;
  int rc = read_selector(ctx, retry, &sel, &ids);
  if (rc != 0) return rc;
  cl_engine *eng;
  if ((rc = cli_open(ctx, &eng)) != 0) {
    free(ids);
    return rc;
  }
  int64_t n = 0;
  cl_error err;
  cl_status st = retry ? cl_retry(eng, &sel, &n, &err) : cl_cancel(eng, &sel, &n, &err);
  if (st != CL_OK) {
    rc = cli_fail_status(st, &err);
  } else {
    char line[128];
    snprintf(line, sizeof line, "%s %lld job%s", retry ? "retried" : "cancelled", (long long)n,
             n == 1 ? "" : "s");
    rc = print_count(ctx, retry ? "retried" : "cancelled", n, line);
  }
  cl_close(eng);
  free(ids);
  return rc;
}

int cli_cmd_retry(cli_ctx *ctx) { return change(ctx, true); }
int cli_cmd_cancel(cli_ctx *ctx) { return change(ctx, false); }

/* ------------------------------------------------------------------ */
/* pause, resume and prune                                              */
/* ------------------------------------------------------------------ */

static int set_paused(cli_ctx *ctx, bool paused) {
  cl_engine *eng;
  int rc = cli_open(ctx, &eng);
  if (rc != 0) return rc;
  cl_error err;
  const char *actor = cli_opt(ctx, CLI_OPT_ACTOR);
  cl_status st = paused ? cl_pause(eng, actor, &err) : cl_resume(eng, actor, &err);
  if (st != CL_OK) rc = cli_fail_status(st, &err);
  else if (ctx->json) rc = cli_json_print(json_pack("{s:b}", "paused", paused));
  else
    printf(paused ? "delivery paused: workers of schema %s claim nothing until `cairnloop resume`\n"
                  : "delivery resumed: workers of schema %s claim again\n",
           cl_schema(eng));
  cl_close(eng);
  return rc;
}

int cli_cmd_pause(cli_ctx *ctx) { return set_paused(ctx, true); }
int cli_cmd_resume(cli_ctx *ctx) { return set_paused(ctx, false); }

int cli_cmd_prune(cli_ctx *ctx) {
  int64_t older = -1; /* the engine's retention periods */
  const char *text = cli_opt(ctx, CLI_OPT_OLDER_THAN);
  int rc = text ? cli_parse_duration("--older-than", text, &older) : 0;
  if (rc != 0) return rc;
  cl_engine *eng;
  if ((rc = cli_open(ctx, &eng)) != 0) return rc;
  int64_t n = 0;
  cl_error err;
  cl_status st = cl_prune(eng, older, &n, &err);
  if (st != CL_OK) {
    rc = cli_fail_status(st, &err);
  } else {
    char line[96];
    snprintf(line, sizeof line, "deleted %lld finished job%s", (long long)n, n == 1 ? "" : "s");
    rc = print_count(ctx, "deleted", n, line);
  }
  cl_close(eng);
  return rc;
}
