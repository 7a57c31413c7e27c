#!/usr/bin/env python3
"""A fault harness for a Shale cluster, modelled on Jepsen's Kafka workload and checkers.

    chaos.py --nodes 3 --seconds N --faults kill,pause,partition,store,leader
             [--seed S] [--dir DIR] [--keep] [--rate R] [--txn/--no-txn]

Starts a moto S3 server, the fault proxies (proxy.py, a process of their own) and a cluster
(cluster.py), runs the workload (workload.py: two idempotent acks=all producers, an assigned
consumer, a consumer group of two, and, unless --no-txn, two exactly-once read-process-write
processors: a read_committed group of its own on topic chaos-1, transactions writing to
chaos-txn-out with the consumed offsets) while the nemesis (nemesis.py) injects faults for N
seconds, heals everything, lets the consumers catch up, reads every partition back and
checks the history (checker.py). Prints one verdict line

    chaos: PASS seconds=N seed=S faults=... acked=N lost=0 duplicated=0 offset_anomalies=0
           skipped=0 stuck=0 crashed=0 fatal=0 txn_lost=0 txn_duplicated=0 txn_phantom=0
           txn_aborted_read=0 injected=kill:4,pause:3,...

(on one line) and a few lines of figures; exit status 0 on PASS, 1 on FAIL, 2 when the
harness itself failed. The run's artifacts (node logs, proxy and moto logs, chaos.log, the
history as history.json, verdict.txt) are in --dir (default: a temporary directory, removed
on PASS unless --keep).

The transactional stage (workload.TxnProcessor, checker.check_txn): the output topic is
created through another node than its input (the transaction coordinator, the input's and the
output's owners are spread; markers cross nodes); its committed output must hold every input
record below the EOS group's final committed offsets exactly once, nothing else, nothing of
an attempt that aborted, and the group must reach the input's end after the heal.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "e2e"))

import harness  # noqa: E402
from checker import check, pk  # noqa: E402
from cluster import Cluster  # noqa: E402
from nemesis import ALL_FAULTS, Nemesis  # noqa: E402
from checker import check_txn  # noqa: E402
from workload import (AssignedConsumer, GroupConsumer, OwnershipSampler, Producer,  # noqa: E402
                      TxnProcessor, CLIENT_LOG, committed_offsets, final_read, log_clients_to,
                      read_to_end, watermarks)

VERDICT_KINDS = ("lost", "duplicated", "offset_anomalies", "skipped", "stuck", "crashed", "fatal")
TXN_KINDS = ("txn_lost", "txn_duplicated", "txn_phantom", "txn_aborted_read")
GROUP = "chaos-group"
TXN_GROUP = "chaos-eos-group"
TXN_IN = "chaos-1"
TXN_OUT = "chaos-txn-out"


@dataclass
class Options:
    nodes: int = 3
    seconds: float = 60
    faults: list = field(default_factory=lambda: list(ALL_FAULTS))
    seed: int | None = None
    rate: float = 200.0          # messages/s per producer
    producers: int = 2
    group_members: int = 2
    partitions_per_topic: int = 2  # one topic per node, created through that node
    catch_up: float = 30.0       # consumers' deadline after the producers stop
    post_heal_acks: int = 20     # acks of post-heal sends each producer must get
    examples: int = 5
    producer_debug: str = "eos,topic"  # librdkafka debug contexts of the producers (clients.log)
    txn: bool = True             # the transactional read-process-write stage
    txn_processors: int = 2
    txn_out_partitions: int = 4
    txn_timeout_ms: int = 10000
    txn_debug: str = "eos"       # librdkafka debug contexts of the transactional producers
    # The transactional stage's deadline after the producers stop: it works through the
    # backlog an outage left at ~100 records per transaction, so it may need longer than the
    # consumers.
    txn_catch_up: float = 60.0


@dataclass
class Result:
    passed: bool
    verdict: str
    summary: str
    counts: dict
    examples: dict
    figures: dict
    workdir: Path


class _Log:
    def __init__(self, path: Path, echo: bool):
        self.f = open(path, "a", buffering=1)
        self.echo = echo

    def __call__(self, line: str, echo: bool = True):
        wall = time.strftime("%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
        self.f.write(f"{wall} {line}\n")
        if self.echo and echo:
            print(line, file=sys.stderr, flush=True)

    def close(self):
        self.f.close()


def _pin_binary(workdir: Path) -> Path:
    """The binary can be replaced (renamed over) while a run is on: every start of the
    run uses the one it began with (a hard link, else a copy)."""
    src = harness.shale_bin()
    dst = workdir / "shale.bin"
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _ack_gaps(acks: list[float], t_from: float, t_to: float) -> float:
    ts = sorted(t for t in acks if t_from <= t <= t_to)
    if not ts:
        return t_to - t_from
    edges = [t_from] + ts + [t_to]
    return max(b - a for a, b in zip(edges, edges[1:]))


def run(opts: Options, workdir: Path | None = None, moto: harness.MotoServer | None = None,
        echo: bool = True, procs: list | None = None) -> Result:
    """One chaos run. `moto`: an S3 server to use (else one is started here). `procs`: a
    list the cluster's nodes are appended to (for a test's failure report)."""
    seed = opts.seed if opts.seed is not None else random.randrange(1 << 31)
    rng = random.Random(seed)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="shale-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log = _Log(workdir / "chaos.log", echo)
    log_clients_to(workdir / "clients.log")
    log(f"chaos: seed={seed} seconds={opts.seconds} faults={','.join(opts.faults)} dir={workdir}")
    saved_bin = os.environ.get("SHALE_BIN")
    os.environ["SHALE_BIN"] = str(_pin_binary(workdir))
    own_moto = moto is None
    cluster = None
    threads = []
    try:
        if own_moto:
            moto = harness.MotoServer(workdir / "moto").start()
        cluster = Cluster(workdir, moto, opts.nodes, log=log)
        if procs is not None:
            procs.extend(cluster.nodes)
        log(f"chaos: admin.http.listener {'supported' if cluster.admin_http else 'not supported'}: "
            f"leader found {'from /metrics' if cluster.admin_http else 'from the node logs'}")
        cluster.start()
        t0 = time.monotonic()
        log(f"chaos: t=0 is {time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}Z (node logs are UTC)")

        # Topics: one per node, created through it (it owns them at first).
        from confluent_kafka.admin import AdminClient, NewTopic
        topics, parts = [], []
        for i, node in enumerate(cluster.nodes):
            name = f"chaos-{i + 1}"
            admin = AdminClient({"bootstrap.servers": node.bootstrap, "logger": CLIENT_LOG})
            admin.create_topics([NewTopic(name, opts.partitions_per_topic, 1)])[name].result(30)
            topics.append(name)
            parts += [(name, p) for p in range(opts.partitions_per_topic)]
        txn_in_parts = [p for p in parts if p[0] == TXN_IN] if opts.txn else []
        if opts.txn:
            # The output through another node than the input's (chaos-1: node 1).
            admin = AdminClient({"bootstrap.servers": cluster.nodes[1].bootstrap, "logger": CLIENT_LOG})
            admin.create_topics([NewTopic(TXN_OUT, opts.txn_out_partitions, 1)])[TXN_OUT].result(30)
        log(f"chaos: topics {topics} ({len(parts)} partitions)"
            + (f"; transactional stage {TXN_IN} -> {TXN_OUT} ({opts.txn_out_partitions} partitions), "
               f"{opts.txn_processors} processors" if opts.txn else ""))

        bootstrap = cluster.bootstrap
        producers = [Producer(k + 1, bootstrap, parts, opts.rate, t0, opts.producer_debug) for k in range(opts.producers)]
        assigned = AssignedConsumer(bootstrap, parts, t0)
        group = [GroupConsumer(k + 1, bootstrap, GROUP, topics, t0) for k in range(opts.group_members)]
        sampler = OwnershipSampler(bootstrap, topics + ([TXN_OUT] if opts.txn else []), t0)
        processors = [TxnProcessor(k + 1, bootstrap, TXN_GROUP, [TXN_IN], TXN_OUT, opts.txn_out_partitions,
                                   t0, opts.txn_timeout_ms, opts.txn_debug)
                      for k in range(opts.txn_processors if opts.txn else 0)]
        threads = [*producers, assigned, *group, sampler, *processors]
        for t in threads:
            t.start()
        # Let the workload get going before the first fault.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(p.acks_of_sends_after(0) < 50 for p in producers):
            time.sleep(0.2)
        if any(p.acks_of_sends_after(0) < 50 for p in producers):
            raise RuntimeError("the workload did not get going before any fault: "
                               f"{[p.acks_of_sends_after(0) for p in producers]} acks")
        while time.monotonic() < deadline and processors and sum(x.counts["commits"] for x in processors) < 2:
            time.sleep(0.2)
        if processors and sum(x.counts["commits"] for x in processors) < 2:
            raise RuntimeError("the transactional stage did not get going before any fault: "
                               f"commits {[x.counts['commits'] for x in processors]}, errors "
                               f"{[x.errors[-3:] for x in processors]}, failures {[x.failure for x in processors]}")

        t_faults = time.monotonic() - t0
        # The nemesis's clock is the run's (t0); it stops injecting at t_faults + seconds.
        nemesis = Nemesis(cluster, opts.faults, t_faults + opts.seconds, rng, t0, log)
        nemesis.start()
        while not nemesis.finished.wait(1.0):
            crashed = [i for i in cluster.crashed()]
            if crashed:
                log(f"chaos: node(s) {[i + 1 for i in crashed]} exited unexpectedly")
                nemesis.stop_event.set()
        t_heal = time.monotonic() - t0
        log(f"chaos: faults over and healed at t={t_heal:.2f}s")
        crashed_nodes = [f"node {i + 1} exited unexpectedly (status {cluster.nodes[i].proc.returncode})"
                         for i in cluster.crashed()]
        for i in cluster.crashed():
            cluster.expected_down.add(i)
            ok, what = cluster.restart(i)
            log(f"chaos: restarted crashed node {i + 1}: {ok} {what}")

        # Producers must get acknowledgements again.
        stuck_producers = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(p.acks_of_sends_after(t_heal) < opts.post_heal_acks
                                                  for p in producers):
            time.sleep(0.2)
        first_ack_after_heal = {}
        for p in producers:
            n = p.acks_of_sends_after(t_heal)
            acks = [h[1] for h in p.acked().values() if h[1] >= t_heal]
            first_ack_after_heal[p.pid] = round(min(acks) - t_heal, 2) if acks else None
            if n < opts.post_heal_acks:
                stuck_producers.append(f"producer {p.pid}: {n} acks of records sent in the 30 s after the heal")
        t_stop = time.monotonic() - t0
        for p in producers:
            p.stop_producing.set()
        for p in producers:
            p.done.wait(p.flush_timeout + 30)
            if p.pending_after_flush:
                stuck_producers.append(f"producer {p.pid}: {p.pending_after_flush} records with no "
                                       f"delivery report {p.flush_timeout:.0f} s after it stopped")
        hist = {}
        for p in producers:
            hist.update(p.snapshot())
        acked = {v: h for v, h in hist.items() if h[1] is not None and h[5] is None}
        log(f"chaos: producers stopped at t={t_stop:.2f}s, {len(acked)} acked of {len(hist)}")

        # Consumers catch up with every acknowledged record (or the deadline passes); the
        # transactional stage's committed offsets with the input's end.
        txn_in_end = watermarks(bootstrap, txn_in_parts) if processors else {}
        deadline = time.monotonic() + opts.catch_up
        txn_deadline = time.monotonic() + max(opts.txn_catch_up, opts.catch_up)
        caught_up_at = None
        txn_caught_up_at = None if processors else 0.0

        def txn_committed():
            c = {}
            for x in processors:
                for p, o in list(x.committed.items()):
                    c[p] = max(c.get(p, -1), o)
            return c

        consumers_judged = False  # the consumers' deadline passed: what they miss is final
        while True:
            if caught_up_at is None and not consumers_judged:
                unseen_a = set(acked) - assigned.seen_values()
                g = set()
                for c in group:
                    g |= c.seen_values()
                unseen_g = set(acked) - g
                if not unseen_a and not unseen_g:
                    caught_up_at = time.monotonic() - t0
                consumers_judged = time.monotonic() > deadline
            if txn_caught_up_at is None:
                tc = txn_committed()
                if len(txn_in_end) == len(txn_in_parts) and all(tc.get(p, -1) >= e for p, e in txn_in_end.items()):
                    txn_caught_up_at = time.monotonic() - t0
            if caught_up_at is not None and txn_caught_up_at is not None:
                break
            if time.monotonic() > deadline and (txn_caught_up_at is not None or time.monotonic() > txn_deadline):
                break
            time.sleep(0.5)
        log(f"chaos: consumers {'caught up at t=%.2fs' % caught_up_at if caught_up_at else 'did not catch up'}"
            f" (assigned missing {len(unseen_a)}, group missing {len(unseen_g)})")
        txn_stuck = []
        if processors:
            tc = txn_committed()
            log(f"chaos: transactional stage {'caught up at t=%.2fs' % txn_caught_up_at if txn_caught_up_at else 'did not catch up'}"
                f" (committed { {pk(p): tc.get(p) for p in txn_in_parts} }, input end { {pk(p): e for p, e in txn_in_end.items()} })")
            if txn_caught_up_at is None:
                txn_stuck.append(f"transactional stage: committed offsets { {pk(p): tc.get(p) for p in txn_in_parts} } "
                                 f"not at the input's end { {pk(p): e for p, e in txn_in_end.items()} } "
                                 f"{max(opts.txn_catch_up, opts.catch_up):g} s after the producers stopped; processors in: "
                                 f"{[x.hung() for x in processors]}")
        for t in [assigned, *group, sampler, *processors]:
            t.stop_event.set()
        for t in [assigned, *group, sampler]:
            t.join(30)
        for x in processors:
            x.join(45)
            if x.is_alive():
                txn_stuck.append(f"processor {x.idx} still running 45 s after it was told to stop: in {x.hung()}")
            if x.failure:
                raise RuntimeError(f"processor {x.idx} failed (harness):\n{x.failure}")
        final_committed = committed_offsets(bootstrap, GROUP, parts)
        txn_out = {}
        if processors:
            eos_committed = committed_offsets(bootstrap, TXN_GROUP, txn_in_parts)
            out_parts = [(TXN_OUT, p) for p in range(opts.txn_out_partitions)]
            # Every transaction ends (commit, abort, or the coordinator's timeout abort):
            # the last stable offset of each output partition reaches its high watermark.
            lso_deadline = time.monotonic() + opts.txn_timeout_ms / 1000 + 20
            while True:
                hw = watermarks(bootstrap, out_parts)
                lso = watermarks(bootstrap, out_parts, "read_committed")
                if all(lso.get(p, -1) >= hw.get(p, 0) for p in out_parts) or time.monotonic() > lso_deadline:
                    break
                time.sleep(1)
            for p in out_parts:
                if lso.get(p, -1) < hw.get(p, 0):
                    txn_stuck.append(f"{pk(p)}: last stable offset {lso.get(p)} below the high watermark "
                                     f"{hw.get(p)} {opts.txn_timeout_ms / 1000 + 20:g} s after the processors "
                                     f"stopped (a transaction left open)")
            c_out, c_end, c_short, c_err = read_to_end(bootstrap, TXN_OUT, opts.txn_out_partitions, "read_committed")
            u_out, u_end, u_short, u_err = read_to_end(bootstrap, TXN_OUT, opts.txn_out_partitions, "read_uncommitted")
            for p in c_short:
                txn_stuck.append(f"read_committed read of {TXN_OUT}/{p} did not reach its end {c_end.get(p)}")
            txn_out = {"eos_committed": eos_committed, "committed": c_out, "uncommitted": u_out,
                       "lso": lso, "hw": hw, "errors": (c_err + u_err)[:100]}
            log(f"chaos: transactional output: {sum(len(v) for v in c_out.values())} committed records, "
                f"{sum(len(v) for v in u_out.values())} read_uncommitted; last stable offsets "
                f"{ {pk(p): o for p, o in lso.items()} }, high watermarks { {pk(p): o for p, o in hw.items()} }; "
                f"EOS group committed { {pk(p): o for p, o in eos_committed.items()} }")
        final, high, short, read_errors = final_read(bootstrap, parts)
        log(f"chaos: final read: {sum(len(v) for v in final.values())} records, high watermarks "
            f"{ {pk(p): h for p, h in high.items()} }" + (f", short: {[pk(p) for p in short]}" if short else ""))

        fatal = [f"producer {p.pid} at t={t:.2f}s: {e}" for p in producers for t, e in p.fatal]
        crashed_nodes += nemesis.restart_problems
        if nemesis.error:
            raise RuntimeError(f"nemesis failed:\n{nemesis.error}")
        group_commits = [c for m in group for c in m.commits]
        group_seen = [s for m in group for s in m.seen]
        anomalies, figs = check(
            parts=parts, producers_hist=hist, assigned_seen=assigned.seen, group_seen=group_seen,
            group_commits=group_commits, final_committed=final_committed, final=final,
            final_short=short, stuck_producers=stuck_producers, unseen_assigned=unseen_a,
            unseen_group=unseen_g, crashed=crashed_nodes, fatal=fatal)
        if processors:
            figs.update(check_txn(
                anomalies, in_parts=txn_in_parts, final=final, committed_out=txn_out["committed"],
                uncommitted_out=txn_out["uncommitted"], eos_committed=txn_out["eos_committed"],
                attempts={x.idx: x.attempts for x in processors}, stuck=txn_stuck))
            tsum = Counter()
            for x in processors:
                tsum.update(x.counts)
            lat = [v for x in processors for v in x.commit_latency]
            ctimes = sorted(t for x in processors for t in x.commit_times)
            errs, client_errors = Counter(), 0
            for x in processors:
                for t, call, e in x.errors:
                    if call == "error_cb":  # librdkafka's connection noise: only counted
                        client_errors += 1
                    else:
                        errs[f"{call}: {e[:160]}"] += 1
            figs["txn"] = {
                **dict(tsum), "attempts": sum(len(x.attempts) for x in processors),
                "rebalances": sum(1 for x in processors for e in x.events if e[1] == "assign"),
                "input_committed": sum(max(o, 0) for o in txn_out["eos_committed"].values()),
                "caught_up_s_after_stop": round(txn_caught_up_at - t_stop, 2) if txn_caught_up_at else None,
                "commit_latency_s": {"mean": round(sum(lat) / len(lat), 3) if lat else None,
                                     "max": round(max(lat), 2) if lat else None},
                "max_commit_gap_faults_s": round(_ack_gaps(ctimes, t_faults, t_heal), 2),
                "errors": dict(errs.most_common(8)), "client_errors": client_errors,
            }

        # Figures.
        fault_window = (t_faults, t_heal)
        acks_all = [h[1] for h in acked.values()]
        per_part_acks = {}
        for h in acked.values():
            per_part_acks.setdefault((h[2], h[3]), []).append(h[1])
        # Per down fault: how long until every partition acknowledged again (the first ack
        # after the injection, on the slowest partition), and which partition that was. A
        # fault followed by the next down fault before every partition recovered counts as
        # "overlapped" (its recovery is not known), not as a long recovery.
        recovery, overlapped = {}, Counter()
        worst = None
        sorted_acks = {p: sorted(v) for p, v in per_part_acks.items()}
        import bisect
        downs = [e for e in nemesis.events if e["event"] == "inject" and e["kind"] != "store"]
        for n, e in enumerate(downs):
            t = e["t"]
            limit = downs[n + 1]["t"] if n + 1 < len(downs) else t_stop
            slowest = (0.0, None)
            for p, ts in sorted_acks.items():
                k = bisect.bisect_right(ts, t)
                gap = (ts[k] - t) if k < len(ts) else (t_stop - t)
                if gap > slowest[0]:
                    slowest = (gap, p)
            if t + slowest[0] > limit:
                overlapped[e["kind"]] += 1
                continue
            recovery.setdefault(e["kind"], []).append(slowest[0])
            if worst is None or slowest[0] > worst[0]:
                worst = (slowest[0], slowest[1], e)
        figs["recovery_overlapped"] = dict(overlapped)
        figs["recovery_s"] = {k: {"max": round(max(v), 2), "mean": round(sum(v) / len(v), 2), "n": len(v)}
                              for k, v in recovery.items()}
        if worst is not None and worst[1] is not None:
            gap, p, e = worst
            figs["worst_recovery"] = {
                "seconds": round(gap, 2), "partition": pk(p), "fault": e,
                "owners": sampler.owners_between(p, e["t"] - 2, e["t"] + gap + 1)}
        figs["ownership_changes"] = len(sampler.changes)
        figs.update({
            "seed": seed,
            "t_faults": round(t_faults, 2), "t_heal": round(t_heal, 2),
            "acks_per_s_faults": round(sum(1 for t in acks_all if t_faults <= t <= t_heal)
                                       / max(t_heal - t_faults, 1e-9), 1),
            "max_ack_gap_s": {p.pid: round(_ack_gaps([h[1] for h in p.acked().values()], *fault_window), 2)
                              for p in producers},
            "max_partition_ack_gap_s": round(max((_ack_gaps(v, *fault_window) for v in per_part_acks.values()),
                                                 default=0), 2),
            "first_ack_after_heal_s": first_ack_after_heal,
            "consumers_caught_up_s_after_stop": round(caught_up_at - t_stop, 2) if caught_up_at else None,
            "assigned_consumer_errors": len(assigned.errors),
            "group_rebalances": sum(1 for m in group for e in m.events if e[1] == "assign"),
            "group_commit_errors": sum(len(m.commit_errors) for m in group),
            "produce_errors": sum(len(p.produce_errors) for p in producers),
            "injected": dict(nemesis.injected),
            "injected_detail": dict(nemesis.detail),
            "busy_skips": nemesis.busy_skips,
            "leader_detection": "admin-http" if cluster.admin_http else "logs",
        })
        try:
            pstats = cluster.proxies.stats()
        except Exception as e:
            pstats = {"error": repr(e)}
        tot = Counter()
        for name, s in pstats.items():
            if isinstance(s, dict):
                group_name = "store" if name.startswith("S") else "peer"
                for k in ("refused", "failed_503", "reset", "ambiguous", "delayed", "requests"):
                    tot[f"{group_name}_{k}"] += s.get(k, 0)
        figs["proxy"] = {k: v for k, v in tot.items() if v}

        counts = {k: anomalies.count(k) for k in VERDICT_KINDS + (TXN_KINDS if processors else ())}
        passed = all(v == 0 for v in counts.values())
        injected = ",".join(f"{k}:{nemesis.injected.get(k, 0)}" for k in opts.faults)
        verdict = (f"chaos: {'PASS' if passed else 'FAIL'} seconds={opts.seconds:g} seed={seed} "
                   f"faults={','.join(opts.faults)} acked={figs['acked']} "
                   + " ".join(f"{k}={v}" for k, v in counts.items()) + ("" if processors else " txn=off")
                   + f" injected={injected}")
        lines = [verdict]
        lines.append("  faults: " + ", ".join(f"{k}={v}" for k, v in sorted(nemesis.detail.items()))
                     + f" (skipped while busy: {nemesis.busy_skips}); subsets: "
                     + " ".join(f"{t:.0f}s:{'+'.join(s) or 'none'}" for t, s in nemesis.subsets))
        lines.append(f"  workload: sent={figs['sent']} acked={figs['acked']} failed={figs['failed']} "
                     f"unresolved={figs['unresolved']} final_records={figs['final_records']} "
                     f"acks/s during faults={figs['acks_per_s_faults']} produce_errors={figs['produce_errors']}")
        lines.append(f"  unavailability: longest ack gap per producer {figs['max_ack_gap_s']} s, "
                     f"per partition {figs['max_partition_ack_gap_s']} s; first ack after heal "
                     f"{figs['first_ack_after_heal_s']} s; consumers caught up "
                     f"{figs['consumers_caught_up_s_after_stop']} s after the producers stopped")
        lines.append("  recovery after a down fault (s until the slowest partition acks again): "
                     + ", ".join(f"{k} max {v['max']} mean {v['mean']} (n={v['n']})"
                                 for k, v in figs["recovery_s"].items())
                     + (f"; not recovered before the next fault: {dict(overlapped)}" if overlapped else ""))
        if figs.get("worst_recovery"):
            w = figs["worst_recovery"]
            lines.append(f"  worst: {w['seconds']} s on {w['partition']} after {w['fault']['kind']} of node "
                         f"{w['fault'].get('node')} at t={w['fault']['t']}s; leader of it (t, node): {w['owners']}")
        lines.append(f"  consumers: group rebalances={figs['group_rebalances']} commits={figs['group_commits']} "
                     f"commit errors={figs['group_commit_errors']} assigned-consumer errors="
                     f"{figs['assigned_consumer_errors']}; proxies: {figs['proxy']}; leader via "
                     f"{figs['leader_detection']}")
        if processors:
            tx = figs["txn"]
            lines.append(f"  transactions: commits={tx['commits']} aborts={tx['aborts']} retries={tx['retries']} "
                         f"fatal(recreated producers)={tx['fatal']} client_hangs={tx.get('client_hangs', 0)} "
                         f"abort_failures={tx['abort_failures']} "
                         f"rewinds={tx['rewinds']} consumer_recreations={tx['consumer_recreations']} "
                         f"rebalances={tx['rebalances']} attempts={tx['attempts']}; input committed="
                         f"{tx['input_committed']} output committed={figs['txn_output_committed']} "
                         f"(+{figs['txn_output_aborted_visible_uncommitted']} aborted, read_uncommitted); "
                         f"caught up {tx['caught_up_s_after_stop']} s after the producers stopped; longest "
                         f"commit gap during faults {tx['max_commit_gap_faults_s']} s; commit latency "
                         f"mean {tx['commit_latency_s']['mean']} max {tx['commit_latency_s']['max']} s")
            if tx["errors"]:
                lines.append("  transaction call errors: " + "; ".join(f"{k} x{v}" for k, v in tx["errors"].items()))
        examples = {}
        for k in counts:
            if anomalies.count(k):
                examples[k] = anomalies.items[k][:opts.examples]
                lines.append(f"  {k} ({anomalies.count(k)}), e.g.:")
                lines += [f"    {e}" for e in examples[k]]
        lines.append(f"  artifacts: {workdir}")
        summary = "\n".join(lines)

        # History.
        with open(workdir / "history.json", "w") as f:
            json.dump({
                "options": {k: getattr(opts, k) for k in opts.__dataclass_fields__},
                "seed": seed, "verdict": verdict, "counts": counts, "figures": figs,
                "anomalies": {k: anomalies.items[k] for k in anomalies.items},
                "nemesis": nemesis.events,
                "producers": {p.pid: {"history": p.snapshot(), "fatal": p.fatal,
                                      "produce_errors": p.produce_errors} for p in producers},
                "assigned": {"seen": assigned.seen, "errors": assigned.errors},
                "group": {m.idx: {"seen": m.seen, "commits": m.commits, "events": m.events,
                                  "errors": m.errors, "commit_errors": m.commit_errors} for m in group},
                "ownership_changes": sampler.changes,
                "final_committed": {pk(p): o for p, o in final_committed.items()},
                "final": {pk(p): r for p, r in final.items()},
                "high_watermarks": {pk(p): h for p, h in high.items()},
                "final_read_errors": read_errors[:100],
                "txn": {x.idx: {"attempts": x.attempts, "events": x.events, "errors": x.errors,
                                "counts": x.counts, "commit_times": x.commit_times} for x in processors},
                "txn_output": {k: ({pk(p) if isinstance(p, tuple) else p: v for p, v in d.items()}
                                   if isinstance(d, dict) else d) for k, d in txn_out.items()},
            }, f)
        (workdir / "verdict.txt").write_text(summary + "\n")
        log(summary, echo=False)
        return Result(passed, verdict, summary, counts, examples, figs, workdir)
    finally:
        for t in threads:
            if hasattr(t, "stop_producing"):
                t.stop_producing.set()
            if hasattr(t, "stop_event"):
                t.stop_event.set()
        if cluster is not None:
            cluster.stop()
        if own_moto and moto is not None:
            moto.stop()
        if saved_bin is None:
            os.environ.pop("SHALE_BIN", None)
        else:
            os.environ["SHALE_BIN"] = saved_bin
        try:
            (workdir / "shale.bin").unlink()
        except OSError:
            pass
        log.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--faults", default=",".join(ALL_FAULTS),
                    help=f"comma-separated subset of {','.join(ALL_FAULTS)} (or 'none')")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--dir", type=Path, help="artifacts directory (kept); default: a temporary one")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory on PASS too")
    ap.add_argument("--rate", type=float, default=200.0, help="messages/s per producer")
    ap.add_argument("--producer-debug", default="eos,topic",
                    help="librdkafka debug contexts of the producers, logged to clients.log")
    ap.add_argument("--txn", action=argparse.BooleanOptionalAction, default=True,
                    help="the transactional read-process-write stage (default on)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    a = ap.parse_args(argv)
    faults = [] if a.faults in ("", "none") else [f.strip() for f in a.faults.split(",") if f.strip()]
    bad = [f for f in faults if f not in ALL_FAULTS]
    if bad:
        ap.error(f"unknown fault(s) {bad}: choose from {','.join(ALL_FAULTS)}")
    if a.nodes < 3:
        ap.error("--nodes must be at least 3 (a majority must survive one node down)")
    opts = Options(nodes=a.nodes, seconds=a.seconds, faults=faults, seed=a.seed, rate=a.rate,
                   producer_debug=a.producer_debug, txn=a.txn)
    workdir = a.dir
    temp = workdir is None
    if temp:
        workdir = Path(tempfile.mkdtemp(prefix="shale-chaos-"))
    try:
        res = run(opts, workdir, echo=not a.quiet)
    except Exception:
        import traceback
        traceback.print_exc()
        print(f"chaos: ERROR (harness failure; artifacts kept in {workdir})")
        return 2
    print(res.summary)
    if temp and res.passed and not a.keep:
        shutil.rmtree(workdir, ignore_errors=True)
        print("  (artifacts removed: PASS; --keep keeps them)")
    return 0 if res.passed else 1


if __name__ == "__main__":
    sys.exit(main())
