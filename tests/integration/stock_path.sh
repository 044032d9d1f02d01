#!/usr/bin/env bash
# The README's commands on a stock Debian root shell, whose PATH
# (/usr/sbin:/usr/bin:/sbin:/bin) does not hold PostgreSQL's server
# binaries (Debian keeps them in /usr/lib/postgresql/N/bin).
# Regression: `cairnloop db start` ran initdb by a bare argv[0], and initdb
# then failed with 'program "postgres" is needed by initdb but was not
# found'; run from a subdirectory, the command created a second cluster
# there instead of finding the project's .cairnloop.
# Covers: `make demo` end to end with that PATH, `db start` saying which
# binaries it used, and a subdirectory finding the project's cluster.
set -u
. "$(dirname "$0")/cli_lib.bash"

unset CAIRNLOOP_DATABASE_URL PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGSERVICE
stock=/usr/sbin:/usr/bin:/sbin:/bin
root=$CLI_TEST_ROOT

# A project directory that is the checkout in all but its .cairnloop: the
# demo runs from it as from the checkout, against a cluster of its own.
proj=$cl_tmp/project
mkdir -p "$proj"
for f in "$root"/* "$root"/.ci; do
  [ -e "$f" ] && ln -s "$f" "$proj/$(basename "$f")"
done
on_exit() {
  (cd "$proj" && PATH=$stock "$root/build/cairnloop" db stop >/dev/null 2>&1)
}

cd "$proj" || exit 1
out=$(PATH=$stock make --no-print-directory demo 2>&1)
rc=$?
is "$rc" 0 "make demo passes with PATH=$stock"
like "$out" "creating the embedded PostgreSQL cluster in $proj/.cairnloop.*"$'\n'"server: /[^ ]+/bin \(from [^)]+\)" \
  "the first start says where the cluster is and which server binaries it used"
like "$out" "108 recipients|delivered" "the demo campaign ran and delivered"
[ -d "$proj/.cairnloop/data" ]
tap $? "the demo's cluster lives under the project's .cairnloop"

mkdir -p "$proj/sub/deeper"
cd "$proj/sub/deeper" || exit 1
rc=0
out=$(PATH=$stock "$root/build/cairnloop" db status 2>&1) || rc=$?
is "$rc" 0 "db status from a subdirectory finds the running cluster"
like "$out" "data:   $proj/.cairnloop/data" "and names the project's cluster"
like "$out" "server: /[^ ]+ \(from (pg_config --bindir|the newest /usr/lib/postgresql/\*/bin|PATH)\)" \
  "and the server binaries it uses"
[ ! -e "$proj/sub/deeper/.cairnloop" ] && [ ! -e "$proj/sub/.cairnloop" ]
tap $? "no second cluster is created in the subdirectory"
