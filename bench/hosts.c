/*
 * hosts.c - the engine as its other users reach it: the Lua 5.4 module
 * (build/lua5.4/cairnloop.so, required into a Lua state of this process,
 * so no interpreter start-up is timed), the `cairnloop` command (one
 * process per call: start-up, connecting and printing are what a command
 * user pays) and engines with policy files loaded by cl_load_policy.  Uses
 * the system's Lua 5.4 (the module resolves its lua_* symbols against it),
 * posix_spawn and cairnloop.h.
 */
#include "bench.h"

#include "cairnloop.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <errno.h>
#include <inttypes.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/* environ: <unistd.h> declares it under _GNU_SOURCE (the Makefile's). */

/* ------------------------------------------------------------------ */
/* The Lua module                                                       */
/* ------------------------------------------------------------------ */

struct lua_host {
  lua_State *L;
  int bulk_ref, trigger_ref, ids_ref;
  int result; /* stack index of the last bulk result, 0 when none */
};

/* Runs in the host state: the module is required as any Lua program
 * would, and the calls are plain Lua functions the timing wraps. */
static const char LUA_SETUP[] =
    "local cpath, database, schema, cap = ...\n"
    "package.cpath = cpath .. ';' .. package.cpath\n"
    "local cairnloop = require 'cairnloop'\n"
    "local engine, code, msg = cairnloop.open{ database = database, schema = schema,\n"
    "                                          max_batch_size = cap }\n"
    "if not engine then error(code .. ': ' .. msg) end\n"
    "local function bulk(ids, template_id, body)\n"
    "  return engine:bulk_trigger(ids, { template_id = template_id, rendered_body = body })\n"
    "end\n"
    "local function trigger(conversation_id, template_id)\n"
    "  return engine:trigger(conversation_id, { template_id = template_id })\n"
    "end\n"
    "return bulk, trigger\n";

lua_host *lua_host_open(const bench_paths *p, const char *conninfo, const char *schema, int cap) {
  lua_host *h = calloc(1, sizeof *h);
  if (!h) abort();
  h->L = luaL_newstate();
  if (!h->L) abort();
  luaL_openlibs(h->L);
  h->ids_ref = LUA_NOREF;
  if (luaL_loadbuffer(h->L, LUA_SETUP, sizeof LUA_SETUP - 1, "=bench-lua-host") != LUA_OK) {
    fprintf(stderr, "bench: lua host: %s\n", lua_tostring(h->L, -1));
    lua_close(h->L);
    free(h);
    return NULL;
  }
  lua_pushstring(h->L, p->lua_cpath);
  lua_pushstring(h->L, conninfo);
  lua_pushstring(h->L, schema);
  lua_pushinteger(h->L, cap);
  if (lua_pcall(h->L, 4, 2, 0) != LUA_OK) {
    fprintf(stderr, "bench: lua host: %s\n", lua_tostring(h->L, -1));
    lua_close(h->L);
    free(h);
    return NULL;
  }
  h->trigger_ref = luaL_ref(h->L, LUA_REGISTRYINDEX);
  h->bulk_ref = luaL_ref(h->L, LUA_REGISTRYINDEX);
  return h;
}

void lua_host_close(lua_host *h) {
  if (!h) return;
  lua_close(h->L); /* the engine's __gc closes it */
  free(h);
}

/* The cohort as a Lua list: the caller's data, built before the clock. */
void lua_host_prepare(void *hp, const bulk_call *call) {
  lua_host *h = hp;
  luaL_unref(h->L, LUA_REGISTRYINDEX, h->ids_ref);
  lua_createtable(h->L, (int)call->n, 0);
  for (size_t i = 0; i < call->n; i++) {
    lua_pushinteger(h->L, call->ids[i]);
    lua_rawseti(h->L, -2, (lua_Integer)i + 1);
  }
  h->ids_ref = luaL_ref(h->L, LUA_REGISTRYINDEX);
}

