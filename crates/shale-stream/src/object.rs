//! The object format shared by WAL (stream-set) objects and compacted objects.
//!
//! ```text
//! object  = block* index footer
//! block   = entry*                                  (one range of one stream)
//! entry   = base_offset u64 | count u32 | max_timestamp i64 | len u32 | payload[len]
//! index   = range_count u32 | range*
//! range   = stream_id u64 | start_offset u64 | end_offset u64 | position u64 | length u32
//!         | entry_count u32 | max_timestamp i64 | block_crc32c u32            (52 bytes)
//! footer  = index_position u64 | index_length u32 | index_crc32c u32 | version u16
//!         | flags u16 | magic "SHOB"                                          (24 bytes)
//! ```
//!
//! Entries of a block are in offset order and lie inside the range's `[start, end)`. WAL
//! objects cover their range contiguously; a range written by log compaction
//! ([`encode_bounded`]) may have gaps between entries, or no entry at all (an empty block),
//! so that the stream's ranges still tile its offsets after records were removed.
//!
//! All integers are big-endian. A block can be read and verified on its own with one ranged
//! GET (the catalog holds its position, length and CRC), so reads never need the index; the
//! index and footer make an object self-describing (repair tools, compaction sanity checks).
//!
//! Decoding never trusts the bytes: every access is bounds-checked and every inconsistency is
//! a [`FormatError`], never a panic. Decoded payloads are `Bytes::slice`s of the input.

use crate::{ObjectRange, StreamError, StreamId, StreamRecord};
use bytes::{BufMut, Bytes, BytesMut};

/// Last four bytes of every object.
pub const MAGIC: [u8; 4] = *b"SHOB";
/// Current format version (in the footer).
pub const FORMAT_VERSION: u16 = 1;
/// Bytes before each entry's payload.
pub const ENTRY_HEADER_LEN: usize = 24;
/// Bytes of one range in the index.
pub const INDEX_RANGE_LEN: usize = 52;
/// Bytes of the fixed footer.
pub const FOOTER_LEN: usize = 24;
/// Largest payload one entry can carry (the block length must fit a `u32`).
pub const MAX_ENTRY_PAYLOAD: usize = u32::MAX as usize - ENTRY_HEADER_LEN;

/// Why bytes could not be decoded; turned into [`StreamError::Corrupt`] with [`FormatError::at`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

impl FormatError {
    fn new(reason: impl Into<String>) -> Self {
        FormatError(reason.into())
    }

    /// Attaches the object key.
    pub fn at(self, key: &str) -> StreamError {
        StreamError::Corrupt {
            key: key.to_string(),
            reason: self.0,
        }
    }
}

/// The decoded fixed footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    pub index_position: u64,
    pub index_length: u32,
    pub index_crc: u32,
    pub version: u16,
}

/// One range as the index stores it: the catalog's [`ObjectRange`] plus the entry count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRange {
    pub range: ObjectRange,
    pub entry_count: u32,
}

/// Size of the object [`encode`] produces for `ranges`.
pub fn encoded_len(ranges: &[(StreamId, &[StreamRecord])]) -> usize {
    let data: usize = ranges
        .iter()
        .flat_map(|(_, rs)| rs.iter())
        .map(|r| ENTRY_HEADER_LEN + r.payload.len())
        .sum();
    // Upper bound for the index: oversized ranges may be split, which only the encoder sees.
    let n = ranges.iter().filter(|(_, rs)| !rs.is_empty()).count();
    data + 4 + n * INDEX_RANGE_LEN + FOOTER_LEN
}

/// Encodes ranges (each: a stream and its entries in offset order) into one object.
///
/// Returns the object and its ranges in input order (empty inputs produce no range; a range
/// whose block would exceed 4 GiB is split). Callers pass ranges sorted by (stream, offset)
/// so the index is ordered as [`crate::ObjectMeta::ranges`] requires. Every payload must be at
/// most [`MAX_ENTRY_PAYLOAD`] bytes ([`crate::Stream::append`] enforces it).
pub fn encode(ranges: &[(StreamId, &[StreamRecord])]) -> (Bytes, Vec<ObjectRange>) {
    let bounded: Vec<BoundedRange<'_>> = ranges
        .iter()
        .filter_map(|&(stream_id, records)| {
            let start = records.first()?.base_offset;
            let end = records.last()?.end_offset();
            Some(BoundedRange {
                stream_id,
                start,
                end,
                records,
            })
        })
        .collect();
    encode_bounded(&bounded)
}

