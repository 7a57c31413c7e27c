//! The audit log: a structured, tamper-evident record of who did what to the cluster.
//!
//! Apache Kafka has none. Shale records an event for every authentication (success and
//! failure), every authorization denial (and every allow when `audit.log.allowed=true`), every
//! admin change (topics, configs, ACLs, SCRAM credentials, quotas, reassignments), every use
//! and rotation of an object-encryption key, and every node joining or being fenced.
//!
//! # Never a payload, never a secret
//!
//! No event type has a field that could hold record data (keys, values, headers). Credential
//! changes name the user and the mechanism, never a password, salt or derived key: the
//! constructor has no parameter to pass one. Config values go through [`ConfigChange`], which
//! drops the value of any config that is, or looks, sensitive. Free text (`summary`, `reason`)
//! is the caller's responsibility and is capped at [`MAX_TEXT_BYTES`].
//!
//! # Format: CloudEvents 1.0, structured JSON mode
//!
//! Each event is one JSON object on one line:
//!
//! ```text
//! {"specversion":"1.0","id":"<uuid>","source":"shale://<cluster-id>/node/<node-id>",
//!  "type":"io.shale.audit.<kind>","time":"2025-01-31T12:34:56.789Z",
//!  "datacontenttype":"application/json","subject":"Topic:orders",
//!  "sequence":"42","prevhash":"<64 hex>","data":{...},"hash":"<64 hex>"}
//! ```
//!
//! (wrapped here; a stored line has no whitespace). Why CloudEvents and not OCSF: Confluent
//! Platform's audit logs are CloudEvents in this mode, so the pipelines that already consume
//! them (Confluent's own tooling, the Splunk, Elastic and Sentinel connectors, any SIEM that
//! ingests JSON lines) take Shale's with no new parser, and the envelope is a small, stable
//! 1.0 spec that leaves `data` to us. OCSF is a normalisation taxonomy for SIEMs rather than
//! a transport envelope; its classes (Authentication, API Activity, Account Change) can be
//! mapped from these events downstream, and nothing in the Kafka ecosystem emits it.
//!
//! `sequence`, `prevhash` and `hash` are CloudEvents extension attributes (lowercase
//! alphanumeric names, as the spec requires). `sequence` is a decimal **string**, as the
//! CloudEvents sequence extension defines it: the CloudEvents `Integer` type is 32 bits, and a
//! string keeps consumers that hold numbers as doubles exact. It runs from 1 to 2^63-1.
//!
//! # The hash chain
//!
//! Every node writes its own chain, keyed by `source`, so several nodes can share one sink
//! (the `__shale_audit` topic, a collector's file) and each chain still verifies.
//!
//! `hash = hex(SHA-256(prevhash_bytes || canonical_bytes))`, where `prevhash_bytes` are the
//! 32 bytes `prevhash` spells and `canonical_bytes` are the line without its `hash`
//! attribute. `hash` is always the last member, so a stored line is exactly
//! `<canonical without its final '}'>,"hash":"<64 hex>"}` and the verifier recovers the
//! canonical bytes by cutting a fixed-length suffix: nothing is re-serialised, so no JSON
//! library's choices (key order, escaping, number format) can break verification. The first
//! event of a chain has sequence 1 and a `prevhash` of 64 zeros; a restarted node continues
//! its chain from the last line it wrote ([`Chain::resume`], [`Chain::resume_from_file`]).
//!
//! # What the chain proves, and what it does not
//!
//! - An altered, inserted, removed or reordered event is detected by [`verify`], at its line,
//!   unless every later event of its chain is re-sealed too (see the last two points).
//! - Removing the last events of a chain (tail truncation) is not: the shorter chain is
//!   intact. [`VerifyReport::heads`] gives each chain's last sequence and hash; compare them
//!   with a head recorded elsewhere (the broker logs its head periodically), or pass recorded
//!   heads to [`Verifier::expecting`] and truncation becomes a problem.
//! - The chain has no key: whoever can rewrite the log can rewrite a consistent chain from
//!   the point of change to the end. As with truncation, only a head recorded out of their
//!   reach exposes that.
//! - [`Auditor::record`] returning `Ok` means the event is queued, not yet durable: events
//!   queued at a crash are lost (at most the queue's capacity), and the chain shows no gap
//!   for them because they were never sequenced.
//!
//! # Metrics
//!
//! `shale_audit_events_total{type}` (written), `shale_audit_dropped_total` (dropped under
//! `best-effort`), `shale_audit_rejected_total` (refused under `fail-closed`: the request
//! failed), `shale_audit_sink_errors_total` (failed sink writes, each retried).

use crate::acl::{PatternType, ResourceType};
use async_trait::async_trait;
use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, watch};

/// The longest `summary` or `reason` an event keeps; longer text is cut at a character
/// boundary. Keeps every line far below [`MAX_LINE_BYTES`].
pub const MAX_TEXT_BYTES: usize = 4096;
/// The longest line the verifier and [`Chain::resume_from_file`] accept: no event comes near
/// it, and it bounds the memory a hostile file can make them use.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// The largest sequence a chain may reach (consumers often hold it in a signed 64-bit int).
const MAX_SEQUENCE: u64 = i64::MAX as u64;
/// The `type` attribute's prefix; the event kind follows.
const TYPE_PREFIX: &str = "io.shale.audit.";
/// What precedes the hash at the end of every line.
const HASH_PREFIX: &[u8] = b",\"hash\":\"";
/// `,"hash":"` + 64 hex digits + `"}`.
const HASH_SUFFIX_LEN: usize = HASH_PREFIX.len() + 64 + 2;
/// The `prevhash` of a chain's first event.
const ZERO_HASH: [u8; 32] = [0; 32];

// ---------------------------------------------------------------------------------------
// The event model
// ---------------------------------------------------------------------------------------

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// An authorization check passed.
    Allowed,
    /// An authorization check failed.
    Denied,
    /// An authentication, change or key operation was carried out.
    Succeeded,
    /// It was attempted and failed.
    Failed,
}

/// The connection an event came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Client {
    /// The listener's name (`SASL_SSL`, `CLIENT`, ...).
    pub listener: String,
    /// The peer's `ip:port`.
    pub address: String,
    /// The request header's client id, when there is a request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl Client {
    pub fn new(listener: impl Into<String>, address: impl Into<String>) -> Client {
        Client {
            listener: listener.into(),
            address: address.into(),
            client_id: None,
        }
    }

    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Client {
        self.client_id = Some(client_id.into());
        self
    }
}

/// A Kafka API and the version the client used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Api {
    /// Kafka's name for it (`Produce`, `CreateTopics`, `AlterUserScramCredentials`).
    pub name: String,
    pub version: i16,
}

impl Api {
    pub fn new(name: impl Into<String>, version: i16) -> Api {
        Api {
            name: name.into(),
            version,
        }
    }
}

/// Who sent a request, over which connection, with which API: what authorization and admin
/// events share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    /// The authenticated principal, `User:alice`.
    pub principal: String,
    pub client: Client,
    pub api: Api,
}

impl Request {
    pub fn new(principal: impl Into<String>, client: Client, api: Api) -> Request {
        Request {
            principal: principal.into(),
            client,
            api,
        }
    }
}

/// The resource an action was on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resource {
    /// Kafka's resource or config-resource type name (`Topic`, `Group`, `Cluster`, `User`,
    /// `Broker`, `ClientQuota`).
    #[serde(rename = "type")]
    pub resource_type: String,
    pub name: String,
    /// For ACL resource patterns: `Literal` or `Prefixed`.
    #[serde(rename = "pattern", skip_serializing_if = "Option::is_none")]
    pub pattern_type: Option<String>,
}

impl Resource {
    pub fn new(resource_type: impl Into<String>, name: impl Into<String>) -> Resource {
        Resource {
            resource_type: resource_type.into(),
            name: name.into(),
            pattern_type: None,
        }
    }

    /// A resource as the authorizer sees it.
    pub fn acl(
        resource_type: ResourceType,
        name: impl Into<String>,
        pattern: PatternType,
    ) -> Resource {
        Resource {
            resource_type: resource_type.name().to_string(),
            name: name.into(),
            pattern_type: Some(pattern.name().to_string()),
        }
    }

    pub fn topic(name: impl Into<String>) -> Resource {
        Resource::new("Topic", name)
    }

    /// The cluster (`kafka-cluster`).
    pub fn cluster() -> Resource {
        Resource::new("Cluster", crate::acl::CLUSTER_NAME)
    }

    /// `Topic:orders`: the event's CloudEvents `subject`.
    fn subject(&self) -> String {
        format!("{}:{}", self.resource_type, self.name)
    }
}

/// How a config changed (Kafka's IncrementalAlterConfigs operations; AlterConfigs is `set`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigOp {
    Set,
    Delete,
    Append,
    Subtract,
}

/// One config's change. The fields are private so that a value can only get in through the
/// constructors, which drop it for sensitive configs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigChange {
    name: String,
    op: ConfigOp,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    /// The value exists but is not recorded.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    sensitive: bool,
}

impl ConfigChange {
    /// `value` is kept unless `sensitive` is true or the name looks like a secret's
    /// ([`looks_sensitive`]): the broker passes Kafka's PASSWORD type as `sensitive`, the
    /// name check is a second line for configs it does not know.
    pub fn new(
        name: impl Into<String>,
        op: ConfigOp,
        value: Option<&str>,
        sensitive: bool,
    ) -> ConfigChange {
        let name = name.into();
        let sensitive = sensitive || looks_sensitive(&name);
        ConfigChange {
            value: if sensitive { None } else { value.map(bounded) },
            sensitive: sensitive && value.is_some(),
            name,
            op,
        }
    }

    pub fn set(name: impl Into<String>, value: &str) -> ConfigChange {
        ConfigChange::new(name, ConfigOp::Set, Some(value), false)
    }

    pub fn delete(name: impl Into<String>) -> ConfigChange {
        ConfigChange::new(name, ConfigOp::Delete, None, false)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }
}

/// Whether a config's name says it holds a secret: Kafka's password-type and key-material
/// configs (`ssl.key.password`, `ssl.keystore.key`, `sasl.jaas.config`,
/// `delegation.token.secret.key`, `password.encoder.secret`, `s3.secret.access.key`, ...).
/// Deliberately broad: redacting a harmless value costs nothing.
pub fn looks_sensitive(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "credential",
        "token",
        "private",
    ]
    .iter()
    .any(|word| name.contains(word))
        || name.ends_with(".key")
}

/// What happened to a SCRAM credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialOp {
    Upsert,
    Delete,
}

/// `data` of an `authentication` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Authentication {
    /// On success the authenticated principal. On a failed exchange none: what a client
    /// claims before proving it is not recorded as who it is. A session that expired names
    /// the principal it had. Never a password or token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    pub client: Client,
    /// `SCRAM-SHA-512`, `PLAIN`, `SSL` (a client certificate), ...
    pub mechanism: String,
    pub outcome: Outcome,
    /// Kafka's error name (`SASL_AUTHENTICATION_FAILED`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `data` of an `authorization` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Authorization {
    #[serde(flatten)]
    pub request: Request,
    pub resource: Resource,
    /// Kafka's ACL operation (`Write`, `Describe`, `AlterConfigs`).
    pub operation: String,
    /// `allowed` or `denied`.
    pub outcome: Outcome,
    /// Kafka's error name the client got (`TOPIC_AUTHORIZATION_FAILED`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `data` of an `admin_change` event: topics, configs, ACLs, SCRAM credentials, quotas,
/// partition reassignments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminChange {
    #[serde(flatten)]
    pub request: Request,
    pub resource: Resource,
    /// What was done (`Create`, `Delete`, `Alter`, `AlterConfigs`).
    pub operation: String,
    /// `succeeded` or `failed`.
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The change in a few words, without secrets: `partitions=12 replication.factor=3`,
    /// `ALLOW User:bob Read Topic:orders LITERAL`, `replicas [1,2,3] -> [2,3,4]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The SASL mechanism of a credential change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<ConfigChange>,
}

