//! The `__consumer_offsets` record formats, byte-compatible with Kafka's
//! (OffsetCommitKey/Value, GroupMetadataKey/Value), so Kafka tools reading the topic (e.g. the
//! console consumer's offsets formatter) understand them and the layout is a known quantity.
//!
//! Keys start with an int16 record type (0/1 = offset commit, 2 = group metadata); values with
//! an int16 schema version. A null value is a tombstone.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// What a key names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum RecordKey {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
}

/// A committed offset as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
    /// Only with the retention_time_ms of OffsetCommit v2-v4 (value schema 1); -1 otherwise.
    pub expire_timestamp: i64,
}

/// A member as stored in the group metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// Group metadata as stored (GroupMetadataValue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub current_state_timestamp: i64,
    pub members: Vec<StoredMember>,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed __consumer_offsets record: {0}")]
pub(crate) struct RecordError(&'static str);

fn put_str(b: &mut BytesMut, s: &str) {
    // Strings longer than i16::MAX are refused before they get here (group ids, metadata).
    b.put_i16(s.len().min(i16::MAX as usize) as i16);
    b.put_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
}

fn put_nullable_str(b: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(b, s),
        None => b.put_i16(-1),
    }
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_i32(v.len() as i32);
    b.put_slice(v);
}

struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), RecordError> {
        if self.0.remaining() < n {
            Err(RecordError("truncated"))
        } else {
            Ok(())
        }
    }
    fn i16(&mut self) -> Result<i16, RecordError> {
        self.need(2)?;
        Ok(self.0.get_i16())
    }
    fn i32(&mut self) -> Result<i32, RecordError> {
        self.need(4)?;
        Ok(self.0.get_i32())
    }
    fn i64(&mut self) -> Result<i64, RecordError> {
        self.need(8)?;
        Ok(self.0.get_i64())
    }
    fn nullable_str(&mut self) -> Result<Option<String>, RecordError> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        let len = len as usize;
        self.need(len)?;
        let raw = self.0.split_to(len);
        String::from_utf8(raw.to_vec())
            .map(Some)
            .map_err(|_| RecordError("string is not UTF-8"))
    }
    fn str(&mut self) -> Result<String, RecordError> {
        self.nullable_str()?.ok_or(RecordError("null string"))
    }
    fn bytes(&mut self) -> Result<Bytes, RecordError> {
        let len = self.i32()?;
        if len < 0 {
            return Ok(Bytes::new());
        }
        let len = len as usize;
        self.need(len)?;
        Ok(self.0.split_to(len))
    }
}

impl RecordKey {
    pub(crate) fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        match self {
            RecordKey::Offset {
                group,
                topic,
                partition,
            } => {
                b.put_i16(1);
                put_str(&mut b, group);
                put_str(&mut b, topic);
                b.put_i32(*partition);
            }
            RecordKey::Group { group } => {
                b.put_i16(2);
                put_str(&mut b, group);
            }
        }
        b.freeze()
    }

    /// `Ok(None)` for record types Shale does not use (KIP-848 records ...): skipped on load.
    pub(crate) fn decode(raw: Bytes) -> Result<Option<Self>, RecordError> {
        let mut r = Reader(raw);
        match r.i16()? {
            0 | 1 => Ok(Some(RecordKey::Offset {
                group: r.str()?,
                topic: r.str()?,
                partition: r.i32()?,
            })),
            2 => Ok(Some(RecordKey::Group { group: r.str()? })),
            _ => Ok(None),
        }
    }
}

impl OffsetValue {
    pub(crate) fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        if self.expire_timestamp >= 0 {
            // Schema 1 is the only one with an explicit expiry.
            b.put_i16(1);
            b.put_i64(self.offset);
            put_str(&mut b, &self.metadata);
            b.put_i64(self.commit_timestamp);
            b.put_i64(self.expire_timestamp);
        } else {
            b.put_i16(3);
            b.put_i64(self.offset);
            b.put_i32(self.leader_epoch);
            put_str(&mut b, &self.metadata);
            b.put_i64(self.commit_timestamp);
        }
        b.freeze()
    }

    pub(crate) fn decode(raw: Bytes) -> Result<Self, RecordError> {
        let mut r = Reader(raw);
        let version = r.i16()?;
        if !(0..=3).contains(&version) {
            return Err(RecordError("unknown offset value version"));
        }
        let offset = r.i64()?;
        let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
        let metadata = r.str()?;
        let commit_timestamp = r.i64()?;
        let expire_timestamp = if version == 1 { r.i64()? } else { -1 };
        Ok(Self {
            offset,
            leader_epoch,
            metadata,
            commit_timestamp,
            expire_timestamp,
        })
    }
}

