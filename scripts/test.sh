#!/usr/bin/env bash
# Runs every test of Shale on a fresh machine: installs what is missing, builds, then
#   1. unit tests           cargo test --workspace
#   2. end-to-end tests     pytest tests/e2e (real clients against `shale` + a moto S3 server)
#   3. librdkafka allowlist tests/compat/librdkafka/run.sh --allowlist (when present)
# Every stage runs even when an earlier one failed; the exit status is non-zero when any
# stage failed, and a summary is printed at the end.
#
# Usage: scripts/test.sh [STAGE...]     stages: install build unit e2e compat (default: all)
# Environment:
#   PYTEST_ARGS    extra pytest arguments, e.g. PYTEST_ARGS="-k kcat"
#   SHALE_BIN      shale binary for the e2e tests (default: target/release/shale)
#   CARGO_TEST_ARGS extra `cargo test` arguments
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PYTHON="${PYTHON:-python3}"
export PYTHON

ALL_STAGES=(install build unit e2e compat)
if [ $# -gt 0 ]; then STAGES=("$@"); else STAGES=("${ALL_STAGES[@]}"); fi
for s in "${STAGES[@]}"; do
    case " ${ALL_STAGES[*]} " in *" $s "*) ;; *) echo "unknown stage: $s (stages: ${ALL_STAGES[*]})" >&2; exit 2 ;; esac
done
want() { case " ${STAGES[*]} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

names=(); statuses=(); durations=()
failed=0
t_all=$SECONDS

banner() { printf '\n==================== %s ====================\n' "$*"; }

# record NAME STATUS SECONDS
record() {
    names+=("$1"); statuses+=("$2"); durations+=("$3")
    case "$2" in ok|skipped) ;; *) failed=$((failed + 1)) ;; esac
}

# stage NAME COMMAND...: runs the command, records its result.
stage() {
    local name="$1"; shift
    banner "$name: $*"
    local t=$SECONDS rc=0
    "$@" </dev/null || rc=$?
    if [ $rc -eq 0 ]; then record "$name" ok $((SECONDS - t))
    else record "$name" "FAILED (exit $rc)" $((SECONDS - t)); fi
    return $rc
}

if want install; then
    stage install bash scripts/install-test-deps.sh
fi

build_ok=1
if want build; then
    stage build cargo build --release -p shale || build_ok=0
fi

if want unit; then
    # shellcheck disable=SC2086
    stage unit cargo test --workspace ${CARGO_TEST_ARGS:-}
fi

BIN="${SHALE_BIN:-$ROOT/target/release/shale}"
if want e2e; then
    if [ $build_ok -eq 1 ] && [ -x "$BIN" ]; then
        # -v: one line per test; -rfEX: reasons of failures, errors, xfails/xpasses at the end.
        # shellcheck disable=SC2086
        stage e2e "$PYTHON" -m pytest tests/e2e -v -rfEsxX --color=no --durations=10 ${PYTEST_ARGS:-}
    else
        banner "e2e"
        echo "not run: no shale binary at $BIN (build failed)"
        record e2e "FAILED (not run: no binary)" 0
    fi
fi

if want compat; then
    if [ -f tests/compat/librdkafka/run.sh ]; then
        stage compat bash tests/compat/librdkafka/run.sh --allowlist
    else
        banner "compat"
        echo "tests/compat/librdkafka/run.sh not present: skipped"
        record compat skipped 0
    fi
fi

banner "summary"
passed=0; skipped=0
for i in "${!names[@]}"; do
    printf '  %-8s %-32s %5ss\n' "${names[$i]}" "${statuses[$i]}" "${durations[$i]}"
    case "${statuses[$i]}" in ok) passed=$((passed + 1)) ;; skipped) skipped=$((skipped + 1)) ;; esac
done
printf '  total %ss\n' $((SECONDS - t_all))
echo "stages: $passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ]
