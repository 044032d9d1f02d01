/*
 * sqlguard.c - the first-keyword test of a hook's statement (sqlguard.h).
 * PostgreSQL's lexer rules that matter here: white space, `--` comments to
 * the end of the line, slash-star comments that nest, and parentheses
 * around a query.  Uses nothing.
 */
#include "sqlguard.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* The statements that only read or write rows. */
static const char *const allowed[] = {"select", "insert", "update", "delete",
                                      "with",   "values", "table"};

/* Skips blanks, comments and '(' from s; NULL on an unterminated comment. */
static const char *skip_noise(const char *s) {
  for (;;) {
    while (isspace((unsigned char)*s) || *s == '(') s++;
    if (s[0] == '-' && s[1] == '-') {
      s += strcspn(s, "\n");
      continue;
    }
    if (s[0] == '/' && s[1] == '*') {
      int depth = 1;
      s += 2;
      while (depth > 0) {
        if (!*s) return NULL;
        if (s[0] == '/' && s[1] == '*') {
          depth++;
          s += 2;
        } else if (s[0] == '*' && s[1] == '/') {
          depth--;
          s += 2;
        } else {
          s++;
        }
      }
      continue;
    }
    return s;
  }
}

bool cl__sql_hook_allowed(const char *sql, char *why, size_t why_size) {
  const char *s = skip_noise(sql);
  if (!s) {
    snprintf(why, why_size, "the statement ends inside a comment");
    return false;
  }
  size_t n = 0;
  while (isalpha((unsigned char)s[n]) || s[n] == '_') n++;
  for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++)
    if (n == strlen(allowed[i]) && strncasecmp(s, allowed[i], n) == 0) return true;
  if (n == 0) snprintf(why, why_size, "no statement keyword found");
  else
    snprintf(why, why_size,
             "only SELECT, INSERT, UPDATE, DELETE, WITH, VALUES or TABLE may run here, not %.*s "
             "(a hook must not end its transaction or change the session)",
             (int)(n > 32 ? 32 : n), s);
  return false;
}
