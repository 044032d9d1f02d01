/*
 * test_validation.c - the invalid_argument row of API.md's failure table,
 * for trigger and bulk_trigger: each bad input returns CL_INVALID_ARGUMENT
 * with one line naming the field or id, writes nothing, calls no hook and
 * emits no telemetry event (validation runs before the span and before the
 * cap check, so an invalid over-cap cohort stores no refused envelope).
 */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S CT_SCHEMA

/* Hooks installed around every case, to prove validation runs first. */
typedef struct fixture {
  ct_world *w;
  ct_auditor auditor;
  ct_resolver resolver;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  f->w = ct_world_new(30, NULL);
  f->auditor.mode = CT_AUDIT_ACCEPT;
  f->resolver.mode = CT_RESOLVE_SAME;
  ct_install_auditor(f->w->eng, &f->auditor);
  ct_install_resolver(f->w->eng, &f->resolver);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  ct_world_free(f->w);
  ct_auditor_free(&f->auditor);
  ct_resolver_free(&f->resolver);
  free(f);
  return 0;
}

static void assert_nothing_happened(fixture *f, const char *what) {
  ct_counts c = ct_counts_of(S);
  if (c.envelopes || c.messages || c.jobs || f->w->cap.count || f->auditor.calls ||
      f->resolver.calls) {
    print_error("%s: wrote %lld envelopes, %lld messages, %lld jobs; %zu events; "
                "auditor called %d times, resolver %d times\n",
                what, (long long)c.envelopes, (long long)c.messages, (long long)c.jobs,
                f->w->cap.count, f->auditor.calls, f->resolver.calls);
    ct_capture_dump(&f->w->cap);
    fail();
  }
}

static char *repeat(char ch, size_t n) {
  char *s = malloc(n + 1);
  assert_non_null(s);
  memset(s, ch, n);
  s[n] = '\0';
  return s;
}

/* ------------------------------------------------------------ trigger */

typedef struct trigger_case {
  const char *what;
  int64_t conversation_id;
  cl_trigger_opts opts;
  bool null_opts;
  const char *needle;  /* must appear in the message */
  const char *needle2; /* and this too, when set */
} trigger_case;

static void run_trigger_cases(fixture *f, const trigger_case *cases, size_t n) {
  for (size_t i = 0; i < n; i++) {
    const trigger_case *c = &cases[i];
    cl_trigger_result res = {0};
    cl_error err;
    memset(&err, 0, sizeof err);
    cl_status st = cl_trigger(f->w->eng, c->conversation_id, c->null_opts ? NULL : &c->opts, &res,
                              &err);
    if (st != CL_INVALID_ARGUMENT) print_error("case: %s\n", c->what);
    ct_assert_error(st, &err, CL_INVALID_ARGUMENT, c->needle);
    if (c->needle2 != NULL) ct_assert_error(st, &err, CL_INVALID_ARGUMENT, c->needle2);
    cl_trigger_result_clear(&res);
    assert_nothing_happened(f, c->what);
  }
}

static void test_trigger__rejects_non_positive_conversation_ids(void **state) {
  const trigger_case cases[] = {
      {"conversation id 0", 0, {.template_id = "t"}, false, "conversation", "0"},
      {"conversation id -5", -5, {.template_id = "t"}, false, "conversation", "-5"},
      {"conversation id INT64_MIN", INT64_MIN, {.template_id = "t"}, false, "conversation", NULL},
  };
  run_trigger_cases(*state, cases, CT_ARRAY_LEN(cases));
}

static void test_trigger__rejects_bad_template_id(void **state) {
  char *long_tmpl = repeat('t', CL_MAX_TEMPLATE_ID_BYTES + 1);
  const trigger_case cases[] = {
      {"missing opts", 1, {0}, true, NULL, NULL},
      {"missing template_id", 1, {.template_id = NULL}, false, "template_id", NULL},
      {"empty template_id", 1, {.template_id = ""}, false, "template_id", NULL},
      {"256-byte template_id", 1, {.template_id = long_tmpl}, false, "template_id", NULL},
      {"invalid UTF-8 template_id", 1, {.template_id = "ab\xff\xfe"}, false, "template_id", NULL},
      {"overlong UTF-8 template_id", 1, {.template_id = "\xc0\xaf"}, false, "template_id", NULL},
      {"surrogate in template_id", 1, {.template_id = "\xed\xa0\x80"}, false, "template_id", NULL},
  };
  run_trigger_cases(*state, cases, CT_ARRAY_LEN(cases));
  free(long_tmpl);
}

