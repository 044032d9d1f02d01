/*
 * test_telemetry.c - the events of API.md's tables: for every path of
 * trigger and bulk_trigger, which events fire, with exactly the listed
 * measurement and metadata keys and the documented outcomes, on both the
 * bounded-metrics lane (enum-only) and the trace lane; and the handler API
 * (attach, attach_many, detach, detaching during an emit, release).
 */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S CT_SCHEMA
#define T_START "cairnloop.outbound.triggered.start"
#define T_STOP "cairnloop.outbound.triggered.stop"
#define T_EXC "cairnloop.outbound.triggered.exception"
#define B_START "cairnloop.outbound.bulk.triggered.start"
#define B_STOP "cairnloop.outbound.bulk.triggered.stop"
#define B_EXC "cairnloop.outbound.bulk.triggered.exception"
#define B_REFUSED "cairnloop.outbound.bulk.triggered"
#define TR_T_STARTED "cairnloop.outbound.trace.trigger_started"
#define TR_T_COMPLETED "cairnloop.outbound.trace.trigger_completed"
#define TR_T_FAILED "cairnloop.outbound.trace.trigger_failed"
#define TR_B_SUBMITTED "cairnloop.outbound.trace.bulk_submitted"
#define TR_B_FAILED "cairnloop.outbound.trace.bulk_failed"
#define TR_B_REFUSED "cairnloop.outbound.trace.bulk_refused"

typedef struct fixture {
  ct_world *w;
  ct_auditor auditor;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  f->w = ct_world_new(30, NULL);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  ct_world_free(f->w);
  ct_auditor_free(&f->auditor);
  free(f);
  ct_exec("DROP TRIGGER IF EXISTS fail_inserts ON %s.cairnloop_messages", S);
  ct_exec("DROP FUNCTION IF EXISTS %s.fail_inserts()", S);
  return 0;
}

/* ---------------------------------------------------------- assertions */

/* Fails (with every recorded event printed) unless exactly these counts. */
typedef struct expect {
  const char *name;
  size_t count;
} expect;

static void assert_events(const ct_capture *c, const expect *want, size_t n) {
  size_t total = 0;
  bool ok = true;
  for (size_t i = 0; i < n; i++) {
    size_t got = ct_capture_count(c, want[i].name);
    if (got != want[i].count) {
      print_error("%s: expected %zu events, got %zu\n", want[i].name, want[i].count, got);
      ok = false;
    }
    total += want[i].count;
  }
  if (c->count != total) {
    print_error("expected %zu events in all, got %zu\n", total, c->count);
    ok = false;
  }
  if (!ok) {
    ct_capture_dump(c);
    fail();
  }
}

static size_t position(const ct_capture *c, const ct_event *e) { return (size_t)(e - c->events); }

static const ct_event *nth(const ct_capture *c, const char *name, size_t i) {
  const ct_event *e = ct_capture_nth(c, name, i);
  if (e == NULL) {
    ct_capture_dump(c);
    fail_msg("no event %s #%zu", name, i);
  }
  return e;
}

static void assert_start(const ct_event *e, const char *outcome, int64_t count) {
  ct_assert_keys(&e->measurements, "system_time", "monotonic_time");
  assert_true(ct_get_int(&e->measurements, "system_time") > 0);
  ct_get_int(&e->measurements, "monotonic_time");
  if (count < 0) {
    ct_assert_keys(&e->metadata, "outcome");
  } else {
    ct_assert_keys(&e->metadata, "outcome", "count");
    ct_assert_int(&e->metadata, "count", count);
  }
  ct_assert_str(&e->metadata, "outcome", outcome);
}

static void assert_stop(const ct_event *e, const ct_event *start, const char *outcome,
                        int64_t count) {
  ct_assert_keys(&e->measurements, "duration", "monotonic_time");
  assert_true(ct_get_int(&e->measurements, "duration") >= 0);
  if (start != NULL) {
    assert_true(ct_get_int(&e->measurements, "monotonic_time") >=
                ct_get_int(&start->measurements, "monotonic_time"));
  }
  if (count < 0) {
    ct_assert_keys(&e->metadata, "outcome");
  } else {
    ct_assert_keys(&e->metadata, "outcome", "count");
    ct_assert_int(&e->metadata, "count", count);
  }
  ct_assert_str(&e->metadata, "outcome", outcome);
}

