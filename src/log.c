/*
 * log.c - the engine's log: the level names (CL_LOG_LEVEL_MAP), cl_log and
 * the default sink (warnings and errors to stderr).  Every unit logs
 * through it; it uses only the engine's sink fields.
 */
#include "engine.h"

#include <stdio.h>
#include <string.h>

static const char *const level_names[] = {
#define XX(name, str) str,
    CL_LOG_LEVEL_MAP(XX)
#undef XX
};

const char *cl_log_level_name(cl_log_level level) {
  return (unsigned)level < CL_LOG__COUNT ? level_names[level] : NULL;
}

cl_status cl_log_level_parse(const char *name, cl_log_level *level, cl_error *err) {
  for (int i = 0; name && i < CL_LOG__COUNT; i++)
    if (strcmp(name, level_names[i]) == 0) {
      *level = (cl_log_level)i;
      cl__ok(err);
      return CL_OK;
    }
  return cl__fail(err, CL_INVALID_ARGUMENT,
                  "log level '%.32s' is unknown: use debug, info, warn or error",
                  name ? name : "(null)");
}

void cl__log_stderr(void *ud, cl_log_level level, const char *line) {
  (void)ud;
  /* A level outside the table comes from a host's cast; print it as "?"
   * rather than read past level_names. */
  const char *name = cl_log_level_name(level);
  if (level >= CL_LOG_WARN) fprintf(stderr, "cairnloop [%s] %s\n", name ? name : "?", line);
}

void cl__vlog(cl_engine *eng, cl_log_level level, const char *fmt, va_list ap) {
  if (!eng || level < eng->log_level) return;
  char line[1024];
  vsnprintf(line, sizeof line, fmt, ap);
  eng->log(eng->log_ud, level, line);
}

void cl_log(cl_engine *eng, cl_log_level level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  cl__vlog(eng, level, fmt, ap);
  va_end(ap);
}
