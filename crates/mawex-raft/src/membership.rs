//! Changing who is in a cluster of masters while it runs: add a learner (it receives the log
//! but does not vote), promote learners to voters, remove a node. Each change is a Raft
//! membership change made by the leader (joint consensus for a change of voters), so it is
//! asked of the node that leads; another answers [`RaftStoreError::NotLeader`].

use std::collections::{BTreeMap, BTreeSet};

use openraft::errors::{ClientWriteError, RaftError};
use openraft::rt::WatchReceiver;
use openraft::{BasicNode, ChangeMembers};

use crate::{MasterNode, MasterRaft, RaftStoreError};

/// Who is in a cluster, as a node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Members {
    /// The node that leads, if this node knows one.
    pub leader: Option<u64>,
    /// The nodes that vote, with their addresses.
    pub voters: BTreeMap<u64, String>,
    /// The nodes that receive the log but do not vote, with their addresses.
    pub learners: BTreeMap<u64, String>,
}

impl MasterNode {
    /// Who is in the cluster, as this node knows it (its latest membership, which may not
    /// be committed yet).
    pub fn members(&self) -> Members {
        let metrics = self.raft().metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        let address = |id: &u64| {
            membership
                .get_node(id)
                .map(|node| node.addr.clone())
                .unwrap_or_default()
        };
        Members {
            leader: metrics.current_leader,
            voters: membership
                .voter_ids()
                .map(|id| (id, address(&id)))
                .collect(),
            learners: membership
                .learner_ids()
                .map(|id| (id, address(&id)))
                .collect(),
        }
    }

    /// Adds node `id`, reached at `address`, as a learner, and waits until it has caught up
    /// with the log (from a snapshot if the log it needs was purged). Its id must be new to
    /// the cluster: a node that comes back with an empty disk joins under a new id.
    ///
    /// # Errors
    /// [`RaftStoreError::NotLeader`] on a node that does not lead; `Raft` when `id` is a
    /// voter already or the change is refused.
    pub async fn add_learner(
        &self,
        id: u64,
        address: impl Into<String>,
    ) -> Result<(), RaftStoreError> {
        if self.members().voters.contains_key(&id) {
            return Err(RaftStoreError::Raft(format!(
                "node {id} is a voter of this cluster already"
            )));
        }
        self.raft()
            .add_learner(id, BasicNode::new(address.into()), true)
            .await
            .map(drop)
            .map_err(membership_error)
    }

    /// Makes the learners `ids` voters (through a joint configuration).
    ///
    /// # Errors
    /// [`RaftStoreError::NotLeader`] on a node that does not lead; `Raft` when one of `ids`
    /// is not a learner of the cluster.
    pub async fn promote(&self, ids: BTreeSet<u64>) -> Result<(), RaftStoreError> {
        let learners = self.members().learners;
        if let Some(id) = ids.iter().find(|id| !learners.contains_key(id)) {
            return Err(RaftStoreError::Raft(format!(
                "node {id} is not a learner of this cluster: add it as one first"
            )));
        }
        self.raft()
            .change_membership(ChangeMembers::AddVoterIds(ids), false)
            .await
            .map(drop)
            .map_err(membership_error)
    }

    /// Removes node `id` from the cluster, a voter or a learner. The cluster keeps at least
    /// one voter. A leader that removes itself hands the lead over and stops its master.
    ///
    /// # Errors
    /// [`RaftStoreError::NotLeader`] on a node that does not lead; `Raft` when `id` is not
    /// a member, or is the last voter.
    pub async fn remove(&self, id: u64) -> Result<(), RaftStoreError> {
        let members = self.members();
        let change = if members.voters.contains_key(&id) {
            if members.voters.len() == 1 {
                return Err(RaftStoreError::Raft(format!(
                    "node {id} is the last voter of this cluster"
                )));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if members.learners.contains_key(&id) {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(RaftStoreError::Raft(format!(
                "node {id} is not a member of this cluster"
            )));
        };
        self.raft()
            .change_membership(change, false)
            .await
            .map(drop)
            .map_err(membership_error)
    }
}

/// A refused membership change: `NotLeader` when another node leads.
fn membership_error(e: RaftError<MasterRaft, ClientWriteError<MasterRaft>>) -> RaftStoreError {
    match e.forward_to_leader() {
        Some(forward) => RaftStoreError::NotLeader {
            leader: forward.leader_id,
        },
        None => RaftStoreError::Raft(e.to_string()),
    }
}
