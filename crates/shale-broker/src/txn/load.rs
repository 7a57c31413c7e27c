//! Rebuilding a partition's producer state when its stream is opened: a scan of the
//! stored batch headers (and the one record of each transaction marker).

use crate::Broker;
use crate::txn::producers::{Marker, ProducerStates};
use shale_protocol::{batch, control};
use shale_stream::{Stream, StreamError};

/// Bytes read per step of the scan.
const SCAN_CHUNK: usize = 4 << 20;

/// A partition's producer state as loaded.
pub(crate) struct Loaded {
    pub states: ProducerStates,
    /// Offset of the snapshot or checkpoint used (0 without one).
    pub snapshot_offset: u64,
    /// Where the scan of stored batches started.
    pub scanned_from: u64,
}

/// The producer state of `stream` as its stored batches leave it: from the newest of its
/// snapshot (see `snapshot`) and the nodes' checkpoints (see `checkpoint`), and a scan of
/// the batches after it, or a scan of the whole stream.
pub(crate) async fn producer_states(
    broker: &Broker,
    stream: &Stream,
) -> Result<Loaded, StreamError> {
    let end = stream.end_offset();
    let start = stream.start_offset();
    // A checkpoint at the end leaves nothing for the snapshot to improve on (a controlled
    // shutdown's last one): its GET is spared. Checkpoints of a failover's opens are fetched
    // once for all of them, so asking them first costs little.
    let checkpointed = super::checkpoint::newest(broker, stream.id(), end).await;
    let attached = match &checkpointed {
        Some((_, offset)) if *offset == end => Ok(None),
        _ => stream.get_attachment(super::snapshot::NAME).await,
    };
    let snapshot = match attached {
        Ok(Some(data)) => match super::snapshot::decode(&data) {
            // A snapshot past the end would describe batches the stream does not have.
            Some((states, offset)) if offset <= end => Some((states, offset)),
            Some((_, offset)) => {
                tracing::warn!(
                    stream = stream.id(),
                    offset,
                    end,
                    "producer-state snapshot beyond the stream's end: scanning it all"
                );
                None
            }
            None => {
                tracing::warn!(
                    stream = stream.id(),
                    "unreadable producer-state snapshot: scanning the stream"
                );
                None
            }
        },
        Ok(None) => None,
        Err(e) => return Err(e),
    };
    let (mut states, snapshot_offset) = [snapshot, checkpointed]
        .into_iter()
        .flatten()
        .max_by_key(|(_, offset)| *offset)
        .unwrap_or_default();
    let mut pos = snapshot_offset.max(start);
    if pos > snapshot_offset {
        // Retention moved the start past the snapshot: what happened in between is gone.
        states.forget_below(pos as i64);
    }
    let scanned_from = pos;
    let mut batches = 0u64;
    while pos < end {
        let records = match stream.read(pos, SCAN_CHUNK).await {
            Ok(r) => r,
            // Retention moved the start past `pos` while scanning: what it removed no longer
            // matters.
            Err(StreamError::OffsetOutOfRange { start, .. }) if start > pos => {
                pos = start;
                states.forget_below(pos as i64);
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(last) = records.last() else { break };
        pos = last.end_offset();
        for r in &records {
            for (h, range) in batch::headers(&r.payload) {
                batches += 1;
                if h.producer_id < 0 {
                    continue;
                }
                if h.is_control() {
                    match control::parse_marker(&r.payload[range]) {
                        Ok(Some(m)) => states.apply_marker(
                            &Marker {
                                producer_id: h.producer_id,
                                epoch: h.producer_epoch,
                                commit: m.commit,
                                coordinator_epoch: m.coordinator_epoch,
                                offset: h.base_offset,
                                timestamp: h.max_timestamp,
                            },
                            i64::MIN,
                        ),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(stream = stream.id(), offset = h.base_offset, error = %e, "unreadable control batch skipped");
                        }
                    }
                } else {
                    states.replay_batch(&h);
                }
            }
        }
    }
    // Prunes the transactions completed during the scan (their markers are durable).
    let _ = states.last_stable_offset(end as i64, stream.start_offset() as i64);
    let expired = states.expire(
        crate::now_ms(),
        broker.config.producer_id_expiration_ms,
        stream.start_offset() as i64,
    );
    tracing::debug!(
        stream = stream.id(),
        snapshot_offset,
        scanned_from,
        batches,
        producers = states.producers().count(),
        expired,
        "producer state loaded"
    );
    Ok(Loaded {
        states,
        snapshot_offset,
        scanned_from,
    })
}
