//! How attempts fail: the kind, a message, and what it says about retrying.
//!
//! Apart from the other domain types so that [`crate::ApiError::TaskFailed`] can carry a
//! [`TaskError`] without an import cycle (this module imports nothing of the crate).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The handler returned an error.
    Handler,
    /// The handler panicked.
    Panicked,
    /// No handler of that name is registered in the pod's sandbox.
    UnknownHandler,
    /// The attempt ran past its timeout.
    TimedOut,
    /// The attempt was cancelled.
    Cancelled,
    /// The process running the attempt died (signal, abort).
    Crashed,
    /// A command exited with a non-zero status.
    NonZeroExit,
    /// The attempt exceeded its memory limit.
    OutOfMemory,
    /// The sandbox itself failed (could not start the attempt).
    Sandbox,
    /// The pod holding the attempt went silent or lost it; nothing is known of its outcome.
    LeaseExpired,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Handler,
        ErrorKind::Panicked,
        ErrorKind::UnknownHandler,
        ErrorKind::TimedOut,
        ErrorKind::Cancelled,
        ErrorKind::Crashed,
        ErrorKind::NonZeroExit,
        ErrorKind::OutOfMemory,
        ErrorKind::Sandbox,
        ErrorKind::LeaseExpired,
    ];

    /// Its name, as the command line, the REST API and filters spell it: `handler`,
    /// `panicked`, `unknown-handler`, `timed-out`, `cancelled`, `crashed`,
    /// `non-zero-exit`, `out-of-memory`, `sandbox`, `lease-expired`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Handler => "handler",
            ErrorKind::Panicked => "panicked",
            ErrorKind::UnknownHandler => "unknown-handler",
            ErrorKind::TimedOut => "timed-out",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Crashed => "crashed",
            ErrorKind::NonZeroExit => "non-zero-exit",
            ErrorKind::OutOfMemory => "out-of-memory",
            ErrorKind::Sandbox => "sandbox",
            ErrorKind::LeaseExpired => "lease-expired",
        }
    }
}

/// `text` is not the [`ErrorKind::name`] of a kind (the message lists them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownErrorKind(String);

impl fmt::Display for UnknownErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        write!(f, "{:?} is not an error kind: {}", self.0, names.join(", "))
    }
}

impl std::error::Error for UnknownErrorKind {}

impl std::str::FromStr for ErrorKind {
    type Err = UnknownErrorKind;

    /// A kind by its [`ErrorKind::name`] (`handler-error` is taken for `handler` too).
    fn from_str(text: &str) -> Result<Self, UnknownErrorKind> {
        if text == "handler-error" {
            return Ok(ErrorKind::Handler);
        }
        ErrorKind::ALL
            .into_iter()
            .find(|kind| kind.name() == text)
            .ok_or_else(|| UnknownErrorKind(text.to_owned()))
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Handler => "handler error",
            ErrorKind::Panicked => "panicked",
            ErrorKind::UnknownHandler => "unknown handler",
            ErrorKind::TimedOut => "timed out",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Crashed => "crashed",
            ErrorKind::NonZeroExit => "non-zero exit",
            ErrorKind::OutOfMemory => "out of memory",
            ErrorKind::Sandbox => "sandbox error",
            ErrorKind::LeaseExpired => "lease expired",
        })
    }
}

/// What a failed attempt says about trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RetryHint {
    /// Follow the task's retry policy.
    #[default]
    Policy,
    /// Do not retry: the failure is permanent (bad input, say).
    Never,
    /// Retry (if attempts remain) after this delay instead of the backoff, but no later than
    /// the policy's `max_delay`.
    After(Duration),
}

/// The longest error message a master keeps from a pod, in bytes; a longer one is cut (on a
/// character boundary) and says how long it was.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 64 * 1024;

/// A failed attempt: what kind of failure and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// Details, e.g. the handler's error or the panic message.
    pub message: String,
    /// Whether and when to retry.
    pub retry: RetryHint,
}

impl TaskError {
    /// An error of `kind` with `message`, retried per policy.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        TaskError {
            kind,
            message: message.into(),
            retry: RetryHint::Policy,
        }
    }

    /// The same error with a retry hint.
    pub fn with_retry(mut self, retry: RetryHint) -> Self {
        self.retry = retry;
        self
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for TaskError {}
