//! The forked sandbox: each attempt runs in a fresh child process that re-executes the
//! current binary, so a crash, a leak or a runaway handler never takes the pod down.
//!
//! The application's `main` must call [`run_if_child`] first, with the same handlers the
//! pod offers:
//!
//! ```no_run
//! # use mawex_sandbox as sandbox; // through the facade: `use mawex::sandbox;`
//! let registry = sandbox::HandlerRegistry::new(); // the pod's handlers
//! // The first thing in `main`: in a forked child this runs the attempt and exits;
//! // otherwise it returns at once and the application goes on as usual.
//! sandbox::run_if_child(&registry);
//! ```
//!
//! The attempt goes to the child on stdin and the result comes back on stdout, each as one
//! frame: a 4-byte little-endian length, then bincode 2. Process group, timeout,
//! cancellation and cleanup are those of the command sandbox; the rlimits travel in the
//! frame and the child sets them on itself before it runs the handler.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::error::SandboxError;
use crate::executor::Report;
use crate::fork_server::ForkServer;
use crate::forked_child::{frame, unframe, Request};
use crate::in_process::HandlerRegistry;
use crate::input::TaskInput;
use crate::process::{self, Budgets, ProcessLimits, Spawned};
use crate::Sandbox;

/// Set in a forked child's environment; [`run_if_child`] looks for it.
pub const CHILD_ENV: &str = "MAWEX_FORKED_CHILD";
/// In a forked child (its environment says so), runs the attempt read from stdin with
/// `registry`, writes the result to stdout and exits the process. In a Kubernetes Job in
/// executor mode, does the same with the attempt in the environment (see
/// [`crate::executor`]). Elsewhere returns at once.
///
/// # Panics
/// When called inside a running tokio runtime (from `#[tokio::main]`, say): its children
/// would fork a multi-threaded process and hang. The message says what to write instead.
pub fn run_if_child(registry: &HandlerRegistry) {
    if let Some(problem) = called_too_late() {
        if std::env::var_os(CHILD_ENV).is_some() {
            crate::forked_child::refuse(&problem);
        }
        let serving = std::env::var_os(crate::fork_server::SERVER_ENV).is_some()
            || std::env::var_os(crate::executor::EXECUTOR_ENV).is_some();
        if serving {
            // A fork server must fork a single-threaded process; the pod falls back to
            // spawning children, which report `problem` as their attempt's error.
            eprintln!("mawex: {problem}");
            std::process::exit(70);
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            panic!("{problem}");
        }
        tracing::warn!("{problem}");
    }
    crate::executor::run_if_executor(registry);
    crate::fork_server::run_if_server(registry);
    if std::env::var_os(CHILD_ENV).is_some() {
        crate::forked_child::run_child(registry);
    }
}

/// Why [`run_if_child`] cannot work where it was called, if it cannot: inside a running tokio
/// runtime, or in a process that already runs other threads (a fork of it would keep only the
/// forking thread, with whatever locks the others held).
fn called_too_late() -> Option<String> {
    let in_runtime = tokio::runtime::Handle::try_current().is_ok();
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |tasks| tasks.count());
    if !in_runtime && threads <= 1 {
        return None;
    }
    let when = if in_runtime {
        "inside a running tokio runtime (#[tokio::main]?)".to_owned()
    } else {
        format!("after other threads started ({threads} threads)")
    };
    Some(format!(
        "run_if_child was called {when}. Call it first in a plain `fn main()` and start the \
         runtime after it: `fn main() -> anyhow::Result<()> {{ \
         mawex::sandbox::run_if_child(&handlers()); \
         tokio::runtime::Runtime::new()?.block_on(app()) }}`"
    ))
}

/// Children started ahead of their attempts, and how many are being started.
#[derive(Debug, Default)]
struct WarmPool {
    idle: Mutex<Vec<Spawned>>,
    starting: AtomicUsize,
}

impl WarmPool {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Spawned>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for WarmPool {
    /// Kills the waiting children and reaps them: none outlives the sandbox, not even as a
    /// zombie.
    fn drop(&mut self) {
        let mut idle = std::mem::take(&mut *self.idle());
        for child in &mut idle {
            child.kill();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while !idle.is_empty() && std::time::Instant::now() < deadline {
            idle.retain_mut(|child| child.alive());
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Runs each attempt in a child process re-executing this binary (see [`run_if_child`]).
///
/// Starting a large binary costs milliseconds (loading and relocating it, starting its
/// runtime), so the sandbox keeps `warm` children started ahead, each waiting for one
/// attempt. Every attempt still gets a fresh process of its own; a child serves exactly one
/// attempt and is never reused. Set the fields before the first run: warm children are
/// started with the settings of that time.
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
    /// Fork each attempt's child from a fork server (the default; see
    /// [`crate::fork_server`]). Off, or if the server cannot start: spawn each child, with
    /// `warm` of them started ahead.
    pub fork_server: bool,
    /// How many children to keep started ahead when spawning (0: start each when its
    /// attempt comes).
    pub warm: usize,
    pool: Arc<WarmPool>,
    server: Arc<Mutex<Option<Arc<ForkServer>>>>,
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
            fork_server: true,
            warm: 2,
            pool: Arc::default(),
            server: Arc::default(),
        })
    }

