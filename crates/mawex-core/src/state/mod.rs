//! The durable state of the master and the pure function that changes it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use mawex_api::{
    Attempt, ErrorKind, FailedCount, FailedFilter, GroupName, GroupSettings, ListQuery, PodId,
    QueuePosition, ScheduleName, TaskId, TaskPage, TaskState, TaskView, Timestamp,
};
use serde::{Deserialize, Serialize};

pub(crate) mod broadcasts;
mod event;
mod schedule;
pub mod stored;

use stored::{AttemptFailure, AttemptRef, BroadcastSpec, Outcome, TaskResult, TaskSpec};

use broadcasts::Broadcasts;
pub use event::{Event, RequeueReason};
pub(crate) use schedule::Schedule;

/// Order of a pending task in its group's queue: higher priority first, then the earlier
/// fairness round, then oldest first.
type QueueKey = (i64, u64, u64);

/// Fairness rounds of a group's live (not finished) tasks, as multisets: a new task of key
/// `k` gets round `max(last round of k + 1, first live round of the group)`, so keys take
/// turns round by round and a key that arrives late starts at the current round, not behind
/// everyone else's backlog. Derived from durable state only (each task keeps its round), so
/// replay assigns the same rounds.
#[derive(Debug, Clone, Default)]
struct Rounds {
    all: BTreeMap<u64, u32>,
    by_key: HashMap<String, BTreeMap<u64, u32>>,
}

/// Queue positions are counted up to this many tasks ahead (see `position_in_queue`).
pub(crate) const MAX_POSITION_SCAN: usize = 10_000;

/// Rounds start here, leaving room below for tasks preferred to the front.
pub(crate) const ROUND_BASE: u64 = 1 << 32;

impl Rounds {
    /// A round ahead of every live task of the group.
    fn front(&self) -> u64 {
        self.all
            .keys()
            .next()
            .copied()
            .unwrap_or(ROUND_BASE)
            .saturating_sub(1)
    }

    /// A round behind every live task of the group.
    fn back(&self) -> u64 {
        self.all
            .keys()
            .next_back()
            .copied()
            .map_or(ROUND_BASE, |r| r.saturating_add(1))
    }
}

fn multiset_add(set: &mut BTreeMap<u64, u32>, round: u64) {
    *set.entry(round).or_default() += 1;
}

fn multiset_remove(set: &mut BTreeMap<u64, u32>, round: u64) {
    if let Some(n) = set.get_mut(&round) {
        *n -= 1;
        if *n == 0 {
            set.remove(&round);
        }
    }
}

impl Rounds {
    fn next_for(&self, key: &str) -> u64 {
        let floor = self.all.keys().next().copied().unwrap_or(ROUND_BASE);
        let last = self
            .by_key
            .get(key)
            .and_then(|s| s.keys().next_back().copied());
        last.map_or(floor, |l| (l + 1).max(floor))
    }

    fn add(&mut self, key: &str, round: u64) {
        multiset_add(&mut self.all, round);
        // Look up before inserting: most adds are for a key already live, and need no String.
        match self.by_key.get_mut(key) {
            Some(set) => multiset_add(set, round),
            None => {
                let mut set = BTreeMap::new();
                multiset_add(&mut set, round);
                self.by_key.insert(key.to_owned(), set);
            }
        }
    }

    fn remove(&mut self, key: &str, round: u64) {
        multiset_remove(&mut self.all, round);
        if let Some(set) = self.by_key.get_mut(key) {
            multiset_remove(set, round);
            if set.is_empty() {
                self.by_key.remove(key);
            }
        }
    }
}

/// One task as the master records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TaskEntry {
    pub(crate) spec: TaskSpec,
    pub(crate) state: TaskState,
    /// The current or last attempt; 0 before the first assignment.
    pub(crate) attempt: Attempt,
    /// Holder of the current attempt's lease while running.
    pub(crate) pod: Option<PodId>,
    /// Acceptance order; keeps FIFO within a priority and survives requeues.
    pub(crate) order: u64,
    pub(crate) submitted_at: Timestamp,
    pub(crate) started_at: Option<Timestamp>,
    pub(crate) result: Option<TaskResult>,
    /// Every failed attempt, oldest first.
    pub(crate) failures: Vec<AttemptFailure>,
    /// While pending: not dispatched before this time (delayed task, scheduled retry).
    pub(crate) not_before: Option<Timestamp>,
    /// Failures before the last manual retry; the retry budget counts the ones after it.
    pub(crate) retry_base: u32,
    /// Fair-queueing round (see `Rounds`).
    pub(crate) round: u64,
}