int lua_host_bulk(void *hp, bulk_call *call, ids_out *out) {
  lua_host *h = hp;
  (void)out;
  lua_settop(h->L, 0);
  lua_rawgeti(h->L, LUA_REGISTRYINDEX, h->bulk_ref);
  lua_rawgeti(h->L, LUA_REGISTRYINDEX, h->ids_ref);
  lua_pushstring(h->L, call->template_id);
  lua_pushstring(h->L, call->body);
  if (lua_pcall(h->L, 3, 3, 0) != LUA_OK) {
    fprintf(stderr, "bench: lua bulk_trigger raised: %s\n", lua_tostring(h->L, -1));
    return -1;
  }
  if (lua_isnil(h->L, 1)) {
    fprintf(stderr, "bench: lua bulk_trigger: %s: %s\n", lua_tostring(h->L, 2),
            lua_tostring(h->L, 3));
    return -1;
  }
  h->result = 1;
  return 0;
}

static int64_t field_int(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  int64_t v = (int64_t)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return v;
}

void lua_host_finish(void *hp, bulk_call *call, ids_out *out) {
  lua_host *h = hp;
  lua_State *L = h->L;
  if (!h->result) return;
  lua_getfield(L, 1, "envelope");
  lua_getfield(L, -1, "id");
  snprintf(call->envelope_id, sizeof call->envelope_id, "%s",
           lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
  lua_pop(L, 2);
  lua_getfield(L, 1, "messages");
  lua_getfield(L, 1, "delivery_jobs");
  int m = lua_gettop(L) - 1, j = lua_gettop(L);
  for (size_t i = 0; i < call->n; i++) {
    lua_rawgeti(L, m, (lua_Integer)i + 1);
    out->message_ids[i] = lua_istable(L, -1) ? field_int(L, lua_gettop(L), "id") : 0;
    lua_pop(L, 1);
    lua_rawgeti(L, j, (lua_Integer)i + 1);
    out->job_ids[i] = lua_istable(L, -1) ? field_int(L, lua_gettop(L), "id") : 0;
    lua_pop(L, 1);
  }
  lua_settop(L, 0);
  h->result = 0;
}

int lua_host_trigger(void *hp, const trigger_call *call, int64_t *mid, int64_t *jid) {
  lua_host *h = hp;
  lua_State *L = h->L;
  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->trigger_ref);
  lua_pushinteger(L, call->conversation_id);
  lua_pushstring(L, call->template_id);
  if (lua_pcall(L, 2, 3, 0) != LUA_OK || lua_isnil(L, 1)) {
    fprintf(stderr, "bench: lua trigger: %s %s\n", lua_tostring(L, -2) ? lua_tostring(L, -2) : "",
            lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
    lua_settop(L, 0);
    return -1;
  }
  lua_getfield(L, 1, "message");
  *mid = field_int(L, lua_gettop(L), "id");
  lua_getfield(L, 1, "delivery_job");
  *jid = field_int(L, lua_gettop(L), "id");
  lua_settop(L, 0);
  return 0;
}

/* ------------------------------------------------------------------ */
/* The command line: one `cairnloop bulk` process per call              */
/* ------------------------------------------------------------------ */

struct cli_host {
  const char *bin;
  char *conninfo, *schema;
  char dir[64], ids_path[96];
  char cap[16];
  char *out;
  size_t len, size;
  double child_cpu_ms;
  long peak_rss_kib;
};

cli_host *cli_host_open(const bench_paths *p, const char *conninfo, const char *schema, int cap) {
  cli_host *h = calloc(1, sizeof *h);
  if (!h) abort();
  if (access(p->cli, X_OK) != 0) {
    fprintf(stderr, "bench: %s: %s (build it with make)\n", p->cli, strerror(errno));
    free(h);
    return NULL;
  }
  h->bin = p->cli;
  h->conninfo = strdup(conninfo);
  h->schema = strdup(schema);
  snprintf(h->cap, sizeof h->cap, "%d", cap);
  snprintf(h->dir, sizeof h->dir, "/tmp/cl-bench-cli.XXXXXX");
  if (!mkdtemp(h->dir)) {
    perror("bench: mkdtemp");
    free(h);
    return NULL;
  }
  snprintf(h->ids_path, sizeof h->ids_path, "%s/ids", h->dir);
  return h;
}

void cli_host_close(cli_host *h) {
  if (!h) return;
  unlink(h->ids_path);
  rmdir(h->dir);
  free(h->conninfo);
  free(h->schema);
  free(h->out);
  free(h);
}

/* The cohort in a file, one id a line, as a command user would have it. */
void cli_host_prepare(void *hp, const bulk_call *call) {
  cli_host *h = hp;
  FILE *f = fopen(h->ids_path, "w");
  if (!f) {
    perror(h->ids_path);
    exit(1);
  }
  for (size_t i = 0; i < call->n; i++) fprintf(f, "%" PRId64 "\n", call->ids[i]);
  if (fclose(f) != 0) {
    perror(h->ids_path);
    exit(1);
  }
}

/* Spawns argv with stdout into a pipe read to the end (as a shell's $(...)
 * would); the child's CPU time and peak RSS come from wait4. */
static int spawn_capture(cli_host *h, char *const argv[]) {
  int fd[2];
  if (pipe(fd) != 0) return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fd[1], 1);
  posix_spawn_file_actions_addclose(&fa, fd[0]);
  posix_spawn_file_actions_addclose(&fa, fd[1]);
  pid_t pid;
  int rc = posix_spawn(&pid, h->bin, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fd[1]);
  if (rc != 0) {
    close(fd[0]);
    fprintf(stderr, "bench: spawn %s: %s\n", h->bin, strerror(rc));
    return -1;
  }
  h->len = 0;
  for (;;) {
    if (h->size - h->len < 65536) {
      h->size = h->size ? h->size * 2 : 1 << 20;
      h->out = realloc(h->out, h->size);
      if (!h->out) abort();
    }
    ssize_t got = read(fd[0], h->out + h->len, h->size - h->len - 1);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    h->len += (size_t)got;
  }
  if (h->out) h->out[h->len] = '\0';
  close(fd[0]);
  int status = 0;
  struct rusage ru;
  while (wait4(pid, &status, 0, &ru) < 0)
    if (errno != EINTR) return -1;
  h->child_cpu_ms = (double)ru.ru_utime.tv_sec * 1e3 + (double)ru.ru_utime.tv_usec / 1e3 +
                    (double)ru.ru_stime.tv_sec * 1e3 + (double)ru.ru_stime.tv_usec / 1e3;
  if (ru.ru_maxrss > h->peak_rss_kib) h->peak_rss_kib = ru.ru_maxrss;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "bench: %s exited with status %d\n", h->bin,
            WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return -1;
  }
  return 0;
}

