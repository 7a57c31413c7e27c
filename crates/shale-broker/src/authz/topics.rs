//! Topic APIs: produce (WRITE), fetch (READ, and READ on `__replay.<topic>` to fetch from
//! before a topic's replay window: `replay`), metadata and offsets (DESCRIBE), topic
//! administration (CREATE, DELETE, ALTER) and configs (DESCRIBE_CONFIGS, ALTER_CONFIGS),
//! with TOPIC_AUTHORIZATION_FAILED per denied topic as Kafka answers.

use super::replay::{self, BrokerCluster};
use super::{Checked, Fixup, Gate};
use crate::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use shale_security::acl::{AclOperation, ResourceType};
use std::sync::Arc;

const TOPIC_DENIED: i16 = ResponseError::TopicAuthorizationFailed.code();
const CLUSTER_DENIED: i16 = ResponseError::ClusterAuthorizationFailed.code();

/// Config resource types of Describe/Alter/IncrementalAlterConfigs (Kafka's
/// `ConfigResource.Type`).
const CONFIG_TOPIC: i8 = 2;
const CONFIG_BROKER: i8 = 4;
const CONFIG_BROKER_LOGGER: i8 = 8;

fn topic_name_by_id(broker: &Broker, id: uuid::Uuid) -> Option<String> {
    let id = *id.as_bytes();
    broker.meta.read(|s| {
        s.topics
            .values()
            .find(|t| t.id == id)
            .map(|t| t.name.clone())
    })
}

/// Splits `items` into those `allowed` keeps and those it refuses.
fn split<T>(items: Vec<T>, mut allowed: impl FnMut(&T) -> bool) -> (Vec<T>, Vec<T>) {
    items.into_iter().partition(|t| allowed(t))
}

