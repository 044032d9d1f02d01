/*
 * arena.c - the bump allocator behind result structs (see arena.h).
 */
#include "arena.h"

#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

struct block {
  struct block *next;
  size_t used, size;
  alignas(max_align_t) unsigned char data[];
};

struct cl__arena {
  struct block *head;
};

/* 16 KiB blocks keep a 25-recipient result in one or two mallocs. */
#define BLOCK_SIZE 16384

cl__arena *cl__arena_new(void) { return calloc(1, sizeof(cl__arena)); }

void *cl__arena_alloc(cl__arena *a, size_t n) {
  n = (n + alignof(max_align_t) - 1) & ~(alignof(max_align_t) - 1);
  struct block *b = a->head;
  if (!b || b->size - b->used < n) {
    size_t size = n > BLOCK_SIZE ? n : BLOCK_SIZE;
    b = malloc(sizeof *b + size);
    if (!b) return NULL;
    b->used = 0;
    b->size = size;
    b->next = a->head;
    a->head = b;
  }
  void *p = b->data + b->used;
  b->used += n;
  return p;
}

char *cl__arena_strdup(cl__arena *a, const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *p = cl__arena_alloc(a, n);
  if (p) memcpy(p, s, n);
  return p;
}

void cl__arena_free(cl__arena *a) {
  if (!a) return;
  for (struct block *b = a->head, *next; b; b = next) {
    next = b->next;
    free(b);
  }
  free(a);
}
