//! Fetch responses encoded as a chain of chunks: the encoded fields, with each partition's
//! record batches referenced as they are (slices of cached blocks or GET buffers) instead of
//! being copied into one partition buffer and then again into the response frame.
//!
//! A fetch response carries up to `fetch.max.bytes` of records, so each copy is that much
//! memory per request in flight; the chain needs none. Small batches are still copied into
//! the surrounding chunk (fewer, larger writes). Everything but the records is encoded as
//! `kafka-protocol` encodes it (nested structs through its own encoders), and a test checks
//! the concatenated chain is byte-identical to its encoding at every version.

use crate::envelope::EnvelopeError;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{ApiKey, FetchResponse, ResponseHeader};
use kafka_protocol::protocol::Encodable;

/// Batches smaller than this are copied into the chunk being built rather than chained.
const CHAIN_MIN: usize = 4096;

/// A response frame as chunks to write in order (the first holds the length prefix).
#[derive(Debug, Default)]
pub struct FrameChunks {
    pub chunks: Vec<Bytes>,
}

impl FrameChunks {
    /// Total bytes of the frame, length prefix included.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The frame as one buffer (tests).
    pub fn concat(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len());
        for c in &self.chunks {
            out.put_slice(c);
        }
        out.freeze()
    }
}

struct Writer {
    head: BytesMut,
    chunks: Vec<Bytes>,
    flexible: bool,
}

fn encode_error(e: impl std::fmt::Display) -> EnvelopeError {
    EnvelopeError::Encode(e.to_string())
}

