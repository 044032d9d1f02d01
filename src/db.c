/*
 * db.c - libpq: the connection, prepared statements, transactions, results.
 *
 * Every wait for the server goes through run(), which uses pipeline mode so
 * that BEGIN, a first-use PREPARE and the statement itself share one round
 * trip.  A lost connection is reset before the next operation (and its
 * statements prepared again); the operation that saw it fails with
 * CL_DB_ERROR and writes nothing.  With db->unnamed (for a transaction
 * pooler such as PgBouncer, where the next transaction may run on another
 * server session that never saw the PREPARE) nothing is prepared by name:
 * each statement travels with its text through the unnamed statement, in
 * the same pipelines, so the round trips stay the same.  Provides cl_rows and cl_tx-independent
 * execution to the rest of the engine.  The statements are the rows of the
 * statement table (stmt.h), their texts embedded from src/sql/.
 */
#include "db.h"
#include "engine.h"

#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

struct cl_rows {
  PGresult *res;
};

/* Each statement's result column names, as its SQL aliases them. */
#define CL__STMT_COLS(id, name, file, nparams, cols) \
  static const char *const cols_##id[] = {cols(CL__COL_NAME) NULL};
CL__STMT_MAP(CL__STMT_COLS)
#undef CL__STMT_COLS

/* The statement table, indexed by cl__stmt. */
static const struct stmt_def {
  const char *name; /* of the prepared statement */
  const char *sql;  /* @S for the quoted schema */
  int nparams;
  const char *const *cols; /* NULL-terminated */
} stmts[CL__STMT__COUNT] = {
#define CL__STMT_DEF(id, name, file, nparams, cols) {name, cl__sql_##file, nparams, cols_##id},
    CL__STMT_MAP(CL__STMT_DEF)
#undef CL__STMT_DEF
};

/* cl__db.prepared holds one bit per statement. */
_Static_assert(CL__STMT__COUNT <= 32, "the prepared mask has 32 bits");

/* Server notices (e.g. "relation already exists, skipping") are noise for a
 * library: drop them instead of letting libpq print to stderr. */
