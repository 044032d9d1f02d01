/*
 * engine.c - cl_open/cl_close and configuration.
 *
 * Resolves the configuration (explicit value, then environment, then the
 * documented default), validates the schema name and connects (db.c
 * registers the statement table for the schema).  The cap lives on the
 * engine and is read fresh by every bulk call.  Uses db.c, telemetry.c,
 * log.c, and the units whose state it frees (policy.c, ops.c, queue.c);
 * nothing below calls back into it.
 */
#include "engine.h"
#include "http.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cl_config_init(cl_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->log_level = CL_LOG_INFO;
}

static bool schema_valid(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 63) return false;
  if (!((s[0] >= 'a' && s[0] <= 'z') || s[0] == '_')) return false;
  for (size_t i = 1; i < n; i++)
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
      return false;
  return true;
}

/* CAIRNLOOP_MAX_BATCH_SIZE: a positive integer, else invalid_argument. */
static cl_status env_cap(int *out, cl_error *err) {
  const char *v = getenv("CAIRNLOOP_MAX_BATCH_SIZE");
  if (!v || !*v) {
    *out = CL_DEFAULT_MAX_BATCH_SIZE;
    return CL_OK;
  }
  char *end;
  errno = 0;
  long n = strtol(v, &end, 10);
  if (errno || *end || n < 1 || n > CL_MAX_COHORT)
    return cl__fail(err, CL_INVALID_ARGUMENT,
                    "CAIRNLOOP_MAX_BATCH_SIZE must be an integer from 1 to %d, got '%s'",
                    CL_MAX_COHORT, v);
  *out = (int)n;
  return CL_OK;
}

/* CAIRNLOOP_NO_PREPARED_STATEMENTS: a yes/no word, else invalid_argument. */
static cl_status env_no_prepare(bool *out, cl_error *err) {
  static const char *const yes[] = {"1", "true", "yes", "on"}, *const no[] = {"", "0", "false",
                                                                              "no", "off"};
  const char *v = getenv("CAIRNLOOP_NO_PREPARED_STATEMENTS");
  *out = false;
  if (!v) return CL_OK;
  for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
    if (strcmp(v, yes[i]) == 0) {
      *out = true;
      return CL_OK;
    }
  for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
    if (strcmp(v, no[i]) == 0) return CL_OK;
  return cl__fail(err, CL_INVALID_ARGUMENT,
                  "CAIRNLOOP_NO_PREPARED_STATEMENTS must be 1 or 0, got '%.32s'", v);
}

/* The allow list: cfg->http_allow, then CAIRNLOOP_HTTP_ALLOW's
 * comma-separated patterns (blanks around them dropped).  No pattern: no
 * client, and every request is not_allowed. */
static cl_status open_http(cl_engine *eng, const char *const *allow, cl_error *err) {
  const char *env = getenv("CAIRNLOOP_HTTP_ALLOW");
  size_t n = 0, cap = 1;
  for (const char *const *a = allow; a && *a; a++) cap++;
  for (const char *c = env; c && *c; c++) cap += *c == ',';
  if (env) cap++;
  char *copy = env ? strdup(env) : NULL;
  const char **list = calloc(cap, sizeof *list);
  cl_status st = CL_OK;
  if (!list || (env && !copy)) {
    st = cl__fail(err, CL_DB_ERROR, "out of memory");
    goto done;
  }
  for (const char *const *a = allow; a && *a; a++) list[n++] = *a;
  for (char *save = NULL, *tok = copy ? strtok_r(copy, ",", &save) : NULL; tok;
       tok = strtok_r(NULL, ",", &save)) {
    while (*tok == ' ' || *tok == '\t') tok++;
    char *end = tok + strlen(tok);
    while (end > tok && (end[-1] == ' ' || end[-1] == '\t')) *--end = '\0';
    if (*tok) list[n++] = tok;
  }
  if (n) st = cl__http_new(list, &eng->http, err);
done:
  free(list);
  free(copy);
  return st;
}

