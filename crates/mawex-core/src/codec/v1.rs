//! Record and snapshot format 1, frozen.
//!
//! These types are the exact serde layout of format 1. They never change: journals written
//! in format 1 are decoded through them and upgraded to the current types. Only primitives
//! whose encoding is stable by contract (ids, names, timestamps, attempt numbers, `Bytes`,
//! `Duration`, and enums that only ever grow at the end) are shared with the live types.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use mawex_api::{Attempt, ErrorKind, GroupName, PodId, TaskId, TaskState, Timestamp};
use serde::Deserialize;

use crate::state::stored::{
    AttemptFailure, AttemptRef, Limits, Outcome, RetryHint, TaskError, TaskOptions, TaskResult,
    TaskSpec,
};
use crate::state::{Event, MasterState, RequeueReason, TaskEntry, ROUND_BASE};

#[derive(Deserialize)]
pub(crate) struct LimitsV1 {
    timeout: Option<Duration>,
    memory_bytes: Option<u64>,
}

#[derive(Deserialize)]
pub(crate) struct TaskSpecV1 {
    id: TaskId,
    group: GroupName,
    handler: String,
    payload: Bytes,
    priority: i32,
    limits: LimitsV1,
}

impl From<TaskSpecV1> for TaskSpec {
    fn from(s: TaskSpecV1) -> TaskSpec {
        TaskSpec::new(
            s.id,
            s.group,
            s.handler.into(),
            s.payload,
            s.priority,
            None,
            TaskOptions {
                limits: Limits {
                    timeout: s.limits.timeout,
                    memory_bytes: s.limits.memory_bytes,
                },
                ..TaskOptions::default()
            },
        )
    }
}

#[derive(Deserialize)]
pub(crate) struct TaskErrorV1 {
    kind: ErrorKind,
    message: String,
}

impl From<TaskErrorV1> for TaskError {
    fn from(e: TaskErrorV1) -> TaskError {
        TaskError {
            kind: e.kind,
            message: e.message,
            retry: RetryHint::Policy,
        }
    }
}

#[derive(Deserialize)]
pub(crate) enum OutcomeV1 {
    Succeeded(Bytes),
    Failed(TaskErrorV1),
    Cancelled,
}

impl From<OutcomeV1> for Outcome {
    fn from(o: OutcomeV1) -> Outcome {
        match o {
            OutcomeV1::Succeeded(b) => Outcome::Succeeded(b),
            OutcomeV1::Failed(e) => Outcome::Failed(e.into()),
            OutcomeV1::Cancelled => Outcome::Cancelled,
        }
    }
}

#[derive(Deserialize)]
pub(crate) enum RequeueReasonV1 {
    LeaseExpired,
    Returned,
    PodLeft,
    NotHeld,
}

impl From<RequeueReasonV1> for RequeueReason {
    fn from(r: RequeueReasonV1) -> RequeueReason {
        match r {
            RequeueReasonV1::LeaseExpired => RequeueReason::LeaseExpired,
            RequeueReasonV1::Returned => RequeueReason::Returned,
            RequeueReasonV1::PodLeft => RequeueReason::PodLeft,
            RequeueReasonV1::NotHeld => RequeueReason::NotHeld,
        }
    }
}

#[derive(Deserialize)]
pub(crate) enum EventV1 {
    TaskAccepted {
        spec: TaskSpecV1,
        at: Timestamp,
    },
    TaskAssigned {
        attempt: AttemptRef,
        pod: PodId,
        at: Timestamp,
    },
    TaskFinished {
        attempt: AttemptRef,
        outcome: OutcomeV1,
        at: Timestamp,
    },
    TaskRequeued {
        attempt: AttemptRef,
        reason: RequeueReasonV1,
        at: Timestamp,
    },
    TaskCancelled {
        task: TaskId,
        at: Timestamp,
    },
    TasksForgotten {
        tasks: Vec<TaskId>,
    },
}

impl From<EventV1> for Event {
    fn from(e: EventV1) -> Event {
        match e {
            EventV1::TaskAccepted { spec, at } => Event::TaskAccepted {
                spec: spec.into(),
                at,
            },
            EventV1::TaskAssigned { attempt, pod, at } => Event::TaskAssigned { attempt, pod, at },
            EventV1::TaskFinished {
                attempt,
                outcome,
                at,
            } => Event::TaskFinished {
                attempt,
                outcome: outcome.into(),
                at,
            },
            EventV1::TaskRequeued {
                attempt,
                reason,
                at,
            } => Event::TaskRequeued {
                attempt,
                reason: reason.into(),
                at,
            },
            EventV1::TaskCancelled { task, at } => Event::TaskCancelled { task, at },
            EventV1::TasksForgotten { tasks } => Event::TasksForgotten { tasks },
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct TaskResultV1 {
    id: TaskId,
    group: GroupName,
    attempt: Attempt,
    outcome: OutcomeV1,
    finished_at: Timestamp,
    seq: u64,
}

impl From<TaskResultV1> for TaskResult {
    fn from(r: TaskResultV1) -> TaskResult {
        TaskResult {
            id: r.id,
            group: r.group,
            attempt: r.attempt,
            outcome: r.outcome.into(),
            finished_at: r.finished_at,
            seq: r.seq,
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct TaskEntryV1 {
    pub(crate) spec: TaskSpecV1,
    pub(crate) state: TaskState,
    pub(crate) attempt: Attempt,
    pub(crate) pod: Option<PodId>,
    pub(crate) order: u64,
    pub(crate) submitted_at: Timestamp,
    pub(crate) started_at: Option<Timestamp>,
    pub(crate) result: Option<TaskResultV1>,
}

#[derive(Deserialize)]
pub(crate) struct MasterStateV1 {
    pub(crate) tasks: BTreeMap<TaskId, TaskEntryV1>,
    pub(crate) accepted: u64,
    pub(crate) results_recorded: u64,
}

#[derive(Deserialize)]
pub(crate) struct SnapshotV1 {
    pub(crate) last_seq: u64,
    pub(crate) state: MasterStateV1,
}

impl SnapshotV1 {
    pub(crate) fn upgrade(self) -> (u64, MasterState) {
        (self.last_seq, self.state.upgrade())
    }
}

impl MasterStateV1 {
    /// Upgrades a state decoded from a format-1 snapshot.
    fn upgrade(self) -> MasterState {
        let v1 = self;
        let tasks = v1
            .tasks
            .into_iter()
            .map(|(id, e)| {
                let result: Option<TaskResult> = e.result.map(Into::into);
                // Format 1 had no retries: a failed task failed exactly once, as its result says.
                let failures = match &result {
                    Some(r) => match &r.outcome {
                        Outcome::Failed(error) => {
                            vec![AttemptFailure {
                                attempt: r.attempt,
                                error: error.clone(),
                                at: r.finished_at,
                            }]
                        }
                        _ => Vec::new(),
                    },
                    None => Vec::new(),
                };
                let entry = TaskEntry::from_format_1(
                    e.spec.into(),
                    e.state,
                    e.attempt,
                    e.pod,
                    e.order,
                    e.submitted_at,
                    e.started_at,
                    result,
                    failures,
                    // Format 1 knew no fairness: one round for all keeps the queue FIFO.
                    ROUND_BASE,
                );
                (id, entry)
            })
            .collect();
        MasterState::from_parts(
            tasks,
            BTreeMap::new(),
            BTreeMap::new(),
            v1.accepted,
            v1.results_recorded,
            Default::default(),
        )
    }
}
