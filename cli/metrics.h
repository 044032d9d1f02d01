/*
 * metrics.h - `cairnloop work --metrics HOST:PORT`: the worker's own
 * Prometheus endpoint (metrics.c).
 *
 * The worker thread records (a telemetry handler on the delivery events,
 * the batch results, a periodic cl_stats) and publishes a snapshot under a
 * mutex; libmicrohttpd's own thread serves GET /metrics from that snapshot
 * and never touches the engine.  Every function but cli_metrics_start
 * accepts a NULL handle and does nothing, so the loop calls them whether
 * or not --metrics was given.
 */
#ifndef CL_CLI_METRICS_H
#define CL_CLI_METRICS_H

#include "cli.h"

typedef struct cli_metrics cli_metrics;

/* Parses `hostport` (127.0.0.1:9100, [::1]:9100, localhost:9100; port 0
 * picks a free one), listens and starts serving, and logs the URL.
 * Returns 0 with *out set, or a reported exit status: 2 for a value that
 * is not HOST:PORT, names no local address, or cannot be listened on
 * (a port in use). */
int cli_metrics_start(const char *hostport, cli_metrics **out);

/* Attaches the delivery counters to `eng` (cl_attach_many). Returns 0 or a
 * reported exit status. */
int cli_metrics_attach(cli_metrics *m, cl_engine *eng);

/* Around each cl_work_batch: the batch time, the in-progress flag, and on
 * success its counts (ok false: the batch failed, nothing to count). */
void cli_metrics_batch_begin(cli_metrics *m);
void cli_metrics_batch_end(cli_metrics *m, bool ok, const cl_work_stats *s, const cl_batch_info *b);

/* Refreshes the queue gauges with cl_stats, at most once every few
 * seconds whatever the call rate (`force`: now). */
void cli_metrics_refresh(cli_metrics *m, cl_engine *eng, bool force);

/* Stops serving and frees; call after the engine it was attached to closed
 * (or detach first). */
void cli_metrics_stop(cli_metrics *m);

#endif
