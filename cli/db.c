/*
 * db.c - the embedded default database of `cairnloop`: a private
 * PostgreSQL cluster under ./.cairnloop (data dir, socket dir, log), reached
 * only through its Unix socket, created with initdb on first use and
 * started on demand with pg_ctl; and the `db start|stop|status|url` command.
 * Tools run through fork/exec with a time limit, never through a shell.
 */
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Only the socket's file name depends on the port: no TCP port is opened,
 * so the usual number cannot collide with another server. */
#define DB_PORT "5432"
#define DB_NAME "cairnloop"
#define DB_USER "postgres"
#define LINK_NAME ".cairnloop"
#define SOCKET_FILE "/.s.PGSQL." DB_PORT

/* Time limits, in seconds.  initdb takes about a second here; the margins
 * are for slow disks and loaded CI machines. */
#define INITDB_TIMEOUT 120
#define PG_CTL_WAIT "60" /* pg_ctl's own -t */
#define PG_CTL_TIMEOUT 90
#define QUICK_TIMEOUT 30
#define LOCK_TIMEOUT 180

/* Where one cluster lives. */
typedef struct cluster {
  char cwd[PATH_MAX];
  char link[PATH_MAX]; /* ./.cairnloop, absolute */
  char root[PATH_MAX]; /* the directory holding it all: link itself or its target */
  char data[PATH_MAX]; /* PGDATA */
  char sock[PATH_MAX]; /* unix_socket_directories */
  char log[PATH_MAX];  /* the server log */
  bool exists;         /* root is there */
  /* PostgreSQL refuses to run as root: then the server tools run as the
   * postgres system user, who must own the directories. */
  bool as_postgres;
  uid_t pg_uid;
  gid_t pg_gid;
  char bindir[PATH_MAX];
  const char *bindir_from; /* how bindir was found, said by `db start|status` */
} cluster;

/* The output a tool printed, its last part kept (where errors are). */
typedef struct tool_output {
  char text[2048];
  size_t len;
} tool_output;

