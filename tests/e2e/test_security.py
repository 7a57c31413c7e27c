"""Listeners as Kafka defines them (SSL, mTLS, SASL_SSL with PLAIN and SCRAM), principals,
ACLs and the admin APIs that manage users and ACLs, with confluent-kafka (librdkafka) and
raw protocol requests. Every refusal is checked for the error a Kafka client sees and for
the broker's log line."""

from __future__ import annotations

import struct
import ssl
import time

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType,
                                   AdminClient, NewTopic, ResourcePatternType, ResourceType,
                                   ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialUpsertion)

import certs
import kproto
from clients import consume, produce_all, producer, unique

STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
ADMIN_PASSWORD = "admin-secret"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = certs.CA(d)
    other = certs.CA(d / "other", name="Other CA")
    return {
        "ca": ca,
        "broker": ca.issue("broker", "CN=localhost"),
        "admin": ca.issue("admin", [("CN", "admin"), ("OU", "clients"), ("O", "Shale")]),
        "alice": ca.issue("alice", [("CN", "alice"), ("OU", "clients"), ("O", "Shale")]),
        "bob": ca.issue("bob", [("CN", "bob"), ("OU", "clients"), ("O", "Shale")]),
        "expired": ca.issue("expired", [("CN", "alice"), ("OU", "clients")], expired=True),
        "stranger": other.issue("stranger", [("CN", "alice"), ("OU", "clients")]),
    }


def tls_settings(pki, client_auth: str = "none") -> dict:
    return {
        "ssl.keystore.type": "PEM",
        "ssl.certificate.location": str(pki["broker"].cert),
        "ssl.key.location": str(pki["broker"].key),
        "ssl.truststore.location": str(pki["ca"].pem),
        "ssl.client.auth": client_auth,
    }


def client_conf(node, pki, protocol: str, cert=None, **extra) -> dict:
    conf = {
        "bootstrap.servers": node.bootstrap,
        "security.protocol": protocol,
        "ssl.ca.location": str(pki["ca"].pem),
    }
    if cert is not None:
        conf.update(pki[cert].properties())
    conf.update(extra)
    return conf


def admin_client(conf: dict) -> AdminClient:
    return AdminClient(dict(conf))


def roundtrip(conf: dict, topic: str, n: int = 5):
    """Produces n records and reads them back with the same settings."""
    p = producer(conf["bootstrap.servers"], **{k: v for k, v in conf.items() if k != "bootstrap.servers"})
    produce_all(p, topic, [{"key": f"k{i}".encode(), "value": f"v{i}".encode()} for i in range(n)])
    got = consume(conf["bootstrap.servers"], topic, [0], until={0: n},
                  **{k: v for k, v in conf.items() if k != "bootstrap.servers"})
    assert [r.value for r in got[0]] == [f"v{i}".encode() for i in range(n)]


def produce_error(conf: dict, topic: str) -> KafkaError:
    """The error the one record produced with `conf` is delivered with."""
    errors = []
    p = producer(conf["bootstrap.servers"], **{k: v for k, v in conf.items() if k != "bootstrap.servers"},
                 **{"message.timeout.ms": 15000})
    p.produce(topic, b"x", on_delivery=lambda err, msg: errors.append(err))
    p.flush(30)
    assert errors and errors[0] is not None, "the record was accepted"
    return errors[0]


def cannot_connect(conf: dict) -> str:
    """What a client with `conf` reports trying to list topics (it must not get an answer):
    the errors librdkafka raised meanwhile (authentication failures arrive there) and the
    call's own."""
    seen = []
    a = admin_client({**conf, "socket.timeout.ms": 5000, "error_cb": lambda e: seen.append(str(e))})
    with pytest.raises(KafkaException) as e:
        a.list_topics(timeout=8)
    a.poll(0)
    return " | ".join(seen + [str(e.value)])


