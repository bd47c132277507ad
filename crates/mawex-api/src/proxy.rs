use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::admin::{
    FailedCount, FailedFilter, GroupSettings, GroupView, MinuteCounts, PendingChange, PodView,
    ScheduleSpec, ScheduleView, HISTORY_MINUTES,
};
use crate::broadcast::{
    BroadcastId, BroadcastLock, BroadcastPage, BroadcastPlan, BroadcastQuery, BroadcastSpec,
    BroadcastView,
};
use crate::error::ApiError;
use crate::failure::ErrorKind;
use crate::graph::{GraphAck, GraphSpec, GraphView};
use crate::ids::{GraphId, GroupName, PodId, ScheduleName, TaskId};
use crate::output::TaskOutput;
use crate::task::{TaskResult, TaskSpec, TaskState, TaskView};
use crate::time::Timestamp;

/// The most tasks one `list` page returns.
pub const MAX_LIST_LIMIT: usize = 1000;

/// Answer to a submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SubmitAck {
    /// The id of the task that stands for this submit: the spec's own, or, when
    /// `deduplicated`, the id of the earlier task with the same dedup key.
    pub id: TaskId,
    /// True when a new task was recorded. False for a harmless repeat (a task with this id
    /// was already known) and for a dedup hit.
    pub created: bool,
    /// True when the spec's dedup key matched a live or recent task: nothing was recorded,
    /// and `id` is that task's id, not the spec's.
    pub deduplicated: bool,
}

impl SubmitAck {
    /// An acknowledgement for `id`: newly `created`, or a repeat of a known id.
    pub fn new(id: TaskId, created: bool) -> Self {
        SubmitAck {
            id,
            created,
            deduplicated: false,
        }
    }

    /// A dedup hit: the task `existing` stands for this submit.
    pub fn duplicate_of(existing: TaskId) -> Self {
        SubmitAck {
            id: existing,
            created: false,
            deduplicated: true,
        }
    }
}

/// Answer to a cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CancelAck {
    /// The task is now cancelled (a running attempt is told to stop).
    Cancelled,
    /// The task had already finished in this state; nothing changed.
    AlreadyFinished(TaskState),
}

/// Position in a group's result stream: results after it are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResultCursor(pub u64);

impl ResultCursor {
    /// The cursor that resumes after `result`.
    pub fn after(result: &TaskResult) -> Self {
        ResultCursor(result.seq)
    }
}

/// A stream of results, retained ones first, then live ones as they are recorded.
pub type ResultStream = Pin<Box<dyn Stream<Item = Result<TaskResult, ApiError>> + Send>>;

/// Filters and pagination of `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ListQuery {
    /// Only tasks of this group.
    pub group: Option<GroupName>,
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Resume after this id (the previous page's `next`).
    pub after: Option<TaskId>,
    /// Page size, 1 to [`MAX_LIST_LIMIT`] (1,000). Default: 100. A page also ends before
    /// it passes [`MAX_LIST_PAGE_BYTES`] (with at least one task in it).
    pub limit: usize,
    /// Views without their bodies: the payload and a successful output are left empty
    /// (their sizes are what makes pages large). Default: bodies included.
    pub omit_bodies: bool,
    /// Only tasks run by this handler.
    pub handler: Option<String>,
    /// Only tasks with this dedup key.
    pub dedup_key: Option<String>,
    /// Only tasks with this fairness key.
    pub fairness_key: Option<String>,
    /// Only tasks whose last error's message contains this text (case-sensitive).
    pub error_text: Option<String>,
    /// Only tasks whose last error is of this kind.
    pub error_kind: Option<ErrorKind>,
    /// Only tasks whose payload contains these bytes (the UTF-8 of a text, say).
    pub payload_contains: Option<Bytes>,
    /// Only tasks the master accepted at or after this time.
    pub submitted_from: Option<Timestamp>,
    /// Only tasks the master accepted before this time.
    pub submitted_before: Option<Timestamp>,
    /// Newest first (descending ids) instead of oldest first; `after` then resumes below
    /// the id it names.
    pub newest_first: bool,
}

