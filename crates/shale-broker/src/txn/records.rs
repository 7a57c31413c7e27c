//! The `__transaction_state` record format, byte-compatible with Kafka's
//! (`transaction-coordinator/src/main/resources/common/message/TransactionLogKey.json` and
//! `TransactionLogValue.json`, written by `TransactionLog.valueToBytes`), so Kafka tools
//! reading the topic understand it and a log written by either can be loaded by the other.
//!
//! Key: int16 version 0, then the transactional id as an int16-length string.
//! Value: int16 version, then `TransactionLogValue` at that version. Version 0 is a classic
//! message; version 1 (written once `transaction.version` >= 1) is flexible: compact strings
//! and arrays, and tagged fields carrying the previous/next producer id and the client's
//! transaction version (KIP-890). A null value is a tombstone: the transactional id expired.
//!
//! Decoding is for hostile input: it never panics, and every count is checked against the
//! bytes left before anything is allocated.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The only key version Kafka writes (and, since KIP-915's coordinator record types, the
/// record type id of a transaction log record).
const KEY_VERSION: i16 = 0;
/// Highest value version Kafka defines.
pub(crate) const MAX_VALUE_VERSION: i16 = 1;

/// Tagged fields of value version 1 (`"tag"` in TransactionLogValue.json).
const TAG_PREVIOUS_PRODUCER_ID: u32 = 0;
const TAG_NEXT_PRODUCER_ID: u32 = 1;
const TAG_CLIENT_TRANSACTION_VERSION: u32 = 2;

/// Transaction states with the ids Kafka stores (`TransactionState.fromId`) and the names it
/// prints (DescribeTransactions, ListTransactions, kafka-transactions.sh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
    PrepareEpochFence,
}

impl TxnState {
    pub(crate) const ALL: [TxnState; 8] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
        TxnState::Dead,
        TxnState::PrepareEpochFence,
    ];

    pub(crate) fn id(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    pub(crate) fn from_id(id: i8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.id() == id)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// One topic's partitions in a stored transaction (`PartitionsSchema`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicPartitions {
    pub topic: String,
    pub partitions: Vec<i32>,
}

/// `TransactionLogValue`, field for field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnLogValue {
    pub producer_id: i64,
    /// Tagged (v1 only, default -1): the producer id before the last transition.
    pub previous_producer_id: i64,
    /// Tagged (v1 only, default -1): the producer id a KIP-890 epoch overflow moves to.
    pub next_producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// Null in Kafka's records of `Empty` transactions; Shale writes null exactly then.
    pub partitions: Option<Vec<TopicPartitions>>,
    pub last_update_timestamp_ms: i64,
    pub start_timestamp_ms: i64,
    /// Tagged (v1 only, default 0): the `transaction.version` feature level the client used.
    pub client_transaction_version: i16,
}

/// One record of `__transaction_state`: the value is `None` for a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnLogRecord {
    pub transactional_id: String,
    pub value: Option<TxnLogValue>,
}

