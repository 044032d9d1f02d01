/*
 * libFuzzer target: the command's id parsers (cli/parse.c), `--ids 1,2,3`
 * and the lines of an `--ids-file`, on arbitrary bytes.  Besides what
 * ASan and UBSan catch, it checks the promises the command relies on:
 * input with a NUL byte is never accepted as an ids file, and what is
 * accepted prints back to a list that parses to the same ids.
 */
#include "parse.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_round_trip(const id_list *ids) {
  if (ids->count == 0) return;
  size_t cap = ids->count * 22 + 1;
  char *text = malloc(cap);
  if (!text) abort();
  size_t at = 0;
  for (size_t i = 0; i < ids->count; i++)
    at += (size_t)snprintf(text + at, cap - at, "%s%" PRId64, i ? "," : "", ids->items[i]);
  id_list again = {0};
  char why[256];
  if (!cli_parse_id_list(text, &again, why, sizeof why) || again.count != ids->count ||
      memcmp(again.items, ids->items, ids->count * sizeof *ids->items) != 0)
    abort();
  id_list_free(&again);
  free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char why[256];
  id_list ids = {0};
  bool ok = cli_parse_id_lines((const char *)data, size, "fuzz", &ids, why, sizeof why);
  if (ok && memchr(data, '\0', size)) abort(); /* a NUL byte must never pass */
  if (ok) check_round_trip(&ids);
  id_list_free(&ids);

  /* The same bytes as an --ids argument: a C string ends at its NUL. */
  char *text = malloc(size + 1);
  if (!text) abort();
  memcpy(text, data, size);
  text[size] = '\0';
  if (cli_parse_id_list(text, &ids, why, sizeof why)) check_round_trip(&ids);
  else if (!why[0]) abort(); /* every refusal says why */
  id_list_free(&ids);
  free(text);
  return 0;
}
