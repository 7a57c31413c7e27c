//! Records inside a magic-v2 batch, located without decoding them into owned values.
//!
//! Log compaction must drop some records of a batch and keep the others byte for byte
//! (duplicate header keys, exact timestamps and deltas, producer fields). Re-encoding through
//! a record model loses such details, so kept records are copied as raw bytes into a batch
//! that keeps the original header's base offset, last offset delta, timestamps and producer
//! fields, as Kafka's cleaner does.

use crate::batch::{BatchError, BatchHeader, HEADER_LEN, LOG_OVERHEAD};
use crate::decompress::{self, DecompressError, decompress_capped};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{self as cmpr, Compressor};
use kafka_protocol::records::{Compression, RecordBatchDecoder, RecordSet};

/// Cap on a batch's uncompressed records where the caller has no better figure (and for
/// [`records_section`]): a default-sized (1 MiB) batch at a 64:1 compression ratio.
/// Decoding into `kafka-protocol` records costs up to about
/// `cap + cap / MIN_RECORD_LEN * size_of::<Record>()` bytes (7-byte records), so the cap
/// also bounds that.
pub const DEFAULT_DECOMPRESS_CAP: usize = 64 << 20;

/// The fewest bytes one record takes: length, attributes, timestamp delta, offset delta,
/// key length, value length and header count, one byte each.
pub const MIN_RECORD_LEN: usize = 7;
/// The fewest bytes one record header takes: key length and value length.
const MIN_HEADER_LEN: usize = 2;

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

/// Reads a zigzag varint of an int32 field (at most 5 bytes), as `kafka-protocol` does.
/// Longer or overflowing encodings are refused: the codec stops after 5 bytes, so
/// accepting them would let it read the following fields from other bytes than we checked.
fn varint(buf: &[u8], pos: &mut usize) -> Result<i64, BatchError> {
    let z = unsigned_varint(buf, pos, 5)?;
    let z = u32::try_from(z).map_err(|_| corrupt("varint overflows int32"))?;
    Ok(i64::from(((z >> 1) as i32) ^ -((z & 1) as i32)))
}

/// Reads a zigzag varint of an int64 field (at most 10 bytes).
fn varlong(buf: &[u8], pos: &mut usize) -> Result<i64, BatchError> {
    let z = unsigned_varint(buf, pos, 10)?;
    Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
}

fn unsigned_varint(buf: &[u8], pos: &mut usize, max_bytes: u32) -> Result<u64, BatchError> {
    let mut value: u64 = 0;
    for i in 0..max_bytes {
        let byte = *buf.get(*pos).ok_or(corrupt("truncated varint"))?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // A 10-byte varint carries one bit in its last byte.
            if i == 9 && byte > 1 {
                return Err(corrupt("varint overflows int64"));
            }
            return Ok(value);
        }
    }
    Err(corrupt("varint too long"))
}

fn bytes_field<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, BatchError> {
    let len = varint(buf, pos)?;
    if len == -1 {
        return Ok(None);
    }
    if len < 0 {
        return Err(corrupt("negative field length"));
    }
    let end = pos
        .checked_add(len as usize)
        .filter(|&e| e <= buf.len())
        .ok_or(corrupt("field longer than its record"))?;
    let field = &buf[*pos..end];
    *pos = end;
    Ok(Some(field))
}

/// The uncompressed records section of a batch, inflated at most to
/// [`DEFAULT_DECOMPRESS_CAP`].
pub fn records_section(batch: &[u8], h: &BatchHeader) -> Result<Bytes, BatchError> {
    records_section_capped(batch, h, DEFAULT_DECOMPRESS_CAP)
}

/// The uncompressed records section of a batch, refusing to inflate beyond `cap` bytes.
pub fn records_section_capped(
    batch: &[u8],
    h: &BatchHeader,
    cap: usize,
) -> Result<Bytes, BatchError> {
    if h.batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Err(corrupt("batch length below header size"));
    }
    let body = batch
        .get(HEADER_LEN..h.total_len())
        .ok_or(corrupt("batch shorter than its length"))?;
    decompress_capped(h.compression(), body, cap)
        .map(Bytes::from)
        .map_err(batch_error)
}

