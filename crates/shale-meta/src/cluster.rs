//! The metadata quorum across processes: the RPC server every voter runs, writes forwarded
//! to the leader, and linearizable reads on any node.
//!
//! Writes: a command proposed on a follower is sent to the leader (`ClientWrite`), which
//! commits it; a stale leader hint is followed for up to [`FORWARD_DEADLINE`]. An answer
//! lost after the request left (connection cut, timeout) is reported as such, never as a
//! failure the caller could safely retry as if nothing happened.
//!
//! Reads: [`MetaNode::read_barrier`] makes the local replica at least as new as every write
//! acknowledged before the call. On the leader it is openraft's `ensure_linearizable` (a
//! quorum round, ReadIndex); elsewhere the leader's read index is fetched (`ReadIndex`) and
//! the local state machine waited on up to it. `is_leader()` alone proves nothing: a deposed
//! leader still believes it leads until it hears otherwise.

use crate::rpc::{
    CallError, Kind, PbReply, PbRequest, Peer, ReadIndexReply, SnapshotHead, WriteReply,
    WriteRequest, read_frame, write_frame,
};
use crate::types::{Command, Response, Snapshot, TypeConfig};
use crate::{MetaError, MetaNode, WriteError};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, ReadPolicy, VoteRequest};
use std::io;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// How long a write or a read barrier follows leader hints before giving up.
pub(crate) const FORWARD_DEADLINE: Duration = Duration::from_secs(10);
/// One forwarded request's deadline (a commit needs a quorum round and an fsync).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts while no leader is known or a hint led nowhere.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Serves opaque requests from other nodes beside Raft (the broker's inter-broker
/// requests), over the same transport, so they share its mutual TLS.
#[async_trait::async_trait]
pub trait NodeCallHandler: Send + Sync + 'static {
    /// `from` is the calling node as its certificate names it (`None` without mTLS).
    async fn handle(
        &self,
        from: Option<u64>,
        request: bytes::Bytes,
    ) -> Result<bytes::Bytes, String>;
}

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves Raft and forwarded requests on `listener` until the node is dropped. Under mTLS
/// each connection first completes a handshake whose client certificate names a node id.
pub(crate) async fn serve(listener: TcpListener, node: Weak<MetaNode>) {
    let acceptor = node.upgrade().and_then(|n| {
        n.tls
            .as_ref()
            .map(|t| TlsAcceptor::from(Arc::clone(&t.server)))
    });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "metadata rpc accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if node.strong_count() == 0 {
            return;
        }
        let _ = stream.set_nodelay(true);
        match &acceptor {
            None => {
                tokio::spawn(serve_connection(stream, peer, node.clone(), None));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let node = node.clone();
                tokio::spawn(async move {
                    if let Some((tls, id)) = accept_node(&acceptor, stream, peer).await {
                        serve_connection(tls, peer, node, Some(id)).await;
                    }
                });
            }
        }
    }
}

/// The TLS handshake with a peer and the node id its certificate names; `None` (logged)
/// when either fails.
async fn accept_node(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: std::net::SocketAddr,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, u64)> {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        // A peer that gave up connecting (its call timed out) ends the handshake early:
        // not a refusal.
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            tracing::debug!(%peer, error = %e, "metadata rpc: TLS handshake cut short");
            return None;
        }
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "metadata rpc: TLS handshake failed");
            metrics::counter!("shale_node_authentication_failures_total").increment(1);
            return None;
        }
        Err(_) => {
            tracing::warn!(%peer, "metadata rpc: TLS handshake timed out");
            return None;
        }
    };
    // The verifier required a certificate from the cluster CA; it must also be a node's.
    let named = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| "no certificate".to_string())
        .and_then(|c| shale_security::node::node_id_of(c));
    match named {
        Ok(id) => Some((tls, id)),
        Err(reason) => {
            tracing::warn!(%peer, %reason, "metadata rpc: refused a peer that is not a node");
            metrics::counter!("shale_node_authentication_failures_total").increment(1);
            None
        }
    }
}

