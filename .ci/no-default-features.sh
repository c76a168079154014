#!/usr/bin/env bash
# The daemon as the Docker image builds it (`--no-default-features`: no emulators) still works
# from a config file. Run by .ci/run after the release build of `demo --check`.
#
#   1. `cargo tree` of that build has no credbroker-emulators (and the default build has it);
#   2. it builds without warnings (debug: reuses the cache of `cargo test`, only credbroker
#      itself and the few crates whose features differ are compiled again);
#   3. `demo` answers that this build has no emulators (exit 2);
#   4. `check-config` accepts config/credbroker.example.toml;
#   5. `credbroker emulators` of the default-feature release binary (FULL_BIN) serves the
#      emulated issuer and Cognito; the lean binary runs from config/emulators.toml (ports
#      moved to free ones through CREDBROKER_* variables) and serves credentials to curl once.
#
# Every process it starts is stopped on exit; everything binds loopback on free ports.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
FULL_BIN="${FULL_BIN:-$TARGET/release/credbroker}"
WORK="$(mktemp -d -t credbroker-lean.XXXXXX)"
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
    printf 'FAIL %s\n' "$*" >&2
    local f
    for f in "$WORK"/*.out "$WORK"/*.err; do
        [[ -s "$f" ]] && { printf -- '--- %s\n' "${f##*/}" >&2; tail -30 "$f" >&2; }
    done
    exit 1
}
ok() { printf 'ok   %s\n' "$*"; }

# waits up to 30 s for PATTERN in FILE.
wait_for() {
    local pattern="$1" file="$2" _
    for _ in $(seq 300); do
        grep -q -- "$pattern" "$file" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# 1. No emulator code in the lean build's dependency tree.
if cargo tree --locked -p credbroker --no-default-features -e normal --prefix none |
    grep -q '^credbroker-emulators '; then
    fail "cargo tree --no-default-features lists credbroker-emulators"
fi
cargo tree --locked -p credbroker -e normal --prefix none | grep -q '^credbroker-emulators ' ||
    fail "the default build's tree has no credbroker-emulators (is the check above still looking?)"
ok "cargo tree --no-default-features -e normal: no credbroker-emulators"

# 2. Build it, without a warning (code only the emulators use would show up as dead here).
cargo build --locked -p credbroker --bin credbroker --no-default-features 2>&1 |
    tee "$WORK/build.err" >&2
if grep -q '^warning' "$WORK/build.err"; then
    fail "cargo build --no-default-features warns"
fi
LEAN="$WORK/credbroker-lean"
cp "$TARGET/debug/credbroker" "$LEAN"
ok "cargo build --no-default-features (no warnings)"

# 3. demo is not there, and says why.
status=0
"$LEAN" demo --check >"$WORK/demo.out" 2>"$WORK/demo.err" || status=$?
[[ "$status" == 2 ]] || fail "demo in a build without emulators exited $status, not 2"
grep -q 'built without the emulators' "$WORK/demo.err" || fail "demo did not say why"
ok "demo: built without the emulators (exit 2)"

# 4. The documented example configuration.
"$LEAN" check-config --file config/credbroker.example.toml >"$WORK/check.out" 2>&1 ||
    fail "check-config --file config/credbroker.example.toml"
ok "check-config --file config/credbroker.example.toml"

# 5. Against the emulators, from config/emulators.toml.
[[ -x "$FULL_BIN" ]] || fail "no default-feature binary at $FULL_BIN (set FULL_BIN)"
"$FULL_BIN" emulators --issuer-listen 127.0.0.1:0 --cognito-listen 127.0.0.1:0 \
    --token-file "$WORK/id-token" >"$WORK/emulators.out" 2>"$WORK/emulators.err" &
PIDS+=("$!")
wait_for 'Cognito Identity:' "$WORK/emulators.out" || fail "credbroker emulators did not start"
ISSUER="$(awk '/issuer \(OIDC\):/ {print $3; exit}' "$WORK/emulators.out")"
COGNITO="$(awk '/Cognito Identity:/ {print $3; exit}' "$WORK/emulators.out")"
[[ "$ISSUER" == http://127.0.0.1:*/ && "$COGNITO" == http://127.0.0.1:* ]] ||
    fail "cannot read the emulators' URLs"

CREDBROKER_PROVIDERS__AUTH0__ISSUER="$ISSUER" \
    CREDBROKER_COGNITO__ENDPOINT_URL="$COGNITO" \
    CREDBROKER_ADMIN__LISTEN=127.0.0.1:0 \
    "$LEAN" run --config config/emulators.toml --listen 127.0.0.1:0 --log-format json \
    >"$WORK/run.out" 2>"$WORK/run.err" &
PIDS+=("$!")
wait_for '"credbroker is serving"' "$WORK/run.err" || fail "credbroker run did not start serving"
LISTEN="$(grep '"credbroker is serving"' "$WORK/run.err" | grep -o '"listen":"[^"]*"' | cut -d'"' -f4)"
[[ -n "$LISTEN" ]] || fail "cannot read the broker's address"

curl -sS -f -H "Authorization: $(cat "$WORK/id-token")" \
    "http://$LISTEN/v1/credentials" >"$WORK/credentials.out" ||
    fail "GET /v1/credentials"
for field in AccessKeyId SecretAccessKey Token Expiration; do
    grep -q "\"$field\":\"" "$WORK/credentials.out" || fail "no $field in the credentials"
done
ok "run --config config/emulators.toml: credentials from http://$LISTEN/v1/credentials"
