//! Pod link messages.

use std::time::Duration;

use crate::convert::{in_field, invalid, required, task_id};
use crate::error::ApiError;
use crate::ids::{Attempt, GroupName, PodId};
use crate::pod::{
    Assignment, AttemptRef, MasterMessage, PodHello, PodMessage, QueueRank, ResourceUsage, Welcome,
};
use crate::proto;
use crate::proto::master_to_pod::Message as ToPod;
use crate::proto::pod_to_master::Message as ToMaster;
use crate::task::{Outcome, TaskSpec};

#[doc(hidden)]
impl From<AttemptRef> for proto::AttemptRef {
    fn from(r: AttemptRef) -> Self {
        proto::AttemptRef {
            task: r.task.to_string(),
            attempt: r.attempt.0,
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::AttemptRef> for AttemptRef {
    type Error = ApiError;

    fn try_from(r: proto::AttemptRef) -> Result<Self, ApiError> {
        if r.attempt == 0 {
            return Err(invalid("attempt: attempts are numbered from 1"));
        }
        Ok(AttemptRef {
            task: task_id("attempt.task", &r.task)?,
            attempt: Attempt(r.attempt),
        })
    }
}

fn attempts(list: Vec<proto::AttemptRef>) -> Result<Vec<AttemptRef>, ApiError> {
    list.into_iter().map(TryInto::try_into).collect()
}

fn to_proto_attempts(list: Vec<AttemptRef>) -> Vec<proto::AttemptRef> {
    list.into_iter().map(Into::into).collect()
}

#[doc(hidden)]
impl From<PodHello> for proto::PodHello {
    fn from(h: PodHello) -> Self {
        proto::PodHello {
            pod: h.pod.to_string(),
            groups: h.groups.into_iter().map(|g| g.to_string()).collect(),
            slots: h.slots,
            prefetch: h.prefetch,
            adaptive_prefetch: h.adaptive_prefetch,
            labels: h.labels.into_iter().collect(),
            address: h.address,
            holding: to_proto_attempts(h.holding),
            draining: h.draining,
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::PodHello> for PodHello {
    type Error = ApiError;

    fn try_from(h: proto::PodHello) -> Result<Self, ApiError> {
        let groups = h
            .groups
            .iter()
            .map(|g| GroupName::new(g).map_err(in_field("hello.groups")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut hello = PodHello::new(PodId::new(&h.pod).map_err(in_field("hello.pod"))?, groups);
        hello.slots = h.slots;
        hello.prefetch = h.prefetch;
        hello.adaptive_prefetch = h.adaptive_prefetch;
        hello.labels = h.labels.into_iter().collect();
        hello.address = h.address;
        hello.holding = attempts(h.holding)?;
        hello.draining = h.draining;
        Ok(hello)
    }
}

#[doc(hidden)]
impl From<Welcome> for proto::Welcome {
    fn from(w: Welcome) -> Self {
        proto::Welcome {
            session: w.session,
            heartbeat_interval_ms: u64::try_from(w.heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
            lease_timeout_ms: u64::try_from(w.lease_timeout.as_millis()).unwrap_or(u64::MAX),
            acks_reports: w.acks_reports,
            term: w.term,
            takes_output: w.takes_output,
        }
    }
}

#[doc(hidden)]
impl From<proto::Welcome> for Welcome {
    fn from(w: proto::Welcome) -> Self {
        let mut welcome = Welcome::new(
            w.session,
            Duration::from_millis(w.heartbeat_interval_ms),
            Duration::from_millis(w.lease_timeout_ms),
        );
        welcome.acks_reports = w.acks_reports;
        welcome.term = w.term;
        welcome.takes_output = w.takes_output;
        welcome
    }
}

#[doc(hidden)]
impl From<Assignment> for proto::Assignment {
    fn from(a: Assignment) -> Self {
        proto::Assignment {
            attempt: Some(a.attempt.into()),
            spec: Some(a.spec.into()),
            env: a.env.into_iter().collect(),
            inputs: a.inputs.into_iter().map(Into::into).collect(),
            rank: a.rank.map(|r| proto::QueueRank {
                priority: r.priority,
                round: r.round,
                order: r.order,
            }),
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::Assignment> for Assignment {
    type Error = ApiError;

    fn try_from(a: proto::Assignment) -> Result<Self, ApiError> {
        Ok(Assignment {
            attempt: required("assignment.attempt", a.attempt)?.try_into()?,
            spec: TaskSpec::try_from(required("assignment.spec", a.spec)?)?,
            env: a.env.into_iter().collect(),
            inputs: a
                .inputs
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            rank: a.rank.map(|r| QueueRank {
                priority: r.priority,
                round: r.round,
                order: r.order,
            }),
        })
    }
}

/// A pod's message on the wire; the hello is a separate variant because only the first
/// message of a stream may be one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodFrame {
    /// The registration that opens a stream.
    Hello(PodHello),
    /// Anything after it.
    Message(PodMessage),
}

#[doc(hidden)]
impl From<PodHello> for proto::PodToMaster {
    fn from(h: PodHello) -> Self {
        proto::PodToMaster {
            message: Some(ToMaster::Hello(h.into())),
        }
    }
}

#[doc(hidden)]
impl From<PodMessage> for proto::PodToMaster {
    fn from(m: PodMessage) -> Self {
        let message = match m {
            PodMessage::Heartbeat {
                holding,
                received,
                usage,
            } => {
                let usage = usage.unwrap_or_default();
                ToMaster::Heartbeat(proto::Heartbeat {
                    holding: to_proto_attempts(holding),
                    received,
                    cpu_percent: usage.cpu_permille as f32 / 10.0,
                    memory_bytes: usage.memory_bytes,
                })
            }
            PodMessage::Finished { attempt, outcome } => {
                let outcome = match outcome {
                    Ok(out) => Outcome::Succeeded(out),
                    Err(e) => Outcome::Failed(e),
                };
                ToMaster::Finished(proto::Finished {
                    attempt: Some(attempt.into()),
                    outcome: Some(outcome.into()),
                })
            }
            PodMessage::Returned { attempts } => ToMaster::Returned(proto::Returned {
                attempts: to_proto_attempts(attempts),
            }),
            PodMessage::Drain => ToMaster::Drain(proto::Drain {}),
            PodMessage::Leave => ToMaster::Leave(proto::Leave {}),
            PodMessage::Output { attempt, lines } => ToMaster::Output(proto::AttemptOutput {
                attempt: Some(attempt.into()),
                lines: lines.into_iter().map(Into::into).collect(),
            }),
        };
        proto::PodToMaster {
            message: Some(message),
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::PodToMaster> for PodFrame {
    type Error = ApiError;

    fn try_from(m: proto::PodToMaster) -> Result<Self, ApiError> {
        let message = match required("message", m.message)? {
            ToMaster::Hello(h) => return Ok(PodFrame::Hello(h.try_into()?)),
            ToMaster::Heartbeat(h) => PodMessage::Heartbeat {
                holding: attempts(h.holding)?,
                received: h.received,
                // Clamped: a hostile or broken pod cannot make the number absurd.
                usage: Some(ResourceUsage {
                    cpu_permille: (h.cpu_percent.clamp(0.0, 100_000.0) * 10.0) as u32,
                    memory_bytes: h.memory_bytes,
                }),
            },
            ToMaster::Finished(f) => {
                let attempt = required("finished.attempt", f.attempt)?.try_into()?;
                let outcome = match Outcome::try_from(required("finished.outcome", f.outcome)?)? {
                    Outcome::Succeeded(out) => Ok(out),
                    Outcome::Failed(e) => Err(e),
                    Outcome::Cancelled => {
                        return Err(invalid(
                            "finished.outcome: a pod reports output or an error",
                        ))
                    }
                };
                PodMessage::Finished { attempt, outcome }
            }
            ToMaster::Returned(r) => PodMessage::Returned {
                attempts: attempts(r.attempts)?,
            },
            ToMaster::Drain(_) => PodMessage::Drain,
            ToMaster::Leave(_) => PodMessage::Leave,
            ToMaster::Output(o) => {
                if o.lines.len() > crate::MAX_OUTPUT_LINES_PER_MESSAGE {
                    return Err(invalid(format!(
                        "output: {} lines, more than {} in one message",
                        o.lines.len(),
                        crate::MAX_OUTPUT_LINES_PER_MESSAGE
                    )));
                }
                PodMessage::Output {
                    attempt: required("output.attempt", o.attempt)?.try_into()?,
                    lines: o.lines.into_iter().map(Into::into).collect(),
                }
            }
        };
        Ok(PodFrame::Message(message))
    }
}

#[doc(hidden)]
impl From<Welcome> for proto::MasterToPod {
    fn from(w: Welcome) -> Self {
        proto::MasterToPod {
            term: w.term,
            message: Some(ToPod::Welcome(w.into())),
        }
    }
}

#[doc(hidden)]
impl From<MasterMessage> for proto::MasterToPod {
    fn from(m: MasterMessage) -> Self {
        let message = match m {
            MasterMessage::Assign {
                batch,
                assignments,
                more,
            } => ToPod::Assign(proto::Assign {
                batch,
                assignments: assignments.into_iter().map(Into::into).collect(),
                more,
            }),
            MasterMessage::Cancel(r) => ToPod::Cancel(r.into()),
            MasterMessage::Ack(attempts) => ToPod::Ack(proto::Ack {
                attempts: attempts.into_iter().map(Into::into).collect(),
            }),
            MasterMessage::Drain => ToPod::Drain(proto::Drain {}),
        };
        // The session's term is set by whoever sends it (`MasterToPod::term`).
        proto::MasterToPod {
            message: Some(message),
            term: 0,
        }
    }
}

/// The master's message on the wire: the welcome first, then the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterFrame {
    /// The answer to the hello.
    Welcome(Welcome),
    /// Anything after it.
    Message(MasterMessage),
}

#[doc(hidden)]
impl TryFrom<proto::MasterToPod> for MasterFrame {
    type Error = ApiError;

    fn try_from(m: proto::MasterToPod) -> Result<Self, ApiError> {
        Ok(match required("message", m.message)? {
            ToPod::Welcome(w) => MasterFrame::Welcome(w.into()),
            ToPod::Assign(a) => MasterFrame::Message(MasterMessage::Assign {
                batch: a.batch,
                more: a.more,
                assignments: a
                    .assignments
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<Result<_, _>>()?,
            }),
            ToPod::Cancel(r) => MasterFrame::Message(MasterMessage::Cancel(r.try_into()?)),
            ToPod::Ack(a) => MasterFrame::Message(MasterMessage::Ack(
                a.attempts
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<Result<_, _>>()?,
            )),
            ToPod::Drain(proto::Drain {}) => MasterFrame::Message(MasterMessage::Drain),
        })
    }
}
