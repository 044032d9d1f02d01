/*
 * http.c - the notifiers' HTTP client on libcurl's multi interface: one
 * CURLM per client, whose connection cache keeps connections alive between
 * transfers, and a pool of easy handles reused from one transfer to the
 * next.  The allow list is checked against curl's own parse of the URL
 * (curl_url), and that same parse is what the transfer fetches
 * (CURLOPT_CURLU): what was checked is what is requested.
 * Uses the engine's error helper (engine.h) and libcurl; nothing else.
 */
#include "http.h"

#include "engine.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Response headers kept, all lines together (1xx responses included):
 * past it the transfer ends "too_large", like a body past its cap. */
#define HEADERS_MAX ((size_t)256 * 1024)
/* Connecting never takes longer than this, whatever the transfer's timeout:
 * a destination that does not answer a SYN in 10 s is down. */
#define CONNECT_TIMEOUT_MS 10000L
/* Idle easy handles kept for reuse; more than a worker's concurrency
 * (default 10) seldom helps. */
#define POOL_MAX 64
/* Idle connections the multi keeps open (its default is four per handle
 * in it, which drops to four once a burst of transfers is over). */
#define CONNECTIONS_MAX 64L

typedef enum host_kind {
  HOST_EXACT,  /* "example.com", "127.0.0.1", "[::1]" */
  HOST_SUFFIX, /* "*.example.com": any subdomain, not the domain itself */
  HOST_ANY     /* "*" */
} host_kind;

/* One parsed allow-list pattern. */
typedef struct pattern {
  bool https;
  host_kind kind;
  char *host; /* lowercased, no trailing dot; HOST_SUFFIX: with its leading dot */
  long port;  /* -1: any */
  char *path; /* prefix the URL's path must start with; NULL: any path */
} pattern;

/* One transfer; the same struct (and its easy handle) serves again once
 * back in the pool. */
typedef struct xfer {
  struct xfer *next, *prev; /* h->active (both), h->idle and a finished list (next) */
  CURL *easy;
  CURLU *url; /* the checked URL the transfer fetches; freed by release() */
  struct curl_slist *lines;
  cl__http_done_fn done;
  void *ud;
  CURLcode result;
  char *body;
  size_t body_len, body_cap;
  cl__http_header *headers;
  size_t nheaders, headers_cap, header_bytes;
  bool over_body, over_headers, out_of_memory;
  char errbuf[CURL_ERROR_SIZE];
} xfer;

struct cl__http {
  CURLM *multi;
  pattern *patterns;
  size_t npatterns;
  xfer *active; /* in the multi, in flight */
  int nactive;
  xfer *idle; /* the pool */
  int nidle;
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                        */
/* ------------------------------------------------------------------ */

/* curl_global_init is not reentrant and must run once per process (it is
 * thread-safe from curl 7.84 on, but only the first call does anything):
 * the one piece of process state here, guarded by pthread_once. */
static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_result = CURLE_FAILED_INIT;
static void global_init(void) { global_result = curl_global_init(CURL_GLOBAL_DEFAULT); }

/* ASCII only: host names and header names, never the locale's idea. */
static char lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c; }
static void lower_str(char *s) {
  for (; *s; s++) *s = lower(*s);
}

static void set_detail(char *detail, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_detail(char *detail, size_t cap, const char *fmt, ...) {
  if (!detail || !cap) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, cap, fmt, ap);
  va_end(ap);
  /* One line for the log, whatever curl's message held. */
  for (char *p = detail; *p; p++)
    if (*p == '\r' || *p == '\n') *p = ' ';
}

/* RFC 9110 token characters: methods and header names. */
static bool is_tchar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool is_token(const char *s, size_t n) {
  if (n == 0) return false;
  for (size_t i = 0; i < n; i++)
    if (!is_tchar((unsigned char)s[i])) return false;
  return true;
}

/* ------------------------------------------------------------------ */
/* The allow list                                                       */
/* ------------------------------------------------------------------ */

/* A URL part as curl parsed it (malloc'd, caller frees), or NULL when absent. */
static char *url_part(CURLU *u, CURLUPart part, unsigned flags) {
  char *curl_s = NULL, *s;
  if (curl_url_get(u, part, &curl_s, flags) != CURLUE_OK || !curl_s) return NULL;
  s = strdup(curl_s);
  curl_free(curl_s);
  return s;
}

