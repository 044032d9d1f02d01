#!/bin/sh
# Turns migrations/*.sql into a C table {version, sql} compiled into the
# library.  The version is the file name without ".sql"; order is the order
# of the arguments (the Makefile sorts them).
set -eu
echo '/* Generated from the migrations/ SQL files by tools/embed-migrations.sh. */'
echo '#include "migrate.h"'
echo 'const cl__migration cl__migrations[] = {'
for f in "$@"; do
  v=$(basename "$f" .sql)
  printf '  {"%s",\n' "$v"
  sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/   "/' -e 's/$/\\n"/' "$f"
  echo '  },'
done
echo '};'
echo "const size_t cl__migrations_count = sizeof cl__migrations / sizeof cl__migrations[0];"
