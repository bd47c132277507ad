//! The journal, with a thread of its own to write on, so that the core decides the next
//! batch while the journal encodes, writes and syncs the last one (see `core_loop`).
//!
//! The core hands a batch to the thread only when it has more to decide meanwhile, and at
//! most one before it hears back about it; otherwise it writes the batch itself, sparing
//! an idle master two thread switches per request. The journal sits behind a mutex that
//! only one of them ever holds at a time.

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::CoreError;
use crate::journal::Journal;
use crate::state::{Event, MasterState};

/// One batch for the thread to write.
struct Job {
    first_seq: u64,
    events: Arc<Vec<Event>>,
}

/// How a write went, and how long it took on the journal's thread.
struct Done {
    result: Result<(), CoreError>,
    took: Duration,
}

/// The journal and its thread. Dropping it lets the thread finish what it was handed, then
/// joins it, and closes the journal.
pub(crate) struct JournalThread<J: Journal> {
    journal: Arc<Mutex<J>>,
    jobs: Option<std_mpsc::SyncSender<Job>>,
    done: std_mpsc::Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    /// [`Journal::term`], read once: it never changes for one journal.
    term: u64,
}

impl<J: Journal> JournalThread<J> {
    /// Starts the thread over `journal`.
    pub(crate) fn start(journal: J) -> Result<Self, CoreError> {
        let term = journal.term();
        let journal = Arc::new(Mutex::new(journal));
        let (jobs, inbox) = std_mpsc::sync_channel::<Job>(1);
        let (done_tx, done) = std_mpsc::channel();
        let shared = journal.clone();
        let thread = std::thread::Builder::new()
            .name("mawex-journal".into())
            .spawn(move || {
                for job in inbox {
                    let started = Instant::now();
                    let result = lock(&shared)
                        .and_then(|mut journal| journal.append_shared(job.first_seq, &job.events));
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
            })
            .map_err(|e| CoreError::Thread(e.to_string()))?;
        Ok(JournalThread {
            journal,
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

    /// Hands `events`, numbered from `first_seq`, to the thread; [`JournalThread::wait`]
    /// says when they are durable.
    pub(crate) fn append(
        &mut self,
        first_seq: u64,
        events: Arc<Vec<Event>>,
    ) -> Result<(), CoreError> {
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(Job { first_seq, events })
            .map_err(|_| gone())
    }

    /// Waits for the write handed over and not yet waited for: how long it took once the
    /// thread started it, or why it failed.
    pub(crate) fn wait(&mut self) -> Result<Duration, CoreError> {
        let done = self.done.recv().map_err(|_| gone())?;
        done.result.map(|()| done.took)
    }

    /// Appends `events` here, on the caller's thread, and makes them durable: how long it
    /// took. Nothing handed over may be waiting.
    pub(crate) fn append_here(
        &mut self,
        first_seq: u64,
        events: &Arc<Vec<Event>>,
    ) -> Result<Duration, CoreError> {
        let started = Instant::now();
        lock(&self.journal)?.append_shared(first_seq, events)?;
        Ok(started.elapsed())
    }

    /// Stores a snapshot of `state` as of event `last_seq` here, on the caller's thread.
    /// Nothing handed over may be waiting.
    pub(crate) fn snapshot(&mut self, last_seq: u64, state: &MasterState) -> Result<(), CoreError> {
        lock(&self.journal)?.snapshot(last_seq, state)
    }
}

/// The journal, or an error if a write panicked while it held it.
fn lock<J>(journal: &Mutex<J>) -> Result<MutexGuard<'_, J>, CoreError> {
    journal
        .lock()
        .map_err(|_| CoreError::Thread("a journal write panicked".into()))
}

/// The thread ended (after a failure it reported, or a panic).
fn gone() -> CoreError {
    CoreError::Thread("the journal's thread stopped".into())
}

impl<J: Journal> Drop for JournalThread<J> {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the journal's thread panicked");
            }
        }
        // The journal closes as the last handle on it, this one, goes.
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
