//! The task commands: submit, get, list, cancel, retry, failed.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::time::Duration;

use mawex::{
    ApiError, Bytes, CancelAck, Dependency, ErrorKind, FailedFilter, GroupName, GroupSettings,
    ListQuery, MasterProxy, MissedTicks, Outcome, PendingChange, PodId, RateLimit, RemoteConfig,
    RemoteMasterProxy, RetryPolicy, ScheduleName, ScheduleSpec, TaskId, TaskSpec, TaskState,
    Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::cli::{
    CronAction, FailedAction, FailedArgs, GroupAction, ListArgs, Output, PodAction, SubmitArgs,
};
use crate::config::Config;
use crate::graphs;
use crate::output::{self, Rows, TaskRow};
use crate::CliError;

/// Tasks of `submit --batch` sent in one call, each call atomic.
const BATCH_PAGE: usize = 1_000;

/// The default window of `--dedup`.
const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(3600);

/// How clients and workers reach the masters: TLS with `client.ca`, `client.token`.
///
/// # Errors
/// The authority's file cannot be read.
pub(crate) fn channel(config: &Config) -> Result<mawex::ChannelConfig, CliError> {
    let client = &config.client;
    let mut channel = mawex::ChannelConfig::default();
    if let Some(ca) = &client.ca {
        let pem = std::fs::read(ca).map_err(CliError::io(format!("reading {}", ca.display())))?;
        channel = channel.with_tls(mawex::ClientTls::new(pem));
    }
    if let Some(token) = &client.token {
        channel = channel.with_token(token.clone());
    }
    Ok(channel)
}

/// A client of the masters of `config.client`.
///
/// # Errors
/// A file named in the configuration cannot be read, or an endpoint is malformed.
pub(crate) fn connect(config: &Config) -> Result<RemoteMasterProxy, CliError> {
    let mut remote = RemoteConfig::default();
    remote.retry_for = config.client.timeout;
    remote.channel = channel(config)?;
    let client = &config.client;
    Ok(RemoteMasterProxy::with_config(
        client.masters.iter(),
        remote,
    )?)
}

pub(crate) fn group(name: &str) -> Result<GroupName, CliError> {
    GroupName::new(name).map_err(|e| CliError::Usage(format!("group {name:?}: {e}")))
}

fn task_id(text: &str) -> Result<TaskId, CliError> {
    text.parse()
        .map_err(|e| CliError::Usage(format!("{text:?} is not a task id: {e}")))
}

fn state(text: &str) -> Result<TaskState, CliError> {
    text.parse().map_err(|e: ApiError| match e {
        ApiError::InvalidArgument(message) => CliError::Usage(message),
        other => CliError::Api(other),
    })
}

fn kind(text: &str) -> Result<ErrorKind, CliError> {
    text.parse()
        .map_err(|e: mawex::UnknownErrorKind| CliError::Usage(e.to_string()))
}

/// One task of `submit --batch`: a JSON line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    group: String,
    handler: String,
    #[serde(default)]
    payload: Option<serde_json::Value>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    priority: Option<i32>,
    #[serde(default, with = "humantime_serde")]
    delay: Option<Duration>,
    #[serde(default)]
    dedup: Option<String>,
    #[serde(default)]
    retry: Option<u32>,
    #[serde(default)]
    fairness_key: Option<String>,
}

/// What a submit printed for each task.
#[derive(Debug, Serialize)]
struct Submitted {
    id: String,
    created: bool,
    deduplicated: bool,
}

impl Rows for Submitted {
    fn headers() -> &'static [&'static str] {
        &["id", "created", "deduplicated"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.created.to_string(),
            self.deduplicated.to_string(),
        ]
    }
}

/// The payload of a JSON line: a string as its bytes, anything else as its JSON.
fn payload_of(value: Option<serde_json::Value>) -> Bytes {
    match value {
        None | Some(serde_json::Value::Null) => Bytes::new(),
        Some(serde_json::Value::String(text)) => Bytes::from(text),
        Some(other) => Bytes::from(other.to_string()),
    }
}

