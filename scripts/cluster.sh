#!/usr/bin/env bash
# The topology of docker-compose.yml on loopback, without Docker: a redis-server, three
# Switchboard nodes using the Redis engine, and nginx in front of them with the same
# deploy/nginx/nginx.conf (its upstream addresses and log paths rewritten).
#
#   scripts/cluster.sh              start, print the URLs, run until Ctrl-C or SIGTERM; a node
#                                   that exits is reported and the rest keeps running
#   scripts/cluster.sh --check      start, run scripts/cluster_check.py through the load
#                                   balancer (failover included), stop everything; exit 0 when
#                                   every check passed
#   --redis-cluster                 (with either) a Redis Cluster instead of the one Redis, as
#                                   the compose profile `redis-cluster`: six redis-server
#                                   processes, 3 primaries and 3 replicas
#                                   (scripts/redis-cluster.sh), the nodes on engine
#                                   redis_cluster; --check then also SIGKILLs the primary of a
#                                   channel and checks its subscriber misses nothing unnoticed
#
# From another terminal, on the running cluster:
#
#   scripts/cluster.sh status       every process: up or down, pid, port (Redis Cluster
#                                   members: their role)
#   scripts/cluster.sh kill NODE    SIGKILL node1, node2 or node3: a crash
#   scripts/cluster.sh stop NODE    SIGTERM: a graceful drain (clients get `disconnect` 1001)
#   scripts/cluster.sh start NODE   start a stopped node again on its port; returns once ready
#                                   (with --redis-cluster, NODE may also be a Redis member,
#                                   redis1..redis6: kill is a crash, its replica takes over in
#                                   about 4 s; start waits for that takeover, since the member
#                                   comes back empty, then returns once it has joined)
#   scripts/cluster.sh follow CHANNEL
#                                   a subscriber through the load balancer that prints what it
#                                   receives and, when its connection drops, reconnects with
#                                   `since` and says on which node it landed
#
# Environment:
#   LB_PORT          load balancer port (default 8080; with --check, a free port)
#   API_KEY          the nodes' API key (default dev-key)
#   SWITCHBOARD_BIN  the binary (default target/release/switchboard, built when missing)
#   CLUSTER_DIR      where the commands above find the running cluster (default .tmp/cluster
#                    in this checkout: a symlink to the work dir that the cluster makes while
#                    it runs). Set it to run a second cluster from the same checkout.
#   KEEP_WORK=1      keep the work dir (configs, logs) after stopping
#   SWITCHBOARD__*   passed on to the nodes, except the keys set here (bind, node_id,
#                    engine.kind, engine.redis_url or engine.redis_urls, engine.prefix,
#                    api.keys)
#
# Every process listens on 127.0.0.1 only. Redis gets a free port (never 6379, the machine's
# shared Redis) and runs without persistence; the nodes bind port 0 and the script reads the
# port from their `listening on` log line (a node started again binds the same port, the one
# nginx sends to); the keys of each run have their own engine.prefix. Missing tools
# (redis-server, nginx, curl, python3) are installed with apt-get, without starting their
# system services. nginx runs as a child of this script with its own -p prefix, -c config,
# pid file and logs in the work dir. `--check` does not register in CLUSTER_DIR, so it can run
# beside a cluster started by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

NODES=(node1 node2 node3)

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() {
  echo "usage: $0 [--check] [--redis-cluster] | status | kill NODE | stop NODE | start NODE | follow CHANNEL" >&2
  exit 64
}

MODE=run
ENGINE=redis # or redis_cluster
ARG=""
case "${1:-}" in
  status) MODE=status ;;
  kill|stop|start|follow)
    MODE=$1
    [ $# -eq 2 ] || usage
    ARG=$2
    ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *)
    for a in "$@"; do
      case "$a" in
        --check) MODE=check ;;
        --redis-cluster) ENGINE=redis_cluster ;;
        *) usage ;;
      esac
    done
    ;;
