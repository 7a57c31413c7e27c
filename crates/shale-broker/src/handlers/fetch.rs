//! Fetch: whole batches from the offset asked for (the batch holding it first), bounded by
//! per-partition and response byte limits but always making progress, long-polling up to
//! `max_wait_ms` until `min_bytes` are available. Only durable data is visible. Whether a
//! principal may read a partition from where it asks (READ, and the replay window of
//! `authz::replay`) is decided by the gate before a request gets here.

use crate::Broker;
use crate::handlers::metadata::{check_leader_epoch, leader_epoch};
use crate::partitions::stream_error_code;
use bytes::Bytes;
use futures::StreamExt;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId};
use kafka_protocol::protocol::StrBytes;
use shale_stream::StreamRecord;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One requested partition after a read: its response fields (records not yet set) and the
/// entries read, before the response's byte budget is applied.
struct PartitionResult {
    data: PartitionData,
    entries: Vec<StreamRecord>,
    /// Not read because the response budget was spent (or the partition limit is 0): the
    /// candidate for the one-batch progress read when the whole response came back empty.
    skipped: bool,
}

/// Kafka's `isolation_level`: 1 is read_committed.
const READ_COMMITTED: i8 = 1;

type Topics<'a> = [(
    Option<String>,
    &'a kafka_protocol::messages::fetch_request::FetchTopic,
)];

/// The response's record-byte limit: the client's `max_bytes`, capped by the broker's
/// `fetch.max.bytes`. As in Kafka, `max_bytes <= 0` is not "unlimited": it leaves room for
/// nothing but the first batch (KIP-74 progress).
fn response_limit(requested: i32, broker_cap: usize) -> usize {
    usize::try_from(requested).unwrap_or(0).min(broker_cap)
}

/// A fetch response whose records are kept apart, as the batches read (slices of cached
/// blocks and GET buffers): the connection writes them as they are, with no copy
/// (`shale_protocol::fetch_frame`). `records` follows the response's partition order.
pub struct FetchReply {
    pub response: FetchResponse,
    pub records: Vec<Vec<Bytes>>,
}

