/*
 * test_http.c - the notifiers' HTTP client (src/http.c) against real peers
 * on 127.0.0.1: a small HTTP/1.1 server run by this process (a thread per
 * connection, counting connections, requests and requests held at once)
 * and a TLS server with a self-signed certificate.  Round trips, many
 * transfers at once, keep-alive, the failure reasons, the allow list with
 * hostile URLs, callbacks that start transfers, freeing with transfers in
 * flight, and the extra descriptor that wakes cl__http_run.
 *
 * Nothing sleeps for a fixed time: the peer holds a request until the test
 * releases it (or it stops), and every wait is bounded by WAIT_MS.
 */
#include "support.h"

#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The bound of every wait: a hang fails its test instead of the suite. */
#define WAIT_MS 30000
/* How long the peer holds a request at most, whatever the test does. */
#define HOLD_MS 30000
#define MAX_CONNS 256

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void deadline_in(struct timespec *ts, long ms) {
  clock_gettime(CLOCK_REALTIME, ts);
  ts->tv_sec += ms / 1000;
  ts->tv_nsec += (ms % 1000) * 1000000;
  if (ts->tv_nsec >= 1000000000) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000;
  }
}

/* ------------------------------------------------------------------ */
/* The peer: HTTP/1.1 on 127.0.0.1                                     */
/* ------------------------------------------------------------------ */

typedef struct server server;

typedef struct conn {
  server *s;
  int fd;
  pthread_t thread;
} conn;

struct server {
  int fd, port;
  pthread_t accept_thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool stopping, released;
  /* What the peer saw, under mu. */
  int connections; /* accepted */
  int requests;    /* read in full */
  int holding;     /* requests held now at /hold or /gate */
  int held_max;    /* most held at once */
  int arrived;     /* requests that reached /gate */
  conn conns[MAX_CONNS];
  int nconns;
};

static bool send_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
    if (w <= 0) return false;
    c += w;
    n -= (size_t)w;
  }
  return true;
}

static bool send_str(int fd, const char *s) { return send_all(fd, s, strlen(s)); }

/* A response with a body of its own and any extra header lines. */
static bool respond(int fd, int status, const char *extra, const char *body, size_t len) {
  char head[512];
  snprintf(head, sizeof head, "HTTP/1.1 %d X\r\nContent-Length: %zu\r\n%s\r\n", status, len,
           extra ? extra : "");
  return send_str(fd, head) && (!body || send_all(fd, body, len));
}

/* Holds the request until the test releases it, the peer stops, or
 * HOLD_MS pass; `gate` > 0: until that many requests have arrived. */
static void hold(server *s, int gate) {
  struct timespec until;
  deadline_in(&until, HOLD_MS);
  pthread_mutex_lock(&s->mu);
  s->holding++;
  if (s->holding > s->held_max) s->held_max = s->holding;
  if (gate) s->arrived++;
  pthread_cond_broadcast(&s->cv);
  while (!s->stopping && !s->released && !(gate && s->arrived >= gate))
    if (pthread_cond_timedwait(&s->cv, &s->mu, &until) == ETIMEDOUT) break;
  s->holding--;
  pthread_mutex_unlock(&s->mu);
}

