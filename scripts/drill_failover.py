#!/usr/bin/env python3
"""Failover drill: how long producers wait when a partition owner dies, and whether any
acknowledged record is lost or duplicated. Run through scripts/drill-failover.sh.

Modes kill, term, both (a 3-node cluster: deploy/local-cluster.sh, moto S3). A trial:
  1. creates a topic with P partitions through one node (it owns them all: this binary
     gives every partition of a new topic to the node the CreateTopics went to) and fills
     it with --prefill-bytes of records (the retained log the owner holds at the fault);
  2. runs an idempotent acks=all producer (confluent-kafka; linger.ms 5, message.timeout.ms
     60000, bootstrap = every node) at --rate records/s round-robin over the partitions,
     noting the monotonic time each record was produced and acknowledged;
  3. after 2 s of acks, sends the owner SIGKILL (kill) or SIGTERM (term);
  4. keeps producing until 3 s after the first acknowledgement of a record produced after
     the fault, then flushes and reads every partition back from offset 0;
  5. restarts the node (local-cluster.sh start) and waits until Metadata lists it again.

Figures per trial:
  unavail   the fault to the first acknowledgement of a record produced after it
  gap       the longest time between two consecutive acknowledgements (any partition)
  part-gap  the longest such time within one partition (the worst partition)
  acked / lost / dup   acknowledged records; of those, not read back; read back > once
  (+metadata leader)   the owner was the metadata quorum's leader too (its /metrics said
            so before the fault): the survivors elect another leader first
  bucket    total size of the bucket's objects before the producer started and after the
            flush. "beyond payload" is that growth minus the payload bytes acknowledged in
            between: record framing and object headers, metadata objects, compaction output,
            and any copy of retained data. The owner's retained log at the fault is printed
            next to it: an ownership move that copied that log would make "beyond payload"
            at least that large.

Mode two-of-five (5 nodes, 5 voters by default: a 5-voter quorum survives any two
nodes; with --voters 3 only pairs that keep two voters are picked). Per trial number j
two nodes A and B that are not the metadata leader (read from /metrics, see below) are
picked, rotating over the pairs; by default only among the nodes owning the fewest
partitions beforehand, so that one and two victims move P and 2P like partitions
(__consumer_offsets and __transaction_state, 50 partitions each, spread over the nodes
that were registered when they were created; --any-victims: every pair). The trial's
topics are deleted at its end. Two trials run in the same cluster, alternating which goes
first: "single" kills -9 A alone, "double" kills -9 A and B back to back (microseconds
apart). Both use the same workload: one topic of P partitions assigned to A and one
to B (each prefilled with --prefill-bytes), one producer as above over all 2P
partitions; the fault after 2 s of acks, production until every partition acked a record
produced after the fault, plus 3 s. Figures:
  all partitions back  the fault to the moment the LAST of the killed owners' partitions
            acknowledged a record produced after the fault (per partition: its first such
            ack; the maximum over the killed owners' partitions)
  first     the same for the first such partition
  fenced at when a survivor's controller logged fencing each victim; "N moved": the
            partitions it logged moving off fenced brokers
  part-gap  the longest gap between acks of a killed owner's partition; "untouched": the
            same for B's partitions in a single trial (B stays up)
  acked / lost / dup   as above, over both topics
  healthy fenced       fencings of a node that was not killed: the survivors' logs
            ("controller: fencing a broker ... broker=N", "fenced by the controller"), the
            survivors' shale_brokers_fenced_total growing by more than the victims (and
            a note when counters and logs disagree), and Metadata (polled every 0.2 s on
            each survivor) leaving out a node that was up
The summary gives both kinds side by side and the ratio double / single of "all
partitions back" (p50, p99, mean, and per pair), against the target of 1.2x.

Mode leader (3 nodes, 3 voters by default). The metadata leader L is the node every node's
/metrics names in shale_metadata_leader_id (Metadata's controller_id is no help: each node
answers its own id there). The workload covers one topic of P partitions assigned to
each other node (none on L). After 2 s of acks, and while a thread issues a CreateTopics of
a new one-partition topic every 0.1 s through the other nodes (the node that answers
forwards the Raft write to the leader), L is killed -9 alone. Production goes on until
every partition acked a record produced after the kill and a write issued after it
succeeded, plus 3 s; the probe topics are deleted afterwards. Figures:
  next metadata write committed   the kill to the completion of the first successful
            CreateTopics among those issued after the kill (its answer means committed and
            applied); "writes before" is their p50 latency before the kill
  new leader named   the kill to the first poll (every 0.1 s) of a survivor's /metrics
            naming another leader
  healthy part-gap   the longest gap between acks of any partition (all are owned by the
            surviving nodes), and per owner; "stall": the kill to the first ack of a record
            produced after it, on the slowest partition
  not serving        windows in which a survivor logged it was not serving for want of the
            metadata leader ("no heartbeat answered ..." to "heartbeats answered again")
  old leader fenced  when the new leader's controller logged fencing the killed node
  healthy fenced     as for two-of-five; any is a broker fault (exit status 1)
Exit status 1 when a record was lost or duplicated, a trial could not run, a healthy node
was fenced, or (new modes) a partition or metadata write never came back within 70 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import re
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "deploy" / "local-cluster.sh"

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402


def log(msg: str):
    print(msg, flush=True)


def load() -> str:
    try:
        return "load " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load ?"


# ---- the cluster ----------------------------------------------------------------------


class Cluster:
    def __init__(self, d: Path, base_port: int, s3_port: int | None = None):
        self.dir = d
        self.base_port = base_port
        self.s3_port = s3_port
        self.env: dict[str, str] = {}

    def sh(self, *args: str, check: bool = True) -> str:
        r = subprocess.run([str(CLUSTER), *args, "--dir", str(self.dir)], text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if check and r.returncode != 0:
            raise RuntimeError(f"local-cluster.sh {' '.join(args)} failed ({r.returncode}):\n"
                               f"{r.stdout}{r.stderr}")
        return r.stdout

    def up(self, nodes: int = 3, voters: int | None = None) -> str:
        extra = ["--voters", str(voters)] if voters else []
        if self.s3_port:
            extra += ["--s3-port", str(self.s3_port)]
        out = self.sh("up", "--nodes", str(nodes), "--base-port", str(self.base_port), *extra)
        last = out.strip().splitlines()[-1]
        assert last.startswith("bootstrap: "), last
        for line in (self.dir / "cluster.env").read_text().splitlines():
            k, _, v = line.partition("=")
            self.env[k] = v.strip("'")
        return last[len("bootstrap: "):]

    def down(self):
        self.sh("down", check=False)

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.env['S3_PORT']}"

    def addr(self, i: int) -> str:
        return f"{self.env[f'HOST_{i}']}:{self.env[f'PORT_{i}']}"

    def ids(self) -> list[int]:
        return list(range(1, int(self.env["NODES"]) + 1))

    def pid(self, i: int) -> int:
        return int((self.dir / f"n{i}" / "pid").read_text().strip())

    def log_path(self, i: int) -> Path:
        return self.dir / f"n{i}" / "shale.log"

    def voters(self) -> int:
        return int(self.env["VOTERS"])

    def metrics(self, i: int, timeout: float = 2.0) -> dict[str, float]:
        """The node's /metrics (admin HTTP port): unlabelled series only, name -> value."""
        url = f"http://{self.env[f'HOST_{i}']}:{self.env[f'APORT_{i}']}/metrics"
        out = {}
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            for ln in resp.read().decode(errors="replace").splitlines():
                if ln.startswith("#") or "{" in ln:
                    continue
                name, _, val = ln.partition(" ")
                try:
                    out[name] = float(val)
                except ValueError:
                    pass
        return out

    def leader(self, among: list[int] | None = None, timeout: float = 30) -> int:
        """The metadata (Raft) leader: `shale_metadata_leader_id` on the admin port, once
        every node asked agrees on it and that node reports `shale_metadata_is_leader` 1.
        (Metadata's controller_id is no help: every node names itself there.)"""
        among = among or self.ids()
        deadline = time.monotonic() + timeout
        seen: dict = {}
        while True:
            try:
                seen = {i: int(self.metrics(i).get("shale_metadata_leader_id", -1)) for i in among}
                ids = set(seen.values())
                if len(ids) == 1 and (lead := ids.pop()) > 0 and (
                        lead not in among or self.metrics(lead).get("shale_metadata_is_leader") == 1):
                    return lead
            except OSError as e:
                seen = {"error": repr(e)}
            if time.monotonic() > deadline:
                raise RuntimeError(f"no agreed metadata leader after {timeout} s: {seen}")
            time.sleep(0.2)


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie whose every thread is gone (a killed process's
    main thread can be a zombie while the others, holding its sockets, are torn down)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state == "Z" and len(os.listdir(f"/proc/{pid}/task")) <= 1
    except (FileNotFoundError, ProcessLookupError):
        return True


