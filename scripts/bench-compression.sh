#!/usr/bin/env bash
# permessage-deflate (RFC 7692) measured (issue 12): Switchboard beside a NATS server whose
# WebSocket listener has `compression: true`, on loopback, with bench/switchboard-bench as load
# generator (`--compress` offers the extension, `--payload json` publishes JSON order records
# with pseudo-random values). Writes the "Compression" section of docs/benchmarks.md and keeps
# the rest of that file as it is (scripts/bench.sh, which rewrites the file, keeps this section).
#
#   scripts/bench-compression.sh          about 5 minutes once built:
#     fanout   deliveries/s at 1 KiB JSON, 100 and 1000 subscribers on one channel, off and on
#              (`--inflate shared`: the load generator inflates identical compressed messages
#              once, so that its one core is not what limits a compressed run); REPEAT rounds,
#              first, as the cases most disturbed by other work on the machine
#     bytes    bytes read off the socket per delivery, 64 B / 1 KiB / 16 KiB JSON, off and on
#              (latency runs: 20 subscribers, 100 publications/s, so every delivery is a
#              message of its own)
#     idle     server memory per idle subscribed connection, 10000 connections, off and on
#
# Environment: SERVERS="switchboard nats" (a subset to run), CASES="bytes fanout idle",
# QUIET_WAIT=20 / QUIET_BUDGET=120 (seconds to wait for the server's core to be idle before a
# case / in all),
# DURATION=5 (seconds per fan-out run), REPEAT=3 (runs of each fan-out case), BYTES_DURATION=3, IDLE=10000 (connections),
# PROFILE=release|debug, OUT=docs/benchmarks.md (NONE: write no document), SERVER_CPU=0,
# BENCH_CPU=1. The server runs pinned to SERVER_CPU (one worker; nats-server with
# GOMAXPROCS=1) and the load generator to BENCH_CPU, as in scripts/bench.sh, when the machine
# has two cores and taskset exists. nats-server missing: its cases are skipped with a line.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