static void assert_exception(const ct_event *e, const char *kind, int64_t count) {
  ct_assert_keys(&e->measurements, "duration");
  assert_true(ct_get_int(&e->measurements, "duration") >= 0);
  if (count < 0) {
    ct_assert_keys(&e->metadata, "outcome", "kind");
  } else {
    ct_assert_keys(&e->metadata, "outcome", "kind", "count");
    ct_assert_int(&e->metadata, "count", count);
  }
  ct_assert_str(&e->metadata, "outcome", "exception");
  ct_assert_str(&e->metadata, "kind", kind);
}

static const char ANY_UUID[] = "(any uuid v4)";

/* envelope_id ANY_UUID: a generated one.  conversation_id 0: expected nil.  effective_cap < 0: key must be absent. */
static void assert_trace(const ct_event *e, const char *outcome, const char *envelope_id,
                         int64_t conversation_id, const char *template_id, const char *actor,
                         int effective_cap) {
  ct_assert_keys(&e->measurements, "count");
  ct_assert_int(&e->measurements, "count", 1);
  if (effective_cap < 0) {
    ct_assert_keys(&e->metadata, "openinference.span.kind", "bulk_envelope_id", "conversation_id",
                   "template_id", "actor_id", "outcome");
  } else {
    ct_assert_keys(&e->metadata, "openinference.span.kind", "bulk_envelope_id", "conversation_id",
                   "template_id", "actor_id", "outcome", "effective_cap");
    ct_assert_int(&e->metadata, "effective_cap", effective_cap);
  }
  ct_assert_str(&e->metadata, "openinference.span.kind", "GUARDRAIL");
  if (envelope_id == ANY_UUID) {
    /* A bulk that stored nothing still correlates its trace by the id it drew. */
    const ct_kv *kv = ct_map_get(&e->metadata, "bulk_envelope_id");
    assert_non_null(kv);
    assert_int_equal(kv->type, CL_VALUE_STRING);
    if (!ct_is_uuid_v4(kv->s)) fail_msg("bulk_envelope_id is not a UUID v4: %s", kv->s);
  } else {
    ct_assert_str(&e->metadata, "bulk_envelope_id", envelope_id);
  }
  if (conversation_id == 0) {
    ct_assert_str(&e->metadata, "conversation_id", NULL);
  } else {
    ct_assert_int(&e->metadata, "conversation_id", conversation_id);
  }
  ct_assert_str(&e->metadata, "template_id", template_id);
  ct_assert_str(&e->metadata, "actor_id", actor);
  if (outcome != NULL) ct_assert_str(&e->metadata, "outcome", outcome);
}

/* ------------------------------------------------------------- helpers */

static cl_status trigger(fixture *f, int64_t conv, const char *actor, const char *env,
                         cl_error *err) {
  cl_trigger_opts opts = {
      .template_id = "tpl", .actor = actor, .bulk_envelope_id = env, .content = "secret content"};
  cl_trigger_result res = {0};
  cl_status st = cl_trigger(f->w->eng, conv, &opts, &res, err);
  cl_trigger_result_clear(&res);
  return st;
}

static cl_status bulk(fixture *f, const int64_t *ids, size_t n, const char *actor,
                      char *envelope_id, cl_error *err) {
  cl_bulk_opts opts = {.template_id = "tpl", .rendered_body = "secret body", .actor = actor};
  cl_bulk_result res = {0};
  cl_status st = cl_bulk_trigger(f->w->eng, ids, n, &opts, &res, err);
  if (envelope_id != NULL) {
    snprintf(envelope_id, CL_UUID_LEN + 1, "%s", st == CL_OK ? res.envelope.id : "");
  }
  cl_bulk_result_clear(&res);
  return st;
}

static void install_failing_insert(void) {
  ct_exec("CREATE FUNCTION %s.fail_inserts() RETURNS trigger LANGUAGE plpgsql AS $$ "
          "BEGIN RAISE EXCEPTION 'no inserts today'; END $$",
          S);
  ct_exec("CREATE TRIGGER fail_inserts BEFORE INSERT ON %s.cairnloop_messages "
          "FOR EACH ROW EXECUTE FUNCTION %s.fail_inserts()",
          S, S);
}

/* ------------------------------------------------------------- trigger */

