//! Shale's own description of the request wire schemas it accepts, used by
//! [`crate::guard`] to check a frame before `kafka-protocol` decodes it.
//!
//! The tables follow what `kafka-protocol` 0.18's generated decoders read, field by field
//! (its `messages/*_request.rs`); `tests/schema_roundtrip.rs` checks them against that codec
//! with random valid encodings, so a table that drifts from the codec fails a test.
//!
//! A field is present in a range of versions; nested structs share the message version;
//! flexible versions use compact lengths and end every struct with a tagged-field section.

use kafka_protocol::messages::ApiKey;

/// An inclusive version range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub min: i16,
    pub max: i16,
}

impl Versions {
    pub const ALL: Versions = Versions {
        min: 0,
        max: i16::MAX,
    };
    pub const NONE: Versions = Versions { min: 1, max: 0 };

    pub const fn contains(&self, v: i16) -> bool {
        v >= self.min && v <= self.max
    }
}

/// The wire type of a field.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    Bool,
    I8,
    I16,
    I32,
    I64,
    /// IEEE 754 double, 8 bytes (client quota values).
    F64,
    Uuid,
    /// int16 length (compact: unsigned varint length + 1) then UTF-8.
    Str,
    /// int32 length (compact: unsigned varint length + 1) then bytes.
    Bytes,
    /// Produce's record batches: walked as one length-prefixed blob, like `Bytes`, so the
    /// guard does no per-record work (batches are validated later, by `crate::batch`).
    Records,
    /// int32 count (compact: unsigned varint count + 1) then the elements.
    Array(&'static Ty),
    Struct(&'static [Field]),
}

/// One field of a struct.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub ty: Ty,
    pub versions: Versions,
    pub nullable: Versions,
    /// `Some` for a tagged field (flexible versions only).
    pub tag: Option<u32>,
}

/// A field present in every version of its message, never null, not tagged.
pub const fn f(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        versions: Versions::ALL,
        nullable: Versions::NONE,
        tag: None,
    }
}

impl Field {
    pub const fn since(mut self, min: i16) -> Self {
        self.versions.min = min;
        self
    }
    pub const fn until(mut self, max: i16) -> Self {
        self.versions.max = max;
        self
    }
    pub const fn range(self, min: i16, max: i16) -> Self {
        self.since(min).until(max)
    }
    /// Null is allowed in every version the field is present in.
    pub const fn nullable(mut self) -> Self {
        self.nullable = Versions::ALL;
        self
    }
    pub const fn nullable_since(mut self, min: i16) -> Self {
        self.nullable = Versions { min, max: i16::MAX };
        self
    }
    pub const fn tag(mut self, tag: u32) -> Self {
        self.tag = Some(tag);
        self
    }
    pub const fn present_in(&self, version: i16) -> bool {
        self.versions.contains(version)
    }
    pub const fn nullable_in(&self, version: i16) -> bool {
        self.versions.contains(version) && self.nullable.contains(version)
    }
}

/// The schema of one request body.
#[derive(Debug, Clone, Copy)]
pub struct Message {
    /// Versions this table describes (those of the `kafka-protocol` codec).
    pub versions: Versions,
    /// First flexible version ([`NEVER`] for none).
    pub flexible_since: i16,
    pub fields: &'static [Field],
}

/// `flexible_since` of a message that has no flexible version.
pub const NEVER: i16 = i16::MAX;

impl Message {
    const fn new(min: i16, max: i16, flexible_since: i16, fields: &'static [Field]) -> Self {
        Self {
            versions: Versions { min, max },
            flexible_since,
            fields,
        }
    }
    pub const fn is_flexible(&self, version: i16) -> bool {
        version >= self.flexible_since
    }
}

