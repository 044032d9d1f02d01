#!/usr/bin/env bash
# `make demo`: the outbound lane of Cairnloop end to end on the embedded
# default database (a private PostgreSQL under ./.cairnloop, started on
# demand), as the commands a person would type.  The campaign script
# (lua/examples/campaign.lua, with the policy lua/examples/demo_policy.lua)
# seeds demo conversations, shows a bulk send over the cap being refused and
# recorded and sends a campaign to the open conversations in envelopes of
# the cap's size.  Then `cairnloop work` delivers every message through the
# webhook notifier (lua/cairnloop/webhook.lua) to a local receiver
# (examples/receiver/: nginx with the Lua module on 127.0.0.1, under
# ./.cairnloop/receiver) that checks each delivery's signature, and the demo
# shows what the receiver accepted.
# `cairnloop demo` runs the campaign script in one command, delivering to
# an outbox file instead.
#
# Running it again is safe: the campaign's envelope ids derive from its
# fixed key, so every envelope replays and nothing is sent twice; the
# receiver remembers the ids it accepted in earlier runs and would count a
# second delivery of one as a duplicate.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
. tools/proc.bash
CL=${CAIRNLOOP_BIN:-build/cairnloop}
[ -x "$CL" ] || { echo "demo: $CL is not built (run make)" >&2; exit 1; }

# The demo always runs on the embedded cluster, whatever the environment
# points at, and with the default cap of 25.
unset CAIRNLOOP_DATABASE_URL PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGSERVICE \
  CAIRNLOOP_MAX_BATCH_SIZE CAIRNLOOP_HTTP_ALLOW CAIRNLOOP_WEBHOOK_URL CAIRNLOOP_WEBHOOK_SECRET

# Bold and dim only on a terminal that understands them: none when TERM is
# dumb or unset, nor under NO_COLOR (no-color.org), as the campaign script
# decides for its own output.
if [ -t 1 ] && [ -n "${TERM:-}" ] && [ "$TERM" != dumb ] && [ -z "${NO_COLOR:-}" ]; then
  bold=$'\e[1m' dim=$'\e[2m' off=$'\e[0m'
else
  bold= dim= off=
fi
step() {
  printf '\n%s== %s%s\n' "$bold" "$1" "$off"
  [ $# -lt 2 ] || printf '%s   %s%s\n' "$dim" "$2" "$off"
}
die() { printf '\ndemo: %s\n' "$*" >&2; exit 1; }

# A command line as a person would type it.
show() {
  local line="" arg
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:,=@%+-]+$ ]]; then line+=" $arg"; else line+=" '${arg//\'/\'\\\'\'}'"; fi
  done
  printf '%s$%s%s\n' "$dim" "$line" "$off"
}
# Shows a `cairnloop` command, then runs it.
cairnloop() {
  show cairnloop "$@"
  "$CL" "$@"
}

# ---------------------------------------------------------------------------
# The receiver and the worker: stopped at exit, whatever happens.
# ---------------------------------------------------------------------------
RECV_DIR=
recv_pid=
worker_pid=



cleanup() {
  [ -n "$worker_pid" ] && stop_pid "$worker_pid" TERM
  [ -n "$recv_pid" ] && stop_pid "$recv_pid" QUIT
}
trap cleanup EXIT
trap 'exit 130' INT TERM


