/*
 * envelope.h - the envelope row mapping (envelope.c), shared by the reads
 * and by the replay path of bulk_trigger (outbound.c).
 */
#ifndef CL_ENVELOPE_H
#define CL_ENVELOPE_H

#include "arena.h"
#include "engine.h"

/* Parses a PostgreSQL bigint[] text ("{1,2,3}") into an arena array. */
int64_t *cl__parse_int_array(cl__arena *a, const char *text, size_t *count);

/* Fills `env` from row `row` of a result whose first columns are the
 * envelope's (stmt.h: CL__ENVELOPE_COLS); false when memory runs out. */
bool cl__envelope_from_row(cl__arena *a, const cl_rows *rows, int row, cl_envelope *env);

#endif