static void ignore_notice(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

static cl_status pipe_exec(cl__db *db, const char *sql, int nparams, const char *const *params,
                           cl_rows **rows, cl_error *err);
static void txcache_clear(cl__db *db);

static cl_status conn_fail(cl__db *db, cl_error *err, const char *what) {
  const char *msg = db->conn ? PQerrorMessage(db->conn) : "out of memory";
  /* A send that failed leaves the connection in an unknown state. */
  db->lost = true;
  return cl__fail(err, CL_DB_ERROR, "%s: %s", what, msg && *msg ? msg : "unknown error");
}

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

cl_status cl__db_connect(cl__db *db, const char *conninfo, const char *schema, cl_error *err) {
  /* The texts first: the schema is the engine's for its lifetime, so they
   * are built once and survive reconnects. */
  for (int i = 0; i < CL__STMT__COUNT; i++)
    if (!(db->sql[i] = cl__db_with_schema(stmts[i].sql, schema)))
      return cl__fail(err, CL_DB_ERROR, "out of memory");
  db->conninfo = strdup(conninfo ? conninfo : "");
  if (!db->conninfo) return cl__fail(err, CL_DB_ERROR, "out of memory");
  db->conn = PQconnectdb(db->conninfo);
  if (!db->conn || PQstatus(db->conn) != CONNECTION_OK) return conn_fail(db, err, "cannot connect");
  PQsetNoticeProcessor(db->conn, ignore_notice, NULL);
  return CL_OK;
}

void cl__db_close(cl__db *db) {
  if (db->conn) PQfinish(db->conn);
  db->conn = NULL;
  txcache_clear(db);
  free(db->conninfo);
  db->conninfo = NULL;
  for (int i = 0; i < CL__STMT__COUNT; i++) {
    free(db->sql[i]);
    db->sql[i] = NULL;
  }
}

char *cl__db_quote_ident(const char *s) {
  size_t n = strlen(s);
  char *out = malloc(2 * n + 3), *p = out;
  if (!out) return NULL;
  *p++ = '"';
  for (; *s; s++) {
    if (*s == '"') *p++ = '"';
    *p++ = *s;
  }
  *p++ = '"';
  *p = '\0';
  return out;
}

char *cl__db_with_schema(const char *tmpl, const char *schema) {
  char *q = cl__db_quote_ident(schema);
  if (!q) return NULL;
  size_t qn = strlen(q), n = 1;
  for (const char *p = tmpl; *p; p++) n += (p[0] == '@' && p[1] == 'S') ? qn : 1;
  char *out = malloc(n), *o = out;
  if (!out) {
    free(q);
    return NULL;
  }
  for (const char *p = tmpl; *p; p++) {
    if (p[0] == '@' && p[1] == 'S') {
      memcpy(o, q, qn);
      o += qn;
      p++;
    } else {
      *o++ = *p;
    }
  }
  *o = '\0';
  free(q);
  return out;
}

/*
 * The database layer's own guard: see db.h.  Refuses `what` while the
 * auditor's transaction is open and dooms that transaction (the first
 * failure is the one cl__db_tx_close reports).
 */
static cl_status refuse_in_audit(cl__db *db, const char *what, cl_error *err) {
  if (!db->pipe_open) return CL_OK;
  char msg[CL_ERROR_MESSAGE_MAX];
  snprintf(msg, sizeof msg, "%s refused: the audited transaction is open", what);
  if (db->pipe_status == CL_OK) {
    db->pipe_status = CL_HOOK_ERROR;
    snprintf(db->pipe_error, sizeof db->pipe_error, "%s", msg);
    db->pipe_sqlstate[0] = '\0';
  }
  return cl__fail(err, CL_HOOK_ERROR, "%s", msg);
}

/* A parameter count other than the table's is a caller's bug: refuse it
 * before the server sees a half-bound statement. */
static cl_status check_nparams(cl__stmt id, int nparams, cl_error *err) {
  if (nparams == stmts[id].nparams) return CL_OK;
  return cl__fail(err, CL_DB_ERROR, "%s takes %d parameters, got %d", stmts[id].name,
                  stmts[id].nparams, nparams);
}

/*
 * The result columns against the table, when a statement has just been
 * prepared on this connection (once per connection, not per call): the
 * callers read columns through the table's enums, so SQL and table must
 * agree on every position.  A mismatch is a defect of the build, which the
 * first test run shows; it is reported after the statement ran.
 */
static cl_status check_columns(cl__stmt id, const PGresult *res, cl_error *err) {
  const char *const *want = stmts[id].cols;
  int n = PQnfields(res), i = 0;
  for (; want[i]; i++)
    if (i >= n || strcmp(PQfname(res, i), want[i]) != 0)
      return cl__fail(err, CL_DB_ERROR, "%s: result column %d is '%s', the table says '%s'",
                      stmts[id].name, i, i < n ? PQfname(res, i) : "(none)", want[i]);
  if (i != n)
    return cl__fail(err, CL_DB_ERROR, "%s returns %d columns, the statement table lists %d",
                    stmts[id].name, n, i);
  return CL_OK;
}

/*
 * Reconnects a connection that went bad since the last call: the one call
 * that met the loss has failed (db_error, nothing written), the next one
 * reconnects.  A session the server ended is known lost from that call's
 * error (db->lost), even while libpq has not yet read the end of the
 * stream and still calls the connection good.  Prepared statements and
 * any transaction died with the old session: inside a transaction that is
 * the caller's failure, not something to paper over with a fresh session
 * that would run the rest outside it.
 */
static cl_status ensure_conn(cl__db *db, cl_error *err) {
  if (!db->conn) return cl__fail(err, CL_DB_ERROR, "engine has no connection");
  if (!db->lost && PQstatus(db->conn) == CONNECTION_OK) return CL_OK;
  if (db->in_tx) return cl__fail(err, CL_DB_ERROR, "connection lost inside a transaction");
  PQreset(db->conn);
  db->prepared = 0;
  txcache_clear(db);
  if (PQstatus(db->conn) != CONNECTION_OK) return conn_fail(db, err, "connection lost");
  db->lost = false;
  PQsetNoticeProcessor(db->conn, ignore_notice, NULL);
  return CL_OK;
}

/*
 * PQgetResult; with db->waiter set, the waiter runs while the result is not
 * in.  For a hook's statement, bounded by db->deadline_ns: waits on
 * the socket while the result is not in, and at the deadline asks the
 * server to cancel the statement (the hook's own code cannot undo that, as
 * it could a statement_timeout).  If even the cancellation does not come
 * back within a grace period, the connection is shut down: the server
 * rolls back what it was doing, and the next call reconnects.  Without a
 * deadline this is PQgetResult.
 */
#define CANCEL_GRACE_NS (2000LL * 1000000) /* a live server answers in milliseconds */

static PGresult *get_result(cl__db *db) {
  PGconn *c = db->conn;
  while ((db->deadline_ns || db->waiter) && PQisBusy(c)) {
    if (!db->deadline_ns) { /* the waiter only */
      if (PQsocket(c) < 0) break;
      db->waiter(db->waiter_ud, PQsocket(c), 1000);
      if (!PQconsumeInput(c)) break;
      continue;
    }
    int64_t left = db->deadline_ns - mono_ns();
    if (left <= 0) {
      if (db->timed_out) {
        shutdown(PQsocket(c), SHUT_RDWR);
        db->lost = true;
        break;
      }
      char why[256];
      PGcancel *cancel = PQgetCancel(c);
      if (!cancel || !PQcancel(cancel, why, sizeof why)) db->lost = true;
      PQfreeCancel(cancel);
      db->timed_out = true;
      db->deadline_ns = mono_ns() + CANCEL_GRACE_NS;
      continue;
    }
    struct pollfd fd = {.fd = PQsocket(c), .events = POLLIN};
    if (fd.fd < 0) break;
    int64_t ms = left / 1000000 + 1;
    int r = poll(&fd, 1, ms > 60000 ? 60000 : (int)ms); /* a far deadline: wake now and then */
    if (r < 0 && errno != EINTR) break;
    if (r > 0 && !PQconsumeInput(c)) break;
  }
  return PQgetResult(c);
}

static void set_sqlstate(cl__db *db, const PGresult *res) {
  const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
  if (st) {
    strncpy(db->sqlstate, st, 5);
    db->sqlstate[5] = '\0';
  } else {
    db->sqlstate[0] = '\0';
  }
}

static cl_status result_fail(cl__db *db, const PGresult *res, cl_error *err) {
  set_sqlstate(db, res);
  const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
  if (!msg) msg = PQerrorMessage(db->conn);
  /* Class 08 (connection exception), 57P (the server shuts down or
   * terminated this session), or no SQLSTATE at all (libpq's own error:
   * "server closed the connection unexpectedly"): the session is gone,
   * even while libpq, in pipeline mode, still calls the connection good. */
  if (!db->sqlstate[0] || strncmp(db->sqlstate, "08", 2) == 0 ||
      strncmp(db->sqlstate, "57P", 3) == 0)
    db->lost = true;
  if (PQstatus(db->conn) != CONNECTION_OK) db->lost = true;
  if (db->lost) return cl__fail(err, CL_DB_ERROR, "connection lost: %s", msg);
  return cl__fail(err, CL_DB_ERROR, "%s", msg && *msg ? msg : "server error");
}

/* Reads results up to the pipeline's next Sync marker.  Bounded: a dead
 * socket yields NULLs forever. */
static void drain_to_sync(cl__db *db) {
  PGconn *c = db->conn;
  for (int idle = 0; idle < 64;) {
    PGresult *r = get_result(db);
    if (!r) {
      if (PQstatus(c) != CONNECTION_OK) break;
      idle++;
      continue;
    }
    ExecStatusType s = PQresultStatus(r);
    PQclear(r);
    if (s == PGRES_PIPELINE_SYNC) break;
  }
}

/*
 * The one place that waits for the server.  Sends, in one pipeline:
 * optional BEGIN, optional PREPARE, the statement, Sync; then collects the
 * statement's result.  The first error wins; the pipeline is always drained
 * so the connection is reusable.
 */
static cl_status run(cl__db *db, const char *begin, cl__stmt id, const char *sql, int nparams,
                     const char *const *params, cl_rows **rows, cl_error *err) {
  cl_status st = ensure_conn(db, err);
  if (st != CL_OK) return st;
  PGconn *c = db->conn;
  /* First use of a table statement on this connection: prepared now, or
   * (unnamed) its columns checked once as they would be after a PREPARE. */
  bool first = sql == NULL && !(db->prepared & (1u << id));
  bool prepare = first && !db->unnamed;
  if (PQenterPipelineMode(c) != 1) return conn_fail(db, err, "cannot enter pipeline mode");
  int sent = 1;
  if (begin) sent = PQsendQueryParams(c, begin, 0, NULL, NULL, NULL, NULL, 0);
  if (sent && prepare) sent = PQsendPrepare(c, stmts[id].name, db->sql[id], 0, NULL);
  if (sent) {
    if (sql) sent = PQsendQueryParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
    else if (db->unnamed)
      sent = PQsendQueryParams(c, db->sql[id], nparams, NULL, params, NULL, NULL, 0);
    else sent = PQsendQueryPrepared(c, stmts[id].name, nparams, params, NULL, NULL, 0);
  }
  if (sent) sent = PQpipelineSync(c);
  if (!sent) {
    PQexitPipelineMode(c);
    return conn_fail(db, err, "cannot send");
  }
  db->round_trips++;

  int steps = (begin ? 1 : 0) + (prepare ? 1 : 0) + 1;
  int prepare_step = prepare ? steps - 2 : -1;
  bool prepared_now = false;
  PGresult *keep = NULL;
  st = CL_OK;
  db->sqlstate[0] = '\0';
  for (int i = 0; i < steps; i++) {
    PGresult *r = get_result(db);
    if (!r) { /* connection dropped mid-pipeline */
      st = result_fail(db, NULL, err);
      break;
    }
    ExecStatusType s = PQresultStatus(r);
    /* A prepared statement outlives the failure of its first execution
     * (and a rollback): remember it, or the next PREPARE collides. */
    if (i == prepare_step && s == PGRES_COMMAND_OK) prepared_now = true;
    if (first && !prepare && i == steps - 1 && (s == PGRES_TUPLES_OK || s == PGRES_COMMAND_OK))
      prepared_now = true;
    if (st == CL_OK && s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
      st = s == PGRES_PIPELINE_ABORTED ? cl__fail(err, CL_DB_ERROR, "pipeline aborted")
                                       : result_fail(db, r, err);
    }
    if (i == steps - 1 && st == CL_OK) keep = r;
    else PQclear(r);
    /* Each command's results end with a NULL. */
    while ((r = get_result(db)) != NULL) PQclear(r);
  }
  drain_to_sync(db);
  PQexitPipelineMode(c);

  if (prepared_now) db->prepared |= 1u << id;
  if (prepared_now && st == CL_OK) st = check_columns(id, keep, err);
  if (st != CL_OK) {
    PQclear(keep);
    /* A transaction this call opened is closed again; one the caller opened
     * stays (aborted) so that nothing later runs outside it by accident. */
    if (begin) cl__db_rollback(db);
    return st;
  }
  if (begin) db->in_tx = true;
  if (rows) {
    *rows = malloc(sizeof **rows);
    if (!*rows) {
      PQclear(keep);
      if (begin) cl__db_rollback(db);
      return cl__fail(err, CL_DB_ERROR, "out of memory");
    }
    (*rows)->res = keep;
  } else {
    PQclear(keep);
  }
  return CL_OK;
}

cl_status cl__db_exec(cl__db *db, cl__stmt id, bool begin, int nparams, const char *const *params,
                      cl_rows **rows, cl_error *err) {
  if (rows) *rows = NULL;
  cl_status st = refuse_in_audit(db, stmts[id].name, err);
  if (st == CL_OK) st = check_nparams(id, nparams, err);
  if (st != CL_OK) return st;
  return run(db, begin ? "BEGIN" : NULL, id, NULL, nparams, params, rows, err);
}

cl_status cl__db_hook_exec(cl__db *db, const char *sql, int nparams, const char *const *params,
                           cl_rows **rows, cl_error *err) {
  if (rows) *rows = NULL;
  db->timed_out = false;
  if (db->pipe_open) return pipe_exec(db, sql, nparams, params, rows, err);
  if (db->in_tx && !db->ro_open)
    return cl__fail(err, CL_HOOK_ERROR, "a hook statement inside a transaction it does not own");
  /* The first statement opens the read-only transaction in its own round
   * trip; a failure there has closed it again (run). */
  bool open = !db->ro_open;
  cl_status st = run(db, open ? "BEGIN READ ONLY" : NULL, CL__STMT__COUNT, sql, nparams, params,
                     rows, err);
  if (open && db->in_tx) db->ro_open = true;
  return st;
}

/* A failed session check: its own message is the list of what changed.
 * Any other failure of the check (the hook set a statement_timeout it
 * cannot meet, or a role that may not run it) is the hook's doing too,
 * unless the connection went away. */
static cl_status session_fail(cl__db *db, const PGresult *r, cl_error *err) {
  cl_status st = result_fail(db, r, err);
  if (db->lost) return st;
  const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
  if (!msg) msg = "?";
  db->session_changed = true;
  if (strcmp(db->sqlstate, "CL001") == 0)
    return cl__fail(err, CL_HOOK_ERROR, "tx:exec changed the session (%s)", msg);
  return cl__fail(err, CL_HOOK_ERROR, "tx:exec left a session the check cannot verify: %s", msg);
}

/* Session-level advisory locks survive a rollback: a hook's are released
 * with the transaction it ran in. */
static const char unlock_all_sql[] = "SELECT pg_catalog.pg_advisory_unlock_all()";

cl_status cl__db_hook_end(cl__db *db, bool check, cl_error *err) {
  bool ro = db->ro_open;
  db->ro_open = false;
  db->in_tx = false;
  db->timed_out = false;
  if (!db->conn || db->lost || PQstatus(db->conn) != CONNECTION_OK) return CL_OK; /* gone with it */
  PGconn *c = db->conn;
  check = check && ro;
  if (PQenterPipelineMode(c) != 1) return conn_fail(db, err, "cannot enter pipeline mode");
  /* The check runs inside the transaction and may abort it: the ROLLBACK
   * then goes after a Sync of its own, which leaves the block aborted. */
  int sent = !check || (PQsendQueryParams(c, cl__sql_session_check, 0, NULL, NULL, NULL, NULL, 0) &&
                        PQpipelineSync(c));
  if (sent && ro) sent = PQsendQueryParams(c, "ROLLBACK", 0, NULL, NULL, NULL, NULL, 0);
  if (sent)
    sent = PQsendQueryParams(c, unlock_all_sql, 0, NULL, NULL, NULL, NULL, 0) && PQpipelineSync(c);
  if (!sent) {
    PQexitPipelineMode(c);
    return conn_fail(db, err, "cannot send");
  }
  db->round_trips++;
  cl_status st = CL_OK;
  if (check) {
    PGresult *r = get_result(db);
    if (r && PQresultStatus(r) != PGRES_COMMAND_OK) st = session_fail(db, r, err);
    PQclear(r);
    drain_to_sync(db);
  }
  drain_to_sync(db);
  PQexitPipelineMode(c);
  return st;
}

cl_status cl__db_query_readonly(cl__db *db, const char *sql, int nparams, const char *const *params,
                                cl_rows **rows, cl_error *err) {
  cl_status st = refuse_in_audit(db, "query", err);
  if (st != CL_OK) return st;
  if (db->in_tx) return cl__fail(err, CL_INVALID_ARGUMENT, "query called inside a transaction");
  st = run(db, "BEGIN READ ONLY", CL__STMT__COUNT, sql, nparams, params, rows, err);
  if (st != CL_OK) return st;
  /* Rolled back, not committed: a read needs no commit, and a
   * set_config() in the query then ends with it instead of staying in the
   * session for every later call. */
  db->in_tx = false;
  db->round_trips++;
  PGresult *r = PQexec(db->conn, "ROLLBACK");
  if (PQresultStatus(r) != PGRES_COMMAND_OK) {
    st = result_fail(db, r, err);
    cl_rows_free(*rows);
    *rows = NULL;
  }
  PQclear(r);
  return st;
}

cl_status cl__db_exec_script(cl__db *db, const char *sql, cl_error *err) {
  cl_status st = refuse_in_audit(db, "script", err);
  if (st == CL_OK) st = ensure_conn(db, err);
  if (st != CL_OK) return st;
  db->round_trips++;
  PGresult *r = PQexec(db->conn, sql);
  ExecStatusType s = PQresultStatus(r);
  if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) st = result_fail(db, r, err);
  PQclear(r);
  return st;
}

