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
    /// `fetch.max.bytes`: the most record bytes one fetch response carries, whatever the
    /// client asks for (Kafka's default 55 MiB). Bounds the memory a fetch can pin.
    pub fetch_max_bytes: usize,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval: Duration,
    /// Broker-level defaults of topic configs (`log.retention.ms` ...), by topic config name.
    pub topic_defaults: std::collections::BTreeMap<String, String>,
    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets` when created.
    pub offsets_topic_num_partitions: i32,
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty group
    /// waits for more members.
    pub group_initial_rebalance_delay: Duration,
    /// `group.min.session.timeout.ms` / `group.max.session.timeout.ms`.
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    /// `offset.metadata.max.bytes`: longest metadata string of a committed offset.
    pub offset_metadata_max_bytes: usize,
    /// `offsets.retention.minutes`: committed offsets expire this long after their group
    /// became empty.
    pub offsets_retention_minutes: i64,
    /// `offsets.retention.check.interval.ms`.
    pub offsets_retention_check_interval: Duration,
    /// `log.cleaner.backoff.ms`: pause between log-cleaner passes over compacted partitions
    /// (0 disables the background cleaner).
    pub log_cleaner_backoff: Duration,
    /// `producer.id.expiration.ms`: a producer idle this long is forgotten by a partition
    /// (its next batch may then start at any sequence).
    pub producer_id_expiration_ms: i64,
    /// `producer.id.expiration.check.interval.ms`.
    pub producer_id_expiration_check_interval: Duration,
    /// `producer.state.snapshot.interval.ms` (Shale's): how often changed partitions store a
    /// producer-state snapshot, so opening them scans only what came after (0: never).
    pub producer_state_snapshot_interval: Duration,
    /// `producer.state.checkpoint.interval.ms` (Shale's): how often the node writes one
    /// object with the producer state of every partition it has open, so a new owner after
    /// a crash scans about one interval of batches (0: never; see `txn::checkpoint`).
    pub producer_state_checkpoint_interval: Duration,
    /// `transaction.max.timeout.ms`: the longest `transaction.timeout.ms` a producer may ask
    /// for (INVALID_TRANSACTION_TIMEOUT beyond).
    pub transaction_max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`: a transactional id unused this long is forgotten.
    pub transactional_id_expiration_ms: i64,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`.
    pub transaction_timeout_check_interval: Duration,
    /// `transaction.state.log.num.partitions`: partitions of `__transaction_state`.
    pub transaction_state_num_partitions: i32,
    /// `broker.heartbeat.interval.ms`: how often the broker heartbeats the metadata leader.
    pub broker_heartbeat_interval: Duration,
    /// `broker.session.timeout.ms`: the broker stops serving what it owns when no heartbeat
    /// was answered for this long minus two intervals (the controller fences it after this).
    pub broker_session_timeout: Duration,
    /// `authorizer.class.name` set: ACLs are enforced with these settings (`super.users`,
    /// `allow.everyone.if.no.acl.found`). `None`: every request is allowed, as in Kafka
    /// without an authorizer.
    pub authorizer: Option<shale_security::acl::AuthorizerConfig>,
    /// The audit log (`audit.enable`); disabled records nothing.
    pub auditor: shale_security::audit::Auditor,
    /// `quota.window.num`, `quota.window.size.seconds`: how client quota rates are measured.
    pub quota: shale_security::quota::QuotaConfig,
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
            fetch_max_bytes: 55 * 1024 * 1024,
            retention_check_interval: Duration::from_secs(300),
            topic_defaults: Default::default(),
            offsets_topic_num_partitions: 50,
            group_initial_rebalance_delay: Duration::from_millis(3000),
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            offset_metadata_max_bytes: 4096,
            offsets_retention_minutes: 10080,
            offsets_retention_check_interval: Duration::from_secs(600),
            log_cleaner_backoff: Duration::from_millis(15_000),
            producer_id_expiration_ms: 86_400_000,
            producer_id_expiration_check_interval: Duration::from_millis(600_000),
            producer_state_snapshot_interval: Duration::from_millis(60_000),
            producer_state_checkpoint_interval: Duration::from_millis(1_000),
            transaction_max_timeout_ms: 900_000,
            transactional_id_expiration_ms: 604_800_000,
            transaction_timeout_check_interval: Duration::from_millis(10_000),
            transaction_state_num_partitions: 50,
            broker_heartbeat_interval: Duration::from_millis(250),
            broker_session_timeout: Duration::from_millis(1500),
            authorizer: None,
            auditor: shale_security::audit::Auditor::disabled(),
            quota: Default::default(),
        }
    }
}
