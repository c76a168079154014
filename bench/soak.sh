#!/usr/bin/env bash
# credbroker soak (issue 16): not a test. Builds the release binary and the load harness, then
# runs `cargo bench --bench load -- soak` (benches/load/soak.rs): the emulated issuer and Cognito
# plus `credbroker run`, a steady load over >= 1,000 users for CB_SOAK_SECONDS (default 3600),
# Cognito faults injected through the emulators' control endpoints (throttling, 5xx, a JWKS
# rotation, a 10-minute outage), RSS / open fds / errors by kind sampled every
# CB_SOAK_SAMPLE_SECONDS (10), and the "Soak" section of BENCHMARKS.md rewritten at the end.
#
#   bash bench/soak.sh                          # the full hour
#   CB_SOAK_SECONDS=600 nice -n 10 bash bench/soak.sh   # ten minutes, politely
#
# Other knobs: CB_SOAK_USERS (1000), CB_SOAK_CONNECTIONS (32), CB_BENCH_OUT (where
# BENCHMARKS.md is). Samples go to target/soak-samples.csv. Exit status: 0 when no unexpected
# error was seen, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building (bench profile = release; the soak runs the credbroker binary it builds)"
cargo bench --locked --no-run --bench load

echo "== soak (${CB_SOAK_SECONDS:-3600} s)"
log=$(mktemp)
cargo bench --locked --bench load -- soak | tee "$log"
if grep -q '^| unexpected errors | 0 ' "$log"; then
  rm -f "$log"
else
  echo "soak: unexpected errors (see the table above)" >&2
  rm -f "$log"
  exit 1
fi