def bucket_objects(s3) -> dict[str, int]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="shale"):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["Size"]
    return out


def kind(key: str) -> str:
    """The object's kind: the key's path component after the cluster id (wal, ...)."""
    parts = key.split("/")
    return parts[1] if len(parts) > 2 else parts[0]


def mb(n: float) -> str:
    return f"{n / 1e6:.2f}MB"


# ---- the workload ---------------------------------------------------------------------


class Workload:
    def __init__(self, bootstrap: str, topic: str | list[str], partitions: int, rate: float,
                 value_bytes: int, tag: str):
        self.topics = [topic] if isinstance(topic, str) else list(topic)
        self.topic, self.partitions, self.rate = self.topics[0], partitions, rate
        # Round-robin over every partition of every topic.
        self.targets = [(t, p) for t in self.topics for p in range(partitions)]
        self.value_bytes, self.tag = value_bytes, tag
        self.lock = threading.Lock()
        self.produced: dict[bytes, float] = {}
        # (time, (topic, partition), value); with one topic, partitions compare as before.
        self.acks: list[tuple[float, tuple[str, int], bytes]] = []
        self.mark: float | None = None  # see mark_fault
        self.first_after: dict[tuple[str, int], float] = {}
        self.failed: list[tuple[bytes, str]] = []
        self.errors: list[str] = []
        self.transport_errors = 0
        self.stop = threading.Event()
        self.unflushed = 0
        self.p = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                           "enable.idempotence": True, "linger.ms": 5,
                           "message.timeout.ms": 60000, "error_cb": self._on_error,
                           # librdkafka's own log lines (connection refused, ...) would
                           # bury the report; errors reach error_cb and are counted.
                           "log_level": 2})
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_error(self, err):
        with self.lock:
            if err.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
                self.transport_errors += 1  # a connection to the stopped node: expected
            else:
                self.errors.append(f"{time.monotonic():.3f} {err}")

    def _on_delivery(self, err, msg):
        now = time.monotonic()
        with self.lock:
            if err is not None:
                self.failed.append((msg.value(), str(err)))
            else:
                key = (msg.topic(), msg.partition())
                self.acks.append((now, key, msg.value()))
                if (self.mark is not None and key not in self.first_after
                        and self.produced.get(msg.value(), 0) > self.mark):
                    self.first_after[key] = now

    def mark_fault(self, t: float):
        """From now on, note per partition the first ack of a record produced after t."""
        with self.lock:
            self.mark = t
            self.first_after = {}

    def first_acks_after_mark(self) -> dict[tuple[str, int], float]:
        with self.lock:
            return dict(self.first_after)

    def value(self, i: int) -> bytes:
        head = b"%s-%07d-" % (self.tag.encode(), i)
        return head + b"x" * max(0, self.value_bytes - len(head))

    def prefill(self, nbytes: int, start: int = 0) -> int:
        """Synchronously writes ~nbytes of records (acknowledged ones count as acked)."""
        n = max(0, nbytes // self.value_bytes)
        for i in range(start, start + n):
            v = self.value(i)
            topic, part = self.targets[i % len(self.targets)]
            while True:
                try:
                    self.p.produce(topic, value=v, partition=part,
                                   on_delivery=self._on_delivery)
                    break
                except BufferError:
                    self.p.poll(0.05)
            with self.lock:
                self.produced[v] = time.monotonic()
            self.p.poll(0)
        left = self.p.flush(60)
        if left:
            raise RuntimeError(f"prefill: {left} records not delivered within 60 s")
        return start + n

    def start(self, first: int):
        self.first = first
        self.thread.start()

    def _run(self):
        i = self.first
        period = 1.0 / self.rate
        nxt = time.monotonic()
        while not self.stop.is_set():
            v = self.value(i)
            topic, part = self.targets[i % len(self.targets)]
            try:
                self.p.produce(topic, value=v, partition=part,
                               on_delivery=self._on_delivery)
            except BufferError:
                self.p.poll(0.01)
                continue
            with self.lock:
                self.produced[v] = time.monotonic()
            i += 1
            self.p.poll(0)
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.1:
                nxt = time.monotonic()  # behind: do not burst to catch up
        self.unflushed = self.p.flush(70)

    def finish(self):
        if self.stop.is_set():
            return
        self.stop.set()
        if self.thread.ident is not None:  # started
            self.thread.join(120)
        self.p.close()  # no idle producer (and its connections) left behind per trial

    def first_ack_of_produced_after(self, t: float) -> float | None:
        with self.lock:
            ts = [a for a, _, v in self.acks if self.produced.get(v, 0) > t]
        return min(ts) if ts else None

    def ack_count(self) -> int:
        with self.lock:
            return len(self.acks)


def longest_gap(ts: list[float]) -> tuple[float, float]:
    """(gap, start of the gap) over sorted times."""
    ts = sorted(ts)
    best, at = 0.0, ts[0] if ts else 0.0
    for a, b in zip(ts, ts[1:]):
        if b - a > best:
            best, at = b - a, a
    return best, at


def read_back(bootstrap: str, topic: str | list[str], partitions: int, timeout: float = 90) -> Counter:
    topics = [topic] if isinstance(topic, str) else list(topic)
    keys = [(t, p) for t in topics for p in range(partitions)]
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"drill-{topics[0]}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest", "log_level": 2})
    try:
        hw = {}
        for t, p in keys:
            lo, hi = c.get_watermark_offsets(TopicPartition(t, p), timeout=20)
            hw[(t, p) if len(topics) > 1 else p] = hi
        c.assign([TopicPartition(t, p, 0) for t, p in keys])
        seen: Counter = Counter()
        pos = {k: 0 for k in hw}
        deadline = time.monotonic() + timeout
        while any(pos[p] < hw[p] for p in pos) and time.monotonic() < deadline:
            for m in c.consume(500, 0.5):
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        log(f"    consume error: {m.error()}")
                    continue
                seen[m.value()] += 1
                k = (m.topic(), m.partition()) if len(topics) > 1 else m.partition()
                pos[k] = max(pos[k], m.offset() + 1)
        short = {p: (pos[p], hw[p]) for p in pos if pos[p] < hw[p]}
        if short:
            log(f"    read back stopped short of the high watermark: {short}")
        return seen
    finally:
        c.close()


def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    md = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2}).list_topics(topic, timeout=10)
    return {p.id: p.leader for p in md.topics[topic].partitions.values()}


