#!/usr/bin/env bash
# The documented zero-trust example (docs/security.md), in one command:
#
#   deploy/zero-trust/up.sh [--dir DIR] [--nodes 1] [--port 19093] [--s3-port PORT]
#
# - generates a CA, each node's certificate and client certificates (admin, alice, bob);
# - starts a moto S3 server and N Shale nodes (1 by default; node i's client listener on
#   PORT+i-1) whose only client listener is SASL_SSL and requires a client certificate
#   signed by that CA (mTLS), with Kafka's ACL authorizer; with several nodes they form one
#   cluster whose metadata quorum (every node a voter) speaks mTLS on its CONTROLLER
#   listeners, each node proving its node id by certificate; every object is encrypted
#   client-side (DIR/kek-1.key) and every authentication, denial and admin change is
#   audited (nI/data/audit/audit.log and the __shale_audit topic);
# - as the bootstrap admin (PLAIN, password in DIR/admin.password, super user), creates the
#   SCRAM-SHA-512 users alice and bob and the topic `payments`, and grants alice Write, Read
#   and Describe on `payments` and Read on group `payments-app`; bob gets nothing;
# - writes librdkafka-style client settings to DIR/alice.properties and DIR/bob.properties.
# The last line of stdout is `bootstrap: HOST:PORT`. deploy/zero-trust/down.sh stops it.
# Needs python3 with moto[server], boto3, cryptography and confluent-kafka
# (scripts/install-test-deps.sh) and the binary ($ROOT/target/release/shale, or SHALE_BIN).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/deploy/zero-trust"
BIN="${SHALE_BIN:-$ROOT/target/release/shale}"
PYTHON="${PYTHON:-python3}"
DIR="$ROOT/.zero-trust"
PORT=19093
NODES=1
S3_PORT=""

die() { echo "zero-trust: $*" >&2; exit 1; }
say() { echo "zero-trust: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dir) DIR="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --nodes) NODES="$2"; shift 2 ;;
        --s3-port) S3_PORT="$2"; shift 2 ;;
        -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1" ;;
    esac
done

[ -x "$BIN" ] || die "no shale binary at $BIN (cargo build --release -p shale, or set SHALE_BIN)"
command -v moto_server >/dev/null || die "moto_server missing: run scripts/install-test-deps.sh"
"$PYTHON" -c 'import boto3, cryptography, confluent_kafka' 2>/dev/null \
    || die "python3 needs boto3, cryptography and confluent-kafka: run scripts/install-test-deps.sh"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
[[ "$NODES" =~ ^[1-9][0-9]?$ ]] || die "--nodes must be a number from 1 to 99"
for pidfile in "$DIR"/n*/shale.pid; do
    if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        die "already running in $DIR (stop it with deploy/zero-trust/down.sh --dir $DIR)"
    fi
done

free_port() {
    "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
[ -n "$S3_PORT" ] || S3_PORT="$(free_port)"

spawn() {
    local pidfile="$1" log="$2"; shift 2
    # shellcheck disable=SC2016  # $$ and $@ are the inner shell's
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$log" 2>&1 &
    local i
    for i in $(seq 100); do [ -s "$pidfile" ] && return 0; sleep 0.02; done
    die "could not start $*"
}

say "certificates in $DIR"
"$PYTHON" "$HERE/zt.py" certs "$DIR" "$NODES"
[ -s "$DIR/admin.password" ] || "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(24))' >"$DIR/admin.password"
chmod 600 "$DIR/admin.password"
# The key-encryption key (KEK) every object is enveloped under; it never leaves DIR.
[ -s "$DIR/kek-1.key" ] || "$PYTHON" -c 'import secrets; print(secrets.token_hex(32))' >"$DIR/kek-1.key"
chmod 600 "$DIR/kek-1.key"

rm -f "$DIR/moto.pid"
spawn "$DIR/moto.pid" "$DIR/moto.log" moto_server -H 127.0.0.1 -p "$S3_PORT"
"$PYTHON" - "http://127.0.0.1:$S3_PORT" <<'PY' >&2 || die "moto_server failed (log: $DIR/moto.log)"
import sys, time, urllib.request
import boto3
url = sys.argv[1]
for _ in range(300):
    try:
        urllib.request.urlopen(url + "/", timeout=2)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("moto_server did not answer within 30 s")
boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
             region_name="us-east-1").create_bucket(Bucket="shale")
PY

