/*
 * run.c - `cairnloop run SCRIPT.lua [ARGS...]` and `cairnloop demo`.
 *
 * A host Lua 5.4 state, as the `lua` interpreter makes one (the system's
 * liblua5.4, every standard library), in which `require "cairnloop"` is the
 * module of lua_module.c registered in-process (luaL_requiref, never
 * package.cpath), package.path starts with our lua/ tree, `arg` is set as
 * lua.c sets it, and an engine opened on the command's database waits in
 * the global `engine`.  `demo` runs lua/examples/campaign.lua with its
 * policy the same way, on the embedded cluster.  This is the command's one
 * Lua host, so it includes the Lua headers; it uses main.c's error channel,
 * db.c's embedded cluster and the module's luaopen_cairnloop.
 */
#include "run.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* lua_module.c: the module's only exported function. */
int luaopen_cairnloop(lua_State *L);

/* Where `make install` puts the pure-Lua tree when the build does not say. */
#ifndef CL_LUA_INSTALL_DIR
#define CL_LUA_INSTALL_DIR "/usr/local/share/lua/5.4"
#endif

/* What to run, and on which database.  Filled by the commands, read by
 * run_frame, which sets `status`. */
typedef struct run_job {
  const char *command; /* "run" or "demo": arg[-1] */
  const char *script;  /* a path, or "-" for standard input */
  char **args;         /* the script's arguments */
  int nargs;
  const char *database; /* NULL: see `embedded` */
  bool embedded;        /* no database configured: start the embedded cluster */
  const char *schema;   /* NULL: the engine's default */
  const char *const *policies;
  int npolicies;
  const char *log_level; /* "debug" .. "error" */
  bool json;             /* --json: cairnloop.json_output() */
  char *embedded_url;    /* malloc'd by cli_db_ensure; freed by run_job_now */
  int status;            /* the exit status */
} run_job;

static const char *nonempty_env(const char *name) {
  const char *v = getenv(name);
  return v && *v ? v : NULL;
}

/* ------------------------------------------------------------------ */
/* Where things are                                                     */
/* ------------------------------------------------------------------ */

static bool is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* `rel` resolved against the directory of this executable, if it exists:
 * build/cairnloop finds the checkout's lua/ tree, PREFIX/bin/cairnloop the
 * installed one, wherever either was put.  Returns a malloc'd path or NULL. */
static char *beside_exe(const char *rel) {
  char exe[PATH_MAX], joined[PATH_MAX * 2];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return NULL;
  exe[n] = '\0';
  char *slash = strrchr(exe, '/');
  if (!slash) return NULL;
  *slash = '\0';
  snprintf(joined, sizeof joined, "%s/%s", exe, rel);
  return is_dir(joined) ? realpath(joined, NULL) : NULL;
}

/* The source tree's lua/ directory when this program runs from a build in
 * a checkout (build/cairnloop beside lua/): found relative to the program
 * itself, never a path compiled in, so an installed program never looks
 * into the tree it was built in.  Malloc'd, or NULL. */
static char *source_lua_dir(void) {
  char *dir = beside_exe("../lua");
  char probe[PATH_MAX];
  /* Only a tree that holds our modules counts. */
  if (dir && (snprintf(probe, sizeof probe, "%s/cairnloop", dir), !is_dir(probe))) {
    free(dir);
    dir = NULL;
  }
  return dir;
}

/* Appends the search templates of one directory (an entry holding '?' is a
 * template already) to the buffer, as policy.c builds the policy path. */
static void add_path_entry(luaL_Buffer *b, const char *entry, size_t len) {
  if (len == 0) return;
  if (memchr(entry, '?', len)) {
    luaL_addlstring(b, entry, len);
    luaL_addchar(b, ';');
    return;
  }
  for (int i = 0; i < 2; i++) {
    luaL_addlstring(b, entry, len);
    luaL_addstring(b, i == 0 ? "/?.lua;" : "/?/init.lua;");
  }
}

/*
 * package.path = our tree, then what the interpreter would use anyway
 * ($LUA_PATH_5_4, $LUA_PATH or Lua's defaults), so both `cairnloop.*` and
 * the system's pure-Lua libraries load.  Our tree is $CAIRNLOOP_LUA_PATH
 * (';'-separated directories or templates, as for policies), else the
 * source tree and the installed tree.  package.cpath is left as Lua sets it
 * (system C modules load; `cairnloop` itself never comes from there).
 */