esac
[ "$MODE" != status ] || [ $# -eq 1 ] || usage

# Redis on loopback (one server or a six-member cluster) and the helpers free_port,
# port_free, start_bg and stop_pid.
# shellcheck source=scripts/redis-cluster.sh
. "$ROOT/scripts/redis-cluster.sh"

CLUSTER_DIR=${CLUSTER_DIR:-$ROOT/.tmp/cluster}

# =============================================================================================
# Commands on a running cluster. It is found through CLUSTER_DIR: cluster.pid (the process
# that runs it), cluster.env (ports, URLs), NODE.port, NODE.pid (only while NODE runs: the
# cluster process writes it when it starts the node and removes it once the node has exited)
# and requests/ (start requests, which the cluster process picks up on SIGUSR1, since the
# nodes are its children). Redis Cluster members (redis1..redis6) have the same files.
# =============================================================================================

cluster_pid() { # the running cluster's pid, or nothing
  local pid
  pid=$(cat "$CLUSTER_DIR/cluster.pid" 2>/dev/null) || return 0
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
  return 0
}

need_cluster() {
  SUPERVISOR=$(cluster_pid)
  [ -n "$SUPERVISOR" ] || die "no cluster is running at $CLUSTER_DIR (start one with scripts/cluster.sh, or set CLUSTER_DIR)"
  [ -e "$CLUSTER_DIR/cluster.env" ] || die "the cluster at $CLUSTER_DIR is still starting"
  # shellcheck source=/dev/null
  . "$CLUSTER_DIR/cluster.env"
}

is_member() { # NAME: a Redis Cluster member's name
  local n
  for n in "${RC_MEMBERS[@]}"; do [ "$n" = "$1" ] && return 0; done
  return 1
}

need_node() { # NAME: a node, or with a Redis Cluster a member too
  local n
  for n in "${NODES[@]}"; do [ "$n" = "$1" ] && return 0; done
  [ "$ENGINE" = redis_cluster ] && is_member "$1" && return 0
  local all=("${NODES[@]}")
  [ "$ENGINE" != redis_cluster ] || all+=("${RC_MEMBERS[@]}")
  die "unknown node '$1' (one of: ${all[*]})"
}

node_pid() { member_pid "$CLUSTER_DIR" "$1"; } # NAME: its pid while it runs, or nothing

readyz() { # PORT: the HTTP status of /readyz, 000 when nothing answers
  curl --noproxy '*' -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/readyz" || true
}

wait_gone() { # NAME SECONDS: until the cluster has seen NAME exit (it removes NAME.pid)
  local name=$1 secs=$2 i
  for ((i = 0; i < secs * 10; i++)); do
    [ -e "$CLUSTER_DIR/$name.pid" ] || return 0
    sleep 0.1
  done
  return 1
}

case "$MODE" in
  status)
    need_cluster
    echo "cluster        pid $SUPERVISOR, work dir $(cd "$CLUSTER_DIR" && pwd -P)"
    echo "load balancer  $LB   ws://127.0.0.1:$LB_PORT/ws   /readyz $(readyz "$LB_PORT")"
    for n in "${NODES[@]}"; do
      port=$(cat "$CLUSTER_DIR/$n.port")
      pid=$(node_pid "$n")
      if [ -n "$pid" ]; then
        echo "$n          up    pid $pid, http://127.0.0.1:$port   /readyz $(readyz "$port")"
      else
        echo "$n          down  (scripts/cluster.sh start $n)   port $port"
      fi
    done
    if [ "$ENGINE" = redis_cluster ]; then
      echo "redis cluster  engine.prefix=$PREFIX, seeds $REDIS_URLS"
      rc_status "$CLUSTER_DIR"
    else
      echo "redis          $REDIS_URL   engine.prefix=$PREFIX"
    fi
    exit 0
    ;;
  kill|stop)
    need_cluster
    need_node "$ARG"
    pid=$(node_pid "$ARG")
    [ -n "$pid" ] || die "$ARG is not running"
    if [ "$MODE" = kill ]; then
      log "$ARG (pid $pid): SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$ARG" 10 || die "$ARG (pid $pid) is still registered 10 s after SIGKILL"
    else
      # A node drains for up to server.shutdown_timeout (10 s by default).
      if is_member "$ARG"; then log "$ARG (pid $pid): SIGTERM"; else log "$ARG (pid $pid): SIGTERM, draining"; fi
      kill -TERM "$pid" 2>/dev/null || true
      wait_gone "$ARG" 40 || die "$ARG (pid $pid) has not exited 40 s after SIGTERM (scripts/cluster.sh kill $ARG)"
    fi
    if is_member "$ARG"; then
      log "$ARG is down; if it was a primary, its replica takes its slots over in about 4 s (cluster-node-timeout 2 s)"
    else
      log "$ARG is down; the load balancer sends its traffic to the other nodes"
    fi
    exit 0
    ;;
  start)
    need_cluster
    need_node "$ARG"
    pid=$(node_pid "$ARG")
    [ -z "$pid" ] || die "$ARG is already running (pid $pid)"
    port=$(cat "$CLUSTER_DIR/$ARG.port")
    if is_member "$ARG"; then
      end=$((SECONDS + 20))
      while ((SECONDS < end)) && ! rc_can_restart "$CLUSTER_DIR" "$ARG"; do sleep 0.2; done
      rc_can_restart "$CLUSTER_DIR" "$ARG" \
        || die "$ARG was a primary and its replica has not taken its slots over after 20 s: started now, empty, it would wipe them"
    fi
    mkdir -p "$CLUSTER_DIR/requests"
    req="$CLUSTER_DIR/requests/$$.$ARG"
    echo "$ARG" >"$req.tmp"
    mv "$req.tmp" "$req.start"
    # The cluster process answers in $req.result. A signal that arrives while it is busy is
    # only seen at its next wake-up, so it is sent again every second until answered.
    result=""
    for ((i = 0; i < 300; i++)); do
      if ((i % 10 == 0)); then kill -USR1 "$SUPERVISOR" 2>/dev/null || die "the cluster process has exited"; fi
      if [ -e "$req.result" ]; then
        result=$(cat "$req.result")
        rm -f "$req.result"
        break
      fi
      sleep 0.1
    done
    [ -n "$result" ] || { rm -f "$req.start"; die "the cluster process did not answer within 30 s"; }
    case "$result" in
      started\ *) pid=${result#started } ;;
      *) die "$result" ;;
    esac
    log "$ARG starting (pid $pid) on 127.0.0.1:$port"
    if is_member "$ARG"; then
      rc_wait_joined "$CLUSTER_DIR" "$ARG" 30 || exit 1
      log "$ARG is back: $(rc_role "$CLUSTER_DIR" "$port")"
      exit 0
    fi
    for ((i = 0; i < 300; i++)); do
      [ "$(readyz "$port")" = 200 ] && break
      if ! kill -0 "$pid" 2>/dev/null || [ ! -e "$CLUSTER_DIR/$ARG.pid" ]; then
        tail -n 20 "$CLUSTER_DIR/$ARG.log" >&2 || true
        die "$ARG exited at start (its log: $CLUSTER_DIR/$ARG.log)"
      fi
      sleep 0.1
    done
    [ "$(readyz "$port")" = 200 ] || die "$ARG is not ready after 30 s (its log: $CLUSTER_DIR/$ARG.log)"
    log "$ARG is ready on http://127.0.0.1:$port; nginx sends it new connections again within 10 s (its fail_timeout)"
    exit 0
    ;;
  follow)
    need_cluster
    exec python3 "$ROOT/scripts/cluster_check.py" --follow "$ARG" --lb "$LB"
    ;;
