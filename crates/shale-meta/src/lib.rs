//! Shale's metadata quorum: an openraft replicated state machine.
//!
//! Everything durable that is not record data lives here: cluster id, topics and their
//! configs, partitions (stream id, owner, leader epoch), streams (epoch, start/end offsets)
//! and objects (key, size, ranges). The Raft log and snapshots are on local disk; with one
//! voter (`shale dev`) that is still a real Raft group, so more voters extend it later.

use serde::{Deserialize, Serialize};
use shale_stream::{ObjectCatalog, ObjectMeta, StreamId, StreamMeta};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Configuration of the metadata node.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    pub node_id: u64,
    /// Directory for the Raft log, vote and snapshots.
    pub data_dir: PathBuf,
    /// Address other nodes reach this node's Raft RPC on (unused with a single voter).
    pub rpc_addr: String,
}

/// A partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMeta {
    pub stream_id: StreamId,
    /// Node that owns (leads) the partition.
    pub owner: u64,
}

/// A topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    /// Kafka topic id (UUID, 16 bytes).
    pub id: [u8; 16],
    /// Topic-level config overrides (only those set explicitly; defaults come from the broker).
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionMeta>,
    pub created_at_ms: i64,
}

/// A registered broker node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub id: u64,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

/// The replicated state (readable locally on every node).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster_id: String,
    pub nodes: BTreeMap<u64, NodeMeta>,
    pub topics: BTreeMap<String, TopicMeta>,
    pub streams: BTreeMap<StreamId, StreamMeta>,
    pub objects: BTreeMap<u64, ObjectMeta>,
    // the implementation adds what it needs (id counters, dead objects, range index ...)
}

/// Commands that change topics and nodes (the catalog commands are internal).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TopicCommand {
    /// Registers (or updates) a broker node.
    RegisterNode(NodeMeta),
    /// Creates a topic with `partitions` new streams owned by `owner`.
    CreateTopic {
        name: String,
        id: [u8; 16],
        partitions: u32,
        configs: BTreeMap<String, String>,
        owner: u64,
        now_ms: i64,
    },
    /// Deletes a topic and its streams (their objects become dead).
    DeleteTopic { name: String },
    /// Grows a topic to `total` partitions (new streams owned by `owner`).
    CreatePartitions { name: String, total: u32, owner: u64 },
    /// Replaces a topic's config overrides.
    SetTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
}

/// Errors of topic commands, mapped to Kafka error codes by the broker.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
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
    #[error("metadata unavailable: {0}")]
    Unavailable(String),
}

/// A running metadata node.
pub struct MetaNode {
    _private: (),
}

impl MetaNode {
    /// Starts the node; a fresh data directory initializes a one-voter cluster with a new
    /// cluster id; an existing one restarts from its log and snapshot.
    pub async fn start(config: MetaConfig) -> anyhow::Result<Arc<MetaNode>> {
        let _ = config;
        todo!()
    }

    /// The catalog view the stream layer uses.
    pub fn catalog(self: &Arc<Self>) -> Arc<dyn ObjectCatalog> {
        todo!()
    }

    /// Reads the local replica of the state.
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        let _ = f;
        todo!()
    }

    /// Commits a topic/node command through Raft and applies it.
    pub async fn write(&self, cmd: TopicCommand) -> Result<(), MetaError> {
        let _ = cmd;
        todo!()
    }

    /// Bumped after every applied log entry; lets readers wait for metadata changes.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        todo!()
    }

    /// Stops Raft cleanly.
    pub async fn shutdown(&self) {
        todo!()
    }
}