static bool has_part(CURLU *u, CURLUPart part) {
  char *s = NULL;
  CURLUcode rc = curl_url_get(u, part, &s, 0);
  curl_free(s);
  return rc == CURLUE_OK;
}

/* Lowercases a host curl returned and drops one trailing dot (the same
 * name, fully qualified); false when it is not ASCII: names beyond ASCII
 * must be written in their punycode form, which is what DNS resolves. */
static bool canonical_host(char *host) {
  size_t n = strlen(host);
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)host[i] >= 0x80) return false;
  lower_str(host);
  if (n > 1 && host[n - 1] == '.') host[n - 1] = '\0';
  return true;
}

/* `s` with control and non-ASCII bytes as '?', for a one-line message. */
static const char *printable(const char *s, char *buf, size_t cap) {
  size_t i = 0;
  for (; s[i] && i + 1 < cap; i++)
    buf[i] = (unsigned char)s[i] < ' ' || (unsigned char)s[i] >= 0x7f ? '?' : s[i];
  buf[i] = '\0';
  return buf;
}

static void pattern_clear(pattern *p) {
  free(p->host);
  free(p->path);
  memset(p, 0, sizeof *p);
}

/* Parses "scheme://host[:port][/path-prefix]"; host and path go through
 * curl_url, as URLs will, so that both are compared in the form curl
 * fetches ("127.1" is 127.0.0.1, "[0:0::1]" is [::1], "/a/../b" is /b). */
static cl_status parse_pattern(const char *text, pattern *p, cl_error *err) {
  const char *sep, *auth, *auth_end, *host_end, *port_s = NULL;
  char *url = NULL;
  CURLU *u = NULL;
  cl_status st = CL_OK;
  size_t len = strlen(text);
  char shown[128];

  memset(p, 0, sizeof *p);
  /* The text goes into the message: only printable ASCII gets that far. */
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)text[i];
    if (c <= ' ' || c >= 0x7f || strchr("@?#\\", c))
      return cl__fail(
          err, CL_INVALID_ARGUMENT,
          "http_allow: \"%.120s\" is not a pattern (scheme://host[:port][/path-prefix], "
          "no user info, query, fragment or blank)",
          printable(text, shown, sizeof shown));
  }
  sep = strstr(text, "://");
  if (!sep || !((sep - text == 4 && strncasecmp(text, "http", 4) == 0) ||
                (sep - text == 5 && strncasecmp(text, "https", 5) == 0)))
    return cl__fail(err, CL_INVALID_ARGUMENT,
                    "http_allow: \"%.120s\" is not an http or https pattern", text);
  p->https = sep - text == 5;

  auth = sep + 3;
  auth_end = auth + strcspn(auth, "/");
  if (*auth == '[') {
    const char *close = memchr(auth, ']', (size_t)(auth_end - auth));
    if (!close)
      return cl__fail(err, CL_INVALID_ARGUMENT, "http_allow: \"%.120s\" has a bad host", text);
    host_end = close + 1;
  } else {
    host_end = memchr(auth, ':', (size_t)(auth_end - auth));
    if (!host_end) host_end = auth_end;
  }
  if (host_end != auth_end) {
    if (*host_end != ':')
      return cl__fail(err, CL_INVALID_ARGUMENT, "http_allow: \"%.120s\" has a bad host", text);
    port_s = host_end + 1;
  }
  if (host_end == auth)
    return cl__fail(err, CL_INVALID_ARGUMENT, "http_allow: \"%.120s\" has no host", text);

  /* The port: "*", a number, or the scheme's default. */
  p->port = p->https ? 443 : 80;
  if (port_s) {
    size_t n = (size_t)(auth_end - port_s);
    long v = 0;
    if (n == 1 && *port_s == '*') {
      v = -1;
    } else {
      for (size_t i = 0; i < n; i++) {
        if (port_s[i] < '0' || port_s[i] > '9' || v > 65535) {
          v = 0;
          break;
        }
        v = v * 10 + (port_s[i] - '0');
      }
      if (v < 1 || v > 65535)
        return cl__fail(err, CL_INVALID_ARGUMENT, "http_allow: \"%.120s\" has a bad port", text);
    }
    p->port = v;
  }

  /* The host: "*", "*." and a domain, or a name or address. */
  const char *host = auth;
  size_t host_len = (size_t)(host_end - auth);
  if (host_len == 1 && *host == '*') {
    p->kind = HOST_ANY;
    host = "wildcard.invalid"; /* only to parse the path below */
    host_len = strlen(host);
  } else if (host_len > 2 && host[0] == '*' && host[1] == '.') {
    p->kind = HOST_SUFFIX;
    host += 2;
    host_len -= 2;
  } else {
    p->kind = HOST_EXACT;
  }

  if (asprintf(&url, "http://%.*s%s", (int)host_len, host, auth_end) < 0) {
    url = NULL;
    st = cl__fail(err, CL_DB_ERROR, "http_allow: out of memory");
    goto done;
  }
  u = curl_url();
  if (!u) {
    st = cl__fail(err, CL_DB_ERROR, "http_allow: out of memory");
    goto done;
  }
  if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK) {
    st = cl__fail(err, CL_INVALID_ARGUMENT, "http_allow: \"%.120s\" has a bad host or path", text);
    goto done;
  }
  if (p->kind != HOST_ANY) {
    char *h = url_part(u, CURLUPART_HOST, 0);
    if (!h || !canonical_host(h) || (*h == '[' && p->kind == HOST_SUFFIX)) {
      free(h);
      st = cl__fail(err, CL_INVALID_ARGUMENT, "http_allow: \"%.120s\" has a bad host", text);
      goto done;
    }
    if (p->kind == HOST_SUFFIX) {
      /* Stored with its dot: "a.example.com" ends with ".example.com",
       * "badexample.com" and "example.com" do not. */
      if (asprintf(&p->host, ".%s", h) < 0) p->host = NULL;
      free(h);
    } else {
      p->host = h;
    }
    if (!p->host) {
      st = cl__fail(err, CL_DB_ERROR, "http_allow: out of memory");
      goto done;
    }
  }
  if (*auth_end) {
    p->path = url_part(u, CURLUPART_PATH, 0);
    if (!p->path) {
      st = cl__fail(err, CL_DB_ERROR, "http_allow: out of memory");
      goto done;
    }
  }

