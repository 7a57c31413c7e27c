"""The admin HTTP port (`admin.http.listener`): `/metrics` in Prometheus text with the figures
an operator watches (requests per API, WAL flushes, object-store traffic, cache hits, Raft
commits, ownership), never a record's key or value; `/health` for liveness; `/ready` once the
node is registered, not fenced and serving what it owns, and not while its session is in
doubt."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

from confluent_kafka import Consumer, Producer, TopicPartition

import harness
import kproto


def get(port: int, path: str) -> tuple[int, str]:
    """Status and body; status 0 while nothing listens (a node still starting)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except urllib.error.URLError as e:
        if isinstance(e.reason, ConnectionRefusedError):
            return 0, ""
        raise


def series(text: str) -> dict[str, float]:
    """`name{labels}` -> value of every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_metrics_count_requests_wal_flushes_and_object_traffic_without_record_contents(shale_factory):
    port = harness.free_port()
    b = shale_factory({"admin.http.listener": f"127.0.0.1:{port}"})
    assert get(port, "/health") == (200, "ok\n")
    assert get(port, "/ready") == (200, "ready\n")

    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all"})
    for i in range(50):
        p.produce("observed", key=b"secret-key-%d" % i, value=b"secret-value-%d" % i)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "obs", "auto.offset.reset": "earliest"})
    c.assign([TopicPartition("observed", 0, 0)])
    seen = 0
    deadline = time.monotonic() + 30
    while seen < 50 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            seen += 1
    c.close()
    assert seen == 50

    status, text = get(port, "/metrics")
    assert status == 200
    s = series(text)
    assert s['shale_requests_total{api="Produce"}'] >= 1
    assert s['shale_requests_total{api="Fetch"}'] >= 1
    assert s['shale_request_seconds_count{api="Produce"}'] >= 1
    assert s["shale_wal_flush_bytes_count"] >= 1
    assert s["shale_wal_flush_seconds_count"] >= 1
    assert s['shale_object_requests_total{op="put"}'] >= 1
    assert s['shale_object_bytes_total{direction="put"}'] > 50 * len(b"secret-value-00")
    assert s["shale_metadata_write_seconds_count"] >= 1
    assert s["shale_metadata_is_leader"] == 1
    assert s["shale_metadata_leader_id"] == 1
    assert s['shale_ownership_changes_total{change="gained"}'] >= 1
    assert any(k.startswith("shale_log_cache_reads_total") for k in s)
    # Names and labels only: no record content, no topic name.
    assert "secret" not in text and "observed" not in text
    # Valid exposition: every sample line is `name{labels} value`.
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r'[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [-+0-9.eEinfNa]+', line), line

    assert get(port, "/nope")[0] == 404


def test_ready_turns_503_while_the_session_is_in_doubt(tmp_path, moto):
    """A node that loses its quorum stops serving at once (its session may be given away):
    `/ready` says so, and says ready again when the quorum is back."""
    bucket = moto.create_bucket()
    controllers = [harness.free_port() for _ in range(3)]
    admin_ports = [harness.free_port() for _ in range(3)]
    voters = ",".join(f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(controllers))
    nodes = []
    for i in range(3):
        n = harness.Shale(tmp_path / f"n{i + 1}", moto=moto, bucket=bucket, name=f"shale{i + 1}",
                          settings={"node.id": i + 1, "controller.quorum.voters": voters,
                                    "admin.http.listener": f"127.0.0.1:{admin_ports[i]}"})
        n.settings["listeners"] = (f"PLAINTEXT://127.0.0.1:{n.port},"
                                   f"CONTROLLER://127.0.0.1:{controllers[i]}")
        nodes.append(n)
    try:
        for n in nodes:
            n.start(wait=False)
        for n in nodes:
            n.wait_ready(90)
        wait_for(lambda: all(get(p, "/ready")[0] == 200 for p in admin_ports), 30)
        # Every node's view of the quorum agrees on one leader.
        wait_for(lambda: len({series(get(p, "/metrics")[1]).get("shale_metadata_leader_id")
                              for p in admin_ports} - {None, -1.0}) == 1, 30)
        s = series(get(admin_ports[0], "/metrics")[1])
        leader = int(s["shale_metadata_leader_id"])
        assert leader in (1, 2, 3)
        assert sum(series(get(p, "/metrics")[1])["shale_metadata_is_leader"] for p in admin_ports) == 1

        # The group's coordinator answers its offsets. (Which node that is depends on which
        # node created `__consumer_offsets` first, so the test follows the answer.)
        group = "g0"
        c = find_coordinator(nodes[0], group) - 1
        assert c in (0, 1, 2)
        assert offset_fetch_error(nodes[c], group) == 0

        # The coordinator alone: no heartbeat can be answered.
        others = [i for i in range(3) if i != c]
        for i in others:
            nodes[i].kill9()
        wait_for(lambda: get(admin_ports[c], "/ready")[0] == 503, 30)
        status, body = get(admin_ports[c], "/ready")
        assert status == 503 and body.startswith("not ready:"), body
        assert get(admin_ports[c], "/health")[0] == 200
        # Its coordinator stops answering from a state another node may be taking over.
        assert offset_fetch_error(nodes[c], group) == NOT_COORDINATOR

        for i in others:
            nodes[i].start(wait=False)
        wait_for(lambda: all(get(p, "/ready")[0] == 200 for p in admin_ports), 60)
    finally:
        for n in nodes:
            if n.running():
                n.kill9()


NOT_COORDINATOR = 16


def find_coordinator(node, group: str) -> int:
    """FindCoordinator v0: the coordinator's node id."""
    with kproto.Conn("127.0.0.1", node.port, timeout=10) as c:
        r = c.request(10, 0, kproto.string(group))
        assert r.i16() == 0
        return r.i32()


def offset_fetch_error(node, group: str) -> int:
    """OffsetFetch v1 of one partition: its error code."""
    body = kproto.string(group) + kproto.array(
        [("t", [0])], lambda t: kproto.string(t[0]) + kproto.array(t[1], kproto.i32))
    with kproto.Conn("127.0.0.1", node.port, timeout=10) as c:
        r = c.request(9, 1, body)
        topics = r.array(lambda r: (r.string(), r.array(
            lambda r: (r.i32(), r.i64(), r.string(), r.i16()))))
        return topics[0][1][0][3]


def wait_for(cond, timeout: float):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.1)
