//! The last 24 hours, a minute at a time: tasks accepted, started and finished in each
//! minute, and the queue depth at its end. Kept by the read model's thread from the
//! transitions it applies (off the core thread); rebuilt from the retained tasks whenever the
//! model copies the state (at its start, so after a restart or a fail-over too).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use mawex_api::{GroupName, GroupTimes, MinuteCounts, TaskState, Timestamp, HISTORY_MINUTES};

use super::metrics::{Span, Transition};
use crate::state::stored::Outcome;
use crate::state::MasterState;

const MINUTE_MS: u64 = 60_000;

/// The first minute of the window whose last is `last`.
fn window_start(last: Timestamp) -> Timestamp {
    Timestamp(
        last.0
            .saturating_sub(MINUTE_MS.saturating_mul(HISTORY_MINUTES as u64 - 1)),
    )
}

/// The start of the minute `t` is in.
fn minute_of(t: Timestamp) -> Timestamp {
    Timestamp(t.0 - t.0 % MINUTE_MS)
}

/// How many of a group's latest waits and runs its percentiles are taken from.
const TIMES_KEPT: usize = 1_000;
/// How many groups keep times: past them, a new group takes the place of the one quiet
/// longest (clients naming ever new groups cannot grow the read model without bound).
const TIMED_GROUPS: usize = 1_000;

/// Consecutive minutes, oldest first, the last the latest one counted; at most
/// [`HISTORY_MINUTES`]. And each group's latest waits and runs.
#[derive(Debug, Default)]
pub(crate) struct History {
    minutes: VecDeque<MinuteCounts>,
    times: HashMap<GroupName, Times>,
    /// Changes to `times` so far.
    changes: u64,
    /// Each timed group by its last change: the quietest first.
    by_change: BTreeMap<u64, GroupName>,
}

/// A group's latest waits and runs, in milliseconds, oldest first.
#[derive(Debug, Default)]
struct Times {
    waits: VecDeque<u64>,
    runs: VecDeque<u64>,
    /// When it last changed (a count of changes to the history), to make room for a new
    /// group by forgetting the one quiet longest.
    changed: u64,
    /// The percentiles, until the next change.
    cached: Option<GroupTimes>,
}

/// Keeps `value`, and the latest [`TIMES_KEPT`] before it.
fn keep(kept: &mut VecDeque<u64>, value: Duration) {
    if kept.len() == TIMES_KEPT {
        kept.pop_front();
    }
    kept.push_back(u64::try_from(value.as_millis()).unwrap_or(u64::MAX));
}

/// The median and 95th percentile of `kept` (nearest rank).
fn percentiles(kept: &VecDeque<u64>) -> (Option<Duration>, Option<Duration>) {
    let mut sorted: Vec<u64> = kept.iter().copied().collect();
    sorted.sort_unstable();
    let at = |p: usize| -> Option<Duration> {
        let rank = (p * sorted.len()).div_ceil(100).max(1);
        sorted.get(rank - 1).copied().map(Duration::from_millis)
    };
    (at(50), at(95))
}

