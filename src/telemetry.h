/*
 * telemetry.h - the event bus: handlers attached by exact event name.
 *
 * Known events are an enum so that emit sites test one array slot; with no
 * handler attached an emit is a load and a branch (no allocation, no
 * formatting: callers build metadata only inside cl__tel_on()).  Handlers
 * attached to names the engine never emits are kept and never called.
 */
#ifndef CL_TELEMETRY_H
#define CL_TELEMETRY_H

#include "cairnloop.h"

#include <stdbool.h>

/*
 * Every event the engine emits: the enum suffix, then the parts of its name
 * as handlers receive them.  This is the one list of event names: the enum,
 * the dotted names (CL__EVENT_DOTTED), the part lists and the Lua EVENTS
 * table all derive from it.
 */
#define CL__EVENT_MAP(XX)                                                            \
  XX(TRIGGER_START, "cairnloop", "outbound", "triggered", "start")                   \
  XX(TRIGGER_STOP, "cairnloop", "outbound", "triggered", "stop")                     \
  XX(TRIGGER_EXCEPTION, "cairnloop", "outbound", "triggered", "exception")           \
  XX(BULK_START, "cairnloop", "outbound", "bulk", "triggered", "start")              \
  XX(BULK_STOP, "cairnloop", "outbound", "bulk", "triggered", "stop")                \
  XX(BULK_EXCEPTION, "cairnloop", "outbound", "bulk", "triggered", "exception")      \
  XX(BULK_REFUSED, "cairnloop", "outbound", "bulk", "triggered")                     \
  XX(DELIVERY_SENT, "cairnloop", "outbound", "delivery", "sent")                     \
  XX(DELIVERY_FAILED, "cairnloop", "outbound", "delivery", "failed")                 \
  XX(DELIVERY_NO_OP, "cairnloop", "outbound", "delivery", "no_op")                   \
  XX(DELIVERY_CANCELLED, "cairnloop", "outbound", "delivery", "cancelled")           \
  XX(TRACE_TRIGGER_STARTED, "cairnloop", "outbound", "trace", "trigger_started")     \
  XX(TRACE_TRIGGER_COMPLETED, "cairnloop", "outbound", "trace", "trigger_completed") \
  XX(TRACE_TRIGGER_FAILED, "cairnloop", "outbound", "trace", "trigger_failed")       \
  XX(TRACE_BULK_SUBMITTED, "cairnloop", "outbound", "trace", "bulk_submitted")       \
  XX(TRACE_BULK_FAILED, "cairnloop", "outbound", "trace", "bulk_failed")             \
  XX(TRACE_BULK_REFUSED, "cairnloop", "outbound", "trace", "bulk_refused")           \
  XX(TRACE_DELIVERY_SENT, "cairnloop", "outbound", "trace", "delivery_sent")         \
  XX(TRACE_DELIVERY_FAILED, "cairnloop", "outbound", "trace", "delivery_failed")

/* The most parts an event name has in CL__EVENT_MAP (CL__EVENT_DOTTED
 * joins up to this many). */
#define CL__EVENT_MAX_PARTS 6

/*
 * CL__EVENT_DOTTED("a", "b", "c") is the string literal "a.b.c", joined at
 * compile time: the count of parts picks the joiner.
 */
#define CL__EVENT_DOTTED(...)                                                           \
  CL__EV_PICK_(__VA_ARGS__, CL__EV_JOIN6_, CL__EV_JOIN5_, CL__EV_JOIN4_, CL__EV_JOIN3_, \
               CL__EV_JOIN2_, CL__EV_JOIN1_, unused)                                    \
  (__VA_ARGS__)
#define CL__EV_PICK_(a, b, c, d, e, f, join, ...) join
#define CL__EV_JOIN1_(a) a
#define CL__EV_JOIN2_(a, b) a "." b
#define CL__EV_JOIN3_(a, b, c) a "." b "." c
#define CL__EV_JOIN4_(a, b, c, d) a "." b "." c "." d
#define CL__EV_JOIN5_(a, b, c, d, e) a "." b "." c "." d "." e
#define CL__EV_JOIN6_(a, b, c, d, e, f) a "." b "." c "." d "." e "." f

typedef enum cl__event {
#define XX(name, ...) CL__EV_##name,
  CL__EVENT_MAP(XX)
#undef XX
      CL__EV__COUNT
} cl__event;

/* The dotted name of a known event ("cairnloop.outbound.triggered.start"). */
const char *cl__event_name(cl__event ev);
/* Its parts, NULL-terminated: the list handlers receive. */
const char *const *cl__event_parts(cl__event ev);

typedef struct cl__handler {
  char *id;
  char **names; /* dotted event names, owned */
  size_t nnames;
  cl_handler_fn fn;
  void *config;
  void (*release)(void *config); /* called once, when detached or on close */
  bool dead;                     /* detached during an emit; freed after it */
  struct cl__handler *next;
} cl__handler;

typedef struct cl__telemetry {
  cl__handler *handlers;                 /* every attached handler, attach order */
  cl__handler **by_event[CL__EV__COUNT]; /* live handlers per known event */
  size_t n_by_event[CL__EV__COUNT];
  int emitting; /* nesting depth: lists are rebuilt only at depth 0 */
  bool dirty;
} cl__telemetry;

static inline bool cl__tel_on(const cl__telemetry *t, cl__event ev) {
  return t->n_by_event[ev] != 0;
}

/* Calls every handler of `ev`.  Callers check cl__tel_on() first. */
void cl__tel_emit(cl__telemetry *t, cl__event ev, const cl_kv *measurements, size_t nmeas,
                  const cl_kv *metadata, size_t nmeta);
void cl__tel_free(cl__telemetry *t);

/* Monotonic and wall clocks in nanoseconds, for span measurements. */
int64_t cl__monotonic_ns(void);
int64_t cl__system_ns(void);

#endif
