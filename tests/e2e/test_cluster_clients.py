"""Failover as the other clients of the suite see it (issue 9: every client fails over with no
application-visible error beyond retries). test_cluster.py specifies it for confluent-kafka;
here the same three-node cluster (the `cluster` fixture: three voters sharing one bucket)
serves kcat (librdkafka 2.0.2), kafkajs and the Java client (kafka-clients 4.1), each
producing with acks=all and idempotence on while the node that owns every partition of the
topic dies.

What Kafka promises such a producer: a dead leader shows up as retriable errors only (a
connection refused or reset, a request timing out, NOT_LEADER_OR_FOLLOWER once it has a
successor), which the client handles by refreshing metadata and sending the batch again to
the new leader; idempotence (producer id + sequence numbers, KIP-98) makes the resend of a
batch that the old leader had already written a duplicate the broker drops instead of a
second copy. So the application sees every send succeed, and every acknowledged record is
in the log exactly once at the offset it was acknowledged at. Each test checks that through
the client under test itself: the producer process exits 0 having seen no error, reports
what was acknowledged, and a consumer of the same client kind (kcat -C, a kafkajs group
consumer, a Java KafkaConsumer) reads each acknowledged record back once after the failover;
and the partitions now have live leaders.

Timings are printed (`-s`), never asserted.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

import clients
import harness
import javaclients

JS = harness.REPO / "tests" / "js"

needs_kcat = pytest.mark.skipif(shutil.which("kcat") is None,
                                reason="kcat not installed (scripts/install-test-deps.sh)")
needs_kafkajs = pytest.mark.skipif(
    shutil.which("node") is None or not (JS / "node_modules" / "kafkajs").is_dir(),
    reason="node or tests/js/node_modules missing (scripts/install-test-deps.sh)")

PARTITIONS = 4


# ---- the cluster ---------------------------------------------------------------------------


def node_id(node: harness.Shale) -> int:
    return node.settings["node.id"]


def bootstrap(nodes) -> str:
    return ",".join(n.bootstrap for n in nodes)


def live(nodes) -> list[harness.Shale]:
    return [n for n in nodes if n.running()]


def leaders(nodes, topic: str) -> dict[int, int]:
    """Partition -> leader, as the live nodes' Metadata reports it."""
    md = clients.admin(bootstrap(live(nodes))).list_topics(topic, timeout=10)
    return {p.id: p.leader for p in md.topics[topic].partitions.values()}


def topic_owned_by(nodes, owner: harness.Shale) -> str:
    """A new topic of PARTITIONS partitions, all assigned to `owner`, which then leads them."""
    topic = clients.create_topic(owner.bootstrap, clients.unique("failover"), PARTITIONS,
                                 owner=node_id(owner))
    assert set(leaders(nodes, topic).values()) == {node_id(owner)}
    return topic


def assert_moved_off(nodes, topic: str, gone: harness.Shale):
    after = leaders(nodes, topic)
    assert set(after.values()) <= {node_id(n) for n in live(nodes)}, \
        f"partitions not led by a live node after node {node_id(gone)} went: {after}"


def assert_read_back_once(acked: list[tuple[int, int, str]], read: list[tuple[int, int, str]], who: str):
    """Every acknowledged (partition, offset, value) is in the log, once: the value at
    exactly one offset, the one it was acknowledged at, and nothing unacknowledged besides.
    A consumer handing one offset over twice (a group consumer may after a rebalance) is not
    a second copy in the log, so read records count once per (partition, offset)."""
    at = {}
    for p, o, v in read:
        at.setdefault((p, o), v)
    where = collections.defaultdict(list)
    for (p, o), v in at.items():
        where[v].append((p, o))
    twice = {v: pos for v, pos in where.items() if len(pos) > 1}
    assert not twice, f"{who}: {len(twice)} records in the log more than once, e.g. {sorted(twice.items())[:3]}"
    acked_at = {v: (p, o) for p, o, v in acked}
    assert len(acked_at) == len(acked), f"{who}: a value acknowledged twice"
    missing = sorted(v for v in acked_at if v not in where)
    assert not missing, f"{who}: {len(missing)} acknowledged records not read back, e.g. {missing[:5]}"
    moved = sorted((v, acked_at[v], where[v][0]) for v in acked_at if where[v][0] != acked_at[v])
    assert not moved, f"{who}: {len(moved)} records not at their acknowledged offset (value, acked, read): {moved[:5]}"
    extra = sorted(v for v in where if v not in acked_at)
    assert not extra, f"{who}: {len(extra)} records read back that were never acknowledged, e.g. {extra[:5]}"


