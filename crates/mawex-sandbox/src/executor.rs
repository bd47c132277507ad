//! Executor mode: the application's own binary running one attempt inside a Kubernetes Job
//! container, and the one-line report it leaves behind.
//!
//! The Job's container gets the attempt in its environment ([`EXECUTOR_ENV`] marks it; the
//! payload is the file named by `MAWEX_PAYLOAD_FILE`, or base64 in `MAWEX_PAYLOAD`). [`crate::run_if_child`] sees the marker, runs the
//! handler and writes a [`Report`] line to the container's termination message file (when it
//! fits Kubernetes' 4 KiB) and, always, as the last line of standard output, which the
//! sandbox reads when the termination message is empty.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use mawex_api::{Attempt, GroupName, RetryHint, TaskId};
use tokio_util::sync::CancellationToken;

use crate::error::{HandlerError, SandboxError};
use crate::in_process::{HandlerRegistry, InProcess};
use crate::input::TaskInput;
use crate::Sandbox;

/// Set (to `kubernetes`) in an executor container's environment.
pub const EXECUTOR_ENV: &str = "MAWEX_EXECUTOR";
/// The task's id.
pub const TASK_ENV: &str = "MAWEX_TASK_ID";
/// The attempt number.
pub const ATTEMPT_ENV: &str = "MAWEX_ATTEMPT";
/// The task's group.
pub const GROUP_ENV: &str = "MAWEX_GROUP";
/// The handler to run.
pub const HANDLER_ENV: &str = "MAWEX_HANDLER";
/// The payload, base64 (standard alphabet, padded).
pub const PAYLOAD_ENV: &str = "MAWEX_PAYLOAD";
/// The path of a file holding the payload, raw (Kubernetes Jobs: a Secret mounted in the
/// container, so that the payload is not in the Job's spec for everyone who can read Jobs).
pub const PAYLOAD_FILE_ENV: &str = "MAWEX_PAYLOAD_FILE";
/// Where the report goes besides stdout (default: Kubernetes' `/dev/termination-log`).
pub const TERMINATION_LOG_ENV: &str = "MAWEX_TERMINATION_LOG";

/// The most Kubernetes keeps of a termination message.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;
const PREFIX: &str = "mawex:v1:";

/// How an attempt that ran in a child of the pod (forked, or a Job in executor mode) ended:
/// framed with bincode by a forked child, written as one line by an executor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Report {
    /// The handler's output.
    Ok(Bytes),
    /// The handler failed.
    Failed(HandlerError),
    /// The handler panicked.
    Panicked(String),
    /// The image has no such handler.
    UnknownHandler(String),
}

impl Report {
    /// The report as one line of text (no newline).
    pub fn encode(&self) -> String {
        match self {
            Report::Ok(out) => format!("{PREFIX}ok:{}", BASE64.encode(out)),
            Report::Failed(e) => {
                let retry = match e.retry {
                    RetryHint::Never => "never".to_owned(),
                    RetryHint::After(d) => format!("after={}", d.as_millis()),
                    // The policy, and any hint newer than this format.
                    _ => "policy".to_owned(),
                };
                format!("{PREFIX}error:{retry}:{}", BASE64.encode(&e.message))
            }
            Report::Panicked(m) => format!("{PREFIX}panic:{}", BASE64.encode(m)),
            Report::UnknownHandler(h) => format!("{PREFIX}unknown-handler:{}", BASE64.encode(h)),
        }
    }

    /// Reads a report line; `None` if `line` is not one (a plain command's own output).
    pub fn decode(line: &str) -> Option<Report> {
        let rest = line.trim_end().strip_prefix(PREFIX)?;
        let (kind, rest) = rest.split_once(':')?;
        let text = |b64: &str| {
            BASE64
                .decode(b64)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
        };
        match kind {
            "ok" => BASE64.decode(rest).ok().map(|b| Report::Ok(b.into())),
            "error" => {
                let (retry, message) = rest.split_once(':')?;
                let retry = match retry {
                    "policy" => RetryHint::Policy,
                    "never" => RetryHint::Never,
                    after => RetryHint::After(Duration::from_millis(
                        after.strip_prefix("after=")?.parse().ok()?,
                    )),
                };
                let mut e = HandlerError::new(text(message)?);
                e.retry = retry;
                Some(Report::Failed(e))
            }
            "panic" => text(rest).map(Report::Panicked),
            "unknown-handler" => text(rest).map(Report::UnknownHandler),
            _ => None,
        }
    }

    /// The report of an attempt run in-process by the child; failures of the sandbox itself
    /// travel as handler errors.
    pub fn of(result: Result<Bytes, SandboxError>) -> Report {
        match result {
            Ok(out) => Report::Ok(out),
            Err(SandboxError::Handler(e)) => Report::Failed(e),
            Err(SandboxError::Panicked(m)) => Report::Panicked(m),
            Err(SandboxError::UnknownHandler(h)) => Report::UnknownHandler(h),
            Err(other) => Report::Failed(HandlerError::new(other.to_string())),
        }
    }

    /// The attempt's result as a sandbox returns it.
    pub fn into_result(self) -> Result<Bytes, SandboxError> {
        match self {
            Report::Ok(out) => Ok(out),
            Report::Failed(e) => Err(SandboxError::Handler(e)),
            Report::Panicked(m) => Err(SandboxError::Panicked(m)),
            Report::UnknownHandler(h) => Err(SandboxError::UnknownHandler(h)),
        }
    }
}

