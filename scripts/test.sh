#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (a redis-server
# binary; each test starts its own on a free port and never touches the machine's shared
# Redis), then runs every test target. README.md and .ci/run call this.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # policy-rc.d exit 101: the package's postinst must not start a system redis on 6379
  # (README.md promises the scripts never start the packages' services). Only added when
  # the machine has none, and removed afterwards.
  policy=/usr/sbin/policy-rc.d
  added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    added_policy=1
  fi
  rc=0
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    "${need_apt[@]}" >/dev/null || rc=$?
  [ "$added_policy" -eq 0 ] || $SUDO rm -f "$policy"
  [ "$rc" -eq 0 ] || { echo "apt-get install ${need_apt[*]} failed" >&2; exit 1; }
fi

# tests/docs.rs runs README.md's browser snippet under Node.js (20.10 or newer, for its
# WebSocket). Debian's own nodejs is too old for that, so nothing is installed here: without
# node the check skips, and says so loudly here, since cargo hides a passing test's output.
if ! command -v node >/dev/null 2>&1; then
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  echo "!!! NO NODE.JS: README.md's browser snippet (tests/docs.rs) WILL NOT BE CHECKED.      !!!" >&2
  echo "!!! Install Node.js 20.10 or newer to check it.                                      !!!" >&2
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
fi

cargo test --all-targets "$@"
# The load generator's unit tests, built on their own so that its features (a multi-threaded
# tokio) do not change the server's build.
cargo test -p switchboard-bench

# The same cluster topology as docker-compose.yml on loopback (redis-server, three nodes,
# nginx), checked end to end through the load balancer, with the binary the tests built.
cargo build --bin switchboard
SWITCHBOARD_BIN="$PWD/target/debug/switchboard" bash scripts/cluster.sh --check
