//! The effectful shell around the pure master: the core thread that drains requests, decides,
//! commits and publishes; the `Master` handle; and the in-process ways in.

mod admission;
mod config;
mod core_loop;
mod deliver;
mod feed;
mod history;
mod journal_thread;
mod local_pods;
mod local_proxy;
mod master;
mod messages;
mod metrics;
mod output;
mod read_model;
mod snapshots;
mod streams;

pub use admission::InFlight;
pub use config::{MasterConfig, MasterStats};
pub use feed::{CommittedBatch, CommittedFeed};
pub use local_pods::LocalPodConnector;
pub use local_proxy::LocalMasterProxy;
pub use master::{Master, MasterBuilder};
pub use metrics::{
    GroupLabels, MasterMetrics, Transition, TransitionLabels, MAX_GROUP_LABELS, OTHER_GROUPS,
};
