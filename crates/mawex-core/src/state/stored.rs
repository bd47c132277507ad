//! The types the journal writes: what events and snapshots hold, owned by the journal.
//!
//! The API types (`mawex_api::TaskSpec`, `Outcome`, …) are free to grow: a field added to one
//! of them changes nothing written here until the stored type below gains it too, which is a
//! format change (see ARCHITECTURE.md, "Changing the journal format"). This module is the one
//! place where the two meet: every conversion between an API type and its stored form is in
//! it, in both directions.
//!
//! Shared with the API, because their encoding is fixed by contract and pinned by
//! `codec::tests::shared_primitives_encode_as_pinned`: the ids and names (`TaskId`,
//! `GroupName`, `ScheduleName`, `PodId`, `BroadcastId`), `Timestamp`, `Attempt`, `Bytes`,
//! `Duration`, and the fieldless enums `TaskState`, `ErrorKind`, `TargetState`,
//! `QueuePosition` and `MissedTicks`, whose variants only ever grow at the end.
//!
//! The layout reproduces journal format 3 field for field, so records and snapshots written
//! before this module existed decode through it unchanged (the golden files check it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mawex_api::pod::AttemptRef as ApiAttemptRef;
use mawex_api::{
    Attempt, DependencyPolicy, ErrorKind, GraphId, GroupName, MissedTicks, PodId, QueuePosition,
    ScheduleName, TaskId, Timestamp,
};
use serde::{Deserialize, Serialize};

/// One attempt of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptRef {
    /// The task.
    pub task: TaskId,
    /// Its attempt number.
    pub attempt: Attempt,
}

#[doc(hidden)]
impl From<ApiAttemptRef> for AttemptRef {
    fn from(a: ApiAttemptRef) -> Self {
        AttemptRef {
            task: a.task,
            attempt: a.attempt,
        }
    }
}

#[doc(hidden)]
impl From<AttemptRef> for ApiAttemptRef {
    fn from(a: AttemptRef) -> Self {
        ApiAttemptRef {
            task: a.task,
            attempt: a.attempt,
        }
    }
}

/// Resource limits of an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock limit.
    pub timeout: Option<Duration>,
    /// Memory limit.
    pub memory_bytes: Option<u64>,
}

#[doc(hidden)]
impl From<mawex_api::Limits> for Limits {
    fn from(l: mawex_api::Limits) -> Self {
        Limits {
            timeout: l.timeout,
            memory_bytes: l.memory_bytes,
        }
    }
}

#[doc(hidden)]
impl From<Limits> for mawex_api::Limits {
    fn from(l: Limits) -> Self {
        let mut limits = mawex_api::Limits::default();
        limits.timeout = l.timeout;
        limits.memory_bytes = l.memory_bytes;
        limits
    }
}

/// How often and how soon a failed task is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all.
    pub max_attempts: u32,
    /// Delay cap after the first failure.
    pub base_delay: Duration,
    /// Delay cap after any failure.
    pub max_delay: Duration,
}

#[doc(hidden)]
impl From<mawex_api::RetryPolicy> for RetryPolicy {
    fn from(p: mawex_api::RetryPolicy) -> Self {
        RetryPolicy {
            max_attempts: p.max_attempts,
            base_delay: p.base_delay,
            max_delay: p.max_delay,
        }
    }
}

#[doc(hidden)]
impl From<RetryPolicy> for mawex_api::RetryPolicy {
    fn from(p: RetryPolicy) -> Self {
        mawex_api::RetryPolicy::new(p.max_attempts)
            .with_max_delay(p.max_delay)
            .with_base_delay(p.base_delay)
    }
}

/// A task's deduplication key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dedup {
    /// The job's identity.
    pub key: String,
    /// How long after it finished a task still counts as a duplicate.
    pub window: Duration,
}

thread_local! {
    /// The group name and the handler name this thread decoded last. The tasks of a
    /// snapshot or a record mostly share a few of each, so most decodes reuse them: no
    /// validation, no allocation, and the tasks share one string. A cache of one name of each
    /// per thread: it changes no value.
    static LAST_GROUP: std::cell::RefCell<Option<GroupName>> =
        const { std::cell::RefCell::new(None) };
    static LAST_HANDLER: std::cell::RefCell<Option<Arc<str>>> =
        const { std::cell::RefCell::new(None) };
}

