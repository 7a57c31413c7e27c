//! Broker liveness: registrations, heartbeats, fencing, and moving a fenced broker's
//! partitions to live ones.
//!
//! - A broker registers ([`crate::types::Command::RegisterBroker`], a Raft write) and gets
//!   its broker epoch. Then it heartbeats the metadata leader every
//!   `broker.heartbeat.interval.ms`; heartbeats are RPCs, not Raft writes, and the leader
//!   keeps the deadlines in memory.
//! - The leader's controller ([`run`]) ticks every [`TICK`]: a broker whose deadline
//!   (`broker.session.timeout.ms` after its last heartbeat) has passed is fenced
//!   (`FenceBroker`, a Raft write at that epoch), and the partitions of fenced brokers move
//!   to live ones, least loaded first (`MovePartitions`, compare-and-set on the old owner).
//!   [`Liveness::plan`] decides both from the state, the deadlines and the time (it only
//!   stamps each fence with the wall clock), so it is tested without a cluster. It never fences every live broker at once
//!   (a lone node, or a controller that stalled): nobody would be left to take over.
//! - A new leader knows no deadlines: it gives every registered broker a full session from
//!   the moment it leads, so a metadata failover never fences a healthy broker (KAFKA-15019),
//!   and probes every broker once (the old leader may have died with others). A controller
//!   that stalled moves every deadline by the time it lost ([`Liveness::resumed`]).
//! - A crashed process is told apart from a slow one without waiting out its session: a
//!   broker silent for [`PROBE_AFTER`] (or whose heartbeat connection ended) is probed with
//!   a TCP connect to its metadata RPC listener, and one whose port *refuses* the connection
//!   (nothing listens there: the process is gone) is fenced at once. A paused or cut-off node does not refuse (its
//!   kernel still accepts, or nothing answers at all), so it keeps its full session.
//! - The broker side ([`MetaNode::start_heartbeats`]) reports [`BrokerStatus::Expired`]
//!   once no heartbeat has been answered for the session minus two intervals: it stops
//!   serving before the leader can have given its partitions away.

use crate::placement::Placer;
use crate::rpc::{CallError, HeartbeatReply, HeartbeatRequest, Kind, PbRequest};
use crate::types::{Command, PartitionMove};
use crate::{ClusterState, MetaNode};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often the leader's controller looks for expired sessions.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// How long a broker is silent before the controller probes its listener (two heartbeat
/// intervals at the defaults: one late heartbeat is not enough).
pub(crate) const PROBE_AFTER: Duration = Duration::from_millis(500);

/// A gap this long between two controller rounds (ticks are 100 ms) means the controller
/// itself stalled; see [`Liveness::resumed`]. A SIGSTOPped metadata leader that came back
/// before anyone replaced it fenced both other brokers of a 3-node chaos run on sessions
/// that had expired only while it was stopped.
const STALL: Duration = Duration::from_millis(500);

/// How long a probe's connect may take; no answer in time proves nothing.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// The leader's view of broker sessions.
#[derive(Debug)]
pub(crate) struct Liveness {
    session: Duration,
    /// Broker id -> (epoch the deadline is for, deadline).
    deadlines: HashMap<u64, (u64, Instant)>,
    /// Brokers whose listener refused a probe while they were silent -> that epoch.
    refused: HashMap<u64, u64>,
    /// Brokers with a probe in flight.
    probing: HashSet<u64>,
    /// Brokers whose heartbeat connection ended: probed at once, without waiting for
    /// [`PROBE_AFTER`] of silence (a killed process's sockets close with it).
    suspects: HashSet<u64>,
    /// Broker id -> (epoch, the last metadata log index it reported applied).
    applied: HashMap<u64, (u64, u64)>,
}

impl Liveness {
    pub(crate) fn new(session: Duration) -> Self {
        Liveness {
            session,
            deadlines: HashMap::new(),
            refused: HashMap::new(),
            probing: HashSet::new(),
            suspects: HashSet::new(),
            applied: HashMap::new(),
        }
    }

    /// This controller did not run for `stalled` (its process was paused, or starved): the
    /// heartbeats it did not read meanwhile are its own silence, not the brokers'. Every
    /// deadline moves by that much (only the lost time: repeated stalls cannot keep a dead
    /// broker unfenced); a refused probe still fences at once.
    pub(crate) fn resumed(&mut self, stalled: Duration) {
        for (_, deadline) in self.deadlines.values_mut() {
            *deadline += stalled;
        }
    }

    /// Forgets every deadline (this node stopped leading).
    pub(crate) fn clear(&mut self) {
        self.deadlines.clear();
        self.refused.clear();
        self.probing.clear();
        self.suspects.clear();
        self.applied.clear();
    }

