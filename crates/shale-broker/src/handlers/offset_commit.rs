//! Committed offsets: OffsetCommit (answered once durable in `__consumer_offsets`),
//! OffsetFetch (one group before v8, many from v8) and OffsetDelete.

use crate::Broker;
use crate::groups::{CommitPartition, CommitRequest};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use std::sync::Arc;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// Whether the topic-partition exists (Kafka answers UNKNOWN_TOPIC_OR_PARTITION otherwise).
fn partition_exists(broker: &Broker, topic: &str, partition: i32) -> bool {
    broker.meta.read(|st| {
        st.topics
            .get(topic)
            .is_some_and(|t| usize::try_from(partition).is_ok_and(|p| p < t.partitions.len()))
    })
}

/// Starts an OffsetCommit in request order (validation and append happen now) and returns
/// the part that waits for durability.
pub fn offset_commit(
    broker: &Arc<Broker>,
    version: i16,
    req: OffsetCommitRequest,
) -> impl std::future::Future<Output = OffsetCommitResponse> + Send + 'static {
    // (topic, partition, known)
    let mut slots: Vec<(String, i32, bool)> = Vec::new();
    let mut partitions = Vec::new();
    for t in &req.topics {
        let topic = t.name.0.to_string();
        for p in &t.partitions {
            let known = partition_exists(broker, &topic, p.partition_index);
            slots.push((topic.clone(), p.partition_index, known));
            if known {
                partitions.push(CommitPartition {
                    topic: topic.clone(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                });
            }
        }
    }
    let commit = CommitRequest {
        group_id: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        instance_id: if version >= 7 {
            req.group_instance_id.as_ref().map(|i| i.to_string())
        } else {
            None
        },
        generation: req.generation_id_or_member_epoch,
        retention_ms: if (2..=4).contains(&version) {
            req.retention_time_ms
        } else {
            -1
        },
        partitions,
        unknown_group_error: if version >= 9 {
            ResponseError::GroupIdNotFound
        } else {
            ResponseError::IllegalGeneration
        },
    };
    let pending = if commit.partitions.is_empty() {
        None
    } else {
        Some(broker.groups.commit_start(commit))
    };
    async move {
        let codes = match pending {
            Some(p) => p.finish().await,
            None => Vec::new(),
        };
        let mut codes = codes.into_iter();
        let mut topics: Vec<OffsetCommitResponseTopic> = Vec::new();
        for (topic, partition, known) in slots {
            let code = if known {
                codes
                    .next()
                    .unwrap_or(ResponseError::UnknownServerError.code())
            } else {
                ResponseError::UnknownTopicOrPartition.code()
            };
            let part = OffsetCommitResponsePartition::default()
                .with_partition_index(partition)
                .with_error_code(code);
            match topics.last_mut() {
                Some(t) if *t.name.0 == *topic => t.partitions.push(part),
                _ => topics.push(
                    OffsetCommitResponseTopic::default()
                        .with_name(TopicName(s(topic)))
                        .with_partitions(vec![part]),
                ),
            }
        }
        OffsetCommitResponse::default().with_topics(topics)
    }
}

/// Offsets of one group as (topic, [(partition, offset, leader epoch, metadata, error)]).
type Fetched = Vec<(String, Vec<(i32, i64, i32, String, i16)>)>;

