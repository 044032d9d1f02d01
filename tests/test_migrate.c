/*
 * test_migrate.c - cl_migrate and the schema it builds: re-running is a
 * no-op, concurrent migrators are safe, the bulk-envelope table is the
 * seed migration column for column (plus its CHECK constraints), the
 * at-most-once key on the messages treats a missing envelope id as a value, and
 * the schema is configurable and validated at cl_open.
 */
#include "support.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void drop_schema(const char *schema) { ct_exec("DROP SCHEMA IF EXISTS %s CASCADE", schema); }

static void test_migrate__rerun_is_a_noop(void **state) {
  (void)state;
  cl_engine *eng = ct_open(NULL);
  ct_reset(CT_SCHEMA);
  ct_seed(CT_SCHEMA, 3);
  int64_t versions = ct_rows(CT_SCHEMA, "cairnloop_schema_migrations");
  assert_true(versions > 0);

  cl_error err;
  for (int i = 0; i < 3; i++) ct_assert_ok(cl_migrate(eng, &err), &err);
  assert_int_equal(ct_rows(CT_SCHEMA, "cairnloop_schema_migrations"), versions);
  /* Data survives re-running migrations. */
  assert_int_equal(ct_rows(CT_SCHEMA, "cairnloop_conversations"), 3);

  /* A second engine migrating the migrated schema changes nothing either. */
  cl_engine *other = ct_open(NULL);
  assert_int_equal(ct_rows(CT_SCHEMA, "cairnloop_schema_migrations"), versions);
  cl_close(other);
  cl_close(eng);
}

/* Every migrations/NAME.sql is recorded as NAME.  The
 * suite runs from the repository root; elsewhere the check is skipped. */
static void test_migrate__records_every_migration_file(void **state) {
  (void)state;
  cl_engine *eng = ct_open(NULL);
  DIR *dir = opendir("migrations");
  if (dir == NULL) {
    cl_close(eng);
    skip();
    return; /* skip() does not return; said for the analysers */
  }
  int files = 0;
  struct dirent *de;
  while ((de = readdir(dir)) != NULL) {
    size_t len = strlen(de->d_name);
    if (len <= 4 || strcmp(de->d_name + len - 4, ".sql") != 0) continue;
    files++;
    assert_int_equal(ct_int("SELECT count(*) FROM %s.cairnloop_schema_migrations "
                            "WHERE version = '%.*s'",
                            CT_SCHEMA, (int)(len - 4), de->d_name),
                     1);
  }
  closedir(dir);
  assert_true(files > 0);
  assert_int_equal(ct_rows(CT_SCHEMA, "cairnloop_schema_migrations"), files);
  cl_close(eng);
}

typedef struct migrator {
  const char *schema;
  pthread_barrier_t *ready;
  cl_status open_status, migrate_status;
  cl_error err;
} migrator;

static void *migrate_thread(void *arg) {
  migrator *m = arg;
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.database = getenv("CAIRNLOOP_DATABASE_URL");
  cfg.schema = m->schema;
  cl_engine *eng = NULL;
  m->open_status = cl_open(&eng, &cfg, &m->err);
  /* Both engines are connected before either migrates, so the two
   * migrations really overlap. */
  pthread_barrier_wait(m->ready);
  if (m->open_status == CL_OK) {
    m->migrate_status = cl_migrate(eng, &m->err);
  }
  cl_close(eng);
  return NULL;
}

static void test_migrate__two_migrators_at_once_are_safe(void **state) {
  (void)state;
  const char *schema = "cl_test_concurrent";
  ct_database_url();
  for (int round = 0; round < 4; round++) {
    drop_schema(schema);
    pthread_barrier_t ready;
    pthread_barrier_init(&ready, NULL, 2);
    migrator m[2];
    memset(m, 0, sizeof m);
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
      m[i].schema = schema;
      m[i].ready = &ready;
      assert_int_equal(pthread_create(&th[i], NULL, migrate_thread, &m[i]), 0);
    }
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&ready);
    for (int i = 0; i < 2; i++) {
      ct_assert_ok(m[i].open_status, &m[i].err);
      ct_assert_ok(m[i].migrate_status, &m[i].err);
    }
    /* Each version applied once, and the result is the same schema a
     * single migrator builds. */
    assert_int_equal(ct_int("SELECT count(*) - count(DISTINCT version) FROM "
                            "%s.cairnloop_schema_migrations",
                            schema),
                     0);
    assert_int_equal(ct_rows(schema, "cairnloop_schema_migrations"),
                     ct_rows(CT_SCHEMA, "cairnloop_schema_migrations"));
    assert_int_equal(ct_int("SELECT count(*) FROM pg_tables WHERE schemaname = '%s'", schema),
                     ct_int("SELECT count(*) FROM pg_tables WHERE schemaname = '%s'", CT_SCHEMA));
  }
  drop_schema(schema);
}