/// One name cached per thread (see [`LAST_GROUP`]).
type Recent<T> = std::thread::LocalKey<std::cell::RefCell<Option<T>>>;

/// The value `last` holds if `same` says it is the one wanted, else the one `make` makes,
/// which `last` then holds.
fn recent<T: Clone, E>(
    last: &'static Recent<T>,
    same: impl Fn(&T) -> bool,
    make: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    last.with(|last| {
        let mut last = last.borrow_mut();
        if let Some(value) = last.as_ref().filter(|v| same(v)) {
            return Ok(value.clone());
        }
        let value = make()?;
        *last = Some(value.clone());
        Ok(value)
    })
}

/// Decodes a string into `T` through `make`, reusing the value `last` holds when it was made
/// from the same string.
fn decode_recent<'de, D, T>(
    decoder: D,
    last: &'static Recent<T>,
    as_str: fn(&T) -> &str,
    make: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Clone + 'static,
{
    struct Name<T: 'static> {
        last: &'static Recent<T>,
        as_str: fn(&T) -> &str,
        make: fn(&str) -> Result<T, String>,
    }
    impl<T: Clone + 'static> serde::de::Visitor<'_> for Name<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a name")
        }
        fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<T, E> {
            recent(
                self.last,
                |v| (self.as_str)(v) == name,
                || (self.make)(name).map_err(E::custom),
            )
        }
    }
    decoder.deserialize_str(Name { last, as_str, make })
}

/// Decodes a task's group name as `GroupName`'s own `Deserialize` does (the same bytes, the
/// same validation), reusing the last one decoded when it is the same.
fn decode_group<'de, D: serde::Deserializer<'de>>(decoder: D) -> Result<GroupName, D::Error> {
    decode_recent(decoder, &LAST_GROUP, GroupName::as_str, |name| {
        GroupName::new(name).map_err(|e| e.to_string())
    })
}

/// Decodes a task's handler name (a string, as it was always written), reusing the last one
/// decoded when it is the same.
fn decode_handler<'de, D: serde::Deserializer<'de>>(decoder: D) -> Result<Arc<str>, D::Error> {
    decode_recent(decoder, &LAST_HANDLER, |h| h, |name| Ok(Arc::from(name)))
}

/// `group`, or the equal one this thread saw last, so that tasks share it.
fn shared_group(group: GroupName) -> GroupName {
    let shared = recent(
        &LAST_GROUP,
        |seen| *seen == group,
        || Ok::<_, std::convert::Infallible>(group.clone()),
    );
    shared.unwrap_or_else(|never| match never {})
}

/// `name` as a shared string: the one this thread made last if it is the same.
fn shared_handler(name: &str) -> Arc<str> {
    let shared = recent(
        &LAST_HANDLER,
        |seen| **seen == *name,
        || Ok::<_, std::convert::Infallible>(Arc::from(name)),
    );
    shared.unwrap_or_else(|never| match never {})
}

/// A task as accepted.
///
/// In memory, the settings most tasks leave unset (limits, retry policy, start time, dedup
/// key, sandbox) are one box, absent when all are unset: a retained task pays 8 bytes for
/// them instead of 96. On disk it is the flat layout of every format since 3 (see
/// `TaskSpecFields`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    /// Its id.
    pub id: TaskId,
    /// The group whose pods run it.
    pub group: GroupName,
    /// The handler's name (shared: most tasks name one of a few handlers).
    pub handler: Arc<str>,
    /// Its input.
    pub payload: Bytes,
    /// Higher runs first.
    pub priority: i32,
    /// Fair-queueing key (a boxed `str`: written as a string, and 8 bytes less a task than a
    /// `String`). Not among the options: every change of a task's state reads it.
    pub fairness_key: Option<Box<str>>,
    /// The rest; `None` when every one is unset (kept so, so that equal specs compare equal).
    options: Option<Box<TaskOptions>>,
}

/// The settings of a task that most tasks leave unset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskOptions {
    /// Resource limits.
    pub limits: Limits,
    /// Its own retry policy.
    pub retry: Option<RetryPolicy>,
    /// Not before this time.
    pub run_at: Option<Timestamp>,
    /// Deduplication.
    pub dedup: Option<Dedup>,
    /// Named sandbox.
    pub sandbox: Option<Box<str>>,
}

/// No limits, for a task that sets none.
const NO_LIMITS: Limits = Limits {
    timeout: None,
    memory_bytes: None,
};