def wait_brokers(bootstrap: str, want: set[int], timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            md = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2}).list_topics(timeout=5)
            if set(md.brokers) >= want:
                return
            got = sorted(md.brokers)
        except Exception as e:  # noqa: BLE001
            got = repr(e)
        if time.monotonic() > deadline:
            raise RuntimeError(f"Metadata lists {got}, not {sorted(want)}, after {timeout} s")
        time.sleep(0.2)


# ---- one trial ------------------------------------------------------------------------


def trial(args, cl: Cluster, bootstrap: str, s3, k: int, mode: str) -> dict:
    ids = cl.ids()
    via = ids[k % len(ids)]
    topic = f"drill-{k:02d}-{mode}"
    r: dict = {"k": k, "mode": mode, "topic": topic, "notes": []}
    admin = AdminClient({"bootstrap.servers": cl.addr(via), "log_level": 2})  # held: the future needs it
    admin.create_topics([owned_by(topic, args.partitions, via)])[topic].result(30)
    deadline = time.monotonic() + 20
    while True:
        lead = leaders(bootstrap, topic)
        if len(lead) == args.partitions and all(v >= 0 for v in lead.values()):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{topic}: no leaders after 20 s: {lead}")
        time.sleep(0.1)
    owners = Counter(lead.values())
    owner = owners.most_common(1)[0][0]
    if len(owners) > 1 or owner != via:
        r["notes"].append(f"created via {via}, leaders {lead}")
    r["owner"] = owner

    w = Workload(bootstrap, topic, args.partitions, args.rate, args.value_bytes, f"t{k}")
    nxt = w.prefill(args.prefill_bytes)
    prefill_payload = w.ack_count() * args.value_bytes
    before = bucket_objects(s3)
    t_start = time.monotonic()
    w.start(nxt)
    deadline = t_start + 30
    while w.first_ack_of_produced_after(t_start) is None:
        if time.monotonic() > deadline:
            w.finish()
            raise RuntimeError(f"{topic}: no acknowledgement within 30 s of starting")
        time.sleep(0.01)
    time.sleep(2.0)  # 2 s of steady acks

    pid = cl.pid(owner)
    # Whether the owner leads the metadata quorum as well: then the survivors elect another
    # leader first (read before the fault; the survivors' logs need not say so any more).
    try:
        leader_before = cl.leader(timeout=10)
    except RuntimeError as e:
        leader_before = None
        r["notes"].append(f"metadata leader before the fault unknown: {e}")
    with w.lock:
        acked_before_fault = len(w.acks)
    t_fault = time.monotonic()
    os.kill(pid, signal.SIGKILL if mode == "kill" else signal.SIGTERM)
    while not gone(pid):
        if time.monotonic() - t_fault > 30:
            r["notes"].append("did not exit within 30 s: SIGKILL")
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
    r["exit"] = time.monotonic() - t_fault

    deadline = t_fault + 70
    first = None
    while time.monotonic() < deadline:
        first = w.first_ack_of_produced_after(t_fault)
        if first is not None and time.monotonic() >= first + 3.0:
            break
        time.sleep(0.05)
    w.finish()
    if first is None:
        r["notes"].append("no record produced after the fault was acknowledged within 70 s")
    r["unavail"] = (first - t_fault) if first is not None else float("inf")

    after = bucket_objects(s3)
    r["meta_leader"] = leader_before == owner
    # Gaps over the timed part: acknowledgements of records produced after the prefill.
    timed = [(a, p) for a, p, v in w.acks if w.produced[v] >= t_start]
    r["gap"], gap_at = longest_gap([a for a, _ in timed])
    r["gap_from_fault"] = gap_at - t_fault
    per_part = defaultdict(list)
    for a, p in timed:
        per_part[p].append(a)
    r["part_gaps"] = {p: longest_gap(per_part[p])[0] for p in sorted(per_part)}
    r["part_gap"] = max(r["part_gaps"].values(), default=0.0)

    r["leaders_after"] = leaders(bootstrap, topic)
    if owner in r["leaders_after"].values():
        r["notes"].append(f"partitions still on the stopped node: {r['leaders_after']}")
    check_records(r, w, bootstrap, topic, args.partitions)

    # The bucket.
    new_keys = {k_: s for k_, s in after.items() if k_ not in before}
    gone_keys = {k_: s for k_, s in before.items() if k_ not in after}
    payload = (len(w.acks) - (prefill_payload // args.value_bytes)) * args.value_bytes
    r["bucket_before"], r["bucket_after"] = sum(before.values()), sum(after.values())
    r["payload"] = payload
    r["beyond"] = r["bucket_after"] - r["bucket_before"] - payload
    r["retained"] = acked_before_fault * args.value_bytes
    kinds = Counter()
    for k_, s in new_keys.items():
        kinds[kind(k_)] += s
    r["new_kinds"] = dict(kinds)
    r["new_objects"] = len(new_keys)
    r["gone_objects"] = (len(gone_keys), sum(gone_keys.values()))
    r["prefill"] = prefill_payload

    # Bring the node back for the next trial.
    cl.sh("start", str(owner))
    wait_brokers(bootstrap, set(ids))
    return r


# ---- shared by the two-of-five and leader modes ------------------------------------------

sys.path.insert(0, str(ROOT / "deploy"))
from cluster_probe import probe as metadata_probe  # noqa: E402


def owned_by(topic: str, partitions: int, owner: int) -> NewTopic:
    """`topic` with every partition assigned to node `owner` (a manual assignment's first
    replica owns the partition; without one, partitions spread over the nodes)."""
    return NewTopic(topic, partitions, replica_assignment=[[owner]] * partitions)


def create_owned_topic(cl: Cluster, bootstrap: str, topic: str, partitions: int, via: int):
    """Creates `topic` through node `via`, all its partitions assigned to `via`, and waits
    until Metadata names a leader for each; fails if any partition is not on `via`."""
    admin = AdminClient({"bootstrap.servers": cl.addr(via), "log_level": 2})
    admin.create_topics([owned_by(topic, partitions, via)])[topic].result(30)
    deadline = time.monotonic() + 20
    while True:
        lead = leaders(bootstrap, topic)
        if len(lead) == partitions and all(v >= 0 for v in lead.values()):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{topic}: no leaders after 20 s: {lead}")
        time.sleep(0.1)
    if set(lead.values()) != {via}:
        raise RuntimeError(f"{topic}: created via node {via} but its leaders are {lead}")


def ownership(bootstrap: str) -> Counter:
    """node -> partitions it leads, over every topic Metadata lists (internal ones too:
    __consumer_offsets and __transaction_state, spread when they were created)."""
    md = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2}).list_topics(timeout=10)
    return Counter(p.leader for t in md.topics.values() for p in t.partitions.values())


