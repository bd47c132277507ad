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
//! ```
//! use std::sync::Arc;
//! use mawex::{GroupName, HandlerRegistry, InProcess, Master, MasterProxy, MemoryJournal,
//!             Pod, PodConfig, PodId, TaskInput, TaskSpec};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let master = Master::builder().start(MemoryJournal::new()).await.unwrap();
//! let mut handlers = HandlerRegistry::new();
//! handlers.register("double", |t: TaskInput| async move {
//!     let n: u64 = String::from_utf8_lossy(&t.payload).parse().map_err(|_| "not a number")?;
//!     Ok((n * 2).to_string().into())
//! }).unwrap();
//! let math = GroupName::new("math").unwrap();
//! let pod = Pod::start(PodConfig::new(PodId::new("p1").unwrap(), vec![math.clone()]),
//!                      Arc::new(InProcess::new(handlers)), Arc::new(master.pod_connector())).unwrap();
//! let proxy = master.proxy();
//! let id = proxy.submit(TaskSpec::new(math, "double", "21")).await.unwrap().id;
//! let result = proxy.await_result(id).await.unwrap();
//! assert_eq!(result.outcome, mawex::Outcome::Succeeded("42".into()));
//! pod.shutdown().await.unwrap();
//! master.shutdown().await.unwrap();
//! # });
//! ```

/// Broadcasts: one task run on every pod of a group, propagated pod to pod.
pub use mawex_api::broadcast;
pub use mawex_api::pod;
pub use mawex_api::pod::{PodConnector, PodOutbox, PodSession};
/// The generated protobuf types and gRPC stubs of the `mawex.v1` protocol.
pub use mawex_api::proto;
pub use mawex_api::{
    ApiError, Attempt, AttemptFailure, Bytes, CancelAck, Dedup, ErrorKind, FailedCount,
    FailedFilter, GroupName, GroupSettings, Limits, ListQuery, MasterProxy, MissedTicks, Outcome,
    PendingChange, PodId, QueuePosition, RateLimit, RemoteConfig, RemoteMasterProxy, ResultCursor,
    ResultStream, RetryHint, RetryPolicy, ScheduleSpec, ScheduleView, SubmitAck, TaskError, TaskId,
    TaskPage, TaskResult, TaskSpec, TaskState, TaskView, Timestamp,
};
pub use mawex_api::{
    BroadcastId, BroadcastLock, BroadcastPlan, BroadcastSpec, BroadcastView, PlannedTarget, Source,
    Strategy, TargetFilter, TargetState, TargetView,
};
pub use mawex_api::{ChannelConfig, GrpcPodConnector};
pub use mawex_core::{
    clock, journal, CoreError, Event, Journal, LocalMasterProxy, LocalPodConnector, Master,
    MasterBuilder, MasterConfig, MasterState, MasterStats, MemoryJournal, PodStats, Recovered,
    RequeueReason, SledJournal, TaskCounts,
};
pub use mawex_sandbox::{
    HandlerError, HandlerRegistry, InProcess, Sandbox, SandboxError, TaskInput,
};
pub use mawex_server::{RunningServer, Server, ServerConfig, ServerError};
pub use mawex_worker::{Pod, PodConfig, WorkerError};

/// Sandboxes: where task bodies run.
pub mod sandbox {
    pub use mawex_sandbox::*;
}

/// The README's example, compiled as a doctest so it cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
