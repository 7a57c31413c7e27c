#!/usr/bin/env bash
# A Shale cluster on this machine, without docker: N `shale serve` nodes (the first V are
# metadata-quorum voters, the others learners with process.roles=broker) and a moto S3
# server (in memory, from PyPI), all in the background.
#
#   deploy/local-cluster.sh up [--nodes N] [--voters 1|3|5] [--base-port 9092]
#                              [--s3-port 9000] [--single-host] [--dir DIR]
#       Starts from empty data dirs and an empty bucket; returns once every node answers
#       and lists all N brokers. The last line of stdout is `bootstrap: HOST:PORT,...`.
#   deploy/local-cluster.sh down [--dir DIR]      SIGTERM every node (SIGKILL after 15 s),
#                                                 then moto; keeps the logs
#   deploy/local-cluster.sh status [--dir DIR]    nodes: id, pid, state, role, addresses
#   deploy/local-cluster.sh bootstrap [--dir DIR] prints HOST:PORT,HOST:PORT,...
#   deploy/local-cluster.sh kill|stop|pause|resume|start ID [--dir DIR]
#       One node, by its node.id (the broker id Metadata reports): kill = SIGKILL,
#       stop = SIGTERM and wait for the exit, pause/resume = SIGSTOP/SIGCONT, start = run it
#       again with the same config, port and data dir (returns once it answers).
#
# Voters: 3 by default (1 when N < 3). Addresses: node i listens on 127.0.0.i, Kafka on the
# base port, its controller on base+1 and its admin HTTP port (/metrics, /health, /ready) on
# base+2, when this machine can bind 127.0.0.2 (Linux can); otherwise (or with
# --single-host) every node is on 127.0.0.1, Kafka on base+3(i-1), then controller and admin.
# DIR (default $ROOT/.local-cluster) holds nI/{shale.toml,data,shale.log,pid}, moto.log,
# moto.pid and cluster.env. Needs python3, moto[server] and boto3
# (scripts/install-test-deps.sh) and the binary ($ROOT/target/release/shale, or SHALE_BIN).
# SHALE_* variables in the environment override the nodes' settings, except the ones this
# script sets per node; SHALE_LOG is the log filter (unset: the binary's own default,
# info with openraft at warn).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROBE="$ROOT/deploy/cluster_probe.py"
BIN="${SHALE_BIN:-$ROOT/target/release/shale}"
PYTHON="${PYTHON:-python3}"
BUCKET=shale

usage() { sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "local-cluster: $*" >&2; exit 1; }
say() { echo "local-cluster: $*" >&2; }

# ---- arguments ------------------------------------------------------------------------
[ $# -gt 0 ] || { usage >&2; exit 2; }
CMD="$1"; shift
case "$CMD" in -h|--help|help) usage; exit 0 ;; esac
DIR="$ROOT/.local-cluster"
NODES=3
VOTERS=""
BASE_PORT=9092
S3_PORT=""
SINGLE_HOST=0
ID=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
        --nodes) NODES="${2:?--nodes needs a value}"; shift 2 ;;
        --voters) VOTERS="${2:?--voters needs a value}"; shift 2 ;;
        --base-port) BASE_PORT="${2:?--base-port needs a value}"; shift 2 ;;
        --s3-port) S3_PORT="${2:?--s3-port needs a value}"; shift 2 ;;
        --single-host) SINGLE_HOST=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option: $1 (see --help)" ;;
        *) [ -z "$ID" ] || die "unexpected argument: $1"; ID="$1"; shift ;;
    esac
done
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
STATE="$DIR/cluster.env"

# ---- processes ------------------------------------------------------------------------

# The process state letter (R, S, D, T, t, Z, ...), or nothing when there is no such process.
# Z only once every thread has exited: a killed process's main thread can be a zombie while
# the others (holding its sockets) are still being torn down.
proc_state() {
    local pid="$1" stat tasks
    if [ -r "/proc/$pid/stat" ]; then
        stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 0
        stat="${stat##*) }"
        stat="${stat%% *}"
        if [ "$stat" = Z ]; then
            tasks="$(find "/proc/$pid/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
            [ "$tasks" -le 1 ] || stat=D
        fi
        echo "$stat"
    else
        ps -o stat= -p "$pid" 2>/dev/null | cut -c1 || true
    fi
}

