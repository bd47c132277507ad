//! The JSON of the API: what it takes and what it answers. Bytes (payloads, outputs) are a
//! string when they are UTF-8 text, else `{"base64": "…"}`; times are RFC 3339 in UTC;
//! durations are milliseconds.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use mawex_api::{
    BroadcastSpec, BroadcastView, ErrorKind, FailedFilter, GroupName, GroupSettings, GroupView,
    Limits, ListQuery, MissedTicks, Outcome, PodView, RateLimit, RetryPolicy, ScheduleName,
    ScheduleSpec, ScheduleView, Strategy, TargetFilter, TaskId, TaskSpec, TaskState, TaskView,
    Timestamp,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::WebError;

/// Bytes: text when they are UTF-8, else base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Body {
    /// UTF-8 text.
    Text(String),
    /// Any bytes.
    Binary {
        /// The bytes, base64 (standard alphabet, padded).
        base64: String,
    },
}

impl Body {
    /// `bytes` as a body.
    pub fn new(bytes: &[u8]) -> Body {
        match std::str::from_utf8(bytes) {
            Ok(text) => Body::Text(text.to_owned()),
            Err(_) => Body::Binary {
                base64: base64::engine::general_purpose::STANDARD.encode(bytes),
            },
        }
    }

    fn into_bytes(self, field: &str) -> Result<Bytes, WebError> {
        match self {
            Body::Text(text) => Ok(Bytes::from(text)),
            Body::Binary { base64 } => base64::engine::general_purpose::STANDARD
                .decode(base64)
                .map(Bytes::from)
                .map_err(|e| WebError::BadRequest(format!("{field}: not base64: {e}"))),
        }
    }
}

/// RFC 3339 in UTC, to the millisecond.
pub(crate) fn time(t: Timestamp) -> String {
    humantime::format_rfc3339_millis(t.into()).to_string()
}

fn parse_time(field: &str, text: &str) -> Result<Timestamp, WebError> {
    humantime::parse_rfc3339_weak(text)
        .map(Timestamp::from)
        .map_err(|e| {
            WebError::BadRequest(format!("{field}: {text:?} is not an RFC 3339 time: {e}"))
        })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn task_id(text: &str) -> Result<TaskId, WebError> {
    text.parse()
        .map_err(|e| WebError::BadRequest(format!("{text:?} is not a task id: {e}")))
}

pub(crate) fn group(field: &str, text: &str) -> Result<GroupName, WebError> {
    GroupName::new(text).map_err(|e| WebError::BadRequest(format!("{field}: {text:?}: {e}")))
}

pub(crate) fn state(text: &str) -> Result<TaskState, WebError> {
    text.parse()
        .map_err(|e| WebError::BadRequest(format!("state: {e}")))
}

pub(crate) fn kind(text: &str) -> Result<ErrorKind, WebError> {
    text.parse()
        .map_err(|e| WebError::BadRequest(format!("kind: {e}")))
}

/// An error as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Its kind: `handler`, `panicked`, `unknown-handler`, `timed-out`, `cancelled`,
    /// `crashed`, `non-zero-exit`, `out-of-memory`, `sandbox`, `lease-expired`.
    pub kind: &'static str,
    /// What the handler or the sandbox said.
    pub message: String,
}

impl From<&mawex_api::TaskError> for ErrorBody {
    fn from(e: &mawex_api::TaskError) -> Self {
        ErrorBody {
            kind: e.kind.name(),
            message: e.message.clone(),
        }
    }
}

/// A failed attempt.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Failure {
    /// Which attempt (from 1).
    pub attempt: u32,
    /// How it failed.
    pub error: ErrorBody,
    /// When.
    pub at: String,
}

