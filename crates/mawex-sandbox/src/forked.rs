//! The forked sandbox: each attempt runs in a fresh child process that re-executes the
//! current binary, so a crash, a leak or a runaway handler never takes the pod down.
//!
//! The application's `main` must call [`run_if_child`] first, with the same handlers the
//! pod offers:
//!
//! ```no_run
//! let registry = mawex_sandbox::HandlerRegistry::new(); // the pod's handlers
//! // The first thing in `main`: in a forked child this runs the attempt and exits;
//! // otherwise it returns at once and the application goes on as usual.
//! mawex_sandbox::forked::run_if_child(&registry);
//! ```
//!
//! The attempt goes to the child on stdin and the result comes back on stdout, each as one
//! frame: a 4-byte little-endian length, then bincode 2. Limits, process group, timeout,
//! cancellation and cleanup are those of the command sandbox.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use mawex_api::{Attempt, GroupName, RetryHint, TaskId};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::error::{HandlerError, SandboxError};
use crate::in_process::{HandlerRegistry, InProcess};
use crate::input::TaskInput;
use crate::process::{self, Budgets};
use crate::Sandbox;

/// Set in a forked child's environment; [`run_if_child`] looks for it.
pub const CHILD_ENV: &str = "MAWEX_FORKED_CHILD";
/// Exit status of a child that could not even read its attempt.
const SETUP_FAILED: i32 = 70;

#[derive(Serialize, Deserialize)]
struct Request {
    task: TaskId,
    attempt: u32,
    group: GroupName,
    handler: String,
    payload: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
enum Response {
    Ok(Vec<u8>),
    Handler { message: String, retry: RetryHint },
    Panicked(String),
    UnknownHandler(String),
}

fn frame<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| e.to_string())?;
    let len = u32::try_from(body.len()).map_err(|_| "frame too large".to_owned())?;
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

fn unframe<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    let (len, body) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| "frame shorter than its length".to_owned())?;
    let len = u32::from_le_bytes(*len) as usize;
    if body.len() != len {
        return Err(format!("frame says {len} bytes, has {}", body.len()));
    }
    let (value, used) = bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map_err(|e| e.to_string())?;
    if used != len {
        return Err("trailing bytes after the frame".into());
    }
    Ok(value)
}

/// In a forked child (its environment says so), runs the attempt read from stdin with
/// `registry`, writes the result to stdout and exits the process. In a Kubernetes Job in
/// executor mode, does the same with the attempt in the environment (see
/// [`crate::executor`]). Elsewhere returns at once.
pub fn run_if_child(registry: &HandlerRegistry) {
    crate::executor::run_if_executor(registry);
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let code = match child_main(registry) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mawex forked child: {e}");
            SETUP_FAILED
        }
    };
    std::process::exit(code);
}

fn child_main(registry: &HandlerRegistry) -> Result<(), String> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("reading the attempt: {e}"))?;
    let request: Request = unframe(&input)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    let sandbox = InProcess::new(registry.clone());
    let mut task = TaskInput::for_test(&request.handler, request.payload);
    task.task = request.task;
    task.attempt = Attempt(request.attempt);
    task.group = request.group;
    // Limits are enforced by the parent around this whole process.
    let result = runtime.block_on(sandbox.run(task, CancellationToken::new()));
    let response = match result {
        Ok(out) => Response::Ok(out.to_vec()),
        Err(SandboxError::Handler(h)) => Response::Handler {
            message: h.message,
            retry: h.retry,
        },
        Err(SandboxError::Panicked(m)) => Response::Panicked(m),
        Err(SandboxError::UnknownHandler(h)) => Response::UnknownHandler(h),
        Err(other) => Response::Handler {
            message: other.to_string(),
            retry: RetryHint::Policy,
        },
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&frame(&response)?)
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("writing the result: {e}"))
}

/// Runs each attempt in a child process re-executing this binary (see [`run_if_child`]).
#[derive(Debug, Clone)]
pub struct ForkedSandbox {
    /// The program to run: the current executable by default.
    pub program: PathBuf,
    /// Arguments passed to it.
    pub args: Vec<String>,
    /// The child's environment, exactly (plus the marker that makes it a child).
    pub env: BTreeMap<String, String>,
    /// Names of the pod's environment variables passed through.
    pub inherit: Vec<String>,
    /// Largest output accepted.
    pub max_output_bytes: usize,
    /// How much of stderr is kept for error reports.
    pub stderr_tail_bytes: usize,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// CPU-seconds limit of each child.
    pub cpu_seconds: Option<u64>,
    /// Open-file limit of each child.
    pub open_files: Option<u64>,
}

impl ForkedSandbox {
    /// A sandbox re-executing the current binary.
    ///
    /// # Errors
    /// [`SandboxError::Spawn`] if the current executable cannot be found.
    pub fn new() -> Result<Self, SandboxError> {
        let program = std::env::current_exe()
            .map_err(|e| SandboxError::Spawn(format!("finding the current executable: {e}")))?;
        Ok(ForkedSandbox {
            program,
            args: Vec::new(),
            env: BTreeMap::new(),
            inherit: Vec::new(),
            max_output_bytes: 4 * 1024 * 1024,
            stderr_tail_bytes: 64 * 1024,
            grace: Duration::from_secs(5),
            cpu_seconds: None,
            open_files: None,
        })
    }
}

#[async_trait]
impl Sandbox for ForkedSandbox {
    fn name(&self) -> &'static str {
        "forked"
    }

    async fn run(
        &self,
        input: TaskInput,
        cancel: CancellationToken,
    ) -> Result<Bytes, SandboxError> {
        let request = Request {
            task: input.task,
            attempt: input.attempt.0,
            group: input.group,
            handler: input.handler,
            payload: input.payload.to_vec(),
        };
        let stdin = frame(&request).map_err(SandboxError::Spawn)?;
        let mut command =
            process::isolated_command(&self.program, &self.args, &self.env, &self.inherit);
        command.env(CHILD_ENV, "1");
        let limits = process::limits_for(&input.limits, self.cpu_seconds, self.open_files);
        let budgets = Budgets {
            // The frame's own bytes on top of the output.
            stdout: self.max_output_bytes + 64 * 1024,
            stderr: self.stderr_tail_bytes,
            grace: self.grace,
        };
        let outcome = process::run(command, stdin.into(), limits, budgets, &cancel).await?;
        if outcome.code != Some(0) {
            return Err(process::failure(&outcome, limits));
        }
        if outcome.stdout.truncated() {
            return Err(SandboxError::OutputTooLarge {
                limit: self.max_output_bytes,
            });
        }
        match unframe::<Response>(&outcome.stdout.bytes) {
            Ok(Response::Ok(out)) if out.len() > self.max_output_bytes => {
                Err(SandboxError::OutputTooLarge {
                    limit: self.max_output_bytes,
                })
            }
            Ok(Response::Ok(out)) => Ok(out.into()),
            Ok(Response::Handler { message, retry }) => {
                let mut e = HandlerError::new(message);
                e.retry = retry;
                Err(SandboxError::Handler(e))
            }
            Ok(Response::Panicked(m)) => Err(SandboxError::Panicked(m)),
            Ok(Response::UnknownHandler(h)) => Err(SandboxError::UnknownHandler(h)),
            Err(e) => Err(SandboxError::Spawn(format!(
                "the child's answer does not decode ({e}); does main call run_if_child?"
            ))),
        }
    }
}
