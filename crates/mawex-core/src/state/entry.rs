//! One task as recorded, and the counts of tasks per state.

use mawex_api::{Attempt, ErrorKind, PodId, TaskState, TaskView, Timestamp};
use serde::{Deserialize, Serialize};

use super::stored::{AttemptFailure, AttemptRef, TaskResult, TaskSpec};
use super::QueueKey;

/// The failed attempts a task's history keeps (the most any retry policy allows).
pub(crate) const MAX_KEPT_FAILURES: usize = mawex_api::MAX_ATTEMPTS as usize;

/// One task as the master records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TaskEntry {
    pub(crate) spec: TaskSpec,
    pub(crate) state: TaskState,
    /// The current or last attempt; 0 before the first assignment.
    pub(crate) attempt: Attempt,
    /// Holder of the current attempt's lease while running.
    pub(crate) pod: Option<PodId>,
    /// Acceptance order; keeps FIFO within a priority and survives requeues.
    pub(crate) order: u64,
    pub(crate) submitted_at: Timestamp,
    pub(crate) started_at: Option<Timestamp>,
    /// Boxed: most retained tasks are pending, and a result is four times a pointer.
    pub(crate) result: Option<Box<TaskResult>>,
    /// Every failed attempt, oldest first.
    pub(crate) failures: Vec<AttemptFailure>,
    /// While pending: not dispatched before this time (delayed task, scheduled retry).
    pub(crate) not_before: Option<Timestamp>,
    /// Failures before the last manual retry; the retry budget counts the ones after it.
    pub(crate) retry_base: u32,
    /// Fair-queueing round (see `Rounds`).
    pub(crate) round: u64,
}

impl TaskEntry {
    /// A task just accepted, `order`th: pending, never attempted, in round 0.
    pub(super) fn pending(spec: TaskSpec, order: u64, submitted_at: Timestamp) -> Self {
        TaskEntry {
            spec,
            state: TaskState::Pending,
            attempt: Attempt(0),
            pod: None,
            order,
            submitted_at,
            started_at: None,
            result: None,
            failures: Vec::new(),
            not_before: None,
            retry_base: 0,
            round: 0,
        }
    }

    pub(super) fn queue_key(&self) -> QueueKey {
        (-i64::from(self.spec.priority), self.round, self.order)
    }

    /// Adds a failed attempt to the history, which keeps the last [`MAX_KEPT_FAILURES`]:
    /// a task retried by hand again and again would otherwise grow without end. The retry
    /// budget stays exact: no policy allows more failures than are kept, and `retry_base`
    /// moves down with what is dropped.
    pub(super) fn record_failure(&mut self, failure: AttemptFailure) {
        self.failures.push(failure);
        let excess = self.failures.len().saturating_sub(MAX_KEPT_FAILURES);
        if excess > 0 {
            self.failures.drain(..excess);
            self.retry_base = self
                .retry_base
                .saturating_sub(u32::try_from(excess).unwrap_or(u32::MAX));
        }
    }

    /// The kind of the last error, for the failed summary (`Sandbox` when no attempt failed:
    /// the task failed without running).
    pub(super) fn failed_kind(&self) -> ErrorKind {
        self.failures
            .last()
            .map_or(ErrorKind::Sandbox, |f| f.error.kind)
    }

    pub(super) fn fairness_key(&self) -> &str {
        self.spec.fairness_key.as_deref().unwrap_or("")
    }

    pub(crate) fn current(&self) -> AttemptRef {
        AttemptRef {
            task: self.spec.id,
            attempt: self.attempt,
        }
    }

    pub(crate) fn view(&self) -> TaskView {
        let mut view = TaskView::new(self.spec.clone().into(), self.state, self.submitted_at);
        view.attempt = self.attempt;
        view.pod = self.pod.clone();
        view.started_at = self.started_at;
        view.result = self.result.as_deref().cloned().map(Into::into);
        view.failures = self.failures.iter().cloned().map(Into::into).collect();
        view.not_before = self.not_before;
        view
    }
}

/// How many tasks are in each state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskCounts {
    /// Waiting for a slot.
    pub pending: u64,
    /// Leased to a pod.
    pub running: u64,
    /// Finished with an output (and still retained).
    pub succeeded: u64,
    /// Finished with an error (and still retained).
    pub failed: u64,
    /// Cancelled (and still retained).
    pub cancelled: u64,
}

impl TaskCounts {
    pub(super) fn slot(&mut self, state: TaskState) -> &mut u64 {
        match state {
            TaskState::Pending => &mut self.pending,
            TaskState::Running => &mut self.running,
            TaskState::Succeeded => &mut self.succeeded,
            TaskState::Failed => &mut self.failed,
            // TaskState is non_exhaustive only for other crates; Cancelled is the last state.
            _ => &mut self.cancelled,
        }
    }

    pub(super) fn moved(&mut self, from: Option<TaskState>, to: Option<TaskState>) {
        if let Some(from) = from {
            let n = self.slot(from);
            *n = n.saturating_sub(1);
        }
        if let Some(to) = to {
            *self.slot(to) += 1;
        }
    }
}