impl TaskSpec {
    /// A spec; the options are boxed only when one of them is set.
    pub fn new(
        id: TaskId,
        group: GroupName,
        handler: Arc<str>,
        payload: Bytes,
        priority: i32,
        fairness_key: Option<Box<str>>,
        options: TaskOptions,
    ) -> Self {
        let options = (options != TaskOptions::default()).then(|| Box::new(options));
        TaskSpec {
            id,
            group,
            handler,
            payload,
            priority,
            fairness_key,
            options,
        }
    }

    /// Resource limits.
    pub fn limits(&self) -> &Limits {
        self.options.as_ref().map_or(&NO_LIMITS, |o| &o.limits)
    }

    /// Its own retry policy.
    pub fn retry(&self) -> Option<&RetryPolicy> {
        self.options.as_ref()?.retry.as_ref()
    }

    /// Not before this time.
    pub fn run_at(&self) -> Option<Timestamp> {
        self.options.as_ref()?.run_at
    }

    /// Deduplication.
    pub fn dedup(&self) -> Option<&Dedup> {
        self.options.as_ref()?.dedup.as_ref()
    }

    /// Named sandbox.
    pub fn sandbox(&self) -> Option<&str> {
        self.options.as_ref()?.sandbox.as_deref()
    }

    /// Unsets the start time (a cron task fires now).
    pub fn clear_run_at(&mut self) {
        if let Some(mut options) = self.options.take().map(|o| *o) {
            options.run_at = None;
            self.options = (options != TaskOptions::default()).then(|| Box::new(options));
        }
    }
}

/// A [`TaskSpec`] as written: flat, field for field the layout of every format since 3.
/// Borrowed to encode, owned to decode.
#[derive(Serialize, Deserialize)]
struct TaskSpecFields<G, H, B, L, R, D, S> {
    id: TaskId,
    group: G,
    handler: H,
    payload: B,
    priority: i32,
    limits: L,
    retry: Option<R>,
    run_at: Option<Timestamp>,
    dedup: Option<D>,
    fairness_key: Option<S>,
    sandbox: Option<S>,
}

impl Serialize for TaskSpec {
    fn serialize<Ser: serde::Serializer>(&self, encoder: Ser) -> Result<Ser::Ok, Ser::Error> {
        TaskSpecFields {
            id: self.id,
            group: &self.group,
            handler: &*self.handler,
            payload: &self.payload,
            priority: self.priority,
            limits: self.limits(),
            retry: self.retry(),
            run_at: self.run_at(),
            dedup: self.dedup(),
            fairness_key: self.fairness_key.as_deref(),
            sandbox: self.sandbox(),
        }
        .serialize(encoder)
    }
}

impl<'de> Deserialize<'de> for TaskSpec {
    fn deserialize<De: serde::Deserializer<'de>>(decoder: De) -> Result<Self, De::Error> {
        let f: TaskSpecFields<Group, Handler, Bytes, Limits, RetryPolicy, Dedup, Box<str>> =
            TaskSpecFields::deserialize(decoder)?;
        Ok(TaskSpec::new(
            f.id,
            f.group.0,
            f.handler.0,
            f.payload,
            f.priority,
            f.fairness_key,
            TaskOptions {
                limits: f.limits,
                retry: f.retry,
                run_at: f.run_at,
                dedup: f.dedup,
                sandbox: f.sandbox,
            },
        ))
    }
}

/// A group name decoded through [`decode_group`].
struct Group(GroupName);

impl<'de> Deserialize<'de> for Group {
    fn deserialize<De: serde::Deserializer<'de>>(decoder: De) -> Result<Self, De::Error> {
        decode_group(decoder).map(Group)
    }
}

/// A handler name decoded through [`decode_handler`].
struct Handler(Arc<str>);

impl<'de> Deserialize<'de> for Handler {
    fn deserialize<De: serde::Deserializer<'de>>(decoder: De) -> Result<Self, De::Error> {
        decode_handler(decoder).map(Handler)
    }
}

