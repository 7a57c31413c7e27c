"""What lands in object storage: one WAL object per interval (not one per batch), and
time retention deleting expired objects and moving the log start offset."""

import time

from confluent_kafka import TopicPartition
from confluent_kafka.admin import OffsetSpec

import kproto
from clients import admin, consume, create_topic, produce_all, producer


def list_offset(bootstrap, topic, partition, spec):
    tp = TopicPartition(topic, partition)
    return admin(bootstrap).list_offsets({tp: spec}, request_timeout=30)[tp].result(30).offset


def test_about_one_wal_object_per_interval_not_per_batch(shale_factory):
    interval_ms = 100
    b = shale_factory({"wal.batch.interval.ms": interval_ms, "compaction.interval.ms": 3_600_000})
    partitions = 16
    topic = create_topic(b.bootstrap, partitions=partitions)
    before = set(b.objects())
    # One record per batch, no lingering: every record is its own batch.
    p = producer(b.bootstrap, **{"linger.ms": 0, "batch.num.messages": 1, "acks": "all"})
    delivered = 0

    def cb(err, msg):
        nonlocal delivered
        assert err is None, err
        delivered += 1

    # Keep at most 2000 records outstanding so the run ends with a quick flush.
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 4.0:
        if len(p) < 2000:
            p.produce(topic, value=b"r%d" % i, partition=i % partitions, on_delivery=cb)
            i += 1
            p.poll(0)
        else:
            p.poll(0.005)
    assert p.flush(60) == 0
    elapsed_ms = (time.monotonic() - t0) * 1000
    batches = delivered
    new_objects = set(b.objects()) - before
    # Kafka semantics first: every batch is readable.
    got = consume(b.bootstrap, topic, range(partitions))
    assert sum(len(v) for v in got.values()) == batches
    bound = elapsed_ms / interval_ms * 2 + 10
    print(f"batches={batches} objects={len(new_objects)} elapsed_ms={elapsed_ms:.0f} bound={bound:.0f}")
    assert len(new_objects) >= 1, "nothing was written to the bucket"
    assert len(new_objects) <= bound, \
        f"{len(new_objects)} WAL objects for {elapsed_ms:.0f} ms at {interval_ms} ms intervals"
    assert len(new_objects) * 5 <= batches, \
        f"{len(new_objects)} objects for {batches} batches: objects must not follow batches"


def test_time_retention_deletes_objects_and_moves_log_start(shale_factory):
    b = shale_factory({"log.retention.check.interval.ms": 500, "object.delete.grace.ms": 0,
                       "compaction.interval.ms": 3_600_000})
    topic = create_topic(b.bootstrap, partitions=1, config={"retention.ms": "1000"})
    p = producer(b.bootstrap, **{"linger.ms": 0})
    for chunk in range(5):
        produce_all(p, topic, [{"value": b"c%d-%d" % (chunk, i)} for i in range(20)])
    assert list_offset(b.bootstrap, topic, 0, OffsetSpec.latest()) == 100
    written = set(b.objects())
    assert written, "the records must be in the bucket"

    deadline = time.monotonic() + 60
    while True:
        earliest = list_offset(b.bootstrap, topic, 0, OffsetSpec.earliest())
        left = written & set(b.objects())
        if earliest == 100 and not left:
            break
        assert time.monotonic() < deadline, \
            f"after 60s: earliest offset {earliest} (expected 100), {len(left)} of {len(written)} objects left"
        time.sleep(0.25)
    assert list_offset(b.bootstrap, topic, 0, OffsetSpec.latest()) == 100
    # Reading below the log start is out of range; new records still get the next offsets.
    with kproto.Conn.to(b.bootstrap) as c:
        assert kproto.fetch(c, topic, 0, 0)["error"] == kproto.OFFSET_OUT_OF_RANGE
    produce_all(p, topic, [{"value": b"after"}])
    got = consume(b.bootstrap, topic, [0], start=100)[0]
    assert [(r.offset, r.value) for r in got] == [(100, b"after")]


def test_topic_without_retention_keeps_data_while_another_expires(shale_factory):
    b = shale_factory({"log.retention.check.interval.ms": 500, "object.delete.grace.ms": 0})
    short = create_topic(b.bootstrap, partitions=1, config={"retention.ms": "1000"})
    kept = create_topic(b.bootstrap, partitions=1, config={"retention.ms": "-1"})
    p = producer(b.bootstrap)
    produce_all(p, short, [{"value": b"s%d" % i} for i in range(50)])
    produce_all(p, kept, [{"value": b"k%d" % i} for i in range(50)])
    deadline = time.monotonic() + 60
    while list_offset(b.bootstrap, short, 0, OffsetSpec.earliest()) != 50:
        assert time.monotonic() < deadline, "retention did not trim the short-retention topic"
        time.sleep(0.25)
    got = consume(b.bootstrap, kept, [0])[0]
    assert [r.value for r in got] == [b"k%d" % i for i in range(50)]
    assert list_offset(b.bootstrap, kept, 0, OffsetSpec.earliest()) == 0