/// A task.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Task {
    /// Its id.
    pub id: String,
    /// Its consumer group.
    pub group: String,
    /// The handler that runs it.
    pub handler: String,
    /// `pending`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: &'static str,
    /// Higher runs first.
    pub priority: i32,
    /// The current (or last) attempt, from 1; 0 before the first.
    pub attempt: u32,
    /// The pod running it.
    pub pod: Option<String>,
    /// Its input (empty in lists unless `bodies=true`).
    pub payload: Body,
    /// When it was submitted.
    pub submitted_at: String,
    /// When its current attempt started.
    pub started_at: Option<String>,
    /// Not before this time (delayed, or waiting to be retried).
    pub not_before: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
    /// Its output, once it succeeded.
    pub output: Option<Body>,
    /// Its error, once it failed.
    pub error: Option<ErrorBody>,
    /// Every failed attempt.
    pub failures: Vec<Failure>,
    /// Its deduplication key.
    pub dedup_key: Option<String>,
    /// Its fair-queueing key.
    pub fairness_key: Option<String>,
    /// An estimate of the time until it starts, in milliseconds (pending tasks).
    pub eta_ms: Option<u64>,
}

impl From<&TaskView> for Task {
    fn from(v: &TaskView) -> Self {
        let (finished_at, output, error) = match &v.result {
            Some(result) => {
                let (output, error) = match &result.outcome {
                    Outcome::Succeeded(bytes) => (Some(Body::new(bytes)), None),
                    Outcome::Failed(e) => (None, Some(ErrorBody::from(e))),
                    _ => (None, None),
                };
                (Some(time(result.finished_at)), output, error)
            }
            None => (None, None, None),
        };
        Task {
            id: v.spec.id.to_string(),
            group: v.spec.group.to_string(),
            handler: v.spec.handler.clone(),
            state: v.state.name(),
            priority: v.spec.priority,
            attempt: v.attempt.0,
            pod: v.pod.as_ref().map(ToString::to_string),
            payload: Body::new(&v.spec.payload),
            submitted_at: time(v.submitted_at),
            started_at: v.started_at.map(time),
            not_before: v.not_before.map(time),
            finished_at,
            output,
            error,
            failures: v
                .failures
                .iter()
                .map(|f| Failure {
                    attempt: f.attempt.0,
                    error: ErrorBody::from(&f.error),
                    at: time(f.at),
                })
                .collect(),
            dedup_key: v.spec.dedup.as_ref().map(|d| d.key.clone()),
            fairness_key: v.spec.fairness_key.clone(),
            eta_ms: v.eta.map(millis),
        }
    }
}

/// A task to submit.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// Its id (a UUIDv7); resubmitting the same id is harmless. Default: a fresh one.
    #[serde(default)]
    pub id: Option<String>,
    /// Its consumer group.
    pub group: String,
    /// The handler that runs it.
    pub handler: String,
    /// Its input (default: empty).
    #[serde(default)]
    pub payload: Option<Body>,
    /// Higher runs first (default 0).
    #[serde(default)]
    pub priority: i32,
    /// Not before this time (RFC 3339).
    #[serde(default)]
    pub run_at: Option<String>,
    /// Not before this many milliseconds from now.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// A submit with the key of a live or recent task returns that task.
    #[serde(default)]
    pub dedup_key: Option<String>,
    /// How long after it finished a task still counts for its dedup key (default 1 hour).
    #[serde(default)]
    pub dedup_window_ms: Option<u64>,
    /// Attempts in all (default: the group's or the master's policy).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Tasks of different keys take turns within the group.
    #[serde(default)]
    pub fairness_key: Option<String>,
    /// Time limit of each attempt, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Runs after these tasks (ids): blocked until they ended as `policy` asks, then run
    /// with their outputs as inputs.
    #[serde(default)]
    pub after: Vec<String>,
    /// With `after`: `all_succeeded` (default: a failed one cancels this task) or
    /// `all_finished`.
    #[serde(default)]
    pub policy: Option<String>,
    /// The most output bytes it may produce (more fails it for good).
    #[serde(default)]
    pub output_limit: Option<u64>,
}

