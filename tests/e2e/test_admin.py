"""Admin APIs through confluent-kafka's AdminClient, as Kafka specifies them."""

import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions,
                                   NewTopic, OffsetSpec, ResourceType)

import kproto
from clients import admin, consume, create_topic, produce_all, producer, unique

DYNAMIC_TOPIC, STATIC_BROKER, DEFAULT = 1, 4, 5

# Topic configs every Kafka broker describes (admin tools read-modify-write this list).
CORE_TOPIC_CONFIGS = {
    "cleanup.policy": "delete",
    "compression.type": "producer",
    "delete.retention.ms": "86400000",
    "max.message.bytes": "1048588",
    "message.timestamp.type": "CreateTime",
    "min.insync.replicas": "1",
    "retention.bytes": "-1",
    "retention.ms": "604800000",
    "segment.bytes": "1073741824",
    "segment.ms": "604800000",
    "unclean.leader.election.enable": "false",
}


def source(entry) -> int:
    return int(getattr(entry.source, "value", entry.source))


def error_code(exc_info) -> int:
    err = exc_info.value.args[0]
    return err.code()


def topic_configs(bootstrap, topic):
    res = ConfigResource(ResourceType.TOPIC, topic)
    return admin(bootstrap).describe_configs([res], request_timeout=30)[res].result(30)


def topics(bootstrap):
    return admin(bootstrap).list_topics(timeout=30).topics


# --- CreateTopics ---------------------------------------------------------------------


def test_create_topic_appears_in_metadata_with_its_partitions(broker):
    name = create_topic(broker.bootstrap, partitions=6)
    md = topics(broker.bootstrap)[name]
    assert md.error is None
    assert sorted(md.partitions) == list(range(6))
    for p in md.partitions.values():
        assert p.leader == 1 and p.error is None


def test_create_topics_validate_only_creates_nothing(broker):
    name = unique()
    fs = admin(broker.bootstrap).create_topics([NewTopic(name, 3, 1)], validate_only=True, request_timeout=30)
    assert fs[name].result(30) is None
    assert name not in topics(broker.bootstrap)


def test_create_topics_validate_only_still_reports_errors(broker):
    fs = admin(broker.bootstrap).create_topics([NewTopic("bad/name", 1, 1)], validate_only=True,
                                               request_timeout=30)
    with pytest.raises(KafkaException) as e:
        fs["bad/name"].result(30)
    assert error_code(e) == KafkaError.TOPIC_EXCEPTION


@pytest.mark.parametrize("bad", ["bad name", "a" * 250, "..", ".", "x:y", "ü"])
def test_create_topic_with_invalid_name_fails(broker, bad):
    fs = admin(broker.bootstrap).create_topics([NewTopic(bad, 1, 1)], request_timeout=30)
    with pytest.raises(KafkaException) as e:
        fs[bad].result(30)
    assert error_code(e) == KafkaError.TOPIC_EXCEPTION
    assert bad not in topics(broker.bootstrap)


def test_create_existing_topic_fails_with_topic_already_exists(broker):
    name = create_topic(broker.bootstrap, partitions=2)
    fs = admin(broker.bootstrap).create_topics([NewTopic(name, 4, 1)], request_timeout=30)
    with pytest.raises(KafkaException) as e:
        fs[name].result(30)
    assert error_code(e) == KafkaError.TOPIC_ALREADY_EXISTS
    assert len(topics(broker.bootstrap)[name].partitions) == 2


def test_create_topic_with_invalid_config_fails(broker):
    for cfg in ({"retention.ms": "soon"}, {"no.such.config": "1"}, {"cleanup.policy": "sometimes"}):
        name = unique()
        fs = admin(broker.bootstrap).create_topics([NewTopic(name, 1, 1, config=cfg)], request_timeout=30)
        with pytest.raises(KafkaException) as e:
            fs[name].result(30)
        assert error_code(e) == KafkaError.INVALID_CONFIG, cfg
        assert name not in topics(broker.bootstrap)


