"""Memory is bounded by configuration, whatever clients send: a backlog on 1000 partitions
read by one hostile fetch (every partition, max_bytes and partition_max_bytes = 2^31-1)
keeps the broker's resident memory under its configured caches plus 128 MiB."""

import threading
import time

import kproto
from clients import create_topic, producer

MIB = 1 << 20
LOG_CACHE = 32 * MIB
BLOCK_CACHE = 32 * MIB
HEADROOM = 128 * MIB


def rss_bytes(pid: int) -> tuple[int, int]:
    """(current, peak) resident set size of a process."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    kib = lambda k: int(fields[k].split()[0]) * 1024
    return kib("VmRSS"), kib("VmHWM")


def hostile_fetch_body(topic: str, partitions: int) -> bytes:
    # Fetch v4: replica_id, max_wait_ms, min_bytes, max_bytes, isolation_level, topics
    parts = [kproto.i32(p) + kproto.i64(0) + kproto.i32(0x7FFFFFFF) for p in range(partitions)]
    return (kproto.i32(-1) + kproto.i32(500) + kproto.i32(0x7FFFFFFF) + kproto.i32(0x7FFFFFFF)
            + kproto.i8(0) + kproto.i32(1) + kproto.string(topic)
            + kproto.i32(partitions) + b"".join(parts))


def test_a_hostile_fetch_over_1000_backlogged_partitions_stays_within_the_configured_memory(shale_factory):
    b = shale_factory({
        "log.cache.bytes": LOG_CACHE,
        "block.cache.bytes": BLOCK_CACHE,
        "wal.max.pending.bytes": 32 * MIB,
    })
    partitions = 1000
    topic = create_topic(b.bootstrap, partitions=partitions)
    # ~192 MiB of backlog: far more than both caches, so reads go to the object store.
    p = producer(b.bootstrap, **{"linger.ms": 50, "batch.size": 200_000, "queue.buffering.max.kbytes": 65536})
    value = b"x" * 1000
    for _round in range(200):
        for part in range(partitions):
            while True:
                try:
                    p.produce(topic, value, partition=part)
                    break
                except BufferError:
                    p.poll(0.05)
        p.poll(0)
    assert p.flush(120) == 0

    pid = b.proc.pid
    before = rss_bytes(pid)
    print(f"after producing: RSS {before[0] / MIB:.1f} MiB, peak {before[1] / MIB:.1f} MiB")
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes(pid)[0])
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    returned = 0
    try:
        for _ in range(3):
            with kproto.Conn.to(b.bootstrap, timeout=120) as c:
                c.corr += 1
                c.send_raw(kproto.request_frame(kproto.FETCH, 4, c.corr, hostile_fetch_body(topic, partitions)))
                returned = max(returned, len(c.recv_frame()))
    finally:
        done.set()
        sampler.join()
    _, hwm = rss_bytes(pid)
    bound = LOG_CACHE + BLOCK_CACHE + HEADROOM
    print(f"fetch response {returned / MIB:.1f} MiB, peak RSS while fetching {peak[0] / MIB:.1f} MiB, "
          f"lifetime peak {hwm / MIB:.1f} MiB, bound {bound / MIB:.0f} MiB")
    # The response is capped by fetch.max.bytes (55 MiB by default), not by what was asked.
    assert returned <= 56 * MIB
    assert hwm < bound, f"peak RSS {hwm / MIB:.1f} MiB over {bound / MIB:.0f} MiB"
