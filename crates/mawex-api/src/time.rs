use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, as recorded in the journal.
///
/// Time enters the master only as data of this type, which keeps its state machine
/// deterministic: replaying the same events always yields the same state.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current wall-clock time (for `run_at` and the like; the master itself reads its
    /// own clock).
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    /// `delay` from now: `spec.with_run_at(Timestamp::after(Duration::from_secs(3)))`.
    pub fn after(delay: Duration) -> Timestamp {
        Timestamp::now().saturating_add(delay)
    }

    /// The timestamp as milliseconds since the Unix epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// This timestamp moved `d` later, saturating at the end of time.
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl From<SystemTime> for Timestamp {
    /// Whole milliseconds since the Unix epoch; a time before the epoch is the epoch.
    fn from(t: SystemTime) -> Timestamp {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Timestamp(ms)
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> SystemTime {
        // Saturates far beyond any real date instead of overflowing.
        UNIX_EPOCH
            .checked_add(Duration::from_millis(t.0))
            .unwrap_or(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX)) * 64)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_to_and_from_system_time() {
        let t = Timestamp(1_700_000_000_123);
        assert_eq!(Timestamp::from(SystemTime::from(t)), t);
        let before_epoch = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(Timestamp::from(before_epoch), Timestamp(0));
        // The largest timestamp converts without a panic.
        let _ = SystemTime::from(Timestamp(u64::MAX));
    }

    #[test]
    fn now_and_after_follow_the_wall_clock() {
        let wall = Timestamp::from(SystemTime::now());
        let now = Timestamp::now();
        assert!(now >= wall && now.saturating_since(wall) < Duration::from_secs(5));
        let later = Timestamp::after(Duration::from_secs(3));
        assert!(later.saturating_since(now) >= Duration::from_secs(3));
        assert_eq!(
            Timestamp(u64::MAX - 1).saturating_add(Duration::from_secs(1)),
            Timestamp(u64::MAX)
        );
    }
}
