//! DescribeCluster.

use crate::Broker;
use kafka_protocol::messages::{DescribeClusterRequest, DescribeClusterResponse};
use std::sync::Arc;

pub async fn describe_cluster(
    broker: &Arc<Broker>,
    version: i16,
    req: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let _ = (broker, version, req);
    DescribeClusterResponse::default()
}