[ $# = 0 ] || { echo "usage: $0   (env: SERVERS CASES DURATION BYTES_DURATION IDLE PROFILE OUT)" >&2; exit 2; }
SERVERS=${SERVERS:-"switchboard nats"}
CASES=${CASES:-"bytes fanout idle"}
DURATION=${DURATION:-5}
REPEAT=${REPEAT:-3}
BYTES_DURATION=${BYTES_DURATION:-3}
IDLE=${IDLE:-10000}
PROFILE=${PROFILE:-release}
OUT=${OUT:-docs/benchmarks.md}
SERVER_CPU=${SERVER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}

log() { echo "bench-compression: $*" >&2; }

WORK=$ROOT/.tmp/bench/compression-$(date +%Y%m%d-%H%M%S)-$$
mkdir -p "$WORK"
RESULTS=$WORK/results.jsonl
PROBLEMS=$WORK/problems.txt
: >"$RESULTS"
: >"$PROBLEMS"

# --- build ------------------------------------------------------------------------------
# Two builds, not one, as in scripts/bench.sh: built together, the packages' features unify.
TARGET=${CARGO_TARGET_DIR:-target}
[[ "$TARGET" == /* ]] || TARGET=$ROOT/$TARGET
cargo_profile=()
[ "$PROFILE" = release ] && cargo_profile=(--release)
cargo build "${cargo_profile[@]}" --bin switchboard
cargo build "${cargo_profile[@]}" -p switchboard-bench
BIN=$TARGET/$PROFILE
BENCH=$BIN/switchboard-bench

# --- pinning and limits -------------------------------------------------------------------
source "$ROOT/scripts/pin.sh"
want_fds=$((IDLE * 2 + 1000))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$want_fds" ]; then
  ulimit -Hn "$want_fds" 2>/dev/null || log "cannot raise the hard file limit to $want_fds (have $(ulimit -Hn))"
fi
ulimit -n "$(ulimit -Hn)"

# --- servers ------------------------------------------------------------------------------
SERVER_PID=""
SERVER_URL=""
SERVER_PROTO=""
SERVER_LOG=""

wait_port() { # port timeout_s
  local i
  for ((i = 0; i < $2 * 20; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  return 1
}

# Defaults ([compression] enabled = true, min_size = 256) except the publish rate and the
# connection limit, as in scripts/bench.sh.
start_switchboard() {
  SERVER_LOG=$WORK/switchboard-$1.log
  local env=(
    SWITCHBOARD__SERVER__BIND=127.0.0.1:0
    SWITCHBOARD__LIMITS__CLIENT_PUBLISH_RATE=10000000
    SWITCHBOARD__LIMITS__MAX_CONNECTIONS=200000
    RUST_LOG="warn,switchboard::startup=info"
  )
  [ "$PINNED" = 1 ] && env+=(SWITCHBOARD__SERVER__WORKERS=1 SWITCHBOARD__SERVER__BROKER_SHARDS=1)
  env "${env[@]}" "${PIN_SERVER[@]}" "$BIN/switchboard" >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  local i addr=""
  for ((i = 0; i < 200; i++)); do
    addr=$(grep -o 'listening on [0-9.:]*' "$SERVER_LOG" 2>/dev/null | head -1 | cut -d' ' -f3 || true)
    [ -n "$addr" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$addr" ] || { log "switchboard did not start:"; cat "$SERVER_LOG" >&2; return 1; }
  SERVER_URL="ws://$addr/ws"
  SERVER_PROTO=switchboard
}

# nats-server compresses for a client that offers permessage-deflate only with this on.
start_nats() {
  SERVER_LOG=$WORK/nats-$1.log
  local port wsport conf=$WORK/nats-$1.conf
  port=$("$BENCH" free-port)
  wsport=$("$BENCH" free-port)
  while [ "$wsport" = "$port" ]; do wsport=$("$BENCH" free-port); done
  cat >"$conf" <<EOF
websocket {
  listen: "127.0.0.1:$wsport"
  no_tls: true
  compression: true
}
max_connections: 200000
EOF
  local gomax=()
  [ "$PINNED" = 1 ] && gomax=(GOMAXPROCS=1)
  env "${gomax[@]}" "${PIN_SERVER[@]}" nats-server -a 127.0.0.1 -p "$port" -c "$conf" >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  wait_port "$wsport" 10 || { log "nats-server did not start:"; cat "$SERVER_LOG" >&2; return 1; }
  SERVER_URL="ws://127.0.0.1:$wsport/"
  SERVER_PROTO=nats
}

stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  local i
  for ((i = 0; i < 60; i++)); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
trap 'stop_server || true' EXIT

available() {
  case "$1" in
    switchboard) return 0 ;;
    nats) command -v nats-server >/dev/null 2>&1 || { log "SKIP nats: nats-server not installed"; return 1; } ;;
    *) log "unknown server $1"; return 1 ;;
  esac
}

# busy_pct CPU: how busy that core was over half a second (/proc/stat), in percent.
busy_pct() {
  local a b
  a=$(awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat)
  sleep 0.5
  b=$(awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[2] - x[2]; print (t > 0 ? int(100 * (y[1] - x[1]) / t) : 0) }'
}
# On a machine shared with other work, wait (up to QUIET_WAIT seconds per case, QUIET_BUDGET
# in all) for the server's core to be quiet before a case; the "other load" column still
# says what happened during it.
QUIET_WAIT=${QUIET_WAIT:-20}
QUIET_BUDGET=${QUIET_BUDGET:-120}
QUIET_SPENT=0
wait_quiet() {
  [ "$PINNED" = 1 ] || return 0
  local waited=0 busy
  while busy=$(busy_pct "$SERVER_CPU") && [ "$busy" -gt 15 ]; do
    if [ "$waited" -ge "$QUIET_WAIT" ] || [ "$QUIET_SPENT" -ge "$QUIET_BUDGET" ]; then
      log "CPU $SERVER_CPU is ${busy}% busy with other work; running anyway"
      return 0
    fi
    sleep 1.5
    waited=$((waited + 2))
    QUIET_SPENT=$((QUIET_SPENT + 2))
  done
}

CASE_NO=0
# run_case SERVER SUBCOMMAND ARGS...: a fresh server, one load-generator run, then stop.
run_case() {
  local server=$1
  shift
  CASE_NO=$((CASE_NO + 1))
  wait_quiet
  case "$server" in
    switchboard) start_switchboard "$CASE_NO" ;;
    nats) start_nats "$CASE_NO" ;;
  esac || { echo "$server: failed to start for: $*" >>"$PROBLEMS"; return 0; }
  local out=$WORK/case-$CASE_NO.out rc=0
  "${PIN_BENCH[@]}" "$BENCH" "$@" --url "$SERVER_URL" --protocol "$SERVER_PROTO" \
    --label "$server" --server-pid "$SERVER_PID" "${SERVER_CPU_ARG[@]}" >"$out" 2>"$WORK/case-$CASE_NO.err" || rc=$?
  grep -v '^{' "$out" >&2 || true
  grep '^{' "$out" >>"$RESULTS" || true
  if [ "$rc" != 0 ]; then
    echo "$server: \`switchboard-bench $*\` exited $rc: $(tail -c 400 "$WORK/case-$CASE_NO.err" | tr '\n' ' ')" >>"$PROBLEMS"
    cat "$WORK/case-$CASE_NO.err" >&2
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "$server: the server process exited during \`switchboard-bench $*\`; log tail: $(tail -c 400 "$SERVER_LOG" | tr '\n' ' ')" >>"$PROBLEMS"
  fi
  stop_server
}

# --- the cases ----------------------------------------------------------------------------
T0=$(date +%s)
has_case() { [[ " $CASES " == *" $1 "* ]]; }
RUN_SERVERS=()
for server in $SERVERS; do
  if available "$server"; then RUN_SERVERS+=("$server"); else echo "$server: skipped (not available)" >>"$PROBLEMS"; fi
done
if has_case fanout; then
  # The 1024 B cases of scripts/bench.sh's fan-out matrix, with JSON payloads; REPEAT rounds,
  # interleaved, so that a burst of other work on the machine spoils one run of a case, not
  # all (the report takes the run with the least other load on the server's core).
  for ((round = 1; round <= REPEAT; round++)); do
    for subs in 100 1000; do
      for server in "${RUN_SERVERS[@]}"; do
        for compress in "" --compress; do
          log "=== fanout $round/$REPEAT: $server $subs subscribers ${compress:-(plain)}"
          run_case "$server" fanout --subscribers "$subs" --channels 1 --size 1024 --payload json \
            --duration "$DURATION" --window 64 --inflate shared $compress
        done
      done
    done
  done
fi
if has_case bytes; then
  for size in 64 1024 16384; do
    for server in "${RUN_SERVERS[@]}"; do
      for compress in "" --compress; do
        log "=== bytes: $server ${size} B JSON ${compress:-(plain)}"
        # 100 publications/s: each delivery goes out as a message of its own.
        run_case "$server" latency --subscribers 20 --channels 1 --size "$size" --payload json \
          --rate 100 --duration "$BYTES_DURATION" --window 1000 --drain 3 $compress
      done
    done
  done
fi
if has_case idle; then
  for server in "${RUN_SERVERS[@]}"; do
    for compress in "" --compress; do
      log "=== idle: $server $IDLE connections ${compress:-(plain)}"
      run_case "$server" idle --connections "$IDLE" --subscribe --settle 2 $compress
    done
  done
fi
ELAPSED=$(($(date +%s) - T0))

"$BENCH" compression "$RESULTS" >"$WORK/tables.md"
cat "$WORK/tables.md"
"$BENCH" problems "$RESULTS" >>"$PROBLEMS"
if [ -s "$PROBLEMS" ]; then
  log "problems:"
  cat "$PROBLEMS" >&2
fi
log "results in $WORK (${ELAPSED}s)"
[ "$OUT" != NONE ] || exit 0

# --- the "Compression" section of docs/benchmarks.md ----------------------------------------
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain 2>/dev/null)" ] || commit="$commit (with uncommitted changes)"
nats_version=$(nats-server --version 2>/dev/null | sed 's/^nats-server: //' || echo "not installed")
pinning="server on CPU $SERVER_CPU, load generator on CPU $BENCH_CPU"
[ "$PINNED" = 1 ] || pinning="not pinned"
SECTION=$WORK/section.md
{
  cat <<EOF
<!-- compression:start (written by scripts/bench-compression.sh; scripts/bench.sh keeps it) -->
## Compression

Issue 12: permessage-deflate (RFC 7692). Generated by \`scripts/bench-compression.sh\` on
$(date -u '+%Y-%m-%d %H:%M UTC') in ${ELAPSED} s, at commit $commit (a run of its own, not
the run of the tables above; same machine, $pinning, \`--$PROFILE\` builds, a fresh server
per case). Switchboard runs with its defaults (\`[compression] enabled = true\`,
\`min_size = 256\`) and the two overrides above; nats-server ($nats_version) with
\`compression: true\` in its \`websocket\` block.

With \`--compress\` every subscriber (and idle connection) offers
\`permessage-deflate; client_no_context_takeover; server_no_context_takeover\` and the run fails
unless the server accepts it; both servers did, answering with no context takeover either way,
so every message is compressed on its own. The load generator inflates what comes compressed
(RSV1) as it arrives: every message in the bytes cases (\`--inflate each\`, what a client
pays), and in the fan-out cases each distinct compressed message once per load-generator
thread (\`--inflate shared\`: a message whose compressed bytes equal one inflated recently is
copied, not inflated again). Inflating every message cost the load generator about 10 µs
per 1 KiB message in a fan-out run here (miniz_oxide), so its one core would cap a compressed
fan-out near 90 k deliveries/s whatever the server does; Switchboard sends one compressed form of a
publication to all its subscribers, so it gets one inflate per publication, nats-server
compresses per connection and gets copies only where its bytes come out the same. The
publisher's connection stays plain in every case.

Payloads are \`--payload json\`: an object whose first field is the stamp the subscribers read,
then a list of order records (ids, account numbers, names, e-mail addresses, currency pairs,
prices and timestamps drawn from a pseudo-random sequence) and a line of words to reach the
size exactly (bench/switchboard-bench/src/wire/json.rs). Each publication is one message of
its own to each subscriber in the bytes cases (100 publications/s); in the fan-out cases
nats-server puts several \`MSG\`s in one WebSocket message (and compresses them together).
Each fan-out case ran $REPEAT times for ${DURATION} s, the cases interleaved; its row is the run
whose server core had the least other load, the last column lists every run.
How much deflate saves depends on the payload: this one's 1 KiB message (Switchboard's
\`message\` frame around it) came out 2.0× smaller at level 3 and still 2.0× at level 9 when
checked with flate2 outside this script, while the records of src/deflate's own test (shorter
ids, fewer distinct values) reach 2.5× at level 3; at 16 KiB this payload gives 4.1× at level
3 and 4.3× at level 9.

EOF
  if [ -s "$WORK/tables.md" ]; then cat "$WORK/tables.md"; else echo "Nothing measured in this run."; echo; fi
  cat <<'EOF'
What the columns mean (the others as in the tables above):

- **message B, as the client reads it**: a delivery's WebSocket message after inflating
  (Switchboard's `message` frame around the payload; NATS's `MSG` line and payload).
- **on the wire**: bytes the subscribers read off their sockets, frame headers included, per
  delivery (every byte after the set-up, divided by the deliveries). **fewer bytes**: off ÷
  deflate. **messages compressed**: the share of the delivered messages that came with RSV1
  (Switchboard leaves messages under `min_size` uncompressed).
- **bench CPU µs per delivery**: the load generator's CPU time (publisher and subscribers,
  `getrusage`) over the run ÷ deliveries. At 100 publications/s most of it is waking up for
  each delivery, and the difference between off and deflate (inflating, what a client pays)
  is within that noise; in the fan-out cases it counts one inflate per distinct message
  (see above).
- **× same server, off**: the compressed run's deliveries/s ÷ the same server's without
  compression in the same case; **× nats, deflate**: ÷ nats-server's compressed run. A
  **bench CPU** near 100% means the load generator, not the server, was the limit (the row
  is a lower bound); **other load** above a few percent means other programs took part of
  the server's core during the row.
- **KiB per connection**: as above: server RSS growth ÷ connections, 2 s after the last was
  ready, each connection subscribed and, with deflate, having negotiated the extension
  (Switchboard keeps no compression state per connection; nats-server's growth with deflate
  is its per-connection compression state).

EOF
  echo "Problems seen in this run:"
  echo
  if [ -s "$PROBLEMS" ]; then
    sed 's/^/- /' "$PROBLEMS"
  else
    echo "- None: every run delivered every confirmed publication and kept every connection."
  fi
  cat <<'EOF'

Repeating (about 5 minutes once built, more while other work keeps the server's core busy;
rewrites this section only):

```sh
scripts/bench-compression.sh
SERVERS=switchboard CASES="bytes idle" OUT=NONE scripts/bench-compression.sh   # a subset, no document
target/release/switchboard-bench fanout --url ws://127.0.0.1:8080/ws --subscribers 100 --size 1024 --payload json --compress --inflate shared
target/release/switchboard-bench latency --url ws://127.0.0.1:8080/ws --subscribers 20 --size 16384 --payload json --rate 100 --compress
target/release/switchboard-bench idle --url ws://127.0.0.1:8080/ws --connections 10000 --subscribe --compress
```
<!-- compression:end -->
EOF
} >"$SECTION"

# Replace the section if the document has one, else put it before bench.sh's "Problems".
python3 - "$OUT" "$SECTION" <<'PY'
import re, sys
out, section = sys.argv[1], open(sys.argv[2]).read()
try:
    doc = open(out).read()
except FileNotFoundError:
    doc = "# Benchmarks\n\n"
pattern = re.compile(r"<!-- compression:start.*?<!-- compression:end -->\n", re.S)
if pattern.search(doc):
    doc = pattern.sub(lambda _: section, doc, count=1)
elif "\n## Problems seen in this run" in doc:
    doc = doc.replace("\n## Problems seen in this run", "\n" + section + "\n## Problems seen in this run", 1)
else:
    doc = doc.rstrip("\n") + "\n\n" + section
open(out, "w").write(doc)
PY
log "wrote the Compression section of $OUT"
