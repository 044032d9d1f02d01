/*
 * db.h - the engine's one PostgreSQL connection.
 *
 * Provides connect/reconnect, the statements of the statement table
 * (stmt.h: registered at connect, each prepared lazily per connection, the
 * prepare riding in the same round trip as the first execution),
 * transactions whose BEGIN is pipelined with the first statement, the
 * auditor's transaction (nothing else may be sent while it is open) and
 * the cl_rows result wrapper.  db.c is the only unit that includes libpq;
 * it counts round trips so tests can prove they are constant.
 */
#ifndef CL_DB_H
#define CL_DB_H

#include "cairnloop.h"
#include "stmt.h"

#include <stdbool.h>
#include <stdint.h>

/* The statements of the table, CL__STMT_<ID>. */
typedef enum cl__stmt {
#define CL__STMT_ENUM(id, name, file, nparams, cols) CL__STMT_##id,
  CL__STMT_MAP(CL__STMT_ENUM)
#undef CL__STMT_ENUM
      CL__STMT__COUNT
} cl__stmt;

typedef struct cl__db {
  struct pg_conn *conn;
  char *conninfo;
  char *sql[CL__STMT__COUNT]; /* schema-qualified texts, owned */
  uint32_t prepared;          /* bit i: statement i prepared on this connection
                               * (unnamed: its result columns checked) */
  /* No named prepared statements (cl_config.no_prepared_statements): every
   * statement goes with its text through the unnamed statement, so a
   * transaction pooler may run each transaction on another server session. */
  bool unnamed;
  bool in_tx;
  /* cl__db_tx_open's pipeline: results not read yet, in order (see db.c). */
  int pipe_pending[4];
  int pipe_npending;
  bool pipe_open;
  cl__stmt pipe_id;            /* the opening statement */
  bool pipe_check;             /* unnamed, first use: check its columns */
  struct pg_result *pipe_kept; /* its result */
  cl_status pipe_status;       /* ... or its failure */
  char pipe_error[CL_ERROR_MESSAGE_MAX];
  char pipe_sqlstate[6];
  /* Auditor statements (tx:exec) prepared on this connection, by SQL text:
   * an audit INSERT runs every operation, so it is parsed and planned once. */
  struct {
    char *sql;
    bool ready; /* its PREPARE succeeded */
  } txcache[16];
  int ntxcache;
  uint64_t round_trips; /* client waits for the server: one per Sync */
  char sqlstate[6];     /* of the last server error, "" if none */
  /* The connection failed (a send, a read, or the server said it is going
   * away): reset it before the next statement, whatever PQstatus says. */
  bool lost;
  /* A hook's statements (cl__db_hook_exec): the deadline of the hook call
   * in progress (CLOCK_MONOTONIC ns, 0: none), set by hooks.c around each
   * statement; timed_out once a wait ran past it and the statement was
   * cancelled. */
  int64_t deadline_ns;
  bool timed_out;
  /* list_events' read-only transaction is open (cl__db_hook_end closes it). */
  bool ro_open;
  /* The last cl__db_tx_close failed its session check. */
  bool session_changed;
  /* While set, a wait for the server's answer calls waiter(ud, socket,
   * ms) instead of sleeping: the delivery loop (queue.c) drives its
   * deliveries in flight meanwhile.  It returns within ms, sooner when the
   * socket is readable; it must not use this connection. */
  void (*waiter)(void *ud, int fd, int ms);
  void *waiter_ud;
} cl__db;

/* Connects and registers every statement of the table for `schema`
 * (texts only: each is prepared on its first execution). */
cl_status cl__db_connect(cl__db *db, const char *conninfo, const char *schema, cl_error *err);
void cl__db_close(cl__db *db);

/*
 * Runs a statement of the table.  `nparams` is the length of `params`
 * (CL__NPARAMS); a count other than the table's is refused before anything
 * is sent.  With `begin`, a transaction is opened in the same round trip
 * and stays open (cl__db_commit/cl__db_rollback); without, the statement
 * commits on its own.  On error nothing stays open.
 */
cl_status cl__db_exec(cl__db *db, cl__stmt id, bool begin, int nparams, const char *const *params,
                      cl_rows **rows, cl_error *err);
/*
 * Runs a hook's statement (tx:exec) with text parameters: inside the
 * auditor's transaction when it is open, otherwise in a READ ONLY
 * transaction of its own that the first statement opens and
 * cl__db_hook_end rolls back (list_events).  Always through the extended
 * protocol, so a string of several statements is an error.  The wait is
 * bounded by db->deadline_ns: past it the statement is cancelled and
 * db->timed_out set.  The caller has checked the statement's keyword
 * (sqlguard.h).
 */
cl_status cl__db_hook_exec(cl__db *db, const char *sql, int nparams, const char *const *params,
                           cl_rows **rows, cl_error *err);
/*
 * Ends the statements of a hook run outside the auditor's transaction: with
 * `check`, runs the session check (below) first, then rolls the read-only
 * transaction back and releases session advisory locks, all in one round
 * trip.  CL_HOOK_ERROR with db->session_changed when the check failed.
 */
