//! Fairness rounds: the sort key that lets the keys of a group take turns.

use std::collections::{BTreeMap, HashMap};

/// Fairness rounds of a group's live (not finished) tasks, as multisets: a new task of key
/// `k` gets round `max(last round of k + 1, first live round of the group)`, so keys take
/// turns round by round and a key that arrives late starts at the current round, not behind
/// everyone else's backlog. Derived from durable state only (each task keeps its round), so
/// replay assigns the same rounds.
///
/// Both multisets are [`Runs`]: a key's rounds are consecutive (each of its tasks gets the
/// round after its last one), so a backlog of a million tasks of one key is one run, where a
/// map of round to count held an entry per task, twice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Rounds {
    all: Runs,
    by_key: HashMap<String, Runs>,
}

/// Rounds start here, leaving room below for tasks preferred to the front.
pub(crate) const ROUND_BASE: u64 = 1 << 32;

impl Rounds {
    /// True when no live task of the group holds a round.
    pub(super) fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

impl Rounds {
    /// A round ahead of every live task of the group.
    pub(super) fn front(&self) -> u64 {
        self.all.first().unwrap_or(ROUND_BASE).saturating_sub(1)
    }

    /// A round behind every live task of the group.
    pub(super) fn back(&self) -> u64 {
        self.all.last().map_or(ROUND_BASE, |r| r.saturating_add(1))
    }
}

impl Rounds {
    pub(super) fn next_for(&self, key: &str) -> u64 {
        let floor = self.all.first().unwrap_or(ROUND_BASE);
        let last = self.by_key.get(key).and_then(Runs::last);
        last.map_or(floor, |l| l.saturating_add(1).max(floor))
    }

    /// The round for a task of `key` that takes the place of a task of round `place` (a
    /// dependency that finished): that round while `key` is the group's only live key, so
    /// it goes ahead of what was queued after that task; with other keys live, the back of
    /// its key's line ([`Rounds::next_for`]), so that it takes no turn from them. Never
    /// below the group's first live round (a place long gone, or a task that never held a
    /// round, would put a key that comes later that far ahead of the others), nor behind
    /// where a new task of `key` would go.
    pub(super) fn taking_place(&self, key: &str, place: Option<u64>) -> u64 {
        let back = self.next_for(key);
        match place {
            Some(round) if self.by_key.keys().all(|live| live == key) => {
                let first = self.all.first().unwrap_or(ROUND_BASE);
                round.max(first).min(back)
            }
            _ => back,
        }
    }

    pub(super) fn add(&mut self, key: &str, round: u64) {
        self.all.add(round);
        // Look up before inserting: most adds are for a key already live, and need no String.
        match self.by_key.get_mut(key) {
            Some(set) => set.add(round),
            None => {
                let mut set = Runs::default();
                set.add(round);
                self.by_key.insert(key.to_owned(), set);
            }
        }
    }

    /// Adds one task of `key` in each round of `first..=last` (a load adds a key's
    /// consecutive rounds at once).
    pub(super) fn add_range(&mut self, key: &str, first: u64, last: u64) {
        self.all.add_range(first, last);
        match self.by_key.get_mut(key) {
            Some(set) => set.add_range(first, last),
            None => {
                let mut set = Runs::default();
                set.add_range(first, last);
                self.by_key.insert(key.to_owned(), set);
            }
        }
    }

    pub(super) fn remove(&mut self, key: &str, round: u64) {
        self.all.remove(round);
        if let Some(set) = self.by_key.get_mut(key) {
            set.remove(round);
            if set.is_empty() {
                self.by_key.remove(key);
            }
        }
    }
}

/// A multiset of rounds as maximal runs: consecutive rounds that each occur the same number
/// of times are one entry (first round, last round, count). Canonical (two adjacent runs
/// never share a count), so equal multisets are equal values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Runs(BTreeMap<u64, Run>);

/// Rounds `first..=last` (the key in [`Runs`] is `first`), each `count` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    last: u64,
    count: u32,
}

impl Runs {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn first(&self) -> Option<u64> {
        self.0.keys().next().copied()
    }

    fn last(&self) -> Option<u64> {
        self.0.values().next_back().map(|run| run.last)
    }

    /// The run holding `round`: its first round and the run.
    fn holding(&self, round: u64) -> Option<(u64, Run)> {
        self.0
            .range(..=round)
            .next_back()
            .filter(|(_, run)| run.last >= round)
            .map(|(first, run)| (*first, *run))
    }

    fn count(&self, round: u64) -> u32 {
        self.holding(round).map_or(0, |(_, run)| run.count)
    }

    fn add(&mut self, round: u64) {
        let count = self.count(round).saturating_add(1);
        self.set(round, count);
    }

    /// Takes one `round` out; a round not held is left alone.
    fn remove(&mut self, round: u64) {
        let count = self.count(round);
        if count > 0 {
            self.set(round, count - 1);
        }
    }

    /// Makes `round` occur `count` times, splitting and joining runs to stay canonical.
    fn set(&mut self, round: u64, count: u32) {
        if let Some((first, run)) = self.holding(round) {
            self.0.remove(&first);
            if first < round {
                self.0.insert(
                    first,
                    Run {
                        last: round - 1,
                        count: run.count,
                    },
                );
            }
            if run.last > round {
                self.0.insert(
                    round + 1,
                    Run {
                        last: run.last,
                        count: run.count,
                    },
                );
            }
        }
        if count > 0 {
            self.insert_joined(round, round, count);
        }
    }