impl NewTask {
    /// The spec, checked as far as the web side can (the master checks the rest).
    pub(crate) fn spec(self) -> Result<TaskSpec, WebError> {
        let payload = match self.payload {
            Some(body) => body.into_bytes("payload")?,
            None => Bytes::new(),
        };
        let mut spec = TaskSpec::new(group("group", &self.group)?, self.handler, payload)
            .with_priority(self.priority);
        if let Some(id) = &self.id {
            spec = spec.with_id(task_id(id)?);
        }
        match (&self.run_at, self.delay_ms) {
            (Some(_), Some(_)) => {
                return Err(WebError::BadRequest(
                    "run_at and delay_ms: give one, not both".into(),
                ))
            }
            (Some(at), None) => spec = spec.with_run_at(parse_time("run_at", at)?),
            (None, Some(delay)) => {
                spec = spec.with_run_at(Timestamp::after(Duration::from_millis(delay)));
            }
            (None, None) => {}
        }
        if let Some(key) = self.dedup_key {
            let window = Duration::from_millis(self.dedup_window_ms.unwrap_or(3_600_000));
            spec = spec.with_dedup(key, window);
        } else if self.dedup_window_ms.is_some() {
            return Err(WebError::BadRequest(
                "dedup_window_ms: only with a dedup_key".into(),
            ));
        }
        if let Some(attempts) = self.max_attempts {
            spec = spec.with_retry(RetryPolicy::new(attempts));
        }
        if let Some(key) = self.fairness_key {
            spec = spec.with_fairness_key(key);
        }
        if let Some(timeout) = self.timeout_ms {
            spec = spec.with_limits(Limits::default().with_timeout(Duration::from_millis(timeout)));
        }
        for dependency in crate::workflows::dependencies(&self.after, self.policy.as_deref())? {
            spec = spec.after_dependency(dependency);
        }
        spec.output_limit = self.output_limit;
        // Every field but the payload's size, which is the master's to judge.
        spec.validate(usize::MAX)?;
        Ok(spec)
    }
}

/// The answer to a submit.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Submitted {
    /// The task that stands for the submit: its own, or the earlier task of its dedup key.
    pub id: String,
    /// A new task was recorded (false for a repeat of a known id, or a dedup hit).
    pub created: bool,
    /// Its dedup key matched a live or recent task, whose id this is.
    pub deduplicated: bool,
}

impl From<mawex_api::SubmitAck> for Submitted {
    fn from(ack: mawex_api::SubmitAck) -> Self {
        Submitted {
            id: ack.id.to_string(),
            created: ack.created,
            deduplicated: ack.deduplicated,
        }
    }
}

/// One page of tasks.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskPage {
    /// The tasks, oldest first.
    pub tasks: Vec<Task>,
    /// Pass as `after` for the next page; absent on the last.
    pub next: Option<String>,
}

/// How many tasks of a group failed with a kind of error.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FailedCount {
    /// The group.
    pub group: String,
    /// The kind of their last error.
    pub kind: &'static str,
    /// How many.
    pub count: u64,
}

/// Which tasks of the failed queue a retry or a purge acts on: all that match every field
/// given.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailedFilterBody {
    /// Only these tasks.
    #[serde(default)]
    pub ids: Vec<String>,
    /// Only tasks of this group.
    #[serde(default)]
    pub group: Option<String>,
    /// Only tasks whose last error is of this kind.
    #[serde(default)]
    pub kind: Option<String>,
    /// Count what matches and do nothing.
    #[serde(default)]
    pub dry_run: bool,
}

impl FailedFilterBody {
    pub(crate) fn filter(&self) -> Result<FailedFilter, WebError> {
        let ids = self
            .ids
            .iter()
            .map(|id| task_id(id))
            .collect::<Result<Vec<_>, _>>()?;
        let mut filter = FailedFilter::ids(ids);
        if let Some(g) = &self.group {
            filter = filter.group(group("group", g)?);
        }
        if let Some(k) = &self.kind {
            filter = filter.kind(kind(k)?);
        }
        Ok(filter)
    }
}