def wait_log(node, needle: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in node.log_tail(400):
            return
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not in the broker's log:\n{node.log_tail(60)}")


# ---- TLS --------------------------------------------------------------------------------


def test_an_ssl_listener_serves_clients_that_trust_its_ca(shale_factory, pki):
    node = shale_factory(settings=tls_settings(pki), protocol="SSL")
    conf = client_conf(node, pki, "SSL")
    topic = unique()
    admin = admin_client(conf)
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    roundtrip(conf, topic)


def test_a_client_that_does_not_trust_the_broker_cannot_connect(shale_factory, pki):
    node = shale_factory(settings=tls_settings(pki), protocol="SSL")
    err = cannot_connect({"bootstrap.servers": node.bootstrap, "security.protocol": "SSL",
                          "ssl.ca.location": str(pki["ca"].dir / "other" / "other-ca.pem")})
    assert "certificate verify failed" in err or "SSL handshake failed" in err, err
    wait_log(node, "TLS handshake failed")


def test_plaintext_bytes_on_a_tls_listener_get_no_kafka_answer(shale_factory, pki):
    node = shale_factory(settings=tls_settings(pki), protocol="SSL")
    with kproto.Conn.to(node.bootstrap, timeout=10) as c:
        c.send_raw(kproto.request_frame(18, 0, 1, b""))
        c.sock.settimeout(10)
        data = b""
        while chunk := c.sock.recv(4096):
            data += chunk
    # At most a TLS alert record (content type 21), then the connection closes.
    assert data == b"" or data[0] == 0x15, data[:32]


def test_a_listener_whose_key_does_not_load_stops_start_up(shale_factory, pki, tmp_path):
    bad = tmp_path / "not-a-key.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    settings = {**tls_settings(pki), "ssl.key.location": str(bad)}
    node = shale_factory(settings=settings, protocol="SSL", start=False)
    with pytest.raises(RuntimeError) as e:
        node.start(timeout=20)
    assert "exited" in str(e.value)
    assert "ssl.key.location" in node.log_tail(400)


# ---- mTLS principals and ACLs -----------------------------------------------------------


MAPPING = "RULE:^CN=([^,]+),OU=clients,O=Shale$/$1/,DEFAULT"


@pytest.fixture
def mtls_node(shale_factory, pki):
    settings = {
        **tls_settings(pki, "required"),
        "ssl.principal.mapping.rules": MAPPING,
        "authorizer.class.name": STANDARD_AUTHORIZER,
        "super.users": "User:admin",
    }
    return shale_factory(settings=settings, protocol="SSL")


def grant(admin: AdminClient, *bindings: AclBinding):
    for f in admin.create_acls(list(bindings)).values():
        f.result(30)


def topic_acl(principal: str, topic: str, op, pattern=ResourcePatternType.LITERAL) -> AclBinding:
    return AclBinding(ResourceType.TOPIC, topic, pattern, principal, "*", op,
                      AclPermissionType.ALLOW)


def consumer_groups_acl(principal: str) -> AclBinding:
    """READ on the groups the test consumers name (librdkafka asks for the coordinator of
    its group.id even when it only assigns partitions, and Kafka checks READ on it)."""
    return AclBinding(ResourceType.GROUP, "assign-only", ResourcePatternType.PREFIXED, principal,
                      "*", AclOperation.READ, AclPermissionType.ALLOW)


def test_mtls_principals_come_from_the_certificate_subject_and_acls_apply(mtls_node, pki):
    admin = admin_client(client_conf(mtls_node, pki, "SSL", "admin"))
    topic = unique("payments")
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    grant(admin, topic_acl("User:alice", topic, AclOperation.WRITE),
          topic_acl("User:alice", topic, AclOperation.READ), consumer_groups_acl("User:alice"))
    alice = client_conf(mtls_node, pki, "SSL", "alice")
    roundtrip(alice, topic)
    bob = client_conf(mtls_node, pki, "SSL", "bob")
    err = produce_error(bob, topic)
    assert err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    wait_log(mtls_node, "authorization denied")
    # DescribeAcls shows what was granted, to the admin only.
    found = admin.describe_acls(AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY,
                                                 None, None, AclOperation.ANY,
                                                 AclPermissionType.ANY)).result(30)
    assert {(b.principal, b.name, b.operation) for b in found} == {
        ("User:alice", topic, AclOperation.WRITE), ("User:alice", topic, AclOperation.READ),
        ("User:alice", "assign-only", AclOperation.READ)}
    # Bob gets CLUSTER_AUTHORIZATION_FAILED; librdkafka drops DescribeAcls' error code and
    # reports an empty list, so what shows is that nothing leaks, and the broker's log line.
    bob_admin = admin_client(bob)
    assert bob_admin.describe_acls(AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
        AclPermissionType.ANY)).result(30) == []
    wait_log(mtls_node, 'api="DescribeAcls" operation=Describe resource_type=Cluster')
    with pytest.raises(KafkaException) as e:
        for f in bob_admin.create_acls([topic_acl("User:bob", topic, AclOperation.READ)]).values():
            f.result(30)
    assert e.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED


def test_deleted_acls_stop_applying(mtls_node, pki):
    admin = admin_client(client_conf(mtls_node, pki, "SSL", "admin"))
    topic = unique()
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    grant(admin, topic_acl("User:alice", topic, AclOperation.WRITE))
    alice = client_conf(mtls_node, pki, "SSL", "alice")
    p = producer(alice["bootstrap.servers"], **{k: v for k, v in alice.items() if k != "bootstrap.servers"})
    produce_all(p, topic, [{"value": b"allowed"}])
    deleted = admin.delete_acls([AclBindingFilter(ResourceType.TOPIC, topic,
                                                  ResourcePatternType.LITERAL, "User:alice", None,
                                                  AclOperation.ANY, AclPermissionType.ANY)])
    (matched,) = [f.result(30) for f in deleted.values()]
    assert len(matched) == 1
    err = produce_error(alice, topic)
    assert err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err


def test_metadata_hides_topics_the_principal_may_not_describe(mtls_node, pki):
    admin = admin_client(client_conf(mtls_node, pki, "SSL", "admin"))
    visible, hidden = unique("visible"), unique("hidden")
    for t in (visible, hidden):
        admin.create_topics([NewTopic(t, 1, 1)])[t].result(30)
    grant(admin, topic_acl("User:alice", visible, AclOperation.DESCRIBE))
    alice = admin_client(client_conf(mtls_node, pki, "SSL", "alice"))
    names = set(alice.list_topics(timeout=20).topics)
    assert visible in names and hidden not in names


# A foreign certificate is not even sent: the broker names its CA in the handshake, and
# OpenSSL offers only a certificate that CA issued (rustls would say UnknownIssuer).
@pytest.mark.parametrize("cert,reasons", [("expired", ["certificate expired"]),
                                          ("stranger", ["UnknownIssuer", "peer sent no certificates"])])
def test_mtls_refuses_expired_and_foreign_certificates(mtls_node, pki, cert, reasons):
    cannot_connect(client_conf(mtls_node, pki, "SSL", cert))
    wait_log(mtls_node, "TLS handshake failed")
    log = mtls_node.log_tail(400)
    assert any(r in log for r in reasons), mtls_node.log_tail(5)


def test_mtls_required_refuses_clients_without_a_certificate(mtls_node, pki):
    cannot_connect(client_conf(mtls_node, pki, "SSL"))
    wait_log(mtls_node, "TLS handshake failed")


# ---- SASL -------------------------------------------------------------------------------


def sasl_settings(pki, mechanisms: str, **extra) -> dict:
    jaas = ('org.apache.kafka.common.security.plain.PlainLoginModule required '
            f'user_admin="{ADMIN_PASSWORD}" user_carol="carol-secret";')
    return {
        **tls_settings(pki),
        "sasl.enabled.mechanisms": mechanisms,
        "listener.name.sasl_ssl.plain.sasl.jaas.config": jaas,
        "authorizer.class.name": STANDARD_AUTHORIZER,
        "super.users": "User:admin",
        **extra,
    }


def sasl_conf(node, pki, mechanism: str, user: str, password: str) -> dict:
    return client_conf(node, pki, "SASL_SSL", **{"sasl.mechanism": mechanism,
                                                  "sasl.username": user, "sasl.password": password})


