//! Decisions: what events a command produces, given the state, the live pods and `now`.
//!
//! The engine owns the durable [`MasterState`] and the volatile registry of connected pods
//! (which a restart rebuilds from reconnecting pods, so it is never journaled). It does no
//! I/O and reads no clock: every method takes `now`. Each emitted event is applied at once,
//! so later commands of the same batch see earlier ones; the core loop makes the batch
//! durable before anything leaves the master.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use mawex_api::pod::{
    AttemptRef, MasterMessage, PodHello, PodMessage, ResourceUsage, MAX_POD_PREFETCH, MAX_POD_SLOTS,
};
use mawex_api::{
    ApiError, Attempt, CancelAck, ErrorKind, FailedFilter, GroupName, GroupSettings, Outcome,
    PendingChange, PodId, RetryHint, RetryPolicy, ScheduleSpec, ScheduleView, SubmitAck, TaskError,
    TaskId, TaskSpec, TaskState, TaskView, Timestamp,
};
use tracing::debug;

use super::event::{Event, RequeueReason};
use super::schedule::{self, Compiled, Due};
use super::state::{MasterState, TaskCounts};

/// The most finished tasks forgotten by one tick, to bound the work of one batch.
const FORGET_PER_TICK: usize = 10_000;

/// The engine's share of the master configuration.
#[derive(Debug, Clone)]
pub(crate) struct EngineConfig {
    pub(crate) lease_timeout: Duration,
    /// Retries of tasks that name no policy of their own.
    pub(crate) default_retry: RetryPolicy,
    pub(crate) result_retention: Duration,
    pub(crate) max_payload_bytes: usize,
}

/// What one batch of commands produced.
#[derive(Debug, Default)]
pub(crate) struct Output {
    /// Events to journal, in order; already applied to the state.
    pub(crate) events: Vec<Event>,
    /// Messages to pods, by session, to send once the events are durable.
    pub(crate) messages: Vec<(u64, MasterMessage)>,
    /// Sessions the engine dropped (expired or replaced): close their connections.
    pub(crate) closed_sessions: Vec<u64>,
}

/// One lease of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    attempt: Attempt,
    /// The dispatch batch whose `Assign` carried it (0: adopted from the pod's hello).
    batch: u64,
}

/// A connected pod as the master sees it.
#[derive(Debug, Clone)]
struct PodEntry {
    session: u64,
    groups: Vec<GroupName>,
    slots: u32,
    /// Leases it may hold: slots plus prefetch.
    capacity: u32,
    /// Ordered, so that events derived from it come out in a deterministic order.
    leases: BTreeMap<TaskId, Lease>,
    /// Without a message from the pod by then, its leases expire.
    expires_at: Timestamp,
    /// Shutting down: it gets no new leases.
    draining: bool,
    /// Last reported resource use.
    usage: ResourceUsage,
    /// Its labels, for broadcast filters.
    labels: BTreeMap<String, String>,
    /// Where other pods reach it (a broadcast source's address).
    address: Option<String>,
}

impl PodEntry {
    fn free(&self) -> usize {
        if self.draining {
            return 0;
        }
        (self.capacity as usize).saturating_sub(self.leases.len())
    }

    fn holds(&self, r: &AttemptRef) -> bool {
        self.leases
            .get(&r.task)
            .is_some_and(|l| l.attempt == r.attempt)
    }
}

/// A pod's load, for monitoring and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PodStats {
    /// The pod.
    pub id: PodId,
    /// Groups it serves.
    pub groups: Vec<GroupName>,
    /// Attempts it runs at once.
    pub slots: u32,
    /// Leases it holds now (running or queued in the pod).
    pub leased: usize,
    /// Resource use from its last heartbeat.
    pub usage: ResourceUsage,
}

/// State machine plus live pod registry.
#[derive(Debug)]
pub(crate) struct Engine {
    state: MasterState,
    config: EngineConfig,
    /// Ordered so that dispatch order, and so the journal, is deterministic.
    pods: BTreeMap<PodId, PodEntry>,
    sessions: HashMap<u64, PodId>,
    /// Running attempts whose holder is not connected, with the time their lease ends.
    orphans: BTreeMap<TaskId, (Attempt, Timestamp)>,
    /// Number of the last dispatch batch; `Assign` messages carry it.
    batch: u64,
    /// Rotates which pod dispatch serves first, to spread work.
    rotation: usize,
    /// Something changed that may allow new assignments.
    dispatch_needed: bool,
    /// Token buckets of rate-limited groups. Volatile: a restart starts them full.
    buckets: HashMap<GroupName, Bucket>,
    /// Parsed cron expressions of the schedules (derived; parsed again when missing).
    compiled: HashMap<GroupName, Compiled>,
    /// When each pod that is not connected now went away (volatile).
    departed: HashMap<PodId, Timestamp>,
    /// When this engine started: a pod not seen since is away since then.
    started_at: Timestamp,
}

