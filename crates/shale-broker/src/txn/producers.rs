//! Per-partition producer state, as Kafka's ProducerStateManager keeps it: for each producer
//! id the epoch, the last few batches' sequence ranges (to answer a retried batch with its
//! original offsets instead of a second copy), the open transaction's first offset (the last
//! stable offset), and the aborted transactions read_committed consumers must skip.
//!
//! Everything here reads batch headers only: no per-record work. It is pure state; the
//! produce path holds it under the partition's append lock, so a check and the append it
//! admits are one step.

use shale_protocol::batch::BatchHeader;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Batches remembered per producer: the Java client keeps at most 5 in flight per
/// partition (`max.in.flight.requests.per.connection`), so a retry is always among them.
pub(crate) const CACHED_BATCHES: usize = 5;
/// Kafka's `RecordBatch.NO_PRODUCER_EPOCH`.
const NO_EPOCH: i16 = -1;

/// Sequence and offset range of one appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// What a partition knows of one producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first, at most [`CACHED_BATCHES`].
    pub batches: VecDeque<BatchMeta>,
    /// Max timestamp of the producer's last batch (or marker): expiry is measured from it.
    pub last_timestamp: i64,
    /// Epoch of the coordinator that wrote the producer's last marker.
    pub coordinator_epoch: i32,
    /// First offset of the producer's open transaction on this partition.
    pub txn_first_offset: Option<i64>,
}

impl ProducerEntry {
    fn new(epoch: i16) -> Self {
        Self {
            epoch,
            batches: VecDeque::new(),
            last_timestamp: -1,
            coordinator_epoch: -1,
            txn_first_offset: None,
        }
    }

    fn last_seq(&self) -> Option<i32> {
        self.batches.back().map(|b| b.last_seq)
    }

    fn duplicate_of(&self, epoch: i16, first_seq: i32, last_seq: i32) -> Option<BatchMeta> {
        (epoch == self.epoch)
            .then(|| {
                self.batches
                    .iter()
                    .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
                    .copied()
            })
            .flatten()
    }

    fn push(&mut self, b: BatchMeta) {
        if self.batches.len() == CACHED_BATCHES {
            self.batches.pop_front();
        }
        self.batches.push_back(b);
    }
}

/// A transaction that was aborted on this partition (Kafka's `AbortedTxn`): a read_committed
/// fetch that covers `[first_offset, last_offset]` is told to drop the producer's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// Offset of the abort marker.
    pub last_offset: i64,
}

/// Why a producer's batch is refused; each maps to one Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProducerError {
    #[error("{0}")]
    OutOfOrderSequence(String),
    #[error("{0}")]
    InvalidProducerEpoch(String),
    #[error("{0}")]
    InvalidTxnState(String),
    #[error("{0}")]
    CoordinatorFenced(String),
}

/// The outcome of checking a partition's batches.
#[derive(Debug)]
pub(crate) enum Admit {
    /// Append them, then [`ProducerStates::apply`] this.
    Append(Update),
    /// A retry of batches already appended: answer with the original offsets, append nothing.
    Duplicate(BatchMeta),
}

/// State changes of admitted batches, with offsets relative to the first batch's base offset
/// (known once appended).
#[derive(Debug, Default)]
pub(crate) struct Update {
    batches: Vec<PendingBatch>,
}

#[derive(Debug)]
struct PendingBatch {
    producer_id: i64,
    epoch: i16,
    first_seq: i32,
    last_seq: i32,
    /// Offsets from the base offset of the append.
    first_delta: i64,
    last_delta: i64,
    max_timestamp: i64,
    transactional: bool,
    /// Carries sequence numbers to remember (client batches, not coordinator ones).
    sequenced: bool,
}

/// Who wrote a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Client,
    Coordinator,
}

/// A transaction marker written to this partition.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Marker {
    pub producer_id: i64,
    pub epoch: i16,
    pub commit: bool,
    pub coordinator_epoch: i32,
    pub offset: i64,
    pub timestamp: i64,
}

