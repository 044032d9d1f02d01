/*
 * outbound.h - cl_trigger and cl_bulk_trigger (outbound.c).
 *
 * The operations are public (cairnloop.h) and share nothing internal with
 * other units: their statements are rows of the statement table (stmt.h),
 * registered by db.c, and the envelope row mapping is envelope.c's.
 */
#ifndef CL_OUTBOUND_H
#define CL_OUTBOUND_H

#include "engine.h"

#endif
