#!/usr/bin/env python3
"""Produce latency on a 1-node and on a 3-node cluster, in the same run: what the metadata
quorum and the hops between nodes add to an acks=all acknowledgement. Run through
scripts/bench-cluster-latency.sh.

For each round (--rounds, default 1) and each size in --sizes (default 1,3, in that
order), the run:
  1. starts a cluster with deploy/local-cluster.sh (moto S3, the script's settings:
     wal.batch.interval.ms 20; 1 node = 1 voter, 3 nodes = 3 voters);
  2. creates --topics topics (default 3) of --partitions partitions (default 4) each, the
     t-th assigned to node 1 + t mod N (a manual assignment, through that node): on 3 nodes
     every node owns one topic, on 1 node the same partitions all on node 1;
  3. produces --rate records/s (default 1000) of --value-bytes (default 100) round-robin
     over every partition with one confluent-kafka producer (acks=all, linger.ms
     --linger-ms (5, librdkafka's default), no idempotence, bootstrap = every node), first
     --warmup s (default 3) not counted, then --seconds s (default 30) measured;
  4. takes each record's latency from librdkafka (Message.latency(): produce() to the
     delivery report's arrival), stops the cluster.

Prints per cluster p50 / p99 / p99.9 / max / mean over the measured records (and on the
cluster with several nodes, per owner: the metadata leader's topics and the others', as the
others' WAL commits are forwarded to the leader), how many measured seconds held a record
slower than --slow-ms (100) and the five slowest seconds (by their slowest record: a
steady slowdown and a few stalls look different), where the nodes' WAL time went (their
/metrics histograms, every node, the whole cluster's life: object PUT, Raft commit, and the
flush holding both; the object store is one moto process on this machine, and N nodes send
it N times the PUTs), then the ratios 3-node / 1-node of p50
and p99 against the target p99 ratio <= 1.2. Exit status 1 if a record failed or the run could
not be made; the ratio itself does not set the exit status.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drill_failover import Cluster, load, log, wait_brokers  # noqa: E402

from confluent_kafka import KafkaError, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted xs."""
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]


def stats(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"n": len(xs), "p50": pct(xs, 50), "p99": pct(xs, 99), "p999": pct(xs, 99.9),
            "max": xs[-1] if xs else float("nan"),
            "mean": sum(xs) / len(xs) if xs else float("nan")}


def fmt(s: dict) -> str:
    return (f"n {s['n']:>6}  p50 {s['p50']:6.2f}  p99 {s['p99']:6.2f}  p99.9 {s['p999']:6.2f}"
            f"  max {s['max']:7.2f}  mean {s['mean']:6.2f} ms")


HISTOGRAMS = {  # what the label says -> (series, label filter)
    "WAL object PUT": ("shale_object_request_seconds_bucket", 'op="put"'),
    "WAL commit (Raft)": ("shale_wal_commit_seconds_bucket", ""),
    "WAL flush (PUT+commit)": ("shale_wal_flush_seconds_bucket", ""),
}


def node_histograms(cl: Cluster) -> dict[str, dict[float, float]]:
    """Every node's cumulative buckets, summed: label -> {le: count}."""
    out: dict[str, dict[float, float]] = {k: {} for k in HISTOGRAMS}
    for i in cl.ids():
        url = f"http://{cl.env[f'HOST_{i}']}:{cl.env[f'APORT_{i}']}/metrics"
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode(errors="replace")
        except OSError:
            continue
        for ln in text.splitlines():
            for what, (series, label) in HISTOGRAMS.items():
                if ln.startswith(series + "{") and label in ln:
                    le = ln.split('le="', 1)[1].split('"', 1)[0]
                    b = out[what]
                    b[float("inf") if le == "+Inf" else float(le)] = \
                        b.get(float("inf") if le == "+Inf" else float(le), 0) + float(ln.rsplit(" ", 1)[1])
    return out


def hist_line(b: dict[float, float]) -> str:
    """Count, the bucket bound holding the p99, and the share above 25 ms and 100 ms."""
    if not b or not b.get(float("inf")):
        return "no samples"
    n = b[float("inf")]
    p99 = next(le for le in sorted(b) if b[le] >= 0.99 * n)
    above = lambda x: 100.0 * (n - b.get(x, n)) / n  # noqa: E731
    return (f"n {n:.0f}, p99 <= {p99 * 1000:g} ms, > 25 ms {above(0.025):.1f}%, "
            f"> 100 ms {above(0.1):.1f}%")