#[doc(hidden)]
impl From<mawex_api::TaskSpec> for TaskSpec {
    fn from(s: mawex_api::TaskSpec) -> Self {
        TaskSpec::new(
            s.id,
            shared_group(s.group),
            shared_handler(&s.handler),
            s.payload,
            s.priority,
            s.fairness_key.map(String::into_boxed_str),
            TaskOptions {
                limits: s.limits.into(),
                retry: s.retry.map(Into::into),
                run_at: s.run_at,
                dedup: s.dedup.map(|d| Dedup {
                    key: d.key,
                    window: d.window,
                }),
                sandbox: s.sandbox.map(String::into_boxed_str),
            },
        )
    }
}

#[doc(hidden)]
impl From<TaskSpec> for mawex_api::TaskSpec {
    fn from(s: TaskSpec) -> Self {
        let options = s.options.map(|o| *o).unwrap_or_default();
        let mut spec = mawex_api::TaskSpec::new_with_id(s.id, s.group, &*s.handler, s.payload)
            .with_priority(s.priority)
            .with_limits(options.limits.into());
        spec.retry = options.retry.map(Into::into);
        spec.run_at = options.run_at;
        spec.dedup = options
            .dedup
            .map(|d| mawex_api::Dedup::new(d.key, d.window));
        spec.fairness_key = s.fairness_key.map(String::from);
        spec.sandbox = options.sandbox.map(String::from);
        spec
    }
}

/// Whether and when a failed attempt may be retried, as its executor said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryHint {
    /// As the retry policy says.
    Policy,
    /// Never.
    Never,
    /// After this delay.
    After(Duration),
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    /// The kind of failure.
    pub kind: ErrorKind,
    /// What happened.
    pub message: String,
    /// Whether and when to retry.
    pub retry: RetryHint,
}

#[doc(hidden)]
impl From<mawex_api::TaskError> for TaskError {
    fn from(e: mawex_api::TaskError) -> Self {
        TaskError {
            kind: e.kind,
            message: e.message,
            retry: match e.retry {
                mawex_api::RetryHint::Never => RetryHint::Never,
                mawex_api::RetryHint::After(d) => RetryHint::After(d),
                _ => RetryHint::Policy,
            },
        }
    }
}

#[doc(hidden)]
impl From<TaskError> for mawex_api::TaskError {
    fn from(e: TaskError) -> Self {
        let retry = match e.retry {
            RetryHint::Policy => mawex_api::RetryHint::Policy,
            RetryHint::Never => mawex_api::RetryHint::Never,
            RetryHint::After(d) => mawex_api::RetryHint::After(d),
        };
        mawex_api::TaskError::new(e.kind, e.message).with_retry(retry)
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// With this output.
    Succeeded(Bytes),
    /// With this error.
    Failed(TaskError),
    /// Cancelled.
    Cancelled,
}

#[doc(hidden)]
impl From<mawex_api::Outcome> for Outcome {
    fn from(o: mawex_api::Outcome) -> Self {
        match o {
            mawex_api::Outcome::Succeeded(b) => Outcome::Succeeded(b),
            mawex_api::Outcome::Failed(e) => Outcome::Failed(e.into()),
            // Outcome is non_exhaustive only for other crates; Cancelled is the last variant.
            _ => Outcome::Cancelled,
        }
    }
}

#[doc(hidden)]
impl From<Outcome> for mawex_api::Outcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Succeeded(b) => mawex_api::Outcome::Succeeded(b),
            Outcome::Failed(e) => mawex_api::Outcome::Failed(e.into()),
            Outcome::Cancelled => mawex_api::Outcome::Cancelled,
        }
    }
}

impl Outcome {
    /// The task state this outcome leaves.
    pub fn state(&self) -> mawex_api::TaskState {
        match self {
            Outcome::Succeeded(_) => mawex_api::TaskState::Succeeded,
            Outcome::Failed(_) => mawex_api::TaskState::Failed,
            Outcome::Cancelled => mawex_api::TaskState::Cancelled,
        }
    }
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptFailure {
    /// Which attempt.
    pub attempt: Attempt,
    /// How it failed.
    pub error: TaskError,
    /// When.
    pub at: Timestamp,
}

#[doc(hidden)]
impl From<AttemptFailure> for mawex_api::AttemptFailure {
    fn from(f: AttemptFailure) -> Self {
        mawex_api::AttemptFailure::new(f.attempt, f.error.into(), f.at)
    }
}

/// The recorded result of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task.
    pub id: TaskId,
    /// Its group.
    pub group: GroupName,
    /// The attempt that produced it.
    pub attempt: Attempt,
    /// Output or error.
    pub outcome: Outcome,
    /// When.
    pub finished_at: Timestamp,
    /// Position in the result stream.
    pub seq: u64,
}

