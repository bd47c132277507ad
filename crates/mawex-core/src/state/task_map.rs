//! The tasks by id, in a persistent (copy-on-write) B-tree: a copy costs O(1), so the core can
//! hand one to another thread (a snapshot writer, the read model) without pausing for it.

use std::fmt;
use std::ops::RangeBounds;
use std::sync::Arc;

use mawex_api::TaskId;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::TaskEntry;

/// Tasks by id.
///
/// Entries sit behind an `Arc`, so that the tree's nodes stay small (a changed node is copied
/// while a copy of the map shares it) and a change to one task copies that task alone.
/// Serialised exactly as a `BTreeMap<TaskId, TaskEntry>` (a map in id order), which is what
/// every snapshot format holds.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct TaskMap(imbl::OrdMap<TaskId, Arc<TaskEntry>>);

impl TaskMap {
    pub(crate) fn get(&self, id: &TaskId) -> Option<&TaskEntry> {
        self.0.get(id).map(Arc::as_ref)
    }

    /// The task to change, copied first if a copy of the map still shares it.
    pub(crate) fn get_mut(&mut self, id: &TaskId) -> Option<&mut TaskEntry> {
        self.0.get_mut(id).map(Arc::make_mut)
    }

    pub(crate) fn contains_key(&self, id: &TaskId) -> bool {
        self.0.contains_key(id)
    }

    pub(crate) fn insert(&mut self, id: TaskId, entry: TaskEntry) {
        self.0.insert(id, Arc::new(entry));
    }

    /// Inserts a task that is already behind an `Arc` (a decoder made it).
    pub(crate) fn insert_shared(&mut self, id: TaskId, entry: Arc<TaskEntry>) {
        self.0.insert(id, entry);
    }

    pub(crate) fn remove(&mut self, id: &TaskId) {
        self.0.remove(id);
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&TaskId, &TaskEntry)> {
        self.0.iter().map(|(id, e)| (id, e.as_ref()))
    }

    pub(crate) fn range<R: RangeBounds<TaskId>>(
        &self,
        range: R,
    ) -> impl DoubleEndedIterator<Item = (&TaskId, &TaskEntry)> {
        self.0.range(range).map(|(id, e)| (id, e.as_ref()))
    }
}

impl fmt::Debug for TaskMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl FromIterator<(TaskId, TaskEntry)> for TaskMap {
    fn from_iter<I: IntoIterator<Item = (TaskId, TaskEntry)>>(iter: I) -> Self {
        TaskMap(iter.into_iter().map(|(id, e)| (id, Arc::new(e))).collect())
    }
}

impl Serialize for TaskMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (id, entry) in self.iter() {
            map.serialize_entry(id, entry)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for TaskMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Tasks;
        impl<'de> Visitor<'de> for Tasks {
            type Value = TaskMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of task ids to tasks")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<TaskMap, A::Error> {
                let mut tasks = TaskMap::default();
                while let Some((id, entry)) = access.next_entry::<TaskId, TaskEntry>()? {
                    tasks.insert(id, entry);
                }
                Ok(tasks)
            }
        }
        deserializer.deserialize_map(Tasks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: TaskId) -> TaskEntry {
        let group = mawex_api::GroupName::new("g").expect("a valid name");
        let spec = mawex_api::TaskSpec::new(group, "h", &b"x"[..]).with_id(id);
        TaskEntry::pending(spec.into(), 1, mawex_api::Timestamp(5))
    }

    #[test]
    fn encodes_as_the_btreemap_snapshots_always_held() {
        let ids: Vec<TaskId> = (0..3).map(|_| TaskId::new()).collect();
        let std_map: std::collections::BTreeMap<TaskId, TaskEntry> =
            ids.iter().map(|id| (*id, entry(*id))).collect();
        let map: TaskMap = ids.iter().map(|id| (*id, entry(*id))).collect();
        let config = bincode::config::standard();
        let ours = bincode::serde::encode_to_vec(&map, config).expect("encodes");
        let theirs = bincode::serde::encode_to_vec(&std_map, config).expect("encodes");
        assert_eq!(ours, theirs);
        let (back, _): (TaskMap, usize) =
            bincode::serde::decode_from_slice(&ours, config).expect("decodes");
        assert_eq!(back, map);
    }

    #[test]
    fn a_copy_keeps_what_the_map_had_when_it_was_taken() {
        let id = TaskId::new();
        let mut map: TaskMap = [(id, entry(id))].into_iter().collect();
        let copy = map.clone();
        map.get_mut(&id).expect("present").attempt = mawex_api::Attempt(7);
        let other = TaskId::new();
        map.insert(other, entry(other));
        assert_eq!(copy.len(), 1);
        assert_eq!(
            copy.get(&id).map(|e| e.attempt),
            Some(mawex_api::Attempt(0))
        );
        assert_eq!(map.get(&id).map(|e| e.attempt), Some(mawex_api::Attempt(7)));
    }
}
