//! The sandbox of a worker's handlers (`worker.handlers`): each a command run as a child
//! process of the worker, or, with `runs_on = "kubernetes"`, as a Kubernetes Job per attempt
//! (a binary built with the `kubernetes` feature). A worker with both runs each handler in
//! the sandbox that holds it.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use mawex::sandbox::{CommandSandbox, CommandSpec};
use mawex::{Bytes, Sandbox, SandboxError, TaskInput};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RunsOn};
use crate::CliError;

/// The sandbox of `config.worker.handlers`.
///
/// # Errors
/// A handler that cannot be registered, Kubernetes handlers in a binary built without them,
/// or no cluster configuration to reach.
pub(crate) async fn sandbox(config: &Config) -> Result<Arc<dyn Sandbox>, CliError> {
    let section = &config.worker;
    let mut local = CommandSandbox::new();
    let mut on_kubernetes = BTreeSet::new();
    for (name, handler) in &section.handlers {
        if handler.runs_on == RunsOn::Kubernetes {
            on_kubernetes.insert(name.clone());
            continue;
        }
        let mut spec = CommandSpec::new(handler.argv.iter().cloned());
        for (key, value) in &handler.env {
            spec = spec.env(key.clone(), value.clone());
        }
        for name in &handler.inherit {
            spec = spec.inherit(name.clone());
        }
        if let Some(dir) = &handler.cwd {
            spec = spec.cwd(dir.clone());
        }
        spec.cpu_seconds = handler.cpu_seconds;
        spec.open_files = handler.open_files;
        local
            .command(name, spec)
            .map_err(|e| CliError::Config(format!("worker.handlers.{name}: {e}")))?;
    }
    let local: Arc<dyn Sandbox> = Arc::new(local);
    if on_kubernetes.is_empty() {
        return Ok(local);
    }
    let jobs = kubernetes(config, &on_kubernetes).await?;
    Ok(Arc::new(ByHandler {
        local,
        jobs,
        on_jobs: on_kubernetes,
    }))
}

/// The Job sandbox of the handlers `names`.
#[cfg(feature = "kubernetes")]
async fn kubernetes(
    config: &Config,
    names: &BTreeSet<String>,
) -> Result<Arc<dyn Sandbox>, CliError> {
    use mawex::sandbox::kubernetes::{JobCommand, KubernetesConfig, KubernetesJobSandbox};

    let section = config.worker.kubernetes.as_ref().ok_or_else(|| {
        CliError::Config("worker.kubernetes: needed by the kubernetes handlers".into())
    })?;
    let mut settings = KubernetesConfig::new(section.namespace.clone(), section.image.clone());
    settings.image_pull_policy = section.image_pull_policy.clone();
    settings.service_account = section.service_account.clone();
    settings.env = section.env.clone();
    settings.requests.cpu = section.cpu_request.clone();
    settings.requests.memory = section.memory_request.clone();
    settings.limits.cpu = section.cpu_limit.clone();
    settings.limits.memory = section.memory_limit.clone();
    settings.ttl_after_finished = section.ttl_after_finished;
    let mut sandbox = KubernetesJobSandbox::from_environment(settings)
        .await
        .map_err(|e| CliError::Serve(format!("worker.kubernetes: {e}")))?;
    for name in names {
        let Some(handler) = config.worker.handlers.get(name) else {
            continue;
        };
        let mut command = JobCommand::new(handler.argv.iter().cloned());
        if let Some(image) = &handler.image {
            command = command.image(image.clone());
        }
        for (key, value) in &handler.env {
            command = command.env(key.clone(), value.clone());
        }
        sandbox
            .command(name, command)
            .map_err(|e| CliError::Config(format!("worker.handlers.{name}: {e}")))?;
    }
    Ok(Arc::new(sandbox))
}

/// Without the `kubernetes` feature: refused, naming the handler.
#[cfg(not(feature = "kubernetes"))]
async fn kubernetes(
    _config: &Config,
    names: &BTreeSet<String>,
) -> Result<Arc<dyn Sandbox>, CliError> {
    let name = names.iter().next().cloned().unwrap_or_default();
    Err(CliError::Config(format!(
        "worker.handlers.{name}.runs_on: this mawex is built without Kubernetes; \
         install it with `cargo install --path crates/mawex-cli --features kubernetes`"
    )))
}

/// Runs the handlers `on_jobs` in `jobs`, the others in `local`.
struct ByHandler {
    local: Arc<dyn Sandbox>,
    jobs: Arc<dyn Sandbox>,
    on_jobs: BTreeSet<String>,
}

#[async_trait]
impl Sandbox for ByHandler {
    fn name(&self) -> &'static str {
        "worker handlers"
    }

    async fn run(
        &self,
        input: TaskInput,
        cancel: CancellationToken,
    ) -> Result<Bytes, SandboxError> {
        if self.on_jobs.contains(&input.handler) {
            self.jobs.run(input, cancel).await
        } else {
            self.local.run(input, cancel).await
        }
    }
}