#[doc(hidden)]
impl From<TaskResult> for mawex_api::TaskResult {
    fn from(r: TaskResult) -> Self {
        mawex_api::TaskResult::new(
            r.id,
            r.group,
            r.attempt,
            r.outcome.into(),
            r.finished_at,
            r.seq,
        )
    }
}

/// A group's rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Starts per second.
    pub per_second: u32,
    /// Starts allowed at once.
    pub burst: u32,
}

/// A group's dispatch settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GroupSettings {
    /// Paused: nothing starts.
    pub paused: bool,
    /// Running tasks at most.
    pub max_concurrency: Option<u32>,
    /// Rate limit.
    pub rate: Option<RateLimit>,
    /// The group's retry policy.
    pub retry: Option<RetryPolicy>,
}

#[doc(hidden)]
impl From<mawex_api::GroupSettings> for GroupSettings {
    fn from(g: mawex_api::GroupSettings) -> Self {
        GroupSettings {
            paused: g.paused,
            max_concurrency: g.max_concurrency,
            rate: g.rate.map(|r| RateLimit {
                per_second: r.per_second,
                burst: r.burst,
            }),
            retry: g.retry.map(Into::into),
        }
    }
}

#[doc(hidden)]
impl From<GroupSettings> for mawex_api::GroupSettings {
    fn from(g: GroupSettings) -> Self {
        let mut settings = mawex_api::GroupSettings::default();
        settings.paused = g.paused;
        settings.max_concurrency = g.max_concurrency;
        settings.rate = g
            .rate
            .map(|r| mawex_api::RateLimit::new(r.per_second, r.burst));
        settings.retry = g.retry.map(Into::into);
        settings
    }
}

/// A change to pending tasks.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PendingChange {
    /// Move to this group.
    pub group: Option<GroupName>,
    /// Set this priority.
    pub priority: Option<i32>,
    /// Move to the front or back.
    pub position: Option<QueuePosition>,
}

#[doc(hidden)]
impl From<mawex_api::PendingChange> for PendingChange {
    fn from(c: mawex_api::PendingChange) -> Self {
        PendingChange {
            group: c.group,
            priority: c.priority,
            position: c.position,
        }
    }
}

/// A cron schedule as created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    /// Its name.
    pub name: ScheduleName,
    /// The cron expression.
    pub cron: String,
    /// IANA time zone.
    pub time_zone: String,
    /// The task submitted at each tick.
    pub task: TaskSpec,
    /// What to do about ticks missed while the master was down.
    pub missed: MissedTicks,
}

#[doc(hidden)]
impl From<mawex_api::ScheduleSpec> for ScheduleSpec {
    fn from(s: mawex_api::ScheduleSpec) -> Self {
        ScheduleSpec {
            name: s.name,
            cron: s.cron,
            time_zone: s.time_zone,
            task: s.task.into(),
            missed: s.missed,
        }
    }
}

#[doc(hidden)]
impl From<ScheduleSpec> for mawex_api::ScheduleSpec {
    fn from(s: ScheduleSpec) -> Self {
        mawex_api::ScheduleSpec::new(s.name, s.cron, s.task.into())
            .in_time_zone(s.time_zone)
            .on_missed(s.missed)
    }
}

/// How broadcast targets find their source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Any finished pod with a free pull slot.
    Pull {
        /// Concurrent pulls one source serves at most.
        per_source: u32,
    },
    /// A fixed tree.
    Tree {
        /// Children per node.
        branches: u32,
    },
}

#[doc(hidden)]
impl From<mawex_api::Strategy> for Strategy {
    fn from(s: mawex_api::Strategy) -> Self {
        match s {
            mawex_api::Strategy::Tree { branches } => Strategy::Tree { branches },
            mawex_api::Strategy::Pull { per_source } => Strategy::Pull { per_source },
            // Strategy is non_exhaustive for other crates; a later one would need a stored
            // form before it could be fired. Until then it pulls one at a time, as dispatch
            // treats any strategy it does not know.
            _ => Strategy::Pull { per_source: 1 },
        }
    }
}

