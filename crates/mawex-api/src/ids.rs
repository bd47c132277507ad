use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Identity of a task: a UUIDv7 chosen by the client.
///
/// Because the client generates it, a resubmission after a lost reply carries the same id and
/// the master recognises it instead of enqueuing a second task. UUIDv7 ids sort by creation
/// time, which is the order `list` pages in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskId(uuid::Uuid);

/// The order of its bytes, compared as one number: the hot comparison of every map keyed
/// by it, where comparing byte slices calls `memcmp`.
impl Ord for TaskId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_u128().cmp(&other.0.as_u128())
    }
}

impl PartialOrd for TaskId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl TaskId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        TaskId(uuid::Uuid::now_v7())
    }

    /// Wraps raw bytes (e.g. from another language's client). The nil id is rejected.
    ///
    /// # Errors
    /// [`ApiError::InvalidArgument`] for the all-zero id.
    pub fn from_bytes(bytes: [u8; 16]) -> Result<Self, ApiError> {
        let id = uuid::Uuid::from_bytes(bytes);
        if id.is_nil() {
            return Err(ApiError::InvalidArgument("task id must not be nil".into()));
        }
        Ok(TaskId(id))
    }

    /// The 16 bytes of the id.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl Default for TaskId {
    fn default() -> Self {
        TaskId::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for TaskId {
    type Err = ApiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id = uuid::Uuid::parse_str(s)
            .map_err(|e| ApiError::InvalidArgument(format!("task id {s:?} is not a UUID: {e}")))?;
        TaskId::from_bytes(*id.as_bytes())
    }
}

/// Identifies a workflow graph. Chosen by the client like a [`TaskId`], so that submitting the
/// same graph again after a lost reply is recognised; its nodes' task ids derive from it and
/// their names ([`GraphId::node_id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GraphId(uuid::Uuid);

/// The order of its bytes, compared as one number: the hot comparison of every map keyed
/// by it, where comparing byte slices calls `memcmp`.
impl Ord for GraphId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_u128().cmp(&other.0.as_u128())
    }
}

impl PartialOrd for GraphId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl GraphId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        GraphId(uuid::Uuid::now_v7())
    }

    /// Wraps raw bytes. The nil id is rejected.
    ///
    /// # Errors
    /// [`ApiError::InvalidArgument`] for the all-zero id.
    pub fn from_bytes(bytes: [u8; 16]) -> Result<Self, ApiError> {
        let id = uuid::Uuid::from_bytes(bytes);
        if id.is_nil() {
            return Err(ApiError::InvalidArgument("graph id must not be nil".into()));
        }
        Ok(GraphId(id))
    }

    /// The 16 bytes of the id.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The task id of this graph's node `name`: the same for the same graph and name, so
    /// a graph submitted twice names the same tasks. It keeps the graph id's time (its first
    /// 48 bits), so a graph's tasks list together, in the order graphs were made.
    pub fn node_id(&self, name: &str) -> TaskId {
        // FNV-1a over the graph id and the name, then splitmix64 to spread it: twice, with
        // different seeds, for 80 bits of the name.
        let hash = |seed: u64| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
            for b in self.as_bytes().iter().chain(name.as_bytes()) {
                h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
            h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            h ^ (h >> 31)
        };
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&self.as_bytes()[..6]);
        bytes[6..14].copy_from_slice(&hash(0).to_be_bytes());
        bytes[14..].copy_from_slice(&hash(0x9E37_79B9_7F4A_7C15).to_be_bytes()[..2]);
        bytes[6] = 0x70 | (bytes[6] & 0x0f); // version 7
        bytes[8] = 0x80 | (bytes[8] & 0x3f); // RFC 4122 variant
                                             // Never nil: the version nibble alone makes it non-zero.
        TaskId::from_bytes(bytes).unwrap_or_default()
    }
}

impl Default for GraphId {
    fn default() -> Self {
        GraphId::new()
    }
}

impl fmt::Display for GraphId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for GraphId {
    type Err = ApiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id = uuid::Uuid::parse_str(s)
            .map_err(|e| ApiError::InvalidArgument(format!("graph id {s:?} is not a UUID: {e}")))?;
        GraphId::from_bytes(*id.as_bytes())
    }
}

/// Number of one try of a task, counted from 1. Every message about a running task carries it,
/// so an answer from an attempt that is no longer current is recognised and dropped.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Attempt(pub u32);

