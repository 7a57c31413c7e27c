//! Transactions: AddPartitionsToTxn, AddOffsetsToTxn, EndTxn, TxnOffsetCommit,
//! WriteTxnMarkers (between brokers), DescribeTransactions, ListTransactions and DescribeProducers (InitProducerId is in
//! `producers`). The coordinator is in `crate::txn`; this module translates requests and
//! responses per version.

use crate::Broker;
use crate::groups::{CommitPartition, TxnCommitRequest};
use crate::txn::coordinator::{AddPartitionsRequest, EndTxnRequest, ListFilter, TxnApi, TxnError};
use crate::txn::glue;
use crate::txn::metadata::{TopicPartition, TransactionVersion};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedState;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeMap;
use std::sync::Arc;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// Per-partition results of one transaction's AddPartitionsToTxn: unknown topics fail on
/// their own and the others are OPERATION_NOT_ATTEMPTED, as Kafka answers.
async fn add_one(
    broker: &Arc<Broker>,
    api_version: i16,
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    verify_only: bool,
    topics: &[AddPartitionsToTxnTopic],
) -> Vec<AddPartitionsToTxnTopicResult> {
    let partitions: Vec<TopicPartition> = topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|&p| TopicPartition::new(t.name.0.to_string(), p))
        })
        .collect();
    let unknown: Vec<&TopicPartition> = partitions
        .iter()
        .filter(|tp| {
            !broker.meta.read(|s| {
                s.topics.get(&tp.topic).is_some_and(|t| {
                    tp.partition >= 0 && (tp.partition as usize) < t.partitions.len()
                })
            })
        })
        .collect();
    let codes: BTreeMap<TopicPartition, i16> = if !unknown.is_empty() {
        partitions
            .iter()
            .map(|tp| {
                let code = if unknown.contains(&tp) {
                    ResponseError::UnknownTopicOrPartition
                } else {
                    ResponseError::OperationNotAttempted
                };
                (tp.clone(), code.code())
            })
            .collect()
    } else {
        let req = AddPartitionsRequest {
            transactional_id,
            producer_id,
            producer_epoch,
            partitions: partitions.clone(),
            client_version: TransactionVersion::of_add_partitions_request(api_version),
        };
        let code = |e: TxnError| e.for_api(TxnApi::AddPartitionsToTxn, api_version).code();
        if verify_only {
            match glue::verify_partitions(broker, &req) {
                Ok(results) => results
                    .into_iter()
                    .map(|(tp, r)| (tp, r.err().map_or(0, code)))
                    .collect(),
                Err(e) => partitions.iter().map(|tp| (tp.clone(), code(e))).collect(),
            }
        } else {
            let txn_id = req.transactional_id.clone();
            let c = match glue::add_partitions(broker, req).await {
                Ok(()) => 0,
                Err(e) => {
                    tracing::debug!(transactional_id = %txn_id, error = ?e, "AddPartitionsToTxn refused");
                    code(e)
                }
            };
            partitions.iter().map(|tp| (tp.clone(), c)).collect()
        }
    };
    let mut by_topic: BTreeMap<String, Vec<AddPartitionsToTxnPartitionResult>> = BTreeMap::new();
    for (tp, code) in codes {
        by_topic.entry(tp.topic).or_default().push(
            AddPartitionsToTxnPartitionResult::default()
                .with_partition_index(tp.partition)
                .with_partition_error_code(code),
        );
    }
    by_topic
        .into_iter()
        .map(|(t, results)| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(TopicName(s(t)))
                .with_results_by_partition(results)
        })
        .collect()
}

pub async fn add_partitions_to_txn(
    broker: &Arc<Broker>,
    version: i16,
    req: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    if version <= 3 {
        let results = add_one(
            broker,
            version,
            req.v3_and_below_transactional_id.0.to_string(),
            req.v3_and_below_producer_id.0,
            req.v3_and_below_producer_epoch,
            false,
            &req.v3_and_below_topics,
        )
        .await;
        return AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    }
    // v4+ (KIP-890): batches of transactions, sent by partition leaders.
    let mut out = Vec::with_capacity(req.transactions.len());
    for t in &req.transactions {
        let results = add_one(
            broker,
            version,
            t.transactional_id.0.to_string(),
            t.producer_id.0,
            t.producer_epoch,
            t.verify_only,
            &t.topics,
        )
        .await;
        out.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(t.transactional_id.clone())
                .with_topic_results(results),
        );
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(out)
}

