"""confluent-kafka helpers shared by the end-to-end tests.

Every consumer here uses assign() with explicit partitions and offsets and
enable.auto.commit=false, so these tests check produce/fetch semantics independently of the
group coordinator (issue 4; groups have their own tests); group.id is set only because
confluent-kafka requires one.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TIMEOUT = 60.0


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


_ADMINS: dict = {}


def admin(bootstrap: str, **conf) -> AdminClient:
    """One AdminClient per bootstrap address, kept alive for the session: a client that is
    garbage-collected fails its pending futures (_DESTROY), so chained calls such as
    admin(b).create_topics(...)[name].result() need the client to outlive the expression."""
    key = (bootstrap, tuple(sorted(conf.items())))
    if key not in _ADMINS:
        _ADMINS[key] = AdminClient({"bootstrap.servers": bootstrap, **conf})
    return _ADMINS[key]


def create_topic(bootstrap: str, name: str | None = None, partitions: int = 1,
                 config: dict | None = None, owner: int | None = None) -> str:
    """A new topic; its partitions spread over the live brokers, or all on broker `owner`
    (a manual assignment: the first replica owns a partition, as Kafka's preferred leader)."""
    name = name or unique()
    if owner is None:
        topic = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})
    else:
        topic = NewTopic(name, partitions, replica_assignment=[[owner]] * partitions, config=config or {})
    fs = admin(bootstrap).create_topics([topic], operation_timeout=30, request_timeout=30)
    fs[name].result(TIMEOUT)
    return name


def producer(bootstrap: str, **conf) -> Producer:
    base = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 5,
        "enable.idempotence": False,
        "message.timeout.ms": 60000,
    }
    base.update(conf)
    return Producer(base)


@dataclass
class Delivered:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def produce_all(p: Producer, topic: str, records, timeout: float = TIMEOUT) -> list[Delivered]:
    """Produces `records` (dicts with partition/key/value/headers/timestamp, all optional)
    and flushes; raises if any delivery failed. Returns delivery reports in callback order."""
    delivered: list[Delivered] = []
    errors = []

    def cb(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered.append(Delivered(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value()))

    for r in records:
        kwargs = {k: v for k, v in r.items() if k in ("partition", "key", "value", "headers", "timestamp")}
        while True:
            try:
                p.produce(topic, on_delivery=cb, **kwargs)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    remaining = p.flush(timeout)
    assert remaining == 0, f"{remaining} records still undelivered after {timeout}s"
    assert not errors, f"{len(errors)} delivery errors, first: {errors[0]}"
    return delivered


def consumer(bootstrap: str, **conf) -> Consumer:
    base = {
        "bootstrap.servers": bootstrap,
        "group.id": unique("assign-only"),  # required by confluent-kafka; no group is joined
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",
        "fetch.wait.max.ms": 100,
    }
    base.update(conf)
    return Consumer(base)


@dataclass
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list | None
    timestamp: int


def watermarks(bootstrap: str, topic: str, partition: int) -> tuple[int, int]:
    c = consumer(bootstrap)
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
    finally:
        c.close()


def consume(bootstrap: str, topic: str, partitions, start: int | dict = 0, until: dict | None = None,
            timeout: float = TIMEOUT, **conf) -> dict[int, list[Record]]:
    """Reads each partition from `start` (an offset, or partition -> offset) up to `until`
    (partition -> end offset exclusive; default: the high watermark at call time).
    Returns partition -> records in the order received. Raises on any consumer error or
    when the deadline passes before every partition reached its end."""
    partitions = list(partitions)
    c = consumer(bootstrap, **conf)
    try:
        if until is None:
            until = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in partitions}
        starts = {p: (start[p] if isinstance(start, dict) else start) for p in partitions}
        out = {p: [] for p in partitions}
        pending = {p for p in partitions if starts[p] < until[p]}
        if pending:
            c.assign([TopicPartition(topic, p, starts[p]) for p in sorted(pending)])
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                got = {p: (out[p][-1].offset if out[p] else None) for p in sorted(pending)}
                raise AssertionError(f"consume timed out: partitions {sorted(pending)} last offsets {got}, "
                                     f"expected to reach {({p: until[p] for p in pending})}")
            for m in c.consume(1000, 1.0):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(m.error())
                p = m.partition()
                out[p].append(Record(p, m.offset(), m.key(), m.value(), m.headers(), m.timestamp()[1]))
                if m.offset() + 1 >= until[p]:
                    pending.discard(p)
        return out
    finally:
        c.close()


def assert_contiguous(records: list[Record], start: int = 0):
    offsets = [r.offset for r in records]
    assert offsets == list(range(start, start + len(records))), \
        f"offsets not contiguous from {start}: first {offsets[:5]} ... last {offsets[-5:]}"


def read_to_end(bootstrap: str, topic: str, partitions, isolation: str = "read_committed",
                timeout: float = TIMEOUT) -> dict[int, list[Record]]:
    """Every record of each partition from offset 0 to its end as `isolation` sees it (the
    last stable offset under read_committed): reads until librdkafka reports the end of
    every partition. Unlike consume(), needs no end offset up front, so it stops correctly
    when a partition ends in transaction markers (control records, never returned)."""
    partitions = list(partitions)
    c = consumer(bootstrap, **{"isolation.level": isolation, "enable.partition.eof": True})
    try:
        c.assign([TopicPartition(topic, p, 0) for p in partitions])
        out = {p: [] for p in partitions}
        pending = set(partitions)
        deadline = time.monotonic() + timeout
        while pending:
            assert time.monotonic() < deadline, f"read_to_end timed out: partitions {sorted(pending)} not at the end"
            for m in c.consume(1000, 1.0):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition())
                        continue
                    raise KafkaException(m.error())
                out[m.partition()].append(Record(m.partition(), m.offset(), m.key(), m.value(), m.headers(),
                                                 m.timestamp()[1]))
        return out
    finally:
        c.close()
