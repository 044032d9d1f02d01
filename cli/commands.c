/*
 * commands.c - the engine commands of `cairnloop`: migrate (and its
 * --status), trigger, bulk and envelopes (with delivery progress).  Each
 * validates its own options before it opens an engine (a usage error never
 * touches the database), calls the public API and prints the result for
 * people or, with --json, through json.c.
 */
#include "cli.h"
#include "parse.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Input helpers                                                        */
/* ------------------------------------------------------------------ */

/* --ids 1,2,3 (parse.c). */
static int ids_from_list(const char *text, id_list *out) {
  char why[CL_ERROR_MESSAGE_MAX];
  if (!cli_parse_id_list(text, out, why, sizeof why))
    return cli_fail(CL_INVALID_ARGUMENT, "%s", why);
  return 0;
}

/* The whole of `f` into a malloc'd buffer, *len bytes. */
static int slurp(FILE *f, const char *what, const char *name, char **out, size_t *len) {
  char *buf = NULL;
  size_t cap = 0;
  *len = 0;
  for (;;) {
    if (cap - *len < 4096) {
      cap = cap ? cap * 2 : 8192;
      char *grown = realloc(buf, cap + 1);
      if (!grown) {
        free(buf);
        return cli_fail(CL_INVALID_ARGUMENT, "%s: out of memory", what);
      }
      buf = grown;
    }
    size_t n = fread(buf + *len, 1, cap - *len, f);
    *len += n;
    if (n == 0) break;
  }
  if (ferror(f)) {
    free(buf);
    return cli_fail(CL_INVALID_ARGUMENT, "%s: cannot read %s: %s", what, name, strerror(errno));
  }
  buf[*len] = '\0';
  *out = buf;
  return 0;
}

/* --ids-file F|-: one id per line, blank lines ignored (parse.c). */
static int ids_from_file(const char *path, id_list *out) {
  bool is_stdin = strcmp(path, "-") == 0;
  const char *name = is_stdin ? "standard input" : path;
  FILE *f = is_stdin ? stdin : fopen(path, "rb");
  if (!f)
    return cli_fail(CL_INVALID_ARGUMENT, "--ids-file: cannot open %s: %s", path, strerror(errno));
  char *buf = NULL;
  size_t len = 0;
  int rc = slurp(f, "--ids-file", name, &buf, &len);
  if (!is_stdin) (void)fclose(f); /* read only: nothing to lose */
  char why[CL_ERROR_MESSAGE_MAX];
  if (rc == 0 && !cli_parse_id_lines(buf, len, name, out, why, sizeof why))
    rc = cli_fail(CL_INVALID_ARGUMENT, "%s", why);
  free(buf);
  return rc;
}

/* --body-file F|-: the whole file, byte for byte (the body is a snapshot). */
static int read_body_file(const char *path, char **out) {
  bool is_stdin = strcmp(path, "-") == 0;
  const char *name = is_stdin ? "standard input" : path;
  FILE *f = is_stdin ? stdin : fopen(path, "rb");
  if (!f)
    return cli_fail(CL_INVALID_ARGUMENT, "--body-file: cannot open %s: %s", path, strerror(errno));
  char *buf = NULL;
  size_t len = 0;
  int rc = slurp(f, "--body-file", name, &buf, &len);
  /* The C API takes a NUL-terminated body, so an embedded NUL would
   * silently cut it short. */
  if (rc == 0 && buf != NULL && memchr(buf, '\0', len))
    rc = cli_fail(CL_INVALID_ARGUMENT, "--body-file: %s contains a NUL byte", name);
  if (!is_stdin) (void)fclose(f); /* read only: nothing to lose */
  if (rc != 0) {
    free(buf);
    return rc;
  }
  *out = buf; /* slurp NUL-terminated it */
  return 0;
}

static int require_option(const cli_ctx *ctx, enum cli_opt id, const char *name) {
  if (cli_opt(ctx, id)) return 0;
  return cli_fail(CL_INVALID_ARGUMENT, "%s: %s is required (see `cairnloop %s --help`)",
                  ctx->command, name, ctx->command);
}

