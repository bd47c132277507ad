//! What a pod is configured with.

use std::collections::BTreeMap;
use std::time::Duration;

use mawex_api::pod::{MAX_POD_PREFETCH, MAX_POD_SLOTS};
use mawex_api::{GroupName, Limits, PodId};

use crate::error::WorkerError;

/// The most leases a pod holds beyond its slots by default, when its pace allows.
pub const DEFAULT_PREFETCH: u32 = 1024;

/// Settings of a pod.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PodConfig {
    /// The pod's identity; keep it stable across restarts so running attempts are re-adopted.
    pub id: PodId,
    /// Groups it hosts a worker for.
    pub groups: Vec<GroupName>,
    /// Attempts run at once across all its groups (1: strictly one after another).
    pub slots: u32,
    /// Leases held queued beyond `slots`, hiding the round trip to the master for short
    /// tasks: with `adaptive_prefetch` (the default), the most the master may lease ahead;
    /// without, exactly this many. 0 keeps dispatch strict: a task is leased only to a free
    /// slot.
    pub prefetch: u32,
    /// The master sizes the queue to the pod's pace: what it starts within 10 ms at the
    /// rate it finished attempts lately, none for a fresh pod or one with long tasks, up
    /// to `prefetch`. Default: on, up to [`DEFAULT_PREFETCH`].
    pub adaptive_prefetch: bool,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// Address other pods can reach this one at.
    pub address: Option<String>,
    /// On shutdown, how long running attempts may finish before they are interrupted.
    pub shutdown_grace: Duration,
    /// Upper bound of the delay between reconnection attempts.
    pub reconnect_max_delay: Duration,
    /// Largest output an attempt may return; a larger one fails the attempt for good rather
    /// than breaking the connection that would carry it.
    pub max_output_bytes: usize,
    /// Limits of attempts whose task sets none (per field: a task's timeout wins over this
    /// timeout, its memory limit over this one).
    pub default_limits: Limits,
    /// Ceilings of every attempt on this pod: a task (or the defaults) may ask for less,
    /// never for more; an attempt that sets no limit gets the ceiling. Default: none.
    pub max_limits: Limits,
    /// Live output bytes kept per attempt while they wait to be sent (its last lines; the
    /// oldest are dropped past it, so a handler never waits). Default 64 KiB.
    pub output_tail_bytes: usize,
}

impl PodConfig {
    /// A pod `id` serving `groups` with one slot.
    pub fn new(id: PodId, groups: Vec<GroupName>) -> Self {
        PodConfig {
            id,
            groups,
            slots: 1,
            prefetch: DEFAULT_PREFETCH,
            adaptive_prefetch: true,
            labels: BTreeMap::new(),
            address: None,
            shutdown_grace: Duration::from_secs(30),
            reconnect_max_delay: Duration::from_secs(5),
            max_output_bytes: 4 * 1024 * 1024,
            default_limits: Limits::default(),
            max_limits: Limits::default(),
            output_tail_bytes: 64 * 1024,
        }
    }

    /// The same pod, with `limits` for attempts whose task sets none.
    pub fn with_default_limits(mut self, limits: Limits) -> Self {
        self.default_limits = limits;
        self
    }

    /// The same pod, with ceilings no attempt's limits may exceed.
    pub fn with_max_limits(mut self, limits: Limits) -> Self {
        self.max_limits = limits;
        self
    }

    /// The same pod with `slots` slots.
    pub fn with_slots(mut self, slots: u32) -> Self {
        self.slots = slots;
        self
    }

    /// The same pod with exactly `prefetch` queued leases beyond its slots, whatever its
    /// pace (0: strict dispatch).
    pub fn with_prefetch(mut self, prefetch: u32) -> Self {
        self.prefetch = prefetch;
        self.adaptive_prefetch = false;
        self
    }

    /// The same pod with a queue sized to its pace by the master, of at most `max` leases
    /// beyond its slots (the default, with [`DEFAULT_PREFETCH`]).
    pub fn with_adaptive_prefetch(mut self, max: u32) -> Self {
        self.prefetch = max;
        self.adaptive_prefetch = true;
        self
    }

    /// The same pod with another shutdown grace period.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`WorkerError::Config`] naming the field.
    pub fn validate(&self) -> Result<(), WorkerError> {
        if self.groups.is_empty() {
            return Err(WorkerError::Config(format!(
                "pod {}: serve at least one group",
                self.id
            )));
        }
        if !(1..=MAX_POD_SLOTS).contains(&self.slots) {
            return Err(WorkerError::Config(format!(
                "pod {}: slots must be between 1 and {MAX_POD_SLOTS}",
                self.id
            )));
        }
        if self.prefetch > MAX_POD_PREFETCH {
            return Err(WorkerError::Config(format!(
                "pod {}: prefetch must be at most {MAX_POD_PREFETCH}",
                self.id
            )));
        }
        Ok(())
    }
}