/* ------------------------------------------------------------------ */
/* The auditor's pipelined transaction                                 */
/* ------------------------------------------------------------------ */

/* What each result still owed by a tx pipeline is for. */
enum { PIPE_IGNORE, PIPE_PREPARE, PIPE_KEEP };

/* Reads the results owed by cl__db_tx_open (PREPARE, the statement),
 * keeping the statement's result or its error.  Call only after a Sync or
 * a flush request. */
static void pipe_collect(cl__db *db, cl__stmt id) {
  bool prepared_now = false;
  bool check_unnamed = db->pipe_check; /* unnamed: check the columns of a first use */
  db->pipe_check = false;
  for (int i = 0; i < db->pipe_npending; i++) {
    PGresult *r = get_result(db);
    if (!r) {
      if (db->pipe_status == CL_OK) {
        cl_error e;
        db->pipe_status = result_fail(db, NULL, &e);
        snprintf(db->pipe_error, sizeof db->pipe_error, "%s", e.message);
        memcpy(db->pipe_sqlstate, db->sqlstate, sizeof db->sqlstate);
      }
      break;
    }
    ExecStatusType s = PQresultStatus(r);
    bool good = s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
    if (db->pipe_pending[i] == PIPE_PREPARE && good) {
      db->prepared |= 1u << id;
      prepared_now = true;
    }
    if (db->pipe_pending[i] == PIPE_KEEP && good && check_unnamed) {
      db->prepared |= 1u << id;
      prepared_now = true;
    }
    if (db->pipe_pending[i] == PIPE_KEEP && good && prepared_now && db->pipe_status == CL_OK) {
      cl_error e;
      if ((db->pipe_status = check_columns(id, r, &e)) != CL_OK)
        snprintf(db->pipe_error, sizeof db->pipe_error, "%s", e.message);
    }
    if (!good && db->pipe_status == CL_OK && s != PGRES_PIPELINE_ABORTED) {
      cl_error e;
      db->pipe_status = result_fail(db, r, &e);
      snprintf(db->pipe_error, sizeof db->pipe_error, "%s", e.message);
      memcpy(db->pipe_sqlstate, db->sqlstate, sizeof db->sqlstate);
    }
    if (db->pipe_pending[i] == PIPE_KEEP && good) db->pipe_kept = r;
    else PQclear(r);
    while ((r = get_result(db)) != NULL) PQclear(r);
  }
  db->pipe_npending = 0;
}

