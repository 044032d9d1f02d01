#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for `make bench`, reachable only through
# a Unix socket in its own temporary directory.  The same approach as
# tests/pg.sh, but durable: fsync, full_page_writes and synchronous_commit
# keep the server defaults (on), so every commit waits for its WAL flush as
# it does in production.  Everything else is the server default too.
#
#   bench/pg.sh run CMD [ARGS..]  starts one, runs CMD with PGHOST, PGPORT,
#                                 PGUSER and CAIRNLOOP_PG_URL_BASE set, stops
#                                 it whatever CMD does; exits with CMD's status
#   eval "$(bench/pg.sh start)"   starts one and prints those exports (plus
#                                 CL_BENCH_PG_DIR) for manual runs
#   bench/pg.sh stop [DIR]        stops it and removes its directory
#
# No TCP listener: 5432 is only part of the socket's file name.  As root the
# server runs as `postgres` (PostgreSQL refuses root).
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_PORT=5432
# Marks a directory as ours so `stop` never removes anything else.
MARKER=.cairnloop-bench-cluster

die() { echo "bench/pg.sh: $*" >&2; exit 1; }

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
  dir=$(mktemp -d /tmp/cairnloop-bench-pg.XXXXXXXX) || die "mktemp failed"
  trap 'stop_dir "$dir" >/dev/null 2>&1 || true' EXIT
  chmod 755 "$dir"
  : >"$dir/$MARKER"
  mkdir "$dir/sock"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres:postgres "$dir"
  fi
  # --no-sync only skips initdb's own final flush of the template files;
  # the running server below is fully durable.
  if ! as_pg "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres --no-sync \
      -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2
    die "initdb failed"
  fi
  cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$dir/sock'
port = $PG_PORT
log_min_messages = warning
EOF
  if ! as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
      start >"$dir/pg_ctl.log" 2>&1; then
    cat "$dir/pg_ctl.log" "$dir/server.log" >&2 2>/dev/null || true
    die "pg_ctl start failed"
  fi
  trap - EXIT
  cat <<EOF
export CL_BENCH_PG_DIR='$dir'
export PGHOST='$dir/sock'
export PGPORT='$PG_PORT'
export PGUSER='postgres'
export CAIRNLOOP_PG_URL_BASE='postgresql:///?host=$dir/sock&port=$PG_PORT&user=postgres'
EOF
}

stop_dir() {
  local dir=$1
  [ -n "$dir" ] || die "stop: no cluster directory (set CL_BENCH_PG_DIR or pass DIR)"
  [ -f "$dir/$MARKER" ] || die "stop: $dir is not a bench cluster directory"
  if [ -f "$dir/data/postmaster.pid" ]; then
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
    stop_dir "${2:-${CL_BENCH_PG_DIR:-}}"
    ;;
  run)
    shift
    [ $# -gt 0 ] || die "run: no command"
    env_lines=$(start)
    eval "$env_lines"
    trap 'stop_dir "$CL_BENCH_PG_DIR"' EXIT
    trap 'exit 130' INT TERM
    status=0
    "$@" || status=$?
    exit "$status"
    ;;
  *)
    echo "usage: bench/pg.sh start | stop [DIR] | run CMD [ARGS...]" >&2
    exit 2
    ;;
esac