def test_create_topic_with_invalid_partition_count_fails(broker):
    name = unique()
    fs = admin(broker.bootstrap).create_topics([NewTopic(name, 0, 1)], request_timeout=30)
    with pytest.raises(KafkaException) as e:
        fs[name].result(30)
    assert error_code(e) == KafkaError.INVALID_PARTITIONS


# --- DeleteTopics -----------------------------------------------------------------------


def test_delete_topic_then_recreate_starts_empty(broker):
    name = create_topic(broker.bootstrap, partitions=2)
    produce_all(producer(broker.bootstrap), name, [{"partition": 0, "value": b"old"}] * 5)
    admin(broker.bootstrap).delete_topics([name], request_timeout=30)[name].result(30)
    deadline = time.monotonic() + 30
    while name in topics(broker.bootstrap):
        assert time.monotonic() < deadline, "deleted topic still listed"
        time.sleep(0.2)
    create_topic(broker.bootstrap, name, partitions=1)
    produce_all(producer(broker.bootstrap), name, [{"partition": 0, "value": b"new"}])
    got = consume(broker.bootstrap, name, [0])[0]
    assert [(r.offset, r.value) for r in got] == [(0, b"new")]


def test_delete_unknown_topic_fails(broker):
    name = unique()
    with pytest.raises(KafkaException) as e:
        admin(broker.bootstrap).delete_topics([name], request_timeout=30)[name].result(30)
    assert error_code(e) == KafkaError.UNKNOWN_TOPIC_OR_PART


# --- CreatePartitions -------------------------------------------------------------------


def test_create_partitions_grows_topic(broker):
    name = create_topic(broker.bootstrap, partitions=2)
    a = admin(broker.bootstrap)
    a.create_partitions([NewPartitions(name, 5)], request_timeout=30)[name].result(30)
    assert sorted(topics(broker.bootstrap)[name].partitions) == list(range(5))
    produce_all(producer(broker.bootstrap), name, [{"partition": 4, "value": b"p4"}])
    assert [r.value for r in consume(broker.bootstrap, name, [4])[4]] == [b"p4"]


def test_create_partitions_cannot_shrink_or_stay(broker):
    name = create_topic(broker.bootstrap, partitions=3)
    a = admin(broker.bootstrap)
    for total in (2, 3):
        with pytest.raises(KafkaException) as e:
            a.create_partitions([NewPartitions(name, total)], request_timeout=30)[name].result(30)
        assert error_code(e) == KafkaError.INVALID_PARTITIONS
    assert len(topics(broker.bootstrap)[name].partitions) == 3


def test_create_partitions_validate_only_and_unknown_topic(broker):
    name = create_topic(broker.bootstrap, partitions=1)
    a = admin(broker.bootstrap)
    a.create_partitions([NewPartitions(name, 4)], validate_only=True, request_timeout=30)[name].result(30)
    assert len(topics(broker.bootstrap)[name].partitions) == 1
    missing = unique()
    with pytest.raises(KafkaException) as e:
        a.create_partitions([NewPartitions(missing, 4)], request_timeout=30)[missing].result(30)
    assert error_code(e) == KafkaError.UNKNOWN_TOPIC_OR_PART


# --- DescribeConfigs / AlterConfigs / IncrementalAlterConfigs ---------------------------


def test_describe_configs_lists_every_topic_config_with_defaults(broker):
    name = create_topic(broker.bootstrap, config={"retention.ms": "3600000"})
    cfg = topic_configs(broker.bootstrap, name)
    missing = set(CORE_TOPIC_CONFIGS) - set(cfg)
    assert not missing, f"DescribeConfigs lacks {sorted(missing)}"
    for key, default in CORE_TOPIC_CONFIGS.items():
        e = cfg[key]
        if key == "retention.ms":
            assert (e.value, e.is_default, source(e)) == ("3600000", False, DYNAMIC_TOPIC)
        else:
            assert (e.value, e.is_default, source(e)) == (default, True, DEFAULT), key
    for e in cfg.values():
        assert e.name and not e.is_sensitive
        assert source(e) in (DYNAMIC_TOPIC, STATIC_BROKER, DEFAULT), (e.name, e.source)


