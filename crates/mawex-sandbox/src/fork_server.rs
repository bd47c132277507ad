//! The fork server of the forked sandbox: one helper process per sandbox, started from the
//! application's binary, that forks a fresh child per attempt.
//!
//! Exec'ing a large binary costs milliseconds (loading, relocating, page faults); forking a
//! small single-threaded process costs a fraction of one. The helper is the current binary
//! re-executed with [`SERVER_ENV`]: `run_if_child` turns it into a loop that, for each
//! request, receives the attempt's stdin, stdout and stderr over its Unix socket
//! (`SCM_RIGHTS`), forks, and answers with the child's pid. The child makes itself a process
//! group leader, takes the three descriptors as its stdio and runs exactly as a spawned
//! forked child would. The helper reaps its children (it watches `SIGCHLD` through a
//! `signalfd`) and relays each exit status to the pod.
//!
//! The helper never runs a runtime or a second thread, which is what makes `fork` sound
//! there. Forking from the pod itself would not be: it is multi-threaded.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, setpgid, ForkResult, Pid};
use tokio::io::Interest;
use tokio::sync::oneshot;

use crate::error::SandboxError;
use crate::in_process::HandlerRegistry;
use crate::process::{Exit, ExitInfo, Started};

/// Set in the fork server's environment; `run_if_child` looks for it.
pub const SERVER_ENV: &str = "MAWEX_FORK_SERVER";

/// Messages from the server: a kind byte, a pid, a value (all little-endian).
const MESSAGE_LEN: usize = 9;
const SPAWNED: u8 = b'P';
const EXITED: u8 = b'X';
const KILLED: u8 = b'S';
const FAILED: u8 = b'F';

fn message(kind: u8, pid: i32, value: i32) -> [u8; MESSAGE_LEN] {
    let mut m = [0u8; MESSAGE_LEN];
    m[0] = kind;
    m[1..5].copy_from_slice(&pid.to_le_bytes());
    m[5..9].copy_from_slice(&value.to_le_bytes());
    m
}

/// In the fork server (its environment says so), serves forks until the pod goes away and
/// exits. Elsewhere returns at once.
pub(crate) fn run_if_server(registry: &HandlerRegistry) {
    if std::env::var_os(SERVER_ENV).is_none() {
        return;
    }
    let code = match serve(registry) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mawex fork server: {e}");
            70
        }
    };
    std::process::exit(code);
}

fn serve(registry: &HandlerRegistry) -> Result<(), String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    // The control socket is our stdin.
    let control: OwnedFd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("control socket: {e}"))?;
    let control = StdUnixStream::from(control);
    let mut children = SigSet::empty();
    children.add(Signal::SIGCHLD);
    children
        .thread_block()
        .map_err(|e| format!("blocking SIGCHLD: {e}"))?;
    let exits = SignalFd::with_flags(&children, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {e}"))?;
    let send = |m: [u8; MESSAGE_LEN]| -> Result<(), String> {
        use std::io::Write;
        (&control)
            .write_all(&m)
            .map_err(|e| format!("answering the pod: {e}"))
    };
    loop {
        let (requests, exited) = {
            let mut fds = [
                PollFd::new(control.as_fd(), PollFlags::POLLIN),
                PollFd::new(exits.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("poll: {e}")),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if exited {
            while let Ok(Some(_)) = exits.read_signal() {}
            loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) => send(message(EXITED, pid.as_raw(), code))?,
                    Ok(WaitStatus::Signaled(pid, signal, _)) => {
                        send(message(KILLED, pid.as_raw(), signal as i32))?;
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        if requests {
            let Some(stdio) = receive_stdio(&control)? else {
                // The pod is gone; its children see their pipes close.
                return Ok(());
            };
            match fork_child(registry, &children, stdio) {
                Ok(pid) => send(message(SPAWNED, pid, 0))?,
                Err(errno) => send(message(FAILED, 0, errno))?,
            }
        }
    }
}

/// One request: a byte and three descriptors. `None` at the end of the stream.
fn receive_stdio(control: &StdUnixStream) -> Result<Option<[OwnedFd; 3]>, String> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 3]);
    let msg = recvmsg::<()>(
        control.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("receiving a request: {e}"))?;
    if msg.bytes == 0 {
        return Ok(None);
    }
    let mut received: Vec<OwnedFd> = Vec::new();
    for cmsg in msg.cmsgs().map_err(|e| format!("request: {e}"))? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the kernel just installed these descriptors in this process for us;
            // nothing else owns them.
            #[allow(unsafe_code)]
            received.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let stdio: [OwnedFd; 3] = received
        .try_into()
        .map_err(|v: Vec<OwnedFd>| format!("a request carried {} descriptors, not 3", v.len()))?;
    Ok(Some(stdio))
}

