/*
 * lua_bounded.h - library functions of the policy state rewritten so that
 * the deadline of a hook call bounds them too.
 *
 * A count hook fires only between VM instructions, never inside a C
 * function, and the memory cap stops only what allocates.  lua_bounded.c
 * replaces the library functions that can loop in C without doing either
 * (pattern matching, string.rep, table.insert/remove/move/concat/sort,
 * load) with versions of the same contract that report their progress
 * every few thousand steps, and xpcall with one whose message handler is
 * skipped once the budget is spent.  Used by policy.c only: the file
 * includes Lua headers and is compiled for the engine's Lua 5.4.
 */
#ifndef CL_LUA_BOUNDED_H
#define CL_LUA_BOUNDED_H

struct lua_State;

/* How the replaced functions reach the budget of the call in progress. */
typedef struct cl__bounds {
  /* Returns while the call in progress is within its budget (or none is
   * armed); raises once it is spent.  Called every few thousand steps of
   * a loop in C. */
  void (*check)(struct lua_State *L);
  /* Nonzero once the call in progress has spent its budget. */
  int (*spent)(struct lua_State *L);
} cl__bounds;

/*
 * Replaces string.find/match/gmatch/gsub/rep, table.insert/remove/move/
 * concat/sort, load and xpcall in a state whose base, string and table
 * libraries are open.  `bounds` must outlive the state (a static const).
 * load is text-only: binary chunks are refused whatever mode is asked for.
 * Raises on memory.
 */
void cl__bounded_open(struct lua_State *L, const cl__bounds *bounds);

#endif
