//! Producer-state snapshots: a partition's producer state (sequences, epochs, open
//! transactions, aborted transactions) stored as an attachment of its stream, valid for
//! every batch below `offset`. Opening a partition loads the snapshot and scans only the
//! batches from `offset` on, instead of the whole stream (Kafka keeps `.snapshot` files per
//! segment for the same reason).
//!
//! A snapshot is taken under the append lock (so it is exactly the state of the batches
//! below the stream's next offset) and uploaded only once those batches are durable: a
//! snapshot never describes an append that could still be lost.
//!
//! Format: a version byte, a protobuf body, a CRC-32C of both. Anything that does not
//! decode is ignored and the partition is scanned in full.

use super::producers::{AbortedTxn, BatchMeta, ProducerEntry, ProducerStates};
use crate::Broker;
use crate::partitions::Owned;
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// The attachment name.
pub(crate) const NAME: &str = "producer-state";
const FORMAT: u8 = 1;
/// A partition without producer state stores an (empty) snapshot only once it has grown by
/// this many offsets since its last one: enough to spare a restart the scan of a large plain
/// topic, without a PUT per quiet partition per interval.
const EMPTY_SNAPSHOT_MIN_OFFSETS: u64 = 10_000;
/// How long a snapshot waits for the batches it covers to become durable.
const DURABLE_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, PartialEq, Message)]
struct PbSnapshot {
    #[prost(uint64, tag = "1")]
    offset: u64,
    #[prost(message, repeated, tag = "2")]
    producers: Vec<PbProducer>,
    #[prost(message, repeated, tag = "3")]
    aborted: Vec<PbAborted>,
}

#[derive(Clone, PartialEq, Message)]
struct PbProducer {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int32, tag = "2")]
    epoch: i32,
    #[prost(int64, tag = "3")]
    last_timestamp: i64,
    #[prost(int32, tag = "4")]
    coordinator_epoch: i32,
    #[prost(int64, optional, tag = "5")]
    txn_first_offset: Option<i64>,
    #[prost(message, repeated, tag = "6")]
    batches: Vec<PbBatch>,
}

#[derive(Clone, PartialEq, Message)]
struct PbBatch {
    #[prost(int32, tag = "1")]
    first_seq: i32,
    #[prost(int32, tag = "2")]
    last_seq: i32,
    #[prost(int64, tag = "3")]
    first_offset: i64,
    #[prost(int64, tag = "4")]
    last_offset: i64,
}

#[derive(Clone, PartialEq, Message)]
struct PbAborted {
    #[prost(int64, tag = "1")]
    producer_id: i64,
    #[prost(int64, tag = "2")]
    first_offset: i64,
    #[prost(int64, tag = "3")]
    last_offset: i64,
}

/// Encodes the state of every batch below `offset`.
pub(crate) fn encode(states: &ProducerStates, offset: u64) -> Bytes {
    let pb = PbSnapshot {
        offset,
        producers: states
            .producers()
            .map(|(id, e)| PbProducer {
                id,
                epoch: i32::from(e.epoch),
                last_timestamp: e.last_timestamp,
                coordinator_epoch: e.coordinator_epoch,
                txn_first_offset: e.txn_first_offset,
                batches: e
                    .batches
                    .iter()
                    .map(|b| PbBatch {
                        first_seq: b.first_seq,
                        last_seq: b.last_seq,
                        first_offset: b.first_offset,
                        last_offset: b.last_offset,
                    })
                    .collect(),
            })
            .collect(),
        aborted: states
            .aborted_between(i64::MIN, i64::MAX)
            .into_iter()
            .map(|a| PbAborted {
                producer_id: a.producer_id,
                first_offset: a.first_offset,
                last_offset: a.last_offset,
            })
            .collect(),
    };
    frame(&pb)
}

/// `message` framed as snapshots and checkpoints are stored: a version byte, the protobuf
/// body, a CRC-32C of both (protobuf cut at a field boundary still parses).
pub(crate) fn frame(message: &impl Message) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + message.encoded_len() + 4);
    out.put_u8(FORMAT);
    // `encode_raw` cannot fail: a BytesMut grows as the encoding needs.
    message.encode_raw(&mut out);
    let crc = crc32c::crc32c(&out);
    out.put_u32_le(crc);
    out.freeze()
}

/// The protobuf body of a [`frame`]; `None` if damaged or of an unknown version.
pub(crate) fn unframe(data: &[u8]) -> Option<&[u8]> {
    if data.len() < 5 || data[0] != FORMAT {
        return None;
    }
    let (covered, crc) = data.split_at(data.len() - 4);
    if crc32c::crc32c(covered).to_le_bytes() != crc {
        return None;
    }
    covered.get(1..)
}

