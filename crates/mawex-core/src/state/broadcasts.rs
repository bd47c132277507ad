//! The durable side of broadcasts: what was fired, each target's progress, the version each
//! pod applied per app, and the plans of dry runs.
//!
//! A target is an ordinary task pinned to its pod: it has a `TaskEntry` and goes through the
//! usual assignment, result and retry events, but it is never in a group queue. The engine
//! dispatches it when its strategy finds it a source; the hooks here keep the targets' summary
//! in step with those task events, so a view needs nothing else (not even after the task's
//! result is forgotten).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mawex_api::{
    BroadcastId, BroadcastLock, BroadcastView, PlannedTarget, PodId, Source, Strategy, TargetState,
    TargetView, TaskId, Timestamp,
};
use serde::{Deserialize, Serialize};

use super::stored;

/// One target of a broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Target {
    /// The task that runs on the pod; `None` if the pod had the version already.
    pub(crate) task: Option<TaskId>,
    pub(crate) state: TargetState,
    /// Source of the current or last attempt.
    pub(crate) source: Option<stored::Source>,
    pub(crate) attempts: u32,
    pub(crate) started_at: Option<Timestamp>,
    pub(crate) finished_at: Option<Timestamp>,
    pub(crate) error: Option<stored::TaskError>,
}

impl Target {
    fn new(task: Option<TaskId>) -> Self {
        Target {
            task,
            state: if task.is_some() {
                TargetState::Waiting
            } else {
                TargetState::AlreadyApplied
            },
            source: None,
            attempts: 0,
            started_at: None,
            finished_at: None,
            error: None,
        }
    }
}

/// One broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Broadcast {
    /// As fired, with the version resolved.
    pub(crate) spec: stored::BroadcastSpec,
    pub(crate) version: String,
    pub(crate) fired_at: Timestamp,
    pub(crate) targets: BTreeMap<PodId, Target>,
    /// Targets that run, sorted at fire time: the tree's node order. Pods that join later
    /// are not in it.
    pub(crate) order: Vec<PodId>,
    pub(crate) aborted: bool,
    pub(crate) finished_at: Option<Timestamp>,
}

impl Broadcast {
    pub(crate) fn is_active(&self) -> bool {
        !self.aborted && self.finished_at.is_none()
    }

    /// The broadcast as clients see it; `applied` is the version each pod has of its app.
    pub(crate) fn view(
        &self,
        id: BroadcastId,
        applied: Option<&BTreeMap<PodId, String>>,
    ) -> BroadcastView {
        let targets = self
            .targets
            .iter()
            .map(|(pod, t)| TargetView {
                version: applied.and_then(|a| a.get(pod)).cloned(),
                pod: pod.clone(),
                task: t.task,
                state: t.state,
                source: t.source.clone().map(Into::into),
                attempts: t.attempts,
                started_at: t.started_at,
                finished_at: t.finished_at,
                error: t.error.clone().map(Into::into),
            })
            .collect();
        BroadcastView {
            id,
            app: self.spec.app.clone(),
            version: self.version.clone(),
            group: self.spec.group.clone(),
            strategy: self.spec.strategy.into(),
            fired_at: self.fired_at,
            finished_at: self.finished_at,
            aborted: self.aborted,
            targets,
        }
    }

    /// Marks the broadcast finished at `at` once every target has ended.
    fn settle(&mut self, at: Timestamp) {
        let ended = self.targets.values().all(|t| t.state.is_terminal());
        self.finished_at = match (ended, self.finished_at) {
            (true, None) => Some(at),
            (true, done) => done,
            (false, _) => None,
        };
    }
}

/// Every broadcast, and what each pod has applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Broadcasts {
    pub(crate) by_id: BTreeMap<BroadcastId, Broadcast>,
    /// The latest broadcast of each app.
    pub(crate) latest: BTreeMap<String, BroadcastId>,
    /// The version each pod applied last, per app.
    pub(crate) applied: BTreeMap<String, BTreeMap<PodId, String>>,
    /// Broadcasts ever fired; source of their ids.
    pub(crate) fired: u64,
    /// Which broadcast and pod each target task belongs to (derived).
    #[serde(skip)]
    pub(crate) by_task: HashMap<TaskId, (BroadcastId, PodId)>,
    /// Broadcasts still running (derived): what dispatch and timers look at, so that their
    /// cost does not grow with every broadcast ever fired.
    #[serde(skip)]
    active: BTreeSet<BroadcastId>,
}

impl Broadcasts {
    /// Broadcast `id` as clients see it.
    pub(crate) fn view(&self, id: BroadcastId) -> Option<BroadcastView> {
        let b = self.by_id.get(&id)?;
        Some(b.view(id, self.applied.get(&b.spec.app)))
    }

