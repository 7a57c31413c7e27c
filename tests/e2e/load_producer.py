#!/usr/bin/env python3
"""A producer process for crash tests: writes COUNT records round-robin over PARTITIONS
partitions with acks=all, each carrying its per-partition sequence number, and appends one
line "partition seq offset" to --acked-file for every successful delivery report, as it
arrives (so a test can watch progress and kill the broker mid-load).

At the end it prints a JSON summary on stdout. Exit status 0 unless the producer itself
could not run; failed deliveries are expected when the broker is killed and are counted.

retries=0 by default (no retries, so no duplicates: every record is sent at most once and
the read-back must have no duplicate at all); --retries N allows retries, after which a
record in flight at the crash may be written twice (idempotence is off). --idempotent is
the production setting: idempotence on, retries until message.timeout.ms, so every record
is delivered exactly once across a crash.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

from confluent_kafka import Producer


def key_of(partition: int) -> bytes:
    return b"p%d" % partition


def value_of(partition: int, seq: int) -> bytes:
    return b"p=%d seq=%d " % (partition, seq) + b"x" * 40


def parse_value(value: bytes) -> tuple[int, int]:
    head = value.split(b" ", 2)
    return int(head[0][2:]), int(head[1][4:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=0, help="records per second (0: as fast as possible)")
    ap.add_argument("--acked-file", required=True)
    ap.add_argument("--retries", type=int, default=0)
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--message-timeout-ms", type=int, default=120_000)
    ap.add_argument("--idempotent", action="store_true")
    args = ap.parse_args(argv)

    conf = {
        "bootstrap.servers": args.bootstrap,
        "acks": "all",
        "enable.idempotence": False,
        "retries": args.retries,
        "max.in.flight.requests.per.connection": 5 if args.retries == 0 else 1,
        "linger.ms": args.linger_ms,
        "message.timeout.ms": args.message_timeout_ms,
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 500,
        "queue.buffering.max.messages": 200_000,
    }
    if args.idempotent:
        # Retries and in-flight limits are the idempotent producer's own.
        for k in ("retries", "max.in.flight.requests.per.connection"):
            del conf[k]
        conf["enable.idempotence"] = True
    p = Producer(conf)
    acked = 0
    errors: Counter = Counter()
    out = open(args.acked_file, "a", buffering=1)

    def on_delivery(err, msg):
        nonlocal acked
        if err is not None:
            errors[err.name()] += 1
            return
        part, seq = parse_value(msg.value())
        assert part == msg.partition()
        out.write(f"{part} {seq} {msg.offset()}\n")
        acked += 1

    t0 = time.monotonic()
    for i in range(args.count):
        part, seq = i % args.partitions, i // args.partitions
        while True:
            try:
                p.produce(args.topic, key=key_of(part), value=value_of(part, seq), partition=part,
                          on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
        if args.rate > 0:
            ahead = (i + 1) / args.rate - (time.monotonic() - t0)
            if ahead > 0:
                p.poll(ahead)
    remaining = p.flush(args.message_timeout_ms / 1000 + 30)
    out.close()
    print(json.dumps({
        "sent": args.count,
        "acked": acked,
        "failed": sum(errors.values()),
        "undelivered_at_exit": remaining,
        "errors": dict(errors),
        "seconds": round(time.monotonic() - t0, 2),
    }))
    return 0


def read_acked(path) -> dict[int, list[tuple[int, int]]]:
    """partition -> [(seq, offset)] in delivery order."""
    out: dict[int, list[tuple[int, int]]] = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                part, seq, off = map(int, parts)
                out.setdefault(part, []).append((seq, off))
    return out


def count_lines(path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def verify(acked: dict[int, list[tuple[int, int]]], read: dict[int, list[tuple[int, bytes]]],
           allow_duplicates: bool = False) -> dict:
    """Checks the crash-safety contract. `read` is partition -> [(offset, value)] as consumed.

    - every acknowledged record is read back, at the offset its delivery report gave;
    - no record is read twice (unless allow_duplicates: retries after a crash may resend);
    - per partition, records are read in produce order (the first occurrences of the
      sequence numbers are strictly increasing).
    Returns figures; raises AssertionError with details on a violation."""
    figures = {"acked": 0, "read": 0, "read_unacked": 0, "duplicates": 0, "partitions": len(read)}
    problems = []
    for part in sorted(set(acked) | set(read)):
        rows = read.get(part, [])
        seqs = []
        by_offset = {}
        for off, value in rows:
            vp, seq = parse_value(value)
            if vp != part:
                problems.append(f"partition {part} offset {off}: record of partition {vp}")
            seqs.append(seq)
            by_offset[off] = seq
        figures["read"] += len(rows)
        counts = Counter(seqs)
        dups = {s: c for s, c in counts.items() if c > 1}
        figures["duplicates"] += sum(c - 1 for c in dups.values())
        if dups and not allow_duplicates:
            problems.append(f"partition {part}: {len(dups)} sequence numbers read more than once, "
                            f"e.g. {sorted(dups)[:5]}")
        first = []
        seen = set()
        for s in seqs:
            if s not in seen:
                seen.add(s)
                first.append(s)
        if any(b <= a for a, b in zip(first, first[1:])):
            bad = next(i for i, (a, b) in enumerate(zip(first, first[1:])) if b <= a)
            problems.append(f"partition {part}: out of produce order at read position {bad + 1}: "
                            f"...{first[max(0, bad - 2):bad + 3]}...")
        acked_here = acked.get(part, [])
        figures["acked"] += len(acked_here)
        missing = [s for s, _ in acked_here if s not in seen]
        if missing:
            problems.append(f"partition {part}: {len(missing)} acknowledged records not read back, "
                            f"e.g. seq {missing[:5]}")
        wrong_offset = [(s, o, by_offset.get(o)) for s, o in acked_here if by_offset.get(o) != s]
        if wrong_offset:
            problems.append(f"partition {part}: {len(wrong_offset)} acknowledged records not at their "
                            f"acknowledged offset, e.g. (seq, acked offset, seq read there) {wrong_offset[:5]}")
        acked_seqs = {s for s, _ in acked_here}
        figures["read_unacked"] += len(seen - acked_seqs)
    if problems:
        raise AssertionError("crash-safety violations:\n  " + "\n  ".join(problems[:40]))
    return figures


if __name__ == "__main__":
    sys.exit(main())
