#!/usr/bin/env bash
# Slips a new user meets in the demo, each a regression:
# - `cairnloop demo --json` printed the text report: --json now means what it
#   means for every command (stdout is one JSON object per result line), and
#   `cairnloop run --json` tells the script through cairnloop.json_output().
# - TERM=dumb (or unset) and NO_COLOR still got escape sequences from the
#   campaign script (bold titles), cairnloop.campaign's progress bars
#   ("\e[K") and tools/demo.sh: now none, and the bars redraw with a plain
#   carriage return.  A pseudo-terminal (script(1)) makes them take their
#   terminal path; TERM=xterm is the control that the path was taken.
# Runs in a project directory of its own (the checkout's entries linked in,
# as tests/integration/stock_path.sh does), on an embedded cluster there,
# stopped at exit.  Needs no test database.
set -u
. "$(dirname "$0")/cli_lib.bash"

unset CAIRNLOOP_DATABASE_URL PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGSERVICE NO_COLOR
root=$CLI_TEST_ROOT

proj=$cl_tmp/project
mkdir -p "$proj"
for f in "$root"/*; do
  ln -s "$f" "$proj/$(basename "$f")"
done
on_exit() { (cd "$proj" && cairnloop db stop >/dev/null 2>&1) || true; }
cd "$proj" || exit 1

# ---------------------------------------------------------------- demo --json
cl demo --json
exits 0 "demo --json succeeds"
is "$(grep -c '' <<<"$out")" "1" "demo --json prints exactly one line on stdout"
is "$(jlines)" "1" "and that line is one JSON object"
if python3 -c 'import json, sys; v = json.load(sys.stdin); sys.exit(not isinstance(v, dict))' \
    <<<"$out" 2>/dev/null; then
  tap 0 "python's json module reads it as an object too"
else
  tap 1 "python's json module reads it as an object too"
fi
is "$(grep -v -c '^cairnloop: \(creating\|started\)' <<<"$err")" "0" \
  "stderr only says that the embedded cluster was created and started"
is "$(jget 'r.conversations.open .. " " .. r.conversations.closed .. " " .. r.cohort .. " " .. r.cap')" \
  "108 12 108 25" "the report: the seeded conversations, the cohort and the cap"
is "$(jget 'r.refusals.over_cap.code .. " " .. r.refusals.over_cap.status .. ": " .. r.refusals.over_cap.message')" \
  "batch_too_large refused_cap_exceeded: batch_size 26 exceeds cap 25" \
  "the report: the bulk send over the cap, refused and recorded"
is "$(jget 'r.refusals.max_recipients.code .. ": " .. r.refusals.max_recipients.message')" \
  "batch_too_large: cohort of 108 recipients exceeds max_recipients 54" \
  "the report: the campaign's own guard"
is "$(jget 'r.campaign.envelopes.submitted .. " " .. r.campaign.envelopes.replayed .. " " .. r.campaign.recipients.submitted')" \
  "5 0 108" "the report: the campaign submitted 5 envelopes, 108 recipients"
is "$(jget 'r.delivery.sent .. " " .. r.delivery.failed .. " " .. r.outbox.appended')" "108 0 108" \
  "the report: 108 sent, none failed, 108 outbox lines"
is "$(jget 'r.outbox.path')" ".cairnloop/outbox.jsonl" "the report: the outbox path"
is "$(jget 'r.envelopes.submitted .. " " .. r.envelopes.refused_cap_exceeded .. " " .. r.messages.sent')" \
  "5 1 108" "the report: envelopes and messages by status"
is "$(jget 'r.audit_events.bulk_outbound_trigger')" "5" "the report: audit events by action"
first=$out

cl demo --json
exits 0 "demo --json again"
is "$(jlines)" "1" "one JSON object again"
is "$(jget 'r.campaign.recipients.submitted .. " " .. r.campaign.envelopes.replayed .. " " .. r.delivery.sent')" \
  "0 5 0" "the second run sends nothing new: 5 envelopes replay, 0 sent"
is "$(jget 'r.envelopes.submitted .. " " .. r.messages.sent' "$out")" \
  "$(jget 'r.envelopes.submitted .. " " .. r.messages.sent' "$first")" \
  "the database holds what the first run reported"

cl demo
exits 0 "demo without --json"
like "$out" $'\n''1\. Migrate' "prints its steps as text"
like "$out" 'Done\.' "and ends with the text report"

# ---------------------------------------------------------------- run --json
printf '%s\n' 'local cairnloop = require "cairnloop"
print(cairnloop.json_output())
local other = assert(cairnloop.open(cairnloop.default_config()))
other:close()' >"$cl_tmp/json_flag.lua"
cl run --json "$cl_tmp/json_flag.lua"
exits 0 "run --json: default_config() still opens an engine"
is "$out" "true" "run --json: cairnloop.json_output() is true"
cl run "$cl_tmp/json_flag.lua"
is "$out" "false" "run: cairnloop.json_output() is false"

# ---------------------------------------------------------------- terminals
# in_tty OUTFILE SHELL-COMMAND: runs the command on a pseudo-terminal (stdin,
# stdout and stderr), its whole output in OUTFILE; sets $rc.
in_tty() {
  rc=0
  script -qec "$2" /dev/null </dev/null >"$1" 2>&1 || rc=$?
}
has_esc() { LC_ALL=C grep -q $'\x1b' "$1"; }

TERM=xterm in_tty "$cl_tmp/xterm.out" "cairnloop demo"
if [ "$rc" -eq 0 ] && has_esc "$cl_tmp/xterm.out"; then
  tap 0 "control: on a pseudo-terminal with TERM=xterm the demo uses escape sequences"
else
  tap 1 "control: on a pseudo-terminal with TERM=xterm the demo uses escape sequences" \
    "exit status $rc" "$(head -c 2000 "$cl_tmp/xterm.out")"
fi

for case in "TERM=dumb" "NO_COLOR=1 TERM=xterm" "unset TERM;"; do
  in_tty "$cl_tmp/tty.out" "$case cairnloop demo"
  if [ "$rc" -eq 0 ] && ! has_esc "$cl_tmp/tty.out"; then
    tap 0 "${case%;}: the demo on a terminal writes no escape sequence"
  else
    tap 1 "${case%;}: the demo on a terminal writes no escape sequence" "exit status $rc" \
      "$(LC_ALL=C grep -n -a $'\x1b' "$cl_tmp/tty.out" | head -n 5 | cat -v)"
  fi
done
if LC_ALL=C grep -q -a $'\renvelopes \\[##############################\\] 5/5' "$cl_tmp/tty.out"; then
  tap 0 "without escape sequences the progress bar still redraws with a carriage return"
else
  tap 1 "without escape sequences the progress bar still redraws with a carriage return" \
    "$(cat -v "$cl_tmp/tty.out" | head -n 40)"
fi

TERM=xterm in_tty "$cl_tmp/demo_sh_xterm.out" "bash tools/demo.sh"
if [ "$rc" -eq 0 ] && has_esc "$cl_tmp/demo_sh_xterm.out"; then
  tap 0 "control: tools/demo.sh with TERM=xterm uses escape sequences"
else
  tap 1 "control: tools/demo.sh with TERM=xterm uses escape sequences" "exit status $rc" \
    "$(head -c 2000 "$cl_tmp/demo_sh_xterm.out")"
fi
for case in "TERM=dumb" "NO_COLOR=1 TERM=xterm"; do
  in_tty "$cl_tmp/demo_sh.out" "$case bash tools/demo.sh"
  if [ "$rc" -eq 0 ] && ! has_esc "$cl_tmp/demo_sh.out"; then
    tap 0 "$case: tools/demo.sh on a terminal writes no escape sequence"
  else
    tap 1 "$case: tools/demo.sh on a terminal writes no escape sequence" "exit status $rc" \
      "$(LC_ALL=C grep -n -a $'\x1b' "$cl_tmp/demo_sh.out" | head -n 5 | cat -v)"
  fi
done
