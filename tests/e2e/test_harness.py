"""The harness itself: moto S3 server, bucket creation, raw protocol encoders."""

import struct

import kproto


def test_moto_serves_s3_and_buckets_are_created(moto):
    bucket = moto.create_bucket()
    assert bucket in [b["Name"] for b in moto.s3.list_buckets()["Buckets"]]
    moto.s3.put_object(Bucket=bucket, Key="a/b", Body=b"xyz")
    assert moto.objects(bucket) == {"a/b": 3}
    moto.s3.delete_object(Bucket=bucket, Key="a/b")
    assert moto.objects(bucket) == {}


def test_crc32c_known_vector():
    # RFC 3720 check value
    assert kproto.crc32c(b"123456789") == 0xE3069283


def test_record_batch_encoding():
    b = kproto.record_batch([(b"k", b"v", [("h", b"x")]), (None, None, [])], base_timestamp=1000)
    assert kproto.batch_headers(b) == [(0, 1, 2)]
    base_offset, length, epoch, magic, crc = struct.unpack(">qiibI", b[:21])
    assert length == len(b) - 12 and magic == 2
    assert crc == kproto.crc32c(b[21:])
    bad = kproto.record_batch([(b"k", b"v", [])], corrupt_crc=True)
    assert struct.unpack(">I", bad[17:21])[0] != kproto.crc32c(bad[21:])


def test_varint_zigzag():
    assert kproto.varint(0) == b"\x00"
    assert kproto.varint(-1) == b"\x01"
    assert kproto.varint(1) == b"\x02"
    assert kproto.varint(300) == b"\xd8\x04"
