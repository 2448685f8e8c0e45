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
# With --redis-cluster, each build runs against one plain Redis (the baseline) and then
# against a three-primary Redis Cluster (scripts/redis-cluster.sh: six redis-server
# processes, all pinned to SERVER_CPU) with the node on engine.kind = redis_cluster, and the
# load is spread: the ws case publishes round-robin on CHANNELS=1000 channels (1000
# subscribers, one each), the http case runs one `ab -c 22` per shard at once, each on a
# channel hashing to that shard (scripts/redis-slots.py pick). Per primary it prints the
# FCALLs, the publications and channels it holds, and its CPU per publication; the replicas'
# CPU is printed apart (they share the core, but a shard's cost is its primary's).
#
#   scripts/bench-redis-publish.sh [--redis-cluster] BIN [BIN...]
#                                                 each BIN a `switchboard` binary; label = its
#                                                 parent directory's parent unless LABELS="a b"
# Environment: DURATION=10, SERVER_CPU=0, BENCH_CPU=1, BENCH=path/to/switchboard-bench
# (default: target/release/switchboard-bench under CARGO_TARGET_DIR), CASES="ws http",
# CHANNELS (ws case; 1, or 1000 with --redis-cluster), BACKENDS ("redis", or "redis cluster"
# with --redis-cluster). Needs redis-server, redis-cli, curl and ab (apt-get install
# apache2-utils); python3 and setsid with --redis-cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CLUSTER=0
if [ "${1:-}" = --redis-cluster ]; then
  CLUSTER=1
  shift
