//! A master's metrics in the Prometheus data model (`prometheus-client`): task transitions per
//! group, queue wait and run time per group, and the journal's commit latency and batch size.
//!
//! Nothing is recorded until [`Master::metrics`](super::Master::metrics) is asked for: then
//! the core times its commits (two atomic adds a batch), and the read model's thread, off the
//! core thread, counts the committed events against its copy of the state. The state's own
//! figures (queue depth, running tasks, pods) are the exporter's to read at scrape time from
//! the master's read calls: they are exact then, not counted.

use std::collections::HashMap;
use std::time::Duration;

use mawex_api::{GroupName, TaskId, TaskState, Timestamp};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::state::stored::Outcome;
use crate::state::{Event, MasterState};

/// What a task went to.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // Label values as Prometheus users write them.
pub enum Transition {
    /// Accepted: it waits in its queue.
    accepted,
    /// An attempt started on a pod.
    started,
    /// It finished with an output.
    succeeded,
    /// It failed for good.
    failed,
    /// A client cancelled it.
    cancelled,
    /// An attempt failed and another is scheduled.
    retry_scheduled,
    /// An attempt ended without a result (its pod left, its lease expired, it was handed
    /// back): it waits in its queue again.
    requeued,
    /// Failed tasks were put back in their queues by a retry from the failed queue.
    retried,
    /// What it runs after finished as it needs: it left `blocked` for its queue.
    unblocked,
    /// The dependency that cancelled it was retried: it is `blocked` again.
    revived,
}

/// A transition of a group's tasks.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// The group.
    pub group: String,
    /// What its tasks went to.
    pub to: Transition,
}

/// A group.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// The group.
    pub group: String,
}

fn seconds_histogram() -> Histogram {
    // 1 ms to about 9 hours.
    Histogram::new(exponential_buckets(0.001, 4.0, 13))
}

/// The most groups that get labels of their own; the tasks of any group past them are
/// counted under [`OTHER_GROUPS`], so that clients naming ever new groups cannot grow the
/// master's memory or its scrapes without bound.
pub const MAX_GROUP_LABELS: usize = 1_000;

/// The label of groups past [`MAX_GROUP_LABELS`].
pub const OTHER_GROUPS: &str = "_other";

/// The metrics of one master (see the module's documentation). Cheap to share.
#[derive(Debug)]
pub struct MasterMetrics {
    /// The groups that have labels of their own.
    labelled: std::sync::Mutex<std::collections::HashSet<String>>,
    transitions: Family<TransitionLabels, Counter>,
    queue_wait: Family<GroupLabels, Histogram, fn() -> Histogram>,
    run_time: Family<GroupLabels, Histogram, fn() -> Histogram>,
    commit_latency: Histogram,
    batch_events: Histogram,
}