/* Exactly one of two alternative options. */
static int require_one_of(const cli_ctx *ctx, enum cli_opt a, const char *an, enum cli_opt b,
                          const char *bn) {
  if (cli_opt(ctx, a) && cli_opt(ctx, b))
    return cli_fail(CL_INVALID_ARGUMENT, "%s: give %s or %s, not both", ctx->command, an, bn);
  if (!cli_opt(ctx, a) && !cli_opt(ctx, b))
    return cli_fail(CL_INVALID_ARGUMENT, "%s: %s or %s is required", ctx->command, an, bn);
  return 0;
}

/* An optional integer option; *out keeps its default when absent. */
static int int_option(const cli_ctx *ctx, enum cli_opt id, const char *name, int64_t min,
                      int64_t max, int64_t *out) {
  const char *text = cli_opt(ctx, id);
  return text ? cli_parse_i64(name, text, min, max, out) : 0;
}

/* ------------------------------------------------------------------ */
/* Human output                                                         */
/* ------------------------------------------------------------------ */

static void print_audit(const char *audit_json) {
  if (audit_json) printf("audit: %s\n", audit_json);
}

/* Code points, for column widths: UTF-8 continuation bytes take no room. */
static int display_width(const char *s) {
  int w = 0;
  for (; *s; s++) w += ((unsigned char)*s & 0xC0) != 0x80;
  return w;
}

/* printf's %-*s pads by bytes; this pads by code points. */
static void print_cell(const char *s, int width) {
  fputs(s, stdout);
  for (int w = display_width(s); w < width; w++) putchar(' ');
}

/* ------------------------------------------------------------------ */
/* The commands                                                         */
/* ------------------------------------------------------------------ */

/* migrate --status: every migration, applied (when) or pending. */
static int print_migration_status(const cli_ctx *ctx, cl_engine *eng) {
  cl_migration_list list = {0};
  cl_error err;
  cl_status st = cl_migrations(eng, &list, &err);
  int rc = 0;
  if (st != CL_OK) return cli_fail_status(st, &err);
  size_t pending = 0;
  for (size_t i = 0; i < list.count && rc == 0; i++) {
    const cl_migration *m = &list.items[i];
    pending += m->applied_at == NULL;
    if (ctx->json)
      rc = cli_json_print(json_pack("{s:s, s:s, s:o}", "version", m->version, "status",
                                    m->applied_at ? "applied" : "pending", "applied_at",
                                    m->applied_at ? json_string(m->applied_at) : json_null()));
    else
      printf("%-8s %s%s%s\n", m->applied_at ? "applied" : "pending", m->version,
             m->applied_at ? "  " : "", m->applied_at ? m->applied_at : "");
  }
  if (rc == 0 && !ctx->json)
    printf("schema %s: %zu applied, %zu pending\n", cl_schema(eng), list.count - pending, pending);
  cl_migration_list_clear(&list);
  return rc;
}

int cli_cmd_migrate(cli_ctx *ctx) {
  cl_engine *eng;
  int rc = cli_open(ctx, &eng);
  if (rc != 0) return rc;
  if (cli_opt(ctx, CLI_OPT_MIGRATE_STATUS)) {
    rc = print_migration_status(ctx, eng);
    cl_close(eng);
    return rc;
  }
  cl_migration_list applied = {0};
  cl_error err;
  cl_status st = cl_migrate_report(eng, &applied, &err);
  if (st != CL_OK) {
    /* Those applied before the failure are committed: say which. */
    for (size_t i = 0; i < applied.count && !ctx->json; i++)
      printf("applied %s\n", applied.items[i].version);
    rc = cli_fail_status(st, &err);
  } else if (ctx->json) {
    json_t *list = json_array();
    for (size_t i = 0; i < applied.count; i++)
      json_array_append_new(list, json_string(applied.items[i].version));
    rc = cli_json_print(json_pack("{s:b, s:s, s:o}", "migrated", 1, "schema", cl_schema(eng),
                                  "applied", list));
  } else if (applied.count == 0) {
    printf("schema %s is up to date\n", cl_schema(eng));
  } else {
    for (size_t i = 0; i < applied.count; i++) printf("applied %s\n", applied.items[i].version);
    printf("schema %s: %zu migration%s applied\n", cl_schema(eng), applied.count,
           applied.count == 1 ? "" : "s");
  }
  cl_migration_list_clear(&applied);
  cl_close(eng);
  return rc;
}

