//! The engine's side of broadcasts: firing (targets, version, lock), dry runs, choosing each
//! target's source, catching up pods that join later, and the attempt environment.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mawex_api::broadcast::{
    next_version, APP_ENV, MAX_VERSION_LEN, SOURCE_ADDR_ENV, SOURCE_HOST_ENV, SOURCE_POD_ENV,
    TARGET_HOST_ENV, VERSION_ENV,
};
use mawex_api::{
    ApiError, BroadcastId, BroadcastLock, BroadcastPage, BroadcastPlan, BroadcastQuery,
    BroadcastSpec, BroadcastView, PodId, TargetState, TaskId, TaskSpec, TaskState, Timestamp,
    MAX_LIST_PAGE_BYTES,
};

use super::{Engine, Output};
use crate::state::broadcasts::{plan, tree_parent, Broadcast};
use crate::state::stored::{self, Source, Strategy};
use crate::state::Event;

/// Is `again` the fire that started `fired` (whose version is resolved)?
fn same_fire(fired: &stored::BroadcastSpec, again: &stored::BroadcastSpec) -> bool {
    let version_matches = again.version.is_none() || again.version == fired.version;
    let mut a = fired.clone();
    let mut b = again.clone();
    a.version = None;
    b.version = None;
    version_matches && a == b
}

/// Who a fire would reach.
struct Reach {
    version: String,
    /// Connected pods of the group that match and lack the version, sorted.
    targets: Vec<PodId>,
    already: Vec<PodId>,
}

impl Engine {
    fn reach(&self, spec: &BroadcastSpec) -> Result<Reach, ApiError> {
        spec.validate()?;
        // Each target runs this task: the same checks as a submitted one (payload size,
        // limits, retry policy), reported as the broadcast's.
        let mut template = TaskSpec::new(spec.group.clone(), &spec.handler, spec.payload.clone());
        template.retry = spec.retry;
        template.limits = spec.limits.clone();
        template.sandbox = spec.sandbox.clone();
        template
            .validate(self.config.max_payload_bytes)
            .map_err(|e| {
                let ours = |m: String| {
                    m.replace(
                        &format!("task {}", template.id),
                        &format!("broadcast of {:?}", spec.app),
                    )
                };
                match e {
                    ApiError::InvalidArgument(m) => ApiError::InvalidArgument(ours(m)),
                    ApiError::ResourceExhausted(m) => ApiError::ResourceExhausted(ours(m)),
                    other => other,
                }
            })?;
        let broadcasts = self.state.broadcasts();
        let version = match &spec.version {
            Some(v) => v.clone(),
            None => {
                let last = broadcasts
                    .latest
                    .get(&spec.app)
                    .and_then(|id| broadcasts.by_id.get(id))
                    .map(|b| b.version.as_str());
                let next = next_version(last);
                if next.len() > MAX_VERSION_LEN {
                    return Err(ApiError::InvalidArgument(format!(
                        "the version after {:?} of app {:?} would be {} bytes, over the limit \
                         of {MAX_VERSION_LEN}: give the broadcast a version",
                        last.unwrap_or_default(),
                        spec.app,
                        next.len()
                    )));
                }
                next
            }
        };
        let (mut targets, mut already) = (Vec::new(), Vec::new());
        let names: Vec<PodId> = if spec.hosts.is_empty() {
            self.pods
                .iter()
                .filter(|(id, pod)| {
                    pod.groups.contains(&spec.group) && spec.filter.matches(id, &pod.labels)
                })
                .map(|(id, _)| id.clone())
                .collect()
        } else {
            // Validated above; sorted and without repeats, like the pods.
            let hosts: std::collections::BTreeSet<PodId> = spec
                .hosts
                .iter()
                .filter_map(|h| PodId::new(h).ok())
                .collect();
            hosts.into_iter().collect()
        };
        for id in names {
            if broadcasts.has_version(&spec.app, &id, &version) {
                already.push(id);
            } else {
                targets.push(id);
            }
        }
        Ok(Reach {
            version,
            targets,
            already,
        })
    }

