//! `MasterState::apply`: the one pure function that changes durable state.

use std::collections::{BTreeMap, HashMap, HashSet};

use mawex_api::{ErrorKind, GroupName, QueuePosition, TaskId, TaskState, Timestamp};

use super::broadcasts::Broadcasts;
use super::stored::{
    self, AttemptFailure, AttemptRef, BroadcastSpec, Links, Outcome, TaskResult, TaskSpec,
};
use super::{Event, MasterState, QueueKey, Schedule, TaskEntry, ROUND_BASE};

/// One running task of `group` stopped running.
fn leave_running(running: &mut HashMap<GroupName, u32>, group: &GroupName) {
    if let Some(n) = running.get_mut(group) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            running.remove(group);
        }
    }
}

impl MasterState {
    /// Applies one event that is not needed afterwards, as [`MasterState::apply`] does: a
    /// replay moves an accepted task's spec into the state instead of copying it.
    pub fn apply_owned(&mut self, event: Event) {
        match event {
            Event::TaskAccepted { spec, at } => {
                if !self.tasks.contains_key(&spec.id) {
                    self.accept(spec, at);
                }
            }
            other => self.apply(&other),
        }
    }

    /// Adds a task of a workflow just accepted (its id is not taken): blocked while it runs
    /// after something, else pending as any task.
    fn accept_linked(&mut self, spec: TaskSpec, links: Links, at: Timestamp) {
        let id = spec.id;
        if links.after.is_empty() {
            self.accept(spec, at);
        } else {
            self.accepted = self.accepted.saturating_add(1);
            let mut entry = TaskEntry::pending(spec, self.accepted, at);
            entry.state = TaskState::Blocked;
            self.counts.moved(None, Some(TaskState::Blocked));
            self.listed
                .moved(id, &entry.spec.group, None, Some(TaskState::Blocked));
            self.tasks.insert(id, entry);
        }
        self.workflows.accept(id, links);
    }

    /// Adds a task just accepted (its id is not taken).
    fn accept(&mut self, spec: TaskSpec, at: Timestamp) {
        self.accepted = self.accepted.saturating_add(1);
        let id = spec.id;
        let not_before = spec.run_at().filter(|t| *t > at);
        let mut entry = TaskEntry::pending(spec, self.accepted, at);
        entry.not_before = not_before;
        let group = &entry.spec.group;
        // Looked up before inserting: the group is mostly there, and needs no copy.
        let rounds = match self.rounds.get_mut(group) {
            Some(rounds) => rounds,
            None => self.rounds.entry(group.clone()).or_default(),
        };
        entry.round = rounds.next_for(entry.fairness_key());
        rounds.add(entry.fairness_key(), entry.round);
        if let Some(dedup) = entry.spec.dedup() {
            self.dedup.insert((group.clone(), dedup.key.clone()), id);
        }
        self.counts.moved(None, Some(TaskState::Pending));
        self.listed.moved(id, group, None, Some(TaskState::Pending));
        self.enqueue(&entry);
        self.tasks.insert(id, entry);
    }

