/*
 * What a hook's statement may be: rows read and written, never the
 * transaction or the session (src/sqlguard.c).  Pure: no database.
 */
#include "support.h"

#include "sqlguard.h"

#include <string.h>

static void allowed(const char *sql) {
  char why[256] = "";
  if (!cl__sql_hook_allowed(sql, why, sizeof why)) fail_msg("refused %s: %s", sql, why);
}

static void refused(const char *sql, const char *why_part) {
  char why[256] = "";
  if (cl__sql_hook_allowed(sql, why, sizeof why)) fail_msg("allowed %s", sql);
  if (!strstr(why, why_part)) fail_msg("for %s: '%s' lacks '%s'", sql, why, why_part);
}

static void test_sqlguard__row_statements_are_allowed(void **state) {
  (void)state;
  allowed("SELECT 1");
  allowed("  insert into t values ($1)");
  allowed("Update t set a = 1");
  allowed("DELETE FROM t");
  allowed("WITH x AS (SELECT 1) SELECT * FROM x");
  allowed("VALUES (1), (2)");
  allowed("TABLE t");
  allowed("((SELECT 1))");
  allowed("-- a comment\nSELECT 1");
  allowed("/* a /* nested */ comment */ select 1");
}

static void test_sqlguard__transaction_control_is_refused(void **state) {
  (void)state;
  refused("COMMIT", "not COMMIT");
  refused("commit", "not commit");
  refused("BEGIN", "not BEGIN");
  refused("ROLLBACK", "not ROLLBACK");
  refused("END", "not END");
  refused("ABORT", "not ABORT");
  refused("START TRANSACTION", "not START");
  refused("SAVEPOINT s", "not SAVEPOINT");
  refused("RELEASE s", "not RELEASE");
  refused("PREPARE TRANSACTION 'x'", "not PREPARE");
}

static void test_sqlguard__session_state_is_refused(void **state) {
  (void)state;
  refused("SET ROLE postgres", "not SET");
  refused("set search_path = x", "not set");
  refused("RESET ALL", "not RESET");
  refused("DEALLOCATE ALL", "not DEALLOCATE");
  refused("DISCARD ALL", "not DISCARD");
  refused("LISTEN x", "not LISTEN");
  refused("PREPARE p AS SELECT 1", "not PREPARE");
  refused("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "not DECLARE");
  refused("CREATE TEMP TABLE t (a int)", "not CREATE");
  refused("DO $$ BEGIN END $$", "not DO");
  refused("CALL p()", "not CALL");
  refused("COPY t FROM STDIN", "not COPY");
  refused("LOAD 'x'", "not LOAD");
}

/* Comments and parentheses do not hide the keyword. */
static void test_sqlguard__comments_do_not_hide_the_keyword(void **state) {
  (void)state;
  refused("-- select\nCOMMIT", "not COMMIT");
  refused("/* select */ COMMIT", "not COMMIT");
  refused("/* /* select */ */ SET ROLE x", "not SET");
  refused("(COMMIT)", "not COMMIT");
  refused("/* never closed SELECT", "inside a comment");
  refused("/* /* one level closed */ SELECT 1", "inside a comment");
  refused("", "no statement keyword");
  refused("  -- only a comment", "no statement keyword");
  refused("SELECTX 1", "not SELECTX");
  refused("1; SELECT 1", "no statement keyword");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sqlguard__row_statements_are_allowed),
      cmocka_unit_test(test_sqlguard__transaction_control_is_refused),
      cmocka_unit_test(test_sqlguard__session_state_is_refused),
      cmocka_unit_test(test_sqlguard__comments_do_not_hide_the_keyword),
  };
  return cmocka_run_group_tests_name("sqlguard", tests, NULL, NULL);
}
