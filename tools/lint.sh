#!/usr/bin/env bash
# The `make lint` harness: static checks over the C sources.
#   1. format:   clang-format --dry-run --Werror against .clang-format;
#   2. cppcheck: every translation unit, the ones that include the Lua
#                headers once per Lua ABI (5.4 and LuaJIT's 5.1);
#   3. tidy:     clang-tidy with .clang-tidy, on the compile commands the
#                Makefile runs (read with `make -n`, nothing is built).
# The files are the tracked (and new, not ignored) *.c, *.h and *.inc, less
# LINT_EXCLUDE.  Prints every finding once, then a summary per tool (by check
# and by file); exits 1 on any finding, 2 when a tool is missing.  Installs
# nothing: `make deps` (tools/deps.sh) does.
#
# Usage: tools/lint.sh [format] [cppcheck] [tidy]     (default: all three)
# Environment: LINT_BUILD (scratch directory, default build/lint),
# LINT_JOBS (parallel jobs, default nproc), LINT_EXCLUDE (an extended regex
# of paths to skip: generated and third-party code), CLANG_FORMAT,
# CLANG_TIDY, CPPCHECK (the commands to run).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
BUILD_DIR=${LINT_BUILD:-build/lint}
JOBS=${LINT_JOBS:-$(nproc 2>/dev/null || echo 2)}
EXCLUDE=${LINT_EXCLUDE:-'^(build|third_party|vendor)/|(^|/)[^/]*_gen\.[ch]$'}
CLANG_FORMAT=${CLANG_FORMAT:-clang-format}
CLANG_TIDY=${CLANG_TIDY:-clang-tidy}
CPPCHECK=${CPPCHECK:-cppcheck}
# The configuration files are written for these versions (Debian bookworm);
# another version still runs, with a note, since its output may differ.
WANT_CLANG=14
WANT_CPPCHECK=2.10

STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(format cppcheck tidy)
for s in "${STAGES[@]}"; do
  case $s in
  format | cppcheck | tidy) ;;
  *)
    echo "usage: tools/lint.sh [format] [cppcheck] [tidy]" >&2
    exit 2
    ;;
  esac
done
want() { [[ " ${STAGES[*]} " == *" $1 "* ]]; }

# --- tools ---------------------------------------------------------------
missing=""
need() {  # need COMMAND DEBIAN-PACKAGE
  command -v "$1" >/dev/null 2>&1 || missing="$missing $2"
}
want format && need "$CLANG_FORMAT" clang-format
want cppcheck && need "$CPPCHECK" cppcheck
want tidy && need "$CLANG_TIDY" clang-tidy
# python3 reads `make -n` into compile_commands.json; clang-tidy depends on it.
want tidy && need python3 python3
if [ -n "$missing" ]; then
  echo "lint: missing Debian packages:$missing (make deps, or as root: apt-get install$missing)" >&2
  exit 2
fi

version_note() {  # version_note NAME WANTED ACTUAL-VERSION-LINE
  case $3 in
  *" $2"*) ;;
  *) echo "lint: note: the configuration is written for $1 $2; this is: $3" ;;
  esac
}
want format && version_note clang-format "$WANT_CLANG." "$("$CLANG_FORMAT" --version | head -1)"
want tidy && version_note clang-tidy "$WANT_CLANG." "$("$CLANG_TIDY" --version | grep -i version | head -1)"
want cppcheck && version_note cppcheck "$WANT_CPPCHECK" "$("$CPPCHECK" --version)"

# --- files ---------------------------------------------------------------
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  list=$(git ls-files --cached --others --exclude-standard -- '*.c' '*.h' '*.inc')
else
  list=$(find src cli include tests bench examples -type f \
    \( -name '*.c' -o -name '*.h' -o -name '*.inc' \) 2>/dev/null)
fi
FILES=()
while IFS= read -r f; do
  [ -f "$f" ] && FILES+=("$f")
