//! The group coordinator (Kafka's classic protocol) and committed offsets.
//!
//! A group belongs to partition `abs(javaHashCode(group_id)) % N` of `__consumer_offsets`;
//! this node coordinates the groups of the partitions it owns. Group metadata and offsets are
//! records of that partition's stream (Kafka's own formats, see `records`); when the node
//! takes a partition it reads it start to end and rebuilds its groups (last value per key
//! wins, tombstones delete), so correctness never depends on log compaction.
//!
//! Every group has its own lock and its own timer task: groups never wait on each other.

mod broker_glue;
pub(crate) mod group;
pub(crate) mod records;
#[cfg(test)]
mod tests;
mod txn_offsets;

pub(crate) use txn_offsets::TxnCommitRequest;

pub(crate) use broker_glue::{OFFSETS_TOPIC, read_stored, start};

use bytes::Bytes;
use futures::future::BoxFuture;
use group::{
    Effect, Group, GroupState, JoinOutcome, JoinRequest, JoinStart, Now, SyncOutcome, SyncStart,
};
use kafka_protocol::error::ResponseError;
use parking_lot::{Mutex, RwLock};
use records::{GroupValue, OffsetValue, RecordKey};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

/// Resolves once an append is durable (or failed).
pub(crate) type Durable = BoxFuture<'static, Result<(), ResponseError>>;

/// Where a coordinator partition's records go: the partition's stream in the broker, memory
/// in tests.
pub(crate) trait PartitionLog: Send + Sync {
    /// False once another node opened the partition's stream after this log was loaded:
    /// the state built from it is stale and the partition must be loaded again.
    fn is_current(&self) -> bool {
        true
    }

    /// Appends the records as one batch; returns the offset of the first one.
    fn append(&self, records: Vec<(Bytes, Option<Bytes>)>)
    -> Result<(u64, Durable), ResponseError>;

    /// Appends the records as one transactional batch of `producer_id`/`epoch` (a
    /// TxnOffsetCommit), refused for a fenced epoch.
    fn append_txn(
        &self,
        records: Vec<(Bytes, Option<Bytes>)>,
        producer_id: i64,
        epoch: i16,
    ) -> Result<(u64, Durable), ResponseError>;

    /// Appends a transaction marker of `producer_id`/`epoch`.
    fn append_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        marker: shale_protocol::control::EndTxnMarker,
    ) -> Result<(u64, Durable), ResponseError>;
}

/// Coordinator settings (Kafka names in `BrokerConfig`).
#[derive(Debug, Clone)]
pub(crate) struct GroupConfig {
    pub offsets_partitions: i32,
    pub initial_rebalance_delay: Duration,
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    pub offset_metadata_max_bytes: usize,
    pub offsets_retention_ms: i64,
    pub retention_check_interval: Duration,
}

impl GroupConfig {
    pub(crate) fn from_broker(c: &crate::BrokerConfig) -> Self {
        Self {
            offsets_partitions: c.offsets_topic_num_partitions.max(1),
            initial_rebalance_delay: c.group_initial_rebalance_delay,
            min_session_timeout_ms: c.group_min_session_timeout_ms,
            max_session_timeout_ms: c.group_max_session_timeout_ms,
            offset_metadata_max_bytes: c.offset_metadata_max_bytes,
            offsets_retention_ms: c.offsets_retention_minutes.saturating_mul(60_000),
            retention_check_interval: c.offsets_retention_check_interval,
        }
    }
}

enum PartState {
    Loading,
    Loaded(Arc<dyn PartitionLog>),
}

pub(crate) struct GroupHandle {
    pub(crate) group: Mutex<Group>,
    /// Wakes the group's timer task when deadlines may have moved.
    wake: Notify,
    partition: i32,
}

/// One offset to commit.
#[derive(Debug, Clone)]
pub(crate) struct CommitPartition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// An OffsetCommit as the coordinator sees it.
#[derive(Debug, Clone)]
pub(crate) struct CommitRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    /// v2-v4 `retention_time_ms`; -1 = broker default.
    pub retention_ms: i64,
    pub partitions: Vec<CommitPartition>,
    /// What a commit with a generation to an unknown group gets (version dependent).
    pub unknown_group_error: ResponseError,
}

/// DescribeGroups of one group.
pub(crate) struct GroupDescription {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    /// (member id, instance id, client id, client host, metadata, assignment)
    pub members: Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
}

