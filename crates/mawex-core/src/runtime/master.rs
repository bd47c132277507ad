//! The master: durable task state, scheduling and leases, behind a cheap handle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{broadcast, oneshot, watch};
use tracing::info;

use super::admission::{Admission, InFlight};
use super::config::{MasterConfig, MasterStats};
use super::core_loop::{CoreLoop, Released, SnapshotTally};
use super::feed::CommittedFeed;
use super::messages::CoreMsg;
use super::metrics::MasterMetrics;
use super::read_model::{copy_state, ReadSide};
use super::snapshots::SnapshotThread;
use crate::engine::Engine;

use super::local_pods::LocalPodConnector;
use super::local_proxy::LocalMasterProxy;
use crate::clock::{Clock, SystemClock};
use crate::error::CoreError;
use crate::journal::Journal;
use crate::state::MasterState;

/// Builds a [`Master`].
#[derive(Default)]
pub struct MasterBuilder {
    config: MasterConfig,
    clock: Option<Arc<dyn Clock>>,
}

impl std::fmt::Debug for MasterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl MasterBuilder {
    /// Uses `config` instead of the defaults.
    pub fn config(mut self, config: MasterConfig) -> Self {
        self.config = config;
        self
    }

    /// Uses `clock` instead of the system clock (tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Recovers the state from `journal` (snapshot plus tail) and starts the master.
    ///
    /// # Errors
    /// A bad configuration, or a journal that cannot be read (see [`Journal::recover`]).
    pub async fn start<J: Journal>(self, journal: J) -> Result<Master, CoreError> {
        self.config.validate()?;
        let config = self.config;
        let max_payload_bytes = config.max_payload_bytes;
        let admission = Arc::new(Admission::new(
            config.max_requests_in_flight,
            config.max_waiting_calls,
        ));
        let groups = config.groups.clone();
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock::new()));
        let (inbox_tx, inbox_rx) = std_mpsc::channel();
        let (stats_tx, stats_rx) = watch::channel(MasterStats::default());
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), CoreError>>();
        let (done_tx, done_rx) = oneshot::channel::<Result<(), CoreError>>();
        let (feed, _) = broadcast::channel(config.feed_capacity);
        // Why the core stopped on its own, once it has; read by proxies, servers and
        // `Master::stopped`.
        let (failed_tx, failed_rx) = watch::channel::<Option<String>>(None);
        let committed = Arc::new(AtomicU64::new(0));
        let metrics: Arc<std::sync::OnceLock<Arc<MasterMetrics>>> = Arc::default();
        let reads = Arc::new(ReadSide::new(
            inbox_tx.clone(),
            &feed,
            committed.clone(),
            stats_rx.clone(),
            metrics.clone(),
            clock.clone(),
        ));

        let thread = std::thread::Builder::new()
            .name("mawex-core".into())
            .spawn(move || {
                let mut journal = journal;
                let recovered = match journal.recover() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let events = recovered.events.len();
                let (last_seq, state) = recovered.into_state();
                committed.store(last_seq, Ordering::Release);
                info!(
                    last_seq,
                    replayed = events,
                    tasks = state.len(),
                    "master recovered"
                );
                let snapshot_thread = journal
                    .snapshot_writer()
                    .and_then(|writer| writer.map(SnapshotThread::start).transpose());
                let snapshot_thread = match snapshot_thread {
                    Ok(thread) => thread,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let journal = match super::journal_thread::JournalThread::start(journal) {
                    Ok(thread) => thread,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let engine = Engine::new(state, config.engine(), clock.now());
                let config_output = (config.output_tail_bytes, config.output_total_bytes);
                let engine_results_recorded = engine.state().results_recorded();
                let engine_counts = engine.counts();
                let mut core = CoreLoop {
                    engine,
                    journal,
                    clock,
                    config,
                    inbox: inbox_rx,
                    last_seq,
                    released: Released {
                        last_seq,
                        counts: engine_counts,
                        pods: Vec::new().into(),
                    },
                    snapshot_decided: false,
                    streams_decided: 0,
                    events_since_snapshot: events as u64,
                    stats: stats_tx,
                    sessions: HashMap::new(),
                    next_session: 0,
                    waiters: HashMap::new(),
                    broadcast_waiters: HashMap::new(),
                    subscribers: Vec::new(),
                    delivered_seq: engine_results_recorded,
                    feed,
                    committed,
                    metrics,
                    last_prune: std::time::Instant::now(),
                    snapshot_thread,
                    snapshots: SnapshotTally::default(),
                    pod_stats: (Vec::new().into(), std::time::Instant::now()),
                    outputs: super::output::OutputStore::new(config_output.0, config_output.1),
                };
                // Recovered counts are visible as soon as `start` returns.
                core.publish_stats();
                let _ = ready_tx.send(Ok(()));
                // A panic of the core (should one ever happen) is reported like any failure.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| core.run()))
                    .unwrap_or_else(|panic| {
                        let message = panic
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic with no message".to_owned());
                        Err(CoreError::Thread(format!(
                            "the core thread panicked: {message}"
                        )))
                    });
                if let Err(e) = &result {
                    tracing::error!(error = %e, "the master stopped");
                    // Callers hear why before the journal is closed, which may take long.
                    let _ = failed_tx.send(Some(e.to_string()));
                    // Everything but the journal goes at once: waiting callers, sessions and
                    // the inbox close, so they hear the reason now, not after the journal.
                    close_failed(core.into_storage());
                } else {
                    drop(core);
                }
                // The storage is closed (or given up on) before anyone hears that the
                // master is done.
                let _ = done_tx.send(result);
            })
            .map_err(|e| CoreError::Thread(e.to_string()))?;

        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(CoreError::Thread(
                    "the core thread died during recovery".into(),
                ));
            }
        }
        // Configured group settings go through the journal like any other change.
        let mut answers = Vec::new();
        for (group, settings) in groups {
            let (reply, answer) = oneshot::channel();
            let _ = inbox_tx.send(CoreMsg::ConfigureGroup {
                group,
                settings,
                reply: reply.into(),
            });
            answers.push(answer);
        }
        for answer in answers {
            match answer.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(CoreError::Api(e)),
                Err(_) => return Err(CoreError::Stopped),
            }
        }
        Ok(Master {
            inbox: inbox_tx,
            failed: failed_rx,
            reads,
            stats: stats_rx,
            done: Some(done_rx),
            thread: Some(thread),
            max_payload_bytes,
            admission,
        })
    }
}

