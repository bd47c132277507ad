//! Dispatch: leasing pending tasks to pods with free slots, within group ceilings and rate limits.

use mawex_api::pod::AttemptRef;
use mawex_api::{GroupName, PodId, Timestamp};

use crate::state::Event;

use super::{Bucket, Engine, Output, MILLI};

impl Engine {
    /// Leases pending tasks to pods with free capacity: highest priority, then oldest,
    /// among the pod's groups; one task per pod per round so that work spreads.
    pub(crate) fn dispatch(&mut self, now: Timestamp, out: &mut Output) {
        if !self.dispatch_needed {
            return;
        }
        self.dispatch_needed = false;
        // Broadcast targets first: each is pinned to its pod and waits for a source.
        self.dispatch_broadcasts(now, out);
        let mut active: Vec<PodId> = self
            .pods
            .iter()
            .filter(|(_, p)| {
                p.free() > 0
                    && p.groups
                        .iter()
                        .any(|g| self.state.has_pending(g) && self.state.group_open(g))
            })
            .map(|(id, _)| id.clone())
            .collect();
        if active.is_empty() {
            return;
        }
        let start = self.rotation % active.len();
        active.rotate_left(start);
        self.rotation = self.rotation.wrapping_add(1);
        self.batch += 1;
        while !active.is_empty() {
            let mut still: Vec<PodId> = Vec::with_capacity(active.len());
            for pod_id in active {
                let Some(pod) = self.pods.get(&pod_id) else {
                    continue;
                };
                if pod.free() == 0 {
                    continue;
                }
                let next = if self.state.any_group_settings() {
                    // Some group is paused, capped or rate limited: check each of the pod's.
                    let groups = pod.groups.clone();
                    let open: Vec<GroupName> = groups
                        .iter()
                        .filter(|g| self.state.group_open(g) && self.has_token(g, now))
                        .cloned()
                        .collect();
                    let next = self.state.next_pending(&open);
                    if let Some(group) = next
                        .and_then(|t| self.state.task(&t))
                        .map(|e| e.spec.group.clone())
                    {
                        self.take_token(&group);
                    }
                    next
                } else {
                    self.state.next_pending(pod.groups.iter())
                };
                let Some(task) = next else {
                    continue;
                };
                let Some(next) = self.state.task(&task).map(|e| e.attempt.next()) else {
                    continue;
                };
                let attempt = AttemptRef {
                    task,
                    attempt: next,
                };
                self.emit(
                    Event::TaskAssigned {
                        attempt: attempt.into(),
                        pod: pod_id.clone(),
                        at: now,
                    },
                    out,
                );
                still.push(pod_id);
            }
            active = still;
        }
    }

    /// May `group` start a task now under its rate limit? Refills its bucket first.
    pub(super) fn has_token(&mut self, group: &GroupName, now: Timestamp) -> bool {
        let Some(rate) = self.state.group_settings(group).rate else {
            if !self.buckets.is_empty() {
                // The limit was lifted.
                self.buckets.remove(group);
            }
            return true;
        };
        let bucket = self.buckets.entry(group.clone()).or_insert(Bucket {
            milli_tokens: u64::from(rate.burst) * MILLI,
            refilled_at: now,
        });
        bucket.refill(rate, now);
        bucket.milli_tokens >= MILLI
    }

    pub(super) fn take_token(&mut self, group: &GroupName) {
        if let Some(bucket) = self.buckets.get_mut(group) {
            bucket.milli_tokens = bucket.milli_tokens.saturating_sub(MILLI);
        }
    }
}