/// Forks the child of one attempt; returns its pid, or the errno of a failed fork.
fn fork_child(
    registry: &HandlerRegistry,
    blocked: &SigSet,
    stdio: [OwnedFd; 3],
) -> Result<i32, i32> {
    let server = nix::unistd::getpid();
    // SAFETY: this process is single-threaded (it runs no runtime and starts no thread), so
    // the child may go on to allocate, start a runtime and run the handler.
    #[allow(unsafe_code)]
    let forked = unsafe { nix::unistd::fork() };
    match forked {
        Ok(ForkResult::Parent { child }) => {
            // Also done in the child; whichever runs first, the group exists before the
            // pod hears of the pid and may signal it.
            let _ = setpgid(child, child);
            Ok(child.as_raw())
        }
        Ok(ForkResult::Child) => {
            // The server exits when the pod goes (its socket closes), even on kill -9; its
            // children go with it, so no attempt outlives its pod.
            #[cfg(target_os = "linux")]
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            if nix::unistd::getppid() != server {
                std::process::exit(70);
            }
            let _ = blocked.thread_unblock();
            let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
            let [stdin, stdout, stderr] = stdio;
            let wired = nix::unistd::dup2_stdin(&stdin)
                .and_then(|()| nix::unistd::dup2_stdout(&stdout))
                .and_then(|()| nix::unistd::dup2_stderr(&stderr));
            if wired.is_err() {
                std::process::exit(70);
            }
            drop((stdin, stdout, stderr));
            // A handler that re-executes this binary must not start another fork server.
            std::env::remove_var(SERVER_ENV);
            crate::forked_child::run_child(registry)
        }
        Err(errno) => Err(errno as i32),
    }
}

/// Requests sent, oldest first, each waiting for its child's pid (or why there is none).
type Spawning = Mutex<VecDeque<oneshot::Sender<Result<i32, String>>>>;

/// The pod's handle on its fork server.
pub(crate) struct ForkServer {
    control: Arc<tokio::net::UnixStream>,
    spawning: Arc<Spawning>,
    /// Children that run, waiting for their exit.
    running: Arc<Mutex<Exits>>,
    /// Sending a request and queueing its answer happen together.
    order: tokio::sync::Mutex<()>,
    alive: Arc<AtomicBool>,
    _process: tokio::process::Child,
}

