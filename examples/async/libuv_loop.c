/*
 * libuv_loop.c - the asynchronous engine on a libuv loop.
 *
 *   libuv_loop TEMPLATE ID...
 *
 * The same program as poll_loop.c on a uv_loop_t: a uv_poll_t watches the
 * engine's completion descriptor and runs the ready callbacks on the loop's
 * thread.  Migrates the database named by CAIRNLOOP_DATABASE_URL, triggers
 * TEMPLATE for each conversation ID, delivers what is due; exits 0 when
 * every operation succeeded.  Build with `pkg-config --cflags --libs libuv`.
 */
/* uv.h uses POSIX types (pthread_rwlock_t) that -std=c11 alone hides. */
// NOLINTNEXTLINE(bugprone-reserved-identifier,cert-dcl37-c,cert-dcl51-cpp): defining a feature-test macro before any header is its documented use
#define _POSIX_C_SOURCE 200809L

#include <cairnloop.h>

#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

/* ---- the adapter: a uv_poll_t on the engine's descriptor ------------ */

typedef struct cl_uv {
  uv_poll_t handle; /* handle.data points back here */
  cl_async *a;
} cl_uv;

static void cl_uv_readable(uv_poll_t *handle, int status, int events) {
  cl_uv *w = handle->data;
  (void)events; /* only UV_READABLE is watched */
  if (status == 0) cl_async_poll(w->a);
}

/* Starts watching `a` on `loop`.  Returns 0 or a libuv error. */
static int cl_uv_attach(cl_uv *w, uv_loop_t *loop, cl_async *a) {
  w->a = a;
  int rc = uv_poll_init(loop, &w->handle, cl_async_fd(a));
  if (rc != 0) return rc;
  w->handle.data = w;
  return uv_poll_start(&w->handle, UV_READABLE, cl_uv_readable);
}

/* Stops watching.  The descriptor belongs to the engine: detach, and let
 * the loop close the handle, before cl_async_close(). */
static void cl_uv_detach(cl_uv *w) { uv_close((uv_handle_t *)&w->handle, NULL); }

/* ---- the host ------------------------------------------------------- */

typedef struct host {
  cl_uv watcher;
  int remaining, failed;
} host;

typedef struct trigger_ctx {
  host *h;
  long long id;
} trigger_ctx;

/* Counts one completion down; after the last one the loop has nothing
 * left to watch and uv_run returns. */
static void done(host *h) {
  if (--h->remaining == 0) cl_uv_detach(&h->watcher);
}

static void report(host *h, const char *what, cl_status st, const cl_error *err) {
  printf("%s: %s: %s\n", what, cl_status_name(st), err->message);
  h->failed++;
}

/* Counts a submission the engine accepted; a refused one (queue full,
 * out of memory) gets no callback. */
static void accepted(host *h, cl_status st, const cl_error *err) {
  if (st == CL_OK) h->remaining++;
  else report(h, "submit", st, err);
}

static void on_migrated(void *ud, cl_status st, const cl_error *err) {
  if (st != CL_OK) report(ud, "migrate", st, err);
  else printf("migrated\n");
  done(ud);
}

static void on_triggered(void *ud, cl_status st, const cl_error *err, cl_trigger_result *res) {
  trigger_ctx *t = ud;
  char what[64];
  snprintf(what, sizeof what, "trigger %lld", t->id);
  if (st != CL_OK) report(t->h, what, st, err);
  else
    printf("%s: message %lld, job %lld%s\n", what, (long long)res->message.id,
           (long long)res->delivery_job.id, res->duplicate ? " (duplicate)" : "");
  done(t->h);
}

static void on_worked(void *ud, cl_status st, const cl_error *err, const cl_work_stats *stats) {
  if (st != CL_OK) report(ud, "work", st, err);
  else printf("work: sent %d, no_op %d, failed %d\n", stats->sent, stats->no_op, stats->failed);
  done(ud);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s TEMPLATE ID...\n", argv[0]);
    return 2;
  }
  cl_async *a = NULL;
  cl_error err;
  if (cl_async_open(&a, NULL, NULL, &err) != CL_OK) {
    fprintf(stderr, "%s: %s\n", cl_status_name(err.code), err.message);
    return 1;
  }
  uv_loop_t *loop = uv_default_loop();
  host h = {0};
  if (cl_uv_attach(&h.watcher, loop, a) != 0) {
    cl_async_close(a, CL_ASYNC_CANCEL);
    return 1;
  }

  int n = argc - 2;
  trigger_ctx *ctx = calloc((size_t)n, sizeof *ctx);
  if (!ctx) return 1;
  /* Operations run in submission order: the triggers after the migration,
   * the delivery after the triggers. */
  accepted(&h, cl_async_migrate(a, on_migrated, &h, &err), &err);
  cl_trigger_opts opts = {.template_id = argv[1]};
  for (int i = 0; i < n; i++) {
    ctx[i] = (trigger_ctx){&h, strtoll(argv[i + 2], NULL, 10)};
    accepted(&h, cl_async_trigger(a, ctx[i].id, &opts, on_triggered, &ctx[i], &err), &err);
  }
  accepted(&h, cl_async_work(a, 100, on_worked, &h, &err), &err);
  if (h.remaining == 0) cl_uv_detach(&h.watcher);

  uv_run(loop, UV_RUN_DEFAULT);

  cl_async_close(a, CL_ASYNC_CANCEL);
  uv_loop_close(loop);
  free(ctx);
  return h.failed ? 1 : 0;
}