/// A group's token bucket, in thousandths of a token.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli_tokens: u64,
    refilled_at: Timestamp,
}

const MILLI: u64 = 1000;

impl Bucket {
    /// Tops the bucket up for the time since the last refill.
    fn refill(&mut self, rate: mawex_api::RateLimit, now: Timestamp) {
        let elapsed_ms = now.0.saturating_sub(self.refilled_at.0);
        // `per_second` tokens a second is `per_second` thousandths a millisecond.
        let added = elapsed_ms.saturating_mul(u64::from(rate.per_second));
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(added)
            .min(u64::from(rate.burst) * MILLI);
        self.refilled_at = self.refilled_at.max(now);
    }

    /// When the next whole token is there.
    fn next_token_at(&self, rate: mawex_api::RateLimit) -> Timestamp {
        let missing = MILLI.saturating_sub(self.milli_tokens);
        let ms = missing.div_ceil(u64::from(rate.per_second.max(1)));
        Timestamp(self.refilled_at.0.saturating_add(ms))
    }
}

impl Engine {
    /// An engine over recovered `state`. Attempts that were running when the master stopped
    /// become orphans: their pods get one lease timeout to reconnect and claim them.
    pub(crate) fn new(mut state: MasterState, config: EngineConfig, now: Timestamp) -> Self {
        state.rebuild_indexes();
        let deadline = now.saturating_add(config.lease_timeout);
        let orphans = state
            .running()
            .map(|e| (e.spec.id, (e.attempt, deadline)))
            .collect();
        Engine {
            state,
            config,
            pods: BTreeMap::new(),
            sessions: HashMap::new(),
            orphans,
            batch: 0,
            rotation: 0,
            dispatch_needed: true,
            buckets: HashMap::new(),
            compiled: HashMap::new(),
            departed: HashMap::new(),
            started_at: now,
        }
    }

    pub(crate) fn state(&self) -> &MasterState {
        &self.state
    }

    /// Applies `event` to the registry and the state, and records it for the journal.
    fn emit(&mut self, event: Event, out: &mut Output) {
        self.apply(&event);
        out.events.push(event);
    }

    /// Applies an event to the volatile registry, then to the durable state.
    pub(crate) fn apply(&mut self, event: &Event) {
        match event {
            Event::TaskAccepted { .. } => self.dispatch_needed = true,
            Event::TaskAssigned { attempt, pod, .. } => {
                if let Some(entry) = self.pods.get_mut(pod) {
                    let lease = Lease {
                        attempt: attempt.attempt,
                        batch: self.batch,
                    };
                    entry.leases.insert(attempt.task, lease);
                }
                self.orphans.remove(&attempt.task);
            }
            Event::TaskFinished { attempt, .. } | Event::TaskRequeued { attempt, .. } => {
                self.release(&attempt.task);
            }
            Event::TaskCancelled { task, .. } => self.release(task),
            Event::TaskRetryScheduled { attempt, .. } => self.release(&attempt.task),
            Event::TasksForgotten { .. } => {}
            // Back in a queue, or a group opened up: maybe something can be dispatched.
            Event::ScheduleCreated { .. }
            | Event::SchedulePaused { .. }
            | Event::ScheduleDeleted { .. }
            | Event::ScheduleSkipped { .. } => {}
            Event::TasksRetried { .. }
            | Event::GroupConfigured { .. }
            | Event::TasksUpdated { .. }
            | Event::ScheduleFired { .. }
            | Event::BroadcastFired { .. }
            | Event::BroadcastTargetAdded { .. }
            | Event::BroadcastAborted { .. } => self.dispatch_needed = true,
            Event::BroadcastPullStarted { .. } | Event::BroadcastTargetUnreachable { .. } => {}
        }
        self.state.apply(event);
    }

    /// Frees the lease a running task holds, wherever it is.
    fn release(&mut self, task: &TaskId) {
        let holder = self.state.task(task).and_then(|e| e.pod.as_ref());
        if let Some(entry) = holder.and_then(|pod| self.pods.get_mut(pod)) {
            entry.leases.remove(task);
        }
        self.orphans.remove(task);
        self.dispatch_needed = true;
    }