/*
 * The transaction is the implicit one of the extended protocol: every
 * statement sent before the next Sync runs in one transaction, committed
 * by that Sync.  So no BEGIN and no COMMIT travel at all: the opening
 * statement and the auditor's statements are sent with flush requests and
 * their results read back without a Sync, and closing is one Sync (commit)
 * or ROLLBACK + Sync.  A failed statement makes the server skip everything
 * up to the Sync, which then ends the transaction rolled back.
 */
cl_status cl__db_tx_open(cl__db *db, cl__stmt id, int nparams, const char *const *params,
                         cl_error *err) {
  cl_status st = refuse_in_audit(db, stmts[id].name, err);
  if (st == CL_OK) st = check_nparams(id, nparams, err);
  if (st == CL_OK) st = ensure_conn(db, err);
  if (st != CL_OK) return st;
  PGconn *c = db->conn;
  bool first = !(db->prepared & (1u << id));
  bool prepare = first && !db->unnamed;
  if (PQenterPipelineMode(c) != 1) return conn_fail(db, err, "cannot enter pipeline mode");
  int sent = 1;
  if (prepare) sent = PQsendPrepare(c, stmts[id].name, db->sql[id], 0, NULL);
  if (sent)
    sent = db->unnamed ? PQsendQueryParams(c, db->sql[id], nparams, NULL, params, NULL, NULL, 0)
                       : PQsendQueryPrepared(c, stmts[id].name, nparams, params, NULL, NULL, 0);
  /* Push the statement out now, so the server works while the auditor runs. */
  if (sent) sent = PQsendFlushRequest(c) && PQflush(c) == 0;
  if (!sent) {
    PQexitPipelineMode(c);
    return conn_fail(db, err, "cannot send");
  }
  db->pipe_npending = 0;
  if (prepare) db->pipe_pending[db->pipe_npending++] = PIPE_PREPARE;
  db->pipe_pending[db->pipe_npending++] = PIPE_KEEP;
  db->pipe_check = first && db->unnamed;
  db->pipe_open = true;
  db->pipe_kept = NULL;
  db->pipe_status = CL_OK;
  db->pipe_error[0] = '\0';
  db->pipe_sqlstate[0] = '\0';
  db->in_tx = true;
  db->pipe_id = id;
  return CL_OK;
}

