//! Shale's metadata quorum: an openraft replicated state machine.
//!
//! Everything durable that is not record data lives here: cluster id, topics and their
//! configs, partitions (stream id, owner, leader epoch), streams (epoch, start/end offsets)
//! and objects (key, size, ranges). The Raft log and snapshots are on local disk; with one
//! voter (`shale dev`) that is still a real Raft group, so more voters extend it later.
//!
//! Modules: `types` (Raft type config, log commands and responses), `state` (deterministic
//! apply + per-stream range index), `log_store` (segmented, fsynced Raft log and vote),
//! `sm_store` (state machine and snapshot files), `snapshot_format` (the versioned binary
//! encoding of the state in a snapshot), `catalog` (the stream layer's
//! `ObjectCatalog`), `network` (placeholder transport), `fsutil` (atomic files, frames).
//!
//! Data directory: `LOCK` (exclusive while running), `log/` (segments, `vote.json`,
//! `purged.json`), `snapshot/snapshot.bin`.
//!
//! Durability: a write returns after its entry is applied, which requires it to be committed,
//! which (one voter) requires the local log to have fsynced it. Snapshots are written to a
//! temp file, fsynced and renamed before the log below them is purged.

mod catalog;
mod cluster;
mod fsutil;
mod liveness;
mod log_store;
mod network;
mod placement;
mod quorum;
mod rpc;
mod sm_store;

pub use cluster::NodeCallHandler;
pub use liveness::{BrokerStatus, Heartbeats};
pub use rpc::Pooled as PooledConnection;
#[doc(hidden)]
pub use rpc::fuzz_decode as fuzz_rpc_decode;
pub use rpc::take_open as take_open_connection;
pub use types::PartitionMove;
mod snapshot_format;
mod state;
mod types;

use crate::log_store::LogStore;
use crate::network::NetworkFactory;
use crate::sm_store::{Shared, StateMachineStore};
use crate::state::MetaState;
use crate::types::{Command, Response, TypeConfig};
use anyhow::Context;
use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use shale_stream::{ObjectCatalog, ObjectMeta, StreamId, StreamMeta};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Configuration of the metadata node.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    pub node_id: u64,
    /// Directory for the Raft log, vote and snapshots.
    pub data_dir: PathBuf,
    /// Address other nodes reach this node's Raft RPC on (unused with a single voter).
    pub rpc_addr: String,
    /// The voters of the metadata quorum, id to RPC address (Kafka's
    /// `controller.quorum.voters`). Empty: this node is the only voter, as `shale dev` runs.
    /// A fresh quorum is initialized by its lowest voter id; the others wait to be contacted.
    pub voters: BTreeMap<u64, String>,
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

/// A broker's registration with the quorum (Kafka's broker registration and epoch): who is
/// running now, and whether the controller has fenced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    /// Stamps the process's registration: each new process (or re-registration after a
    /// fence) gets a higher one, so a decision about an older one cannot touch it.
    pub epoch: u64,
    /// Random per process start; the same incarnation registering again (a retried
    /// request) keeps its epoch.
    pub incarnation: [u8; 16],
    /// Missed its session: owns nothing, must register again to get partitions.
    pub fenced: bool,
    /// When it was fenced (ms since the epoch, stamped by the controller's command; 0 when
    /// not fenced or fenced by an entry that predates the stamp).
    #[serde(default)]
    pub fenced_at_ms: i64,
}

/// A user's salted SCRAM credential for one mechanism (Kafka's `ScramCredential`): what the
/// server needs to check a proof, never the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredentialMeta {
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
    pub iterations: u32,
}

/// The keys stay out of logs: the stored key allows offline password guessing, the server
/// key impersonating the broker.
impl std::fmt::Debug for ScramCredentialMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredentialMeta")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// One ACL as Kafka's wire carries it (codes of `ResourceType`, `PatternType`,
/// `AclOperation`, `AclPermissionType`); `shale_security::acl` gives the codes meaning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclEntryMeta {
    pub resource_type: i8,
    pub resource_name: String,
    pub pattern_type: i8,
    pub principal: String,
    pub host: String,
    pub operation: i8,
    pub permission: i8,
}

