//! Records inside a magic-v2 batch, located without decoding them into owned values.
//!
//! Log compaction must drop some records of a batch and keep the others byte for byte
//! (duplicate header keys, exact timestamps and deltas, producer fields). Re-encoding through
//! a record model loses such details, so kept records are copied as raw bytes into a batch
//! that keeps the original header's base offset, last offset delta, timestamps and producer
//! fields, as Kafka's cleaner does.

use crate::batch::{BatchError, BatchHeader, HEADER_LEN};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{self as cmpr, Compressor, Decompressor};

/// One record of a batch: where it is and what compaction needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRecord<'a> {
    /// Added to the batch's base timestamp: the record's timestamp (CreateTime).
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub has_value: bool,
    /// The whole record, length prefix included.
    pub bytes: &'a [u8],
}

fn corrupt(what: &'static str) -> BatchError {
    BatchError::Corrupt(what)
}

/// Reads a zigzag varint (at most 10 bytes).
fn varint(buf: &[u8], pos: &mut usize) -> Result<i64, BatchError> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = *buf.get(*pos).ok_or(corrupt("truncated varint"))?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err(corrupt("varint longer than 10 bytes"))
}

fn bytes_field<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, BatchError> {
    let len = varint(buf, pos)?;
    if len < 0 {
        return Ok(None);
    }
    let end = pos
        .checked_add(len as usize)
        .filter(|&e| e <= buf.len())
        .ok_or(corrupt("field longer than its record"))?;
    let field = &buf[*pos..end];
    *pos = end;
    Ok(Some(field))
}

/// The uncompressed records section of a batch.
pub fn records_section(batch: &[u8], h: &BatchHeader) -> Result<Bytes, BatchError> {
    let body = batch
        .get(HEADER_LEN..h.total_len())
        .ok_or(corrupt("batch shorter than its length"))?;
    let mut input = Bytes::copy_from_slice(body);
    let out = match h.compression() {
        0 => Ok(input),
        1 => cmpr::Gzip::decompress(&mut input, |b| Ok(b.clone())),
        2 => cmpr::Snappy::decompress(&mut input, |b| Ok(b.clone())),
        3 => cmpr::Lz4::decompress(&mut input, |b| Ok(b.clone())),
        4 => cmpr::Zstd::decompress(&mut input, |b| Ok(b.clone())),
        _ => return Err(BatchError::Invalid("unknown compression codec")),
    };
    out.map_err(|_| corrupt("cannot decompress records"))
}

/// Splits an uncompressed records section into its `count` records.
pub fn parse_records(section: &[u8], count: i32) -> Result<Vec<RawRecord<'_>>, BatchError> {
    let mut out = Vec::with_capacity(count.clamp(0, 100_000) as usize);
    let mut pos = 0usize;
    for _ in 0..count.max(0) {
        let start = pos;
        let len = varint(section, &mut pos)?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| pos.checked_add(l))
            .filter(|&e| e <= section.len())
            .ok_or(corrupt("record longer than its batch"))?;
        let body = &section[pos..end];
        let mut p = 1usize; // attributes
        if body.is_empty() {
            return Err(corrupt("empty record"));
        }
        let timestamp_delta = varint(body, &mut p)?;
        let offset_delta = i32::try_from(varint(body, &mut p)?)
            .map_err(|_| corrupt("offset delta out of range"))?;
        let key = bytes_field(body, &mut p)?;
        let value = bytes_field(body, &mut p)?;
        out.push(RawRecord {
            timestamp_delta,
            offset_delta,
            key,
            has_value: value.is_some(),
            bytes: &section[start..end],
        });
        pos = end;
    }
    if pos != section.len() {
        return Err(corrupt("bytes after the last record"));
    }
    Ok(out)
}