/// The request schema of `api`, `None` for an API Shale has no table for (the guard
/// refuses those, so an API cannot be served without one). A table alone does not make an
/// API served: the broker dispatches only what [`ADVERTISED`] lists.
pub fn request(api: ApiKey) -> Option<&'static Message> {
    Some(match api {
        ApiKey::Produce => &produce::REQUEST,
        ApiKey::Fetch => &fetch::REQUEST,
        ApiKey::ListOffsets => &list_offsets::REQUEST,
        ApiKey::Metadata => &metadata::REQUEST,
        ApiKey::ApiVersions => &api_versions::REQUEST,
        ApiKey::CreateTopics => &create_topics::REQUEST,
        ApiKey::DeleteTopics => &delete_topics::REQUEST,
        ApiKey::DeleteRecords => &delete_records::REQUEST,
        ApiKey::OffsetForLeaderEpoch => &offset_for_leader_epoch::REQUEST,
        ApiKey::DescribeConfigs => &describe_configs::REQUEST,
        ApiKey::AlterConfigs => &alter_configs::REQUEST,
        ApiKey::CreatePartitions => &create_partitions::REQUEST,
        ApiKey::IncrementalAlterConfigs => &incremental_alter_configs::REQUEST,
        ApiKey::DescribeCluster => &describe_cluster::REQUEST,
        ApiKey::FindCoordinator => &find_coordinator::REQUEST,
        ApiKey::JoinGroup => &join_group::REQUEST,
        ApiKey::SyncGroup => &sync_group::REQUEST,
        ApiKey::Heartbeat => &heartbeat::REQUEST,
        ApiKey::LeaveGroup => &leave_group::REQUEST,
        ApiKey::ListGroups => &list_groups::REQUEST,
        ApiKey::DescribeGroups => &describe_groups::REQUEST,
        ApiKey::DeleteGroups => &delete_groups::REQUEST,
        ApiKey::OffsetCommit => &offset_commit::REQUEST,
        ApiKey::OffsetFetch => &offset_fetch::REQUEST,
        ApiKey::OffsetDelete => &offset_delete::REQUEST,
        // Transactions: tables ahead of the implementation, not in `ADVERTISED` yet.
        ApiKey::InitProducerId => &init_producer_id::REQUEST,
        ApiKey::AddPartitionsToTxn => &add_partitions_to_txn::REQUEST,
        ApiKey::AddOffsetsToTxn => &add_offsets_to_txn::REQUEST,
        ApiKey::EndTxn => &end_txn::REQUEST,
        ApiKey::WriteTxnMarkers => &write_txn_markers::REQUEST,
        ApiKey::TxnOffsetCommit => &txn_offset_commit::REQUEST,
        ApiKey::DescribeProducers => &describe_producers::REQUEST,
        ApiKey::DescribeTransactions => &describe_transactions::REQUEST,
        ApiKey::ListTransactions => &list_transactions::REQUEST,
        ApiKey::SaslHandshake => &sasl_handshake::REQUEST,
        ApiKey::CreateAcls => &create_acls::REQUEST,
        ApiKey::DescribeAcls => &describe_acls::REQUEST,
        ApiKey::DeleteAcls => &delete_acls::REQUEST,
        ApiKey::SaslAuthenticate => &sasl_authenticate::REQUEST,
        ApiKey::DescribeUserScramCredentials => &describe_user_scram_credentials::REQUEST,
        ApiKey::AlterUserScramCredentials => &alter_user_scram_credentials::REQUEST,
        ApiKey::DescribeClientQuotas => &describe_client_quotas::REQUEST,
        ApiKey::AlterClientQuotas => &alter_client_quotas::REQUEST,
        _ => return None,
    })
}

/// The APIs and versions Shale advertises (the broker's ApiVersions answer is built from this
/// list, intersected with what the codec knows). An API is listed only once the broker
/// implements it *and* the guard has its request schema: the schema tests check every entry,
/// so nothing can be advertised that the guard would not check.
pub const ADVERTISED: &[(ApiKey, i16, i16)] = &[
    // v12 is v11 on the wire; it means the client uses transaction version 2 (the broker
    // adds partitions to transactions). v13 names topics by id.
    (ApiKey::Produce, 3, 12),
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
    // Consumer groups (classic protocol). OffsetCommit/OffsetFetch stop at v8: v9 is the
    // KIP-848 flavour (member epochs), which Shale does not implement.
    (ApiKey::FindCoordinator, 0, 5),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::OffsetDelete, 0, 0),
    // Idempotent producers and transactions. InitProducerId stops at v5: the codec lists v6
    // (KIP-939's two-phase commit fields) but cannot decode it.
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::AddPartitionsToTxn, 0, 5),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 5),
    (ApiKey::TxnOffsetCommit, 0, 5),
    // Sent by transaction coordinators to the owners of a transaction's partitions.
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 2),
    // SASL. librdkafka (2.0 at least) takes SASL as supported only if SaslHandshake v0 is
    // listed, then uses v1. A v0 handshake itself (raw SASL tokens after it, no
    // SaslAuthenticate framing, Kafka before 1.0) is answered UNSUPPORTED_VERSION.
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    // ACLs; v0 predates pattern types (KIP-290) and no maintained client sends it.
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    // Client quotas (KIP-546).
    (ApiKey::DescribeClientQuotas, 0, 1),
    (ApiKey::AlterClientQuotas, 0, 1),
];