pub(super) fn check(
    broker: &Arc<Broker>,
    gate: &Gate<'_>,
    version: i16,
    body: RequestKind,
) -> Checked {
    use RequestKind as R;
    let topic = |op: AclOperation, name: &str| gate.allows(op, ResourceType::Topic, name);
    match body {
        R::Produce(mut req) => {
            if let Some(txn) = req.transactional_id.as_ref()
                && !gate.allows(AclOperation::Write, ResourceType::TransactionalId, txn)
            {
                let code = ResponseError::TransactionalIdAuthorizationFailed.code();
                let responses = req
                    .topic_data
                    .iter()
                    .map(|t| produce_denied(t, code))
                    .collect();
                // acks=0 gets no answer, denied or not.
                // acks=0 has no answer to carry the error: Kafka closes the connection so the
                // client notices.
                return if req.acks == 0 {
                    Checked::Close
                } else {
                    Checked::Refuse(ResponseKind::Produce(
                        ProduceResponse::default().with_responses(responses),
                    ))
                };
            }
            let (ok, denied) = split(std::mem::take(&mut req.topic_data), |t| {
                topic(AclOperation::Write, &t.name)
            });
            if req.acks == 0 && !denied.is_empty() {
                return Checked::Close;
            }
            req.topic_data = ok;
            let denied: Vec<_> = denied
                .iter()
                .map(|t| produce_denied(t, TOPIC_DENIED))
                .collect();
            Checked::Dispatch(
                R::Produce(req),
                fixup_if(!denied.is_empty(), move |r| {
                    if let ResponseKind::Produce(p) = r {
                        p.responses.extend(denied);
                    }
                }),
            )
        }
        R::Fetch(mut req) => {
            let name_of = |t: &fetch_request::FetchTopic| {
                if version >= 13 {
                    topic_name_by_id(broker, t.topic_id)
                } else {
                    Some(t.topic.to_string())
                }
            };
            // An unknown topic id is the handler's to answer (UNKNOWN_TOPIC_ID).
            let (ok, denied) = split(std::mem::take(&mut req.topics), |t| {
                name_of(t).is_none_or(|n| topic(AclOperation::Read, &n))
            });
            req.topics = ok;
            // Then history: partitions asked from before their topic's replay window.
            let replayed =
                replay::check_fetch(gate, &BrokerCluster(broker), &mut req.topics, name_of);
            let denied: Vec<fetch_response::FetchableTopicResponse> = denied
                .into_iter()
                .map(|t| {
                    fetch_response::FetchableTopicResponse::default()
                        .with_topic(t.topic)
                        .with_topic_id(t.topic_id)
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    fetch_response::PartitionData::default()
                                        .with_partition_index(p.partition)
                                        .with_error_code(TOPIC_DENIED)
                                        .with_high_watermark(-1)
                                        .with_last_stable_offset(-1)
                                        .with_log_start_offset(-1)
                                })
                                .collect(),
                        )
                })
                .chain(replayed)
                .collect();
            let fixup = if denied.is_empty() {
                Fixup::None
            } else {
                Fixup::Fetch(Box::new(move |f| f.responses.extend(denied)))
            };
            Checked::Dispatch(R::Fetch(req), fixup)
        }
        R::Metadata(req) => metadata(broker, gate, version, req),
        R::ListOffsets(mut req) => {
            let (ok, denied) = split(std::mem::take(&mut req.topics), |t| {
                topic(AclOperation::Describe, &t.name)
            });
            req.topics = ok;
            for t in &req.topics {
                let partitions = t.partitions.iter().map(|p| p.partition_index);
                replay::prepare(&BrokerCluster(broker), &t.name, partitions);
            }
            let denied: Vec<_> = denied
                .into_iter()
                .map(|t| {
                    list_offsets_response::ListOffsetsTopicResponse::default()
                        .with_name(t.name)
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    list_offsets_response::ListOffsetsPartitionResponse::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(TOPIC_DENIED)
                                        .with_timestamp(-1)
                                        .with_offset(-1)
                                        .with_leader_epoch(-1)
                                })
                                .collect(),
                        )
                })
                .collect();
            Checked::Dispatch(
                R::ListOffsets(req),
                fixup_if(!denied.is_empty(), move |r| {
                    if let ResponseKind::ListOffsets(l) = r {
                        l.topics.extend(denied);
                    }
                }),
            )
        }
        R::OffsetForLeaderEpoch(mut req) => {
            let (ok, denied) = split(std::mem::take(&mut req.topics), |t| {
                topic(AclOperation::Describe, &t.topic)
            });
            req.topics = ok;
            for t in &req.topics {
                let partitions = t.partitions.iter().map(|p| p.partition);
                replay::prepare(&BrokerCluster(broker), &t.topic, partitions);
            }
            let denied: Vec<_> = denied
                .into_iter()
                .map(|t| {
                    offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                        .with_topic(t.topic)
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    offset_for_leader_epoch_response::EpochEndOffset::default()
                                        .with_partition(p.partition)
                                        .with_error_code(TOPIC_DENIED)
                                        .with_leader_epoch(-1)
                                        .with_end_offset(-1)
                                })
                                .collect(),
                        )
                })
                .collect();
            Checked::Dispatch(
                R::OffsetForLeaderEpoch(req),
                fixup_if(!denied.is_empty(), move |r| {
                    if let ResponseKind::OffsetForLeaderEpoch(o) = r {
                        o.topics.extend(denied);
                    }
                }),
            )
        }
        R::DeleteRecords(mut req) => {
            let (ok, denied) = split(std::mem::take(&mut req.topics), |t| {
                topic(AclOperation::Delete, &t.name)
            });
            req.topics = ok;
            let denied: Vec<_> = denied
                .into_iter()
                .map(|t| {
                    delete_records_response::DeleteRecordsTopicResult::default()
                        .with_name(t.name)
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    delete_records_response::DeleteRecordsPartitionResult::default()
                                        .with_partition_index(p.partition_index)
                                        .with_low_watermark(-1)
                                        .with_error_code(TOPIC_DENIED)
                                })
                                .collect(),
                        )
                })
                .collect();
            Checked::Dispatch(
                R::DeleteRecords(req),
                fixup_if(!denied.is_empty(), move |r| {
                    if let ResponseKind::DeleteRecords(d) = r {
                        d.topics.extend(denied);
                    }
                }),
            )
        }
        R::CreateTopics(mut req) => {
            // CREATE on the cluster covers every topic; otherwise each topic needs its own.
            if gate.allows_cluster(AclOperation::Create) {
                return Checked::Dispatch(R::CreateTopics(req), Fixup::None);
            }
            let (ok, denied) = split(std::mem::take(&mut req.topics), |t| {
                topic(AclOperation::Create, &t.name)
            });
            req.topics = ok;
            let denied: Vec<_> = denied
                .into_iter()
                .map(|t| {
                    create_topics_response::CreatableTopicResult::default()
                        .with_name(t.name)
                        .with_error_code(TOPIC_DENIED)
                        .with_error_message(Some(StrBytes::from_static_str(
                            "Authorization failed.",
                        )))
                        .with_topic_config_error_code(TOPIC_DENIED)
                        .with_num_partitions(-1)
                        .with_replication_factor(-1)
                })
                .collect();
            Checked::Dispatch(
                R::CreateTopics(req),
                fixup_if(!denied.is_empty(), move |r| {
                    if let ResponseKind::CreateTopics(c) = r {
                        c.topics.extend(denied);
                    }
                }),
            )
        }
        R::DeleteTopics(mut req) => {
            let mut denied = Vec::new();
            if version >= 6 {
                let topics = std::mem::take(&mut req.topics);
                for t in topics {
                    let name = match &t.name {
                        Some(n) => Some(n.to_string()),
                        None => topic_name_by_id(broker, t.topic_id),
                    };
                    if name
                        .as_deref()
                        .is_none_or(|n| topic(AclOperation::Delete, n))
                    {
                        req.topics.push(t);
                    } else {
                        denied.push(
                            delete_topics_response::DeletableTopicResult::default()
                                .with_name(t.name)
                                .with_topic_id(t.topic_id)
                                .with_error_code(TOPIC_DENIED),
                        );
                    }
                }
            } else {
                let (ok, refused) = split(std::mem::take(&mut req.topic_names), |n| {
                    topic(AclOperation::Delete, n)
                });
                req.topic_names = ok;
                denied = refused
                    .into_iter()
                    .map(|n| {
                        delete_topics_response::DeletableTopicResult::default()
                            .with_name(Some(n))
                            .with_error_code(TOPIC_DENIED)
                    })
                    .collect();
            }
            Checked::Dispatch(
                R::DeleteTopics(req),
                fixup_if(!denied.is_empty(), move |r| {
                    if let ResponseKind::DeleteTopics(d) = r {
                        d.responses.extend(denied);
                    }
                }),
            )
        }
        R::CreatePartitions(mut req) => {
            let (ok, denied) = split(std::mem::take(&mut req.topics), |t| {
                topic(AclOperation::Alter, &t.name)
            });
            req.topics = ok;
            let denied: Vec<_> = denied
                .into_iter()
                .map(|t| {
                    create_partitions_response::CreatePartitionsTopicResult::default()
                        .with_name(t.name)
                        .with_error_code(TOPIC_DENIED)
                })
                .collect();
            Checked::Dispatch(
                R::CreatePartitions(req),
                fixup_if(!denied.is_empty(), move |r| {
                    if let ResponseKind::CreatePartitions(c) = r {
                        c.results.extend(denied);
                    }
                }),
            )
        }
        R::DescribeConfigs(mut req) => {
            let (ok, denied) = split(std::mem::take(&mut req.resources), |r| {
                config_allowed(
                    gate,
                    AclOperation::DescribeConfigs,
                    r.resource_type,
                    &r.resource_name,
                )
            });
            req.resources = ok;
            let denied: Vec<_> = denied
                .into_iter()
                .map(|r| {
                    describe_configs_response::DescribeConfigsResult::default()
                        .with_error_code(config_denied_code(r.resource_type))
                        .with_resource_type(r.resource_type)
                        .with_resource_name(r.resource_name)
                })
                .collect();
            Checked::Dispatch(
                R::DescribeConfigs(req),
                fixup_if(!denied.is_empty(), move |r| {
                    if let ResponseKind::DescribeConfigs(d) = r {
                        d.results.extend(denied);
                    }
                }),
            )
        }
        R::AlterConfigs(mut req) => {
            let (ok, denied) = split(std::mem::take(&mut req.resources), |r| {
                config_allowed(
                    gate,
                    AclOperation::AlterConfigs,
                    r.resource_type,
                    &r.resource_name,
                )
            });
            req.resources = ok;
            let denied: Vec<_> = denied
                .into_iter()
                .map(|r| {
                    alter_configs_response::AlterConfigsResourceResponse::default()
                        .with_error_code(config_denied_code(r.resource_type))
                        .with_resource_type(r.resource_type)
                        .with_resource_name(r.resource_name)
                })
                .collect();
            Checked::Dispatch(
                R::AlterConfigs(req),
                fixup_if(!denied.is_empty(), move |r| {
                    if let ResponseKind::AlterConfigs(a) = r {
                        a.responses.extend(denied);
                    }
                }),
            )
        }
        R::IncrementalAlterConfigs(mut req) => {
            let (ok, denied) = split(std::mem::take(&mut req.resources), |r| {
                config_allowed(
                    gate,
                    AclOperation::AlterConfigs,
                    r.resource_type,
                    &r.resource_name,
                )
            });
            req.resources = ok;
            let denied: Vec<_> = denied
                .into_iter()
                .map(|r| {
                    incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                        .with_error_code(config_denied_code(r.resource_type))
                        .with_resource_type(r.resource_type)
                        .with_resource_name(r.resource_name)
                })
                .collect();
            Checked::Dispatch(
                R::IncrementalAlterConfigs(req),
                fixup_if(!denied.is_empty(), move |r| {
                    if let ResponseKind::IncrementalAlterConfigs(a) = r {
                        a.responses.extend(denied);
                    }
                }),
            )
        }
        other => Checked::Dispatch(other, Fixup::None),
    }
}

