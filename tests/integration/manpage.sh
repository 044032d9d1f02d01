#!/usr/bin/env bash
# The man page doc/cairnloop.1 and the command's --help cannot drift apart:
# every command that `cairnloop --help` lists has its section in the page,
# every option any --help shows is in the page, and every option the page
# names is one some --help shows.  The page also renders without a warning.
set -u
cd "$(dirname "$0")/../.."
n=0 fail=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
nok() { n=$((n + 1)); fail=1; echo "not ok $n - $1"; shift; for l in "$@"; do echo "#   $l"; done; }
page=doc/cairnloop.1
cl=build/cairnloop

warnings=$(nroff -man -ww "$page" 2>&1 >/dev/null)
if [ -z "$warnings" ]; then ok "the man page renders without warnings"
else nok "the man page renders without warnings" "$warnings"; fi

# The page's text, with roff's escaped hyphens as plain ones.
text=$(sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' "$page")
commands=$($cl --help | sed -n '/^Commands:/,/^$/p' | awk 'NF && !/^Commands:/ {print $1}')
[ -n "$commands" ] || nok "cairnloop --help lists commands"
missing=""
for c in $commands; do
  grep -qE "^\.SS \"?$c( |\"|$)" <<<"$text" || missing="$missing $c"
done
if [ -z "$missing" ]; then ok "every command of --help has a section in the page"
else nok "every command of --help has a section in the page" "missing:$missing"; fi

# Options of other programs named in either text: a script's own argument
# in run's example, pg_config's --bindir.
not_ours='^--(dry-run|bindir)$'
help_opts=$( { $cl --help; for c in $commands; do $cl "$c" --help; done; } 2>&1 |
  grep -oE -- '--[a-z][a-z0-9-]+' | grep -vE "$not_ours" | sort -u)
page_opts=$(grep -oE -- '--[a-z][a-z0-9-]+' <<<"$text" | grep -vE "$not_ours" | sort -u)
only_help=$(comm -23 <(echo "$help_opts") <(echo "$page_opts") | tr '\n' ' ')
only_page=$(comm -13 <(echo "$help_opts") <(echo "$page_opts") | tr '\n' ' ')
if [ -z "$only_help" ]; then ok "every option of --help is in the man page"
else nok "every option of --help is in the man page" "missing from the page: $only_help"; fi
if [ -z "$only_page" ]; then ok "every option of the man page is in some --help"
else nok "every option of the man page is in some --help" "not in any --help: $only_page"; fi

version=$($cl --version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n 1)
if grep -q "^\.TH CAIRNLOOP 1 .*\"cairnloop $version\"" "$page"; then ok "the page names version $version"
else nok "the page names version $version" "$(grep '^\.TH' "$page")"; fi
echo "1..$n"
exit $fail