pub async fn add_offsets_to_txn(
    broker: &Arc<Broker>,
    version: i16,
    req: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    let r = glue::add_offsets(
        broker,
        req.transactional_id.0.to_string(),
        req.producer_id.0,
        req.producer_epoch,
        &req.group_id.0,
    )
    .await;
    if let Err(e) = &r {
        tracing::debug!(transactional_id = %req.transactional_id.0, error = ?e, "AddOffsetsToTxn refused");
    }
    AddOffsetsToTxnResponse::default().with_error_code(match r {
        Ok(()) => 0,
        Err(e) => e.for_api(TxnApi::AddOffsetsToTxn, version).code(),
    })
}

pub async fn end_txn(broker: &Arc<Broker>, version: i16, req: EndTxnRequest_) -> EndTxnResponse {
    let r = glue::end_txn(
        broker,
        EndTxnRequest {
            transactional_id: req.transactional_id.0.to_string(),
            producer_id: req.producer_id.0,
            producer_epoch: req.producer_epoch,
            commit: req.committed,
            client_version: TransactionVersion::of_end_txn_request(version),
        },
    )
    .await;
    match r {
        Ok(id) => EndTxnResponse::default()
            .with_producer_id(ProducerId(if version >= 5 { id.producer_id } else { -1 }))
            .with_producer_epoch(if version >= 5 { id.epoch } else { -1 }),
        Err(e) => {
            tracing::debug!(transactional_id = %req.transactional_id.0, error = ?e, "EndTxn refused");
            EndTxnResponse::default()
                .with_error_code(e.for_api(TxnApi::EndTxn, version).code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
    }
}

/// The request type under another name: `EndTxnRequest` is the core's.
pub type EndTxnRequest_ = kafka_protocol::messages::EndTxnRequest;

pub async fn txn_offset_commit(
    broker: &Arc<Broker>,
    version: i16,
    req: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let all = |code: ResponseError| {
        tracing::debug!(transactional_id = %req.transactional_id.0, error = ?code, "TxnOffsetCommit refused");
        respond(&req, |_, _| code.code())
    };
    let txn_id = req.transactional_id.0.to_string();
    let group = req.group_id.0.to_string();
    let tp = TopicPartition::new(
        crate::groups::OFFSETS_TOPIC,
        broker.groups.partition_of(&group),
    );
    // Asked of the group's coordinator: a node that lost (or has not loaded) the group says
    // so before anything else, so the client finds the right one instead of retrying here.
    if let Err(code) = broker.groups.coordinates(&group) {
        return all(code);
    }
    if version >= 5 {
        // KIP-890 part 2: clients of transaction version 2 send no AddOffsetsToTxn; the
        // group's partition joins the transaction here, as Kafka's group coordinator adds
        // it (AddPartitionsToTxn v5). Its errors reach the client as they are, but for
        // fencing, which Kafka's AddPartitionsToTxnManager reports as INVALID_PRODUCER_EPOCH.
        let add = AddPartitionsRequest {
            transactional_id: txn_id.clone(),
            producer_id: req.producer_id.0,
            producer_epoch: req.producer_epoch,
            partitions: vec![tp.clone()],
            client_version: TransactionVersion::V2,
        };
        match glue::add_partitions_from_owner(broker, add).await {
            Ok(()) => {}
            Err(TxnError::ProducerFenced) => return all(ResponseError::InvalidProducerEpoch),
            Err(e) => return all(e.response_error()),
        }
    }
    // KIP-890 part 1: the group's partition must be in the producer's open transaction
    // (AddOffsetsToTxn), or these offsets could never be committed or aborted.
    match glue::verify_anywhere(broker, &txn_id, req.producer_id.0, req.producer_epoch, &tp).await {
        glue::Verified::InTransaction | glue::Verified::Unknown => {}
        // v4 clients handle KIP-890's abortable error; older ones know INVALID_TXN_STATE.
        glue::Verified::NotInTransaction if version >= 4 => {
            return all(ResponseError::TransactionAbortable);
        }
        glue::Verified::NotInTransaction => return all(ResponseError::InvalidTxnState),
        glue::Verified::Loading => return all(ResponseError::CoordinatorLoadInProgress),
        // The transaction coordinator on another node did not answer: retriable, and the
        // client looks its coordinators up again.
        glue::Verified::Unreachable => return all(ResponseError::CoordinatorNotAvailable),
        // PRODUCER_FENCED exists from TxnOffsetCommit v3; older clients know
        // INVALID_PRODUCER_EPOCH (as Kafka's KafkaApis maps it).
        glue::Verified::Fenced if version >= 3 => return all(ResponseError::ProducerFenced),
        glue::Verified::Fenced => return all(ResponseError::InvalidProducerEpoch),
    }
    let commit = TxnCommitRequest {
        group_id: group,
        producer_id: req.producer_id.0,
        producer_epoch: req.producer_epoch,
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.as_ref().map(|i| i.to_string()),
        generation: req.generation_id,
        partitions: req
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| CommitPartition {
                    topic: t.name.0.to_string(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                })
            })
            .collect(),
    };
    match broker.groups.txn_commit(commit).await {
        Ok(codes) => {
            let mut codes = codes.into_iter();
            respond(&req, |_, _| codes.next().unwrap_or(0))
        }
        Err(e) => all(e),
    }
}