static void test_trigger__rejects_bad_content(void **state) {
  char *huge = repeat('b', CL_MAX_BODY_BYTES + 1);
  const trigger_case cases[] = {
      {"invalid UTF-8 content",
       1,
       {.template_id = "t", .content = "caf\xe9"},
       false,
       "content",
       NULL},
      {"truncated UTF-8 content",
       1,
       {.template_id = "t", .content = "\xe2\x82"},
       false,
       "content",
       NULL},
      {"content over the limit", 1, {.template_id = "t", .content = huge}, false, "content", NULL},
  };
  run_trigger_cases(*state, cases, CT_ARRAY_LEN(cases));
  free(huge);
}

static void test_trigger__rejects_bad_schedule_in(void **state) {
  const trigger_case cases[] = {
      {"negative schedule_in",
       1,
       {.template_id = "t", .schedule_in = -1},
       false,
       "schedule_in",
       NULL},
      {"schedule_in past the limit",
       1,
       {.template_id = "t", .schedule_in = CL_MAX_SCHEDULE_IN + 1},
       false,
       "schedule_in",
       NULL},
      {"INT64_MAX schedule_in",
       1,
       {.template_id = "t", .schedule_in = INT64_MAX},
       false,
       "schedule_in",
       NULL},
  };
  run_trigger_cases(*state, cases, CT_ARRAY_LEN(cases));
}

static void test_trigger__rejects_bad_actor(void **state) {
  char *long_actor = repeat('a', CL_MAX_ACTOR_BYTES + 1);
  const trigger_case cases[] = {
      {"invalid UTF-8 actor", 1, {.template_id = "t", .actor = "op\xff"}, false, "actor", NULL},
      {"256-byte actor", 1, {.template_id = "t", .actor = long_actor}, false, "actor", NULL},
  };
  run_trigger_cases(*state, cases, CT_ARRAY_LEN(cases));
  free(long_actor);
}

static void test_trigger__rejects_bad_bulk_envelope_id(void **state) {
  const trigger_case cases[] = {
      {"not a uuid",
       1,
       {.template_id = "t", .bulk_envelope_id = "not-a-uuid"},
       false,
       "bulk_envelope_id",
       NULL},
      {"empty uuid",
       1,
       {.template_id = "t", .bulk_envelope_id = ""},
       false,
       "bulk_envelope_id",
       NULL},
      {"uuid one digit short",
       1,
       {.template_id = "t", .bulk_envelope_id = "0b9e3c1e-6f4a-4d2b-9a57-1f0c2d3e4f5"},
       false,
       "bulk_envelope_id",
       NULL},
      {"uuid with a non-hex digit",
       1,
       {.template_id = "t", .bulk_envelope_id = "0b9e3c1e-6f4a-4d2b-9a57-1f0c2d3e4f5g"},
       false,
       "bulk_envelope_id",
       NULL},
      {"uuid with trailing text",
       1,
       {.template_id = "t", .bulk_envelope_id = "0b9e3c1e-6f4a-4d2b-9a57-1f0c2d3e4f50'; --"},
       false,
       "bulk_envelope_id",
       NULL},
      /* The message quotes the bad value: it must stay one line. */
      {"uuid with a newline",
       1,
       {.template_id = "t", .bulk_envelope_id = "0b9e3c1e\n6f4a-4d2b-9a57-1f0c2d3e4f50"},
       false,
       "bulk_envelope_id",
       NULL},
  };
  run_trigger_cases(*state, cases, CT_ARRAY_LEN(cases));
}

/* --------------------------------------------------------------- bulk */

