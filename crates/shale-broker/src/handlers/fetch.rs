//! Fetch: whole batches from the offset asked for (the batch holding it first), bounded by
//! per-partition and response byte limits but always making progress, long-polling up to
//! `max_wait_ms` until `min_bytes` are available. Only durable data is visible.

use crate::Broker;
use crate::handlers::metadata::{check_leader_epoch, leader_epoch};
use crate::partitions::stream_error_code;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
use shale_stream::StreamRecord;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One requested partition after a read: its response fields (records not yet set) and the
/// entries read, before the response's byte budget is applied.
struct PartitionResult {
    data: PartitionData,
    entries: Vec<StreamRecord>,
}

pub async fn handle(broker: &Arc<Broker>, version: i16, req: FetchRequest) -> FetchResponse {
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let min_bytes = req.min_bytes.max(0) as usize;
    let max_bytes = if req.max_bytes <= 0 {
        i32::MAX as usize
    } else {
        req.max_bytes as usize
    };
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
        let (responses, total, any_error) = read_pass(broker, version, &topics, max_bytes).await;
        let now = Instant::now();
        if total >= min_bytes || any_error || now >= deadline || broker.is_shutting_down() {
            return FetchResponse::default()
                .with_session_id(0)
                .with_responses(responses);
        }
        // Wait for the next WAL commit (new data somewhere) or the deadline.
        tokio::select! {
            _ = commits.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Partitions read at once by one fetch: catch-up reads wait on object storage, so they
/// overlap instead of adding up; bounded so one request cannot flood the store.
const CONCURRENT_PARTITION_READS: usize = 16;

async fn read_pass(
    broker: &Arc<Broker>,
    version: i16,
    topics: &[(
        Option<String>,
        &kafka_protocol::messages::fetch_request::FetchTopic,
    )],
    max_bytes: usize,
) -> (Vec<FetchableTopicResponse>, usize, bool) {
    // Read every partition (concurrently, results in request order), then apply the
    // response's byte budget in request order.
    let wanted: Vec<(
        Option<&str>,
        &kafka_protocol::messages::fetch_request::FetchPartition,
    )> = topics
        .iter()
        .flat_map(|(name, topic)| topic.partitions.iter().map(|p| (name.as_deref(), p)))
        .collect();
    // Futures built up front: a closure inside the stream type trips a higher-ranked
    // lifetime limitation of the compiler once the future must be Send.
    let futures: Vec<_> = wanted
        .into_iter()
        .map(|(name, p)| read_one(broker, name, p, max_bytes))
        .collect();
    let reads: Vec<PartitionResult> = futures::stream::iter(futures)
        .buffered(CONCURRENT_PARTITION_READS)
        .collect()
        .await;
    let mut reads = reads.into_iter();

    let mut total = 0usize;
    let mut any_error = false;
    let mut responses = Vec::with_capacity(topics.len());
    for (_, topic) in topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let Some(r) = reads.next() else { break };
            if r.data.error_code != 0 {
                any_error = true;
            }
            let limit = (p.partition_max_bytes.max(0) as usize).min(max_bytes - total);
            let (records, size) = take_entries(&r.entries, limit, total == 0);
            total += size;
            partitions.push(r.data.with_records(Some(records)));
        }
        let mut t = FetchableTopicResponse::default().with_partitions(partitions);
        if version >= 13 {
            t = t.with_topic_id(topic.topic_id);
        } else {
            t = t.with_topic(topic.topic.clone());
        }
        responses.push(t);
    }
    (responses, total, any_error)
}

/// The entries that fit `limit`; while the response is still empty its first entry is
/// taken whatever its size (KIP-74), so consumers always progress.
fn take_entries(entries: &[StreamRecord], limit: usize, first: bool) -> (Bytes, usize) {
    let mut size = 0;
    let mut take = 0;
    for e in entries {
        let fits = size + e.payload.len() <= limit;
        let progress = first && take == 0;
        if !(fits || progress) {
            break;
        }
        size += e.payload.len();
        take += 1;
    }
    let records = match &entries[..take] {
        [] => Bytes::new(),
        [one] => one.payload.clone(),
        many => {
            let mut buf = BytesMut::with_capacity(size);
            for e in many {
                buf.extend_from_slice(&e.payload);
            }
            buf.freeze()
        }
    };
    (records, size)
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
    }
}

async fn read_one(
    broker: &Arc<Broker>,
    name: Option<&str>,
    p: &kafka_protocol::messages::fetch_request::FetchPartition,
    max_bytes: usize,
) -> PartitionResult {
    match name {
        Some(name) => read_partition(broker, name, p, max_bytes).await,
        None => error_partition(p.partition, ResponseError::UnknownTopicId),
    }
}

/// Reads one partition from its fetch offset, up to its own limit and the response's.
async fn read_partition(
    broker: &Arc<Broker>,
    topic: &str,
    p: &kafka_protocol::messages::fetch_request::FetchPartition,
    max_bytes: usize,
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
    let data = PartitionData::default()
        .with_partition_index(p.partition)
        .with_high_watermark(hw)
        .with_last_stable_offset(hw)
        .with_log_start_offset(start)
        .with_preferred_read_replica(BrokerId(-1));
    if p.fetch_offset < start || p.fetch_offset > hw {
        return PartitionResult {
            data: data.with_error_code(ResponseError::OffsetOutOfRange.code()),
            entries: Vec::new(),
        };
    }
    if p.fetch_offset == hw {
        return PartitionResult {
            data,
            entries: Vec::new(),
        };
    }
    let limit = (p.partition_max_bytes.max(0) as usize)
        .min(max_bytes)
        .max(1);
    match stream.read(p.fetch_offset as u64, limit).await {
        Ok(entries) => PartitionResult { data, entries },
        Err(e) => {
            if !matches!(e, shale_stream::StreamError::OffsetOutOfRange { .. }) {
                tracing::warn!(topic, partition = p.partition, error = %e, "fetch read failed");
            }
            PartitionResult {
                data: data.with_error_code(stream_error_code(&e).code()),
                entries: Vec::new(),
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
        assert_eq!((records.len(), size), (500, 500));
    }

    #[test]
    fn later_partitions_only_add_whole_batches_that_fit() {
        assert_eq!(take_entries(&entries(&[500]), 100, false).1, 0);
        assert_eq!(take_entries(&entries(&[40, 40, 40]), 100, false).1, 80);
        assert_eq!(take_entries(&entries(&[40, 40, 40]), 100, true).1, 80);
        assert_eq!(take_entries(&[], 100, true).1, 0);
    }
}
