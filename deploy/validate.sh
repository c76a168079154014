#!/usr/bin/env bash
# Validates everything under deploy/ offline, against a real credbroker. Exit 0 only when every
# check passed; each failure is printed and the script goes on, so one run lists them all.
#
#   deploy/validate.sh                 # builds target/debug/credbroker if needed
#   VALIDATE_BIN=path deploy/validate.sh
#   EXPOSITION=metrics.prom deploy/validate.sh   # check a saved exposition instead of the demo's
#
# Checks:
#   1. both credbroker.toml files under deploy/kubernetes pass `credbroker check-config`;
#   2. `kubectl kustomize` builds the base and every overlay; the output passes
#      kubernetes-validate --strict for Kubernetes 1.29 (native sidecars) and the newest schema
#      it ships (CRDs such as PodMonitor have no schema there and are checked by
#      check_manifests.py instead: selector matches a pod template, port exists, the sidecar is
#      hardened and probed on /livez and /readyz);
#   3. promtool check rules + promtool test rules on deploy/prometheus/rules.yml, and
#      alerts.yaml (PrometheusRule) carries exactly the same groups;
#   4. `credbroker demo` runs; credentials are fetched on the container and IMDS endpoints;
#      /livez and /readyz answer 200; /metrics passes `promtool check metrics`; SIGTERM stops
#      the demo with exit status 0;
#   5. the Grafana dashboard is valid JSON, and every credbroker_*/process_* name it and the
#      rules use exists in that exposition.
#
# Installs what it needs when missing: promtool (Debian package "prometheus"), curl,
# PyYAML and kubernetes-validate (pip). kubectl with kustomize >= v4 is used when present (the
# machine image has it); without it step 2 is skipped with a SKIP line.

set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY="$ROOT/deploy"
WORK="$(mktemp -d -t credbroker-validate.XXXXXX)"
FAILURES=0
DEMO_PID=""