# The pid in pid file $1 when that process is alive (not a zombie) and its command line
# contains $2 (so a recycled pid is not taken for ours); nothing otherwise.
live_pid() {
    local file="$1" marker="$2" pid st cmdline
    [ -s "$file" ] || return 0
    pid="$(cat "$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    st="$(proc_state "$pid")"
    [ -n "$st" ] && [ "$st" != Z ] || return 0
    if [ -r "/proc/$pid/cmdline" ]; then
        cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 0
    else
        cmdline="$(ps -o args= -p "$pid" 2>/dev/null)" || return 0
    fi
    case "$cmdline" in *"$marker"*) echo "$pid" ;; esac
}

node_pid() { live_pid "$DIR/n$1/pid" "$DIR/n$1/shale.toml"; }
moto_pid() { live_pid "$DIR/moto.pid" "moto"; }

# Waits until pid $1 is gone (or a zombie), up to $2 seconds; returns 1 on timeout.
wait_gone() {
    local pid="$1" deadline=$((SECONDS + $2)) st
    while :; do
        st="$(proc_state "$pid")"
        { [ -z "$st" ] || [ "$st" = Z ]; } && return 0
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.05
    done
}

# spawn PIDFILE LOG CMD...: CMD in a new session (it outlives this script), stdout+stderr
# appended to LOG; its pid written to PIDFILE (the pid of CMD itself: the shell execs it).
spawn() {
    local pidfile="$1" log="$2"; shift 2
    rm -f "$pidfile"
    # shellcheck disable=SC2016  # $$ and $@ are the inner shell's
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$log" 2>&1 &
    local i
    for i in $(seq 100); do [ -s "$pidfile" ] && return 0; sleep 0.02; done
    die "could not start $*"
}

# ---- the cluster's layout -------------------------------------------------------------

load_state() {
    [ -f "$STATE" ] || die "no cluster in $DIR (run: $0 up --dir $DIR)"
    # shellcheck source=/dev/null
    . "$STATE"
}

node_host() { local v="HOST_$1"; echo "${!v}"; }
node_port() { local v="PORT_$1"; echo "${!v}"; }
node_cport() { local v="CPORT_$1"; echo "${!v}"; }
node_aport() { local v="APORT_$1"; echo "${!v}"; }
node_role() { if [ "$1" -le "$VOTERS" ]; then echo voter; else echo learner; fi; }

check_id() {
    [ -n "$ID" ] || die "$CMD needs a node id (1..$NODES)"
    if ! [[ "$ID" =~ ^[0-9]+$ ]] || [ "$ID" -lt 1 ] || [ "$ID" -gt "$NODES" ]; then
        die "no node $ID: node ids are 1..$NODES"
    fi
}

bootstrap() {
    local i out=""
    for i in $(seq "$NODES"); do out+="${out:+,}$(node_host "$i"):$(node_port "$i")"; done
    echo "$out"
}

# Whether HOST PORT can be bound (with SO_REUSEADDR, as the broker binds: a connection of
# an earlier run in TIME_WAIT does not count, a listener does).
can_bind() { "$PYTHON" - "$1" "$2" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
except OSError:
    sys.exit(1)
PY
}

free_port_below_ephemeral() { "$PYTHON" - <<'PY'
import random, socket
try:
    lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    lo = 32768
lo = lo if lo > 11000 else 32768
for _ in range(500):
    p = random.randrange(10000, lo)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            continue
        print(p)
        break
else:
    raise SystemExit("no free port below the ephemeral range")
PY
}

ephemeral_low() {
    local lo
    lo="$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 49152)"
    echo "${lo%%[[:space:]]*}"
}

# The settings this script sets per node (their SHALE_* overrides would break the cluster).
OWN_KEYS=(NODE_ID LISTENERS ADVERTISED_LISTENERS CONTROLLER_QUORUM_VOTERS CONTROLLER_LISTENER_NAMES
          DATA_DIR OBJECT_STORE S3_ENDPOINT S3_BUCKET S3_REGION S3_ACCESS_KEY_ID
          S3_SECRET_ACCESS_KEY S3_PREFIX)

start_node() {
    local i="$1" unset_args=() k
    for k in "${OWN_KEYS[@]}"; do unset_args+=(-u "SHALE_$k"); done
    printf '\n===== %s start: %s serve --config %s\n' "$(date '+%F %T')" "$BIN" \
        "$DIR/n$i/shale.toml" >>"$DIR/n$i/shale.log"
    spawn "$DIR/n$i/pid" "$DIR/n$i/shale.log" env "${unset_args[@]}" NO_COLOR=1 RUST_BACKTRACE=1 \
        "$BIN" serve --config "$DIR/n$i/shale.toml"
}

