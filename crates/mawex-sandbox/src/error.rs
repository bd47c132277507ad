use std::time::Duration;

use mawex_api::{ErrorKind, TaskError};

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
        };
        let message = match e {
            SandboxError::Handler(h) => h.message,
            other => other.to_string(),
        };
        TaskError::new(kind, message)
    }
}

/// The error a handler returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct HandlerError {
    /// What went wrong, for people.
    pub message: String,
}

impl HandlerError {
    /// An error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
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