/// A group's committed offsets. With `require_stable` (v7+, read_committed consumers), an
/// offset an open transaction has committed anew is UNSTABLE_OFFSET_COMMIT until the
/// transaction ends, as in Kafka: the consumer retries rather than start from a stale one.
fn fetch_group(
    broker: &Broker,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> Result<Fetched, ResponseError> {
    let found = broker.groups.fetch_offsets(group, topics)?;
    Ok(found
        .into_iter()
        .map(|(t, parts)| {
            let parts = parts
                .into_iter()
                .map(|(p, v)| {
                    if require_stable && broker.groups.has_pending_txn_offset(group, &t, p) {
                        return (
                            p,
                            -1,
                            -1,
                            String::new(),
                            ResponseError::UnstableOffsetCommit.code(),
                        );
                    }
                    match v {
                        Some(v) => (p, v.offset, v.leader_epoch, v.metadata, 0),
                        None => (p, -1, -1, String::new(), 0),
                    }
                })
                .collect();
            (t, parts)
        })
        .collect())
}

pub async fn offset_fetch(
    broker: &Arc<Broker>,
    version: i16,
    req: OffsetFetchRequest,
) -> OffsetFetchResponse {
    if version >= 8 {
        let groups = req
            .groups
            .iter()
            .map(|g| {
                let topics = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                        .collect()
                });
                let out = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
                match fetch_group(broker, &g.group_id.0, topics, req.require_stable) {
                    Err(e) => out.with_error_code(e.code()),
                    Ok(found) => out.with_topics(
                        found
                            .into_iter()
                            .map(|(t, parts)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(TopicName(s(t)))
                                    .with_partitions(
                                        parts
                                            .into_iter()
                                            .map(|(p, o, e, m, c)| {
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(p)
                                                    .with_committed_offset(o)
                                                    .with_committed_leader_epoch(e)
                                                    .with_metadata(Some(s(m)))
                                                    .with_error_code(c)
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    ),
                }
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    // v1 cannot ask for "all partitions"; a null list there means none.
    let requested: Option<Vec<(String, Vec<i32>)>> = req.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
            .collect()
    });
    let requested = if version < 2 {
        Some(requested.unwrap_or_default())
    } else {
        requested
    };
    let (found, error) = match fetch_group(
        broker,
        &req.group_id.0,
        requested.clone(),
        req.require_stable,
    ) {
        Ok(f) => (f, 0),
        Err(e) if version < 2 => {
            // v1 has no group-level error: every partition carries it.
            let f = requested
                .unwrap_or_default()
                .into_iter()
                .map(|(t, ps)| {
                    (
                        t,
                        ps.into_iter()
                            .map(|p| (p, -1, -1, String::new(), e.code()))
                            .collect(),
                    )
                })
                .collect();
            (f, 0)
        }
        Err(e) => (Vec::new(), e.code()),
    };
    let topics = found
        .into_iter()
        .map(|(t, parts)| {
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(s(t)))
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|(p, o, e, m, c)| {
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(o)
                                .with_committed_leader_epoch(e)
                                .with_metadata(Some(s(m)))
                                .with_error_code(c)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default()
        .with_topics(topics)
        .with_error_code(error)
}

pub async fn offset_delete(
    broker: &Arc<Broker>,
    _version: i16,
    req: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let mut unknown: Vec<(String, Vec<i32>)> = Vec::new();
    let mut known: Vec<(String, Vec<i32>)> = Vec::new();
    for t in &req.topics {
        let name = t.name.0.to_string();
        let (k, u): (Vec<i32>, Vec<i32>) = t
            .partitions
            .iter()
            .map(|p| p.partition_index)
            .partition(|p| partition_exists(broker, &name, *p));
        if !k.is_empty() {
            known.push((name.clone(), k));
        }
        if !u.is_empty() {
            unknown.push((name, u));
        }
    }
    let result = broker.groups.delete_offsets(&req.group_id.0, known).await;
    let mut per_topic = match result {
        Err(e) => return OffsetDeleteResponse::default().with_error_code(e.code()),
        Ok(r) => r,
    };
    per_topic.extend(unknown.into_iter().map(|(t, ps)| {
        (
            t,
            ps.into_iter()
                .map(|p| (p, ResponseError::UnknownTopicOrPartition.code()))
                .collect(),
        )
    }));
    let topics = per_topic
        .into_iter()
        .map(|(t, parts)| {
            OffsetDeleteResponseTopic::default()
                .with_name(TopicName(s(t)))
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|(p, c)| {
                            OffsetDeleteResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(c)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}