/* Answers one request; false closes the connection. */
static bool route(server *s, int fd, const char *req, size_t head_len, size_t total) {
  char method[16] = "", path[256] = "";
  if (sscanf(req, "%15s %255s", method, path) != 2) return false;
  if (strncmp(path, "/echo", 5) == 0) {
    /* The whole request back, head and body, as the peer read it (a HEAD
     * gets the head of that response only). */
    return respond(fd, 200,
                   "Content-Type: text/plain\r\nX-Multi: one\r\nX-Multi: two\r\n"
                   "X-Mixed-CASE:   Value  \r\n",
                   strcmp(method, "HEAD") == 0 ? NULL : req, total);
  }
  if (strcmp(path, "/head") == 0) {
    /* The request's head back, and how long its body was. */
    char note[64];
    snprintf(note, sizeof note, "Body-Bytes: %zu\r\n", total - head_len);
    return respond(fd, 200, note, req, head_len);
  }
  if (strcmp(path, "/hold") == 0 || strncmp(path, "/gate/", 6) == 0) {
    hold(s, path[1] == 'g' ? (int)strtol(path + 6, NULL, 10) : 0);
    return respond(fd, 200, NULL, "held", 4);
  }
  if (strncmp(path, "/big/", 5) == 0 || strncmp(path, "/chunked/", 9) == 0) {
    bool chunked = path[1] == 'c';
    size_t n = strtoul(path + (chunked ? 9 : 5), NULL, 10), chunk = 65536;
    char *buf = malloc(chunk);
    bool ok = buf != NULL;
    if (ok) memset(buf, 'x', chunk);
    if (ok && !chunked) {
      char head[128];
      snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", n);
      ok = send_str(fd, head);
      for (size_t left = n; ok && left > 0; left -= left < chunk ? left : chunk)
        ok = send_all(fd, buf, left < chunk ? left : chunk);
    } else if (ok) {
      ok = send_str(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
      for (size_t left = n; ok && left > 0; left -= left < chunk ? left : chunk) {
        char size[32];
        snprintf(size, sizeof size, "%zx\r\n", left < chunk ? left : chunk);
        ok = send_str(fd, size) && send_all(fd, buf, left < chunk ? left : chunk) &&
             send_str(fd, "\r\n");
      }
      ok = ok && send_str(fd, "0\r\n\r\n");
    }
    free(buf);
    return ok;
  }
  if (strncmp(path, "/status/", 8) == 0) {
    int code = (int)strtol(path + 8, NULL, 10);
    return respond(fd, code, "Location: /echo\r\nRetry-After: 120\r\n", "status", 6);
  }
  if (strcmp(path, "/continue") == 0) {
    /* An interim response with headers of its own, then the final one. */
    return send_str(fd, "HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n") &&
           respond(fd, 200, "X-Final: yes\r\n", "final", 5);
  }
  respond(fd, 404, NULL, "no such path", 12);
  return true;
}

static void *conn_main(void *arg) {
  conn *c = arg;
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  if (!buf) goto done;
  for (;;) {
    char *end;
    size_t head_len, body_len = 0, total;
    /* A head, then its body (Content-Length: the client sends no chunks). */
    while (!(end = memmem(buf, len, "\r\n\r\n", 4))) {
      if (len + 1 >= cap) {
        char *p = realloc(buf, cap *= 2);
        if (!p) goto done;
        buf = p;
      }
      ssize_t r = recv(c->fd, buf + len, cap - len - 1, 0);
      if (r <= 0) goto done;
      len += (size_t)r;
      buf[len] = '\0';
      /* Not HTTP (a TLS ClientHello starts with 0x16): a plain server's
       * answer, which a TLS client reads as a broken handshake. */
      if (buf[0] < 'A' || buf[0] > 'Z') {
        send_str(c->fd, "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
        goto done;
      }
    }
    head_len = (size_t)(end - buf) + 4;
    for (char *h = buf; h < end; h = strstr(h, "\r\n") + 2)
      if (strncasecmp(h, "Content-Length:", 15) == 0) body_len = strtoul(h + 15, NULL, 10);
    total = head_len + body_len;
    while (len < total) {
      if (total + 1 > cap) {
        char *p = realloc(buf, cap = total + 1);
        if (!p) goto done;
        buf = p;
      }
      ssize_t r = recv(c->fd, buf + len, cap - len - 1, 0);
      if (r <= 0) goto done;
      len += (size_t)r;
    }
    buf[len] = '\0';
    pthread_mutex_lock(&c->s->mu);
    c->s->requests++;
    pthread_mutex_unlock(&c->s->mu);
    if (!route(c->s, c->fd, buf, head_len, total)) break;
    memmove(buf, buf + total, len - total);
    len -= total;
    buf[len] = '\0';
  }
done:
  free(buf);
  shutdown(c->fd, SHUT_RDWR); /* the client sees the end; close() is the stopper's */
  return NULL;
}

static void *accept_main(void *arg) {
  server *s = arg;
  for (;;) {
    int fd = accept(s->fd, NULL, NULL);
    if (fd < 0) return NULL; /* the listening socket was shut down */
    pthread_mutex_lock(&s->mu);
    if (s->stopping || s->nconns == MAX_CONNS) {
      pthread_mutex_unlock(&s->mu);
      close(fd);
      continue;
    }
    /* Head and body go out in two sends: without this, Nagle holds the
     * second until the client's delayed ACK, 40 ms a response. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    conn *c = &s->conns[s->nconns++];
    s->connections++;
    c->s = s;
    c->fd = fd;
    if (pthread_create(&c->thread, NULL, conn_main, c) != 0) {
      s->nconns--;
      close(fd);
    }
    pthread_mutex_unlock(&s->mu);
  }
}

/* A socket listening on 127.0.0.1 at a port the kernel picks. */
static int listen_any(int *port) {
  struct sockaddr_in a;
  socklen_t alen = sizeof a;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(fd >= 0);
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(fd, 128), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
  *port = ntohs(a.sin_port);
  return fd;
}

static server *server_start(void) {
  server *s = calloc(1, sizeof *s);
  assert_non_null(s);
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  s->fd = listen_any(&s->port);
  assert_int_equal(pthread_create(&s->accept_thread, NULL, accept_main, s), 0);
  return s;
}

static void server_stop(server *s) {
  pthread_mutex_lock(&s->mu);
  s->stopping = true;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  shutdown(s->fd, SHUT_RDWR); /* ends accept() */
  pthread_join(s->accept_thread, NULL);
  for (int i = 0; i < s->nconns; i++) {
    shutdown(s->conns[i].fd, SHUT_RDWR); /* ends a recv() still waiting */
    pthread_join(s->conns[i].thread, NULL);
    close(s->conns[i].fd);
  }
  close(s->fd);
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

static void server_release(server *s) {
  pthread_mutex_lock(&s->mu);
  s->released = true;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

/* One of the peer's counters, read under its lock. */
static int seen(server *s, const int *field) {
  pthread_mutex_lock(&s->mu);
  int v = *field;
  pthread_mutex_unlock(&s->mu);
  return v;
}

static int srv_setup(void **state) {
  *state = server_start();
  return 0;
}

static int srv_teardown(void **state) {
  server_stop(*state);
  return 0;
}

/* ------------------------------------------------------------------ */
/* The client side                                                      */
/* ------------------------------------------------------------------ */

/* What a done callback saw, copied out of the response. */
typedef struct outcome {
  int calls;
  char reason[32]; /* "" when a response arrived */
  char detail[256];
  long status;
  char *body;
  size_t body_len;
  char headers[2048]; /* "name=value\n" per header, in order */
  /* For the callback that starts another transfer. */
  cl__http *h;
  const char *next_url;
  struct outcome *next;
  const char *next_why;
} outcome;

static void on_done(void *ud, const cl__http_response *res) {
  outcome *o = ud;
  o->calls++;
  snprintf(o->reason, sizeof o->reason, "%s", res->reason ? res->reason : "");
  snprintf(o->detail, sizeof o->detail, "%s", res->detail);
  o->status = res->status;
  free(o->body);
  o->body = malloc(res->body_len + 1);
  assert_non_null(o->body);
  memcpy(o->body, res->body, res->body_len + 1);
  o->body_len = res->body_len;
  o->headers[0] = '\0';
  for (size_t i = 0; i < res->nheaders; i++) {
    size_t n = strlen(o->headers);
    snprintf(o->headers + n, sizeof o->headers - n, "%s=%s\n", res->headers[i].name,
             res->headers[i].value);
  }
}

static void outcome_clear(outcome *o) {
  free(o->body);
  memset(o, 0, sizeof *o);
}

static cl__http *client(const char *pattern) {
  const char *allow[] = {pattern, NULL};
  cl__http *h = NULL;
  cl_error err;
  memset(&err, 0, sizeof err);
  if (cl__http_new(pattern ? allow : NULL, &h, &err) != CL_OK) fail_msg("new: %s", err.message);
  assert_non_null(h);
  return h;
}

static const char *url_of(char *buf, size_t cap, const server *s, const char *path) {
  snprintf(buf, cap, "http://127.0.0.1:%d%s", s->port, path);
  return buf;
}

/* Starts a transfer that must start. */
static void start(cl__http *h, const cl__http_request *req, outcome *o) {
  char detail[256] = "";
  const char *why = cl__http_start(h, req, on_done, o, detail, sizeof detail);
  if (why) fail_msg("start %s: %s (%s)", req->url, why, detail);
}

static void get(cl__http *h, const char *url, outcome *o) {
  cl__http_request req = {.url = url};
  start(h, &req, o);
}

/* Drives the client until nothing is in flight; fails past WAIT_MS. */
static void drive(cl__http *h) {
  long long until = now_ms() + WAIT_MS;
  while (cl__http_in_flight(h) > 0 && now_ms() < until) cl__http_run(h, 100, -1);
  assert_int_equal(cl__http_in_flight(h), 0);
}

/* Drives the client until the peer holds `n` requests; fails past WAIT_MS. */
static void drive_until_held(cl__http *h, server *s, int n) {
  long long until = now_ms() + WAIT_MS;
  while (seen(s, &s->holding) < n && now_ms() < until) cl__http_run(h, 50, -1);
  assert_int_equal(seen(s, &s->holding), n);
}

/* ------------------------------------------------------------------ */
/* Round trips                                                          */
/* ------------------------------------------------------------------ */

static void test_http__get_round_trip_with_headers(void **state) {
  server *s = *state;
  char url[128];
  outcome o = {0};
  cl__http *h = client("http://127.0.0.1:*");
  const char *lines[] = {"X-Test: hello", "X-Empty:", "Accept: text/plain", NULL};
  cl__http_request req = {.url = url_of(url, sizeof url, s, "/echo?q=1"), .headers = lines};

  start(h, &req, &o);
  assert_int_equal(cl__http_in_flight(h), 1);
  drive(h);
  assert_int_equal(o.calls, 1);
  assert_string_equal(o.reason, "");
  assert_int_equal(o.status, 200);
  /* What the peer read: the method, the headers as given (an empty value
   * too), no body and no Content-Type of curl's choosing. */
  assert_non_null(strstr(o.body, "GET /echo?q=1 HTTP/1.1\r\n"));
  assert_non_null(strstr(o.body, "\r\nX-Test: hello\r\n"));
  assert_non_null(strstr(o.body, "\r\nX-Empty:"));
  assert_non_null(strstr(o.body, "\r\nAccept: text/plain\r\n"));
  assert_non_null(strstr(o.body, "\r\nUser-Agent: cairnloop/" CL_VERSION "\r\n"));
  assert_null(strcasestr(o.body, "content-type"));
  assert_int_equal(o.body_len, strlen(o.body));
  /* The response's headers: names lowercased, values trimmed, a repeated
   * name once per line, in order. */
  assert_non_null(strstr(o.headers, "content-type=text/plain\n"));
  assert_non_null(strstr(o.headers, "x-multi=one\nx-multi=two\n"));
  assert_non_null(strstr(o.headers, "x-mixed-case=Value\n"));
  assert_null(strstr(o.headers, "X-"));
  outcome_clear(&o);
  cl__http_free(h);
}

static void test_http__post_round_trip_with_binary_body(void **state) {
  server *s = *state;
  char url[128];
  outcome o = {0};
  cl__http *h = client("http://127.0.0.1:*");
  const char *lines[] = {"Content-Type: application/octet-stream", "User-Agent: mine", NULL};
  char body[3000];
  for (size_t i = 0; i < sizeof body; i++) body[i] = (char)(i % 251); /* NULs included */
  /* No method: a body makes it a POST. */
  cl__http_request req = {.url = url_of(url, sizeof url, s, "/echo"),
                          .headers = lines,
                          .body = body,
                          .body_len = sizeof body};

  start(h, &req, &o);
  drive(h);
  assert_int_equal(o.status, 200);
  assert_non_null(strstr(o.body, "POST /echo HTTP/1.1\r\n"));
  assert_non_null(strstr(o.body, "\r\nContent-Length: 3000\r\n"));
  assert_non_null(strstr(o.body, "\r\nContent-Type: application/octet-stream\r\n"));
  assert_non_null(strstr(o.body, "\r\nUser-Agent: mine\r\n"));
  assert_null(strstr(o.body, "cairnloop/"));
  /* No 100-continue round trip before the body. */
  assert_null(strcasestr(o.body, "expect"));
  const char *sent = strstr(o.body, "\r\n\r\n") + 4;
  assert_int_equal(o.body_len - (size_t)(sent - o.body), sizeof body);
  assert_memory_equal(sent, body, sizeof body);
  outcome_clear(&o);
  cl__http_free(h);
}

static void test_http__other_methods_and_a_large_body(void **state) {
  server *s = *state;
  char url[128];
  outcome o = {0};
  cl__http *h = client("http://127.0.0.1:*");
  size_t big_len = (size_t)3 << 19; /* 1.5 MiB: curl asks 100-continue past 1 MiB */
  char *big = malloc(big_len);
  assert_non_null(big);
  memset(big, 'b', big_len);

  cl__http_request put = {.method = "PUT",
                          .url = url_of(url, sizeof url, s, "/head"),
                          .body = big,
                          .body_len = big_len};
  start(h, &put, &o);
  free(big); /* the body was copied at the start */
  drive(h);
  assert_int_equal(o.status, 200);
  assert_non_null(strstr(o.body, "PUT /head HTTP/1.1\r\n"));
  assert_null(strcasestr(o.body, "expect"));
  assert_non_null(strstr(o.headers, "body-bytes=1572864\n"));
  outcome_clear(&o);

  cl__http_request del = {.method = "DELETE", .url = url_of(url, sizeof url, s, "/echo")};
  start(h, &del, &o);
  drive(h);
  assert_non_null(strstr(o.body, "DELETE /echo HTTP/1.1\r\n"));
  assert_null(strcasestr(o.body, "content-length"));
  outcome_clear(&o);

  cl__http_request post = {.method = "POST", .url = url_of(url, sizeof url, s, "/echo")};
  start(h, &post, &o);
  drive(h);
  assert_non_null(strstr(o.body, "POST /echo HTTP/1.1\r\n"));
  assert_non_null(strstr(o.body, "\r\nContent-Length: 0\r\n"));
  outcome_clear(&o);

  cl__http_request head = {.method = "HEAD", .url = url_of(url, sizeof url, s, "/echo")};
  start(h, &head, &o);
  drive(h);
  assert_int_equal(o.status, 200);
  assert_int_equal(o.body_len, 0);
  outcome_clear(&o);
  cl__http_free(h);
}

static void test_http__statuses_are_responses_and_redirects_are_not_followed(void **state) {
  server *s = *state;
  char url[128];
  outcome o = {0};
  cl__http *h = client("http://127.0.0.1:*");

  get(h, url_of(url, sizeof url, s, "/status/302"), &o);
  drive(h);
  assert_string_equal(o.reason, "");
  assert_int_equal(o.status, 302);
  assert_non_null(strstr(o.headers, "location=/echo\n"));
  assert_int_equal(seen(s, &s->requests), 1); /* /echo was never asked */
  outcome_clear(&o);

  get(h, url_of(url, sizeof url, s, "/status/503"), &o);
  drive(h);
  assert_string_equal(o.reason, "");
  assert_int_equal(o.status, 503);
  assert_non_null(strstr(o.headers, "retry-after=120\n"));
  assert_string_equal(o.body, "status");
  outcome_clear(&o);
  cl__http_free(h);
}

static void test_http__interim_response_headers_are_dropped(void **state) {
  server *s = *state;
  char url[128];
  outcome o = {0};
  cl__http *h = client("http://127.0.0.1:*");
  get(h, url_of(url, sizeof url, s, "/continue"), &o);
  drive(h);
  assert_int_equal(o.status, 200);
  assert_non_null(strstr(o.headers, "x-final=yes\n"));
  assert_null(strstr(o.headers, "x-interim"));
  assert_string_equal(o.body, "final");
  outcome_clear(&o);
  cl__http_free(h);
}

/* ------------------------------------------------------------------ */
/* Many at once, and kept alive                                         */
/* ------------------------------------------------------------------ */

static void test_http__many_transfers_in_flight_at_once(void **state) {
  server *s = *state;
  enum { N = 20 };
  char url[128];
  outcome o[N];
  memset(o, 0, sizeof o);
  cl__http *h = client("http://127.0.0.1:*");
  /* The peer holds each request until all N have arrived: they finish
   * only if they were all in flight together. */
  url_of(url, sizeof url, s, "/gate/20");
  for (int i = 0; i < N; i++) get(h, url, &o[i]);
  assert_int_equal(cl__http_in_flight(h), N);
  drive(h);
  for (int i = 0; i < N; i++) {
    assert_int_equal(o[i].calls, 1);
    assert_int_equal(o[i].status, 200);
    outcome_clear(&o[i]);
  }
  assert_int_equal(seen(s, &s->held_max), N);
  assert_int_equal(seen(s, &s->connections), N);
  cl__http_free(h);
}

static void test_http__connections_are_kept_alive(void **state) {
  server *s = *state;
  char url[128];
  cl__http *h = client("http://127.0.0.1:*");
  for (int i = 0; i < 10; i++) {
    outcome o = {0};
    get(h, url_of(url, sizeof url, s, "/echo"), &o);
    drive(h);
    assert_int_equal(o.status, 200);
    outcome_clear(&o);
  }
  assert_int_equal(seen(s, &s->requests), 10);
  assert_int_equal(seen(s, &s->connections), 1);
  cl__http_free(h);
}

/* ------------------------------------------------------------------ */
/* Failure reasons                                                      */
/* ------------------------------------------------------------------ */

static void test_http__slow_peer_is_timeout(void **state) {
  server *s = *state;
  char url[128];
  outcome o = {0};
  cl__http *h = client("http://127.0.0.1:*");
  cl__http_request req = {.url = url_of(url, sizeof url, s, "/hold"), .timeout_ms = 300};
  start(h, &req, &o);
  drive(h);
  assert_int_equal(o.calls, 1);
  assert_string_equal(o.reason, "timeout");
  assert_int_equal(o.status, 0);
  assert_true(strlen(o.detail) > 0);
  outcome_clear(&o);
  cl__http_free(h);
}

static void test_http__closed_port_is_connect_failed(void **state) {
  (void)state;
  char url[128];
  outcome o = {0};
  int port;
  close(listen_any(&port)); /* a port nothing listens on any more */
  cl__http *h = client("http://127.0.0.1:*");
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
  get(h, url, &o);
  drive(h);
  assert_string_equal(o.reason, "connect_failed");
  assert_int_equal(o.status, 0);
  outcome_clear(&o);
  cl__http_free(h);
}

static void test_http__https_to_a_plain_port_is_tls_failed(void **state) {
  server *s = *state;
  char url[128];
  outcome o = {0};
  cl__http *h = client("https://127.0.0.1:*");
  cl__http_request req = {.url = url, .timeout_ms = WAIT_MS / 2};
  snprintf(url, sizeof url, "https://127.0.0.1:%d/echo", s->port);
  start(h, &req, &o);
  drive(h);
  assert_string_equal(o.reason, "tls_failed");
  assert_int_equal(o.status, 0);
  outcome_clear(&o);
  cl__http_free(h);
}

/* A TLS peer whose certificate (for 127.0.0.1, by name and address) is
 * signed by itself: it differs from a good one only in its trust. */
typedef struct tls_server {
  int fd, port;
  pthread_t thread;
  SSL_CTX *ctx;
  int handshakes, completed;
} tls_server;

static void *tls_main(void *arg) {
  tls_server *t = arg;
  int fd = accept(t->fd, NULL, NULL);
  if (fd < 0) return NULL;
  SSL *ssl = SSL_new(t->ctx);
  if (ssl && SSL_set_fd(ssl, fd) == 1) {
    t->handshakes++;
    if (SSL_accept(ssl) == 1) t->completed++;
  }
  SSL_free(ssl);
  close(fd);
  return NULL;
}

static void tls_start(tls_server *t) {
  EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  X509 *cert = X509_new();
  X509V3_CTX v3;
  assert_non_null(key);
  assert_non_null(cert);
  assert_int_equal(X509_set_version(cert, 2), 1);
  assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(cert), 1), 1);
  assert_non_null(X509_gmtime_adj(X509_getm_notBefore(cert), -3600));
  assert_non_null(X509_gmtime_adj(X509_getm_notAfter(cert), 3600));
  assert_int_equal(X509_set_pubkey(cert, key), 1);
  X509_NAME *name = X509_get_subject_name(cert);
  assert_int_equal(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                              (const unsigned char *)"127.0.0.1", -1, -1, 0),
                   1);
  assert_int_equal(X509_set_issuer_name(cert, name), 1);
  X509V3_set_ctx(&v3, cert, cert, NULL, NULL, 0);
  X509_EXTENSION *san = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "IP:127.0.0.1");
  assert_non_null(san);
  assert_int_equal(X509_add_ext(cert, san, -1), 1);
  X509_EXTENSION_free(san);
  assert_true(X509_sign(cert, key, EVP_sha256()) > 0);

  t->ctx = SSL_CTX_new(TLS_server_method());
  assert_non_null(t->ctx);
  assert_int_equal(SSL_CTX_use_certificate(t->ctx, cert), 1);
  assert_int_equal(SSL_CTX_use_PrivateKey(t->ctx, key), 1);
  X509_free(cert);
  EVP_PKEY_free(key);
  t->fd = listen_any(&t->port);
  assert_int_equal(pthread_create(&t->thread, NULL, tls_main, t), 0);
}

static void tls_stop(tls_server *t) {
  shutdown(t->fd, SHUT_RDWR);
  pthread_join(t->thread, NULL);
  close(t->fd);
  SSL_CTX_free(t->ctx);
}

static void test_http__self_signed_certificate_is_tls_failed(void **state) {
  (void)state;
  tls_server t;
  char url[128];
  outcome o = {0};
  memset(&t, 0, sizeof t);
  tls_start(&t);
  cl__http *h = client("https://127.0.0.1:*");
  snprintf(url, sizeof url, "https://127.0.0.1:%d/", t.port);
  get(h, url, &o);
  drive(h);
  cl__http_free(h);
  tls_stop(&t);
  /* The handshake began and the client broke it off over the certificate. */
  assert_int_equal(t.handshakes, 1);
  assert_int_equal(t.completed, 0);
  assert_string_equal(o.reason, "tls_failed");
  if (!strstr(o.detail, "certificate")) fail_msg("detail: %s", o.detail);
  outcome_clear(&o);
}

static void test_http__body_over_the_cap_is_too_large(void **state) {
  server *s = *state;
  char path[64], url[128];
  outcome o = {0};
  cl__http *h = client("http://127.0.0.1:*");

  /* Exactly the cap is kept. */
  snprintf(path, sizeof path, "/big/%zu", CL__HTTP_MAX_BODY);
  get(h, url_of(url, sizeof url, s, path), &o);
  drive(h);
  assert_string_equal(o.reason, "");
  assert_int_equal(o.body_len, CL__HTTP_MAX_BODY);
  assert_int_equal(o.body[CL__HTTP_MAX_BODY - 1], 'x');
  outcome_clear(&o);

  /* One byte more: announced (Content-Length) or not (chunked). */
  snprintf(path, sizeof path, "/big/%zu", CL__HTTP_MAX_BODY + 1);
  get(h, url_of(url, sizeof url, s, path), &o);
  drive(h);
  assert_string_equal(o.reason, "too_large");
  assert_int_equal(o.status, 0);
  assert_int_equal(o.body_len, 0);
  outcome_clear(&o);

  snprintf(path, sizeof path, "/chunked/%zu", CL__HTTP_MAX_BODY + 1);
  get(h, url_of(url, sizeof url, s, path), &o);
  drive(h);
  assert_string_equal(o.reason, "too_large");
  assert_non_null(strstr(o.detail, "1048576"));
  outcome_clear(&o);
  cl__http_free(h);
}

/* ------------------------------------------------------------------ */
/* Refusals                                                             */
/* ------------------------------------------------------------------ */

/* Asserts the start is refused for `want` and nothing was started. */
static void refused(cl__http *h, const cl__http_request *req, const char *want) {
  char detail[256] = "";
  outcome o = {0};
  const char *why = cl__http_start(h, req, on_done, &o, detail, sizeof detail);
  if (!why || strcmp(why, want) != 0)
    fail_msg("%s: got %s (%s), want %s", req->url, why ? why : "started", detail, want);
  assert_true(strlen(detail) > 0);
  assert_int_equal(cl__http_in_flight(h), 0);
  assert_int_equal(cl__http_run(h, 0, -1), 0);
  assert_int_equal(o.calls, 0);
}

static void test_http__allow_list_refusals_start_nothing(void **state) {
  server *s = *state;
  char pattern[128], url[128];
  snprintf(pattern, sizeof pattern, "http://127.0.0.1:%d/allowed/", s->port);
  cl__http *h = client(pattern);
  const char *paths[] = {"/", "/allowed", "/other/allowed/", "/Allowed/x"};
  for (size_t i = 0; i < CT_ARRAY_LEN(paths); i++) {
    cl__http_request req = {.url = url_of(url, sizeof url, s, paths[i])};
    refused(h, &req, "not_allowed");
  }
  snprintf(url, sizeof url, "http://127.0.0.1:%d/allowed/x", s->port + 1);
  cl__http_request other_port = {.url = url};
  refused(h, &other_port, "not_allowed");
  snprintf(url, sizeof url, "http://user:pw@127.0.0.1:%d/allowed/x", s->port);
  cl__http_request userinfo = {.url = url};
  refused(h, &userinfo, "not_allowed");
  assert_int_equal(seen(s, &s->connections), 0);

  /* The pattern does allow what it names. */
  outcome o = {0};
  get(h, url_of(url, sizeof url, s, "/allowed/echo"), &o);
  drive(h);
  assert_int_equal(o.status, 404);
  outcome_clear(&o);
  cl__http_free(h);

  /* No pattern: nothing at all. */
  h = client(NULL);
  assert_int_equal(cl__http_patterns(h), 0);
  assert_false(cl__http_allowed(h, url_of(url, sizeof url, s, "/allowed/")));
  cl__http_request any = {.url = url};
  refused(h, &any, "not_allowed");
  cl__http_free(h);
}

static void test_http__bad_requests_are_invalid_request(void **state) {
  server *s = *state;
  char url[128];
  cl__http *h = client("http://127.0.0.1:*");
  url_of(url, sizeof url, s, "/echo");
  const char *crlf[] = {"X-A: 1\r\nX-Injected: 2", NULL};
  const char *lf[] = {"X-A: 1\nX-Injected: 2", NULL};
  const char *nocolon[] = {"X-A 1", NULL};
  const char *spaced[] = {"X A: 1", NULL};
  const char *noname[] = {": 1", NULL};
  const char *ctl[] = {"X-A: 1\x01", NULL};
  const char *const *bad_headers[] = {crlf, lf, nocolon, spaced, noname, ctl};
  for (size_t i = 0; i < CT_ARRAY_LEN(bad_headers); i++) {
    cl__http_request req = {.url = url, .headers = bad_headers[i]};
    refused(h, &req, "invalid_request");
  }
  const char *methods[] = {"", "GE T", "GET\r\nX: 1"};
  for (size_t i = 0; i < CT_ARRAY_LEN(methods); i++) {
    cl__http_request req = {.url = url, .method = methods[i]};
    refused(h, &req, "invalid_request");
  }
  cl__http_request negative = {.url = url, .timeout_ms = -1};
  refused(h, &negative, "invalid_request");
  const char *urls[] = {"",
                        "127.0.0.1/echo",
                        "//127.0.0.1/echo",
                        "http://127.0.0.1/a\r\nX: y",
                        "http://127.0.0.1/a b",
                        "http:127.0.0.1/"};
  for (size_t i = 0; i < CT_ARRAY_LEN(urls); i++) {
    cl__http_request req = {.url = urls[i]};
    refused(h, &req, "invalid_request");
  }
  cl__http_request none = {.url = NULL};
  refused(h, &none, "invalid_request");
  assert_int_equal(seen(s, &s->connections), 0);
  cl__http_free(h);
}

static cl__http *client_of(const char *const *allow) {
  cl__http *h = NULL;
  cl_error err;
  memset(&err, 0, sizeof err);
  if (cl__http_new(allow, &h, &err) != CL_OK) fail_msg("new: %s", err.message);
  return h;
}

static void allowed(const cl__http *h, const char *url) {
  if (!cl__http_allowed(h, url)) fail_msg("refused %s", url);
}

static void denied(const cl__http *h, const char *url) {
  if (cl__http_allowed(h, url)) fail_msg("allowed %s", url ? url : "(NULL)");
}

static void test_http__allow_list_matches_scheme_host_port_and_path(void **state) {
  (void)state;
  const char *allow[] = {"http://127.0.0.1:8080/hooks/", "https://*.example.com",
                         "HTTPS://API.Partner.COM:8443", "http://[::1]:*", NULL};
  cl__http *h = client_of(allow);
  assert_int_equal(cl__http_patterns(h), 4);

  allowed(h, "http://127.0.0.1:8080/hooks/a");
  allowed(h, "HTTP://127.0.0.1:8080/hooks/x");
  allowed(h, "http://127.1:8080/hooks/a");          /* the same address */
  allowed(h, "http://2130706433:8080/hooks/a");     /* idem */
  allowed(h, "http://%31%32%37.0.0.1:8080/hooks/"); /* idem, percent-encoded */
  allowed(h, "http://127.0.0.1:8080/hooks/a/../b"); /* curl fetches /hooks/b */
  allowed(h, "http://127.0.0.1:8080/hooks/?q=/../x");
  denied(h, "http://127.0.0.1:8080/hooks/../admin"); /* /admin */
  denied(h, "http://127.0.0.1:8080/hooks");          /* the prefix is "/hooks/" */
  denied(h, "http://127.0.0.1:8080/HOOKS/a");        /* paths are case-sensitive */
  denied(h, "http://127.0.0.1:8080/%68ooks/a");      /* not decoded: refused, never widened */
  /* Dot segments a server may decode: "/hooks/../admin" in disguise. */
  denied(h, "http://127.0.0.1:8080/hooks/%2e%2e/admin");
  denied(h, "http://127.0.0.1:8080/hooks/%2E%2E%2Fadmin");
  denied(h, "http://127.0.0.1:8080/hooks/..%2fadmin");
  denied(h, "http://127.0.0.1:8080/hooks/.%2e/admin");
  denied(h, "http://127.0.0.1:8080/hooks/..%5cadmin");
  denied(h, "http://127.0.0.1:8080/hooks/%2e/a");
  denied(h, "http://127.0.0.1:8080/hooks/a%00b");
  allowed(h, "http://127.0.0.1:8080/hooks/..a/%2e%2eb/a%20b"); /* dots, not dot segments */
  denied(h, "http://127.0.0.1/hooks/a");                       /* port 80 */
  denied(h, "http://127.0.0.1:8081/hooks/a");
  denied(h, "https://127.0.0.1:8080/hooks/a"); /* the scheme is part of the pattern */

  /* "*.example.com": any subdomain, at any depth, on 443 only. */
  allowed(h, "https://a.example.com/");
  allowed(h, "https://a.b.example.com/x");
  allowed(h, "https://A.EXAMPLE.COM/");
  allowed(h, "https://a.example.com./");
  allowed(h, "https://a.example.com:443/");
  denied(h, "https://example.com/");
  denied(h, "https://badexample.com/");
  denied(h, "https://a.example.com.evil.net/");
  denied(h, "https://a.example.com:8443/");
  denied(h, "http://a.example.com/");

  /* An explicit port, and case-blind host and scheme in the pattern. */
  allowed(h, "https://api.partner.com:8443/v1");
  denied(h, "https://api.partner.com/v1");

  /* An IPv6 literal on any port, compared in curl's normal form. */
  allowed(h, "http://[::1]:9000/");
  allowed(h, "http://[0:0:0:0:0:0:0:1]/");
  denied(h, "http://[::2]:9000/");
  denied(h, "http://[fe80::1%25lo]:9000/");

  /* Hostile shapes. */
  denied(h, "http://127.0.0.1:8080@evil.com/hooks/"); /* evil.com, with user info */
  denied(h, "http://127.0.0.1:80@evil.com/");
  denied(h, "http://evil.com#@127.0.0.1:8080/hooks/");
  denied(h, "http://evil.com?@127.0.0.1:8080/hooks/");
  denied(h, "http://127.0.0.1.evil.com:8080/hooks/");
  denied(h, "http://127.0.0.1%2eevil.com:8080/hooks/");
  denied(h, "http://user@127.0.0.1:8080/hooks/a");
  denied(h, "http://@127.0.0.1:8080/hooks/a");
  denied(h, "http://a.example.com\\@evil.com/");
  denied(h, "https://h\xc3\xa9.example.com/"); /* not ASCII: punycode only */
  denied(h, "127.0.0.1:8080/hooks/a");         /* no scheme */
  denied(h, "//127.0.0.1:8080/hooks/a");
  denied(h, "file:///etc/passwd");
  denied(h, "gopher://127.0.0.1:8080/hooks/");
  denied(h, "ftp://127.0.0.1:8080/hooks/");
  denied(h, "http://127.0.0.1:8080/hooks/a\r\nX-Injected: 1");
  denied(h, "http://127.0.0.1:8080/hooks/a b");
  denied(h, "");
  denied(h, NULL);
  cl__http_free(h);

  /* "*" is any host, "*" any port; still http or https only. */
  const char *any[] = {"http://*:*", NULL};
  h = client_of(any);
  allowed(h, "http://anything.test:1234/x");
  allowed(h, "http://10.0.0.1/");
  denied(h, "https://anything.test/");
  denied(h, "http://u@anything.test/");
  cl__http_free(h);
}

static void bad_pattern(const char *pattern, const char *want) {
  const char *allow[] = {"http://127.0.0.1:*", pattern, NULL};
  cl__http *h = (cl__http *)1;
  cl_error err;
  char quoted[256];
  memset(&err, 0, sizeof err);
  assert_int_equal(cl__http_new(allow, &h, &err), CL_INVALID_ARGUMENT);
  assert_null(h);
  assert_int_equal(err.code, CL_INVALID_ARGUMENT);
  /* The message names the pattern, control characters shown as '?'. */
  snprintf(quoted, sizeof quoted, "\"%s\"", pattern);
  for (char *c = quoted; *c; c++)
    if ((unsigned char)*c < ' ') *c = '?';
  if (!strstr(err.message, quoted) || !strstr(err.message, want))
    fail_msg("%s: message \"%s\" lacks %s or \"%s\"", pattern, err.message, quoted, want);
}

static void test_http__malformed_patterns_are_invalid_argument(void **state) {
  (void)state;
  cl__http *h = NULL;
  cl_error err;
  const char *allow[] = {"ftp://x", NULL};
  assert_int_equal(cl__http_new(allow, &h, &err), CL_INVALID_ARGUMENT);
  assert_string_equal(err.message, "http_allow: \"ftp://x\" is not an http or https pattern");

  bad_pattern("", "not an http or https pattern");
  bad_pattern("127.0.0.1", "not an http or https pattern");
  bad_pattern("file:///etc", "not an http or https pattern");
  bad_pattern("http//x", "not an http or https pattern");
  bad_pattern("http://", "no host");
  bad_pattern("http://:80", "no host");
  bad_pattern("http://x:", "bad port");
  bad_pattern("http://x:0", "bad port");
  bad_pattern("http://x:65536", "bad port");
  bad_pattern("http://x:99999999999", "bad port");
  bad_pattern("http://x:8o", "bad port");
  bad_pattern("http://x:**", "bad port");
  bad_pattern("http://a.*.com", "bad host");
  bad_pattern("http://*example.com", "bad host");
  bad_pattern("http://*.", "bad host");
  bad_pattern("http://[::1", "bad host");
  bad_pattern("http://[::1]x", "bad host");
  bad_pattern("http://u@x", "not a pattern");
  bad_pattern("http://x/?q", "not a pattern");
  bad_pattern("http://x/#f", "not a pattern");
  bad_pattern("http://x /", "not a pattern");
  bad_pattern(" http://x", "not a pattern");
  bad_pattern("http://x\r\n", "not a pattern");
}

/* ------------------------------------------------------------------ */
/* The loop                                                             */
/* ------------------------------------------------------------------ */

static void start_next(void *ud, const cl__http_response *res) {
  outcome *o = ud;
  on_done(o, res);
  cl__http_request req = {.url = o->next_url};
  o->next_why = cl__http_start(o->h, &req, on_done, o->next, NULL, 0);
}

static void test_http__a_callback_may_start_another_transfer(void **state) {
  server *s = *state;
  char first_url[128], second_url[128];
  outcome first = {0}, second = {0};
  cl__http *h = client("http://127.0.0.1:*");
  first.h = h;
  first.next_url = url_of(second_url, sizeof second_url, s, "/echo/second");
  first.next = &second;
  cl__http_request req = {.url = url_of(first_url, sizeof first_url, s, "/echo/first")};
  const char *why = cl__http_start(h, &req, start_next, &first, NULL, 0);
  assert_null(why);
  drive(h);
  assert_int_equal(first.calls, 1);
  assert_null(first.next_why);
  assert_int_equal(second.calls, 1);
  assert_int_equal(second.status, 200);
  assert_non_null(strstr(second.body, "GET /echo/second "));
  outcome_clear(&first);
  outcome_clear(&second);
  cl__http_free(h);
}

static void test_http__free_with_transfers_in_flight_calls_nothing(void **state) {
  server *s = *state;
  char url[128];
  outcome o[3];
  memset(o, 0, sizeof o);
  cl__http *h = client("http://127.0.0.1:*");
  for (int i = 0; i < 3; i++) get(h, url_of(url, sizeof url, s, "/hold"), &o[i]);
  drive_until_held(h, s, 3);
  assert_int_equal(cl__http_in_flight(h), 3);
  cl__http_free(h); /* under ASan: nothing leaks */
  for (int i = 0; i < 3; i++) assert_int_equal(o[i].calls, 0);
}

static void test_http__extra_fd_wakes_run(void **state) {
  server *s = *state;
  char url[128], byte = 'w';
  int p[2];
  long long t0;
  outcome o = {0};
  assert_int_equal(pipe(p), 0);
  cl__http *h = client("http://127.0.0.1:*");

  /* Idle, without a descriptor: at once, whatever the timeout. */
  t0 = now_ms();
  assert_int_equal(cl__http_run(h, WAIT_MS, -1), 0);
  assert_true(now_ms() - t0 < WAIT_MS / 2);

  /* Idle, with a descriptor: it waits for it ... */
  t0 = now_ms();
  assert_int_equal(cl__http_run(h, 300, p[0]), 0);
  assert_true(now_ms() - t0 >= 250);
  /* ... and returns as soon as it is readable. */
  assert_int_equal(write(p[1], &byte, 1), 1);
  t0 = now_ms();
  assert_int_equal(cl__http_run(h, WAIT_MS, p[0]), 0);
  assert_true(now_ms() - t0 < WAIT_MS / 2);
  assert_int_equal(read(p[0], &byte, 1), 1);

  /* The same with a transfer the peer holds. */
  get(h, url_of(url, sizeof url, s, "/hold"), &o);
  drive_until_held(h, s, 1);
  assert_int_equal(write(p[1], &byte, 1), 1);
  t0 = now_ms();
  assert_int_equal(cl__http_run(h, WAIT_MS, p[0]), 0);
  assert_true(now_ms() - t0 < WAIT_MS / 2);
  assert_int_equal(cl__http_in_flight(h), 1);
  assert_int_equal(o.calls, 0);
  server_release(s);
  drive(h);
  assert_int_equal(o.calls, 1);
  assert_int_equal(o.status, 200);
  outcome_clear(&o);
  cl__http_free(h);
  close(p[0]);
  close(p[1]);
}

static void test_http__parse_date_reads_the_three_http_forms(void **state) {
  (void)state;
  /* RFC 9110 section 5.6.7's example, in each of its forms. */
  assert_int_equal(cl__http_parse_date("Sun, 06 Nov 1994 08:49:37 GMT"), 784111777);
  assert_int_equal(cl__http_parse_date("Sunday, 06-Nov-94 08:49:37 GMT"), 784111777);
  assert_int_equal(cl__http_parse_date("Sun Nov  6 08:49:37 1994"), 784111777);
  assert_int_equal(cl__http_parse_date("Wed, 21 Oct 2015 07:28:00 GMT"), 1445412480);
  assert_int_equal(cl__http_parse_date("120"), -1); /* delta-seconds are not a date */
  assert_int_equal(cl__http_parse_date("soon"), -1);
  assert_int_equal(cl__http_parse_date(""), -1);
  assert_int_equal(cl__http_parse_date(NULL), -1);
}

#define SRV(t) cmocka_unit_test_setup_teardown(t, srv_setup, srv_teardown)

int main(void) {
  /* The peers are on 127.0.0.1: no proxy of the environment in between. */
  const char *proxies[] = {"http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"};
  for (size_t i = 0; i < CT_ARRAY_LEN(proxies); i++) unsetenv(proxies[i]);
  const struct CMUnitTest tests[] = {
      SRV(test_http__get_round_trip_with_headers),
      SRV(test_http__post_round_trip_with_binary_body),
      SRV(test_http__other_methods_and_a_large_body),
      SRV(test_http__statuses_are_responses_and_redirects_are_not_followed),
      SRV(test_http__interim_response_headers_are_dropped),
      SRV(test_http__many_transfers_in_flight_at_once),
      SRV(test_http__connections_are_kept_alive),
      SRV(test_http__slow_peer_is_timeout),
      cmocka_unit_test(test_http__closed_port_is_connect_failed),
      SRV(test_http__https_to_a_plain_port_is_tls_failed),
      cmocka_unit_test(test_http__self_signed_certificate_is_tls_failed),
      SRV(test_http__body_over_the_cap_is_too_large),
      SRV(test_http__allow_list_refusals_start_nothing),
      SRV(test_http__bad_requests_are_invalid_request),
      cmocka_unit_test(test_http__allow_list_matches_scheme_host_port_and_path),
      cmocka_unit_test(test_http__malformed_patterns_are_invalid_argument),
      SRV(test_http__a_callback_may_start_another_transfer),
      SRV(test_http__free_with_transfers_in_flight_calls_nothing),
      SRV(test_http__extra_fd_wakes_run),
      cmocka_unit_test(test_http__parse_date_reads_the_three_http_forms),
  };
  return cmocka_run_group_tests_name("http", tests, NULL, NULL);
}
