//! Changing who is in a cluster of masters while it runs: add a learner (it receives the log
//! but does not vote), promote learners to voters, remove a node. Each change is a Raft
//! membership change made by the leader (joint consensus for a change of voters), so it is
//! asked of the node that leads; another answers [`RaftStoreError::NotLeader`].
//!
//! [`ClusterAdmin`] makes the changes on a node; [`admin_service`] serves it over gRPC
//! (`mawex.raft.v1.ClusterAdmin`, for `admin` tokens), and [`RemoteClusterAdmin`] calls it.

use std::collections::{BTreeMap, BTreeSet};

use mawex_api::{ApiError, AuthChannel, ChannelConfig};
use openraft::errors::{ClientWriteError, RaftError};
use openraft::rt::WatchReceiver;
use openraft::{BasicNode, ChangeMembers, Raft};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::proto;
use crate::proto::cluster_admin_client::ClusterAdminClient;
use crate::proto::cluster_admin_server::{ClusterAdmin as ClusterAdminRpc, ClusterAdminServer};
use crate::{MasterNode, MasterRaft, MasterStateMachine, RaftStoreError};

/// How long a membership call waits for an earlier change to be committed.
const MEMBERSHIP_SETTLES_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

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

/// The membership calls of one node (see the module's documentation). Each change first
/// waits (up to 10 s) for an earlier one to be committed, and fails with
/// [`RaftStoreError::Membership`] if it is not. Cheap to clone.
#[derive(Clone)]
pub struct ClusterAdmin {
    pub(crate) raft: Raft<MasterRaft, MasterStateMachine>,
}

impl std::fmt::Debug for ClusterAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAdmin")
            .field("node", self.raft.node_id())
            .finish()
    }
}

impl MasterNode {
    /// The membership calls of this node.
    pub fn admin(&self) -> ClusterAdmin {
        ClusterAdmin {
            raft: self.raft().clone(),
        }
    }

    /// Who is in the cluster: [`ClusterAdmin::members`].
    pub fn members(&self) -> Members {
        self.admin().members()
    }

    /// Adds a learner: [`ClusterAdmin::add_learner`].
    ///
    /// # Errors
    /// As [`ClusterAdmin::add_learner`].
    pub async fn add_learner(
        &self,
        id: u64,
        address: impl Into<String>,
    ) -> Result<(), RaftStoreError> {
        self.admin().add_learner(id, address).await
    }

    /// Promotes learners: [`ClusterAdmin::promote`].
    ///
    /// # Errors
    /// As [`ClusterAdmin::promote`].
    pub async fn promote(&self, ids: BTreeSet<u64>) -> Result<(), RaftStoreError> {
        self.admin().promote(ids).await
    }

    /// Removes a node: [`ClusterAdmin::remove`].
    ///
    /// # Errors
    /// As [`ClusterAdmin::remove`].
    pub async fn remove(&self, id: u64) -> Result<(), RaftStoreError> {
        self.admin().remove(id).await
    }

    /// Hands the lead over: [`ClusterAdmin::transfer_leader`].
    ///
    /// # Errors
    /// As [`ClusterAdmin::transfer_leader`].
    pub async fn transfer_leader(&self, to: u64) -> Result<(), RaftStoreError> {
        self.admin().transfer_leader(to).await
    }
}

impl ClusterAdmin {
    /// Records `address` as this node's in the membership if it says otherwise (a leader
    /// only; a cluster of one is made with no address).
    ///
    /// # Errors
    /// This node does not lead, or the change is refused (another change is in flight).
    pub(crate) async fn record_own_address(&self, address: &str) -> Result<(), RaftStoreError> {
        let id = *self.raft.node_id();
        let members = self.members();
        let known = members
            .voters
            .get(&id)
            .or_else(|| members.learners.get(&id));
        if known.is_none_or(|known| known == address) {
            return Ok(());
        }
        self.leads()?;
        self.settled().await?;
        self.raft
            .change_membership(
                ChangeMembers::SetNodes(BTreeMap::from([(id, BasicNode::new(address))])),
                false,
            )
            .await
            .map_err(|e| RaftStoreError::Raft(e.to_string()))?;
        info!(node = id, %address, "this node's address is recorded in the membership");
        Ok(())
    }

