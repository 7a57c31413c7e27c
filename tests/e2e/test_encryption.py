"""Encrypted objects (object.encryption.keys): every object Shale writes is an AES-256-GCM
envelope under a fresh data key wrapped by the operator's key (KEK), so the bucket never holds
a produced value as bytes, across restarts and kill -9; the KEK rotates online with SIGHUP and
no fetch fails meanwhile; and S3 server-side encryption settings reach the bucket."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import Consumer, Producer, TopicPartition

N = 300


def kek(path, byte: int) -> str:
    path.write_text(bytes([byte] * 16 + list(range(16))).hex() + "\n")
    path.chmod(0o600)
    return f"file:{path}"


def produce(bootstrap: str, topic: str, values: list[bytes]):
    errors = []
    p = Producer({"bootstrap.servers": bootstrap, "compression.type": "none", "linger.ms": 5})
    for v in values:
        p.produce(topic, v, on_delivery=lambda err, msg: err and errors.append(err))
    assert p.flush(60) == 0
    assert errors == []


def consume(bootstrap: str, topic: str, n: int, timeout: float = 60) -> list[bytes]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    got, deadline = [], time.time() + timeout
    try:
        while len(got) < n and time.time() < deadline:
            m = c.poll(1)
            if m is not None:
                assert not m.error(), m.error()
                got.append(m.value())
        return got
    finally:
        c.close()


def bucket_bytes(node) -> list[tuple[str, bytes]]:
    return [(k, node.moto.s3.get_object(Bucket=node.bucket, Key=k)["Body"].read())
            for k in node.objects()]


def markers(prefix: str, n: int = N) -> list[bytes]:
    return [f"{prefix}-secret-value-{i:05d}".encode() for i in range(n)]


def test_without_encryption_the_bucket_holds_the_values(shale_factory):
    # The control: the same scan finds plaintext when objects are not encrypted.
    node = shale_factory(settings={"wal.batch.interval.ms": 10})
    values = markers(uuid.uuid4().hex[:8], 20)
    produce(node.bootstrap, "plain", values)
    assert any(values[0] in data for _, data in bucket_bytes(node))


def test_no_object_in_the_bucket_holds_a_produced_value(shale_factory, tmp_path):
    node = shale_factory(settings={"object.encryption.keys": "a=" + kek(tmp_path / "a.key", 1),
                                   "s3.server.side.encryption": "AES256"})
    prefix = uuid.uuid4().hex[:8]
    values = markers(prefix)
    produce(node.bootstrap, "payments", values)
    assert consume(node.bootstrap, "payments", N) == values
    # Through a kill -9 and a restart the data reads back from the encrypted objects.
    node.kill9()
    node.restart()
    assert consume(node.bootstrap, "payments", N) == values

    objects = bucket_bytes(node)
    assert objects, "the broker wrote objects"
    for key, data in objects:
        assert prefix.encode() not in data, f"{key} holds a produced value in plaintext"
        assert b"secret-value" not in data, key
    # Server-side encryption was asked of the bucket for every object, too.
    for key, _ in objects:
        head = node.moto.s3.head_object(Bucket=node.bucket, Key=key)
        assert head.get("ServerSideEncryption") == "AES256", (key, head.get("ServerSideEncryption"))


def test_the_kek_rotates_online_with_no_failed_fetch(shale_factory, tmp_path):
    a = "a=" + kek(tmp_path / "a.key", 1)
    b = "b=" + kek(tmp_path / "b.key", 2)
    node = shale_factory(settings={"object.encryption.keys": a})
    before = markers("before")
    produce(node.bootstrap, "rotating", before)

    # A consumer re-reads the topic from the start, over and over, through the rotation.
    failures, reads, stop = [], [0], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                got = consume(node.bootstrap, "rotating", N, timeout=30)
                if got[:N] != before:
                    failures.append(f"read {len(got)} records, not the {N} produced")
                reads[0] += 1
            except Exception as e:  # noqa: BLE001 - any failure is the finding
                failures.append(repr(e))

    t = threading.Thread(target=reader)
    t.start()
    try:
        time.sleep(2)
        # Rotate: b becomes current, a stays in the ring to unwrap older objects.
        node.settings.update({"object.encryption.keys": f"{a},{b}", "object.encryption.key.id": "b"})
        node.command()  # rewrites the configuration file
        os.kill(node.proc.pid, signal.SIGHUP)
        deadline = time.time() + 10
        while "rotat" not in node.log_tail(50) and time.time() < deadline:
            time.sleep(0.2)
        after = markers("after")
        produce(node.bootstrap, "rotating", after)
        assert consume(node.bootstrap, "rotating", 2 * N) == before + after
        time.sleep(2)
    finally:
        stop.set()
        t.join(60)
    assert failures == [] and reads[0] >= 1, (failures, reads)

    # Each object's header names its KEK: "SHLE", version, id length, id. Objects written
    # before the rotation name a, those after it b.
    ids = {data[6:6 + data[5]] for _, data in bucket_bytes(node) if data[:4] == b"SHLE"}
    assert ids == {b"a", b"b"}, ids
    # After a restart with both keys, everything still reads.
    node.kill9()
    node.restart()
    assert consume(node.bootstrap, "rotating", 2 * N) == before + after


def test_a_key_that_does_not_load_stops_start_up(shale_factory, tmp_path):
    bad = tmp_path / "short.key"
    bad.write_text("abcd\n")
    node = shale_factory(settings={"object.encryption.keys": f"a=file:{bad}"}, start=False)
    node.start(wait=False)
    node.proc.wait(30)
    assert node.proc.returncode != 0
    log = node.log.read_text()
    assert "Error: object encryption: object.encryption.keys" in log, node.log_tail(40)
    assert "abcd" not in log.split("start #")[-1].split("\n", 1)[1], "the error echoes the key"


def test_sighup_on_a_node_without_encryption_changes_nothing(shale_factory):
    # SIGHUP's default action would end the process; the node handles it and keeps serving.
    node = shale_factory()
    os.kill(node.proc.pid, signal.SIGHUP)
    time.sleep(1)
    assert node.running()
    produce(node.bootstrap, "after-hup", [b"still serving"])
    assert "SIGHUP: nothing to reload" in node.log.read_text()