    /// Accepts a batch of tasks atomically.
    pub(crate) fn submit(
        &mut self,
        specs: Vec<TaskSpec>,
        now: Timestamp,
        out: &mut Output,
    ) -> Result<Vec<SubmitAck>, ApiError> {
        let mut acks = Vec::with_capacity(specs.len());
        let mut fresh: HashMap<TaskId, usize> = HashMap::new();
        // Dedup keys accepted earlier in this batch.
        let mut fresh_keys: HashMap<&str, TaskId> = HashMap::new();
        for (index, spec) in specs.iter().enumerate() {
            if let Some(dedup) = &spec.dedup {
                let live = fresh_keys.get(dedup.key.as_str()).copied().or_else(|| {
                    let holder = self.state.dedup_holder(&dedup.key)?;
                    let within = match &holder.result {
                        None => true,
                        Some(r) => now < r.finished_at.saturating_add(dedup.window),
                    };
                    (within && holder.spec.id != spec.id).then_some(holder.spec.id)
                });
                if let Some(existing) = live {
                    acks.push(SubmitAck::new(existing, false));
                    continue;
                }
            }
            let known = match self.state.task(&spec.id) {
                Some(entry) => Some(&entry.spec),
                None => fresh.get(&spec.id).map(|&i| &specs[i]),
            };
            match known {
                Some(known) if known == spec => acks.push(SubmitAck::new(spec.id, false)),
                Some(_) => {
                    return Err(ApiError::Conflict(format!(
                        "task #{index} of the batch: id {} is already used by a different task",
                        spec.id
                    )))
                }
                None => {
                    spec.validate(self.config.max_payload_bytes)
                        .map_err(|e| match e {
                            ApiError::InvalidArgument(m) => ApiError::InvalidArgument(format!(
                                "task #{index} of the batch: {m}"
                            )),
                            ApiError::ResourceExhausted(m) => ApiError::ResourceExhausted(format!(
                                "task #{index} of the batch: {m}"
                            )),
                            other => other,
                        })?;
                    fresh.insert(spec.id, index);
                    if let Some(dedup) = &spec.dedup {
                        fresh_keys.insert(dedup.key.as_str(), spec.id);
                    }
                    acks.push(SubmitAck::new(spec.id, true));
                }
            }
        }
        for (spec, ack) in specs.into_iter().zip(&acks) {
            if ack.created && ack.id == spec.id {
                self.emit(Event::TaskAccepted { spec, at: now }, out);
            }
        }
        Ok(acks)
    }

    /// Runs failed tasks matching `filter` again.
    pub(crate) fn retry_failed(
        &mut self,
        filter: &FailedFilter,
        now: Timestamp,
        out: &mut Output,
    ) -> u64 {
        let tasks = self.state.failed_matching(filter);
        let n = tasks.len() as u64;
        if !tasks.is_empty() {
            self.emit(Event::TasksRetried { tasks, at: now }, out);
        }
        n
    }

    /// Forgets failed tasks matching `filter`.
    pub(crate) fn purge_failed(&mut self, filter: &FailedFilter, out: &mut Output) -> u64 {
        let tasks = self.state.failed_matching(filter);
        let n = tasks.len() as u64;
        if !tasks.is_empty() {
            self.emit(Event::TasksForgotten { tasks }, out);
        }
        n
    }

    /// Moves, reprioritizes or repositions the pending tasks among `ids`.
    pub(crate) fn update_pending(
        &mut self,
        ids: Vec<TaskId>,
        change: PendingChange,
        out: &mut Output,
    ) -> Result<u64, ApiError> {
        if ids.is_empty() {
            return Err(ApiError::InvalidArgument("name the tasks to change".into()));
        }
        if change.is_empty() {
            return Err(ApiError::InvalidArgument(
                "the change is empty: give a group, a priority or a position".into(),
            ));
        }
        let mut tasks: Vec<TaskId> = ids
            .into_iter()
            .filter(|id| {
                self.state
                    .task(id)
                    .is_some_and(|e| e.state == TaskState::Pending)
            })
            .collect();
        tasks.sort_unstable();
        tasks.dedup();
        let n = tasks.len() as u64;
        if !tasks.is_empty() {
            self.emit(Event::TasksUpdated { tasks, change }, out);
        }
        Ok(n)
    }

    /// A task as clients see it, with an estimate of its wait if it is queued.
    pub(crate) fn view(&self, id: &TaskId) -> Option<TaskView> {
        let mut view = self.state.view(id)?;
        if view.state == TaskState::Pending && view.not_before.is_none() {
            view.eta = self.eta(&view.spec.group, id);
        }
        Some(view)
    }

    /// A page of tasks, with wait estimates for the queued ones.
    pub(crate) fn list(&self, query: &mawex_api::ListQuery) -> mawex_api::TaskPage {
        let mut page = self.state.list(query);
        for view in &mut page.tasks {
            if view.state == TaskState::Pending && view.not_before.is_none() {
                view.eta = self.eta(&view.spec.group, &view.spec.id);
            }
        }
        page
    }