fn batch_error(e: DecompressError) -> BatchError {
    match e {
        DecompressError::TooLarge { .. } => {
            BatchError::Invalid("records inflate beyond the decompression cap")
        }
        DecompressError::Corrupt { .. } => corrupt("cannot decompress records"),
        DecompressError::UnknownCodec(_) => BatchError::Invalid("unknown compression codec"),
    }
}

/// Checks that an uncompressed records section holds exactly `count` well-formed records:
/// every count (records, headers) is backed by enough bytes and every length fits inside
/// its record. Whatever a decoder sizes from those counts is then bounded by the section.
pub fn check_records(section: &[u8], count: i32) -> Result<(), BatchError> {
    walk_records(section, count, |_, _| Ok(()))
}

/// [`check_records`] plus what `kafka-protocol` computes per record: base timestamp plus
/// timestamp delta and base offset plus offset delta must not overflow (the codec adds them
/// unchecked, which panics in debug builds).
fn check_records_of(section: &[u8], h: &BatchHeader) -> Result<(), BatchError> {
    walk_records(section, h.record_count, |ts_delta, offset_delta| {
        h.base_timestamp
            .checked_add(ts_delta)
            .and(h.base_offset.checked_add(i64::from(offset_delta)))
            .map(drop)
            .ok_or(BatchError::Invalid("record timestamp or offset overflows"))
    })
}

fn walk_records(
    section: &[u8],
    count: i32,
    mut each: impl FnMut(i64, i32) -> Result<(), BatchError>,
) -> Result<(), BatchError> {
    let count = usize::try_from(count).map_err(|_| BatchError::Invalid("negative record count"))?;
    if count.saturating_mul(MIN_RECORD_LEN) > section.len() {
        return Err(corrupt("record count exceeds the records section"));
    }
    let mut pos = 0usize;
    for _ in 0..count {
        let len = varint(section, &mut pos)?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| pos.checked_add(l))
            .filter(|&e| e <= section.len())
            .ok_or(corrupt("record longer than its batch"))?;
        let body = section
            .get(pos..end)
            .ok_or(corrupt("record longer than its batch"))?;
        let (ts_delta, offset_delta) = check_record_body(body)?;
        each(ts_delta, offset_delta)?;
        pos = end;
    }
    if pos != section.len() {
        return Err(corrupt("bytes after the last record"));
    }
    Ok(())
}

/// Walks one record (after its length); returns its timestamp and offset deltas.
fn check_record_body(body: &[u8]) -> Result<(i64, i32), BatchError> {
    let mut p = 0usize;
    body.first().ok_or(corrupt("empty record"))?; // attributes
    p += 1;
    let ts_delta = varlong(body, &mut p)?;
    let offset_delta =
        i32::try_from(varint(body, &mut p)?).map_err(|_| corrupt("offset delta out of range"))?;
    bytes_field(body, &mut p)?; // key
    bytes_field(body, &mut p)?; // value
    let headers = varint(body, &mut p)?;
    let headers = usize::try_from(headers).map_err(|_| corrupt("negative record header count"))?;
    if headers.saturating_mul(MIN_HEADER_LEN) > body.len().saturating_sub(p) {
        return Err(corrupt("record header count exceeds the record"));
    }
    for _ in 0..headers {
        if bytes_field(body, &mut p)?.is_none() {
            return Err(corrupt("null record header key"));
        }
        bytes_field(body, &mut p)?;
    }
    if p != body.len() {
        return Err(corrupt("bytes after the record's headers"));
    }
    Ok((ts_delta, offset_delta))
}

/// The whole batches of `payload`, one after the other; an error for a batch shorter than
/// its header or than its declared length (a torn tail is not silently dropped).
fn whole_batches(payload: &[u8]) -> impl Iterator<Item = Result<(BatchHeader, &[u8]), BatchError>> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let rest = payload.get(pos..).filter(|r| !r.is_empty())?;
        let batch = BatchHeader::parse(rest).and_then(|h| {
            if h.batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
                return Err(corrupt("batch length below header size"));
            }
            let batch = rest
                .get(..h.total_len())
                .ok_or(corrupt("batch shorter than its length"))?;
            Ok((h, batch))
        });
        // After an error the walk stops: nothing after it can be located.
        pos = match &batch {
            Ok((_, b)) => pos + b.len(),
            Err(_) => payload.len(),
        };
        Some(batch)
    })
}

