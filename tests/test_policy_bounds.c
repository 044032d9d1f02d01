/*
 * test_policy_bounds.c - what bounds a policy hook, seen from C and run
 * under ASan+UBSan too (issue 10, sections 2 and 3): a pattern that
 * backtracks in C ends at the deadline, the tx handle's metatable cannot
 * be reached (removing its __gc and collecting the handle wrote freed
 * memory; a looping __gc hung cl_close), a shared-subtable result cannot
 * grow past the memory cap on its way out, the bounded pattern matcher
 * survives hostile patterns without touching memory it does not own, and
 * a policy file that cannot be read or compiled is one line of
 * invalid_argument with nothing logged.  spec/hostile_policy_spec.lua
 * covers the same from Lua, with the differential test of the matcher.
 */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define S CT_SCHEMA

typedef struct fixture {
  ct_world *w;
  char dir[64];
  int files;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  cl_config cfg;
  assert_non_null(f);
  cl_config_init(&cfg);
  cfg.hook_time_limit_ms = 200;
  cfg.hook_memory_limit = 8 * 1024 * 1024;
  f->w = ct_world_new(10, &cfg);
  snprintf(f->dir, sizeof f->dir, "/tmp/cl-policy-bounds.XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  int i;
  ct_world_free(f->w);
  for (i = 0; i < f->files; i++) {
    char path[128];
    snprintf(path, sizeof path, "%s/p%d.lua", f->dir, i);
    unlink(path);
  }
  rmdir(f->dir);
  free(f);
  return 0;
}

/* Writes `source` to a new policy file of the fixture; returns its path. */
static const char *policy_file(fixture *f, const char *source) {
  static char path[128];
  FILE *fp;
  snprintf(path, sizeof path, "%s/p%d.lua", f->dir, f->files++);
  fp = fopen(path, "w");
  assert_non_null(fp);
  assert_int_equal(fputs(source, fp) >= 0, 1);
  assert_int_equal(fclose(fp), 0);
  return path;
}

static void load(fixture *f, const char *source) {
  cl_error err;
  ct_assert_ok(cl_load_policy(f->w->eng, policy_file(f, source), &err), &err);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Triggers conversation `id` with `template`; returns the status, err filled. */
static cl_status trigger(fixture *f, int64_t id, const char *template_id, cl_error *err) {
  cl_trigger_opts opts = {.template_id = template_id};
  cl_trigger_result res = {0};
  cl_status st = cl_trigger(f->w->eng, id, &opts, &res, err);
  cl_trigger_result_clear(&res);
  return st;
}

/* The policy, misbehaving on request through the template id. */
static const char *const HOSTILE =
    "local cases = {\n"
    "  backtrack = function() return string.find(('a'):rep(40), ('a*'):rep(40) .. 'b') end,\n"
    "  gc_nil = function(tx) getmetatable(tx).__gc = nil; tx = nil; collectgarbage() end,\n"
    "  gc_loop = function(tx) getmetatable(tx).__gc = function() while true do end end end,\n"
    "  dag = function() local t = {} for _ = 1, 21 do t = { t, t } end return t end,\n"
    "}\n"
    "require('cairnloop').auditor { audit = function(tx, action, actor, md)\n"
    "  local case = cases[md.template_id]\n"
    "  if case then return case(tx) end\n"
    "  return { ok = md.template_id }\n"
    "end }\n";

static void test_policy_bounds__backtracking_pattern_ends_at_the_deadline(void **state) {
  fixture *f = *state;
  cl_error err;
  double t0;
  load(f, HOSTILE);
  t0 = now_s();
  ct_assert_error(trigger(f, 1, "backtrack", &err), &err, CL_HOOK_ERROR,
                  "auditor.audit: time limit exceeded (200 ms)");
  assert_true(now_s() - t0 < 5.0);
  ct_assert_counts(S, 0, 0, 0);
  ct_assert_ok(trigger(f, 2, "fine", &err), &err);
}

static void test_policy_bounds__tx_gc_removed_then_collected_touches_no_freed_memory(void **state) {
  fixture *f = *state;
  cl_error err;
  load(f, HOSTILE);
  ct_assert_error(trigger(f, 1, "gc_nil", &err), &err, CL_HOOK_ERROR,
                  "attempt to index a string value");
  ct_assert_counts(S, 0, 0, 0);
  ct_assert_ok(trigger(f, 2, "after_gc_nil", &err), &err);
}

static void test_policy_bounds__tx_gc_cannot_be_set_and_close_returns(void **state) {
  fixture *f = *state;
  cl_error err;
  double t0;
  load(f, HOSTILE);
  ct_assert_error(trigger(f, 1, "gc_loop", &err), &err, CL_HOOK_ERROR,
                  "attempt to index a string value");
  ct_assert_counts(S, 0, 0, 0);
  t0 = now_s();
  cl_close(f->w->eng); /* runs every finaliser of the policy state */
  f->w->eng = NULL;
  assert_true(now_s() - t0 < 5.0);
}

static void test_policy_bounds__shared_subtable_result_is_refused_within_the_cap(void **state) {
  fixture *f = *state;
  cl_error err;
  load(f, HOSTILE);
  ct_assert_error(trigger(f, 1, "dag", &err), &err, CL_HOOK_ERROR,
                  "larger than the hook memory limit (8388608 bytes)");
  ct_assert_counts(S, 0, 0, 0);
}

/* Malformed and pathological patterns, each under pcall: every error the
 * matcher can raise, captures at the limits, and the string functions'
 * edges.  Under ASan this checks the matcher's memory safety. */
static const char *const TORTURE =
    "local subjects = { '', 'a', 'aaab', '(a(b)c)', 'x\\0y', ('ab'):rep(50), '%%]-^$' }\n"
    "local patterns = { '', '%', '[', '[^', '[]', '[^]', '[%', '[a-', '%b', '%ba', '%f', '%fa',\n"
    "  '%f[', '(', ')', '()', '(()', '%0', '%1', '(a)%2', '(a%1)', '%b()', '%f[%w]%w+', '$',\n"
    "  '^$', '^', 'a$b', '.-', '.-$', '[%a-z]', '[a-%%]', '[]-a]', '%z', ('a?'):rep(300),\n"
    "  ('(a)'):rep(33), ('()'):rep(32), ('[a'):rep(20), '(.-)%1', '((((((a))))))' }\n"
    "local n = 0\n"
    "local function count(ok) if ok then n = n + 1 end end\n"
    "require('cairnloop').auditor { audit = function()\n"
    "  for _, s in ipairs(subjects) do\n"
    "    for _, p in ipairs(patterns) do\n"
    "      for init = -3, 3 do\n"
    "        count(pcall(string.find, s, p, init))\n"
    "        count(pcall(string.find, s, p, init, true))\n"
    "        count(pcall(string.match, s, p, init))\n"
    "        count(pcall(function() for _ in string.gmatch(s, p, init) do end end))\n"
    "      end\n"
    "      count(pcall(string.gsub, s, p, '%0%1%%'))\n"
    "      count(pcall(string.gsub, s, p, '%'))\n"
    "      count(pcall(string.gsub, s, p, '%9'))\n"
    "      count(pcall(string.gsub, s, p, { a = 1 }, 3))\n"
    "      count(pcall(string.gsub, s, p, function(...) return ... end))\n"
    "    end\n"
    "  end\n"
    "  count(pcall(string.rep, 'ab', 3, ''))\n"
    "  count(pcall(string.rep, '', 1 << 62, 'x'))\n"
    "  count(pcall(table.concat, { 1, 'b', 3 }, ', ', 2))\n"
    "  count(pcall(table.concat, { 1, {} }))\n"
    "  count(pcall(table.insert, { 1, 2 }, 5, 0))\n"
    "  count(pcall(table.move, { 1, 2, 3 }, 1, 3, 2))\n"
    "  count(pcall(table.move, { 1 }, math.mininteger, -1, 1))\n"
    "  count(pcall(table.sort, { 3, 1, 2 }, function(a, b) return a > b end))\n"
    "  count(pcall(table.sort, { 3, 1, 2, 5, 4 }, function() return true end))\n"
    "  return { ok = n }\n"
    "end }\n";

static void test_policy_bounds__matcher_survives_hostile_patterns(void **state) {
  fixture *f = *state;
  cl_trigger_opts opts = {.template_id = "torture"};
  cl_trigger_result res = {0};
  cl_error err;
  load(f, TORTURE);
  ct_assert_ok(cl_trigger(f->w->eng, 1, &opts, &res, &err), &err);
  assert_non_null(res.audit_json);
  assert_non_null(strstr(res.audit_json, "\"ok\":"));
  cl_trigger_result_clear(&res);
}

static void test_policy_bounds__unreadable_policy_is_one_line_without_a_log(void **state) {
  fixture *f = *state;
  cl_error err;
  size_t logged = f->w->log.count;
  ct_assert_error(cl_load_policy(f->w->eng, "/nonexistent.lua", &err), &err, CL_INVALID_ARGUMENT,
                  NULL);
  assert_string_equal(err.message,
                      "policy: cannot open /nonexistent.lua: No such file or directory");
  ct_assert_error(cl_load_policy(f->w->eng, policy_file(f, "return +"), &err), &err,
                  CL_INVALID_ARGUMENT, "unexpected symbol near '+'");
  assert_int_equal(ct_log_count(&f->w->log, CL_LOG_ERROR, NULL), 0);
  assert_int_equal(f->w->log.count, logged);
  /* A file that raises while running is a hook error, as before. */
  ct_assert_error(cl_load_policy(f->w->eng, policy_file(f, "error('boom')"), &err), &err,
                  CL_HOOK_ERROR, "boom");
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_policy_bounds__backtracking_pattern_ends_at_the_deadline),
      T(test_policy_bounds__tx_gc_removed_then_collected_touches_no_freed_memory),
      T(test_policy_bounds__tx_gc_cannot_be_set_and_close_returns),
      T(test_policy_bounds__shared_subtable_result_is_refused_within_the_cap),
      T(test_policy_bounds__matcher_survives_hostile_patterns),
      T(test_policy_bounds__unreadable_policy_is_one_line_without_a_log),
  };
  return cmocka_run_group_tests_name("policy_bounds", tests, NULL, ct_group_teardown);
}
