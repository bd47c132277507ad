//! Snapshots encoded and stored on a thread of their own.
//!
//! The core thread takes an O(1) copy of the durable state (its tasks live in a persistent
//! map) and hands it over; this thread encodes it, stores it through the journal's
//! [`SnapshotWriter`] and reports back. The core goes on deciding meanwhile: the only pause
//! a snapshot costs it is the copy.

use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::error::CoreError;
use crate::journal::SnapshotWriter;
use crate::state::MasterState;

/// One snapshot to store.
struct Job {
    last_seq: u64,
    state: MasterState,
}

/// How a snapshot went.
pub(crate) struct Written {
    pub(crate) last_seq: u64,
    pub(crate) result: Result<(), CoreError>,
    /// Encoding and storing it, on this thread.
    pub(crate) took: Duration,
}

/// The snapshot thread, with at most one snapshot in flight.
pub(crate) struct SnapshotThread {
    jobs: Option<std_mpsc::SyncSender<Job>>,
    written: std_mpsc::Receiver<Written>,
    thread: Option<JoinHandle<()>>,
    /// The sequence number of the snapshot being written, if one is.
    in_flight: Option<u64>,
}

impl SnapshotThread {
    /// Starts the thread over `writer`.
    pub(crate) fn start(mut writer: Box<dyn SnapshotWriter>) -> Result<Self, CoreError> {
        let (jobs, inbox) = std_mpsc::sync_channel::<Job>(1);
        let (done, written) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("mawex-snapshot".into())
            .spawn(move || {
                for job in inbox {
                    let started = Instant::now();
                    let result = writer.write(job.last_seq, &job.state);
                    // The copy goes here, not on the core: freeing what only it still holds
                    // is O(what the core changed since).
                    drop(job.state);
                    let took = started.elapsed();
                    debug!(
                        seq = job.last_seq,
                        took_ms = took.as_millis() as u64,
                        "snapshot written"
                    );
                    let failed = result.is_err();
                    let written = Written {
                        last_seq: job.last_seq,
                        result,
                        took,
                    };
                    if done.send(written).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| CoreError::Thread(e.to_string()))?;
        Ok(SnapshotThread {
            jobs: Some(jobs),
            written,
            thread: Some(thread),
            in_flight: None,
        })
    }

    /// True while a snapshot is being written.
    pub(crate) fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Hands over `state` as of `last_seq`; the caller checks [`busy`](Self::busy) first.
    pub(crate) fn write(&mut self, last_seq: u64, state: MasterState) -> Result<(), CoreError> {
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.try_send(Job { last_seq, state }).is_ok());
        if !sent {
            return Err(CoreError::Thread(
                "the snapshot thread is gone or still busy".into(),
            ));
        }
        self.in_flight = Some(last_seq);
        Ok(())
    }

    /// The snapshot that finished since the last call, if one did.
    pub(crate) fn finished(&mut self) -> Option<Written> {
        self.in_flight?;
        let written = match self.written.try_recv() {
            Ok(written) => written,
            Err(std_mpsc::TryRecvError::Empty) => return None,
            Err(std_mpsc::TryRecvError::Disconnected) => self.lost(),
        };
        self.in_flight = None;
        Some(written)
    }

    /// Waits for the snapshot in flight, if there is one.
    pub(crate) fn wait(&mut self) -> Option<Written> {
        self.in_flight?;
        let written = self.written.recv().unwrap_or_else(|_| self.lost());
        self.in_flight = None;
        Some(written)
    }

    /// What to report when the thread went away without a word (it panicked).
    fn lost(&self) -> Written {
        Written {
            last_seq: self.in_flight.unwrap_or(0),
            result: Err(CoreError::Thread(
                "the snapshot thread stopped while writing".into(),
            )),
            took: Duration::ZERO,
        }
    }
}

impl Drop for SnapshotThread {
    /// Lets a snapshot in flight finish, so that the journal's storage is closed when the
    /// master is.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
