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

TODO transactional read-process-write: once WriteTxnMarkers is served (cross-node
transaction markers), add a transactional producer that consumes a source topic and
produces + commits offsets in one transaction, and check no aborted record is visible under
read_committed and that every committed input record is reflected exactly once.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer as KProducer, TopicPartition

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
    return {"bootstrap.servers": bootstrap, "logger": CLIENT_LOG, "reconnect.backoff.max.ms": 1000}


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
