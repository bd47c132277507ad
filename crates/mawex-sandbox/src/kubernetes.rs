//! The Kubernetes Job sandbox (feature `kubernetes`): one Job per attempt.
//!
//! Each attempt becomes a Job named after the task and the attempt
//! (`mawex-<task id, 32 hex>-<attempt>`: DNS-1123, at most 49 characters, unique per attempt),
//! labelled with the task, group and attempt, with `backoffLimit: 0` (mawex does the retries),
//! `activeDeadlineSeconds` from the task's timeout and `ttlSecondsAfterFinished` as a safety
//! net. The container's environment is exactly the attempt's own variables
//! (`MAWEX_TASK_ID`, `MAWEX_ATTEMPT`, `MAWEX_GROUP`, `MAWEX_HANDLER`, `MAWEX_PAYLOAD_FILE`)
//! plus what the configuration lists: nothing of the pod's own environment.
//!
//! The payload is not in the Job: anyone who can read Jobs in the namespace could read it
//! there. It goes into a Secret of the same name, created right after the Job and owned by
//! it (so the cluster deletes it with the Job), mounted read-only in the container at
//! `/var/run/mawex/payload` (`MAWEX_PAYLOAD_FILE`). The pod waits for the Secret before it
//! starts. The service account of the sandbox needs to create Secrets as well as Jobs.
//!
//! A handler runs either as a **command** in an image of its own, or in **executor mode**:
//! the application's own image, whose `main` calls [`crate::run_if_child`] first. The result
//! is the container's termination message, or else the last line of its log (read with a
//! byte limit, never whole). Completion comes from a watch on the Job. The Job is deleted
//! (background propagation, so its pod goes too) when the attempt succeeds, fails, times out
//! or is cancelled, and when the future running it is dropped (pod shutdown).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerStateTerminated, EnvVar, KeyToPath, Pod, PodSpec, PodTemplateSpec,
    ResourceRequirements, Secret, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams, WatchEvent, WatchParams};
use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::error::SandboxError;
use crate::executor::{self, Report};
use crate::input::TaskInput;
use crate::Sandbox;

/// The label every Job and pod of this sandbox carries (`app.kubernetes.io/managed-by`).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The task's id.
pub const TASK_LABEL: &str = "mawex.io/task";
/// The task's group (made label-safe; the exact name is in the annotation of the same key).
pub const GROUP_LABEL: &str = "mawex.io/group";
/// The attempt number.
pub const ATTEMPT_LABEL: &str = "mawex.io/attempt";
/// The Job's name, on its pods: how the sandbox finds them.
pub const JOB_LABEL: &str = "mawex.io/job";
/// The name of the container that runs the attempt.
pub const CONTAINER: &str = "task";
/// Where the attempt's payload is mounted in the container (from its Secret).
pub const PAYLOAD_DIR: &str = "/var/run/mawex";
/// The key of the payload in the attempt's Secret, and its file name in [`PAYLOAD_DIR`].
pub const PAYLOAD_KEY: &str = "payload";
const PAYLOAD_VOLUME: &str = "mawex-payload";

/// CPU and memory, in Kubernetes quantities (`"500m"`, `"256Mi"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Resources {
    /// CPU.
    pub cpu: Option<String>,
    /// Memory.
    pub memory: Option<String>,
}

impl Resources {
    /// `cpu` and `memory`.
    pub fn new(cpu: impl Into<String>, memory: impl Into<String>) -> Self {
        Resources {
            cpu: Some(cpu.into()),
            memory: Some(memory.into()),
        }
    }

    fn to_map(&self) -> Option<BTreeMap<String, Quantity>> {
        let map: BTreeMap<String, Quantity> = [("cpu", &self.cpu), ("memory", &self.memory)]
            .into_iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.to_owned(), Quantity(v))))
            .collect();
        (!map.is_empty()).then_some(map)
    }
}

