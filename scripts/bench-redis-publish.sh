#!/usr/bin/env bash
# What one publication costs Redis, and how fast one node publishes through it (issue 9):
# for each build given, a fresh `redis-server` and one Switchboard node (Redis engine), both
# pinned to SERVER_CPU (Redis beside the server, as scripts/bench.sh does), the load on
# BENCH_CPU, two cases in turn:
#   ws    one WebSocket connection publishing with 256 publications in flight on one channel
#         (switchboard-bench fanout, one subscriber), 64 B payloads
#   http  POST /api/publish from `ab -k -c 64` (64 concurrent keep-alive requests), all on
#         one channel, 48 B of data
# and prints, per case: publications/s, Redis `fcall` µs per call and per publication
# (`INFO commandstats`), Redis CPU (used_cpu_user + used_cpu_sys delta) per publication,
# and the number of FCALLs. The publications are counted from Redis (the channels' offsets).
#
#   scripts/bench-redis-publish.sh BIN [BIN...]   each BIN a `switchboard` binary; label = its
#                                                 parent directory's parent unless LABELS="a b"
# Environment: DURATION=10, SERVER_CPU=0, BENCH_CPU=1, BENCH=path/to/switchboard-bench
# (default: target/release/switchboard-bench under CARGO_TARGET_DIR), CASES="ws http".
# Needs redis-server, redis-cli, curl and ab (apt-get install apache2-utils).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[ $# -ge 1 ] || { echo "usage: $0 SWITCHBOARD_BIN [SWITCHBOARD_BIN...]" >&2; exit 2; }
DURATION=${DURATION:-10}
SERVER_CPU=${SERVER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
CASES=${CASES:-"ws http"}
TARGET=${CARGO_TARGET_DIR:-target}
[[ "$TARGET" == /* ]] || TARGET=$ROOT/$TARGET
BENCH=${BENCH:-$TARGET/release/switchboard-bench}
read -r -a LABEL_LIST <<<"${LABELS:-}"
log() { echo "bench-redis-publish: $*" >&2; }
for tool in redis-server redis-cli curl ab "$BENCH"; do
  command -v "$tool" >/dev/null 2>&1 || { log "missing: $tool"; exit 1; }
done
source "$ROOT/scripts/pin.sh"
WORK=$ROOT/.tmp/bench/redis-publish-$(date +%Y%m%d-%H%M%S)-$$
mkdir -p "$WORK"
KEY=bench-key

PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

rinfo() { redis-cli -p "$RPORT" info "$1" | tr -d '\r'; }
redis_cpu() { rinfo cpu | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.6f", s}'; }
# "calls usec" of cmdstat_fcall (0 0 when none ran).
fcall_stats() {
  rinfo commandstats | awk -F'[:=,]' '/^cmdstat_fcall:/ {print $3, $5; f = 1} END {if (!f) print 0, 0}'
}
# The sum of every channel's offset under the prefix: the publications made.
published() {
  local sum=0 key off
  while read -r key; do
    [ -n "$key" ] || continue
    off=$(redis-cli -p "$RPORT" hget "$key" offset | tr -d '\r')
    sum=$((sum + ${off:-0}))
  done < <(redis-cli -p "$RPORT" --scan --pattern 'bench:meta:*')
  echo "$sum"
}

run_case() { # LABEL BIN CASE
  local label=$1 bin=$2 case=$3
  RPORT=$("$BENCH" free-port)
  local sport
  sport=$("$BENCH" free-port)
  "${PIN_SERVER[@]}" redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no \
    >"$WORK/redis-$label-$case.log" 2>&1 &
  local rpid=$!
  PIDS+=("$rpid")
  local i
  for ((i = 0; i < 200; i++)); do
    [ "$(redis-cli -p "$RPORT" ping 2>/dev/null)" = PONG ] && break
    sleep 0.05
  done
  env SWITCHBOARD__SERVER__BIND="127.0.0.1:$sport" SWITCHBOARD__ENGINE__KIND=redis \
    SWITCHBOARD__ENGINE__REDIS_URL="redis://127.0.0.1:$RPORT/0" SWITCHBOARD__ENGINE__PREFIX=bench \
    SWITCHBOARD__LIMITS__CLIENT_PUBLISH_RATE=10000000 SWITCHBOARD__API__KEYS=$KEY RUST_LOG=warn \
    "${PIN_SERVER[@]}" "$bin" >"$WORK/server-$label-$case.log" 2>&1 &
  local spid=$!
  PIDS+=("$spid")
  for ((i = 0; i < 200; i++)); do
    curl -fs "http://127.0.0.1:$sport/readyz" >/dev/null 2>&1 && break
    sleep 0.05
  done
  redis-cli -p "$RPORT" config resetstat >/dev/null
  local cpu0 pubs0 rate out
  cpu0=$(redis_cpu)
  pubs0=$(published)
  out=$WORK/$label-$case.out
  if [ "$case" = ws ]; then
    "${PIN_BENCH[@]}" "$BENCH" fanout --url "ws://127.0.0.1:$sport/ws" --subscribers 1 --channels 1 \
      --size 64 --window 256 --duration "$DURATION" --server-pid "$spid" "${SERVER_CPU_ARG[@]}" \
      --label "$label" >"$out" 2>"$out.err"
    rate=$(grep -o 'published [0-9]* ([0-9]*/s)' "$out" | head -1 | grep -o '([0-9]*' | tr -d '(')
  else
    printf '{"channel":"httpbench","data":"%s"}' "$(head -c 48 /dev/zero | tr '\0' x)" >"$WORK/body.json"
    "${PIN_BENCH[@]}" ab -q -k -c 64 -t "$DURATION" -n $((DURATION * 60000)) -p "$WORK/body.json" \
      -T application/json -H "Authorization: apikey $KEY" \
      "http://127.0.0.1:$sport/api/publish" >"$out" 2>"$out.err" || true
    rate=$(awk '/^Requests per second/ {printf "%.0f", $4}' "$out")
    # Failed counts responses of another length too (offsets grow a digit): Non-2xx matters.
    { grep -E '^(Complete|Failed|Non-2xx)' "$out" | tr -s ' \n' ' ' || true; echo; } >&2
  fi
  local cpu1 pubs1 calls usec
  cpu1=$(redis_cpu)
  pubs1=$(published)
  read -r calls usec < <(fcall_stats)
  local pubs=$((pubs1 - pubs0))
  awk -v l="$label" -v c="$case" -v r="${rate:-0}" -v p="$pubs" -v calls="$calls" -v us="$usec" \
    -v c0="$cpu0" -v c1="$cpu1" 'BEGIN {
      printf "%-10s %-4s %8s pubs/s  fcall %6.2f us/call %6.2f us/pub (%d calls, %d pubs)  redis cpu %6.2f us/pub\n",
        l, c, r, (calls ? us / calls : 0), (p ? us / p : 0), calls, p, (p ? (c1 - c0) * 1e6 / p : 0)
    }' | tee -a "$WORK/summary.txt"
  kill "$spid" "$rpid" 2>/dev/null || true
  wait "$spid" "$rpid" 2>/dev/null || true
}

n=0
for bin in "$@"; do
  label=${LABEL_LIST[$n]:-$(basename "$(dirname "$(dirname "$bin")")")}
  n=$((n + 1))
  for case in $CASES; do
    run_case "$label" "$bin" "$case"
  done
done
log "details in $WORK"