/// The state and the offset it is valid below; `None` for data that is not a snapshot of a
/// known format (damaged, or from a newer version).
pub(crate) fn decode(data: &[u8]) -> Option<(ProducerStates, u64)> {
    let pb = PbSnapshot::decode(unframe(data)?).ok()?;
    let mut states = ProducerStates::default();
    for p in pb.producers {
        let batches: VecDeque<BatchMeta> = p
            .batches
            .into_iter()
            .rev()
            .take(super::producers::CACHED_BATCHES)
            .rev()
            .map(|b| BatchMeta {
                first_seq: b.first_seq,
                last_seq: b.last_seq,
                first_offset: b.first_offset,
                last_offset: b.last_offset,
            })
            .collect();
        states.restore_producer(
            p.id,
            ProducerEntry {
                epoch: i16::try_from(p.epoch).ok()?,
                batches,
                last_timestamp: p.last_timestamp,
                coordinator_epoch: p.coordinator_epoch,
                txn_first_offset: p.txn_first_offset,
            },
        );
    }
    for a in pb.aborted {
        states.restore_aborted(AbortedTxn {
            producer_id: a.producer_id,
            first_offset: a.first_offset,
            last_offset: a.last_offset,
        });
    }
    Some((states, pb.offset))
}

/// Snapshots one partition whose state changed since its last snapshot.
pub(crate) async fn snapshot_one(owned: &Arc<Owned>) -> bool {
    let taken = {
        let producers = owned.producers.lock();
        let next = owned.stream.next_offset();
        let last = owned
            .snapshot_offset
            .load(std::sync::atomic::Ordering::Acquire);
        let grown = next.saturating_sub(last);
        if grown == 0 || (producers.is_empty() && grown < EMPTY_SNAPSHOT_MIN_OFFSETS) {
            return false;
        }
        (encode(&producers, next), next)
    };
    let (data, offset) = taken;
    // Upload only what is durable: wait for the covered batches' commit.
    let deadline = tokio::time::Instant::now() + DURABLE_WAIT;
    while owned.stream.end_offset() < offset {
        if !owned.stream.is_writable() || tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match owned.stream.put_attachment(NAME, data).await {
        Ok(()) => {
            owned
                .snapshot_offset
                .store(offset, std::sync::atomic::Ordering::Release);
            true
        }
        Err(e) => {
            tracing::warn!(stream = owned.stream.id(), error = %e, "producer-state snapshot failed");
            false
        }
    }
}

impl Broker {
    /// Snapshots the producer state of every open partition that changed (tests, shutdown;
    /// the background task does the same every `producer.state.snapshot.interval.ms`).
    /// Returns how many were written.
    pub async fn snapshot_producer_states_now(&self) -> usize {
        let mut written = 0;
        for owned in self.open_partitions() {
            written += usize::from(snapshot_one(&owned).await);
        }
        written
    }
}

pub(crate) async fn run(broker: Arc<Broker>) {
    let period = broker.config.producer_state_snapshot_interval;
    if period.is_zero() {
        return;
    }
    let mut stop = broker.shutdown_signal();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        broker.snapshot_producer_states_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shale_protocol::batch::BatchHeader;

    fn header(pid: i64, seq: i32, offset: i64, txn: bool) -> BatchHeader {
        BatchHeader {
            base_offset: offset,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: if txn { 0x10 } else { 0 },
            last_offset_delta: 1,
            base_timestamp: 5,
            max_timestamp: 5,
            producer_id: pid,
            producer_epoch: 3,
            base_sequence: seq,
            record_count: 2,
        }
    }

    #[test]
    fn a_snapshot_restores_the_state_it_was_taken_of() {
        let mut s = ProducerStates::default();
        s.replay_batch(&header(1, 0, 0, false));
        s.replay_batch(&header(2, 0, 2, true));
        s.apply_marker(
            &super::super::producers::Marker {
                producer_id: 2,
                epoch: 3,
                commit: false,
                coordinator_epoch: 1,
                offset: 4,
                timestamp: 6,
            },
            0,
        );
        s.replay_batch(&header(3, 7, 5, true));
        let data = encode(&s, 7);
        let (back, offset) = decode(&data).unwrap();
        assert_eq!(offset, 7);
        assert_eq!(back.producer(1), s.producer(1));
        assert_eq!(back.producer(3), s.producer(3));
        assert_eq!(back.aborted_between(0, 10), s.aborted_between(0, 10));
        let (mut a, mut b) = (back, s);
        assert_eq!(a.last_stable_offset(7, 0), b.last_stable_offset(7, 0));
    }

    #[test]
    fn damaged_snapshots_are_ignored() {
        let data = encode(&ProducerStates::default(), 3);
        assert!(decode(&data).is_some());
        for cut in 0..data.len() {
            assert!(decode(&data[..cut]).is_none());
        }
        let mut flipped = data.to_vec();
        flipped[1] ^= 1;
        assert!(decode(&flipped).is_none());
    }
}
