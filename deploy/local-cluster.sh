#!/usr/bin/env bash
# Shale against S3 on this machine, without docker: a moto S3 server (in memory, from PyPI)
# plus a `shale serve` node using it, in the foreground; Ctrl-C stops both.
#
#   deploy/local-cluster.sh [--port 9092] [--s3-port 5000] [--dir ./shale-local]
#
# moto keeps objects in memory, so every run starts from an empty bucket and an empty
# data dir. The metadata quorum has a single voter today: this starts one node.
# Needs moto[server] (scripts/install-test-deps.sh) and the binary
# (cargo build --release -p shale; SHALE_BIN overrides its path).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT=9092
S3_PORT=5000
DIR="$PWD/shale-local"
while [ $# -gt 0 ]; do
    case "$1" in
        --port) PORT="$2"; shift 2 ;;
        --s3-port) S3_PORT="$2"; shift 2 ;;
        --dir) DIR="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
BIN="${SHALE_BIN:-$ROOT/target/release/shale}"
if [ ! -x "$BIN" ]; then
    echo "building $BIN ..." >&2
    (cd "$ROOT" && cargo build --release -p shale)
fi
command -v moto_server >/dev/null || { echo "moto_server missing: run scripts/install-test-deps.sh" >&2; exit 1; }

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
rm -rf "$DIR/data"  # the bucket is new (in memory): so must the metadata be

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

moto_server -H 127.0.0.1 -p "$S3_PORT" >"$DIR/moto.log" 2>&1 &
pids+=($!)
python3 - "$S3_PORT" <<'PY'
import sys, time, urllib.request
import boto3
port = sys.argv[1]
url = f"http://127.0.0.1:{port}"
for _ in range(300):
    try:
        urllib.request.urlopen(url + "/", timeout=2)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("moto_server did not start (see moto.log)")
boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
             region_name="us-east-1").create_bucket(Bucket="shale")
PY

cat >"$DIR/shale.toml" <<TOML
"node.id" = 1
"listeners" = "PLAINTEXT://127.0.0.1:$PORT"
"data.dir" = "$DIR/data"
"object.store" = "s3"
"s3.endpoint" = "http://127.0.0.1:$S3_PORT"
"s3.bucket" = "shale"
"s3.region" = "us-east-1"
"s3.access.key.id" = "test"
"s3.secret.access.key" = "test"
TOML
echo "S3 (moto): http://127.0.0.1:$S3_PORT bucket shale; config $DIR/shale.toml" >&2
"$BIN" serve --config "$DIR/shale.toml" &
pids+=($!)
wait "${pids[-1]}"
