#!/usr/bin/env bash
# The embedded default database: with no --database, no
# CAIRNLOOP_DATABASE_URL and no PG* variable, `cairnloop` runs a private
# PostgreSQL under ./.cairnloop.  Covers db start/status/url/stop, the
# on-demand start by an engine command, the precedence of the PG*
# variables, and (as root) the private directory used when the postgres
# user cannot reach the working directory.
set -u
. "$(dirname "$0")/cli_lib.bash"

unset CAIRNLOOP_DATABASE_URL PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGSERVICE

clusters=()
on_exit() {
  local d target
  for d in "${clusters[@]}"; do
    (cd "$d" && cairnloop db stop >/dev/null 2>&1)
    if [ -L "$d/.cairnloop" ]; then
      target=$(readlink "$d/.cairnloop")
      case $target in /var/tmp/cairnloop-*) rm -rf -- "$target" ;; esac
    fi
  done
}

work=$cl_tmp/checkout
mkdir -p "$work"
clusters+=("$work")
cd "$work" || exit 1

cl db status
exits 1 "db status before the first start: exit 1"
like "$out" "^not running" "db status says not running"
cl db url
exits 0 "db url works before the first start"
is "$out" "postgresql:///cairnloop?host=$work/.cairnloop/run&port=5432&user=postgres" \
  "db url names the socket under ./.cairnloop"
[ ! -e .cairnloop ]
tap $? "status and url create nothing"

cl db start
exits 0 "db start creates and starts the cluster"
like "$out" "^started \(pid [0-9]+\)" "db start says started"
like "$err" "creating the embedded PostgreSQL cluster" "the first start says it creates the cluster"
[ -d .cairnloop/data ] && [ -d .cairnloop/run ]
tap $? "the data and socket directories are under ./.cairnloop"
grep -q "^listen_addresses = ''" .cairnloop/data/cairnloop.conf
tap $? "the server listens on no TCP address"
cl db start
exits 0 "db start again"
like "$out" "^already running" "a second start is a no-op"
cl db status
exits 0 "db status while running: exit 0"
like "$out" "^running \(pid [0-9]+\)"$'\n'"data:   $work/.cairnloop/data" \
  "db status says running and where the data lives"
cl db status --json
is "$(jget 'r.running and r.socket_dir')" "$work/.cairnloop/run" "db status --json"

url=$(cairnloop db url)
is "$(psql "$url" -X -qAt -c 'SELECT current_database()')" "cairnloop" \
  "psql connects with the db url to the cairnloop database"

# Engine commands use the embedded cluster when nothing else is configured.
cl migrate
exits 0 "migrate on the embedded default"
is "$(psql "$url" -X -qAt -c "SELECT count(*) > 0 FROM pg_tables WHERE schemaname = 'cairnloop'")" \
  "t" "the tables are in the embedded database"
psql "$url" -X -q -c "INSERT INTO cairnloop.cairnloop_conversations (id) VALUES (1), (2)" >/dev/null
cl bulk --template t --body b --ids 1,2
exits 0 "bulk on the embedded default"
cl envelopes --json
is "$(jlines)" "1" "the envelope is there"

# Any PG* variable means "that server", never the embedded one.
PGHOST=/nonexistent/cairnloop-socket-dir cl envelopes
exits 6 "PGHOST set: the embedded cluster is not used"
PGDATABASE=nope PGHOST="$work/.cairnloop/run" PGUSER=postgres cl envelopes
exits 6 "PGDATABASE set: the embedded cluster is not used"

cl db stop
exits 0 "db stop"
is "$out" "stopped" "db stop says stopped"
cl db stop
exits 0 "db stop when stopped"
is "$out" "not running" "a second stop is a no-op"
cl db status
exits 1 "db status when stopped: exit 1"

# Started on demand, with the data kept.
cl envelopes --json
exits 0 "an engine command starts the stopped cluster"
like "$err" "started the embedded PostgreSQL" "and says so on stderr"
is "$(jlines)" "1" "the data survived the restart"
cl db status
exits 0 "running again"

# A checkout the postgres user cannot reach (a 0700 home): the cluster goes
# to a private directory, linked from ./.cairnloop.
if [ "$(id -u)" -eq 0 ]; then
  home=$cl_tmp/home
  mkdir -p "$home/project"
  chmod 700 "$home"
  clusters+=("$home/project")
  cd "$home/project" || exit 1
  cl db start
  exits 0 "db start in a directory the postgres user cannot reach"
  like "$err" "cannot be reached by the postgres user, so the embedded cluster lives in /var/tmp/cairnloop-" \
    "says where the cluster went, in one line"
  [ -L .cairnloop ] && [[ $(readlink .cairnloop) == /var/tmp/cairnloop-* ]]
  tap $? "./.cairnloop links to the private directory"
  cl db url
  like "$out" "host=/var/tmp/cairnloop-[0-9]+-[0-9a-f]{16}/run&" "db url names the private socket"
  cl migrate
  exits 0 "migrate through the linked cluster"
  cl db stop
  exits 0 "db stop through the link"
else
  tap 0 "# SKIP the private-directory case needs root"
fi
