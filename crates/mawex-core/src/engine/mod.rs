//! Decisions: what events a command produces, given the state, the live pods and `now`.
//!
//! The engine owns the durable [`MasterState`] and the volatile registry of connected pods
//! (which a restart rebuilds from reconnecting pods, so it is never journaled). It does no
//! I/O and reads no clock: every method takes `now`. Each emitted event is applied at once,
//! so later commands of the same batch see earlier ones; the core loop makes the batch
//! durable before anything leaves the master.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use mawex_api::pod::{AttemptRef, MasterMessage, ResourceUsage};
use mawex_api::{Attempt, GroupName, PodId, RetryPolicy, ScheduleName, TaskId, Timestamp};

use crate::state::{Event, MasterState, TaskCounts};
use cron::Compiled;

/// The most finished tasks forgotten by one tick, to bound the work of one batch.
const FORGET_PER_TICK: usize = 10_000;

/// The engine's share of the master configuration.
#[derive(Debug, Clone)]
pub(crate) struct EngineConfig {
    pub(crate) lease_timeout: Duration,
    /// Added to `lease_timeout` for attempts running when the engine starts.
    pub(crate) recovery_grace: Duration,
    /// Retries of tasks that name no policy of their own.
    pub(crate) default_retry: RetryPolicy,
    pub(crate) result_retention: Duration,
    pub(crate) max_payload_bytes: usize,
    /// Pods connected at once; a hello of one more (not a reconnect) is refused.
    pub(crate) max_pods: usize,
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
    /// Live output of attempts whose pods hold their leases: kept, never journaled.
    pub(crate) output: Vec<(AttemptRef, Vec<mawex_api::OutputLine>)>,
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
    groups: std::sync::Arc<[GroupName]>,
    slots: u32,
    /// Leases it may ever hold: slots plus prefetch.
    capacity: u32,
    /// With adaptive prefetch, the pace that sizes its queue beyond the slots.
    pace: Option<pace::Pace>,
    /// Ordered, so that events derived from it come out in a deterministic order.
    leases: BTreeMap<TaskId, Lease>,
    /// Without a message from the pod by then, its leases expire.
    expires_at: Timestamp,
    /// Shutting down: it gets no new leases.
    draining: bool,
    /// Last reported resource use.
    usage: ResourceUsage,
    /// Its labels, for broadcast filters (shared with the published stats).
    labels: std::sync::Arc<BTreeMap<String, String>>,
    /// When its session began.
    connected_at: Timestamp,
    /// When it last sent anything.
    last_heard: Timestamp,
    /// Where other pods reach it (a broadcast source's address).
    address: Option<String>,
    /// The id of its token, whose `max_pods` it counts against.
    token: Option<String>,
}

impl PodEntry {
    /// Leases it may hold now: with adaptive prefetch, its slots plus what its pace allows.
    fn capacity_now(&self) -> u32 {
        match &self.pace {
            Some(pace) => self.slots.saturating_add(pace.extra()).min(self.capacity),
            None => self.capacity,
        }
    }

    fn free(&self) -> usize {
        if self.draining {
            return 0;
        }
        (self.capacity_now() as usize).saturating_sub(self.leases.len())
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
    /// Groups it serves (shared with the master's record of the pod: the stats are
    /// published after every commit, and a copy per pod each time would cost an allocation).
    pub groups: std::sync::Arc<[GroupName]>,
    /// Attempts it runs at once.
    pub slots: u32,
    /// Leases it holds now (running or queued in the pod).
    pub leased: usize,
    /// Resource use from its last heartbeat.
    pub usage: ResourceUsage,
    /// Leaving: it takes no new leases.
    pub draining: bool,
    /// Its labels.
    pub labels: std::sync::Arc<BTreeMap<String, String>>,
    /// Where other pods reach it, if it said.
    pub address: Option<String>,
    /// When its session began.
    pub connected_at: Timestamp,
    /// When it last sent anything (a heartbeat at least every heartbeat interval).
    pub last_heard: Timestamp,
}

/// State machine plus live pod registry.
#[derive(Debug)]
pub(crate) struct Engine {
    state: MasterState,
    config: EngineConfig,
    /// Ordered so that dispatch order, and so the journal, is deterministic.
    pods: BTreeMap<PodId, PodEntry>,
    /// A pod connected, left or started draining since [`Engine::take_pods_changed`]: what
    /// the pods' stats show changed without an event.
    pods_changed: bool,
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
    compiled: HashMap<ScheduleName, Compiled>,
    /// When each pod that is not connected now went away, for a lease (volatile).
    departed: HashMap<PodId, Timestamp>,
    /// Pods away for longer than a lease that applied some version or whose id a
    /// credential owns, by when they left: both are forgotten after the result retention
    /// (volatile; a restart counts such pods away since its start).
    away: Away,
    /// When this engine started: a pod not seen since is away since then.
    started_at: Timestamp,
    /// Blocked tasks whose dependencies changed in this batch: judged before dispatch.
    to_judge: BTreeSet<TaskId>,
    /// How many dependencies each blocked task judged so far still waits for: a success
    /// counts it down, and it is judged again only when none is left (volatile; a task not
    /// in it is judged in full). A count can only be too low, never too high: each
    /// dependency ends once while its dependant waits (see `Engine::retryable`), and a
    /// count that reaches 0 early only costs a judge that finds it still waiting.
    unfinished: HashMap<TaskId, u32>,
    /// Tasks retried in this batch that have dependants: those they cancelled come back.
    to_revive: BTreeSet<TaskId>,
    /// Where forgetting results past their retention has got to (volatile).
    retention: Retention,
}

/// Where forgetting results past their retention has got to: the stream position scanned,
/// and the finished tasks kept past it because others still need them (volatile: a restart
/// scans from the start again).
#[derive(Debug, Default)]
struct Retention {
    scanned: u64,
    held: BTreeSet<TaskId>,
    /// Where the next look at `held` starts.
    next_held: Option<TaskId>,
}

/// Pods that went away, by when: what a timer forgets, oldest first, without looking at the
/// others.
#[derive(Debug, Default)]
struct Away {
    since: HashMap<PodId, Timestamp>,
    by_time: BTreeSet<(Timestamp, PodId)>,
}

impl Away {
    fn insert(&mut self, pod: PodId, at: Timestamp) {
        if let Some(old) = self.since.insert(pod.clone(), at) {
            self.by_time.remove(&(old, pod.clone()));
        }
        self.by_time.insert((at, pod));
    }

