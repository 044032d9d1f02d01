/*
 * queue.h - the delivery queue beyond cl_work: a batch that can be stopped
 * between jobs, and the wait of an idle worker.  Used by the `cairnloop
 * work` loop (cli_work.c); a long-running host can build the same loop.
 * Takes only the opaque engine, so including it pulls in no internals.
 */
#ifndef CL_QUEUE_H
#define CL_QUEUE_H

#include "cairnloop.h"

#include <signal.h>

/* Largest `limit` of one batch: its ids travel as one array parameter and
 * its rows as one result, both held in memory at once. */
#define CL__WORK_MAX_LIMIT 10000

/* Backoff after failed attempt n: min(2^n, CL__BACKOFF_MAX_SECONDS) seconds,
 * plus a uniform jitter of up to 10% of that (see queue.c). */
#define CL__BACKOFF_MAX_SECONDS 3600

/* What one batch did beyond the cl_work_stats counts. */
typedef struct cl__batch {
  int claimed;  /* jobs claimed (due ones and rescued expired leases) */
  int rescued;  /* of them, jobs whose previous lease had expired */
  int released; /* claimed but handed back unstarted (stop, or half the lease spent) */
  int lost;     /* delivered, but the lease had passed to another worker */
} cl__batch;

/*
 * cl_work with a stop flag, read before each notifier call: once it is set,
 * the jobs of the batch not yet started are handed back (lease cleared,
 * attempt restored) in the same completing statement, so another worker
 * takes them at once.  The same happens, flag or not, once half the lease
 * is spent, so a slow notifier never holds jobs past their lease.  `stop`
 * and `batch` may be NULL.  Returns CL_OK, CL_INVALID_ARGUMENT or CL_DB_ERROR.
 */
cl_status cl__work_batch(cl_engine *eng, int limit, const volatile sig_atomic_t *stop,
                         cl_work_stats *stats, cl__batch *batch, cl_error *err);

/* Why cl__work_wait returned. */
typedef enum cl__wake {
  CL__WAKE_DUE,      /* jobs are due now (or a lease expired) */
  CL__WAKE_NOTIFIED, /* jobs were inserted (NOTIFY) */
  CL__WAKE_TIMEOUT,  /* max_ms passed, or the next scheduled job came due */
  CL__WAKE_FD,       /* wake_fd became readable (the caller drains it) */
  CL__WAKE_SIGNAL    /* a signal interrupted the wait */
} cl__wake;

/*
 * The idle worker's sleep: subscribes the session to the schema's job
 * channel (again after any reconnect), asks when the next scheduled job or
 * lease comes due, and sleeps until then (at most max_ms, the fallback
 * poll), until jobs are inserted, or until `wake_fd` (-1: none) is readable.
 * Subscribing before asking closes the gap where an insert could be missed.
 * Returns CL_OK with *why set, or CL_DB_ERROR when the server is gone (call
 * again later: it reconnects).
 */
cl_status cl__work_wait(cl_engine *eng, int max_ms, int wake_fd, cl__wake *why, cl_error *err);

#endif