/// One client quota entity (Kafka's `ClientQuotaEntity`): its components as the wire carries
/// them, `(entity type, name)` sorted by type, where a `None` name is the type's default
/// (`<default>` in Kafka's tools). Shale's types are `user` and `client-id`.
pub type QuotaEntityMeta = Vec<(String, Option<String>)>;

/// A quota value. Kafka's are doubles; compared by bit pattern so the state stays `Eq`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QuotaValue(pub f64);

impl PartialEq for QuotaValue {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for QuotaValue {}

/// The quotas set on one entity (AlterClientQuotas), by key (`producer_byte_rate`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientQuotaMeta {
    pub entity: QuotaEntityMeta,
    pub values: BTreeMap<String, QuotaValue>,
}

/// One entity's quota changes: each key set (`Some`) or removed (`None`).
pub type QuotaChange = (QuotaEntityMeta, Vec<(String, Option<QuotaValue>)>);

/// The key of an entity in [`ClusterState::client_quotas`]: its canonical JSON, so the map
/// (and the JSON of the state) has string keys.
pub fn quota_entity_key(entity: &QuotaEntityMeta) -> String {
    serde_json::to_string(entity).unwrap_or_default()
}

/// An object no live range points into any more, waiting to be deleted from the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadObject {
    pub object: ObjectMeta,
    /// When it became dead (ms, stamped by the command that killed it, so replicas agree).
    pub dead_since_ms: i64,
}

/// A map of the replicated state: a persistent B-tree whose clone is O(1) and shares
/// structure; a write copies only the path to the changed entry while the map is shared.
/// Reads look like `BTreeMap`'s (`get`, `iter`, `values`, `range`, ...).
pub type StateMap<K, V> = imbl::OrdMap<K, V>;

/// The replicated state (readable locally on every node).
///
/// Every map is a [`StateMap`], so a consistent copy of the whole state (a snapshot, or
/// [`MetaNode::state`]) costs a few reference-count bumps under the state lock instead of a
/// deep copy of every object: applies are never stalled behind a snapshot.
///
/// `#[serde(default)]` lets snapshots written before a field existed still load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterState {
    pub cluster_id: String,
    pub nodes: StateMap<u64, NodeMeta>,
    pub topics: StateMap<String, TopicMeta>,
    pub streams: StateMap<StreamId, StreamMeta>,
    /// Live objects: at least one range still holds live data.
    pub objects: StateMap<u64, ObjectMeta>,
    /// Objects without live ranges (trimmed, stream deleted, or replaced by compaction).
    pub dead_objects: StateMap<u64, DeadObject>,
    /// Next stream id to allocate (ids start at 1).
    pub next_stream_id: u64,
    /// Next object id `prepare_object` hands out (ids start at 1).
    pub next_object_id: u64,
    /// First producer id not leased to any node yet (ids start at 0, as Kafka's).
    pub next_producer_id: u64,
    /// Brokers registered through [`MetaNode::register_broker`] (nodes registered the older
    /// way, by `TopicCommand::RegisterNode` alone, have none and are never fenced).
    pub brokers: StateMap<u64, BrokerRegistration>,
    /// The last broker epoch handed out.
    pub last_broker_epoch: u64,
    /// SCRAM credentials by user, then by Kafka's mechanism type (1 SHA-256, 2 SHA-512).
    pub scram_credentials: StateMap<String, BTreeMap<i8, ScramCredentialMeta>>,
    /// ACLs by id (ids are never reused).
    pub acls: StateMap<u64, AclEntryMeta>,
    pub next_acl_id: u64,
    /// Client quotas (AlterClientQuotas) by [`quota_entity_key`]; an entity with no value
    /// left is removed.
    pub client_quotas: StateMap<String, ClientQuotaMeta>,
}

