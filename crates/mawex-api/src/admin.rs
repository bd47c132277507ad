//! Queue administration: per-group settings and the failed queue.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::failure::ErrorKind;
use crate::ids::{GroupName, ScheduleName, TaskId};

/// The most a group's concurrency ceiling may be.
pub const MAX_GROUP_CONCURRENCY: u32 = 1_000_000;

/// How a consumer group is dispatched. Kept in the journal: settings survive restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GroupSettings {
    /// Paused: its tasks are accepted and wait, none starts. Running ones finish.
    pub paused: bool,
    /// At most this many of its tasks run at once, across all pods.
    pub max_concurrency: Option<u32>,
    /// At most this many of its tasks start per second, on average (token bucket).
    pub rate: Option<RateLimit>,
    /// Retries of its tasks that name no policy of their own (else the master's default).
    pub retry: Option<crate::task::RetryPolicy>,
}

/// A token bucket: `per_second` tokens a second, at most `burst` saved up. Each start takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RateLimit {
    /// Sustained starts per second.
    pub per_second: u32,
    /// Starts allowed at once after a quiet spell.
    pub burst: u32,
}

impl RateLimit {
    /// `per_second` starts a second with bursts of `burst`.
    pub fn new(per_second: u32, burst: u32) -> Self {
        RateLimit { per_second, burst }
    }
}

impl GroupSettings {
    /// The same settings, paused or not.
    pub fn with_paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }

    /// The same settings with a concurrency ceiling (`None`: none).
    pub fn with_max_concurrency(mut self, max: Option<u32>) -> Self {
        self.max_concurrency = max;
        self
    }

    /// The same settings with a default retry policy for the group's tasks.
    pub fn with_retry(mut self, retry: Option<crate::task::RetryPolicy>) -> Self {
        self.retry = retry;
        self
    }

    /// The same settings with a start rate limit (`None`: none).
    pub fn with_rate(mut self, rate: Option<RateLimit>) -> Self {
        self.rate = rate;
        self
    }

    /// Checks the bounds.
    ///
    /// # Errors
    /// [`ApiError::InvalidArgument`] naming the field.
    pub fn validate(&self) -> Result<(), ApiError> {
        if let Some(retry) = &self.retry {
            retry.validate()?;
        }
        if let Some(rate) = self.rate {
            if rate.per_second == 0 || rate.burst == 0 {
                return Err(ApiError::InvalidArgument(
                    "rate.per_second and rate.burst must be at least 1; pause the group to stop it"
                        .into(),
                ));
            }
        }
        if let Some(max) = self.max_concurrency {
            if !(1..=MAX_GROUP_CONCURRENCY).contains(&max) {
                return Err(ApiError::InvalidArgument(format!(
                    "max_concurrency must be between 1 and {MAX_GROUP_CONCURRENCY}, got {max}; \
                     pause the group to stop it"
                )));
            }
        }
        Ok(())
    }
}

/// Selects tasks of the failed queue (tasks that failed for good).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FailedFilter {
    /// Only these tasks (empty: any).
    pub ids: Vec<TaskId>,
    /// Only tasks of this group.
    pub group: Option<GroupName>,
    /// Only tasks whose last error is of this kind.
    pub kind: Option<ErrorKind>,
}

impl FailedFilter {
    /// Every failed task.
    pub fn all() -> Self {
        Self::default()
    }

    /// Just these tasks.
    pub fn ids(ids: Vec<TaskId>) -> Self {
        FailedFilter {
            ids,
            ..Self::default()
        }
    }

    /// Only tasks of `group`.
    pub fn group(mut self, group: GroupName) -> Self {
        self.group = Some(group);
        self
    }

    /// Only tasks whose last error is of `kind`.
    pub fn kind(mut self, kind: ErrorKind) -> Self {
        self.kind = Some(kind);
        self
    }
}

/// How many tasks of a group failed with a kind of error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FailedCount {
    /// The group.
    pub group: GroupName,
    /// The kind of the tasks' last error.
    pub kind: ErrorKind,
    /// How many.
    pub count: u64,
}

impl FailedCount {
    /// A count of `count` tasks.
    pub fn new(group: GroupName, kind: ErrorKind, count: u64) -> Self {
        FailedCount { group, kind, count }
    }
}

