/*
 * shapes.c - hand-written libpq programs that write the engine's rows: the
 * ceiling candidates (one CTE over unnest, the same with binary parameters,
 * COPY, pipelined multi-row INSERTs) and the per-row shape of the original
 * Elixir implementation (one round trip per statement, as Ecto issues
 * them).  Each shape owns one connection and prepares once.  Uses libpq.
 */
#include "bench.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uuid/uuid.h>

/* Type oids for explicit parameter types. */
#define OID_INT4 23
#define OID_INT8 20
#define OID_TEXT 25
#define OID_UUID 2950
#define OID_INT8ARRAY 1016

/* Rows per multi-row INSERT in the pipelined shape: 1000 rows of 4
 * parameters stays far below the protocol's 65535-parameter limit, and
 * larger statements gained nothing when tried (parse cost grows with them). */
#define PIPE_CHUNK 1000

typedef enum kind {
  K_CTE,
  K_CTE_BINARY,
  K_COPY,
  K_PIPELINE,
  K_PER_ROW,
  K_T_CTE,
  K_T_PIPELINE,
  K_T_PER_ROW
} kind;

const shape_info bench_bulk_shapes[] = {
    {"cte", "one CTE statement over unnest($ids), text parameters, one round trip"},
    {"cte-binary", "the same statement, binary parameters (int8[] array, uuid) and results"},
    {"copy", "ids reserved with nextval, then COPY messages and COPY jobs (text format)"},
    {"pipeline",
     "ids reserved with nextval, then pipelined 1000-row INSERTs and COMMIT: 2 round trips"},
    {"per-row", "BEGIN; INSERT envelope; per recipient INSERT message, INSERT job; COMMIT: "
                "one round trip per statement (as Ecto)"},
};
const size_t bench_bulk_shapes_count = sizeof bench_bulk_shapes / sizeof bench_bulk_shapes[0];

const shape_info bench_trigger_shapes[] = {
    {"cte-1", "one CTE statement (message, then job from its RETURNING), one round trip"},
    {"pipeline-1",
     "BEGIN; INSERT message; INSERT job (currval); COMMIT, pipelined: one round trip"},
    {"per-row-1", "BEGIN; INSERT message; INSERT job; COMMIT: four round trips (as Ecto)"},
};
const size_t bench_trigger_shapes_count = sizeof bench_trigger_shapes /
                                          sizeof bench_trigger_shapes[0];

/* A growable byte buffer. */
typedef struct buf {
  char *p;
  size_t len, cap;
} buf;

static bool buf_reserve(buf *b, size_t more) {
  if (b->len + more + 1 <= b->cap) return true;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->len + more + 1) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) return false;
  b->p = p;
  b->cap = cap;
  return true;
}

static void buf_add(buf *b, const char *s, size_t n) {
  if (n == 0) return; /* s may then be an empty buffer's NULL */
  if (!buf_reserve(b, n)) abort();
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void buf_puts(buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_i64(buf *b, int64_t v) {
  char t[24];
  int n = snprintf(t, sizeof t, "%" PRId64, v);
  buf_add(b, t, (size_t)n);
}

/* A JSON string literal (quotes included). */
static void buf_json_str(buf *b, const char *s) {
  buf_add(b, "\"", 1);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') {
      char e[2] = {'\\', (char)ch};
      buf_add(b, e, 2);
    } else if (ch < 0x20) {
      char e[8];
      int n = snprintf(e, sizeof e, "\\u%04x", ch);
      buf_add(b, e, (size_t)n);
    } else {
      buf_add(b, s, 1);
    }
  }
  buf_add(b, "\"", 1);
}

/* A value in COPY's text format: backslash, tab, newline and CR escaped. */
static void buf_copy_str(buf *b, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    const char *e = NULL;
    switch (s[i]) {
    case '\\':
      e = "\\\\";
      break;
    case '\t':
      e = "\\t";
      break;
    case '\n':
      e = "\\n";
      break;
    case '\r':
      e = "\\r";
      break;
    default:
      break;
    }
    if (e) buf_add(b, e, 2);
    else buf_add(b, s + i, 1);
  }
}

struct shape {
  PGconn *c;
  kind k;
  char schema[64];
  char msg_seq[160], job_seq[160]; /* qualified sequence names */
  buf sql, data, tmp;
  char **params; /* per-call text parameters (pipeline and per-row) */
  size_t nparams_cap;
  int prepared_rows[8]; /* row counts with a prepared multi-row pair */
  int nprepared_rows;
  uint64_t round_trips; /* times the client waited for the server */
};

void bench_uuid(char out[37]) {
  uuid_t u;
  uuid_generate_random(u);
  uuid_unparse_lower(u, out);
}