# Starts examples/receiver on a free loopback port, its prefix (config,
# pid, logs, the delivery log) under ./.cairnloop/receiver; sets RECV_URL.
start_receiver() {
  local port old
  command -v nginx >/dev/null || die "nginx is not installed (make deps installs nginx and libnginx-mod-http-lua)"
  [ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ] ||
    die "nginx's Lua module is not installed (make deps installs libnginx-mod-http-lua)"
  RECV_DIR=$(cd .cairnloop && pwd)/receiver
  mkdir -p "$RECV_DIR" && chmod 755 "$RECV_DIR" || die "cannot create $RECV_DIR"
  # One left running by a run that was killed outright: ours if it runs
  # with this prefix.
  old=$(cat "$RECV_DIR/nginx.pid" 2>/dev/null)
  if [ -n "$old" ] && ps -o args= -p "$old" 2>/dev/null | grep -qF -- "-p $RECV_DIR/"; then
    stop_pid "$old" QUIT
  fi
  # The signing secret, made once and kept: the webhook notifier signs
  # with it and the receiver checks with it.
  if [ ! -s "$RECV_DIR/secret" ]; then
    (umask 077 && printf 'whsec_%s\n' "$(head -c 24 /dev/urandom | base64)" >"$RECV_DIR/secret") ||
      die "cannot write $RECV_DIR/secret"
  fi
  SECRET=$(cat "$RECV_DIR/secret")
  for _ in 1 2 3 4 5; do
    port=$(free_port) || continue
    sed "s/127\.0\.0\.1:8090;/127.0.0.1:$port;/" examples/receiver/nginx.conf >"$RECV_DIR/nginx.conf"
    rm -f "$RECV_DIR/error.log"
    CAIRNLOOP_WEBHOOK_SECRET=$SECRET nginx -p "$RECV_DIR/" -c "$RECV_DIR/nginx.conf" \
      -g 'daemon off;' >"$RECV_DIR/stdout" 2>&1 </dev/null &
    recv_pid=$!
    for _ in $(seq 1 100); do
      alive "$recv_pid" || break
      if curl -s --max-time 2 "http://127.0.0.1:$port/stats" 2>/dev/null | grep -q '"accepted"'; then
        RECV_URL=http://127.0.0.1:$port
        return 0
      fi
      sleep 0.05
    done
    stop_pid "$recv_pid" QUIT
    recv_pid=
    grep -qs 'Address already in use' "$RECV_DIR/error.log" "$RECV_DIR/stdout" || break
  done
  cat "$RECV_DIR/stdout" "$RECV_DIR/error.log" >&2 2>/dev/null
  die "the receiver did not start (nginx, see above)"
}

recv_stats() { curl -s --max-time 5 "$RECV_URL/stats"; }
# A count of the receiver's /stats, or of `cairnloop stats --json`.
field() { sed -n "s/.*\"$1\": *\([0-9]*\).*/\1/p" <<<"$2"; }

# ---------------------------------------------------------------------------
# The demo
# ---------------------------------------------------------------------------
step "Start the embedded PostgreSQL" "Unix socket only, under ./.cairnloop; created on first use."
cairnloop db start || die "the embedded database did not start"

step "Start the webhook receiver" \
  "nginx with the Lua module on 127.0.0.1, under ./.cairnloop/receiver (examples/receiver): it checks each delivery's Standard Webhooks signature and logs what it accepts."
start_receiver
printf 'receiving on %s/webhooks (nginx pid %s)\n' "$RECV_URL" "$recv_pid"
printf 'signing secret: .cairnloop/receiver/secret; delivery log: .cairnloop/receiver/deliveries.log\n'
log_lines=$(grep -c '' "$RECV_DIR/deliveries.log" 2>/dev/null)

step "Run the demo campaign" \
  "A Lua script with an open engine and the demo policy (auditor, actor resolver): it migrates, seeds, sends and reports; the deliveries are left to a worker."
cairnloop run --policy lua/examples/demo_policy.lua lua/examples/campaign.lua --no-deliver ||
  die "the demo campaign failed"

step "Deliver through the webhook notifier" \
  "cairnloop work signs each message with the secret and POSTs it to the receiver, 10 in flight; it runs until nothing is left to deliver, then is stopped."
printf '%s$ CAIRNLOOP_WEBHOOK_URL=%s CAIRNLOOP_WEBHOOK_SECRET="$(cat .cairnloop/receiver/secret)" \\\n' \
  "$dim" "$RECV_URL/webhooks"
printf '    cairnloop work --concurrency 10 --policy lua/cairnloop/webhook.lua --http-allow %s/ &%s\n' \
  "$RECV_URL" "$off"
st=$("$CL" stats --json 2>/dev/null) || die "cairnloop stats failed"
# Jobs left to retry or discarded by earlier runs do not count against this one.
retryable0=$(field retryable "$st") discarded0=$(field discarded "$st")
t0=${EPOCHREALTIME/./}
CAIRNLOOP_WEBHOOK_URL=$RECV_URL/webhooks CAIRNLOOP_WEBHOOK_SECRET=$SECRET \
  "$CL" work --concurrency 10 --policy lua/cairnloop/webhook.lua --http-allow "$RECV_URL/" \
  >"$RECV_DIR/worker.log" 2>&1 </dev/null &
