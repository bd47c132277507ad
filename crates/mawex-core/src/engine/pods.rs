//! Pods: hello (registration and re-adoption), their messages (results, returns, heartbeats), disconnection.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use mawex_api::pod::{
    AttemptRef, MasterMessage, PodCredential, PodHello, PodMessage, ResourceUsage,
    MAX_POD_PREFETCH, MAX_POD_SLOTS,
};
use mawex_api::{
    ApiError, Attempt, GroupName, TaskError, TaskId, TaskState, Timestamp, MAX_ERROR_MESSAGE_BYTES,
};
use tracing::debug;

use crate::state::{stored, Event, RequeueReason};

use super::{Engine, Lease, Output, PodEntry};

impl Engine {
    /// Registers a pod on a new session, replacing an earlier registration of the same id,
    /// and re-adopts the attempts it still holds.
    pub(crate) fn pod_hello(
        &mut self,
        session: u64,
        hello: PodHello,
        now: Timestamp,
        out: &mut Output,
    ) -> Result<(), ApiError> {
        if hello.groups.is_empty() {
            return Err(ApiError::InvalidArgument(format!(
                "pod {}: a pod must serve at least one group",
                hello.pod
            )));
        }
        if !(1..=MAX_POD_SLOTS).contains(&hello.slots) {
            return Err(ApiError::InvalidArgument(format!(
                "pod {}: slots must be between 1 and {MAX_POD_SLOTS}, got {}",
                hello.pod, hello.slots
            )));
        }
        if hello.prefetch.max(hello.adaptive_prefetch) > MAX_POD_PREFETCH {
            return Err(ApiError::InvalidArgument(format!(
                "pod {}: prefetch must be at most {MAX_POD_PREFETCH}, got {}",
                hello.pod,
                hello.prefetch.max(hello.adaptive_prefetch)
            )));
        }
        // What a session held is bounded by the largest pod there can be (a pod that comes
        // back may announce other slots than the session whose attempts it still holds).
        let most = most_held(MAX_POD_SLOTS.saturating_add(MAX_POD_PREFETCH));
        if hello.holding.len() > most {
            return Err(ApiError::InvalidArgument(format!(
                "pod {}: it claims to hold {} attempts; no pod holds more than {most}",
                hello.pod,
                hello.holding.len()
            )));
        }
        // Checked before anything changes: a refused hello leaves the owner's pod, its
        // leases and its results as they were.
        let rebind = match (self.state.pod_owner(&hello.pod), &hello.credential) {
            (_, None) => None,
            (None, Some(credential)) => Some(stored::PodOwner::from(credential)),
            (Some(owner), Some(credential)) => match claim(owner, credential) {
                Claim::Same => None,
                Claim::Renewed => Some(stored::PodOwner::from(credential)),
                Claim::Refused => {
                    return Err(ApiError::PermissionDenied(format!(
                        "pod {}: the id is registered with another credential than {credential}",
                        hello.pod
                    )))
                }
            },
        };
        let token = hello.credential.as_ref().and_then(|c| c.token.clone());
        if let (Some(token), Some(max)) = (
            &token,
            hello.credential.as_ref().and_then(|c| c.token_max_pods),
        ) {
            let connected = self
                .pods
                .iter()
                .filter(|(id, entry)| **id != hello.pod && entry.token.as_ref() == Some(token))
                .count();
            if connected >= max as usize {
                return Err(ApiError::ResourceExhausted(format!(
                    "pod {}: token {token} has {connected} pods connected, the most it allows \
                     (max_pods)",
                    hello.pod
                )));
            }
        }
        if self.pods.len() >= self.config.max_pods && !self.pods.contains_key(&hello.pod) {
            return Err(ApiError::ResourceExhausted(format!(
                "pod {}: the master serves {} pods already (MasterConfig::max_pods); \
                 a pod that stopped heartbeating makes room after its lease",
                hello.pod,
                self.pods.len()
            )));
        }
        // An attempt of a group the pod no longer serves is not its to keep: it runs again
        // elsewhere (a pod id can come back with other groups, under another token even).
        let held: HashMap<TaskId, Attempt> = hello
            .holding
            .iter()
            .filter(|r| {
                self.state
                    .task(&r.task)
                    .is_none_or(|e| hello.groups.contains(&e.spec.group))
            })
            .map(|r| (r.task, r.attempt))
            .collect();

        // What the pod no longer holds, from an earlier session or from before a master
        // restart, runs elsewhere now rather than after a lease timeout.
        let mut lost: Vec<AttemptRef> = Vec::new();
        if let Some(old) = self.pods.remove(&hello.pod) {
            self.sessions.remove(&old.session);
            out.closed_sessions.push(old.session);
            lost.extend(
                old.leases
                    .iter()
                    .filter(|(task, lease)| held.get(task) != Some(&lease.attempt))
                    .map(|(&task, lease)| AttemptRef {
                        task,
                        attempt: lease.attempt,
                    }),
            );
        }
        lost.extend(
            self.orphans
                .iter()
                .filter(|(task, (attempt, _))| {
                    held.get(task) != Some(attempt)
                        && self.state.task(task).and_then(|e| e.pod()) == Some(&hello.pod)
                })
                .map(|(&task, &(attempt, _))| AttemptRef { task, attempt }),
        );
        for attempt in lost {
            self.requeue(attempt, RequeueReason::PodLeft, now, out);
        }

        let groups: std::sync::Arc<[GroupName]> = hello
            .groups
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut entry = PodEntry {
            session,
            groups,
            slots: hello.slots,
            capacity: hello
                .slots
                .saturating_add(hello.prefetch.max(hello.adaptive_prefetch)),
            pace: (hello.adaptive_prefetch > 0)
                .then(|| super::pace::Pace::new(hello.prefetch, hello.adaptive_prefetch)),
            leases: BTreeMap::new(),
            expires_at: now.saturating_add(self.config.lease_timeout),
            // A pod told to drain stays drained across masters until it restarts.
            draining: hello.draining,
            usage: ResourceUsage::default(),
            labels: std::sync::Arc::new(hello.labels.clone()),
            address: hello.address.clone(),
            connected_at: now,
            last_heard: now,
            token,
        };
        for r in &hello.holding {
            let adoptable = self.state.task(&r.task).is_some_and(|e| {
                e.state == TaskState::Running
                    && e.attempt == r.attempt
                    && e.pod() == Some(&hello.pod)
                    && held.contains_key(&r.task)
            });
            if adoptable {
                let lease = Lease {
                    attempt: r.attempt,
                    batch: 0,
                };
                entry.leases.insert(r.task, lease);
                self.orphans.remove(&r.task);
            } else {
                out.messages.push((session, MasterMessage::Cancel(*r)));
            }
        }
        if let (Some(pace), false) = (&mut entry.pace, entry.leases.is_empty()) {
            pace.leased(now);
        }
        debug!(pod = %hello.pod, session, adopted = entry.leases.len(), "pod registered");
        self.sessions.insert(session, hello.pod.clone());
        self.departed.remove(&hello.pod);
        self.away.remove(&hello.pod);
        // Journaled, so the id stays its credential's across restarts; emitted before
        // anything the pod is assigned, so no assignment is durable without it.
        if let Some(owner) = rebind {
            let pod = hello.pod.clone();
            self.emit(Event::PodBound { pod, owner }, out);
        }
        self.pods.insert(hello.pod.clone(), entry);
        self.pods_changed = true;
        self.catch_up(&hello.pod, now, out);
        self.dispatch_needed = true;
        Ok(())
    }

