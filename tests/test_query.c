/*
 * test_query.c - cl_query: read-only SQL for hosts selecting cohorts.
 * Parameters are bound as data, rows come back typed by column, and a
 * statement that tries to write fails without writing.
 */
#include "support.h"

#include <string.h>

#define S CT_SCHEMA

static void test_query__returns_rows_with_bound_parameters(void **state) {
  ct_world *w = *state;
  const char *params[] = {"2", "4"};
  cl_rows *rows = NULL;
  cl_error err;
  ct_assert_ok(cl_query(w->eng,
                        "SELECT id, subject FROM " S ".cairnloop_conversations"
                        " WHERE id BETWEEN $1 AND $2 ORDER BY id",
                        2, params, &rows, &err),
               &err);
  assert_int_equal(cl_rows_count(rows), 3);
  assert_int_equal(cl_rows_columns(rows), 2);
  assert_string_equal(cl_rows_name(rows, 0), "id");
  assert_int_equal(cl_rows_type(rows, 0), 20); /* int8 */
  assert_string_equal(cl_rows_value(rows, 0, 0), "2");
  assert_string_equal(cl_rows_value(rows, 2, 0), "4");
  cl_rows_free(rows);
}

static void test_query__binds_hostile_text_as_data(void **state) {
  ct_world *w = *state;
  const char *params[] = {"'); DROP TABLE x; --"};
  cl_rows *rows = NULL;
  cl_error err;
  ct_assert_ok(cl_query(w->eng, "SELECT $1::text AS t", 1, params, &rows, &err), &err);
  assert_string_equal(cl_rows_value(rows, 0, 0), params[0]);
  cl_rows_free(rows);
}

static void test_query__cannot_write(void **state) {
  ct_world *w = *state;
  cl_rows *rows = NULL;
  cl_error err;
  ct_assert_error(cl_query(w->eng,
                           "INSERT INTO " S ".cairnloop_conversations (subject) VALUES ('x')", 0,
                           NULL, &rows, &err),
                  &err, CL_DB_ERROR, "read-only");
  assert_null(rows);
  /* Still usable, and nothing was written. */
  ct_assert_ok(cl_query(w->eng, "SELECT count(*) FROM " S ".cairnloop_conversations", 0, NULL,
                        &rows, &err),
               &err);
  assert_string_equal(cl_rows_value(rows, 0, 0), "10");
  cl_rows_free(rows);
}

static void test_query__rejects_missing_arguments(void **state) {
  ct_world *w = *state;
  cl_rows *rows = NULL;
  cl_error err;
  ct_assert_error(cl_query(w->eng, NULL, 0, NULL, &rows, &err), &err, CL_INVALID_ARGUMENT, "sql");
}

static int setup(void **state) {
  *state = ct_world_new(10, NULL);
  return 0;
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, ct_world_teardown)
  const struct CMUnitTest tests[] = {
      T(test_query__returns_rows_with_bound_parameters),
      T(test_query__binds_hostile_text_as_data),
      T(test_query__cannot_write),
      T(test_query__rejects_missing_arguments),
  };
  return cmocka_run_group_tests_name("query", tests, NULL, ct_group_teardown);
}
