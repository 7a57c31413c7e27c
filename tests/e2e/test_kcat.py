"""kcat from Debian (librdkafka 2.0.2): an old client with older protocol versions (and the
ApiVersions v3 request that some Kafka-compatible brokers get wrong)."""

import json
import shutil
import subprocess

import pytest

from clients import consume, create_topic, produce_all, producer, unique

pytestmark = pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed (scripts/install-test-deps.sh)")


def kcat(*args, input=None, timeout=30):
    r = subprocess.run(["kcat", *args], input=input, capture_output=True, timeout=timeout)
    assert r.returncode == 0, f"kcat {' '.join(args)} exited {r.returncode}: {r.stderr.decode()[-3000:]}"
    return r.stdout.decode()


def test_kcat_metadata(broker):
    topic = create_topic(broker.bootstrap, partitions=3)
    md = json.loads(kcat("-L", "-J", "-b", broker.bootstrap, "-t", topic))
    assert [(b["id"], b["name"]) for b in md["brokers"]] == [(1, f"127.0.0.1:{broker.port}")]
    (t,) = md["topics"]
    assert t["topic"] == topic
    assert sorted(p["partition"] for p in t["partitions"]) == [0, 1, 2]
    assert all(p["leader"] == 1 for p in t["partitions"])


def test_kcat_metadata_of_all_topics(broker):
    a = create_topic(broker.bootstrap)
    b = create_topic(broker.bootstrap)
    md = json.loads(kcat("-L", "-J", "-b", broker.bootstrap))
    names = {t["topic"] for t in md["topics"]}
    assert {a, b} <= names


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_kcat_produce_then_consume(broker, codec):
    topic = create_topic(broker.bootstrap, partitions=2)
    lines = [f"key{i}:value {i} {codec}" for i in range(200)]
    kcat("-P", "-b", broker.bootstrap, "-t", topic, "-p", "1", "-K:", "-z", codec,
         "-X", "linger.ms=20", input=("\n".join(lines) + "\n").encode())
    out = kcat("-C", "-b", broker.bootstrap, "-t", topic, "-p", "1", "-o", "beginning", "-e",
               "-f", "%k|%s|%o\n")
    got = out.splitlines()
    assert got == [f"key{i}|value {i} {codec}|{i}" for i in range(200)]
    # and a modern client reads the same records
    recs = consume(broker.bootstrap, topic, [1])[1]
    assert [(r.key, r.value) for r in recs] == [(f"key{i}".encode(), f"value {i} {codec}".encode()) for i in range(200)]


def test_kcat_consumes_what_confluent_kafka_produced(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    produce_all(producer(broker.bootstrap, **{"compression.type": "zstd"}), topic,
                [{"key": b"k%d" % i, "value": b"v%d" % i, "headers": [("h", b"%d" % i)]} for i in range(50)])
    out = kcat("-C", "-b", broker.bootstrap, "-t", topic, "-o", "beginning", "-e", "-f", "%k=%s;%h\n")
    assert out.splitlines() == [f"k{i}=v{i};h={i}" for i in range(50)]


def test_kcat_consume_from_offset_and_query_by_timestamp(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    base = 1_650_000_000_000
    produce_all(producer(broker.bootstrap), topic,
                [{"value": b"%d" % i, "timestamp": base + i * 1000} for i in range(10)])
    out = kcat("-C", "-b", broker.bootstrap, "-t", topic, "-p", "0", "-o", "7", "-e", "-f", "%o:%s\n")
    assert out.splitlines() == ["7:7", "8:8", "9:9"]
    out = kcat("-Q", "-b", broker.bootstrap, "-t", f"{topic}:0:{base + 4500}")
    # "<topic> [0] offset 5"
    assert out.split()[-1] == "5", out


def test_kcat_produce_auto_creates_topic(shale_factory):
    b = shale_factory({"num.partitions": 2})
    topic = unique("kcat-auto")
    kcat("-P", "-b", b.bootstrap, "-t", topic, "-p", "0", input=b"one\ntwo\n")
    md = json.loads(kcat("-L", "-J", "-b", b.bootstrap, "-t", topic))
    assert len(md["topics"][0]["partitions"]) == 2
    out = kcat("-C", "-b", b.bootstrap, "-t", topic, "-p", "0", "-o", "beginning", "-e", "-f", "%s\n")
    assert out.splitlines() == ["one", "two"]