static void set_package_path(lua_State *L) {
  const char *env = nonempty_env("CAIRNLOOP_LUA_PATH");
  luaL_Buffer b;
  lua_getglobal(L, LUA_LOADLIBNAME); /* package */
  int package = lua_gettop(L);
  lua_getfield(L, package, "path"); /* package oldpath */
  int old = lua_gettop(L);
  luaL_buffinit(L, &b);
  if (env) {
    for (const char *t = env, *end; *t; t = *end ? end + 1 : end) {
      end = strchr(t, ';');
      if (!end) end = t + strlen(t);
      add_path_entry(&b, t, (size_t)(end - t));
    }
  } else {
    char *src = source_lua_dir();
    char *installed = beside_exe("../share/lua/5.4");
    if (src) add_path_entry(&b, src, strlen(src));
    if (installed) add_path_entry(&b, installed, strlen(installed));
    add_path_entry(&b, CL_LUA_INSTALL_DIR, strlen(CL_LUA_INSTALL_DIR));
    free(src);
    free(installed);
  }
  lua_pushvalue(L, old);
  luaL_addvalue(&b);
  luaL_pushresult(&b); /* package oldpath newpath */
  lua_setfield(L, package, "path");
  lua_pop(L, 2);
}

/* ------------------------------------------------------------------ */
/* The script's environment                                             */
/* ------------------------------------------------------------------ */

/* log(level, line): the engine's log sink (open{ log = }), writing the
 * format of the other commands on stderr.  Raises only on misuse. */
static int log_line(lua_State *L) {
  const char *level = luaL_checkstring(L, 1);
  const char *line = luaL_checkstring(L, 2);
  fprintf(stderr, "cairnloop: [%s] %s\n", level, line);
  return 0;
}

/* cairnloop.default_engine() -> the engine the command opened */
static int default_engine(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  return 1;
}

/*
 * cairnloop.default_config() -> { database =, schema =, policy = { ... } }
 * The options the default engine was opened with (a fresh table each call),
 * so that a script can open more engines alike: cairnloop.open(cfg).
 * database is nil when libpq's defaults (the PG* variables) were used.
 */