fi
[ $# -ge 1 ] || { echo "usage: $0 [--redis-cluster] SWITCHBOARD_BIN [SWITCHBOARD_BIN...]" >&2; exit 2; }
if [ "$CLUSTER" = 1 ]; then
  CHANNELS=${CHANNELS:-1000}
  BACKENDS=${BACKENDS:-"redis cluster"}
  mapfile -t HTTP_CHANNELS < <(python3 scripts/redis-slots.py pick httpbench)
else
  CHANNELS=${CHANNELS:-1}
  BACKENDS=${BACKENDS:-redis}
  HTTP_CHANNELS=(httpbench)
fi
DURATION=${DURATION:-10}
SERVER_CPU=${SERVER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
CASES=${CASES:-"ws http"}
TARGET=${CARGO_TARGET_DIR:-target}
[[ "$TARGET" == /* ]] || TARGET=$ROOT/$TARGET
BENCH=${BENCH:-$TARGET/release/switchboard-bench}
read -r -a LABEL_LIST <<<"${LABELS:-}"
log() { echo "bench-redis-publish: $*" >&2; }
for tool in redis-server redis-cli curl ab "$BENCH" $([ "$CLUSTER" = 0 ] || echo python3 setsid); do
  command -v "$tool" >/dev/null 2>&1 || { log "missing: $tool"; exit 1; }
done
source "$ROOT/scripts/pin.sh"
WORK=$ROOT/.tmp/bench/redis-publish-$(date +%Y%m%d-%H%M%S)-$$
mkdir -p "$WORK"
KEY=bench-key

PIDS=()
CLUSTER_DIR=
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -z "$CLUSTER_DIR" ] || bash scripts/redis-cluster.sh stop "$CLUSTER_DIR" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

rinfo() { redis-cli -p "$1" info "$2" | tr -d '\r'; } # PORT SECTION
redis_cpu() { rinfo "$1" cpu | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.6f", s}'; }
# PORT: "calls usec" of cmdstat_fcall (0 0 when none ran).
fcall_stats() {
  rinfo "$1" commandstats | awk -F'[:=,]' '/^cmdstat_fcall:/ {print $3, $5; f = 1} END {if (!f) print 0, 0}'
}
# PORT: "publications channels": the sum of the offsets of the channels under the prefix this
# Redis holds (one pipelined HGET each), and how many channels that is.
published() {
  redis-cli -p "$1" --scan --pattern 'bench:meta:*' | sed 's/^\(.*\)$/HGET \1 offset/' |
    redis-cli -p "$1" | tr -d '\r' | awk '{s += $1; n++} END {printf "%d %d\n", s, n}'
}

# BACKEND LOGFILE: one Redis or the cluster, pinned to SERVER_CPU. Sets PRIMARIES (the ports
# that take the writes), REPLICAS and ENGINE_ENV (the node's engine settings).
start_redis() {
  local backend=$1 logfile=$2 urls port i
  REPLICAS=()
  if [ "$backend" = cluster ]; then
    CLUSTER_DIR=${logfile%.log}
    urls=$("${PIN_SERVER[@]}" bash scripts/redis-cluster.sh start "$CLUSTER_DIR" 2>>"$logfile")
    PRIMARIES=()
    for port in $(tr ',' '\n' <<<"$urls" | sed 's/.*://'); do
      if rinfo "$port" replication | grep -qx role:master; then PRIMARIES+=("$port"); else REPLICAS+=("$port"); fi
    done
    ENGINE_ENV=(SWITCHBOARD__ENGINE__KIND=redis_cluster SWITCHBOARD__ENGINE__REDIS_URLS="$urls")
    return 0
  fi
  port=$("$BENCH" free-port)
  "${PIN_SERVER[@]}" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    >"$logfile" 2>&1 &
  PIDS+=("$!")
  for ((i = 0; i < 200; i++)); do
    [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && break
    sleep 0.05
  done
  PRIMARIES=("$port")
  ENGINE_ENV=(SWITCHBOARD__ENGINE__KIND=redis SWITCHBOARD__ENGINE__REDIS_URL="redis://127.0.0.1:$port/0")
}

stop_all() { # the node and the plain Redis, then the cluster
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
  if [ -n "$CLUSTER_DIR" ]; then
    bash scripts/redis-cluster.sh stop "$CLUSTER_DIR" 2>/dev/null || true
    CLUSTER_DIR=
  fi
}

# SPORT: the http case's load, one `ab` per channel of HTTP_CHANNELS at once (64 connections
# in all); prints the requests per second summed.
http_load() {
  local sport=$1 k=0 ch outs=() pids=() conc=$((64 / ${#HTTP_CHANNELS[@]}))
  for ch in "${HTTP_CHANNELS[@]}"; do
    printf '{"channel":"%s","data":"%s"}' "$ch" "$(head -c 48 /dev/zero | tr '\0' x)" >"$WORK/body-$k.json"
    "${PIN_BENCH[@]}" ab -q -k -c "$conc" -t "$DURATION" -n $((DURATION * 60000)) -p "$WORK/body-$k.json" \
      -T application/json -H "Authorization: apikey $KEY" \
      "http://127.0.0.1:$sport/api/publish" >"$out.$k" 2>"$out.$k.err" &
    pids+=("$!")
    outs+=("$out.$k")
    k=$((k + 1))
  done
  wait "${pids[@]}" || true
  # Failed counts responses of another length too (offsets grow a digit): Non-2xx matters.
  for k in "${outs[@]}"; do
    { grep -E '^(Complete|Failed|Non-2xx)' "$k" | tr -s ' \n' ' ' || true; echo; } >&2
  done
  cat "${outs[@]}" | awk '/^Requests per second/ {s += $4} END {printf "%.0f", s}'
}

run_case() { # LABEL BIN BACKEND CASE
  local label=$1 bin=$2 backend=$3 case=$4 tag="$1-$3-$4"
  local sport i port
  sport=$("$BENCH" free-port)
  start_redis "$backend" "$WORK/redis-$tag.log"
  env SWITCHBOARD__SERVER__BIND="127.0.0.1:$sport" "${ENGINE_ENV[@]}" SWITCHBOARD__ENGINE__PREFIX=bench \
    SWITCHBOARD__LIMITS__CLIENT_PUBLISH_RATE=10000000 SWITCHBOARD__API__KEYS=$KEY RUST_LOG=warn \
    "${PIN_SERVER[@]}" "$bin" >"$WORK/server-$tag.log" 2>&1 &
  local spid=$!
  PIDS+=("$spid")
  for ((i = 0; i < 200; i++)); do
    curl -fs "http://127.0.0.1:$sport/readyz" >/dev/null 2>&1 && break
    sleep 0.05
  done
  local -A cpu0=() pubs0=()
  for port in "${PRIMARIES[@]}" "${REPLICAS[@]}"; do
    redis-cli -p "$port" config resetstat >/dev/null
    cpu0[$port]=$(redis_cpu "$port")
  done
  for port in "${PRIMARIES[@]}"; do read -r "pubs0[$port]" _ < <(published "$port"); done
  local rate out=$WORK/$tag.out subs=$((CHANNELS > 1 ? CHANNELS : 1))
  if [ "$case" = ws ]; then
    "${PIN_BENCH[@]}" "$BENCH" fanout --url "ws://127.0.0.1:$sport/ws" --subscribers "$subs" \
      --channels "$CHANNELS" --size 64 --window 256 --duration "$DURATION" --server-pid "$spid" \
      "${SERVER_CPU_ARG[@]}" --label "$label" >"$out" 2>"$out.err"
    rate=$(grep -o 'published [0-9]* ([0-9]*/s)' "$out" | head -1 | grep -o '([0-9]*' | tr -d '(')
    grep -o 'lost [0-9]*' "$out" | head -1 >&2 || true
  else
    rate=$(http_load "$sport")
  fi
  # One line per primary ("shard"), then the total; the replicas' CPU after it.
  local rows=$WORK/$tag.rows calls usec pubs chans rcpu=0
  : >"$rows"
  for port in "${PRIMARIES[@]}"; do
    read -r calls usec < <(fcall_stats "$port")
    read -r pubs chans < <(published "$port")
    echo "$port $calls $usec $((pubs - pubs0[$port])) $chans ${cpu0[$port]} $(redis_cpu "$port")" >>"$rows"
  done
  for port in "${REPLICAS[@]}"; do
    rcpu=$(awk -v a="$rcpu" -v c0="${cpu0[$port]}" -v c1="$(redis_cpu "$port")" 'BEGIN {printf "%.6f", a + c1 - c0}')
  done
  awk -v l="$label" -v b="$backend" -v c="$case" -v r="${rate:-0}" -v rcpu="$rcpu" -v nrep="${#REPLICAS[@]}" '
    function line(name, calls, us, p, ch, cpu) {
      printf "%-10s %-7s %-4s %-9s %8s pubs/s  fcall %6.2f us/call %6.2f us/pub (%d calls, %d pubs, %d channels)  redis cpu %6.2f us/pub\n",
        l, b, c, name, r, (calls ? us / calls : 0), (p ? us / p : 0), calls, p, ch, (p ? cpu * 1e6 / p : 0)
    }
    { n++; calls += $2; us += $3; p += $4; ch += $5; cpu += $7 - $6
      if (b == "cluster") line("shard" n, $2, $3, $4, $5, $7 - $6) }
    END {
      line(b == "cluster" ? "all" : "-", calls, us, p, ch, cpu)
      if (nrep) printf "%-10s %-7s %-4s %-9s replicas (%d) cpu %6.2f us per publication of the cluster\n", l, b, c, "", nrep, (p ? rcpu * 1e6 / p : 0)
    }' "$rows" | tee -a "$WORK/summary.txt"
  stop_all
}

log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
n=0
for bin in "$@"; do
  label=${LABEL_LIST[$n]:-$(basename "$(dirname "$(dirname "$bin")")")}
  n=$((n + 1))
  for backend in $BACKENDS; do
    for case in $CASES; do
      run_case "$label" "$bin" "$backend" "$case"
      log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    done
  done
done
log "details in $WORK"