    /// Tasks ahead × the group's recent mean duration ÷ the slots serving it now.
    fn eta(&self, group: &GroupName, id: &TaskId) -> Option<Duration> {
        let mean = self.state.mean_duration(group)?;
        let slots: u64 = self
            .pods
            .values()
            .filter(|p| !p.draining && p.groups.contains(group))
            .map(|p| u64::from(p.slots))
            .sum();
        if slots == 0 {
            return None;
        }
        let ahead = self.state.position_in_queue(id)? as u64;
        Some(mean.mul_f64(ahead as f64 / slots as f64))
    }

    /// Creates a schedule; the same one again is a no-op, another under its name a conflict.
    pub(crate) fn create_schedule(
        &mut self,
        spec: ScheduleSpec,
        now: Timestamp,
        out: &mut Output,
    ) -> Result<(), ApiError> {
        let compiled = Compiled::new(&spec)?;
        spec.task.validate(self.config.max_payload_bytes)?;
        match self.state.schedule(&spec.name) {
            Some(existing) if existing.spec == spec => Ok(()),
            Some(_) => Err(ApiError::Conflict(format!(
                "a different schedule named {} exists; delete it first",
                spec.name
            ))),
            None => {
                self.compiled.insert(spec.name.clone(), compiled);
                self.emit(Event::ScheduleCreated { spec, at: now }, out);
                Ok(())
            }
        }
    }

    /// Pauses or resumes a schedule.
    pub(crate) fn pause_schedule(
        &mut self,
        name: GroupName,
        paused: bool,
        now: Timestamp,
        out: &mut Output,
    ) -> Result<(), ApiError> {
        let schedule = self
            .state
            .schedule(&name)
            .ok_or_else(|| ApiError::InvalidArgument(format!("no schedule is named {name}")))?;
        if schedule.paused != paused {
            self.emit(
                Event::SchedulePaused {
                    name,
                    paused,
                    at: now,
                },
                out,
            );
        }
        Ok(())
    }

    /// Deletes a schedule (deleting an unknown one is harmless, so a retry is too).
    pub(crate) fn delete_schedule(&mut self, name: GroupName, out: &mut Output) {
        if self.state.schedule(&name).is_some() {
            self.compiled.remove(&name);
            self.emit(Event::ScheduleDeleted { name }, out);
        }
    }

    /// Every schedule as clients see it.
    pub(crate) fn schedule_views(&self) -> Vec<ScheduleView> {
        self.state
            .schedules()
            .map(|s| ScheduleView::new(s.spec.clone(), s.paused, s.last_tick, s.fired))
            .collect()
    }

    /// Fires the schedules whose ticks are due, under their missed-ticks policy.
    fn fire_schedules(&mut self, now: Timestamp, out: &mut Output) {
        let due: Vec<(GroupName, Due)> = self
            .state
            .schedules()
            .filter(|s| !s.paused)
            .filter_map(|s| {
                let compiled = match self.compiled.get(&s.spec.name) {
                    Some(c) => c.clone(),
                    None => Compiled::new(&s.spec).ok()?,
                };
                let due = schedule::decide(&compiled, s.spec.missed, s.handled_through, now)?;
                Some((s.spec.name.clone(), due))
            })
            .collect();
        for (name, due) in due {
            let Some(schedule) = self.state.schedule(&name) else {
                continue;
            };
            let tick = match due {
                Due::Skip(through) => {
                    self.emit(Event::ScheduleSkipped { name, through }, out);
                    continue;
                }
                Due::Fire(tick) | Due::FireSkipping(tick) => tick,
            };
            let mut task = schedule.spec.task.clone();
            task.id = schedule::task_id(name.as_str(), tick);
            task.run_at = None;
            self.emit(
                Event::ScheduleFired {
                    name,
                    tick,
                    task,
                    at: now,
                },
                out,
            );
        }
    }

    /// Changes how `group` is dispatched.
    pub(crate) fn configure_group(
        &mut self,
        group: GroupName,
        settings: GroupSettings,
        out: &mut Output,
    ) -> Result<(), ApiError> {
        settings.validate()?;
        if self.state.group_settings(&group) != settings {
            self.emit(Event::GroupConfigured { group, settings }, out);
        }
        Ok(())
    }