static void test_telemetry__trigger_success(void **state) {
  fixture *f = *state;
  cl_error err;
  ct_assert_ok(trigger(f, 3, NULL, NULL, &err), &err);
  const ct_capture *c = &f->w->cap;
  const expect want[] = {{T_START, 1}, {T_STOP, 1}, {TR_T_STARTED, 1}, {TR_T_COMPLETED, 1}};
  assert_events(c, want, CT_ARRAY_LEN(want));
  const ct_event *start = nth(c, T_START, 0), *stop = nth(c, T_STOP, 0);
  assert_true(position(c, start) < position(c, stop));
  assert_start(start, "triggered", -1);
  assert_stop(stop, start, "triggered", -1);
  /* Without actor or envelope those keys are present and nil. */
  assert_trace(nth(c, TR_T_STARTED, 0), NULL, NULL, 3, "tpl", NULL, -1);
  assert_trace(nth(c, TR_T_COMPLETED, 0), "triggered", NULL, 3, "tpl", NULL, -1);
  assert_true(position(c, nth(c, TR_T_STARTED, 0)) < position(c, nth(c, TR_T_COMPLETED, 0)));
}

static void test_telemetry__trigger_trace_carries_actor_and_envelope(void **state) {
  fixture *f = *state;
  const char *env = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
  cl_error err;
  ct_assert_ok(trigger(f, 4, "operator:7", env, &err), &err);
  const ct_capture *c = &f->w->cap;
  assert_trace(nth(c, TR_T_COMPLETED, 0), "triggered", env, 4, "tpl", "operator:7", -1);
  /* The bounded lane still carries only the outcome. */
  assert_start(nth(c, T_START, 0), "triggered", -1);
  assert_stop(nth(c, T_STOP, 0), NULL, "triggered", -1);
}

static void test_telemetry__trigger_duplicate(void **state) {
  fixture *f = *state;
  cl_error err;
  ct_assert_ok(trigger(f, 5, NULL, NULL, &err), &err);
  ct_capture_reset(&f->w->cap);
  ct_assert_ok(trigger(f, 5, NULL, NULL, &err), &err);
  const ct_capture *c = &f->w->cap;
  const expect want[] = {{T_START, 1}, {T_STOP, 1}, {TR_T_STARTED, 1}, {TR_T_COMPLETED, 1}};
  assert_events(c, want, CT_ARRAY_LEN(want));
  assert_start(nth(c, T_START, 0), "triggered", -1);
  assert_stop(nth(c, T_STOP, 0), nth(c, T_START, 0), "duplicate", -1);
  assert_trace(nth(c, TR_T_COMPLETED, 0), "duplicate", NULL, 5, "tpl", NULL, -1);
}

static void test_telemetry__trigger_failed_unknown_conversation(void **state) {
  fixture *f = *state;
  cl_error err;
  ct_assert_error(trigger(f, 999, NULL, NULL, &err), &err, CL_UNKNOWN_CONVERSATION, NULL);
  const ct_capture *c = &f->w->cap;
  const expect want[] = {{T_START, 1}, {T_STOP, 1}, {TR_T_STARTED, 1}, {TR_T_FAILED, 1}};
  assert_events(c, want, CT_ARRAY_LEN(want));
  assert_stop(nth(c, T_STOP, 0), nth(c, T_START, 0), "failed", -1);
  assert_trace(nth(c, TR_T_FAILED, 0), "failed", NULL, 999, "tpl", NULL, -1);
}

static void test_telemetry__trigger_failed_audit_rejected(void **state) {
  fixture *f = *state;
  f->auditor.mode = CT_AUDIT_REJECT;
  f->auditor.reason = "no";
  ct_install_auditor(f->w->eng, &f->auditor);
  cl_error err;
  ct_assert_error(trigger(f, 2, "op", NULL, &err), &err, CL_AUDIT_REJECTED, NULL);
  const ct_capture *c = &f->w->cap;
  const expect want[] = {{T_START, 1}, {T_STOP, 1}, {TR_T_STARTED, 1}, {TR_T_FAILED, 1}};
  assert_events(c, want, CT_ARRAY_LEN(want));
  assert_stop(nth(c, T_STOP, 0), nth(c, T_START, 0), "failed", -1);
  assert_trace(nth(c, TR_T_FAILED, 0), "failed", NULL, 2, "tpl", "op", -1);
}

