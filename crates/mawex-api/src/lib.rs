//! Domain types of mawex, the [`MasterProxy`] trait every client talks through, and the
//! transport-agnostic messages a pod and the master exchange.
//!
//! This crate depends on no other mawex crate. Everything here is plain data: it can be sent
//! over a channel in-process or converted to protobuf at the gRPC edge.
//!
//! ```
//! use mawex_api::{GroupName, TaskSpec, TaskId};
//!
//! let group = GroupName::new("thumbnails").expect("a valid group name");
//! let spec = TaskSpec::new(group, "resize", b"cat.png".to_vec()).with_priority(5);
//! assert_eq!(spec.priority, 5);
//! // The client chooses the id, so submitting the same spec again is idempotent.
//! let again = spec.clone();
//! assert_eq!(spec.id, again.id);
//! assert_ne!(spec.id, TaskId::new());
//! ```

mod admin;
pub mod broadcast;
pub mod convert;
mod error;
mod failure;
mod graph;
mod ids;
mod output;
pub mod pod;
pub mod proto;
mod proxy;
mod remote;
mod task;
mod time;
pub mod typed;

pub use admin::{
    FailedCount, FailedFilter, GroupSettings, GroupTimes, GroupView, MinuteCounts, MissedTicks,
    PendingChange, PodView, QueuePosition, RateLimit, ScheduleSpec, ScheduleView, HISTORY_MINUTES,
    MAX_GROUP_CONCURRENCY,
};
pub use broadcast::{
    BroadcastId, BroadcastLock, BroadcastPage, BroadcastPlan, BroadcastQuery, BroadcastSpec,
    BroadcastView, PlannedTarget, Source, Strategy, TargetFilter, TargetState, TargetView,
};
pub use error::ApiError;
pub use failure::{ErrorKind, RetryHint, TaskError, UnknownErrorKind, MAX_ERROR_MESSAGE_BYTES};
pub use graph::{
    Dependency, DependencyPolicy, GraphAck, GraphEdge, GraphLayers, GraphNode, GraphNodeView,
    GraphSpec, GraphView, MAX_DEPENDENCIES, MAX_GRAPH_EDGES, MAX_GRAPH_NODES, MAX_NODE_NAME_LEN,
};
pub use ids::{Attempt, GraphId, GroupName, PodId, ScheduleName, TaskId};
pub use output::{
    OutputLine, OutputStream, TaskOutput, MAX_OUTPUT_LINES_PER_MESSAGE, MAX_OUTPUT_LINE_BYTES,
};
pub use proxy::{
    check_history_minutes, CancelAck, ListQuery, MasterProxy, ResultCursor, ResultStream,
    SubmitAck, TaskPage, MAX_LIST_FILTER_LEN, MAX_LIST_LIMIT, MAX_LIST_PAGE_BYTES, MAX_LIST_SCAN,
};
pub use remote::{
    AuthChannel, Bearer, BearerToken, ChannelConfig, ClientTls, GrpcPodConnector, RemoteConfig,
    RemoteMasterProxy,
};
pub use task::{
    AttemptFailure, Dedup, Limits, Outcome, RetryPolicy, TaskResult, TaskSpec, TaskState, TaskView,
    MAX_ATTEMPTS, MAX_DEDUP_KEY_LEN, MAX_FAIRNESS_KEY_LEN, MAX_HANDLER_LEN,
};
pub use time::Timestamp;
pub use typed::{Task, TaskHandle, TypedProxy};

/// Re-exported so users need no direct dependency to build payloads.
pub use bytes::Bytes;
