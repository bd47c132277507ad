//! Fairness rounds: the sort key that lets the keys of a group take turns.

use std::collections::{BTreeMap, HashMap};

/// Fairness rounds of a group's live (not finished) tasks, as multisets: a new task of key
/// `k` gets round `max(last round of k + 1, first live round of the group)`, so keys take
/// turns round by round and a key that arrives late starts at the current round, not behind
/// everyone else's backlog. Derived from durable state only (each task keeps its round), so
/// replay assigns the same rounds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Rounds {
    all: BTreeMap<u64, u32>,
    by_key: HashMap<String, BTreeMap<u64, u32>>,
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
        self.all
            .keys()
            .next()
            .copied()
            .unwrap_or(ROUND_BASE)
            .saturating_sub(1)
    }

    /// A round behind every live task of the group.
    pub(super) fn back(&self) -> u64 {
        self.all
            .keys()
            .next_back()
            .copied()
            .map_or(ROUND_BASE, |r| r.saturating_add(1))
    }
}

fn multiset_add(set: &mut BTreeMap<u64, u32>, round: u64) {
    *set.entry(round).or_default() += 1;
}

fn multiset_remove(set: &mut BTreeMap<u64, u32>, round: u64) {
    if let Some(n) = set.get_mut(&round) {
        *n -= 1;
        if *n == 0 {
            set.remove(&round);
        }
    }
}

impl Rounds {
    pub(super) fn next_for(&self, key: &str) -> u64 {
        let floor = self.all.keys().next().copied().unwrap_or(ROUND_BASE);
        let last = self
            .by_key
            .get(key)
            .and_then(|s| s.keys().next_back().copied());
        last.map_or(floor, |l| l.saturating_add(1).max(floor))
    }

    pub(super) fn add(&mut self, key: &str, round: u64) {
        multiset_add(&mut self.all, round);
        // Look up before inserting: most adds are for a key already live, and need no String.
        match self.by_key.get_mut(key) {
            Some(set) => multiset_add(set, round),
            None => {
                let mut set = BTreeMap::new();
                multiset_add(&mut set, round);
                self.by_key.insert(key.to_owned(), set);
            }
        }
    }

    pub(super) fn remove(&mut self, key: &str, round: u64) {
        multiset_remove(&mut self.all, round);
        if let Some(set) = self.by_key.get_mut(key) {
            multiset_remove(set, round);
            if set.is_empty() {
                self.by_key.remove(key);
            }
        }
    }
}
