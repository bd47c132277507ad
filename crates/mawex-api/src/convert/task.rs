//! Tasks, results and views.

use std::time::Duration;

use crate::convert::{in_field, invalid, millis, required, task_id};
use crate::error::ApiError;
use crate::failure::{ErrorKind, RetryHint, TaskError};
use crate::graph::{Dependency, DependencyPolicy};
use crate::ids::{Attempt, GroupName, PodId};
use crate::proto;
use crate::task::{
    AttemptFailure, Dedup, Limits, Outcome, RetryPolicy, TaskResult, TaskSpec, TaskState, TaskView,
};
use crate::time::Timestamp;

#[doc(hidden)]
impl From<Limits> for proto::Limits {
    fn from(l: Limits) -> Self {
        proto::Limits {
            timeout_ms: l.timeout.map(millis),
            memory_bytes: l.memory_bytes,
        }
    }
}

#[doc(hidden)]
impl From<proto::Limits> for Limits {
    fn from(l: proto::Limits) -> Self {
        Limits {
            timeout: l.timeout_ms.map(Duration::from_millis),
            memory_bytes: l.memory_bytes,
        }
    }
}

#[doc(hidden)]
impl From<TaskSpec> for proto::TaskSpec {
    fn from(s: TaskSpec) -> Self {
        proto::TaskSpec {
            id: s.id.to_string(),
            group: s.group.to_string(),
            handler: s.handler,
            payload: s.payload,
            priority: s.priority,
            limits: Some(s.limits.into()),
            retry: s.retry.map(Into::into),
            run_at_ms: s.run_at.map(|t| t.0),
            dedup: s.dedup.map(|d| proto::Dedup {
                key: d.key,
                window_ms: millis(d.window),
            }),
            fairness_key: s.fairness_key,
            sandbox: s.sandbox,
            after: s.after.into_iter().map(Into::into).collect(),
            output_limit: s.output_limit,
        }
    }
}

