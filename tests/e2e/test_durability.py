"""Crash safety and clean restarts: whatever a producer was told is written survives
kill -9 (and SIGTERM) of the broker, exactly once, in order, at the acknowledged offset."""

import json
import subprocess
import sys
import time
from pathlib import Path

from clients import assert_contiguous, consume, create_topic, produce_all, producer
from load_producer import count_lines, read_acked, verify

HERE = Path(__file__).resolve().parent


def start_load(bootstrap, topic, tmp_path, count, partitions=8, rate=0, retries=0, idempotent=False):
    acked_file = tmp_path / f"acked-{topic}.txt"
    cmd = [sys.executable, str(HERE / "load_producer.py"), "--bootstrap", bootstrap, "--topic", topic,
           "--partitions", str(partitions), "--count", str(count), "--acked-file", str(acked_file),
           "--retries", str(retries)]
    if rate:
        cmd += ["--rate", str(rate)]
    if idempotent:
        cmd += ["--idempotent"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    return proc, acked_file


def wait_acked(proc, acked_file, at_least, timeout=120):
    deadline = time.monotonic() + timeout
    while count_lines(acked_file) < at_least:
        if proc.poll() is not None:
            raise AssertionError(f"producer exited early ({proc.returncode}): {proc.communicate()}")
        assert time.monotonic() < deadline, f"fewer than {at_least} acks after {timeout}s"
        time.sleep(0.05)


def finish_load(proc, timeout=240):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"producer did not finish in {timeout}s: {err.decode()[-2000:]}")
    assert proc.returncode == 0, err.decode()[-4000:]
    return json.loads(out.decode().strip().splitlines()[-1])


def read_back(bootstrap, topic, partitions):
    got = consume(bootstrap, topic, range(partitions), timeout=180)
    for p in range(partitions):
        assert_contiguous(got[p])
    return {p: [(r.offset, r.value) for r in got[p]] for p in range(partitions)}


def test_kill9_mid_load_loses_no_acknowledged_record(broker, tmp_path):
    partitions, count = 8, 60_000
    topic = create_topic(broker.bootstrap, partitions=partitions)
    proc, acked_file = start_load(broker.bootstrap, topic, tmp_path, count, partitions, rate=15_000)
    try:
        wait_acked(proc, acked_file, 6_000)
        assert proc.poll() is None, "the producer must still be running when the broker is killed"
        broker.kill9()
        acked_at_kill = count_lines(acked_file)
        broker.restart()
        summary = finish_load(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    acked = read_acked(acked_file)
    total_acked = sum(len(v) for v in acked.values())
    assert total_acked == summary["acked"]
    assert total_acked > acked_at_kill, f"nothing was acknowledged after the restart: {summary}"
    figures = verify(acked, read_back(broker.bootstrap, topic, partitions))
    print("figures:", figures, "producer:", summary, "acked at kill:", acked_at_kill)
    assert figures["acked"] == total_acked


def test_kill9_then_restart_twice_keeps_everything(broker):
    topic = create_topic(broker.bootstrap, partitions=3)
    p = producer(broker.bootstrap)
    first = [{"partition": i % 3, "value": b"a%d" % i} for i in range(900)]
    produce_all(p, topic, first)
    broker.kill9()
    broker.restart()
    second = [{"partition": i % 3, "value": b"b%d" % i} for i in range(900)]
    produce_all(producer(broker.bootstrap), topic, second)
    broker.kill9()
    broker.restart()
    got = consume(broker.bootstrap, topic, range(3))
    for q in range(3):
        assert [r.value for r in got[q]] == [r["value"] for r in first + second if r["partition"] == q]
        assert_contiguous(got[q])


def test_sigterm_exits_zero_and_restart_has_all_data(broker):
    topic = create_topic(broker.bootstrap, partitions=4, config={"retention.ms": "3600000"})
    sent = [{"partition": i % 4, "key": b"%d" % i, "value": b"v%d" % i} for i in range(4000)]
    produce_all(producer(broker.bootstrap), topic, sent)
    assert broker.terminate() == 0, "SIGTERM must exit 0 after draining"
    broker.restart()
    got = consume(broker.bootstrap, topic, range(4))
    for q in range(4):
        assert [(r.key, r.value) for r in got[q]] == [(s["key"], s["value"]) for s in sent if s["partition"] == q]
        assert_contiguous(got[q])
    # the topic and its configs survive too
    from clients import admin
    from confluent_kafka.admin import ConfigResource, ResourceType
    res = ConfigResource(ResourceType.TOPIC, topic)
    cfg = admin(broker.bootstrap).describe_configs([res])[res].result(30)
    assert cfg["retention.ms"].value == "3600000"


def test_sigterm_mid_load_acknowledged_records_survive(broker, tmp_path):
    partitions = 8
    topic = create_topic(broker.bootstrap, partitions=partitions)
    proc, acked_file = start_load(broker.bootstrap, topic, tmp_path, 40_000, partitions, rate=15_000)
    try:
        wait_acked(proc, acked_file, 5_000)
        assert proc.poll() is None
        assert broker.terminate() == 0, "SIGTERM must exit 0 after draining"
        broker.restart()
        summary = finish_load(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    figures = verify(read_acked(acked_file), read_back(broker.bootstrap, topic, partitions))
    print("figures:", figures, "producer:", summary)
    assert figures["acked"] == summary["acked"] > 5_000
