//! How clients and pods reach the master of a cluster through any of its nodes: a node that
//! leads hands each call to its master; one that does not answers `NotLeader`, naming the
//! leader's address when it knows it.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use mawex_api::pod::{PodConnector, PodHello, PodSession};
use mawex_api::{
    ApiError, BroadcastId, BroadcastLock, BroadcastPage, BroadcastPlan, BroadcastQuery,
    BroadcastSpec, BroadcastView, CancelAck, FailedCount, FailedFilter, GraphAck, GraphId,
    GraphSpec, GraphView, GroupName, GroupSettings, GroupView, ListQuery, MasterProxy,
    MinuteCounts, PendingChange, PodId, PodView, ResultCursor, ResultStream, ScheduleName,
    ScheduleSpec, ScheduleView, SubmitAck, TaskId, TaskPage, TaskResult, TaskSpec, TaskView,
};
use mawex_core::{LocalMasterProxy, LocalPodConnector};
use openraft::raft::ReadPolicy;
use openraft::rt::WatchReceiver;
use openraft::Raft;
use tokio::sync::watch;

use crate::{MasterRaft, MasterStateMachine};

/// The master a node runs while it leads: its client and its pod connector.
#[derive(Clone)]
pub(crate) struct LeaderHandles {
    pub(crate) proxy: LocalMasterProxy,
    pub(crate) pods: LocalPodConnector,
}

/// What a node's proxy and connector look at: the handles of its master, if it runs one,
/// and the Raft node that knows who leads otherwise.
#[derive(Clone)]
struct Access {
    leading: watch::Receiver<Option<LeaderHandles>>,
    raft: Raft<MasterRaft, MasterStateMachine>,
}

impl Access {
    fn leader(&self) -> Result<LeaderHandles, ApiError> {
        if let Some(handles) = self.leading.borrow().clone() {
            return Ok(handles);
        }
        Err(ApiError::NotLeader {
            leader: self.leader_address(),
        })
    }

    /// `result` of `master`, the master this node ran, as a client should see it: a master
    /// that stopped (on a failure, or because its node lost the lead) answers as a node that
    /// does not lead, so that the client moves on to another node.
    fn settle<T>(
        &self,
        master: &LocalMasterProxy,
        result: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        match result {
            Err(ApiError::Internal(_) | ApiError::Unavailable(_))
                if master.failure().is_some() || self.leading.borrow().is_none() =>
            {
                Err(ApiError::NotLeader {
                    leader: self.leader_address(),
                })
            }
            other => other,
        }
    }

    /// The address of the node that leads, if it is another one and has an address.
    fn leader_address(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let leader = metrics.current_leader?;
        if leader == metrics.id {
            // This node leads, and its master is starting or stopping: no one to name.
            return None;
        }
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|node| node.addr.clone())
            .filter(|addr| !addr.is_empty())
    }
}

/// A [`MasterProxy`] for any node of a cluster: the calls of the master this node runs while
/// it leads; `NotLeader { leader }` while it does not (see [`crate::MasterNode::client`]).
/// Reads are linearizable: each confirms the lead with a quorum first (read index).
/// Serve it (`mawex_server::Server::over`) and a client given several nodes finds the
/// leader by itself.
#[derive(Clone)]
pub struct ClusterProxy {
    access: Access,
}

impl std::fmt::Debug for ClusterProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterProxy")
            .field("node", self.access.raft.node_id())
            .finish_non_exhaustive()
    }
}

/// A [`PodConnector`] for any node of a cluster: pods connect to the master this node runs
/// while it leads, and are told `NotLeader { leader }` while it does not.
#[derive(Clone)]
pub struct ClusterPodConnector {
    access: Access,
}

impl std::fmt::Debug for ClusterPodConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPodConnector")
            .field("node", self.access.raft.node_id())
            .finish_non_exhaustive()
    }
}

impl ClusterProxy {
    pub(crate) fn new(
        leading: watch::Receiver<Option<LeaderHandles>>,
        raft: Raft<MasterRaft, MasterStateMachine>,
    ) -> Self {
        ClusterProxy {
            access: Access { leading, raft },
        }
    }

    fn master(&self) -> Result<LocalMasterProxy, ApiError> {
        self.access.leader().map(|handles| handles.proxy)
    }

