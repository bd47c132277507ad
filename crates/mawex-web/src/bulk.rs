//! Bulk actions on tasks: cancel, retry, purge, move, reprioritise, or requeue a selection or
//! everything a filter matches (all its pages, not the one shown), counted first on request.

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use bytes::Bytes;
use futures::{stream, StreamExt, TryStreamExt};
use mawex_api::{
    CancelAck, FailedFilter, MasterProxy, PendingChange, TaskId, TaskState, MAX_LIST_LIMIT,
};

use crate::api::{body, MAX_BATCH};
use crate::error::ErrorAnswer;
use crate::json::{group, task_id, BulkAction, BulkBody, BulkScope, Matched};
use crate::{AppState, WebError};

/// How many ids one call to the master carries: a bulk action of any size is a series of
/// calls this large, each a short piece of the master's work.
const IDS_PER_CALL: usize = 1_000;

/// How many cancels are in flight at once (the master has no batch cancel).
const CANCELS_IN_FLIGHT: usize = 32;

/// Acts on a selection of tasks or on every task a filter matches, or, with `dry_run`,
/// counts the tasks the action would change (those in the states it applies to: blocked,
/// pending and running for `cancel`; failed for `retry` and `purge`; pending for the rest).
#[utoipa::path(
    post, path = "/api/v1/tasks/bulk", tag = "tasks",
    request_body = BulkBody,
    responses(
        (status = 200, body = Matched),
        (status = 400, description = "A bad action, selection or filter", body = ErrorAnswer),
        (status = 403, description = "Not an admin", body = ErrorAnswer),
    )
)]
pub(crate) async fn bulk_tasks(
    State(app): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Matched>, WebError> {
    let request: BulkBody = body(&app, bytes)?;
    let change = pending_change(&request)?;
    let mut ids = match scope(&request)? {
        BulkScope::Selected => selected(app.proxy.as_ref(), &request).await?,
        BulkScope::Filter => matching(app.proxy.as_ref(), &request).await?,
    };
    // Once each: a selection may name a task twice, and a task that started between the
    // walk of the pending tasks and that of the running ones is in both.
    ids.sort_unstable();
    ids.dedup();
    let count = if request.dry_run {
        u64::try_from(ids.len()).unwrap_or(u64::MAX)
    } else {
        act(app.proxy.as_ref(), request.action, change, ids).await?
    };
    Ok(Json(Matched {
        count,
        dry_run: request.dry_run,
    }))
}

/// Which tasks the request names: its scope, else `ids` when given, else the filter. Every
/// task takes an explicit empty filter (`{}`), never a missing one.
fn scope(request: &BulkBody) -> Result<BulkScope, WebError> {
    let scope = request.scope.unwrap_or(if request.ids.is_empty() {
        BulkScope::Filter
    } else {
        BulkScope::Selected
    });
    match scope {
        BulkScope::Selected if request.ids.is_empty() => Err(WebError::BadRequest(
            "no task is selected: select some, or act on the filter".into(),
        )),
        BulkScope::Selected if request.ids.len() > MAX_BATCH => Err(WebError::BadRequest(format!(
            "{} tasks are selected, more than {MAX_BATCH}: act on a filter instead",
            request.ids.len()
        ))),
        BulkScope::Filter if request.filter.is_none() => Err(WebError::BadRequest(
            "a bulk action takes `ids` or a `filter` (an empty one, `{}`, matches every task)"
                .into(),
        )),
        scope => Ok(scope),
    }
}

/// The change a pending-task action makes; `None` for the other actions. Checks the
/// action's argument.
fn pending_change(request: &BulkBody) -> Result<Option<PendingChange>, WebError> {
    let change = PendingChange::default();
    Ok(Some(match request.action {
        BulkAction::Move => {
            let to = request
                .to_group
                .as_deref()
                .filter(|g| !g.trim().is_empty())
                .ok_or_else(|| WebError::BadRequest("move: to_group is required".into()))?;
            change.move_to(group("to_group", to.trim())?)
        }
        BulkAction::Reprioritise => {
            let priority = request
                .priority
                .ok_or_else(|| WebError::BadRequest("reprioritise: priority is required".into()))?;
            change.priority(priority)
        }
        BulkAction::Front => change.to_front(),
        BulkAction::Back => change.to_back(),
        BulkAction::Cancel | BulkAction::Retry | BulkAction::Purge => return Ok(None),
    }))
}

/// The selected tasks the action applies to (unknown ones are left out).
async fn selected(proxy: &dyn MasterProxy, request: &BulkBody) -> Result<Vec<TaskId>, WebError> {
    let ids = request
        .ids
        .iter()
        .map(|id| task_id(id))
        .collect::<Result<Vec<_>, _>>()?;
    let applies = request.action.applies_to();
    stream::iter(ids)
        .map(|id| async move {
            match proxy.get(id).await {
                Ok(view) => Ok(applies.contains(&view.state).then_some(id)),
                Err(mawex_api::ApiError::NotFound(_)) => Ok(None),
                Err(e) => Err(WebError::from(e)),
            }
        })
        .buffered(CANCELS_IN_FLIGHT)
        .try_filter_map(|id| async move { Ok(id) })
        .try_collect()
        .await
}

/// Every task the filter matches that the action applies to, walked page by page.
async fn matching(proxy: &dyn MasterProxy, request: &BulkBody) -> Result<Vec<TaskId>, WebError> {
    let filter = request.filter.clone().unwrap_or_default();
    let base = filter.query()?.limit(MAX_LIST_LIMIT).without_bodies();
    let applies = request.action.applies_to();
    // One walk per state the action applies to, through the index of that state, unless
    // the filter names a state itself.
    let states: Vec<TaskState> = match base.state {
        Some(state) if applies.contains(&state) => vec![state],
        Some(_) => Vec::new(),
        None => applies.to_vec(),
    };
    let mut ids = Vec::new();
    for state in states {
        let mut query = base.clone().state(state);
        loop {
            let page = proxy.list(query.clone()).await?;
            ids.extend(
                page.tasks
                    .iter()
                    .filter(|t| applies.contains(&t.state))
                    .map(|t| t.spec.id),
            );
            match page.next {
                Some(next) => query = query.after(next),
                None => break,
            }
        }
    }
    Ok(ids)
}

/// Does `action` to `ids`; returns how many it changed.
async fn act(
    proxy: &dyn MasterProxy,
    action: BulkAction,
    change: Option<PendingChange>,
    ids: Vec<TaskId>,
) -> Result<u64, WebError> {
    let mut count: u64 = 0;
    if action == BulkAction::Cancel {
        let cancelled: Vec<bool> = stream::iter(ids)
            .map(|id| async move {
                match proxy.cancel(id).await {
                    Ok(CancelAck::Cancelled) => Ok(true),
                    // Finished or forgotten since it was matched: nothing to cancel.
                    Ok(_) | Err(mawex_api::ApiError::NotFound(_)) => Ok(false),
                    Err(e) => Err(WebError::from(e)),
                }
            })
            .buffer_unordered(CANCELS_IN_FLIGHT)
            .try_collect()
            .await?;
        let cancelled = cancelled.into_iter().filter(|c| *c).count();
        return Ok(u64::try_from(cancelled).unwrap_or(u64::MAX));
    }
    for chunk in ids.chunks(IDS_PER_CALL) {
        let chunk = chunk.to_vec();
        let changed = match (action, &change) {
            (BulkAction::Retry, _) => proxy.retry_failed(FailedFilter::ids(chunk)).await?,
            (BulkAction::Purge, _) => proxy.purge_failed(FailedFilter::ids(chunk)).await?,
            (_, Some(change)) => proxy.update_pending(chunk, change.clone()).await?,
            (_, None) => 0,
        };
        count = count.saturating_add(changed);
    }
    Ok(count)
}