/// The longest text a `list` filter may carry (handler, keys, error text, payload bytes).
pub const MAX_LIST_FILTER_LEN: usize = 1024;

/// How many tasks one `list` page examines at most. A filter that the indexes do not narrow
/// (error text, payload, handler, keys, time) is checked task by task; a page that reaches
/// this many without filling up ends early, its `next` the last task examined, so that no
/// request holds the read model for longer than a bounded scan.
pub const MAX_LIST_SCAN: usize = 1_000_000;

/// About how many bytes of views a `list` page holds at most: well under the default
/// message limit of the transports, however large the payloads and outputs are.
pub const MAX_LIST_PAGE_BYTES: usize = 2 << 20;

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            group: None,
            state: None,
            after: None,
            limit: 100,
            omit_bodies: false,
            handler: None,
            dedup_key: None,
            fairness_key: None,
            error_text: None,
            error_kind: None,
            payload_contains: None,
            submitted_from: None,
            submitted_before: None,
            newest_first: false,
        }
    }
}

impl ListQuery {
    /// Only tasks of `group`.
    pub fn group(mut self, group: GroupName) -> Self {
        self.group = Some(group);
        self
    }

    /// Only tasks in `state`.
    pub fn state(mut self, state: TaskState) -> Self {
        self.state = Some(state);
        self
    }

    /// Resume after `id`.
    pub fn after(mut self, id: TaskId) -> Self {
        self.after = Some(id);
        self
    }

    /// Page size.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Only tasks run by `handler`.
    pub fn handler(mut self, handler: impl Into<String>) -> Self {
        self.handler = Some(handler.into());
        self
    }

    /// Only tasks with dedup key `key`.
    pub fn dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }

    /// Only tasks with fairness key `key`.
    pub fn fairness_key(mut self, key: impl Into<String>) -> Self {
        self.fairness_key = Some(key.into());
        self
    }

    /// Only tasks whose last error's message contains `text`.
    pub fn error_text(mut self, text: impl Into<String>) -> Self {
        self.error_text = Some(text.into());
        self
    }

    /// Only tasks whose last error is of `kind`.
    pub fn error_kind(mut self, kind: ErrorKind) -> Self {
        self.error_kind = Some(kind);
        self
    }

    /// Only tasks whose payload contains `bytes`.
    pub fn payload_contains(mut self, bytes: impl Into<Bytes>) -> Self {
        self.payload_contains = Some(bytes.into());
        self
    }

    /// Only tasks accepted at or after `from` and before `before` (either may be open).
    pub fn submitted_between(mut self, from: Option<Timestamp>, before: Option<Timestamp>) -> Self {
        self.submitted_from = from;
        self.submitted_before = before;
        self
    }

    /// Newest first.
    pub fn newest_first(mut self) -> Self {
        self.newest_first = true;
        self
    }

    /// Checks the page size and the filters.
    ///
    /// # Errors
    /// `InvalidArgument` for a limit of 0 or above [`MAX_LIST_LIMIT`], an empty or too long
    /// text filter, or a time range that ends before it starts.
    pub fn validate(&self) -> Result<(), ApiError> {
        check_page_limit("list", self.limit)?;
        let texts = [
            ("handler", self.handler.as_ref().map(String::len)),
            ("dedup_key", self.dedup_key.as_ref().map(String::len)),
            ("fairness_key", self.fairness_key.as_ref().map(String::len)),
            ("error_text", self.error_text.as_ref().map(String::len)),
            (
                "payload_contains",
                self.payload_contains.as_ref().map(Bytes::len),
            ),
        ];
        for (name, len) in texts {
            match len {
                Some(0) => {
                    return Err(ApiError::InvalidArgument(format!(
                        "list {name} must not be empty (leave it out to match any)"
                    )))
                }
                Some(len) if len > MAX_LIST_FILTER_LEN => {
                    return Err(ApiError::InvalidArgument(format!(
                        "list {name} is {len} bytes, more than {MAX_LIST_FILTER_LEN}"
                    )))
                }
                _ => {}
            }
        }
        if let (Some(from), Some(before)) = (self.submitted_from, self.submitted_before) {
            if before < from {
                return Err(ApiError::InvalidArgument(format!(
                    "list submitted_before ({before}) is earlier than submitted_from ({from})"
                )));
            }
        }
        Ok(())
    }

    /// Whether the query filters by more than the group and the state, which the indexes
    /// answer: such a page examines tasks one by one (see [`MAX_LIST_SCAN`]).
    pub fn scans(&self) -> bool {
        self.handler.is_some()
            || self.dedup_key.is_some()
            || self.fairness_key.is_some()
            || self.error_text.is_some()
            || self.error_kind.is_some()
            || self.payload_contains.is_some()
            || self.submitted_from.is_some()
            || self.submitted_before.is_some()
    }

    /// Views without payloads and outputs (see [`ListQuery::omit_bodies`]).
    pub fn without_bodies(mut self) -> Self {
        self.omit_bodies = true;
        self
    }
}