/// Serves one connection's requests in turn. `from` is the node id the peer's certificate
/// names (under mTLS): what it claims in its requests must be that id.
async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: std::net::SocketAddr,
    node: Weak<MetaNode>,
    from: Option<u64>,
) {
    // The broker that heartbeats on this connection: when the connection ends, the
    // controller probes it at once (see `Liveness::suspect`).
    let mut heartbeats_from = None;
    loop {
        let req: PbRequest = match read_frame(&mut stream).await {
            Ok(r) => r,
            Err(e) => {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    tracing::debug!(%peer, error = %e, "metadata rpc connection closed");
                }
                if let (Some(id), Some(node)) = (heartbeats_from, node.upgrade()) {
                    node.liveness.lock().suspect(id);
                    node.shared.controller_wake.notify_one();
                }
                return;
            }
        };
        let Some(node) = node.upgrade() else {
            return;
        };
        if heartbeats_from.is_none()
            && req.kind() == Some(Kind::Heartbeat)
            && let Ok(hb) = req.decode_body::<crate::rpc::HeartbeatRequest>()
            && from.is_none_or(|f| f == hb.id)
        {
            heartbeats_from = Some(hb.id);
        }
        let reply = node.handle_rpc(req, from).await;
        drop(node);
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "bad metadata rpc request; closing");
                return;
            }
        };
        if write_frame(&mut stream, &reply).await.is_err() {
            return;
        }
    }
}

/// The node a Raft vote is for: the sender of AppendEntries, snapshots and vote requests.
fn leader_of(vote: &crate::types::Vote) -> u64 {
    use openraft::vote::RaftLeaderId;
    *vote.leader_id().node_id()
}

/// Refuses a request made in another node's name: `claimed` is the node id inside the
/// request, `from` the one the peer's certificate names (`None` without mTLS).
fn check_claim(from: Option<u64>, claimed: u64, what: &str) -> io::Result<()> {
    match from {
        Some(from) if from != claimed => {
            metrics::counter!("shale_node_authentication_failures_total").increment(1);
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("node {from} sent {what} in the name of node {claimed}"),
            ))
        }
        _ => Ok(()),
    }
}

