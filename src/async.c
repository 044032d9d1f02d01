/*
 * async.c - the asynchronous engine: one engine thread, a bounded queue of
 * submissions, a queue of completions and an eventfd.
 *
 * One mutex guards both queues and the counters.  The engine thread holds
 * it only to take an operation or hand one back, never while one runs, so
 * a host thread that takes it (submit, poll) never waits for the database.
 * The eventfd mirrors "the completion queue is not empty": it is written
 * when the queue turns non-empty and drained when poll empties it, both
 * under the mutex, so it never says ready with nothing to run nor stays
 * quiet with something waiting.  Uses only the public blocking API.
 */
#include "async.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

typedef enum op_kind {
  OP_TRIGGER,
  OP_BULK,
  OP_WORK,
  OP_WORK_RUN,
  OP_ENVELOPE_GET,
  OP_ENVELOPES_LIST,
  OP_QUERY,
  OP_MIGRATE,
  OP_CALL
} op_kind;

/*
 * One submitted operation.  The copies of its inputs (id arrays, parameter
 * arrays, then strings) live in the same allocation, right after the
 * struct (see op_new), so one free() releases everything.  The submitting
 * thread writes the inputs, the engine thread the outcome; each hands the
 * operation over under the mutex.
 */
typedef struct op {
  struct op *next;
  op_kind kind;
  void *ud;
  union {
    cl_async_trigger_cb trigger;
    cl_async_bulk_cb bulk;
    cl_async_work_cb work;
    cl_async_envelopes_cb envelopes;
    cl_async_rows_cb rows;
    cl_async_done_cb done;
  } cb;
  /* Inputs: pointers into `opts` or the copies, NULL where the caller passed NULL. */
  union {
    struct {
      int64_t id;
      const cl_trigger_opts *opts;
    } trigger;
    struct {
      const int64_t *ids;
      size_t count;
      const cl_bulk_opts *opts;
    } bulk;
    int limit;
    cl_work_options work; /* OP_WORK_RUN; stop is always NULL */
    const char *envelope_id;
    const cl_envelope_query *query;
    struct {
      const char *sql;
      int nparams;
      const char *const *params;
    } sql;
    cl_async_engine_fn fn;
  } in;
  union {
    cl_trigger_opts trigger;
    cl_bulk_opts bulk;
    cl_envelope_query query;
  } opts;
  /* The outcome. */
  cl_status status;
  cl_error err;
  union {
    cl_trigger_result trigger;
    cl_bulk_result bulk;
    cl_work_stats work;
    cl_envelope_list list;
    cl_rows *rows;
  } out;
} op;

/* The copies follow the struct: arrays of int64_t and pointers first. */
_Static_assert(_Alignof(op) >= _Alignof(int64_t) && _Alignof(op) >= _Alignof(char *),
               "the copy block after an op must be aligned for its arrays");

/*
 * The option structs are copied whole, then their strings one by one.  A
 * string field added to one of them must be copied here too: these mirrors
 * of the fields as they are make forgetting it a compile error.
 */
struct trigger_opts_fields {
  const char *template_id, *content;
  int64_t schedule_in;
  const char *actor, *bulk_envelope_id;
};
struct bulk_opts_fields {
  const char *template_id, *rendered_body, *actor, *envelope_id;
  int64_t schedule_in;
};
struct envelope_query_fields {
  const char *template_id, *status;
  int limit;
};
_Static_assert(sizeof(cl_trigger_opts) == sizeof(struct trigger_opts_fields),
               "cl_trigger_opts changed: copy its new fields in cl_async_trigger");
_Static_assert(sizeof(cl_bulk_opts) == sizeof(struct bulk_opts_fields),
               "cl_bulk_opts changed: copy its new fields in cl_async_bulk_trigger");
_Static_assert(sizeof(cl_envelope_query) == sizeof(struct envelope_query_fields),
               "cl_envelope_query changed: copy its new fields in cl_async_envelopes_list");

struct cl_async {
  pthread_t thread;
  int fd;          /* the eventfd of cl_async_fd(), closed by cl_async_close() */
  size_t capacity; /* operations in flight at most */
  pthread_mutex_t mu;
  pthread_cond_t work;  /* the engine thread waits: an operation, or close */
  pthread_cond_t ready; /* cl_async_open waits: the engine is open, or failed */

