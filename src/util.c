/*
 * util.c - the status table, the error channel and small validators.
 *
 * Provides cl_status_name/cl_status_exit_code (generated from
 * CL_STATUS_MAP), cl__fail/cl__ok, UTF-8 and UUID checks and UUID v4
 * generation through libuuid.  Uses nothing else of the engine.
 */
#include "engine.h"

#include <stdio.h>
#include <string.h>
#include <uuid/uuid.h>

static const char *const status_names[] = {
#define XX(name, str, exit_code) str,
    CL_STATUS_MAP(XX)
#undef XX
};

static const int status_exits[] = {
#define XX(name, str, exit_code) exit_code,
    CL_STATUS_MAP(XX)
#undef XX
};

const char *cl_status_name(cl_status status) {
  if ((unsigned)status >= CL_STATUS__COUNT) return "unknown";
  return status_names[status];
}

int cl_status_exit_code(cl_status status) {
  if ((unsigned)status >= CL_STATUS__COUNT) return 1;
  return status_exits[status];
}

cl_status cl__enter(const cl_engine *eng, const char *fn, cl_error *err) {
  if (!eng) return cl__fail(err, CL_INVALID_ARGUMENT, "%s: no engine (NULL)", fn);
  if (eng->in_hook)
    return cl__fail(err, CL_HOOK_ERROR, "%s called from inside a hook of the same engine", fn);
  return CL_OK;
}

cl_status cl__fail(cl_error *err, cl_status code, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    err->code = code;
    /* One line: server messages may carry newlines (DETAIL, HINT). */
    for (char *p = err->message; *p; p++)
      if (*p == '\n' || *p == '\r') {
        *p = '\0';
        break;
      }
  }
  return code;
}

void cl__ok(cl_error *err) {
  if (err) {
    err->code = CL_OK;
    err->message[0] = '\0';
  }
}

/* Strict UTF-8 (RFC 3629): no overlongs, no surrogates, nothing past
 * U+10FFFF, no NUL.  PostgreSQL would reject most of these with a less
 * useful message, and a NUL cannot be stored in text at all. */
bool cl__utf8_valid(const char *str, size_t len) {
  const unsigned char *s = (const unsigned char *)str, *end = s + len;
  while (s < end) {
    unsigned c = *s;
    if (c == 0) return false;
    if (c < 0x80) {
      s++;
      continue;
    }
    size_t n;
    unsigned min, cp;
    if ((c & 0xE0) == 0xC0) n = 1, min = 0x80, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) n = 2, min = 0x800, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) n = 3, min = 0x10000, cp = c & 0x07;
    else return false;
    if ((size_t)(end - s) <= n) return false;
    for (size_t i = 1; i <= n; i++) {
      if ((s[i] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    s += n + 1;
  }
  return true;
}

bool cl__uuid_valid(const char *s) {
  if (!s || strlen(s) != CL_UUID_LEN) return false;
  for (int i = 0; i < CL_UUID_LEN; i++) {
    char c = s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
      return false;
    }
  }
  return true;
}

void cl__uuid_lower(const char *s, char *out) {
  for (int i = 0; i < CL_UUID_LEN; i++)
    out[i] = (s[i] >= 'A' && s[i] <= 'F') ? (char)(s[i] + 32) : s[i];
  out[CL_UUID_LEN] = '\0';
}

void cl__uuid_v4(char *out) {
  uuid_t u;
  uuid_generate_random(u);
  uuid_unparse_lower(u, out);
}

cl_status cl__check_text(const char *field, const char *s, size_t max, bool required,
                         cl_error *err) {
  if (!s) {
    if (required) return cl__fail(err, CL_INVALID_ARGUMENT, "%s is required", field);
    return CL_OK;
  }
  size_t n = strlen(s);
  if (required && n == 0) return cl__fail(err, CL_INVALID_ARGUMENT, "%s must not be empty", field);
  if (n > max)
    return cl__fail(err, CL_INVALID_ARGUMENT, "%s is too large: %zu bytes, at most %zu", field, n,
                    max);
  if (!cl__utf8_valid(s, n))
    return cl__fail(err, CL_INVALID_ARGUMENT, "%s is not valid UTF-8", field);
  return CL_OK;
}
