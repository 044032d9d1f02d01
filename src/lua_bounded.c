/*
 * lua_bounded.c - the bounded library functions of the policy state (see
 * lua_bounded.h).
 *
 * Each replacement keeps the contract of the function it replaces (the
 * Lua 5.4 reference manual, sections 6.1, 6.4 and 6.6): same arguments,
 * results and error messages.  What changes is that every loop whose
 * length the arguments choose counts its steps and calls bounds->check
 * every CHECK_EVERY of them, so the call's deadline ends it.  The pattern
 * matcher is this file's own: a backtracking matcher over Lua's pattern
 * language that counts every comparison it makes.  Uses lua_bounded.h and
 * the Lua 5.4 headers (through lua_compat.h).
 */
#include "lua_bounded.h"

#include "lua_compat.h"

#include <ctype.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

/*
 * Steps between two calls of bounds->check.  A step is one comparison or
 * one element moved, a few nanoseconds; a check reads the monotonic clock
 * (about 20 ns through the vDSO).  4096 steps keep the check under 1 % of
 * the work and the overshoot past a deadline far below a millisecond.
 */
#define CHECK_EVERY 4096

/* The bounds are upvalue 1 of every replaced function. */
static const cl__bounds *bounds_of(lua_State *L) {
  return (const cl__bounds *)lua_touserdata(L, lua_upvalueindex(1));
}

/* A step counter for one C loop. */
typedef struct stepper {
  lua_State *L;
  const cl__bounds *bounds;
  unsigned steps;
} stepper;

/* Counts `n` steps; past CHECK_EVERY, asks the bounds (which may raise). */
static void charge(stepper *st, unsigned n) {
  st->steps += n;
  if (st->steps >= CHECK_EVERY) {
    st->steps = 0;
    st->bounds->check(st->L);
  }
}

/* ------------------------------------------------------------------ */
/* Patterns                                                             */
/* ------------------------------------------------------------------ */

#define PAT_ESC '%'
/* The characters that make a pattern more than a plain string. */
#define PAT_SPECIALS "^$*+?.([%-"
/* As Lua's LUA_MAXCAPTURES. */
#define MAX_CAPTURES 32
/* Depth of the matcher's recursion, as Lua's own matcher allows (MAXCCALLS). */
#define MAX_DEPTH 200
/* Capture lengths that are not lengths. */
#define CAP_OPEN (-1)
#define CAP_POSITION (-2)

typedef struct matcher {
  stepper st;
  const char *src, *src_end; /* the subject */
  const char *pat_end;       /* the pattern ends here; *pat_end is its '\0' */
  int depth;                 /* recursion still allowed */
  int level;                 /* captures opened so far */
  struct {
    const char *init;
    ptrdiff_t len; /* a length, CAP_OPEN or CAP_POSITION */
  } cap[MAX_CAPTURES];
} matcher;

static void matcher_init(matcher *m, lua_State *L, const char *s, size_t ls, const char *p,
                         size_t lp) {
  m->st.L = L;
  m->st.bounds = bounds_of(L);
  m->st.steps = 0;
  m->src = s;
  m->src_end = s + ls;
  m->pat_end = p + lp;
  m->level = 0;
  m->depth = MAX_DEPTH;
}

/* Before each attempt at a new subject position. */
static void matcher_reset(matcher *m) {
  m->level = 0;
  m->depth = MAX_DEPTH;
}

/*
 * The end of the single-character class starting at p: a plain
 * character, %x, or a set [...].  Lua strings end in '\0', so reading
 * *pat_end is safe and ends every scan.
 */
static const char *class_end(matcher *m, const char *p) {
  char c = *p++;
  if (c == PAT_ESC) {
    if (p == m->pat_end) luaL_error(m->st.L, "malformed pattern (ends with '%%')");
    return p + 1;
  }
  if (c == '[') {
    if (*p == '^') p++;
    do { /* the first character after [ or [^ may be a ']' itself */
      charge(&m->st, 1);
      if (p == m->pat_end) luaL_error(m->st.L, "malformed pattern (missing ']')");
      c = *p++;
      if (c == PAT_ESC && p < m->pat_end) p++; /* %] and the like */
    } while (*p != ']');
    return p + 1;
  }
  return p;
}

/* Whether c belongs to the class %cl (the C locale's classification);
 * an upper-case class letter is the complement, any other character
 * stands for itself. */