esac

# =============================================================================================
# Running the cluster (run and --check).
# =============================================================================================

API_KEY=${API_KEY:-dev-key}
BIN=${SWITCHBOARD_BIN:-$ROOT/target/release/switchboard}
NGINX_CONF_SRC=$ROOT/deploy/nginx/nginx.conf

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

if [ "$MODE" = run ]; then
  running=$(cluster_pid)
  [ -z "$running" ] || die "a cluster is already running at $CLUSTER_DIR (pid $running): stop it (Ctrl-C in its terminal, or kill $running) or set CLUSTER_DIR"
  if [ -e "$CLUSTER_DIR" ] && [ ! -L "$CLUSTER_DIR" ]; then
    die "CLUSTER_DIR=$CLUSTER_DIR exists and is not this script's symlink"
  fi
fi

if [ ! -x "$BIN" ]; then
  [ -z "${SWITCHBOARD_BIN:-}" ] || die "SWITCHBOARD_BIN=$BIN is not an executable"
  log "building target/release/switchboard (cargo build --release; the first build takes minutes)"
  cargo build --release --bin switchboard
fi

if [ -z "${LB_PORT:-}" ]; then
  if [ "$MODE" = check ]; then LB_PORT=$(free_port); else LB_PORT=8080; fi
fi
[[ "$LB_PORT" =~ ^[0-9]+$ ]] || die "LB_PORT=$LB_PORT is not a port number"
port_free "$LB_PORT" || die "port $LB_PORT is already in use on 127.0.0.1 (set LB_PORT)"

