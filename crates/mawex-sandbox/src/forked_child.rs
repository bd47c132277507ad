//! The child side of the forked sandbox: read one attempt frame on stdin, set the limits it
//! carries, run the handler, write the report frame to stdout, exit. Spawned children and
//! the fork server's children both end up here.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use mawex_api::{Attempt, GroupName, TaskId};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::executor::Report;
use crate::in_process::{HandlerRegistry, InProcess};
use crate::input::TaskInput;
use crate::Sandbox;

/// Exit status of a child that could not even read its attempt.
const SETUP_FAILED: i32 = 70;

#[derive(Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) task: TaskId,
    pub(crate) attempt: u32,
    pub(crate) group: GroupName,
    pub(crate) handler: String,
    pub(crate) payload: Vec<u8>,
    /// Limits the child sets on itself before running the handler: a warm child was started
    /// before its attempt was known.
    pub(crate) memory_bytes: Option<u64>,
    pub(crate) cpu_seconds: Option<u64>,
    pub(crate) open_files: Option<u64>,
    pub(crate) env: BTreeMap<String, String>,
    /// The results of the tasks it runs after (see `TaskInput::inputs`).
    pub(crate) inputs: Vec<mawex_api::TaskResult>,
}

pub(crate) fn frame<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| e.to_string())?;
    let len = u32::try_from(body.len()).map_err(|_| "frame too large".to_owned())?;
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

pub(crate) fn unframe<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
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

/// Runs the attempt on stdin and exits: a spawned child, or a fork server's.
pub(crate) fn run_child(registry: &HandlerRegistry) -> ! {
    let code = match child_main(registry) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mawex forked child: {e}");
            SETUP_FAILED
        }
    };
    std::process::exit(code);
}

/// The child of a binary whose hook ran too late (inside a runtime, with other threads):
/// the attempt fails at once, for good, with `problem` as its error, instead of hanging or
/// panicking where nobody sees why.
pub(crate) fn refuse(problem: &str) -> ! {
    let mut input = Vec::new();
    // The attempt is read only so the pod's write completes; it is not run.
    let _ = std::io::stdin().read_to_end(&mut input);
    let report = Report::Failed(crate::error::HandlerError::permanent(problem));
    let written = frame(&report).and_then(|bytes| {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&bytes)
            .and_then(|()| stdout.flush())
            .map_err(|e| e.to_string())
    });
    if let Err(e) = written {
        eprintln!("mawex forked child: {problem} (and the report failed: {e})");
        std::process::exit(SETUP_FAILED);
    }
    std::process::exit(0);
}

fn child_main(registry: &HandlerRegistry) -> Result<(), String> {
    // Ready before the attempt arrives: a warm child waits here.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("reading the attempt: {e}"))?;
    let request: Request = unframe(&input)?;
    set_own_limits(&request)?;
    let sandbox = InProcess::new(registry.clone());
    let mut task = TaskInput::for_test(&request.handler, request.payload);
    task.task = request.task;
    task.attempt = Attempt(request.attempt);
    task.group = request.group;
    task.env = request.env;
    task.inputs = request.inputs;
    // Logged lines go to stderr, which the parent streams as the attempt's output.
    task.log = crate::input::LogHandle::new(|_, line| eprintln!("{line}"));
    // Limits are enforced by the parent around this whole process.
    let result = runtime.block_on(sandbox.run(task, CancellationToken::new()));
    let response = Report::of(result);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&frame(&response)?)
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("writing the result: {e}"))
}

fn set_own_limits(request: &Request) -> Result<(), String> {
    use nix::sys::resource::{setrlimit, Resource};
    for (resource, value) in [
        (Resource::RLIMIT_AS, request.memory_bytes),
        (Resource::RLIMIT_CPU, request.cpu_seconds),
        (Resource::RLIMIT_NOFILE, request.open_files),
    ] {
        if let Some(value) = value {
            setrlimit(resource, value, value).map_err(|e| format!("setting {resource:?}: {e}"))?;
        }
    }
    Ok(())
}