impl std::fmt::Debug for ForkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkServer")
            .field("alive", &self.alive.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ForkServer {
    /// Starts the server: `command` (the current binary with the sandbox's environment),
    /// with [`SERVER_ENV`] set and a Unix socket as its stdin.
    pub(crate) fn start(mut command: tokio::process::Command) -> Result<Self, SandboxError> {
        let spawn_error = |e: std::io::Error| SandboxError::Spawn(format!("fork server: {e}"));
        let (ours, theirs) = StdUnixStream::pair().map_err(spawn_error)?;
        command
            .env(SERVER_ENV, "1")
            .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        let process = command.spawn().map_err(spawn_error)?;
        ours.set_nonblocking(true).map_err(spawn_error)?;
        let control = Arc::new(tokio::net::UnixStream::from_std(ours).map_err(spawn_error)?);
        let server = ForkServer {
            control: control.clone(),
            spawning: Arc::default(),
            running: Arc::default(),
            order: tokio::sync::Mutex::new(()),
            alive: Arc::new(AtomicBool::new(true)),
            _process: process,
        };
        let (spawning, running, alive) = (
            server.spawning.clone(),
            server.running.clone(),
            server.alive.clone(),
        );
        tokio::spawn(async move {
            read_answers(&control, &spawning, &running).await;
            alive.store(false, Ordering::Release);
            // Whoever still waits learns the server is gone.
            lock(&spawning).clear();
            lock(&running).waiting.clear();
        });
        Ok(server)
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self._process.id()
    }

    /// Forks a child for one attempt, with pipes for its stdio.
    pub(crate) async fn start_child(&self) -> Result<Started, SandboxError> {
        let error = |what: &str, e: nix::errno::Errno| {
            SandboxError::Spawn(format!("fork server: {what}: {e}"))
        };
        let flags = nix::fcntl::OFlag::O_CLOEXEC;
        let (stdin_r, stdin_w) = pipe2(flags).map_err(|e| error("pipe", e))?;
        let (stdout_r, stdout_w) = pipe2(flags).map_err(|e| error("pipe", e))?;
        let (stderr_r, stderr_w) = pipe2(flags).map_err(|e| error("pipe", e))?;
        let (tx, rx) = oneshot::channel();
        {
            let _order = self.order.lock().await;
            lock(&self.spawning).push_back(tx);
            let fds = [
                stdin_r.as_raw_fd(),
                stdout_w.as_raw_fd(),
                stderr_w.as_raw_fd(),
            ];
            let sent = loop {
                self.control
                    .writable()
                    .await
                    .map_err(|e| SandboxError::Spawn(format!("fork server: {e}")))?;
                let attempt = self.control.try_io(Interest::WRITABLE, || {
                    sendmsg::<()>(
                        self.control.as_raw_fd(),
                        &[IoSlice::new(b"f")],
                        &[ControlMessage::ScmRights(&fds)],
                        MsgFlags::empty(),
                        None,
                    )
                    .map_err(std::io::Error::from)
                });
                match attempt {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    other => break other,
                }
            };
            if let Err(e) = sent {
                lock(&self.spawning).pop_back();
                return Err(SandboxError::Spawn(format!("fork server: {e}")));
            }
        }
        // The child has its own copies now; ours must close so its pipes can end.
        drop((stdin_r, stdout_w, stderr_w));
        let pid = rx
            .await
            .map_err(|_| SandboxError::Spawn("the fork server went away".into()))?
            .map_err(SandboxError::Spawn)?;
        let (exit_tx, exit_rx) = oneshot::channel();
        // The exit may already have been relayed: it is parked under the pid until now.
        register_exit(&self.running, pid, exit_tx);
        let io = |e: std::io::Error| SandboxError::Spawn(format!("fork server pipe: {e}"));
        let stdin = tokio::net::unix::pipe::Sender::from_owned_fd(stdin_w).map_err(io)?;
        let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout_r).map_err(io)?;
        let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(stderr_r).map_err(io)?;
        Ok(Started {
            pgid: pid,
            stdin: Some(Box::pin(stdin) as Pin<Box<dyn tokio::io::AsyncWrite + Send>>),
            stdout: Some(Box::pin(stdout) as Pin<Box<dyn tokio::io::AsyncRead + Send>>),
            stderr: Some(Box::pin(stderr) as Pin<Box<dyn tokio::io::AsyncRead + Send>>),
            exit: Exit::Relayed(exit_rx),
        })
    }
}

/// Exit waiters by pid, and exits that came before their waiter (a child faster than the
/// pod task that started it).
#[derive(Default)]
struct Exits {
    waiting: HashMap<i32, oneshot::Sender<ExitInfo>>,
    early: HashMap<i32, ExitInfo>,
}

fn register_exit(running: &Mutex<Exits>, pid: i32, tx: oneshot::Sender<ExitInfo>) {
    let mut exits = lock(running);
    match exits.early.remove(&pid) {
        Some(info) => {
            let _ = tx.send(info);
        }
        None => {
            exits.waiting.insert(pid, tx);
        }
    }
}

fn relay_exit(running: &Mutex<Exits>, pid: i32, info: ExitInfo) {
    let mut exits = lock(running);
    match exits.waiting.remove(&pid) {
        Some(tx) => {
            let _ = tx.send(info);
        }
        None => {
            exits.early.insert(pid, info);
        }
    }
}

async fn read_answers(
    control: &tokio::net::UnixStream,
    spawning: &Spawning,
    running: &Mutex<Exits>,
) {
    let mut buf = Vec::with_capacity(MESSAGE_LEN * 16);
    let mut chunk = [0u8; 256];
    loop {
        if control.readable().await.is_err() {
            return;
        }
        match control.try_read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        while buf.len() >= MESSAGE_LEN {
            let m: Vec<u8> = buf.drain(..MESSAGE_LEN).collect();
            let pid = i32::from_le_bytes([m[1], m[2], m[3], m[4]]);
            let value = i32::from_le_bytes([m[5], m[6], m[7], m[8]]);
            match m[0] {
                SPAWNED | FAILED => {
                    let answer = if m[0] == SPAWNED {
                        Ok(pid)
                    } else {
                        Err(format!("fork failed: errno {value}"))
                    };
                    if let Some(tx) = lock(spawning).pop_front() {
                        let _ = tx.send(answer);
                    }
                }
                EXITED | KILLED => {
                    let info = if m[0] == EXITED {
                        ExitInfo {
                            code: Some(value),
                            signal: None,
                        }
                    } else {
                        ExitInfo {
                            code: None,
                            signal: Some(value),
                        }
                    };
                    relay_exit(running, pid, info);
                }
                _ => {}
            }
        }
    }
}