/// What a task search matches: every field given must match. Empty fields (a blank form
/// input) match anything, like absent ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskFilter {
    /// Only tasks of this group.
    #[serde(default)]
    pub group: Option<String>,
    /// Only tasks in this state: `blocked`, `pending`, `running`, `succeeded`, `failed`,
    /// `cancelled`.
    #[serde(default)]
    pub state: Option<String>,
    /// Only tasks run by this handler.
    #[serde(default)]
    pub handler: Option<String>,
    /// Only tasks with this dedup key.
    #[serde(default)]
    pub dedup_key: Option<String>,
    /// Only tasks with this fairness key.
    #[serde(default)]
    pub fairness_key: Option<String>,
    /// Only tasks whose last error's message contains this text (case-sensitive).
    #[serde(default)]
    pub error: Option<String>,
    /// Only tasks whose last error is of this kind (`handler`, `timed-out`, …).
    #[serde(default)]
    pub kind: Option<String>,
    /// Only tasks whose payload contains this text.
    #[serde(default)]
    pub payload: Option<String>,
    /// Only tasks submitted at or after this time (RFC 3339; UTC unless it says otherwise).
    #[serde(default)]
    pub from: Option<String>,
    /// Only tasks submitted before this time.
    #[serde(default)]
    pub until: Option<String>,
}

impl TaskFilter {
    /// The filter as a list query (the first page, oldest first, 100 a page).
    pub(crate) fn query(&self) -> Result<ListQuery, WebError> {
        let mut query = ListQuery::default();
        if let Some(g) = filled(&self.group) {
            query = query.group(group("group", g)?);
        }
        if let Some(s) = filled(&self.state) {
            query = query.state(state(s)?);
        }
        if let Some(h) = filled(&self.handler) {
            query = query.handler(h);
        }
        if let Some(k) = filled(&self.dedup_key) {
            query = query.dedup_key(k);
        }
        if let Some(k) = filled(&self.fairness_key) {
            query = query.fairness_key(k);
        }
        if let Some(text) = filled(&self.error) {
            query = query.error_text(text);
        }
        if let Some(k) = filled(&self.kind) {
            query = query.error_kind(kind(k)?);
        }
        if let Some(text) = filled(&self.payload) {
            query = query.payload_contains(Bytes::copy_from_slice(text.as_bytes()));
        }
        let from = filled(&self.from)
            .map(|t| form_time("from", t))
            .transpose()?;
        let until = filled(&self.until)
            .map(|t| form_time("until", t))
            .transpose()?;
        if from.is_some() || until.is_some() {
            query = query.submitted_between(from, until);
        }
        query.validate()?;
        Ok(query)
    }
}

/// A text field's value, unless it is absent or blank.
pub(crate) fn filled(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A time from a form or a query: RFC 3339, with or without the seconds and the zone (UTC
/// then), `T` or a space between date and time.
fn form_time(field: &str, text: &str) -> Result<Timestamp, WebError> {
    // `2026-12-07T10:30`, as a datetime-local input sends it.
    let date_and_minutes = text.len() == 16 && text.as_bytes().get(13) == Some(&b':');
    if date_and_minutes {
        parse_time(field, &format!("{text}:00"))
    } else {
        parse_time(field, text)
    }
}

/// What a bulk action does to each task it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BulkAction {
    /// Cancel blocked, pending and running tasks.
    Cancel,
    /// Run failed tasks again, each with a fresh attempt budget.
    Retry,
    /// Forget failed tasks.
    Purge,
    /// Move pending tasks to `to_group`.
    Move,
    /// Give pending tasks `priority`.
    Reprioritise,
    /// Put pending tasks ahead of the others of their priority.
    Front,
    /// Put pending tasks behind the others of their priority.
    Back,
}

impl BulkAction {
    /// The states of the tasks this action changes.
    pub(crate) fn applies_to(self) -> &'static [TaskState] {
        match self {
            BulkAction::Cancel => &[TaskState::Blocked, TaskState::Pending, TaskState::Running],
            BulkAction::Retry | BulkAction::Purge => &[TaskState::Failed],
            BulkAction::Move | BulkAction::Reprioritise | BulkAction::Front | BulkAction::Back => {
                &[TaskState::Pending]
            }
        }
    }
}