/// A running master. Clients talk to it through [`Master::proxy`], in-process pods connect
/// through [`Master::pod_connector`].
///
/// Dropping the handle asks the master to stop cleanly without waiting for it; prefer
/// [`Master::shutdown`].
#[derive(Debug)]
pub struct Master {
    inbox: std_mpsc::Sender<CoreMsg>,
    /// Why the core stopped on its own (`None` while it runs or after a clean shutdown).
    failed: watch::Receiver<Option<String>>,
    /// The read model and the committed-batch feed.
    reads: Arc<ReadSide>,
    stats: watch::Receiver<MasterStats>,
    done: Option<oneshot::Receiver<Result<(), CoreError>>>,
    thread: Option<JoinHandle<()>>,
    /// Bounds the messages a gRPC server of this master must accept.
    max_payload_bytes: usize,
    /// The request budgets every proxy and connector shares.
    admission: Arc<Admission>,
}

impl Master {
    /// A builder with default configuration and the system clock.
    pub fn builder() -> MasterBuilder {
        MasterBuilder::default()
    }

    /// A client handle that talks to this master in-process.
    pub fn proxy(&self) -> LocalMasterProxy {
        LocalMasterProxy::new(
            self.inbox.clone(),
            self.reads.clone(),
            self.failed.clone(),
            self.admission.clone(),
        )
    }

    /// Resolves when the master stops on its own (a journal write failed, say), with why:
    /// `"storage error: journal write failed: No space left on device"`. Never resolves for
    /// a master that runs until it is shut down. A service should stop when this resolves
    /// (and exit non-zero): the master takes no more work.
    pub fn stopped(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut failed = self.failed.clone();
        async move {
            let reason = match failed.wait_for(Option::is_some).await {
                Ok(reason) => reason.clone(),
                Err(_) => None,
            };
            match reason {
                Some(reason) => reason,
                // The core is gone without a reason: the master was shut down cleanly.
                None => std::future::pending().await,
            }
        }
    }

    /// The master's metrics (see [`MasterMetrics`]), recorded from the first call on: the
    /// read model's thread starts then, if no read started it, and counts every batch it
    /// applies after the ones committed before the call; the core times its commits.
    /// Register them in a `prometheus_client` registry to export them. (A read model that
    /// falls so far behind that it copies the state again does not count the batches the
    /// copy covers.)
    ///
    /// # Errors
    /// [`CoreError::Stopped`] when the master is not running.
    pub async fn metrics(&self) -> Result<Arc<MasterMetrics>, CoreError> {
        self.reads.metrics().await
    }

