//! The durable state of the master and the pure function that changes it.

use std::collections::{BTreeMap, HashMap, HashSet};

use mawex_api::{GroupName, PodId, ScheduleName, TaskId, Timestamp};
use serde::{Deserialize, Serialize};

mod apply;
pub(crate) mod broadcasts;
mod entry;
mod event;
mod listed;
mod load;
mod reads;
mod rounds;
mod schedule;
pub mod stored;
mod task_map;
mod workflows;

use broadcasts::Broadcasts;
pub use entry::TaskCounts;
pub(crate) use entry::TaskEntry;
pub use event::{Event, RequeueReason};
pub(crate) use load::{StateHead, StateLoader};
use rounds::Rounds;
pub(crate) use rounds::ROUND_BASE;
pub(crate) use schedule::Schedule;
use task_map::TaskMap;
pub(crate) use workflows::{Workflows, WorkflowsOwned};

/// Order of a pending task in its group's queue: higher priority first, then the earlier
/// fairness round, then oldest first.
type QueueKey = (i64, u64, u64);

/// Everything the journal makes durable: tasks, their attempts and their results.
///
/// Architecture invariant: [`MasterState::apply`] is pure and deterministic. No clock, no
/// I/O, no randomness: time comes in as data inside events. Replay, snapshots and (later) the
/// Raft state machine all rest on this.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MasterState {
    tasks: TaskMap,
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
    /// The credential that registered each pod id (a token, a certificate's subject, or
    /// both): another credential may not use the id. Kept while the state names the pod,
    /// dropped with `PodsForgotten`. (Snapshot format 5.)
    pod_owners: BTreeMap<PodId, stored::PodOwner>,
    /// What tasks run after, and the graphs they were submitted in, with the derived index
    /// of dependants. Written by snapshot format 7 after the tasks, not by serde (older
    /// formats, which decode through serde, hold none).
    #[serde(skip)]
    workflows: Workflows,
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
    /// Task ids by group and state, for `list`.
    #[serde(skip)]
    listed: listed::Listed,
    /// Failed tasks by group and kind of last error, for the failed summary.
    #[serde(skip)]
    failed_kinds: listed::FailedKinds,
    /// Running tasks per group, for per-group concurrency ceilings.
    #[serde(skip)]
    running_by_group: HashMap<GroupName, u32>,
    /// The latest task of each dedup key, per group: keys of one group never meet another's.
    #[serde(skip)]
    dedup: HashMap<(GroupName, String), TaskId>,
    /// Fairness rounds of live tasks, per group.
    #[serde(skip)]
    rounds: HashMap<GroupName, Rounds>,
    /// Recent mean run time per group (ms, moving average), for wait estimates.
    #[serde(skip)]
    durations: HashMap<GroupName, u64>,
    /// Whether the indexes above match the tasks (see [`MasterState::has_indexes`]).
    #[serde(skip)]
    indexed: bool,
}

/// Equal when every durable part is (tasks, group settings, schedules, broadcasts, pod
/// owners, the two counters) and so is every index derived from them, so a replay or snapshot test also
/// catches an index that is rebuilt wrong. Left out: the run-time averages behind wait
/// estimates (volatile by design), and where a due delayed task waits, which `promote_due`
/// moves without an event (a waiting task is compared by the queue it will be in).
impl PartialEq for MasterState {
    fn eq(&self, other: &Self) -> bool {
        self.tasks == other.tasks
            && self.groups == other.groups
            && self.schedules == other.schedules
            && self.accepted == other.accepted
            && self.results_recorded == other.results_recorded
            && self.broadcasts == other.broadcasts
            && self.pod_owners == other.pod_owners
            && self.workflows == other.workflows
            && self.waiting() == other.waiting()
            && self.results == other.results
            && self.counts == other.counts
            && self.listed == other.listed
            && self.failed_kinds == other.failed_kinds
            && self.running_by_group == other.running_by_group
            && self.dedup == other.dedup
            && live_rounds(&self.rounds) == live_rounds(&other.rounds)
    }
}

impl Eq for MasterState {}

/// The fairness rounds of groups that have live tasks (a group whose tasks all finished keeps
/// an empty entry until it is used again).
fn live_rounds(rounds: &HashMap<GroupName, Rounds>) -> BTreeMap<&GroupName, &Rounds> {
    rounds.iter().filter(|(_, r)| !r.is_empty()).collect()
}