pub(crate) struct GroupCoordinator {
    cfg: GroupConfig,
    partitions: RwLock<HashMap<i32, PartState>>,
    groups: RwLock<HashMap<String, Arc<GroupHandle>>>,
    /// Partitions of `__consumer_offsets` as created (may differ from the config).
    partition_count: AtomicI32,
    /// Offsets committed inside open transactions, by coordinator partition and producer id:
    /// they count once the producer's commit marker is written (see `txn_offsets`).
    txn_offsets: Mutex<HashMap<i32, HashMap<i64, Vec<txn_offsets::PendingOffset>>>>,
    /// The broker's "may serve what it owns" flag (`membership`): while its session is in
    /// doubt or fenced, the coordinator answers NOT_COORDINATOR rather than from a state
    /// another node may be taking over (a stale OffsetFetch, a heartbeat of a group that
    /// rebalanced elsewhere).
    serving: Arc<std::sync::atomic::AtomicBool>,
}

fn now() -> Now {
    Now {
        at: Instant::now(),
        ms: crate::now_ms(),
    }
}

/// Java's `String.hashCode` over UTF-16 code units.
pub(crate) fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// Kafka's `Utils.abs(groupId.hashCode) % partitions`.
pub(crate) fn partition_for(group_id: &str, partitions: i32) -> i32 {
    let h = java_hash(group_id);
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions.max(1)
}

/// Topics of a consumer-protocol subscription (None when it cannot be parsed).
pub(crate) fn subscription_topics(metadata: &[u8]) -> Option<Vec<String>> {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    if metadata.len() < 2 {
        return None;
    }
    let version = i16::from_be_bytes([metadata[0], metadata[1]]).clamp(0, 3);
    // The codec sizes allocations from counts in these client bytes: check them first.
    shale_protocol::guard::check_consumer_subscription(&metadata[2..], version).ok()?;
    let mut buf = Bytes::copy_from_slice(&metadata[2..]);
    // The codec is not trusted with arbitrary client bytes: a panic must stay a parse error.
    let decoded =
        std::panic::catch_unwind(move || ConsumerProtocolSubscription::decode(&mut buf, version))
            .ok()?;
    decoded
        .ok()
        .map(|s| s.topics.iter().map(|t| t.to_string()).collect())
}

impl GroupCoordinator {
    #[cfg(test)]
    pub(crate) fn new(cfg: GroupConfig) -> Arc<Self> {
        Self::with_serving_flag(cfg, Arc::new(std::sync::atomic::AtomicBool::new(true)))
    }

    pub(crate) fn with_serving_flag(
        cfg: GroupConfig,
        serving: Arc<std::sync::atomic::AtomicBool>,
    ) -> Arc<Self> {
        let count = cfg.offsets_partitions;
        Arc::new(Self {
            cfg,
            partitions: RwLock::new(HashMap::new()),
            groups: RwLock::new(HashMap::new()),
            partition_count: AtomicI32::new(count),
            txn_offsets: Mutex::new(HashMap::new()),
            serving,
        })
    }

    pub(crate) fn config(&self) -> &GroupConfig {
        &self.cfg
    }

    pub(crate) fn set_partition_count(&self, n: i32) {
        self.partition_count.store(n.max(1), Ordering::Relaxed);
    }

    pub(crate) fn partition_of(&self, group_id: &str) -> i32 {
        partition_for(group_id, self.partition_count.load(Ordering::Relaxed))
    }

    fn partition_log(&self, p: i32) -> Result<Arc<dyn PartitionLog>, ResponseError> {
        if !self.serving.load(Ordering::Acquire) {
            return Err(ResponseError::NotCoordinator);
        }
        match self.partitions.read().get(&p) {
            Some(PartState::Loaded(log)) => Ok(log.clone()),
            Some(PartState::Loading) => Err(ResponseError::CoordinatorLoadInProgress),
            None => Err(ResponseError::NotCoordinator),
        }
    }

    /// Whether this node coordinates `group_id` now: NOT_COORDINATOR (the client looks the
    /// coordinator up again) or COORDINATOR_LOAD_IN_PROGRESS otherwise.
    pub(crate) fn coordinates(&self, group_id: &str) -> Result<(), ResponseError> {
        self.partition_log(self.partition_of(group_id)).map(|_| ())
    }

    /// The group if this node coordinates it (None: no such group yet).
    pub(crate) fn lookup(&self, group_id: &str) -> Result<Option<Arc<GroupHandle>>, ResponseError> {
        self.partition_log(self.partition_of(group_id))?;
        Ok(self.groups.read().get(group_id).cloned())
    }

