"""A cluster of three `shale serve` processes sharing one bucket, with a three-voter
metadata quorum: every node lists the others, a new topic's partitions spread over the nodes
as Kafka spreads leaders (or go where a manual assignment puts them), each is served by its
owner whichever node a client bootstraps from, and when the owner is killed with -9 its partitions move to the
live nodes (fenced after `broker.session.timeout.ms`) with no acknowledged record lost."""

from __future__ import annotations

import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import harness


def bootstrap(nodes) -> str:
    return ",".join(n.bootstrap for n in nodes)


def owners(nodes, topic: str) -> dict[int, int]:
    """Partition -> leader, as any live node's Metadata reports it."""
    admin = AdminClient({"bootstrap.servers": bootstrap([n for n in nodes if n.running()])})
    md = admin.list_topics(topic, timeout=10)
    return {p.id: p.leader for p in md.topics[topic].partitions.values()}


def create(nodes, via, topic: str, partitions: int, owner: int | None = None):
    """Creates `topic` through node `via`: spread over the nodes, or all on `owner` (a
    manual assignment's first replica owns the partition)."""
    admin = AdminClient({"bootstrap.servers": via.bootstrap})
    if owner is None:
        new = NewTopic(topic, partitions, 1)
    else:
        new = NewTopic(topic, partitions, replica_assignment=[[owner]] * partitions)
    admin.create_topics([new])[topic].result(30)