/// Options common to one submit and a batch line.
struct Options {
    priority: Option<i32>,
    run_at: Option<Timestamp>,
    dedup: Option<(String, Duration)>,
    retry: Option<u32>,
    fairness_key: Option<String>,
}

impl Options {
    fn apply(self, mut spec: TaskSpec) -> Result<TaskSpec, CliError> {
        if let Some(priority) = self.priority {
            spec = spec.with_priority(priority);
        }
        if let Some(at) = self.run_at {
            spec = spec.with_run_at(at);
        }
        if let Some((key, window)) = self.dedup {
            spec = spec.with_dedup(key, window);
        }
        if let Some(attempts) = self.retry {
            if attempts == 0 {
                return Err(CliError::Usage(
                    "--retry counts attempts in all: at least 1".into(),
                ));
            }
            spec = spec.with_retry(RetryPolicy::new(attempts));
        }
        if let Some(key) = self.fairness_key {
            spec = spec.with_fairness_key(key);
        }
        Ok(spec)
    }
}

/// `mawex submit`.
///
/// # Errors
/// Bad input, a refused submit, or (with `--wait`) the task's own ending.
pub(crate) async fn submit(
    config: &Config,
    output: Output,
    args: SubmitArgs,
) -> Result<(), CliError> {
    let proxy = connect(config)?;
    if args.batch {
        return submit_batch(&proxy, output).await;
    }
    let (Some(group_name), Some(handler)) = (&args.group, &args.handler) else {
        return Err(CliError::Usage("submit needs a GROUP and a HANDLER".into()));
    };
    let payload = match args.payload.as_deref() {
        None => Bytes::new(),
        Some("-") => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(CliError::io("reading the payload from stdin"))?;
            Bytes::from(bytes)
        }
        Some(text) => Bytes::from(text.to_owned()),
    };
    let run_at = match (&args.delay, &args.at) {
        (Some(delay), _) => Some(Timestamp::after(*delay)),
        (None, Some(at)) => Some(Timestamp::from(humantime::parse_rfc3339(at).map_err(
            |e| {
                CliError::Usage(format!(
                    "--at {at:?}: {e} (a UTC time: 2026-12-24T18:00:00Z)"
                ))
            },
        )?)),
        (None, None) => None,
    };
    let options = Options {
        priority: args.priority,
        run_at,
        dedup: args
            .dedup
            .clone()
            .map(|key| (key, args.dedup_window.unwrap_or(DEFAULT_DEDUP_WINDOW))),
        retry: args.retry,
        fairness_key: args.fairness_key.clone(),
    };
    let mut spec = options.apply(TaskSpec::new(group(group_name)?, handler.clone(), payload))?;
    let policy = graphs::policy("--policy", args.policy.as_deref())?;
    for id in &args.after {
        spec = spec.after_dependency(Dependency::on(task_id(id)?).with_policy(policy));
    }
    spec.output_limit = args.output_limit;
    let ack = proxy.submit(spec).await?;
    if !args.wait {
        return output::print(
            output,
            &[Submitted {
                id: ack.id.to_string(),
                created: ack.created,
                deduplicated: ack.deduplicated,
            }],
        );
    }
    eprintln!("submitted {}; waiting", ack.id);
    let waited = match args.timeout {
        Some(limit) => tokio::time::timeout(limit, proxy.await_result(ack.id))
            .await
            .map_err(|_| CliError::TimedOut(limit))?,
        None => proxy.await_result(ack.id).await,
    };
    match waited?.outcome {
        Outcome::Succeeded(out) => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&out)
                .and_then(|()| stdout.flush())
                .map_err(CliError::io("writing the output"))?;
            Ok(())
        }
        Outcome::Failed(error) => Err(CliError::TaskFailed(format!(
            "the task failed: {}: {}",
            error.kind, error.message
        ))),
        Outcome::Cancelled => Err(CliError::Cancelled),
        _ => Err(CliError::TaskFailed(
            "the task ended with an outcome this version does not know".into(),
        )),
    }
}

