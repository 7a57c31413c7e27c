//! CreateTopics, DeleteTopics, CreatePartitions, and the topic creation shared with
//! Metadata's auto-creation.
//!
//! Validation follows Kafka's KRaft controller (`ReplicationControlManager`,
//! `ControllerApis`): the same checks in the same order, with the same error codes and
//! messages, so admin tools and client test suites see what they see against Kafka.
//!
//! Replication factor: storage is shared, so a Shale partition has no replicas to place. Any
//! replication factor >= 1 (or -1 for `default.replication.factor`) is accepted, whatever the
//! number of brokers, because object storage already gives the durability a higher factor asks
//! for; Kafka would answer INVALID_REPLICATION_FACTOR when the factor exceeds the registered
//! brokers, which breaks the common "RF 3 in production configs, one node in dev" setups. The
//! CreateTopics response reports the factor as requested (the default for -1, the replica list
//! length for manual assignments) so clients that compare it see what they asked for; Metadata
//! reports the owning node as the single replica. Manual assignments are validated like Kafka
//! (registered brokers, no duplicates, consistent lengths), and each partition is then owned
//! by its first replica, Kafka's preferred leader. Without one, new partitions spread over the
//! live brokers as Kafka spreads leaders (`shale_meta::Placement::Spread`, decided when the
//! metadata write applies).

use crate::Broker;
use crate::topic_config;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use shale_meta::{ClusterState, MetaError, Placement, TopicCommand};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

/// A Kafka error code with its message.
type KafkaError = (ResponseError, String);

/// Kafka's cap on the partitions one request may create (`MAX_PARTITIONS_PER_BATCH`).
const MAX_PARTITIONS_PER_REQUEST: i64 = 10_000;

const UNKNOWN_TOPIC_MESSAGE: &str = "This server does not host this topic-partition.";
const UNKNOWN_TOPIC_ID_MESSAGE: &str = "This server does not host this topic ID.";
const TOO_MANY_PARTITIONS_MESSAGE: &str = "Excessively large number of partitions per request.";

/// Kafka's internal topics: written only by the broker itself.
pub fn is_internal(name: &str) -> bool {
    name == crate::groups::OFFSETS_TOPIC || name == crate::txn::glue::TXN_TOPIC
}

/// Why no topic may be named `__replay.<anything>`: those names are the replay grants' ACL
/// resources (`authz::replay`), and a real topic under one would be confused with its grant.
fn reserved_name(name: &str) -> Option<String> {
    crate::authz::replay::is_replay_resource(name).then(|| {
        format!(
            "Topic name \"{name}\" is illegal: names starting with {} are reserved for \
             replay grants",
            crate::authz::replay::REPLAY_PREFIX
        )
    })
}

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
        return Err(
            "topic name contains characters other than ASCII alphanumerics, '.', '_' and '-'",
        );
    }
    Ok(())
}

pub(crate) fn meta_error(e: MetaError) -> (ResponseError, String) {
    let code = match &e {
        MetaError::TopicExists(_) => ResponseError::TopicAlreadyExists,
        MetaError::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition,
        MetaError::InvalidPartitions { .. } => ResponseError::InvalidPartitions,
        // Kafka's controller answers a write it could not confirm in time the same way; the
        // client retries (a create that did happen then reads TOPIC_ALREADY_EXISTS).
        MetaError::Unavailable(_) | MetaError::Indeterminate(_) => ResponseError::RequestTimedOut,
    };
    (code, e.to_string())
}

/// Creates a topic, its partitions placed as `placement` says, and opens those this node
/// owns.
pub(crate) async fn create_topic(
    broker: &Broker,
    name: &str,
    partitions: i32,
    configs: BTreeMap<String, String>,
    placement: Placement,
) -> Result<(), (ResponseError, String)> {
    validate_name(name).map_err(|m| (ResponseError::InvalidTopicException, m.to_string()))?;
    // Also here, not only in `validate_creation`: Metadata auto-creates through this.
    if let Some(m) = reserved_name(name) {
        return Err((ResponseError::InvalidTopicException, m));
    }
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
            placement,
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

// ---------------------------------------------------------------------------------------------
// Shared validation

/// Names that occur more than once in a request.
fn duplicates<'a>(names: impl IntoIterator<Item = &'a str>) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    let mut dup = HashSet::new();
    for n in names {
        if !seen.insert(n) {
            dup.insert(n);
        }
    }
    dup
}

/// Ids of the registered brokers (this node alone before registration is visible).
fn registered_brokers(state: &ClusterState, me: i32) -> BTreeSet<i32> {
    let ids: BTreeSet<i32> = state
        .nodes
        .keys()
        .filter_map(|&id| i32::try_from(id).ok())
        .collect();
    if ids.is_empty() {
        BTreeSet::from([me])
    } else {
        ids
    }
}

fn invalid_assignment(message: String) -> KafkaError {
    (ResponseError::InvalidReplicaAssignment, message)
}