/// Who owns the partitions a topic command adds. Decided when the command is applied, on
/// the state it lands in, so every replica computes the same owners.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Placement {
    /// All on the command's `owner` (what commands written before placement existed meant).
    #[default]
    Owner,
    /// Over the live brokers, as Kafka spreads a topic's leaders (`placement` module); on
    /// `owner` while no broker is live.
    Spread,
    /// New partition i on the i-th broker: the first replica of a manual assignment.
    Listed(Vec<u64>),
}

/// Commands that change topics and nodes (the catalog commands are internal).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TopicCommand {
    /// Registers (or updates) a broker node.
    RegisterNode(NodeMeta),
    /// Creates a topic with `partitions` new streams, owned as `placement` says.
    CreateTopic {
        name: String,
        id: [u8; 16],
        partitions: u32,
        configs: BTreeMap<String, String>,
        /// The owner under [`Placement::Owner`], and under `Spread` while no broker is live.
        owner: u64,
        #[serde(default)]
        placement: Placement,
        now_ms: i64,
    },
    /// Deletes a topic and its streams (their objects become dead).
    DeleteTopic { name: String },
    /// Grows a topic to `total` partitions, the new ones owned as `CreateTopic`'s are.
    CreatePartitions {
        name: String,
        total: u32,
        owner: u64,
        #[serde(default)]
        placement: Placement,
    },
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
    /// The write left this node and no answer came back: it may or may not be applied.
    #[error("metadata write outcome unknown: {0}")]
    Indeterminate(String),
}

/// Why a metadata write returned no result. The two cases call for different handling: an
/// `Unavailable` write was not applied and can be retried as it is; an `Indeterminate` one
/// may have been, so only an idempotent write (or one whose effect can be checked, as the
/// WAL checks its commits) may simply be sent again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Not applied: no leader took it in time, or the leader refused it before appending.
    #[error("metadata unavailable: {0}")]
    Unavailable(String),
    /// Sent, answer lost: the leader may have committed it.
    #[error("metadata write outcome unknown: {0}")]
    Indeterminate(String),
}

impl From<WriteError> for MetaError {
    fn from(e: WriteError) -> MetaError {
        match e {
            WriteError::Unavailable(e) => MetaError::Unavailable(e),
            WriteError::Indeterminate(e) => MetaError::Indeterminate(e),
        }
    }
}

/// Tuning of a metadata node; `Default` is the production setting.
#[derive(Debug, Clone)]
pub struct MetaOptions {
    /// Build a snapshot every this many applied log entries (older log is then purged).
    pub snapshot_logs: u64,
    /// Log entries kept behind the snapshot, so a briefly lagging follower catches up from the
    /// log instead of a full snapshot.
    pub keep_logs: u64,
    /// Roll Raft log segment files at this size; purging deletes whole segments.
    pub segment_bytes: u64,
    /// How long `start` waits for leadership and log recovery.
    pub startup_timeout: Duration,
    /// `broker.session.timeout.ms`: a broker whose heartbeats stop for this long is fenced
    /// and its partitions move. 1.5 s (Kafka: 9 s) so a failover fits in 2.5 s: detection,
    /// one controller tick, the commit, and the new owner opening its streams.
    pub session_timeout: Duration,
    /// Mutual TLS for the node-to-node RPC (the CONTROLLER listener mapped to SSL); `None`
    /// is plain TCP.
    pub tls: Option<shale_security::node::NodeTls>,
}

impl Default for MetaOptions {
    fn default() -> Self {
        Self {
            snapshot_logs: 5000,
            keep_logs: 1000,
            segment_bytes: 16 << 20,
            startup_timeout: Duration::from_secs(30),
            session_timeout: Duration::from_millis(1500),
            tls: None,
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unpadded base64url, as Kafka prints cluster ids (22 chars for 16 bytes).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity((bytes.len() * 4).div_ceil(3));
    for chunk in bytes.chunks(3) {
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(chunk[0]) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn new_cluster_id() -> String {
    base64url(uuid::Uuid::new_v4().as_bytes())
}

/// Takes an exclusive lock on the data directory: two processes appending to one Raft log
/// would corrupt it.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow::anyhow!(
            "metadata dir {} is in use by another metadata node",
            dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e).context(format!("lock {}", path.display())))
        }
    }
}