void bench_pg_error(PGconn *c, const PGresult *r, const char *what) {
  const char *m = r ? PQresultErrorMessage(r) : NULL;
  if (!m || !*m) m = c ? PQerrorMessage(c) : "no connection";
  fprintf(stderr, "bench: %s: %s", what, m);
  size_t n = strlen(m);
  if (n == 0 || m[n - 1] != '\n') fputc('\n', stderr);
}

/* Expands @S into the quoted schema. */
static void sql_for(shape *s, buf *out, const char *tmpl) {
  out->len = 0;
  if (out->p) out->p[0] = '\0';
  for (const char *p = tmpl; *p; p++) {
    if (p[0] == '@' && p[1] == 'S') {
      buf_puts(out, "\"");
      buf_puts(out, s->schema);
      buf_puts(out, "\"");
      p++;
    } else {
      buf_add(out, p, 1);
    }
  }
}

static bool prepare(shape *s, const char *name, const char *tmpl, int n, const Oid *types) {
  sql_for(s, &s->tmp, tmpl);
  PGresult *r = PQprepare(s->c, name, s->tmp.p, n, types);
  bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  if (!ok) bench_pg_error(s->c, r, name);
  PQclear(r);
  return ok;
}

static bool exec_ok(shape *s, const char *sql) {
  s->round_trips++;
  PGresult *r = PQexec(s->c, sql);
  bool ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
  if (!ok) bench_pg_error(s->c, r, sql);
  PQclear(r);
  return ok;
}

/* ------------------------------------------------------------------ */
/* Statements                                                           */
/* ------------------------------------------------------------------ */

/* The ceiling's one-statement bulk.  Message metadata is the same for
 * every row of a bulk, so it is built once (an InitPlan), not per row.
 * $1 envelope id, $2 template_id, $3 body, $4 ids, $5 cap. */
static const char SQL_CTE[] =
    "WITH env AS ("
    "  INSERT INTO @S.cairnloop_outbound_bulk_envelopes (id, template_id, rendered_body,"
    "         recipient_conversation_ids, count, effective_cap, requested_at, status,"
    "         inserted_at, updated_at)"
    "  VALUES ($1, $2, $3, $4, cardinality($4), $5, now() AT TIME ZONE 'UTC', 'submitted',"
    "          now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')"
    "), msgs AS ("
    "  INSERT INTO @S.cairnloop_messages (conversation_id, content, role, metadata)"
    "  SELECT cid, $3, 'system_outbound',"
    "         (SELECT jsonb_build_object('template_id', $2, 'status', 'pending',"
    "                                    'bulk_envelope_id', $1))"
    "  FROM unnest($4) AS cid"
    "  RETURNING id, conversation_id"
    "), jobs AS ("
    "  INSERT INTO @S.cairnloop_delivery_jobs (message_id, conversation_id, template_id,"
    "         bulk_envelope_id, args)"
    "  SELECT id, conversation_id, $2, $1, jsonb_build_object('message_id', id,"
    "         'conversation_id', conversation_id, 'template_id', $2, 'bulk_envelope_id', $1)"
    "  FROM msgs"
    "  RETURNING id, message_id, conversation_id"
    ") SELECT conversation_id, message_id, id FROM jobs";

static const Oid CTE_TYPES[] = {OID_UUID, OID_TEXT, OID_TEXT, OID_INT8ARRAY, OID_INT4};

/* Envelope row and id reservation, shared by copy, pipeline and per-row.
 * $1 id, $2 template_id, $3 body, $4 ids, $5 cap. */
static const char SQL_ENV[] =
    "INSERT INTO @S.cairnloop_outbound_bulk_envelopes (id, template_id, rendered_body,"
    "       recipient_conversation_ids, count, effective_cap, requested_at, status,"
    "       inserted_at, updated_at)"
    " VALUES ($1, $2, $3, $4, cardinality($4), $5, now() AT TIME ZONE 'UTC', 'submitted',"
    "         now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')";

static const char SQL_IDS[] =
    "SELECT nextval($2::regclass), nextval($3::regclass) FROM generate_series(1, $1)";

/* Per-row (Ecto): the client encodes maps to JSON, the server returns ids. */
static const char SQL_ROW_MSG[] =
    "INSERT INTO @S.cairnloop_messages (conversation_id, content, role, metadata)"
    " VALUES ($1, $2, 'system_outbound', $3) RETURNING id";
static const char SQL_ROW_JOB[] =
    "INSERT INTO @S.cairnloop_delivery_jobs (message_id, conversation_id, template_id,"
    "       bulk_envelope_id, args)"
    " VALUES ($1, $2, $3, $4, $5) RETURNING id";