done:
  curl_url_cleanup(u);
  free(url);
  if (st != CL_OK) pattern_clear(p);
  return st;
}

static bool pattern_matches(const pattern *p, bool https, const char *host, long port,
                            const char *path) {
  if (p->https != https) return false;
  if (p->port >= 0 && p->port != port) return false;
  if (p->kind == HOST_EXACT && strcmp(host, p->host) != 0) return false;
  if (p->kind == HOST_SUFFIX) {
    size_t hl = strlen(host), sl = strlen(p->host);
    if (hl <= sl || strcmp(host + hl - sl, p->host) != 0) return false;
  }
  return !p->path || strncmp(path, p->path, strlen(p->path)) == 0;
}

/* curl removes the "." and ".." segments of a path before the allow list
 * sees it, but not encoded ones ("/hooks/%2e%2e/admin", "/hooks/..%2fadmin"),
 * which a server may decode into the same thing: a path that decodes to a
 * dot segment (split at '/' or '\\') is refused, as no real URL needs one.
 * A path that does not decode (an encoded NUL) is refused too. */
static bool encoded_dot_segment(CURLU *u) {
  char *path = url_part(u, CURLUPART_PATH, CURLU_URLDECODE);
  bool dot = path == NULL;
  for (const char *seg = path; seg && !dot;) {
    size_t n = strcspn(seg, "/\\");
    dot = (n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.');
    seg = seg[n] ? seg + n + 1 : NULL;
  }
  free(path);
  return dot;
}

/* Parses and checks `url`; on NULL (allowed) *out gets curl's parse of it. */
static const char *check_url(const cl__http *h, const char *url, CURLU **out, char *detail,
                             size_t cap) {
  const char *why = NULL;
  char *scheme = NULL, *host = NULL, *port_s = NULL, *path = NULL;
  CURLU *u = NULL;
  CURLUcode rc;

  *out = NULL;
  if (!url || !*url) {
    set_detail(detail, cap, "no URL");
    return "invalid_request";
  }
  if (h->npatterns == 0) {
    set_detail(detail, cap, "no destination is allowed (http_allow is empty)");
    return "not_allowed";
  }
  u = curl_url();
  if (!u) {
    set_detail(detail, cap, "out of memory");
    return "error";
  }
  /* Any scheme parses, so that "file:" or "gopher:" is refused by name
   * below rather than as an unparsable URL. */
  rc = curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME);
  if (rc == CURLUE_OUT_OF_MEMORY) {
    set_detail(detail, cap, "out of memory");
    why = "error";
    goto done;
  }
  if (rc != CURLUE_OK) {
    set_detail(detail, cap, "not a URL: %s", curl_url_strerror(rc));
    why = "invalid_request";
    goto done;
  }
  scheme = url_part(u, CURLUPART_SCHEME, 0);
  if (!scheme || (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)) {
    set_detail(detail, cap, "only http and https URLs may be requested");
    why = "not_allowed";
    goto done;
  }
  /* "http://127.0.0.1:80@evil.com/" is evil.com; user info is refused
   * outright rather than trusted to be read the same way everywhere. */
  if (has_part(u, CURLUPART_USER) || has_part(u, CURLUPART_PASSWORD) ||
      has_part(u, CURLUPART_OPTIONS)) {
    set_detail(detail, cap, "a URL with user info is never allowed");
    why = "not_allowed";
    goto done;
  }
  /* An IPv6 zone ("[fe80::1%25eth0]") picks an interface: no webhook needs it. */
  if (has_part(u, CURLUPART_ZONEID)) {
    set_detail(detail, cap, "a URL with an IPv6 zone is never allowed");
    why = "not_allowed";
    goto done;
  }
  host = url_part(u, CURLUPART_HOST, 0);
  port_s = url_part(u, CURLUPART_PORT, CURLU_DEFAULT_PORT);
  path = url_part(u, CURLUPART_PATH, 0);
  if (!host || !port_s || !path) {
    set_detail(detail, cap, "the URL lacks a host");
    why = "invalid_request";
    goto done;
  }
  if (!canonical_host(host)) {
    set_detail(detail, cap, "host names must be ASCII (punycode for other names)");
    why = "not_allowed";
    goto done;
  }
  if (encoded_dot_segment(u)) {
    set_detail(detail, cap, "a path with an encoded \".\" or \"..\" segment is never allowed");
    why = "not_allowed";
    goto done;
  }
  bool https = strcasecmp(scheme, "https") == 0;
  long port = strtol(port_s, NULL, 10);
  bool ok = false;
  for (size_t i = 0; i < h->npatterns && !ok; i++)
    ok = pattern_matches(&h->patterns[i], https, host, port, path);
  if (!ok) {
    /* Scheme, host and port only: a path or query may carry a token. */
    set_detail(detail, cap, "%s://%.100s:%ld is not allowed by http_allow",
               https ? "https" : "http", host, port);
    why = "not_allowed";
    goto done;
  }
  *out = u;
  u = NULL;

done:
  free(scheme);
  free(host);
  free(port_s);
  free(path);
  curl_url_cleanup(u);
  return why;
}

