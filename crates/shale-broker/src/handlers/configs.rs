//! DescribeConfigs, AlterConfigs, IncrementalAlterConfigs.
//!
//! Topic configs are the dynamic ones: their overrides live in the metadata quorum and every
//! entry of [`topic_config::TOPIC_CONFIGS`] is described with its effective value and source
//! (admin tools read-modify-write that list). Broker settings are static in Shale (the
//! configuration file and `SHALE_*` environment variables), so broker resources can be
//! described, read-only, but not altered: where Kafka accepts dynamic broker configs (per
//! broker or cluster-wide), Shale answers INVALID_REQUEST "Cannot update these configs
//! dynamically", which Kafka itself answers for its static broker configs. Removing dynamic
//! broker configs (an empty AlterConfigs, DELETE operations) succeeds: there are none.
//!
//! Choices where Kafka and shared storage differ, or Kafka is loose:
//! - APPEND/SUBTRACT start from the topic's effective value (override, else the broker
//!   setting, else Kafka's default); KRaft starts from Kafka's built-in default when the topic
//!   has no override, which ignores a broker-level `log.cleanup.policy`.
//! - DELETE of a config the topic does not override, or that does not exist, is a no-op, as in
//!   Kafka.
//! - Describing BROKER with an empty name (the cluster default) lists nothing: Kafka lists the
//!   dynamic cluster-wide defaults there, and Shale has none. BROKER_LOGGER lists no loggers
//!   (log levels come from `RUST_LOG`), and altering one answers INVALID_CONFIG as Kafka does
//!   for an unknown logger.
//! - Alterations of one node are serialized, so concurrent read-modify-writes of one topic's
//!   overrides on a node cannot lose updates (the quorum replaces overrides as a whole).

use crate::handlers::topics::validate_name;
use crate::topic_config::{self, ConfigType, Source};
use crate::{Broker, BrokerConfig};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, alter_configs_response,
    incremental_alter_configs_response,
};
use kafka_protocol::protocol::StrBytes;
use shale_meta::{ClusterState, MetaError, TopicCommand};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// A Kafka error code with its message.
type KafkaError = (ResponseError, String);

/// `ConfigResource.Type` ids.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const RESOURCE_BROKER_LOGGER: i8 = 8;

/// Serializes config alterations on this node (see the module comment).
static ALTER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn invalid_request(message: impl Into<String>) -> KafkaError {
    (ResponseError::InvalidRequest, message.into())
}

fn invalid_config(message: impl Into<String>) -> KafkaError {
    (ResponseError::InvalidConfig, message.into())
}

fn unsupported_type(resource_type: i8, name: &str) -> KafkaError {
    invalid_request(format!(
        "Unexpected resource type {resource_type} for resource {name}"
    ))
}

/// The overrides of the topic a TOPIC resource names.
fn topic_overrides(
    state: &ClusterState,
    name: &str,
) -> Result<BTreeMap<String, String>, KafkaError> {
    if name.is_empty() {
        return Err(invalid_request("Default topic resources are not allowed."));
    }
    validate_name(name).map_err(|m| {
        (
            ResponseError::InvalidTopicException,
            format!("Topic name \"{name}\" is illegal: {m}"),
        )
    })?;
    match state.topics.get(name) {
        Some(t) => Ok(t.configs.clone()),
        None => Err((
            ResponseError::UnknownTopicOrPartition,
            format!("The topic '{name}' does not exist."),
        )),
    }
}

/// Checks that a BROKER or BROKER_LOGGER resource names this node; `Ok(false)` for the empty
/// name (cluster-wide default), which only BROKER accepts.
fn this_broker(name: &str, me: i32, allow_default: bool) -> Result<bool, KafkaError> {
    if name.is_empty() {
        return if allow_default {
            Ok(false)
        } else {
            Err(invalid_request("Broker id must not be empty"))
        };
    }
    let id: i32 = name
        .trim()
        .parse()
        .map_err(|_| invalid_request(format!("Broker id must be an integer, but it is: {name}")))?;
    if id != me {
        let or_default = if allow_default {
            " or empty string"
        } else {
            ""
        };
        return Err(invalid_request(format!(
            "Unexpected broker id, expected {me}{or_default}, but received {name}"
        )));
    }
    Ok(true)
}