impl Default for MasterMetrics {
    fn default() -> Self {
        MasterMetrics {
            labelled: std::sync::Mutex::default(),
            transitions: Family::default(),
            queue_wait: Family::new_with_constructor(seconds_histogram),
            run_time: Family::new_with_constructor(seconds_histogram),
            // 10 µs to about 10 s.
            commit_latency: Histogram::new(exponential_buckets(0.000_01, 2.0, 20)),
            // 1 to about 64 K events.
            batch_events: Histogram::new(exponential_buckets(1.0, 2.0, 17)),
        }
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl MasterMetrics {
    /// Registers every metric in `registry`, named `mawex_…`.
    pub fn register(&self, registry: &mut Registry) {
        let mawex = registry.sub_registry_with_prefix("mawex");
        mawex.register(
            "task_transitions",
            "Tasks that went to a state, by group",
            self.transitions.clone(),
        );
        mawex.register_with_unit(
            "queue_wait",
            "Time from when a task could run (accepted, or its delay or retry over) to the start of its attempt, by group",
            Unit::Seconds,
            self.queue_wait.clone(),
        );
        mawex.register_with_unit(
            "run_time",
            "Time from an attempt's start to its result, by group",
            Unit::Seconds,
            self.run_time.clone(),
        );
        mawex.register_with_unit(
            "journal_commit",
            "Time to make one batch of events durable (and, in a cluster, replicated)",
            Unit::Seconds,
            self.commit_latency.clone(),
        );
        mawex.register(
            "journal_batch_events",
            "Events per committed batch",
            self.batch_events.clone(),
        );
    }

    /// How many tasks of `group` went to `to` so far (for tests and dashboards).
    pub fn transitions(&self, group: &str, to: Transition) -> u64 {
        self.transitions
            .get(&TransitionLabels {
                group: group.to_owned(),
                to,
            })
            .map_or(0, |counter| counter.get())
    }

    /// The label of `group`: its name, or [`OTHER_GROUPS`] past [`MAX_GROUP_LABELS`].
    fn label(&self, group: &mawex_api::GroupName) -> String {
        let mut labelled = self
            .labelled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if labelled.contains(group.as_str()) {
            return group.to_string();
        }
        if labelled.len() < MAX_GROUP_LABELS {
            labelled.insert(group.to_string());
            return group.to_string();
        }
        OTHER_GROUPS.to_owned()
    }

    /// One batch of `events` made durable in `took`.
    pub(crate) fn committed(&self, took: Duration, events: usize) {
        self.commit_latency.observe(seconds(took));
        self.batch_events.observe(events as f64);
    }

    fn count(&self, group: &mawex_api::GroupName, to: Transition) {
        self.transitions
            .get_or_create(&TransitionLabels {
                group: self.label(group),
                to,
            })
            .inc();
    }

    fn observe(
        &self,
        family: &Family<GroupLabels, Histogram, fn() -> Histogram>,
        group: &mawex_api::GroupName,
        from: Timestamp,
        to: Timestamp,
    ) {
        family
            .get_or_create(&GroupLabels {
                group: self.label(group),
            })
            .observe(seconds(to.saturating_since(from)));
    }

    /// Counts one transition (see [`transitions`]).
    pub(crate) fn record_transition(&self, group: &GroupName, to: Transition, span: Option<Span>) {
        self.count(group, to);
        match span {
            Some(Span::Wait(from, until)) => self.observe(&self.queue_wait, group, from, until),
            Some(Span::Run(from, until)) => self.observe(&self.run_time, group, from, until),
            None => {}
        }
    }
}

/// The time a transition ended, when the state knows when it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Span {
    /// A wait in the queue, from when the task was ready until its attempt started.
    Wait(Timestamp, Timestamp),
    /// An attempt's run, from its start until its end.
    Run(Timestamp, Timestamp),
}

/// The most dependants whose time of leaving `blocked` is kept until their first attempt
/// starts; past it, such a task's wait is not observed.
const MAX_READY_TIMES: usize = 1 << 20;

/// When each dependant left `blocked` (its wait in the queue begins there, and the state does
/// not keep it), from its `TasksUnblocked` until its first attempt starts. Volatile: a copy of
/// the state taken again starts it empty, and those waits go unobserved.
#[derive(Debug, Default)]
pub(crate) struct ReadyTimes(HashMap<TaskId, Timestamp>);

/// Each transition `event` makes, read against `state` as it was before the event was
/// applied, under the same conditions as the state applies it: `seen(group, to, span)`.
pub(crate) fn transitions(
    state: &MasterState,
    event: &Event,
    ready: &mut ReadyTimes,
    mut seen: impl FnMut(&GroupName, Transition, Option<Span>),
) {
    let current = |attempt: &crate::state::stored::AttemptRef| {
        state
            .task(&attempt.task)
            .filter(|task| task.state == TaskState::Running && task.attempt == attempt.attempt)
    };
    // A task accepted, wherever it came from (a submit, a schedule's tick, a broadcast's
    // target), if it is new.
    let mut accepted = |spec: &crate::state::stored::TaskSpec| {
        if state.task(&spec.id).is_none() {
            seen(&spec.group, Transition::accepted, None);
        }
    };
    match event {
        Event::TaskAccepted { spec, .. } => accepted(spec),
        Event::ScheduleFired { task, .. } => accepted(task),
        Event::BroadcastFired { spec, targets, .. } => {
            for (_, task) in targets {
                if state.task(task).is_none() {
                    seen(&spec.group, Transition::accepted, None);
                }
            }
        }
        Event::BroadcastTargetAdded { id, task, .. } if state.task(task).is_none() => {
            let group = state
                .broadcasts()
                .active()
                .find(|(active, _)| active == id)
                .map(|(_, broadcast)| broadcast.spec.group.clone());
            if let Some(group) = group {
                seen(&group, Transition::accepted, None);
            }
        }
        Event::BroadcastTargetUnreachable { task, .. } => {
            if let Some(task) = state.task(task).filter(|t| !t.state.is_terminal()) {
                seen(&task.spec.group, Transition::failed, None);
            }
        }
        Event::TaskAssigned { attempt, at, .. } => {
            let task = state
                .task(&attempt.task)
                .filter(|task| task.state == TaskState::Pending);
            if let Some(task) = task {
                // The wait of a first attempt, or of one that waited for its delay or
                // retry: a requeued attempt's wait began at a time the state does not keep.
                // A task that ran after others was blocked, not queued, until it was
                // unblocked: its wait begins then, if that time was seen.
                let blocked_first = state
                    .workflows()
                    .links(&attempt.task)
                    .is_some_and(|l| !l.after.is_empty());
                let unblocked_at = ready.0.remove(&attempt.task);
                let queued_at = if blocked_first {
                    unblocked_at
                } else {
                    Some(task.submitted_at)
                };
                let counts = task.attempt.0 == 0 || task.not_before.is_some();
                let wait = queued_at.filter(|_| counts).map(|since| {
                    let ready = task.not_before.map_or(since, |t| t.max(since));
                    Span::Wait(ready, *at)
                });
                seen(&task.spec.group, Transition::started, wait);
            }
        }
        Event::TaskFinished {
            attempt,
            outcome,
            at,
        } => {
            if let Some(task) = current(attempt) {
                let to = match outcome {
                    Outcome::Succeeded(_) => Transition::succeeded,
                    Outcome::Failed(_) => Transition::failed,
                    Outcome::Cancelled => Transition::cancelled,
                };
                let run = task.started_at().map(|started| Span::Run(started, *at));
                seen(&task.spec.group, to, run);
            }
        }
        Event::TaskRetryScheduled { attempt, at, .. } => {
            if let Some(task) = current(attempt) {
                let run = task.started_at().map(|started| Span::Run(started, *at));
                seen(&task.spec.group, Transition::retry_scheduled, run);
            }
        }
        Event::TaskRequeued { attempt, .. } => {
            if let Some(task) = current(attempt) {
                seen(&task.spec.group, Transition::requeued, None);
            }
        }
        Event::TaskCancelled { task, .. } => {
            ready.0.remove(task);
            if let Some(task) = state.task(task).filter(|t| !t.state.is_terminal()) {
                seen(&task.spec.group, Transition::cancelled, None);
            }
        }
        Event::TasksRetried { tasks, .. } => {
            for id in tasks {
                let failed = state.task(id).filter(|t| t.state == TaskState::Failed);
                if let Some(task) = failed {
                    seen(&task.spec.group, Transition::retried, None);
                }
            }
        }
        Event::WorkflowAccepted { tasks, .. } => {
            for (spec, _) in tasks {
                accepted(spec);
            }
        }
        Event::TasksCancelledByDependency { tasks, .. } => {
            for (id, _) in tasks {
                let blocked = state.task(id).filter(|t| t.state == TaskState::Blocked);
                if let Some(task) = blocked {
                    seen(&task.spec.group, Transition::cancelled, None);
                }
            }
        }
        Event::TasksUnblocked { tasks, at } => {
            for id in tasks {
                let blocked = state.task(id).filter(|t| t.state == TaskState::Blocked);
                if let Some(task) = blocked {
                    if ready.0.len() < MAX_READY_TIMES {
                        ready.0.insert(*id, *at);
                    }
                    seen(&task.spec.group, Transition::unblocked, None);
                }
            }
        }
        Event::TasksForgotten { tasks } => {
            for id in tasks {
                ready.0.remove(id);
            }
        }
        Event::TasksRevived { tasks, .. } => {
            for id in tasks {
                let cancelled_by_dependency = state
                    .workflows()
                    .links(id)
                    .is_some_and(|l| l.cancelled_by.is_some());
                let cancelled = state.task(id).filter(|t| t.state == TaskState::Cancelled);
                if let Some(task) = cancelled.filter(|_| cancelled_by_dependency) {
                    seen(&task.spec.group, Transition::revived, None);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dependant_is_counted_when_cancelled_revived_and_unblocked() {
        use crate::state::stored;
        let group = mawex_api::GroupName::new("g").expect("a name");
        let a = mawex_api::TaskSpec::new(group.clone(), "h", "");
        let b = mawex_api::TaskSpec::new(group, "h", "").after(a.id);
        let links = stored::Links::of(&b, None).expect("links");
        let at = Timestamp(1);
        let events = [
            Event::TaskAccepted {
                spec: a.clone().into(),
                at,
            },
            Event::WorkflowAccepted {
                graph: None,
                tasks: vec![(b.clone().into(), links)],
                at,
            },
            Event::TasksCancelledByDependency {
                tasks: vec![(b.id, a.id)],
                at,
            },
            Event::TasksRevived {
                tasks: vec![b.id],
                at,
            },
            Event::TasksUnblocked {
                tasks: vec![b.id],
                at: Timestamp(5),
            },
            // Not blocked any more: nothing to count.
            Event::TasksUnblocked {
                tasks: vec![b.id],
                at: Timestamp(7),
            },
        ];
        let mut state = MasterState::new();
        let mut ready = ReadyTimes::default();
        let mut seen = Vec::new();
        for event in &events {
            transitions(&state, event, &mut ready, |_, to, _| seen.push(to));
            state.apply(event);
        }
        assert_eq!(
            seen,
            [
                Transition::accepted,
                Transition::accepted,
                Transition::cancelled,
                Transition::revived,
                Transition::unblocked,
            ]
        );
        // Its wait in the queue counts from its unblocking, not its submit.
        let assigned = Event::TaskAssigned {
            attempt: stored::AttemptRef {
                task: b.id,
                attempt: mawex_api::Attempt(1),
            },
            pod: mawex_api::PodId::new("p").expect("a name"),
            at: Timestamp(9),
        };
        let mut spans = Vec::new();
        transitions(&state, &assigned, &mut ready, |_, to, span| {
            spans.push((to, span));
        });
        assert_eq!(
            spans,
            [(
                Transition::started,
                Some(Span::Wait(Timestamp(5), Timestamp(9)))
            )]
        );
        assert!(ready.0.is_empty(), "taken at the first start");
    }

    #[test]
    fn groups_past_the_label_bound_share_one_label() {
        let metrics = MasterMetrics::default();
        let group = |i: usize| mawex_api::GroupName::new(format!("g{i}")).expect("a name");
        for i in 0..MAX_GROUP_LABELS {
            assert_eq!(metrics.label(&group(i)), format!("g{i}"));
        }
        assert_eq!(metrics.label(&group(MAX_GROUP_LABELS)), OTHER_GROUPS);
        assert_eq!(
            metrics.label(&group(0)),
            "g0",
            "a known group keeps its label"
        );
        // Reading a group's count creates nothing.
        assert_eq!(metrics.transitions("never", Transition::accepted), 0);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(!text.contains("never"), "{text}");
    }
}
