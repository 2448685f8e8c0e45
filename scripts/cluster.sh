#!/usr/bin/env bash
# The topology of docker-compose.yml on loopback, without Docker: a redis-server, three
# Switchboard nodes using the Redis engine, and nginx in front of them with the same
# deploy/nginx/nginx.conf (its upstream addresses and log paths rewritten).
#
#   scripts/cluster.sh            start, print the URLs, run until Ctrl-C or SIGTERM
#   scripts/cluster.sh --check    start, run scripts/cluster_check.py through the load
#                                 balancer, stop everything; exit 0 when every check passed
#
# Environment:
#   LB_PORT          load balancer port (default 8080; with --check, a free port)
#   API_KEY          the nodes' API key (default dev-key)
#   SWITCHBOARD_BIN  the binary (default target/release/switchboard, built when missing)
#   KEEP_WORK=1      keep the work dir (configs, logs) after stopping
#   SWITCHBOARD__*   passed on to the nodes, except the keys set here (bind, node_id,
#                    engine.kind, engine.redis_url, engine.prefix, api.keys)
#
# Every process listens on 127.0.0.1 only. Redis gets a free port (never 6379, the machine's
# shared Redis) and runs without persistence; the nodes bind port 0 and the script reads the
# port from their `listening on` log line; the keys of each run have their own engine.prefix.
# Missing tools (redis-server, nginx, curl, python3) are installed with apt-get, without
# starting their system services. nginx runs as a child of this script with its own -p prefix,
# -c config, pid file and logs in the work dir.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MODE=run
case "${1:-}" in
  "") ;;
  --check) MODE=check ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--check]" >&2; exit 64 ;;
esac