fn fixup_if(any: bool, f: impl FnOnce(&mut ResponseKind) + Send + 'static) -> Fixup {
    if any { Fixup::response(f) } else { Fixup::None }
}

fn produce_denied(
    t: &produce_request::TopicProduceData,
    code: i16,
) -> produce_response::TopicProduceResponse {
    produce_response::TopicProduceResponse::default()
        .with_name(t.name.clone())
        .with_topic_id(t.topic_id)
        .with_partition_responses(
            t.partition_data
                .iter()
                .map(|p| {
                    produce_response::PartitionProduceResponse::default()
                        .with_index(p.index)
                        .with_error_code(code)
                        .with_base_offset(-1)
                        .with_log_append_time_ms(-1)
                        .with_log_start_offset(-1)
                })
                .collect(),
        )
}

/// Topic configs need the operation on the topic; broker configs on the cluster.
fn config_allowed(gate: &Gate<'_>, op: AclOperation, resource_type: i8, name: &str) -> bool {
    match resource_type {
        CONFIG_TOPIC => gate.allows(op, ResourceType::Topic, name),
        CONFIG_BROKER | CONFIG_BROKER_LOGGER => gate.allows_cluster(op),
        // Other resource types (groups, client metrics) are the handler's to refuse.
        _ => gate.allows_cluster(op),
    }
}

