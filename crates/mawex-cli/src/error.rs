//! The one error type of the binary, and the exit code each error ends it with.

use std::process::ExitCode;

/// How `mawex` ends (documented in `docs/cli.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Success = 0,
    /// 1: an error (the master unreachable, a refused call, a file that cannot be read).
    Error = 1,
    /// 2: bad flags or a bad configuration.
    Usage = 2,
    /// 3: the task waited for failed.
    TaskFailed = 3,
    /// 4: the wait timed out (the task goes on).
    TimedOut = 4,
    /// 5: the task waited for was cancelled.
    Cancelled = 5,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration (file, environment or flags) is wrong; the message names the key.
    #[error("configuration: {0}")]
    Config(String),
    /// A flag or an argument is wrong.
    #[error("{0}")]
    Usage(String),
    /// A call to the master failed.
    #[error(transparent)]
    Api(#[from] mawex::ApiError),
    /// Reading or writing a file or a stream failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// Running a master or a pod failed.
    #[error("{0}")]
    Serve(String),
    /// The task waited for failed (the message says so, with its error), or a broadcast or
    /// tree did not reach every target.
    #[error("{0}")]
    TaskFailed(String),
    /// The wait ran out before the task finished.
    #[error("timed out after {0:?} waiting for the task (it goes on)")]
    TimedOut(std::time::Duration),
    /// The task waited for was cancelled.
    #[error("the task was cancelled")]
    Cancelled,
    /// No master was found on the network (discovery).
    #[error("discovery: {0}")]
    Discovery(String),
}

impl CliError {
    /// The exit code this error ends the binary with.
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Config(_) | CliError::Usage(_) => Exit::Usage,
            CliError::Api(_)
            | CliError::Io { .. }
            | CliError::Serve(_)
            | CliError::Discovery(_) => Exit::Error,
            CliError::TaskFailed(_) => Exit::TaskFailed,
            CliError::TimedOut(_) => Exit::TimedOut,
            CliError::Cancelled => Exit::Cancelled,
        }
    }

    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
        let what = what.into();
        move |source| CliError::Io { what, source }
    }

    /// A failure to run a master or a pod.
    pub fn serve(e: impl std::fmt::Display) -> CliError {
        CliError::Serve(e.to_string())
    }
}