    /// Process ids of the started children waiting for an attempt now.
    pub fn warm_children(&self) -> Vec<u32> {
        self.pool
            .idle()
            .iter()
            .filter_map(|child| u32::try_from(child.pid()).ok())
            .collect()
    }

    fn child_command(&self) -> tokio::process::Command {
        let mut command =
            process::isolated_command(&self.program, &self.args, &self.env, &self.inherit);
        command.env(CHILD_ENV, "1");
        command
    }

    /// Process id of the fork server, once one runs.
    pub fn fork_server_pid(&self) -> Option<u32> {
        let server = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        server
            .as_ref()
            .filter(|s| s.is_alive())
            .and_then(|s| s.pid())
    }

    /// The running fork server, started (again) if needed; `None` if it cannot start.
    fn fork_server(&self) -> Option<Arc<ForkServer>> {
        if !self.fork_server {
            return None;
        }
        let mut server = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = server.as_ref().filter(|s| s.is_alive()) {
            return Some(s.clone());
        }
        let command =
            process::isolated_command(&self.program, &self.args, &self.env, &self.inherit);
        match ForkServer::start(command) {
            Ok(s) => {
                let s = Arc::new(s);
                *server = Some(s.clone());
                Some(s)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no fork server; spawning a child per attempt");
                None
            }
        }
    }

    /// The child of one attempt: forked by the fork server, else a warm or new spawn.
    async fn started(&self) -> Result<process::Started, SandboxError> {
        if let Some(server) = self.fork_server() {
            match server.start_child().await {
                Ok(started) => return Ok(started),
                Err(e) => tracing::debug!(error = %e, "fork server failed; spawning instead"),
            }
        }
        let child = self.child()?;
        self.refill();
        Ok(child.into())
    }

    /// A warm child if one is ready, else one started now.
    fn child(&self) -> Result<Spawned, SandboxError> {
        let warm = {
            let mut idle = self.pool.idle();
            std::iter::from_fn(|| idle.pop()).find_map(|mut child| child.alive().then_some(child))
        };
        match warm {
            Some(child) => Ok(child),
            // Limits are set by the child itself, once it has read its attempt.
            None => process::spawn(self.child_command(), ProcessLimits::default()),
        }
    }

    /// Starts children in the background until `warm` are ready or starting.
    fn refill(&self) {
        let ready = self.pool.idle().len() + self.pool.starting.load(Ordering::Acquire);
        let missing = self.warm.saturating_sub(ready);
        if missing == 0 {
            return;
        }
        self.pool.starting.fetch_add(missing, Ordering::AcqRel);
        let this = self.clone();
        // Spawning waits for the child's exec: keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            for _ in 0..missing {
                match process::spawn(this.child_command(), ProcessLimits::default()) {
                    Ok(child) => this.pool.idle().push(child),
                    Err(e) => tracing::debug!(error = %e, "could not start a warm child"),
                }
                this.pool.starting.fetch_sub(1, Ordering::AcqRel);
            }
        });
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
        let env = input
            .child_env(&[])
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let request = Request {
            task: input.task,
            attempt: input.attempt.0,
            group: input.group,
            handler: input.handler,
            payload: input.payload.to_vec(),
            memory_bytes: input.limits.memory_bytes,
            cpu_seconds: self.cpu_seconds,
            open_files: self.open_files,
            env,
            inputs: input.inputs,
        };
        let log_handle = input.log;
        let stdin = frame(&request).map_err(SandboxError::Spawn)?;
        let limits = process::limits_for(&input.limits, self.cpu_seconds, self.open_files);
        let child = self.started().await?;
        let budgets = Budgets {
            // The frame's own bytes on top of the output.
            stdout: self.max_output_bytes + 64 * 1024,
            stderr: self.stderr_tail_bytes,
            grace: self.grace,
            log: log_handle,
            tee_stdout: false,
        };
        let outcome = process::drive(child, stdin.into(), limits, budgets, &cancel).await?;
        if outcome.code != Some(0) {
            return Err(process::failure(&outcome, limits));
        }
        if outcome.stdout.truncated() {
            return Err(SandboxError::OutputTooLarge {
                limit: self.max_output_bytes,
            });
        }
        match unframe::<Report>(&outcome.stdout.bytes) {
            Ok(Report::Ok(out)) if out.len() > self.max_output_bytes => {
                Err(SandboxError::OutputTooLarge {
                    limit: self.max_output_bytes,
                })
            }
            Ok(report) => report.into_result(),
            Err(e) => Err(SandboxError::Spawn(format!(
                "the child's answer does not decode ({e}); does main call run_if_child?"
            ))),
        }
    }
}
