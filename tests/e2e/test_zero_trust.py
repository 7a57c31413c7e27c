"""The documented zero-trust example (deploy/zero-trust/up.sh): SASL_SSL with required client
certificates, SCRAM-SHA-512 users and ACLs, driven as a user would, with the client settings
it writes, by confluent-kafka and kcat (librdkafka 2.0.2, an old SCRAM client)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import Consumer, KafkaError, Producer

import harness

UP = harness.REPO / "deploy" / "zero-trust" / "up.sh"
DOWN = harness.REPO / "deploy" / "zero-trust" / "down.sh"


def properties(path) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


@pytest.fixture(scope="module")
def zero_trust(tmp_path_factory):
    d = tmp_path_factory.mktemp("zt")
    port = harness.free_port()
    env = {"SHALE_BIN": str(harness.shale_bin())}
    import os
    r = subprocess.run([str(UP), "--dir", str(d), "--port", str(port)], capture_output=True, text=True,
                       timeout=180, env={**os.environ, **env})
    try:
        assert r.returncode == 0, f"up.sh failed:\n{r.stderr}\n{(d / 'n1' / 'shale.log').read_text()[-4000:]}"
        assert r.stdout.strip().splitlines()[-1] == f"bootstrap: 127.0.0.1:{port}"
        yield d
    finally:
        subprocess.run([str(DOWN), "--dir", str(d)], timeout=60)


def deliver(conf: dict, topic: str, value: bytes):
    got = []
    p = Producer({**conf, "message.timeout.ms": 15000})
    p.produce(topic, value, on_delivery=lambda err, msg: got.append(err))
    p.flush(30)
    return got[0] if got else "no delivery report"


def test_alice_writes_and_reads_payments_in_her_group(zero_trust):
    alice = properties(zero_trust / "alice.properties")
    assert deliver(alice, "payments", b"paid by alice") is None
    c = Consumer({**alice, "group.id": "payments-app", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    try:
        c.subscribe(["payments"])
        values = []
        for _ in range(60):
            m = c.poll(1.0)
            if m is None:
                continue
            assert m.error() is None, m.error()
            values.append(m.value())
            if b"paid by alice" in values:
                break
        assert b"paid by alice" in values
        c.commit(asynchronous=False)
    finally:
        c.close()


def test_bob_is_denied_payments(zero_trust):
    bob = properties(zero_trust / "bob.properties")
    err = deliver(bob, "payments", b"paid by bob")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err


def test_bob_cannot_join_alices_group(zero_trust):
    bob = properties(zero_trust / "bob.properties")
    errors = []
    c = Consumer({**bob, "group.id": "payments-app", "error_cb": lambda e: errors.append(e)})
    try:
        c.subscribe(["payments"])
        for _ in range(20):
            m = c.poll(0.5)
            if m is not None and m.error():
                errors.append(m.error())
            if errors:
                break
    finally:
        c.close()
    assert any(e.code() in (KafkaError.GROUP_AUTHORIZATION_FAILED,
                            KafkaError.TOPIC_AUTHORIZATION_FAILED) for e in errors), errors


def test_a_client_without_a_certificate_is_refused(zero_trust):
    alice = properties(zero_trust / "alice.properties")
    alice.pop("ssl.certificate.location")
    alice.pop("ssl.key.location")
    err = deliver(alice, "payments", b"no cert")
    assert err is not None and err.code() in (KafkaError._MSG_TIMED_OUT, KafkaError._TRANSPORT,
                                              KafkaError._SSL), err
    log = (zero_trust / "n1" / "shale.log").read_text()
    assert "TLS handshake failed" in log and "peer sent no certificates" in log.lower() \
        or "NoCertificatesPresented" in log, log[-2000:]


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed")
def test_kcat_uses_the_written_settings(zero_trust):
    alice = zero_trust / "alice.properties"
    r = subprocess.run(["kcat", "-F", str(alice), "-t", "payments", "-P", "-p", "0"],
                       input=b"from kcat\n", capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    r = subprocess.run(["kcat", "-F", str(alice), "-C", "-t", "payments", "-p", "0", "-o", "beginning",
                        "-e", "-q"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert b"from kcat" in r.stdout
    r = subprocess.run(["kcat", "-F", str(zero_trust / "bob.properties"), "-t", "payments", "-P", "-p", "0"],
                       input=b"bob\n", capture_output=True, timeout=60)
    assert b"Topic authorization failed" in r.stderr or b"TOPIC_AUTHORIZATION_FAILED" in r.stderr, \
        r.stderr.decode()[-2000:]


def java_config(zero_trust, user: str) -> dict:
    """The Java client's settings for `user`: SCRAM-SHA-512 over TLS with the user's
    certificate, from PEM files (Java wants the key and chain in one keystore file)."""
    p = properties(zero_trust / f"{user}.properties")
    keystore = zero_trust / f"{user}-keystore.pem"
    keystore.write_text((zero_trust / f"{user}.key").read_text() + (zero_trust / f"{user}.pem").read_text())
    conf = zero_trust / f"{user}-java.properties"
    conf.write_text("".join(f"{k}={v}\n" for k, v in {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required "
                            f'username="{user}" password="{p["sasl.password"]}";',
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": p["ssl.ca.location"],
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(keystore),
    }.items()))
    return {"SHALE_CLIENT_CONFIG": str(conf)}


def test_the_java_client_produces_and_consumes_as_alice_and_is_refused_as_bob(zero_trust, java_cli, tmp_path):
    cli = java_cli.at(tmp_path)
    bootstrap = properties(zero_trust / "alice.properties")["bootstrap.servers"]
    out = cli.run("produce-default", bootstrap, "payments", 50, env=java_config(zero_trust, "alice"))
    assert out["acked"] == 50 and not out["errors"], out
    got = cli.run("consume", bootstrap, "payments", 50, "read_uncommitted", 60000, "string",
                  env=java_config(zero_trust, "alice"), timeout=120)
    assert got["count"] >= 50, got
    out = cli.run("produce-default", bootstrap, "payments", 1, env=java_config(zero_trust, "bob"),
                  timeout=240)
    assert out["acked"] == 0 and any("TopicAuthorizationException" in e for e in out["errors"]), out