const BOOL: Ty = Ty::Bool;
const I8: Ty = Ty::I8;
const I16: Ty = Ty::I16;
const I32: Ty = Ty::I32;
const I64: Ty = Ty::I64;
const F64: Ty = Ty::F64;
const UUID: Ty = Ty::Uuid;
const STR: Ty = Ty::Str;
const BYTES: Ty = Ty::Bytes;
const RECORDS: Ty = Ty::Records;

/// Produce request.
pub mod produce {
    use super::*;
    pub static REQUEST: Message = Message::new(3, 13, 9, BODY);
    const BODY: &[Field] = &[
        f("transactional_id", STR).nullable(),
        f("acks", I16),
        f("timeout_ms", I32),
        f("topic_data", Ty::Array(&Ty::Struct(TOPIC_PRODUCE_DATA))),
    ];
    const PARTITION_PRODUCE_DATA: &[Field] = &[f("index", I32), f("records", RECORDS).nullable()];
    const TOPIC_PRODUCE_DATA: &[Field] = &[
        f("name", STR).until(12),
        f("topic_id", UUID).since(13),
        f(
            "partition_data",
            Ty::Array(&Ty::Struct(PARTITION_PRODUCE_DATA)),
        ),
    ];
}

/// Fetch request.
pub mod fetch {
    use super::*;
    pub static REQUEST: Message = Message::new(4, 18, 12, BODY);
    const BODY: &[Field] = &[
        f("replica_id", I32).until(14),
        f("max_wait_ms", I32),
        f("min_bytes", I32),
        f("max_bytes", I32),
        f("isolation_level", I8),
        f("session_id", I32).since(7),
        f("session_epoch", I32).since(7),
        f("topics", Ty::Array(&Ty::Struct(FETCH_TOPIC))),
        f(
            "forgotten_topics_data",
            Ty::Array(&Ty::Struct(FORGOTTEN_TOPIC)),
        )
        .since(7),
        f("rack_id", STR).since(11),
        f("cluster_id", STR).since(12).nullable().tag(0),
        f("replica_state", Ty::Struct(REPLICA_STATE))
            .since(15)
            .tag(1),
    ];
    const FETCH_PARTITION: &[Field] = &[
        f("partition", I32),
        f("current_leader_epoch", I32).since(9),
        f("fetch_offset", I64),
        f("last_fetched_epoch", I32).since(12),
        f("log_start_offset", I64).since(5),
        f("partition_max_bytes", I32),
        f("replica_directory_id", UUID).since(17).tag(0),
        f("high_watermark", I64).since(18).tag(1),
    ];
    const FETCH_TOPIC: &[Field] = &[
        f("topic", STR).until(12),
        f("topic_id", UUID).since(13),
        f("partitions", Ty::Array(&Ty::Struct(FETCH_PARTITION))),
    ];
    const FORGOTTEN_TOPIC: &[Field] = &[
        f("topic", STR).range(7, 12),
        f("topic_id", UUID).since(13),
        f("partitions", Ty::Array(&I32)).since(7),
    ];
    const REPLICA_STATE: &[Field] = &[
        f("replica_id", I32).since(15),
        f("replica_epoch", I64).since(15),
    ];
}

/// ListOffsets request.
pub mod list_offsets {
    use super::*;
    pub static REQUEST: Message = Message::new(1, 10, 6, BODY);
    const BODY: &[Field] = &[
        f("replica_id", I32),
        f("isolation_level", I8).since(2),
        f("topics", Ty::Array(&Ty::Struct(LIST_OFFSETS_TOPIC))),
        f("timeout_ms", I32).since(10),
    ];
    const LIST_OFFSETS_PARTITION: &[Field] = &[
        f("partition_index", I32),
        f("current_leader_epoch", I32).since(4),
        f("timestamp", I64),
    ];
    const LIST_OFFSETS_TOPIC: &[Field] = &[
        f("name", STR),
        f("partitions", Ty::Array(&Ty::Struct(LIST_OFFSETS_PARTITION))),
    ];
}

/// Metadata request.
pub mod metadata {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 13, 9, BODY);
    const BODY: &[Field] = &[
        f("topics", Ty::Array(&Ty::Struct(METADATA_REQUEST_TOPIC))).nullable_since(1),
        f("allow_auto_topic_creation", BOOL).since(4),
        f("include_cluster_authorized_operations", BOOL).range(8, 10),
        f("include_topic_authorized_operations", BOOL).since(8),
    ];
    const METADATA_REQUEST_TOPIC: &[Field] = &[
        f("topic_id", UUID).since(10),
        f("name", STR).nullable_since(10),
    ];
}