typedef struct column_shape {
  const char *name;
  const char *data_type; /* information_schema.columns.data_type */
  const char *udt_name;
  const char *max_length;         /* NULL: none */
  const char *nullable;           /* "YES" | "NO" */
  const char *default_;           /* NULL: none */
  const char *datetime_precision; /* NULL: not a time type */
} column_shape;

/* The seed migration (priv/repo/migrations/20260527063000_add_outbound_bulk_envelopes.exs)
 * in PostgreSQL terms: :binary_id uuid, :string varchar(255), {:array, :bigint}
 * bigint[], :utc_datetime_usec timestamp (microseconds), timestamps()
 * timestamp(0), all without time zone. */
static const column_shape envelope_columns[] = {
    {"id", "uuid", "uuid", NULL, "NO", NULL, NULL},
    {"template_id", "character varying", "varchar", "255", "NO", NULL, NULL},
    {"rendered_body", "text", "text", NULL, "NO", NULL, NULL},
    {"recipient_conversation_ids", "ARRAY", "_int8", NULL, "NO", NULL, NULL},
    {"count", "integer", "int4", NULL, "NO", NULL, NULL},
    {"effective_cap", "integer", "int4", NULL, "NO", NULL, NULL},
    {"requested_by", "character varying", "varchar", "255", "YES", NULL, NULL},
    {"requested_at", "timestamp without time zone", "timestamp", NULL, "NO", NULL, "6"},
    {"status", "character varying", "varchar", "255", "NO", "'submitted'::character varying", NULL},
    {"refused_reason", "character varying", "varchar", "255", "YES", NULL, NULL},
    {"inserted_at", "timestamp without time zone", "timestamp", NULL, "NO", NULL, "0"},
    {"updated_at", "timestamp without time zone", "timestamp", NULL, "NO", NULL, "0"},
};

static void assert_cell(PGresult *r, int row, int col, const char *expected, const char *column) {
  const char *got = PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
  if ((expected == NULL) != (got == NULL) || (expected != NULL && strcmp(expected, got) != 0)) {
    fail_msg("column %s, %s: expected %s, got %s", column, PQfname(r, col),
             expected ? expected : "NULL", got ? got : "NULL");
  }
}

static void test_migrate__bulk_envelope_columns_match_the_seed(void **state) {
  (void)state;
  cl_engine *eng = ct_open(NULL);
  const char *params[] = {CT_SCHEMA};
  PGresult *r = ct_query(
      "SELECT column_name, data_type, udt_name, character_maximum_length::text, is_nullable, "
      "column_default, CASE WHEN data_type LIKE 'timestamp%' THEN datetime_precision::text END "
      "FROM information_schema.columns WHERE table_schema = $1 "
      "AND table_name = 'cairnloop_outbound_bulk_envelopes' ORDER BY ordinal_position",
      1, params);
  assert_int_equal(PQntuples(r), CT_ARRAY_LEN(envelope_columns));
  for (int i = 0; i < PQntuples(r); i++) {
    const column_shape *c = &envelope_columns[i];
    assert_cell(r, i, 0, c->name, c->name);
    assert_cell(r, i, 1, c->data_type, c->name);
    assert_cell(r, i, 2, c->udt_name, c->name);
    assert_cell(r, i, 3, c->max_length, c->name);
    assert_cell(r, i, 4, c->nullable, c->name);
    assert_cell(r, i, 5, c->default_, c->name);
    assert_cell(r, i, 6, c->datetime_precision, c->name);
  }
  PQclear(r);

  /* id is the primary key, alone. */
  char *pk = ct_scalar(
      "SELECT string_agg(a.attname, ',') FROM pg_constraint k "
      "JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = ANY (k.conkey) "
      "WHERE k.conrelid = '%s.cairnloop_outbound_bulk_envelopes'::regclass AND k.contype = 'p'",
      CT_SCHEMA);
  assert_non_null(pk);
  assert_string_equal(pk, "id");
  free(pk);
  cl_close(eng);
}