static int fail(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

static int fail(const char *fmt, ...) {
  char message[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  return cli_fail(CL_DB_ERROR, "%s", message);
}

static bool path_join(char *out, const char *dir, const char *name) {
  return (size_t)snprintf(out, PATH_MAX, "%s/%s", dir, name) < PATH_MAX;
}

static bool is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The last non-empty line of `text`, copied into `out`. */
static void last_line(const char *text, char *out, size_t size) {
  size_t end = strlen(text);
  while (end > 0 && (text[end - 1] == '\n' || text[end - 1] == ' ')) end--;
  size_t start = end;
  while (start > 0 && text[start - 1] != '\n') start--;
  snprintf(out, size, "%.*s", (int)(end - start), text + start);
}

/* The last line of the server log, which says why a start failed. */
static void log_tail(const cluster *c, char *out, size_t size) {
  out[0] = '\0';
  FILE *f = fopen(c->log, "r");
  if (!f) return;
  char buf[4096];
  long off = 0;
  if (fseek(f, 0, SEEK_END) == 0 && (off = ftell(f)) > (long)sizeof buf - 1)
    (void)fseek(f, off - (long)sizeof buf + 1, SEEK_SET);
  else (void)fseek(f, 0, SEEK_SET);
  /* A failed seek only shows more or less of the log's tail: fread's count
   * is what is used. */
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  (void)fclose(f); /* read only */
  last_line(buf, out, size);
}

/* ------------------------------------------------------------------ */
/* Running the PostgreSQL tools                                         */
/* ------------------------------------------------------------------ */

/* Becomes the postgres user, in a child before exec: what `runuser -u
 * postgres --` does, without a PAM session or one more program to find. */
static bool drop_to_postgres(const cluster *c) {
  return initgroups(DB_USER, c->pg_gid) == 0 && setgid(c->pg_gid) == 0 && setuid(c->pg_uid) == 0;
}

static void keep_tail(tool_output *out, const char *buf, size_t n) {
  size_t room = sizeof out->text - 1;
  if (n > room) {
    buf += n - room;
    n = room;
  }
  if (out->len + n > room) {
    size_t drop = out->len + n - room;
    memmove(out->text, out->text + drop, out->len - drop);
    out->len -= drop;
  }
  memcpy(out->text + out->len, buf, n);
  out->len += n;
  out->text[out->len] = '\0';
}

/*
 * Runs bindir/argv[0] with argv, as the postgres user when `server` and the
 * cluster needs it, with stdin from /dev/null and stdout+stderr captured in
 * *out.  The child starts in "/" (the postgres user may not be able to
 * enter our directory) without the PG* connection variables, so that
 * nothing but the arguments decides what the tool does.  Returns the exit
 * status, or -1 when it could not run or ran past `timeout` seconds (then
 * *out says which).
 */
static int run_tool(const cluster *c, bool server, const char *const argv[], int timeout,
                    tool_output *out) {
  char path[PATH_MAX];
  out->len = 0;
  out->text[0] = '\0';
  if (!path_join(path, c->bindir, argv[0])) {
    snprintf(out->text, sizeof out->text, "path too long");
    return -1;
  }
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    snprintf(out->text, sizeof out->text, "pipe: %s", strerror(errno));
    return -1;
  }
  pid_t pid = fork();
  if (pid < 0) {
    snprintf(out->text, sizeof out->text, "fork: %s", strerror(errno));
    close(fds[0]);
    close(fds[1]);
    return -1;
  }
  if (pid == 0) {
    static const char *const env[] = {"PGHOST", "PGHOSTADDR", "PGPORT",    "PGDATABASE",
                                      "PGUSER", "PGSERVICE",  "PGOPTIONS", "PGDATA"};
    int null = open("/dev/null", O_RDONLY);
    if (null < 0 || dup2(null, 0) < 0 || dup2(fds[1], 1) < 0 || dup2(fds[1], 2) < 0) _exit(127);
    for (size_t i = 0; i < sizeof env / sizeof env[0]; i++) unsetenv(env[i]);
    if (chdir("/") != 0 || (server && c->as_postgres && !drop_to_postgres(c))) {
      dprintf(2, "cannot become the %s user: %s\n", DB_USER, strerror(errno));
      _exit(127);
    }
    /* argv[0] absolute too: initdb looks for `postgres` next to its own
     * argv[0], and a bare name would be searched on a PATH that, on a
     * stock Debian machine, does not hold the server binaries. */
    const char *args[32];
    size_t n = 0;
    args[n++] = path;
    for (size_t i = 1; argv[i] && n < sizeof args / sizeof args[0] - 1; i++) args[n++] = argv[i];
    args[n] = NULL;
    execv(path, (char *const *)args);
    dprintf(2, "cannot run %s: %s\n", path, strerror(errno));
    _exit(127);
  }
  close(fds[1]);
  fcntl(fds[0], F_SETFL, O_NONBLOCK);

  /* Poll the pipe and the child together: a server started by pg_ctl may
   * keep a copy of the pipe open, so end-of-file is no sign of exit. */
  time_t deadline = time(NULL) + timeout;
  int status = 0;
  bool exited = false;
  char buf[1024];
  for (;;) {
    struct pollfd p = {fds[0], POLLIN, 0};
    poll(&p, 1, 100);
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0) keep_tail(out, buf, (size_t)n);
    if (exited) break;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      exited = true; /* one more read drains what is left */
      continue;
    }
    if (time(NULL) > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      close(fds[0]);
      snprintf(out->text, sizeof out->text, "%s did not finish within %d s", argv[0], timeout);
      return -1;
    }
  }
  close(fds[0]);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  snprintf(out->text, sizeof out->text, "%s was killed by signal %d", argv[0],
           WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  return -1;
}

/* A tool that must succeed: any failure is reported as db_error. */
static int must_run(const cluster *c, bool server, const char *const argv[], int timeout,
                    const char *what) {
  tool_output out;
  int code = run_tool(c, server, argv, timeout, &out);
  if (code == 0) return 0;
  char line[512];
  last_line(out.text, line, sizeof line);
  if (code < 0) return fail("%s: %s", what, line);
  return fail("%s failed (exit %d): %s", what, code, line);
}

/* A directory holding the three tools we run. */
static bool has_tools(const char *dir) {
  static const char *const tools[] = {"initdb", "pg_ctl", "createdb"};
  char p[PATH_MAX];
  for (size_t i = 0; i < sizeof tools / sizeof tools[0]; i++)
    if (!path_join(p, dir, tools[i]) || access(p, X_OK) != 0) return false;
  return true;
}

