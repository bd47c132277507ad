//! What a pod's tasks share: the attempts it holds, reports not yet acknowledged, the
//! outbox of the current session, and the executors that run attempts in the sandboxes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mawex_api::pod::{Assignment, AttemptRef, PodConnector, PodHello, PodMessage, PodOutbox};
use mawex_api::{Attempt, OutputLine, TaskError, TaskId};
use mawex_sandbox::{SandboxSet, TaskInput};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::PodConfig;
use crate::output::Outputs;
use crate::queue::LeaseQueue;
use crate::usage;

/// An attempt the pod holds: queued, running, or finished with its result not yet delivered.
pub(crate) struct Held {
    pub(crate) attempt: Attempt,
    /// Set once the attempt started.
    pub(crate) cancel: Option<CancellationToken>,
}

/// What the pod holds, and the last `Assign` batch of this session that it has taken in:
/// kept under one lock so a heartbeat reports both consistently.
#[derive(Default)]
pub(crate) struct Holdings {
    pub(crate) held: HashMap<TaskId, Held>,
    pub(crate) received: u64,
}

/// After the grace period, interrupted attempts get this long to end before their executors
/// are aborted.
pub(crate) const INTERRUPT_DEADLINE: Duration = Duration::from_secs(5);

/// The most bytes of output lines a pod holds for attempts that ended while no master was
/// attached (each attempt's own lines are bounded by its buffer already).
pub(crate) const HELD_OUTPUT_BYTES: usize = 4 * 1024 * 1024;

/// Lock order, where more than one is taken: `reports`, then `outbox`, then `holdings`.
pub(crate) struct Shared {
    pub(crate) config: PodConfig,
    pub(crate) sandboxes: SandboxSet,
    pub(crate) connector: Arc<dyn PodConnector>,
    /// Leases not started yet.
    pub(crate) queue: LeaseQueue,
    pub(crate) holdings: Mutex<Holdings>,
    pub(crate) outbox: Mutex<Option<Arc<dyn PodOutbox>>>,
    /// Reports of attempts that ended, kept until the master acknowledges them (or, with a
    /// master that does not, until sent). Their attempts stay in `holdings` meanwhile, so
    /// a hello claims them and the reports go again after a reconnect: a result sent just
    /// before the master crashed is not lost.
    pub(crate) reports: Mutex<Vec<(AttemptRef, PodMessage)>>,
    /// The master of the current session acknowledges reports.
    pub(crate) acks: AtomicBool,
    /// Executors take no more work once this is cancelled.
    pub(crate) draining: CancellationToken,
    /// A master told the pod to drain: it takes no new work until it restarts, and says so
    /// in every hello.
    pub(crate) drained: AtomicBool,
    /// Set when shutdown interrupts running attempts: they are returned, not failed.
    pub(crate) interrupted: AtomicBool,
    pub(crate) executed: AtomicU64,
    /// The highest term a master welcomed this pod in: a session of a lower one is a
    /// deposed leader's, and is refused.
    pub(crate) highest_term: AtomicU64,
    pub(crate) usage: Mutex<usage::UsageMeter>,
    /// The live output of running attempts, waiting to be sent.
    pub(crate) outputs: Arc<Outputs>,
    /// The master of the current session takes live output.
    pub(crate) takes_output: AtomicBool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data stays consistent at every unlock point, so a panic elsewhere does not taint it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn hello(&self) -> PodHello {
        let mut hello = PodHello::new(self.config.id.clone(), self.config.groups.clone());
        hello.slots = self.config.slots;
        // An adaptive pod sends its cap apart, and a fixed queue of 0: a master that does
        // not size queues then dispatches to it strictly.
        if self.config.adaptive_prefetch {
            hello.adaptive_prefetch = self.config.prefetch;
        } else {
            hello.prefetch = self.config.prefetch;
        }
        hello.labels = self.config.labels.clone();
        hello.address = self.config.address.clone();
        hello.holding = held_refs(&lock(&self.holdings));
        hello.draining = self.drained.load(Ordering::SeqCst);
        hello
    }

    /// Sends if a session is open; for messages that lose nothing when dropped.
    pub(crate) fn send(&self, message: PodMessage) {
        let outbox = lock(&self.outbox).clone();
        if let Some(outbox) = outbox {
            let _ = outbox.send(message);
        }
    }

    /// Reports how attempt `r` ended. The attempt leaves `holdings` only once the report is
    /// sent, so neither a heartbeat nor a hello can claim it is gone while its result waits.
    pub(crate) fn report(&self, r: AttemptRef, message: PodMessage) {
        let mut reports = lock(&self.reports);
        let outbox = lock(&self.outbox).clone();
        let sent = outbox.is_some_and(|o| o.send(message.clone()).is_ok());
        if sent && !self.acks.load(Ordering::SeqCst) {
            self.release(r);
        } else {
            reports.push((r, message));
        }
    }

    /// Sends the last lines of attempt `r`, which ended: if no master is attached, they wait
    /// with its report and go before it after the reconnect (the master drops lines it
    /// has, by their numbers), up to [`HELD_OUTPUT_BYTES`] in all; past that they are
    /// dropped, which a reader sees as missed lines. They never release the attempt: its
    /// result does.
    pub(crate) fn report_output(&self, r: AttemptRef, message: PodMessage) {
        let mut reports = lock(&self.reports);
        let outbox = lock(&self.outbox).clone();
        if outbox.is_some_and(|o| o.send(message.clone()).is_ok()) {
            return;
        }
        let held: usize = reports.iter().map(|(_, m)| output_bytes(m)).sum();
        if held.saturating_add(output_bytes(&message)) <= HELD_OUTPUT_BYTES {
            reports.push((r, message));
        }
    }

