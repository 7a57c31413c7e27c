#!/usr/bin/env bash
# Same load, same machine, one run: librdkafka's in-memory mock cluster
# (benches/mock/mock_cluster) versus Shale (`shale dev`, local-directory object
# store, release build). Driven by librdkafka's rdkafka_performance 2.15.1.
#
#   benches/compare.sh [--messages N] [--latency-messages N] [--rate R]
#                      [--only mock|shale] [--idempotence] [--keep]
#
# (a) produce MB/s: acks=all, 1 KiB records, topic with 8 partitions,
#     N messages (default 300000 = 293 MiB), librdkafka default
#     partitioner (sticky for keyless records), linger.ms=5.
# (b) catch-up consume MB/s: legacy (assign, no group) consumer of all 8
#     partitions from the beginning to the end of the log.
#     Note: the mock cluster keeps only the last 5 MiB of each partition
#     (hard-coded in librdkafka), so it serves at most ~40 MiB here.
# (c) produce latency p50/p99 (send -> delivery report, acks=all) at a fixed
#     rate R msg/s (default 1000) for N messages (default 10000).
# --idempotence: the producers run with enable.idempotence=true (InitProducerId, sequence
# numbers checked per batch), to measure what deduplication costs.
# Also: object PUTs for Shale = new files in its local object directory
# (compaction is switched off for the run), during (a), during (c), in total.
#
# Environment: SHALE_BIN (default target/release/shale, built if missing),
# SHALE_CACHE_DIR (see tests/compat/librdkafka/lib.sh).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../tests/compat/librdkafka/lib.sh
. "$HERE/../tests/compat/librdkafka/lib.sh"

N=300000; LAT_N=10000; RATE=1000; ONLY=""; KEEP=0; IDEMPOTENCE=0
PERF_NPM_PKG="node-rdkafka@3.6.1"   # ships examples/rdkafka_performance.c
while [ $# -gt 0 ]; do
    case "$1" in
        --messages) N="${2:?}"; shift ;;
        --latency-messages) LAT_N="${2:?}"; shift ;;
        --rate) RATE="${2:?}"; shift ;;
        --only) ONLY="${2:?}"; shift ;;
        --keep) KEEP=1 ;;
        --idempotence) IDEMPOTENCE=1 ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1" ;;
    esac
    shift
done

ensure_librdkafka
BIN="$SHALE_CACHE_DIR/bin"; mkdir -p "$BIN"

# rdkafka_performance: the 2.15.1 npm tree has no examples/, so take the
# example's source from node-rdkafka's bundled librdkafka and compile it
# against the cached 2.15.1 (it includes ../src/rd.h, so it is placed in
# $RDK_DIR/examples/).
PERF="$BIN/rdkafka_performance-$RDK_VERSION"
if [ ! -x "$PERF" ]; then
    if [ -f "$RDK_DIR/examples/rdkafka_performance.c" ]; then
        :
    else
        tgz="$(npm_tarball "$PERF_NPM_PKG")"
        mkdir -p "$RDK_DIR/examples"
        tar -xzf "$tgz" -C "$RDK_DIR/examples" --strip-components=4 \
            package/deps/librdkafka/examples/rdkafka_performance.c || die "no rdkafka_performance.c in $tgz"
    fi
    gcc -O2 -o "$PERF" "$RDK_DIR/examples/rdkafka_performance.c" -I"$RDK_DIR" -I"$RDK_DIR/src" \
        -L"$RDK_DIR/src" -Wl,-rpath,"$RDK_DIR/src" -lrdkafka -lpthread -lm || die "building rdkafka_performance failed"
fi
TOPIC_TOOL="$BIN/topic_tool"
if [ ! -x "$TOPIC_TOOL" ] || [ "$HERE/mock/topic_tool.c" -nt "$TOPIC_TOOL" ]; then
    rdk_cc "$TOPIC_TOOL" "$HERE/mock/topic_tool.c" || die "building topic_tool failed"
