//! The network of a cluster of one master: there is no one to call.

use std::future::Future;

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;

use crate::MasterRaft;

/// The network factory of a one-node cluster (the embedded default): every call to a peer
/// is unreachable, which a cluster of one never makes (a learner added to it would never be
/// reached: a cluster with peers needs a real network).
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleNode;

/// A connection to a peer that a one-node cluster does not have.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPeer;

impl crate::NodeNetwork for SingleNode {}

impl RaftNetworkFactory<MasterRaft> for SingleNode {
    type Network = NoPeer;

    async fn new_client(&mut self, _target: u64, _node: &BasicNode) -> NoPeer {
        NoPeer
    }
}

fn unreachable() -> Unreachable<MasterRaft> {
    Unreachable::from_string("a one-node cluster has no peers")
}

impl RaftNetworkV2<MasterRaft> for NoPeer {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<MasterRaft>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<MasterRaft>, RPCError<MasterRaft>> {
        Err(RPCError::Unreachable(unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<MasterRaft>,
        _option: RPCOption,
    ) -> Result<VoteResponse<MasterRaft>, RPCError<MasterRaft>> {
        Err(RPCError::Unreachable(unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: VoteOf<MasterRaft>,
        _snapshot: SnapshotOf<MasterRaft, Vec<u8>>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<MasterRaft>, StreamingError<MasterRaft>> {
        Err(StreamingError::Unreachable(unreachable()))
    }
}