cl_status cl__http_new(const char *const *allow, cl__http **out, cl_error *err) {
  cl__http *h;
  size_t n = 0;
  cl_status st;

  if (!out) return cl__fail(err, CL_INVALID_ARGUMENT, "http: no output pointer");
  *out = NULL;
  pthread_once(&global_once, global_init);
  if (global_result != CURLE_OK)
    return cl__fail(err, CL_DB_ERROR, "http: curl_global_init failed: %s",
                    curl_easy_strerror(global_result));
  while (allow && allow[n]) n++;

  h = calloc(1, sizeof *h);
  if (!h) return cl__fail(err, CL_DB_ERROR, "http: out of memory");
  if (n) {
    h->patterns = calloc(n, sizeof *h->patterns);
    if (!h->patterns) {
      st = cl__fail(err, CL_DB_ERROR, "http: out of memory");
      goto fail;
    }
  }
  for (size_t i = 0; i < n; i++) {
    st = parse_pattern(allow[i], &h->patterns[i], err);
    if (st != CL_OK) goto fail;
    h->npatterns++;
  }
  h->multi = curl_multi_init();
  if (!h->multi) {
    st = cl__fail(err, CL_DB_ERROR, "http: curl_multi_init failed");
    goto fail;
  }
  curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, CONNECTIONS_MAX);
  *out = h;
  return CL_OK;