static void test_migrate__bulk_envelope_indexes_match_the_seed(void **state) {
  (void)state;
  cl_engine *eng = ct_open(NULL);
  const char *params[] = {CT_SCHEMA};
  /* Non-unique, non-partial btree indexes on exactly one column each, named as
   * Ecto names them, and no others besides the primary key. */
  PGresult *r = ct_query(
      "SELECT ic.relname, i.indisunique, i.indisprimary, am.amname, i.indpred IS NULL, "
      "(SELECT string_agg(a.attname, ',' ORDER BY k.ord) FROM unnest(i.indkey) WITH ORDINALITY "
      "  k(attnum, ord) JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) "
      "FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid "
      "JOIN pg_class tc ON tc.oid = i.indrelid JOIN pg_namespace n ON n.oid = tc.relnamespace "
      "JOIN pg_am am ON am.oid = ic.relam "
      "WHERE n.nspname = $1 AND tc.relname = 'cairnloop_outbound_bulk_envelopes' "
      "ORDER BY i.indisprimary DESC, ic.relname",
      1, params);
  assert_int_equal(PQntuples(r), 3);
  assert_string_equal(PQgetvalue(r, 0, 2), "t"); /* the primary key */
  assert_string_equal(PQgetvalue(r, 0, 5), "id");
  assert_string_equal(PQgetvalue(r, 1, 0), "cairnloop_outbound_bulk_envelopes_requested_at_index");
  assert_string_equal(PQgetvalue(r, 1, 5), "requested_at");
  assert_string_equal(PQgetvalue(r, 2, 0), "cairnloop_outbound_bulk_envelopes_template_id_index");
  assert_string_equal(PQgetvalue(r, 2, 5), "template_id");
  for (int i = 1; i <= 2; i++) {
    assert_string_equal(PQgetvalue(r, i, 1), "f"); /* not unique */
    assert_string_equal(PQgetvalue(r, i, 3), "btree");
    assert_string_equal(PQgetvalue(r, i, 4), "t"); /* not partial */
  }
  PQclear(r);
  cl_close(eng);
}

#define VALID_ENVELOPE_COLUMNS                                                         \
  "id, template_id, rendered_body, recipient_conversation_ids, count, effective_cap, " \
  "requested_at, inserted_at, updated_at"

static bool insert_envelope(const char *count, const char *cap, const char *status) {
  char msg[512];
  bool ok;
  if (status != NULL) {
    ok = ct_try_exec(msg, sizeof msg,
                     "INSERT INTO %s.cairnloop_outbound_bulk_envelopes (" VALID_ENVELOPE_COLUMNS
                     ", status) VALUES (gen_random_uuid(), 't', 'b', '{1}', %s, %s, now(), now(), "
                     "now(), '%s')",
                     CT_SCHEMA, count, cap, status);
  } else {
    ok = ct_try_exec(msg, sizeof msg,
                     "INSERT INTO %s.cairnloop_outbound_bulk_envelopes (" VALID_ENVELOPE_COLUMNS
                     ") VALUES (gen_random_uuid(), 't', 'b', '{1}', %s, %s, now(), now(), now())",
                     CT_SCHEMA, count, cap);
  }
  /* Only a CHECK violation counts as the refusal we are looking for. */
  if (!ok) assert_non_null(strstr(msg, "check constraint"));
  return ok;
}

