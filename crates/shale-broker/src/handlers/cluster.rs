//! DescribeCluster.
//!
//! Every node answers for the whole cluster from its local metadata replica: the cluster id,
//! the registered brokers, and itself as the controller (clients send controller-bound admin
//! requests to it, and Shale forwards metadata writes to the Raft leader internally).

use crate::Broker;
use crate::handlers::metadata;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::StrBytes;
use std::sync::Arc;

/// `endpoint_type` of brokers (2 is controllers, which Shale does not expose separately).
const ENDPOINT_BROKERS: i8 = 1;

/// Reported when the client did not ask for authorized operations.
const OPERATIONS_OMITTED: i32 = i32::MIN;

/// Kafka's `AclOperation` codes of the operations a CLUSTER resource supports: CREATE (5),
/// ALTER (7), DESCRIBE (8), CLUSTER_ACTION (9), DESCRIBE_CONFIGS (10), ALTER_CONFIGS (11),
/// IDEMPOTENT_WRITE (12).
const CLUSTER_OPERATIONS: [u8; 7] = [5, 7, 8, 9, 10, 11, 12];

/// The bitfield of cluster operations the client may perform. Shale does not enforce ACLs
/// yet, so, like Kafka without an authorizer, every supported operation is allowed.
fn cluster_authorized_operations() -> i32 {
    CLUSTER_OPERATIONS
        .iter()
        .fold(0, |bits, op| bits | (1 << op))
}

pub async fn describe_cluster(
    broker: &Arc<Broker>,
    version: i16,
    req: DescribeClusterRequest,
) -> DescribeClusterResponse {
    if version >= 1 && req.endpoint_type != ENDPOINT_BROKERS {
        return DescribeClusterResponse::default()
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(StrBytes::from_string(format!(
                "The request was sent to an endpoint of type BROKER, but endpoint type {} was \
                 requested.",
                req.endpoint_type
            ))))
            .with_endpoint_type(ENDPOINT_BROKERS);
    }
    let brokers = metadata::live_brokers(broker)
        .into_iter()
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(b.node_id)
                .with_host(b.host)
                .with_port(b.port)
                .with_rack(b.rack)
        })
        .collect();
    let operations = if req.include_cluster_authorized_operations {
        cluster_authorized_operations()
    } else {
        OPERATIONS_OMITTED
    };
    DescribeClusterResponse::default()
        .with_error_code(0)
        .with_error_message(None)
        .with_endpoint_type(ENDPOINT_BROKERS)
        .with_cluster_id(StrBytes::from_string(metadata::cluster_id(broker)))
        .with_controller_id(BrokerId(broker.config.node_id))
        .with_brokers(brokers)
        .with_cluster_authorized_operations(operations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorized_operations_bitfield() {
        // Kafka's value for a cluster without an authorizer.
        assert_eq!(cluster_authorized_operations(), 8096);
    }
}
