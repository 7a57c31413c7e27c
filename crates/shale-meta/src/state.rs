//! The replicated state machine logic: deterministic apply of [`Command`]s to a
//! [`ClusterState`], plus a derived per-stream range index for fast local catalog reads.
//!
//! Invariants kept by apply:
//! - `objects` holds only objects with at least one live range; the others are in
//!   `dead_objects` with the (command-carried) time they died.
//! - A range is live when its stream exists, it is non-empty and it ends above the stream's
//!   start offset. Live ranges of one stream never overlap (commits append at the end offset,
//!   compaction must preserve live coverage), so the index can key them by start offset.

use crate::types::{ApplyError, Command, Response};
use crate::{
    ClusterState, DeadObject, PartitionMeta, Placement, StateMap, TopicCommand, TopicMeta,
};
use shale_stream::{
    ObjectId, ObjectMeta, ObjectRange, RangeLocation, StreamCommit, StreamId, StreamMeta,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

/// Where a live range is: the object and the position of the range in `object.ranges`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RangeRef {
    pub object_id: ObjectId,
    pub slot: u32,
}

/// Live ranges per stream keyed by start offset. Derived from `ClusterState`, never persisted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RangeIndex {
    by_stream: HashMap<StreamId, BTreeMap<u64, RangeRef>>,
}

/// The applied state plus its derived index.
#[derive(Debug, Default, Clone)]
pub(crate) struct MetaState {
    pub state: ClusterState,
    pub index: RangeIndex,
}

fn range_live(streams: &StateMap<StreamId, StreamMeta>, r: &ObjectRange) -> bool {
    match streams.get(&r.stream_id) {
        Some(s) => r.end_offset > r.start_offset && r.end_offset > s.start_offset,
        None => false,
    }
}

fn object_live(streams: &StateMap<StreamId, StreamMeta>, o: &ObjectMeta) -> bool {
    o.ranges.iter().any(|r| range_live(streams, r))
}