/// ApiVersions request.
pub mod api_versions {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 4, 3, BODY);
    const BODY: &[Field] = &[
        f("client_software_name", STR).since(3),
        f("client_software_version", STR).since(3),
    ];
}

/// CreateTopics request.
pub mod create_topics {
    use super::*;
    pub static REQUEST: Message = Message::new(2, 7, 5, BODY);
    const BODY: &[Field] = &[
        f("topics", Ty::Array(&Ty::Struct(CREATABLE_TOPIC))),
        f("timeout_ms", I32),
        f("validate_only", BOOL),
    ];
    const CREATABLE_REPLICA_ASSIGNMENT: &[Field] =
        &[f("partition_index", I32), f("broker_ids", Ty::Array(&I32))];
    const CREATABLE_TOPIC: &[Field] = &[
        f("name", STR),
        f("num_partitions", I32),
        f("replication_factor", I16),
        f(
            "assignments",
            Ty::Array(&Ty::Struct(CREATABLE_REPLICA_ASSIGNMENT)),
        ),
        f("configs", Ty::Array(&Ty::Struct(CREATABLE_TOPIC_CONFIG))),
    ];
    const CREATABLE_TOPIC_CONFIG: &[Field] = &[f("name", STR), f("value", STR).nullable()];
}

/// DeleteTopics request.
pub mod delete_topics {
    use super::*;
    pub static REQUEST: Message = Message::new(1, 6, 4, BODY);
    const BODY: &[Field] = &[
        f("topics", Ty::Array(&Ty::Struct(DELETE_TOPIC_STATE))).since(6),
        f("topic_names", Ty::Array(&STR)).until(5),
        f("timeout_ms", I32),
    ];
    const DELETE_TOPIC_STATE: &[Field] = &[
        f("name", STR).since(6).nullable(),
        f("topic_id", UUID).since(6),
    ];
}

/// DeleteRecords request.
pub mod delete_records {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 2, 2, BODY);
    const BODY: &[Field] = &[
        f("topics", Ty::Array(&Ty::Struct(DELETE_RECORDS_TOPIC))),
        f("timeout_ms", I32),
    ];
    const DELETE_RECORDS_PARTITION: &[Field] = &[f("partition_index", I32), f("offset", I64)];
    const DELETE_RECORDS_TOPIC: &[Field] = &[
        f("name", STR),
        f(
            "partitions",
            Ty::Array(&Ty::Struct(DELETE_RECORDS_PARTITION)),
        ),
    ];
}

/// OffsetForLeaderEpoch request.
pub mod offset_for_leader_epoch {
    use super::*;
    pub static REQUEST: Message = Message::new(2, 4, 4, BODY);
    const BODY: &[Field] = &[
        f("replica_id", I32).since(3),
        f("topics", Ty::Array(&Ty::Struct(OFFSET_FOR_LEADER_TOPIC))),
    ];
    const OFFSET_FOR_LEADER_PARTITION: &[Field] = &[
        f("partition", I32),
        f("current_leader_epoch", I32),
        f("leader_epoch", I32),
    ];
    const OFFSET_FOR_LEADER_TOPIC: &[Field] = &[
        f("topic", STR),
        f(
            "partitions",
            Ty::Array(&Ty::Struct(OFFSET_FOR_LEADER_PARTITION)),
        ),
    ];
}

/// DescribeConfigs request.
pub mod describe_configs {
    use super::*;
    pub static REQUEST: Message = Message::new(1, 4, 4, BODY);
    const BODY: &[Field] = &[
        f(
            "resources",
            Ty::Array(&Ty::Struct(DESCRIBE_CONFIGS_RESOURCE)),
        ),
        f("include_synonyms", BOOL),
        f("include_documentation", BOOL).since(3),
    ];
    const DESCRIBE_CONFIGS_RESOURCE: &[Field] = &[
        f("resource_type", I8),
        f("resource_name", STR),
        f("configuration_keys", Ty::Array(&STR)).nullable(),
    ];
}

/// AlterConfigs request.
pub mod alter_configs {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 2, 2, BODY);
    const BODY: &[Field] = &[
        f("resources", Ty::Array(&Ty::Struct(ALTER_CONFIGS_RESOURCE))),
        f("validate_only", BOOL),
    ];
    const ALTER_CONFIGS_RESOURCE: &[Field] = &[
        f("resource_type", I8),
        f("resource_name", STR),
        f("configs", Ty::Array(&Ty::Struct(ALTERABLE_CONFIG))),
    ];
    const ALTERABLE_CONFIG: &[Field] = &[f("name", STR), f("value", STR).nullable()];
}

