"""The client workload of the chaos harness (confluent_kafka), recording a history.

- `Producer`s: idempotent, acks=all, each writing unique values `p{id}-{counter}` round-robin
  over every partition at a steady rate, recording for every value when it was sent and its
  delivery report (partition, offset, time) or failure.
- `AssignedConsumer`: `assign`s every partition from offset 0 and never seeks; records every
  (partition, offset, value) it sees.
- `GroupConsumer`s: `subscribe` in one group, auto commit off, synchronous commits of their
  positions about every second (and on revoke); record every record seen, every commit the
  broker acknowledged, and every assignment / revocation.
- `final_read`: a fresh consumer reading every partition from 0 up to its high watermark.
- `TxnProcessor`s: the exactly-once read-process-write loop (confluent-kafka's canonical
  one), two of them in one group of their own sharing an input topic: a read_committed
  consumer (auto commit off) and a transactional producer with a fixed transactional.id per
  processor; poll a batch (<= 100 records or 200 ms), begin_transaction, produce one output
  record per input record (key: `topic/partition@offset` of the input, value: `T:` + input
  value + `|processor.attempt`) spread over the output topic's partitions,
  send_offsets_to_transaction(position of the assignment, group metadata),
  commit_transaction. Errors as confluent-kafka documents them: retriable -> retry the
  call; txn_requires_abort -> abort_transaction and rewind the consumer to the group's
  committed offsets; fatal (fenced, ...) -> a new producer with the same transactional.id
  (init_transactions fences the old one) and rewind. Every attempt is recorded (which
  input offsets, the offsets sent, committed / aborted / unknown) for the checker.
- `read_to_end`: every partition of a topic from 0 to its end under an isolation level
  (read_committed: up to the last stable offset), by partition EOF (a partition may end in
  control records).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer as KProducer,
                             TopicPartition)

Part = tuple  # (topic, partition)

# librdkafka's own log lines (connection refused, ...) go to a file, not the terminal.
CLIENT_LOG = logging.getLogger("chaos.clients")
CLIENT_LOG.propagate = False


def log_clients_to(path):
    for h in list(CLIENT_LOG.handlers):
        CLIENT_LOG.removeHandler(h)
        h.close()
    h = logging.FileHandler(path)
    h.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    CLIENT_LOG.addHandler(h)
    CLIENT_LOG.setLevel(logging.DEBUG)


def _base(bootstrap: str) -> dict:
    # librdkafka backs off reconnecting to a broker up to 10 s by default: after a node was
    # down a while, the client would take that long to notice it is back, and the figures
    # would measure the client's backoff rather than the broker's failover.
    conf = {"bootstrap.servers": bootstrap, "reconnect.backoff.max.ms": 1000}
    # confluent-kafka hands a Python logger librdkafka's lines only from poll(): nothing is
    # logged while a call such as send_offsets_to_transaction blocks. CHAOS_CLIENT_STDERR=1
    # leaves librdkafka to print them itself, as they happen, on stderr.
    if not os.environ.get("CHAOS_CLIENT_STDERR"):
        conf["logger"] = CLIENT_LOG
    return conf


class ClientHang(Exception):
    """A librdkafka call that did not return within its own timeout plus a grace period."""

    def __str__(self):
        return f"{self.args[0]} did not return within its timeout (librdkafka #5456/#5511)"


class Producer(threading.Thread):
    def __init__(self, pid: int, bootstrap: str, parts: list[Part], rate: float, t0: float,
                 debug: str = ""):
        super().__init__(name=f"producer-{pid}", daemon=True)
        self.pid = pid
        self.bootstrap = bootstrap
        self.parts = parts
        self.rate = rate
        self.t0 = t0
        self.lock = threading.Lock()
        # value -> [send_t, ack_t | None, topic, partition, offset | None, error | None]
        self.history: dict[str, list] = {}
        self.fatal: list[tuple[float, str]] = []
        self.produce_errors: list[tuple[float, str]] = []
        self.stop_producing = threading.Event()
        self.done = threading.Event()
        self.pending_after_flush = 0
        self.flush_timeout = 30.0
        self.debug = debug

    def now(self):
        return time.monotonic() - self.t0

    def _config(self):
        return {**_base(self.bootstrap), "acks": "all", "enable.idempotence": True,
                "linger.ms": 5, "message.timeout.ms": 120000, "client.id": f"chaos-producer-{self.pid}",
                "error_cb": self._on_error, **({"debug": self.debug} if self.debug else {})}

    def _on_error(self, err):
        if err.fatal():
            with self.lock:
                self.fatal.append((self.now(), str(err)))

    def _on_delivery(self, err, msg):
        v = msg.value().decode()
        t = self.now()
        with self.lock:
            h = self.history.get(v)
            if h is None:
                return
            h[1] = t
            if err is not None:
                h[5] = str(err)
                if err.fatal():
                    self.fatal.append((t, str(err)))
            else:
                h[3] = msg.partition()
                h[4] = msg.offset()

    def run(self):
        p = KProducer(self._config())
        i = 0
        interval = 1.0 / self.rate
        next_t = time.monotonic()
        while not self.stop_producing.is_set():
            now = time.monotonic()
            if now < next_t:
                p.poll(min(next_t - now, 0.05))
                continue
            next_t += interval
            if next_t < now - 1.0:  # fell behind (e.g. a full queue): do not burst
                next_t = now
            topic, part = self.parts[i % len(self.parts)]
            v = f"p{self.pid}-{i:08d}"
            with self.lock:
                self.history[v] = [self.now(), None, topic, part, None, None]
            try:
                p.produce(topic, value=v.encode(), partition=part, on_delivery=self._on_delivery)
                i += 1
            except BufferError:
                with self.lock:
                    del self.history[v]
                p.poll(0.1)
                continue
            except KafkaException as e:
                with self.lock:
                    del self.history[v]
                    self.produce_errors.append((self.now(), str(e)))
                    fatal = e.args and getattr(e.args[0], "fatal", lambda: False)()
                if fatal:
                    # An idempotent producer with a fatal error can do nothing more: a
                    # fresh one (a new producer id) carries on, as an application would.
                    p.flush(5)
                    p = KProducer(self._config())
                time.sleep(0.05)
                continue
            p.poll(0)
        self.pending_after_flush = p.flush(self.flush_timeout)
        self.done.set()

    # -- views -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, list]:
        with self.lock:
            return {k: list(v) for k, v in self.history.items()}

    def acked(self) -> dict[str, list]:
        with self.lock:
            return {k: list(v) for k, v in self.history.items() if v[1] is not None and v[5] is None}

    def acks_of_sends_after(self, t: float) -> int:
        with self.lock:
            return sum(1 for h in self.history.values() if h[0] > t and h[1] is not None and h[5] is None)


class _ConsumerThread(threading.Thread):
    def __init__(self, name: str, t0: float):
        super().__init__(name=name, daemon=True)
        self.t0 = t0
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        # (t, topic, partition, offset, value)
        self.seen: list[tuple] = []
        self.errors: list[tuple[float, str]] = []

    def now(self):
        return time.monotonic() - self.t0

    def _record(self, msgs):
        t = self.now()
        out = []
        for m in msgs:
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    self.errors.append((t, str(m.error())))
                continue
            out.append((t, m.topic(), m.partition(), m.offset(), m.value().decode(errors="replace")))
        with self.lock:
            self.seen.extend(out)

    def seen_values(self) -> set[str]:
        with self.lock:
            return {s[4] for s in self.seen}


class AssignedConsumer(_ConsumerThread):
    def __init__(self, bootstrap: str, parts: list[Part], t0: float):
        super().__init__("assigned-consumer", t0)
        self.c = Consumer({**_base(bootstrap), "group.id": "chaos-assigned-unused",
                           "enable.auto.commit": False, "auto.offset.reset": "earliest",
                           "client.id": "chaos-assigned", "error_cb": self._on_error})
        self.c.assign([TopicPartition(t, p, 0) for t, p in parts])

    def _on_error(self, err):
        self.errors.append((self.now(), str(err)))

    def run(self):
        try:
            while not self.stop_event.is_set():
                self._record(self.c.consume(500, 0.2))
        finally:
            self.c.close()


class GroupConsumer(_ConsumerThread):
    def __init__(self, idx: int, bootstrap: str, group: str, topics: list[str], t0: float):
        super().__init__(f"group-consumer-{idx}", t0)
        self.idx = idx
        self.commits: list[tuple] = []  # (t, topic, partition, offset) acknowledged by the broker
        self.commit_errors: list[tuple[float, str]] = []
        self.events: list[tuple] = []  # (t, "assign"|"revoke"|"lost", [(topic, partition)])
        self.c = Consumer({**_base(bootstrap), "group.id": group,
                           "enable.auto.commit": False, "auto.offset.reset": "earliest",
                           "session.timeout.ms": 10000, "heartbeat.interval.ms": 1000,
                           "client.id": f"chaos-group-{idx}", "error_cb": self._on_error})
        self.c.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                         on_lost=self._on_lost)

    def _on_error(self, err):
        self.errors.append((self.now(), str(err)))

    def _on_assign(self, c, parts):
        self.events.append((self.now(), "assign", [(p.topic, p.partition) for p in parts]))

    def _on_revoke(self, c, parts):
        self.events.append((self.now(), "revoke", [(p.topic, p.partition) for p in parts]))
        self._commit(c)

    def _on_lost(self, c, parts):
        self.events.append((self.now(), "lost", [(p.topic, p.partition) for p in parts]))

    def _commit(self, c):
        try:
            res = c.commit(asynchronous=False)
        except KafkaException as e:
            if e.args and e.args[0].code() != KafkaError._NO_OFFSET:
                self.commit_errors.append((self.now(), str(e)))
            return
        t = self.now()
        for tp in res or []:
            if tp.error is None and tp.offset >= 0:
                self.commits.append((t, tp.topic, tp.partition, tp.offset))
            elif tp.error is not None:
                self.commit_errors.append((t, str(tp.error)))

    def run(self):
        last_commit = time.monotonic()
        try:
            while not self.stop_event.is_set():
                self._record(self.c.consume(500, 0.2))
                if time.monotonic() - last_commit >= 1.0:
                    self._commit(self.c)
                    last_commit = time.monotonic()
            self._commit(self.c)
        finally:
            try:
                self.c.close()
            except Exception as e:
                self.errors.append((self.now(), f"close: {e}"))


class OwnershipSampler(threading.Thread):
    """Which node each partition's Metadata names as leader, about every `every` seconds:
    records the changes, [(t, topic, partition, leader)] (-1: no leader / unknown)."""

    def __init__(self, bootstrap: str, topics: list[str], t0: float, every: float = 1.0):
        super().__init__(name="ownership", daemon=True)
        from confluent_kafka.admin import AdminClient
        self.admin = AdminClient({**_base(bootstrap)})
        self.topics, self.t0, self.every = topics, t0, every
        self.changes: list[tuple] = []
        self.current: dict[Part, int] = {}
        self.stop_event = threading.Event()

    def run(self):
        while not self.stop_event.wait(self.every):
            try:
                md = self.admin.list_topics(timeout=2)
            except Exception:
                continue
            t = time.monotonic() - self.t0
            for name in self.topics:
                tm = md.topics.get(name)
                if tm is None:
                    continue
                for p in tm.partitions.values():
                    k = (name, p.id)
                    if self.current.get(k) != p.leader:
                        self.current[k] = p.leader
                        self.changes.append((round(t, 2), name, p.id, p.leader))

    def owners_between(self, part: Part, t_from: float, t_to: float) -> list[tuple]:
        """The leader changes of `part` in [t_from, t_to], with the leader at t_from first."""
        before = [c for c in self.changes if (c[1], c[2]) == part and c[0] <= t_from]
        during = [c for c in self.changes if (c[1], c[2]) == part and t_from < c[0] <= t_to]
        return ([(before[-1][0], before[-1][3])] if before else []) + [(c[0], c[3]) for c in during]


def committed_offsets(bootstrap: str, group: str, parts: list[Part]) -> dict[Part, int]:
    """The group's committed offsets as the broker reports them (without joining)."""
    c = Consumer({**_base(bootstrap), "group.id": group, "enable.auto.commit": False})
    try:
        res = c.committed([TopicPartition(t, p) for t, p in parts], timeout=20)
        return {(tp.topic, tp.partition): tp.offset for tp in res if tp.error is None}
    finally:
        c.close()