/// `data` of a `key_use` event: an object-encryption key (KEK) wrapping or unwrapping a
/// data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyUse {
    /// The key's identifier in its key store (never key material).
    pub key_id: String,
    /// `wrap`, `unwrap`.
    pub operation: String,
    /// What the key protected, such as an object's path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `data` of a `key_rotation` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRotation {
    /// The new key's identifier.
    pub key_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_key_id: Option<String>,
    /// Who asked for it; none for a scheduled rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `data` of a `node_join` or `node_fence` event. The node that records it is the event's
/// `source`; `node_id` is the node that joined or was fenced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeMembership {
    pub node_id: i32,
    /// The address it advertises.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What an event is about. Serialised as its fields alone: the kind is the CloudEvents
/// `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum AuditKind {
    Authentication(Authentication),
    Authorization(Authorization),
    AdminChange(AdminChange),
    KeyUse(KeyUse),
    KeyRotation(KeyRotation),
    NodeJoin(NodeMembership),
    NodeFence(NodeMembership),
}

impl AuditKind {
    /// The last part of the CloudEvents `type`, and the `type` label of
    /// `shale_audit_events_total`.
    pub fn name(&self) -> &'static str {
        match self {
            AuditKind::Authentication(_) => "authentication",
            AuditKind::Authorization(_) => "authorization",
            AuditKind::AdminChange(_) => "admin_change",
            AuditKind::KeyUse(_) => "key_use",
            AuditKind::KeyRotation(_) => "key_rotation",
            AuditKind::NodeJoin(_) => "node_join",
            AuditKind::NodeFence(_) => "node_fence",
        }
    }
}

/// One audited occurrence. `time` is when it happened (taken by the constructors); the
/// chain order is the order the auditor wrote events in, which may differ by a few
/// microseconds between concurrent requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub time: SystemTime,
    pub kind: AuditKind,
}

impl AuditEvent {
    pub fn new(kind: AuditKind) -> AuditEvent {
        AuditEvent {
            time: SystemTime::now(),
            kind,
        }
    }

    /// An authentication: `principal` as [`Authentication::principal`] says. Add the error
    /// and reason with [`with_error`](Self::with_error) and
    /// [`with_reason`](Self::with_reason).
    pub fn authentication(
        client: Client,
        mechanism: impl Into<String>,
        principal: Option<String>,
        outcome: Outcome,
    ) -> AuditEvent {
        AuditEvent::new(AuditKind::Authentication(Authentication {
            principal,
            client,
            mechanism: mechanism.into(),
            outcome,
            error: None,
            reason: None,
        }))
    }

    /// An authorization decision.
    pub fn authorization(
        request: &Request,
        resource: Resource,
        operation: impl Into<String>,
        allowed: bool,
    ) -> AuditEvent {
        AuditEvent::new(AuditKind::Authorization(Authorization {
            request: request.clone(),
            resource,
            operation: operation.into(),
            outcome: if allowed {
                Outcome::Allowed
            } else {
                Outcome::Denied
            },
            error: None,
            reason: None,
        }))
    }

    /// An authorization denial.
    pub fn denied(
        request: &Request,
        resource: Resource,
        operation: impl Into<String>,
    ) -> AuditEvent {
        AuditEvent::authorization(request, resource, operation, false)
    }

    /// An authorization allow: recorded only with `audit.log.allowed=true` (see
    /// [`Auditor::logs_allowed`] to skip building it otherwise).
    pub fn allowed(
        request: &Request,
        resource: Resource,
        operation: impl Into<String>,
    ) -> AuditEvent {
        AuditEvent::authorization(request, resource, operation, true)
    }

    /// An admin change; `summary` says what changed, without secrets (add configs with
    /// [`with_configs`](Self::with_configs)).
    pub fn admin_change(
        request: &Request,
        resource: Resource,
        operation: impl Into<String>,
        outcome: Outcome,
        summary: impl Into<String>,
    ) -> AuditEvent {
        let summary = summary.into();
        AuditEvent::new(AuditKind::AdminChange(AdminChange {
            request: request.clone(),
            resource,
            operation: operation.into(),
            outcome,
            error: None,
            reason: None,
            summary: (!summary.is_empty()).then(|| bounded(summary)),
            mechanism: None,
            configs: Vec::new(),
        }))
    }

    /// A SCRAM credential upserted or deleted for `user`. There is no parameter for the
    /// password, the salt or the keys derived from them: none can be logged.
    pub fn credential_change(
        request: &Request,
        user: &str,
        mechanism: &str,
        op: CredentialOp,
        outcome: Outcome,
    ) -> AuditEvent {
        let (operation, summary) = match op {
            CredentialOp::Upsert => ("Alter", "upsert credential"),
            CredentialOp::Delete => ("Delete", "delete credential"),
        };
        let mut event = AuditEvent::admin_change(
            request,
            Resource::new("User", user),
            operation,
            outcome,
            summary,
        );
        if let AuditKind::AdminChange(change) = &mut event.kind {
            change.mechanism = Some(mechanism.to_string());
        }
        event
    }

    /// A key (KEK) wrapping or unwrapping a data key.
    pub fn key_use(
        key_id: impl Into<String>,
        operation: impl Into<String>,
        outcome: Outcome,
    ) -> AuditEvent {
        AuditEvent::new(AuditKind::KeyUse(KeyUse {
            key_id: key_id.into(),
            operation: operation.into(),
            resource: None,
            outcome,
            error: None,
            reason: None,
        }))
    }

    /// A key rotation to `key_id`; `principal` is who asked, none when scheduled.
    pub fn key_rotation(
        key_id: impl Into<String>,
        previous_key_id: Option<String>,
        principal: Option<String>,
        outcome: Outcome,
    ) -> AuditEvent {
        AuditEvent::new(AuditKind::KeyRotation(KeyRotation {
            key_id: key_id.into(),
            previous_key_id,
            principal,
            outcome,
            error: None,
            reason: None,
        }))
    }

    /// Node `node_id` joined the cluster.
    pub fn node_join(node_id: i32, address: Option<String>) -> AuditEvent {
        AuditEvent::new(AuditKind::NodeJoin(NodeMembership {
            node_id,
            address,
            reason: None,
        }))
    }

    /// Node `node_id` was fenced.
    pub fn node_fence(node_id: i32, reason: impl Into<String>) -> AuditEvent {
        AuditEvent::new(AuditKind::NodeFence(NodeMembership {
            node_id,
            address: None,
            reason: Some(bounded(reason.into())),
        }))
    }

    /// Sets Kafka's error name (`TOPIC_AUTHORIZATION_FAILED`). Node events have no error
    /// and are returned unchanged.
    pub fn with_error(mut self, error: impl Into<String>) -> AuditEvent {
        let slot = match &mut self.kind {
            AuditKind::Authentication(e) => &mut e.error,
            AuditKind::Authorization(e) => &mut e.error,
            AuditKind::AdminChange(e) => &mut e.error,
            AuditKind::KeyUse(e) => &mut e.error,
            AuditKind::KeyRotation(e) => &mut e.error,
            AuditKind::NodeJoin(_) | AuditKind::NodeFence(_) => return self,
        };
        *slot = Some(error.into());
        self
    }

    /// Sets the human-readable reason (cut at [`MAX_TEXT_BYTES`]). It must not quote a
    /// secret: Kafka's own messages print sensitive config values as `[hidden]`.
    pub fn with_reason(mut self, reason: impl Into<String>) -> AuditEvent {
        let slot = match &mut self.kind {
            AuditKind::Authentication(e) => &mut e.reason,
            AuditKind::Authorization(e) => &mut e.reason,
            AuditKind::AdminChange(e) => &mut e.reason,
            AuditKind::KeyUse(e) => &mut e.reason,
            AuditKind::KeyRotation(e) => &mut e.reason,
            AuditKind::NodeJoin(e) | AuditKind::NodeFence(e) => &mut e.reason,
        };
        *slot = Some(bounded(reason.into()));
        self
    }

    /// Adds config changes to an admin change; other kinds are returned unchanged.
    pub fn with_configs(mut self, configs: Vec<ConfigChange>) -> AuditEvent {
        if let AuditKind::AdminChange(change) = &mut self.kind {
            change.configs.extend(configs);
        }
        self
    }

    /// The object a key-use event was about (an object's path).
    pub fn with_resource(mut self, resource: impl Into<String>) -> AuditEvent {
        if let AuditKind::KeyUse(key) = &mut self.kind {
            key.resource = Some(resource.into());
        }
        self
    }

    /// Overrides the time (replaying, tests).
    pub fn with_time(mut self, time: SystemTime) -> AuditEvent {
        self.time = time;
        self
    }

    /// An authorization that was allowed: filtered unless `audit.log.allowed=true`.
    pub fn is_allow(&self) -> bool {
        matches!(&self.kind, AuditKind::Authorization(a) if a.outcome == Outcome::Allowed)
    }

    /// The CloudEvents `subject`: the resource acted on, or who authenticated.
    pub fn subject(&self) -> String {
        match &self.kind {
            AuditKind::Authentication(a) => a
                .principal
                .clone()
                .unwrap_or_else(|| a.client.address.clone()),
            AuditKind::Authorization(a) => a.resource.subject(),
            AuditKind::AdminChange(a) => a.resource.subject(),
            AuditKind::KeyUse(k) => format!("Key:{}", k.key_id),
            AuditKind::KeyRotation(k) => format!("Key:{}", k.key_id),
            AuditKind::NodeJoin(n) | AuditKind::NodeFence(n) => format!("Node:{}", n.node_id),
        }
    }
}