static void txcache_name(char *buf, size_t size, int slot) {
  snprintf(buf, size, "cl_tx_%d", slot);
}

/* The cache slot of `sql` on this connection, a new one, or -1 when full. */
static int txcache_slot(cl__db *db, const char *sql, bool *known) {
  for (int i = 0; i < db->ntxcache; i++)
    if (strcmp(db->txcache[i].sql, sql) == 0) {
      *known = db->txcache[i].ready;
      return i;
    }
  *known = false;
  if (db->ntxcache == (int)(sizeof db->txcache / sizeof db->txcache[0])) return -1;
  char *copy = strdup(sql);
  if (!copy) return -1;
  db->txcache[db->ntxcache].sql = copy;
  db->txcache[db->ntxcache].ready = false;
  return db->ntxcache++;
}

/* Forgets the statements prepared on a connection that is gone. */
static void txcache_clear(cl__db *db) {
  for (int i = 0; i < db->ntxcache; i++) free(db->txcache[i].sql);
  db->ntxcache = 0;
}

/*
 * Runs ad-hoc SQL inside the open transaction: one flush, one wait, no
 * Sync.  The statement is prepared on first use (in the same flush) and
 * reused by its text afterwards; with db->unnamed it is sent with its text
 * each time.
 */
static cl_status pipe_exec(cl__db *db, const char *sql, int nparams, const char *const *params,
                           cl_rows **rows, cl_error *err) {
  /* Doomed by refuse_in_audit: the server's transaction is still good, so
   * nothing more is sent into what will be rolled back.  (A server-side
   * failure is CL_DB_ERROR, and the server itself skips what follows.) */
  if (db->pipe_status == CL_HOOK_ERROR)
    return cl__fail(err, CL_DB_ERROR, "transaction aborted: %s", db->pipe_error);
  PGconn *c = db->conn;
  bool known = false;
  /* Unnamed (a transaction pooler): sent with its text every time. */
  int slot = db->unnamed ? -1 : txcache_slot(db, sql, &known);
  char name[32] = "";
  if (slot >= 0) txcache_name(name, sizeof name, slot);
  int sent = 1;
  if (slot >= 0 && !known) sent = PQsendPrepare(c, name, sql, nparams, NULL);
  if (sent)
    sent = slot >= 0 ? PQsendQueryPrepared(c, name, nparams, params, NULL, NULL, 0)
                     : PQsendQueryParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
  if (!sent || !PQsendFlushRequest(c) || PQflush(c) != 0) return conn_fail(db, err, "cannot send");
  db->round_trips++;
  pipe_collect(db, db->pipe_id);
  cl_status st = CL_OK;
  PGresult *keep = NULL, *r;
  if (slot >= 0 && !known) { /* the PREPARE's result: its error is the one to report */
    r = get_result(db);
    if (r && PQresultStatus(r) == PGRES_COMMAND_OK) db->txcache[slot].ready = true;
    else if (r && PQresultStatus(r) != PGRES_PIPELINE_ABORTED) st = result_fail(db, r, err);
    PQclear(r);
    while ((r = get_result(db)) != NULL) PQclear(r);
  }
  r = get_result(db);
  if (!r) {
    if (st == CL_OK) st = result_fail(db, NULL, err);
  } else {
    ExecStatusType s = PQresultStatus(r);
    if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK) keep = r;
    else if (st != CL_OK) {
      PQclear(r);
    } else {
      st = s == PGRES_PIPELINE_ABORTED
             ? cl__fail(err, CL_DB_ERROR, "transaction aborted: %s",
                        db->pipe_error[0] ? db->pipe_error : "an earlier statement failed")
             : result_fail(db, r, err);
      PQclear(r);
    }
    while ((r = get_result(db)) != NULL) PQclear(r);
  }
  if (st != CL_OK) return st;
  if (rows) {
    if (!(*rows = malloc(sizeof **rows))) {
      PQclear(keep);
      return cl__fail(err, CL_DB_ERROR, "out of memory");
    }
    (*rows)->res = keep;
  } else {
    PQclear(keep);
  }
  return CL_OK;
}