def final_read(bootstrap: str, parts: list[Part], timeout: float = 90):
    """Every partition from offset 0 up to its high watermark: ({part: [(offset, value)]},
    {part: high watermark}, [parts not read up to their watermark], errors)."""
    c = Consumer({**_base(bootstrap), "group.id": "chaos-final-read-unused",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "enable.partition.eof": False, "fetch.wait.max.ms": 100})
    out = {p: [] for p in parts}
    errors = []
    try:
        high = {}
        for t, p in parts:
            for attempt in range(5):
                try:
                    lo, hi = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                    high[(t, p)] = hi
                    break
                except KafkaException as e:
                    errors.append(str(e))
                    time.sleep(1)
        c.assign([TopicPartition(t, p, 0) for t, p in parts])
        pos = {p: 0 for p in parts}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(pos[p] >= high.get(p, 0) for p in parts if p in high):
                break
            for m in c.consume(1000, 0.5):
                if m.error():
                    errors.append(str(m.error()))
                    continue
                k = (m.topic(), m.partition())
                out[k].append((m.offset(), m.value().decode(errors="replace")))
                pos[k] = max(pos[k], m.offset() + 1)
        short = [p for p in parts if p not in high or pos[p] < high[p]]
        return out, high, short, errors
    finally:
        c.close()


