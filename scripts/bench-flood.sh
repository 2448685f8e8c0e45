#!/usr/bin/env bash
# One connection flooding the engine (issue 11, item 8): on one Switchboard node using the Redis
# engine, M victim connections publish at a fixed rate on channels of their own while one
# connection pipelines N `history` commands on distinct unknown channels. Measured with
# `switchboard-bench flood`: the victims' publish round trip, what the flood got back by kind,
# and the Redis keys the run left (DBSIZE before and after).
#
#   scripts/bench-flood.sh            five cases, about a minute once built:
#       alone       the victims alone
#       flood       + the flood written at once (N commands pipelined), default budget
#       flood-off   the same with the budget off (limits.client_command_rate = 1000000000)
#       window      + the flood kept at FLOOD_WINDOW commands unanswered (below the node's
#                   queue bound, so none is refused for the queue: a flood that lasts)
#       window-off  the same with the budget off
#   scripts/bench-flood.sh --smoke    two small floods on the debug build (< 20 s once built),
#                                     where a victim's error or unanswered publish fails the case
# Exits 1 when a case failed (the node did not start or exited, the load generator failed).
#
# Environment:
#   SWITCHBOARD_BIN=PATH  the server to measure (default: this tree's, built here). An older
#                         build without limits.client_command_rate runs without the budget-off
#                         cases (it has no budget anyway).
#   LABEL=TEXT            its name in the results (default "switchboard <commit>", or the path)
#   BENCH=PATH            the load generator (default: this tree's, built here)
#   FLOOD=50000 FLOOD_WINDOW=256 VICTIMS=4 VICTIM_RATE=50
#   DURATION=10           seconds the victims publish at least (longer while a flood lasts)
#   CASES="alone flood flood-off window window-off"   a subset, in that order
#   RESULTS=FILE          also append the JSON lines there (scripts/bench.sh does)
#   PROFILE=release|debug, SERVER_CPU=0, BENCH_CPU=1: the node and Redis share SERVER_CPU, the
#                         load generator gets BENCH_CPU (taskset, with two cores or more)
#
# Everything listens on 127.0.0.1: Redis on a free port (never 6379, the machine's shared one),
# without persistence, emptied before each case; a fresh node per case, started in the run's
# folder so that no config/default.toml is read (compiled-in defaults, which an older build
# also has). Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=0
case "${1:-}" in
  --smoke) SMOKE=1 ;;
  "") ;;
  *) echo "usage: $0 [--smoke]   (env: SWITCHBOARD_BIN LABEL FLOOD VICTIMS VICTIM_RATE DURATION CASES RESULTS)" >&2; exit 2 ;;
esac
if [ "$SMOKE" = 1 ]; then
  PROFILE=${PROFILE:-debug}
  FLOOD=${FLOOD:-3000}
  VICTIMS=${VICTIMS:-2}
  VICTIM_RATE=${VICTIM_RATE:-20}
  DURATION=${DURATION:-2}
  CASES=${CASES:-"flood window-off"}
  FLOOD_WINDOW=${FLOOD_WINDOW:-64}
  DRAIN=2
else
  PROFILE=${PROFILE:-release}
  FLOOD=${FLOOD:-50000}
  VICTIMS=${VICTIMS:-4}
  VICTIM_RATE=${VICTIM_RATE:-50}
  DURATION=${DURATION:-10}
  CASES=${CASES:-"alone flood flood-off window window-off"}
  FLOOD_WINDOW=${FLOOD_WINDOW:-256}
  DRAIN=5
