//! Workflows: accepting tasks that run after others (alone, in a batch, or as a graph),
//! unblocking them in the batch that ends their last dependency, cancelling them when a
//! dependency fails under the default policy, reviving them when that dependency is retried,
//! and handing them their dependencies' results.
//!
//! Every decision here is an event, made in the same batch as what caused it: a dependant
//! leaves `Blocked` atomically with its last dependency's result, so a restart or a fail-over
//! (which rebuilds all of this from committed state) can neither lose nor repeat it.

use std::collections::{BTreeSet, HashMap};

use mawex_api::{
    ApiError, DependencyPolicy, GraphAck, GraphId, TaskId, TaskResult, TaskSpec, TaskState,
    Timestamp, MAX_ERROR_MESSAGE_BYTES,
};

use crate::state::{stored, Event};

use super::{Engine, Output};

/// What a blocked task should do now.
enum Verdict {
    /// This many dependencies have not ended (0: it is not blocked).
    Wait(u32),
    /// Every dependency ended as its policy asks.
    Run,
    /// A dependency failed or was cancelled under `AllSucceeded`: cancelled, with the task
    /// where that began.
    Cancel(TaskId),
}

impl Engine {
    /// Notes what an applied event means for workflows: dependants to judge again, retried
    /// tasks whose cancelled dependants may come back. Cheap when no task has dependants.
    pub(super) fn note_workflow_event(&mut self, event: &Event) {
        let ended = |engine: &mut Engine, task: &TaskId| {
            let workflows = engine.state.workflows();
            if !workflows.has_dependants(task) {
                return;
            }
            let succeeded = match engine.state.task(task).map(|e| e.state) {
                Some(TaskState::Succeeded) => true,
                Some(state) if state.is_terminal() => false,
                _ => return,
            };
            for dependant in workflows.dependants(task) {
                // A success only counts down what the dependant waits for: it is judged
                // when nothing is left. Anything else may cancel it: judged at once.
                match engine.unfinished.get_mut(dependant) {
                    Some(left) if succeeded && *left > 1 => *left -= 1,
                    _ => {
                        engine.unfinished.remove(dependant);
                        engine.to_judge.insert(*dependant);
                    }
                }
            }
        };
        match event {
            Event::TaskFinished { attempt, .. } => ended(self, &attempt.task),
            Event::TaskCancelled { task, .. } => {
                self.unfinished.remove(task);
                ended(self, task);
            }
            Event::TasksCancelledByDependency { tasks, .. } => {
                for (task, _) in tasks {
                    self.unfinished.remove(task);
                    ended(self, task);
                }
            }
            Event::TasksUnblocked { tasks, .. } => {
                for task in tasks {
                    self.unfinished.remove(task);
                }
            }
            Event::TasksForgotten { tasks } => {
                for task in tasks {
                    self.unfinished.remove(task);
                }
            }
            Event::WorkflowAccepted { tasks, .. } => {
                // A task that runs after tasks outside the event is judged now (they may have
                // ended); one that runs after tasks of the event only waits for all of them,
                // none of which has ended: it is judged when the last one succeeds.
                let accepted: std::collections::HashSet<TaskId> =
                    tasks.iter().map(|(spec, _)| spec.id).collect();
                for (spec, links) in tasks {
                    if links.after.is_empty() {
                        continue;
                    }
                    if links.after.iter().all(|e| accepted.contains(&e.task)) {
                        let waits = u32::try_from(links.after.len()).unwrap_or(u32::MAX);
                        self.unfinished.insert(spec.id, waits);
                    } else {
                        self.to_judge.insert(spec.id);
                    }
                }
            }
            Event::TasksRevived { tasks, .. } => self.to_judge.extend(tasks.iter().copied()),
            Event::TasksRetried { tasks, .. } => {
                let workflows = self.state.workflows();
                let roots = tasks.iter().filter(|t| workflows.has_dependants(t));
                self.to_revive.extend(roots.copied());
            }
            _ => {}
        }
    }

