#!/bin/sh
# Compiles SQL files into the library as C strings, so an installed engine
# needs no data files.
#
#   embed-sql.sh migrations FILE...  migrations/*.sql as the table
#       cl__migrations[] of {version, sql} (migrate.h).  The version is the
#       file name without ".sql"; order is the order of the arguments (the
#       Makefile sorts them).  The text is kept byte for byte.
#   embed-sql.sh statements FILE...  src/sql/*.sql as one
#       `const char cl__sql_<name>[]` per file, the texts of the statement
#       table (stmt.h).  Whole-line comments and blank lines are left out:
#       they are for readers of the file, not for the server, which gets
#       the text once per connection.
set -eu

# One C string literal per line.  '?' is escaped so that no "??x" in the
# SQL can form a trigraph (-std=c11 has them).
quote() {
  sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/?/\\?/g' -e 's/^/   "/' -e 's/$/\\n"/' "$@"
}

mode=${1:-}
[ $# -gt 0 ] && shift
case $mode in
migrations)
  echo '/* Generated from the migrations/ SQL files by tools/embed-sql.sh. */'
  echo '#include "migrate.h"'
  echo 'const cl__migration cl__migrations[] = {'
  for f in "$@"; do
    v=$(basename "$f" .sql)
    printf '  {"%s",\n' "$v"
    quote "$f"
    echo '  },'
  done
  echo '};'
  echo "const size_t cl__migrations_count = sizeof cl__migrations / sizeof cl__migrations[0];"
  ;;
statements)
  echo '/* Generated from the src/sql/ files by tools/embed-sql.sh. */'
  echo '#include "stmt.h"'
  for f in "$@"; do
    n=$(basename "$f" .sql)
    case $n in
    '' | [!a-z_]* | *[!a-z0-9_]*)
      echo "embed-sql.sh: $f: the name must be [a-z_][a-z0-9_]* (it names cl__sql_<name>)" >&2
      exit 1
      ;;
    esac
    body=$(grep -v -e '^[[:space:]]*--' -e '^[[:space:]]*$' "$f" || true)
    if [ -z "$body" ]; then
      echo "embed-sql.sh: $f: no SQL in the file" >&2
      exit 1
    fi
    printf '\nconst char cl__sql_%s[] =\n' "$n"
    printf '%s\n' "$body" | quote | sed '$ s/$/;/'
  done
  ;;
*)
  echo "usage: embed-sql.sh migrations|statements FILE..." >&2
  exit 2
  ;;
esac
