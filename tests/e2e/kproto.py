"""A minimal raw Kafka protocol client for tests that real clients cannot express
(malformed frames, corrupt batches, unsupported versions) and for exact wire-level checks
(the batch a Fetch returns, ListOffsets by timestamp).

Only non-flexible (pre-KIP-482) versions are encoded, except the ApiVersions v3+ header
used to probe the UNSUPPORTED_VERSION fallback.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time

# ---------------------------------------------------------------------------------------
# API keys and error codes used by the tests
PRODUCE, FETCH, LIST_OFFSETS, METADATA, API_VERSIONS = 0, 1, 2, 3, 18

NONE = 0
OFFSET_OUT_OF_RANGE = 1
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
INVALID_TOPIC_EXCEPTION = 17
UNSUPPORTED_VERSION = 35

# ---------------------------------------------------------------------------------------
# CRC-32C (Castagnoli), as in the record batch header


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# ---------------------------------------------------------------------------------------
# Encoding


def i8(v):
    return struct.pack(">b", v)


def i16(v):
    return struct.pack(">h", v)


def i32(v):
    return struct.pack(">i", v)


def i64(v):
    return struct.pack(">q", v)


def u32(v):
    return struct.pack(">I", v)


def string(s: str | None) -> bytes:
    if s is None:
        return i16(-1)
    b = s.encode()
    return i16(len(b)) + b


def nbytes(b: bytes | None) -> bytes:
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


def array(items, enc) -> bytes:
    if items is None:
        return i32(-1)
    return i32(len(items)) + b"".join(enc(x) for x in items)


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varint(n: int) -> bytes:
    return uvarint((n << 1) ^ (n >> 63))


def record_batch(records, base_timestamp: int | None = None, base_offset: int = 0,
                 corrupt_crc: bool = False) -> bytes:
    """A magic v2, uncompressed record batch. `records` are (key, value, headers) with
    headers a list of (name, value) pairs; key/value may be None."""
    if base_timestamp is None:
        base_timestamp = int(time.time() * 1000)
    recs = b""
    for i, (key, value, headers) in enumerate(records):
        body = i8(0) + varint(0) + varint(i)
        body += varint(-1) if key is None else varint(len(key)) + key
        body += varint(-1) if value is None else varint(len(value)) + value
        body += varint(len(headers))
        for hk, hv in headers:
            hkb = hk.encode()
            body += varint(len(hkb)) + hkb
            body += varint(-1) if hv is None else varint(len(hv)) + hv
        recs += varint(len(body)) + body
    after_crc = (
        i16(0)  # attributes: no compression, CreateTime
        + i32(len(records) - 1)  # lastOffsetDelta
        + i64(base_timestamp)
        + i64(base_timestamp)  # maxTimestamp
        + i64(-1)  # producerId
        + i16(-1)  # producerEpoch
        + i32(-1)  # baseSequence
        + i32(len(records))
        + recs
    )
    crc = crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0xDEADBEEF
    body = i32(-1) + i8(2) + u32(crc) + after_crc  # partitionLeaderEpoch, magic, crc
    return i64(base_offset) + i32(len(body)) + body


def request_frame(api_key: int, version: int, corr_id: int, body: bytes,
                  client_id: str | None = "shale-e2e", flexible_header: bool = False) -> bytes:
    header = i16(api_key) + i16(version) + i32(corr_id) + string(client_id)
    if flexible_header:
        header += b"\x00"  # no tagged fields
    payload = header + body
    return i32(len(payload)) + payload


# ---------------------------------------------------------------------------------------
# Decoding


class Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError(f"short response: need {n} bytes at {self.pos}, have {len(self.data)}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def i8(self):
        return struct.unpack(">b", self.take(1))[0]

    def i16(self):
        return struct.unpack(">h", self.take(2))[0]

    def i32(self):
        return struct.unpack(">i", self.take(4))[0]

    def i64(self):
        return struct.unpack(">q", self.take(8))[0]

    def bool(self):
        return self.i8() != 0

    def string(self):
        n = self.i16()
        return None if n < 0 else self.take(n).decode()

    def nbytes(self):
        n = self.i32()
        return None if n < 0 else self.take(n)

    def array(self, dec):
        n = self.i32()
        return None if n < 0 else [dec(self) for _ in range(n)]

    def remaining(self):
        return len(self.data) - self.pos


def batch_headers(records: bytes):
    """(baseOffset, lastOffsetDelta, recordCount) of each complete batch in a records blob."""
    out = []
    pos = 0
    while pos + 61 <= len(records):
        base_offset, length = struct.unpack(">qi", records[pos:pos + 12])
        if pos + 12 + length > len(records):
            break  # a partial trailing batch is allowed in a fetch response
        last_delta = struct.unpack(">i", records[pos + 23:pos + 27])[0]
        count = struct.unpack(">i", records[pos + 57:pos + 61])[0]
        out.append((base_offset, last_delta, count))
        pos += 12 + length
    return out


# ---------------------------------------------------------------------------------------
# Connection


class Closed(Exception):
    """The broker closed the connection."""


class Conn:
    def __init__(self, host: str, port: int, timeout: float = 30.0, tls=None):
        """`tls`: an ssl.SSLContext for a TLS listener (None: plaintext)."""
        self.sock = socket.create_connection((host, port), timeout=timeout)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=host)
        self.sock.settimeout(timeout)
        self.corr = 0

    @classmethod
    def to(cls, bootstrap: str, timeout: float = 30.0, tls=None) -> "Conn":
        host, port = bootstrap.rsplit(":", 1)
        return cls(host, int(port), timeout, tls)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except (ConnectionResetError, ssl.SSLError) as e:
                raise Closed(str(e)) from e
            if not chunk:
                raise Closed(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def recv_frame(self) -> bytes:
        (size,) = struct.unpack(">i", self.recv_exact(4))
        return self.recv_exact(size)

    def request(self, api_key: int, version: int, body: bytes, flexible_header: bool = False,
                expect_response: bool = True) -> Reader | None:
        """Sends one request; returns a Reader positioned after the correlation id (response
        header v0)."""
        self.corr += 1
        corr = self.corr
        self.send_raw(request_frame(api_key, version, corr, body, flexible_header=flexible_header))
        if not expect_response:
            return None
        frame = self.recv_frame()
        r = Reader(frame)
        got = r.i32()
        if got != corr:
            raise AssertionError(f"correlation id {got}, expected {corr}")
        return r

    def closed_by_peer(self, timeout: float = 10.0) -> bool:
        """True when the broker closes the connection (EOF or reset) within `timeout`
        without sending anything; False when it stays open; AssertionError if it sends data."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        except OSError as e:
            # A TLS connection the server ends without close_notify.
            if "EOF" in str(e) or "UNEXPECTED_EOF" in str(e):
                return True
            raise
        if data:
            raise AssertionError(f"expected the connection to be closed, got {len(data)} bytes: {data[:64]!r}")
        return True