fn config_denied_code(resource_type: i8) -> i16 {
    if resource_type == CONFIG_TOPIC {
        TOPIC_DENIED
    } else {
        CLUSTER_DENIED
    }
}

/// Operations Metadata reports per topic and for the cluster when asked
/// (`include_*_authorized_operations`): Kafka's lists, as bit fields of operation codes.
const TOPIC_OPERATIONS: &[AclOperation] = &[
    AclOperation::Read,
    AclOperation::Write,
    AclOperation::Create,
    AclOperation::Delete,
    AclOperation::Alter,
    AclOperation::Describe,
    AclOperation::DescribeConfigs,
    AclOperation::AlterConfigs,
];
pub(super) const CLUSTER_OPERATIONS: &[AclOperation] = &[
    AclOperation::Create,
    AclOperation::Alter,
    AclOperation::Describe,
    AclOperation::ClusterAction,
    AclOperation::DescribeConfigs,
    AclOperation::AlterConfigs,
    AclOperation::IdempotentWrite,
    AclOperation::CreateTokens,
    AclOperation::DescribeTokens,
];

/// The cluster operations a principal may do, as Metadata and DescribeCluster report them:
/// 0 without DESCRIBE on the cluster (Kafka's rule).
pub(super) fn cluster_operations(gate: &Gate<'_>) -> i32 {
    if !gate.may_see(
        AclOperation::Describe,
        ResourceType::Cluster,
        super::CLUSTER_NAME,
    ) {
        return 0;
    }
    authorized_operations(
        gate,
        CLUSTER_OPERATIONS,
        ResourceType::Cluster,
        super::CLUSTER_NAME,
    )
}

/// The bit field of `ops` the principal may do on a resource.
pub(super) fn authorized_operations(
    gate: &Gate<'_>,
    ops: &[AclOperation],
    rt: ResourceType,
    name: &str,
) -> i32 {
    ops.iter()
        .filter(|op| gate.may_see(**op, rt, name))
        .fold(0i32, |bits, op| bits | (1 << op.code()))
}

