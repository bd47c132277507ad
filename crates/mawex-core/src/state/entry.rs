//! One task as recorded, and the counts of tasks per state.

use mawex_api::{Attempt, ErrorKind, PodId, TaskState, TaskView, Timestamp};
use serde::{Deserialize, Serialize};

use super::stored::{AttemptFailure, AttemptRef, Outcome, TaskError, TaskResult, TaskSpec};
use super::QueueKey;

/// The failed attempts a task's history keeps (the most any retry policy allows).
pub(crate) const MAX_KEPT_FAILURES: usize = mawex_api::MAX_ATTEMPTS as usize;

/// One task as the master records it.
///
/// What only a task that was ever assigned has (its pod, start time, result and failed
/// attempts) is one box, absent before the first assignment: most retained tasks are
/// pending, and pay 8 bytes for it instead of 72. On disk it is the flat layout of every
/// format since 3 (see `TaskEntryFields`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskEntry {
    pub(crate) spec: TaskSpec,
    pub(crate) state: TaskState,
    /// The current or last attempt; 0 before the first assignment.
    pub(crate) attempt: Attempt,
    /// Acceptance order; keeps FIFO within a priority and survives requeues.
    pub(crate) order: u64,
    pub(crate) submitted_at: Timestamp,
    /// While pending: not dispatched before this time (delayed task, scheduled retry).
    pub(crate) not_before: Option<Timestamp>,
    /// Fair-queueing round (see `Rounds`).
    pub(crate) round: u64,
    /// `None` while every part of it is empty (kept so, so that equal tasks compare equal).
    attempts: Option<Box<Attempts>>,
}

/// What a task's attempts left.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Attempts {
    /// Holder of the current attempt's lease while running.
    pod: Option<PodId>,
    started_at: Option<Timestamp>,
    result: Option<TaskResult>,
    /// Every failed attempt, oldest first.
    failures: Vec<AttemptFailure>,
    /// Failures before the last manual retry; the retry budget counts the ones after it.
    retry_base: u32,
}

/// A [`TaskEntry`] as written, field for field: borrowed to encode, owned to decode.
#[derive(Serialize, Deserialize)]
struct TaskEntryFields<S, P, R, F> {
    spec: S,
    state: TaskState,
    attempt: Attempt,
    pod: Option<P>,
    order: u64,
    submitted_at: Timestamp,
    started_at: Option<Timestamp>,
    result: Option<R>,
    failures: F,
    not_before: Option<Timestamp>,
    retry_base: u32,
    round: u64,
}

impl Serialize for TaskEntry {
    fn serialize<S: serde::Serializer>(&self, encoder: S) -> Result<S::Ok, S::Error> {
        TaskEntryFields {
            spec: &self.spec,
            state: self.state,
            attempt: self.attempt,
            pod: self.pod(),
            order: self.order,
            submitted_at: self.submitted_at,
            started_at: self.started_at(),
            result: self.result(),
            failures: self.failures(),
            not_before: self.not_before,
            retry_base: self.retry_base(),
            round: self.round,
        }
        .serialize(encoder)
    }
}

impl<'de> Deserialize<'de> for TaskEntry {
    fn deserialize<D: serde::Deserializer<'de>>(decoder: D) -> Result<Self, D::Error> {
        let f: TaskEntryFields<TaskSpec, PodId, TaskResult, Vec<AttemptFailure>> =
            TaskEntryFields::deserialize(decoder)?;
        let mut entry = TaskEntry {
            spec: f.spec,
            state: f.state,
            attempt: f.attempt,
            order: f.order,
            submitted_at: f.submitted_at,
            not_before: f.not_before,
            round: f.round,
            attempts: None,
        };
        entry.set_attempts(Attempts {
            pod: f.pod,
            started_at: f.started_at,
            result: f.result,
            failures: f.failures,
            retry_base: f.retry_base,
        });
        Ok(entry)
    }
}