def consume_all(nodes, topic: str, partitions: int, expected: int, timeout: float = 60) -> list[bytes]:
    c = Consumer({"bootstrap.servers": bootstrap([n for n in nodes if n.running()]),
                  "group.id": "unused", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen = []
    deadline = time.monotonic() + timeout
    while len(seen) < expected and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            seen.append(m.value())
    c.close()
    return seen


def test_three_nodes_list_each_other_and_any_node_bootstraps_a_client_to_the_owner(cluster):
    md = AdminClient({"bootstrap.servers": cluster[2].bootstrap}).list_topics(timeout=10)
    assert sorted(md.brokers) == [1, 2, 3]
    create(cluster, cluster[1], "spread", 3)
    # Created through node 2, one partition on each node; a client bootstrapped from node 3
    # finds each owner.
    assert sorted(owners(cluster, "spread").values()) == [1, 2, 3]
    p = Producer({"bootstrap.servers": cluster[2].bootstrap, "acks": "all"})
    for i in range(300):
        p.produce("spread", value=b"v%d" % i, partition=i % 3)
    assert p.flush(30) == 0
    got = consume_all(cluster, "spread", 3, 300)
    assert sorted(got) == sorted(b"v%d" % i for i in range(300))


def assert_read_back_once(nodes, topic: str, partitions: int, values: list[bytes]):
    """Every acknowledged record is there, once."""
    got = consume_all(nodes, topic, partitions, len(values), timeout=90)
    missing = set(values) - set(got)
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {sorted(missing)[:5]}"
    assert len(got) == len(set(got)), "duplicates"


class Workload:
    """An idempotent acks=all producer writing to every partition of `topic` in a thread,
    recording when each record was acknowledged."""

    def __init__(self, nodes, topic: str, partitions: int):
        self.acked, self.failed = [], []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(nodes, topic, partitions))
        self.thread.start()

    def _on_delivery(self, err, msg):
        with self.lock:
            (self.failed if err else self.acked).append((time.monotonic(), msg.value()))

    def _run(self, nodes, topic, partitions):
        p = Producer({"bootstrap.servers": bootstrap(nodes), "acks": "all",
                      "enable.idempotence": True, "linger.ms": 5, "message.timeout.ms": 60000})
        i = 0
        while not self.stop.is_set():
            p.produce(topic, value=b"r%06d" % i, partition=i % partitions,
                      on_delivery=self._on_delivery)
            i += 1
            p.poll(0)
            time.sleep(0.002)
        p.flush(60)

    def acks_after(self, t: float) -> int:
        with self.lock:
            return sum(1 for ts, _ in self.acked if ts > t)

    def wait_acks_after(self, t: float, n: int, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while self.acks_after(t) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.acks_after(t) >= n, f"only {self.acks_after(t)} acknowledgements after {t}"

    def finish(self) -> list[bytes]:
        self.stop.set()
        self.thread.join(90)
        assert not self.failed, f"{len(self.failed)} deliveries failed"
        return [v for _, v in self.acked]

    def first_ack_after(self, t: float) -> float:
        return min(ts for ts, _ in self.acked if ts > t) - t

    def longest_gap(self) -> float:
        """The longest time between two consecutive acknowledgements (a figure, not asserted)."""
        ts = sorted(t for t, _ in self.acked)
        return max((b - a for a, b in zip(ts, ts[1:])), default=0.0)


def test_kill9_of_the_owner_moves_its_partitions_and_loses_no_acknowledged_record(cluster):
    create(cluster, cluster[1], "failover", 4, owner=2)
    assert set(owners(cluster, "failover").values()) == {2}
    w = Workload(cluster, "failover", 4)
    w.wait_acks_after(0, 500)
    killed_at = time.monotonic()
    cluster[1].kill9()
    # Keep producing until acks flow again on the new owners, and a little longer.
    w.wait_acks_after(killed_at + 0.05, 200)
    values = w.finish()
    after = owners(cluster, "failover")
    assert set(after.values()) <= {1, 3}, f"partitions still on the killed node: {after}"
    print(f"kill -9 of the owner: first ack after it {w.first_ack_after(killed_at):.2f} s, "
          f"longest gap between acks {w.longest_gap():.2f} s")
    assert_read_back_once(cluster, "failover", 4, values)


def test_sigterm_of_the_owner_hands_its_partitions_off_before_it_exits(cluster):
    create(cluster, cluster[2], "handoff", 4, owner=3)
    assert set(owners(cluster, "handoff").values()) == {3}
    w = Workload(cluster, "handoff", 4)
    w.wait_acks_after(0, 500)
    stopped_at = time.monotonic()
    assert cluster[2].terminate() == 0
    exited_at = time.monotonic()
    # The partitions moved before the process exited: no session timeout to wait out.
    after = owners(cluster, "handoff")
    assert set(after.values()) <= {1, 2}, f"partitions still on the stopped node: {after}"
    w.wait_acks_after(exited_at, 200)
    values = w.finish()
    print(f"SIGTERM of the owner: exit after {exited_at - stopped_at:.2f} s, first ack after "
          f"the signal {w.first_ack_after(stopped_at):.2f} s, after the exit "
          f"{w.first_ack_after(exited_at):.2f} s, longest gap between acks {w.longest_gap():.2f} s")
    assert_read_back_once(cluster, "handoff", 4, values)


def test_a_broker_outside_the_voters_joins_as_a_learner_serves_clients_and_fails_over(cluster, tmp_path, moto):
    """process.roles=broker: node 4 is not in controller.quorum.voters; it joins the quorum
    as a learner (a full replica, no vote), registers as a broker, owns what is assigned to
    it, and when it is killed its partitions move to the voters' brokers."""
    voters = cluster[0].settings["controller.quorum.voters"]
    n4 = harness.Shale(tmp_path / "n4", moto=moto, bucket=cluster[0].bucket, name="shale4",
                       settings={"node.id": 4, "controller.quorum.voters": voters,
                                 "process.roles": "broker"})
    n4.settings["listeners"] = (f"PLAINTEXT://127.0.0.1:{n4.port},"
                                f"CONTROLLER://127.0.0.1:{harness.free_port()}")
    n4.start(timeout=90)
    nodes = cluster + [n4]
    md = AdminClient({"bootstrap.servers": cluster[0].bootstrap}).list_topics(timeout=10)
    assert sorted(md.brokers) == [1, 2, 3, 4]
    create(nodes, n4, "on-learner", 2, owner=4)
    assert set(owners(nodes, "on-learner").values()) == {4}
    w = Workload(nodes, "on-learner", 2)
    w.wait_acks_after(0, 300)
    killed_at = time.monotonic()
    n4.kill9()
    w.wait_acks_after(killed_at + 0.05, 200)
    values = w.finish()
    assert set(owners(nodes, "on-learner").values()) <= {1, 2, 3}
    assert_read_back_once(nodes, "on-learner", 2, values)
