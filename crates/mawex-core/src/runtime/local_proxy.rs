//! [`LocalMasterProxy`]: the in-process client.

use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream;
use mawex_api::{
    ApiError, BroadcastId, BroadcastLock, BroadcastPage, BroadcastPlan, BroadcastQuery,
    BroadcastSpec, BroadcastView, CancelAck, FailedCount, FailedFilter, GraphAck, GraphId,
    GraphSpec, GraphView, GroupName, GroupSettings, GroupView, ListQuery, MasterProxy,
    MinuteCounts, PendingChange, PodId, PodView, ResultCursor, ResultStream, ScheduleName,
    ScheduleSpec, ScheduleView, SubmitAck, TaskId, TaskPage, TaskResult, TaskSpec, TaskView,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::admission::{Admission, Budget};
use super::messages::{CoreMsg, Reply};
use super::read_model::ReadSide;
use super::streams::{FeedState, MAX_STREAM_LAG};

/// The answer when the core is gone: after a failure, why (not worth retrying against this
/// master); after a clean shutdown, unavailable. A reply can be dropped a moment before the
/// core thread records why it stopped, so this waits for the thread to finish saying so
/// (bounded: a core that is somehow still running does not hold the caller).
async fn stopped(failed: &watch::Receiver<Option<String>>) -> ApiError {
    let mut failed = failed.clone();
    let wait = failed.wait_for(Option::is_some);
    let reason = match tokio::time::timeout(std::time::Duration::from_secs(5), wait).await {
        Ok(Ok(reason)) => reason.clone(),
        _ => None,
    };
    match reason {
        Some(reason) => ApiError::Internal(format!("the master stopped: {reason}")),
        None => ApiError::Unavailable("the master is not running".into()),
    }
}

/// Talks to a master in the same process: no network, no serialization. Cheap to clone.
///
/// Requests and single-task reads go to the core thread; bulk reads (`list`,
/// `failed_summary`) are served by the read model, which follows the committed-batch feed
/// and has applied every batch committed before the read began.
///
/// Every clone of every proxy of a master shares its budgets
/// (`MasterConfig::max_requests_in_flight`, `MasterConfig::max_waiting_calls`): a request
/// over budget is refused at once with `ResourceExhausted`.
#[derive(Debug, Clone)]
pub struct LocalMasterProxy {
    inbox: std_mpsc::Sender<CoreMsg>,
    reads: Arc<ReadSide>,
    failed: watch::Receiver<Option<String>>,
    admission: Arc<Admission>,
}

impl LocalMasterProxy {
    /// Why the master stopped, once it stopped on a failure (its answers then say so).
    pub fn failure(&self) -> Option<String> {
        self.failed.borrow().clone()
    }

    pub(crate) fn new(
        inbox: std_mpsc::Sender<CoreMsg>,
        reads: Arc<ReadSide>,
        failed: watch::Receiver<Option<String>>,
        admission: Arc<Admission>,
    ) -> Self {
        LocalMasterProxy {
            inbox,
            reads,
            failed,
            admission,
        }
    }

    /// A request to the core, counted against the request budget.
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> CoreMsg) -> Result<T, ApiError> {
        self.call_counted(Budget::Request, make).await
    }

    async fn call_counted<T>(
        &self,
        budget: Budget,
        make: impl FnOnce(Reply<T>) -> CoreMsg,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        let reply = self.admission.reply(budget, tx)?;
        if self.inbox.send(make(reply)).is_err() {
            return Err(stopped(&self.failed).await);
        }
        match rx.await {
            Ok(answer) => answer,
            Err(_) => Err(stopped(&self.failed).await),
        }
    }
}

#[async_trait]
impl MasterProxy for LocalMasterProxy {
    async fn submit(&self, spec: TaskSpec) -> Result<SubmitAck, ApiError> {
        let mut acks = self
            .call(|reply| CoreMsg::Submit {
                specs: vec![spec],
                reply,
            })
            .await?;
        acks.pop()
            .ok_or_else(|| ApiError::Internal("submit answered without an acknowledgement".into()))
    }

    async fn submit_many(&self, specs: Vec<TaskSpec>) -> Result<Vec<SubmitAck>, ApiError> {
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        self.call(|reply| CoreMsg::Submit { specs, reply }).await
    }

    async fn get(&self, id: TaskId) -> Result<TaskView, ApiError> {
        self.call(|reply| CoreMsg::Get { id, reply }).await
    }

    async fn cancel(&self, id: TaskId) -> Result<CancelAck, ApiError> {
        self.call(|reply| CoreMsg::Cancel { id, reply }).await
    }