/* Sets database, schema and policy of the job's options in the table on top. */
static void set_open_options(lua_State *L, const run_job *job) {
  if (job->database) {
    lua_pushstring(L, job->database);
    lua_setfield(L, -2, "database");
  }
  if (job->schema) {
    lua_pushstring(L, job->schema);
    lua_setfield(L, -2, "schema");
  }
  lua_createtable(L, job->npolicies, 0);
  for (int i = 0; i < job->npolicies; i++) {
    lua_pushstring(L, job->policies[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "policy");
}

static int default_config(lua_State *L) {
  const run_job *job = (const run_job *)lua_touserdata(L, lua_upvalueindex(1));
  lua_createtable(L, 0, 3);
  set_open_options(L, job);
  return 1;
}

/*
 * cairnloop.json_output() -> true | false
 * Whether the command was given --json.  A script that honours it prints
 * nothing on stdout but one JSON object per result line, as every other
 * command does (lua/examples/campaign.lua, the demo, is one).  It is not a
 * field of default_config(), whose table cairnloop.open takes as it is and
 * would refuse as an unknown option.
 */
static int json_output(lua_State *L) {
  const run_job *job = (const run_job *)lua_touserdata(L, lua_upvalueindex(1));
  lua_pushboolean(L, job->json);
  return 1;
}

/* arg as lua.c sets it: the script at 0, its arguments from 1, what ran it
 * below 0 ("cairnloop", "run"). */
static void set_arg(lua_State *L, const run_job *job) {
  lua_createtable(L, job->nargs, 3);
  lua_pushliteral(L, "cairnloop");
  lua_rawseti(L, -2, -2);
  lua_pushstring(L, job->command);
  lua_rawseti(L, -2, -1);
  lua_pushstring(L, job->script);
  lua_rawseti(L, -2, 0);
  for (int i = 0; i < job->nargs; i++) {
    lua_pushstring(L, job->args[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setglobal(L, "arg");
}

/* The status whose code string is `name`; CL_OK when none (or "ok") is. */
static cl_status status_named(const char *name) {
  for (int s = CL_OK + 1; s < CL_STATUS__COUNT; s++)
    if (name && strcmp(cl_status_name((cl_status)s), name) == 0) return (cl_status)s;
  return CL_OK;
}

/* Whether the value at idx is a coded error { code = "<API code>", message = "..." }. */
static bool coded_error(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TTABLE) return false;
  lua_getfield(L, idx, "code");
  bool coded = lua_type(L, -1) == LUA_TSTRING && status_named(lua_tostring(L, -1)) != CL_OK;
  lua_pop(L, 1);
  return coded;
}

/* The traceback handler of lua.c's msghandler: non-string errors are shown
 * through __tostring or by type, and coded errors pass through untouched. */
static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (coded_error(L, 1)) return 1;
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/*
 * Reports the error value on top (left by a pcall under msghandler) and
 * returns the exit status: a coded error as `cairnloop: <code>: <message>`
 * with its code's status, anything else as `cairnloop: <message>` (with the
 * traceback the handler added) and 1.
 */
static int report_error(lua_State *L) {
  if (coded_error(L, -1)) {
    lua_getfield(L, -1, "code");
    lua_getfield(L, -2, "message");
    cl_status st = status_named(lua_tostring(L, -2));
    const char *message = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
    int rc = cli_fail(st, "%s", message);
    lua_pop(L, 2);
    return rc;
  }
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "cairnloop: %s\n", msg ? msg : "(error object is not a string)");
  return 1;
}

/*
 * Opens the engine through the module's own cairnloop.open, so the script
 * gets the same userdata (methods, hooks, __close) as `require "cairnloop"`
 * gives any host.  Pushes the engine.  Returns false (with job->status
 * set and the failure reported) when it could not be opened.
 */
static bool open_engine(lua_State *L, run_job *job, int module) {
  if (job->embedded) {
    int rc = cli_db_ensure(&job->embedded_url);
    if (rc != 0) {
      job->status = rc;
      return false;
    }
    job->database = job->embedded_url;
  }
  lua_getfield(L, module, "open");
  lua_createtable(L, 0, 5);
  set_open_options(L, job);
  lua_pushcfunction(L, log_line);
  lua_setfield(L, -2, "log");
  lua_pushstring(L, job->log_level);
  lua_setfield(L, -2, "log_level");
  lua_call(L, 1, 3); /* engine | nil code msg */
  if (lua_isnil(L, -3)) {
    cl_status st = status_named(lua_tostring(L, -2));
    job->status = cli_fail(st != CL_OK ? st : CL_DB_ERROR, "%s",
                           lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
    return false;
  }
  lua_pop(L, 2); /* engine */
  return true;
}

/*
 * The protected main (lua.c's pmain): builds the state, loads the script,
 * opens the engine, runs the script with its arguments.  Everything that
 * can fail is reported here; job->status says how it ended.
 */
static int run_frame(lua_State *L) {
  run_job *job = (run_job *)lua_touserdata(L, 1);
  luaL_openlibs(L);
  luaL_requiref(L, "cairnloop", luaopen_cairnloop, 0); /* job module */
  int module = lua_gettop(L);
  set_package_path(L);
  set_arg(L, job);

  /* The script loads before anything touches a database: a typo costs no
   * cluster start. */
  int rc = luaL_loadfile(L, strcmp(job->script, "-") == 0 ? NULL : job->script);
  if (rc != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    if (rc == LUA_ERRFILE) job->status = cli_fail(CL_INVALID_ARGUMENT, "%s: %s", job->command, msg);
    else job->status = report_error(L);
    return 0;
  }
  int chunk = lua_gettop(L);
  if (!open_engine(L, job, module)) return 0; /* module chunk engine */
  lua_pushvalue(L, -1);
  lua_setglobal(L, "engine");
  lua_pushcclosure(L, default_engine, 1);
  lua_setfield(L, module, "default_engine");
  lua_pushlightuserdata(L, job);
  lua_pushcclosure(L, default_config, 1);
  lua_setfield(L, module, "default_config");
  lua_pushlightuserdata(L, job);
  lua_pushcclosure(L, json_output, 1);
  lua_setfield(L, module, "json_output");

  /* module chunk -> module handler chunk args... (lua.c's docall) */
  lua_pushcfunction(L, msghandler);
  lua_insert(L, chunk);
  luaL_checkstack(L, job->nargs, "too many arguments to the script");
  for (int i = 0; i < job->nargs; i++) lua_pushstring(L, job->args[i]);
  rc = lua_pcall(L, job->nargs, 0, chunk);
  job->status = rc == LUA_OK ? 0 : report_error(L);
  return 0;
}

static int run_job_now(run_job *job) {
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "cairnloop: not enough memory\n");
    return 1;
  }
  lua_pushcfunction(L, run_frame);
  lua_pushlightuserdata(L, job);
  /* Only setup failures (out of memory) get here: the script's own errors
   * are reported inside the frame. */
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "cairnloop: %s\n", msg ? msg : "(error object is not a string)");
    job->status = 1;
  }
  lua_close(L); /* collects the engine, which closes it */
  free(job->embedded_url);
  job->embedded_url = NULL;
  return job->status;
}

