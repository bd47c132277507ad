use std::collections::BTreeMap;

use bytes::Bytes;
use mawex_api::pod::AttemptRef;
use mawex_api::{Attempt, GroupName, Limits, TaskId, TaskResult, TaskSpec};

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
        }
    }
}
