//! The mawex master, as an application embeds it.
//!
//! A [`Master`] keeps the event-sourced state of every task in a [`Journal`] and leases
//! tasks to the pods (`mawex-worker`) of the task's consumer group. Clients use
//! [`LocalMasterProxy`] in-process (or `RemoteMasterProxy` over the network, through
//! `mawex-server`); in-process pods connect through [`LocalPodConnector`].
//!
//! ```
//! use std::sync::Arc;
//! use mawex_api::{GroupName, MasterProxy, Outcome, PodId, TaskSpec};
//! use mawex_core::{MemoryJournal, Master};
//! use mawex_worker::{Pod, PodConfig};
//! use mawex_sandbox::{HandlerRegistry, InProcess, TaskInput};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let master = Master::builder().start(MemoryJournal::new()).await.unwrap();
//! let group = GroupName::new("greetings").unwrap();
//!
//! let mut handlers = HandlerRegistry::new();
//! handlers.register("hello", |input: TaskInput| async move {
//!     Ok(format!("hello, {}", String::from_utf8_lossy(&input.payload)).into())
//! }).unwrap();
//! let pod = Pod::start(
//!     PodConfig::new(PodId::new("pod-1").unwrap(), vec![group.clone()]),
//!     Arc::new(InProcess::new(handlers)),
//!     Arc::new(master.pod_connector()),
//! ).unwrap();
//!
//! let proxy = master.proxy();
//! let ack = proxy.submit(TaskSpec::new(group, "hello", "world")).await.unwrap();
//! let result = proxy.await_result(ack.id).await.unwrap();
//! assert_eq!(result.outcome, Outcome::Succeeded("hello, world".into()));
//!
//! pod.shutdown().await.unwrap();
//! master.shutdown().await.unwrap();
//! # });
//! ```

pub mod clock;
mod codec;
mod engine;
mod error;
pub mod journal;
mod runtime;
mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use engine::PodStats;
pub use error::CoreError;
pub use journal::{
    DroppedRecord, FreeSpace, Journal, MemoryJournal, Recovered, Repaired, SledJournal, SledSync,
    SnapshotWriter,
};
pub use runtime::{
    CommittedBatch, CommittedFeed, GroupLabels, InFlight, LocalMasterProxy, LocalPodConnector,
    Master, MasterBuilder, MasterConfig, MasterMetrics, MasterStats, Transition, TransitionLabels,
    MAX_GROUP_LABELS, OTHER_GROUPS,
};
pub use state::{stored, Event, MasterState, RequeueReason, TaskCounts};