impl TaskEntry {
    /// A task just accepted, `order`th: pending, never attempted, in round 0.
    pub(super) fn pending(spec: TaskSpec, order: u64, submitted_at: Timestamp) -> Self {
        TaskEntry {
            spec,
            state: TaskState::Pending,
            attempt: Attempt(0),
            order,
            submitted_at,
            not_before: None,
            round: 0,
            attempts: None,
        }
    }

    pub(super) fn queue_key(&self) -> QueueKey {
        (-i64::from(self.spec.priority), self.round, self.order)
    }

    /// Its queue key as a pod is told it.
    pub(crate) fn rank(&self) -> mawex_api::pod::QueueRank {
        mawex_api::pod::QueueRank {
            priority: self.spec.priority,
            round: self.round,
            order: self.order,
        }
    }

    /// A task as an older format recorded it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_format_1(
        spec: TaskSpec,
        state: TaskState,
        attempt: Attempt,
        pod: Option<PodId>,
        order: u64,
        submitted_at: Timestamp,
        started_at: Option<Timestamp>,
        result: Option<TaskResult>,
        failures: Vec<AttemptFailure>,
        round: u64,
    ) -> Self {
        let mut entry = TaskEntry::pending(spec, order, submitted_at);
        entry.state = state;
        entry.attempt = attempt;
        entry.round = round;
        entry.set_attempts(Attempts {
            pod,
            started_at,
            result,
            failures,
            retry_base: 0,
        });
        entry
    }

    fn set_attempts(&mut self, attempts: Attempts) {
        self.attempts = (attempts != Attempts::default()).then(|| Box::new(attempts));
    }

    /// Changes what the attempts left, keeping the box absent while it is empty.
    fn change_attempts<T>(&mut self, change: impl FnOnce(&mut Attempts) -> T) -> T {
        let attempts = self.attempts.get_or_insert_with(Box::default);
        let out = change(attempts);
        if **attempts == Attempts::default() {
            self.attempts = None;
        }
        out
    }

    /// Holder of the current attempt's lease while running.
    pub(crate) fn pod(&self) -> Option<&PodId> {
        self.attempts.as_ref()?.pod.as_ref()
    }

    pub(crate) fn started_at(&self) -> Option<Timestamp> {
        self.attempts.as_ref()?.started_at
    }

    pub(crate) fn result(&self) -> Option<&TaskResult> {
        self.attempts.as_ref()?.result.as_ref()
    }

    /// Every failed attempt, oldest first.
    pub(crate) fn failures(&self) -> &[AttemptFailure] {
        self.attempts.as_ref().map_or(&[], |a| &a.failures)
    }

    /// Failures before the last manual retry; the retry budget counts the ones after it.
    pub(crate) fn retry_base(&self) -> u32 {
        self.attempts.as_ref().map_or(0, |a| a.retry_base)
    }

    /// Leases the current attempt to `pod` from `at`.
    pub(super) fn set_running_on(&mut self, pod: PodId, at: Timestamp) {
        self.change_attempts(|a| {
            a.pod = Some(pod);
            a.started_at = Some(at);
        });
    }

    /// The lease is gone (requeued, or finished).
    pub(super) fn clear_pod(&mut self) {
        if self.pod().is_some() {
            self.change_attempts(|a| a.pod = None);
        }
    }

    /// The task finished with `result`: the lease is gone.
    pub(super) fn finish(&mut self, result: TaskResult) {
        self.change_attempts(|a| {
            a.pod = None;
            a.result = Some(result);
        });
    }

    pub(super) fn take_result(&mut self) -> Option<TaskResult> {
        self.result()?;
        self.change_attempts(|a| a.result.take())
    }

    /// Failures so far count no more against the retry budget (a manual retry).
    pub(super) fn reset_retry_budget(&mut self) {
        self.change_attempts(|a| {
            a.retry_base = u32::try_from(a.failures.len()).unwrap_or(u32::MAX);
        });
    }

    /// Adds a failed attempt to the history, which keeps the last [`MAX_KEPT_FAILURES`]:
    /// a task retried by hand again and again would otherwise grow without end. The retry
    /// budget stays exact: no policy allows more failures than are kept, and `retry_base`
    /// moves down with what is dropped.
    pub(super) fn record_failure(&mut self, failure: AttemptFailure) {
        self.change_attempts(|a| {
            a.failures.push(failure);
            let excess = a.failures.len().saturating_sub(MAX_KEPT_FAILURES);
            if excess > 0 {
                a.failures.drain(..excess);
                a.retry_base = a
                    .retry_base
                    .saturating_sub(u32::try_from(excess).unwrap_or(u32::MAX));
            }
        });
    }

    /// The kind of the last error, for the failed summary (`Sandbox` when no attempt failed:
    /// the task failed without running).
    pub(super) fn failed_kind(&self) -> ErrorKind {
        self.failures()
            .last()
            .map_or(ErrorKind::Sandbox, |f| f.error.kind)
    }

    /// The last error: the failed result's, else the last failed attempt's.
    pub(crate) fn last_error(&self) -> Option<&TaskError> {
        match self.result().map(|r| &r.outcome) {
            Some(Outcome::Failed(error)) => Some(error),
            _ => self.failures().last().map(|f| &f.error),
        }
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
        view.pod = self.pod().cloned();
        view.started_at = self.started_at();
        view.result = self.result().cloned().map(Into::into);
        view.failures = self.failures().iter().cloned().map(Into::into).collect();
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
    /// Waiting for the tasks they run after.
    pub blocked: u64,
}

