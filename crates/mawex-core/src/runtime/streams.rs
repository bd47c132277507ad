//! Live result streams: what the core and a stream's reader share, and the bound on how far
//! a reader may fall behind.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use mawex_api::{ApiError, GroupName, TaskResult};
use tokio::sync::mpsc;

/// A result stream may fall this many results behind before it is cut off (the client then
/// resumes from its last cursor); bounds the memory a slow reader can pin.
pub(crate) const MAX_STREAM_LAG: usize = 1 << 20;

/// What the core and a result stream share.
#[derive(Debug, Default)]
pub(crate) struct FeedState {
    /// Results sent and not yet taken by the reader.
    pub(crate) backlog: AtomicUsize,
    /// Set when the core cut the stream off for falling behind.
    pub(crate) lagged: AtomicBool,
}

/// A live result stream of one group.
pub(crate) struct Subscriber {
    pub(super) group: GroupName,
    pub(super) results: mpsc::UnboundedSender<Result<TaskResult, ApiError>>,
    pub(super) feed: Arc<FeedState>,
}

impl Subscriber {
    /// Sends `result` if it is of this stream's group; false when the stream is gone or cut off.
    pub(super) fn offer(&self, result: &TaskResult) -> bool {
        if result.group != self.group {
            return !self.results.is_closed();
        }
        if self.feed.backlog.load(Ordering::Relaxed) >= MAX_STREAM_LAG {
            self.feed.lagged.store(true, Ordering::Relaxed);
            return false;
        }
        if self.results.send(Ok(result.clone())).is_err() {
            return false;
        }
        self.feed.backlog.fetch_add(1, Ordering::Relaxed);
        true
    }
}