# ---------------------------------------------------------------------------------------
# Requests


def api_versions(conn: Conn, version: int = 0):
    """ApiVersions v0..v2 (non-flexible). Returns (error_code, {api_key: (min, max)})."""
    r = conn.request(API_VERSIONS, version, b"")
    return _api_versions_v0_body(r)


def _api_versions_v0_body(r: Reader):
    err = r.i16()
    keys = r.array(lambda r: (r.i16(), r.i16(), r.i16()))
    return err, {k: (lo, hi) for k, lo, hi in keys or []}


def api_versions_unsupported(conn: Conn, version: int = 127):
    """An ApiVersions request in a version newer than any broker supports (flexible header
    v2 and a v3-style body, as a newer client sends it). The broker must answer in v0 format
    with UNSUPPORTED_VERSION and its ranges. Returns (error_code, {api_key: (min, max)})."""
    body = b"\x0ashale-e2e" + b"\x061.0.0" + b"\x00"  # compact strings name+version, tags
    r = conn.request(API_VERSIONS, version, body, flexible_header=True)
    return _api_versions_v0_body(r)


def metadata(conn: Conn, topics=None, allow_auto_topic_creation: bool = False, version: int = 4):
    """Metadata v1 or v4. Returns {'brokers': [(id, host, port)], 'topics': {name: (error,
    [partition...])}, 'cluster_id': str|None, 'controller': int}."""
    assert version in (1, 4)
    body = array(topics, string)
    if version >= 4:
        body += i8(1 if allow_auto_topic_creation else 0)
    r = conn.request(METADATA, version, body)
    if version >= 3:
        r.i32()  # throttle
    brokers = r.array(lambda r: (r.i32(), r.string(), r.i32(), r.string()))
    cluster_id = r.string() if version >= 2 else None
    controller = r.i32()

    def partition(r):
        err, index, leader = r.i16(), r.i32(), r.i32()
        r.array(lambda r: r.i32())
        r.array(lambda r: r.i32())
        return (index, err, leader)

    def topic(r):
        err, name, _internal = r.i16(), r.string(), r.bool()
        return name, err, r.array(partition)

    topics_out = {name: (err, parts) for name, err, parts in r.array(topic)}
    return {
        "brokers": [(b[0], b[1], b[2]) for b in brokers],
        "topics": topics_out,
        "cluster_id": cluster_id,
        "controller": controller,
    }