/// CreatePartitions request.
pub mod create_partitions {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 3, 2, BODY);
    const BODY: &[Field] = &[
        f("topics", Ty::Array(&Ty::Struct(CREATE_PARTITIONS_TOPIC))),
        f("timeout_ms", I32),
        f("validate_only", BOOL),
    ];
    const CREATE_PARTITIONS_ASSIGNMENT: &[Field] = &[f("broker_ids", Ty::Array(&I32))];
    const CREATE_PARTITIONS_TOPIC: &[Field] = &[
        f("name", STR),
        f("count", I32),
        f(
            "assignments",
            Ty::Array(&Ty::Struct(CREATE_PARTITIONS_ASSIGNMENT)),
        )
        .nullable(),
    ];
}

/// IncrementalAlterConfigs request.
pub mod incremental_alter_configs {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 1, 1, BODY);
    const BODY: &[Field] = &[
        f("resources", Ty::Array(&Ty::Struct(ALTER_CONFIGS_RESOURCE))),
        f("validate_only", BOOL),
    ];
    const ALTER_CONFIGS_RESOURCE: &[Field] = &[
        f("resource_type", I8),
        f("resource_name", STR),
        f("configs", Ty::Array(&Ty::Struct(ALTERABLE_CONFIG))),
    ];
    const ALTERABLE_CONFIG: &[Field] = &[
        f("name", STR),
        f("config_operation", I8),
        f("value", STR).nullable(),
    ];
}

/// DescribeCluster request.
pub mod describe_cluster {
    use super::*;
    // Flexible from v0: the tagged-field section is always there.
    pub static REQUEST: Message = Message::new(0, 2, 0, BODY);
    const BODY: &[Field] = &[
        f("include_cluster_authorized_operations", BOOL),
        f("endpoint_type", I8).since(1),
        f("include_fenced_brokers", BOOL).since(2),
    ];
}

/// FindCoordinator request.
pub mod find_coordinator {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 6, 3, BODY);
    const BODY: &[Field] = &[
        f("key", STR).until(3),
        f("key_type", I8).since(1),
        f("coordinator_keys", Ty::Array(&STR)).since(4),
    ];
}

/// JoinGroup request.
pub mod join_group {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 9, 6, BODY);
    const BODY: &[Field] = &[
        f("group_id", STR),
        f("session_timeout_ms", I32),
        f("rebalance_timeout_ms", I32).since(1),
        f("member_id", STR),
        f("group_instance_id", STR).since(5).nullable(),
        f("protocol_type", STR),
        f(
            "protocols",
            Ty::Array(&Ty::Struct(JOIN_GROUP_REQUEST_PROTOCOL)),
        ),
        f("reason", STR).since(8).nullable(),
    ];
    const JOIN_GROUP_REQUEST_PROTOCOL: &[Field] = &[f("name", STR), f("metadata", BYTES)];
}

/// SyncGroup request.
pub mod sync_group {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 5, 4, BODY);
    const BODY: &[Field] = &[
        f("group_id", STR),
        f("generation_id", I32),
        f("member_id", STR),
        f("group_instance_id", STR).since(3).nullable(),
        f("protocol_type", STR).since(5).nullable(),
        f("protocol_name", STR).since(5).nullable(),
        f(
            "assignments",
            Ty::Array(&Ty::Struct(SYNC_GROUP_REQUEST_ASSIGNMENT)),
        ),
    ];
    const SYNC_GROUP_REQUEST_ASSIGNMENT: &[Field] = &[f("member_id", STR), f("assignment", BYTES)];
}

/// Heartbeat request.
pub mod heartbeat {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 4, 4, BODY);
    const BODY: &[Field] = &[
        f("group_id", STR),
        f("generation_id", I32),
        f("member_id", STR),
        f("group_instance_id", STR).since(3).nullable(),
    ];
}

/// LeaveGroup request.
pub mod leave_group {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 5, 4, BODY);
    const BODY: &[Field] = &[
        f("group_id", STR),
        f("member_id", STR).until(2),
        f("members", Ty::Array(&Ty::Struct(MEMBER_IDENTITY))).since(3),
    ];
    const MEMBER_IDENTITY: &[Field] = &[
        f("member_id", STR).since(3),
        f("group_instance_id", STR).since(3).nullable(),
        f("reason", STR).since(5).nullable(),
    ];
}

/// ListGroups request.
pub mod list_groups {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 5, 3, BODY);
    const BODY: &[Field] = &[
        f("states_filter", Ty::Array(&STR)).since(4),
        f("types_filter", Ty::Array(&STR)).since(5),
    ];
}