/// A whole batch's CRC checked and its records inflated at most to `cap`.
fn checked_section(batch: &[u8], h: &BatchHeader, cap: usize) -> Result<Bytes, BatchError> {
    if crc32c::crc32c(batch.get(21..).unwrap_or_default()) != h.crc {
        return Err(corrupt("CRC mismatch"));
    }
    records_section_capped(batch, h, cap)
}

/// Decodes one stored or produced magic-v2 batch into `kafka-protocol` records, safely:
/// the records are inflated at most to `cap` bytes and checked by [`check_records`] before
/// the codec (which reserves from the record and header counts) sees them.
pub fn decode_batch_capped(batch: &[u8], cap: usize) -> Result<RecordSet, BatchError> {
    let h = BatchHeader::parse(batch)?;
    let whole = batch
        .get(..h.total_len())
        .ok_or(corrupt("batch shorter than its length"))?;
    let section = checked_section(whole, &h, cap)?;
    check_records_of(&section, &h)?;
    let mut buf = Bytes::copy_from_slice(whole);
    // The codec hands us the compressed bytes; we answer with the section already checked.
    let inflated = |_: &mut Bytes, _: Compression| Ok(section.clone());
    RecordBatchDecoder::decode_with_custom_compression(&mut buf, Some(inflated))
        .map_err(|_| corrupt("cannot decode record batch"))
}

/// [`decode_batch_capped`] for each of the concatenated batches in `payload`, which must
/// hold whole batches only; `cap` applies to each batch.
pub fn decode_batches_capped(payload: &[u8], cap: usize) -> Result<Vec<RecordSet>, BatchError> {
    whole_batches(payload)
        .map(|b| b.and_then(|(_, batch)| decode_batch_capped(batch, cap)))
        .collect()
}

/// (offset, timestamp) of every record of the concatenated batches in `payload`, without
/// building `kafka-protocol` records (16 bytes per record instead of a `Record` each): what
/// a timestamp look-up needs. Batches are checked as by [`decode_batch_capped`]. In a
/// LogAppendTime batch every record's timestamp is the batch's max timestamp, as in Kafka.
pub fn record_timestamps(payload: &[u8], cap: usize) -> Result<Vec<(i64, i64)>, BatchError> {
    let mut out = Vec::new();
    for b in whole_batches(payload) {
        let (h, batch) = b?;
        let section = checked_section(batch, &h, cap)?;
        walk_records(&section, h.record_count, |ts_delta, offset_delta| {
            let offset = h.base_offset.checked_add(i64::from(offset_delta));
            let timestamp = if h.is_log_append_time() {
                Some(h.max_timestamp)
            } else {
                h.base_timestamp.checked_add(ts_delta)
            };
            match (offset, timestamp) {
                (Some(o), Some(t)) => {
                    out.push((o, t));
                    Ok(())
                }
                _ => Err(BatchError::Invalid("record timestamp or offset overflows")),
            }
        })?;
    }
    Ok(out)
}

/// Splits an uncompressed records section into its `count` records.
pub fn parse_records(section: &[u8], count: i32) -> Result<Vec<RawRecord<'_>>, BatchError> {
    // A record takes at least MIN_RECORD_LEN bytes, so the section bounds the capacity.
    let backed = section.len() / MIN_RECORD_LEN;
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(backed));
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
        let timestamp_delta = varlong(body, &mut p)?;
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

