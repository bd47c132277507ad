use crate::failure::TaskError;

/// Errors a [`crate::MasterProxy`] call can return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request was malformed; the message says which field and why.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// What was asked for is not known: the message names it, e.g. `task 0190…` (never
    /// submitted, or forgotten after its retention).
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with recorded state, e.g. a task id reused with another spec.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The request is too large to accept.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The master is not running (stopped, crashed, or unreachable); retrying later may work.
    #[error("master unavailable: {0}")]
    Unavailable(String),
    /// This master is one of a cluster and does not lead it: nothing was done. `leader` is
    /// the address of the master that leads, when this one knows it. A remote proxy or pod
    /// connector given several masters goes to that one (or tries the others) by itself.
    #[error("{}", not_leader(leader.as_deref()))]
    NotLeader {
        /// The leader's address (`host:port`), if known.
        leader: Option<String>,
    },
    /// The caller did not prove who it is (no credential, or one the master does not accept).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// This proxy or master does not offer the call (an implementation that predates it).
    #[error("unimplemented: {0}")]
    Unimplemented(String),
    /// An unexpected failure inside the master.
    #[error("internal error: {0}")]
    Internal(String),
    /// The task ran and failed (or was cancelled): what a typed call that waits for a task's
    /// output ([`crate::TypedProxy`], [`crate::TaskResult::output`]) answers instead of it.
    /// Never sent by a master.
    #[error("task failed: {0}")]
    TaskFailed(TaskError),
    /// Bytes did not decode as the type they were meant to be (a typed task's output, say);
    /// the message names the task, the type and the field.
    #[error("does not decode: {0}")]
    Decode(String),
}

/// The message of a `NotLeader` answer.
pub(crate) fn not_leader(leader: Option<&str>) -> String {
    match leader {
        Some(leader) => format!("master unavailable: not the leader; the leader is at {leader}"),
        None => "master unavailable: not the leader, and no leader is known yet".to_owned(),
    }
}

impl ApiError {
    /// Whether trying again (perhaps at another master) may work: `Unavailable` and
    /// `NotLeader`.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ApiError::Unavailable(_) | ApiError::NotLeader { .. })
    }

    /// `NotFound` for the task `id` (any displayable id).
    pub fn task_not_found(id: impl std::fmt::Display) -> Self {
        ApiError::NotFound(format!("task {id}"))
    }
}