int cli_host_bulk(void *hp, bulk_call *call, ids_out *out) {
  cli_host *h = hp;
  (void)out;
  char *argv[] = {(char *)h->bin,
                  "bulk",
                  "--database",
                  h->conninfo,
                  "--schema",
                  h->schema,
                  "--template",
                  (char *)call->template_id,
                  "--body",
                  (char *)call->body,
                  "--ids-file",
                  h->ids_path,
                  "--max-batch-size",
                  h->cap,
                  NULL};
  return spawn_capture(h, argv);
}

/* "WORD N" after blanks: the number, and where it ends; NULL otherwise. */
static const char *word_number(const char *p, const char *word, long long *v) {
  size_t n = strlen(word);
  while (*p == ' ') p++;
  if (strncmp(p, word, n) != 0 || p[n] != ' ') return NULL;
  p += n;
  char *end = NULL;
  *v = strtoll(p, &end, 10); /* skips the blanks before the number */
  return end == p ? NULL : end;
}

/* The default (text) output: "envelope <uuid> submitted: ..." then one
 * "  conversation C  message M  job J (state)" line per recipient, in
 * cohort order. */
void cli_host_finish(void *hp, bulk_call *call, ids_out *out) {
  cli_host *h = hp;
  const char *p = h->out ? h->out : "";
  call->envelope_id[0] = '\0';
  if (strncmp(p, "envelope ", 9) == 0) snprintf(call->envelope_id, 37, "%.36s", p + 9);
  size_t i = 0;
  while ((p = strstr(p, "  conversation ")) && i < call->n) {
    long long c, m, j;
    const char *q = word_number(p, "conversation", &c);
    if (q) q = word_number(q, "message", &m);
    if (q) q = word_number(q, "job", &j);
    if (!q) break;
    out->message_ids[i] = m;
    out->job_ids[i] = j;
    i++;
    p++;
  }
  for (; i < call->n; i++) out->message_ids[i] = out->job_ids[i] = 0;
}

double cli_host_child_cpu_ms(void *hp) { return ((cli_host *)hp)->child_cpu_ms; }

long cli_host_peak_rss_kib(const cli_host *h) { return h ? h->peak_rss_kib : 0; }

