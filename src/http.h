/*
 * http.h - the engine's HTTP client for notifiers: many transfers in
 * flight at once on libcurl's multi interface, to allowed destinations
 * only.
 *
 * One cl__http per engine (eng->http), made at cl_open from the allow
 * list (cl_config.http_allow and CAIRNLOOP_HTTP_ALLOW) and used by the
 * policy state's cl.http.request.  Transfers start with cl__http_start and
 * end in their done callback, which runs inside cl__http_run on the
 * engine's thread; a callback may start new transfers.  Connections are
 * kept alive and reused between transfers.  Redirects are not followed
 * (a redirect is a response like any other), only http and https are
 * spoken, TLS peers and host names are verified.  Lua-free and
 * libpq-free: http.c uses only curl and the engine's error helper
 * (cl__fail, engine.h).  Link with libcurl (pkg-config libcurl).
 */
#ifndef CL_HTTP_H
#define CL_HTTP_H

#include "cairnloop.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct cl__http cl__http;

/* Largest response body kept (larger: reason "too_large"). */
#define CL__HTTP_MAX_BODY ((size_t)1 << 20)
/* A transfer's timeout when the request names none, and the largest. */
#define CL__HTTP_DEFAULT_TIMEOUT_MS 30000
#define CL__HTTP_MAX_TIMEOUT_MS 300000

typedef struct cl__http_request {
  const char *method;         /* "GET", "POST", ...; NULL: POST with a body, else GET */
  const char *url;            /* absolute http:// or https:// URL */
  const char *const *headers; /* "Name: value" lines, NULL-terminated; may be NULL */
  const char *body;           /* may be NULL */
  size_t body_len;
  long timeout_ms; /* the whole transfer; 0: CL__HTTP_DEFAULT_TIMEOUT_MS; larger than
                      CL__HTTP_MAX_TIMEOUT_MS: that; negative: "invalid_request" */
} cl__http_request;

typedef struct cl__http_header {
  char *name; /* lowercased */
  char *value;
} cl__http_header;

/* What a transfer ended with; owned by http.c, valid during the callback. */
typedef struct cl__http_response {
  /* NULL when a response arrived (any status); otherwise why not:
   * "timeout" | "connect_failed" | "tls_failed" | "too_large" (the body
   * over CL__HTTP_MAX_BODY, or the headers over 256 KiB) | "error".  On
   * failure status is 0, there are no headers and the body is "". */
  const char *reason;
  char detail[256]; /* one line for the log: curl's message, or "" */
  long status;      /* HTTP status; 0 without a response */
  /* The final response's headers in arrival order; a repeated name keeps
   * one entry per line. */
  cl__http_header *headers;
  size_t nheaders;
  const char *body; /* NUL-terminated copy (body_len bytes before the NUL) */
  size_t body_len;
} cl__http_response;

typedef void (*cl__http_done_fn)(void *ud, const cl__http_response *res);

/*
 * Makes a client allowing the destinations in `allow` (NULL-terminated;
 * NULL or empty: nothing is allowed, and every start is "not_allowed").
 * A pattern is "scheme://host[:port][/path-prefix]": host may start with
 * "*." (any subdomain) or be "*"; port may be "*"; no port means the
 * scheme's default; a URL is allowed when scheme and host match (case
 * blind), the port matches, and its path starts with the pattern's path
 * (pattern without a path: any path).  URLs with user info are never
 * allowed.  A malformed pattern is CL_INVALID_ARGUMENT naming it.
 * Details: "*.example.com" matches a.example.com and a.b.example.com, not
 * example.com (list both for both); hosts and paths are compared as curl
 * will fetch them (127.1 is 127.0.0.1, "/a/../b" is "/b", percent-encoded
 * host bytes decoded), the path prefix byte for byte (case matters, and
 * "/hooks" also matches "/hooksmore": end a prefix with '/' to mean a
 * directory); refused whatever the patterns: non-ASCII host names (write
 * punycode), IPv6 zones, and paths that decode to a "." or ".." segment
 * ("/hooks/%2e%2e/admin").  Blanks, '@', '?', '#' and '\' make a pattern
 * malformed.
 */
cl_status cl__http_new(const char *const *allow, cl__http **out, cl_error *err);
/* Aborts every transfer still in flight (their callbacks are not called). */
void cl__http_free(cl__http *h);
/* Whether `url` may be requested under the allow list. */
bool cl__http_allowed(const cl__http *h, const char *url);
/* How many patterns the client allows (0: none). */
size_t cl__http_patterns(const cl__http *h);

/*
 * Starts a transfer; `done(ud, res)` runs exactly once, from cl__http_run,
 * when it ends.  Returns NULL when started, or the reason it was not
 * (nothing is called then): "not_allowed" (the allow list refuses the
 * URL, or it is not http/https or has user info), "invalid_request" (a
 * header with CR/LF or without a colon, an empty method, an unparsable
 * URL), "error" (out of memory, curl refused).  `detail` (may be NULL,
 * cap bytes) gets one line saying why (never the URL's path or query).
 * Everything `req` points to is copied.  Sent as well: "User-Agent:
 * cairnloop/<version>" unless the request names one; never "Expect:
 * 100-continue", nor a Content-Type the request does not name; a header
 * with an empty value ("X-Name:") is sent empty.
 */
const char *cl__http_start(cl__http *h, const cl__http_request *req, cl__http_done_fn done,
                           void *ud, char *detail, size_t cap);
/* Transfers started and not yet ended. */
int cl__http_in_flight(const cl__http *h);
/*
 * Waits up to timeout_ms (0: no wait) for socket activity of the
 * transfers, or for `extra_fd` (-1: none) to become readable, drives the
 * transfers and calls `done` for each one that ended.  Returns the
 * number of transfers that ended; returns at once when none is in flight
 * and extra_fd is -1.  An interrupted wait (a signal) returns early.
 * A done callback may start transfers and run this again; it must not
 * free the client.
 */
int cl__http_run(cl__http *h, int timeout_ms, int extra_fd);

/* Unix seconds of an HTTP date ("Sun, 06 Nov 1994 08:49:37 GMT" and the
 * other forms of RFC 9110), or -1 when it is not one. */
long long cl__http_parse_date(const char *text);

#endif
