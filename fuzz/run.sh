#!/usr/bin/env bash
# Runs credbroker's fuzz targets one after another and prints, per target, the executions,
# coverage (libFuzzer's cov = edges, ft = features), corpus size and crashes. Exits non-zero
# when any target crashed (the reproducer is under fuzz/artifacts/<target>/).
#
#   fuzz/run.sh                      every target for 60 s each
#   fuzz/run.sh -t 20                every target for 20 s each
#   fuzz/run.sh -n 5000 graphql      5,000 runs of graphql only
#   FUZZ_SECONDS=600 fuzz/run.sh id_token http_routes
#
# Environment: FUZZ_SECONDS / FUZZ_RUNS (as -t / -n); FUZZ_PROFILE (release, the default: an
# optimized build for long runs; dev: the quicker build the CI smoke uses); FUZZ_SANITIZER
# (address, cargo-fuzz's default, or none: about twice as fast, and credbroker itself is safe
# Rust); FUZZ_CODEGEN_UNITS (cargo-fuzz's default unless set); FUZZ_ARGS (extra libFuzzer flags);
# CARGO_TARGET_DIR (absolute) to keep the instrumented build elsewhere (CI keeps it in a cache).
# New inputs go to fuzz/corpus-work/<target>/ (not committed); fuzz/corpus/<target>/ holds the
# committed seeds and is only read.
set -euo pipefail
cd "$(dirname "$0")"

TARGETS_ALL=(id_token http_routes graphql cognito_answers token_endpoint config shared_entries
    keys_file realtime)
seconds="${FUZZ_SECONDS:-}"
runs="${FUZZ_RUNS:-}"
while getopts "t:n:h" opt; do
    case "$opt" in
        t) seconds="$OPTARG" ;;
        n) runs="$OPTARG" ;;
        *) sed -n '2,16p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
if [[ -z "$seconds" && -z "$runs" ]]; then seconds=60; fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then targets=("${TARGETS_ALL[@]}"); fi

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 3
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

build=(--sanitizer "${FUZZ_SANITIZER:-address}")
profile="${FUZZ_PROFILE:-release}"
case "$profile" in
    release) ;;
    dev) build+=(--dev) ;;
    *) echo "fuzz/run.sh: FUZZ_PROFILE is release or dev" >&2; exit 2 ;;
esac
if [[ -n "${FUZZ_CODEGEN_UNITS:-}" ]]; then build+=(--codegen-units "$FUZZ_CODEGEN_UNITS"); fi
if [[ ${#targets[@]} -eq 1 ]]; then build+=("${targets[0]}"); fi
build_started=$(date +%s)
# cargo-fuzz has no --locked; a changed lock file is caught below.
cargo +nightly fuzz build "${build[@]}"
if git rev-parse --git-dir >/dev/null 2>&1 && ! git diff --quiet -- Cargo.lock; then
    echo "fuzz/run.sh: fuzz/Cargo.lock changed during the build; commit it" >&2
    exit 4
fi
echo "build: $(( $(date +%s) - build_started )) s"

bin_dir="${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/$([[ "$profile" == dev ]] && echo debug || echo release)"
limit=()
if [[ -n "$runs" ]]; then limit+=("-runs=$runs"); fi
if [[ -n "$seconds" ]]; then limit+=("-max_total_time=$seconds"); fi

summary=()
failed=0
for t in "${targets[@]}"; do
    mkdir -p "corpus-work/$t" "artifacts/$t" "corpus/$t"
    before=$(find "artifacts/$t" -type f ! -name 'last-run.log' | wc -l)
    log="artifacts/$t/last-run.log"
    started=$(date +%s)
    set +e
    # shellcheck disable=SC2086
    "$bin_dir/$t" "${limit[@]}" -print_final_stats=1 -rss_limit_mb=4096 -timeout=30 \
        -artifact_prefix="artifacts/$t/" ${FUZZ_ARGS:-} "corpus-work/$t" "corpus/$t" \
        >"$log" 2>&1
    code=$?
    set -e
    elapsed=$(( $(date +%s) - started ))
    after=$(find "artifacts/$t" -type f ! -name 'last-run.log' | wc -l)
    crashes=$(( after - before ))
    if [[ $code -ne 0 && $crashes -eq 0 ]]; then crashes=1; fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corpus=$(sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p' <<<"$last")
    summary+=("$(printf '%-16s %12s %7s %7s %12s %8s %6ss' "$t" "${execs:-?}" "${cov:-?}" \
        "${ft:-?}" "${corpus:-?}" "$crashes" "$elapsed")")
    if [[ $crashes -ne 0 ]]; then
        failed=1
        echo "== $t CRASHED (exit $code); last lines of $log:" >&2
        tail -30 "$log" >&2
    fi
done

printf '\n%-16s %12s %7s %7s %12s %8s %7s\n' target executions cov ft corpus crashes time
printf '%s\n' "${summary[@]}"
exit "$failed"
