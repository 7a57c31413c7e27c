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

The transactional read-process-write stage (`check_txn`; workload.TxnProcessor), on the
output topic read to its end under read_committed (up to the last stable offset) and the
EOS group's final committed offsets C of the input partitions:
- txn_lost: an input record below C (of the final read of the input) with no record in the
  committed output.
- txn_duplicated: an input record below C with more than one record in the committed output.
- txn_phantom: a committed output record whose input record does not exist, whose value is
  not the input's, or whose input is at or past C (output committed without its offsets).
- txn_aborted_read: a committed output record written by an attempt whose abort_transaction
  succeeded, or that failed fatally before commit_transaction was called (fenced: the new
  producer's init_transactions aborts it). (A read_uncommitted read showing aborted records
  is fine: not checked, only counted.)
- stuck (also): the EOS group's committed offsets not at the input's end by the catch-up
  deadline; a processor still inside a transactional call when stopped; a last stable
  offset of the output staying below its high watermark after every processor stopped
  (a transaction left open); the committed output not read to its end.
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


def _parse_out(key: str, value: str):
    """(topic, partition), offset, input value, (processor, attempt) of an output record, or None."""
    try:
        src, off = key.rsplit("@", 1)
        topic, part = src.rsplit("/", 1)
        assert value.startswith("T:")
        inval, tag = value[2:].rsplit("|", 1)
        proc, att = tag.split(".")
        return (topic, int(part)), int(off), inval, (int(proc), int(att))
    except (ValueError, AssertionError):
        return None


def check_txn(a: Anomalies, *, in_parts, final, committed_out, uncommitted_out, eos_committed,
              attempts, stuck):
    """Adds the transactional stage's anomalies to `a`; returns figures. final: the input's
    final read {part: [(offset, value)]}; *_out: {output partition: [(offset, key, value)]};
    eos_committed: {input part: offset}; attempts: {processor: [attempt dicts]}."""
    in_at = {(part, off): v for part in in_parts for off, v in final.get(part, [])}
    outcome = {(proc, att["n"]): att["outcome"] for proc, atts in attempts.items() for att in atts}

    def tried(part, off):
        """The attempts whose batch held that input record: [(processor, attempt, outcome)]."""
        k = pk(part)
        return [(proc, att["n"], att["outcome"]) for proc, atts in attempts.items() for att in atts
                if k in att["parts"] and att["parts"][k][0] <= off <= att["parts"][k][1]]

    outs = defaultdict(list)  # (input part, offset) -> [(output partition, offset, (proc, attempt))]
    for op, recs in committed_out.items():
        for off, key, value in recs:
            parsed = _parse_out(key, value)
            if parsed is None:
                a.add("txn_phantom", f"output {op}@{off}: unparsable record key={key!r} value={value!r}")
                continue
            part, ioff, inval, tag = parsed
            if (part, ioff) not in in_at:
                a.add("txn_phantom", f"output {op}@{off}: from {pk(part)}@{ioff}, which the input does not have")
                continue
            if inval != in_at[(part, ioff)]:
                a.add("txn_phantom", f"output {op}@{off}: value {inval!r} from {pk(part)}@{ioff}, "
                                     f"which holds {in_at[(part, ioff)]!r}")
            if outcome.get(tag) in ("aborted", "fenced"):
                a.add("txn_aborted_read", f"output {op}@{off} ({pk(part)}@{ioff}) written by processor "
                                          f"{tag[0]} attempt {tag[1]} ({outcome[tag]}: "
                                          + ("its abort_transaction succeeded" if outcome[tag] == "aborted" else
                                             "fenced before commit_transaction was called") + ")")
            outs[(part, ioff)].append((op, off, tag))
    below = 0
    for part in in_parts:
        c = eos_committed.get(part)
        if c is None or c < 0:
            c = 0
        for off, v in final.get(part, []):
            if off >= c:
                break
            below += 1
            got = outs.get((part, off), [])
            if not got:
                ex = (f"{pk(part)}@{off} ({v}) below the EOS group's committed offset {c}: not in the "
                      f"committed output; attempts with it: {tried(part, off)[:6]}"
                      if a.count("txn_lost") < a.EXAMPLES else "")
                a.add("txn_lost", ex)
            elif len(got) > 1:
                a.add("txn_duplicated", f"{pk(part)}@{off} ({v}) {len(got)} times in the committed output: "
                      + ", ".join(f"out {op}@{o} by processor {t[0]} attempt {t[1]} ({outcome.get(t)})"
                                  for op, o, t in got))
        for (p2, ioff), got in outs.items():
            if p2 == part and ioff >= c:
                a.add("txn_phantom", f"{pk(part)}@{ioff} in the committed output ("
                      + ", ".join(f"out {op}@{o} by processor {t[0]} attempt {t[1]} ({outcome.get(t)})"
                                  for op, o, t in got)
                      + f") but at or past the EOS group's committed offset {c}")
    for what in stuck:
        a.add("stuck", what)
    n_committed = sum(len(r) for r in committed_out.values())
    n_uncommitted = sum(len(r) for r in uncommitted_out.values())
    return {"txn_input_below_committed": below, "txn_output_committed": n_committed,
            "txn_output_read_uncommitted": n_uncommitted,
            "txn_output_aborted_visible_uncommitted": n_uncommitted - n_committed}
