/*
 * test_status.c - the status table: every cl_status has the code string of
 * API.md and the documented CLI exit status, and out-of-range values are
 * handled.  Needs no database.
 */
#include "support.h"

#include <string.h>

typedef struct expected_status {
  cl_status status;
  const char *name;
  int exit_code;
} expected_status;

/* Written out from API.md, not generated from CL_STATUS_MAP: the point is to
 * catch the table drifting from the contract. */
static const expected_status contract[] = {
    {CL_OK, "ok", 0},
    {CL_INVALID_ARGUMENT, "invalid_argument", 2},
    {CL_BATCH_TOO_LARGE, "batch_too_large", 3},
    {CL_ACTOR_REJECTED, "actor_rejected", 4},
    {CL_AUDIT_REJECTED, "audit_rejected", 4},
    {CL_UNKNOWN_CONVERSATION, "unknown_conversation", 4},
    {CL_ENVELOPE_CONFLICT, "envelope_conflict", 4},
    {CL_HOOK_ERROR, "hook_error", 5},
    {CL_DB_ERROR, "db_error", 6},
};

static void test_status__every_code_has_its_contract_name(void **state) {
  (void)state;
  for (size_t i = 0; i < CT_ARRAY_LEN(contract); i++) {
    assert_string_equal(cl_status_name(contract[i].status), contract[i].name);
  }
}

static void test_status__every_code_has_its_cli_exit_status(void **state) {
  (void)state;
  for (size_t i = 0; i < CT_ARRAY_LEN(contract); i++) {
    assert_int_equal(cl_status_exit_code(contract[i].status), contract[i].exit_code);
  }
}

static void test_status__table_has_exactly_the_contract_codes(void **state) {
  (void)state;
  assert_int_equal(CL_STATUS__COUNT, CT_ARRAY_LEN(contract));
  assert_int_equal(CL_OK, 0);
  /* Names are distinct, so a code string identifies one status. */
  for (size_t i = 0; i < CT_ARRAY_LEN(contract); i++) {
    for (size_t j = i + 1; j < CT_ARRAY_LEN(contract); j++) {
      assert_string_not_equal(cl_status_name(contract[i].status),
                              cl_status_name(contract[j].status));
    }
  }
}

static void test_status__out_of_range_is_unknown(void **state) {
  (void)state;
  assert_string_equal(cl_status_name(CL_STATUS__COUNT), "unknown");
  assert_string_equal(cl_status_name((cl_status)-1), "unknown");
  assert_string_equal(cl_status_name((cl_status)1000), "unknown");
  /* An unknown status must not pass for success at the shell. */
  assert_int_not_equal(cl_status_exit_code((cl_status)1000), 0);
  assert_int_not_equal(cl_status_exit_code((cl_status)-1), 0);
}

static void test_status__error_struct_has_room_for_a_line(void **state) {
  (void)state;
  cl_error err;
  assert_int_equal(sizeof err.message, CL_ERROR_MESSAGE_MAX);
  assert_true(CL_ERROR_MESSAGE_MAX >= 128);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_status__every_code_has_its_contract_name),
      cmocka_unit_test(test_status__every_code_has_its_cli_exit_status),
      cmocka_unit_test(test_status__table_has_exactly_the_contract_codes),
      cmocka_unit_test(test_status__out_of_range_is_unknown),
      cmocka_unit_test(test_status__error_struct_has_room_for_a_line),
  };
  return cmocka_run_group_tests_name("status", tests, NULL, NULL);
}