fi
ensure_mock_cluster >/dev/null

WORK="$(mktemp -d "${TMPDIR:-/tmp}/shale-bench.XXXXXX")"
PID=""
cleanup() { stop_pid "$PID"; [ "$KEEP" -eq 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

PARTS="-p 0 -p 1 -p 2 -p 3 -p 4 -p 5 -p 6 -p 7"
PERF_COMMON="-X linger.ms=5"   # rdkafka_performance defaults to 1000
[ "$IDEMPOTENCE" -eq 1 ] && PERF_COMMON="$PERF_COMMON -X enable.idempotence=true"

declare -A R   # R[target.metric]
OBJDIR=""      # Shale's local object directory while Shale is the target
objects() { if [ -n "$OBJDIR" ]; then find "$OBJDIR" -type f 2>/dev/null | wc -l; else echo 0; fi; }

# produce/consume/latency against bootstrap $1 for target name $2
run_load() {
    local boot="$1" tgt="$2" out line o0 o1 o2
    o0="$(objects)"
    out="$WORK/$tgt.produce.log"
    log "$tgt: (a) producing $N x 1 KiB, acks=all, 8 partitions"
    # shellcheck disable=SC2086
    timeout 180 "$PERF" -P -t bench -b "$boot" -a -1 -s 1024 -c "$N" $PERF_COMMON >"$out" 2>&1
    line="$(grep -E 'messages produced .* delivered' "$out" | tail -1)"
    R[$tgt.produce_mbs]="$(sed -nE 's/.* and ([0-9.]+) MB\/s.*/\1/p' <<<"$line")"
    R[$tgt.produce_msgs]="$(sed -nE 's/.*\), ([0-9]+) delivered.*/\1/p' <<<"$line")"
    R[$tgt.produce_failed]="$(sed -nE 's/.*, ([0-9]+) failed\).*/\1/p' <<<"$line")"
    [ -n "${R[$tgt.produce_mbs]}" ] || { log "$tgt: produce failed:"; tail -5 "$out" >&2; }

    o1="$(objects)"
    out="$WORK/$tgt.consume.log"
    log "$tgt: (b) catch-up consume of 8 partitions from the beginning"
    # shellcheck disable=SC2086
    timeout 180 "$PERF" -C -t bench -b "$boot" $PARTS -o beginning -e -q >"$out" 2>&1
    line="$(grep -E 'messages \(.* bytes\) consumed in' "$out" | tail -1)"
    R[$tgt.consume_mbs]="$(sed -nE 's/.*\(([0-9.]+) MB\/s\).*/\1/p' <<<"$line")"
    R[$tgt.consume_msgs]="$(sed -nE 's/^% ([0-9]+) messages.*/\1/p' <<<"$line")"
    [ -n "${R[$tgt.consume_mbs]}" ] || { log "$tgt: consume failed:"; tail -5 "$out" >&2; }

    out="$WORK/$tgt.latency.log"
    o2="$(objects)"
    log "$tgt: (c) latency at $RATE msg/s, $LAT_N messages"
    # shellcheck disable=SC2086
    timeout 180 "$PERF" -P -t bench -b "$boot" -a -1 -s 1024 -c "$LAT_N" -r "$RATE" -l -A "$WORK/$tgt.lat" $PERF_COMMON >"$out" 2>&1
    R[$tgt.puts_a]=$((o1 - o0)); R[$tgt.puts_c]=$(( $(objects) - o2 ))
    if [ -s "$WORK/$tgt.lat" ]; then
        read -r R[$tgt.lat_n] R[$tgt.p50] R[$tgt.p99] R[$tgt.max] < <(sort -n "$WORK/$tgt.lat" | awk '
            {a[NR]=$1} END { if (NR==0) exit;
              i50=int(NR*0.50+0.5); i99=int(NR*0.99+0.5); if(i50<1)i50=1; if(i99<1)i99=1;
              printf "%d %.2f %.2f %.2f\n", NR, a[i50]/1000, a[i99]/1000, a[NR]/1000 }')
    else
        log "$tgt: latency run failed:"; tail -5 "$out" >&2
    fi
}

if [ "$ONLY" != shale ]; then
    start_mock "$WORK/mock.log" -t bench:8 || die "mock cluster failed"
    PID=$MOCK_PID
    run_load "$MOCK_BOOTSTRAP" mock
    stop_pid "$PID"; PID=""
fi

if [ "$ONLY" != mock ]; then
    port="$(free_port)"
    # num.partitions=8 as well, in case CreateTopics is not implemented yet.
    # Compaction off during the run, so the files present = objects PUT.
    SHALE_NUM_PARTITIONS=8 SHALE_COMPACTION_INTERVAL_MS=3600000 start_shale "$WORK/shale" "$port" "$WORK/shale.log" || die "shale failed to start"
    PID=$SHALE_PID
    parts="$("$TOPIC_TOOL" -b "127.0.0.1:$port" -p 8 bench 2>"$WORK/topic_tool.err" | sed -n 's/partitions: //p')"
    [ "$parts" = 8 ] || log "warning: bench topic on shale has ${parts:-?} partitions ($(tr '\n' ' ' <"$WORK/topic_tool.err"))"
    OBJDIR="$WORK/shale/objects"
    obj0="$(objects)"
    run_load "127.0.0.1:$port" shale
    R[shale.objects]=$(( $(objects) - obj0 ))
    R[shale.object_mib]="$(du -sm "$OBJDIR" 2>/dev/null | cut -f1)"
    OBJDIR=""
    stop_pid "$PID"; PID=""
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "" || b == "" || b+0 == 0) print "n/a"; else printf "%.2f", a/b }'; }
v() { local x="${R[$1]:-}"; echo "${x:-n/a}"; }
echo
echo "machine: $(nproc) cores, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p'), $(free -g | awk '/^Mem:/{print $2}') GiB RAM"
echo "librdkafka $RDK_VERSION rdkafka_performance; $N x 1 KiB produce (acks=all, 8 partitions, linger.ms=5); latency: $LAT_N msgs at $RATE msg/s"
printf '%-34s %12s %12s %12s\n' metric mock shale shale/mock
for m in produce_mbs consume_mbs p50 p99 max; do
    case $m in
        produce_mbs) label="(a) produce MB/s" ;;
        consume_mbs) label="(b) catch-up consume MB/s" ;;
        p50) label="(c) produce latency p50 ms" ;;
        p99) label="(c) produce latency p99 ms" ;;
        max) label="(c) produce latency max ms" ;;
    esac
    printf '%-34s %12s %12s %12s\n' "$label" "$(v mock.$m)" "$(v shale.$m)" "$(ratio "${R[shale.$m]:-}" "${R[mock.$m]:-}")"
done
printf '%-34s %12s %12s\n' "messages delivered (a)" "$(v mock.produce_msgs)" "$(v shale.produce_msgs)"
printf '%-34s %12s %12s\n' "messages consumed (b)" "$(v mock.consume_msgs)" "$(v shale.consume_msgs)"
printf '%-34s %12s %12s\n' "latency samples (c)" "$(v mock.lat_n)" "$(v shale.lat_n)"
printf '%-34s %12s %12s\n' "shale object PUTs during (a)" "-" "$(v shale.puts_a)"
printf '%-34s %12s %12s\n' "shale object PUTs during (c)" "-" "$(v shale.puts_c)"
printf '%-34s %12s %12s\n' "shale object PUTs, whole run" "-" "$(v shale.objects)"
printf '%-34s %12s %12s\n' "shale object dir MiB" "-" "$(v shale.object_mib)"
[ "$KEEP" -eq 1 ] && echo "logs: $WORK"
exit 0
