//! Broker settings (Kafka names; see docs/configuration.md).

use std::time::Duration;

/// Broker-level settings the Kafka front end needs.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: i32,
    /// Host and port clients are told to connect to.
    pub advertised_host: String,
    pub advertised_port: u16,
    pub rack: Option<String>,
    /// `num.partitions`: partitions of auto-created topics and of CreateTopics with -1.
    pub num_partitions: i32,
    /// `default.replication.factor`, reported for topics (storage is shared: no replicas).
    pub default_replication_factor: i16,
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// `socket.request.max.bytes`: larger frames close the connection.
    pub socket_request_max_bytes: usize,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval: Duration,
    /// Broker-level defaults of topic configs (`log.retention.ms` ...), by topic config name.
    pub topic_defaults: std::collections::BTreeMap<String, String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            rack: None,
            num_partitions: 1,
            default_replication_factor: 1,
            auto_create_topics: true,
            socket_request_max_bytes: 100 * 1024 * 1024,
            retention_check_interval: Duration::from_secs(300),
            topic_defaults: Default::default(),
        }
    }
}