/* Single trigger, one statement.  $1 conversation, $2 template_id, $3 content. */
static const char SQL_T_CTE[] =
    "WITH m AS ("
    "  INSERT INTO @S.cairnloop_messages (conversation_id, content, role, metadata)"
    "  VALUES ($1, $3, 'system_outbound', jsonb_build_object('template_id', $2,"
    "          'status', 'pending', 'bulk_envelope_id', NULL))"
    "  RETURNING id"
    ") INSERT INTO @S.cairnloop_delivery_jobs (message_id, conversation_id, template_id, args)"
    "  SELECT id, $1, $2, jsonb_build_object('message_id', id, 'conversation_id', $1,"
    "         'template_id', $2, 'bulk_envelope_id', NULL)"
    "  FROM m RETURNING message_id, id";
static const Oid T_TYPES[] = {OID_INT8, OID_TEXT, OID_TEXT};

static const char SQL_T_MSG[] =
    "INSERT INTO @S.cairnloop_messages (conversation_id, content, role, metadata)"
    " VALUES ($1, $3, 'system_outbound', jsonb_build_object('template_id', $2,"
    "         'status', 'pending', 'bulk_envelope_id', NULL)) RETURNING id";
/* $4 is the messages sequence: currval is the id just inserted on this session. */
static const char SQL_T_JOB[] =
    "INSERT INTO @S.cairnloop_delivery_jobs (message_id, conversation_id, template_id, args)"
    " VALUES (currval($4::regclass), $1, $2, jsonb_build_object('message_id',"
    "         currval($4::regclass), 'conversation_id', $1, 'template_id', $2,"
    "         'bulk_envelope_id', NULL)) RETURNING id";
static const Oid T_JOB_TYPES[] = {OID_INT8, OID_TEXT, OID_TEXT, OID_TEXT};

/* ------------------------------------------------------------------ */
/* Open / close                                                         */
/* ------------------------------------------------------------------ */

static bool serial_seq(shape *s, const char *table, char *out, size_t outsz) {
  char q[256];
  snprintf(q, sizeof q, "SELECT pg_get_serial_sequence('\"%s\".%s', 'id')", s->schema, table);
  PGresult *r = PQexec(s->c, q);
  bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0);
  if (ok) snprintf(out, outsz, "%s", PQgetvalue(r, 0, 0));
  else bench_pg_error(s->c, r, q);
  PQclear(r);
  return ok;
}