/* `pg_config --bindir`, as Debian's own tools ask (libpq-dev's pg_config
 * names the server's directory, which is off the PATH); false when there
 * is no pg_config or it names no directory with our tools. */
static bool bindir_from_pg_config(char *out, size_t size) {
  /* A fixed command line, with nothing from the user in it. */
  FILE *p = popen("pg_config --bindir 2>/dev/null", "r");  // NOLINT(cert-env33-c)
  if (!p) return false;
  char line[PATH_MAX];
  bool got = fgets(line, sizeof line, p) != NULL;
  pclose(p);
  if (!got) return false;
  line[strcspn(line, "\n")] = '\0';
  if (line[0] != '/' || !has_tools(line)) return false;
  snprintf(out, size, "%s", line);
  return true;
}

/* The newest /usr/lib/postgresql/N/bin holding our tools. */
static bool bindir_from_debian(char *out, size_t size) {
  DIR *d = opendir("/usr/lib/postgresql");
  long best = -1;
  if (!d) return false;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    char *end;
    long v = strtol(e->d_name, &end, 10);
    char dir[PATH_MAX];
    if (*end || end == e->d_name || v <= best) continue;
    snprintf(dir, sizeof dir, "/usr/lib/postgresql/%s/bin", e->d_name);
    if (has_tools(dir)) {
      best = v;
      snprintf(out, size, "%s", dir);
    }
  }
  closedir(d);
  return best >= 0;
}

/* The first absolute $PATH entry holding our tools. */
static bool bindir_from_path(char *out, size_t size) {
  const char *path = getenv("PATH");
  char *copy = path ? strdup(path) : NULL;
  char *save = NULL;
  bool found = false;
  for (char *dir = copy ? strtok_r(copy, ":", &save) : NULL; dir && !found;
       dir = strtok_r(NULL, ":", &save)) {
    if (*dir == '/' && has_tools(dir)) {
      snprintf(out, size, "%s", dir);
      found = true;
    }
  }
  free(copy);
  return found;
}

/* $CAIRNLOOP_PG_BINDIR, else `pg_config --bindir`, else Debian's newest
 * /usr/lib/postgresql/N/bin, else the PATH.  The tools then always run by
 * absolute path (run_tool). */
static int find_bindir(cluster *c) {
  const char *env = getenv("CAIRNLOOP_PG_BINDIR");
  if (env && *env) {
    if (*env != '/' || !has_tools(env))
      return fail("CAIRNLOOP_PG_BINDIR=%s is not an absolute directory holding initdb, pg_ctl "
                  "and createdb",
                  env);
    snprintf(c->bindir, sizeof c->bindir, "%s", env);
    c->bindir_from = "CAIRNLOOP_PG_BINDIR";
  } else if (bindir_from_pg_config(c->bindir, sizeof c->bindir)) {
    c->bindir_from = "pg_config --bindir";
  } else if (bindir_from_debian(c->bindir, sizeof c->bindir)) {
    c->bindir_from = "the newest /usr/lib/postgresql/*/bin";
  } else if (bindir_from_path(c->bindir, sizeof c->bindir)) {
    c->bindir_from = "PATH";
  } else {
    return fail("PostgreSQL's initdb, pg_ctl and createdb were not found (install the postgresql "
                "package, or set CAIRNLOOP_PG_BINDIR)");
  }
  return 0;
}

/*
 * The project directory: the nearest of the current directory and its
 * parents that holds a .cairnloop (as git finds .git), else the current
 * directory itself, where the cluster will be created.
 */
static int find_project(cluster *c) {
  if (!getcwd(c->cwd, sizeof c->cwd))
    return fail("cannot read the current directory: %s", strerror(errno));
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", c->cwd);
  for (;;) {
    char link[PATH_MAX];
    struct stat st;
    if (path_join(link, dir, LINK_NAME) && lstat(link, &st) == 0) {
      snprintf(c->cwd, sizeof c->cwd, "%s", dir);
      return 0;
    }
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return 0; /* reached "/" without finding one */
    *slash = '\0';
  }
}

/* ------------------------------------------------------------------ */
/* Where the cluster lives                                              */
/* ------------------------------------------------------------------ */

/* Whether the postgres user can reach `dir`: a child takes its identity
 * and asks the kernel, so modes, groups and ACLs all count. */
