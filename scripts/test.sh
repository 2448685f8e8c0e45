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
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

cargo test --all-targets "$@"
# The load generator's unit tests, built on their own so that its features (a multi-threaded
# tokio) do not change the server's build.
cargo test -p switchboard-bench

# The same cluster topology as docker-compose.yml on loopback (redis-server, three nodes,
# nginx), checked end to end through the load balancer, with the binary the tests built.
cargo build --bin switchboard
SWITCHBOARD_BIN="$PWD/target/debug/switchboard" bash scripts/cluster.sh --check