fail:
  cl__http_free(h);
  return st;
}

bool cl__http_allowed(const cl__http *h, const char *url) {
  CURLU *u = NULL;
  if (!h || check_url(h, url, &u, NULL, 0)) return false;
  curl_url_cleanup(u);
  return true;
}

size_t cl__http_patterns(const cl__http *h) { return h ? h->npatterns : 0; }

/* ------------------------------------------------------------------ */
/* Transfers                                                            */
/* ------------------------------------------------------------------ */

static void headers_clear(xfer *x) {
  for (size_t i = 0; i < x->nheaders; i++) {
    free(x->headers[i].name);
    free(x->headers[i].value);
  }
  x->nheaders = 0;
}

/* What one transfer held, so that the struct can serve again. */
static void release(xfer *x) {
  headers_clear(x);
  free(x->headers);
  x->headers = NULL;
  x->headers_cap = 0;
  x->header_bytes = 0;
  free(x->body);
  x->body = NULL;
  x->body_len = x->body_cap = 0;
  curl_slist_free_all(x->lines);
  x->lines = NULL;
  x->over_body = x->over_headers = x->out_of_memory = false;
  x->done = NULL;
  x->ud = NULL;
  x->errbuf[0] = '\0';
}

static void destroy(xfer *x) {
  if (!x) return;
  release(x);
  if (x->easy) curl_easy_cleanup(x->easy);
  curl_url_cleanup(x->url); /* after the handle that used it */
  free(x);
}

/* Back to the pool: curl_easy_reset clears the options, the handle keeps
 * nothing of this transfer (the connection went back to the multi's cache). */
static void recycle(cl__http *h, xfer *x) {
  release(x);
  if (h->nidle >= POOL_MAX) {
    destroy(x);
    return;
  }
  curl_easy_reset(x->easy);
  curl_url_cleanup(x->url);
  x->url = NULL;
  x->next = h->idle;
  x->prev = NULL;
  h->idle = x;
  h->nidle++;
}

static size_t on_body(char *data, size_t size, size_t n, void *ud) {
  xfer *x = ud;
  size_t len = size * n;
  if (len > CL__HTTP_MAX_BODY - x->body_len) {
    x->over_body = true;
    return 0; /* curl ends the transfer: CURLE_WRITE_ERROR */
  }
  if (x->body_len + len + 1 > x->body_cap) {
    size_t cap = x->body_cap ? x->body_cap : 4096;
    while (cap < x->body_len + len + 1) cap *= 2;
    if (cap > CL__HTTP_MAX_BODY + 1) cap = CL__HTTP_MAX_BODY + 1;
    char *p = realloc(x->body, cap);
    if (!p) {
      x->out_of_memory = true;
      return 0;
    }
    x->body = p;
    x->body_cap = cap;
  }
  memcpy(x->body + x->body_len, data, len);
  x->body_len += len;
  x->body[x->body_len] = '\0';
  return len;
}

static bool trim_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* Every header line of every response curl reads, the status lines too:
 * a status line starts a new response (after a 100 Continue, say), so only
 * the final response's headers remain. */
static size_t on_header(char *line, size_t size, size_t n, void *ud) {
  xfer *x = ud;
  size_t len = size * n, end = len, vstart;
  const char *colon;

  x->header_bytes += len;
  if (x->header_bytes > HEADERS_MAX) {
    x->over_headers = true;
    return 0;
  }
  while (end > 0 && (line[end - 1] == '\r' || line[end - 1] == '\n')) end--;
  if (end >= 5 && memcmp(line, "HTTP/", 5) == 0) {
    headers_clear(x);
    return len;
  }
  if (end == 0) return len; /* the blank line that ends a head */
  if (line[0] == ' ' || line[0] == '\t') {
    /* An obsolete folded continuation: part of the previous value. */
    if (x->nheaders == 0) return len;
    cl__http_header *last = &x->headers[x->nheaders - 1];
    size_t s = 0, old = strlen(last->value);
    while (s < end && trim_blank(line[s])) s++;
    char *v = realloc(last->value, old + 1 + (end - s) + 1);
    if (!v) goto oom;
    v[old] = ' ';
    memcpy(v + old + 1, line + s, end - s);
    v[old + 1 + end - s] = '\0';
    last->value = v;
    return len;
  }
  colon = memchr(line, ':', end);
  if (!colon || colon == line) return len; /* not a header: curl has judged it */
  if (x->nheaders == x->headers_cap) {
    size_t cap = x->headers_cap ? x->headers_cap * 2 : 16;
    cl__http_header *p = realloc(x->headers, cap * sizeof *p);
    if (!p) goto oom;
    x->headers = p;
    x->headers_cap = cap;
  }
  vstart = (size_t)(colon - line) + 1;
  while (vstart < end && trim_blank(line[vstart])) vstart++;
  while (end > vstart && trim_blank(line[end - 1])) end--;
  char *name = strndup(line, (size_t)(colon - line));
  char *value = strndup(line + vstart, end - vstart);
  if (!name || !value) {
    free(name);
    free(value);
    goto oom;
  }
  lower_str(name);
  x->headers[x->nheaders].name = name;
  x->headers[x->nheaders].value = value;
  x->nheaders++;
  return len;

oom:
  x->out_of_memory = true;
  return 0;
}