    /// Blocked tasks to judge when the engine starts: a safety net for a decision the last
    /// master made and did not commit (there is none to lose, since decisions commit with
    /// their cause, but a judge of every blocked task costs little).
    pub(super) fn judge_all_blocked(&mut self) {
        let blocked: Vec<TaskId> = self
            .state
            .workflows()
            .linked()
            .filter(|id| {
                self.state
                    .task(id)
                    .is_some_and(|e| e.state == TaskState::Blocked)
            })
            .copied()
            .collect();
        self.to_judge.extend(blocked);
    }

    /// Decides what the batch so far made due: revivals first, then every dependant whose
    /// dependencies changed, until nothing changes (a cancel cascades down in rounds).
    pub(crate) fn settle(&mut self, now: Timestamp, out: &mut Output) {
        if !self.to_revive.is_empty() {
            let roots = std::mem::take(&mut self.to_revive);
            let revived = self.revivable(roots);
            if !revived.is_empty() {
                self.emit(
                    Event::TasksRevived {
                        tasks: revived,
                        at: now,
                    },
                    out,
                );
            }
        }
        while !self.to_judge.is_empty() {
            let (mut run, mut cancel) = (Vec::new(), Vec::new());
            for id in std::mem::take(&mut self.to_judge) {
                match self.verdict(&id) {
                    Verdict::Wait(0) => {}
                    Verdict::Wait(left) => {
                        self.unfinished.insert(id, left);
                    }
                    Verdict::Run => run.push(id),
                    Verdict::Cancel(root) => cancel.push((id, root)),
                }
            }
            if !run.is_empty() {
                self.emit(
                    Event::TasksUnblocked {
                        tasks: run,
                        at: now,
                    },
                    out,
                );
            }
            if !cancel.is_empty() {
                self.emit(
                    Event::TasksCancelledByDependency {
                        tasks: cancel,
                        at: now,
                    },
                    out,
                );
            }
        }
    }

    /// Dependency `dep` of the task accepted `order`th, if it is the task that was meant: one
    /// accepted later reuses the id of a forgotten one (ids are the clients'), and is not it.
    fn dependency(&self, order: u64, dep: &TaskId) -> Option<&crate::state::TaskEntry> {
        self.state.task(dep).filter(|d| d.order < order)
    }

    /// What blocked task `id` should do, from its dependencies' states.
    fn verdict(&self, id: &TaskId) -> Verdict {
        let state = &self.state;
        let Some(entry) = state.task(id).filter(|e| e.state == TaskState::Blocked) else {
            return Verdict::Wait(0);
        };
        let Some(links) = state.workflows().links(id) else {
            return Verdict::Run;
        };
        let mut waiting: u32 = 0;
        for edge in links.after.iter() {
            let Some(dep) = self.dependency(entry.order, &edge.task) else {
                // Forgotten, which a needed dependency never is (see `needed`): nothing can
                // tell how it ended, so only "all finished" may go on.
                if edge.policy == DependencyPolicy::AllSucceeded {
                    return Verdict::Cancel(edge.task);
                }
                continue;
            };
            match dep.state {
                TaskState::Succeeded => {}
                TaskState::Failed | TaskState::Cancelled => {
                    if edge.policy == DependencyPolicy::AllSucceeded {
                        let root = state
                            .workflows()
                            .links(&edge.task)
                            .and_then(|l| l.cancelled_by)
                            .unwrap_or(edge.task);
                        return Verdict::Cancel(root);
                    }
                }
                _ => waiting = waiting.saturating_add(1),
            }
        }
        if waiting > 0 {
            Verdict::Wait(waiting)
        } else {
            Verdict::Run
        }
    }

