#!/usr/bin/env python3
"""Failover drill: how long producers wait when a partition owner dies, and whether any
acknowledged record is lost or duplicated. Run through scripts/drill-failover.sh.

A 3-node cluster (deploy/local-cluster.sh, moto S3) serves every trial. A trial:
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
  (+metadata leader)   the owner was the metadata quorum's leader too (the survivors'
            logs say they stopped serving until they elected another one)
  bucket    total size of the bucket's objects before the producer started and after the
            flush. "beyond payload" is that growth minus the payload bytes acknowledged in
            between: record framing and object headers, metadata objects, compaction output,
            and any copy of retained data. The owner's retained log at the fault is printed
            next to it: an ownership move that copied that log would make "beyond payload"
            at least that large.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
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
    def __init__(self, d: Path, base_port: int):
        self.dir = d
        self.base_port = base_port
        self.env: dict[str, str] = {}

    def sh(self, *args: str, check: bool = True) -> str:
        r = subprocess.run([str(CLUSTER), *args, "--dir", str(self.dir)], text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if check and r.returncode != 0:
            raise RuntimeError(f"local-cluster.sh {' '.join(args)} failed ({r.returncode}):\n"
                               f"{r.stdout}{r.stderr}")
        return r.stdout

    def up(self) -> str:
        out = self.sh("up", "--nodes", "3", "--base-port", str(self.base_port))
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
    def __init__(self, bootstrap: str, topic: str, partitions: int, rate: float,
                 value_bytes: int, tag: str):
        self.topic, self.partitions, self.rate = topic, partitions, rate
        self.value_bytes, self.tag = value_bytes, tag
        self.lock = threading.Lock()
        self.produced: dict[bytes, float] = {}
        self.acks: list[tuple[float, int, bytes]] = []  # (time, partition, value)
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
                self.acks.append((now, msg.partition(), msg.value()))

    def value(self, i: int) -> bytes:
        head = b"%s-%07d-" % (self.tag.encode(), i)
        return head + b"x" * max(0, self.value_bytes - len(head))

    def prefill(self, nbytes: int, start: int = 0) -> int:
        """Synchronously writes ~nbytes of records (acknowledged ones count as acked)."""
        n = max(0, nbytes // self.value_bytes)
        for i in range(start, start + n):
            v = self.value(i)
            while True:
                try:
                    self.p.produce(self.topic, value=v, partition=i % self.partitions,
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
            try:
                self.p.produce(self.topic, value=v, partition=i % self.partitions,
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
        self.stop.set()
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


def read_back(bootstrap: str, topic: str, partitions: int, timeout: float = 90) -> Counter:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"drill-{topic}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest", "log_level": 2})
    try:
        hw = {}
        for p in range(partitions):
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=20)
            hw[p] = hi
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        seen: Counter = Counter()
        pos = {p: 0 for p in range(partitions)}
        deadline = time.monotonic() + timeout
        while any(pos[p] < hw[p] for p in pos) and time.monotonic() < deadline:
            for m in c.consume(500, 0.5):
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        log(f"    consume error: {m.error()}")
                    continue
                seen[m.value()] += 1
                pos[m.partition()] = max(pos[m.partition()], m.offset() + 1)
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
    admin.create_topics([NewTopic(topic, args.partitions, 1)])[topic].result(30)
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
    log_at = {i: cl.log_path(i).stat().st_size for i in ids if i != owner}
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
    # Whether the owner was the metadata leader as well: then the survivors stop serving
    # until they elect another one, and say so in their logs.
    r["meta_leader"] = False
    for i, at in log_at.items():
        with open(cl.log_path(i), "rb") as f:
            f.seek(at)
            if b"no heartbeat answered by the metadata leader" in f.read():
                r["meta_leader"] = True
    # Gaps over the timed part: acknowledgements of records produced after the prefill.
    timed = [(a, p) for a, p, v in w.acks if w.produced[v] >= t_start]
    r["gap"], gap_at = longest_gap([a for a, _ in timed])
    r["gap_from_fault"] = gap_at - t_fault
    per_part = defaultdict(list)
    for a, p in timed:
        per_part[p].append(a)
    r["part_gaps"] = {p: longest_gap(per_part[p])[0] for p in sorted(per_part)}
    r["part_gap"] = max(r["part_gaps"].values(), default=0.0)

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
    r["leaders_after"] = leaders(bootstrap, topic)
    if owner in r["leaders_after"].values():
        r["notes"].append(f"partitions still on the stopped node: {r['leaders_after']}")

    seen = read_back(bootstrap, topic, args.partitions)
    r["lost"] = len(acked - set(seen))
    r["dup"] = sum(1 for v in acked if seen[v] > 1)
    r["dup_unacked"] = sum(1 for v, n in seen.items() if n > 1 and v not in acked)
    r["unacked_present"] = sum(1 for v in seen if v not in acked)
    if r["lost"]:
        lost = sorted(acked - set(seen))
        r["notes"].append(f"lost e.g. {[x[:16] for x in lost[:3]]}")

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
    ap.add_argument("--trials", type=int, default=20, help="trials per mode (default 20)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--mode", choices=["kill", "term", "both"], default="both",
                    help="both: the modes alternate, --trials of each")
    ap.add_argument("--dir", type=Path, default=ROOT / ".drill-cluster")
    ap.add_argument("--base-port", type=int, default=9292,
                    help="the cluster's base port (default 9292: not local-cluster.sh's, and "
                         "below 10000, where the e2e harness never picks a port)")
    ap.add_argument("--rate", type=float, default=500, help="records/s (default 500)")
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--prefill-bytes", type=int, default=2_000_000,
                    help="payload written before the timed part: the owner's retained log")
    ap.add_argument("--keep", action="store_true", help="leave the cluster up at the end")
    args = ap.parse_args()
    modes = ["kill", "term"] if args.mode == "both" else [args.mode]

    import boto3
    cl = Cluster(args.dir, args.base_port)
    log(f"drill: {args.trials} trial(s) of {'+'.join(modes)}, {args.partitions} partitions, "
        f"{args.rate:g} records/s of {args.value_bytes} B, prefill {mb(args.prefill_bytes)}; "
        f"{load()}; cluster in {args.dir}")
    results = []
    try:
        bootstrap = cl.up()
        log(f"cluster up: {bootstrap}")
        s3 = boto3.client("s3", endpoint_url=cl.s3_endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
        k = 0
        for _ in range(args.trials):
            for mode in modes:
                try:
                    r = trial(args, cl, bootstrap, s3, k, mode)
                except Exception as e:  # noqa: BLE001
                    log(f"trial {k + 1:>2} {mode:<4} FAILED: {e}")
                    for i in cl.ids():
                        log(f"    n{i} last warnings:")
                        for ln in warnings(cl.log_path(i))[-8:]:
                            log(f"      {ln[:240]}")
                    results.append({"mode": mode, "error": str(e)})
                    k += 1
                    # Bring back whatever is down before going on.
                    for i in cl.ids():
                        cl.sh("start", str(i), check=False)
                    continue
                results.append(r)
                log(line(r))
                k += 1
    finally:
        if not args.keep:
            cl.down()

    log(f"\nsummary ({load()}; times in seconds):")
    bad = False
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
        log("FAILED: records lost or duplicated, or trials that did not run")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