class TxnProcessor(threading.Thread):
    """One exactly-once read-process-write application (see the module docstring). The
    processors of a run share `group` (so they rebalance against each other) and each has
    its own fixed transactional.id. librdkafka requires message.timeout.ms <=
    transaction.timeout.ms: both are `txn_timeout_ms`."""

    BATCH = 100
    BATCH_WAIT = 0.2
    CALL_TIMEOUT = 30.0   # s, the timeout given to each transactional call
    RETRY_FOR = 60.0      # s of retrying one retriable call before treating it as failed
    HANG_GRACE = 15.0     # s past CALL_TIMEOUT before a call counts as hung (see _bounded)

    def __init__(self, idx: int, bootstrap: str, group: str, src_topics: list[str], out_topic: str,
                 out_partitions: int, t0: float, txn_timeout_ms: int = 10000, debug: str = ""):
        super().__init__(name=f"txn-processor-{idx}", daemon=True)
        self.idx, self.bootstrap, self.group = idx, bootstrap, group
        self.src_topics, self.out_topic, self.out_partitions = src_topics, out_topic, out_partitions
        self.t0, self.txn_timeout_ms, self.debug = t0, txn_timeout_ms, debug
        self.txn_id = f"chaos-txn-{idx}"
        self.stop_event = threading.Event()
        # Every transaction attempt: {"n", "t", "t_end", "parts": {"topic/p": [first, last, count]},
        # "offsets": {"topic/p": offset sent}, "gap": {...}, "outcome": "committed" | "aborted" |
        # "fenced" (a fatal error before commit_transaction was called: the new producer's
        # init_transactions aborts it) | "unknown" (a fatal error after commit_transaction was
        # called: the broker may have committed it), "commit_called", "error": str}
        self.attempts: list[dict] = []
        self.committed: dict[Part, int] = {}  # offsets of the last transaction committed, per partition
        self.commit_times: list[float] = []
        self.commit_latency: list[float] = []
        self.counts = {"commits": 0, "aborts": 0, "retries": 0, "fatal": 0, "rewinds": 0,
                       "consumer_recreations": 0, "abort_failures": 0, "records_committed": 0,
                       "client_hangs": 0}
        self.errors: list[tuple[float, str, str]] = []  # (t, call, error)
        self.events: list[tuple] = []  # (t, "assign"|"revoke"|"lost", [parts])
        self.op: tuple[str, float] | None = None  # the call in progress, since t
        self.next: dict[Part, int | None] = {}  # where the consumer should continue, when known
        self.abandoned = []  # producers replaced after a fatal error (not destroyed: that can block)
        self.p = None
        self.c = None
        self.failure = None  # a harness exception that ended the thread

    def now(self):
        return time.monotonic() - self.t0

    # -- clients ---------------------------------------------------------------------

    def _on_error(self, err):
        self.errors.append((self.now(), "error_cb", str(err)))

    def _new_producer(self):
        while True:
            p = KProducer({**_base(self.bootstrap), "transactional.id": self.txn_id,
                           "transaction.timeout.ms": self.txn_timeout_ms,
                           "message.timeout.ms": self.txn_timeout_ms, "linger.ms": 5,
                           "client.id": f"chaos-txn-producer-{self.idx}", "error_cb": self._on_error,
                           **({"debug": self.debug} if self.debug else {})})
            while True:
                try:
                    self._call("init_transactions", lambda: p.init_transactions(self.CALL_TIMEOUT))
                    return p
                except ClientHang as e:
                    self._hung(str(e))
                    self.abandoned.append(p)
                    break  # a fresh producer
                except KafkaException as e:
                    err = e.args[0]
                    self.errors.append((self.now(), "init_transactions", str(err)))
                    if self.stop_event.is_set():
                        self.abandoned.append(p)
                        return None
                    if not err.fatal() and not err.txn_requires_abort():
                        time.sleep(0.5)
                        continue  # e.g. timed out in vain: again on this producer
                    self.abandoned.append(p)
                    time.sleep(0.5)
                    break  # a fresh producer

    def _new_consumer(self):
        c = Consumer({**_base(self.bootstrap), "group.id": self.group,
                      "isolation.level": "read_committed", "enable.auto.commit": False,
                      "auto.offset.reset": "earliest", "session.timeout.ms": 10000,
                      "heartbeat.interval.ms": 1000, "client.id": f"chaos-txn-consumer-{self.idx}",
                      "error_cb": self._on_error})
        c.subscribe(self.src_topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                    on_lost=self._on_lost)
        return c

    def _on_assign(self, c, parts):
        self.events.append((self.now(), "assign", [(p.topic, p.partition) for p in parts]))
        for p in parts:
            self.next[(p.topic, p.partition)] = None

    def _on_revoke(self, c, parts):
        self.events.append((self.now(), "revoke", [(p.topic, p.partition) for p in parts]))
        for p in parts:
            self.next.pop((p.topic, p.partition), None)

    def _on_lost(self, c, parts):
        self.events.append((self.now(), "lost", [(p.topic, p.partition) for p in parts]))
        for p in parts:
            self.next.pop((p.topic, p.partition), None)

    # -- calls -----------------------------------------------------------------------

    def _bounded(self, name, fn):
        """fn() in a thread of its own, given CALL_TIMEOUT + HANG_GRACE s to return: librdkafka's
        send_offsets_to_transaction can block past its timeout, for good, when the group
        coordinator it cached left the cluster's metadata (librdkafka issues #5456, #5511;
        Apache Kafka drops fenced brokers from Metadata as Shale does). Raises ClientHang then,
        as an application's watchdog would, so the processor replaces that producer (its
        transactional.id fences the stuck one) instead of hanging the run."""
        out = {}

        def target():
            try:
                out["value"] = fn()
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                out["error"] = e

        t = threading.Thread(target=target, name=f"{self.name}-{name}", daemon=True)
        t.start()
        t.join(self.CALL_TIMEOUT + self.HANG_GRACE)
        if t.is_alive():
            raise ClientHang(name)
        if "error" in out:
            raise out["error"]
        return out.get("value")

    def _call(self, name, fn):
        """fn(), retried while it fails retriably (up to RETRY_FOR s; less once stopping)."""
        start = time.monotonic()
        while True:
            self.op = (name, self.now())
            try:
                return self._bounded(name, fn)
            except KafkaException as e:
                err = e.args[0]
                if not isinstance(err, KafkaError) or err.fatal() or err.txn_requires_abort() \
                        or not err.retriable():
                    raise
                spent = time.monotonic() - start
                if spent > self.RETRY_FOR or (self.stop_event.is_set() and spent > 10):
                    raise
                self.counts["retries"] += 1
                self.errors.append((self.now(), f"{name} (retried)", str(err)))
                time.sleep(0.1)
            finally:
                self.op = None

    def _rewind(self):
        """Back to the group's committed offsets of the assignment (seek), else a new consumer."""
        self.counts["rewinds"] += 1
        try:
            asg = self.c.assignment()
            if asg:
                com = self.c.committed(asg, timeout=15)
                for tp in com:
                    if tp.error is not None:
                        raise KafkaException(tp.error)
                for tp in com:
                    off = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                    self.c.seek(TopicPartition(tp.topic, tp.partition, off))
                    self.next[(tp.topic, tp.partition)] = max(tp.offset, 0)
        except KafkaException as e:
            self.errors.append((self.now(), "rewind", str(e)))
            self._recreate_consumer()

    def _recreate_consumer(self):
        self.counts["consumer_recreations"] += 1
        try:
            self.c.close()
        except Exception as e:
            self.errors.append((self.now(), "consumer close", str(e)))
        self.next = {}
        self.c = self._new_consumer()

    def _hung(self, what):
        self.counts["client_hangs"] += 1
        self.errors.append((self.now(), "client hang", what))

    def _start_over(self, att, failed_call):
        """A fatal error: a new producer with the same transactional.id (fences this one,
        aborts its open transaction), and the consumer back at the committed offsets."""
        self.counts["fatal"] += 1
        att["outcome"] = "unknown" if att.get("commit_called") else "fenced"
        if failed_call != "hung":  # a hung handle is left alone: any call on it may block too
            try:
                self.p.purge()
            except Exception:
                pass
        self.abandoned.append(self.p)
        self.p = self._new_producer()

    # -- the loop --------------------------------------------------------------------

    def run(self):
        try:
            self.p = self._new_producer()
            self.c = self._new_consumer()
            while not self.stop_event.is_set() and self.p is not None:
                msgs = self.c.consume(self.BATCH, self.BATCH_WAIT)
                data = []
                for m in msgs:
                    if m.error():
                        if m.error().code() != KafkaError._PARTITION_EOF:
                            self.errors.append((self.now(), "consume", str(m.error())))
                        continue
                    data.append(m)
                if data:
                    self._transaction(data)
        except Exception:
            import traceback
            self.failure = traceback.format_exc()
        finally:
            try:
                if self.c is not None:
                    self.c.close()
            except Exception as e:
                self.errors.append((self.now(), "consumer close", str(e)))

    def _transaction(self, data):
        att = {"n": len(self.attempts) + 1, "t": round(self.now(), 3), "parts": {}, "offsets": {},
               "gap": {}, "outcome": None}
        self.attempts.append(att)
        for m in data:
            k = f"{m.topic()}/{m.partition()}"
            r = att["parts"].get(k)
            if r is None:
                att["parts"][k] = [m.offset(), m.offset(), 1]
                exp = self.next.get((m.topic(), m.partition()))
                if exp is not None and exp != m.offset():
                    att["gap"][k] = [exp, m.offset()]
            else:
                r[0], r[1], r[2] = min(r[0], m.offset()), max(r[1], m.offset()), r[2] + 1
        call = "begin_transaction"
        started = time.monotonic()
        try:
            self._call(call, self.p.begin_transaction)
            call = "produce"
            for m in data:
                key = f"{m.topic()}/{m.partition()}@{m.offset()}".encode()
                value = b"T:" + m.value() + b"|%d.%d" % (self.idx, att["n"])
                part = (m.offset() + m.partition()) % self.out_partitions
                while True:
                    try:
                        self.p.produce(self.out_topic, key=key, value=value, partition=part)
                        break
                    except BufferError:
                        self.p.poll(0.1)
            self.p.poll(0)
            call = "send_offsets_to_transaction"
            pos = [tp for tp in self.c.position(self.c.assignment()) if tp.offset >= 0]
            att["offsets"] = {f"{tp.topic}/{tp.partition}": tp.offset for tp in pos}
            for k, (first, last, n) in att["parts"].items():
                if att["offsets"].get(k, -1) < last + 1:  # position behind what it returned
                    att["gap"][k + " position"] = [att["offsets"].get(k), last + 1]
            meta = self.c.consumer_group_metadata()
            self._call(call, lambda: self.p.send_offsets_to_transaction(pos, meta, self.CALL_TIMEOUT))
            call = "commit_transaction"
            att["commit_called"] = True
            self._call(call, lambda: self.p.commit_transaction(self.CALL_TIMEOUT))
        except ClientHang as e:
            att["error"] = f"{call}: {e}"
            att["t_end"] = round(self.now(), 3)
            self._hung(str(e))
            self._start_over(att, "hung")
            if self.p is not None:
                self._rewind()
            return
        except KafkaException as e:
            err = e.args[0]
            att["error"] = f"{call}: {err}"
            att["t_end"] = round(self.now(), 3)
            self.errors.append((self.now(), call, str(err)))
            if isinstance(err, KafkaError) and err.fatal():
                self._start_over(att, call)
            else:
                # txn_requires_abort, or a retriable error retried in vain
                try:
                    self._call("abort_transaction", lambda: self.p.abort_transaction(self.CALL_TIMEOUT))
                    self.counts["aborts"] += 1
                    att["outcome"] = "aborted"
                except KafkaException as e2:
                    self.counts["abort_failures"] += 1
                    self.errors.append((self.now(), "abort_transaction", str(e2.args[0])))
                    self._start_over(att, "abort_transaction")
            if self.p is not None:
                self._rewind()
            return
        att["outcome"] = "committed"
        att["t_end"] = round(self.now(), 3)
        self.counts["commits"] += 1
        self.counts["records_committed"] += len(data)
        self.commit_times.append(self.now())
        self.commit_latency.append(time.monotonic() - started)
        for tp in pos:
            self.committed[(tp.topic, tp.partition)] = tp.offset
            self.next[(tp.topic, tp.partition)] = tp.offset

    def hung(self) -> str | None:
        op = self.op
        if op is not None:
            return f"{op[0]} since t={op[1]:.2f}s"
        return None