# --- processes and cleanup -----------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-cluster.XXXXXX")
# nginx's workers run as nobody when this runs as root: they must reach the temp paths.
chmod 755 "$WORK"
mkdir -p "$WORK/requests"
echo $$ >"$WORK/cluster.pid"
REGISTERED=0
if [ "$MODE" = run ]; then
  mkdir -p "$(dirname "$CLUSTER_DIR")"
  ln -sfn "$WORK" "$CLUSTER_DIR"
  REGISTERED=1
else
  # --check: the commands the check runs (cluster.sh kill/start) find this cluster here.
  CLUSTER_DIR=$WORK
fi

REDIS_PID=""
NGINX_PID=""
CHECK_PID=""
declare -A NODE_PID=()  # node -> pid while it runs
declare -A NODE_PORT=() # node -> port, fixed once it first listened
STOPPING=0

cleanup() {
  [ "$STOPPING" -eq 0 ] || return 0
  STOPPING=1
  local n
  [ -z "$CHECK_PID" ] || stop_pid "$CHECK_PID" cluster_check.py 5
  # nginx, the nodes (together: each drains its clients), then Redis.
  [ -z "$NGINX_PID" ] || stop_pid "$NGINX_PID" nginx 20
  for n in "${!NODE_PID[@]}"; do kill -TERM "${NODE_PID[$n]}" 2>/dev/null || true; done
  for n in "${!NODE_PID[@]}"; do stop_pid "${NODE_PID[$n]}" "$n" 20; done
  [ -z "$REDIS_PID" ] || stop_pid "$REDIS_PID" redis 20
  rc_stop "$WORK"
  # Unregister first, so no command finds a cluster that is going away.
  if [ "$REGISTERED" -eq 1 ] && [ "$(readlink "$CLUSTER_DIR" 2>/dev/null)" = "$WORK" ]; then
    rm -f "$CLUSTER_DIR"
  fi
  rm -f "$WORK/cluster.pid" "$WORK"/node*.pid "$WORK"/redis*.pid
  if [ "${KEEP_WORK:-0}" = 1 ]; then
    log "stopped; work dir kept: $WORK"
  else
    rm -rf "$WORK"
    log "stopped"
  fi
}

