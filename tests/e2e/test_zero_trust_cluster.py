"""The zero-trust example as a three-node cluster (deploy/zero-trust/up.sh --nodes 3): clients
on SASL_SSL with required client certificates, and the metadata quorum on mutual TLS between
nodes, each node proving its node id by certificate. Transactions whose partitions live on
different nodes commit (their markers travel node to node over that mTLS), a client
certificate from the same CA cannot speak to the quorum, and the controls hold across a
node's kill -9."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
import uuid

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

import harness
from test_zero_trust import DOWN, UP, deliver, properties


def free_run(n: int) -> int:
    """A base port with n free consecutive ports after it."""
    for _ in range(50):
        base = harness.free_port()
        if base + n >= 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("ztc")
    port = free_run(3)
    env = {**os.environ, "SHALE_BIN": str(harness.shale_bin())}
    r = subprocess.run([str(UP), "--dir", str(d), "--nodes", "3", "--port", str(port)],
                       capture_output=True, text=True, timeout=240, env=env)
    try:
        assert r.returncode == 0, f"up.sh failed:\n{r.stderr}\n{(d / 'n1' / 'shale.log').read_text()[-4000:]}"
        expected = ",".join(f"127.0.0.1:{port + i}" for i in range(3))
        assert r.stdout.strip().splitlines()[-1] == f"bootstrap: {expected}"
        yield d
    finally:
        subprocess.run([str(DOWN), "--dir", str(d)], timeout=90)


def admin_conf(d) -> dict:
    return {"bootstrap.servers": properties(d / "alice.properties")["bootstrap.servers"],
            "security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "admin",
            "sasl.password": (d / "admin.password").read_text().strip(),
            "ssl.ca.location": str(d / "ca.pem"), "ssl.certificate.location": str(d / "admin.pem"),
            "ssl.key.location": str(d / "admin.key")}


def controller_port(d, node: int) -> int:
    for line in (d / f"n{node}" / "shale.toml").read_text().splitlines():
        if line.startswith('"listeners"'):
            return int(line.split("CONTROLLER://127.0.0.1:")[1].rstrip('"'))
    raise AssertionError("no CONTROLLER listener")


def leaders(d) -> dict:
    md = AdminClient(admin_conf(d)).list_topics("payments", timeout=15)
    return {p: m.leader for p, m in md.topics["payments"].partitions.items()}


def read_committed(conf: dict, n: int, timeout: float = 30) -> list:
    c = Consumer({**conf, "group.id": "payments-app", "auto.offset.reset": "earliest",
                  "isolation.level": "read_committed", "enable.auto.commit": False})
    try:
        c.assign([TopicPartition("payments", p, 0) for p in range(3)])
        got, deadline = [], time.time() + timeout
        while len(got) < n and time.time() < deadline:
            m = c.poll(1)
            if m is not None and not m.error():
                got.append(m.value())
        return got
    finally:
        c.close()


def test_every_node_serves_and_the_partitions_are_spread(cluster):
    md = AdminClient(admin_conf(cluster)).list_topics(timeout=15)
    assert sorted(md.brokers) == [1, 2, 3]
    assert len(set(leaders(cluster).values())) >= 2, leaders(cluster)


def test_a_transaction_across_nodes_commits_over_node_to_node_mtls(cluster):
    p = Producer({**admin_conf(cluster), "transactional.id": f"zt-{uuid.uuid4().hex}"})
    p.init_transactions(30)
    p.begin_transaction()
    marker = uuid.uuid4().hex.encode()
    for part in range(3):
        p.produce("payments", value=marker + b"-%d" % part, partition=part)
    p.commit_transaction(30)
    got = read_committed(properties(cluster / "alice.properties"), 3)
    assert sorted(v for v in got if v.startswith(marker)) == [marker + b"-%d" % i for i in range(3)]


def test_objects_are_encrypted_and_every_node_keeps_a_verifiable_audit_chain(cluster):
    alice = properties(cluster / "alice.properties")
    marker = f"card-{uuid.uuid4().hex}".encode()
    assert deliver(alice, "payments", marker) is None
    endpoint = next(line.split("=", 1)[1].strip().strip('"')
                    for line in (cluster / "n1" / "shale.toml").read_text().splitlines()
                    if line.startswith('"s3.endpoint"'))
    import boto3
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1")
    deadline = time.time() + 20
    keys = []
    while time.time() < deadline and not keys:
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="shale")
                for o in page.get("Contents", [])]
        time.sleep(0.5)
    assert keys
    for k in keys:
        data = s3.get_object(Bucket="shale", Key=k)["Body"].read()
        assert marker not in data and b"payments" not in data, k
    for node in (1, 2, 3):
        log = cluster / f"n{node}" / "data" / "audit" / "audit.log"
        r = subprocess.run([str(harness.shale_bin()), "audit", "verify", str(log)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    # Node joins are recorded by the metadata leader; admin changes by the node that served them.
    text = "".join((cluster / f"n{n}" / "data" / "audit" / "audit.log").read_text() for n in (1, 2, 3))
    assert "io.shale.audit.node_join" in text and "io.shale.audit.admin_change" in text


def tls_to_controller(d, cert: str, node: int = 1) -> bytes:
    """Connects to node's CONTROLLER listener presenting DIR/<cert>.pem, sends a request
    frame, and returns what comes back before the server closes."""
    ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(d / f"{cert}.pem"), str(d / f"{cert}.key"))
    body = b'{"id":1,"epoch":1,"applied":0}'
    msg = bytes([0x08, 6, 0x12, len(body)]) + body
    with socket.create_connection(("127.0.0.1", controller_port(d, node)), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw) as s:
                s.sendall(len(msg).to_bytes(4, "big") + msg)
                return s.recv(4096)
        except (ssl.SSLError, ConnectionError):
            return b""


def test_a_client_certificate_from_the_cluster_ca_cannot_speak_to_the_quorum(cluster):
    # alice's certificate chains to the cluster CA but names no node: the connection is
    # dropped after the handshake, before any request is read, and the node says why.
    assert tls_to_controller(cluster, "alice") == b""
    deadline = time.time() + 10
    while time.time() < deadline:
        if "refused a peer that is not a node" in (cluster / "n1" / "shale.log").read_text():
            break
        time.sleep(0.2)
    else:
        pytest.fail("node 1 did not log the refusal")


def test_plaintext_to_the_controller_listener_gets_no_answer(cluster):
    with socket.create_connection(("127.0.0.1", controller_port(cluster, 2)), timeout=10) as s:
        s.sendall(b"\x00\x00\x00\x04ping")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    # A TLS alert record (type 21), never a metadata answer.
    assert data[:1] in (b"", b"\x15"), data


def test_the_controls_hold_after_a_node_is_killed(cluster):
    alice = properties(cluster / "alice.properties")
    bob = properties(cluster / "bob.properties")
    victim = leaders(cluster)[0]
    pid = int((cluster / f"n{victim}" / "shale.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    try:
        # Another node takes the partition; alice writes to every partition again.
        for part in range(3):
            got = []
            p = Producer({**alice, "message.timeout.ms": 30000})
            p.produce("payments", b"after the kill", partition=part,
                      on_delivery=lambda err, msg: got.append(err))
            p.flush(45)
            assert got == [None], f"partition {part}: {got}"
        assert leaders(cluster)[0] != victim
        # bob is still refused, by whichever node answers.
        err = deliver(bob, "payments", b"bob after the kill")
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    finally:
        # Restart the node so the module's other tests (and down.sh) find it as before.
        n = cluster / f"n{victim}"
        subprocess.Popen(["setsid", "bash", "-c", 'echo $$ >"$0"; exec "$@"', str(n / "shale.pid"),
                          str(harness.shale_bin()), "serve", "--config", str(n / "shale.toml")],
                         stdin=subprocess.DEVNULL, stdout=open(n / "shale.log", "a"),
                         stderr=subprocess.STDOUT)
