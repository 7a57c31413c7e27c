"""Fetch semantics: long polls, offsets inside batches, out-of-range offsets."""

import threading
import time

from confluent_kafka import KafkaError, TopicPartition

import kproto
from clients import consume, consumer, create_topic, produce_all, producer


def test_long_poll_receives_data_produced_later(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    c = consumer(broker.bootstrap, **{"fetch.wait.max.ms": 5000})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        assert c.poll(1.0) is None  # nothing there yet

        def later():
            time.sleep(1.0)
            produce_all(producer(broker.bootstrap), topic, [{"value": b"late"}])

        t = threading.Thread(target=later)
        t.start()
        deadline = time.monotonic() + 30
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = c.poll(1.0)
        t.join()
        assert msg is not None, "record produced during the long poll was never delivered"
        assert msg.error() is None, msg.error()
        assert (msg.offset(), msg.value()) == (0, b"late")
    finally:
        c.close()


def test_raw_fetch_waits_then_answers_empty(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    with kproto.Conn.to(broker.bootstrap) as c:
        r = kproto.fetch(c, topic, 0, 0, max_wait_ms=300, min_bytes=1)
        assert r["error"] == 0 and r["high_watermark"] == 0 and r["records"] == b""


def test_raw_fetch_long_poll_is_woken_by_produce(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    result = {}

    def fetcher():
        with kproto.Conn.to(broker.bootstrap, timeout=60) as c:
            result["r"] = kproto.fetch(c, topic, 0, 0, max_wait_ms=20_000, min_bytes=1)

    t = threading.Thread(target=fetcher)
    t.start()
    time.sleep(0.5)
    produce_all(producer(broker.bootstrap), topic, [{"value": b"wake"}])
    t.join(60)
    assert not t.is_alive()
    r = result["r"]
    assert r["error"] == 0 and r["high_watermark"] == 1
    assert [b[0] for b in kproto.batch_headers(r["records"])] == [0]


def test_fetch_from_the_middle_of_a_batch(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    # one produce request, one batch of 10 records
    with kproto.Conn.to(broker.bootstrap) as c:
        batch = kproto.record_batch([(b"k%d" % i, b"v%d" % i, []) for i in range(10)])
        assert kproto.produce(c, topic, 0, batch) == (0, 0)
        # Kafka returns the whole batch holding the offset; the client skips earlier records
        r = kproto.fetch(c, topic, 0, 5)
        assert r["error"] == 0 and r["high_watermark"] == 10
        assert kproto.batch_headers(r["records"])[0] == (0, 9, 10)
    got = consume(broker.bootstrap, topic, [0], start=5)[0]
    assert [(r.offset, r.value) for r in got] == [(i, b"v%d" % i) for i in range(5, 10)]


def test_fetch_returns_first_batch_even_if_larger_than_max_bytes(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    with kproto.Conn.to(broker.bootstrap) as c:
        batch = kproto.record_batch([(None, b"x" * 50_000, [])])
        assert kproto.produce(c, topic, 0, batch)[0] == 0
        r = kproto.fetch(c, topic, 0, 0, max_bytes=1000, partition_max_bytes=1000)
        assert r["error"] == 0
        assert kproto.batch_headers(r["records"]) == [(0, 0, 1)], "KIP-74: the first batch is returned whole"


def test_out_of_range_offset_with_auto_offset_reset_error(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    produce_all(producer(broker.bootstrap), topic, [{"value": b"%d" % i} for i in range(10)])
    with kproto.Conn.to(broker.bootstrap) as c:
        assert kproto.fetch(c, topic, 0, 1000)["error"] == kproto.OFFSET_OUT_OF_RANGE
        assert kproto.fetch(c, topic, 0, 11)["error"] == kproto.OFFSET_OUT_OF_RANGE
        r = kproto.fetch(c, topic, 0, 10, max_wait_ms=100)  # the high watermark itself is fine
        assert r["error"] == 0 and r["records"] == b""
    c = consumer(broker.bootstrap, **{"auto.offset.reset": "error"})
    try:
        c.assign([TopicPartition(topic, 0, 1000)])
        deadline = time.monotonic() + 30
        err = None
        while err is None and time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is not None:
                assert m.error() is not None, f"got a record at offset {m.offset()} from offset 1000"
                err = m.error()
        assert err is not None, "no error for an out-of-range fetch offset"
        # librdkafka reports the broker's OFFSET_OUT_OF_RANGE as _AUTO_OFFSET_RESET when the
        # reset policy is "error"; its text names the broker error.
        assert err.code() in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET), err
        assert "out of range" in err.str().lower() or err.code() == KafkaError.OFFSET_OUT_OF_RANGE, err.str()
    finally:
        c.close()


def test_out_of_range_offset_with_auto_offset_reset_earliest(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    produce_all(producer(broker.bootstrap), topic, [{"value": b"%d" % i} for i in range(3)])
    c = consumer(broker.bootstrap, **{"auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition(topic, 0, 500)])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 3 and time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is not None:
                assert m.error() is None, m.error()
                got.append((m.offset(), m.value()))
    finally:
        c.close()
    assert got == [(0, b"0"), (1, b"1"), (2, b"2")]


def test_fetch_unknown_topic_partition(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    with kproto.Conn.to(broker.bootstrap) as c:
        assert kproto.fetch(c, topic, 9, 0)["error"] == kproto.UNKNOWN_TOPIC_OR_PARTITION


def test_consumer_reads_many_partitions_concurrently_with_producer(broker):
    topic = create_topic(broker.bootstrap, partitions=4)
    n = 2000
    sent = [{"partition": i % 4, "value": b"%d" % i} for i in range(n)]
    result = {}

    def reader():
        try:
            result["got"] = consume(broker.bootstrap, topic, range(4), until={p: n // 4 for p in range(4)},
                                    timeout=90)
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    t = threading.Thread(target=reader)
    t.start()
    p = producer(broker.bootstrap, **{"linger.ms": 2})
    for chunk in range(0, n, 100):
        produce_all(p, topic, sent[chunk:chunk + 100])
    t.join(120)
    if "error" in result:
        raise result["error"]
    for q in range(4):
        assert [r.value for r in result["got"][q]] == [s["value"] for s in sent if s["partition"] == q]
