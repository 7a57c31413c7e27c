#!/usr/bin/env bash
# librdkafka 2.15.1 test suite against Shale (or against librdkafka's own mock
# cluster, to prove the harness). See docs/compatibility.md.
#
#   run.sh --allowlist            tests in allowlist.txt; all must pass (CI)
#   run.sh --sweep                every test that needs only a plain broker
#   run.sh --tests 0001,0012      these tests
#   run.sh --list                 print the sweep selection with reasons
# Options:
#   --target shale|mock           broker under test (default shale; mock =
#                                 benches/mock/mock_cluster with 3 brokers)
#   --bootstrap HOST:PORT         use an already running broker instead
#   --fresh                       new broker and data dir for every test
#                                 (default: one broker for the whole run,
#                                 restarted only if it exits)
#   --timeout SECONDS             per-test timeout (default 180)
#   --kafka-version V             TEST_KAFKA_VERSION (default 3.9.0)
#   --log-dir DIR                 keep per-test logs here (default: mktemp)
#   --repeat N                    run the selection N times (flakiness check)
#
# Output: one line per test, `PASS 0001`, `FAIL 0002 (reason)` or
# `SKIP 0003 (reason)`, then exactly one line `N passed, N failed`.
# Exit status: non-zero when a test of allowlist.txt failed (and, with
# --tests, when any requested test failed).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

MODE=""; TEST_LIST=""; TARGET=shale; BOOTSTRAP=""; FRESH=0
TMO=180; KVER=3.9.0; LOG_DIR=""; REPEAT=1
while [ $# -gt 0 ]; do
    case "$1" in
        --allowlist) MODE=allowlist ;;
        --sweep) MODE=sweep ;;
        --list) MODE=list ;;
        --tests) MODE=tests; TEST_LIST="${2:?--tests needs a list}"; shift ;;
        --target) TARGET="${2:?}"; shift ;;
        --bootstrap) BOOTSTRAP="${2:?}"; TARGET=external; shift ;;
        --fresh) FRESH=1 ;;
        --timeout) TMO="${2:?}"; shift ;;
        --kafka-version) KVER="${2:?}"; shift ;;
        --log-dir) LOG_DIR="${2:?}"; shift ;;
        --repeat) REPEAT="${2:?}"; shift ;;
        -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
[ -n "$MODE" ] || die "choose --allowlist, --sweep, --tests LIST or --list"
case "$TARGET" in shale|mock|external) ;; *) die "--target must be shale or mock" ;; esac

ensure_librdkafka
TDIR="$RDK_DIR/tests"

# Tests 0045/0052/0077 call Kafka's bin/kafka-topics.sh through KAFKA_PATH;
# kafka_topics_shim.c implements the subset they use with the Admin API.
SHIM="$SHALE_CACHE_DIR/bin/kafka_topics_shim"
if [ ! -x "$SHIM" ] || [ "$HERE/kafka_topics_shim.c" -nt "$SHIM" ] || [ "$RDK_DIR/.shale-built" -nt "$SHIM" ]; then
    mkdir -p "$SHALE_CACHE_DIR/bin"
    rdk_cc "$SHIM" "$HERE/kafka_topics_shim.c" || die "building kafka_topics_shim failed"
fi