def read_to_end(bootstrap: str, topic: str, partitions: int, isolation: str, timeout: float = 90):
    """Every record of the topic's partitions from 0 to their end as `isolation` sees it (the
    last stable offset under read_committed), by partition EOF at or past the end the broker
    reports (ListOffsets under that isolation level): ({p: [(offset, key, value)]}, {p: end},
    [partitions not read to the end], errors)."""
    c = Consumer({**_base(bootstrap), "group.id": f"chaos-read-to-end-{isolation}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "isolation.level": isolation, "enable.partition.eof": True,
                  "fetch.wait.max.ms": 100})
    out = {p: [] for p in range(partitions)}
    errors = []
    try:
        end = {}
        for p in range(partitions):
            for attempt in range(5):
                try:
                    end[p] = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    break
                except KafkaException as e:
                    errors.append(str(e))
                    time.sleep(1)
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        eof = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p in eof and eof[p] >= end.get(p, 0) for p in range(partitions)):
                break
            for m in c.consume(1000, 0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        eof[m.partition()] = max(eof.get(m.partition(), 0), m.offset())
                    else:
                        errors.append(str(m.error()))
                    continue
                out[m.partition()].append((m.offset(), (m.key() or b"").decode(errors="replace"),
                                           (m.value() or b"").decode(errors="replace")))
        short = [p for p in range(partitions) if p not in eof or eof[p] < end.get(p, 0)]
        return out, end, short, errors
    finally:
        c.close()


def watermarks(bootstrap: str, parts: list[Part], isolation: str = "read_uncommitted") -> dict[Part, int]:
    """The high watermark (read_committed: the last stable offset) of each partition."""
    c = Consumer({**_base(bootstrap), "group.id": "chaos-watermarks-unused", "isolation.level": isolation})
    out = {}
    try:
        for t, p in parts:
            for attempt in range(5):
                try:
                    out[(t, p)] = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
                    break
                except KafkaException:
                    time.sleep(1)
        return out
    finally:
        c.close()
