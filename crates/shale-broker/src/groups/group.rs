//! One classic-protocol group: membership, the rebalance state machine and committed offsets.
//! Follows Kafka's GroupCoordinator/GroupMetadata: the coordinator module holds the lock and
//! the timers; everything here is synchronous and runs under the group's lock.

use super::records::{GroupValue, OffsetValue, RecordKey, StoredMember};
use super::{Durable, GroupConfig, PartitionLog};
use bytes::Bytes;
use indexmap::IndexMap;
use kafka_protocol::error::ResponseError;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

/// How long a new member awaiting its first join may stay without rejoining (Kafka's
/// `GroupCoordinator.NewMemberJoinTimeoutMs`).
const NEW_MEMBER_JOIN_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// Kafka's spelling, used by DescribeGroups and ListGroups.
    pub(crate) fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

fn code(e: ResponseError) -> i16 {
    e.code()
}

/// A JoinGroup answer.
#[derive(Debug, Clone)]
pub(crate) struct JoinOutcome {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub skip_assignment: bool,
    pub member_id: String,
    /// (member id, group instance id, metadata of the selected protocol): leader only.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinOutcome {
    pub(crate) fn error(member_id: &str, e: ResponseError) -> Self {
        Self {
            error: code(e),
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            skip_assignment: false,
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

/// A SyncGroup answer.
#[derive(Debug, Clone)]
pub(crate) struct SyncOutcome {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncOutcome {
    pub(crate) fn error(e: ResponseError) -> Self {
        Self {
            error: code(e),
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// A JoinGroup as the coordinator sees it (decoded and defaulted by the handler).
#[derive(Debug, Clone)]
pub(crate) struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: a first join without member id gets MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
    /// v9+ (KIP-814): a rejoining static leader is told to skip the assignment.
    pub supports_skip_assignment: bool,
}

pub(crate) struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    awaiting_join: Option<oneshot::Sender<JoinOutcome>>,
    awaiting_sync: Option<oneshot::Sender<SyncOutcome>>,
    /// Joined but no generation completed yet: may expire while awaiting its join.
    is_new: bool,
    heartbeat_deadline: Instant,
}

impl Member {
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn matches(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    /// Kafka's `hasSatisfiedHeartbeat`: members in a rebalance are kept alive by it (the
    /// rebalance timeout bounds them), except new members, bounded by the join timeout.
    fn alive(&self, now: Instant) -> bool {
        if !self.is_new && (self.awaiting_join.is_some() || self.awaiting_sync.is_some()) {
            return true;
        }
        now < self.heartbeat_deadline
    }

    fn deadline(&self) -> Option<Instant> {
        if !self.is_new && (self.awaiting_join.is_some() || self.awaiting_sync.is_some()) {
            None
        } else {
            Some(self.heartbeat_deadline)
        }
    }

    fn reply_join(&mut self, outcome: JoinOutcome) {
        if let Some(tx) = self.awaiting_join.take() {
            let _ = tx.send(outcome);
        }
    }

    fn reply_sync(&mut self, outcome: SyncOutcome) {
        if let Some(tx) = self.awaiting_sync.take() {
            let _ = tx.send(outcome);
        }
    }
}

/// The pending join phase of a PreparingRebalance group.
#[derive(Debug, Clone, Copy)]
enum JoinTimer {
    /// `group.initial.rebalance.delay.ms` of an empty group: never completes early.
    Initial {
        deadline: Instant,
        remaining_ms: u64,
    },
    /// Completes as soon as every member rejoined, at the latest at the deadline.
    Normal { deadline: Instant },
}

impl JoinTimer {
    fn deadline(&self) -> Instant {
        match *self {
            JoinTimer::Initial { deadline, .. } | JoinTimer::Normal { deadline } => deadline,
        }
    }
}

/// A committed offset with the position of its record (newer records win).
#[derive(Debug, Clone)]
pub(crate) struct OffsetEntry {
    pub value: OffsetValue,
    pub record_offset: u64,
}

/// Work the coordinator finishes outside the lock once an append is durable.
pub(crate) enum Effect {
    /// Nothing to do afterwards but log a failure.
    Store {
        durable: Durable,
        what: &'static str,
    },
    /// The leader's assignment of `generation` is stored: hand it out.
    Assignment {
        durable: Durable,
        generation: i32,
        assignments: HashMap<String, Bytes>,
    },
    /// A static member rejoined a stable group under `member_id`: answer its join.
    StaticRejoin {
        durable: Durable,
        generation: i32,
        member_id: String,
        leader: String,
        skip_assignment: bool,
    },
}

/// What a SyncGroup turned into.
pub(crate) enum SyncStart {
    Reply(SyncOutcome),
    Wait(oneshot::Receiver<SyncOutcome>),
}

/// What a JoinGroup turned into.
pub(crate) enum JoinStart {
    Reply(JoinOutcome),
    Wait(oneshot::Receiver<JoinOutcome>),
}

pub(crate) struct Group {
    pub id: String,
    pub state: GroupState,
    /// When the group entered its current state (ms since the epoch): offset expiry of
    /// empty groups counts from there.
    pub state_since_ms: i64,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    pub members: IndexMap<String, Member>,
    /// group.instance.id → member id.
    static_members: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, awaiting their join, with expiry.
    pending_members: HashMap<String, Instant>,
    /// Members of the current generation that have not synced yet, and until when.
    pending_sync: HashSet<String>,
    pending_sync_deadline: Option<Instant>,
    new_member_added: bool,
    join_timer: Option<JoinTimer>,
    /// Topics the members subscribe to (consumer protocol only), once known.
    pub subscribed_topics: Option<HashSet<String>>,
    pub offsets: HashMap<(String, i32), OffsetEntry>,
    log: Arc<dyn PartitionLog>,
    effects: Vec<Effect>,
    /// `group.initial.rebalance.delay.ms`.
    initial_delay: Duration,
}

/// Time as the state machine sees it.
#[derive(Clone, Copy)]
pub(crate) struct Now {
    pub at: Instant,
    pub ms: i64,
}

impl Group {
    pub(crate) fn new(
        id: String,
        log: Arc<dyn PartitionLog>,
        cfg: &GroupConfig,
        now_ms: i64,
    ) -> Self {
        Self {
            id,
            state: GroupState::Empty,
            state_since_ms: now_ms,
            protocol_type: None,
            protocol_name: None,
            generation: 0,
            leader: None,
            members: IndexMap::new(),
            static_members: HashMap::new(),
            pending_members: HashMap::new(),
            pending_sync: HashSet::new(),
            pending_sync_deadline: None,
            new_member_added: false,
            join_timer: None,
            subscribed_topics: None,
            offsets: HashMap::new(),
            log,
            effects: Vec::new(),
            initial_delay: cfg.initial_rebalance_delay,
        }
    }

    pub(crate) fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    fn transition(&mut self, state: GroupState, now: Now) {
        tracing::debug!(group = %self.id, from = self.state.name(), to = state.name(), generation = self.generation, "group state");
        self.state = state;
        self.state_since_ms = now.ms;
    }

    fn rebalance_timeout(&self) -> Duration {
        let ms = self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms.max(0))
            .max()
            .unwrap_or(0);
        Duration::from_millis(ms as u64)
    }

    fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        let candidates = self.candidate_protocols();
        protocols.iter().any(|(n, _)| candidates.contains(n))
    }

    /// Protocols every member supports.
    fn candidate_protocols(&self) -> Vec<String> {
        let mut iter = self.members.values();
        let Some(first) = iter.next() else {
            return Vec::new();
        };
        let mut names: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in iter {
            names.retain(|n| m.protocols.iter().any(|(p, _)| p == n));
        }
        names
    }

    /// Each member votes for its most preferred candidate; most votes wins (ties: the first
    /// member's preference order, so the choice is deterministic).
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n)) {
                *votes.entry(n.as_str()).or_default() += 1;
            }
        }
        let mut best: Option<(&str, usize)> = None;
        for c in &candidates {
            let v = votes.get(c.as_str()).copied().unwrap_or(0);
            if best.is_none_or(|(_, b)| v > b) {
                best = Some((c.as_str(), v));
            }
        }
        best.map(|(n, _)| n.to_string())
    }

