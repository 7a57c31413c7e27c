//! openraft's network: Raft RPCs to peers over the node-to-node transport (`rpc`). A single
//! voter never calls it. Errors are mapped to what openraft backs off on: no connection is
//! `Unreachable`, a failure mid-call `Network`, a missed deadline `Timeout`, and a peer whose
//! Raft has stopped is `Unreachable` too.

use crate::rpc::{CallError, Kind, PbRequest, Peer, SnapshotHead};
use crate::types::{SnapshotData, TypeConfig, Vote};
use openraft::errors::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use serde::de::DeserializeOwned;
use std::future::Future;

/// Creates [`NetworkClient`]s for peers.
pub(crate) struct NetworkFactory {
    /// This node's id (for openraft's timeout errors).
    pub node_id: u64,
    /// This node's own addresses for peers (`MetaNode::address_of`).
    pub addresses: std::sync::Arc<std::collections::BTreeMap<u64, String>>,
    /// Node-to-node mTLS: each target's certificate must name it.
    pub tls: Option<shale_security::node::NodeTls>,
}

/// A client for one peer, with its own connection.
pub(crate) struct NetworkClient {
    node_id: u64,
    target: u64,
    peer: Peer,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = NetworkClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        NetworkClient {
            node_id: self.node_id,
            target,
            peer: Peer::new(
                self.addresses
                    .get(&target)
                    .cloned()
                    .unwrap_or_else(|| node.addr.clone()),
                self.tls.as_ref(),
                Some(target),
            ),
        }
    }
}

impl NetworkClient {
    /// One call whose reply is `Result<T, RaftError>` from the peer's Raft.
    async fn raft_call<T: DeserializeOwned>(
        &self,
        req: std::io::Result<PbRequest>,
        option: &RPCOption,
        action: openraft::RPCTypes,
    ) -> Result<T, RPCError<TypeConfig>> {
        let req = req.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let ttl = option.hard_ttl();
        let reply = self.peer.call(&req, ttl).await.map_err(|e| match e {
            CallError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Network(e) => RPCError::Network(NetworkError::new(&e)),
            CallError::Timeout(_) => RPCError::Timeout(Timeout {
                action,
                id: self.node_id,
                target: self.target,
                timeout: ttl,
            }),
        })?;
        let answer: Result<T, RaftError<TypeConfig>> = reply
            .decode_body()
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // The peer's Raft has stopped (shutting down): as good as unreachable.
        answer.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }
}

impl RaftNetworkV2<TypeConfig> for NetworkClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = PbRequest::new(Kind::AppendEntries, &rpc);
        self.raft_call(req, &option, openraft::RPCTypes::AppendEntries)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = PbRequest::new(Kind::Vote, &rpc);
        self.raft_call(req, &option, openraft::RPCTypes::Vote).await
    }

    /// Without it openraft's default answers Unreachable, and a stopping leader's successor
    /// waits out the followers' lease and an election timeout instead of taking over at once.
    async fn transfer_leader(
        &mut self,
        req: openraft::raft::TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<openraft::raft::TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = PbRequest::new(Kind::TransferLeader, &req);
        self.raft_call(req, &option, openraft::RPCTypes::TransferLeader)
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: crate::types::Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let req = SnapshotHead::request(vote, snapshot)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let ttl = option.hard_ttl();
        let call = self.peer.call(&req, ttl);
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = call => r,
        };
        let reply = reply.map_err(|e| match e {
            CallError::Unreachable(e) => StreamingError::Unreachable(Unreachable::new(&e)),
            CallError::Network(e) => StreamingError::Network(NetworkError::new(&e)),
            CallError::Timeout(_) => StreamingError::Timeout(Timeout {
                action: openraft::RPCTypes::InstallSnapshot,
                id: self.node_id,
                target: self.target,
                timeout: ttl,
            }),
        })?;
        let answer: Result<SnapshotResponse<TypeConfig>, Fatal<TypeConfig>> =
            reply
                .decode_body()
                .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
    }
}
