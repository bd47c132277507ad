//! A master's metrics in the Prometheus data model (`prometheus-client`): task transitions per
//! group, queue wait and run time per group, and the journal's commit latency and batch size.
//!
//! Nothing is recorded until [`Master::metrics`](super::Master::metrics) is asked for: then
//! the core times its commits (two atomic adds a batch), and the read model's thread, off the
//! core thread, counts the committed events against its copy of the state. The state's own
//! figures (queue depth, running tasks, pods) are the exporter's to read at scrape time from
//! the master's read calls: they are exact then, not counted.

use std::time::Duration;

use mawex_api::{TaskState, Timestamp};
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

/// The metrics of one master (see the module's documentation). Cheap to share.
#[derive(Debug)]
pub struct MasterMetrics {
    transitions: Family<TransitionLabels, Counter>,
    queue_wait: Family<GroupLabels, Histogram, fn() -> Histogram>,
    run_time: Family<GroupLabels, Histogram, fn() -> Histogram>,
    commit_latency: Histogram,
    batch_events: Histogram,
}

impl Default for MasterMetrics {
    fn default() -> Self {
        MasterMetrics {
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
            .get_or_create(&TransitionLabels {
                group: group.to_owned(),
                to,
            })
            .get()
    }

    /// One batch of `events` made durable in `took`.
    pub(crate) fn committed(&self, took: Duration, events: usize) {
        self.commit_latency.observe(seconds(took));
        self.batch_events.observe(events as f64);
    }

    fn count(&self, group: &mawex_api::GroupName, to: Transition) {
        self.transitions
            .get_or_create(&TransitionLabels {
                group: group.to_string(),
                to,
            })
            .inc();
    }

    fn observe(
        family: &Family<GroupLabels, Histogram, fn() -> Histogram>,
        group: &mawex_api::GroupName,
        from: Timestamp,
        to: Timestamp,
    ) {
        family
            .get_or_create(&GroupLabels {
                group: group.to_string(),
            })
            .observe(seconds(to.saturating_since(from)));
    }

    /// Counts `event`, read against `state` as it was before the event was applied.
    pub(crate) fn record(&self, state: &MasterState, event: &Event) {
        match event {
            Event::TaskAccepted { spec, .. } => self.count(&spec.group, Transition::accepted),
            Event::TaskAssigned { attempt, at, .. } => {
                if let Some(task) = state.task(&attempt.task) {
                    self.count(&task.spec.group, Transition::started);
                    let ready = task
                        .not_before
                        .map_or(task.submitted_at, |t| t.max(task.submitted_at));
                    Self::observe(&self.queue_wait, &task.spec.group, ready, *at);
                }
            }
            Event::TaskFinished {
                attempt,
                outcome,
                at,
            } => {
                if let Some(task) = state.task(&attempt.task) {
                    let to = match outcome {
                        Outcome::Succeeded(_) => Transition::succeeded,
                        Outcome::Failed(_) => Transition::failed,
                        // Counted once, by the event that made it cancelled.
                        Outcome::Cancelled if task.state == TaskState::Cancelled => return,
                        Outcome::Cancelled => Transition::cancelled,
                    };
                    self.count(&task.spec.group, to);
                    if let Some(started) = task.started_at() {
                        Self::observe(&self.run_time, &task.spec.group, started, *at);
                    }
                }
            }
            Event::TaskRetryScheduled { attempt, at, .. } => {
                if let Some(task) = state.task(&attempt.task) {
                    self.count(&task.spec.group, Transition::retry_scheduled);
                    if let Some(started) = task.started_at() {
                        Self::observe(&self.run_time, &task.spec.group, started, *at);
                    }
                }
            }
            Event::TaskRequeued { attempt, .. } => {
                if let Some(task) = state.task(&attempt.task) {
                    self.count(&task.spec.group, Transition::requeued);
                }
            }
            Event::TaskCancelled { task, .. } => {
                if let Some(task) = state.task(task) {
                    if !task.state.is_terminal() {
                        self.count(&task.spec.group, Transition::cancelled);
                    }
                }
            }
            Event::TasksRetried { tasks, .. } => {
                for id in tasks {
                    if let Some(task) = state.task(id) {
                        self.count(&task.spec.group, Transition::retried);
                    }
                }
            }
            _ => {}
        }
    }
}
