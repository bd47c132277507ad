//! Replication of the master's journal over [openraft](https://docs.rs/openraft): the pieces a
//! cluster of masters is built from.
//!
//! - [`MasterRaft`]: the Raft types. One Raft entry holds one [`Batch`]: the events of one
//!   commit of the core loop, so group commit carries over to the replicated log.
//! - [`SledLogStore`]: the Raft log, vote and committed position in sled, each entry
//!   checksummed, every append, truncation and purge made durable before it is reported
//!   done.
//! - [`MasterStateMachine`]: [`MasterState`](mawex_core::MasterState) as the Raft state
//!   machine; its snapshots are the master's own snapshot format.
//! - [`SingleNode`]: the network of a cluster of one (the embedded default).
//! - [`RaftJournal`]: the master's journal on the log. The leader's core writes each batch
//!   as one entry and borrows the state machine's state (it applies each batch as it
//!   decides it, so the state is applied once and held once).
//! - [`ReplicatedMaster`]: a master on all of these, the one node of its cluster (the
//!   embedded shape).
//! - [`GrpcNetwork`] and [`raft_service`]: the Raft RPCs between masters over gRPC, snapshots
//!   streamed in chunks.
//! - [`MasterNode`]: one node of a cluster of masters, which runs a master while it leads
//!   and hands the lead over when it loses it; its membership calls add learners, promote
//!   them and remove nodes while it runs ([`Members`]).
//!
//! openraft's own storage test suite runs against the two (`tests/storage_suite.rs`).

mod access;
mod cluster;
mod codec;
mod error;
mod identity;
mod journal;
mod log_store;
mod membership;
mod network;
mod node;
mod single_node;
mod state_machine;

#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
mod proto {
    tonic::include_proto!("mawex.raft.v1");
}

use std::fmt;

use mawex_core::Event;
use serde::{Deserialize, Serialize};

pub use access::{ClusterPodConnector, ClusterProxy};
pub use cluster::{MasterNode, NodeConfig};
pub use error::RaftStoreError;
pub use identity::{NodeIdentity, NodeNetwork};
pub use journal::RaftJournal;
pub use log_store::{SledLogStore, SyncsHeld};
pub use membership::{admin_service, AdminService, ClusterAdmin, Members, RemoteClusterAdmin};
pub use network::{raft_service, GrpcNetwork, GrpcPeer, RaftService};
pub use node::ReplicatedMaster;
/// A node's address in a membership (openraft's).
pub use openraft::BasicNode;
pub use single_node::{NoPeer, SingleNode};
pub use state_machine::MasterStateMachine;

openraft::declare_raft_types!(
    /// The Raft types of a cluster of masters: node ids are numbers, a node's address is a
    /// string, an entry's data is a [`Batch`].
    pub MasterRaft:
        D = Batch,
        R = Applied,
        Node = openraft::BasicNode,
);

/// The events of one commit of the master's core loop: what one Raft entry carries.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Batch {
    /// The events, in the order the core applied them; on the leader, shared with the
    /// core's committed-batch feed rather than copied.
    pub events: std::sync::Arc<Vec<Event>>,
}

impl Batch {
    /// A batch of `events`.
    pub fn new(events: Vec<Event>) -> Self {
        Batch {
            events: std::sync::Arc::new(events),
        }
    }
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a batch of {} events", self.events.len())
    }
}

/// What applying an entry answers: how many events the state machine has applied in all (the
/// master's event sequence number after the entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Applied {
    /// Events applied, this entry's included.
    pub events: u64,
}
