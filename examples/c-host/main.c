/*
 * main.c - a 60 Hz game server loop with the Cairnloop engine embedded,
 * through the asynchronous API: the loop never waits for the database.
 *
 * Each tick (16.7 ms) the server runs ~2 ms of simulated game work, polls
 * the engine's completions once (cl_async_fd + cl_async_poll), submits one
 * delivery slice (cl_async_work) if none is in flight, and every 30 ticks a
 * raid ends: a 1,000-recipient compensation bulk (cl_async_bulk_trigger)
 * and 3 rage-quit check-ins (cl_async_trigger).  The engine, its policy
 * (policy.lua, Lua 5.4) and the notifier (C, installed by the setup
 * function) run on the engine's own thread; every completion callback runs
 * here, on the loop's thread.  After the last tick the loop keeps ticking,
 * with no new events, until every message it wrote is delivered.
 *
 * It prints its tick statistics (ticks over budget, p50/p99/max tick time)
 * and the completion latency of each kind of operation, then checks its own
 * figures: no operation lost (each submission completed once), every
 * completion on the host thread, no failed call, every message written
 * marked sent.  Exits 0 only if all hold; ticks over budget are reported,
 * not judged (they depend on the machine).
 *
 * Usage: game-server [--ticks N] [POLICY.lua]     (default: 1200, policy.lua)
 * Environment: CAIRNLOOP_DATABASE_URL (else libpq's PG* defaults),
 * GAME_SEED, GAME_NIGHT (1; names the raid envelopes, so a replayed night
 * pays nothing twice).  Players are the conversations whose customer_ref is
 * "player:<number>"; the first 1,000 make up the raid.
 */
// NOLINTNEXTLINE(bugprone-reserved-identifier,cert-dcl37-c,cert-dcl51-cpp): defining a feature-test macro before any header is its documented use
#define _POSIX_C_SOURCE 200809L

#include <cairnloop.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TICK_NS 16666667LL     /* 60 Hz */
#define GAME_WORK_NS 2000000LL /* the simulation's share of a tick */
#define EVENT_EVERY 30         /* ticks between raids: twice a second */
#define RAID_SIZE 1000         /* recipients of one compensation bulk */
#define CHECKINS_PER_RAID 3
/* Jobs per delivery slice: a raid writes 1,000 messages every 30 ticks,
 * so slices of 250 keep up with a few to spare. */
#define WORK_LIMIT 250
/* After the last tick: how long delivery may take to catch up. */
#define DRAIN_TIMEOUT_NS 30000000000LL

enum { K_TRIGGER, K_BULK, K_WORK, K_QUERY, NKINDS };
static const char *const kind_names[NKINDS] = {"trigger", "bulk", "work", "query"};

/* Durations in ns, appended as they are measured. */
typedef struct series {
  long long *v;
  size_t n, cap;
} series;

typedef struct game {
  cl_async *a;
  pthread_t host;
  int64_t *players;
  size_t nplayers;
  uint32_t rng;
  int night;

  int64_t *created; /* messages this run wrote */
  size_t ncreated, created_cap;

  int submitted[NKINDS], completed[NKINDS];
  series latency[NKINDS];
  series ticks;
  int off_thread; /* callbacks run on another thread: must stay 0 */
  int errors;     /* failed calls */
  bool work_in_flight;
  int ragequits, checkins, duplicate_checkins;
  int raids, envelopes, replayed_envelopes, raid_messages;
  long work_sent, work_failed;
  long query_result[2];  /* sent, total: the closing check */
  atomic_long delivered; /* counted by the notifier, on the engine thread */
} game;

/* The context of one submission: its kind and when it was submitted. */
typedef struct op {
  game *g;
  int kind;
  long long at;
  int64_t player;
} op;

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static bool push(series *s, long long v) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? 2 * s->cap : 256;
    long long *nv = realloc(s->v, cap * sizeof *nv);
    if (nv == NULL) return false;
    s->v = nv;
    s->cap = cap;
  }
  s->v[s->n++] = v;
  return true;
}

static int cmp_ll(const void *x, const void *y) {
  long long a = *(const long long *)x, b = *(const long long *)y;
  return (a > b) - (a < b);
}