/// Why bytes are not a transaction log record. Every variant means the same to the loader
/// (log and skip the record), so one struct with the reason suffices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed __transaction_state record: {0}")]
pub(crate) struct RecordError(&'static str);

impl TxnLogRecord {
    /// Key and value bytes; `value_version` is 0 or 1 (see `TransactionVersion`).
    pub(crate) fn encode(&self, value_version: i16) -> (Bytes, Option<Bytes>) {
        (
            encode_key(&self.transactional_id),
            self.value.as_ref().map(|v| v.encode(value_version)),
        )
    }

    /// `Ok(None)` for a key version Kafka does not define: Kafka skips those on load ("could be
    /// a left over from an aborted upgrade"), and so does Shale.
    pub(crate) fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Option<Self>, RecordError> {
        let Some(transactional_id) = decode_key(key)? else {
            return Ok(None);
        };
        let value = value.map(TxnLogValue::decode).transpose()?;
        Ok(Some(Self {
            transactional_id,
            value,
        }))
    }
}

/// Decodes the records of a `__transaction_state` partition read back in order, for
/// `TxnCoordinator::load`: the records, and how many were skipped (unknown key versions, as
/// Kafka skips them, and malformed ones, for the caller to log).
pub(crate) fn decode_all<'a>(
    records: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> (Vec<TxnLogRecord>, usize) {
    let mut out = Vec::new();
    let mut skipped = 0;
    for (key, value) in records {
        match TxnLogRecord::decode(key, value) {
            Ok(Some(r)) => out.push(r),
            Ok(None) | Err(_) => skipped += 1,
        }
    }
    (out, skipped)
}

pub(crate) fn encode_key(transactional_id: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(4 + transactional_id.len());
    b.put_i16(KEY_VERSION);
    put_str(&mut b, transactional_id);
    b.freeze()
}

/// `Ok(None)` for an unknown key version.
pub(crate) fn decode_key(raw: &[u8]) -> Result<Option<String>, RecordError> {
    let mut r = Reader(raw);
    if r.i16()? != KEY_VERSION {
        return Ok(None);
    }
    let id = r.str()?;
    r.end()?;
    Ok(Some(id))
}

impl TxnLogValue {
    pub(crate) fn encode(&self, version: i16) -> Bytes {
        let flexible = version >= 1;
        let mut b = BytesMut::with_capacity(64);
        b.put_i16(if flexible { 1 } else { 0 });
        b.put_i64(self.producer_id);
        b.put_i16(self.producer_epoch);
        b.put_i32(self.timeout_ms);
        b.put_i8(self.state.id());
        match &self.partitions {
            None if flexible => put_uvarint(&mut b, 0),
            None => b.put_i32(-1),
            Some(topics) => {
                put_len(&mut b, topics.len(), flexible);
                for t in topics {
                    if flexible {
                        put_uvarint(&mut b, t.topic.len() as u32 + 1);
                        b.put_slice(t.topic.as_bytes());
                    } else {
                        put_str(&mut b, &t.topic);
                    }
                    put_len(&mut b, t.partitions.len(), flexible);
                    for p in &t.partitions {
                        b.put_i32(*p);
                    }
                    if flexible {
                        put_uvarint(&mut b, 0); // no tagged fields in PartitionsSchema
                    }
                }
            }
        }
        b.put_i64(self.last_update_timestamp_ms);
        b.put_i64(self.start_timestamp_ms);
        if flexible {
            // Tagged fields in ascending tag order, each only when not at its default, as
            // Kafka's generated writer does.
            let mut tags: Vec<(u32, Vec<u8>)> = Vec::new();
            if self.previous_producer_id != -1 {
                tags.push((
                    TAG_PREVIOUS_PRODUCER_ID,
                    self.previous_producer_id.to_be_bytes().to_vec(),
                ));
            }
            if self.next_producer_id != -1 {
                tags.push((
                    TAG_NEXT_PRODUCER_ID,
                    self.next_producer_id.to_be_bytes().to_vec(),
                ));
            }
            if self.client_transaction_version != 0 {
                tags.push((
                    TAG_CLIENT_TRANSACTION_VERSION,
                    self.client_transaction_version.to_be_bytes().to_vec(),
                ));
            }
            put_uvarint(&mut b, tags.len() as u32);
            for (tag, data) in tags {
                put_uvarint(&mut b, tag);
                put_uvarint(&mut b, data.len() as u32);
                b.put_slice(&data);
            }
        }
        b.freeze()
    }

    pub(crate) fn decode(raw: &[u8]) -> Result<Self, RecordError> {
        let mut r = Reader(raw);
        let version = r.i16()?;
        if !(0..=MAX_VALUE_VERSION).contains(&version) {
            return Err(RecordError("unknown transaction log value version"));
        }
        let flexible = version >= 1;
        let producer_id = r.i64()?;
        let producer_epoch = r.i16()?;
        let timeout_ms = r.i32()?;
        let state = TxnState::from_id(r.i8()?).ok_or(RecordError("unknown transaction state"))?;
        // Smallest encoding of one PartitionsSchema: empty topic and empty array (+ tags).
        let min_topic = if flexible { 3 } else { 6 };
        let partitions = match r.len(flexible, min_topic)? {
            None => None,
            Some(n) => {
                let mut topics = Vec::with_capacity(n);
                for _ in 0..n {
                    let topic = if flexible { r.compact_str()? } else { r.str()? };
                    let count = r
                        .len(flexible, 4)?
                        .ok_or(RecordError("null partition ids"))?;
                    let mut partitions = Vec::with_capacity(count);
                    for _ in 0..count {
                        partitions.push(r.i32()?);
                    }
                    if flexible {
                        r.skip_tagged_fields()?;
                    }
                    topics.push(TopicPartitions { topic, partitions });
                }
                Some(topics)
            }
        };
        let last_update_timestamp_ms = r.i64()?;
        let start_timestamp_ms = r.i64()?;
        let mut value = Self {
            producer_id,
            previous_producer_id: -1,
            next_producer_id: -1,
            producer_epoch,
            timeout_ms,
            state,
            partitions,
            last_update_timestamp_ms,
            start_timestamp_ms,
            client_transaction_version: 0,
        };
        if flexible {
            let count = r.uvarint()?;
            for _ in 0..count {
                let tag = r.uvarint()?;
                let size = r.uvarint()? as usize;
                let data = r.take(size)?;
                let mut field = Reader(data);
                match tag {
                    TAG_PREVIOUS_PRODUCER_ID => value.previous_producer_id = field.i64()?,
                    TAG_NEXT_PRODUCER_ID => value.next_producer_id = field.i64()?,
                    TAG_CLIENT_TRANSACTION_VERSION => {
                        value.client_transaction_version = field.i16()?
                    }
                    // Tags added by later Kafka versions: skipped, as Kafka's reader does.
                    _ => continue,
                }
                field.end()?;
            }
        }
        r.end()?;
        Ok(value)
    }
}

fn put_str(b: &mut BytesMut, s: &str) {
    // Transactional ids and topic names are far below i16::MAX; clamp rather than wrap.
    let n = s.len().min(i16::MAX as usize);
    b.put_i16(n as i16);
    b.put_slice(&s.as_bytes()[..n]);
}

fn put_len(b: &mut BytesMut, n: usize, flexible: bool) {
    if flexible {
        put_uvarint(b, n as u32 + 1);
    } else {
        b.put_i32(n as i32);
    }
}

fn put_uvarint(b: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        b.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn end(&self) -> Result<(), RecordError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(RecordError("trailing bytes"))
        }
    }
    fn i8(&mut self) -> Result<i8, RecordError> {
        Ok(self.take(1)?.get_i8())
    }
    fn i16(&mut self) -> Result<i16, RecordError> {
        Ok(self.take(2)?.get_i16())
    }
    fn i32(&mut self) -> Result<i32, RecordError> {
        Ok(self.take(4)?.get_i32())
    }
    fn i64(&mut self) -> Result<i64, RecordError> {
        Ok(self.take(8)?.get_i64())
    }
    fn uvarint(&mut self) -> Result<u32, RecordError> {
        let mut v: u32 = 0;
        for i in 0..5 {
            let byte = self.take(1)?[0];
            v |= u32::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if i == 4 && byte > 0x0f {
                    break;
                }
                return Ok(v);
            }
        }
        Err(RecordError("varint overflows 32 bits"))
    }
    fn utf8(bytes: &[u8]) -> Result<String, RecordError> {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| RecordError("string is not UTF-8"))
    }
    fn str(&mut self) -> Result<String, RecordError> {
        let len = self.i16()?;
        if len < 0 {
            return Err(RecordError("null string"));
        }
        let raw = self.take(len as usize)?;
        Self::utf8(raw)
    }
    fn compact_str(&mut self) -> Result<String, RecordError> {
        let len = self.uvarint()?;
        if len == 0 {
            return Err(RecordError("null string"));
        }
        let raw = self.take(len as usize - 1)?;
        Self::utf8(raw)
    }
    /// An array length (`None` = null), refused when `n` elements of at least `min_size`
    /// bytes each cannot fit in what is left.
    fn len(&mut self, flexible: bool, min_size: usize) -> Result<Option<usize>, RecordError> {
        let n = if flexible {
            match self.uvarint()? {
                0 => return Ok(None),
                n => (n - 1) as usize,
            }
        } else {
            match self.i32()? {
                n if n < 0 => return Ok(None),
                n => n as usize,
            }
        };
        if n.saturating_mul(min_size) > self.0.len() {
            return Err(RecordError("array count exceeds the bytes left"));
        }
        Ok(Some(n))
    }
    fn skip_tagged_fields(&mut self) -> Result<(), RecordError> {
        let count = self.uvarint()?;
        for _ in 0..count {
            self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.take(size)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ongoing_value() -> TxnLogValue {
        TxnLogValue {
            producer_id: 1000,
            previous_producer_id: 999,
            next_producer_id: 1001,
            producer_epoch: 5,
            timeout_ms: 60_000,
            state: TxnState::Ongoing,
            partitions: Some(vec![
                TopicPartitions {
                    topic: "a".into(),
                    partitions: vec![0, 2],
                },
                TopicPartitions {
                    topic: "b".into(),
                    partitions: vec![1],
                },
            ]),
            last_update_timestamp_ms: 2000,
            start_timestamp_ms: 1500,
            client_transaction_version: 2,
        }
    }

    /// Version 0 carries no tagged fields: they come back at their defaults.
    fn without_tags(mut v: TxnLogValue) -> TxnLogValue {
        v.previous_producer_id = -1;
        v.next_producer_id = -1;
        v.client_transaction_version = 0;
        v
    }

    #[test]
    fn state_ids_and_names_are_kafkas() {
        let expected = [
            (0, "Empty"),
            (1, "Ongoing"),
            (2, "PrepareCommit"),
            (3, "PrepareAbort"),
            (4, "CompleteCommit"),
            (5, "CompleteAbort"),
            (6, "Dead"),
            (7, "PrepareEpochFence"),
        ];
        for (id, name) in expected {
            let state = TxnState::from_id(id).map(TxnState::name);
            assert_eq!(state, Some(name));
            assert_eq!(TxnState::from_name(name).map(TxnState::id), Some(id));
        }
        assert_eq!(TxnState::from_id(8), None);
    }

    #[test]
    fn a_key_round_trips() {
        let key = encode_key("my-txn");
        assert_eq!(decode_key(&key), Ok(Some("my-txn".to_string())));
    }

    #[test]
    fn decoding_a_partition_keeps_the_good_records_and_counts_the_rest() {
        let good = TxnLogRecord {
            transactional_id: "t".into(),
            value: Some(ongoing_value()),
        };
        let (key, value) = good.encode(1);
        let unknown_key: &[u8] = &[0, 9, 0, 1, b'x'];
        let input = [
            (&key[..], value.as_deref()),
            (unknown_key, None),
            (&key[..], Some(&[0u8, 1, 2][..])),
        ];
        assert_eq!(decode_all(input), (vec![good], 2));
    }

    #[test]
    fn a_key_of_an_unknown_version_is_skipped_not_an_error() {
        assert_eq!(decode_key(&[0, 1, 0, 1, b'x']), Ok(None));
    }

    #[test]
    fn a_version_1_value_round_trips_with_its_tagged_fields() {
        let v = ongoing_value();
        assert_eq!(TxnLogValue::decode(&v.encode(1)), Ok(v));
    }

    #[test]
    fn a_version_0_value_round_trips_without_tagged_fields() {
        let v = ongoing_value();
        assert_eq!(TxnLogValue::decode(&v.encode(0)), Ok(without_tags(v)));
    }

    #[test]
    fn an_empty_transaction_stores_null_partitions_in_both_versions() {
        let v = TxnLogValue {
            state: TxnState::Empty,
            partitions: None,
            start_timestamp_ms: -1,
            ..ongoing_value()
        };
        assert_eq!(TxnLogValue::decode(&v.encode(1)), Ok(v.clone()));
        assert_eq!(TxnLogValue::decode(&v.encode(0)), Ok(without_tags(v)));
    }

    #[test]
    fn a_tombstone_decodes_to_a_record_without_value() {
        let record = TxnLogRecord {
            transactional_id: "gone".into(),
            value: None,
        };
        let (key, value) = record.encode(1);
        assert_eq!(value, None);
        assert_eq!(TxnLogRecord::decode(&key, None), Ok(Some(record)));
    }

    /// Bytes written by hand from TransactionLogKey.json / TransactionLogValue.json.
    #[test]
    fn the_encoding_matches_bytes_written_from_kafkas_schema() {
        assert_eq!(&encode_key("tx")[..], &[0, 0, 0, 2, b't', b'x']);
        let v = TxnLogValue {
            producer_id: 7,
            previous_producer_id: -1,
            next_producer_id: 9,
            producer_epoch: 3,
            timeout_ms: 60_000,
            state: TxnState::PrepareCommit,
            partitions: Some(vec![TopicPartitions {
                topic: "t".into(),
                partitions: vec![0, 1],
            }]),
            last_update_timestamp_ms: 0x0102,
            start_timestamp_ms: 0x0101,
            client_transaction_version: 2,
        };
        #[rustfmt::skip]
        let v1: &[u8] = &[
            0, 1,                           // version 1
            0, 0, 0, 0, 0, 0, 0, 7,         // ProducerId
            0, 3,                           // ProducerEpoch
            0, 0, 0xea, 0x60,               // TransactionTimeoutMs 60000
            2,                              // TransactionStatus PrepareCommit
            2,                              // compact array: 1 topic
            2, b't',                        //   compact string "t"
            3, 0, 0, 0, 0, 0, 0, 0, 1,      //   compact array [0, 1]
            0,                              //   no tagged fields
            0, 0, 0, 0, 0, 0, 1, 2,         // TransactionLastUpdateTimestampMs
            0, 0, 0, 0, 0, 0, 1, 1,         // TransactionStartTimestampMs
            2,                              // 2 tagged fields (PreviousProducerId is default)
            1, 8, 0, 0, 0, 0, 0, 0, 0, 9,   //   tag 1 NextProducerId = 9
            2, 2, 0, 2,                     //   tag 2 ClientTransactionVersion = 2
        ];
        assert_eq!(&v.encode(1)[..], v1);
        assert_eq!(TxnLogValue::decode(v1), Ok(v.clone()));
        #[rustfmt::skip]
        let v0: &[u8] = &[
            0, 0,                           // version 0
            0, 0, 0, 0, 0, 0, 0, 7,
            0, 3,
            0, 0, 0xea, 0x60,
            2,
            0, 0, 0, 1,                     // array: 1 topic
            0, 1, b't',                     //   string "t"
            0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, // array [0, 1]
            0, 0, 0, 0, 0, 0, 1, 2,
            0, 0, 0, 0, 0, 0, 1, 1,
        ];
        assert_eq!(&v.encode(0)[..], v0);
    }

    #[test]
    fn an_unknown_tagged_field_is_skipped() {
        let mut raw = ongoing_value().encode(1).to_vec();
        // Replace the tag count (3) with 4 and append tag 9 of two bytes.
        let tags_at = raw.len() - (1 + 10 + 10 + 4);
        assert_eq!(raw[tags_at], 3);
        raw[tags_at] = 4;
        raw.extend_from_slice(&[9, 2, 0xab, 0xcd]);
        assert_eq!(TxnLogValue::decode(&raw), Ok(ongoing_value()));
    }

    #[test]
    fn a_partition_count_larger_than_the_bytes_left_is_refused_before_allocating() {
        #[rustfmt::skip]
        let raw: &[u8] = &[
            0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 10, 1,
            0x7f, 0xff, 0xff, 0xff,         // 2^31-1 topics
        ];
        assert!(TxnLogValue::decode(raw).is_err());
        #[rustfmt::skip]
        let flexible: &[u8] = &[
            0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 10, 1,
            0xff, 0xff, 0xff, 0xff, 0x0f,   // 2^32-2 topics
        ];
        assert!(TxnLogValue::decode(flexible).is_err());
    }

    #[test]
    fn every_truncation_of_a_value_is_an_error_not_a_panic() {
        for version in [0, 1] {
            let raw = ongoing_value().encode(version);
            for n in 0..raw.len() {
                assert!(
                    TxnLogValue::decode(&raw[..n]).is_err(),
                    "v{version} len {n}"
                );
            }
        }
    }

    #[test]
    fn unknown_versions_and_states_are_errors() {
        let mut raw = ongoing_value().encode(1).to_vec();
        raw[1] = 2;
        assert!(TxnLogValue::decode(&raw).is_err());
        let mut raw = ongoing_value().encode(0).to_vec();
        raw[16] = 8; // state byte
        assert!(TxnLogValue::decode(&raw).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic fuzz: every prefix of a pseudo-random stream, as key and value.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut bytes = Vec::new();
        for _ in 0..512 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.push(x as u8);
        }
        for start in [0u8, 1] {
            let mut input = vec![0, start];
            input.extend_from_slice(&bytes);
            for n in 0..input.len() {
                let _ = TxnLogRecord::decode(&input[..n], Some(&input[..n]));
            }
        }
    }
}
