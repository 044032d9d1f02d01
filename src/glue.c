/*
 * glue.c - the half of the Lua glue that needs no Lua (see glue.h): the
 * hook budget, boxes, error text and failure logging, parameter and cell
 * forms.  One copy in the engine serves both Lua ABIs, so only the code
 * that really touches a lua_State is compiled twice (lua_glue.inc).
 * Uses engine.h (cl__fail, cl_log, the engine's tx) and jansson.
 */
#include "glue.h"

#include <jansson.h>

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------ */
/* The hook budget                                                      */
/* ------------------------------------------------------------------ */

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void cl__budget_arm(cl__budget *b, int64_t instructions, int64_t ms) {
  b->used = 0;
  b->limit = instructions;
  b->time_limit_ms = ms;
  b->deadline_ns = now_ns() + ms * 1000000;
  b->exceeded = CL__BUDGET_WITHIN;
}

int cl__budget_tick(cl__budget *b, int count) {
  if (b->exceeded != CL__BUDGET_WITHIN) return b->exceeded;
  b->used += count;
  if (b->used >= b->limit) b->exceeded = CL__BUDGET_OVER_INSTRUCTIONS;
  /* tx:exec burns time without burning instructions: check the clock too. */
  else if (now_ns() >= b->deadline_ns) b->exceeded = CL__BUDGET_OVER_TIME;
  return b->exceeded;
}

int cl__budget_clock(cl__budget *b) {
  if (b->exceeded == CL__BUDGET_WITHIN && now_ns() >= b->deadline_ns)
    b->exceeded = CL__BUDGET_OVER_TIME;
  return b->exceeded;
}

const char *cl__budget_what(const cl__budget *b) {
  return b->exceeded == CL__BUDGET_OVER_INSTRUCTIONS ? "instruction budget exceeded"
                                                     : "time limit exceeded";
}

void cl__budget_fail(const cl__budget *b, const char *hook, cl_error *err) {
  if (b->exceeded == CL__BUDGET_OVER_INSTRUCTIONS)
    cl__fail(err, CL_HOOK_ERROR, "%s: instruction budget exceeded (%lld instructions)", hook,
             (long long)b->limit);
  else
    cl__fail(err, CL_HOOK_ERROR, "%s: time limit exceeded (%lld ms)", hook,
             (long long)b->time_limit_ms);
}

/* ------------------------------------------------------------------ */
/* Error text                                                           */
/* ------------------------------------------------------------------ */

void cl__one_line(char *buf, size_t cap, const char *s, size_t len) {
  size_t i, n = 0;
  if (cap == 0) return;
  for (i = 0; i < len && n + 1 < cap; i++) {
    unsigned char ch = (unsigned char)s[i];
    buf[n++] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
  }
  buf[n] = '\0';
}

/*
 * Fills err with "<hook>: <first part of what the handler produced>" as one
 * line and returns where the traceback starts in `full` (NULL if none).
 */
static const char *error_text(const char *hook, const char *full, cl_error *err) {
  const char *tb = NULL, *p = full;
  char line[CL_ERROR_MESSAGE_MAX];
  /* The handler appends "\nstack traceback:"; the last one is ours. */
  while ((p = strstr(p, "\nstack traceback:")) != NULL) tb = p++;
  cl__one_line(line, sizeof line, full, tb ? (size_t)(tb - full) : strlen(full));
  cl__fail(err, CL_HOOK_ERROR, "%s: %s", hook, line);
  return tb ? tb + 1 : NULL;
}

void cl__hook_failed(cl_engine *eng, const char *hook, const char *full, bool out_of_memory,
                     const cl__budget *budget, size_t mem_limit, cl_error *err) {
  const char *tb = error_text(hook, full, err), *line;
  cl_log_level level;
  if (budget && budget->exceeded != CL__BUDGET_WITHIN) {
    cl__budget_fail(budget, hook, err);
  } else if (out_of_memory) {
    if (mem_limit)
      cl__fail(err, CL_HOOK_ERROR, "%s: memory limit exceeded (%zu bytes)", hook, mem_limit);
    else cl__fail(err, CL_HOOK_ERROR, "%s: not enough memory", hook);
    tb = NULL;
  }
  /* An auditor that raised only because the operation's own statement
   * already failed (a duplicate, an unknown conversation: its tx:exec then
   * meets an aborted transaction) is not the failure: the operation
   * reports the statement's.  Keep that out of the error log. */
  level = cl__db_tx_doomed(&eng->db) ? CL_LOG_DEBUG : CL_LOG_ERROR;
  cl_log(eng, level, "%s", err->message);
  /* One log line per traceback line: the sink takes single lines. */
  for (line = tb; line && *line;) {
    const char *end = strchr(line, '\n');
    size_t n = end ? (size_t)(end - line) : strlen(line);
    char buf[CL_ERROR_MESSAGE_MAX];
    cl__one_line(buf, sizeof buf, line, n);
    cl_log(eng, level, "%s: %s", hook, buf);
    line = end ? end + 1 : NULL;
  }
}

/* ------------------------------------------------------------------ */
/* Boxes                                                                */
/* ------------------------------------------------------------------ */

void cl__box_release(cl__box *b) {
  void (*drop)(void *) = b->drop;
  b->drop = NULL; /* before the call: drop must run once only */
  if (drop) drop(b->p);
}

void cl__drop_json(void *json) { json_decref((json_t *)json); }
void cl__drop_rows(void *rows) { cl_rows_free((cl_rows *)rows); }

/* ------------------------------------------------------------------ */
/* Values                                                               */
/* ------------------------------------------------------------------ */

char *cl__json_take_text(json_t *tree, bool any) {
  char *text = json_dumps(tree, JSON_COMPACT | (any ? JSON_ENCODE_ANY : 0));
  json_decref(tree);
  return text;
}

void cl__param_float(char *buf, size_t cap, double d) {
  if (isnan(d)) snprintf(buf, cap, "NaN");
  else if (isinf(d)) snprintf(buf, cap, "%s", d > 0 ? "Infinity" : "-Infinity");
  else snprintf(buf, cap, "%.17g", d);
}

cl__cell cl__cell_of(unsigned type_oid) {
  switch (type_oid) {
  case 20: /* int8 */
  case 21: /* int2 */
  case 23: /* int4 */
  case 26: /* oid */
    return CL__CELL_INTEGER;
  case 16: /* bool */
    return CL__CELL_BOOLEAN;
  case 700:  /* float4 */
  case 701:  /* float8 */
  case 1700: /* numeric */
    return CL__CELL_NUMBER;
  default:
    return CL__CELL_TEXT;
  }
}

/* ------------------------------------------------------------------ */
/* The list_events handle                                               */
/* ------------------------------------------------------------------ */

cl_tx *cl__list_tx_begin(cl_engine *eng) {
  eng->tx.eng = eng;
  eng->tx.active = true;
  eng->tx.failed = false;
  return &eng->tx;
}

void cl__list_tx_end(cl_engine *eng) { eng->tx.active = false; }