static bool class_match(int c, int cl) {
  bool in;
  switch (tolower(cl)) {
  case 'a':
    in = isalpha(c);
    break;
  case 'c':
    in = iscntrl(c);
    break;
  case 'd':
    in = isdigit(c);
    break;
  case 'g':
    in = isgraph(c);
    break;
  case 'l':
    in = islower(c);
    break;
  case 'p':
    in = ispunct(c);
    break;
  case 's':
    in = isspace(c);
    break;
  case 'u':
    in = isupper(c);
    break;
  case 'w':
    in = isalnum(c);
    break;
  case 'x':
    in = isxdigit(c);
    break;
  case 'z': /* deprecated, still accepted by Lua 5.4 */
    in = (c == 0);
    break;
  default:
    return cl == c;
  }
  return isupper(cl) ? !in : in;
}

/* Whether c belongs to the set from p ('[') to last (its ']'). */
static bool set_match(matcher *m, int c, const char *p, const char *last) {
  bool want = true;
  if (p[1] == '^') {
    want = false;
    p++;
  }
  while (++p < last) {
    charge(&m->st, 1);
    if (*p == PAT_ESC) {
      p++;
      if (class_match(c, (unsigned char)*p)) return want;
    } else if (p[1] == '-' && p + 2 < last) {
      p += 2;
      if ((unsigned char)p[-2] <= c && c <= (unsigned char)*p) return want;
    } else if ((unsigned char)*p == c) {
      return want;
    }
  }
  return !want;
}

/* Whether the subject character at s matches the class from p to ep. */
static bool single_match(matcher *m, const char *s, const char *p, const char *ep) {
  int c;
  if (s >= m->src_end) return false;
  c = (unsigned char)*s;
  switch (*p) {
  case '.':
    return true;
  case PAT_ESC:
    return class_match(c, (unsigned char)p[1]);
  case '[':
    return set_match(m, c, p, ep - 1);
  default:
    return (unsigned char)*p == c;
  }
}

static const char *do_match(matcher *m, const char *s, const char *p);

/* %bxy at s, p pointing at x. */
static const char *match_balance(matcher *m, const char *s, const char *p) {
  int open, close, depth = 1;
  if (p >= m->pat_end - 1) luaL_error(m->st.L, "malformed pattern (missing arguments to '%%b')");
  if (s >= m->src_end || *s != *p) return NULL;
  open = (unsigned char)*p;
  close = (unsigned char)p[1];
  while (++s < m->src_end) {
    charge(&m->st, 1);
    if ((unsigned char)*s == close) {
      if (--depth == 0) return s + 1;
    } else if ((unsigned char)*s == open) {
      depth++;
    }
  }
  return NULL;
}

/* The longest run of the class p..ep from s, then shorter ones, each
 * followed by the rest of the pattern. */
// NOLINTNEXTLINE(misc-no-recursion): the matcher recurses like Lua's lstrlib, bounded to MAX_DEPTH (200) levels
static const char *max_expand(matcher *m, const char *s, const char *p, const char *ep) {
  ptrdiff_t n = 0;
  while (single_match(m, s + n, p, ep)) {
    charge(&m->st, 1);
    n++;
  }
  for (; n >= 0; n--) {
    const char *r = do_match(m, s + n, ep + 1);
    if (r) return r;
  }
  return NULL;
}

/* The shortest run first, growing one character at a time. */
// NOLINTNEXTLINE(misc-no-recursion): the matcher recurses like Lua's lstrlib, bounded to MAX_DEPTH (200) levels
static const char *min_expand(matcher *m, const char *s, const char *p, const char *ep) {
  for (;;) {
    const char *r = do_match(m, s, ep + 1);
    if (r) return r;
    if (!single_match(m, s, p, ep)) return NULL;
    s++;
  }
}

// NOLINTNEXTLINE(misc-no-recursion): the matcher recurses like Lua's lstrlib, bounded to MAX_DEPTH (200) levels
static const char *start_capture(matcher *m, const char *s, const char *p, ptrdiff_t what) {
  const char *r;
  if (m->level >= MAX_CAPTURES) {
    luaL_error(m->st.L, "too many captures");
    return NULL; /* not reached: luaL_error raises */
  }
  m->cap[m->level].init = s;
  m->cap[m->level].len = what;
  m->level++;
  if ((r = do_match(m, s, p)) == NULL) m->level--; /* undo the capture */
  return r;
}

// NOLINTNEXTLINE(misc-no-recursion): the matcher recurses like Lua's lstrlib, bounded to MAX_DEPTH (200) levels
static const char *end_capture(matcher *m, const char *s, const char *p) {
  const char *r;
  int l = m->level - 1;
  while (l >= 0 && m->cap[l].len != CAP_OPEN) l--; /* the innermost open one */
  if (l < 0) {
    luaL_error(m->st.L, "invalid pattern capture");
    return NULL; /* not reached: luaL_error raises */
  }
  m->cap[l].len = s - m->cap[l].init;
  if ((r = do_match(m, s, p)) == NULL) m->cap[l].len = CAP_OPEN; /* undo */
  return r;
}