    /// The master made these reports durable (or found them stale): forget them.
    pub(crate) fn acked(&self, attempts: &[AttemptRef]) {
        let mut reports = lock(&self.reports);
        reports.retain(|(r, _)| !attempts.contains(r));
        for r in attempts {
            self.release(*r);
        }
    }

    pub(crate) fn release(&self, r: AttemptRef) {
        let mut holdings = lock(&self.holdings);
        if holdings
            .held
            .get(&r.task)
            .is_some_and(|h| h.attempt == r.attempt)
        {
            holdings.held.remove(&r.task);
        }
    }

    /// Sends a tick's share of the live output that waits, if the master takes it.
    pub(crate) fn send_output_tick(&self) {
        let takes = self.takes_output.load(Ordering::SeqCst);
        self.outputs.send_tick(|message| {
            if takes {
                self.send(message);
            }
        });
    }

    /// Opens the session: delivers what waited, then routes new reports to `outbox`.
    pub(crate) fn attach(&self, outbox: Arc<dyn PodOutbox>, acks: bool) {
        let mut reports = lock(&self.reports);
        self.acks.store(acks, Ordering::SeqCst);
        let waiting = std::mem::take(&mut *reports);
        // Set from this session's welcome before it is attached.
        let takes_output = self.takes_output.load(Ordering::SeqCst);
        for (r, message) in waiting {
            let output = matches!(message, PodMessage::Output { .. });
            if output && !takes_output {
                continue;
            }
            match outbox.send(message.clone()) {
                // Lines sent are done with; they never release the attempt.
                Ok(()) if output => {}
                Ok(()) if !acks => self.release(r),
                _ => reports.push((r, message)),
            }
        }
        lock(&self.holdings).received = 0;
        *lock(&self.outbox) = Some(outbox);
    }

    pub(crate) fn detach(&self) {
        let _reports = lock(&self.reports);
        *lock(&self.outbox) = None;
    }

    pub(crate) fn accept(&self, batch: u64, assignments: Vec<Assignment>) {
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
            self.queue.push(a);
        }
        holdings.received = holdings.received.max(batch);
    }

    pub(crate) fn cancel(&self, r: AttemptRef) {
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

    pub(crate) fn interrupt_all(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        for held in lock(&self.holdings).held.values() {
            if let Some(token) = &held.cancel {
                token.cancel();
            }
        }
    }

    /// Takes back everything queued and not started, for handing back to the master. An
    /// executor that took a lease just before is not stopped by it: it sees the pod drained
    /// (or leaving) and hands that lease back itself, or has started it.
    pub(crate) fn take_queued(&self) -> Vec<AttemptRef> {
        let queued = self.queue.take_all();
        let mut holdings = lock(&self.holdings);
        queued
            .iter()
            .filter(|a| unqueue(&mut holdings, a))
            .map(|a| a.attempt)
            .collect()
    }

    /// Hands back an attempt taken from the queue without starting it.
    pub(crate) fn give_back(&self, a: Assignment) {
        if unqueue(&mut lock(&self.holdings), &a) {
            self.send(PodMessage::Returned {
                attempts: vec![a.attempt],
            });
        }
    }

    pub(crate) async fn run_one(&self, a: Assignment) {
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
                input.inputs = a.inputs;
                input.log = self.outputs.handle(r);
                input.limits = input
                    .limits
                    .or(self.config.default_limits.clone())
                    .at_most(&self.config.max_limits);
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
        // Its last lines go before its result, so that the master still holds its lease.
        let takes = self.takes_output.load(Ordering::SeqCst);
        self.outputs.finish(r, |message| {
            if takes {
                self.report_output(r, message);
            }
        });
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

    pub(crate) fn heartbeat(&self) {
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
    pub(crate) async fn stop_executors(&self, executors: Vec<JoinHandle<()>>) {
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

/// The bytes of output lines `message` holds (none if it is not output).
fn output_bytes(message: &PodMessage) -> usize {
    match message {
        PodMessage::Output { lines, .. } => lines.iter().map(OutputLine::size).sum(),
        _ => 0,
    }
}

/// Forgets `a` if it is held and has not started (nor been cancelled): true if it was.
fn unqueue(holdings: &mut Holdings, a: &Assignment) -> bool {
    let queued = holdings
        .held
        .get(&a.attempt.task)
        .is_some_and(|h| h.attempt == a.attempt.attempt && h.cancel.is_none());
    if queued {
        holdings.held.remove(&a.attempt.task);
    }
    queued
}

pub(crate) fn held_refs(holdings: &Holdings) -> Vec<AttemptRef> {
    holdings
        .held
        .iter()
        .map(|(&task, h)| AttemptRef {
            task,
            attempt: h.attempt,
        })
        .collect()
}

pub(crate) async fn executor(shared: Arc<Shared>) {
    loop {
        let Some(a) = shared.queue.next(&shared.draining).await else {
            return;
        };
        // Told to drain, or leaving, while this lease waited in the queue (or while the
        // session handed the rest back): it goes back too, not run.
        if shared.drained.load(Ordering::SeqCst) || shared.draining.is_cancelled() {
            shared.give_back(a);
            continue;
        }
        shared.run_one(a).await;
    }
}
