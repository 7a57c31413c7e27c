//! Raft network. With a single voter no RPC is ever needed; this implementation reports every
//! peer as unreachable so openraft backs off. The node-to-node transport (prost over mTLS, see
//! DESIGN.md) replaces it when more voters or learners join; only this module changes then.

use crate::types::{SnapshotData, TypeConfig, Vote};
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use std::future::Future;

/// Creates [`NetworkClient`]s for peers.
pub(crate) struct NetworkFactory;

/// A client for one peer.
pub(crate) struct NetworkClient {
    target: u64,
    addr: String,
}

impl NetworkClient {
    fn unreachable(&self, rpc: &str) -> Unreachable<TypeConfig> {
        Unreachable::from_string(format!(
            "no raft transport yet: cannot send {rpc} to node {} at {}",
            self.target, self.addr
        ))
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = NetworkClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        NetworkClient {
            target,
            addr: node.addr.clone(),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for NetworkClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable("append_entries")))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable("vote")))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: crate::types::Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(self.unreachable("snapshot")))
    }
}
