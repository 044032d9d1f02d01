/*
 * capture.c - recorders for what the engine reports: a telemetry handler
 * that deep-copies every event (name, the exact measurement and metadata
 * key sets and their values), key-set and value assertions over those
 * copies, and a log sink that keeps every line.
 */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const ct_all_events[] = {
    "cairnloop.outbound.triggered.start",         "cairnloop.outbound.triggered.stop",
    "cairnloop.outbound.triggered.exception",     "cairnloop.outbound.bulk.triggered.start",
    "cairnloop.outbound.bulk.triggered.stop",     "cairnloop.outbound.bulk.triggered.exception",
    "cairnloop.outbound.bulk.triggered",          "cairnloop.outbound.delivery.sent",
    "cairnloop.outbound.delivery.failed",         "cairnloop.outbound.delivery.no_op",
    "cairnloop.outbound.delivery.cancelled",      "cairnloop.outbound.trace.trigger_started",
    "cairnloop.outbound.trace.trigger_completed", "cairnloop.outbound.trace.trigger_failed",
    "cairnloop.outbound.trace.bulk_submitted",    "cairnloop.outbound.trace.bulk_failed",
    "cairnloop.outbound.trace.bulk_refused",      "cairnloop.outbound.trace.delivery_sent",
    "cairnloop.outbound.trace.delivery_failed",
};
const size_t ct_all_events_count = CT_ARRAY_LEN(ct_all_events);

static char *xstrdup(const char *s) {
  if (s == NULL) return NULL;
  char *d = strdup(s);
  assert_non_null(d);
  return d;
}

void ct_capture_init(ct_capture *c) { memset(c, 0, sizeof *c); }

static void copy_map(ct_map *dst, const cl_map *src) {
  dst->count = src != NULL ? src->count : 0;
  dst->items = dst->count ? calloc(dst->count, sizeof *dst->items) : NULL;
  for (size_t i = 0; i < dst->count; i++) {
    const cl_kv *kv = &src->items[i];
    dst->items[i].key = xstrdup(kv->key);
    dst->items[i].type = kv->type;
    dst->items[i].i = kv->type == CL_VALUE_INT ? kv->i : 0;
    dst->items[i].s = kv->type == CL_VALUE_STRING ? xstrdup(kv->s) : NULL;
  }
}

static void free_map(ct_map *m) {
  for (size_t i = 0; i < m->count; i++) {
    free(m->items[i].key);
    free(m->items[i].s);
  }
  free(m->items);
  m->items = NULL;
  m->count = 0;
}

void ct_capture_reset(ct_capture *c) {
  for (size_t i = 0; i < c->count; i++) {
    free(c->events[i].name);
    free_map(&c->events[i].measurements);
    free_map(&c->events[i].metadata);
  }
  c->count = 0;
}

void ct_capture_free(ct_capture *c) {
  ct_capture_reset(c);
  free(c->events);
  memset(c, 0, sizeof *c);
}

void ct_capture_handler(const char *const *event, const cl_measurements *measurements,
                        const cl_metadata *metadata, void *config) {
  ct_capture *c = config;
  if (c->count == c->cap) {
    c->cap = c->cap ? c->cap * 2 : 64;
    c->events = realloc(c->events, c->cap * sizeof *c->events);
    assert_non_null(c->events);
  }
  ct_event *e = &c->events[c->count++];
  /* Join the name parts back into the dotted form the tests compare with. */
  size_t len = 0;
  for (size_t i = 0; event[i] != NULL; i++) len += strlen(event[i]) + 1;
  e->name = calloc(1, len + 1);
  assert_non_null(e->name);
  size_t at = 0;
  for (size_t i = 0; event[i] != NULL; i++)
    at += (size_t)snprintf(e->name + at, len + 1 - at, "%s%s", i > 0 ? "." : "", event[i]);
  copy_map(&e->measurements, measurements);
  copy_map(&e->metadata, metadata);
}

void ct_capture_attach_all(cl_engine *eng, ct_capture *c, const char *handler_id) {
  cl_error err;
  cl_status st = cl_attach_many(eng, handler_id, ct_all_events, ct_all_events_count,
                                ct_capture_handler, c, NULL, &err);
  ct_assert_ok(st, &err);
}

size_t ct_capture_count(const ct_capture *c, const char *name) {
  size_t n = 0;
  for (size_t i = 0; i < c->count; i++) n += strcmp(c->events[i].name, name) == 0;
  return n;
}

const ct_event *ct_capture_nth(const ct_capture *c, const char *name, size_t nth) {
  for (size_t i = 0; i < c->count; i++) {
    if (strcmp(c->events[i].name, name) == 0 && nth-- == 0) return &c->events[i];
  }
  return NULL;
}

static void print_map(const char *label, const ct_map *m) {
  print_message("    %s {", label);
  for (size_t i = 0; i < m->count; i++) {
    const ct_kv *kv = &m->items[i];
    if (kv->type == CL_VALUE_INT) {
      print_message(" %s=%lld", kv->key, (long long)kv->i);
    } else if (kv->type == CL_VALUE_STRING) {
      print_message(" %s=\"%s\"", kv->key, kv->s);
    } else {
      print_message(" %s=nil", kv->key);
    }
  }
  print_message(" }\n");
}

