/*
 * poll_loop.c - the asynchronous engine in a plain poll() loop.
 *
 *   poll_loop TEMPLATE ID...
 *
 * Migrates the database named by CAIRNLOOP_DATABASE_URL, triggers TEMPLATE
 * for each conversation ID, delivers what is due, and prints each outcome.
 * The loop ticks every 16 ms (a 60 Hz game loop) and never blocks on the
 * database: it waits in poll() on its own descriptors plus the engine's
 * completion descriptor, and runs the completed operations' callbacks,
 * on its own thread, with cl_async_poll().  Exits 0 when every operation
 * succeeded.
 */
#include <cairnloop.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- the adapter: the engine's descriptor in a poll() set ---------- */

/* Fills `pfd` to watch the engine's completions. */
static void cl_poll_watch(cl_async *a, struct pollfd *pfd) {
  pfd->fd = cl_async_fd(a);
  pfd->events = POLLIN;
  pfd->revents = 0;
}

/* After poll(): runs the ready callbacks if the descriptor said so. */
static int cl_poll_dispatch(cl_async *a, const struct pollfd *pfd) {
  return (pfd->revents & POLLIN) ? cl_async_poll(a) : 0;
}

/* ---- the host ------------------------------------------------------- */

typedef struct host {
  int failed;
} host;

typedef struct trigger_ctx {
  host *h;
  long long id;
} trigger_ctx;

static void report(host *h, const char *what, cl_status st, const cl_error *err) {
  printf("%s: %s: %s\n", what, cl_status_name(st), err->message);
  h->failed++;
}

static void on_migrated(void *ud, cl_status st, const cl_error *err) {
  if (st != CL_OK) report(ud, "migrate", st, err);
  else printf("migrated\n");
}

static void on_triggered(void *ud, cl_status st, const cl_error *err, cl_trigger_result *res) {
  trigger_ctx *t = ud;
  char what[64];
  snprintf(what, sizeof what, "trigger %lld", t->id);
  if (st != CL_OK) report(t->h, what, st, err);
  else
    printf("%s: message %lld, job %lld%s\n", what, (long long)res->message.id,
           (long long)res->delivery_job.id, res->duplicate ? " (duplicate)" : "");
}

static void on_worked(void *ud, cl_status st, const cl_error *err, const cl_work_stats *stats) {
  if (st != CL_OK) report(ud, "work", st, err);
  else printf("work: sent %d, no_op %d, failed %d\n", stats->sent, stats->no_op, stats->failed);
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

  host h = {0};
  int n = argc - 2;
  trigger_ctx *ctx = calloc((size_t)n, sizeof *ctx);
  if (!ctx) return 1;
  /* Operations run in submission order: the triggers after the migration,
   * the delivery after the triggers. */
  /* A refused submission (queue full, out of memory) gets no callback. */
  if (cl_async_migrate(a, on_migrated, &h, &err) != CL_OK) report(&h, "submit", err.code, &err);
  cl_trigger_opts opts = {.template_id = argv[1]};
  for (int i = 0; i < n; i++) {
    ctx[i] = (trigger_ctx){&h, strtoll(argv[i + 2], NULL, 10)};
    if (cl_async_trigger(a, ctx[i].id, &opts, on_triggered, &ctx[i], &err) != CL_OK)
      report(&h, "submit", err.code, &err);
  }
  if (cl_async_work(a, 100, on_worked, &h, &err) != CL_OK) report(&h, "submit", err.code, &err);

  /* The loop: one tick per 16 ms; completions wake it in between. */
  while (cl_async_pending(a) > 0) {
    struct pollfd fds[1];
    cl_poll_watch(a, &fds[0]);
    if (poll(fds, 1, 16) < 0 && errno != EINTR) break;
    cl_poll_dispatch(a, &fds[0]);
    /* ... the rest of the tick: game logic, rendering ... */
  }

  cl_async_close(a, CL_ASYNC_DRAIN);
  free(ctx);
  return h.failed ? 1 : 0;
}
