//! Running a child process under limits: its own process group, rlimits, a wall-clock
//! timeout, cancellation (SIGTERM to the group, SIGKILL after a grace period), bounded
//! stdout/stderr capture, and no process of the group left behind.
//!
//! One of the two modules of the crate with `unsafe` code (the other is the fork server):
//! applying rlimits in the child between `fork` and `exec` needs `pre_exec`.

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::error::SandboxError;
use crate::input::LogHandle;
use mawex_api::{OutputStream, MAX_OUTPUT_LINE_BYTES};

/// Limits of one child process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessLimits {
    /// Wall-clock limit.
    pub timeout: Option<Duration>,
    /// Address-space limit (`RLIMIT_AS`), bytes.
    pub memory_bytes: Option<u64>,
    /// CPU-time limit (`RLIMIT_CPU`), seconds.
    pub cpu_seconds: Option<u64>,
    /// Open-file limit (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
}

/// The last bytes a stream produced, and how many it produced in all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tail {
    /// The kept bytes (the end of the stream).
    pub bytes: Bytes,
    /// Everything the stream produced, in bytes.
    pub total: u64,
}

impl Tail {
    /// True if the stream produced more than was kept.
    pub fn truncated(&self) -> bool {
        self.total > self.bytes.len() as u64
    }

    /// The kept bytes as text, for messages.
    pub fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes).into_owned();
        if self.truncated() {
            format!("…{text}")
        } else {
            text
        }
    }
}

/// How a child process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOutcome {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// End of its standard output (up to the stdout budget).
    pub stdout: Tail,
    /// End of its standard error.
    pub stderr: Tail,
}

/// A command for `program` with exactly `env` as its environment, plus the variables of this
/// process named in `inherit`: nothing else leaks into a sandboxed child.
pub(crate) fn isolated_command<'a>(
    program: impl AsRef<std::ffi::OsStr>,
    args: &[String],
    env: &std::collections::BTreeMap<String, String>,
    inherit: impl IntoIterator<Item = &'a String>,
) -> Command {
    let mut command = Command::new(program);
    command.args(args).env_clear().envs(env);
    for name in inherit {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command
}

/// The limits of an attempt: the task's timeout and memory, the sandbox's CPU and files.
pub(crate) fn limits_for(
    task: &mawex_api::Limits,
    cpu_seconds: Option<u64>,
    open_files: Option<u64>,
) -> ProcessLimits {
    ProcessLimits {
        timeout: task.timeout,
        memory_bytes: task.memory_bytes,
        cpu_seconds,
        open_files,
    }
}

/// Output budgets of [`run`], and where its lines go live.
#[derive(Debug, Clone)]
pub(crate) struct Budgets {
    pub(crate) stdout: usize,
    pub(crate) stderr: usize,
    /// Between SIGTERM and SIGKILL.
    pub(crate) grace: Duration,
    /// The attempt's live output: stderr's lines, and stdout's if `tee_stdout`.
    pub(crate) log: LogHandle,
    /// Whether stdout is text worth showing (not a forked child's result frame).
    pub(crate) tee_stdout: bool,
}

impl Budgets {
    /// The budgets of a program whose stdout is the attempt's output (of at most
    /// `max_output_bytes`), its lines shown live through `log`.
    pub(crate) fn for_output(
        max_output_bytes: usize,
        stderr_tail_bytes: usize,
        grace: Duration,
        log: LogHandle,
    ) -> Self {
        Budgets {
            stdout: max_output_bytes,
            stderr: stderr_tail_bytes,
            grace,
            log,
            tee_stdout: true,
        }
    }
}

/// Splits bytes into lines for a [`LogHandle`]: a line longer than an output line is cut,
/// its rest skipped up to the next line break, so a stream without breaks costs nothing.
struct Lines {
    stream: OutputStream,
    log: LogHandle,
    partial: Vec<u8>,
    /// Skipping the rest of a line that was too long.
    skipping: bool,
}

impl Lines {
    fn feed(&mut self, bytes: &[u8]) {
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            let (body, ends) = match chunk.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (chunk, false),
            };
            if !self.skipping {
                let room = MAX_OUTPUT_LINE_BYTES.saturating_sub(self.partial.len());
                self.partial
                    .extend_from_slice(&body[..body.len().min(room)]);
                if body.len() > room {
                    self.emit();
                    self.skipping = true;
                }
            }
            if ends {
                if !self.skipping {
                    self.emit();
                }
                self.skipping = false;
            }
        }
    }

    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.partial);
        self.log
            .write(self.stream, text.strip_suffix('\r').unwrap_or(&text));
        self.partial.clear();
    }

    fn finish(&mut self) {
        if !self.partial.is_empty() && !self.skipping {
            self.emit();
        }
    }
}