    /// Handles a message of a pod's session. Messages of unknown (replaced or expired)
    /// sessions are ignored: their pod must register again.
    pub(crate) fn pod_message(
        &mut self,
        session: u64,
        message: PodMessage,
        now: Timestamp,
        out: &mut Output,
    ) {
        let Some(pod_id) = self.sessions.get(&session).cloned() else {
            debug!(session, "message of an unknown session ignored");
            return;
        };
        let lease_timeout = self.config.lease_timeout;
        if let Some(entry) = self.pods.get_mut(&pod_id) {
            entry.expires_at = now.saturating_add(lease_timeout);
            entry.last_heard = now;
        }
        match message {
            PodMessage::Heartbeat {
                holding,
                received,
                usage,
            } => {
                if let (Some(entry), Some(usage)) = (self.pods.get_mut(&pod_id), usage) {
                    entry.usage = usage;
                }
                let Some(entry) = self.pods.get(&pod_id) else {
                    return;
                };
                // More than the pod can hold is not a pod working as it should: disconnect it
                // rather than answer each bogus attempt with a Cancel.
                if holding.len() > most_held(entry.capacity) {
                    tracing::warn!(pod = %pod_id, claimed = holding.len(), "heartbeat claims more attempts than the pod can hold; disconnecting it");
                    self.pod_disconnected(session, now);
                    out.closed_sessions.push(session);
                    return;
                }
                let held: HashSet<AttemptRef> = holding.iter().copied().collect();
                for r in holding {
                    if !entry.holds(&r) {
                        out.messages.push((session, MasterMessage::Cancel(r)));
                    }
                }
                // Leases the pod has certainly received but no longer holds, with no result
                // on the way (results are sent before an attempt leaves `holding`).
                let lost: Vec<AttemptRef> = entry
                    .leases
                    .iter()
                    .filter(|(_, lease)| lease.batch <= received)
                    .map(|(&task, lease)| AttemptRef {
                        task,
                        attempt: lease.attempt,
                    })
                    .filter(|r| !held.contains(r))
                    .collect();
                for r in lost {
                    tracing::warn!(task = %r.task, attempt = %r.attempt, pod = %pod_id, "pod no longer holds a lease; running it again");
                    self.requeue(r, RequeueReason::NotHeld, now, out);
                }
            }
            PodMessage::Finished { attempt, outcome } => {
                // Recorded or stale, the pod may forget it once this batch is durable.
                out.messages
                    .push((session, MasterMessage::Ack(vec![attempt])));
                let current = self.state.task(&attempt.task).is_some_and(|e| {
                    e.state == TaskState::Running
                        && e.attempt == attempt.attempt
                        && e.pod() == Some(&pod_id)
                });
                if !current {
                    debug!(task = %attempt.task, attempt = %attempt.attempt, pod = %pod_id, "result of a stale attempt dropped");
                    return;
                }
                // A task others run after hands them its output as an input: bounded by its
                // declared limit, else by the payload limit (what the fan-in check assumed).
                // An empty output is within any limit: it is not looked up.
                let over = match &outcome {
                    Ok(output) if !output.is_empty() => self
                        .output_limit(&attempt.task)
                        .or_else(|| {
                            self.output_is_an_input(&attempt.task)
                                .then_some(self.config.max_payload_bytes as u64)
                        })
                        .filter(|limit| output.len() as u64 > *limit)
                        .map(|limit| (output.len(), limit)),
                    _ => None,
                };
                match (outcome, over) {
                    (Ok(_), Some((len, limit))) => {
                        let error = mawex_api::TaskError::new(
                            mawex_api::ErrorKind::Sandbox,
                            format!(
                                "the output is {len} bytes, more than the {limit} bytes a task \
                                 others run after may hand them (its output_limit, else the \
                                 payload limit)"
                            ),
                        )
                        .with_retry(mawex_api::RetryHint::Never);
                        self.fail_attempt(attempt, error, now, out);
                    }
                    (Ok(output), None) => self.emit(
                        Event::TaskFinished {
                            attempt: attempt.into(),
                            outcome: stored::Outcome::Succeeded(output),
                            at: now,
                        },
                        out,
                    ),
                    (Err(error), _) => self.fail_attempt(attempt, bounded(error), now, out),
                }
                if let Some(entry) = self.pods.get_mut(&pod_id) {
                    let held = entry.leases.len();
                    if let Some(pace) = &mut entry.pace {
                        pace.finished(now, held);
                    }
                }
            }
            PodMessage::Output { attempt, lines } => {
                // Only the holder of the lease writes an attempt's output: another pod (or
                // a late line after the result) cannot write into a task it does not run.
                if self.pods.get(&pod_id).is_some_and(|p| p.holds(&attempt)) {
                    out.output.push((attempt, lines));
                }
            }
            PodMessage::Drain => {
                if let Some(entry) = self.pods.get_mut(&pod_id) {
                    entry.draining = true;
                    self.pods_changed = true;
                }
            }
            PodMessage::Returned { attempts } => {
                out.messages
                    .push((session, MasterMessage::Ack(attempts.clone())));
                // Only a pod that is shutting down hands work back: lease it nothing more.
                if let Some(entry) = self.pods.get_mut(&pod_id) {
                    entry.draining = true;
                }
                for attempt in attempts {
                    let held = self.pods.get(&pod_id).is_some_and(|p| p.holds(&attempt));
                    if held {
                        self.requeue(attempt, RequeueReason::Returned, now, out);
                    }
                }
            }
            PodMessage::Leave => {
                self.sessions.remove(&session);
                out.closed_sessions.push(session);
                if let Some(entry) = self.pods.remove(&pod_id) {
                    self.pods_changed = true;
                    self.requeue_all(entry.leases, RequeueReason::PodLeft, now, out);
                }
                debug!(pod = %pod_id, "pod left");
                self.departed.insert(pod_id, now);
            }
            other => debug!(pod = %pod_id, message = ?other, "unsupported pod message ignored"),
        }
    }

