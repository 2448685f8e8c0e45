#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (a redis-server
# binary; each test starts its own on a free port and never touches the machine's shared
# Redis), then runs every test target. README.md and .ci/run call this.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
bash scripts/apt-install.sh ${need_apt[@]+"${need_apt[@]}"}

# The JavaScript client's tests (client/test/), the browser tests and tests/docs.rs (README's
# browser snippet) run under Node.js 20.10 or newer, for its WebSocket. Debian's own nodejs is
# too old for that, so it is not installed from there: without a new enough node, stop here
# with a clear message rather than skip the client's tests.
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 10) ? 0 : 1)' 2>/dev/null; then
  echo "scripts/test.sh: the JavaScript tests need Node.js 20.10 or newer (with npm);" \
    "found: $(node --version 2>/dev/null || echo none). Install it from nodejs.org or NodeSource." >&2
  exit 1
fi
# Node 20 has its WebSocket behind a flag; 22 and later have it on.
NODE_WS=()
node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' || NODE_WS=(--experimental-websocket)

# tests/compression.rs and tests/batch.rs drive Python's `websockets` (it negotiates permessage-deflate by
# default), installed once into .tmp/test-venv (git-ignored), pinned.
WEBSOCKETS=websockets==17.4
VENV=.tmp/test-venv
if [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$WEBSOCKETS" ]; then
  echo "installing $WEBSOCKETS into $VENV"
  rm -rf "$VENV"
  mkdir -p .tmp
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    # Debian's python3 without ensurepip.
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$VENV"
    python3 -m venv "$VENV" || { echo "scripts/test.sh: cannot create $VENV" >&2; exit 1; }
  fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$WEBSOCKETS" \
    || { echo "scripts/test.sh: pip install $WEBSOCKETS failed" >&2; exit 1; }
  echo "$WEBSOCKETS" >"$VENV/.stamp"
fi
export TEST_PYTHON="$PWD/$VENV/bin/python"

cargo test --all-targets "$@"
# The load generator's unit tests, built on their own so that its features (a multi-threaded
# tokio) do not change the server's build.
cargo test -p switchboard-bench

# The same cluster topology as docker-compose.yml on loopback (redis-server, three nodes,
# nginx), checked end to end through the load balancer, with the binary the tests built.
cargo build --bin switchboard
export SWITCHBOARD_BIN="$PWD/target/debug/switchboard"

# The JavaScript client (client/switchboard.js) against that binary, with Node's own runner.
node "${NODE_WS[@]}" --test client/test/*.test.mjs
# The demo page and the client in headless Chromium (installs Debian's chromium and
# tests/browser's playwright-core when missing); screenshots in target/browser-artifacts/.
bash scripts/test-browser.sh

bash scripts/cluster.sh --check
# The same with a Redis Cluster of six redis-server processes behind the nodes (engine
# redis_cluster), a primary SIGKILLed among the checks.
bash scripts/cluster.sh --redis-cluster --check
