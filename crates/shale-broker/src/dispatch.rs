//! Routes decoded requests to the handler of their API family and lists what is supported.

use crate::Broker;
use crate::handlers;
use futures::future::BoxFuture;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, RequestKind, ResponseKind};
use kafka_protocol::protocol::VersionRange;
use std::sync::Arc;

/// The APIs Shale implements and the versions it accepts: one list, kept with the request
/// schemas the guard checks frames against (see `shale_protocol::schema`).
const SUPPORTED: &[(ApiKey, i16, i16)] = shale_protocol::schema::ADVERTISED;

/// The accepted version range of an API, `None` when Shale does not implement it.
pub(crate) fn supported(api: ApiKey) -> Option<VersionRange> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|&(k, min, max)| {
            let codec = k.valid_versions();
            VersionRange { min, max }.intersect(&codec)
        })
        .filter(|r| !r.is_empty())
}

/// The ApiVersions body (for a request of `version`): every supported API, and the one
/// feature clients act on, `transaction.version`. Java clients 4.x use KIP-890 part 2
/// (Produce v12 adds partitions, TxnOffsetCommit v5 adds the group, EndTxn v5 bumps the
/// epoch) when its finalized level is 2 at an epoch of 0 or more. The level is fixed, so the
/// epoch is a constant.
pub(crate) fn api_versions_response(version: i16) -> ApiVersionsResponse {
    use kafka_protocol::messages::api_versions_response::{
        FinalizedFeatureKey, SupportedFeatureKey,
    };
    use kafka_protocol::protocol::StrBytes;
    let api_keys = SUPPORTED
        .iter()
        .filter_map(|&(k, _, _)| {
            let r = supported(k)?;
            Some(
                ApiVersion::default()
                    .with_api_key(k as i16)
                    .with_min_version(r.min)
                    .with_max_version(r.max),
            )
        })
        .collect();
    let level = crate::txn::TRANSACTION_VERSION.level();
    let name = || StrBytes::from_static_str(crate::txn::TRANSACTION_VERSION_FEATURE);
    // Kafka leaves features whose lowest level is 0 out of answers to v3 and older
    // (KAFKA-17011): those clients reject a range starting at 0.
    let supported_features = if version >= 4 {
        vec![
            SupportedFeatureKey::default()
                .with_name(name())
                .with_min_version(0)
                .with_max_version(level),
        ]
    } else {
        Vec::new()
    };
    ApiVersionsResponse::default()
        .with_api_keys(api_keys)
        .with_supported_features(supported_features)
        .with_finalized_features_epoch(FINALIZED_FEATURES_EPOCH)
        .with_finalized_features(vec![
            FinalizedFeatureKey::default()
                .with_name(name())
                .with_min_version_level(level)
                .with_max_version_level(level),
        ])
}

/// The epoch of the finalized features: Kafka's is the metadata offset they were set at;
/// Shale's never change, so one value serves every node and every restart.
const FINALIZED_FEATURES_EPOCH: i64 = 1;