shape *shape_open(const char *conninfo, const char *schema, const char *name) {
  static const struct {
    const char *name;
    kind k;
  } kinds[] = {{"cte", K_CTE},
               {"cte-binary", K_CTE_BINARY},
               {"copy", K_COPY},
               {"pipeline", K_PIPELINE},
               {"per-row", K_PER_ROW},
               {"cte-1", K_T_CTE},
               {"pipeline-1", K_T_PIPELINE},
               {"per-row-1", K_T_PER_ROW}};
  shape *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  size_t i;
  for (i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
    if (strcmp(kinds[i].name, name) == 0) break;
  if (i == sizeof kinds / sizeof kinds[0]) {
    fprintf(stderr, "bench: unknown shape %s\n", name);
    free(s);
    return NULL;
  }
  s->k = kinds[i].k;
  snprintf(s->schema, sizeof s->schema, "%s", schema);
  s->c = PQconnectdb(conninfo);
  if (PQstatus(s->c) != CONNECTION_OK) {
    bench_pg_error(s->c, NULL, "connect");
    shape_close(s);
    return NULL;
  }
  bool ok = serial_seq(s, "cairnloop_messages", s->msg_seq, sizeof s->msg_seq) &&
            serial_seq(s, "cairnloop_delivery_jobs", s->job_seq, sizeof s->job_seq);
  switch (s->k) {
  case K_CTE:
  case K_CTE_BINARY:
    ok = ok && prepare(s, "cte", SQL_CTE, 5, CTE_TYPES);
    break;
  case K_COPY:
  case K_PIPELINE:
    ok = ok && prepare(s, "env", SQL_ENV, 5, CTE_TYPES) && prepare(s, "ids", SQL_IDS, 0, NULL);
    break;
  case K_PER_ROW:
    ok = ok && prepare(s, "env", SQL_ENV, 5, CTE_TYPES) &&
         prepare(s, "msg", SQL_ROW_MSG, 0, NULL) && prepare(s, "job", SQL_ROW_JOB, 0, NULL);
    break;
  case K_T_CTE:
    ok = ok && prepare(s, "t", SQL_T_CTE, 3, T_TYPES);
    break;
  case K_T_PIPELINE:
  case K_T_PER_ROW:
    ok = ok && prepare(s, "tm", SQL_T_MSG, 3, T_TYPES) &&
         prepare(s, "tj", SQL_T_JOB, 4, T_JOB_TYPES);
    break;
  }
  if (!ok) {
    shape_close(s);
    return NULL;
  }
  s->round_trips = 0;
  return s;
}

uint64_t shape_round_trips(const shape *s) { return s->round_trips; }

PGconn *shape_conn(shape *s) { return s->c; }

void shape_close(shape *s) {
  if (!s) return;
  if (s->c) PQfinish(s->c);
  free(s->sql.p);
  free(s->data.p);
  free(s->tmp.p);
  for (size_t i = 0; i < s->nparams_cap; i++) free(s->params[i]);
  free(s->params);
  free(s);
}

/* ------------------------------------------------------------------ */
/* Helpers                                                              */
/* ------------------------------------------------------------------ */

static void ids_text(buf *b, const int64_t *ids, size_t n) {
  b->len = 0;
  buf_add(b, "{", 1);
  for (size_t i = 0; i < n; i++) {
    if (i) buf_add(b, ",", 1);
    buf_i64(b, ids[i]);
  }
  buf_add(b, "}", 1);
}

static int64_t be64(const char *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | (unsigned char)p[i];
  return (int64_t)v;
}

static void put_be32(char *p, uint32_t v) {
  v = htonl(v);
  memcpy(p, &v, 4);
}

static void put_be64(char *p, uint64_t v) {
  put_be32(p, (uint32_t)(v >> 32));
  put_be32(p + 4, (uint32_t)v);
}

/* A text parameter slot of at least `need` bytes (pipeline, per-row). */
static char *param_slot(shape *s, size_t i) {
  if (i >= s->nparams_cap) {
    size_t cap = s->nparams_cap ? s->nparams_cap * 2 : 64;
    while (cap <= i) cap *= 2;
    char **p = realloc(s->params, cap * sizeof *p);
    if (!p) abort();
    for (size_t j = s->nparams_cap; j < cap; j++) p[j] = NULL;
    s->params = p;
    s->nparams_cap = cap;
  }
  if (!s->params[i] && !(s->params[i] = malloc(24))) abort();
  return s->params[i];
}

/* Collects `n` results of a pipeline up to its sync; false on any error. */
static bool pipeline_collect(shape *s, int n, PGresult **keep, int keep_index) {
  bool ok = true;
  s->round_trips++;
  for (int i = 0; i < n; i++) {
    PGresult *r = PQgetResult(s->c);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
      if (ok) bench_pg_error(s->c, r, "pipeline");
      ok = false;
    }
    if (i == keep_index && keep && st == PGRES_TUPLES_OK) *keep = r;
    else PQclear(r);
    PGresult *end = PQgetResult(s->c); /* NULL after each query's results */
    if (end) PQclear(end);
  }
  PGresult *sync = PQgetResult(s->c);
  if (PQresultStatus(sync) != PGRES_PIPELINE_SYNC) ok = false;
  PQclear(sync);
  return ok;
}

/* ------------------------------------------------------------------ */
/* Bulk shapes                                                          */
/* ------------------------------------------------------------------ */

static int bulk_cte(shape *s, bulk_call *call, ids_out *out) {
  char cap[16];
  snprintf(cap, sizeof cap, "%d", call->cap);
  ids_text(&s->data, call->ids, call->n);
  const char *v[] = {call->envelope_id, call->template_id, call->body, s->data.p, cap};
  s->round_trips++;
  PGresult *r = PQexecPrepared(s->c, "cte", 5, v, NULL, NULL, 0);
  int ok = PQresultStatus(r) == PGRES_TUPLES_OK && (size_t)PQntuples(r) == call->n;
  if (!ok) bench_pg_error(s->c, r, "cte");
  /* RETURNING follows the insert order, which is the cohort's here; the
   * conversation id column would let a client map rows if it were not. */
  for (int i = 0; ok && i < PQntuples(r); i++) {
    out->message_ids[i] = strtoll(PQgetvalue(r, i, 1), NULL, 10);
    out->job_ids[i] = strtoll(PQgetvalue(r, i, 2), NULL, 10);
  }
  PQclear(r);
  return ok ? 0 : -1;
}

