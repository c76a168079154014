#!/usr/bin/env bash
# credbroker benchmarks (issue #7): builds release, installs wrk if missing, runs the criterion
# micro-benchmarks and the load harness, prints the figures table and writes BENCHMARKS.md.
#
#   bash bench/run.sh            # the full run (about 5-8 minutes on 2 cores, build excluded)
#   CB_BENCH_QUICK=1 bash bench/run.sh   # a smoke run with small sizes (~1-2 minutes)
#
# Other knobs: CB_BENCH_SECONDS (length of one wrk round, default 6), CB_BENCH_CALLGRIND=0 (skip
# the callgrind instruction counts), CB_BENCH_OUT (where BENCHMARKS.md goes), CB_BENCH_ONLY=fleet
# (only the fleet-mode rows: 3 replicas with and without the shared tier, needs redis-server),
# CB_BENCH_ONLY=realtime (only the real-time rows: subscription event latency through credbroker
# vs straight to the emulated AppSync, and memory per idle subscribed connection),
# CB_BENCH_ONLY=hotpath (only row 1, its callgrind profiles kept in target/),
# CB_BENCH_ONLY=appsync (only row 6: OIDC and IAM mode, the minimal-proxy baseline and its
# callgrind profiles kept in target/), CB_BENCH_ONLY=processes (only row 10).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null 2>&1; then
  echo "wrk not found; installing it (Debian/Ubuntu: apt-get install wrk)"
  if [ "$(id -u)" -eq 0 ]; then
    apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get install -y wrk || { sudo apt-get update && sudo apt-get install -y wrk; }
  else
    echo "cannot install wrk (not root, no sudo); the hot-path figures will be skipped" >&2
  fi
fi
if ! command -v valgrind >/dev/null 2>&1; then
  echo "valgrind not found: the callgrind instruction counts will be skipped" >&2
fi

echo "== building (bench profile; the load harness runs the credbroker binary it builds)"
cargo bench --locked --no-run --bench validation --bench load

if [ -z "${CB_BENCH_ONLY:-}" ]; then
  echo "== criterion micro-benchmarks (benches/validation.rs)"
  cargo bench --locked --bench validation
fi

echo "== load harness (benches/load)"
cargo bench --locked --bench load