def delete_topics(bootstrap: str, topics: list[str]):
    """Best effort: a trial's topics go, so that they do not pile up on the nodes that
    took them over and weigh on the next trials' moves."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    try:
        for f in admin.delete_topics(list(topics), request_timeout=30).values():
            try:
                f.result(30)
            except Exception:  # noqa: BLE001
                pass
    except Exception:  # noqa: BLE001
        pass


class Watcher:
    """Polls the watched nodes every `period` s from a thread: the brokers their Metadata
    lists (a fenced broker leaves its own Metadata at once; the others keep listing it for
    10 s, so that clients move its partitions first) and the metadata leader their /metrics
    name.
    Tells whether a healthy node dropped out of Metadata, and when a new leader appeared."""

    def __init__(self, cl: Cluster, nodes: list[int], period: float = 0.1):
        self.cl, self.nodes, self.period = cl, nodes, period
        self.samples: list[tuple[float, int, frozenset | None, int | None]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def finish(self):
        self.stop.set()
        if self.thread.ident is not None:
            self.thread.join(10)

    def _run(self):
        while not self.stop.is_set():
            for i in self.nodes:
                host, _, port = self.cl.addr(i).rpartition(":")
                try:
                    brokers = frozenset(b[0] for b in metadata_probe(host, int(port), timeout=1.0)[0])
                except (OSError, ValueError):
                    brokers = None
                try:
                    lead = int(self.cl.metrics(i, timeout=1.0).get("shale_metadata_leader_id", -1))
                except OSError:
                    lead = None
                self.samples.append((time.monotonic(), i, brokers, lead))
            self.stop.wait(self.period)

    def missing(self, healthy: list[int], after: float) -> dict[int, list[tuple[int, float]]]:
        """healthy node -> [(watched node whose Metadata left it out, time after `after`)]."""
        out: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for t, i, brokers, _ in self.samples:
            if t < after or brokers is None:
                continue
            for h in healthy:
                if h not in brokers:
                    out[h].append((i, t - after))
        return dict(out)

    def new_leader_at(self, old: int, after: float) -> tuple[float, int] | None:
        """When a watched node first named a leader other than `old` (and not none)."""
        for t, _, _, lead in self.samples:
            if t >= after and lead is not None and lead > 0 and lead != old:
                return t - after, lead
        return None

    def unanswered(self, after: float) -> int:
        return sum(1 for t, _, b, _ in self.samples if t >= after and b is None)


_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z?\s")
# "controller: fencing a broker whose session expired broker=N" (and since 41784cd
# "... (session expired, or its process is gone) broker=N"): any wording up to broker=N.
_FENCING = re.compile(r"controller: fencing a broker\b.*?\bbroker=(\d+)")
_MOVING = re.compile(r"controller: moving partitions off fenced brokers partitions=(\d+)")


def _wall(ln: str) -> float | None:
    m = _TS.match(ln)
    if not m:
        return None
    from datetime import datetime, timezone
    return datetime.fromisoformat(m.group(1)).replace(tzinfo=timezone.utc).timestamp()


def scan_logs(cl: Cluster, at: dict[int, int], wall_fault: float) -> dict:
    """What the nodes in `at` (node -> log offset at the fault) logged after the fault:
    fencings their controller made (node, broker, s after the fault), whether they were
    fenced themselves, and the windows they did not serve for want of the metadata leader."""
    out = {"fencings": [], "self_fenced": [], "not_serving": [], "moved": 0}
    for i, off in at.items():
        with open(cl.log_path(i), "rb") as f:
            f.seek(off)
            text = f.read().decode(errors="replace")
        stopped = None
        for ln in text.splitlines():
            t = _wall(ln)
            rel = (t - wall_fault) if t is not None else float("nan")
            if m := _FENCING.search(ln):
                out["fencings"].append((i, int(m.group(1)), rel))
            elif m := _MOVING.search(ln):
                out["moved"] += int(m.group(1))
            elif "fenced by the controller" in ln:
                out["self_fenced"].append((i, rel))
            elif "no heartbeat answered by the metadata leader" in ln:
                stopped = rel
            elif "heartbeats answered again: serving" in ln and stopped is not None:
                out["not_serving"].append((i, stopped, rel))
                stopped = None
        if stopped is not None:
            out["not_serving"].append((i, stopped, float("inf")))
    return out


def kill_all(cl: Cluster, victims: list[int]) -> tuple[float, float, float]:
    """SIGKILL every victim back to back: (monotonic fault time, wall fault time, time until
    all are gone)."""
    pids = [cl.pid(v) for v in victims]
    t_fault, wall = time.monotonic(), time.time()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    while not all(gone(p) for p in pids):
        if time.monotonic() - t_fault > 30:
            raise RuntimeError(f"victims {victims} still there 30 s after SIGKILL")
        time.sleep(0.005)
    return t_fault, wall, time.monotonic() - t_fault


def wait_serving(w: Workload, keys: list, t_fault: float, extra: list | None = None,
                 settle: float = 3.0, timeout: float = 70) -> dict:
    """Produces until every partition in `keys` acked a record produced after the fault,
    and every `extra` condition (callables) holds, then `settle` s more; the per-partition
    first acks after the fault."""
    deadline = t_fault + timeout
    done_at = None
    while time.monotonic() < deadline:
        first = w.first_acks_after_mark()
        ok = all(k in first for k in keys) and all(c() for c in (extra or []))
        if ok and done_at is None:
            done_at = time.monotonic()
        if done_at is not None and time.monotonic() >= done_at + settle:
            break
        time.sleep(0.05)
    w.finish()
    return w.first_acks_after_mark()


def check_records(r: dict, w: Workload, bootstrap: str, topics: str | list[str], partitions: int):
    """acked / failed / lost / dup / duplicates of unacked records into r, with notes."""
    acked = {v for _, _, v in w.acks}
    r["acked"] = len(acked)
    r["failed"] = len(w.failed)
    if w.failed:
        r["notes"].append(f"{len(w.failed)} deliveries failed, e.g. {w.failed[0][1]}")
    if w.unflushed:
        r["notes"].append(f"{w.unflushed} records still queued after flush(70)")
    if w.errors:
        r["notes"].append(f"{len(w.errors)} producer errors, first: {w.errors[0]}")
    r["transport_errors"] = w.transport_errors
    seen = read_back(bootstrap, topics, partitions)
    r["lost"] = len(acked - set(seen))
    r["dup"] = sum(1 for v in acked if seen[v] > 1)
    r["dup_unacked"] = sum(1 for v, n in seen.items() if n > 1 and v not in acked)
    r["unacked_present"] = sum(1 for v in seen if v not in acked)
    if r["lost"]:
        r["notes"].append(f"lost e.g. {[x[:20] for x in sorted(acked - set(seen))[:3]]}")


def part_gaps(w: Workload, t_start: float) -> dict:
    """Longest gap between acks per partition, over records produced after t_start."""
    per = defaultdict(list)
    for a, key, v in w.acks:
        if w.produced[v] >= t_start:
            per[key].append(a)
    return {k: longest_gap(per[k])[0] for k in sorted(per)}


def fence_counters(cl: Cluster, nodes: list[int]) -> dict[int, float]:
    """shale_brokers_fenced_total of each node (fencings its controller made): a check on
    the log scan that does not depend on the log's wording."""
    out = {}
    for i in nodes:
        try:
            out[i] = cl.metrics(i).get("shale_brokers_fenced_total", 0.0)
        except OSError:
            out[i] = float("nan")
    return out


