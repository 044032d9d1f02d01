/*
 * migrate.h - the migrations compiled into the library.
 *
 * The table is generated from the migrations/ SQL files (tools/embed-sql.sh),
 * in file-name order; migrate.c applies it.
 */
#ifndef CL_MIGRATE_H
#define CL_MIGRATE_H

#include <stddef.h>

typedef struct cl__migration {
  const char *version; /* file name without .sql */
  const char *sql;
} cl__migration;

extern const cl__migration cl__migrations[];
extern const size_t cl__migrations_count;

#endif
