"""Client quotas with Kafka's semantics: produce and fetch byte rates and request time, per
user, client id, or both, and their defaults; stored in the metadata quorum and managed with
AlterClientQuotas / DescribeClientQuotas (what `kafka-configs.sh --entity-type users|clients`
sends). A client over its quota is served, told `throttle_time_ms`, and muted for that long:
librdkafka reports it as a throttle event, and nothing is lost."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AclOperation

import harness
import kproto
from clients import unique

INVALID_REQUEST = 42
CLUSTER_AUTHORIZATION_FAILED = 31


def alter(bootstrap, entries, validate_only=False, conn=None):
    if conn is not None:
        return kproto.alter_client_quotas(conn, entries, validate_only)
    with kproto.Conn.to(bootstrap) as c:
        return kproto.alter_client_quotas(c, entries, validate_only)


def describe(bootstrap, components, strict=False):
    with kproto.Conn.to(bootstrap) as c:
        return kproto.describe_client_quotas(c, components, strict)


def entities(described):
    err, msg, entries = described
    assert err == 0, msg
    out = [(tuple(sorted(e.items(), key=lambda p: p[0])), v) for e, v in entries]
    # The default (None) sorts before any name.
    return sorted(out, key=lambda ev: [(t, n is not None, n or "") for t, n in ev[0]])


def test_quotas_are_stored_described_and_removed_as_kafka_does(broker):
    b = broker.bootstrap
    results = alter(b, [
        ({"user": "alice"}, {"producer_byte_rate": 1024, "consumer_byte_rate": 2048}),
        ({"client-id": None}, {"request_percentage": 50.5}),
        ({"user": "alice", "client-id": "app"}, {"producer_byte_rate": 4096}),
        ({"user": None}, {"consumer_byte_rate": 1e6}),
    ])
    assert [r[0] for r in results] == [0, 0, 0, 0], results
    # Every user entity, the default too; strict: none that also names a client id.
    users = entities(describe(b, [("user", kproto.MATCH_SPECIFIED, None)], strict=True))
    assert users == [
        ((("user", None),), {"consumer_byte_rate": 1e6}),
        ((("user", "alice"),), {"consumer_byte_rate": 2048.0, "producer_byte_rate": 1024.0}),
    ]
    # Not strict: alice's (user, client id) entity matches an exact user filter too.
    alice = entities(describe(b, [("user", kproto.MATCH_EXACT, "alice")]))
    assert [e for e, _ in alice] == [(("client-id", "app"), ("user", "alice")), (("user", "alice"),)]
    defaults = entities(describe(b, [("client-id", kproto.MATCH_DEFAULT, None)], strict=True))
    assert defaults == [((("client-id", None),), {"request_percentage": 50.5})]

    # Removing the last key removes the entity.
    assert alter(b, [({"user": "alice", "client-id": "app"}, {"producer_byte_rate": None})])[0][0] == 0
    everything = entities(describe(b, []))
    assert (("client-id", "app"), ("user", "alice")) not in [e for e, _ in everything]
    assert len(everything) == 3

    # validate_only checks without storing.
    assert alter(b, [({"user": "bob"}, {"producer_byte_rate": 10})], validate_only=True)[0][0] == 0
    assert entities(describe(b, [("user", kproto.MATCH_EXACT, "bob")])) == []


@pytest.mark.parametrize("entity,ops", [
    ({"user": "alice"}, {"no_such_rate": 1}),             # unknown key
    ({"user": "alice"}, {"producer_byte_rate": 10.5}),    # byte rates are whole numbers
    ({"user": "alice"}, {"consumer_byte_rate": -1}),      # a quota is positive
    ({"ip": "10.0.0.1"}, {"connection_creation_rate": 5}),  # not enforced by Shale: refused
    ({"user": "alice"}, {"controller_mutation_rate": 5}),   # not enforced by Shale: refused
    ({"group": "g"}, {"producer_byte_rate": 1}),          # not a quota entity type
    ({}, {"producer_byte_rate": 1}),                      # an empty entity
])
def test_invalid_quota_changes_are_refused_with_invalid_request(broker, entity, ops):
    (err, msg, echoed), = alter(broker.bootstrap, [(entity, ops)])
    assert err == INVALID_REQUEST, (err, msg)
    assert msg
    assert echoed == entity
    assert entities(describe(broker.bootstrap, [])) == []


def throttle_events(conf: dict) -> tuple[dict, list[float]]:
    events: list[float] = []
    return {**conf, "throttle_cb": lambda e: events.append(e.throttle_time)}, events


def produce_burst(conf: dict, topic: str, count: int, size: int) -> list[float]:
    conf, events = throttle_events({"acks": "all", "linger.ms": 5, **conf})
    p = Producer(conf)
    delivered = []
    for i in range(count):
        p.produce(topic, value=b"%06d" % i + b"x" * (size - 6),
                  on_delivery=lambda err, m: delivered.append(err))
        p.poll(0)
    assert p.flush(120) == 0
    assert len(delivered) == count and all(e is None for e in delivered)
    return events


def test_a_producer_over_its_byte_rate_is_throttled_and_loses_nothing(broker):
    b = broker.bootstrap
    topic = unique()
    assert alter(b, [({"client-id": "slow-writer"}, {"producer_byte_rate": 20_000})])[0][0] == 0
    slow = produce_burst({"bootstrap.servers": b, "client.id": "slow-writer"}, topic, 400, 1000)
    assert slow and max(slow) > 0, "the producer over its quota saw no throttle"
    fast = produce_burst({"bootstrap.servers": b, "client.id": "fast-writer"}, topic, 400, 1000)
    assert fast == [], fast
    # Everything both wrote is there, once.
    c = Consumer({"bootstrap.servers": b, "group.id": unique("g"), "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, 0, 0)])
    got = 0
    deadline = time.monotonic() + 60
    while got < 800 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got += 1
    c.close()
    assert got == 800


def test_a_consumer_over_its_byte_rate_is_throttled_and_reads_everything_in_order(broker):
    b = broker.bootstrap
    topic = unique()
    produce_burst({"bootstrap.servers": b}, topic, 300, 1000)
    assert alter(b, [({"user": "ANONYMOUS", "client-id": "slow-reader"},
                      {"consumer_byte_rate": 30_000})])[0][0] == 0
    conf, events = throttle_events({"bootstrap.servers": b, "group.id": unique("g"),
                                    "client.id": "slow-reader", "auto.offset.reset": "earliest"})
    c = Consumer(conf)
    c.assign([TopicPartition(topic, 0, 0)])
    seen = []
    deadline = time.monotonic() + 120
    while len(seen) < 300 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            seen.append(int(m.value()[:6]))
    c.close()
    assert seen == list(range(300))
    assert events and max(events) > 0, "the consumer over its quota saw no throttle"


def test_request_time_quotas_throttle_in_the_response(broker):
    b = broker.bootstrap
    # 0.001 % of one thread (10 µs a second, over a window of at least 10 s): a few hundred
    # requests are over it.
    assert alter(b, [({"client-id": None}, {"request_percentage": 0.001})])[0][0] == 0
    throttles = []
    with kproto.Conn.to(b) as c:
        for _ in range(2000):
            r = c.request(kproto.DESCRIBE_CLIENT_QUOTAS, 0, kproto.array([], None) + kproto.i8(0))
            throttles.append(r.i32())
            if throttles[-1] > 0:
                break
    assert max(throttles) > 0, throttles
    # Kafka caps a request-time throttle at one quota window (1 s by default).
    assert max(throttles) <= 1000


def test_quotas_survive_a_restart_and_are_in_force_on_every_node(cluster):
    b = cluster[0].bootstrap
    assert alter(b, [({"client-id": "everywhere"}, {"producer_byte_rate": 20_000})])[0][0] == 0
    cluster[0].kill9()
    cluster[0].start()
    for node in cluster:
        assert entities(describe(node.bootstrap, [("client-id", kproto.MATCH_EXACT, "everywhere")])) == [
            ((("client-id", "everywhere"),), {"producer_byte_rate": 20_000.0})]
    # Produced through another node, the quota holds there too.
    events = produce_burst({"bootstrap.servers": cluster[1].bootstrap, "client.id": "everywhere"},
                           unique(), 400, 1000)
    assert events and max(events) > 0


# ---- Per user, with authentication and ACLs ------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    import certs
    ca = certs.CA(tmp_path_factory.mktemp("pki"))
    return {"ca": ca, "broker": ca.issue("broker", "CN=localhost")}


def sasl_conn(node, pki, user: str, password: str) -> kproto.Conn:
    import test_security
    c = kproto.Conn.to(node.bootstrap, tls=test_security.tls_context(pki))
    assert test_security.sasl_handshake(c, "PLAIN")[0] == 0
    err, *_ = test_security.sasl_authenticate(c, f"\0{user}\0{password}".encode())
    assert err == 0
    return c


def test_user_quotas_apply_to_that_principal_and_need_alter_configs_on_the_cluster(shale_factory, pki):
    import test_security as ts
    node = shale_factory(settings=ts.sasl_settings(pki, "PLAIN"), protocol="SASL_SSL")
    topic = unique()
    # carol (not a super user) may neither set nor read quotas.
    with sasl_conn(node, pki, "carol", "carol-secret") as carol:
        (err, _, _), = kproto.alter_client_quotas(carol, [({"user": "carol"}, {"producer_byte_rate": 1e9})])
        assert err == CLUSTER_AUTHORIZATION_FAILED
        err, _, entries = kproto.describe_client_quotas(carol, [])
        assert (err, entries) == (CLUSTER_AUTHORIZATION_FAILED, None)
    with sasl_conn(node, pki, "admin", ts.ADMIN_PASSWORD) as admin:
        (err, msg, _), = kproto.alter_client_quotas(admin, [({"user": "carol"}, {"producer_byte_rate": 20_000})])
        assert err == 0, msg
    admin_client = ts.admin_client(ts.sasl_conf(node, pki, "PLAIN", "admin", ts.ADMIN_PASSWORD))
    from confluent_kafka.admin import NewTopic
    admin_client.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    ts.grant(admin_client, ts.topic_acl("User:carol", topic, AclOperation.WRITE))
    carol_events = produce_burst(ts.sasl_conf(node, pki, "PLAIN", "carol", "carol-secret"), topic, 400, 1000)
    assert carol_events and max(carol_events) > 0
    admin_events = produce_burst(ts.sasl_conf(node, pki, "PLAIN", "admin", ts.ADMIN_PASSWORD), topic, 400, 1000)
    assert admin_events == []