/// One partition's producers and transactions.
#[derive(Debug, Default)]
pub(crate) struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
    /// Open transactions: first offset → producer id. The smallest bounds the last stable
    /// offset.
    ongoing: BTreeMap<i64, i64>,
    /// Transactions whose marker is appended but maybe not durable yet: first offset →
    /// marker offset. They hold the last stable offset back until the high watermark passes
    /// the marker, so read_committed never reads past a marker that could still be lost.
    completing: BTreeMap<i64, i64>,
    /// Aborted transactions in marker order (so by `last_offset`).
    aborted: Vec<AbortedTxn>,
}

/// The last sequence of a batch starting at `first` covering `delta + 1` records: sequences
/// wrap to 0 after `i32::MAX`, as Kafka's `DefaultRecordBatch.incrementSequence`.
fn last_sequence(first: i32, delta: i32) -> i32 {
    let sum = i64::from(first) + i64::from(delta.max(0));
    if sum > i64::from(i32::MAX) {
        (sum - i64::from(i32::MAX) - 1) as i32
    } else {
        sum as i32
    }
}

/// Kafka's `inSequence`: the next batch continues the last one.
fn in_sequence(last: i32, next: i32) -> bool {
    next == last.wrapping_add(1) || (next == 0 && last == i32::MAX)
}