/// A running metadata node.
pub struct MetaNode {
    node_id: u64,
    raft: Raft<TypeConfig, StateMachineStore>,
    shared: Arc<Shared>,
    /// No other voters: writes and reads need no forwarding or barrier.
    single_voter: bool,
    /// How this node reaches each voter (`MetaConfig::voters`), over what the membership
    /// records: see `address_of`.
    addresses: Arc<BTreeMap<u64, String>>,
    /// Object ids leased to this node and not used yet (`LeaseObjectIds`).
    object_ids: parking_lot::Mutex<std::ops::Range<u64>>,
    /// Connections to other nodes for forwarded writes and read barriers, by address.
    peers: parking_lot::Mutex<std::collections::HashMap<(u64, String), Arc<rpc::Peer>>>,
    /// Node-to-node mTLS, when configured.
    tls: Option<shale_security::node::NodeTls>,
    /// What serves node calls, by the broker node id that registered it (one in a
    /// deployment; tests run several brokers on one metadata node).
    node_calls:
        parking_lot::RwLock<std::collections::HashMap<u64, Arc<dyn cluster::NodeCallHandler>>>,
    /// The RPC server task (multi-voter quorums only).
    server: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Broker sessions, while this node leads.
    liveness: parking_lot::Mutex<liveness::Liveness>,
    /// The controller task (see `liveness`).
    controller: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Held until shutdown (or drop), see [`lock_data_dir`].
    dir_lock: parking_lot::Mutex<Option<std::fs::File>>,
}

impl MetaNode {
    /// Starts the node; a fresh data directory initializes a one-voter cluster with a new
    /// cluster id; an existing one restarts from its log and snapshot.
    pub async fn start(config: MetaConfig) -> anyhow::Result<Arc<MetaNode>> {
        Self::start_with(config, MetaOptions::default()).await
    }

    /// [`MetaNode::start`] with explicit tuning. Returns once this node leads and its state
    /// machine has re-applied everything in its log.
    pub async fn start_with(
        config: MetaConfig,
        options: MetaOptions,
    ) -> anyhow::Result<Arc<MetaNode>> {
        Self::start_with_listener(config, options, None).await
    }

    /// [`MetaNode::start_with`] serving Raft RPC on `listener` (tests bind port 0 first, to
    /// know every voter's address); without one, a node with other voters binds `rpc_addr`.
    pub async fn start_with_listener(
        config: MetaConfig,
        options: MetaOptions,
        listener: Option<tokio::net::TcpListener>,
    ) -> anyhow::Result<Arc<MetaNode>> {
        let single_voter = config.voters.is_empty()
            || (config.voters.len() == 1 && config.voters.contains_key(&config.node_id));
        let listener = match listener {
            Some(l) => Some(l),
            None if !single_voter => Some(
                tokio::net::TcpListener::bind(&config.rpc_addr)
                    .await
                    .with_context(|| format!("binding metadata rpc {}", config.rpc_addr))?,
            ),
            None => None,
        };
        let data_dir = &config.data_dir;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("create metadata dir {}", data_dir.display()))?;
        let dir_lock = lock_data_dir(data_dir)?;
        let log_store = LogStore::open(&data_dir.join("log"), options.segment_bytes)
            .with_context(|| format!("open raft log in {}", data_dir.display()))?;
        let shared = Shared::new();
        let sm = StateMachineStore::open(&data_dir.join("snapshot"), Arc::clone(&shared))
            .with_context(|| format!("open metadata snapshots in {}", data_dir.display()))?;

        let raft_config = Config {
            cluster_name: "shale-meta".to_string(),
            // Followers also refuse votes for election_timeout_max after the last heartbeat
            // (openraft's leader lease): a dead leader is replaced 0.5-1 s later.
            heartbeat_interval: 100,
            election_timeout_min: 250,
            election_timeout_max: 500,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(options.snapshot_logs.max(1)),
            max_in_snapshot_log_to_keep: options.keep_logs,
            ..Default::default()
        }
        .validate()
        .context("raft config")?;

