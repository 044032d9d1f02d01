/*
 * outbound.h - trigger and bulk_trigger internals shared with engine.c
 * and envelope.c.
 */
#ifndef CL_OUTBOUND_H
#define CL_OUTBOUND_H

#include "arena.h"
#include "engine.h"

/* Text form of every timestamp the engine returns: ISO 8601 in UTC. */
#define CL__ISO_UTC "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'"

/* Registers the hot-path statements for the engine's schema (at open). */
cl_status cl__outbound_register(cl_engine *eng, cl_error *err);

/* Parses a PostgreSQL bigint[] text ("{1,2,3}") into an arena array. */
int64_t *cl__parse_int_array(cl__arena *a, const char *text, size_t *count);

/* Fills `env` from columns col.. of an envelope row (envelope.c's column order). */
bool cl__envelope_from_row(cl__arena *a, const cl_rows *rows, int row, int col, cl_envelope *env);
#define CL__ENVELOPE_COLUMNS                                                        \
  "id, template_id, rendered_body, recipient_conversation_ids::text, count, "       \
  "effective_cap, requested_by, to_char(requested_at, " CL__ISO_UTC "), status, "   \
  "refused_reason"

#endif