cl_status cl__db_tx_close(cl__db *db, bool commit, bool check, cl_rows **rows, cl_error *err) {
  PGconn *c = db->conn;
  cl_status st = CL_OK;
  *rows = NULL;
  db->pipe_open = false;
  db->in_tx = false;
  db->session_changed = false;
  /* A transaction doomed on the client side (refuse_in_audit) is still good
   * on the server, where a bare Sync would commit it. */
  if (db->pipe_status != CL_OK) commit = false;
  /* Committing: the session check goes first, and its error aborts the
   * implicit transaction so that the Sync rolls it back.  Rolling back:
   * the hook's session-level advisory locks go after the Sync. */
  bool unlock = check && !commit;
  check = check && commit;
  int sent = commit
               ? !check || PQsendQueryParams(c, cl__sql_session_check, 0, NULL, NULL, NULL, NULL, 0)
               : PQsendQueryParams(c, "ROLLBACK", 0, NULL, NULL, NULL, NULL, 0);
  if (sent) sent = PQpipelineSync(c);
  if (sent && unlock)
    sent = PQsendQueryParams(c, unlock_all_sql, 0, NULL, NULL, NULL, NULL, 0) && PQpipelineSync(c);
  if (!sent) {
    st = conn_fail(db, err, "cannot send");
    PQexitPipelineMode(c);
    PQclear(db->pipe_kept);
    db->pipe_kept = NULL;
    return st;
  }
  db->round_trips++;
  pipe_collect(db, db->pipe_id);
  if (check) {
    PGresult *r = get_result(db);
    if (r) { /* else the connection is gone: the loop below reports it */
      ExecStatusType s = PQresultStatus(r);
      if (s != PGRES_COMMAND_OK && s != PGRES_PIPELINE_ABORTED) st = session_fail(db, r, err);
      PQclear(r);
      while ((r = get_result(db)) != NULL) PQclear(r);
    }
  }
  /* What is left before the Sync marker: ROLLBACK's result, or an error
   * raised while committing (a deferred constraint, say). */
  for (int idle = 0; idle < 64;) {
    PGresult *r = get_result(db);
    if (!r) {
      if (PQstatus(c) != CONNECTION_OK) {
        if (st == CL_OK) st = result_fail(db, NULL, err);
        break;
      }
      idle++;
      continue;
    }
    ExecStatusType s = PQresultStatus(r);
    if (st == CL_OK && (s == PGRES_FATAL_ERROR || s == PGRES_BAD_RESPONSE))
      st = result_fail(db, r, err);
    PQclear(r);
    if (s == PGRES_PIPELINE_SYNC) break;
  }
  if (unlock) drain_to_sync(db);
  PQexitPipelineMode(c);
  /* Not expected after a Sync; a safety net so nothing ever runs inside a
   * transaction left behind. */
  if (PQtransactionStatus(c) == PQTRANS_INERROR || PQtransactionStatus(c) == PQTRANS_INTRANS)
    cl__db_rollback(db);
  /* The check failed and the transaction is gone, but a session-level
   * advisory lock is not: one more round trip, on this failure path only. */
  if (db->session_changed && !db->lost && PQstatus(c) == CONNECTION_OK) {
    db->round_trips++;
    PQclear(PQexec(c, unlock_all_sql));
  }

  PGresult *kept = db->pipe_kept;
  db->pipe_kept = NULL;
  if (db->pipe_status != CL_OK) { /* the statement's own failure comes first */
    PQclear(kept);
    memcpy(db->sqlstate, db->pipe_sqlstate, sizeof db->sqlstate);
    return cl__fail(err, db->pipe_status, "%s", db->pipe_error);
  }
  if (st != CL_OK || !commit) {
    PQclear(kept);
    return st;
  }
  if (!(*rows = malloc(sizeof **rows))) {
    PQclear(kept);
    return cl__fail(err, CL_DB_ERROR, "out of memory after commit");
  }
  (*rows)->res = kept;
  return CL_OK;
}

