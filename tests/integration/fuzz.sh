#!/usr/bin/env bash
# Runs every libFuzzer target of tests/fuzz/ for a bounded time on a copy
# of its seed corpus (tests/fuzz/corpus/<name>): a crash, a sanitizer
# report or a broken invariant (the target aborts) fails the test and
# leaves the reproducer in the output.  CAIRNLOOP_FUZZ_SECONDS sets the
# time per target (default 5).
set -u
cd "$(dirname "$0")/../.."
n=0 fail=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
nok() { n=$((n + 1)); fail=1; echo "not ok $n - $1"; shift; for l in "$@"; do echo "#   $l"; done; }
seconds=${CAIRNLOOP_FUZZ_SECONDS:-5}

if ! command -v clang >/dev/null; then
  nok "clang is installed (tools/deps.sh installs it)"
  echo "1..$n"; exit 1
fi
if ! out=$(make --no-print-directory -s fuzz 2>&1); then
  nok "the fuzz targets build" "$(echo "$out" | tail -n 5)"
  echo "1..$n"; exit 1
fi
ok "the fuzz targets build"

tmp=$(mktemp -d /tmp/cairnloop-fuzz.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
for bin in build/fuzz/fuzz_*; do
  name=${bin##*/fuzz_}
  mkdir -p "$tmp/$name"
  [ -d "tests/fuzz/corpus/$name" ] && cp -R "tests/fuzz/corpus/$name/." "$tmp/$name/"
  if out=$("$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -close_fd_mask=3 \
      -artifact_prefix="$tmp/" "$tmp/$name" 2>&1); then
    runs=$(echo "$out" | sed -n 's/^Done \([0-9]*\) runs.*/\1/p' | tail -n 1)
    ok "fuzz_$name: ${runs:-?} runs in ${seconds}s without a finding"
  else
    nok "fuzz_$name found a failure" "$(echo "$out" | grep -E 'ERROR|SUMMARY|Test unit written|runtime error' | head -n 6)"
    for f in "$tmp"/crash-* "$tmp"/leak-* "$tmp"/timeout-*; do
      [ -f "$f" ] && echo "#   input ($f): $(od -An -c "$f" | head -n 3 | tr -s ' ')"
    done
  fi
done
echo "1..$n"
exit $fail