    /// The connection broker `id` heartbeated on ended (closed or reset). A process killed
    /// with -9 closes its sockets at once, so its probe need not wait for its silence; a
    /// connection closed for any other reason costs one probe that fences nobody.
    pub(crate) fn suspect(&mut self, id: u64) {
        self.suspects.insert(id);
    }

    /// Every live broker is a suspect (see [`Self::suspect`]): this node starts leading.
    pub(crate) fn suspect_all(&mut self, state: &ClusterState) {
        let live = state.brokers.iter().filter(|(_, b)| !b.fenced);
        self.suspects.extend(live.map(|(&id, _)| id));
    }

    /// The live brokers (other than `me`) silent for [`PROBE_AFTER`], or suspected (see
    /// [`Self::suspect`]), and not probed yet, with their epoch and advertised address; each
    /// is marked as being probed.
    pub(crate) fn take_probes(
        &mut self,
        state: &ClusterState,
        me: u64,
        now: Instant,
    ) -> Vec<(u64, u64, String, u16)> {
        let mut out = Vec::new();
        for (&id, b) in state.brokers.iter().filter(|(_, b)| !b.fenced) {
            let suspected = self.suspects.remove(&id);
            // Silence is counted within a session at this epoch; without one (just
            // registered, or this node just started leading) only a suspicion probes.
            let silent = match self.deadlines.get(&id) {
                Some(&(epoch, deadline)) if epoch == b.epoch => {
                    let silent_since = deadline.checked_sub(self.session).unwrap_or(deadline);
                    now >= silent_since + PROBE_AFTER
                }
                _ => false,
            };
            if id == me
                || !(silent || suspected)
                || self.probing.contains(&id)
                || self.refused.get(&id) == Some(&b.epoch)
            {
                continue;
            }
            let Some(n) = state.nodes.get(&id) else {
                continue;
            };
            self.probing.insert(id);
            out.push((id, b.epoch, n.host.clone(), n.port));
        }
        out
    }

    /// A probe's outcome: `refused` means nothing listens on the broker's port.
    pub(crate) fn probed(&mut self, id: u64, epoch: u64, refused: bool) {
        self.probing.remove(&id);
        if refused {
            self.refused.insert(id, epoch);
        }
    }

    /// A broker's heartbeat, answered from the replicated registration.
    pub(crate) fn heartbeat(
        &mut self,
        state: &ClusterState,
        id: u64,
        epoch: u64,
        now: Instant,
    ) -> HeartbeatReply {
        match state.brokers.get(&id) {
            Some(b) if b.epoch == epoch && b.fenced => HeartbeatReply::Fenced,
            Some(b) if b.epoch == epoch => {
                self.deadlines.insert(id, (epoch, now + self.session));
                // It answered after all: whatever a probe saw is stale.
                self.refused.remove(&id);
                HeartbeatReply::Live
            }
            // Unknown, or an older (or, not applied here yet, newer) registration.
            _ => HeartbeatReply::Reregister,
        }
    }