int cli_cmd_trigger(cli_ctx *ctx) {
  int64_t conversation_id;
  cl_trigger_opts opts = {0};
  int rc = cli_parse_i64("conversation id", ctx->args[0], INT64_MIN, INT64_MAX, &conversation_id);
  if (rc == 0) rc = require_option(ctx, CLI_OPT_TEMPLATE, "--template");
  if (rc == 0)
    rc = int_option(ctx, CLI_OPT_SCHEDULE_IN, "--schedule-in", INT64_MIN, INT64_MAX,
                    &opts.schedule_in);
  if (rc != 0) return rc;
  opts.template_id = cli_opt(ctx, CLI_OPT_TEMPLATE);
  opts.content = cli_opt(ctx, CLI_OPT_CONTENT);
  opts.actor = cli_opt(ctx, CLI_OPT_ACTOR);
  opts.bulk_envelope_id = cli_opt(ctx, CLI_OPT_BULK_ENVELOPE_ID);

  cl_engine *eng;
  if ((rc = cli_open(ctx, &eng)) != 0) return rc;
  cl_trigger_result res = {0};
  cl_error err;
  cl_status st = cl_trigger(eng, conversation_id, &opts, &res, &err);
  if (st != CL_OK) {
    rc = cli_fail_status(st, &err);
  } else if (ctx->json) {
    rc = cli_json_print(cli_json_trigger(&res));
  } else {
    const cl_message *m = &res.message;
    const cl_delivery_job *j = &res.delivery_job;
    printf("%s message %lld for conversation %lld (template %s, %s)%s\n",
           res.duplicate ? "duplicate: already triggered as" : "triggered", (long long)m->id,
           (long long)m->conversation_id, m->template_id, m->status,
           res.duplicate ? "; nothing written" : "");
    if (m->bulk_envelope_id) printf("bulk envelope %s\n", m->bulk_envelope_id);
    if (j->id == 0) printf("delivery job pruned: it finished and retention deleted it\n");
    else printf("delivery job %lld %s, due %s\n", (long long)j->id, j->state, j->scheduled_at);
    /* Triggering a failed message again sends nothing (the key holds):
     * say how to send it again rather than leave a silent duplicate. */
    if (res.duplicate && j->state &&
        (strcmp(j->state, "discarded") == 0 || strcmp(j->state, "retryable") == 0))
      printf("to deliver it again: cairnloop retry %lld\n", (long long)j->id);
    print_audit(res.audit_json);
  }
  cl_trigger_result_clear(&res);
  cl_close(eng);
  return rc;
}

static void print_bulk(const cl_bulk_result *res) {
  const cl_envelope *env = &res->envelope;
  printf("envelope %s %s: %zu recipient%s (cap %d)\n", env->id, env->status, env->count,
         env->count == 1 ? "" : "s", env->effective_cap);
  if (res->replayed)
    printf("replayed: stored earlier with the same content; nothing new written\n");
  int cw = 0, mw = 0;
  for (size_t i = 0; i < res->count; i++) {
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%lld", (long long)res->messages[i].conversation_id);
    cw = n > cw ? n : cw;
    n = snprintf(buf, sizeof buf, "%lld", (long long)res->messages[i].id);
    mw = n > mw ? n : mw;
  }
  for (size_t i = 0; i < res->count; i++) {
    const cl_message *m = &res->messages[i];
    const cl_delivery_job *j = &res->delivery_jobs[i];
    printf("  conversation %*lld  message %*lld  job %lld (%s)\n", cw,
           (long long)m->conversation_id, mw, (long long)m->id, (long long)j->id, j->state);
  }
  print_audit(res->audit_json);
}

/* What `bulk` read from its options and files before touching the database. */
typedef struct bulk_input {
  cl_bulk_opts opts;
  id_list ids;
  char *body_file; /* the --body-file contents, owned */
  int64_t cap;
} bulk_input;

static bool both_stdin(const cli_ctx *ctx) {
  const char *body = cli_opt(ctx, CLI_OPT_BODY_FILE), *ids = cli_opt(ctx, CLI_OPT_IDS_FILE);
  return body && ids && strcmp(body, "-") == 0 && strcmp(ids, "-") == 0;
}