static void test_migrate__bulk_envelope_checks_reject_invalid_rows(void **state) {
  (void)state;
  cl_engine *eng = ct_open(NULL);
  ct_reset(CT_SCHEMA);
  assert_true(insert_envelope("1", "1", NULL));
  assert_true(insert_envelope("3", "25", "submitted"));
  assert_true(insert_envelope("30", "25", "refused_cap_exceeded"));
  assert_false(insert_envelope("0", "25", NULL));
  assert_false(insert_envelope("-1", "25", NULL));
  assert_false(insert_envelope("1", "0", NULL));
  assert_false(insert_envelope("1", "-5", NULL));
  assert_false(insert_envelope("1", "25", "accepted"));
  assert_false(insert_envelope("1", "25", "SUBMITTED"));
  /* The default status is "submitted". */
  assert_int_equal(ct_int("SELECT count(*) FROM %s.cairnloop_outbound_bulk_envelopes "
                          "WHERE status = 'submitted'",
                          CT_SCHEMA),
                   2);
  assert_int_equal(ct_rows(CT_SCHEMA, "cairnloop_outbound_bulk_envelopes"), 3);
  ct_reset(CT_SCHEMA);
  cl_close(eng);
}

/* The key lives on the messages, which the engine never deletes, so that
 * pruning finished jobs cannot re-open it (migration 20260701000000); the
 * jobs carry no copy of it. */
static void test_migrate__outbound_key_on_messages_treats_null_envelope_as_value(void **state) {
  (void)state;
  cl_engine *eng = ct_open(NULL);
  static const char *const key_query =
      "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
      "JOIN pg_namespace n ON n.oid = c.relnamespace "
      "WHERE n.nspname = '%s' AND c.relname = '%s' "
      "AND i.indisunique AND i.indnullsnotdistinct "
      "AND (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM unnest(i.indkey) "
      "     WITH ORDINALITY k(attnum, ord) JOIN pg_attribute a "
      "     ON a.attrelid = c.oid AND a.attnum = k.attnum) "
      "    = ARRAY['conversation_id', 'template_id', 'bulk_envelope_id']";
  assert_int_equal(ct_int(key_query, CT_SCHEMA, "cairnloop_messages"), 1);
  assert_int_equal(ct_int(key_query, CT_SCHEMA, "cairnloop_delivery_jobs"), 0);
  cl_close(eng);
}

/* The columns DESIGN.md names for each table exist (others may be added). */
static void test_migrate__tables_have_the_designed_columns(void **state) {
  (void)state;
  cl_engine *eng = ct_open(NULL);
  static const struct {
    const char *table, *columns;
  } want[] = {
      {"cairnloop_conversations", "id,status,subject,customer_ref"},
      {"cairnloop_messages", "id,conversation_id,content,role,metadata"},
      {"cairnloop_delivery_jobs",
       "message_id,conversation_id,template_id,bulk_envelope_id,args,state,attempt,"
       "max_attempts,scheduled_at,attempted_at,completed_at,errors"},
      {"cairnloop_schema_migrations", "version"},
  };
  for (size_t i = 0; i < CT_ARRAY_LEN(want); i++) {
    int64_t missing = ct_int(
        "SELECT count(*) FROM unnest(string_to_array('%s', ',')) AS w(name) "
        "WHERE NOT EXISTS (SELECT 1 FROM information_schema.columns c WHERE "
        "c.table_schema = '%s' AND c.table_name = '%s' AND c.column_name = w.name)",
        want[i].columns, CT_SCHEMA, want[i].table);
    if (missing != 0)
      fail_msg("%s lacks %lld of: %s", want[i].table, (long long)missing, want[i].columns);
  }
  char *type = ct_scalar("SELECT data_type FROM information_schema.columns WHERE "
                         "table_schema = '%s' AND table_name = 'cairnloop_messages' "
                         "AND column_name = 'metadata'",
                         CT_SCHEMA);
  assert_non_null(type);
  assert_string_equal(type, "jsonb");
  free(type);
  cl_close(eng);
}