ADMIN_PASSWORD="$(cat "$DIR/admin.password")"
# Each node's CONTROLLER listener (several nodes only): the metadata quorum's RPC.
VOTERS=""
if [ "$NODES" -gt 1 ]; then
    for i in $(seq "$NODES"); do
        CONTROLLER_PORT[i]="$(free_port)"
        VOTERS="${VOTERS:+$VOTERS,}$i@127.0.0.1:${CONTROLLER_PORT[i]}"
    done
fi
BOOTSTRAP=""
for i in $(seq "$NODES"); do
    N="$DIR/n$i"
    mkdir -p "$N"
    rm -rf "$N/data"  # the bucket is new (in memory): so must the metadata be
    NODE_PORT=$((PORT + i - 1))
    BOOTSTRAP="${BOOTSTRAP:+$BOOTSTRAP,}127.0.0.1:$NODE_PORT"
    if [ "$NODES" -gt 1 ]; then
        CLUSTER="\"listeners\" = \"SASL_SSL://127.0.0.1:$NODE_PORT,CONTROLLER://127.0.0.1:${CONTROLLER_PORT[i]}\"
\"controller.quorum.voters\" = \"$VOTERS\"
# Node-to-node: mutual TLS with the same CA. The node's certificate names node-$i, and a
# peer is accepted only as the node its certificate names (a client certificate, which
# names no node, cannot join).
\"listener.security.protocol.map\" = \"SASL_SSL:SASL_SSL,CONTROLLER:SSL\""
    else
        CLUSTER="\"listeners\" = \"SASL_SSL://127.0.0.1:$NODE_PORT\""
    fi
    cat >"$N/shale.toml" <<TOML
"node.id" = $i
$CLUSTER
"data.dir" = "$N/data"
"object.store" = "s3"
"s3.endpoint" = "http://127.0.0.1:$S3_PORT"
"s3.bucket" = "shale"
"s3.access.key.id" = "test"
"s3.secret.access.key" = "test"
# TLS: the node's identity, and client certificates required (mTLS) from this CA. On a
# SASL_SSL listener Kafka reads ssl.client.auth only with the listener prefix (KIP-684).
"ssl.keystore.type" = "PEM"
"ssl.certificate.location" = "$DIR/node-$i.pem"
"ssl.key.location" = "$DIR/node-$i.key"
"ssl.truststore.location" = "$DIR/ca.pem"
"listener.name.sasl_ssl.ssl.client.auth" = "required"
# SASL on top: users log in with SCRAM-SHA-512; PLAIN only for the bootstrap admin.
"sasl.enabled.mechanisms" = "SCRAM-SHA-512,PLAIN"
"listener.name.sasl_ssl.plain.sasl.jaas.config" = 'org.apache.kafka.common.security.plain.PlainLoginModule required user_admin="$ADMIN_PASSWORD";'
# Kafka's ACL authorizer: nothing is allowed that no ACL grants.
"authorizer.class.name" = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
"super.users" = "User:admin"
"allow.everyone.if.no.acl.found" = "false"
"auto.create.topics.enable" = "false"
# Storage: every object is encrypted before it leaves the node (AES-256-GCM, a fresh data
# key per object wrapped by kek-1); add a key and SIGHUP the nodes to rotate.
"object.encryption.keys" = "kek-1=file:$DIR/kek-1.key"
# Evidence: authentications, denials and admin changes, hash-chained, to
# n$i/data/audit/audit.log and the __shale_audit topic; requests fail rather than go
# unaudited.
"audit.enable" = "true"
TOML
    chmod 600 "$N/shale.toml"
    : >"$N/shale.log"
    rm -f "$N/shale.pid"
    spawn "$N/shale.pid" "$N/shale.log" "$BIN" serve --config "$N/shale.toml"
done
# The quorum forms once a majority runs: wait for every node's banner.
for i in $(seq "$NODES"); do
    N="$DIR/n$i"
    for _ in $(seq 600); do
        grep -q "^bootstrap: " "$N/shale.log" && break
        kill -0 "$(cat "$N/shale.pid")" 2>/dev/null || { tail -n 30 "$N/shale.log" >&2; die "node $i exited (log: $N/shale.log)"; }
        sleep 0.1
    done
    grep -q "^bootstrap: " "$N/shale.log" || die "node $i did not start within 60 s (log: $N/shale.log)"
done

say "users alice and bob (SCRAM-SHA-512), topic payments, alice's grants"
"$PYTHON" "$HERE/zt.py" setup "$DIR" "$BOOTSTRAP" || die "setting up users and ACLs failed (log: $DIR/shale.log)"
say "client settings: $DIR/alice.properties, $DIR/bob.properties"
echo "bootstrap: $BOOTSTRAP"