    /// Subscribes to the committed batches: every batch the master makes durable from now
    /// on, in order (see [`CommittedFeed`]). Start from [`Master::read_state`] to hold the
    /// whole state.
    pub fn committed(&self) -> CommittedFeed {
        self.reads.subscribe()
    }

    /// A copy of the committed state and the sequence number of its last event, taken
    /// between two batches. The copy itself is O(1) for the core, but its indexes are
    /// rebuilt here, on a blocking thread, in O(tasks): for catching up a feed subscriber,
    /// not for polling.
    ///
    /// # Errors
    /// [`CoreError::Stopped`] when the master is not running.
    pub async fn read_state(&self) -> Result<(u64, MasterState), CoreError> {
        let (seq, mut state) = copy_state(&self.inbox)?
            .await
            .map_err(|_| CoreError::Stopped)?;
        let state = tokio::task::spawn_blocking(move || {
            state.rebuild_indexes();
            state
        })
        .await
        .map_err(|e| CoreError::Thread(format!("rebuilding the copy's indexes: {e}")))?;
        Ok((seq, state))
    }

    /// What in-process pods connect through.
    pub fn pod_connector(&self) -> LocalPodConnector {
        LocalPodConnector::new(self.inbox.clone(), self.admission.clone())
    }

    /// Requests in flight now, as counted against `MasterConfig::max_requests_in_flight`
    /// and `MasterConfig::max_waiting_calls`.
    pub fn in_flight(&self) -> InFlight {
        self.admission.in_flight()
    }

    /// The largest task payload this master accepts (servers size their messages by it).
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// Live statistics, updated after every commit: wait on it instead of sleeping.
    pub fn stats(&self) -> watch::Receiver<MasterStats> {
        self.stats.clone()
    }

    /// Asks the core to run its timers now (useful with a manual clock).
    pub fn tick(&self) {
        let _ = self.inbox.send(CoreMsg::Tick);
    }

    /// Stops cleanly: finishes the current batch, writes a snapshot, closes the journal.
    ///
    /// # Errors
    /// The error that stopped the master earlier, if one did (e.g. a journal failure).
    pub async fn shutdown(mut self) -> Result<(), CoreError> {
        let (tx, rx) = oneshot::channel();
        let _ = self.inbox.send(CoreMsg::Shutdown { done: tx });
        let _ = rx.await;
        self.join().await
    }

    /// Stops at once, as a crash would: what is not yet committed is lost (and was never
    /// acknowledged), and no snapshot is started (one already being written is let finish,
    /// as it could have just before a crash). For fault-injection tests.
    ///
    /// # Errors
    /// The error that stopped the master earlier, if one did.
    #[cfg(any(test, feature = "testing"))]
    pub async fn halt(mut self) -> Result<(), CoreError> {
        let _ = self.inbox.send(CoreMsg::Halt);
        self.join().await
    }

    async fn join(&mut self) -> Result<(), CoreError> {
        let result = match self.done.take() {
            Some(done) => done
                .await
                .unwrap_or_else(|_| Err(CoreError::Thread("the core thread panicked".into()))),
            None => Ok(()),
        };
        if let Some(thread) = self.thread.take() {
            // The thread has sent its result and only returns now.
            let _ = thread.join();
        }
        result
    }
}

/// How long a master that failed waits for its journal to close.
const FAILED_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Closes the journal of a core that failed. Storage that failed may never finish closing
/// (sled 0.34 can wait forever for a write that failed on a full disk), so this closes it on
/// a thread of its own and gives up after [`FAILED_CLOSE_WAIT`], leaving that thread behind.
fn close_failed<S: Send + 'static>(storage: S) {
    let (closed_tx, closed_rx) = std_mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("mawex-close".into())
        .spawn(move || {
            drop(storage);
            let _ = closed_tx.send(());
        });
    match spawned {
        Ok(_) => {
            if closed_rx.recv_timeout(FAILED_CLOSE_WAIT).is_err() {
                tracing::error!(
                    wait_s = FAILED_CLOSE_WAIT.as_secs(),
                    "the failed journal did not close in time; it stays open (and its \
                     directory locked) until this process exits"
                );
            }
        }
        Err(e) => tracing::error!(error = %e, "could not start a thread to close the journal"),
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let (tx, _rx) = oneshot::channel();
            let _ = self.inbox.send(CoreMsg::Shutdown { done: tx });
        }
    }
}
