/*
 * envelope.c - reads: envelopes, read-only queries, row mapping.
 *
 * Provides cl_envelope_get, cl_envelopes_list (statements cl_envelope_get
 * and cl_envelopes), cl_query (read-only SQL for hosts selecting cohorts)
 * and the mapping from an envelope row (stmt.h: CL__ENVELOPE_COLS) to
 * cl_envelope, shared with the replay path of bulk_trigger.  Uses db.c and
 * arena.c.
 */
#include "envelope.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *status_of(cl__arena *a, const char *s) {
  if (!s) return NULL;
  if (strcmp(s, "submitted") == 0) return "submitted";
  if (strcmp(s, "refused_cap_exceeded") == 0) return "refused_cap_exceeded";
  return cl__arena_strdup(a, s);
}

int64_t *cl__parse_int_array(cl__arena *a, const char *text, size_t *count) {
  *count = 0;
  if (!text || text[0] != '{') return NULL;
  size_t n = text[1] == '}' ? 0 : 1;
  for (const char *p = text; *p; p++) n += *p == ',';
  int64_t *out = cl__arena_alloc(a, (n ? n : 1) * sizeof *out);
  if (!out) return NULL;
  const char *p = text + 1;
  for (size_t i = 0; i < n; i++) {
    char *end;
    out[i] = strtoll(p, &end, 10);
    p = end + 1;
  }
  *count = n;
  return out;
}

bool cl__envelope_from_row(cl__arena *a, const cl_rows *rows, int row, cl_envelope *e) {
  const char *id = cl_rows_value(rows, row, CL__ENVELOPE_ID);
  memset(e, 0, sizeof *e);
  snprintf(e->id, sizeof e->id, "%s", id ? id : "");
  e->template_id = cl__arena_strdup(a, cl_rows_value(rows, row, CL__ENVELOPE_TEMPLATE_ID));
  e->rendered_body = cl__arena_strdup(a, cl_rows_value(rows, row, CL__ENVELOPE_RENDERED_BODY));
  /* The count is the cohort's length, so the stored count column is not read. */
  e->recipient_conversation_ids = cl__parse_int_array(
      a, cl_rows_value(rows, row, CL__ENVELOPE_RECIPIENTS), &e->count);
  const char *cap = cl_rows_value(rows, row, CL__ENVELOPE_EFFECTIVE_CAP);
  e->effective_cap = cap ? (int)strtol(cap, NULL, 10) : 0;
  e->requested_by = cl__arena_strdup(a, cl_rows_value(rows, row, CL__ENVELOPE_REQUESTED_BY));
  e->requested_at = cl__arena_strdup(a, cl_rows_value(rows, row, CL__ENVELOPE_REQUESTED_AT));
  e->status = status_of(a, cl_rows_value(rows, row, CL__ENVELOPE_STATUS));
  e->refused_reason = cl__arena_strdup(a, cl_rows_value(rows, row, CL__ENVELOPE_REFUSED_REASON));
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
    if (!cl__envelope_from_row(a, rows, (int)i, &out->items[i])) goto oom;
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
  CL__ENTER(eng, err);
  if (!out) return cl__fail(err, CL_INVALID_ARGUMENT, "envelope_get: no place for the result");
  if (!cl__uuid_valid(envelope_id))
    return cl__fail(err, CL_INVALID_ARGUMENT, "envelope id '%.40s' is not a UUID",
                    envelope_id ? envelope_id : "(null)");
  cl__uuid_lower(envelope_id, id);
  const char *params[] = {id};
  cl_rows *rows = NULL;
  cl_status st = cl__db_exec(&eng->db, CL__STMT_ENVELOPE_GET, false, CL__NPARAMS(params), params,
                             &rows, err);
  if (st != CL_OK) return st;
  return fill_list(rows, out, err);
}

cl_status cl_envelopes_list(cl_engine *eng, const cl_envelope_query *q, cl_envelope_list *out,
                            cl_error *err) {
  if (out) memset(out, 0, sizeof *out);
  CL__ENTER(eng, err);
  if (!out) return cl__fail(err, CL_INVALID_ARGUMENT, "envelopes: no place for the result");
  cl_envelope_query none = {0};
  if (!q) q = &none;
  if (q->limit < 0 || q->limit > CL_ENVELOPES_MAX_LIMIT)
    return cl__fail(err, CL_INVALID_ARGUMENT, "limit must be from 1 to %d, got %d",
                    CL_ENVELOPES_MAX_LIMIT, q->limit);
  if (q->status && strcmp(q->status, "submitted") != 0 &&
      strcmp(q->status, "refused_cap_exceeded") != 0)
    return cl__fail(err, CL_INVALID_ARGUMENT,
                    "status must be submitted or refused_cap_exceeded, got '%.40s'", q->status);
  if (q->template_id && (strlen(q->template_id) > CL_MAX_TEMPLATE_ID_BYTES ||
                         !cl__utf8_valid(q->template_id, strlen(q->template_id))))
    return cl__fail(err, CL_INVALID_ARGUMENT, "template_id is not a valid template id");
  char limit[16];
  snprintf(limit, sizeof limit, "%d", q->limit ? q->limit : CL_ENVELOPES_DEFAULT_LIMIT);
  const char *params[] = {q->template_id, q->status, limit};
  cl_rows *rows = NULL;
  cl_status st = cl__db_exec(&eng->db, CL__STMT_ENVELOPES, false, CL__NPARAMS(params), params,
                             &rows, err);
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
  CL__ENTER(eng, err);
  if (!sql || !rows || nparams < 0 || (nparams > 0 && !params))
    return cl__fail(err, CL_INVALID_ARGUMENT, "query: sql and rows are required");
  cl_status st = cl__db_query_readonly(&eng->db, sql, nparams, params, rows, err);
  if (st == CL_OK) cl__ok(err);
  return st;
}