impl History {
    /// The history the retained tasks of `state` tell, up to `now`.
    pub(crate) fn rebuild(state: &MasterState, now: Timestamp) -> History {
        let mut history = History::default();
        let current = minute_of(now);
        // Every minute of the window, so that each retained task finds its own.
        let first = window_start(current);
        let mut minute = first;
        while minute <= current {
            history.minutes.push_back(MinuteCounts::new(minute));
            minute = Timestamp(minute.0 + MINUTE_MS);
        }
        // Queue depth from each task's wait: +1 in the minute it was accepted, -1 in the
        // minute it left the queue (its last start, or its end if it never started).
        let mut depth_changes = vec![0i64; history.minutes.len() + 1];
        // A time after `now` (a clock that was stepped back) counts in the current minute.
        let last = history.minutes.len() - 1;
        let index = |t: Timestamp| -> Option<usize> {
            let t = minute_of(t);
            if t < first {
                return None;
            }
            let i = usize::try_from((t.0 - first.0) / MINUTE_MS).unwrap_or(usize::MAX);
            Some(i.min(last))
        };
        for (_, task) in state.tasks_in_order() {
            let accepted = task.submitted_at;
            // Times as the live path takes them, where the task still tells them: the wait
            // of a first attempt that started (a later attempt's wait began at a time the
            // state does not keep), and the run of an attempt that ended. A pending task's
            // start is an earlier attempt's: not counted.
            let ran = task.state == TaskState::Running || task.state.is_terminal();
            if let Some(started) = task.started_at().filter(|_| ran) {
                // A task that ran after others counts no wait here: when it left `blocked`
                // is not in the state (live, its wait counts from there when that was seen).
                let blocked_first = state
                    .workflows()
                    .links(&task.spec.id)
                    .is_some_and(|l| !l.after.is_empty());
                if task.attempt.0 == 1 && !blocked_first {
                    let ready = task.not_before.map_or(accepted, |t| t.max(accepted));
                    history.timed(&task.spec.group, Span::Wait(ready, started));
                }
                // A cancel is no run's end (the live path takes none from it).
                let ended = task
                    .result()
                    .filter(|r| !matches!(r.outcome, Outcome::Cancelled));
                if let Some(result) = ended {
                    history.timed(&task.spec.group, Span::Run(started, result.finished_at));
                }
            }
            if let Some(slot) = history.at(accepted) {
                slot.accepted += 1;
            }
            let started = task.started_at();
            if let Some(slot) = started.and_then(|t| history.at(t)) {
                slot.started += 1;
            }
            let result = task.result();
            if let Some(result) = result {
                if let Some(slot) = history.at(result.finished_at) {
                    match result.outcome {
                        Outcome::Succeeded(_) => slot.succeeded += 1,
                        Outcome::Failed(_) => slot.failed += 1,
                        Outcome::Cancelled => slot.cancelled += 1,
                    }
                }
            }
            let left = match task.state {
                TaskState::Pending => None,
                // Never queued yet: no part of the depth.
                TaskState::Blocked => continue,
                _ => started.or(result.map(|r| r.finished_at)),
            };
            let from = index(accepted).unwrap_or(0);
            let until = match left {
                Some(left) => match index(left) {
                    Some(i) => i,
                    None => continue, // Left the queue before the window.
                },
                None => depth_changes.len() - 1,
            };
            if from < until {
                depth_changes[from] += 1;
                depth_changes[until] -= 1;
            }
        }
        let mut depth: i64 = 0;
        for (slot, change) in history.minutes.iter_mut().zip(depth_changes) {
            depth += change;
            slot.pending = u64::try_from(depth).unwrap_or(0);
        }
        if let Some(last) = history.minutes.back_mut() {
            last.pending = state.counts().pending;
        }
        history
    }

    /// The counts of the minute `t` is in, if it is within the window (older ones are gone;
    /// a later one counts in the last minute).
    fn at(&mut self, t: Timestamp) -> Option<&mut MinuteCounts> {
        let first = self.minutes.front()?.minute;
        let t = minute_of(t);
        if t < first {
            return None;
        }
        let i = usize::try_from((t.0 - first.0) / MINUTE_MS).unwrap_or(usize::MAX);
        let last = self.minutes.len().checked_sub(1)?;
        self.minutes.get_mut(i.min(last))
    }

    /// The counts of `minute`, the window moved on to it if it is later than the last one:
    /// the minutes between carry the last queue depth (nothing changed in them).
    fn slot(&mut self, minute: Timestamp) -> Option<&mut MinuteCounts> {
        match self.minutes.back() {
            None => self.minutes.push_back(MinuteCounts::new(minute)),
            Some(last) if last.minute < minute => {
                let pending = last.pending;
                let gap = (minute.0 - last.minute.0) / MINUTE_MS;
                if gap > HISTORY_MINUTES as u64 {
                    self.minutes.clear();
                }
                let mut next = match self.minutes.back() {
                    Some(last) => Timestamp(last.minute.0 + MINUTE_MS),
                    None => window_start(minute),
                };
                while next <= minute {
                    let mut counts = MinuteCounts::new(next);
                    counts.pending = pending;
                    self.minutes.push_back(counts);
                    next = Timestamp(next.0 + MINUTE_MS);
                }
                while self.minutes.len() > HISTORY_MINUTES {
                    self.minutes.pop_front();
                }
            }
            Some(_) => {}
        }
        self.at(minute)
    }

