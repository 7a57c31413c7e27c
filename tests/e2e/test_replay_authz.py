"""Replay authorization (docs/security.md, "Replay authorization"): on a topic with
`replay.window.ms`, fetching records older than the window and moving a group's committed
offset backwards take READ on the Topic resource `__replay.<topic>`, an ordinary ACL
(`kafka-acls.sh --add --allow-principal User:carol --operation Read --topic __replay.<topic>`).
Checked with confluent-kafka over SASL_SSL with ACLs: the window set and described as a topic
config, the refusal a consumer sees and what it may still read, literal and prefixed grants,
offset resets, a topic without a window, the reserved names, and the audit log."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import (OFFSET_BEGINNING, ConsumerGroupTopicPartitions, KafkaError,
                             KafkaException, TopicPartition)
from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AlterConfigOpType,
                                   ConfigEntry, ConfigResource, ConfigSource, NewTopic,
                                   ResourcePatternType, ResourceType)

from clients import consume, consumer, produce_all, producer, unique
from test_security import (ADMIN_PASSWORD, admin_client, pki, sasl_conf,  # noqa: F401
                           sasl_settings)

CAROL_PASSWORD = "carol-secret"  # a PLAIN user of sasl_settings' JAAS
HOUR_MS = 3_600_000


@pytest.fixture
def node(shale_factory, pki):  # noqa: F811
    n = shale_factory(settings=sasl_settings(pki, "PLAIN", **{"audit.enable": "true"}),
                      protocol="SASL_SSL")
    n.audit_log = n.data_dir / "audit" / "audit.log"
    return n


def admin_conf(node, pki):  # noqa: F811
    return sasl_conf(node, pki, "PLAIN", "admin", ADMIN_PASSWORD)


def carol_conf(node, pki):  # noqa: F811
    return sasl_conf(node, pki, "PLAIN", "carol", CAROL_PASSWORD)


def rest(conf: dict) -> dict:
    return {k: v for k, v in conf.items() if k != "bootstrap.servers"}


def grant(admin, *bindings: AclBinding):
    for f in admin.create_acls(list(bindings)).values():
        f.result(30)


def allow(resource_type, name: str, op=AclOperation.READ, pattern=ResourcePatternType.LITERAL,
          principal: str = "User:carol") -> AclBinding:
    return AclBinding(resource_type, name, pattern, principal, "*", op, AclPermissionType.ALLOW)


def create(admin, topic: str, window_ms: int | None):
    config = {} if window_ms is None else {"replay.window.ms": str(window_ms)}
    admin.create_topics([NewTopic(topic, 1, 1, config=config)])[topic].result(30)


def carol_reads(admin, topic: str):
    """What a consumer with plain READ has: READ on the topic and on its groups."""
    grant(admin, allow(ResourceType.TOPIC, topic),
          allow(ResourceType.GROUP, "assign-only", pattern=ResourcePatternType.PREFIXED),
          allow(ResourceType.GROUP, "replay-g", pattern=ResourcePatternType.PREFIXED))


def produce(conf: dict, topic: str, values: list[str], timestamp: int | None = None):
    records = [{"value": v.encode(), **({"timestamp": timestamp} if timestamp else {})} for v in values]
    produce_all(producer(conf["bootstrap.servers"], **rest(conf)), topic, records)


def with_history(node, pki, topic: str, window_ms: int | None = 60_000):  # noqa: F811
    """`topic` with offsets 0-2 an hour old and 3-5 new; carol may READ it."""
    admin = admin_client(admin_conf(node, pki))
    create(admin, topic, window_ms)
    carol_reads(admin, topic)
    produce(admin_conf(node, pki), topic, [f"old-{i}" for i in range(3)],
            timestamp=int(time.time() * 1000) - HOUR_MS)
    produce(admin_conf(node, pki), topic, [f"new-{i}" for i in range(3)])
    return admin


def read(conf: dict, topic: str, start: int) -> list[bytes]:
    got = consume(conf["bootstrap.servers"], topic, [0], start=start, until={0: 6}, timeout=30,
                  **rest(conf))
    return [r.value for r in got[0]]


def fetch_refusal(conf: dict, topic: str, start: int) -> tuple[KafkaError, list[bytes]]:
    """The error a consumer assigned at `start` gets, and any records it got before it."""
    c = consumer(conf["bootstrap.servers"], **rest(conf))
    got = []
    try:
        c.assign([TopicPartition(topic, 0, start)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for m in c.consume(100, 0.5):
                if m.error() is None:
                    got.append(m.value())
                elif m.error().code() != KafkaError._PARTITION_EOF:
                    return m.error(), got
        raise AssertionError(f"no error reading {topic} from {start}; got {got}")
    finally:
        c.close()


def audit_events(node, until, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        lines = node.audit_log.read_text().splitlines() if node.audit_log.exists() else []
        evs = [json.loads(line) for line in lines]
        if until(evs) or time.monotonic() > deadline:
            return evs
        time.sleep(0.2)


def replay_denials(evs: list[dict], topic: str) -> list[dict]:
    return [e["data"] for e in evs if e["type"] == "io.shale.audit.authorization"
            and e["data"]["resource"]["name"] == f"__replay.{topic}"
            and e["data"]["outcome"] == "denied"]


def test_the_window_is_a_topic_config_that_admin_tools_alter_and_describe(node, pki):  # noqa: F811
    admin = admin_client(admin_conf(node, pki))
    topic = unique("payments")
    create(admin, topic, None)

    def window() -> ConfigEntry:
        res = ConfigResource(ConfigResource.Type.TOPIC, topic)
        return admin.describe_configs([res])[res].result(30)["replay.window.ms"]

    assert window().value == "-1"
    # kafka-configs.sh --alter --entity-type topics --add-config replay.window.ms=3600000
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("replay.window.ms", "3600000", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([res])[res].result(30)
    assert window().value == "3600000"
    assert ConfigSource(window().source) == ConfigSource.DYNAMIC_TOPIC_CONFIG


def test_history_past_the_window_needs_read_on_the_replay_resource(node, pki):  # noqa: F811
    # The window passing in real time: records it leaves behind become history.
    window_ms = 3000
    admin = admin_client(admin_conf(node, pki))
    topic = unique("payments")
    create(admin, topic, window_ms)
    carol_reads(admin, topic)
    produce(admin_conf(node, pki), topic, [f"old-{i}" for i in range(3)])
    time.sleep(window_ms / 1000 + 1.5)
    produce(admin_conf(node, pki), topic, [f"new-{i}" for i in range(3)])
    carol = carol_conf(node, pki)

    # Recent records are served to plain READ, history is not.
    assert read(carol, topic, 3) == [b"new-0", b"new-1", b"new-2"]
    err, got = fetch_refusal(carol, topic, OFFSET_BEGINNING)
    assert err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    assert not any(v.startswith(b"old") for v in got), got

    # kafka-acls.sh --add --allow-principal User:carol --operation Read --topic __replay.<topic>
    grant(admin, allow(ResourceType.TOPIC, f"__replay.{topic}"))
    assert read(carol, topic, 0) == [b"old-0", b"old-1", b"old-2", b"new-0", b"new-1", b"new-2"]

    evs = audit_events(node, lambda evs: replay_denials(evs, topic))
    (denial, *_) = replay_denials(evs, topic)
    assert denial["principal"] == "User:carol"
    assert denial["resource"]["type"] == "Topic" and denial["operation"] == "Read"
    assert denial["api"]["name"] == "Fetch"
    assert "replay of partition 0 from offset 0 (boundary 3)" in denial["reason"], denial
    assert f"replay.window.ms={window_ms}" in denial["reason"], denial
    log = node.audit_log.read_text()
    assert "old-0" not in log and "new-0" not in log, "no record value is ever audited"


def test_a_prefixed_grant_covers_the_topics_it_names(node, pki):  # noqa: F811
    paid, other = unique("pay"), unique("other")
    admin = with_history(node, pki, paid)
    with_history(node, pki, other)
    grant(admin, allow(ResourceType.TOPIC, "__replay.pay", pattern=ResourcePatternType.PREFIXED))
    carol = carol_conf(node, pki)
    assert len(read(carol, paid, 0)) == 6
    err, _ = fetch_refusal(carol, other, 0)
    assert err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err


def test_a_deny_on_the_replay_resource_wins(node, pki):  # noqa: F811
    topic = unique("payments")
    admin = with_history(node, pki, topic)
    grant(admin, allow(ResourceType.TOPIC, "__replay.", pattern=ResourcePatternType.PREFIXED),
          AclBinding(ResourceType.TOPIC, f"__replay.{topic}", ResourcePatternType.LITERAL,
                     "User:carol", "*", AclOperation.READ, AclPermissionType.DENY))
    err, _ = fetch_refusal(carol_conf(node, pki), topic, 0)
    assert err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err


def alter_offset(conf: dict, group: str, topic: str, offset: int) -> KafkaError | None:
    """kafka-consumer-groups.sh --reset-offsets --to-offset: the partition's error, if any."""
    a = admin_client(conf)
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, offset)])
    try:
        result = a.alter_consumer_group_offsets([req])[group].result(30)
    except KafkaException as e:
        return e.args[0]
    return result.topic_partitions[0].error