    /// The master, for a read that must be current: a quorum confirms that this node still
    /// leads (Raft's read index) first, so a deposed leader that does not know it yet never
    /// answers from a stale state. The master's state holds every committed batch (it
    /// applies each one before writing it), so once confirmed, it is current.
    async fn current(&self) -> Result<LocalMasterProxy, ApiError> {
        let master = self.master()?;
        match self
            .access
            .raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
        {
            Ok(_) => Ok(master),
            Err(e) => match e.forward_to_leader() {
                Some(_) => Err(ApiError::NotLeader {
                    leader: self.access.leader_address(),
                }),
                None => Err(ApiError::Unavailable(format!(
                    "this master cannot confirm it leads: {e}"
                ))),
            },
        }
    }
}

impl ClusterPodConnector {
    pub(crate) fn new(
        leading: watch::Receiver<Option<LeaderHandles>>,
        raft: Raft<MasterRaft, MasterStateMachine>,
    ) -> Self {
        ClusterPodConnector {
            access: Access { leading, raft },
        }
    }
}

#[async_trait]
impl PodConnector for ClusterPodConnector {
    async fn connect(&self, hello: PodHello) -> Result<PodSession, ApiError> {
        let leader = self.access.leader()?;
        self.access
            .settle(&leader.proxy, leader.pods.connect(hello).await)
    }
}

#[async_trait]
impl MasterProxy for ClusterProxy {
    async fn submit(&self, spec: TaskSpec) -> Result<SubmitAck, ApiError> {
        let master = self.master()?;
        self.access.settle(&master, master.submit(spec).await)
    }

    async fn submit_many(&self, specs: Vec<TaskSpec>) -> Result<Vec<SubmitAck>, ApiError> {
        let master = self.master()?;
        self.access.settle(&master, master.submit_many(specs).await)
    }

    async fn get(&self, id: TaskId) -> Result<TaskView, ApiError> {
        let master = self.current().await?;
        self.access.settle(&master, master.get(id).await)
    }

    async fn cancel(&self, id: TaskId) -> Result<CancelAck, ApiError> {
        let master = self.master()?;
        self.access.settle(&master, master.cancel(id).await)
    }

    async fn await_result(&self, id: TaskId) -> Result<TaskResult, ApiError> {
        let master = self.master()?;
        self.access.settle(&master, master.await_result(id).await)
    }

    async fn results(
        &self,
        group: GroupName,
        after: Option<ResultCursor>,
    ) -> Result<ResultStream, ApiError> {
        let master = self.master()?;
        let results = self
            .access
            .settle(&master, master.results(group, after).await)?;
        // The stream ends with the error of a master that stopped: settled too, so that a
        // node that handed the lead over says `NotLeader` and the client resumes elsewhere.
        let access = self.access.clone();
        Ok(Box::pin(results.map(move |result| {
            result.or_else(|e| access.settle(&master, Err(e)))
        })))
    }

    async fn list(&self, query: ListQuery) -> Result<TaskPage, ApiError> {
        let master = self.current().await?;
        self.access.settle(&master, master.list(query).await)
    }

    async fn failed_summary(&self) -> Result<Vec<FailedCount>, ApiError> {
        let master = self.current().await?;
        self.access.settle(&master, master.failed_summary().await)
    }

    async fn retry_failed(&self, filter: FailedFilter) -> Result<u64, ApiError> {
        let master = self.master()?;
        self.access
            .settle(&master, master.retry_failed(filter).await)
    }

    async fn purge_failed(&self, filter: FailedFilter) -> Result<u64, ApiError> {
        let master = self.master()?;
        self.access
            .settle(&master, master.purge_failed(filter).await)
    }

    async fn configure_group(
        &self,
        group: GroupName,
        settings: GroupSettings,
    ) -> Result<(), ApiError> {
        let master = self.master()?;
        self.access
            .settle(&master, master.configure_group(group, settings).await)
    }

    async fn update_pending(
        &self,
        ids: Vec<TaskId>,
        change: PendingChange,
    ) -> Result<u64, ApiError> {
        let master = self.master()?;
        self.access
            .settle(&master, master.update_pending(ids, change).await)
    }