impl GroupValue {
    pub(crate) fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i16(3);
        put_str(&mut b, &self.protocol_type);
        b.put_i32(self.generation);
        put_nullable_str(&mut b, self.protocol.as_deref());
        put_nullable_str(&mut b, self.leader.as_deref());
        b.put_i64(self.current_state_timestamp);
        b.put_i32(self.members.len() as i32);
        for m in &self.members {
            put_str(&mut b, &m.member_id);
            put_nullable_str(&mut b, m.instance_id.as_deref());
            put_str(&mut b, &m.client_id);
            put_str(&mut b, &m.client_host);
            b.put_i32(m.rebalance_timeout_ms);
            b.put_i32(m.session_timeout_ms);
            put_bytes(&mut b, &m.subscription);
            put_bytes(&mut b, &m.assignment);
        }
        b.freeze()
    }

    pub(crate) fn decode(raw: Bytes) -> Result<Self, RecordError> {
        let mut r = Reader(raw);
        let version = r.i16()?;
        if !(0..=3).contains(&version) {
            return Err(RecordError("unknown group value version"));
        }
        let protocol_type = r.str()?;
        let generation = r.i32()?;
        let protocol = r.nullable_str()?;
        let leader = r.nullable_str()?;
        let current_state_timestamp = if version >= 2 { r.i64()? } else { -1 };
        let count = r.i32()?;
        let mut members = Vec::with_capacity(count.clamp(0, 1024) as usize);
        for _ in 0..count.max(0) {
            let member_id = r.str()?;
            let instance_id = if version >= 3 {
                r.nullable_str()?
            } else {
                None
            };
            let client_id = r.str()?;
            let client_host = r.str()?;
            let session_first = version == 0;
            let (rebalance_timeout_ms, session_timeout_ms) = if session_first {
                let s = r.i32()?;
                (s, s)
            } else {
                (r.i32()?, r.i32()?)
            };
            members.push(StoredMember {
                member_id,
                instance_id,
                client_id,
                client_host,
                rebalance_timeout_ms,
                session_timeout_ms,
                subscription: r.bytes()?,
                assignment: r.bytes()?,
            });
        }
        Ok(Self {
            protocol_type,
            generation,
            protocol,
            leader,
            current_state_timestamp,
            members,
        })
    }
}

/// Builds one uncompressed magic-v2 batch of `records` (relative offsets from 0; the stream
/// append patches the base offset).
pub(crate) fn encode_batch(
    records: &[(Bytes, Option<Bytes>)],
    timestamp: i64,
) -> Result<BytesMut, String> {
    encode_batch_as(records, timestamp, None)
}

/// [`encode_batch`], as a transactional batch of `producer` (id, epoch) when given: what a
/// TxnOffsetCommit writes, made visible or dropped by the transaction's marker.
pub(crate) fn encode_batch_as(
    records: &[(Bytes, Option<Bytes>)],
    timestamp: i64,
    producer: Option<(i64, i16)>,
) -> Result<BytesMut, String> {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
            transactional: producer.is_some(),
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: producer.map_or(-1, |p| p.0),
            producer_epoch: producer.map_or(-1, |p| p.1),
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch wherever offset - sequence changes, so a
            // constant -1 would give one batch per record, each with base offset 0 before
            // patching (and `patch_offsets` patches only the first). This keeps one batch
            // whose base sequence is -1 (no sequence), as Kafka writes them.
            sequence: (i as i32).wrapping_sub(1),
            timestamp,
            key: Some(k.clone()),
            value: v.clone(),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(buf)
}

/// A stored record of `__consumer_offsets` as loading needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stored {
    Record {
        offset: i64,
        key: Bytes,
        value: Option<Bytes>,
        /// The producer of a transactional record (TxnOffsetCommit): it only counts once
        /// that producer's commit marker follows.
        txn_producer: Option<i64>,
    },
    /// A transaction marker of `producer_id`.
    Marker { producer_id: i64, commit: bool },
}

