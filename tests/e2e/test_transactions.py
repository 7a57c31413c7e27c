"""Exactly-once read-process-write with confluent-kafka (librdkafka): a consumer in a group
reads the input, a transactional producer writes the transformed records and the consumer's
offsets in one transaction (send_offsets_to_transaction), commits, in a loop. The broker is
killed with -9 mid-transaction, twice. Whatever happens to a transaction, committed output
holds every input record exactly once, and nothing of an aborted transaction is ever
visible to read_committed."""

import collections
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from clients import create_topic, produce_all, producer, read_to_end, unique


class ReadProcessWrite:
    """The loop of an exactly-once application, with the error handling librdkafka asks for:
    retry what is retriable, abort what requires an abort, start over (a new producer with
    the same transactional.id fences the old one) on a fatal error. After an abort the
    consumer goes back to the group's committed offsets."""

    def __init__(self, bootstrap, src, dst, group, txn_id):
        self.bootstrap, self.src, self.dst, self.group, self.txn_id = bootstrap, src, dst, group, txn_id
        self.attempt = 0
        self.abandoned = []
        self.aborted_attempts: set[int] = set()
        self.committed_attempts: set[int] = set()
        self.producer = self._producer()
        self.consumer = self._consumer()

    def _producer(self):
        p = Producer({"bootstrap.servers": self.bootstrap, "transactional.id": self.txn_id,
                      "linger.ms": 5, "transaction.timeout.ms": 60000})
        p.init_transactions(60)
        return p

    def _consumer(self):
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group,
                      "isolation.level": "read_committed", "enable.auto.commit": False,
                      "auto.offset.reset": "earliest"})
        c.subscribe([self.src])
        return c

    def _rewind(self):
        """Back to the committed offsets: a new consumer in the same group."""
        self.consumer.close()
        self.consumer = self._consumer()

    def _retry(self, op, seconds=90):
        deadline = time.monotonic() + seconds
        while True:
            try:
                return op()
            except KafkaException as e:
                if e.args[0].retriable() and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise

    def start_over(self):
        """What the application does when it loses the broker mid-transaction: a new
        producer with the same transactional.id (InitProducerId fences the old one and
        aborts its open transaction) and a consumer back at the committed offsets. (With
        librdkafka 2.16 the old producer's next send_offsets_to_transaction after a broker
        restart can block past its timeout, so it is not used again.)"""
        self.abandoned.append(self.producer)
        self.producer.purge()
        self.producer = self._producer()
        self._rewind()

    def step(self, crash_before_flush=None, crash_before_commit=None) -> int:
        """One transaction over what one poll returns; the number of input records it
        committed (0 when it aborted or read nothing). A crash hook kills and restarts the
        broker at that point of the transaction, which the application then abandons."""
        msgs = [m for m in self.consumer.consume(200, 1.0) if not m.error()]
        if not msgs:
            return 0
        self.attempt += 1
        a = self.attempt
        try:
            self.producer.begin_transaction()
            for m in msgs:
                self.producer.produce(self.dst, key=m.key(), value=b"%s@%d" % (m.value(), a))
            if crash_before_flush:
                crash_before_flush()
                self.aborted_attempts.add(a)
                self.start_over()
                return 0
            assert self.producer.flush(60) == 0, "records undelivered after 60 s"
            self._retry(lambda: self.producer.send_offsets_to_transaction(
                self.consumer.position(self.consumer.assignment()),
                self.consumer.consumer_group_metadata(), 30))
            if crash_before_commit:
                crash_before_commit()
                self.aborted_attempts.add(a)
                self.start_over()
                return 0
            self._retry(lambda: self.producer.commit_transaction(30))
        except KafkaException as e:
            err = e.args[0]
            print(f"attempt {a}: {err}")
            self.aborted_attempts.add(a)
            if err.txn_requires_abort():
                self._retry(lambda: self.producer.abort_transaction(60))
            else:  # fatal, or retried in vain: start over with a new producer, which
                # fences this one and aborts its transaction
                self.producer = self._producer()
            self._rewind()
            return 0
        self.committed_attempts.add(a)
        return len(msgs)

    def close(self):
        self.consumer.close()


def test_read_process_write_commits_every_input_record_exactly_once_across_kill9_mid_transaction(broker):
    src = create_topic(broker.bootstrap, unique("rpw-in"), partitions=3)
    dst = create_topic(broker.bootstrap, unique("rpw-out"), partitions=3)
    n = 3000
    produce_all(producer(broker.bootstrap), src,
                [{"partition": i % 3, "key": b"%d" % i, "value": b"in-%d" % i} for i in range(n)])

    def crash():
        broker.kill9()
        broker.restart()

    app = ReadProcessWrite(broker.bootstrap, src, dst, unique("rpw-group"), unique("rpw-txn"))
    done, crashes = 0, []
    deadline = time.monotonic() + 200
    try:
        while done < n:
            assert time.monotonic() < deadline, f"only {done} of {n} input records committed"
            hooks = {}
            if done >= n // 3 and len(crashes) == 0:
                hooks = {"crash_before_flush": lambda: crashes.append(crash())}  # records in flight
            elif done >= 2 * n // 3 and len(crashes) == 1:
                hooks = {"crash_before_commit": lambda: crashes.append(crash())}  # offsets sent, no EndTxn
            done += app.step(**hooks)
    finally:
        app.close()
    assert len(crashes) == 2 and done == n
    print(f"attempts {app.attempt}, aborted {sorted(app.aborted_attempts)}")

    got = read_to_end(broker.bootstrap, dst, range(3), isolation="read_committed")
    values = [r.value.decode() for recs in got.values() for r in recs]
    inputs = collections.Counter(v.split("@")[0] for v in values)
    assert sorted(inputs) == sorted(f"in-{i}" for i in range(n)), "an input record is missing from the output"
    assert max(inputs.values()) == 1, f"written twice: {[v for v, c in inputs.items() if c > 1][:5]}"
    visible_aborted = [v for v in values if int(v.split("@")[1]) in app.aborted_attempts]
    assert not visible_aborted, f"records of aborted transactions visible to read_committed: {visible_aborted[:5]}"

    # The group's committed offsets are the end of the input: each committed with its output.
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": app.group})
    try:
        committed = c.committed([TopicPartition(src, p) for p in range(3)], timeout=30)
    finally:
        c.close()
    assert [tp.offset for tp in committed] == [n // 3] * 3