/// Cuts free text at [`MAX_TEXT_BYTES`], on a character boundary.
fn bounded(text: impl Into<String>) -> String {
    let mut text = text.into();
    if text.len() > MAX_TEXT_BYTES {
        let mut end = MAX_TEXT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

// ---------------------------------------------------------------------------------------
// Lines and chains
// ---------------------------------------------------------------------------------------

/// A chain's identity: the CloudEvents `source`, `shale://<cluster-id>/node/<node-id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(String);

impl Source {
    pub fn node(cluster_id: &str, node_id: i32) -> Source {
        Source(format!("shale://{cluster_id}/node/{node_id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A chain's position: its last event's sequence and hash (sequence 0 and zeros before the
/// first). Written `<sequence>:<hex hash>`, the form the broker logs and operators compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub sequence: u64,
    pub hash: [u8; 32],
}

impl Head {
    const START: Head = Head {
        sequence: 0,
        hash: ZERO_HASH,
    };

    pub fn hash_hex(&self) -> String {
        hex(&self.hash)
    }
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.sequence, self.hash_hex())
    }
}

impl std::str::FromStr for Head {
    type Err = String;
    fn from_str(s: &str) -> Result<Head, String> {
        let bad = || format!("{s:?} is not a chain head (<sequence>:<64 hex digits>)");
        let (sequence, hash) = s.trim().split_once(':').ok_or_else(bad)?;
        Ok(Head {
            sequence: parse_sequence(sequence).ok_or_else(bad)?,
            hash: unhex32(hash.as_bytes()).ok_or_else(bad)?,
        })
    }
}

/// Why a chain could not be resumed. The broker must not start auditing on a new chain
/// over this: an operator looks at the file first.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("reading the audit log: {0}")]
    Io(#[from] io::Error),
    #[error("the audit log cannot be resumed from: {0}")]
    Corrupt(String),
}

/// The writer's side of one chain: seals events into lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    source: String,
    head: Head,
}

impl Chain {
    /// A chain that has written nothing yet.
    pub fn new(source: &Source) -> Chain {
        Chain {
            source: source.0.clone(),
            head: Head::START,
        }
    }

    /// Continues the chain `last_line` ends (its source, sequence and hash). The line must
    /// verify on its own: continuing from an altered line would launder it.
    pub fn resume(last_line: &str) -> Result<Chain, ResumeError> {
        let sealed =
            open_line(last_line.as_bytes()).map_err(|e| ResumeError::Corrupt(e.to_string()))?;
        Ok(Chain {
            source: sealed.source,
            head: sealed.head,
        })
    }

    /// Continues `source`'s chain from the last complete line of it in the file at `path`
    /// (read backwards, so start-up does not read the whole log), or starts it when the file
    /// does not exist or holds none of its events. A final line without its newline is a
    /// write torn by a crash and is ignored, as [`FileSink::open`] removes it. Any line
    /// examined that does not verify stops the resume.
    pub fn resume_from_file(path: &Path, source: &Source) -> Result<Chain, ResumeError> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Chain::new(source)),
            Err(e) => return Err(e.into()),
        };
        let mut found = None;
        for_lines_backwards(&mut file, |line| match open_line(line) {
            Ok(sealed) if sealed.source == source.0 => {
                found = Some(sealed.head);
                Ok(false)
            }
            Ok(_) => Ok(true),
            Err(e) => Err(ResumeError::Corrupt(e.to_string())),
        })?;
        Ok(Chain {
            source: source.0.clone(),
            head: found.unwrap_or(Head::START),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The last sealed event's position.
    pub fn head(&self) -> Head {
        self.head
    }

    /// Assigns the event the next sequence, links it to the previous hash, and returns its
    /// line (without a newline).
    pub fn seal(&mut self, event: &AuditEvent) -> String {
        // At a million events a second, 2^63 is reached in 292,000 years.
        let sequence = self.head.sequence + 1;
        let canonical = Canonical {
            specversion: "1.0",
            id: uuid::Uuid::new_v4().to_string(),
            source: &self.source,
            event_type: format!("{TYPE_PREFIX}{}", event.kind.name()),
            time: rfc3339_millis(event.time),
            datacontenttype: "application/json",
            subject: event.subject(),
            sequence: sequence.to_string(),
            prevhash: hex(&self.head.hash),
            data: &event.kind,
        };
        // Infallible: every field is a string, an integer or a struct of those; no map has
        // a non-string key, and no Serialize impl here returns an error. serde_json escapes
        // control characters, so client-supplied text cannot break the line.
        let mut line = serde_json::to_string(&canonical).expect("audit events always serialise");
        let hash = chain_hash(&self.head.hash, line.as_bytes());
        // `line` is a JSON object, so it ends with '}': the hash goes in before it.
        line.pop();
        line.push_str(",\"hash\":\"");
        line.push_str(&hex(&hash));
        line.push_str("\"}");
        self.head = Head { sequence, hash };
        line
    }
}

/// The line without `hash`, in the attribute order every line has.
#[derive(Serialize)]
struct Canonical<'a> {
    specversion: &'static str,
    id: String,
    source: &'a str,
    #[serde(rename = "type")]
    event_type: String,
    time: String,
    datacontenttype: &'static str,
    subject: String,
    sequence: String,
    prevhash: String,
    data: &'a AuditKind,
}

/// The attributes the verifier reads from a stored line. Unknown attributes are allowed
/// (they are covered by the hash anyway); a repeated one is a parse error.
#[derive(Deserialize)]
struct Stored {
    specversion: String,
    source: String,
    #[serde(rename = "type")]
    event_type: String,
    sequence: String,
    prevhash: String,
    hash: String,
}

/// A line that verified on its own.
struct Sealed {
    source: String,
    prevhash: [u8; 32],
    head: Head,
}

#[derive(Debug)]
enum LineError {
    Unparseable(String),
    Altered,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::Unparseable(reason) => write!(f, "not an audit event: {reason}"),
            LineError::Altered => f.write_str("its hash does not match its content"),
        }
    }
}

/// Parses a stored line and checks its own hash.
fn open_line(line: &[u8]) -> Result<Sealed, LineError> {
    let bad = |reason: &str| LineError::Unparseable(reason.to_string());
    if line.len() > MAX_LINE_BYTES {
        return Err(bad("longer than 1 MiB"));
    }
    // The suffix is checked before anything is parsed, so the canonical bytes are the line
    // minus a fixed-length tail; `split_at` cannot panic after the length check.
    if line.len() < HASH_SUFFIX_LEN + 2 {
        return Err(bad("too short"));
    }
    let (body, suffix) = line.split_at(line.len() - HASH_SUFFIX_LEN);
    if !suffix.starts_with(HASH_PREFIX) || !suffix.ends_with(b"\"}") {
        return Err(bad("does not end with its hash"));
    }
    let hex_hash = &suffix[HASH_PREFIX.len()..HASH_PREFIX.len() + 64];
    let hash = unhex32(hex_hash).ok_or_else(|| bad("hash is not 64 lowercase hex digits"))?;
    // A successful parse also proves the suffix is the object's last member, not text in a
    // string: its quotes are unescaped, so inside a string they would make invalid JSON.
    let stored: Stored =
        serde_json::from_slice(line).map_err(|e| LineError::Unparseable(e.to_string()))?;
    if stored.hash.as_bytes() != hex_hash {
        return Err(bad("the hash attribute is not the line's last member"));
    }
    if stored.specversion != "1.0" {
        return Err(bad("specversion is not 1.0"));
    }
    if !stored.event_type.starts_with(TYPE_PREFIX) {
        return Err(bad("type is not io.shale.audit.*"));
    }
    let sequence = parse_sequence(&stored.sequence)
        .ok_or_else(|| bad("sequence is not a decimal in 1..2^63"))?;
    let prevhash = unhex32(stored.prevhash.as_bytes())
        .ok_or_else(|| bad("prevhash is not 64 lowercase hex digits"))?;
    let mut canonical = Vec::with_capacity(body.len() + 1);
    canonical.extend_from_slice(body);
    canonical.push(b'}');
    if chain_hash(&prevhash, &canonical) != hash {
        return Err(LineError::Altered);
    }
    Ok(Sealed {
        source: stored.source,
        prevhash,
        head: Head { sequence, hash },
    })
}

/// A sequence as written: decimal digits, no sign or leading zero, 1..=2^63-1.
fn parse_sequence(s: &str) -> Option<u64> {
    if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|n| (1..=MAX_SEQUENCE).contains(n))
}

fn chain_hash(prevhash: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prevhash);
    ctx.update(canonical);
    let mut out = [0; 32];
    // Cannot panic: a SHA-256 digest is always 32 bytes.
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Calls `visit` on each complete line of `file`, last first, until it returns `Ok(false)`.
/// The bytes after the last newline (a torn write) are skipped.
fn for_lines_backwards(
    file: &mut File,
    mut visit: impl FnMut(&[u8]) -> Result<bool, ResumeError>,
) -> Result<(), ResumeError> {
    const BLOCK: u64 = 64 * 1024;
    let mut pos = file.seek(SeekFrom::End(0))?;
    // The bytes of the line being assembled, whose start is not read yet.
    let mut tail: Vec<u8> = Vec::new();
    let mut past_torn_tail = false;
    let mut block = Vec::new();
    while pos > 0 {
        let n = BLOCK.min(pos);
        pos -= n;
        file.seek(SeekFrom::Start(pos))?;
        block.clear();
        file.by_ref().take(n).read_to_end(&mut block)?;
        let mut end = block.len();
        while let Some(newline) = block[..end].iter().rposition(|&b| b == b'\n') {
            let mut line = block[newline + 1..end].to_vec();
            line.extend_from_slice(&tail);
            tail.clear();
            if past_torn_tail {
                if !visit(&line)? {
                    return Ok(());
                }
            } else {
                past_torn_tail = true;
            }
            end = newline;
        }
        let mut rest = block[..end].to_vec();
        rest.extend_from_slice(&tail);
        tail = rest;
        if tail.len() > MAX_LINE_BYTES {
            return Err(ResumeError::Corrupt("a line is longer than 1 MiB".into()));
        }
    }
    if past_torn_tail && !tail.is_empty() {
        visit(&tail)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------

/// The first thing wrong with a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// The log could not be read.
    Unreadable { reason: String },
    /// The line is not an audit event.
    Unparseable { reason: String },
    /// The line's hash does not match its content: it was changed.
    Altered,
    /// Events were removed: the chain jumps from `expected - 1` to `found` (or, if the
    /// missing events turn up later, see `Reordered`).
    Gap {
        source: String,
        expected: u64,
        found: u64,
    },
    /// The event has the next sequence but does not link to the previous event's hash: an
    /// event was removed and the rest renumbered, or replaced, or two chains spliced.
    BrokenLink { source: String, sequence: u64 },
    /// Events are out of order or repeated: `found` came where `expected` should have.
    Reordered {
        source: String,
        expected: u64,
        found: u64,
    },
    /// The log has the recorded head's sequence with another hash: it was rewritten.
    HeadMismatch { source: String, sequence: u64 },
    /// The log ends before a recorded head: its tail was removed.
    Truncated {
        source: String,
        expected: u64,
        found: Option<u64>,
    },
}

impl ProblemKind {
    /// Whether the problem means events are missing.
    pub fn is_removal(&self) -> bool {
        matches!(
            self,
            ProblemKind::Gap { .. }
                | ProblemKind::BrokenLink { .. }
                | ProblemKind::Truncated { .. }
        )
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::Unreadable { reason } => write!(f, "unreadable: {reason}"),
            ProblemKind::Unparseable { reason } => write!(f, "unparseable: {reason}"),
            ProblemKind::Altered => {
                f.write_str("altered event: its hash does not match its content")
            }
            ProblemKind::Gap {
                source,
                expected,
                found,
            } => write!(
                f,
                "removed events: {source} jumps to sequence {found}, expected {expected}"
            ),
            ProblemKind::BrokenLink { source, sequence } => write!(
                f,
                "removed or replaced event: {source} sequence {sequence} does not link to \
                 the previous event"
            ),
            ProblemKind::Reordered {
                source,
                expected,
                found,
            } => write!(
                f,
                "reordered or repeated event: {source} has sequence {found} where {expected} \
                 was expected"
            ),
            ProblemKind::HeadMismatch { source, sequence } => write!(
                f,
                "rewritten log: {source} sequence {sequence} differs from the recorded head"
            ),
            ProblemKind::Truncated {
                source,
                expected,
                found,
            } => match found {
                Some(found) => write!(
                    f,
                    "truncated log: {source} ends at sequence {found}, the recorded head is \
                     {expected}"
                ),
                None => write!(
                    f,
                    "truncated log: no event of {source}, the recorded head is {expected}"
                ),
            },
        }
    }
}

/// Where and what. `line` is 1-based; for `Truncated` it is the number of lines read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: u64,
    pub kind: ProblemKind,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Lines read.
    pub lines: u64,
    /// Events verified (up to the problem, if any).
    pub events: u64,
    /// Each chain's last verified event, by source. An intact chain whose tail was cut also
    /// verifies: compare these with a recorded head.
    pub heads: BTreeMap<String, Head>,
    pub problem: Option<Problem>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }

    /// The number of chains (sources) seen.
    pub fn chains(&self) -> usize {
        self.heads.len()
    }
}

impl fmt::Display for VerifyReport {
    /// What `shale audit verify` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            None => writeln!(
                f,
                "OK: {} in {} verified",
                counted(self.events, "event"),
                counted(self.chains() as u64, "chain")
            )?,
            Some(p) => writeln!(
                f,
                "FAILED at line {}: {} ({} verified before it)",
                p.line,
                p.kind,
                counted(self.events, "event")
            )?,
        }
        for (source, head) in &self.heads {
            writeln!(f, "head {source} {head}")?;
        }
        Ok(())
    }
}