/// Where a pending task goes in its queue (within its priority).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum QueuePosition {
    /// Ahead of every task of its priority.
    Front,
    /// Behind every task of its priority.
    Back,
}

/// A change to pending tasks: move to another group, change priority, requeue to the back or
/// prefer to the front. Running and finished tasks are left alone.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PendingChange {
    /// Move to this group.
    pub group: Option<GroupName>,
    /// Take this priority.
    pub priority: Option<i32>,
    /// Go to the front or the back.
    pub position: Option<QueuePosition>,
}

impl PendingChange {
    /// Move the tasks to `group`.
    pub fn move_to(mut self, group: GroupName) -> Self {
        self.group = Some(group);
        self
    }

    /// Give the tasks `priority`.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Put the tasks ahead of the others of their priority.
    pub fn to_front(mut self) -> Self {
        self.position = Some(QueuePosition::Front);
        self
    }

    /// Put the tasks behind the others of their priority.
    pub fn to_back(mut self) -> Self {
        self.position = Some(QueuePosition::Back);
        self
    }

    /// True if it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.group.is_none() && self.priority.is_none() && self.position.is_none()
    }
}

/// What a schedule does with ticks it missed while the master was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MissedTicks {
    /// Run nothing for them; continue with the next tick.
    #[default]
    Skip,
    /// Run once for all of them (for the latest), then continue.
    RunOnce,
}

/// A cron schedule: a task submitted at every tick of a cron expression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ScheduleSpec {
    /// Identity of the schedule.
    pub name: ScheduleName,
    /// A standard cron expression of 5 fields, or 6 with seconds first.
    pub cron: String,
    /// IANA time zone the expression is read in, e.g. `"Europe/Prague"`.
    pub time_zone: String,
    /// The task submitted at each tick (its id is replaced by one derived from the tick).
    pub task: crate::task::TaskSpec,
    /// What happens to ticks missed while the master was down.
    pub missed: MissedTicks,
}

impl ScheduleSpec {
    /// A schedule `name` running `task` at every tick of `cron` (UTC, missed ticks skipped).
    pub fn new(name: ScheduleName, cron: impl Into<String>, task: crate::task::TaskSpec) -> Self {
        ScheduleSpec {
            name,
            cron: cron.into(),
            time_zone: "UTC".into(),
            task,
            missed: MissedTicks::Skip,
        }
    }

    /// The same schedule read in `time_zone`.
    pub fn in_time_zone(mut self, time_zone: impl Into<String>) -> Self {
        self.time_zone = time_zone.into();
        self
    }

    /// The same schedule with a policy for missed ticks.
    pub fn on_missed(mut self, missed: MissedTicks) -> Self {
        self.missed = missed;
        self
    }
}

/// A schedule as the master knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ScheduleView {
    /// What was created.
    pub spec: ScheduleSpec,
    /// Paused schedules do not fire.
    pub paused: bool,
    /// The last tick it fired for.
    pub last_tick: Option<crate::time::Timestamp>,
    /// How many times it fired.
    pub fired: u64,
    /// Its next tick (paused or not): the first after the last it handled, in its time zone.
    /// `None` when its expression has no tick left.
    pub next_tick: Option<crate::time::Timestamp>,
}

impl ScheduleView {
    /// A view of `spec`.
    pub fn new(
        spec: ScheduleSpec,
        paused: bool,
        last_tick: Option<crate::time::Timestamp>,
        fired: u64,
    ) -> Self {
        ScheduleView {
            spec,
            paused,
            last_tick,
            fired,
            next_tick: None,
        }
    }

    /// With its next tick.
    pub fn with_next_tick(mut self, next_tick: Option<crate::time::Timestamp>) -> Self {
        self.next_tick = next_tick;
        self
    }

    /// The task it submitted at its last tick, if it fired: any tick's task id is
    /// [`ScheduleName::task_id`] of the tick, so a view links to everything it submitted.
    pub fn last_task(&self) -> Option<TaskId> {
        self.last_tick.map(|tick| self.spec.name.task_id(tick))
    }
}

