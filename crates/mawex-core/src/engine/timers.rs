//! Timers: lease expiry, delayed tasks coming due, retention, schedules.

use mawex_api::pod::AttemptRef;
use mawex_api::{PodId, Timestamp};

use crate::state::{Event, RequeueReason};

use super::{Engine, Output, FORGET_PER_TICK};

/// Owned pod ids remembered per place of `MasterConfig::max_pods`, at most.
const OWNED_IDS_PER_POD_PLACE: usize = 4;

impl Engine {
    /// Releases delayed tasks that are due, expires silent pods and unclaimed orphans, and
    /// forgets results past retention.
    pub(crate) fn tick(&mut self, now: Timestamp, out: &mut Output) {
        self.fire_schedules(now, out);
        if self.state.promote_due(now) {
            self.dispatch_needed = true;
        }
        if self.next_broadcast_deadline().is_some_and(|t| t <= now) {
            self.dispatch_needed = true;
        }
        // Rate-limited groups with work may have earned tokens since the last look.
        if self.buckets.keys().any(|g| self.state.has_pending(g)) {
            self.dispatch_needed = true;
        }
        let silent: Vec<PodId> = self
            .pods
            .iter()
            .filter(|(_, p)| p.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for pod_id in silent {
            if let Some(entry) = self.pods.remove(&pod_id) {
                self.pods_changed = true;
                tracing::warn!(pod = %pod_id, leases = entry.leases.len(), "pod stopped heartbeating; its leases expire");
                self.sessions.remove(&entry.session);
                out.closed_sessions.push(entry.session);
                self.requeue_all(entry.leases, RequeueReason::LeaseExpired, now, out);
                self.departed.insert(pod_id, now);
            }
        }
        self.fail_unreachable_targets(now, out);
        // A pod away for a lease already counts as unreachable, and would without its entry
        // too (an unknown pod counts from the engine's start, which is earlier): forgetting
        // it changes no decision, and keeps pods that came once and never again from piling up.
        // A pod that applied some version is remembered longer (see `away`), so that it is
        // not caught up again when it comes back.
        let lease = self.config.lease_timeout;
        // So is the credential that owns its id: the journaled state (versions, targets)
        // still names the pod, so the id stays with its credential as long as that lasts.
        let (state, away) = (&self.state, &mut self.away);
        self.departed.retain(|pod, since| {
            let keep = since.saturating_add(lease) > now;
            if !keep && (state.broadcasts().has_applied_any(pod) || state.pod_owner(pod).is_some())
            {
                away.insert(pod.clone(), *since);
            }
            keep
        });
        let expired: Vec<AttemptRef> = self
            .orphans
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(&task, &(attempt, _))| AttemptRef { task, attempt })
            .collect();
        for attempt in expired {
            self.orphans.remove(&attempt.task);
            self.requeue(attempt, RequeueReason::LeaseExpired, now, out);
        }
        if let Some(cutoff) = now.0.checked_sub(
            u64::try_from(self.config.result_retention.as_millis()).unwrap_or(u64::MAX),
        ) {
            let old = self.past_retention(Timestamp(cutoff));
            if !old.is_empty() {
                self.emit(Event::TasksForgotten { tasks: old }, out);
            }
            // After their target tasks (forgotten above, or on an earlier tick).
            let state = &self.state;
            let ids = state
                .broadcasts()
                .forgettable(Timestamp(cutoff), FORGET_PER_TICK, |task| {
                    state.task(task).is_some()
                });
            if !ids.is_empty() {
                self.emit(Event::BroadcastsForgotten { ids }, out);
            }
        }
        self.forget_pods(now, out);
    }

    /// Up to [`FORGET_PER_TICK`] finished tasks past their retention that nothing needs.
    /// A task another still runs after stays (its result is that one's input): it waits in
    /// `held`, looked at again a share per tick, while the scan goes on past it, so that
    /// such tasks never stop the others from being forgotten.
    fn past_retention(&mut self, cutoff: Timestamp) -> Vec<mawex_api::TaskId> {
        let mut old = Vec::new();
        let seen = self
            .state
            .finished_after(self.retention.scanned, cutoff, FORGET_PER_TICK);
        for (seq, id) in seen {
            self.retention.scanned = seq;
            if self.needed(&id) {
                self.retention.held.insert(id);
            } else {
                old.push(id);
            }
        }
        // The held ones, a share per tick, round the set.
        let start = self.retention.next_held.take();
        let share: Vec<mawex_api::TaskId> = match start {
            Some(from) => self
                .retention
                .held
                .range(from..)
                .chain(self.retention.held.range(..from))
                .take(FORGET_PER_TICK)
                .copied()
                .collect(),
            None => self
                .retention
                .held
                .iter()
                .take(FORGET_PER_TICK)
                .copied()
                .collect(),
        };
        for id in share {
            let finished = self
                .state
                .task(&id)
                .and_then(|e| e.result())
                .map(|r| r.finished_at);
            match finished {
                // Gone (purged), or running again (retried): its next result is scanned.
                None => {
                    self.retention.held.remove(&id);
                }
                Some(at) if at < cutoff && !self.needed(&id) => {
                    self.retention.held.remove(&id);
                    old.push(id);
                }
                Some(_) => self.retention.next_held = Some(id),
            }
        }
        old.sort_unstable();
        old.dedup();
        old
    }

    /// Forgets pods away for longer than the result retention: the versions they applied
    /// and who owned their ids. Beyond `OWNED_IDS_PER_POD_PLACE` owned ids per place of
    /// `max_pods` (a fleet that takes a fresh id on every start), the ids away longest go
    /// before their retention ends, so the owners stay bounded.
    fn forget_pods(&mut self, now: Timestamp, out: &mut Output) {
        let most = self.config.max_pods.saturating_mul(OWNED_IDS_PER_POD_PLACE);
        let over = self.state.owned_pod_count().saturating_sub(most);
        let retention = u64::try_from(self.config.result_retention.as_millis()).unwrap_or(u64::MAX);
        let (cutoff, limit) = match now.0.checked_sub(retention) {
            _ if over > 0 => (Timestamp(u64::MAX), over.min(FORGET_PER_TICK)),
            Some(cutoff) => (Timestamp(cutoff), FORGET_PER_TICK),
            None => return,
        };
        let pods: Vec<PodId> = self
            .away
            .take_before(cutoff, limit)
            .into_iter()
            .filter(|pod| {
                !self.pods.contains_key(pod)
                    && (self.state.broadcasts().has_applied_any(pod)
                        || self.state.pod_owner(pod).is_some())
            })
            .collect();
        if !pods.is_empty() {
            self.emit(Event::PodsForgotten { pods }, out);
        }
    }
}
