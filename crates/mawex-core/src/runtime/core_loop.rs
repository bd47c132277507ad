//! The one thread that owns the master's state: group commit and delivery.
//!
//! Each turn: wait for a message (or the next lease deadline), drain everything queued,
//! decide it all (events are applied in memory as they are decided), run timers and
//! dispatch, hand the whole batch to the journal (one record, one flush), and only once it
//! is durable answer clients, send assignments and publish results. When more requests
//! are already waiting, the journal's thread writes batch N while the core decides batch
//! N+1 (otherwise the core writes it itself): what N lets out is gathered from the state
//! as N left it, before N+1 is decided, and leaves once N is durable and before N+1 goes
//! to the journal. So nothing leaves before it is durable, and the time a batch spends in
//! the journal is not time the core stops deciding. A journal error stops the core: the
//! in-memory state may be ahead of the disk, and the disk is the truth on restart.
//!
//! The core is a plain OS thread, not a tokio task: it blocks waiting for its inbox or for
//! the journal, and blocks nothing else meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use mawex_api::pod::{MasterMessage, Welcome};
use mawex_api::{ApiError, BroadcastId, BroadcastView, ResultCursor, TaskId, TaskResult};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use super::config::{MasterConfig, MasterStats};
use super::deliver::Outgoing;
use super::feed::CommittedBatch;
use super::journal_thread::JournalThread;
use super::messages::{CoreMsg, Reply};
use super::snapshots::{SnapshotThread, Written};
use super::streams::Subscriber;
use crate::clock::Clock;
use crate::engine::{Engine, Output};
use crate::error::CoreError;
use crate::journal::Journal;
use crate::state::{Event, MasterState};

/// The most messages decided in one batch; bounds the latency of one turn.
const MAX_BATCH_MESSAGES: usize = 16 * 1024;
/// The longest the loop sleeps without checking timers.
const MAX_IDLE: Duration = Duration::from_millis(250);

pub(super) type Deferred = Box<dyn FnOnce() + Send>;

enum Stop {
    Clean(oneshot::Sender<()>),
    Crash,
}

pub(crate) struct CoreLoop<J: Journal> {
    pub(crate) engine: Engine,
    /// The journal, with a thread that writes one batch while the core decides the next.
    pub(crate) journal: JournalThread<J>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: MasterConfig,
    pub(crate) inbox: Receiver<CoreMsg>,
    /// The sequence number of the last event decided (durable once its batch is out).
    pub(crate) last_seq: u64,
    /// What the stats show: the last batch let out.
    pub(crate) released: Released,
    /// A batch decided and not yet let out holds a snapshot to take: no other is due.
    pub(crate) snapshot_decided: bool,
    /// Result streams opened by batches decided and not yet let out.
    pub(crate) streams_decided: usize,
    pub(crate) events_since_snapshot: u64,
    pub(crate) stats: watch::Sender<MasterStats>,
    pub(crate) sessions: HashMap<u64, mpsc::Sender<MasterMessage>>,
    pub(crate) next_session: u64,
    pub(crate) waiters: HashMap<TaskId, Vec<Reply<TaskResult>>>,
    /// Callers waiting for a broadcast to finish.
    pub(crate) broadcast_waiters: HashMap<BroadcastId, Vec<Reply<BroadcastView>>>,
    pub(crate) subscribers: Vec<Subscriber>,
    /// Results up to this stream position have gone to their waiters and streams.
    pub(crate) delivered_seq: u64,
    /// Where committed batches are published.
    pub(crate) feed: broadcast::Sender<Arc<CommittedBatch>>,
    /// The last durable sequence number, for readers outside the core thread.
    pub(crate) committed: Arc<AtomicU64>,
    /// The metrics, once asked for: commits are timed only then.
    pub(crate) metrics: Arc<std::sync::OnceLock<Arc<super::MasterMetrics>>>,
    /// When abandoned waiters were last dropped.
    pub(crate) last_prune: std::time::Instant,
    /// Where snapshots are written, if the journal can take them from another thread.
    pub(crate) snapshot_thread: Option<SnapshotThread>,
    /// For the stats.
    pub(crate) snapshots: SnapshotTally,
    /// The pods' part of the stats, and when it was built: O(pods) to build, so a batch of
    /// heartbeats alone reuses it (see [`POD_STATS_EVERY`]).
    pub(crate) pod_stats: (Arc<[crate::PodStats]>, std::time::Instant),
    /// The live output of attempts (volatile, bounded).
    pub(crate) outputs: super::output::OutputStore,
}

