//! The ids of each group's tasks in each state, in id order: what `list` pages through when
//! it names a group or a state, so that a page costs O(page) (times the groups or states it
//! merges), not a scan of every task. Derived: rebuilt after a load, and kept by every
//! change of a task's state or group (the same calls that keep the counts).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::ops::Bound;

use mawex_api::{ErrorKind, GroupName, TaskId, TaskState};

/// Task ids by group, then state. A group without tasks is removed, so that a state rebuilt
/// from scratch equals one kept up to date.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Listed(HashMap<GroupName, ByState>);

/// A group's task ids, by state (at [`slot`]): an array, not a map, as every task's every
/// move looks two of them up.
type ByState = [BTreeSet<TaskId>; TaskState::ALL.len()];

/// Where `state`'s ids are in a [`ByState`].
fn slot(state: TaskState) -> usize {
    match state {
        TaskState::Blocked => 0,
        TaskState::Pending => 1,
        TaskState::Running => 2,
        TaskState::Succeeded => 3,
        TaskState::Failed => 4,
        // Cancelled, and any state a later version adds (none is stored by this one).
        _ => 5,
    }
}

impl Listed {
    /// Task `id` of `group` went from state `from` to `to` (`None`: it did not exist, or
    /// is forgotten).
    pub(crate) fn moved(
        &mut self,
        id: TaskId,
        group: &GroupName,
        from: Option<TaskState>,
        to: Option<TaskState>,
    ) {
        if from == to {
            return;
        }
        // The group looked up once for both ends of the move.
        let states = match (self.0.get_mut(group), to) {
            (Some(states), _) => states,
            (None, Some(_)) => self.0.entry(group.clone()).or_default(),
            (None, None) => return,
        };
        if let Some(from) = from {
            states[slot(from)].remove(&id);
        }
        match to {
            Some(to) => {
                states[slot(to)].insert(id);
            }
            None => {
                if states.iter().all(BTreeSet::is_empty) {
                    self.0.remove(group);
                }
            }
        }
    }

    /// Adds the tasks `ids` of `group` in `state`, sorted, to an index that holds none of
    /// that group and state yet: built in one pass, for a rebuild.
    pub(crate) fn insert_sorted(&mut self, group: &GroupName, state: TaskState, ids: Vec<TaskId>) {
        if ids.is_empty() {
            return;
        }
        self.0.entry(group.clone()).or_default()[slot(state)] = ids.into_iter().collect();
    }

    /// The groups that have tasks.
    pub(crate) fn groups(&self) -> impl Iterator<Item = &GroupName> {
        self.0.keys()
    }

    /// How many tasks of `group` are in `state`.
    pub(crate) fn count(&self, group: &GroupName, state: TaskState) -> u64 {
        self.0.get(group).map_or(0, |states| {
            u64::try_from(states[slot(state)].len()).unwrap_or(u64::MAX)
        })
    }

    /// The ids after `after` of the tasks of `group` (any, if `None`) in `state` (any, if
    /// `None`), in id order. At least one of the two is given.
    pub(crate) fn ids<'a>(
        &'a self,
        group: Option<&GroupName>,
        state: Option<TaskState>,
        after: Option<TaskId>,
    ) -> impl Iterator<Item = TaskId> + 'a {
        self.ids_ordered(group, state, after, false)
    }

    /// Like [`Listed::ids`], in id order or (`descending`) its reverse, `after` resuming past
    /// the id it names in that order.
    pub(crate) fn ids_ordered<'a>(
        &'a self,
        group: Option<&GroupName>,
        state: Option<TaskState>,
        after: Option<TaskId>,
        descending: bool,
    ) -> impl Iterator<Item = TaskId> + 'a {
        let past = after.map_or(Bound::Unbounded, Bound::Excluded);
        let sets: Vec<&'a BTreeSet<TaskId>> = match group {
            Some(group) => self
                .0
                .get(group)
                .into_iter()
                .flat_map(|states| match state {
                    Some(want) => vec![&states[slot(want)]],
                    None => states.iter().collect(),
                })
                .filter(|ids| !ids.is_empty())
                .collect(),
            None => self
                .0
                .values()
                .filter_map(|states| state.map(|s| &states[slot(s)]))
                .filter(|ids| !ids.is_empty())
                .collect(),
        };
        let ranges = sets
            .into_iter()
            .map(|ids| -> Box<dyn Iterator<Item = &'a TaskId> + 'a> {
                if descending {
                    Box::new(ids.range((Bound::Unbounded, past)).rev())
                } else {
                    Box::new(ids.range((past, Bound::Unbounded)))
                }
            })
            .collect();
        Merged::new(ranges, descending)
    }
}

/// Ids from sets each in the same order (ascending, or descending), merged into that order
/// (the sets are disjoint: a task is in one) with a heap of each set's next id: O(log sets)
/// an id, however many groups are merged.
struct Merged<'a> {
    sets: Vec<Box<dyn Iterator<Item = &'a TaskId> + 'a>>,
    /// Max-heap of (key, set): the key is the id descending, its reverse ascending.
    next: BinaryHeap<(Ordered, usize)>,
    descending: bool,
}

