//! The pod runtime: hosts workers of one or more groups, runs leased attempts in a sandbox,
//! heartbeats, reconnects, and leaves cleanly.
//!
//! A pod needs only a [`PodConnector`] to reach its master (in-process or over gRPC) and a
//! sandbox set to run attempts in; it links no storage and no master code.

mod config;
mod error;
mod usage;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::BackoffBuilder;
use mawex_api::pod::{
    Assignment, AttemptRef, MasterMessage, PodConnector, PodHello, PodMessage, PodOutbox,
    PodSession,
};
use mawex_api::{ApiError, Attempt, PodId, TaskError, TaskId};
use mawex_sandbox::{SandboxSet, TaskInput};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use config::PodConfig;
pub use error::WorkerError;

/// An attempt the pod holds: queued, running, or finished with its result not yet delivered.
struct Held {
    attempt: Attempt,
    /// Set once the attempt started.
    cancel: Option<CancellationToken>,
}

/// What the pod holds, and the last `Assign` batch of this session that it has taken in:
/// kept under one lock so a heartbeat reports both consistently.
#[derive(Default)]
struct Holdings {
    held: HashMap<TaskId, Held>,
    received: u64,
}

/// A session that lasted this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(1);
/// After `Leave`, how long the pod waits for the master to close the session (so its last
/// messages are delivered before the process may exit).
const LEAVE_ACK_WAIT: Duration = Duration::from_secs(2);

/// After the grace period, interrupted attempts get this long to end before their executors
/// are aborted.
const INTERRUPT_DEADLINE: Duration = Duration::from_secs(5);

/// Lock order, where more than one is taken: `reports`, then `outbox`, then `holdings`.
struct Shared {
    config: PodConfig,
    sandboxes: SandboxSet,
    connector: Arc<dyn PodConnector>,
    queue_tx: mpsc::UnboundedSender<Assignment>,
    queue_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Assignment>>,
    holdings: Mutex<Holdings>,
    outbox: Mutex<Option<Arc<dyn PodOutbox>>>,
    /// Reports of attempts that ended, kept until the master acknowledges them (or, with a
    /// master that does not, until sent). Their attempts stay in `holdings` meanwhile, so
    /// a hello claims them and the reports go again after a reconnect: a result sent just
    /// before the master crashed is not lost.
    reports: Mutex<Vec<(AttemptRef, PodMessage)>>,
    /// The master of the current session acknowledges reports.
    acks: AtomicBool,
    /// Executors take no more work once this is cancelled.
    draining: CancellationToken,
    /// Set when shutdown interrupts running attempts: they are returned, not failed.
    interrupted: AtomicBool,
    executed: AtomicU64,
    usage: Mutex<usage::UsageMeter>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data stays consistent at every unlock point, so a panic elsewhere does not taint it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn hello(&self) -> PodHello {
        let mut hello = PodHello::new(self.config.id.clone(), self.config.groups.clone());
        hello.slots = self.config.slots;
        hello.prefetch = self.config.prefetch;
        hello.labels = self.config.labels.clone();
        hello.address = self.config.address.clone();
        hello.holding = held_refs(&lock(&self.holdings));
        hello
    }

    /// Sends if a session is open; for messages that lose nothing when dropped.
    fn send(&self, message: PodMessage) {
        let outbox = lock(&self.outbox).clone();
        if let Some(outbox) = outbox {
            let _ = outbox.send(message);
        }
    }

    /// Reports how attempt `r` ended. The attempt leaves `holdings` only once the report is
    /// sent, so neither a heartbeat nor a hello can claim it is gone while its result waits.
    fn report(&self, r: AttemptRef, message: PodMessage) {
        let mut reports = lock(&self.reports);
        let outbox = lock(&self.outbox).clone();
        let sent = outbox.is_some_and(|o| o.send(message.clone()).is_ok());
        if sent && !self.acks.load(Ordering::SeqCst) {
            self.release(r);
        } else {
            reports.push((r, message));
        }
    }

