//! The gRPC clients of a master: [`RemoteMasterProxy`] for clients, [`GrpcPodConnector`]
//! for pods, both over a list of endpoints configured by a [`ChannelConfig`].

mod channel;
mod pod_connector;

pub use channel::{AuthChannel, Bearer, BearerToken, ChannelConfig, ClientTls};
pub use pod_connector::GrpcPodConnector;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream;
use tokio::sync::{mpsc, oneshot, Semaphore};

use channel::{retrying, Masters};

use crate::admin::{
    FailedCount, FailedFilter, GroupSettings, GroupView, MinuteCounts, PendingChange, PodView,
    ScheduleSpec, ScheduleView,
};
use crate::broadcast::{
    BroadcastId, BroadcastLock, BroadcastPage, BroadcastPlan, BroadcastQuery, BroadcastSpec,
    BroadcastView,
};
use crate::error::ApiError;
use crate::graph::{GraphAck, GraphSpec, GraphView};
use crate::ids::{GraphId, GroupName, PodId, ScheduleName, TaskId};
use crate::output::TaskOutput;
use crate::proto;
use crate::proto::master_client::MasterClient;
use crate::proxy::{
    check_history_minutes, CancelAck, ListQuery, MasterProxy, ResultCursor, ResultStream,
    SubmitAck, TaskPage,
};
use crate::task::{TaskResult, TaskSpec, TaskView};

/// Settings of a [`RemoteMasterProxy`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteConfig {
    /// How long a call keeps retrying while no master is reachable (restarting, failing
    /// over) before it returns `Unavailable`. Every call is safe to retry: submits are
    /// idempotent by task id. Default: 30 s.
    pub retry_for: Duration,
    /// Most specs sent in one coalesced batch of concurrent `submit` calls. Default: 1024.
    pub max_submit_batch: usize,
    /// Timeouts, keepalive and message size of the connections.
    pub channel: ChannelConfig,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            retry_for: Duration::from_secs(30),
            max_submit_batch: 1024,
            channel: ChannelConfig::default(),
        }
    }
}

/// Concurrent batch RPCs of the submit coalescer.
const SUBMIT_PIPELINE: usize = 8;

struct PendingSubmit {
    spec: TaskSpec,
    reply: oneshot::Sender<Result<SubmitAck, ApiError>>,
}

/// Talks to a master over gRPC. Cheap to clone; reconnects by itself, retries calls while the
/// master is unreachable, and coalesces concurrent `submit`s into batches.
#[derive(Clone)]
pub struct RemoteMasterProxy {
    masters: Arc<Masters>,
    config: Arc<RemoteConfig>,
    submits: mpsc::UnboundedSender<PendingSubmit>,
}

impl std::fmt::Debug for RemoteMasterProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteMasterProxy")
            .field("masters", &self.masters.describe())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RemoteMasterProxy {
    /// A proxy for the master at `endpoint` (e.g. `http://127.0.0.1:7070`) with the default
    /// [`RemoteConfig`]. Connects on first use. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// `InvalidArgument` for a malformed endpoint.
    pub fn connect(endpoint: &str) -> Result<Self, ApiError> {
        Self::with_config([endpoint], RemoteConfig::default())
    }

    /// A proxy for the masters at `endpoints`, with settings. Calls go to one of them; one
    /// that finds it unreachable moves on to the next.
    ///
    /// # Errors
    /// `InvalidArgument` for an empty list or a malformed endpoint.
    pub fn with_config<I, S>(endpoints: I, config: RemoteConfig) -> Result<Self, ApiError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let masters = Arc::new(Masters::new(endpoints, &config.channel)?);
        let config = Arc::new(config);
        let (submits, queue) = mpsc::unbounded_channel();
        tokio::spawn(coalesce_submits(masters.clone(), config.clone(), queue));
        Ok(RemoteMasterProxy {
            masters,
            config,
            submits,
        })
    }

    /// One unary RPC, retried while the master is unreachable.
    async fn unary<Req, Resp, F, Fut>(&self, request: Req, call: F) -> Result<Resp, ApiError>
    where
        Req: Clone,
        F: Fn(MasterClient<AuthChannel>, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        retrying(&self.masters, self.config.retry_for, |channel| {
            let response = call(client(channel, &self.config), request.clone());
            async move { Ok(response.await?.into_inner()) }
        })
        .await
    }

    async fn submit_batch(&self, specs: Vec<TaskSpec>) -> Result<Vec<SubmitAck>, ApiError> {
        submit_batch(&self.masters, &self.config, specs).await
    }

    async fn open_results(
        &self,
        group: &GroupName,
        after: Option<u64>,
    ) -> Result<tonic::Streaming<proto::TaskResult>, ApiError> {
        let request = proto::StreamResultsRequest {
            group: group.to_string(),
            after,
        };
        self.unary(request, |mut c, r| async move { c.stream_results(r).await })
            .await
    }
}