        let addresses = Arc::new(config.voters.clone());
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            NetworkFactory {
                node_id: config.node_id,
                addresses: Arc::clone(&addresses),
                tls: options.tls.clone(),
            },
            log_store,
            sm,
        )
        .await
        .map_err(|e| anyhow::anyhow!("start raft: {e}"))?;
        let node = Arc::new(MetaNode {
            node_id: config.node_id,
            raft,
            shared,
            single_voter,
            addresses,
            object_ids: parking_lot::Mutex::new(0..0),
            peers: parking_lot::Mutex::new(Default::default()),
            tls: options.tls.clone(),
            node_calls: parking_lot::RwLock::new(Default::default()),
            server: parking_lot::Mutex::new(None),
            liveness: parking_lot::Mutex::new(liveness::Liveness::new(options.session_timeout)),
            controller: parking_lot::Mutex::new(None),
            dir_lock: parking_lot::Mutex::new(Some(dir_lock)),
        });
        let controller = tokio::spawn(liveness::run(Arc::downgrade(&node)));
        *node.controller.lock() = Some(controller);
        if let Some(listener) = listener {
            let task = tokio::spawn(cluster::serve(listener, Arc::downgrade(&node)));
            *node.server.lock() = Some(task);
        }
        if let Err(e) = node.become_ready(&config, &options).await {
            node.shutdown().await;
            return Err(e);
        }
        Ok(node)
    }

    async fn become_ready(&self, config: &MetaConfig, options: &MetaOptions) -> anyhow::Result<()> {
        let timeout = Some(options.startup_timeout);
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| anyhow::anyhow!("raft: {e}"))?;
        let is_voter = config.voters.is_empty() || config.voters.contains_key(&self.node_id);
        if !is_voter {
            // Outside the voters (process.roles=broker): a learner, added by the leader at
            // its first start; afterwards the stored membership names it.
            if !initialized {
                self.join_as_learner(&config.rpc_addr, options.startup_timeout)
                    .await?;
            }
        } else if !initialized {
            let voters: BTreeMap<u64, BasicNode> = if config.voters.is_empty() {
                BTreeMap::from([(self.node_id, BasicNode::new(&config.rpc_addr))])
            } else {
                config
                    .voters
                    .iter()
                    .map(|(id, addr)| (*id, BasicNode::new(addr)))
                    .collect()
            };
            // The lowest voter id initializes a fresh quorum; the others learn the membership
            // from its first AppendEntries.
            if voters.keys().next() == Some(&self.node_id) {
                self.raft
                    .initialize(voters.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("initialize metadata quorum: {e}"))?;
                tracing::debug!(
                    node_id = self.node_id,
                    voters = voters.len(),
                    "initialized the metadata quorum"
                );
            }
        } else {
            // Fail fast instead of timing out when the dir belongs to another node id.
            let (voters, learners): (Vec<u64>, Vec<u64>) = self
                .raft
                .with_raft_state(|st| {
                    let m = st.membership_state.effective().membership();
                    (m.voter_ids().collect(), m.learner_ids().collect())
                })
                .await
                .map_err(|e| anyhow::anyhow!("raft: {e}"))?;
            // Empty: a voter that heard a vote request before the first membership entry
            // reached it (openraft counts a vote as initialized); it waits like a fresh one.
            // A voter demoted at run time is a learner now, and still a member.
            let member = voters.contains(&self.node_id) || learners.contains(&self.node_id);
            if !voters.is_empty() && !member {
                anyhow::bail!(
                    "node {} is not a member of the metadata quorum stored in {} \
                     (voters {voters:?}, learners {learners:?}): wrong node_id or data_dir?",
                    self.node_id,
                    config.data_dir.display()
                );
            }
        }
        let id = self.node_id;
        if self.single_voter {
            self.raft
                .wait(timeout)
                .metrics(
                    |m| m.state == ServerState::Leader && m.current_leader == Some(id),
                    "metadata node becomes leader",
                )
                .await
                .map_err(|e| anyhow::anyhow!("waiting for metadata leadership: {e}"))?;
        } else {
            self.raft
                .wait(timeout)
                .metrics(
                    |m| m.current_leader.is_some(),
                    "a metadata leader is elected",
                )
                .await
                .map_err(|e| anyhow::anyhow!("waiting for a metadata leader: {e}"))?;
        }
        // Without this, reads right after start could miss entries that are in the log but
        // not yet re-applied on top of the snapshot.
        self.raft
            .wait_for_recovery(timeout)
            .await
            .map_err(|e| anyhow::anyhow!("waiting for metadata recovery: {e}"))?;
        // And with other voters, entries the leader committed that this node has not applied.
        self.read_barrier()
            .await
            .map_err(|e| anyhow::anyhow!("catching up with the metadata leader: {e}"))?;
        if self.read(|s| s.cluster_id.is_empty()) {
            // First writer wins: every voter may propose one; all end with the same.
            let cluster_id = new_cluster_id();
            self.submit(Command::SetClusterId { cluster_id })
                .await
                .map_err(|e| anyhow::anyhow!("store cluster id: {e}"))?;
            // Committed on the leader; the caller reads the id here next.
            self.read_barrier()
                .await
                .map_err(|e| anyhow::anyhow!("reading the cluster id back: {e}"))?;
        }
        // Debug: the binary's start banner says this (with the cluster id) once, for the user.
        tracing::debug!(
            node_id = self.node_id,
            cluster_id = %self.read(|s| s.cluster_id.clone()),
            "metadata node ready"
        );
        Ok(())
    }

    /// The catalog view the stream layer uses.
    pub fn catalog(self: &Arc<Self>) -> Arc<dyn ObjectCatalog> {
        Arc::new(catalog::MetaCatalog {
            node: Arc::clone(self),
        })
    }

    /// Reads the local replica of the state.
    ///
    /// Holds a read lock while `f` runs, which delays applies: keep `f` short and do not call
    /// back into this node (or its catalog) from it. To walk large parts of the state, take
    /// [`MetaNode::state`] instead.
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self.shared.data.read().meta.state)
    }

    /// A consistent copy of the local replica, taken in O(1) (the maps are shared, not
    /// copied): iterate it as long as needed without delaying applies.
    pub fn state(&self) -> ClusterState {
        self.read(ClusterState::clone)
    }

    pub(crate) fn read_meta<R>(&self, f: impl FnOnce(&MetaState) -> R) -> R {
        f(&self.shared.data.read().meta)
    }

    /// Commits a topic/node command through Raft and applies it.
    pub async fn write(&self, cmd: TopicCommand) -> Result<(), MetaError> {
        match self
            .submit(Command::Topic {
                cmd,
                now_ms: now_ms(),
            })
            .await
        {
            Ok(Response::Rejected(e)) => Err(e.into()),
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Leases a block of `count` producer ids to this node: `[start, start + count)`.
    pub async fn allocate_producer_ids(&self, count: u64) -> Result<(i64, u64), MetaError> {
        let node = self.node_id();
        match self
            .submit(Command::AllocateProducerIds { node, count })
            .await
        {
            Ok(Response::ProducerIds { start, count }) => Ok((start, count)),
            Ok(Response::Rejected(e)) => Err(MetaError::Unavailable(e.to_string())),
            Ok(other) => Err(MetaError::Unavailable(format!(
                "unexpected response {other:?}"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies AlterUserScramCredentials' changes (validated by the caller): deletions, then
    /// upsertions, in one entry, so every node sees all of them or none.
    pub async fn alter_scram_credentials(
        &self,
        deletions: Vec<(String, i8)>,
        upsertions: Vec<(String, i8, ScramCredentialMeta)>,
    ) -> Result<(), MetaError> {
        match self
            .submit(Command::AlterScramCredentials {
                deletions,
                upsertions,
            })
            .await
        {
            Ok(Response::Ok) => Ok(()),
            Ok(Response::Rejected(e)) => Err(MetaError::Unavailable(e.to_string())),
            Ok(other) => Err(MetaError::Unavailable(format!(
                "unexpected response {other:?}"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Adds ACLs (validated by the caller); one already present is not added twice.
    pub async fn create_acls(&self, acls: Vec<AclEntryMeta>) -> Result<(), MetaError> {
        self.submit_ok(Command::CreateAcls { acls }).await
    }

    /// Applies AlterClientQuotas' changes (validated by the caller) in one entry: per entity,
    /// each key set to `Some(value)` or removed (`None`).
    pub async fn alter_client_quotas(&self, changes: Vec<QuotaChange>) -> Result<(), MetaError> {
        self.submit_ok(Command::AlterClientQuotas { changes }).await
    }

    /// Removes the ACLs with these ids (those still present).
    pub async fn delete_acls(&self, ids: Vec<u64>) -> Result<(), MetaError> {
        self.submit_ok(Command::DeleteAcls { ids }).await
    }

    async fn submit_ok(&self, cmd: Command) -> Result<(), MetaError> {
        match self.submit(cmd).await {
            Ok(Response::Ok) => Ok(()),
            Ok(Response::Rejected(e)) => Err(MetaError::Unavailable(e.to_string())),
            Ok(other) => Err(MetaError::Unavailable(format!(
                "unexpected response {other:?}"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Bumped after every applied log entry; lets readers wait for metadata changes.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Stops Raft cleanly. Writes fail with `Unavailable` afterwards; the data dir can then be
    /// opened again (also in this process).
    pub async fn shutdown(&self) {
        self.step_down().await;
        if let Some(server) = self.server.lock().take() {
            server.abort();
        }
        if let Some(controller) = self.controller.lock().take() {
            controller.abort();
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "metadata raft shutdown");
        }
        self.dir_lock.lock().take();
    }

    /// A leader that is about to stop hands leadership to the voter most caught up, so the
    /// quorum does not sit out an election timeout (and its followers' lease) with writes
    /// stalled on every node; waits up to a second for someone else to lead. No-op
    /// elsewhere.
    pub async fn step_down(&self) {
        if self.single_voter || !self.raft.is_leader() {
            return;
        }
        let target = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
            m.replication.as_ref().and_then(|r| {
                r.iter()
                    .filter(|(id, _)| **id != self.node_id && voters.contains(id))
                    .max_by_key(|(id, matched)| {
                        (matched.map(|l| l.index()), std::cmp::Reverse(**id))
                    })
                    .map(|(id, _)| *id)
            })
        };
        let Some(to) = target else { return };
        if self.raft.trigger().transfer_leader(to).await.is_err() {
            return;
        }
        let me = self.node_id;
        let moved = self
            .raft
            .wait(Some(Duration::from_secs(1)))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != me),
                "leadership handed over",
            )
            .await;
        match moved {
            Ok(_) => tracing::info!(to, "metadata leadership handed over before stopping"),
            Err(e) => tracing::warn!(to, error = %e, "metadata leadership not handed over"),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Whether this node currently leads the metadata quorum (controller logic runs there).
    pub fn is_leader(&self) -> bool {
        self.raft.is_leader()
    }

    /// Builds a snapshot of everything applied so far and waits until it is on disk (the log
    /// before it is then purged according to [`MetaOptions::keep_logs`]).
    pub async fn trigger_snapshot(&self) -> Result<(), MetaError> {
        let applied = self
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .as_ref()
            .map(|l| l.index);
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| MetaError::Unavailable(e.to_string()))?;
        self.raft
            .wait(Some(Duration::from_secs(60)))
            .metrics(
                move |m| m.snapshot.as_ref().map(|l| l.index) >= applied,
                "metadata snapshot",
            )
            .await
            .map_err(|e| MetaError::Unavailable(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_is_22_chars_of_base64url() {
        let id = new_cluster_id();
        assert_eq!(id.len(), 22);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        // RFC 4648 test vectors, unpadded.
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }
}