/// The stats' view of a batch, as the batch left the state.
pub(crate) struct Released {
    /// Its last event.
    pub(crate) last_seq: u64,
    /// Tasks per state.
    pub(crate) counts: crate::state::TaskCounts,
    /// The pods' part of the stats.
    pub(crate) pods: Arc<[crate::PodStats]>,
}

/// A batch decided, numbered from `first_seq`, and what leaves once it is durable.
struct Pending {
    first_seq: u64,
    events: Arc<Vec<Event>>,
    outgoing: Outgoing,
    /// What the stats show once it is out.
    stats: Released,
    /// Result streams the batch opens.
    streams: usize,
    /// Callers that asked for a copy of the state.
    copies: Vec<oneshot::Sender<(u64, MasterState)>>,
    /// The state as the batch left it, taken for the copies or a snapshot.
    copy: Option<MasterState>,
    /// Whether a snapshot of `copy` is to be taken once the batch is durable.
    snapshot_due: bool,
    now: mawex_api::Timestamp,
}

/// How stale the pods' reported usage may be in the stats.
const POD_STATS_EVERY: Duration = Duration::from_secs(1);

/// What the snapshots so far cost.
#[derive(Debug, Default)]
pub(crate) struct SnapshotTally {
    /// Snapshots stored.
    written: u64,
    /// The longest a snapshot held the core thread.
    longest_pause: Duration,
    /// The longest a snapshot took to encode and store.
    longest_write: Duration,
}

fn no_broadcast(id: BroadcastId) -> ApiError {
    ApiError::NotFound(format!("broadcast #{id}"))
}

/// How often waiters whose callers gave up are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

impl<J: Journal> CoreLoop<J> {
    /// Runs until shutdown, halt, or a journal failure.
    /// Drops everything but the storage (waiting callers, sessions, the inbox) and returns
    /// it: the journal, and the snapshot thread, which may be writing to it.
    pub(crate) fn into_storage(mut self) -> (JournalThread<J>, Option<SnapshotThread>) {
        let thread = self.snapshot_thread.take();
        (self.journal, thread)
    }