def brief(lines) -> list:
    """A client's last lines for a failure message, record lists left out."""
    def short(k, v):
        if k == "records":
            return f"<{len(v)} records>"
        return v[:300] + "..." if isinstance(v, str) and len(v) > 300 else v
    return [{k: short(k, v) for k, v in d.items()} for d in lines[-3:]]


def count_lines(path: Path, pattern: str) -> int:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return 0
    return len(re.findall(pattern, text, re.M))


# ---- the Java client -----------------------------------------------------------------------

JAVA_RECORDS = 2000
JAVA_DELAY_MS = 2  # ~4 s of sending; the owner goes after the first 500 acknowledgements
# What kafka-clients logs (WARN) when it retries: a produce error it retries, a metadata
# error that makes it refresh, a connection to a node that is gone.
JAVA_RETRY_LOG = r"retrying \(\d+ attempts left\)|Received invalid metadata error|could not be established|Disconnecting from node"


@pytest.fixture
def java(java_cli, tmp_path):
    return java_cli.at(tmp_path)


def java_produce_through(cluster, java, topic: str, take_down) -> tuple[dict, float]:
    """Runs produce-idempotent against every node's address; calls take_down() once 500
    records are acknowledged; returns the producer's summary and when take_down started."""
    prod = java.spawn("produce-idempotent", bootstrap(cluster), topic, JAVA_RECORDS, JAVA_DELAY_MS)
    prod.wait_for(lambda d: d.get("acked", 0) >= 500, timeout=60, what="500 acknowledgements")
    t = time.monotonic()
    take_down()
    rc, summary = prod.finish(120)
    assert summary is not None and "records" in summary, \
        f"produce-idempotent exited {rc} without a summary: {brief(prod.lines)}\n{prod.log_tail()}"
    assert rc == 0 and summary["errors"] == [], \
        f"the producer saw {len(summary['errors'])} failed sends (exit {rc}), e.g. {summary['errors'][:3]}"
    assert summary["acked"] == JAVA_RECORDS, summary["acked"]
    print(f"java producer: {JAVA_RECORDS} records acked in {summary['seconds']:.1f} s, "
          f"{count_lines(prod.log, JAVA_RETRY_LOG)} retry/reconnect lines in its log")
    return summary, t


def java_read_back(cluster, java, topic: str, summary: dict):
    got = java.consume(bootstrap(live(cluster)), topic, JAVA_RECORDS)
    assert_read_back_once([(r["p"], r["o"], r["v"]) for r in summary["records"]],
                          [(r["p"], r["o"], r["v"]) for r in got["records"]], "Java consumer")


def test_java_idempotent_producer_rides_out_a_kill9_of_the_partition_owner_with_retries_only(cluster, java):
    """kafka-clients, enable.idempotence=true and acks=all (its defaults, set explicitly):
    the owner of every partition is killed with -9 mid-stream. Sends in flight to it fail
    with retriable errors (NETWORK_EXCEPTION on the dropped connection, refused reconnects
    until a metadata refresh names the new leader); the client retries them inside
    delivery.timeout.ms, so every
    send() callback reports success, and a KafkaConsumer reads each acknowledged record
    back once at its acknowledged offset from the nodes that took the partitions over."""
    owner = cluster[1]
    topic = topic_owned_by(cluster, owner)
    summary, killed_at = java_produce_through(cluster, java, topic, owner.kill9)
    assert_moved_off(cluster, topic, owner)
    print(f"kill -9 of the owner: the producer finished {time.monotonic() - killed_at:.1f} s after it")
    java_read_back(cluster, java, topic, summary)