def test_describe_configs_shows_broker_level_defaults(shale_factory):
    b = shale_factory({"log.retention.ms": 86_400_000})
    name = create_topic(b.bootstrap)
    e = topic_configs(b.bootstrap, name)["retention.ms"]
    assert e.value == "86400000"
    assert source(e) == STATIC_BROKER
    # topics pick that default up: a topic override still wins
    other = create_topic(b.bootstrap, config={"retention.ms": "1000000"})
    assert topic_configs(b.bootstrap, other)["retention.ms"].value == "1000000"


def test_describe_configs_of_unknown_topic_fails(broker):
    res = ConfigResource(ResourceType.TOPIC, unique())
    with pytest.raises(KafkaException) as e:
        admin(broker.bootstrap).describe_configs([res], request_timeout=30)[res].result(30)
    assert error_code(e) == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_alter_configs_replaces_the_whole_set(broker):
    name = create_topic(broker.bootstrap)
    a = admin(broker.bootstrap)
    res = ConfigResource(ResourceType.TOPIC, name, set_config={"retention.ms": "5000", "max.message.bytes": "2000000"})
    a.alter_configs([res], request_timeout=30)[res].result(30)
    cfg = topic_configs(broker.bootstrap, name)
    assert cfg["retention.ms"].value == "5000" and source(cfg["retention.ms"]) == DYNAMIC_TOPIC
    assert cfg["max.message.bytes"].value == "2000000"
    # Legacy AlterConfigs is not incremental: what is not given reverts to the default.
    res = ConfigResource(ResourceType.TOPIC, name, set_config={"retention.ms": "6000"})
    a.alter_configs([res], request_timeout=30)[res].result(30)
    cfg = topic_configs(broker.bootstrap, name)
    assert cfg["retention.ms"].value == "6000"
    assert cfg["max.message.bytes"].value == "1048588" and cfg["max.message.bytes"].is_default


def test_alter_configs_rejects_invalid_values(broker):
    name = create_topic(broker.bootstrap)
    res = ConfigResource(ResourceType.TOPIC, name, set_config={"retention.ms": "not-a-number"})
    with pytest.raises(KafkaException) as e:
        admin(broker.bootstrap).alter_configs([res], request_timeout=30)[res].result(30)
    assert error_code(e) == KafkaError.INVALID_CONFIG
    assert topic_configs(broker.bootstrap, name)["retention.ms"].is_default


def incremental(bootstrap, topic, *ops):
    entries = [ConfigEntry(n, v, incremental_operation=op) for n, v, op in ops]
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
    return admin(bootstrap).incremental_alter_configs([res], request_timeout=30)[res].result(30)


def test_incremental_alter_configs_set_delete_append_subtract(broker):
    name = create_topic(broker.bootstrap)
    b = broker.bootstrap
    incremental(b, name, ("retention.ms", "12345", AlterConfigOpType.SET))
    cfg = topic_configs(b, name)
    assert cfg["retention.ms"].value == "12345" and source(cfg["retention.ms"]) == DYNAMIC_TOPIC
    assert cfg["cleanup.policy"].value == "delete" and cfg["cleanup.policy"].is_default

    # cleanup.policy is a list config: APPEND and SUBTRACT work on its elements.
    incremental(b, name, ("cleanup.policy", "compact", AlterConfigOpType.APPEND))
    assert set(topic_configs(b, name)["cleanup.policy"].value.split(",")) == {"delete", "compact"}
    incremental(b, name, ("cleanup.policy", "delete", AlterConfigOpType.SUBTRACT))
    assert topic_configs(b, name)["cleanup.policy"].value == "compact"
    # other configs were not touched by those operations
    assert topic_configs(b, name)["retention.ms"].value == "12345"

    incremental(b, name, ("cleanup.policy", None, AlterConfigOpType.DELETE),
                ("retention.ms", None, AlterConfigOpType.DELETE))
    cfg = topic_configs(b, name)
    assert (cfg["cleanup.policy"].value, cfg["cleanup.policy"].is_default) == ("delete", True)
    assert (cfg["retention.ms"].value, source(cfg["retention.ms"])) == ("604800000", DEFAULT)