static int bulk_read(const cli_ctx *ctx, bulk_input *in) {
  int rc = require_option(ctx, CLI_OPT_TEMPLATE, "--template");
  if (rc == 0) rc = require_one_of(ctx, CLI_OPT_BODY, "--body", CLI_OPT_BODY_FILE, "--body-file");
  if (rc == 0) rc = require_one_of(ctx, CLI_OPT_IDS, "--ids", CLI_OPT_IDS_FILE, "--ids-file");
  if (rc == 0 && both_stdin(ctx))
    rc = cli_fail(CL_INVALID_ARGUMENT,
                  "bulk: --body-file and --ids-file cannot both read standard input");
  if (rc == 0)
    rc = int_option(ctx, CLI_OPT_MAX_BATCH_SIZE, "--max-batch-size", INT_MIN, INT_MAX, &in->cap);
  if (rc == 0)
    rc = int_option(ctx, CLI_OPT_SCHEDULE_IN, "--schedule-in", INT64_MIN, INT64_MAX,
                    &in->opts.schedule_in);
  if (rc == 0)
    rc = cli_opt(ctx, CLI_OPT_IDS) ? ids_from_list(cli_opt(ctx, CLI_OPT_IDS), &in->ids)
                                   : ids_from_file(cli_opt(ctx, CLI_OPT_IDS_FILE), &in->ids);
  if (rc == 0 && cli_opt(ctx, CLI_OPT_BODY_FILE))
    rc = read_body_file(cli_opt(ctx, CLI_OPT_BODY_FILE), &in->body_file);
  in->opts.template_id = cli_opt(ctx, CLI_OPT_TEMPLATE);
  in->opts.rendered_body = in->body_file ? in->body_file : cli_opt(ctx, CLI_OPT_BODY);
  in->opts.actor = cli_opt(ctx, CLI_OPT_ACTOR);
  in->opts.envelope_id = cli_opt(ctx, CLI_OPT_ENVELOPE_ID);
  return rc;
}

static int bulk_send(const cli_ctx *ctx, const bulk_input *in) {
  cl_engine *eng;
  int rc = cli_open(ctx, &eng);
  if (rc != 0) return rc;
  cl_error err;
  cl_status st = CL_OK;
  if (cli_opt(ctx, CLI_OPT_MAX_BATCH_SIZE)) st = cl_set_max_batch_size(eng, (int)in->cap, &err);
  cl_bulk_result res = {0};
  if (st == CL_OK) st = cl_bulk_trigger(eng, in->ids.items, in->ids.count, &in->opts, &res, &err);
  /* Under --json a refusal still prints its result line: the refused
   * envelope as recorded, whose id names the refusal in the audit record. */
  if (st == CL_BATCH_TOO_LARGE && ctx->json && res.envelope.id[0])
    cli_json_print(cli_json_envelope(&res.envelope));
  if (st != CL_OK) rc = cli_fail_status(st, &err);
  else if (ctx->json) rc = cli_json_print(cli_json_bulk(&res));
  else print_bulk(&res);
  cl_bulk_result_clear(&res);
  cl_close(eng);
  return rc;
}

int cli_cmd_bulk(cli_ctx *ctx) {
  bulk_input in = {0};
  int rc = bulk_read(ctx, &in);
  if (rc == 0) rc = bulk_send(ctx, &in);
  free(in.body_file);
  id_list_free(&in.ids);
  return rc;
}

/* The human table of `envelopes`: one row per envelope, columns aligned;
 * the delivery progress (messages by status) after the count. */
enum {
  COL_ID,
  COL_STATUS,
  COL_COUNT,
  COL_PENDING,
  COL_SENT,
  COL_FAILED,
  COL_CANCELLED,
  COL_CAP,
  COL_TEMPLATE,
  COL_AT,
  COL_BY,
  COL_REASON,
  NCOLS
};
#define NNUMS 6

static void envelope_cells(const cl_envelope *env, const cl_envelope_progress *p,
                           char nums[NNUMS][24], const char *cells[NCOLS]) {
  snprintf(nums[0], 24, "%zu", env->count);
  snprintf(nums[1], 24, "%d", env->effective_cap);
  snprintf(nums[2], 24, "%lld", (long long)p->pending);
  snprintf(nums[3], 24, "%lld", (long long)p->sent);
  snprintf(nums[4], 24, "%lld", (long long)p->failed);
  snprintf(nums[5], 24, "%lld", (long long)p->cancelled);
  cells[COL_ID] = env->id;
  cells[COL_STATUS] = env->status ? env->status : "-";
  cells[COL_COUNT] = nums[0];
  cells[COL_PENDING] = nums[2];
  cells[COL_SENT] = nums[3];
  cells[COL_FAILED] = nums[4];
  cells[COL_CANCELLED] = nums[5];
  cells[COL_CAP] = nums[1];
  cells[COL_TEMPLATE] = env->template_id ? env->template_id : "-";
  cells[COL_AT] = env->requested_at ? env->requested_at : "-";
  cells[COL_BY] = env->requested_by ? env->requested_by : "-";
  cells[COL_REASON] = env->refused_reason ? env->refused_reason : "-";
}

