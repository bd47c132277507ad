//! Client requests: submit, cancel, reads, the failed queue, pending changes, group settings.

use std::collections::HashMap;
use std::time::Duration;

use mawex_api::pod::MasterMessage;
use mawex_api::{
    ApiError, CancelAck, FailedFilter, GroupName, GroupSettings, PendingChange, SubmitAck, TaskId,
    TaskSpec, TaskState, TaskView, Timestamp,
};

use crate::state::{stored, Event};

use super::{Engine, Output};

impl Engine {
    /// Accepts a batch of tasks atomically.
    pub(crate) fn submit(
        &mut self,
        specs: Vec<TaskSpec>,
        now: Timestamp,
        out: &mut Output,
    ) -> Result<Vec<SubmitAck>, ApiError> {
        let mut acks = Vec::with_capacity(specs.len());
        let mut fresh: HashMap<TaskId, usize> = HashMap::new();
        // Dedup keys accepted earlier in this batch, per group.
        let mut fresh_keys: HashMap<(&GroupName, &str), TaskId> = HashMap::new();
        for (index, spec) in specs.iter().enumerate() {
            if let Some(dedup) = &spec.dedup {
                let key = (&spec.group, dedup.key.as_str());
                let live = fresh_keys.get(&key).copied().or_else(|| {
                    let holder = self.state.dedup_holder(&spec.group, &dedup.key)?;
                    let within = match holder.result() {
                        None => true,
                        Some(r) => now < r.finished_at.saturating_add(dedup.window),
                    };
                    (within && holder.spec.id != spec.id).then_some(holder.spec.id)
                });
                if let Some(existing) = live {
                    acks.push(SubmitAck::duplicate_of(existing));
                    continue;
                }
            }
            // A known id: the same task again (a retried submit) or a conflict.
            let same = match self.state.task(&spec.id) {
                Some(entry) => Some(
                    entry.spec == stored::TaskSpec::from(spec.clone()) && self.same_links(spec),
                ),
                None => fresh.get(&spec.id).map(|&i| specs[i] == *spec),
            };
            match same {
                Some(true) => acks.push(SubmitAck::new(spec.id, false)),
                Some(false) => {
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
                        fresh_keys.insert((&spec.group, dedup.key.as_str()), spec.id);
                    }
                    acks.push(SubmitAck::new(spec.id, true));
                }
            }
        }
        // Tasks that run after others: checked against the state and the batch (a dependency
        // must come first), and accepted together after the others, which they may name.
        let mut linked = Vec::new();
        let mut earlier: HashMap<TaskId, &TaskSpec> = HashMap::new();
        for (index, (spec, ack)) in specs.iter().zip(&acks).enumerate() {
            if !(ack.created && ack.id == spec.id) {
                continue;
            }
            let name = || format!("task #{index} of the batch ({})", spec.id);
            if let Some(links) = self.links_for(spec, &name, None, &earlier)? {
                linked.push((index, links));
            }
            earlier.insert(spec.id, spec);
        }
        let mut links_of: HashMap<usize, stored::Links> = linked.into_iter().collect();
        let mut workflow = Vec::new();
        for (index, (spec, ack)) in specs.into_iter().zip(&acks).enumerate() {
            if !(ack.created && ack.id == spec.id) {
                continue;
            }
            match links_of.remove(&index) {
                Some(links) => workflow.push((spec.into(), links)),
                None => self.emit(
                    Event::TaskAccepted {
                        spec: spec.into(),
                        at: now,
                    },
                    out,
                ),
            }
        }
        if !workflow.is_empty() {
            self.emit(
                Event::WorkflowAccepted {
                    graph: None,
                    tasks: workflow,
                    at: now,
                },
                out,
            );
        }
        Ok(acks)
    }

    /// True when `spec`, of a known task, names the dependencies and output limit that task
    /// was accepted with.
    fn same_links(&self, spec: &TaskSpec) -> bool {
        let have = self.state.workflows().links(&spec.id);
        match (have, stored::Links::of(spec, None)) {
            (None, None) => true,
            (Some(have), Some(want)) => {
                have.after == want.after && have.output_limit == want.output_limit
            }
            // A graph's node has links whatever its spec says.
            (Some(have), None) => {
                have.graph.is_some() && have.after.is_empty() && have.output_limit.is_none()
            }
            (None, Some(_)) => false,
        }
    }

    /// Runs failed tasks matching `filter` again.
    pub(crate) fn retry_failed(
        &mut self,
        filter: &FailedFilter,
        now: Timestamp,
        out: &mut Output,
    ) -> u64 {
        // A task of a workflow runs again only where that keeps its order and inputs
        // (see `Engine::retryable`).
        let tasks: Vec<TaskId> = self
            .state
            .failed_matching(filter)
            .into_iter()
            .filter(|t| self.retryable(t))
            .collect();
        let n = tasks.len() as u64;
        if !tasks.is_empty() {
            self.emit(Event::TasksRetried { tasks, at: now }, out);
        }
        n
    }

    /// Forgets failed tasks matching `filter`.
    pub(crate) fn purge_failed(&mut self, filter: &FailedFilter, out: &mut Output) -> u64 {
        // A task another still runs after stays (its result is that one's input).
        let tasks: Vec<TaskId> = self
            .state
            .failed_matching(filter)
            .into_iter()
            .filter(|t| !self.needed(t))
            .collect();
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
            let change = change.into();
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

    /// The wait estimate of a queued task, from the slots serving its group now.
    pub(super) fn eta(&self, group: &GroupName, id: &TaskId) -> Option<Duration> {
        self.state.eta(id, self.slots_serving(group))
    }

    /// Slots of connected pods, not draining, that serve `group` (what
    /// `MasterStats::slots_serving` tells from the published stats).
    fn slots_serving(&self, group: &GroupName) -> u64 {
        self.pods
            .values()
            .filter(|p| !p.draining && p.groups.contains(group))
            .map(|p| u64::from(p.slots))
            .sum()
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
            let settings = settings.into();
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
        let entry = self.state.task(&id).ok_or(ApiError::task_not_found(id))?;
        // Cancelling twice answers the same: a retried cancel whose first reply was lost
        // must not look as if the task had finished by itself.
        if entry.state == TaskState::Cancelled {
            // Cancelled by a dependency, and now as asked too: it stays so, even if the
            // dependency is retried.
            if self.cancelled_by_dependency(&id) {
                self.emit(Event::TaskCancelled { task: id, at: now }, out);
            }
            return Ok(CancelAck::Cancelled);
        }
        if entry.state.is_terminal() {
            return Ok(CancelAck::AlreadyFinished(entry.state));
        }
        if entry.state == TaskState::Running {
            let session = entry
                .pod()
                .and_then(|pod| self.pods.get(pod))
                .map(|p| p.session);
            if let Some(session) = session {
                out.messages
                    .push((session, MasterMessage::Cancel(entry.current().into())));
            }
        }
        self.emit(Event::TaskCancelled { task: id, at: now }, out);
        Ok(CancelAck::Cancelled)
    }
}