static int bulk_cte_binary(shape *s, bulk_call *call, ids_out *out) {
  /* int8[] in the binary array format: header, then (length, value) pairs. */
  size_t alen = 20 + call->n * 12;
  s->data.len = 0;
  if (!buf_reserve(&s->data, alen)) return -1;
  char *a = s->data.p;
  put_be32(a, 1);            /* dimensions */
  put_be32(a + 4, 0);        /* no nulls */
  put_be32(a + 8, OID_INT8); /* element type */
  put_be32(a + 12, (uint32_t)call->n);
  put_be32(a + 16, 1); /* lower bound */
  for (size_t i = 0; i < call->n; i++) {
    put_be32(a + 20 + i * 12, 8);
    put_be64(a + 24 + i * 12, (uint64_t)call->ids[i]);
  }
  uuid_t u;
  uuid_parse(call->envelope_id, u);
  char cap[4];
  put_be32(cap, (uint32_t)call->cap);
  const char *v[] = {(const char *)u, call->template_id, call->body, a, cap};
  int len[] = {16, (int)strlen(call->template_id), (int)strlen(call->body), (int)alen, 4};
  int fmt[] = {1, 1, 1, 1, 1};
  s->round_trips++;
  PGresult *r = PQexecPrepared(s->c, "cte", 5, v, len, fmt, 1);
  int ok = PQresultStatus(r) == PGRES_TUPLES_OK && (size_t)PQntuples(r) == call->n;
  if (!ok) bench_pg_error(s->c, r, "cte-binary");
  for (int i = 0; ok && i < PQntuples(r); i++) {
    out->message_ids[i] = be64(PQgetvalue(r, i, 1));
    out->job_ids[i] = be64(PQgetvalue(r, i, 2));
  }
  PQclear(r);
  return ok ? 0 : -1;
}

/* Round trip 1 of copy and pipeline: BEGIN, the envelope, and N message and
 * N job ids from the sequences, pipelined.  Leaves the transaction open
 * and the ids in `out`; returns false after rolling back on failure. */
static bool begin_reserve(shape *s, bulk_call *call) {
  char cap[16], n[24];
  snprintf(cap, sizeof cap, "%d", call->cap);
  snprintf(n, sizeof n, "%zu", call->n);
  ids_text(&s->data, call->ids, call->n);
  const char *env[] = {call->envelope_id, call->template_id, call->body, s->data.p, cap};
  const char *idp[] = {n, s->msg_seq, s->job_seq};
  if (PQenterPipelineMode(s->c) != 1) return false;
  bool sent = PQsendQueryParams(s->c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) &&
              PQsendQueryPrepared(s->c, "env", 5, env, NULL, NULL, 0) &&
              PQsendQueryPrepared(s->c, "ids", 3, idp, NULL, NULL, 0) && PQpipelineSync(s->c);
  PGresult *ids = NULL;
  bool ok = sent && pipeline_collect(s, 3, &ids, 2);
  PQexitPipelineMode(s->c);
  if (ok && ids && (size_t)PQntuples(ids) == call->n) {
    s->tmp.len = 0;
    /* Keep the reserved ids in tmp as two int64 arrays. */
    if (!buf_reserve(&s->tmp, call->n * 16)) abort();
    int64_t *mid = (int64_t *)(void *)s->tmp.p, *jid = mid + call->n;
    for (size_t i = 0; i < call->n; i++) {
      mid[i] = strtoll(PQgetvalue(ids, (int)i, 0), NULL, 10);
      jid[i] = strtoll(PQgetvalue(ids, (int)i, 1), NULL, 10);
    }
  } else {
    ok = false;
  }
  PQclear(ids);
  if (!ok) {
    bench_pg_error(s->c, NULL, "begin_reserve");
    exec_ok(s, "ROLLBACK");
  }
  return ok;
}

static void meta_json(buf *b, const bulk_call *call) {
  b->len = 0;
  buf_puts(b, "{\"template_id\":");
  buf_json_str(b, call->template_id);
  buf_puts(b, ",\"status\":\"pending\",\"bulk_envelope_id\":\"");
  buf_puts(b, call->envelope_id);
  buf_puts(b, "\"}");
}

static void args_json(buf *b, int64_t mid, int64_t cid, const char *tid, const char *env) {
  buf_puts(b, "{\"message_id\":");
  buf_i64(b, mid);
  buf_puts(b, ",\"conversation_id\":");
  buf_i64(b, cid);
  buf_puts(b, ",\"template_id\":");
  buf_json_str(b, tid);
  buf_puts(b, ",\"bulk_envelope_id\":");
  if (env) {
    buf_puts(b, "\"");
    buf_puts(b, env);
    buf_puts(b, "\"}");
  } else {
    buf_puts(b, "null}");
  }
}

static bool copy_in(shape *s, const char *sql, const buf *data) {
  s->round_trips += 2; /* the COPY's CopyInResponse, then its CommandComplete */
  PGresult *r = PQexec(s->c, sql);
  if (PQresultStatus(r) != PGRES_COPY_IN) {
    bench_pg_error(s->c, r, sql);
    PQclear(r);
    return false;
  }
  PQclear(r);
  bool ok = PQputCopyData(s->c, data->p, (int)data->len) == 1 && PQputCopyEnd(s->c, NULL) == 1;
  r = PQgetResult(s->c);
  if (PQresultStatus(r) != PGRES_COMMAND_OK) {
    bench_pg_error(s->c, r, "copy");
    ok = false;
  }
  PQclear(r);
  while ((r = PQgetResult(s->c)) != NULL) PQclear(r);
  return ok;
}