/// Settings shared by every Job of the sandbox.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KubernetesConfig {
    /// Namespace of the Jobs.
    pub namespace: String,
    /// The image for executor mode and for commands that name none: the application's own.
    pub image: String,
    /// `imagePullPolicy` (`None`: the cluster's default).
    pub image_pull_policy: Option<String>,
    /// The service account Jobs run as (`None`: the namespace's default).
    pub service_account: Option<String>,
    /// Command of the container in executor mode (empty: the image's entrypoint).
    pub executor_command: Vec<String>,
    /// Environment of every Job, exactly; nothing of the pod's own is passed.
    pub env: BTreeMap<String, String>,
    /// Resource requests of every Job.
    pub requests: Resources,
    /// Resource limits of every Job; a task's memory limit overrides `memory`.
    pub limits: Resources,
    /// Finished Jobs left behind (should deletion fail) are removed by the cluster after this.
    pub ttl_after_finished: Duration,
    /// Largest payload accepted (it travels in a Secret, which Kubernetes caps at 1 MiB).
    pub max_payload_bytes: usize,
    /// Largest output accepted.
    pub max_output_bytes: usize,
    /// How much of the log is read for error reports.
    pub log_tail_bytes: usize,
    /// How long one watch request may stay open before it is renewed.
    pub watch_timeout: Duration,
}

impl KubernetesConfig {
    /// Jobs in `namespace` running `image`, with the defaults for everything else.
    pub fn new(namespace: impl Into<String>, image: impl Into<String>) -> Self {
        KubernetesConfig {
            namespace: namespace.into(),
            image: image.into(),
            image_pull_policy: None,
            service_account: None,
            executor_command: Vec::new(),
            env: BTreeMap::new(),
            requests: Resources::default(),
            limits: Resources::default(),
            ttl_after_finished: Duration::from_secs(600),
            max_payload_bytes: 256 * 1024,
            max_output_bytes: 1024 * 1024,
            log_tail_bytes: 64 * 1024,
            watch_timeout: Duration::from_secs(290),
        }
    }
}

/// How to run one handler as a Job's command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobCommand {
    /// Program and arguments (the container's `command`).
    pub argv: Vec<String>,
    /// Image (`None`: the sandbox's).
    pub image: Option<String>,
    /// Environment added to the sandbox's.
    pub env: BTreeMap<String, String>,
}

impl JobCommand {
    /// Runs `argv` in the sandbox's image.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        JobCommand {
            argv: argv.into_iter().map(Into::into).collect(),
            image: None,
            env: BTreeMap::new(),
        }
    }

    /// The same command in `image`.
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }

    /// The same command with `key=value` in its environment.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }
}

#[derive(Debug, Clone)]
enum HandlerRun {
    Executor,
    Command(JobCommand),
}

/// Runs each attempt as a Kubernetes Job (see the module docs).
#[derive(Clone)]
pub struct KubernetesJobSandbox {
    client: Client,
    config: KubernetesConfig,
    handlers: HashMap<String, HandlerRun>,
    executor_for_any: bool,
}

impl std::fmt::Debug for KubernetesJobSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesJobSandbox")
            .field("config", &self.config)
            .field("handlers", &self.handlers)
            .field("executor_for_any", &self.executor_for_any)
            .finish_non_exhaustive()
    }
}

fn api_error(what: &str) -> impl Fn(kube::Error) -> SandboxError + '_ {
    move |e| SandboxError::Kubernetes(format!("{what}: {e}"))
}

impl KubernetesJobSandbox {
    /// A sandbox using `client`.
    pub fn new(client: Client, config: KubernetesConfig) -> Self {
        KubernetesJobSandbox {
            client,
            config,
            handlers: HashMap::new(),
            executor_for_any: false,
        }
    }

    /// A sandbox with the client the environment describes: the in-cluster service account
    /// when running in a pod, else the current kubeconfig context (`KUBECONFIG` or
    /// `~/.kube/config`).
    ///
    /// # Errors
    /// [`SandboxError::Kubernetes`] if neither is usable.
    pub async fn from_environment(config: KubernetesConfig) -> Result<Self, SandboxError> {
        let client = Client::try_default()
            .await
            .map_err(api_error("finding a cluster configuration"))?;
        Ok(Self::new(client, config))
    }

    /// Runs handler `name` as `command`.
    ///
    /// # Errors
    /// [`SandboxError::DuplicateHandler`] if the name is taken, [`SandboxError::Spawn`] for an
    /// empty argv.
    pub fn command(&mut self, name: &str, command: JobCommand) -> Result<&mut Self, SandboxError> {
        if command.argv.is_empty() {
            return Err(SandboxError::Spawn(format!(
                "job command {name:?} has an empty argv"
            )));
        }
        self.add(name, HandlerRun::Command(command))
    }

