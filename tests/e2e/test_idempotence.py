"""Idempotent producers (librdkafka's `enable.idempotence=true`, the Java client's default):
retries after a broker crash are deduplicated, so every record is written exactly once, in
order."""

from clients import consume, create_topic, producer, produce_all
from load_producer import read_acked, verify
from test_durability import finish_load, read_back, start_load, wait_acked


def test_an_idempotent_producer_writes_every_record_exactly_once_across_kill9(broker, tmp_path):
    partitions, count = 4, 40_000
    topic = create_topic(broker.bootstrap, partitions=partitions)
    proc, acked_file = start_load(broker.bootstrap, topic, tmp_path, count, partitions,
                                  rate=10_000, idempotent=True)
    try:
        wait_acked(proc, acked_file, 5_000)
        assert proc.poll() is None, "the producer must still be running when the broker is killed"
        broker.kill9()
        broker.restart()
        summary = finish_load(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    # With retries until message.timeout.ms nothing fails, and deduplication means the
    # batches in flight at the crash, resent after it, are not written twice.
    assert summary["failed"] == 0, summary
    assert summary["acked"] == count, summary
    figures = verify(read_acked(acked_file), read_back(broker.bootstrap, topic, partitions))
    print("figures:", figures, "producer:", summary)
    assert figures["read"] == count and figures["duplicates"] == 0


def test_an_idempotent_producer_keeps_its_sequence_across_a_clean_restart(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    p = producer(broker.bootstrap, **{"enable.idempotence": True})
    produce_all(p, topic, [{"value": b"a%d" % i} for i in range(100)])
    broker.restart()
    # Same producer, same producer id: its next sequence must be accepted, not refused as
    # out of order by a broker that forgot it.
    produce_all(p, topic, [{"value": b"b%d" % i} for i in range(100)])
    got = consume(broker.bootstrap, topic, [0])[0]
    assert [r.value for r in got] == [b"a%d" % i for i in range(100)] + [b"b%d" % i for i in range(100)]
