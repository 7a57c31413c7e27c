//! Produce: validate batches (CRC, size, magic), assign offsets by patching the header,
//! hand them to the WAL, and answer once they are durable (acks=1 and acks=all alike: an
//! ack always means "in object storage and committed in metadata").

use crate::Broker;
use crate::dispatch::Started;
use crate::handlers::metadata::leader_epoch;
use crate::partitions::stream_error_code;
use crate::topic_config;
use crate::txn::glue::Verified;
use crate::txn::producers::{Admit, ProducerError};
use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse,
    TopicProduceResponse,
};
use kafka_protocol::messages::{
    BrokerId, ProduceRequest, ProduceResponse, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use shale_protocol::batch::{self, BatchError, BatchHeader};
use shale_protocol::{decompress, records};
use shale_stream::{AppendEntry, AppendPermit, StreamError};
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
    version: i16,
    req: ProduceRequest,
    frame: Bytes,
) -> Started {
    let acks = req.acks;
    let transactional_id = req.transactional_id.as_ref().map(|t| t.0.to_string());
    // Kafka answers REQUEST_TIMED_OUT only for acks=all, when replication misses
    // `timeout_ms`; acks=1 is answered after the leader's write and never times out. Here
    // both wait for the WAL (PUT + commit), which normally takes one batch interval. The
    // timeout can only fire when the store is failing: the WAL keeps retrying, so a record
    // may still become durable after its request timed out, and the client's retry is then
    // a duplicate (idempotent producers will deduplicate it).
    let deadline = (acks == -1)
        .then(|| tokio::time::Instant::now() + Duration::from_millis(req.timeout_ms.max(0) as u64));
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
    let mut permit = broker.streams.reserve(pending).await;
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
        // Some(decompression cap) for a compacted topic, whose records are checked for keys.
        let compacted = broker.meta.read(|s| {
            let t = s.topics.get(&name)?;
            let defaults = &broker.config.topic_defaults;
            crate::compaction::is_compacted(&t.configs, defaults)
                .then(|| topic_config::decompression_cap(&t.configs, defaults))
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
            } else {
                let share = permit.split(records.as_ref().map_or(0, |r| r.len()));
                let mut keyless = Vec::new();
                let target = Target {
                    topic: &name,
                    index,
                    keys_cap: compacted,
                    transactional_id: transactional_id.as_deref(),
                };
                let r =
                    append_partition(broker, version, target, records, share, &mut keyless).await;
                if !keyless.is_empty() {
                    record_errors.insert((name.clone(), index), keyless);
                }
                r
            };
            outcomes.push((index, r));
        }
        results.push((name, outcomes));
    }
    // Each appended partition's share travels with its entries in the WAL; what is left
    // (refused partitions) is free again now, not when the response goes out.
    drop(permit);
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
        // No response at all; the WAL releases the memory once the entries are durable.
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
            });
        }
        return Started::Done(None);
    }
    let broker = broker.clone();
    Started::Later(Box::pin(async move {
        let mut responses = Vec::with_capacity(results.len());
        for (name, parts) in results {
            let mut partition_responses = Vec::with_capacity(parts.len());
            for (index, r) in parts {
                let resp = PartitionProduceResponse::default().with_index(index);
                let resp = match r {
                    Ok(a) => match wait_durable(a.durable, deadline).await {
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
        let node_endpoints = if version >= 10 {
            if broker.is_shutting_down() {
                await_hand_off(&broker, &responses).await;
            }
            add_leader_hints(&broker, &mut responses)
        } else {
            Vec::new()
        };
        Some(ResponseKind::Produce(
            ProduceResponse::default()
                .with_responses(responses)
                .with_node_endpoints(node_endpoints),
        ))
    }))
}

/// Longest a refusal waits for the controlled shutdown's hand-off to name a new leader.
const HAND_OFF_WAIT: Duration = Duration::from_secs(1);

/// During a controlled shutdown, holds the refusals until their partitions have moved (the
/// hand-off takes one controller tick and a commit), so that the answer can name the new
/// leader and the producer goes straight there instead of backing off and asking for
/// metadata.
async fn await_hand_off(broker: &Broker, responses: &[TopicProduceResponse]) {
    use crate::handlers::metadata::{leader_epoch_of, leader_hint};
    // With the epoch each had here: clients take a hint only at a newer leader epoch, which
    // the new owner's open gives the partition.
    let refused: Vec<(&str, i32, i32)> = responses
        .iter()
        .flat_map(|t| {
            t.partition_responses
                .iter()
                .filter(|p| p.error_code == ResponseError::NotLeaderOrFollower.code())
                .map(move |p| (&*t.name.0, p.index))
        })
        .map(|(t, p)| (t, p, leader_epoch_of(broker, t, p).unwrap_or(-1)))
        .collect();
    if refused.is_empty() {
        return;
    }
    let mut changes = broker.meta.changes();
    let moved = || {
        refused
            .iter()
            .all(|(t, p, e)| leader_hint(broker, t, *p).is_some_and(|h| h.epoch > *e))
    };
    let _ = tokio::time::timeout(HAND_OFF_WAIT, async {
        while !moved() {
            if changes.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
}

/// KIP-951 (Produce v10+): each NOT_LEADER_OR_FOLLOWER partition names its current leader,
/// and the response carries those leaders' endpoints, so the producer retries there at once.
fn add_leader_hints(broker: &Broker, responses: &mut [TopicProduceResponse]) -> Vec<NodeEndpoint> {
    let mut hints = crate::handlers::metadata::LeaderHints::default();
    for t in responses.iter_mut() {
        for p in &mut t.partition_responses {
            if p.error_code != ResponseError::NotLeaderOrFollower.code() {
                continue;
            }
            if let Some((id, epoch)) = hints.of(broker, &t.name.0, p.index) {
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

/// Waits until every batch is durable; `deadline` (acks=all only, one for the whole request,
/// as Kafka's `timeout_ms`) turns a longer wait into REQUEST_TIMED_OUT.
async fn wait_durable(
    durable: Vec<Durable>,
    deadline: Option<tokio::time::Instant>,
) -> Result<(), ResponseError> {
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
    match deadline {
        Some(t) => tokio::time::timeout_at(t, all)
            .await
            .unwrap_or(Err(ResponseError::RequestTimedOut)),
        None => all.await,
    }
}

/// Whether a transactional batch needs its coordinator's word: the request must name its
/// transactional id (Kafka answers TRANSACTIONAL_ID_AUTHORIZATION_FAILED otherwise), and a
/// producer whose transaction is already open here at this epoch needs nothing more.
fn needs_coordinator<'a>(
    producers: &crate::txn::producers::ProducerStates,
    h: &BatchHeader,
    transactional_id: Option<&'a str>,
) -> Result<Option<&'a str>, (ResponseError, String)> {
    let Some(txn_id) = transactional_id else {
        return Err((
            ResponseError::TransactionalIdAuthorizationFailed,
            "transactional records need a transactional id".into(),
        ));
    };
    let open = producers
        .producer(h.producer_id)
        .is_some_and(|e| e.txn_first_offset.is_some() && e.epoch == h.producer_epoch);
    Ok((!open).then_some(txn_id))
}

/// Produce v12+ (KIP-890 part 2): clients of transaction version 2 send no
/// AddPartitionsToTxn, so the first transactional batch of a producer here adds the
/// partition to its transaction, as Kafka's partition leader does (AddPartitionsToTxn v5,
/// not verify-only). CONCURRENT_TRANSACTIONS (the last transaction still completing) is
/// retried for up to 100 ms, Kafka's `add.partitions.to.txn.retry.backoff.max.ms`, then
/// answered; coordinator unavailability is NOT_ENOUGH_REPLICAS, which producers retry.
async fn add_to_transaction(
    broker: &Arc<Broker>,
    owned: &crate::partitions::Owned,
    headers: &[BatchHeader],
    transactional_id: Option<&str>,
    topic: &str,
    index: i32,
) -> Result<(), (ResponseError, String)> {
    use crate::txn::coordinator::{AddPartitionsRequest, TxnError};
    use crate::txn::metadata::TransactionVersion;
    const BACKOFF: std::time::Duration = std::time::Duration::from_millis(20);
    const RETRY_FOR: std::time::Duration = std::time::Duration::from_millis(100);
    for h in headers.iter().filter(|h| h.is_transactional()) {
        let Some(txn_id) = needs_coordinator(&owned.producers.lock(), h, transactional_id)? else {
            continue;
        };
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let result = loop {
            let req = AddPartitionsRequest {
                transactional_id: txn_id.to_owned(),
                producer_id: h.producer_id,
                producer_epoch: h.producer_epoch,
                partitions: vec![crate::txn::metadata::TopicPartition::new(topic, index)],
                client_version: TransactionVersion::V2,
            };
            match crate::txn::glue::add_partitions_from_owner(broker, req).await {
                Err(TxnError::ConcurrentTransactions)
                    if tokio::time::Instant::now() + BACKOFF < deadline =>
                {
                    tokio::time::sleep(BACKOFF).await;
                }
                r => break r,
            }
        };
        let code = match result {
            Ok(()) => {
                tracing::debug!(txn_id, topic, index, "partition added by its first batch");
                continue;
            }
            // Kafka's AddPartitionsToTxnManager and ReplicaManager translations.
            Err(TxnError::ProducerFenced) => ResponseError::InvalidProducerEpoch,
            Err(
                TxnError::CoordinatorLoadInProgress
                | TxnError::CoordinatorNotAvailable
                | TxnError::NotCoordinator,
            ) => ResponseError::NotEnoughReplicas,
            Err(e) => e.response_error(),
        };
        return Err((
            code,
            format!("adding {topic}-{index} to the transaction of {txn_id}: {code:?}"),
        ));
    }
    Ok(())
}

/// Transactional batches: a producer's first batch of a transaction in this partition must
/// be for a partition its coordinator has in the transaction (KIP-890 part 1), so a late
/// retry cannot open a transaction nobody ends. Run under the append lock.
fn verify_transactional(
    broker: &Broker,
    version: i16,
    producers: &crate::txn::producers::ProducerStates,
    headers: &[BatchHeader],
    transactional_id: Option<&str>,
    topic: &str,
    index: i32,
) -> Result<(), (ResponseError, String)> {
    for h in headers.iter().filter(|h| h.is_transactional()) {
        let Some(txn_id) = needs_coordinator(producers, h, transactional_id)? else {
            continue;
        };
        let tp = crate::txn::metadata::TopicPartition::new(topic, index);
        let verified =
            crate::txn::glue::verify(broker, txn_id, h.producer_id, h.producer_epoch, &tp);
        check_verified(verified, version, h, txn_id, topic, index)?;
    }
    Ok(())
}

/// Produce up to v11 when the producer's coordinator is on another node: its answer to the
/// KIP-890 check is asked before the append (over the network, so not under the append
/// lock), as Kafka's partition leaders verify before appending. Under the lock, a coordinator
/// elsewhere is then taken as having said yes.
async fn verify_at_remote_coordinator(
    broker: &Arc<Broker>,
    version: i16,
    owned: &crate::partitions::Owned,
    headers: &[BatchHeader],
    transactional_id: Option<&str>,
    topic: &str,
    index: i32,
) -> Result<(), (ResponseError, String)> {
    for h in headers.iter().filter(|h| h.is_transactional()) {
        let Some(txn_id) = needs_coordinator(&owned.producers.lock(), h, transactional_id)? else {
            continue;
        };
        if crate::txn::glue::remote_coordinator(broker, txn_id).is_none() {
            continue;
        }
        let tp = crate::txn::metadata::TopicPartition::new(topic, index);
        let verified =
            crate::txn::glue::verify_anywhere(broker, txn_id, h.producer_id, h.producer_epoch, &tp)
                .await;
        check_verified(verified, version, h, txn_id, topic, index)?;
    }
    Ok(())
}

/// The answer to a producer whose transactional batch its coordinator was asked about.
fn check_verified(
    verified: Verified,
    version: i16,
    h: &BatchHeader,
    txn_id: &str,
    topic: &str,
    index: i32,
) -> Result<(), (ResponseError, String)> {
    match verified {
        Verified::InTransaction | Verified::Unknown => Ok(()),
        Verified::Loading | Verified::Unreachable => Err((
            ResponseError::NotEnoughReplicas,
            format!("the transaction coordinator of {txn_id} is loading or unreachable; retry"),
        )),
        Verified::NotInTransaction => {
            // Produce v11 clients handle TRANSACTION_ABORTABLE (KIP-890's abortable
            // error); older ones know INVALID_TXN_STATE, as Kafka answers them.
            let code = if version == 11 {
                ResponseError::TransactionAbortable
            } else {
                ResponseError::InvalidTxnState
            };
            Err((
                code,
                format!("{topic}-{index} is not in the transaction of {txn_id}"),
            ))
        }
        Verified::Fenced => Err((
            ResponseError::InvalidProducerEpoch,
            format!(
                "producer {} epoch {} is fenced",
                h.producer_id, h.producer_epoch
            ),
        )),
    }
}

/// Resolves once the stream is durable through `last_offset` (a duplicate's original
/// batches), or fails when the handle is fenced before that: the original was then lost and
/// the producer's retry must not be acknowledged.
fn durable_through(
    broker: &Broker,
    stream: &Arc<shale_stream::Stream>,
    last_offset: u64,
) -> Durable {
    let (tx, rx) = oneshot::channel();
    let mut commits = broker.streams.commit_notifications();
    let stream = stream.clone();
    tokio::spawn(async move {
        loop {
            if stream.end_offset() > last_offset {
                let _ = tx.send(Ok(()));
                return;
            }
            if !stream.is_writable() {
                let _ = tx.send(Err(StreamError::Fenced(stream.id())));
                return;
            }
            if commits.changed().await.is_err() {
                let _ = tx.send(Err(StreamError::ShuttingDown));
                return;
            }
        }
    });
    rx
}

pub(crate) fn producer_error(e: ProducerError) -> (ResponseError, String) {
    let code = match &e {
        ProducerError::OutOfOrderSequence(_) => ResponseError::OutOfOrderSequenceNumber,
        ProducerError::InvalidProducerEpoch(_) => ResponseError::InvalidProducerEpoch,
        ProducerError::InvalidTxnState(_) => ResponseError::InvalidTxnState,
        ProducerError::CoordinatorFenced(_) => ResponseError::TransactionCoordinatorFenced,
    };
    (code, e.to_string())
}

fn batch_error(e: BatchError) -> (ResponseError, String) {
    let code = match e {
        BatchError::Corrupt(_) => ResponseError::CorruptMessage,
        BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
        BatchError::Invalid(_) => ResponseError::InvalidRecord,
    };
    (code, e.to_string())
}

/// The partition a produce appends to.
struct Target<'a> {
    topic: &'a str,
    index: i32,
    /// Compacted topics: the decompression cap for reading the records' keys.
    keys_cap: Option<usize>,
    /// The request's transactional id (transactional batches need one).
    transactional_id: Option<&'a str>,
}

async fn append_partition(
    broker: &Arc<Broker>,
    version: i16,
    target: Target<'_>,
    records: Option<BytesMut>,
    mut permit: AppendPermit,
    keyless: &mut Vec<i32>,
) -> Result<Appended, (ResponseError, String)> {
    let Target {
        topic,
        index,
        keys_cap,
        transactional_id,
    } = target;
    let part = broker
        .partition(topic, index)
        .await
        .map_err(|c| (c, String::new()))?;
    let Some(records) = records else {
        return Err((ResponseError::CorruptMessage, "no records".into()));
    };
    let batches = batch::validate_batches(&records).map_err(batch_error)?;
    let defaults = &broker.config.topic_defaults;
    let limits = TopicLimits {
        max_message_bytes: topic_config::effective_i64(
            "max.message.bytes",
            &part.topic_configs,
            defaults,
        ),
        log_append_time: topic_config::effective_str(
            "message.timestamp.type",
            &part.topic_configs,
            defaults,
        ) == "LogAppendTime",
        rules: BatchRules::of_topic(&part.topic_configs, defaults, version),
        max_stored_bytes: broker.config.socket_request_max_bytes,
    };
    admit(&batches, limits.max_message_bytes)?;
    if let Some(cap) = keys_cap {
        // Only compacted topics pay for reading keys (after the size and CRC checks); Kafka
        // rejects keyless records there, with the index of each.
        let bad = crate::compaction::keyless_records(&records, cap).map_err(batch_error)?;
        if !bad.is_empty() {
            *keyless = bad;
            return Err((
                ResponseError::InvalidRecord,
                format!(
                    "Compacted topic cannot accept message without key in topic partition {topic}-{index}."
                ),
            ));
        }
    }
    let now = if limits.log_append_time {
        crate::now_ms()
    } else {
        -1
    };
    let wire_bytes = records.len();
    let headers: Vec<BatchHeader> = batches.iter().map(|(h, _)| *h).collect();
    if headers.len() > 1 && headers.iter().any(|h| h.producer_id >= 0) {
        // Kafka refuses more than one batch per partition at Produce v3+; for producers
        // with ids it matters: a retry of one batch among new ones could not be answered.
        return Err((
            ResponseError::InvalidRecord,
            "a producer with an id must send exactly one record batch per partition".into(),
        ));
    }
    if version >= 12 {
        add_to_transaction(
            broker,
            &part.owned,
            &headers,
            transactional_id,
            topic,
            index,
        )
        .await?;
    } else {
        verify_at_remote_coordinator(
            broker,
            version,
            &part.owned,
            &headers,
            transactional_id,
            topic,
            index,
        )
        .await?;
    }
    let prepared = prepare(records, batches, &limits, now)?;
    // A recompressed batch may be larger than the bytes the permit was reserved for: charge
    // the growth too, or refuse (retriably) when the memory is not there now.
    let stored: usize = prepared.iter().map(|p| p.buf.len()).sum();
    if let Some(extra) = stored
        .checked_sub(wire_bytes.max(permit.bytes()))
        .filter(|&e| e > 0)
    {
        match broker.streams.try_reserve(extra) {
            Some(more) => permit.merge(more),
            None => {
                return Err((
                    ResponseError::KafkaStorageError,
                    "no memory for recompressed records now (wal.max.pending.bytes); retry".into(),
                ));
            }
        }
    }
    let stream = part.stream;
    let epoch = leader_epoch(stream.epoch());
    // One atomic append: contiguous offsets with no other producer's batches in between,
    // all or nothing. The permit stays with the entries in the WAL until they are durable.
    let entries = prepared
        .into_iter()
        .map(
            |Prepared {
                 count,
                 max_timestamp,
                 mut buf,
             }| AppendEntry {
                count,
                max_timestamp,
                build: move |base: u64| {
                    batch::patch_offsets(&mut buf, base as i64, epoch);
                    buf.freeze()
                },
            },
        )
        .collect();
    // The producer-state check and the append it admits are one step under the partition's
    // append lock (header fields only: no per-record work).
    let mut producers = part.owned.producers.lock();
    // An append refused (the stream fenced, the WAL shut down) left the producer's sequence
    // where it was, so the pipelined batches after it would now fail the sequence check.
    // As Kafka, a node that cannot append says NOT_LEADER_OR_FOLLOWER to all of them: an
    // OUT_OF_ORDER_SEQUENCE_NUMBER makes librdkafka bump its epoch and drain every partition.
    if !stream.accepts_appends() {
        return Err((
            ResponseError::NotLeaderOrFollower,
            format!("{topic}-{index} takes no appends on this node now"),
        ));
    }
    // Under the append lock: a marker cannot close the transaction between this check
    // and the append (Kafka's VerificationGuard).
    verify_transactional(
        broker,
        version,
        &producers,
        &headers,
        transactional_id,
        topic,
        index,
    )?;
    let update = match producers.check(&headers).map_err(producer_error)? {
        Admit::Append(update) => update,
        Admit::Duplicate(original) => {
            drop(producers);
            // As Kafka: a retry of batches already appended is answered with their offsets
            // and not stored again, once they are durable.
            return Ok(Appended {
                base_offset: original.first_offset,
                log_append_time: now,
                log_start_offset: stream.start_offset() as i64,
                durable: vec![durable_through(
                    broker,
                    &stream,
                    original.last_offset as u64,
                )],
            });
        }
    };
    // A fenced handle is reopened by the next request's `partition()` (it checks the handle
    // is still writable); closing it here could close a handle another request has just
    // reopened.
    let handle = stream
        .append_many(entries, permit)
        .map_err(|e| (stream_error_code(&e), e.to_string()))?;
    let base_offset = handle.base_offset as i64;
    producers.apply(update, base_offset);
    drop(producers);
    let durable = vec![handle.durable];
    Ok(Appended {
        base_offset,
        log_append_time: now,
        log_start_offset: stream.start_offset() as i64,
        durable,
    })
}

/// What a topic allows of the batches appended to it.
struct TopicLimits {
    max_message_bytes: i64,
    /// Most bytes one partition's batches may take once in their stored form (recompressed
    /// batches grow): `socket.request.max.bytes`.
    max_stored_bytes: usize,
    log_append_time: bool,
    rules: BatchRules,
}

/// Checks every batch header before anything is appended.
fn admit(
    batches: &[(BatchHeader, std::ops::Range<usize>)],
    max_message_bytes: i64,
) -> Result<(), (ResponseError, String)> {
    for (h, range) in batches {
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
    }
    Ok(())
}

/// A batch in its stored form, waiting for its offsets.
struct Prepared {
    count: u32,
    max_timestamp: i64,
    buf: BytesMut,
}

/// Every batch in its stored form before any is appended: a refused batch refuses the whole
/// partition's records (all or nothing).
fn prepare(
    mut records: BytesMut,
    batches: Vec<(BatchHeader, std::ops::Range<usize>)>,
    limits: &TopicLimits,
    now: i64,
) -> Result<Vec<Prepared>, (ResponseError, String)> {
    let mut prepared = Vec::with_capacity(batches.len());
    let mut stored = 0usize;
    for (h, range) in batches {
        // Batches are contiguous from the start of `records`: split each off and patch it
        // in place; unless the topic's rules need its records, the payload is never
        // decompressed, re-encoded or copied.
        let mut buf = limits.rules.apply(records.split_to(range.len()), &h)?;
        if buf.len() as i64 > limits.max_message_bytes {
            return Err((
                ResponseError::MessageTooLarge,
                format!(
                    "batch of {} bytes after recompression exceeds max.message.bytes {}",
                    buf.len(),
                    limits.max_message_bytes
                ),
            ));
        }
        // Checked as the batches are rebuilt, so growth stops at the bound, not after it.
        stored = stored.saturating_add(buf.len());
        if stored > limits.max_stored_bytes {
            return Err((
                ResponseError::RecordListTooLarge,
                format!(
                    "records grow beyond {} bytes when recompressed",
                    limits.max_stored_bytes
                ),
            ));
        }
        if limits.log_append_time {
            batch::set_log_append_time(&mut buf, now);
        }
        let max_ts = if limits.log_append_time {
            now
        } else {
            h.max_timestamp
        };
        prepared.push(Prepared {
            count: h.offset_count(),
            max_timestamp: max_ts,
            buf,
        });
    }
    Ok(prepared)
}

/// Topic rules that may need a batch's records (its header alone does not say): the
/// `message.timestamp.*` bounds and a `compression.type` other than `producer`. With Kafka's
/// defaults neither applies and batches pass untouched, with no per-record work.
struct BatchRules {
    /// How far one batch may inflate when its records are needed.
    decompression_cap: usize,
    /// The codec the topic stores (`None`: keep the producer's).
    codec: Option<u8>,
    /// CreateTime bounds relative to the broker's clock: (before, after) in ms.
    bounds: Option<(i64, i64)>,
    /// Produce before v7 cannot carry zstd (Kafka answers UNSUPPORTED_COMPRESSION_TYPE).
    zstd_allowed: bool,
}

impl BatchRules {
    fn of_topic(
        configs: &std::collections::BTreeMap<String, String>,
        defaults: &std::collections::BTreeMap<String, String>,
        version: i16,
    ) -> Self {
        let codec = records::codec_of_compression_type(topic_config::effective_str(
            "compression.type",
            configs,
            defaults,
        ));
        let create_time = topic_config::effective_str("message.timestamp.type", configs, defaults)
            != "LogAppendTime";
        // The deprecated `difference` bound stands in for a `before`/`after` left unset.
        let difference =
            topic_config::effective_i64("message.timestamp.difference.max.ms", configs, defaults);
        let bound = |name| match topic_config::effective_i64(name, configs, defaults) {
            i64::MAX => difference,
            v => v,
        };
        let before = bound("message.timestamp.before.max.ms");
        let after = bound("message.timestamp.after.max.ms");
        let bounds =
            (create_time && (before != i64::MAX || after != i64::MAX)).then_some((before, after));
        BatchRules {
            decompression_cap: topic_config::decompression_cap(configs, defaults),
            codec,
            bounds,
            zstd_allowed: version >= 7,
        }
    }

    /// The batch as the topic stores it, or why it is refused.
    fn apply(&self, batch: BytesMut, h: &BatchHeader) -> Result<BytesMut, (ResponseError, String)> {
        // As Kafka's produce validation: only a zstd *batch* needs v7 (a topic that stores
        // zstd recompresses older clients' batches).
        if !self.zstd_allowed && h.compression() == decompress::ZSTD {
            return Err((
                ResponseError::UnsupportedCompressionType,
                "zstd needs produce request version 7 or later".into(),
            ));
        }
        let recompress = self.codec.filter(|&c| c != h.compression());
        if recompress.is_none() && self.bounds.is_none() {
            return Ok(batch);
        }
        let section = records::records_section_capped(&batch, h, self.decompression_cap)
            .map_err(batch_error)?;
        records::check_records(&section, h.record_count).map_err(batch_error)?;
        let all = records::parse_records(&section, h.record_count).map_err(batch_error)?;
        if let Some((before, after)) = self.bounds {
            let now = crate::now_ms();
            let (low, high) = (now.saturating_sub(before), now.saturating_add(after));
            for r in &all {
                let ts = h.base_timestamp.saturating_add(r.timestamp_delta);
                // As Kafka's LogValidator: a record without a timestamp (-1) is not checked.
                if ts != -1 && (ts < low || ts > high) {
                    return Err((
                        ResponseError::InvalidTimestamp,
                        format!(
                            "Timestamp {ts} of message with offset delta {} is out of range. \
                             The timestamp should be within [{low}, {high}]",
                            r.offset_delta
                        ),
                    ));
                }
            }
        }
        match recompress {
            // Recompressing rewrites the records section; the records themselves are kept
            // byte for byte, as are the header's producer fields and timestamps.
            Some(codec) => records::rebuild_batch_as(&batch, &all, codec).map_err(batch_error),
            None => Ok(batch),
        }
    }
}