/* The index of capture digit d, raising if it names no closed capture. */
static int capture_index(matcher *m, int d) {
  int l = d - '1';
  if (l < 0 || l >= m->level || m->cap[l].len == CAP_OPEN)
    luaL_error(m->st.L, "invalid capture index %%%d", l + 1);
  return l;
}

/* %1..%9: the text of that capture again at s. */
static const char *match_backref(matcher *m, const char *s, int d) {
  int l = capture_index(m, d);
  size_t len = (size_t)m->cap[l].len; /* a position capture is huge here: no match */
  if ((size_t)(m->src_end - s) >= len) {
    charge(&m->st, 1 + (unsigned)(len / 16));
    if (memcmp(m->cap[l].init, s, len) == 0) return s + len;
  }
  return NULL;
}

/*
 * Matches the pattern from p against the subject from s; returns the end
 * of the match or NULL.  The recursion (one level per quantifier tried
 * and per capture) is limited to MAX_DEPTH, as in Lua; straight runs of
 * the pattern loop here instead of recursing.
 */
// NOLINTNEXTLINE(misc-no-recursion): the matcher recurses like Lua's lstrlib, bounded to MAX_DEPTH (200) levels
static const char *do_match(matcher *m, const char *s, const char *p) {
  if (m->depth-- == 0) luaL_error(m->st.L, "pattern too complex");
  charge(&m->st, 1);
  while (s != NULL && p != m->pat_end) {
    const char *ep;
    if (*p == '(') {
      if (p[1] == ')') s = start_capture(m, s, p + 2, CAP_POSITION);
      else s = start_capture(m, s, p + 1, CAP_OPEN);
      break;
    }
    if (*p == ')') {
      s = end_capture(m, s, p + 1);
      break;
    }
    if (*p == '$' && p + 1 == m->pat_end) {
      s = (s == m->src_end) ? s : NULL;
      break;
    }
    if (*p == PAT_ESC && p[1] == 'b') {
      s = match_balance(m, s, p + 2);
      p += 4;
      continue;
    }
    if (*p == PAT_ESC && p[1] == 'f') {
      int prev;
      p += 2;
      if (*p != '[') luaL_error(m->st.L, "missing '[' after '%%f' in pattern");
      ep = class_end(m, p);
      prev = (s == m->src) ? '\0' : (unsigned char)s[-1];
      /* At the end of the subject *s is its terminating '\0'. */
      if (!set_match(m, prev, p, ep - 1) && set_match(m, (unsigned char)*s, p, ep - 1)) p = ep;
      else s = NULL;
      continue;
    }
    if (*p == PAT_ESC && isdigit((unsigned char)p[1])) {
      s = match_backref(m, s, (unsigned char)p[1]);
      p += 2;
      continue;
    }
    /* A single-character class, maybe followed by a quantifier. */
    ep = class_end(m, p);
    if (!single_match(m, s, p, ep)) {
      if (*ep == '*' || *ep == '?' || *ep == '-') p = ep + 1; /* zero repetitions are fine */
      else s = NULL;
      continue;
    }
    if (*ep == '?') {
      const char *r = do_match(m, s + 1, ep + 1);
      if (r) {
        s = r;
        break;
      }
      p = ep + 1; /* or without it */
      continue;
    }
    if (*ep == '+') {
      s = max_expand(m, s + 1, p, ep);
      break;
    }
    if (*ep == '*') {
      s = max_expand(m, s, p, ep);
      break;
    }
    if (*ep == '-') {
      s = min_expand(m, s, p, ep);
      break;
    }
    s++;
    p = ep;
  }
  m->depth++;
  return s;
}

/* Capture i of a match from s to e: its length (and *cap its start), or
 * CAP_POSITION with the position pushed.  Capture 0 of a pattern without
 * captures is the whole match. */
static ptrdiff_t get_capture(matcher *m, int i, const char *s, const char *e, const char **cap) {
  if (i >= m->level) {
    if (i != 0) luaL_error(m->st.L, "invalid capture index %%%d", i + 1);
    *cap = s;
    return e - s;
  }
  *cap = m->cap[i].init;
  if (m->cap[i].len == CAP_OPEN) luaL_error(m->st.L, "unfinished capture");
  if (m->cap[i].len == CAP_POSITION)
    lua_pushinteger(m->st.L, (lua_Integer)(m->cap[i].init - m->src) + 1);
  return m->cap[i].len;
}

static void push_capture(matcher *m, int i, const char *s, const char *e) {
  const char *cap;
  ptrdiff_t len = get_capture(m, i, s, e, &cap);
  if (len != CAP_POSITION) lua_pushlstring(m->st.L, cap, (size_t)len);
}

/* Pushes the captures (the whole match when there are none and s is not
 * NULL); returns how many. */