/// Which tasks a bulk action takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BulkScope {
    /// The tasks named in `ids`.
    Selected,
    /// Every task `filter` matches (all of them, not a page).
    Filter,
}

/// A bulk action on tasks: on a selection (`ids`) or on everything a filter matches.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    /// What to do.
    pub action: BulkAction,
    /// Which tasks: `selected` (`ids`) or `filter`. Default: `ids` when given, else
    /// `filter`.
    #[serde(default)]
    pub scope: Option<BulkScope>,
    /// The selected tasks (at most 10,000).
    #[serde(default)]
    pub ids: Vec<String>,
    /// The tasks to act on: all that match.
    #[serde(default)]
    pub filter: Option<TaskFilter>,
    /// For `move`: the group the tasks go to.
    #[serde(default)]
    pub to_group: Option<String>,
    /// For `reprioritise`: the priority they take.
    #[serde(default)]
    pub priority: Option<i32>,
    /// Count what the action would change, and change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// One minute of history.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Minute {
    /// The minute's start.
    pub minute: String,
    /// Tasks accepted in it.
    pub accepted: u64,
    /// Attempts started in it.
    pub started: u64,
    /// Tasks that succeeded in it.
    pub succeeded: u64,
    /// Tasks that failed for good in it.
    pub failed: u64,
    /// Tasks cancelled in it.
    pub cancelled: u64,
    /// Tasks waiting at its end (now, for the current minute).
    pub pending: u64,
}

impl From<&mawex_api::MinuteCounts> for Minute {
    fn from(m: &mawex_api::MinuteCounts) -> Self {
        Minute {
            minute: time(m.minute),
            accepted: m.accepted,
            started: m.started,
            succeeded: m.succeeded,
            failed: m.failed,
            cancelled: m.cancelled,
            pending: m.pending,
        }
    }
}

/// How many tasks an action matched (and acted on, unless it was a dry run).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Matched {
    /// How many matched.
    pub count: u64,
    /// Nothing was done: a dry run.
    pub dry_run: bool,
}

/// A group's settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupSettingsBody {
    /// Its tasks are accepted and wait; none starts.
    #[serde(default)]
    pub paused: bool,
    /// At most this many run at once, across all pods.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// At most this many start a second, on average.
    #[serde(default)]
    pub rate_per_second: Option<u32>,
    /// Starts allowed at once after a quiet spell (default: `rate_per_second`).
    #[serde(default)]
    pub rate_burst: Option<u32>,
    /// Attempts in all for its tasks that name no policy of their own.
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

impl From<&GroupSettings> for GroupSettingsBody {
    fn from(s: &GroupSettings) -> Self {
        GroupSettingsBody {
            paused: s.paused,
            max_concurrency: s.max_concurrency,
            rate_per_second: s.rate.as_ref().map(|r| r.per_second),
            rate_burst: s.rate.as_ref().map(|r| r.burst),
            max_attempts: s.retry.as_ref().map(|r| r.max_attempts),
        }
    }
}

impl GroupSettingsBody {
    pub(crate) fn settings(&self) -> Result<GroupSettings, WebError> {
        if self.rate_burst.is_some() && self.rate_per_second.is_none() {
            return Err(WebError::BadRequest(
                "rate_burst: only with rate_per_second".into(),
            ));
        }
        let settings = GroupSettings::default()
            .with_paused(self.paused)
            .with_max_concurrency(self.max_concurrency)
            .with_rate(
                self.rate_per_second
                    .map(|rate| RateLimit::new(rate, self.rate_burst.unwrap_or(rate))),
            )
            .with_retry(self.max_attempts.map(RetryPolicy::new));
        settings.validate()?;
        Ok(settings)
    }
}

/// Changes to a group's settings: a field left out stays as it is; `null` turns a limit off.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupSettingsPatch {
    /// Pause (`true`) or resume (`false`) it.
    #[serde(default)]
    pub paused: Option<bool>,
    /// At most this many run at once, across all pods (`null`: any number).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub max_concurrency: Option<Option<u32>>,
    /// At most this many start a second, on average (`null`: no rate limit).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub rate_per_second: Option<Option<u32>>,
    /// Starts allowed at once after a quiet spell (`null`: as many as the rate).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub rate_burst: Option<Option<u32>>,
}

