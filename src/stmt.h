/*
 * stmt.h - the statement table: every SQL statement the engine prepares.
 *
 * One row per statement: the id (CL__STMT_<ID>), the prepared statement's
 * name on the server, its file src/sql/<file>.sql (embedded at build time
 * by tools/embed-sql.sh as cl__sql_<file>), its number of parameters and
 * the list of its result columns.  db.h derives the cl__stmt enum from it;
 * db.c the names and texts, registers every row at connect, checks each
 * call's parameter count and, when a statement is prepared, the names of
 * its result columns.  The units that run a statement read its columns
 * through the enums below, never by position.  Includes nothing.
 */
#ifndef CL_STMT_H
#define CL_STMT_H

/*
 * A result column list is X(enum constant, column name): the constant
 * names the column's position, the name is the SQL's own alias for it.
 * CL__COL_ENUM and CL__COL_NAME turn a list into enum constants or strings.
 */
#define CL__COL_ENUM(constant, name) constant,
#define CL__COL_NAME(constant, name) #name,

/* The stored envelope: the first columns of every statement returning one
 * (envelope.c maps them to cl_envelope). */
#define CL__ENVELOPE_COLS(X)                             \
  X(CL__ENVELOPE_ID, id)                                 \
  X(CL__ENVELOPE_TEMPLATE_ID, template_id)               \
  X(CL__ENVELOPE_RENDERED_BODY, rendered_body)           \
  X(CL__ENVELOPE_RECIPIENTS, recipient_conversation_ids) \
  X(CL__ENVELOPE_COUNT, count)                           \
  X(CL__ENVELOPE_EFFECTIVE_CAP, effective_cap)           \
  X(CL__ENVELOPE_REQUESTED_BY, requested_by)             \
  X(CL__ENVELOPE_REQUESTED_AT, requested_at)             \
  X(CL__ENVELOPE_STATUS, status)                         \
  X(CL__ENVELOPE_REFUSED_REASON, refused_reason)
enum cl__envelope_col { CL__ENVELOPE_COLS(CL__COL_ENUM) CL__ENVELOPE__NCOLS };

/* cl_bulk, cl_bulk_tx: after the stored envelope with the caller's id
 * (NULLs when there is none), what the submit wrote. */
#define CL__BULK_COLS(X)                                         \
  X(CL__BULK_SUBMITTED_AT, submitted_at)                         \
  X(CL__BULK_MESSAGE_IDS, message_ids)                           \
  X(CL__BULK_MESSAGE_CONVERSATION_IDS, message_conversation_ids) \
  X(CL__BULK_JOB_IDS, job_ids)                                   \
  X(CL__BULK_JOB_MESSAGE_IDS, job_message_ids)                   \
  X(CL__BULK_SCHEDULED_AT, scheduled_at)
#define CL__BULK_ROW(X) CL__ENVELOPE_COLS(X) CL__BULK_COLS(X)
/* Numbered on from the envelope's columns. */
enum cl__bulk_col {
  CL__BULK_AFTER_ENVELOPE_ = CL__ENVELOPE__NCOLS - 1,
  CL__BULK_COLS(CL__COL_ENUM)
};

/* cl_refuse: after the stored envelope, whether the refusal was stored. */
#define CL__REFUSE_COLS(X) X(CL__REFUSE_INSERTED, inserted)
#define CL__REFUSE_ROW(X) CL__ENVELOPE_COLS(X) CL__REFUSE_COLS(X)
enum cl__refuse_col {
  CL__REFUSE_AFTER_ENVELOPE_ = CL__ENVELOPE__NCOLS - 1,
  CL__REFUSE_COLS(CL__COL_ENUM)
};

/* cl_trigger and cl_existing: one trigger's job and message. */
#define CL__TRIGGER_COLS(X)                 \
  X(CL__TRIGGER_DUPLICATE, duplicate)       \
  X(CL__TRIGGER_JOB_ID, job_id)             \
  X(CL__TRIGGER_MESSAGE_ID, message_id)     \
  X(CL__TRIGGER_STATE, state)               \
  X(CL__TRIGGER_SCHEDULED_AT, scheduled_at) \
  X(CL__TRIGGER_CONTENT, content)           \
  X(CL__TRIGGER_STATUS, status)