cl_status cl_open(cl_engine **out, const cl_config *cfg_in, cl_error *err) {
  cl_config defaults;
  const cl_config *cfg = cfg_in;
  if (!cfg) {
    cl_config_init(&defaults);
    cfg = &defaults;
  }
  if (!out) return cl__fail(err, CL_INVALID_ARGUMENT, "no place to store the engine");
  *out = NULL;

  const char *schema = cfg->schema ? cfg->schema : "cairnloop";
  if (!schema_valid(schema))
    return cl__fail(err, CL_INVALID_ARGUMENT,
                    "schema '%.64s' is invalid: use [a-z_][a-z0-9_]*, at most 63 bytes", schema);
  int cap = cfg->max_batch_size;
  if (cap < 0 || cap > CL_MAX_COHORT)
    return cl__fail(err, CL_INVALID_ARGUMENT, "max_batch_size must be from 1 to %d, got %d",
                    CL_MAX_COHORT, cap);
  if (cap == 0) {
    cl_status st = env_cap(&cap, err);
    if (st != CL_OK) return st;
  }
  if (cfg->hook_instruction_limit < 0 || cfg->hook_time_limit_ms < 0)
    return cl__fail(err, CL_INVALID_ARGUMENT, "hook budgets must not be negative");
  bool no_prepare = cfg->no_prepared_statements != 0;
  if (!no_prepare) {
    cl_status st = env_no_prepare(&no_prepare, err);
    if (st != CL_OK) return st;
  }

  cl_engine *eng = calloc(1, sizeof *eng);
  if (!eng) return cl__fail(err, CL_DB_ERROR, "out of memory");
  snprintf(eng->schema, sizeof eng->schema, "%s", schema);
  eng->max_batch_size = cap;
  eng->hook_instruction_limit = cfg->hook_instruction_limit ? cfg->hook_instruction_limit
                                                            : CL_DEFAULT_HOOK_INSTRUCTIONS;
  eng->hook_time_limit_ms = cfg->hook_time_limit_ms ? cfg->hook_time_limit_ms
                                                    : CL_DEFAULT_HOOK_TIME_MS;
  eng->hook_memory_limit = cfg->hook_memory_limit ? cfg->hook_memory_limit : CL_DEFAULT_HOOK_MEMORY;
  if (cfg->max_attempts < 0 || cfg->lease_seconds < 0 || cfg->backoff_base_ms < 0) goto fail_config;
  eng->max_attempts = cfg->max_attempts ? cfg->max_attempts : CL_DEFAULT_MAX_ATTEMPTS;
  eng->lease_seconds = cfg->lease_seconds ? cfg->lease_seconds : CL_DEFAULT_LEASE_SECONDS;
  eng->backoff_base_ms = cfg->backoff_base_ms ? cfg->backoff_base_ms : CL_DEFAULT_BACKOFF_BASE_MS;
  eng->log = cfg->log ? cfg->log : cl__log_stderr;
  eng->log_ud = cfg->log_ud;
  eng->log_level = cfg->log_level;
  cl__ops_init(&eng->ops, cfg);

  const char *db = cfg->database;
  if (!db) db = getenv("CAIRNLOOP_DATABASE_URL");
  if (!db) db = ""; /* libpq's own defaults: PGHOST, PGDATABASE, ... */

  cl_status st = open_http(eng, cfg->http_allow, err);
  if (st != CL_OK) {
    cl_close(eng);
    return st;
  }
  eng->db.unnamed = no_prepare;
  st = cl__db_connect(&eng->db, db, eng->schema, err);
  if (st != CL_OK) {
    cl_close(eng);
    return st;
  }
  *out = eng;
  cl__ok(err);
  return CL_OK;

fail_config:
  free(eng);
  return cl__fail(err, CL_INVALID_ARGUMENT,
                  "max_attempts, lease_seconds and backoff_base_ms must not be negative");
}

void cl_close(cl_engine *eng) {
  if (!eng) return;
  if (eng->in_hook) {
    /* Freeing the engine under the hook that runs would leave its caller
     * with freed memory: refuse loudly, the host closes it afterwards. */
    cl_log(eng, CL_LOG_ERROR, "cl_close called from inside a hook of the same engine: ignored");
    return;
  }
  if (eng->has_auditor && eng->auditor.release) eng->auditor.release(eng->auditor.ud);
  if (eng->has_resolver && eng->resolver.release) eng->resolver.release(eng->resolver.ud);
  if (eng->has_notifier) {
    if (eng->notifier_async && eng->anotifier.release) eng->anotifier.release(eng->anotifier.ud);
    if (!eng->notifier_async && eng->notifier.release) eng->notifier.release(eng->notifier.ud);
  }
  eng->has_auditor = eng->has_resolver = eng->has_notifier = false;
  /* Delivered but unrecorded outcomes: one last try, so that a worker
   * stopping after an outage does not leave them to be delivered again. */
  cl__queue_release(eng);
  cl__tel_free(&eng->tel);
  /* The policy state goes after the hooks and handlers that point into it. */
  cl__policy_free(eng->policy);
  eng->policy = NULL;
  cl__http_free(eng->http);
  cl__db_close(&eng->db);
  free(eng);
}

cl_status cl_set_max_batch_size(cl_engine *eng, int n, cl_error *err) {
  CL__ENTER(eng, err);
  if (n < 1 || n > CL_MAX_COHORT)
    return cl__fail(err, CL_INVALID_ARGUMENT, "max_batch_size must be from 1 to %d, got %d",
                    CL_MAX_COHORT, n);
  eng->max_batch_size = n;
  cl__ok(err);
  return CL_OK;
}

int cl_max_batch_size(const cl_engine *eng) { return eng ? eng->max_batch_size : 0; }

const char *cl_schema(const cl_engine *eng) { return eng ? eng->schema : NULL; }
