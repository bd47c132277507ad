//! The handlers of `/api/v1` and the OpenAPI document they make up.

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;
use bytes::Bytes;
use mawex_api::{BroadcastQuery, CancelAck, FailedFilter, PodId, MAX_LIST_LIMIT};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{check_group, check_visible, is_limited, Caller};
use crate::error::ErrorAnswer;
use crate::json::{
    group, schedule_name, task_id, Broadcast, BroadcastPage, FailedCount, FailedFilterBody, Group,
    GroupSettingsBody, GroupSettingsPatch, Matched, Minute, NewBroadcast, NewSchedule, NewTask,
    Pod, Schedule, Submitted, Task, TaskFilter, TaskPage,
};
use crate::{AppState, WebConfig, WebError};

/// The most tasks one batch submit takes.
pub const MAX_BATCH: usize = 10_000;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mawex",
        description = "Submit and inspect tasks, groups, pods and the failed queue of a mawex master."
    ),
    components(schemas(ErrorAnswer))
)]
struct ApiDoc;

pub(crate) fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().split_for_parts().1
}

fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(submit, list_tasks))
        .routes(routes!(submit_batch))
        .routes(routes!(crate::bulk::bulk_tasks))
        .routes(routes!(get_task))
        .routes(routes!(cancel_task))
        .routes(routes!(retry_task))
        .routes(routes!(failed_summary))
        .routes(routes!(retry_failed))
        .routes(routes!(purge_failed))
        .routes(routes!(list_groups))
        .routes(routes!(history))
        .routes(routes!(get_group, set_group, patch_group))
        .routes(routes!(list_pods))
        .routes(routes!(drain_pod))
        .routes(routes!(list_schedules, create_schedule))
        .routes(routes!(delete_schedule))
        .routes(routes!(pause_schedule))
        .routes(routes!(resume_schedule))
        .routes(routes!(list_broadcasts, fire_broadcast))
        .routes(routes!(get_broadcast))
        .routes(routes!(crate::workflows::submit_graph))
        .routes(routes!(crate::workflows::get_graph))
        .routes(routes!(crate::workflows::cancel_graph))
        .routes(routes!(crate::workflows::task_output))
}

pub(crate) fn router(state: AppState, config: &WebConfig) -> axum::Router {
    let (api, doc) = api_routes().split_for_parts();
    let doc = std::sync::Arc::new(doc);
    api.route(
        "/api/openapi.json",
        get(move || {
            let doc = doc.clone();
            async move { Json(doc.as_ref().clone()) }
        }),
    )
    .route("/metrics", get(crate::metrics::metrics))
    .merge(crate::pages::routes())
    .merge(crate::login::routes())
    .fallback(|| async { WebError::Api(mawex_api::ApiError::NotFound("this path".into())) })
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        crate::auth::guard,
    ))
    .layer(DefaultBodyLimit::max(config.max_body_bytes))
    .layer(axum::middleware::map_response(security_headers))
    .with_state(state)
}

/// What every answer says to the browser: load scripts, styles and frames from this
/// dashboard only, never be framed by another site, and take each type as declared.
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    use axum::http::HeaderValue;
    let headers = response.headers_mut();
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The body as `T`, or a clear error: too large, or not the JSON expected (with where).
pub(crate) fn body<T: DeserializeOwned>(
    app: &AppState,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<T, WebError> {
    let bytes = bytes.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(failed)
            if failed.status() == StatusCode::PAYLOAD_TOO_LARGE =>
        {
            WebError::TooLarge(app.max_body_bytes)
        }
        other => WebError::BadRequest(other.body_text()),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| WebError::BadRequest(format!("the body: {e}")))
}