static void test_telemetry__trigger_exception_hook_error(void **state) {
  fixture *f = *state;
  f->auditor.mode = CT_AUDIT_HOOK_ERROR;
  f->auditor.reason = "boom";
  ct_install_auditor(f->w->eng, &f->auditor);
  cl_error err;
  ct_assert_error(trigger(f, 2, NULL, NULL, &err), &err, CL_HOOK_ERROR, NULL);
  const ct_capture *c = &f->w->cap;
  const expect want[] = {{T_START, 1}, {T_EXC, 1}, {TR_T_STARTED, 1}, {TR_T_FAILED, 1}};
  assert_events(c, want, CT_ARRAY_LEN(want));
  assert_exception(nth(c, T_EXC, 0), "hook_error", -1);
  assert_trace(nth(c, TR_T_FAILED, 0), "exception", NULL, 2, "tpl", NULL, -1);
}

static void test_telemetry__trigger_exception_db_error(void **state) {
  fixture *f = *state;
  install_failing_insert();
  cl_error err;
  ct_assert_error(trigger(f, 2, NULL, NULL, &err), &err, CL_DB_ERROR, NULL);
  const ct_capture *c = &f->w->cap;
  const expect want[] = {{T_START, 1}, {T_EXC, 1}, {TR_T_STARTED, 1}, {TR_T_FAILED, 1}};
  assert_events(c, want, CT_ARRAY_LEN(want));
  assert_exception(nth(c, T_EXC, 0), "db_error", -1);
  assert_trace(nth(c, TR_T_FAILED, 0), "exception", NULL, 2, "tpl", NULL, -1);
}

/* ---------------------------------------------------------------- bulk */

static void test_telemetry__bulk_success(void **state) {
  fixture *f = *state;
  const int64_t ids[] = {1, 2, 3};
  char env[CL_UUID_LEN + 1];
  cl_error err;
  ct_assert_ok(bulk(f, ids, 3, "agent_1", env, &err), &err);
  const ct_capture *c = &f->w->cap;
  const expect want[] = {{B_START, 1}, {B_STOP, 1}, {T_START, 3}, {T_STOP, 3}, {TR_B_SUBMITTED, 1}};
  assert_events(c, want, CT_ARRAY_LEN(want));
  const ct_event *bstart = nth(c, B_START, 0), *bstop = nth(c, B_STOP, 0);
  assert_start(bstart, "submitted", 3);
  assert_stop(bstop, bstart, "submitted", 3);
  for (size_t i = 0; i < 3; i++) {
    const ct_event *s = nth(c, T_START, i), *e = nth(c, T_STOP, i);
    assert_start(s, "triggered", -1);
    assert_stop(e, NULL, "triggered", -1);
    /* Per-recipient spans sit inside the bulk span. */
    assert_true(position(c, bstart) < position(c, s));
    assert_true(position(c, e) < position(c, bstop));
  }
  assert_trace(nth(c, TR_B_SUBMITTED, 0), "submitted", env, 0, "tpl", "agent_1", -1);
}

static void test_telemetry__bulk_of_25_emits_25_trigger_spans(void **state) {
  fixture *f = *state;
  int64_t ids[25];
  for (int i = 0; i < 25; i++) ids[i] = i + 1;
  cl_error err;
  ct_assert_ok(bulk(f, ids, 25, NULL, NULL, &err), &err);
  const ct_capture *c = &f->w->cap;
  assert_int_equal(ct_capture_count(c, T_START), 25);
  assert_int_equal(ct_capture_count(c, T_STOP), 25);
  assert_int_equal(ct_capture_count(c, B_START), 1);
  assert_int_equal(ct_capture_count(c, B_STOP), 1);
  for (size_t i = 0; i < 25; i++) {
    assert_start(nth(c, T_START, i), "triggered", -1);
    assert_stop(nth(c, T_STOP, i), NULL, "triggered", -1);
  }
  assert_stop(nth(c, B_STOP, 0), nth(c, B_START, 0), "submitted", 25);
}

static void test_telemetry__bulk_failed_unknown_conversation(void **state) {
  fixture *f = *state;
  const int64_t ids[] = {1, 999, 2};
  cl_error err;
  ct_assert_error(bulk(f, ids, 3, NULL, NULL, &err), &err, CL_UNKNOWN_CONVERSATION, NULL);
  const ct_capture *c = &f->w->cap;
  assert_int_equal(ct_capture_count(c, B_START), 1);
  assert_int_equal(ct_capture_count(c, B_STOP), 1);
  assert_int_equal(ct_capture_count(c, B_EXC), 0);
  assert_int_equal(ct_capture_count(c, TR_B_FAILED), 1);
  assert_int_equal(ct_capture_count(c, TR_B_SUBMITTED), 0);
  assert_stop(nth(c, B_STOP, 0), nth(c, B_START, 0), "failed", 3);
  assert_trace(nth(c, TR_B_FAILED, 0), "failed", ANY_UUID, 0, "tpl", NULL, -1);
  /* Per-recipient spans are balanced, and none claims success. */
  size_t starts = ct_capture_count(c, T_START), stops = ct_capture_count(c, T_STOP);
  assert_int_equal(starts, stops + ct_capture_count(c, T_EXC));
  for (size_t i = 0; i < stops; i++) assert_stop(nth(c, T_STOP, i), NULL, "failed", -1);
}

