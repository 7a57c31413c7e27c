"""Hostile and malformed input on raw sockets. After each case the broker must still serve a
new, normal client connection."""

import os
import struct
import time

import pytest

import kproto
from clients import consume, create_topic, produce_all, producer


def assert_still_serving(broker, topic=None):
    with kproto.Conn.to(broker.bootstrap, timeout=15) as c:
        err, versions = kproto.api_versions(c)
        assert err == 0 and kproto.PRODUCE in versions and kproto.FETCH in versions
        md = kproto.metadata(c)
        assert [b[2] for b in md["brokers"]] == [broker.port]
    if topic is not None:
        produce_all(producer(broker.bootstrap), topic, [{"value": b"still here"}])


def test_frame_larger_than_socket_request_max_bytes(shale_factory):
    b = shale_factory({"socket.request.max.bytes": 1 << 20})
    with kproto.Conn.to(b.bootstrap) as c:
        c.send_raw(struct.pack(">i", (1 << 20) + 1) + b"\x00" * 64)
        assert c.closed_by_peer(), "an oversized frame must close the connection"
    with kproto.Conn.to(b.bootstrap) as c:
        # a size far beyond the limit, with no body at all
        c.send_raw(struct.pack(">i", 0x7FFFFFF0))
        assert c.closed_by_peer()
    assert_still_serving(b)


def test_negative_frame_size(broker):
    with kproto.Conn.to(broker.bootstrap) as c:
        c.send_raw(struct.pack(">i", -5) + b"abcd")
        assert c.closed_by_peer()
    assert_still_serving(broker)


@pytest.mark.parametrize("payload", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # reads as a ~1.2 GB frame size
    struct.pack(">i", 16) + bytes(range(16)),  # a frame of junk: api key 1, version 0x203...
    struct.pack(">i", 3) + b"\x00\x12\x00",  # a frame too short for a request header
    struct.pack(">i", 10) + struct.pack(">hhi", 18, 0, 7) + b"\x7f\xff",  # client id longer than the frame
])
def test_garbage_bytes(broker, payload):
    with kproto.Conn.to(broker.bootstrap) as c:
        c.send_raw(payload)
        assert c.closed_by_peer(), "garbage must close the connection"
    assert_still_serving(broker)


def test_random_garbage_many_connections(broker):
    rnd = __import__("random").Random(42)
    for _ in range(20):
        with kproto.Conn.to(broker.bootstrap) as c:
            size = rnd.randrange(8, 200)
            c.send_raw(struct.pack(">i", size) + os.urandom(size))
            try:
                c.closed_by_peer(timeout=5)
            except AssertionError:
                pass  # random bytes may happen to be a valid request that gets an answer
    assert_still_serving(broker)


def test_truncated_frame_then_close(broker):
    topic = create_topic(broker.bootstrap)
    frame = kproto.request_frame(kproto.METADATA, 1, 1, kproto.array([topic], kproto.string))
    for cut in (2, 10, len(frame) - 1):
        with kproto.Conn.to(broker.bootstrap) as c:
            c.send_raw(frame[:cut])  # then close
    # and a connection that sends half a frame and stays open, silent
    idle = kproto.Conn.to(broker.bootstrap)
    idle.send_raw(struct.pack(">i", 100) + b"\x00" * 10)
    try:
        assert_still_serving(broker, topic)
    finally:
        idle.close()


def test_unknown_api_key(broker):
    with kproto.Conn.to(broker.bootstrap) as c:
        c.send_raw(kproto.request_frame(9999, 0, 1, b""))
        # Kafka closes the connection on an unknown API key
        assert c.closed_by_peer()
    with kproto.Conn.to(broker.bootstrap) as c:
        c.send_raw(kproto.request_frame(-1, 0, 1, b""))
        assert c.closed_by_peer()
    assert_still_serving(broker)


def test_unsupported_api_versions_version_gets_v0_answer(broker):
    with kproto.Conn.to(broker.bootstrap) as c:
        err, versions = kproto.api_versions_unsupported(c, version=127)
        assert err == kproto.UNSUPPORTED_VERSION
        assert kproto.API_VERSIONS in versions
        lo, hi = versions[kproto.API_VERSIONS]
        assert lo == 0 and hi >= 3
        for key in (kproto.PRODUCE, kproto.FETCH, kproto.METADATA, kproto.LIST_OFFSETS):
            assert key in versions and versions[key][0] <= versions[key][1]
        # the connection stays usable: the client retries with a version both support
        err, again = kproto.api_versions(c, version=0)
        assert err == 0 and again == versions
    assert_still_serving(broker)


