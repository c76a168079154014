#!/usr/bin/env bash
# Mutation testing with cargo-mutants (issue 16): not a test and not CI — a tool for finding
# what the suite would let slip. Each mutant (a function body replaced, an operator flipped)
# is built and the chosen tests run; a mutant that passes every test is a "survivor": either a
# test is missing or the code is redundant. Survivors are listed at the end and in
# mutants.out/missed.txt.
#
#   bash tests/mutants.sh                       # the token validator (src/oidc/), focused tests
#   MUTANTS_FILES="src/identity/exchange.rs" MUTANTS_TESTS="single_flight refresh faults" bash tests/mutants.sh
#   MUTANTS_RE='check_(signature|audience)' bash tests/mutants.sh   # only functions matching
#
# Knobs: MUTANTS_FILES (space-separated, default src/oidc/*.rs), MUTANTS_RE (a regex over the
# mutant's name, default: every mutant of the files), MUTANTS_TESTS (integration-test name
# filters of the `it` binary, default the token, fault and container tests; "all" runs the
# whole suite), MUTANTS_JOBS (1). It runs in a scratch copy of the repository (cargo-mutants'
# default), so the working tree is never touched; the first build takes as long as a clean one.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo mutants --version >/dev/null 2>&1; then
  echo "tests/mutants.sh: installing cargo-mutants" >&2
  cargo install cargo-mutants --locked
fi

files=(${MUTANTS_FILES:-src/oidc/*.rs})
tests=(${MUTANTS_TESTS:-bad_tokens faults container})
args=(--no-shuffle --gitignore true -j "${MUTANTS_JOBS:-1}" --timeout-multiplier 3)
for f in "${files[@]}"; do args+=(-f "$f"); done
if [[ -n "${MUTANTS_RE:-}" ]]; then args+=(--re "$MUTANTS_RE"); fi
# Integration tests only: they drive the real server through real clients, which is the
# suite of record; unit tests would catch some mutants by testing the mutated function itself.
if [[ "${tests[*]}" != all ]]; then
  args+=(--cargo-test-arg=--test=it --cargo-test-arg=--)
  for t in "${tests[@]}"; do args+=("--cargo-test-arg=$t"); done
fi

status=0
cargo mutants "${args[@]}" || status=$?
echo
echo "== survivors (mutants.out/missed.txt)"
cat mutants.out/missed.txt 2>/dev/null || true
echo "== caught: $(wc -l < mutants.out/caught.txt 2>/dev/null || echo 0), missed: $(wc -l < mutants.out/missed.txt 2>/dev/null || echo 0), timeout: $(wc -l < mutants.out/timeout.txt 2>/dev/null || echo 0), unviable: $(wc -l < mutants.out/unviable.txt 2>/dev/null || echo 0)"
# cargo-mutants exits 2 when mutants were missed, 3 on timeouts: report, do not fail.
if [[ $status -ne 0 && $status -ne 2 && $status -ne 3 ]]; then exit "$status"; fi