def test_java_idempotent_producer_rides_out_a_sigterm_of_the_partition_owner_with_retries_only(cluster, java):
    """The same producer while the owner is stopped with SIGTERM: the node hands its
    partitions off before it exits (Metadata names live leaders the moment it is gone), so
    the client meets a closed connection (NETWORK_EXCEPTION) or NOT_LEADER_OR_FOLLOWER,
    both retriable, and retries on the new leader; no send fails and each acknowledged
    record is read back once."""
    owner = cluster[2]
    topic = topic_owned_by(cluster, owner)
    at_exit = []

    def stop():
        rc = owner.terminate()
        at_exit.append((rc, leaders(cluster, topic)))

    summary, stopped_at = java_produce_through(cluster, java, topic, stop)
    (rc, led), = at_exit
    assert rc == 0, f"the owner exited {rc} on SIGTERM"
    # Handed off before the exit: no session timeout to wait out.
    assert node_id(owner) not in led.values(), f"partitions still on the stopped node when it exited: {led}"
    assert_moved_off(cluster, topic, owner)
    print(f"SIGTERM of the owner: the producer finished {time.monotonic() - stopped_at:.1f} s after it")
    java_read_back(cluster, java, topic, summary)


# ---- kafkajs -------------------------------------------------------------------------------

JS_RECORDS = 2000
JS_BATCH = 20      # records per send(), spread over the partitions
JS_DELAY_MS = 10   # between sends: 100 sends of a few tens of ms each


def kafkajs(tmp_path: Path, *args) -> javaclients.JavaProcess:
    return javaclients.JavaProcess(["node", str(JS / "clients.js"), *map(str, args)],
                                   tmp_path / f"kafkajs-{args[0]}.log")


@needs_kafkajs
def test_kafkajs_idempotent_producer_rides_out_a_kill9_of_the_partition_owner_with_retries_only(cluster, tmp_path):
    """kafkajs, idempotent: true (acks -1, retries unlimited, as kafkajs requires for it):
    each send() of a batch is awaited; when the owner is killed with -9 the send in flight
    fails with a connection error, which kafkajs retries after refreshing metadata, so the
    await resolves with the new leader's offsets and the application never sees an error.
    A kafkajs consumer (a group subscribed from the beginning) then reads each acknowledged
    record back once at its acknowledged offset."""
    owner = cluster[1]
    topic = topic_owned_by(cluster, owner)
    prod = kafkajs(tmp_path, "produce", bootstrap(cluster), topic, JS_RECORDS, JS_BATCH, JS_DELAY_MS)
    prod.wait_for(lambda d: d.get("acked", 0) >= 500, timeout=60, what="500 acknowledgements")
    killed_at = time.monotonic()
    owner.kill9()
    rc, summary = prod.finish(120)
    assert summary is not None and "records" in summary, \
        f"the kafkajs producer exited {rc} without a summary: {brief(prod.lines)}\n{prod.log_tail()}"
    assert rc == 0 and summary["error"] is None, \
        f"a kafkajs send failed (exit {rc}): {summary['error']}\n{prod.log_tail()}"
    assert summary["acked"] == JS_RECORDS, summary["acked"]
    print(f"kafkajs producer: {JS_RECORDS} records acked in {summary['seconds']:.1f} s, finished "
          f"{time.monotonic() - killed_at:.1f} s after the kill; it logged {summary['logged_errors']} "
          f"errors it retried, e.g. {summary['logged_samples'][:3]}")
    assert_moved_off(cluster, topic, owner)

    cons = kafkajs(tmp_path, "consume", bootstrap(live(cluster)), topic, 60000)
    rc, got = cons.finish(120)
    assert rc == 0 and got is not None and got.get("complete"), \
        f"the kafkajs consumer (exit {rc}) did not reach the end offsets: " \
        f"{brief(cons.lines)}\n{cons.log_tail()}"
    assert_read_back_once([(r["p"], r["o"], r["v"]) for r in summary["records"]],
                          [(r["p"], r["o"], r["v"]) for r in got["records"]], "kafkajs consumer")


# ---- kcat ----------------------------------------------------------------------------------

KCAT_RECORDS = 2000
KCAT_DELAY_S = 0.002
DELIVERED = re.compile(r"Message delivered to partition (\d+) \(offset (-?\d+)\) on broker (-?\d+)")