    /// Cancels a pending or running task; a running attempt is told to stop.
    pub(crate) fn cancel(
        &mut self,
        id: TaskId,
        now: Timestamp,
        out: &mut Output,
    ) -> Result<CancelAck, ApiError> {
        let entry = self.state.task(&id).ok_or(ApiError::NotFound(id))?;
        // Cancelling twice answers the same: a retried cancel whose first reply was lost
        // must not look as if the task had finished by itself.
        if entry.state == TaskState::Cancelled {
            return Ok(CancelAck::Cancelled);
        }
        if entry.state.is_terminal() {
            return Ok(CancelAck::AlreadyFinished(entry.state));
        }
        if entry.state == TaskState::Running {
            let session = entry
                .pod
                .as_ref()
                .and_then(|pod| self.pods.get(pod))
                .map(|p| p.session);
            if let Some(session) = session {
                out.messages
                    .push((session, MasterMessage::Cancel(entry.current())));
            }
        }
        self.emit(Event::TaskCancelled { task: id, at: now }, out);
        Ok(CancelAck::Cancelled)
    }

    /// Registers a pod on a new session, replacing an earlier registration of the same id,
    /// and re-adopts the attempts it still holds.
    pub(crate) fn pod_hello(
        &mut self,
        session: u64,
        hello: PodHello,
        now: Timestamp,
        out: &mut Output,
    ) -> Result<(), ApiError> {
        if hello.groups.is_empty() {
            return Err(ApiError::InvalidArgument(format!(
                "pod {}: a pod must serve at least one group",
                hello.pod
            )));
        }
        if !(1..=MAX_POD_SLOTS).contains(&hello.slots) {
            return Err(ApiError::InvalidArgument(format!(
                "pod {}: slots must be between 1 and {MAX_POD_SLOTS}, got {}",
                hello.pod, hello.slots
            )));
        }
        if hello.prefetch > MAX_POD_PREFETCH {
            return Err(ApiError::InvalidArgument(format!(
                "pod {}: prefetch must be at most {MAX_POD_PREFETCH}, got {}",
                hello.pod, hello.prefetch
            )));
        }
        let held: HashMap<TaskId, Attempt> =
            hello.holding.iter().map(|r| (r.task, r.attempt)).collect();

        // What the pod no longer holds, from an earlier session or from before a master
        // restart, runs elsewhere now rather than after a lease timeout.
        let mut lost: Vec<AttemptRef> = Vec::new();
        if let Some(old) = self.pods.remove(&hello.pod) {
            self.sessions.remove(&old.session);
            out.closed_sessions.push(old.session);
            lost.extend(
                old.leases
                    .iter()
                    .filter(|(task, lease)| held.get(task) != Some(&lease.attempt))
                    .map(|(&task, lease)| AttemptRef {
                        task,
                        attempt: lease.attempt,
                    }),
            );
        }
        lost.extend(
            self.orphans
                .iter()
                .filter(|(task, (attempt, _))| {
                    held.get(task) != Some(attempt)
                        && self.state.task(task).and_then(|e| e.pod.as_ref()) == Some(&hello.pod)
                })
                .map(|(&task, &(attempt, _))| AttemptRef { task, attempt }),
        );
        for attempt in lost {
            self.requeue(attempt, RequeueReason::PodLeft, now, out);
        }

        let groups: Vec<GroupName> = hello
            .groups
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut entry = PodEntry {
            session,
            groups,
            slots: hello.slots,
            capacity: hello.slots.saturating_add(hello.prefetch),
            leases: BTreeMap::new(),
            expires_at: now.saturating_add(self.config.lease_timeout),
            draining: false,
            usage: ResourceUsage::default(),
            labels: hello.labels.clone(),
            address: hello.address.clone(),
        };
        for r in &hello.holding {
            let adoptable = self.state.task(&r.task).is_some_and(|e| {
                e.state == TaskState::Running
                    && e.attempt == r.attempt
                    && e.pod.as_ref() == Some(&hello.pod)
            });
            if adoptable {
                let lease = Lease {
                    attempt: r.attempt,
                    batch: 0,
                };
                entry.leases.insert(r.task, lease);
                self.orphans.remove(&r.task);
            } else {
                out.messages.push((session, MasterMessage::Cancel(*r)));
            }
        }
        debug!(pod = %hello.pod, session, adopted = entry.leases.len(), "pod registered");
        self.sessions.insert(session, hello.pod.clone());
        self.departed.remove(&hello.pod);
        self.pods.insert(hello.pod.clone(), entry);
        self.catch_up(&hello.pod, now, out);
        self.dispatch_needed = true;
        Ok(())
    }