static const char *reason_of(const xfer *x, CURLcode rc) {
  if (rc == CURLE_OK) return NULL;
  if (x->over_body || x->over_headers || rc == CURLE_FILESIZE_EXCEEDED) return "too_large";
  switch (rc) {
  case CURLE_OPERATION_TIMEDOUT:
    return "timeout";
  case CURLE_COULDNT_CONNECT:
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY:
    return "connect_failed";
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_ENGINE_NOTFOUND:
  case CURLE_SSL_ENGINE_SETFAILED:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_ENGINE_INITFAILED:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_SHUTDOWN_FAILED:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_CLIENTCERT:
  case CURLE_USE_SSL_FAILED:
    return "tls_failed";
  default:
    return "error";
  }
}

/* The request's checks that need no allocation: method, headers, timeout. */
static const char *check_request(const cl__http_request *req, const char **method, long *timeout,
                                 char *detail, size_t cap) {
  *method = req->method ? req->method : req->body ? "POST" : "GET";
  if (!is_token(*method, strlen(*method))) {
    set_detail(detail, cap, "bad method \"%.40s\"", *method);
    return "invalid_request";
  }
  for (size_t i = 0; req->headers && req->headers[i]; i++) {
    const char *line = req->headers[i], *colon = strchr(line, ':');
    if (!colon || !is_token(line, (size_t)(colon - line))) {
      set_detail(detail, cap, "header %zu is not \"Name: value\"", i + 1);
      return "invalid_request";
    }
    for (const char *p = colon + 1; *p; p++)
      if ((unsigned char)*p < ' ' && *p != '\t') {
        set_detail(detail, cap, "header \"%.*s\" holds a control character (CR, LF, ...)",
                   (int)(colon - line > 60 ? 60 : colon - line), line);
        return "invalid_request";
      }
  }
  if (req->timeout_ms < 0) {
    set_detail(detail, cap, "timeout_ms %ld is negative", req->timeout_ms);
    return "invalid_request";
  }
  *timeout = req->timeout_ms == 0                      ? CL__HTTP_DEFAULT_TIMEOUT_MS
           : req->timeout_ms > CL__HTTP_MAX_TIMEOUT_MS ? CL__HTTP_MAX_TIMEOUT_MS
                                                       : req->timeout_ms;
  return NULL;
}

/* The header lines curl sends: the caller's, "Expect:" (no 100-continue
 * round trip before a body) and no Content-Type of curl's choosing. */
static bool build_lines(xfer *x, const cl__http_request *req) {
  bool has_type = false;
  struct curl_slist *l;
  for (size_t i = 0; req->headers && req->headers[i]; i++) {
    const char *line = req->headers[i], *colon = strchr(line, ':'), *v = colon + 1;
    size_t name_len = (size_t)(colon - line);
    if (name_len == 12 && strncasecmp(line, "content-type", 12) == 0) has_type = true;
    while (*v == ' ' || *v == '\t') v++;
    if (*v) {
      l = curl_slist_append(x->lines, line);
    } else {
      /* curl reads "Name:" as "remove Name" and sends an empty header for
       * "Name;": an empty value is still sent. */
      char *semi = malloc(name_len + 2);
      if (!semi) return false;
      memcpy(semi, line, name_len);
      semi[name_len] = ';';
      semi[name_len + 1] = '\0';
      l = curl_slist_append(x->lines, semi);
      free(semi);
    }
    if (!l) return false;
    x->lines = l;
  }
  l = curl_slist_append(x->lines, "Expect:");
  if (!l) return false;
  x->lines = l;
  if (!has_type && req->body) {
    l = curl_slist_append(x->lines, "Content-Type:");
    if (!l) return false;
    x->lines = l;
  }
  return true;
}