def test_supported_api_versions_v3_flexible(broker):
    # what librdkafka >= 1.4 sends first: ApiVersions v3, flexible request header
    with kproto.Conn.to(broker.bootstrap) as c:
        body = b"\x0ashale-e2e" + b"\x061.0.0" + b"\x00"
        c.corr += 1
        c.send_raw(kproto.request_frame(kproto.API_VERSIONS, 3, c.corr, body, flexible_header=True))
        r = kproto.Reader(c.recv_frame())
        assert r.i32() == c.corr  # response header v0 even for v3 (no tagged fields)
        assert r.i16() == 0  # error code
        n = r.data[r.pos]  # compact array length + 1
        assert n > 1


def test_unsupported_version_of_another_api(broker):
    # Produce v0 (magic 0/1 message sets) is below the supported range. Kafka cannot answer
    # in a version it does not know: closing the connection or an error response (with the
    # request's correlation id) are both acceptable; serving on afterwards is required.
    with kproto.Conn.to(broker.bootstrap) as c:
        c.send_raw(kproto.request_frame(kproto.PRODUCE, 0, 77, b"\x00\x01\x00\x00\x75\x30\x00\x00\x00\x00"))
        c.sock.settimeout(10)
        try:
            head = c.sock.recv(8)
        except ConnectionResetError:
            head = b""
        if head:
            assert len(head) == 8 and struct.unpack(">i", head[4:8])[0] == 77, head
    assert_still_serving(broker)


