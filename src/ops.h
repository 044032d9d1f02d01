/*
 * ops.h - operating the queue (ops.c): the engine's retention settings,
 * the workers' retention pass and their notice of a paused queue.  Used
 * by engine.c (the settings, from cl_config) and queue.c (the pass, in
 * cl_work_batch; the notice, in cl_work_wait).  The operator verbs
 * themselves are public (cairnloop.h).
 */
#ifndef CL_OPS_H
#define CL_OPS_H

#include "cairnloop.h"

#include <stdbool.h>
#include <stdint.h>

/* Defaults of cl_config's retention fields (documented there and in README). */
#define CL_DEFAULT_RETENTION_COMPLETED_S (24LL * 3600)
#define CL_DEFAULT_RETENTION_FAILED_S (7LL * 24 * 3600)
#define CL_DEFAULT_RETENTION_INTERVAL_MS 30000

typedef struct cl__ops {
  int64_t retention_completed_s; /* < 0: kept forever */
  int64_t retention_failed_s;    /* discarded and cancelled; < 0: kept forever */
  int retention_interval_ms;     /* < 0: workers never prune */
  int64_t next_retention_ms;     /* monotonic ms: when the next pass is due */
  bool paused_seen;              /* the last wait found delivery paused */
} cl__ops;

/* The settings of `cfg` with their defaults; the first pass one interval on. */
void cl__ops_init(cl__ops *ops, const cl_config *cfg);

/* The worker's retention pass, when one is due: one statement deleting at
 * most a small batch of expired finished jobs.  It never fails the batch
 * it precedes: a failure is logged and the pass waits an interval. */
int64_t cl__ops_retention_pass(cl_engine *eng);

/* What a worker's wait learnt about the pause flag: logs once per change
 * that delivery is paused, or resumed. */
void cl__ops_note_paused(cl_engine *eng, bool paused);

#endif