impl MasterState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// A state from its durable parts, as an older snapshot format held them (without
    /// broadcasts, or without pod owners), with the derived indexes rebuilt.
    pub(crate) fn from_parts(
        tasks: BTreeMap<TaskId, TaskEntry>,
        groups: BTreeMap<GroupName, stored::GroupSettings>,
        schedules: BTreeMap<ScheduleName, Schedule>,
        accepted: u64,
        results_recorded: u64,
        broadcasts: Broadcasts,
    ) -> Self {
        let mut state = MasterState {
            tasks: tasks.into_iter().collect(),
            groups,
            schedules,
            accepted,
            results_recorded,
            broadcasts,
            ..MasterState::default()
        };
        state.rebuild_indexes();
        state
    }

    /// The durable parts (what a snapshot holds) and the run-time averages behind wait
    /// estimates (one per group), without the derived indexes: O(1) for the tasks, which are
    /// shared with `self` until either side changes one, so the core thread can hand the
    /// copy to a snapshot writer or the read model without pausing for it.
    pub fn durable_copy(&self) -> MasterState {
        MasterState {
            tasks: self.tasks.clone(),
            groups: self.groups.clone(),
            schedules: self.schedules.clone(),
            accepted: self.accepted,
            results_recorded: self.results_recorded,
            broadcasts: self.broadcasts.clone(),
            pod_owners: self.pod_owners.clone(),
            workflows: self.workflows.durable_copy(),
            durations: self.durations.clone(),
            ..MasterState::default()
        }
    }

    /// Every pending task with the queue key it is, or will be, dispatched by: the queues
    /// and the delayed tasks together (see `PartialEq`).
    fn waiting(&self) -> std::collections::BTreeSet<(GroupName, QueueKey, TaskId)> {
        let queued = self
            .pending
            .iter()
            .flat_map(|(g, q)| q.iter().map(move |(k, id)| (g.clone(), *k, *id)));
        let delayed = self.delayed.values().filter_map(|id| {
            let e = self.tasks.get(id)?;
            Some((e.spec.group.clone(), e.queue_key(), *id))
        });
        queued.chain(delayed).collect()
    }

    /// Sets the holder of each dedup `(group, key)` of `keys` to the last task accepted with
    /// it, as `rebuild_indexes` picks it: one scan of the tasks, only when tasks with keys
    /// moved to another group.
    pub(crate) fn recompute_dedup_holders(&mut self, keys: HashSet<(GroupName, String)>) {
        let mut holders: HashMap<(GroupName, String), (u64, TaskId)> = HashMap::new();
        // Compared as strings first, so that only tasks with one of the keys cost a copy.
        let names: HashSet<&str> = keys.iter().map(|(_, key)| key.as_str()).collect();
        for (id, e) in self.tasks.iter() {
            let Some(dedup) = e.spec.dedup().filter(|d| names.contains(d.key.as_str())) else {
                continue;
            };
            let key = (e.spec.group.clone(), dedup.key.clone());
            if !keys.contains(&key) {
                continue;
            }
            let holder = holders.entry(key).or_insert((e.order, *id));
            if e.order > holder.0 {
                *holder = (e.order, *id);
            }
        }
        for key in keys {
            match holders.remove(&key) {
                Some((_, id)) => self.dedup.insert(key, id),
                None => self.dedup.remove(&key),
            };
        }
    }

    /// Rebuilds the derived indexes (queues, result log, counts) from the tasks.
    pub(crate) fn rebuild_indexes(&mut self) {
        self.broadcasts.rebuild_index();
        self.workflows.rebuild();
        let mut indexes = load::IndexBuilder::default();
        for (id, entry) in self.tasks.iter() {
            indexes.add(&self.broadcasts, id, entry);
        }
        indexes.finish(self);
    }

    /// True when the derived indexes are known to match the tasks: after
    /// [`MasterState::rebuild_indexes`], or a load that built them. False for a state decoded
    /// or copied without them (and for a new state, whose empty indexes a rebuild keeps).
    pub(crate) fn has_indexes(&self) -> bool {
        self.indexed
    }

    /// The credential that registered `pod`, if one did.
    pub(crate) fn pod_owner(&self, pod: &PodId) -> Option<&stored::PodOwner> {
        self.pod_owners.get(pod)
    }

    /// How many pod ids have an owner.
    pub(crate) fn owned_pod_count(&self) -> usize {
        self.pod_owners.len()
    }

    /// The pod ids a credential registered.
    pub(crate) fn owned_pods(&self) -> impl Iterator<Item = &PodId> {
        self.pod_owners.keys()
    }

    /// The broadcasts.
    pub(crate) fn broadcasts(&self) -> &Broadcasts {
        &self.broadcasts
    }

    /// What tasks run after, and the graphs.
    pub(crate) fn workflows(&self) -> &Workflows {
        &self.workflows
    }
}