impl MetaNode {
    async fn handle_rpc(&self, req: PbRequest, from: Option<u64>) -> io::Result<PbReply> {
        match req.kind() {
            Some(Kind::AppendEntries) => {
                let rpc: AppendEntriesRequest<TypeConfig> = req.decode_body()?;
                check_claim(from, leader_of(&rpc.vote), "AppendEntries")?;
                PbReply::new(&self.raft.append_entries(rpc).await)
            }
            Some(Kind::Vote) => {
                let rpc: VoteRequest<TypeConfig> = req.decode_body()?;
                check_claim(from, leader_of(&rpc.vote), "a vote request")?;
                PbReply::new(&self.raft.vote(rpc).await)
            }
            Some(Kind::TransferLeader) => {
                let rpc: openraft::raft::TransferLeaderRequest<TypeConfig> = req.decode_body()?;
                check_claim(from, leader_of(rpc.from_leader()), "TransferLeader")?;
                // In the form every Raft answer takes on the wire (`raft_call` reads it).
                let answer = self
                    .raft
                    .handle_transfer_leader(rpc)
                    .await
                    .map_err(RaftError::<TypeConfig>::Fatal);
                PbReply::new(&answer)
            }
            Some(Kind::InstallSnapshot) => {
                let head: SnapshotHead = req.decode_body()?;
                check_claim(from, leader_of(&head.vote), "a snapshot")?;
                let snapshot = Snapshot {
                    meta: head.meta,
                    snapshot: req.data,
                };
                PbReply::new(&self.raft.install_full_snapshot(head.vote, snapshot).await)
            }
            Some(Kind::ClientWrite) => {
                let w: WriteRequest = req.decode_body()?;
                PbReply::new(&self.write_here(w.command).await)
            }
            Some(Kind::ReadIndex) => PbReply::new(&self.read_index_here().await),
            Some(Kind::ChangeMembership) => {
                let change: crate::quorum::MembershipChange = req.decode_body()?;
                // A node adds itself as a learner; voter changes are operators' calls,
                // relayed by whichever node received them.
                if let crate::quorum::MembershipChange::AddLearner { id, .. } = &change {
                    check_claim(from, *id, "a learner registration")?;
                }
                PbReply::new(&self.change_membership_here(change).await)
            }
            Some(Kind::Heartbeat) => {
                let hb: crate::rpc::HeartbeatRequest = req.decode_body()?;
                check_claim(from, hb.id, "a heartbeat")?;
                PbReply::new(&self.heartbeat_here(&hb))
            }
            Some(Kind::AwaitApplied) => {
                let r: crate::liveness::AwaitAppliedRequest = req.decode_body()?;
                // Bounded whatever the caller asks: the connection is blocked meanwhile.
                let timeout = Duration::from_millis(r.timeout_ms.min(30_000));
                PbReply::new(&self.await_applied_here(r.index, timeout).await)
            }
            Some(Kind::NodeCall) => {
                let handler = {
                    let handlers = self.node_calls.read();
                    handlers
                        .get(&self.node_id)
                        .or_else(|| handlers.values().next())
                        .cloned()
                };
                let answer = match handler {
                    Some(h) => h.handle(from, bytes::Bytes::from(req.data)).await,
                    None => Err("this node serves no node calls".to_string()),
                };
                match answer {
                    Ok(data) => {
                        let mut reply = PbReply::new(&Ok::<(), String>(()))?;
                        reply.data = data.into();
                        Ok(reply)
                    }
                    Err(e) => PbReply::new(&Err::<(), String>(e)),
                }
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown request kind {}", req.kind),
            )),
        }
    }

    /// Sends `request` to node `id`'s [`NodeCallHandler`] over the node-to-node transport
    /// (mutual TLS when configured) and returns its answer.
    pub async fn call_node(
        &self,
        id: u64,
        request: bytes::Bytes,
        timeout: Duration,
    ) -> Result<bytes::Bytes, String> {
        // A node this process serves (itself) is called in-process, on the same path.
        let local = self.node_calls.read().get(&id).cloned();
        if let Some(handler) = local {
            return handler.handle(None, request).await;
        }
        let addr = self
            .rpc_address(id)
            .ok_or_else(|| format!("node {id} is not in the metadata quorum's membership"))?;
        let mut req = PbRequest::new(Kind::NodeCall, &()).map_err(|e| e.to_string())?;
        req.data = request.into();
        let reply = self
            .peer(id, &addr)
            .call(&req, timeout)
            .await
            .map_err(|e| e.to_string())?;
        let answer: Result<(), String> = reply.decode_body().map_err(|e| e.to_string())?;
        answer.map(|()| bytes::Bytes::from(reply.data))
    }

    /// Registers what serves [`MetaNode::call_node`] requests for broker node `id` here.
    pub fn set_node_call_handler(&self, id: u64, handler: Arc<dyn NodeCallHandler>) {
        self.node_calls.write().insert(id, handler);
    }

    /// Proposes on this node's Raft: committed if it leads, else a hint where the leader is.
    async fn write_here(&self, cmd: Command) -> WriteReply {
        let write = self.raft.client_write(cmd);
        let result = if self.single_voter {
            write.await
        } else {
            // A leader cut off from its quorum would wait for the commit forever.
            match tokio::time::timeout(FORWARD_DEADLINE, write).await {
                Ok(r) => r,
                Err(_) => {
                    return WriteReply::MayHaveApplied(format!(
                        "not committed within {FORWARD_DEADLINE:?} (no quorum?)"
                    ));
                }
            }
        };
        match result {
            Ok(r) => WriteReply::Applied(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                WriteReply::NotLeader {
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                }
            }
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => {
                WriteReply::MayHaveApplied(format!(
                    "leadership moved before the write committed (leader now {:?})",
                    f.leader_id
                ))
            }
            Err(e) => WriteReply::Failed(e.to_string()),
        }
    }

    pub(crate) async fn read_index_here(&self) -> ReadIndexReply {
        match self.raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
            Ok(lin) => ReadIndexReply::Index(lin.read_log_id().index()),
            Err(e) => match e.forward_to_leader() {
                Some(f) => ReadIndexReply::NotLeader {
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.clone().map(|n| n.addr),
                },
                None => ReadIndexReply::Failed(e.to_string()),
            },
        }
    }

    /// Where this node reaches node `id`'s metadata RPC listener, if `id` is in the quorum's
    /// membership (voters and learners: every node).
    pub(crate) fn rpc_address(&self, id: u64) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let recorded = &m.membership_config.get_node(&id)?.addr;
        Some(self.address_of(id, recorded))
    }

    /// The leader this node knows of, with its RPC address.
    pub(crate) fn known_leader(&self) -> Option<(u64, String)> {
        let id = self.raft.metrics().borrow_watched().current_leader?;
        Some((id, self.rpc_address(id)?))
    }

    /// Whether a quorum acknowledged this leader within [`crate::liveness::LEADER_LEASE`] (a single voter
    /// always holds it).
    pub(crate) fn holds_leader_lease(&self) -> bool {
        if self.single_voter {
            return true;
        }
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.last_quorum_acked.as_ref().is_some_and(|acked| {
            openraft::Instant::elapsed(&acked.into_inner()) < crate::liveness::LEADER_LEASE
        })
    }

    /// The last metadata log index applied here.
    pub fn applied_index(&self) -> u64 {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.last_applied.map_or(0, |l| l.index())
    }

    /// Gauges of this node's view of the quorum (the controller tick refreshes them).
    pub(crate) fn record_gauges(&self) {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let leader = m.current_leader;
        metrics::gauge!("shale_metadata_leader_id").set(leader.map_or(-1.0, |l| l as f64));
        metrics::gauge!("shale_metadata_is_leader").set(if leader == Some(self.node_id) {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("shale_metadata_term").set(m.current_term as f64);
        metrics::gauge!("shale_metadata_applied_index")
            .set(m.last_applied.map_or(0.0, |l| l.index() as f64));
    }

    /// Where this node reaches peer `id`: its own `controller.quorum.voters` entry when it
    /// has one (as in Kafka, each node's configuration says how it reaches the voters, so a
    /// node behind NAT or a proxy can differ), else the address the membership records.
    pub(crate) fn address_of(&self, id: u64, recorded: &str) -> String {
        self.addresses
            .get(&id)
            .cloned()
            .unwrap_or_else(|| recorded.to_string())
    }

    /// The connection pool to node `id` at `addr` (under mTLS its certificate must name
    /// `id`; a node that moved address gets a new pool).
    pub(crate) fn peer(&self, id: u64, addr: &str) -> Arc<Peer> {
        self.peers
            .lock()
            .entry((id, addr.to_string()))
            .or_insert_with(|| Arc::new(Peer::new(addr, self.tls.as_ref(), Some(id))))
            .clone()
    }

    /// Where to send the next attempt: here, a hinted leader, or the known leader.
    fn next_target(&self, hint: Option<(Option<u64>, Option<String>)>) -> Option<(u64, String)> {
        match hint {
            Some((Some(id), Some(addr))) => Some((id, self.address_of(id, &addr))),
            _ => self.known_leader(),
        }
    }

    /// Proposes `cmd` and waits until it is applied, wherever the leader is.
    pub(crate) async fn submit(&self, cmd: Command) -> Result<Response, WriteError> {
        let started = Instant::now();
        let r = self.submit_inner(cmd).await;
        metrics::histogram!("shale_metadata_write_seconds").record(started.elapsed().as_secs_f64());
        if r.is_err() {
            metrics::counter!("shale_metadata_write_errors_total").increment(1);
        }
        r
    }

    async fn submit_inner(&self, cmd: Command) -> Result<Response, WriteError> {
        if self.single_voter {
            return match self.write_here(cmd).await {
                WriteReply::Applied(r) => Ok(r),
                WriteReply::NotLeader { .. } => Err(WriteError::Unavailable(
                    "this node does not lead the metadata quorum".into(),
                )),
                other => Err(write_error(other)),
            };
        }
        let deadline = Instant::now() + FORWARD_DEADLINE;
        let mut target = self.known_leader();
        loop {
            let reply = match &target {
                Some((id, addr)) if *id != self.node_id => {
                    let req = PbRequest::new(
                        Kind::ClientWrite,
                        &WriteRequest {
                            command: cmd.clone(),
                        },
                    )
                    .map_err(|e| WriteError::Unavailable(e.to_string()))?;
                    match self.peer(*id, addr).call(&req, CALL_TIMEOUT).await {
                        Ok(reply) => reply
                            .decode_body::<WriteReply>()
                            .map_err(|e| WriteError::Indeterminate(e.to_string()))?,
                        // Never sent: safe to try again once a leader is known.
                        Err(CallError::Unreachable(_)) => WriteReply::NotLeader {
                            leader_id: None,
                            leader_addr: None,
                        },
                        Err(e) => {
                            return Err(WriteError::Indeterminate(format!(
                                "forwarded metadata write to node {id}: {e}; it may have been applied"
                            )));
                        }
                    }
                }
                _ => self.write_here(cmd.clone()).await,
            };
            match reply {
                WriteReply::Applied(r) => return Ok(r),
                e @ (WriteReply::MayHaveApplied(_) | WriteReply::Failed(_)) => {
                    return Err(write_error(e));
                }
                WriteReply::NotLeader {
                    leader_id,
                    leader_addr,
                } => {
                    if Instant::now() >= deadline {
                        return Err(WriteError::Unavailable(
                            "no metadata leader reachable".into(),
                        ));
                    }
                    let next = self.next_target(Some((leader_id, leader_addr)));
                    if next.is_none() || next == target {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    target = next.or_else(|| self.known_leader());
                }
            }
        }
    }

    /// Waits until this node's replica has applied every write acknowledged (anywhere)
    /// before the call: reads after it are linearizable. Costs a quorum round on the leader,
    /// one RPC to the leader elsewhere; a single voter needs nothing.
    pub async fn read_barrier(&self) -> Result<(), MetaError> {
        if self.single_voter {
            return Ok(());
        }
        let deadline = Instant::now() + FORWARD_DEADLINE;
        let mut target = self.known_leader();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let answer = match &target {
                Some((id, addr)) if *id != self.node_id => {
                    let req = PbRequest::new(Kind::ReadIndex, &())
                        .map_err(|e| MetaError::Unavailable(e.to_string()))?;
                    match self
                        .peer(*id, addr)
                        .call(&req, CALL_TIMEOUT.min(remaining))
                        .await
                    {
                        Ok(reply) => reply
                            .decode_body::<ReadIndexReply>()
                            .map_err(|e| MetaError::Unavailable(e.to_string()))?,
                        // A read can always be asked again.
                        Err(_) => ReadIndexReply::NotLeader {
                            leader_id: None,
                            leader_addr: None,
                        },
                    }
                }
                _ => self.read_index_here().await,
            };
            match answer {
                ReadIndexReply::Index(index) => {
                    return self
                        .raft
                        .wait(Some(remaining.max(Duration::from_millis(1))))
                        .applied_index_at_least(Some(index), "metadata read barrier")
                        .await
                        .map(|_| ())
                        .map_err(|e| MetaError::Unavailable(e.to_string()));
                }
                ReadIndexReply::Failed(e) => return Err(MetaError::Unavailable(e)),
                ReadIndexReply::NotLeader {
                    leader_id,
                    leader_addr,
                } => {
                    if Instant::now() >= deadline {
                        return Err(MetaError::Unavailable(
                            "no metadata leader reachable".into(),
                        ));
                    }
                    let next = self.next_target(Some((leader_id, leader_addr)));
                    if next.is_none() || next == target {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    target = next.or_else(|| self.known_leader());
                }
            }
        }
    }

    /// The id of the node currently leading the metadata quorum, as this node knows it.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }
}

/// The error a failed [`WriteReply`] stands for (`Applied` and `NotLeader` are not errors).
pub(crate) fn write_error(reply: WriteReply) -> WriteError {
    match reply {
        WriteReply::MayHaveApplied(e) => WriteError::Indeterminate(e),
        WriteReply::Failed(e) => WriteError::Unavailable(e),
        WriteReply::Applied(r) => WriteError::Indeterminate(format!("unexpected answer {r:?}")),
        WriteReply::NotLeader { leader_id, .. } => {
            WriteError::Unavailable(format!("not the leader (leader {leader_id:?})"))
        }
    }
}
