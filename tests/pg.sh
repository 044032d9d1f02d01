#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for the test suites (and, with
# CL_PG_DURABLE=1, for the benchmarks), reachable only through a Unix socket
# inside its own temporary directory.
#
#   eval "$(tests/pg.sh start)"   starts one and prints the exports callers
#                                 need: CL_PG_DIR, PGHOST (the socket dir),
#                                 PGPORT, PGUSER, PG_BIN (the server binaries),
#                                 CAIRNLOOP_PG_URL_BASE
#   tests/pg.sh stop [DIR]        stops it (DIR defaults to $CL_PG_DIR) and
#                                 removes the directory
#   tests/pg.sh run CMD [ARGS..]  starts one, runs CMD with the exports set,
#                                 stops it whatever CMD does; exits with CMD's status
#
# No TCP listener is opened, so the port can never collide with another
# server: 5432 is only part of the socket's file name in a private directory.
# As root the cluster runs as the `postgres` user (PostgreSQL refuses root).
set -euo pipefail

# The server binaries as the command finds them (cli/db.c): pg_config's
# bindir, else Debian's newest /usr/lib/postgresql/N/bin.
if [ -z "${PG_BIN:-}" ]; then
  PG_BIN=$(pg_config --bindir 2>/dev/null || true)
  if [ ! -x "$PG_BIN/initdb" ]; then
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  fi
fi
PG_PORT=5432
# Marks a directory as ours so `stop` never removes anything else.
MARKER=.cairnloop-test-cluster

die() { echo "pg.sh: $*" >&2; exit 1; }

# Runs a PostgreSQL server binary as a user it accepts.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start() {
  [ -x "$PG_BIN/initdb" ] || die "no PostgreSQL binaries in $PG_BIN"
  local dir
  dir=$(mktemp -d /tmp/cairnloop-pg.XXXXXXXX) || die "mktemp failed"
  # Until the server is up and reported, any failure removes what we made.
  trap 'stop_dir "$dir" >/dev/null 2>&1 || true' EXIT
  chmod 755 "$dir"
  : >"$dir/$MARKER"
  mkdir "$dir/sock"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres:postgres "$dir"
  fi

  if ! as_pg "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres --no-sync \
      -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2
    die "initdb failed"
  fi
  cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$dir/sock'
port = $PG_PORT
max_connections = 100
log_min_messages = warning
EOF
  # fsync off only: nothing here must survive a crash, and it saves most of
  # the start-up and per-commit time.  synchronous_commit keeps its default
  # so commits behave as they do in production.  CL_PG_DURABLE=1 (the
  # benchmarks) keeps every durability default, so commits wait for their
  # WAL flush as in production.
  if [ "${CL_PG_DURABLE:-0}" != 1 ]; then
    printf 'fsync = off\nfull_page_writes = off\n' >>"$dir/data/postgresql.conf"
  fi
  if ! as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
      start >"$dir/pg_ctl.log" 2>&1; then
    cat "$dir/pg_ctl.log" "$dir/server.log" >&2 2>/dev/null || true
    die "pg_ctl start failed"
  fi
  trap - EXIT
  cat <<EOF
export CL_PG_DIR='$dir'
export PGHOST='$dir/sock'
export PGPORT='$PG_PORT'
export PGUSER='postgres'
export PG_BIN='$PG_BIN'
export CAIRNLOOP_PG_URL_BASE='postgresql:///?host=$dir/sock&port=$PG_PORT&user=postgres'
EOF
}

stop_dir() {
  local dir=$1
  [ -n "$dir" ] || die "stop: no cluster directory (set CL_PG_DIR or pass DIR)"
  [ -f "$dir/$MARKER" ] || die "stop: $dir is not a test cluster directory"
  if [ -f "$dir/data/postmaster.pid" ]; then
    # fast: disconnect clients and stop without waiting for them.
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
      as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w -t 10 stop >/dev/null 2>&1 || true
  fi
  rm -rf -- "$dir"
}

case "${1:-}" in
  start)
    start
    ;;
  stop)
    stop_dir "${2:-${CL_PG_DIR:-}}"
    ;;
  run)
    shift
    [ $# -gt 0 ] || die "run: no command"
    env_lines=$(start)
    eval "$env_lines"
    trap 'stop_dir "$CL_PG_DIR"' EXIT
    trap 'exit 130' INT TERM
    status=0
    "$@" || status=$?
    exit "$status"
    ;;
  *)
    echo "usage: tests/pg.sh start | stop [DIR] | run CMD [ARGS...]" >&2
    exit 2
    ;;
esac
