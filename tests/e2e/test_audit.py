"""The audit log (audit.enable): every authentication, every authorization denial and every
admin change becomes a CloudEvents line, hash-chained to the one before, in a file and in the
`__shale_audit` topic; `shale audit verify` accepts the chain as written and finds a changed
or removed event; no secret and no record payload is ever in it; no client, super users
included, can write to the audit topic or delete it."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, NewTopic,
                                   ResourcePatternType, ResourceType, ScramCredentialInfo,
                                   ScramMechanism, UserScramCredentialUpsertion)

import harness
from clients import unique
from test_security import (ADMIN_PASSWORD, admin_client, cannot_connect, pki, sasl_conf,  # noqa: F401
                           sasl_settings)

DAVE_PASSWORD = "dave-password-never-logged"


@pytest.fixture
def audited(shale_factory, pki):  # noqa: F811
    node = shale_factory(settings=sasl_settings(pki, "PLAIN,SCRAM-SHA-256",
                                                **{"audit.enable": "true"}),
                         protocol="SASL_SSL")
    node.audit_log = node.data_dir / "audit" / "audit.log"
    return node


def events(path, until=lambda evs: True, timeout: float = 20) -> list[dict]:
    deadline = time.time() + timeout
    while True:
        evs = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        if until(evs) or time.time() > deadline:
            return evs
        time.sleep(0.2)


def verify(path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(harness.shale_bin()), "audit", "verify", str(path), *args],
                          capture_output=True, text=True, timeout=60)


def deliver(conf: dict, topic: str):
    got = []
    p = Producer({**conf, "message.timeout.ms": 10000})
    p.produce(topic, b"payload-never-audited", on_delivery=lambda err, msg: got.append(err))
    p.flush(20)
    return got[0] if got else "no delivery report"


def exercise(node, pki):  # noqa: F811
    """Authentications (one refused), a denial, and admin changes, as a user would."""
    admin_conf = sasl_conf(node, pki, "PLAIN", "admin", ADMIN_PASSWORD)
    admin = admin_client(admin_conf)
    topic = unique()
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    for f in admin.alter_user_scram_credentials([UserScramCredentialUpsertion(
            "dave", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096),
            DAVE_PASSWORD.encode())]).values():
        f.result(30)
    for f in admin.create_acls([AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL,
                                           "User:dave", "*", AclOperation.READ,
                                           AclPermissionType.ALLOW)]).values():
        f.result(30)
    cannot_connect(sasl_conf(node, pki, "PLAIN", "carol", "wrong"))
    err = deliver(sasl_conf(node, pki, "SCRAM-SHA-256", "dave", DAVE_PASSWORD), topic)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    return topic


def test_authentications_denials_and_admin_changes_are_audited(audited, pki):  # noqa: F811
    topic = exercise(audited, pki)

    def complete(evs):
        return any(e["type"] == "io.shale.audit.authorization" for e in evs)

    evs = events(audited.audit_log, complete)
    by_type = {}
    for e in evs:
        assert e["specversion"] == "1.0" and e["source"].startswith("shale://")
        by_type.setdefault(e["type"].rsplit(".", 1)[1], []).append(e["data"])

    auth = by_type["authentication"]
    assert any(a.get("principal") == "User:admin" and a["outcome"] == "succeeded"
               and a["mechanism"] == "PLAIN" for a in auth), auth
    assert any(a.get("principal") == "User:dave" and a["outcome"] == "succeeded"
               and a["mechanism"] == "SCRAM-SHA-256" for a in auth), auth
    assert any(a["outcome"] == "failed" and a["mechanism"] == "PLAIN" for a in auth), auth

    denied = by_type["authorization"]
    assert any(d["outcome"] == "denied" and d["principal"] == "User:dave"
               and d["resource"]["name"] == topic and d["operation"].lower() == "write"
               for d in denied), denied

    changes = by_type["admin_change"]
    assert any(c["resource"]["name"] == topic and c["operation"] == "Create"
               and c["outcome"] == "succeeded" for c in changes), changes
    assert any(c["resource"]["type"] == "User" and c["resource"]["name"] == "dave"
               and c.get("mechanism") == "SCRAM-SHA-256" and c["outcome"] == "succeeded"
               for c in changes), changes
    assert any(c["operation"] == "CreateAcls" and c["resource"]["name"] == topic
               for c in changes), changes

    text = audited.audit_log.read_text()
    assert DAVE_PASSWORD not in text and ADMIN_PASSWORD not in text and "wrong" not in text
    assert "payload-never-audited" not in text


def test_shale_audit_verify_accepts_the_log_and_finds_tampering(audited, pki, tmp_path):  # noqa: F811
    exercise(audited, pki)
    events(audited.audit_log, lambda evs: len(evs) >= 6)
    lines = audited.audit_log.read_text().splitlines(keepends=True)
    ok = verify(audited.audit_log)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    altered = tmp_path / "altered.log"
    mid = len(lines) // 2
    # One event's time moved back a year: the event no longer matches its hash.
    year = lines[mid].split('"time":"', 1)[1][:4]
    forged = lines[mid].replace(f'"time":"{year}', f'"time":"{int(year) - 1}', 1)
    assert forged != lines[mid]
    altered.write_text("".join(lines[:mid] + [forged] + lines[mid + 1:]))
    r = verify(altered)
    assert r.returncode == 1 and f"line {mid + 1}" in r.stdout, r.stdout

    removed = tmp_path / "removed.log"
    removed.write_text("".join(lines[:mid] + lines[mid + 1:]))
    r = verify(removed)
    assert r.returncode == 1, r.stdout


def test_the_audit_topic_carries_the_chain_and_no_client_may_write_or_delete_it(audited, pki, tmp_path):  # noqa: F811
    exercise(audited, pki)
    admin_conf = sasl_conf(audited, pki, "PLAIN", "admin", ADMIN_PASSWORD)

    # The same chain, read back from the topic, verifies.
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({**admin_conf, "group.id": unique(), "enable.auto.commit": False})
    c.assign([TopicPartition("__shale_audit", 0, 0)])
    values, deadline = [], time.time() + 30
    while time.time() < deadline and len(values) < 6:
        m = c.poll(1)
        if m is not None and not m.error():
            values.append(m.value().decode())
    c.close()
    assert len(values) >= 6, values
    exported = tmp_path / "topic.log"
    exported.write_text("".join(v + "\n" for v in values))
    r = verify(exported)
    assert r.returncode == 0, r.stdout + r.stderr
    assert values == audited.audit_log.read_text().splitlines()[:len(values)]

    # Even a super user may not write to it or delete it.
    err = deliver(admin_conf, "__shale_audit")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    admin = admin_client(admin_conf)
    fs = admin.delete_topics(["__shale_audit"])
    with pytest.raises(Exception) as e:
        fs["__shale_audit"].result(30)
    assert "TOPIC_AUTHORIZATION_FAILED" in str(e.value)


def test_refused_sasl_handshakes_and_quota_changes_are_audited(audited, pki):  # noqa: F811
    import kproto
    import test_security as ts
    # A mechanism this listener does not enable: refused at the handshake, audited as a
    # failed authentication.
    with kproto.Conn.to(audited.bootstrap, tls=ts.tls_context(pki)) as c:
        err, mechanisms = ts.sasl_handshake(c, "SCRAM-SHA-512")
        assert err == 33 and "SCRAM-SHA-512" not in mechanisms  # UNSUPPORTED_SASL_MECHANISM
    # A quota change by the super user.
    with kproto.Conn.to(audited.bootstrap, tls=ts.tls_context(pki)) as c:
        assert ts.sasl_handshake(c, "PLAIN")[0] == 0
        assert ts.sasl_authenticate(c, f"\0admin\0{ADMIN_PASSWORD}".encode())[0] == 0
        (err, msg, _), = kproto.alter_client_quotas(c, [({"user": "alice"}, {"producer_byte_rate": 4096})])
        assert err == 0, msg

    def complete(evs):
        return any(e["type"].endswith(".admin_change") and e["data"]["resource"]["type"] == "ClientQuota"
                   for e in evs)

    evs = events(audited.audit_log, complete)
    auth = [e["data"] for e in evs if e["type"].endswith(".authentication")]
    assert any(a["outcome"] == "failed" and a["mechanism"] == "SCRAM-SHA-512"
               and "not enabled" in a.get("reason", "") for a in auth), auth
    quota = [e["data"] for e in evs if e["type"].endswith(".admin_change")
             and e["data"]["resource"]["type"] == "ClientQuota"]
    assert quota and quota[0]["resource"]["name"] == "user=alice", quota
    assert quota[0]["outcome"] == "succeeded"
    assert "producer_byte_rate" in json.dumps(quota[0])
    assert verify(audited.audit_log).returncode == 0