static bool postgres_can_reach(const cluster *c, const char *dir) {
  pid_t pid = fork();
  if (pid == 0) _exit(drop_to_postgres(c) && access(dir, X_OK) == 0 ? 0 : 1);
  int status;
  return pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
         WEXITSTATUS(status) == 0;
}

/*
 * Why ./.cairnloop cannot hold the cluster, or NULL if it can: pg_ctl
 * passes paths to a shell inside double quotes, a socket path has a
 * length limit, and as root the postgres user must be able to get there.
 */
static const char *private_dir_reason(const cluster *c) {
  struct sockaddr_un sa;
  if (strlen(c->link) + strlen("/run" SOCKET_FILE) >= sizeof sa.sun_path)
    return "is too long a path for a PostgreSQL socket";
  if (strpbrk(c->cwd, "\"$`\\\n")) return "has characters that pg_ctl cannot pass on";
  if (c->as_postgres && !postgres_can_reach(c, c->cwd))
    return "cannot be reached by the postgres user";
  return NULL;
}

/* /var/tmp/cairnloop-<uid>-<FNV-1a hash of the directory>: stable per
 * checkout, so the link can be recreated and still find its cluster. */
static void private_dir(const cluster *c, char *out) {
  uint64_t h = 14695981039346656037ULL;
  for (const char *p = c->cwd; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
  snprintf(out, PATH_MAX, "/var/tmp/cairnloop-%u-%016llx", (unsigned)geteuid(),
           (unsigned long long)h);
}

/* mkdir that accepts an existing directory, then hands it to postgres when
 * the server runs as postgres. */
static int make_dir(const cluster *c, const char *path, mode_t mode) {
  if (mkdir(path, mode) != 0 && errno != EEXIST)
    return fail("cannot create %s: %s", path, strerror(errno));
  struct stat st;
  if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode))
    return fail("%s exists and is not a directory", path);
  /* A directory in /var/tmp could have been planted by another user. */
  if (st.st_uid != geteuid() && !(c->as_postgres && st.st_uid == c->pg_uid))
    return fail("%s belongs to another user (uid %u)", path, (unsigned)st.st_uid);
  if (c->as_postgres && st.st_uid != c->pg_uid && chown(path, c->pg_uid, c->pg_gid) != 0)
    return fail("cannot give %s to the %s user: %s", path, DB_USER, strerror(errno));
  return 0;
}

/*
 * Fills `c` for the cluster of the project (find_project).  With `create`, makes
 * the directories (and, when ./.cairnloop cannot hold the cluster, a
 * private directory linked from ./.cairnloop, saying so once).
 */
static int locate(cluster *c, bool create) {
  memset(c, 0, sizeof *c);
  int found = find_project(c);
  if (found != 0) return found;
  if (!path_join(c->link, c->cwd, LINK_NAME))
    return fail("the current directory's path is too long");
  if (geteuid() == 0) {
    struct passwd pwbuf, *pw = NULL;
    char strings[4096]; /* the entry's strings; 4 KiB is sysconf's usual hint */
    if (getpwnam_r(DB_USER, &pwbuf, strings, sizeof strings, &pw) != 0) pw = NULL;
    if (!pw)
      return fail("PostgreSQL does not run as root and there is no '%s' user to run it", DB_USER);
    c->as_postgres = true;
    c->pg_uid = pw->pw_uid;
    c->pg_gid = pw->pw_gid;
  }
  int rc = find_bindir(c);
  if (rc != 0) return rc;

  struct stat st;
  if (lstat(c->link, &st) != 0) {
    if (errno != ENOENT) return fail("cannot look at %s: %s", c->link, strerror(errno));
    const char *why = private_dir_reason(c);
    if (!why) {
      snprintf(c->root, sizeof c->root, "%s", c->link);
    } else {
      private_dir(c, c->root);
      if (create) {
        if ((rc = make_dir(c, c->root, 0755)) != 0) return rc;
        if (symlink(c->root, c->link) == 0)
          fprintf(stderr,
                  "cairnloop: %s %s, so the embedded cluster lives in %s (linked from ./%s)\n",
                  c->cwd, why, c->root, LINK_NAME);
        else if (errno != EEXIST) /* EEXIST: a concurrent command made it */
          return fail("cannot create the link %s: %s", c->link, strerror(errno));
      }
    }
  } else if (S_ISLNK(st.st_mode)) {
    ssize_t n = readlink(c->link, c->root, sizeof c->root - 1);
    if (n <= 0 || c->root[0] != '/')
      return fail("%s is a link, but not to an absolute path", c->link);
    c->root[n] = '\0';
  } else if (S_ISDIR(st.st_mode)) {
    snprintf(c->root, sizeof c->root, "%s", c->link);
  } else {
    return fail("%s exists and is not a directory", c->link);
  }

  if (!path_join(c->data, c->root, "data") || !path_join(c->sock, c->root, "run") ||
      !path_join(c->log, c->root, "postgres.log"))
    return fail("the path %s is too long", c->root);
  if (create) {
    if ((rc = make_dir(c, c->root, 0755)) != 0) return rc;
    /* Private: with trust authentication, whoever reaches the socket is
     * the superuser. */
    if ((rc = make_dir(c, c->sock, 0700)) != 0) return rc;
  }
  c->exists = is_dir(c->root);
  return 0;
}