# wait_ready TIMEOUT EXPECTED_BROKERS ID...: the probe, and the failing node's log on failure.
wait_ready() {
    local timeout="$1" brokers="$2" i specs=() err
    shift 2
    for i in "$@"; do specs+=("$i=$(node_host "$i"):$(node_port "$i")=$DIR/n$i/pid"); done
    if err="$("$PYTHON" "$PROBE" ready --brokers "$brokers" --timeout "$timeout" "${specs[@]}" 2>&1)"; then
        return 0
    fi
    echo "$err" | sed '$d' >&2
    local bad
    bad="$(echo "$err" | sed -n '$s/^node //p')"
    if [ -n "$bad" ] && [ -f "$DIR/n$bad/shale.log" ]; then
        echo "---- last lines of $DIR/n$bad/shale.log:" >&2
        tail -n 40 "$DIR/n$bad/shale.log" >&2
    fi
    return 1
}

# ---- subcommands ----------------------------------------------------------------------

cmd_up() {
    [[ "$NODES" =~ ^[0-9]+$ ]] && [ "$NODES" -ge 1 ] || die "--nodes must be a number from 1"
    if [ -z "$VOTERS" ]; then
        if [ "$NODES" -ge 3 ]; then VOTERS=3; else VOTERS=1; fi
    fi
    case "$VOTERS" in 1|3|5) ;; *) die "--voters must be 1, 3 or 5" ;; esac
    [ "$VOTERS" -le "$NODES" ] || die "--voters $VOTERS needs at least $VOTERS nodes"
    [[ "$BASE_PORT" =~ ^[0-9]+$ ]] || die "--base-port must be a number"
    if [ -f "$STATE" ]; then
        (   # a subshell: the old layout must not leak into the new one
            load_state
            for i in $(seq "$NODES"); do
                [ -z "$(node_pid "$i")" ] || die "a cluster is already up in $DIR (bootstrap: $(bootstrap));" \
                    "run: $0 down --dir $DIR"
            done
            [ -z "$(moto_pid)" ] || die "moto is still running in $DIR: run: $0 down --dir $DIR"
        ) || exit 1
    fi
    if [ ! -x "$BIN" ]; then
        say "building $BIN ..."
        (cd "$ROOT" && cargo build --release -p shale) >&2
    fi
    command -v moto_server >/dev/null || die "moto_server missing: run scripts/install-test-deps.sh"
    "$PYTHON" -c 'import boto3' 2>/dev/null || die "python3 has no boto3: run scripts/install-test-deps.sh"

    local per_node=0 lo
    if [ "$SINGLE_HOST" = 0 ] && [ "$NODES" -gt 1 ] && can_bind 127.0.0.2 0; then per_node=1; fi
    lo="$(ephemeral_low)"
    local top=$((BASE_PORT + 1))
    [ "$per_node" = 1 ] && top=$((BASE_PORT + 2))
    [ "$per_node" = 1 ] || top=$((BASE_PORT + 3 * NODES - 1))
    [ "$top" -lt "$lo" ] || say "warning: ports up to $top reach the ephemeral range (from $lo):" \
        "a client connection can take one of them"

    {
        echo "NODES=$NODES"
        echo "VOTERS=$VOTERS"
        echo "BIN='$BIN'"
        local i voters=""
        for i in $(seq "$NODES"); do
            if [ "$per_node" = 1 ]; then
                echo "HOST_$i=127.0.0.$i"; echo "PORT_$i=$BASE_PORT"; echo "CPORT_$i=$((BASE_PORT + 1))"
                echo "APORT_$i=$((BASE_PORT + 2))"
            else
                echo "HOST_$i=127.0.0.1"; echo "PORT_$i=$((BASE_PORT + 3 * (i - 1)))"
                echo "CPORT_$i=$((BASE_PORT + 3 * (i - 1) + 1))"
                echo "APORT_$i=$((BASE_PORT + 3 * (i - 1) + 2))"
            fi
        done
    } >"$STATE.new"
    # shellcheck source=/dev/null
    . "$STATE.new"
    for i in $(seq "$NODES"); do
        can_bind "$(node_host "$i")" "$(node_port "$i")" \
            || die "$(node_host "$i"):$(node_port "$i") is in use (another cluster? try --base-port)"
        can_bind "$(node_host "$i")" "$(node_cport "$i")" \
            || die "$(node_host "$i"):$(node_cport "$i") is in use (another cluster? try --base-port)"
        can_bind "$(node_host "$i")" "$(node_aport "$i")" \
            || die "$(node_host "$i"):$(node_aport "$i") is in use (another cluster? try --base-port)"
        [ "$i" -gt "$VOTERS" ] || voters+="${voters:+,}$i@$(node_host "$i"):$(node_cport "$i")"
    done
    if [ -z "$S3_PORT" ]; then
        if can_bind 127.0.0.1 9000; then S3_PORT=9000; else S3_PORT="$(free_port_below_ephemeral)"; fi
    else
        can_bind 127.0.0.1 "$S3_PORT" || die "127.0.0.1:$S3_PORT (--s3-port) is in use"
    fi
    echo "S3_PORT=$S3_PORT" >>"$STATE.new"
    mv "$STATE.new" "$STATE"
    load_state

    local endpoint="http://127.0.0.1:$S3_PORT"
    printf '\n===== %s moto_server -H 127.0.0.1 -p %s\n' "$(date '+%F %T')" "$S3_PORT" >>"$DIR/moto.log"
    spawn "$DIR/moto.pid" "$DIR/moto.log" moto_server -H 127.0.0.1 -p "$S3_PORT"
    if ! "$PYTHON" - "$endpoint" "$BUCKET" <<'PY' >&2
