/*
 * main.c - a game server's main loop with the Cairnloop engine embedded.
 *
 * The server opens an engine, migrates, loads policy.lua (actor rules,
 * auditing and telemetry, written in Lua) and installs its own notifier in
 * C (the game's network layer).  It then runs a fixed number of ticks.  In
 * each tick a player may rage-quit (one support check-in, cl_trigger) and
 * every fifth tick a raid wipes (compensation to the whole guild,
 * cl_bulk_trigger in chunks of the cap); between ticks cl_work_batch
 * delivers a few messages.  At the end it drains the queue, sleeping in
 * cl_work_wait while retries wait out their backoff, asks the engine
 * (cl_query) whether every message it triggered is marked sent, prints a
 * summary and exits 0 only if so.
 *
 * Usage: game-server [POLICY.lua]            (default: policy.lua)
 * Environment: CAIRNLOOP_DATABASE_URL (else libpq's PG* defaults),
 * CAIRNLOOP_MAX_BATCH_SIZE (the cap, default 25), GAME_TICKS (20),
 * GAME_TICK_MS (20), GAME_SEED, GAME_NIGHT (1; names the raid envelopes).
 * Players are the conversations whose customer_ref is "player:<number>".
 */
#define _POSIX_C_SOURCE 200809L

#include <cairnloop.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NGUILDS 3
static const char *const guild_names[NGUILDS] = {"Ember Wolves", "Salt Kings", "Night Owls"};

/* Messages delivered between two ticks: a server spends a bounded slice of
 * each tick on support traffic, never a whole backlog. */
#define WORK_PER_TICK 8
/* After the last tick: how long the drain may wait for retries (their
 * backoff starts at 2 s) before the run counts as failed. */
#define DRAIN_TIMEOUT_MS 30000
/* Jobs per batch while draining. */
#define DRAIN_BATCH 64

/* A growable set of message ids (small: linear search is fine). */
typedef struct id_set {
  int64_t *v;
  size_t n, cap;
} id_set;

typedef struct player {
  int number;              /* player:<number> */
  int64_t conversation_id; /* their support conversation */
} player;

typedef struct game {
  cl_engine *eng;
  player *players;
  size_t nplayers;
  uint32_t rng;
  int night;

  id_set created;   /* messages this run wrote: the notifier must see each */
  id_set mentioned; /* every message a result named (also duplicates, replays) */
  id_set delivered; /* messages the notifier handed to a client */

  int ragequits, checkins, duplicate_checkins;
  int raids, envelopes, replayed_envelopes, raid_messages;
  int offline_attempts; /* first attempts refused on purpose */
  int errors;           /* engine calls that failed */
  cl_work_stats work;   /* summed over every batch */
} game;

/* ------------------------------------------------------------------ */
/* Small helpers                                                        */
/* ------------------------------------------------------------------ */

static bool ids_has(const id_set *s, int64_t id) {
  for (size_t i = 0; i < s->n; i++)
    if (s->v[i] == id) return true;
  return false;
}

/* Adds id once; false when out of memory. */
static bool ids_add(id_set *s, int64_t id) {
  if (ids_has(s, id)) return true;
  if (s->n == s->cap) {
    size_t cap = s->cap ? 2 * s->cap : 64;
    int64_t *v = realloc(s->v, cap * sizeof *v);
    if (v == NULL) return false;
    s->v = v;
    s->cap = cap;
  }
  s->v[s->n++] = id;
  return true;
}

/* The set as a PostgreSQL array literal, "{1,2,3}" (malloc'd), bound as
 * one text parameter: the statement stays the same whatever the count. */
static char *ids_literal(const id_set *s) {
  char *out = malloc(s->n * 21 + 3), *p = out;
  if (out == NULL) return NULL;
  *p++ = '{';
  for (size_t i = 0; i < s->n; i++)
    p += sprintf(p, "%s%" PRId64, i ? "," : "", s->v[i]);
  strcpy(p, "}");
  return out;
}

/* xorshift32: the same seed replays the same night. */
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

/* The tick clock: a game server paces its ticks, whatever the queue holds. */
static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0) {}
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The engine's log sink: the server's own log, on stderr. */
static void log_line(void *ud, cl_log_level level, const char *line) {
  (void)ud;
  fprintf(stderr, "cairnloop [%s] %s\n", cl_log_level_name(level), line);
}

/* Reports a failed engine call and counts it. */
static void failed(game *g, const char *what, const cl_error *err) {
  fprintf(stderr, "game-server: %s: %s: %s\n", what, cl_status_name(err->code), err->message);
  g->errors++;
}

