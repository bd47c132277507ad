//! What a master is configured with, and what it publishes about itself.

use std::collections::BTreeMap;
use std::time::Duration;

use mawex_api::{GroupName, GroupSettings, RetryPolicy};

use crate::engine::PodStats;
use crate::error::CoreError;
use crate::state::TaskCounts;

/// Settings of a master. Start from `MasterConfig::default()` and change fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MasterConfig {
    /// A pod silent for this long loses its leases, and their tasks run again elsewhere.
    /// After a restart, pods get this long to reconnect and claim what they still run.
    pub lease_timeout: Duration,
    /// Added to `lease_timeout` for the attempts that were running when this master
    /// started (after a restart, or on the new leader of a cluster): their pods are still
    /// looking for the master. A node of a cluster makes it at least the time an election
    /// can take (`mawex_raft::NodeConfig::takeover_bound`), so that a fail-over alone never
    /// costs an attempt.
    pub recovery_grace: Duration,
    /// How often pods are asked to heartbeat; at most a third of `lease_timeout`, so one
    /// lost heartbeat never costs a lease.
    pub heartbeat_interval: Duration,
    /// How long results of finished tasks are kept (and a reused task id is recognised).
    pub result_retention: Duration,
    /// Take a snapshot after this many events (0: only at clean shutdown). Bounds replay
    /// time at start-up.
    pub snapshot_every: u64,
    /// The largest task payload accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Retries of tasks that name no policy of their own (default: 3 attempts in all).
    pub default_retry: RetryPolicy,
    /// Committed batches the feed holds for a slow subscriber before it drops the oldest
    /// (the subscriber is told and re-reads the state).
    pub feed_capacity: usize,
    /// Live result streams (`MasterProxy::results`) served at once; one more is refused with
    /// `ResourceExhausted` until one closes.
    pub max_result_streams: usize,
    /// Requests the master holds at once, from all its clients and pods' hellos together
    /// (calls that wait excluded): one more is refused at once with `ResourceExhausted`.
    /// What bounds the core's inbox; a request counts until it is answered, even if its
    /// caller gave up.
    pub max_requests_in_flight: usize,
    /// Calls waiting at once for a task's result or a broadcast's end (`await_result`,
    /// `wait_broadcast`); one more is refused at once with `ResourceExhausted`.
    pub max_waiting_calls: usize,
    /// Pods connected at once. A hello from one more pod is refused with
    /// `ResourceExhausted` (a pod already connected may always reconnect); a pod that stops
    /// heartbeating makes room after `lease_timeout`.
    pub max_pods: usize,
    /// Group settings applied at start (journaled like a runtime change, and only when they
    /// differ from what the journal holds); groups not named keep their settings.
    pub groups: BTreeMap<GroupName, GroupSettings>,
    /// Live output kept per task (the last lines of its latest attempt), in bytes: at most
    /// 1 MiB. Default 64 KiB.
    pub output_tail_bytes: usize,
    /// Live output kept in all, in bytes; past it, the tasks written longest ago lose theirs.
    /// Default 64 MiB.
    pub output_total_bytes: usize,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            lease_timeout: Duration::from_secs(10),
            recovery_grace: Duration::ZERO,
            heartbeat_interval: Duration::from_secs(2),
            result_retention: Duration::from_secs(24 * 3600),
            snapshot_every: 200_000,
            max_payload_bytes: 4 * 1024 * 1024,
            default_retry: RetryPolicy::default(),
            feed_capacity: 1024,
            max_result_streams: 1024,
            max_requests_in_flight: 16 * 1024,
            max_waiting_calls: 64 * 1024,
            max_pods: 10_000,
            groups: BTreeMap::new(),
            output_tail_bytes: 64 * 1024,
            output_total_bytes: 64 * 1024 * 1024,
        }
    }
}

impl MasterConfig {
    /// The part of the settings the engine decides with.
    pub(crate) fn engine(&self) -> crate::engine::EngineConfig {
        crate::engine::EngineConfig {
            lease_timeout: self.lease_timeout,
            recovery_grace: self.recovery_grace,
            default_retry: self.default_retry,
            result_retention: self.result_retention,
            max_payload_bytes: self.max_payload_bytes,
            max_pods: self.max_pods,
        }
    }