/// Submits a task.
#[utoipa::path(
    post, path = "/api/v1/tasks", tag = "tasks",
    request_body = NewTask,
    responses(
        (status = 200, description = "Accepted (or a repeat of a known id, or a dedup hit)", body = Submitted),
        (status = 400, description = "Malformed", body = ErrorAnswer),
        (status = 413, description = "Too large", body = ErrorAnswer),
    )
)]
async fn submit(
    State(app): State<AppState>,
    caller: Caller,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Submitted>, WebError> {
    let spec = body::<NewTask>(&app, bytes)?.spec()?;
    check_group(&caller, &spec.group)?;
    crate::workflows::check_dependencies(&app, &caller, &[&spec], &Default::default()).await?;
    Ok(Json(app.proxy.submit(spec).await?.into()))
}

/// Submits tasks atomically: all are recorded, or none.
#[utoipa::path(
    post, path = "/api/v1/tasks/batch", tag = "tasks",
    request_body = Vec<NewTask>,
    responses(
        (status = 200, description = "Accepted, in order", body = Vec<Submitted>),
        (status = 400, description = "A malformed task (named by its index)", body = ErrorAnswer),
        (status = 413, description = "Too large", body = ErrorAnswer),
    )
)]
async fn submit_batch(
    State(app): State<AppState>,
    caller: Caller,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Vec<Submitted>>, WebError> {
    let tasks: Vec<NewTask> = body(&app, bytes)?;
    if tasks.len() > MAX_BATCH {
        return Err(WebError::BadRequest(format!(
            "a batch takes at most {MAX_BATCH} tasks, not {}",
            tasks.len()
        )));
    }
    let specs = tasks
        .into_iter()
        .enumerate()
        .map(|(i, task)| {
            task.spec()
                .map_err(|e| WebError::BadRequest(format!("task {i}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for spec in &specs {
        check_group(&caller, &spec.group)?;
    }
    let own = specs.iter().map(|s| s.id).collect();
    let refs: Vec<&mawex_api::TaskSpec> = specs.iter().collect();
    crate::workflows::check_dependencies(&app, &caller, &refs, &own).await?;
    let acks = app.proxy.submit_many(specs).await?;
    Ok(Json(acks.into_iter().map(Submitted::from).collect()))
}

/// A task search: its filters, its order and its page. The API's query parameters and the
/// tasks page's form and links alike.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct TaskSearch {
    /// Only this task (an exact id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    /// Only tasks of this group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) group: Option<String>,
    /// Only tasks in this state: `blocked`, `pending`, `running`, `succeeded`, `failed`,
    /// `cancelled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) state: Option<String>,
    /// Only tasks run by this handler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) handler: Option<String>,
    /// Only tasks with this dedup key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dedup_key: Option<String>,
    /// Only tasks with this fairness key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fairness_key: Option<String>,
    /// Only tasks whose last error's message contains this text (case-sensitive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// Only tasks whose last error is of this kind (`handler`, `timed-out`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<String>,
    /// Only tasks whose payload contains this text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) payload: Option<String>,
    /// Only tasks submitted at or after this time (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) from: Option<String>,
    /// Only tasks submitted before this time (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) until: Option<String>,
    /// `oldest` first (the default) or `newest` first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) order: Option<String>,
    /// The previous page's `next`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) after: Option<String>,
    /// Page size, 1 to 1,000 (default 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) limit: Option<usize>,
    /// Include payloads and outputs (default: left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bodies: Option<bool>,
}

impl TaskSearch {
    /// Whether the search examines tasks one by one (a filter besides group and state).
    pub(crate) fn scans(&self) -> bool {
        [
            &self.handler,
            &self.dedup_key,
            &self.fairness_key,
            &self.error,
            &self.kind,
            &self.payload,
            &self.from,
            &self.until,
        ]
        .into_iter()
        .any(|field| crate::json::filled(field).is_some())
    }

    /// The filters alone.
    pub(crate) fn filter(&self) -> TaskFilter {
        TaskFilter {
            group: self.group.clone(),
            state: self.state.clone(),
            handler: self.handler.clone(),
            dedup_key: self.dedup_key.clone(),
            fairness_key: self.fairness_key.clone(),
            error: self.error.clone(),
            kind: self.kind.clone(),
            payload: self.payload.clone(),
            from: self.from.clone(),
            until: self.until.clone(),
        }
    }

    /// The search without its page (`after`) and with blank fields left out, as a query
    /// string.
    pub(crate) fn without_page(&self) -> String {
        let mut search = self.clone();
        search.after = None;
        for field in [
            &mut search.id,
            &mut search.group,
            &mut search.state,
            &mut search.handler,
            &mut search.dedup_key,
            &mut search.fairness_key,
            &mut search.error,
            &mut search.kind,
            &mut search.payload,
            &mut search.from,
            &mut search.until,
            &mut search.order,
        ] {
            if crate::json::filled(field).is_none() {
                *field = None;
            }
        }
        serde_urlencoded::to_string(&search).unwrap_or_default()
    }

    /// The page this search asks for, `default_limit` tasks unless it says. A search by id
    /// is a page of that task, or an empty one.
    pub(crate) async fn run(
        &self,
        proxy: &dyn mawex_api::MasterProxy,
        default_limit: usize,
    ) -> Result<mawex_api::TaskPage, WebError> {
        let mut query = self
            .filter()
            .query()?
            .limit(self.limit.unwrap_or(default_limit).min(MAX_LIST_LIMIT + 1));
        if newest_first(self.order.as_deref())? {
            query = query.newest_first();
        }
        if let Some(after) = crate::json::filled(&self.after) {
            query = query.after(task_id(after)?);
        }
        if !self.bodies.unwrap_or(false) {
            query = query.without_bodies();
        }
        query.validate()?;
        if let Some(id) = crate::json::filled(&self.id) {
            return match proxy.get(task_id(id)?).await {
                Ok(view) => Ok(mawex_api::TaskPage::new(vec![view], None)),
                Err(mawex_api::ApiError::NotFound(_)) => {
                    Ok(mawex_api::TaskPage::new(Vec::new(), None))
                }
                Err(e) => Err(e.into()),
            };
        }
        Ok(proxy.list(query).await?)
    }
}

/// Whether `order` (`oldest` or `newest`, absent: oldest) puts the newest first.
pub(crate) fn newest_first(order: Option<&str>) -> Result<bool, WebError> {
    match order.map(str::trim) {
        None | Some("" | "oldest") => Ok(false),
        Some("newest") => Ok(true),
        Some(other) => Err(WebError::BadRequest(format!(
            "order: {other:?} is neither \"oldest\" nor \"newest\""
        ))),
    }
}

/// Lists and searches tasks, a page at a time, oldest or newest first. Group and state are
/// answered from indexes; the other filters examine tasks one by one, so a page of a rare
/// match may come back short, with a `next` to go on from.
#[utoipa::path(
    get, path = "/api/v1/tasks", tag = "tasks",
    params(TaskSearch),
    responses(
        (status = 200, body = TaskPage),
        (status = 400, description = "A bad filter", body = ErrorAnswer),
    )
)]
async fn list_tasks(
    State(app): State<AppState>,
    caller: Caller,
    params: Result<Query<TaskSearch>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TaskPage>, WebError> {
    let Query(search) = params.map_err(|e| WebError::BadRequest(e.body_text()))?;
    if let Some(user) = is_limited(&caller) {
        // As on gRPC: a caller of some groups lists one of them at a time.
        match crate::json::filled(&search.group) {
            Some(g) => check_group(&caller, &group("group", g)?)?,
            None => {
                return Err(WebError::Api(mawex_api::ApiError::PermissionDenied(
                    format!(
                        "token {} may list only its own groups: name one (group=…)",
                        user.id
                    ),
                )))
            }
        }
    }
    let mut page = search.run(app.proxy.as_ref(), 100).await?;
    // A search by id finds any task: one of another group is not there for this caller.
    page.tasks
        .retain(|view| check_visible(&caller, view).is_ok());
    Ok(Json(TaskPage {
        tasks: page.tasks.iter().map(Task::from).collect(),
        next: page.next.map(|id| id.to_string()),
    }))
}

/// One task.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "The task's id")),
    responses(
        (status = 200, body = Task),
        (status = 400, description = "Not a task id", body = ErrorAnswer),
        (status = 404, description = "Unknown (or forgotten after its retention)", body = ErrorAnswer),
    )
)]
async fn get_task(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Task>, WebError> {
    let view = app.proxy.get(task_id(&id)?).await?;
    check_visible(&caller, &view)?;
    Ok(Json(Task::from(&view)))
}

/// What a cancel did.
#[derive(Debug, Serialize, ToSchema)]
struct Cancelled {
    /// The task was pending or running and is cancelled now.
    cancelled: bool,
    /// It had finished already, in this state.
    already: Option<&'static str>,
}

/// Cancels a task (a running attempt is stopped).
#[utoipa::path(
    post, path = "/api/v1/tasks/{id}/cancel", tag = "tasks",
    params(("id" = String, Path, description = "The task's id")),
    responses(
        (status = 200, body = Cancelled),
        (status = 400, description = "Not a task id", body = ErrorAnswer),
        (status = 404, description = "Unknown", body = ErrorAnswer),
    )
)]
async fn cancel_task(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Cancelled>, WebError> {
    let id = task_id(&id)?;
    if is_limited(&caller).is_some() {
        check_visible(&caller, &app.proxy.get(id).await?)?;
    }
    Ok(Json(match app.proxy.cancel(id).await? {
        CancelAck::AlreadyFinished(state) => Cancelled {
            cancelled: false,
            already: Some(state.name()),
        },
        _ => Cancelled {
            cancelled: true,
            already: None,
        },
    }))
}

/// Runs a failed task again.
#[utoipa::path(
    post, path = "/api/v1/tasks/{id}/retry", tag = "tasks",
    params(("id" = String, Path, description = "The task's id")),
    responses(
        (status = 200, body = Matched),
        (status = 400, description = "Not a task id", body = ErrorAnswer),
        (status = 404, description = "Not in the failed queue", body = ErrorAnswer),
    )
)]
async fn retry_task(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Matched>, WebError> {
    let id = task_id(&id)?;
    let count = app.proxy.retry_failed(FailedFilter::ids(vec![id])).await?;
    if count == 0 {
        return Err(mawex_api::ApiError::NotFound(format!("task {id} in the failed queue")).into());
    }
    Ok(Json(Matched {
        count,
        dry_run: false,
    }))
}

/// The failed queue: how many tasks of each group failed with each kind of error.
#[utoipa::path(
    get, path = "/api/v1/failed", tag = "failed",
    responses((status = 200, body = Vec<FailedCount>))
)]
async fn failed_summary(State(app): State<AppState>) -> Result<Json<Vec<FailedCount>>, WebError> {
    let counts = app.proxy.failed_summary().await?;
    Ok(Json(
        counts
            .iter()
            .map(|c| FailedCount {
                group: c.group.to_string(),
                kind: c.kind.name(),
                count: c.count,
            })
            .collect(),
    ))
}

