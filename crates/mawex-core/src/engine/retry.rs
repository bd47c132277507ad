//! Failed attempts: a retry at a chosen time, or the end of the task; requeues of lost leases.

use std::collections::BTreeMap;
use std::time::Duration;

use mawex_api::pod::AttemptRef;
use mawex_api::{ErrorKind, RetryHint, RetryPolicy, TaskError, TaskId, TaskState, Timestamp};

use crate::state::{stored, Event, RequeueReason};

use super::{Engine, Lease, Output};

impl Engine {
    pub(super) fn requeue_all(
        &mut self,
        leases: BTreeMap<TaskId, Lease>,
        reason: RequeueReason,
        now: Timestamp,
        out: &mut Output,
    ) {
        for (task, lease) in leases {
            let attempt = AttemptRef {
                task,
                attempt: lease.attempt,
            };
            self.requeue(attempt, reason, now, out);
        }
    }

    /// A failed attempt: retried after a backoff while the policy allows, else the task
    /// fails for good with every attempt's error on record.
    pub(super) fn fail_attempt(
        &mut self,
        attempt: AttemptRef,
        error: TaskError,
        now: Timestamp,
        out: &mut Output,
    ) {
        let Some(entry) = self.state.task(&attempt.task) else {
            return;
        };
        if entry.state != TaskState::Running || entry.attempt != attempt.attempt {
            return;
        }
        // The task's own policy, else its group's, else the master's.
        let policy = entry
            .spec
            .retry()
            .map(|r| RetryPolicy::from(*r))
            .or_else(|| self.state.group_settings(&entry.spec.group).retry)
            .unwrap_or(self.config.default_retry);
        // Failures since the last manual retry, this one included.
        let failures = u32::try_from(entry.failures().len())
            .unwrap_or(u32::MAX)
            .saturating_sub(entry.retry_base())
            .saturating_add(1);
        let delay = match error.retry {
            RetryHint::Never => None,
            _ if failures >= policy.max_attempts => None,
            // A pod's hint, but never later than the policy allows.
            RetryHint::After(delay) => Some(delay.min(policy.max_delay)),
            _ => Some(full_jitter(policy.delay_cap(failures), attempt)),
        };
        let event = match delay {
            Some(delay) => Event::TaskRetryScheduled {
                attempt: attempt.into(),
                error: error.into(),
                retry_at: now.saturating_add(delay),
                at: now,
            },
            None => Event::TaskFinished {
                attempt: attempt.into(),
                outcome: stored::Outcome::Failed(error.into()),
                at: now,
            },
        };
        self.emit(event, out);
    }

    pub(super) fn requeue(
        &mut self,
        attempt: AttemptRef,
        reason: RequeueReason,
        now: Timestamp,
        out: &mut Output,
    ) {
        // A lease lost without word from the pod is a failed attempt: it counts.
        if matches!(reason, RequeueReason::LeaseExpired | RequeueReason::NotHeld) {
            let message = match reason {
                RequeueReason::NotHeld => "the pod no longer holds the attempt",
                _ => "the pod went silent; its lease expired",
            };
            let error = TaskError::new(ErrorKind::LeaseExpired, message);
            self.fail_attempt(attempt, error, now, out);
            return;
        }
        let current = self
            .state
            .task(&attempt.task)
            .is_some_and(|e| e.state == TaskState::Running && e.attempt == attempt.attempt);
        if current {
            self.emit(
                Event::TaskRequeued {
                    attempt: attempt.into(),
                    reason,
                    at: now,
                },
                out,
            );
        }
    }
}

/// A delay drawn from `[0, cap)`, "full jitter" so that retries of many tasks spread out.
/// Derived from the attempt rather than a random source, so the decision is deterministic; the
/// chosen time is journaled, so replay never recomputes it.
fn full_jitter(cap: Duration, attempt: AttemptRef) -> Duration {
    let bytes = attempt.task.as_bytes();
    let mut x = u64::from_le_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ]) ^ u64::from_le_bytes([
        bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15],
    ]) ^ u64::from(attempt.attempt.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finalizer: spreads the bits uniformly.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    cap.mul_f64((x >> 11) as f64 / (1u64 << 53) as f64)
}