    /// The live brokers (registered, not fenced) whose last heartbeat reported less than
    /// `index` applied; `me` counts as applied (its caller checks its own replica).
    pub(crate) fn lagging(&self, state: &ClusterState, index: u64, me: u64) -> Vec<u64> {
        state
            .brokers
            .iter()
            .filter(|(id, b)| !b.fenced && **id != me)
            .filter(|(id, b)| {
                self.applied
                    .get(id)
                    .is_none_or(|&(epoch, applied)| epoch != b.epoch || applied < index)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// What the controller does now: fence brokers past their deadline, and move the
    /// partitions of fenced brokers to live ones. A broker without a deadline yet (just
    /// registered, or this node just started leading) gets a full session from now.
    pub(crate) fn plan(&mut self, state: &ClusterState, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        let mut live = 0;
        let mut expired = Vec::new();
        for (&id, b) in state.brokers.iter().filter(|(_, b)| !b.fenced) {
            live += 1;
            let deadline = match self.deadlines.get(&id) {
                Some(&(epoch, d)) if epoch == b.epoch => d,
                _ => {
                    let d = now + self.session;
                    self.deadlines.insert(id, (b.epoch, d));
                    d
                }
            };
            let crashed = self.refused.get(&id) == Some(&b.epoch);
            if deadline <= now || crashed {
                expired.push(Command::FenceBroker {
                    id,
                    epoch: b.epoch,
                    at_ms: crate::now_ms(),
                });
            }
        }
        // Every live broker expired at once: far likelier that this controller stalled
        // (or is alone, one node) than that all of them died, and fencing them all would
        // leave nobody to take the partitions. Wait for their heartbeats instead.
        if expired.len() < live {
            out.extend(expired);
        }
        let moves = moves_off_fenced(state);
        if !moves.is_empty() {
            out.push(Command::MovePartitions { moves });
        }
        out
    }
}

/// The partitions of fenced brokers, each placed on a live broker by
/// [`crate::placement`]'s rule (counting the moves already planned), so a dead owner's topic
/// spreads over the survivors. Nothing moves while no broker is live. Owners that never
/// registered as brokers are left alone.
fn moves_off_fenced(state: &ClusterState) -> Vec<PartitionMove> {
    let Some(mut placer) = Placer::new(state) else {
        return Vec::new();
    };
    let mut moves = Vec::new();
    for t in state.topics.values() {
        let mut load = placer.topic(&t.partitions);
        for (i, p) in t.partitions.iter().enumerate() {
            let fenced = state.brokers.get(&p.owner).is_some_and(|b| b.fenced);
            if !fenced {
                continue;
            }
            moves.push(PartitionMove {
                topic: t.name.clone(),
                partition: i as u32,
                from: p.owner,
                to: placer.place(&mut load),
            });
        }
    }
    moves
}

/// The leader's controller loop; runs on every node, acts only while it leads.
pub(crate) async fn run(node: Weak<MetaNode>) {
    let mut leading = false;
    let mut last_round;
    // Woken early by a fence or registration being applied, or a probe finding a crashed
    // process (`Shared::controller_wake`).
    let Some(shared) = node.upgrade().map(|n| n.shared.clone()) else {
        return;
    };
    loop {
        last_round = Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shared.controller_wake.notified() => {}
        }
        // Only the wait's overshoot counts: a round's own Raft writes are not a stall.
        let stalled = last_round.elapsed().saturating_sub(TICK);
        let Some(node) = node.upgrade() else {
            return;
        };
        node.record_gauges();
        if node.leader() != Some(node.node_id) {
            if leading {
                node.liveness.lock().clear();
                leading = false;
            }
            continue;
        }
        if leading && stalled >= STALL {
            tracing::warn!(
                stalled_ms = stalled.as_millis() as u64,
                "controller: this node stalled; the brokers' deadlines move by as much"
            );
            node.liveness.lock().resumed(stalled);
        }
        if !leading {
            // A new leader knows nothing of the brokers' sessions, and the one it replaced
            // may have died with others (a host lost): probe every broker once now rather
            // than after PROBE_AFTER of silence. A live one costs a connect.
            node.read(|st| node.liveness.lock().suspect_all(st));
        }
        leading = true;
        let now = Instant::now();
        let probes = node.read(|st| node.liveness.lock().take_probes(st, node.node_id, now));
        for (id, epoch, host, port) in probes {
            // The node's metadata RPC listener: the leader reaches it anyway (it replicates
            // to every node), and it stays open until the process has handed off and stops.
            // An advertised Kafka listener may not be reachable from here at all (one that
            // names `localhost` for clients on the host). Kafka's listener only for a node
            // outside the membership.
            let addr = node
                .rpc_address(id)
                .unwrap_or_else(|| format!("{host}:{port}"));
            let weak = Arc::downgrade(&node);
            tokio::spawn(async move {
                let refused = connection_refused(&addr).await;
                if refused {
                    tracing::info!(broker = id, %addr, "controller: a silent (or disconnected) broker's process refuses connections");
                }
                if let Some(n) = weak.upgrade() {
                    n.liveness.lock().probed(id, epoch, refused);
                    if refused {
                        n.shared.controller_wake.notify_one();
                    }
                }
            });
        }
        // A fence is planned, and applied, before the moves off the broker it fenced can be:
        // plan again at once rather than a tick later.
        for _ in 0..2 {
            let commands = node.read(|st| node.liveness.lock().plan(st, now));
            let fenced = commands
                .iter()
                .any(|c| matches!(c, Command::FenceBroker { .. }));
            if !submit_all(&node, commands).await || !fenced {
                break;
            }
        }
    }
}

/// Submits the controller's commands in order, logging each ownership decision (an
/// operator's record of the failover's timeline); false once one failed.
async fn submit_all(node: &MetaNode, commands: Vec<Command>) -> bool {
    for cmd in commands {
        match &cmd {
            Command::FenceBroker { id, epoch, .. } => {
                metrics::counter!("shale_brokers_fenced_total").increment(1);
                tracing::info!(
                    broker = id,
                    broker_epoch = epoch,
                    "controller: fencing a broker (session expired, or its process is gone)"
                );
            }
            Command::MovePartitions { moves } => {
                metrics::counter!("shale_partitions_moved_total").increment(moves.len() as u64);
                tracing::info!(
                    partitions = moves.len(),
                    "controller: moving partitions off fenced brokers"
                );
            }
            _ => {}
        }
        if let Err(e) = node.submit(cmd).await {
            tracing::warn!(error = %e, "controller write failed; retried next tick");
            return false;
        }
    }
    true
}

/// Whether a TCP connect to `host:port` is refused: nothing listens there. A timeout, an
/// unreachable network or a failed lookup prove nothing and count as not refused.
async fn connection_refused(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// What a broker knows of its own session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerStatus {
    /// The last heartbeat was answered: keep serving.
    Live,
    /// The controller fenced this registration: stop serving what it owned, register again.
    Fenced,
    /// No heartbeat answered for the session minus two intervals: stop serving now, before
    /// the controller can have moved the partitions away.
    Expired,
}

/// Stops the heartbeats when dropped.
pub struct Heartbeats {
    status: watch::Receiver<BrokerStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeats {
    /// The latest status; `changed()` on it waits for the next change.
    pub fn status(&self) -> watch::Receiver<BrokerStatus> {
        self.status.clone()
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MetaNode {
    /// Registers this process as broker `node.id` with a new `incarnation` (random per
    /// start); returns its broker epoch.
    pub async fn register_broker(
        &self,
        node: crate::NodeMeta,
        incarnation: [u8; 16],
    ) -> Result<u64, crate::MetaError> {
        match self
            .submit(Command::RegisterBroker { node, incarnation })
            .await
        {
            Ok(crate::types::Response::BrokerEpoch(e)) => Ok(e),
            Ok(other) => Err(crate::MetaError::Unavailable(format!(
                "unexpected response {other:?}"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Fences broker `id` at `epoch` now (a controlled shutdown fences itself so the
    /// controller moves its partitions without waiting for the session to expire).
    pub async fn fence_broker(&self, id: u64, epoch: u64) -> Result<(), crate::MetaError> {
        self.submit(Command::FenceBroker {
            id,
            epoch,
            at_ms: crate::now_ms(),
        })
        .await
        .map(|_| ())
        .map_err(crate::MetaError::from)
    }

    /// Heartbeats broker `id` at `epoch` to the metadata leader every `interval`.
    pub fn start_heartbeats(
        self: &std::sync::Arc<Self>,
        id: u64,
        epoch: u64,
        interval: Duration,
        session: Duration,
    ) -> Heartbeats {
        let (tx, rx) = watch::channel(BrokerStatus::Live);
        let node = std::sync::Arc::downgrade(self);
        let task = tokio::spawn(heartbeat_loop(node, id, epoch, interval, session, tx));
        Heartbeats { status: rx, task }
    }

    /// Answers a heartbeat here, if this node leads.
    pub(crate) fn heartbeat_here(&self, req: &HeartbeatRequest) -> HeartbeatReply {
        if self.leader() != Some(self.node_id) {
            let hint = self.known_leader();
            return HeartbeatReply::NotLeader {
                leader_id: hint.as_ref().map(|h| h.0),
                leader_addr: hint.map(|h| h.1),
            };
        }
        if !self.holds_leader_lease() {
            // Cut off from its quorum, this leader may already have been replaced, and the
            // new one may fence this broker: saying "live" would keep it serving.
            return HeartbeatReply::NotLeader {
                leader_id: None,
                leader_addr: None,
            };
        }
        let now = Instant::now();
        self.read(|st| {
            let mut l = self.liveness.lock();
            let reply = l.heartbeat(st, req.id, req.epoch, now);
            if reply == HeartbeatReply::Live {
                l.applied.insert(req.id, (req.epoch, req.applied));
            }
            reply
        })
    }

    /// Returns once every live broker has applied the metadata log up to what the leader
    /// has applied now (so a change written before the call is in force on every node that
    /// serves clients), or fails after `timeout`. Brokers report what they have applied with
    /// each heartbeat; one that stops heartbeating stops serving within its session and is
    /// fenced soon after, so waiting a session out bounds the wait.
    pub async fn await_applied_everywhere(
        &self,
        timeout: Duration,
    ) -> Result<(), crate::MetaError> {
        // The leader's applied index covers every write acknowledged before the call (the
        // leader applies a write before acknowledging it); 0 asks for that.
        let index = 0;
        let deadline = Instant::now() + timeout;
        let mut target = self.known_leader();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let reply = match &target {
                Some((leader, addr)) if *leader != self.node_id => {
                    let call = PbRequest::new(
                        Kind::AwaitApplied,
                        &AwaitAppliedRequest {
                            index,
                            timeout_ms: remaining.as_millis() as u64,
                        },
                    )
                    .map_err(|e| crate::MetaError::Unavailable(e.to_string()))?;
                    match self
                        .peer(*leader, addr)
                        .call(&call, remaining + Duration::from_millis(500))
                        .await
                    {
                        Ok(r) => r
                            .decode_body::<AwaitAppliedReply>()
                            .map_err(|e| crate::MetaError::Unavailable(e.to_string()))?,
                        Err(e) => AwaitAppliedReply::Failed(format!("metadata leader: {e:?}")),
                    }
                }
                _ => self.await_applied_here(index, remaining).await,
            };
            match reply {
                AwaitAppliedReply::Done => return Ok(()),
                AwaitAppliedReply::Failed(e) => return Err(crate::MetaError::Unavailable(e)),
                AwaitAppliedReply::NotLeader {
                    leader_id,
                    leader_addr,
                } => {
                    if Instant::now() >= deadline {
                        return Err(crate::MetaError::Unavailable(
                            "no metadata leader reachable".into(),
                        ));
                    }
                    target = match (leader_id, leader_addr) {
                        (Some(id), Some(addr)) => Some((id, addr)),
                        _ => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            self.known_leader()
                        }
                    };
                }
            }
        }
    }

    /// The leader's half of [`MetaNode::await_applied_everywhere`].
    pub(crate) async fn await_applied_here(
        &self,
        index: u64,
        timeout: Duration,
    ) -> AwaitAppliedReply {
        if self.leader() != Some(self.node_id) {
            let hint = self.known_leader();
            return AwaitAppliedReply::NotLeader {
                leader_id: hint.as_ref().map(|h| h.0),
                leader_addr: hint.map(|h| h.1),
            };
        }
        // The committed index (a quorum round) covers every write acknowledged before the
        // call, even one this leader has not applied yet or one a previous leader
        // committed; the applied index from metrics could lag both.
        let committed = match self.read_index_here().await {
            crate::rpc::ReadIndexReply::Index(i) => i,
            crate::rpc::ReadIndexReply::NotLeader {
                leader_id,
                leader_addr,
            } => {
                return AwaitAppliedReply::NotLeader {
                    leader_id,
                    leader_addr,
                };
            }
            crate::rpc::ReadIndexReply::Failed(e) => return AwaitAppliedReply::Failed(e),
        };
        let index = index.max(committed);
        let deadline = Instant::now() + timeout;
        let mut changes = self.changes();
        loop {
            // The leader's own replica, then every other live broker's report.
            let me = self.node_id;
            let lagging = if self.applied_index() < index {
                vec![me]
            } else {
                self.read(|st| self.liveness.lock().lagging(st, index, me))
            };
            if lagging.is_empty() {
                return AwaitAppliedReply::Done;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return AwaitAppliedReply::Failed(format!(
                    "brokers {lagging:?} have not applied metadata index {index} yet"
                ));
            }
            // Heartbeats do not bump `changes`: poll at a fraction of their interval.
            let _ =
                tokio::time::timeout(remaining.min(Duration::from_millis(50)), changes.changed())
                    .await;
        }
    }
}

/// A request to the leader to wait until every live broker has applied `index`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AwaitAppliedRequest {
    pub index: u64,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum AwaitAppliedReply {
    Done,
    Failed(String),
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
}

/// How recent a quorum's acknowledgement must be for the leader to answer heartbeats. Raft
/// heartbeats go out every 100 ms, so a connected leader is always well inside it. It is the
/// shortest election timeout: a leader partitioned away stops answering before a new leader
/// can exist, and its brokers expire (session minus two intervals after their last answer)
/// before that new leader fences anyone (a full session after it is elected).
pub(crate) const LEADER_LEASE: Duration = Duration::from_millis(250);

async fn heartbeat_loop(
    node: Weak<MetaNode>,
    id: u64,
    epoch: u64,
    interval: Duration,
    session: Duration,
    tx: watch::Sender<BrokerStatus>,
) {
    // Expire before the leader can fence: its deadline runs from the last heartbeat it
    // received, which is no earlier than the last one answered here.
    let expiry = session.saturating_sub(interval * 2).max(interval);
    let mut last_ok = Instant::now();
    let mut req = HeartbeatRequest {
        id,
        epoch,
        applied: 0,
    };
    loop {
        let Some(n) = node.upgrade() else {
            return;
        };
        req.applied = n.applied_index();
        let reply = send_heartbeat(&n, &req, interval).await;
        drop(n);
        let status = match reply {
            Some(HeartbeatReply::Live) => {
                last_ok = Instant::now();
                BrokerStatus::Live
            }
            Some(HeartbeatReply::Fenced | HeartbeatReply::Reregister) => BrokerStatus::Fenced,
            Some(HeartbeatReply::NotLeader { .. }) | None => {
                if last_ok.elapsed() >= expiry {
                    BrokerStatus::Expired
                } else {
                    *tx.borrow()
                }
            }
        };
        tx.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
        if status == BrokerStatus::Fenced {
            // Final for this epoch: the broker registers again and starts new heartbeats.
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

/// One heartbeat to whoever leads (here or over RPC); `None` when nobody answered.
async fn send_heartbeat(
    node: &MetaNode,
    req: &HeartbeatRequest,
    timeout: Duration,
) -> Option<HeartbeatReply> {
    let mut target = node.known_leader();
    for _ in 0..3 {
        let reply = match &target {
            Some((leader, addr)) if *leader != node.node_id => {
                let call = PbRequest::new(Kind::Heartbeat, req).ok()?;
                match node.peer(*leader, addr).call(&call, timeout).await {
                    Ok(r) => r.decode_body::<HeartbeatReply>().ok()?,
                    Err(
                        CallError::Unreachable(_) | CallError::Network(_) | CallError::Timeout(_),
                    ) => {
                        return None;
                    }
                }
            }
            Some(_) => node.heartbeat_here(req),
            None => return None,
        };
        match reply {
            HeartbeatReply::NotLeader {
                leader_id: Some(id),
                leader_addr: Some(addr),
            } => target = Some((id, addr)),
            HeartbeatReply::NotLeader { .. } => return None,
            other => return Some(other),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BrokerRegistration, PartitionMeta, TopicMeta};

    const SESSION: Duration = Duration::from_millis(1500);

    fn state(brokers: &[(u64, u64, bool)], owners: &[u64]) -> ClusterState {
        let mut s = ClusterState::default();
        for &(id, epoch, fenced) in brokers {
            s.brokers.insert(
                id,
                BrokerRegistration {
                    epoch,
                    incarnation: [id as u8; 16],
                    fenced,
                    fenced_at_ms: 0,
                },
            );
        }
        s.topics.insert(
            "t".into(),
            TopicMeta {
                name: "t".into(),
                id: [1; 16],
                configs: Default::default(),
                partitions: owners
                    .iter()
                    .enumerate()
                    .map(|(i, &owner)| PartitionMeta {
                        stream_id: i as u64 + 1,
                        owner,
                    })
                    .collect(),
                created_at_ms: 0,
            },
        );
        s
    }

    /// Every broker of `s` with a listener on 127.0.0.1, port 9000 + its id.
    fn with_listeners(mut s: ClusterState) -> ClusterState {
        let ids: Vec<u64> = s.brokers.keys().copied().collect();
        for id in ids {
            s.nodes.insert(
                id,
                crate::NodeMeta {
                    id,
                    host: "127.0.0.1".into(),
                    port: 9000 + id as u16,
                    rack: None,
                },
            );
        }
        s
    }

    fn fences(cmds: &[Command]) -> Vec<(u64, u64)> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::FenceBroker { id, epoch, .. } => Some((*id, *epoch)),
                _ => None,
            })
            .collect()
    }

    fn moves(cmds: &[Command]) -> Vec<(u32, u64, u64)> {
        cmds.iter()
            .flat_map(|c| match c {
                Command::MovePartitions { moves } => {
                    moves.iter().map(|m| (m.partition, m.from, m.to)).collect()
                }
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn a_broker_is_fenced_only_once_its_session_has_passed_without_a_heartbeat() {
        let st = state(&[(1, 5, false), (2, 6, false), (3, 7, false)], &[]);
        let mut l = Liveness::new(SESSION);
        let t0 = Instant::now();
        // First sight: everyone gets a full session, nobody is fenced.
        assert!(l.plan(&st, t0).is_empty());
        assert_eq!(
            l.heartbeat(&st, 1, 5, t0 + SESSION / 2),
            HeartbeatReply::Live
        );
        // Broker 3 keeps heartbeating throughout.
        l.heartbeat(&st, 3, 7, t0 + SESSION);
        l.heartbeat(&st, 3, 7, t0 + SESSION * 3 / 2);
        // Broker 2 never heartbeated: fenced at its epoch once the session is over.
        let cmds = l.plan(&st, t0 + SESSION);
        assert_eq!(fences(&cmds), vec![(2, 6)]);
        // Broker 1's heartbeat moved its deadline to a session after it.
        let just_before = t0 + SESSION * 3 / 2 - Duration::from_millis(1);
        assert!(!fences(&l.plan(&st, just_before)).contains(&(1, 5)));
        assert!(fences(&l.plan(&st, t0 + SESSION * 3 / 2)).contains(&(1, 5)));
    }

    #[test]
    fn the_last_live_broker_is_never_fenced_nor_all_of_them_at_once() {
        let mut l = Liveness::new(SESSION);
        let t0 = Instant::now();
        // One node alone: nobody could take its partitions over.
        let alone = state(&[(1, 1, false)], &[1]);
        l.plan(&alone, t0);
        assert!(l.plan(&alone, t0 + SESSION * 5).is_empty());
        // Everyone silent at once (the controller itself stalled): nobody is fenced.
        let three = state(&[(1, 1, false), (2, 2, false), (3, 3, false)], &[]);
        let mut l = Liveness::new(SESSION);
        l.plan(&three, t0);
        assert!(fences(&l.plan(&three, t0 + SESSION * 2)).is_empty());
        // Two of three silent: those two are fenced.
        l.heartbeat(&three, 1, 1, t0 + SESSION * 2);
        assert_eq!(
            fences(&l.plan(&three, t0 + SESSION * 2)),
            vec![(2, 2), (3, 3)]
        );
    }

    #[test]
    fn a_new_leader_gives_every_broker_a_full_session() {
        let st = state(&[(1, 1, false), (2, 2, false), (3, 3, false)], &[]);
        let mut l = Liveness::new(SESSION);
        let t0 = Instant::now();
        l.plan(&st, t0);
        // Leadership lost and regained much later: the deadlines start again.
        l.clear();
        let later = t0 + SESSION * 10;
        assert!(
            l.plan(&st, later).is_empty(),
            "nobody fenced at the first tick"
        );
        assert!(
            l.plan(&st, later + SESSION - Duration::from_millis(1))
                .is_empty()
        );
    }

    #[test]
    fn a_broker_whose_heartbeat_connection_ends_is_probed_at_once() {
        let mut st = state(&[(1, 1, false), (2, 2, false)], &[]);
        st.nodes.insert(
            2,
            crate::NodeMeta {
                id: 2,
                host: "127.0.0.1".into(),
                port: 9002,
                rack: None,
            },
        );
        let mut l = Liveness::new(SESSION);
        let t0 = Instant::now();
        l.plan(&st, t0);
        l.heartbeat(&st, 2, 2, t0);
        assert!(l.take_probes(&st, 1, t0).is_empty());
        // A killed process's sockets close with it: no need to wait for its silence.
        l.suspect(2);
        assert_eq!(
            l.take_probes(&st, 1, t0),
            vec![(2, 2, "127.0.0.1".to_string(), 9002)]
        );
        // Answered (the connection was merely closed): nobody is fenced, and the suspicion
        // was used up.
        l.probed(2, 2, false);
        assert!(fences(&l.plan(&st, t0)).is_empty());
        assert!(l.take_probes(&st, 1, t0).is_empty());
    }

    #[test]
    fn a_controller_that_stalled_fences_nobody_for_the_heartbeats_it_did_not_read() {
        let st = state(&[(1, 1, false), (2, 2, false), (3, 3, false)], &[]);
        let mut l = Liveness::new(SESSION);
        let t0 = Instant::now();
        l.plan(&st, t0);
        for id in 1..=3 {
            l.heartbeat(&st, id, id, t0);
        }
        // Paused for two sessions: the brokers heartbeated all along, unread.
        let resumed = t0 + SESSION * 2;
        l.resumed(SESSION * 2);
        assert!(fences(&l.plan(&st, resumed)).is_empty());
        // Their queued heartbeats arrive; broker 2 stays silent a whole session after.
        let later = resumed + SESSION;
        for id in [1, 3] {
            l.heartbeat(&st, id, id, resumed);
            l.heartbeat(&st, id, id, later);
        }
        assert_eq!(fences(&l.plan(&st, later)), vec![(2, 2)]);
    }

    #[test]
    fn a_new_leader_probes_every_broker_at_once_and_fences_the_dead_ones() {
        let st = with_listeners(state(&[(1, 1, false), (2, 2, false), (3, 3, false)], &[]));
        // Node 1 just started leading: no sessions, no heartbeats yet. The old leader may
        // have died with others, so each broker but itself is probed now, not after
        // PROBE_AFTER of silence.
        let mut l = Liveness::new(SESSION);
        let t0 = Instant::now();
        l.suspect_all(&st);
        assert_eq!(
            l.take_probes(&st, 1, t0),
            vec![
                (2, 2, "127.0.0.1".to_string(), 9002),
                (3, 3, "127.0.0.1".to_string(), 9003)
            ]
        );
        l.probed(2, 2, false);
        l.probed(3, 3, true);
        // The refused one is fenced at the first plan; the one that answered has a full
        // session (KAFKA-15019: a metadata failover fences no healthy broker).
        assert_eq!(fences(&l.plan(&st, t0)), vec![(3, 3)]);
        assert!(l.take_probes(&st, 1, t0).is_empty());
    }

    #[test]
    fn a_silent_broker_whose_port_refuses_is_fenced_before_its_session_ends() {
        let st = with_listeners(state(&[(1, 1, false), (2, 2, false), (3, 3, false)], &[]));
        let mut l = Liveness::new(SESSION);
        let t0 = Instant::now();
        l.plan(&st, t0);
        l.heartbeat(&st, 2, 2, t0);
        l.heartbeat(&st, 3, 3, t0);
        // Nobody has been silent long enough to be probed, and the controller never probes
        // its own broker.
        assert!(l.take_probes(&st, 1, t0 + PROBE_AFTER / 2).is_empty());
        let later = t0 + PROBE_AFTER;
        l.heartbeat(&st, 3, 3, later);
        let probes = l.take_probes(&st, 1, later);
        assert_eq!(probes, vec![(2, 2, "127.0.0.1".to_string(), 9002)]);
        // One probe at a time per broker.
        assert!(l.take_probes(&st, 1, later).is_empty());
        // The connect was refused: fenced at the next tick, long before the session is over.
        l.probed(2, 2, true);
        assert_eq!(fences(&l.plan(&st, later)), vec![(2, 2)]);
    }

    #[test]
    fn a_probe_that_is_answered_or_about_an_older_process_fences_nobody() {
        let mut st = state(&[(1, 1, false), (2, 5, false)], &[]);
        st.nodes.insert(
            2,
            crate::NodeMeta {
                id: 2,
                host: "127.0.0.1".into(),
                port: 9002,
                rack: None,
            },
        );
        let mut l = Liveness::new(SESSION);
        let t0 = Instant::now();
        l.plan(&st, t0);
        let t = t0 + PROBE_AFTER;
        assert_eq!(l.take_probes(&st, 1, t).len(), 1);
        // Accepted (or timed out): a paused or cut-off node keeps its session.
        l.probed(2, 5, false);
        assert!(l.plan(&st, t).is_empty());
        // Refused, but the broker heartbeats after all: the heartbeat wins.
        assert_eq!(l.take_probes(&st, 1, t).len(), 1);
        l.probed(2, 5, true);
        l.heartbeat(&st, 2, 5, t);
        assert!(l.plan(&st, t).is_empty());
        // A refusal recorded for an older process of the broker does not fence the new one.
        l.probed(2, 4, true);
        assert!(l.plan(&st, t + Duration::from_millis(1)).is_empty());
    }

    #[test]
    fn heartbeats_are_answered_by_the_registration() {
        let st = state(&[(1, 4, false), (2, 9, true)], &[]);
        let mut l = Liveness::new(SESSION);
        let now = Instant::now();
        assert_eq!(l.heartbeat(&st, 1, 4, now), HeartbeatReply::Live);
        // An older process of broker 1, and an unknown broker, must register (again).
        assert_eq!(l.heartbeat(&st, 1, 3, now), HeartbeatReply::Reregister);
        assert_eq!(l.heartbeat(&st, 7, 1, now), HeartbeatReply::Reregister);
        assert_eq!(l.heartbeat(&st, 2, 9, now), HeartbeatReply::Fenced);
    }

    #[test]
    fn a_fenced_brokers_partitions_spread_over_the_live_brokers_least_loaded_first() {
        // Broker 3 is fenced with four partitions; 1 owns one already, 2 none.
        let st = state(
            &[(1, 1, false), (2, 2, false), (3, 3, true)],
            &[3, 1, 3, 3, 3],
        );
        let mut l = Liveness::new(SESSION);
        let m = moves(&l.plan(&st, Instant::now()));
        assert_eq!(m, vec![(0, 3, 2), (2, 3, 1), (3, 3, 2), (4, 3, 1)]);
        // Owners that never registered as brokers (a single node of old) stay put, and
        // nothing moves while no broker is live.
        let st = state(&[(3, 3, true)], &[3, 9]);
        assert!(moves(&l.plan(&st, Instant::now())).is_empty());
    }

    #[test]
    fn a_dead_owners_topic_spreads_over_the_survivors_whatever_else_they_own() {
        // Broker 1 owns a 50-partition internal topic, broker 2 nothing; fenced broker 3 owned
        // the 4 partitions of "t". By total alone, broker 2 would take all four.
        let mut st = state(&[(1, 1, false), (2, 2, false), (3, 3, true)], &[3, 3, 3, 3]);
        st.topics.insert(
            "__big".into(),
            TopicMeta {
                name: "__big".into(),
                id: [2; 16],
                configs: Default::default(),
                partitions: (0..50)
                    .map(|i| PartitionMeta {
                        stream_id: 100 + i,
                        owner: 1,
                    })
                    .collect(),
                created_at_ms: 0,
            },
        );
        let mut l = Liveness::new(SESSION);
        let m = moves(&l.plan(&st, Instant::now()));
        let to = |b: u64| m.iter().filter(|(_, _, to)| *to == b).count();
        assert_eq!((to(1), to(2)), (2, 2), "{m:?}");
    }
}