/// `mawex submit --batch`: one task per JSON line on stdin, submitted together; a bad line
/// fails the whole batch before anything is sent, naming the line.
async fn submit_batch(proxy: &RemoteMasterProxy, output: Output) -> Result<(), CliError> {
    let mut specs = Vec::new();
    for (number, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.map_err(CliError::io("reading tasks from stdin"))?;
        if line.trim().is_empty() {
            continue;
        }
        let at =
            |e: &dyn std::fmt::Display| CliError::Usage(format!("stdin line {}: {e}", number + 1));
        let task: BatchLine = serde_json::from_str(&line).map_err(|e| at(&e))?;
        let mut spec = TaskSpec::new(
            group(&task.group).map_err(|e| at(&e))?,
            task.handler,
            payload_of(task.payload),
        );
        if let Some(id) = &task.id {
            spec = spec.with_id(task_id(id).map_err(|e| at(&e))?);
        }
        let options = Options {
            priority: task.priority,
            run_at: task.delay.map(Timestamp::after),
            dedup: task.dedup.map(|key| (key, DEFAULT_DEDUP_WINDOW)),
            retry: task.retry,
            fairness_key: task.fairness_key,
        };
        specs.push(options.apply(spec).map_err(|e| at(&e))?);
    }
    if specs.is_empty() {
        return Err(CliError::Usage("no task on stdin".into()));
    }
    let mut rows = Vec::with_capacity(specs.len());
    // In pages the master takes whole, each atomic on its own: a refused page leaves the
    // ones before it submitted, and they are printed before the error.
    for chunk in specs.chunks(BATCH_PAGE) {
        match proxy.submit_many(chunk.to_vec()).await {
            Ok(acks) => rows.extend(acks.into_iter().map(|ack| Submitted {
                id: ack.id.to_string(),
                created: ack.created,
                deduplicated: ack.deduplicated,
            })),
            Err(e) if rows.is_empty() => return Err(e.into()),
            Err(e) => {
                output::print(output, &rows)?;
                return Err(CliError::Serve(format!(
                    "the first {} tasks (printed) were submitted, the rest refused: {e}",
                    rows.len()
                )));
            }
        }
    }
    output::print(output, &rows)
}

/// `mawex get`.
///
/// # Errors
/// A bad id, or a failed call (`NotFound` for an unknown task).
pub(crate) async fn get(config: &Config, output: Output, id: &str) -> Result<(), CliError> {
    let view = connect(config)?.get(task_id(id)?).await?;
    output::print(output, &[TaskRow::new(&view)])
}

/// `mawex list`.
///
/// # Errors
/// A bad filter, or a failed call.
pub(crate) async fn list(config: &Config, output: Output, args: ListArgs) -> Result<(), CliError> {
    let proxy = connect(config)?;
    let mut query = ListQuery::default();
    query.group = args.group.as_deref().map(group).transpose()?;
    query.state = args.state.as_deref().map(state).transpose()?;
    query.after = args.after.as_deref().map(task_id).transpose()?;
    query.handler = args.handler;
    query.dedup_key = args.dedup_key;
    query.fairness_key = args.fairness_key;
    query.error_text = args.error;
    query.error_kind = args.kind.as_deref().map(kind).transpose()?;
    query.payload_contains = args.payload.map(Bytes::from);
    query.newest_first = args.newest;
    query.validate().map_err(|e| match e {
        ApiError::InvalidArgument(message) => CliError::Usage(message),
        other => CliError::Api(other),
    })?;
    if args.limit == 0 || args.limit > mawex::MAX_LIST_LIMIT {
        return Err(CliError::Usage(format!(
            "--limit must be 1 to {}",
            mawex::MAX_LIST_LIMIT
        )));
    }
    query.limit = args.limit;
    let mut rows = Vec::new();
    loop {
        let page = proxy.list(query.clone()).await?;
        rows.extend(page.tasks.iter().map(TaskRow::new));
        match page.next {
            Some(next) if args.all => query.after = Some(next),
            Some(next) => {
                eprintln!("more: --after {next}");
                break;
            }
            None => break,
        }
    }
    output::print(output, &rows)
}