static int push_captures(matcher *m, const char *s, const char *e) {
  int i, n = (m->level == 0 && s) ? 1 : m->level;
  luaL_checkstack(m->st.L, n, "too many captures");
  for (i = 0; i < n; i++) push_capture(m, i, s, e);
  return n;
}

/* A start position as string.find and friends read it: negative counts
 * from the end, 0 is 1, before the start is 1. */
static size_t start_of(lua_Integer pos, size_t len) {
  if (pos > 0) return (size_t)pos;
  if (pos == 0) return 1;
  if (pos < -(lua_Integer)len) return 1;
  return len + (size_t)pos + 1;
}

static bool has_specials(const char *p, size_t lp) {
  const char *c;
  for (c = PAT_SPECIALS; *c; c++)
    if (memchr(p, *c, lp)) return true;
  return false;
}

/* string.find and string.match. */
static int find_aux(lua_State *L, bool find) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  size_t init = start_of(luaL_optinteger(L, 3, 1), ls) - 1;
  if (init > ls) {
    luaL_pushfail(L);
    return 1;
  }
  if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
    /* A plain search: glibc's memmem is linear in the subject (two-way
     * matching), so no step counting is needed. */
    const char *hit = (const char *)memmem(s + init, ls - init, p, lp);
    if (hit) {
      lua_pushinteger(L, (lua_Integer)(hit - s) + 1);
      lua_pushinteger(L, (lua_Integer)(hit - s) + (lua_Integer)lp);
      return 2;
    }
  } else {
    matcher m;
    const char *s1 = s + init;
    bool anchor = (*p == '^');
    if (anchor) {
      p++;
      lp--;
    }
    matcher_init(&m, L, s, ls, p, lp);
    do {
      const char *e;
      matcher_reset(&m);
      if ((e = do_match(&m, s1, p)) != NULL) {
        if (!find) return push_captures(&m, s1, e);
        lua_pushinteger(L, (lua_Integer)(s1 - s) + 1);
        lua_pushinteger(L, (lua_Integer)(e - s));
        return push_captures(&m, NULL, NULL) + 2;
      }
    } while (s1++ < m.src_end && !anchor);
  }
  luaL_pushfail(L);
  return 1;
}

/* string.find(s, pattern [, init [, plain]]) -> start, end, captures... | fail */
static int str_find(lua_State *L) { return find_aux(L, true); }

/* string.match(s, pattern [, init]) -> captures... | fail */
static int str_match(lua_State *L) { return find_aux(L, false); }

/* The state of one gmatch iterator, in a userdata upvalue. */
typedef struct gmatch_state {
  matcher m;
  const char *next;      /* where the next search starts */
  const char *lastmatch; /* end of the last match: an empty match there is skipped */
  const char *p;
  bool done; /* init was past the end of the subject */
} gmatch_state;

/* The iterator: upvalues bounds, s, p, state. */
static int gmatch_next(lua_State *L) {
  gmatch_state *g = (gmatch_state *)lua_touserdata(L, lua_upvalueindex(4));
  const char *src;
  if (g->done) return 0;
  g->m.st.L = L; /* the iterator may run in another coroutine */
  for (src = g->next; src <= g->m.src_end; src++) {
    const char *e;
    matcher_reset(&g->m);
    if ((e = do_match(&g->m, src, g->p)) != NULL && e != g->lastmatch) {
      g->next = g->lastmatch = e;
      return push_captures(&g->m, src, e);
    }
  }
  g->done = true;
  return 0;
}

/* string.gmatch(s, pattern [, init]) -> iterator; '^' is an ordinary character here */
static int str_gmatch(lua_State *L) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  size_t init = start_of(luaL_optinteger(L, 3, 1), ls) - 1;
  gmatch_state *g;
  lua_settop(L, 2);
  g = (gmatch_state *)lua_newuserdatauv(L, sizeof *g, 0);
  matcher_init(&g->m, L, s, ls, p, lp);
  g->done = init > ls;
  g->next = g->done ? s : s + init;
  g->lastmatch = NULL;
  g->p = p;
  lua_pushvalue(L, lua_upvalueindex(1)); /* s p state bounds */
  lua_insert(L, 1);                      /* bounds s p state: s and p stay alive */
  lua_pushcclosure(L, gmatch_next, 4);
  return 1;
}

/* Appends the replacement string (argument 3) for a match from s to e,
 * with %0..%9 and %% expanded. */
