use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::failure::TaskError;
use crate::graph::{Dependency, MAX_DEPENDENCIES};
use crate::ids::{Attempt, GraphId, GroupName, PodId, TaskId};
use crate::time::Timestamp;

/// The longest fairness key accepted, in bytes.
pub const MAX_FAIRNESS_KEY_LEN: usize = 256;

/// The longest handler name accepted, in bytes.
pub const MAX_HANDLER_LEN: usize = 256;

/// Resource limits of one attempt. Sandboxes enforce what they can (a timeout everywhere,
/// memory in child processes and Kubernetes Jobs).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Limits {
    /// Wall-clock limit of one attempt.
    pub timeout: Option<Duration>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
}

impl Limits {
    /// Limits with a wall-clock timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Limits with a memory ceiling.
    pub fn with_memory_bytes(mut self, bytes: u64) -> Self {
        self.memory_bytes = Some(bytes);
        self
    }

    /// These limits, with `defaults` for the ones not set.
    pub fn or(self, defaults: Limits) -> Limits {
        Limits {
            timeout: self.timeout.or(defaults.timeout),
            memory_bytes: self.memory_bytes.or(defaults.memory_bytes),
        }
    }

    /// These limits, lowered to `max` wherever `max` sets one (a limit left open here becomes
    /// `max`'s): what a task may ask for can lower a pod's ceiling, never raise it.
    pub fn at_most(self, max: &Limits) -> Limits {
        fn lower<T: Ord + Copy>(own: Option<T>, max: Option<T>) -> Option<T> {
            match (own, max) {
                (Some(own), Some(max)) => Some(own.min(max)),
                (own, None) => own,
                (None, max) => max,
            }
        }
        Limits {
            timeout: lower(self.timeout, max.timeout),
            memory_bytes: lower(self.memory_bytes, max.memory_bytes),
        }
    }
}

/// How often and how patiently a failing task is tried again.
///
/// An attempt that fails (handler error, panic, timeout, crash, lost lease) is retried while
/// fewer than `max_attempts` attempts have failed, after an exponential backoff with full
/// jitter: a delay drawn uniformly from `[0, min(max_delay, base_delay × 2^(failures−1)))`.
/// An attempt handed back by a pod that shuts down is not a failure and does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: never retry).
    pub max_attempts: u32,
    /// Upper bound of the first retry's delay.
    pub base_delay: Duration,
    /// Upper bound of any retry's delay.
    pub max_delay: Duration,
}

/// The most attempts a retry policy may allow.
pub const MAX_ATTEMPTS: u32 = 1000;

impl RetryPolicy {
    /// Up to `max_attempts` attempts, first retry within 1 s, none later than 5 min.
    pub fn new(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
        }
    }

    /// Never retry.
    pub fn never() -> Self {
        RetryPolicy::new(1)
    }

    /// The same policy with another base delay.
    pub fn with_base_delay(mut self, base: Duration) -> Self {
        self.base_delay = base;
        self
    }

    /// The same policy with another maximum delay.
    pub fn with_max_delay(mut self, max: Duration) -> Self {
        self.max_delay = max;
        self
    }

    /// Checks the bounds.
    ///
    /// # Errors
    /// [`ApiError::InvalidArgument`] saying which bound is off.
    pub fn validate(&self) -> Result<(), ApiError> {
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(ApiError::InvalidArgument(format!(
                "retry.max_attempts must be between 1 and {MAX_ATTEMPTS}, got {}",
                self.max_attempts
            )));
        }
        if self.base_delay > self.max_delay {
            return Err(ApiError::InvalidArgument(format!(
                "retry.base_delay ({:?}) must not exceed retry.max_delay ({:?})",
                self.base_delay, self.max_delay
            )));
        }
        Ok(())
    }

    /// The upper bound of the delay before the retry that follows failure number `failures`
    /// (1 for the first failure).
    pub fn delay_cap(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1));
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

impl Default for RetryPolicy {
    /// Three attempts in all.
    fn default() -> Self {
        RetryPolicy::new(3)
    }
}