cl_status cl__db_commit(cl__db *db, cl_error *err) {
  cl_status st = refuse_in_audit(db, "COMMIT", err);
  if (st != CL_OK) return st;
  db->in_tx = false;
  db->round_trips++;
  PGresult *r = PQexec(db->conn, "COMMIT");
  if (PQresultStatus(r) != PGRES_COMMAND_OK) {
    st = result_fail(db, r, err);
  } else if (strcmp(PQcmdStatus(r), "ROLLBACK") == 0) {
    /* COMMIT of an aborted transaction reports success with tag ROLLBACK. */
    st = cl__fail(err, CL_DB_ERROR, "transaction was aborted and rolled back");
  }
  PQclear(r);
  return st;
}

void cl__db_rollback(cl__db *db) {
  cl_error ignore;
  if (refuse_in_audit(db, "ROLLBACK", &ignore) != CL_OK) return; /* tx_close rolls back */
  db->in_tx = false;
  if (!db->conn || db->lost || PQstatus(db->conn) != CONNECTION_OK) return;
  db->round_trips++;
  PQclear(PQexec(db->conn, "ROLLBACK"));
}

bool cl__db_unique_violation(const cl__db *db) { return strcmp(db->sqlstate, "23505") == 0; }

bool cl__db_fk_violation(const cl__db *db) { return strcmp(db->sqlstate, "23503") == 0; }