/// The rule of every paged read: 1 to [`MAX_LIST_LIMIT`] items a page.
pub(crate) fn check_page_limit(what: &str, limit: usize) -> Result<(), ApiError> {
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(ApiError::InvalidArgument(format!(
            "{what} limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}"
        )));
    }
    Ok(())
}

/// One page of `list`, in task id (submission time) order, or its reverse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskPage {
    /// The tasks of this page.
    pub tasks: Vec<TaskView>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<TaskId>,
}

impl TaskPage {
    /// A page of `tasks` followed by `next`.
    pub fn new(tasks: Vec<TaskView>, next: Option<TaskId>) -> Self {
        TaskPage { tasks, next }
    }
}

/// The answer of a call an implementation does not offer.
fn unimplemented(call: &str) -> ApiError {
    ApiError::Unimplemented(format!("{call} is not offered by this MasterProxy"))
}

/// Everything a client can ask of a master. `LocalMasterProxy` answers in-process;
/// `RemoteMasterProxy` answers over gRPC. Both give the same guarantees: a call that returned
/// `Ok` was made durable by the master before it answered.
///
/// Only [`submit_many`](MasterProxy::submit_many) and [`get`](MasterProxy::get) must be
/// implemented. `submit` defaults to a batch of one; every other call defaults to
/// [`ApiError::Unimplemented`], so a call added in a later version does not break an
/// implementation written against this one (a test double, a decorator).
///
/// Every method is an `async fn` (`proxy.get(id).await`). The trait is object safe so that
/// `Arc<dyn MasterProxy>` works, which is why it is written with `async-trait`: rustdoc shows
/// each method as returning a boxed future, and an implementation marks its `impl` block
/// with `#[async_trait::async_trait]`. For typed tasks see [`crate::TypedProxy`].
#[async_trait]
// The default bodies ignore their arguments.
#[allow(unused_variables)]
pub trait MasterProxy: Send + Sync {
    /// Submits one task. Repeating a submit with the same id and spec is harmless.
    ///
    /// # Errors
    /// `InvalidArgument` or `ResourceExhausted` for a bad spec, `Conflict` for an id already
    /// used by a different spec, `Unavailable` when the master is down.
    async fn submit(&self, spec: TaskSpec) -> Result<SubmitAck, ApiError> {
        self.submit_many(vec![spec])
            .await?
            .pop()
            .ok_or_else(|| ApiError::Internal("no acknowledgement for a submit".into()))
    }

    /// Submits a batch atomically: all are accepted, or none (the error names the first bad one).
    ///
    /// # Errors
    /// As [`MasterProxy::submit`].
    async fn submit_many(&self, specs: Vec<TaskSpec>) -> Result<Vec<SubmitAck>, ApiError>;

    /// The task as the master knows it now.
    ///
    /// # Errors
    /// `NotFound` for an unknown id.
    async fn get(&self, id: TaskId) -> Result<TaskView, ApiError>;