@needs_kcat
def test_kcat_idempotent_producer_rides_out_a_kill9_of_the_partition_owner_with_retries_only(cluster, tmp_path):
    """kcat -P (librdkafka 2.0.2) with -X enable.idempotence=true -X acks=all, fed lines at a
    steady rate on stdin: librdkafka retries every batch the dead owner leaves unanswered
    (message.timeout.ms is 5 minutes) on the new leader with the same producer id and
    sequence, so no delivery report is an error and kcat exits 0, every line delivered
    (-vv prints each delivery report: partition, offset and the broker that acknowledged
    it, the new owners among them). kcat -C then reads each line back once, at exactly the
    offsets the delivery reports named."""
    owner = cluster[1]
    topic = topic_owned_by(cluster, owner)
    log = tmp_path / "kcat-produce.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            ["kcat", "-P", "-b", bootstrap(cluster), "-t", topic, "-K:", "-vv",
             "-X", "enable.idempotence=true", "-X", "acks=all", "-X", "linger.ms=5"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    harness._LIVE.add(proc)

    def feed():
        try:
            for i in range(KCAT_RECORDS):
                proc.stdin.write(b"k%d:v%d\n" % (i, i))
                proc.stdin.flush()
                time.sleep(KCAT_DELAY_S)
        except BrokenPipeError:
            pass
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    deadline = time.monotonic() + 60
    while count_lines(log, DELIVERED.pattern) < 500:
        assert proc.poll() is None, f"kcat exited {proc.returncode} early:\n{harness.tail(log, 40)}"
        assert time.monotonic() < deadline, f"no 500 delivery reports within 60 s:\n{harness.tail(log, 40)}"
        time.sleep(0.05)
    killed_at = time.monotonic()
    owner.kill9()
    feeder.join(120)
    try:
        rc = proc.wait(120)
    except subprocess.TimeoutExpired:
        harness._stop(proc)
        raise AssertionError(f"kcat did not finish within 120 s of its input ending:\n{harness.tail(log, 40)}")
    harness._LIVE.discard(proc)
    text = log.read_text(errors="replace")
    failed = [line for line in text.splitlines() if "Delivery failed" in line or "FATAL" in line]
    assert rc == 0 and not failed, f"kcat exited {rc}; {len(failed)} failures, e.g. {failed[:3]}\n{harness.tail(log, 40)}"
    reports = [(int(p), int(o), int(b)) for p, o, b in DELIVERED.findall(text)]
    assert len(reports) == KCAT_RECORDS, f"{len(reports)} delivery reports for {KCAT_RECORDS} lines"
    by_broker = collections.Counter(b for _, _, b in reports)
    print(f"kcat producer: {KCAT_RECORDS} lines delivered, finished {time.monotonic() - killed_at:.1f} s "
          f"after the kill; acknowledged by broker: {dict(by_broker)}; "
          f"{count_lines(log, r'FAIL|ERROR')} disconnect/error log lines (retried)")
    assert set(by_broker) - {node_id(owner)}, "no record was acknowledged by a node other than the killed owner"
    assert_moved_off(cluster, topic, owner)

    r = subprocess.run(["kcat", "-C", "-b", bootstrap(live(cluster)), "-t", topic, "-o", "beginning", "-e",
                        "-f", "%p %o %s\n"], capture_output=True, timeout=60)
    assert r.returncode == 0, f"kcat -C exited {r.returncode}: {r.stderr.decode()[-3000:]}"
    read = [(int(p), int(o), v) for p, o, v in (line.split(" ", 2) for line in r.stdout.decode().splitlines())]
    # A delivery report names partition and offset; the line it was is known by its value
    # only through the log, so check the set of offsets and the values separately.
    assert sorted((p, o) for p, o, _ in read) == sorted((p, o) for p, o, _ in reports), \
        "the offsets kcat -C reads are not the offsets the delivery reports acknowledged"
    values = collections.Counter(v for _, _, v in read)
    twice = [v for v, c in values.items() if c > 1]
    assert not twice, f"{len(twice)} lines in the log more than once, e.g. {twice[:5]}"
    assert set(values) == {f"v{i}" for i in range(KCAT_RECORDS)}