/// A field that is present, `null` or not: `Some(None)` for `null`, told apart from a
/// missing field (`None`, by `#[serde(default)]`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

impl GroupSettingsPatch {
    /// `current` with these changes.
    pub(crate) fn apply(&self, current: GroupSettings) -> Result<GroupSettings, WebError> {
        let rate = current.rate;
        let mut settings = current;
        if let Some(paused) = self.paused {
            settings = settings.with_paused(paused);
        }
        if let Some(max) = self.max_concurrency {
            settings = settings.with_max_concurrency(max);
        }
        let rate = match (self.rate_per_second, self.rate_burst) {
            (None, None) => rate,
            (Some(None), None) => None,
            (Some(None), Some(_)) => {
                return Err(WebError::BadRequest(
                    "rate_burst: not with rate_per_second null (no rate limit)".into(),
                ))
            }
            // The burst kept unless named: a new rate with the burst it had (or its own).
            (Some(Some(per_second)), None) => Some(RateLimit::new(
                per_second,
                rate.map_or(per_second, |r| r.burst),
            )),
            (Some(Some(per_second)), Some(burst)) => {
                Some(RateLimit::new(per_second, burst.unwrap_or(per_second)))
            }
            (None, Some(burst)) => match rate {
                Some(rate) => Some(RateLimit::new(
                    rate.per_second,
                    burst.unwrap_or(rate.per_second),
                )),
                None => {
                    return Err(WebError::BadRequest(
                        "rate_burst: the group has no rate_per_second".into(),
                    ))
                }
            },
        };
        settings = settings.with_rate(rate);
        settings.validate()?;
        Ok(settings)
    }
}

/// A group: its tasks by state and its settings.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Group {
    /// Its name.
    pub group: String,
    /// Tasks waiting.
    pub pending: u64,
    /// Tasks running.
    pub running: u64,
    /// Retained tasks that succeeded.
    pub succeeded: u64,
    /// Retained tasks that failed.
    pub failed: u64,
    /// Retained tasks that were cancelled.
    pub cancelled: u64,
    /// Tasks waiting for the tasks they run after.
    pub blocked: u64,
    /// Its settings.
    pub settings: GroupSettingsBody,
    /// Recent mean run time, in milliseconds.
    pub mean_run_time_ms: Option<u64>,
    /// Median wait from ready to started of its last (up to 1,000) tasks, in milliseconds.
    pub wait_p50_ms: Option<u64>,
    /// 95th percentile of the same waits.
    pub wait_p95_ms: Option<u64>,
    /// Median run of its last (up to 1,000) attempts, in milliseconds.
    pub run_p50_ms: Option<u64>,
    /// 95th percentile of the same runs.
    pub run_p95_ms: Option<u64>,
}

impl From<&GroupView> for Group {
    fn from(g: &GroupView) -> Self {
        Group {
            group: g.group.to_string(),
            pending: g.pending,
            running: g.running,
            succeeded: g.succeeded,
            failed: g.failed,
            cancelled: g.cancelled,
            blocked: g.blocked,
            settings: GroupSettingsBody::from(&g.settings),
            mean_run_time_ms: g.mean_run_time.map(millis),
            wait_p50_ms: g.times.wait_p50.map(millis),
            wait_p95_ms: g.times.wait_p95.map(millis),
            run_p50_ms: g.times.run_p50.map(millis),
            run_p95_ms: g.times.run_p95.map(millis),
        }
    }
}

/// A connected pod.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Pod {
    /// Its id.
    pub id: String,
    /// The groups it serves.
    pub groups: Vec<String>,
    /// Attempts it runs at once.
    pub slots: u32,
    /// Attempts running now.
    pub running: u32,
    /// Leases it holds (running and queued).
    pub held: u32,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Where other pods reach it.
    pub address: Option<String>,
    /// CPU use, in thousandths of a core.
    pub cpu_permille: u32,
    /// Memory use, in bytes.
    pub memory_bytes: u64,
    /// When it connected.
    pub connected_at: String,
    /// When it was last heard.
    pub last_heartbeat: String,
    /// It takes no new work.
    pub draining: bool,
}