/* The libpq URL of the cluster; malloc'd. */
static char *cluster_url(const cluster *c) {
  static const char hex[] = "0123456789ABCDEF";
  char host[PATH_MAX * 3];
  size_t n = 0;
  for (const unsigned char *p = (const unsigned char *)c->sock; *p; p++) {
    if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
        strchr("/-._~", *p)) {
      host[n++] = (char)*p;
    } else {
      host[n++] = '%';
      host[n++] = hex[*p >> 4];
      host[n++] = hex[*p & 15];
    }
  }
  host[n] = '\0';
  char *url = NULL;
  if (asprintf(&url, "postgresql:///%s?host=%s&port=%s&user=%s", DB_NAME, host, DB_PORT, DB_USER) <
      0)
    return NULL;
  return url;
}

/* ------------------------------------------------------------------ */
/* Server state                                                         */
/* ------------------------------------------------------------------ */

static bool initialised(const cluster *c) {
  char p[PATH_MAX];
  return path_join(p, c->data, "PG_VERSION") && is_file(p);
}

/* Sets *pid to the running server's pid, or 0 when none runs: pg_ctl
 * status decides (it checks the pid file and that the process lives).
 * Returns 0, or the reported exit status when pg_ctl itself failed. */
static int server_pid(const cluster *c, long *pid) {
  *pid = 0;
  if (!c->exists || !initialised(c)) return 0;
  const char *argv[] = {"pg_ctl", "status", "-D", c->data, NULL};
  tool_output out;
  int code = run_tool(c, true, argv, QUICK_TIMEOUT, &out);
  if (code == 0) {
    const char *p = strstr(out.text, "PID: ");
    *pid = p ? strtol(p + 5, NULL, 10) : 0;
    *pid = *pid > 0 ? *pid : 1; /* running, pid unknown */
    return 0;
  }
  if (code == 3 || code == 4) /* not running; no usable data directory */
    return 0;
  char line[512];
  last_line(out.text, line, sizeof line);
  return fail("pg_ctl status: %s", line);
}

/* Serialises initdb and start between concurrent commands. */
static int lock_cluster(const cluster *c, int *fd) {
  char path[PATH_MAX];
  if (!path_join(path, c->root, "lock")) return fail("the path %s is too long", c->root);
  *fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (*fd < 0) return fail("cannot open %s: %s", path, strerror(errno));
  for (int waited = 0; flock(*fd, LOCK_EX | LOCK_NB) != 0; waited++) {
    if (errno != EWOULDBLOCK || waited >= LOCK_TIMEOUT * 10) {
      close(*fd);
      return fail("another cairnloop command held %s for %d s", path, LOCK_TIMEOUT);
    }
    nanosleep(&(struct timespec){0, 100 * 1000 * 1000}, NULL);
  }
  return 0;
}

/* Writes `text` to `path` and hands the file to postgres when needed. */
static int write_file(const cluster *c, const char *path, const char *mode, const char *text) {
  FILE *f = fopen(path, mode);
  if (!f || fputs(text, f) < 0 || fclose(f) != 0)
    return fail("cannot write %s: %s", path, strerror(errno));
  if (c->as_postgres && chown(path, c->pg_uid, c->pg_gid) != 0)
    return fail("cannot give %s to the %s user: %s", path, DB_USER, strerror(errno));
  return 0;
}

