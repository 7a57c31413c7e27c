//! Magic-v2 record batch headers: parsing, validation and in-place patching.
//!
//! Assigning offsets touches only `baseOffset` and `partitionLeaderEpoch`, both outside the
//! CRC, so the broker never decompresses or re-encodes a producer's batch. Only
//! LogAppendTime rewrites `attributes` and `maxTimestamp`, which are inside the CRC.

/// Length of the fixed magic-v2 batch header.
pub const HEADER_LEN: usize = 61;
/// Bytes before `batchLength`'s payload starts counting (baseOffset + batchLength).
pub const LOG_OVERHEAD: usize = 12;
const MAGIC_POS: usize = 16;
const CRC_POS: usize = 17;
const ATTRIBUTES_POS: usize = 21;
const CRC_START: usize = 21;

const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;

/// Why a batch was rejected; mapped to Kafka error codes by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Bad length, truncated batch, bad CRC: CORRUPT_MESSAGE.
    #[error("corrupt record batch: {0}")]
    Corrupt(&'static str),
    /// Magic v0/v1: UNSUPPORTED_FOR_MESSAGE_FORMAT.
    #[error("unsupported record batch magic {0}")]
    UnsupportedMagic(i8),
    /// Header values that cannot be valid (negative counts ...): INVALID_RECORD.
    #[error("invalid record batch: {0}")]
    Invalid(&'static str),
}

/// The parsed fixed header of a magic-v2 batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(a)
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

impl BatchHeader {
    /// Parses the header at the start of `buf`. Needs at least 17 bytes to see the magic and
    /// [`HEADER_LEN`] for a v2 header; never panics on short or garbage input.
    pub fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        if buf.len() < MAGIC_POS + 1 {
            return Err(BatchError::Corrupt("batch shorter than its header"));
        }
        let magic = buf[MAGIC_POS] as i8;
        if magic != 2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Corrupt("batch shorter than its header"));
        }
        Ok(Self {
            base_offset: be_i64(buf, 0),
            batch_length: be_i32(buf, 8),
            partition_leader_epoch: be_i32(buf, 12),
            magic,
            crc: be_i32(buf, CRC_POS) as u32,
            attributes: be_i16(buf, ATTRIBUTES_POS),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            record_count: be_i32(buf, 57),
        })
    }

    /// Size of the whole batch on the wire.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }
    /// Offsets the batch occupies.
    pub fn offset_count(&self) -> u32 {
        self.last_offset_delta.max(0) as u32 + 1
    }
    /// Offset of the batch's last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
    pub fn compression(&self) -> u8 {
        (self.attributes & 0x07) as u8
    }
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }
}

/// Splits a produce request's `records` into batches and validates each: lengths add up to
/// the blob exactly, magic is 2, the CRC matches, counts are sane. Returns the byte range of
/// each batch in `records` with its header.
pub fn validate_batches(
    records: &[u8],
) -> Result<Vec<(BatchHeader, std::ops::Range<usize>)>, BatchError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < records.len() {
        let rest = &records[pos..];
        if rest.len() < LOG_OVERHEAD {
            return Err(BatchError::Corrupt("trailing bytes shorter than a batch"));
        }
        let header = BatchHeader::parse(rest)?;
        if header.batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(BatchError::Corrupt("batch length below header size"));
        }
        let len = header.total_len();
        let Some(batch) = rest.get(..len) else {
            return Err(BatchError::Corrupt("batch length exceeds request"));
        };
        if crc32c::crc32c(&batch[CRC_START..]) != header.crc {
            return Err(BatchError::Corrupt("CRC mismatch"));
        }
        if header.record_count < 0 || header.last_offset_delta < 0 {
            return Err(BatchError::Invalid("negative record count or offset delta"));
        }
        if header.record_count > 0 && header.last_offset_delta < header.record_count - 1 {
            return Err(BatchError::Invalid("lastOffsetDelta below record count"));
        }
        out.push((header, pos..pos + len));
        pos += len;
    }
    if out.is_empty() {
        return Err(BatchError::Corrupt("no record batch"));
    }
    Ok(out)
}