/// The codec id a topic's `compression.type` asks for; `None` for `producer` (keep the
/// producer's codec) or an unknown name.
pub fn codec_of_compression_type(name: &str) -> Option<u8> {
    match name {
        "uncompressed" => Some(decompress::NONE),
        "gzip" => Some(decompress::GZIP),
        "snappy" => Some(decompress::SNAPPY),
        "lz4" => Some(decompress::LZ4),
        "zstd" => Some(decompress::ZSTD),
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

    /// Rewrites a header field inside the CRC and fixes the CRC, as an attacker would.
    fn patch(batch: &mut [u8], at: usize, value: &[u8]) {
        batch[at..at + value.len()].copy_from_slice(value);
        let crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn safe_decoding_gives_the_codec_records_in_every_codec() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = batch(c);
            let ours = decode_batch_capped(&b, 1 << 20).unwrap();
            let theirs = RecordBatchDecoder::decode(&mut b.clone().freeze()).unwrap();
            assert_eq!(ours.records, theirs.records, "{c:?}");
        }
    }

    #[test]
    fn record_timestamps_match_the_codec_in_every_codec() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut two = batch(c);
            two.extend_from_slice(&batch(c));
            let theirs: Vec<(i64, i64)> = RecordBatchDecoder::decode_all(&mut two.clone().freeze())
                .unwrap()
                .iter()
                .flat_map(|s| s.records.iter().map(|r| (r.offset, r.timestamp)))
                .collect();
            assert_eq!(record_timestamps(&two, 1 << 20).unwrap(), theirs, "{c:?}");
        }
    }

    #[test]
    fn record_timestamps_of_a_log_append_time_batch_are_its_max_timestamp() {
        let mut b = batch(Compression::None);
        crate::batch::set_log_append_time(&mut b, 77_777);
        let times = record_timestamps(&b, 1 << 20).unwrap();
        assert_eq!(times.len(), 6);
        assert!(times.iter().all(|&(_, t)| t == 77_777));
    }

    #[test]
    fn concatenated_batches_decode_safely() {
        let mut two = batch(Compression::None);
        two.extend_from_slice(&batch(Compression::Zstd));
        assert_eq!(decode_batches_capped(&two, 1 << 20).unwrap().len(), 2);
        assert!(decode_batches_capped(&two[..two.len() - 1], 1 << 20).is_err());
    }

    #[test]
    fn a_record_count_of_i32_max_is_refused_before_the_codec_reserves_for_it() {
        let mut b = batch(Compression::None);
        patch(&mut b, 23, &i32::MAX.to_be_bytes()); // lastOffsetDelta
        patch(&mut b, 57, &i32::MAX.to_be_bytes()); // recordCount
        assert!(validate_batches(&b).is_ok(), "the header alone looks sane");
        assert_eq!(
            decode_batch_capped(&b, 1 << 20).unwrap_err(),
            BatchError::Corrupt("record count exceeds the records section")
        );
    }

    #[test]
    fn a_header_count_beyond_the_record_is_refused() {
        // One record: attributes, ts delta, offset delta, key null, value null, then a
        // header count of 2^30 (zigzag varint) with nothing behind it.
        let body = [0u8, 0, 0, 1, 1, 0x80, 0x80, 0x80, 0x80, 0x08];
        let mut section = vec![(body.len() as u8) << 1];
        section.extend_from_slice(&body);
        assert_eq!(
            check_records(&section, 1),
            Err(BatchError::Corrupt(
                "record header count exceeds the record"
            ))
        );
    }

    #[test]
    fn an_overlong_varint_is_refused_so_the_codec_cannot_read_other_bytes_than_we_checked() {
        // Key length 0 written in 6 bytes: kafka-protocol stops after 5 and would read the
        // sixth as the value length, shifting every later field.
        let body = [0u8, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 1, 0];
        let mut section = vec![(body.len() as u8) << 1];
        section.extend_from_slice(&body);
        assert_eq!(
            check_records(&section, 1),
            Err(BatchError::Corrupt("varint too long"))
        );
    }

    #[test]
    fn a_compressed_bomb_is_refused_at_the_cap() {
        let records: Vec<Record> = (0..4)
            .map(|i| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: 0,
                timestamp: 0,
                key: Some(Bytes::from_static(b"k")),
                value: Some(Bytes::from(vec![0u8; 1 << 20])),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut b = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut b,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::Zstd,
            },
        )
        .unwrap();
        assert!(b.len() < 4096, "{} compressed bytes", b.len());
        assert_eq!(
            decode_batch_capped(&b, 1 << 20).unwrap_err(),
            BatchError::Invalid("records inflate beyond the decompression cap")
        );
        assert!(decode_batch_capped(&b, 8 << 20).is_ok());
    }

    #[test]
    fn recompressing_keeps_every_record_and_the_header_fields() {
        for from in [Compression::None, Compression::Lz4] {
            for to in [
                decompress::NONE,
                decompress::GZIP,
                decompress::SNAPPY,
                decompress::LZ4,
                decompress::ZSTD,
            ] {
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
            let _ = check_records(&junk, 3);
            let _ = decode_batches_capped(&junk, 1 << 16);
        }
        assert!(parse_records(&[0x02, 0x00], 1).is_err());
    }
}