impl TaskEntry {
    fn queue_key(&self) -> QueueKey {
        (-i64::from(self.spec.priority), self.round, self.order)
    }

    fn fairness_key(&self) -> &str {
        self.spec.fairness_key.as_deref().unwrap_or("")
    }

    pub(crate) fn current(&self) -> AttemptRef {
        AttemptRef {
            task: self.spec.id,
            attempt: self.attempt,
        }
    }

    pub(crate) fn view(&self) -> TaskView {
        let mut view = TaskView::new(self.spec.clone().into(), self.state, self.submitted_at);
        view.attempt = self.attempt;
        view.pod = self.pod.clone();
        view.started_at = self.started_at;
        view.result = self.result.clone().map(Into::into);
        view.failures = self.failures.iter().cloned().map(Into::into).collect();
        view.not_before = self.not_before;
        view
    }
}

/// How many tasks are in each state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskCounts {
    /// Waiting for a slot.
    pub pending: u64,
    /// Leased to a pod.
    pub running: u64,
    /// Finished with an output (and still retained).
    pub succeeded: u64,
    /// Finished with an error (and still retained).
    pub failed: u64,
    /// Cancelled (and still retained).
    pub cancelled: u64,
}

impl TaskCounts {
    fn slot(&mut self, state: TaskState) -> &mut u64 {
        match state {
            TaskState::Pending => &mut self.pending,
            TaskState::Running => &mut self.running,
            TaskState::Succeeded => &mut self.succeeded,
            TaskState::Failed => &mut self.failed,
            // TaskState is non_exhaustive only for other crates; Cancelled is the last state.
            _ => &mut self.cancelled,
        }
    }

    fn moved(&mut self, from: Option<TaskState>, to: Option<TaskState>) {
        if let Some(from) = from {
            let n = self.slot(from);
            *n = n.saturating_sub(1);
        }
        if let Some(to) = to {
            *self.slot(to) += 1;
        }
    }
}

/// One running task of `group` stopped running.
fn leave_running(running: &mut HashMap<GroupName, u32>, group: &GroupName) {
    if let Some(n) = running.get_mut(group) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            running.remove(group);
        }
    }
}

/// Everything the journal makes durable: tasks, their attempts and their results.
///
/// Architecture invariant: [`MasterState::apply`] is pure and deterministic. No clock, no
/// I/O, no randomness: time comes in as data inside events. Replay, snapshots and (later) the
/// Raft state machine all rest on this.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MasterState {
    tasks: BTreeMap<TaskId, TaskEntry>,
    /// Settings of groups that were configured.
    groups: BTreeMap<GroupName, stored::GroupSettings>,
    /// Cron schedules by name.
    schedules: BTreeMap<ScheduleName, Schedule>,
    /// Tasks ever accepted; source of each task's queue order.
    accepted: u64,
    /// Results ever recorded; source of each result's stream position.
    results_recorded: u64,
    /// Broadcasts, their targets, and the versions pods applied.
    broadcasts: Broadcasts,
    /// Derived indexes below are rebuilt after a snapshot is loaded, not stored in it.
    #[serde(skip)]
    pending: HashMap<GroupName, BTreeMap<QueueKey, TaskId>>,
    /// Pending tasks that must wait, by the time they may run. Moved into `pending` by
    /// [`MasterState::promote_due`], which depends on `now` and so is not part of `apply`.
    #[serde(skip)]
    delayed: BTreeMap<(Timestamp, u64), TaskId>,
    #[serde(skip)]
    results: BTreeMap<u64, TaskId>,
    #[serde(skip)]
    counts: TaskCounts,
    /// Running tasks per group, for per-group concurrency ceilings.
    #[serde(skip)]
    running_by_group: HashMap<GroupName, u32>,
    /// The latest task of each dedup key.
    #[serde(skip)]
    dedup: HashMap<String, TaskId>,
    /// Fairness rounds of live tasks, per group.
    #[serde(skip)]
    rounds: HashMap<GroupName, Rounds>,
    /// Recent mean run time per group (ms, moving average), for wait estimates.
    #[serde(skip)]
    durations: HashMap<GroupName, u64>,
}

