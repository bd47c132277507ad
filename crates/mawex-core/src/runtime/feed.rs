//! The committed-batch feed: every batch the core made durable, in order, for whoever keeps a
//! view of the master outside the core thread (the read model, a dashboard, an exporter).
//!
//! The feed is bounded. A subscriber that falls more than the feed's capacity behind gets
//! [`CoreError::Lagged`] once, then the batches still held: it re-reads the state with
//! [`Master::read_state`](super::Master::read_state) and skips batches that state already
//! covers. A batch whose `first_seq` is not one past the last applied one means a gap: copy
//! the state again. (A `Lagged` right after the copy may concern only batches it covers.)

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::error::CoreError;
use crate::state::Event;

/// One commit of the master: its events, numbered from `first_seq`. Published only after the
/// journal made them durable.
#[derive(Debug)]
#[non_exhaustive]
pub struct CommittedBatch {
    /// Sequence number of the first event.
    pub first_seq: u64,
    /// The events, in order (never empty); shared with the journal's entry, not copied.
    pub events: Arc<Vec<Event>>,
}

impl CommittedBatch {
    /// Sequence number of the last event.
    pub fn last_seq(&self) -> u64 {
        let len = u64::try_from(self.events.len()).unwrap_or(u64::MAX);
        self.first_seq.saturating_add(len.saturating_sub(1))
    }
}

/// A subscription to the committed batches (see [`Master::committed`](super::Master::committed)).
#[derive(Debug)]
pub struct CommittedFeed {
    rx: broadcast::Receiver<Arc<CommittedBatch>>,
}

impl CommittedFeed {
    pub(crate) fn new(rx: broadcast::Receiver<Arc<CommittedBatch>>) -> Self {
        CommittedFeed { rx }
    }

    /// The next committed batch.
    ///
    /// # Errors
    /// [`CoreError::Lagged`] when the subscriber fell so far behind that batches were
    /// dropped (the next call returns the oldest batch still held); [`CoreError::Stopped`]
    /// once the master has stopped and every batch was read.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call loses no batch.
    pub async fn next(&mut self) -> Result<Arc<CommittedBatch>, CoreError> {
        map(self.rx.recv().await)
    }

    /// As [`CommittedFeed::next`], blocking the thread (not for use inside a runtime).
    ///
    /// # Errors
    /// As [`CommittedFeed::next`].
    pub fn blocking_next(&mut self) -> Result<Arc<CommittedBatch>, CoreError> {
        map(self.rx.blocking_recv())
    }
}

fn map(
    r: Result<Arc<CommittedBatch>, broadcast::error::RecvError>,
) -> Result<Arc<CommittedBatch>, CoreError> {
    r.map_err(|e| match e {
        broadcast::error::RecvError::Lagged(missed) => CoreError::Lagged { missed },
        broadcast::error::RecvError::Closed => CoreError::Stopped,
    })
}