cl_status cl__db_hook_end(cl__db *db, bool check, cl_error *err);
/* Runs ad-hoc SQL in a READ ONLY transaction of its own (cl_query). */
cl_status cl__db_query_readonly(cl__db *db, const char *sql, int nparams, const char *const *params,
                                cl_rows **rows, cl_error *err);
/* Runs one or more parameterless statements (migrations). */
cl_status cl__db_exec_script(cl__db *db, const char *sql, cl_error *err);
cl_status cl__db_commit(cl__db *db, cl_error *err);
void cl__db_rollback(cl__db *db);

/*
 * While the auditor's transaction (below) is open, only the auditor's own
 * statements (cl__db_hook_exec, through cl_tx_exec) may reach the server:
 * anything else would be sent into the middle of the pipeline, where a
 * Sync commits the operation's writes before the auditor has decided.
 * Every other function here that sends refuses with CL_HOOK_ERROR and
 * dooms the transaction, so cl__db_tx_close rolls it back and reports the
 * refusal.  The entry guard (cl__enter) refuses public calls from a hook
 * earlier; this is the layer that holds if a path ever misses it.
 *
 * A transaction whose round trips the auditor decides.  cl__db_tx_open
 * sends a registered statement without waiting, opening the protocol's
 * implicit transaction; statements the auditor runs meanwhile
 * (cl__db_hook_exec) join it and wait once each; cl__db_tx_close commits
 * with a Sync (or sends ROLLBACK first) and collects the rest.  An auditor
 * that runs nothing costs no round trip of its own, and no BEGIN or COMMIT
 * statement is sent at all.
 * cl__db_tx_close returns the opening statement's rows, or its error (with
 * sqlstate set, the transaction then rolled back), or COMMIT's error.
 *
 * `check` (the auditor ran statements): the session check
 * (src/sql/session_check.sql) rides in front of the committing Sync and
 * aborts the transaction when the session was changed (a setting, the
 * role, a relation created, an advisory lock held); that is CL_HOOK_ERROR
 * "tx:exec changed the session (...)" with db->session_changed set.  When
 * the transaction does not commit, session advisory locks (which a
 * rollback keeps) are released instead, in the same round trip.
 */
cl_status cl__db_tx_open(cl__db *db, cl__stmt id, int nparams, const char *const *params,
                         cl_error *err);
cl_status cl__db_tx_close(cl__db *db, bool commit, bool check, cl_rows **rows, cl_error *err);
/* True inside such a transaction once its opening statement has failed,
 * or once something was refused while it was open. */
static inline bool cl__db_tx_doomed(const cl__db *db) {
  return db->pipe_open && db->pipe_status != CL_OK;
}

/* The last server error was a unique (23505) or foreign-key (23503) violation. */
bool cl__db_unique_violation(const cl__db *db);
bool cl__db_fk_violation(const cl__db *db);

/* The underlying PGconn, for tests (PQtrace) and LISTEN; may be NULL. */
struct pg_conn *cl__db_conn(cl_engine *eng);
uint64_t cl__db_round_trips(cl_engine *eng);

/* Quotes `s` as an SQL identifier into a malloc'd string (for migrations). */
char *cl__db_quote_ident(const char *s);
/* A malloc'd copy of `sql` with every @S replaced by the quoted `schema`;
 * NULL when memory runs out. */
char *cl__db_with_schema(const char *tmpl, const char *schema);

/* ------------------------------------------------------------------ */
/* Delivery: waking idle workers (LISTEN/NOTIFY) and reconnecting.     */
/* Used by queue.c.                                                    */
/* ------------------------------------------------------------------ */

/* Reconnects now if the connection went bad (cl__db_exec does the same
 * lazily); CL_DB_ERROR while the server stays unreachable. */
cl_status cl__db_ensure(cl__db *db, cl_error *err);

/* The server process of the current session, 0 when not connected.  It
 * changes on every reconnect, which is how LISTEN knows to run again. */
int cl__db_session(const cl__db *db);

/* LISTEN on `channel` (quoted here; at most 63 bytes).  The subscription
 * belongs to the session: call again after a reconnect. */
cl_status cl__db_listen(cl__db *db, const char *channel, cl_error *err);

/* Why cl__db_wait returned. */
typedef enum cl__db_wake {
  CL__DB_WAKE_TIMEOUT, /* timeout_ms passed */
  CL__DB_WAKE_NOTIFY,  /* at least one notification arrived (all are consumed) */
  CL__DB_WAKE_FD,      /* wake_fd became readable (left for the caller to drain) */
  CL__DB_WAKE_SIGNAL,  /* a signal handler ran (poll saw EINTR) */
  CL__DB_WAKE_LOST     /* the connection is gone */
} cl__db_wake;

/* Sleeps on the connection's socket (and `wake_fd` when >= 0) until a
 * notification arrives or timeout_ms (>= 0) passes.  Notifications that
 * arrived during earlier statements count at once.  Never sends anything. */
cl__db_wake cl__db_wait(cl__db *db, int timeout_ms, int wake_fd);

#endif