static int bulk_copy(shape *s, bulk_call *call, ids_out *out) {
  if (!begin_reserve(s, call)) return -1;
  const int64_t *mid = (const int64_t *)(const void *)s->tmp.p, *jid = mid + call->n;
  buf meta = {0}, row = {0};
  meta_json(&meta, call);
  buf body = {0}, metaesc = {0};
  buf_copy_str(&body, call->body, strlen(call->body));
  buf_copy_str(&metaesc, meta.p, meta.len);
  s->data.len = 0;
  for (size_t i = 0; i < call->n; i++) {
    buf_i64(&s->data, mid[i]);
    buf_add(&s->data, "\t", 1);
    buf_i64(&s->data, call->ids[i]);
    buf_add(&s->data, "\t", 1);
    buf_add(&s->data, body.p, body.len);
    buf_add(&s->data, "\tsystem_outbound\t", 17);
    buf_add(&s->data, metaesc.p, metaesc.len);
    buf_add(&s->data, "\n", 1);
  }
  char sql[512];
  snprintf(sql, sizeof sql,
           "COPY \"%s\".cairnloop_messages (id, conversation_id, content, role, metadata)"
           " FROM STDIN",
           s->schema);
  bool ok = copy_in(s, sql, &s->data);
  if (ok) {
    s->data.len = 0;
    for (size_t i = 0; i < call->n; i++) {
      buf_i64(&s->data, jid[i]);
      buf_add(&s->data, "\t", 1);
      buf_i64(&s->data, mid[i]);
      buf_add(&s->data, "\t", 1);
      buf_i64(&s->data, call->ids[i]);
      buf_add(&s->data, "\t", 1);
      buf_copy_str(&s->data, call->template_id, strlen(call->template_id));
      buf_add(&s->data, "\t", 1);
      buf_puts(&s->data, call->envelope_id);
      buf_add(&s->data, "\t", 1);
      row.len = 0;
      args_json(&row, mid[i], call->ids[i], call->template_id, call->envelope_id);
      buf_copy_str(&s->data, row.p, row.len);
      buf_add(&s->data, "\n", 1);
    }
    snprintf(sql, sizeof sql,
             "COPY \"%s\".cairnloop_delivery_jobs (id, message_id, conversation_id,"
             " template_id, bulk_envelope_id, args) FROM STDIN",
             s->schema);
    ok = copy_in(s, sql, &s->data);
  }
  ok = ok && exec_ok(s, "COMMIT");
  if (!ok) exec_ok(s, "ROLLBACK");
  for (size_t i = 0; ok && i < call->n; i++) {
    out->message_ids[i] = mid[i];
    out->job_ids[i] = jid[i];
  }
  free(meta.p);
  free(row.p);
  free(body.p);
  free(metaesc.p);
  return ok ? 0 : -1;
}

/* Prepares the multi-row message and job INSERTs for `rows` rows, once. */
static bool pipeline_prepare(shape *s, int rows) {
  for (int i = 0; i < s->nprepared_rows; i++)
    if (s->prepared_rows[i] == rows) return true;
  if (s->nprepared_rows == (int)(sizeof s->prepared_rows / sizeof s->prepared_rows[0]))
    return false;
  /* Messages: $1 body, $2 metadata, then (id, conversation_id) per row. */
  buf t = {0};
  buf_puts(&t, "INSERT INTO @S.cairnloop_messages (id, conversation_id, content, role, metadata)"
               " VALUES ");
  for (int i = 0; i < rows; i++) {
    char v[96];
    snprintf(v, sizeof v, "%s($%d::bigint,$%d::bigint,$1,'system_outbound',$2::jsonb)",
             i ? "," : "", 3 + 2 * i, 4 + 2 * i);
    buf_puts(&t, v);
  }
  char name[32];
  snprintf(name, sizeof name, "pm%d", rows);
  bool ok = prepare(s, name, t.p, 0, NULL);
  /* Jobs: $1 template_id, $2 envelope, then (id, message_id, conversation_id, args). */
  t.len = 0;
  buf_puts(&t, "INSERT INTO @S.cairnloop_delivery_jobs (id, message_id, conversation_id,"
               " template_id, bulk_envelope_id, args) VALUES ");
  for (int i = 0; i < rows; i++) {
    char v[128];
    snprintf(v, sizeof v, "%s($%d::bigint,$%d::bigint,$%d::bigint,$1,$2::uuid,$%d::jsonb)",
             i ? "," : "", 3 + 4 * i, 4 + 4 * i, 5 + 4 * i, 6 + 4 * i);
    buf_puts(&t, v);
  }
  snprintf(name, sizeof name, "pj%d", rows);
  ok = ok && prepare(s, name, t.p, 0, NULL);
  free(t.p);
  if (ok) s->prepared_rows[s->nprepared_rows++] = rows;
  return ok;
}