    fn all_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(|m| m.awaiting_join.is_some())
    }

    /// Checks the member id and instance id of a request against the group (Kafka's
    /// `validateMember` / `isStaticMemberFenced`).
    fn validate_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), ResponseError> {
        if let Some(instance) = instance_id {
            match self.static_members.get(instance) {
                Some(known) if known == member_id => Ok(()),
                Some(_) => Err(ResponseError::FencedInstanceId),
                None => Err(ResponseError::UnknownMemberId),
            }
        } else if self.members.contains_key(member_id) {
            Ok(())
        } else {
            Err(ResponseError::UnknownMemberId)
        }
    }

    fn schedule_heartbeat(&mut self, member_id: &str, now: Now) {
        if let Some(m) = self.members.get_mut(member_id) {
            m.heartbeat_deadline =
                now.at + Duration::from_millis(m.session_timeout_ms.max(0) as u64);
        }
    }

    fn current_members(&self) -> Vec<(String, Option<String>, Bytes)> {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        self.members
            .values()
            .map(|m| (m.id.clone(), m.instance_id.clone(), m.metadata(&protocol)))
            .collect()
    }

    fn join_success(
        &self,
        member_id: &str,
        leader: String,
        members: Vec<(String, Option<String>, Bytes)>,
        skip: bool,
    ) -> JoinOutcome {
        JoinOutcome {
            error: 0,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader,
            skip_assignment: skip,
            member_id: member_id.to_string(),
            members,
        }
    }

    // ---- JoinGroup ----

    pub(crate) fn join(
        &mut self,
        req: JoinRequest,
        new_member_id: impl FnOnce() -> String,
        now: Now,
    ) -> JoinStart {
        if self.state == GroupState::Dead {
            // The group was deleted or unloaded under us; the client looks up the coordinator again.
            return JoinStart::Reply(JoinOutcome::error(
                &req.member_id,
                ResponseError::CoordinatorNotAvailable,
            ));
        }
        if !self.supports_protocols(&req.protocol_type, &req.protocols) {
            return JoinStart::Reply(JoinOutcome::error(
                &req.member_id,
                ResponseError::InconsistentGroupProtocol,
            ));
        }
        if req.member_id.is_empty() {
            let member_id = new_member_id();
            if let Some(instance) = req.instance_id.clone() {
                return self.static_join(req, instance, member_id, now);
            }
            if req.require_known_member_id {
                // KIP-394: the member must come back with this id; it counts as pending until
                // then so a rebalance waits for it.
                let expiry = now.at + Duration::from_millis(req.session_timeout_ms.max(0) as u64);
                self.pending_members.insert(member_id.clone(), expiry);
                return JoinStart::Reply(JoinOutcome::error(
                    &member_id,
                    ResponseError::MemberIdRequired,
                ));
            }
            return JoinStart::Wait(self.add_member_and_rebalance(req, member_id, now));
        }
        if self.pending_members.contains_key(&req.member_id) {
            if req.instance_id.is_some() {
                // Static members never go through MEMBER_ID_REQUIRED.
                return JoinStart::Reply(JoinOutcome::error(
                    &req.member_id,
                    ResponseError::UnknownMemberId,
                ));
            }
            self.pending_members.remove(&req.member_id);
            let id = req.member_id.clone();
            return JoinStart::Wait(self.add_member_and_rebalance(req, id, now));
        }
        if let Err(e) = self.validate_member(&req.member_id, req.instance_id.as_deref()) {
            return JoinStart::Reply(JoinOutcome::error(&req.member_id, e));
        }
        let id = req.member_id.clone();
        match self.state {
            GroupState::PreparingRebalance => {
                JoinStart::Wait(self.update_member_and_rebalance(&id, req, now))
            }
            GroupState::CompletingRebalance => {
                let matches = self
                    .members
                    .get(&id)
                    .is_some_and(|m| m.matches(&req.protocols));
                if matches {
                    // A retry of a join whose answer got lost: same answer again.
                    let is_leader = self.leader.as_deref() == Some(id.as_str());
                    let members = if is_leader {
                        self.current_members()
                    } else {
                        Vec::new()
                    };
                    let leader = self.leader.clone().unwrap_or_default();
                    JoinStart::Reply(self.join_success(&id, leader, members, false))
                } else {
                    JoinStart::Wait(self.update_member_and_rebalance(&id, req, now))
                }
            }
            GroupState::Stable => {
                let is_leader = self.leader.as_deref() == Some(id.as_str());
                let matches = self
                    .members
                    .get(&id)
                    .is_some_and(|m| m.matches(&req.protocols));
                if is_leader || !matches {
                    // The leader rejoining means it wants a new assignment (metadata change).
                    JoinStart::Wait(self.update_member_and_rebalance(&id, req, now))
                } else {
                    self.schedule_heartbeat(&id, now);
                    let leader = self.leader.clone().unwrap_or_default();
                    JoinStart::Reply(self.join_success(&id, leader, Vec::new(), false))
                }
            }
            GroupState::Empty | GroupState::Dead => {
                JoinStart::Reply(JoinOutcome::error(&id, ResponseError::UnknownMemberId))
            }
        }
    }

    fn static_join(
        &mut self,
        req: JoinRequest,
        instance: String,
        new_id: String,
        now: Now,
    ) -> JoinStart {
        let Some(old_id) = self.static_members.get(&instance).cloned() else {
            return JoinStart::Wait(self.add_member_and_rebalance(req, new_id, now));
        };
        // KIP-345: the instance id is known; the new member id replaces the old one and the
        // old one is fenced.
        let previous_leader = self.leader.clone().unwrap_or_default();
        let Some(mut member) = self.members.shift_remove(&old_id) else {
            self.static_members.remove(&instance);
            return JoinStart::Wait(self.add_member_and_rebalance(req, new_id, now));
        };
        member.reply_join(JoinOutcome::error(&old_id, ResponseError::FencedInstanceId));
        member.reply_sync(SyncOutcome::error(ResponseError::FencedInstanceId));
        let old_protocols = std::mem::replace(&mut member.protocols, req.protocols.clone());
        member.id = new_id.clone();
        member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        member.session_timeout_ms = req.session_timeout_ms;
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        let (tx, rx) = oneshot::channel();
        member.awaiting_join = Some(tx);
        self.members.insert(new_id.clone(), member);
        self.static_members.insert(instance.clone(), new_id.clone());
        if self.leader.as_deref() == Some(old_id.as_str()) {
            self.leader = Some(new_id.clone());
        }
        if self.pending_sync.remove(&old_id) {
            self.pending_sync.insert(new_id.clone());
        }
        self.schedule_heartbeat(&new_id, now);
        tracing::info!(group = %self.id, instance, old = %old_id, new = %new_id, state = self.state.name(), "static member rejoined");
        match self.state {
            GroupState::Stable => {
                let unchanged = old_protocols == req.protocols
                    || self.select_protocol().as_deref() == self.protocol_name.as_deref();
                if unchanged {
                    // No rebalance: store the new member id, then answer with the current
                    // generation (the old leader id, so a pre-v9 leader does not reassign).
                    let is_leader = self.leader.as_deref() == Some(new_id.as_str());
                    let skip = is_leader && req.supports_skip_assignment;
                    match self.store_group(None) {
                        Ok(durable) => self.effects.push(Effect::StaticRejoin {
                            durable,
                            generation: self.generation,
                            member_id: new_id,
                            leader: if skip {
                                new_id_leader(&self.leader)
                            } else {
                                previous_leader
                            },
                            skip_assignment: skip,
                        }),
                        Err(e) => {
                            if let Some(m) = self.members.get_mut(&new_id) {
                                m.reply_join(JoinOutcome::error(&new_id, e));
                            }
                        }
                    }
                } else {
                    self.maybe_prepare_rebalance(now, "static member joined with other protocols");
                }
            }
            GroupState::CompletingRebalance => {
                // The leader may already have computed an assignment for the old member id.
                self.prepare_rebalance(now, "static member replaced during CompletingRebalance");
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
        JoinStart::Wait(rx)
    }

    fn add_member_and_rebalance(
        &mut self,
        req: JoinRequest,
        member_id: String,
        now: Now,
    ) -> oneshot::Receiver<JoinOutcome> {
        let (tx, rx) = oneshot::channel();
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        let member = Member {
            id: member_id.clone(),
            instance_id: req.instance_id.clone(),
            client_id: req.client_id,
            client_host: req.client_host,
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            session_timeout_ms: req.session_timeout_ms,
            protocols: req.protocols,
            assignment: Bytes::new(),
            awaiting_join: Some(tx),
            awaiting_sync: None,
            is_new: true,
            heartbeat_deadline: now.at + NEW_MEMBER_JOIN_TIMEOUT,
        };
        if let Some(instance) = &req.instance_id {
            self.static_members
                .insert(instance.clone(), member_id.clone());
        }
        if self.state == GroupState::PreparingRebalance && self.generation == 0 {
            self.new_member_added = true;
        }
        if self.leader.is_none() {
            self.leader = Some(member_id.clone());
        }
        tracing::debug!(group = %self.id, member = %member_id, "member joined");
        self.members.insert(member_id, member);
        self.maybe_prepare_rebalance(now, "member joined");
        self.try_complete_join(now);
        rx
    }

    fn update_member_and_rebalance(
        &mut self,
        id: &str,
        req: JoinRequest,
        now: Now,
    ) -> oneshot::Receiver<JoinOutcome> {
        let (tx, rx) = oneshot::channel();
        if let Some(m) = self.members.get_mut(id) {
            // A duplicate join (client retry) supersedes the earlier one.
            m.reply_join(JoinOutcome::error(id, ResponseError::RebalanceInProgress));
            m.protocols = req.protocols;
            m.rebalance_timeout_ms = req.rebalance_timeout_ms;
            m.session_timeout_ms = req.session_timeout_ms;
            m.awaiting_join = Some(tx);
        }
        self.maybe_prepare_rebalance(now, "member rejoined");
        self.try_complete_join(now);
        rx
    }

    fn maybe_prepare_rebalance(&mut self, now: Now, reason: &str) {
        if matches!(
            self.state,
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty
        ) {
            self.prepare_rebalance(now, reason);
        }
    }

    fn prepare_rebalance(&mut self, now: Now, reason: &str) {
        if self.state == GroupState::CompletingRebalance {
            self.reset_and_propagate_assignment_error(ResponseError::RebalanceInProgress);
        }
        self.pending_sync.clear();
        self.pending_sync_deadline = None;
        let timeout = self.rebalance_timeout();
        self.join_timer = Some(if self.state == GroupState::Empty {
            let delay = self.initial_delay;
            let remaining = timeout.saturating_sub(delay);
            JoinTimer::Initial {
                deadline: now.at + delay,
                remaining_ms: remaining.as_millis() as u64,
            }
        } else {
            JoinTimer::Normal {
                deadline: now.at + timeout,
            }
        });
        tracing::debug!(group = %self.id, generation = self.generation, reason, "preparing rebalance");
        self.transition(GroupState::PreparingRebalance, now);
    }

    fn reset_and_propagate_assignment_error(&mut self, e: ResponseError) {
        for m in self.members.values_mut() {
            m.assignment = Bytes::new();
            m.reply_sync(SyncOutcome::error(e));
        }
    }

    fn try_complete_join(&mut self, now: Now) {
        if self.state == GroupState::PreparingRebalance
            && matches!(self.join_timer, Some(JoinTimer::Normal { .. }))
            && self.all_joined()
        {
            self.complete_join(now);
        }
    }

    /// Kafka's `onCompleteJoin`: drops dynamic members that did not rejoin, then starts the
    /// next generation and answers every waiting join.
    fn complete_join(&mut self, now: Now) {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none() && m.instance_id.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            tracing::info!(group = %self.id, member = %id, "member did not rejoin in time; removed");
            self.remove_member(&id);
        }
        if !self.members.is_empty() && !self.members.values().any(|m| m.awaiting_join.is_some()) {
            // Only static members that did not rejoin are left: wait for them (or for their
            // session timeouts) instead of starting a generation nobody joined.
            self.join_timer = Some(JoinTimer::Normal {
                deadline: now.at + self.rebalance_timeout(),
            });
            return;
        }
        // The leader must be a member that rejoined.
        let leader_joined = self
            .leader
            .as_ref()
            .and_then(|l| self.members.get(l))
            .is_some_and(|m| m.awaiting_join.is_some());
        if !leader_joined {
            self.leader = self
                .members
                .values()
                .find(|m| m.awaiting_join.is_some())
                .map(|m| m.id.clone());
        }
        self.join_timer = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.protocol_type = None;
            self.protocol_name = None;
            self.leader = None;
            self.subscribed_topics = Some(HashSet::new());
            self.transition(GroupState::Empty, now);
            if let Ok(durable) = self.store_group(None) {
                self.effects.push(Effect::Store {
                    durable,
                    what: "empty group",
                });
            }
            return;
        }
        self.protocol_name = self.select_protocol();
        self.subscribed_topics = self.compute_subscribed_topics();
        self.transition(GroupState::CompletingRebalance, now);
        let leader = self.leader.clone().unwrap_or_default();
        let all = self.current_members();
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in &ids {
            let members = if Some(id) == self.leader.as_ref() {
                all.clone()
            } else {
                Vec::new()
            };
            let outcome = self.join_success(id, leader.clone(), members, false);
            if let Some(m) = self.members.get_mut(id) {
                m.reply_join(outcome);
                m.is_new = false;
            }
            self.schedule_heartbeat(id, now);
        }
        self.pending_sync = ids.into_iter().collect();
        self.pending_sync_deadline = Some(now.at + self.rebalance_timeout());
        tracing::debug!(group = %self.id, generation = self.generation, members = self.members.len(), protocol = ?self.protocol_name, "rebalance joined");
    }

    fn compute_subscribed_topics(&self) -> Option<HashSet<String>> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol_name.clone()?;
        let mut topics = HashSet::new();
        for m in self.members.values() {
            topics.extend(super::subscription_topics(&m.metadata(&protocol))?);
        }
        Some(topics)
    }

    fn remove_member(&mut self, id: &str) {
        if let Some(mut m) = self.members.shift_remove(id) {
            m.reply_join(JoinOutcome::error(id, ResponseError::UnknownMemberId));
            m.reply_sync(SyncOutcome::error(ResponseError::UnknownMemberId));
            if let Some(instance) = &m.instance_id
                && self.static_members.get(instance).map(String::as_str) == Some(id)
            {
                self.static_members.remove(instance);
            }
        }
        self.pending_sync.remove(id);
        if self.leader.as_deref() == Some(id) {
            self.leader = self.members.keys().next().cloned();
        }
    }

    fn remove_member_and_update(&mut self, id: &str, now: Now, reason: &str) {
        self.remove_member(id);
        match self.state {
            GroupState::Dead | GroupState::Empty => {}
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.maybe_prepare_rebalance(now, reason);
                // As Kafka's join purgatory: when the last member left, everyone (nobody)
                // has rejoined and the group becomes Empty right away, so a DeleteGroups
                // right after the LeaveGroup succeeds.
                self.try_complete_join(now);
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
        }
    }

    // ---- SyncGroup ----

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
        now: Now,
    ) -> SyncStart {
        use SyncStart::Reply;
        if self.state == GroupState::Dead {
            return Reply(SyncOutcome::error(ResponseError::CoordinatorNotAvailable));
        }
        if protocol_type.is_some_and(|t| Some(t) != self.protocol_type.as_deref())
            || protocol_name.is_some_and(|n| Some(n) != self.protocol_name.as_deref())
        {
            return Reply(SyncOutcome::error(ResponseError::InconsistentGroupProtocol));
        }
        if let Err(e) = self.validate_member(member_id, instance_id) {
            return Reply(SyncOutcome::error(e));
        }
        if generation != self.generation {
            return Reply(SyncOutcome::error(ResponseError::IllegalGeneration));
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => {
                Reply(SyncOutcome::error(ResponseError::UnknownMemberId))
            }
            GroupState::PreparingRebalance => {
                Reply(SyncOutcome::error(ResponseError::RebalanceInProgress))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(member_id) {
                    m.reply_sync(SyncOutcome::error(ResponseError::RebalanceInProgress));
                    m.awaiting_sync = Some(tx);
                }
                self.pending_sync.remove(member_id);
                self.schedule_heartbeat(member_id, now);
                if self.leader.as_deref() == Some(member_id) {
                    // Members the leader left out get an empty assignment (as Kafka does).
                    let mut map: HashMap<String, Bytes> = self
                        .members
                        .keys()
                        .map(|id| (id.clone(), Bytes::new()))
                        .collect();
                    for (id, a) in assignments {
                        if map.contains_key(&id) {
                            map.insert(id, a);
                        }
                    }
                    match self.store_group(Some(&map)) {
                        Ok(durable) => self.effects.push(Effect::Assignment {
                            durable,
                            generation: self.generation,
                            assignments: map,
                        }),
                        Err(e) => {
                            self.reset_and_propagate_assignment_error(e);
                            self.maybe_prepare_rebalance(now, "storing the assignment failed");
                        }
                    }
                }
                SyncStart::Wait(rx)
            }
            GroupState::Stable => {
                self.pending_sync.remove(member_id);
                self.schedule_heartbeat(member_id, now);
                let assignment = self
                    .members
                    .get(member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                Reply(SyncOutcome {
                    error: 0,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: self.protocol_name.clone(),
                    assignment,
                })
            }
        }
    }

    /// The leader's assignment is durable (or failed to be).
    pub(crate) fn on_assignment_stored(
        &mut self,
        generation: i32,
        assignments: HashMap<String, Bytes>,
        result: Result<(), ResponseError>,
        now: Now,
    ) {
        if self.state != GroupState::CompletingRebalance || self.generation != generation {
            return;
        }
        match result {
            Ok(()) => {
                let (pt, pn) = (self.protocol_type.clone(), self.protocol_name.clone());
                for (id, m) in self.members.iter_mut() {
                    m.assignment = assignments.get(id).cloned().unwrap_or_default();
                    let outcome = SyncOutcome {
                        error: 0,
                        protocol_type: pt.clone(),
                        protocol_name: pn.clone(),
                        assignment: m.assignment.clone(),
                    };
                    m.reply_sync(outcome);
                }
                tracing::debug!(group = %self.id, generation, "group stable");
                self.transition(GroupState::Stable, now);
            }
            Err(e) => {
                tracing::warn!(group = %self.id, generation, error = ?e, "storing the assignment failed");
                self.reset_and_propagate_assignment_error(e);
                self.maybe_prepare_rebalance(now, "storing the assignment failed");
            }
        }
    }

    pub(crate) fn on_static_rejoin_stored(
        &mut self,
        generation: i32,
        member_id: &str,
        leader: String,
        skip: bool,
        result: Result<(), ResponseError>,
    ) {
        if self.generation != generation || self.state != GroupState::Stable {
            // A rebalance started meanwhile: the member's join is answered when it completes.
            return;
        }
        let members = if skip {
            self.current_members()
        } else {
            Vec::new()
        };
        let outcome = match result {
            Ok(()) => self.join_success(member_id, leader, members, skip),
            Err(e) => JoinOutcome::error(member_id, e),
        };
        if let Some(m) = self.members.get_mut(member_id) {
            m.reply_join(outcome);
        }
    }

    // ---- Heartbeat / LeaveGroup ----

    pub(crate) fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Now,
    ) -> i16 {
        match self.state {
            GroupState::Dead => return code(ResponseError::CoordinatorNotAvailable),
            GroupState::Empty => return code(ResponseError::UnknownMemberId),
            _ => {}
        }
        if let Err(e) = self.validate_member(member_id, instance_id) {
            return code(e);
        }
        if generation != self.generation {
            return code(ResponseError::IllegalGeneration);
        }
        self.schedule_heartbeat(member_id, now);
        if self.state == GroupState::PreparingRebalance {
            code(ResponseError::RebalanceInProgress)
        } else {
            0
        }
    }

    /// One member of a LeaveGroup; returns its error code.
    pub(crate) fn leave(&mut self, member_id: &str, instance_id: Option<&str>, now: Now) -> i16 {
        if let Some(instance) = instance_id {
            let Some(known) = self.static_members.get(instance).cloned() else {
                return code(ResponseError::UnknownMemberId);
            };
            if !member_id.is_empty() && known != member_id {
                return code(ResponseError::FencedInstanceId);
            }
            tracing::info!(group = %self.id, member = %known, instance, "static member left");
            self.remove_member_and_update(&known, now, "static member left");
            return 0;
        }
        if self.pending_members.remove(member_id).is_some() {
            self.try_complete_join(now);
            return 0;
        }
        if !self.members.contains_key(member_id) {
            return code(ResponseError::UnknownMemberId);
        }
        tracing::debug!(group = %self.id, member = %member_id, "member left");
        self.remove_member_and_update(member_id, now, "member left");
        0
    }

    // ---- timers ----

    /// The earliest time something may expire.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| {
            if next.is_none_or(|n| t < n) {
                next = Some(t);
            }
        };
        if let Some(t) = &self.join_timer {
            consider(t.deadline());
        }
        if let Some(t) = self.pending_sync_deadline {
            consider(t);
        }
        for t in self.pending_members.values() {
            consider(*t);
        }
        for m in self.members.values() {
            if let Some(t) = m.deadline() {
                consider(t);
            }
        }
        next
    }

    /// Runs whatever expired by `now`.
    pub(crate) fn on_timer(&mut self, now: Now) {
        if self.state == GroupState::Dead {
            return;
        }
        let expired_pending: Vec<String> = self
            .pending_members
            .iter()
            .filter(|(_, t)| **t <= now.at)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired_pending {
            self.pending_members.remove(&id);
            tracing::debug!(group = %self.id, member = %id, "pending member expired");
            self.try_complete_join(now);
        }
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.alive(now.at))
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            tracing::info!(group = %self.id, member = %id, "session timeout; member removed");
            self.remove_member_and_update(&id, now, "session timeout");
        }
        if let Some(deadline) = self.pending_sync_deadline
            && deadline <= now.at
        {
            self.pending_sync_deadline = None;
            if matches!(
                self.state,
                GroupState::CompletingRebalance | GroupState::Stable
            ) && !self.pending_sync.is_empty()
            {
                let late: Vec<String> = self.pending_sync.drain().collect();
                for id in &late {
                    tracing::info!(group = %self.id, member = %id, "member did not sync in time; removed");
                    self.remove_member(id);
                }
                if self.members.is_empty() {
                    self.prepare_rebalance(now, "no member synced");
                    self.try_complete_join(now);
                } else {
                    self.maybe_prepare_rebalance(now, "members did not sync");
                }
            }
        }
        if self.state == GroupState::PreparingRebalance
            && let Some(timer) = self.join_timer
            && timer.deadline() <= now.at
        {
            match timer {
                JoinTimer::Initial { remaining_ms, .. }
                    if self.new_member_added && remaining_ms > 0 =>
                {
                    // Members keep arriving: wait another delay (bounded by the rebalance timeout).
                    self.new_member_added = false;
                    let delay = (self.initial_delay.as_millis() as u64).min(remaining_ms);
                    self.join_timer = Some(JoinTimer::Initial {
                        deadline: now.at + Duration::from_millis(delay),
                        remaining_ms: remaining_ms.saturating_sub(delay),
                    });
                }
                _ => self.complete_join(now),
            }
        }
    }

    // ---- persistence ----

    fn group_value(&self, assignments: Option<&HashMap<String, Bytes>>) -> GroupValue {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol_name.clone(),
            leader: self.leader.clone(),
            current_state_timestamp: self.state_since_ms,
            members: self
                .members
                .values()
                .map(|m| StoredMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata(&protocol),
                    assignment: assignments
                        .and_then(|a| a.get(&m.id).cloned())
                        .unwrap_or_else(|| m.assignment.clone()),
                })
                .collect(),
        }
    }

    fn store_group(
        &mut self,
        assignments: Option<&HashMap<String, Bytes>>,
    ) -> Result<Durable, ResponseError> {
        let key = RecordKey::Group {
            group: self.id.clone(),
        }
        .encode();
        let value = self.group_value(assignments).encode();
        self.log.append(vec![(key, Some(value))]).map(|(_, d)| d)
    }

    /// Appends offset records (None = tombstone) in one batch; returns the first record's
    /// offset and durability.
    pub(crate) fn append_offsets(
        &self,
        records: Vec<(RecordKey, Option<OffsetValue>)>,
    ) -> Result<(u64, Durable), ResponseError> {
        let encoded = records
            .into_iter()
            .map(|(k, v)| (k.encode(), v.map(|v| v.encode())))
            .collect();
        self.log.append(encoded)
    }

    /// Tombstones for the group and all its offsets; the group becomes Dead.
    pub(crate) fn delete(&mut self, now: Now) -> Result<Durable, ResponseError> {
        let mut records: Vec<(Bytes, Option<Bytes>)> = self
            .offsets
            .keys()
            .map(|(t, p)| {
                let key = RecordKey::Offset {
                    group: self.id.clone(),
                    topic: t.clone(),
                    partition: *p,
                };
                (key.encode(), None)
            })
            .collect();
        records.push((
            RecordKey::Group {
                group: self.id.clone(),
            }
            .encode(),
            None,
        ));
        let (_, durable) = self.log.append(records)?;
        self.offsets.clear();
        self.transition(GroupState::Dead, now);
        Ok(durable)
    }

    /// Records a committed offset if its record is newer than what is known.
    pub(crate) fn apply_offset(
        &mut self,
        topic: String,
        partition: i32,
        value: Option<OffsetValue>,
        record_offset: u64,
    ) {
        let key = (topic, partition);
        if self
            .offsets
            .get(&key)
            .is_some_and(|e| e.record_offset > record_offset)
        {
            return;
        }
        match value {
            Some(value) => {
                self.offsets.insert(
                    key,
                    OffsetEntry {
                        value,
                        record_offset,
                    },
                );
            }
            None => {
                self.offsets.remove(&key);
            }
        }
    }

    /// Restores group metadata read from the log (coordinator load).
    pub(crate) fn restore(&mut self, v: GroupValue, now: Now) {
        self.generation = v.generation;
        self.protocol_type = (!v.protocol_type.is_empty()).then_some(v.protocol_type);
        self.protocol_name = v.protocol;
        self.leader = v.leader;
        self.state_since_ms = if v.current_state_timestamp >= 0 {
            v.current_state_timestamp
        } else {
            now.ms
        };
        self.members.clear();
        self.static_members.clear();
        for m in v.members {
            if let Some(i) = &m.instance_id {
                self.static_members.insert(i.clone(), m.member_id.clone());
            }
            let protocols = match &self.protocol_name {
                Some(p) => vec![(p.clone(), m.subscription.clone())],
                None => Vec::new(),
            };
            self.members.insert(
                m.member_id.clone(),
                Member {
                    id: m.member_id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    protocols,
                    assignment: m.assignment,
                    awaiting_join: None,
                    awaiting_sync: None,
                    is_new: false,
                    heartbeat_deadline: now.at
                        + Duration::from_millis(m.session_timeout_ms.max(0) as u64),
                },
            );
        }
        // Members come back Stable; those that are gone time out like any other.
        self.state = if self.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        self.subscribed_topics = if self.members.is_empty() {
            Some(HashSet::new())
        } else {
            self.compute_subscribed_topics()
        };
    }

    /// Offsets due to expire (Kafka's `removeExpiredOffsets` rules); returns their keys.
    pub(crate) fn expired_offsets(&self, now_ms: i64, retention_ms: i64) -> Vec<(String, i32)> {
        let base_of = |e: &OffsetEntry| -> Option<i64> {
            match (&self.protocol_type, self.state) {
                // Nobody is in the group: offsets live `retention` past the group emptying.
                (Some(_), GroupState::Empty) => Some(self.state_since_ms.max(0)),
                // A stable consumer group: only offsets of topics nobody subscribes to.
                (Some(t), GroupState::Stable) if t == "consumer" => self
                    .subscribed_topics
                    .as_ref()
                    .map(|_| e.value.commit_timestamp),
                (Some(_), _) => None,
                // Offset storage only (simple consumers): from each commit.
                (None, _) => Some(e.value.commit_timestamp),
            }
        };
        self.offsets
            .iter()
            .filter(|((topic, _), e)| {
                if self.state == GroupState::Stable
                    && self
                        .subscribed_topics
                        .as_ref()
                        .is_some_and(|s| s.contains(topic))
                {
                    return false;
                }
                if e.value.expire_timestamp >= 0 {
                    return now_ms >= e.value.expire_timestamp;
                }
                base_of(e).is_some_and(|base| now_ms.saturating_sub(base) >= retention_ms)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Empty group without offsets: nothing left to keep.
    pub(crate) fn is_disposable(&self) -> bool {
        self.state == GroupState::Empty
            && self.offsets.is_empty()
            && self.pending_members.is_empty()
    }

    pub(crate) fn mark_dead(&mut self, now: Now) {
        for m in self.members.values_mut() {
            m.reply_join(JoinOutcome::error(
                &m.id.clone(),
                ResponseError::NotCoordinator,
            ));
            m.reply_sync(SyncOutcome::error(ResponseError::NotCoordinator));
        }
        self.transition(GroupState::Dead, now);
    }

    /// Whether a commit of `generation` by `member_id` is acceptable (Kafka's
    /// `validateOffsetCommit` for classic groups).
    pub(crate) fn validate_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if generation < 0 && self.state == GroupState::Empty {
            return Ok(());
        }
        if generation >= 0 || !member_id.is_empty() || instance_id.is_some() {
            self.validate_member(member_id, instance_id)?;
            if generation != self.generation {
                return Err(ResponseError::IllegalGeneration);
            }
        } else if self.state != GroupState::Empty {
            return Err(ResponseError::UnknownMemberId);
        }
        if self.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }

    /// KIP-447's checks of a TxnOffsetCommit's group metadata (Kafka's
    /// `doTxnCommitOffsets`): a producer that sends none (member "" and generation -1)
    /// commits whatever the group's state; one that does is fenced like a stale member.
    pub(crate) fn validate_txn_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if let Some(instance) = instance_id
            && let Some(known) = self.static_members.get(instance)
            && known != member_id
        {
            return Err(ResponseError::FencedInstanceId);
        }
        if !member_id.is_empty() && !self.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation >= 0 && generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    /// A valid commit counts as a heartbeat.
    pub(crate) fn commit_heartbeat(&mut self, member_id: &str, now: Now) {
        if self.members.contains_key(member_id) {
            self.schedule_heartbeat(member_id, now);
        }
    }
}

fn new_id_leader(leader: &Option<String>) -> String {
    leader.clone().unwrap_or_default()
}
