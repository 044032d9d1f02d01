#!/bin/sh
# Installs the Debian packages Cairnloop needs to build, test, lint and demo,
# skipping the apt round trip when everything is already there.
set -eu
PKGS="build-essential pkg-config make gcc libc6-dev liblua5.4-dev lua5.4 lua-busted
      libcmocka-dev uuid-dev libpq-dev libjansson-dev postgresql postgresql-contrib
      lua-cjson lua-dkjson libluajit2-5.1-dev luajit2 nginx libnginx-mod-http-lua
      curl procps util-linux libuv1-dev libmicrohttpd-dev prometheus wrk
      clang-format clang-tidy cppcheck clang libclang-rt-14-dev luarocks pgbouncer
      libcurl4-openssl-dev libssl-dev python3 lua-luv"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "cairnloop: missing Debian packages:$missing (run as root: apt-get install$missing)" >&2
  exit 1
fi
echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