static void test_telemetry__bulk_trace_failed_names_the_envelope(void **state) {
  fixture *f = *state;
  const char *env = "2e1f0a9b-8c7d-4e6f-a5b4-c3d2e1f0a9b8";
  const int64_t ids[] = {1, 999};
  cl_bulk_opts opts = {.template_id = "tpl", .rendered_body = "b", .envelope_id = env};
  cl_bulk_result res = {0};
  cl_error err;
  ct_assert_error(cl_bulk_trigger(f->w->eng, ids, 2, &opts, &res, &err), &err,
                  CL_UNKNOWN_CONVERSATION, NULL);
  cl_bulk_result_clear(&res);
  assert_trace(nth(&f->w->cap, TR_B_FAILED, 0), "failed", env, 0, "tpl", NULL, -1);
}

static void test_telemetry__bulk_failed_audit_rejected(void **state) {
  fixture *f = *state;
  f->auditor.mode = CT_AUDIT_REJECT;
  f->auditor.reason = "no";
  ct_install_auditor(f->w->eng, &f->auditor);
  const int64_t ids[] = {1, 2};
  cl_error err;
  ct_assert_error(bulk(f, ids, 2, NULL, NULL, &err), &err, CL_AUDIT_REJECTED, NULL);
  const ct_capture *c = &f->w->cap;
  const expect want[] = {{B_START, 1}, {B_STOP, 1}, {T_START, 2}, {T_STOP, 2}, {TR_B_FAILED, 1}};
  assert_events(c, want, CT_ARRAY_LEN(want));
  assert_stop(nth(c, B_STOP, 0), nth(c, B_START, 0), "failed", 2);
  assert_trace(nth(c, TR_B_FAILED, 0), "failed", ANY_UUID, 0, "tpl", NULL, -1);
  for (size_t i = 0; i < 2; i++) assert_stop(nth(c, T_STOP, i), NULL, "failed", -1);
}

static void test_telemetry__bulk_exception_hook_error(void **state) {
  fixture *f = *state;
  f->auditor.mode = CT_AUDIT_HOOK_ERROR;
  f->auditor.reason = "boom";
  ct_install_auditor(f->w->eng, &f->auditor);
  const int64_t ids[] = {1, 2};
  cl_error err;
  ct_assert_error(bulk(f, ids, 2, "op", NULL, &err), &err, CL_HOOK_ERROR, NULL);
  const ct_capture *c = &f->w->cap;
  assert_int_equal(ct_capture_count(c, B_START), 1);
  assert_int_equal(ct_capture_count(c, B_EXC), 1);
  assert_int_equal(ct_capture_count(c, B_STOP), 0);
  assert_int_equal(ct_capture_count(c, TR_B_FAILED), 1);
  assert_exception(nth(c, B_EXC, 0), "hook_error", 2);
  assert_trace(nth(c, TR_B_FAILED, 0), "exception", ANY_UUID, 0, "tpl", "op", -1);
  assert_int_equal(ct_capture_count(c, T_START),
                   ct_capture_count(c, T_STOP) + ct_capture_count(c, T_EXC));
}

static void test_telemetry__bulk_exception_db_error(void **state) {
  fixture *f = *state;
  install_failing_insert();
  const int64_t ids[] = {1, 2};
  cl_error err;
  ct_assert_error(bulk(f, ids, 2, NULL, NULL, &err), &err, CL_DB_ERROR, NULL);
  const ct_capture *c = &f->w->cap;
  assert_int_equal(ct_capture_count(c, B_EXC), 1);
  assert_int_equal(ct_capture_count(c, B_STOP), 0);
  assert_exception(nth(c, B_EXC, 0), "db_error", 2);
  assert_trace(nth(c, TR_B_FAILED, 0), "exception", ANY_UUID, 0, "tpl", NULL, -1);
}

