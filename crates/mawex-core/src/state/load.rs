//! Building a state's derived indexes in one walk over its tasks: to rebuild them, or while a
//! snapshot's tasks arrive (see [`StateLoader`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mawex_api::{GroupName, PodId, ScheduleName, TaskId, TaskState, Timestamp};
use serde::{Deserialize, Serialize};

use super::broadcasts::Broadcasts;
use super::listed::FailedKinds;
use super::rounds::Rounds;
use super::{stored, MasterState, QueueKey, Schedule, TaskCounts, TaskEntry};

/// The states, in the order of [`state_slot`].
const STATES: [TaskState; 6] = [
    TaskState::Pending,
    TaskState::Running,
    TaskState::Succeeded,
    TaskState::Failed,
    TaskState::Cancelled,
    TaskState::Blocked,
];

/// Where `state` is in [`STATES`].
fn state_slot(state: TaskState) -> usize {
    match state {
        TaskState::Pending => 0,
        TaskState::Running => 1,
        TaskState::Succeeded => 2,
        TaskState::Failed => 3,
        TaskState::Blocked => 5,
        // TaskState is non_exhaustive only for other crates: this is Cancelled.
        _ => 4,
    }
}

/// One group's indexes while an [`IndexBuilder`] gathers them.
#[derive(Default)]
struct GroupIndexes {
    /// Task ids by state (see [`state_slot`]), in id order.
    ids: [Vec<TaskId>; 6],
    queue: Vec<(QueueKey, TaskId)>,
    running: u32,
    rounds: Rounds,
    /// Consecutive rounds of one key not yet in `rounds`: `(key, first, last)`. A key's
    /// tasks mostly hold consecutive rounds, so they go in as one range.
    run: Option<(String, u64, u64)>,
}

impl GroupIndexes {
    /// Counts a live task of `key` in `round`.
    fn add_round(&mut self, key: &str, round: u64) {
        match &mut self.run {
            Some((k, _, last)) if k == key && last.checked_add(1) == Some(round) => *last = round,
            Some((k, first, last)) => {
                self.rounds.add_range(k, *first, *last);
                // The key's buffer is reused: keys that take turns would cost a copy a task.
                k.clear();
                k.push_str(key);
                (*first, *last) = (round, round);
            }
            None => self.run = Some((key.to_owned(), round, round)),
        }
    }

    fn flush_rounds(&mut self) {
        if let Some((key, first, last)) = self.run.take() {
            self.rounds.add_range(&key, first, last);
        }
    }
}

/// The derived indexes of a state, gathered task by task in id order and built at the end:
/// a B-tree built from sorted input costs O(n), where inserts one at a time each search it.
#[derive(Default)]
pub(super) struct IndexBuilder {
    groups: Vec<(GroupName, GroupIndexes)>,
    positions: HashMap<GroupName, usize>,
    /// Where in `groups` the last task's group is: tasks of one group mostly come together.
    last: Option<usize>,
    counts: TaskCounts,
    failed_kinds: FailedKinds,
    delayed: Vec<((Timestamp, u64), TaskId)>,
    results: Vec<(u64, TaskId)>,
    /// The holder of each dedup key so far, with its acceptance order.
    dedup: HashMap<(GroupName, String), (u64, TaskId)>,
}

impl IndexBuilder {
    /// Adds task `id`; tasks come in id order. `broadcasts` has its index built.
    pub(super) fn add(&mut self, broadcasts: &Broadcasts, id: &TaskId, entry: &TaskEntry) {
        let group = &entry.spec.group;
        let at = match self.last.filter(|&i| self.groups[i].0 == *group) {
            Some(i) => i,
            None => {
                let groups = &mut self.groups;
                let i = *self.positions.entry(group.clone()).or_insert_with(|| {
                    groups.push((group.clone(), GroupIndexes::default()));
                    groups.len() - 1
                });
                self.last = Some(i);
                i
            }
        };
        let at = &mut self.groups[at].1;
        self.counts.moved(None, Some(entry.state));
        at.ids[state_slot(entry.state)].push(*id);
        let target = broadcasts.is_target(id);
        match entry.state {
            TaskState::Failed => self.failed_kinds.add(group, entry.failed_kind()),
            TaskState::Running => at.running += 1,
            TaskState::Pending if !target => match entry.not_before {
                Some(t) => self.delayed.push(((t, entry.order), *id)),
                None => at.queue.push((entry.queue_key(), *id)),
            },
            _ => {}
        }
        if let Some(result) = entry.result() {
            self.results.push((result.seq, *id));
        }
        if let Some(dedup) = entry.spec.dedup() {
            // The last one accepted with a key holds it, as in `apply`. Not the highest id:
            // ids are chosen by clients, so they need not follow acceptance.
            let holder = self
                .dedup
                .entry((group.clone(), dedup.key.clone()))
                .or_insert((entry.order, *id));
            if entry.order > holder.0 {
                *holder = (entry.order, *id);
            }
        }
        // Broadcast targets are never queued and hold no round (see `add_target_task`), nor
        // do blocked tasks, until they become pending.
        if !entry.state.is_terminal() && entry.state != TaskState::Blocked && !target {
            at.add_round(entry.fairness_key(), entry.round);
        }
    }

