//! The pod runtime: hosts workers of one or more groups, runs leased attempts in a sandbox,
//! heartbeats, reconnects, and leaves cleanly.
//!
//! A pod needs only a [`PodConnector`] to reach its master (in-process or over gRPC) and a
//! sandbox set to run attempts in; it links no storage and no master code.

mod config;
mod error;
mod output;
mod queue;
mod session;
mod shared;
mod usage;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mawex_api::pod::PodConnector;
use mawex_api::PodId;
use mawex_sandbox::SandboxSet;
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;

use session::run;
use shared::{executor, Holdings, Shared};

pub use config::{PodConfig, DEFAULT_PREFETCH};
pub use error::WorkerError;

/// A running pod. Stop it with [`Pod::shutdown`]; dropping it kills it abruptly.
pub struct Pod {
    shared: Arc<Shared>,
    stop: CancellationToken,
    runner: Option<JoinHandle<()>>,
    executors: Vec<AbortHandle>,
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("id", &self.shared.config.id)
            .finish_non_exhaustive()
    }
}

impl Pod {
    /// Starts a pod that runs attempts in `sandbox` and reaches its master through
    /// `connector`, reconnecting with backoff whenever the session is lost.
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`WorkerError::Config`] for a bad configuration.
    pub fn start(
        config: PodConfig,
        sandboxes: impl Into<SandboxSet>,
        connector: Arc<dyn PodConnector>,
    ) -> Result<Pod, WorkerError> {
        let sandboxes = sandboxes.into();
        config.validate()?;
        let output_tail_bytes = config.output_tail_bytes;
        let shared = Arc::new(Shared {
            config,
            sandboxes,
            connector,
            queue: queue::LeaseQueue::default(),
            holdings: Mutex::new(Holdings::default()),
            outbox: Mutex::new(None),
            reports: Mutex::new(Vec::new()),
            acks: AtomicBool::new(false),
            draining: CancellationToken::new(),
            drained: AtomicBool::new(false),
            interrupted: AtomicBool::new(false),
            executed: AtomicU64::new(0),
            highest_term: AtomicU64::new(0),
            usage: Mutex::new(usage::UsageMeter::new()),
            outputs: output::Outputs::new(output_tail_bytes),
            takes_output: AtomicBool::new(false),
        });
        let executors: Vec<JoinHandle<()>> = (0..shared.config.slots)
            .map(|_| tokio::spawn(executor(shared.clone())))
            .collect();
        let aborts = executors.iter().map(JoinHandle::abort_handle).collect();
        let stop = CancellationToken::new();
        let runner = tokio::spawn(run(shared.clone(), stop.clone(), executors));
        Ok(Pod {
            shared,
            stop,
            runner: Some(runner),
            executors: aborts,
        })
    }

    /// The pod's identity.
    pub fn id(&self) -> &PodId {
        &self.shared.config.id
    }

    /// How many attempts this pod has run to an end (any outcome).
    pub fn executed(&self) -> u64 {
        self.shared.executed.load(Ordering::Relaxed)
    }

    /// Leaves cleanly: takes no more work, hands queued leases back, lets running attempts
    /// finish within the grace period, hands back the ones it had to interrupt, then tells
    /// the master it is gone. Nothing it held waits for a lease timeout.
    ///
    /// # Errors
    /// [`WorkerError::Task`] if the pod's task panicked.
    pub async fn shutdown(mut self) -> Result<(), WorkerError> {
        self.stop.cancel();
        if let Some(runner) = self.runner.take() {
            runner.await.map_err(|e| WorkerError::Task(e.to_string()))?;
        }
        Ok(())
    }

    /// Stops at once, as a crash would: attempts are dropped mid-flight and the connection
    /// is cut. The master re-runs them after the lease timeout. For fault-injection tests.
    pub fn kill(mut self) {
        self.abort();
    }

    fn abort(&mut self) {
        if let Some(runner) = self.runner.take() {
            runner.abort();
        }
        for e in &self.executors {
            e.abort();
        }
        self.shared.detach();
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if self.runner.is_some() {
            self.abort();
        }
    }
}