static void test_telemetry__bulk_refused(void **state) {
  fixture *f = *state;
  int64_t ids[26];
  for (int i = 0; i < 26; i++) ids[i] = i + 1;
  cl_error err;
  ct_assert_error(bulk(f, ids, 26, "agent_9", NULL, &err), &err, CL_BATCH_TOO_LARGE, NULL);
  const ct_capture *c = &f->w->cap;
  assert_int_equal(ct_capture_count(c, B_REFUSED), 1);
  assert_int_equal(ct_capture_count(c, TR_B_REFUSED), 1);
  assert_int_equal(ct_capture_count(c, T_START), 0);
  assert_int_equal(ct_capture_count(c, B_STOP), 0);
  char *id = ct_scalar("SELECT id::text FROM %s.cairnloop_outbound_bulk_envelopes", S);
  assert_non_null(id);
  const ct_event *e = nth(c, B_REFUSED, 0);
  ct_assert_keys(&e->measurements, "count");
  ct_assert_keys(&e->metadata, "outcome", "count");
  ct_assert_str(&e->metadata, "outcome", "refused_cap_exceeded");
  assert_trace(nth(c, TR_B_REFUSED, 0), "refused_cap_exceeded", id, 0, "tpl", "agent_9", 25);
  free(id);
}

/* Labels are enum-only: no id, actor, template or text on the bounded lane,
 * and never payload text on either lane. */
static void test_telemetry__never_carries_payload_or_ids_on_metrics_lane(void **state) {
  fixture *f = *state;
  const int64_t ids[] = {1, 2};
  int64_t big[26];
  for (int i = 0; i < 26; i++) big[i] = i + 1;
  cl_error err;
  ct_assert_ok(trigger(f, 7, "secret actor", NULL, &err), &err);
  ct_assert_ok(bulk(f, ids, 2, "secret actor", NULL, &err), &err);
  bulk(f, big, 26, "secret actor", NULL, &err);
  const ct_capture *c = &f->w->cap;
  static const char *const enum_keys[] = {"outcome", "count", "kind", "reason"};
  for (size_t i = 0; i < c->count; i++) {
    const ct_event *e = &c->events[i];
    bool trace = strstr(e->name, ".trace.") != NULL;
    for (size_t k = 0; k < e->metadata.count; k++) {
      const ct_kv *kv = &e->metadata.items[k];
      if (!trace) {
        bool allowed = false;
        for (size_t a = 0; a < CT_ARRAY_LEN(enum_keys); a++) {
          allowed = allowed || strcmp(kv->key, enum_keys[a]) == 0;
        }
        if (!allowed) fail_msg("%s carries metadata key %s", e->name, kv->key);
      }
      if (kv->type == CL_VALUE_STRING &&
          (strstr(kv->s, "secret body") || strstr(kv->s, "secret content") ||
           strstr(kv->s, "exceeds cap") || (!trace && strstr(kv->s, "secret actor")) ||
           (!trace && strcmp(kv->s, "tpl") == 0))) {
        fail_msg("%s carries %s = \"%s\"", e->name, kv->key, kv->s);
      }
    }
  }
}

/* ------------------------------------------------------------ handlers */

typedef struct probe {
  int calls;
  int released;
  cl_engine *eng;
  const char *detach_id; /* detach this handler id on the first call */
  int detach_result;
  char parts[8][32];
  int nparts;
} probe;

static void probe_handler(const char *const *event, const cl_measurements *m, const cl_metadata *md,
                          void *config) {
  (void)m;
  (void)md;
  probe *p = config;
  p->calls++;
  p->nparts = 0;
  for (int i = 0; i < 8 && event[i] != NULL; i++) {
    snprintf(p->parts[i], sizeof p->parts[i], "%s", event[i]);
    p->nparts++;
  }
  if (p->detach_id != NULL && p->calls == 1) p->detach_result = cl_detach(p->eng, p->detach_id);
}

static void probe_release(void *config) {
  probe *p = config;
  p->released++;
}