    /// Cancels a pending or running task.
    ///
    /// # Errors
    /// `NotFound` for an unknown id.
    async fn cancel(&self, id: TaskId) -> Result<CancelAck, ApiError> {
        Err(unimplemented("cancel"))
    }

    /// Waits until the task is finished and returns its result.
    ///
    /// # Errors
    /// `NotFound` for an unknown id; `Unavailable` if the master stops while waiting.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the wait and nothing else.
    async fn await_result(&self, id: TaskId) -> Result<TaskResult, ApiError> {
        Err(unimplemented("await_result"))
    }

    /// Results of one group: those still retained after `after` (all retained ones if `None`),
    /// then live ones, in recording order. Resume with the `seq` of the last result seen.
    ///
    /// # Errors
    /// `Unavailable` when the master is down.
    async fn results(
        &self,
        group: GroupName,
        after: Option<ResultCursor>,
    ) -> Result<ResultStream, ApiError> {
        Err(unimplemented("results"))
    }

    /// Lists tasks matching `query`, one page at a time.
    ///
    /// # Errors
    /// `InvalidArgument` for a limit of 0 or above [`MAX_LIST_LIMIT`].
    async fn list(&self, query: ListQuery) -> Result<TaskPage, ApiError> {
        Err(unimplemented("list"))
    }

    /// The failed queue (tasks that failed for good), counted by group and kind of last error.
    /// List its tasks with `list` and state `Failed`.
    ///
    /// # Errors
    /// `Unavailable` when the master is down.
    async fn failed_summary(&self) -> Result<Vec<FailedCount>, ApiError> {
        Err(unimplemented("failed_summary"))
    }

    /// Runs failed tasks matching `filter` again, each with a fresh attempt budget (their
    /// error history is kept). Returns how many.
    ///
    /// # Errors
    /// `Unavailable` when the master is down.
    async fn retry_failed(&self, filter: FailedFilter) -> Result<u64, ApiError> {
        Err(unimplemented("retry_failed"))
    }

    /// Forgets failed tasks matching `filter`. Returns how many.
    ///
    /// # Errors
    /// `Unavailable` when the master is down.
    async fn purge_failed(&self, filter: FailedFilter) -> Result<u64, ApiError> {
        Err(unimplemented("purge_failed"))
    }

    /// Sets how `group` is dispatched: pause and resume it, cap its concurrency.
    ///
    /// # Errors
    /// `InvalidArgument` for out-of-range settings.
    async fn configure_group(
        &self,
        group: GroupName,
        settings: GroupSettings,
    ) -> Result<(), ApiError> {
        Err(unimplemented("configure_group"))
    }

    /// Changes pending tasks among `ids` (moves them, reprioritizes them, requeues them to the
    /// back or prefers them to the front). Returns how many were pending and changed.
    ///
    /// # Errors
    /// `InvalidArgument` for no ids or an empty change.
    async fn update_pending(
        &self,
        ids: Vec<TaskId>,
        change: PendingChange,
    ) -> Result<u64, ApiError> {
        Err(unimplemented("update_pending"))
    }

    /// Creates a cron schedule. Creating the same schedule again is harmless; a different one
    /// under a taken name is a `Conflict`.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad cron expression, time zone or task.
    async fn create_schedule(&self, spec: ScheduleSpec) -> Result<(), ApiError> {
        Err(unimplemented("create_schedule"))
    }

    /// Every schedule.
    ///
    /// # Errors
    /// `Unavailable` when the master is down.
    async fn list_schedules(&self) -> Result<Vec<ScheduleView>, ApiError> {
        Err(unimplemented("list_schedules"))
    }

    /// Pauses (`true`) or resumes a schedule. Ticks that pass while paused never fire.
    ///
    /// # Errors
    /// `InvalidArgument` for an unknown schedule.
    async fn pause_schedule(&self, name: ScheduleName, paused: bool) -> Result<(), ApiError> {
        Err(unimplemented("pause_schedule"))
    }