  /* Guarded by mu. */
  op *todo_head, *todo_tail; /* submitted, not started */
  op *done_head, *done_tail; /* completed, callback not run */
  size_t in_flight;          /* submitted, callback not run */
  bool closing, drain;
  bool started; /* the engine thread has reported how opening went */
  cl_status open_status;
  cl_error open_err;

  /* Borrowed from cl_async_open, read by the engine thread before it
   * reports `started` and never after. */
  const cl_config *open_cfg;
  const cl_async_options *open_opts;

  /* The host thread's own: true while deliver() runs callbacks. */
  bool in_callbacks;
};

static const char closed_message[] = "async: engine closed before the operation ran";

/* ------------------------------------------------------------------ */
/* Operations                                                           */
/* ------------------------------------------------------------------ */

/* A bump copier over the block that follows an op. */
typedef struct copier {
  char *p;
} copier;

static size_t str_size(const char *s) { return s ? strlen(s) + 1 : 0; }

static const char *copy_str(copier *c, const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *d = memcpy(c->p, s, n);
  c->p += n;
  return d;
}

static void *copy_mem(copier *c, const void *s, size_t n) {
  void *d = c->p;
  if (n) memcpy(d, s, n);
  c->p += n;
  return d;
}

/* An op of `kind` with `extra` bytes for copies after it, zeroed but for them. */
static op *op_new(op_kind kind, size_t extra, void *ud, cl_error *err) {
  op *o = extra <= SIZE_MAX - sizeof *o ? malloc(sizeof *o + extra) : NULL;
  if (!o) {
    cl__fail(err, CL_DB_ERROR, "async: out of memory");
    return NULL;
  }
  memset(o, 0, sizeof *o);
  o->kind = kind;
  o->ud = ud;
  cl__ok(&o->err);
  return o;
}

static copier op_copier(op *o) { return (copier){(char *)(o + 1)}; }

/* Keeps err->code == status, whatever a host function left in err. */
static cl_status settle(cl_status st, cl_error *err) {
  if (st == CL_OK) {
    cl__ok(err);
  } else if (err->message[0] == '\0') {
    cl__fail(err, st, "the operation failed with %s", cl_status_name(st));
  } else {
    err->code = st;
  }
  return st;
}

/* Runs one operation on the engine thread. */
static void run(op *o, cl_engine *eng) {
  cl_error *e = &o->err;
  cl_status st = CL_OK;
  switch (o->kind) {
  case OP_TRIGGER:
    st = cl_trigger(eng, o->in.trigger.id, o->in.trigger.opts, &o->out.trigger, e);
    break;
  case OP_BULK:
    st = cl_bulk_trigger(eng, o->in.bulk.ids, o->in.bulk.count, o->in.bulk.opts, &o->out.bulk, e);
    break;
  case OP_WORK:
    st = cl_work(eng, o->in.limit, &o->out.work, e);
    break;
  case OP_WORK_RUN:
    st = cl_work_run(eng, &o->in.work, &o->out.work, NULL, e);
    break;
  case OP_ENVELOPE_GET:
    st = cl_envelope_get(eng, o->in.envelope_id, &o->out.list, e);
    break;
  case OP_ENVELOPES_LIST:
    st = cl_envelopes_list(eng, o->in.query, &o->out.list, e);
    break;
  case OP_QUERY:
    st = cl_query(eng, o->in.sql.sql, o->in.sql.nparams, o->in.sql.params, &o->out.rows, e);
    break;
  case OP_MIGRATE:
    st = cl_migrate(eng, e);
    break;
  case OP_CALL:
    st = o->in.fn(o->ud, eng, e);
    break;
  }
  o->status = settle(st, e);
}

/* Runs an operation's callback on the host thread, then releases its result and the op. */
static void finish(op *o) {
  const cl_error *e = &o->err;
  switch (o->kind) {
  case OP_TRIGGER:
    if (o->cb.trigger) o->cb.trigger(o->ud, o->status, e, &o->out.trigger);
    cl_trigger_result_clear(&o->out.trigger);
    break;
  case OP_BULK:
    if (o->cb.bulk) o->cb.bulk(o->ud, o->status, e, &o->out.bulk);
    cl_bulk_result_clear(&o->out.bulk);
    break;
  case OP_WORK:
  case OP_WORK_RUN:
    if (o->cb.work) o->cb.work(o->ud, o->status, e, &o->out.work);
    break;
  case OP_ENVELOPE_GET:
  case OP_ENVELOPES_LIST:
    if (o->cb.envelopes) o->cb.envelopes(o->ud, o->status, e, &o->out.list);
    cl_envelope_list_clear(&o->out.list);
    break;
  case OP_QUERY:
    if (o->cb.rows) o->cb.rows(o->ud, o->status, e, &o->out.rows);
    cl_rows_free(o->out.rows);
    break;
  case OP_MIGRATE:
  case OP_CALL:
    if (o->cb.done) o->cb.done(o->ud, o->status, e);
    break;
  }
  free(o);
}

