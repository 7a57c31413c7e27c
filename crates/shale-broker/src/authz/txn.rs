//! Producer and transaction APIs, authorized as Kafka's `KafkaApis` does: a transactional
//! producer needs WRITE on its transactional id (and WRITE on the topics it adds, READ on
//! the group and topics it commits offsets for), an idempotent one IDEMPOTENT_WRITE on the
//! cluster or WRITE on some topic; the broker-to-broker AddPartitionsToTxn (v4+) needs
//! CLUSTER_ACTION; describing and listing transactions need DESCRIBE on the ids,
//! DescribeProducers READ on the topics. A transactional commit that moves a group's offset
//! backwards on a topic with a replay window also needs READ on `__replay.<topic>`
//! (`replay`), as OffsetCommit does.

use super::groups::{Later, fixup_if, pass, split};
use super::replay::{self, BrokerCluster, Cluster};
use super::{CLUSTER_NAME, Checked, Fixup, Gate};
use crate::Broker;
use crate::handlers::topics::{is_internal, validate_name};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use shale_security::acl::{AclOperation, ResourceType};

const TXN_ID_DENIED: i16 = ResponseError::TransactionalIdAuthorizationFailed.code();
const GROUP_DENIED: i16 = ResponseError::GroupAuthorizationFailed.code();
const TOPIC_DENIED: i16 = ResponseError::TopicAuthorizationFailed.code();
const CLUSTER_DENIED: i16 = ResponseError::ClusterAuthorizationFailed.code();

pub(super) fn check(
    broker: &std::sync::Arc<Broker>,
    gate: &Gate<'_>,
    version: i16,
    body: RequestKind,
) -> Checked {
    // AddPartitionsToTxn tells unknown partitions from refused ones (as Kafka does).
    let exists = |topic: &str, partition: i32| {
        broker.meta.read(|s| {
            s.topics
                .get(topic)
                .is_some_and(|t| usize::try_from(partition).is_ok_and(|p| p < t.partitions.len()))
        })
    };
    check_request(gate, &BrokerCluster(broker), version, body, &exists)
}