static int bulk_pipeline(shape *s, bulk_call *call, ids_out *out) {
  size_t n = call->n;
  if (n == 0) return -1; /* the bench never sends an empty batch */
  for (size_t at = 0; at < n; at += PIPE_CHUNK) {
    size_t rows = n - at < PIPE_CHUNK ? n - at : PIPE_CHUNK;
    if (!pipeline_prepare(s, (int)rows)) return -1;
  }
  if (!begin_reserve(s, call)) return -1;
  /* begin_reserve left the ids in tmp; copy them out before reusing buffers. */
  for (size_t i = 0; i < n; i++) {
    out->message_ids[i] = ((const int64_t *)(const void *)s->tmp.p)[i];
    out->job_ids[i] = ((const int64_t *)(const void *)s->tmp.p)[n + i];
  }
  buf meta = {0};
  meta_json(&meta, call);
  /* Job args are per row: build them all into one buffer, then point at them. */
  s->data.len = 0;
  size_t *off = malloc(n * sizeof *off);
  if (!off) abort();
  for (size_t i = 0; i < n; i++) {
    off[i] = s->data.len;
    args_json(&s->data, out->message_ids[i], call->ids[i], call->template_id, call->envelope_id);
    buf_add(&s->data, "", 1); /* keep the NUL between values */
  }
  if (PQenterPipelineMode(s->c) != 1) abort();
  int sent = 0;
  bool ok = true;
  const char **v = malloc((2 + 4 * PIPE_CHUNK) * sizeof *v);
  if (!v) abort();
  /* All message chunks first (the jobs' foreign key needs them). */
  for (int pass = 0; pass < 2 && ok; pass++) {
    for (size_t at = 0; at < n && ok; at += PIPE_CHUNK) {
      size_t rows = n - at < PIPE_CHUNK ? n - at : PIPE_CHUNK;
      char name[32];
      size_t np = 0;
      if (pass == 0) {
        v[np++] = call->body;
        v[np++] = meta.p;
        for (size_t i = at; i < at + rows; i++) {
          char *a = param_slot(s, np), *b = param_slot(s, np + 1);
          snprintf(a, 24, "%" PRId64, out->message_ids[i]);
          snprintf(b, 24, "%" PRId64, call->ids[i]);
          v[np++] = a;
          v[np++] = b;
        }
        snprintf(name, sizeof name, "pm%zu", rows);
      } else {
        v[np++] = call->template_id;
        v[np++] = call->envelope_id;
        for (size_t i = at; i < at + rows; i++) {
          char *a = param_slot(s, np), *b = param_slot(s, np + 1), *c = param_slot(s, np + 2);
          snprintf(a, 24, "%" PRId64, out->job_ids[i]);
          snprintf(b, 24, "%" PRId64, out->message_ids[i]);
          snprintf(c, 24, "%" PRId64, call->ids[i]);
          v[np++] = a;
          v[np++] = b;
          v[np++] = c;
          v[np++] = s->data.p + off[i];
        }
        snprintf(name, sizeof name, "pj%zu", rows);
      }
      ok = PQsendQueryPrepared(s->c, name, (int)np, v, NULL, NULL, 0) == 1;
      sent++;
    }
  }
  ok = ok && PQsendQueryParams(s->c, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) == 1;
  sent++;
  ok = ok && PQpipelineSync(s->c) == 1;
  ok = ok && pipeline_collect(s, sent, NULL, -1);
  PQexitPipelineMode(s->c);
  if (!ok) exec_ok(s, "ROLLBACK");
  free(v);
  free(off);
  free(meta.p);
  return ok ? 0 : -1;
}

static int64_t exec_id(shape *s, const char *stmt, int n, const char *const *v) {
  s->round_trips++;
  PGresult *r = PQexecPrepared(s->c, stmt, n, v, NULL, NULL, 0);
  int64_t id = -1;
  if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
    id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
  else bench_pg_error(s->c, r, stmt);
  PQclear(r);
  return id;
}