    /// What firing `spec` now would do; changes nothing.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad spec.
    pub(crate) fn plan_broadcast(&self, spec: &BroadcastSpec) -> Result<BroadcastPlan, ApiError> {
        let reach = self.reach(spec)?;
        let targets = plan(spec.strategy, &reach.targets);
        let waves = targets.iter().map(|t| t.wave).max().unwrap_or(0);
        Ok(BroadcastPlan {
            app: spec.app.clone(),
            version: reach.version,
            strategy: spec.strategy,
            targets,
            already_applied: reach.already,
            waves,
        })
    }

    /// Fires a broadcast to the connected pods of its group.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad spec, `Conflict` while another broadcast of the
    /// app holds its lock.
    pub(crate) fn fire_broadcast(
        &mut self,
        spec: BroadcastSpec,
        now: Timestamp,
        out: &mut Output,
    ) -> Result<BroadcastView, ApiError> {
        let reach = self.reach(&spec)?;
        let spec = stored::BroadcastSpec::from(spec);
        if let Some(lock) = self.state.broadcasts().lock(&spec.app) {
            // The same fire again (a client retrying) gets the broadcast it started.
            let holder = self.state.broadcasts().by_id.get(&lock.broadcast);
            if holder.is_some_and(|b| same_fire(&b.spec, &spec)) {
                return self.broadcast_view(lock.broadcast).ok_or_else(|| {
                    ApiError::Internal(format!("broadcast #{} vanished", lock.broadcast))
                });
            }
            if lock.expires_at > now {
                return Err(ApiError::Conflict(format!(
                    "app {:?} is being broadcast (#{}, version {}) since {}; its lock expires at \
                     {} or can be cleared",
                    spec.app, lock.broadcast, lock.version, lock.since, lock.expires_at
                )));
            }
            // Expired: this fire takes over.
            self.abort_broadcast(lock.broadcast, now, out);
        }
        let id = self
            .state
            .broadcasts()
            .fired
            .checked_add(1)
            .ok_or_else(|| ApiError::ResourceExhausted("broadcast ids are used up".into()))?;
        let mut spec = spec;
        spec.version = Some(reach.version);
        let targets = reach
            .targets
            .into_iter()
            .map(|pod| (pod, TaskId::new()))
            .collect();
        self.emit(
            Event::BroadcastFired {
                id,
                spec: Box::new(spec),
                targets,
                already: reach.already,
                at: now,
            },
            out,
        );
        self.broadcast_view(id)
            .ok_or_else(|| ApiError::Internal(format!("broadcast #{id} vanished")))
    }

    /// Aborts broadcast `id`: its waiting targets are cancelled, running ones end as they do.
    fn abort_broadcast(&mut self, id: BroadcastId, now: Timestamp, out: &mut Output) {
        let waiting: Vec<TaskId> = self
            .state
            .broadcasts()
            .by_id
            .get(&id)
            .map(|b| {
                b.targets
                    .values()
                    .filter(|t| t.state == TargetState::Waiting)
                    .filter_map(|t| t.task)
                    .collect()
            })
            .unwrap_or_default();
        self.emit(Event::BroadcastAborted { id, at: now }, out);
        for task in waiting {
            self.emit(Event::TaskCancelled { task, at: now }, out);
        }
    }

    /// Clears the lock of `app` by aborting the broadcast holding it; returns that broadcast.
    pub(crate) fn clear_broadcast_lock(
        &mut self,
        app: &str,
        now: Timestamp,
        out: &mut Output,
    ) -> Option<BroadcastId> {
        let lock = self.state.broadcasts().lock(app)?;
        self.abort_broadcast(lock.broadcast, now, out);
        Some(lock.broadcast)
    }

    pub(crate) fn broadcast_view(&self, id: BroadcastId) -> Option<BroadcastView> {
        self.state.broadcasts().view(id)
    }

    /// One page of broadcasts matching `query` (validated), bounded by count and bytes.
    pub(crate) fn broadcast_page(&self, query: &BroadcastQuery) -> BroadcastPage {
        use std::ops::Bound;
        let broadcasts = self.state.broadcasts();
        let start = query.after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page = Vec::new();
        let mut bytes: usize = 0;
        let mut next = None;
        for (id, b) in broadcasts.by_id.range((start, Bound::Unbounded)) {
            if query.app.as_ref().is_some_and(|app| *app != b.spec.app) {
                continue;
            }
            // About what a view takes on the wire: mostly its targets.
            let size = b.targets.len().saturating_add(1).saturating_mul(256);
            if page.len() == query.limit
                || (!page.is_empty() && bytes.saturating_add(size) > MAX_LIST_PAGE_BYTES)
            {
                next = page.last().map(|v: &BroadcastView| v.id);
                break;
            }
            if let Some(view) = broadcasts.view(*id) {
                bytes = bytes.saturating_add(size);
                page.push(view);
            }
        }
        BroadcastPage::new(page, next)
    }