impl Attempt {
    /// The attempt after this one.
    pub fn next(self) -> Attempt {
        Attempt(self.0.saturating_add(1))
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The longest group or pod name accepted.
const MAX_NAME_LEN: usize = 128;

fn validate_name(kind: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::InvalidArgument(format!(
            "{kind} name must not be empty"
        )));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ApiError::InvalidArgument(format!(
            "{kind} name is {} bytes long, the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/')))
    {
        return Err(ApiError::InvalidArgument(format!(
            "{kind} name {name:?} contains {bad:?}; use ASCII letters, digits and - _ . : /"
        )));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        ///
        /// Cheap to clone (shared string). 1 to 128 ASCII letters, digits or `- _ . : /`.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates and wraps a name.
            ///
            /// # Errors
            /// [`ApiError::InvalidArgument`] naming what is wrong with it.
            pub fn new(name: impl AsRef<str>) -> Result<Self, ApiError> {
                let name = name.as_ref();
                validate_name($kind, name)?;
                Ok($name(Arc::from(name)))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ApiError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                $name::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ApiError;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                $name::new(s)
            }
        }

        impl FromStr for $name {
            type Err = ApiError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0.to_string()
            }
        }
    };
}

name_type!(
    /// A consumer group: tasks of a group are pulled by the workers of that group.
    GroupName,
    "group"
);
name_type!(
    /// Identity of a pod: one worker process hosting workers of one or more groups.
    PodId,
    "pod"
);
name_type!(
    /// The name of a cron schedule (not a group: the tasks it submits name their own group).
    ScheduleName,
    "schedule"
);

impl ScheduleName {
    /// The id of the task this schedule submits at `tick`: the same for the same schedule
    /// and tick (a tick is submitted once, however often the master restarts), and ordered by
    /// tick like any UUIDv7.
    pub fn task_id(&self, tick: crate::time::Timestamp) -> TaskId {
        // FNV-1a over the name, then splitmix64 to spread it.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.as_str().bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 31;
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&tick.0.to_be_bytes()[2..]);
        bytes[6..14].copy_from_slice(&h.to_be_bytes());
        bytes[14..].copy_from_slice(&(tick.0 as u16).to_be_bytes());
        bytes[6] = 0x70 | (bytes[6] & 0x0f); // version 7
        bytes[8] = 0x80 | (bytes[8] & 0x3f); // RFC 4122 variant
                                             // Never nil: the version nibble alone makes it non-zero.
        TaskId::from_bytes(bytes).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(GroupName::new("etl.load-2").is_ok());
        assert!(GroupName::new("").is_err());
        assert!(GroupName::new("has space").is_err());
        assert!(PodId::new("x".repeat(129)).is_err());
        let json = serde_json::to_string(&GroupName::new("a").unwrap()).unwrap();
        assert_eq!(json, "\"a\"");
        assert!(serde_json::from_str::<GroupName>("\"b a d\"").is_err());
    }

    #[test]
    fn task_ids_parse_and_reject_nil() {
        let id = TaskId::new();
        assert_eq!(id.to_string().parse::<TaskId>().unwrap(), id);
        assert!("00000000-0000-0000-0000-000000000000"
            .parse::<TaskId>()
            .is_err());
        assert!("nope".parse::<TaskId>().is_err());
        assert!(TaskId::new() > id, "v7 ids grow with time");
    }

    #[test]
    fn ids_order_as_their_bytes() {
        let ids: Vec<TaskId> = (0..200)
            .map(|i: u128| TaskId(uuid::Uuid::from_u128((i % 7) << 120 | (i % 5) << 64 | i)))
            .chain((0..200).map(|_| TaskId::new()))
            .collect();
        for a in &ids {
            for b in &ids {
                assert_eq!(
                    a.cmp(b),
                    a.0.as_bytes().cmp(b.0.as_bytes()),
                    "{a} against {b}"
                );
            }
        }
    }

    #[test]
    fn a_graphs_node_ids_are_stable_distinct_and_keep_its_time() {
        let graph = GraphId::new();
        let a = graph.node_id("a");
        assert_eq!(a, graph.node_id("a"));
        assert_ne!(a, graph.node_id("b"));
        assert_ne!(a, GraphId::new().node_id("a"));
        assert_eq!(a.as_bytes()[..6], graph.as_bytes()[..6]);
        assert_eq!(graph.to_string().parse::<GraphId>().unwrap(), graph);
    }
}
