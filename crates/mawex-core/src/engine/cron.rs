//! Cron schedules: parsing, and which ticks are due.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use croner::parser::{CronParser, Year};
use croner::Cron;
use mawex_api::{ApiError, MissedTicks, Timestamp};

/// A tick older than this when the master first sees it counts as missed.
pub(crate) const MISSED_AFTER_MS: u64 = 5_000;
/// Bound on ticks walked in one look (an every-second schedule after a long outage).
const MAX_WALK: usize = 10_000;

/// A parsed cron expression in its time zone.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    cron: Cron,
    tz: chrono_tz::Tz,
}

impl Compiled {
    /// Parses and checks a schedule's expression `cron` read in `time_zone`.
    pub(crate) fn new(cron: &str, time_zone: &str) -> Result<Self, ApiError> {
        let parser = CronParser::builder().year(Year::Disallowed).build();
        let fields = cron.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(ApiError::InvalidArgument(format!(
                "cron {cron:?} has {fields} fields; use 5 (minute hour day month weekday) or 6 (seconds first)"
            )));
        }
        let cron = parser
            .parse(cron)
            .map_err(|e| ApiError::InvalidArgument(format!("cron {cron:?}: {e}")))?;
        let tz = chrono_tz::Tz::from_str(time_zone).map_err(|_| {
            ApiError::InvalidArgument(format!(
                "time zone {time_zone:?} is not an IANA zone name (e.g. \"Europe/Prague\", \"UTC\")"
            ))
        })?;
        Ok(Compiled { cron, tz })
    }

    fn at(&self, t: Timestamp) -> Option<DateTime<chrono_tz::Tz>> {
        let utc = Utc
            .timestamp_millis_opt(i64::try_from(t.0).ok()?)
            .single()?;
        Some(utc.with_timezone(&self.tz))
    }

    /// The first tick strictly after `after`.
    pub(crate) fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let next = self
            .cron
            .find_next_occurrence(&self.at(after)?, false)
            .ok()?;
        u64::try_from(next.timestamp_millis()).ok().map(Timestamp)
    }

    /// Ticks in `(after, now]`: how many (up to a bound) and the latest.
    pub(crate) fn due(&self, after: Timestamp, now: Timestamp) -> (usize, Option<Timestamp>) {
        let mut count = 0;
        let mut latest = None;
        let mut cursor = after;
        while let Some(next) = self.next_after(cursor) {
            if next > now {
                break;
            }
            count += 1;
            latest = Some(next);
            cursor = next;
            if count == MAX_WALK {
                // Jump to the latest tick directly rather than walking a long outage.
                let previous = self
                    .at(now)
                    .and_then(|n| self.cron.find_previous_occurrence(&n, true).ok())
                    .and_then(|p| u64::try_from(p.timestamp_millis()).ok())
                    .map(Timestamp);
                return (count, previous.or(latest));
            }
        }
        (count, latest)
    }
}

/// What to do about the ticks due for one schedule.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// Run the task for this tick.
    Fire(Timestamp),
    /// Handle ticks through this one without running them.
    Skip(Timestamp),
    /// Run the latest tick, having handled the older ones.
    FireSkipping(Timestamp),
}

/// Decides the ticks of `(after, now]` under the missed-ticks policy.
pub(crate) fn decide(
    compiled: &Compiled,
    policy: MissedTicks,
    after: Timestamp,
    now: Timestamp,
) -> Option<Due> {
    let (count, latest) = compiled.due(after, now);
    let latest = latest?;
    let fresh = now.0.saturating_sub(latest.0) <= MISSED_AFTER_MS;
    match (count, fresh, policy) {
        (1, true, _) => Some(Due::Fire(latest)),
        (_, _, MissedTicks::RunOnce) => Some(Due::FireSkipping(latest)),
        (_, true, _) => Some(Due::FireSkipping(latest)),
        _ => Some(Due::Skip(latest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;
    // 2026-01-01T00:00:00Z
    const T: Timestamp = Timestamp(1_767_225_600_000);

    #[test]
    fn expressions_and_zones_are_checked() {
        assert!(Compiled::new("*/1 * * * *", "UTC").is_ok());
        assert!(Compiled::new("0 */5 * * * *", "Europe/Prague").is_ok());
        for (cron, tz) in [
            ("* * *", "UTC"),
            ("61 * * * *", "UTC"),
            ("* * * * *", "Mars/Base"),
        ] {
            assert!(
                matches!(Compiled::new(cron, tz), Err(ApiError::InvalidArgument(_))),
                "{cron} {tz}"
            );
        }
        assert!(
            Compiled::new("* * * * * * 2030", "UTC").is_err(),
            "no year field"
        );
    }

    #[test]
    fn due_ticks_follow_the_policy() {
        let c = Compiled::new("*/1 * * * *", "UTC").unwrap();
        assert_eq!(
            decide(&c, MissedTicks::Skip, T, Timestamp(T.0 + MIN - 1)),
            None
        );
        assert_eq!(
            decide(&c, MissedTicks::Skip, T, Timestamp(T.0 + MIN)),
            Some(Due::Fire(Timestamp(T.0 + MIN)))
        );
        // Ten minutes down: skip them all, or run once for the latest.
        let later = Timestamp(T.0 + 10 * MIN + 30_000);
        assert_eq!(
            decide(&c, MissedTicks::Skip, T, later),
            Some(Due::Skip(Timestamp(T.0 + 10 * MIN)))
        );
        assert_eq!(
            decide(&c, MissedTicks::RunOnce, T, later),
            Some(Due::FireSkipping(Timestamp(T.0 + 10 * MIN)))
        );
    }

    #[test]
    fn zones_shift_the_ticks() {
        // 09:00 in Prague (UTC+1 in January) is 08:00 UTC.
        let c = Compiled::new("0 9 * * *", "Europe/Prague").unwrap();
        assert_eq!(c.next_after(T), Some(Timestamp(T.0 + 8 * 60 * MIN)));
    }
}