/// How many failed tasks `filter` matches, without acting: from the summary, or by looking
/// each listed task up.
async fn count_failed(app: &AppState, filter: &FailedFilter) -> Result<u64, WebError> {
    if filter.ids.len() > MAX_BATCH {
        return Err(WebError::BadRequest(format!(
            "ids: at most {MAX_BATCH} tasks, not {}",
            filter.ids.len()
        )));
    }
    if filter.ids.is_empty() {
        let counts = app.proxy.failed_summary().await?;
        return Ok(counts
            .iter()
            .filter(|c| filter.group.as_ref().is_none_or(|g| *g == c.group))
            .filter(|c| filter.kind.is_none_or(|k| k == c.kind))
            .map(|c| c.count)
            .sum());
    }
    let mut count = 0;
    for id in &filter.ids {
        let view = match app.proxy.get(*id).await {
            Ok(view) => view,
            Err(mawex_api::ApiError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let failed_with = view.result.as_ref().and_then(|r| match &r.outcome {
            mawex_api::Outcome::Failed(e) => Some(e.kind),
            _ => None,
        });
        let Some(kind) = failed_with else { continue };
        let group_matches = filter.group.as_ref().is_none_or(|g| *g == view.spec.group);
        if group_matches && filter.kind.is_none_or(|k| k == kind) {
            count += 1;
        }
    }
    Ok(count)
}

/// How much history to read.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct HistoryParams {
    /// How many minutes, 1 to 1,440 (default 60).
    minutes: Option<usize>,
}

/// The last minutes, oldest first, the current one last: tasks accepted, started, succeeded,
/// failed and cancelled in each, and the queue depth at its end. Kept for 24 hours; after a
/// restart it is rebuilt from the retained tasks.
#[utoipa::path(
    get, path = "/api/v1/history", tag = "overview",
    params(HistoryParams),
    responses(
        (status = 200, body = Vec<Minute>),
        (status = 400, description = "Minutes out of range", body = ErrorAnswer),
    )
)]
async fn history(
    State(app): State<AppState>,
    params: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Minute>>, WebError> {
    let Query(params) = params.map_err(|e| WebError::BadRequest(e.body_text()))?;
    let minutes = app.proxy.history(params.minutes.unwrap_or(60)).await?;
    Ok(Json(minutes.iter().map(Minute::from).collect()))
}

/// Runs the failed tasks the filter matches again (all of them, not a page), or, with
/// `dry_run`, counts them.
#[utoipa::path(
    post, path = "/api/v1/failed/retry", tag = "failed",
    request_body = FailedFilterBody,
    responses(
        (status = 200, body = Matched),
        (status = 400, description = "A bad filter", body = ErrorAnswer),
    )
)]
async fn retry_failed(
    State(app): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Matched>, WebError> {
    on_failed(&app, bytes, FailedAction::Retry).await
}

/// What a bulk action on the failed queue does.
#[derive(Clone, Copy)]
enum FailedAction {
    Retry,
    Purge,
}

/// `action` on what the body's filter matches, or its count with `dry_run`.
async fn on_failed(
    app: &AppState,
    bytes: Result<Bytes, BytesRejection>,
    action: FailedAction,
) -> Result<Json<Matched>, WebError> {
    let body: FailedFilterBody = body(app, bytes)?;
    let filter = body.filter()?;
    let count = match (body.dry_run, action) {
        (true, _) => count_failed(app, &filter).await?,
        (false, FailedAction::Retry) => app.proxy.retry_failed(filter).await?,
        (false, FailedAction::Purge) => app.proxy.purge_failed(filter).await?,
    };
    Ok(Json(Matched {
        count,
        dry_run: body.dry_run,
    }))
}

/// Forgets the failed tasks the filter matches (all of them), or, with `dry_run`, counts
/// them.
#[utoipa::path(
    post, path = "/api/v1/failed/purge", tag = "failed",
    request_body = FailedFilterBody,
    responses(
        (status = 200, body = Matched),
        (status = 400, description = "A bad filter", body = ErrorAnswer),
    )
)]
async fn purge_failed(
    State(app): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Matched>, WebError> {
    on_failed(&app, bytes, FailedAction::Purge).await
}

/// Every group with tasks or settings.
#[utoipa::path(
    get, path = "/api/v1/groups", tag = "groups",
    responses((status = 200, body = Vec<Group>))
)]
async fn list_groups(State(app): State<AppState>) -> Result<Json<Vec<Group>>, WebError> {
    let groups = app.proxy.list_groups().await?;
    Ok(Json(groups.iter().map(Group::from).collect()))
}

