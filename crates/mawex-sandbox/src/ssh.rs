//! The ssh sandbox: each attempt is one step run with the system `ssh` client on a plain
//! host (grifork's standalone mode), e.g. `ssh parent rsync -a dir child:dir`.
//!
//! A handler is an [`SshStep`]: a command template run on the attempt's **source** host (a
//! broadcast target pulling from its parent) or on its **target** host. Placeholders
//! `{source}`, `{target}`, `{app}` and `{version}` are filled from the attempt's environment
//! (`MAWEX_SOURCE_HOST`, `MAWEX_TARGET_HOST`, `MAWEX_BROADCAST_APP`,
//! `MAWEX_BROADCAST_VERSION`), whose values the master has validated (letters, digits and
//! `- _ . : /` only, so they are safe inside a shell command). A step whose source is the
//! origin runs locally with `sh -c`, `{source}` then being the sandbox's `origin_name`.
//!
//! `ssh` always runs with `BatchMode=yes` (never a prompt) plus the configured options; the
//! remote command's exit status is the attempt's (255 is ssh's own failure). Timeout,
//! cancellation, process group and output capture are those of the command sandbox.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::error::SandboxError;
use crate::input::TaskInput;
use crate::process;
use crate::Sandbox;

/// `MAWEX_SOURCE_HOST` when the source is the origin.
const ORIGIN: &str = "@origin";

/// Where a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepHost {
    /// On the source host (the origin: locally).
    Source,
    /// On the target host.
    Target,
}

/// One handler: a command template and the host it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SshStep {
    /// Where it runs.
    pub host: StepHost,
    /// The remote command (a shell command line) with `{source}`, `{target}`, `{app}` and
    /// `{version}` placeholders.
    pub command: String,
}

impl SshStep {
    /// Runs `command` on the source host: a target pulls from its source.
    pub fn on_source(command: impl Into<String>) -> Self {
        SshStep {
            host: StepHost::Source,
            command: command.into(),
        }
    }

    /// Runs `command` on the target host.
    pub fn on_target(command: impl Into<String>) -> Self {
        SshStep {
            host: StepHost::Target,
            command: command.into(),
        }
    }
}

/// Runs steps over ssh (see the module docs).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SshSandbox {
    steps: HashMap<String, SshStep>,
    /// The ssh client.
    pub program: PathBuf,
    /// Options before the host (`-F config`, `-o Port=2222`, `-i key`, ...).
    pub options: Vec<String>,
    /// `{source}` when the origin is the source (the step then runs locally).
    pub origin_name: String,
    /// Timeout of a step whose task sets none.
    pub step_timeout: Duration,
    /// Variables of the pod's environment passed to `ssh` and local steps.
    pub inherit: Vec<String>,
    /// Largest output accepted.
    pub max_output_bytes: usize,
    /// How much of stderr is kept for error reports.
    pub stderr_tail_bytes: usize,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
}

impl Default for SshSandbox {
    fn default() -> Self {
        SshSandbox {
            steps: HashMap::new(),
            program: PathBuf::from("ssh"),
            options: Vec::new(),
            origin_name: "origin".to_owned(),
            step_timeout: Duration::from_secs(600),
            inherit: ["PATH", "HOME", "USER", "SSH_AUTH_SOCK"]
                .map(String::from)
                .to_vec(),
            max_output_bytes: 1024 * 1024,
            stderr_tail_bytes: 64 * 1024,
            grace: Duration::from_secs(5),
        }
    }
}

impl SshSandbox {
    /// A sandbox with no steps, running `ssh` from the `PATH`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same sandbox passing `options` to every `ssh` call.
    pub fn with_options<I, S>(mut self, options: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.options = options.into_iter().map(Into::into).collect();
        self
    }

    /// Runs `step` for tasks naming handler `name`.
    ///
    /// # Errors
    /// [`SandboxError::DuplicateHandler`] if the name is taken, [`SandboxError::Spawn`] for an
    /// empty command.
    pub fn step(&mut self, name: &str, step: SshStep) -> Result<&mut Self, SandboxError> {
        if step.command.trim().is_empty() {
            return Err(SandboxError::Spawn(format!(
                "ssh step {name:?} has no command"
            )));
        }
        if self.steps.contains_key(name) {
            return Err(SandboxError::DuplicateHandler(name.to_owned()));
        }
        self.steps.insert(name.to_owned(), step);
        Ok(self)
    }