/* Remembers a message id; running out of memory fails the run. */
static void track(game *g, id_set *s, int64_t id) {
  if (!ids_add(s, id)) {
    fprintf(stderr, "game-server: out of memory\n");
    g->errors++;
  }
}

/* ------------------------------------------------------------------ */
/* The notifier: the game's network layer                               */
/* ------------------------------------------------------------------ */

/*
 * Hands one message to the player's client.  Here a player is "offline" on
 * the first attempt at every seventh message: the engine records the
 * reason, marks the message failed and retries the job with backoff; the
 * next attempt goes through.  Runs inside cl_work_batch, so it must not
 * call the engine back; the idempotency key would let a real client drop a
 * repeat.
 */
static cl_status push_to_client(void *ud, const cl_message *m, const cl_conversation *c,
                                const char *idempotency_key, int attempt, cl_error *err) {
  game *g = ud;
  (void)idempotency_key;
  if (attempt == 1 && m->id % 7 == 0) {
    g->offline_attempts++;
    err->code = CL_HOOK_ERROR;
    snprintf(err->message, sizeof err->message, "%s is offline",
             c->customer_ref ? c->customer_ref : "player");
    return CL_HOOK_ERROR;
  }
  if (!ids_add(&g->delivered, m->id)) {
    err->code = CL_HOOK_ERROR;
    snprintf(err->message, sizeof err->message, "out of memory");
    return CL_HOOK_ERROR;
  }
  return CL_OK;
}

/* ------------------------------------------------------------------ */
/* Game events                                                          */
/* ------------------------------------------------------------------ */

/* Players are the conversations whose customer_ref is "player:<n>". */
static cl_status load_players(game *g, cl_error *err) {
  char sql[256];
  cl_rows *rows = NULL;
  cl_status st;
  int i, n;
  snprintf(sql, sizeof sql,
           "SELECT id, substr(customer_ref, 8)::int FROM %s.cairnloop_conversations"
           " WHERE customer_ref ~ '^player:[0-9]{1,9}$' ORDER BY 2",
           cl_schema(g->eng));
  if ((st = cl_query(g->eng, sql, 0, NULL, &rows, err)) != CL_OK) return st;
  n = cl_rows_count(rows);
  g->players = calloc(n ? (size_t)n : 1, sizeof *g->players);
  if (g->players == NULL) {
    cl_rows_free(rows);
    err->code = CL_INVALID_ARGUMENT;
    snprintf(err->message, sizeof err->message, "out of memory");
    return CL_INVALID_ARGUMENT;
  }
  for (i = 0; i < n; i++) {
    g->players[i].conversation_id = strtoll(cl_rows_value(rows, i, 0), NULL, 10);
    g->players[i].number = atoi(cl_rows_value(rows, i, 1));
  }
  g->nplayers = (size_t)n;
  cl_rows_free(rows);
  return CL_OK;
}

/* A player left a match early: one check-in from support.  The engine
 * writes it once per player and template; a second rage-quit comes back
 * as a duplicate and sends nothing new. */
static void rage_quit(game *g, const player *p, int tick) {
  cl_trigger_opts o;
  cl_trigger_result res;
  cl_error err;
  memset(&o, 0, sizeof o);
  memset(&res, 0, sizeof res);
  o.template_id = "ragequit_checkin_v1";
  o.content = "Rough match. Anything we can help with? Reply here and a GM will pick it up.";
  o.actor = "system:matchmaker";
  g->ragequits++;
  if (cl_trigger(g->eng, p->conversation_id, &o, &res, &err) != CL_OK) {
    failed(g, "check-in", &err);
  } else {
    if (res.duplicate) {
      g->duplicate_checkins++;
    } else {
      g->checkins++;
      track(g, &g->created, res.message.id);
    }
    track(g, &g->mentioned, res.message.id);
    /* audit_json is what the policy's auditor returned (its audit row). */
    printf("tick %02d: player:%d rage-quit -> check-in message %" PRId64 " %s\n", tick,
           p->number, res.message.id,
           res.duplicate ? "(sent before: nothing new)" : res.audit_json ? res.audit_json : "");
  }
  cl_trigger_result_clear(&res);
}

/*
 * A raid wiped: compensation to every member of the guild, in envelopes of
 * at most the cap.  Each envelope id is derived from the night, the raid
 * and the chunk, so a server that restarts and replays the same raid gets
 * the stored envelope back (replayed) instead of paying twice.
 */