/* The settings are rewritten before every start, so the socket follows a
 * checkout that moved.  Values are single-quoted for postgresql.conf. */
static int write_settings(const cluster *c) {
  char conf[PATH_MAX], text[PATH_MAX * 2 + 512];
  size_t n = (size_t)snprintf(text, sizeof text,
                              "# Written by `cairnloop db start` before every start.\n"
                              "listen_addresses = ''\n"
                              "port = %s\n"
                              "unix_socket_permissions = 0700\n"
                              "unix_socket_directories = '",
                              DB_PORT);
  for (const char *p = c->sock; *p && n + 4 < sizeof text; p++) {
    if (*p == '\'') text[n++] = '\'';
    text[n++] = *p;
  }
  snprintf(text + n, sizeof text - n, "'\n");
  if (!path_join(conf, c->data, "cairnloop.conf")) return fail("the path %s is too long", c->data);
  return write_file(c, conf, "w", text);
}

static int init_cluster(const cluster *c) {
  fprintf(stderr, "cairnloop: creating the embedded PostgreSQL cluster in %s (first use)\n",
          c->root);
  /* UTF8 whatever the locale of the caller: bodies are UTF-8 text. */
  const char *argv[] = {"initdb", "-D", c->data, "-A",          "trust",     "-U",
                        DB_USER,  "-E", "UTF8",  "--no-locale", "--no-sync", NULL};
  int rc = must_run(c, true, argv, INITDB_TIMEOUT, "initdb");
  char conf[PATH_MAX];
  if (rc == 0 && !path_join(conf, c->data, "postgresql.conf"))
    rc = fail("the path %s is too long", c->data);
  if (rc == 0)
    rc = write_file(c, conf, "a",
                    "\n# cairnloop: socket-only settings\n"
                    "include_if_exists = 'cairnloop.conf'\n");
  return rc;
}

static int start_server(const cluster *c) {
  int rc = write_settings(c);
  if (rc != 0) return rc;
  const char *argv[] = {"pg_ctl", "start", "-D", c->data,     "-l",
                        c->log,   "-w",    "-t", PG_CTL_WAIT, NULL};
  tool_output out;
  int code = run_tool(c, true, argv, PG_CTL_TIMEOUT, &out);
  if (code == 0) return 0;
  char why[512];
  log_tail(c, why, sizeof why);
  if (!why[0]) last_line(out.text, why, sizeof why);
  return fail("the embedded PostgreSQL did not start: %s (log: %s)", why, c->log);
}

/* The database is created once; a marker in the data directory remembers
 * it, so a later start costs no round trip. */
static int create_database(const cluster *c) {
  char marker[PATH_MAX];
  if (!path_join(marker, c->data, "cairnloop.created"))
    return fail("the path %s is too long", c->data);
  if (is_file(marker)) return 0;
  const char *argv[] = {"createdb", "-h", c->sock, "-p", DB_PORT, "-U", DB_USER, DB_NAME, NULL};
  tool_output out;
  int code = run_tool(c, false, argv, QUICK_TIMEOUT, &out);
  if (code != 0 && !strstr(out.text, "already exists")) {
    char line[512];
    last_line(out.text, line, sizeof line);
    return fail("createdb %s failed: %s", DB_NAME, line);
  }
  return write_file(c, marker, "w", "");
}

/* Initialises and starts the cluster as needed; *started says whether this
 * call started it, *pid is the server's. */
static int ensure_running(cluster *c, bool *started, long *pid) {
  int rc = locate(c, true);
  int fd = -1;
  if (rc == 0) rc = lock_cluster(c, &fd);
  if (rc != 0) return rc;
  *started = false;
  if (!initialised(c)) rc = init_cluster(c);
  if (rc == 0) rc = server_pid(c, pid);
  if (rc == 0 && *pid == 0) {
    rc = start_server(c);
    *started = rc == 0;
    if (rc == 0) rc = server_pid(c, pid);
  }
  if (rc == 0) rc = create_database(c);
  close(fd); /* releases the lock */
  return rc;
}