/* ------------------------------------------------------------------ */
/* The commands                                                         */
/* ------------------------------------------------------------------ */

/* $CAIRNLOOP_LOG_LEVEL, checked as for the other commands, as its name. */
static int log_level(const char **out) {
  cl_log_level level;
  int rc = cli_log_level(&level);
  if (rc == 0) *out = cl_log_level_name(level);
  return rc;
}

/* libpq's connection variables: any of them means "the user picked a
 * server" (the same rule as cli_open in main.c). */
static bool pg_env_set(void) {
  static const char *const names[] = {"PGHOST",     "PGHOSTADDR", "PGPORT",
                                      "PGDATABASE", "PGUSER",     "PGSERVICE"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (nonempty_env(names[i])) return true;
  return false;
}

int cli_cmd_run(cli_ctx *ctx) {
  run_job job = {0};
  int rc = log_level(&job.log_level);
  if (rc != 0) return rc;
  job.command = "run";
  job.script = ctx->args[0];
  job.args = ctx->args + 1;
  job.nargs = ctx->nargs - 1;
  job.database = ctx->database ? ctx->database : nonempty_env("CAIRNLOOP_DATABASE_URL");
  job.embedded = !job.database && !pg_env_set();
  job.schema = ctx->schema;
  job.policies = ctx->policies;
  job.npolicies = ctx->npolicies;
  job.json = ctx->json;
  return run_job_now(&job);
}

/* The examples: beside the source tree's lua/ modules, or installed under
 * PREFIX/share/cairnloop.  Malloc'd, or NULL. */
static char *examples_dir(void) {
  char *src = source_lua_dir();
  if (src) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/examples", src);
    free(src);
    if (is_dir(path)) return strdup(path);
  }
  return beside_exe("../share/cairnloop/examples");
}

int cli_cmd_demo(cli_ctx *ctx) {
  run_job job = {0};
  int rc = log_level(&job.log_level);
  if (rc != 0) return rc;
  char *dir = examples_dir();
  if (!dir)
    return cli_fail(CL_INVALID_ARGUMENT,
                    "demo: the example scripts were not found (lua/examples of the "
                    "source tree, or share/cairnloop/examples of the install)");
  char script[PATH_MAX + 32], policy[PATH_MAX + 32];
  snprintf(script, sizeof script, "%s/campaign.lua", dir);
  snprintf(policy, sizeof policy, "%s/demo_policy.lua", dir);
  free(dir);
  const char *policies[] = {policy};
  job.command = "demo";
  job.script = script;
  /* Always the embedded cluster, whatever the environment points at: the
   * demo seeds conversations of its own. */
  job.embedded = true;
  job.policies = policies;
  job.npolicies = 1;
  /* --json: the campaign's report is one JSON object, and nothing else. */
  job.json = ctx->json;
  return run_job_now(&job);
}

void cli_lua_path_default(void) {
  if (nonempty_env("CAIRNLOOP_LUA_PATH")) return;
  char *src = source_lua_dir();
  if (src) setenv("CAIRNLOOP_LUA_PATH", src, 0);
  free(src);
}
