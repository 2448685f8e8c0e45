#!/usr/bin/env bash
# Redis on loopback for the scripts: a Redis Cluster of six redis-server processes (three
# primaries, three replicas), or one plain redis-server, each writing its state in a directory.
#
#   scripts/redis-cluster.sh start DIR        start six members in cluster mode in DIR, form
#                                             the cluster, wait until it is whole, print the
#                                             seed URLs, comma separated (the value of
#                                             SWITCHBOARD__ENGINE__REDIS_URLS); they keep
#                                             running after this returns
#   scripts/redis-cluster.sh status DIR       each member: up or down, pid, port, bus port, role
#   scripts/redis-cluster.sh kill DIR NAME    SIGKILL one member (redis1..redis6): a crash
#   scripts/redis-cluster.sh start DIR NAME   start a member again on its ports (a former
#                                             primary whose replica lives only once the replica
#                                             has taken its slots over: it comes back empty);
#                                             returns once it has joined
#   scripts/redis-cluster.sh stop DIR         stop every member (SIGTERM, then SIGKILL)
#
# Sourced (scripts/cluster.sh does, for its --redis-cluster mode and its one Redis), it only
# defines the functions below, and the processes it starts are the caller's children. The
# loopback helpers free_port, port_free, start_bg and stop_pid are shared with cluster.sh.
#
# Each member listens on 127.0.0.1 on a free port (never 6379, the machine's shared Redis),
# with its cluster bus on a second free port (--cluster-port: port + 10000 can overflow for the
# high ports bind(0) hands out), no persistence, cluster-node-timeout 2000 ms (a crashed
# primary's replica takes over in about 4 s), cluster-require-full-coverage no (a shard down
# leaves the others serving), cluster-replica-validity-factor 0 (a replica may always take
# over) and repl-diskless-sync-delay 0 (replicas link at once instead of after 5 s). The
# formation recipe is docs/design/redis-cluster.md, section 3. DIR holds, per member NAME:
# NAME/ (its --dir, with nodes.conf), NAME.port, NAME.bus, NAME.log, NAME.pid (while it runs),
# and cluster-create.log (redis-cli --cluster create). Needs redis-server, redis-cli (7.0 or
# newer), python3 and setsid.

RC_MEMBERS=(redis1 redis2 redis3 redis4 redis5 redis6)
declare -gA RC_PID=() # member -> pid, for the members this shell started

declare -F log >/dev/null || log() { printf '[redis-cluster] %s\n' "$*" >&2; }

# --- loopback helpers (shared with scripts/cluster.sh) --------------------------------------
free_ports() { # N: N distinct free ports, one a line (never 6379 or 16379, the shared Redis's)
  python3 -c 'import socket, sys
held, ports = [], []
while len(ports) < int(sys.argv[1]):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); held.append(s)
    p = s.getsockname()[1]
    if p not in (6379, 16379):
        ports.append(p)
print("\n".join(map(str, ports)))' "$1"
}

free_port() { free_ports 1; }