/* The q-quantile (nearest rank) of a sorted series, in ms. */
static double quantile_ms(const series *s, double q) {
  size_t i;
  if (s->n == 0) return 0;
  i = (size_t)(q * (double)s->n + 0.999999);
  if (i < 1) i = 1;
  if (i > s->n) i = s->n;
  return (double)s->v[i - 1] / 1e6;
}

static uint32_t next_random(game *g) {
  uint32_t x = g->rng;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return g->rng = x;
}

static long env_long(const char *name, long fallback, long min, long max) {
  const char *s = getenv(name);
  char *end;
  long v;
  if (s == NULL || *s == '\0') return fallback;
  v = strtol(s, &end, 10);
  if (*end != '\0' || v < min || v > max) {
    fprintf(stderr, "game-server: %s must be an integer from %ld to %ld\n", name, min, max);
    exit(2);
  }
  return v;
}

/* The engine's log sink; runs on the engine thread (stderr is thread-safe). */
static void log_line(void *ud, cl_log_level level, const char *line) {
  (void)ud;
  fprintf(stderr, "cairnloop [%s] %s\n", cl_log_level_name(level), line);
}

static void failed(game *g, const char *what, const cl_error *err) {
  fprintf(stderr, "game-server: %s: %s: %s\n", what, cl_status_name(err->code), err->message);
  g->errors++;
}

static void track(game *g, int64_t id) {
  if (g->ncreated == g->created_cap) {
    size_t cap = g->created_cap ? 2 * g->created_cap : 1024;
    int64_t *v = realloc(g->created, cap * sizeof *v);
    if (v == NULL) {
      fprintf(stderr, "game-server: out of memory\n");
      g->errors++;
      return;
    }
    g->created = v;
    g->created_cap = cap;
  }
  g->created[g->ncreated++] = id;
}

/* Every callback starts here: the operation completed, on which thread,
 * after how long.  Returns its context's game. */
static game *completed(op *o) {
  game *g = o->g;
  if (!pthread_equal(pthread_self(), g->host)) g->off_thread++;
  g->completed[o->kind]++;
  if (!push(&g->latency[o->kind], now_ns() - o->at)) g->errors++;
  return g;
}

static op *new_op(game *g, int kind) {
  op *o = malloc(sizeof *o);
  if (o == NULL) return NULL;
  o->g = g;
  o->kind = kind;
  o->at = now_ns();
  o->player = 0;
  return o;
}

/* ------------------------------------------------------------------ */
/* The engine thread: setup and notifier                                */
/* ------------------------------------------------------------------ */

/* The game's network layer.  Runs on the engine thread, inside a delivery
 * slice: it only counts (atomically: the loop reads the count). */
static cl_status push_to_client(void *ud, const cl_message *m, const cl_conversation *c,
                                const char *idempotency_key, int attempt, cl_error *err) {
  game *g = ud;
  (void)m, (void)c, (void)idempotency_key, (void)attempt, (void)err;
  atomic_fetch_add(&g->delivered, 1);
  return CL_OK;
}

/* Runs once on the engine thread before any operation. */
static cl_status setup(void *ud, cl_engine *eng, cl_error *err) {
  cl_notifier n;
  memset(&n, 0, sizeof n);
  n.deliver = push_to_client;
  n.ud = ud;
  return cl_set_notifier(eng, &n, err);
}

/* ------------------------------------------------------------------ */
/* Completions (the host thread)                                        */
/* ------------------------------------------------------------------ */

static void on_checkin(void *ud, cl_status st, const cl_error *err, cl_trigger_result *res) {
  op *o = ud;
  game *g = completed(o);
  if (st != CL_OK) {
    failed(g, "check-in", err);
  } else if (res->duplicate) {
    g->duplicate_checkins++;
  } else {
    g->checkins++;
    track(g, res->message.id);
  }
  free(o);
}

static void on_raid_paid(void *ud, cl_status st, const cl_error *err, cl_bulk_result *res) {
  op *o = ud;
  game *g = completed(o);
  if (st != CL_OK) {
    failed(g, "raid compensation", err);
  } else if (res->replayed) {
    g->replayed_envelopes++;
  } else {
    g->envelopes++;
    g->raid_messages += (int)res->count;
    for (size_t i = 0; i < res->count; i++) track(g, res->messages[i].id);
  }
  free(o);
}

