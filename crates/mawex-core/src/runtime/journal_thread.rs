//! The journal on a thread of its own, so that the core decides the next batch while the
//! journal encodes, writes and syncs the last one (see `core_loop`).
//!
//! Writes go in the order they were handed over, and each is reported back in that order.
//! The core hands over at most one batch before it hears back about it, so what is in
//! flight is bounded by one batch.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::CoreError;
use crate::journal::Journal;
use crate::state::{Event, MasterState};

/// One write.
enum Job {
    Append {
        first_seq: u64,
        events: Arc<Vec<Event>>,
    },
    Snapshot {
        last_seq: u64,
        state: Box<MasterState>,
    },
}

/// How a write went, and how long it took on the journal's thread.
struct Done {
    result: Result<(), CoreError>,
    took: Duration,
}

/// The journal's thread. Dropping it lets the thread finish what it was handed, then joins
/// it, which closes the journal.
pub(crate) struct JournalThread<J: Journal> {
    jobs: Option<std_mpsc::SyncSender<Job>>,
    done: std_mpsc::Receiver<Done>,
    thread: Option<JoinHandle<J>>,
    /// [`Journal::term`], read once: it never changes for one journal.
    term: u64,
}

impl<J: Journal> JournalThread<J> {
    /// Starts the thread over `journal`.
    pub(crate) fn start(mut journal: J) -> Result<Self, CoreError> {
        let term = journal.term();
        let (jobs, inbox) = std_mpsc::sync_channel::<Job>(1);
        let (done_tx, done) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("mawex-journal".into())
            .spawn(move || {
                for job in inbox {
                    let started = Instant::now();
                    let result = match job {
                        Job::Append { first_seq, events } => {
                            journal.append_shared(first_seq, &events)
                        }
                        Job::Snapshot { last_seq, state } => journal.snapshot(last_seq, &state),
                    };
                    let failed = result.is_err();
                    let done = Done {
                        result,
                        took: started.elapsed(),
                    };
                    // After a failure nothing more is written: the master stops.
                    if done_tx.send(done).is_err() || failed {
                        break;
                    }
                }
                journal
            })
            .map_err(|e| CoreError::Thread(e.to_string()))?;
        Ok(JournalThread {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            term,
        })
    }

    /// The term of the journal's leadership (see [`Journal::term`]).
    pub(crate) fn term(&self) -> u64 {
        self.term
    }

    /// Hands `events`, numbered from `first_seq`, to the journal; [`JournalThread::wait`]
    /// says when they are durable.
    pub(crate) fn append(
        &mut self,
        first_seq: u64,
        events: Arc<Vec<Event>>,
    ) -> Result<(), CoreError> {
        self.send(Job::Append { first_seq, events })
    }

    /// Waits for the oldest write handed over and not yet waited for: how long it took once
    /// the journal started it, or why it failed.
    pub(crate) fn wait(&mut self) -> Result<Duration, CoreError> {
        let done = self.done.recv().map_err(|_| gone())?;
        done.result.map(|()| done.took)
    }

    /// Stores a snapshot of `state` as of event `last_seq` (every write handed over before
    /// it has been waited for) and waits for it.
    pub(crate) fn snapshot(
        &mut self,
        last_seq: u64,
        state: MasterState,
    ) -> Result<Duration, CoreError> {
        self.send(Job::Snapshot {
            last_seq,
            state: Box::new(state),
        })?;
        self.wait()
    }

    fn send(&mut self, job: Job) -> Result<(), CoreError> {
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(job)
            .map_err(|_| gone())
    }
}

/// The thread ended (after a failure it reported, or a panic).
fn gone() -> CoreError {
    CoreError::Thread("the journal's thread stopped".into())
}

impl<J: Journal> Drop for JournalThread<J> {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            // The journal closes here, as the thread hands it back.
            if thread.join().is_err() {
                tracing::error!("the journal's thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::MemoryJournal;

    fn event() -> Event {
        Event::TasksForgotten {
            tasks: vec![mawex_api::TaskId::new()],
        }
    }

    #[test]
    fn writes_are_durable_in_order_and_the_journal_comes_back_closed() {
        let journal = MemoryJournal::new();
        let mut thread = JournalThread::start(journal.clone()).expect("starts");
        thread
            .append(1, Arc::new(vec![event(), event()]))
            .expect("handed over");
        thread.wait().expect("written");
        thread
            .append(3, Arc::new(vec![event()]))
            .expect("handed over");
        thread.wait().expect("written");
        drop(thread);
        let mut journal = journal;
        let seqs: Vec<u64> = journal
            .recover()
            .expect("recovers")
            .events
            .iter()
            .map(|(seq, _)| *seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
    }
}
