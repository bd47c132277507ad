//! Adaptive prefetch: how many leases beyond its slots a pod holds, sized to what it starts
//! within [`QUEUE_FOR_MS`] at the rate it finished attempts lately.
//!
//! With strict dispatch a pod gets a new task only once the batch that freed its slot is
//! durable, so a fast pod waits a commit round trip per task (about 4,000 tasks/s for two
//! slots). A queue of leases hides that wait, but a fixed one hoards: a pod whose tasks take
//! 100 ms would sit on work other pods could start. So the queue follows the pod's pace:
//! none for a fresh pod or one with long tasks, up to the pod's own `prefetch` for one that
//! finishes many attempts per millisecond. The rate is measured over the pod's busy time
//! (while it holds a lease), so a pod that was idle is not taken for a slow one.

use mawex_api::Timestamp;

/// A pod holds the leases it starts within this long beyond its slots, at most.
pub(crate) const QUEUE_FOR_MS: u64 = 10;

/// The rate is measured again after this much busy time: short, so that a fresh pod grows
/// its queue within a few tens of milliseconds (about 20x a window while the round trip is
/// what limits it).
const WINDOW_BUSY_MS: u64 = 20;

/// After this long without a lease, the pace is measured again from strict dispatch: what
/// the pod ran an hour ago says nothing about the tasks it is leased now.
const IDLE_RESET_MS: u64 = 1_000;

/// The pace of one pod with adaptive prefetch.
#[derive(Debug, Clone)]
pub(super) struct Pace {
    /// The fewest leases beyond its slots the pod holds (its hello's fixed `prefetch`).
    min_extra: u32,
    /// The most (its hello's `adaptive_prefetch`).
    max_extra: u32,
    /// Leases it may hold beyond its slots now.
    extra: u32,
    /// Attempts finished in the current window.
    finished: u64,
    /// Busy time of the window before `busy_since`.
    busy_ms: u64,
    /// Since when the pod holds leases, if it does (until its next result: a lease that
    /// goes away without one, requeued or cancelled, keeps counting, which errs towards a
    /// shorter queue).
    busy_since: Option<Timestamp>,
    /// Since when it holds none, if it does not.
    idle_since: Option<Timestamp>,
}

impl Pace {
    /// A fresh pod: strict dispatch (or its fixed `min_extra`) until it has shown its pace.
    pub(super) fn new(min_extra: u32, max_extra: u32) -> Self {
        let max_extra = max_extra.max(min_extra);
        Pace {
            min_extra,
            max_extra,
            extra: min_extra,
            finished: 0,
            busy_ms: 0,
            busy_since: None,
            idle_since: None,
        }
    }

    /// Leases the pod may hold beyond its slots now.
    pub(super) fn extra(&self) -> u32 {
        self.extra
    }

    /// The pod holds a lease from `at` on: leased one, or re-adopted what it held.
    pub(super) fn leased(&mut self, at: Timestamp) {
        if let Some(idle) = self.idle_since.take() {
            if at.0.saturating_sub(idle.0) >= IDLE_RESET_MS {
                self.extra = self.min_extra;
                self.finished = 0;
                self.busy_ms = 0;
            }
        }
        self.busy_since.get_or_insert(at);
    }

    /// The pod finished an attempt at `now`, and holds `held` leases after it.
    pub(super) fn finished(&mut self, now: Timestamp, held: usize) {
        self.finished = self.finished.saturating_add(1);
        let running = self
            .busy_since
            .map_or(0, |since| now.0.saturating_sub(since.0));
        let busy = self.busy_ms.saturating_add(running);
        if busy >= WINDOW_BUSY_MS {
            let measured = self.finished.saturating_mul(QUEUE_FOR_MS) / busy;
            // Up at once, down by at most half per window: one window stalled by the master
            // (a snapshot, a slow flush) does not drain the queue of a fast pod, and a pod
            // whose tasks turned slow still loses its queue within a few windows.
            let measured = u32::try_from(measured).unwrap_or(u32::MAX);
            self.extra = measured
                .max(self.extra / 2)
                .clamp(self.min_extra, self.max_extra);
            self.finished = 0;
            self.busy_ms = 0;
            self.busy_since = (held > 0).then_some(now);
        } else if held == 0 {
            self.busy_ms = busy;
            self.busy_since = None;
        }
        if held == 0 {
            self.idle_since = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a pod that finishes `per_ms` attempts each millisecond for `ms`, always busy.
    fn run(pace: &mut Pace, start: u64, ms: u64, per_ms: u64) {
        pace.leased(Timestamp(start));
        for t in start..start + ms {
            for _ in 0..per_ms {
                pace.finished(Timestamp(t + 1), 1);
            }
        }
    }

    #[test]
    fn a_fast_pod_gets_what_it_starts_in_the_queue_time() {
        let mut pace = Pace::new(0, 1024);
        assert_eq!(pace.extra(), 0, "strict until measured");
        run(&mut pace, 0, 100, 20);
        assert_eq!(pace.extra(), 200, "20 per ms for 10 ms");
        let mut capped = Pace::new(0, 64);
        run(&mut capped, 0, 100, 20);
        assert_eq!(capped.extra(), 64, "never beyond the pod's prefetch");
    }

    #[test]
    fn a_slow_pod_stays_strict() {
        let mut pace = Pace::new(0, 1024);
        // Two slots, 100 ms per attempt.
        pace.leased(Timestamp(0));
        for round in 1..=10 {
            pace.finished(Timestamp(round * 100), 1);
            pace.finished(Timestamp(round * 100), 2);
        }
        assert_eq!(pace.extra(), 0);
    }

    #[test]
    fn idle_time_does_not_count_and_a_long_idle_starts_over() {
        let mut pace = Pace::new(0, 1024);
        run(&mut pace, 0, 100, 20);
        // Idle for half a second, then 10 attempts in 1 ms of busy time: no window
        // closes, and the pace is not taken from the idle time.
        pace.finished(Timestamp(100), 0);
        pace.leased(Timestamp(600));
        for _ in 0..10 {
            pace.finished(Timestamp(601), 1);
        }
        assert_eq!(pace.extra(), 200);
        // Idle for a minute: what the pod ran then says nothing of what it runs now.
        pace.finished(Timestamp(601), 0);
        pace.leased(Timestamp(60_601));
        assert_eq!(pace.extra(), 0);
    }

    #[test]
    fn one_stalled_window_halves_the_queue_and_slow_tasks_empty_it() {
        let mut pace = Pace::new(0, 1024);
        run(&mut pace, 0, 100, 20);
        assert_eq!(pace.extra(), 200);
        // 20 ms with one result (the master stalled, or the tasks turned slow).
        pace.finished(Timestamp(120), 1);
        assert_eq!(pace.extra(), 100);
        for (i, expected) in [50, 25, 12, 6, 3, 1, 0].into_iter().enumerate() {
            pace.finished(Timestamp(140 + 20 * i as u64), 1);
            assert_eq!(pace.extra(), expected);
        }
    }

    #[test]
    fn a_fixed_prefetch_is_the_floor() {
        let mut pace = Pace::new(8, 4);
        assert_eq!(pace.extra(), 8);
        // Two slots, 100 ms per attempt: the pace alone would be 0.
        pace.leased(Timestamp(0));
        for round in 1..=10 {
            pace.finished(Timestamp(round * 100), 1);
        }
        assert_eq!(pace.extra(), 8);
    }
}