/// `mawex cancel`.
///
/// # Errors
/// A bad id, or a failed call.
pub(crate) async fn cancel(config: &Config, id: &str) -> Result<(), CliError> {
    let id = task_id(id)?;
    match connect(config)?.cancel(id).await? {
        CancelAck::Cancelled => eprintln!("{id} cancelled"),
        CancelAck::AlreadyFinished(state) => {
            eprintln!("{id} had already finished: {}", state.name());
        }
        _ => {}
    }
    Ok(())
}

/// `mawex retry`: runs one failed task again.
///
/// # Errors
/// A bad id, a task that is not in the failed queue, or a failed call.
pub(crate) async fn retry(config: &Config, id: &str) -> Result<(), CliError> {
    let id = task_id(id)?;
    let retried = connect(config)?
        .retry_failed(FailedFilter::ids(vec![id]))
        .await?;
    if retried == 0 {
        return Err(CliError::Api(ApiError::NotFound(format!(
            "{id} is not in the failed queue"
        ))));
    }
    eprintln!("{id} queued again");
    Ok(())
}

/// A line of the failed queue's summary.
#[derive(Debug, Serialize)]
struct FailedRow {
    group: String,
    kind: String,
    count: u64,
}

impl Rows for FailedRow {
    fn headers() -> &'static [&'static str] {
        &["group", "kind", "count"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.group.clone(),
            self.kind.clone(),
            self.count.to_string(),
        ]
    }
}

/// `mawex failed`.
///
/// # Errors
/// A bad filter, a refusal to act without `--yes`, or a failed call.
pub(crate) async fn failed(
    config: &Config,
    output: Output,
    args: FailedArgs,
) -> Result<(), CliError> {
    let proxy = connect(config)?;
    let mut filter = FailedFilter::all();
    filter.group = args.group.as_deref().map(group).transpose()?;
    filter.kind = args.kind.as_deref().map(kind).transpose()?;
    filter.ids = args
        .ids
        .iter()
        .map(|id| task_id(id))
        .collect::<Result<_, _>>()?;
    let summary = proxy.failed_summary().await?;
    let matching: Vec<FailedRow> = summary
        .iter()
        .filter(|c| filter.group.as_ref().is_none_or(|g| *g == c.group))
        .filter(|c| filter.kind.is_none_or(|k| k == c.kind))
        .map(|c| FailedRow {
            group: c.group.to_string(),
            kind: c.kind.name().to_owned(),
            count: c.count,
        })
        .collect();
    let verb = match args.action {
        FailedAction::Summary => return output::print(output, &matching),
        FailedAction::Retry => "retry",
        FailedAction::Purge => "purge",
    };
    // With ids, at most their number (those still failed); otherwise what the summary
    // counts for the filter.
    let (count, bound) = if filter.ids.is_empty() {
        (matching.iter().map(|row| row.count).sum::<u64>(), "")
    } else {
        (
            u64::try_from(filter.ids.len()).unwrap_or(u64::MAX),
            "up to ",
        )
    };
    if args.dry_run {
        eprintln!("would {verb} {bound}{count} failed tasks (dry run: nothing done)");
        return output::line(count);
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::Usage(format!(
                "{verb} {bound}{count} failed tasks: add --yes (stdin is not a terminal to ask on)"
            )));
        }
        eprint!("{verb} {bound}{count} failed tasks? [y/N] ");
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .map_err(CliError::io("reading the answer"))?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing done");
            return Ok(());
        }
    }
    let done = match args.action {
        FailedAction::Retry => proxy.retry_failed(filter).await?,
        _ => proxy.purge_failed(filter).await?,
    };
    eprintln!("{verb}: {done} tasks");
    output::line(done)
}

