//! # mawex
//!
//! Distributed task scheduling on the Master / Worker / Executor model.
//!
//! A [`Master`] keeps an event-sourced journal of every task, leases tasks to the workers
//! of their consumer group hosted in [`Pod`]s, and each task runs in a [`sandbox`].
//! Clients use a [`MasterProxy`]: [`LocalMasterProxy`] in-process.
//!
//! Delivery semantics: **at-least-once execution, exactly-once result recording**. A task
//! whose submit was acknowledged is durable; it runs until one attempt's result is
//! recorded, and only that one result is ever recorded.
//!
//! A typed task names its handler and its output type; the payload is any serde type
//! (sent as JSON, so clients in other languages can submit it too). The raw path, a handler
//! name and `Bytes`, is [`TaskSpec::new`] and [`HandlerRegistry::register`].
//!
//! ```
//! use std::sync::Arc;
//! use mawex::prelude::*;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Double { n: u64 }
//!
//! impl Task for Double {
//!     const HANDLER: &'static str = "double";
//!     type Output = u64;
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let master = Master::builder().start(MemoryJournal::new()).await.unwrap();
//! let mut handlers = HandlerRegistry::new();
//! handlers.register_task(|task: Double, _input| async move { Ok(task.n * 2) }).unwrap();
//! let math = GroupName::new("math").unwrap();
//! let pod = Pod::start(PodConfig::new(PodId::new("p1").unwrap(), vec![math.clone()]),
//!                      Arc::new(InProcess::new(handlers)), Arc::new(master.pod_connector())).unwrap();
//! let proxy = master.proxy();
//! let handle = proxy.submit_task(math, &Double { n: 21 }).await.unwrap();
//! assert_eq!(proxy.await_output(handle).await.unwrap(), 42);
//! pod.shutdown().await.unwrap();
//! master.shutdown().await.unwrap();
//! # });
//! ```

/// What most programs need: `use mawex::prelude::*;`.
pub mod prelude {
    pub use crate::{
        ApiError, Bytes, GroupName, GrpcPodConnector, HandlerError, HandlerRegistry, InProcess,
        MasterProxy, Outcome, PodConnector, PodId, RemoteMasterProxy, Task, TaskHandle, TaskId,
        TaskInput, TaskResult, TaskSpec, Timestamp, TypedProxy,
    };
    #[cfg(feature = "master")]
    pub use crate::{Master, MasterConfig, MemoryJournal, ReplicatedMaster, Server, SledJournal};
    #[cfg(feature = "worker")]
    pub use crate::{Pod, PodConfig};
}

/// Broadcasts: one task run on every pod of a group, propagated pod to pod.
pub use mawex_api::broadcast;
/// The messages between a pod and its master, and the session contract a transport
/// implements.
pub use mawex_api::pod;
pub use mawex_api::pod::PodConnector;
/// Typed tasks: the payload encoding ([`typed::encode`], [`typed::decode`]).
pub use mawex_api::typed;
pub use mawex_api::{
    ApiError, Attempt, AttemptFailure, BearerToken, Bytes, CancelAck, ChannelConfig, ClientTls,
    Dedup, Dependency, DependencyPolicy, ErrorKind, FailedCount, FailedFilter, GraphAck, GraphEdge,
    GraphId, GraphNode, GraphNodeView, GraphSpec, GraphView, GroupName, GroupSettings, GroupView,
    GrpcPodConnector, Limits, ListQuery, MasterProxy, MinuteCounts, MissedTicks, Outcome,
    OutputLine, OutputStream, PendingChange, PodId, PodView, QueuePosition, RateLimit,
    RemoteConfig, RemoteMasterProxy, ResultCursor, ResultStream, RetryHint, RetryPolicy,
    ScheduleName, ScheduleSpec, ScheduleView, SubmitAck, TaskError, TaskId, TaskOutput, TaskPage,
    TaskResult, TaskSpec, TaskState, TaskView, Timestamp, UnknownErrorKind, HISTORY_MINUTES,
    MAX_LIST_FILTER_LEN, MAX_LIST_LIMIT, MAX_LIST_PAGE_BYTES, MAX_LIST_SCAN, MAX_OUTPUT_LINE_BYTES,
};
pub use mawex_api::{
    BroadcastId, BroadcastLock, BroadcastPage, BroadcastPlan, BroadcastQuery, BroadcastSpec,
    BroadcastView, PlannedTarget, Source, Strategy, TargetFilter, TargetState, TargetView,
};
pub use mawex_api::{Task, TaskHandle, TypedProxy};
#[cfg(feature = "master")]
pub use mawex_core::{
    clock, CoreError, DroppedRecord, InFlight, Journal, LocalMasterProxy, LocalPodConnector,
    Master, MasterBuilder, MasterConfig, MasterMetrics, MasterStats, MemoryJournal, PodStats,
    Repaired, SledJournal, SnapshotWriter, TaskCounts,
};
/// The master of a cluster of one, the embedded default: its journal is the Raft log of a
/// one-node cluster, which grows into a cluster of three or five masters (see [`cluster`])
/// on the same data.
#[cfg(feature = "master")]
pub use mawex_raft::ReplicatedMaster;
pub use mawex_sandbox::{
    HandlerError, HandlerRegistry, InProcess, LogHandle, Sandbox, SandboxError, TaskInput,
};

/// Clusters of masters that fail over: each node keeps the Raft log, the node that leads
/// runs the master, the others redirect (`NotLeader`) to it.
#[cfg(feature = "master")]
pub mod cluster {
    pub use mawex_raft::{
        admin_service, raft_service, BasicNode, ClusterAdmin, ClusterPodConnector, ClusterProxy,
        GrpcNetwork, MasterNode, Members, NodeConfig, NodeIdentity, RaftStoreError,
        RemoteClusterAdmin, ReplicatedMaster,
    };
}
#[cfg(feature = "master")]
pub use mawex_server::{auth, RunningServer, Server, ServerConfig, ServerError, ServerTls};
#[cfg(feature = "worker")]
pub use mawex_worker::{Pod, PodConfig, WorkerError, DEFAULT_PREFETCH};

/// Sandboxes: where task bodies run.
pub mod sandbox {
    pub use mawex_sandbox::*;
}

/// Test hooks and internals (feature `testing`): the journal's event and state types (for
/// implementing a [`Journal`]), the journal conformance suite, the pieces of the core for
/// micro-benchmarks (`pieces`), the generated protobuf code, and `Master::halt` (a crash
/// without a final commit).
#[cfg(all(feature = "testing", feature = "master"))]
pub mod testing {
    pub use mawex_api::proto;
    pub use mawex_core::testing::{journal_suite, pieces, JournalUnderTest};
    pub use mawex_core::{
        CommittedBatch, CommittedFeed, Event, MasterState, Recovered, RequeueReason,
    };
}

/// The README's example, compiled as a doctest so it cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