    /// The tasks cancelled because of `roots` (directly or further down) that may be blocked
    /// again now that the roots were retried: those whose every dependency is still known
    /// (one forgotten could not hand over its result), in no particular order (each is
    /// judged again afterwards, with all of them back).
    fn revivable(&self, roots: BTreeSet<TaskId>) -> Vec<TaskId> {
        let state = &self.state;
        let workflows = state.workflows();
        let mut revived = Vec::new();
        let mut seen = BTreeSet::new();
        for root in roots {
            let mut next: Vec<TaskId> = workflows.dependants(&root).copied().collect();
            while let Some(id) = next.pop() {
                if !seen.insert(id) {
                    continue;
                }
                let (Some(links), Some(entry)) = (workflows.links(&id), state.task(&id)) else {
                    continue;
                };
                let cancelled_here =
                    links.cancelled_by == Some(root) && entry.state == TaskState::Cancelled;
                let deps_known = links
                    .after
                    .iter()
                    .all(|e| self.dependency(entry.order, &e.task).is_some());
                // One that a task still to run depends on stays as it is: that task was
                // judged (or runs) on its outcome.
                if cancelled_here && deps_known && !self.has_live_dependants(&id) {
                    revived.push(id);
                    next.extend(workflows.dependants(&id).copied());
                }
            }
        }
        revived
    }

    /// True while a finished task must stay: a task that runs after it has yet to run, or
    /// may run again (failed: it can be retried), and needs its state or result.
    pub(crate) fn needed(&self, id: &TaskId) -> bool {
        let state = &self.state;
        state.workflows().dependants(id).any(|d| {
            state.task(d).is_some_and(|e| match e.state {
                TaskState::Blocked
                | TaskState::Pending
                | TaskState::Running
                | TaskState::Failed => true,
                // Cancelled by a root that failed and may be retried: it may come back, and
                // then needs this one.
                TaskState::Cancelled => state
                    .workflows()
                    .links(d)
                    .and_then(|l| l.cancelled_by)
                    .and_then(|root| state.task(&root))
                    .is_some_and(|root| root.state == TaskState::Failed),
                _ => false,
            })
        })
    }

    /// True when a task that runs after `id` has yet to end.
    pub(crate) fn has_live_dependants(&self, id: &TaskId) -> bool {
        let state = &self.state;
        state
            .workflows()
            .dependants(id)
            .any(|d| state.task(d).is_some_and(|e| !e.state.is_terminal()))
    }

    /// True when a failed task may be retried: nothing that runs after it is running or
    /// waiting on its outcome (it was judged on the failure), and, if it runs after other
    /// tasks, every one of them has ended (it would run without their results).
    pub(crate) fn retryable(&self, id: &TaskId) -> bool {
        if self.has_live_dependants(id) {
            return false;
        }
        let state = &self.state;
        let (Some(links), Some(entry)) = (state.workflows().links(id), state.task(id)) else {
            return true;
        };
        links.after.iter().all(|e| {
            self.dependency(entry.order, &e.task)
                .is_none_or(|d| d.state.is_terminal())
        })
    }

    /// The results a task's attempt gets as inputs: those of its dependencies that pass
    /// their output, in the order it names them.
    pub(crate) fn inputs(&self, id: &TaskId) -> Vec<TaskResult> {
        let state = &self.state;
        let (Some(links), Some(entry)) = (state.workflows().links(id), state.task(id)) else {
            return Vec::new();
        };
        links
            .after
            .iter()
            .filter(|e| e.pass_output)
            .filter_map(|e| self.dependency(entry.order, &e.task))
            .filter_map(|d| d.result().cloned().map(Into::into))
            .collect()
    }

    /// True for a task cancelled because a dependency failed or was cancelled (it comes back
    /// if that one is retried).
    pub(crate) fn cancelled_by_dependency(&self, id: &TaskId) -> bool {
        self.state.task(id).map(|e| e.state) == Some(TaskState::Cancelled)
            && self
                .state
                .workflows()
                .links(id)
                .is_some_and(|l| l.cancelled_by.is_some())
    }

    /// True when a task that runs after `id` takes its output as an input.
    pub(super) fn output_is_an_input(&self, id: &TaskId) -> bool {
        let workflows = self.state.workflows();
        workflows.dependants(id).any(|d| {
            workflows
                .links(d)
                .is_some_and(|l| l.after.iter().any(|e| e.task == *id && e.pass_output))
        })
    }

    /// The output limit task `id` declared, if any.
    pub(super) fn output_limit(&self, id: &TaskId) -> Option<u64> {
        self.state
            .workflows()
            .links(id)
            .and_then(|l| l.output_limit)
    }

