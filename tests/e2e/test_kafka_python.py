"""kafka-python 3.0 (PyPI, pure Python) with its defaults: since 3.0 its producer is
idempotent with acks=all, as the Java producer is. Each test kills the broker with -9 while
the client works; read back with confluent-kafka."""

import collections
import time

from kafka import KafkaProducer

from clients import create_topic, read_to_end, unique


def test_kafka_python_default_producer_delivers_every_record_exactly_once_in_order_across_a_kill9(broker):
    topic = create_topic(broker.bootstrap, partitions=3)
    n = 3000
    p = KafkaProducer(bootstrap_servers=broker.bootstrap)
    assert p.config["enable_idempotence"] is True and p.config["acks"] == -1, "kafka-python 3.0's defaults"
    acked, errors = [], []
    futures = []
    try:
        for i in range(n):
            f = p.send(topic, key=b"k%d" % i, value=b"v%d" % i)
            f.add_callback(lambda md: acked.append(md)).add_errback(errors.append)
            futures.append(f)
            if i == 1500:
                deadline = time.monotonic() + 60
                while len(acked) < 500:
                    assert time.monotonic() < deadline, f"only {len(acked)} acknowledgements"
                    time.sleep(0.05)
                broker.kill9()
                broker.restart()
            time.sleep(0.001)
        p.flush(120)
    finally:
        p.close(10)
    assert not errors, f"{len(errors)} delivery errors, first: {errors[0]!r}"
    assert all(f.succeeded() for f in futures) and len(acked) == n

    got = read_to_end(broker.bootstrap, topic, range(3), isolation="read_uncommitted")
    values = [r.value for recs in got.values() for r in recs]
    dupes = [v for v, c in collections.Counter(values).items() if c > 1]
    assert not dupes, f"{len(dupes)} records written twice, e.g. {dupes[:5]}"
    assert sorted(values) == sorted(b"v%d" % i for i in range(n))
    for part, recs in got.items():
        assert [r.offset for r in recs] == list(range(len(recs))), f"partition {part}: offsets not contiguous"
        idx = [int(r.value[1:]) for r in recs]
        assert idx == sorted(idx), f"partition {part}: records out of send order"
    # Every record is at the offset the producer was told.
    told = {(md.partition, md.offset) for md in acked}
    assert told == {(part, r.offset) for part, recs in got.items() for r in recs}


def test_kafka_python_transactions_commit_and_abort_survive_a_kill9(broker):
    topic = create_topic(broker.bootstrap, partitions=2)
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=unique("kp-txn"))
    try:
        p.init_transactions()
        for outcome in ("commit", "abort", "commit2"):
            p.begin_transaction()
            for i in range(10):
                p.send(topic, key=b"k%d" % i, value=f"{outcome}-{i}".encode())
            p.flush()
            if outcome == "abort":
                p.abort_transaction()
            else:
                p.commit_transaction()
    finally:
        p.close(10)
    broker.kill9()
    broker.restart()
    committed = read_to_end(broker.bootstrap, topic, range(2), isolation="read_committed")
    values = sorted(r.value.decode() for recs in committed.values() for r in recs)
    assert values == sorted(f"{o}-{i}" for o in ("commit", "commit2") for i in range(10))
    everything = read_to_end(broker.bootstrap, topic, range(2), isolation="read_uncommitted")
    assert sum(len(v) for v in everything.values()) == 30