/// A request that has been started: either answered already, or finishing in a future
/// (`None` from either means no response is sent, as for acks=0 produce).
// Moved once per request, never stored: boxing the large variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Started {
    Done(Option<ResponseKind>),
    Later(BoxFuture<'static, Option<ResponseKind>>),
    /// A fetch: its records are written as they were read, not copied into the frame.
    Fetch(BoxFuture<'static, handlers::fetch::FetchReply>),
    /// No response can tell the client what went wrong: close the connection.
    Close,
}

/// Starts a request that passed authentication: the authorization gate first, then the
/// handler of its API family.
pub(crate) async fn start(
    broker: &Arc<Broker>,
    ctx: &crate::authz::RequestContext,
    api: ApiKey,
    version: i16,
    body: RequestKind,
    frame: bytes::Bytes,
) -> Started {
    use crate::authz::{Checked, Fixup};
    let auditor = &broker.config.auditor;
    // Fail-closed: while the audit log cannot take events, nothing is served unaudited.
    // Node-to-node requests (among them the audit topic's own writes) go on.
    if !ctx.inter_broker && auditor.is_refusing() {
        tracing::error!(
            ?api,
            "audit log unavailable (audit.failure.policy=fail-closed): closing"
        );
        return Started::Close;
    }
    let admin = (auditor.is_enabled() && !ctx.inter_broker)
        .then(|| {
            crate::audit::admin_request(ctx, api, version, &body)
                .map(|a| (a, crate::audit::credential_changes(&body)))
        })
        .flatten();
    let started = match crate::authz::check(broker, ctx, api, version, body) {
        Checked::Refuse(resp) => Started::Done(Some(resp)),
        Checked::Close => Started::Close,
        Checked::Dispatch(body, Fixup::None) => route(broker, version, body, frame).await,
        Checked::Dispatch(body, fixup) => {
            with_fixup(route(broker, version, body, frame).await, fixup)
        }
    };
    match admin {
        None => started,
        Some((admin, credentials)) => audit_outcomes(broker, started, admin, credentials),
    }
}

/// Records an admin request's changes with their outcomes once its response is ready.
fn audit_outcomes(
    broker: &Arc<Broker>,
    started: Started,
    admin: crate::audit::AdminRequest,
    credentials: Option<Vec<(String, String, shale_security::audit::CredentialOp)>>,
) -> Started {
    let record = move |broker: &Broker, resp: &Option<ResponseKind>| {
        if let Some(resp) = resp {
            for event in crate::audit::admin_outcomes(admin, credentials, resp) {
                broker.audit(event);
            }
        }
    };
    match started {
        Started::Done(resp) => {
            record(broker, &resp);
            Started::Done(resp)
        }
        Started::Later(fut) => {
            let broker = broker.clone();
            Started::Later(Box::pin(async move {
                let resp = fut.await;
                record(&broker, &resp);
                resp
            }))
        }
        other => other,
    }
}

/// Applies the gate's changes to a response once it is ready.
fn with_fixup(started: Started, fixup: crate::authz::Fixup) -> Started {
    use crate::authz::Fixup;
    match (started, fixup) {
        (Started::Done(mut resp), fixup) => {
            fixup.apply(&mut resp);
            Started::Done(resp)
        }
        (Started::Later(fut), fixup) => Started::Later(Box::pin(async move {
            let mut resp = fut.await;
            fixup.apply(&mut resp);
            resp
        })),
        (Started::Fetch(fut), Fixup::Fetch(f)) => Started::Fetch(Box::pin(async move {
            let mut reply = fut.await;
            f(&mut reply.response);
            reply
        })),
        (started, _) => started,
    }
}

async fn route(
    broker: &Arc<Broker>,
    version: i16,
    body: RequestKind,
    frame: bytes::Bytes,
) -> Started {
    use Started::Done;
    match body {
        RequestKind::ApiVersions(_) => Done(Some(ResponseKind::ApiVersions(
            api_versions_response(version),
        ))),
        RequestKind::Produce(req) => handlers::produce::start(broker, version, req, frame).await,
        RequestKind::Fetch(req) => {
            let broker = broker.clone();
            Started::Fetch(Box::pin(async move {
                handlers::fetch::handle(&broker, version, req).await
            }))
        }
        RequestKind::Metadata(req) => Done(Some(ResponseKind::Metadata(
            handlers::metadata::handle(broker, version, req).await,
        ))),
        RequestKind::ListOffsets(req) => Done(Some(ResponseKind::ListOffsets(
            handlers::offsets::list_offsets(broker, version, req).await,
        ))),
        RequestKind::DeleteRecords(req) => Done(Some(ResponseKind::DeleteRecords(
            handlers::offsets::delete_records(broker, version, req).await,
        ))),
        RequestKind::OffsetForLeaderEpoch(req) => Done(Some(ResponseKind::OffsetForLeaderEpoch(
            handlers::offsets::offset_for_leader_epoch(broker, version, req).await,
        ))),
        RequestKind::CreateTopics(req) => Done(Some(ResponseKind::CreateTopics(
            handlers::topics::create_topics(broker, version, req).await,
        ))),
        RequestKind::DeleteTopics(req) => Done(Some(ResponseKind::DeleteTopics(
            handlers::topics::delete_topics(broker, version, req).await,
        ))),
        RequestKind::CreatePartitions(req) => Done(Some(ResponseKind::CreatePartitions(
            handlers::topics::create_partitions(broker, version, req).await,
        ))),
        RequestKind::DescribeConfigs(req) => Done(Some(ResponseKind::DescribeConfigs(
            handlers::configs::describe_configs(broker, version, req).await,
        ))),
        RequestKind::AlterConfigs(req) => Done(Some(ResponseKind::AlterConfigs(
            handlers::configs::alter_configs(broker, version, req).await,
        ))),
        RequestKind::IncrementalAlterConfigs(req) => {
            Done(Some(ResponseKind::IncrementalAlterConfigs(
                handlers::configs::incremental_alter_configs(broker, version, req).await,
            )))
        }
        RequestKind::DescribeCluster(req) => Done(Some(ResponseKind::DescribeCluster(
            handlers::cluster::describe_cluster(broker, version, req).await,
        ))),
        // Consumer groups: answers may wait for a rebalance or for durability.
        RequestKind::FindCoordinator(req) => Done(Some(ResponseKind::FindCoordinator(
            handlers::groups::find_coordinator(broker, version, req).await,
        ))),
        RequestKind::JoinGroup(req) => {
            let (broker, client_id) = (broker.clone(), handlers::groups::client_id(&frame));
            Started::Later(Box::pin(async move {
                Some(ResponseKind::JoinGroup(
                    handlers::groups::join_group(&broker, version, req, client_id).await,
                ))
            }))
        }
        RequestKind::SyncGroup(req) => {
            let broker = broker.clone();
            Started::Later(Box::pin(async move {
                Some(ResponseKind::SyncGroup(
                    handlers::groups::sync_group(&broker, version, req).await,
                ))
            }))
        }
        RequestKind::Heartbeat(req) => Done(Some(ResponseKind::Heartbeat(
            handlers::groups::heartbeat(broker, version, req).await,
        ))),
        RequestKind::LeaveGroup(req) => Done(Some(ResponseKind::LeaveGroup(
            handlers::groups::leave_group(broker, version, req).await,
        ))),
        RequestKind::ListGroups(req) => Done(Some(ResponseKind::ListGroups(
            handlers::groups::list_groups(broker, version, req).await,
        ))),
        RequestKind::DescribeGroups(req) => Done(Some(ResponseKind::DescribeGroups(
            handlers::groups::describe_groups(broker, version, req).await,
        ))),
        RequestKind::DeleteGroups(req) => {
            let broker = broker.clone();
            Started::Later(Box::pin(async move {
                Some(ResponseKind::DeleteGroups(
                    handlers::groups::delete_groups(&broker, version, req).await,
                ))
            }))
        }
        RequestKind::OffsetCommit(req) => {
            // Appended now, in request order; only the durability wait runs concurrently.
            let commit = handlers::offset_commit::offset_commit(broker, version, req);
            Started::Later(Box::pin(async move {
                Some(ResponseKind::OffsetCommit(commit.await))
            }))
        }
        RequestKind::OffsetFetch(req) => Done(Some(ResponseKind::OffsetFetch(
            handlers::offset_commit::offset_fetch(broker, version, req).await,
        ))),
        RequestKind::OffsetDelete(req) => {
            let broker = broker.clone();
            Started::Later(Box::pin(async move {
                Some(ResponseKind::OffsetDelete(
                    handlers::offset_commit::offset_delete(&broker, version, req).await,
                ))
            }))
        }
        RequestKind::InitProducerId(req) => {
            let broker = broker.clone();
            Started::Later(Box::pin(async move {
                Some(ResponseKind::InitProducerId(
                    handlers::producers::init_producer_id(&broker, version, req).await,
                ))
            }))
        }
        RequestKind::AddPartitionsToTxn(req) => {
            let broker = broker.clone();
            Started::Later(Box::pin(async move {
                Some(ResponseKind::AddPartitionsToTxn(
                    handlers::txn::add_partitions_to_txn(&broker, version, req).await,
                ))
            }))
        }
        RequestKind::AddOffsetsToTxn(req) => {
            let broker = broker.clone();
            Started::Later(Box::pin(async move {
                Some(ResponseKind::AddOffsetsToTxn(
                    handlers::txn::add_offsets_to_txn(&broker, version, req).await,
                ))
            }))
        }
        RequestKind::WriteTxnMarkers(req) => {
            let broker = broker.clone();
            Started::Later(Box::pin(async move {
                Some(ResponseKind::WriteTxnMarkers(
                    handlers::txn::write_txn_markers(&broker, req).await,
                ))
            }))
        }
        RequestKind::EndTxn(req) => {
            let broker = broker.clone();
            Started::Later(Box::pin(async move {
                Some(ResponseKind::EndTxn(
                    handlers::txn::end_txn(&broker, version, req).await,
                ))
            }))
        }
        RequestKind::TxnOffsetCommit(req) => {
            let broker = broker.clone();
            Started::Later(Box::pin(async move {
                Some(ResponseKind::TxnOffsetCommit(
                    handlers::txn::txn_offset_commit(&broker, version, req).await,
                ))
            }))
        }
        RequestKind::DescribeTransactions(req) => {
            let broker = broker.clone();
            Started::Later(Box::pin(async move {
                Some(ResponseKind::DescribeTransactions(
                    handlers::txn::describe_transactions(&broker, version, req).await,
                ))
            }))
        }
        RequestKind::ListTransactions(req) => {
            let broker = broker.clone();
            Started::Later(Box::pin(async move {
                Some(ResponseKind::ListTransactions(
                    handlers::txn::list_transactions(&broker, version, req).await,
                ))
            }))
        }
        RequestKind::DescribeProducers(req) => {
            let broker = broker.clone();
            Started::Later(Box::pin(async move {
                Some(ResponseKind::DescribeProducers(
                    handlers::txn::describe_producers(&broker, version, req).await,
                ))
            }))
        }
        RequestKind::CreateAcls(req) => {
            let broker = broker.clone();
            Started::Later(Box::pin(async move {
                Some(ResponseKind::CreateAcls(
                    handlers::acls::create_acls(&broker, version, req).await,
                ))
            }))
        }
        RequestKind::DescribeAcls(req) => Done(Some(ResponseKind::DescribeAcls(
            handlers::acls::describe_acls(broker, version, req).await,
        ))),
        RequestKind::DeleteAcls(req) => {
            let broker = broker.clone();
            Started::Later(Box::pin(async move {
                Some(ResponseKind::DeleteAcls(
                    handlers::acls::delete_acls(&broker, version, req).await,
                ))
            }))
        }
        RequestKind::DescribeUserScramCredentials(req) => {
            Done(Some(ResponseKind::DescribeUserScramCredentials(
                handlers::credentials::describe_user_scram_credentials(broker, version, req).await,
            )))
        }
        RequestKind::AlterUserScramCredentials(req) => {
            let broker = broker.clone();
            Started::Later(Box::pin(async move {
                Some(ResponseKind::AlterUserScramCredentials(
                    handlers::credentials::alter_user_scram_credentials(&broker, version, req)
                        .await,
                ))
            }))
        }
        RequestKind::DescribeClientQuotas(req) => Done(Some(ResponseKind::DescribeClientQuotas(
            handlers::quotas::describe_client_quotas(broker, version, req).await,
        ))),
        RequestKind::AlterClientQuotas(req) => {
            let broker = broker.clone();
            Started::Later(Box::pin(async move {
                Some(ResponseKind::AlterClientQuotas(
                    handlers::quotas::alter_client_quotas(&broker, version, req).await,
                ))
            }))
        }
        other => {
            // Unreachable: `supported` filters API keys before decoding (SASL requests are
            // answered by the connection's session).
            tracing::error!(request = ?std::mem::discriminant(&other), "no handler");
            Done(None)
        }
    }
}

/// The API's name as a metric label ("Produce", "Fetch", ...): names are made once per
/// supported API, so labelling a request costs no allocation.
pub(crate) fn api_name(api: ApiKey) -> &'static str {
    static NAMES: std::sync::LazyLock<Vec<(ApiKey, &'static str)>> =
        std::sync::LazyLock::new(|| {
            SUPPORTED
                .iter()
                .map(|&(k, _, _)| (k, &*Box::leak(format!("{k:?}").into_boxed_str())))
                .collect()
        });
    NAMES
        .iter()
        .find(|(k, _)| *k == api)
        .map_or("other", |(_, n)| n)
}