static void add_replacement(matcher *m, luaL_Buffer *b, const char *s, const char *e) {
  lua_State *L = m->st.L;
  size_t l;
  const char *r = lua_tolstring(L, 3, &l), *esc;
  while ((esc = (const char *)memchr(r, PAT_ESC, l)) != NULL) {
    const char *d = esc + 1; /* the replacement ends in '\0': *d is readable */
    luaL_addlstring(b, r, (size_t)(esc - r));
    if (*d == PAT_ESC) {
      luaL_addchar(b, PAT_ESC);
    } else if (*d == '0') {
      luaL_addlstring(b, s, (size_t)(e - s));
    } else if (isdigit((unsigned char)*d)) {
      const char *cap;
      ptrdiff_t len = get_capture(m, *d - '1', s, e, &cap);
      if (len == CAP_POSITION) luaL_addvalue(b); /* the position get_capture pushed */
      else luaL_addlstring(b, cap, (size_t)len);
    } else {
      luaL_error(L, "invalid use of '%c' in replacement string", PAT_ESC);
    }
    l -= (size_t)(d + 1 - r);
    r = d + 1;
  }
  luaL_addlstring(b, r, l);
}

/* Appends the replacement for a match from s to e; returns whether the
 * text changed (a false or nil from a function or table keeps it). */
static bool add_value(matcher *m, luaL_Buffer *b, const char *s, const char *e, int repl_type) {
  lua_State *L = m->st.L;
  if (repl_type == LUA_TFUNCTION) {
    int n;
    lua_pushvalue(L, 3);
    n = push_captures(m, s, e);
    lua_call(L, n, 1);
  } else if (repl_type == LUA_TTABLE) {
    push_capture(m, 0, s, e);
    lua_gettable(L, 3);
  } else {
    add_replacement(m, b, s, e);
    return true;
  }
  if (!lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    luaL_addlstring(b, s, (size_t)(e - s));
    return false;
  }
  if (!lua_isstring(L, -1)) luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
  luaL_addvalue(b);
  return true;
}

/* string.gsub(s, pattern, repl [, n]) -> string, count */
static int str_gsub(lua_State *L) {
  size_t ls, lp;
  const char *src = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  const char *lastmatch = NULL;
  int repl_type = lua_type(L, 3);
  lua_Integer max_n = luaL_optinteger(L, 4, (lua_Integer)ls + 1), n = 0;
  bool anchor = (*p == '^'), changed = false;
  matcher m;
  luaL_Buffer b;
  luaL_argexpected(L,
                   repl_type == LUA_TNUMBER || repl_type == LUA_TSTRING ||
                       repl_type == LUA_TFUNCTION || repl_type == LUA_TTABLE,
                   3, "string/function/table");
  luaL_buffinit(L, &b);
  if (anchor) {
    p++;
    lp--;
  }
  matcher_init(&m, L, src, ls, p, lp);
  while (n < max_n) {
    const char *e;
    matcher_reset(&m);
    if ((e = do_match(&m, src, p)) != NULL && e != lastmatch) {
      n++;
      changed = add_value(&m, &b, src, e, repl_type) || changed;
      src = lastmatch = e;
    } else if (src < m.src_end) {
      luaL_addchar(&b, *src++);
    } else {
      break;
    }
    if (anchor) break;
  }
  if (!changed) {
    lua_pushvalue(L, 1); /* the subject itself */
  } else {
    luaL_addlstring(&b, src, (size_t)(m.src_end - src));
    luaL_pushresult(&b);
  }
  lua_pushinteger(L, n);
  return 2;
}

/* ------------------------------------------------------------------ */
/* string.rep                                                           */
/* ------------------------------------------------------------------ */

/* string.rep(s, n [, sep]) -> string
 * An empty result takes no time whatever n is; any other result is
 * allocated whole before the copying starts, so the memory cap bounds it.
 * Results are limited to INT_MAX bytes, as Lua's own string.rep does. */
static int str_rep(lua_State *L) {
  size_t l, lsep, total;
  const char *s = luaL_checklstring(L, 1, &l);
  lua_Integer n = luaL_checkinteger(L, 2);
  const char *sep = luaL_optlstring(L, 3, "", &lsep);
  char *out;
  luaL_Buffer b;
  if (n <= 0 || l + lsep == 0) {
    lua_pushliteral(L, "");
    return 1;
  }
  if (l + lsep < l || l + lsep > (size_t)INT_MAX / (lua_Unsigned)n)
    return luaL_error(L, "resulting string too large");
  total = (size_t)n * l + (size_t)(n - 1) * lsep;
  out = luaL_buffinitsize(L, &b, total);
  while (n-- > 1) { /* at most total / (l + lsep) rounds */
    memcpy(out, s, l);
    out += l;
    memcpy(out, sep, lsep);
    out += lsep;
  }
  memcpy(out, s, l);
  luaL_pushresultsize(&b, total);
  return 1;
}

/* ------------------------------------------------------------------ */
/* Tables                                                               */
/* ------------------------------------------------------------------ */