worker_pid=$!
# Done when no job is due or executing; a failed delivery (one more job to
# retry or discarded) ends the demo with the worker's log.
pending=
for _ in $(seq 1 400); do
  alive "$worker_pid" || { cat "$RECV_DIR/worker.log" >&2; die "the worker exited"; }
  st=$("$CL" stats --json 2>/dev/null)
  if [ "$(field retryable "$st")" -gt "$retryable0" ] || [ "$(field discarded "$st")" -gt "$discarded0" ]; then
    tail -n 20 "$RECV_DIR/worker.log" >&2
    tail -n 3 "$RECV_DIR/deliveries.log" | sed 's/^/receiver: /' >&2
    die "a delivery failed (above: the worker's log, .cairnloop/receiver/worker.log, and the receiver's)"
  fi
  pending=$(($(field available "$st") + $(field executing "$st")))
  [ "$pending" = 0 ] && break
  sleep 0.05
done
[ "$pending" = 0 ] || { tail -n 20 "$RECV_DIR/worker.log" >&2; die "deliveries still pending after 20 s"; }
t1=${EPOCHREALTIME/./}
stop_pid "$worker_pid" TERM
worker_pid=
# Its last line: what it did, printed when it stops.
printf 'the worker, stopped: %s\n' "$(tail -n 1 "$RECV_DIR/worker.log")"
cairnloop stats

step "What the receiver got" "Counted by the receiver itself; every line of its log is one POST it checked."
st=$(recv_stats)
accepted=$(field accepted "$st") rejected=$(field rejected "$st") duplicates=$(field duplicates "$st")
printf '%d signed deliveries accepted, %d rejected, %d duplicates (in %s s)\n' "$accepted" \
  "$rejected" "$duplicates" "$(awk -v us=$((t1 - t0)) 'BEGIN { printf "%.1f", us / 1e6 }')"
if [ "$accepted" -gt 0 ]; then
  printf 'the first lines of .cairnloop/receiver/deliveries.log from this run:\n'
  tail -n +$((log_lines + 1)) "$RECV_DIR/deliveries.log" | head -n 3 | sed 's/^/  /'
else
  printf 'nothing new to deliver: every envelope replayed, so no message was due\n'
fi
all=$(grep -c ' accepted id=' "$RECV_DIR/deliveries.log" 2>/dev/null)
ids=$(sed -n 's/.* accepted id=\([^ ]*\).*/\1/p' "$RECV_DIR/deliveries.log" | sort -u | grep -c '')
printf 'over every run so far: %d deliveries accepted, for %d distinct webhook-ids\n' "$all" "$ids"

step "A forged delivery is refused" \
  "The same kind of POST, signed with another key: the receiver answers 401 and processes nothing."
ts=$(date +%s)
body='{"type":"message.outbound","data":{"message_id":1,"conversation_id":1,"content":"forged"}}'
forged="v1,$(head -c 32 /dev/urandom | base64)"
show curl -X POST "$RECV_URL/webhooks" -H "webhook-id: forged-$ts" -H "webhook-timestamp: $ts" \
  -H "webhook-signature: v1,..." --data-binary "$body"
answer=$(curl -s --max-time 5 -w 'HTTP %{http_code}' -o "$RECV_DIR/forged.out" -X POST \
  "$RECV_URL/webhooks" -H "webhook-id: forged-$ts" -H "webhook-timestamp: $ts" \
  -H "webhook-signature: $forged" --data-binary "$body")
printf '%s %s\n' "$answer" "$(cat "$RECV_DIR/forged.out")"
tail -n 1 "$RECV_DIR/deliveries.log" | sed 's/^/  log: /'

step "The envelope listing" \
  "Both lanes from one table, newest first: submitted envelopes and the refused attempt."
cairnloop envelopes --template recovery_v1 --limit 10 || die "cannot list the envelopes"

printf '\n%sDone.%s Run it again: nothing is sent twice, every envelope replays (and the\n' "$bold" "$off"
printf 'receiver, which remembers the ids it accepted, would count any repeat as a duplicate).\n'
printf '\nThe database keeps running (the receiver has stopped):\n'
printf '  %-34s %s\n' "$CL demo" "the campaign in one command (delivering to an outbox file)" \
  "psql \"\$($CL db url)\"" "to look at the tables (schema cairnloop)" \
  "$CL db stop" "to stop it"