/// Metadata: every topic the principal may DESCRIBE (all-topics requests leave the others
/// out), TOPIC_AUTHORIZATION_FAILED for named ones it may not describe, and for missing ones
/// it may not create (CREATE on the cluster or the topic), as Kafka answers: those never
/// reach the handler, which would create them.
fn metadata(broker: &Broker, gate: &Gate<'_>, version: i16, mut req: MetadataRequest) -> Checked {
    let mut denied: Vec<metadata_response::MetadataResponseTopic> = Vec::new();
    // v0 has no null: an empty list means every topic.
    let all_topics = match &req.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    // Below v4 a request cannot turn auto-creation off; from v4 it says.
    let may_create =
        broker.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    // The topics a named request still asks for once the denied ones are taken out.
    let mut asked: Option<Vec<(Option<String>, uuid::Uuid)>> = None;
    if !all_topics && let Some(topics) = req.topics.take() {
        let mut kept = Vec::with_capacity(topics.len());
        let cluster_create = may_create
            && gate.may_see(
                AclOperation::Create,
                ResourceType::Cluster,
                super::CLUSTER_NAME,
            );
        let deny = |t: &metadata_request::MetadataRequestTopic| {
            metadata_response::MetadataResponseTopic::default()
                .with_error_code(TOPIC_DENIED)
                .with_name(t.name.clone())
                .with_topic_id(t.topic_id)
                .with_topic_authorized_operations(i32::MIN)
        };
        for t in topics {
            let name = match &t.name {
                Some(n) => Some(n.to_string()),
                None => topic_name_by_id(broker, t.topic_id),
            };
            match name {
                Some(n) if !gate.allows(AclOperation::Describe, ResourceType::Topic, &n) => {
                    denied.push(deny(&t));
                }
                Some(n)
                    if may_create
                        && !cluster_create
                        && !broker.meta.read(|s| s.topics.contains_key(&n))
                        && !gate.allows(AclOperation::Create, ResourceType::Topic, &n) =>
                {
                    denied.push(deny(&t));
                }
                _ => kept.push(t),
            }
        }
        asked = Some(
            kept.iter()
                .map(|t| (t.name.as_ref().map(|n| n.to_string()), t.topic_id))
                .collect::<Vec<_>>(),
        );
        req.topics = Some(kept);
    }
    let want_topic_ops = req.include_topic_authorized_operations;
    let want_cluster_ops = req.include_cluster_authorized_operations;
    let cluster_ops = want_cluster_ops.then(|| cluster_operations(gate));
    // The fixup runs after the handler, on the same authorizer snapshot.
    let authorizer = gate.authorizer.clone();
    let ctx = gate.ctx.clone();
    let api = gate.api;
    let version = gate.version;
    let auditor = gate.auditor.clone();
    Checked::Dispatch(
        RequestKind::Metadata(req),
        Fixup::response(move |r| {
            let ResponseKind::Metadata(m) = r else { return };
            let gate = Gate {
                authorizer,
                ctx: &ctx,
                api,
                version,
                auditor,
            };
            // Every answer is filtered, not only all-topics ones: a v0 request whose named
            // topics were all denied reaches the handler empty, which v0 reads as "all".
            m.topics.retain(|t| {
                let visible = t
                    .name
                    .as_ref()
                    .is_none_or(|n| gate.may_see(AclOperation::Describe, ResourceType::Topic, n));
                let was_asked = asked.as_ref().is_none_or(|a| {
                    a.iter().any(|(name, id)| {
                        name.as_deref() == t.name.as_deref().map(|v| &**v)
                            || (!id.is_nil() && *id == t.topic_id)
                    })
                });
                visible && was_asked
            });
            if want_topic_ops {
                for t in m.topics.iter_mut().filter(|t| t.error_code == 0) {
                    if let Some(n) = &t.name {
                        t.topic_authorized_operations =
                            authorized_operations(&gate, TOPIC_OPERATIONS, ResourceType::Topic, n);
                    }
                }
            }
            if let Some(ops) = cluster_ops {
                m.cluster_authorized_operations = ops;
            }
            m.topics.extend(denied);
        }),
    )
}