    /// The connection of `session` is gone. Its pod may come back within a lease timeout
    /// and claim its attempts; until then they are orphans.
    pub(crate) fn pod_disconnected(&mut self, session: u64, now: Timestamp) {
        let Some(pod_id) = self.sessions.remove(&session) else {
            return;
        };
        if let Some(entry) = self.pods.remove(&pod_id) {
            let deadline = now.saturating_add(self.config.lease_timeout);
            for (task, lease) in entry.leases {
                self.orphans.insert(task, (lease.attempt, deadline));
            }
        }
        debug!(pod = %pod_id, session, "pod disconnected");
        self.departed.insert(pod_id, now);
    }
}

/// The most attempts a pod of `capacity` (slots plus prefetch) can hold at once: its leases,
/// plus as many finished ones whose reports wait for the master's acknowledgement while new
/// leases already arrived.
fn most_held(capacity: u32) -> usize {
    usize::try_from(capacity)
        .unwrap_or(usize::MAX)
        .saturating_mul(2)
}

/// A pod's error as the master keeps it: a task fails up to `MAX_ATTEMPTS` times per manual
/// retry and keeps each failure, so each message is cut to [`MAX_ERROR_MESSAGE_BYTES`].
fn bounded(mut error: TaskError) -> TaskError {
    let len = error.message.len();
    if len > MAX_ERROR_MESSAGE_BYTES {
        let mut cut = MAX_ERROR_MESSAGE_BYTES;
        while !error.message.is_char_boundary(cut) {
            cut -= 1;
        }
        error.message.truncate(cut);
        error
            .message
            .push_str(&format!(" … (a message of {len} bytes, cut to {cut})"));
    }
    error
}

/// How a hello's credential compares with the owner of its pod id.
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    /// The same credential.
    Same,
    /// The owner, proven by the strongest factor both have, with something else changed
    /// (mutual TLS turned on or off, a token renamed): the id is bound to the new form.
    Renewed,
    /// Someone else.
    Refused,
}

/// Compares on the strongest factor both sides have: the certificate (it names one pod,
/// where a token may be a fleet's), else the token. With no factor in common (a switch from
/// certificates without tokens to tokens without certificates) nothing proves the owner.
fn claim(owner: &stored::PodOwner, hello: &PodCredential) -> Claim {
    let proven = match (&owner.certificate, &hello.certificate) {
        (Some(a), Some(b)) => a == b,
        _ => match (&owner.token, &hello.token) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        },
    };
    if !proven {
        Claim::Refused
    } else if owner.token == hello.token && owner.certificate == hello.certificate {
        Claim::Same
    } else {
        Claim::Renewed
    }
}
