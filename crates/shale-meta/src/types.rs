//! Raft type configuration and the commands/responses carried in the Raft log.
//!
//! Every command carries all inputs its apply needs (ids from the state, timestamps from the
//! proposer), so applying the same log on any replica yields the same state.

use crate::{MetaError, TopicCommand};
use serde::{Deserialize, Serialize};
use shale_stream::{CatalogError, ObjectId, ObjectMeta, StreamCommit, StreamId, StreamMeta};
use std::fmt;

openraft::declare_raft_types!(
    /// Openraft types of the metadata quorum: node ids are `u64`, nodes carry their RPC address.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
);

pub(crate) type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub(crate) type Vote = openraft::alias::VoteOf<TypeConfig>;
pub(crate) type Entry = openraft::alias::EntryOf<TypeConfig>;
pub(crate) type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub(crate) type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub(crate) type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
/// Snapshot payload: the encoded [`crate::ClusterState`] (see `snapshot_format`: a version
/// byte, protobuf and a checksum; JSON in snapshots from before that format).
pub(crate) type SnapshotData = Vec<u8>;

/// A state machine command (one Raft log entry payload).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Topic and node administration; `now_ms` stamps objects that die by it.
    Topic {
        cmd: TopicCommand,
        now_ms: i64,
    },
    /// Sets the cluster id if none is set yet (first start).
    SetClusterId {
        cluster_id: String,
    },
    PrepareObject,
    OpenStream {
        stream_id: StreamId,
        /// Who opens it. A partition's stream is opened only by its owner at the owner's
        /// current broker epoch. Absent in entries from before ownership checks.
        #[serde(default)]
        claim: Option<shale_stream::OpenClaim>,
    },
    CommitObject {
        object: ObjectMeta,
        streams: Vec<StreamCommit>,
    },
    CompactObjects {
        new_object: Option<ObjectMeta>,
        replaced: Vec<ObjectId>,
        now_ms: i64,
    },
    TrimStream {
        stream_id: StreamId,
        /// The trimming handle's epoch: only the current holder may trim. Absent in entries
        /// from before the check.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
        new_start: u64,
        now_ms: i64,
    },
    DeleteStream {
        stream_id: StreamId,
        now_ms: i64,
    },
    ForgetObjects {
        ids: Vec<ObjectId>,
    },
    /// Log compaction: swaps a stream's live ranges in `[start, end)` for `new_object`.
    /// Appended last so existing log entries keep their encoding.
    ReplaceStreamRanges {
        stream_id: StreamId,
        epoch: u64,
        start: u64,
        end: u64,
        new_object: ObjectMeta,
        now_ms: i64,
    },
    /// Leases the next `count` producer ids to `node` (Kafka's producer-id blocks): the node
    /// hands them to idempotent producers without a Raft write per producer.
    AllocateProducerIds {
        node: u64,
        count: u64,
    },
    /// A broker process announces itself (endpoint and incarnation): answered with its
    /// broker epoch ([`Response::BrokerEpoch`]), and unfenced.
    RegisterBroker {
        node: crate::NodeMeta,
        incarnation: [u8; 16],
    },
    /// The controller fences a broker that missed its session; ignored unless `epoch` is
    /// still the broker's (it may have registered again meanwhile).
    FenceBroker {
        id: u64,
        epoch: u64,
        /// When the controller decided (ms since the epoch), so replicas agree on how long
        /// the broker has been fenced (Metadata keeps listing it briefly; see
        /// [`crate::BrokerRegistration::fenced_at_ms`]). 0 in entries written before it.
        #[serde(default)]
        at_ms: i64,
    },
    /// Ownership moves, each applied only if the partition is still owned by `from`
    /// (compare-and-set, so a stale plan moves nothing).
    MovePartitions {
        moves: Vec<PartitionMove>,
    },
    /// Leases the next `count` object ids to a node, so its WAL objects cost one Raft write
    /// each (the commit), not two.
    LeaseObjectIds {
        count: u64,
    },
    /// SCRAM credential changes (AlterUserScramCredentials): deletions by (user, mechanism
    /// type), then upsertions.
    AlterScramCredentials {
        deletions: Vec<(String, i8)>,
        upsertions: Vec<(String, i8, crate::ScramCredentialMeta)>,
    },
    /// CreateAcls: bindings not present yet get the next ids.
    CreateAcls {
        acls: Vec<crate::AclEntryMeta>,
    },
    /// DeleteAcls: the ids the filters matched when the request was read.
    DeleteAcls {
        ids: Vec<u64>,
    },
    /// AlterClientQuotas: per entity, keys set (`Some`) or removed (`None`).
    AlterClientQuotas {
        changes: Vec<crate::QuotaChange>,
    },
}