impl ProducerStates {
    pub(crate) fn producer(&self, id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&id)
    }

    /// Nothing to remember: no producer, no aborted transaction.
    pub(crate) fn is_empty(&self) -> bool {
        self.producers.is_empty() && self.aborted.is_empty()
    }

    /// Puts back a producer read from a snapshot.
    pub(crate) fn restore_producer(&mut self, id: i64, entry: ProducerEntry) {
        if let Some(first) = entry.txn_first_offset {
            self.ongoing.insert(first, id);
        }
        self.producers.insert(id, entry);
    }

    /// Puts back an aborted transaction read from a snapshot (in marker order).
    pub(crate) fn restore_aborted(&mut self, a: AbortedTxn) {
        if self
            .aborted
            .last()
            .is_none_or(|l| l.last_offset <= a.last_offset)
        {
            self.aborted.push(a);
        }
    }

    pub(crate) fn producers(&self) -> impl Iterator<Item = (i64, &ProducerEntry)> {
        self.producers.iter().map(|(id, e)| (*id, e))
    }

    /// Checks a produce request's batches for one partition, in order, as Kafka's
    /// `ProducerAppendInfo` does: epoch, sequence continuity, duplicates and transaction
    /// state. Batches without a producer id pass unchecked.
    pub(crate) fn check(&self, batches: &[BatchHeader]) -> Result<Admit, ProducerError> {
        self.check_from(batches, Origin::Client)
    }

    /// [`Self::check`] for batches from `origin`: the group coordinator's transactional
    /// offset commits carry no sequence numbers, so only their epoch is checked (Kafka's
    /// `AppendOrigin.COORDINATOR`).
    pub(crate) fn check_from(
        &self,
        batches: &[BatchHeader],
        origin: Origin,
    ) -> Result<Admit, ProducerError> {
        let client = origin == Origin::Client;
        // Touched entries as they will be after the earlier batches of this request.
        let mut scratch: HashMap<i64, ProducerEntry> = HashMap::new();
        let mut update = Update::default();
        let mut delta = 0i64;
        for h in batches {
            let first_delta = delta;
            delta += i64::from(h.offset_count());
            if h.producer_id < 0 {
                continue;
            }
            let pid = h.producer_id;
            let current = scratch
                .get(&pid)
                .or_else(|| self.producers.get(&pid))
                .cloned();
            let first_seq = h.base_sequence;
            let last_seq = last_sequence(first_seq, h.last_offset_delta);
            if let Some(dup) = current
                .as_ref()
                .filter(|_| client)
                .and_then(|e| e.duplicate_of(h.producer_epoch, first_seq, last_seq))
            {
                // Kafka answers the retry of an appended batch with the original offsets.
                return Ok(Admit::Duplicate(dup));
            }
            let mut entry = current.unwrap_or_else(|| ProducerEntry::new(NO_EPOCH));
            check_epoch(&entry, pid, h.producer_epoch)?;
            if client {
                check_sequence(&entry, pid, h.producer_epoch, first_seq)?;
            }
            if h.producer_epoch != entry.epoch {
                entry.epoch = h.producer_epoch;
                entry.batches.clear();
            }
            match (h.is_transactional(), entry.txn_first_offset) {
                (false, Some(first)) => {
                    return Err(ProducerError::InvalidTxnState(format!(
                        "Expected transactional write from producer {pid} at offset {first}"
                    )));
                }
                (true, None) => entry.txn_first_offset = Some(first_delta),
                _ => {}
            }
            if client {
                entry.push(BatchMeta {
                    first_seq,
                    last_seq,
                    first_offset: first_delta,
                    last_offset: delta - 1,
                });
            }
            scratch.insert(pid, entry);
            update.batches.push(PendingBatch {
                producer_id: pid,
                epoch: h.producer_epoch,
                first_seq,
                last_seq,
                first_delta,
                last_delta: delta - 1,
                max_timestamp: h.max_timestamp,
                transactional: h.is_transactional(),
                sequenced: client,
            });
        }
        Ok(Admit::Append(update))
    }

    /// Records admitted batches once appended at `base_offset`.
    pub(crate) fn apply(&mut self, update: Update, base_offset: i64) {
        for b in update.batches {
            let entry = self
                .producers
                .entry(b.producer_id)
                .or_insert_with(|| ProducerEntry::new(b.epoch));
            if entry.epoch != b.epoch {
                entry.epoch = b.epoch;
                entry.batches.clear();
            }
            let first_offset = base_offset + b.first_delta;
            if b.sequenced {
                entry.push(BatchMeta {
                    first_seq: b.first_seq,
                    last_seq: b.last_seq,
                    first_offset,
                    last_offset: base_offset + b.last_delta,
                });
            }
            entry.last_timestamp = entry.last_timestamp.max(b.max_timestamp);
            if b.transactional && entry.txn_first_offset.is_none() {
                entry.txn_first_offset = Some(first_offset);
                self.ongoing.insert(first_offset, b.producer_id);
            }
        }
    }

    /// Replays a stored batch (stream open): no checks, the log is the truth.
    pub(crate) fn replay_batch(&mut self, h: &BatchHeader) {
        if h.producer_id < 0 || h.is_control() {
            return;
        }
        let update = Update {
            batches: vec![PendingBatch {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                first_seq: h.base_sequence,
                last_seq: last_sequence(h.base_sequence, h.last_offset_delta),
                first_delta: 0,
                last_delta: i64::from(h.last_offset_delta.max(0)),
                max_timestamp: h.max_timestamp,
                transactional: h.is_transactional(),
                sequenced: h.base_sequence >= 0,
            }],
        };
        self.apply(update, h.base_offset);
    }

    /// Checks a marker before it is appended (WriteTxnMarkers' rules).
    pub(crate) fn check_marker(&self, m: &Marker) -> Result<(), ProducerError> {
        if let Some(e) = self.producers.get(&m.producer_id) {
            if m.epoch < e.epoch {
                return Err(ProducerError::InvalidProducerEpoch(format!(
                    "marker epoch {} of producer {} is older than {}",
                    m.epoch, m.producer_id, e.epoch
                )));
            }
            if m.coordinator_epoch < e.coordinator_epoch {
                return Err(ProducerError::CoordinatorFenced(format!(
                    "marker from coordinator epoch {} of producer {}; {} wrote the last one",
                    m.coordinator_epoch, m.producer_id, e.coordinator_epoch
                )));
            }
        }
        Ok(())
    }

    /// Records a marker appended at `m.offset`: the producer's transaction here ends.
    /// `hw` (the high watermark now) prunes markers already durable, so the set of
    /// completing transactions stays small on partitions nobody fetches.
    pub(crate) fn apply_marker(&mut self, m: &Marker, hw: i64) {
        self.completing.retain(|_, marker| *marker >= hw);
        let entry = self
            .producers
            .entry(m.producer_id)
            .or_insert_with(|| ProducerEntry::new(m.epoch));
        if m.epoch != entry.epoch {
            // A bumped epoch (fencing, or KIP-890's epoch per transaction) restarts sequences.
            entry.epoch = m.epoch;
            entry.batches.clear();
        }
        entry.coordinator_epoch = m.coordinator_epoch;
        entry.last_timestamp = entry.last_timestamp.max(m.timestamp);
        if let Some(first) = entry.txn_first_offset.take() {
            self.ongoing.remove(&first);
            self.completing.insert(first, m.offset);
            if !m.commit {
                self.aborted.push(AbortedTxn {
                    producer_id: m.producer_id,
                    first_offset: first,
                    last_offset: m.offset,
                });
            }
        }
    }

    /// Kafka's last stable offset for a partition whose high watermark is `hw`: below every
    /// open transaction, and below any transaction whose marker is not durable yet; never
    /// below the log start (Kafka's `max(firstUnstableOffset, logStartOffset)`), so a
    /// transaction trimmed away by retention cannot hold it below readable data.
    pub(crate) fn last_stable_offset(&mut self, hw: i64, log_start: i64) -> i64 {
        self.completing.retain(|_, marker| *marker >= hw);
        let open = self.ongoing.keys().next().copied();
        let completing = self.completing.keys().next().copied();
        [Some(hw), open, completing]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(hw)
            .max(log_start.min(hw))
    }

    /// Forgets what the stream no longer holds below `log_start` when the state was not
    /// rebuilt from it (a snapshot older than the start, or a range skipped while
    /// scanning): transactions that began there may have ended there too, so they are
    /// closed (their later batches reopen them), and producers whose batches are all there
    /// become unknown (KIP-360: their next batch may start at any sequence).
    pub(crate) fn forget_below(&mut self, log_start: i64) {
        let stale: Vec<(i64, i64)> = self
            .ongoing
            .range(..log_start)
            .map(|(first, pid)| (*first, *pid))
            .collect();
        for (first, pid) in stale {
            self.ongoing.remove(&first);
            if let Some(e) = self.producers.get_mut(&pid) {
                e.txn_first_offset = None;
            }
        }
        self.producers.retain(|_, e| {
            e.txn_first_offset.is_some()
                || e.batches.back().is_some_and(|b| b.last_offset >= log_start)
        });
        self.completing.retain(|first, _| *first >= log_start);
        let gone = self.aborted.partition_point(|a| a.last_offset < log_start);
        self.aborted.drain(..gone);
    }

    /// Aborted transactions a read_committed fetch of `[from, to)` must be told about.
    pub(crate) fn aborted_between(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        // `aborted` is sorted by last_offset: skip those that end before `from`.
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted[start..]
            .iter()
            .filter(|a| a.first_offset < to)
            .copied()
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn aborted(&self) -> &[AbortedTxn] {
        &self.aborted
    }

    /// Forgets producers idle for longer than `expiration_ms` (`producer.id.expiration.ms`)
    /// with no open transaction, and aborted transactions wholly below the log start.
    pub(crate) fn expire(&mut self, now_ms: i64, expiration_ms: i64, log_start: i64) -> usize {
        let before = self.producers.len();
        let horizon = now_ms.saturating_sub(expiration_ms);
        self.producers
            .retain(|_, e| e.txn_first_offset.is_some() || e.last_timestamp >= horizon);
        let gone = self.aborted.partition_point(|a| a.last_offset < log_start);
        self.aborted.drain(..gone);
        before - self.producers.len()
    }
}