static void on_worked(void *ud, cl_status st, const cl_error *err, const cl_work_stats *s) {
  op *o = ud;
  game *g = completed(o);
  g->work_in_flight = false;
  if (st != CL_OK) {
    failed(g, "work", err);
  } else {
    g->work_sent += s->sent + s->no_op;
    g->work_failed += s->failed;
  }
  free(o);
}

static void on_players(void *ud, cl_status st, const cl_error *err, cl_rows **rows) {
  op *o = ud;
  game *g = completed(o);
  int n;
  if (st != CL_OK) {
    failed(g, "players", err);
  } else if ((n = cl_rows_count(*rows)) > 0 &&
             (g->players = calloc((size_t)n, sizeof *g->players)) != NULL) {
    for (int i = 0; i < n; i++) g->players[i] = strtoll(cl_rows_value(*rows, i, 0), NULL, 10);
    g->nplayers = (size_t)n;
  }
  free(o);
}

static void on_counted(void *ud, cl_status st, const cl_error *err, cl_rows **rows) {
  op *o = ud;
  game *g = completed(o);
  if (st != CL_OK) {
    failed(g, "final check", err);
  } else {
    g->query_result[0] = strtol(cl_rows_value(*rows, 0, 0), NULL, 10);
    g->query_result[1] = strtol(cl_rows_value(*rows, 0, 1), NULL, 10);
  }
  free(o);
}

/* ------------------------------------------------------------------ */
/* Submissions (the host thread)                                        */
/* ------------------------------------------------------------------ */

static void submitted(game *g, op *o, cl_status st, const cl_error *err) {
  if (st == CL_OK) {
    g->submitted[o->kind]++;
  } else {
    failed(g, "submit", err);
    free(o);
  }
}

static void rage_quit(game *g) {
  cl_trigger_opts t;
  cl_error err;
  op *o = new_op(g, K_TRIGGER);
  if (o == NULL) {
    g->errors++;
    return;
  }
  memset(&t, 0, sizeof t);
  t.template_id = "ragequit_checkin_v1";
  t.content = "Rough match. Anything we can help with? Reply here and a GM will pick it up.";
  t.actor = "system:matchmaker";
  o->player = g->players[next_random(g) % g->nplayers];
  g->ragequits++;
  /* The options are copied: `t` may go out of scope at once. */
  submitted(g, o, cl_async_trigger(g->a, o->player, &t, on_checkin, o, &err), &err);
}

/* Compensation to the raid's 1,000 players in one envelope, whose id comes
 * from the night and the raid: a replayed night gets it back, unpaid. */
static void raid_wipe(game *g, int raid) {
  cl_bulk_opts b;
  cl_error err;
  char envelope_id[CL_UUID_LEN + 1];
  size_t n = g->nplayers < RAID_SIZE ? g->nplayers : RAID_SIZE;
  op *o = new_op(g, K_BULK);
  if (o == NULL) {
    g->errors++;
    return;
  }
  memset(&b, 0, sizeof b);
  snprintf(envelope_id, sizeof envelope_id, "9a1d0000-%04x-4%03x-8000-000000000000",
           (unsigned)g->night & 0xffff, (unsigned)raid & 0xfff);
  b.template_id = "raid_wipe_comp_v1";
  b.rendered_body = "Tough wipe in the Sunken Spire. Tonight's repair bills are on us.";
  b.actor = "gm:night_shift";
  b.envelope_id = envelope_id;
  g->raids++;
  submitted(g, o, cl_async_bulk_trigger(g->a, g->players, n, &b, on_raid_paid, o, &err), &err);
}

static void deliver(game *g) {
  cl_error err;
  op *o;
  if (g->work_in_flight) return; /* one slice at a time: never pile up */
  if ((o = new_op(g, K_WORK)) == NULL) {
    g->errors++;
    return;
  }
  g->work_in_flight = true;
  submitted(g, o, cl_async_work(g->a, WORK_LIMIT, on_worked, o, &err), &err);
  if (g->submitted[K_WORK] == g->completed[K_WORK]) g->work_in_flight = false;
}