static void raid_wipe(game *g, int guild, int raid, int tick) {
  int64_t *ids = calloc(g->nplayers ? g->nplayers : 1, sizeof *ids);
  size_t n = 0, at, cap = (size_t)cl_max_batch_size(g->eng);
  char body[160], envelope_id[CL_UUID_LEN + 1];
  int chunk = 0;
  if (ids == NULL) {
    fprintf(stderr, "game-server: out of memory\n");
    g->errors++;
    return;
  }
  for (size_t i = 0; i < g->nplayers; i++)
    if ((g->players[i].number - 1) % NGUILDS == guild) ids[n++] = g->players[i].conversation_id;
  snprintf(body, sizeof body,
           "Tough wipe in the Sunken Spire, %s. Tonight's repair bills are on us.",
           guild_names[guild]);
  g->raids++;
  printf("tick %02d: raid %d wiped: %s, %zu members, cap %zu\n", tick, raid, guild_names[guild], n,
         cap);
  for (at = 0; at < n; at += cap, chunk++) {
    cl_bulk_opts o;
    cl_bulk_result res;
    cl_error err;
    size_t count = n - at < cap ? n - at : cap;
    memset(&o, 0, sizeof o);
    memset(&res, 0, sizeof res);
    snprintf(envelope_id, sizeof envelope_id, "9a1d0000-%04x-4%03x-8%03x-%012x",
             (unsigned)g->night & 0xffff, (unsigned)raid & 0xfff, (unsigned)chunk & 0xfff,
             (unsigned)guild);
    o.template_id = "raid_wipe_comp_v1";
    o.rendered_body = body;
    o.actor = "gm:night_shift";
    o.envelope_id = envelope_id;
    if (cl_bulk_trigger(g->eng, ids + at, count, &o, &res, &err) != CL_OK) {
      failed(g, "raid compensation", &err);
    } else {
      if (res.replayed) {
        g->replayed_envelopes++;
      } else {
        g->envelopes++;
        g->raid_messages += (int)res.count;
      }
      for (size_t i = 0; i < res.count; i++) {
        if (!res.replayed) track(g, &g->created, res.messages[i].id);
        track(g, &g->mentioned, res.messages[i].id);
      }
      printf("         -> envelope %s: %zu messages%s\n", res.envelope.id, res.count,
             res.replayed ? " (replayed: this raid was paid before)" : "");
    }
    cl_bulk_result_clear(&res);
  }
  free(ids);
}

/* One slice of delivery: one batch of at most `limit` due jobs.  Returns
 * the number of jobs it claimed, or -1 when the engine call failed. */
static int deliver(game *g, int limit) {
  cl_work_stats s;
  cl_batch_info b;
  cl_error err;
  memset(&s, 0, sizeof s);
  memset(&b, 0, sizeof b);
  /* No stop flag: the server finishes a slice once it has started it. */
  if (cl_work_batch(g->eng, limit, NULL, &s, &b, &err) != CL_OK) {
    failed(g, "work", &err);
    return -1;
  }
  g->work.sent += s.sent;
  g->work.failed += s.failed;
  g->work.no_op += s.no_op;
  g->work.retried += s.retried;
  g->work.discarded += s.discarded;
  return b.claimed;
}

/* ------------------------------------------------------------------ */
/* Checking the outcome through the engine                              */
/* ------------------------------------------------------------------ */

/* Runs a one-row, one-column count over the `mentioned` messages ($1). */
static long count_over(game *g, const char *sql_fmt) {
  char sql[512];
  char *literal = ids_literal(&g->mentioned);
  const char *params[1];
  cl_rows *rows = NULL;
  cl_error err;
  long n = -1;
  if (literal == NULL) return -1;
  snprintf(sql, sizeof sql, sql_fmt, cl_schema(g->eng));
  params[0] = literal;
  if (cl_query(g->eng, sql, 1, params, &rows, &err) != CL_OK)
    failed(g, "query", &err);
  else
    n = strtol(cl_rows_value(rows, 0, 0), NULL, 10);
  cl_rows_free(rows);
  free(literal);
  return n;
}

/* Whether the notifier has handed every message this run wrote to a client. */
static bool all_delivered(const game *g) {
  for (size_t i = 0; i < g->created.n; i++)
    if (!ids_has(&g->delivered, g->created.v[i])) return false;
  return true;
}

/*
 * Delivers until every message this run wrote went through the notifier
 * (retries included).  Between batches the server sleeps in cl_work_wait,
 * which wakes it when the next retry's backoff runs out (or a job is
 * inserted) instead of polling the jobs table.
 */
