//! What the journal records: every change of durable task state.

use mawex_api::{BroadcastId, GroupName, PodId, ScheduleName, TaskId, Timestamp};
use serde::{Deserialize, Serialize};

use super::stored::{
    AttemptRef, BroadcastSpec, GraphRecord, GroupSettings, Links, Outcome, PendingChange, PodOwner,
    ScheduleSpec, Source, TaskError, TaskSpec,
};

/// One change of durable state. Applying the same events in the same order always yields the
/// same [`crate::MasterState`].
///
/// Every field is a stored type (see [`super::stored`]), never an API type, so the API can
/// grow without changing what is written.
///
/// Architecture invariant: never change what an existing variant means or how it encodes;
/// add a variant, or a new record format version with an upgrade from the old one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Event {
    /// A task was accepted and waits in its group's queue.
    TaskAccepted {
        /// What was submitted.
        spec: TaskSpec,
        /// When.
        at: Timestamp,
    },
    /// An attempt was leased to a pod.
    TaskAssigned {
        /// The new attempt.
        attempt: AttemptRef,
        /// The pod that holds the lease.
        pod: PodId,
        /// When.
        at: Timestamp,
    },
    /// The current attempt finished; its result is recorded.
    TaskFinished {
        /// The attempt.
        attempt: AttemptRef,
        /// Output or error.
        outcome: Outcome,
        /// When.
        at: Timestamp,
    },
    /// The current attempt ended without a result; the task waits in its queue again.
    TaskRequeued {
        /// The attempt that ended.
        attempt: AttemptRef,
        /// Why.
        reason: RequeueReason,
        /// When.
        at: Timestamp,
    },
    /// A client cancelled the task.
    TaskCancelled {
        /// The task.
        task: TaskId,
        /// When.
        at: Timestamp,
    },
    /// Finished tasks past their retention were dropped from state.
    TasksForgotten {
        /// The tasks.
        tasks: Vec<TaskId>,
    },
    /// The current attempt failed and the task will be tried again, not before `retry_at`.
    TaskRetryScheduled {
        /// The attempt that failed.
        attempt: AttemptRef,
        /// How it failed.
        error: TaskError,
        /// The earliest time of the next attempt.
        retry_at: Timestamp,
        /// When.
        at: Timestamp,
    },
    /// Failed tasks were put back in their queues with a fresh attempt budget.
    TasksRetried {
        /// The tasks.
        tasks: Vec<TaskId>,
        /// When.
        at: Timestamp,
    },
    /// Pending tasks were moved, reprioritized, requeued to the back or preferred to the front.
    TasksUpdated {
        /// The tasks (all pending when decided).
        tasks: Vec<TaskId>,
        /// What changed.
        change: PendingChange,
    },
    /// A cron schedule was created.
    ScheduleCreated {
        /// The schedule.
        spec: ScheduleSpec,
        /// When; ticks after this fire.
        at: Timestamp,
    },
    /// A schedule was paused or resumed; ticks that pass while paused never fire.
    SchedulePaused {
        /// The schedule.
        name: ScheduleName,
        /// Paused (true) or resumed.
        paused: bool,
        /// When.
        at: Timestamp,
    },
    /// A schedule was deleted.
    ScheduleDeleted {
        /// The schedule.
        name: ScheduleName,
    },
    /// A schedule's tick came: `task` was submitted. Ticks up to `tick` are handled.
    ScheduleFired {
        /// The schedule.
        name: ScheduleName,
        /// The tick fired for.
        tick: Timestamp,
        /// The task submitted (its id derives from schedule and tick).
        task: TaskSpec,
        /// When.
        at: Timestamp,
    },
    /// Ticks up to `through` passed unfired (missed while the master was down).
    ScheduleSkipped {
        /// The schedule.
        name: ScheduleName,
        /// The last tick skipped.
        through: Timestamp,
    },
    /// A group's dispatch settings changed.
    GroupConfigured {
        /// The group.
        group: GroupName,
        /// Its settings from now on.
        settings: GroupSettings,
    },
    /// A broadcast was fired. Each target's task exists from now on, pinned to its pod and
    /// never in a group queue.
    BroadcastFired {
        /// Its number.
        id: BroadcastId,
        /// As fired, with the version resolved (boxed: the largest event by far, and rare).
        spec: Box<BroadcastSpec>,
        /// Pods that run it, sorted (the tree's node order), with their tasks.
        targets: Vec<(PodId, TaskId)>,
        /// Pods that had the version already.
        already: Vec<PodId>,
        /// When.
        at: Timestamp,
    },
    /// A pod that joined later became a target of its app's latest broadcast (it catches up).
    BroadcastTargetAdded {
        /// The broadcast.
        id: BroadcastId,
        /// The pod.
        pod: PodId,
        /// Its task.
        task: TaskId,
        /// When.
        at: Timestamp,
    },
    /// The attempt just assigned to a target pulls from `source`.
    BroadcastPullStarted {
        /// The target's task.
        task: TaskId,
        /// Where it pulls from.
        source: Source,
    },
    /// A broadcast was aborted (its lock cleared, or taken over after it expired); the
    /// cancellation of its waiting targets follows as task events.
    BroadcastAborted {
        /// The broadcast.
        id: BroadcastId,
        /// When.
        at: Timestamp,
    },
    /// A waiting target's pod stayed away longer than a lease: the target fails (its task
    /// with it), so the broadcast can finish. The pod catches up if it comes back.
    BroadcastTargetUnreachable {
        /// The target's task.
        task: TaskId,
        /// When.
        at: Timestamp,
    },
    /// Finished broadcasts past the result retention, whose target tasks were forgotten
    /// already, were dropped from state. The latest broadcast of each app is never dropped:
    /// catch-up of pods that come later reads it. (Appended in record format 5.)
    BroadcastsForgotten {
        /// The broadcasts.
        ids: Vec<BroadcastId>,
    },
    /// Pods away for longer than the result retention: which versions they applied, and
    /// the credential that owned their id, are forgotten, so pod names seen once do not
    /// stay for ever. Such a pod, should it come back, is caught up like a new one (a
    /// finished tree-order target of its app's latest broadcast keeps that target), and
    /// its id is free. (Appended in record format 6; owners since format 7.)
    PodsForgotten {
        /// The pods.
        pods: Vec<PodId>,
    },
    /// A credential registered a pod id that none owned, or the owner came back with a
    /// stronger or renewed credential (see `Engine::pod_hello`): from now on only it may use
    /// the id, across restarts too. (Appended in record format 7.)
    PodBound {
        /// The pod id.
        pod: PodId,
        /// Its credential.
        owner: PodOwner,
    },
    /// Tasks that run after others were accepted, as one (a graph, or a batch with
    /// dependencies): each is blocked while it has dependencies, pending otherwise. (Appended
    /// in record format 8, as are the three below.)
    WorkflowAccepted {
        /// The graph they make, if submitted as one.
        graph: Option<Box<GraphRecord>>,
        /// The tasks, dependencies first, each with what it runs after.
        tasks: Vec<(TaskSpec, Links)>,
        /// When.
        at: Timestamp,
    },
    /// Blocked tasks whose dependencies ended as their policies ask became pending.
    TasksUnblocked {
        /// The tasks.
        tasks: Vec<TaskId>,
        /// When.
        at: Timestamp,
    },
    /// Blocked tasks were cancelled because a dependency failed or was cancelled: each with
    /// the task where that began.
    TasksCancelledByDependency {
        /// The tasks, each with its root cause.
        tasks: Vec<(TaskId, TaskId)>,
        /// When.
        at: Timestamp,
    },
    /// Tasks cancelled by a dependency are blocked again: the task that caused it was retried.
    TasksRevived {
        /// The tasks.
        tasks: Vec<TaskId>,
        /// When.
        at: Timestamp,
    },
}

impl Event {
    /// True for the events record format 8 added: a batch without them is written in
    /// format 7, which every earlier version since format 7 reads.
    pub(crate) fn needs_format_8(&self) -> bool {
        matches!(
            self,
            Event::WorkflowAccepted { .. }
                | Event::TasksUnblocked { .. }
                | Event::TasksCancelledByDependency { .. }
                | Event::TasksRevived { .. }
        )
    }
}

/// Why an attempt ended without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RequeueReason {
    /// The pod stopped heartbeating (or never came back after a master restart).
    LeaseExpired,
    /// The pod handed it back unfinished (it is shutting down).
    Returned,
    /// The pod left, or re-registered without it.
    PodLeft,
    /// The pod's heartbeat shows it no longer holds the attempt (and sent no result).
    NotHeld,
}