    /// A transition seen at `now`.
    pub(crate) fn count(&mut self, now: Timestamp, to: Transition) {
        let Some(slot) = self.slot(minute_of(now)) else {
            return;
        };
        match to {
            Transition::accepted => slot.accepted += 1,
            Transition::started => slot.started += 1,
            Transition::succeeded => slot.succeeded += 1,
            Transition::failed => slot.failed += 1,
            Transition::cancelled => slot.cancelled += 1,
            Transition::retry_scheduled
            | Transition::requeued
            | Transition::retried
            | Transition::unblocked
            | Transition::revived => {}
        }
    }

    /// A wait or a run of a task of `group` ended.
    pub(crate) fn timed(&mut self, group: &GroupName, span: Span) {
        self.changes += 1;
        if !self.times.contains_key(group) {
            if self.times.len() >= TIMED_GROUPS {
                // Room for it: the group quiet longest is forgotten.
                if let Some((_, quietest)) = self.by_change.pop_first() {
                    self.times.remove(&quietest);
                }
            }
            self.times.insert(group.clone(), Times::default());
        }
        let Some(times) = self.times.get_mut(group) else {
            return;
        };
        self.by_change.remove(&times.changed);
        self.by_change.insert(self.changes, group.clone());
        times.changed = self.changes;
        times.cached = None;
        match span {
            Span::Wait(from, until) => keep(&mut times.waits, until.saturating_since(from)),
            Span::Run(from, until) => keep(&mut times.runs, until.saturating_since(from)),
        }
    }

    /// The percentiles of `group`'s latest waits and runs (worked out once a change).
    pub(crate) fn group_times(&mut self, group: &GroupName) -> GroupTimes {
        let Some(times) = self.times.get_mut(group) else {
            return GroupTimes::default();
        };
        if let Some(cached) = times.cached {
            return cached;
        }
        let mut out = GroupTimes::default();
        (out.wait_p50, out.wait_p95) = percentiles(&times.waits);
        (out.run_p50, out.run_p95) = percentiles(&times.runs);
        times.cached = Some(out);
        out
    }

    /// The queue depth at `now`.
    pub(crate) fn depth(&mut self, now: Timestamp, pending: u64) {
        if let Some(slot) = self.slot(minute_of(now)) {
            slot.pending = pending;
        }
    }