/// A client of the `Master` service over `channel`, with the configured message size.
fn client(channel: AuthChannel, config: &RemoteConfig) -> MasterClient<AuthChannel> {
    MasterClient::new(channel)
        .max_decoding_message_size(config.channel.max_message_bytes)
        .max_encoding_message_size(config.channel.max_message_bytes)
}

async fn submit_batch(
    masters: &Masters,
    config: &RemoteConfig,
    specs: Vec<TaskSpec>,
) -> Result<Vec<SubmitAck>, ApiError> {
    let request = proto::SubmitBatchRequest {
        tasks: specs.into_iter().map(Into::into).collect(),
    };
    let response = retrying(masters, config.retry_for, |channel| {
        let mut client = client(channel, config);
        let request = request.clone();
        async move { Ok(client.submit_batch(request).await?.into_inner()) }
    })
    .await?;
    response.acks.into_iter().map(TryInto::try_into).collect()
}

/// Gathers concurrent `submit`s into batch RPCs: whatever queued while the previous batch was
/// on the wire goes out together. A batch the master refuses as a whole is retried one spec at
/// a time, so each caller gets its own answer.
async fn coalesce_submits(
    masters: Arc<Masters>,
    config: Arc<RemoteConfig>,
    mut queue: mpsc::UnboundedReceiver<PendingSubmit>,
) {
    let pipeline = Arc::new(Semaphore::new(SUBMIT_PIPELINE));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = pipeline.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < config.max_submit_batch {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (masters, config) = (masters.clone(), config.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let specs = batch.iter().map(|p| p.spec.clone()).collect();
            match submit_batch(&masters, &config, specs).await {
                Ok(acks) if acks.len() == batch.len() => {
                    for (p, ack) in batch.into_iter().zip(acks) {
                        let _ = p.reply.send(Ok(ack));
                    }
                }
                Ok(_) => {
                    for p in batch {
                        let _ = p.reply.send(Err(ApiError::Internal(
                            "the master answered a batch with the wrong number of acks".into(),
                        )));
                    }
                }
                Err(
                    ApiError::InvalidArgument(_)
                    | ApiError::Conflict(_)
                    | ApiError::ResourceExhausted(_),
                ) if batch.len() > 1 => {
                    for p in batch {
                        let r = submit_batch(&masters, &config, vec![p.spec])
                            .await
                            .and_then(|mut acks| {
                                acks.pop().ok_or_else(|| {
                                    ApiError::Internal("an empty answer to a submit".into())
                                })
                            });
                        let _ = p.reply.send(r);
                    }
                }
                Err(e) => {
                    for p in batch {
                        let _ = p.reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

#[async_trait]
impl MasterProxy for RemoteMasterProxy {
    async fn submit(&self, spec: TaskSpec) -> Result<SubmitAck, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.submits
            .send(PendingSubmit { spec, reply })
            .map_err(|_| ApiError::Internal("the submit coalescer stopped".into()))?;
        answer
            .await
            .map_err(|_| ApiError::Internal("the submit coalescer dropped a submit".into()))?
    }

    async fn submit_many(&self, specs: Vec<TaskSpec>) -> Result<Vec<SubmitAck>, ApiError> {
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        self.submit_batch(specs).await
    }

    async fn get(&self, id: TaskId) -> Result<TaskView, ApiError> {
        let request = proto::TaskIdRequest { id: id.to_string() };
        let view = self
            .unary(request, |mut c, r| async move { c.get(r).await })
            .await?;
        view.try_into()
    }

    async fn cancel(&self, id: TaskId) -> Result<CancelAck, ApiError> {
        let request = proto::TaskIdRequest { id: id.to_string() };
        let ack = self
            .unary(request, |mut c, r| async move { c.cancel(r).await })
            .await?;
        ack.try_into()
    }

    async fn await_result(&self, id: TaskId) -> Result<TaskResult, ApiError> {
        let request = proto::TaskIdRequest { id: id.to_string() };
        let result = self
            .unary(request, |mut c, r| async move { c.await_result(r).await })
            .await?;
        result.try_into()
    }

    async fn results(
        &self,
        group: GroupName,
        after: Option<ResultCursor>,
    ) -> Result<ResultStream, ApiError> {
        let first = self.open_results(&group, after.map(|c| c.0)).await?;
        struct Feed {
            proxy: RemoteMasterProxy,
            group: GroupName,
            cursor: Option<u64>,
            stream: Option<tonic::Streaming<proto::TaskResult>>,
        }
        let feed = Feed {
            proxy: self.clone(),
            group,
            cursor: after.map(|c| c.0),
            stream: Some(first),
        };
        // Resumes from the last result seen whenever the connection drops.
        let results = stream::unfold(Some(feed), |feed| async move {
            let mut feed = feed?;
            loop {
                if let Some(stream) = feed.stream.as_mut() {
                    match stream.message().await {
                        Ok(Some(result)) => {
                            let result = TaskResult::try_from(result);
                            if let Ok(r) = &result {
                                feed.cursor = Some(r.seq);
                            }
                            return Some((result, Some(feed)));
                        }
                        Ok(None) => feed.stream = None,
                        Err(status) => match ApiError::from(status) {
                            // Gone, or cut off for falling behind: resume from the cursor.
                            e if e.is_retryable()
                                || matches!(e, ApiError::ResourceExhausted(_)) =>
                            {
                                feed.stream = None
                            }
                            other => return Some((Err(other), None)),
                        },
                    }
                }
                // A pause so that a stream the server keeps ending is not reopened hot.
                tokio::time::sleep(Duration::from_millis(50)).await;
                match feed.proxy.open_results(&feed.group, feed.cursor).await {
                    Ok(stream) => feed.stream = Some(stream),
                    Err(e) => return Some((Err(e), None)),
                }
            }
        });
        Ok(Box::pin(results))
    }

    async fn list(&self, query: ListQuery) -> Result<TaskPage, ApiError> {
        let searches = query.scans() || query.newest_first;
        let request = proto::ListRequest::from(query);
        let page = self
            .unary(request, |mut c, r| async move { c.list(r).await })
            .await?;
        // An older master ignores the filters it does not know: its page is not the one
        // asked for (and a bulk action over it would take the wrong tasks).
        if searches && !page.searched {
            return Err(ApiError::Unimplemented(
                "this master predates list searches (handler, keys, error text, payload, time, \
                 newest first); upgrade it"
                    .into(),
            ));
        }
        page.try_into()
    }

    async fn failed_summary(&self) -> Result<Vec<FailedCount>, ApiError> {
        let response = retrying(&self.masters, self.config.retry_for, |channel| {
            let mut client = client(channel, &self.config);
            async move {
                Ok(client
                    .failed_summary(proto::FailedSummaryRequest {})
                    .await?
                    .into_inner())
            }
        })
        .await?;
        response.counts.into_iter().map(TryInto::try_into).collect()
    }

    async fn retry_failed(&self, filter: FailedFilter) -> Result<u64, ApiError> {
        // Retrying is idempotent: a task already back in the queue is no longer failed.
        let request = proto::FailedFilter::from(filter);
        let response = self
            .unary(request, |mut c, r| async move { c.retry_failed(r).await })
            .await?;
        Ok(response.count)
    }

    async fn purge_failed(&self, filter: FailedFilter) -> Result<u64, ApiError> {
        let request = proto::FailedFilter::from(filter);
        let response = self
            .unary(request, |mut c, r| async move { c.purge_failed(r).await })
            .await?;
        Ok(response.count)
    }

    async fn configure_group(
        &self,
        group: GroupName,
        settings: GroupSettings,
    ) -> Result<(), ApiError> {
        let request = proto::ConfigureGroupRequest {
            group: group.to_string(),
            settings: Some(settings.into()),
        };
        self.unary(
            request,
            |mut c, r| async move { c.configure_group(r).await },
        )
        .await?;
        Ok(())
    }

    async fn update_pending(
        &self,
        ids: Vec<TaskId>,
        change: PendingChange,
    ) -> Result<u64, ApiError> {
        // Idempotent: applying the same change twice leaves the same queue.
        let request = crate::convert::update_pending_request(&ids, &change);
        let response = self
            .unary(request, |mut c, r| async move { c.update_pending(r).await })
            .await?;
        Ok(response.count)
    }

    async fn create_schedule(&self, spec: ScheduleSpec) -> Result<(), ApiError> {
        // Idempotent: the same schedule created twice is one schedule.
        let request = proto::CreateScheduleRequest {
            spec: Some(spec.into()),
        };
        self.unary(
            request,
            |mut c, r| async move { c.create_schedule(r).await },
        )
        .await?;
        Ok(())
    }

    async fn list_schedules(&self) -> Result<Vec<ScheduleView>, ApiError> {
        let response = retrying(&self.masters, self.config.retry_for, |channel| {
            let mut client = client(channel, &self.config);
            async move {
                Ok(client
                    .list_schedules(proto::ListSchedulesRequest {})
                    .await?
                    .into_inner())
            }
        })
        .await?;
        response
            .schedules
            .into_iter()
            .map(TryInto::try_into)
            .collect()
    }

    async fn pause_schedule(&self, name: ScheduleName, paused: bool) -> Result<(), ApiError> {
        let request = proto::PauseScheduleRequest {
            name: name.to_string(),
            paused,
        };
        self.unary(request, |mut c, r| async move { c.pause_schedule(r).await })
            .await?;
        Ok(())
    }

    async fn delete_schedule(&self, name: ScheduleName) -> Result<(), ApiError> {
        let request = proto::ScheduleNameRequest {
            name: name.to_string(),
        };
        self.unary(
            request,
            |mut c, r| async move { c.delete_schedule(r).await },
        )
        .await?;
        Ok(())
    }

    async fn group_settings(&self, group: GroupName) -> Result<GroupSettings, ApiError> {
        let request = proto::GroupRequest {
            group: group.to_string(),
        };
        let settings = self
            .unary(
                request,
                |mut c, r| async move { c.get_group_settings(r).await },
            )
            .await?;
        Ok(settings.into())
    }

    async fn fire_broadcast(&self, spec: BroadcastSpec) -> Result<BroadcastView, ApiError> {
        // Retrying is safe: the identical spec while it runs returns the same broadcast.
        let request = proto::FireBroadcastRequest {
            spec: Some(spec.into()),
        };
        self.unary(request, |mut c, r| async move { c.fire_broadcast(r).await })
            .await?
            .try_into()
    }

    async fn plan_broadcast(&self, spec: BroadcastSpec) -> Result<BroadcastPlan, ApiError> {
        let request = proto::FireBroadcastRequest {
            spec: Some(spec.into()),
        };
        self.unary(request, |mut c, r| async move { c.plan_broadcast(r).await })
            .await?
            .try_into()
    }

    async fn broadcast(&self, id: BroadcastId) -> Result<BroadcastView, ApiError> {
        let request = proto::BroadcastIdRequest { id };
        self.unary(request, |mut c, r| async move { c.get_broadcast(r).await })
            .await?
            .try_into()
    }

    async fn list_broadcasts(&self, query: BroadcastQuery) -> Result<BroadcastPage, ApiError> {
        query.validate()?;
        let request = proto::ListBroadcastsRequest::from(query);
        self.unary(
            request,
            |mut c, r| async move { c.list_broadcasts(r).await },
        )
        .await?
        .try_into()
    }

    async fn wait_broadcast(
        &self,
        id: BroadcastId,
        timeout: Duration,
    ) -> Result<BroadcastView, ApiError> {
        let request = proto::WaitBroadcastRequest {
            id,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        self.unary(request, |mut c, r| async move { c.wait_broadcast(r).await })
            .await?
            .try_into()
    }

    async fn broadcast_locks(&self) -> Result<Vec<BroadcastLock>, ApiError> {
        let locks = self
            .unary(proto::Empty {}, |mut c, r| async move {
                c.list_broadcast_locks(r).await
            })
            .await?;
        Ok(locks.locks.into_iter().map(Into::into).collect())
    }

    async fn list_pods(&self) -> Result<Vec<PodView>, ApiError> {
        let pods = self
            .unary(
                proto::Empty {},
                |mut c, r| async move { c.list_pods(r).await },
            )
            .await?;
        pods.pods.into_iter().map(PodView::try_from).collect()
    }

    async fn drain_pod(&self, pod: PodId) -> Result<bool, ApiError> {
        let request = proto::DrainPodRequest {
            pod: pod.to_string(),
        };
        let answer = self
            .unary(request, |mut c, r| async move { c.drain_pod(r).await })
            .await?;
        Ok(answer.found)
    }

    async fn list_groups(&self) -> Result<Vec<GroupView>, ApiError> {
        let groups = self
            .unary(
                proto::Empty {},
                |mut c, r| async move { c.list_groups(r).await },
            )
            .await?;
        groups.groups.into_iter().map(GroupView::try_from).collect()
    }

    async fn history(&self, minutes: usize) -> Result<Vec<MinuteCounts>, ApiError> {
        check_history_minutes(minutes)?;
        let request = proto::HistoryRequest {
            minutes: u32::try_from(minutes).unwrap_or(u32::MAX),
        };
        let answer = self
            .unary(request, |mut c, r| async move { c.history(r).await })
            .await?;
        Ok(answer.minutes.into_iter().map(MinuteCounts::from).collect())
    }

    async fn submit_graph(&self, graph: GraphSpec) -> Result<GraphAck, ApiError> {
        let request = proto::SubmitGraphRequest {
            graph: Some(graph.into()),
        };
        let answer = self
            .unary(request, |mut c, r| async move { c.submit_graph(r).await })
            .await?;
        answer.try_into()
    }

    async fn graph(&self, id: GraphId) -> Result<GraphView, ApiError> {
        let request = proto::GraphIdRequest {
            id: id.to_string(),
            compact: true,
        };
        let answer = self
            .unary(request, |mut c, r| async move { c.get_graph(r).await })
            .await?;
        answer.try_into()
    }

    async fn task_output(&self, id: TaskId, after: u64) -> Result<TaskOutput, ApiError> {
        let request = proto::GetOutputRequest {
            id: id.to_string(),
            after,
        };
        let answer = self
            .unary(request, |mut c, r| async move { c.get_output(r).await })
            .await?;
        answer.try_into()
    }

    async fn cancel_graph(&self, id: GraphId) -> Result<u64, ApiError> {
        let request = proto::GraphIdRequest {
            id: id.to_string(),
            compact: false,
        };
        let answer = self
            .unary(request, |mut c, r| async move { c.cancel_graph(r).await })
            .await?;
        Ok(answer.count)
    }

    async fn clear_broadcast_lock(&self, app: &str) -> Result<Option<BroadcastId>, ApiError> {
        let request = proto::ClearBroadcastLockRequest {
            app: app.to_owned(),
        };
        let cleared = self
            .unary(request, |mut c, r| async move {
                c.clear_broadcast_lock(r).await
            })
            .await?;
        Ok(cleared.broadcast)
    }
}