    /// Checks the dependencies of the tasks of a batch (or graph) about to be accepted and
    /// builds their links. `fresh` holds the specs accepted before each one in the batch,
    /// by id, which a dependency may name too.
    pub(super) fn links_for(
        &self,
        spec: &TaskSpec,
        name: &dyn Fn() -> String,
        graph: Option<(GraphId, &str)>,
        fresh: &HashMap<TaskId, &TaskSpec>,
    ) -> Result<Option<stored::Links>, ApiError> {
        let max = self.config.max_payload_bytes as u64;
        // The inputs together are bounded as one payload is (the payload itself apart).
        let mut inputs_bytes: u64 = 0;
        for dep in &spec.after {
            if self.state.broadcasts().is_target(&dep.task) {
                return Err(ApiError::InvalidArgument(format!(
                    "{}: dependency {} is a broadcast target, which no task may run after",
                    name(),
                    dep.task
                )));
            }
            let cap = match (self.state.task(&dep.task), fresh.get(&dep.task)) {
                (Some(entry), _) => match entry.result().map(|r| &r.outcome) {
                    Some(stored::Outcome::Succeeded(output)) => output.len() as u64,
                    // It may run again (retried, or revived) and succeed this time.
                    _ => declared_cap(self.output_limit(&dep.task), dep.policy, max),
                },
                (None, Some(spec)) => declared_cap(spec.output_limit, dep.policy, max),
                (None, None) => {
                    return Err(ApiError::NotFound(format!(
                        "{}: dependency {} is unknown: never submitted (a task of the same \
                         batch must come before the tasks that run after it), or finished \
                         longer ago than the result retention and forgotten",
                        name(),
                        dep.task
                    )))
                }
            };
            if dep.pass_output {
                inputs_bytes = inputs_bytes.saturating_add(cap);
            }
        }
        if inputs_bytes > max {
            return Err(ApiError::ResourceExhausted(format!(
                "{}: the outputs of the {} tasks it runs after could reach {inputs_bytes} \
                 bytes, more than the payload limit of {max}; give those tasks an \
                 output_limit, or leave their output out of this one's inputs \
                 (pass_output: false)",
                name(),
                spec.after.iter().filter(|d| d.pass_output).count()
            )));
        }
        Ok(stored::Links::of(spec, graph))
    }

    /// Accepts a graph: its tasks in one event, atomically; a graph known already answers
    /// `created: false` if it is the same.
    pub(crate) fn submit_graph(
        &mut self,
        id: GraphId,
        tasks: Vec<(String, TaskSpec)>,
        now: Timestamp,
        out: &mut Output,
    ) -> Result<GraphAck, ApiError> {
        if let Some(known) = self.state.workflows().graph(&id) {
            let workflows = self.state.workflows();
            // Compared as submitted: what happened to the tasks since is not part of it.
            let same = known.nodes.len() == tasks.len()
                && tasks.iter().zip(&known.nodes).all(|((name, spec), known)| {
                    // A node forgotten since (past its retention) cannot be compared.
                    if *known == spec.id && self.state.task(&spec.id).is_none() {
                        return true;
                    }
                    let same_spec = self
                        .state
                        .task(&spec.id)
                        .is_some_and(|e| e.spec == stored::TaskSpec::from(spec.clone()));
                    let want = stored::Links::of(spec, Some((id, name)));
                    same_spec
                        && match (workflows.links(&spec.id), want) {
                            (Some(have), Some(want)) => {
                                have.graph == want.graph
                                    && have.after == want.after
                                    && have.output_limit == want.output_limit
                            }
                            _ => false,
                        }
                });
            if same {
                return Ok(GraphAck::new(id, false));
            }
            return Err(ApiError::Conflict(format!(
                "graph {id} is known with other nodes or tasks"
            )));
        }
        // The graph is one journal entry: bounded well inside a replicated entry's size.
        let bytes: usize = tasks
            .iter()
            .map(|(name, spec)| {
                spec.payload.len() + spec.handler.len() + name.len() + 64 + 24 * spec.after.len()
            })
            .sum();
        if bytes > MAX_GRAPH_BYTES {
            return Err(ApiError::ResourceExhausted(format!(
                "graph {id} holds about {bytes} bytes of tasks, more than {MAX_GRAPH_BYTES}; \
                 split it, or pass large inputs by reference"
            )));
        }
        let mut fresh: HashMap<TaskId, &TaskSpec> = HashMap::with_capacity(tasks.len());
        let mut all_links = Vec::with_capacity(tasks.len());
        for (name, spec) in &tasks {
            let node = || format!("node {name:?}");
            if spec.dedup.is_some() {
                return Err(ApiError::InvalidArgument(format!(
                    "{}: a graph's node cannot have a dedup key (the graph's id makes it \
                     idempotent)",
                    node()
                )));
            }
            if self.state.task(&spec.id).is_some() {
                return Err(ApiError::Conflict(format!(
                    "{}: its task id {} is used by another task",
                    node(),
                    spec.id
                )));
            }
            spec.validate(self.config.max_payload_bytes)
                .map_err(|e| in_node(&node(), e))?;
            let links = self
                .links_for(spec, &node, Some((id, name)), &fresh)?
                .ok_or_else(|| ApiError::Internal("a graph's node has no links".into()))?;
            fresh.insert(spec.id, spec);
            all_links.push(links);
        }
        let record = stored::GraphRecord {
            id,
            nodes: tasks.iter().map(|(_, spec)| spec.id).collect(),
            at: now,
        };
        // Checked: the specs move into the event, not copied.
        let accepted = tasks
            .into_iter()
            .zip(all_links)
            .map(|((_, spec), links)| (stored::TaskSpec::from(spec), links))
            .collect();
        self.emit(
            Event::WorkflowAccepted {
                graph: Some(Box::new(record)),
                tasks: accepted,
                at: now,
            },
            out,
        );
        Ok(GraphAck::new(id, true))
    }