/// `exists(topic, partition)`: whether the cluster has that partition.
fn check_request(
    gate: &Gate<'_>,
    cluster: &dyn Cluster,
    version: i16,
    body: RequestKind,
    exists: &dyn Fn(&str, i32) -> bool,
) -> Checked {
    use RequestKind as R;
    let write_txn = |id: &str| gate.allows(AclOperation::Write, ResourceType::TransactionalId, id);
    match body {
        R::InitProducerId(req) => {
            let refusal = match &req.transactional_id {
                Some(id) => (!write_txn(id)).then_some(TXN_ID_DENIED),
                None => (!may_write_idempotently(gate)).then_some(CLUSTER_DENIED),
            };
            match refusal {
                None => pass(R::InitProducerId(req)),
                // `InitProducerIdRequest.getErrorResponse`.
                Some(code) => Checked::Refuse(ResponseKind::InitProducerId(
                    InitProducerIdResponse::default()
                        .with_error_code(code)
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1),
                )),
            }
        }
        R::AddPartitionsToTxn(req) => add_partitions(gate, version, req, exists),
        R::AddOffsetsToTxn(req) => {
            // Kafka's order: the transactional id, then the group.
            let code = if !write_txn(&req.transactional_id) {
                TXN_ID_DENIED
            } else if !gate.allows(AclOperation::Read, ResourceType::Group, &req.group_id) {
                GROUP_DENIED
            } else {
                return pass(R::AddOffsetsToTxn(req));
            };
            Checked::Refuse(ResponseKind::AddOffsetsToTxn(
                AddOffsetsToTxnResponse::default().with_error_code(code),
            ))
        }
        R::EndTxn(req) => {
            if write_txn(&req.transactional_id) {
                return pass(R::EndTxn(req));
            }
            // Producer id and epoch (v5+) stay at their -1 defaults.
            Checked::Refuse(ResponseKind::EndTxn(
                EndTxnResponse::default().with_error_code(TXN_ID_DENIED),
            ))
        }
        R::TxnOffsetCommit(req) => txn_offset_commit(gate, cluster, req),
        R::DescribeTransactions(mut req) => {
            use describe_transactions_response::TransactionState;
            let (ok, refused) = split(std::mem::take(&mut req.transactional_ids), |id| {
                gate.allows(AclOperation::Describe, ResourceType::TransactionalId, id)
            });
            req.transactional_ids = ok;
            let denied: Vec<TransactionState> = refused
                .into_iter()
                .map(|id| {
                    TransactionState::default()
                        .with_transactional_id(id)
                        .with_error_code(TXN_ID_DENIED)
                })
                .collect();
            if req.transactional_ids.is_empty() && !denied.is_empty() {
                return Checked::Refuse(ResponseKind::DescribeTransactions(
                    DescribeTransactionsResponse::default().with_transaction_states(denied),
                ));
            }
            // A described transaction shows only the partitions of topics the principal
            // may DESCRIBE (as Kafka).
            let later = Later::of(gate);
            Checked::Dispatch(
                R::DescribeTransactions(req),
                Fixup::response(move |r| {
                    if let ResponseKind::DescribeTransactions(d) = r {
                        for state in d.transaction_states.iter_mut() {
                            state.topics.retain(|t| {
                                later.may_see(AclOperation::Describe, ResourceType::Topic, &t.topic)
                            });
                        }
                        d.transaction_states.extend(denied);
                    }
                }),
            )
        }
        R::ListTransactions(req) => {
            // Only the transactions the principal may DESCRIBE, the others silently left out.
            let later = Later::of(gate);
            Checked::Dispatch(
                R::ListTransactions(req),
                Fixup::response(move |r| {
                    if let ResponseKind::ListTransactions(l) = r {
                        l.transaction_states.retain(|t| {
                            later.may_see(
                                AclOperation::Describe,
                                ResourceType::TransactionalId,
                                &t.transactional_id,
                            )
                        });
                    }
                }),
            )
        }
        R::DescribeProducers(mut req) => {
            use describe_producers_response::{PartitionResponse, TopicResponse};
            // Kafka validates a topic's name before authorizing it: an invalid name (no
            // topic can have it) is the handler's to answer.
            let (ok, refused) = split(std::mem::take(&mut req.topics), |t| {
                validate_name(&t.name).is_err()
                    || gate.allows(AclOperation::Read, ResourceType::Topic, &t.name)
            });
            req.topics = ok;
            let denied: Vec<TopicResponse> = refused
                .into_iter()
                .map(|t| {
                    TopicResponse::default().with_name(t.name).with_partitions(
                        t.partition_indexes
                            .iter()
                            .map(|p| {
                                // `new ApiError(TOPIC_AUTHORIZATION_FAILED)`: the
                                // error's default message.
                                PartitionResponse::default()
                                    .with_partition_index(*p)
                                    .with_error_code(TOPIC_DENIED)
                                    .with_error_message(Some(StrBytes::from_static_str(
                                        "Topic authorization failed.",
                                    )))
                            })
                            .collect(),
                    )
                })
                .collect();
            if req.topics.is_empty() && !denied.is_empty() {
                return Checked::Refuse(ResponseKind::DescribeProducers(
                    DescribeProducersResponse::default().with_topics(denied),
                ));
            }
            Checked::Dispatch(
                R::DescribeProducers(req),
                fixup_if(!denied.is_empty(), move |r| {
                    if let ResponseKind::DescribeProducers(d) = r {
                        d.topics.extend(denied);
                    }
                }),
            )
        }
        other => pass(other),
    }
}

/// An idempotent producer (InitProducerId without a transactional id) needs IDEMPOTENT_WRITE
/// on the cluster, or WRITE on at least one topic (Kafka 2.8+, KIP-679).
fn may_write_idempotently(gate: &Gate<'_>) -> bool {
    // Kafka asks IDEMPOTENT_WRITE without logging a denial: WRITE on a topic may still do.
    if gate.may_see(
        AclOperation::IdempotentWrite,
        ResourceType::Cluster,
        CLUSTER_NAME,
    ) {
        return true;
    }
    if write_on_some_topic(gate) {
        return true;
    }
    // Kafka logs neither check; a refused request still gets its audit line here.
    let _logged = gate.allows_cluster(AclOperation::IdempotentWrite);
    false
}

/// Kafka's `authorizeByResourceType(WRITE, TOPIC)`: some ALLOW of WRITE on a topic pattern
/// that no DENY covers entirely. The one use of `Authorizer::authorize_any`.
fn write_on_some_topic(gate: &Gate<'_>) -> bool {
    let ctx = gate.ctx();
    gate.authorizer().authorize_any(
        &ctx.principal,
        &ctx.host,
        AclOperation::Write,
        ResourceType::Topic,
    )
}