enum cl__trigger_col { CL__TRIGGER_COLS(CL__COL_ENUM) };

/* cl_bulk_rows: one replayed recipient per row. */
#define CL__BULK_ROWS_COLS(X)                 \
  X(CL__BULK_ROWS_JOB_ID, job_id)             \
  X(CL__BULK_ROWS_MESSAGE_ID, message_id)     \
  X(CL__BULK_ROWS_STATE, state)               \
  X(CL__BULK_ROWS_SCHEDULED_AT, scheduled_at) \
  X(CL__BULK_ROWS_CONTENT, content)           \
  X(CL__BULK_ROWS_STATUS, status)             \
  X(CL__BULK_ROWS_CONVERSATION_ID, conversation_id)
enum cl__bulk_rows_col { CL__BULK_ROWS_COLS(CL__COL_ENUM) };

#define CL__MISSING_COLS(X) X(CL__MISSING_CONVERSATION_ID, conversation_id)
enum cl__missing_col { CL__MISSING_COLS(CL__COL_ENUM) };

/* cl_claim: one claimed job per row, with its message and conversation. */
#define CL__CLAIM_COLS(X)                               \
  X(CL__CLAIM_JOB_ID, job_id)                           \
  X(CL__CLAIM_MESSAGE_ID, message_id)                   \
  X(CL__CLAIM_CONVERSATION_ID, conversation_id)         \
  X(CL__CLAIM_ATTEMPT, attempt)                         \
  X(CL__CLAIM_TEMPLATE_ID, template_id)                 \
  X(CL__CLAIM_ENVELOPE_ID, bulk_envelope_id)            \
  X(CL__CLAIM_CONTENT, content)                         \
  X(CL__CLAIM_ROLE, role)                               \
  X(CL__CLAIM_STATUS, status)                           \
  X(CL__CLAIM_CONVERSATION_STATUS, conversation_status) \
  X(CL__CLAIM_SUBJECT, subject)                         \
  X(CL__CLAIM_CUSTOMER_REF, customer_ref)               \
  X(CL__CLAIM_RESCUED, rescued)
enum cl__claim_col { CL__CLAIM_COLS(CL__COL_ENUM) };

#define CL__NO_OP_COLS(X) X(CL__NO_OP_COMPLETED, completed) X(CL__NO_OP_RESCUED, rescued)
enum cl__no_op_col { CL__NO_OP_COLS(CL__COL_ENUM) };

#define CL__COMPLETE_COLS(X)           \
  X(CL__COMPLETE_RETRIED, retried)     \
  X(CL__COMPLETE_DISCARDED, discarded) \
  X(CL__COMPLETE_RECORDED, recorded)
enum cl__complete_col { CL__COMPLETE_COLS(CL__COL_ENUM) };

#define CL__EXTEND_COLS(X) X(CL__EXTEND_EXTENDED, extended)
enum cl__extend_col { CL__EXTEND_COLS(CL__COL_ENUM) };

#define CL__NEXT_DUE_COLS(X)           \
  X(CL__NEXT_DUE_IN_MS, due_in_ms)     \
  X(CL__NEXT_DUE_LISTENING, listening) \
  X(CL__NEXT_DUE_PAUSED, paused)
enum cl__next_due_col { CL__NEXT_DUE_COLS(CL__COL_ENUM) };