fn respond(
    req: &TxnOffsetCommitRequest,
    mut code: impl FnMut(&str, i32) -> i16,
) -> TxnOffsetCommitResponse {
    TxnOffsetCommitResponse::default().with_topics(
        req.topics
            .iter()
            .map(|t| {
                TxnOffsetCommitResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                TxnOffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code(&t.name.0, p.partition_index))
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

pub async fn describe_transactions(
    broker: &Arc<Broker>,
    _version: i16,
    req: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let states = req
        .transactional_ids
        .iter()
        .map(|id| {
            let out = TransactionState::default()
                .with_transactional_id(id.clone())
                .with_transaction_state(s(""))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            match glue::describe(broker, &id.0) {
                Ok(d) => out
                    .with_transaction_state(s(d.state.name()))
                    .with_transaction_timeout_ms(d.timeout_ms)
                    .with_transaction_start_time_ms(d.start_timestamp_ms)
                    .with_producer_id(ProducerId(d.producer_id))
                    .with_producer_epoch(d.producer_epoch)
                    .with_topics(
                        d.topics
                            .into_iter()
                            .map(|t| {
                                TopicData::default()
                                    .with_topic(TopicName(s(t.topic)))
                                    .with_partitions(t.partitions)
                            })
                            .collect(),
                    ),
                Err(e) => out.with_error_code(e.response_error().code()),
            }
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

pub async fn list_transactions(
    broker: &Arc<Broker>,
    _version: i16,
    req: ListTransactionsRequest,
) -> ListTransactionsResponse {
    let pattern = match req.transactional_id_pattern.as_deref() {
        None | Some("") => None,
        Some(p) => match regex::Regex::new(p) {
            Ok(re) => Some(re),
            Err(_) => {
                return ListTransactionsResponse::default()
                    .with_error_code(ResponseError::InvalidRegularExpression.code());
            }
        },
    };
    let filter = ListFilter {
        producer_ids: req.producer_id_filters.iter().map(|p| p.0).collect(),
        states: req.state_filters.iter().map(|s| s.to_string()).collect(),
        duration_ms: req.duration_filter,
    };
    match glue::list(broker, &filter) {
        Ok(list) => ListTransactionsResponse::default()
            .with_unknown_state_filters(list.unknown_state_filters.into_iter().map(s).collect())
            .with_transaction_states(
                list.transactions
                    .into_iter()
                    // Java's `Pattern.matcher(id).matches()`: the whole id must match.
                    .filter(|t| {
                        pattern.as_ref().is_none_or(|re| {
                            re.find(&t.transactional_id).is_some_and(|m| {
                                m.start() == 0 && m.end() == t.transactional_id.len()
                            })
                        })
                    })
                    .map(|t| {
                        ListedState::default()
                            .with_transactional_id(TransactionalId(s(t.transactional_id)))
                            .with_producer_id(ProducerId(t.producer_id))
                            .with_transaction_state(s(t.state.name()))
                    })
                    .collect(),
            ),
        Err(e) => ListTransactionsResponse::default().with_error_code(e.response_error().code()),
    }
}

pub async fn describe_producers(
    broker: &Arc<Broker>,
    _version: i16,
    req: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let mut partitions = Vec::with_capacity(t.partition_indexes.len());
        for &p in &t.partition_indexes {
            let out = PartitionResponse::default().with_partition_index(p);
            let out = match broker.partition(&t.name.0, p).await {
                Err(e) => out.with_error_code(e.code()),
                Ok(part) => {
                    let producers = part.owned.producers.lock();
                    let mut active: Vec<ProducerState> = producers
                        .producers()
                        .map(|(id, e)| {
                            ProducerState::default()
                                .with_producer_id(ProducerId(id))
                                .with_producer_epoch(i32::from(e.epoch))
                                .with_last_sequence(e.batches.back().map_or(-1, |b| b.last_seq))
                                .with_last_timestamp(e.last_timestamp)
                                .with_coordinator_epoch(e.coordinator_epoch)
                                .with_current_txn_start_offset(e.txn_first_offset.unwrap_or(-1))
                        })
                        .collect();
                    active.sort_by_key(|s| s.producer_id.0);
                    out.with_active_producers(active)
                }
            };
            partitions.push(out);
        }
        topics.push(
            TopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions),
        );
    }
    DescribeProducersResponse::default().with_topics(topics)
}

/// WriteTxnMarkers (from a transaction coordinator on another node): each marker is appended
/// to the partitions this node owns; others are NOT_LEADER_OR_FOLLOWER and the coordinator
/// retries at the new owner. A marker older than the partition's producer epoch (a retry of
/// one already written) is INVALID_PRODUCER_EPOCH, a newer coordinator's partition
/// TRANSACTION_COORDINATOR_FENCED, as Kafka's partition leaders answer.
pub async fn write_txn_markers(
    broker: &Arc<Broker>,
    req: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    use kafka_protocol::messages::write_txn_markers_response::{
        WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
    };
    use shale_protocol::control::EndTxnMarker;
    let mut markers = Vec::with_capacity(req.markers.len());
    for m in &req.markers {
        let marker = EndTxnMarker {
            commit: m.transaction_result,
            coordinator_epoch: m.coordinator_epoch,
        };
        let mut topics = Vec::with_capacity(m.topics.len());
        for t in &m.topics {
            let writes = t.partition_indexes.iter().map(|&p| {
                let tp = TopicPartition::new(t.name.0.to_string(), p);
                async move {
                    let code = match glue::write_local_marker(
                        broker,
                        &tp,
                        m.producer_id.0,
                        m.producer_epoch,
                        marker,
                    )
                    .await
                    {
                        glue::MarkerOutcome::Written => 0,
                        glue::MarkerOutcome::Stale => ResponseError::InvalidProducerEpoch.code(),
                        glue::MarkerOutcome::Gone => ResponseError::UnknownTopicOrPartition.code(),
                        glue::MarkerOutcome::Fenced => {
                            ResponseError::TransactionCoordinatorFenced.code()
                        }
                        glue::MarkerOutcome::Retry(e, _) => e.code(),
                    };
                    WritableTxnMarkerPartitionResult::default()
                        .with_partition_index(p)
                        .with_error_code(code)
                }
            });
            topics.push(
                WritableTxnMarkerTopicResult::default()
                    .with_name(t.name.clone())
                    .with_partitions(futures::future::join_all(writes).await),
            );
        }
        markers.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(m.producer_id)
                .with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(markers)
}