def healthy_fencing(r: dict, scan: dict, watch: Watcher, victims: list[int], healthy: list[int],
                    t_fault: float, counted: float | None = None):
    """Into r: fencings of nodes that were not killed (logs, and Metadata leaving one out).
    `counted`: fencings the survivors' shale_brokers_fenced_total counters grew by."""
    r["fenced"] = sorted({b for _, b, _ in scan["fencings"]})
    r["healthy_fenced"] = [(i, b, t) for i, b, t in scan["fencings"] if b not in victims]
    r["self_fenced"] = scan["self_fenced"]
    r["missing"] = watch.missing(healthy, t_fault)
    victim_fence = [t for _, b, t in scan["fencings"] if b in victims]
    r["victim_fenced_at"] = min(victim_fence) if victim_fence else None
    r["victims_fenced_at"] = {b: t for _, b, t in sorted(scan["fencings"], key=lambda x: -x[2])
                              if b in victims}  # the first fencing of each
    r["moved"] = scan["moved"]
    r["fence_count"] = counted
    logged = len(scan["fencings"])
    if counted is not None and counted == counted and counted != logged:
        r["notes"].append(f"the controllers' shale_brokers_fenced_total grew by {counted:g} but "
                          f"their logs show {logged} fencings (log wording changed?)")
    extra = 0
    if counted is not None and counted == counted and counted > len(victims):
        extra = int(counted - len(victims))
        r["notes"].append(f"MORE FENCINGS THAN KILLED NODES: {counted:g} for {len(victims)}")
    # Healthy nodes fenced, by whichever source saw the most: the controllers' log lines,
    # the fenced nodes' own logs, or the counters beyond one fencing per killed node.
    r["healthy_fenced_n"] = max(len({b for _, b, _ in r["healthy_fenced"]}),
                                len({i for i, _ in r["self_fenced"]}), extra)
    if r["healthy_fenced"]:
        r["notes"].append("HEALTHY NODE FENCED: " + ", ".join(
            f"node {b} by node {i}'s controller at fault+{t:.2f}s" for i, b, t in r["healthy_fenced"]))
    if r["self_fenced"]:
        r["notes"].append("a healthy node logged being fenced: " + ", ".join(
            f"node {i} at fault+{t:.2f}s" for i, t in r["self_fenced"]))
    if r["missing"]:
        r["notes"].append("a healthy node missing from Metadata: " + ", ".join(
            f"node {h} ({len(xs)} polls, first by node {xs[0][0]} at fault+{xs[0][1]:.2f}s)"
            for h, xs in r["missing"].items()))
    if watch.unanswered(t_fault):
        r["notes"].append(f"{watch.unanswered(t_fault)} Metadata polls of healthy nodes unanswered")


