"""Log compaction (cleanup.policy=compact) with real clients: the cleaner keeps the latest value
per key at its original offset (tombstones within delete.retention.ms included), the result
survives a broker restart, and keyless records are rejected on compacted topics."""

import time

from confluent_kafka import KafkaError

from clients import consume, create_topic, produce_all, producer

# A short cleaner interval via the SHALE_* override of log.cleaner.backoff.ms.
CLEANER_ENV = {"SHALE_LOG_CLEANER_BACKOFF_MS": "200"}
KEYS = [f"k{i}".encode() for i in range(10)]
ROUNDS = 5


def read_partition(bootstrap, topic):
    return [(r.offset, r.key, r.value) for r in consume(bootstrap, topic, [0])[0]]


def wait_compacted(bootstrap, topic, expected, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        got = read_partition(bootstrap, topic)
        if got == expected:
            return got
        assert time.monotonic() < deadline, f"not compacted after {timeout}s: {got[:12]} ..."
        time.sleep(0.5)


def test_compacted_topic_keeps_last_value_per_key_across_restart(shale_factory):
    broker = shale_factory(env=CLEANER_ENV)
    # A low dirty ratio so the small second round of updates is cleaned too.
    topic = create_topic(broker.bootstrap,
                         config={"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01"})
    p = producer(broker.bootstrap)
    latest = {}
    # One flush per round: every round lands in its own WAL range.
    for rnd in range(ROUNDS):
        records = [{"partition": 0, "key": k, "value": f"{k.decode()}-v{rnd}".encode()} for k in KEYS]
        if rnd == ROUNDS - 1:
            # The last value of k9 is a tombstone (kept: delete.retention.ms is one day).
            records[-1]["value"] = None
        for d in produce_all(p, topic, records):
            latest[d.key] = (d.offset, d.key, d.value)
    # The active tail is never cleaned: one more record after everything else.
    tail = produce_all(p, topic, [{"partition": 0, "key": b"tail", "value": b"t"}])[0]
    total = ROUNDS * len(KEYS) + 1
    assert tail.offset == total - 1

    expected = sorted(latest.values()) + [(tail.offset, b"tail", b"t")]
    assert expected[-2] == (total - 2, b"k9", None)
    wait_compacted(broker.bootstrap, topic, expected)

    # Survives a restart (and the cleaner running again after it), offsets unchanged.
    broker.restart()
    assert read_partition(broker.bootstrap, topic) == expected
    time.sleep(1.0)
    assert read_partition(broker.bootstrap, topic) == expected

    # New values keep compacting after the restart.
    produce_all(p, topic, [{"partition": 0, "key": b"k0", "value": b"k0-new"}])
    produce_all(p, topic, [{"partition": 0, "key": b"tail2", "value": b"t2"}])
    expected = [r for r in expected if r[1] != b"k0"] + [(total, b"k0", b"k0-new"), (total + 1, b"tail2", b"t2")]
    wait_compacted(broker.bootstrap, topic, expected)
    p.flush(10)


def test_keyless_records_rejected_on_compacted_topic(broker):
    topic = create_topic(broker.bootstrap, config={"cleanup.policy": "compact,delete"})
    p = producer(broker.bootstrap, retries=0)
    errors = []

    def cb(err, msg):
        errors.append(err)

    p.produce(topic, value=b"no key", partition=0, on_delivery=cb)
    assert p.flush(30) == 0
    assert len(errors) == 1 and errors[0] is not None
    assert errors[0].code() == KafkaError.INVALID_RECORD, errors[0]
    # Keyed records are fine, and nothing of the rejected one was written.
    d = produce_all(p, topic, [{"partition": 0, "key": b"k", "value": b"v"}])
    assert d[0].offset == 0