    async fn create_schedule(&self, spec: ScheduleSpec) -> Result<(), ApiError> {
        let master = self.master()?;
        self.access
            .settle(&master, master.create_schedule(spec).await)
    }

    async fn list_schedules(&self) -> Result<Vec<ScheduleView>, ApiError> {
        let master = self.current().await?;
        self.access.settle(&master, master.list_schedules().await)
    }

    async fn pause_schedule(&self, name: ScheduleName, paused: bool) -> Result<(), ApiError> {
        let master = self.master()?;
        self.access
            .settle(&master, master.pause_schedule(name, paused).await)
    }

    async fn delete_schedule(&self, name: ScheduleName) -> Result<(), ApiError> {
        let master = self.master()?;
        self.access
            .settle(&master, master.delete_schedule(name).await)
    }

    async fn group_settings(&self, group: GroupName) -> Result<GroupSettings, ApiError> {
        let master = self.current().await?;
        self.access
            .settle(&master, master.group_settings(group).await)
    }

    async fn fire_broadcast(&self, spec: BroadcastSpec) -> Result<BroadcastView, ApiError> {
        let master = self.master()?;
        self.access
            .settle(&master, master.fire_broadcast(spec).await)
    }

    async fn plan_broadcast(&self, spec: BroadcastSpec) -> Result<BroadcastPlan, ApiError> {
        let master = self.current().await?;
        self.access
            .settle(&master, master.plan_broadcast(spec).await)
    }

    async fn broadcast(&self, id: BroadcastId) -> Result<BroadcastView, ApiError> {
        let master = self.current().await?;
        self.access.settle(&master, master.broadcast(id).await)
    }

    async fn list_broadcasts(&self, query: BroadcastQuery) -> Result<BroadcastPage, ApiError> {
        let master = self.current().await?;
        self.access
            .settle(&master, master.list_broadcasts(query).await)
    }

    async fn wait_broadcast(
        &self,
        id: BroadcastId,
        timeout: Duration,
    ) -> Result<BroadcastView, ApiError> {
        let master = self.master()?;
        self.access
            .settle(&master, master.wait_broadcast(id, timeout).await)
    }

    async fn broadcast_locks(&self) -> Result<Vec<BroadcastLock>, ApiError> {
        let master = self.current().await?;
        self.access.settle(&master, master.broadcast_locks().await)
    }

    async fn clear_broadcast_lock(&self, app: &str) -> Result<Option<BroadcastId>, ApiError> {
        let master = self.master()?;
        self.access
            .settle(&master, master.clear_broadcast_lock(app).await)
    }

    async fn list_groups(&self) -> Result<Vec<GroupView>, ApiError> {
        let master = self.current().await?;
        self.access.settle(&master, master.list_groups().await)
    }

    async fn history(&self, minutes: usize) -> Result<Vec<MinuteCounts>, ApiError> {
        let master = self.current().await?;
        self.access.settle(&master, master.history(minutes).await)
    }

    async fn drain_pod(&self, pod: PodId) -> Result<bool, ApiError> {
        let master = self.master()?;
        self.access.settle(&master, master.drain_pod(pod).await)
    }

    async fn submit_graph(&self, graph: GraphSpec) -> Result<GraphAck, ApiError> {
        let master = self.master()?;
        self.access
            .settle(&master, master.submit_graph(graph).await)
    }

    async fn graph(&self, id: GraphId) -> Result<GraphView, ApiError> {
        let master = self.current().await?;
        self.access.settle(&master, master.graph(id).await)
    }

    async fn cancel_graph(&self, id: GraphId) -> Result<u64, ApiError> {
        let master = self.master()?;
        self.access.settle(&master, master.cancel_graph(id).await)
    }

    async fn task_output(&self, id: TaskId, after: u64) -> Result<mawex_api::TaskOutput, ApiError> {
        // The output is kept by the leader's master, which the pods write to.
        let master = self.master()?;
        self.access
            .settle(&master, master.task_output(id, after).await)
    }

    async fn list_pods(&self) -> Result<Vec<PodView>, ApiError> {
        // Pods are connected to the leader's master: its list is the cluster's.
        let master = self.master()?;
        self.access.settle(&master, master.list_pods().await)
    }
}
