#!/usr/bin/env bash
# The README's quick starts (the command line, Lua, the C API), run exactly
# as the README shows them.  Regression: the Lua and C quick starts opened
# "postgresql:///app", a database the embedded default does not have (its
# one database is `cairnloop`), the C one was a fragment that did not
# compile, and the command-line one ran `cairnloop work`, which never ends.
#
# Each block to run is marked in README.md by the line before its fence:
#   <!-- quickstart: NAME -->          a shell block, run with bash
#   <!-- quickstart: NAME > FILE -->   a file the next blocks use, saved as FILE
# The blocks run in README order in a project directory of their own (the
# checkout's entries linked in, so `build/cairnloop` and `lua/...` resolve
# as in the checkout), on a fresh embedded cluster that the first block
# starts there; it is stopped at exit.  Needs no test database.
set -u
. "$(dirname "$0")/cli_lib.bash"

unset CAIRNLOOP_DATABASE_URL PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGSERVICE \
  CAIRNLOOP_LUA_PATH LUA_CPATH LUA_PATH LUA_CPATH_5_4 LUA_PATH_5_4
root=$CLI_TEST_ROOT

proj=$cl_tmp/project
mkdir -p "$proj"
for f in "$root"/*; do
  ln -s "$f" "$proj/$(basename "$f")"
done
on_exit() { (cd "$proj" && "$root/build/cairnloop" db stop >/dev/null 2>&1) || true; }

# ---------------------------------------------------------------- the blocks
blocks=$cl_tmp/blocks
mkdir -p "$blocks"
: >"$blocks/manifest"
# One manifest line per marked block, "NAME FILE" (FILE "-" for a block to
# run); the block's text in $blocks/NAME.
awk -v dir="$blocks" '
  match($0, /^<!-- quickstart: [a-z0-9-]+( > [A-Za-z0-9_.-]+)? -->$/) {
    spec = substr($0, 18, length($0) - 21)
    n = split(spec, w, " > ")
    name = w[1]; file = n > 1 ? w[2] : "-"
    armed = 1
    next
  }
  armed && !inside && /^```/ { inside = 1; next }
  inside && /^```$/ {
    print name " " file >> (dir "/manifest")
    inside = 0; armed = 0
    next
  }
  inside { print > (dir "/" name) }
' "$root/README.md"

is "$(cut -d' ' -f1 "$blocks/manifest" | tr '\n' ' ')" \
  "cli cli-scripts lua lua-run policy policy-run c c-run " \
  "README.md marks the quick-start blocks, in reading order"

# Runs the shell block NAME in the project directory: $rc, $out, $err.
run_block() {
  rc=0
  (cd "$proj" && timeout 120 bash "$blocks/$1") </dev/null >"$cl_tmp/$1.out" \
    2>"$cl_tmp/$1.err" || rc=$?
  out=$(cat "$cl_tmp/$1.out")
  err=$(cat "$cl_tmp/$1.err")
}

# The lines of $err that do not match the bash REGEX, one a line.
other_err() {
  local line
  while IFS= read -r line; do
    [[ $line =~ $1 ]] || printf '%s\n' "$line"
  done <<<"$err"
}

while read -r name file; do
  if [ "$file" != - ]; then
    cp "$blocks/$name" "$proj/$file"
    continue
  fi
  run_block "$name"
  case $name in
  cli)
    exits 0 "cli: the command-line quick start runs"
    like "$out" "started \(pid [0-9]+\)" "cli: it starts the embedded cluster in the project"
    like "$out" "INSERT 0 30" "cli: psql seeds 30 conversations through \`db url\`"
    like "$out" $'\n''[0-9a-f-]{36} +refused_cap_exceeded +26 .*'$'\n''[0-9a-f-]{36} +submitted +3 ' \
      "cli: the envelope listing shows both lanes"
    like "$err" $'\n''cairnloop: batch_too_large: batch_size 26 exceeds cap 25' \
      "cli: the bulk send over the cap is refused"
    is "$(other_err '^cairnloop: (creating the embedded PostgreSQL cluster |batch_too_large: )')" "" \
      "cli: nothing else on stderr"
    ;;
  cli-scripts)
    exits 0 "cli-scripts: delivery and scripts run"
    like "$out" "^sent 0, failed 0, no_op 4," \
      "cli-scripts: work --once completes the 4 messages of the quick start (no notifier: no_op)"
    like "$out" "Done\." "cli-scripts: the campaign script and the demo run to the end"
    is "$(jget 'r.delivery.sent .. " " .. r.campaign.envelopes.replayed' "$(tail -n 1 <<<"$out")")" \
      "0 5" "cli-scripts: demo --json ends with its report, the campaign replayed"
    is "$err" "" "cli-scripts: nothing on stderr"
    ;;
  lua-run)
    exits 0 "lua: the Lua quick start runs on the embedded default"
    like "$out" "^[0-9a-f-]{36}	3"$'\n' "lua: the bulk trigger writes an envelope of 3 messages"
    is "$(grep -c '^deliver to conversation [123]: We fixed it\.$' <<<"$out")" "3" \
      "lua: the notifier delivers each message"
    like "$out" $'\n''3 sent$' "lua: work reports 3 sent"
    is "$err" "" "lua: nothing on stderr"
    ;;
  policy-run)
    exits 0 "policy: the policy script runs under the command"
    like "$out" "triggered message [0-9]+ for conversation 4 " "policy: the trigger goes through"
    like "$out" $'\n''sent 1, failed 0,' "policy: its notifier delivers the message"
    like "$out" "outbound_trigger \| agent_7" "policy: its auditor recorded the resolved actor"
    is "$err" "" "policy: nothing on stderr"
    ;;
  c-run)
    exits 0 "c: the C quick start compiles against the build tree and runs"
    like "$out" "^envelope [0-9a-f-]{36}: 3 messages, first id [0-9]+$" \
      "c: the bulk trigger writes an envelope of 3 messages"
    is "$err" "" "c: nothing on stderr"
    ;;
  *)
    tap 1 "$name: a marked block this test has no checks for"
    ;;
  esac
done <"$blocks/manifest"