fn counted(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Checks lines one at a time. [`verify`] and [`verify_file`] cover the common case; a
/// verifier also continues chains from recorded heads (a log rotated into several files)
/// and checks that recorded heads are present (which catches tail truncation).
#[derive(Debug, Default)]
pub struct Verifier {
    heads: BTreeMap<String, Head>,
    expected: BTreeMap<String, Head>,
    lines: u64,
    events: u64,
    problem: Option<Problem>,
    /// A gap is reclassified as a reordering if a missing sequence turns up later.
    pending_gap: Option<(String, u64, u64)>,
}

impl Verifier {
    pub fn new() -> Verifier {
        Verifier::default()
    }

    /// `source`'s chain continues from `head` (the last event of the previous file) rather
    /// than starting at sequence 1.
    pub fn continuing(mut self, source: &str, head: Head) -> Verifier {
        self.heads.insert(source.to_string(), head);
        self
    }

    /// `head` was recorded for `source` (from the broker's log, or a previous verification):
    /// the log must contain it, with that hash.
    pub fn expecting(mut self, source: &str, head: Head) -> Verifier {
        self.expected.insert(source.to_string(), head);
        self
    }

    /// Checks the next line (without its newline).
    pub fn push_line(&mut self, line: &[u8]) {
        self.lines += 1;
        if self.problem.is_some() {
            self.classify_gap(line);
            return;
        }
        let sealed = match open_line(line) {
            Ok(sealed) => sealed,
            Err(LineError::Unparseable(reason)) => {
                return self.fail(ProblemKind::Unparseable { reason });
            }
            Err(LineError::Altered) => return self.fail(ProblemKind::Altered),
        };
        let previous = self
            .heads
            .get(&sealed.source)
            .copied()
            .unwrap_or(Head::START);
        // Cannot overflow: a verified sequence is at most 2^63-1.
        let expected = previous.sequence + 1;
        let Head { sequence, hash } = sealed.head;
        let source = sealed.source;
        if sequence > expected {
            self.pending_gap = Some((source.clone(), expected, sequence));
            return self.fail(ProblemKind::Gap {
                source,
                expected,
                found: sequence,
            });
        }
        if sequence < expected {
            return self.fail(ProblemKind::Reordered {
                source,
                expected,
                found: sequence,
            });
        }
        if sealed.prevhash != previous.hash {
            return self.fail(ProblemKind::BrokenLink { source, sequence });
        }
        if self
            .expected
            .get(&source)
            .is_some_and(|recorded| recorded.sequence == sequence && recorded.hash != hash)
        {
            return self.fail(ProblemKind::HeadMismatch { source, sequence });
        }
        self.events += 1;
        self.heads.insert(source, sealed.head);
    }

    /// Whether more lines can change the report.
    pub fn is_done(&self) -> bool {
        self.problem.is_some() && self.pending_gap.is_none()
    }

    /// Checks every line; stops reading at the first problem (or at the first read error).
    pub fn verify(mut self, lines: impl IntoIterator<Item = io::Result<String>>) -> VerifyReport {
        for line in lines {
            match line {
                Ok(line) => self.push_line(line.as_bytes()),
                Err(e) => self.unreadable(e),
            }
            if self.is_done() {
                break;
            }
        }
        self.finish()
    }

    /// Checks the file at `path`. An error opening it is returned; one reading it is the
    /// report's problem. Lines that are not UTF-8 are unparseable, not read errors.
    pub fn verify_file(mut self, path: &Path) -> io::Result<VerifyReport> {
        let mut reader = BufReader::with_capacity(1 << 16, File::open(path)?);
        let mut line = Vec::new();
        loop {
            line.clear();
            // One byte over the limit is enough to know a line is too long.
            match reader
                .by_ref()
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut line)
            {
                Ok(0) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    self.push_line(&line);
                }
                Err(e) => self.unreadable(e),
            }
            if self.is_done() {
                break;
            }
        }
        Ok(self.finish())
    }

    pub fn finish(mut self) -> VerifyReport {
        if self.problem.is_none() {
            for (source, recorded) in &self.expected {
                let found = self.heads.get(source).map(|h| h.sequence);
                if found.is_none_or(|found| found < recorded.sequence) {
                    self.problem = Some(Problem {
                        line: self.lines,
                        kind: ProblemKind::Truncated {
                            source: source.clone(),
                            expected: recorded.sequence,
                            found,
                        },
                    });
                    break;
                }
            }
        }
        VerifyReport {
            lines: self.lines,
            events: self.events,
            heads: self.heads,
            problem: self.problem,
        }
    }

    fn fail(&mut self, kind: ProblemKind) {
        self.problem = Some(Problem {
            line: self.lines,
            kind,
        });
    }

    fn unreadable(&mut self, e: io::Error) {
        // A read error ends the log: nothing after it can be trusted to be the next line.
        self.pending_gap = None;
        if self.problem.is_none() {
            self.lines += 1;
            self.fail(ProblemKind::Unreadable {
                reason: e.to_string(),
            });
        }
    }

    /// After a gap, a later line carrying a missing sequence of the same chain means the
    /// events were moved, not removed. Only a line that verifies on its own counts.
    fn classify_gap(&mut self, line: &[u8]) {
        let Some((source, expected, found)) = &self.pending_gap else {
            return;
        };
        if let Ok(sealed) = open_line(line)
            && sealed.source == *source
            && (*expected..*found).contains(&sealed.head.sequence)
            && let Some(problem) = &mut self.problem
        {
            problem.kind = ProblemKind::Reordered {
                source: source.clone(),
                expected: *expected,
                found: *found,
            };
            self.pending_gap = None;
        }
    }
}

/// Verifies every chain in `lines`, from sequence 1.
pub fn verify(lines: impl IntoIterator<Item = io::Result<String>>) -> VerifyReport {
    Verifier::new().verify(lines)
}

/// Verifies every chain in the file at `path`, from sequence 1.
pub fn verify_file(path: impl AsRef<Path>) -> io::Result<VerifyReport> {
    Verifier::new().verify_file(path.as_ref())
}

// ---------------------------------------------------------------------------------------
// Sinks
// ---------------------------------------------------------------------------------------

/// Where sealed lines go: [`FileSink`] here, the `__shale_audit` topic in the broker.
#[async_trait]
pub trait AuditSink: Send {
    /// Appends `lines` (one event each, without newlines) durably and in order; returns once
    /// they are durable. On an error the auditor writes the same lines again until it
    /// succeeds, so a failed write must leave nothing a reader would take for a line, or
    /// the retry must not duplicate (an idempotent producer).
    async fn write(&mut self, lines: &[String]) -> io::Result<()>;

    /// For log messages.
    fn name(&self) -> String {
        "audit sink".to_string()
    }
}

/// Appends lines to a file: one write, a flush and `sync_data` per batch.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    file: tokio::fs::File,
    /// The file's length after the last durable batch: a failed batch is cut back to it.
    len: u64,
    dirty: bool,
}

impl FileSink {
    /// Opens (or creates, owner-only) the file for appending. A final line without its
    /// newline was torn by a crash before its batch was durable, and is cut off (with a
    /// warning) so the next line does not fuse with it; [`Chain::resume_from_file`] ignores
    /// it the same way.
    pub async fn open(path: impl AsRef<Path>) -> io::Result<FileSink> {
        let path = path.as_ref().to_path_buf();
        let opened = path.clone();
        let (file, len) = tokio::task::spawn_blocking(move || open_for_append(&opened))
            .await
            .map_err(io::Error::other)??;
        Ok(FileSink {
            path,
            file: tokio::fs::File::from_std(file),
            len,
            dirty: false,
        })
    }
}

fn open_for_append(path: &Path) -> io::Result<(File, u64)> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    let len = file.metadata()?.len();
    let complete = complete_len(&mut file, len)?;
    if complete < len {
        tracing::warn!(
            path = %path.display(),
            bytes = len - complete,
            "audit log ends with a torn write; cutting it off"
        );
        file.set_len(complete)?;
        file.sync_data()?;
    }
    Ok((file, complete))
}

/// The length of `file` up to and including its last newline.
fn complete_len(file: &mut File, len: u64) -> io::Result<u64> {
    const BLOCK: u64 = 64 * 1024;
    let mut end = len;
    let mut block = Vec::new();
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        file.seek(SeekFrom::Start(start))?;
        block.clear();
        file.by_ref().take(end - start).read_to_end(&mut block)?;
        if let Some(newline) = block.iter().rposition(|&b| b == b'\n') {
            return Ok(start + newline as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[async_trait]
impl AuditSink for FileSink {
    async fn write(&mut self, lines: &[String]) -> io::Result<()> {
        if self.dirty {
            // The last write failed part-way: cut what it left (unless the file was
            // truncated under us, by a rotation, in which case there is nothing to cut).
            if self.file.metadata().await?.len() > self.len {
                self.file.set_len(self.len).await?;
            }
            self.dirty = false;
        }
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for line in lines {
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
        }
        self.dirty = true;
        self.file.write_all(&buf).await?;
        self.file.flush().await?;
        self.file.sync_data().await?;
        self.len = self.file.metadata().await?.len();
        self.dirty = false;
        Ok(())
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

// ---------------------------------------------------------------------------------------
// The auditor
// ---------------------------------------------------------------------------------------

/// `audit.failure.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// No audit, no action: [`Auditor::record`] fails when the queue is full or a sink is
    /// failing, and the caller fails the request.
    #[default]
    FailClosed,
    /// Availability first: such events are dropped and counted.
    BestEffort,
}

/// The audit log is not taking events: fail the request that wanted to record one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the audit log is unavailable")]
pub struct AuditUnavailable;

/// The most events the writer seals into one batch (one write and one `sync_data` per sink).
const MAX_BATCH: usize = 4096;
/// A failing sink is retried after this, doubling up to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

// Nearly every command is an event: boxing it would add an allocation per event to save
// space only in the rare flush.
#[expect(clippy::large_enum_variant, reason = "flushes are rare")]
enum Command {
    Event(AuditEvent),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Clone, Copy)]
struct Status {
    head: Head,
    healthy: bool,
}

struct Inner {
    tx: mpsc::Sender<Command>,
    policy: FailurePolicy,
    log_allowed: bool,
    /// Read on every `record`; the writer clears it while a sink fails.
    healthy: Arc<AtomicBool>,
    dropped: AtomicU64,
    status: watch::Receiver<Status>,
    source: String,
}

/// Records audit events from request paths. Cheap to clone; `record` never waits on I/O.
/// The writer task ends once every clone is dropped and the queue is written.
#[derive(Clone)]
pub struct Auditor {
    inner: Option<Arc<Inner>>,
}

impl fmt::Debug for Auditor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            None => f.write_str("Auditor(disabled)"),
            Some(inner) => write!(f, "Auditor({})", inner.source),
        }
    }
}

impl Auditor {
    /// An auditor that accepts every event and records none (`audit.enable=false`).
    pub fn disabled() -> Auditor {
        Auditor { inner: None }
    }

    /// Starts the writer task (on the current tokio runtime) that seals events into `chain`
    /// and writes them to `sinks`, in that order. Resume `chain` from the most advanced
    /// sink. A disabled config gives [`Auditor::disabled`].
    pub fn start(config: &AuditConfig, chain: Chain, sinks: Vec<Box<dyn AuditSink>>) -> Auditor {
        if !config.enabled {
            return Auditor::disabled();
        }
        // `mpsc::channel` panics on 0; `from_settings` refuses it, this covers hand-made
        // configs.
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let healthy = Arc::new(AtomicBool::new(true));
        let (status_tx, status) = watch::channel(Status {
            head: chain.head(),
            healthy: true,
        });
        let source = chain.source().to_string();
        let writer = Writer {
            chain,
            sinks,
            healthy: healthy.clone(),
            status: status_tx,
        };
        tokio::spawn(writer.run(rx));
        Auditor {
            inner: Some(Arc::new(Inner {
                tx,
                policy: config.failure_policy,
                log_allowed: config.log_allowed,
                healthy,
                dropped: AtomicU64::new(0),
                status,
                source,
            })),
        }
    }