/// Kafka's `checkProducerEpoch`: an older epoch is a zombie producer.
fn check_epoch(entry: &ProducerEntry, pid: i64, epoch: i16) -> Result<(), ProducerError> {
    if entry.epoch != NO_EPOCH && epoch < entry.epoch {
        return Err(ProducerError::InvalidProducerEpoch(format!(
            "Epoch of producer {pid} at offset is {epoch}, which is smaller than the last seen epoch {}",
            entry.epoch
        )));
    }
    Ok(())
}

/// Kafka's `checkSequence`: a new epoch starts at sequence 0; within an epoch each batch
/// continues the last. A producer this partition does not know (new, or expired) may start
/// anywhere.
fn check_sequence(
    entry: &ProducerEntry,
    pid: i64,
    epoch: i16,
    first_seq: i32,
) -> Result<(), ProducerError> {
    if entry.epoch == NO_EPOCH {
        return Ok(());
    }
    if epoch != entry.epoch {
        if first_seq != 0 {
            return Err(ProducerError::OutOfOrderSequence(format!(
                "Invalid sequence number for new epoch of producer {pid}: {epoch} (request epoch), {first_seq} (seq. number), {} (current producer epoch)",
                entry.epoch
            )));
        }
        return Ok(());
    }
    // A known producer with no batch remembered at this epoch (its epoch was just bumped
    // by a marker) starts at 0, as Kafka's `inSequence(NO_SEQUENCE, seq)`.
    match entry.last_seq().or(Some(-1)) {
        Some(last) if !in_sequence(last, first_seq) => {
            Err(ProducerError::OutOfOrderSequence(format!(
                "Out of order sequence number for producer {pid} at offset: {first_seq} (incoming seq. number), {last} (current end sequence number)"
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(pid: i64, epoch: i16, seq: i32, records: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 1_000,
            max_timestamp: 1_000,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: records,
        }
    }

    fn txn(pid: i64, epoch: i16, seq: i32, records: i32) -> BatchHeader {
        let mut h = batch(pid, epoch, seq, records);
        h.attributes = 0x10;
        h
    }

    /// Checks and applies like the produce path, with offsets from `next`.
    fn append(
        s: &mut ProducerStates,
        next: &mut i64,
        h: &BatchHeader,
    ) -> Result<Option<BatchMeta>, ProducerError> {
        match s.check(std::slice::from_ref(h))? {
            Admit::Append(u) => {
                s.apply(u, *next);
                *next += i64::from(h.offset_count());
                Ok(None)
            }
            Admit::Duplicate(d) => Ok(Some(d)),
        }
    }

    fn marker(pid: i64, epoch: i16, commit: bool, offset: i64) -> Marker {
        Marker {
            producer_id: pid,
            epoch,
            commit,
            coordinator_epoch: 0,
            offset,
            timestamp: 2_000,
        }
    }

    #[test]
    fn a_retried_batch_is_answered_with_its_original_offsets() {
        let (mut s, mut next) = (ProducerStates::default(), 100);
        append(&mut s, &mut next, &batch(7, 0, 0, 3)).unwrap();
        append(&mut s, &mut next, &batch(7, 0, 3, 2)).unwrap();
        let dup = append(&mut s, &mut next, &batch(7, 0, 0, 3))
            .unwrap()
            .unwrap();
        assert_eq!((dup.first_offset, dup.last_offset), (100, 102));
        assert_eq!(next, 105, "nothing appended for the retry");
    }

    #[test]
    fn only_the_last_five_batches_are_recognised_as_duplicates() {
        let (mut s, mut next) = (ProducerStates::default(), 0);
        for seq in 0..6 {
            append(&mut s, &mut next, &batch(7, 0, seq, 1)).unwrap();
        }
        // The first batch fell out of the cache: its retry is now out of order.
        assert!(matches!(
            append(&mut s, &mut next, &batch(7, 0, 0, 1)),
            Err(ProducerError::OutOfOrderSequence(_))
        ));
        assert!(
            append(&mut s, &mut next, &batch(7, 0, 1, 1))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_gap_in_sequences_is_out_of_order() {
        let (mut s, mut next) = (ProducerStates::default(), 0);
        append(&mut s, &mut next, &batch(7, 0, 0, 2)).unwrap();
        assert!(matches!(
            append(&mut s, &mut next, &batch(7, 0, 3, 1)),
            Err(ProducerError::OutOfOrderSequence(_))
        ));
    }

    #[test]
    fn an_unknown_producer_may_start_at_any_sequence() {
        // As Kafka since KIP-360: the producer's state may have expired or been trimmed.
        let (mut s, mut next) = (ProducerStates::default(), 0);
        assert!(append(&mut s, &mut next, &batch(7, 3, 42, 1)).is_ok());
        assert!(append(&mut s, &mut next, &batch(7, 3, 43, 1)).is_ok());
    }

    #[test]
    fn an_older_epoch_is_refused_and_a_new_epoch_restarts_at_zero() {
        let (mut s, mut next) = (ProducerStates::default(), 0);
        append(&mut s, &mut next, &batch(7, 1, 0, 1)).unwrap();
        assert!(matches!(
            append(&mut s, &mut next, &batch(7, 0, 1, 1)),
            Err(ProducerError::InvalidProducerEpoch(_))
        ));
        assert!(matches!(
            append(&mut s, &mut next, &batch(7, 2, 5, 1)),
            Err(ProducerError::OutOfOrderSequence(_))
        ));
        append(&mut s, &mut next, &batch(7, 2, 0, 1)).unwrap();
        assert_eq!(s.producer(7).unwrap().epoch, 2);
    }

    #[test]
    fn sequences_wrap_after_i32_max() {
        let (mut s, mut next) = (ProducerStates::default(), 0);
        append(&mut s, &mut next, &batch(7, 0, i32::MAX - 1, 2)).unwrap();
        assert_eq!(s.producer(7).unwrap().last_seq(), Some(i32::MAX));
        append(&mut s, &mut next, &batch(7, 0, 0, 1)).unwrap();
    }

    #[test]
    fn batches_of_one_request_are_checked_in_order() {
        let s = ProducerStates::default();
        let (a, b) = (batch(7, 0, 0, 2), batch(7, 0, 2, 1));
        assert!(matches!(s.check(&[a, b]), Ok(Admit::Append(_))));
        let c = batch(7, 0, 4, 1);
        assert!(s.check(&[a, c]).is_err());
    }

    #[test]
    fn an_open_transaction_holds_the_last_stable_offset_until_its_marker_is_durable() {
        let (mut s, mut next) = (ProducerStates::default(), 10);
        append(&mut s, &mut next, &batch(1, 0, 0, 2)).unwrap();
        append(&mut s, &mut next, &txn(7, 0, 0, 3)).unwrap();
        assert_eq!(s.last_stable_offset(next, 0), 12);
        s.apply_marker(&marker(7, 0, true, next), 0);
        // Marker at 15 appended; the high watermark is still 15 (marker not durable).
        assert_eq!(s.last_stable_offset(15, 0), 12);
        assert_eq!(s.last_stable_offset(16, 0), 16);
        assert!(s.aborted().is_empty());
    }

    #[test]
    fn an_aborted_transaction_is_listed_for_fetches_that_cover_it() {
        let (mut s, mut next) = (ProducerStates::default(), 0);
        append(&mut s, &mut next, &txn(7, 0, 0, 3)).unwrap();
        s.apply_marker(&marker(7, 0, false, 3), 0);
        let a = AbortedTxn {
            producer_id: 7,
            first_offset: 0,
            last_offset: 3,
        };
        assert_eq!(s.aborted_between(0, 10), vec![a]);
        assert_eq!(s.aborted_between(3, 10), vec![a]);
        assert!(s.aborted_between(4, 10).is_empty());
        assert!(s.aborted_between(0, 0).is_empty());
    }

    #[test]
    fn a_plain_batch_inside_a_producers_open_transaction_is_refused() {
        let (mut s, mut next) = (ProducerStates::default(), 0);
        append(&mut s, &mut next, &txn(7, 0, 0, 1)).unwrap();
        assert!(matches!(
            append(&mut s, &mut next, &batch(7, 0, 1, 1)),
            Err(ProducerError::InvalidTxnState(_))
        ));
    }

    #[test]
    fn a_marker_from_an_older_epoch_or_coordinator_is_refused() {
        let (mut s, mut next) = (ProducerStates::default(), 0);
        append(&mut s, &mut next, &txn(7, 2, 0, 1)).unwrap();
        assert!(s.check_marker(&marker(7, 1, true, 1)).is_err());
        let mut m = marker(7, 3, false, 1);
        m.coordinator_epoch = 5;
        s.apply_marker(&m, 0);
        m.coordinator_epoch = 4;
        assert!(matches!(
            s.check_marker(&m),
            Err(ProducerError::CoordinatorFenced(_))
        ));
    }

    #[test]
    fn idle_producers_expire_but_not_while_their_transaction_is_open() {
        let (mut s, mut next) = (ProducerStates::default(), 0);
        append(&mut s, &mut next, &batch(1, 0, 0, 1)).unwrap();
        append(&mut s, &mut next, &txn(2, 0, 0, 1)).unwrap();
        assert_eq!(s.expire(1_000 + 86_400_001, 86_400_000, 0), 1);
        assert!(s.producer(1).is_none());
        assert!(s.producer(2).is_some());
    }

    #[test]
    fn a_transaction_trimmed_away_before_a_reload_does_not_hold_the_last_stable_offset() {
        // Snapshot at 10 with a transaction open since 2; retention then moved the start to
        // 20, past its (unknown) end: on reload it is forgotten, and its later batches
        // would open it again.
        let (mut s, mut next) = (ProducerStates::default(), 2);
        append(&mut s, &mut next, &txn(7, 0, 0, 1)).unwrap();
        append(&mut s, &mut next, &batch(8, 0, 0, 1)).unwrap();
        s.forget_below(20);
        assert_eq!(s.last_stable_offset(30, 20), 30);
        assert!(s.producer(7).is_none() && s.producer(8).is_none());
        // And the LSO is never below the log start, whatever is open.
        let (mut s, mut next) = (ProducerStates::default(), 2);
        append(&mut s, &mut next, &txn(7, 0, 0, 1)).unwrap();
        assert_eq!(s.last_stable_offset(30, 20), 20);
    }

    #[test]
    fn a_known_producer_at_a_fresh_epoch_starts_at_sequence_zero() {
        let (mut s, mut next) = (ProducerStates::default(), 0);
        append(&mut s, &mut next, &txn(7, 0, 0, 1)).unwrap();
        // An abort marker from a fencing coordinator bumps the epoch to 1.
        s.apply_marker(&marker(7, 1, false, next), 0);
        assert!(matches!(
            append(&mut s, &mut next, &batch(7, 1, 5, 1)),
            Err(ProducerError::OutOfOrderSequence(_))
        ));
        append(&mut s, &mut next, &batch(7, 1, 0, 1)).unwrap();
    }

    #[test]
    fn replaying_the_log_rebuilds_the_same_state() {
        let (mut live, mut next) = (ProducerStates::default(), 0);
        let mut stored = Vec::new();
        for mut h in [batch(1, 0, 0, 2), txn(2, 0, 0, 1), batch(1, 0, 2, 1)] {
            h.base_offset = next;
            append(&mut live, &mut next, &h).unwrap();
            stored.push(h);
        }
        let mut replayed = ProducerStates::default();
        for h in &stored {
            replayed.replay_batch(h);
        }
        assert_eq!(replayed.producers, live.producers);
        assert_eq!(replayed.ongoing, live.ongoing);
    }
}
