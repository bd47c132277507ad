//! The read side: a copy of the master's state kept by its own thread from the committed-batch
//! feed, so bulk reads (`list`, the failed summary) never queue behind dispatch on the core
//! thread.
//!
//! It starts with the first read, from a copy of the core's state, and costs nothing before.
//! A read waits until the copy has applied every batch committed when the read began, so a
//! caller always sees its own acknowledged writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard};

use mawex_api::ApiError;
use tokio::sync::{broadcast, oneshot, watch};
use tracing::{debug, warn};

use super::config::MasterStats;
use super::feed::{CommittedBatch, CommittedFeed};
use super::history::History;
use super::messages::CoreMsg;
use super::metrics::{transitions, MasterMetrics, ReadyTimes};
use crate::clock::Clock;
use crate::error::CoreError;
use crate::state::MasterState;

fn stopped() -> ApiError {
    ApiError::Unavailable("the master is not running".into())
}

/// What the readers of one master share: how to reach the core, the feed, and the model once
/// it runs.
pub(crate) struct ReadSide {
    inbox: std_mpsc::Sender<CoreMsg>,
    /// Weak, so that the feed closes when the core stops even while proxies live.
    feed: broadcast::WeakSender<Arc<CommittedBatch>>,
    /// Sequence number of the last durable event, stored by the core before it answers.
    committed: Arc<AtomicU64>,
    stats: watch::Receiver<MasterStats>,
    model: Mutex<Option<Arc<ReadModel>>>,
    /// Set once metrics are asked for: the model's thread then counts what it applies.
    metrics: Arc<OnceLock<Arc<MasterMetrics>>>,
    /// The master's clock: the history's minutes are the times the core stamps events with.
    clock: Arc<dyn Clock>,
    /// Searches that examine tasks one by one, a few at a time.
    scans: Arc<tokio::sync::Semaphore>,
}

/// How many `list` searches that examine tasks one by one run at once: each holds the
/// model for up to `MAX_LIST_SCAN` tasks, and the model's thread waits for them to apply
/// the next batch.
const SCANS_AT_ONCE: usize = 2;

/// The copy of the state, with the sequence number it has applied up to, and the history
/// of the last day's minutes it has seen.
pub(crate) struct ReadModel {
    state: RwLock<MasterState>,
    history: Mutex<History>,
    applied: watch::Sender<Applied>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for ReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModel")
            .field("applied", &*self.applied.borrow())
            .finish_non_exhaustive()
    }
}

/// How far the model is, and whether its thread still follows the feed.
#[derive(Debug, Clone, Copy)]
struct Applied {
    seq: u64,
    following: bool,
    /// It holds a copy of the core's state (the first is taken by its thread, after it
    /// started).
    copied: bool,
}

impl std::fmt::Debug for ReadSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadSide")
            .field("committed", &self.committed)
            .finish_non_exhaustive()
    }
}

impl ReadSide {
    pub(crate) fn new(
        inbox: std_mpsc::Sender<CoreMsg>,
        feed: &broadcast::Sender<Arc<CommittedBatch>>,
        committed: Arc<AtomicU64>,
        stats: watch::Receiver<MasterStats>,
        metrics: Arc<OnceLock<Arc<MasterMetrics>>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        ReadSide {
            inbox,
            feed: feed.downgrade(),
            committed,
            stats,
            model: Mutex::new(None),
            metrics,
            clock,
            scans: Arc::new(tokio::sync::Semaphore::new(SCANS_AT_ONCE)),
        }
    }

    /// A turn to run a search that examines tasks one by one (waits for one).
    pub(crate) async fn scan_turn(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.scans
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| stopped())
    }

    /// The metrics, recorded for every batch committed after this returns (see
    /// `Master::metrics`): it waits until the model has its first copy of the state, so that
    /// no later batch is in it, uncounted.
    pub(crate) async fn metrics(&self) -> Result<Arc<MasterMetrics>, CoreError> {
        let metrics = self.metrics.get_or_init(Arc::default).clone();
        let model = self.model().map_err(|_| CoreError::Stopped)?;
        let mut applied = model.applied.subscribe();
        let copied = *applied
            .wait_for(|a| a.copied || !a.following)
            .await
            .map_err(|_| CoreError::Stopped)?;
        if !copied.copied {
            return Err(CoreError::Stopped);
        }
        Ok(metrics)
    }

    /// A new subscription to the committed batches (closed at once if the master stopped).
    pub(crate) fn subscribe(&self) -> CommittedFeed {
        CommittedFeed::new(self.receiver())
    }

    fn receiver(&self) -> broadcast::Receiver<Arc<CommittedBatch>> {
        match self.feed.upgrade() {
            Some(feed) => feed.subscribe(),
            // A receiver of a channel whose sender is gone: it reports `Closed`.
            None => broadcast::channel(1).1,
        }
    }

    /// The latest statistics (pods and their slots, for wait estimates).
    pub(crate) fn stats(&self) -> MasterStats {
        self.stats.borrow().clone()
    }

    /// The published stats, or the error of a stopped master (its core, which publishes
    /// them, is gone): for reads answered from the stats alone.
    pub(crate) fn live_stats(&self) -> Result<MasterStats, ApiError> {
        if self.stats.has_changed().is_err() {
            return Err(stopped());
        }
        Ok(self.stats())
    }

    /// The model, up to date with every batch committed before this call.
    ///
    /// # Errors
    /// `Unavailable` when the master has stopped.
    pub(crate) async fn current(&self) -> Result<Arc<ReadModel>, ApiError> {
        let target = self.committed.load(Ordering::Acquire);
        let model = self.model()?;
        let mut applied = model.applied.subscribe();
        let now = *applied
            .wait_for(|a| a.seq >= target || !a.following)
            .await
            .map_err(|_| stopped())?;
        if now.seq < target {
            return Err(stopped());
        }
        Ok(model)
    }

    fn model(&self) -> Result<Arc<ReadModel>, ApiError> {
        let mut slot = self.model.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(model) = slot.as_ref() {
            return Ok(model.clone());
        }
        // Subscribe before copying the state: every batch after the copy is in the feed.
        let feed = self.receiver();
        let model = Arc::new(ReadModel {
            state: RwLock::new(MasterState::new()),
            history: Mutex::new(History::default()),
            clock: self.clock.clone(),
            applied: watch::channel(Applied {
                seq: 0,
                following: true,
                copied: false,
            })
            .0,
        });
        let inbox = self.inbox.clone();
        let keeper = model.clone();
        let metrics = self.metrics.clone();
        std::thread::Builder::new()
            .name("mawex-reads".into())
            .spawn(move || keep(keeper, inbox, feed, &metrics))
            .map_err(|e| ApiError::Internal(format!("cannot start the read model: {e}")))?;
        *slot = Some(model.clone());
        Ok(model)
    }
}