@pytest.fixture
def sasl_node(shale_factory, pki):
    return shale_factory(settings=sasl_settings(pki, "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"),
                         protocol="SASL_SSL")


def test_sasl_plain_accepts_the_configured_password_only(sasl_node, pki):
    admin = admin_client(sasl_conf(sasl_node, pki, "PLAIN", "admin", ADMIN_PASSWORD))
    topic = unique()
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    roundtrip(sasl_conf(sasl_node, pki, "PLAIN", "admin", ADMIN_PASSWORD), topic)
    err = cannot_connect(sasl_conf(sasl_node, pki, "PLAIN", "admin", "wrong"))
    assert "Authentication failed" in err or "authentication" in err.lower(), err
    wait_log(sasl_node, "authentication failed")


@pytest.mark.parametrize("mechanism,kind", [("SCRAM-SHA-256", ScramMechanism.SCRAM_SHA_256),
                                            ("SCRAM-SHA-512", ScramMechanism.SCRAM_SHA_512)])
def test_scram_users_created_through_the_admin_api_log_in(sasl_node, pki, mechanism, kind):
    admin = admin_client(sasl_conf(sasl_node, pki, "PLAIN", "admin", ADMIN_PASSWORD))
    user = unique("user")
    futures = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(user, ScramCredentialInfo(kind, 8192), b"pw-" + user.encode())])
    for f in futures.values():
        f.result(30)
    described = admin.describe_user_scram_credentials([user])[user].result(30)
    assert [(c.mechanism, c.iterations) for c in described.scram_credential_infos] == [(kind, 8192)]
    topic = unique()
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    grant(admin, topic_acl(f"User:{user}", topic, AclOperation.ALL), consumer_groups_acl(f"User:{user}"))
    roundtrip(sasl_conf(sasl_node, pki, mechanism, user, "pw-" + user), topic)
    err = cannot_connect(sasl_conf(sasl_node, pki, mechanism, user, "wrong"))
    assert "Authentication failed" in err or "authentication" in err.lower(), err
    wait_log(sasl_node, "authentication failed")


def test_scram_credentials_can_only_be_managed_with_alter_on_the_cluster(sasl_node, pki):
    carol = admin_client(sasl_conf(sasl_node, pki, "PLAIN", "carol", "carol-secret"))
    futures = carol.alter_user_scram_credentials(
        [UserScramCredentialUpsertion("mallory", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096), b"x")])
    for f in futures.values():
        with pytest.raises(KafkaException) as e:
            f.result(30)
        assert e.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED


def test_a_disabled_mechanism_is_refused(shale_factory, pki):
    node = shale_factory(settings=sasl_settings(pki, "SCRAM-SHA-512"), protocol="SASL_SSL")
    err = cannot_connect(sasl_conf(node, pki, "PLAIN", "admin", ADMIN_PASSWORD))
    assert "PLAIN" in err or "mechanism" in err.lower() or "Authentication" in err, err
    wait_log(node, "SASL mechanism not enabled")


# ---- raw protocol: SASL state machine and re-authentication (KIP-368) -------------------


