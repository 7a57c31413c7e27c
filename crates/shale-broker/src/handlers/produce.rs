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
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use shale_protocol::batch::{self, BatchError};
use shale_stream::StreamError;
use std::collections::HashMap;
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

/// Where one partition's records sit in the request frame.
enum Records {
    Missing,
    /// Byte range inside the frame: patched in place, no copy.
    InFrame(std::ops::Range<usize>),
    /// Not a slice of the frame (never expected from the codec): patched in a copy.
    Copied(BytesMut),
}

/// Starts a produce. `frame` is the request's frame: the records are slices of it, and once
/// the decoded request is dropped the frame is uniquely owned again, so batch headers are
/// patched in place and the batches go to the WAL without a copy.
pub(crate) async fn start(
    broker: &Arc<Broker>,
    _version: i16,
    req: ProduceRequest,
    frame: Bytes,
) -> Started {
    let acks = req.acks;
    let transactional = req.transactional_id.is_some();
    let timeout = Duration::from_millis(req.timeout_ms.max(0) as u64);
    let base = frame.as_ptr() as usize;
    let plan: Vec<(String, Vec<(i32, Records)>)> = req
        .topic_data
        .into_iter()
        .map(|t| {
            let parts = t
                .partition_data
                .into_iter()
                .map(|p| {
                    let records = match p.records {
                        None => Records::Missing,
                        Some(r) => {
                            let start = (r.as_ptr() as usize).wrapping_sub(base);
                            if start
                                .checked_add(r.len())
                                .is_some_and(|end| end <= frame.len())
                            {
                                Records::InFrame(start..start + r.len())
                            } else {
                                Records::Copied(BytesMut::from(&r[..]))
                            }
                        }
                    };
                    (p.index, records)
                })
                .collect();
            (t.name.0.to_string(), parts)
        })
        .collect();
    // Memory for these batches until they are durable: waits while the WAL is backed up,
    // which stops reading this connection and pushes back on the producer.
    let pending: usize = plan
        .iter()
        .flat_map(|(_, parts)| parts.iter())
        .map(|(_, r)| match r {
            Records::InFrame(range) => range.len(),
            Records::Copied(b) => b.len(),
            Records::Missing => 0,
        })
        .sum();
    let permit = broker.streams.reserve(pending).await;
    // Every slice of the frame held by the decoded request is gone now.
    let mut rest = match frame.try_into_mut() {
        Ok(unique) => unique,
        Err(shared) => BytesMut::from(&shared[..]),
    };
    let mut consumed = 0usize;

    let mut results = Vec::with_capacity(plan.len());
    // (topic, partition) -> indexes of keyless records rejected on a compacted topic.
    let mut record_errors: HashMap<(String, i32), Vec<i32>> = HashMap::new();
    for (name, parts) in plan {
        let compacted = broker.meta.read(|s| {
            s.topics.get(&name).is_some_and(|t| {
                crate::compaction::is_compacted(&t.configs, &broker.config.topic_defaults)
            })
        });
        let mut outcomes = Vec::with_capacity(parts.len());
        for (index, records) in parts {
            let records = match records {
                Records::Missing => None,
                Records::Copied(b) => Some(b),
                Records::InFrame(range)
                    if range.start >= consumed && range.end <= consumed + rest.len() =>
                {
                    let _ = rest.split_to(range.start - consumed);
                    consumed = range.end;
                    Some(rest.split_to(range.len()))
                }
                Records::InFrame(_) => None,
            };
            let r = if !matches!(acks, -1..=1) {
                Err((ResponseError::InvalidRequiredAcks, String::new()))
            } else if crate::handlers::topics::is_internal(&name) {
                // As Kafka: clients never append to internal topics directly.
                Err((
                    ResponseError::InvalidTopicException,
                    format!("Cannot append to internal topic {name}"),
                ))
            } else if transactional {
                Err((
                    ResponseError::TransactionalIdAuthorizationFailed,
                    "transactions are not supported yet".into(),
                ))
            } else if let Some(bad) = records
                .as_deref()
                .filter(|_| compacted)
                .and_then(crate::compaction::keyless_records)
                .filter(|bad| !bad.is_empty())
            {
                // Only compacted topics pay for decoding; Kafka rejects keyless records there.
                record_errors.insert((name.clone(), index), bad);
                Err((
                    ResponseError::InvalidRecord,
                    format!(
                        "Compacted topic cannot accept message without key in topic partition {name}-{index}."
                    ),
                ))
            } else {
                append_partition(broker, &name, index, records).await
            };
            outcomes.push((index, r));
        }
        results.push((name, outcomes));
    }
    if acks == 0 {
        // Kafka sends no response to acks=0, so the only way to tell the producer that a
        // partition was refused is to close the connection (KafkaApis does exactly that).
        if let Some((name, index, (code, msg))) = results.iter().find_map(|(name, parts)| {
            parts
                .iter()
                .find_map(|(i, r)| r.as_ref().err().map(|e| (name, *i, e)))
        }) {
            tracing::info!(topic = %name, partition = index, ?code, msg, "acks=0 produce refused; closing the connection");
            return Started::Close;
        }
        // No response at all; the memory is released once durable.
        let durable: Vec<Durable> = results
            .into_iter()
            .flat_map(|(_, parts)| parts)
            .filter_map(|(_, r)| r.ok())
            .flat_map(|a| a.durable)
            .collect();
        if !durable.is_empty() {
            tokio::spawn(async move {
                for d in durable {
                    if let Ok(Err(e)) = d.await {
                        tracing::warn!(error = %e, "acks=0 append failed");
                    }
                }
                drop(permit);
            });
        }
        return Started::Done(None);
    }
    Started::Later(Box::pin(async move {
        let _permit = permit;
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
                        .with_record_errors(
                            record_errors
                                .remove(&(name.clone(), index))
                                .unwrap_or_default()
                                .into_iter()
                                .map(|i| {
                                    BatchIndexAndErrorMessage::default()
                                        .with_batch_index(i)
                                        .with_batch_index_error_message(Some(
                                            StrBytes::from_static_str("key is null"),
                                        ))
                                })
                                .collect(),
                        )
                        .with_error_message((!msg.is_empty()).then(|| StrBytes::from_string(msg))),
                };
                partition_responses.push(resp);
            }
            responses.push(
                TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_string(name)))
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
    records: Option<BytesMut>,
) -> Result<Appended, (ResponseError, String)> {
    let part = broker
        .partition(topic, index)
        .await
        .map_err(|c| (c, String::new()))?;
    let Some(mut records) = records else {
        return Err((ResponseError::CorruptMessage, "no records".into()));
    };
    let batches = batch::validate_batches(&records).map_err(batch_error)?;
    let defaults = &broker.config.topic_defaults;
    let max_message_bytes =
        topic_config::effective_i64("max.message.bytes", &part.topic_configs, defaults);
    let log_append_time =
        topic_config::effective_str("message.timestamp.type", &part.topic_configs, defaults)
            == "LogAppendTime";
    for (h, range) in &batches {
        if range.len() as i64 > max_message_bytes {
            return Err((
                ResponseError::MessageTooLarge,
                format!(
                    "batch of {} bytes exceeds max.message.bytes {max_message_bytes}",
                    range.len()
                ),
            ));
        }
        if h.is_control() {
            return Err((
                ResponseError::InvalidRecord,
                "control batches are written by the broker".into(),
            ));
        }
        if h.is_transactional() {
            return Err((
                ResponseError::InvalidRecord,
                "transactions are not supported yet".into(),
            ));
        }
    }
    let now = if log_append_time { crate::now_ms() } else { -1 };
    let stream = part.stream;
    let epoch = leader_epoch(stream.epoch());
    let mut durable = Vec::with_capacity(batches.len());
    let mut base_offset = -1;
    for (h, range) in batches {
        // Batches are contiguous from the start of `records`: split each off and patch it
        // in place; the payload is never decompressed, re-encoded or copied.
        let mut buf = records.split_to(range.len());
        if log_append_time {
            batch::set_log_append_time(&mut buf, now);
        }
        let max_ts = if log_append_time {
            now
        } else {
            h.max_timestamp
        };
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