impl From<&PodView> for Pod {
    fn from(p: &PodView) -> Self {
        Pod {
            id: p.id.to_string(),
            groups: p.groups.iter().map(ToString::to_string).collect(),
            slots: p.slots,
            running: p.running,
            held: p.held,
            labels: p.labels.clone(),
            address: p.address.clone(),
            cpu_permille: p.cpu_permille,
            memory_bytes: p.memory_bytes,
            connected_at: time(p.connected_at),
            last_heartbeat: time(p.last_heartbeat),
            draining: p.draining,
        }
    }
}

/// A cron schedule to create.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    /// Its name (its identity).
    pub name: String,
    /// A cron expression of 5 fields, or 6 with seconds first.
    pub cron: String,
    /// The IANA time zone it is read in (default `UTC`).
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Run once for ticks missed while the master was down (default: skip them).
    #[serde(default)]
    pub run_missed_once: bool,
    /// The task submitted at each tick (its id is derived from the tick).
    pub task: NewTask,
}

impl NewSchedule {
    pub(crate) fn spec(self) -> Result<ScheduleSpec, WebError> {
        if self.task.id.is_some() {
            return Err(WebError::BadRequest(
                "task.id: a schedule's tasks take ids derived from their ticks".into(),
            ));
        }
        let name = schedule_name(&self.name)?;
        let mut spec = ScheduleSpec::new(name, self.cron, self.task.spec()?);
        if let Some(zone) = self.time_zone {
            spec = spec.in_time_zone(zone);
        }
        if self.run_missed_once {
            spec = spec.on_missed(MissedTicks::RunOnce);
        }
        Ok(spec)
    }
}

pub(crate) fn schedule_name(text: &str) -> Result<ScheduleName, WebError> {
    ScheduleName::new(text).map_err(|e| WebError::BadRequest(format!("schedule {text:?}: {e}")))
}

/// A schedule as the master knows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Schedule {
    /// Its name.
    pub name: String,
    /// Its cron expression.
    pub cron: String,
    /// The time zone it is read in.
    pub time_zone: String,
    /// Ticks missed while the master was down run once.
    pub run_missed_once: bool,
    /// The group of its tasks.
    pub group: String,
    /// The handler of its tasks.
    pub handler: String,
    /// It does not fire.
    pub paused: bool,
    /// How many times it fired.
    pub fired: u64,
    /// The tick it last fired for.
    pub last_tick: Option<String>,
    /// The task of that tick.
    pub last_task: Option<String>,
    /// Its next tick (whether paused or not), RFC 3339.
    pub next_tick: Option<String>,
}

impl From<&ScheduleView> for Schedule {
    fn from(v: &ScheduleView) -> Self {
        Schedule {
            name: v.spec.name.to_string(),
            cron: v.spec.cron.clone(),
            time_zone: v.spec.time_zone.clone(),
            run_missed_once: v.spec.missed == MissedTicks::RunOnce,
            group: v.spec.task.group.to_string(),
            handler: v.spec.task.handler.clone(),
            paused: v.paused,
            fired: v.fired,
            last_tick: v.last_tick.map(time),
            last_task: v.last_task().map(|id| id.to_string()),
            next_tick: v.next_tick.map(time),
        }
    }
}