/* The simulation's share of the tick, spent on the CPU. */
static void game_work(void) {
  long long until = now_ns() + GAME_WORK_NS;
  volatile uint32_t x = 1;
  while (now_ns() < until)
    for (int i = 0; i < 1000; i++) x = x * 1664525u + 1013904223u;
}

static void sleep_until(long long t) {
  struct timespec ts = {(time_t)(t / 1000000000LL), (long)(t % 1000000000LL)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0) {
  }
}

/* Start-up and shut-down only: waits for one kind's submissions to complete. */
static void wait_for(game *g, int kind) {
  while (g->completed[kind] < g->submitted[kind]) {
    sleep_until(now_ns() + 1000000);
    cl_async_poll(g->a);
  }
}

/* The literal "{1,2,3}" of the created ids (malloc'd). */
static char *ids_literal(const game *g) {
  char *out = malloc(g->ncreated * 21 + 3), *p = out;
  if (out == NULL) return NULL;
  *p++ = '{';
  for (size_t i = 0; i < g->ncreated; i++)
    p += sprintf(p, "%s%" PRId64, i ? "," : "", g->created[i]);
  p[0] = '}';
  p[1] = '\0';
  return out;
}

static void print_stats(game *g, long ticks) {
  int over = 0;
  for (size_t i = 0; i < g->ticks.n; i++)
    if (g->ticks.v[i] > TICK_NS) over++;
  qsort(g->ticks.v, g->ticks.n, sizeof *g->ticks.v, cmp_ll);
  printf("ticks: %zu (%ld with events, then delivery catching up) over_budget=%d"
         " p50=%.2fms p99=%.2fms max=%.2fms budget=%.1fms\n",
         g->ticks.n, ticks, over, quantile_ms(&g->ticks, 0.5), quantile_ms(&g->ticks, 0.99),
         quantile_ms(&g->ticks, 1.0), (double)TICK_NS / 1e6);
  for (int k = 0; k < NKINDS; k++) {
    series *s = &g->latency[k];
    qsort(s->v, s->n, sizeof *s->v, cmp_ll);
    printf("latency %s: n=%zu p50=%.2fms p99=%.2fms max=%.2fms\n", kind_names[k], s->n,
           quantile_ms(s, 0.5), quantile_ms(s, 0.99), quantile_ms(s, 1.0));
  }
}

