/*
 * parse.c - parsers of the command's outside input: integers, id lists,
 * id files.  See parse.h.  Uses only the C library.
 */
#include "parse.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void id_list_free(id_list *l) {
  free(l->items);
  l->items = NULL;
  l->count = l->cap = 0;
}

static bool id_push(id_list *l, int64_t id) {
  if (l->count == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    int64_t *items = realloc(l->items, cap * sizeof *items);
    if (!items) return false;
    l->items = items;
    l->cap = cap;
  }
  l->items[l->count++] = id;
  return true;
}

bool cli_to_i64(const char *text, int64_t *out) {
  const char *p = text + (*text == '-');
  /* Digits only: strtoll alone would accept " 7", "+7" and "7abc". */
  if (!*p || strspn(p, "0123456789") != strlen(p)) return false;
  errno = 0;
  long long v = strtoll(text, NULL, 10);
  if (errno == ERANGE) return false;
  *out = v;
  return true;
}

/* The field [s, s + n) without blanks (spaces, tabs, CR, LF) around it,
 * copied into buf[size]; false when it does not fit. */
static bool trimmed(const char *s, size_t n, char *buf, size_t size) {
  while (n > 0 && isspace((unsigned char)*s)) {
    s++;
    n--;
  }
  while (n > 0 && isspace((unsigned char)s[n - 1])) n--;
  if (n >= size) return false;
  memcpy(buf, s, n);
  buf[n] = '\0';
  return true;
}

/* One id field; `where` says where it stood ("position 3", "f line 2"). */
static bool parse_field(const char *s, size_t n, const char *what, const char *where, bool blank_ok,
                        id_list *out, char *why, size_t why_size) {
  /* 64 bytes hold any int64 with room for blanks; longer is not an id. */
  char field[64];
  int64_t id;
  if (!trimmed(s, n, field, sizeof field)) {
    snprintf(why, why_size, "%s: %s: '%.40s...' is not a conversation id", what, where, s);
    return false;
  }
  if (!*field) {
    if (blank_ok) return true;
    snprintf(why, why_size, "%s: empty id at %s", what, where);
    return false;
  }
  if (!cli_to_i64(field, &id)) {
    snprintf(why, why_size, "%s: %s: '%.40s' is not a conversation id", what, where, field);
    return false;
  }
  if (!id_push(out, id)) {
    snprintf(why, why_size, "%s: out of memory", what);
    return false;
  }
  return true;
}

bool cli_parse_id_list(const char *text, id_list *out, char *why, size_t why_size) {
  size_t position = 0;
  /* Split by hand: strtok_r would skip empty fields, and "1,,2" is a
   * mistake worth naming. */
  for (const char *field = text;;) {
    const char *comma = strchr(field, ',');
    size_t n = comma ? (size_t)(comma - field) : strlen(field);
    char where[48];
    snprintf(where, sizeof where, "position %zu", ++position);
    if (!parse_field(field, n, "--ids", where, false, out, why, why_size)) return false;
    if (!comma) return true;
    field = comma + 1;
  }
}

bool cli_parse_id_lines(const char *buf, size_t len, const char *name, id_list *out, char *why,
                        size_t why_size) {
  const char *nul = memchr(buf, '\0', len);
  size_t lineno = 0;
  for (size_t at = 0; at < len;) {
    const char *start = buf + at;
    const char *nl = memchr(start, '\n', len - at);
    size_t n = nl ? (size_t)(nl - start) : len - at;
    lineno++;
    if (nul && nul >= start && nul < start + n) {
      snprintf(why, why_size, "--ids-file: %s line %zu: a NUL byte is not allowed", name, lineno);
      return false;
    }
    char where[300];
    snprintf(where, sizeof where, "%s line %zu", name, lineno);
    if (!parse_field(start, n, "--ids-file", where, true, out, why, why_size)) return false;
    at += n + 1;
  }
  return true;
}