    /// The last `minutes` minutes up to `now`, oldest first (quiet minutes included).
    pub(crate) fn last(&mut self, now: Timestamp, minutes: usize) -> Vec<MinuteCounts> {
        // Bring the window up to now, so that quiet minutes show as such.
        self.slot(minute_of(now));
        let skip = self.minutes.len().saturating_sub(minutes);
        self.minutes.iter().skip(skip).copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use mawex_api::{GroupName, TaskSpec};

    use super::*;
    use crate::state::Event;

    const T0: u64 = 1_800_000_000_000; // A minute's start.

    #[test]
    fn minutes_count_transitions_carry_the_depth_over_quiet_minutes_and_roll_off() {
        let mut history = History::default();
        history.count(Timestamp(T0 + 5), Transition::accepted);
        history.count(Timestamp(T0 + 59_999), Transition::accepted);
        history.depth(Timestamp(T0 + 59_999), 2);
        history.count(Timestamp(T0 + 3 * MINUTE_MS), Transition::succeeded);
        let last = history.last(Timestamp(T0 + 3 * MINUTE_MS + 1), 10);
        assert_eq!(last.len(), 4);
        assert_eq!(
            (last[0].minute.0, last[0].accepted, last[0].pending),
            (T0, 2, 2)
        );
        assert_eq!(last[2].pending, 2, "a quiet minute keeps the depth");
        assert_eq!(
            (last[3].succeeded, last[3].minute.0),
            (1, T0 + 3 * MINUTE_MS)
        );
        // A day and more later: only the last day is kept.
        let later = Timestamp(T0 + (HISTORY_MINUTES as u64 + 5) * MINUTE_MS);
        let day = history.last(later, HISTORY_MINUTES);
        assert_eq!(day.len(), HISTORY_MINUTES);
        assert_eq!(day.last().map(|m| m.minute), Some(minute_of(later)));
        assert!(day.iter().all(|m| m.accepted == 0 && m.succeeded == 0));
        // Older than the window: not counted anywhere.
        history.count(Timestamp(T0), Transition::accepted);
        assert!(history
            .last(later, HISTORY_MINUTES)
            .iter()
            .all(|m| m.accepted == 0));
    }

    #[test]
    fn a_groups_percentiles_come_from_its_latest_thousand_times() {
        let mut history = History::default();
        let (g, quiet) = (
            GroupName::new("g").expect("valid"),
            GroupName::new("quiet").expect("valid"),
        );
        // 2,000 runs of 1..=2000 ms: only the last 1,000 (1001..=2000) count.
        for ms in 1..=2000 {
            history.timed(&g, Span::Run(Timestamp(T0), Timestamp(T0 + ms)));
        }
        history.timed(&g, Span::Wait(Timestamp(T0), Timestamp(T0 + 40)));
        let times = history.group_times(&g);
        assert_eq!(times.run_p50, Some(Duration::from_millis(1500)));
        assert_eq!(times.run_p95, Some(Duration::from_millis(1950)));
        assert_eq!(times.wait_p50, Some(Duration::from_millis(40)));
        assert_eq!(history.group_times(&quiet), GroupTimes::default());
        // Nearest rank: of two, the median is the lower and the 95th the higher.
        let pair = GroupName::new("pair").expect("valid");
        history.timed(&pair, Span::Run(Timestamp(T0), Timestamp(T0 + 10)));
        history.timed(&pair, Span::Run(Timestamp(T0), Timestamp(T0 + 20)));
        let pair_times = history.group_times(&pair);
        assert_eq!(pair_times.run_p50, Some(Duration::from_millis(10)));
        assert_eq!(pair_times.run_p95, Some(Duration::from_millis(20)));
        // Past the bound on groups, a new one takes the place of the one quiet longest.
        for n in 0..TIMED_GROUPS {
            let other = GroupName::new(format!("other-{n}")).expect("valid");
            history.timed(&other, Span::Wait(Timestamp(T0), Timestamp(T0 + 1)));
        }
        assert_eq!(history.times.len(), TIMED_GROUPS);
        assert_eq!(
            history.group_times(&g),
            GroupTimes::default(),
            "g went first"
        );
        history.timed(&quiet, Span::Wait(Timestamp(T0), Timestamp(T0 + 7)));
        assert_eq!(
            history.group_times(&quiet).wait_p50,
            Some(Duration::from_millis(7))
        );
        assert_eq!(history.times.len(), TIMED_GROUPS);
    }

    #[test]
    fn a_rebuild_counts_the_retained_tasks_in_their_minutes() {
        let group = GroupName::new("g").expect("valid");
        let mut state = MasterState::new();
        for minute in [0, 0, 2] {
            state.apply(&Event::TaskAccepted {
                spec: TaskSpec::new(group.clone(), "h", "p").into(),
                at: Timestamp(T0 + minute * MINUTE_MS + 7),
            });
        }
        let now = Timestamp(T0 + 4 * MINUTE_MS);
        let mut history = History::rebuild(&state, now);
        let last = history.last(now, 5);
        let accepted: Vec<u64> = last.iter().map(|m| m.accepted).collect();
        let pending: Vec<u64> = last.iter().map(|m| m.pending).collect();
        assert_eq!(accepted, [2, 0, 1, 0, 0]);
        assert_eq!(pending, [2, 2, 3, 3, 3], "none started: all still wait");
        assert_eq!(history.last(now, HISTORY_MINUTES).len(), HISTORY_MINUTES);
        // Tasks stamped after the clock's now (a clock stepped back): in the last minute,
        // and no panic.
        let behind = Timestamp(T0 + MINUTE_MS);
        let mut history = History::rebuild(&state, behind);
        let last = history.last(behind, 2);
        assert_eq!((last[0].accepted, last[1].accepted), (2, 1));
    }
}
