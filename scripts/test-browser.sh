#!/usr/bin/env bash
# The browser tests (tests/browser/), from a fresh machine: installs Debian's `chromium` when
# /usr/bin/chromium is missing, and tests/browser's npm packages (playwright-core, which
# drives that Chromium, downloading no browser of its own; typescript, which checks
# client/switchboard.d.ts) when node_modules is missing or
# older than package-lock.json, builds the server binary unless SWITCHBOARD_BIN names one,
# then runs the tests with `node --test`. Needs Node.js 20 or newer (not installed here:
# Debian's own is too old). Arguments go to `node --test` (e.g. a single test file).
# The screenshots land in target/browser-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

loud() {
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  echo "!!! $*" >&2
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
}

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  loud "NO NODE.JS (node and npm): THE BROWSER TESTS CANNOT RUN. Install Node.js 20 or newer."
  exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  loud "NODE.JS $(node --version) IS TOO OLD: THE BROWSER TESTS NEED 20 OR NEWER."
  exit 1
fi

need_apt=()
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
bash scripts/apt-install.sh ${need_apt[@]+"${need_apt[@]}"}

# npm ci when node_modules is missing or older than the lock file (npm writes its own
# node_modules/.package-lock.json on every install).
stamp=tests/browser/node_modules/.package-lock.json
if [ ! -e "$stamp" ] || [ tests/browser/package-lock.json -nt "$stamp" ]; then
  echo "npm ci in tests/browser"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

# A binary named by the caller is used as it is; otherwise cargo builds (a no-op when fresh):
# the demo page is compiled into the binary, so a stale one would test an old page.
if [ -z "${SWITCHBOARD_BIN:-}" ]; then
  cargo build --bin switchboard
  SWITCHBOARD_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/switchboard"
fi
[ -x "$SWITCHBOARD_BIN" ] || { echo "SWITCHBOARD_BIN=$SWITCHBOARD_BIN is not an executable" >&2; exit 1; }
export SWITCHBOARD_BIN

# client/switchboard.d.ts compiles, and says what docs/clients.md shows (tests/browser/types-check.ts).
(cd tests/browser && node_modules/.bin/tsc --noEmit --strict --target es2022 --module nodenext \
  --moduleResolution nodenext types-check.ts)

mkdir -p target/browser-artifacts
if [ $# -eq 0 ]; then
  set -- tests/browser/*.test.mjs
fi
# One test file at a time: each starts its own servers and a Chromium, and the machine is small.
exec node --test --test-concurrency=1 "$@"