int cli_db_ensure(char **url) {
  cluster c;
  bool started;
  long pid;
  int rc = ensure_running(&c, &started, &pid);
  if (rc != 0) return rc;
  if (started)
    fprintf(stderr, "cairnloop: started the embedded PostgreSQL in %s (binaries: %s, from %s)\n",
            c.root, c.bindir, c.bindir_from);
  *url = cluster_url(&c);
  return *url ? 0 : fail("out of memory");
}

/* ------------------------------------------------------------------ */
/* cairnloop db start|stop|status|url                                   */
/* ------------------------------------------------------------------ */

/* The state of the cluster, for people (headed by `verb` when it runs) or
 * as one JSON object. */
static int print_state(const cli_ctx *ctx, const cluster *c, long pid, const char *url,
                       const char *verb) {
  bool init = initialised(c);
  if (ctx->json)
    return cli_json_print(json_pack("{s:b, s:o, s:b, s:s, s:s, s:s, s:s, s:s, s:s}", "running",
                                    pid > 0, "pid", pid > 0 ? json_integer(pid) : json_null(),
                                    "initialised", init, "data_dir", c->data, "socket_dir", c->sock,
                                    "log", c->log, "url", url, "bindir", c->bindir, "bindir_from",
                                    c->bindir_from));
  if (pid > 0) printf("%s (pid %ld)\n", verb, pid);
  else if (init) printf("not running\n");
  else printf("not running (not created yet: `cairnloop db start` creates it)\n");
  printf("data:   %s\nsocket: %s\nlog:    %s\nurl:    %s\nserver: %s (from %s)\n", c->data, c->sock,
         c->log, url, c->bindir, c->bindir_from);
  return 0;
}

static int db_start(const cli_ctx *ctx) {
  cluster c;
  bool started;
  long pid;
  int rc = ensure_running(&c, &started, &pid);
  char *url = rc == 0 ? cluster_url(&c) : NULL;
  if (rc == 0 && !url) rc = fail("out of memory");
  if (rc == 0) rc = print_state(ctx, &c, pid, url, started ? "started" : "already running");
  free(url);
  return rc;
}

static int db_stop(const cli_ctx *ctx) {
  cluster c;
  int rc = locate(&c, false);
  if (rc != 0) return rc;
  long pid;
  if ((rc = server_pid(&c, &pid)) != 0) return rc;
  bool was_running = pid > 0;
  if (was_running) {
    const char *argv[] = {"pg_ctl", "stop", "-D", c.data,      "-m",
                          "fast",   "-w",   "-t", PG_CTL_WAIT, NULL};
    if ((rc = must_run(&c, true, argv, PG_CTL_TIMEOUT, "pg_ctl stop")) != 0) return rc;
  }
  if (ctx->json)
    return cli_json_print(json_pack("{s:b, s:b}", "stopped", 1, "was_running", was_running));
  printf("%s\n", was_running ? "stopped" : "not running");
  return 0;
}

static int db_status(const cli_ctx *ctx) {
  cluster c;
  int rc = locate(&c, false);
  if (rc != 0) return rc;
  long pid;
  if ((rc = server_pid(&c, &pid)) != 0) return rc;
  char *url = cluster_url(&c);
  if (!url) return fail("out of memory");
  rc = print_state(ctx, &c, pid, url, "running");
  free(url);
  return rc != 0 ? rc : pid > 0 ? 0 : CLI_EXIT_NOT_RUNNING;
}

static int db_url(const cli_ctx *ctx) {
  cluster c;
  int rc = locate(&c, false);
  if (rc != 0) return rc;
  char *url = cluster_url(&c);
  if (!url) return fail("out of memory");
  if (ctx->json) rc = cli_json_print(json_pack("{s:s}", "url", url));
  else printf("%s\n", url);
  free(url);
  return rc;
}

int cli_cmd_db(cli_ctx *ctx) {
  static const struct {
    const char *name;
    int (*run)(const cli_ctx *ctx);
  } actions[] = {{"start", db_start}, {"stop", db_stop}, {"status", db_status}, {"url", db_url}};
  for (size_t i = 0; i < sizeof actions / sizeof actions[0]; i++)
    if (strcmp(ctx->args[0], actions[i].name) == 0) return actions[i].run(ctx);
  return cli_fail(CL_INVALID_ARGUMENT, "db: unknown action '%s' (start, stop, status, url)",
                  ctx->args[0]);
}