import sys, time, urllib.request
import boto3
url, bucket = sys.argv[1], sys.argv[2]
for _ in range(300):
    try:
        urllib.request.urlopen(url + "/", timeout=2)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("moto_server did not answer within 30 s")
boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
             region_name="us-east-1").create_bucket(Bucket=bucket)
PY
    then
        tail -n 20 "$DIR/moto.log" >&2
        cmd_down >/dev/null 2>&1 || true
        die "moto_server failed (log: $DIR/moto.log)"
    fi

    for i in $(seq "$NODES"); do
        mkdir -p "$DIR/n$i"
        rm -rf "$DIR/n$i/data"  # the bucket is new (in memory): so must the metadata be
        cat >"$DIR/n$i/shale.toml" <<TOML
"node.id" = $i
"listeners" = "PLAINTEXT://$(node_host "$i"):$(node_port "$i"),CONTROLLER://$(node_host "$i"):$(node_cport "$i")"
"controller.quorum.voters" = "$voters"
"process.roles" = "$(if [ "$i" -le "$VOTERS" ]; then echo broker,controller; else echo broker; fi)"
"admin.http.listener" = "$(node_host "$i"):$(node_aport "$i")"
"data.dir" = "$DIR/n$i/data"
"object.store" = "s3"
"s3.endpoint" = "$endpoint"
"s3.bucket" = "$BUCKET"
"s3.region" = "us-east-1"
"s3.access.key.id" = "test"
"s3.secret.access.key" = "test"
"wal.batch.interval.ms" = 20
TOML
    done
    # All together: the lowest id initializes the quorum, the others wait to hear from it.
    for i in $(seq "$NODES"); do start_node "$i"; done
    if ! wait_ready 90 "$NODES" $(seq "$NODES"); then
        cmd_down >/dev/null 2>&1 || true
        die "the cluster did not come up (logs in $DIR); stopped it"
    fi
    say "S3 (moto): $endpoint bucket $BUCKET"
    cmd_status
    echo "bootstrap: $(bootstrap)"
}

# stop_pid PID TIMEOUT: SIGTERM (and SIGCONT, in case it is paused), SIGKILL after TIMEOUT s.
stop_pid() {
    local pid="$1" timeout="$2"
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true
    wait_gone "$pid" "$timeout" && return 0
    say "pid $pid did not exit within ${timeout} s of SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || true
    return 1
}

