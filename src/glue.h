/*
 * glue.h - the half of the Lua glue that needs no Lua: the hook budget, the
 * box that owns C memory while Lua code may raise, one-line error text and
 * the log lines of a failed hook call, the list_events transaction, and the
 * text forms of bound parameters and result cells.
 *
 * Compiled once into the engine (glue.c).  Its other half, lua_glue.inc, is
 * compiled once per Lua ABI and builds on this one; both sides of the
 * binding (policy.c, lua_module.c) link against it.  Uses engine.h.
 */
#ifndef CL_GLUE_H
#define CL_GLUE_H

#include "engine.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------ */
/* The hook budget                                                      */
/* ------------------------------------------------------------------ */

enum { CL__BUDGET_WITHIN = 0, CL__BUDGET_OVER_INSTRUCTIONS, CL__BUDGET_OVER_TIME };

/* One hook call's allowance; a count hook feeds it with cl__budget_tick. */
typedef struct cl__budget {
  int64_t used;        /* instructions counted so far in this call */
  int64_t limit;       /* instruction budget of one call */
  int64_t deadline_ns; /* CLOCK_MONOTONIC */
  int64_t time_limit_ms;
  int exceeded; /* CL__BUDGET_WITHIN until the budget is spent, then sticky */
} cl__budget;

void cl__budget_arm(cl__budget *b, int64_t instructions, int64_t ms);
/* Counts one firing of `count` instructions; returns the sticky verdict. */
int cl__budget_tick(cl__budget *b, int count);
/* Compares the deadline only, for loops in C that no count hook reaches
 * (lua_bounded.c); returns the sticky verdict. */
int cl__budget_clock(cl__budget *b);
/* What the count hook raises with once the budget is spent. */
const char *cl__budget_what(const cl__budget *b);
/* Fills err with "<hook>: <which limit> (<the limit>)". */
void cl__budget_fail(const cl__budget *b, const char *hook, cl_error *err);

/* ------------------------------------------------------------------ */
/* Error text                                                           */
/* ------------------------------------------------------------------ */

/* Copies `s` (len bytes) into buf as one printable line: control bytes
 * become spaces, the rest is cut at cap - 1 bytes. */
void cl__one_line(char *buf, size_t cap, const char *s, size_t len);

/*
 * Fills err (never NULL) after a failed hook call whose message handler
 * produced `full` ("message\nstack traceback:..."), and logs the message
 * and the traceback, one log line per traceback line.  `budget` (may be
 * NULL) decides a spent budget by its flag, never by the message text,
 * which a script could forge or swallow; `out_of_memory` is Lua's
 * LUA_ERRMEM, which carries no traceback; `mem_limit` is 0 when the state
 * has no cap of ours.
 */
void cl__hook_failed(cl_engine *eng, const char *hook, const char *full, bool out_of_memory,
                     const cl__budget *budget, size_t mem_limit, cl_error *err);

/* ------------------------------------------------------------------ */
/* The box                                                              */
/* ------------------------------------------------------------------ */

/*
 * A box owns one C resource (a result struct, a cl_rows, a JSON tree)
 * while the code that uses it may still raise: it lives in a Lua userdata
 * whose __gc releases the resource if Lua unwinds; on the normal path
 * cl__box_release() does it at once.  The resource is a pointer, or inline
 * storage in the box itself.
 */
typedef struct cl__box {
  void (*drop)(void *p); /* releases p; NULL once released */
  void *p;
  /* Inline storage when asked for, aligned for what is kept there
   * (integers, doubles, pointers): Lua userdata guarantee no more, and
   * LuaJIT's only 8 bytes, so max_align_t would promise 16 in vain. */
  union {
    int64_t i;
    double d;
    void *p;
  } data[];
} cl__box;

/* Releases what the box owns, once; NULL-safe drop. */
void cl__box_release(cl__box *b);
/* Drops for boxes: a jansson tree, a cl_rows. */
void cl__drop_json(void *json);
void cl__drop_rows(void *rows);

/* ------------------------------------------------------------------ */
/* Values                                                               */
/* ------------------------------------------------------------------ */

/*
 * Dumps a JSON tree as compact malloc'd text and releases the tree.  `any`
 * allows a scalar at the top.  NULL on memory.
 */
struct json_t;
char *cl__json_take_text(struct json_t *tree, bool any);

/* The text of a float bound as an SQL parameter: PostgreSQL's spellings
 * of NaN and the infinities, else 17 significant digits (exact). */
void cl__param_float(char *buf, size_t cap, double d);

/* How a result cell of a PostgreSQL type reaches Lua. */
typedef enum cl__cell {
  CL__CELL_TEXT,
  CL__CELL_INTEGER,
  CL__CELL_BOOLEAN,
  CL__CELL_NUMBER
} cl__cell;
cl__cell cl__cell_of(unsigned type_oid);

/* ------------------------------------------------------------------ */
/* The list_events handle                                               */
/* ------------------------------------------------------------------ */

/*
 * list_events gets a tx handle too, so that an auditor which writes rows can
 * read them back; it runs its statements outside any transaction.  The
 * engine's own cl_tx is borrowed for that call (cl_auditor.list_events has
 * no tx parameter) and given back by cl__list_tx_end.
 */
cl_tx *cl__list_tx_begin(cl_engine *eng);
void cl__list_tx_end(cl_engine *eng);

#endif