done < <(printf '%s\n' "$list" | grep -Ev "$EXCLUDE" | sort -u)
UNITS=()
for f in "${FILES[@]}"; do [[ $f == *.c ]] && UNITS+=("$f"); done
if [ ${#UNITS[@]} -eq 0 ]; then
  echo "lint: no C sources found" >&2
  exit 2
fi

mkdir -p "$BUILD_DIR" || exit 2
OUT="$BUILD_DIR/findings"
rm -rf "$OUT" && mkdir -p "$OUT"

# Findings are normalised to one line each, "path:line:col: text [check]",
# with a repo-relative path, in $OUT/<tool>.txt.
relative() { sed -e "s|^$ROOT/||" -e 's|^\./||'; }

# --- 1. format -----------------------------------------------------------
run_format() {
  "$CLANG_FORMAT" --dry-run --Werror "${FILES[@]}" 2>&1 |
    grep -E '^[^ ]+:[0-9]+:[0-9]+: (warning|error): ' |
    sed -E 's/: (warning|error): code should be clang-formatted/: not formatted/' |
    relative >"$OUT/clang-format.txt"
}

# --- 2. cppcheck ---------------------------------------------------------
# Units compiled for both Lua ABIs: the files that branch on the Lua version
# (lua_compat.h), then whatever includes one of them through any chain of
# quoted includes, so a renamed glue file (e.g. src/lua_glue.inc) is
# followed too.
lua_units() {
  local set=() grown=1 f inc b
  for f in "${FILES[@]}"; do
    grep -qE '^[[:space:]]*#[[:space:]]*(el)?if.*(LUA_VERSION_NUM|LUAJIT_VERSION)' "$f" && set+=("$f")
  done
  while [ $grown -eq 1 ]; do
    grown=0
    for f in "${FILES[@]}"; do
      [[ " ${set[*]} " == *" $f "* ]] && continue
      while IFS= read -r inc; do
        for b in "${set[@]}"; do
          if [ "$inc" = "$(basename "$b")" ]; then
            set+=("$f")
            grown=1
            break 2
          fi
        done
      done < <(sed -nE 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"([^"]+)".*/\1/p' "$f" |
        xargs -r -n1 basename)
    done
  done
  for f in "${set[@]}"; do [[ $f == *.c ]] && echo "$f"; done
}