    pub(crate) fn broadcast_locks(&self) -> Vec<BroadcastLock> {
        let broadcasts = self.state.broadcasts();
        broadcasts
            .latest
            .keys()
            .filter_map(|app| broadcasts.lock(app))
            .collect()
    }

    /// A pod that (re)joined: it becomes a target of each app's latest broadcast to its
    /// group whose version it lacks.
    pub(crate) fn catch_up(&mut self, pod: &PodId, now: Timestamp, out: &mut Output) {
        let Some(entry) = self.pods.get(pod) else {
            return;
        };
        let broadcasts = self.state.broadcasts();
        let owed: Vec<BroadcastId> = broadcasts
            .latest
            .values()
            .filter_map(|id| Some((*id, broadcasts.by_id.get(id)?)))
            .filter(|(_, b)| {
                !b.aborted
                    && b.spec.hosts.is_empty()
                    // Not a target yet, or one that failed (away, say): it tries again.
                    && b.targets.get(pod).is_none_or(|t| {
                        matches!(t.state, TargetState::Failed | TargetState::Cancelled)
                    })
                    && entry.groups.contains(&b.spec.group)
                    && b.spec.filter.matches(pod, &entry.labels)
                    && !broadcasts.has_version(&b.spec.app, pod, &b.version)
            })
            .map(|(id, _)| id)
            .collect();
        for id in owed {
            let event = Event::BroadcastTargetAdded {
                id,
                pod: pod.clone(),
                task: TaskId::new(),
                at: now,
            };
            self.emit(event, out);
        }
    }

    /// The environment of a target's attempt: its source, app and version.
    pub(crate) fn attempt_env(&self, task: &TaskId) -> BTreeMap<String, String> {
        let Some((b, target)) = self.state.broadcasts().target_of(task) else {
            return BTreeMap::new();
        };
        if !b.spec.hosts.is_empty() {
            let name = self
                .state
                .broadcasts()
                .by_task
                .get(task)
                .map(|(_, n)| n.to_string());
            let (source, addr) = match &target.source {
                Some(Source::Pod(host)) => (host.to_string(), host.to_string()),
                _ => (Source::Origin.to_string(), b.spec.origin_address.clone()),
            };
            return BTreeMap::from([
                (TARGET_HOST_ENV.to_owned(), name.unwrap_or_default()),
                (SOURCE_HOST_ENV.to_owned(), source),
                (SOURCE_ADDR_ENV.to_owned(), addr),
                (APP_ENV.to_owned(), b.spec.app.clone()),
                (VERSION_ENV.to_owned(), b.version.clone()),
            ]);
        }
        let (pod, addr) = match &target.source {
            Some(Source::Pod(p)) => (
                p.to_string(),
                self.pods
                    .get(p)
                    .and_then(|e| e.address.clone())
                    .unwrap_or_default(),
            ),
            _ => (Source::Origin.to_string(), b.spec.origin_address.clone()),
        };
        BTreeMap::from([
            (SOURCE_POD_ENV.to_owned(), pod),
            (SOURCE_ADDR_ENV.to_owned(), addr),
            (APP_ENV.to_owned(), b.spec.app.clone()),
            (VERSION_ENV.to_owned(), b.version.clone()),
        ])
    }

    /// When the next waiting target's retry delay ends, or its absent pod's time is up.
    pub(crate) fn next_broadcast_deadline(&self) -> Option<Timestamp> {
        let broadcasts = self.state.broadcasts();
        broadcasts
            .active()
            .flat_map(|(_, b)| {
                let pods = b.spec.hosts.is_empty();
                b.targets
                    .iter()
                    .map(move |(pod, t)| (pods.then_some(pod), t))
            })
            .filter(|(_, t)| t.state == TargetState::Waiting)
            .filter_map(|(pod, t)| {
                let retry = self.state.task(&t.task?)?.not_before;
                let away = pod.and_then(|p| self.unreachable_at(p));
                retry.into_iter().chain(away).min()
            })
            .min()
    }