def test_incremental_alter_configs_rejects_bad_input(broker):
    name = create_topic(broker.bootstrap)
    for op in [("retention.ms", "abc", AlterConfigOpType.SET),
               ("no.such.config", "1", AlterConfigOpType.SET),
               ("cleanup.policy", "sometimes", AlterConfigOpType.APPEND),
               # APPEND/SUBTRACT apply to list configs only
               ("retention.ms", "1", AlterConfigOpType.APPEND)]:
        with pytest.raises(KafkaException) as e:
            incremental(broker.bootstrap, name, op)
        assert error_code(e) == KafkaError.INVALID_CONFIG, op
    assert topic_configs(broker.bootstrap, name)["retention.ms"].is_default


def test_incremental_alter_configs_validate_only(broker):
    name = create_topic(broker.bootstrap)
    res = ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
        ConfigEntry("retention.ms", "777", incremental_operation=AlterConfigOpType.SET)])
    admin(broker.bootstrap).incremental_alter_configs([res], validate_only=True, request_timeout=30)[res].result(30)
    assert topic_configs(broker.bootstrap, name)["retention.ms"].is_default


# --- DeleteRecords / ListOffsets ----------------------------------------------------------


def test_delete_records_moves_log_start(broker):
    name = create_topic(broker.bootstrap, partitions=1)
    produce_all(producer(broker.bootstrap), name, [{"value": b"%d" % i} for i in range(10)])
    tp = TopicPartition(name, 0, 4)
    res = admin(broker.bootstrap).delete_records([tp], request_timeout=30)[tp].result(30)
    assert res.low_watermark == 4
    tp0 = TopicPartition(name, 0)
    a = admin(broker.bootstrap)
    assert a.list_offsets({tp0: OffsetSpec.earliest()}, request_timeout=30)[tp0].result(30).offset == 4
    got = consume(broker.bootstrap, name, [0], start=4)[0]
    assert [r.value for r in got] == [b"%d" % i for i in range(4, 10)]
    with kproto.Conn.to(broker.bootstrap) as c:
        assert kproto.fetch(c, name, 0, 2)["error"] == kproto.OFFSET_OUT_OF_RANGE
    # offset -1 means "up to the high watermark"
    tp = TopicPartition(name, 0, -1)
    assert a.delete_records([tp], request_timeout=30)[tp].result(30).low_watermark == 10


def test_delete_records_beyond_high_watermark_fails(broker):
    name = create_topic(broker.bootstrap, partitions=1)
    produce_all(producer(broker.bootstrap), name, [{"value": b"x"}] * 3)
    tp = TopicPartition(name, 0, 50)
    with pytest.raises(KafkaException) as e:
        admin(broker.bootstrap).delete_records([tp], request_timeout=30)[tp].result(30)
    assert error_code(e) == KafkaError.OFFSET_OUT_OF_RANGE