def pick_pairs(cl: Cluster, leader: int, owned: Counter | None = None) -> list[tuple[int, int]]:
    """Pairs of non-leader nodes whose loss leaves a majority of the voters. With `owned`
    (node -> partitions it owns before the trial's topics exist), only the pairs owning the
    fewest: the victims then hold the trial's topics and nothing else (no internal topic's
    50 coordinator partitions), so one and two victims move P and 2P like partitions."""
    v = cl.voters()
    cand = [i for i in cl.ids() if i != leader]
    pairs = [(a, b) for n, a in enumerate(cand) for b in cand[n + 1:]
             if sum(1 for x in (a, b) if x <= v) <= (v - 1) // 2]
    if not pairs:
        raise RuntimeError(f"no two non-leader nodes can be lost with {v} voters of {len(cl.ids())}")
    if owned is not None:
        best = min(max(owned[a], owned[b]) for a, b in pairs)
        pairs = [(a, b) for a, b in pairs if max(owned[a], owned[b]) == best]
    return pairs


# ---- two of five: two owners killed at once, against one -------------------------------


def trial_owners(args, cl: Cluster, bootstrap: str, k: int, mode: str, pair: tuple[int, int],
                 leader: int) -> dict:
    """mode single: kill -9 pair[0]; double: kill -9 both at once. Either way the workload
    covers the partitions of both (one topic owned by each), so only the second kill differs."""
    ids = cl.ids()
    victims = [pair[0]] if mode == "single" else list(pair)
    r: dict = {"k": k, "mode": mode, "pair": pair, "victims": victims, "leader": leader,
               "notes": []}
    topics = {o: f"drill-{k:02d}-{mode}-n{o}" for o in pair}
    for o, t in topics.items():
        create_owned_topic(cl, bootstrap, t, args.partitions, o)
    w = Workload(bootstrap, list(topics.values()), args.partitions, args.rate,
                 args.value_bytes, f"t{k}")
    survivors = [i for i in ids if i not in victims]
    watch = Watcher(cl, survivors, period=0.2)
    try:
        return _trial_owners(args, cl, bootstrap, r, topics, w, watch, victims, survivors)
    finally:
        w.finish()
        watch.finish()


def start_steady(args, w: Workload, topics: list[str]) -> float:
    """Prefills the topics, starts the producer and waits for its first ack; the start time."""
    nxt = w.prefill(args.prefill_bytes * len(topics))
    t_start = time.monotonic()
    w.start(nxt)
    deadline = t_start + 30
    while w.first_ack_of_produced_after(t_start) is None:
        if time.monotonic() > deadline:
            raise RuntimeError("no acknowledgement within 30 s of starting")
        time.sleep(0.01)
    return t_start


def _trial_owners(args, cl, bootstrap, r, topics, w, watch, victims, survivors) -> dict:
    ids, leader = cl.ids(), r["leader"]
    t_start = start_steady(args, w, topics)
    watch.start()
    time.sleep(2.0)  # 2 s of steady acks

    owned = ownership(bootstrap)
    r["owned"] = {v: owned[v] for v in r["pair"]}
    fenced_before = fence_counters(cl, survivors)
    log_at = {i: cl.log_path(i).stat().st_size for i in survivors}
    with w.lock:
        r["retained"] = len(w.acks) * args.value_bytes
    w.mark_fault(time.monotonic())
    t_fault, wall_fault, r["exit"] = kill_all(cl, victims)
    victim_keys = [(topics[v], p) for v in victims for p in range(args.partitions)]
    all_keys = [(t, p) for t in topics.values() for p in range(args.partitions)]
    first = wait_serving(w, all_keys, t_fault)
    watch.finish()

    back = {key: first.get(key, float("inf")) - t_fault for key in all_keys}
    r["back"] = back
    r["all_serve"] = max(back[key] for key in victim_keys)
    r["first_serve"] = min(back[key] for key in victim_keys)
    missing = [key for key in all_keys if key not in first]
    if missing:
        r["notes"].append(f"{len(missing)} partitions never acked again within 70 s: {missing[:6]}")
    gaps = part_gaps(w, t_start)
    r["victim_gap"] = max((gaps.get(key, 0.0) for key in victim_keys), default=0.0)
    other = [key for key in all_keys if key not in victim_keys]
    r["other_gap"] = max((gaps.get(key, 0.0) for key in other), default=None)
    r["leaders_after"] = {t: leaders(bootstrap, t) for t in topics.values()}
    still = [v for v in victims for ls in r["leaders_after"].values() if v in ls.values()]
    if still:
        r["notes"].append(f"partitions still on a killed node: {r['leaders_after']}")
    scan = scan_logs(cl, log_at, wall_fault)
    fenced_after = fence_counters(cl, survivors)
    healthy_fencing(r, scan, watch, victims, survivors, t_fault,
                    sum(fenced_after[i] - fenced_before[i] for i in survivors))
    try:
        r["leader_after"] = cl.leader(survivors, timeout=10)
    except RuntimeError as e:
        r["leader_after"] = None
        r["notes"].append(str(e))
    if r["leader_after"] != leader:
        r["notes"].append(f"metadata leader changed: {leader} -> {r['leader_after']}")
    check_records(r, w, bootstrap, list(topics.values()), args.partitions)
    delete_topics(bootstrap, list(topics.values()))

    for v in victims:
        cl.sh("start", str(v))
    wait_brokers(bootstrap, set(ids))
    return r


def line_owners(r: dict) -> str:
    what = "kill -9 of 1 owner " if r["mode"] == "single" else "kill -9 of 2 owners"
    keep = [o for o in r["pair"] if o not in r["victims"]]
    # Where each topic's partitions went, by the node that owned it: n4's:[1, 3] ...
    moved = {t.rsplit("-", 1)[1]: sorted(set(ls.values())) for t, ls in r["leaders_after"].items()}
    s = (f"trial {r['k'] + 1:>2} {what} "
         + "+".join(f"{v}({r['owned'][v]} partitions)" for v in r["victims"])
         + (f" (node {keep[0]}'s topic untouched, {r['owned'][keep[0]]} partitions)" if keep else "")
         + f"  leader {r['leader']}"
         + "  -> " + " ".join(f"{owner}'s:{v}" for owner, v in moved.items())
         + f"  all partitions back {r['all_serve']:.2f}s (first {r['first_serve']:.2f}s)"
         + ("  fenced at " + " ".join(f"{b}:+{t:.2f}s" for b, t in sorted(r["victims_fenced_at"].items()))
            if r["victims_fenced_at"] else "")
         + f", {r['moved']} moved"
         + f"  part-gap {r['victim_gap']:.2f}s"
         + (f" untouched {r['other_gap']:.2f}s" if keep and r["other_gap"] is not None else "")
         + f"  acked {r['acked']} lost {r['lost']} dup {r['dup']} failed {r['failed']}"
         + (f" unacked-present {r['unacked_present']}" if r["unacked_present"] else "")
         + f"  healthy fenced {r['healthy_fenced_n']}")
    if r["notes"]:
        s += "\n    note: " + "; ".join(r["notes"])
    return s


def summary_owners(results: list[dict]) -> bool:
    bad = False
    rows = {}
    for mode, name in (("single", "1 owner killed "), ("double", "2 owners killed")):
        rs = [r for r in results if r.get("mode") == mode and "error" not in r]
        errs = sum(1 for r in results if r.get("mode") == mode and "error" in r)
        rows[mode] = rs
        log(f"  {name} trials {len(rs)}" + (f" (+{errs} failed to run)" if errs else ""))
        if not rs:
            bad |= errs > 0
            continue
        al = [r["all_serve"] for r in rs]
        fs = [r["first_serve"] for r in rs]
        pg = [r["victim_gap"] for r in rs]
        log(f"           all partitions back p50 {pct(al, 50):.2f} p99 {pct(al, 99):.2f} max {max(al):.2f}"
            f" (min {min(al):.2f}; mean {sum(al) / len(al):.2f})")
        log(f"           first partition back p50 {pct(fs, 50):.2f} max {max(fs):.2f}")
        log(f"           killed owners' partition gap p50 {pct(pg, 50):.2f} max {max(pg):.2f}")
        fe = [r["victim_fenced_at"] for r in rs if r["victim_fenced_at"] is not None]
        if fe:
            log(f"           victim fenced after p50 {pct(fe, 50):.2f} max {max(fe):.2f} (survivors' logs)")
        if mode == "single":
            og = [r["other_gap"] for r in rs if r["other_gap"] is not None]
            if og:
                log(f"           untouched owner's partition gap p50 {pct(og, 50):.2f} max {max(og):.2f}")
        acked, lost, dup = (sum(r[x] for r in rs) for x in ("acked", "lost", "dup"))
        failed = sum(r["failed"] for r in rs)
        hf = sum(r["healthy_fenced_n"] for r in rs)
        miss = sum(1 for r in rs if r["missing"])
        log(f"           acked {acked} lost {lost} duplicated {dup} failed deliveries {failed}")
        log(f"           healthy nodes fenced {hf}; trials where Metadata left a healthy node out {miss}")
        log("           victims (partitions owned at the kill): "
            + " ".join("+".join(f"{v}({r['owned'][v]})" for v in r["victims"]) for r in rs)
            + f"; partitions moved p50 {pct([r['moved'] for r in rs], 50):g}"
            + f"; metadata leaders: {' '.join(str(r['leader']) for r in rs)}")
        never = sum(1 for r in rs if r["all_serve"] == float("inf"))
        bad |= lost > 0 or dup > 0 or errs > 0 or hf > 0 or never > 0
    s, d = rows["single"], rows["double"]
    if s and d:
        sa = [r["all_serve"] for r in s]
        da = [r["all_serve"] for r in d]
        ratios = [f"{pct(da, q) / pct(sa, q):.2f}" for q in (50, 99)]
        mean = (sum(da) / len(da)) / (sum(sa) / len(sa))
        # Pairs: each double trial against the single trial of the same victims' pair.
        by_pair = {r["pair"]: r["all_serve"] for r in s}
        paired = [r["all_serve"] / by_pair[r["pair"]] for r in d if r["pair"] in by_pair]
        log(f"  two owners / one owner, all partitions back: p50 {ratios[0]}x p99 {ratios[1]}x "
            f"mean {mean:.2f}x; per pair p50 {pct(paired, 50):.2f}x max {max(paired):.2f}x "
            f"(target: within 1.2x)")
    return bad


# ---- the metadata leader alone ---------------------------------------------------------


class MetaWriter:
    """Commits a metadata write every `period` s from its own thread: CreateTopics of a new
    one-partition topic through the given nodes (the node answering forwards the write to the
    Raft leader; success = committed and applied). Notes (issued, done, ok, error)."""

    def __init__(self, bootstrap: str, prefix: str, period: float = 0.1):
        self.admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
        self.prefix, self.period = prefix, period
        self.results: list[list] = []
        self.names: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        n = 0
        while not self.stop.is_set():
            name = f"{self.prefix}-{n:04d}"
            n += 1
            rec = [time.monotonic(), None, None, None]
            with self.lock:
                self.results.append(rec)
                self.names.append(name)

            def done(f, rec=rec):
                rec[1] = time.monotonic()
                e = f.exception()
                rec[2] = e is None
                rec[3] = None if e is None else str(e)
            try:
                fut = self.admin.create_topics([NewTopic(name, 1, 1)], request_timeout=20)[name]
                fut.add_done_callback(done)
            except Exception as e:  # noqa: BLE001
                rec[1], rec[2], rec[3] = time.monotonic(), False, repr(e)
            self.stop.wait(self.period)

    def finish(self, wait: float = 25):
        self.stop.set()
        if self.thread.ident is None:
            return
        self.thread.join(10)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with self.lock:
                if all(r[1] is not None for r in self.results):
                    break
            time.sleep(0.1)

    def first_commit_after(self, t: float) -> float | None:
        """The first success among the writes issued after t: its completion time."""
        with self.lock:
            ok = [r[1] for r in self.results if r[0] > t and r[2]]
        return min(ok) if ok else None

    def cleanup(self):
        with self.lock:
            names = list(self.names)
        try:
            for f in self.admin.delete_topics(names, request_timeout=30).values():
                try:
                    f.result(30)
                except Exception:  # noqa: BLE001 (those that failed to be created)
                    pass
        except Exception:  # noqa: BLE001
            pass


def trial_leader(args, cl: Cluster, bootstrap: str, k: int) -> dict:
    """kill -9 of the metadata leader alone; the workload covers one topic owned by each
    other node (so no partition of the workload is on the killed node)."""
    ids = cl.ids()
    leader = cl.leader()
    healthy = [i for i in ids if i != leader]
    r: dict = {"k": k, "mode": "leader", "leader": leader, "healthy": healthy, "notes": []}
    topics = {o: f"drill-{k:02d}-leader-n{o}" for o in healthy}
    for o, t in topics.items():
        create_owned_topic(cl, bootstrap, t, args.partitions, o)
    w = Workload(bootstrap, list(topics.values()), args.partitions, args.rate,
                 args.value_bytes, f"t{k}")
    watch = Watcher(cl, healthy, period=0.1)
    writer = MetaWriter(",".join(cl.addr(i) for i in healthy), f"drill-{k:02d}-probe")
    try:
        return _trial_leader(args, cl, bootstrap, r, topics, w, watch, writer)
    finally:
        w.finish()
        watch.finish()
        writer.finish(wait=0)


def _trial_leader(args, cl, bootstrap, r, topics, w, watch, writer) -> dict:
    ids, leader, healthy, k = cl.ids(), r["leader"], r["healthy"], r["k"]
    t_start = start_steady(args, w, topics)
    watch.start()
    writer.start()
    time.sleep(2.0)  # 2 s of steady acks and metadata writes

    fenced_before = fence_counters(cl, healthy)
    log_at = {i: cl.log_path(i).stat().st_size for i in healthy}
    w.mark_fault(time.monotonic())
    t_fault, wall_fault, _ = kill_all(cl, [leader])
    keys = [(t, p) for t in topics.values() for p in range(args.partitions)]
    first = wait_serving(w, keys, t_fault,
                         extra=[lambda: writer.first_commit_after(t_fault) is not None])
    writer.finish()
    watch.finish()

    c = writer.first_commit_after(t_fault)
    r["commit"] = (c - t_fault) if c is not None else float("inf")
    if c is None:
        r["notes"].append("no metadata write committed within 70 s of the kill")
    before = [r_[1] - r_[0] for r_ in writer.results if r_[2] and r_[1] < t_fault]
    r["write_p50_before"] = pct(before, 50) if before else float("nan")
    after_fail = [r_ for r_ in writer.results if r_[0] > t_fault and r_[2] is False]
    r["writes_failed"] = len(after_fail)
    if after_fail:
        r["write_error"] = after_fail[0][3]
    nl = watch.new_leader_at(leader, t_fault)
    r["elected"], r["new_leader"] = nl if nl else (float("inf"), None)
    back = {key: first.get(key, float("inf")) - t_fault for key in keys}
    r["stall"] = max(back.values())
    missing = [key for key in keys if key not in first]
    if missing:
        r["notes"].append(f"{len(missing)} healthy partitions never acked again within 70 s")
    gaps = part_gaps(w, t_start)
    r["part_gap"] = max(gaps.values(), default=0.0)
    r["gap"] = longest_gap([a for a, _, v in w.acks if w.produced[v] >= t_start])[0]
    r["gap_by_owner"] = {o: max(gaps.get((t, p), 0.0) for p in range(args.partitions))
                         for o, t in topics.items()}
    scan = scan_logs(cl, log_at, wall_fault)
    r["not_serving"] = scan["not_serving"]
    fenced_after = fence_counters(cl, healthy)
    healthy_fencing(r, scan, watch, [leader], healthy, t_fault,
                    sum(fenced_after[i] - fenced_before[i] for i in healthy))
    r["leaders_after"] = {t: leaders(bootstrap, t) for t in topics.values()}
    for o, t in topics.items():
        if set(r["leaders_after"][t].values()) != {o}:
            r["notes"].append(f"{t} moved off its healthy owner {o}: {r['leaders_after'][t]}")
    check_records(r, w, bootstrap, list(topics.values()), args.partitions)
    writer.cleanup()
    delete_topics(bootstrap, list(topics.values()))

    cl.sh("start", str(leader))
    wait_brokers(bootstrap, set(ids))
    return r


def line_leader(r: dict) -> str:
    ns = r["not_serving"]
    s = (f"trial {r['k'] + 1:>2} kill -9 of metadata leader {r['leader']}"
         f" -> leader {r['new_leader']} named at +{r['elected']:.2f}s"
         f"  next metadata write committed {r['commit']:.2f}s"
         f" (writes before {r['write_p50_before'] * 1000:.0f}ms p50; {r['writes_failed']} failed after)"
         f"  healthy part-gap {r['part_gap']:.2f}s ["
         + " ".join(f"n{o}:{g:.2f}" for o, g in r["gap_by_owner"].items()) + "]"
         f" stall {r['stall']:.2f}s"
         + (f"  not serving: " + " ".join(f"n{i} {a:+.2f}..{b:+.2f}s" for i, a, b in ns) if ns else "")
         + (f"  old leader fenced at +{r['victim_fenced_at']:.2f}s" if r["victim_fenced_at"] is not None else "")
         + f"  acked {r['acked']} lost {r['lost']} dup {r['dup']} failed {r['failed']}"
         + (f" unacked-present {r['unacked_present']}" if r["unacked_present"] else "")
         + f"  healthy fenced {r['healthy_fenced_n']}")
    if r.get("write_error"):
        s += f"\n    first failed metadata write after the kill: {r['write_error'][:200]}"
    if r["notes"]:
        s += "\n    note: " + "; ".join(r["notes"])
    return s


def summary_leader(results: list[dict]) -> bool:
    rs = [r for r in results if r.get("mode") == "leader" and "error" not in r]
    errs = sum(1 for r in results if r.get("mode") == "leader" and "error" in r)
    log(f"  leader   trials {len(rs)}" + (f" (+{errs} failed to run)" if errs else ""))
    if not rs:
        return errs > 0
    cm = [r["commit"] for r in rs]
    el = [r["elected"] for r in rs]
    pg = [r["part_gap"] for r in rs]
    st = [r["stall"] for r in rs]
    log(f"           next committed metadata write p50 {pct(cm, 50):.2f} p99 {pct(cm, 99):.2f}"
        f" max {max(cm):.2f} (min {min(cm):.2f})")
    log(f"           new leader named (healthy nodes' /metrics) p50 {pct(el, 50):.2f} max {max(el):.2f}")
    log(f"           healthy owners' partition gap p50 {pct(pg, 50):.2f} p99 {pct(pg, 99):.2f}"
        f" max {max(pg):.2f}; first ack after the kill, slowest partition p50 {pct(st, 50):.2f}"
        f" max {max(st):.2f}")
    ns = [b - a for r in rs for _, a, b in r["not_serving"]]
    if ns:
        log(f"           healthy nodes not serving (their logs: no heartbeat answered): "
            f"{len(ns)} windows, p50 {pct(ns, 50):.2f} max {max(ns):.2f}")
    fe = [r["victim_fenced_at"] for r in rs if r["victim_fenced_at"] is not None]
    if fe:
        log(f"           old leader fenced after p50 {pct(fe, 50):.2f} max {max(fe):.2f}")
    acked, lost, dup, failed = (sum(r[x] for r in rs) for x in ("acked", "lost", "dup", "failed"))
    hf = sum(r["healthy_fenced_n"] for r in rs)
    miss = sum(1 for r in rs if r["missing"])
    log(f"           acked {acked} lost {lost} duplicated {dup} failed deliveries {failed}")
    log(f"           healthy nodes fenced {hf}; trials where Metadata left a healthy node out {miss}")
    log("           leaders killed: " + " ".join(str(r["leader"]) for r in rs))
    never = sum(1 for r in rs if r["commit"] == float("inf") or r["stall"] == float("inf"))
    return lost > 0 or dup > 0 or errs > 0 or hf > 0 or never > 0


def line(r: dict) -> str:
    parts = [f"trial {r['k'] + 1:>2} {r['mode']:<4} owner {r['owner']}"
             + (" (+metadata leader)" if r["meta_leader"] else ""),
             f"-> {sorted(set(r['leaders_after'].values()))}",
             f"exit {r['exit']:.2f}s" if r["mode"] == "term" else "",
             f"unavail {r['unavail']:.2f}s",
             f"gap {r['gap']:.2f}s (at fault{r['gap_from_fault']:+.2f}s)",
             f"part-gap {r['part_gap']:.2f}s [" + " ".join(f"{g:.2f}" for g in r["part_gaps"].values()) + "]",
             f"acked {r['acked']} lost {r['lost']} dup {r['dup']} failed {r['failed']}"
             + (f" conn-errors {r['transport_errors']}" if r["transport_errors"] else "")
             + (f" unacked-present {r['unacked_present']}" if r["unacked_present"] else ""),
             f"bucket {mb(r['bucket_before'])}->{mb(r['bucket_after'])} "
             f"(payload +{mb(r['payload'])}, beyond payload {mb(r['beyond'])}, "
             f"retained at fault {mb(r['retained'])}; new objects {r['new_objects']} "
             + ",".join(f"{k}={mb(v)}" for k, v in sorted(r["new_kinds"].items()))
             + (f"; removed {r['gone_objects'][0]} ({mb(r['gone_objects'][1])})" if r["gone_objects"][0] else "")
             + ")"]
    s = "  ".join(p for p in parts if p)
    if r["notes"]:
        s += "\n    note: " + "; ".join(r["notes"])
    return s


def warnings(path: Path) -> list[str]:
    """The log's WARN/ERROR lines, without openraft's per-heartbeat ones."""
    try:
        lines = path.read_text(errors="replace").splitlines()[-3000:]
    except OSError:
        return []
    return [ln for ln in lines if (" WARN " in ln or " ERROR " in ln or ln.startswith("Error"))
            and "openraft::" not in ln]


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    import math
    return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20,
                    help="trials per mode (default 20; two-of-five: this many of each kind)")
    ap.add_argument("--partitions", type=int, default=4, help="per topic (default 4)")
    ap.add_argument("--mode", choices=["kill", "term", "both", "two-of-five", "leader"], default="both",
                    help="both: kill and term alternate, --trials of each; two-of-five and leader: "
                         "see above (default both)")
    ap.add_argument("--nodes", type=int,
                    help="cluster size (default 3; two-of-five: 5)")
    ap.add_argument("--voters", type=int, choices=[1, 3, 5],
                    help="metadata voters (default 3; two-of-five: 5, so that any two nodes can go)")
    ap.add_argument("--dir", type=Path, default=ROOT / ".drill-cluster")
    ap.add_argument("--base-port", type=int, default=9292,
                    help="the cluster's base port (default 9292: not local-cluster.sh's, and "
                         "below 10000, where the e2e harness never picks a port)")
    ap.add_argument("--s3-port", type=int,
                    help="moto's port (default: local-cluster.sh's choice, 9000 when free)")
    ap.add_argument("--rate", type=float, default=500, help="records/s (default 500)")
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--prefill-bytes", type=int, default=2_000_000,
                    help="payload written before the timed part, per topic: the owner's retained log")
    ap.add_argument("--any-victims", action="store_true",
                    help="two-of-five: rotate over every pair of non-leader nodes, also those that "
                         "own internal topics' partitions (default: the pairs owning the fewest)")
    ap.add_argument("--keep", action="store_true", help="leave the cluster up at the end")
    args = ap.parse_args()
    modes = {"both": ["kill", "term"], "two-of-five": ["single", "double"]}.get(args.mode, [args.mode])
    five = args.mode == "two-of-five"
    nodes = args.nodes or (5 if five else 3)
    voters = args.voters or (5 if five and nodes >= 5 else None)
    if five and nodes < 3:
        ap.error("two-of-five needs at least 3 nodes")
    if args.mode == "leader" and (voters or min(3, nodes)) < 3:
        ap.error("leader needs 3 or 5 voters (a lone voter has no one to take over)")

    import boto3
    cl = Cluster(args.dir, args.base_port, args.s3_port)
    log(f"drill: {args.trials} trial(s) of {'+'.join(modes)}, {args.partitions} partitions"
        f"{' per topic' if args.mode in ('two-of-five', 'leader') else ''}, "
        f"{args.rate:g} records/s of {args.value_bytes} B, prefill {mb(args.prefill_bytes)}; "
        f"{load()}; cluster in {args.dir}")
    results = []
    try:
        bootstrap = cl.up(nodes, voters)
        log(f"cluster up: {bootstrap} ({nodes} nodes, {cl.voters()} voters)")
        s3 = boto3.client("s3", endpoint_url=cl.s3_endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
        k = 0
        for j in range(args.trials):
            order = modes
            if five and j % 2:
                order = modes[::-1]  # single first, then double first: no order bias
            pair = None
            for mode in order:
                try:
                    if mode in ("single", "double"):
                        leader = cl.leader()
                        if pair is None or leader in pair:
                            pairs = pick_pairs(cl, leader,
                                               None if args.any_victims else ownership(bootstrap))
                            pair = pairs[j % len(pairs)]
                            # Alternate which of the two is killed alone.
                            pair = pair if j % 2 == 0 else pair[::-1]
                        r = trial_owners(args, cl, bootstrap, k, mode, pair, leader)
                        results.append(r)
                        log(line_owners(r))
                    elif mode == "leader":
                        r = trial_leader(args, cl, bootstrap, k)
                        results.append(r)
                        log(line_leader(r))
                    else:
                        r = trial(args, cl, bootstrap, s3, k, mode)
                        results.append(r)
                        log(line(r))
                except Exception as e:  # noqa: BLE001
                    log(f"trial {k + 1:>2} {mode:<4} FAILED: {e}")
                    for i in cl.ids():
                        log(f"    n{i} last warnings:")
                        for ln in warnings(cl.log_path(i))[-8:]:
                            log(f"      {ln[:240]}")
                    results.append({"mode": mode, "error": str(e)})
                    # Bring back whatever is down before going on.
                    for i in cl.ids():
                        cl.sh("start", str(i), check=False)
                k += 1
    finally:
        if not args.keep:
            cl.down()

    log(f"\nsummary ({load()}; times in seconds):")
    bad = False
    if five:
        bad |= summary_owners(results)
        modes = []
    elif args.mode == "leader":
        bad |= summary_leader(results)
        modes = []
    for mode in modes:
        rs = [r for r in results if r["mode"] == mode and "error" not in r]
        errs = sum(1 for r in results if r["mode"] == mode and "error" in r)
        un = [r["unavail"] for r in rs]
        gp = [r["gap"] for r in rs]
        pg = [r["part_gap"] for r in rs]
        acked = sum(r["acked"] for r in rs)
        lost = sum(r["lost"] for r in rs)
        dup = sum(r["dup"] for r in rs)
        failed = sum(r["failed"] for r in rs)
        beyond = [r["beyond"] for r in rs]
        name = {"kill": "kill -9", "term": "SIGTERM"}[mode]
        log(f"  {name:<8} trials {len(rs)}" + (f" (+{errs} failed to run)" if errs else ""))
        if rs:
            log(f"           unavailability p50 {pct(un, 50):.2f} p99 {pct(un, 99):.2f} max {max(un):.2f}"
                f" (min {min(un):.2f})")
            log(f"           longest gap    p50 {pct(gp, 50):.2f} p99 {pct(gp, 99):.2f} max {max(gp):.2f}"
                f" (min {min(gp):.2f})")
            log(f"           partition gap  p50 {pct(pg, 50):.2f} p99 {pct(pg, 99):.2f} max {max(pg):.2f}")
            if mode == "term":
                ex = [r["exit"] for r in rs]
                log(f"           exit after SIGTERM p50 {pct(ex, 50):.2f} max {max(ex):.2f}")
            log(f"           acked {acked} lost {lost} duplicated {dup} failed deliveries {failed}")
            both = [r["unavail"] for r in rs if r["meta_leader"]]
            only = [r["unavail"] for r in rs if not r["meta_leader"]]
            for what, xs in (("owner only", only), ("owner + metadata leader", both)):
                if xs:
                    log(f"           unavailability, {what}: {len(xs)} trials, p50 {pct(xs, 50):.2f}"
                        f" max {max(xs):.2f}")
            log(f"           retained bytes moved (upper bound: bucket growth - acked payload): "
                f"max {mb(max(beyond))}, p50 {mb(pct(beyond, 50))}; the owner retained "
                f"{mb(min(r['retained'] for r in rs))}+ at each fault")
        bad |= lost > 0 or dup > 0 or errs > 0
    if bad:
        log("FAILED: records lost or duplicated, trials that did not run"
            + (", a healthy node fenced or a partition that never came back" if not modes else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