/// AddPartitionsToTxn. v0-3 come from producers: WRITE on the transactional id, then WRITE
/// on every topic, and one refused topic fails the whole request (the refused partitions
/// TOPIC_AUTHORIZATION_FAILED, unknown ones UNKNOWN_TOPIC_OR_PARTITION, the rest
/// OPERATION_NOT_ATTEMPTED), so nothing is added. v4+ come from brokers verifying
/// transactions: CLUSTER_ACTION, else a top-level CLUSTER_AUTHORIZATION_FAILED.
fn add_partitions(
    gate: &Gate<'_>,
    version: i16,
    req: AddPartitionsToTxnRequest,
    exists: &dyn Fn(&str, i32) -> bool,
) -> Checked {
    use add_partitions_to_txn_response::{
        AddPartitionsToTxnPartitionResult as PartitionResult,
        AddPartitionsToTxnTopicResult as TopicResult,
    };
    let refuse = |results: Vec<TopicResult>| {
        Checked::Refuse(ResponseKind::AddPartitionsToTxn(
            AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results),
        ))
    };
    if version >= 4 {
        if gate.allows_cluster(AclOperation::ClusterAction) {
            return pass(RequestKind::AddPartitionsToTxn(req));
        }
        return Checked::Refuse(ResponseKind::AddPartitionsToTxn(
            AddPartitionsToTxnResponse::default().with_error_code(CLUSTER_DENIED),
        ));
    }
    let topics = &req.v3_and_below_topics;
    if !gate.allows(
        AclOperation::Write,
        ResourceType::TransactionalId,
        &req.v3_and_below_transactional_id,
    ) {
        // `errorResponseForTopics`: each topic as sent, every partition refused.
        return refuse(
            topics
                .iter()
                .map(|t| {
                    TopicResult::default()
                        .with_name(t.name.clone())
                        .with_results_by_partition(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    PartitionResult::default()
                                        .with_partition_index(*p)
                                        .with_partition_error_code(TXN_ID_DENIED)
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
    }
    // WRITE per topic name, asked once. Internal topics are never granted: Kafka leaves them
    // out of the check, so they count as refused.
    let mut refused: Vec<&TopicName> = Vec::new();
    let mut granted: Vec<&TopicName> = Vec::new();
    for t in topics {
        if refused.contains(&&t.name) || granted.contains(&&t.name) {
            continue;
        }
        if !is_internal(&t.name) && gate.allows(AclOperation::Write, ResourceType::Topic, &t.name) {
            granted.push(&t.name);
        } else {
            refused.push(&t.name);
        }
    }
    if refused.is_empty() {
        return pass(RequestKind::AddPartitionsToTxn(req));
    }
    // One result per topic (Kafka groups its error map by topic), each partition once.
    let mut results: Vec<TopicResult> = Vec::new();
    for t in topics {
        let code_of = |p: i32| {
            if refused.contains(&&t.name) {
                TOPIC_DENIED
            } else if !exists(&t.name, p) {
                ResponseError::UnknownTopicOrPartition.code()
            } else {
                ResponseError::OperationNotAttempted.code()
            }
        };
        let entry = match results.iter().position(|r| r.name == t.name) {
            Some(i) => results.get_mut(i),
            None => {
                results.push(TopicResult::default().with_name(t.name.clone()));
                results.last_mut()
            }
        };
        let Some(entry) = entry else { continue };
        for &p in &t.partitions {
            if entry
                .results_by_partition
                .iter()
                .all(|r| r.partition_index != p)
            {
                entry.results_by_partition.push(
                    PartitionResult::default()
                        .with_partition_index(p)
                        .with_partition_error_code(code_of(p)),
                );
            }
        }
    }
    refuse(results)
}

/// TxnOffsetCommit: WRITE on the transactional id, then READ on the group (either refused:
/// every partition gets the error), then READ per topic, then the replay grant for a
/// partition committed below the group's committed offset on a topic with a replay window
/// (compared with what the group has committed, not with offsets pending in transactions).
/// With no topic left Kafka answers without asking the coordinator.
fn txn_offset_commit(
    gate: &Gate<'_>,
    cluster: &dyn Cluster,
    mut req: TxnOffsetCommitRequest,
) -> Checked {
    use txn_offset_commit_response::{
        TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
    };
    let answer = |t: &txn_offset_commit_request::TxnOffsetCommitRequestTopic, code: i16| {
        TxnOffsetCommitResponseTopic::default()
            .with_name(t.name.clone())
            .with_partitions(
                t.partitions
                    .iter()
                    .map(|p| {
                        TxnOffsetCommitResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(code)
                    })
                    .collect(),
            )
    };
    let whole = if !gate.allows(
        AclOperation::Write,
        ResourceType::TransactionalId,
        &req.transactional_id,
    ) {
        Some(TXN_ID_DENIED)
    } else if !gate.allows(AclOperation::Read, ResourceType::Group, &req.group_id) {
        Some(GROUP_DENIED)
    } else {
        None
    };
    if let Some(code) = whole {
        return Checked::Refuse(ResponseKind::TxnOffsetCommit(
            TxnOffsetCommitResponse::default()
                .with_topics(req.topics.iter().map(|t| answer(t, code)).collect()),
        ));
    }
    let (ok, refused) = split(std::mem::take(&mut req.topics), |t| {
        gate.allows(AclOperation::Read, ResourceType::Topic, &t.name)
    });
    req.topics = ok;
    let member = replay::Member {
        id: &req.member_id,
        instance: req.group_instance_id.as_deref(),
        generation: req.generation_id,
    };
    let rewound =
        replay::check_commits(gate, cluster, &req.group_id, &member, true, &mut req.topics);
    let denied: Vec<_> = refused
        .iter()
        .map(|t| answer(t, TOPIC_DENIED))
        .chain(rewound.into_iter().map(|(name, partitions)| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|p| {
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(TOPIC_DENIED)
                        })
                        .collect(),
                )
        }))
        .collect();
    if req.topics.is_empty() && !denied.is_empty() {
        return Checked::Refuse(ResponseKind::TxnOffsetCommit(
            TxnOffsetCommitResponse::default().with_topics(denied),
        ));
    }
    Checked::Dispatch(
        RequestKind::TxnOffsetCommit(req),
        fixup_if(!denied.is_empty(), move |r| {
            if let ResponseKind::TxnOffsetCommit(c) = r {
                // Kafka's builder holds the refused topics first, then the coordinator's.
                c.topics.splice(0..0, denied);
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::super::groups::test_support::*;
    use super::super::replay::test_support::FakeCluster;
    use super::*;
    use AclOperation::{All, ClusterAction, Describe, IdempotentWrite, Read, Write};
    use ResourceType::{Cluster, Group, Topic};
    use shale_security::acl::ResourceType::TransactionalId as TxnId;

    /// Partitions 0-1 of every topic but "gone" exist.
    fn check(f: &Fixture, version: i16, body: RequestKind) -> Checked {
        check_request(
            &f.gate(),
            &FakeCluster::default(),
            version,
            body,
            &|t, p| t != "gone" && (0..2).contains(&p),
        )
    }

    fn tname(v: &str) -> TopicName {
        TopicName(s(v))
    }

    fn txid(v: &str) -> TransactionalId {
        TransactionalId(s(v))
    }

    fn unchanged(f: &Fixture, version: i16, body: RequestKind) {
        let Checked::Dispatch(sent, Fixup::None) = check(f, version, body.clone()) else {
            panic!("expected a plain dispatch of {body:?}")
        };
        assert_eq!(sent, body);
    }

    // InitProducerId

    fn init_refusal(f: &Fixture, req: InitProducerIdRequest) -> InitProducerIdResponse {
        let ResponseKind::InitProducerId(r) =
            refused(check(f, 4, RequestKind::InitProducerId(req)))
        else {
            panic!("wrong response type")
        };
        r
    }

    #[test]
    fn init_producer_id_for_a_transactional_id_needs_write_on_it() {
        let f = Fixture::new([allow(TxnId, "tx", Describe)]);
        let req = InitProducerIdRequest::default().with_transactional_id(Some(txid("tx")));
        let r = init_refusal(&f, req);
        assert_eq!(r.error_code, TXN_ID_DENIED);
        assert_eq!((r.producer_id, r.producer_epoch), (ProducerId(-1), -1));

        let f = Fixture::new([allow(TxnId, "tx", Write)]);
        let req = InitProducerIdRequest::default().with_transactional_id(Some(txid("tx")));
        unchanged(&f, 4, RequestKind::InitProducerId(req));
    }

    #[test]
    fn init_producer_id_for_an_idempotent_producer_needs_idempotent_write_or_write_on_a_topic() {
        // No transactional id at all (the codec's default is an empty one).
        let no_id = || InitProducerIdRequest::default().with_transactional_id(None);
        let idempotent = || RequestKind::InitProducerId(no_id());
        unchanged(
            &Fixture::new([allow(Cluster, CLUSTER_NAME, IdempotentWrite)]),
            4,
            idempotent(),
        );
        unchanged(
            &Fixture::new([allow_prefix(Topic, "orders-", Write)]),
            4,
            idempotent(),
        );

        let f = Fixture::new([allow(Topic, "orders", Read)]);
        let r = init_refusal(&f, no_id());
        assert_eq!(r.error_code, CLUSTER_DENIED);
        assert_eq!((r.producer_id, r.producer_epoch), (ProducerId(-1), -1));
        // A transactional id grants nothing to an idempotent producer.
        let f = Fixture::new([allow(TxnId, "*", All)]);
        assert_eq!(init_refusal(&f, no_id()).error_code, CLUSTER_DENIED);
    }

    #[test]
    fn init_producer_id_with_an_empty_transactional_id_is_a_transactional_one() {
        // Kafka authorizes "" as a transactional id (its coordinator then refuses it).
        let f = Fixture::new([allow_prefix(Topic, "", Write)]);
        let req = InitProducerIdRequest::default().with_transactional_id(Some(txid("")));
        assert_eq!(init_refusal(&f, req).error_code, TXN_ID_DENIED);
    }

    // AddPartitionsToTxn

    fn add_v3(txn: &str, topics: &[(&str, &[i32])]) -> AddPartitionsToTxnRequest {
        AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(txid(txn))
            .with_v3_and_below_topics(
                topics
                    .iter()
                    .map(|(n, ps)| {
                        add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                            .with_name(tname(n))
                            .with_partitions(ps.to_vec())
                    })
                    .collect(),
            )
    }

    fn add_codes(r: &ResponseKind) -> Vec<(String, i32, i16)> {
        let ResponseKind::AddPartitionsToTxn(a) = r else {
            panic!("wrong response type")
        };
        a.results_by_topic_v3_and_below
            .iter()
            .flat_map(|t| {
                t.results_by_partition.iter().map(|p| {
                    (
                        t.name.to_string(),
                        p.partition_index,
                        p.partition_error_code,
                    )
                })
            })
            .collect()
    }

    #[test]
    fn add_partitions_v3_without_write_on_the_transactional_id_fails_every_partition() {
        let f = Fixture::new([allow(Topic, "a", Write)]);
        let r = refused(check(
            &f,
            3,
            RequestKind::AddPartitionsToTxn(add_v3("tx", &[("a", &[0, 1])])),
        ));
        assert_eq!(
            add_codes(&r),
            [
                ("a".into(), 0, TXN_ID_DENIED),
                ("a".into(), 1, TXN_ID_DENIED)
            ]
        );
    }

    #[test]
    fn add_partitions_v3_with_write_on_everything_is_dispatched_unchanged() {
        let f = Fixture::new([allow(TxnId, "tx", Write), allow(Topic, "*", Write)]);
        unchanged(
            &f,
            2,
            RequestKind::AddPartitionsToTxn(add_v3("tx", &[("a", &[0]), ("b", &[1])])),
        );
    }

    #[test]
    fn add_partitions_v3_with_one_refused_topic_adds_nothing() {
        let f = Fixture::new([
            allow(TxnId, "tx", Write),
            allow(Topic, "a", Write),
            allow(Topic, "gone", Write),
        ]);
        let req = add_v3("tx", &[("a", &[0, 1]), ("secret", &[0]), ("gone", &[0])]);
        let r = refused(check(&f, 3, RequestKind::AddPartitionsToTxn(req)));
        let not_attempted = ResponseError::OperationNotAttempted.code();
        let unknown = ResponseError::UnknownTopicOrPartition.code();
        assert_eq!(
            add_codes(&r),
            [
                ("a".into(), 0, not_attempted),
                ("a".into(), 1, not_attempted),
                ("secret".into(), 0, TOPIC_DENIED),
                ("gone".into(), 0, unknown),
            ]
        );
    }

    #[test]
    fn add_partitions_v3_never_grants_internal_topics() {
        let f = Fixture::new([allow(TxnId, "tx", Write), allow(Topic, "*", All)]);
        let req = add_v3("tx", &[("__consumer_offsets", &[0])]);
        let r = refused(check(&f, 3, RequestKind::AddPartitionsToTxn(req)));
        assert_eq!(
            add_codes(&r),
            [("__consumer_offsets".into(), 0, TOPIC_DENIED)]
        );
    }

    #[test]
    fn add_partitions_v4_from_brokers_needs_cluster_action() {
        let req = AddPartitionsToTxnRequest::default().with_transactions(vec![
            add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default()
                .with_transactional_id(txid("tx"))
                .with_verify_only(true),
        ]);
        // Producer rights do not make a broker.
        let f = Fixture::new([allow(TxnId, "tx", Write), allow(Topic, "*", Write)]);
        let ResponseKind::AddPartitionsToTxn(r) =
            refused(check(&f, 4, RequestKind::AddPartitionsToTxn(req.clone())))
        else {
            panic!("wrong response type")
        };
        assert_eq!(r.error_code, CLUSTER_DENIED);
        assert!(r.results_by_transaction.is_empty());

        let f = Fixture::new([allow(Cluster, CLUSTER_NAME, ClusterAction)]);
        unchanged(&f, 5, RequestKind::AddPartitionsToTxn(req));
    }

    // AddOffsetsToTxn, EndTxn

    #[test]
    fn add_offsets_to_txn_checks_the_transactional_id_then_the_group() {
        let req = AddOffsetsToTxnRequest::default()
            .with_transactional_id(txid("tx"))
            .with_group_id(GroupId(s("g")));
        let code = |f: &Fixture| {
            let ResponseKind::AddOffsetsToTxn(r) =
                refused(check(f, 3, RequestKind::AddOffsetsToTxn(req.clone())))
            else {
                panic!("wrong response type")
            };
            r.error_code
        };
        assert_eq!(
            code(&Fixture::new([allow(Group, "g", Read)])),
            TXN_ID_DENIED
        );
        assert_eq!(
            code(&Fixture::new([allow(TxnId, "tx", Write)])),
            GROUP_DENIED
        );
        unchanged(
            &Fixture::new([allow(TxnId, "tx", Write), allow(Group, "g", Read)]),
            3,
            RequestKind::AddOffsetsToTxn(req.clone()),
        );
    }

    #[test]
    fn end_txn_needs_write_on_the_transactional_id() {
        let req = EndTxnRequest::default()
            .with_transactional_id(txid("tx"))
            .with_committed(true);
        let f = Fixture::new([allow(TxnId, "tx", Describe)]);
        let ResponseKind::EndTxn(r) = refused(check(&f, 5, RequestKind::EndTxn(req.clone())))
        else {
            panic!("wrong response type")
        };
        assert_eq!(r.error_code, TXN_ID_DENIED);
        assert_eq!((r.producer_id, r.producer_epoch), (ProducerId(-1), -1));
        unchanged(
            &Fixture::new([allow(TxnId, "tx", Write)]),
            5,
            RequestKind::EndTxn(req),
        );
    }

    // TxnOffsetCommit

    fn commit_topic(
        name: &str,
        partitions: &[i32],
    ) -> txn_offset_commit_request::TxnOffsetCommitRequestTopic {
        txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
            .with_name(tname(name))
            .with_partitions(
                partitions
                    .iter()
                    .map(|p| {
                        txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                            .with_partition_index(*p)
                    })
                    .collect(),
            )
    }

    fn commit(topics: Vec<txn_offset_commit_request::TxnOffsetCommitRequestTopic>) -> RequestKind {
        RequestKind::TxnOffsetCommit(
            TxnOffsetCommitRequest::default()
                .with_transactional_id(txid("tx"))
                .with_group_id(GroupId(s("g")))
                .with_topics(topics),
        )
    }

    fn commit_codes(r: &ResponseKind) -> Vec<(String, i32, i16)> {
        let ResponseKind::TxnOffsetCommit(c) = r else {
            panic!("wrong response type")
        };
        c.topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.name.to_string(), p.partition_index, p.error_code))
            })
            .collect()
    }

    #[test]
    fn txn_offset_commit_checks_the_transactional_id_then_the_group_for_every_partition() {
        let body = || commit(vec![commit_topic("a", &[0]), commit_topic("b", &[1])]);
        let f = Fixture::new([allow(Group, "g", Read), allow(Topic, "*", Read)]);
        assert_eq!(
            commit_codes(&refused(check(&f, 3, body()))),
            [
                ("a".into(), 0, TXN_ID_DENIED),
                ("b".into(), 1, TXN_ID_DENIED)
            ]
        );
        let f = Fixture::new([allow(TxnId, "tx", Write), allow(Topic, "*", Read)]);
        assert_eq!(
            commit_codes(&refused(check(&f, 3, body()))),
            [("a".into(), 0, GROUP_DENIED), ("b".into(), 1, GROUP_DENIED)]
        );
    }

    #[test]
    fn txn_offset_commit_commits_the_readable_topics_and_fails_the_others() {
        let f = Fixture::new([
            allow(TxnId, "tx", Write),
            allow(Group, "g", Read),
            allow(Topic, "a", Read),
        ]);
        let committed = txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
            .with_name(tname("a"))
            .with_partitions(vec![
                txn_offset_commit_response::TxnOffsetCommitResponsePartition::default(),
            ]);
        let (body, resp) = dispatched(
            check(
                &f,
                3,
                commit(vec![commit_topic("a", &[0]), commit_topic("b", &[0, 1])]),
            ),
            ResponseKind::TxnOffsetCommit(
                TxnOffsetCommitResponse::default().with_topics(vec![committed]),
            ),
        );
        assert_eq!(body, commit(vec![commit_topic("a", &[0])]));
        assert_eq!(
            commit_codes(&resp),
            [
                ("b".into(), 0, TOPIC_DENIED),
                ("b".into(), 1, TOPIC_DENIED),
                ("a".into(), 0, 0)
            ]
        );
    }

    #[test]
    fn txn_offset_commit_with_every_topic_denied_is_answered_without_the_coordinator() {
        let f = Fixture::new([allow(TxnId, "tx", Write), allow(Group, "g", Read)]);
        assert_eq!(
            commit_codes(&refused(check(
                &f,
                3,
                commit(vec![commit_topic("b", &[0])])
            ))),
            [("b".into(), 0, TOPIC_DENIED)]
        );
    }

    #[test]
    fn txn_offset_commit_backwards_on_a_windowed_topic_needs_the_replay_grant() {
        // The group has committed 50 on a-0 and nothing on a-1; both commit offset 0.
        let mut cluster = FakeCluster::default();
        cluster.windows.insert("a".into(), 60_000);
        cluster.committed.insert(("g".into(), "a".into(), 0), 50);
        let grants = [
            allow(TxnId, "tx", Write),
            allow(Group, "g", Read),
            allow(Topic, "a", Read),
        ];
        let f = Fixture::new(grants.clone());
        let body = || commit(vec![commit_topic("a", &[0, 1])]);
        let answer = |partitions: &[i32]| {
            ResponseKind::TxnOffsetCommit(TxnOffsetCommitResponse::default().with_topics(vec![
                txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                    .with_name(tname("a"))
                    .with_partitions(
                        partitions
                            .iter()
                            .map(|p| {
                                txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                                    .with_partition_index(*p)
                            })
                            .collect(),
                    ),
            ]))
        };
        let (sent, resp) = dispatched(
            check_request(&f.gate(), &cluster, 3, body(), &|_, _| true),
            answer(&[1]),
        );
        assert_eq!(sent, commit(vec![commit_topic("a", &[1])]));
        assert_eq!(
            commit_codes(&resp),
            [("a".into(), 0, TOPIC_DENIED), ("a".into(), 1, 0)]
        );
        let granted = Fixture::new(grants.into_iter().chain([allow(Topic, "__replay.a", Read)]));
        let (sent, _) = dispatched(
            check_request(&granted.gate(), &cluster, 3, body(), &|_, _| true),
            answer(&[0, 1]),
        );
        assert_eq!(sent, body());
    }

    // DescribeTransactions, ListTransactions

    #[test]
    fn describe_transactions_answers_denied_ids_and_hides_undescribable_topics() {
        use describe_transactions_response::{TopicData, TransactionState};
        let f = Fixture::new([allow(TxnId, "mine", Describe), allow(Topic, "a", Describe)]);
        let req = DescribeTransactionsRequest::default()
            .with_transactional_ids(vec![txid("mine"), txid("theirs")]);
        let described = TransactionState::default()
            .with_transactional_id(txid("mine"))
            .with_transaction_state(s("Ongoing"))
            .with_topics(vec![
                TopicData::default()
                    .with_topic(tname("a"))
                    .with_partitions(vec![0]),
                TopicData::default()
                    .with_topic(tname("b"))
                    .with_partitions(vec![1]),
            ]);
        let (body, resp) = dispatched(
            check(&f, 0, RequestKind::DescribeTransactions(req)),
            ResponseKind::DescribeTransactions(
                DescribeTransactionsResponse::default().with_transaction_states(vec![described]),
            ),
        );
        let RequestKind::DescribeTransactions(sent) = body else {
            panic!("wrong request type")
        };
        assert_eq!(sent.transactional_ids, vec![txid("mine")]);
        let ResponseKind::DescribeTransactions(r) = resp else {
            panic!("wrong response type")
        };
        let states: Vec<_> = r
            .transaction_states
            .iter()
            .map(|t| {
                (
                    t.transactional_id.to_string(),
                    t.error_code,
                    t.topics
                        .iter()
                        .map(|d| d.topic.to_string())
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            states,
            [
                ("mine".into(), 0, vec!["a".to_string()]),
                ("theirs".into(), TXN_ID_DENIED, vec![])
            ]
        );
    }

    #[test]
    fn describe_transactions_with_every_id_denied_never_reaches_the_handler() {
        let f = Fixture::new([]);
        let req = DescribeTransactionsRequest::default().with_transactional_ids(vec![txid("x")]);
        let ResponseKind::DescribeTransactions(r) =
            refused(check(&f, 0, RequestKind::DescribeTransactions(req)))
        else {
            panic!("wrong response type")
        };
        assert_eq!(r.transaction_states.len(), 1);
        assert_eq!(r.transaction_states[0].error_code, TXN_ID_DENIED);
    }

    #[test]
    fn list_transactions_lists_only_the_describable_ids() {
        use list_transactions_response::TransactionState;
        let f = Fixture::new([allow_prefix(TxnId, "app-", Write)]);
        let listed = |ids: &[&str]| {
            ListTransactionsResponse::default().with_transaction_states(
                ids.iter()
                    .map(|id| TransactionState::default().with_transactional_id(txid(id)))
                    .collect(),
            )
        };
        let (_, resp) = dispatched(
            check(
                &f,
                1,
                RequestKind::ListTransactions(ListTransactionsRequest::default()),
            ),
            ResponseKind::ListTransactions(listed(&["app-1", "other", "app-2"])),
        );
        assert_eq!(
            resp,
            ResponseKind::ListTransactions(listed(&["app-1", "app-2"]))
        );
    }

    // DescribeProducers

    fn producers_req(topics: &[&str]) -> DescribeProducersRequest {
        DescribeProducersRequest::default().with_topics(
            topics
                .iter()
                .map(|n| {
                    describe_producers_request::TopicRequest::default()
                        .with_name(tname(n))
                        .with_partition_indexes(vec![0, 1])
                })
                .collect(),
        )
    }

    #[test]
    fn describe_producers_describes_readable_topics_and_fails_the_others_with_kafkas_message() {
        use describe_producers_response::TopicResponse;
        let f = Fixture::new([allow(Topic, "a", Read)]);
        let (body, resp) = dispatched(
            check(
                &f,
                0,
                RequestKind::DescribeProducers(producers_req(&["a", "b"])),
            ),
            ResponseKind::DescribeProducers(
                DescribeProducersResponse::default()
                    .with_topics(vec![TopicResponse::default().with_name(tname("a"))]),
            ),
        );
        assert_eq!(body, RequestKind::DescribeProducers(producers_req(&["a"])));
        let ResponseKind::DescribeProducers(r) = resp else {
            panic!("wrong response type")
        };
        assert_eq!(r.topics.len(), 2);
        let b = &r.topics[1];
        assert_eq!(b.name.as_str(), "b");
        let parts: Vec<_> = b
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.error_code, p.error_message.as_deref()))
            .collect();
        let message = Some("Topic authorization failed.");
        assert_eq!(
            parts,
            [(0, TOPIC_DENIED, message), (1, TOPIC_DENIED, message)]
        );
    }

    #[test]
    fn describe_producers_with_every_topic_denied_never_reaches_the_handler() {
        let f = Fixture::new([allow(Topic, "a", Describe)]);
        let ResponseKind::DescribeProducers(r) = refused(check(
            &f,
            0,
            RequestKind::DescribeProducers(producers_req(&["a"])),
        )) else {
            panic!("wrong response type")
        };
        assert!(
            r.topics[0]
                .partitions
                .iter()
                .all(|p| p.error_code == TOPIC_DENIED)
        );
    }

    #[test]
    fn describe_producers_leaves_invalid_topic_names_to_the_handler_as_kafka_validates_first() {
        let f = Fixture::new([]);
        unchanged(
            &f,
            0,
            RequestKind::DescribeProducers(producers_req(&["bad name!"])),
        );
    }
}