    /// Who is in the cluster, as this node knows it (its latest membership, which may not
    /// be committed yet).
    pub fn members(&self) -> Members {
        let metrics = self.raft.metrics();
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
    /// [`RaftStoreError::NotLeader`] on a node that does not lead;
    /// [`RaftStoreError::Membership`] when `id` is a voter already.
    pub async fn add_learner(
        &self,
        id: u64,
        address: impl Into<String>,
    ) -> Result<(), RaftStoreError> {
        self.leads()?;
        self.settled().await?;
        if self.members().voters.contains_key(&id) {
            return Err(RaftStoreError::Membership(format!(
                "node {id} is a voter of this cluster already"
            )));
        }
        self.raft
            .add_learner(id, BasicNode::new(address.into()), true)
            .await
            .map(drop)
            .map_err(membership_error)
    }

    /// Makes the learners `ids` voters (through a joint configuration).
    ///
    /// # Errors
    /// [`RaftStoreError::NotLeader`] on a node that does not lead;
    /// [`RaftStoreError::Membership`] when one of `ids` is not a learner of the cluster.
    pub async fn promote(&self, ids: BTreeSet<u64>) -> Result<(), RaftStoreError> {
        self.leads()?;
        self.settled().await?;
        let learners = self.members().learners;
        if let Some(id) = ids.iter().find(|id| !learners.contains_key(id)) {
            return Err(RaftStoreError::Membership(format!(
                "node {id} is not a learner of this cluster: add it as one first"
            )));
        }
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(ids), false)
            .await
            .map(drop)
            .map_err(membership_error)
    }

    /// Removes node `id` from the cluster, a voter or a learner. The cluster keeps at least
    /// one voter. A leader that removes itself hands the lead over and stops its master.
    ///
    /// # Errors
    /// [`RaftStoreError::NotLeader`] on a node that does not lead;
    /// [`RaftStoreError::Membership`] when `id` is not a member, or is the last voter.
    pub async fn remove(&self, id: u64) -> Result<(), RaftStoreError> {
        self.leads()?;
        self.settled().await?;
        let members = self.members();
        let change = if members.voters.contains_key(&id) {
            if members.voters.len() == 1 {
                return Err(RaftStoreError::Membership(format!(
                    "node {id} is the last voter of this cluster"
                )));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if members.learners.contains_key(&id) {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(RaftStoreError::Membership(format!(
                "node {id} is not a member of this cluster"
            )));
        };
        self.raft
            .change_membership(change, false)
            .await
            .map(drop)
            .map_err(membership_error)
    }

    /// Hands the lead to voter `to` and waits (up to 10 s) until this node sees it lead:
    /// before a planned restart of the leader, so that its clients and pods move at once
    /// instead of after an election timeout. The master on this node stops as on any loss
    /// of the lead; `to`'s starts from the committed state. Asking the node that leads to
    /// lead is a no-op.
    ///
    /// # Errors
    /// [`RaftStoreError::NotLeader`] on a node that does not lead;
    /// [`RaftStoreError::Membership`] when `to` is not a voter;
    /// [`RaftStoreError::Raft`] when `to` has not taken the lead in time.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), RaftStoreError> {
        self.leads()?;
        if to == *self.raft.node_id() {
            return Ok(());
        }
        if !self.members().voters.contains_key(&to) {
            return Err(RaftStoreError::Membership(format!(
                "node {to} is not a voter of this cluster: only a voter can lead"
            )));
        }
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| RaftStoreError::Raft(e.to_string()))?;
        self.raft
            .wait(Some(MEMBERSHIP_SETTLES_WITHIN))
            .metrics(|m| m.current_leader == Some(to), "the lead handed over")
            .await
            .map(drop)
            .map_err(|e| RaftStoreError::Raft(format!("node {to} did not take the lead: {e}")))?;
        info!(from = *self.raft.node_id(), to, "the lead is handed over");
        Ok(())
    }