port_free() { # PORT: nothing listens on 127.0.0.1:PORT
  python3 -c 'import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

start_bg() { # LOGFILE CMD...: a child in its own session (so Ctrl-C reaches only us); sets BG_PID
  local logfile=$1
  shift
  setsid "$@" >>"$logfile" 2>&1 </dev/null &
  BG_PID=$!
}

stop_pid() { # PID NAME SECONDS: SIGTERM, then SIGKILL after SECONDS
  local pid=$1 name=$2 secs=$3 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  log "$name did not stop in ${secs}s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# --- one redis-server ------------------------------------------------------------------------
rcli() { # PORT ARGS...: redis-cli on 127.0.0.1:PORT, carriage returns removed
  local port=$1
  shift
  redis-cli -h 127.0.0.1 -p "$port" "$@" 2>/dev/null | tr -d '\r'
}

member_pid() { # DIR NAME: its pid while it runs (a zombie does not), or nothing
  local pid
  pid=$(cat "$1/$2.pid" 2>/dev/null) || return 0
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
    && [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" != Z* ]] && echo "$pid"
  return 0
}

redis_launch() { # DIR NAME CLUSTER(0|1) PORT BUS: starts redis-server NAME; sets SPAWNED_PID
  local dir=$1 name=$2 cluster=$3 port=$4 bus=$5 args
  mkdir -p "$dir/$name"
  args=(--bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$dir/$name" --daemonize no)
  if [ "$cluster" -eq 1 ]; then
    args+=(--cluster-enabled yes --cluster-port "$bus" --cluster-config-file nodes.conf
      --cluster-node-timeout 2000 --cluster-replica-validity-factor 0
      --cluster-require-full-coverage no --repl-diskless-sync-delay 0)
  fi
  printf '\n--- starting %s on 127.0.0.1:%s at %s ---\n' "$name" "$port" "$(date '+%F %T')" >>"$dir/$name.log"
  start_bg "$dir/$name.log" redis-server "${args[@]}"
  SPAWNED_PID=$BG_PID
  echo "$SPAWNED_PID" >"$dir/$name.pid"
}

redis_await() { # DIR NAME PID PORT BUS: until it answers PING (then records its ports), or stops it
  local dir=$1 name=$2 pid=$3 port=$4 bus=$5 i
  for ((i = 0; i < 50; i++)); do
    if [ "$(rcli "$port" ping)" = PONG ]; then
      echo "$port" >"$dir/$name.port"
      [ -z "$bus" ] || echo "$bus" >"$dir/$name.bus"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  log "$name did not start on port $port"
  stop_pid "$pid" "$name" 5
  rm -f "$dir/$name.pid"
  return 1
}

redis_spawn() { # DIR NAME CLUSTER(0|1): starts NAME and waits for it; sets SPAWNED_PID
  # On the ports it had (DIR/NAME.port, .bus) when it ran before: they are in its nodes.conf
  # and the Switchboard nodes' seed URLs. Else on free ones, three tries (another process may
  # take a free port first).
  local dir=$1 name=$2 cluster=$3 again=0 ports
  [ -e "$dir/$name.port" ] && again=1
  for _ in 1 2 3; do
    if [ "$again" -eq 1 ]; then
      ports=("$(cat "$dir/$name.port")" "$(cat "$dir/$name.bus" 2>/dev/null || true)")
    else
      mapfile -t ports < <(free_ports 2)
      [ "$cluster" -eq 1 ] || ports[1]=""
    fi
    redis_launch "$dir" "$name" "$cluster" "${ports[0]}" "${ports[1]}"
    redis_await "$dir" "$name" "$SPAWNED_PID" "${ports[0]}" "${ports[1]}" && return 0
    [ "$again" -eq 0 ] || break
  done
  return 1
}

# --- the cluster -----------------------------------------------------------------------------
rc_start() { # DIR: six members, formed into a cluster, whole (RC_PID holds their pids)
  local dir=$1 n i ports addrs=()
  # All six at once, on twelve distinct free ports; one that did not start gets a second try.
  mapfile -t ports < <(free_ports 12)
  for i in "${!RC_MEMBERS[@]}"; do
    redis_launch "$dir" "${RC_MEMBERS[$i]}" 1 "${ports[2 * i]}" "${ports[2 * i + 1]}"
    RC_PID[${RC_MEMBERS[$i]}]=$SPAWNED_PID
  done
  for i in "${!RC_MEMBERS[@]}"; do
    n=${RC_MEMBERS[$i]}
    if ! redis_await "$dir" "$n" "${RC_PID[$n]}" "${ports[2 * i]}" "${ports[2 * i + 1]}"; then
      redis_spawn "$dir" "$n" 1 || return 1
      RC_PID[$n]=$SPAWNED_PID
    fi
    addrs+=("127.0.0.1:$(cat "$dir/$n.port")")
  done
  # Roles are redis-cli's choice (the first three addresses become primaries, but the
  # replicas' pairing is shuffled): `rc_status` reads them from CLUSTER NODES.
  if ! redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
      >"$dir/cluster-create.log" 2>&1 </dev/null; then
    tail -n 20 "$dir/cluster-create.log" >&2
    log "redis-cli --cluster create failed (its output: $dir/cluster-create.log)"
    return 1
  fi
  rc_wait_whole "$dir" 30
}

rc_whole() { # DIR: every member up, cluster_state:ok, 6 known nodes, 3 primaries, replicas linked
  local dir=$1 n port info primaries=0
  for n in "${RC_MEMBERS[@]}"; do
    port=$(cat "$dir/$n.port" 2>/dev/null) || return 1
    info=$(rcli "$port" cluster info)
    grep -qx 'cluster_state:ok' <<<"$info" && grep -qx 'cluster_known_nodes:6' <<<"$info" || return 1
    info=$(rcli "$port" info replication)
    if grep -qx 'role:master' <<<"$info"; then
      primaries=$((primaries + 1))
    else
      grep -qx 'master_link_status:up' <<<"$info" || return 1
    fi
  done
  [ "$primaries" -eq 3 ]
}

rc_wait_whole() { # DIR SECONDS
  local end=$((SECONDS + $2))
  while ((SECONDS < end)); do
    rc_whole "$1" && return 0
    sleep 0.2
  done
  log "the Redis Cluster in $1 is not whole after $2 s (cluster_state:ok and 6 known nodes on every member, 3 primaries, every replica linked)"
  return 1
}

rc_others() { # DIR NAME: the members other than NAME that run
  local n
  for n in "${RC_MEMBERS[@]}"; do
    if [ "$n" != "$2" ] && [ -n "$(member_pid "$1" "$n")" ]; then echo "$n"; fi
  done
}

rc_joined() { # DIR NAME: NAME (started again) is back: cluster_state:ok in its view, linked to
  # its primary if it is a replica, and no live member flags it as failing
  local dir=$1 name=$2 n port info
  port=$(cat "$dir/$name.port")
  grep -qx 'cluster_state:ok' <<<"$(rcli "$port" cluster info)" || return 1
  info=$(rcli "$port" info replication)
  grep -qx 'role:master' <<<"$info" || grep -qx 'master_link_status:up' <<<"$info" || return 1
  for n in $(rc_others "$dir" "$name"); do
    rcli "$(cat "$dir/$n.port")" cluster nodes | grep -E "^[0-9a-f]+ 127\.0\.0\.1:$port@" | grep -qv 'fail' || return 1
  done
}

rc_wait_joined() { # DIR NAME SECONDS
  local end=$((SECONDS + $3))
  while ((SECONDS < end)); do
    rc_joined "$1" "$2" && return 0
    sleep 0.2
  done
  log "$2 has not joined the Redis Cluster in $1 after $3 s (cluster_state:ok in its view, its replication link up, no member flagging it)"
  return 1
}

rc_urls() { # DIR: the seed URLs, comma separated
  local n urls=()
  for n in "${RC_MEMBERS[@]}"; do urls+=("redis://127.0.0.1:$(cat "$1/$n.port")"); done
  (IFS=,; echo "${urls[*]}")
}

member_of_port() { # DIR PORT: the member name, or the address
  local n
  for n in "${RC_MEMBERS[@]}"; do
    [ "$(cat "$1/$n.port" 2>/dev/null)" = "$2" ] && { echo "$n"; return 0; }
  done
  echo "127.0.0.1:$2"
}

rc_role() { # DIR PORT: the member's own view: "primary, slots ..." or "replica of NAME, link up"
  local dir=$1 port=$2 nodes flags master slots mport link
  nodes=$(rcli "$port" cluster nodes)
  read -r _ _ flags master _ _ _ _ slots < <(grep -E '^[0-9a-f]+ [^ ]+ myself' <<<"$nodes")
  case "${flags:-}" in
    *master*) echo "primary, slots ${slots:-none}" ;;
    *slave*)
      mport=$(awk -v id="$master" '$1 == id { split($2, a, "[:@]"); print a[2] }' <<<"$nodes")
      link=$(rcli "$port" info replication | sed -n 's/^master_link_status://p')
      echo "replica of $(member_of_port "$dir" "$mport"), link ${link:-?}"
      ;;
    *) echo "role unknown (no answer to CLUSTER NODES)" ;;
  esac
}

rc_status() { # DIR: one line per member
  local dir=$1 n pid port bus state
  for n in "${RC_MEMBERS[@]}"; do
    port=$(cat "$dir/$n.port" 2>/dev/null || echo '?')
    bus=$(cat "$dir/$n.bus" 2>/dev/null || echo '?')
    pid=$(member_pid "$dir" "$n")
    if [ -n "$pid" ]; then
      state="up    pid $pid, 127.0.0.1:$port (bus $bus)   $(rc_role "$dir" "$port")"
    else
      state="down  127.0.0.1:$port (bus $bus)"
    fi
    printf '%-14s %s\n' "$n" "$state"
  done
}

rc_can_restart() { # DIR NAME: starting NAME cannot wipe data
  # A member comes back empty (no persistence). A former primary that still holds its slots
  # in the cluster's view would take them back empty, and its replica, which could still take
  # them over with their data, would then resync from it. So false while a live member sees
  # NAME as a primary with slots and a replica of it that has not failed.
  local dir=$1 name=$2 n port nodes id flags slots
  port=$(cat "$dir/$name.port")
  for n in $(rc_others "$dir" "$name"); do
    nodes=$(rcli "$(cat "$dir/$n.port")" cluster nodes)
    read -r id _ flags _ _ _ _ _ slots < <(grep -E "^[0-9a-f]+ 127\.0\.0\.1:$port@" <<<"$nodes") || continue
    if [[ "$flags" == *master* ]] && [ -n "${slots:-}" ] \
      && awk -v id="$id" '$4 == id && $3 !~ /fail/ { found = 1 } END { exit !found }' <<<"$nodes"; then
      return 1
    fi
    return 0
  done
  return 0
}

rc_stop() { # DIR: every member still running (SIGTERM together, then SIGKILL after 20 s)
  local dir=$1 n pid pids=()
  for n in "${RC_MEMBERS[@]}"; do
    pid=$(member_pid "$dir" "$n")
    [ -n "$pid" ] || continue
    kill -TERM "$pid" 2>/dev/null || true
    pids+=("$n:$pid")
  done
  for pid in "${pids[@]}"; do stop_pid "${pid#*:}" "${pid%%:*}" 20; done
  for n in "${RC_MEMBERS[@]}"; do rm -f "$dir/$n.pid"; unset 'RC_PID[$n]'; done
}

# --- the command line ------------------------------------------------------------------------
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  usage() {
    echo "usage: $0 start DIR [NAME] | status DIR | kill DIR NAME | stop DIR" >&2
    exit 64
  }
  die() { log "error: $*"; exit 1; }
  need_member() {
    local n
    for n in "${RC_MEMBERS[@]}"; do [ "$n" = "$1" ] && return 0; done
    die "unknown member '$1' (one of: ${RC_MEMBERS[*]})"
  }
  for tool in redis-server redis-cli python3 setsid; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (scripts/cluster.sh installs it)"
  done
  [ $# -ge 2 ] || usage
  cmd=$1 dir=$2 name=${3:-}
  case "$cmd $#" in
    "start 2")
      mkdir -p "$dir"
      for n in "${RC_MEMBERS[@]}"; do
        [ -z "$(member_pid "$dir" "$n")" ] || die "$n already runs in $dir (stop it first)"
        rm -f "$dir/$n.port" "$dir/$n.bus" "$dir/$n/nodes.conf"
      done
      rc_start "$dir" || { rc_stop "$dir"; die "could not form the Redis Cluster in $dir"; }
      log "whole: 3 primaries, 3 replicas (scripts/redis-cluster.sh status $dir)"
      rc_urls "$dir"
      ;;
    "start 3")
      need_member "$name"
      [ -z "$(member_pid "$dir" "$name")" ] || die "$name is already running"
      [ -e "$dir/$name.port" ] || die "$name never ran in $dir"
      end=$((SECONDS + 20))
      while ((SECONDS < end)) && ! rc_can_restart "$dir" "$name"; do sleep 0.2; done
      rc_can_restart "$dir" "$name" \
        || die "$name was a primary and no replica has taken its slots over after 20 s: started now, empty, it would wipe them"
      redis_spawn "$dir" "$name" 1 || die "$name did not start (its log: $dir/$name.log)"
      rc_wait_joined "$dir" "$name" 30 || exit 1
      log "$name is back: $(rc_role "$dir" "$(cat "$dir/$name.port")")"
      ;;
    "status 2") rc_status "$dir" ;;
    "kill 3")
      need_member "$name"
      pid=$(member_pid "$dir" "$name")
      [ -n "$pid" ] || die "$name is not running"
      kill -KILL "$pid"
      for ((i = 0; i < 50; i++)); do [ -n "$(member_pid "$dir" "$name")" ] || break; sleep 0.1; done
      log "$name (pid $pid): SIGKILL"
      ;;
    "stop 2") rc_stop "$dir" ;;
    *) usage ;;
  esac
fi