/// Reads a stream to its end, keeping only its last `cap` bytes, and handing each line to
/// `lines` if given.
async fn tail_of<R: AsyncRead + Unpin>(
    mut reader: R,
    cap: usize,
    mut lines: Option<Lines>,
) -> Tail {
    let mut kept: VecDeque<u8> = VecDeque::with_capacity(cap.min(64 * 1024));
    let mut total = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n as u64;
                kept.extend(&buf[..n]);
                let excess = kept.len().saturating_sub(cap);
                kept.drain(..excess);
                if let Some(lines) = &mut lines {
                    lines.feed(&buf[..n]);
                }
            }
        }
    }
    if let Some(lines) = &mut lines {
        lines.finish();
    }
    Tail {
        bytes: Bytes::from(Vec::from(kept)),
        total,
    }
}

/// Applies `limits` in the child before `exec`.
#[allow(unsafe_code)]
fn set_rlimits(command: &mut Command, limits: ProcessLimits) {
    use nix::sys::resource::{setrlimit, Resource};
    let wanted: Vec<(Resource, u64)> = [
        (Resource::RLIMIT_AS, limits.memory_bytes),
        (Resource::RLIMIT_CPU, limits.cpu_seconds),
        (Resource::RLIMIT_NOFILE, limits.open_files),
    ]
    .into_iter()
    .filter_map(|(r, v)| v.map(|v| (r, v)))
    .collect();
    if wanted.is_empty() {
        return;
    }
    // SAFETY: the closure runs in the forked child before exec. It only calls setrlimit (an
    // async-signal-safe system call) on values computed before the fork, and allocates
    // nothing.
    unsafe {
        command.pre_exec(move || {
            for (resource, value) in &wanted {
                setrlimit(*resource, *value, *value).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}

/// Sends `signal` to the whole process group `pgid`; a group already gone is fine.
fn signal_group(pgid: i32, signal: Signal) {
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => debug!(pgid, ?signal, error = %e, "could not signal a process group"),
    }
}

/// True while any process of group `pgid` exists.
pub fn group_alive(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None).is_ok()
}

/// How a process ended: its exit code, or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExitInfo {
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
}

/// Where a started process's end is learned: from our own child, or relayed by the fork
/// server whose child it is.
pub(crate) enum Exit {
    Child(tokio::process::Child),
    Relayed(tokio::sync::oneshot::Receiver<ExitInfo>),
}

impl Exit {
    async fn wait(&mut self) -> std::io::Result<ExitInfo> {
        use std::os::unix::process::ExitStatusExt;
        match self {
            Exit::Child(child) => child.wait().await.map(|s| ExitInfo {
                code: s.code(),
                signal: s.signal(),
            }),
            Exit::Relayed(rx) => rx.await.map_err(|_| {
                std::io::Error::other("the fork server went away before the child ended")
            }),
        }
    }
}

/// A started process ready for [`drive`]: its group and its stdio.
pub(crate) struct Started {
    pub(crate) pgid: i32,
    pub(crate) stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    pub(crate) stdout: Option<Pin<Box<dyn AsyncRead + Send>>>,
    pub(crate) stderr: Option<Pin<Box<dyn AsyncRead + Send>>>,
    pub(crate) exit: Exit,
}

impl From<Spawned> for Started {
    fn from(s: Spawned) -> Started {
        let Spawned { mut child, pgid } = s;
        Started {
            pgid,
            stdin: child
                .stdin
                .take()
                .map(|w| Box::pin(w) as Pin<Box<dyn AsyncWrite + Send>>),
            stdout: child
                .stdout
                .take()
                .map(|r| Box::pin(r) as Pin<Box<dyn AsyncRead + Send>>),
            stderr: child
                .stderr
                .take()
                .map(|r| Box::pin(r) as Pin<Box<dyn AsyncRead + Send>>),
            exit: Exit::Child(child),
        }
    }
}

/// A started child process, its own process-group leader, with piped stdio.
#[derive(Debug)]
pub(crate) struct Spawned {
    child: tokio::process::Child,
    pgid: i32,
}

impl Spawned {
    /// True if the process has not exited yet; reaps it if it has.
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGKILL to its process group.
    pub(crate) fn kill(&mut self) {
        signal_group(self.pgid, Signal::SIGKILL);
    }

    /// Its process id (= its process group).
    pub(crate) fn pid(&self) -> i32 {
        self.pgid
    }
}

/// Starts `command` in a process group of its own, with piped stdio, `limits`' rlimits
/// applied before `exec`, and killed if dropped.
///
/// # Errors
/// `Spawn` if the program could not be started.
pub(crate) fn spawn(mut command: Command, limits: ProcessLimits) -> Result<Spawned, SandboxError> {
    command
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    set_rlimits(&mut command, limits);
    become_subreaper();
    let child = command
        .spawn()
        .map_err(|e| SandboxError::Spawn(e.to_string()))?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| SandboxError::Spawn("the child has no process id".into()))?;
    Ok(Spawned { child, pgid })
}

