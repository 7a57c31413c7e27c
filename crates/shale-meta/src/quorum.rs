//! Who takes part in the metadata quorum: voters, and learners that keep a full read replica
//! without a vote.
//!
//! - A node outside `controller.quorum.voters` (Kafka's `process.roles=broker`) is a
//!   learner: at its first start it asks the leader to add it (`AddLearner`, through any
//!   voter), then receives the log like a voter. It forwards writes and reads through a read
//!   barrier like any node; losing it never costs the quorum.
//! - Voters change at run time one at a time: a learner that has caught up is promoted
//!   (`AddVoter`), a voter demoted to a learner (`RemoveVoter`). openraft runs each change
//!   through a joint configuration, so no two majorities can exist during it.
//!
//! Every change is made by the leader; the others forward it there, following leader hints
//! for up to `FORWARD_DEADLINE`, as writes do.

use crate::MetaNode;
use crate::cluster::FORWARD_DEADLINE;
use crate::rpc::{CallError, Kind, PbRequest, WriteReply};
use crate::types::Response;
use openraft::BasicNode;
use openraft::ChangeMembers;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;

/// One change of the quorum's membership.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum MembershipChange {
    /// Adds (or re-adds, with a new address) a non-voting replica.
    AddLearner { id: u64, addr: String },
    /// Makes a learner a voter.
    AddVoter { id: u64 },
    /// Makes a voter a learner (it keeps its replica).
    RemoveVoter { id: u64 },
}

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_PAUSE: Duration = Duration::from_millis(100);

impl MetaNode {
    /// The voters of the quorum's current configuration (both halves of a joint one).
    pub fn voter_ids(&self) -> BTreeSet<u64> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config.membership().voter_ids().collect()
    }

    /// The learners of the quorum's current configuration.
    pub fn learner_ids(&self) -> BTreeSet<u64> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config.membership().learner_ids().collect()
    }

    /// Promotes learner `id` to voter. Fails when it is not a learner of the quorum.
    pub async fn add_voter(&self, id: u64) -> Result<(), crate::MetaError> {
        self.change_membership(MembershipChange::AddVoter { id })
            .await
            .map_err(crate::MetaError::from)
    }

    /// Demotes voter `id` to learner. The last voter cannot be removed.
    pub async fn remove_voter(&self, id: u64) -> Result<(), crate::MetaError> {
        self.change_membership(MembershipChange::RemoveVoter { id })
            .await
            .map_err(crate::MetaError::from)
    }

    /// Applies `change` at the leader, wherever it is.
    pub(crate) async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<(), crate::WriteError> {
        let deadline = Instant::now() + FORWARD_DEADLINE;
        let mut target = self.known_leader();
        loop {
            let reply = match &target {
                Some((id, addr)) if *id != self.node_id => {
                    self.forward_change(*id, addr, &change).await?
                }
                Some(_) => self.change_membership_here(change.clone()).await,
                // No leader known (a learner before it heard from anyone): ask the voters.
                None => self.ask_voters(&change).await,
            };
            match reply {
                WriteReply::Applied(_) => return Ok(()),
                e @ (WriteReply::MayHaveApplied(_) | WriteReply::Failed(_)) => {
                    return Err(crate::cluster::write_error(e));
                }
                WriteReply::NotLeader {
                    leader_id,
                    leader_addr,
                } => {
                    if Instant::now() >= deadline {
                        return Err(crate::WriteError::Unavailable(
                            "no metadata leader reachable".into(),
                        ));
                    }
                    let next = match (leader_id, leader_addr) {
                        (Some(id), Some(addr)) => Some((id, self.address_of(id, &addr))),
                        _ => self.known_leader(),
                    };
                    if next.is_none() || next == target {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    target = next;
                }
            }
        }
    }

    async fn forward_change(
        &self,
        id: u64,
        addr: &str,
        change: &MembershipChange,
    ) -> Result<WriteReply, crate::WriteError> {
        let req = PbRequest::new(Kind::ChangeMembership, change)
            .map_err(|e| crate::WriteError::Unavailable(e.to_string()))?;
        match self.peer(id, addr).call(&req, CALL_TIMEOUT).await {
            Ok(reply) => reply
                .decode_body::<WriteReply>()
                .map_err(|e| crate::WriteError::Indeterminate(e.to_string())),
            Err(CallError::Unreachable(_)) => Ok(WriteReply::NotLeader {
                leader_id: None,
                leader_addr: None,
            }),
            // Membership changes are idempotent: asking again is safe.
            Err(e) => {
                tracing::debug!(error = %e, "membership change to {addr} failed; retrying");
                Ok(WriteReply::NotLeader {
                    leader_id: None,
                    leader_addr: None,
                })
            }
        }
    }

    /// The first voter that answers with a result or a leader hint.
    async fn ask_voters(&self, change: &MembershipChange) -> WriteReply {
        for (id, addr) in self.addresses.iter() {
            if *id == self.node_id {
                continue;
            }
            match self.forward_change(*id, addr, change).await {
                Ok(WriteReply::NotLeader {
                    leader_id: None, ..
                })
                | Err(_) => continue,
                Ok(reply) => return reply,
            }
        }
        WriteReply::NotLeader {
            leader_id: None,
            leader_addr: None,
        }
    }

    /// Makes `change` here if this node leads.
    pub(crate) async fn change_membership_here(&self, change: MembershipChange) -> WriteReply {
        let result = match change {
            MembershipChange::AddLearner { id, addr } => {
                self.raft.add_learner(id, BasicNode::new(addr), false).await
            }
            MembershipChange::AddVoter { id } => {
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                    .await
            }
            MembershipChange::RemoveVoter { id } => {
                if self.voter_ids() == BTreeSet::from([id]) {
                    return WriteReply::Failed("the last voter cannot be removed".into());
                }
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true)
                    .await
            }
        };
        match result {
            Ok(_) => WriteReply::Applied(Response::Ok),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                WriteReply::NotLeader {
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                }
            }
            Err(e) => WriteReply::Failed(e.to_string()),
        }
    }

    /// A learner's first start: asks the leader to add it, then waits until the membership
    /// names it (its replica is then being fed).
    pub(crate) async fn join_as_learner(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let change = MembershipChange::AddLearner {
            id: self.node_id,
            addr: addr.to_string(),
        };
        loop {
            match self.change_membership(change.clone()).await {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    tracing::info!(error = %e, "joining the metadata quorum as a learner; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => anyhow::bail!("joining the metadata quorum as a learner: {e}"),
            }
        }
        let id = self.node_id;
        self.raft
            .wait(Some(deadline.saturating_duration_since(Instant::now())))
            .metrics(
                |m| {
                    m.membership_config
                        .membership()
                        .learner_ids()
                        .any(|l| l == id)
                },
                "the membership names this learner",
            )
            .await
            .map_err(|e| anyhow::anyhow!("waiting to be a learner: {e}"))?;
        Ok(())
    }
}