#[doc(hidden)]
impl From<Dependency> for proto::Dependency {
    fn from(d: Dependency) -> Self {
        proto::Dependency {
            task: d.task.to_string(),
            policy: proto::DependencyPolicy::from(d.policy) as i32,
            ignore_output: !d.pass_output,
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::Dependency> for Dependency {
    type Error = ApiError;

    fn try_from(d: proto::Dependency) -> Result<Self, ApiError> {
        let mut dependency =
            Dependency::on(task_id("dependency.task", &d.task)?).with_policy(policy(d.policy)?);
        dependency.pass_output = !d.ignore_output;
        Ok(dependency)
    }
}

#[doc(hidden)]
impl From<DependencyPolicy> for proto::DependencyPolicy {
    fn from(p: DependencyPolicy) -> Self {
        match p {
            DependencyPolicy::AllFinished => proto::DependencyPolicy::AllFinished,
            // The default, and what `UNSPECIFIED` (0) means.
            _ => proto::DependencyPolicy::AllSucceeded,
        }
    }
}

/// A dependency policy from the wire; an unknown value is refused, not guessed.
pub(crate) fn policy(value: i32) -> Result<DependencyPolicy, ApiError> {
    match proto::DependencyPolicy::try_from(value) {
        Ok(proto::DependencyPolicy::AllSucceeded) => Ok(DependencyPolicy::AllSucceeded),
        Ok(proto::DependencyPolicy::AllFinished) => Ok(DependencyPolicy::AllFinished),
        Err(_) => Err(invalid(format!("unknown dependency policy {value}"))),
    }
}

#[doc(hidden)]
impl TryFrom<proto::TaskSpec> for TaskSpec {
    type Error = ApiError;

    fn try_from(s: proto::TaskSpec) -> Result<Self, ApiError> {
        Ok(TaskSpec {
            id: task_id("task.id", &s.id)?,
            group: GroupName::new(&s.group).map_err(in_field("task.group"))?,
            handler: s.handler,
            payload: s.payload,
            priority: s.priority,
            limits: s.limits.map(Limits::from).unwrap_or_default(),
            retry: s.retry.map(Into::into),
            run_at: s.run_at_ms.map(Timestamp),
            dedup: s
                .dedup
                .map(|d| Dedup::new(d.key, Duration::from_millis(d.window_ms))),
            fairness_key: s.fairness_key,
            sandbox: s.sandbox,
            after: s
                .after
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            output_limit: s.output_limit,
        })
    }
}

#[doc(hidden)]
impl From<RetryPolicy> for proto::RetryPolicy {
    fn from(r: RetryPolicy) -> Self {
        proto::RetryPolicy {
            max_attempts: r.max_attempts,
            base_delay_ms: millis(r.base_delay),
            max_delay_ms: millis(r.max_delay),
        }
    }
}

#[doc(hidden)]
impl From<proto::RetryPolicy> for RetryPolicy {
    fn from(r: proto::RetryPolicy) -> Self {
        RetryPolicy::new(r.max_attempts)
            .with_base_delay(Duration::from_millis(r.base_delay_ms))
            .with_max_delay(Duration::from_millis(r.max_delay_ms))
    }
}

#[doc(hidden)]
impl From<TaskState> for proto::TaskState {
    fn from(s: TaskState) -> Self {
        match s {
            TaskState::Pending => proto::TaskState::Pending,
            TaskState::Running => proto::TaskState::Running,
            TaskState::Succeeded => proto::TaskState::Succeeded,
            TaskState::Failed => proto::TaskState::Failed,
            TaskState::Cancelled => proto::TaskState::Cancelled,
            TaskState::Blocked => proto::TaskState::Blocked,
        }
    }
}

/// A state field: `Ok(None)` for UNSPECIFIED, an error for numbers this version does not know.
pub(crate) fn task_state(field: &str, raw: i32) -> Result<Option<TaskState>, ApiError> {
    match proto::TaskState::try_from(raw) {
        Ok(proto::TaskState::Unspecified) => Ok(None),
        Ok(proto::TaskState::Pending) => Ok(Some(TaskState::Pending)),
        Ok(proto::TaskState::Running) => Ok(Some(TaskState::Running)),
        Ok(proto::TaskState::Succeeded) => Ok(Some(TaskState::Succeeded)),
        Ok(proto::TaskState::Failed) => Ok(Some(TaskState::Failed)),
        Ok(proto::TaskState::Cancelled) => Ok(Some(TaskState::Cancelled)),
        Ok(proto::TaskState::Blocked) => Ok(Some(TaskState::Blocked)),
        Err(_) => Err(invalid(format!("{field}: unknown task state {raw}"))),
    }
}

#[doc(hidden)]
impl From<ErrorKind> for proto::ErrorKind {
    fn from(k: ErrorKind) -> Self {
        match k {
            ErrorKind::Handler => proto::ErrorKind::Handler,
            ErrorKind::Panicked => proto::ErrorKind::Panicked,
            ErrorKind::UnknownHandler => proto::ErrorKind::UnknownHandler,
            ErrorKind::TimedOut => proto::ErrorKind::TimedOut,
            ErrorKind::Cancelled => proto::ErrorKind::Cancelled,
            ErrorKind::Crashed => proto::ErrorKind::Crashed,
            ErrorKind::NonZeroExit => proto::ErrorKind::NonZeroExit,
            ErrorKind::OutOfMemory => proto::ErrorKind::OutOfMemory,
            ErrorKind::Sandbox => proto::ErrorKind::Sandbox,
            ErrorKind::LeaseExpired => proto::ErrorKind::LeaseExpired,
        }
    }
}

/// An error-kind field: `None` for UNSPECIFIED (a filter's "any").
pub(crate) fn error_kind_filter(raw: i32) -> Option<ErrorKind> {
    match proto::ErrorKind::try_from(raw) {
        Ok(proto::ErrorKind::Unspecified) | Err(_) => None,
        Ok(_) => error_kind(raw).ok(),
    }
}

fn error_kind(raw: i32) -> Result<ErrorKind, ApiError> {
    Ok(match proto::ErrorKind::try_from(raw) {
        Ok(proto::ErrorKind::Handler) => ErrorKind::Handler,
        Ok(proto::ErrorKind::Panicked) => ErrorKind::Panicked,
        Ok(proto::ErrorKind::UnknownHandler) => ErrorKind::UnknownHandler,
        Ok(proto::ErrorKind::TimedOut) => ErrorKind::TimedOut,
        Ok(proto::ErrorKind::Cancelled) => ErrorKind::Cancelled,
        Ok(proto::ErrorKind::Crashed) => ErrorKind::Crashed,
        Ok(proto::ErrorKind::NonZeroExit) => ErrorKind::NonZeroExit,
        Ok(proto::ErrorKind::OutOfMemory) => ErrorKind::OutOfMemory,
        Ok(proto::ErrorKind::Sandbox) => ErrorKind::Sandbox,
        Ok(proto::ErrorKind::LeaseExpired) => ErrorKind::LeaseExpired,
        // A newer pod may know kinds this master does not: keep the error, not the kind.
        Ok(proto::ErrorKind::Unspecified) | Err(_) => ErrorKind::Sandbox,
    })
}

#[doc(hidden)]
impl From<TaskError> for proto::TaskError {
    fn from(e: TaskError) -> Self {
        let (permanent, retry_after_ms) = match e.retry {
            RetryHint::Never => (true, None),
            RetryHint::After(d) => (false, Some(millis(d))),
            _ => (false, None),
        };
        proto::TaskError {
            kind: proto::ErrorKind::from(e.kind) as i32,
            message: e.message,
            permanent,
            retry_after_ms,
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::TaskError> for TaskError {
    type Error = ApiError;

    fn try_from(e: proto::TaskError) -> Result<Self, ApiError> {
        let retry = match (e.permanent, e.retry_after_ms) {
            (true, _) => RetryHint::Never,
            (false, Some(ms)) => RetryHint::After(Duration::from_millis(ms)),
            (false, None) => RetryHint::Policy,
        };
        Ok(TaskError::new(error_kind(e.kind)?, e.message).with_retry(retry))
    }
}

#[doc(hidden)]
impl From<Outcome> for proto::Outcome {
    fn from(o: Outcome) -> Self {
        use proto::outcome::Outcome as O;
        let outcome = match o {
            Outcome::Succeeded(out) => O::Output(out),
            Outcome::Failed(e) => O::Error(e.into()),
            Outcome::Cancelled => O::Cancelled(proto::Cancelled {}),
        };
        proto::Outcome {
            outcome: Some(outcome),
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::Outcome> for Outcome {
    type Error = ApiError;

    fn try_from(o: proto::Outcome) -> Result<Self, ApiError> {
        use proto::outcome::Outcome as O;
        match required("outcome", o.outcome)? {
            O::Output(out) => Ok(Outcome::Succeeded(out)),
            O::Error(e) => Ok(Outcome::Failed(e.try_into()?)),
            O::Cancelled(_) => Ok(Outcome::Cancelled),
        }
    }
}

#[doc(hidden)]
impl From<TaskResult> for proto::TaskResult {
    fn from(r: TaskResult) -> Self {
        proto::TaskResult {
            id: r.id.to_string(),
            group: r.group.to_string(),
            attempt: r.attempt.0,
            outcome: Some(r.outcome.into()),
            finished_at_ms: r.finished_at.0,
            seq: r.seq,
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::TaskResult> for TaskResult {
    type Error = ApiError;

    fn try_from(r: proto::TaskResult) -> Result<Self, ApiError> {
        Ok(TaskResult::new(
            task_id("result.id", &r.id)?,
            GroupName::new(&r.group).map_err(in_field("result.group"))?,
            Attempt(r.attempt),
            required("result.outcome", r.outcome)?.try_into()?,
            Timestamp(r.finished_at_ms),
            r.seq,
        ))
    }
}

#[doc(hidden)]
impl From<TaskView> for proto::TaskView {
    fn from(v: TaskView) -> Self {
        proto::TaskView {
            spec: Some(v.spec.into()),
            state: proto::TaskState::from(v.state) as i32,
            attempt: v.attempt.0,
            pod: v.pod.map(|p| p.to_string()),
            submitted_at_ms: v.submitted_at.0,
            started_at_ms: v.started_at.map(|t| t.0),
            result: v.result.map(Into::into),
            failures: v
                .failures
                .into_iter()
                .map(|f| proto::AttemptFailure {
                    attempt: f.attempt.0,
                    error: Some(f.error.into()),
                    at_ms: f.at.0,
                })
                .collect(),
            not_before_ms: v.not_before.map(|t| t.0),
            eta_ms: v.eta.map(millis),
            cancelled_by: v.cancelled_by.map(|t| t.to_string()),
            graph: v.graph.map(|g| g.to_string()),
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::TaskView> for TaskView {
    type Error = ApiError;

    fn try_from(v: proto::TaskView) -> Result<Self, ApiError> {
        let state =
            task_state("view.state", v.state)?.ok_or_else(|| invalid("view.state is required"))?;
        let mut view = TaskView::new(
            required("view.spec", v.spec)?.try_into()?,
            state,
            Timestamp(v.submitted_at_ms),
        );
        view.attempt = Attempt(v.attempt);
        view.pod = v
            .pod
            .map(|p| PodId::new(p).map_err(in_field("view.pod")))
            .transpose()?;
        view.started_at = v.started_at_ms.map(Timestamp);
        view.result = v.result.map(TryInto::try_into).transpose()?;
        view.failures = v
            .failures
            .into_iter()
            .map(|f| {
                Ok(AttemptFailure::new(
                    Attempt(f.attempt),
                    required("failure.error", f.error)?.try_into()?,
                    Timestamp(f.at_ms),
                ))
            })
            .collect::<Result<_, ApiError>>()?;
        view.not_before = v.not_before_ms.map(Timestamp);
        view.eta = v.eta_ms.map(Duration::from_millis);
        view.cancelled_by = v
            .cancelled_by
            .map(|t| task_id("view.cancelled_by", &t))
            .transpose()?;
        view.graph = v
            .graph
            .map(|g| g.parse().map_err(in_field("view.graph")))
            .transpose()?;
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message;

    use crate::proto;

    /// A payload decoded from a message shares the message's buffer, and a spec converted
    /// to the API type keeps sharing it: payloads are not copied at each layer.
    #[test]
    fn a_decoded_payload_shares_the_buffer_it_came_in() {
        let payload = vec![7_u8; 64 * 1024];
        let spec = proto::TaskSpec {
            id: crate::TaskId::new().to_string(),
            group: "g".into(),
            handler: "h".into(),
            payload: Bytes::from(payload),
            ..Default::default()
        };
        let wire = Bytes::from(spec.encode_to_vec());
        let decoded = proto::TaskSpec::decode(wire.clone()).expect("decodes");
        let inside = |b: &Bytes| {
            let range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
            range.contains(&(b.as_ptr() as usize))
        };
        assert!(
            inside(&decoded.payload),
            "the payload was copied out of the buffer"
        );
        let api = crate::TaskSpec::try_from(decoded).expect("a valid spec");
        assert!(inside(&api.payload), "the conversion copied the payload");
        let back = proto::TaskSpec::from(api);
        assert!(
            inside(&back.payload),
            "the conversion back copied the payload"
        );
    }
}