# ---------------------------------------------------------------------------
# Test selection, from the test table in tests/test.c (the source of truth).
# Prints: NUM<TAB>NAME<TAB>include|exclude<TAB>reason
test_table() {
    awk '/^struct test tests\[\] = \{/{on=1} on{printf "%s ", $0} on && /^\};/{exit}' "$TDIR/test.c" |
        sed -E 's#/\*([^*]|\*+[^*/])*\*+/##g; s/[[:space:]]+/ /g; s/_TEST\(/\n_TEST(/g' |
        grep '^_TEST(' |
        while IFS= read -r e; do
            local name flags num ver scen reason="" a b c
            name="$(sed -E 's/^_TEST\( *([A-Za-z0-9_]+).*/\1/' <<<"$e")"
            flags="$(sed -E 's/^_TEST\( *[A-Za-z0-9_]+ *, *([^,)]*).*/\1/' <<<"$e")"
            num="${name%%_*}"
            scen="$(sed -nE 's/.*\.scenario *= *"([^"]*)".*/\1/p' <<<"$e")"
            ver="$(sed -nE 's/.*TEST_BRKVER\( *([0-9]+) *, *([0-9]+) *, *([0-9]+).*/\1 \2 \3/p' <<<"$e")"
            grep -q 'TEST_BRKVER_TOPIC_ADMINAPI' <<<"$e" && ver="0 10 2"
            if [[ "$flags" =~ TEST_F_LOCAL ]]; then reason="local-only (no broker)"
            elif [[ "$flags" =~ TEST_F_MANUAL ]]; then reason="manual test"
            elif [[ "$flags" =~ TEST_F_SOCKEM ]]; then reason="needs sockem (-E)"
            elif [[ "$flags" =~ TEST_F_KNOWN_ISSUE($|[^_]) ]]; then reason="upstream known issue"
            elif [[ "$name" =~ _mock ]]; then reason="runs its own mock cluster"
            elif [[ "$name" =~ ssl|sasl|oauth|oidc|_auth|reauth ]]; then reason="needs SSL/SASL/OAuth listeners"
            elif [ -n "$scen" ] && [[ ! "$scen" =~ default ]]; then reason="needs scenario $scen"
            elif [ -n "$ver" ]; then
                read -r a b c <<<"$ver"
                IFS=. read -r x y z <<<"$KVER"
                if (( a*10000 + b*100 + c > x*10000 + y*100 + z )); then reason="needs broker >= $a.$b.$c"; fi
            fi
            if [ -z "$reason" ]; then printf '%s\t%s\tinclude\t\n' "$num" "$name"
            else printf '%s\t%s\texclude\t%s\n' "$num" "$name" "$reason"; fi
        done
}
sweep_numbers() { test_table | awk -F'\t' '$3=="include"{print $1}' | sort -u; }
allowlist_numbers() { sed 's/#.*//' "$HERE/allowlist.txt" | tr -s ' \t,' '\n' | grep -E '^[0-9]{4}$' | sort -u; }

if [ "$MODE" = list ]; then
    test_table | column -t -s $'\t'
    echo "sweep: $(sweep_numbers | wc -l) test numbers: $(sweep_numbers | tr '\n' ' ')"
    exit 0
fi

case "$MODE" in
    allowlist) mapfile -t SEL < <(allowlist_numbers) ;;
    sweep) mapfile -t SEL < <(sweep_numbers) ;;
    tests) mapfile -t SEL < <(tr -s ' ,' '\n' <<<"$TEST_LIST" | grep -E '^[0-9]{4}$') ;;