impl TaskCounts {
    pub(super) fn slot(&mut self, state: TaskState) -> &mut u64 {
        match state {
            TaskState::Pending => &mut self.pending,
            TaskState::Running => &mut self.running,
            TaskState::Succeeded => &mut self.succeeded,
            TaskState::Failed => &mut self.failed,
            TaskState::Blocked => &mut self.blocked,
            // TaskState is non_exhaustive only for other crates: this is Cancelled.
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

#[cfg(test)]
mod tests {
    use mawex_api::{ErrorKind, GroupName, TaskId};

    use super::*;
    use crate::state::stored::{Outcome, TaskError};

    fn entry() -> TaskEntry {
        let group = GroupName::new("g").expect("a valid name");
        let spec = mawex_api::TaskSpec::new(group, "h", &b"x"[..]).with_id(TaskId::new());
        TaskEntry::pending(spec.into(), 1, Timestamp(5))
    }

    fn round_trip(entry: &TaskEntry) -> TaskEntry {
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(entry, config).expect("encodes");
        let (back, used): (TaskEntry, usize) =
            bincode::serde::decode_from_slice(&bytes, config).expect("decodes");
        assert_eq!(used, bytes.len());
        back
    }

    /// A task's attempts are boxed once it has some and the box is gone when it is empty
    /// again, so a task decoded from disk equals the one that was written, at every step.
    #[test]
    fn what_the_attempts_left_survives_encoding_at_every_step() {
        let mut task = entry();
        assert!(task.attempts.is_none());
        assert_eq!(round_trip(&task), task);
        let pod = PodId::new("p").expect("a valid pod id");
        task.attempt = Attempt(1);
        task.set_running_on(pod.clone(), Timestamp(6));
        assert_eq!(task.pod(), Some(&pod));
        assert_eq!(round_trip(&task), task);
        task.record_failure(AttemptFailure {
            attempt: Attempt(1),
            error: TaskError {
                kind: ErrorKind::Crashed,
                message: "boom".into(),
                retry: crate::state::stored::RetryHint::Policy,
            },
            at: Timestamp(7),
        });
        task.clear_pod();
        task.reset_retry_budget();
        assert_eq!((task.failures().len(), task.retry_base()), (1, 1));
        assert_eq!(round_trip(&task), task);
        let result = TaskResult {
            id: task.spec.id,
            group: task.spec.group.clone(),
            attempt: Attempt(2),
            outcome: Outcome::Succeeded(bytes::Bytes::from_static(b"out")),
            finished_at: Timestamp(8),
            seq: 1,
        };
        task.finish(result.clone());
        assert_eq!(task.result(), Some(&result));
        assert_eq!(round_trip(&task), task);
        assert_eq!(task.take_result(), Some(result));
        assert!(std::mem::size_of::<TaskEntry>() <= 168, "a task entry grew");
    }
}