/// A range with explicit bounds: its entries lie inside `[start, end)`, possibly with gaps,
/// possibly none at all (what log compaction writes).
#[derive(Debug, Clone, Copy)]
pub struct BoundedRange<'a> {
    pub stream_id: StreamId,
    pub start: u64,
    pub end: u64,
    pub records: &'a [StreamRecord],
}

/// Like [`encode`] but every input becomes a range spanning exactly its bounds, even without
/// entries (an empty block). A split oversized range keeps the bounds tiled: each piece ends
/// where the next begins. Callers guarantee entries are ordered and inside the bounds.
pub fn encode_bounded(ranges: &[BoundedRange<'_>]) -> (Bytes, Vec<ObjectRange>) {
    let data: usize = ranges
        .iter()
        .flat_map(|r| r.records.iter())
        .map(|r| ENTRY_HEADER_LEN + r.payload.len())
        .sum();
    let mut buf = BytesMut::with_capacity(data + 4 + ranges.len() * INDEX_RANGE_LEN + FOOTER_LEN);
    let mut index: Vec<IndexRange> = Vec::with_capacity(ranges.len());
    for br in ranges {
        let mut block = BlockWriter::new(br.stream_id, buf.len(), br.start);
        for r in br.records {
            debug_assert!(r.payload.len() <= MAX_ENTRY_PAYLOAD);
            let entry_len = ENTRY_HEADER_LEN + r.payload.len();
            if block.entries > 0 && block.len(&buf) + entry_len > u32::MAX as usize {
                let split_at = r.base_offset;
                index.push(block.finish(&buf, split_at));
                block = BlockWriter::new(br.stream_id, buf.len(), split_at);
            }
            block.push(&mut buf, r);
        }
        index.push(block.finish(&buf, br.end));
    }
    let index_position = buf.len() as u64;
    let index_start = buf.len();
    buf.put_u32(index.len() as u32);
    for ir in &index {
        let r = &ir.range;
        buf.put_u64(r.stream_id);
        buf.put_u64(r.start_offset);
        buf.put_u64(r.end_offset);
        buf.put_u64(r.position);
        buf.put_u32(r.length);
        buf.put_u32(ir.entry_count);
        buf.put_i64(r.max_timestamp);
        buf.put_u32(r.crc);
    }
    let index_length = (buf.len() - index_start) as u32;
    let index_crc = crc32c::crc32c(&buf[index_start..]);
    buf.put_u64(index_position);
    buf.put_u32(index_length);
    buf.put_u32(index_crc);
    buf.put_u16(FORMAT_VERSION);
    buf.put_u16(0);
    buf.put_slice(&MAGIC);
    (buf.freeze(), index.into_iter().map(|ir| ir.range).collect())
}

struct BlockWriter {
    stream_id: StreamId,
    position: usize,
    entries: u32,
    start: u64,
    max_timestamp: i64,
}

impl BlockWriter {
    fn new(stream_id: StreamId, position: usize, start: u64) -> Self {
        BlockWriter {
            stream_id,
            position,
            entries: 0,
            start,
            max_timestamp: -1,
        }
    }

    fn len(&self, buf: &BytesMut) -> usize {
        buf.len() - self.position
    }

    fn push(&mut self, buf: &mut BytesMut, r: &StreamRecord) {
        if self.entries == 0 {
            self.max_timestamp = r.max_timestamp;
        }
        self.entries += 1;
        self.max_timestamp = self.max_timestamp.max(r.max_timestamp);
        buf.put_u64(r.base_offset);
        buf.put_u32(r.count);
        buf.put_i64(r.max_timestamp);
        buf.put_u32(r.payload.len() as u32);
        buf.put_slice(&r.payload);
    }

    fn finish(self, buf: &BytesMut, end: u64) -> IndexRange {
        let block = &buf[self.position..];
        IndexRange {
            range: ObjectRange {
                stream_id: self.stream_id,
                start_offset: self.start,
                end_offset: end,
                position: self.position as u64,
                length: block.len() as u32,
                max_timestamp: self.max_timestamp,
                crc: crc32c::crc32c(block),
            },
            entry_count: self.entries,
        }
    }
}

fn field<const N: usize>(b: &[u8], at: usize, what: &str) -> Result<[u8; N], FormatError> {
    at.checked_add(N)
        .and_then(|end| b.get(at..end))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or_else(|| FormatError::new(format!("truncated {what} at byte {at}")))
}

fn be_u64(b: &[u8], at: usize, what: &str) -> Result<u64, FormatError> {
    field::<8>(b, at, what).map(u64::from_be_bytes)
}

fn be_i64(b: &[u8], at: usize, what: &str) -> Result<i64, FormatError> {
    field::<8>(b, at, what).map(i64::from_be_bytes)
}

fn be_u32(b: &[u8], at: usize, what: &str) -> Result<u32, FormatError> {
    field::<4>(b, at, what).map(u32::from_be_bytes)
}

fn be_u16(b: &[u8], at: usize, what: &str) -> Result<u16, FormatError> {
    field::<2>(b, at, what).map(u16::from_be_bytes)
}

/// Decodes the footer from the last [`FOOTER_LEN`] bytes of `object` (the whole object or any
/// suffix of it).
pub fn decode_footer(object: &[u8]) -> Result<Footer, FormatError> {
    let at = object.len().checked_sub(FOOTER_LEN).ok_or_else(|| {
        FormatError::new(format!("{} bytes is too short for a footer", object.len()))
    })?;
    let magic = field::<4>(object, at + 20, "magic")?;
    if magic != MAGIC {
        return Err(FormatError::new(format!("bad magic {magic:02x?}")));
    }
    let version = be_u16(object, at + 16, "version")?;
    if version != FORMAT_VERSION {
        return Err(FormatError::new(format!(
            "unsupported format version {version}"
        )));
    }
    let flags = be_u16(object, at + 18, "flags")?;
    if flags != 0 {
        return Err(FormatError::new(format!("unknown flags {flags:#06x}")));
    }
    Ok(Footer {
        index_position: be_u64(object, at, "index position")?,
        index_length: be_u32(object, at + 8, "index length")?,
        index_crc: be_u32(object, at + 12, "index crc")?,
        version,
    })
}

/// Decodes and verifies the index of a whole object.
pub fn decode_index(object: &[u8]) -> Result<Vec<ObjectRange>, FormatError> {
    Ok(decode_index_full(object)?
        .into_iter()
        .map(|ir| ir.range)
        .collect())
}

/// Like [`decode_index`], keeping each range's entry count.
pub fn decode_index_full(object: &[u8]) -> Result<Vec<IndexRange>, FormatError> {
    let footer = decode_footer(object)?;
    let footer_at = object.len() - FOOTER_LEN;
    let index_at = usize::try_from(footer.index_position)
        .map_err(|_| FormatError::new("index position out of range"))?;
    let index_len = footer.index_length as usize;
    // The index sits right before the footer; the blocks all come before the index.
    if index_at.checked_add(index_len) != Some(footer_at) {
        return Err(FormatError::new(format!(
            "index [{index_at}, +{index_len}) does not end at the footer ({footer_at})"
        )));
    }
    let index = object
        .get(index_at..footer_at)
        .ok_or_else(|| FormatError::new("index out of bounds"))?;
    let crc = crc32c::crc32c(index);
    if crc != footer.index_crc {
        return Err(FormatError::new(format!(
            "index crc {crc:08x} != {:08x}",
            footer.index_crc
        )));
    }
    let count = be_u32(index, 0, "range count")? as usize;
    if count
        .checked_mul(INDEX_RANGE_LEN)
        .and_then(|n| n.checked_add(4))
        != Some(index_len)
    {
        return Err(FormatError::new(format!(
            "index of {index_len} bytes cannot hold {count} ranges"
        )));
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * INDEX_RANGE_LEN;
        let range = ObjectRange {
            stream_id: be_u64(index, at, "stream id")?,
            start_offset: be_u64(index, at + 8, "start offset")?,
            end_offset: be_u64(index, at + 16, "end offset")?,
            position: be_u64(index, at + 24, "position")?,
            length: be_u32(index, at + 32, "length")?,
            max_timestamp: be_i64(index, at + 40, "max timestamp")?,
            crc: be_u32(index, at + 48, "block crc")?,
        };
        let entry_count = be_u32(index, at + 36, "entry count")?;
        if range.end_offset < range.start_offset {
            return Err(FormatError::new(format!(
                "range {i} ends ({}) before it starts ({})",
                range.end_offset, range.start_offset
            )));
        }
        match range.position.checked_add(u64::from(range.length)) {
            Some(end) if end <= footer.index_position => {}
            _ => {
                return Err(FormatError::new(format!(
                    "range {i} block [{}, +{}) overlaps the index",
                    range.position, range.length
                )));
            }
        }
        if (entry_count as u64) * (ENTRY_HEADER_LEN as u64) > u64::from(range.length) {
            return Err(FormatError::new(format!(
                "range {i}: {entry_count} entries cannot fit {} bytes",
                range.length
            )));
        }
        out.push(IndexRange { range, entry_count });
    }
    Ok(out)
}

/// Decodes one range's block (exactly the bytes `[position, position + length)` of the object),
/// verifying its CRC and that its entries are ordered, disjoint and inside
/// `[start_offset, end_offset)` (gaps are allowed: compacted ranges have them).
/// Payloads are zero-copy slices of `block`.
pub fn decode_block(block: Bytes, range: &ObjectRange) -> Result<Vec<StreamRecord>, FormatError> {
    if block.len() != range.length as usize {
        return Err(FormatError::new(format!(
            "block of stream {} at {} is {} bytes, expected {}",
            range.stream_id,
            range.position,
            block.len(),
            range.length
        )));
    }
    let crc = crc32c::crc32c(&block);
    if crc != range.crc {
        return Err(FormatError::new(format!(
            "block of stream {} at {}: crc {crc:08x} != {:08x}",
            range.stream_id, range.position, range.crc
        )));
    }
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut expected = range.start_offset;
    while at < block.len() {
        let base_offset = be_u64(&block, at, "entry base offset")?;
        let count = be_u32(&block, at + 8, "entry count")?;
        let max_timestamp = be_i64(&block, at + 12, "entry timestamp")?;
        let len = be_u32(&block, at + 20, "entry length")? as usize;
        let start = at + ENTRY_HEADER_LEN;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= block.len())
            .ok_or_else(|| {
                FormatError::new(format!(
                    "entry at byte {at} overruns its block ({len} bytes)"
                ))
            })?;
        if base_offset < expected {
            return Err(FormatError::new(format!(
                "entry at byte {at} has base offset {base_offset}, expected at least {expected}"
            )));
        }
        expected = base_offset
            .checked_add(u64::from(count))
            .ok_or_else(|| FormatError::new("entry offsets overflow"))?;
        out.push(StreamRecord {
            base_offset,
            count,
            max_timestamp,
            payload: block.slice(start..end),
        });
        at = end;
    }
    if expected > range.end_offset {
        return Err(FormatError::new(format!(
            "block of stream {} ends at offset {expected}, index says {}",
            range.stream_id, range.end_offset
        )));
    }
    Ok(out)
}