    /// Handles a message of a pod's session. Messages of unknown (replaced or expired)
    /// sessions are ignored: their pod must register again.
    pub(crate) fn pod_message(
        &mut self,
        session: u64,
        message: PodMessage,
        now: Timestamp,
        out: &mut Output,
    ) {
        let Some(pod_id) = self.sessions.get(&session).cloned() else {
            debug!(session, "message of an unknown session ignored");
            return;
        };
        let lease_timeout = self.config.lease_timeout;
        if let Some(entry) = self.pods.get_mut(&pod_id) {
            entry.expires_at = now.saturating_add(lease_timeout);
        }
        match message {
            PodMessage::Heartbeat {
                holding,
                received,
                usage,
            } => {
                if let (Some(entry), Some(usage)) = (self.pods.get_mut(&pod_id), usage) {
                    entry.usage = usage;
                }
                let Some(entry) = self.pods.get(&pod_id) else {
                    return;
                };
                let held: HashSet<AttemptRef> = holding.iter().copied().collect();
                for r in holding {
                    if !entry.holds(&r) {
                        out.messages.push((session, MasterMessage::Cancel(r)));
                    }
                }
                // Leases the pod has certainly received but no longer holds, with no result
                // on the way (results are sent before an attempt leaves `holding`).
                let lost: Vec<AttemptRef> = entry
                    .leases
                    .iter()
                    .filter(|(_, lease)| lease.batch <= received)
                    .map(|(&task, lease)| AttemptRef {
                        task,
                        attempt: lease.attempt,
                    })
                    .filter(|r| !held.contains(r))
                    .collect();
                for r in lost {
                    tracing::warn!(task = %r.task, attempt = %r.attempt, pod = %pod_id, "pod no longer holds a lease; running it again");
                    self.requeue(r, RequeueReason::NotHeld, now, out);
                }
            }
            PodMessage::Finished { attempt, outcome } => {
                // Recorded or stale, the pod may forget it once this batch is durable.
                out.messages
                    .push((session, MasterMessage::Ack(vec![attempt])));
                let current = self.state.task(&attempt.task).is_some_and(|e| {
                    e.state == TaskState::Running
                        && e.attempt == attempt.attempt
                        && e.pod.as_ref() == Some(&pod_id)
                });
                if !current {
                    debug!(task = %attempt.task, attempt = %attempt.attempt, pod = %pod_id, "result of a stale attempt dropped");
                    return;
                }
                match outcome {
                    Ok(output) => self.emit(
                        Event::TaskFinished {
                            attempt,
                            outcome: Outcome::Succeeded(output),
                            at: now,
                        },
                        out,
                    ),
                    Err(error) => self.fail_attempt(attempt, error, now, out),
                }
            }
            PodMessage::Drain => {
                if let Some(entry) = self.pods.get_mut(&pod_id) {
                    entry.draining = true;
                }
            }
            PodMessage::Returned { attempts } => {
                out.messages
                    .push((session, MasterMessage::Ack(attempts.clone())));
                // Only a pod that is shutting down hands work back: lease it nothing more.
                if let Some(entry) = self.pods.get_mut(&pod_id) {
                    entry.draining = true;
                }
                for attempt in attempts {
                    let held = self.pods.get(&pod_id).is_some_and(|p| p.holds(&attempt));
                    if held {
                        self.requeue(attempt, RequeueReason::Returned, now, out);
                    }
                }
            }
            PodMessage::Leave => {
                self.sessions.remove(&session);
                out.closed_sessions.push(session);
                if let Some(entry) = self.pods.remove(&pod_id) {
                    self.requeue_all(entry.leases, RequeueReason::PodLeft, now, out);
                }
                debug!(pod = %pod_id, "pod left");
                self.departed.insert(pod_id, now);
            }
            other => debug!(pod = %pod_id, message = ?other, "unsupported pod message ignored"),
        }
    }

    /// The connection of `session` is gone. Its pod may come back within a lease timeout
    /// and claim its attempts; until then they are orphans.
    pub(crate) fn pod_disconnected(&mut self, session: u64, now: Timestamp) {
        let Some(pod_id) = self.sessions.remove(&session) else {
            return;
        };
        if let Some(entry) = self.pods.remove(&pod_id) {
            let deadline = now.saturating_add(self.config.lease_timeout);
            for (task, lease) in entry.leases {
                self.orphans.insert(task, (lease.attempt, deadline));
            }
        }
        debug!(pod = %pod_id, session, "pod disconnected");
        self.departed.insert(pod_id, now);
    }

    fn requeue_all(
        &mut self,
        leases: BTreeMap<TaskId, Lease>,
        reason: RequeueReason,
        now: Timestamp,
        out: &mut Output,
    ) {
        for (task, lease) in leases {
            let attempt = AttemptRef {
                task,
                attempt: lease.attempt,
            };
            self.requeue(attempt, reason, now, out);
        }
    }

