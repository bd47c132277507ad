//! The `mawex.v1.Master` service: client requests, answered by the in-process proxy.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use mawex_api::convert::{graph_id, parse_update_pending, required, task_id};
use mawex_api::{
    proto, BroadcastQuery, BroadcastSpec, FailedFilter, GraphSpec, GroupName, ListQuery,
    MasterProxy, ResultCursor, ScheduleName, ScheduleSpec, TaskSpec,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use crate::auth::{check_group, token_id, Caller};

pub(crate) struct ClientService {
    proxy: Arc<dyn MasterProxy>,
    /// Ends long waits and streams when the server stops.
    stop: CancellationToken,
}

impl ClientService {
    pub(crate) fn new(proxy: Arc<dyn MasterProxy>, stop: CancellationToken) -> Self {
        ClientService { proxy, stop }
    }
}

fn shutting_down() -> Status {
    Status::unavailable("the server is shutting down")
}

/// Logs an admin action on the audit target: who, what, and the ids it names.
fn audit(caller: Option<&Caller>, action: &str, args: std::fmt::Arguments<'_>) {
    tracing::info!(target: "mawex::audit", token = token_id(caller), action, args = %args, "admin action");
}

/// A task outside the caller's groups answers as if it did not exist: a token limited to
/// some groups learns nothing of the others' tasks.
fn visible(caller: Option<&Caller>, view: &mawex_api::TaskView) -> Result<(), Status> {
    match caller {
        Some(c) if !c.token.allows_group(&view.spec.group) => {
            Err(mawex_api::ApiError::task_not_found(view.spec.id).into())
        }
        _ => Ok(()),
    }
}

impl ClientService {
    /// Refuses, for a token limited to some groups, dependencies outside its groups (a
    /// dependant gets their results). A dependency the master does not know may only be a
    /// task of `own` (the batch or graph itself, submitted with it); one it knows is checked
    /// whatever the request says of it.
    async fn check_dependencies(
        &self,
        caller: Option<&Caller>,
        specs: &[&TaskSpec],
        own: &std::collections::HashSet<mawex_api::TaskId>,
    ) -> Result<(), Status> {
        if caller.is_none_or(|c| c.token.limited_to().is_none()) {
            return Ok(());
        }
        let mut ids = std::collections::BTreeSet::new();
        for spec in specs {
            if spec.after.len() > mawex_api::MAX_DEPENDENCIES {
                return Err(Status::invalid_argument(format!(
                    "task {}: runs after {} tasks, more than {}",
                    spec.id,
                    spec.after.len(),
                    mawex_api::MAX_DEPENDENCIES
                )));
            }
            ids.extend(spec.after.iter().map(|d| d.task));
        }
        if ids.len() > MAX_CHECKED_DEPENDENCIES {
            return Err(Status::invalid_argument(format!(
                "a token limited to some groups names at most {MAX_CHECKED_DEPENDENCIES} \
                 tasks to run after in one request, not {}",
                ids.len()
            )));
        }
        for id in ids {
            match self.proxy.get(id).await {
                Ok(view) => visible(caller, &view)?,
                Err(mawex_api::ApiError::NotFound(_)) if own.contains(&id) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Refuses a graph call to a token limited to some groups: a graph's nodes may be in
    /// any group, and its view would tell of them.
    fn check_unlimited(caller: Option<&Caller>) -> Result<(), Status> {
        match caller {
            Some(c) if c.token.limited_to().is_some() => Err(Status::permission_denied(format!(
                "token {} is limited to some groups; reading or cancelling a graph needs a \
                 token that is not",
                c.token.id()
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses a task outside the caller's groups. Costs a read only for a token limited to
    /// some groups.
    async fn check_task(
        &self,
        caller: Option<&Caller>,
        id: mawex_api::TaskId,
    ) -> Result<(), Status> {
        match caller {
            Some(c) if c.token.limited_to().is_some() => {
                visible(caller, &self.proxy.get(id).await?)
            }
            _ => Ok(()),
        }
    }
}

/// The most distinct dependencies one request of a group-limited token may name (each is
/// looked up to check its group).
const MAX_CHECKED_DEPENDENCIES: usize = 10_000;

type ResultStream = Pin<Box<dyn Stream<Item = Result<proto::TaskResult, Status>> + Send>>;

#[tonic::async_trait]
impl proto::master_server::Master for ClientService {
    async fn submit(
        &self,
        request: Request<proto::SubmitRequest>,
    ) -> Result<Response<proto::SubmitResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        let spec = TaskSpec::try_from(required("task", request.into_inner().task)?)?;
        check_group(caller.as_ref(), &spec.group)?;
        self.check_dependencies(caller.as_ref(), &[&spec], &Default::default())
            .await?;
        let ack = self.proxy.submit(spec).await?;
        Ok(Response::new(ack.into()))
    }

    async fn submit_batch(
        &self,
        request: Request<proto::SubmitBatchRequest>,
    ) -> Result<Response<proto::SubmitBatchResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        let specs = request
            .into_inner()
            .tasks
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                TaskSpec::try_from(t).map_err(|e| {
                    Status::invalid_argument(format!(
                        "task #{i} of the batch: {}",
                        Status::from(e).message()
                    ))
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        for spec in &specs {
            check_group(caller.as_ref(), &spec.group)?;
        }
        let own = specs.iter().map(|s| s.id).collect();
        let refs: Vec<&TaskSpec> = specs.iter().collect();
        self.check_dependencies(caller.as_ref(), &refs, &own)
            .await?;
        let acks = self.proxy.submit_many(specs).await?;
        Ok(Response::new(proto::SubmitBatchResponse {
            acks: acks.into_iter().map(Into::into).collect(),
        }))
    }

    async fn get(
        &self,
        request: Request<proto::TaskIdRequest>,
    ) -> Result<Response<proto::TaskView>, Status> {
        let caller = Caller::of(&request).cloned();
        let id = task_id("id", &request.into_inner().id)?;
        let view = self.proxy.get(id).await?;
        visible(caller.as_ref(), &view)?;
        Ok(Response::new(view.into()))
    }

    async fn cancel(
        &self,
        request: Request<proto::TaskIdRequest>,
    ) -> Result<Response<proto::CancelResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        let id = task_id("id", &request.into_inner().id)?;
        self.check_task(caller.as_ref(), id).await?;
        Ok(Response::new(self.proxy.cancel(id).await?.into()))
    }

    async fn await_result(
        &self,
        request: Request<proto::TaskIdRequest>,
    ) -> Result<Response<proto::TaskResult>, Status> {
        let caller = Caller::of(&request).cloned();
        let id = task_id("id", &request.into_inner().id)?;
        self.check_task(caller.as_ref(), id).await?;
        tokio::select! {
            r = self.proxy.await_result(id) => Ok(Response::new(r?.into())),
            () = self.stop.cancelled() => Err(shutting_down()),
        }
    }

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        let query = ListQuery::try_from(request.into_inner())?;
        if let Some(c) = caller.as_ref().filter(|c| c.token.limited_to().is_some()) {
            match &query.group {
                Some(group) => c.check_group(group)?,
                None => {
                    return Err(Status::permission_denied(format!(
                        "token {} may list only its own groups: name one in the query",
                        c.token.id()
                    )))
                }
            }
        }
        Ok(Response::new(self.proxy.list(query).await?.into()))
    }

    async fn failed_summary(
        &self,
        _request: Request<proto::FailedSummaryRequest>,
    ) -> Result<Response<proto::FailedSummaryResponse>, Status> {
        let counts = self.proxy.failed_summary().await?;
        Ok(Response::new(proto::FailedSummaryResponse {
            counts: counts.into_iter().map(Into::into).collect(),
        }))
    }

    async fn retry_failed(
        &self,
        request: Request<proto::FailedFilter>,
    ) -> Result<Response<proto::CountResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        let filter = FailedFilter::try_from(request.into_inner())?;
        audit(caller.as_ref(), "retry_failed", format_args!("{filter:?}"));
        let count = self.proxy.retry_failed(filter).await?;
        Ok(Response::new(proto::CountResponse { count }))
    }

    async fn purge_failed(
        &self,
        request: Request<proto::FailedFilter>,
    ) -> Result<Response<proto::CountResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        let filter = FailedFilter::try_from(request.into_inner())?;
        audit(caller.as_ref(), "purge_failed", format_args!("{filter:?}"));
        let count = self.proxy.purge_failed(filter).await?;
        Ok(Response::new(proto::CountResponse { count }))
    }

    async fn configure_group(
        &self,
        request: Request<proto::ConfigureGroupRequest>,
    ) -> Result<Response<proto::ConfigureGroupResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        let request = request.into_inner();
        let group = GroupName::new(&request.group)
            .map_err(|e| Status::invalid_argument(format!("group: {e}")))?;
        let settings = required("settings", request.settings)?.into();
        audit(
            caller.as_ref(),
            "configure_group",
            format_args!("group={group} {settings:?}"),
        );
        self.proxy.configure_group(group, settings).await?;
        Ok(Response::new(proto::ConfigureGroupResponse {}))
    }

    async fn update_pending(
        &self,
        request: Request<proto::UpdatePendingRequest>,
    ) -> Result<Response<proto::CountResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        let (ids, change) = parse_update_pending(request.into_inner())?;
        audit(
            caller.as_ref(),
            "update_pending",
            format_args!("tasks={ids:?} {change:?}"),
        );
        let count = self.proxy.update_pending(ids, change).await?;
        Ok(Response::new(proto::CountResponse { count }))
    }

    async fn create_schedule(
        &self,
        request: Request<proto::CreateScheduleRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        let caller = Caller::of(&request).cloned();
        let spec = ScheduleSpec::try_from(required("spec", request.into_inner().spec)?)?;
        audit(
            caller.as_ref(),
            "create_schedule",
            format_args!("schedule={}", spec.name),
        );
        self.proxy.create_schedule(spec).await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn list_schedules(
        &self,
        _request: Request<proto::ListSchedulesRequest>,
    ) -> Result<Response<proto::ListSchedulesResponse>, Status> {
        let schedules = self.proxy.list_schedules().await?;
        Ok(Response::new(proto::ListSchedulesResponse {
            schedules: schedules.into_iter().map(Into::into).collect(),
        }))
    }

    async fn pause_schedule(
        &self,
        request: Request<proto::PauseScheduleRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        let caller = Caller::of(&request).cloned();
        let request = request.into_inner();
        let name = ScheduleName::new(&request.name)
            .map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
        audit(
            caller.as_ref(),
            "pause_schedule",
            format_args!("schedule={name} paused={}", request.paused),
        );
        self.proxy.pause_schedule(name, request.paused).await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn delete_schedule(
        &self,
        request: Request<proto::ScheduleNameRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        let caller = Caller::of(&request).cloned();
        let name = ScheduleName::new(&request.into_inner().name)
            .map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
        audit(
            caller.as_ref(),
            "delete_schedule",
            format_args!("schedule={name}"),
        );
        self.proxy.delete_schedule(name).await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn get_group_settings(
        &self,
        request: Request<proto::GroupRequest>,
    ) -> Result<Response<proto::GroupSettings>, Status> {
        let group = GroupName::new(&request.into_inner().group)
            .map_err(|e| Status::invalid_argument(format!("group: {e}")))?;
        Ok(Response::new(
            self.proxy.group_settings(group).await?.into(),
        ))
    }

    async fn fire_broadcast(
        &self,
        request: Request<proto::FireBroadcastRequest>,
    ) -> Result<Response<proto::BroadcastView>, Status> {
        let caller = Caller::of(&request).cloned();
        let spec = BroadcastSpec::try_from(required("spec", request.into_inner().spec)?)?;
        audit(
            caller.as_ref(),
            "fire_broadcast",
            format_args!(
                "app={} group={} version={:?}",
                spec.app, spec.group, spec.version
            ),
        );
        Ok(Response::new(self.proxy.fire_broadcast(spec).await?.into()))
    }

    async fn plan_broadcast(
        &self,
        request: Request<proto::FireBroadcastRequest>,
    ) -> Result<Response<proto::BroadcastPlan>, Status> {
        let spec = BroadcastSpec::try_from(required("spec", request.into_inner().spec)?)?;
        Ok(Response::new(self.proxy.plan_broadcast(spec).await?.into()))
    }

    async fn get_broadcast(
        &self,
        request: Request<proto::BroadcastIdRequest>,
    ) -> Result<Response<proto::BroadcastView>, Status> {
        let id = request.into_inner().id;
        Ok(Response::new(self.proxy.broadcast(id).await?.into()))
    }

    async fn list_broadcasts(
        &self,
        request: Request<proto::ListBroadcastsRequest>,
    ) -> Result<Response<proto::ListBroadcastsResponse>, Status> {
        let query = BroadcastQuery::try_from(request.into_inner())?;
        Ok(Response::new(
            self.proxy.list_broadcasts(query).await?.into(),
        ))
    }

    async fn wait_broadcast(
        &self,
        request: Request<proto::WaitBroadcastRequest>,
    ) -> Result<Response<proto::BroadcastView>, Status> {
        let request = request.into_inner();
        let timeout = std::time::Duration::from_millis(request.timeout_ms);
        tokio::select! {
            r = self.proxy.wait_broadcast(request.id, timeout) => Ok(Response::new(r?.into())),
            () = self.stop.cancelled() => Err(shutting_down()),
        }
    }

    async fn list_broadcast_locks(
        &self,
        _request: Request<proto::Empty>,
    ) -> Result<Response<proto::ListBroadcastLocksResponse>, Status> {
        let locks = self.proxy.broadcast_locks().await?;
        Ok(Response::new(proto::ListBroadcastLocksResponse {
            locks: locks.into_iter().map(Into::into).collect(),
        }))
    }

    async fn list_groups(
        &self,
        _request: Request<proto::Empty>,
    ) -> Result<Response<proto::ListGroupsResponse>, Status> {
        let groups = self.proxy.list_groups().await?;
        Ok(Response::new(proto::ListGroupsResponse {
            groups: groups.into_iter().map(Into::into).collect(),
        }))
    }

    async fn history(
        &self,
        request: Request<proto::HistoryRequest>,
    ) -> Result<Response<proto::HistoryResponse>, Status> {
        let minutes = usize::try_from(request.into_inner().minutes).unwrap_or(usize::MAX);
        let minutes = self.proxy.history(minutes).await?;
        Ok(Response::new(proto::HistoryResponse {
            minutes: minutes.into_iter().map(Into::into).collect(),
        }))
    }

    async fn drain_pod(
        &self,
        request: Request<proto::DrainPodRequest>,
    ) -> Result<Response<proto::DrainPodResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        let pod = request.into_inner().pod;
        audit(caller.as_ref(), "drain_pod", format_args!("pod={pod}"));
        let pod = mawex_api::PodId::new(&pod)
            .map_err(|e| Status::invalid_argument(format!("pod: {e}")))?;
        let found = self.proxy.drain_pod(pod).await?;
        Ok(Response::new(proto::DrainPodResponse { found }))
    }

    async fn submit_graph(
        &self,
        request: Request<proto::SubmitGraphRequest>,
    ) -> Result<Response<proto::SubmitGraphResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        let graph = GraphSpec::try_from(required("graph", request.into_inner().graph)?)?;
        for node in &graph.nodes {
            check_group(caller.as_ref(), &node.spec.group)?;
        }
        let own = graph
            .nodes
            .iter()
            .map(|n| graph.id.node_id(&n.name))
            .collect();
        let refs: Vec<&TaskSpec> = graph.nodes.iter().map(|n| &n.spec).collect();
        self.check_dependencies(caller.as_ref(), &refs, &own)
            .await?;
        let ack = self.proxy.submit_graph(graph).await?;
        Ok(Response::new(ack.into()))
    }

    async fn get_output(
        &self,
        request: Request<proto::GetOutputRequest>,
    ) -> Result<Response<proto::TaskOutput>, Status> {
        let caller = Caller::of(&request).cloned();
        let request = request.into_inner();
        let id = task_id("id", &request.id)?;
        self.check_task(caller.as_ref(), id).await?;
        let output = self.proxy.task_output(id, request.after).await?;
        Ok(Response::new(output.into()))
    }

    async fn get_graph(
        &self,
        request: Request<proto::GraphIdRequest>,
    ) -> Result<Response<proto::GraphView>, Status> {
        Self::check_unlimited(Caller::of(&request))?;
        let request = request.into_inner();
        let view = self.proxy.graph(graph_id("id", &request.id)?).await?;
        Ok(Response::new(if request.compact {
            mawex_api::convert::compact_view(view)
        } else {
            view.into()
        }))
    }

    async fn cancel_graph(
        &self,
        request: Request<proto::GraphIdRequest>,
    ) -> Result<Response<proto::CountResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        Self::check_unlimited(caller.as_ref())?;
        let id = graph_id("id", &request.into_inner().id)?;
        let count = self.proxy.cancel_graph(id).await?;
        Ok(Response::new(proto::CountResponse { count }))
    }

    async fn list_pods(
        &self,
        _request: Request<proto::Empty>,
    ) -> Result<Response<proto::ListPodsResponse>, Status> {
        let pods = self.proxy.list_pods().await?;
        Ok(Response::new(proto::ListPodsResponse {
            pods: pods.into_iter().map(Into::into).collect(),
        }))
    }

    async fn clear_broadcast_lock(
        &self,
        request: Request<proto::ClearBroadcastLockRequest>,
    ) -> Result<Response<proto::ClearBroadcastLockResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        let app = request.into_inner().app;
        audit(
            caller.as_ref(),
            "clear_broadcast_lock",
            format_args!("app={app}"),
        );
        let broadcast = self.proxy.clear_broadcast_lock(&app).await?;
        Ok(Response::new(proto::ClearBroadcastLockResponse {
            broadcast,
        }))
    }

    type StreamResultsStream = ResultStream;

    async fn stream_results(
        &self,
        request: Request<proto::StreamResultsRequest>,
    ) -> Result<Response<ResultStream>, Status> {
        let caller = Caller::of(&request).cloned();
        let request = request.into_inner();
        let group = GroupName::new(&request.group)
            .map_err(|e| Status::invalid_argument(format!("group: {e}")))?;
        check_group(caller.as_ref(), &group)?;
        let results = self
            .proxy
            .results(group, request.after.map(ResultCursor))
            .await?;
        let stop = self.stop.clone();
        // A stream ends when the server stops or its token is revoked.
        let revoked = crate::auth::revoked(caller.as_ref());
        let results = results
            .map(|r| r.map(Into::into).map_err(Status::from))
            .take_until(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = revoked => {}
                }
            });
        Ok(Response::new(Box::pin(results)))
    }
}