pub async fn handle(broker: &Arc<Broker>, version: i16, req: FetchRequest) -> FetchReply {
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let min_bytes = req.min_bytes.max(0) as usize;
    let max_bytes = response_limit(req.max_bytes, broker.config.fetch_max_bytes);
    // Resolve topic names once (v13+ addresses topics by id).
    let topics: Vec<(
        Option<String>,
        &kafka_protocol::messages::fetch_request::FetchTopic,
    )> = req
        .topics
        .iter()
        .map(|t| {
            let name = if version >= 13 {
                broker.topic_name_by_id(&t.topic_id)
            } else {
                Some(t.topic.0.to_string())
            };
            (name, t)
        })
        .collect();

    let mut commits = broker.streams.commit_notifications();
    loop {
        commits.borrow_and_update();
        let read_committed = req.isolation_level == READ_COMMITTED;
        let (responses, records, total, any_error) =
            read_pass(broker, version, &topics, max_bytes, read_committed).await;
        let now = Instant::now();
        if total >= min_bytes || any_error || now >= deadline || broker.is_shutting_down() {
            let mut responses = responses;
            let node_endpoints = if version >= 12 && any_error {
                add_leader_hints(broker, &topics, &mut responses)
            } else {
                Vec::new()
            };
            return FetchReply {
                response: FetchResponse::default()
                    .with_session_id(0)
                    .with_responses(responses)
                    .with_node_endpoints(if version >= 16 {
                        node_endpoints
                    } else {
                        Vec::new()
                    }),
                records,
            };
        }
        // Wait for the next WAL commit (new data somewhere) or the deadline.
        tokio::select! {
            _ = commits.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// KIP-951 (Fetch v12+ for the leader, v16+ for its endpoint): each NOT_LEADER_OR_FOLLOWER
/// partition names its current leader, so the consumer fetches there without waiting for
/// metadata. `topics` is the request's, in the order of `responses`.
fn add_leader_hints(
    broker: &Broker,
    topics: &Topics<'_>,
    responses: &mut [FetchableTopicResponse],
) -> Vec<NodeEndpoint> {
    let mut hints = crate::handlers::metadata::LeaderHints::default();
    for ((name, _), t) in topics.iter().zip(responses.iter_mut()) {
        let Some(name) = name else { continue };
        for p in &mut t.partitions {
            if p.error_code != ResponseError::NotLeaderOrFollower.code() {
                continue;
            }
            if let Some((id, epoch)) = hints.of(broker, name, p.partition_index) {
                p.current_leader = LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(id))
                    .with_leader_epoch(epoch);
            }
        }
    }
    hints
        .endpoints
        .into_iter()
        .map(|h| {
            NodeEndpoint::default()
                .with_node_id(BrokerId(h.id))
                .with_host(StrBytes::from_string(h.host))
                .with_port(i32::from(h.port))
                .with_rack(h.rack.map(StrBytes::from_string))
        })
        .collect()
}

/// Partitions read at once by one fetch: catch-up reads wait on object storage, so they
/// overlap instead of adding up; bounded so one request cannot flood the store.
const CONCURRENT_PARTITION_READS: usize = 16;

/// What is left of a response's byte budget for reads still to start. Each partition read
/// reserves its limit before it starts and gives back what it did not use, so the reads of
/// one fetch hold at most the budget (plus one batch each: a read returns at least one).
/// A single read takes at most a share of the budget (all of it for a one-partition fetch),
/// so the first partition of a big request cannot hold the whole budget while the reads
/// running beside it find nothing left.
struct Budget {
    left: parking_lot::Mutex<usize>,
    share: usize,
}

/// The smallest share worth a read of its own.
const MIN_SHARE: usize = 1 << 20;

impl Budget {
    fn new(total: usize, partitions: usize) -> Budget {
        let concurrent = partitions.clamp(1, CONCURRENT_PARTITION_READS);
        Budget {
            left: parking_lot::Mutex::new(total),
            share: (total / concurrent).max(MIN_SHARE),
        }
    }

    fn reserve(&self, want: usize) -> usize {
        let mut left = self.left.lock();
        let got = want.min(self.share).min(*left);
        *left -= got;
        got
    }

    fn give_back(&self, bytes: usize) {
        let mut left = self.left.lock();
        *left = left.saturating_add(bytes);
    }

    /// Settles a read that used `used` of its `reserved` bytes: gives back the rest, or
    /// charges the overshoot (a read returns at least one whole batch), so reads after it
    /// find the budget spent instead of each adding a batch beyond it.
    fn settle(&self, reserved: usize, used: usize) {
        let mut left = self.left.lock();
        if used <= reserved {
            *left = left.saturating_add(reserved - used);
        } else {
            *left = left.saturating_sub(used - reserved);
        }
    }
}

async fn read_pass(
    broker: &Arc<Broker>,
    version: i16,
    topics: &Topics<'_>,
    max_bytes: usize,
    read_committed: bool,
) -> (Vec<FetchableTopicResponse>, Vec<Vec<Bytes>>, usize, bool) {
    // Read every partition (concurrently, results in request order), then apply the
    // response's byte budget in request order.
    let wanted: Vec<(
        Option<&str>,
        &kafka_protocol::messages::fetch_request::FetchPartition,
    )> = topics
        .iter()
        .flat_map(|(name, topic)| topic.partitions.iter().map(|p| (name.as_deref(), p)))
        .collect();
    let budget = Budget::new(max_bytes, wanted.len());
    // Futures built up front: a closure inside the stream type trips a higher-ranked
    // lifetime limitation of the compiler once the future must be Send.
    let futures: Vec<_> = wanted
        .iter()
        .map(|&(name, p)| read_one(broker, name, p, Some(&budget), read_committed))
        .collect();
    let mut reads: Vec<PartitionResult> = futures::stream::iter(futures)
        .buffered(CONCURRENT_PARTITION_READS)
        .collect()
        .await;

    // KIP-74: a response that would come back empty while data waits carries the first
    // waiting partition's first batch, whatever the limits, so consumers always progress.
    let nothing_read = reads.iter().all(|r| r.entries.is_empty());
    if nothing_read
        && let Some(i) = reads
            .iter()
            .position(|r| r.skipped && r.data.error_code == 0)
        && let Some(&(name, p)) = wanted.get(i)
    {
        reads[i] = read_one(broker, name, p, None, read_committed).await;
    }

    let mut reads = reads.into_iter();
    let mut total = 0usize;
    let mut any_error = false;
    let mut responses = Vec::with_capacity(topics.len());
    let mut records_out = Vec::with_capacity(wanted.len());
    for (_, topic) in topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let Some(r) = reads.next() else { break };
            if r.data.error_code != 0 {
                any_error = true;
            }
            let limit = partition_limit(p.partition_max_bytes).min(max_bytes.saturating_sub(total));
            let (records, size) = take_entries(&r.entries, limit, total == 0);
            total = total.saturating_add(size);
            records_out.push(records);
            partitions.push(r.data.with_records(None));
        }
        let mut t = FetchableTopicResponse::default().with_partitions(partitions);
        if version >= 13 {
            t = t.with_topic_id(topic.topic_id);
        } else {
            t = t.with_topic(topic.topic.clone());
        }
        responses.push(t);
    }
    (responses, records_out, total, any_error)
}

