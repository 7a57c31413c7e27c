//! The broker's side of the audit log (`shale_security::audit`): the `__shale_audit` topic
//! sink, the protection of that topic, and the events only the broker sees (admin changes
//! with their outcome, node joins and fences).
//!
//! The topic has one partition; each node appends its own chain to it (events carry their
//! source), through the partition's owner like any produce, over the node-to-node transport
//! when the owner is another node. No client may produce to it, delete it or delete its
//! records, super users included: the log is evidence, readable with READ on the topic (an
//! auditor's grant), and `shale audit verify` checks what is read back.

use crate::Broker;
use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestKind, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use shale_security::audit::{
    self, AuditEvent, AuditSink, ConfigChange, CredentialOp, Outcome, Resource,
};
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, OnceLock, Weak};

/// The audit topic.
pub const AUDIT_TOPIC: &str = "__shale_audit";

/// The `__shale_audit` sink: the lines of a batch become one record batch, produced with
/// acks=all (durable in the object store before the write counts).
#[derive(Clone, Default)]
pub struct TopicSink {
    broker: Arc<OnceLock<Weak<Broker>>>,
}

impl TopicSink {
    pub fn new() -> TopicSink {
        TopicSink::default()
    }

    /// Connects the sink to the started broker and creates the topic if it is missing.
    /// Until then writes fail (and are retried by the auditor).
    pub async fn attach(&self, broker: &Arc<Broker>) -> anyhow::Result<()> {
        if !broker.meta.read(|s| s.topics.contains_key(AUDIT_TOPIC)) {
            // Evidence is kept until an operator decides otherwise.
            let configs = BTreeMap::from([
                ("cleanup.policy".to_string(), "delete".to_string()),
                ("retention.ms".to_string(), "-1".to_string()),
                ("retention.bytes".to_string(), "-1".to_string()),
            ]);
            match crate::handlers::topics::create_topic(
                broker,
                AUDIT_TOPIC,
                1,
                configs,
                shale_meta::Placement::Spread,
            )
            .await
            {
                Ok(()) => tracing::info!("created {AUDIT_TOPIC}"),
                Err((kafka_protocol::error::ResponseError::TopicAlreadyExists, _)) => {}
                Err((code, msg)) => anyhow::bail!("cannot create {AUDIT_TOPIC}: {code:?} {msg}"),
            }
        }
        let _ = self.broker.set(Arc::downgrade(broker));
        Ok(())
    }
}

/// How long the topic sink's first writes wait for the broker to be attached.
const ATTACH_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

#[async_trait::async_trait]
impl AuditSink for TopicSink {
    async fn write(&mut self, lines: &[String]) -> io::Result<()> {
        // Events of the node's start (its join, the first authentications) come before the
        // broker is attached: they wait for it, briefly, rather than fail the sink (which,
        // fail-closed, would refuse the node's first clients).
        let deadline = tokio::time::Instant::now() + ATTACH_WAIT;
        while self.broker.get().is_none() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let broker = self
            .broker
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| io::Error::other("the broker is not serving yet"))?;
        let records: Vec<(Bytes, Option<Bytes>)> = lines
            .iter()
            .map(|l| (Bytes::new(), Some(Bytes::copy_from_slice(l.as_bytes()))))
            .collect();
        let batch = crate::groups::records::encode_batch(&records, crate::now_ms())
            .map_err(io::Error::other)?;
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str(AUDIT_TOPIC)))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(batch.freeze())),
                    ]),
            ]);
        let owner = broker
            .meta
            .read(|s| {
                s.topics
                    .get(AUDIT_TOPIC)
                    .and_then(|t| t.partitions.first().map(|p| p.owner))
            })
            .ok_or_else(|| io::Error::other(format!("{AUDIT_TOPIC} does not exist")))?;
        const VERSION: i16 = 9;
        let body = RequestKind::Produce(req);
        // Through the owner, this node included (`call_node` serves its own id in-process).
        let answer = broker
            .call_peer(owner, ApiKey::Produce, VERSION, body)
            .await
            .map_err(io::Error::other)?;
        let ResponseKind::Produce(resp) = answer else {
            return Err(io::Error::other("not a produce response"));
        };
        let code = resp
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .map(|p| p.error_code);
        match code {
            Some(0) => Ok(()),
            Some(c) => Err(io::Error::other(format!(
                "{AUDIT_TOPIC} produce failed: {:?}",
                kafka_protocol::error::ResponseError::try_from_code(c)
            ))),
            None => Err(io::Error::other("empty produce response")),
        }
    }

    fn name(&self) -> String {
        AUDIT_TOPIC.to_string()
    }
}