static bool configure(xfer *x, const cl__http_request *req, const char *method, long timeout) {
  CURL *e = x->easy;
  bool ok = true;
  /* Each setopt can fail only on a bad option or out of memory; one check
   * at the end covers them all. */
#define SET(opt, val) ok = curl_easy_setopt(e, opt, val) == CURLE_OK && ok
  SET(CURLOPT_CURLU, x->url);
  SET(CURLOPT_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_FOLLOWLOCATION, 0L);
  SET(CURLOPT_NOSIGNAL, 1L);
  SET(CURLOPT_SSL_VERIFYPEER, 1L);
  SET(CURLOPT_SSL_VERIFYHOST, 2L);
  SET(CURLOPT_TIMEOUT_MS, timeout);
  SET(CURLOPT_CONNECTTIMEOUT_MS, timeout < CONNECT_TIMEOUT_MS ? timeout : CONNECT_TIMEOUT_MS);
  /* A declared Content-Length over the cap fails before any byte is read;
   * the write callback catches the rest (chunked, or a lying length). */
  SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)CL__HTTP_MAX_BODY);
  SET(CURLOPT_WRITEFUNCTION, on_body);
  SET(CURLOPT_WRITEDATA, x);
  SET(CURLOPT_HEADERFUNCTION, on_header);
  SET(CURLOPT_HEADERDATA, x);
  SET(CURLOPT_ERRORBUFFER, x->errbuf);
  SET(CURLOPT_PRIVATE, x);
  SET(CURLOPT_USERAGENT, "cairnloop/" CL_VERSION);
  SET(CURLOPT_HTTPHEADER, x->lines);
  if (req->body || strcmp(method, "POST") == 0) {
    /* The size first: COPYPOSTFIELDS copies that many bytes (NULs too). */
    SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(req->body ? req->body_len : 0));
    SET(CURLOPT_COPYPOSTFIELDS, req->body ? req->body : "");
    if (strcmp(method, "POST") != 0) SET(CURLOPT_CUSTOMREQUEST, method);
  } else if (strcmp(method, "HEAD") == 0) {
    SET(CURLOPT_NOBODY, 1L);
  } else {
    SET(CURLOPT_HTTPGET, 1L);
    if (strcmp(method, "GET") != 0) SET(CURLOPT_CUSTOMREQUEST, method);
  }
#undef SET
  return ok;
}

const char *cl__http_start(cl__http *h, const cl__http_request *req, cl__http_done_fn done,
                           void *ud, char *detail, size_t cap) {
  const char *why, *method = NULL;
  long timeout = 0;
  CURLU *u = NULL;
  xfer *x;

  if (detail && cap) detail[0] = '\0';
  if (!h || !req || !done) {
    set_detail(detail, cap, "http: no client, request or callback");
    return "invalid_request";
  }
  why = check_url(h, req->url, &u, detail, cap);
  if (why) return why;
  why = check_request(req, &method, &timeout, detail, cap);
  if (why) {
    curl_url_cleanup(u);
    return why;
  }

  if (h->idle) {
    x = h->idle;
    h->idle = x->next;
    h->nidle--;
  } else {
    x = calloc(1, sizeof *x);
    if (x) x->easy = curl_easy_init();
    if (!x || !x->easy) {
      free(x);
      curl_url_cleanup(u);
      set_detail(detail, cap, "out of memory");
      return "error";
    }
  }
  x->url = u;
  x->done = done;
  x->ud = ud;
  x->errbuf[0] = '\0';
  if (!build_lines(x, req) || !configure(x, req, method, timeout)) {
    set_detail(detail, cap, "curl refused the request's options (out of memory?)");
    destroy(x);
    return "error";
  }
  CURLMcode mc = curl_multi_add_handle(h->multi, x->easy);
  if (mc != CURLM_OK) {
    set_detail(detail, cap, "curl_multi_add_handle: %s", curl_multi_strerror(mc));
    destroy(x);
    return "error";
  }
  x->prev = NULL;
  x->next = h->active;
  if (h->active) h->active->prev = x;
  h->active = x;
  h->nactive++;
  return NULL;
}

