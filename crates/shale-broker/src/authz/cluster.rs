//! Cluster-level APIs: ACL and credential administration (ALTER / DESCRIBE on the cluster),
//! client quotas (ALTER_CONFIGS / DESCRIBE_CONFIGS on the cluster, as Kafka), and the
//! transaction markers coordinators send (CLUSTER_ACTION).

use super::{Checked, Fixup, Gate};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use shale_security::acl::AclOperation;

const DENIED: ResponseError = ResponseError::ClusterAuthorizationFailed;

pub(super) fn check(gate: &Gate<'_>, _version: i16, body: RequestKind) -> Checked {
    use RequestKind as R;
    let op = match &body {
        R::CreateAcls(_) | R::DeleteAcls(_) | R::AlterUserScramCredentials(_) => {
            AclOperation::Alter
        }
        R::DescribeAcls(_) | R::DescribeUserScramCredentials(_) => AclOperation::Describe,
        R::AlterClientQuotas(_) => AclOperation::AlterConfigs,
        R::DescribeClientQuotas(_) => AclOperation::DescribeConfigs,
        R::WriteTxnMarkers(_) => AclOperation::ClusterAction,
        _ => return Checked::Dispatch(body, Fixup::None),
    };
    if gate.allows_cluster(op) {
        return Checked::Dispatch(body, Fixup::None);
    }
    let code = DENIED.code();
    let message = || Some(StrBytes::from_static_str("Cluster authorization failed."));
    Checked::Refuse(match body {
        R::CreateAcls(req) => ResponseKind::CreateAcls(
            CreateAclsResponse::default().with_results(
                req.creations
                    .iter()
                    .map(|_| {
                        create_acls_response::AclCreationResult::default()
                            .with_error_code(code)
                            .with_error_message(message())
                    })
                    .collect(),
            ),
        ),
        R::DeleteAcls(req) => ResponseKind::DeleteAcls(
            DeleteAclsResponse::default().with_filter_results(
                req.filters
                    .iter()
                    .map(|_| {
                        delete_acls_response::DeleteAclsFilterResult::default()
                            .with_error_code(code)
                            .with_error_message(message())
                    })
                    .collect(),
            ),
        ),
        R::DescribeAcls(_) => ResponseKind::DescribeAcls(
            DescribeAclsResponse::default()
                .with_error_code(code)
                .with_error_message(message()),
        ),
        R::AlterUserScramCredentials(req) => {
            let users: std::collections::BTreeSet<String> = req
                .deletions
                .iter()
                .map(|d| d.name.to_string())
                .chain(req.upsertions.iter().map(|u| u.name.to_string()))
                .collect();
            ResponseKind::AlterUserScramCredentials(
                AlterUserScramCredentialsResponse::default().with_results(
                    users
                        .into_iter()
                        .map(|u| {
                            alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default()
                                .with_user(StrBytes::from_string(u))
                                .with_error_code(code)
                                .with_error_message(message())
                        })
                        .collect(),
                ),
            )
        }
        R::DescribeUserScramCredentials(_) => ResponseKind::DescribeUserScramCredentials(
            DescribeUserScramCredentialsResponse::default()
                .with_error_code(code)
                .with_error_message(message()),
        ),
        R::DescribeClientQuotas(_) => ResponseKind::DescribeClientQuotas(
            DescribeClientQuotasResponse::default()
                .with_error_code(code)
                .with_error_message(message())
                .with_entries(None),
        ),
        R::AlterClientQuotas(req) => ResponseKind::AlterClientQuotas(
            AlterClientQuotasResponse::default().with_entries(
                req.entries
                    .iter()
                    .map(|e| {
                        alter_client_quotas_response::EntryData::default()
                            .with_entity(crate::handlers::quotas::echo_entity(&e.entity))
                            .with_error_code(code)
                            .with_error_message(message())
                    })
                    .collect(),
            ),
        ),
        R::WriteTxnMarkers(req) => ResponseKind::WriteTxnMarkers(
            WriteTxnMarkersResponse::default().with_markers(
                req.markers
                    .iter()
                    .map(|m| {
                        write_txn_markers_response::WritableTxnMarkerResult::default()
                            .with_producer_id(m.producer_id)
                            .with_topics(
                                m.topics
                                    .iter()
                                    .map(|t| {
                                        write_txn_markers_response::WritableTxnMarkerTopicResult::default()
                                            .with_name(t.name.clone())
                                            .with_partitions(
                                                t.partition_indexes
                                                    .iter()
                                                    .map(|p| {
                                                        write_txn_markers_response::WritableTxnMarkerPartitionResult::default()
                                                            .with_partition_index(*p)
                                                            .with_error_code(code)
                                                    })
                                                    .collect(),
                                            )
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        _ => return Checked::Close,
    })
}