    /// A failed attempt: retried after a backoff while the policy allows, else the task
    /// fails for good with every attempt's error on record.
    fn fail_attempt(
        &mut self,
        attempt: AttemptRef,
        error: TaskError,
        now: Timestamp,
        out: &mut Output,
    ) {
        let Some(entry) = self.state.task(&attempt.task) else {
            return;
        };
        if entry.state != TaskState::Running || entry.attempt != attempt.attempt {
            return;
        }
        // The task's own policy, else its group's, else the master's.
        let policy = entry
            .spec
            .retry
            .or_else(|| self.state.group_settings(&entry.spec.group).retry)
            .unwrap_or(self.config.default_retry);
        // Failures since the last manual retry, this one included.
        let failures = u32::try_from(entry.failures.len())
            .unwrap_or(u32::MAX)
            .saturating_sub(entry.retry_base)
            .saturating_add(1);
        let delay = match error.retry {
            RetryHint::Never => None,
            _ if failures >= policy.max_attempts => None,
            RetryHint::After(delay) => Some(delay),
            _ => Some(full_jitter(policy.delay_cap(failures), attempt)),
        };
        let event = match delay {
            Some(delay) => Event::TaskRetryScheduled {
                attempt,
                error,
                retry_at: now.saturating_add(delay),
                at: now,
            },
            None => Event::TaskFinished {
                attempt,
                outcome: Outcome::Failed(error),
                at: now,
            },
        };
        self.emit(event, out);
    }

    fn requeue(
        &mut self,
        attempt: AttemptRef,
        reason: RequeueReason,
        now: Timestamp,
        out: &mut Output,
    ) {
        // A lease lost without word from the pod is a failed attempt: it counts.
        if matches!(reason, RequeueReason::LeaseExpired | RequeueReason::NotHeld) {
            let message = match reason {
                RequeueReason::NotHeld => "the pod no longer holds the attempt",
                _ => "the pod went silent; its lease expired",
            };
            let error = TaskError::new(ErrorKind::LeaseExpired, message);
            self.fail_attempt(attempt, error, now, out);
            return;
        }
        let current = self
            .state
            .task(&attempt.task)
            .is_some_and(|e| e.state == TaskState::Running && e.attempt == attempt.attempt);
        if current {
            self.emit(
                Event::TaskRequeued {
                    attempt,
                    reason,
                    at: now,
                },
                out,
            );
        }
    }

    /// Releases delayed tasks that are due, expires silent pods and unclaimed orphans, and
    /// forgets results past retention.
    pub(crate) fn tick(&mut self, now: Timestamp, out: &mut Output) {
        self.fire_schedules(now, out);
        if self.state.promote_due(now) {
            self.dispatch_needed = true;
        }
        if self.next_broadcast_deadline().is_some_and(|t| t <= now) {
            self.dispatch_needed = true;
        }
        // Rate-limited groups with work may have earned tokens since the last look.
        if self.buckets.keys().any(|g| self.state.has_pending(g)) {
            self.dispatch_needed = true;
        }
        let silent: Vec<PodId> = self
            .pods
            .iter()
            .filter(|(_, p)| p.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for pod_id in silent {
            if let Some(entry) = self.pods.remove(&pod_id) {
                tracing::warn!(pod = %pod_id, leases = entry.leases.len(), "pod stopped heartbeating; its leases expire");
                self.sessions.remove(&entry.session);
                out.closed_sessions.push(entry.session);
                self.requeue_all(entry.leases, RequeueReason::LeaseExpired, now, out);
                self.departed.insert(pod_id, now);
            }
        }
        self.fail_unreachable_targets(now, out);
        let expired: Vec<AttemptRef> = self
            .orphans
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(&task, &(attempt, _))| AttemptRef { task, attempt })
            .collect();
        for attempt in expired {
            self.orphans.remove(&attempt.task);
            self.requeue(attempt, RequeueReason::LeaseExpired, now, out);
        }
        if let Some(cutoff) = now.0.checked_sub(
            u64::try_from(self.config.result_retention.as_millis()).unwrap_or(u64::MAX),
        ) {
            let old = self
                .state
                .finished_before(Timestamp(cutoff), FORGET_PER_TICK);
            if !old.is_empty() {
                self.emit(Event::TasksForgotten { tasks: old }, out);
            }
        }
    }