static int bulk_per_row(shape *s, bulk_call *call, ids_out *out) {
  char cap[16], cid[24], mid[24];
  snprintf(cap, sizeof cap, "%d", call->cap);
  ids_text(&s->data, call->ids, call->n);
  if (!exec_ok(s, "BEGIN")) return -1;
  const char *env[] = {call->envelope_id, call->template_id, call->body, s->data.p, cap};
  s->round_trips++;
  PGresult *r = PQexecPrepared(s->c, "env", 5, env, NULL, NULL, 0);
  bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  if (!ok) bench_pg_error(s->c, r, "env");
  PQclear(r);
  buf meta = {0}, args = {0};
  meta_json(&meta, call);
  for (size_t i = 0; ok && i < call->n; i++) {
    snprintf(cid, sizeof cid, "%" PRId64, call->ids[i]);
    const char *mv[] = {cid, call->body, meta.p};
    int64_t m = exec_id(s, "msg", 3, mv);
    if (m < 0) {
      ok = false;
      break;
    }
    snprintf(mid, sizeof mid, "%" PRId64, m);
    args.len = 0;
    args_json(&args, m, call->ids[i], call->template_id, call->envelope_id);
    const char *jv[] = {mid, cid, call->template_id, call->envelope_id, args.p};
    int64_t j = exec_id(s, "job", 5, jv);
    if (j < 0) {
      ok = false;
      break;
    }
    out->message_ids[i] = m;
    out->job_ids[i] = j;
  }
  ok = ok && exec_ok(s, "COMMIT");
  if (!ok) exec_ok(s, "ROLLBACK");
  free(meta.p);
  free(args.p);
  return ok ? 0 : -1;
}

int shape_bulk(void *ctx, bulk_call *call, ids_out *out) {
  shape *s = ctx;
  bench_uuid(call->envelope_id);
  switch (s->k) {
  case K_CTE:
    return bulk_cte(s, call, out);
  case K_CTE_BINARY:
    return bulk_cte_binary(s, call, out);
  case K_COPY:
    return bulk_copy(s, call, out);
  case K_PIPELINE:
    return bulk_pipeline(s, call, out);
  case K_PER_ROW:
    return bulk_per_row(s, call, out);
  default:
    return -1;
  }
}

/* ------------------------------------------------------------------ */
/* Single-trigger shapes                                                */
/* ------------------------------------------------------------------ */

int shape_trigger(void *ctx, const trigger_call *call, int64_t *message_id, int64_t *job_id) {
  shape *s = ctx;
  char cid[24];
  snprintf(cid, sizeof cid, "%" PRId64, call->conversation_id);
  const char *v[] = {cid, call->template_id, call->content, s->msg_seq};
  if (s->k == K_T_CTE) {
    s->round_trips++;
    PGresult *r = PQexecPrepared(s->c, "t", 3, v, NULL, NULL, 0);
    int ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
    if (ok) {
      *message_id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
      *job_id = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
    } else {
      bench_pg_error(s->c, r, "cte-1");
    }
    PQclear(r);
    return ok ? 0 : -1;
  }
  if (s->k == K_T_PER_ROW) {
    if (!exec_ok(s, "BEGIN")) return -1;
    *message_id = exec_id(s, "tm", 3, v);
    *job_id = *message_id < 0 ? -1 : exec_id(s, "tj", 4, v);
    bool ok = *job_id >= 0 && exec_ok(s, "COMMIT");
    if (!ok) exec_ok(s, "ROLLBACK");
    return ok ? 0 : -1;
  }
  if (s->k != K_T_PIPELINE || PQenterPipelineMode(s->c) != 1) return -1;
  bool ok = PQsendQueryParams(s->c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) &&
            PQsendQueryPrepared(s->c, "tm", 3, v, NULL, NULL, 0) &&
            PQsendQueryPrepared(s->c, "tj", 4, v, NULL, NULL, 0) &&
            PQsendQueryParams(s->c, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) && PQpipelineSync(s->c);
  /* Results: BEGIN, message id, job id, COMMIT. */
  s->round_trips++;
  int64_t got[2] = {-1, -1};
  for (int i = 0; i < 4; i++) {
    PGresult *r = PQgetResult(s->c);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
      if (ok) bench_pg_error(s->c, r, "pipeline-1");
      ok = false;
    } else if ((i == 1 || i == 2) && PQntuples(r) == 1) {
      got[i - 1] = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    }
    PQclear(r);
    PGresult *end = PQgetResult(s->c);
    if (end) PQclear(end);
  }
  PGresult *sync = PQgetResult(s->c);
  if (PQresultStatus(sync) != PGRES_PIPELINE_SYNC) ok = false;
  PQclear(sync);
  PQexitPipelineMode(s->c);
  if (!ok) exec_ok(s, "ROLLBACK");
  *message_id = got[0];
  *job_id = got[1];
  return ok && got[0] > 0 && got[1] > 0 ? 0 : -1;
}