/// Runs `command` with `stdin` as its input under `limits`, until it exits, times out or
/// `cancel` fires. Whatever happens, the process group is killed and reaped before this
/// returns: no process of it outlives the call.
///
/// # Errors
/// `TimedOut`, `Cancelled`, or `Spawn` if the program could not be started.
///
/// # Cancel safety
/// Dropping the future kills the whole group at once (SIGKILL, no grace); prefer `cancel`,
/// which gives it the grace period first.
pub(crate) async fn run(
    command: Command,
    stdin: Bytes,
    limits: ProcessLimits,
    budgets: Budgets,
    cancel: &CancellationToken,
) -> Result<ProcessOutcome, SandboxError> {
    let spawned = spawn(command, limits)?;
    drive(spawned, stdin, limits, budgets, cancel).await
}

/// [`run`] for a process already started by [`spawn`]: feeds it `stdin` and sees it to its
/// end. `limits` gives the timeout (counted from now) and the memory limit for reports.
pub(crate) async fn drive(
    spawned: impl Into<Started>,
    stdin: Bytes,
    limits: ProcessLimits,
    budgets: Budgets,
    cancel: &CancellationToken,
) -> Result<ProcessOutcome, SandboxError> {
    let Started {
        pgid,
        stdin: input,
        stdout,
        stderr,
        mut exit,
    } = spawned.into();
    // If this future is dropped (the pod aborted), the whole group still goes.
    let _group = GroupGuard(pgid);

    if let Some(mut input) = input {
        tokio::spawn(async move {
            // A child that does not read its input closes the pipe early; that is its business.
            let _ = input.write_all(&stdin).await;
        });
    }
    let lines = |stream| {
        budgets.log.is_on().then(|| Lines {
            stream,
            log: budgets.log.clone(),
            partial: Vec::new(),
            skipping: false,
        })
    };
    let stdout_lines = if budgets.tee_stdout {
        lines(OutputStream::Stdout)
    } else {
        None
    };
    let stderr_lines = lines(OutputStream::Stderr);
    let stdout = stdout.map(|r| tokio::spawn(tail_of(r, budgets.stdout, stdout_lines)));
    let stderr = stderr.map(|r| tokio::spawn(tail_of(r, budgets.stderr, stderr_lines)));

    let deadline = async {
        match limits.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let mut stopped: Option<SandboxError> = None;
    let status = tokio::select! {
        status = exit.wait() => status,
        () = deadline => {
            stopped = limits.timeout.map(SandboxError::TimedOut);
            terminate(&mut exit, pgid, budgets.grace).await
        }
        () = cancel.cancelled() => {
            stopped = Some(SandboxError::Cancelled);
            terminate(&mut exit, pgid, budgets.grace).await
        }
    };
    // Background processes the child left in its group go too, so the pipes close, and
    // their remains are reaped.
    signal_group(pgid, Signal::SIGKILL);
    reap_group(pgid).await;
    let status = status.map_err(|e| SandboxError::Spawn(format!("waiting for the child: {e}")))?;
    let stdout = match stdout {
        Some(h) => h.await.unwrap_or_default(),
        None => Tail::default(),
    };
    let stderr = match stderr {
        Some(h) => h.await.unwrap_or_default(),
        None => Tail::default(),
    };
    if let Some(e) = stopped {
        return Err(e);
    }
    Ok(ProcessOutcome {
        code: status.code,
        signal: status.signal,
        stdout,
        stderr,
    })
}

/// Kills a process group when dropped: nothing outlives an abandoned attempt.
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.0, Signal::SIGKILL);
    }
}

