"""Produce and consume with confluent-kafka: what goes in comes back out, byte for byte, in
order per partition, with contiguous offsets."""

import os
import time

import pytest
from confluent_kafka import KafkaException

from clients import assert_contiguous, consume, create_topic, produce_all, producer, watermarks


def sample_records(partitions: int, per_partition: int, seed: str = ""):
    """Records with keys, null keys, null values, empty values and headers (including a
    repeated header name and a null header value)."""
    out = []
    for p in range(partitions):
        for i in range(per_partition):
            kind = i % 5
            key = None if kind == 1 else f"k{p}-{i}{seed}".encode()
            value = None if kind == 2 else (b"" if kind == 3 else f"value {p}/{i} {seed}".encode() * (1 + i % 7))
            headers = [] if kind == 4 else [("h1", f"{i}".encode()), ("dup", b"a"), ("dup", b"b"), ("nul", None)]
            out.append({"partition": p, "key": key, "value": value, "headers": headers})
    return out


def check_roundtrip(bootstrap, topic, sent, partitions):
    got = consume(bootstrap, topic, range(partitions))
    for p in range(partitions):
        expect = [r for r in sent if r["partition"] == p]
        recs = got[p]
        assert len(recs) == len(expect), f"partition {p}: {len(recs)} records, expected {len(expect)}"
        assert_contiguous(recs)
        for r, e in zip(recs, expect):
            assert r.key == e["key"], f"partition {p} offset {r.offset}: key"
            assert r.value == e["value"], f"partition {p} offset {r.offset}: value"
            assert (r.headers or []) == e["headers"], f"partition {p} offset {r.offset}: headers"


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_roundtrip_with_compression(broker, codec):
    topic = create_topic(broker.bootstrap, partitions=3)
    sent = sample_records(3, 400, seed=codec)
    p = producer(broker.bootstrap, **{"compression.type": codec, "linger.ms": 20})
    delivered = produce_all(p, topic, sent)
    assert len(delivered) == len(sent)
    check_roundtrip(broker.bootstrap, topic, sent, 3)


def test_delivery_reports_carry_contiguous_offsets(broker):
    topic = create_topic(broker.bootstrap, partitions=2)
    delivered = produce_all(producer(broker.bootstrap), topic,
                            [{"partition": i % 2, "value": b"%d" % i} for i in range(200)])
    for part in (0, 1):
        offsets = sorted(d.offset for d in delivered if d.partition == part)
        assert offsets == list(range(100))


def test_one_mib_records(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    # 1 MiB minus a little room for the batch and record headers: the batch stays below
    # the broker's default message.max.bytes (1048588). Random bytes do not compress.
    size = (1 << 20) - 512
    values = [os.urandom(size) for _ in range(4)]
    p = producer(broker.bootstrap, **{"message.max.bytes": 4 << 20, "batch.num.messages": 1,
                                      "compression.type": "none", "linger.ms": 0})
    produce_all(p, topic, [{"key": b"big%d" % i, "value": v} for i, v in enumerate(values)])
    got = consume(broker.bootstrap, topic, [0])[0]
    assert [r.value for r in got] == values
    assert_contiguous(got)


def test_batch_over_max_message_bytes_is_rejected(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    p = producer(broker.bootstrap, **{"message.max.bytes": 4 << 20, "batch.num.messages": 1,
                                      "compression.type": "none", "linger.ms": 0,
                                      "retries": 0})
    with pytest.raises(AssertionError) as e:
        produce_all(p, topic, [{"value": os.urandom((1 << 20) + 4096)}])
    assert "Broker: Message size too large" in str(e.value) or "MSG_SIZE_TOO_LARGE" in str(e.value), str(e.value)
    # and the partition stays usable
    produce_all(p, topic, [{"value": b"small"}])
    assert [r.value for r in consume(broker.bootstrap, topic, [0])[0]] == [b"small"]


def test_thousands_of_batches_across_sixteen_partitions(broker):
    partitions, per_partition = 16, 2500
    topic = create_topic(broker.bootstrap, partitions=partitions)
    # Small batches: at most 20 records each, so at least 2000 batches in all.
    p = producer(broker.bootstrap, **{"linger.ms": 1, "batch.num.messages": 20})
    sent = [{"partition": i % partitions, "key": b"%d" % (i // partitions),
             "value": b"p%d-seq%d" % (i % partitions, i // partitions)}
            for i in range(partitions * per_partition)]
    produce_all(p, topic, sent, timeout=120)
    got = consume(broker.bootstrap, topic, range(partitions), timeout=120)
    for part in range(partitions):
        recs = got[part]
        assert len(recs) == per_partition
        assert_contiguous(recs)
        assert [r.value for r in recs] == [b"p%d-seq%d" % (part, i) for i in range(per_partition)]


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_acks(broker, acks):
    topic = create_topic(broker.bootstrap, partitions=2)
    p = producer(broker.bootstrap, acks=acks)
    sent = [{"partition": i % 2, "value": b"acks%s-%d" % (acks.encode(), i)} for i in range(300)]
    delivered = produce_all(p, topic, sent)
    assert len(delivered) == 300
    if acks == "0":
        # No response, so no offsets: the records must still all be written, in order.
        assert all(d.offset is None or d.offset < 0 for d in delivered)
        deadline = time.monotonic() + 30
        while sum(watermarks(broker.bootstrap, topic, q)[1] for q in (0, 1)) < 300:
            assert time.monotonic() < deadline, "acks=0 records did not all become visible"
            time.sleep(0.2)
    else:
        assert sorted(d.offset for d in delivered if d.partition == 0) == list(range(150))
    got = consume(broker.bootstrap, topic, [0, 1])
    for q in (0, 1):
        assert [r.value for r in got[q]] == [s["value"] for s in sent if s["partition"] == q]
        assert_contiguous(got[q])


def test_produce_to_unknown_partition_fails(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    p = producer(broker.bootstrap, **{"message.timeout.ms": 5000})
    with pytest.raises((AssertionError, KafkaException)) as e:
        produce_all(p, topic, [{"partition": 7, "value": b"x"}], timeout=15)
    assert "Unknown partition" in str(e.value) or "UNKNOWN_PARTITION" in str(e.value), str(e.value)


def test_timestamps_round_trip(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    ts = [1_600_000_000_000 + i * 1000 for i in range(10)]
    produce_all(producer(broker.bootstrap), topic, [{"value": b"%d" % i, "timestamp": t} for i, t in enumerate(ts)])
    got = consume(broker.bootstrap, topic, [0])[0]
    assert [r.timestamp for r in got] == ts


def test_log_append_time_topic_stamps_broker_time(broker):
    topic = create_topic(broker.bootstrap, partitions=1, config={"message.timestamp.type": "LogAppendTime"})
    before = int(time.time() * 1000) - 1000
    produce_all(producer(broker.bootstrap), topic, [{"value": b"x", "timestamp": 1_000_000_000_000}])
    after = int(time.time() * 1000) + 1000
    c_rec = consume(broker.bootstrap, topic, [0])[0]
    assert len(c_rec) == 1
    assert before <= c_rec[0].timestamp <= after, "LogAppendTime must replace the producer's timestamp"


def test_produce_to_invalid_topic_name_fails(broker):
    # An invalid name can never be auto-created: the delivery must fail, not hang or succeed.
    p = producer(broker.bootstrap, **{"message.timeout.ms": 5000})
    with pytest.raises((AssertionError, KafkaException)):
        produce_all(p, "bad topic name!", [{"value": b"x"}], timeout=15)