    /// Queues `event` for the log, without waiting. `Err(AuditUnavailable)` only under
    /// `fail-closed`, when the queue is full or a sink is failing: the caller must then fail
    /// the request. Under `best-effort` such events are dropped and counted. `Ok` means
    /// queued, not yet durable (see [`flush`](Self::flush)).
    pub fn record(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        if event.is_allow() && !inner.log_allowed {
            return Ok(());
        }
        if inner.policy == FailurePolicy::FailClosed && !inner.healthy.load(Ordering::Acquire) {
            return inner.refuse();
        }
        match inner.tx.try_send(Command::Event(event)) {
            Ok(()) => Ok(()),
            // Full, or the writer is gone (it only stops when every auditor is dropped, so
            // this is a panic in a sink).
            Err(_) => inner.refuse(),
        }
    }

    /// Waits until every event recorded before the call is durable in every sink. Returns
    /// `Err(AuditUnavailable)` as soon as a sink is failing (its events stay queued and are
    /// retried), so a shutdown does not hang on a dead disk.
    pub async fn flush(&self) -> Result<(), AuditUnavailable> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let mut status = inner.status.clone();
        let (done_tx, done) = oneshot::channel();
        let written = async {
            inner
                .tx
                .send(Command::Flush(done_tx))
                .await
                .map_err(|_| AuditUnavailable)?;
            done.await.map_err(|_| AuditUnavailable)
        };
        tokio::select! {
            biased;
            result = written => result,
            // Also resolves (with an error) if the writer is gone.
            _ = status.wait_for(|s| !s.healthy) => Err(AuditUnavailable),
        }
    }

    /// Whether events are being recorded (`audit.enable`).
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether allowed authorizations are recorded: lets callers skip building the event.
    pub fn logs_allowed(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.log_allowed)
    }

    /// Whether events are being refused now (`fail-closed` with a failing sink): callers
    /// then fail requests rather than serve them unaudited.
    pub fn is_refusing(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| {
            i.policy == FailurePolicy::FailClosed && !i.healthy.load(Ordering::Acquire)
        })
    }

    /// False while a sink is failing.
    pub fn is_healthy(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(|i| i.healthy.load(Ordering::Acquire))
    }

    /// The chain's source and its last durable event, for the broker to log periodically
    /// (operators compare it with [`VerifyReport::heads`]).
    pub fn head(&self) -> Option<(String, Head)> {
        let inner = self.inner.as_ref()?;
        let head = inner.status.borrow().head;
        Some((inner.source.clone(), head))
    }

    /// Events dropped under `best-effort` (also `shale_audit_dropped_total`).
    pub fn dropped(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.dropped.load(Ordering::Relaxed))
    }
}

impl Inner {
    fn refuse(&self) -> Result<(), AuditUnavailable> {
        match self.policy {
            FailurePolicy::FailClosed => {
                metrics::counter!("shale_audit_rejected_total").increment(1);
                Err(AuditUnavailable)
            }
            FailurePolicy::BestEffort => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("shale_audit_dropped_total").increment(1);
                Ok(())
            }
        }
    }
}