cmd_down() {
    load_state
    local i pid pids=()
    for i in $(seq "$NODES"); do
        pid="$(node_pid "$i")"
        if [ -n "$pid" ]; then
            kill -TERM "$pid" 2>/dev/null || true
            kill -CONT "$pid" 2>/dev/null || true
            pids+=("$i:$pid")
        fi
    done
    local entry deadline=$((SECONDS + 15))
    for entry in "${pids[@]}"; do
        i="${entry%%:*}"; pid="${entry#*:}"
        local left=$((deadline - SECONDS))
        [ "$left" -gt 0 ] || left=0
        if wait_gone "$pid" "$left"; then
            say "node $i (pid $pid) stopped"
        else
            say "node $i (pid $pid) did not exit within 15 s of SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" 10 || true
        fi
    done
    for i in $(seq "$NODES"); do rm -f "$DIR/n$i/pid"; done
    pid="$(moto_pid)"
    if [ -n "$pid" ]; then
        stop_pid "$pid" 10 || true
        say "moto (pid $pid) stopped"
    fi
    rm -f "$DIR/moto.pid"
    say "down; logs kept in $DIR"
}

cmd_status() {
    load_state
    local i pid st state
    printf '%-5s %-8s %-8s %-8s %-22s %-22s %-22s %s\n' NODE PID STATE ROLE KAFKA CONTROLLER ADMIN LOG
    for i in $(seq "$NODES"); do
        pid="$(node_pid "$i")"
        if [ -z "$pid" ]; then
            state=stopped; pid=-
        else
            st="$(proc_state "$pid")"
            case "$st" in T|t) state=paused ;; *) state=running ;; esac
        fi
        printf '%-5s %-8s %-8s %-8s %-22s %-22s %-22s %s\n' "$i" "$pid" "$state" "$(node_role "$i")" \
            "$(node_host "$i"):$(node_port "$i")" "$(node_host "$i"):$(node_cport "$i")" \
            "http://$(node_host "$i"):$(node_aport "$i")" "$DIR/n$i/shale.log"
    done
    pid="$(moto_pid)"
    if [ -n "$pid" ]; then state=running; else state=stopped; pid=-; fi
    printf '%-5s %-8s %-8s %-8s %-22s %-22s %-22s %s\n' s3 "$pid" "$state" moto \
        "http://127.0.0.1:$S3_PORT" "bucket $BUCKET" - "$DIR/moto.log"
}

cmd_node() {
    load_state
    check_id
    local pid
    pid="$(node_pid "$ID")"
    case "$CMD" in
        start)
            [ -z "$pid" ] || die "node $ID is already running (pid $pid)"
            [ -n "$(moto_pid)" ] || die "moto is not running: the cluster is down (run: $0 up)"
            local a
            for a in "$(node_host "$ID") $(node_port "$ID")" "$(node_host "$ID") $(node_cport "$ID")"; do
                # shellcheck disable=SC2086  # host and port, two words
                can_bind $a || die "${a/ /:} (node $ID) is in use by another process:" \
                    "$(command -v ss >/dev/null && ss -ltnpH "( sport = :${a#* } )" 2>/dev/null | head -1)"
            done
            start_node "$ID"
            # Every running node: the restarted one must answer for the same cluster as they do.
            local peers=("$ID") i
            for i in $(seq "$NODES"); do
                [ "$i" = "$ID" ] || [ -z "$(node_pid "$i")" ] || peers+=("$i")
            done
            wait_ready 60 1 "${peers[@]}" || die "node $ID did not come back (log: $DIR/n$ID/shale.log)"
            say "node $ID started (pid $(cat "$DIR/n$ID/pid")) on $(node_host "$ID"):$(node_port "$ID")"
            ;;
        kill)
            [ -n "$pid" ] || die "node $ID is not running"
            kill -KILL "$pid"
            wait_gone "$pid" 10 || die "node $ID (pid $pid) still there 10 s after SIGKILL"
            rm -f "$DIR/n$ID/pid"
            say "node $ID (pid $pid) killed"
            ;;
        stop)
            [ -n "$pid" ] || die "node $ID is not running"
            if stop_pid "$pid" 30; then say "node $ID (pid $pid) stopped"; fi
            rm -f "$DIR/n$ID/pid"
            ;;
        pause)
            [ -n "$pid" ] || die "node $ID is not running"
            kill -STOP "$pid"
            say "node $ID (pid $pid) paused"
            ;;
        resume)
            [ -n "$pid" ] || die "node $ID is not running"
            kill -CONT "$pid"
            say "node $ID (pid $pid) resumed"
            ;;
    esac
}

case "$CMD" in
    up) [ -z "$ID" ] || die "up takes no node id"; cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    bootstrap) load_state; bootstrap ;;
    kill|stop|pause|resume|start) cmd_node ;;
    *) die "unknown command: $CMD (see --help)" ;;
esac
