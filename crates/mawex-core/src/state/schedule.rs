//! A cron schedule as the journal records it.

use mawex_api::Timestamp;
use serde::{Deserialize, Serialize};

use super::stored::ScheduleSpec;

/// A schedule as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Schedule {
    pub(crate) spec: ScheduleSpec,
    pub(crate) paused: bool,
    /// Ticks up to here are handled (fired or skipped).
    pub(crate) handled_through: Timestamp,
    pub(crate) last_tick: Option<Timestamp>,
    pub(crate) fired: u64,
}