typedef struct bulk_case {
  const char *what;
  const int64_t *ids;
  size_t count;
  cl_bulk_opts opts;
  bool null_opts;
  const char *needle;
  const char *needle2;
  const char *exact; /* the whole message, when API.md gives it */
} bulk_case;

static void run_bulk_cases(fixture *f, const bulk_case *cases, size_t n) {
  for (size_t i = 0; i < n; i++) {
    const bulk_case *c = &cases[i];
    cl_bulk_result res = {0};
    cl_error err;
    memset(&err, 0, sizeof err);
    cl_status st = cl_bulk_trigger(f->w->eng, c->ids, c->count, c->null_opts ? NULL : &c->opts,
                                   &res, &err);
    if (st != CL_INVALID_ARGUMENT) print_error("case: %s\n", c->what);
    ct_assert_error(st, &err, CL_INVALID_ARGUMENT, c->needle);
    if (c->needle2 != NULL) ct_assert_error(st, &err, CL_INVALID_ARGUMENT, c->needle2);
    if (c->exact != NULL) assert_string_equal(err.message, c->exact);
    cl_bulk_result_clear(&res);
    assert_nothing_happened(f, c->what);
  }
}

#define OK_OPTS .template_id = "t", .rendered_body = "b"

static void test_bulk_trigger__rejects_bad_cohorts(void **state) {
  static const int64_t one[] = {1};
  static const int64_t has_zero[] = {1, 0, 2};
  static const int64_t has_negative[] = {1, 2, -3};
  static const int64_t dup7[] = {7, 2, 7};
  static const int64_t dup_adjacent[] = {4, 4};
  const bulk_case cases[] = {
      {"NULL ids", NULL, 0, {OK_OPTS}, false, "conversation", NULL, NULL},
      {"empty cohort", one, 0, {OK_OPTS}, false, "conversation", NULL, NULL},
      {"zero id", has_zero, 3, {OK_OPTS}, false, "conversation", " 0", NULL},
      {"negative id", has_negative, 3, {OK_OPTS}, false, "conversation", "-3", NULL},
      {"duplicate id 7",
       dup7,
       3,
       {OK_OPTS},
       false,
       NULL,
       NULL,
       "duplicate conversation id 7 in cohort"},
      {"adjacent duplicate",
       dup_adjacent,
       2,
       {OK_OPTS},
       false,
       NULL,
       NULL,
       "duplicate conversation id 4 in cohort"},
  };
  run_bulk_cases(*state, cases, CT_ARRAY_LEN(cases));
}

static void test_bulk_trigger__rejects_bad_options(void **state) {
  static const int64_t ids[] = {1, 2, 3};
  char *long_tmpl = repeat('t', CL_MAX_TEMPLATE_ID_BYTES + 1);
  char *huge = repeat('b', CL_MAX_BODY_BYTES + 1);
  char *long_actor = repeat('a', CL_MAX_ACTOR_BYTES + 1);
  const bulk_case cases[] = {
      {"missing opts", ids, 3, {0}, true, NULL, NULL, NULL},
      {"missing template_id", ids, 3, {.rendered_body = "b"}, false, "template_id", NULL, NULL},
      {"empty template_id",
       ids,
       3,
       {.template_id = "", .rendered_body = "b"},
       false,
       "template_id",
       NULL,
       NULL},
      {"256-byte template_id",
       ids,
       3,
       {.template_id = long_tmpl, .rendered_body = "b"},
       false,
       "template_id",
       NULL,
       NULL},
      {"invalid UTF-8 template_id",
       ids,
       3,
       {.template_id = "\xff", .rendered_body = "b"},
       false,
       "template_id",
       NULL,
       NULL},
      {"missing rendered_body", ids, 3, {.template_id = "t"}, false, "rendered_body", NULL, NULL},
      {"invalid UTF-8 rendered_body",
       ids,
       3,
       {.template_id = "t", .rendered_body = "x\x80y"},
       false,
       "rendered_body",
       NULL,
       NULL},
      {"rendered_body over the limit",
       ids,
       3,
       {.template_id = "t", .rendered_body = huge},
       false,
       "rendered_body",
       NULL,
       NULL},
      {"bad envelope_id",
       ids,
       3,
       {OK_OPTS, .envelope_id = "1234"},
       false,
       "envelope_id",
       NULL,
       NULL},
      {"envelope_id with a newline",
       ids,
       3,
       {OK_OPTS, .envelope_id = "0b9e3c1e-6f4a-4d2b-9a57-1f0c2d3e4f50\n"},
       false,
       "envelope_id",
       NULL,
       NULL},
      {"negative schedule_in",
       ids,
       3,
       {OK_OPTS, .schedule_in = -30},
       false,
       "schedule_in",
       NULL,
       NULL},
      {"invalid UTF-8 actor", ids, 3, {OK_OPTS, .actor = "\xfe"}, false, "actor", NULL, NULL},
      {"256-byte actor", ids, 3, {OK_OPTS, .actor = long_actor}, false, "actor", NULL, NULL},
  };
  run_bulk_cases(*state, cases, CT_ARRAY_LEN(cases));
  free(long_tmpl);
  free(huge);
  free(long_actor);
}