double cli_startup_ms(const bench_paths *p, int reps) {
  cli_host h = {0};
  h.bin = p->cli;
  double *ms = calloc((size_t)reps, sizeof *ms);
  char *argv[] = {(char *)p->cli, "--version", NULL};
  int got = 0;
  for (int i = 0; i < reps; i++) {
    double t0 = bench_now_ms();
    if (spawn_capture(&h, argv) != 0) break;
    ms[got++] = bench_now_ms() - t0;
  }
  double med = got ? bench_median(ms, (size_t)got) : 0;
  free(ms);
  free(h.out);
  return med;
}

double connect_ms(const char *conninfo, int reps) {
  double *ms = calloc((size_t)reps, sizeof *ms);
  int got = 0;
  for (int i = 0; i < reps; i++) {
    double t0 = bench_now_ms();
    PGconn *c = PQconnectdb(conninfo);
    PGresult *r = PQstatus(c) == CONNECTION_OK ? PQexec(c, "SELECT 1") : NULL;
    bool ok = r && PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    PQfinish(c);
    if (!ok) break;
    ms[got++] = bench_now_ms() - t0;
  }
  double med = got ? bench_median(ms, (size_t)got) : 0;
  free(ms);
  return med;
}

/* ------------------------------------------------------------------ */
/* Engines with policy files                                            */
/* ------------------------------------------------------------------ */

/* The C auditor of the "c-noop" engine: accepts without a statement. */
static cl_status noop_audit(void *ud, cl_tx *tx, const char *action, const char *actor,
                            const cl_metadata *metadata, char **audit_json, cl_error *err) {
  (void)ud;
  (void)tx;
  (void)action;
  (void)actor;
  (void)metadata;
  (void)err;
  *audit_json = NULL;
  return CL_OK;
}

cl_engine *policy_engine_open(const bench_paths *p, const char *conninfo, const char *schema,
                              int cap, const char *which) {
  cl_config cfg;
  cl_config_init(&cfg);
  cfg.database = conninfo;
  cfg.schema = schema;
  cfg.max_batch_size = cap;
  cl_engine *eng = NULL;
  cl_error err;
  if (cl_open(&eng, &cfg, &err) != CL_OK) {
    fprintf(stderr, "bench: policy engine: %s\n", err.message);
    return NULL;
  }
  char files[2][512];
  int nfiles = 0;
  if (strcmp(which, "c-noop") == 0) {
    cl_auditor a = {noop_audit, NULL, NULL, NULL};
    if (cl_set_auditor(eng, &a, &err) != CL_OK) {
      fprintf(stderr, "bench: cl_set_auditor: %s\n", err.message);
      cl_close(eng);
      return NULL;
    }
  } else if (strcmp(which, "ready") == 0 || strcmp(which, "auditor") == 0) {
    snprintf(files[nfiles++], sizeof files[0], "%s/table_auditor.lua", p->lua_dir);
    if (strcmp(which, "ready") == 0)
      snprintf(files[nfiles++], sizeof files[0], "%s/metrics.lua", p->lua_dir);
  } else {
    snprintf(files[nfiles++], sizeof files[0], "%s/noop_policy.lua", p->bench_dir);
  }
  for (int i = 0; i < nfiles; i++)
    if (cl_load_policy(eng, files[i], &err) != CL_OK) {
      fprintf(stderr, "bench: cl_load_policy %s: %s: %s\n", files[i], cl_status_name(err.code),
              err.message);
      cl_close(eng);
      return NULL;
    }
  return eng;
}

bool bench_audit_row_exists(PGconn *c, const char *bulk_envelope_id, int64_t conversation_id,
                            const char *template_id) {
  char cid[24];
  snprintf(cid, sizeof cid, "%" PRId64, conversation_id);
  const char *v[] = {bulk_envelope_id, conversation_id ? cid : NULL, template_id};
  PGresult *r = PQexecParams(
      c,
      "SELECT count(*) FROM " BENCH_SCHEMA ".cairnloop_audit_events"
      " WHERE template_id = $3 AND ($1::uuid IS NULL OR bulk_envelope_id = $1::uuid)"
      "   AND ($2::bigint IS NULL OR conversation_id = $2::bigint)",
      3, NULL, v, NULL, NULL, 0);
  bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 0), "1") == 0;
  if (PQresultStatus(r) != PGRES_TUPLES_OK) bench_pg_error(c, r, "audit row check");
  PQclear(r);
  return ok;
}
