//! The mawex master and pod runtime.
//!
//! A [`Master`] keeps the event-sourced state of every task in a [`Journal`] and leases
//! tasks to [`Pod`]s of the task's consumer group. Clients use [`LocalMasterProxy`]
//! in-process (or `RemoteMasterProxy` over the network); pods connect through a
//! [`PodConnector`].
//!
//! ```
//! use std::sync::Arc;
//! use mawex_api::{GroupName, MasterProxy, Outcome, PodId, TaskSpec};
//! use mawex_core::{MemoryJournal, Master, Pod, PodConfig};
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
mod error;
pub mod journal;
mod master;
mod pod;
mod proxy;
mod server;

pub use error::CoreError;
pub use journal::{Journal, MemoryJournal, Recovered, SledJournal};
pub use master::{
    Event, Master, MasterBuilder, MasterConfig, MasterState, MasterStats, PodStats, RequeueReason,
    TaskCounts, MAX_POD_PREFETCH, MAX_POD_SLOTS,
};
pub use pod::{LocalPodConnector, Pod, PodConfig, PodConnector, PodOutbox, PodSession};
pub use proxy::LocalMasterProxy;
pub use server::{GrpcPodConnector, GrpcServer, ServerConfig};