esac
[ ${#SEL[@]} -gt 0 ] || die "no tests selected"
mapfile -t ALLOW < <(allowlist_numbers)

# ---------------------------------------------------------------------------
# Broker lifecycle.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/shale-compat.XXXXXX")"
mkdir -p "$WORK/cwd" "$WORK/kafka/bin"
# test-runner runs in $WORK/cwd (it writes stats_*.json there); 0053 opens
# ../src/statistics_schema.json relative to it.
ln -s "$RDK_DIR/src" "$WORK/src"
printf '#!/bin/sh\nexec "%s" "$@"\n' "$SHIM" >"$WORK/kafka/bin/kafka-topics.sh"
chmod +x "$WORK/kafka/bin/kafka-topics.sh"
# 0098 drives a Java transactional producer (librdkafka's tests/java/
# TransactionProducerCli.java): test_run_java runs `make -s java` in the working
# directory, then java/run-class.sh, which calls $KAFKA_PATH/bin/kafka-run-class.sh.
# The kafka-clients classpath is the one scripts/install-test-deps.sh resolves for
# tests/java from Maven Central.
JAVA_CP_FILE="$HERE/../../java/target/classpath.txt"
if command -v javac >/dev/null && [ -s "$JAVA_CP_FILE" ]; then
    JAVA_CP="$(cat "$JAVA_CP_FILE")"
    mkdir -p "$WORK/cwd/java"
    cp "$TDIR/java/TransactionProducerCli.java" "$TDIR/java/run-class.sh" "$WORK/cwd/java/"
    printf 'java: java/TransactionProducerCli.class\njava/TransactionProducerCli.class: java/TransactionProducerCli.java\n\tjavac -nowarn -classpath "%s" java/TransactionProducerCli.java\n' \
        "$JAVA_CP" >"$WORK/cwd/Makefile"
    printf '#!/bin/sh\nexec java -cp "$CLASSPATH:%s" "$@"\n' "$JAVA_CP" >"$WORK/kafka/bin/kafka-run-class.sh"
    chmod +x "$WORK/kafka/bin/kafka-run-class.sh"
fi
[ -n "$LOG_DIR" ] || LOG_DIR="$WORK/logs"
mkdir -p "$LOG_DIR"
BROKER_PID=""; BROKER_N=0; PORT=""
cleanup() {
    stop_pid "$BROKER_PID"
    rm -rf "$WORK/data" "$WORK/cwd" "$WORK/kafka" "$WORK/src" "$WORK/test.conf"
    rmdir "$WORK" 2>/dev/null || true   # kept when the logs live in it
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_broker() {
    BROKER_N=$((BROKER_N + 1))
    case "$TARGET" in
        external) PORT="${BOOTSTRAP##*:}"; BOOT="$BOOTSTRAP"; return 0 ;;
        mock)
            start_mock "$LOG_DIR/broker.$BROKER_N.log" -b 3 || return 1
            BROKER_PID=$MOCK_PID; BOOT="$MOCK_BOOTSTRAP" ;;
        shale)
            PORT="$(free_port)"
            rm -rf "$WORK/data"
            # The suite's "default" scenario (tests/scenarios/default.json):
            # auto-created topics get 4 partitions. The log cleaner runs every second so
            # compaction tests (0077) see it within their wait.
            SHALE_NUM_PARTITIONS=4 SHALE_AUTO_CREATE_TOPICS_ENABLE=true SHALE_LOG_CLEANER_BACKOFF_MS=1000 \
                start_shale "$WORK/data" "$PORT" "$LOG_DIR/broker.$BROKER_N.log" || return 1
            BROKER_PID=$SHALE_PID; BOOT="127.0.0.1:$PORT" ;;
    esac
    cat >"$WORK/test.conf" <<EOF
bootstrap.servers=$BOOT
broker.address.family=v4
test.topic.random=true
EOF
}
stop_broker() { stop_pid "$BROKER_PID"; BROKER_PID=""; }
broker_alive() { [ "$TARGET" = external ] || kill -0 "$BROKER_PID" 2>/dev/null; }