static void test_attach__handler_gets_name_parts_and_config(void **state) {
  fixture *f = *state;
  probe p = {0};
  cl_error err;
  ct_assert_ok(cl_attach(f->w->eng, "p", T_START, probe_handler, &p, probe_release, &err), &err);
  ct_assert_ok(trigger(f, 1, NULL, NULL, &err), &err);
  assert_int_equal(p.calls, 1);
  assert_int_equal(p.nparts, 4);
  assert_string_equal(p.parts[0], "cairnloop");
  assert_string_equal(p.parts[1], "outbound");
  assert_string_equal(p.parts[2], "triggered");
  assert_string_equal(p.parts[3], "start");
  assert_int_equal(cl_detach(f->w->eng, "p"), 1);
  assert_int_equal(p.released, 1);
}

static void test_attach__taken_id_is_invalid_argument(void **state) {
  fixture *f = *state;
  probe p = {0};
  cl_error err;
  ct_assert_ok(cl_attach(f->w->eng, "dup", T_START, probe_handler, &p, NULL, &err), &err);
  ct_assert_error(cl_attach(f->w->eng, "dup", T_STOP, probe_handler, &p, NULL, &err), &err,
                  CL_INVALID_ARGUMENT, "dup");
  const char *names[] = {T_STOP, B_STOP};
  ct_assert_error(cl_attach_many(f->w->eng, "dup", names, 2, probe_handler, &p, NULL, &err), &err,
                  CL_INVALID_ARGUMENT, "dup");
  /* The id used by the capture of every test is taken too. */
  ct_assert_error(cl_attach(f->w->eng, "test-capture", T_STOP, probe_handler, &p, NULL, &err), &err,
                  CL_INVALID_ARGUMENT, NULL);
  /* The refused attaches changed nothing. */
  ct_assert_ok(trigger(f, 1, NULL, NULL, &err), &err);
  assert_int_equal(p.calls, 1);
}

static void test_attach__empty_name_is_invalid_argument(void **state) {
  fixture *f = *state;
  probe p = {0};
  cl_error err;
  ct_assert_error(cl_attach(f->w->eng, "e", "", probe_handler, &p, NULL, &err), &err,
                  CL_INVALID_ARGUMENT, NULL);
  const char *names[] = {T_START, ""};
  ct_assert_error(cl_attach_many(f->w->eng, "e", names, 2, probe_handler, &p, NULL, &err), &err,
                  CL_INVALID_ARGUMENT, NULL);
  /* Nothing half-attached: the id is still free. */
  ct_assert_ok(cl_attach(f->w->eng, "e", T_START, probe_handler, &p, NULL, &err), &err);
  assert_int_equal(cl_detach(f->w->eng, "e"), 1);
}

static void test_attach__any_name_may_be_attached(void **state) {
  fixture *f = *state;
  probe p = {0};
  cl_error err;
  ct_assert_ok(cl_attach(f->w->eng, "future", "cairnloop.outbound.not_yet_emitted", probe_handler,
                         &p, probe_release, &err),
               &err);
  ct_assert_ok(trigger(f, 1, NULL, NULL, &err), &err);
  assert_int_equal(p.calls, 0);
  assert_int_equal(cl_detach(f->w->eng, "future"), 1);
  assert_int_equal(p.released, 1);
}

static void test_attach_many__one_id_for_several_events(void **state) {
  fixture *f = *state;
  probe p = {0};
  const char *names[] = {T_START, T_STOP, TR_T_COMPLETED};
  cl_error err;
  ct_assert_ok(cl_attach_many(f->w->eng, "many", names, 3, probe_handler, &p, probe_release, &err),
               &err);
  ct_assert_ok(trigger(f, 1, NULL, NULL, &err), &err);
  assert_int_equal(p.calls, 3);
  assert_int_equal(cl_detach(f->w->eng, "many"), 1);
  assert_int_equal(p.released, 1);
  ct_assert_ok(trigger(f, 2, NULL, NULL, &err), &err);
  assert_int_equal(p.calls, 3);
}

static void test_detach__returns_one_then_zero(void **state) {
  fixture *f = *state;
  probe p = {0};
  cl_error err;
  ct_assert_ok(cl_attach(f->w->eng, "once", T_START, probe_handler, &p, probe_release, &err), &err);
  assert_int_equal(cl_detach(f->w->eng, "once"), 1);
  assert_int_equal(cl_detach(f->w->eng, "once"), 0);
  assert_int_equal(cl_detach(f->w->eng, "never-attached"), 0);
  assert_int_equal(p.released, 1);
  ct_assert_ok(trigger(f, 1, NULL, NULL, &err), &err);
  assert_int_equal(p.calls, 0);
  /* The id is free again. */
  ct_assert_ok(cl_attach(f->w->eng, "once", T_START, probe_handler, &p, NULL, &err), &err);
  ct_assert_ok(trigger(f, 2, NULL, NULL, &err), &err);
  assert_int_equal(p.calls, 1);
}