/// Kafka's `validateManualPartitionAssignment`: a non-empty list of distinct registered
/// brokers, as long as the previous lists.
fn validate_replicas(
    replicas: &[BrokerId],
    registered: &BTreeSet<i32>,
    previous_len: Option<usize>,
) -> Result<(), KafkaError> {
    if replicas.is_empty() {
        return Err(invalid_assignment(
            "The manual partition assignment includes an empty replica list.".into(),
        ));
    }
    let mut sorted: Vec<i32> = replicas.iter().map(|b| b.0).collect();
    sorted.sort_unstable();
    let mut previous = None;
    for id in sorted {
        if !registered.contains(&id) {
            return Err(invalid_assignment(format!(
                "The manual partition assignment includes broker {id}, but no such broker is \
                 registered."
            )));
        }
        if previous == Some(id) {
            return Err(invalid_assignment(format!(
                "The manual partition assignment includes the broker {id} more than once."
            )));
        }
        previous = Some(id);
    }
    if let Some(expected) = previous_len
        && replicas.len() != expected
    {
        return Err(invalid_assignment(format!(
            "The manual partition assignment includes a partition with {} replica(s), but this \
             is not consistent with previous partitions, which have {expected} replica(s).",
            replicas.len()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// CreateTopics

/// A topic creation that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NewTopic {
    pub partitions: i32,
    pub replication_factor: i16,
    /// Spread over the live brokers, or the first replica of each manual assignment.
    pub placement: Placement,
    /// Validated overrides in canonical form.
    pub configs: BTreeMap<String, String>,
}

/// Partitions a CreateTopics entry asks for, as Kafka counts them against its per-request cap.
fn requested_partitions(t: &CreatableTopic, default_partitions: i32) -> i64 {
    if !t.assignments.is_empty() {
        t.assignments.len() as i64
    } else if t.num_partitions == -1 {
        i64::from(default_partitions)
    } else {
        i64::from(t.num_partitions.max(0))
    }
}

/// Validates one CreateTopics entry against the cluster state, in Kafka's order: name,
/// collision with an existing name, existence, configs, then partitions and replicas.
pub(crate) fn validate_creation(
    t: &CreatableTopic,
    state: &ClusterState,
    config: &crate::BrokerConfig,
) -> Result<NewTopic, KafkaError> {
    let name: &str = &t.name.0;
    validate_name(name).map_err(|m| {
        (
            ResponseError::InvalidTopicException,
            format!("Topic name \"{name}\" is illegal: {m}"),
        )
    })?;
    if let Some(m) = reserved_name(name) {
        return Err((ResponseError::InvalidTopicException, m));
    }
    if name.contains(['.', '_']) {
        let unified = name.replace('.', "_");
        if let Some(other) = state
            .topics
            .keys()
            .find(|other| other.as_str() != name && other.replace('.', "_") == unified)
        {
            return Err((
                ResponseError::InvalidTopicException,
                format!("Topic '{name}' collides with existing topic: {other}"),
            ));
        }
    }
    if state.topics.contains_key(name) {
        return Err(already_exists(name));
    }

    let nulls: Vec<&str> = t
        .configs
        .iter()
        .filter(|c| c.value.is_none())
        .map(|c| &*c.name)
        .collect();
    if !nulls.is_empty() {
        return Err((
            ResponseError::InvalidConfig,
            format!(
                "Null value not supported for topic configs: {}",
                nulls.join(",")
            ),
        ));
    }
    let mut configs = BTreeMap::new();
    for c in &t.configs {
        let value = c.value.as_deref().unwrap_or_default();
        let canonical = topic_config::normalize(&c.name, value)
            .map_err(|m| (ResponseError::InvalidConfig, m))?;
        configs.insert(c.name.to_string(), canonical);
    }
    topic_config::validate_combination(&configs, &config.topic_defaults)
        .map_err(|m| (ResponseError::InvalidConfig, m))?;

    let (partitions, replication_factor, placement) = if !t.assignments.is_empty() {
        if t.replication_factor != -1 {
            return Err((
                ResponseError::InvalidRequest,
                "A manual partition assignment was specified, but replication factor was not \
                 set to -1."
                    .into(),
            ));
        }
        if t.num_partitions != -1 {
            return Err((
                ResponseError::InvalidRequest,
                "A manual partition assignment was specified, but numPartitions was not set to \
                 -1."
                .into(),
            ));
        }
        let registered = registered_brokers(state, config.node_id);
        let mut indexes = BTreeSet::new();
        let mut replicas_len = None;
        for a in &t.assignments {
            if !indexes.insert(a.partition_index) {
                return Err(invalid_assignment(format!(
                    "Found multiple manual partition assignments for partition {}",
                    a.partition_index
                )));
            }
            validate_replicas(&a.broker_ids, &registered, replicas_len)?;
            replicas_len = Some(a.broker_ids.len());
        }
        let consecutive = indexes
            .iter()
            .enumerate()
            .all(|(i, &p)| i64::try_from(i).is_ok_and(|i| i == i64::from(p)));
        if !consecutive {
            return Err(invalid_assignment(
                "partitions should be a consecutive 0-based integer sequence".into(),
            ));
        }
        let partitions = i32::try_from(t.assignments.len()).unwrap_or(i32::MAX);
        let rf = replicas_len
            .and_then(|n| i16::try_from(n).ok())
            .unwrap_or(i16::MAX);
        (
            partitions,
            rf,
            first_replicas(
                t.assignments
                    .iter()
                    .map(|a| (a.partition_index, &a.broker_ids[..])),
            ),
        )
    } else if t.replication_factor < -1 || t.replication_factor == 0 {
        return Err((
            ResponseError::InvalidReplicationFactor,
            "Replication factor must be larger than 0, or -1 to use the default value.".into(),
        ));
    } else if t.num_partitions < -1 || t.num_partitions == 0 {
        return Err((
            ResponseError::InvalidPartitions,
            "Number of partitions was set to an invalid non-positive value.".into(),
        ));
    } else {
        let partitions = if t.num_partitions == -1 {
            config.num_partitions
        } else {
            t.num_partitions
        };
        let rf = if t.replication_factor == -1 {
            config.default_replication_factor
        } else {
            t.replication_factor
        };
        (partitions, rf, Placement::Spread)
    };
    if partitions < 1 {
        // Only a misconfigured num.partitions gets here.
        return Err((
            ResponseError::InvalidPartitions,
            "Number of partitions must be larger than 0.".into(),
        ));
    }
    Ok(NewTopic {
        partitions,
        replication_factor,
        placement,
        configs,
    })
}

/// A validated manual assignment's owners: each partition's first replica, as Kafka makes
/// the first replica the preferred leader.
fn first_replicas<'a>(assignments: impl Iterator<Item = (i32, &'a [BrokerId])>) -> Placement {
    let mut firsts: Vec<(i32, u64)> = assignments
        .filter_map(|(p, replicas)| Some((p, u64::try_from(replicas.first()?.0).ok()?)))
        .collect();
    firsts.sort_unstable();
    Placement::Listed(firsts.into_iter().map(|(_, b)| b).collect())
}

fn already_exists(name: &str) -> KafkaError {
    (
        ResponseError::TopicAlreadyExists,
        format!("Topic '{name}' already exists."),
    )
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn create_error(name: &str, (code, message): KafkaError) -> CreatableTopicResult {
    CreatableTopicResult::default()
        .with_name(topic_name(name))
        .with_error_code(code.code())
        .with_error_message(Some(StrBytes::from_string(message)))
}

/// The result of a successful (or validated) creation, with the v5+ details.
fn create_success(
    version: i16,
    name: &str,
    id: Uuid,
    topic: &NewTopic,
    broker_defaults: &BTreeMap<String, String>,
) -> CreatableTopicResult {
    let mut result = CreatableTopicResult::default()
        .with_name(topic_name(name))
        .with_error_code(0)
        .with_error_message(None);
    if version >= 7 {
        result = result.with_topic_id(id);
    }
    if version >= 5 {
        let configs = topic_config::TOPIC_CONFIGS
            .iter()
            .map(|d| {
                let e = topic_config::effective(d, &topic.configs, broker_defaults);
                CreatableTopicConfigs::default()
                    .with_name(StrBytes::from_static_str(d.name))
                    .with_value(Some(StrBytes::from_string(e.value.to_string())))
                    .with_read_only(false)
                    .with_config_source(e.source as i8)
                    .with_is_sensitive(false)
            })
            .collect();
        result = result
            .with_num_partitions(topic.partitions)
            .with_replication_factor(topic.replication_factor)
            .with_configs(Some(configs))
            .with_topic_config_error_code(0);
    }
    result
}

pub async fn create_topics(
    broker: &Arc<Broker>,
    version: i16,
    req: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let dups = duplicates(req.topics.iter().map(|t| &*t.name.0));
    let total: i64 = req
        .topics
        .iter()
        .filter(|t| !dups.contains(&*t.name.0))
        .map(|t| requested_partitions(t, broker.config.num_partitions))
        .sum();
    let too_many = total > MAX_PARTITIONS_PER_REQUEST;

    let mut reported = HashSet::new();
    let mut results = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let name: &str = &t.name.0;
        if dups.contains(name) {
            if reported.insert(name) {
                results.push(create_error(
                    name,
                    (
                        ResponseError::InvalidRequest,
                        "Duplicate topic name.".into(),
                    ),
                ));
            }
            continue;
        }
        if too_many {
            results.push(create_error(
                name,
                (
                    ResponseError::PolicyViolation,
                    TOO_MANY_PARTITIONS_MESSAGE.into(),
                ),
            ));
            continue;
        }
        let checked = broker
            .meta
            .read(|s| validate_creation(t, s, &broker.config));
        let topic = match checked {
            Ok(topic) => topic,
            Err(e) => {
                tracing::debug!(topic = name, error = e.1, "CreateTopics refused");
                results.push(create_error(name, e));
                continue;
            }
        };
        if req.validate_only {
            results.push(create_success(
                version,
                name,
                Uuid::nil(),
                &topic,
                &broker.config.topic_defaults,
            ));
            continue;
        }
        match create_topic(
            broker,
            name,
            topic.partitions,
            topic.configs.clone(),
            topic.placement.clone(),
        )
        .await
        {
            Ok(()) => {
                tracing::info!(
                    topic = name,
                    partitions = topic.partitions,
                    configs = ?topic.configs,
                    "created topic"
                );
                let id = broker
                    .meta
                    .read(|s| s.topics.get(name).map(|t| Uuid::from_bytes(t.id)))
                    .unwrap_or_default();
                results.push(create_success(
                    version,
                    name,
                    id,
                    &topic,
                    &broker.config.topic_defaults,
                ));
            }
            Err((ResponseError::TopicAlreadyExists, _)) => {
                results.push(create_error(name, already_exists(name)));
            }
            Err(e) => {
                tracing::warn!(topic = name, error = e.1, "topic creation failed");
                results.push(create_error(name, e));
            }
        }
    }
    CreateTopicsResponse::default().with_topics(results)
}

// ---------------------------------------------------------------------------------------------
// DeleteTopics

/// What to do with one entry of a DeleteTopics request.
#[derive(Debug, Clone, PartialEq)]
enum Deletion {
    ByName(String),
    ById(Uuid),
    /// Answered with INVALID_REQUEST without looking the topic up.
    Reject {
        name: Option<String>,
        id: Uuid,
        message: &'static str,
    },
    /// A later occurrence of a duplicate (answered once, at its first occurrence).
    Skip,
}

/// Classifies the (name, id) entries of a request like Kafka's `ControllerApis.deleteTopics`:
/// an entry names a topic either by name or by id; names or ids given twice are refused.
fn classify_deletions(entries: &[(Option<String>, Uuid)]) -> Vec<Deletion> {
    let dup_names = duplicates(entries.iter().filter_map(|(n, id)| match n {
        Some(n) if id.is_nil() => Some(n.as_str()),
        _ => None,
    }));
    let mut id_counts: HashMap<Uuid, usize> = HashMap::new();
    for (n, id) in entries {
        if n.is_none() && !id.is_nil() {
            *id_counts.entry(*id).or_default() += 1;
        }
    }
    let mut reported_names = HashSet::new();
    let mut reported_ids = HashSet::new();
    entries
        .iter()
        .map(|(name, id)| match name {
            None if id.is_nil() => Deletion::Reject {
                name: None,
                id: *id,
                message: "Neither topic name nor id were specified.",
            },
            None if id_counts.get(id).copied().unwrap_or(0) > 1 => {
                if reported_ids.insert(*id) {
                    Deletion::Reject {
                        name: None,
                        id: *id,
                        message: "Duplicate topic id.",
                    }
                } else {
                    Deletion::Skip
                }
            }
            None => Deletion::ById(*id),
            Some(n) if !id.is_nil() => Deletion::Reject {
                name: Some(n.clone()),
                id: *id,
                message: "You may not specify both topic name and topic id.",
            },
            Some(n) if dup_names.contains(n.as_str()) => {
                if reported_names.insert(n.as_str()) {
                    Deletion::Reject {
                        name: Some(n.clone()),
                        id: Uuid::nil(),
                        message: "Duplicate topic name.",
                    }
                } else {
                    Deletion::Skip
                }
            }
            Some(n) => Deletion::ByName(n.clone()),
        })
        .collect()
}

fn delete_result(
    name: Option<String>,
    id: Uuid,
    error: Option<(ResponseError, String)>,
) -> DeletableTopicResult {
    let (code, message) = match error {
        Some((code, message)) => (code.code(), Some(StrBytes::from_string(message))),
        None => (0, None),
    };
    DeletableTopicResult::default()
        .with_name(name.map(|n| TopicName(StrBytes::from_string(n))))
        .with_topic_id(id)
        .with_error_code(code)
        .with_error_message(message)
}

/// Deletes a topic by name and forgets its open streams.
async fn delete_topic(broker: &Broker, name: &str) -> Result<Uuid, KafkaError> {
    let found = broker.meta.read(|s| {
        s.topics.get(name).map(|t| {
            let streams: Vec<u64> = t.partitions.iter().map(|p| p.stream_id).collect();
            (Uuid::from_bytes(t.id), streams)
        })
    });
    let Some((id, streams)) = found else {
        return Err((
            ResponseError::UnknownTopicOrPartition,
            UNKNOWN_TOPIC_MESSAGE.into(),
        ));
    };
    broker
        .meta
        .write(TopicCommand::DeleteTopic {
            name: name.to_string(),
        })
        .await
        .map_err(|e| match e {
            MetaError::UnknownTopic(_) => (
                ResponseError::UnknownTopicOrPartition,
                UNKNOWN_TOPIC_MESSAGE.to_string(),
            ),
            other => meta_error(other),
        })?;
    for stream in streams {
        broker.close_stream(stream).await;
    }
    tracing::info!(topic = name, topic_id = %id, "deleted topic");
    Ok(id)
}

pub async fn delete_topics(
    broker: &Arc<Broker>,
    version: i16,
    req: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    // v0-5 name topics in `topic_names`; v6 in `topics`, by name or by id.
    let entries: Vec<(Option<String>, Uuid)> = if version >= 6 {
        req.topics
            .into_iter()
            .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        req.topic_names
            .into_iter()
            .map(|n| (Some(n.0.to_string()), Uuid::nil()))
            .collect()
    };
    let mut results = Vec::with_capacity(entries.len());
    for deletion in classify_deletions(&entries) {
        let result = match deletion {
            Deletion::Skip => continue,
            Deletion::Reject { name, id, message } => delete_result(
                name,
                id,
                Some((ResponseError::InvalidRequest, message.into())),
            ),
            Deletion::ByName(name) => match delete_topic(broker, &name).await {
                Ok(id) => delete_result(Some(name), id, None),
                Err(e) => delete_result(Some(name), Uuid::nil(), Some(e)),
            },
            Deletion::ById(id) => match broker.topic_name_by_id(&id) {
                None => delete_result(
                    None,
                    id,
                    Some((
                        ResponseError::UnknownTopicId,
                        UNKNOWN_TOPIC_ID_MESSAGE.into(),
                    )),
                ),
                Some(name) => match delete_topic(broker, &name).await {
                    Ok(_) => delete_result(Some(name), id, None),
                    Err((ResponseError::UnknownTopicOrPartition, _)) => delete_result(
                        None,
                        id,
                        Some((
                            ResponseError::UnknownTopicId,
                            UNKNOWN_TOPIC_ID_MESSAGE.into(),
                        )),
                    ),
                    Err(e) => delete_result(Some(name), id, Some(e)),
                },
            },
        };
        // Before v6 the name is not nullable and there is no topic id.
        let result = if version < 6 {
            let name = result
                .name
                .clone()
                .or_else(|| Some(TopicName(StrBytes::default())));
            result.with_name(name).with_topic_id(Uuid::nil())
        } else {
            result
        };
        results.push(result);
    }
    DeleteTopicsResponse::default().with_responses(results)
}

// ---------------------------------------------------------------------------------------------
// CreatePartitions

/// Kafka's message for a partition count that does not grow the topic.
fn not_an_increase(name: &str, current: u64, requested: i64) -> KafkaError {
    let message = if requested == current as i64 {
        format!("Topic already has {current} partition(s).")
    } else {
        format!(
            "The topic {name} currently has {current} partition(s); {requested} would not be an \
             increase."
        )
    };
    (ResponseError::InvalidPartitions, message)
}

/// Validates one CreatePartitions entry; returns the new total, the partitions it adds and
/// where they go.
fn validate_growth(
    t: &CreatePartitionsTopic,
    state: &ClusterState,
    me: i32,
) -> Result<(u32, u32, Placement), KafkaError> {
    let name: &str = &t.name.0;
    let Some(topic) = state.topics.get(name) else {
        return Err((
            ResponseError::UnknownTopicOrPartition,
            UNKNOWN_TOPIC_MESSAGE.into(),
        ));
    };
    let current = topic.partitions.len() as u64;
    let requested = i64::from(t.count);
    if requested <= current as i64 {
        return Err(not_an_increase(name, current, requested));
    }
    let additional = requested - current as i64;
    let mut placement = Placement::Spread;
    if let Some(assignments) = &t.assignments {
        if assignments.len() as i64 != additional {
            return Err(invalid_assignment(format!(
                "Attempted to add {additional} additional partition(s), but only {} \
                 assignment(s) were specified.",
                assignments.len()
            )));
        }
        let registered = registered_brokers(state, me);
        let mut replicas_len = None;
        for a in assignments {
            validate_replicas(&a.broker_ids, &registered, replicas_len)?;
            replicas_len = Some(a.broker_ids.len());
        }
        placement = first_replicas((0..).zip(assignments.iter().map(|a| &a.broker_ids[..])));
    }
    let total = u32::try_from(requested).map_err(|_| {
        (
            ResponseError::InvalidPartitions,
            format!("Cannot grow topic {name} to {requested} partitions."),
        )
    })?;
    Ok((total, additional as u32, placement))
}

fn partitions_result(name: &str, error: Option<KafkaError>) -> CreatePartitionsTopicResult {
    let (code, message) = match error {
        Some((code, message)) => (code.code(), Some(StrBytes::from_string(message))),
        None => (0, None),
    };
    CreatePartitionsTopicResult::default()
        .with_name(topic_name(name))
        .with_error_code(code)
        .with_error_message(message)
}

/// One result per distinct topic of the request, in request order.
pub async fn create_partitions(
    broker: &Arc<Broker>,
    version: i16,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let _ = version;
    let me = broker.config.node_id;
    let dups = duplicates(req.topics.iter().map(|t| &*t.name.0));
    let mut reported = HashSet::new();
    let mut added_in_request: i64 = 0;
    let mut results = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let name: &str = &t.name.0;
        if dups.contains(name) {
            if reported.insert(name) {
                results.push(partitions_result(
                    name,
                    Some((
                        ResponseError::InvalidRequest,
                        "Duplicate topic name.".into(),
                    )),
                ));
            }
            continue;
        }
        let (total, additional, placement) = match broker.meta.read(|s| validate_growth(t, s, me)) {
            Ok(v) => v,
            Err(e) => {
                results.push(partitions_result(name, Some(e)));
                continue;
            }
        };
        added_in_request += i64::from(additional);
        if added_in_request > MAX_PARTITIONS_PER_REQUEST {
            results.push(partitions_result(
                name,
                Some((
                    ResponseError::PolicyViolation,
                    TOO_MANY_PARTITIONS_MESSAGE.into(),
                )),
            ));
            continue;
        }
        if req.validate_only {
            results.push(partitions_result(name, None));
            continue;
        }
        let written = broker
            .meta
            .write(TopicCommand::CreatePartitions {
                name: name.to_string(),
                total,
                owner: me as u64,
                placement,
            })
            .await;
        match written {
            Ok(()) => {
                open_topic_partitions(broker, name).await;
                tracing::info!(topic = name, partitions = total, "grew topic");
                results.push(partitions_result(name, None));
            }
            Err(MetaError::InvalidPartitions { current, .. }) => {
                // Another request grew the topic meanwhile.
                results.push(partitions_result(
                    name,
                    Some(not_an_increase(name, u64::from(current), i64::from(total))),
                ));
            }
            Err(MetaError::UnknownTopic(_)) => results.push(partitions_result(
                name,
                Some((
                    ResponseError::UnknownTopicOrPartition,
                    UNKNOWN_TOPIC_MESSAGE.into(),
                )),
            )),
            Err(e) => {
                tracing::warn!(topic = name, error = %e, "partition creation failed");
                results.push(partitions_result(name, Some(meta_error(e))));
            }
        }
    }
    CreatePartitionsResponse::default().with_results(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::create_partitions_request::CreatePartitionsAssignment;
    use kafka_protocol::messages::create_topics_request::{
        CreatableReplicaAssignment, CreatableTopicConfig,
    };
    use shale_meta::{NodeMeta, PartitionMeta, TopicMeta};

    fn state(topics: &[(&str, usize)], nodes: &[u64]) -> ClusterState {
        let mut s = ClusterState::default();
        for (name, partitions) in topics {
            s.topics.insert(
                name.to_string(),
                TopicMeta {
                    name: name.to_string(),
                    id: [7; 16],
                    configs: BTreeMap::new(),
                    partitions: (0..*partitions)
                        .map(|i| PartitionMeta {
                            stream_id: i as u64,
                            owner: 1,
                        })
                        .collect(),
                    created_at_ms: 0,
                },
            );
        }
        for &id in nodes {
            s.nodes.insert(
                id,
                NodeMeta {
                    id,
                    host: "h".into(),
                    port: 9092,
                    rack: None,
                },
            );
        }
        s
    }

    fn topic(name: &str, partitions: i32, rf: i16) -> CreatableTopic {
        CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(rf)
    }

    fn with_configs(t: CreatableTopic, configs: &[(&str, Option<&str>)]) -> CreatableTopic {
        t.with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(k.to_string()))
                        .with_value(v.map(|v| StrBytes::from_string(v.to_string())))
                })
                .collect(),
        )
    }

    fn assigned(t: CreatableTopic, lists: &[(i32, &[i32])]) -> CreatableTopic {
        t.with_assignments(
            lists
                .iter()
                .map(|(p, ids)| {
                    CreatableReplicaAssignment::default()
                        .with_partition_index(*p)
                        .with_broker_ids(ids.iter().map(|&i| BrokerId(i)).collect())
                })
                .collect(),
        )
    }

    fn config() -> crate::BrokerConfig {
        crate::BrokerConfig {
            num_partitions: 3,
            default_replication_factor: 1,
            ..Default::default()
        }
    }

    fn refusal(r: Result<NewTopic, KafkaError>) -> (ResponseError, String) {
        r.expect_err("expected a refusal")
    }

    #[test]
    fn defaults_apply_for_minus_one() {
        let s = state(&[], &[1]);
        let t = validate_creation(&topic("a", -1, -1), &s, &config()).unwrap();
        assert_eq!((t.partitions, t.replication_factor), (3, 1));
        let t = validate_creation(&topic("a", 5, 3), &s, &config()).unwrap();
        assert_eq!(
            (t.partitions, t.replication_factor),
            (5, 3),
            "any RF >= 1 is accepted"
        );
    }

    #[test]
    fn refuses_bad_partitions_and_replication_factors() {
        let s = state(&[], &[1]);
        for p in [0, -2] {
            let (code, msg) = refusal(validate_creation(&topic("a", p, 1), &s, &config()));
            assert_eq!(code, ResponseError::InvalidPartitions);
            assert_eq!(
                msg,
                "Number of partitions was set to an invalid non-positive value."
            );
        }
        for rf in [0, -2] {
            let (code, _) = refusal(validate_creation(&topic("a", 1, rf), &s, &config()));
            assert_eq!(code, ResponseError::InvalidReplicationFactor);
        }
    }

    #[test]
    fn refuses_bad_names_existing_and_colliding_topics() {
        let s = state(&[("a.b", 1), ("x", 1)], &[1]);
        let (code, _) = refusal(validate_creation(&topic("bad name", 1, 1), &s, &config()));
        assert_eq!(code, ResponseError::InvalidTopicException);
        let (code, msg) = refusal(validate_creation(&topic("x", 1, 1), &s, &config()));
        assert_eq!(code, ResponseError::TopicAlreadyExists);
        assert_eq!(msg, "Topic 'x' already exists.");
        let (code, msg) = refusal(validate_creation(&topic("a_b", 1, 1), &s, &config()));
        assert_eq!(code, ResponseError::InvalidTopicException);
        assert_eq!(msg, "Topic 'a_b' collides with existing topic: a.b");
    }

    #[test]
    fn names_of_replay_grants_cannot_be_topics() {
        let s = state(&[], &[1]);
        let (code, msg) = refusal(validate_creation(
            &topic("__replay.payments", 1, 1),
            &s,
            &config(),
        ));
        assert_eq!(code, ResponseError::InvalidTopicException);
        assert!(msg.contains("reserved for replay grants"), "{msg}");
        assert!(validate_creation(&topic("__replay", 1, 1), &s, &config()).is_ok());
    }

    #[test]
    fn validates_and_normalizes_configs() {
        let s = state(&[], &[1]);
        let t = with_configs(
            topic("a", 1, 1),
            &[
                ("cleanup.policy", Some("compact , delete")),
                ("preallocate", Some("TRUE")),
            ],
        );
        let t = validate_creation(&t, &s, &config()).unwrap();
        assert_eq!(t.configs.get("cleanup.policy").unwrap(), "compact,delete");
        assert_eq!(t.configs.get("preallocate").unwrap(), "true");

        let t = with_configs(topic("a", 1, 1), &[("dummy.doesntexist", Some("x"))]);
        let (code, msg) = refusal(validate_creation(&t, &s, &config()));
        assert_eq!(code, ResponseError::InvalidConfig);
        assert_eq!(msg, "Unknown topic config name: dummy.doesntexist");

        let t = with_configs(
            topic("a", 1, 1),
            &[("retention.ms", None), ("segment.ms", None)],
        );
        let (code, msg) = refusal(validate_creation(&t, &s, &config()));
        assert_eq!(code, ResponseError::InvalidConfig);
        assert_eq!(
            msg,
            "Null value not supported for topic configs: retention.ms,segment.ms"
        );

        // Configs are checked before partitions, as in Kafka.
        let t = with_configs(topic("a", 0, 1), &[("retention.ms", Some("x"))]);
        assert_eq!(
            refusal(validate_creation(&t, &s, &config())).0,
            ResponseError::InvalidConfig
        );
    }

    #[test]
    fn manual_assignments() {
        let s = state(&[], &[1, 2, 3]);
        // Listed out of order: partition 0 goes to broker 3, its first replica.
        let ok = assigned(topic("a", -1, -1), &[(1, &[2, 3]), (0, &[3, 1])]);
        let t = validate_creation(&ok, &s, &config()).unwrap();
        assert_eq!((t.partitions, t.replication_factor), (2, 2));
        assert_eq!(t.placement, Placement::Listed(vec![3, 2]));
        let spread = validate_creation(&topic("a", 2, 1), &s, &config()).unwrap();
        assert_eq!(spread.placement, Placement::Spread);

        let cases: &[(CreatableTopic, ResponseError, &str)] = &[
            (
                assigned(topic("a", -1, 2), &[(0, &[1, 2])]),
                ResponseError::InvalidRequest,
                "A manual partition assignment was specified, but replication factor was not set to -1.",
            ),
            (
                assigned(topic("a", 1, -1), &[(0, &[1, 2])]),
                ResponseError::InvalidRequest,
                "A manual partition assignment was specified, but numPartitions was not set to -1.",
            ),
            (
                assigned(topic("a", -1, -1), &[(0, &[1]), (0, &[2])]),
                ResponseError::InvalidReplicaAssignment,
                "Found multiple manual partition assignments for partition 0",
            ),
            (
                assigned(topic("a", -1, -1), &[(0, &[])]),
                ResponseError::InvalidReplicaAssignment,
                "The manual partition assignment includes an empty replica list.",
            ),
            (
                assigned(topic("a", -1, -1), &[(0, &[9, 1, 7])]),
                ResponseError::InvalidReplicaAssignment,
                "The manual partition assignment includes broker 7, but no such broker is registered.",
            ),
            (
                assigned(topic("a", -1, -1), &[(0, &[2, 1, 2])]),
                ResponseError::InvalidReplicaAssignment,
                "The manual partition assignment includes the broker 2 more than once.",
            ),
            (
                assigned(topic("a", -1, -1), &[(0, &[1]), (1, &[1, 2])]),
                ResponseError::InvalidReplicaAssignment,
                "The manual partition assignment includes a partition with 2 replica(s), but this \
                 is not consistent with previous partitions, which have 1 replica(s).",
            ),
            (
                assigned(topic("a", -1, -1), &[(0, &[1]), (2, &[1])]),
                ResponseError::InvalidReplicaAssignment,
                "partitions should be a consecutive 0-based integer sequence",
            ),
        ];
        for (t, code, msg) in cases {
            let (c, m) = refusal(validate_creation(t, &s, &config()));
            assert_eq!((c, m.as_str()), (*code, *msg));
        }
    }

    #[test]
    fn success_result_lists_every_config_from_v5() {
        let t = NewTopic {
            partitions: 2,
            replication_factor: 3,
            placement: Placement::Spread,
            configs: BTreeMap::from([("retention.ms".to_string(), "1".to_string())]),
        };
        let broker = BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]);
        let id = Uuid::from_bytes([1; 16]);
        let r = create_success(4, "a", id, &t, &broker);
        assert_eq!(r.num_partitions, -1);
        assert_eq!(r.topic_id, Uuid::nil());
        let r = create_success(7, "a", id, &t, &broker);
        assert_eq!(
            (r.num_partitions, r.replication_factor, r.topic_id),
            (2, 3, id)
        );
        assert_eq!(r.error_message, None);
        let configs = r.configs.unwrap();
        assert_eq!(configs.len(), topic_config::TOPIC_CONFIGS.len());
        let get = |n: &str| configs.iter().find(|c| &*c.name == n).unwrap();
        assert_eq!(get("retention.ms").config_source, 1);
        assert_eq!(get("retention.ms").value.as_deref(), Some("1"));
        assert_eq!(get("cleanup.policy").config_source, 4);
        assert_eq!(get("segment.ms").config_source, 5);
    }

    #[test]
    fn deletions_are_by_name_or_id_and_refuse_duplicates() {
        let a = Uuid::from_bytes([1; 16]);
        let b = Uuid::from_bytes([2; 16]);
        let entries = vec![
            (Some("x".to_string()), Uuid::nil()),
            (Some("y".to_string()), Uuid::nil()),
            (None, a),
            (Some("x".to_string()), Uuid::nil()),
            (None, Uuid::nil()),
            (Some("z".to_string()), b),
            (None, b),
            (None, b),
        ];
        let got = classify_deletions(&entries);
        assert_eq!(
            got,
            vec![
                Deletion::Reject {
                    name: Some("x".into()),
                    id: Uuid::nil(),
                    message: "Duplicate topic name."
                },
                Deletion::ByName("y".into()),
                Deletion::ById(a),
                Deletion::Skip,
                Deletion::Reject {
                    name: None,
                    id: Uuid::nil(),
                    message: "Neither topic name nor id were specified."
                },
                Deletion::Reject {
                    name: Some("z".into()),
                    id: b,
                    message: "You may not specify both topic name and topic id."
                },
                Deletion::Reject {
                    name: None,
                    id: b,
                    message: "Duplicate topic id."
                },
                Deletion::Skip,
            ]
        );
    }

    fn growth(name: &str, count: i32, assignments: Option<&[&[i32]]>) -> CreatePartitionsTopic {
        CreatePartitionsTopic::default()
            .with_name(topic_name(name))
            .with_count(count)
            .with_assignments(assignments.map(|lists| {
                lists
                    .iter()
                    .map(|ids| {
                        CreatePartitionsAssignment::default()
                            .with_broker_ids(ids.iter().map(|&i| BrokerId(i)).collect())
                    })
                    .collect()
            }))
    }

    #[test]
    fn partition_growth() {
        let s = state(&[("bar", 4), ("quux", 2)], &[1, 2]);
        assert_eq!(
            validate_growth(&growth("bar", 6, None), &s, 1),
            Ok((6, 2, Placement::Spread))
        );
        assert_eq!(
            validate_growth(&growth("bar", 3, None), &s, 1),
            Err((
                ResponseError::InvalidPartitions,
                "The topic bar currently has 4 partition(s); 3 would not be an increase.".into()
            ))
        );
        assert_eq!(
            validate_growth(&growth("quux", 2, None), &s, 1),
            Err((
                ResponseError::InvalidPartitions,
                "Topic already has 2 partition(s).".into()
            ))
        );
        assert_eq!(
            validate_growth(&growth("baz", 2, None), &s, 1)
                .unwrap_err()
                .0,
            ResponseError::UnknownTopicOrPartition
        );
        assert_eq!(
            validate_growth(&growth("bar", -1, None), &s, 1)
                .unwrap_err()
                .0,
            ResponseError::InvalidPartitions
        );
        assert_eq!(
            validate_growth(&growth("quux", 4, Some(&[&[1]])), &s, 1),
            Err((
                ResponseError::InvalidReplicaAssignment,
                "Attempted to add 2 additional partition(s), but only 1 assignment(s) were \
                 specified."
                    .into()
            ))
        );
        assert_eq!(
            validate_growth(&growth("quux", 4, Some(&[&[1, 2], &[2, 1]])), &s, 1),
            // The first replica of each is its owner, as Kafka's preferred leader.
            Ok((4, 2, Placement::Listed(vec![1, 2])))
        );
        assert_eq!(
            validate_growth(&growth("quux", 3, Some(&[&[5]])), &s, 1)
                .unwrap_err()
                .0,
            ResponseError::InvalidReplicaAssignment
        );
    }

    #[test]
    fn partition_cap_counts_defaults_and_assignments() {
        let t = topic("a", -1, -1);
        assert_eq!(requested_partitions(&t, 3), 3);
        assert_eq!(requested_partitions(&topic("a", 7, 1), 3), 7);
        assert_eq!(requested_partitions(&topic("a", -5, 1), 3), 0);
        let t = assigned(topic("a", -1, -1), &[(0, &[1]), (1, &[1])]);
        assert_eq!(requested_partitions(&t, 3), 2);
    }
}
