#!/usr/bin/env bash
# Stops what deploy/zero-trust/up.sh started: the nodes (SIGTERM, SIGKILL after 15 s), then
# the S3 server. Keeps DIR (certificates, logs).
#
#   deploy/zero-trust/down.sh [--dir DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="$ROOT/.zero-trust"
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) DIR="$2"; shift 2 ;;
        *) echo "zero-trust: unknown argument $1" >&2; exit 1 ;;
    esac
done
stop() {
    local pidfile="$1" name="$2" pid
    [ -s "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        echo "zero-trust: $name (pid $pid) stopped" >&2
    fi
    rm -f "$pidfile"
}
for pidfile in "$DIR"/n*/shale.pid; do
    [ -e "$pidfile" ] || continue
    stop "$pidfile" "shale $(basename "$(dirname "$pidfile")")"
done
stop "$DIR/moto.pid" moto
