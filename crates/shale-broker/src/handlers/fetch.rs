//! Fetch: whole batches from the offset asked for (the batch holding it first), bounded by
//! per-partition and response byte limits but always making progress, long-polling up to
//! `max_wait_ms` until `min_bytes` are available. Only durable data is visible.

use crate::Broker;
use crate::handlers::metadata::{check_leader_epoch, leader_epoch};
use crate::partitions::stream_error_code;
use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Where one requested partition stands after a read pass.
struct PartitionResult {
    data: PartitionData,
    bytes: usize,
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

async fn read_pass(
    broker: &Arc<Broker>,
    version: i16,
    topics: &[(
        Option<String>,
        &kafka_protocol::messages::fetch_request::FetchTopic,
    )],
    max_bytes: usize,
) -> (Vec<FetchableTopicResponse>, usize, bool) {
    let mut total = 0usize;
    let mut any_error = false;
    let mut responses = Vec::with_capacity(topics.len());
    for (name, topic) in topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let r = match name {
                Some(name) => {
                    read_partition(broker, name, p, max_bytes.saturating_sub(total), total == 0)
                        .await
                }
                None => error_partition(p.partition, ResponseError::UnknownTopicId),
            };
            if r.data.error_code != 0 {
                any_error = true;
            }
            total += r.bytes;
            partitions.push(r.data);
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

fn error_partition(index: i32, code: ResponseError) -> PartitionResult {
    PartitionResult {
        data: PartitionData::default()
            .with_partition_index(index)
            .with_error_code(code.code())
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1)
            .with_records(Some(Bytes::new())),
        bytes: 0,
    }
}

async fn read_partition(
    broker: &Arc<Broker>,
    topic: &str,
    p: &kafka_protocol::messages::fetch_request::FetchPartition,
    remaining: usize,
    first: bool,
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
            data: data
                .with_error_code(ResponseError::OffsetOutOfRange.code())
                .with_records(Some(Bytes::new())),
            bytes: 0,
        };
    }
    // Once the response holds data, a partition only adds what fits; the first batch of the
    // response is returned whatever its size (KIP-74) so consumers always progress.
    let limit = (p.partition_max_bytes.max(0) as usize).min(remaining);
    if p.fetch_offset == hw || (limit == 0 && !first) {
        return PartitionResult {
            data: data.with_records(Some(Bytes::new())),
            bytes: 0,
        };
    }
    match stream.read(p.fetch_offset as u64, limit.max(1)).await {
        Ok(entries) => {
            // The stream returns at least one entry; beyond the first partition with data,
            // only entries that fit the limits are kept (Kafka's minOneMessage rule).
            let mut size = 0;
            let mut take = 0;
            for e in &entries {
                if take > 0 && size + e.payload.len() > limit {
                    break;
                }
                if !first && size + e.payload.len() > limit {
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
            PartitionResult {
                data: data.with_records(Some(records)),
                bytes: size,
            }
        }
        Err(e) => {
            if !matches!(e, shale_stream::StreamError::OffsetOutOfRange { .. }) {
                tracing::warn!(topic, partition = p.partition, error = %e, "fetch read failed");
            }
            PartitionResult {
                data: data
                    .with_error_code(stream_error_code(&e).code())
                    .with_records(Some(Bytes::new())),
                bytes: 0,
            }
        }
    }
}
