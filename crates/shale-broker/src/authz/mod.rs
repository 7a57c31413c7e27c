//! The authorization gate: every request passes here between the connection (which
//! established the principal) and the handlers, which never check permissions themselves.
//!
//! For each API the gate asks the authorizer what Kafka's `KafkaApis` asks, with the same
//! operations, resources and error codes:
//! - a request the principal may not make at all is answered here (its error response);
//! - a request naming several resources goes on with the permitted ones only, and the
//!   denied ones are added back to the response with their error (a fixup);
//! - listings (Metadata of all topics, ListGroups, ...) are filtered on the way out.
//!
//! Authorization is off unless `authorizer.class.name` names Kafka's standard authorizer
//! (as in Kafka, where no authorizer means everything is allowed); it is one pointer check
//! per request then.

mod cluster;
mod groups;
pub(crate) mod replay;
mod topics;
mod txn;

use crate::Broker;
use kafka_protocol::messages::{FetchResponse, RequestKind, ResponseKind};
use parking_lot::Mutex;
use shale_meta::{AclEntryMeta, StateMap};
use shale_security::acl::{AclOperation, Authorizer, AuthorizerConfig, Decision, ResourceType};
use shale_security::principal::KafkaPrincipal;
use std::sync::Arc;

pub(crate) use shale_security::acl::CLUSTER_NAME;

/// Who is asking: what every authorization decision needs to know about a request.
#[derive(Debug, Clone)]
pub(crate) struct RequestContext {
    pub principal: KafkaPrincipal,
    /// The client's IP address as text (ACL hosts are IP addresses).
    pub host: String,
    pub listener: Arc<str>,
    /// A request relayed by another node over the node-to-node transport (see `peers`):
    /// only inter-broker APIs arrive that way, and they are not subject to ACLs.
    pub inter_broker: bool,
}

/// The node's authorizer: its settings, and an index over the quorum's ACLs rebuilt when
/// they change (the map is persistent, so "changed" is a pointer comparison).
pub(crate) struct Acls {
    config: Option<AuthorizerConfig>,
    cache: Mutex<Option<IndexedAcls>>,
    /// The allow-everything authorizer of [`Broker::audit_protection`].
    open: std::sync::OnceLock<Arc<Authorizer>>,
    /// Replay boundaries of the partitions fetched from (`replay`).
    pub(crate) replay: replay::Boundaries,
}

/// The ACLs an authorizer index was built from, and the index.
type IndexedAcls = (StateMap<u64, AclEntryMeta>, Arc<Authorizer>);

impl Acls {
    pub(crate) fn new(config: Option<AuthorizerConfig>) -> Acls {
        Acls {
            config,
            cache: Mutex::new(None),
            open: std::sync::OnceLock::new(),
            replay: Default::default(),
        }
    }
}

impl Broker {
    /// Whether ACLs are enforced (`authorizer.class.name` is set).
    pub(crate) fn acls_enabled(&self) -> bool {
        self.acls.config.is_some()
    }

    /// The authorizer in force, `None` when authorization is off.
    pub(crate) fn authorizer(&self) -> Option<Arc<Authorizer>> {
        let config = self.acls.config.as_ref()?;
        let acls = self.meta.read(|s| s.acls.clone());
        let mut cache = self.acls.cache.lock();
        if let Some((seen, authorizer)) = cache.as_ref()
            && seen.ptr_eq(&acls)
        {
            return Some(authorizer.clone());
        }
        let authorizer = Arc::new(Authorizer::new(
            config.clone(),
            acls.values().filter_map(crate::handlers::acls::binding),
        ));
        *cache = Some((acls, authorizer.clone()));
        Some(authorizer)
    }

    /// Without ACLs but with an audit log: a gate that allows everything except writing to
    /// or deleting the audit topic (see [`Gate::allows`]).
    pub(crate) fn audit_protection(&self) -> Option<Arc<Authorizer>> {
        if !self.config.auditor.is_enabled() {
            return None;
        }
        let open = self.acls.open.get_or_init(|| {
            Arc::new(Authorizer::new(
                AuthorizerConfig {
                    super_users: Default::default(),
                    allow_if_no_acl: true,
                },
                [],
            ))
        });
        Some(open.clone())
    }