static void test_detach__handler_detaching_itself_during_emit_is_safe(void **state) {
  fixture *f = *state;
  probe self = {0}, other = {0};
  self.eng = f->w->eng;
  self.detach_id = "self";
  cl_error err;
  ct_assert_ok(cl_attach(f->w->eng, "self", T_START, probe_handler, &self, probe_release, &err),
               &err);
  ct_assert_ok(cl_attach(f->w->eng, "other", T_START, probe_handler, &other, probe_release, &err),
               &err);
  /* A bulk of three emits triggered.start three times in one operation. */
  const int64_t ids[] = {1, 2, 3};
  ct_assert_ok(bulk(f, ids, 3, NULL, NULL, &err), &err);
  assert_int_equal(self.detach_result, 1);
  assert_int_equal(self.calls, 1);
  assert_int_equal(self.released, 1);
  assert_int_equal(other.calls, 3);
  assert_int_equal(cl_detach(f->w->eng, "self"), 0);
  assert_int_equal(cl_detach(f->w->eng, "other"), 1);
}

static void test_detach__handler_detaching_another_during_emit_is_safe(void **state) {
  fixture *f = *state;
  probe first = {0}, second = {0};
  first.eng = f->w->eng;
  first.detach_id = "second";
  cl_error err;
  ct_assert_ok(cl_attach(f->w->eng, "first", T_START, probe_handler, &first, probe_release, &err),
               &err);
  ct_assert_ok(cl_attach(f->w->eng, "second", T_START, probe_handler, &second, probe_release, &err),
               &err);
  const int64_t ids[] = {1, 2, 3};
  ct_assert_ok(bulk(f, ids, 3, NULL, NULL, &err), &err);
  assert_int_equal(first.detach_result, 1);
  assert_int_equal(first.calls, 3);
  /* Whether the emit in progress still reached it is open; later ones do not. */
  assert_true(second.calls <= 1);
  assert_int_equal(second.released, 1);
  assert_int_equal(cl_detach(f->w->eng, "first"), 1);
}

static void test_close__releases_attached_handlers(void **state) {
  fixture *f = *state;
  probe a = {0}, b = {0};
  cl_error err;
  ct_assert_ok(cl_attach(f->w->eng, "a", T_START, probe_handler, &a, probe_release, &err), &err);
  const char *names[] = {T_STOP, B_STOP};
  ct_assert_ok(cl_attach_many(f->w->eng, "b", names, 2, probe_handler, &b, probe_release, &err),
               &err);
  cl_close(f->w->eng);
  f->w->eng = NULL;
  assert_int_equal(a.released, 1);
  assert_int_equal(b.released, 1);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_telemetry__trigger_success),
      T(test_telemetry__trigger_trace_carries_actor_and_envelope),
      T(test_telemetry__trigger_duplicate),
      T(test_telemetry__trigger_failed_unknown_conversation),
      T(test_telemetry__trigger_failed_audit_rejected),
      T(test_telemetry__trigger_exception_hook_error),
      T(test_telemetry__trigger_exception_db_error),
      T(test_telemetry__bulk_success),
      T(test_telemetry__bulk_of_25_emits_25_trigger_spans),
      T(test_telemetry__bulk_failed_unknown_conversation),
      T(test_telemetry__bulk_trace_failed_names_the_envelope),
      T(test_telemetry__bulk_failed_audit_rejected),
      T(test_telemetry__bulk_exception_hook_error),
      T(test_telemetry__bulk_exception_db_error),
      T(test_telemetry__bulk_refused),
      T(test_telemetry__never_carries_payload_or_ids_on_metrics_lane),
      T(test_attach__handler_gets_name_parts_and_config),
      T(test_attach__taken_id_is_invalid_argument),
      T(test_attach__empty_name_is_invalid_argument),
      T(test_attach__any_name_may_be_attached),
      T(test_attach_many__one_id_for_several_events),
      T(test_detach__returns_one_then_zero),
      T(test_detach__handler_detaching_itself_during_emit_is_safe),
      T(test_detach__handler_detaching_another_during_emit_is_safe),
      T(test_close__releases_attached_handlers),
  };
  return cmocka_run_group_tests_name("telemetry", tests, NULL, ct_group_teardown);
}
