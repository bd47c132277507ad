//! The journal on a thread of its own, so that the core decides the next batch while the
//! journal encodes, writes and syncs the last one (see `core_loop`).
//!
//! Writes go in the order they were handed over, and each is reported back in that order.
//! Batches handed over while the last write was syncing are written together, with one
//! sync (`Journal::append_batches`). At most [`MAX_IN_FLIGHT`] batches wait for the
//! journal at once.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::CoreError;
use crate::journal::Journal;
use crate::state::{Event, MasterState};

/// The most batches the core hands over before it hears back about the first.
pub(crate) const MAX_IN_FLIGHT: usize = 4;

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
        let (jobs, inbox) = std_mpsc::sync_channel::<Job>(MAX_IN_FLIGHT);
        let (done_tx, done) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("mawex-journal".into())
            .spawn(move || {
                let mut next: Option<Job> = None;
                loop {
                    let Some(job) = next.take().or_else(|| inbox.recv().ok()) else {
                        break;
                    };
                    let started = Instant::now();
                    let (result, written) = match job {
                        Job::Append { first_seq, events } => {
                            // Whatever else is queued goes with it, up to a job that is
                            // not an append.
                            let mut batches = vec![(first_seq, events)];
                            while let Ok(more) = inbox.try_recv() {
                                match more {
                                    Job::Append { first_seq, events } => {
                                        batches.push((first_seq, events));
                                    }
                                    other => {
                                        next = Some(other);
                                        break;
                                    }
                                }
                            }
                            (journal.append_batches(&batches), batches.len())
                        }
                        Job::Snapshot { last_seq, state } => {
                            (journal.snapshot(last_seq, &state), 1)
                        }
                    };
                    let took = started.elapsed();
                    match result {
                        Ok(()) => {
                            for _ in 0..written {
                                if done_tx
                                    .send(Done {
                                        result: Ok(()),
                                        took,
                                    })
                                    .is_err()
                                {
                                    return journal;
                                }
                            }
                        }
                        // Nothing more is written: the master stops.
                        Err(e) => {
                            let _ = done_tx.send(Done {
                                result: Err(e),
                                took,
                            });
                            break;
                        }
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

    /// [`JournalThread::wait`] if the oldest write has ended, `None` if it has not.
    pub(crate) fn try_wait(&mut self) -> Option<Result<Duration, CoreError>> {
        match self.done.try_recv() {
            Ok(done) => Some(done.result.map(|()| done.took)),
            Err(std_mpsc::TryRecvError::Empty) => None,
            Err(std_mpsc::TryRecvError::Disconnected) => Some(Err(gone())),
        }
    }

    /// Stores a snapshot of `state` as of event `last_seq` and waits for it. Every write
    /// handed over before it must have been waited for.
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

    /// A memory journal that stalls its first write until told, and records the batches of
    /// each write.
    struct Recording {
        inner: MemoryJournal,
        writes: Arc<std::sync::Mutex<Vec<Vec<u64>>>>,
        stall: Option<(std_mpsc::Sender<()>, std_mpsc::Receiver<()>)>,
    }

    impl Journal for Recording {
        fn recover(&mut self) -> Result<crate::journal::Recovered, CoreError> {
            self.inner.recover()
        }
        fn append(&mut self, first_seq: u64, events: &[Event]) -> Result<(), CoreError> {
            self.inner.append(first_seq, events)
        }
        fn append_batches(&mut self, batches: &[(u64, Arc<Vec<Event>>)]) -> Result<(), CoreError> {
            if let Some((entered, go)) = self.stall.take() {
                entered.send(()).expect("the test waits");
                go.recv().expect("the test lets go");
            }
            let firsts = batches.iter().map(|(first, _)| *first).collect();
            self.writes.lock().expect("not poisoned").push(firsts);
            for (first_seq, events) in batches {
                self.inner.append(*first_seq, events)?;
            }
            Ok(())
        }
        fn snapshot(&mut self, last_seq: u64, state: &MasterState) -> Result<(), CoreError> {
            self.inner.snapshot(last_seq, state)
        }
        fn repair(&mut self) -> Result<crate::journal::Repaired, CoreError> {
            self.inner.repair()
        }
    }

    #[test]
    fn batches_handed_over_during_a_write_are_written_together() {
        let (entered_tx, entered) = std_mpsc::channel();
        let (go, go_rx) = std_mpsc::channel();
        let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let journal = Recording {
            inner: MemoryJournal::new(),
            writes: writes.clone(),
            stall: Some((entered_tx, go_rx)),
        };
        let mut thread = JournalThread::start(journal).expect("starts");
        thread
            .append(1, Arc::new(vec![event()]))
            .expect("handed over");
        entered.recv().expect("the first write started");
        thread
            .append(2, Arc::new(vec![event()]))
            .expect("handed over");
        thread
            .append(3, Arc::new(vec![event()]))
            .expect("handed over");
        go.send(()).expect("the write waits");
        for _ in 0..3 {
            thread.wait().expect("written");
        }
        assert!(thread.try_wait().is_none(), "one report a batch");
        assert_eq!(
            *writes.lock().expect("not poisoned"),
            vec![vec![1], vec![2, 3]]
        );
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