    /// When a pod that is not connected counts as unreachable; `None` while it is connected.
    fn unreachable_at(&self, pod: &PodId) -> Option<Timestamp> {
        if self.pods.contains_key(pod) {
            return None;
        }
        let since = self.departed.get(pod).copied().unwrap_or(self.started_at);
        Some(since.saturating_add(self.config.lease_timeout))
    }

    /// Fails the waiting targets whose pod stayed away longer than a lease, so a broadcast
    /// finishes without them; they catch up when their pod comes back.
    pub(crate) fn fail_unreachable_targets(&mut self, now: Timestamp, out: &mut Output) {
        let broadcasts = self.state.broadcasts();
        let gone: Vec<TaskId> = broadcasts
            .active()
            .filter(|(_, b)| b.spec.hosts.is_empty())
            .flat_map(|(_, b)| b.targets.iter())
            .filter(|(pod, t)| {
                t.state == TargetState::Waiting
                    && self.unreachable_at(pod).is_some_and(|at| at <= now)
            })
            .filter_map(|(_, t)| t.task)
            .collect();
        for task in gone {
            self.emit(Event::BroadcastTargetUnreachable { task, at: now }, out);
        }
    }

    /// Starts every waiting target that has a source and a free slot on its pod.
    pub(crate) fn dispatch_broadcasts(&mut self, now: Timestamp, out: &mut Output) {
        let active: Vec<BroadcastId> = self.state.broadcasts().active().map(|(id, _)| id).collect();
        for id in active {
            let starts = match self.state.broadcasts().by_id.get(&id) {
                Some(b) => self.starts(b, now),
                None => continue,
            };
            if !starts.is_empty() {
                // A batch of its own: the pods' acknowledgement of it covers these leases.
                self.batch += 1;
            }
            for (task, pod, source) in starts {
                let Some(attempt) = self.state.task(&task).map(|e| e.attempt.next()) else {
                    continue;
                };
                let attempt = stored::AttemptRef { task, attempt };
                self.emit(
                    Event::TaskAssigned {
                        attempt,
                        pod,
                        at: now,
                    },
                    out,
                );
                self.emit(Event::BroadcastPullStarted { task, source }, out);
            }
        }
    }