/// One partition's new owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMove {
    pub topic: String,
    pub partition: u32,
    pub from: u64,
    pub to: u64,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short on purpose: openraft logs entries, and objects can have thousands of ranges.
        match self {
            Command::Topic { cmd, .. } => match cmd {
                TopicCommand::RegisterNode(n) => write!(f, "RegisterNode({})", n.id),
                TopicCommand::CreateTopic {
                    name, partitions, ..
                } => write!(f, "CreateTopic({name}, {partitions})"),
                TopicCommand::DeleteTopic { name } => write!(f, "DeleteTopic({name})"),
                TopicCommand::CreatePartitions { name, total, .. } => {
                    write!(f, "CreatePartitions({name}, {total})")
                }
                TopicCommand::SetTopicConfigs { name, .. } => write!(f, "SetTopicConfigs({name})"),
            },
            Command::SetClusterId { cluster_id } => write!(f, "SetClusterId({cluster_id})"),
            Command::PrepareObject => write!(f, "PrepareObject"),
            Command::OpenStream { stream_id, .. } => write!(f, "OpenStream({stream_id})"),
            Command::CommitObject { object, .. } => {
                write!(
                    f,
                    "CommitObject({}, {} ranges)",
                    object.id,
                    object.ranges.len()
                )
            }
            Command::CompactObjects {
                new_object,
                replaced,
                ..
            } => write!(
                f,
                "CompactObjects({:?} replaces {} objects)",
                new_object.as_ref().map(|o| o.id),
                replaced.len()
            ),
            Command::TrimStream {
                stream_id,
                new_start,
                ..
            } => write!(f, "TrimStream({stream_id}, {new_start})"),
            Command::DeleteStream { stream_id, .. } => write!(f, "DeleteStream({stream_id})"),
            Command::ForgetObjects { ids } => write!(f, "ForgetObjects({} ids)", ids.len()),
            Command::AllocateProducerIds { node, count } => {
                write!(f, "AllocateProducerIds({count} for node {node})")
            }
            Command::RegisterBroker { node, .. } => write!(f, "RegisterBroker({})", node.id),
            Command::FenceBroker { id, epoch, .. } => write!(f, "FenceBroker({id}, epoch {epoch})"),
            Command::MovePartitions { moves } => write!(f, "MovePartitions({} moves)", moves.len()),
            Command::ReplaceStreamRanges {
                stream_id,
                start,
                end,
                new_object,
                ..
            } => write!(
                f,
                "ReplaceStreamRanges(stream {stream_id} [{start}, {end}) -> object {})",
                new_object.id
            ),
            Command::LeaseObjectIds { count } => write!(f, "LeaseObjectIds({count})"),
            Command::CreateAcls { acls } => write!(f, "CreateAcls({})", acls.len()),
            Command::DeleteAcls { ids } => write!(f, "DeleteAcls({})", ids.len()),
            Command::AlterClientQuotas { changes } => {
                write!(f, "AlterClientQuotas({} entities)", changes.len())
            }
            // Names only: a credential never goes to a log line.
            Command::AlterScramCredentials {
                deletions,
                upsertions,
            } => write!(
                f,
                "AlterScramCredentials({} deletions, {} upsertions)",
                deletions.len(),
                upsertions.len()
            ),
        }
    }
}

