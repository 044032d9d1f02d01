#!/usr/bin/env bash
# The throwaway PostgreSQL 15 cluster of `make bench`: tests/pg.sh's, but
# durable (fsync, full_page_writes and synchronous_commit keep the server
# defaults, on), so every commit waits for its WAL flush as in production.
#
#   bench/pg.sh run CMD [ARGS..]  starts one, runs CMD with PGHOST, PGPORT,
#                                 PGUSER and CAIRNLOOP_PG_URL_BASE set, stops
#                                 it whatever CMD does; exits with CMD's status
#   eval "$(bench/pg.sh start)"   starts one and prints those exports
#   bench/pg.sh stop [DIR]        stops it and removes its directory
CL_PG_DURABLE=1 exec "$(dirname "$0")/../tests/pg.sh" "$@"