    /// Adds each round of `first..=last` once.
    fn add_range(&mut self, first: u64, last: u64) {
        let overlaps = self
            .0
            .range(..=last)
            .next_back()
            .is_some_and(|(_, run)| run.last >= first);
        if overlaps {
            (first..=last).for_each(|round| self.add(round));
        } else {
            self.insert_joined(first, last, 1);
        }
    }

    /// Inserts rounds `first..=last`, `count` times each, where no run is, joined to the
    /// runs either side that have the same count.
    fn insert_joined(&mut self, first: u64, last: u64, count: u32) {
        let left = first
            .checked_sub(1)
            .and_then(|before| self.holding(before))
            .filter(|(_, run)| run.count == count)
            .map(|(start, _)| start);
        let right = last
            .checked_add(1)
            .and_then(|after| self.0.get(&after).map(|run| (after, *run)))
            .filter(|(_, run)| run.count == count);
        let last = match right {
            Some((after, run)) => {
                self.0.remove(&after);
                run.last
            }
            None => last,
        };
        match left.and_then(|start| self.0.get_mut(&start)) {
            Some(run) => run.last = last,
            None => {
                self.0.insert(first, Run { last, count });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same multiset, as a map of round to count.
    fn expand(runs: &Runs) -> BTreeMap<u64, u32> {
        let mut map = BTreeMap::new();
        for (first, run) in &runs.0 {
            for round in *first..=run.last {
                map.insert(round, run.count);
            }
        }
        map
    }

    fn assert_canonical(runs: &Runs) {
        let mut previous: Option<(u64, u32)> = None;
        for (first, run) in &runs.0 {
            assert!(run.count > 0 && run.last >= *first, "{runs:?}");
            if let Some((last, count)) = previous {
                assert!(last < *first, "overlapping runs: {runs:?}");
                assert!(
                    last + 1 < *first || count != run.count,
                    "adjacent runs of one count: {runs:?}"
                );
            }
            previous = Some((run.last, run.count));
        }
    }

    /// A small xorshift: the same sequence every run.
    fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    #[test]
    fn a_place_is_taken_within_the_live_rounds() {
        let mut rounds = Rounds::default();
        for round in ROUND_BASE + 10..ROUND_BASE + 20 {
            rounds.add("", round);
        }
        // A place among the live rounds is kept; one long gone (or none ever held) is the
        // first live round; one past the back is the back.
        assert_eq!(
            rounds.taking_place("", Some(ROUND_BASE + 12)),
            ROUND_BASE + 12
        );
        assert_eq!(rounds.taking_place("", Some(0)), ROUND_BASE + 10);
        assert_eq!(
            rounds.taking_place("", Some(ROUND_BASE + 50)),
            ROUND_BASE + 20
        );
        assert_eq!(rounds.taking_place("", None), ROUND_BASE + 20);
        // Another key live: the back of this key's line, wherever the place was.
        rounds.add("other", ROUND_BASE + 10);
        assert_eq!(
            rounds.taking_place("", Some(ROUND_BASE + 12)),
            ROUND_BASE + 20
        );
    }

    #[test]
    fn runs_hold_the_multiset_a_map_of_counts_would() {
        // Many collisions in a small range.
        let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
        let mut runs = Runs::default();
        let mut model: BTreeMap<u64, u32> = BTreeMap::new();
        for step in 0..20_000 {
            let r = next();
            let round = r % 40;
            if r.is_multiple_of(3) {
                runs.remove(round);
                if let Some(n) = model.get_mut(&round) {
                    *n -= 1;
                    if *n == 0 {
                        model.remove(&round);
                    }
                }
            } else {
                runs.add(round);
                *model.entry(round).or_default() += 1;
            }
            assert_canonical(&runs);
            assert_eq!(expand(&runs), model, "after step {step}");
            assert_eq!(runs.first(), model.keys().next().copied());
            assert_eq!(runs.last(), model.keys().next_back().copied());
        }
    }

    #[test]
    fn a_range_adds_what_its_rounds_one_by_one_would() {
        let mut next = xorshift(0x2545_F491_4F6C_DD1D);
        let (mut ranged, mut single) = (Runs::default(), Runs::default());
        for _ in 0..2_000 {
            let first = next() % 200;
            let last = first + next() % 8;
            ranged.add_range(first, last);
            (first..=last).for_each(|round| single.add(round));
            assert_canonical(&ranged);
            assert_eq!(ranged, single);
        }
    }

    #[test]
    fn the_ends_of_the_range_neither_wrap_nor_panic() {
        let mut runs = Runs::default();
        for round in [0, 1, u64::MAX, u64::MAX - 1, 0] {
            runs.add(round);
        }
        assert_canonical(&runs);
        assert_eq!(runs.first(), Some(0));
        assert_eq!(runs.last(), Some(u64::MAX));
        assert_eq!(runs.count(0), 2);
        for round in [0, 0, 1, u64::MAX, u64::MAX - 1] {
            runs.remove(round);
        }
        assert!(runs.is_empty());
    }

    #[test]
    fn a_backlog_of_one_key_is_one_run() {
        let mut rounds = Rounds::default();
        for _ in 0..10_000 {
            let round = rounds.next_for("");
            rounds.add("", round);
        }
        assert_eq!(rounds.all.0.len(), 1);
        assert_eq!(rounds.by_key[""].0.len(), 1);
        // Dispatching from the front keeps it one run.
        for round in ROUND_BASE..ROUND_BASE + 5_000 {
            rounds.remove("", round);
        }
        assert_eq!(rounds.all.0.len(), 1);
        assert_eq!(rounds.all.first(), Some(ROUND_BASE + 5_000));
    }
}
