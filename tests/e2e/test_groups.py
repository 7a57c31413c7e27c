"""Consumer groups (classic protocol) with confluent-kafka: subscribe, commit, resume from the
committed offset, failover between members, committed offsets across a broker kill -9, static
membership and the group admin APIs.

Brokers run with group.initial.rebalance.delay.ms=0 so rebalances are not delayed 3 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition

from clients import admin, create_topic, produce_all, producer, unique, watermarks

GROUP_SETTINGS = {"group.initial.rebalance.delay.ms": 0}


@pytest.fixture
def gbroker(shale_factory):
    return shale_factory(settings=GROUP_SETTINGS)


def group_consumer(bootstrap: str, group: str, **conf) -> Consumer:
    base = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "fetch.wait.max.ms": 100,
    }
    base.update(conf)
    return Consumer(base)


def poll_n(c: Consumer, n: int, timeout: float = 60.0) -> list:
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        assert not m.error(), m.error()
        got.append(m)
    assert len(got) >= n, f"consumed {len(got)} of {n} records in {timeout}s"
    return got


def fill(bootstrap: str, topic: str, partitions: int, per_partition: int, tag: str = "") -> None:
    produce_all(producer(bootstrap), topic,
                [{"partition": p, "value": f"{tag}{p}-{i}".encode()}
                 for p in range(partitions) for i in range(per_partition)])


def test_commit_and_resume_from_committed_offset(gbroker):
    b = gbroker.bootstrap
    topic = create_topic(b, partitions=2)
    fill(b, topic, 2, 50)
    group = unique("g")
    c = group_consumer(b, group, **{"max.poll.interval.ms": 10000})
    c.subscribe([topic])
    first = poll_n(c, 30)
    c.commit(asynchronous=False)
    committed = {tp.partition: tp.offset for tp in
                 c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=30)}
    consumed = {}
    for m in first:
        consumed[m.partition()] = max(consumed.get(m.partition(), -1), m.offset())
    for p, last in consumed.items():
        assert committed[p] == last + 1
    c.close()

    # A new consumer of the group continues exactly at the committed offsets.
    c = group_consumer(b, group)
    c.subscribe([topic])
    rest = poll_n(c, 100 - len(first))
    seen = {(m.partition(), m.offset()) for m in first}
    again = {(m.partition(), m.offset()) for m in rest}
    assert not seen & again, "records before the committed offset were delivered again"
    assert len(seen | again) == 100
    c.close()


WORKER = textwrap.dedent("""
    import json, sys
    from confluent_kafka import Consumer
    bootstrap, group, topic, name = sys.argv[1:5]
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                  "heartbeat.interval.ms": 500, "fetch.wait.max.ms": 100,
                  "partition.assignment.strategy": "range"})
    def on_assign(consumer, parts):
        print(json.dumps({"assigned": sorted(p.partition for p in parts)}), flush=True)
    c.subscribe([topic], on_assign=on_assign)
    while True:
        m = c.poll(0.2)
        if m is None or m.error():
            continue
        print(json.dumps({"p": m.partition(), "o": m.offset()}), flush=True)
        c.commit(message=m, asynchronous=False)
