//! The log cleaner: Kafka log compaction (`cleanup.policy=compact`, `compact,delete`) for the
//! partitions this node owns, on top of the stream layer's generic `rewrite_range`.
//!
//! One pass per partition:
//! - the *cleanable window* is the stream's live ranges from its start, stopping before the
//!   last range while that range holds data newer than `segment.ms` (Kafka never cleans the
//!   active segment, and rolls it after `segment.ms`; the stream layer joins adjacent ranges,
//!   so without this a partition whose writes stopped would end as one uncleanable range),
//!   before the first range holding data newer than `min.compaction.lag.ms`, and once `MAX_PASS_BYTES` of ranges are taken (bounded
//!   work; later passes continue as earlier data shrinks);
//! - it is cleaned only when the share of bytes not yet cleaned by this node reaches
//!   `min.cleanable.dirty.ratio`, or when dirty data is older than `max.compaction.lag.ms`;
//! - keys map to their last offset in the window; a record survives if it is the latest of
//!   its key in the window, and a surviving tombstone (null value) is dropped once its batch
//!   is older than `delete.retention.ms` (Kafka measures that from the cleaner's first pass
//!   over the tombstone; the batch timestamp is the simple approximation used here);
//! - batches are rebuilt only when they lose records: kept records are copied byte for byte
//!   (`shale_protocol::records`) under the original batch header (base offset, last offset
//!   delta, timestamps, producer id/epoch/sequence, leader epoch, timestamp type), recompressed
//!   with the batch's codec, as Kafka's cleaner does. Batches losing every record disappear
//!   (an offset gap, as in Kafka). Control and transactional batches are kept as they are and
//!   their keys are ignored (an aborted transaction must not shadow committed data);
//!   undecodable batches are kept as they are too.
//!
//! Progress ("cleaned up to") is kept in memory only: after a restart the first pass treats
//! everything as dirty and cleans once more, which is harmless.

use crate::Broker;
use crate::topic_config;
use bytes::{Bytes, BytesMut};
use kafka_protocol::records::RecordSet;
use parking_lot::Mutex;
use shale_protocol::batch;
use shale_protocol::records;
use shale_stream::{StreamError, StreamId, StreamRecord};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Most range bytes one partition's pass reads (and holds in memory).
pub(crate) const MAX_PASS_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes per read while loading the window.
const READ_CHUNK: usize = 1024 * 1024;

/// Per-node cleaner progress: stream id -> offset up to which the last pass cleaned.
#[derive(Default)]
pub(crate) struct CleanerState {
    cleaned: Mutex<HashMap<StreamId, u64>>,
}

/// What a cleaner pass did, for tests and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanerStats {
    /// Partitions whose window was rewritten.
    pub partitions_cleaned: usize,
    /// Records removed (superseded or expired tombstones).
    pub records_removed: usize,
    /// Range bytes read.
    pub bytes_read: u64,
}

/// Effective compaction settings of one partition.
struct Policy {
    /// How far one stored batch may inflate when decoded (see `topic_config::decompression_cap`).
    decompression_cap: usize,
    delete_retention_ms: i64,
    min_lag_ms: i64,
    max_lag_ms: i64,
    min_dirty_ratio: f64,
    /// `segment.ms`: a last range whose newest data is older than this counts as rolled.
    segment_ms: i64,
}

pub(crate) async fn run(broker: Arc<Broker>) {
    let mut stop = broker.shutdown_signal();
    let period = broker.config.log_cleaner_backoff;
    if period.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        clean_once(&broker, false).await;
    }
}

impl Broker {
    /// Runs one log-cleaner pass now over every compacted partition this node owns, ignoring
    /// `min.cleanable.dirty.ratio` (tests, admin tools).
    pub async fn compact_now(&self) -> CleanerStats {
        clean_once(self, true).await
    }
}