/* Operating the queue (ops.c).  cl_ops_jobs: one job per row. */
#define CL__OPS_JOBS_COLS(X)                       \
  X(CL__OPS_JOBS_ID, id)                           \
  X(CL__OPS_JOBS_STATE, state)                     \
  X(CL__OPS_JOBS_SCHEDULED_AT, scheduled_at)       \
  X(CL__OPS_JOBS_MESSAGE_ID, message_id)           \
  X(CL__OPS_JOBS_CONVERSATION_ID, conversation_id) \
  X(CL__OPS_JOBS_TEMPLATE_ID, template_id)         \
  X(CL__OPS_JOBS_ENVELOPE_ID, bulk_envelope_id)    \
  X(CL__OPS_JOBS_ATTEMPT, attempt)                 \
  X(CL__OPS_JOBS_MAX_ATTEMPTS, max_attempts)       \
  X(CL__OPS_JOBS_ATTEMPTED_AT, attempted_at)       \
  X(CL__OPS_JOBS_FINISHED_AT, finished_at)         \
  X(CL__OPS_JOBS_INSERTED_AT, inserted_at)         \
  X(CL__OPS_JOBS_LAST_ERROR, last_error)
enum cl__ops_jobs_col { CL__OPS_JOBS_COLS(CL__COL_ENUM) };

/* cl_ops_stats: one row per state, the queue-wide values on every row. */
#define CL__OPS_STATS_COLS(X)                     \
  X(CL__OPS_STATS_STATE, state)                   \
  X(CL__OPS_STATS_COUNT, count)                   \
  X(CL__OPS_STATS_OLDEST, oldest_due_age_seconds) \
  X(CL__OPS_STATS_PAUSED, paused)
enum cl__ops_stats_col { CL__OPS_STATS_COLS(CL__COL_ENUM) };

#define CL__OPS_TARGETS_COLS(X) X(CL__OPS_TARGETS_IDS, ids) X(CL__OPS_TARGETS_COUNT, count)
enum cl__ops_targets_col { CL__OPS_TARGETS_COLS(CL__COL_ENUM) };
#define CL__OPS_RETRY_COLS(X) X(CL__OPS_RETRY_RETRIED, retried)
#define CL__OPS_CANCEL_COLS(X) X(CL__OPS_CANCEL_CANCELLED, cancelled)
#define CL__OPS_PAUSE_COLS(X) X(CL__OPS_PAUSE_PAUSED, paused)
#define CL__OPS_PRUNE_COLS(X) X(CL__OPS_PRUNE_DELETED, deleted)
/* The single count of a retry, cancel or prune is column 0. */
enum { CL__OPS_CHANGED = 0 };

#define CL__ENVELOPE_PROGRESS_COLS(X)      \
  X(CL__PROGRESS_ENVELOPE_ID, envelope_id) \
  X(CL__PROGRESS_PENDING, pending)         \
  X(CL__PROGRESS_SENT, sent)               \
  X(CL__PROGRESS_FAILED, failed)           \
  X(CL__PROGRESS_CANCELLED, cancelled)
enum cl__envelope_progress_col { CL__ENVELOPE_PROGRESS_COLS(CL__COL_ENUM) };

/* The migration lock's statements return nothing anyone reads. */
#define CL__MIGRATE_LOCK_COLS(X) X(CL__MIGRATE_LOCKED, locked)
#define CL__MIGRATE_UNLOCK_COLS(X) X(CL__MIGRATE_UNLOCKED, unlocked)
#define CL__MIGRATE_APPLIED_COLS(X) X(CL__MIGRATE_APPLIED_VERSION, version)
enum cl__migrate_applied_col { CL__MIGRATE_APPLIED_COLS(CL__COL_ENUM) };
#define CL__MIGRATE_STATUS_COLS(X)       \
  X(CL__MIGRATE_STATUS_VERSION, version) \
  X(CL__MIGRATE_STATUS_APPLIED_AT, applied_at)
enum cl__migrate_status_col { CL__MIGRATE_STATUS_COLS(CL__COL_ENUM) };

/*
 * XX(id, prepared statement name, file, parameters, result columns).
 * The names are what the server sees (pg_prepared_statements, logs): they
 * stay stable.  Statements that share a result shape share its list, so
 * the caller reads either through the same enum.
 */
