//! ListOffsets, DeleteRecords and OffsetForLeaderEpoch.

use crate::Broker;
use crate::handlers::metadata::{check_leader_epoch, leader_epoch};
use crate::partitions::stream_error_code;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};
use shale_protocol::records;
use shale_stream::Stream;
use std::sync::Arc;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

pub async fn list_offsets(
    broker: &Arc<Broker>,
    version: i16,
    req: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let resp = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1)
                .with_leader_epoch(-1);
            let resp = match broker.partition(&name, p.partition_index).await {
                Err(code) => resp.with_error_code(code.code()),
                Ok(part) => {
                    let epoch = leader_epoch(part.stream.epoch());
                    if let Err(code) = check_leader_epoch(p.current_leader_epoch, epoch) {
                        resp.with_error_code(code.code())
                    } else {
                        let cap = crate::topic_config::decompression_cap(
                            &part.topic_configs,
                            &broker.config.topic_defaults,
                        );
                        // Kafka: read_committed consumers see the log up to the last stable
                        // offset, so "latest" is the LSO and look-ups stop below it.
                        let hw = part.stream.end_offset() as i64;
                        let fetchable = if req.isolation_level == 1 {
                            part.owned
                                .producers
                                .lock()
                                .last_stable_offset(hw, part.stream.start_offset() as i64)
                        } else {
                            hw
                        };
                        match lookup(&part.stream, p.timestamp, cap, fetchable).await {
                            Ok(Some((ts, offset))) => resp
                                .with_timestamp(ts)
                                .with_offset(offset)
                                .with_leader_epoch(if version >= 4 { epoch } else { -1 }),
                            Ok(None) => resp,
                            Err(code) => resp.with_error_code(code.code()),
                        }
                    }
                }
            };
            partitions.push(resp);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// (timestamp, offset) for a ListOffsets target; `None` when no record qualifies.
async fn lookup(
    stream: &Stream,
    target: i64,
    cap: usize,
    fetchable: i64,
) -> Result<Option<(i64, i64)>, ResponseError> {
    let found = match target {
        LATEST | LATEST_TIERED => return Ok(Some((-1, fetchable))),
        EARLIEST | EARLIEST_LOCAL => return Ok(Some((-1, stream.start_offset() as i64))),
        MAX_TIMESTAMP => {
            let Some((max_ts, base)) = stream
                .max_timestamp()
                .await
                .map_err(|e| stream_error_code(&e))?
            else {
                return Ok(None);
            };
            let records = batch_records(stream, base, cap).await?;
            Ok(records
                .into_iter()
                .find(|&(_, ts)| ts == max_ts)
                .map(|(o, ts)| (ts, o))
                .or(Some((max_ts, base as i64))))
        }
        ts if ts >= 0 => {
            let Some(base) = stream
                .find_by_timestamp(ts)
                .await
                .map_err(|e| stream_error_code(&e))?
            else {
                return Ok(None);
            };
            let records = batch_records(stream, base, cap).await?;
            Ok(records
                .into_iter()
                .find(|&(_, rts)| rts >= ts)
                .map(|(o, rts)| (rts, o)))
        }
        _ => Err(ResponseError::InvalidRequest),
    };
    // What a look-up finds at or above the last fetchable offset is not visible yet.
    found.map(|f| f.filter(|&(_, offset)| offset < fetchable))
}

/// (offset, timestamp) of each record of the batch starting at `base`, decompressing it: the
/// only place the broker looks inside a batch, and only for timestamp look-ups.
async fn batch_records(
    stream: &Stream,
    base: u64,
    cap: usize,
) -> Result<Vec<(i64, i64)>, ResponseError> {
    let entries = stream
        .read(base, 1)
        .await
        .map_err(|e| stream_error_code(&e))?;
    let Some(entry) = entries.into_iter().next() else {
        return Ok(Vec::new());
    };
    // Capped and count-checked, without building records: kafka-protocol's decoder alone
    // would inflate and reserve whatever a stored batch claims. LogAppendTime batches give
    // every record the batch's max timestamp (the append time the broker wrote there).
    records::record_timestamps(&entry.payload, cap).map_err(|e| {
        tracing::warn!(error = %e, base, "cannot decode stored batch for timestamp lookup");
        ResponseError::CorruptMessage
    })
}

pub async fn delete_records(
    broker: &Arc<Broker>,
    _version: i16,
    req: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let resp = DeleteRecordsPartitionResult::default()
                .with_partition_index(p.partition_index)
                .with_low_watermark(-1);
            let resp = match broker.partition(&name, p.partition_index).await {
                Err(code) => resp.with_error_code(code.code()),
                Ok(part) => {
                    let hw = part.stream.end_offset() as i64;
                    // -1 means "up to the high watermark".
                    let target = if p.offset == -1 { hw } else { p.offset };
                    if target < 0 || target > hw {
                        resp.with_error_code(ResponseError::OffsetOutOfRange.code())
                    } else {
                        match part.stream.trim(target as u64).await {
                            Ok(()) => resp.with_low_watermark(part.stream.start_offset() as i64),
                            Err(e) => resp.with_error_code(stream_error_code(&e).code()),
                        }
                    }
                }
            };
            partitions.push(resp);
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

/// The log never diverges (there are no follower copies to truncate: every acknowledged batch
/// is in shared storage), so the end offset of any epoch up to the current one is the high
/// watermark: a client position is never ahead of it, and never needs truncation.
pub async fn offset_for_leader_epoch(
    broker: &Arc<Broker>,
    _version: i16,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.topic.0.to_string();
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let resp = EpochEndOffset::default()
                .with_partition(p.partition)
                .with_leader_epoch(-1)
                .with_end_offset(-1);
            let resp = match broker.partition(&name, p.partition).await {
                Err(code) => resp.with_error_code(code.code()),
                Ok(part) => {
                    let epoch = leader_epoch(part.stream.epoch());
                    if let Err(code) = check_leader_epoch(p.current_leader_epoch, epoch) {
                        resp.with_error_code(code.code())
                    } else if p.leader_epoch > epoch {
                        resp
                    } else {
                        resp.with_leader_epoch(p.leader_epoch)
                            .with_end_offset(part.stream.end_offset() as i64)
                    }
                }
            };
            partitions.push(resp);
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