/* Validation comes before the cap: an invalid cohort over the cap is an
 * invalid_argument and leaves no refused envelope behind. */
static void test_bulk_trigger__invalid_over_cap_cohort_stores_no_refusal(void **state) {
  int64_t dup_over[27], neg_over[27], ok_over[27];
  for (int i = 0; i < 27; i++) dup_over[i] = neg_over[i] = ok_over[i] = i + 1;
  dup_over[26] = 5;
  neg_over[13] = -1;
  const bulk_case cases[] = {
      {"duplicate in 27 ids",
       dup_over,
       27,
       {OK_OPTS},
       false,
       NULL,
       NULL,
       "duplicate conversation id 5 in cohort"},
      {"negative in 27 ids", neg_over, 27, {OK_OPTS}, false, "-1", NULL, NULL},
      {"no template, 27 ids",
       ok_over,
       27,
       {.rendered_body = "b"},
       false,
       "template_id",
       NULL,
       NULL},
      {"no body, 27 ids", ok_over, 27, {.template_id = "t"}, false, "rendered_body", NULL, NULL},
  };
  run_bulk_cases(*state, cases, CT_ARRAY_LEN(cases));
}

/* A sanity check that the fixture itself lets valid calls through, so the
 * cases above fail for their input and not for the setup. */
static void test_validation__valid_inputs_pass_the_same_fixture(void **state) {
  fixture *f = *state;
  static const int64_t ids[] = {1, 2, 3};
  cl_bulk_opts bopts = {OK_OPTS, .actor = "op",
                        .envelope_id = "0b9e3c1e-6f4a-4d2b-9a57-1f0c2d3e4f50"};
  cl_bulk_result bres = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(f->w->eng, ids, 3, &bopts, &bres, &err), &err);
  cl_bulk_result_clear(&bres);
  cl_trigger_opts topts = {.template_id = "t", .content = "c", .actor = "op"};
  cl_trigger_result tres = {0};
  ct_assert_ok(cl_trigger(f->w->eng, 1, &topts, &tres, &err), &err);
  cl_trigger_result_clear(&tres);
  assert_int_equal(f->auditor.calls, 2);
  assert_int_equal(f->resolver.calls, 2);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_trigger__rejects_non_positive_conversation_ids),
      T(test_trigger__rejects_bad_template_id),
      T(test_trigger__rejects_bad_content),
      T(test_trigger__rejects_bad_schedule_in),
      T(test_trigger__rejects_bad_actor),
      T(test_trigger__rejects_bad_bulk_envelope_id),
      T(test_bulk_trigger__rejects_bad_cohorts),
      T(test_bulk_trigger__rejects_bad_options),
      T(test_bulk_trigger__invalid_over_cap_cohort_stores_no_refusal),
      T(test_validation__valid_inputs_pass_the_same_fixture),
  };
  return cmocka_run_group_tests_name("validation", tests, NULL, ct_group_teardown);
}
