#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) and prints per-target figures.
#   scripts/fuzz.sh 180
#   FUZZ_TARGETS="broker_request batch_decode" scripts/fuzz.sh 600   (a subset)
# Needs the nightly toolchain; installs cargo-fuzz if missing. Each target starts from the
# checked-in seeds in fuzz/corpus/<target>/ (libFuzzer adds what it finds there; only
# seed-* files are tracked). Crash inputs land in fuzz/artifacts/<target>/.
set -euo pipefail

SECONDS_PER_TARGET="${1:-60}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck disable=SC2206
TARGETS=(${FUZZ_TARGETS:-request_decode broker_request object_decode batch_decode stored_decode rpc_decode})
# Its own target dir: sanitizer builds share nothing with normal ones.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$ROOT/fuzz/target}"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

cd "$ROOT/fuzz"
for t in "${TARGETS[@]}"; do
    cargo +nightly fuzz build "$t" >/dev/null
done

status=0
printf '%-16s %10s %12s %10s %8s\n' target seconds execs execs/s crashes
for t in "${TARGETS[@]}"; do
    log="$(mktemp)"
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | wc -l)
    set +e
    cargo +nightly fuzz run "$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1
    rc=$?
    set -e
    after=$(find "artifacts/$t" -type f | wc -l)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    crashes=$((after - before))
    printf '%-16s %10s %12s %10s %8s\n' "$t" "$SECONDS_PER_TARGET" "${execs:-?}" "${rate:-?}" "$crashes"
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        status=1
        echo "--- $t failed (exit $rc); last lines of its log ($log):"
        tail -30 "$log"
    else
        rm -f "$log"
    fi
done
exit $status