enum { TAB_R = 1, TAB_W = 2, TAB_L = 4 };

/* Argument `arg` must be a table, or have a metatable with the metamethods
 * for `what` (reading, writing, length), as the table library requires. */
static void check_tab(lua_State *L, int arg, int what) {
  static const struct {
    int what;
    const char *name;
  } needed[] = {{TAB_R, "__index"}, {TAB_W, "__newindex"}, {TAB_L, "__len"}};
  if (lua_type(L, arg) == LUA_TTABLE) return;
  if (lua_getmetatable(L, arg)) {
    bool ok = true;
    for (size_t i = 0; ok && i < sizeof needed / sizeof needed[0]; i++) {
      if (!(what & needed[i].what)) continue;
      lua_pushstring(L, needed[i].name);
      ok = lua_rawget(L, -2) != LUA_TNIL;
      lua_pop(L, 1);
    }
    lua_pop(L, 1); /* metatable */
    if (ok) return;
  }
  luaL_checktype(L, arg, LUA_TTABLE); /* raises the usual message */
}

/* The length of the table at arg (its __len if any), after check_tab. */
static lua_Integer tab_len(lua_State *L, int arg, int what) {
  check_tab(L, arg, what | TAB_L);
  return luaL_len(L, arg);
}

static void stepper_init(stepper *st, lua_State *L) {
  st->L = L;
  st->bounds = bounds_of(L);
  st->steps = 0;
}

/* table.insert(t, [pos,] value) */
static int tab_insert(lua_State *L) {
  lua_Integer e = tab_len(L, 1, TAB_R | TAB_W), pos;
  stepper st;
  e = (lua_Integer)((lua_Unsigned)e + 1u); /* the first empty slot */
  switch (lua_gettop(L)) {
  case 2:
    pos = e;
    break;
  case 3:
    pos = luaL_checkinteger(L, 2);
    /* 1 <= pos <= e, written so that it cannot overflow */
    luaL_argcheck(L, (lua_Unsigned)pos - 1u < (lua_Unsigned)e, 2, "position out of bounds");
    stepper_init(&st, L);
    for (lua_Integer i = e; i > pos; i--) { /* t[i] = t[i - 1] */
      charge(&st, 1);
      lua_geti(L, 1, i - 1);
      lua_seti(L, 1, i);
    }
    break;
  default:
    return luaL_error(L, "wrong number of arguments to 'insert'");
  }
  lua_seti(L, 1, pos);
  return 0;
}

/* table.remove(t [, pos]) -> the removed value */
static int tab_remove(lua_State *L) {
  lua_Integer size = tab_len(L, 1, TAB_R | TAB_W);
  lua_Integer pos = luaL_optinteger(L, 2, size);
  stepper st;
  if (pos != size) /* an explicit pos must lie in [1, size + 1] */
    luaL_argcheck(L, (lua_Unsigned)pos - 1u <= (lua_Unsigned)size, 2, "position out of bounds");
  stepper_init(&st, L);
  lua_geti(L, 1, pos);
  for (; pos < size; pos++) { /* t[pos] = t[pos + 1] */
    charge(&st, 1);
    lua_geti(L, 1, pos + 1);
    lua_seti(L, 1, pos);
  }
  lua_pushnil(L);
  lua_seti(L, 1, pos);
  return 1;
}

/* table.move(a1, f, e, t [, a2]) -> a2 */
static int tab_move(lua_State *L) {
  lua_Integer f = luaL_checkinteger(L, 2);
  lua_Integer e = luaL_checkinteger(L, 3);
  lua_Integer t = luaL_checkinteger(L, 4);
  int dst = !lua_isnoneornil(L, 5) ? 5 : 1;
  stepper st;
  check_tab(L, 1, TAB_R);
  check_tab(L, dst, TAB_W);
  if (e >= f) {
    lua_Integer n, i;
    luaL_argcheck(L, f > 0 || e < LUA_MAXINTEGER + f, 3, "too many elements to move");
    n = e - f + 1;
    luaL_argcheck(L, t <= LUA_MAXINTEGER - n + 1, 4, "destination wrap around");
    stepper_init(&st, L);
    /* Forwards unless the ranges overlap with the destination after the source. */
    if (t > e || t <= f || (dst != 1 && !lua_compare(L, 1, dst, LUA_OPEQ))) {
      for (i = 0; i < n; i++) {
        charge(&st, 1);
        lua_geti(L, 1, f + i);
        lua_seti(L, dst, t + i);
      }
    } else {
      for (i = n - 1; i >= 0; i--) {
        charge(&st, 1);
        lua_geti(L, 1, f + i);
        lua_seti(L, dst, t + i);
      }
    }
  }
  lua_pushvalue(L, dst);
  return 1;
}

