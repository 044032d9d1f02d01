/*
 * async.h - the asynchronous engine (cl_async_* in cairnloop.h).
 *
 * async.c runs one cl_engine on a thread of its own and hands outcomes back
 * through an eventfd and cl_async_poll().  It is a host of the blocking
 * engine like any other: it calls only the public API (cl_open, cl_trigger,
 * ...), never an engine field, and takes from engine.h nothing but the
 * error channel (cl__fail, cl__ok).  Nothing of it is shared with other units.
 */
#ifndef CL_ASYNC_H
#define CL_ASYNC_H

#include "engine.h"

#endif