    /// After an ACL or credential change: returns once every live broker has applied it,
    /// so the change is in force wherever a client connects when the admin call returns.
    pub(crate) async fn acls_in_force(&self) -> Result<(), shale_meta::MetaError> {
        // A broker that stops heartbeating stops serving within its session: waiting one
        // session (and a margin) out bounds the wait.
        let bound = self.config.broker_session_timeout + std::time::Duration::from_secs(2);
        self.meta.await_applied_everywhere(bound).await
    }
}

/// One request's view of the authorizer.
pub(crate) struct Gate<'a> {
    authorizer: Arc<Authorizer>,
    ctx: &'a RequestContext,
    api: &'static str,
    version: i16,
    /// Where denials (and, with `audit.log.allowed`, allows) are recorded.
    auditor: shale_security::audit::Auditor,
}

impl Gate<'_> {
    /// Whether the principal may do `op` on the resource; a denial is logged and audited
    /// with what was asked. The audit topic is append-only for Shale itself: no principal,
    /// super users included, may write to it or delete from it.
    pub(crate) fn allows(&self, op: AclOperation, rt: ResourceType, name: &str) -> bool {
        let d = if rt == ResourceType::Topic
            && name == crate::audit::AUDIT_TOPIC
            && matches!(
                op,
                AclOperation::Write | AclOperation::Delete | AclOperation::Alter
            ) {
            Decision::Deny(shale_security::acl::Reason::Protected)
        } else {
            self.authorizer
                .authorize(&self.ctx.principal, &self.ctx.host, op, rt, name)
        };
        let audited = !d.allowed() || self.auditor.logs_allowed();
        if audited {
            use shale_security::audit;
            let request = audit::Request::new(
                self.ctx.principal.to_string(),
                audit::Client::new(self.ctx.listener.to_string(), self.ctx.host.clone()),
                audit::Api::new(self.api, self.version),
            );
            let resource = shale_security::audit::Resource::new(rt.to_string(), name);
            let event = shale_security::audit::AuditEvent::authorization(
                &request,
                resource,
                op.to_string(),
                d.allowed(),
            );
            let event = match d {
                Decision::Deny(reason) => event.with_reason(format!("{reason:?}")),
                Decision::Allow(_) => event,
            };
            if self.auditor.record(event).is_err() && d.allowed() {
                // Fail-closed: an allow that cannot be recorded is not granted.
                tracing::error!("audit log unavailable: refusing an allowed request");
                return false;
            }
        }
        if let Decision::Deny(reason) = d {
            tracing::info!(
                principal = %self.ctx.principal,
                host = %self.ctx.host,
                listener = %self.ctx.listener,
                api = self.api,
                operation = %op,
                resource_type = %rt,
                resource = name,
                ?reason,
                "authorization denied"
            );
            metrics::counter!("shale_authorization_denials_total", "api" => self.api).increment(1);
        }
        d.allowed()
    }

    pub(crate) fn allows_cluster(&self, op: AclOperation) -> bool {
        self.allows(op, ResourceType::Cluster, CLUSTER_NAME)
    }

    /// Like `allows`, without logging a denial: for listings that leave out what the
    /// principal may not see (Kafka does not log those either).
    pub(crate) fn may_see(&self, op: AclOperation, rt: ResourceType, name: &str) -> bool {
        self.authorizer
            .authorize(&self.ctx.principal, &self.ctx.host, op, rt, name)
            .allowed()
    }

    pub(crate) fn authorizer(&self) -> &Authorizer {
        &self.authorizer
    }

    pub(crate) fn ctx(&self) -> &RequestContext {
        self.ctx
    }
}

/// Changes the gate makes to a response before it is sent.
pub(crate) enum Fixup {
    None,
    Response(Box<dyn FnOnce(&mut ResponseKind) + Send>),
    Fetch(Box<dyn FnOnce(&mut FetchResponse) + Send>),
}

impl Fixup {
    pub(crate) fn response(f: impl FnOnce(&mut ResponseKind) + Send + 'static) -> Fixup {
        Fixup::Response(Box::new(f))
    }