    /// Cancels every node of a graph that has not finished.
    pub(crate) fn cancel_graph(
        &mut self,
        id: &GraphId,
        now: Timestamp,
        out: &mut Output,
    ) -> Result<u64, ApiError> {
        let record = self
            .state
            .workflows()
            .graph(id)
            .ok_or_else(|| ApiError::NotFound(format!("graph {id} is unknown")))?;
        // Unfinished nodes, and those a failed node cancelled: cancelled as asked, they do
        // not come back when that node is retried.
        let live: Vec<TaskId> = record
            .nodes
            .iter()
            .filter(|t| {
                self.state.task(t).is_some_and(|e| !e.state.is_terminal())
                    || self.cancelled_by_dependency(t)
            })
            .copied()
            .collect();
        let mut n = 0;
        for task in live {
            // Cancelled one by one, dependencies first: a dependant cancelled by one of
            // these in this batch is terminal already, and skipped.
            let unfinished = self
                .state
                .task(&task)
                .is_some_and(|e| !e.state.is_terminal());
            if unfinished || self.cancelled_by_dependency(&task) {
                self.cancel(task, now, out)?;
                n += u64::from(unfinished);
            }
        }
        Ok(n)
    }
}

/// The most bytes of tasks one graph holds (it is one journal entry).
const MAX_GRAPH_BYTES: usize = 32 << 20;

/// The most bytes an unfinished dependency's result may take: its declared output limit, or
/// the payload limit; under "all finished", at least an error message's (the dependant gets
/// the error of one that failed).
fn declared_cap(limit: Option<u64>, policy: DependencyPolicy, max: u64) -> u64 {
    let cap = limit.unwrap_or(max);
    match policy {
        DependencyPolicy::AllSucceeded => cap,
        // A master configured below an error message's size bounds at its payload limit.
        _ => cap.max((MAX_ERROR_MESSAGE_BYTES as u64).min(max)),
    }
}

/// An error about one node of a graph, naming it.
fn in_node(node: &str, e: ApiError) -> ApiError {
    match e {
        ApiError::InvalidArgument(m) => ApiError::InvalidArgument(format!("{node}: {m}")),
        ApiError::ResourceExhausted(m) => ApiError::ResourceExhausted(format!("{node}: {m}")),
        other => other,
    }
}