#[doc(hidden)]
impl From<Strategy> for mawex_api::Strategy {
    fn from(s: Strategy) -> Self {
        match s {
            Strategy::Pull { per_source } => mawex_api::Strategy::Pull { per_source },
            Strategy::Tree { branches } => mawex_api::Strategy::Tree { branches },
        }
    }
}

/// Where a target pulls from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Source {
    /// Whoever fired the broadcast.
    Origin,
    /// A pod that finished.
    Pod(PodId),
}

#[doc(hidden)]
impl From<mawex_api::Source> for Source {
    fn from(s: mawex_api::Source) -> Self {
        match s {
            mawex_api::Source::Origin => Source::Origin,
            mawex_api::Source::Pod(p) => Source::Pod(p),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Origin => f.write_str(mawex_api::broadcast::ORIGIN),
            Source::Pod(pod) => pod.fmt(f),
        }
    }
}

#[doc(hidden)]
impl From<Source> for mawex_api::Source {
    fn from(s: Source) -> Self {
        match s {
            Source::Origin => mawex_api::Source::Origin,
            Source::Pod(p) => mawex_api::Source::Pod(p),
        }
    }
}

/// Which pods a broadcast reaches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFilter {
    /// Labels a pod must carry.
    pub labels: BTreeMap<String, String>,
    /// A glob on the pod's name.
    pub name_pattern: Option<String>,
}

impl TargetFilter {
    /// Does the pod `id` with `labels` match?
    pub fn matches(&self, id: &PodId, labels: &BTreeMap<String, String>) -> bool {
        mawex_api::broadcast::pod_matches(&self.labels, self.name_pattern.as_deref(), id, labels)
    }
}

/// A broadcast as fired, with its version resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastSpec {
    /// The app.
    pub app: String,
    /// Its version.
    pub version: Option<String>,
    /// The group whose pods are the targets.
    pub group: GroupName,
    /// Which pods.
    pub filter: TargetFilter,
    /// The handler each target runs.
    pub handler: String,
    /// Its input.
    pub payload: Bytes,
    /// How targets find sources.
    pub strategy: Strategy,
    /// Where the origin serves from.
    pub origin_address: String,
    /// Retries per target.
    pub retry: Option<RetryPolicy>,
    /// Limits per target.
    pub limits: Limits,
    /// Named sandbox.
    pub sandbox: Option<String>,
    /// The app's lock lease.
    pub lock_ttl: Duration,
    /// Plain hosts as the targets (over ssh).
    pub hosts: Vec<String>,
}

#[doc(hidden)]
impl From<mawex_api::BroadcastSpec> for BroadcastSpec {
    fn from(b: mawex_api::BroadcastSpec) -> Self {
        BroadcastSpec {
            app: b.app,
            version: b.version,
            group: b.group,
            filter: TargetFilter {
                labels: b.filter.labels,
                name_pattern: b.filter.name_pattern,
            },
            handler: b.handler,
            payload: b.payload,
            strategy: b.strategy.into(),
            origin_address: b.origin_address,
            retry: b.retry.map(Into::into),
            limits: b.limits.into(),
            sandbox: b.sandbox,
            lock_ttl: b.lock_ttl,
            hosts: b.hosts,
        }
    }
}

#[doc(hidden)]
impl From<BroadcastSpec> for mawex_api::BroadcastSpec {
    fn from(b: BroadcastSpec) -> Self {
        let mut filter = mawex_api::TargetFilter::default();
        filter.labels = b.filter.labels;
        filter.name_pattern = b.filter.name_pattern;
        let mut spec = mawex_api::BroadcastSpec::new(b.app, b.group, b.handler)
            .with_strategy(b.strategy.into())
            .with_payload(b.payload)
            .with_origin_address(b.origin_address)
            .with_filter(filter);
        spec.version = b.version;
        spec.retry = b.retry.map(Into::into);
        spec.limits = b.limits.into();
        spec.sandbox = b.sandbox;
        spec.lock_ttl = b.lock_ttl;
        spec.hosts = b.hosts;
        spec
    }
}

impl BroadcastSpec {
    /// The task of one target: the broadcast's handler, payload, limits and retries, under
    /// the target's own id.
    pub(crate) fn target_task(&self, id: TaskId) -> TaskSpec {
        TaskSpec::new(
            id,
            self.group.clone(),
            self.handler.as_str().into(),
            self.payload.clone(),
            0,
            None,
            TaskOptions {
                limits: self.limits.clone(),
                retry: self.retry,
                sandbox: self.sandbox.as_deref().map(Box::from),
                ..TaskOptions::default()
            },
        )
    }
}

