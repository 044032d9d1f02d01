/*
 * sqlguard.h - what a hook's statement may be (sqlguard.c).
 *
 * A hook runs SQL inside the operation's transaction (tx:exec) or in a
 * read-only one of its own (list_events).  It may read and write rows, and
 * nothing else: no transaction control, no session settings, no prepared
 * statements, no LISTEN, no DDL.  This unit decides that from the
 * statement's first keyword, after comments and parentheses; what a
 * permitted statement can still do to the session (set_config() in a
 * SELECT, a temporary table from SELECT INTO, an advisory lock) is caught
 * after the hook by the session check of hooks.c.  Uses nothing.
 */
#ifndef CL_SQLGUARD_H
#define CL_SQLGUARD_H

#include <stdbool.h>
#include <stddef.h>

/*
 * True when `sql` starts (after blanks, -- and nested slash-star comments,
 * and opening parentheses) with SELECT, INSERT, UPDATE, DELETE, WITH,
 * VALUES or TABLE, case-insensitively.  Otherwise false, with one line in
 * why[why_size] naming the keyword found.
 */
bool cl__sql_hook_allowed(const char *sql, char *why, size_t why_size);

#endif