/// Decodes stored batches for loading, transactions and markers included.
pub(crate) fn decode_stored(payload: Bytes) -> Result<Vec<Stored>, String> {
    let sets = shale_protocol::records::decode_batches_capped(
        &payload,
        shale_protocol::records::DEFAULT_DECOMPRESS_CAP,
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for set in sets {
        for r in set.records {
            if r.control {
                // EndTransactionMarker key: version int16, type int16 (0 abort, 1 commit).
                if let Some(k) = r.key.as_ref().filter(|k| k.len() >= 4)
                    && matches!(k[2..4], [0, 0] | [0, 1])
                {
                    out.push(Stored::Marker {
                        producer_id: r.producer_id,
                        commit: k[3] == 1,
                    });
                }
                continue;
            }
            if let Some(key) = r.key {
                out.push(Stored::Record {
                    offset: r.offset,
                    key,
                    value: r.value,
                    txn_producer: r.transactional.then_some(r.producer_id),
                });
            }
        }
    }
    Ok(out)
}

/// Decodes the records of stored batches: (offset, key, value). Control batches and records
/// without keys are skipped.
#[cfg(test)]
pub(crate) fn decode_batches(payload: Bytes) -> Result<Vec<(i64, Bytes, Option<Bytes>)>, String> {
    let sets = shale_protocol::records::decode_batches_capped(
        &payload,
        shale_protocol::records::DEFAULT_DECOMPRESS_CAP,
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for set in sets {
        for r in set.records {
            if r.control {
                continue;
            }
            if let Some(k) = r.key {
                out.push((r.offset, k, r.value));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_records_round_trip() {
        let key = RecordKey::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
        };
        assert_eq!(RecordKey::decode(key.encode()).ok().flatten(), Some(key));
        let gk = RecordKey::Group { group: "g".into() };
        assert_eq!(RecordKey::decode(gk.encode()).ok().flatten(), Some(gk));
        for expire in [-1, 99] {
            let v = OffsetValue {
                offset: 42,
                leader_epoch: if expire < 0 { 7 } else { -1 },
                metadata: "meta".into(),
                commit_timestamp: 1000,
                expire_timestamp: expire,
            };
            assert_eq!(OffsetValue::decode(v.encode()).ok(), Some(v));
        }
        let g = GroupValue {
            protocol_type: "consumer".into(),
            generation: 5,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            current_state_timestamp: 123,
            members: vec![StoredMember {
                member_id: "m1".into(),
                instance_id: Some("i1".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 300000,
                session_timeout_ms: 45000,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"asg"),
            }],
        };
        assert_eq!(GroupValue::decode(g.encode()).ok(), Some(g));
        // Truncated input is an error, not a panic.
        let raw = GroupValue::decode(Bytes::from_static(&[0, 3, 0, 5, b'a']));
        assert!(raw.is_err());
        // Batches round-trip.
        let batch = encode_batch(&[(Bytes::from_static(b"k"), None)], 5).map(|b| b.freeze());
        let decoded = batch.map(decode_batches);
        assert!(matches!(decoded, Ok(Ok(ref v)) if v.len() == 1 && v[0].2.is_none()));
    }

    /// An OffsetCommit of several partitions is one batch, as Kafka writes it: the stream
    /// patches one header per append, so a batch per record would leave every record after
    /// the first at a wrong offset (and the log cleaner would refuse the partition).
    #[test]
    fn several_records_are_one_batch_without_a_sequence() {
        let records: Vec<(Bytes, Option<Bytes>)> = (0..4)
            .map(|i| (Bytes::from(format!("k{i}")), Some(Bytes::from_static(b"v"))))
            .collect();
        for producer in [None, Some((7, 2))] {
            let buf = encode_batch_as(&records, 5, producer).unwrap();
            let headers: Vec<_> = shale_protocol::batch::headers(&buf)
                .map(|(h, _)| h)
                .collect();
            assert_eq!(headers.len(), 1, "{producer:?}");
            let h = headers[0];
            assert_eq!((h.base_offset, h.last_offset(), h.record_count), (0, 3, 4));
            assert_eq!(h.base_sequence, -1);
            assert_eq!(h.producer_id, producer.map_or(-1, |p| p.0));
            assert_eq!(h.is_transactional(), producer.is_some());
        }
    }
}
