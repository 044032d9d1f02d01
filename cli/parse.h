/*
 * parse.h - the parsers of the command's outside input (parse.c): integers,
 * `--ids 1,2,3` and the lines of an `--ids-file`.  Pure functions over
 * bytes, with no output and no engine, so that the fuzz targets in
 * tests/fuzz/ drive exactly what the command runs.
 */
#ifndef CL_CLI_PARSE_H
#define CL_CLI_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct id_list {
  int64_t *items;
  size_t count, cap;
} id_list;

void id_list_free(id_list *l);

/* A decimal integer: an optional '-' and digits only, in int64 range. */
bool cli_to_i64(const char *text, int64_t *out);

/*
 * "1,2,3" into `out` (appended).  Ids are only parsed here: "0" and "-7"
 * pass, because the engine owns the rules (positive, distinct) and words
 * them itself.  On failure, false with one line in why[why_size].
 */
bool cli_parse_id_list(const char *text, id_list *out, char *why, size_t why_size);

/*
 * The bytes of an ids file, `len` of them (not NUL-terminated): one id per
 * line, blanks around it and blank lines ignored.  A NUL byte anywhere is
 * invalid input (a C string would silently end there).  `name` names the
 * file in the message.  On failure, false with one line in why[why_size].
 */
bool cli_parse_id_lines(const char *buf, size_t len, const char *name, id_list *out, char *why,
                        size_t why_size);

#endif
