# Helpers shared by the bench lanes bench/http_delivery.sh and
# bench/nonblocking.sh (sourced, not run).  Each lane sets PSQL, md (its
# markdown results file) and CAIRNLOOP_PG_URL_BASE (bench/pg.sh) first.
#
#   db_url DB / sql DB SQL   a database of the bench cluster, and psql on it
#   now_us, fmt N            the clock in microseconds; N with thousands commas
#   proc_cpu_ms PID          user + system CPU of a process so far
#   server_cpu_ms POSTMASTER CPU of the whole PostgreSQL server so far
#   print_table ...          a table on stdout and as markdown into $md
#   target DESC MEASURED OK  records a target (TARGET_WORDS: "met missed")
# and tools/proc.bash: alive, stop_pid, free_port.

. "$(dirname "${BASH_SOURCE[0]}")/../tools/proc.bash"

db_url() { printf '%s' "${CAIRNLOOP_PG_URL_BASE/:\/\/\/\?/:\/\/\/$1?}"; }

sql() { PGOPTIONS='-c client_min_messages=warning' "$PSQL" -X -qAt -v ON_ERROR_STOP=1 "$(db_url "$1")" -c "$2"; }

now_us() { printf '%s' "${EPOCHREALTIME/./}"; }

# 12345.6 -> 12,346 (and 45.6 -> 45.6 below 100)
fmt() {
  awk -v x="$1" 'BEGIN {
    if (x < 100) { printf "%.1f", x; exit }
    s = sprintf("%d", x + 0.5); o = ""
    while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
    print s o }'
}

# user + system CPU of one process (all its threads), in ms.
proc_cpu_ms() {
  local line f
  { read -r line <"/proc/$1/stat"; } 2>/dev/null || { echo 0; return; }
  read -r -a f <<<"${line##*) }" # after the command name, which may hold spaces
  echo $(((f[11] + f[12]) * 1000 / $(getconf CLK_TCK)))
}

# CPU the whole server has used so far, in ms: the postmaster with the
# children it has reaped, and its live children.
server_cpu_ms() {
  local pm=$1 file line f ticks=0
  for file in /proc/[0-9]*/stat; do
    # A process may be gone since the glob: no message for it.
    { read -r line <"$file"; } 2>/dev/null || continue
    read -r -a f <<<"${line##*) }"
    if [ "${file//[^0-9]/}" = "$pm" ]; then
      ticks=$((ticks + f[11] + f[12] + f[13] + f[14]))
    elif [ "${f[1]}" = "$pm" ]; then
      ticks=$((ticks + f[11] + f[12]))
    fi
  done
  echo $((ticks * 1000 / $(getconf CLK_TCK)))
}

print_table() { # TITLE HEADER ALIGN NOTE ROWS...
  local title=$1 header=$2 align=$3 tnote=$4
  shift 4
  printf '%s\n' "$header" "$@" | awk -F'|' -v title="$title" -v align="$align" -v tnote="$tnote" '
    { rows[NR] = $0; for (i = 1; i <= NF; i++) if (length($i) > w[i]) w[i] = length($i); if (NF > nf) nf = NF }
    END {
      printf "\n%s\n", title
      for (r = 1; r <= NR; r++) {
        split(rows[r], c, "|"); line = ""
        for (i = 1; i <= nf; i++) line = line sprintf(substr(align, i, 1) == "l" ? "  %-" w[i] "s" : "  %" w[i] "s", c[i])
        print line
      }
      if (tnote != "") printf "  %s\n", tnote
    }'
  {
    printf '**%s**\n\n| %s |\n|' "$title" "${header//|/ | }"
    local i
    for ((i = 0; i < ${#align}; i++)); do
      [ "${align:i:1}" = l ] && printf ':---|' || printf -- '---:|'
    done
    printf '\n'
    for r in "$@"; do printf '| %s |\n' "${r//|/ | }"; done
    [ -n "$tnote" ] && printf '\n%s\n' "$tnote"
    printf '\n'
  } >>"$md"
}

# Targets: rows "DESC|MEASURED|verdict" in targets, counted in met/total
# (the lane resets them).
TARGET_WORDS=${TARGET_WORDS:-"pass MISS"}
target() { # DESC MEASURED PASS(0/1)
  local words
  read -r -a words <<<"$TARGET_WORDS"
  total=$((total + 1))
  [ "$3" = 1 ] && met=$((met + 1))
  targets+=("$1|$2|$([ "$3" = 1 ] && echo "${words[0]}" || echo "${words[1]}")")
}