/// A broadcast to fire: a task run on every pod of a group (or plain hosts), each target
/// pulling from the origin or from a target that finished.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBroadcast {
    /// The app (one broadcast per app at a time).
    pub app: String,
    /// The group whose pods are the targets (or run the steps, with `hosts`).
    pub group: String,
    /// The handler each target runs.
    pub handler: String,
    /// Its payload.
    #[serde(default)]
    pub payload: Option<Body>,
    /// The version (default: the app's last plus one).
    #[serde(default)]
    pub version: Option<String>,
    /// A fixed tree with this many children per target (default: pull, 5 per source).
    #[serde(default)]
    pub tree_branches: Option<u32>,
    /// Pulls one source serves at once.
    #[serde(default)]
    pub per_source: Option<u32>,
    /// Only pods with all these labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Only pods whose id matches this glob.
    #[serde(default)]
    pub pods: Option<String>,
    /// What targets pulling from the origin are told it is.
    #[serde(default)]
    pub origin: Option<String>,
    /// Plain hosts instead of the group's pods.
    #[serde(default)]
    pub hosts: Vec<String>,
}

impl NewBroadcast {
    pub(crate) fn spec(self) -> Result<BroadcastSpec, WebError> {
        let payload = match self.payload {
            Some(body) => body.into_bytes("payload")?,
            None => Bytes::new(),
        };
        let mut spec = BroadcastSpec::new(self.app, group("group", &self.group)?, self.handler)
            .with_payload(payload)
            .with_hosts(self.hosts);
        if let Some(version) = self.version {
            spec = spec.with_version(version);
        }
        spec = match (self.tree_branches, self.per_source) {
            (Some(_), Some(_)) => {
                return Err(WebError::BadRequest(
                    "tree_branches and per_source: give one, not both".into(),
                ))
            }
            (Some(branches), None) => spec.with_strategy(Strategy::Tree { branches }),
            (None, Some(per_source)) => spec.with_strategy(Strategy::Pull { per_source }),
            (None, None) => spec,
        };
        if let Some(origin) = self.origin {
            spec = spec.with_origin_address(origin);
        }
        if !self.labels.is_empty() || self.pods.is_some() {
            let mut filter = TargetFilter::default();
            filter.labels = self.labels;
            filter.name_pattern = self.pods;
            spec = spec.with_filter(filter);
        }
        spec.validate()?;
        Ok(spec)
    }
}

/// A target of a broadcast.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Target {
    /// The pod (or host).
    pub pod: String,
    /// The version it has.
    pub version: Option<String>,
    /// `waiting`, `running`, `done`, `failed`, `already-applied` or `cancelled`.
    pub state: &'static str,
    /// Where it pulled from: `origin` or a pod.
    pub source: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// When its attempt started.
    pub started_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
    /// Its last error.
    pub error: Option<ErrorBody>,
}

/// A broadcast and the progress of each of its targets.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Broadcast {
    /// Its id.
    pub id: u64,
    /// The app.
    pub app: String,
    /// The version it brings.
    pub version: String,
    /// The group.
    pub group: String,
    /// When it was fired.
    pub fired_at: String,
    /// When it finished.
    pub finished_at: Option<String>,
    /// It was aborted (its lock cleared).
    pub aborted: bool,
    /// Its targets.
    pub targets: Vec<Target>,
}

impl From<&BroadcastView> for Broadcast {
    fn from(v: &BroadcastView) -> Self {
        Broadcast {
            id: v.id,
            app: v.app.clone(),
            version: v.version.clone(),
            group: v.group.to_string(),
            fired_at: time(v.fired_at),
            finished_at: v.finished_at.map(time),
            aborted: v.aborted,
            targets: v
                .targets
                .iter()
                .map(|t| Target {
                    pod: t.pod.to_string(),
                    version: t.version.clone(),
                    state: t.state.name(),
                    source: t.source.as_ref().map(|source| match source {
                        mawex_api::Source::Pod(pod) => pod.to_string(),
                        _ => "origin".to_owned(),
                    }),
                    attempts: t.attempts,
                    started_at: t.started_at.map(time),
                    finished_at: t.finished_at.map(time),
                    error: t.error.as_ref().map(ErrorBody::from),
                })
                .collect(),
        }
    }
}

/// One page of broadcasts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BroadcastPage {
    /// The broadcasts, oldest first.
    pub broadcasts: Vec<Broadcast>,
    /// Pass as `after` for the next page; absent on the last.
    pub next: Option<u64>,
}