fi
SERVER_CPU=${SERVER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
TARGET=${CARGO_TARGET_DIR:-target}
[[ "$TARGET" == /* ]] || TARGET=$ROOT/$TARGET

log() { echo "bench-flood: $*" >&2; }

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  log "SKIP: redis-server or redis-cli not installed (apt-get install redis-server)"
  exit 0
fi
command -v curl >/dev/null 2>&1 || { log "curl is needed to wait for /readyz"; exit 1; }

# --- build ------------------------------------------------------------------------------
# Two builds, not one, as in scripts/bench.sh: built together, the packages' features unify.
cargo_profile=()
[ "$PROFILE" = release ] && cargo_profile=(--release)
if [ -z "${SWITCHBOARD_BIN:-}" ]; then
  cargo build "${cargo_profile[@]}" --bin switchboard
  SWITCHBOARD_BIN=$TARGET/$PROFILE/switchboard
  LABEL=${LABEL:-"switchboard $(git rev-parse --short HEAD 2>/dev/null || echo '?')"}
fi
LABEL=${LABEL:-$SWITCHBOARD_BIN}
if [ -z "${BENCH:-}" ]; then
  cargo build "${cargo_profile[@]}" -p switchboard-bench
  BENCH=$TARGET/$PROFILE/switchboard-bench
fi
SWITCHBOARD_BIN=$(realpath "$SWITCHBOARD_BIN")
BENCH=$(realpath "$BENCH")
[ -x "$SWITCHBOARD_BIN" ] || { log "no server binary at $SWITCHBOARD_BIN"; exit 1; }

WORK=$ROOT/.tmp/bench/flood-$(date +%Y%m%d-%H%M%S)-$$
mkdir -p "$WORK"
OWN_RESULTS=$WORK/results.jsonl
: >"$OWN_RESULTS"
FAILED=0

# --- pinning ------------------------------------------------------------------------------
source "$ROOT/scripts/pin.sh"

# --- Redis and the node -------------------------------------------------------------------
REDIS_PID=""
NODE_PID=""
stop_pid() { # PID: SIGTERM, up to 3 s, then SIGKILL
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2>/dev/null || true
  local i
  for ((i = 0; i < 60; i++)); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  stop_pid "$NODE_PID"
  stop_pid "$REDIS_PID"
}
trap cleanup EXIT

REDIS_PORT=$("$BENCH" free-port)
"${PIN_SERVER[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
for ((i = 0; i < 200; i++)); do
  [ "$(rcli ping 2>/dev/null)" = PONG ] && break
  sleep 0.05
done
[ "$(rcli ping 2>/dev/null)" = PONG ] || { log "redis-server did not start:"; cat "$WORK/redis.log" >&2; exit 1; }

NODE_PORT=""
# start_node NAME ENV...: a node on the Redis engine, started in $WORK; waits for /readyz 200.
start_node() {
  local name=$1
  shift
  NODE_PORT=$("$BENCH" free-port)
  local env=(
    SWITCHBOARD__ENGINE__KIND=redis
    SWITCHBOARD__ENGINE__REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
    SWITCHBOARD__SERVER__BIND="127.0.0.1:$NODE_PORT"
    RUST_LOG="warn,switchboard::startup=info"
  )
  # One core for the node and Redis together, as in scripts/bench.sh's cross-node cases.
  [ "$PINNED" = 1 ] && env+=(SWITCHBOARD__SERVER__WORKERS=1 SWITCHBOARD__SERVER__BROKER_SHARDS=1)
  (cd "$WORK" && exec env "${env[@]}" "$@" "${PIN_SERVER[@]}" "$SWITCHBOARD_BIN") >"$WORK/node-$name.log" 2>&1 &
  NODE_PID=$!
  local code=000
  for ((i = 0; i < 400; i++)); do
    code=$(curl --noproxy '*' -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$NODE_PORT/readyz" || true)
    [ "$code" = 200 ] && return 0
    kill -0 "$NODE_PID" 2>/dev/null || break
    sleep 0.05
  done
  log "the node for '$name' is not ready (/readyz $code); its log:"
  tail -20 "$WORK/node-$name.log" >&2
  return 1
}

# The budget-off case needs a build that knows the setting (an unknown key stops a node).
knows_budget() {
  (cd "$WORK" && SWITCHBOARD__LIMITS__CLIENT_COMMAND_RATE=1000000000 "$SWITCHBOARD_BIN" --check-config) >/dev/null 2>&1
}

# run_case NAME LABEL FLOOD WINDOW ENV...: a fresh node, one `switchboard-bench flood`, then stop.
run_case() {
  local name=$1 label=$2 flood=$3 window=$4
  shift 4
  rcli flushall >/dev/null
  if ! start_node "$name" "$@"; then
    FAILED=1
    printf '{"mode":"flood","label":"%s","flood":%s,"flood_window":%s,"command":"history","victims":%s,"victim_rate":%s,"ok":false,"victim_failures":["the node did not start"]}\n' \
      "$label" "$flood" "$window" "$VICTIMS" "$VICTIM_RATE" >>"$OWN_RESULTS"
    return 0
  fi
  local out=$WORK/case-$name.out rc=0 strict=()
  [ "$SMOKE" = 1 ] && strict=(--strict)
  "${PIN_BENCH[@]}" "$BENCH" flood --url "ws://127.0.0.1:$NODE_PORT/ws" --label "$label" \
    --flood "$flood" --flood-window "$window" --victims "$VICTIMS" --victim-rate "$VICTIM_RATE" --duration "$DURATION" \
    --drain "$DRAIN" --redis "127.0.0.1:$REDIS_PORT" --redis-pid "$REDIS_PID" \
    --server-pid "$NODE_PID" "${SERVER_CPU_ARG[@]}" "${strict[@]}" >"$out" 2>"$WORK/case-$name.err" || rc=$?
  grep -v '^{' "$out" >&2 || true
  grep '^{' "$out" >>"$OWN_RESULTS" || true
  if [ "$rc" != 0 ]; then
    FAILED=1
    log "case '$name' exited $rc: $(tail -c 600 "$WORK/case-$name.err")"
  fi
  if ! kill -0 "$NODE_PID" 2>/dev/null; then
    FAILED=1
    log "the node exited during case '$name'; log tail: $(tail -c 600 "$WORK/node-$name.log")"
  fi
  # What the keys are: names with their digits folded, and how long one of them lives.
  local shapes
  shapes=$(rcli --scan | sed -E 's/[0-9]+/N/g' | sort | uniq -c | sort -rn | head -8 | tr -s ' \n' ' ' || true)
  [ -z "$shapes" ] || log "keys after '$name' (count, name with digits as N): $shapes"
  local one
  one=$(rcli --scan --pattern '*flood.*.q*' | head -1 || true)
  [ -z "$one" ] || log "a key of the flood: $one, TTL $(rcli ttl "$one") s"
  stop_pid "$NODE_PID"
  NODE_PID=""
}

OFF=SWITCHBOARD__LIMITS__CLIENT_COMMAND_RATE=1000000000
for c in $CASES; do
  case "$c" in
    alone) run_case alone "$LABEL" 0 0 ;;
    flood) run_case flood "$LABEL" "$FLOOD" 0 ;;
    window) run_case window "$LABEL" "$FLOOD" "$FLOOD_WINDOW" ;;
    flood-off | window-off)
      if ! knows_budget; then
        log "no $c case: $SWITCHBOARD_BIN does not know limits.client_command_rate"
      elif [ "$c" = flood-off ]; then
        run_case "$c" "$LABEL, budget off" "$FLOOD" 0 "$OFF"
      else
        run_case "$c" "$LABEL, budget off" "$FLOOD" "$FLOOD_WINDOW" "$OFF"
      fi
      ;;
    *) log "unknown case $c (alone, flood, flood-off, window, window-off)"; exit 2 ;;
  esac
done

[ -z "${RESULTS:-}" ] || cat "$OWN_RESULTS" >>"$RESULTS"
"$BENCH" table "$OWN_RESULTS"
log "results in $WORK"
if [ "$FAILED" = 1 ]; then
  log "a case failed"
  exit 1
fi