/// DescribeGroups request.
pub mod describe_groups {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 6, 5, BODY);
    const BODY: &[Field] = &[
        f("groups", Ty::Array(&STR)),
        f("include_authorized_operations", BOOL).since(3),
    ];
}

/// DeleteGroups request.
pub mod delete_groups {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 2, 2, BODY);
    const BODY: &[Field] = &[f("groups_names", Ty::Array(&STR))];
}

/// OffsetCommit request.
pub mod offset_commit {
    use super::*;
    pub static REQUEST: Message = Message::new(2, 9, 8, BODY);
    const BODY: &[Field] = &[
        f("group_id", STR),
        f("generation_id_or_member_epoch", I32),
        f("member_id", STR),
        f("group_instance_id", STR).since(7).nullable(),
        f("retention_time_ms", I64).until(4),
        f(
            "topics",
            Ty::Array(&Ty::Struct(OFFSET_COMMIT_REQUEST_TOPIC)),
        ),
    ];
    const OFFSET_COMMIT_REQUEST_PARTITION: &[Field] = &[
        f("partition_index", I32),
        f("committed_offset", I64),
        f("committed_leader_epoch", I32).since(6),
        f("committed_metadata", STR).nullable(),
    ];
    const OFFSET_COMMIT_REQUEST_TOPIC: &[Field] = &[
        f("name", STR),
        f(
            "partitions",
            Ty::Array(&Ty::Struct(OFFSET_COMMIT_REQUEST_PARTITION)),
        ),
    ];
}

/// OffsetFetch request.
pub mod offset_fetch {
    use super::*;
    pub static REQUEST: Message = Message::new(1, 9, 6, BODY);
    const BODY: &[Field] = &[
        f("group_id", STR).until(7),
        f("topics", Ty::Array(&Ty::Struct(OFFSET_FETCH_REQUEST_TOPIC)))
            .until(7)
            .nullable_since(2),
        f("groups", Ty::Array(&Ty::Struct(OFFSET_FETCH_REQUEST_GROUP))).since(8),
        f("require_stable", BOOL).since(7),
    ];
    const OFFSET_FETCH_REQUEST_GROUP: &[Field] = &[
        f("group_id", STR).since(8),
        f("member_id", STR).since(9).nullable(),
        f("member_epoch", I32).since(9),
        f(
            "topics",
            Ty::Array(&Ty::Struct(OFFSET_FETCH_REQUEST_TOPICS)),
        )
        .since(8)
        .nullable(),
    ];
    const OFFSET_FETCH_REQUEST_TOPIC: &[Field] = &[
        f("name", STR).until(7),
        f("partition_indexes", Ty::Array(&I32)).until(7),
    ];
    const OFFSET_FETCH_REQUEST_TOPICS: &[Field] = &[
        f("name", STR).since(8),
        f("partition_indexes", Ty::Array(&I32)).since(8),
    ];
}

/// OffsetDelete request.
pub mod offset_delete {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 0, NEVER, BODY);
    const BODY: &[Field] = &[
        f("group_id", STR),
        f(
            "topics",
            Ty::Array(&Ty::Struct(OFFSET_DELETE_REQUEST_TOPIC)),
        ),
    ];
    const OFFSET_DELETE_REQUEST_PARTITION: &[Field] = &[f("partition_index", I32)];
    const OFFSET_DELETE_REQUEST_TOPIC: &[Field] = &[
        f("name", STR),
        f(
            "partitions",
            Ty::Array(&Ty::Struct(OFFSET_DELETE_REQUEST_PARTITION)),
        ),
    ];
}

/// InitProducerId request. `ApiKey::valid_versions()` lists v6, but the 0.18 message codec
/// stops at v5 (it refuses v6 and does not read v6's `enable_2_pc` / `keep_prepared_txn`),
/// so the table does as well.
pub mod init_producer_id {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 5, 2, BODY);
    const BODY: &[Field] = &[
        f("transactional_id", STR).nullable(),
        f("transaction_timeout_ms", I32),
        f("producer_id", I64).since(3),
        f("producer_epoch", I16).since(3),
    ];
}

