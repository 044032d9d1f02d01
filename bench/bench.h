/*
 * bench.h - shared pieces of the `make bench` harness.  A contender writes
 * the rows of a bulk (envelope, N messages, N jobs, one transaction) or of
 * a single trigger (message + job) and brings the new message and job ids
 * back, as the engine's result does: hand-written libpq shapes (shapes.c),
 * the engine through its C API (bench.c), through the Lua module, the
 * command line or with policy files loaded (hosts.c).  worker.c times the
 * delivery lane, probes.c the rest.
 */
#ifndef CL_BENCH_H
#define CL_BENCH_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BENCH_BODY "Hello from support: we have an update on your conversation."
#define BENCH_SCHEMA "cairnloop"

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
int shape_bulk(void *ctx, bulk_call *call, ids_out *out);
int shape_trigger(void *ctx, const trigger_call *call, int64_t *message_id, int64_t *job_id);

/* A fresh random UUID in lowercase text form. */
void bench_uuid(char out[37]);

/* Prints "bench: <what>: <server message>" to stderr. */
void bench_pg_error(PGconn *c, const PGresult *r, const char *what);

/* bench.c: clocks, formatting, report sections, the engine as a contender,
 * database helpers shared with worker.c. */
double bench_now_ms(void);
void bench_fmt_int(char *out, size_t n, double v);
void bench_fmt_ms(char *out, size_t n, double ms);
double bench_median(double *v, size_t n); /* sorts v */
void bench_para(const char *text);
void *bench_table(const char *title, const char *cols, const char *align);
void bench_table_row(void *table, const char *const *cells);
void bench_table_note(void *table, const char *text);
/* One row of the final "targets" table. */
void bench_target(const char *what, const char *measured, bool pass);
int bench_engine_bulk(void *ctx, bulk_call *call, ids_out *out);
int bench_engine_trigger(void *ctx, const trigger_call *call, int64_t *mid, int64_t *jid);
PGconn *bench_connect(const char *conninfo);
void bench_exec(PGconn *c, const char *sql); /* exits on failure */
/* "BASE?dbname=DB" (or "&dbname=" when BASE has a query); malloc'd. */
char *bench_conninfo(const char *base, const char *db);
/* Drops and re-creates database `db` on the server of `base`. */
void bench_create_database(const char *base, const char *db);
/* Seeds a migrated database: conversations with history, past envelopes;
 * VACUUM ANALYZE.  Returns the conversation ids (malloc'd, *n of them). */
int64_t *bench_seed(PGconn *c, size_t *n);
uint64_t bench_rng(void);

/* The connection a shape runs on (for auto_explain). */
PGconn *shape_conn(shape *s);

/* hosts.c: the engine as a Lua host, a command-line user or a policy
 * author reaches it.  Each returns NULL on failure (the reason printed). */
typedef struct bench_paths {
  const char *cli;       /* the `cairnloop` command */
  const char *lua_cpath; /* where require "cairnloop" finds the Lua 5.4 module */
  const char *lua_dir;   /* lua/cairnloop: the ready-made policies */
  const char *bench_dir; /* bench/: the no-op policies */
} bench_paths;

typedef struct lua_host lua_host;
lua_host *lua_host_open(const bench_paths *p, const char *conninfo, const char *schema, int cap);
void lua_host_close(lua_host *h);
void lua_host_prepare(void *hp, const bulk_call *call);        /* the ids table, untimed */
int lua_host_bulk(void *hp, bulk_call *call, ids_out *out);    /* engine:bulk_trigger */
void lua_host_finish(void *hp, bulk_call *call, ids_out *out); /* reads the result, untimed */
int lua_host_trigger(void *hp, const trigger_call *call, int64_t *mid, int64_t *jid);

typedef struct cli_host cli_host;
cli_host *cli_host_open(const bench_paths *p, const char *conninfo, const char *schema, int cap);
void cli_host_close(cli_host *h);
void cli_host_prepare(void *h, const bulk_call *call);        /* the --ids-file, untimed */
int cli_host_bulk(void *h, bulk_call *call, ids_out *out);    /* one `cairnloop bulk` process */
void cli_host_finish(void *h, bulk_call *call, ids_out *out); /* parses its output, untimed */
double cli_host_child_cpu_ms(void *h);                        /* of the last call */
long cli_host_peak_rss_kib(const cli_host *h);                /* largest over the calls */
/* Median wall time of `cairnloop --version` over `reps` runs: exec and
 * dynamic linking, no database. */
double cli_startup_ms(const bench_paths *p, int reps);
/* Median wall time of a new connection: PQconnectdb, SELECT 1, PQfinish. */
double connect_ms(const char *conninfo, int reps);

/* An engine with policy files loaded through cl_load_policy: "ready" is
 * lua/cairnloop/table_auditor.lua + metrics.lua, "auditor" the table
 * auditor alone, "noop" bench/noop_policy.lua; "c-noop" has a C auditor
 * that accepts at once and no Lua at all. */
struct cl_engine;
struct cl_engine *policy_engine_open(const bench_paths *p, const char *conninfo, const char *schema,
                                     int cap, const char *which);
/* Audit rows written for an envelope id or a message's conversation/template. */
bool bench_audit_row_exists(PGconn *c, const char *bulk_envelope_id, int64_t conversation_id,
                            const char *template_id);

/* worker.c: jobs/s of `cairnloop work` processes draining a seeded queue.
 * False when a run failed (reported, and the bench then exits 1). */
bool bench_worker_report(const char *base, const bench_paths *p, bool quick);

/* probes.c: the report's header, peak RSS, the telemetry emit path, plans. */
void bench_machine(char *out, size_t n);
/* "1.23 0.98 0.50" from /proc/loadavg: other work on the machine skews timings. */
void bench_loadavg(char *out, size_t n);
void bench_server(PGconn *c, char *out, size_t n);
void bench_rss_report(const bench_paths *p, const char *conninfo, const char *schema,
                      const int64_t *pool, size_t npool, size_t n);
void bench_rss_table(long cli_peak_kib);
void bench_telemetry_report(struct cl_engine *eng, struct cl_engine *lua_eng);
void bench_explain(struct cl_engine *eng, shape *ceiling, const int64_t *pool, size_t npool,
                   size_t n, const char *path);

#endif