/// A pod as `mawex pods` prints it.
#[derive(Debug, Serialize)]
struct PodRow {
    id: String,
    groups: Vec<String>,
    slots: u32,
    running: u32,
    held: u32,
    cpu_percent: f64,
    memory_bytes: u64,
    labels: std::collections::BTreeMap<String, String>,
    address: Option<String>,
    connected_at: String,
    last_heartbeat: String,
    /// Seconds since the last heartbeat, when printed.
    silent_for_s: f64,
    draining: bool,
}

impl Rows for PodRow {
    fn headers() -> &'static [&'static str] {
        &[
            "id",
            "groups",
            "slots",
            "running",
            "held",
            "cpu",
            "memory",
            "labels",
            "address",
            "connected",
            "heard",
        ]
    }

    fn cells(&self) -> Vec<String> {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let id = if self.draining {
            format!("{} (draining)", self.id)
        } else {
            self.id.clone()
        };
        vec![
            id,
            self.groups.join(","),
            self.slots.to_string(),
            self.running.to_string(),
            self.held.to_string(),
            format!("{:.0}%", self.cpu_percent),
            format!(
                "{:.1} MiB",
                self.memory_bytes as f64 / f64::from(1u32 << 20)
            ),
            labels.join(","),
            self.address.clone().unwrap_or_default(),
            self.connected_at.clone(),
            format!("{:.1}s ago", self.silent_for_s),
        ]
    }
}

/// `mawex pods`.
///
/// # Errors
/// A failed call (an `admin` token is needed where tokens are checked).
pub(crate) async fn pods(
    config: &Config,
    output: Output,
    action: Option<PodAction>,
) -> Result<(), CliError> {
    let proxy = connect(config)?;
    if let Some(PodAction::Drain { pod }) = action {
        let id = PodId::new(&pod).map_err(|e| CliError::Usage(format!("pod {pod:?}: {e}")))?;
        if !proxy.drain_pod(id).await? {
            return Err(CliError::Api(ApiError::NotFound(format!(
                "pod {pod} is not connected"
            ))));
        }
        eprintln!("pod {pod} drains: it gets no new work");
        return Ok(());
    }
    let now = Timestamp::now();
    let rows: Vec<PodRow> = proxy
        .list_pods()
        .await?
        .into_iter()
        .map(|pod| PodRow {
            id: pod.id.to_string(),
            groups: pod.groups.iter().map(ToString::to_string).collect(),
            slots: pod.slots,
            running: pod.running,
            held: pod.held,
            cpu_percent: f64::from(pod.cpu_permille) / 10.0,
            memory_bytes: pod.memory_bytes,
            labels: pod.labels,
            address: pod.address,
            connected_at: output::time(pod.connected_at),
            last_heartbeat: output::time(pod.last_heartbeat),
            silent_for_s: now.saturating_since(pod.last_heartbeat).as_secs_f64(),
            draining: pod.draining,
        })
        .collect();
    output::print(output, &rows)
}

/// A group as `mawex groups` prints it.
#[derive(Debug, Serialize)]
struct GroupRow {
    group: String,
    /// Waiting for the tasks they run after.
    blocked: u64,
    pending: u64,
    running: u64,
    succeeded: u64,
    failed: u64,
    cancelled: u64,
    paused: bool,
    /// Starts a second, if limited.
    rate: Option<u32>,
    /// Starts saved up for a burst, if limited.
    burst: Option<u32>,
    /// Tasks at once across all pods, if limited.
    ceiling: Option<u32>,
    /// Attempts in all for its tasks without a policy, if set.
    retry_attempts: Option<u32>,
    /// Recent mean run time, in milliseconds.
    mean_run_ms: Option<u64>,
}