def measure(args, cl: Cluster, bootstrap: str, size: int, rnd: int) -> dict:
    ids = cl.ids()
    owners = {}
    for t in range(args.topics):
        via = ids[t % len(ids)]
        name = f"lat-r{rnd}-n{size}-t{t}"
        admin = AdminClient({"bootstrap.servers": cl.addr(via), "log_level": 2})  # held: the future needs it
        owned = NewTopic(name, args.partitions, replica_assignment=[[via]] * args.partitions)
        admin.create_topics([owned])[name].result(30)
        owners[name] = via
    # Every partition has its leader (the assigned node) before the clock starts.
    deadline = time.monotonic() + 20
    while True:
        md = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2}).list_topics(timeout=10)
        lead = {(t, p.id): p.leader for t in owners for p in md.topics[t].partitions.values()} \
            if all(t in md.topics for t in owners) else {}
        if len(lead) == args.topics * args.partitions and all(v >= 0 for v in lead.values()):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics without leaders after 20 s: {lead}")
        time.sleep(0.1)
    moved = {k: v for k, v in lead.items() if v != owners[k[0]]}
    leader = cl.leader() if size > 1 else ids[0]

    targets = sorted(lead)
    lat: dict[str, list[float]] = {t: [] for t in owners}
    per_second: dict[int, list[float]] = {}  # second of the measured window -> latencies
    failed: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def on_delivery(err, msg):
        if err is not None:
            with lock:
                failed.append(str(err))
            return
        if msg.value()[:1] == b"m":  # produced in the measured window
            ms = msg.latency() * 1000.0
            sec = int(time.monotonic() - msg.latency() - t_measure)
            with lock:
                lat[msg.topic()].append(ms)
                per_second.setdefault(sec, []).append(ms)

    def on_error(err):
        if err.code() not in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
            errors.append(str(err))

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": args.linger_ms,
                  "enable.idempotence": False, "error_cb": on_error, "log_level": 2})
    pad_w = b"w" * args.value_bytes
    pad_m = b"m" * args.value_bytes
    period = 1.0 / args.rate
    start = time.monotonic()
    t_measure = start + args.warmup
    end = t_measure + args.seconds
    i = 0
    sent = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = start + i * period
        if due > now:
            p.poll(due - now)  # serve delivery reports while waiting for the next send
            continue
        if now - due > 0.5:
            # Behind by more than half a second (a descheduled client): do not burst.
            start += now - due
            due = now
        topic, part = targets[i % len(targets)]
        try:
            p.produce(topic, value=pad_m if now >= t_measure else pad_w, partition=part,
                      on_delivery=on_delivery)
            sent += now >= t_measure
        except BufferError:
            p.poll(0.01)
            continue
        i += 1
        p.poll(0)
    left = p.flush(60)
    with lock:
        per_topic = {t: list(v) for t, v in lat.items()}
        nfailed = len(failed)
    all_lat = [x for v in per_topic.values() for x in v]
    r = {"size": size, "round": rnd, "leader": leader, "owners": owners, "moved": moved,
         "all": stats(all_lat), "sent": sent, "failed": nfailed, "unflushed": left,
         "errors": errors[:3], "elapsed": time.monotonic() - t_measure,
         "by_owner": {}}
    with lock:
        secs = {k: max(v) for k, v in per_second.items()}
    r["worst_seconds"] = sorted(secs.items(), key=lambda kv: -kv[1])[:5]
    r["slow_seconds"] = sum(1 for v in secs.values() if v > args.slow_ms)
    r["histograms"] = node_histograms(cl)
    if size > 1:
        lead_l = [x for t, v in per_topic.items() if owners[t] == leader for x in v]
        other_l = [x for t, v in per_topic.items() if owners[t] != leader for x in v]
        r["by_owner"] = {f"leader's topics (node {leader})": stats(lead_l),
                         "other nodes' topics": stats(other_l)}
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,3", help="cluster sizes, in order (default 1,3)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the sizes this many times, alternating (default 1)")
    ap.add_argument("--seconds", type=float, default=30, help="measured seconds per cluster (30)")
    ap.add_argument("--warmup", type=float, default=3, help="seconds not counted first (3)")
    ap.add_argument("--rate", type=float, default=1000, help="records/s (1000)")
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--topics", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=4, help="per topic (4)")
    ap.add_argument("--linger-ms", type=float, default=5)
    ap.add_argument("--slow-ms", type=float, default=100,
                    help="count the measured seconds holding a record slower than this (100)")
    ap.add_argument("--dir", type=Path, default=ROOT / ".bench-latency",
                    help="cluster dirs go under it (nN/)")
    ap.add_argument("--base-port", type=int, default=9392)
    ap.add_argument("--s3-port", type=int, help="moto's port (default: local-cluster.sh's choice)")
    ap.add_argument("--keep", action="store_true", help="leave the last cluster up")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]

    log(f"bench: sizes {sizes} x {args.rounds} round(s), {args.rate:g} records/s of "
        f"{args.value_bytes} B over {args.topics}x{args.partitions} partitions, acks=all, "
        f"linger.ms {args.linger_ms:g}, {args.warmup:g} s warm-up + {args.seconds:g} s; {load()}")
    results = []
    bad = False
    for rnd in range(args.rounds):
        for n, size in enumerate(sizes):
            cl = Cluster(args.dir / f"n{size}", args.base_port, args.s3_port)
            last = rnd == args.rounds - 1 and n == len(sizes) - 1
            try:
                bootstrap = cl.up(size)
                wait_brokers(bootstrap, set(cl.ids()))
                log(f"round {rnd + 1}: {size}-node cluster up ({bootstrap}, {cl.voters()} voters); {load()}")
                r = measure(args, cl, bootstrap, size, rnd)
            except Exception as e:  # noqa: BLE001
                log(f"round {rnd + 1}: {size}-node cluster FAILED: {e}")
                bad = True
                continue
            finally:
                if not (args.keep and last):
                    cl.down()
            results.append(r)
            log(f"  {size} node(s), leader {r['leader']}: {fmt(r['all'])}  ({load()})")
            for what, st in r["by_owner"].items():
                log(f"      {what:<28} {fmt(st)}")
            log(f"      seconds with a record slower than {args.slow_ms:g} ms: {r['slow_seconds']}"
                f" of {args.seconds:g}; slowest (second of the window: max ms) "
                + " ".join(f"{k}:{v:.0f}" for k, v in r["worst_seconds"]))
            for what, b in r["histograms"].items():
                log(f"      {what:<23} (every node, whole run) {hist_line(b)}")
            if r["moved"]:
                log(f"      note: partitions not on the node they were created through: {r['moved']}")
            if r["failed"] or r["unflushed"]:
                log(f"      FAILED deliveries {r['failed']}, unflushed {r['unflushed']}")
                bad = True
            if r["errors"]:
                log(f"      producer errors: {r['errors']}")
            if r["all"]["n"] < 0.9 * args.rate * args.seconds:
                log(f"      note: {r['all']['n']} records measured, fewer than 90% of "
                    f"{args.rate * args.seconds:g} (the client fell behind the rate)")

    log(f"\nsummary ({load()}; latency = produce() to delivery report, acks=all, ms):")
    pooled = {}
    for size in sizes:
        rs = [r for r in results if r["size"] == size]
        if not rs:
            continue
        for r in rs:
            log(f"  {size} node(s) round {r['round'] + 1}: p50 {r['all']['p50']:.2f} "
                f"p99 {r['all']['p99']:.2f} max {r['all']['max']:.2f} (n {r['all']['n']})")
        pooled[size] = rs
    if 1 in pooled and 3 in pooled:
        for a, b in zip(pooled[1], pooled[3]):
            log(f"  round {a['round'] + 1}: 3-node / 1-node  p50 {b['all']['p50'] / a['all']['p50']:.2f}x"
                f"  p99 {b['all']['p99'] / a['all']['p99']:.2f}x  (target p99 ratio <= 1.2)")
        if len(pooled[1]) > 1:
            p99_1 = sorted(r["all"]["p99"] for r in pooled[1])
            p99_3 = sorted(r["all"]["p99"] for r in pooled[3])
            med = lambda xs: xs[len(xs) // 2]  # noqa: E731
            log(f"  median over rounds: p99 {med(p99_1):.2f} vs {med(p99_3):.2f} ms: "
                f"{med(p99_3) / med(p99_1):.2f}x")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