    /// The master made these reports durable (or found them stale): forget them.
    fn acked(&self, attempts: &[AttemptRef]) {
        let mut reports = lock(&self.reports);
        reports.retain(|(r, _)| !attempts.contains(r));
        for r in attempts {
            self.release(*r);
        }
    }

    fn release(&self, r: AttemptRef) {
        let mut holdings = lock(&self.holdings);
        if holdings
            .held
            .get(&r.task)
            .is_some_and(|h| h.attempt == r.attempt)
        {
            holdings.held.remove(&r.task);
        }
    }

    /// Opens the session: delivers what waited, then routes new reports to `outbox`.
    fn attach(&self, outbox: Arc<dyn PodOutbox>, acks: bool) {
        let mut reports = lock(&self.reports);
        self.acks.store(acks, Ordering::SeqCst);
        let waiting = std::mem::take(&mut *reports);
        for (r, message) in waiting {
            if outbox.send(message.clone()).is_ok() && !acks {
                self.release(r);
            } else {
                reports.push((r, message));
            }
        }
        lock(&self.holdings).received = 0;
        *lock(&self.outbox) = Some(outbox);
    }

    fn detach(&self) {
        let _reports = lock(&self.reports);
        *lock(&self.outbox) = None;
    }

    fn accept(&self, batch: u64, assignments: Vec<Assignment>) {
        let mut holdings = lock(&self.holdings);
        for a in assignments {
            let held = Held {
                attempt: a.attempt.attempt,
                cancel: None,
            };
            if let Some(old) = holdings.held.insert(a.attempt.task, held) {
                // A newer attempt replaces an older one the master gave up on: stop the old.
                if let Some(token) = old.cancel {
                    token.cancel();
                }
            }
            // The receiver lives as long as `self`.
            let _ = self.queue_tx.send(a);
        }
        holdings.received = holdings.received.max(batch);
    }

    fn cancel(&self, r: AttemptRef) {
        let mut holdings = lock(&self.holdings);
        let Some(held) = holdings.held.get(&r.task) else {
            return;
        };
        if held.attempt != r.attempt {
            return;
        }
        match &held.cancel {
            Some(token) => token.cancel(),
            // Still queued: forget it; the executor skips it.
            None => {
                holdings.held.remove(&r.task);
            }
        }
    }

    fn interrupt_all(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        for held in lock(&self.holdings).held.values() {
            if let Some(token) = &held.cancel {
                token.cancel();
            }
        }
    }

    /// Takes back everything queued and not started, for handing back to the master.
    async fn take_queued(&self) -> Vec<AttemptRef> {
        let mut queue = self.queue_rx.lock().await;
        let mut holdings = lock(&self.holdings);
        let mut refs = Vec::new();
        while let Ok(a) = queue.try_recv() {
            let queued = holdings
                .held
                .get(&a.attempt.task)
                .is_some_and(|h| h.attempt == a.attempt.attempt && h.cancel.is_none());
            if queued {
                holdings.held.remove(&a.attempt.task);
                refs.push(a.attempt);
            }
        }
        refs
    }

    async fn run_one(&self, a: Assignment) {
        let token = CancellationToken::new();
        {
            let mut holdings = lock(&self.holdings);
            match holdings.held.get_mut(&a.attempt.task) {
                Some(held) if held.attempt == a.attempt.attempt => {
                    held.cancel = Some(token.clone());
                }
                // Cancelled or replaced while queued.
                _ => return,
            }
        }
        // An interrupt that came before the token was registered must still reach it.
        if self.interrupted.load(Ordering::SeqCst) {
            token.cancel();
        }
        let r = a.attempt;
        let result = match self
            .sandboxes
            .select(&a.spec.group, a.spec.sandbox.as_deref())
        {
            Ok(sandbox) => {
                let mut input = TaskInput::new(r, a.spec);
                input.env = a.env;
                input.limits = input.limits.or(self.config.default_limits.clone());
                sandbox.run(input, token).await
            }
            Err(e) => Err(e),
        };
        let limit = self.config.max_output_bytes;
        let result = result.map_err(TaskError::from).and_then(|out| {
            if out.len() > limit {
                Err(TaskError::new(
                    mawex_api::ErrorKind::Sandbox,
                    format!(
                        "output of {} bytes exceeds the pod's limit of {limit}",
                        out.len()
                    ),
                )
                .with_retry(mawex_api::RetryHint::Never))
            } else {
                Ok(out)
            }
        });
        self.executed.fetch_add(1, Ordering::Relaxed);
        let message = match result {
            Err(e)
                if e.kind == mawex_api::ErrorKind::Cancelled
                    && self.interrupted.load(Ordering::SeqCst) =>
            {
                PodMessage::Returned { attempts: vec![r] }
            }
            outcome => PodMessage::Finished {
                attempt: r,
                outcome,
            },
        };
        self.report(r, message);
    }