void ct_capture_dump(const ct_capture *c) {
  print_message("# %zu events recorded:\n", c->count);
  for (size_t i = 0; i < c->count; i++) {
    print_message("  %s\n", c->events[i].name);
    print_map("measurements", &c->events[i].measurements);
    print_map("metadata", &c->events[i].metadata);
  }
}

const ct_kv *ct_map_get(const ct_map *m, const char *key) {
  for (size_t i = 0; i < m->count; i++) {
    if (strcmp(m->items[i].key, key) == 0) return &m->items[i];
  }
  return NULL;
}

void ct_assert_keys_at(const ct_map *m, const char *file, int line, ...) {
  const char *expected[32];
  size_t n = 0;
  va_list ap;
  va_start(ap, line);
  for (const char *k = va_arg(ap, const char *); k != NULL; k = va_arg(ap, const char *)) {
    assert_true(n < CT_ARRAY_LEN(expected));
    expected[n++] = k;
  }
  va_end(ap);

  bool ok = m->count == n;
  for (size_t i = 0; ok && i < n; i++) ok = ct_map_get(m, expected[i]) != NULL;
  /* Same size and every expected key present: equal sets unless a key repeats. */
  for (size_t i = 0; ok && i < m->count; i++) {
    for (size_t j = i + 1; j < m->count; j++) {
      if (strcmp(m->items[i].key, m->items[j].key) == 0) ok = false;
    }
  }
  if (!ok) {
    print_error("%s:%d: key set differs\n  expected:", file, line);
    for (size_t i = 0; i < n; i++) print_error(" %s", expected[i]);
    print_error("\n  got:     ");
    for (size_t i = 0; i < m->count; i++) print_error(" %s", m->items[i].key);
    print_error("\n");
    _fail(file, line);
  }
}

void ct_assert_str_at(const ct_map *m, const char *key, const char *expected, const char *file,
                      int line) {
  const ct_kv *kv = ct_map_get(m, key);
  if (kv == NULL) {
    print_error("%s:%d: key %s missing\n", file, line, key);
    _fail(file, line);
  }
  if (expected == NULL) {
    if (kv->type != CL_VALUE_NIL) {
      print_error("%s:%d: %s: expected nil, got type %d (\"%s\")\n", file, line, key, kv->type,
                  kv->s != NULL ? kv->s : "");
      _fail(file, line);
    }
    return;
  }
  if (kv->type != CL_VALUE_STRING || strcmp(kv->s, expected) != 0) {
    print_error("%s:%d: %s: expected \"%s\", got %s%s%s\n", file, line, key, expected,
                kv->type == CL_VALUE_STRING ? "\"" : "",
                kv->type == CL_VALUE_STRING ? kv->s
                                            : (kv->type == CL_VALUE_NIL ? "nil" : "an integer"),
                kv->type == CL_VALUE_STRING ? "\"" : "");
    _fail(file, line);
  }
}

void ct_assert_int_at(const ct_map *m, const char *key, int64_t expected, const char *file,
                      int line) {
  const ct_kv *kv = ct_map_get(m, key);
  if (kv == NULL || kv->type != CL_VALUE_INT || kv->i != expected) {
    print_error("%s:%d: %s: expected integer %lld, got %s", file, line, key, (long long)expected,
                kv == NULL ? "no such key" : "");
    if (kv != NULL) {
      if (kv->type == CL_VALUE_INT) print_error("%lld", (long long)kv->i);
      else if (kv->type == CL_VALUE_STRING) print_error("string \"%s\"", kv->s);
      else print_error("nil");
    }
    print_error("\n");
    _fail(file, line);
  }
}

int64_t ct_get_int(const ct_map *m, const char *key) {
  const ct_kv *kv = ct_map_get(m, key);
  if (kv == NULL || kv->type != CL_VALUE_INT) fail_msg("%s: expected an integer value", key);
  return kv->i;
}

/* ---------------------------------------------------------------- log */

void ct_log_fn(void *ud, cl_log_level level, const char *line) {
  ct_log *log = ud;
  if (log->count == log->cap) {
    log->cap = log->cap ? log->cap * 2 : 16;
    log->lines = realloc(log->lines, log->cap * sizeof *log->lines);
    assert_non_null(log->lines);
  }
  log->lines[log->count].level = level;
  log->lines[log->count].line = xstrdup(line);
  log->count++;
}

size_t ct_log_count(const ct_log *log, cl_log_level level, const char *needle) {
  size_t n = 0;
  for (size_t i = 0; i < log->count; i++) {
    if (log->lines[i].level == level &&
        (needle == NULL || strstr(log->lines[i].line, needle) != NULL)) {
      n++;
    }
  }
  return n;
}

void ct_log_dump(const ct_log *log) {
  static const char *const names[] = {"debug", "info", "warn", "error"};
  print_message("# %zu log lines:\n", log->count);
  for (size_t i = 0; i < log->count; i++) {
    unsigned lv = (unsigned)log->lines[i].level;
    print_message("  [%s] %s\n", lv < 4 ? names[lv] : "?", log->lines[i].line);
  }
}

void ct_log_free(ct_log *log) {
  for (size_t i = 0; i < log->count; i++) free(log->lines[i].line);
  free(log->lines);
  memset(log, 0, sizeof *log);
}