/// One group.
#[utoipa::path(
    get, path = "/api/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "The group's name")),
    responses(
        (status = 200, body = Group),
        (status = 400, description = "Not a group name", body = ErrorAnswer),
        (status = 404, description = "A group with no tasks and no settings", body = ErrorAnswer),
    )
)]
async fn get_group(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Group>, WebError> {
    let name = group("group", &name)?;
    let groups = app.proxy.list_groups().await?;
    groups
        .iter()
        .find(|g| g.group == name)
        .map(|g| Json(Group::from(g)))
        .ok_or_else(|| mawex_api::ApiError::NotFound(format!("group {name}")).into())
}

/// Sets a group's settings (all of them: a field left out is off).
#[utoipa::path(
    put, path = "/api/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "The group's name")),
    request_body = GroupSettingsBody,
    responses(
        (status = 200, body = GroupSettingsBody),
        (status = 400, description = "Not a group name, or a setting out of bounds", body = ErrorAnswer),
    )
)]
async fn set_group(
    State(app): State<AppState>,
    Path(name): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<GroupSettingsBody>, WebError> {
    let name = group("group", &name)?;
    let settings: GroupSettingsBody = body(&app, bytes)?;
    app.proxy
        .configure_group(name, settings.settings()?)
        .await?;
    Ok(Json(settings))
}

/// Changes some of a group's settings, keeping the others.
#[utoipa::path(
    patch, path = "/api/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "The group's name")),
    request_body = GroupSettingsPatch,
    responses(
        (status = 200, description = "Its settings now", body = GroupSettingsBody),
        (status = 400, description = "Not a group name, or a setting out of bounds", body = ErrorAnswer),
    )
)]
async fn patch_group(
    State(app): State<AppState>,
    Path(name): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<GroupSettingsBody>, WebError> {
    let name = group("group", &name)?;
    let patch: GroupSettingsPatch = body(&app, bytes)?;
    let settings = patch.apply(app.proxy.group_settings(name.clone()).await?)?;
    app.proxy.configure_group(name, settings).await?;
    Ok(Json(GroupSettingsBody::from(&settings)))
}

/// The pods connected now.
#[utoipa::path(
    get, path = "/api/v1/pods", tag = "pods",
    responses((status = 200, body = Vec<Pod>))
)]
async fn list_pods(State(app): State<AppState>) -> Result<Json<Vec<Pod>>, WebError> {
    let pods = app.proxy.list_pods().await?;
    Ok(Json(pods.iter().map(Pod::from).collect()))
}