/// AddPartitionsToTxn request: v4+ batches `transactions` (brokers' `verify_only` checks);
/// v0-3 carry one transaction as top-level fields.
pub mod add_partitions_to_txn {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 5, 3, BODY);
    const BODY: &[Field] = &[
        f(
            "transactions",
            Ty::Array(&Ty::Struct(ADD_PARTITIONS_TO_TXN_TRANSACTION)),
        )
        .since(4),
        f("v3_and_below_transactional_id", STR).until(3),
        f("v3_and_below_producer_id", I64).until(3),
        f("v3_and_below_producer_epoch", I16).until(3),
        f(
            "v3_and_below_topics",
            Ty::Array(&Ty::Struct(ADD_PARTITIONS_TO_TXN_TOPIC)),
        )
        .until(3),
    ];
    const ADD_PARTITIONS_TO_TXN_TOPIC: &[Field] =
        &[f("name", STR), f("partitions", Ty::Array(&I32))];
    const ADD_PARTITIONS_TO_TXN_TRANSACTION: &[Field] = &[
        f("transactional_id", STR).since(4),
        f("producer_id", I64).since(4),
        f("producer_epoch", I16).since(4),
        f("verify_only", BOOL).since(4),
        f(
            "topics",
            Ty::Array(&Ty::Struct(ADD_PARTITIONS_TO_TXN_TOPIC)),
        )
        .since(4),
    ];
}

/// AddOffsetsToTxn request.
pub mod add_offsets_to_txn {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 4, 3, BODY);
    const BODY: &[Field] = &[
        f("transactional_id", STR),
        f("producer_id", I64),
        f("producer_epoch", I16),
        f("group_id", STR),
    ];
}

/// EndTxn request.
pub mod end_txn {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 5, 3, BODY);
    const BODY: &[Field] = &[
        f("transactional_id", STR),
        f("producer_id", I64),
        f("producer_epoch", I16),
        f("committed", BOOL),
    ];
}

/// WriteTxnMarkers request (v0 is gone from the codec; v1 is flexible).
pub mod write_txn_markers {
    use super::*;
    pub static REQUEST: Message = Message::new(1, 1, 1, BODY);
    const BODY: &[Field] = &[f("markers", Ty::Array(&Ty::Struct(WRITABLE_TXN_MARKER)))];
    const WRITABLE_TXN_MARKER: &[Field] = &[
        f("producer_id", I64),
        f("producer_epoch", I16),
        f("transaction_result", BOOL),
        f("topics", Ty::Array(&Ty::Struct(WRITABLE_TXN_MARKER_TOPIC))),
        f("coordinator_epoch", I32),
    ];
    const WRITABLE_TXN_MARKER_TOPIC: &[Field] =
        &[f("name", STR), f("partition_indexes", Ty::Array(&I32))];
}

/// TxnOffsetCommit request.
pub mod txn_offset_commit {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 5, 3, BODY);
    const BODY: &[Field] = &[
        f("transactional_id", STR),
        f("group_id", STR),
        f("producer_id", I64),
        f("producer_epoch", I16),
        f("generation_id", I32).since(3),
        f("member_id", STR).since(3),
        f("group_instance_id", STR).since(3).nullable(),
        f(
            "topics",
            Ty::Array(&Ty::Struct(TXN_OFFSET_COMMIT_REQUEST_TOPIC)),
        ),
    ];
    const TXN_OFFSET_COMMIT_REQUEST_PARTITION: &[Field] = &[
        f("partition_index", I32),
        f("committed_offset", I64),
        f("committed_leader_epoch", I32).since(2),
        f("committed_metadata", STR).nullable(),
    ];
    const TXN_OFFSET_COMMIT_REQUEST_TOPIC: &[Field] = &[
        f("name", STR),
        f(
            "partitions",
            Ty::Array(&Ty::Struct(TXN_OFFSET_COMMIT_REQUEST_PARTITION)),
        ),
    ];
}

/// DescribeProducers request.
pub mod describe_producers {
    use super::*;
    // Flexible from v0.
    pub static REQUEST: Message = Message::new(0, 0, 0, BODY);
    const BODY: &[Field] = &[f("topics", Ty::Array(&Ty::Struct(TOPIC_REQUEST)))];
    const TOPIC_REQUEST: &[Field] = &[f("name", STR), f("partition_indexes", Ty::Array(&I32))];
}

/// DescribeTransactions request.
pub mod describe_transactions {
    use super::*;
    // Flexible from v0.
    pub static REQUEST: Message = Message::new(0, 0, 0, BODY);
    const BODY: &[Field] = &[f("transactional_ids", Ty::Array(&STR))];
}

/// ListTransactions request.
pub mod list_transactions {
    use super::*;
    // Flexible from v0.
    pub static REQUEST: Message = Message::new(0, 2, 0, BODY);
    const BODY: &[Field] = &[
        f("state_filters", Ty::Array(&STR)),
        f("producer_id_filters", Ty::Array(&I64)),
        f("duration_filter", I64).since(1),
        f("transactional_id_pattern", STR).since(2).nullable(),
    ];
}