/// A heap key: an id, or its reverse.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Ordered {
    Up(Reverse<TaskId>),
    Down(TaskId),
}

impl Ordered {
    fn new(id: TaskId, descending: bool) -> Self {
        if descending {
            Ordered::Down(id)
        } else {
            Ordered::Up(Reverse(id))
        }
    }

    fn id(&self) -> TaskId {
        match self {
            Ordered::Up(Reverse(id)) | Ordered::Down(id) => *id,
        }
    }
}

impl<'a> Merged<'a> {
    fn new(mut sets: Vec<Box<dyn Iterator<Item = &'a TaskId> + 'a>>, descending: bool) -> Self {
        let next = sets
            .iter_mut()
            .enumerate()
            .filter_map(|(i, ids)| ids.next().map(|id| (Ordered::new(*id, descending), i)))
            .collect();
        Merged {
            sets,
            next,
            descending,
        }
    }
}

impl Iterator for Merged<'_> {
    type Item = TaskId;

    fn next(&mut self) -> Option<TaskId> {
        let (key, set) = self.next.pop()?;
        if let Some(following) = self.sets.get_mut(set).and_then(Iterator::next) {
            self.next
                .push((Ordered::new(*following, self.descending), set));
        }
        Some(key.id())
    }
}

/// Failed tasks counted by group and kind of last error: the failed summary, O(groups ×
/// kinds) to read. Derived like [`Listed`], and kept by the same changes of state. Zero
/// counts are removed, so that a state rebuilt from scratch equals one kept up to date.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct FailedKinds(HashMap<(GroupName, ErrorKind), u64>);

impl FailedKinds {
    /// A task of `group` became failed, its last error of `kind`.
    pub(crate) fn add(&mut self, group: &GroupName, kind: ErrorKind) {
        *self.0.entry((group.clone(), kind)).or_default() += 1;
    }

    /// A failed task of `group`, its last error of `kind`, is failed no more.
    pub(crate) fn remove(&mut self, group: &GroupName, kind: ErrorKind) {
        let key = (group.clone(), kind);
        if let Some(n) = self.0.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.0.remove(&key);
            }
        }
    }

    /// Every `(group, kind, count)`.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&GroupName, ErrorKind, u64)> {
        self.0.iter().map(|((group, kind), n)| (group, *kind, *n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> TaskId {
        let mut bytes = [0u8; 16];
        bytes[6] = 0x70; // version 7
        bytes[15] = n;
        TaskId::from_bytes(bytes).expect("non-nil")
    }

    #[test]
    fn pages_through_a_group_a_state_or_both_in_id_order() {
        let (a, b) = (
            GroupName::new("a").expect("valid"),
            GroupName::new("b").expect("valid"),
        );
        let mut listed = Listed::default();
        for n in 1..=6 {
            let group = if n % 2 == 0 { &a } else { &b };
            listed.moved(id(n), group, None, Some(TaskState::Pending));
        }
        listed.moved(id(3), &b, Some(TaskState::Pending), Some(TaskState::Failed));
        let ids = |g: Option<&GroupName>, s: Option<TaskState>, after: Option<u8>| {
            listed.ids(g, s, after.map(id)).collect::<Vec<_>>()
        };
        assert_eq!(
            ids(Some(&a), Some(TaskState::Pending), None),
            [id(2), id(4), id(6)]
        );
        assert_eq!(ids(Some(&b), None, None), [id(1), id(3), id(5)]);
        assert_eq!(
            ids(None, Some(TaskState::Pending), Some(2)),
            [id(4), id(5), id(6)]
        );
        assert_eq!(ids(None, Some(TaskState::Failed), None), [id(3)]);
        assert_eq!(ids(Some(&a), Some(TaskState::Failed), None), []);
        // Newest first: merged across groups in descending order, resuming below `after`.
        let down = |g: Option<&GroupName>, s: Option<TaskState>, after: Option<u8>| {
            listed
                .ids_ordered(g, s, after.map(id), true)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            down(None, Some(TaskState::Pending), None),
            [id(6), id(5), id(4), id(2), id(1)]
        );
        assert_eq!(
            down(None, Some(TaskState::Pending), Some(5)),
            [id(4), id(2), id(1)]
        );
        assert_eq!(down(Some(&b), None, Some(5)), [id(3), id(1)]);
        // Emptied sets go, so a rebuilt index equals a kept one.
        listed.moved(id(3), &b, Some(TaskState::Failed), None);
        let mut rebuilt = Listed::default();
        for n in [1, 5] {
            rebuilt.moved(id(n), &b, None, Some(TaskState::Pending));
        }
        for n in [2, 4, 6] {
            rebuilt.moved(id(n), &a, None, Some(TaskState::Pending));
        }
        assert_eq!(listed, rebuilt);
    }
}