/// What to run, where, and how: everything a client says about a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskSpec {
    /// Client-chosen identity; resubmitting the same id is idempotent.
    pub id: TaskId,
    /// The consumer group whose workers run it.
    pub group: GroupName,
    /// Name of the handler the pod's sandbox runs.
    pub handler: String,
    /// Opaque input handed to the handler.
    pub payload: Bytes,
    /// Higher runs first; tasks of equal priority run oldest first.
    pub priority: i32,
    /// Limits of each attempt.
    pub limits: Limits,
    /// Retries of failed attempts; `None`: the master's default.
    pub retry: Option<RetryPolicy>,
    /// Not before this time (a delayed task); `None`: as soon as a worker is free.
    pub run_at: Option<Timestamp>,
    /// Deduplication: a submit with the key of a live or recent task returns that task.
    pub dedup: Option<Dedup>,
    /// Fair queueing within the group: tasks of different keys (tenants, say) take turns, so
    /// one key's burst cannot starve the others. Priority still comes first.
    pub fairness_key: Option<String>,
    /// The sandbox to run in, by name, among those the pod offers; `None`: the pod's default
    /// for the group.
    pub sandbox: Option<String>,
    /// Tasks it runs after (a workflow): it stays [`TaskState::Blocked`] until they have
    /// ended as their policies ask, then runs with their results as inputs. Each must be
    /// known to the master (submitted earlier, or earlier in the same batch).
    #[serde(default)]
    pub after: Vec<Dependency>,
    /// The most output bytes it may produce; more fails it for good. Declared so that a
    /// task running after it knows its inputs fit in a payload (see `after`).
    #[serde(default)]
    pub output_limit: Option<u64>,
}

impl TaskSpec {
    /// A task with a fresh id, priority 0 and no limits.
    pub fn new(group: GroupName, handler: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        TaskSpec::new_with_id(TaskId::new(), group, handler, payload)
    }