    pub(crate) fn rebuild_index(&mut self) {
        self.by_task = self
            .by_id
            .iter()
            .flat_map(|(id, b)| {
                b.targets
                    .iter()
                    .filter_map(move |(pod, t)| Some((t.task?, (*id, pod.clone()))))
            })
            .collect();
        self.active = self
            .by_id
            .iter()
            .filter(|(_, b)| b.is_active())
            .map(|(id, _)| *id)
            .collect();
    }

    /// The running broadcasts, oldest first.
    pub(crate) fn active(&self) -> impl Iterator<Item = (BroadcastId, &Broadcast)> {
        self.active
            .iter()
            .filter_map(|id| Some((*id, self.by_id.get(id)?)))
    }

    /// Broadcasts that may be forgotten as of `cutoff`, oldest first, at most `limit`:
    /// finished before `cutoff`, not the latest of their app, and with no target task left
    /// (`task_exists`). Costs nothing while every broadcast is running or its app's latest.
    pub(crate) fn forgettable(
        &self,
        cutoff: Timestamp,
        limit: usize,
        task_exists: impl Fn(&TaskId) -> bool,
    ) -> Vec<BroadcastId> {
        if self.by_id.len() <= self.latest.len().saturating_add(self.active.len()) {
            return Vec::new();
        }
        self.by_id
            .iter()
            // Ids grow with firing time, and a broadcast finishes after it was fired.
            .take_while(|(_, b)| b.fired_at < cutoff)
            .filter(|(id, b)| {
                b.finished_at.is_some_and(|t| t < cutoff)
                    && self.is_forgettable(**id, b, &task_exists)
            })
            .map(|(id, _)| *id)
            .take(limit)
            .collect()
    }

    /// Ended, not its app's latest, no target task left: nothing needs it any more.
    fn is_forgettable(
        &self,
        id: BroadcastId,
        b: &Broadcast,
        task_exists: impl Fn(&TaskId) -> bool,
    ) -> bool {
        !b.is_active()
            && b.finished_at.is_some()
            && self.latest.get(&b.spec.app) != Some(&id)
            && !b
                .targets
                .values()
                .any(|t| t.task.as_ref().is_some_and(&task_exists))
    }

    /// Drops broadcast `id` if nothing needs it any more (re-checked, so that applying the
    /// event can never drop a broadcast that is still in use).
    pub(crate) fn forget(&mut self, id: BroadcastId, task_exists: impl Fn(&TaskId) -> bool) {
        let Some(b) = self.by_id.get(&id) else {
            return;
        };
        if !self.is_forgettable(id, b, task_exists) {
            return;
        }
        if let Some(b) = self.by_id.remove(&id) {
            for task in b.targets.values().filter_map(|t| t.task) {
                self.by_task.remove(&task);
            }
        }
        self.active.remove(&id);
    }

    /// The task of a target was forgotten. A target of a pod that joined after the
    /// broadcast was fired (a catch-up) goes with it once ended: otherwise every pod name
    /// ever seen would stay in each app's latest broadcast, which is never forgotten. Such a
    /// pod, should it come back, is caught up again (a missing target counts as one that
    /// failed), and what it applied is kept in `applied`. Targets in the tree `order` stay:
    /// their children route through them.
    pub(crate) fn target_task_forgotten(&mut self, task: &TaskId) {
        let Some((id, pod)) = self.by_task.get(task).cloned() else {
            return;
        };
        let Some(b) = self.by_id.get_mut(&id) else {
            return;
        };
        let ended = b.targets.get(&pod).is_some_and(|t| {
            matches!(
                t.state,
                TargetState::Done
                    | TargetState::Failed
                    | TargetState::Cancelled
                    | TargetState::AlreadyApplied
            )
        });
        if ended && b.order.binary_search(&pod).is_err() {
            b.targets.remove(&pod);
            self.by_task.remove(task);
        }
    }

    /// Has `pod` applied a version of any app?
    pub(crate) fn has_applied_any(&self, pod: &PodId) -> bool {
        self.applied.values().any(|pods| pods.contains_key(pod))
    }

    /// Every pod that applied a version of some app.
    pub(crate) fn pods_with_versions(&self) -> BTreeSet<&PodId> {
        self.applied.values().flat_map(|pods| pods.keys()).collect()
    }

    /// Forgets which versions `pods` applied.
    pub(crate) fn forget_pods(&mut self, pods: &[PodId]) {
        for versions in self.applied.values_mut() {
            for pod in pods {
                versions.remove(pod);
            }
        }
        self.applied.retain(|_, versions| !versions.is_empty());
    }

