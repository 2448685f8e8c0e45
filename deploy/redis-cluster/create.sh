#!/bin/sh
# Forms the Redis Cluster of docker-compose.yml's profile `redis-cluster` (the one-shot service
# redis-cluster-init, in the redis:7 image): 3 primaries and 3 replicas.
#
#   create.sh HOST:PORT x 6
#
# Idempotent enough to run on every `up`: when the first member already knows other nodes
# (the cluster was formed before), it forms nothing. Either way it exits 0 once every member
# sees the cluster whole (cluster_state:ok, every member known, half of them replicas), and 1
# if that takes over a minute.
set -eu

cli() { # HOST:PORT ARGS...
  addr=$1
  shift
  redis-cli -h "${addr%:*}" -p "${addr##*:}" "$@" | tr -d '\r'
}

known=$(cli "$1" cluster info | sed -n 's/^cluster_known_nodes://p')
if [ "${known:-0}" -gt 1 ]; then
  echo "create-cluster: $1 already knows $known nodes: the cluster is formed, nothing to create"
else
  # CLUSTER MEET, which redis-cli sends, takes IP addresses only (redis/redis#11148): the
  # members announce their hostnames once formed (cluster-announce-hostname).
  ips=""
  for addr in "$@"; do
    ip=$(getent hosts "${addr%:*}" | cut -d ' ' -f 1 | head -n 1)
    [ -n "$ip" ] || { echo "create-cluster: cannot resolve ${addr%:*}" >&2; exit 1; }
    ips="$ips $ip:${addr##*:}"
  done
  echo "create-cluster: redis-cli --cluster create$ips --cluster-replicas 1"
  # shellcheck disable=SC2086 # $ips is the list of addresses
  redis-cli --cluster create $ips --cluster-replicas 1 --cluster-yes
fi

formed() { # ADDR N: in its view, cluster_state:ok, N members known, half of them replicas
  cli "$1" cluster info | grep -qx 'cluster_state:ok' \
    && cli "$1" cluster info | grep -qx "cluster_known_nodes:$2" \
    && [ "$(cli "$1" cluster nodes | grep -c ' [a-z,]*slave')" -eq $(($2 / 2)) ]
}
for addr in "$@"; do
  i=0
  until formed "$addr" $#; do
    i=$((i + 1))
    [ "$i" -lt 120 ] || { echo "create-cluster: $addr does not see the cluster formed after 60 s" >&2; exit 1; }
    sleep 0.5
  done
done
echo "create-cluster: every member reports cluster_state:ok, $# known nodes, $(($# / 2)) replicas"
cli "$1" cluster nodes