    /// Deletes a schedule; tasks it already submitted are not touched.
    ///
    /// # Errors
    /// `InvalidArgument` for an unknown schedule.
    async fn delete_schedule(&self, name: ScheduleName) -> Result<(), ApiError> {
        Err(unimplemented("delete_schedule"))
    }

    /// How `group` is dispatched now (defaults for a group never configured).
    ///
    /// # Errors
    /// `Unavailable` when the master is down.
    async fn group_settings(&self, group: GroupName) -> Result<GroupSettings, ApiError> {
        Err(unimplemented("group_settings"))
    }

    /// Fires a broadcast to the pods of its group connected now (see [`BroadcastSpec`]);
    /// pods that join the group later catch up by themselves. Firing the spec of the
    /// broadcast that holds the app's lock again returns that broadcast.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad spec; `Conflict` while another broadcast of the app holds
    /// its lock (it expires `lock_ttl` after that fire, or clear it with
    /// [`MasterProxy::clear_broadcast_lock`]).
    async fn fire_broadcast(&self, spec: BroadcastSpec) -> Result<BroadcastView, ApiError> {
        Err(unimplemented("fire_broadcast"))
    }

    /// What firing `spec` would do (targets, sources, waves), without doing anything.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad spec.
    async fn plan_broadcast(&self, spec: BroadcastSpec) -> Result<BroadcastPlan, ApiError> {
        Err(unimplemented("plan_broadcast"))
    }

    /// A broadcast and the progress of each of its targets.
    ///
    /// # Errors
    /// `InvalidArgument` for an unknown id.
    async fn broadcast(&self, id: BroadcastId) -> Result<BroadcastView, ApiError> {
        Err(unimplemented("broadcast"))
    }

    /// Broadcasts matching `query`, oldest first, one page at a time.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad limit; `Unavailable` when the master is down.
    async fn list_broadcasts(&self, query: BroadcastQuery) -> Result<BroadcastPage, ApiError> {
        Err(unimplemented("list_broadcasts"))
    }

    /// Waits until every target of broadcast `id` has ended, or `timeout` passes; returns
    /// its progress either way (see [`BroadcastView::is_finished`]).
    ///
    /// # Errors
    /// `InvalidArgument` for an unknown id.
    async fn wait_broadcast(
        &self,
        id: BroadcastId,
        timeout: Duration,
    ) -> Result<BroadcastView, ApiError> {
        Err(unimplemented("wait_broadcast"))
    }

    /// The locks held by running broadcasts, one per app.
    ///
    /// # Errors
    /// `Unavailable` when the master is down.
    async fn broadcast_locks(&self) -> Result<Vec<BroadcastLock>, ApiError> {
        Err(unimplemented("broadcast_locks"))
    }

    /// Clears the lock of `app` by aborting the broadcast that holds it (its waiting targets
    /// are cancelled, running ones finish); returns that broadcast, if one held it.
    ///
    /// # Errors
    /// `Unavailable` when the master is down.
    async fn clear_broadcast_lock(&self, app: &str) -> Result<Option<BroadcastId>, ApiError> {
        Err(unimplemented("clear_broadcast_lock"))
    }

    /// The pods connected now, by id: their groups, slots, leases, labels, address, and the
    /// resource use of their last heartbeat.
    ///
    /// # Errors
    /// `Unavailable` when the master is down.
    async fn list_pods(&self) -> Result<Vec<PodView>, ApiError> {
        Err(unimplemented("list_pods"))
    }

    /// Gives pod `pod` no new work until it restarts: it hands back the leases it has
    /// queued, finishes what runs, and stays connected, shown draining (across a master's
    /// restart or a fail-over too: the pod says so when it reconnects). False if no such pod
    /// is connected.
    ///
    /// # Errors
    /// `Unavailable` when the master is down.
    async fn drain_pod(&self, pod: PodId) -> Result<bool, ApiError> {
        Err(unimplemented("drain_pod"))
    }