    /// Applies one event. Events come from `decide` (which validated them) or from the
    /// journal; an event that does not fit the state is a no-op, so replay is total.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::TaskAccepted { spec, at } => {
                if !self.tasks.contains_key(&spec.id) {
                    self.accept(spec.clone(), *at);
                }
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
                self.listed.moved(
                    attempt.task,
                    &entry.spec.group,
                    Some(entry.state),
                    Some(TaskState::Running),
                );
                *self
                    .running_by_group
                    .entry(entry.spec.group.clone())
                    .or_default() += 1;
                entry.state = TaskState::Running;
                entry.attempt = attempt.attempt;
                entry.set_running_on(pod.clone(), *at);
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
                if entry.state == TaskState::Cancelled {
                    // A task a dependency cancelled, cancelled as asked: not revived later.
                    self.workflows.set_cancelled_by(task, None);
                    return;
                }
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
                    self.failed_kinds
                        .remove(&entry.spec.group, entry.failed_kind());
                    if let Some(result) = entry.take_result() {
                        self.results.remove(&result.seq);
                    }
                    self.counts
                        .moved(Some(entry.state), Some(TaskState::Pending));
                    self.listed.moved(
                        *id,
                        &entry.spec.group,
                        Some(entry.state),
                        Some(TaskState::Pending),
                    );
                    entry.state = TaskState::Pending;
                    entry.not_before = None;
                    entry.reset_retry_budget();
                    // Back in line as a newcomer of its key. A broadcast target is never in a
                    // queue, so it holds no round (as when it was fired, and after a load).
                    let rounds = self.rounds.entry(entry.spec.group.clone()).or_default();
                    let key = entry.spec.fairness_key.as_deref().unwrap_or("");
                    entry.round = rounds.next_for(key);
                    if !self.broadcasts.is_target(id) {
                        rounds.add(key, entry.round);
                    }
                    enqueue_in(
                        &mut self.pending,
                        &mut self.delayed,
                        &self.broadcasts,
                        entry,
                    );
                    self.broadcasts.back_to_waiting(id, None);
                }
            }
            Event::TasksUpdated { tasks, change } => {
                // Dedup keys that changed groups, in both groups: recomputed in one pass
                // over the tasks after the moves, however many moved.
                let mut moved_keys: HashSet<(GroupName, String)> = HashSet::new();
                for id in tasks {
                    let Some(entry) = self.tasks.get(id) else {
                        continue;
                    };
                    if entry.state != TaskState::Pending {
                        continue;
                    }
                    let mut entry = entry.clone();
                    self.dequeue(&entry);
                    let target = self.broadcasts.is_target(id);
                    if let Some(rounds) = self.rounds.get_mut(&entry.spec.group) {
                        if !target {
                            rounds.remove(entry.fairness_key(), entry.round);
                        }
                    }
                    let moved = change
                        .group
                        .as_ref()
                        .is_some_and(|g| *g != entry.spec.group);
                    let from = entry.spec.group.clone();
                    if let Some(group) = &change.group {
                        entry.spec.group = group.clone();
                    }
                    if moved {
                        let pending = Some(TaskState::Pending);
                        self.listed.moved(*id, &from, pending, None);
                        self.listed.moved(*id, &entry.spec.group, None, pending);
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
                    if !target {
                        rounds.add(entry.fairness_key(), entry.round);
                    }
                    self.enqueue(&entry);
                    if let (true, Some(dedup)) = (moved, entry.spec.dedup()) {
                        moved_keys.insert((from, dedup.key.clone()));
                        moved_keys.insert((entry.spec.group.clone(), dedup.key.clone()));
                    }
                    self.tasks.insert(*id, entry);
                }
                if !moved_keys.is_empty() {
                    self.recompute_dedup_holders(moved_keys);
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
                    s.fired = s.fired.saturating_add(1);
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
            Event::BroadcastsForgotten { ids } => {
                for id in ids {
                    let tasks = &self.tasks;
                    self.broadcasts.forget(*id, |task| tasks.contains_key(task));
                }
            }
            Event::PodsForgotten { pods } => {
                self.broadcasts.forget_pods(pods);
                for pod in pods {
                    self.pod_owners.remove(pod);
                }
            }
            Event::PodBound { pod, owner } => {
                self.pod_owners.insert(pod.clone(), owner.clone());
            }
            Event::WorkflowAccepted { graph, tasks, at } => {
                if let Some(graph) = graph {
                    self.workflows.add_graph(graph);
                }
                for (spec, links) in tasks {
                    if !self.tasks.contains_key(&spec.id) {
                        self.accept_linked(spec.clone(), links.clone(), *at);
                    }
                }
            }
            Event::TasksUnblocked { tasks, at } => {
                for id in tasks {
                    self.unblock(id, *at);
                }
            }
            Event::TasksCancelledByDependency { tasks, at } => {
                for (id, root) in tasks {
                    if self.tasks.get(id).map(|e| e.state) != Some(TaskState::Blocked) {
                        continue;
                    }
                    self.finish(*id, Outcome::Cancelled, *at);
                    self.workflows.set_cancelled_by(id, Some(*root));
                }
            }
            Event::TasksRevived { tasks, at: _ } => {
                for id in tasks {
                    self.revive(id);
                }
            }
            Event::TasksForgotten { tasks } => {
                for id in tasks {
                    let Some(entry) = self.tasks.get(id) else {
                        continue;
                    };
                    if !entry.state.is_terminal() {
                        continue;
                    }
                    if let Some(result) = entry.result() {
                        self.results.remove(&result.seq);
                    }
                    if let Some(dedup) = entry.spec.dedup() {
                        let key = (entry.spec.group.clone(), dedup.key.clone());
                        if self.dedup.get(&key) == Some(id) {
                            self.dedup.remove(&key);
                        }
                    }
                    if entry.state == TaskState::Failed {
                        self.failed_kinds
                            .remove(&entry.spec.group, entry.failed_kind());
                    }
                    self.counts.moved(Some(entry.state), None);
                    self.listed
                        .moved(*id, &entry.spec.group, Some(entry.state), None);
                    self.tasks.remove(id);
                    self.broadcasts.target_task_forgotten(id);
                    self.workflows.forget(id);
                }
            }
        }
    }

    /// A blocked task becomes pending (or delayed, if its start time is still to come). A
    /// graph's task takes, in its queue, the place of its dependency of the same graph and
    /// group that was queued last, so that a graph runs depth first and keeps its place in
    /// line, not going to the back at every layer; but while other fairness keys of the
    /// group have live tasks, it goes to the back of its key's line, so that keys keep
    /// taking turns (see `Rounds::taking_place`). Any other task joins the line as a
    /// newcomer of its key.
    fn unblock(&mut self, id: &TaskId, at: Timestamp) {
        let Some(entry) = self.tasks.get(id) else {
            return;
        };
        if entry.state != TaskState::Blocked {
            return;
        }
        // Only a graph's node takes a place, and only from the graph's own nodes: a task
        // that runs after a task submitted before others would jump them. A dependency is
        // the task that was meant only if accepted before (ids are the clients', reusable).
        let place = self.workflows.links(id).and_then(|links| {
            let (graph, _) = links.graph.as_ref()?;
            links
                .after
                .iter()
                .filter_map(|edge| Some((edge.task, self.tasks.get(&edge.task)?)))
                .filter(|(_, dependency)| {
                    dependency.order < entry.order && dependency.spec.group == entry.spec.group
                })
                .filter(|(task, _)| {
                    let links = self.workflows.links(task);
                    links
                        .and_then(|l| l.graph.as_ref())
                        .is_some_and(|(g, _)| g == graph)
                })
                .map(|(_, dependency)| dependency.round)
                .max()
        });
        let Some(entry) = self.tasks.get_mut(id) else {
            return;
        };
        self.counts
            .moved(Some(TaskState::Blocked), Some(TaskState::Pending));
        self.listed.moved(
            *id,
            &entry.spec.group,
            Some(TaskState::Blocked),
            Some(TaskState::Pending),
        );
        entry.state = TaskState::Pending;
        entry.not_before = entry.spec.run_at().filter(|t| *t > at);
        // Looked up before inserting: the group is mostly there, and needs no copy.
        let rounds = match self.rounds.get_mut(&entry.spec.group) {
            Some(rounds) => rounds,
            None => self.rounds.entry(entry.spec.group.clone()).or_default(),
        };
        let key = entry.spec.fairness_key.as_deref().unwrap_or("");
        entry.round = rounds.taking_place(key, place);
        rounds.add(key, entry.round);
        enqueue_in(
            &mut self.pending,
            &mut self.delayed,
            &self.broadcasts,
            entry,
        );
    }

    /// A task cancelled by a dependency is blocked again, its result dropped.
    fn revive(&mut self, id: &TaskId) {
        let cancelled_by_dependency = self
            .workflows
            .links(id)
            .is_some_and(|l| l.cancelled_by.is_some());
        let Some(entry) = self.tasks.get_mut(id) else {
            return;
        };
        if entry.state != TaskState::Cancelled || !cancelled_by_dependency {
            return;
        }
        if let Some(result) = entry.take_result() {
            self.results.remove(&result.seq);
        }
        self.counts
            .moved(Some(TaskState::Cancelled), Some(TaskState::Blocked));
        self.listed.moved(
            *id,
            &entry.spec.group,
            Some(TaskState::Cancelled),
            Some(TaskState::Blocked),
        );
        entry.state = TaskState::Blocked;
        entry.not_before = None;
        self.workflows.set_cancelled_by(id, None);
    }

    /// The pending task of a broadcast target (already indexed as one, so never queued).
    fn add_target_task(&mut self, spec: &BroadcastSpec, task: TaskId, at: Timestamp) {
        if self.tasks.contains_key(&task) {
            return;
        }
        let task_spec = spec.target_task(task);
        self.accepted = self.accepted.saturating_add(1);
        let mut entry = TaskEntry::pending(task_spec, self.accepted, at);
        entry.round = ROUND_BASE;
        self.counts.moved(None, Some(TaskState::Pending));
        self.listed
            .moved(task, &entry.spec.group, None, Some(TaskState::Pending));
        self.tasks.insert(task, entry);
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
        self.listed.moved(
            attempt.task,
            &entry.spec.group,
            Some(entry.state),
            Some(TaskState::Pending),
        );
        leave_running(&mut self.running_by_group, &entry.spec.group);
        entry.state = TaskState::Pending;
        entry.clear_pod();
        if let Some((failure, retry_at)) = failed {
            entry.record_failure(failure);
            entry.not_before = Some(retry_at);
        }
        enqueue_in(
            &mut self.pending,
            &mut self.delayed,
            &self.broadcasts,
            entry,
        );
        true
    }

    /// Puts a pending task in its group's queue, or with the delayed ones if it must wait.
    /// Broadcast targets stay out: the engine dispatches them by their strategy.
    pub(super) fn enqueue(&mut self, entry: &TaskEntry) {
        enqueue_in(
            &mut self.pending,
            &mut self.delayed,
            &self.broadcasts,
            entry,
        );
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
                entry.record_failure(AttemptFailure {
                    attempt: entry.attempt,
                    error: error.clone(),
                    at,
                });
            }
        }
        entry.not_before = None;
        self.results_recorded = self.results_recorded.saturating_add(1);
        let seq = self.results_recorded;
        let state = outcome.state();
        if entry.state == TaskState::Running {
            leave_running(&mut self.running_by_group, &entry.spec.group);
        }
        // A broadcast target holds no round, nor does a blocked task: removing one would take
        // another task's.
        if let Some(rounds) = self.rounds.get_mut(&entry.spec.group) {
            if !self.broadcasts.is_target(&id) && entry.state != TaskState::Blocked {
                let key = entry.spec.fairness_key.as_deref().unwrap_or("");
                rounds.remove(key, entry.round);
            }
        }
        if let (TaskState::Running, Some(started)) = (entry.state, entry.started_at()) {
            let ms = at.0.saturating_sub(started.0);
            let mean = self.durations.entry(entry.spec.group.clone()).or_insert(ms);
            // A moving average weighted 4:1 towards the past: recent, but not jumpy.
            *mean = mean.saturating_mul(4).saturating_add(ms) / 5;
        }
        self.counts.moved(Some(entry.state), Some(state));
        self.listed
            .moved(id, &entry.spec.group, Some(entry.state), Some(state));
        if entry.state == TaskState::Failed {
            self.failed_kinds
                .remove(&entry.spec.group, entry.failed_kind());
        }
        if state == TaskState::Failed {
            self.failed_kinds
                .add(&entry.spec.group, entry.failed_kind());
        }
        entry.state = state;
        let result = TaskResult {
            id,
            group: entry.spec.group.clone(),
            attempt: entry.attempt,
            outcome,
            finished_at: at,
            seq,
        };
        entry.finish(result);
        self.results.insert(seq, id);
    }
}

/// [`MasterState::enqueue`] on the fields it changes, so that it takes a task borrowed from
/// the state's tasks (a copy of the task would cost more than the rest of it).
fn enqueue_in(
    pending: &mut HashMap<GroupName, BTreeMap<QueueKey, TaskId>>,
    delayed: &mut BTreeMap<(Timestamp, u64), TaskId>,
    broadcasts: &Broadcasts,
    entry: &TaskEntry,
) {
    if broadcasts.is_target(&entry.spec.id) {
        return;
    }
    match entry.not_before {
        Some(t) => {
            delayed.insert((t, entry.order), entry.spec.id);
        }
        None => {
            let queue = match pending.get_mut(&entry.spec.group) {
                Some(queue) => queue,
                None => pending.entry(entry.spec.group.clone()).or_default(),
            };
            queue.insert(entry.queue_key(), entry.spec.id);
        }
    }
}