run_cppcheck() {
  local lua=() plain=() f
  mapfile -t lua < <(lua_units)
  for f in "${UNITS[@]}"; do
    [[ " ${lua[*]} " == *" $f "* ]] || plain+=("$f")
  done
  # shellcheck disable=SC2054 # the commas are cppcheck's
  local common=(--enable=warning,style,performance,portability --inline-suppr
    --error-exitcode=1 --std=c11 --quiet -j "$JOBS" --library=posix
    # cmocka's fail() never returns (tools/lint/cmocka.cfg says why).
    --library=tools/lint/cmocka.cfg
    -D_GNU_SOURCE -Iinclude -Isrc -Itests/support
    --suppress=missingIncludeSystem
    # glibc's readdir is thread-safe on distinct DIR streams, and the
    # readdir_r it recommends is deprecated (glibc 2.24).
    --suppress=readdirCalled
    --template='{file}:{line}:{column}: {severity}: {message} [{id}]')
  local cfg
  {
    # Every #if configuration of the units without Lua.
    [ ${#plain[@]} -gt 0 ] &&
      "$CPPCHECK" "${common[@]}" --cppcheck-build-dir="$(cache cppcheck)" "${plain[@]}"
    # The Lua units once per ABI: lua_compat.h branches on LUA_VERSION_NUM,
    # which cppcheck cannot know without the system headers (and given them,
    # it stops at luaconf.h's #error for want of <limits.h>).  policy.c,
    # built for 5.4 only, is checked for both: its code must not care.
    if [ ${#lua[@]} -gt 0 ]; then
      for cfg in 504 501; do
        "$CPPCHECK" "${common[@]}" --library=lua --cppcheck-build-dir="$(cache cppcheck-lua$cfg)" \
          -DLUA_VERSION_NUM=$cfg "${lua[@]}"
      done
    fi
  } 2>&1 | grep -E '^[^ ]+:[0-9]+:[0-9]+: ' | relative | sort -u >"$OUT/cppcheck.txt"
}
cache() { mkdir -p "$BUILD_DIR/$1" && echo "$BUILD_DIR/$1"; }

# --- 3. clang-tidy -------------------------------------------------------
# compile_commands.json from the commands `make -n -B` prints for every
# target (so it follows the Makefile and needs no build): one entry per
# source and distinct set of flags, e.g. src/lua_module.c for Lua 5.4 and
# for LuaJIT.  Sources the Makefile does not build (the examples) get the
# flags of a host: -std=c11 -Iinclude.
compile_db() {
  env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make --no-print-directory -n -B -k \
    BUILD="$BUILD_DIR/tree" all tests bench fuzz >"$BUILD_DIR/make-n.txt" 2>"$BUILD_DIR/make-n.err"
  # A Makefile that cannot be read leaves every unit on the host flags; say why.
  grep -E 'Makefile|\*\*\*' "$BUILD_DIR/make-n.err" | grep -v "No rule to make target 'bench'" |
    sed 's/^/lint: make -n: /'
  python3 - "$ROOT" "$BUILD_DIR/make-n.txt" "$BUILD_DIR/compile_commands.json" "${UNITS[@]}" <<'EOF'
import json, os, re, shlex, sys
root, src, dst, units = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
text = open(src).read().replace("\\\n", " ")
compiler = re.compile(r"^(cc|c99|c11|gcc|clang)(-[0-9.]+)?$|-(gcc|clang)(-[0-9.]+)?$")
drop_alone = {"-MMD", "-MP", "-MD", "-shared", "-pthread", "-c", "-Werror"}
drop_next = {"-o", "-MF", "-MT", "-MQ"}
entries, seen = [], set()
for line in text.splitlines():
    try:
        words = shlex.split(line)
    except ValueError:
        continue
    if not words or not compiler.search(os.path.basename(words[0])):
        continue
    sources = [w for w in words[1:] if w.endswith(".c")]
    # A fuzz target compiles the CLI's sources again into its binary
    # (-DCLI_NO_MAIN); only its own tests/fuzz/ source is new to check.
    if any(w.startswith("-fsanitize=fuzzer") for w in words):
        sources = [s for s in sources if os.path.normpath(s).startswith("tests/fuzz/")]
    flags, skip = [], False
    for w in words[1:]:
        if skip:
            skip = False
        elif w in drop_next:
            skip = True
        elif w in drop_alone or w.endswith((".c", ".o", ".a", ".so")) or w.startswith(("-l", "-L", "-Wl,", "-fsanitize")):
            continue
        else:
            flags.append(w)
    for s in sources:
        s = os.path.normpath(s)
        key = (s, tuple(flags))
        if s in units and key not in seen:
            seen.add(key)
            entries.append({"directory": root, "file": os.path.join(root, s),
                            "arguments": [words[0]] + flags + ["-c", s]})
covered = {os.path.relpath(e["file"], root) for e in entries}
for s in units:
    if s not in covered:
        print("lint: %s is built by no Makefile target: checked as a host (-std=c11 -Iinclude)" % s)
        entries.append({"directory": root, "file": os.path.join(root, s),
                        "arguments": ["cc", "-std=c11", "-D_GNU_SOURCE", "-Iinclude", "-c", s]})
json.dump(entries, open(dst, "w"), indent=1)
EOF
}

run_tidy() {
  compile_db || return 1
  # Headers of this tree only; the system's (/usr/include/...) stay out.
  local filter="^$ROOT/(src|include|cli|tests|bench|examples)/"
  # The analyser's budget per top-level function (LINT_ANALYZER_NODES,
  # clang's default 225000): a run of `c ? f(x) : g()` arguments, as in the
  # json_pack calls of cli/json.c, doubles the paths at each one and took
  # 5 s of the default budget on a 98-line file for no finding.  75000 is
  # clang's own "shallow" figure; with the full budget this tree is clean
  # too (checked: LINT_ANALYZER_NODES=225000, about 1.6 times the time).
  local nodes=${LINT_ANALYZER_NODES:-75000}
  printf '%s\n' "${UNITS[@]}" |
    xargs -P "$JOBS" -n 1 "$CLANG_TIDY" -p "$BUILD_DIR" --quiet --header-filter="$filter" \
      --extra-arg=-include --extra-arg="$ROOT/tools/lint/cmocka_noreturn.h" \
      --extra-arg=-Xclang --extra-arg=-analyzer-config \
      --extra-arg=-Xclang --extra-arg="max-nodes=$nodes" \
      >"$BUILD_DIR/clang-tidy.log" 2>"$BUILD_DIR/clang-tidy.err"
  grep -E '^[^ ]+:[0-9]+:[0-9]+: (warning|error): .*\[[^]]+\]$' "$BUILD_DIR/clang-tidy.log" |
    relative | sort -u >"$OUT/clang-tidy.txt"
  # What has no check name: a unit that could not be read, or a crash.
  grep -E '^(Error|error):|^Stack dump|^PLEASE submit' "$BUILD_DIR/clang-tidy.err" |
    sed 's/^/clang-tidy: /' >>"$OUT/clang-tidy.txt"
}

# --- run and summarise ---------------------------------------------------
start=$(date +%s)
want format && run_format
want cppcheck && run_cppcheck
want tidy && run_tidy

total=0
summary=()
for tool in clang-format cppcheck clang-tidy; do
  f="$OUT/$tool.txt"
  [ -f "$f" ] || continue
  n=$(wc -l <"$f")
  total=$((total + n))
  [ "$n" -gt 0 ] && cat "$f"
  if [ "$n" -eq 0 ]; then
    summary+=("lint: $tool: clean")
    continue
  fi
  summary+=("lint: $tool: $n findings")
  summary+=("  by check: $(sed -nE 's/.*\[([^]]+)\]$/\1/p' "$f" | sort | uniq -c | sort -rn |
    awk '{printf "%s%s %d", sep, $2, $1; sep=", "}')")
  summary+=("  by file:  $(cut -d: -f1 "$f" | sort | uniq -c | sort -rn |
    awk '{printf "%s%s %d", sep, $2, $1; sep=", "}')")
done
echo
printf '%s\n' "${summary[@]}"
echo "lint: $total findings in $(($(date +%s) - start)) s (details: $OUT/, $BUILD_DIR/clang-tidy.log)"
[ "$total" -eq 0 ]
