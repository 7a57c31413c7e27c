//! DescribeConfigs, AlterConfigs, IncrementalAlterConfigs.

use crate::Broker;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use std::sync::Arc;

pub async fn describe_configs(
    broker: &Arc<Broker>,
    version: i16,
    req: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let _ = (broker, version, req);
    DescribeConfigsResponse::default()
}

pub async fn alter_configs(
    broker: &Arc<Broker>,
    version: i16,
    req: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let _ = (broker, version, req);
    AlterConfigsResponse::default()
}

pub async fn incremental_alter_configs(
    broker: &Arc<Broker>,
    version: i16,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let _ = (broker, version, req);
    IncrementalAlterConfigsResponse::default()
}