cleanup() {
    if [[ -n "$DEMO_PID" ]] && kill -0 "$DEMO_PID" 2>/dev/null; then
        kill "$DEMO_PID" 2>/dev/null
        wait "$DEMO_PID" 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
pass() { printf '  ok   %s\n' "$*"; }
fail() {
    printf '  FAIL %s\n' "$*"
    FAILURES=$((FAILURES + 1))
}
# run DESCRIPTION COMMAND...: runs it, shows its output only on failure.
run() {
    local what="$1"
    shift
    if "$@" >"$WORK/out" 2>&1; then
        pass "$what"
    else
        fail "$what"
        sed 's/^/       /' "$WORK/out" | tail -40
    fi
}

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=""
apt_install() {
    if [[ -z "$APT_UPDATED" ]]; then
        as_root apt-get update -qq >/dev/null && APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pip_install() {
    python3 -m pip install --quiet "$@" 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages "$@"
}

step "tools"
command -v curl >/dev/null || apt_install curl || fail "cannot install curl"
command -v promtool >/dev/null || apt_install prometheus || fail "cannot install promtool (Debian package prometheus)"
python3 -c 'import yaml' 2>/dev/null || pip_install PyYAML || fail "cannot install PyYAML"
command -v kubernetes-validate >/dev/null || python3 -c 'import kubernetes_validate' 2>/dev/null ||
    pip_install kubernetes-validate || fail "cannot install kubernetes-validate"
# kubectl comes with the machine image (google-cloud-cli's kubectl, kustomize v5). Debian's
# kubernetes-client is no substitute: its kustomize v2 rejects `labels` and `patches`. Without a
# kustomize >= v4 the kustomize step below is skipped, loudly, and everything else still runs.
KUSTOMIZE_OK=""
if command -v kubectl >/dev/null; then
    kv="$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')"
    if [[ -n "$kv" && "$kv" -ge 4 ]]; then
        KUSTOMIZE_OK=1
    fi
fi
KV=(kubernetes-validate)
command -v kubernetes-validate >/dev/null || KV=(python3 -m kubernetes_validate)
for tool in curl promtool kubectl python3; do
    command -v "$tool" >/dev/null && pass "$tool: $(command -v "$tool")"
done

step "credbroker binary"
BIN="${VALIDATE_BIN:-}"
if [[ -z "$BIN" ]]; then
    if (cd "$ROOT" && cargo build --locked --quiet --bin credbroker); then
        BIN="$ROOT/target/debug/credbroker"
    else
        fail "cargo build --bin credbroker"
    fi
fi
[[ -n "$BIN" && -x "$BIN" ]] && pass "$BIN"

step "credbroker configuration in the manifests"
if [[ -n "$BIN" ]]; then
    while IFS= read -r toml; do
        run "check-config ${toml#"$ROOT"/}" "$BIN" check-config --file "$toml"
    done < <(find "$DEPLOY/kubernetes" -name '*.toml' | sort)
fi

step "kustomize builds and schemas"
if [[ -z "$KUSTOMIZE_OK" ]]; then
    printf '  SKIP kubectl with kustomize >= v4 not found; manifests not built or schema-checked\n'
fi
KUSTOMIZATIONS=("$DEPLOY/kubernetes/base")
for overlay in "$DEPLOY"/kubernetes/overlays/*/; do
    KUSTOMIZATIONS+=("${overlay%/}")
done
[[ -z "$KUSTOMIZE_OK" ]] && KUSTOMIZATIONS=()
for dir in "${KUSTOMIZATIONS[@]}"; do
    name="${dir#"$DEPLOY"/kubernetes/}"
    out="$WORK/${name//\//-}.yaml"
    if ! kubectl kustomize "$dir" >"$out" 2>"$WORK/out"; then
        fail "kubectl kustomize $name"
        sed 's/^/       /' "$WORK/out"
        continue
    fi
    pass "kubectl kustomize $name ($(grep -c '^kind:' "$out") resources)"
    for version in 1.29.0 latest; do
        args=(--strict --quiet)
        [[ "$version" != latest ]] && args+=(-k "$version")
        # Unknown kinds (CRDs) are warnings there: checked below instead.
        run "schema ($version) $name" "${KV[@]}" "${args[@]}" "$out"
    done
    run "sidecar hardening and PodMonitor wiring $name" \
        python3 "$DEPLOY/check_manifests.py" monitors "$out"
done

step "Prometheus rules"
RULES="$DEPLOY/prometheus/rules.yml"
run "promtool check rules" promtool check rules "$RULES"
run "promtool test rules" bash -c "cd '$DEPLOY/prometheus' && promtool test rules rules_test.yml"
run "alerts.yaml (PrometheusRule) matches rules.yml" \
    python3 "$DEPLOY/check_manifests.py" rules "$DEPLOY/prometheus/alerts.yaml" "$RULES"

step "metrics exposition"
EXPO="${EXPOSITION:-}"
if [[ -z "$EXPO" && -n "$BIN" ]]; then
    EXPO="$WORK/metrics.prom"
    "$BIN" demo --listen 127.0.0.1:0 --token-file "$WORK/demo/id-token" \
        >"$WORK/demo.out" 2>"$WORK/demo.err" &
    DEMO_PID=$!
    for _ in $(seq 1 600); do
        grep -q 'metrics: ' "$WORK/demo.out" 2>/dev/null && break
        kill -0 "$DEMO_PID" 2>/dev/null || break
        sleep 0.1
    done
    METRICS_URL="$(grep -o 'http://[^ ]*/metrics' "$WORK/demo.out" | head -1)"
    CREDS_URL="$(awk '/credentials: / {print $2; exit}' "$WORK/demo.out")"
    IMDS_URL="$(grep -o 'AWS_EC2_METADATA_SERVICE_ENDPOINT=[^ ]*' "$WORK/demo.out" | head -1 | cut -d= -f2)"
    if [[ -z "$METRICS_URL" || -z "$CREDS_URL" ]]; then
        fail "credbroker demo did not print its URLs"
        sed 's/^/       /' "$WORK/demo.out" "$WORK/demo.err" | tail -40
        EXPO=""
    else
        pass "credbroker demo: metrics at $METRICS_URL"
        ADMIN="${METRICS_URL%/metrics}"
        code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
        [[ "$(code "$ADMIN/livez")" == 200 ]] && pass "/livez 200" || fail "/livez"
        ready=""
        for _ in $(seq 1 100); do
            [[ "$(code "$ADMIN/readyz")" == 200 ]] && ready=1 && break
            sleep 0.1
        done
        [[ -n "$ready" ]] && pass "/readyz 200" || fail "/readyz: $(curl -s "$ADMIN/readyz")"
        token="$(cat "$WORK/demo/id-token")"
        [[ "$(code -H "Authorization: $token" "$CREDS_URL")" == 200 ]] &&
            pass "container credentials 200" || fail "container credentials"
        [[ "$(code -H "Authorization: $token" "$CREDS_URL")" == 200 ]] || fail "container credentials (cached)"
        [[ "$(code "$CREDS_URL")" == 401 ]] || fail "container credentials without a token should be 401"
        if [[ -n "$IMDS_URL" ]]; then
            imds_token="$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "${IMDS_URL}latest/api/token")"
            role="$(curl -s -H "X-aws-ec2-metadata-token: $imds_token" "${IMDS_URL}latest/meta-data/iam/security-credentials/")"
            [[ "$(code -H "X-aws-ec2-metadata-token: $imds_token" "${IMDS_URL}latest/meta-data/iam/security-credentials/$role")" == 200 ]] &&
                pass "IMDS credentials 200" || fail "IMDS credentials"
        fi
        if curl -sf "$METRICS_URL" >"$EXPO"; then
            pass "scraped $(grep -c '^# TYPE' "$EXPO") metric families"
        else
            fail "scrape $METRICS_URL"
            EXPO=""
        fi
        kill -TERM "$DEMO_PID"
        wait "$DEMO_PID"
        status=$?
        DEMO_PID=""
        [[ "$status" -eq 0 ]] && pass "SIGTERM: demo exited 0" || fail "SIGTERM: demo exited $status"
    fi
fi
if [[ -n "$EXPO" ]]; then
    run "promtool check metrics" bash -c "promtool check metrics <'$EXPO'"
    step "dashboard and rules use only exported metrics"
    run "names in dashboard and rules" python3 "$DEPLOY/check_manifests.py" names "$EXPO" \
        "$DEPLOY/grafana/credbroker-dashboard.json" "$RULES"
else
    fail "no exposition to check"
fi

step "Dockerfile"
DOCKERFILE="$ROOT/Dockerfile"
grep -q '^FROM .* AS build' "$DOCKERFILE" && grep -q '^FROM gcr.io/distroless/' "$DOCKERFILE" &&
    pass "multi-stage, distroless runtime" || fail "Dockerfile: expected a build stage and a distroless runtime"
grep -Eq '^USER (65532|nonroot)' "$DOCKERFILE" && pass "non-root user" || fail "Dockerfile: USER must be non-root"

echo
if [[ "$FAILURES" -eq 0 ]]; then
    echo "deploy/validate.sh: all checks passed"
else
    echo "deploy/validate.sh: $FAILURES check(s) failed"
    exit 1
fi