/// The result of applying a command, returned to the proposer through `client_write`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Ok,
    ObjectId(ObjectId),
    Stream(StreamMeta),
    /// The command was rejected by validation; the state is unchanged.
    Rejected(ApplyError),
    /// A leased block of producer ids: `[start, start + count)`.
    ProducerIds {
        start: i64,
        count: u64,
    },
    /// The registered broker's epoch.
    BrokerEpoch(u64),
    /// How many partition moves applied.
    Moved(u32),
    /// A leased block of object ids: `[start, start + count)`.
    ObjectIds {
        start: u64,
        count: u64,
    },
}

/// A deterministic rejection by the state machine (serializable, unlike the public errors).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "stream {stream_id} fenced: asked at epoch {epoch} by a handle or owner that is not current (stream epoch {current})"
    )]
    Fenced {
        stream_id: StreamId,
        epoch: u64,
        current: u64,
    },
    #[error("unknown stream {0}")]
    UnknownStream(StreamId),
    #[error(
        "stream {stream_id}: offsets do not line up (a range at {start} where {expected} was expected, or live offsets not covered)"
    )]
    OffsetGap {
        stream_id: StreamId,
        start: u64,
        expected: u64,
    },
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("topic {name} has {current} partitions; cannot go to {requested}")]
    InvalidPartitions {
        name: String,
        current: u32,
        requested: u32,
    },
    /// A malformed request (e.g. reusing a committed object id).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// An open by a node that does not own the partition, or at a stale or fenced
    /// registration.
    #[error(
        "stream {stream_id}: node {holder} (epoch {holder_epoch}) does not own it; node {owner} does"
    )]
    NotOwner {
        stream_id: StreamId,
        holder: u64,
        holder_epoch: u64,
        owner: u64,
    },
}

impl From<CatalogError> for ApplyError {
    /// Rejections computed by the stream layer's shared validation rules.
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Fenced {
                stream_id,
                epoch,
                current,
            } => ApplyError::Fenced {
                stream_id,
                epoch,
                current,
            },
            CatalogError::UnknownStream(id) => ApplyError::UnknownStream(id),
            CatalogError::OffsetGap {
                stream_id,
                start,
                expected,
            } => ApplyError::OffsetGap {
                stream_id,
                start,
                expected,
            },
            CatalogError::Unavailable(m) => ApplyError::Invalid(m),
        }
    }
}

impl From<ApplyError> for CatalogError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Fenced {
                stream_id,
                epoch,
                current,
            } => CatalogError::Fenced {
                stream_id,
                epoch,
                current,
            },
            ApplyError::UnknownStream(id) => CatalogError::UnknownStream(id),
            ApplyError::OffsetGap {
                stream_id,
                start,
                expected,
            } => CatalogError::OffsetGap {
                stream_id,
                start,
                expected,
            },
            // The stream is someone else's: to the stream layer that is being fenced.
            ApplyError::NotOwner { stream_id, .. } => CatalogError::Fenced {
                stream_id,
                epoch: 0,
                current: 0,
            },
            // The catalog error set has no "invalid" variant; these only arise from caller bugs.
            other => CatalogError::Unavailable(other.to_string()),
        }
    }
}

impl From<ApplyError> for MetaError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::TopicExists(n) => MetaError::TopicExists(n),
            ApplyError::UnknownTopic(n) => MetaError::UnknownTopic(n),
            ApplyError::InvalidPartitions {
                name,
                current,
                requested,
            } => MetaError::InvalidPartitions {
                name,
                current,
                requested,
            },
            other => MetaError::Unavailable(other.to_string()),
        }
    }
}