    /// Waits (a bounded time) until the latest membership change is committed: openraft takes
    /// one change at a time, and a change is checked against the membership it follows.
    async fn settled(&self) -> Result<(), RaftStoreError> {
        self.raft
            .wait(Some(MEMBERSHIP_SETTLES_WITHIN))
            .metrics(
                |m| m.membership_config.log_id().as_ref() <= m.last_applied.as_ref(),
                "the last membership change committed",
            )
            .await
            .map(drop)
            .map_err(|e| {
                RaftStoreError::Membership(format!(
                    "another membership change is still in progress: {e}"
                ))
            })
    }

    /// `NotLeader` unless this node leads: a change is checked against the leader's
    /// membership, never against a follower's, which may be behind.
    fn leads(&self) -> Result<(), RaftStoreError> {
        self.raft
            .as_leader()
            .map(drop)
            .map_err(|forward| RaftStoreError::NotLeader {
                leader: forward.leader_id,
            })
    }

    /// `error` as a caller over the network sees it: `NotLeader` naming the leader's
    /// address, `InvalidArgument` for a change that cannot be made as asked.
    fn api_error(&self, error: RaftStoreError) -> ApiError {
        match error {
            RaftStoreError::NotLeader { leader } => ApiError::NotLeader {
                leader: leader
                    .and_then(|id| self.members().voters.get(&id).cloned())
                    .filter(|address| !address.is_empty()),
            },
            RaftStoreError::Membership(why) => ApiError::InvalidArgument(why),
            other => ApiError::Unavailable(other.to_string()),
        }
    }

