/*
 * bench.h - shared pieces of the `make bench` harness.  A contender writes
 * the rows of a bulk (envelope, N messages, N jobs, one transaction) or of
 * a single trigger (message + job) and brings the new message and job ids
 * back, as the engine's result does: hand-written libpq shapes (shapes.c)
 * or the engine through its C API (bench.c).
 */
#ifndef CL_BENCH_H
#define CL_BENCH_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#define BENCH_BODY "Hello from support: we have an update on your conversation."

/* One bulk call: the same cohort and body for every contender of a round,
 * a fresh template id and envelope id per call. */
typedef struct bulk_call {
  const int64_t *ids;
  size_t n;
  const char *template_id;
  const char *body;
  char envelope_id[37]; /* filled by the contender */
  int cap;              /* effective_cap recorded on the envelope */
} bulk_call;

/* One single trigger: no envelope, the engine's default content. */
typedef struct trigger_call {
  int64_t conversation_id;
  const char *template_id;
  const char *content;
} trigger_call;

/* Where a contender puts the ids it got back (capacity n of the call). */
typedef struct ids_out {
  int64_t *message_ids;
  int64_t *job_ids;
} ids_out;

typedef int (*bulk_fn)(void *ctx, bulk_call *call, ids_out *out);
typedef int (*trigger_fn)(void *ctx, const trigger_call *call, int64_t *message_id,
                          int64_t *job_id);

/* The hand-written libpq shapes.  Each owns one connection. */
typedef struct shape shape;

typedef struct shape_info {
  const char *name;
  const char *what; /* one line for the report */
} shape_info;

extern const shape_info bench_bulk_shapes[];
extern const size_t bench_bulk_shapes_count;
extern const shape_info bench_trigger_shapes[];
extern const size_t bench_trigger_shapes_count;

/* Opens shape `name` (bulk or trigger) on a new connection; NULL on failure
 * (the reason is printed).  `schema` qualifies every table. */
shape *shape_open(const char *conninfo, const char *schema, const char *name);
void shape_close(shape *s);
/* Times the shape's client has waited for the server so far. */
uint64_t shape_round_trips(const shape *s);
int shape_bulk(void *s, bulk_call *call, ids_out *out);
int shape_trigger(void *s, const trigger_call *call, int64_t *message_id, int64_t *job_id);

/* A fresh random UUID in lowercase text form. */
void bench_uuid(char out[37]);

/* Prints "bench: <what>: <server message>" to stderr. */
void bench_pg_error(PGconn *c, const PGresult *r, const char *what);

/* bench.c: clocks, formatting, report sections, the engine as a contender. */
double bench_now_ms(void);
void bench_fmt_int(char *out, size_t n, double v);
void bench_para(const char *text);
void *bench_table(const char *title, const char *cols, const char *align);
void bench_table_row(void *table, const char *const *cells);
void bench_table_note(void *table, const char *text);
int bench_engine_bulk(void *eng, bulk_call *call, ids_out *out);
int bench_engine_trigger(void *eng, const trigger_call *call, int64_t *message_id,
                         int64_t *job_id);

/* The connection a shape runs on (for auto_explain). */
PGconn *shape_conn(shape *s);

/* probes.c: the report's header, peak RSS, the telemetry emit path, plans. */
struct cl_engine;
void bench_machine(char *out, size_t n);
/* "1.23 0.98 0.50" from /proc/loadavg: other work on the machine skews timings. */
void bench_loadavg(char *out, size_t n);
void bench_server(PGconn *c, char *out, size_t n);
void bench_rss_report(const char *conninfo, const char *schema, const int64_t *pool,
                      size_t npool, size_t n);
void bench_rss_table(void);
void bench_telemetry_report(struct cl_engine *eng);
void bench_explain(struct cl_engine *eng, shape *ceiling, const int64_t *pool, size_t npool,
                   size_t n, const char *path);

#endif