/// Names given more than once.
fn duplicate_names<'a>(names: impl IntoIterator<Item = &'a str>) -> bool {
    let mut seen = HashSet::new();
    names.into_iter().any(|n| !seen.insert(n))
}

/// Flags the resources that occur more than once in a request (Kafka refuses each of them).
fn duplicate_resources<'a>(keys: impl IntoIterator<Item = (i8, &'a str)>) -> Vec<bool> {
    let keys: Vec<(i8, &str)> = keys.into_iter().collect();
    let mut counts: HashMap<(i8, &str), usize> = HashMap::new();
    for k in &keys {
        *counts.entry(*k).or_default() += 1;
    }
    keys.iter().map(|k| counts[k] > 1).collect()
}

const DUPLICATE_RESOURCE: &str = "Each resource must appear at most once.";

// ---------------------------------------------------------------------------------------------
// DescribeConfigs

/// One described config before it is shaped for a response version.
#[derive(Debug, Clone, PartialEq)]
struct Described {
    name: String,
    value: Option<String>,
    source: i8,
    read_only: bool,
    kind: ConfigType,
    doc: &'static str,
    /// (name, value, source), highest precedence first.
    synonyms: Vec<(String, Option<String>, i8)>,
}

impl Described {
    fn into_result(
        self,
        version: i16,
        include_synonyms: bool,
        include_documentation: bool,
    ) -> DescribeConfigsResourceResult {
        let synonyms = if include_synonyms {
            self.synonyms
                .into_iter()
                .map(|(name, value, source)| {
                    DescribeConfigsSynonym::default()
                        .with_name(StrBytes::from_string(name))
                        .with_value(value.map(StrBytes::from_string))
                        .with_source(source)
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut r = DescribeConfigsResourceResult::default()
            .with_name(StrBytes::from_string(self.name))
            .with_value(self.value.map(StrBytes::from_string))
            .with_read_only(self.read_only)
            .with_config_source(self.source)
            .with_is_sensitive(false)
            .with_synonyms(synonyms)
            .with_documentation(None);
        if version >= 3 {
            r = r.with_config_type(self.kind as i8);
            if include_documentation {
                r = r.with_documentation(Some(StrBytes::from_static_str(self.doc)));
            }
        }
        r
    }
}

/// Every topic config with its effective value, source and synonyms.
fn describe_topic(
    overrides: &BTreeMap<String, String>,
    broker_defaults: &BTreeMap<String, String>,
) -> Vec<Described> {
    topic_config::TOPIC_CONFIGS
        .iter()
        .map(|d| {
            let e = topic_config::effective(d, overrides, broker_defaults);
            Described {
                name: d.name.to_string(),
                value: Some(e.value.to_string()),
                source: e.source as i8,
                read_only: false,
                kind: d.kind,
                doc: d.doc,
                synonyms: topic_config::synonyms(d, overrides, broker_defaults)
                    .into_iter()
                    .map(|s| {
                        (
                            s.name.to_string(),
                            Some(s.value.to_string()),
                            s.source as i8,
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The broker settings Shale can report for this node (all static, so read-only): the
/// broker-level defaults of topic configs under their broker names, and the settings the
/// Kafka front end uses.
fn describe_broker(c: &BrokerConfig) -> Vec<Described> {
    let static_source = Source::StaticBroker as i8;
    let default_source = Source::Default as i8;
    let setting = |name: &str, value: String, kind: ConfigType, doc: &'static str| Described {
        name: name.to_string(),
        value: Some(value.clone()),
        source: static_source,
        read_only: true,
        kind,
        doc,
        synonyms: vec![(name.to_string(), Some(value), static_source)],
    };
    let mut out = vec![
        setting(
            "auto.create.topics.enable",
            c.auto_create_topics.to_string(),
            ConfigType::Boolean,
            "Create unknown topics requested by Metadata.",
        ),
        setting(
            "broker.id",
            c.node_id.to_string(),
            ConfigType::Int,
            "The broker id (same as node.id).",
        ),
        setting(
            "default.replication.factor",
            c.default_replication_factor.to_string(),
            ConfigType::Int,
            "Replication factor reported for topics created with -1; storage is shared.",
        ),
        setting(
            "log.retention.check.interval.ms",
            c.retention_check_interval.as_millis().to_string(),
            ConfigType::Long,
            "How often retention is enforced.",
        ),
        setting(
            "node.id",
            c.node_id.to_string(),
            ConfigType::Int,
            "The node id.",
        ),
        setting(
            "num.partitions",
            c.num_partitions.to_string(),
            ConfigType::Int,
            "Partitions of auto-created topics and of CreateTopics with -1.",
        ),
        setting(
            "socket.request.max.bytes",
            c.socket_request_max_bytes.to_string(),
            ConfigType::Int,
            "Largest request accepted.",
        ),
    ];
    out.push(match &c.rack {
        Some(rack) => setting(
            "broker.rack",
            rack.clone(),
            ConfigType::String,
            "Rack of the broker.",
        ),
        None => Described {
            name: "broker.rack".into(),
            value: None,
            source: default_source,
            read_only: true,
            kind: ConfigType::String,
            doc: "Rack of the broker.",
            synonyms: vec![("broker.rack".into(), None, default_source)],
        },
    });
    for d in topic_config::TOPIC_CONFIGS {
        let Some(name) = d.broker_synonym else {
            continue;
        };
        if out.iter().any(|e| e.name == name) {
            continue;
        }
        let mut synonyms = Vec::new();
        let (value, source) = match c.topic_defaults.get(d.name) {
            Some(v) => {
                synonyms.push((name.to_string(), Some(v.clone()), static_source));
                (v.clone(), static_source)
            }
            None => (d.default.to_string(), default_source),
        };
        synonyms.push((
            name.to_string(),
            Some(d.default.to_string()),
            default_source,
        ));
        out.push(Described {
            name: name.to_string(),
            value: Some(value),
            source,
            read_only: true,
            kind: d.kind,
            doc: d.doc,
            synonyms,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Keeps the requested keys (all of them when the list is null or empty, as in Kafka).
fn filter_keys(entries: Vec<Described>, keys: Option<&[StrBytes]>) -> Vec<Described> {
    match keys {
        Some(keys) if !keys.is_empty() => entries
            .into_iter()
            .filter(|e| keys.iter().any(|k| **k == *e.name))
            .collect(),
        _ => entries,
    }
}

pub async fn describe_configs(
    broker: &Arc<Broker>,
    version: i16,
    req: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let me = broker.config.node_id;
    let mut results = Vec::with_capacity(req.resources.len());
    for res in req.resources {
        let name: &str = &res.resource_name;
        let described = match res.resource_type {
            RESOURCE_TOPIC => broker
                .meta
                .read(|s| topic_overrides(s, name))
                .map(|o| describe_topic(&o, &broker.config.topic_defaults)),
            RESOURCE_BROKER => this_broker(name, me, true).map(|this| {
                if this {
                    describe_broker(&broker.config)
                } else {
                    Vec::new()
                }
            }),
            RESOURCE_BROKER_LOGGER => this_broker(name, me, false).map(|_| Vec::new()),
            other => Err(unsupported_type(other, name)),
        };
        let result = DescribeConfigsResult::default()
            .with_resource_type(res.resource_type)
            .with_resource_name(res.resource_name.clone());
        results.push(match described {
            Ok(entries) => result
                .with_error_code(0)
                .with_error_message(None)
                .with_configs(
                    filter_keys(entries, res.configuration_keys.as_deref())
                        .into_iter()
                        .map(|e| {
                            e.into_result(version, req.include_synonyms, req.include_documentation)
                        })
                        .collect(),
                ),
            Err((code, message)) => result
                .with_error_code(code.code())
                .with_error_message(Some(StrBytes::from_string(message))),
        });
    }
    DescribeConfigsResponse::default().with_results(results)
}

// ---------------------------------------------------------------------------------------------
// Alterations

/// IncrementalAlterConfigs operations (`AlterConfigOp.OpType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Set,
    Delete,
    Append,
    Subtract,
}

impl Op {
    fn from_id(id: i8) -> Option<Op> {
        match id {
            0 => Some(Op::Set),
            1 => Some(Op::Delete),
            2 => Some(Op::Append),
            3 => Some(Op::Subtract),
            _ => None,
        }
    }

    fn kafka_name(self) -> &'static str {
        match self {
            Op::Set => "SET",
            Op::Delete => "DELETE",
            Op::Append => "APPEND",
            Op::Subtract => "SUBTRACT",
        }
    }
}

/// One requested change: name, operation id, value.
type Change = (String, i8, Option<String>);

/// Validates a complete set of overrides and returns it in canonical form.
fn validated(
    overrides: BTreeMap<String, String>,
    broker_defaults: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, KafkaError> {
    let mut out = BTreeMap::new();
    for (name, value) in overrides {
        let canonical = topic_config::normalize(&name, &value).map_err(invalid_config)?;
        out.insert(name, canonical);
    }
    topic_config::validate_combination(&out, broker_defaults).map_err(invalid_config)?;
    Ok(out)
}

fn null_values(changes: &[Change], allowed_for_delete: bool) -> Result<(), KafkaError> {
    let nulls: Vec<&str> = changes
        .iter()
        .filter(|(_, op, v)| v.is_none() && !(allowed_for_delete && *op == 1))
        .map(|(n, _, _)| n.as_str())
        .collect();
    if nulls.is_empty() {
        Ok(())
    } else {
        Err(invalid_request(format!(
            "Null value not supported for : {}",
            nulls.join(", ")
        )))
    }
}

/// Legacy AlterConfigs: the topic's overrides become exactly the given set.
fn replacement(
    changes: &[Change],
    broker_defaults: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, KafkaError> {
    if duplicate_names(changes.iter().map(|(n, _, _)| n.as_str())) {
        return Err(invalid_request("Error due to duplicate config keys"));
    }
    null_values(changes, false)?;
    let overrides = changes
        .iter()
        .map(|(n, _, v)| (n.clone(), v.clone().unwrap_or_default()))
        .collect();
    validated(overrides, broker_defaults)
}

/// IncrementalAlterConfigs: applies SET/DELETE/APPEND/SUBTRACT to the current overrides.
/// APPEND and SUBTRACT work on LIST configs only, start from the effective value, never
/// duplicate an element and remove every occurrence.
fn apply_incremental(
    current: &BTreeMap<String, String>,
    changes: &[Change],
    broker_defaults: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, KafkaError> {
    if duplicate_names(changes.iter().map(|(n, _, _)| n.as_str())) {
        return Err(invalid_request("Error due to duplicate config keys"));
    }
    let mut ops = Vec::with_capacity(changes.len());
    for (name, id, value) in changes {
        let op = Op::from_id(*id).ok_or_else(|| {
            invalid_request(format!("Unknown config operation type {id} for {name}"))
        })?;
        ops.push((name, op, value));
    }
    null_values(changes, true)?;

    let mut next = current.clone();
    for (name, op, value) in ops {
        let value = value.as_deref().unwrap_or_default();
        match op {
            Op::Set => {
                next.insert(name.clone(), value.to_string());
            }
            Op::Delete => {
                next.remove(name);
            }
            Op::Append | Op::Subtract => {
                let Some(def) = topic_config::lookup(name).filter(|d| d.kind == ConfigType::List)
                else {
                    return Err(invalid_config(format!(
                        "Can't {} to key {name} because its type is not LIST.",
                        op.kafka_name()
                    )));
                };
                let base = match next.get(name) {
                    Some(v) => v.clone(),
                    None => topic_config::effective(def, &next, broker_defaults)
                        .value
                        .to_string(),
                };
                let mut items: Vec<String> = topic_config::list_items(&base)
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                for v in topic_config::list_items(value)
                    .into_iter()
                    .filter(|s| !s.is_empty())
                {
                    if op == Op::Append {
                        if !items.iter().any(|i| i == v) {
                            items.push(v.to_string());
                        }
                    } else {
                        items.retain(|i| i != v);
                    }
                }
                next.insert(name.clone(), items.join(","));
            }
        }
    }
    validated(next, broker_defaults)
}

/// Applies a computed change to a topic's overrides (unless `validate_only`).
async fn alter_topic(
    broker: &Broker,
    name: &str,
    validate_only: bool,
    compute: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, KafkaError>,
) -> Result<(), KafkaError> {
    let _serialized = ALTER_LOCK.lock().await;
    let current = broker.meta.read(|s| topic_overrides(s, name))?;
    let next = compute(&current)?;
    if validate_only || next == current {
        return Ok(());
    }
    broker
        .meta
        .write(TopicCommand::SetTopicConfigs {
            name: name.to_string(),
            configs: next.clone(),
        })
        .await
        .map_err(|e| match e {
            MetaError::UnknownTopic(_) => (
                ResponseError::UnknownTopicOrPartition,
                format!("The topic '{name}' does not exist."),
            ),
            other => crate::handlers::topics::meta_error(other),
        })?;
    tracing::info!(topic = name, configs = ?next, "altered topic configs");
    Ok(())
}

/// Broker settings are static: only removing (non-existent) dynamic values succeeds.
fn alter_broker(name: &str, me: i32, changes: &[Change]) -> Result<(), KafkaError> {
    this_broker(name, me, true)?;
    let set: Vec<&str> = changes
        .iter()
        .filter(|(_, op, _)| *op != 1)
        .map(|(n, _, _)| n.as_str())
        .collect();
    if set.is_empty() {
        return Ok(());
    }
    Err(invalid_request(format!(
        "Cannot update these configs dynamically: {} (Shale broker settings are static: set \
         them in the configuration file or SHALE_* environment variables)",
        set.join(", ")
    )))
}

fn alter_broker_logger(name: &str, me: i32, changes: &[Change]) -> Result<(), KafkaError> {
    this_broker(name, me, false)?;
    match changes.first() {
        None => Ok(()),
        Some((logger, _, _)) => Err(invalid_config(format!(
            "Logger {logger} does not exist! (Shale log levels are set with RUST_LOG)"
        ))),
    }
}

fn outcome(result: Result<(), KafkaError>) -> (i16, Option<StrBytes>) {
    match result {
        Ok(()) => (0, None),
        Err((code, message)) => (code.code(), Some(StrBytes::from_string(message))),
    }
}

pub async fn alter_configs(
    broker: &Arc<Broker>,
    version: i16,
    req: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let _ = version;
    let me = broker.config.node_id;
    let dups = duplicate_resources(
        req.resources
            .iter()
            .map(|r| (r.resource_type, &*r.resource_name)),
    );
    let mut responses = Vec::with_capacity(req.resources.len());
    for (res, dup) in req.resources.iter().zip(dups) {
        let name: &str = &res.resource_name;
        let changes: Vec<Change> = res
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    0,
                    c.value.as_ref().map(|v| v.to_string()),
                )
            })
            .collect();
        let result = if dup {
            Err(invalid_request(DUPLICATE_RESOURCE))
        } else {
            match res.resource_type {
                RESOURCE_TOPIC => {
                    alter_topic(broker, name, req.validate_only, |_| {
                        replacement(&changes, &broker.config.topic_defaults)
                    })
                    .await
                }
                RESOURCE_BROKER => alter_broker(name, me, &changes),
                RESOURCE_BROKER_LOGGER => Err(invalid_request(
                    "AlterConfigs is deprecated and does not support the resource type \
                     BROKER_LOGGER",
                )),
                other => Err(unsupported_type(other, name)),
            }
        };
        let (code, message) = outcome(result);
        responses.push(
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone()),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn incremental_alter_configs(
    broker: &Arc<Broker>,
    version: i16,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let _ = version;
    let me = broker.config.node_id;
    let dups = duplicate_resources(
        req.resources
            .iter()
            .map(|r| (r.resource_type, &*r.resource_name)),
    );
    let mut responses = Vec::with_capacity(req.resources.len());
    for (res, dup) in req.resources.iter().zip(dups) {
        let name: &str = &res.resource_name;
        let changes: Vec<Change> = res
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    c.config_operation,
                    c.value.as_ref().map(|v| v.to_string()),
                )
            })
            .collect();
        let result = if dup {
            Err(invalid_request(DUPLICATE_RESOURCE))
        } else {
            match res.resource_type {
                RESOURCE_TOPIC => {
                    alter_topic(broker, name, req.validate_only, |current| {
                        apply_incremental(current, &changes, &broker.config.topic_defaults)
                    })
                    .await
                }
                RESOURCE_BROKER => alter_broker(name, me, &changes),
                RESOURCE_BROKER_LOGGER => alter_broker_logger(name, me, &changes),
                other => Err(unsupported_type(other, name)),
            }
        };
        let (code, message) = outcome(result);
        responses.push(
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone()),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn change(name: &str, op: i8, value: Option<&str>) -> Change {
        (name.to_string(), op, value.map(str::to_string))
    }

    const SET: i8 = 0;
    const DELETE: i8 = 1;
    const APPEND: i8 = 2;
    const SUBTRACT: i8 = 3;

    #[test]
    fn incremental_set_and_delete() {
        let none = BTreeMap::new();
        let current = map(&[("retention.ms", "100"), ("segment.ms", "5")]);
        let next = apply_incremental(
            &current,
            &[
                change("retention.ms", DELETE, None),
                change("compression.type", SET, Some(" lz4 ")),
                change("no.such.config", DELETE, None),
            ],
            &none,
        )
        .unwrap();
        assert_eq!(
            next,
            map(&[("compression.type", "lz4"), ("segment.ms", "5")])
        );
    }

    #[test]
    fn incremental_append_and_subtract_lists() {
        let none = BTreeMap::new();
        // No override: starts from the default ("delete").
        let next = apply_incremental(
            &BTreeMap::new(),
            &[change("cleanup.policy", APPEND, Some("compact"))],
            &none,
        )
        .unwrap();
        assert_eq!(next, map(&[("cleanup.policy", "delete,compact")]));
        // Appending an element already present does not duplicate it.
        let again = apply_incremental(
            &next,
            &[change("cleanup.policy", APPEND, Some("compact,delete"))],
            &none,
        )
        .unwrap();
        assert_eq!(again, next);
        let less = apply_incremental(
            &next,
            &[change("cleanup.policy", SUBTRACT, Some("delete"))],
            &none,
        )
        .unwrap();
        assert_eq!(less, map(&[("cleanup.policy", "compact")]));
        let empty = apply_incremental(
            &less,
            &[change("cleanup.policy", SUBTRACT, Some("compact,delete"))],
            &none,
        )
        .unwrap();
        assert_eq!(empty, map(&[("cleanup.policy", "")]));
        // The broker's setting is the base when the topic has no override.
        let broker = map(&[("cleanup.policy", "compact")]);
        let next = apply_incremental(
            &BTreeMap::new(),
            &[change("cleanup.policy", APPEND, Some("delete"))],
            &broker,
        )
        .unwrap();
        assert_eq!(next, map(&[("cleanup.policy", "compact,delete")]));
        // Appended values are validated.
        let err = apply_incremental(
            &BTreeMap::new(),
            &[change("cleanup.policy", APPEND, Some("shred"))],
            &none,
        )
        .unwrap_err();
        assert_eq!(err.0, ResponseError::InvalidConfig);
    }

    #[test]
    fn incremental_refusals() {
        let none = BTreeMap::new();
        let cur = BTreeMap::new();
        let refuse = |changes: &[Change]| apply_incremental(&cur, changes, &none).unwrap_err();
        assert_eq!(
            refuse(&[change("retention.ms", APPEND, Some("1"))]),
            invalid_config("Can't APPEND to key retention.ms because its type is not LIST.")
        );
        assert_eq!(
            refuse(&[change("no.such", SUBTRACT, Some("1"))]),
            invalid_config("Can't SUBTRACT to key no.such because its type is not LIST.")
        );
        assert_eq!(
            refuse(&[
                change("retention.ms", SET, Some("1")),
                change("retention.ms", DELETE, None)
            ]),
            invalid_request("Error due to duplicate config keys")
        );
        assert_eq!(
            refuse(&[change("retention.ms", SET, None)]),
            invalid_request("Null value not supported for : retention.ms")
        );
        assert_eq!(
            refuse(&[change("retention.ms", 9, Some("1"))]).0,
            ResponseError::InvalidRequest
        );
        assert_eq!(
            refuse(&[change("offset.metadata.max.bytes", SET, Some("1"))]),
            invalid_config("Unknown topic config name: offset.metadata.max.bytes")
        );
        assert_eq!(
            refuse(&[change("retention.ms", SET, Some("soon"))]).0,
            ResponseError::InvalidConfig
        );
        assert_eq!(
            refuse(&[
                change("min.compaction.lag.ms", SET, Some("10")),
                change("max.compaction.lag.ms", SET, Some("5")),
            ])
            .0,
            ResponseError::InvalidConfig
        );
    }

    #[test]
    fn legacy_alter_replaces_the_whole_set() {
        let none = BTreeMap::new();
        let next = replacement(
            &[
                change("compression.type", SET, Some("gzip")),
                change("flush.ms", SET, Some("12345678")),
            ],
            &none,
        )
        .unwrap();
        assert_eq!(
            next,
            map(&[("compression.type", "gzip"), ("flush.ms", "12345678")])
        );
        assert_eq!(replacement(&[], &none).unwrap(), BTreeMap::new());
        assert_eq!(
            replacement(&[change("a", SET, None), change("b", SET, None)], &none).unwrap_err(),
            invalid_request("Null value not supported for : a, b")
        );
        assert_eq!(
            replacement(&[change("dummy", SET, Some("1"))], &none).unwrap_err(),
            invalid_config("Unknown topic config name: dummy")
        );
    }

    #[test]
    fn topic_resources() {
        let mut s = ClusterState::default();
        s.topics.insert(
            "t".into(),
            shale_meta::TopicMeta {
                name: "t".into(),
                id: [0; 16],
                configs: map(&[("retention.ms", "1")]),
                partitions: vec![],
                created_at_ms: 0,
            },
        );
        assert_eq!(
            topic_overrides(&s, "t").unwrap(),
            map(&[("retention.ms", "1")])
        );
        assert_eq!(
            topic_overrides(&s, "u").unwrap_err(),
            (
                ResponseError::UnknownTopicOrPartition,
                "The topic 'u' does not exist.".into()
            )
        );
        assert_eq!(
            topic_overrides(&s, "").unwrap_err().0,
            ResponseError::InvalidRequest
        );
        assert_eq!(
            topic_overrides(&s, "a b").unwrap_err().0,
            ResponseError::InvalidTopicException
        );
    }

    #[test]
    fn broker_resources() {
        assert_eq!(this_broker("1", 1, true), Ok(true));
        assert_eq!(this_broker("", 1, true), Ok(false));
        assert_eq!(
            this_broker("2", 1, true).unwrap_err(),
            invalid_request("Unexpected broker id, expected 1 or empty string, but received 2")
        );
        assert_eq!(
            this_broker("x", 1, true).unwrap_err(),
            invalid_request("Broker id must be an integer, but it is: x")
        );
        assert_eq!(
            this_broker("", 1, false).unwrap_err().0,
            ResponseError::InvalidRequest
        );

        assert_eq!(alter_broker("1", 1, &[]), Ok(()));
        assert_eq!(
            alter_broker("1", 1, &[change("background.threads", DELETE, None)]),
            Ok(())
        );
        let err = alter_broker(
            "1",
            1,
            &[change("log.cleanup.policy", APPEND, Some("compact"))],
        )
        .unwrap_err();
        assert_eq!(err.0, ResponseError::InvalidRequest);
        assert!(
            err.1
                .starts_with("Cannot update these configs dynamically: log.cleanup.policy")
        );
        assert_eq!(
            alter_broker_logger("1", 1, &[change("kafka", SET, Some("DEBUG"))])
                .unwrap_err()
                .0,
            ResponseError::InvalidConfig
        );
    }

    #[test]
    fn duplicate_resources_are_all_flagged() {
        let flags = duplicate_resources([(2, "a"), (4, "a"), (2, "a"), (2, "b")]);
        assert_eq!(flags, vec![true, false, true, false]);
    }

    #[test]
    fn describes_topic_values_sources_and_synonyms() {
        let overrides = map(&[("retention.ms", "7")]);
        let broker = map(&[("retention.ms", "5000"), ("cleanup.policy", "compact")]);
        let entries = describe_topic(&overrides, &broker);
        assert_eq!(entries.len(), topic_config::TOPIC_CONFIGS.len());
        let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap().clone();

        let retention = get("retention.ms");
        assert_eq!(
            (retention.value.as_deref(), retention.source),
            (Some("7"), 1)
        );
        assert_eq!(
            retention.synonyms,
            vec![
                ("retention.ms".to_string(), Some("7".to_string()), 1),
                ("log.retention.ms".to_string(), Some("5000".to_string()), 4),
                (
                    "log.retention.ms".to_string(),
                    Some("604800000".to_string()),
                    5
                ),
            ]
        );
        let cleanup = get("cleanup.policy");
        assert_eq!(
            (cleanup.value.as_deref(), cleanup.source),
            (Some("compact"), 4)
        );
        let segment = get("segment.ms");
        assert_eq!(
            (segment.value.as_deref(), segment.source),
            (Some("604800000"), 5)
        );
        assert!(!segment.read_only);

        // Shaped for the response version.
        let r = retention.clone().into_result(2, false, true);
        assert!(r.synonyms.is_empty());
        assert_eq!(r.config_type, 0);
        assert_eq!(r.documentation, None);
        let r = retention.into_result(4, true, true);
        assert_eq!(r.synonyms.len(), 3);
        assert_eq!(r.config_type, ConfigType::Long as i8);
        assert!(r.documentation.is_some());
        assert!(!r.is_sensitive);
    }

    #[test]
    fn describes_broker_settings_read_only() {
        let mut c = BrokerConfig {
            node_id: 3,
            num_partitions: 6,
            ..Default::default()
        };
        c.topic_defaults
            .insert("retention.ms".into(), "1000".into());
        let entries = describe_broker(&c);
        assert!(
            entries.windows(2).all(|w| w[0].name < w[1].name),
            "sorted, unique"
        );
        assert!(entries.iter().all(|e| e.read_only));
        let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(get("node.id").value.as_deref(), Some("3"));
        assert_eq!(get("broker.id").value.as_deref(), Some("3"));
        assert_eq!(get("num.partitions").value.as_deref(), Some("6"));
        assert_eq!(get("log.retention.ms").value.as_deref(), Some("1000"));
        assert_eq!(get("log.retention.ms").source, 4);
        assert_eq!(get("log.cleanup.policy").source, 5);
        assert_eq!(get("broker.rack").value, None);
        assert!(
            entries
                .iter()
                .all(|e| !e.name.is_empty() && e.name != "retention.ms")
        );
    }

    #[test]
    fn configuration_keys_filter() {
        let entries = describe_topic(&BTreeMap::new(), &BTreeMap::new());
        let n = entries.len();
        assert_eq!(filter_keys(entries.clone(), None).len(), n);
        assert_eq!(filter_keys(entries.clone(), Some(&[])).len(), n);
        let keys = [
            StrBytes::from_static_str("retention.ms"),
            StrBytes::from_static_str("nope"),
        ];
        let kept = filter_keys(entries, Some(&keys));
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].name, "retention.ms");
    }
}
