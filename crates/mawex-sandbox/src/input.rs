use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use mawex_api::pod::AttemptRef;
use mawex_api::{Attempt, GroupName, Limits, OutputStream, TaskId, TaskResult, TaskSpec};

use crate::error::SandboxError;

/// Where an attempt's live output goes: each line a child process prints (stdout and stderr
/// of command and ssh sandboxes, stderr of forked ones), and what an in-process handler
/// logs with [`LogHandle::line`]. The pod streams the lines to the master, which keeps the
/// last of them for `mawex logs` and the dashboard. Writing never waits: past the pod's
/// bound the oldest lines are dropped.
#[derive(Clone, Default)]
pub struct LogHandle(Option<Arc<WriteLine>>);

/// What a [`LogHandle`] gives each line to.
type WriteLine = dyn Fn(OutputStream, &str) + Send + Sync;

impl LogHandle {
    /// A handle that gives each line to `write`.
    pub fn new(write: impl Fn(OutputStream, &str) + Send + Sync + 'static) -> Self {
        LogHandle(Some(Arc::new(write)))
    }

    /// Logs `text`, a line per line of it.
    pub fn line(&self, text: &str) {
        self.write(OutputStream::Log, text);
    }

    /// Writes `text` as lines of `stream` (an empty text as one empty line).
    pub fn write(&self, stream: OutputStream, text: &str) {
        if let Some(write) = &self.0 {
            if text.is_empty() {
                write(stream, "");
            }
            for line in text.lines() {
                write(stream, line);
            }
        }
    }

    /// True when lines go somewhere.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_on() {
            "LogHandle(on)"
        } else {
            "LogHandle(off)"
        })
    }
}

/// Handles do not make inputs differ: two inputs that are equal but for where their lines
/// go are the same attempt.
impl PartialEq for LogHandle {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for LogHandle {}

/// Everything a sandbox needs to run one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskInput {
    /// The task.
    pub task: TaskId,
    /// Which attempt this is (1 for the first).
    pub attempt: Attempt,
    /// The task's group.
    pub group: GroupName,
    /// The handler to run.
    pub handler: String,
    /// The task's payload.
    pub payload: Bytes,
    /// Limits of this attempt.
    pub limits: Limits,
    /// Environment of this attempt from the master (a broadcast's source, say). Child
    /// sandboxes add its `MAWEX_*` variables to the process environment, and no others unless
    /// the operator allowed them (see [`TaskInput::child_env`]).
    pub env: BTreeMap<String, String>,
    /// The results of the tasks it runs after that pass their output, in the order its spec
    /// names them (a workflow's fan-in gets all of them, on every attempt).
    pub inputs: Vec<TaskResult>,
    /// Where its live output goes (nowhere unless the pod streams it).
    pub log: LogHandle,
}

/// The variable that names the directory of a command's inputs (the results of the tasks it
/// runs after): a file `inputs` lists their task ids in order, one a line; each has a file
/// named by its id holding its output, `ID.error` holding `kind: message` if it failed, or
/// `ID.cancelled` (empty) if it was cancelled. Removed when the attempt ends.
pub const INPUTS_DIR_ENV: &str = "MAWEX_INPUTS_DIR";

/// A directory holding `inputs` as [`INPUTS_DIR_ENV`] describes; `None` for no inputs.
pub(crate) fn inputs_dir(inputs: &[TaskResult]) -> Result<Option<tempfile::TempDir>, SandboxError> {
    if inputs.is_empty() {
        return Ok(None);
    }
    let failed = |e: std::io::Error| SandboxError::Spawn(format!("writing the inputs: {e}"));
    let dir = tempfile::Builder::new()
        .prefix("mawex-inputs-")
        .tempdir()
        .map_err(failed)?;
    let mut list = String::new();
    for input in inputs {
        let id = input.id.to_string();
        let (name, bytes): (String, &[u8]) = match &input.outcome {
            mawex_api::Outcome::Succeeded(output) => (id.clone(), output),
            mawex_api::Outcome::Failed(error) => {
                let text = format!("{}: {}", error.kind.name(), error.message);
                std::fs::write(dir.path().join(format!("{id}.error")), text).map_err(failed)?;
                list.push_str(&id);
                list.push('\n');
                continue;
            }
            _ => (format!("{id}.cancelled"), &[]),
        };
        std::fs::write(dir.path().join(name), bytes).map_err(failed)?;
        list.push_str(&id);
        list.push('\n');
    }
    std::fs::write(dir.path().join("inputs"), list).map_err(failed)?;
    Ok(Some(dir))
}