/// How long to wait for a killed group's last members to be reaped.
const REAP_DEADLINE: Duration = Duration::from_secs(5);

/// Makes this process the reaper of orphans it causes (Linux): when a sandboxed leader dies,
/// its children are re-parented here instead of to an init that may never reap them, so
/// [`reap_group`] can collect them. Done once per process.
fn become_subreaper() {
    #[cfg(target_os = "linux")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                debug!(error = %e, "could not become a child subreaper");
            }
        });
    }
}

/// Reaps members of group `pgid` that were re-parented to this process, until none is left.
async fn reap_group(pgid: i32) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = tokio::time::Instant::now() + REAP_DEADLINE;
    loop {
        // Reap whatever of the group has already died.
        loop {
            match waitpid(Pid::from_raw(-pgid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        if !group_alive(pgid) || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// SIGTERM to the group, SIGKILL after `grace`; returns the leader's exit status.
async fn terminate(exit: &mut Exit, pgid: i32, grace: Duration) -> std::io::Result<ExitInfo> {
    signal_group(pgid, Signal::SIGTERM);
    match tokio::time::timeout(grace, exit.wait()).await {
        Ok(status) => status,
        Err(_) => {
            signal_group(pgid, Signal::SIGKILL);
            exit.wait().await
        }
    }
}

/// Runs a program whose stdout is the attempt's output: status 0 with at most
/// `max_output_bytes` of stdout is success; anything else fails (never buffered whole).
///
/// # Errors
/// As [`run`], plus the failure of a non-zero status and `OutputTooLarge`.
pub(crate) async fn run_for_output(
    command: Command,
    stdin: Bytes,
    limits: ProcessLimits,
    budgets: Budgets,
    cancel: &CancellationToken,
) -> Result<Bytes, SandboxError> {
    let max_output_bytes = budgets.stdout;
    // One byte over the limit tells "too large" from "exactly the limit".
    let budgets = Budgets {
        stdout: max_output_bytes.saturating_add(1),
        ..budgets
    };
    let outcome = run(command, stdin, limits, budgets, cancel).await?;
    if outcome.code != Some(0) {
        return Err(failure(&outcome, limits));
    }
    if outcome.stdout.truncated() || outcome.stdout.total as usize > max_output_bytes {
        return Err(SandboxError::OutputTooLarge {
            limit: max_output_bytes,
        });
    }
    Ok(outcome.stdout.bytes)
}

/// The error for a process that did not exit with status 0.
pub(crate) fn failure(outcome: &ProcessOutcome, limits: ProcessLimits) -> SandboxError {
    let stderr = outcome.stderr.text();
    let out_of_memory =
        limits.memory_bytes.is_some() && OOM_WORDS.iter().any(|needle| stderr.contains(needle));
    match (outcome.code, outcome.signal) {
        (Some(code), _) if out_of_memory => SandboxError::OutOfMemory {
            limit: limits.memory_bytes.unwrap_or(0),
            stderr: format!("exit status {code}: {stderr}"),
        },
        (None, Some(signal)) if out_of_memory => SandboxError::OutOfMemory {
            limit: limits.memory_bytes.unwrap_or(0),
            stderr: format!("signal {signal}: {stderr}"),
        },
        (Some(code), _) => SandboxError::NonZeroExit { code, stderr },
        (None, Some(signal)) => SandboxError::Crashed { signal, stderr },
        (None, None) => SandboxError::Spawn("the process ended without a status".into()),
    }
}

/// Under a memory limit, the usual last words of a process that hit it (Python, libc, Rust's
/// allocator, C++).
const OOM_WORDS: [&str; 5] = [
    "MemoryError",
    "Cannot allocate memory",
    "out of memory",
    "memory allocation of",
    "bad_alloc",
];