static void test_migrate__custom_schema_holds_every_table(void **state) {
  (void)state;
  const char *schema = "cl_test_alt";
  drop_schema(schema);
  cl_engine *eng = ct_open(schema);
  assert_string_equal(cl_schema(eng), schema);
  assert_int_equal(ct_int("SELECT count(*) FROM pg_tables WHERE schemaname = '%s' AND tablename "
                          "IN ('cairnloop_conversations', 'cairnloop_messages', "
                          "'cairnloop_outbound_bulk_envelopes', 'cairnloop_delivery_jobs', "
                          "'cairnloop_schema_migrations')",
                          schema),
                   5);

  /* Operations write to that schema and nowhere else (the default schema
   * is migrated and emptied to compare with). */
  cl_engine *dflt = ct_open(NULL);
  ct_reset(CT_SCHEMA);
  ct_seed(schema, 3);
  int64_t ids[] = {1, 2, 3};
  cl_bulk_opts opts = {.template_id = "alt", .rendered_body = "hello"};
  cl_bulk_result res = {0};
  cl_error err;
  ct_assert_ok(cl_bulk_trigger(eng, ids, 3, &opts, &res, &err), &err);
  cl_bulk_result_clear(&res);
  ct_assert_counts(schema, 1, 3, 3);
  ct_assert_counts(CT_SCHEMA, 0, 0, 0);
  cl_close(dflt);
  cl_close(eng);
  drop_schema(schema);
}

static void test_open__rejects_bad_schema_names(void **state) {
  (void)state;
  static const char *const bad[] = {
      "",
      "Cairnloop",
      "1abc",
      "a-b",
      "a b",
      "a.b",
      "x; DROP TABLE y",
      "\"quoted\"",
      "caf\xc3\xa9",
      "a\nb",
      /* 64 bytes: one past PostgreSQL's identifier limit. */
      "a123456789012345678901234567890123456789012345678901234567890123",
  };
  for (size_t i = 0; i < CT_ARRAY_LEN(bad); i++) {
    cl_config cfg;
    cl_config_init(&cfg);
    cfg.database = ct_database_url();
    cfg.schema = bad[i];
    cl_engine *eng = NULL;
    cl_error err;
    cl_status st = cl_open(&eng, &cfg, &err);
    if (st != CL_INVALID_ARGUMENT) {
      print_error("schema \"%s\" was accepted (%s)\n", bad[i], cl_status_name(st));
    }
    ct_assert_error(st, &err, CL_INVALID_ARGUMENT, "schema");
    assert_null(eng);
  }
}

static void test_open__accepts_good_schema_names(void **state) {
  (void)state;
  static const char *const good[] = {
      "_x",
      "a1_b",
      "z",
      /* 63 bytes: PostgreSQL's identifier limit. */
      "a12345678901234567890123456789012345678901234567890123456789012",
  };
  for (size_t i = 0; i < CT_ARRAY_LEN(good); i++) {
    cl_config cfg;
    cl_config_init(&cfg);
    cfg.database = ct_database_url();
    cfg.schema = good[i];
    cl_engine *eng = NULL;
    cl_error err;
    ct_assert_ok(cl_open(&eng, &cfg, &err), &err);
    assert_string_equal(cl_schema(eng), good[i]);
    cl_close(eng);
  }
}

static void test_open__unreachable_database_is_db_error(void **state) {
  (void)state;
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.database = "host=/nonexistent-cairnloop-socket-dir port=1 dbname=x connect_timeout=2";
  cl_engine *eng = NULL;
  cl_error err;
  ct_assert_error(cl_open(&eng, &cfg, &err), &err, CL_DB_ERROR, NULL);
  assert_null(eng);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_migrate__rerun_is_a_noop),
      cmocka_unit_test(test_migrate__records_every_migration_file),
      cmocka_unit_test(test_migrate__two_migrators_at_once_are_safe),
      cmocka_unit_test(test_migrate__bulk_envelope_columns_match_the_seed),
      cmocka_unit_test(test_migrate__bulk_envelope_indexes_match_the_seed),
      cmocka_unit_test(test_migrate__bulk_envelope_checks_reject_invalid_rows),
      cmocka_unit_test(test_migrate__outbound_key_on_messages_treats_null_envelope_as_value),
      cmocka_unit_test(test_migrate__tables_have_the_designed_columns),
      cmocka_unit_test(test_migrate__custom_schema_holds_every_table),
      cmocka_unit_test(test_open__rejects_bad_schema_names),
      cmocka_unit_test(test_open__accepts_good_schema_names),
      cmocka_unit_test(test_open__unreachable_database_is_db_error),
  };
  return cmocka_run_group_tests_name("migrate", tests, NULL, ct_group_teardown);
}
