//! Produce: validate batches (CRC, size, magic), assign offsets by patching the header,
//! hand them to the WAL, and answer once they are durable (acks=1 and acks=all alike: an
//! ack always means "in object storage and committed in metadata").

use crate::Broker;
use crate::dispatch::Started;
use crate::handlers::metadata::leader_epoch;
use crate::partitions::stream_error_code;
use crate::topic_config;
use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use shale_protocol::batch::{self, BatchError};
use shale_stream::StreamError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

type Durable = oneshot::Receiver<Result<(), StreamError>>;

/// A partition's outcome once its batches are in the WAL.
struct Appended {
    base_offset: i64,
    log_append_time: i64,
    log_start_offset: i64,
    durable: Vec<Durable>,
}

pub(crate) async fn start(broker: &Arc<Broker>, _version: i16, req: ProduceRequest) -> Started {
    let acks = req.acks;
    let mut results: Vec<(kafka_protocol::messages::TopicName, Vec<(i32, Result<Appended, (ResponseError, String)>)>)> =
        Vec::with_capacity(req.topic_data.len());
    for topic in req.topic_data {
        let name = topic.name.0.to_string();
        let mut parts = Vec::with_capacity(topic.partition_data.len());
        for p in topic.partition_data {
            let r = if !matches!(acks, -1..=1) {
                Err((ResponseError::InvalidRequiredAcks, String::new()))
            } else if req.transactional_id.is_some() {
                Err((
                    ResponseError::TransactionalIdAuthorizationFailed,
                    "transactions are not supported yet".into(),
                ))
            } else {
                append_partition(broker, &name, p.index, p.records).await
            };
            parts.push((p.index, r));
        }
        results.push((topic.name, parts));
    }
    if acks == 0 {
        // No response at all, as Kafka does; durability failures are only logged.
        return Started::Done(None);
    }
    let timeout = Duration::from_millis(req.timeout_ms.max(0) as u64);
    Started::Later(Box::pin(async move {
        let mut responses = Vec::with_capacity(results.len());
        for (name, parts) in results {
            let mut partition_responses = Vec::with_capacity(parts.len());
            for (index, r) in parts {
                let resp = PartitionProduceResponse::default().with_index(index);
                let resp = match r {
                    Ok(a) => match wait_durable(a.durable, timeout).await {
                        Ok(()) => resp
                            .with_base_offset(a.base_offset)
                            .with_log_append_time_ms(a.log_append_time)
                            .with_log_start_offset(a.log_start_offset),
                        Err(code) => resp.with_error_code(code.code()).with_base_offset(-1),
                    },
                    Err((code, msg)) => resp
                        .with_error_code(code.code())
                        .with_base_offset(-1)
                        .with_error_message((!msg.is_empty()).then(|| StrBytes::from_string(msg))),
                };
                partition_responses.push(resp);
            }
            responses.push(
                TopicProduceResponse::default()
                    .with_name(name)
                    .with_partition_responses(partition_responses),
            );
        }
        Some(ResponseKind::Produce(
            ProduceResponse::default().with_responses(responses),
        ))
    }))
}

async fn wait_durable(durable: Vec<Durable>, timeout: Duration) -> Result<(), ResponseError> {
    let all = async {
        for d in durable {
            match d.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "append failed before becoming durable");
                    return Err(stream_error_code(&e));
                }
                Err(_) => return Err(ResponseError::NotLeaderOrFollower),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, all).await {
        Ok(r) => r,
        Err(_) => Err(ResponseError::RequestTimedOut),
    }
}

fn batch_error(e: BatchError) -> (ResponseError, String) {
    let code = match e {
        BatchError::Corrupt(_) => ResponseError::CorruptMessage,
        BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
        BatchError::Invalid(_) => ResponseError::InvalidRecord,
    };
    (code, e.to_string())
}

async fn append_partition(
    broker: &Broker,
    topic: &str,
    index: i32,
    records: Option<Bytes>,
) -> Result<Appended, (ResponseError, String)> {
    let part = broker
        .partition(topic, index)
        .await
        .map_err(|c| (c, String::new()))?;
    let Some(records) = records else {
        return Err((ResponseError::CorruptMessage, "no records".into()));
    };
    let batches = batch::validate_batches(&records).map_err(batch_error)?;
    let defaults = &broker.config.topic_defaults;
    let max_message_bytes = topic_config::effective_i64("max.message.bytes", &part.topic_configs, defaults);
    let log_append_time = topic_config::effective_str("message.timestamp.type", &part.topic_configs, defaults)
        == "LogAppendTime";
    for (h, range) in &batches {
        if range.len() as i64 > max_message_bytes {
            return Err((
                ResponseError::MessageTooLarge,
                format!("batch of {} bytes exceeds max.message.bytes {max_message_bytes}", range.len()),
            ));
        }
        if h.is_control() {
            return Err((ResponseError::InvalidRecord, "control batches are written by the broker".into()));
        }
        if h.is_transactional() {
            return Err((ResponseError::InvalidRecord, "transactions are not supported yet".into()));
        }
    }
    let now = if log_append_time { crate::now_ms() } else { -1 };
    let stream = part.stream;
    let epoch = leader_epoch(stream.epoch());
    let mut durable = Vec::with_capacity(batches.len());
    let mut base_offset = -1;
    for (h, range) in batches {
        // One copy of the batch so its header can be patched; the payload is never
        // decompressed or re-encoded.
        let mut buf = BytesMut::from(&records[range]);
        if log_append_time {
            batch::set_log_append_time(&mut buf, now);
        }
        let max_ts = if log_append_time { now } else { h.max_timestamp };
        let appended = stream.append(h.offset_count(), max_ts, |base| {
            batch::patch_offsets(&mut buf, base as i64, epoch);
            buf.freeze()
        });
        let handle = match appended {
            Ok(handle) => handle,
            Err(e) => {
                if matches!(e, StreamError::Fenced(_)) {
                    // Reopen under a new epoch on the next request; the client retries.
                    broker.close_stream(stream.id()).await;
                }
                return Err((stream_error_code(&e), e.to_string()));
            }
        };
        if base_offset < 0 {
            base_offset = handle.base_offset as i64;
        }
        durable.push(handle.durable);
    }
    Ok(Appended {
        base_offset,
        log_append_time: now,
        log_start_offset: stream.start_offset() as i64,
        durable,
    })
}