#define CL__STMT_MAP(XX)                                                                  \
  XX(TRIGGER, "cl_trigger", trigger, 5, CL__TRIGGER_COLS)                                 \
  XX(BULK, "cl_bulk", bulk, 7, CL__BULK_ROW)                                              \
  XX(REFUSE, "cl_refuse", refuse, 7, CL__REFUSE_ROW)                                      \
  XX(BULK_ROWS, "cl_bulk_rows", bulk_rows, 3, CL__BULK_ROWS_COLS)                         \
  XX(MISSING, "cl_missing", missing, 1, CL__MISSING_COLS)                                 \
  XX(BULK_TX, "cl_bulk_tx", bulk_tx, 7, CL__BULK_ROW)                                     \
  XX(EXISTING, "cl_existing", existing, 3, CL__TRIGGER_COLS)                              \
  XX(PRIOR, "cl_prior", prior, 1, CL__ENVELOPE_COLS)                                      \
  XX(ENVELOPE_GET, "cl_envelope_get", envelope_get, 1, CL__ENVELOPE_COLS)                 \
  XX(ENVELOPES, "cl_envelopes", envelopes, 3, CL__ENVELOPE_COLS)                          \
  XX(CLAIM, "cl_claim", claim, 4, CL__CLAIM_COLS)                                         \
  XX(COMPLETE, "cl_complete", complete, 8, CL__COMPLETE_COLS)                             \
  XX(EXTEND, "cl_extend", extend, 3, CL__EXTEND_COLS)                                     \
  XX(NO_OP, "cl_no_op", no_op, 2, CL__NO_OP_COLS)                                         \
  XX(NEXT_DUE, "cl_next_due", next_due, 1, CL__NEXT_DUE_COLS)                             \
  XX(MIGRATE_LOCK, "cl_migrate_lock", migrate_lock, 1, CL__MIGRATE_LOCK_COLS)             \
  XX(MIGRATE_UNLOCK, "cl_migrate_unlock", migrate_unlock, 1, CL__MIGRATE_UNLOCK_COLS)     \
  XX(MIGRATE_APPLIED, "cl_migrate_applied", migrate_applied, 0, CL__MIGRATE_APPLIED_COLS) \
  XX(MIGRATE_STATUS, "cl_migrate_status", migrate_status, 0, CL__MIGRATE_STATUS_COLS)     \
  XX(OPS_JOBS, "cl_ops_jobs", ops_jobs, 4, CL__OPS_JOBS_COLS)                             \
  XX(OPS_STATS, "cl_ops_stats", ops_stats, 1, CL__OPS_STATS_COLS)                         \
  XX(OPS_TARGETS, "cl_ops_targets", ops_targets, 4, CL__OPS_TARGETS_COLS)                 \
  XX(OPS_RETRY, "cl_ops_retry", ops_retry, 4, CL__OPS_RETRY_COLS)                         \
  XX(OPS_CANCEL, "cl_ops_cancel", ops_cancel, 3, CL__OPS_CANCEL_COLS)                     \
  XX(OPS_PAUSE, "cl_ops_pause", ops_pause, 2, CL__OPS_PAUSE_COLS)                         \
  XX(OPS_PRUNE, "cl_ops_prune", ops_prune, 3, CL__OPS_PRUNE_COLS)                         \
  XX(ENVELOPE_PROGRESS, "cl_envelope_progress", envelope_progress, 1, CL__ENVELOPE_PROGRESS_COLS)

/* The embedded texts (generated), @S standing for the quoted schema. */
#define CL__SQL_DECLARE(id, name, file, nparams, cols) extern const char cl__sql_##file[];
CL__STMT_MAP(CL__SQL_DECLARE)
#undef CL__SQL_DECLARE

/* Not a statement but a script: several statements run as one simple
 * query, never prepared (creating the schema and the migrations table). */
extern const char cl__sql_migrate_bootstrap[];

/* Not a statement either: the DO block that checks, before a hook's
 * transaction commits, that the hook left no session state behind (db.c). */
extern const char cl__sql_session_check[];

/* The number of elements of a parameter array, for the count db.c checks. */
#define CL__NPARAMS(params) ((int)(sizeof(params) / sizeof((params)[0])))

#endif