    /// Leases pending tasks to pods with free capacity: highest priority, then oldest,
    /// among the pod's groups; one task per pod per round so that work spreads.
    pub(crate) fn dispatch(&mut self, now: Timestamp, out: &mut Output) {
        if !self.dispatch_needed {
            return;
        }
        self.dispatch_needed = false;
        // Broadcast targets first: each is pinned to its pod and waits for a source.
        self.dispatch_broadcasts(now, out);
        let mut active: Vec<PodId> = self
            .pods
            .iter()
            .filter(|(_, p)| {
                p.free() > 0
                    && p.groups
                        .iter()
                        .any(|g| self.state.has_pending(g) && self.state.group_open(g))
            })
            .map(|(id, _)| id.clone())
            .collect();
        if active.is_empty() {
            return;
        }
        let start = self.rotation % active.len();
        active.rotate_left(start);
        self.rotation = self.rotation.wrapping_add(1);
        self.batch += 1;
        while !active.is_empty() {
            let mut still: Vec<PodId> = Vec::with_capacity(active.len());
            for pod_id in active {
                let Some(pod) = self.pods.get(&pod_id) else {
                    continue;
                };
                if pod.free() == 0 {
                    continue;
                }
                let next = if self.state.any_group_settings() {
                    // Some group is paused, capped or rate limited: check each of the pod's.
                    let groups = pod.groups.clone();
                    let open: Vec<GroupName> = groups
                        .into_iter()
                        .filter(|g| self.state.group_open(g) && self.has_token(g, now))
                        .collect();
                    let next = self.state.next_pending(&open);
                    if let Some(group) = next
                        .and_then(|t| self.state.task(&t))
                        .map(|e| e.spec.group.clone())
                    {
                        self.take_token(&group);
                    }
                    next
                } else {
                    self.state.next_pending(&pod.groups)
                };
                let Some(task) = next else {
                    continue;
                };
                let Some(next) = self.state.task(&task).map(|e| e.attempt.next()) else {
                    continue;
                };
                let attempt = AttemptRef {
                    task,
                    attempt: next,
                };
                self.emit(
                    Event::TaskAssigned {
                        attempt,
                        pod: pod_id.clone(),
                        at: now,
                    },
                    out,
                );
                still.push(pod_id);
            }
            active = still;
        }
    }

    /// May `group` start a task now under its rate limit? Refills its bucket first.
    fn has_token(&mut self, group: &GroupName, now: Timestamp) -> bool {
        let Some(rate) = self.state.group_settings(group).rate else {
            if !self.buckets.is_empty() {
                // The limit was lifted.
                self.buckets.remove(group);
            }
            return true;
        };
        let bucket = self.buckets.entry(group.clone()).or_insert(Bucket {
            milli_tokens: u64::from(rate.burst) * MILLI,
            refilled_at: now,
        });
        bucket.refill(rate, now);
        bucket.milli_tokens >= MILLI
    }

    fn take_token(&mut self, group: &GroupName) {
        if let Some(bucket) = self.buckets.get_mut(group) {
            bucket.milli_tokens = bucket.milli_tokens.saturating_sub(MILLI);
        }
    }

    /// When the next lease, orphan, delayed task or rate-limit token falls due, if any.
    pub(crate) fn next_deadline(&self) -> Option<Timestamp> {
        let pods = self.pods.values().map(|p| p.expires_at);
        let orphans = self.orphans.values().map(|(_, d)| *d);
        let tokens = self.buckets.iter().filter_map(|(group, bucket)| {
            let rate = self.state.group_settings(group).rate?;
            (bucket.milli_tokens < MILLI && self.state.has_pending(group))
                .then(|| bucket.next_token_at(rate))
        });
        pods.chain(orphans)
            .chain(self.state.next_due())
            .chain(tokens)
            .chain(self.next_broadcast_deadline())
            .min()
    }

    /// The number of the last dispatch batch, carried by its `Assign` messages.
    pub(crate) fn batch(&self) -> u64 {
        self.batch
    }

    /// The session currently serving `pod`.
    pub(crate) fn session_of(&self, pod: &PodId) -> Option<u64> {
        self.pods.get(pod).map(|p| p.session)
    }

    pub(crate) fn counts(&self) -> TaskCounts {
        self.state.counts()
    }

    pub(crate) fn pod_stats(&self) -> Vec<PodStats> {
        self.pods
            .iter()
            .map(|(id, p)| PodStats {
                id: id.clone(),
                groups: p.groups.clone(),
                slots: p.slots,
                leased: p.leases.len(),
                usage: p.usage,
            })
            .collect()
    }
}

/// A delay drawn from `[0, cap)`, "full jitter" so that retries of many tasks spread out.
/// Derived from the attempt rather than a random source, so the decision is deterministic; the
/// chosen time is journaled, so replay never recomputes it.
fn full_jitter(cap: Duration, attempt: AttemptRef) -> Duration {
    let bytes = attempt.task.as_bytes();
    let mut x = u64::from_le_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ]) ^ u64::from_le_bytes([
        bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15],
    ]) ^ u64::from(attempt.attempt.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finalizer: spreads the bits uniformly.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    cap.mul_f64((x >> 11) as f64 / (1u64 << 53) as f64)
}

#[path = "engine_broadcast.rs"]
mod broadcast;

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