/// Equal when the durable parts are; the indexes are functions of them.
impl PartialEq for MasterState {
    fn eq(&self, other: &Self) -> bool {
        self.tasks == other.tasks
            && self.accepted == other.accepted
            && self.results_recorded == other.results_recorded
            && self.broadcasts == other.broadcasts
    }
}

impl Eq for MasterState {}

impl MasterState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// A state from its durable parts, as an older snapshot format held them (no
    /// broadcasts), with the derived indexes rebuilt.
    pub(crate) fn from_parts(
        tasks: BTreeMap<TaskId, TaskEntry>,
        groups: BTreeMap<GroupName, stored::GroupSettings>,
        schedules: BTreeMap<ScheduleName, Schedule>,
        accepted: u64,
        results_recorded: u64,
    ) -> Self {
        let mut state = MasterState {
            tasks,
            groups,
            schedules,
            accepted,
            results_recorded,
            ..MasterState::default()
        };
        state.rebuild_indexes();
        state
    }

    /// Rebuilds the derived indexes (queues, result log, counts) from the tasks.
    pub(crate) fn rebuild_indexes(&mut self) {
        self.broadcasts.rebuild_index();
        self.pending.clear();
        self.delayed.clear();
        self.results.clear();
        self.counts = TaskCounts::default();
        self.running_by_group.clear();
        self.dedup.clear();
        self.rounds.clear();
        let tasks = std::mem::take(&mut self.tasks);
        for (id, entry) in &tasks {
            self.counts.moved(None, Some(entry.state));
            if entry.state == TaskState::Running {
                *self
                    .running_by_group
                    .entry(entry.spec.group.clone())
                    .or_default() += 1;
            }
            if entry.state == TaskState::Pending {
                self.enqueue(entry);
            }
            if let Some(result) = &entry.result {
                self.results.insert(result.seq, *id);
            }
            if let Some(dedup) = &entry.spec.dedup {
                // Tasks iterate in id (creation) order: the last one of a key wins.
                self.dedup.insert(dedup.key.clone(), *id);
            }
            if !entry.state.is_terminal() {
                self.rounds
                    .entry(entry.spec.group.clone())
                    .or_default()
                    .add(entry.fairness_key(), entry.round);
            }
        }
        self.tasks = tasks;
    }

    /// Applies one event. Events come from `decide` (which validated them) or from the
    /// journal; an event that does not fit the state is a no-op, so replay is total.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::TaskAccepted { spec, at } => {
                if self.tasks.contains_key(&spec.id) {
                    return;
                }
                self.accepted += 1;
                let entry = TaskEntry {
                    spec: spec.clone(),
                    state: TaskState::Pending,
                    attempt: Attempt(0),
                    pod: None,
                    order: self.accepted,
                    submitted_at: *at,
                    started_at: None,
                    result: None,
                    failures: Vec::new(),
                    not_before: spec.run_at.filter(|t| t > at),
                    retry_base: 0,
                    round: 0,
                };
                let mut entry = entry;
                let rounds = self.rounds.entry(spec.group.clone()).or_default();
                entry.round = rounds.next_for(entry.fairness_key());
                rounds.add(entry.fairness_key(), entry.round);
                if let Some(dedup) = &spec.dedup {
                    self.dedup.insert(dedup.key.clone(), spec.id);
                }
                self.counts.moved(None, Some(TaskState::Pending));
                self.enqueue(&entry);
                self.tasks.insert(spec.id, entry);
            }
            Event::TaskAssigned { attempt, pod, at } => {
                let Some(entry) = self.tasks.get_mut(&attempt.task) else {
                    return;
                };
                if entry.state != TaskState::Pending {
                    return;
                }
                self.broadcasts
                    .assigned(&attempt.task, attempt.attempt.0, *at);
                if let Some(queue) = self.pending.get_mut(&entry.spec.group) {
                    queue.remove(&entry.queue_key());
                }
                if let Some(t) = entry.not_before.take() {
                    self.delayed.remove(&(t, entry.order));
                }
                self.counts
                    .moved(Some(entry.state), Some(TaskState::Running));
                *self
                    .running_by_group
                    .entry(entry.spec.group.clone())
                    .or_default() += 1;
                entry.state = TaskState::Running;
                entry.attempt = attempt.attempt;
                entry.pod = Some(pod.clone());
                entry.started_at = Some(*at);
            }
            Event::TaskFinished {
                attempt,
                outcome,
                at,
            } => {
                let Some(entry) = self.tasks.get(&attempt.task) else {
                    return;
                };
                if entry.state != TaskState::Running || entry.attempt != attempt.attempt {
                    return;
                }
                self.finish(attempt.task, outcome.clone(), *at);
                self.broadcasts.finished(&attempt.task, outcome, *at);
            }
            Event::TaskRequeued { attempt, at: _, .. } => {
                if self.back_to_pending(attempt, None) {
                    self.broadcasts.back_to_waiting(&attempt.task, None);
                }
            }
            Event::TaskRetryScheduled {
                attempt,
                error,
                retry_at,
                at,
            } => {
                let failure = AttemptFailure {
                    attempt: attempt.attempt,
                    error: error.clone(),
                    at: *at,
                };
                if self.back_to_pending(attempt, Some((failure, *retry_at))) {
                    self.broadcasts.back_to_waiting(&attempt.task, Some(error));
                }
            }
            Event::TaskCancelled { task, at } => {
                let Some(entry) = self.tasks.get(task) else {
                    return;
                };
                if entry.state.is_terminal() {
                    return;
                }
                if entry.state == TaskState::Pending {
                    let entry = entry.clone();
                    self.dequeue(&entry);
                }
                self.finish(*task, Outcome::Cancelled, *at);
                self.broadcasts.finished(task, &Outcome::Cancelled, *at);
            }
            Event::TasksRetried { tasks, at: _ } => {
                for id in tasks {
                    let Some(entry) = self.tasks.get_mut(id) else {
                        continue;
                    };
                    if entry.state != TaskState::Failed {
                        continue;
                    }
                    if let Some(result) = entry.result.take() {
                        self.results.remove(&result.seq);
                    }
                    self.counts
                        .moved(Some(entry.state), Some(TaskState::Pending));
                    entry.state = TaskState::Pending;
                    entry.not_before = None;
                    entry.retry_base = u32::try_from(entry.failures.len()).unwrap_or(u32::MAX);
                    // Back in line as a newcomer of its key.
                    let rounds = self.rounds.entry(entry.spec.group.clone()).or_default();
                    let key = entry.spec.fairness_key.as_deref().unwrap_or("");
                    entry.round = rounds.next_for(key);
                    rounds.add(key, entry.round);
                    let entry = entry.clone();
                    self.enqueue(&entry);
                    self.broadcasts.back_to_waiting(id, None);
                }
            }
            Event::TasksUpdated { tasks, change } => {
                for id in tasks {
                    let Some(entry) = self.tasks.get(id) else {
                        continue;
                    };
                    if entry.state != TaskState::Pending {
                        continue;
                    }
                    let mut entry = entry.clone();
                    self.dequeue(&entry);
                    if let Some(rounds) = self.rounds.get_mut(&entry.spec.group) {
                        rounds.remove(entry.fairness_key(), entry.round);
                    }
                    let moved = change
                        .group
                        .as_ref()
                        .is_some_and(|g| *g != entry.spec.group);
                    if let Some(group) = &change.group {
                        entry.spec.group = group.clone();
                    }
                    if let Some(priority) = change.priority {
                        entry.spec.priority = priority;
                    }
                    let rounds = self.rounds.entry(entry.spec.group.clone()).or_default();
                    entry.round = match change.position {
                        Some(QueuePosition::Front) => rounds.front(),
                        Some(QueuePosition::Back) => rounds.back(),
                        // A task moved to another group joins it as a newcomer of its key.
                        _ if moved => rounds.next_for(entry.fairness_key()),
                        _ => entry.round,
                    };
                    rounds.add(entry.fairness_key(), entry.round);
                    self.enqueue(&entry);
                    self.tasks.insert(*id, entry);
                }
            }
            Event::ScheduleCreated { spec, at } => {
                if !self.schedules.contains_key(&spec.name) {
                    let schedule = Schedule {
                        spec: spec.clone(),
                        paused: false,
                        handled_through: *at,
                        last_tick: None,
                        fired: 0,
                    };
                    self.schedules.insert(spec.name.clone(), schedule);
                }
            }
            Event::SchedulePaused { name, paused, at } => {
                if let Some(s) = self.schedules.get_mut(name) {
                    if s.paused && !*paused {
                        // Ticks that passed while paused are not owed.
                        s.handled_through = s.handled_through.max(*at);
                    }
                    s.paused = *paused;
                }
            }
            Event::ScheduleDeleted { name } => {
                self.schedules.remove(name);
            }
            Event::ScheduleFired {
                name,
                tick,
                task,
                at,
            } => {
                if let Some(s) = self.schedules.get_mut(name) {
                    s.handled_through = s.handled_through.max(*tick);
                    s.last_tick = Some(*tick);
                    s.fired += 1;
                }
                self.apply(&Event::TaskAccepted {
                    spec: task.clone(),
                    at: *at,
                });
            }
            Event::ScheduleSkipped { name, through } => {
                if let Some(s) = self.schedules.get_mut(name) {
                    s.handled_through = s.handled_through.max(*through);
                }
            }
            Event::GroupConfigured { group, settings } => {
                if *settings == stored::GroupSettings::default() {
                    self.groups.remove(group);
                } else {
                    self.groups.insert(group.clone(), *settings);
                }
            }
            Event::BroadcastFired {
                id,
                spec,
                targets,
                already,
                at,
            } => {
                if self.broadcasts.by_id.contains_key(id) {
                    return;
                }
                self.broadcasts.fired(*id, spec, targets, already, *at);
                for (_, task) in targets {
                    self.add_target_task(spec, *task, *at);
                }
            }
            Event::BroadcastTargetAdded { id, pod, task, at } => {
                if let Some(spec) = self
                    .broadcasts
                    .target_added(*id, pod, *task)
                    .map(|b| b.spec.clone())
                {
                    self.add_target_task(&spec, *task, *at);
                }
            }
            Event::BroadcastPullStarted { task, source } => {
                self.broadcasts.pull_started(task, source);
            }
            Event::BroadcastAborted { id, at } => self.broadcasts.aborted(*id, *at),
            Event::BroadcastTargetUnreachable { task, at } => {
                let Some(entry) = self.tasks.get(task) else {
                    return;
                };
                if entry.state != TaskState::Pending || !self.broadcasts.is_target(task) {
                    return;
                }
                let outcome = Outcome::Failed(stored::TaskError {
                    kind: ErrorKind::LeaseExpired,
                    message: "the pod stayed away longer than a lease".to_owned(),
                    retry: stored::RetryHint::Policy,
                });
                self.finish(*task, outcome.clone(), *at);
                self.broadcasts.finished(task, &outcome, *at);
            }
            Event::TasksForgotten { tasks } => {
                for id in tasks {
                    let Some(entry) = self.tasks.get(id) else {
                        continue;
                    };
                    if !entry.state.is_terminal() {
                        continue;
                    }
                    if let Some(result) = &entry.result {
                        self.results.remove(&result.seq);
                    }
                    if let Some(dedup) = &entry.spec.dedup {
                        if self.dedup.get(&dedup.key) == Some(id) {
                            self.dedup.remove(&dedup.key);
                        }
                    }
                    self.counts.moved(Some(entry.state), None);
                    self.tasks.remove(id);
                }
            }
        }
    }

    /// The pending task of a broadcast target (already indexed as one, so never queued).
    fn add_target_task(&mut self, spec: &BroadcastSpec, task: TaskId, at: Timestamp) {
        if self.tasks.contains_key(&task) {
            return;
        }
        let task_spec = spec.target_task(task);
        self.accepted += 1;
        let entry = TaskEntry {
            spec: task_spec,
            state: TaskState::Pending,
            attempt: Attempt(0),
            pod: None,
            order: self.accepted,
            submitted_at: at,
            started_at: None,
            result: None,
            failures: Vec::new(),
            not_before: None,
            retry_base: 0,
            round: ROUND_BASE,
        };
        self.counts.moved(None, Some(TaskState::Pending));
        self.tasks.insert(task, entry);
    }

    /// The broadcasts.
    pub(crate) fn broadcasts(&self) -> &Broadcasts {
        &self.broadcasts
    }

    /// Ends the current attempt of a running task without a result and queues the task again;
    /// with a failure, the failure is recorded and the task waits until the retry time.
    fn back_to_pending(
        &mut self,
        attempt: &AttemptRef,
        failed: Option<(AttemptFailure, Timestamp)>,
    ) -> bool {
        let Some(entry) = self.tasks.get_mut(&attempt.task) else {
            return false;
        };
        if entry.state != TaskState::Running || entry.attempt != attempt.attempt {
            return false;
        }
        self.counts
            .moved(Some(entry.state), Some(TaskState::Pending));
        leave_running(&mut self.running_by_group, &entry.spec.group);
        entry.state = TaskState::Pending;
        entry.pod = None;
        if let Some((failure, retry_at)) = failed {
            entry.failures.push(failure);
            entry.not_before = Some(retry_at);
        }
        let entry = entry.clone();
        self.enqueue(&entry);
        true
    }

    /// Puts a pending task in its group's queue, or with the delayed ones if it must wait.
    /// Broadcast targets stay out: the engine dispatches them by their strategy.
    fn enqueue(&mut self, entry: &TaskEntry) {
        if self.broadcasts.is_target(&entry.spec.id) {
            return;
        }
        match entry.not_before {
            Some(t) => {
                self.delayed.insert((t, entry.order), entry.spec.id);
            }
            None => {
                self.pending
                    .entry(entry.spec.group.clone())
                    .or_default()
                    .insert(entry.queue_key(), entry.spec.id);
            }
        }
    }

    /// Takes a pending task out of whichever queue holds it.
    fn dequeue(&mut self, entry: &TaskEntry) {
        if let Some(queue) = self.pending.get_mut(&entry.spec.group) {
            queue.remove(&entry.queue_key());
        }
        if let Some(t) = entry.not_before {
            self.delayed.remove(&(t, entry.order));
        }
    }

    /// Moves delayed tasks whose time has come into their queues. Changes only derived
    /// indexes, so replay needs no event for it: after a restart the first tick does it again.
    pub(crate) fn promote_due(&mut self, now: Timestamp) -> bool {
        let mut promoted = false;
        while let Some(first) = self.delayed.first_entry() {
            if first.key().0 > now {
                break;
            }
            let id = first.remove();
            if let Some(task) = self.tasks.get(&id) {
                self.pending
                    .entry(task.spec.group.clone())
                    .or_default()
                    .insert(task.queue_key(), id);
                promoted = true;
            }
        }
        promoted
    }

    /// When the next delayed task becomes due.
    pub(crate) fn next_due(&self) -> Option<Timestamp> {
        self.delayed.keys().next().map(|(t, _)| *t)
    }

    /// Records the result of a running or pending task.
    fn finish(&mut self, id: TaskId, outcome: Outcome, at: Timestamp) {
        let Some(entry) = self.tasks.get_mut(&id) else {
            return;
        };
        if let Outcome::Failed(error) = &outcome {
            if entry.state == TaskState::Running {
                entry.failures.push(AttemptFailure {
                    attempt: entry.attempt,
                    error: error.clone(),
                    at,
                });
            }
        }
        entry.not_before = None;
        self.results_recorded += 1;
        let seq = self.results_recorded;
        let state = outcome.state();
        if entry.state == TaskState::Running {
            leave_running(&mut self.running_by_group, &entry.spec.group);
        }
        if let Some(rounds) = self.rounds.get_mut(&entry.spec.group) {
            let key = entry.spec.fairness_key.as_deref().unwrap_or("");
            rounds.remove(key, entry.round);
        }
        if let (TaskState::Running, Some(started)) = (entry.state, entry.started_at) {
            let ms = at.0.saturating_sub(started.0);
            let mean = self.durations.entry(entry.spec.group.clone()).or_insert(ms);
            // A moving average weighted 4:1 towards the past: recent, but not jumpy.
            *mean = (*mean * 4 + ms) / 5;
        }
        self.counts.moved(Some(entry.state), Some(state));
        entry.state = state;
        entry.pod = None;
        entry.result = Some(TaskResult {
            id,
            group: entry.spec.group.clone(),
            attempt: entry.attempt,
            outcome,
            finished_at: at,
            seq,
        });
        self.results.insert(seq, id);
    }

    pub(crate) fn task(&self, id: &TaskId) -> Option<&TaskEntry> {
        self.tasks.get(id)
    }

    /// The task as a client sees it.
    pub fn view(&self, id: &TaskId) -> Option<TaskView> {
        self.tasks.get(id).map(TaskEntry::view)
    }

    /// The recorded result of a finished task.
    pub fn result(&self, id: &TaskId) -> Option<mawex_api::TaskResult> {
        self.tasks
            .get(id)
            .and_then(|e| e.result.clone())
            .map(Into::into)
    }

    /// The settings of `group` (defaults if never configured).
    pub(crate) fn group_settings(&self, group: &GroupName) -> GroupSettings {
        self.groups
            .get(group)
            .copied()
            .map(Into::into)
            .unwrap_or_default()
    }

    /// Every schedule, by name.
    pub(crate) fn schedules(&self) -> impl Iterator<Item = &Schedule> {
        self.schedules.values()
    }

    pub(crate) fn schedule(&self, name: &ScheduleName) -> Option<&Schedule> {
        self.schedules.get(name)
    }

    /// True if some group has non-default settings (dispatch can skip the checks otherwise).
    pub(crate) fn any_group_settings(&self) -> bool {
        !self.groups.is_empty()
    }

    /// May another task of `group` start now?
    pub(crate) fn group_open(&self, group: &GroupName) -> bool {
        if self.groups.is_empty() {
            return true;
        }
        let settings = self.groups.get(group).copied().unwrap_or_default();
        !settings.paused
            && settings
                .max_concurrency
                .is_none_or(|max| self.running_in(group) < max)
    }

    /// The task deduplicating submits of `key`, if any.
    pub(crate) fn dedup_holder(&self, key: &str) -> Option<&TaskEntry> {
        self.dedup.get(key).and_then(|id| self.tasks.get(id))
    }

    /// Failed tasks matching `filter`, in id order.
    pub(crate) fn failed_matching(&self, filter: &FailedFilter) -> Vec<TaskId> {
        let matches = |e: &TaskEntry| {
            e.state == TaskState::Failed
                && filter.group.as_ref().is_none_or(|g| *g == e.spec.group)
                && filter
                    .kind
                    .is_none_or(|k| e.failures.last().map(|f| f.error.kind) == Some(k))
        };
        if filter.ids.is_empty() {
            self.tasks
                .values()
                .filter(|e| matches(e))
                .map(|e| e.spec.id)
                .collect()
        } else {
            let mut ids: Vec<TaskId> = filter
                .ids
                .iter()
                .filter(|id| self.tasks.get(id).is_some_and(&matches))
                .copied()
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        }
    }

    /// The failed queue counted by group and kind of last error.
    pub(crate) fn failed_summary(&self) -> Vec<FailedCount> {
        let mut counts: BTreeMap<(GroupName, String), (ErrorKind, u64)> = BTreeMap::new();
        for e in self.tasks.values().filter(|e| e.state == TaskState::Failed) {
            let kind = e
                .failures
                .last()
                .map_or(ErrorKind::Sandbox, |f| f.error.kind);
            let slot = counts
                .entry((e.spec.group.clone(), format!("{kind:?}")))
                .or_insert((kind, 0));
            slot.1 += 1;
        }
        counts
            .into_iter()
            .map(|((group, _), (kind, n))| FailedCount::new(group, kind, n))
            .collect()
    }

    /// The recent mean run time of `group`'s tasks, if any finished since start-up.
    pub(crate) fn mean_duration(&self, group: &GroupName) -> Option<Duration> {
        self.durations
            .get(group)
            .map(|ms| Duration::from_millis(*ms))
    }

    /// How many ready tasks are ahead of `id` in its group's queue, counted up to
    /// [`MAX_POSITION_SCAN`] (beyond it the estimate is a lower bound): reads run on the core
    /// thread, so a page of a long queue must stay cheap.
    pub(crate) fn position_in_queue(&self, id: &TaskId) -> Option<usize> {
        let entry = self.tasks.get(id)?;
        let queue = self.pending.get(&entry.spec.group)?;
        let key = entry.queue_key();
        queue
            .contains_key(&key)
            .then(|| queue.range(..key).take(MAX_POSITION_SCAN).count())
    }

    /// Tasks of `group` running now.
    pub(crate) fn running_in(&self, group: &GroupName) -> u32 {
        self.running_by_group.get(group).copied().unwrap_or(0)
    }

    /// How many tasks are in each state.
    pub fn counts(&self) -> TaskCounts {
        self.counts
    }

    /// Number of tasks known (retained ones included).
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// True if no task is known.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The next pending task among `groups`: highest priority first, then oldest.
    pub(crate) fn next_pending<'a>(
        &self,
        groups: impl IntoIterator<Item = &'a GroupName>,
    ) -> Option<TaskId> {
        groups
            .into_iter()
            .filter_map(|g| self.pending.get(g)?.first_key_value())
            .min_by_key(|(key, _)| **key)
            .map(|(_, id)| *id)
    }

    /// True if some task of `group` waits.
    pub(crate) fn has_pending(&self, group: &GroupName) -> bool {
        self.pending.get(group).is_some_and(|q| !q.is_empty())
    }

    #[cfg(test)]
    pub(crate) fn tasks_for_test(&self) -> impl Iterator<Item = (&TaskId, &TaskEntry)> {
        self.tasks.iter()
    }

    /// Tasks currently running, with their lease holder.
    pub(crate) fn running(&self) -> impl Iterator<Item = &TaskEntry> {
        self.tasks
            .values()
            .filter(|e| e.state == TaskState::Running)
    }

    /// Results recorded after `after`, oldest first.
    pub(crate) fn results_after(&self, after: u64) -> impl Iterator<Item = &TaskResult> {
        self.results
            .range(after.saturating_add(1)..)
            .filter_map(|(_, id)| self.tasks.get(id)?.result.as_ref())
    }

    /// Finished tasks whose results are older than `cutoff`, oldest first, at most `limit`.
    pub(crate) fn finished_before(&self, cutoff: Timestamp, limit: usize) -> Vec<TaskId> {
        self.results
            .values()
            .take_while(|id| {
                self.tasks
                    .get(id)
                    .and_then(|e| e.result.as_ref())
                    .is_some_and(|r| r.finished_at < cutoff)
            })
            .take(limit)
            .copied()
            .collect()
    }

    /// Tasks ahead × the group's recent mean duration ÷ the `slots` serving it.
    pub(crate) fn eta(&self, id: &TaskId, slots: u64) -> Option<Duration> {
        let group = &self.tasks.get(id)?.spec.group;
        let mean = self.mean_duration(group)?;
        if slots == 0 {
            return None;
        }
        let ahead = u64::try_from(self.position_in_queue(id)?).unwrap_or(u64::MAX);
        Some(mean.mul_f64(ahead as f64 / slots as f64))
    }

    /// A page of tasks, with wait estimates for the queued ones from the slots serving each
    /// group (`slots`).
    pub(crate) fn list_with_estimates(
        &self,
        query: &ListQuery,
        slots: impl Fn(&GroupName) -> u64,
    ) -> TaskPage {
        let mut page = self.list(query);
        for view in &mut page.tasks {
            if view.state == TaskState::Pending && view.not_before.is_none() {
                view.eta = self.eta(&view.spec.id, slots(&view.spec.group));
            }
        }
        page
    }

    /// One page of tasks matching `query` (already validated).
    pub(crate) fn list(&self, query: &ListQuery) -> TaskPage {
        use std::ops::Bound;
        let start = match query.after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let mut tasks = Vec::new();
        let mut next = None;
        for entry in self.tasks.range((start, Bound::Unbounded)).map(|(_, e)| e) {
            if query.group.as_ref().is_some_and(|g| *g != entry.spec.group)
                || query.state.is_some_and(|s| s != entry.state)
            {
                continue;
            }
            if tasks.len() == query.limit {
                next = tasks.last().map(|t: &TaskView| t.spec.id);
                break;
            }
            tasks.push(entry.view());
        }
        TaskPage::new(tasks, next)
    }
}
