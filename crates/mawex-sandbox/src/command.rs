//! The command sandbox ("shell module"): runs a configured program per handler name, with an
//! explicit environment, the payload on stdin, and the output from stdout.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::error::SandboxError;
use crate::input::{TaskInput, INPUTS_DIR_ENV};
use crate::process;
use crate::Sandbox;

/// How to run one handler as a command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory (default: the pod's).
    pub cwd: Option<PathBuf>,
    /// The environment, exactly: nothing of the pod's own is passed unless listed here or in
    /// `inherit`.
    pub env: BTreeMap<String, String>,
    /// Names of the pod's environment variables to pass through.
    pub inherit: Vec<String>,
    /// Names of attempt variables (besides `MAWEX_*`, always passed) the command may get
    /// from the attempt; every other one is dropped. Default: none.
    pub from_attempt: Vec<String>,
    /// Limits beyond the task's timeout and memory: CPU seconds and open files.
    pub cpu_seconds: Option<u64>,
    /// Open-file limit.
    pub open_files: Option<u64>,
}

impl CommandSpec {
    /// Runs `argv` with an empty environment.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        CommandSpec {
            argv: argv.into_iter().map(Into::into).collect(),
            cwd: None,
            env: BTreeMap::new(),
            inherit: Vec::new(),
            from_attempt: Vec::new(),
            cpu_seconds: None,
            open_files: None,
        }
    }

    /// The same command with `key=value` in its environment.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// The same command, passed the pod's `name` variable too.
    pub fn inherit(mut self, name: impl Into<String>) -> Self {
        self.inherit.push(name.into());
        self
    }

    /// The same command, passed the attempt's `name` variable too if it has one (attempt
    /// variables other than `MAWEX_*` are dropped otherwise).
    pub fn from_attempt(mut self, name: impl Into<String>) -> Self {
        self.from_attempt.push(name.into());
        self
    }

    /// The same command run in `dir`.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }
}

/// Runs handlers as child processes: exit status 0 is success with stdout as the output; any
/// other ending is a failure carrying the end of stderr. Each run has its own process group,
/// which is killed (SIGTERM, then SIGKILL after the grace period) on timeout or cancel, and
/// swept when the command ends: no process it started outlives it.
#[derive(Debug, Clone)]
pub struct CommandSandbox {
    commands: HashMap<String, CommandSpec>,
    /// Largest stdout accepted as output; beyond it the attempt fails (never buffered whole).
    pub max_output_bytes: usize,
    /// How much of stderr is kept for error reports.
    pub stderr_tail_bytes: usize,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
}

impl Default for CommandSandbox {
    fn default() -> Self {
        CommandSandbox {
            commands: HashMap::new(),
            max_output_bytes: 4 * 1024 * 1024,
            stderr_tail_bytes: 64 * 1024,
            grace: Duration::from_secs(5),
        }
    }
}

impl CommandSandbox {
    /// A sandbox with no commands.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `spec` for tasks naming handler `name`.
    ///
    /// # Errors
    /// [`SandboxError::DuplicateHandler`] if the name is taken, [`SandboxError::Spawn`] for an
    /// empty argv.
    pub fn command(&mut self, name: &str, spec: CommandSpec) -> Result<&mut Self, SandboxError> {
        if spec.argv.is_empty() {
            return Err(SandboxError::Spawn(format!(
                "command {name:?} has an empty argv"
            )));
        }
        if self.commands.contains_key(name) {
            return Err(SandboxError::DuplicateHandler(name.to_owned()));
        }
        self.commands.insert(name.to_owned(), spec);
        Ok(self)
    }
}

#[async_trait]
impl Sandbox for CommandSandbox {
    fn name(&self) -> &'static str {
        "command"
    }

    async fn run(
        &self,
        input: TaskInput,
        cancel: CancellationToken,
    ) -> Result<Bytes, SandboxError> {
        let spec = self
            .commands
            .get(&input.handler)
            .ok_or_else(|| SandboxError::UnknownHandler(input.handler.clone()))?;
        let (program, args) = spec
            .argv
            .split_first()
            .ok_or_else(|| SandboxError::Spawn("empty argv".into()))?;
        let mut command = process::isolated_command(program, args, &spec.env, &spec.inherit);
        command.envs(input.child_env(&spec.from_attempt));
        if let Some(dir) = &spec.cwd {
            command.current_dir(dir);
        }
        // Its dependencies' results as files, for as long as it runs.
        let inputs = crate::input::inputs_dir(&input.inputs)?;
        if let Some(dir) = &inputs {
            command.env(INPUTS_DIR_ENV, dir.path());
        }
        let limits = process::limits_for(&input.limits, spec.cpu_seconds, spec.open_files);
        let budgets = process::Budgets::for_output(
            self.max_output_bytes,
            self.stderr_tail_bytes,
            self.grace,
            input.log,
        );
        process::run_for_output(command, input.payload, limits, budgets, &cancel).await
    }
}