/// Who owns a pod id: the credential that registered it (record format 7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodOwner {
    /// Its token's id.
    pub token: Option<String>,
    /// Its client certificate's subject, with the subject's kind.
    pub certificate: Option<String>,
}

impl From<&mawex_api::pod::PodCredential> for PodOwner {
    fn from(c: &mawex_api::pod::PodCredential) -> Self {
        PodOwner {
            token: c.token.clone(),
            certificate: c.certificate.clone(),
        }
    }
}

/// A dependency of a task (record format 8): when the dependant may run, and whether the
/// dependency's result is one of its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// The task it runs after.
    pub task: TaskId,
    /// When (a fieldless API enum, shared: its variants only grow at the end).
    pub policy: DependencyPolicy,
    /// Whether `task`'s result is handed to the dependant.
    pub pass_output: bool,
}

/// What a task of a workflow adds to its spec (record format 8): kept beside the task, not
/// in it, so that a task without any writes what it always wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Links {
    /// The graph it is a node of, and its name there.
    pub graph: Option<(GraphId, Box<str>)>,
    /// What it runs after, in the order the spec named them.
    pub after: Box<[Edge]>,
    /// The most output bytes it may produce.
    pub output_limit: Option<u64>,
    /// Cancelled because this task failed or was cancelled (set by
    /// `TasksCancelledByDependency`, cleared when revived).
    pub cancelled_by: Option<TaskId>,
}

impl Links {
    /// The links of a task submitted as `spec` (none: `None`), in `graph` as `name`.
    pub fn of(spec: &mawex_api::TaskSpec, graph: Option<(GraphId, &str)>) -> Option<Links> {
        if spec.after.is_empty() && spec.output_limit.is_none() && graph.is_none() {
            return None;
        }
        Some(Links {
            graph: graph.map(|(id, name)| (id, Box::from(name))),
            after: spec
                .after
                .iter()
                .map(|d| Edge {
                    task: d.task,
                    policy: d.policy,
                    pass_output: d.pass_output,
                })
                .collect(),
            output_limit: spec.output_limit,
            cancelled_by: None,
        })
    }

    /// The dependencies as the API names them.
    pub fn dependencies(&self) -> Vec<mawex_api::Dependency> {
        self.after
            .iter()
            .map(|e| {
                let mut d = mawex_api::Dependency::on(e.task).with_policy(e.policy);
                d.pass_output = e.pass_output;
                d
            })
            .collect()
    }
}