show_logs() { # Redis first and shorter (six of them with --redis-cluster), then the rest
  local f lines
  for f in "$WORK"/redis*.log "$WORK"/cluster-create.log "$WORK"/node*.log "$WORK"/nginx*.log "$WORK"/nginx/*.log; do
    [ -s "$f" ] || continue
    lines=20
    [[ "$f" != */redis?.log && "$f" != */cluster-create.log ]] || [ "$ENGINE" = redis ] || lines=6
    log "--- last lines of ${f#"$WORK"/} ---"
    tail -n "$lines" "$f" >&2
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
# `cluster.sh start NODE` asks through requests/ and SIGUSR1; the main loop reads them.
trap ':' USR1

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
if [ "$ENGINE" = redis_cluster ]; then
  log "starting a Redis Cluster: six redis-server processes (scripts/redis-cluster.sh)"
  rc_start "$WORK" || fail "could not form the Redis Cluster"
  REDIS_URLS=$(rc_urls "$WORK")
  ENGINE_ENV=(SWITCHBOARD__ENGINE__KIND=redis_cluster SWITCHBOARD__ENGINE__REDIS_URLS="$REDIS_URLS")
else
  redis_spawn "$WORK" redis 0 || fail "could not start redis-server"
  REDIS_PID=$SPAWNED_PID
  REDIS_URL="redis://127.0.0.1:$(cat "$WORK/redis.port")/0"
  ENGINE_ENV=(SWITCHBOARD__ENGINE__KIND=redis SWITCHBOARD__ENGINE__REDIS_URL="$REDIS_URL")
fi
PREFIX="cluster-$(date +%s)-$$"

# --- three nodes ---------------------------------------------------------------------------
start_node() { # NAME PORT: starts it (port 0: any free port), records its pid
  local n=$1 port=$2
  printf '\n--- [cluster] starting %s on 127.0.0.1:%s at %s ---\n' "$n" "$port" "$(date '+%F %T')" >>"$WORK/$n.log"
  start_bg "$WORK/$n.log" env \
    SWITCHBOARD__SERVER__BIND="127.0.0.1:$port" \
    SWITCHBOARD__SERVER__NODE_ID="$n" \
    "${ENGINE_ENV[@]}" \
    SWITCHBOARD__ENGINE__PREFIX="$PREFIX" \
    SWITCHBOARD__API__KEYS="$API_KEY" \
    RUST_LOG="${RUST_LOG:-info}" \
    "$BIN"
  NODE_PID[$n]=$BG_PID
  echo "$BG_PID" >"$WORK/$n.pid"
}

for n in "${NODES[@]}"; do start_node "$n" 0; done
for n in "${NODES[@]}"; do
  pid=${NODE_PID[$n]}
  port=""
  for ((i = 0; i < 300; i++)); do
    port=$(grep -o 'listening on 127\.0\.0\.1:[0-9]*' "$WORK/$n.log" 2>/dev/null | head -n 1 | sed 's/.*://' || true)
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || fail "$n exited at start"
    sleep 0.1
  done
  [ -n "$port" ] || fail "$n: no 'listening on' line after 30s"
  NODE_PORT[$n]=$port
  echo "$port" >"$WORK/$n.port"
done
for n in "${NODES[@]}"; do
  wait_until 30 "$n /readyz" http_ok "http://127.0.0.1:${NODE_PORT[$n]}/readyz"
done

# --- nginx ---------------------------------------------------------------------------------
mkdir -p "$WORK/nginx/logs"
NGX=$WORK/nginx
sed -e "s|server node1:8080;|server 127.0.0.1:${NODE_PORT[node1]};|" \
    -e "s|server node2:8080;|server 127.0.0.1:${NODE_PORT[node2]};|" \
    -e "s|server node3:8080;|server 127.0.0.1:${NODE_PORT[node3]};|" \
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
for want in "127.0.0.1:${NODE_PORT[node1]};" "127.0.0.1:${NODE_PORT[node2]};" "127.0.0.1:${NODE_PORT[node3]};" \
    "listen 127.0.0.1:$LB_PORT;" "$NGX/access.log" "$NGX/error.log" "proxy_temp_path"; do
  grep -qF "$want" "$NGX/nginx.conf" || fail "deploy/nginx/nginx.conf no longer has the line that becomes '$want'"