impl Rows for GroupRow {
    fn headers() -> &'static [&'static str] {
        &[
            "group",
            "blocked",
            "pending",
            "running",
            "succeeded",
            "failed",
            "cancelled",
            "paused",
            "rate",
            "ceiling",
            "retry",
            "mean run",
        ]
    }

    fn cells(&self) -> Vec<String> {
        let or_dash = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        vec![
            self.group.clone(),
            self.blocked.to_string(),
            self.pending.to_string(),
            self.running.to_string(),
            self.succeeded.to_string(),
            self.failed.to_string(),
            self.cancelled.to_string(),
            if self.paused { "yes" } else { "no" }.to_owned(),
            match (self.rate, self.burst) {
                (Some(rate), Some(burst)) => format!("{rate}/s (burst {burst})"),
                _ => "-".into(),
            },
            or_dash(self.ceiling),
            or_dash(self.retry_attempts),
            self.mean_run_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
        ]
    }
}

/// `off`, or a number for `what`.
fn number_or_off(what: &str, text: &str) -> Result<Option<u32>, CliError> {
    if text == "off" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| CliError::Usage(format!("{what}: {text:?} is neither a number nor `off`")))
}

/// `mawex groups`.
///
/// # Errors
/// A bad value, or a failed call (an `admin` token is needed where tokens are checked).
pub(crate) async fn groups(
    config: &Config,
    output: Output,
    action: Option<GroupAction>,
) -> Result<(), CliError> {
    let proxy = connect(config)?;
    let (name, change): (String, Box<dyn FnOnce(GroupSettings) -> GroupSettings>) =
        match action.unwrap_or(GroupAction::List) {
            GroupAction::List => {
                let rows: Vec<GroupRow> = proxy
                    .list_groups()
                    .await?
                    .into_iter()
                    .map(|g| GroupRow {
                        group: g.group.to_string(),
                        blocked: g.blocked,
                        pending: g.pending,
                        running: g.running,
                        succeeded: g.succeeded,
                        failed: g.failed,
                        cancelled: g.cancelled,
                        paused: g.settings.paused,
                        rate: g.settings.rate.map(|r| r.per_second),
                        burst: g.settings.rate.map(|r| r.burst),
                        ceiling: g.settings.max_concurrency,
                        retry_attempts: g.settings.retry.map(|r| r.max_attempts),
                        mean_run_ms: g
                            .mean_run_time
                            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    })
                    .collect();
                return output::print(output, &rows);
            }
            GroupAction::Pause { group } => (group, Box::new(|s| s.with_paused(true))),
            GroupAction::Resume { group } => (group, Box::new(|s| s.with_paused(false))),
            GroupAction::Rate {
                group,
                per_second,
                burst,
            } => {
                let rate = number_or_off("rate", &per_second)?
                    .map(|n| RateLimit::new(n, burst.unwrap_or(n.max(1))));
                (group, Box::new(move |s| s.with_rate(rate)))
            }
            GroupAction::Ceiling { group, max } => {
                let max = number_or_off("ceiling", &max)?;
                (group, Box::new(move |s| s.with_max_concurrency(max)))
            }
            GroupAction::Retry { group, attempts } => {
                let retry = match number_or_off("retry", &attempts)? {
                    Some(0) => {
                        return Err(CliError::Usage(
                            "retry counts attempts in all: at least 1".into(),
                        ))
                    }
                    attempts => attempts.map(RetryPolicy::new),
                };
                (group, Box::new(move |s| s.with_retry(retry)))
            }
        };
    // Read, change one setting, write back: the others stay as they were.
    let group = self::group(&name)?;
    let settings = change(proxy.group_settings(group.clone()).await?);
    proxy.configure_group(group.clone(), settings).await?;
    eprintln!("group {group} configured");
    Ok(())
}

fn task_ids(ids: &[String]) -> Result<Vec<TaskId>, CliError> {
    ids.iter().map(|id| task_id(id)).collect()
}

/// `mawex move`.
///
/// # Errors
/// A bad id or group, or a failed call.
pub(crate) async fn move_pending(
    config: &Config,
    to: &str,
    ids: &[String],
) -> Result<(), CliError> {
    let change = PendingChange::default().move_to(group(to)?);
    let moved = connect(config)?
        .update_pending(task_ids(ids)?, change)
        .await?;
    eprintln!("{moved} of {} pending tasks moved to {to}", ids.len());
    output::line(moved)
}