# ---------------------------------------------------------------------------
# Run one test number in its own test-runner process; sets RES and WHY.
strip_ansi() { sed -E 's/\x1b\[[0-9;]*m//g; s/\x1b\(B//g'; }
# First failure of a test log: `subtest -> file:line:function(): message`.
fail_detail() {
    strip_ansi <"$1" | awk '
        /^### Test ".*" failed at / {
            sub(/^### Test "/, ""); split($0, a, "\" failed at ");
            st = a[1]; sub(/^[0-9]+_[A-Za-z0-9_]+ *\(?/, "", st); sub(/\)$/, "", st);
            loc = a[2]; sub(/ at [A-Z][a-z][a-z] .*$/, "", loc);
            if ((getline msg) > 0) { gsub(/^[ \t]+|[ \t]+$/, "", msg) }
            printf "%s%s: %s", (st != "" ? st " -> " : ""), loc, msg; exit
        }' | cut -c1-300
}
run_one() {
    local t="$1" logf="$2" rc t0=$SECONDS
    # The extra `exit` keeps the subshell from exec'ing test-runner, so a
    # crash report ("Aborted") lands in the test's log, not on our output.
    ( cd "$WORK/cwd" && env -u CI TESTS="$t" TEST_KAFKA_VERSION="$KVER" \
        KAFKA_PATH="$WORK/kafka" BROKERS="$BOOT" \
        RDKAFKA_TEST_CONF="$WORK/test.conf" LD_LIBRARY_PATH="$RDK_DIR/src:$RDK_DIR/src-cpp" \
        timeout -k 10 "$TMO" "$TDIR/test-runner" -Q -E -L; exit $? ) >"$logf" 2>&1 </dev/null
    rc=$?
    rm -f "$WORK/cwd"/stats_*.json
    DUR=$((SECONDS - t0))
    local rows; rows="$(strip_ansi <"$logf" | grep -E "^\| *${t}_[A-Za-z0-9_]+ *\|" || true)"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        RES=FAIL
        WHY="timeout after ${TMO}s; last: $(strip_ansi <"$logf" | grep -v '^ *$' | tail -1 | cut -c1-160)"
    elif grep -q '| *FAILED *|' <<<"$rows" || [ "$rc" -ne 0 ]; then
        RES=FAIL
        WHY="$(fail_detail "$logf")"
        [ -n "$WHY" ] || WHY="$(grep '| *FAILED *|' <<<"$rows" | head -1 | sed -E 's/^\| *([^ ]+) *\| *FAILED *\| *[0-9.]+s *\| *//' | cut -c1-300)"
        [ -n "$WHY" ] || WHY="test-runner exit $rc; last: $(strip_ansi <"$logf" | grep -v '^ *$' | tail -1 | cut -c1-200)"
    elif grep -q '| *PASSED *|' <<<"$rows"; then
        RES=PASS; WHY=""
        # Sub-tests declared with SUB_TEST() (not SUB_TEST_QUICK()) are
        # silently skipped under -Q; flag passes where nothing was exercised.
        local said
        said="$(strip_ansi <"$logf" | grep -E "^\[${t}_" | grep -vE 'Running test|PASSED|Setting test timeout|SKIPPING TEST|: duration |Stats written|Using topic|==== *$' | wc -l)"
        [ "$said" -gt 0 ] || WHY="vacuous: all sub-tests skipped in quick mode"
    else
        RES=SKIP
        WHY="$(grep -E '\| *SKIPPED *\|' <<<"$rows" | head -1 | sed -E 's/.*\| *SKIPPED *\| *[0-9.]+s *\| *//' | cut -c1-200)"
        [ -n "$WHY" ] || WHY="no test ran"
    fi
    if [ "$TARGET" != external ] && ! broker_alive; then
        RES=FAIL; WHY="broker exited during the test${WHY:+; $WHY}"
    fi
}

# ---------------------------------------------------------------------------
log "librdkafka $RDK_VERSION tests: ${#SEL[@]} selected ($MODE), target $TARGET, TEST_KAFKA_VERSION=$KVER, logs in $LOG_DIR"
PASSED=0; FAILED=0; SKIPPED=0; ALLOW_FAILED=0; ANY_FAILED=0
RESULTS="$LOG_DIR/results.tsv"
: >"$RESULTS"
[ "$FRESH" -eq 1 ] || start_broker || die "broker failed to start"
for rep in $(seq 1 "$REPEAT"); do
    for t in "${SEL[@]}"; do
        if [ "$FRESH" -eq 1 ]; then
            stop_broker; start_broker || die "broker failed to start"
        elif ! broker_alive; then
            log "broker is gone, restarting"; start_broker || die "broker failed to restart"
        fi
        logf="$LOG_DIR/$t.log"; [ "$REPEAT" -gt 1 ] && logf="$LOG_DIR/$t.$rep.log"
        run_one "$t" "$logf"
        printf '%s\t%s\t%s\t%s\n' "$t" "$RES" "$DUR" "$WHY" >>"$RESULTS"
        case "$RES" in
            PASS) PASSED=$((PASSED + 1)); echo "PASS $t (${DUR}s${WHY:+, $WHY})" ;;
            SKIP) SKIPPED=$((SKIPPED + 1)); echo "SKIP $t ($WHY)" ;;
            FAIL)
                FAILED=$((FAILED + 1)); ANY_FAILED=1
                echo "FAIL $t ($WHY)"
                if printf '%s\n' "${ALLOW[@]}" | grep -qx "$t"; then
                    ALLOW_FAILED=1
                    if [ "$MODE" = allowlist ]; then
                        echo "----- last 40 lines of $logf"; strip_ansi <"$logf" | tail -40
                        echo "-----"
                    fi
                fi ;;
        esac
    done
done
stop_broker
[ "$SKIPPED" -gt 0 ] && log "$SKIPPED skipped (not counted)"
log "results: $RESULTS"
echo "$PASSED passed, $FAILED failed"
if [ "$ALLOW_FAILED" -eq 1 ]; then exit 1; fi
if [ "$MODE" = tests ] && [ "$ANY_FAILED" -eq 1 ]; then exit 1; fi
exit 0