static void drain(game *g) {
  long long deadline = now_ms() + DRAIN_TIMEOUT_MS;
  while (!all_delivered(g)) {
    long long left = deadline - now_ms();
    cl_wake why;
    cl_error err;
    int claimed = deliver(g, DRAIN_BATCH);
    if (claimed < 0 || left <= 0) return;
    if (claimed > 0) continue;
    if (cl_work_wait(g->eng, (int)left, -1, &why, &err) != CL_OK) {
      failed(g, "wait", &err);
      return;
    }
  }
}

int main(int argc, char **argv) {
  const char *policy = argc > 1 ? argv[1] : "policy.lua";
  long ticks = env_long("GAME_TICKS", 20, 1, 100000);
  long tick_ms = env_long("GAME_TICK_MS", 20, 0, 60000);
  game g;
  cl_config cfg;
  cl_notifier notifier;
  cl_error err;
  long sent, undelivered = 0;
  int tick, status;

  memset(&g, 0, sizeof g);
  g.rng = (uint32_t)env_long("GAME_SEED", 20260527, 1, 0x7fffffff);
  g.night = (int)env_long("GAME_NIGHT", 1, 0, 0xffff);

  cl_config_init(&cfg); /* database: CAIRNLOOP_DATABASE_URL; cap: CAIRNLOOP_MAX_BATCH_SIZE */
  cfg.log = log_line;
  if (cl_open(&g.eng, &cfg, &err) != CL_OK || cl_migrate(g.eng, &err) != CL_OK ||
      cl_load_policy(g.eng, policy, &err) != CL_OK) {
    fprintf(stderr, "game-server: start-up: %s: %s\n", cl_status_name(err.code), err.message);
    cl_close(g.eng);
    return 2;
  }
  memset(&notifier, 0, sizeof notifier);
  notifier.deliver = push_to_client;
  notifier.ud = &g;
  if (cl_set_notifier(g.eng, &notifier, &err) != CL_OK || load_players(&g, &err) != CL_OK) {
    fprintf(stderr, "game-server: start-up: %s: %s\n", cl_status_name(err.code), err.message);
    cl_close(g.eng);
    return 2;
  }
  if (g.nplayers == 0) {
    fprintf(stderr, "game-server: no players: add conversations whose customer_ref is"
                    " 'player:<number>' (see README.md)\n");
    cl_close(g.eng);
    return 2;
  }
  printf("night %d: %zu players in %d guilds, cap %d, %ld ticks of %ld ms\n", g.night,
         g.nplayers, NGUILDS, cl_max_batch_size(g.eng), ticks, tick_ms);

  for (tick = 1; tick <= ticks; tick++) {
    if (next_random(&g) % 100 < 45)
      rage_quit(&g, &g.players[next_random(&g) % g.nplayers], tick);
    if (tick % 5 == 0) raid_wipe(&g, (tick / 5 - 1) % NGUILDS, tick / 5, tick);
    deliver(&g, WORK_PER_TICK);
    sleep_ms(tick_ms);
  }
  drain(&g);

  /* Every message a result named must be sent now, and every message this
   * run wrote must have gone through this server's notifier. */
  sent = count_over(&g, "SELECT count(*) FROM %s.cairnloop_messages"
                        " WHERE id = ANY ($1::bigint[]) AND metadata->>'status' = 'sent'");
  for (size_t i = 0; i < g.created.n; i++)
    if (!ids_has(&g.delivered, g.created.v[i])) undelivered++;
  status = g.errors == 0 && sent == (long)g.mentioned.n && undelivered == 0 ? 0 : 1;

  printf("summary: ticks=%ld players=%zu ragequits=%d checkins=%d duplicate_checkins=%d"
         " raids=%d envelopes=%d replayed_envelopes=%d raid_messages=%d created=%zu"
         " delivered=%zu offline_attempts=%d work_sent=%d work_failed=%d work_retried=%d"
         " work_discarded=%d sent=%ld/%zu errors=%d result=%s\n",
         ticks, g.nplayers, g.ragequits, g.checkins, g.duplicate_checkins, g.raids, g.envelopes,
         g.replayed_envelopes, g.raid_messages, g.created.n, g.delivered.n, g.offline_attempts,
         g.work.sent, g.work.failed, g.work.retried, g.work.discarded, sent, g.mentioned.n,
         g.errors, status == 0 ? "ok" : "FAILED");

  cl_close(g.eng);
  free(g.players);
  free(g.created.v);
  free(g.mentioned.v);
  free(g.delivered.v);
  return status;
}
