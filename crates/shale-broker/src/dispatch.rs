//! Routes decoded requests to the handler of their API family and lists what is supported.

use crate::Broker;
use crate::handlers;
use futures::future::BoxFuture;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, RequestKind, ResponseKind};
use kafka_protocol::protocol::VersionRange;
use std::sync::Arc;

/// The APIs Shale implements and the versions it accepts. An API is listed only once it
/// works; ranges are capped by what the `kafka-protocol` codecs know.
const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 9),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
];

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

/// The ApiVersions body listing every supported API.
pub(crate) fn api_versions_response() -> ApiVersionsResponse {
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
    ApiVersionsResponse::default().with_api_keys(api_keys)
}

/// A request that has been started: either answered already, or finishing in a future
/// (`None` from either means no response is sent, as for acks=0 produce).
pub(crate) enum Started {
    Done(Option<ResponseKind>),
    Later(BoxFuture<'static, Option<ResponseKind>>),
}

pub(crate) async fn start(
    broker: &Arc<Broker>,
    version: i16,
    body: RequestKind,
    frame: bytes::Bytes,
) -> Started {
    use Started::Done;
    match body {
        RequestKind::ApiVersions(_) => {
            Done(Some(ResponseKind::ApiVersions(api_versions_response())))
        }
        RequestKind::Produce(req) => {
            handlers::produce::start(broker, version, req, frame).await
        },
        RequestKind::Fetch(req) => {
            let broker = broker.clone();
            Started::Later(Box::pin(async move {
                Some(ResponseKind::Fetch(
                    handlers::fetch::handle(&broker, version, req).await,
                ))
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
        other => {
            // Unreachable: `supported` filters API keys before decoding.
            tracing::error!(request = ?std::mem::discriminant(&other), "no handler");
            Done(None)
        }
    }
}