struct pg_conn *cl__db_conn(cl_engine *eng) {
  return eng ? eng->db.conn : NULL;
}

uint64_t cl__db_round_trips(cl_engine *eng) { return eng->db.round_trips; }

/* cl_rows: the public view of a result. */

int cl_rows_count(const cl_rows *rows) { return rows ? PQntuples(rows->res) : 0; }

int cl_rows_columns(const cl_rows *rows) { return rows ? PQnfields(rows->res) : 0; }

const char *cl_rows_name(const cl_rows *rows, int column) {
  return rows ? PQfname(rows->res, column) : NULL;
}

unsigned cl_rows_type(const cl_rows *rows, int column) {
  return rows ? (unsigned)PQftype(rows->res, column) : 0;
}

const char *cl_rows_value(const cl_rows *rows, int row, int column) {
  if (!rows || row < 0 || column < 0 || row >= PQntuples(rows->res) ||
      column >= PQnfields(rows->res) || PQgetisnull(rows->res, row, column))
    return NULL;
  return PQgetvalue(rows->res, row, column);
}

void cl_rows_free(cl_rows *rows) {
  if (!rows) return;
  PQclear(rows->res);
  free(rows);
}

/* ------------------------------------------------------------------ */
/* Delivery: waking idle workers (LISTEN/NOTIFY) and reconnecting.     */
/* ------------------------------------------------------------------ */

cl_status cl__db_ensure(cl__db *db, cl_error *err) {
  /* A reset would drop the pipeline, and the transaction with it. */
  cl_status st = refuse_in_audit(db, "reconnect", err);
  return st != CL_OK ? st : ensure_conn(db, err);
}

int cl__db_session(const cl__db *db) {
  return db->conn && !db->lost && PQstatus(db->conn) == CONNECTION_OK ? PQbackendPID(db->conn) : 0;
}

cl_status cl__db_listen(cl__db *db, const char *channel, cl_error *err) {
  char *q = cl__db_quote_ident(channel);
  size_t size = q ? strlen(q) + sizeof "LISTEN " : 0;
  char *sql = q ? malloc(size) : NULL;
  if (!sql) {
    free(q);
    return cl__fail(err, CL_DB_ERROR, "out of memory");
  }
  snprintf(sql, size, "LISTEN %s", q);
  free(q);
  cl_status st = cl__db_exec_script(db, sql, err);
  free(sql);
  return st;
}

/* Consumes every queued notification; true if there was one.  Their
 * payloads are not needed: a notification only means "look again". */
static bool drain_notifies(PGconn *c) {
  bool any = false;
  PGnotify *n;
  while ((n = PQnotifies(c)) != NULL) {
    PQfreemem(n);
    any = true;
  }
  return any;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

cl__db_wake cl__db_wait(cl__db *db, int timeout_ms, int wake_fd) {
  PGconn *c = db->conn;
  if (!c || PQstatus(c) != CONNECTION_OK || PQsocket(c) < 0) return CL__DB_WAKE_LOST;
  /* Notifications read along with earlier results wait in libpq's queue. */
  if (drain_notifies(c)) return CL__DB_WAKE_NOTIFY;
  int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
  for (;;) {
    int64_t left = deadline - now_ms();
    if (left < 0) left = 0;
    struct pollfd fds[2] = {{.fd = PQsocket(c), .events = POLLIN},
                            {.fd = wake_fd, .events = POLLIN}};
    int r = poll(fds, wake_fd >= 0 ? 2 : 1, (int)left);
    if (r < 0) return errno == EINTR ? CL__DB_WAKE_SIGNAL : CL__DB_WAKE_LOST;
    if (r == 0) return CL__DB_WAKE_TIMEOUT;
    if (wake_fd >= 0 && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) return CL__DB_WAKE_FD;
    /* Readable: a notification, a server message, or the end of the
     * connection (a restarting server closes it), which PQconsumeInput
     * reports as a failure or a bad status. */
    if (!PQconsumeInput(c) || PQstatus(c) != CONNECTION_OK) return CL__DB_WAKE_LOST;
    if (drain_notifies(c)) return CL__DB_WAKE_NOTIFY;
    if (left == 0) return CL__DB_WAKE_TIMEOUT;
  }
}