/// A workflow graph as accepted (record format 8): its nodes by name, in the order they were
/// submitted (dependencies first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphRecord {
    /// Its id.
    pub id: GraphId,
    /// Its nodes' tasks.
    pub nodes: Vec<TaskId>,
    /// When it was accepted.
    pub at: Timestamp,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mawex_api::{GroupName, PodId, ScheduleName, TaskId, Timestamp};

    use super::*;

    fn group() -> GroupName {
        GroupName::new("g").expect("valid")
    }

    /// A task with every field away from its default.
    fn full_task() -> mawex_api::TaskSpec {
        mawex_api::TaskSpec::new(group(), "h", "payload")
            .with_id(TaskId::new())
            .with_priority(-4)
            .with_limits(
                mawex_api::Limits::default()
                    .with_timeout(Duration::from_secs(3))
                    .with_memory_bytes(1 << 20),
            )
            .with_retry(
                mawex_api::RetryPolicy::new(5)
                    .with_base_delay(Duration::from_millis(20))
                    .with_max_delay(Duration::from_secs(9)),
            )
            .with_run_at(Timestamp(77))
            .with_dedup("key", Duration::from_secs(60))
            .with_fairness_key("tenant-1")
            .with_sandbox("forked")
    }

    /// The options box exists only when an option is set, so two specs that say the same
    /// compare equal however they were made, and the encoding is the flat one either way.
    #[test]
    fn a_spec_boxes_its_options_only_when_one_is_set() {
        let bare = TaskSpec::from(mawex_api::TaskSpec::new(group(), "h", "p"));
        assert!(bare.options.is_none());
        let full = TaskSpec::from(full_task());
        assert!(full.options.is_some());
        let config = bincode::config::standard();
        for spec in [bare, full] {
            let bytes = bincode::serde::encode_to_vec(&spec, config).expect("encodes");
            let (back, used): (TaskSpec, usize) =
                bincode::serde::decode_from_slice(&bytes, config).expect("decodes");
            assert_eq!((back, used), (spec, bytes.len()));
        }
        let mut timed =
            TaskSpec::from(mawex_api::TaskSpec::new(group(), "h", "p").with_run_at(Timestamp(9)));
        timed.clear_run_at();
        assert_eq!(timed.run_at(), None);
        assert!(timed.options.is_none(), "emptied options are dropped");
        assert!(std::mem::size_of::<TaskSpec>() <= 112, "a spec grew");
    }

    /// Every API value, converted to its stored form and back, is what it was: nothing a
    /// client said is lost on the way to the journal.
    #[test]
    fn conversions_round_trip() {
        let task = full_task();
        assert_eq!(
            mawex_api::TaskSpec::from(TaskSpec::from(task.clone())),
            task
        );

        for hint in [
            mawex_api::RetryHint::Policy,
            mawex_api::RetryHint::Never,
            mawex_api::RetryHint::After(Duration::from_millis(5)),
        ] {
            let error =
                mawex_api::TaskError::new(mawex_api::ErrorKind::Crashed, "x").with_retry(hint);
            let outcome = mawex_api::Outcome::Failed(error.clone());
            assert_eq!(
                mawex_api::TaskError::from(TaskError::from(error.clone())),
                error
            );
            assert_eq!(
                mawex_api::Outcome::from(Outcome::from(outcome.clone())),
                outcome
            );
        }
        for outcome in [
            mawex_api::Outcome::Succeeded("out".into()),
            mawex_api::Outcome::Cancelled,
        ] {
            assert_eq!(
                mawex_api::Outcome::from(Outcome::from(outcome.clone())),
                outcome
            );
        }

        let settings = mawex_api::GroupSettings::default()
            .with_paused(true)
            .with_max_concurrency(Some(3));
        let mut settings = settings;
        settings.rate = Some(mawex_api::RateLimit::new(10, 20));
        settings.retry = Some(mawex_api::RetryPolicy::new(2));
        assert_eq!(
            mawex_api::GroupSettings::from(GroupSettings::from(settings)),
            settings
        );

        let schedule = mawex_api::ScheduleSpec::new(
            ScheduleName::new("nightly").expect("valid"),
            "0 3 * * *",
            task,
        )
        .in_time_zone("Europe/Prague")
        .on_missed(mawex_api::MissedTicks::RunOnce);
        assert_eq!(
            mawex_api::ScheduleSpec::from(ScheduleSpec::from(schedule.clone())),
            schedule
        );

        let mut filter = mawex_api::TargetFilter::default();
        filter.labels.insert("zone".into(), "a".into());
        filter.name_pattern = Some("web-*".into());
        let mut broadcast = mawex_api::BroadcastSpec::new("site", group(), "deploy")
            .with_version("v2")
            .with_payload("artifact")
            .with_strategy(mawex_api::Strategy::Tree { branches: 3 })
            .with_origin_address("origin:873")
            .with_retry(mawex_api::RetryPolicy::new(4))
            .with_filter(filter)
            .with_hosts(["h1", "h2"]);
        broadcast.limits = mawex_api::Limits::default().with_timeout(Duration::from_secs(1));
        broadcast.sandbox = Some("ssh".into());
        broadcast.lock_ttl = Duration::from_secs(42);
        assert_eq!(
            mawex_api::BroadcastSpec::from(BroadcastSpec::from(broadcast.clone())),
            broadcast
        );
        for strategy in [
            mawex_api::Strategy::Pull { per_source: 2 },
            mawex_api::Strategy::Tree { branches: 5 },
        ] {
            assert_eq!(
                mawex_api::Strategy::from(Strategy::from(strategy)),
                strategy
            );
        }
        for source in [
            mawex_api::Source::Origin,
            mawex_api::Source::Pod(PodId::new("p").expect("valid")),
        ] {
            assert_eq!(
                mawex_api::Source::from(Source::from(source.clone())),
                source
            );
        }
        let attempt = mawex_api::pod::AttemptRef {
            task: TaskId::new(),
            attempt: mawex_api::Attempt(4),
        };
        assert_eq!(ApiAttemptRef::from(AttemptRef::from(attempt)), attempt);
    }
}
