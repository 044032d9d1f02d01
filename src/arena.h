/*
 * arena.h - bump allocation for results.
 *
 * A result (trigger, bulk, envelope list) owns one arena: every string and
 * array it points to lives there, and its cl_*_clear() frees it in one go.
 */
#ifndef CL_ARENA_H
#define CL_ARENA_H

#include <stddef.h>

typedef struct cl__arena cl__arena;

cl__arena *cl__arena_new(void);
void *cl__arena_alloc(cl__arena *a, size_t n);
/* NULL stays NULL; otherwise a copy, or NULL when memory runs out. */
char *cl__arena_strdup(cl__arena *a, const char *s);
void cl__arena_free(cl__arena *a);

#endif