    /// The members, or the error, as the service answers.
    fn answer(
        &self,
        done: Result<(), RaftStoreError>,
    ) -> Result<Response<proto::MembersView>, Status> {
        done.map_err(|e| Status::from(self.api_error(e)))?;
        Ok(Response::new(self.members().into()))
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

impl From<Members> for proto::MembersView {
    fn from(m: Members) -> Self {
        let list = |nodes: BTreeMap<u64, String>| {
            nodes
                .into_iter()
                .map(|(id, address)| proto::Member { id, address })
                .collect()
        };
        proto::MembersView {
            leader: m.leader,
            voters: list(m.voters),
            learners: list(m.learners),
        }
    }
}

impl From<proto::MembersView> for Members {
    fn from(m: proto::MembersView) -> Self {
        let map =
            |nodes: Vec<proto::Member>| nodes.into_iter().map(|n| (n.id, n.address)).collect();
        Members {
            leader: m.leader,
            voters: map(m.voters),
            learners: map(m.learners),
        }
    }
}

/// The `mawex.raft.v1.ClusterAdmin` service of a node (see [`admin_service`]).
pub type AdminService = ClusterAdminServer<ClusterAdmin>;

/// The membership calls of `admin`'s node over gRPC. Serve it for `admin` tokens:
/// `mawex_server::Server::add_service_for(Role::Admin, admin_service(node.admin()))`.
pub fn admin_service(admin: ClusterAdmin) -> AdminService {
    ClusterAdminServer::new(admin)
}

#[tonic::async_trait]
impl ClusterAdminRpc for ClusterAdmin {
    async fn members(
        &self,
        _request: Request<proto::MembersRequest>,
    ) -> Result<Response<proto::MembersView>, Status> {
        self.answer(Ok(()))
    }

    async fn add_learner(
        &self,
        request: Request<proto::AddLearnerRequest>,
    ) -> Result<Response<proto::MembersView>, Status> {
        let proto::AddLearnerRequest { id, address } = request.into_inner();
        if address.is_empty() {
            return Err(Status::invalid_argument(format!(
                "node {id}: an address is needed to reach it"
            )));
        }
        self.answer(ClusterAdmin::add_learner(self, id, address).await)
    }

    async fn promote(
        &self,
        request: Request<proto::PromoteRequest>,
    ) -> Result<Response<proto::MembersView>, Status> {
        let ids: BTreeSet<u64> = request.into_inner().ids.into_iter().collect();
        if ids.is_empty() {
            return Err(Status::invalid_argument("no node to promote"));
        }
        self.answer(ClusterAdmin::promote(self, ids).await)
    }

    async fn remove(
        &self,
        request: Request<proto::RemoveRequest>,
    ) -> Result<Response<proto::MembersView>, Status> {
        let id = request.into_inner().id;
        self.answer(ClusterAdmin::remove(self, id).await)
    }

    async fn transfer_leader(
        &self,
        request: Request<proto::TransferLeaderRequest>,
    ) -> Result<Response<proto::MembersView>, Status> {
        let to = request.into_inner().to;
        self.answer(ClusterAdmin::transfer_leader(self, to).await)
    }
}

/// Calls the membership service of the node at an endpoint (an operator's tool). A node
/// that does not lead answers [`ApiError::NotLeader`] with the leader's address.
#[derive(Debug, Clone)]
pub struct RemoteClusterAdmin {
    client: ClusterAdminClient<AuthChannel>,
}

impl RemoteClusterAdmin {
    /// A client of the node at `endpoint` (`http://` or, with TLS in `config`, `https://`),
    /// sending `config`'s token.
    ///
    /// # Errors
    /// `InvalidArgument` for a malformed endpoint or settings that do not match it.
    pub fn new(endpoint: &str, config: &ChannelConfig) -> Result<Self, ApiError> {
        Ok(RemoteClusterAdmin {
            client: ClusterAdminClient::new(config.connect_lazy(endpoint)?),
        })
    }

    /// Who is in the cluster, as the node knows it.
    ///
    /// # Errors
    /// The node cannot be reached, or refuses the call.
    pub async fn members(&self) -> Result<Members, ApiError> {
        let view = self
            .client
            .clone()
            .members(proto::MembersRequest {})
            .await?;
        Ok(view.into_inner().into())
    }

    /// Adds node `id`, reached at `address`, as a learner; answers once it caught up.
    ///
    /// # Errors
    /// `NotLeader`, `InvalidArgument` (the message names the node), or the node cannot be
    /// reached.
    pub async fn add_learner(&self, id: u64, address: &str) -> Result<Members, ApiError> {
        let request = proto::AddLearnerRequest {
            id,
            address: address.to_owned(),
        };
        let view = self.client.clone().add_learner(request).await?;
        Ok(view.into_inner().into())
    }

    /// Makes the learners `ids` voters.
    ///
    /// # Errors
    /// As [`RemoteClusterAdmin::add_learner`].
    pub async fn promote(&self, ids: impl IntoIterator<Item = u64>) -> Result<Members, ApiError> {
        let request = proto::PromoteRequest {
            ids: ids.into_iter().collect(),
        };
        let view = self.client.clone().promote(request).await?;
        Ok(view.into_inner().into())
    }

    /// Removes node `id`.
    ///
    /// # Errors
    /// As [`RemoteClusterAdmin::add_learner`].
    pub async fn remove(&self, id: u64) -> Result<Members, ApiError> {
        let view = self
            .client
            .clone()
            .remove(proto::RemoveRequest { id })
            .await?;
        Ok(view.into_inner().into())
    }

    /// Hands the lead to voter `to`; answers once it leads.
    ///
    /// # Errors
    /// As [`RemoteClusterAdmin::add_learner`].
    pub async fn transfer_leader(&self, to: u64) -> Result<Members, ApiError> {
        let view = self
            .client
            .clone()
            .transfer_leader(proto::TransferLeaderRequest { to })
            .await?;
        Ok(view.into_inner().into())
    }
}