    /// Replaces the indexes of `state` with the ones gathered.
    pub(super) fn finish(self, state: &mut MasterState) {
        state.pending.clear();
        state.listed = Default::default();
        state.running_by_group.clear();
        state.rounds.clear();
        for (group, mut at) in self.groups {
            at.flush_rounds();
            for (slot, ids) in at.ids.into_iter().enumerate() {
                state.listed.insert_sorted(&group, STATES[slot], ids);
            }
            if at.running > 0 {
                state.running_by_group.insert(group.clone(), at.running);
            }
            if !at.queue.is_empty() {
                at.queue.sort_unstable();
                state
                    .pending
                    .insert(group.clone(), at.queue.into_iter().collect());
            }
            if !at.rounds.is_empty() {
                state.rounds.insert(group, at.rounds);
            }
        }
        state.counts = self.counts;
        state.failed_kinds = self.failed_kinds;
        state.delayed = self.delayed.into_iter().collect();
        state.results = self.results.into_iter().collect();
        state.dedup = self
            .dedup
            .into_iter()
            .map(|(key, (_, id))| (key, id))
            .collect();
        state.indexed = true;
    }
}

/// The parts of a state besides its tasks, as snapshot format 6 writes them ahead of the
/// tasks (borrowed to encode; [`StateHead`] decodes them).
#[derive(Serialize)]
pub(crate) struct StateHeadRef<'a> {
    groups: &'a BTreeMap<GroupName, stored::GroupSettings>,
    schedules: &'a BTreeMap<ScheduleName, Schedule>,
    accepted: u64,
    results_recorded: u64,
    broadcasts: &'a Broadcasts,
    pod_owners: &'a BTreeMap<PodId, stored::PodOwner>,
}

/// The parts of a state besides its tasks, decoded.
#[derive(Deserialize)]
pub(crate) struct StateHead {
    groups: BTreeMap<GroupName, stored::GroupSettings>,
    schedules: BTreeMap<ScheduleName, Schedule>,
    accepted: u64,
    results_recorded: u64,
    broadcasts: Broadcasts,
    pod_owners: BTreeMap<PodId, stored::PodOwner>,
}

impl MasterState {
    /// The parts besides the tasks, to encode.
    pub(crate) fn head(&self) -> StateHeadRef<'_> {
        StateHeadRef {
            groups: &self.groups,
            schedules: &self.schedules,
            accepted: self.accepted,
            results_recorded: self.results_recorded,
            broadcasts: &self.broadcasts,
            pod_owners: &self.pod_owners,
        }
    }

    /// The tasks in id order (to encode them, or to rebuild what is derived from them).
    pub(crate) fn tasks_in_order(&self) -> impl Iterator<Item = (&TaskId, &TaskEntry)> {
        self.tasks.iter()
    }
}

/// A state loaded from its head and then its tasks in id order, its indexes gathered as the
/// tasks come: a load walks the tasks once, where decoding and then rebuilding walked twice.
pub(crate) struct StateLoader {
    state: MasterState,
    indexes: IndexBuilder,
    last: Option<TaskId>,
}

impl StateLoader {
    pub(crate) fn new(head: StateHead) -> Self {
        let mut state = MasterState {
            groups: head.groups,
            schedules: head.schedules,
            accepted: head.accepted,
            results_recorded: head.results_recorded,
            broadcasts: head.broadcasts,
            pod_owners: head.pod_owners,
            ..MasterState::default()
        };
        state.broadcasts.rebuild_index();
        StateLoader {
            state,
            indexes: IndexBuilder::default(),
            last: None,
        }
    }

    /// Adds the next tasks, which must follow the last one in id order.
    ///
    /// # Errors
    /// The id of a task that does not follow the one before it (a state holds each id once,
    /// in order: anything else was not written by `encode_snapshot`).
    pub(crate) fn push(&mut self, tasks: Vec<(TaskId, Arc<TaskEntry>)>) -> Result<(), String> {
        for (id, entry) in tasks {
            if self.last.is_some_and(|last| last >= id) {
                return Err(format!("task {id} is out of order"));
            }
            self.last = Some(id);
            self.indexes.add(&self.state.broadcasts, &id, &entry);
            self.state.tasks.insert_shared(id, entry);
        }
        Ok(())
    }

    /// Sets the workflow part (snapshot format 7 holds it after the tasks).
    pub(crate) fn set_workflows(&mut self, workflows: super::Workflows) {
        self.state.workflows = workflows;
    }

    /// How many tasks were added.
    pub(crate) fn len(&self) -> usize {
        self.state.tasks.len()
    }

    /// The state, its indexes built.
    pub(crate) fn finish(mut self) -> MasterState {
        self.indexes.finish(&mut self.state);
        self.state
    }
}