/// CreateAcls request.
pub mod create_acls {
    use super::*;
    pub static REQUEST: Message = Message::new(1, 3, 2, BODY);
    const BODY: &[Field] = &[f("creations", Ty::Array(&Ty::Struct(CREATION)))];
    const CREATION: &[Field] = &[
        f("resource_type", I8),
        f("resource_name", STR),
        f("resource_pattern_type", I8),
        f("principal", STR),
        f("host", STR),
        f("operation", I8),
        f("permission_type", I8),
    ];
}

/// An ACL binding filter (DescribeAcls' body, each of DeleteAcls' filters).
const ACL_FILTER: &[Field] = &[
    f("resource_type_filter", I8),
    f("resource_name_filter", STR).nullable(),
    f("pattern_type_filter", I8),
    f("principal_filter", STR).nullable(),
    f("host_filter", STR).nullable(),
    f("operation", I8),
    f("permission_type", I8),
];

/// DescribeAcls request.
pub mod describe_acls {
    use super::*;
    pub static REQUEST: Message = Message::new(1, 3, 2, ACL_FILTER);
}

/// DeleteAcls request.
pub mod delete_acls {
    use super::*;
    pub static REQUEST: Message = Message::new(1, 3, 2, BODY);
    const BODY: &[Field] = &[f("filters", Ty::Array(&Ty::Struct(ACL_FILTER)))];
}

/// SaslHandshake request.
pub mod sasl_handshake {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 1, NEVER, BODY);
    const BODY: &[Field] = &[f("mechanism", STR)];
}

/// SaslAuthenticate request.
pub mod sasl_authenticate {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 2, 2, BODY);
    const BODY: &[Field] = &[f("auth_bytes", BYTES)];
}

/// DescribeUserScramCredentials request.
pub mod describe_user_scram_credentials {
    use super::*;
    // Flexible from v0.
    pub static REQUEST: Message = Message::new(0, 0, 0, BODY);
    const BODY: &[Field] = &[f("users", Ty::Array(&Ty::Struct(USER_NAME))).nullable()];
    const USER_NAME: &[Field] = &[f("name", STR)];
}

/// AlterUserScramCredentials request.
pub mod alter_user_scram_credentials {
    use super::*;
    // Flexible from v0.
    pub static REQUEST: Message = Message::new(0, 0, 0, BODY);
    const BODY: &[Field] = &[
        f("deletions", Ty::Array(&Ty::Struct(DELETION))),
        f("upsertions", Ty::Array(&Ty::Struct(UPSERTION))),
    ];
    const DELETION: &[Field] = &[f("name", STR), f("mechanism", I8)];
    const UPSERTION: &[Field] = &[
        f("name", STR),
        f("mechanism", I8),
        f("iterations", I32),
        f("salt", BYTES),
        f("salted_password", BYTES),
    ];
}

/// DescribeClientQuotas request.
pub mod describe_client_quotas {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 1, 1, BODY);
    const BODY: &[Field] = &[
        f("components", Ty::Array(&Ty::Struct(COMPONENT))),
        f("strict", BOOL),
    ];
    const COMPONENT: &[Field] = &[
        f("entity_type", STR),
        f("match_type", I8),
        f("match", STR).nullable(),
    ];
}

/// AlterClientQuotas request.
pub mod alter_client_quotas {
    use super::*;
    pub static REQUEST: Message = Message::new(0, 1, 1, BODY);
    const BODY: &[Field] = &[
        f("entries", Ty::Array(&Ty::Struct(ENTRY))),
        f("validate_only", BOOL),
    ];
    const ENTRY: &[Field] = &[
        f("entity", Ty::Array(&Ty::Struct(ENTITY))),
        f("ops", Ty::Array(&Ty::Struct(OP))),
    ];
    const ENTITY: &[Field] = &[f("entity_type", STR), f("entity_name", STR).nullable()];
    const OP: &[Field] = &[f("key", STR), f("value", F64), f("remove", BOOL)];
}

/// The consumer protocol's subscription, carried as opaque bytes in JoinGroup's protocol
/// metadata (after an int16 version) and decoded by the group coordinator.
pub mod consumer_protocol_subscription {
    use super::*;
    pub static MESSAGE: Message = Message::new(0, 3, NEVER, BODY);
    const BODY: &[Field] = &[
        f("topics", Ty::Array(&STR)),
        f("user_data", BYTES).nullable(),
        f("owned_partitions", Ty::Array(&Ty::Struct(TOPIC_PARTITION))).since(1),
        f("generation_id", I32).since(2),
        f("rack_id", STR).since(3).nullable(),
    ];
    const TOPIC_PARTITION: &[Field] = &[
        f("topic", STR).since(1),
        f("partitions", Ty::Array(&I32)).since(1),
    ];
}