    /// The program and arguments that run `step` for `input`.
    fn argv(&self, step: &SshStep, input: &TaskInput) -> Result<Vec<String>, SandboxError> {
        let var = |name: &str| -> Result<String, SandboxError> {
            let value = input.env.get(name).cloned().ok_or_else(|| {
                SandboxError::Spawn(format!(
                    "{name} is not set: ssh steps run as targets of a host broadcast"
                ))
            })?;
            // Defence in depth: the master validated these, but they end up in a shell.
            match value.chars().find(|c| {
                !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | '@' | '+'))
            }) {
                Some(c) => Err(SandboxError::Spawn(format!("{name} contains {c:?}"))),
                None => Ok(value),
            }
        };
        let source = var("MAWEX_SOURCE_HOST")?;
        let target = var("MAWEX_TARGET_HOST")?;
        let local = step.host == StepHost::Source && source == ORIGIN;
        let source_name = if source == ORIGIN {
            self.origin_name.clone()
        } else {
            source.clone()
        };
        let optional = |name: &str| var(name).unwrap_or_default();
        let command = step
            .command
            .replace("{source}", &source_name)
            .replace("{target}", &target)
            .replace("{app}", &optional("MAWEX_BROADCAST_APP"))
            .replace("{version}", &optional("MAWEX_BROADCAST_VERSION"));
        if local {
            return Ok(vec!["sh".into(), "-c".into(), command]);
        }
        let host = match step.host {
            StepHost::Source => source,
            StepHost::Target => target,
        };
        // A "host" such as `-F/tmp/x` would be an option to ssh (a config whose ProxyCommand
        // runs here). The master refuses such names; refuse them here too, and end ssh's
        // options before the host, so that nothing after it is read as one either.
        if host.starts_with('-') {
            return Err(SandboxError::Spawn(format!(
                "host {host:?} starts with '-': refused, ssh would read it as an option"
            )));
        }
        let mut argv = vec![self.program.to_string_lossy().into_owned()];
        argv.extend(["-o".to_owned(), "BatchMode=yes".to_owned()]);
        argv.extend(self.options.iter().cloned());
        argv.extend(["--".to_owned(), host, command]);
        Ok(argv)
    }
}

#[async_trait]
impl Sandbox for SshSandbox {
    fn name(&self) -> &'static str {
        "ssh"
    }

    async fn run(
        &self,
        input: TaskInput,
        cancel: CancellationToken,
    ) -> Result<Bytes, SandboxError> {
        let step = self
            .steps
            .get(&input.handler)
            .ok_or_else(|| SandboxError::UnknownHandler(input.handler.clone()))?;
        let argv = self.argv(step, &input)?;
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| SandboxError::Spawn("empty argv".into()))?;
        let command = process::isolated_command(program, args, &BTreeMap::new(), &self.inherit);
        let mut limits = process::limits_for(&input.limits, None, None);
        limits.timeout = Some(limits.timeout.unwrap_or(self.step_timeout));
        let budgets = process::Budgets::for_output(
            self.max_output_bytes,
            self.stderr_tail_bytes,
            self.grace,
            input.log,
        );
        process::run_for_output(command, input.payload, limits, budgets, &cancel).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn input(source: &str, target: &str) -> TaskInput {
        let mut input = TaskInput::for_test("sync", "");
        input.env = BTreeMap::from([
            ("MAWEX_SOURCE_HOST".to_owned(), source.to_owned()),
            ("MAWEX_TARGET_HOST".to_owned(), target.to_owned()),
            ("MAWEX_BROADCAST_VERSION".to_owned(), "v2".to_owned()),
        ]);
        input
    }

    #[test]
    fn steps_run_on_the_right_host() {
        let ssh = SshSandbox::new().with_options(["-F", "/etc/cfg"]);
        let pull = SshStep::on_source("rsync -a /srv/{version}/ {target}:/srv/{version}/");
        assert_eq!(
            ssh.argv(&pull, &input("h1", "h4")).unwrap(),
            [
                "ssh",
                "-o",
                "BatchMode=yes",
                "-F",
                "/etc/cfg",
                "--",
                "h1",
                "rsync -a /srv/v2/ h4:/srv/v2/"
            ]
        );
        assert_eq!(
            ssh.argv(&pull, &input("@origin", "h1")).unwrap(),
            ["sh", "-c", "rsync -a /srv/v2/ h1:/srv/v2/"],
            "from the origin: locally"
        );
        let restart = SshStep::on_target("systemctl restart app # {source}");
        assert_eq!(
            ssh.argv(&restart, &input("@origin", "h1")).unwrap()[5..],
            ["--", "h1", "systemctl restart app # origin"]
        );
        assert!(ssh.argv(&pull, &input("h1", "h4;rm -rf /")).is_err());
        assert!(ssh.argv(&restart, &input("@origin", "-F/tmp/x")).is_err());
        assert!(ssh.argv(&pull, &input("-oProxyCommand", "h1")).is_err());
        assert!(ssh.argv(&pull, &TaskInput::for_test("sync", "")).is_err());
    }
}