    pub(crate) fn run(&mut self) -> Result<(), CoreError> {
        let mut batch: Vec<CoreMsg> = Vec::new();
        // The batch the journal is writing, with what leaves once it is durable.
        let mut writing: Option<Pending> = None;
        loop {
            if writing.is_some() {
                // Decide what came meanwhile while the journal writes; with nothing new,
                // wait for the write instead.
                self.take_queued(&mut batch);
                if batch.is_empty() {
                    if let Some(pending) = writing.take() {
                        self.finish(pending)?;
                    }
                    self.after_turn()?;
                    continue;
                }
            } else if batch.is_empty() {
                match self.inbox.recv_timeout(self.wait_time()) {
                    Ok(msg) => batch.push(msg),
                    Err(RecvTimeoutError::Timeout) => {}
                    // Every handle, proxy and pod link is gone: nobody can ask anything more.
                    Err(RecvTimeoutError::Disconnected) => return self.stop_cleanly(),
                }
                self.take_queued(&mut batch);
            }
            let now = self.clock.now();
            let mut out = Output::default();
            let mut deferred: Vec<Deferred> = Vec::new();
            let mut new_subscribers: Vec<(Subscriber, Option<ResultCursor>, Reply<()>)> =
                Vec::new();
            let mut stop = None;
            let mut copies = Vec::new();
            for msg in batch.drain(..) {
                match msg {
                    CoreMsg::Halt => {
                        stop = Some(Stop::Crash);
                        break;
                    }
                    CoreMsg::Shutdown { done } => stop = Some(Stop::Clean(done)),
                    CoreMsg::CopyState { reply } => copies.push(reply),
                    CoreMsg::Subscribe {
                        group,
                        after,
                        results,
                        feed,
                        reply,
                    } => {
                        let limit = self.config.max_result_streams;
                        let opening = self.streams_decided + new_subscribers.len();
                        if self.subscribers.len() + opening >= limit {
                            self.subscribers.retain(|s| !s.results.is_closed());
                        }
                        if self.subscribers.len() + opening >= limit {
                            // Refusing touches no state, so it needs no commit to wait for.
                            let _ = reply.send(Err(ApiError::ResourceExhausted(format!(
                                "{limit} result streams are open, the most this master \
                                 serves (max_result_streams); close one and try again"
                            ))));
                        } else {
                            let sub = Subscriber {
                                group,
                                results,
                                feed,
                            };
                            new_subscribers.push((sub, after, reply));
                        }
                    }
                    other => self.handle(other, now, &mut out, &mut deferred),
                }
            }
            if matches!(stop, Some(Stop::Crash)) {
                info!("master halted without committing its last batch");
                return Ok(());
            }
            self.engine.tick(now, &mut out);
            self.engine.settle(now, &mut out);
            if stop.is_none() {
                self.engine.dispatch(now, &mut out);
            }
            let pending = self.decided(out, deferred, new_subscribers, copies, now)?;
            // The last batch is durable and out before this one goes to the journal: writes
            // and deliveries keep the order of decisions.
            if let Some(last) = writing.take() {
                self.finish(last)?;
            }
            if !pending.events.is_empty() {
                // With more to decide already waiting, the journal's thread writes this
                // batch meanwhile; with nothing, the core writes it itself (it would only
                // wait for the thread).
                let more_waiting = stop.is_none() && {
                    self.take_queued(&mut batch);
                    !batch.is_empty()
                };
                if !more_waiting {
                    let took = self
                        .journal
                        .append_here(pending.first_seq, &pending.events)
                        .inspect_err(|e| {
                            error!(error = %e, "journal append failed; the master stops");
                        })?;
                    self.committed_metrics(took, pending.events.len());
                    self.release_durable(pending)?;
                } else {
                    self.journal
                        .append(pending.first_seq, pending.events.clone())?;
                    writing = Some(pending);
                }
            } else {
                self.release_durable(pending)?;
            }
            if let Some(Stop::Clean(done)) = stop {
                self.stop_cleanly()?;
                let _ = done.send(());
                return Ok(());
            }
            self.after_turn()?;
        }
    }