    /// Every group that has tasks or settings, by name: its tasks by state, its settings
    /// and its recent mean run time.
    ///
    /// # Errors
    /// `Unavailable` when the master is down.
    async fn list_groups(&self) -> Result<Vec<GroupView>, ApiError> {
        Err(unimplemented("list_groups"))
    }

    /// The last `minutes` minutes (1 to [`HISTORY_MINUTES`]), oldest first, the current one
    /// last: tasks accepted, started and finished in each, and the queue depth.
    ///
    /// # Errors
    /// `InvalidArgument` for 0 or more than [`HISTORY_MINUTES`] minutes; `Unavailable` when
    /// the master is down.
    async fn history(&self, minutes: usize) -> Result<Vec<MinuteCounts>, ApiError> {
        Err(unimplemented("history"))
    }

    /// Submits a workflow graph: every node, each blocked until the nodes it runs after have
    /// ended as its edges ask, atomically (all or none) and idempotently by the graph's id.
    ///
    /// # Errors
    /// `InvalidArgument` naming the node or edge at fault (a cycle, a dangling edge, an
    /// invalid task); `NotFound` for a dependency outside the graph the master does not know;
    /// `ResourceExhausted` for a fan-in whose inputs could exceed the payload limit, naming
    /// the node; `Conflict` when the graph's id, or a node's task id, is used by something
    /// else.
    async fn submit_graph(&self, graph: GraphSpec) -> Result<GraphAck, ApiError> {
        Err(unimplemented("submit_graph"))
    }

    /// A graph and every node's state.
    ///
    /// # Errors
    /// `NotFound` for an unknown graph (or one whose tasks were all forgotten).
    async fn graph(&self, id: GraphId) -> Result<GraphView, ApiError> {
        Err(unimplemented("graph"))
    }

    /// Cancels every node of a graph that has not finished; answers how many.
    ///
    /// # Errors
    /// `NotFound` for an unknown graph.
    async fn cancel_graph(&self, id: GraphId) -> Result<u64, ApiError> {
        Err(unimplemented("cancel_graph"))
    }

    /// The live output of task `id`'s latest attempt: the lines after line `after` (0: from
    /// the first one kept) that the master keeps, bounded (its last lines). Call again with
    /// the last line's number to follow; [`TaskOutput::finished`] says when to stop.
    ///
    /// # Errors
    /// `NotFound` for a task the master does not know.
    async fn task_output(&self, id: TaskId, after: u64) -> Result<TaskOutput, ApiError> {
        Err(unimplemented("task_output"))
    }
}

/// The rule of `history`: 1 to [`HISTORY_MINUTES`] minutes.
///
/// # Errors
/// `InvalidArgument` otherwise.
pub fn check_history_minutes(minutes: usize) -> Result<(), ApiError> {
    if minutes == 0 || minutes > HISTORY_MINUTES {
        return Err(ApiError::InvalidArgument(format!(
            "history covers 1 to {HISTORY_MINUTES} minutes, not {minutes}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::GroupName;

    /// A test double written against the two required calls.
    struct Minimal;

    #[async_trait]
    impl MasterProxy for Minimal {
        async fn submit_many(&self, specs: Vec<TaskSpec>) -> Result<Vec<SubmitAck>, ApiError> {
            Ok(specs.iter().map(|s| SubmitAck::new(s.id, true)).collect())
        }

        async fn get(&self, id: TaskId) -> Result<TaskView, ApiError> {
            Err(ApiError::task_not_found(id))
        }
    }

    #[tokio::test]
    async fn a_minimal_implementation_gets_the_rest_by_default() {
        let spec = TaskSpec::new(GroupName::new("g").expect("valid"), "h", "x");
        let ack = Minimal
            .submit(spec.clone())
            .await
            .expect("submit is a batch of one");
        assert_eq!((ack.id, ack.created), (spec.id, true));
        match Minimal.cancel(spec.id).await {
            Err(ApiError::Unimplemented(m)) => assert!(m.contains("cancel"), "{m}"),
            other => panic!("expected Unimplemented, got {other:?}"),
        }
    }
}