/* Runs the callbacks of a list of completed operations, in order. */
static int deliver(cl_async *a, op *list) {
  int n = 0;
  a->in_callbacks = true;
  while (list) {
    op *o = list;
    list = o->next;
    /* Out of the count before its callback, which may submit in its place. */
    pthread_mutex_lock(&a->mu);
    a->in_flight--;
    pthread_mutex_unlock(&a->mu);
    finish(o);
    n++;
  }
  a->in_callbacks = false;
  return n;
}

/* ------------------------------------------------------------------ */
/* The engine thread                                                    */
/* ------------------------------------------------------------------ */

static cl_status start_engine(const cl_async *a, cl_engine **eng, cl_error *err) {
  const cl_async_options *opts = a->open_opts;
  cl_status st = cl_open(eng, a->open_cfg, err);
  for (size_t i = 0; st == CL_OK && i < opts->policy_count; i++)
    st = cl_load_policy(*eng, opts->policies[i], err);
  if (st == CL_OK && opts->setup) {
    cl__ok(err);
    st = settle(opts->setup(opts->setup_ud, *eng, err), err);
  }
  return st;
}

static void *engine_main(void *arg) {
  cl_async *a = arg;
  cl_engine *eng = NULL;
  cl_error err;
  pthread_setname_np(pthread_self(), "cairnloop-async");
  cl_status st = start_engine(a, &eng, &err);

  pthread_mutex_lock(&a->mu);
  a->open_status = st;
  a->open_err = err;
  a->started = true;
  pthread_cond_signal(&a->ready);
  if (st != CL_OK) {
    /* cl_async_open joins and frees `a` now: touch nothing of it. */
    pthread_mutex_unlock(&a->mu);
    cl_close(eng);
    return NULL;
  }
  for (;;) {
    while (!a->todo_head && !a->closing) pthread_cond_wait(&a->work, &a->mu);
    if (a->closing && (!a->drain || !a->todo_head)) break;
    op *o = a->todo_head;
    a->todo_head = o->next;
    if (!a->todo_head) a->todo_tail = NULL;
    pthread_mutex_unlock(&a->mu);

    run(o, eng);

    pthread_mutex_lock(&a->mu);
    o->next = NULL;
    if (a->done_tail) {
      a->done_tail->next = o;
    } else {
      a->done_head = o;
      /* Cannot fail: the counter is drained whenever the queue is emptied,
       * so it never nears its 2^64 - 2 limit. */
      (void)eventfd_write(a->fd, 1);
    }
    a->done_tail = o;
  }
  pthread_mutex_unlock(&a->mu);
  /* On this thread, as everything the engine calls: hooks are released here. */
  cl_close(eng);
  return NULL;
}

/* ------------------------------------------------------------------ */
/* Lifecycle                                                            */
/* ------------------------------------------------------------------ */

void cl_async_options_init(cl_async_options *opts) {
  if (opts) memset(opts, 0, sizeof *opts);
}

/* A system error as "what: reason". */
static cl_status sys_fail(cl_error *err, const char *what, int errnum) {
  char buf[128];
  return cl__fail(err, CL_DB_ERROR, "async: %s: %s", what, strerror_r(errnum, buf, sizeof buf));
}