impl Writer {
    fn uvarint(&mut self, mut v: u32) -> Result<(), EnvelopeError> {
        while v >= 0x80 {
            self.head.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.head.put_u8(v as u8);
        Ok(())
    }

    /// An array length, or `None` for a null array.
    fn array_len(&mut self, n: Option<usize>) -> Result<(), EnvelopeError> {
        let too_long = || EnvelopeError::Encode("array too long".into());
        match (n, self.flexible) {
            (None, false) => self.head.put_i32(-1),
            (None, true) => self.uvarint(0)?,
            (Some(n), false) => self.head.put_i32(i32::try_from(n).map_err(|_| too_long())?),
            (Some(n), true) => {
                let n = u32::try_from(n).ok().and_then(|n| n.checked_add(1));
                self.uvarint(n.ok_or_else(too_long)?)?
            }
        }
        Ok(())
    }

    fn string(&mut self, s: &str) -> Result<(), EnvelopeError> {
        if self.flexible {
            self.array_len(Some(s.len()))?;
        } else {
            let len = i16::try_from(s.len()).map_err(|_| encode_error("string too long"))?;
            self.head.put_i16(len);
        }
        self.head.put_slice(s.as_bytes());
        Ok(())
    }

    fn value<T: Encodable>(&mut self, v: &T, version: i16) -> Result<(), EnvelopeError> {
        v.encode(&mut self.head, version).map_err(encode_error)
    }

    /// One tagged field: tag, size, the struct.
    fn tagged<T: Encodable>(&mut self, tag: u32, v: &T, version: i16) -> Result<(), EnvelopeError> {
        let size = v.compute_size(version).map_err(encode_error)?;
        self.uvarint(tag)?;
        self.uvarint(u32::try_from(size).map_err(encode_error)?)?;
        self.value(v, version)
    }

    /// A partition's records: the length, then the batches chained (or copied when small).
    fn records(&mut self, batches: Vec<Bytes>) -> Result<(), EnvelopeError> {
        let total: usize = batches.iter().map(Bytes::len).sum();
        if self.flexible {
            self.array_len(Some(total))?;
        } else {
            self.head
                .put_i32(i32::try_from(total).map_err(|_| encode_error("records too large"))?);
        }
        for b in batches {
            if b.len() < CHAIN_MIN {
                self.head.put_slice(&b);
            } else {
                if !self.head.is_empty() {
                    self.chunks.push(self.head.split().freeze());
                }
                self.chunks.push(b);
            }
        }
        Ok(())
    }

    fn partition(
        &mut self,
        p: &PartitionData,
        batches: Vec<Bytes>,
        version: i16,
    ) -> Result<(), EnvelopeError> {
        self.head.put_i32(p.partition_index);
        self.head.put_i16(p.error_code);
        self.head.put_i64(p.high_watermark);
        self.head.put_i64(p.last_stable_offset);
        if version >= 5 {
            self.head.put_i64(p.log_start_offset);
        }
        let aborted = p.aborted_transactions.as_ref();
        self.array_len(aborted.map(Vec::len))?;
        for t in aborted.into_iter().flatten() {
            self.value(t, version)?;
        }
        if version >= 11 {
            self.head.put_i32(p.preferred_read_replica.0);
        } else if p.preferred_read_replica.0 != -1 {
            return Err(encode_error("preferred_read_replica needs fetch v11"));
        }
        self.records(batches)?;
        if self.flexible {
            let diverging = p.diverging_epoch != Default::default();
            let leader = p.current_leader != Default::default();
            let snapshot = p.snapshot_id != Default::default();
            self.uvarint(u32::from(diverging) + u32::from(leader) + u32::from(snapshot))?;
            if diverging {
                self.tagged(0, &p.diverging_epoch, version)?;
            }
            if leader {
                self.tagged(1, &p.current_leader, version)?;
            }
            if snapshot {
                self.tagged(2, &p.snapshot_id, version)?;
            }
        }
        Ok(())
    }
}

/// Encodes `resp` as a response frame. `records` holds each partition's batches, in the
/// order the partitions appear in `resp` (whose own `records` fields are ignored). Unknown
/// tagged fields, which Shale never sets, are refused.
pub fn encode_fetch_response(
    correlation_id: i32,
    version: i16,
    resp: &FetchResponse,
    records: Vec<Vec<Bytes>>,
) -> Result<FrameChunks, EnvelopeError> {
    let has_unknown_tags = !resp.unknown_tagged_fields.is_empty()
        || resp.responses.iter().any(|t| {
            !t.unknown_tagged_fields.is_empty()
                || t.partitions
                    .iter()
                    .any(|p| !p.unknown_tagged_fields.is_empty())
        });
    if has_unknown_tags || !(4..=18).contains(&version) {
        return Err(encode_error("fetch response not encodable as chunks"));
    }
    let mut w = Writer {
        head: BytesMut::with_capacity(1024),
        chunks: Vec::new(),
        flexible: version >= 12,
    };
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut w.head, ApiKey::Fetch.response_header_version(version))
        .map_err(encode_error)?;
    w.head.put_i32(resp.throttle_time_ms);
    if version >= 7 {
        w.head.put_i16(resp.error_code);
        w.head.put_i32(resp.session_id);
    } else if resp.session_id != 0 {
        return Err(encode_error("session_id needs fetch v7"));
    }
    let mut records = records.into_iter();
    w.array_len(Some(resp.responses.len()))?;
    for t in &resp.responses {
        if version <= 12 {
            w.string(&t.topic.0)?;
        }
        if version >= 13 {
            w.head.put_slice(t.topic_id.as_bytes());
        }
        w.array_len(Some(t.partitions.len()))?;
        for p in &t.partitions {
            w.partition(p, records.next().unwrap_or_default(), version)?;
        }
        if w.flexible {
            w.uvarint(0)?;
        }
    }
    if w.flexible {
        let endpoints = version >= 16 && !resp.node_endpoints.is_empty();
        w.uvarint(u32::from(endpoints))?;
        if endpoints {
            let mut body = BytesMut::new();
            let mut nested = Writer {
                head: BytesMut::new(),
                chunks: Vec::new(),
                flexible: true,
            };
            nested.array_len(Some(resp.node_endpoints.len()))?;
            for e in &resp.node_endpoints {
                nested.value(e, version)?;
            }
            body.put_slice(&nested.head);
            w.uvarint(0)?;
            w.uvarint(u32::try_from(body.len()).map_err(encode_error)?)?;
            w.head.put_slice(&body);
        }
    }
    if !w.head.is_empty() {
        w.chunks.push(w.head.split().freeze());
    }
    let len: usize = w.chunks.iter().map(Bytes::len).sum();
    let len = i32::try_from(len).map_err(|_| encode_error("response frame too large"))?;
    let mut chunks = Vec::with_capacity(w.chunks.len() + 1);
    chunks.push(Bytes::copy_from_slice(&len.to_be_bytes()));
    chunks.extend(w.chunks);
    Ok(FrameChunks { chunks })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::encode_response;
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint,
        SnapshotId,
    };
    use kafka_protocol::messages::{BrokerId, ResponseKind, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn batches(seed: usize) -> Vec<Bytes> {
        // Small (copied) and large (chained) batches.
        (0..seed % 4)
            .map(|i| Bytes::from(vec![(seed + i) as u8; if i % 2 == 0 { 100 } else { 5000 }]))
            .collect()
    }

    fn response(version: i16) -> (FetchResponse, Vec<Vec<Bytes>>) {
        let mut all = Vec::new();
        let topics = (0..3)
            .map(|t| {
                let partitions = (0..3)
                    .map(|p| {
                        let seed = t * 3 + p;
                        all.push(batches(seed));
                        let mut d = PartitionData::default()
                            .with_partition_index(p as i32)
                            .with_error_code(if seed == 4 { 6 } else { 0 })
                            .with_high_watermark(1000 + seed as i64)
                            .with_last_stable_offset(900)
                            .with_log_start_offset(if version >= 5 { 10 } else { -1 })
                            .with_aborted_transactions(match seed % 3 {
                                0 => None,
                                1 => Some(vec![]),
                                _ => Some(vec![
                                    AbortedTransaction::default()
                                        .with_producer_id((7 + seed as i64).into())
                                        .with_first_offset(33),
                                ]),
                            });
                        if version >= 11 {
                            d = d.with_preferred_read_replica(BrokerId(seed as i32 % 2 - 1));
                        }
                        if version >= 12 && seed == 4 {
                            d = d
                                .with_current_leader(
                                    LeaderIdAndEpoch::default()
                                        .with_leader_id(BrokerId(2))
                                        .with_leader_epoch(9),
                                )
                                .with_diverging_epoch(
                                    EpochEndOffset::default().with_epoch(3).with_end_offset(77),
                                )
                                .with_snapshot_id(
                                    SnapshotId::default().with_end_offset(5).with_epoch(1),
                                );
                        }
                        d
                    })
                    .collect();
                let mut topic = FetchableTopicResponse::default().with_partitions(partitions);
                if version >= 13 {
                    topic = topic.with_topic_id(uuid::Uuid::from_u128(t as u128 + 1));
                } else {
                    topic =
                        topic.with_topic(TopicName(StrBytes::from_string(format!("topic-{t}"))));
                }
                topic
            })
            .collect();
        let mut resp = FetchResponse::default()
            .with_throttle_time_ms(5)
            .with_responses(topics);
        if version >= 7 {
            resp = resp.with_error_code(0).with_session_id(0);
        }
        if version >= 16 {
            resp = resp.with_node_endpoints(vec![
                NodeEndpoint::default()
                    .with_node_id(BrokerId(2))
                    .with_host(StrBytes::from_static_str("b2"))
                    .with_port(9093)
                    .with_rack(Some(StrBytes::from_static_str("r1"))),
            ]);
        }
        (resp, all)
    }

    #[test]
    fn chunked_frames_are_byte_identical_to_the_codec_at_every_version() {
        for version in 4..=ApiKey::Fetch.valid_versions().max.min(18) {
            let (resp, records) = response(version);
            let mut with_records = resp.clone();
            let mut it = records.iter();
            for t in &mut with_records.responses {
                for p in &mut t.partitions {
                    let mut b = BytesMut::new();
                    for r in it.next().unwrap() {
                        b.put_slice(r);
                    }
                    p.records = Some(b.freeze());
                }
            }
            let want = encode_response(
                ApiKey::Fetch,
                version,
                42,
                &ResponseKind::Fetch(with_records),
            )
            .unwrap();
            let got = encode_fetch_response(42, version, &resp, records).unwrap();
            assert_eq!(got.concat(), want, "fetch v{version}");
            assert!(
                got.chunks.len() > 2,
                "large batches are chained, not copied"
            );
        }
    }
}