    /// Checks that the values work together.
    ///
    /// # Errors
    /// [`CoreError::Config`] naming the field and the rule.
    pub fn validate(&self) -> Result<(), CoreError> {
        if self.lease_timeout < Duration::from_millis(10) {
            return Err(CoreError::Config(format!(
                "lease_timeout must be at least 10ms, got {:?}",
                self.lease_timeout
            )));
        }
        if self.heartbeat_interval.is_zero()
            || self
                .heartbeat_interval
                .checked_mul(3)
                .is_none_or(|three| three > self.lease_timeout)
        {
            return Err(CoreError::Config(format!(
                "heartbeat_interval ({:?}) must be positive and at most a third of lease_timeout ({:?})",
                self.heartbeat_interval, self.lease_timeout
            )));
        }
        self.default_retry
            .validate()
            .map_err(|e| CoreError::Config(format!("default_retry: {e}")))?;
        for (group, settings) in &self.groups {
            settings
                .validate()
                .map_err(|e| CoreError::Config(format!("groups.{group}: {e}")))?;
        }
        if self.feed_capacity == 0 {
            return Err(CoreError::Config("feed_capacity must be positive".into()));
        }
        if self.max_result_streams == 0 {
            return Err(CoreError::Config(
                "max_result_streams must be positive".into(),
            ));
        }
        for (name, value) in [
            ("max_requests_in_flight", self.max_requests_in_flight),
            ("max_waiting_calls", self.max_waiting_calls),
        ] {
            if value == 0 || value > tokio::sync::Semaphore::MAX_PERMITS {
                return Err(CoreError::Config(format!(
                    "{name} must be between 1 and {}, got {value}",
                    tokio::sync::Semaphore::MAX_PERMITS
                )));
            }
        }
        if self.max_pods == 0 {
            return Err(CoreError::Config("max_pods must be positive".into()));
        }
        if self.output_tail_bytes == 0 || self.output_tail_bytes > 1 << 20 {
            return Err(CoreError::Config(format!(
                "output_tail_bytes must be between 1 and 1 MiB, got {}",
                self.output_tail_bytes
            )));
        }
        if self.output_total_bytes < self.output_tail_bytes {
            return Err(CoreError::Config(format!(
                "output_total_bytes ({}) must be at least output_tail_bytes ({})",
                self.output_total_bytes, self.output_tail_bytes
            )));
        }
        if self.max_payload_bytes == 0 {
            return Err(CoreError::Config(
                "max_payload_bytes must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// What the master is doing, published after every commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MasterStats {
    /// Tasks per state.
    pub counts: TaskCounts,
    /// Connected pods and their leases.
    /// Shared between publications: rebuilt after a batch that changed something (a lease, a
    /// pod), and at least once a second for the usage pods report in heartbeats.
    pub pods: std::sync::Arc<[PodStats]>,
    /// Sequence number of the last journaled event.
    pub last_seq: u64,
    /// Snapshots taken since the master started.
    pub snapshots: u64,
    /// The longest a snapshot held the core thread (nothing else is decided meanwhile):
    /// the copy of the state it hands to the snapshot thread, or the whole write for a
    /// journal without a [`SnapshotWriter`](crate::SnapshotWriter).
    pub longest_snapshot: std::time::Duration,
    /// The longest a snapshot took to encode and store.
    pub longest_snapshot_write: std::time::Duration,
}

impl MasterStats {
    /// Slots of connected pods, not draining, that serve `group`.
    pub fn slots_serving(&self, group: &GroupName) -> u64 {
        self.pods
            .iter()
            .filter(|p| !p.draining && p.groups.contains(group))
            .map(|p| u64::from(p.slots))
            .sum()
    }

    /// True when no task is pending or running.
    pub fn is_idle(&self) -> bool {
        self.counts.pending == 0 && self.counts.running == 0
    }
}