    pub(crate) fn apply(self, resp: &mut Option<ResponseKind>) {
        if let (Fixup::Response(f), Some(r)) = (self, resp.as_mut()) {
            f(r)
        }
    }
}

/// The gate's verdict on one request.
pub(crate) enum Checked {
    /// Dispatch (what is left of) the request, then apply the fixup to its response.
    Dispatch(RequestKind, Fixup),
    /// Answer with this response; the handler never sees the request.
    Refuse(ResponseKind),
    /// No answer can be given: close the connection.
    Close,
}

/// Checks a request against the ACLs (or lets it through when authorization is off).
pub(crate) fn check(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    api: kafka_protocol::messages::ApiKey,
    version: i16,
    body: RequestKind,
) -> Checked {
    if ctx.inter_broker {
        // Nodes produce only to the audit topic (their audit sinks).
        if let RequestKind::Produce(req) = &body
            && req
                .topic_data
                .iter()
                .any(|t| t.name.as_str() != crate::audit::AUDIT_TOPIC)
        {
            tracing::warn!(
                "refused a node's produce outside {}",
                crate::audit::AUDIT_TOPIC
            );
            return Checked::Close;
        }
        return Checked::Dispatch(body, Fixup::None);
    }
    let Some(authorizer) = broker.authorizer().or_else(|| broker.audit_protection()) else {
        return Checked::Dispatch(body, Fixup::None);
    };
    let gate = Gate {
        authorizer,
        ctx,
        api: crate::dispatch::api_name(api),
        version,
        auditor: broker.config.auditor.clone(),
    };
    use RequestKind as R;
    match body {
        R::ApiVersions(_) => Checked::Dispatch(body, Fixup::None),
        // Open to every principal, as in Kafka; only the operations it reports depend on
        // the ACLs.
        R::DescribeCluster(req) => {
            let ops = req
                .include_cluster_authorized_operations
                .then(|| topics::cluster_operations(&gate));
            let fixup = match ops {
                None => Fixup::None,
                Some(ops) => Fixup::response(move |r| {
                    if let ResponseKind::DescribeCluster(d) = r {
                        d.cluster_authorized_operations = ops;
                    }
                }),
            };
            Checked::Dispatch(R::DescribeCluster(req), fixup)
        }
        R::CreateAcls(_)
        | R::DescribeAcls(_)
        | R::DeleteAcls(_)
        | R::DescribeUserScramCredentials(_)
        | R::AlterUserScramCredentials(_)
        | R::DescribeClientQuotas(_)
        | R::AlterClientQuotas(_)
        | R::WriteTxnMarkers(_) => cluster::check(&gate, version, body),
        R::Produce(_)
        | R::Fetch(_)
        | R::Metadata(_)
        | R::ListOffsets(_)
        | R::OffsetForLeaderEpoch(_)
        | R::DeleteRecords(_)
        | R::CreateTopics(_)
        | R::DeleteTopics(_)
        | R::CreatePartitions(_)
        | R::DescribeConfigs(_)
        | R::AlterConfigs(_)
        | R::IncrementalAlterConfigs(_) => topics::check(broker, &gate, version, body),
        R::FindCoordinator(_)
        | R::JoinGroup(_)
        | R::SyncGroup(_)
        | R::Heartbeat(_)
        | R::LeaveGroup(_)
        | R::OffsetCommit(_)
        | R::OffsetFetch(_)
        | R::OffsetDelete(_)
        | R::DescribeGroups(_)
        | R::ListGroups(_)
        | R::DeleteGroups(_) => groups::check(broker, &gate, version, body),
        R::InitProducerId(_)
        | R::AddPartitionsToTxn(_)
        | R::AddOffsetsToTxn(_)
        | R::EndTxn(_)
        | R::TxnOffsetCommit(_)
        | R::DescribeTransactions(_)
        | R::ListTransactions(_)
        | R::DescribeProducers(_) => txn::check(broker, &gate, version, body),
        // Every API Shale serves is listed above; anything else is refused by the
        // connection before it gets here. Should one slip through, it is denied.
        _ => {
            tracing::error!(api = gate.api, "no authorization rule; closing");
            Checked::Close
        }
    }
}