    /// The targets of `b` that can start now, with their sources.
    fn starts(&self, b: &Broadcast, now: Timestamp) -> Vec<(TaskId, PodId, Source)> {
        let broadcasts = self.state.broadcasts();
        let hosts = !b.spec.hosts.is_empty();
        let mut free: HashMap<&PodId, usize> = HashMap::new();
        // Host steps run on any pod of the group with a free slot.
        let runners: Vec<&PodId> = if hosts {
            self.pods
                .iter()
                .filter(|(_, e)| e.groups.contains(&b.spec.group))
                .map(|(id, _)| id)
                .collect()
        } else {
            Vec::new()
        };
        let mut ready = Vec::new();
        // Tree order first, then pods that joined later.
        let later = b
            .targets
            .keys()
            .filter(|p| b.order.binary_search(p).is_err());
        for pod in b.order.iter().chain(later) {
            let Some(target) = b.targets.get(pod) else {
                continue;
            };
            let Some(task) = target.task else { continue };
            if target.state != TargetState::Waiting {
                continue;
            }
            let due = self.state.task(&task).is_some_and(|e| {
                e.state == TaskState::Pending && e.not_before.is_none_or(|t| t <= now)
            });
            if !due {
                continue;
            }
            let candidates: &[&PodId] = if hosts {
                &runners
            } else {
                std::slice::from_ref(&pod)
            };
            // The runner with the most free slots, so host steps spread over the pods.
            let runner = candidates
                .iter()
                .copied()
                .map(|p| {
                    let slots = *free.entry(p).or_insert_with(|| {
                        // Only a pod that serves the broadcast's group runs its steps
                        // (a pod id can come back with other groups).
                        self.pods
                            .get(p)
                            .filter(|e| e.groups.contains(&b.spec.group))
                            .map_or(0, |e| e.free())
                    });
                    (p, slots)
                })
                .filter(|(_, slots)| *slots > 0)
                .max_by_key(|(p, slots)| (*slots, std::cmp::Reverse(*p)))
                .map(|(p, _)| p);
            let Some(runner) = runner else {
                continue;
            };
            if let Some(slots) = free.get_mut(runner) {
                *slots -= 1;
            }
            ready.push((pod.clone(), runner.clone(), task));
        }
        // A usable source: finished with this version and (a pod) connected.
        let usable = |p: &PodId| {
            (hosts
                || self
                    .pods
                    .get(p)
                    .is_some_and(|e| !e.draining && e.groups.contains(&b.spec.group)))
                && broadcasts.has_version(&b.spec.app, p, &b.version)
        };
        let mut pulls: HashMap<Source, u32> = HashMap::new();
        for t in b.targets.values() {
            if let (TargetState::Running, Some(source)) = (t.state, &t.source) {
                *pulls.entry(source.clone()).or_default() += 1;
            }
        }
        let limit = match b.spec.strategy {
            Strategy::Pull { per_source } => per_source,
            Strategy::Tree { branches } => branches,
        };
        // Sources with a free pull slot, least loaded first, pods before the origin (spare
        // the publisher), ties in an order that rotates between dispatches. Built on first
        // need: a tree broadcast's nodes mostly have their parent.
        let mut open: Option<BTreeSet<(u32, bool, usize, Source)>> = None;
        let mut starts = Vec::new();
        for (pod, runner, task) in ready {
            let in_tree = b.order.binary_search(&pod).ok();
            let source = match (b.spec.strategy, in_tree) {
                (Strategy::Tree { branches }, Some(i)) => {
                    match self.tree_source(b, i, branches as usize, &usable) {
                        Some(source) => source,
                        None => continue,
                    }
                }
                _ => {
                    let open = open.get_or_insert_with(|| {
                        let pods: BTreeSet<&PodId> = b
                            .targets
                            .keys()
                            .chain(
                                broadcasts
                                    .applied
                                    .get(&b.spec.app)
                                    .into_iter()
                                    .flat_map(|m| m.keys()),
                            )
                            .filter(|p| usable(p))
                            .collect();
                        let n = pods.len() + 1;
                        let spin = self.rotation % n;
                        std::iter::once(Source::Origin)
                            .chain(pods.into_iter().map(|p| Source::Pod(p.clone())))
                            .enumerate()
                            .map(|(i, s)| {
                                let load = pulls.get(&s).copied().unwrap_or(0);
                                (load, s == Source::Origin, (i + n - spin) % n, s)
                            })
                            .filter(|(load, ..)| *load < limit)
                            .collect()
                    });
                    // Another source than the last attempt's, when there is a choice.
                    let last = b.targets.get(&pod).and_then(|t| t.source.as_ref());
                    let mut best = open.iter().take(2);
                    let pick = match (best.next(), best.next()) {
                        (Some(first), Some(second)) if Some(&first.3) == last => second.clone(),
                        (Some(first), _) => first.clone(),
                        (None, _) => break,
                    };
                    open.remove(&pick);
                    let (load, is_origin, key, source) = pick;
                    if load + 1 < limit {
                        open.insert((load + 1, is_origin, key, source.clone()));
                    }
                    source
                }
            };
            starts.push((task, runner, source));
        }
        starts
    }

    /// Target `i`'s source in a `k`-ary tree: its parent once it finished, the nearest
    /// finished ancestor if the parent failed for good; `None` while it must wait.
    fn tree_source(
        &self,
        b: &Broadcast,
        i: usize,
        k: usize,
        usable: &impl Fn(&PodId) -> bool,
    ) -> Option<Source> {
        let mut node = i;
        loop {
            let Some(parent) = tree_parent(node, k) else {
                return Some(Source::Origin);
            };
            let pod = b.order.get(parent)?;
            let state = b.targets.get(pod).map(|t| t.state);
            match state {
                Some(TargetState::Done) if usable(pod) => return Some(Source::Pod(pod.clone())),
                // Failed, cancelled or gone: route around it.
                Some(TargetState::Failed | TargetState::Cancelled) | Some(TargetState::Done) => {
                    node = parent;
                }
                _ => return None,
            }
        }
    }
}