async fn clean_once(broker: &Broker, force: bool) -> CleanerStats {
    let me = broker.config.node_id as u64;
    let defaults = &broker.config.topic_defaults;
    let work: Vec<(String, StreamId, Policy)> = broker.meta.read(|s| {
        s.topics
            .values()
            .filter(|t| is_compacted(&t.configs, defaults))
            .flat_map(|t| {
                let i = |name| topic_config::effective_i64(name, &t.configs, defaults);
                let ratio = topic_config::lookup("min.cleanable.dirty.ratio")
                    .map(|d| topic_config::effective(d, &t.configs, defaults).value)
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.5);
                let cap = topic_config::decompression_cap(&t.configs, defaults);
                let (del, min, max, segment) = (
                    i("delete.retention.ms"),
                    i("min.compaction.lag.ms"),
                    i("max.compaction.lag.ms"),
                    i("segment.ms"),
                );
                t.partitions
                    .iter()
                    .filter(|p| p.owner == me)
                    .map(move |p| {
                        let policy = Policy {
                            delete_retention_ms: del,
                            min_lag_ms: min,
                            max_lag_ms: max,
                            min_dirty_ratio: ratio,
                            decompression_cap: cap,
                            segment_ms: segment,
                        };
                        (t.name.clone(), p.stream_id, policy)
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    });
    let mut stats = CleanerStats::default();
    for (topic, stream_id, policy) in work {
        if broker.is_shutting_down() {
            break;
        }
        match clean_partition(broker, stream_id, &policy, force).await {
            Ok(Some((removed, read))) => {
                stats.bytes_read += read;
                if removed > 0 {
                    stats.partitions_cleaned += 1;
                    stats.records_removed += removed;
                    tracing::info!(topic, stream_id, removed, bytes = read, "log cleaned");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(topic, stream_id, error = %e, "log cleaning failed"),
        }
    }
    stats
}

/// Cleans one partition's window. Returns (records removed, bytes read), None when skipped.
async fn clean_partition(
    broker: &Broker,
    stream_id: StreamId,
    policy: &Policy,
    force: bool,
) -> Result<Option<(usize, u64)>, StreamError> {
    let stream = match broker.open_stream(stream_id).await {
        Ok(stream) => stream,
        // Its topic was deleted since the pass listed it: nothing to clean, and the failed
        // open left it deleted.
        Err(StreamError::Catalog(shale_stream::CatalogError::UnknownStream(_))) => return Ok(None),
        Err(e) => return Err(e),
    };
    let start = stream.start_offset();
    let now = crate::now_ms();
    let ranges: Vec<_> = broker
        .streams
        .live_ranges(stream_id)
        .into_iter()
        .filter(|l| l.range.end_offset > start)
        .collect();
    // The window: whole ranges, none with data newer than the min lag, and the last one only
    // once it has "rolled" (its newest data is older than segment.ms; -1 is unknown).
    let min_lag_cutoff = now.saturating_sub(policy.min_lag_ms.max(0));
    let tail_rolled = ranges.last().is_some_and(|l| {
        l.range.max_timestamp >= 0
            && l.range.max_timestamp < now.saturating_sub(policy.segment_ms.max(0))
    });
    let take = if tail_rolled {
        ranges.len()
    } else {
        ranges.len().saturating_sub(1)
    };
    let mut window_end = None;
    let mut bytes = 0u64;
    let cleaned = broker
        .cleaner
        .cleaned
        .lock()
        .get(&stream_id)
        .copied()
        .unwrap_or(0);
    let (mut dirty_bytes, mut oldest_dirty) = (0u64, i64::MAX);
    for l in ranges.iter().take(take) {
        let r = &l.range;
        if r.max_timestamp > min_lag_cutoff {
            break;
        }
        if window_end.is_some() && bytes + u64::from(r.length) > MAX_PASS_BYTES {
            break;
        }
        bytes += u64::from(r.length);
        if r.end_offset > cleaned {
            dirty_bytes += u64::from(r.length);
            if r.max_timestamp >= 0 {
                oldest_dirty = oldest_dirty.min(r.max_timestamp);
            }
        }
        window_end = Some(r.end_offset);
    }
    let (Some(first), Some(end)) = (ranges.first(), window_end) else {
        return Ok(None);
    };
    if dirty_bytes == 0 {
        return Ok(None);
    }
    let ratio = dirty_bytes as f64 / bytes.max(1) as f64;
    let overdue = oldest_dirty != i64::MAX && now.saturating_sub(oldest_dirty) > policy.max_lag_ms;
    if !force && ratio < policy.min_dirty_ratio && !overdue {
        return Ok(None);
    }
    let window_start = first.range.start_offset;

    // Load the window (entries below the start offset are logically deleted: left out).
    let mut entries: Vec<StreamRecord> = Vec::new();
    let mut pos = start.max(window_start);
    while pos < end {
        let got = stream.read(pos, READ_CHUNK).await?;
        let Some(last) = got.last().map(|e| e.end_offset()) else {
            break;
        };
        entries.extend(got.into_iter().filter(|e| e.base_offset < end));
        if last <= pos {
            break;
        }
        pos = last;
    }
    let read: u64 = entries.iter().map(|e| e.payload.len() as u64).sum();
    // Decode once; keys map to their last offset in the window.
    let decoded: Vec<Option<Vec<RecordSet>>> = entries
        .iter()
        .map(|e| decode_entry(e, policy.decompression_cap))
        .collect();
    let mut latest: HashMap<Bytes, i64> = HashMap::new();
    let guard = TxnGuard::of_window(&entries, policy.decompression_cap);
    for sets in decoded.iter().flatten() {
        for set in sets {
            for r in &set.records {
                if r.control || r.transactional {
                    continue;
                }
                if let Some(k) = &r.key {
                    latest.insert(k.clone(), r.offset);
                }
            }
        }
    }
    let tombstone_cutoff = now.saturating_sub(policy.delete_retention_ms.max(0));
    let mut out: Vec<StreamRecord> = Vec::with_capacity(entries.len());
    let mut removed = 0usize;
    for (entry, sets) in entries.into_iter().zip(decoded) {
        // Undecodable, control and transactional entries are kept as they are.
        if sets.is_none() {
            out.push(entry);
            continue;
        }
        match rewrite_entry(
            &entry,
            &latest,
            &guard,
            tombstone_cutoff,
            policy.decompression_cap,
        ) {
            Ok(Rewritten::Unchanged) => out.push(entry),
            Ok(Rewritten::Dropped(n)) => removed += n,
            Ok(Rewritten::Smaller(e, n)) => {
                removed += n;
                out.push(e);
            }
            Err(e) => {
                tracing::warn!(stream_id, offset = entry.base_offset, error = %e,
                    "cannot re-encode batch; kept as is");
                out.push(entry);
            }
        }
    }
    if removed > 0 {
        broker
            .streams
            .rewrite_range(stream_id, window_start, end, out)
            .await?;
    }
    broker.cleaner.cleaned.lock().insert(stream_id, end);
    Ok(Some((removed, read)))
}

/// All batches of an entry, or None when any of them cannot be decoded (kept as is).
fn decode_entry(e: &StreamRecord, cap: usize) -> Option<Vec<RecordSet>> {
    let mut buf = e.payload.clone();
    let mut sets = Vec::new();
    for (h, range) in batch::headers(&e.payload) {
        let one = buf.split_to(range.len());
        // Control/transactional batches are never touched; no need to decode them fully.
        if h.is_control() || h.is_transactional() {
            return None;
        }
        match records::decode_batch_capped(&one, cap) {
            Ok(set) => sets.push(set),
            Err(err) => {
                tracing::debug!(offset = e.base_offset, error = %err, "undecodable batch");
                return None;
            }
        }
    }
    if !buf.is_empty() || sets.is_empty() {
        // A torn tail or no batch at all: not something to rewrite.
        return None;
    }
    Some(sets)
}

enum Rewritten {
    Unchanged,
    /// Every record removed: the entry disappears (an offset gap).
    Dropped(usize),
    /// Re-encoded with fewer records.
    Smaller(StreamRecord, usize),
}

/// What the cleaner must not remove because transactions and idempotent producers rely on
/// it (transactional batches themselves are never rewritten):
/// - records of keys a transactional batch in the window also wrote: a plain record or
///   tombstone there may be what supersedes (or is superseded by) the transactional one,
///   and removing it could bring an older transactional value back;
/// - each producer's last batch in the window, kept (empty when all its records go) so a
///   partition rebuilding its producer state from the stream still sees that producer's
///   last sequence (Kafka's cleaner keeps it the same way).
#[derive(Default)]
struct TxnGuard {
    keys: std::collections::HashSet<Bytes>,
    /// An undecodable transactional batch: protect every key.
    all: bool,
    /// Producer id -> base offset of its last batch in the window.
    last_batch: HashMap<i64, i64>,
}

impl TxnGuard {
    fn of_window(entries: &[StreamRecord], cap: usize) -> TxnGuard {
        let mut g = TxnGuard::default();
        for e in entries {
            for (h, range) in batch::headers(&e.payload) {
                if h.producer_id >= 0 && !h.is_control() {
                    g.last_batch.insert(h.producer_id, h.base_offset);
                }
                if !h.is_transactional() || h.is_control() {
                    continue;
                }
                match records::decode_batch_capped(&e.payload[range], cap) {
                    Ok(set) => g.keys.extend(set.records.into_iter().filter_map(|r| r.key)),
                    Err(_) => g.all = true,
                }
            }
        }
        g
    }

    fn protects_key(&self, key: &[u8]) -> bool {
        self.all || self.keys.contains(key)
    }

    fn protects_batch(&self, h: &batch::BatchHeader) -> bool {
        h.producer_id >= 0 && self.last_batch.get(&h.producer_id) == Some(&h.base_offset)
    }
}

fn rewrite_entry(
    entry: &StreamRecord,
    latest: &HashMap<Bytes, i64>,
    guard: &TxnGuard,
    tombstone_cutoff: i64,
    decompression_cap: usize,
) -> Result<Rewritten, String> {
    // Kept records are copied byte for byte into batches that keep their original header
    // (base offset, last offset delta, timestamps, producer fields, codec), as Kafka's
    // cleaner does: nothing about a surviving record changes, duplicate header keys included.
    let mut removed = 0usize;
    let mut payload = BytesMut::new();
    let (mut first, mut last, mut max_ts) = (i64::MAX, i64::MIN, -1i64);
    for (h, range) in batch::headers(&entry.payload) {
        let original = &entry.payload[range];
        let section = records::records_section_capped(original, &h, decompression_cap)
            .map_err(|e| e.to_string())?;
        let all = records::parse_records(&section, h.record_count).map_err(|e| e.to_string())?;
        let kept: Vec<_> = all
            .iter()
            .copied()
            .filter(|r| match r.key {
                // Keyless records cannot be compacted (produce rejects them); keep old ones.
                None => true,
                Some(k) if guard.protects_key(k) => true,
                Some(k) => {
                    latest.get(k) == Some(&(h.base_offset + i64::from(r.offset_delta)))
                        && (r.has_value || h.max_timestamp >= tombstone_cutoff)
                }
            })
            .collect();
        if kept.is_empty() && guard.protects_batch(&h) {
            // The producer's last batch stays as an empty batch, as Kafka's cleaner keeps
            // it: its header (producer id, epoch, sequence range) is producer state.
            removed += all.len();
            first = first.min(h.base_offset);
            last = last.max(h.last_offset());
            max_ts = max_ts.max(h.max_timestamp);
            let empty = records::rebuild_batch_as(original, &[], 0).map_err(|e| e.to_string())?;
            payload.extend_from_slice(&empty);
            continue;
        }
        removed += all.len() - kept.len();
        if kept.is_empty() {
            continue;
        }
        first = first.min(h.base_offset);
        last = last.max(h.last_offset());
        max_ts = max_ts.max(h.max_timestamp);
        if kept.len() == all.len() {
            payload.extend_from_slice(original);
        } else {
            let rebuilt = records::rebuild_batch(original, &h, &kept).map_err(|e| e.to_string())?;
            payload.extend_from_slice(&rebuilt);
        }
    }
    if removed == 0 {
        return Ok(Rewritten::Unchanged);
    }
    if payload.is_empty() {
        return Ok(Rewritten::Dropped(removed));
    }
    let (Ok(base_offset), Ok(count)) = (u64::try_from(first), u32::try_from(last - first + 1))
    else {
        return Err("offsets out of range".into());
    };
    Ok(Rewritten::Smaller(
        StreamRecord {
            base_offset,
            count,
            max_timestamp: max_ts,
            payload: payload.freeze(),
        },
        removed,
    ))
}

/// Offsets of records without a key in `records` (a produce request's batches), counted
/// across its batches. Reads the records in place (no record values are built), each batch
/// inflated at most to `cap`; a batch that cannot be read that way is an error, so nothing
/// unchecked reaches a compacted topic.
pub(crate) fn keyless_records(
    records: &[u8],
    cap: usize,
) -> Result<Vec<i32>, shale_protocol::batch::BatchError> {
    let mut out = Vec::new();
    let mut index = 0i32;
    for (h, range) in batch::headers(records) {
        let batch = records
            .get(range)
            .ok_or(shale_protocol::batch::BatchError::Corrupt(
                "batch beyond the records",
            ))?;
        let section = records::records_section_capped(batch, &h, cap)?;
        records::check_records(&section, h.record_count)?;
        for r in records::parse_records(&section, h.record_count)? {
            if r.key.is_none() {
                out.push(index);
            }
            index += 1;
        }
    }
    Ok(out)
}

/// Whether a topic's effective `cleanup.policy` includes `compact`.
pub(crate) fn is_compacted(
    configs: &BTreeMap<String, String>,
    defaults: &BTreeMap<String, String>,
) -> bool {
    topic_config::effective_str("cleanup.policy", configs, defaults)
        .split(',')
        .any(|p| p.trim() == "compact")
}