""")


class Worker:
    def __init__(self, tmp_path, bootstrap, group, topic, name):
        script = tmp_path / "group_worker.py"
        script.write_text(WORKER)
        self.out = tmp_path / f"{name}.jsonl"
        self.proc = subprocess.Popen([sys.executable, str(script), bootstrap, group, topic, name],
                                     stdout=open(self.out, "w"), stderr=subprocess.STDOUT)

    def lines(self):
        out = []
        for line in self.out.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def assignment(self):
        a = [line["assigned"] for line in self.lines() if "assigned" in line]
        return a[-1] if a else None

    def records(self):
        return [(line["p"], line["o"]) for line in self.lines() if "p" in line]

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)


def wait_for(cond, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_three_consumers_six_partitions_one_killed(gbroker, tmp_path):
    b = gbroker.bootstrap
    topic = create_topic(b, partitions=6)
    group = unique("g")
    fill(b, topic, 6, 100, tag="a")
    workers = [Worker(tmp_path, b, group, topic, f"w{i}") for i in range(3)]
    try:
        def balanced():
            a = [w.assignment() for w in workers]
            return all(x is not None and len(x) == 2 for x in a) and \
                sorted(p for x in a for p in x) == list(range(6))
        wait_for(balanced, what="3 consumers with 2 partitions each")
        wait_for(lambda: sum(len(w.records()) for w in workers) >= 600, what="first 600 records")
        victim = workers[0]
        lost = victim.assignment()
        victim.kill()
        fill(b, topic, 6, 100, tag="b")
        survivors = workers[1:]
        # After the victim's session timeout the survivors split all six partitions.
        wait_for(lambda: sorted(p for w in survivors for p in (w.assignment() or [])) == list(range(6)),
                 timeout=60, what="survivors take over the killed consumer's partitions")
        wait_for(lambda: len({r for w in workers for r in w.records()}) >= 1200, timeout=60,
                 what="all 1200 records consumed")
        got = [r for w in workers for r in w.records()]
        assert {(p, o) for p in range(6) for o in range(200)} <= set(got), "records were lost"
        # Committed offsets are honoured: only what the victim had consumed but not yet
        # committed may be consumed twice (at most one record per partition it owned).
        dupes = len(got) - len(set(got))
        assert dupes <= len(lost), f"{dupes} duplicates; victim owned {lost}"
        # Every partition's committed offset reaches the end. A worker prints a record
        # before its synchronous commit of it, so the last commits may still be in flight.
        c = group_consumer(b, group)
        try:
            def all_committed():
                got = c.committed([TopicPartition(topic, p) for p in range(6)], timeout=30)
                return [tp.offset for tp in got] == [200] * 6
            wait_for(all_committed, timeout=30, what="committed offsets at the end of every partition")
        finally:
            c.close()
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.kill()


def test_committed_offsets_survive_broker_kill9(gbroker):
    b = gbroker.bootstrap
    topic = create_topic(b, partitions=3)
    fill(b, topic, 3, 10)
    group = unique("g")
    c = group_consumer(b, group)
    offsets = [TopicPartition(topic, p, 3 + p, metadata=f"meta-{p}") for p in range(3)]
    c.commit(offsets=offsets, asynchronous=False)
    c.close()
    gbroker.kill9()
    gbroker.restart()
    c = group_consumer(b, group)
    got = c.committed([TopicPartition(topic, p) for p in range(3)], timeout=60)
    assert [(tp.partition, tp.offset, tp.metadata) for tp in got] == \
        [(p, 3 + p, f"meta-{p}") for p in range(3)]
    c.subscribe([topic])
    first = {}
    for m in poll_n(c, 3 * 10 - (3 + 4 + 5)):
        first.setdefault(m.partition(), m.offset())
    assert first == {0: 3, 1: 4, 2: 5}, "resumes at the committed offsets after the restart"
    c.close()


def test_static_member_restart_keeps_assignment_without_rebalance(gbroker):
    b = gbroker.bootstrap
    topic = create_topic(b, partitions=4)
    group = unique("g")
    assigns = {"a": 0, "b": 0}

    def counter(name):
        def on_assign(consumer, parts):
            assigns[name] += 1
        return on_assign

    ca = group_consumer(b, group, **{"group.instance.id": "inst-a", "session.timeout.ms": 10000})
    cb = group_consumer(b, group, **{"group.instance.id": "inst-b", "session.timeout.ms": 10000})
    ca.subscribe([topic], on_assign=counter("a"))
    cb.subscribe([topic], on_assign=counter("b"))

    def both_assigned():
        ca.poll(0.1)
        cb.poll(0.1)
        return len(ca.assignment()) + len(cb.assignment()) == 4 and ca.assignment() and cb.assignment()
    wait_for(both_assigned, what="both static members assigned")
    before_b = sorted(tp.partition for tp in cb.assignment())
    a_count = assigns["a"]
    # librdkafka does not send LeaveGroup for static members: close and come back quickly.
    cb.close()
    cb = group_consumer(b, group, **{"group.instance.id": "inst-b", "session.timeout.ms": 10000})
    cb.subscribe([topic])
    wait_for(lambda: (cb.poll(0.1), ca.poll(0.1)) and len(cb.assignment()) > 0, what="static member back")
    assert sorted(tp.partition for tp in cb.assignment()) == before_b
    for _ in range(10):
        ca.poll(0.2)
    assert assigns["a"] == a_count, "the other member saw no rebalance"
    d = admin(b).describe_consumer_groups([group])[group].result(30)
    assert sorted(m.group_instance_id for m in d.members) == ["inst-a", "inst-b"]
    ca.close()
    cb.close()


def test_group_admin_apis(gbroker):
    b = gbroker.bootstrap
    topic = create_topic(b, partitions=2)
    fill(b, topic, 2, 5)
    group = unique("g")
    c = group_consumer(b, group)
    c.subscribe([topic])
    poll_n(c, 10)
    c.commit(asynchronous=False)
    a = admin(b)
    listed = {g.group_id: g for g in a.list_consumer_groups().result(30).valid}
    assert group in listed
    d = a.describe_consumer_groups([group])[group].result(30)
    assert str(d.state).endswith("STABLE")
    assert len(d.members) == 1
    assert d.partition_assignor == "range" or d.partition_assignor
    offs = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(30)
    assert sorted((tp.partition, tp.offset) for tp in offs.topic_partitions) == [(0, 5), (1, 5)]
    # Deleting a group with an active member is refused.
    with pytest.raises(Exception) as e:
        a.delete_consumer_groups([group])[group].result(30)
    assert "NON_EMPTY_GROUP" in str(e.value)
    c.close()
    a.delete_consumer_groups([group])[group].result(30)
    with pytest.raises(Exception) as e:
        a.delete_consumer_groups([group])[group].result(30)
    assert "GROUP_ID_NOT_FOUND" in str(e.value)
    c = group_consumer(b, group)
    got = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=30)
    assert [tp.offset for tp in got] == [-1001, -1001], "offsets were deleted with the group"
    c.close()
    lo, hi = watermarks(b, topic, 0)
    assert (lo, hi) == (0, 5)


def test_cooperative_sticky_incremental_rebalance(gbroker):
    """cooperative-sticky runs several rebalances per membership change; a member that keeps
    its partitions is never kicked, and the partitions end up split with nothing lost."""
    b = gbroker.bootstrap
    topic = create_topic(b, partitions=4)
    fill(b, topic, 4, 25)
    group = unique("g")
    conf = {"partition.assignment.strategy": "cooperative-sticky"}
    revoked = {"a": [], "b": []}

    def on_revoke(name):
        def cb(consumer, parts):
            revoked[name].extend(p.partition for p in parts)
        return cb

    ca = group_consumer(b, group, **conf)
    ca.subscribe([topic], on_revoke=on_revoke("a"))
    got = poll_n(ca, 50)
    assert len(ca.assignment()) == 4
    cb = group_consumer(b, group, **conf)
    cb.subscribe([topic], on_revoke=on_revoke("b"))

    def split():
        for c in (ca, cb):
            m = c.poll(0.2)
            if m is not None and not m.error():
                got.append(m)
        return len(ca.assignment()) == 2 and len(cb.assignment()) == 2
    wait_for(split, what="partitions split 2/2 incrementally")
    # Incremental: a gave up exactly the two partitions b got, and kept the others.
    assert sorted(revoked["a"]) == sorted(tp.partition for tp in cb.assignment())
    assert not revoked["b"]
    wait_for(lambda: split() and len({(m.partition(), m.offset()) for m in got}) >= 100,
             what="all records consumed")
    ca.close()
    cb.close()