impl ReadModel {
    /// The state as of the last applied batch.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, MasterState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last `minutes` minutes up to now (see `History`).
    pub(crate) fn history(&self, minutes: usize) -> Vec<mawex_api::MinuteCounts> {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last(self.clock.now(), minutes)
    }

    /// The percentiles of `group`'s latest waits and runs.
    pub(crate) fn group_times(&self, group: &mawex_api::GroupName) -> mawex_api::GroupTimes {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .group_times(group)
    }

    fn replace(&self, seq: u64, state: MasterState) {
        let history = History::rebuild(&state, self.clock.now());
        *self.history.lock().unwrap_or_else(PoisonError::into_inner) = history;
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = state;
        self.applied.send_modify(|a| {
            a.seq = seq;
            a.copied = true;
        });
    }

    fn applied_up_to(&self, seq: u64) {
        self.applied.send_modify(|a| a.seq = seq);
    }

    /// The thread stopped following the feed (the master stopped): readers waiting for more
    /// give up.
    fn stopped(&self) {
        self.applied.send_modify(|a| a.following = false);
    }
}

/// Asks the core for a copy of its state: `(last_seq, state)`.
pub(crate) fn copy_state(
    inbox: &std_mpsc::Sender<CoreMsg>,
) -> Result<oneshot::Receiver<(u64, MasterState)>, CoreError> {
    let (reply, answer) = oneshot::channel();
    inbox
        .send(CoreMsg::CopyState { reply })
        .map_err(|_| CoreError::Stopped)?;
    Ok(answer)
}

/// The read thread: a copy of the state, then every batch of the feed, until the master stops.
fn keep(
    model: Arc<ReadModel>,
    inbox: std_mpsc::Sender<CoreMsg>,
    feed: broadcast::Receiver<Arc<CommittedBatch>>,
    metrics: &OnceLock<Arc<MasterMetrics>>,
) {
    /// Tells the readers the model stopped however the thread ends, a panic included:
    /// a reader never waits for a model that no longer follows the feed.
    struct Stopped<'a>(&'a ReadModel);
    impl Drop for Stopped<'_> {
        fn drop(&mut self) {
            self.0.stopped();
        }
    }
    let _stopped = Stopped(&model);
    follow(&model, &inbox, feed, metrics);
}

fn follow(
    model: &ReadModel,
    inbox: &std_mpsc::Sender<CoreMsg>,
    mut feed: broadcast::Receiver<Arc<CommittedBatch>>,
    metrics: &OnceLock<Arc<MasterMetrics>>,
) {
    let resync = |model: &ReadModel| -> Option<u64> {
        let (seq, mut state) = copy_state(inbox).ok()?.blocking_recv().ok()?;
        state.rebuild_indexes();
        model.replace(seq, state);
        Some(seq)
    };
    let Some(mut seq) = resync(model) else {
        return;
    };
    let mut ready = ReadyTimes::default();
    loop {
        match feed.blocking_recv() {
            Ok(batch) => {
                if batch.last_seq() <= seq {
                    continue; // Covered by the copy.
                }
                if batch.first_seq != seq + 1 {
                    warn!(
                        expected = seq + 1,
                        got = batch.first_seq,
                        "read model out of step; copying the state again"
                    );
                    match resync(model) {
                        Some(s) => seq = s,
                        None => return,
                    }
                    ready = ReadyTimes::default();
                    continue;
                }
                {
                    let mut state = model.state.write().unwrap_or_else(PoisonError::into_inner);
                    let mut history = model.history.lock().unwrap_or_else(PoisonError::into_inner);
                    let metrics = metrics.get();
                    // One clock read a batch: its events were committed together.
                    let now = model.clock.now();
                    for event in batch.events.iter() {
                        transitions(&state, event, &mut ready, |group, to, span| {
                            history.count(now, to);
                            if let Some(span) = span {
                                history.timed(group, span);
                            }
                            if let Some(metrics) = metrics {
                                metrics.record_transition(group, to, span);
                            }
                        });
                        state.apply(event);
                    }
                    history.depth(now, state.counts().pending);
                }
                seq = batch.last_seq();
                model.applied_up_to(seq);
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                debug!(missed, "read model fell behind; copying the state again");
                match resync(model) {
                    Some(s) => seq = s,
                    None => return,
                }
                ready = ReadyTimes::default();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