static void print_envelope_table(const cl_envelope_list *list, const cl_envelope_progress *prog) {
  static const char *const header[NCOLS] = {
      "ID",        "STATUS", "COUNT",    "PENDING",      "SENT",         "FAILED",
      "CANCELLED", "CAP",    "TEMPLATE", "REQUESTED_AT", "REQUESTED_BY", "REFUSED_REASON"};
  if (list->count == 0) {
    printf("no envelopes\n");
    return;
  }
  int width[NCOLS];
  for (int c = 0; c < NCOLS; c++) width[c] = display_width(header[c]);
  for (size_t i = 0; i < list->count; i++) {
    char nums[NNUMS][24];
    const char *cells[NCOLS];
    envelope_cells(&list->items[i], &prog[i], nums, cells);
    for (int c = 0; c < NCOLS; c++) {
      int w = display_width(cells[c]);
      width[c] = w > width[c] ? w : width[c];
    }
  }
  for (size_t i = 0; i <= list->count; i++) {
    /* Here, not in the else: cells may point into nums until the row ends. */
    // cppcheck-suppress variableScope
    char nums[NNUMS][24];
    const char *cells[NCOLS];
    if (i == 0) memcpy(cells, header, sizeof cells);
    else envelope_cells(&list->items[i - 1], &prog[i - 1], nums, cells);
    for (int c = 0; c < NCOLS; c++) {
      /* The last column is not padded: no trailing blanks. */
      print_cell(cells[c], c + 1 < NCOLS ? width[c] : 0);
      if (c + 1 < NCOLS) fputs("  ", stdout);
    }
    putchar('\n');
  }
}

int cli_cmd_envelopes(cli_ctx *ctx) {
  cl_envelope_query query = {0};
  int64_t limit = 50;
  int rc = int_option(ctx, CLI_OPT_LIMIT, "--limit", 1, INT_MAX, &limit);
  if (rc != 0) return rc;
  query.template_id = cli_opt(ctx, CLI_OPT_TEMPLATE);
  query.status = cli_opt(ctx, CLI_OPT_STATUS);
  query.limit = (int)limit;

  cl_engine *eng;
  if ((rc = cli_open(ctx, &eng)) != 0) return rc;
  cl_envelope_list list = {0};
  cl_envelope_progress *prog = NULL;
  const char **ids = NULL;
  cl_error err;
  cl_status st = cl_envelopes_list(eng, &query, &list, &err);
  if (st == CL_OK && list.count > 0) {
    /* Delivery progress of the listed envelopes, in one statement. */
    prog = calloc(list.count, sizeof *prog);
    ids = calloc(list.count, sizeof *ids);
    if (prog && ids) {
      for (size_t i = 0; i < list.count; i++) ids[i] = list.items[i].id;
      st = cl_envelopes_progress(eng, ids, list.count, prog, &err);
    } else {
      st = CL_DB_ERROR;
      snprintf(err.message, sizeof err.message, "out of memory");
    }
  }
  if (st != CL_OK) {
    rc = cli_fail_status(st, &err);
  } else if (ctx->json) {
    for (size_t i = 0; i < list.count && rc == 0; i++) {
      json_t *o = cli_json_envelope(&list.items[i]);
      json_object_set_new(o, "pending", json_integer(prog[i].pending));
      json_object_set_new(o, "sent", json_integer(prog[i].sent));
      json_object_set_new(o, "failed", json_integer(prog[i].failed));
      json_object_set_new(o, "cancelled", json_integer(prog[i].cancelled));
      rc = cli_json_print(o);
    }
  } else {
    print_envelope_table(&list, prog);
  }
  free(prog);
  free(ids);
  cl_envelope_list_clear(&list);
  cl_close(eng);
  return rc;
}