/* table.concat(list [, sep [, i [, j]]]) -> string */
static int tab_concat(lua_State *L) {
  luaL_Buffer b;
  lua_Integer last = tab_len(L, 1, TAB_R), i;
  size_t lsep;
  const char *sep = luaL_optlstring(L, 2, "", &lsep);
  stepper st;
  i = luaL_optinteger(L, 3, 1);
  last = luaL_optinteger(L, 4, last);
  stepper_init(&st, L);
  luaL_buffinit(L, &b);
  for (; i <= last; i++) {
    charge(&st, 1);
    lua_geti(L, 1, i);
    if (!lua_isstring(L, -1))
      return luaL_error(L, "invalid value (%s) at index %I in table for 'concat'",
                        luaL_typename(L, -1), (LUAI_UACINT)i);
    luaL_addvalue(&b);
    if (i == last) break; /* also ends the loop at LUA_MAXINTEGER */
    luaL_addlstring(&b, sep, lsep);
  }
  luaL_pushresult(&b);
  return 1;
}

/* The comparison of a bounded sort: upvalues bounds, the script's
 * comparator (or nil for <), the comparisons so far. */
static int sort_compare(lua_State *L) {
  lua_Integer n = lua_tointeger(L, lua_upvalueindex(3)) + 1;
  if (n >= CHECK_EVERY) {
    n = 0;
    bounds_of(L)->check(L);
  }
  lua_pushinteger(L, n);
  lua_replace(L, lua_upvalueindex(3));
  if (lua_isnil(L, lua_upvalueindex(2))) {
    lua_pushboolean(L, lua_compare(L, 1, 2, LUA_OPLT));
    return 1;
  }
  lua_settop(L, 2);
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_insert(L, 1);
  lua_call(L, 2, 1);
  return 1;
}

/*
 * table.sort(list [, comp]): Lua's own sort (upvalue 2), with every
 * comparison going through sort_compare.  The sort's element accesses
 * happen between comparisons, a bounded number per comparison, so
 * counting comparisons bounds the whole sort.
 */
static int tab_sort(lua_State *L) {
  int comp;
  lua_settop(L, 2);
  comp = lua_type(L, 2); /* nil when absent */
  check_tab(L, 1, TAB_R | TAB_W | TAB_L);
  /* The checks the stock sort makes, where they can be made without
   * calling a __len twice, so that their messages name 'sort'. */
  if (luaL_getmetafield(L, 1, "__len") == LUA_TNIL) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
    if (n <= 1) return 0;
    luaL_argcheck(L, n < INT_MAX, 1, "array too big");
    if (comp != LUA_TNIL) luaL_checktype(L, 2, LUA_TFUNCTION);
  } else {
    lua_pop(L, 1); /* __len */
  }
  lua_pushvalue(L, lua_upvalueindex(2)); /* t comp sort */
  lua_pushvalue(L, 1);                   /* t comp sort t */
  if (comp == LUA_TNIL || comp == LUA_TFUNCTION) {
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 2);
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, sort_compare, 3); /* t comp sort t compare */
  } else {
    lua_pushvalue(L, 2); /* the stock sort refuses it as it would */
  }
  lua_call(L, 2, 0);
  return 0;
}

/* ------------------------------------------------------------------ */
/* load                                                                 */
/* ------------------------------------------------------------------ */

/* Bytes handed to the parser at once: it parses them in a few hundred
 * microseconds at most, so a check between pieces keeps loading a large
 * chunk within the deadline. */
#define LOAD_PIECE 65536

/* The stack slot where a reader function's last piece stays alive. */
#define LOAD_SLOT 5

typedef struct load_reader {
  stepper st;
  const char *piece; /* what is left of the current string */
  size_t left;
  bool from_function; /* argument 1 is a reader function */
} load_reader;

static const char *bounded_reader(lua_State *L, void *ud, size_t *size) {
  load_reader *r = (load_reader *)ud;
  size_t n;
  charge(&r->st, CHECK_EVERY); /* a check before every piece */
  if (r->left == 0 && r->from_function) {
    luaL_checkstack(L, 2, "too many nested functions");
    lua_pushvalue(L, 1);
    lua_call(L, 0, 1);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      *size = 0;
      return NULL;
    }
    if (!lua_isstring(L, -1)) luaL_error(L, "reader function must return a string");
    lua_replace(L, LOAD_SLOT);
    r->piece = lua_tolstring(L, LOAD_SLOT, &r->left);
  }
  if (r->left == 0) {
    *size = 0;
    return NULL;
  }
  n = r->left < LOAD_PIECE ? r->left : LOAD_PIECE;
  r->piece += n;
  r->left -= n;
  *size = n;
  return r->piece - n;
}