    /// Runs handler `name` in executor mode: the sandbox's image runs the application, whose
    /// `main` calls [`crate::run_if_child`].
    ///
    /// # Errors
    /// [`SandboxError::DuplicateHandler`] if the name is taken.
    pub fn executor(&mut self, name: &str) -> Result<&mut Self, SandboxError> {
        self.add(name, HandlerRun::Executor)
    }

    /// Runs every handler without a command of its own in executor mode; the image answers
    /// for the ones it does not know.
    pub fn executor_for_any_handler(&mut self) -> &mut Self {
        self.executor_for_any = true;
        self
    }

    fn add(&mut self, name: &str, run: HandlerRun) -> Result<&mut Self, SandboxError> {
        if self.handlers.contains_key(name) {
            return Err(SandboxError::DuplicateHandler(name.to_owned()));
        }
        self.handlers.insert(name.to_owned(), run);
        Ok(self)
    }

    /// The Job that runs `input`.
    ///
    /// # Errors
    /// [`SandboxError::UnknownHandler`] and [`SandboxError::PayloadTooLarge`].
    pub fn job_for(&self, input: &TaskInput) -> Result<Job, SandboxError> {
        let run = match self.handlers.get(&input.handler) {
            Some(run) => run,
            None if self.executor_for_any => &HandlerRun::Executor,
            None => return Err(SandboxError::UnknownHandler(input.handler.clone())),
        };
        if input.payload.len() > self.config.max_payload_bytes {
            return Err(SandboxError::PayloadTooLarge {
                size: input.payload.len(),
                limit: self.config.max_payload_bytes,
            });
        }
        let name = job_name(input);
        let mut labels = BTreeMap::from([
            (MANAGED_BY_LABEL.to_owned(), "mawex".to_owned()),
            (TASK_LABEL.to_owned(), input.task.to_string()),
            (GROUP_LABEL.to_owned(), label_value(input.group.as_str())),
            (ATTEMPT_LABEL.to_owned(), input.attempt.0.to_string()),
        ]);
        let annotations = BTreeMap::from([(GROUP_LABEL.to_owned(), input.group.to_string())]);
        let mut env = BTreeMap::from([
            (executor::TASK_ENV.to_owned(), input.task.to_string()),
            (
                executor::ATTEMPT_ENV.to_owned(),
                input.attempt.0.to_string(),
            ),
            (executor::GROUP_ENV.to_owned(), input.group.to_string()),
            (executor::HANDLER_ENV.to_owned(), input.handler.clone()),
            (
                executor::PAYLOAD_FILE_ENV.to_owned(),
                format!("{PAYLOAD_DIR}/{PAYLOAD_KEY}"),
            ),
        ]);
        env.extend(input.child_env(&[]).map(|(k, v)| (k.clone(), v.clone())));
        env.extend(self.config.env.clone());
        let (image, command) = match run {
            HandlerRun::Executor => {
                env.insert(executor::EXECUTOR_ENV.to_owned(), "kubernetes".to_owned());
                let command = self.config.executor_command.clone();
                (
                    self.config.image.clone(),
                    (!command.is_empty()).then_some(command),
                )
            }
            HandlerRun::Command(c) => {
                env.extend(c.env.clone());
                (
                    c.image.clone().unwrap_or_else(|| self.config.image.clone()),
                    Some(c.argv.clone()),
                )
            }
        };
        let mut limits = self.config.limits.clone();
        if let Some(bytes) = input.limits.memory_bytes {
            limits.memory = Some(bytes.to_string());
        }
        let container = Container {
            name: CONTAINER.to_owned(),
            image: Some(image),
            image_pull_policy: self.config.image_pull_policy.clone(),
            command,
            env: Some(
                env.into_iter()
                    .map(|(name, value)| EnvVar {
                        name,
                        value: Some(value),
                        value_from: None,
                    })
                    .collect(),
            ),
            resources: Some(ResourceRequirements {
                requests: self.config.requests.to_map(),
                limits: limits.to_map(),
                ..ResourceRequirements::default()
            }),
            termination_message_policy: Some("File".to_owned()),
            volume_mounts: Some(vec![VolumeMount {
                name: PAYLOAD_VOLUME.to_owned(),
                mount_path: PAYLOAD_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]),
            ..Container::default()
        };
        let payload_volume = Volume {
            name: PAYLOAD_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(name.clone()),
                items: Some(vec![KeyToPath {
                    key: PAYLOAD_KEY.to_owned(),
                    path: PAYLOAD_KEY.to_owned(),
                    mode: None,
                }]),
                default_mode: Some(0o400),
                optional: Some(false),
            }),
            ..Volume::default()
        };
        let pod_labels = {
            labels.insert(JOB_LABEL.to_owned(), name.clone());
            labels.clone()
        };
        labels.remove(JOB_LABEL);
        Ok(Job {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(self.config.namespace.clone()),
                labels: Some(labels),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            spec: Some(JobSpec {
                backoff_limit: Some(0),
                active_deadline_seconds: input.limits.timeout.map(whole_seconds),
                ttl_seconds_after_finished: Some(
                    i32::try_from(self.config.ttl_after_finished.as_secs()).unwrap_or(i32::MAX),
                ),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(pod_labels),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        restart_policy: Some("Never".to_owned()),
                        service_account_name: self.config.service_account.clone(),
                        containers: vec![container],
                        volumes: Some(vec![payload_volume]),
                        ..PodSpec::default()
                    }),
                },
                ..JobSpec::default()
            }),
            status: None,
        })
    }

    /// The Secret holding the payload of `input`, owned by its `job` (as created, with its
    /// uid), so that the cluster deletes it with the Job.
    pub fn secret_for(&self, input: &TaskInput, job: &Job) -> Secret {
        let owner = OwnerReference {
            api_version: "batch/v1".to_owned(),
            kind: "Job".to_owned(),
            name: job.metadata.name.clone().unwrap_or_default(),
            uid: job.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        Secret {
            metadata: ObjectMeta {
                name: job.metadata.name.clone(),
                namespace: Some(self.config.namespace.clone()),
                labels: job.metadata.labels.clone(),
                owner_references: Some(vec![owner]),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                PAYLOAD_KEY.to_owned(),
                ByteString(input.payload.to_vec()),
            )])),
            immutable: Some(true),
            type_: Some("Opaque".to_owned()),
            ..Secret::default()
        }
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    /// Waits until `job` has finished, following it with watches.
    async fn finished(&self, mut job: Job) -> Result<(Job, Ending), SandboxError> {
        let name = job.metadata.name.clone().unwrap_or_default();
        let jobs = self.jobs();
        let params = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(u32::try_from(self.config.watch_timeout.as_secs()).unwrap_or(290));
        let mut failures = 0u32;
        loop {
            if let Some(ending) = ending(&job) {
                return Ok((job, ending));
            }
            let version = job.metadata.resource_version.clone().unwrap_or_default();
            match jobs.watch(&params, &version).await {
                Ok(events) => {
                    let mut events = events.boxed();
                    loop {
                        match events.try_next().await {
                            Ok(Some(WatchEvent::Added(j) | WatchEvent::Modified(j))) => {
                                failures = 0;
                                if let Some(ending) = ending(&j) {
                                    return Ok((j, ending));
                                }
                                job = j;
                            }
                            Ok(Some(WatchEvent::Deleted(_))) => {
                                return Err(SandboxError::Kubernetes(format!(
                                    "job {name} was deleted before it finished"
                                )))
                            }
                            Ok(Some(WatchEvent::Bookmark(b))) => {
                                job.metadata.resource_version = Some(b.metadata.resource_version);
                            }
                            // 410 Gone (the version is too old) and the like: read afresh.
                            Ok(Some(WatchEvent::Error(e))) => {
                                tracing::debug!(job = %name, error = %e, "watch error");
                                break;
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::debug!(job = %name, error = %e, "watch broke");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(job = %name, error = %e, failures, "cannot watch the job");
                }
            }
            if failures > 0 {
                if failures > 5 {
                    return Err(SandboxError::Kubernetes(format!(
                        "lost track of job {name} after {failures} failed watches"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200) * failures).await;
            }
            job = match jobs.get(&name).await {
                Ok(j) => j,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(job = %name, error = %e, failures, "cannot read the job");
                    continue;
                }
            };
        }
    }

    /// The result of a finished Job, read from its pod.
    async fn result_of(
        &self,
        input: &TaskInput,
        job: &Job,
        ending: Ending,
    ) -> Result<Bytes, SandboxError> {
        let name = job.metadata.name.clone().unwrap_or_default();
        if let Ending::Failed { reason, .. } = &ending {
            if reason == "DeadlineExceeded" {
                let limit = input
                    .limits
                    .timeout
                    .or_else(|| {
                        job.spec
                            .as_ref()
                            .and_then(|s| s.active_deadline_seconds)
                            .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
                    })
                    .unwrap_or_default();
                return Err(SandboxError::TimedOut(limit));
            }
        }
        let pods = self
            .pods()
            .list(&ListParams::default().labels(&format!("{JOB_LABEL}={name}")))
            .await
            .map_err(api_error("listing the job's pods"))?;
        let finished = pods.items.into_iter().rev().find_map(|pod| {
            let terminated = pod
                .status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .iter()
                .find(|c| c.name == CONTAINER)?
                .state
                .as_ref()?
                .terminated
                .clone()?;
            Some((pod.metadata.name.unwrap_or_default(), terminated))
        });
        let Some((pod, terminated)) = finished else {
            return Err(SandboxError::Kubernetes(match ending {
                Ending::Succeeded => format!("job {name} succeeded but its pod is gone"),
                Ending::Failed { reason, message } => {
                    format!("job {name} failed ({reason}): {message}")
                }
            }));
        };
        let message = terminated.message.clone().unwrap_or_default();
        if terminated.exit_code == 0 {
            let line = if message.is_empty() {
                self.last_log_line(&pod).await?
            } else {
                message
            };
            return self.output(line);
        }
        self.failure(input, &pod, &terminated, message).await
    }

    /// Success: the report or raw text of the container, within the output limit.
    fn output(&self, line: String) -> Result<Bytes, SandboxError> {
        let too_large = SandboxError::OutputTooLarge {
            limit: self.config.max_output_bytes,
        };
        if line.len() > self.line_limit() {
            return Err(too_large);
        }
        let out = match Report::decode(&line) {
            Some(report) => report.into_result()?,
            None => Bytes::from(line),
        };
        if out.len() > self.config.max_output_bytes {
            return Err(too_large);
        }
        Ok(out)
    }

    async fn failure(
        &self,
        input: &TaskInput,
        pod: &str,
        terminated: &ContainerStateTerminated,
        message: String,
    ) -> Result<Bytes, SandboxError> {
        let report = if message.is_empty() {
            self.log_tail(pod).await
        } else {
            message
        };
        if let Some(report) = report.lines().last().and_then(Report::decode) {
            return report.into_result();
        }
        let code = terminated.exit_code;
        if terminated.reason.as_deref() == Some("OOMKilled") {
            let limit = input
                .limits
                .memory_bytes
                .or_else(|| {
                    self.config
                        .limits
                        .memory
                        .as_deref()
                        .and_then(|m| m.parse().ok())
                })
                .unwrap_or(0);
            return Err(SandboxError::OutOfMemory {
                limit,
                stderr: report,
            });
        }
        match terminated.signal.or((code > 128).then(|| code - 128)) {
            Some(signal) => Err(SandboxError::Crashed {
                signal,
                stderr: report,
            }),
            None => Err(SandboxError::NonZeroExit {
                code,
                stderr: report,
            }),
        }
    }

    /// The longest line that can carry an output within the limit (as a report).
    fn line_limit(&self) -> usize {
        self.config.max_output_bytes.div_ceil(3) * 4 + 64
    }

    async fn last_log_line(&self, pod: &str) -> Result<String, SandboxError> {
        let params = LogParams {
            container: Some(CONTAINER.to_owned()),
            tail_lines: Some(1),
            // One byte past the limit tells "too large" from "just fits".
            limit_bytes: Some(i64::try_from(self.line_limit() + 1).unwrap_or(i64::MAX)),
            ..LogParams::default()
        };
        let log = self
            .pods()
            .logs(pod, &params)
            .await
            .map_err(api_error("reading the pod's log"))?;
        Ok(log.strip_suffix('\n').unwrap_or(&log).to_owned())
    }

    /// The end of the log for error reports; empty if it cannot be read.
    async fn log_tail(&self, pod: &str) -> String {
        let params = LogParams {
            container: Some(CONTAINER.to_owned()),
            tail_lines: Some(40),
            limit_bytes: Some(i64::try_from(self.config.log_tail_bytes).unwrap_or(i64::MAX)),
            ..LogParams::default()
        };
        match self.pods().logs(pod, &params).await {
            Ok(log) => log.trim_end().to_owned(),
            Err(e) => {
                tracing::debug!(pod, error = %e, "cannot read the log");
                String::new()
            }
        }
    }
}

/// How a Job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    Succeeded,
    Failed { reason: String, message: String },
}

fn ending(job: &Job) -> Option<Ending> {
    let status = job.status.as_ref()?;
    for c in status.conditions.iter().flatten() {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" => return Some(Ending::Succeeded),
            "Failed" => {
                return Some(Ending::Failed {
                    reason: c.reason.clone().unwrap_or_default(),
                    message: c.message.clone().unwrap_or_default(),
                })
            }
            _ => {}
        }
    }
    None
}

/// `mawex-<task id without dashes>-<attempt>`: lowercase, DNS-1123, 49 characters at most.
pub fn job_name(input: &TaskInput) -> String {
    let task: String = input
        .task
        .to_string()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("mawex-{}-{}", task.to_ascii_lowercase(), input.attempt.0)
}

/// A valid label value for `s`: disallowed characters become `_`, at most 63 characters,
/// alphanumeric at both ends.
fn label_value(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

fn whole_seconds(d: Duration) -> i64 {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// Deletes the Job when the attempt is over, however it ends, even when its future is
/// dropped (the delete then runs as a task of its own).
struct JobGuard {
    jobs: Api<Job>,
    name: Option<String>,
}

impl JobGuard {
    async fn delete(mut self) {
        if let Some(name) = self.name.take() {
            delete_job(&self.jobs, &name).await;
        }
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            let jobs = self.jobs.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move { delete_job(&jobs, &name).await });
                }
                Err(_) => tracing::warn!(job = %name, "no runtime to delete the job; its TTL will"),
            }
        }
    }
}

