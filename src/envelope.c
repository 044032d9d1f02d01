/*
 * envelope.c - reads: envelopes, read-only queries, row mapping.
 *
 * Provides cl_envelope_get, cl_envelopes_list, cl_query (read-only SQL for
 * hosts selecting cohorts) and the mapping from an envelope row
 * (CL__ENVELOPE_COLUMNS order) to cl_envelope, shared with the replay path
 * of bulk_trigger.  Uses db.c and arena.c.
 */
#include "outbound.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char SQL_ENVELOPE_GET[] =
    "SELECT " CL__ENVELOPE_COLUMNS " FROM @S.cairnloop_outbound_bulk_envelopes WHERE id = $1::uuid";

/* Newest first; id breaks ties so the order is stable. */
static const char SQL_ENVELOPES[] =
    "SELECT " CL__ENVELOPE_COLUMNS " FROM @S.cairnloop_outbound_bulk_envelopes"
    " WHERE ($1::text IS NULL OR template_id = $1::text)"
    "   AND ($2::text IS NULL OR status = $2::text)"
    " ORDER BY requested_at DESC, id DESC LIMIT $3::int";

cl_status cl__envelope_register(cl_engine *eng, cl_error *err);

cl_status cl__envelope_register(cl_engine *eng, cl_error *err) {
  cl_status st = cl__db_register(&eng->db, CL__STMT_ENVELOPE_GET, SQL_ENVELOPE_GET, eng->schema, err);
  if (st == CL_OK) st = cl__db_register(&eng->db, CL__STMT_ENVELOPES, SQL_ENVELOPES, eng->schema, err);
  return st;
}

static const char *status_of(cl__arena *a, const char *s) {
  if (!s) return NULL;
  if (strcmp(s, "submitted") == 0) return "submitted";
  if (strcmp(s, "refused_cap_exceeded") == 0) return "refused_cap_exceeded";
  return cl__arena_strdup(a, s);
}

bool cl__envelope_from_row(cl__arena *a, const cl_rows *rows, int row, int col, cl_envelope *e) {
  const char *id = cl_rows_value(rows, row, col);
  memset(e, 0, sizeof *e);
  snprintf(e->id, sizeof e->id, "%s", id ? id : "");
  e->template_id = cl__arena_strdup(a, cl_rows_value(rows, row, col + 1));
  e->rendered_body = cl__arena_strdup(a, cl_rows_value(rows, row, col + 2));
  e->recipient_conversation_ids = cl__parse_int_array(a, cl_rows_value(rows, row, col + 3), &e->count);
  const char *cap = cl_rows_value(rows, row, col + 5);
  e->effective_cap = cap ? atoi(cap) : 0;
  e->requested_by = cl__arena_strdup(a, cl_rows_value(rows, row, col + 6));
  e->requested_at = cl__arena_strdup(a, cl_rows_value(rows, row, col + 7));
  e->status = status_of(a, cl_rows_value(rows, row, col + 8));
  e->refused_reason = cl__arena_strdup(a, cl_rows_value(rows, row, col + 9));
  return e->template_id && e->rendered_body && e->recipient_conversation_ids && e->requested_at &&
         e->status;
}

static cl_status fill_list(cl_rows *rows, cl_envelope_list *out, cl_error *err) {
  cl__arena *a = cl__arena_new();
  size_t n = (size_t)cl_rows_count(rows);
  out->priv_ = a;
  out->items = a ? cl__arena_alloc(a, (n ? n : 1) * sizeof *out->items) : NULL;
  if (!out->items) goto oom;
  for (size_t i = 0; i < n; i++)
    if (!cl__envelope_from_row(a, rows, (int)i, 0, &out->items[i])) goto oom;
  out->count = n;
  cl_rows_free(rows);
  cl__ok(err);
  return CL_OK;
oom:
  cl_rows_free(rows);
  cl_envelope_list_clear(out);
  return cl__fail(err, CL_DB_ERROR, "out of memory");
}

cl_status cl_envelope_get(cl_engine *eng, const char *envelope_id, cl_envelope_list *out,
                          cl_error *err) {
  char id[CL_UUID_LEN + 1];
  if (out) memset(out, 0, sizeof *out);
  if (!eng || !out) return cl__fail(err, CL_INVALID_ARGUMENT, "engine and result are required");
  if (!cl__uuid_valid(envelope_id))
    return cl__fail(err, CL_INVALID_ARGUMENT, "envelope id '%.40s' is not a UUID",
                    envelope_id ? envelope_id : "(null)");
  cl__uuid_lower(envelope_id, id);
  const char *params[] = {id};
  cl_rows *rows = NULL;
  cl_status st = cl__db_exec(&eng->db, CL__STMT_ENVELOPE_GET, false, 1, params, &rows, err);
  if (st != CL_OK) return st;
  return fill_list(rows, out, err);
}

cl_status cl_envelopes_list(cl_engine *eng, const cl_envelope_query *q, cl_envelope_list *out,
                            cl_error *err) {
  if (out) memset(out, 0, sizeof *out);
  if (!eng || !out) return cl__fail(err, CL_INVALID_ARGUMENT, "engine and result are required");
  cl_envelope_query none = {0};
  if (!q) q = &none;
  if (q->limit < 0 || q->limit > 10000)
    return cl__fail(err, CL_INVALID_ARGUMENT, "limit must be from 1 to 10000, got %d", q->limit);
  if (q->status && strcmp(q->status, "submitted") != 0 &&
      strcmp(q->status, "refused_cap_exceeded") != 0)
    return cl__fail(err, CL_INVALID_ARGUMENT,
                    "status must be submitted or refused_cap_exceeded, got '%.40s'", q->status);
  if (q->template_id && (strlen(q->template_id) > CL_MAX_TEMPLATE_ID_BYTES ||
                         !cl__utf8_valid(q->template_id, strlen(q->template_id))))
    return cl__fail(err, CL_INVALID_ARGUMENT, "template_id is not a valid template id");
  char limit[16];
  snprintf(limit, sizeof limit, "%d", q->limit ? q->limit : 50);
  const char *params[] = {q->template_id, q->status, limit};
  cl_rows *rows = NULL;
  cl_status st = cl__db_exec(&eng->db, CL__STMT_ENVELOPES, false, 3, params, &rows, err);
  if (st != CL_OK) return st;
  return fill_list(rows, out, err);
}

void cl_envelope_list_clear(cl_envelope_list *list) {
  if (!list) return;
  cl__arena_free(list->priv_);
  memset(list, 0, sizeof *list);
}

cl_status cl_query(cl_engine *eng, const char *sql, int nparams, const char *const *params,
                   cl_rows **rows, cl_error *err) {
  if (rows) *rows = NULL;
  if (!eng || !sql || !rows || nparams < 0 || (nparams > 0 && !params))
    return cl__fail(err, CL_INVALID_ARGUMENT, "query: engine, sql and rows are required");
  if (eng->in_hook) return cl__fail(err, CL_INVALID_ARGUMENT, "query called from inside a hook");
  cl_status st = cl__db_query_readonly(&eng->db, sql, nparams, params, rows, err);
  if (st == CL_OK) cl__ok(err);
  return st;
}