    async fn await_result(&self, id: TaskId) -> Result<TaskResult, ApiError> {
        self.call_counted(Budget::Wait, |reply| CoreMsg::AwaitResult { id, reply })
            .await
    }

    async fn results(
        &self,
        group: GroupName,
        after: Option<ResultCursor>,
    ) -> Result<ResultStream, ApiError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let feed = Arc::new(FeedState::default());
        self.call(|reply| CoreMsg::Subscribe {
            group,
            after,
            results: tx,
            feed: feed.clone(),
            reply,
        })
        .await?;
        // Ends with one error saying why: the master went away, or the reader fell behind.
        let failed = self.failed.clone();
        let results = stream::unfold(Some(rx), move |rx| {
            let feed = feed.clone();
            let failed = failed.clone();
            async move {
                let mut rx = rx?;
                match rx.recv().await {
                    Some(Ok(result)) => {
                        feed.backlog.fetch_sub(1, Ordering::Relaxed);
                        Some((Ok(result), Some(rx)))
                    }
                    Some(Err(e)) => Some((Err(e), None)),
                    None if feed.lagged.load(Ordering::Relaxed) => Some((
                        Err(ApiError::ResourceExhausted(format!(
                            "the result stream fell {MAX_STREAM_LAG} results behind and was cut off; \
                             resume from the cursor of the last result read"
                        ))),
                        None,
                    )),
                    None => Some((Err(stopped(&failed).await), None)),
                }
            }
        });
        Ok(Box::pin(results))
    }

    async fn list(&self, query: ListQuery) -> Result<TaskPage, ApiError> {
        query.validate()?;
        let _permit = self.admission.admit(Budget::Request)?;
        let model = self.reads.current().await?;
        let stats = self.reads.stats();
        let scans = query.scans();
        // Wait estimates from the slots of the pods serving each group, as last published.
        let page = move || {
            model
                .read()
                .list_with_estimates(&query, |group| stats.slots_serving(group))
        };
        if !scans {
            return Ok(page());
        }
        // A search that examines tasks one by one: a few at a time, off the async threads.
        let _turn = self.reads.scan_turn().await?;
        tokio::task::spawn_blocking(page)
            .await
            .map_err(|e| ApiError::Internal(format!("a list search failed: {e}")))
    }

    async fn failed_summary(&self) -> Result<Vec<FailedCount>, ApiError> {
        let _permit = self.admission.admit(Budget::Request)?;
        let model = self.reads.current().await?;
        let summary = model.read().failed_summary();
        Ok(summary)
    }

    async fn retry_failed(&self, filter: FailedFilter) -> Result<u64, ApiError> {
        self.call(|reply| CoreMsg::RetryFailed { filter, reply })
            .await
    }

    async fn purge_failed(&self, filter: FailedFilter) -> Result<u64, ApiError> {
        self.call(|reply| CoreMsg::PurgeFailed { filter, reply })
            .await
    }

    async fn configure_group(
        &self,
        group: GroupName,
        settings: GroupSettings,
    ) -> Result<(), ApiError> {
        self.call(|reply| CoreMsg::ConfigureGroup {
            group,
            settings,
            reply,
        })
        .await
    }

    async fn update_pending(
        &self,
        ids: Vec<TaskId>,
        change: PendingChange,
    ) -> Result<u64, ApiError> {
        self.call(|reply| CoreMsg::UpdatePending { ids, change, reply })
            .await
    }

    async fn create_schedule(&self, spec: ScheduleSpec) -> Result<(), ApiError> {
        self.call(|reply| CoreMsg::CreateSchedule {
            spec: Box::new(spec),
            reply,
        })
        .await
    }

    async fn list_schedules(&self) -> Result<Vec<ScheduleView>, ApiError> {
        self.call(|reply| CoreMsg::ListSchedules { reply }).await
    }

    async fn pause_schedule(&self, name: ScheduleName, paused: bool) -> Result<(), ApiError> {
        self.call(|reply| CoreMsg::PauseSchedule {
            name,
            paused,
            reply,
        })
        .await
    }

    async fn delete_schedule(&self, name: ScheduleName) -> Result<(), ApiError> {
        self.call(|reply| CoreMsg::DeleteSchedule { name, reply })
            .await
    }

    async fn group_settings(&self, group: GroupName) -> Result<GroupSettings, ApiError> {
        self.call(|reply| CoreMsg::GroupSettings { group, reply })
            .await
    }

    async fn fire_broadcast(&self, spec: BroadcastSpec) -> Result<BroadcastView, ApiError> {
        let spec = Box::new(spec);
        self.call(|reply| CoreMsg::FireBroadcast { spec, reply })
            .await
    }

    async fn plan_broadcast(&self, spec: BroadcastSpec) -> Result<BroadcastPlan, ApiError> {
        let spec = Box::new(spec);
        self.call(|reply| CoreMsg::PlanBroadcast { spec, reply })
            .await
    }

    async fn broadcast(&self, id: BroadcastId) -> Result<BroadcastView, ApiError> {
        self.call(|reply| CoreMsg::GetBroadcast { id, reply }).await
    }

    async fn list_broadcasts(&self, query: BroadcastQuery) -> Result<BroadcastPage, ApiError> {
        query.validate()?;
        self.call(|reply| CoreMsg::ListBroadcasts { query, reply })
            .await
    }

    async fn wait_broadcast(
        &self,
        id: BroadcastId,
        timeout: std::time::Duration,
    ) -> Result<BroadcastView, ApiError> {
        let wait = self.call_counted(Budget::Wait, |reply| CoreMsg::AwaitBroadcast { id, reply });
        match tokio::time::timeout(timeout, wait).await {
            Ok(view) => view,
            Err(_) => self.broadcast(id).await,
        }
    }

    async fn list_groups(&self) -> Result<Vec<GroupView>, ApiError> {
        let model = self.reads.current().await?;
        let mut groups = model.read().group_views();
        for group in &mut groups {
            group.times = model.group_times(&group.group);
        }
        Ok(groups)
    }

    async fn history(&self, minutes: usize) -> Result<Vec<MinuteCounts>, ApiError> {
        mawex_api::check_history_minutes(minutes)?;
        let model = self.reads.current().await?;
        Ok(model.history(minutes))
    }

    async fn drain_pod(&self, pod: PodId) -> Result<bool, ApiError> {
        self.call(|reply| CoreMsg::DrainPod { pod, reply }).await
    }

    async fn submit_graph(&self, graph: GraphSpec) -> Result<GraphAck, ApiError> {
        let id = graph.id;
        // Checked and ordered here, on the caller's task: the core only decides.
        let tasks = graph.into_tasks()?;
        self.call(|reply| CoreMsg::SubmitGraph { id, tasks, reply })
            .await
    }

    async fn graph(&self, id: GraphId) -> Result<GraphView, ApiError> {
        // From the read model, off the core thread (a big graph's view takes a while), a
        // few at a time, like a list search.
        let _permit = self.admission.admit(Budget::Request)?;
        let model = self.reads.current().await?;
        let _turn = self.reads.scan_turn().await?;
        tokio::task::spawn_blocking(move || model.read().graph_view(&id))
            .await
            .map_err(|e| ApiError::Internal(format!("reading graph {id} failed: {e}")))?
            .ok_or_else(|| ApiError::NotFound(format!("graph {id} is unknown")))
    }

    async fn cancel_graph(&self, id: GraphId) -> Result<u64, ApiError> {
        self.call(|reply| CoreMsg::CancelGraph { id, reply }).await
    }

    async fn task_output(&self, id: TaskId, after: u64) -> Result<mawex_api::TaskOutput, ApiError> {
        self.call(|reply| CoreMsg::TaskOutput { id, after, reply })
            .await
    }

    async fn list_pods(&self) -> Result<Vec<PodView>, ApiError> {
        // Answered from the published stats (at most a second behind for the heartbeats'
        // figures): a listing never waits behind the core's work, nor builds the read model.
        let stats = self.reads.live_stats()?;
        Ok(stats
            .pods
            .iter()
            .map(|pod| {
                let mut view = PodView::new(pod.id.clone(), pod.groups.to_vec(), pod.slots);
                let held = u32::try_from(pod.leased).unwrap_or(u32::MAX);
                view.held = held;
                view.running = held.min(pod.slots);
                view.labels = (*pod.labels).clone();
                view.address = pod.address.clone();
                view.cpu_permille = pod.usage.cpu_permille;
                view.memory_bytes = pod.usage.memory_bytes;
                view.connected_at = pod.connected_at;
                view.last_heartbeat = pod.last_heard;
                view.draining = pod.draining;
                view
            })
            .collect())
    }

    async fn broadcast_locks(&self) -> Result<Vec<BroadcastLock>, ApiError> {
        self.call(|reply| CoreMsg::BroadcastLocks { reply }).await
    }

    async fn clear_broadcast_lock(&self, app: &str) -> Result<Option<BroadcastId>, ApiError> {
        let app = app.to_owned();
        self.call(|reply| CoreMsg::ClearBroadcastLock { app, reply })
            .await
    }
}