int cl__http_in_flight(const cl__http *h) { return h ? h->nactive : 0; }

/* Moves every transfer curl reports done from the multi to the end of
 * *tail's list, in the order curl reported them. */
static int collect(cl__http *h, xfer ***tail) {
  int n = 0, left = 0;
  CURLMsg *m;
  while ((m = curl_multi_info_read(h->multi, &left)) != NULL) {
    if (m->msg != CURLMSG_DONE) continue;
    char *priv = NULL;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
    xfer *x = (xfer *)(void *)priv;
    x->result = m->data.result; /* m is gone once the handle is removed */
    curl_multi_remove_handle(h->multi, x->easy);
    if (x->prev) x->prev->next = x->next;
    else h->active = x->next;
    if (x->next) x->next->prev = x->prev;
    h->nactive--;
    x->next = NULL;
    **tail = x;
    *tail = &x->next;
    n++;
  }
  return n;
}

static void finish(xfer *x) {
  cl__http_response res;
  memset(&res, 0, sizeof res);
  res.reason = reason_of(x, x->result);
  res.body = "";
  if (x->out_of_memory && x->result != CURLE_OK) {
    res.reason = "error";
    set_detail(res.detail, sizeof res.detail, "out of memory");
  } else if (res.reason && (x->over_body || x->result == CURLE_FILESIZE_EXCEEDED)) {
    set_detail(res.detail, sizeof res.detail, "response body over %zu bytes",
               (size_t)CL__HTTP_MAX_BODY);
  } else if (res.reason && x->over_headers) {
    set_detail(res.detail, sizeof res.detail, "response headers over %zu bytes", HEADERS_MAX);
  } else if (res.reason) {
    set_detail(res.detail, sizeof res.detail, "%s",
               x->errbuf[0] ? x->errbuf : curl_easy_strerror(x->result));
  } else {
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &res.status);
    res.headers = x->headers;
    res.nheaders = x->nheaders;
    if (x->body) res.body = x->body;
    res.body_len = x->body_len;
  }
  x->done(x->ud, &res);
}

int cl__http_run(cl__http *h, int timeout_ms, int extra_fd) {
  xfer *finished = NULL, **tail = &finished;
  int running = 0, ended;

  if (!h || (h->nactive == 0 && extra_fd < 0)) return 0;
  curl_multi_perform(h->multi, &running);
  ended = collect(h, &tail);
  if (ended == 0 && timeout_ms > 0) {
    /* curl_multi_poll waits on the transfers' sockets and timers and on
     * extra_fd; a signal ends it early (curl reads EINTR as "nothing"). */
    struct curl_waitfd w = {.fd = extra_fd, .events = CURL_WAIT_POLLIN, .revents = 0};
    curl_multi_poll(h->multi, extra_fd >= 0 ? &w : NULL, extra_fd >= 0 ? 1 : 0, timeout_ms, NULL);
    curl_multi_perform(h->multi, &running);
    ended = collect(h, &tail);
  }
  /* The callbacks run once every finished transfer is out of the multi and
   * off the active list: a callback may start transfers (or run this) and
   * only ever sees a consistent client. */
  while (finished) {
    xfer *x = finished;
    finished = x->next;
    finish(x);
    recycle(h, x);
  }
  return ended;
}

void cl__http_free(cl__http *h) {
  if (!h) return;
  while (h->active) {
    xfer *x = h->active;
    h->active = x->next;
    curl_multi_remove_handle(h->multi, x->easy);
    destroy(x);
  }
  while (h->idle) {
    xfer *x = h->idle;
    h->idle = x->next;
    destroy(x);
  }
  if (h->multi) curl_multi_cleanup(h->multi);
  for (size_t i = 0; i < h->npatterns; i++) pattern_clear(&h->patterns[i]);
  free(h->patterns);
  free(h);
}

long long cl__http_parse_date(const char *text) {
  if (!text) return -1;
  return (long long)curl_getdate(text, NULL);
}