done
if grep -qE 'node[0-9]+:8080|/dev/std' "$NGX/nginx.conf"; then
  fail "deploy/nginx/nginx.conf has a line this script does not rewrite: $(grep -nE 'node[0-9]+:8080|/dev/std' "$NGX/nginx.conf" | head -n 1)"
fi
NGINX_ARGS=(-p "$NGX/" -c "$NGX/nginx.conf" -e "$NGX/error.log" -g "daemon off; pid $NGX/nginx.pid;")
"$NGINX" -t -q "${NGINX_ARGS[@]}" 2>"$WORK/nginx-test.log" || { cat "$WORK/nginx-test.log" >&2; fail "nginx -t refused the generated config"; }
start_bg "$WORK/nginx.log" "$NGINX" "${NGINX_ARGS[@]}"
NGINX_PID=$BG_PID
LB=http://127.0.0.1:$LB_PORT
wait_until 15 "nginx on $LB" http_ok "$LB/readyz"

NODE_URLS=()
for n in "${NODES[@]}"; do NODE_URLS+=("http://127.0.0.1:${NODE_PORT[$n]}"); done

# Written last and whole: its presence means the cluster is up.
cat >"$WORK/cluster.env.tmp" <<EOF
LB_PORT=$LB_PORT
LB=$LB
ENGINE=$ENGINE
REDIS_URL=${REDIS_URL:-}
REDIS_URLS=${REDIS_URLS:-}
PREFIX=$PREFIX
API_KEY=$API_KEY
EOF
mv "$WORK/cluster.env.tmp" "$WORK/cluster.env"

where=$WORK
[ "$REGISTERED" -eq 0 ] || where="$WORK, found through $CLUSTER_DIR"
if [ "$ENGINE" = redis_cluster ]; then
  redis_line="redis cluster  engine.prefix=$PREFIX
$(rc_status "$WORK" | sed 's/^/    /')"
  redis_logs="redis1..redis6"
else
  redis_line="redis          $REDIS_URL   engine.prefix=$PREFIX"
  redis_logs="redis"
fi
cat >&2 <<EOF
[cluster] up (work dir $where)
  load balancer  $LB   ws://127.0.0.1:$LB_PORT/ws
  node1          ${NODE_URLS[0]}
  node2          ${NODE_URLS[1]}
  node3          ${NODE_URLS[2]}
  $redis_line
  API key        $API_KEY
  logs           $WORK/{$redis_logs,node1,node2,node3}.log  $NGX/{access,error}.log
EOF

# --- supervision ---------------------------------------------------------------------------
# Until a signal, the end of the check, or the exit of Redis or nginx. A node (or Redis
# Cluster member) that exits is reported and the others keep serving; `cluster.sh start NODE`
# starts it again.