def tls_context(pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"].pem))
    return ctx


def sasl_handshake(c: kproto.Conn, mechanism: str) -> tuple[int, list[str]]:
    r = c.request(17, 1, kproto.string(mechanism))
    err = r.i16()
    mechs = r.array(lambda r: r.string())
    return err, mechs


def sasl_authenticate(c: kproto.Conn, token: bytes, version: int = 1):
    r = c.request(36, version, kproto.nbytes(token))
    err = r.i16()
    msg = r.string()
    data = r.nbytes()
    lifetime = r.i64() if version >= 1 else 0
    return err, msg, data, lifetime


def test_requests_before_authentication_close_the_connection(sasl_node, pki):
    with kproto.Conn.to(sasl_node.bootstrap, timeout=10, tls=tls_context(pki)) as c:
        err, versions = kproto.api_versions(c)
        assert err == 0 and kproto.METADATA in versions
        c.send_raw(kproto.request_frame(3, 1, 9, struct.pack(">i", -1)))
        assert c.closed_by_peer(10)


def test_a_wrong_plain_password_is_answered_then_the_connection_closes(sasl_node, pki):
    with kproto.Conn.to(sasl_node.bootstrap, timeout=10, tls=tls_context(pki)) as c:
        assert sasl_handshake(c, "PLAIN")[0] == 0
        err, msg, _, _ = sasl_authenticate(c, b"\0admin\0nope")
        assert err == 58, (err, msg)  # SASL_AUTHENTICATION_FAILED
        assert "Invalid username or password" in msg
        assert c.closed_by_peer(10)


def test_an_unknown_mechanism_lists_the_enabled_ones(sasl_node, pki):
    with kproto.Conn.to(sasl_node.bootstrap, timeout=10, tls=tls_context(pki)) as c:
        err, mechs = sasl_handshake(c, "GSSAPI")
        assert err == 33  # UNSUPPORTED_SASL_MECHANISM
        assert mechs == ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
        assert c.closed_by_peer(10)


def test_an_expired_session_closes_the_connection_on_its_next_request(shale_factory, pki):
    node = shale_factory(settings=sasl_settings(pki, "PLAIN", **{"connections.max.reauth.ms": 1500}),
                         protocol="SASL_SSL")
    with kproto.Conn.to(node.bootstrap, timeout=10, tls=tls_context(pki)) as c:
        assert sasl_handshake(c, "PLAIN")[0] == 0
        err, _, _, lifetime = sasl_authenticate(c, f"\0admin\0{ADMIN_PASSWORD}".encode())
        assert err == 0 and lifetime == 1500
        md = kproto.metadata(c, version=1)
        assert md["brokers"]
        # Re-authenticating in time keeps the connection.
        assert sasl_handshake(c, "PLAIN")[0] == 0
        err, _, _, lifetime = sasl_authenticate(c, f"\0admin\0{ADMIN_PASSWORD}".encode())
        assert err == 0 and lifetime == 1500
        time.sleep(2.0)
        c.send_raw(kproto.request_frame(3, 1, 99, struct.pack(">i", -1)))
        assert c.closed_by_peer(10)
    wait_log(node, "SASL session expired")


def test_reauthentication_as_another_user_is_refused(shale_factory, pki):
    node = shale_factory(settings=sasl_settings(pki, "PLAIN", **{"connections.max.reauth.ms": 60000}),
                         protocol="SASL_SSL")
    with kproto.Conn.to(node.bootstrap, timeout=10, tls=tls_context(pki)) as c:
        assert sasl_handshake(c, "PLAIN")[0] == 0
        assert sasl_authenticate(c, f"\0admin\0{ADMIN_PASSWORD}".encode())[0] == 0
        assert sasl_handshake(c, "PLAIN")[0] == 0
        err, msg, _, _ = sasl_authenticate(c, b"\0carol\0carol-secret")
        assert err == 58 and "re-authentication" in msg, (err, msg)
        assert c.closed_by_peer(10)


def test_a_handshake_after_authentication_without_reauthentication_is_refused_and_harmless(sasl_node, pki):
    # connections.max.reauth.ms is 0: no re-authentication, so no second identity either.
    with kproto.Conn.to(sasl_node.bootstrap, timeout=10, tls=tls_context(pki)) as c:
        assert sasl_handshake(c, "PLAIN")[0] == 0
        assert sasl_authenticate(c, f"\0carol\0carol-secret".encode())[0] == 0
        err, _ = sasl_handshake(c, "PLAIN")
        assert err == 34  # ILLEGAL_SASL_STATE; the connection stays, as carol
        assert kproto.metadata(c, version=1)["brokers"]


def test_an_unauthenticated_client_cannot_send_large_frames(sasl_node, pki):
    with kproto.Conn.to(sasl_node.bootstrap, timeout=10, tls=tls_context(pki)) as c:
        # A 1 MiB frame before authentication (Kafka's limit is 512 KiB there).
        c.send_raw(struct.pack(">i", 1 << 20) + b"\0" * 1024)
        assert c.closed_by_peer(10)
    wait_log(sasl_node, "request larger than the frame limit")