/* load(chunk [, chunkname [, mode [, env]]]) -> function | fail, message
 * Text chunks only, whatever mode says: binary chunks can crash the VM. */
static int base_load(lua_State *L) {
  load_reader r;
  size_t len;
  const char *s = lua_tolstring(L, 1, &len), *name;
  int env = !lua_isnone(L, 4) ? 4 : 0, status;
  luaL_optstring(L, 3, "bt"); /* checked as load checks it, then ignored */
  stepper_init(&r.st, L);
  if (s != NULL) {
    name = luaL_optstring(L, 2, s);
    r.piece = s;
    r.left = len;
    r.from_function = false;
  } else {
    name = luaL_optstring(L, 2, "=(load)");
    luaL_checktype(L, 1, LUA_TFUNCTION);
    r.piece = NULL;
    r.left = 0;
    r.from_function = true;
  }
  lua_settop(L, LOAD_SLOT);
  status = lua_load(L, bounded_reader, &r, name, "t");
  if (status != LUA_OK) {
    luaL_pushfail(L);
    lua_insert(L, -2);
    return 2;
  }
  if (env != 0) {
    lua_pushvalue(L, env);
    if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1); /* the chunk's _ENV */
  }
  return 1;
}

/* ------------------------------------------------------------------ */
/* xpcall                                                               */
/* ------------------------------------------------------------------ */

/*
 * The message handler xpcall installs: upvalues bounds and the script's
 * handler.  Once the budget is spent it returns the error as it is.  The
 * budget error is raised from inside the count hook, where hooks are off,
 * so the script's handler would run there with nothing to stop it.
 */
static int xpcall_handler(lua_State *L) {
  if (bounds_of(L)->spent(L)) return 1;
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

/* What xpcall returns once f has returned or raised (also after a yield). */
static int xpcall_done(lua_State *L, int status, lua_KContext base) {
  if (status != LUA_OK && status != LUA_YIELD) {
    lua_pushboolean(L, 0);
    lua_pushvalue(L, -2); /* the handler's result */
    return 2;
  }
  return lua_gettop(L) - (int)base; /* true and f's results */
}

/* xpcall(f, msgh, ...) -> true, results... | false, msgh(error) */
static int base_xpcall(lua_State *L) {
  int n = lua_gettop(L), status;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 2);
  lua_pushcclosure(L, xpcall_handler, 2);
  lua_replace(L, 2);     /* f handler args... */
  lua_pushboolean(L, 1); /* f handler args... true */
  lua_pushvalue(L, 1);   /* f handler args... true f */
  lua_rotate(L, 3, 2);   /* f handler true f args... */
  status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, xpcall_done);
  return xpcall_done(L, status, 2);
}

/* ------------------------------------------------------------------ */
/* Installing                                                           */
/* ------------------------------------------------------------------ */

/* Sets lib[name] = a closure of fn over the bounds (and `extra` values
 * from the top of the stack, which it pops). */
static void replace(lua_State *L, const char *lib, const char *name, lua_CFunction fn,
                    const cl__bounds *bounds, int extra) {
  lua_pushlightuserdata(L, (void *)bounds);
  if (extra) lua_insert(L, -1 - extra); /* bounds first, then the extras */
  lua_pushcclosure(L, fn, 1 + extra);
  if (lib) {
    lua_getglobal(L, lib); /* fn lib */
    lua_insert(L, -2);     /* lib fn */
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
  } else {
    lua_setglobal(L, name);
  }
}

void cl__bounded_open(lua_State *L, const cl__bounds *bounds) {
  static const struct {
    const char *lib, *name;
    lua_CFunction fn;
  } fns[] = {
      {LUA_STRLIBNAME, "find", str_find},     {LUA_STRLIBNAME, "match", str_match},
      {LUA_STRLIBNAME, "gmatch", str_gmatch}, {LUA_STRLIBNAME, "gsub", str_gsub},
      {LUA_STRLIBNAME, "rep", str_rep},       {LUA_TABLIBNAME, "insert", tab_insert},
      {LUA_TABLIBNAME, "remove", tab_remove}, {LUA_TABLIBNAME, "move", tab_move},
      {LUA_TABLIBNAME, "concat", tab_concat}, {NULL, "load", base_load},
      {NULL, "xpcall", base_xpcall},
  };
  size_t i;
  for (i = 0; i < sizeof fns / sizeof fns[0]; i++)
    replace(L, fns[i].lib, fns[i].name, fns[i].fn, bounds, 0);
  /* The stock sort stays, as an upvalue no script can reach. */
  lua_getglobal(L, LUA_TABLIBNAME);
  lua_getfield(L, -1, "sort");
  lua_remove(L, -2);
  replace(L, LUA_TABLIBNAME, "sort", tab_sort, bounds, 1);
}
