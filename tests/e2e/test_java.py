"""The Java clients (kafka-clients and kafka-streams 4.1, tests/java) with their defaults:
an idempotent producer, transactions, and a Kafka Streams application with exactly_once_v2,
each across a kill -9 of the broker.

Validated against Apache Kafka 4.1 (SHALE_TEST_BROKER=kafka). Skipped only when tests/java
is not built (scripts/install-test-deps.sh builds it).
"""

import collections
import time

import pytest

from clients import create_topic, produce_all, producer, unique


@pytest.fixture
def java(java_cli, tmp_path):
    return java_cli.at(tmp_path)


def test_default_java_producer_delivers_every_record_exactly_once_in_order_across_a_kill9(broker, java):
    topic = create_topic(broker.bootstrap, partitions=3)
    n = 3000
    prod = java.spawn("produce-default", broker.bootstrap, topic, n, 2)
    prod.wait_for(lambda d: d.get("acked", 0) >= 500, what="500 acknowledgements")
    broker.kill9()
    broker.restart()
    summary = prod.wait()
    # The defaults since Kafka 3.0: idempotence on, acks=all (-1).
    assert summary["enable.idempotence"] is True and summary["acks"] == "-1", summary
    assert summary["errors"] == [] and summary["acked"] == n, summary

    got = java.consume(broker.bootstrap, topic, n)
    values = [r["v"] for r in got["records"]]
    dupes = [v for v, c in collections.Counter(values).items() if c > 1]
    assert not dupes, f"{len(dupes)} records written twice, e.g. {dupes[:5]}"
    assert sorted(values) == sorted(f"v{i}" for i in range(n))
    by_partition = collections.defaultdict(list)
    for r in got["records"]:
        by_partition[r["p"]].append(r)
    for p, recs in by_partition.items():
        assert [r["o"] for r in recs] == list(range(len(recs))), f"partition {p}: offsets not contiguous"
        idx = [int(r["v"][1:]) for r in recs]
        assert idx == sorted(idx), f"partition {p}: records out of send order"


def test_read_committed_sees_only_committed_transactions_and_read_uncommitted_sees_all_across_a_kill9(broker, java):
    topic = create_topic(broker.bootstrap, partitions=1)
    txn_id = unique("txn")
    done = java.run("txn", broker.bootstrap, topic, txn_id)
    assert len(done["committed"]) == 20 and len(done["aborted"]) == 10, done
    broker.kill9()
    broker.restart()

    committed = java.consume(broker.bootstrap, topic, 20, "read_committed")
    assert [r["v"] for r in committed["records"]] == done["committed"]
    uncommitted = java.consume(broker.bootstrap, topic, 30, "read_uncommitted")
    assert [r["v"] for r in uncommitted["records"]] == [f"{t}-{i}" for t in ("c1", "a", "c2") for i in range(10)]
    # Each transaction ends in one control record (its marker), which takes an offset and is
    # never returned to the application: 3 transactions of 10 records end at offset 33. A
    # coordinator killed after the last markers but before its CompleteCommit record was
    # durable writes those markers again when it loads (as Kafka's does): one more offset.
    end = committed["end_offsets"]["0"]
    assert committed["end_offsets"] == uncommitted["end_offsets"] and end in (33, 34), committed

    # The transactional id survives the crash: it is initialised again (epoch bumped) and
    # commits on top.
    again = java.run("txn", broker.bootstrap, topic, txn_id)
    after = java.consume(broker.bootstrap, topic, 40, "read_committed")
    assert [r["v"] for r in after["records"]] == done["committed"] + again["committed"]


def test_an_open_transaction_of_a_killed_producer_is_aborted_when_its_transactional_id_is_initialised_again(broker, java):
    topic = create_topic(broker.bootstrap, partitions=1)
    txn_id = unique("txn")
    hanging = java.spawn("txn-open", broker.bootstrap, topic, txn_id, 10)
    hanging.wait_for(lambda d: d.get("event") == "open", what="an open transaction")
    hanging.kill9()
    broker.kill9()
    broker.restart()
    # The open transaction holds the last stable offset at its first record, so a
    # read_committed consumer sees nothing past it until the transaction ends.
    assert java.run("consume", broker.bootstrap, topic, 0, "read_committed", 5000)["end_offsets"] == {"0": 0}

    # InitProducerId with the same transactional.id fences the old producer and aborts its
    # transaction; the new producer's commits are then readable.
    done = java.run("txn", broker.bootstrap, topic, txn_id)
    got = java.consume(broker.bootstrap, topic, 20, "read_committed")
    assert [r["v"] for r in got["records"]] == done["committed"]
    everything = java.consume(broker.bootstrap, topic, 40, "read_uncommitted")
    assert [r["v"] for r in everything["records"]][:10] == [f"open-{i}" for i in range(10)]


# ---- Kafka Streams ---------------------------------------------------------------------

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
         "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango"]


def lines(start, count):
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(1 + i % 5)) for i in range(start, start + count)]


def feed(bootstrap, topic, texts):
    produce_all(producer(bootstrap), topic, [{"key": b"%d" % i, "value": t.encode()} for i, t in enumerate(texts)])


def word_counts(java, bootstrap, topic):
    """The committed output: word -> every count written for it, in offset order."""
    got = java.consume(bootstrap, topic, 0, "read_committed", values="long")
    seq = collections.defaultdict(list)
    for r in sorted(got["records"], key=lambda r: (r["p"], r["o"])):
        seq[r["k"]].append(r["v"])
    return seq


def test_streams_exactly_once_v2_word_count_is_exact_after_the_app_and_the_broker_are_killed_mid_stream(broker, java, tmp_path):
    app = unique("wordcount")
    src = create_topic(broker.bootstrap, unique("lines"), partitions=2)
    out = create_topic(broker.bootstrap, unique("counts"), partitions=2)
    state = tmp_path / "streams-state"
    phases = [lines(0, 1000), lines(1000, 1000), lines(2000, 1000), lines(3000, 1000)]
    expected = collections.Counter(w for ph in phases for t in ph for w in t.split())

    feed(broker.bootstrap, src, phases[0])
    streams = java.spawn("wordcount", broker.bootstrap, app, src, out, state)
    streams.wait_for(lambda d: d.get("state") == "RUNNING", timeout=120, what="state RUNNING")
    feed(broker.bootstrap, src, phases[1])
    broker.kill9()  # the app is mid-transaction
    broker.restart()
    feed(broker.bootstrap, src, phases[2])
    streams.kill9()  # while it works through phase 2
    streams = java.spawn("wordcount", broker.bootstrap, app, src, out, state)
    feed(broker.bootstrap, src, phases[3])

    deadline = time.monotonic() + 150
    while True:
        seq = word_counts(java, broker.bootstrap, out)
        final = {w: vs[-1] for w, vs in seq.items()}
        if final == dict(expected) or time.monotonic() > deadline:
            break
        time.sleep(2)
    streams.kill9()
    assert final == dict(expected), f"counts differ: {[(w, final.get(w), c) for w, c in expected.items() if final.get(w) != c]}"
    for w, vs in seq.items():
        counts = vs
        assert counts == sorted(set(counts)), f"{w}: a committed count repeats or goes back: {counts}"
