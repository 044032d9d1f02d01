#!/usr/bin/env bash
# `make lint` as part of `make check`: each stage of tools/lint.sh
# (clang-format, cppcheck, clang-tidy) is one test, failing with its
# findings.  LINT_JOBS defaults to 1 here, so that the suite running beside
# this one keeps a core.
set -u
cd "$(dirname "$0")/../.."
n=0 fail=0
for stage in format cppcheck tidy; do
  n=$((n + 1))
  out=$(LINT_JOBS=${LINT_JOBS:-1} LINT_BUILD=build/lint-check tools/lint.sh "$stage" 2>&1)
  rc=$?
  if [ "$rc" -eq 0 ]; then
    echo "ok $n - lint: $stage finds nothing"
  else
    fail=1
    echo "not ok $n - lint: $stage finds nothing (exit $rc)"
    printf '%s\n' "$out" | grep -vE '^\s*$' | head -n 40 | sed 's/^/#   /'
  fi
done
echo "1..$n"
exit $fail
