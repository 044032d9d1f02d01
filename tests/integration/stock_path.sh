#!/usr/bin/env bash
# The README's commands on a stock Debian root shell, whose PATH
# (/usr/sbin:/usr/bin:/sbin:/bin) does not hold PostgreSQL's server
# binaries (Debian keeps them in /usr/lib/postgresql/N/bin).
# Regression: `cairnloop db start` ran initdb by a bare argv[0], and initdb
# then failed with 'program "postgres" is needed by initdb but was not
# found'; run from a subdirectory, the command created a second cluster
# there instead of finding the project's .cairnloop.
# Covers: `make demo` end to end with that PATH (nginx, the demo's webhook
# receiver, is in /usr/sbin: the receiver checks every delivery's
# signature, and a second run delivers nothing twice), `db start` saying
# which binaries it used, and a subdirectory finding the project's cluster.
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
like "$out" $'\n''108 jobs due' "the demo campaign sent 108 messages and left them to the worker"
like "$out" $'\n''108 signed deliveries accepted, 0 rejected, 0 duplicates' \
  "cairnloop work delivered each through the webhook notifier, and the receiver accepted its signature"
like "$out" 'the worker, stopped: sent 108, failed 0' "the worker sent 108 and failed none"
like "$out" 'accepted id=cl-msg-[0-9]+ conversation=[0-9]+ template=recovery_v1 attempt=1' \
  "the receiver logged each delivery with its conversation and template"
like "$out" 'HTTP 401 \{"error":"bad_signature"\}' "a delivery signed with another key is refused"
log=$proj/.cairnloop/receiver/deliveries.log
is "$(grep -c ' accepted id=cl-msg-' "$log")" 108 "the receiver's log holds 108 accepted deliveries"
is "$(sed -n 's/.* accepted id=\([^ ]*\).*/\1/p' "$log" | sort -u | grep -c '')" 108 "one per message"
recv_pid=$(sed -n 's/.*(nginx pid \([0-9]*\)).*/\1/p' <<<"$out")
[ -n "$recv_pid" ] && ! kill -0 "$recv_pid" 2>/dev/null && [ ! -e "$proj/.cairnloop/receiver/nginx.pid" ]
tap $? "the receiver is stopped when the demo ends"
[ -d "$proj/.cairnloop/data" ]
tap $? "the demo's cluster lives under the project's .cairnloop"

out=$(PATH=$stock make --no-print-directory demo 2>&1)
rc=$?
is "$rc" 0 "make demo passes a second time"
like "$out" $'\n''0 signed deliveries accepted, 0 rejected, 0 duplicates' \
  "the second run delivers nothing: every envelope replayed"
like "$out" 'over every run so far: 108 deliveries accepted, for 108 distinct webhook-ids' \
  "and the receiver, which remembers the ids of earlier runs, got each message once"

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