def produce(conn: Conn, topic: str, partition: int, records: bytes, acks: int = -1,
            timeout_ms: int = 30000, version: int = 3):
    """Produce v3..v7 of one batch blob to one partition. Returns (error_code, base_offset)."""
    body = string(None) + i16(acks) + i32(timeout_ms)
    body += array([topic], lambda t: string(t) + array([partition], lambda p: i32(p) + nbytes(records)))
    r = conn.request(PRODUCE, version, body, expect_response=acks != 0)
    if r is None:
        return None

    def part(r):
        index, err, base = r.i32(), r.i16(), r.i64()
        r.i64()  # log_append_time
        if version >= 5:
            r.i64()  # log_start_offset
        return index, err, base

    resps = r.array(lambda r: (r.string(), r.array(part)))
    (_, parts), = resps
    (_, err, base), = parts
    return err, base


def fetch(conn: Conn, topic: str, partition: int, offset: int, max_wait_ms: int = 100,
          min_bytes: int = 1, max_bytes: int = 50 << 20, partition_max_bytes: int = 1 << 20):
    """Fetch v4 of one partition. Returns {'error', 'high_watermark', 'records'}."""
    body = i32(-1) + i32(max_wait_ms) + i32(min_bytes) + i32(max_bytes) + i8(0)
    body += array([topic], lambda t: string(t) + array(
        [partition], lambda p: i32(p) + i64(offset) + i32(partition_max_bytes)))
    r = conn.request(FETCH, 4, body)
    r.i32()  # throttle

    def part(r):
        index, err, hw, _lso = r.i32(), r.i16(), r.i64(), r.i64()
        r.array(lambda r: (r.i64(), r.i64()))
        return {"partition": index, "error": err, "high_watermark": hw, "records": r.nbytes() or b""}

    resps = r.array(lambda r: (r.string(), r.array(part)))
    (_, parts), = resps
    return parts[0]


def list_offsets(conn: Conn, topic: str, partition: int, timestamp: int):
    """ListOffsets v1. Returns (error_code, timestamp, offset)."""
    body = i32(-1) + array([topic], lambda t: string(t) + array(
        [partition], lambda p: i32(p) + i64(timestamp)))
    r = conn.request(LIST_OFFSETS, 1, body)
    resps = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i16(), r.i64(), r.i64()))))
    (_, parts), = resps
    (_, err, ts, off), = parts
    return err, ts, off


# ---------------------------------------------------------------------------------------
# Client quotas (KIP-546), v0 (non-flexible)
DESCRIBE_CLIENT_QUOTAS, ALTER_CLIENT_QUOTAS = 48, 49
MATCH_EXACT, MATCH_DEFAULT, MATCH_SPECIFIED = 0, 1, 2


def f64(v):
    return struct.pack(">d", v)


def _entity(parts) -> bytes:
    """`parts`: {entity type: name, or None for the type's default}."""
    return array(sorted(parts.items()), lambda p: string(p[0]) + string(p[1]))


def _read_entity(r: Reader) -> dict:
    return dict(r.array(lambda r: (r.string(), r.string())) or [])


def alter_client_quotas(conn: Conn, entries, validate_only: bool = False):
    """AlterClientQuotas v0. `entries`: [(entity parts, {key: value or None to remove})].
    Returns [(error_code, error_message, entity parts)]."""
    def op(kv):
        key, value = kv
        return string(key) + f64(0.0 if value is None else value) + i8(1 if value is None else 0)

    body = array(entries, lambda e: _entity(e[0]) + array(list(e[1].items()), op))
    body += i8(1 if validate_only else 0)
    r = conn.request(ALTER_CLIENT_QUOTAS, 0, body)
    r.i32()  # throttle_time_ms
    return r.array(lambda r: (r.i16(), r.string(), _read_entity(r)))


def describe_client_quotas(conn: Conn, components, strict: bool = False):
    """DescribeClientQuotas v0. `components`: [(entity type, match type, name)].
    Returns (error_code, error_message, [(entity parts, {key: value})] or None)."""
    body = array(components, lambda c: string(c[0]) + i8(c[1]) + string(c[2]))
    body += i8(1 if strict else 0)
    r = conn.request(DESCRIBE_CLIENT_QUOTAS, 0, body)
    r.i32()  # throttle_time_ms
    err, msg = r.i16(), r.string()
    entries = r.array(lambda r: (
        _read_entity(r),
        dict(r.array(lambda r: (r.string(), struct.unpack(">d", r.take(8))[0])) or []),
    ))
    return err, msg, entries