def test_produce_with_wrong_crc_is_corrupt_message(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    with kproto.Conn.to(broker.bootstrap) as c:
        bad = kproto.record_batch([(b"k", b"v", [])], corrupt_crc=True)
        assert kproto.produce(c, topic, 0, bad)[0] == kproto.CORRUPT_MESSAGE
        good = kproto.record_batch([(b"k", b"v", [("h", b"1")])])
        assert kproto.produce(c, topic, 0, good) == (0, 0)
        # the corrupt batch was not stored: the good one got offset 0
        r = kproto.fetch(c, topic, 0, 0)
        assert r["high_watermark"] == 1
    got = consume(broker.bootstrap, topic, [0])[0]
    assert [(r.key, r.value, r.headers) for r in got] == [(b"k", b"v", [("h", b"1")])]
    assert_still_serving(broker, topic)


def test_produce_with_inconsistent_batch_length(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    with kproto.Conn.to(broker.bootstrap) as c:
        batch = bytearray(kproto.record_batch([(b"k", b"v", [])]))
        struct.pack_into(">i", batch, 8, len(batch))  # batchLength longer than the data
        err, _ = kproto.produce(c, topic, 0, bytes(batch))
        assert err == kproto.CORRUPT_MESSAGE
        batch = bytes(kproto.record_batch([(b"k", b"v", [])]))[:40]  # truncated batch
        err, _ = kproto.produce(c, topic, 0, batch)
        assert err == kproto.CORRUPT_MESSAGE
        assert kproto.fetch(c, topic, 0, 0)["high_watermark"] == 0
    assert_still_serving(broker, topic)


def test_produce_with_wrong_magic(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    with kproto.Conn.to(broker.bootstrap) as c:
        batch = bytearray(kproto.record_batch([(b"k", b"v", [])]))
        batch[16] = 1  # magic 1 header layout is different: must not be taken as v2
        err, _ = kproto.produce(c, topic, 0, bytes(batch))
        assert err in (kproto.CORRUPT_MESSAGE, 87, 42, 43), err  # INVALID_RECORD, INVALID_REQUEST, UNSUPPORTED_FOR_MESSAGE_FORMAT
        assert kproto.fetch(c, topic, 0, 0)["high_watermark"] == 0
    assert_still_serving(broker, topic)


def test_pipelined_requests_are_answered_in_order(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    with kproto.Conn.to(broker.bootstrap) as c:
        frames = b""
        for i in range(1, 31):
            if i % 3 == 0:
                body = (kproto.string(None) + kproto.i16(-1) + kproto.i32(30000)
                        + kproto.array([topic], lambda t: kproto.string(t) + kproto.array(
                            [0], lambda p: kproto.i32(p) + kproto.nbytes(kproto.record_batch([(None, b"%d" % i, [])])))))
                frames += kproto.request_frame(kproto.PRODUCE, 3, i, body)
            elif i % 3 == 1:
                frames += kproto.request_frame(kproto.API_VERSIONS, 0, i, b"")
            else:
                frames += kproto.request_frame(kproto.METADATA, 1, i, kproto.array([topic], kproto.string))
        c.send_raw(frames)
        corrs = []
        for _ in range(30):
            corrs.append(struct.unpack(">i", c.recv_frame()[:4])[0])
        assert corrs == list(range(1, 31))
    got = consume(broker.bootstrap, topic, [0])[0]
    assert [r.value for r in got] == [b"%d" % i for i in range(3, 31, 3)]


def test_acks_zero_produce_gets_no_response(broker):
    topic = create_topic(broker.bootstrap, partitions=1)
    with kproto.Conn.to(broker.bootstrap) as c:
        assert kproto.produce(c, topic, 0, kproto.record_batch([(None, b"fire", [])]), acks=0) is None
        # the next response on the connection belongs to the next request
        err, _ = kproto.api_versions(c)
        assert err == 0
        deadline = time.monotonic() + 30
        while kproto.fetch(c, topic, 0, 0)["high_watermark"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)


# ---------------------------------------------------------------------------------------
# Counts that the bytes do not back. A decoder that sizes a buffer from such a count
# allocates gigabytes from a few bytes (an allocation failure aborts the process), so the
# broker must refuse the request, close that one connection, and go on serving.

HUGE_I32 = 0x7FFFFFFF
HUGE_UVARINT = kproto.uvarint(0xFFFFFFFF)  # compact array length + 1 = 2^32 - 1


def _compact_string(s: str) -> bytes:
    b = s.encode()
    return kproto.uvarint(len(b) + 1) + b


HUGE_COUNT_REQUESTS = {
    # Metadata v1: topics array (int32 count), the 20-byte frame that aborted `shale dev`.
    "metadata_v1_int32_topics": (kproto.METADATA, 1, False, kproto.i32(HUGE_I32)),
    # Metadata v12 (flexible): topics compact array (varint count).
    "metadata_v12_varint_topics": (kproto.METADATA, 12, True, HUGE_UVARINT),
    # Produce v3: one topic whose partition array claims 2^31-1 entries (nested count).
    "produce_v3_int32_partitions": (
        kproto.PRODUCE, 3, False,
        kproto.string(None) + kproto.i16(-1) + kproto.i32(30000)
        + kproto.i32(1) + kproto.string("t") + kproto.i32(HUGE_I32)),
    # Produce v9 (flexible): compact topic array (varint count).
    "produce_v9_varint_topics": (
        kproto.PRODUCE, 9, True,
        b"\x00" + kproto.i16(-1) + kproto.i32(30000) + HUGE_UVARINT),
    # Fetch v4: topics array.
    "fetch_v4_int32_topics": (
        kproto.FETCH, 4, False,
        kproto.i32(-1) + kproto.i32(100) + kproto.i32(1) + kproto.i32(1 << 20) + kproto.i8(0)
        + kproto.i32(HUGE_I32)),
    # CreateTopics v5 (flexible): topics compact array.
    "create_topics_v5_varint_topics": (19, 5, True, HUGE_UVARINT),
    # ListOffsets v1: topics array.
    "list_offsets_v1_int32_topics": (kproto.LIST_OFFSETS, 1, False, kproto.i32(-1) + kproto.i32(HUGE_I32)),
    # JoinGroup v5: protocols array after the group fields.
    "join_group_v5_int32_protocols": (
        11, 5, False,
        kproto.string("g") + kproto.i32(10000) + kproto.i32(10000) + kproto.string("")
        + kproto.string(None) + kproto.string("consumer") + kproto.i32(HUGE_I32)),
    # OffsetCommit v8 (flexible): a topic whose partitions compact array is huge.
    "offset_commit_v8_varint_partitions": (
        8, 8, True,
        _compact_string("g") + kproto.i32(-1) + _compact_string("") + b"\x00"
        + kproto.uvarint(2) + _compact_string("t") + HUGE_UVARINT),
    # DescribeConfigs v4 (flexible): resources compact array.
    "describe_configs_v4_varint_resources": (32, 4, True, HUGE_UVARINT),
    # Flexible request header whose tagged-field count is huge (ApiVersions v3).
    "api_versions_v3_varint_header_tags": (kproto.API_VERSIONS, 3, None, b""),
}


@pytest.mark.parametrize("case", sorted(HUGE_COUNT_REQUESTS))
def test_counts_larger_than_the_frame_close_the_connection_not_the_broker(broker, case):
    api, version, flexible, body = HUGE_COUNT_REQUESTS[case]
    if flexible is None:
        # header v2 by hand: client id, then a tagged-field count of 2^32-1
        header = kproto.i16(api) + kproto.i16(version) + kproto.i32(1) + kproto.string("x") + HUGE_UVARINT
        frame = kproto.i32(len(header)) + header
    else:
        frame = kproto.request_frame(api, version, 1, body, flexible_header=flexible)
    with kproto.Conn.to(broker.bootstrap) as c:
        c.send_raw(frame)
        assert c.closed_by_peer(), "a request whose counts the frame cannot back must be refused"
    assert_still_serving(broker, create_topic(broker.bootstrap, partitions=1))