/// `mawex prefer`.
///
/// # Errors
/// A bad id, or a failed call.
pub(crate) async fn prefer(
    config: &Config,
    priority: Option<i32>,
    ids: &[String],
) -> Result<(), CliError> {
    let change = match priority {
        Some(priority) => PendingChange::default().priority(priority),
        None => PendingChange::default().to_front(),
    };
    let changed = connect(config)?
        .update_pending(task_ids(ids)?, change)
        .await?;
    eprintln!("{changed} of {} pending tasks preferred", ids.len());
    output::line(changed)
}

/// A schedule as `mawex cron list` prints it.
#[derive(Debug, Serialize)]
struct ScheduleRow {
    name: String,
    cron: String,
    time_zone: String,
    group: String,
    handler: String,
    paused: bool,
    fired: u64,
    last_tick: Option<String>,
    next_tick: Option<String>,
    missed: &'static str,
}

impl Rows for ScheduleRow {
    fn headers() -> &'static [&'static str] {
        &[
            "name",
            "cron",
            "zone",
            "group",
            "handler",
            "paused",
            "fired",
            "last tick",
            "next tick",
            "missed",
        ]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.cron.clone(),
            self.time_zone.clone(),
            self.group.clone(),
            self.handler.clone(),
            if self.paused { "yes" } else { "no" }.to_owned(),
            self.fired.to_string(),
            self.last_tick.clone().unwrap_or_default(),
            self.next_tick.clone().unwrap_or_default(),
            self.missed.to_owned(),
        ]
    }
}

fn schedule_name(name: &str) -> Result<ScheduleName, CliError> {
    ScheduleName::new(name).map_err(|e| CliError::Usage(format!("schedule {name:?}: {e}")))
}

/// `mawex cron`.
///
/// # Errors
/// A bad name or expression, or a failed call (an `admin` token is needed where tokens are
/// checked).
pub(crate) async fn cron(
    config: &Config,
    output: Output,
    action: CronAction,
) -> Result<(), CliError> {
    let proxy = connect(config)?;
    match action {
        CronAction::Add {
            name,
            cron,
            group: group_name,
            handler,
            payload,
            time_zone,
            run_missed_once,
            priority,
        } => {
            let mut task = TaskSpec::new(
                group(&group_name)?,
                handler,
                Bytes::from(payload.unwrap_or_default()),
            );
            if let Some(priority) = priority {
                task = task.with_priority(priority);
            }
            let spec = ScheduleSpec::new(schedule_name(&name)?, cron, task)
                .in_time_zone(time_zone)
                .on_missed(if run_missed_once {
                    MissedTicks::RunOnce
                } else {
                    MissedTicks::Skip
                });
            proxy.create_schedule(spec).await?;
            eprintln!("schedule {name} created");
        }
        CronAction::List => {
            let rows: Vec<ScheduleRow> = proxy
                .list_schedules()
                .await?
                .into_iter()
                .map(|s| ScheduleRow {
                    name: s.spec.name.to_string(),
                    cron: s.spec.cron.clone(),
                    time_zone: s.spec.time_zone.clone(),
                    group: s.spec.task.group.to_string(),
                    handler: s.spec.task.handler.clone(),
                    paused: s.paused,
                    fired: s.fired,
                    last_tick: s.last_tick.map(output::time),
                    next_tick: s.next_tick.map(output::time),
                    missed: match s.spec.missed {
                        MissedTicks::RunOnce => "run once",
                        _ => "skip",
                    },
                })
                .collect();
            return output::print(output, &rows);
        }
        CronAction::Pause { name } => {
            proxy.pause_schedule(schedule_name(&name)?, true).await?;
            eprintln!("schedule {name} paused");
        }
        CronAction::Resume { name } => {
            proxy.pause_schedule(schedule_name(&name)?, false).await?;
            eprintln!("schedule {name} resumed");
        }
        CronAction::Delete { name } => {
            proxy.delete_schedule(schedule_name(&name)?).await?;
            eprintln!("schedule {name} deleted");
        }
    }
    Ok(())
}