/// Prefix of the attempt variables a child process always gets.
pub const ATTEMPT_ENV_PREFIX: &str = "MAWEX_";

impl TaskInput {
    /// The attempt's variables a child process may get: those named `MAWEX_*`, and those in
    /// `allowed` (listed by the operator). Anything else that arrived with the attempt
    /// (`LD_PRELOAD`, `PATH`…) is dropped, so whoever can shape an attempt cannot change what
    /// the pod's programs load or run.
    pub fn child_env<'a>(
        &'a self,
        allowed: &'a [String],
    ) -> impl Iterator<Item = (&'a String, &'a String)> + 'a {
        self.env.iter().filter(move |(name, _)| {
            let ok = name.starts_with(ATTEMPT_ENV_PREFIX) || allowed.contains(name);
            if !ok {
                tracing::warn!(task = %self.task, variable = %name, "attempt variable dropped");
            }
            ok
        })
    }

    /// The input for `attempt` of `spec`.
    pub fn new(attempt: AttemptRef, spec: TaskSpec) -> Self {
        TaskInput {
            task: attempt.task,
            attempt: attempt.attempt,
            group: spec.group,
            handler: spec.handler,
            payload: spec.payload,
            limits: spec.limits,
            env: BTreeMap::new(),
            inputs: Vec::new(),
            log: LogHandle::default(),
        }
    }

    /// The output of dependency `task`, if it is among the inputs and succeeded.
    pub fn dependency_output(&self, task: &TaskId) -> Option<&Bytes> {
        self.inputs
            .iter()
            .find(|r| r.id == *task)
            .and_then(|r| match &r.outcome {
                mawex_api::Outcome::Succeeded(output) => Some(output),
                _ => None,
            })
    }

    /// An input for trying a handler outside a master: group `test`, attempt 1.
    pub fn for_test(handler: &str, payload: impl Into<Bytes>) -> Self {
        let group = match GroupName::new("test") {
            Ok(group) => group,
            // "test" is a valid name by the rules in mawex-api; a change there is a bug here.
            Err(e) => unreachable!("{e}"),
        };
        TaskInput {
            task: TaskId::new(),
            attempt: Attempt(1),
            group,
            handler: handler.to_owned(),
            payload: payload.into(),
            limits: Limits::default(),
            env: BTreeMap::new(),
            inputs: Vec::new(),
            log: LogHandle::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mawex_api::{Outcome, TaskError};

    fn result(task: TaskId, outcome: Outcome) -> TaskResult {
        let group = GroupName::new("g").expect("a name");
        TaskResult::new(task, group, Attempt(1), outcome, mawex_api::Timestamp(1), 1)
    }

    #[test]
    fn a_dependency_output_is_found_by_its_task_and_a_failure_has_none() {
        let (ok, failed) = (TaskId::new(), TaskId::new());
        let mut input = TaskInput::for_test("h", "");
        input.inputs = vec![
            result(ok, Outcome::Succeeded(Bytes::from_static(b"out"))),
            result(
                failed,
                Outcome::Failed(TaskError::new(mawex_api::ErrorKind::Handler, "no")),
            ),
        ];
        assert_eq!(
            input.dependency_output(&ok),
            Some(&Bytes::from_static(b"out"))
        );
        assert_eq!(input.dependency_output(&failed), None);
        assert_eq!(input.dependency_output(&TaskId::new()), None);
    }

    #[test]
    fn an_inputs_directory_holds_each_result_and_their_order() {
        let (ok, failed) = (TaskId::new(), TaskId::new());
        let dir = inputs_dir(&[
            result(ok, Outcome::Succeeded(Bytes::from_static(b"out"))),
            result(
                failed,
                Outcome::Failed(TaskError::new(mawex_api::ErrorKind::Handler, "no")),
            ),
        ])
        .expect("written")
        .expect("a directory");
        let read = |name: String| std::fs::read_to_string(dir.path().join(name)).expect("a file");
        assert_eq!(read("inputs".into()), format!("{ok}\n{failed}\n"));
        assert_eq!(read(ok.to_string()), "out");
        assert_eq!(read(format!("{failed}.error")), "handler: no");
        assert!(inputs_dir(&[]).expect("nothing to write").is_none());
    }
}
