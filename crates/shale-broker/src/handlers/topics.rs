//! CreateTopics, DeleteTopics, CreatePartitions, and the topic creation shared with
//! Metadata's auto-creation.

use crate::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse,
};
use shale_meta::{MetaError, TopicCommand};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Kafka's topic name rules: 1..=249 chars of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("topic name is empty");
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be '.' or '..'");
    }
    if name.len() > 249 {
        return Err("topic name is longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err("topic name contains characters other than ASCII alphanumerics, '.', '_' and '-'");
    }
    Ok(())
}

pub(crate) fn meta_error(e: MetaError) -> (ResponseError, String) {
    let code = match &e {
        MetaError::TopicExists(_) => ResponseError::TopicAlreadyExists,
        MetaError::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition,
        MetaError::InvalidPartitions { .. } => ResponseError::InvalidPartitions,
        MetaError::Unavailable(_) => ResponseError::RequestTimedOut,
    };
    (code, e.to_string())
}

/// Creates a topic owned by this node and opens its partitions.
pub(crate) async fn create_topic(
    broker: &Broker,
    name: &str,
    partitions: i32,
    configs: BTreeMap<String, String>,
) -> Result<(), (ResponseError, String)> {
    validate_name(name).map_err(|m| (ResponseError::InvalidTopicException, m.to_string()))?;
    if partitions < 1 {
        return Err((
            ResponseError::InvalidPartitions,
            "Number of partitions must be larger than 0.".into(),
        ));
    }
    broker
        .meta
        .write(TopicCommand::CreateTopic {
            name: name.to_string(),
            id: *uuid::Uuid::new_v4().as_bytes(),
            partitions: partitions as u32,
            configs,
            owner: broker.config.node_id as u64,
            now_ms: crate::now_ms(),
        })
        .await
        .map_err(meta_error)?;
    open_topic_partitions(broker, name).await;
    Ok(())
}

/// Opens the partitions of a topic that this node owns (after creation or growth), so their
/// leader epochs are fixed before any client sees them.
pub(crate) async fn open_topic_partitions(broker: &Broker, name: &str) {
    let me = broker.config.node_id as u64;
    let ids: Vec<u64> = broker.meta.read(|s| {
        s.topics
            .get(name)
            .map(|t| {
                t.partitions
                    .iter()
                    .filter(|p| p.owner == me)
                    .map(|p| p.stream_id)
                    .collect()
            })
            .unwrap_or_default()
    });
    for id in ids {
        if let Err(e) = broker.open_stream(id).await {
            tracing::warn!(topic = name, stream = id, error = %e, "cannot open partition");
        }
    }
}

pub async fn create_topics(
    broker: &Arc<Broker>,
    version: i16,
    req: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let _ = (broker, version, req);
    CreateTopicsResponse::default()
}

pub async fn delete_topics(
    broker: &Arc<Broker>,
    version: i16,
    req: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let _ = (broker, version, req);
    DeleteTopicsResponse::default()
}

pub async fn create_partitions(
    broker: &Arc<Broker>,
    version: i16,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let _ = (broker, version, req);
    CreatePartitionsResponse::default()
}
