/*
 * telemetry.c - the event bus behind cl_attach/cl_detach and the emits.
 *
 * Handlers live in one list; per known event a flat array of live handlers
 * is rebuilt on attach/detach so an emit walks an array.  A handler may
 * detach itself or others while an emit is in progress: it is marked dead
 * and freed once the outermost emit returns.  Uses engine.h for cl__fail
 * and the entry guard.
 */
#include "telemetry.h"
#include "engine.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Both derived from CL__EVENT_MAP at compile time: const, shared by every
 * engine in the process. */
static const char *const event_names[CL__EV__COUNT] = {
#define XX(name, ...) CL__EVENT_DOTTED(__VA_ARGS__),
    CL__EVENT_MAP(XX)
#undef XX
};

static const char *const event_parts[CL__EV__COUNT][CL__EVENT_MAX_PARTS + 1] = {
#define XX(name, ...) {__VA_ARGS__, NULL},
    CL__EVENT_MAP(XX)
#undef XX
};

const char *cl__event_name(cl__event ev) { return event_names[ev]; }

const char *const *cl__event_parts(cl__event ev) { return event_parts[ev]; }

int64_t cl__monotonic_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t cl__system_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void handler_free(cl__handler *h) {
  if (h->release) h->release(h->config);
  for (size_t i = 0; i < h->nnames; i++) free(h->names[i]);
  free(h->names);
  free(h->id);
  free(h);
}

/* Rebuilds the per-event arrays from the list and frees dead handlers.
 * Returns false only on allocation failure (arrays are then left empty,
 * which drops events rather than calling freed handlers). */
static bool rebuild(cl__telemetry *t) {
  bool ok = true;
  for (cl__handler **pp = &t->handlers; *pp;) {
    cl__handler *h = *pp;
    if (h->dead) {
      *pp = h->next;
      handler_free(h);
    } else {
      pp = &h->next;
    }
  }
  for (int ev = 0; ev < CL__EV__COUNT; ev++) {
    size_t n = 0;
    for (cl__handler *h = t->handlers; h; h = h->next)
      for (size_t i = 0; i < h->nnames; i++)
        if (strcmp(h->names[i], event_names[ev]) == 0) n++;
    free(t->by_event[ev]);
    t->by_event[ev] = NULL;
    t->n_by_event[ev] = 0;
    if (n == 0) continue;
    /* An array of pointers to handlers, one per attached handler. */
    cl__handler **arr = malloc(n * sizeof(cl__handler *));  // NOLINT(bugprone-sizeof-expression)
    if (!arr) {
      ok = false;
      continue;
    }
    size_t k = 0;
    for (cl__handler *h = t->handlers; h; h = h->next)
      for (size_t i = 0; i < h->nnames; i++)
        if (strcmp(h->names[i], event_names[ev]) == 0) arr[k++] = h;
    t->by_event[ev] = arr;
    t->n_by_event[ev] = n;
  }
  t->dirty = false;
  return ok;
}

void cl__tel_emit(cl__telemetry *t, cl__event ev, const cl_kv *meas, size_t nmeas,
                  const cl_kv *meta, size_t nmeta) {
  cl_map m = {meas, nmeas}, md = {meta, nmeta};
  cl__handler **arr = t->by_event[ev];
  size_t n = t->n_by_event[ev];
  t->emitting++;
  for (size_t i = 0; i < n; i++) {
    cl__handler *h = arr[i];
    if (!h->dead) h->fn(event_parts[ev], &m, &md, h->config);
  }
  if (--t->emitting == 0 && t->dirty) rebuild(t);
}

void cl__tel_free(cl__telemetry *t) {
  for (cl__handler *h = t->handlers; h; h = h->next) h->dead = true;
  t->emitting = 0;
  rebuild(t);
}

static cl__handler *find(cl__telemetry *t, const char *id) {
  for (cl__handler *h = t->handlers; h; h = h->next)
    if (!h->dead && strcmp(h->id, id) == 0) return h;
  return NULL;
}

cl_status cl_attach_many(cl_engine *eng, const char *handler_id, const char *const *names,
                         size_t count, cl_handler_fn fn, void *config,
                         void (*release)(void *config), cl_error *err) {
  CL__ENTER(eng, err);
  cl__telemetry *t = &eng->tel;
  if (!handler_id || !*handler_id)
    return cl__fail(err, CL_INVALID_ARGUMENT, "handler_id must be a non-empty string");
  if (!fn) return cl__fail(err, CL_INVALID_ARGUMENT, "handler %s has no function", handler_id);
  if (count == 0)
    return cl__fail(err, CL_INVALID_ARGUMENT, "handler %s names no event", handler_id);
  for (size_t i = 0; i < count; i++)
    if (!names[i] || !*names[i])
      return cl__fail(err, CL_INVALID_ARGUMENT, "handler %s: event name %zu is empty", handler_id,
                      i + 1);
  if (find(t, handler_id))
    return cl__fail(err, CL_INVALID_ARGUMENT, "handler id %s is already attached", handler_id);

  cl__handler *h = calloc(1, sizeof *h);
  if (!h) return cl__fail(err, CL_INVALID_ARGUMENT, "out of memory");
  h->id = strdup(handler_id);
  h->names = calloc(count, sizeof *h->names);
  if (!h->id || !h->names) goto fail_oom;
  for (size_t i = 0; i < count; i++) {
    if (!(h->names[i] = strdup(names[i]))) goto fail_oom;
    h->nnames++;
  }
  h->fn = fn;
  h->config = config;
  /* Append, so handlers run in attach order. */
  cl__handler **pp = &t->handlers;
  while (*pp) pp = &(*pp)->next;
  *pp = h;
  h->release = release;
  if (t->emitting) t->dirty = true;
  else rebuild(t);
  cl__ok(err);
  return CL_OK;

fail_oom:
  h->release = NULL; /* the caller keeps `config` on failure */
  handler_free(h);
  return cl__fail(err, CL_INVALID_ARGUMENT, "out of memory");
}

cl_status cl_attach(cl_engine *eng, const char *handler_id, const char *event_name,
                    cl_handler_fn fn, void *config, void (*release)(void *config), cl_error *err) {
  CL__ENTER(eng, err);
  return cl_attach_many(eng, handler_id, &event_name, 1, fn, config, release, err);
}

/* May be called from inside a handler, also on itself: no entry guard,
 * only the NULL check. */
int cl_detach(cl_engine *eng, const char *handler_id) {
  if (!eng || !handler_id) return 0;
  cl__handler *h = find(&eng->tel, handler_id);
  if (!h) return 0;
  h->dead = true;
  if (eng->tel.emitting) eng->tel.dirty = true;
  else rebuild(&eng->tel);
  return 1;
}

const cl_kv *cl_map_get(const cl_map *map, const char *key) {
  if (!map) return NULL;
  for (size_t i = 0; i < map->count; i++)
    if (strcmp(map->items[i].key, key) == 0) return &map->items[i];
  return NULL;
}