/// Sorts and merges touching/overlapping intervals.
fn merge_intervals(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

impl RangeIndex {
    fn insert_object(&mut self, streams: &StateMap<StreamId, StreamMeta>, o: &ObjectMeta) {
        for (slot, r) in o.ranges.iter().enumerate() {
            if !range_live(streams, r) {
                continue;
            }
            let rr = RangeRef {
                object_id: o.id,
                slot: slot as u32,
            };
            let prev = self
                .by_stream
                .entry(r.stream_id)
                .or_default()
                .insert(r.start_offset, rr);
            if let Some(prev) = prev {
                // Apply validation makes this impossible; say so loudly if it ever happens.
                tracing::error!(
                    stream_id = r.stream_id,
                    start = r.start_offset,
                    object = o.id,
                    replaced_object = prev.object_id,
                    "range index collision"
                );
            }
        }
    }

    fn remove_object(&mut self, o: &ObjectMeta) {
        for r in &o.ranges {
            if let Some(m) = self.by_stream.get_mut(&r.stream_id) {
                if m.get(&r.start_offset).map(|x| x.object_id) == Some(o.id) {
                    m.remove(&r.start_offset);
                }
                if m.is_empty() {
                    self.by_stream.remove(&r.stream_id);
                }
            }
        }
    }
}

impl MetaState {
    /// Wraps a state (e.g. from a snapshot) and builds its index.
    pub(crate) fn from_state(state: ClusterState) -> Self {
        let mut index = RangeIndex::default();
        for o in state.objects.values() {
            index.insert_object(&state.streams, o);
        }
        MetaState { state, index }
    }

    fn location(&self, rr: &RangeRef) -> Option<RangeLocation> {
        let o = self.state.objects.get(&rr.object_id)?;
        let range = o.ranges.get(rr.slot as usize)?;
        Some(RangeLocation {
            object_id: o.id,
            object_key: o.key.clone(),
            range: range.clone(),
        })
    }

    fn range_of(&self, rr: &RangeRef) -> Option<&ObjectRange> {
        self.state
            .objects
            .get(&rr.object_id)
            .and_then(|o| o.ranges.get(rr.slot as usize))
    }

    /// Live ranges of a stream holding offsets >= `from`, in offset order, at most `limit`.
    pub(crate) fn ranges_from(
        &self,
        stream_id: StreamId,
        from: u64,
        limit: usize,
    ) -> Vec<RangeLocation> {
        let mut out = Vec::new();
        let Some(m) = self.index.by_stream.get(&stream_id) else {
            return out;
        };
        if limit == 0 {
            return out;
        }
        // The range containing `from` starts at or before it (ranges do not overlap).
        if let Some(loc) = m
            .range(..=from)
            .next_back()
            .and_then(|(_, rr)| self.location(rr))
            && loc.range.end_offset > from
        {
            out.push(loc);
        }
        for (_, rr) in m.range((Bound::Excluded(from), Bound::Unbounded)) {
            if out.len() >= limit {
                break;
            }
            if let Some(loc) = self.location(rr) {
                out.push(loc);
            }
        }
        out
    }

    /// Every live range of a stream in offset order.
    pub(crate) fn all_ranges(&self, stream_id: StreamId) -> Vec<RangeLocation> {
        self.index
            .by_stream
            .get(&stream_id)
            .map(|m| m.values().filter_map(|rr| self.location(rr)).collect())
            .unwrap_or_default()
    }

    /// Applies one command. Rejections leave the state untouched.
    pub(crate) fn apply(&mut self, cmd: Command) -> Response {
        let res = match cmd {
            Command::Topic { cmd, now_ms } => self.apply_topic(cmd, now_ms).map(|()| Response::Ok),
            Command::SetClusterId { cluster_id } => {
                // First writer wins so a retried or duplicated first-start write is harmless.
                if self.state.cluster_id.is_empty() {
                    self.state.cluster_id = cluster_id;
                }
                Ok(Response::Ok)
            }
            Command::PrepareObject => {
                let id = self.state.next_object_id.max(1);
                self.state.next_object_id = id + 1;
                Ok(Response::ObjectId(id))
            }
            Command::LeaseObjectIds { count } => {
                let start = self.state.next_object_id.max(1);
                let count = count.clamp(1, 1 << 20);
                self.state.next_object_id = start.saturating_add(count);
                Ok(Response::ObjectIds { start, count })
            }
            Command::OpenStream { stream_id, claim } => self
                .check_claim(stream_id, claim)
                .and_then(|()| self.open_stream(stream_id))
                .map(Response::Stream),
            Command::CommitObject { object, streams } => {
                self.commit_object(object, streams).map(|()| Response::Ok)
            }
            Command::CompactObjects {
                new_object,
                replaced,
                now_ms,
            } => self
                .compact_objects(new_object, replaced, now_ms)
                .map(|()| Response::Ok),
            Command::TrimStream {
                stream_id,
                epoch,
                new_start,
                now_ms,
            } => self
                .trim_stream(stream_id, epoch, new_start, now_ms)
                .map(|()| Response::Ok),
            Command::DeleteStream { stream_id, now_ms } => {
                if self.delete_stream(stream_id, now_ms) {
                    Ok(Response::Ok)
                } else {
                    Err(ApplyError::UnknownStream(stream_id))
                }
            }
            Command::ReplaceStreamRanges {
                stream_id,
                epoch,
                start,
                end,
                new_object,
                now_ms,
            } => self
                .replace_stream_ranges(stream_id, epoch, start, end, new_object, now_ms)
                .map(|()| Response::Ok),
            Command::AllocateProducerIds { node, count } => self.allocate_producer_ids(node, count),
            Command::CreateAcls { acls } => {
                for acl in acls {
                    if !self.state.acls.values().any(|a| *a == acl) {
                        let id = self.state.next_acl_id;
                        self.state.next_acl_id = id + 1;
                        self.state.acls.insert(id, acl);
                    }
                }
                Ok(Response::Ok)
            }
            Command::DeleteAcls { ids } => {
                for id in ids {
                    self.state.acls.remove(&id);
                }
                Ok(Response::Ok)
            }
            Command::AlterClientQuotas { changes } => {
                for (mut entity, ops) in changes {
                    // The proposer sorts and validates; applying the same way whatever it
                    // sent keeps replicas equal and the state loadable.
                    entity.sort();
                    let key = crate::quota_entity_key(&entity);
                    let mut entry = self.state.client_quotas.get(&key).cloned().unwrap_or(
                        crate::ClientQuotaMeta {
                            entity,
                            values: BTreeMap::new(),
                        },
                    );
                    for (k, v) in ops {
                        match v {
                            Some(v) if v.0.is_finite() => entry.values.insert(k, v),
                            Some(_) => None,
                            None => entry.values.remove(&k),
                        };
                    }
                    if entry.values.is_empty() {
                        self.state.client_quotas.remove(&key);
                    } else {
                        self.state.client_quotas.insert(key, entry);
                    }
                }
                Ok(Response::Ok)
            }
            Command::AlterScramCredentials {
                deletions,
                upsertions,
            } => {
                let creds = &mut self.state.scram_credentials;
                for (user, mechanism) in deletions {
                    if let Some(by_mech) = creds.get_mut(&user) {
                        by_mech.remove(&mechanism);
                        if by_mech.is_empty() {
                            creds.remove(&user);
                        }
                    }
                }
                for (user, mechanism, credential) in upsertions {
                    let mut by_mech = creds.get(&user).cloned().unwrap_or_default();
                    by_mech.insert(mechanism, credential);
                    creds.insert(user, by_mech);
                }
                Ok(Response::Ok)
            }
            Command::RegisterBroker { node, incarnation } => Ok(Response::BrokerEpoch(
                self.register_broker(node, incarnation),
            )),
            Command::FenceBroker { id, epoch, at_ms } => {
                if let Some(b) = self.state.brokers.get_mut(&id)
                    && b.epoch == epoch
                    && !b.fenced
                {
                    b.fenced = true;
                    b.fenced_at_ms = at_ms;
                }
                Ok(Response::Ok)
            }
            Command::MovePartitions { moves } => Ok(Response::Moved(self.move_partitions(moves))),
            Command::ForgetObjects { ids } => {
                // Only dead objects can be forgotten: a live id here is a caller bug, ignore it.
                for id in ids {
                    self.state.dead_objects.remove(&id);
                }
                Ok(Response::Ok)
            }
        };
        res.unwrap_or_else(Response::Rejected)
    }

    /// The same process registering again (a retry) keeps its epoch unless it was fenced;
    /// anything else is a new epoch.
    fn register_broker(&mut self, node: crate::NodeMeta, incarnation: [u8; 16]) -> u64 {
        let id = node.id;
        self.state.nodes.insert(id, node);
        if let Some(b) = self.state.brokers.get(&id)
            && b.incarnation == incarnation
            && !b.fenced
        {
            return b.epoch;
        }
        self.state.last_broker_epoch += 1;
        let epoch = self.state.last_broker_epoch;
        self.state.brokers.insert(
            id,
            crate::BrokerRegistration {
                epoch,
                incarnation,
                fenced: false,
                fenced_at_ms: 0,
            },
        );
        epoch
    }

    fn move_partitions(&mut self, moves: Vec<crate::types::PartitionMove>) -> u32 {
        let mut applied = 0;
        for m in moves {
            let Some(t) = self.state.topics.get_mut(&m.topic) else {
                continue;
            };
            let Some(p) = t.partitions.get_mut(m.partition as usize) else {
                continue;
            };
            if p.owner == m.from {
                p.owner = m.to;
                applied += 1;
            }
        }
        applied
    }

    fn apply_topic(&mut self, cmd: TopicCommand, now_ms: i64) -> Result<(), ApplyError> {
        match cmd {
            TopicCommand::RegisterNode(node) => {
                self.state.nodes.insert(node.id, node);
            }
            TopicCommand::CreateTopic {
                name,
                id,
                partitions,
                configs,
                owner,
                placement,
                now_ms: created_at_ms,
            } => {
                if self.state.topics.contains_key(&name) {
                    return Err(ApplyError::TopicExists(name));
                }
                let owners = self.owners(&[], partitions, owner, &placement)?;
                let partitions = owners
                    .into_iter()
                    .map(|owner| PartitionMeta {
                        stream_id: self.alloc_stream(),
                        owner,
                    })
                    .collect();
                self.state.topics.insert(
                    name.clone(),
                    TopicMeta {
                        name,
                        id,
                        configs,
                        partitions,
                        created_at_ms,
                    },
                );
            }
            TopicCommand::DeleteTopic { name } => {
                let Some(topic) = self.state.topics.remove(&name) else {
                    return Err(ApplyError::UnknownTopic(name));
                };
                for p in topic.partitions {
                    self.delete_stream(p.stream_id, now_ms);
                }
            }
            TopicCommand::CreatePartitions {
                name,
                total,
                owner,
                placement,
            } => {
                let Some(existing) = self.state.topics.get(&name).map(|t| t.partitions.clone())
                else {
                    return Err(ApplyError::UnknownTopic(name));
                };
                let current = existing.len() as u32;
                if total <= current {
                    return Err(ApplyError::InvalidPartitions {
                        name,
                        current,
                        requested: total,
                    });
                }
                let new: Vec<PartitionMeta> = self
                    .owners(&existing, total - current, owner, &placement)?
                    .into_iter()
                    .map(|owner| PartitionMeta {
                        stream_id: self.alloc_stream(),
                        owner,
                    })
                    .collect();
                if let Some(t) = self.state.topics.get_mut(&name) {
                    t.partitions.extend(new);
                }
            }
            TopicCommand::SetTopicConfigs { name, configs } => {
                match self.state.topics.get_mut(&name) {
                    Some(t) => t.configs = configs,
                    None => return Err(ApplyError::UnknownTopic(name)),
                }
            }
        }
        Ok(())
    }

    /// Owners for `count` new partitions of a topic that has `existing`.
    fn owners(
        &self,
        existing: &[PartitionMeta],
        count: u32,
        owner: u64,
        placement: &Placement,
    ) -> Result<Vec<u64>, ApplyError> {
        let placer = match placement {
            Placement::Owner => None,
            Placement::Spread => crate::placement::Placer::new(&self.state),
            Placement::Listed(owners) if owners.len() == count as usize => {
                return Ok(owners.clone());
            }
            Placement::Listed(owners) => {
                return Err(ApplyError::Invalid(format!(
                    "{} owners listed for {count} new partitions",
                    owners.len()
                )));
            }
        };
        Ok(match placer {
            Some(mut placer) => {
                let mut load = placer.topic(existing);
                (0..count).map(|_| placer.place(&mut load)).collect()
            }
            None => vec![owner; count as usize],
        })
    }

    /// Leases `[next_producer_id, +count)`. Ids are never handed out twice, whichever node
    /// asked: a producer id names one producer for the whole life of the cluster.
    fn allocate_producer_ids(&mut self, node: u64, count: u64) -> Result<Response, ApplyError> {
        const MAX_BLOCK: u64 = 1 << 20;
        if count == 0 || count > MAX_BLOCK {
            return Err(ApplyError::Invalid(format!(
                "node {node} asked for {count} producer ids (1..={MAX_BLOCK})"
            )));
        }
        let start = self.state.next_producer_id;
        let end = start
            .checked_add(count)
            .filter(|&e| e <= i64::MAX as u64)
            .ok_or_else(|| ApplyError::Invalid("producer ids exhausted".into()))?;
        self.state.next_producer_id = end;
        Ok(Response::ProducerIds {
            start: start as i64,
            count,
        })
    }

    /// Allocates a fresh stream (epoch 0, empty).
    fn alloc_stream(&mut self) -> StreamId {
        let mut id = self.state.next_stream_id.max(1);
        // Streams created by `open_stream` with arbitrary ids are skipped.
        while self.state.streams.contains_key(&id) {
            id += 1;
        }
        self.state.next_stream_id = id + 1;
        self.state.streams.insert(
            id,
            StreamMeta {
                id,
                epoch: 0,
                start_offset: 0,
                end_offset: 0,
            },
        );
        id
    }

    /// A partition's stream opens only for its owner, at the owner's current, unfenced
    /// broker registration (when it has one: nodes registered the older way have none).
    /// Streams of no partition, and opens without a claim, are not checked.
    fn check_claim(
        &self,
        stream_id: StreamId,
        claim: Option<shale_stream::OpenClaim>,
    ) -> Result<(), ApplyError> {
        let Some(claim) = claim else {
            return Ok(());
        };
        // A scan: opens are rare (start, failover, healing), partitions are not indexed.
        let owner = self
            .state
            .topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.stream_id == stream_id)
            .map(|p| p.owner);
        let Some(owner) = owner else {
            return Ok(());
        };
        let registration_ok = self
            .state
            .brokers
            .get(&claim.holder)
            .is_none_or(|b| b.epoch == claim.holder_epoch && !b.fenced);
        if owner == claim.holder && registration_ok {
            Ok(())
        } else {
            Err(ApplyError::NotOwner {
                stream_id,
                holder: claim.holder,
                holder_epoch: claim.holder_epoch,
                owner,
            })
        }
    }

    fn open_stream(&mut self, stream_id: StreamId) -> Result<StreamMeta, ApplyError> {
        // Every id below the counter was handed out by `alloc_stream`; one missing from the
        // map was deleted (its topic is gone), and an open racing the deletion must not bring
        // it back. Opening an id never handed out creates it (stream-layer tests) without
        // moving the counter: `alloc_stream` skips ids in use.
        if stream_id < self.state.next_stream_id && !self.state.streams.contains_key(&stream_id) {
            return Err(ApplyError::UnknownStream(stream_id));
        }
        let s = self.state.streams.entry(stream_id).or_insert(StreamMeta {
            id: stream_id,
            epoch: 0,
            start_offset: 0,
            end_offset: 0,
        });
        s.epoch += 1;
        Ok(s.clone())
    }

    fn object_id_taken(&self, id: ObjectId) -> bool {
        self.state.objects.contains_key(&id) || self.state.dead_objects.contains_key(&id)
    }

    fn note_object_id(&mut self, id: ObjectId) {
        // Ids not handed out by prepare_object must still never be handed out later.
        if id >= self.state.next_object_id {
            self.state.next_object_id = id + 1;
        }
    }

    fn commit_object(
        &mut self,
        object: ObjectMeta,
        commits: Vec<StreamCommit>,
    ) -> Result<(), ApplyError> {
        if self.object_id_taken(object.id) {
            return Err(ApplyError::Invalid(format!(
                "object {} is already committed",
                object.id
            )));
        }
        let epoch_of = |sid: StreamId| commits.iter().find(|c| c.stream_id == sid).map(|c| c.epoch);
        // Validate everything first so a rejection changes nothing.
        let mut ends: BTreeMap<StreamId, u64> = BTreeMap::new();
        for r in &object.ranges {
            let Some(s) = self.state.streams.get(&r.stream_id) else {
                return Err(ApplyError::UnknownStream(r.stream_id));
            };
            match epoch_of(r.stream_id) {
                Some(e) if e == s.epoch => {}
                // A range without an epoch does not prove ownership either.
                e => {
                    return Err(ApplyError::Fenced {
                        stream_id: r.stream_id,
                        epoch: e.unwrap_or(0),
                        current: s.epoch,
                    });
                }
            }
            let expected = ends.get(&r.stream_id).copied().unwrap_or(s.end_offset);
            if r.start_offset != expected || r.end_offset < r.start_offset {
                return Err(ApplyError::OffsetGap {
                    stream_id: r.stream_id,
                    start: r.start_offset,
                    expected,
                });
            }
            ends.insert(r.stream_id, r.end_offset);
        }
        for c in &commits {
            let Some(s) = self.state.streams.get(&c.stream_id) else {
                return Err(ApplyError::UnknownStream(c.stream_id));
            };
            if c.epoch != s.epoch {
                return Err(ApplyError::Fenced {
                    stream_id: c.stream_id,
                    epoch: c.epoch,
                    current: s.epoch,
                });
            }
        }
        for (sid, end) in ends {
            if let Some(s) = self.state.streams.get_mut(&sid) {
                s.end_offset = end;
            }
        }
        self.note_object_id(object.id);
        let dead_since = object.committed_at_ms;
        self.insert_object(object, dead_since);
        Ok(())
    }

    /// Adds an object as live, or straight to the dead list if no range of it is live.
    fn insert_object(&mut self, object: ObjectMeta, dead_since_ms: i64) {
        if object_live(&self.state.streams, &object) {
            self.index.insert_object(&self.state.streams, &object);
            self.state.objects.insert(object.id, object);
        } else {
            self.state.dead_objects.insert(
                object.id,
                DeadObject {
                    object,
                    dead_since_ms,
                },
            );
        }
    }

    /// Moves a live object to the dead list if none of its ranges is live any more.
    fn retire_if_dead(&mut self, id: ObjectId, now_ms: i64) {
        let dead = match self.state.objects.get(&id) {
            Some(o) => !object_live(&self.state.streams, o),
            None => false,
        };
        if !dead {
            return;
        }
        if let Some(o) = self.state.objects.remove(&id) {
            self.index.remove_object(&o);
            self.state.dead_objects.insert(
                id,
                DeadObject {
                    object: o,
                    dead_since_ms: now_ms,
                },
            );
        }
    }

    /// Live offsets of `stream` per stream from `ranges`, merged into disjoint intervals and
    /// clipped at the stream start (offsets below it are deleted anyway).
    fn live_coverage<'a>(
        &self,
        ranges: impl Iterator<Item = &'a ObjectRange>,
    ) -> BTreeMap<StreamId, Vec<(u64, u64)>> {
        let mut cov: BTreeMap<StreamId, Vec<(u64, u64)>> = BTreeMap::new();
        for r in ranges {
            if !range_live(&self.state.streams, r) {
                continue;
            }
            let start = self
                .state
                .streams
                .get(&r.stream_id)
                .map_or(r.start_offset, |s| r.start_offset.max(s.start_offset));
            cov.entry(r.stream_id)
                .or_default()
                .push((start, r.end_offset));
        }
        cov.into_iter()
            .map(|(k, v)| (k, merge_intervals(v)))
            .collect()
    }

    fn compact_objects(
        &mut self,
        new_object: Option<ObjectMeta>,
        replaced: Vec<ObjectId>,
        now_ms: i64,
    ) -> Result<(), ApplyError> {
        if let Some(n) = new_object.as_ref().filter(|n| self.object_id_taken(n.id)) {
            return Err(ApplyError::Invalid(format!(
                "object {} is already committed",
                n.id
            )));
        }
        // Replaced objects that already died (retention raced the compaction) or were forgotten
        // contribute no live data, so they are simply skipped.
        let replaced: BTreeSet<ObjectId> = replaced
            .into_iter()
            .filter(|id| self.state.objects.contains_key(id))
            .collect();

        // The new object's live ranges of one stream must not overlap each other.
        if let Some(n) = &new_object {
            let mut by_stream: BTreeMap<StreamId, Vec<&ObjectRange>> = BTreeMap::new();
            for r in n
                .ranges
                .iter()
                .filter(|r| range_live(&self.state.streams, r))
            {
                by_stream.entry(r.stream_id).or_default().push(r);
            }
            for (sid, mut rs) in by_stream {
                rs.sort_by_key(|r| r.start_offset);
                for w in rs.windows(2) {
                    if w[1].start_offset < w[0].end_offset {
                        return Err(ApplyError::OffsetGap {
                            stream_id: sid,
                            start: w[1].start_offset,
                            expected: w[0].end_offset,
                        });
                    }
                }
            }
        }

        // Live data must be preserved exactly: same live offsets before and after the swap.
        let old_cov = self.live_coverage(
            replaced
                .iter()
                .filter_map(|id| self.state.objects.get(id))
                .flat_map(|o| o.ranges.iter()),
        );
        let new_cov = self.live_coverage(new_object.iter().flat_map(|o| o.ranges.iter()));
        let streams: BTreeSet<StreamId> = old_cov.keys().chain(new_cov.keys()).copied().collect();
        for sid in streams {
            let empty = Vec::new();
            let old = old_cov.get(&sid).unwrap_or(&empty);
            let new = new_cov.get(&sid).unwrap_or(&empty);
            if old != new {
                let i = old
                    .iter()
                    .zip(new.iter())
                    .take_while(|(a, b)| a == b)
                    .count();
                let (start, expected) = match (new.get(i), old.get(i)) {
                    (Some(n), Some(o)) if n.0 == o.0 => (n.1, o.1),
                    (Some(n), Some(o)) => (n.0, o.0),
                    (Some(n), None) => (n.0, old.last().map_or(n.0, |o| o.1)),
                    (None, Some(o)) => (new.last().map_or(o.0, |n| n.1), o.0),
                    (None, None) => (0, 0),
                };
                return Err(ApplyError::OffsetGap {
                    stream_id: sid,
                    start,
                    expected,
                });
            }
        }

        for id in &replaced {
            if let Some(o) = self.state.objects.remove(id) {
                self.index.remove_object(&o);
                self.state.dead_objects.insert(
                    *id,
                    DeadObject {
                        object: o,
                        dead_since_ms: now_ms,
                    },
                );
            }
        }
        if let Some(n) = new_object {
            self.note_object_id(n.id);
            self.insert_object(n, now_ms);
        }
        Ok(())
    }

    fn trim_stream(
        &mut self,
        stream_id: StreamId,
        epoch: Option<u64>,
        new_start: u64,
        now_ms: i64,
    ) -> Result<(), ApplyError> {
        let Some(s) = self.state.streams.get_mut(&stream_id) else {
            return Err(ApplyError::UnknownStream(stream_id));
        };
        if let Some(epoch) = epoch
            && epoch != s.epoch
        {
            return Err(ApplyError::Fenced {
                stream_id,
                epoch,
                current: s.epoch,
            });
        }
        // Never lowers the start, never passes the end: clamp rather than reject.
        let target = new_start.min(s.end_offset);
        if target <= s.start_offset {
            return Ok(());
        }
        s.start_offset = target;

        let mut affected = BTreeSet::new();
        let mut drop_keys = Vec::new();
        if let Some(m) = self.index.by_stream.get(&stream_id) {
            // Ranges are disjoint and sorted, so their ends increase too: stop at the first
            // range still reaching above the new start.
            for (start, rr) in m {
                match self.range_of(rr) {
                    Some(r) if r.end_offset > target => break,
                    _ => {
                        drop_keys.push(*start);
                        affected.insert(rr.object_id);
                    }
                }
            }
        }
        if let Some(m) = self.index.by_stream.get_mut(&stream_id) {
            for k in drop_keys {
                m.remove(&k);
            }
            if m.is_empty() {
                self.index.by_stream.remove(&stream_id);
            }
        }
        for id in affected {
            self.retire_if_dead(id, now_ms);
        }
        Ok(())
    }

    /// Log compaction's swap; the rules are `shale_stream::validate_replace` (shared with the
    /// in-memory catalog). Replaced ranges leave their objects' range lists; objects left
    /// without live ranges die.
    fn replace_stream_ranges(
        &mut self,
        stream_id: StreamId,
        epoch: u64,
        start: u64,
        end: u64,
        new_object: ObjectMeta,
        now_ms: i64,
    ) -> Result<(), ApplyError> {
        if self.object_id_taken(new_object.id) {
            return Err(ApplyError::Invalid(format!(
                "object {} is already committed",
                new_object.id
            )));
        }
        let Some(s) = self.state.streams.get(&stream_id) else {
            return Err(ApplyError::UnknownStream(stream_id));
        };
        // Live ranges overlapping [start, end): the one holding `start` and those after it.
        let mut replaced: Vec<(u64, u64, ObjectId)> = Vec::new();
        if let Some(m) = self.index.by_stream.get(&stream_id).filter(|_| start < end) {
            let first = m.range(..=start).next_back().map_or(start, |(k, _)| *k);
            for (&k, rr) in m.range(first..end) {
                if let Some(r) = self.range_of(rr) {
                    replaced.push((k, r.end_offset, rr.object_id));
                }
            }
        }
        let live: Vec<(u64, u64)> = replaced.iter().map(|&(s, e, _)| (s, e)).collect();
        shale_stream::validate_replace(s, epoch, start, end, &live, &new_object.ranges)?;
        let mut by_object: BTreeMap<ObjectId, BTreeSet<u64>> = BTreeMap::new();
        for (s, _, id) in replaced {
            by_object.entry(id).or_default().insert(s);
        }
        for (id, starts) in by_object {
            let Some(mut o) = self.state.objects.remove(&id) else {
                continue;
            };
            // Slots shift when ranges are removed: re-index the object as a whole.
            self.index.remove_object(&o);
            o.ranges
                .retain(|r| !(r.stream_id == stream_id && starts.contains(&r.start_offset)));
            self.insert_object(o, now_ms);
        }
        self.note_object_id(new_object.id);
        self.insert_object(new_object, now_ms);
        Ok(())
    }

    /// Removes a stream; returns false if it did not exist.
    fn delete_stream(&mut self, stream_id: StreamId, now_ms: i64) -> bool {
        if self.state.streams.remove(&stream_id).is_none() {
            return false;
        }
        let affected: BTreeSet<ObjectId> = self
            .index
            .by_stream
            .remove(&stream_id)
            .map(|m| m.values().map(|rr| rr.object_id).collect())
            .unwrap_or_default();
        for id in affected {
            self.retire_if_dead(id, now_ms);
        }
        true
    }
}