    fn remove(&mut self, pod: &PodId) {
        if let Some(at) = self.since.remove(pod) {
            self.by_time.remove(&(at, pod.clone()));
        }
    }

    /// Removes and returns up to `limit` pods away since before `cutoff`, oldest first.
    fn take_before(&mut self, cutoff: Timestamp, limit: usize) -> Vec<PodId> {
        let mut taken = Vec::new();
        while taken.len() < limit {
            match self.by_time.first() {
                Some((at, _)) if *at < cutoff => {}
                _ => break,
            }
            if let Some((_, pod)) = self.by_time.pop_first() {
                self.since.remove(&pod);
                taken.push(pod);
            }
        }
        taken
    }
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
    /// An engine over recovered `state`, its indexes built (as `Recovered::into_state` gives
    /// it: rebuilding them here too cost a restart a second at a million tasks). Attempts
    /// that were running when the master stopped become orphans: their pods get one lease
    /// timeout, and the recovery grace, to reconnect and claim them.
    pub(crate) fn new(state: MasterState, config: EngineConfig, now: Timestamp) -> Self {
        let deadline = now
            .saturating_add(config.lease_timeout)
            .saturating_add(config.recovery_grace);
        let mut away = Away::default();
        for pod in state
            .broadcasts()
            .pods_with_versions()
            .into_iter()
            .chain(state.owned_pods())
        {
            away.insert(pod.clone(), now);
        }
        let orphans = state
            .running()
            .map(|e| (e.spec.id, (e.attempt, deadline)))
            .collect();
        let mut engine = Engine {
            state,
            config,
            pods: BTreeMap::new(),
            pods_changed: false,
            sessions: HashMap::new(),
            orphans,
            batch: 0,
            rotation: 0,
            dispatch_needed: true,
            buckets: HashMap::new(),
            compiled: HashMap::new(),
            departed: HashMap::new(),
            away,
            started_at: now,
            to_judge: BTreeSet::new(),
            unfinished: HashMap::new(),
            to_revive: BTreeSet::new(),
            retention: Retention::default(),
        };
        engine.judge_all_blocked();
        engine
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
            Event::TaskAssigned { attempt, pod, at } => {
                if let Some(entry) = self.pods.get_mut(pod) {
                    let lease = Lease {
                        attempt: attempt.attempt,
                        batch: self.batch,
                    };
                    entry.leases.insert(attempt.task, lease);
                    if let Some(pace) = &mut entry.pace {
                        pace.leased(*at);
                    }
                }
                self.orphans.remove(&attempt.task);
            }
            Event::TaskFinished { attempt, .. } | Event::TaskRequeued { attempt, .. } => {
                self.release(&attempt.task);
            }
            Event::TaskCancelled { task, .. } => self.release(task),
            Event::TaskRetryScheduled { attempt, .. } => self.release(&attempt.task),
            Event::TasksForgotten { .. }
            | Event::BroadcastsForgotten { .. }
            | Event::PodsForgotten { .. }
            | Event::PodBound { .. } => {}
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
            Event::TasksCancelledByDependency { tasks, .. } => {
                for (task, _) in tasks {
                    self.release(task);
                }
            }
            Event::WorkflowAccepted { .. } | Event::TasksUnblocked { .. } => {
                self.dispatch_needed = true;
            }
            Event::TasksRevived { .. } => {}
        }
        self.state.apply(event);
        self.note_workflow_event(event);
    }

    /// Frees the lease a running task holds, wherever it is.
    fn release(&mut self, task: &TaskId) {
        let holder = self.state.task(task).and_then(|e| e.pod());
        if let Some(entry) = holder.and_then(|pod| self.pods.get_mut(pod)) {
            entry.leases.remove(task);
        }
        self.orphans.remove(task);
        self.dispatch_needed = true;
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

    /// True if a pod connected, left or started draining since the last call.
    pub(crate) fn take_pods_changed(&mut self) -> bool {
        std::mem::take(&mut self.pods_changed)
    }

    /// Gives pod `id` no new work from now on, and tells it so: it hands back what it has
    /// queued, finishes what runs, and says it drains to every master until it restarts.
    /// False if no such pod is connected.
    pub(crate) fn drain_pod(&mut self, id: &PodId, out: &mut Output) -> bool {
        match self.pods.get_mut(id) {
            Some(entry) => {
                if !entry.draining {
                    entry.draining = true;
                    self.pods_changed = true;
                }
                out.messages.push((entry.session, MasterMessage::Drain));
                true
            }
            None => false,
        }
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
                draining: p.draining,
                labels: p.labels.clone(),
                address: p.address.clone(),
                connected_at: p.connected_at,
                last_heard: p.last_heard,
            })
            .collect()
    }
}

mod broadcast;
mod cron;
mod dispatch;
mod pace;
mod pods;
mod requests;
mod retry;
mod schedules;
mod timers;
mod workflows;

#[cfg(test)]
mod tests;