impl Broker {
    /// The audit-log request of a client's request.
    pub(crate) fn audit_request(
        ctx: &crate::authz::RequestContext,
        api: ApiKey,
        version: i16,
    ) -> audit::Request {
        audit::Request::new(
            ctx.principal.to_string(),
            audit::Client::new(ctx.listener.to_string(), ctx.host.clone()),
            audit::Api::new(crate::dispatch::api_name(api), version),
        )
    }

    /// Records `event`; false when the audit log refused it (fail-closed): the caller fails
    /// the request.
    pub(crate) fn audit(&self, event: AuditEvent) -> bool {
        match self.config.auditor.record(event) {
            Ok(()) => true,
            Err(_) => {
                tracing::error!("audit log unavailable (audit.failure.policy=fail-closed)");
                false
            }
        }
    }
}

/// The admin changes a request asks for, as (resource, operation, summary, configs), read
/// before it is dispatched; their outcomes come from the response ([`admin_outcomes`]).
pub(crate) struct AdminRequest {
    request: audit::Request,
    changes: Vec<(Resource, &'static str, String, Vec<ConfigChange>)>,
}

pub(crate) fn admin_request(
    ctx: &crate::authz::RequestContext,
    api: ApiKey,
    version: i16,
    body: &RequestKind,
) -> Option<AdminRequest> {
    use RequestKind as R;
    let mut changes = Vec::new();
    match body {
        R::CreateTopics(r) => {
            for t in &r.topics {
                let configs = t
                    .configs
                    .iter()
                    .map(|c| set_or_delete(&c.name, c.value.as_deref()))
                    .collect();
                changes.push((
                    Resource::topic(t.name.to_string()),
                    "Create",
                    format!("partitions {}", t.num_partitions),
                    configs,
                ));
            }
        }
        R::DeleteTopics(r) => {
            for n in r.topic_names.iter().map(|n| n.to_string()).chain(
                r.topics
                    .iter()
                    .filter_map(|t| t.name.as_ref().map(|n| n.to_string())),
            ) {
                changes.push((Resource::topic(n), "Delete", String::new(), Vec::new()));
            }
        }
        R::CreatePartitions(r) => {
            for t in &r.topics {
                changes.push((
                    Resource::topic(t.name.to_string()),
                    "Alter",
                    format!("partitions to {}", t.count),
                    Vec::new(),
                ));
            }
        }
        R::IncrementalAlterConfigs(r) => {
            for res in &r.resources {
                let configs = res
                    .configs
                    .iter()
                    .map(|c| {
                        let op = match c.config_operation {
                            1 => audit::ConfigOp::Delete,
                            2 => audit::ConfigOp::Append,
                            3 => audit::ConfigOp::Subtract,
                            _ => audit::ConfigOp::Set,
                        };
                        let value = c.value.as_ref().map(|v| v.to_string());
                        ConfigChange::new(c.name.to_string(), op, value.as_deref(), false)
                    })
                    .collect();
                changes.push((
                    config_resource(res.resource_type, &res.resource_name),
                    "AlterConfigs",
                    String::new(),
                    configs,
                ));
            }
        }
        R::AlterConfigs(r) => {
            for res in &r.resources {
                let configs = res
                    .configs
                    .iter()
                    .map(|c| set_or_delete(&c.name, c.value.as_deref()))
                    .collect();
                changes.push((
                    config_resource(res.resource_type, &res.resource_name),
                    "AlterConfigs",
                    String::new(),
                    configs,
                ));
            }
        }
        R::CreateAcls(r) => {
            for c in &r.creations {
                changes.push((
                    Resource::new(
                        format!(
                            "{:?}",
                            shale_security::acl::ResourceType::from_code(c.resource_type)
                        ),
                        c.resource_name.to_string(),
                    ),
                    "CreateAcls",
                    format!(
                        "{} {} {} from {}",
                        c.principal,
                        if c.permission_type == 3 {
                            "ALLOW"
                        } else {
                            "DENY"
                        },
                        c.operation,
                        c.host
                    ),
                    Vec::new(),
                ));
            }
        }
        R::DeleteAcls(r) => {
            for f in &r.filters {
                changes.push((
                    Resource::new(
                        format!(
                            "{:?}",
                            shale_security::acl::ResourceType::from_code(f.resource_type_filter)
                        ),
                        f.resource_name_filter
                            .as_ref()
                            .map_or("*".to_string(), |n| n.to_string()),
                    ),
                    "DeleteAcls",
                    format!(
                        "filter principal {:?} operation {}",
                        f.principal_filter.as_ref().map(|p| p.to_string()),
                        f.operation
                    ),
                    Vec::new(),
                ));
            }
        }
        R::AlterClientQuotas(r) if !r.validate_only => {
            for e in &r.entries {
                let entity = e
                    .entity
                    .iter()
                    .map(|p| {
                        format!(
                            "{}={}",
                            p.entity_type,
                            p.entity_name.as_deref().unwrap_or("<default>")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                let configs = e
                    .ops
                    .iter()
                    .map(|op| {
                        let value = op.value.to_string();
                        set_or_delete(&op.key, (!op.remove).then_some(value.as_str()))
                    })
                    .collect();
                changes.push((
                    Resource::new("ClientQuota", entity),
                    "AlterClientQuotas",
                    String::new(),
                    configs,
                ));
            }
        }
        _ => {}
    }
    let credentials = matches!(body, R::AlterUserScramCredentials(_));
    if changes.is_empty() && !credentials {
        return None;
    }
    Some(AdminRequest {
        request: Broker::audit_request(ctx, api, version),
        changes,
    })
}

/// A config set to `value`, or reset (no value).
fn set_or_delete(name: &str, value: Option<&str>) -> ConfigChange {
    match value {
        Some(v) => ConfigChange::set(name, v),
        None => ConfigChange::delete(name),
    }
}

fn config_resource(resource_type: i8, name: &str) -> Resource {
    match resource_type {
        2 => Resource::topic(name),
        4 => Resource::new("Broker", name),
        8 => Resource::new("BrokerLogger", name),
        other => Resource::new(format!("ConfigResource{other}"), name),
    }
}

fn outcome(code: i16) -> (Outcome, Option<String>) {
    if code == 0 {
        (Outcome::Succeeded, None)
    } else {
        let name = kafka_protocol::error::ResponseError::try_from_code(code)
            .map_or_else(|| format!("error {code}"), |e| format!("{e:?}"));
        (Outcome::Failed, Some(name))
    }
}

/// The events of an admin request, once its response is known: one per change, with its
/// outcome.
pub(crate) fn admin_outcomes(
    admin: AdminRequest,
    req_credentials: Option<Vec<(String, String, CredentialOp)>>,
    resp: &ResponseKind,
) -> Vec<AuditEvent> {
    use ResponseKind as P;
    let codes: Vec<i16> = match resp {
        P::CreateTopics(r) => r.topics.iter().map(|t| t.error_code).collect(),
        P::DeleteTopics(r) => r.responses.iter().map(|t| t.error_code).collect(),
        P::CreatePartitions(r) => r.results.iter().map(|t| t.error_code).collect(),
        P::IncrementalAlterConfigs(r) => r.responses.iter().map(|t| t.error_code).collect(),
        P::AlterConfigs(r) => r.responses.iter().map(|t| t.error_code).collect(),
        P::CreateAcls(r) => r.results.iter().map(|t| t.error_code).collect(),
        P::DeleteAcls(r) => r.filter_results.iter().map(|t| t.error_code).collect(),
        P::AlterClientQuotas(r) => r.entries.iter().map(|t| t.error_code).collect(),
        P::AlterUserScramCredentials(r) => {
            let mut out = Vec::new();
            for (result, (user, mechanism, op)) in
                r.results.iter().zip(req_credentials.into_iter().flatten())
            {
                let (o, err) = outcome(result.error_code);
                let mut e = AuditEvent::credential_change(&admin.request, &user, &mechanism, op, o);
                if let Some(err) = err {
                    e = e.with_error(err);
                }
                out.push(e);
            }
            return out;
        }
        _ => Vec::new(),
    };
    admin
        .changes
        .into_iter()
        .enumerate()
        .map(|(i, (resource, op, summary, configs))| {
            // A response shorter than the request (it should not be): the change's outcome
            // is unknown, recorded as failed.
            let (o, err) = outcome(codes.get(i).copied().unwrap_or(-1));
            let mut e = AuditEvent::admin_change(&admin.request, resource, op, o, summary)
                .with_configs(configs);
            if let Some(err) = err {
                e = e.with_error(err);
            }
            e
        })
        .collect()
}

/// The credential changes of an AlterUserScramCredentials request (user, mechanism, op).
pub(crate) fn credential_changes(
    body: &RequestKind,
) -> Option<Vec<(String, String, CredentialOp)>> {
    let RequestKind::AlterUserScramCredentials(r) = body else {
        return None;
    };
    let mech = |t: i8| {
        shale_security::scram::ScramMechanism::from_kafka_type(t)
            .map_or_else(|| format!("type {t}"), |m| m.name().to_string())
    };
    // Kafka answers deletions first, then upsertions, one result per user entry.
    let mut out: Vec<_> = r
        .deletions
        .iter()
        .map(|d| (d.name.to_string(), mech(d.mechanism), CredentialOp::Delete))
        .collect();
    out.extend(
        r.upsertions
            .iter()
            .map(|u| (u.name.to_string(), mech(u.mechanism), CredentialOp::Upsert)),
    );
    Some(out)
}

/// Records node joins and fences as the metadata leader sees them: one task per broker,
/// recording only while this node leads the quorum. A node that starts leading records the
/// registrations it has not seen yet, so the live set at that point is on record (a
/// registration may then appear once per leader that saw it).
pub(crate) fn follow_membership(broker: &Arc<Broker>) -> tokio::task::JoinHandle<()> {
    let broker = broker.clone();
    tokio::spawn(async move {
        let mut changes = broker.meta.changes();
        let mut stop = broker.shutdown_signal();
        let mut seen: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                // Leadership can move without a state change.
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let now: BTreeMap<u64, (u64, bool)> = broker.meta.read(|s| {
                s.brokers
                    .iter()
                    .map(|(id, b)| (*id, (b.epoch, b.fenced)))
                    .collect()
            });
            if broker.meta.leader() != Some(broker.meta.node_id()) {
                // Only the leader records; a node that starts leading records what it has
                // not seen itself.
                seen.clear();
                continue;
            }
            {
                for (id, (epoch, fenced)) in &now {
                    let before = seen.get(id);
                    let id32 = i32::try_from(*id).unwrap_or(i32::MAX);
                    if before.is_none_or(|(e, _)| e != epoch) && !fenced {
                        let addr = broker
                            .meta
                            .read(|s| s.nodes.get(id).map(|n| format!("{}:{}", n.host, n.port)));
                        broker.audit(AuditEvent::node_join(id32, addr));
                    } else if *fenced && before.is_some_and(|(_, f)| !f) {
                        broker.audit(AuditEvent::node_fence(id32, "session expired or shut down"));
                    }
                }
            }
            seen = now;
        }
    })
}
