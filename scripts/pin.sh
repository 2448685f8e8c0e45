# Sourced by scripts/bench.sh and scripts/bench-flood.sh: pins the server to SERVER_CPU and
# the load generator to BENCH_CPU when the machine has two cores or more and taskset exists,
# so the two never compete for a core. Sets PIN_SERVER and PIN_BENCH (command prefixes),
# PINNED (1 or 0) and SERVER_CPU_ARG (the load generator's --server-cpu flag, for its CPU
# accounting); expects SERVER_CPU, BENCH_CPU and a `log` function.
PIN_SERVER=()
PIN_BENCH=()
PINNED=0
SERVER_CPU_ARG=()
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  PIN_SERVER=(taskset -c "$SERVER_CPU")
  PIN_BENCH=(taskset -c "$BENCH_CPU")
  PINNED=1
  SERVER_CPU_ARG=(--server-cpu "$SERVER_CPU")
else
  log "not pinning (taskset missing or fewer than 2 cores)"
fi