    /// Keeps `active` in step after broadcast `id` changed.
    fn refresh(&mut self, id: BroadcastId) {
        if self.by_id.get(&id).is_some_and(Broadcast::is_active) {
            self.active.insert(id);
        } else {
            self.active.remove(&id);
        }
    }

    pub(crate) fn is_target(&self, task: &TaskId) -> bool {
        self.by_task.contains_key(task)
    }

    /// The broadcast and target of a target task.
    pub(crate) fn target_of(&self, task: &TaskId) -> Option<(&Broadcast, &Target)> {
        let (id, pod) = self.by_task.get(task)?;
        let b = self.by_id.get(id)?;
        Some((b, b.targets.get(pod)?))
    }

    fn target_mut(&mut self, task: &TaskId) -> Option<(BroadcastId, &mut Broadcast, PodId)> {
        let (id, pod) = self.by_task.get(task)?.clone();
        Some((id, self.by_id.get_mut(&id)?, pod))
    }

    /// Does `pod` have `version` of `app`?
    pub(crate) fn has_version(&self, app: &str, pod: &PodId, version: &str) -> bool {
        self.applied
            .get(app)
            .and_then(|pods| pods.get(pod))
            .is_some_and(|v| v == version)
    }

    /// The lock of `app`, if its latest broadcast still runs.
    pub(crate) fn lock(&self, app: &str) -> Option<BroadcastLock> {
        let id = *self.latest.get(app)?;
        let b = self.by_id.get(&id)?;
        b.is_active().then(|| BroadcastLock {
            app: app.to_owned(),
            broadcast: id,
            version: b.version.clone(),
            since: b.fired_at,
            expires_at: b.fired_at.saturating_add(b.spec.lock_ttl),
        })
    }

    pub(crate) fn fired(
        &mut self,
        id: BroadcastId,
        spec: &stored::BroadcastSpec,
        targets: &[(PodId, TaskId)],
        already: &[PodId],
        at: Timestamp,
    ) {
        if self.by_id.contains_key(&id) {
            return;
        }
        self.fired = self.fired.max(id);
        let version = spec.version.clone().unwrap_or_default();
        let mut b = Broadcast {
            spec: spec.clone(),
            version,
            fired_at: at,
            targets: BTreeMap::new(),
            order: targets.iter().map(|(pod, _)| pod.clone()).collect(),
            aborted: false,
            finished_at: None,
        };
        for (pod, task) in targets {
            b.targets.insert(pod.clone(), Target::new(Some(*task)));
            self.by_task.insert(*task, (id, pod.clone()));
        }
        for pod in already {
            b.targets.insert(pod.clone(), Target::new(None));
        }
        b.settle(at);
        self.latest.insert(spec.app.clone(), id);
        self.by_id.insert(id, b);
        self.refresh(id);
    }

    pub(crate) fn target_added(
        &mut self,
        id: BroadcastId,
        pod: &PodId,
        task: TaskId,
    ) -> Option<&Broadcast> {
        let b = self.by_id.get_mut(&id)?;
        // A new target, or a new try for one that failed or was cancelled.
        if b.targets
            .get(pod)
            .is_some_and(|t| !matches!(t.state, TargetState::Failed | TargetState::Cancelled))
        {
            return None;
        }
        b.targets.insert(pod.clone(), Target::new(Some(task)));
        b.finished_at = None;
        self.by_task.insert(task, (id, pod.clone()));
        self.refresh(id);
        self.by_id.get(&id)
    }

    pub(crate) fn aborted(&mut self, id: BroadcastId, at: Timestamp) {
        if let Some(b) = self.by_id.get_mut(&id) {
            b.aborted = true;
            b.finished_at.get_or_insert(at);
        }
        self.refresh(id);
    }

    pub(crate) fn pull_started(&mut self, task: &TaskId, source: &stored::Source) {
        if let Some((_, b, pod)) = self.target_mut(task) {
            if let Some(t) = b.targets.get_mut(&pod) {
                t.source = Some(source.clone());
            }
        }
    }

    pub(crate) fn assigned(&mut self, task: &TaskId, attempt: u32, at: Timestamp) {
        if let Some((_, b, pod)) = self.target_mut(task) {
            if let Some(t) = b.targets.get_mut(&pod) {
                t.state = TargetState::Running;
                t.attempts = attempt;
                t.started_at = Some(at);
                t.finished_at = None;
            }
        }
    }

    /// The attempt ended without ending the task: the target waits again.
    pub(crate) fn back_to_waiting(&mut self, task: &TaskId, error: Option<&stored::TaskError>) {
        if let Some((id, b, pod)) = self.target_mut(task) {
            if let Some(t) = b.targets.get_mut(&pod) {
                t.state = TargetState::Waiting;
                if let Some(e) = error {
                    t.error = Some(e.clone());
                }
            }
            b.finished_at = None;
            self.refresh(id);
        }
    }