    fn heartbeat(&self) {
        let (holding, received) = {
            let holdings = lock(&self.holdings);
            (held_refs(&holdings), holdings.received)
        };
        let usage = lock(&self.usage).sample();
        self.send(PodMessage::Heartbeat {
            holding,
            received,
            usage,
        });
    }

    /// Interrupts running attempts and waits for the executors, aborting them if interrupted
    /// attempts do not end in time.
    async fn stop_executors(&self, executors: Vec<JoinHandle<()>>) {
        self.draining.cancel();
        self.interrupt_all();
        let aborts: Vec<AbortHandle> = executors.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(INTERRUPT_DEADLINE, futures::future::join_all(executors))
            .await
            .is_err()
        {
            warn!(pod = %self.config.id, "interrupted attempts did not end in time; aborting them");
            aborts.iter().for_each(AbortHandle::abort);
        }
    }
}

fn held_refs(holdings: &Holdings) -> Vec<AttemptRef> {
    holdings
        .held
        .iter()
        .map(|(&task, h)| AttemptRef {
            task,
            attempt: h.attempt,
        })
        .collect()
}

async fn executor(shared: Arc<Shared>) {
    loop {
        let next = {
            let mut queue = shared.queue_rx.lock().await;
            tokio::select! {
                biased;
                () = shared.draining.cancelled() => None,
                a = queue.recv() => a,
            }
        };
        let Some(a) = next else {
            return;
        };
        shared.run_one(a).await;
    }
}

/// How one session ended.
enum SessionEnd {
    /// The master closed it; connect again.
    Lost,
    /// The pod is stopping and has left.
    Left,
}

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
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            config,
            sandboxes,
            connector,
            queue_tx,
            queue_rx: tokio::sync::Mutex::new(queue_rx),
            holdings: Mutex::new(Holdings::default()),
            outbox: Mutex::new(None),
            reports: Mutex::new(Vec::new()),
            acks: AtomicBool::new(false),
            draining: CancellationToken::new(),
            interrupted: AtomicBool::new(false),
            executed: AtomicU64::new(0),
            usage: Mutex::new(usage::UsageMeter::new()),
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

fn reconnect_delays(max: Duration) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