def test_list_offsets_earliest_latest_timestamp_max_timestamp(broker):
    name = create_topic(broker.bootstrap, partitions=1)
    base = 1_700_000_000_000
    deltas = [0, 10, 20, 90, 30, 40]  # offset 3 has the largest timestamp
    # linger so that all six records share one batch: lookups must be exact within a batch
    p = producer(broker.bootstrap, **{"linger.ms": 200})
    produce_all(p, name, [{"value": b"%d" % i, "timestamp": base + d} for i, d in enumerate(deltas)])
    a = admin(broker.bootstrap)
    tp = TopicPartition(name, 0)

    def lo(spec):
        r = a.list_offsets({tp: spec}, request_timeout=30)[tp].result(30)
        return r.offset, r.timestamp

    assert lo(OffsetSpec.earliest())[0] == 0
    assert lo(OffsetSpec.latest())[0] == 6
    assert lo(OffsetSpec.for_timestamp(base))[0] == 0
    assert lo(OffsetSpec.for_timestamp(base + 15)) == (2, base + 20)
    assert lo(OffsetSpec.for_timestamp(base + 35))[0] == 3  # first offset with timestamp >= target
    assert lo(OffsetSpec.for_timestamp(base + 91))[0] == -1  # none
    assert lo(OffsetSpec.max_timestamp()) == (3, base + 90)
    with kproto.Conn.to(broker.bootstrap) as c:
        assert kproto.list_offsets(c, name, 0, base + 15) == (0, base + 20, 2)
        assert kproto.list_offsets(c, name, 0, -1)[2] == 6
        assert kproto.list_offsets(c, name, 0, -2)[2] == 0


def test_list_offsets_of_empty_partition(broker):
    name = create_topic(broker.bootstrap, partitions=1)
    a = admin(broker.bootstrap)
    tp = TopicPartition(name, 0)
    for spec in (OffsetSpec.earliest(), OffsetSpec.latest()):
        assert a.list_offsets({tp: spec}, request_timeout=30)[tp].result(30).offset == 0
    assert a.list_offsets({tp: OffsetSpec.for_timestamp(1)}, request_timeout=30)[tp].result(30).offset == -1


# --- DescribeCluster / Metadata ----------------------------------------------------------


def test_describe_cluster(broker):
    d = admin(broker.bootstrap).describe_cluster(request_timeout=30).result(30)
    assert d.cluster_id
    assert [(n.id, n.host, n.port) for n in d.nodes] == [(1, "127.0.0.1", broker.port)]
    assert d.controller is not None and d.controller.id == 1


def test_metadata_auto_creates_topics_with_num_partitions(shale_factory):
    b = shale_factory({"num.partitions": 3})
    name = unique("auto")
    produce_all(producer(b.bootstrap), name, [{"value": b"auto"}])
    md = topics(b.bootstrap)[name]
    assert sorted(md.partitions) == [0, 1, 2]
    # and its configs are the defaults
    assert topic_configs(b.bootstrap, name)["retention.ms"].is_default


def test_metadata_does_not_auto_create_invalid_names_or_when_disabled(shale_factory):
    b = shale_factory({"auto.create.topics.enable": False})
    name = unique("noauto")
    with kproto.Conn.to(b.bootstrap) as c:
        md = kproto.metadata(c, [name, "bad name!"], allow_auto_topic_creation=True)
        assert md["topics"][name][0] == kproto.UNKNOWN_TOPIC_OR_PARTITION
        assert md["topics"]["bad name!"][0] == kproto.INVALID_TOPIC_EXCEPTION
    assert name not in topics(b.bootstrap)


def test_metadata_invalid_name_with_auto_create(broker):
    with kproto.Conn.to(broker.bootstrap) as c:
        md = kproto.metadata(c, ["bad name!"], allow_auto_topic_creation=True)
        assert md["topics"]["bad name!"][0] == kproto.INVALID_TOPIC_EXCEPTION
        good = unique("auto")
        md = kproto.metadata(c, [good], allow_auto_topic_creation=True)
        err, parts = md["topics"][good]
        assert err in (0, kproto.UNKNOWN_TOPIC_OR_PARTITION, 5)  # 5 = LEADER_NOT_AVAILABLE while creating
    assert "bad name!" not in topics(broker.bootstrap)
    deadline = time.monotonic() + 30
    while good not in topics(broker.bootstrap):
        assert time.monotonic() < deadline
        time.sleep(0.1)
