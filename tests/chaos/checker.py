"""The checks of the chaos harness, after the faults stopped and the cluster healed, on the
recorded history (after Jepsen's Kafka workload checkers):

- lost: an acknowledged value not in the final read (every partition, offset 0 up to the
  high watermark, by a fresh consumer).
- duplicated: a value at two offsets of the final read.
- offset anomalies: final-read offsets not strictly increasing; an acknowledged offset that
  is not where the final read has that value; two acknowledgements of one offset; a value in
  the final read no producer sent; the assigned consumer's offsets per partition going
  backwards or leaving a gap (it never seeks; these topics have no control records), or
  starting anywhere but 0; a consumer seeing at an offset a value the final read does not
  have there (divergence).
- skipped: an offset below the group's highest committed offset of its partition that no
  group member ever saw.
- stuck: acknowledged values the assigned consumer (or the group) had not seen by the
  deadline after the heal; a producer getting no acknowledgement after the heal; a final
  read that could not reach the high watermark.
- crashed: a node process that exited without being killed by the harness, or could not be
  restarted.
- fatal: fatal errors of an idempotent producer (e.g. OutOfOrderSequence after a failover).
"""

from __future__ import annotations

from collections import defaultdict


def pk(part) -> str:
    return f"{part[0]}/{part[1]}"


class Anomalies:
    """Per kind: how many, and the first EXAMPLES of them."""

    EXAMPLES = 50

    def __init__(self):
        self.items: dict[str, list] = defaultdict(list)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, kind: str, example):
        self.counts[kind] += 1
        if len(self.items[kind]) < self.EXAMPLES:
            self.items[kind].append(example)

    def count(self, *kinds) -> int:
        return sum(self.counts.get(k, 0) for k in kinds)


def check(*, parts, producers_hist, assigned_seen, group_seen, group_commits, final_committed,
          final, final_short, stuck_producers, unseen_assigned, unseen_group, crashed, fatal):
    """Returns (Anomalies, figures). producers_hist: value -> [send_t, ack_t, topic, part,
    offset, err]; *_seen: [(t, topic, partition, offset, value)]; group_commits: [(t, topic,
    partition, offset)]; final: {part: [(offset, value)]}."""
    a = Anomalies()
    acked = {v: h for v, h in producers_hist.items() if h[1] is not None and h[5] is None}

    # The final read: where each value is.
    where = defaultdict(list)  # value -> [(part, offset)]
    at = {}  # (part, offset) -> value
    for part, recs in final.items():
        prev = -1
        for off, v in recs:
            if off <= prev:
                a.add("offset_anomalies", f"final read {pk(part)}: offset {off} after {prev}")
            prev = max(prev, off)
            where[v].append((part, off))
            if (part, off) in at and at[(part, off)] != v:
                a.add("offset_anomalies", f"final read {pk(part)}@{off}: two values {at[(part, off)]!r}, {v!r}")
            at[(part, off)] = v
            if v not in producers_hist:
                a.add("offset_anomalies", f"final read {pk(part)}@{off}: value {v!r} no producer sent")
    for v, locs in where.items():
        if len(locs) > 1:
            a.add("duplicated", f"{v} at " + ", ".join(f"{pk(p)}@{o}" for p, o in locs))

    # Acknowledged values.
    acked_at = {}
    for v, h in sorted(acked.items(), key=lambda kv: kv[1][1]):
        part, off = (h[2], h[3]), h[4]
        locs = where.get(v)
        if not locs:
            a.add("lost", f"{v} acked at {pk(part)}@{off} (sent t={h[0]:.2f}s, acked t={h[1]:.2f}s), "
                          f"final read has {at.get((part, off))!r} there")
            continue
        if (part, off) not in locs:
            a.add("offset_anomalies", f"{v} acked at {pk(part)}@{off} but read at "
                  + ", ".join(f"{pk(p)}@{o}" for p, o in locs))
        if (part, off) in acked_at and acked_at[(part, off)] != v:
            a.add("offset_anomalies", f"{pk(part)}@{off} acknowledged twice: {acked_at[(part, off)]}, {v}")
        acked_at[(part, off)] = v

    # The assigned consumer: per partition, 0, 1, 2, ... and what the final read has.
    by_part = defaultdict(list)
    for t, topic, p, off, v in assigned_seen:
        by_part[(topic, p)].append((t, off, v))
    for part in parts:
        prev = -1
        for t, off, v in by_part.get(part, []):
            if off <= prev:
                a.add("offset_anomalies", f"assigned consumer {pk(part)}: offset {off} after {prev} (t={t:.2f}s)")
            elif off != prev + 1:
                a.add("offset_anomalies", f"assigned consumer {pk(part)}: gap {prev} -> {off} (t={t:.2f}s)")
            prev = max(prev, off)
            fv = at.get((part, off))
            if fv is not None and fv != v:
                a.add("offset_anomalies", f"assigned consumer saw {v!r} at {pk(part)}@{off} (t={t:.2f}s), "
                                          f"final read has {fv!r}")

    # The group: what it saw, what it committed.
    group_saw = defaultdict(set)
    for t, topic, p, off, v in group_seen:
        group_saw[(topic, p)].add(off)
        fv = at.get(((topic, p), off))
        if fv is not None and fv != v:
            a.add("offset_anomalies", f"group consumer saw {v!r} at {topic}/{p}@{off} (t={t:.2f}s), "
                                      f"final read has {fv!r}")
    max_commit = {}
    for t, topic, p, off in group_commits:
        max_commit[(topic, p)] = max(max_commit.get((topic, p), 0), off)
    for part, off in (final_committed or {}).items():
        if off is not None and off >= 0:
            max_commit[part] = max(max_commit.get(part, 0), off)
    for part, c in max_commit.items():
        for off, v in final.get(part, []):
            if off >= c:
                break
            if off not in group_saw[part]:
                a.add("skipped", f"{pk(part)}@{off} ({v}) below committed offset {c}, never seen by the group")

    for what in stuck_producers:
        a.add("stuck", what)
    for v in sorted(unseen_assigned):
        a.add("stuck", f"assigned consumer never saw acked {v} ({pk((acked[v][2], acked[v][3]))}@{acked[v][4]})")
    for v in sorted(unseen_group):
        a.add("stuck", f"group never saw acked {v}")
    for part in final_short:
        a.add("stuck", f"final read did not reach the high watermark of {pk(part)}")
    for what in crashed:
        a.add("crashed", what)
    for what in fatal:
        a.add("fatal", what)

    figures = {
        "acked": len(acked),
        "sent": len(producers_hist),
        "failed": sum(1 for h in producers_hist.values() if h[5] is not None),
        "unresolved": sum(1 for h in producers_hist.values() if h[1] is None),
        "final_records": sum(len(r) for r in final.values()),
        "group_commits": len(group_commits),
    }
    return a, figures
