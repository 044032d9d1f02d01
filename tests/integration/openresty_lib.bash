# Helpers of tests/integration/openresty.sh (sourced, not run: its name keeps
# it out of the *.sh suites).  TAP: one "ok N - ..." / "not ok N - ..." per
# check and the plan "1..N" at exit.
#
#   pass DESC | fail DESC [DIAG...]   record a check
#   is GOT WANT DESC, like GOT REGEX DESC
#   bail DESC | skip_all REASON      stop the suite (a failure / a skip)
#   sql SQL                          psql on the test database, unaligned
#   req METHOD PATH [JSON] [BASE]    an HTTP request to BASE (default $A):
#                                    sets $code, $body, $headers
#   j LUA_EXPRS                      Lua expressions over the last $body
#                                    decoded as `r` (null: "null"), joined by spaces
#   hdr NAME                         a header of the last response
#   wait_for CMD WANT                re-runs CMD (up to ~4 s) until it prints
#                                    WANT; the last output is in $waited
#   start_nginx NAME GLOBALS [VAR=VALUE...]
#                                    runs examples/openresty/nginx.conf under
#                                    $W/NAME on a free loopback port, with
#                                    -g "daemon off; GLOBALS" and the VARs in
#                                    its environment; sets NAME_pid, NAME_url,
#                                    NAME_dir
#   stop_nginx PID                   kill -QUIT, then TERM/KILL if it hangs
#   alive PID                        the process runs (a zombie does not)
#
# Every nginx started here is stopped at exit, whatever happens; a watchdog
# process stops it even if this shell is killed outright.

# alive, free_port (and stop_pid).
. "$(dirname "${BASH_SOURCE[0]}")/../../tools/proc.bash"
# Lua, in nginx and in the helpers, searches this checkout only.
. "$(dirname "${BASH_SOURCE[0]}")/lua_env.bash"
cl_lua_env "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

tap_n=0
tap_failed=0
tap_plan=
nginx_pids=()
watchdog_pids=()

W=$(mktemp -d /tmp/cairnloop-openresty.XXXXXXXX) || { echo "Bail out! mktemp failed"; exit 1; }
chmod 755 "$W"

tap_finish() {
  local p
  if [ -n "$tap_signal" ]; then fail "interrupted by SIG$tap_signal"; fi
  for p in "${nginx_pids[@]}"; do stop_nginx "$p"; done
  for p in "${watchdog_pids[@]}"; do kill "$p" 2>/dev/null; done
  rm -rf -- "$W"
  echo "${tap_plan:-1..$tap_n}"
  exit $((tap_failed > 0))
}
tap_signal=
trap tap_finish EXIT
# Without these a TERM (tools/check.sh's timeout) or INT would skip the
# EXIT trap and leave nginx running; the run then counts as failed.
trap 'tap_signal=TERM; exit 143' TERM
trap 'tap_signal=INT; exit 130' INT

pass() {
  tap_n=$((tap_n + 1))
  echo "ok $tap_n - $1"
}

fail() {
  local desc=$1 line
  shift
  tap_n=$((tap_n + 1))
  tap_failed=$((tap_failed + 1))
  echo "not ok $tap_n - $desc"
  for line in "$@"; do printf '%s\n' "$line" | sed 's/^/#   /'; done
}

is() {
  if [ "$1" = "$2" ]; then pass "$3"
  else fail "$3" "got:  $1" "want: $2" "last response: ${code:-} ${body:-}"; fi
}

like() {
  if [[ $1 =~ $2 ]]; then pass "$3"
  else fail "$3" "got:  $1" "want: /$2/" "last response: ${code:-} ${body:-}"; fi
}

