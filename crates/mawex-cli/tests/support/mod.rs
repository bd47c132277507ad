//! Processes of the `mawex` binary for the tests that start them beside other servers
//! (network namespaces, a fake Kubernetes): started with their stdout lines on a channel,
//! or run to their end within a deadline, and stopped however the test ends.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a command may run, or a line take to come.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// `mawex`, with no `MAWEX_*` variable of the machine's.
pub fn mawex() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mawex"));
    for (key, _) in std::env::vars() {
        if key.starts_with("MAWEX_") {
            command.env_remove(key);
        }
    }
    command.stdin(Stdio::null());
    command
}

fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// A child stopped with SIGTERM (then SIGKILL after 10 s) when the test ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        signal(&self.0, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..500 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command` (stderr inherited); its stdout lines come on the receiver.
pub fn start(mut command: Command) -> (Running, mpsc::Receiver<String>) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the command starts");
    let stdout = BufReader::new(child.stdout.take().expect("its stdout"));
    let (lines, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    (Running(child), receiver)
}

/// Waits for the line of `lines` that contains `needle`; panics after [`DEADLINE`].
pub fn line_with(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no line with {needle:?}: {e}"));
        if line.contains(needle) {
            return line;
        }
    }
}

/// Runs `command` to its end; killed and failed after [`DEADLINE`].
pub fn run(mut command: Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let pid = child.id();
    let (done, ended) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done.send(());
        output
    });
    if ended.recv_timeout(DEADLINE).is_err() {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        panic!("{command:?} did not end in time");
    }
    waiter
        .join()
        .expect("the waiter")
        .expect("the command's output")
}

/// A free port on 127.0.0.1 (bound to learn it, let go for the process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