/// Decodes one range out of a whole object (bounds-checked slice, then [`decode_block`]).
pub fn decode_range(object: &Bytes, range: &ObjectRange) -> Result<Vec<StreamRecord>, FormatError> {
    let start = usize::try_from(range.position)
        .map_err(|_| FormatError::new("range position out of range"))?;
    let end = start
        .checked_add(range.length as usize)
        .filter(|&e| e <= object.len())
        .ok_or_else(|| {
            FormatError::new(format!(
                "range [{}, +{}) outside the {}-byte object",
                range.position,
                range.length,
                object.len()
            ))
        })?;
    decode_block(object.slice(start..end), range)
}

/// The range of `ranges` (sorted by stream, then offset) holding `offset` of `stream_id`.
pub fn find_range(
    ranges: &[ObjectRange],
    stream_id: StreamId,
    offset: u64,
) -> Option<&ObjectRange> {
    let i = ranges.partition_point(|r| (r.stream_id, r.start_offset) <= (stream_id, offset));
    let r = ranges.get(i.checked_sub(1)?)?;
    (r.stream_id == stream_id && r.end_offset > offset).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(base: u64, count: u32, ts: i64, payload: &'static [u8]) -> StreamRecord {
        StreamRecord {
            base_offset: base,
            count,
            max_timestamp: ts,
            payload: Bytes::from_static(payload),
        }
    }

    fn sample() -> (Vec<StreamRecord>, Vec<StreamRecord>) {
        let a = vec![
            rec(10, 2, 100, b"hello"),
            rec(12, 1, 90, b""),
            rec(13, 5, 120, b"abc"),
        ];
        let b = vec![rec(0, 1, -1, b"x")];
        (a, b)
    }

    #[test]
    fn round_trip() {
        let (a, b) = sample();
        let (obj, ranges) = encode(&[(3, &a), (7, &[]), (9, &b)]);
        assert_eq!(ranges.len(), 2);
        assert_eq!(obj.len(), encoded_len(&[(3, &a), (9, &b)]));
        assert_eq!(ranges[0].stream_id, 3);
        assert_eq!((ranges[0].start_offset, ranges[0].end_offset), (10, 18));
        assert_eq!(ranges[0].max_timestamp, 120);
        assert_eq!(ranges[1].max_timestamp, -1);
        assert_eq!(decode_index(&obj).unwrap(), ranges);
        let full = decode_index_full(&obj).unwrap();
        assert_eq!(full[0].entry_count, 3);
        assert_eq!(decode_range(&obj, &ranges[0]).unwrap(), a);
        assert_eq!(decode_range(&obj, &ranges[1]).unwrap(), b);
        // Zero copy: payloads point into the object.
        let got = decode_range(&obj, &ranges[0]).unwrap();
        let p = got[0].payload.as_ptr() as usize;
        let o = obj.as_ptr() as usize;
        assert!(p >= o && p < o + obj.len());
    }

    #[test]
    fn empty_object() {
        let (obj, ranges) = encode(&[]);
        assert!(ranges.is_empty());
        assert_eq!(obj.len(), 4 + FOOTER_LEN);
        assert!(decode_index(&obj).unwrap().is_empty());
    }

    #[test]
    fn lookup() {
        let r = |s, a, b| ObjectRange {
            stream_id: s,
            start_offset: a,
            end_offset: b,
            position: 0,
            length: 0,
            max_timestamp: -1,
            crc: 0,
        };
        let ranges = vec![r(1, 0, 10), r(1, 10, 20), r(2, 5, 6), r(4, 0, 3)];
        assert_eq!(find_range(&ranges, 1, 0).unwrap().start_offset, 0);
        assert_eq!(find_range(&ranges, 1, 15).unwrap().start_offset, 10);
        assert!(find_range(&ranges, 1, 20).is_none());
        assert_eq!(find_range(&ranges, 2, 5).unwrap().stream_id, 2);
        assert!(find_range(&ranges, 2, 4).is_none());
        assert!(find_range(&ranges, 3, 0).is_none());
        assert!(find_range(&ranges, 9, 0).is_none());
        assert!(find_range(&[], 1, 0).is_none());
    }

    #[test]
    fn corrupted_block_is_detected() {
        let (a, _) = sample();
        let (obj, ranges) = encode(&[(3, &a)]);
        let r = &ranges[0];
        // Flip every byte of the block in turn: the crc must catch each.
        for i in 0..r.length as usize {
            let mut bad = obj.to_vec();
            bad[r.position as usize + i] ^= 0x40;
            assert!(decode_range(&Bytes::from(bad), r).is_err(), "flip at {i}");
        }
        // Wrong length / out of bounds ranges.
        let mut short = r.clone();
        short.length -= 1;
        assert!(decode_range(&obj, &short).is_err());
        let mut far = r.clone();
        far.position = u64::MAX - 2;
        assert!(decode_range(&obj, &far).is_err());
        // Index claims other offsets than the entries hold.
        let mut shifted = r.clone();
        shifted.start_offset += 1;
        assert!(decode_range(&obj, &shifted).is_err());
        let mut shorter = r.clone();
        shorter.end_offset -= 1;
        assert!(decode_range(&obj, &shorter).is_err());
        // A range may end after its last entry (a compacted range ending in a gap).
        let mut longer = r.clone();
        longer.end_offset += 1;
        assert_eq!(decode_range(&obj, &longer).unwrap(), a);
    }

    #[test]
    fn bounded_ranges_with_gaps_and_no_entries() {
        let entries = vec![rec(12, 1, 5, b"a"), rec(15, 2, 7, b"bc")];
        let (obj, ranges) = encode_bounded(&[
            BoundedRange {
                stream_id: 1,
                start: 10,
                end: 20,
                records: &entries,
            },
            BoundedRange {
                stream_id: 1,
                start: 20,
                end: 30,
                records: &[],
            },
        ]);
        assert_eq!(ranges.len(), 2);
        assert_eq!((ranges[0].start_offset, ranges[0].end_offset), (10, 20));
        assert_eq!(ranges[0].max_timestamp, 7);
        assert_eq!((ranges[1].start_offset, ranges[1].end_offset), (20, 30));
        assert_eq!((ranges[1].length, ranges[1].max_timestamp), (0, -1));
        assert_eq!(decode_index(&obj).unwrap(), ranges);
        assert_eq!(decode_range(&obj, &ranges[0]).unwrap(), entries);
        assert!(decode_range(&obj, &ranges[1]).unwrap().is_empty());
        // Entries outside the bounds or overlapping are rejected.
        let mut narrow = ranges[0].clone();
        narrow.start_offset = 13;
        assert!(decode_range(&obj, &narrow).is_err());
        narrow.start_offset = 10;
        narrow.end_offset = 16;
        assert!(decode_range(&obj, &narrow).is_err());
    }

    #[test]
    fn garbage_blocks_with_valid_crc_do_not_panic() {
        // Attacker-controlled bytes with a matching crc: framing must still be checked.
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0; 3],
            vec![0xff; 24],
            {
                let mut v = vec![0u8; 24];
                v[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
                v
            },
            {
                let mut v = vec![0u8; 24];
                v[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
                v[0..8].copy_from_slice(&(u64::MAX - 5).to_be_bytes());
                v
            },
        ];
        for bytes in cases {
            let range = ObjectRange {
                stream_id: 1,
                start_offset: u64::MAX - 5,
                end_offset: 0,
                position: 0,
                length: bytes.len() as u32,
                max_timestamp: -1,
                crc: crc32c::crc32c(&bytes),
            };
            let _ = decode_block(Bytes::from(bytes), &range);
        }
    }

    #[test]
    fn truncated_and_corrupted_objects_are_rejected() {
        let (a, b) = sample();
        let (obj, _) = encode(&[(3, &a), (9, &b)]);
        for len in 0..obj.len() {
            assert!(decode_index(&obj[..len]).is_err(), "truncated to {len}");
        }
        for i in 0..obj.len() {
            let mut bad = obj.to_vec();
            bad[i] ^= 0x01;
            // Flips in blocks leave the index intact; everything else must be caught.
            let in_blocks = i < obj.len() - FOOTER_LEN - 4 - 2 * INDEX_RANGE_LEN;
            assert_eq!(decode_index(&bad).is_ok(), in_blocks, "flip at {i}");
        }
        assert!(decode_index(b"garbage").is_err());
        assert!(decode_footer(&[0u8; 100]).is_err());
    }

    #[test]
    fn forged_index_is_rejected() {
        // A well-formed footer and crc around an index with impossible ranges.
        let forge = |ranges: &[(u64, u64, u64, u64, u32, u32)]| {
            let mut v = BytesMut::new();
            v.put_slice(&[0u8; 16]);
            let at = v.len();
            v.put_u32(ranges.len() as u32);
            for &(sid, start, end, pos, len, count) in ranges {
                v.put_u64(sid);
                v.put_u64(start);
                v.put_u64(end);
                v.put_u64(pos);
                v.put_u32(len);
                v.put_u32(count);
                v.put_i64(0);
                v.put_u32(0);
            }
            let ilen = (v.len() - at) as u32;
            let crc = crc32c::crc32c(&v[at..]);
            v.put_u64(at as u64);
            v.put_u32(ilen);
            v.put_u32(crc);
            v.put_u16(FORMAT_VERSION);
            v.put_u16(0);
            v.put_slice(&MAGIC);
            v.freeze()
        };
        assert!(decode_index(&forge(&[(1, 0, 1, 0, 16, 0)])).is_ok());
        assert!(decode_index(&forge(&[(1, 5, 1, 0, 16, 0)])).is_err());
        assert!(decode_index(&forge(&[(1, 0, 1, 8, 16, 0)])).is_err());
        assert!(decode_index(&forge(&[(1, 0, 1, u64::MAX, 16, 0)])).is_err());
        assert!(decode_index(&forge(&[(1, 0, 1, 0, 16, 1)])).is_err());
    }
}