API_KEY=${API_KEY:-dev-key}
BIN=${SWITCHBOARD_BIN:-$ROOT/target/release/switchboard}
NGINX_CONF_SRC=$ROOT/deploy/nginx/nginx.conf

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools ---------------------------------------------------------------------------------
install_missing() {
  local pkgs=()
  command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || pkgs+=(redis-tools)
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || pkgs+=(nginx)
  command -v curl >/dev/null 2>&1 || pkgs+=(curl)
  command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
  command -v setsid >/dev/null 2>&1 || pkgs+=(util-linux)
  [ ${#pkgs[@]} -eq 0 ] && return 0
  log "installing: ${pkgs[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # policy-rc.d exit 101: the packages' postinst scripts must not start a system redis or
  # nginx (on 6379 / 80). Only added when the machine has none, and removed afterwards.
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    added_policy=1
  fi
  local rc=0
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
    --no-install-recommends "${pkgs[@]}" >/dev/null || rc=$?
  [ "$added_policy" -eq 0 ] || $sudo rm -f "$policy"
  [ "$rc" -eq 0 ] || die "apt-get install ${pkgs[*]} failed"
}
install_missing
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [ ! -x "$BIN" ]; then
  [ -z "${SWITCHBOARD_BIN:-}" ] || die "SWITCHBOARD_BIN=$BIN is not an executable"
  log "building target/release/switchboard (cargo build --release)"
  cargo build --release --bin switchboard
fi

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_free() { # PORT: nothing listens on 127.0.0.1:PORT
  python3 -c 'import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

if [ -z "${LB_PORT:-}" ]; then
  if [ "$MODE" = check ]; then LB_PORT=$(free_port); else LB_PORT=8080; fi
fi
[[ "$LB_PORT" =~ ^[0-9]+$ ]] || die "LB_PORT=$LB_PORT is not a port number"
port_free "$LB_PORT" || die "port $LB_PORT is already in use on 127.0.0.1 (set LB_PORT)"

# --- processes and cleanup -----------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-cluster.XXXXXX")
# nginx's workers run as nobody when this runs as root: they must reach the temp paths.
chmod 755 "$WORK"
PIDS=()   # every child, in start order
NAMES=()
STOPPING=0

start_bg() { # NAME LOGFILE CMD...: a child in its own session (so Ctrl-C reaches only us)
  local name=$1 logfile=$2
  shift 2
  setsid "$@" >"$logfile" 2>&1 </dev/null &
  PIDS+=($!)
  NAMES+=("$name")
}

stop_pid() { # PID NAME SECONDS: SIGTERM, then SIGKILL after SECONDS
  local pid=$1 name=$2 secs=$3 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  log "$name did not stop in ${secs}s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  [ "$STOPPING" -eq 0 ] || return 0
  STOPPING=1
  local i
  # The reverse of the start order: nginx, the nodes (they drain), then Redis.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    stop_pid "${PIDS[$i]}" "${NAMES[$i]}" 20
  done
  if [ "${KEEP_WORK:-0}" = 1 ]; then
    log "stopped; work dir kept: $WORK"
  else
    rm -rf "$WORK"
    log "stopped"
  fi
}

show_logs() {
  local f
  for f in "$WORK"/*.log "$WORK"/nginx/*.log; do
    [ -s "$f" ] || continue
    log "--- last lines of ${f#"$WORK"/} ---"
    tail -n 20 "$f" >&2
  done
}

fail() { log "error: $*"; show_logs; exit 1; }

trap cleanup EXIT
# A signal is the normal way to stop the cluster (exit 0); it interrupts a --check (exit 1).
on_signal() {
  log "$1: stopping"
  if [ "$MODE" = check ]; then exit 1; else exit 0; fi
}
trap 'on_signal SIGINT' INT
trap 'on_signal SIGTERM' TERM

wait_until() { # SECONDS DESCRIPTION CMD...: poll CMD every 0.1 s
  local secs=$1 what=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  fail "$what: not ready after ${secs}s"
}

http_ok() { # URL: 2xx
  curl --noproxy '*' -fsS -o /dev/null --max-time 2 "$1"
}

# --- Redis ---------------------------------------------------------------------------------
REDIS_PORT=""
for attempt in 1 2 3; do
  port=$(free_port)
  [ "$port" != 6379 ] || continue
  mkdir -p "$WORK/redis"
  start_bg redis "$WORK/redis.log" redis-server --bind 127.0.0.1 --port "$port" \
    --save "" --appendonly no --dir "$WORK/redis" --daemonize no
  for ((i = 0; i < 50; i++)); do
    if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]; then
      REDIS_PORT=$port
      break
    fi
    kill -0 "${PIDS[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$REDIS_PORT" ] && break
  log "redis-server did not start on port $port (attempt $attempt)"
  stop_pid "${PIDS[-1]}" redis 5
  unset 'PIDS[-1]' 'NAMES[-1]'
  PIDS=("${PIDS[@]}")
  NAMES=("${NAMES[@]}")
done
[ -n "$REDIS_PORT" ] || fail "could not start redis-server"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
PREFIX="cluster-$(date +%s)-$$"

# --- three nodes ---------------------------------------------------------------------------
NODE_PORTS=()
NODE_PIDS=()
for n in 1 2 3; do
  start_bg "node$n" "$WORK/node$n.log" env \
    SWITCHBOARD__SERVER__BIND=127.0.0.1:0 \
    SWITCHBOARD__SERVER__NODE_ID="node$n" \
    SWITCHBOARD__ENGINE__KIND=redis \
    SWITCHBOARD__ENGINE__REDIS_URL="$REDIS_URL" \
    SWITCHBOARD__ENGINE__PREFIX="$PREFIX" \
    SWITCHBOARD__API__KEYS="$API_KEY" \
    RUST_LOG="${RUST_LOG:-info}" \
    "$BIN"
  NODE_PIDS+=("${PIDS[-1]}")
done
for n in 1 2 3; do
  pid=${NODE_PIDS[$((n - 1))]}
  port=""
  for ((i = 0; i < 300; i++)); do
    port=$(grep -o 'listening on 127\.0\.0\.1:[0-9]*' "$WORK/node$n.log" 2>/dev/null | head -n 1 | sed 's/.*://' || true)
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || fail "node$n exited at start"
    sleep 0.1
  done
  [ -n "$port" ] || fail "node$n: no 'listening on' line after 30s"
  NODE_PORTS+=("$port")
done
for n in 1 2 3; do
  wait_until 30 "node$n /readyz" http_ok "http://127.0.0.1:${NODE_PORTS[$((n - 1))]}/readyz"
done

# --- nginx ---------------------------------------------------------------------------------
mkdir -p "$WORK/nginx/logs"
NGX=$WORK/nginx
sed -e "s|server node1:8080;|server 127.0.0.1:${NODE_PORTS[0]};|" \
    -e "s|server node2:8080;|server 127.0.0.1:${NODE_PORTS[1]};|" \
    -e "s|server node3:8080;|server 127.0.0.1:${NODE_PORTS[2]};|" \
    -e "s|listen 8080;|listen 127.0.0.1:$LB_PORT;|" \
    -e "s|/dev/stdout|$NGX/access.log|" \
    -e "s|/dev/stderr|$NGX/error.log|" \
    -e "/^http {/a\\
    client_body_temp_path $NGX/client_body;\\
    proxy_temp_path $NGX/proxy;\\
    fastcgi_temp_path $NGX/fastcgi;\\
    uwsgi_temp_path $NGX/uwsgi;\\
    scgi_temp_path $NGX/scgi;" \
    "$NGINX_CONF_SRC" >"$NGX/nginx.conf"
# The rewrite must have found every line it replaces.
for want in "127.0.0.1:${NODE_PORTS[0]};" "127.0.0.1:${NODE_PORTS[1]};" "127.0.0.1:${NODE_PORTS[2]};" \
    "listen 127.0.0.1:$LB_PORT;" "$NGX/access.log" "$NGX/error.log" "proxy_temp_path"; do
  grep -qF "$want" "$NGX/nginx.conf" || fail "deploy/nginx/nginx.conf no longer has the line that becomes '$want'"
done
if grep -qE 'node[0-9]+:8080|/dev/std' "$NGX/nginx.conf"; then
  fail "deploy/nginx/nginx.conf has a line this script does not rewrite: $(grep -nE 'node[0-9]+:8080|/dev/std' "$NGX/nginx.conf" | head -n 1)"
fi
NGINX_ARGS=(-p "$NGX/" -c "$NGX/nginx.conf" -e "$NGX/error.log" -g "daemon off; pid $NGX/nginx.pid;")
"$NGINX" -t -q "${NGINX_ARGS[@]}" 2>"$WORK/nginx-test.log" || { cat "$WORK/nginx-test.log" >&2; fail "nginx -t refused the generated config"; }
start_bg nginx "$WORK/nginx.log" "$NGINX" "${NGINX_ARGS[@]}"
LB=http://127.0.0.1:$LB_PORT
wait_until 15 "nginx on $LB" http_ok "$LB/readyz"

NODE_URLS=()
for p in "${NODE_PORTS[@]}"; do NODE_URLS+=("http://127.0.0.1:$p"); done

cat >&2 <<EOF
[cluster] up (work dir $WORK)
  load balancer  $LB   ws://127.0.0.1:$LB_PORT/ws
  node1          ${NODE_URLS[0]}
  node2          ${NODE_URLS[1]}
  node3          ${NODE_URLS[2]}
  redis          $REDIS_URL   engine.prefix=$PREFIX
  API key        $API_KEY
  logs           $WORK/{redis,node1,node2,node3}.log  $NGX/{access,error}.log
EOF

if [ "$MODE" = check ]; then
  args=(--lb "$LB" --key "$API_KEY")
  for u in "${NODE_URLS[@]}"; do args+=(--node "$u"); done
  if python3 "$ROOT/scripts/cluster_check.py" "${args[@]}"; then
    log "check passed"
    exit 0
  fi
  show_logs
  log "check FAILED"
  exit 1
fi

log "Ctrl-C (or SIGTERM) stops everything"
# Until a signal, or until a child dies on its own.
set +e
wait -n "${PIDS[@]}"
rc=$?
for i in "${!PIDS[@]}"; do
  kill -0 "${PIDS[$i]}" 2>/dev/null || log "${NAMES[$i]} exited on its own (status $rc)"
done
show_logs
exit 1