/// A connected pod as the master sees it (`MasterProxy::list_pods`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PodView {
    /// Its id.
    pub id: crate::ids::PodId,
    /// The groups it serves.
    pub groups: Vec<GroupName>,
    /// Attempts it runs at once.
    pub slots: u32,
    /// Attempts running: its leases, up to its slots (a pod starts what it holds as slots
    /// free up).
    pub running: u32,
    /// Leases it holds: running, and queued in the pod.
    pub held: u32,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Where other pods reach it, if it said.
    pub address: Option<String>,
    /// CPU use from its last heartbeat, in thousandths of one core.
    pub cpu_permille: u32,
    /// Memory use (resident) from its last heartbeat.
    pub memory_bytes: u64,
    /// When its session began.
    pub connected_at: crate::time::Timestamp,
    /// When the master last heard from it.
    pub last_heartbeat: crate::time::Timestamp,
    /// Leaving: it takes no new work.
    pub draining: bool,
}

impl PodView {
    /// A view of pod `id` serving `groups` with `slots`; other fields empty.
    pub fn new(id: crate::ids::PodId, groups: Vec<GroupName>, slots: u32) -> Self {
        PodView {
            id,
            groups,
            slots,
            running: 0,
            held: 0,
            labels: std::collections::BTreeMap::new(),
            address: None,
            cpu_permille: 0,
            memory_bytes: 0,
            connected_at: crate::time::Timestamp(0),
            last_heartbeat: crate::time::Timestamp(0),
            draining: false,
        }
    }
}

/// A consumer group as the master sees it (`MasterProxy::list_groups`): its tasks by state
/// and its settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GroupView {
    /// The group.
    pub group: GroupName,
    /// Tasks waiting (delayed ones included).
    pub pending: u64,
    /// Tasks running.
    pub running: u64,
    /// Finished tasks still retained (`MasterConfig::result_retention`), by outcome.
    pub succeeded: u64,
    /// Failed tasks still retained (the failed queue).
    pub failed: u64,
    /// Cancelled tasks still retained.
    pub cancelled: u64,
    /// Tasks waiting for the tasks they run after.
    pub blocked: u64,
    /// Its settings (defaults for a group never configured).
    pub settings: GroupSettings,
    /// The recent mean run time of its tasks, once some have finished.
    pub mean_run_time: Option<std::time::Duration>,
    /// How long its last (up to 1,000) tasks waited from ready to started, and how long
    /// their attempts ran: the median and the 95th percentile of each.
    pub times: GroupTimes,
}

/// Percentiles of a group's recent waits and runs (`None` until it has some).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GroupTimes {
    /// The median wait in the queue.
    pub wait_p50: Option<std::time::Duration>,
    /// The 95th percentile wait.
    pub wait_p95: Option<std::time::Duration>,
    /// The median run of an attempt.
    pub run_p50: Option<std::time::Duration>,
    /// The 95th percentile run.
    pub run_p95: Option<std::time::Duration>,
}

impl GroupView {
    /// A view of `group` with no task and default settings.
    pub fn new(group: GroupName) -> Self {
        GroupView {
            group,
            pending: 0,
            running: 0,
            succeeded: 0,
            failed: 0,
            cancelled: 0,
            blocked: 0,
            settings: GroupSettings::default(),
            mean_run_time: None,
            times: GroupTimes::default(),
        }
    }
}

/// How many minutes of history a master keeps: the last 24 hours.
pub const HISTORY_MINUTES: usize = 24 * 60;

/// What happened to tasks in one minute, and how many waited at its end.
///
/// Counted by the master as it goes; after a restart (or a fail-over, or when its read model
/// copies the state again after falling behind) it is rebuilt from the retained tasks: what
/// they show (every task of the last 24 hours with the default result retention of 24
/// hours), without the tasks purged or forgotten since, and one start a task (its last
/// attempt's); the queue depth of past minutes is then estimated from when each retained
/// task was accepted and last started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MinuteCounts {
    /// The minute's start.
    pub minute: crate::time::Timestamp,
    /// Tasks accepted.
    pub accepted: u64,
    /// Attempts started.
    pub started: u64,
    /// Tasks that succeeded.
    pub succeeded: u64,
    /// Tasks that failed for good.
    pub failed: u64,
    /// Tasks cancelled.
    pub cancelled: u64,
    /// Tasks waiting in their queues (delayed ones included) at the minute's end, or now for
    /// the current minute.
    pub pending: u64,
}

impl MinuteCounts {
    /// A minute with nothing counted yet.
    pub fn new(minute: crate::time::Timestamp) -> Self {
        MinuteCounts {
            minute,
            ..MinuteCounts::default()
        }
    }
}