cl_status cl_async_open(cl_async **out, const cl_config *cfg, const cl_async_options *opts,
                        cl_error *err) {
  cl_async_options defaults;
  cl_status st;
  int rc;
  if (!out) return cl__fail(err, CL_INVALID_ARGUMENT, "async: no place to store the engine");
  *out = NULL;
  if (!opts) {
    cl_async_options_init(&defaults);
    opts = &defaults;
  }
  if (opts->policy_count > 0 && !opts->policies)
    return cl__fail(err, CL_INVALID_ARGUMENT, "async: policy_count is %zu but policies is NULL",
                    opts->policy_count);
  /* cl_async_poll counts the callbacks it runs in an int. */
  if (opts->queue_capacity > INT_MAX)
    return cl__fail(err, CL_INVALID_ARGUMENT, "async: queue_capacity %zu exceeds %d",
                    opts->queue_capacity, INT_MAX);

  cl_async *a = calloc(1, sizeof *a);
  if (!a) return cl__fail(err, CL_DB_ERROR, "async: out of memory");
  a->capacity = opts->queue_capacity ? opts->queue_capacity : CL_ASYNC_DEFAULT_QUEUE_CAPACITY;
  a->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (a->fd < 0) {
    st = sys_fail(err, "eventfd", errno);
    goto fail_fd;
  }
  if ((rc = pthread_mutex_init(&a->mu, NULL)) != 0) {
    st = sys_fail(err, "mutex", rc);
    goto fail_mutex;
  }
  if ((rc = pthread_cond_init(&a->work, NULL)) != 0) {
    st = sys_fail(err, "condition variable", rc);
    goto fail_work;
  }
  if ((rc = pthread_cond_init(&a->ready, NULL)) != 0) {
    st = sys_fail(err, "condition variable", rc);
    goto fail_ready;
  }
  a->open_cfg = cfg;
  a->open_opts = opts;

  /* The thread inherits the mask: with every signal blocked there, the
   * host's handlers (and signalfd, sigwait) see all its signals. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  rc = pthread_create(&a->thread, NULL, engine_main, a);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    st = sys_fail(err, "cannot start the engine thread", rc);
    goto fail_thread;
  }

  pthread_mutex_lock(&a->mu);
  while (!a->started) pthread_cond_wait(&a->ready, &a->mu);
  pthread_mutex_unlock(&a->mu);
  a->open_cfg = NULL;
  a->open_opts = NULL;
  if (a->open_status != CL_OK) {
    pthread_join(a->thread, NULL);
    st = a->open_status;
    if (err) *err = a->open_err;
    goto fail_thread;
  }
  *out = a;
  cl__ok(err);
  return CL_OK;

fail_thread:
  pthread_cond_destroy(&a->ready);
fail_ready:
  pthread_cond_destroy(&a->work);
fail_work:
  pthread_mutex_destroy(&a->mu);
fail_mutex:
  close(a->fd);
fail_fd:
  free(a);
  return st;
}

/* True on the engine thread (a hook, cl_async_call's function): a->thread
 * was stored before any operation was queued, under the mutex. */
static bool on_engine_thread(const cl_async *a) { return pthread_equal(pthread_self(), a->thread); }

void cl_async_close(cl_async *a, cl_async_close_mode mode) {
  /* From a callback, deliver() is still walking its list; from the engine
   * thread, close would wait for itself: refuse both. */
  if (!a || on_engine_thread(a) || a->in_callbacks) return;
  pthread_mutex_lock(&a->mu);
  a->closing = true;
  a->drain = mode == CL_ASYNC_DRAIN;
  pthread_cond_signal(&a->work);
  pthread_mutex_unlock(&a->mu);
  pthread_join(a->thread, NULL);

  /* The engine thread is gone, its engine closed: what it left queued
   * never started.  It completes after the ones that ran, in order. */
  pthread_mutex_lock(&a->mu);
  for (op *o = a->todo_head; o; o = o->next)
    o->status = cl__fail(&o->err, CL_DB_ERROR, "%s", closed_message);
  if (a->todo_head) {
    if (a->done_tail) a->done_tail->next = a->todo_head;
    else a->done_head = a->todo_head;
  }
  op *list = a->done_head;
  a->todo_head = a->todo_tail = a->done_head = a->done_tail = NULL;
  pthread_mutex_unlock(&a->mu);
  deliver(a, list);

  pthread_cond_destroy(&a->ready);
  pthread_cond_destroy(&a->work);
  pthread_mutex_destroy(&a->mu);
  close(a->fd);
  free(a);
}

/* ------------------------------------------------------------------ */
/* Completions                                                          */
/* ------------------------------------------------------------------ */

int cl_async_fd(const cl_async *a) { return a ? a->fd : -1; }

int cl_async_poll(cl_async *a) {
  /* Callbacks run on the host's thread only, and never nested. */
  if (!a || on_engine_thread(a) || a->in_callbacks) return 0;
  pthread_mutex_lock(&a->mu);
  op *list = a->done_head;
  if (list) {
    eventfd_t ignored;
    a->done_head = a->done_tail = NULL;
    /* Written when the queue turned non-empty, so it cannot be 0 here. */
    (void)eventfd_read(a->fd, &ignored);
  }
  pthread_mutex_unlock(&a->mu);
  return list ? deliver(a, list) : 0;
}

size_t cl_async_pending(cl_async *a) {
  if (!a) return 0;
  pthread_mutex_lock(&a->mu);
  size_t n = a->in_flight;
  pthread_mutex_unlock(&a->mu);
  return n;
}

/* ------------------------------------------------------------------ */
/* Submissions                                                          */
/* ------------------------------------------------------------------ */

#define ASYNC_ENTER(a, err)                                                                       \
  do {                                                                                            \
    if (!(a))                                                                                     \
      return cl__fail((err), CL_INVALID_ARGUMENT, "%s: no asynchronous engine (NULL)", __func__); \
  } while (0)

/* Queues `o` (which it owns from now on, queued or freed). */
static cl_status submit(cl_async *a, op *o, cl_error *err) {
  pthread_mutex_lock(&a->mu);
  if (a->closing) {
    pthread_mutex_unlock(&a->mu);
    free(o);
    return cl__fail(err, CL_INVALID_ARGUMENT, "async: engine is closing");
  }
  if (a->in_flight >= a->capacity) {
    size_t n = a->in_flight;
    pthread_mutex_unlock(&a->mu);
    free(o);
    return cl__fail(err, CL_INVALID_ARGUMENT,
                    "async: queue full: %zu operations in flight (queue_capacity %zu)", n,
                    a->capacity);
  }
  if (a->todo_tail) a->todo_tail->next = o;
  else a->todo_head = o;
  a->todo_tail = o;
  a->in_flight++;
  pthread_cond_signal(&a->work);
  pthread_mutex_unlock(&a->mu);
  cl__ok(err);
  return CL_OK;
}

cl_status cl_async_trigger(cl_async *a, int64_t conversation_id, const cl_trigger_opts *opts,
                           cl_async_trigger_cb cb, void *ud, cl_error *err) {
  ASYNC_ENTER(a, err);
  size_t extra = opts ? str_size(opts->template_id) + str_size(opts->content) +
                            str_size(opts->actor) + str_size(opts->bulk_envelope_id)
                      : 0;
  op *o = op_new(OP_TRIGGER, extra, ud, err);
  if (!o) return CL_DB_ERROR;
  o->cb.trigger = cb;
  o->in.trigger.id = conversation_id;
  if (opts) {
    copier c = op_copier(o);
    cl_trigger_opts *t = &o->opts.trigger;
    *t = *opts;
    t->template_id = copy_str(&c, opts->template_id);
    t->content = copy_str(&c, opts->content);
    t->actor = copy_str(&c, opts->actor);
    t->bulk_envelope_id = copy_str(&c, opts->bulk_envelope_id);
    o->in.trigger.opts = t;
  }
  return submit(a, o, err);
}

cl_status cl_async_bulk_trigger(cl_async *a, const int64_t *conversation_ids, size_t count,
                                const cl_bulk_opts *opts, cl_async_bulk_cb cb, void *ud,
                                cl_error *err) {
  ASYNC_ENTER(a, err);
  /* NULL ids stay NULL: the engine reports them, as for any caller. */
  size_t ids_size = 0;
  if (conversation_ids) {
    if (count > SIZE_MAX / 2 / sizeof *conversation_ids)
      return cl__fail(err, CL_DB_ERROR, "async: out of memory");
    ids_size = count * sizeof *conversation_ids;
  }
  size_t extra = ids_size + (opts ? str_size(opts->template_id) + str_size(opts->rendered_body) +
                                        str_size(opts->actor) + str_size(opts->envelope_id)
                                  : 0);
  op *o = op_new(OP_BULK, extra, ud, err);
  if (!o) return CL_DB_ERROR;
  o->cb.bulk = cb;
  copier c = op_copier(o);
  o->in.bulk.ids = conversation_ids ? copy_mem(&c, conversation_ids, ids_size) : NULL;
  o->in.bulk.count = count;
  if (opts) {
    cl_bulk_opts *b = &o->opts.bulk;
    *b = *opts;
    b->template_id = copy_str(&c, opts->template_id);
    b->rendered_body = copy_str(&c, opts->rendered_body);
    b->actor = copy_str(&c, opts->actor);
    b->envelope_id = copy_str(&c, opts->envelope_id);
    o->in.bulk.opts = b;
  }
  return submit(a, o, err);
}

cl_status cl_async_work(cl_async *a, int limit, cl_async_work_cb cb, void *ud, cl_error *err) {
  ASYNC_ENTER(a, err);
  op *o = op_new(OP_WORK, 0, ud, err);
  if (!o) return CL_DB_ERROR;
  o->cb.work = cb;
  o->in.limit = limit;
  return submit(a, o, err);
}

cl_status cl_async_work_run(cl_async *a, const cl_work_options *opts, cl_async_work_cb cb, void *ud,
                            cl_error *err) {
  ASYNC_ENTER(a, err);
  if (!opts) return cl__fail(err, CL_INVALID_ARGUMENT, "cl_async_work_run: no options");
  op *o = op_new(OP_WORK_RUN, 0, ud, err);
  if (!o) return CL_DB_ERROR;
  o->cb.work = cb;
  o->in.work = *opts;
  o->in.work.stop = NULL; /* cl_async_close is how a host stops it */
  return submit(a, o, err);
}

cl_status cl_async_envelope_get(cl_async *a, const char *envelope_id, cl_async_envelopes_cb cb,
                                void *ud, cl_error *err) {
  ASYNC_ENTER(a, err);
  op *o = op_new(OP_ENVELOPE_GET, str_size(envelope_id), ud, err);
  if (!o) return CL_DB_ERROR;
  o->cb.envelopes = cb;
  copier c = op_copier(o);
  o->in.envelope_id = copy_str(&c, envelope_id);
  return submit(a, o, err);
}

cl_status cl_async_envelopes_list(cl_async *a, const cl_envelope_query *query,
                                  cl_async_envelopes_cb cb, void *ud, cl_error *err) {
  ASYNC_ENTER(a, err);
  size_t extra = query ? str_size(query->template_id) + str_size(query->status) : 0;
  op *o = op_new(OP_ENVELOPES_LIST, extra, ud, err);
  if (!o) return CL_DB_ERROR;
  o->cb.envelopes = cb;
  if (query) {
    copier c = op_copier(o);
    cl_envelope_query *q = &o->opts.query;
    *q = *query;
    q->template_id = copy_str(&c, query->template_id);
    q->status = copy_str(&c, query->status);
    o->in.query = q;
  }
  return submit(a, o, err);
}

cl_status cl_async_query(cl_async *a, const char *sql, int nparams, const char *const *params,
                         cl_async_rows_cb cb, void *ud, cl_error *err) {
  ASYNC_ENTER(a, err);
  /* A NULL or negative parameter list is passed on as it is, for the
   * engine to judge. */
  bool copy_params = params && nparams > 0;
  size_t extra = str_size(sql);
  if (copy_params) {
    extra += (size_t)nparams * sizeof *params;
    for (int i = 0; i < nparams; i++) extra += str_size(params[i]);
  }
  op *o = op_new(OP_QUERY, extra, ud, err);
  if (!o) return CL_DB_ERROR;
  o->cb.rows = cb;
  copier c = op_copier(o);
  o->in.sql.nparams = nparams;
  if (copy_params) {
    const char **p = copy_mem(&c, params, (size_t)nparams * sizeof *params);
    for (int i = 0; i < nparams; i++) p[i] = copy_str(&c, params[i]);
    o->in.sql.params = p;
  }
  o->in.sql.sql = copy_str(&c, sql);
  return submit(a, o, err);
}

cl_status cl_async_migrate(cl_async *a, cl_async_done_cb cb, void *ud, cl_error *err) {
  ASYNC_ENTER(a, err);
  op *o = op_new(OP_MIGRATE, 0, ud, err);
  if (!o) return CL_DB_ERROR;
  o->cb.done = cb;
  return submit(a, o, err);
}

cl_status cl_async_call(cl_async *a, cl_async_engine_fn fn, cl_async_done_cb cb, void *ud,
                        cl_error *err) {
  ASYNC_ENTER(a, err);
  if (!fn) return cl__fail(err, CL_INVALID_ARGUMENT, "cl_async_call: no function (NULL)");
  op *o = op_new(OP_CALL, 0, ud, err);
  if (!o) return CL_DB_ERROR;
  o->cb.done = cb;
  o->in.fn = fn;
  return submit(a, o, err);
}
