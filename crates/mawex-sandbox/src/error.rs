use std::time::Duration;

use mawex_api::{ErrorKind, RetryHint, TaskError};

/// How an attempt failed, or why a sandbox could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The handler returned an error.
    #[error("handler failed: {0}")]
    Handler(HandlerError),
    /// The handler panicked; the message is the panic's.
    #[error("handler panicked: {0}")]
    Panicked(String),
    /// The sandbox has no handler of this name.
    #[error("no handler named {0:?} is registered")]
    UnknownHandler(String),
    /// A handler of this name is already registered.
    #[error("a handler named {0:?} is already registered")]
    DuplicateHandler(String),
    /// The attempt ran longer than its timeout.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The attempt was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The process could not be started (missing program, bad directory, ...).
    #[error("could not start the process: {0}")]
    Spawn(String),
    /// A process exited with a non-zero status; `stderr` is the end of its error output.
    #[error("exited with status {code}: {stderr}")]
    NonZeroExit {
        /// The exit status.
        code: i32,
        /// The end of its standard error.
        stderr: String,
    },
    /// A process was ended by a signal (crash, abort).
    #[error("killed by signal {signal}: {stderr}")]
    Crashed {
        /// The signal number.
        signal: i32,
        /// The end of its standard error.
        stderr: String,
    },
    /// A process ran out of its memory limit.
    #[error("exceeded its memory limit of {limit} bytes: {stderr}")]
    OutOfMemory {
        /// The limit, bytes.
        limit: u64,
        /// The end of its standard error.
        stderr: String,
    },
    /// The task names a sandbox the pod does not offer.
    #[error("this pod offers no sandbox named {0:?}")]
    UnknownSandbox(String),
    /// The output is larger than the sandbox accepts.
    #[error("output of more than {limit} bytes")]
    OutputTooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// The payload is larger than the sandbox can hand to the attempt.
    #[error("a payload of {size} bytes is over this sandbox's limit of {limit}")]
    PayloadTooLarge {
        /// The payload's size, bytes.
        size: usize,
        /// The limit, bytes.
        limit: usize,
    },
    /// The Kubernetes API failed or the Job ended without a result.
    #[error("kubernetes: {0}")]
    Kubernetes(String),
}

impl From<SandboxError> for TaskError {
    fn from(e: SandboxError) -> TaskError {
        let kind = match &e {
            SandboxError::Handler(_) => ErrorKind::Handler,
            SandboxError::Panicked(_) => ErrorKind::Panicked,
            SandboxError::UnknownHandler(_) => ErrorKind::UnknownHandler,
            SandboxError::DuplicateHandler(_) => ErrorKind::Sandbox,
            SandboxError::TimedOut(_) => ErrorKind::TimedOut,
            SandboxError::Cancelled => ErrorKind::Cancelled,
            SandboxError::Spawn(_)
            | SandboxError::Kubernetes(_)
            | SandboxError::PayloadTooLarge { .. }
            | SandboxError::OutputTooLarge { .. }
            | SandboxError::UnknownSandbox(_) => ErrorKind::Sandbox,
            SandboxError::NonZeroExit { .. } => ErrorKind::NonZeroExit,
            SandboxError::Crashed { .. } => ErrorKind::Crashed,
            SandboxError::OutOfMemory { .. } => ErrorKind::OutOfMemory,
        };
        // Retrying cannot make an output smaller or a program appear.
        let permanent = matches!(
            e,
            SandboxError::OutputTooLarge { .. }
                | SandboxError::PayloadTooLarge { .. }
                | SandboxError::UnknownHandler(_)
                | SandboxError::UnknownSandbox(_)
        );
        match e {
            SandboxError::Handler(h) => TaskError::new(kind, h.message).with_retry(h.retry),
            other if permanent => {
                TaskError::new(kind, other.to_string()).with_retry(RetryHint::Never)
            }
            other => TaskError::new(kind, other.to_string()),
        }
    }
}

/// The error a handler returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{message}")]
#[non_exhaustive]
pub struct HandlerError {
    /// What went wrong, for people.
    pub message: String,
    /// Whether and when the task should be tried again.
    pub retry: RetryHint,
}

impl HandlerError {
    /// An error with `message`, retried per the task's policy.
    pub fn new(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            retry: RetryHint::Policy,
        }
    }

    /// An error that retrying cannot fix (bad input): the task fails at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            retry: RetryHint::Never,
        }
    }

    /// An error worth retrying after `delay` (a rate limit, say), if attempts remain.
    pub fn retry_after(message: impl Into<String>, delay: Duration) -> Self {
        HandlerError {
            message: message.into(),
            retry: RetryHint::After(delay),
        }
    }
}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        HandlerError::new(message)
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        HandlerError::new(message)
    }
}