bail() {
  fail "$1"
  local d
  for d in "$W"/*/; do
    [ -f "$d/error.log" ] && sed 's/^/#   /' "$d/error.log" | tail -n 20
  done
  exit 1
}

skip_all() {
  tap_plan="1..0 # SKIP $1"
  exit 0
}

# The server's own psql, not Debian's wrapper script: a third of the time.
PSQL=psql
[ -x "${PG_BIN:-/usr/lib/postgresql/15/bin}/psql" ] && PSQL=${PG_BIN:-/usr/lib/postgresql/15/bin}/psql

sql() {
  "$PSQL" ${CAIRNLOOP_DATABASE_URL:+"$CAIRNLOOP_DATABASE_URL"} -X -qAt -v ON_ERROR_STOP=1 -c "$1"
}

req() {
  local method=$1 path=$2 data=${3-} base=${4:-$A}
  local args=(-s -S --max-time 10 -o "$W/body" -D "$W/headers" -w '%{http_code}' -X "$method")
  [ -n "$data" ] && args+=(-H 'Content-Type: application/json' --data-binary "$data")
  [ -z "$data" ] && [ "$method" = POST ] && args+=(-H 'Content-Type: application/json' --data-binary '')
  : >"$W/body"
  : >"$W/headers"
  code=$(curl "${args[@]}" "$base$path" 2>"$W/curl.err") || code="curl: $(cat "$W/curl.err")"
  body=$(cat "$W/body")
  headers=$(tr -d '\r' <"$W/headers")
}

# dkjson on Lua 5.4 keeps integers exact (jq 1.6 and lua-cjson would not).
j() {
  J_EXPR=$1 lua5.4 -e '
    local json = require "dkjson"
    local r, _, err = json.decode(io.read("a"), 1, json.null)
    if err then io.write("(not JSON: ", err, ")") return end
    local f = assert(load("local r = ...; return " .. os.getenv("J_EXPR")))
    local out = table.pack(f(r))
    for i = 1, out.n do
      if out[i] == nil or out[i] == json.null then out[i] = "null" else out[i] = tostring(out[i]) end
    end
    io.write(table.concat(out, " "))' <<<"$body" 2>&1
}

hdr() { sed -n "s/^$1: //Ip" <<<"$headers" | head -n 1; }

wait_for() {
  local i
  for i in $(seq 1 80); do
    waited=$(eval "$1" 2>&1)
    [ "$waited" = "$2" ] && return 0
    sleep 0.05
  done
  return 1
}


# Stops PID with TERM (a fast shutdown that takes the workers along) after
# 60 s, should this shell die without running its EXIT trap (SIGKILL), and
# then removes $W if this shell is gone.  A bash subshell waiting in
# `read -t` on a FIFO: one process, no sleep(1) child left to reap.
watchdog() {
  local pid=$1 fifo="$W/watchdog.$1"
  mkfifo "$fifo" || return 0
  (
    exec 3<>"$fifo"
    read -r -t 60 -u 3
    kill -TERM "$pid" 2>/dev/null || exit 0
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      read -r -t 0.1 -u 3
    done
    kill -0 $$ 2>/dev/null || rm -rf -- "$W"
  ) &
  watchdog_pids+=($!)
}

start_nginx() {
  local name=$1 globals=$2 dir="$W/$1" attempt port pid c
  shift 2
  mkdir -p "$dir"
  for attempt in 1 2 3 4 5; do
    port=$(free_port) || continue
    sed "s/listen 127\.0\.0\.1:8080;/listen 127.0.0.1:$port;/" examples/openresty/nginx.conf >"$dir/nginx.conf"
    grep -q "listen 127.0.0.1:$port;" "$dir/nginx.conf" || return 1
    rm -f "$dir/error.log" "$dir/nginx.pid"
    env "$@" nginx -p "$dir/" -c "$dir/nginx.conf" -g "daemon off; $globals" >"$dir/stdout" 2>&1 &
    pid=$!
    nginx_pids+=("$pid")
    watchdog "$pid"
    # Ready when /healthz answers with our JSON (200, or 503 without a
    # database); a stranger on the port would answer something else.
    for c in $(seq 1 100); do
      alive "$pid" || break
      if curl -s --max-time 2 "http://127.0.0.1:$port/healthz" 2>/dev/null |
          grep -qE '^\{"(status|error)"'; then
        printf -v "${name}_pid" '%s' "$pid"
        printf -v "${name}_url" '%s' "http://127.0.0.1:$port"
        printf -v "${name}_dir" '%s' "$dir"
        return 0
      fi
      sleep 0.05
    done
    stop_nginx "$pid"
    if ! grep -qs 'Address already in use' "$dir/error.log" "$dir/stdout"; then
      sed 's/^/#   /' "$dir/stdout" "$dir/error.log" 2>/dev/null | tail -n 20
      return 1
    fi
  done
  return 1
}


stop_nginx() {
  local pid=$1 i sig workers
  alive "$pid" || { wait "$pid" 2>/dev/null; return 0; }
  workers=$(ps -o pid= --ppid "$pid" 2>/dev/null)
  for sig in QUIT TERM KILL; do
    kill -"$sig" "$pid" 2>/dev/null
    for i in $(seq 1 100); do
      alive "$pid" || break
      sleep 0.05
    done
    alive "$pid" || break
  done
  wait "$pid" 2>/dev/null
  # Workers of a master that had to be killed would be orphaned.
  for i in $workers; do kill -KILL "$i" 2>/dev/null; done
  return 0
}