    pub(crate) fn finished(&mut self, task: &TaskId, outcome: &stored::Outcome, at: Timestamp) {
        let Some((id, b, pod)) = self.target_mut(task) else {
            return;
        };
        let Some(t) = b.targets.get_mut(&pod) else {
            return;
        };
        t.finished_at = Some(at);
        t.state = match outcome {
            stored::Outcome::Succeeded(_) => TargetState::Done,
            stored::Outcome::Failed(e) => {
                t.error = Some(e.clone());
                TargetState::Failed
            }
            stored::Outcome::Cancelled => TargetState::Cancelled,
        };
        let applied =
            (t.state == TargetState::Done).then(|| (b.spec.app.clone(), b.version.clone()));
        b.settle(at);
        self.refresh(id);
        if let Some((app, version)) = applied {
            self.applied.entry(app).or_default().insert(pod, version);
        }
    }
}

/// The parent of node `i` of a breadth-first `k`-ary tree over targets: `None` for the
/// origin's children (the first `k`).
pub(crate) fn tree_parent(i: usize, k: usize) -> Option<usize> {
    (i / k.max(1)).checked_sub(1)
}

/// The plan of `targets` (sorted) under `strategy`, if every pull took the same time.
pub(crate) fn plan(strategy: Strategy, targets: &[PodId]) -> Vec<PlannedTarget> {
    match strategy {
        Strategy::Tree { branches } => {
            let k = branches.max(1) as usize;
            let mut waves: Vec<u32> = Vec::with_capacity(targets.len());
            targets
                .iter()
                .enumerate()
                .map(|(i, pod)| {
                    let (source, wave) = match tree_parent(i, k) {
                        None => (Source::Origin, 1),
                        Some(p) => (Source::Pod(targets[p].clone()), waves[p] + 1),
                    };
                    waves.push(wave);
                    PlannedTarget {
                        pod: pod.clone(),
                        wave,
                        source,
                    }
                })
                .collect()
        }
        // Pull (and any later strategy): each wave, every finished node serves c targets.
        _ => {
            let c = match strategy {
                Strategy::Pull { per_source } => per_source.max(1) as usize,
                _ => 1,
            };
            let mut sources = vec![Source::Origin];
            let mut planned = Vec::with_capacity(targets.len());
            let mut rest = targets.iter();
            let mut wave = 0;
            while planned.len() < targets.len() {
                wave += 1;
                let mut new_sources = Vec::new();
                'wave: for _ in 0..c {
                    for source in &sources {
                        let Some(pod) = rest.next() else {
                            break 'wave;
                        };
                        planned.push(PlannedTarget {
                            pod: pod.clone(),
                            wave,
                            source: source.clone(),
                        });
                        new_sources.push(Source::Pod(pod.clone()));
                    }
                }
                sources.extend(new_sources);
            }
            planned
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(n: usize) -> Vec<PodId> {
        (0..n)
            .map(|i| PodId::new(format!("p{i:03}")).expect("valid"))
            .collect()
    }

    #[test]
    fn tree_parents_follow_the_formula() {
        assert_eq!(tree_parent(0, 3), None);
        assert_eq!(tree_parent(2, 3), None);
        assert_eq!(tree_parent(3, 3), Some(0));
        assert_eq!(tree_parent(5, 3), Some(0));
        assert_eq!(tree_parent(6, 3), Some(1));
        assert_eq!(tree_parent(39, 3), Some(12));
    }

    #[test]
    fn pull_plans_grow_by_c_plus_one_each_wave() {
        let plan = plan(Strategy::Pull { per_source: 5 }, &pods(100));
        let waves = plan.iter().map(|t| t.wave).max();
        // 1 source → 6 → 36 → 216: three waves reach 100 (⌈log₆ 101⌉ = 3).
        assert_eq!(waves, Some(3));
        assert_eq!(plan.iter().filter(|t| t.wave == 1).count(), 5);
        assert_eq!(plan.iter().filter(|t| t.wave == 2).count(), 30);
        for t in &plan {
            let same_wave = plan
                .iter()
                .filter(|o| o.source == t.source && o.wave == t.wave)
                .count();
            assert!(
                same_wave <= 5,
                "{} serves {same_wave} in wave {}",
                t.source,
                t.wave
            );
            if let Source::Pod(p) = &t.source {
                let parent = plan.iter().find(|o| &o.pod == p).expect("planned");
                assert!(parent.wave < t.wave, "a source finished first");
            }
        }
    }
}