async fn delete_job(jobs: &Api<Job>, name: &str) {
    match jobs.delete(name, &DeleteParams::background()).await {
        Ok(_) => tracing::debug!(job = name, "deleted"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => tracing::warn!(job = name, error = %e, "cannot delete the job; its TTL will"),
    }
}

#[async_trait]
impl Sandbox for KubernetesJobSandbox {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn run(
        &self,
        input: TaskInput,
        cancel: CancellationToken,
    ) -> Result<Bytes, SandboxError> {
        let job = self.job_for(&input)?;
        let name = job.metadata.name.clone().unwrap_or_default();
        let jobs = self.jobs();
        // Armed before the request: an attempt dropped while the create is in flight (the
        // server may have made the Job already) still deletes it.
        let mut guard = JobGuard {
            jobs: jobs.clone(),
            name: Some(name.clone()),
        };
        let created = match jobs.create(&PostParams::default(), &job).await {
            Ok(created) => created,
            // The same attempt asked again: follow the Job already there.
            Err(kube::Error::Api(e)) if e.code == 409 => jobs
                .get(&name)
                .await
                .map_err(api_error("reading the existing job"))?,
            Err(e) => {
                // Refused: there is no Job to delete.
                guard.name = None;
                return Err(api_error("creating the job")(e));
            }
        };
        // The payload, owned by the Job: its pod starts once this exists.
        match self
            .secrets()
            .create(&PostParams::default(), &self.secret_for(&input, &created))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                guard.delete().await;
                return Err(api_error("creating the payload's secret")(e));
            }
        }
        let deadline = async {
            match input.limits.timeout {
                Some(limit) => {
                    tokio::time::sleep(limit).await;
                    limit
                }
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            finished = self.finished(created) => match finished {
                Ok((job, ending)) => self.result_of(&input, &job, ending).await,
                Err(e) => Err(e),
            },
            limit = deadline => Err(SandboxError::TimedOut(limit)),
            () = cancel.cancelled() => Err(SandboxError::Cancelled),
        };
        guard.delete().await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_what_kubernetes_accepts() {
        let mut input = TaskInput::for_test("echo", "");
        input.attempt = mawex_api::Attempt(u32::MAX);
        let name = job_name(&input);
        assert!(name.len() <= 63, "{name}");
        assert!(name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert_eq!(label_value("team/a:b"), "team_a_b");
        assert_eq!(label_value("-x-"), "x");
        assert_eq!(label_value(&"a".repeat(100)).len(), 63);
        assert_eq!(whole_seconds(Duration::from_millis(300)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(2001)), 3);
    }
}