def committed(conf: dict, group: str, topic: str) -> int:
    a = admin_client(conf)
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0)])
    return a.list_consumer_group_offsets([req])[group].result(30).topic_partitions[0].offset


def test_resetting_committed_offsets_backwards_needs_the_grant(node, pki):  # noqa: F811
    topic = unique("payments")
    admin = with_history(node, pki, topic)
    carol, group = carol_conf(node, pki), unique("replay-g")
    assert alter_offset(carol, group, topic, 5) is None, "a first commit is not backwards"
    assert alter_offset(carol, group, topic, 6) is None, "forwards"
    # Backwards (--to-earliest) is refused, and the offset stays.
    err = alter_offset(carol, group, topic, 0)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    assert committed(carol, group, topic) == 6
    grant(admin, allow(ResourceType.TOPIC, f"__replay.{topic}"))
    assert alter_offset(carol, group, topic, 0) is None
    assert committed(carol, group, topic) == 0

    evs = audit_events(node, lambda evs: any(d["api"]["name"] == "OffsetCommit"
                                             for d in replay_denials(evs, topic)))
    denial = next(d for d in replay_denials(evs, topic) if d["api"]["name"] == "OffsetCommit")
    assert f"group {group} moves partition 0 back from 6 to 0" in denial["reason"], denial


def test_a_topic_without_a_window_behaves_as_in_kafka(node, pki):  # noqa: F811
    topic = unique("plain")
    with_history(node, pki, topic, window_ms=None)
    carol, group = carol_conf(node, pki), unique("replay-g")
    assert len(read(carol, topic, 0)) == 6
    assert alter_offset(carol, group, topic, 6) is None
    assert alter_offset(carol, group, topic, 0) is None
    assert committed(carol, group, topic) == 0


def test_no_topic_can_take_the_name_of_a_replay_grant(node, pki):  # noqa: F811
    admin = admin_client(admin_conf(node, pki))
    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic("__replay.payments", 1, 1)])["__replay.payments"].result(30)
    # librdkafka's name for Kafka's INVALID_TOPIC_EXCEPTION (17)
    assert e.value.args[0].code() == KafkaError.TOPIC_EXCEPTION, e.value