int main(int argc, char **argv) {
  const char *policy = "policy.lua";
  long ticks = 1200;
  game g;
  cl_config cfg;
  cl_async_options ao;
  cl_error err;
  char sql[256];
  long long next, drain_deadline = 0;
  long tick;
  int status, lost = 0;
  op *o;

  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--ticks") == 0 && i + 1 < argc) {
      char *end;
      ticks = strtol(argv[++i], &end, 10);
      if (*end != '\0' || ticks < 1 || ticks > 1000000) {
        fprintf(stderr, "game-server: --ticks must be an integer from 1 to 1000000\n");
        return 2;
      }
    } else {
      policy = argv[i];
    }
  }
  memset(&g, 0, sizeof g);
  g.host = pthread_self();
  g.rng = (uint32_t)env_long("GAME_SEED", 20260527, 1, 0x7fffffff);
  g.night = (int)env_long("GAME_NIGHT", 1, 0, 0xffff);
  atomic_init(&g.delivered, 0);

  cl_config_init(&cfg); /* database: CAIRNLOOP_DATABASE_URL */
  cfg.log = log_line;
  cfg.max_batch_size = RAID_SIZE; /* the server's own cap: a raid is one envelope */
  cl_async_options_init(&ao);
  ao.policies = &policy;
  ao.policy_count = 1;
  ao.setup = setup;
  ao.setup_ud = &g;
  /* Start-up may wait: it opens the connection and loads the policy. */
  if (cl_async_open(&g.a, &cfg, &ao, &err) != CL_OK) {
    fprintf(stderr, "game-server: start-up: %s: %s\n", cl_status_name(err.code), err.message);
    return 2;
  }
  snprintf(sql, sizeof sql,
           "SELECT id FROM cairnloop.cairnloop_conversations"
           " WHERE customer_ref ~ '^player:[0-9]{1,9}$' ORDER BY substr(customer_ref, 8)::int");
  if ((o = new_op(&g, K_QUERY)) != NULL)
    submitted(&g, o, cl_async_query(g.a, sql, 0, NULL, on_players, o, &err), &err);
  wait_for(&g, K_QUERY);
  if (g.nplayers == 0) {
    fprintf(stderr, "game-server: no players: add conversations whose customer_ref is"
                    " 'player:<number>' (see README.md)\n");
    cl_async_close(g.a, CL_ASYNC_CANCEL);
    return 2;
  }
  printf("night %d: %zu players, raids of %zu, %ld ticks of %.1f ms\n", g.night, g.nplayers,
         g.nplayers < RAID_SIZE ? g.nplayers : RAID_SIZE, ticks, (double)TICK_NS / 1e6);

  next = now_ns();
  for (tick = 1;; tick++) {
    bool events = tick <= ticks;
    long long t0 = now_ns();
    game_work();
    /* Once per tick, whatever the descriptor says: a game loop that only
     * sleeps between ticks needs no poll() (examples/async shows both). */
    if (cl_async_fd(g.a) >= 0) cl_async_poll(g.a);
    if (events && tick % EVENT_EVERY == 0) {
      raid_wipe(&g, (int)(tick / EVENT_EVERY));
      for (int i = 0; i < CHECKINS_PER_RAID; i++) rage_quit(&g);
    }
    if (!events) {
      /* Catching up: done once nothing is in flight and delivery has sent
       * as many messages as the run wrote. */
      if (drain_deadline == 0) drain_deadline = now_ns() + DRAIN_TIMEOUT_NS;
      if (cl_async_pending(g.a) == 0 && g.work_sent >= (long)g.ncreated) break;
      if (now_ns() > drain_deadline) {
        fprintf(stderr, "game-server: delivery did not catch up within %lld s\n",
                DRAIN_TIMEOUT_NS / 1000000000LL);
        g.errors++;
        break;
      }
    }
    deliver(&g);
    if (!push(&g.ticks, now_ns() - t0)) g.errors++;
    next += TICK_NS;
    sleep_until(next);
  }
  wait_for(&g, K_WORK);

  /* Every message this run wrote must be marked sent. */
  {
    char *literal = ids_literal(&g);
    const char *params[1];
    params[0] = literal;
    if (literal != NULL && (o = new_op(&g, K_QUERY)) != NULL)
      submitted(&g, o,
                cl_async_query(g.a,
                               "SELECT count(*) FILTER (WHERE metadata->>'status' = 'sent'),"
                               " count(*) FROM cairnloop.cairnloop_messages"
                               " WHERE id = ANY ($1::bigint[])",
                               1, params, on_counted, o, &err),
                &err);
    free(literal); /* copied at submission */
    wait_for(&g, K_QUERY);
  }
  cl_async_close(g.a, CL_ASYNC_DRAIN); /* runs every callback still due */

  print_stats(&g, ticks);
  for (int k = 0; k < NKINDS; k++) lost += g.submitted[k] - g.completed[k];
  status = g.errors == 0 && lost == 0 && g.off_thread == 0 &&
                   g.query_result[0] == (long)g.ncreated && g.query_result[1] == (long)g.ncreated
             ? 0
             : 1;
  printf("summary: ticks=%ld players=%zu ragequits=%d checkins=%d duplicate_checkins=%d"
         " raids=%d envelopes=%d replayed_envelopes=%d raid_messages=%d created=%zu"
         " delivered=%ld sent=%ld/%zu submitted=%d completed=%d lost=%d off_thread=%d"
         " errors=%d result=%s\n",
         ticks, g.nplayers, g.ragequits, g.checkins, g.duplicate_checkins, g.raids, g.envelopes,
         g.replayed_envelopes, g.raid_messages, g.ncreated, (long)atomic_load(&g.delivered),
         g.query_result[0], g.ncreated,
         g.submitted[0] + g.submitted[1] + g.submitted[2] + g.submitted[3],
         g.completed[0] + g.completed[1] + g.completed[2] + g.completed[3], lost, g.off_thread,
         g.errors, status == 0 ? "ok" : "FAILED");

  free(g.players);
  free(g.created);
  for (int k = 0; k < NKINDS; k++) free(g.latency[k].v);
  free(g.ticks.v);
  return status;
}