/// Gives a pod no new work until it restarts: its queued leases go back, what runs finishes.
#[utoipa::path(
    post, path = "/api/v1/pods/{id}/drain", tag = "pods",
    params(("id" = String, Path, description = "The pod's id")),
    responses(
        (status = 204, description = "Draining"),
        (status = 400, description = "Not a pod id", body = ErrorAnswer),
        (status = 404, description = "Not connected", body = ErrorAnswer),
    )
)]
async fn drain_pod(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, WebError> {
    let pod = PodId::new(&id).map_err(|e| WebError::BadRequest(format!("{id:?}: {e}")))?;
    if app.proxy.drain_pod(pod.clone()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(mawex_api::ApiError::NotFound(format!("pod {pod}")).into())
    }
}

/// Every cron schedule.
#[utoipa::path(
    get, path = "/api/v1/schedules", tag = "schedules",
    responses((status = 200, body = Vec<Schedule>))
)]
async fn list_schedules(State(app): State<AppState>) -> Result<Json<Vec<Schedule>>, WebError> {
    let schedules = app.proxy.list_schedules().await?;
    Ok(Json(schedules.iter().map(Schedule::from).collect()))
}

/// Creates a cron schedule (or replaces the one of that name).
#[utoipa::path(
    post, path = "/api/v1/schedules", tag = "schedules",
    request_body = NewSchedule,
    responses(
        (status = 204, description = "Created"),
        (status = 400, description = "A bad name, expression, time zone or task", body = ErrorAnswer),
    )
)]
async fn create_schedule(
    State(app): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, WebError> {
    let spec = body::<NewSchedule>(&app, bytes)?.spec()?;
    app.proxy.create_schedule(spec).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a schedule (one already gone: nothing to do).
#[utoipa::path(
    delete, path = "/api/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    responses(
        (status = 204, description = "Deleted, or there was none"),
        (status = 400, description = "Not a schedule name", body = ErrorAnswer),
    )
)]
async fn delete_schedule(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, WebError> {
    app.proxy.delete_schedule(schedule_name(&name)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stops a schedule firing (running tasks are not touched).
#[utoipa::path(
    post, path = "/api/v1/schedules/{name}/pause", tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    responses(
        (status = 204, description = "Paused"),
        (status = 404, description = "Unknown", body = ErrorAnswer),
    )
)]
async fn pause_schedule(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, WebError> {
    app.proxy
        .pause_schedule(schedule_name(&name)?, true)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lets a paused schedule fire again from its next tick.
#[utoipa::path(
    post, path = "/api/v1/schedules/{name}/resume", tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    responses(
        (status = 204, description = "Resumed"),
        (status = 404, description = "Unknown", body = ErrorAnswer),
    )
)]
async fn resume_schedule(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, WebError> {
    app.proxy
        .pause_schedule(schedule_name(&name)?, false)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Filters and page of a broadcast list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct BroadcastParams {
    /// Only broadcasts of this app.
    app: Option<String>,
    /// The previous page's `next`.
    after: Option<u64>,
    /// Page size, 1 to 1,000 (default 100).
    limit: Option<usize>,
}

/// Lists broadcasts, oldest first.
#[utoipa::path(
    get, path = "/api/v1/broadcasts", tag = "broadcasts",
    params(BroadcastParams),
    responses(
        (status = 200, body = BroadcastPage),
        (status = 400, description = "A bad filter", body = ErrorAnswer),
    )
)]
async fn list_broadcasts(
    State(app): State<AppState>,
    params: Result<Query<BroadcastParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<BroadcastPage>, WebError> {
    let Query(params) = params.map_err(|e| WebError::BadRequest(e.body_text()))?;
    let mut query = BroadcastQuery::default();
    if let Some(name) = params.app {
        query = query.app(name);
    }
    if let Some(after) = params.after {
        query = query.after(after);
    }
    if let Some(limit) = params.limit {
        query.limit = limit;
    }
    let page = app.proxy.list_broadcasts(query).await?;
    Ok(Json(BroadcastPage {
        broadcasts: page.broadcasts.iter().map(Broadcast::from).collect(),
        next: page.next,
    }))
}

/// One broadcast and its targets.
#[utoipa::path(
    get, path = "/api/v1/broadcasts/{id}", tag = "broadcasts",
    params(("id" = u64, Path, description = "The broadcast's id")),
    responses(
        (status = 200, body = Broadcast),
        (status = 400, description = "Not a broadcast id", body = ErrorAnswer),
        (status = 404, description = "Unknown", body = ErrorAnswer),
    )
)]
async fn get_broadcast(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Broadcast>, WebError> {
    let id: u64 = id
        .parse()
        .map_err(|_| WebError::BadRequest(format!("{id:?} is not a broadcast id (a number)")))?;
    Ok(Json(Broadcast::from(&app.proxy.broadcast(id).await?)))
}

/// Fires a broadcast.
#[utoipa::path(
    post, path = "/api/v1/broadcasts", tag = "broadcasts",
    request_body = NewBroadcast,
    responses(
        (status = 200, description = "Fired: its targets", body = Broadcast),
        (status = 400, description = "Malformed", body = ErrorAnswer),
        (status = 409, description = "The app's lock is held by another broadcast", body = ErrorAnswer),
    )
)]
async fn fire_broadcast(
    State(app): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Broadcast>, WebError> {
    let spec = body::<NewBroadcast>(&app, bytes)?.spec()?;
    Ok(Json(Broadcast::from(
        &app.proxy.fire_broadcast(spec).await?,
    )))
}