    /// A task whose id is already chosen (by another client, say, or read back from storage):
    /// [`TaskSpec::new`] without drawing a fresh id.
    pub fn new_with_id(
        id: TaskId,
        group: GroupName,
        handler: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Self {
        TaskSpec {
            id,
            group,
            handler: handler.into(),
            payload: payload.into(),
            priority: 0,
            limits: Limits::default(),
            retry: None,
            run_at: None,
            dedup: None,
            fairness_key: None,
            sandbox: None,
            after: Vec::new(),
            output_limit: None,
        }
    }

    /// The same task, run after `task` succeeded, with its output as an input.
    pub fn after(self, task: TaskId) -> Self {
        self.after_dependency(Dependency::on(task))
    }

    /// The same task, run after `dependency`.
    pub fn after_dependency(mut self, dependency: Dependency) -> Self {
        self.after.push(dependency);
        self
    }

    /// The same task, its output at most `bytes`.
    pub fn with_output_limit(mut self, bytes: u64) -> Self {
        self.output_limit = Some(bytes);
        self
    }

    /// The same task, run in the pod's sandbox named `name`.
    pub fn with_sandbox(mut self, name: impl Into<String>) -> Self {
        self.sandbox = Some(name.into());
        self
    }

    /// The same task, taking turns with other keys of its group.
    pub fn with_fairness_key(mut self, key: impl Into<String>) -> Self {
        self.fairness_key = Some(key.into());
        self
    }

    /// The same task, deduplicated by `key` for `window` after it finishes.
    pub fn with_dedup(mut self, key: impl Into<String>, window: Duration) -> Self {
        self.dedup = Some(Dedup::new(key, window));
        self
    }

    /// The same task with its own retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The same task, to run no earlier than `at`.
    pub fn with_run_at(mut self, at: Timestamp) -> Self {
        self.run_at = Some(at);
        self
    }

    /// The same task under a given id.
    pub fn with_id(mut self, id: TaskId) -> Self {
        self.id = id;
        self
    }

    /// The same task with another priority.
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// The same task with other limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Checks what the types alone cannot: handler name, limits and payload size.
    ///
    /// # Errors
    /// [`ApiError::InvalidArgument`] or [`ApiError::ResourceExhausted`] saying what to fix.
    pub fn validate(&self, max_payload_bytes: usize) -> Result<(), ApiError> {
        if self.handler.is_empty() {
            return Err(ApiError::InvalidArgument(format!(
                "task {}: handler name must not be empty",
                self.id
            )));
        }
        if self.handler.len() > MAX_HANDLER_LEN || self.handler.chars().any(char::is_control) {
            return Err(ApiError::InvalidArgument(format!(
                "task {}: handler name must be at most {MAX_HANDLER_LEN} bytes without control characters",
                self.id
            )));
        }
        if self.limits.timeout == Some(Duration::ZERO) {
            return Err(ApiError::InvalidArgument(format!(
                "task {}: a timeout of zero would fail every attempt; omit it for no timeout",
                self.id
            )));
        }
        if self.limits.memory_bytes == Some(0) {
            return Err(ApiError::InvalidArgument(format!(
                "task {}: a memory limit of zero bytes is not satisfiable",
                self.id
            )));
        }
        if let Some(retry) = &self.retry {
            retry.validate().map_err(|e| {
                ApiError::InvalidArgument(format!("task {}: {}", self.id, message_of(e)))
            })?;
        }
        if let Some(dedup) = &self.dedup {
            dedup.validate().map_err(|e| {
                ApiError::InvalidArgument(format!("task {}: {}", self.id, message_of(e)))
            })?;
        }
        if self
            .fairness_key
            .as_ref()
            .is_some_and(|k| k.len() > MAX_FAIRNESS_KEY_LEN)
        {
            return Err(ApiError::InvalidArgument(format!(
                "task {}: fairness_key must be at most {MAX_FAIRNESS_KEY_LEN} bytes",
                self.id
            )));
        }
        if self.payload.len() > max_payload_bytes {
            return Err(ApiError::ResourceExhausted(format!(
                "task {}: payload is {} bytes, the limit is {max_payload_bytes}",
                self.id,
                self.payload.len()
            )));
        }
        self.validate_after()
    }

    /// Checks the dependencies: within bounds, each named once, none the task itself, and
    /// no dedup key beside them.
    fn validate_after(&self) -> Result<(), ApiError> {
        if self.after.len() > MAX_DEPENDENCIES {
            return Err(ApiError::InvalidArgument(format!(
                "task {}: runs after {} tasks, more than {MAX_DEPENDENCIES}",
                self.id,
                self.after.len()
            )));
        }
        // Few dependencies (the common case) are compared pairwise: no set to build.
        let mut seen = (self.after.len() > 16)
            .then(|| std::collections::HashSet::with_capacity(self.after.len()));
        for (i, dep) in self.after.iter().enumerate() {
            if dep.task == self.id {
                return Err(ApiError::InvalidArgument(format!(
                    "task {}: it cannot run after itself",
                    self.id
                )));
            }
            let repeated = match &mut seen {
                Some(seen) => !seen.insert(dep.task),
                None => self.after[..i].iter().any(|d| d.task == dep.task),
            };
            if repeated {
                return Err(ApiError::InvalidArgument(format!(
                    "task {}: dependency {} is named twice",
                    self.id, dep.task
                )));
            }
        }
        if !self.after.is_empty() && self.dedup.is_some() {
            return Err(ApiError::InvalidArgument(format!(
                "task {}: a task that runs after others cannot have a dedup key (a duplicate \
                 would run after other tasks than the ones it names)",
                self.id
            )));
        }
        Ok(())
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TaskState {
    /// Accepted and waiting for a free slot of a worker of its group.
    Pending,
    /// Leased to a pod as its current attempt.
    Running,
    /// Finished with an output.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
    /// Waits for the tasks it runs after (a workflow's dependant); it becomes pending when
    /// they have finished as its policy asks. (Last, so that stored states keep their
    /// numbers.)
    Blocked,
}

impl TaskState {
    /// Every state, in a task's order.
    pub const ALL: [TaskState; 6] = [
        TaskState::Blocked,
        TaskState::Pending,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// True for states a task never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// Its name, as the command line, the REST API and filters spell it: `blocked`,
    /// `pending`, `running`, `succeeded`, `failed`, `cancelled`.
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Blocked => "blocked",
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for TaskState {
    type Err = ApiError;

    /// A state by its [`TaskState::name`].
    fn from_str(text: &str) -> Result<Self, ApiError> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.name() == text)
            .ok_or_else(|| {
                ApiError::InvalidArgument(format!(
                    "{text:?} is not a state: blocked, pending, running, succeeded, failed or \
                     cancelled"
                ))
            })
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn message_of(e: ApiError) -> String {
    match e {
        ApiError::InvalidArgument(m) => m,
        other => other.to_string(),
    }
}

/// One failed attempt of a task, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AttemptFailure {
    /// Which attempt.
    pub attempt: Attempt,
    /// How it failed.
    pub error: TaskError,
    /// When the failure was recorded.
    pub at: Timestamp,
}

impl AttemptFailure {
    /// A failure of `attempt`.
    pub fn new(attempt: Attempt, error: TaskError, at: Timestamp) -> Self {
        AttemptFailure { attempt, error, at }
    }
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler's output.
    Succeeded(Bytes),
    /// The last attempt's error.
    Failed(TaskError),
    /// Cancelled by a client.
    Cancelled,
}

impl Outcome {
    /// The terminal state this outcome puts a task in.
    pub fn state(&self) -> TaskState {
        match self {
            Outcome::Succeeded(_) => TaskState::Succeeded,
            Outcome::Failed(_) => TaskState::Failed,
            Outcome::Cancelled => TaskState::Cancelled,
        }
    }
}

/// The recorded result of a finished task, as delivered to waiters and result streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskResult {
    /// The task.
    pub id: TaskId,
    /// Its group.
    pub group: GroupName,
    /// The attempt whose result this is (0 if it never ran, e.g. cancelled while pending).
    pub attempt: Attempt,
    /// How it ended.
    pub outcome: Outcome,
    /// When the master recorded it.
    pub finished_at: Timestamp,
    /// Position in the master's result log; pass it back as a
    /// [`crate::ResultCursor`] to resume a result stream after this result.
    pub seq: u64,
}

impl TaskResult {
    /// The result of `attempt` of task `id`, recorded at `finished_at` as number `seq`.
    pub fn new(
        id: TaskId,
        group: GroupName,
        attempt: Attempt,
        outcome: Outcome,
        finished_at: Timestamp,
        seq: u64,
    ) -> Self {
        TaskResult {
            id,
            group,
            attempt,
            outcome,
            finished_at,
            seq,
        }
    }
}

/// A snapshot of one task as the master knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskView {
    /// What was submitted.
    pub spec: TaskSpec,
    /// Where it is in its life.
    pub state: TaskState,
    /// The current or last attempt (0 before the first one).
    pub attempt: Attempt,
    /// The pod running the current attempt.
    pub pod: Option<PodId>,
    /// When the master accepted it.
    pub submitted_at: Timestamp,
    /// When the current or last attempt was assigned.
    pub started_at: Option<Timestamp>,
    /// The result, once finished.
    pub result: Option<TaskResult>,
    /// Every failed attempt so far, oldest first.
    pub failures: Vec<AttemptFailure>,
    /// While pending: not dispatched before this time (a delayed task or a scheduled retry).
    pub not_before: Option<Timestamp>,
    /// While pending and ready: estimated wait until it starts (tasks ahead of it × the
    /// group's recent mean duration ÷ the group's slots), if there is enough to go on. With
    /// more than 10,000 tasks ahead it is a lower bound.
    pub eta: Option<Duration>,
    /// Cancelled because a task it ran after failed or was cancelled: the task where that
    /// began (the first one that did not succeed, however far up).
    pub cancelled_by: Option<TaskId>,
    /// The graph it is a node of.
    pub graph: Option<GraphId>,
}

impl TaskView {
    /// A view of a task submitted as `spec`, now in `state`; other fields are empty.
    pub fn new(spec: TaskSpec, state: TaskState, submitted_at: Timestamp) -> Self {
        TaskView {
            spec,
            state,
            attempt: Attempt(0),
            pod: None,
            submitted_at,
            started_at: None,
            result: None,
            failures: Vec::new(),
            not_before: None,
            eta: None,
            cancelled_by: None,
            graph: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskSpec {
        TaskSpec::new(GroupName::new("g").unwrap(), "h", vec![1, 2, 3])
    }

    #[test]
    fn states_and_error_kinds_are_read_back_by_their_names() {
        for state in TaskState::ALL {
            assert_eq!(state.name().parse::<TaskState>(), Ok(state));
            assert_eq!(state.to_string(), state.name());
            // Over the wire and back.
            let wire = crate::proto::TaskState::from(state) as i32;
            assert_eq!(
                crate::convert::task_state("state", wire).map_err(|e| e.to_string()),
                Ok(Some(state))
            );
        }
        assert!(!TaskState::Blocked.is_terminal());
        assert_eq!(TaskState::ALL.len(), 6);
        assert!(matches!(
            "done".parse::<TaskState>(),
            Err(ApiError::InvalidArgument(m)) if m.contains("pending, running")
        ));
        for kind in crate::ErrorKind::ALL {
            assert_eq!(kind.name().parse::<crate::ErrorKind>(), Ok(kind));
        }
        assert_eq!(
            crate::broadcast::TargetState::AlreadyApplied.name(),
            "already-applied"
        );
        let unknown = "oops".parse::<crate::ErrorKind>().unwrap_err().to_string();
        assert!(unknown.contains("timed-out, cancelled"), "{unknown}");
    }

    #[test]
    fn a_task_lowers_the_pods_ceiling_and_never_raises_it() {
        let max = Limits::default()
            .with_timeout(Duration::from_secs(60))
            .with_memory_bytes(1 << 30);
        let asks = Limits::default()
            .with_timeout(Duration::from_secs(3600))
            .with_memory_bytes(1 << 20);
        let got = asks.clone().at_most(&max);
        assert_eq!(got.timeout, Some(Duration::from_secs(60)), "not raised");
        assert_eq!(got.memory_bytes, Some(1 << 20), "lowered");
        assert_eq!(
            Limits::default().at_most(&max),
            max,
            "open limits take the ceiling"
        );
        assert_eq!(asks.clone().at_most(&Limits::default()), asks, "no ceiling");
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(spec().validate(3).is_ok());
        let err = spec().validate(2).unwrap_err();
        assert!(matches!(err, ApiError::ResourceExhausted(ref m) if m.contains("3 bytes")));
        let mut s = spec();
        s.handler.clear();
        assert!(matches!(s.validate(10), Err(ApiError::InvalidArgument(_))));
        let s = spec().with_limits(Limits::default().with_timeout(Duration::ZERO));
        assert!(
            matches!(s.validate(10), Err(ApiError::InvalidArgument(ref m)) if m.contains("timeout"))
        );
    }
}

/// Identifies "the same job" for deduplication: while a task with this key is pending or
/// running, or finished less than `window` ago, a new submit with the key returns that task
/// instead of enqueuing another.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Dedup {
    /// The job's identity, e.g. `"reindex:customer-42"`.
    pub key: String,
    /// How long after it finished a task still counts as a duplicate.
    pub window: Duration,
}

/// The longest dedup key accepted, in bytes.
pub const MAX_DEDUP_KEY_LEN: usize = 512;

impl Dedup {
    /// A dedup `key` with a `window`.
    pub fn new(key: impl Into<String>, window: Duration) -> Self {
        Dedup {
            key: key.into(),
            window,
        }
    }

    /// Checks the key.
    ///
    /// # Errors
    /// [`ApiError::InvalidArgument`] for an empty or overlong key.
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.key.is_empty() || self.key.len() > MAX_DEDUP_KEY_LEN {
            return Err(ApiError::InvalidArgument(format!(
                "dedup.key must be 1 to {MAX_DEDUP_KEY_LEN} bytes"
            )));
        }
        Ok(())
    }
}