/// A partition's own limit; a negative `partition_max_bytes` is 0, not unlimited.
fn partition_limit(requested: i32) -> usize {
    usize::try_from(requested).unwrap_or(0)
}

/// The entries that fit `limit`; while the response is still empty its first entry is
/// taken whatever its size (KIP-74), so consumers always progress.
fn take_entries(entries: &[StreamRecord], limit: usize, first: bool) -> (Vec<Bytes>, usize) {
    let mut size = 0usize;
    let mut taken = Vec::new();
    for e in entries {
        let fits = size.saturating_add(e.payload.len()) <= limit;
        let progress = first && taken.is_empty();
        if !(fits || progress) {
            break;
        }
        size += e.payload.len();
        taken.push(e.payload.clone());
    }
    (taken, size)
}

fn error_partition(index: i32, code: ResponseError) -> PartitionResult {
    PartitionResult {
        data: PartitionData::default()
            .with_partition_index(index)
            .with_error_code(code.code())
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1),
        entries: Vec::new(),
        skipped: false,
    }
}

/// Reads one partition within what it can reserve of `budget`; `None` is the progress read
/// of KIP-74 (one batch, whatever its size).
async fn read_one(
    broker: &Arc<Broker>,
    name: Option<&str>,
    p: &kafka_protocol::messages::fetch_request::FetchPartition,
    budget: Option<&Budget>,
    read_committed: bool,
) -> PartitionResult {
    match name {
        Some(name) => read_partition(broker, name, p, budget, read_committed).await,
        None => error_partition(p.partition, ResponseError::UnknownTopicId),
    }
}