    /// Moves whatever the inbox holds into `batch`, up to [`MAX_BATCH_MESSAGES`].
    fn take_queued(&mut self, batch: &mut Vec<CoreMsg>) {
        while batch.len() < MAX_BATCH_MESSAGES {
            match self.inbox.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(_) => break,
            }
        }
    }

    /// Numbers the batch just decided and gathers, from the state as the batch left it,
    /// everything that leaves once it is durable.
    fn decided(
        &mut self,
        mut out: Output,
        deferred: Vec<Deferred>,
        new_subscribers: Vec<(Subscriber, Option<ResultCursor>, Reply<()>)>,
        copies: Vec<oneshot::Sender<(u64, MasterState)>>,
        now: mawex_api::Timestamp,
    ) -> Result<Pending, CoreError> {
        // A batch without events that connected, dropped or drained no pod changed no
        // lease (heartbeats, reads): the pods' stats only need their usage refreshed,
        // which can wait.
        if self.engine.take_pods_changed()
            || !out.events.is_empty()
            || self.pod_stats.1.elapsed() >= POD_STATS_EVERY
        {
            self.refresh_pod_stats();
        }
        // Shared, not copied, by the journal's entry and the feed.
        let events = Arc::new(std::mem::take(&mut out.events));
        let first_seq = self.last_seq.saturating_add(1);
        // Sequence numbers come from the journal: one that cannot be followed by this batch
        // (only a damaged journal gets near 2^64) stops the master instead of wrapping.
        let count = u64::try_from(events.len()).unwrap_or(u64::MAX);
        self.last_seq = self
            .last_seq
            .checked_add(count)
            .filter(|last| *last < u64::MAX)
            .ok_or_else(|| {
                CoreError::Storage(Box::new(std::io::Error::other(format!(
                    "journal sequence numbers run out at 2^64 after {}; only a damaged \
                     journal gets this far",
                    self.last_seq
                ))))
            })?;
        self.events_since_snapshot = self.events_since_snapshot.saturating_add(count);
        // Copies are of the state as of this batch, which is durable when they leave. O(1):
        // the receiver rebuilds the indexes on its own thread.
        let snapshot_due = self.config.snapshot_every > 0
            && self.events_since_snapshot >= self.config.snapshot_every
            && !self.snapshot_decided
            && !self
                .snapshot_thread
                .as_ref()
                .is_some_and(SnapshotThread::busy);
        let copy = (!copies.is_empty() || snapshot_due).then(|| self.engine.state().durable_copy());
        if snapshot_due {
            self.events_since_snapshot = 0;
            self.snapshot_decided = true;
        }
        let streams = new_subscribers.len();
        self.streams_decided += streams;
        let outgoing = self.prepare(out, &events, deferred, new_subscribers);
        Ok(Pending {
            first_seq,
            events,
            outgoing,
            stats: Released {
                last_seq: self.last_seq,
                counts: self.engine.counts(),
                pods: self.pod_stats.0.clone(),
            },
            streams,
            copies,
            copy,
            snapshot_due,
            now,
        })
    }

    /// Waits for the journal to make `pending` durable, then lets it out.
    fn finish(&mut self, pending: Pending) -> Result<(), CoreError> {
        let took = self.journal.wait().inspect_err(|e| {
            error!(error = %e, "journal append failed; the master stops");
        })?;
        self.committed_metrics(took, pending.events.len());
        self.release_durable(pending)
    }

    /// Counts a commit of `events` that took `took`, once the metrics are asked for.
    fn committed_metrics(&self, took: Duration, events: usize) {
        if let Some(metrics) = self.metrics.get() {
            metrics.committed(took, events);
        }
    }

    /// Lets out a batch whose events are durable (or that has none): its feed entry, the
    /// stats, copies, answers and assignments; then starts its snapshot if one is due.
    fn release_durable(&mut self, pending: Pending) -> Result<(), CoreError> {
        let Pending {
            first_seq,
            events,
            outgoing,
            stats,
            streams,
            copies,
            copy,
            snapshot_due,
            now,
        } = pending;
        let last_seq = stats.last_seq;
        // Before any answer leaves: a reader that hears of this batch can wait for it.
        self.committed.store(last_seq, Ordering::Release);
        if !events.is_empty() && self.feed.receiver_count() > 0 {
            let _ = self
                .feed
                .send(Arc::new(CommittedBatch { first_seq, events }));
        }
        if let Some(state) = &copy {
            for reply in copies {
                let _ = reply.send((last_seq, state.clone()));
            }
        }
        // Stats first, so whoever hears back from this batch sees it in them too.
        self.released = stats;
        self.publish_stats();
        self.streams_decided = self.streams_decided.saturating_sub(streams);
        self.release(outgoing, now);
        match copy {
            Some(state) if snapshot_due => {
                self.snapshot_decided = false;
                self.take_snapshot(last_seq, state)
            }
            _ => Ok(()),
        }
    }

    /// Housekeeping between batches: dropping abandoned waiters, hearing from the snapshot
    /// thread.
    fn after_turn(&mut self) -> Result<(), CoreError> {
        if self.last_prune.elapsed() >= PRUNE_EVERY {
            self.prune_waiters();
        }
        if let Some(written) = self.snapshot_thread.as_mut().and_then(|t| t.finished()) {
            self.snapshot_written(written)?;
        }
        Ok(())
    }

    fn wait_time(&self) -> Duration {
        // The clock is read only for a deadline: otherwise each batch reads it once, as it
        // starts deciding.
        match self.engine.next_deadline() {
            Some(deadline) => deadline
                .saturating_since(self.clock.now())
                .clamp(Duration::from_millis(1), MAX_IDLE),
            None => MAX_IDLE,
        }
    }

    fn handle(
        &mut self,
        msg: CoreMsg,
        now: mawex_api::Timestamp,
        out: &mut Output,
        deferred: &mut Vec<Deferred>,
    ) {
        fn answer<T: Send + 'static>(
            deferred: &mut Vec<Deferred>,
            reply: Reply<T>,
            value: Result<T, ApiError>,
        ) {
            deferred.push(Box::new(move || {
                // The requester may have given up; nothing to do then.
                let _ = reply.send(value);
            }));
        }
        match msg {
            CoreMsg::Submit { specs, reply } => {
                let r = self.engine.submit(specs, now, out);
                answer(deferred, reply, r);
            }
            CoreMsg::Get { id, reply } => {
                let r = self.engine.view(&id).ok_or(ApiError::task_not_found(id));
                answer(deferred, reply, r);
            }
            CoreMsg::Cancel { id, reply } => {
                let r = self.engine.cancel(id, now, out);
                answer(deferred, reply, r);
            }
            CoreMsg::AwaitResult { id, reply } => match self.engine.state().task(&id) {
                None => answer(deferred, reply, Err(ApiError::task_not_found(id))),
                Some(entry) => match entry.result() {
                    Some(result) => answer(deferred, reply, Ok(TaskResult::from(result.clone()))),
                    None => self.waiters.entry(id).or_default().push(reply),
                },
            },
            CoreMsg::RetryFailed { filter, reply } => {
                let n = self.engine.retry_failed(&filter, now, out);
                answer(deferred, reply, Ok(n));
            }
            CoreMsg::PurgeFailed { filter, reply } => {
                let n = self.engine.purge_failed(&filter, out);
                answer(deferred, reply, Ok(n));
            }
            CoreMsg::ConfigureGroup {
                group,
                settings,
                reply,
            } => {
                let r = self.engine.configure_group(group, settings, out);
                answer(deferred, reply, r);
            }
            CoreMsg::CreateSchedule { spec, reply } => {
                let r = self.engine.create_schedule(*spec, now, out);
                answer(deferred, reply, r);
            }
            CoreMsg::ListSchedules { reply } => {
                answer(deferred, reply, Ok(self.engine.schedule_views(now)));
            }
            CoreMsg::PauseSchedule {
                name,
                paused,
                reply,
            } => {
                let r = self.engine.pause_schedule(name, paused, now, out);
                answer(deferred, reply, r);
            }
            CoreMsg::DeleteSchedule { name, reply } => {
                self.engine.delete_schedule(name, out);
                answer(deferred, reply, Ok(()));
            }
            CoreMsg::UpdatePending { ids, change, reply } => {
                let r = self.engine.update_pending(ids, change, out);
                answer(deferred, reply, r);
            }
            CoreMsg::FireBroadcast { spec, reply } => {
                let r = self.engine.fire_broadcast(*spec, now, out);
                answer(deferred, reply, r);
            }
            CoreMsg::PlanBroadcast { spec, reply } => {
                answer(deferred, reply, self.engine.plan_broadcast(&spec));
            }
            CoreMsg::GetBroadcast { id, reply } => {
                answer(
                    deferred,
                    reply,
                    self.engine
                        .broadcast_view(id)
                        .ok_or_else(|| no_broadcast(id)),
                );
            }
            CoreMsg::ListBroadcasts { query, reply } => {
                answer(deferred, reply, Ok(self.engine.broadcast_page(&query)));
            }
            CoreMsg::AwaitBroadcast { id, reply } => match self.engine.broadcast_view(id) {
                None => answer(deferred, reply, Err(no_broadcast(id))),
                Some(view) if view.finished_at.is_some() => answer(deferred, reply, Ok(view)),
                Some(_) => self.broadcast_waiters.entry(id).or_default().push(reply),
            },
            CoreMsg::BroadcastLocks { reply } => {
                answer(deferred, reply, Ok(self.engine.broadcast_locks()));
            }
            CoreMsg::ClearBroadcastLock { app, reply } => {
                let cleared = self.engine.clear_broadcast_lock(&app, now, out);
                answer(deferred, reply, Ok(cleared));
            }
            CoreMsg::DrainPod { pod, reply } => {
                let found = self.engine.drain_pod(&pod, out);
                answer(deferred, reply, Ok(found));
            }
            CoreMsg::SubmitGraph { id, tasks, reply } => {
                let r = self.engine.submit_graph(id, tasks, now, out);
                answer(deferred, reply, r);
            }
            CoreMsg::TaskOutput { id, after, reply } => {
                let state = self.engine.state();
                let r = match (state.task(&id), self.outputs.read(id, after)) {
                    (None, None) => Err(ApiError::task_not_found(id)),
                    (entry, kept) => {
                        let mut output = kept.unwrap_or_else(|| {
                            mawex_api::TaskOutput::new(id, mawex_api::Attempt(0))
                        });
                        let running = entry.is_some_and(|e| {
                            e.state == mawex_api::TaskState::Running && e.attempt == output.attempt
                        });
                        output.finished = entry.is_none_or(|e| e.state.is_terminal());
                        output.ended = !running && (output.finished || output.attempt.0 > 0);
                        Ok(output)
                    }
                };
                answer(deferred, reply, r);
            }
            CoreMsg::CancelGraph { id, reply } => {
                let r = self.engine.cancel_graph(&id, now, out);
                answer(deferred, reply, r);
            }
            CoreMsg::GroupSettings { group, reply } => {
                let settings = self.engine.state().group_settings(&group);
                answer(deferred, reply, Ok(settings));
            }
            CoreMsg::PodConnect {
                hello,
                outbox,
                reply,
            } => {
                self.next_session += 1;
                let session = self.next_session;
                let r = self.engine.pod_hello(session, hello, now, out).map(|()| {
                    self.sessions.insert(session, outbox);
                    let mut welcome = Welcome::new(
                        session,
                        self.config.heartbeat_interval,
                        self.config.lease_timeout,
                    );
                    welcome.acks_reports = true;
                    welcome.takes_output = true;
                    welcome.term = self.journal.term();
                    welcome
                });
                answer(deferred, reply, r);
            }
            CoreMsg::Pod {
                session, message, ..
            } => {
                self.engine.pod_message(session, message, now, out);
                // Kept at once: a read later in this batch (after the attempt's result, say)
                // sees the lines that came before it.
                for (attempt, lines) in out.output.drain(..) {
                    self.outputs.append(attempt.task, attempt.attempt, lines);
                }
            }
            CoreMsg::PodDisconnected { session } => {
                self.sessions.remove(&session);
                self.engine.pod_disconnected(session, now);
            }
            CoreMsg::Tick => {}
            // Handled by the caller.
            CoreMsg::Subscribe { .. }
            | CoreMsg::CopyState { .. }
            | CoreMsg::Shutdown { .. }
            | CoreMsg::Halt => {}
        }
    }

    /// Drops the waits and result streams of callers that went away (timed out, cancelled,
    /// disconnected), which would otherwise pile up.
    fn prune_waiters(&mut self) {
        self.waiters.retain(|_, waiters| {
            waiters.retain(|w| !w.is_closed());
            !waiters.is_empty()
        });
        self.subscribers.retain(|s| !s.results.is_closed());
        self.broadcast_waiters.retain(|_, waiters| {
            waiters.retain(|w| !w.is_closed());
            !waiters.is_empty()
        });
        self.last_prune = std::time::Instant::now();
    }

    /// Queues `message` for `session`; false if the session is gone or so far behind that
    /// it must be dropped (its pod does not read its stream, and the master will not hold
    /// more for it).
    pub(super) fn send_to(&self, session: u64, message: MasterMessage) -> bool {
        match self.sessions.get(&session) {
            Some(outbox) => match outbox.try_send(message) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(
                        session,
                        backlog = outbox.max_capacity(),
                        "a pod is not reading its session; closing it"
                    );
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
            None => {
                debug!(session, "message for a closed session dropped");
                true
            }
        }
    }

    /// Rebuilds the pods' part of the stats.
    pub(crate) fn refresh_pod_stats(&mut self) {
        self.pod_stats = (self.engine.pod_stats().into(), std::time::Instant::now());
    }

    pub(crate) fn publish_stats(&self) {
        let stats = MasterStats {
            counts: self.released.counts,
            pods: self.released.pods.clone(),
            last_seq: self.released.last_seq,
            snapshots: self.snapshots.written,
            longest_snapshot: self.snapshots.longest_pause,
            longest_snapshot_write: self.snapshots.longest_write,
        };
        self.stats.send_replace(stats);
    }

    /// Starts a snapshot of `state`, as of event `last_seq`, which is durable: handed to the
    /// snapshot thread when there is one, else written here.
    fn take_snapshot(&mut self, last_seq: u64, state: MasterState) -> Result<(), CoreError> {
        let started = std::time::Instant::now();
        match &mut self.snapshot_thread {
            // Not reached (a snapshot is decided due only while none is written, and no other
            // starts before it), but a snapshot skipped costs only a longer replay, where one
            // handed to a busy thread would stop the master.
            Some(thread) if thread.busy() => return Ok(()),
            Some(thread) => thread.write(last_seq, state)?,
            None => self.write_snapshot_here(last_seq, &state)?,
        }
        let pause = started.elapsed();
        self.snapshots.longest_pause = self.snapshots.longest_pause.max(pause);
        debug!(
            seq = last_seq,
            pause_us = pause.as_micros() as u64,
            "snapshot started"
        );
        Ok(())
    }

    /// Writes a snapshot on the core thread (nothing is in the journal's thread then).
    fn write_snapshot_here(&mut self, last_seq: u64, state: &MasterState) -> Result<(), CoreError> {
        let started = std::time::Instant::now();
        let result = self.journal.snapshot(last_seq, state);
        self.snapshot_written(Written {
            last_seq,
            result,
            took: started.elapsed(),
        })
    }

    /// Counts a stored snapshot; a failed one stops the master, like a failed append.
    fn snapshot_written(&mut self, written: Written) -> Result<(), CoreError> {
        if let Err(e) = written.result {
            error!(seq = written.last_seq, error = %e, "snapshot failed; the master stops");
            return Err(e);
        }
        self.snapshots.written = self.snapshots.written.saturating_add(1);
        self.snapshots.longest_write = self.snapshots.longest_write.max(written.took);
        // The stats of the last batch went out before this: say so now, not a batch later.
        self.publish_stats();
        Ok(())
    }

    fn stop_cleanly(&mut self) -> Result<(), CoreError> {
        if let Some(written) = self.snapshot_thread.as_mut().and_then(|t| t.wait()) {
            self.snapshot_written(written)?;
        }
        if self.events_since_snapshot > 0 {
            // Every batch is durable by now: the state is the journal's.
            let state = self.engine.state().durable_copy();
            self.write_snapshot_here(self.last_seq, &state)?;
        }
        for s in self.subscribers.drain(..) {
            let _ = s
                .results
                .send(Err(ApiError::Unavailable("the master shut down".into())));
        }
        self.sessions.clear();
        info!(seq = self.last_seq, "master stopped cleanly");
        Ok(())
    }
}