/// Writes the broker-assigned base offset and leader epoch (both outside the CRC).
/// `batch` must be at least [`HEADER_LEN`] bytes (validated beforehand).
pub fn patch_offsets(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Switches a batch to LogAppendTime with `timestamp` as its max timestamp and recomputes
/// the CRC, as Kafka does for topics with `message.timestamp.type=LogAppendTime`.
pub fn set_log_append_time(batch: &mut [u8], timestamp: i64) {
    let attributes = be_i16(batch, ATTRIBUTES_POS) | TIMESTAMP_TYPE_BIT;
    batch[ATTRIBUTES_POS..ATTRIBUTES_POS + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[35..43].copy_from_slice(&timestamp.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Iterates the headers of concatenated batches (as stored), skipping a torn tail.
pub fn headers(records: &[u8]) -> impl Iterator<Item = (BatchHeader, std::ops::Range<usize>)> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let rest = records.get(pos..)?;
        let header = BatchHeader::parse(rest).ok()?;
        let len = header.total_len();
        if len < HEADER_LEN || rest.len() < len {
            return None;
        }
        let range = pos..pos + len;
        pos += len;
        Some((header, range))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    fn batch(n: usize, compression: Compression) -> BytesMut {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32,
                timestamp: 1_000 + i as i64,
                key: Some(bytes::Bytes::from(format!("k{i}"))),
                value: Some(bytes::Bytes::from(vec![b'v'; 100])),
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
    fn validates_and_patches_without_touching_the_crc_range() {
        let mut b = batch(5, Compression::Gzip);
        let parsed = validate_batches(&b).unwrap();
        assert_eq!(parsed.len(), 1);
        let (h, range) = parsed[0].clone();
        assert_eq!(range, 0..b.len());
        assert_eq!(h.offset_count(), 5);
        assert_eq!(h.compression(), 1);
        patch_offsets(&mut b, 1234, 7);
        // still valid: offsets are outside the CRC
        let h2 = validate_batches(&b).unwrap()[0].0;
        assert_eq!(h2.base_offset, 1234);
        assert_eq!(h2.partition_leader_epoch, 7);
        let mut bytes = b.freeze();
        let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
        assert_eq!(set.records[0].offset, 1234);
        assert_eq!(set.records[4].offset, 1238);
    }

    #[test]
    fn log_append_time_rewrites_timestamp_and_crc() {
        let mut b = batch(3, Compression::None);
        set_log_append_time(&mut b, 99_999);
        let h = validate_batches(&b).unwrap()[0].0;
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, 99_999);
        let set = RecordBatchDecoder::decode(&mut b.freeze()).unwrap();
        assert!(
            set.records
                .iter()
                .all(|r| r.timestamp_type == TimestampType::LogAppend)
        );
    }

    #[test]
    fn rejects_bad_crc_truncation_garbage_and_old_magic() {
        let good = batch(2, Compression::None);
        let mut bad_crc = good.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0xff;
        assert_eq!(
            validate_batches(&bad_crc).unwrap_err(),
            BatchError::Corrupt("CRC mismatch")
        );
        assert!(matches!(
            validate_batches(&good[..good.len() - 1]),
            Err(BatchError::Corrupt(_))
        ));
        let mut two = good.clone();
        two.extend_from_slice(&good[..20]);
        assert!(matches!(
            validate_batches(&two),
            Err(BatchError::Corrupt(_))
        ));
        let mut old = good.clone();
        old[16] = 1;
        assert_eq!(
            validate_batches(&old).unwrap_err(),
            BatchError::UnsupportedMagic(1)
        );
        assert!(validate_batches(&[]).is_err());
        for len in 0..70 {
            let garbage: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = validate_batches(&garbage);
            let _ = headers(&garbage).count();
        }
    }

    #[test]
    fn iterates_concatenated_batches() {
        let mut two = batch(2, Compression::None);
        let second = batch(3, Compression::Snappy);
        two.extend_from_slice(&second);
        let hs: Vec<_> = headers(&two).collect();
        assert_eq!(hs.len(), 2);
        assert_eq!(hs[1].0.offset_count(), 3);
        assert_eq!(validate_batches(&two).unwrap().len(), 2);
    }
}