/// A batch holding only `kept` (records of `original`), with the original header's base
/// offset, last offset delta, timestamps, producer fields and compression codec.
pub fn rebuild_batch(
    original: &[u8],
    h: &BatchHeader,
    kept: &[RawRecord<'_>],
) -> Result<BytesMut, BatchError> {
    rebuild_batch_as(original, kept, h.compression())
}

/// Codec ids of the batch attributes (bits 0-2).
pub const CODEC_NONE: u8 = 0;
pub const CODEC_GZIP: u8 = 1;
pub const CODEC_SNAPPY: u8 = 2;
pub const CODEC_LZ4: u8 = 3;
pub const CODEC_ZSTD: u8 = 4;

/// The codec id a topic's `compression.type` asks for; `None` for `producer` (keep the
/// producer's codec) or an unknown name.
pub fn codec_of_compression_type(name: &str) -> Option<u8> {
    match name {
        "uncompressed" => Some(CODEC_NONE),
        "gzip" => Some(CODEC_GZIP),
        "snappy" => Some(CODEC_SNAPPY),
        "lz4" => Some(CODEC_LZ4),
        "zstd" => Some(CODEC_ZSTD),
        _ => None,
    }
}

/// `rebuild_batch` writing the records with `codec` (the topic's `compression.type` when it
/// differs from the producer's): the header's fields are kept and its compression bits set.
pub fn rebuild_batch_as(
    original: &[u8],
    kept: &[RawRecord<'_>],
    codec: u8,
) -> Result<BytesMut, BatchError> {
    let header = original
        .get(..HEADER_LEN)
        .ok_or(corrupt("batch shorter than its header"))?;
    let mut out = BytesMut::with_capacity(original.len());
    out.extend_from_slice(header);
    let attributes = (u16::from_be_bytes([out[21], out[22]]) & !0x07) | u16::from(codec & 0x07);
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    let write = |buf: &mut BytesMut| {
        for r in kept {
            buf.put_slice(r.bytes);
        }
        Ok(())
    };
    let written = match codec {
        0 => cmpr::None::compress(&mut out, write),
        1 => cmpr::Gzip::compress(&mut out, write),
        2 => cmpr::Snappy::compress(&mut out, write),
        3 => cmpr::Lz4::compress(&mut out, write),
        4 => cmpr::Zstd::compress(&mut out, write),
        _ => return Err(BatchError::Invalid("unknown compression codec")),
    };
    written.map_err(|_| corrupt("cannot compress records"))?;
    let batch_length = i32::try_from(out.len() - 12).map_err(|_| corrupt("batch too large"))?;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let count = i32::try_from(kept.len()).map_err(|_| corrupt("too many records"))?;
    out[57..61].copy_from_slice(&count.to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::validate_batches;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    fn batch(compression: Compression) -> BytesMut {
        let records: Vec<Record> = (0..6)
            .map(|i| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: 7,
                producer_epoch: 1,
                timestamp_type: TimestampType::Creation,
                offset: 100 + i,
                sequence: 10 + i as i32,
                timestamp: 1_000 + i,
                key: (i != 5).then(|| Bytes::from(format!("k{}", i % 3))),
                value: (i != 4).then(|| Bytes::from(vec![b'v'; 50])),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf
    }

    #[test]
    fn keeps_chosen_records_byte_for_byte_under_every_codec() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = batch(c);
            let h = validate_batches(&b).unwrap()[0].0;
            let section = records_section(&b, &h).unwrap();
            let records = parse_records(&section, h.record_count).unwrap();
            assert_eq!(records.len(), 6);
            assert_eq!(records[1].key, Some(&b"k1"[..]));
            assert!(!records[4].has_value);
            assert_eq!(records[5].key, None);
            let kept: Vec<_> = records
                .iter()
                .copied()
                .filter(|r| r.offset_delta % 2 == 1)
                .collect();
            let rebuilt = rebuild_batch(&b, &h, &kept).unwrap();
            let nh = validate_batches(&rebuilt).unwrap()[0].0;
            assert_eq!(
                (
                    nh.base_offset,
                    nh.last_offset_delta,
                    nh.record_count,
                    nh.producer_id
                ),
                (100, 5, 3, 7)
            );
            assert_eq!(
                (nh.base_timestamp, nh.max_timestamp, nh.base_sequence),
                (h.base_timestamp, h.max_timestamp, 10)
            );
            // The kept records are the original bytes (so duplicate header keys, which a
            // record model would merge, survive).
            let new_section = records_section(&rebuilt, &nh).unwrap();
            let again = parse_records(&new_section, nh.record_count).unwrap();
            let raw: Vec<&[u8]> = again.iter().map(|r| r.bytes).collect();
            let want: Vec<&[u8]> = kept.iter().map(|r| r.bytes).collect();
            assert_eq!(raw, want);
            let set = RecordBatchDecoder::decode(&mut rebuilt.freeze()).unwrap();
            let offsets: Vec<i64> = set.records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, vec![101, 103, 105], "{c:?}");
            assert_eq!(set.records[0].timestamp, 1_001);
        }
    }

    #[test]
    fn recompressing_keeps_every_record_and_the_header_fields() {
        for from in [Compression::None, Compression::Lz4] {
            for to in [CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD] {
                let b = batch(from);
                let h = validate_batches(&b).unwrap()[0].0;
                let section = records_section(&b, &h).unwrap();
                let all = parse_records(&section, h.record_count).unwrap();
                let out = rebuild_batch_as(&b, &all, to).unwrap();
                let nh = validate_batches(&out).unwrap()[0].0;
                assert_eq!(nh.compression(), to);
                assert_eq!(
                    (
                        nh.base_offset,
                        nh.record_count,
                        nh.max_timestamp,
                        nh.producer_id
                    ),
                    (
                        h.base_offset,
                        h.record_count,
                        h.max_timestamp,
                        h.producer_id
                    )
                );
                let set = RecordBatchDecoder::decode(&mut out.freeze()).unwrap();
                let ts: Vec<i64> = set.records.iter().map(|r| r.timestamp).collect();
                assert_eq!(ts, (1_000..1_006).collect::<Vec<_>>());
                assert_eq!(all[3].timestamp_delta, 3);
            }
        }
    }

    #[test]
    fn garbage_records_are_errors() {
        for len in 0..64usize {
            let junk: Vec<u8> = (0..len).map(|i| (i * 73 + 5) as u8).collect();
            let _ = parse_records(&junk, 3);
        }
        assert!(parse_records(&[0x02, 0x00], 1).is_err());
    }
}
