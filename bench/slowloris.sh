#!/usr/bin/env bash
# Slow-loris against the release binary (issue 16, defect 4): emulators + broker as real
# processes, 1,200 attackers sending one byte every 2 s (reconnecting when closed), and a
# well-behaved client's latency before and during the attack.
#
#   bash bench/slowloris.sh                 # builds target/release/credbroker and the tool
#   CB_BIN=/path/to/credbroker bash bench/slowloris.sh   # another build (e.g. an older commit)
#
# Knobs (passed to the tool): CB_LORIS_CONNECTIONS (1200), CB_LORIS_INTERVAL (2s),
# CB_LORIS_SECONDS (30s per phase), CB_LORIS_PROBE_TIMEOUT (10s). The broker runs with its
# defaults (server.max_connections = 1024, header_read_timeout = 5s).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${CB_BIN:-}" ]; then
  cargo build --locked --release --bin credbroker
  CB_BIN=target/release/credbroker
fi
cargo build --locked --release --example slowloris
TOOL=target/release/examples/slowloris

ulimit -n 8192 2>/dev/null || true
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

"$CB_BIN" emulators --issuer-listen 127.0.0.1:18901 --cognito-listen 127.0.0.1:18902 \
  --token-file "$dir/id-token" >"$dir/emulators.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$dir/id-token" ] && break; sleep 0.1; done

CREDBROKER_PROVIDERS__AUTH0__ISSUER=http://127.0.0.1:18901/ \
CREDBROKER_COGNITO__ENDPOINT_URL=http://127.0.0.1:18902 \
CREDBROKER_SERVER__LISTEN=127.0.0.1:18900 \
CREDBROKER_ADMIN__LISTEN=127.0.0.1:18909 \
  "$CB_BIN" run --config config/emulators.toml --log-level warn >"$dir/broker.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -fs http://127.0.0.1:18909/livez >/dev/null 2>&1 && break
  sleep 0.1
done

echo "== $("$CB_BIN" --version 2>/dev/null || echo credbroker) ($CB_BIN)"
"$TOOL" --target 127.0.0.1:18900 --token-file "$dir/id-token" \
  --connections "${CB_LORIS_CONNECTIONS:-1200}" --interval "${CB_LORIS_INTERVAL:-2s}" \
  --duration "${CB_LORIS_SECONDS:-30s}" --probe-timeout "${CB_LORIS_PROBE_TIMEOUT:-10s}"
echo "== broker metrics after the attack"
curl -fs http://127.0.0.1:18909/metrics | grep -E '^credbroker_http_connections' || \
  echo "(no connection metrics in this build)"