async fn run(shared: Arc<Shared>, stop: CancellationToken, executors: Vec<JoinHandle<()>>) {
    let max_delay = shared.config.reconnect_max_delay;
    let mut delays = reconnect_delays(max_delay);
    let mut executors = Some(executors);
    while !stop.is_cancelled() {
        let connected = tokio::select! {
            () = stop.cancelled() => break,
            r = shared.connector.connect(shared.hello()) => r,
        };
        let session = match connected {
            Ok(session) => session,
            Err(e) => {
                let delay = delays.next().unwrap_or(max_delay);
                match e {
                    ApiError::InvalidArgument(_)
                    | ApiError::Unauthenticated(_)
                    | ApiError::PermissionDenied(_) => {
                        warn!(pod = %shared.config.id, error = %e, "master refused the pod")
                    }
                    _ => {
                        debug!(pod = %shared.config.id, error = %e, ?delay, "cannot reach the master; retrying")
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        info!(pod = %shared.config.id, session = session.welcome.session, "pod connected");
        let opened = tokio::time::Instant::now();
        match serve(&shared, session, &stop, &mut executors).await {
            SessionEnd::Left => return,
            SessionEnd::Lost => {
                shared.detach();
                warn!(pod = %shared.config.id, "session lost; reconnecting");
                // A session that ends at once (the id registered elsewhere, the master
                // refusing us) must not turn into a tight reconnect loop.
                if opened.elapsed() >= STABLE_SESSION {
                    delays = reconnect_delays(max_delay);
                } else {
                    let delay = delays.next().unwrap_or(max_delay);
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
    // Stopped while disconnected: nobody to hand work back to; stop the executors.
    if let Some(executors) = executors {
        shared.stop_executors(executors).await;
    }
}

async fn serve(
    shared: &Arc<Shared>,
    session: PodSession,
    stop: &CancellationToken,
    executors: &mut Option<Vec<JoinHandle<()>>>,
) -> SessionEnd {
    let PodSession {
        welcome,
        outbox,
        mut inbox,
        ..
    } = session;
    shared.attach(outbox, welcome.acks_reports);
    // A zero interval from a remote master would make `interval` panic.
    let period = welcome.heartbeat_interval.max(Duration::from_millis(1));
    let mut heartbeat = tokio::time::interval(period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = inbox.recv() => match message {
                Some(MasterMessage::Assign { batch, assignments, more }) => {
                    // A batch counts as received with its last part.
                    shared.accept(if more { batch.saturating_sub(1) } else { batch }, assignments);
                }
                Some(MasterMessage::Cancel(r)) => shared.cancel(r),
                Some(MasterMessage::Ack(attempts)) => shared.acked(&attempts),
                Some(other) => debug!(message = ?other, "unsupported master message ignored"),
                None => return SessionEnd::Lost,
            },
            _ = heartbeat.tick() => shared.heartbeat(),
            () = stop.cancelled() => break,
        }
    }

    // Leaving: no new leases, hand back what has not started.
    shared.send(PodMessage::Drain);
    shared.draining.cancel();
    let queued = shared.take_queued().await;
    if !queued.is_empty() {
        shared.send(PodMessage::Returned { attempts: queued });
    }

    // Let running attempts finish, keep heartbeating, interrupt after the grace period.
    let executors = executors.take().unwrap_or_default();
    let aborts: Vec<AbortHandle> = executors.iter().map(JoinHandle::abort_handle).collect();
    let all = futures::future::join_all(executors);
    tokio::pin!(all);
    let grace = tokio::time::sleep(shared.config.shutdown_grace);
    tokio::pin!(grace);
    let hard = tokio::time::sleep(shared.config.shutdown_grace + INTERRUPT_DEADLINE);
    tokio::pin!(hard);
    let mut interrupted = false;
    let mut inbox_open = true;
    loop {
        tokio::select! {
            _ = &mut all => break,
            _ = heartbeat.tick() => shared.heartbeat(),
            () = &mut grace, if !interrupted => {
                interrupted = true;
                info!(pod = %shared.config.id, "grace period over; interrupting running attempts");
                shared.interrupt_all();
            }
            () = &mut hard => {
                warn!(pod = %shared.config.id, "interrupted attempts did not end in time; aborting them");
                aborts.iter().for_each(AbortHandle::abort);
                break;
            }
            message = inbox.recv(), if inbox_open => match message {
                Some(MasterMessage::Cancel(r)) => shared.cancel(r),
                Some(MasterMessage::Ack(attempts)) => shared.acked(&attempts),
                // Leases that crossed the drain notice go straight back.
                Some(MasterMessage::Assign { assignments, .. }) => {
                    let attempts = assignments.iter().map(|a| a.attempt).collect();
                    shared.send(PodMessage::Returned { attempts });
                }
                Some(_) => {}
                None => inbox_open = false,
            },
        }
    }
    shared.send(PodMessage::Leave);
    shared.detach();
    // The master closes the session once it has processed `Leave`; until then the last
    // results and returns may still be in flight.
    if inbox_open {
        let _ = tokio::time::timeout(LEAVE_ACK_WAIT, async {
            while inbox.recv().await.is_some() {}
        })
        .await;
    }
    info!(pod = %shared.config.id, "pod left");
    SessionEnd::Left
}