/// Runs the attempt described by `env` (a lookup of environment variables) with `registry`.
///
/// # Errors
/// A message if the environment does not describe an attempt.
pub fn run_attempt(
    registry: &HandlerRegistry,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Report, String> {
    let var = |name: &str| env(name).ok_or_else(|| format!("{name} is not set"));
    let handler = var(HANDLER_ENV)?;
    let payload = match env(PAYLOAD_FILE_ENV) {
        Some(path) => std::fs::read(&path)
            .map_err(|e| format!("{PAYLOAD_FILE_ENV} {path:?} cannot be read: {e}"))?,
        None => BASE64
            .decode(var(PAYLOAD_ENV)?)
            .map_err(|e| format!("{PAYLOAD_ENV} is not base64: {e}"))?,
    };
    let mut input = TaskInput::for_test(&handler, payload);
    if let Some(task) = env(TASK_ENV) {
        input.task = task
            .parse::<TaskId>()
            .map_err(|e| format!("{TASK_ENV} {task:?}: {e}"))?;
    }
    if let Some(attempt) = env(ATTEMPT_ENV) {
        input.attempt = Attempt(
            attempt
                .parse()
                .map_err(|e| format!("{ATTEMPT_ENV} {attempt:?}: {e}"))?,
        );
    }
    if let Some(group) = env(GROUP_ENV) {
        input.group = GroupName::new(group).map_err(|e| e.to_string())?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    // Limits are the container's; the Job's deadline bounds the time.
    let result =
        runtime.block_on(InProcess::new(registry.clone()).run(input, CancellationToken::new()));
    Ok(Report::of(result))
}

/// In an executor container, runs the attempt, leaves the report and exits; elsewhere returns.
pub(crate) fn run_if_executor(registry: &HandlerRegistry) {
    if std::env::var(EXECUTOR_ENV).as_deref() != Ok("kubernetes") {
        return;
    }
    let report = match run_attempt(registry, |name| std::env::var(name).ok()) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("mawex executor: {e}");
            std::process::exit(70);
        }
    };
    let line = report.encode();
    if line.len() <= TERMINATION_MESSAGE_LIMIT {
        let path = std::env::var(TERMINATION_LOG_ENV)
            .unwrap_or_else(|_| "/dev/termination-log".to_owned());
        if let Err(e) = std::fs::write(&path, &line) {
            // The log line below still carries the report.
            eprintln!("mawex executor: writing {path}: {e}");
        }
    }
    println!("{line}");
    std::process::exit(if matches!(report, Report::Ok(_)) {
        0
    } else {
        1
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reports_survive_their_line() {
        let mut after = HandlerError::new("slow down: ünïcode");
        after.retry = RetryHint::After(Duration::from_millis(1500));
        for report in [
            Report::Ok(Bytes::from_static(b"\x00binary\nlines")),
            Report::Failed(HandlerError::new("bad")),
            Report::Failed(HandlerError::permanent("worse")),
            Report::Failed(after),
            Report::Panicked("boom".into()),
            Report::UnknownHandler("nope".into()),
        ] {
            let line = report.encode();
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(Report::decode(&line), Some(report));
        }
        assert_eq!(Report::decode("plain output"), None);
        assert_eq!(Report::decode("mawex:v1:what:ever"), None);
    }

    #[test]
    fn an_attempt_runs_from_its_environment() {
        let mut registry = HandlerRegistry::new();
        registry
            .register("upper", |input: TaskInput| async move {
                Ok(input.payload.to_ascii_uppercase().into())
            })
            .unwrap();
        let env = |payload: &'static str, handler: &'static str| {
            move |name: &str| match name {
                HANDLER_ENV => Some(handler.to_owned()),
                PAYLOAD_ENV => Some(payload.to_owned()),
                ATTEMPT_ENV => Some("2".to_owned()),
                _ => None,
            }
        };
        assert_eq!(
            run_attempt(&registry, env("YWJj", "upper")),
            Ok(Report::Ok(Bytes::from_static(b"ABC")))
        );
        assert_eq!(
            run_attempt(&registry, env("YWJj", "lower")),
            Ok(Report::UnknownHandler("lower".into()))
        );
        assert!(run_attempt(&registry, env("not base64!", "upper"))
            .unwrap_err()
            .contains(PAYLOAD_ENV));

        // From a file (a Kubernetes Secret mounted in the container), raw.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("payload");
        std::fs::write(&file, b"from a secret").unwrap();
        let path = file.display().to_string();
        let from_file = |name: &str| match name {
            HANDLER_ENV => Some("upper".to_owned()),
            PAYLOAD_FILE_ENV => Some(path.clone()),
            _ => None,
        };
        assert_eq!(
            run_attempt(&registry, from_file),
            Ok(Report::Ok(Bytes::from_static(b"FROM A SECRET")))
        );
        let missing = |name: &str| match name {
            HANDLER_ENV => Some("upper".to_owned()),
            PAYLOAD_FILE_ENV => Some("/nonexistent/payload".to_owned()),
            _ => None,
        };
        assert!(run_attempt(&registry, missing)
            .unwrap_err()
            .contains(PAYLOAD_FILE_ENV));
    }
}