handle_requests() {
  local req n pid
  for req in "$WORK"/requests/*.start; do
    [ -e "$req" ] || continue
    n=$(cat "$req")
    rm -f "$req"
    req=${req%.start}
    if [ "$ENGINE" = redis_cluster ] && is_member "$n"; then
      if [ -n "${RC_PID[$n]:-}" ]; then
        echo "$n is already running (pid ${RC_PID[$n]})" >"$req.tmp"
      elif redis_spawn "$WORK" "$n" 1; then
        RC_PID[$n]=$SPAWNED_PID
        log "$n started again (pid $SPAWNED_PID) on 127.0.0.1:$(cat "$WORK/$n.port")"
        echo "started $SPAWNED_PID" >"$req.tmp"
      else
        echo "$n did not start (its log: $WORK/$n.log)" >"$req.tmp"
      fi
    elif [ -z "${NODE_PORT[$n]:-}" ]; then
      echo "unknown node '$n'" >"$req.tmp"
    elif [ -n "${NODE_PID[$n]:-}" ]; then
      echo "$n is already running (pid ${NODE_PID[$n]})" >"$req.tmp"
    else
      start_node "$n" "${NODE_PORT[$n]}"
      pid=${NODE_PID[$n]}
      log "$n started again (pid $pid) on 127.0.0.1:${NODE_PORT[$n]}"
      echo "started $pid" >"$req.tmp"
    fi
    mv "$req.tmp" "$req.result"
  done
}

describe_status() { # STATUS: as a shell reports it (128+N: killed by signal N)
  if [ "$1" -gt 128 ]; then
    echo "killed by SIG$(kill -l "$(($1 - 128))" 2>/dev/null || echo "$(($1 - 128))")"
  else
    echo "exit status $1"
  fi
}

reap() { # handles every child that has exited
  local n pid st
  for n in "${!NODE_PID[@]}"; do
    pid=${NODE_PID[$n]}
    kill -0 "$pid" 2>/dev/null && continue
    st=0
    wait "$pid" 2>/dev/null || st=$?
    unset 'NODE_PID[$n]'
    rm -f "$WORK/$n.pid"
    log "$n (pid $pid) exited: $(describe_status "$st"); the other nodes keep serving. scripts/cluster.sh start $n starts it again"
    if [ "$st" -ne 0 ] && [ "$st" -ne 137 ] && [ "$st" -ne 143 ]; then
      log "--- last lines of $n.log ---"
      tail -n 10 "$WORK/$n.log" >&2
    fi
  done
  for n in "${!RC_PID[@]}"; do
    pid=${RC_PID[$n]}
    kill -0 "$pid" 2>/dev/null && continue
    st=0
    wait "$pid" 2>/dev/null || st=$?
    unset 'RC_PID[$n]'
    rm -f "$WORK/$n.pid"
    log "$n (pid $pid) exited: $(describe_status "$st"). scripts/cluster.sh start $n starts it again (once a replica has taken its slots over, if it was a primary)"
  done
  for n in redis nginx; do
    if [ "$n" = redis ]; then pid=$REDIS_PID; else pid=$NGINX_PID; fi
    [ -n "$pid" ] || continue # no single Redis with --redis-cluster
    kill -0 "$pid" 2>/dev/null && continue
    st=0
    wait "$pid" 2>/dev/null || st=$?
    if [ "$n" = redis ]; then REDIS_PID=""; else NGINX_PID=""; fi
    fail "$n (pid $pid) exited: $(describe_status "$st"); the cluster cannot work without it"
  done
  if [ -n "$CHECK_PID" ] && ! kill -0 "$CHECK_PID" 2>/dev/null; then
    st=0
    wait "$CHECK_PID" 2>/dev/null || st=$?
    CHECK_PID=""
    if [ "$st" -eq 0 ]; then
      log "check passed"
      exit 0
    fi
    show_logs
    log "check FAILED"
    exit 1
  fi
}

if [ "$MODE" = check ]; then
  args=(--lb "$LB" --key "$API_KEY" --cluster-dir "$WORK")
  for u in "${NODE_URLS[@]}"; do args+=(--node "$u"); done
  if [ "$ENGINE" = redis_cluster ]; then
    for n in "${RC_MEMBERS[@]}"; do args+=(--redis-member "$n=127.0.0.1:$(cat "$WORK/$n.port")"); done
  fi
  python3 "$ROOT/scripts/cluster_check.py" "${args[@]}" &
  CHECK_PID=$!
else
  log "Ctrl-C (or SIGTERM) stops everything; from another terminal: scripts/cluster.sh status | kill NODE | stop NODE | start NODE | follow CHANNEL"
fi

set +e
while true; do
  handle_requests
  reap
  live=("$NGINX_PID" "${NODE_PID[@]}" "${RC_PID[@]}")
  [ -z "$REDIS_PID" ] || live+=("$REDIS_PID")
  [ -z "$CHECK_PID" ] || live+=("$CHECK_PID")
  # Returns when one of them exits, or at once on a trapped signal (SIGUSR1: a request).
  # reap() reports the exit (bash keeps the status for its `wait PID`), so bash's own
  # "Killed" job notice is not wanted here.
  wait -n "${live[@]}" 2>/dev/null
done