/// The background task: the only place events are sequenced, so the chain's order is the
/// order they are written in.
struct Writer {
    chain: Chain,
    sinks: Vec<Box<dyn AuditSink>>,
    healthy: Arc<AtomicBool>,
    status: watch::Sender<Status>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut commands = Vec::with_capacity(MAX_BATCH);
        let mut batch = Batch::default();
        while rx.recv_many(&mut commands, MAX_BATCH).await > 0 {
            for command in commands.drain(..) {
                match command {
                    Command::Event(event) => {
                        batch.types.push(event.kind.name());
                        batch.lines.push(self.chain.seal(&event));
                    }
                    Command::Flush(done) => {
                        self.write(&mut batch).await;
                        // The flusher may have given up waiting.
                        let _ = done.send(());
                    }
                }
            }
            self.write(&mut batch).await;
        }
    }

    /// Writes the batch to every sink. A failing sink is retried with the same lines until
    /// it takes them (sinks that already did are not written again); meanwhile the queue
    /// fills and the failure policy applies to new events. Sealed events are never dropped:
    /// a chain has no gap that the policy made.
    async fn write(&mut self, batch: &mut Batch) {
        if batch.lines.is_empty() {
            return;
        }
        for sink in &mut self.sinks {
            let mut backoff = RETRY_MIN;
            while let Err(e) = sink.write(&batch.lines).await {
                metrics::counter!("shale_audit_sink_errors_total").increment(1);
                tracing::error!(
                    sink = %sink.name(),
                    error = %e,
                    retry_in = ?backoff,
                    "audit sink failed; audit is unavailable until it recovers"
                );
                set_health(&self.healthy, &self.status, false);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
        for kind in batch.types.drain(..) {
            metrics::counter!("shale_audit_events_total", "type" => kind).increment(1);
        }
        batch.lines.clear();
        if !self.healthy.load(Ordering::Acquire) {
            tracing::info!("audit sinks recovered");
        }
        set_health(&self.healthy, &self.status, true);
        let head = self.chain.head();
        self.status.send_modify(|s| s.head = head);
    }
}

#[derive(Default)]
struct Batch {
    lines: Vec<String>,
    types: Vec<&'static str>,
}

fn set_health(flag: &AtomicBool, status: &watch::Sender<Status>, healthy: bool) {
    flag.store(healthy, Ordering::Release);
    status.send_if_modified(|s| std::mem::replace(&mut s.healthy, healthy) != healthy);
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// The `audit.*` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// `audit.enable` (false).
    pub enabled: bool,
    /// `audit.file.path`: a [`FileSink`], if set.
    pub file_path: Option<PathBuf>,
    /// `audit.queue.capacity` (65536): events queued before the failure policy applies.
    pub queue_capacity: usize,
    /// `audit.failure.policy`: `fail-closed` (default) or `best-effort`.
    pub failure_policy: FailurePolicy,
    /// `audit.log.allowed` (false): record allowed authorizations too.
    pub log_allowed: bool,
    /// `audit.topic.enable` (true when audit is enabled): the broker's `__shale_audit` sink.
    pub topic_enabled: bool,
}

impl Default for AuditConfig {
    fn default() -> AuditConfig {
        AuditConfig {
            enabled: false,
            file_path: None,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            failure_policy: FailurePolicy::FailClosed,
            log_allowed: false,
            topic_enabled: false,
        }
    }
}

const DEFAULT_QUEUE_CAPACITY: usize = 65536;
/// Bounds the memory a misconfigured queue can take (about 0.5 KiB an event).
const MAX_QUEUE_CAPACITY: usize = 1 << 20;

impl AuditConfig {
    /// Reads the `audit.*` settings; every key is checked even when audit is disabled, so a
    /// typo is found before it matters.
    pub fn from_settings(get: impl Fn(&str) -> Option<String>) -> Result<AuditConfig, String> {
        let flag = |key: &str, default: bool| -> Result<bool, String> {
            match get(key) {
                None => Ok(default),
                Some(v) if v.trim().eq_ignore_ascii_case("true") => Ok(true),
                Some(v) if v.trim().eq_ignore_ascii_case("false") => Ok(false),
                Some(v) => Err(format!("{key}={v:?}: must be true or false")),
            }
        };
        let enabled = flag("audit.enable", false)?;
        let topic_enabled = flag("audit.topic.enable", true)? && enabled;
        let log_allowed = flag("audit.log.allowed", false)?;
        let file_path = match get("audit.file.path") {
            None => None,
            Some(p) if p.trim().is_empty() => return Err("audit.file.path is empty".into()),
            Some(p) => Some(PathBuf::from(p.trim())),
        };
        let queue_capacity = match get("audit.queue.capacity") {
            None => DEFAULT_QUEUE_CAPACITY,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_QUEUE_CAPACITY).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "audit.queue.capacity={v:?}: must be 1 to {MAX_QUEUE_CAPACITY}"
                    ));
                }
            },
        };
        let failure_policy = match get("audit.failure.policy") {
            None => FailurePolicy::FailClosed,
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "fail-closed" => FailurePolicy::FailClosed,
                "best-effort" => FailurePolicy::BestEffort,
                _ => {
                    return Err(format!(
                        "audit.failure.policy={v:?}: must be fail-closed or best-effort"
                    ));
                }
            },
        };
        if enabled && file_path.is_none() && !topic_enabled {
            return Err(
                "audit.enable=true needs a sink: set audit.file.path or audit.topic.enable=true"
                    .into(),
            );
        }
        Ok(AuditConfig {
            enabled,
            file_path,
            queue_capacity,
            failure_policy,
            log_allowed,
            topic_enabled,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Encoding helpers
// ---------------------------------------------------------------------------------------

/// `2025-01-31T12:34:56.789Z`: RFC 3339 in UTC with milliseconds. A time before 1970 (a
/// clock set far back) is written as the epoch rather than failing the event.
fn rfc3339_millis(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        since_epoch.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097; // day of the 400-year era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year
    let mp = (5 * doy + 2) / 153; // March-based month, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// 64 lowercase hex digits to 32 bytes; anything else is `None` (one spelling per hash).
fn unhex32(text: &[u8]) -> Option<[u8; 32]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if text.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::{BTreeSet, HashMap};
    use std::sync::Mutex;
    use tokio::sync::Semaphore;

    const CLUSTER: &str = "MkU3OEVBNTcwNTJENDM2Qk";
    const SECRET: &str = "hunter2-SECRET";

    fn source(node: i32) -> Source {
        Source::node(CLUSTER, node)
    }

    fn client() -> Client {
        Client::new("SASL_SSL", "10.0.0.7:53412").with_client_id("producer-1")
    }

    fn request() -> Request {
        Request::new("User:alice", client(), Api::new("Produce", 11))
    }

    fn at(millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(millis)
    }

    /// A denial on topic `t<n>`: the subject tells events apart.
    fn event(n: usize) -> AuditEvent {
        AuditEvent::denied(&request(), Resource::topic(format!("t{n}")), "Write")
            .with_error("TOPIC_AUTHORIZATION_FAILED")
    }

    /// `per_node` events from each of `nodes` nodes, interleaved as they would be in a
    /// shared topic.
    fn multi_node_log(nodes: i32, per_node: usize) -> Vec<String> {
        let mut chains: Vec<Chain> = (1..=nodes).map(|n| Chain::new(&source(n))).collect();
        let mut lines = Vec::new();
        for i in 0..per_node {
            for chain in &mut chains {
                lines.push(chain.seal(&event(i)));
            }
        }
        lines
    }

    fn single_node_log(n: usize) -> Vec<String> {
        let mut chain = Chain::new(&source(1));
        (0..n).map(|i| chain.seal(&event(i))).collect()
    }

    fn check(lines: &[String]) -> VerifyReport {
        verify(lines.iter().cloned().map(Ok))
    }

    fn problem(lines: &[String]) -> Problem {
        check(lines).problem.expect("a problem")
    }

    fn json(line: &str) -> Value {
        serde_json::from_str(line).unwrap()
    }

    fn head_of(line: &str) -> Head {
        Chain::resume(line).unwrap().head()
    }

    /// Appends the hash a writer would, to a canonical object: lets tests build lines that
    /// are well-formed except for what they test.
    fn forge(canonical: &str, prevhash: &[u8; 32]) -> String {
        let hash = chain_hash(prevhash, canonical.as_bytes());
        format!(
            "{},\"hash\":\"{}\"}}",
            &canonical[..canonical.len() - 1],
            hex(&hash)
        )
    }

    fn canonical_of(line: &str) -> &str {
        &line[..line.len() - HASH_SUFFIX_LEN]
    }

    // --- format -------------------------------------------------------------------------

    #[test]
    fn time_is_rfc3339_utc_with_milliseconds() {
        for (millis, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_123, "2000-02-29T00:00:00.123Z"),
            (1_735_689_599_999, "2024-12-31T23:59:59.999Z"),
            (1_738_326_896_789, "2025-01-31T12:34:56.789Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(rfc3339_millis(at(millis)), text);
        }
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn a_line_is_a_structured_cloudevent_with_the_hash_last() {
        let mut chain = Chain::new(&source(1));
        let line = chain.seal(&event(7).with_time(at(1_738_326_896_789)));
        assert!(!line.contains('\n'));
        assert!(line.starts_with("{\"specversion\":\"1.0\",\"id\":\""));
        assert!(line.ends_with(&format!(",\"hash\":\"{}\"}}", chain.head().hash_hex())));
        let v = json(&line);
        assert!(uuid::Uuid::parse_str(v["id"].as_str().unwrap()).is_ok());
        assert_eq!(v["source"], format!("shale://{CLUSTER}/node/1"));
        assert_eq!(v["type"], "io.shale.audit.authorization");
        assert_eq!(v["time"], "2025-01-31T12:34:56.789Z");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["subject"], "Topic:t7");
        assert_eq!(v["sequence"], "1");
        assert_eq!(v["prevhash"], "0".repeat(64));
        let data = &v["data"];
        assert_eq!(data["principal"], "User:alice");
        assert_eq!(data["client"]["listener"], "SASL_SSL");
        assert_eq!(data["client"]["address"], "10.0.0.7:53412");
        assert_eq!(data["client"]["client_id"], "producer-1");
        assert_eq!(data["api"]["name"], "Produce");
        assert_eq!(data["api"]["version"], 11);
        assert_eq!(data["resource"]["type"], "Topic");
        assert_eq!(data["operation"], "Write");
        assert_eq!(data["outcome"], "denied");
        assert_eq!(data["error"], "TOPIC_AUTHORIZATION_FAILED");
    }

    #[test]
    fn the_hash_is_sha256_of_the_previous_hash_and_the_line_without_its_hash() {
        let lines = single_node_log(2);
        let first = head_of(&lines[0]);
        let line = &lines[1];
        let v = json(line);
        assert_eq!(v["sequence"], "2");
        assert_eq!(v["prevhash"], first.hash_hex());
        let canonical = format!("{}}}", canonical_of(line));
        let mut input = first.hash.to_vec();
        input.extend_from_slice(canonical.as_bytes());
        let expected = digest::digest(&digest::SHA256, &input);
        assert_eq!(v["hash"], hex(expected.as_ref()));
        // The canonical bytes are the line minus its hash, exactly.
        let mut without_hash = v.clone();
        without_hash.as_object_mut().unwrap().remove("hash");
        assert_eq!(json(&canonical), without_hash);
    }

    #[test]
    fn control_characters_in_client_text_stay_on_one_line() {
        let mut chain = Chain::new(&source(1));
        let evil =
            Client::new("PLAINTEXT", "10.0.0.9:1").with_client_id("x\n{\"forged\":1}\r\u{2028}");
        let line = chain.seal(&AuditEvent::authentication(
            evil,
            "PLAIN",
            None,
            Outcome::Failed,
        ));
        assert!(!line.contains('\n') && !line.contains('\r'));
        assert!(check(&[line]).is_ok());
    }

    // --- never a payload, never a secret --------------------------------------------------

    fn one_of_each_kind() -> Vec<AuditEvent> {
        let admin = Request::new(
            "User:admin",
            client(),
            Api::new("IncrementalAlterConfigs", 1),
        );
        let jaas = format!("ScramLoginModule required username=\"bob\" password=\"{SECRET}\";");
        vec![
            AuditEvent::authentication(
                client(),
                "SCRAM-SHA-512",
                Some("User:alice".into()),
                Outcome::Succeeded,
            ),
            AuditEvent::authentication(
                client(),
                "PLAIN",
                Some("User:mallory".into()),
                Outcome::Failed,
            )
            .with_error("SASL_AUTHENTICATION_FAILED")
            .with_reason("Authentication failed: Invalid username or password"),
            event(1),
            AuditEvent::allowed(
                &request(),
                Resource::acl(ResourceType::Group, "g", PatternType::Prefixed),
                "Read",
            ),
            AuditEvent::admin_change(
                &admin,
                Resource::topic("orders"),
                "Create",
                Outcome::Succeeded,
                "partitions=12 replication.factor=3",
            ),
            AuditEvent::admin_change(
                &admin,
                Resource::new("Broker", "1"),
                "AlterConfigs",
                Outcome::Succeeded,
                "",
            )
            .with_configs(vec![
                ConfigChange::set("log.retention.ms", "86400000"),
                ConfigChange::set("listener.name.sasl_ssl.ssl.keystore.password", SECRET),
                ConfigChange::set(
                    "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config",
                    &jaas,
                ),
                ConfigChange::new("vendor.thing", ConfigOp::Set, Some(SECRET), true),
                ConfigChange::delete("ssl.key.password"),
            ]),
            AuditEvent::admin_change(
                &admin,
                Resource::topic("orders"),
                "Delete",
                Outcome::Failed,
                "",
            )
            .with_error("POLICY_VIOLATION")
            .with_reason("deletion is disabled"),
            AuditEvent::credential_change(
                &admin,
                "bob",
                "SCRAM-SHA-256",
                CredentialOp::Upsert,
                Outcome::Succeeded,
            ),
            AuditEvent::credential_change(
                &admin,
                "bob",
                "SCRAM-SHA-256",
                CredentialOp::Delete,
                Outcome::Succeeded,
            ),
            AuditEvent::key_use("kek-2025-01", "unwrap", Outcome::Succeeded)
                .with_resource("s3://bucket/segments/000123.obj"),
            AuditEvent::key_rotation(
                "kek-2025-02",
                Some("kek-2025-01".into()),
                Some("User:admin".into()),
                Outcome::Succeeded,
            ),
            AuditEvent::node_join(4, Some("10.0.0.4:9093".into())),
            AuditEvent::node_fence(3, "missed heartbeats for 30000 ms"),
        ]
    }

    /// Every field path any event can have: the whole `data` schema. A new field must be
    /// added here, on purpose; nothing in it can carry record data or key material.
    const DATA_SCHEMA: &[&str] = &[
        "address",
        "api",
        "api.name",
        "api.version",
        "client",
        "client.address",
        "client.client_id",
        "client.listener",
        "configs",
        "configs[].name",
        "configs[].op",
        "configs[].sensitive",
        "configs[].value",
        "error",
        "key_id",
        "mechanism",
        "node_id",
        "operation",
        "outcome",
        "previous_key_id",
        "principal",
        "reason",
        "resource",
        "resource.name",
        "resource.pattern",
        "resource.type",
        "summary",
    ];

    fn paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    out.insert(path.clone());
                    paths(value, &path, out);
                }
            }
            Value::Array(items) => {
                for item in items {
                    paths(item, &format!("{prefix}[]"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_kind_serialises_without_a_payload_or_a_secret() {
        let events = one_of_each_kind();
        // An exhaustive match: a new kind does not compile until it is covered here.
        let kinds: BTreeSet<usize> = events
            .iter()
            .map(|e| match e.kind {
                AuditKind::Authentication(_) => 0,
                AuditKind::Authorization(_) => 1,
                AuditKind::AdminChange(_) => 2,
                AuditKind::KeyUse(_) => 3,
                AuditKind::KeyRotation(_) => 4,
                AuditKind::NodeJoin(_) => 5,
                AuditKind::NodeFence(_) => 6,
            })
            .collect();
        assert_eq!(kinds, (0..7).collect());

        let mut chain = Chain::new(&source(1));
        let lines: Vec<String> = events.iter().map(|e| chain.seal(e)).collect();
        assert!(check(&lines).is_ok());
        let schema: BTreeSet<String> = DATA_SCHEMA.iter().map(|s| s.to_string()).collect();
        let mut seen = BTreeSet::new();
        for (line, event) in lines.iter().zip(&events) {
            assert!(!line.contains(SECRET), "{line}");
            let v = json(line);
            assert_eq!(v["type"], format!("io.shale.audit.{}", event.kind.name()));
            paths(&v["data"], "", &mut seen);
        }
        let unexpected: Vec<_> = seen.difference(&schema).collect();
        assert!(
            unexpected.is_empty(),
            "fields outside the schema: {unexpected:?}"
        );

        let credential = json(&lines[7]);
        assert_eq!(credential["subject"], "User:bob");
        assert_eq!(credential["data"]["mechanism"], "SCRAM-SHA-256");
        let configs = &json(&lines[5])["data"]["configs"];
        assert_eq!(configs[0]["value"], "86400000");
        for redacted in 1..=3 {
            assert_eq!(configs[redacted]["sensitive"], true);
            assert!(configs[redacted].get("value").is_none());
        }
        assert_eq!(configs[4]["op"], "delete");
    }

    #[test]
    fn sensitive_config_values_are_never_kept() {
        for name in [
            "ssl.key.password",
            "ssl.keystore.key",
            "listener.name.client.ssl.truststore.password",
            "sasl.jaas.config",
            "delegation.token.secret.key",
            "password.encoder.secret",
            "s3.secret.access.key",
            "SSL.KEYSTORE.PASSWORD",
        ] {
            let change = ConfigChange::set(name, SECRET);
            assert_eq!(change.value(), None, "{name}");
            assert!(change.sensitive, "{name}");
        }
        for name in [
            "retention.ms",
            "cleanup.policy",
            "ssl.keystore.certificate.chain",
        ] {
            assert_eq!(ConfigChange::set(name, "v").value(), Some("v"), "{name}");
        }
        assert_eq!(
            ConfigChange::new("x", ConfigOp::Append, Some("v"), true).value(),
            None
        );
    }

    #[test]
    fn free_text_is_bounded() {
        let long = "é".repeat(MAX_TEXT_BYTES);
        let AuditKind::NodeFence(fence) = AuditEvent::node_fence(1, long).kind else {
            unreachable!()
        };
        let reason = fence.reason.unwrap();
        assert!(reason.len() <= MAX_TEXT_BYTES + '…'.len_utf8());
        assert!(reason.ends_with('…'));
    }

    // --- verification -------------------------------------------------------------------

    #[test]
    fn an_intact_multi_node_log_verifies_every_chain() {
        let lines = multi_node_log(3, 4);
        let report = check(&lines);
        assert_eq!(report.problem, None);
        assert_eq!((report.lines, report.events, report.chains()), (12, 12, 3));
        for node in 1..=3 {
            let last = lines
                .iter()
                .rev()
                .find(|l| l.contains(&format!("/node/{node}\"")))
                .unwrap();
            assert_eq!(report.heads[source(node).as_str()], head_of(last));
            assert_eq!(report.heads[source(node).as_str()].sequence, 4);
        }
        assert!(
            report
                .to_string()
                .starts_with("OK: 12 events in 3 chains verified\n")
        );
    }

    #[test]
    fn an_empty_log_verifies_with_no_chains() {
        let report = check(&[]);
        assert!(report.is_ok());
        assert_eq!((report.events, report.chains()), (0, 0));
    }

    #[test]
    fn altering_any_byte_of_any_line_is_detected_at_that_line() {
        let lines = multi_node_log(2, 3);
        for (i, line) in lines.iter().enumerate() {
            assert!(line.is_ascii());
            for j in 0..line.len() {
                let mut bytes = line.clone().into_bytes();
                // Stays ASCII, so the line is still a string; always a different byte.
                bytes[j] ^= 0x01;
                let mut altered = lines.clone();
                altered[i] = String::from_utf8(bytes).unwrap();
                let report = check(&altered);
                let p = report
                    .problem
                    .unwrap_or_else(|| panic!("line {i} byte {j} undetected"));
                assert_eq!(p.line, i as u64 + 1, "line {i} byte {j}: {}", p.kind);
                assert!(
                    matches!(
                        p.kind,
                        ProblemKind::Altered | ProblemKind::Unparseable { .. }
                    ),
                    "line {i} byte {j}: {}",
                    p.kind
                );
            }
        }
    }

    #[test]
    fn removing_a_middle_line_is_a_gap() {
        let mut lines = multi_node_log(2, 3); // n1#1 n2#1 n1#2 n2#2 n1#3 n2#3
        lines.remove(2);
        let p = problem(&lines);
        assert_eq!(p.line, 4);
        assert_eq!(
            p.kind,
            ProblemKind::Gap {
                source: source(1).to_string(),
                expected: 2,
                found: 3
            }
        );
        assert!(p.kind.is_removal());
    }

    #[test]
    fn an_event_from_another_chain_of_the_same_source_breaks_the_link() {
        // A node that restarted without resuming, or a splice of two copies of a log: the
        // event has the next sequence and verifies on its own, but links to another chain.
        let lines = single_node_log(3);
        let mut other = Chain::new(&source(1));
        other.seal(&event(99));
        let spliced = vec![lines[0].clone(), other.seal(&event(2))];
        let p = problem(&spliced);
        assert_eq!(p.line, 2);
        assert_eq!(
            p.kind,
            ProblemKind::BrokenLink {
                source: source(1).to_string(),
                sequence: 2
            }
        );
        assert!(p.kind.is_removal());
    }

    #[test]
    fn swapping_two_lines_is_a_reordering() {
        let mut lines = single_node_log(4);
        lines.swap(1, 2);
        let p = problem(&lines);
        assert_eq!(p.line, 2);
        assert_eq!(
            p.kind,
            ProblemKind::Reordered {
                source: source(1).to_string(),
                expected: 2,
                found: 3
            }
        );
        assert!(!p.kind.is_removal());
    }

    #[test]
    fn replaying_a_line_is_a_reordering() {
        let mut lines = single_node_log(3);
        lines.push(lines[0].clone());
        let p = problem(&lines);
        assert_eq!(p.line, 4);
        assert_eq!(
            p.kind,
            ProblemKind::Reordered {
                source: source(1).to_string(),
                expected: 4,
                found: 1
            }
        );
    }

    #[test]
    fn removing_the_last_line_verifies_but_the_heads_show_it() {
        let lines = single_node_log(4);
        let recorded = head_of(&lines[3]);
        let cut = &lines[..3];
        // The chain alone cannot tell: what is left is intact.
        let report = check(cut);
        assert!(report.is_ok());
        assert_eq!(report.heads[source(1).as_str()].sequence, 3);
        assert_ne!(report.heads[source(1).as_str()], recorded);
        // A head recorded elsewhere can.
        let report = Verifier::new()
            .expecting(source(1).as_str(), recorded)
            .verify(cut.iter().cloned().map(Ok));
        let p = report.problem.unwrap();
        assert_eq!(p.line, 3);
        assert_eq!(
            p.kind,
            ProblemKind::Truncated {
                source: source(1).to_string(),
                expected: 4,
                found: Some(3)
            }
        );
        // And the full log passes the same check.
        let full = Verifier::new()
            .expecting(source(1).as_str(), recorded)
            .verify(lines.iter().cloned().map(Ok));
        assert!(full.is_ok());
    }

    #[test]
    fn a_rewritten_log_does_not_match_its_recorded_head() {
        let original = single_node_log(3);
        let recorded = head_of(&original[1]);
        let mut rewritten = Chain::new(&source(1));
        let rewritten: Vec<String> = (10..13).map(|i| rewritten.seal(&event(i))).collect();
        assert!(check(&rewritten).is_ok());
        let report = Verifier::new()
            .expecting(source(1).as_str(), recorded)
            .verify(rewritten.iter().cloned().map(Ok));
        assert_eq!(
            report.problem,
            Some(Problem {
                line: 2,
                kind: ProblemKind::HeadMismatch {
                    source: source(1).to_string(),
                    sequence: 2
                }
            })
        );
    }

    #[test]
    fn a_log_starts_its_chains_at_one_unless_continuing_a_recorded_head() {
        let lines = single_node_log(5);
        let rotated = &lines[2..];
        assert_eq!(
            problem(rotated).kind,
            ProblemKind::Gap {
                source: source(1).to_string(),
                expected: 1,
                found: 3
            }
        );
        let report = Verifier::new()
            .continuing(source(1).as_str(), head_of(&lines[1]))
            .verify(rotated.iter().cloned().map(Ok));
        assert!(report.is_ok());
        assert_eq!(report.events, 3);
    }

    #[test]
    fn heads_are_written_and_read_as_sequence_colon_hash() {
        let head = head_of(&single_node_log(1)[0]);
        let text = head.to_string();
        assert_eq!(text, format!("1:{}", head.hash_hex()));
        assert_eq!(text.parse::<Head>(), Ok(head));
        for bad in ["", "1", "0:".to_string().as_str(), "x:00", "1:ABC"] {
            assert!(bad.parse::<Head>().is_err(), "{bad}");
        }
    }

    #[test]
    fn garbage_lines_are_unparseable_and_never_panic() {
        let valid = single_node_log(1).remove(0);
        let zero = [0u8; 32];
        let canonical = format!("{}}}", canonical_of(&valid));
        let with_sequence = |s: &str| {
            forge(
                &canonical.replace("\"sequence\":\"1\"", &format!("\"sequence\":\"{s}\"")),
                &zero,
            )
        };
        let mut garbage: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b" ".to_vec(),
            b"{".to_vec(),
            b"}".to_vec(),
            b"null".to_vec(),
            b"[]".to_vec(),
            b"{}".to_vec(),
            b"\xff\xfe\x00garbage".to_vec(),
            "[".repeat(100_000).into_bytes(),
            format!("{{,\"hash\":\"{}\"}}", "0".repeat(64)).into_bytes(),
            format!("{{\"x\":1,\"hash\":\"{}\"}}", "0".repeat(64)).into_bytes(),
            format!("{{\"x\":\"\\\",\"hash\":\"{}\"}}", "0".repeat(64)).into_bytes(),
            valid.replace("\"hash\":\"", "\"hash\":\"X").into_bytes(),
            valid.to_uppercase().into_bytes(),
            format!("{valid} ").into_bytes(),
            format!("{valid}\r").into_bytes(),
            // A second hash attribute earlier in the object.
            forge(&canonical.replacen('{', "{\"hash\":\"x\",", 1), &zero).into_bytes(),
            forge(
                &canonical.replace("\"specversion\":\"1.0\"", "\"specversion\":\"0.3\""),
                &zero,
            )
            .into_bytes(),
            forge(&canonical.replace("io.shale.audit.", "com.example."), &zero).into_bytes(),
            forge(&canonical.replace(&"0".repeat(64), "zz"), &zero).into_bytes(),
            with_sequence("0").into_bytes(),
            with_sequence("01").into_bytes(),
            with_sequence("+1").into_bytes(),
            with_sequence("-1").into_bytes(),
            with_sequence("9223372036854775808").into_bytes(),
            with_sequence("99999999999999999999999").into_bytes(),
            vec![b'a'; MAX_LINE_BYTES + 1],
        ];
        for cut in 0..valid.len() {
            garbage.push(valid.as_bytes()[..cut].to_vec());
        }
        for line in &garbage {
            let mut verifier = Verifier::new();
            verifier.push_line(line);
            let report = verifier.finish();
            let p = report
                .problem
                .unwrap_or_else(|| panic!("accepted {:?}", String::from_utf8_lossy(line)));
            assert_eq!(p.line, 1);
            assert!(
                matches!(
                    p.kind,
                    ProblemKind::Unparseable { .. } | ProblemKind::Altered
                ),
                "{}",
                p.kind
            );
        }
        // After valid lines, garbage is found at its own line.
        let mut lines = single_node_log(2);
        lines.push("not json".into());
        assert_eq!(problem(&lines).line, 3);
        // The largest sequence is well-formed (a gap from 1), and does not overflow.
        let max = with_sequence("9223372036854775807");
        let p = problem(&[max.clone(), max]);
        assert!(
            matches!(
                p.kind,
                ProblemKind::Gap {
                    found: MAX_SEQUENCE,
                    ..
                }
            ),
            "{}",
            p.kind
        );
    }

    #[test]
    fn a_read_error_is_reported_at_its_line() {
        let lines = single_node_log(2);
        let input = vec![
            Ok(lines[0].clone()),
            Err(io::Error::other("disk on fire")),
            Ok(lines[1].clone()),
        ];
        let report = verify(input);
        assert_eq!(report.events, 1);
        let p = report.problem.unwrap();
        assert_eq!(p.line, 2);
        assert!(matches!(p.kind, ProblemKind::Unreadable { .. }));
    }

    #[test]
    fn verify_file_reads_lines_and_reports_bytes_that_are_not_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let lines = multi_node_log(2, 2);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let report = verify_file(&path).unwrap();
        assert!(report.is_ok());
        assert_eq!((report.events, report.chains()), (4, 2));

        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"\xff\xfe\n");
        std::fs::write(&path, bytes).unwrap();
        let p = verify_file(&path).unwrap().problem.unwrap();
        assert_eq!(p.line, 5);
        assert!(matches!(p.kind, ProblemKind::Unparseable { .. }));
        assert!(verify_file(dir.path().join("missing")).is_err());
    }

    // --- resuming -----------------------------------------------------------------------

    #[test]
    fn a_resumed_chain_continues_the_sequence_and_the_links() {
        let mut lines = single_node_log(3);
        let mut resumed = Chain::resume(&lines[2]).unwrap();
        assert_eq!(resumed.source(), source(1).as_str());
        assert_eq!(resumed.head(), head_of(&lines[2]));
        lines.push(resumed.seal(&event(3)));
        assert_eq!(json(&lines[3])["sequence"], "4");
        let report = check(&lines);
        assert!(report.is_ok());
        assert_eq!(report.events, 4);
    }

    #[test]
    fn a_chain_does_not_resume_from_an_altered_line() {
        let line = single_node_log(1).remove(0).replace("t0", "t1");
        assert!(matches!(Chain::resume(&line), Err(ResumeError::Corrupt(_))));
        assert!(matches!(
            Chain::resume("garbage"),
            Err(ResumeError::Corrupt(_))
        ));
    }

    #[test]
    fn resume_from_file_takes_the_last_complete_line_of_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        assert_eq!(
            Chain::resume_from_file(&path, &source(1)).unwrap(),
            Chain::new(&source(1))
        );

        // Enough lines to span several 64 KiB blocks, then a torn write.
        let lines = multi_node_log(2, 200);
        let mut text = lines.join("\n") + "\n";
        assert!(text.len() > 3 * 64 * 1024);
        text.push_str(&lines[0][..100]);
        std::fs::write(&path, &text).unwrap();
        for node in 1..=2 {
            let chain = Chain::resume_from_file(&path, &source(node)).unwrap();
            assert_eq!(chain.head().sequence, 200);
            let last = if node == 1 { &lines[398] } else { &lines[399] };
            assert_eq!(chain.head(), head_of(last));
        }
        // A source with no events starts afresh.
        assert_eq!(
            Chain::resume_from_file(&path, &source(3)).unwrap().head(),
            Head::START
        );
        // A single line with its newline is found; without one, it is a torn write.
        std::fs::write(&path, format!("{}\n", lines[0])).unwrap();
        assert_eq!(
            Chain::resume_from_file(&path, &source(1))
                .unwrap()
                .head()
                .sequence,
            1
        );
        std::fs::write(&path, &lines[0]).unwrap();
        assert_eq!(
            Chain::resume_from_file(&path, &source(1)).unwrap().head(),
            Head::START
        );
    }

    #[test]
    fn resume_from_file_stops_at_a_corrupt_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let lines = single_node_log(2);
        std::fs::write(
            &path,
            format!("{}\n{}\n", lines[0], lines[1].replace("t1", "t2")),
        )
        .unwrap();
        assert!(matches!(
            Chain::resume_from_file(&path, &source(1)),
            Err(ResumeError::Corrupt(_))
        ));
    }

    // --- the file sink ------------------------------------------------------------------

    #[tokio::test]
    async fn the_file_sink_cuts_a_torn_write_and_the_chain_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let lines = single_node_log(2);
        std::fs::write(
            &path,
            format!("{}\n{}\n{}", lines[0], lines[1], &lines[1][..50]),
        )
        .unwrap();
        let mut chain = Chain::resume_from_file(&path, &source(1)).unwrap();
        let mut sink = FileSink::open(&path).await.unwrap();
        sink.write(&[chain.seal(&event(2)), chain.seal(&event(3))])
            .await
            .unwrap();
        let report = verify_file(&path).unwrap();
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.events, 4);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_file_sink_creates_the_log_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        FileSink::open(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // --- the auditor --------------------------------------------------------------------

    type Lines = Arc<Mutex<Vec<String>>>;

    /// Keeps what it is given.
    struct MemorySink(Lines);

    #[async_trait]
    impl AuditSink for MemorySink {
        async fn write(&mut self, lines: &[String]) -> io::Result<()> {
            self.0.lock().unwrap().extend_from_slice(lines);
            Ok(())
        }
    }

    /// Fails while `failing` is set, writing nothing.
    struct FlakySink {
        lines: Lines,
        failing: Arc<AtomicBool>,
    }

    #[async_trait]
    impl AuditSink for FlakySink {
        async fn write(&mut self, lines: &[String]) -> io::Result<()> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(io::Error::other("disk full"));
            }
            self.lines.lock().unwrap().extend_from_slice(lines);
            Ok(())
        }
    }

    /// Says when a write starts, and finishes it only when the test adds a permit.
    struct GateSink {
        lines: Lines,
        entered: mpsc::UnboundedSender<()>,
        gate: Arc<Semaphore>,
    }

    #[async_trait]
    impl AuditSink for GateSink {
        async fn write(&mut self, lines: &[String]) -> io::Result<()> {
            let _ = self.entered.send(());
            self.gate
                .acquire()
                .await
                .map_err(io::Error::other)?
                .forget();
            self.lines.lock().unwrap().extend_from_slice(lines);
            Ok(())
        }
    }

    fn config(capacity: usize, policy: FailurePolicy, log_allowed: bool) -> AuditConfig {
        AuditConfig {
            enabled: true,
            queue_capacity: capacity,
            failure_policy: policy,
            log_allowed,
            topic_enabled: true,
            ..AuditConfig::default()
        }
    }

    fn subjects(lines: &Lines) -> Vec<String> {
        lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| json(l)["subject"].as_str().unwrap().to_string())
            .collect()
    }

    fn verified(lines: &Lines) -> VerifyReport {
        let lines = lines.lock().unwrap().clone();
        check(&lines)
    }

    async fn within<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("timed out")
    }

    #[tokio::test]
    async fn the_auditor_writes_in_record_order_and_the_file_verifies_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let config = AuditConfig {
            file_path: Some(path.clone()),
            ..config(64, FailurePolicy::FailClosed, false)
        };
        for run in 0..2 {
            let chain = Chain::resume_from_file(&path, &source(1)).unwrap();
            let sink = FileSink::open(&path).await.unwrap();
            let auditor = Auditor::start(&config, chain, vec![Box::new(sink)]);
            for i in 0..3 {
                auditor.record(event(run * 10 + i)).unwrap();
            }
            within(auditor.flush()).await.unwrap();
            let (head_source, head) = auditor.head().unwrap();
            assert_eq!(head_source, source(1).as_str());
            assert_eq!(head.sequence, 3 * (run as u64 + 1));
        }
        let report = verify_file(&path).unwrap();
        assert!(report.is_ok(), "{report}");
        assert_eq!((report.events, report.chains()), (6, 1));
        let text = std::fs::read_to_string(&path).unwrap();
        let order: Vec<String> = text
            .lines()
            .map(|l| json(l)["subject"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            order,
            [
                "Topic:t0",
                "Topic:t1",
                "Topic:t2",
                "Topic:t10",
                "Topic:t11",
                "Topic:t12"
            ]
        );
    }

    #[tokio::test]
    async fn allowed_authorizations_are_recorded_only_with_audit_log_allowed() {
        for log_allowed in [false, true] {
            let lines = Lines::default();
            let auditor = Auditor::start(
                &config(16, FailurePolicy::FailClosed, log_allowed),
                Chain::new(&source(1)),
                vec![Box::new(MemorySink(lines.clone()))],
            );
            assert_eq!(auditor.logs_allowed(), log_allowed);
            auditor
                .record(AuditEvent::allowed(
                    &request(),
                    Resource::topic("a"),
                    "Read",
                ))
                .unwrap();
            auditor
                .record(AuditEvent::denied(&request(), Resource::topic("d"), "Read"))
                .unwrap();
            within(auditor.flush()).await.unwrap();
            let expected: &[&str] = if log_allowed {
                &["Topic:a", "Topic:d"]
            } else {
                &["Topic:d"]
            };
            assert_eq!(subjects(&lines), expected);
            assert!(verified(&lines).is_ok());
        }
    }

    /// An auditor whose sink holds its first write until the test opens the gate.
    async fn gated(policy: FailurePolicy) -> (Auditor, Arc<Semaphore>, Lines) {
        let lines = Lines::default();
        let gate = Arc::new(Semaphore::new(0));
        let (entered, mut entered_rx) = mpsc::unbounded_channel();
        let sink = GateSink {
            lines: lines.clone(),
            entered,
            gate: gate.clone(),
        };
        let auditor = Auditor::start(
            &config(2, policy, false),
            Chain::new(&source(1)),
            vec![Box::new(sink)],
        );
        auditor.record(event(1)).unwrap();
        // The writer now holds event 1 in a write that does not finish: the queue is empty.
        within(entered_rx.recv()).await.unwrap();
        (auditor, gate, lines)
    }

    #[tokio::test]
    async fn fail_closed_refuses_events_when_the_queue_is_full_without_blocking() {
        let (auditor, gate, lines) = gated(FailurePolicy::FailClosed).await;
        auditor.record(event(2)).unwrap();
        auditor.record(event(3)).unwrap();
        assert_eq!(auditor.record(event(4)), Err(AuditUnavailable));
        assert_eq!(auditor.dropped(), 0);
        gate.add_permits(100);
        within(auditor.flush()).await.unwrap();
        assert_eq!(subjects(&lines), ["Topic:t1", "Topic:t2", "Topic:t3"]);
        assert!(verified(&lines).is_ok());
        auditor.record(event(5)).unwrap();
    }

    #[tokio::test]
    async fn best_effort_drops_and_counts_events_when_the_queue_is_full() {
        let (auditor, gate, lines) = gated(FailurePolicy::BestEffort).await;
        for i in 2..=5 {
            assert_eq!(auditor.record(event(i)), Ok(()));
        }
        assert_eq!(auditor.dropped(), 2);
        gate.add_permits(100);
        within(auditor.flush()).await.unwrap();
        // Dropped before they were sequenced: the chain has no gap.
        assert_eq!(subjects(&lines), ["Topic:t1", "Topic:t2", "Topic:t3"]);
        assert!(verified(&lines).is_ok());
    }

    #[tokio::test]
    async fn a_failing_sink_makes_audit_unavailable_until_it_recovers_without_duplicates() {
        let good = Lines::default();
        let flaky = Lines::default();
        let failing = Arc::new(AtomicBool::new(true));
        let auditor = Auditor::start(
            &config(16, FailurePolicy::FailClosed, false),
            Chain::new(&source(1)),
            vec![
                Box::new(MemorySink(good.clone())),
                Box::new(FlakySink {
                    lines: flaky.clone(),
                    failing: failing.clone(),
                }),
            ],
        );
        auditor.record(event(1)).unwrap();
        assert_eq!(within(auditor.flush()).await, Err(AuditUnavailable));
        assert!(!auditor.is_healthy());
        assert_eq!(auditor.record(event(2)), Err(AuditUnavailable));

        failing.store(false, Ordering::SeqCst);
        within(async {
            while !auditor.is_healthy() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        auditor.record(event(3)).unwrap();
        within(auditor.flush()).await.unwrap();
        // Each sink has every sealed event once, in order.
        for lines in [&good, &flaky] {
            assert_eq!(subjects(lines), ["Topic:t1", "Topic:t3"]);
            assert!(verified(lines).is_ok());
        }
        assert_eq!(auditor.head().unwrap().1.sequence, 2);
    }

    #[tokio::test]
    async fn a_disabled_auditor_accepts_everything_and_records_nothing() {
        let lines = Lines::default();
        for auditor in [
            Auditor::disabled(),
            Auditor::start(
                &AuditConfig::default(),
                Chain::new(&source(1)),
                vec![Box::new(MemorySink(lines.clone()))],
            ),
        ] {
            assert!(!auditor.is_enabled());
            assert_eq!(auditor.record(event(1)), Ok(()));
            assert_eq!(auditor.flush().await, Ok(()));
            assert_eq!(auditor.head(), None);
        }
        assert!(lines.lock().unwrap().is_empty());
    }

    // --- configuration ------------------------------------------------------------------

    fn settings(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn audit_is_off_by_default() {
        assert_eq!(
            AuditConfig::from_settings(settings(&[])),
            Ok(AuditConfig::default())
        );
        let config = AuditConfig::default();
        assert!(!config.enabled && !config.topic_enabled && !config.log_allowed);
        assert_eq!(config.queue_capacity, 65536);
        assert_eq!(config.failure_policy, FailurePolicy::FailClosed);
    }

    #[test]
    fn enabling_audit_turns_on_the_topic_sink_by_default() {
        let config = AuditConfig::from_settings(settings(&[("audit.enable", "true")])).unwrap();
        assert!(config.enabled && config.topic_enabled);
        assert_eq!(config.failure_policy, FailurePolicy::FailClosed);
    }

    #[test]
    fn every_audit_key_is_read() {
        let config = AuditConfig::from_settings(settings(&[
            ("audit.enable", "TRUE"),
            ("audit.file.path", "/var/log/shale/audit.log"),
            ("audit.queue.capacity", "1024"),
            ("audit.failure.policy", "best-effort"),
            ("audit.log.allowed", "true"),
            ("audit.topic.enable", "false"),
        ]))
        .unwrap();
        assert_eq!(
            config,
            AuditConfig {
                enabled: true,
                file_path: Some("/var/log/shale/audit.log".into()),
                queue_capacity: 1024,
                failure_policy: FailurePolicy::BestEffort,
                log_allowed: true,
                topic_enabled: false,
            }
        );
    }

    #[test]
    fn bad_audit_settings_are_refused_with_their_key() {
        for (key, value) in [
            ("audit.enable", "yes"),
            ("audit.log.allowed", "1"),
            ("audit.topic.enable", ""),
            ("audit.queue.capacity", "0"),
            ("audit.queue.capacity", "-1"),
            ("audit.queue.capacity", "100000000"),
            ("audit.failure.policy", "fail-open"),
            ("audit.file.path", " "),
        ] {
            let err = AuditConfig::from_settings(settings(&[(key, value)])).unwrap_err();
            assert!(err.contains(key), "{key}={value}: {err}");
        }
    }

    #[test]
    fn enabled_audit_needs_a_sink() {
        let err = AuditConfig::from_settings(settings(&[
            ("audit.enable", "true"),
            ("audit.topic.enable", "false"),
        ]))
        .unwrap_err();
        assert!(err.contains("needs a sink"), "{err}");
    }
}