    fn get_or_create(self: &Arc<Self>, group_id: &str) -> Result<Arc<GroupHandle>, ResponseError> {
        let p = self.partition_of(group_id);
        let log = self.partition_log(p)?;
        if let Some(h) = self.groups.read().get(group_id) {
            return Ok(h.clone());
        }
        let mut groups = self.groups.write();
        if let Some(h) = groups.get(group_id) {
            return Ok(h.clone());
        }
        let handle = Arc::new(GroupHandle {
            group: Mutex::new(Group::new(
                group_id.to_string(),
                log,
                &self.cfg,
                crate::now_ms(),
            )),
            wake: Notify::new(),
            partition: p,
        });
        groups.insert(group_id.to_string(), handle.clone());
        drop(groups);
        self.spawn_timer(&handle);
        Ok(handle)
    }

    /// One timer task per group: sleeps until the group's earliest deadline (or a wake-up
    /// after a change) and runs what expired. Ends when the group is dead.
    fn spawn_timer(self: &Arc<Self>, handle: &Arc<GroupHandle>) {
        let coord = Arc::downgrade(self);
        let handle = handle.clone();
        tokio::spawn(async move {
            loop {
                let next = {
                    let g = handle.group.lock();
                    if g.state == GroupState::Dead {
                        return;
                    }
                    g.next_deadline()
                };
                match next {
                    Some(t) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(t) => {}
                            _ = handle.wake.notified() => continue,
                        }
                    }
                    None => {
                        handle.wake.notified().await;
                        continue;
                    }
                }
                let Some(coord) = coord.upgrade() else { return };
                let effects = {
                    let mut g = handle.group.lock();
                    g.on_timer(now());
                    g.take_effects()
                };
                coord.run_effects(&handle, effects);
            }
        });
    }

    /// After a change under the lock: re-arm the timer and finish stores in the background.
    fn finish(self: &Arc<Self>, handle: &Arc<GroupHandle>, effects: Vec<Effect>) {
        handle.wake.notify_one();
        self.run_effects(handle, effects);
    }

    fn run_effects(self: &Arc<Self>, handle: &Arc<GroupHandle>, effects: Vec<Effect>) {
        for effect in effects {
            let coord = self.clone();
            let handle = handle.clone();
            tokio::spawn(async move {
                match effect {
                    Effect::Store { durable, what } => {
                        if let Err(e) = durable.await {
                            tracing::warn!(error = ?e, what, "storing group metadata failed");
                        }
                    }
                    Effect::Assignment {
                        durable,
                        generation,
                        assignments,
                    } => {
                        let result = durable.await;
                        let effects = {
                            let mut g = handle.group.lock();
                            g.on_assignment_stored(generation, assignments, result, now());
                            g.take_effects()
                        };
                        coord.finish(&handle, effects);
                    }
                    Effect::StaticRejoin {
                        durable,
                        generation,
                        member_id,
                        leader,
                        skip_assignment,
                    } => {
                        let result = durable.await;
                        let effects = {
                            let mut g = handle.group.lock();
                            g.on_static_rejoin_stored(
                                generation,
                                &member_id,
                                leader,
                                skip_assignment,
                                result,
                            );
                            g.take_effects()
                        };
                        coord.finish(&handle, effects);
                    }
                }
            });
        }
    }

    // ---- group membership ----

    pub(crate) async fn join(self: &Arc<Self>, req: JoinRequest) -> JoinOutcome {
        if req.group_id.is_empty() {
            return JoinOutcome::error(&req.member_id, ResponseError::InvalidGroupId);
        }
        if req.session_timeout_ms < self.cfg.min_session_timeout_ms
            || req.session_timeout_ms > self.cfg.max_session_timeout_ms
        {
            return JoinOutcome::error(&req.member_id, ResponseError::InvalidSessionTimeout);
        }
        let handle = if req.member_id.is_empty() {
            self.get_or_create(&req.group_id)
        } else {
            match self.lookup(&req.group_id) {
                Ok(Some(h)) => Ok(h),
                Ok(None) => Err(ResponseError::UnknownMemberId),
                Err(e) => Err(e),
            }
        };
        let handle = match handle {
            Ok(h) => h,
            Err(e) => return JoinOutcome::error(&req.member_id, e),
        };
        let member_id = req.member_id.clone();
        let prefix = req
            .instance_id
            .clone()
            .unwrap_or_else(|| req.client_id.clone());
        let (start, effects) = {
            let mut g = handle.group.lock();
            let start = g.join(req, || format!("{prefix}-{}", uuid::Uuid::new_v4()), now());
            (start, g.take_effects())
        };
        self.finish(&handle, effects);
        match start {
            JoinStart::Reply(r) => r,
            JoinStart::Wait(rx) => rx
                .await
                .unwrap_or_else(|_| JoinOutcome::error(&member_id, ResponseError::NotCoordinator)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn sync(
        self: &Arc<Self>,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncOutcome {
        if group_id.is_empty() {
            return SyncOutcome::error(ResponseError::InvalidGroupId);
        }
        let handle = match self.lookup(group_id) {
            Ok(Some(h)) => h,
            Ok(None) => return SyncOutcome::error(ResponseError::UnknownMemberId),
            Err(e) => return SyncOutcome::error(e),
        };
        let (start, effects) = {
            let mut g = handle.group.lock();
            let s = g.sync(
                member_id,
                instance_id,
                generation,
                protocol_type,
                protocol_name,
                assignments,
                now(),
            );
            (s, g.take_effects())
        };
        self.finish(&handle, effects);
        match start {
            SyncStart::Reply(r) => r,
            SyncStart::Wait(rx) => rx
                .await
                .unwrap_or_else(|_| SyncOutcome::error(ResponseError::NotCoordinator)),
        }
    }

    pub(crate) fn heartbeat(
        self: &Arc<Self>,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        if group_id.is_empty() {
            return ResponseError::InvalidGroupId.code();
        }
        let handle = match self.lookup(group_id) {
            Ok(Some(h)) => h,
            Ok(None) => return ResponseError::UnknownMemberId.code(),
            Err(e) => return e.code(),
        };
        let (code, effects) = {
            let mut g = handle.group.lock();
            let c = g.heartbeat(member_id, instance_id, generation, now());
            (c, g.take_effects())
        };
        self.finish(&handle, effects);
        code
    }

    /// LeaveGroup: per-member error codes, or a group-level error.
    pub(crate) fn leave(
        self: &Arc<Self>,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<i16>, ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let Some(handle) = self.lookup(group_id)? else {
            return Ok(vec![ResponseError::UnknownMemberId.code(); members.len()]);
        };
        let (codes, effects) = {
            let mut g = handle.group.lock();
            if g.state == GroupState::Dead {
                return Err(ResponseError::CoordinatorNotAvailable);
            }
            let t = now();
            let codes = members
                .iter()
                .map(|(m, i)| g.leave(m, i.as_deref(), t))
                .collect();
            (codes, g.take_effects())
        };
        self.finish(&handle, effects);
        Ok(codes)
    }

    // ---- offsets ----

    /// OffsetCommit; answers once the records are durable. Per-partition error codes.
    #[cfg(test)]
    pub(crate) async fn commit(self: &Arc<Self>, req: CommitRequest) -> Vec<i16> {
        self.commit_start(req).finish().await
    }

    /// Validates an OffsetCommit and appends its records, without waiting: called in request
    /// order on a connection, so pipelined commits of one group land in the log in that order
    /// (the later commit wins, as in Kafka). [`CommitPending::finish`] waits for durability.
    pub(crate) fn commit_start(self: &Arc<Self>, req: CommitRequest) -> CommitPending {
        let all = |e: ResponseError| CommitPending::Done(vec![e.code(); req.partitions.len()]);
        let handle = match self.lookup(&req.group_id) {
            Ok(Some(h)) => h,
            Ok(None) if req.generation < 0 => match self.get_or_create(&req.group_id) {
                Ok(h) => h,
                Err(e) => return all(e),
            },
            Ok(None) => return all(req.unknown_group_error),
            Err(e) => return all(e),
        };
        let now_ms = crate::now_ms();
        let expire = if req.retention_ms >= 0 {
            now_ms.saturating_add(req.retention_ms)
        } else {
            -1
        };
        let (codes, values) = self.commit_values(&req.partitions, now_ms, expire);
        let mut records = Vec::with_capacity(values.len());
        let mut written = Vec::with_capacity(values.len());
        for (i, value) in values {
            let p = &req.partitions[i];
            let key = RecordKey::Offset {
                group: req.group_id.clone(),
                topic: p.topic.clone(),
                partition: p.partition,
            };
            records.push((key, Some(value.clone())));
            written.push((i, p.topic.clone(), p.partition, value));
        }
        if records.is_empty() {
            return CommitPending::Done(codes);
        }
        let appended = {
            let mut g = handle.group.lock();
            match g.validate_commit(&req.member_id, req.instance_id.as_deref(), req.generation) {
                Err(e) => Err(e),
                Ok(()) => {
                    g.commit_heartbeat(&req.member_id, now());
                    g.append_offsets(records)
                }
            }
        };
        handle.wake.notify_one();
        CommitPending::Appended {
            handle,
            group_id: req.group_id,
            codes,
            written,
            appended,
        }
    }

    /// The offsets of a commit (OffsetCommit or TxnOffsetCommit) as stored, by index in
    /// `partitions`, and per-partition codes: OFFSET_METADATA_TOO_LARGE for metadata over
    /// `offset.metadata.max.bytes`, 0 otherwise.
    fn commit_values(
        &self,
        partitions: &[CommitPartition],
        now_ms: i64,
        expire_timestamp: i64,
    ) -> (Vec<i16>, Vec<(usize, OffsetValue)>) {
        let mut codes = vec![0i16; partitions.len()];
        let mut values = Vec::with_capacity(partitions.len());
        for (i, p) in partitions.iter().enumerate() {
            let metadata = p.metadata.clone().unwrap_or_default();
            if metadata.len() > self.cfg.offset_metadata_max_bytes {
                codes[i] = ResponseError::OffsetMetadataTooLarge.code();
                continue;
            }
            values.push((
                i,
                OffsetValue {
                    offset: p.offset,
                    leader_epoch: p.leader_epoch,
                    metadata,
                    commit_timestamp: now_ms,
                    expire_timestamp,
                },
            ));
        }
        (codes, values)
    }

    /// Whether the coordinator would take a commit from this member at this generation
    /// (`txn`: a TxnOffsetCommit's KIP-447 checks): the replay gate leaves the commits it
    /// would refuse to it, so a stale member gets ILLEGAL_GENERATION / UNKNOWN_MEMBER_ID (and
    /// rejoins), not an authorization error.
    pub(crate) fn would_accept_commit(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        txn: bool,
    ) -> bool {
        match self.lookup(group_id) {
            Ok(Some(h)) => {
                let g = h.group.lock();
                if txn {
                    g.validate_txn_commit(member_id, instance_id, generation)
                        .is_ok()
                } else {
                    g.validate_commit(member_id, instance_id, generation)
                        .is_ok()
                }
            }
            // No group: only a commit without a generation creates one.
            Ok(None) => generation < 0,
            Err(_) => false,
        }
    }

    /// Committed offsets of a group: every partition when `topics` is None.
    #[allow(clippy::type_complexity)]
    pub(crate) fn fetch_offsets(
        &self,
        group_id: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<Vec<(String, Vec<(i32, Option<OffsetValue>)>)>, ResponseError> {
        let handle = self.lookup(group_id)?;
        let g = handle.as_ref().map(|h| h.group.lock());
        let offsets = g.as_ref().map(|g| &g.offsets);
        Ok(match topics {
            Some(topics) => topics
                .into_iter()
                .map(|(t, parts)| {
                    let found = parts
                        .into_iter()
                        .map(|p| {
                            let v = offsets
                                .and_then(|o| o.get(&(t.clone(), p)))
                                .map(|e| e.value.clone());
                            (p, v)
                        })
                        .collect();
                    (t, found)
                })
                .collect(),
            None => {
                let mut by_topic: std::collections::BTreeMap<
                    String,
                    Vec<(i32, Option<OffsetValue>)>,
                > = Default::default();
                for ((t, p), e) in offsets.into_iter().flatten() {
                    by_topic
                        .entry(t.clone())
                        .or_default()
                        .push((*p, Some(e.value.clone())));
                }
                by_topic
                    .into_iter()
                    .map(|(t, mut v)| {
                        v.sort_by_key(|(p, _)| *p);
                        (t, v)
                    })
                    .collect()
            }
        })
    }

    /// OffsetDelete: per-partition codes, or a group-level error.
    #[allow(clippy::type_complexity)]
    pub(crate) async fn delete_offsets(
        self: &Arc<Self>,
        group_id: &str,
        topics: Vec<(String, Vec<i32>)>,
    ) -> Result<Vec<(String, Vec<(i32, i16)>)>, ResponseError> {
        let Some(handle) = self.lookup(group_id)? else {
            return Err(ResponseError::GroupIdNotFound);
        };
        let mut result = Vec::new();
        let appended = {
            let mut g = handle.group.lock();
            match g.state {
                GroupState::Dead => return Err(ResponseError::GroupIdNotFound),
                GroupState::Empty => {}
                _ if g.protocol_type.as_deref() == Some("consumer") => {}
                _ => return Err(ResponseError::NonEmptyGroup),
            }
            let mut tombstones = Vec::new();
            for (topic, parts) in topics {
                let subscribed = g.state != GroupState::Empty
                    && g.subscribed_topics
                        .as_ref()
                        .is_none_or(|s| s.contains(&topic));
                let codes = parts
                    .into_iter()
                    .map(|p| {
                        if subscribed {
                            (p, ResponseError::GroupSubscribedToTopic.code())
                        } else {
                            if g.offsets.contains_key(&(topic.clone(), p)) {
                                tombstones.push((
                                    RecordKey::Offset {
                                        group: group_id.to_string(),
                                        topic: topic.clone(),
                                        partition: p,
                                    },
                                    None,
                                ));
                            }
                            (p, 0)
                        }
                    })
                    .collect();
                result.push((topic, codes));
            }
            if tombstones.is_empty() {
                return Ok(result);
            }
            let keys: Vec<(String, i32)> = tombstones
                .iter()
                .filter_map(|(k, _)| match k {
                    RecordKey::Offset {
                        topic, partition, ..
                    } => Some((topic.clone(), *partition)),
                    RecordKey::Group { .. } => None,
                })
                .collect();
            let appended = g.append_offsets(tombstones)?;
            // Removed at once (as Kafka does) so a fetch right after the answer sees it.
            for (t, p) in keys {
                g.apply_offset(t, p, None, appended.0);
            }
            appended
        };
        appended.1.await?;
        Ok(result)
    }

    // ---- administration ----

    /// ListGroups; errors when some coordinator partition is still loading.
    pub(crate) fn list_groups(&self) -> Result<Vec<(String, String, &'static str)>, ResponseError> {
        if self
            .partitions
            .read()
            .values()
            .any(|p| matches!(p, PartState::Loading))
        {
            return Err(ResponseError::CoordinatorLoadInProgress);
        }
        let handles: Vec<Arc<GroupHandle>> = self.groups.read().values().cloned().collect();
        let mut out: Vec<_> = handles
            .iter()
            .filter_map(|h| {
                let g = h.group.lock();
                (g.state != GroupState::Dead).then(|| {
                    (
                        g.id.clone(),
                        g.protocol_type.clone().unwrap_or_default(),
                        g.state.name(),
                    )
                })
            })
            .collect();
        out.sort();
        Ok(out)
    }

    pub(crate) fn describe(&self, group_id: &str) -> Result<GroupDescription, ResponseError> {
        let Some(handle) = self.lookup(group_id)? else {
            return Ok(GroupDescription {
                state: GroupState::Dead.name(),
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            });
        };
        let g = handle.group.lock();
        let stable = g.state == GroupState::Stable;
        let protocol = g.protocol_name.clone().unwrap_or_default();
        Ok(GroupDescription {
            state: g.state.name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            // Kafka reports the protocol and member bytes only for stable groups.
            protocol: if stable {
                protocol.clone()
            } else {
                String::new()
            },
            members: g
                .members
                .values()
                .map(|m| {
                    let (meta, asg) = if stable {
                        let meta = m
                            .protocols
                            .iter()
                            .find(|(n, _)| *n == protocol)
                            .map(|(_, b)| b.clone())
                            .unwrap_or_default();
                        (meta, m.assignment.clone())
                    } else {
                        (Bytes::new(), Bytes::new())
                    };
                    (
                        m.id.clone(),
                        m.instance_id.clone(),
                        m.client_id.clone(),
                        m.client_host.clone(),
                        meta,
                        asg,
                    )
                })
                .collect(),
        })
    }

    pub(crate) async fn delete_group(self: &Arc<Self>, group_id: &str) -> i16 {
        let handle = match self.lookup(group_id) {
            Ok(Some(h)) => h,
            Ok(None) => return ResponseError::GroupIdNotFound.code(),
            Err(e) => return e.code(),
        };
        let durable = {
            let mut g = handle.group.lock();
            match g.state {
                GroupState::Dead => return ResponseError::GroupIdNotFound.code(),
                GroupState::Empty => {}
                _ => return ResponseError::NonEmptyGroup.code(),
            }
            match g.delete(now()) {
                Ok(d) => d,
                Err(e) => return e.code(),
            }
        };
        self.remove_handle(group_id, &handle);
        tracing::info!(group = group_id, "group deleted");
        match durable.await {
            Ok(()) => 0,
            Err(e) => e.code(),
        }
    }

    fn remove_handle(&self, group_id: &str, handle: &Arc<GroupHandle>) {
        let mut groups = self.groups.write();
        if groups.get(group_id).is_some_and(|h| Arc::ptr_eq(h, handle)) {
            groups.remove(group_id);
        }
        handle.wake.notify_one();
    }

    /// Drops expired offsets (tombstones) and groups left with nothing.
    pub(crate) async fn expire_offsets(self: &Arc<Self>, now_ms: i64) {
        let handles: Vec<(String, Arc<GroupHandle>)> = self
            .groups
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let t = Now {
            at: Instant::now(),
            ms: now_ms,
        };
        for (id, handle) in handles {
            let durable = {
                let mut g = handle.group.lock();
                if g.state == GroupState::Dead {
                    continue;
                }
                let expired = g.expired_offsets(now_ms, self.cfg.offsets_retention_ms);
                let mut durable = None;
                if !expired.is_empty() {
                    tracing::info!(group = %id, count = expired.len(), "offsets expired");
                    let records = expired
                        .iter()
                        .map(|(topic, partition)| {
                            let key = RecordKey::Offset {
                                group: id.clone(),
                                topic: topic.clone(),
                                partition: *partition,
                            };
                            (key, None)
                        })
                        .collect();
                    match g.append_offsets(records) {
                        Ok((base, d)) => {
                            for (topic, partition) in expired {
                                g.apply_offset(topic, partition, None, base);
                            }
                            durable = Some(d);
                        }
                        Err(e) => {
                            tracing::warn!(group = %id, error = ?e, "cannot write offset tombstones");
                            continue;
                        }
                    }
                }
                if g.is_disposable() {
                    match g.delete(t) {
                        Ok(d) => {
                            tracing::info!(group = %id, "empty group without offsets removed");
                            durable = Some(d);
                            drop(g);
                            self.remove_handle(&id, &handle);
                        }
                        Err(e) => tracing::warn!(group = %id, error = ?e, "cannot remove group"),
                    }
                }
                durable
            };
            if let Some(d) = durable
                && let Err(e) = d.await
            {
                tracing::warn!(group = %id, error = ?e, "offset expiry not durable");
            }
        }
    }

    // ---- coordinator partitions ----

    pub(crate) fn is_tracked(&self, p: i32) -> bool {
        self.partitions.read().contains_key(&p)
    }

    pub(crate) fn tracked_partitions(&self) -> Vec<i32> {
        self.partitions.read().keys().copied().collect()
    }

    /// Loaded partitions whose log is no longer current (see [`PartitionLog::is_current`]).
    pub(crate) fn stale_partitions(&self) -> Vec<i32> {
        self.partitions
            .read()
            .iter()
            .filter(|(_, st)| matches!(st, PartState::Loaded(log) if !log.is_current()))
            .map(|(p, _)| *p)
            .collect()
    }

    /// Group requests of `p` answer COORDINATOR_LOAD_IN_PROGRESS from now on.
    pub(crate) fn mark_loading(&self, p: i32) {
        self.partitions.write().insert(p, PartState::Loading);
    }

    /// Rebuilds the groups of partition `p` from its records (in offset order) and starts
    /// serving them.
    pub(crate) fn load_partition(
        self: &Arc<Self>,
        p: i32,
        log: Arc<dyn PartitionLog>,
        loaded: broker_glue::LoadedRecords,
    ) {
        let t = now();
        let mut offsets: HashMap<RecordKey, (u64, Option<OffsetValue>)> = HashMap::new();
        let mut metadata: HashMap<String, Option<GroupValue>> = HashMap::new();
        let mut skipped = 0usize;
        self.restore_pending_txn_offsets(p, loaded.pending);
        for (offset, key, value) in loaded.records {
            let key = match RecordKey::decode(key) {
                Ok(Some(k)) => k,
                Ok(None) => continue,
                Err(e) => {
                    skipped += 1;
                    tracing::warn!(partition = p, offset, error = %e, "skipping record");
                    continue;
                }
            };
            match &key {
                RecordKey::Offset { .. } => {
                    let v = match value.map(OffsetValue::decode).transpose() {
                        Ok(v) => v,
                        Err(e) => {
                            skipped += 1;
                            tracing::warn!(partition = p, offset, error = %e, "skipping record");
                            continue;
                        }
                    };
                    // A committed transaction's offsets arrive at its marker, after records
                    // written later: the record written last wins, as in Kafka.
                    match offsets.get(&key) {
                        Some((newer, _)) if *newer > offset => {}
                        _ => {
                            offsets.insert(key, (offset, v));
                        }
                    }
                }
                RecordKey::Group { group } => {
                    let v = match value.map(GroupValue::decode).transpose() {
                        Ok(v) => v,
                        Err(e) => {
                            skipped += 1;
                            tracing::warn!(partition = p, offset, error = %e, "skipping record");
                            continue;
                        }
                    };
                    metadata.insert(group.clone(), v);
                }
            }
        }
        let mut built: HashMap<String, Group> = HashMap::new();
        for (group, value) in metadata {
            if let Some(v) = value {
                let mut g = Group::new(group.clone(), log.clone(), &self.cfg, t.ms);
                g.restore(v, t);
                built.insert(group, g);
            }
        }
        for (key, (offset, value)) in offsets {
            let RecordKey::Offset {
                group,
                topic,
                partition,
            } = key
            else {
                continue;
            };
            let Some(value) = value else { continue };
            built
                .entry(group.clone())
                .or_insert_with(|| Group::new(group, log.clone(), &self.cfg, t.ms))
                .apply_offset(topic, partition, Some(value), offset);
        }
        let count = built.len();
        let mut handles = Vec::with_capacity(count);
        {
            let mut groups = self.groups.write();
            for (id, g) in built {
                let h = Arc::new(GroupHandle {
                    group: Mutex::new(g),
                    wake: Notify::new(),
                    partition: p,
                });
                if let Some(old) = groups.insert(id, h.clone()) {
                    old.group.lock().mark_dead(t);
                    old.wake.notify_one();
                }
                handles.push(h);
            }
            self.partitions.write().insert(p, PartState::Loaded(log));
        }
        for h in &handles {
            self.spawn_timer(h);
        }
        // Quiet for empty partitions: a fresh node loads 50 of them.
        if count > 0 || skipped > 0 {
            tracing::info!(
                partition = p,
                groups = count,
                skipped,
                "coordinator partition loaded"
            );
        } else {
            tracing::debug!(partition = p, "coordinator partition loaded (empty)");
        }
    }

    /// This node no longer owns `p`: its groups are dropped (their waiters get NOT_COORDINATOR).
    pub(crate) fn unload_partition(&self, p: i32) {
        self.partitions.write().remove(&p);
        self.txn_offsets.lock().remove(&p);
        self.drop_groups(p);
        tracing::debug!(partition = p, "coordinator partition unloaded");
    }

    /// Drops partition `p`'s groups to load them again, marking it loading in the same step
    /// as the ownership sync checks, so the sync never sees it untracked in between and
    /// starts a second load.
    pub(crate) fn begin_reload(&self, p: i32) {
        self.partitions.write().insert(p, PartState::Loading);
        self.txn_offsets.lock().remove(&p);
        self.drop_groups(p);
    }

    fn drop_groups(&self, p: i32) {
        let t = now();
        let gone: Vec<Arc<GroupHandle>> = {
            let mut groups = self.groups.write();
            let ids: Vec<String> = groups
                .iter()
                .filter(|(_, h)| h.partition == p)
                .map(|(k, _)| k.clone())
                .collect();
            ids.iter().filter_map(|id| groups.remove(id)).collect()
        };
        for h in gone {
            h.group.lock().mark_dead(t);
            h.wake.notify_one();
        }
    }

    /// Stops every group (shutdown).
    pub(crate) fn unload_all(&self) {
        for p in self.tracked_partitions() {
            self.unload_partition(p);
        }
    }
}

/// An OffsetCommit whose records are appended (or rejected), waiting to become durable.
pub(crate) enum CommitPending {
    Done(Vec<i16>),
    Appended {
        handle: Arc<GroupHandle>,
        group_id: String,
        codes: Vec<i16>,
        written: Vec<(usize, String, i32, OffsetValue)>,
        appended: Result<(u64, Durable), ResponseError>,
    },
}

impl CommitPending {
    /// Waits until the commit is durable, then makes it visible to OffsetFetch.
    pub(crate) async fn finish(self) -> Vec<i16> {
        let (handle, group_id, mut codes, written, appended) = match self {
            CommitPending::Done(codes) => return codes,
            CommitPending::Appended {
                handle,
                group_id,
                codes,
                written,
                appended,
            } => (handle, group_id, codes, written, appended),
        };
        let result = match appended {
            Ok((base, durable)) => durable.await.map(|()| base),
            Err(e) => Err(e),
        };
        match result {
            Ok(base) => {
                let mut g = handle.group.lock();
                for (n, (_, topic, partition, value)) in written.into_iter().enumerate() {
                    g.apply_offset(topic, partition, Some(value), base + n as u64);
                }
            }
            Err(e) => {
                tracing::debug!(group = %group_id, error = ?e, "offset commit failed");
                for (i, ..) in &written {
                    codes[*i] = e.code();
                }
            }
        }
        codes
    }
}