/// Reads one partition from its fetch offset, up to its own limit and what is left of the
/// response's. Entries at or above the high watermark reported are never returned (a commit
/// may land between reading the watermark and reading the data); for read_committed, none
/// at or above the last stable offset, and the aborted transactions the entries overlap are
/// listed so the consumer drops their records.
async fn read_partition(
    broker: &Arc<Broker>,
    topic: &str,
    p: &kafka_protocol::messages::fetch_request::FetchPartition,
    budget: Option<&Budget>,
    read_committed: bool,
) -> PartitionResult {
    let part = match broker.partition(topic, p.partition).await {
        Ok(part) => part,
        Err(code) => return error_partition(p.partition, code),
    };
    let stream = part.stream;
    let epoch = leader_epoch(stream.epoch());
    if let Err(code) = check_leader_epoch(p.current_leader_epoch, epoch) {
        return error_partition(p.partition, code);
    }
    let hw = stream.end_offset() as i64;
    let start = stream.start_offset() as i64;
    let lso = part.owned.producers.lock().last_stable_offset(hw, start);
    let upper = if read_committed { lso } else { hw };
    let data = PartitionData::default()
        .with_partition_index(p.partition)
        .with_high_watermark(hw)
        .with_last_stable_offset(lso)
        .with_log_start_offset(start)
        .with_preferred_read_replica(BrokerId(-1))
        .with_aborted_transactions(read_committed.then(Vec::new));
    if p.fetch_offset < start || p.fetch_offset > hw {
        return PartitionResult {
            data: data.with_error_code(ResponseError::OffsetOutOfRange.code()),
            entries: Vec::new(),
            skipped: false,
        };
    }
    if p.fetch_offset >= upper {
        return PartitionResult {
            data,
            entries: Vec::new(),
            skipped: false,
        };
    }
    let limit = match budget {
        Some(budget) => budget.reserve(partition_limit(p.partition_max_bytes)),
        // The progress read: exactly one entry.
        None => 1,
    };
    if limit == 0 {
        return PartitionResult {
            data,
            entries: Vec::new(),
            skipped: true,
        };
    }
    match stream.read(p.fetch_offset as u64, limit).await {
        Ok(mut entries) => {
            entries.retain(|e| (e.base_offset as i64) < upper);
            if budget.is_none() {
                entries.truncate(1);
            }
            let used: usize = entries.iter().map(|e| e.payload.len()).sum();
            if let Some(budget) = budget {
                budget.settle(limit, used);
            }
            let data = match entries.last() {
                Some(last) if read_committed => {
                    let aborted = part
                        .owned
                        .producers
                        .lock()
                        .aborted_between(p.fetch_offset, last.end_offset() as i64);
                    data.with_aborted_transactions(Some(
                        aborted
                            .into_iter()
                            .map(|a| {
                                AbortedTransaction::default()
                                    .with_producer_id(ProducerId(a.producer_id))
                                    .with_first_offset(a.first_offset)
                            })
                            .collect(),
                    ))
                }
                _ => data,
            };
            PartitionResult {
                data,
                entries,
                skipped: false,
            }
        }
        Err(e) => {
            if let Some(budget) = budget {
                budget.give_back(limit);
            }
            if !matches!(e, shale_stream::StreamError::OffsetOutOfRange { .. }) {
                tracing::warn!(topic, partition = p.partition, error = %e, "fetch read failed");
            }
            PartitionResult {
                data: data.with_error_code(stream_error_code(&e).code()),
                entries: Vec::new(),
                skipped: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(sizes: &[usize]) -> Vec<StreamRecord> {
        let mut offset = 0;
        sizes
            .iter()
            .map(|&n| {
                let e = StreamRecord {
                    base_offset: offset,
                    count: 1,
                    max_timestamp: -1,
                    payload: Bytes::from(vec![0u8; n]),
                };
                offset += 1;
                e
            })
            .collect()
    }

    #[test]
    fn first_batch_of_a_response_is_returned_whatever_its_size() {
        // KIP-74: an empty response takes its first batch even above the limits.
        let (records, size) = take_entries(&entries(&[500, 10]), 100, true);
        assert_eq!((records.len(), size), (1, 500));
    }

    #[test]
    fn a_first_batch_over_the_whole_budget_does_not_wrap_the_arithmetic() {
        // The first batch exceeds the response limit; the next partition's limit is 0.
        let max_bytes = 100usize;
        let (_, total) = take_entries(&entries(&[500]), max_bytes, true);
        assert_eq!(max_bytes.saturating_sub(total), 0);
        assert_eq!(
            take_entries(&entries(&[1]), max_bytes.saturating_sub(total), false).1,
            0
        );
    }

    #[test]
    fn max_bytes_zero_or_negative_is_not_unlimited() {
        assert_eq!(response_limit(0, 55 << 20), 0);
        assert_eq!(response_limit(-1, 55 << 20), 0);
        assert_eq!(response_limit(i32::MAX, 55 << 20), 55 << 20);
        assert_eq!(partition_limit(-7), 0);
    }

    #[test]
    fn partition_reads_reserve_from_the_response_budget() {
        let budget = Budget::new(100, 1);
        assert_eq!(budget.reserve(60), 60);
        assert_eq!(budget.reserve(60), 40);
        assert_eq!(budget.reserve(60), 0);
        budget.give_back(25);
        assert_eq!(budget.reserve(60), 25);
    }

    #[test]
    fn a_read_that_overshoots_its_reservation_spends_the_budget_for_the_reads_after_it() {
        // partition_max_bytes = 1: each read reserves 1 byte and returns a whole batch.
        let budget = Budget::new(1000, 1);
        assert_eq!(budget.reserve(1), 1);
        budget.settle(1, 600);
        assert_eq!(budget.reserve(1), 1);
        budget.settle(1, 600);
        assert_eq!(
            budget.reserve(1),
            0,
            "the budget is spent: later partitions are skipped"
        );
    }

    #[test]
    fn concurrent_reads_of_a_big_fetch_each_take_a_share() {
        let mb = 1 << 20;
        let budget = Budget::new(64 * mb, 1000);
        assert_eq!(budget.reserve(usize::MAX), 4 * mb);
        // A one-partition fetch may use the whole budget.
        assert_eq!(Budget::new(64 * mb, 1).reserve(usize::MAX), 64 * mb);
        // Never below the minimum share, never above what is left.
        assert_eq!(Budget::new(2 * mb, 16).reserve(usize::MAX), mb);
        assert_eq!(Budget::new(100, 16).reserve(usize::MAX), 100);
    }

    #[test]
    fn later_partitions_only_add_whole_batches_that_fit() {
        assert_eq!(take_entries(&entries(&[500]), 100, false).1, 0);
        assert_eq!(take_entries(&entries(&[40, 40, 40]), 100, false).1, 80);
        assert_eq!(take_entries(&entries(&[40, 40, 40]), 100, true).1, 80);
        assert_eq!(take_entries(&[], 100, true).1, 0);
    }
}
