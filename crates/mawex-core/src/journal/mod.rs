//! The durable, append-only record of every task state change.

mod free_space;
mod memory;
mod sled_journal;
#[cfg(test)]
mod tests;

use tracing::error;

pub use free_space::FreeSpace;
pub use memory::MemoryJournal;
pub use sled_journal::{open_waiting_for_lock, SledJournal, SledSync};

use crate::error::CoreError;
use crate::state::{Event, MasterState};

/// Encodes a snapshot of `state` after event `last_seq`, in the format the journals write
/// (for another store of snapshots, such as the Raft state machine's).
///
/// # Errors
/// [`CoreError::Encode`] if the state does not encode.
pub fn encode_snapshot(last_seq: u64, state: &MasterState) -> Result<Vec<u8>, CoreError> {
    crate::codec::encode_snapshot(last_seq, state)
}

/// Decodes a snapshot of any format this version reads into `(last_seq, state)`, the state's
/// indexes built.
///
/// # Errors
/// [`CoreError::CorruptSnapshot`] for bytes that are damaged or do not decode.
pub fn decode_snapshot(bytes: &[u8]) -> Result<(u64, MasterState), CoreError> {
    let (seq, mut state) = crate::codec::decode_snapshot(bytes)?;
    if !state.has_indexes() {
        state.rebuild_indexes();
    }
    Ok((seq, state))
}

/// Records are cut before they grow past this size (an event larger than it gets a record of
/// its own): sled slows down on larger values and moves them out of its synced log.
pub const MAX_RECORD_BYTES: usize = 120 * 1024;

/// What a journal holds at start-up: the latest snapshot and the events after it.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Recovered {
    /// `(last_seq, state)` of the latest snapshot.
    pub snapshot: Option<(u64, MasterState)>,
    /// Events after the snapshot, with their sequence numbers, in order.
    pub events: Vec<(u64, Event)>,
}

impl Recovered {
    /// What a journal that keeps no events apart from its state recovers: `state`, as of
    /// event `last_seq`, and no tail (a replicated log hands over its state machine's).
    pub fn from_state(last_seq: u64, state: MasterState) -> Self {
        Recovered {
            snapshot: Some((last_seq, state)),
            events: Vec::new(),
        }
    }

    /// The sequence number of the last event recovered (0 for an empty journal).
    pub fn last_seq(&self) -> u64 {
        self.events
            .last()
            .map(|(seq, _)| *seq)
            .or(self.snapshot.as_ref().map(|(seq, _)| *seq))
            .unwrap_or(0)
    }

    /// Rebuilds the state: the snapshot plus every event after it.
    pub fn into_state(self) -> (u64, MasterState) {
        let last = self.last_seq();
        let mut state = self.snapshot.map(|(_, s)| s).unwrap_or_default();
        // A snapshot of format 6 comes with its indexes, built as it was decoded.
        if !state.has_indexes() {
            state.rebuild_indexes();
        }
        for (_, event) in self.events {
            state.apply_owned(event);
        }
        (last, state)
    }
}

/// Durable storage of events.
///
/// Architecture invariant (journal first): when `append` returns `Ok`, the events are on
/// stable storage. The master applies nothing visibly, answers no client and sends no
/// assignment before that. An `Err` from `append` is fatal to the master.
///
/// A journal's storage must write each record whole or not at all (sled does: a value is
/// one checksummed log message, and recovery stops before the first message that fails its
/// check). So recovery never meets a torn record, and any record it cannot check is damage.
pub trait Journal: Send + 'static {
    /// Reads the latest snapshot and every event after it.
    ///
    /// # Errors
    /// [`CoreError::CorruptJournal`] naming the first damaged record (nothing is dropped:
    /// see [`Journal::repair`]), [`CoreError::UnreadableJournal`] for an intact record this
    /// version cannot read, [`CoreError::CorruptSnapshot`], or a storage error.
    fn recover(&mut self) -> Result<Recovered, CoreError>;

    /// Appends `events`, numbered from `first_seq`, and makes them durable.
    ///
    /// # Errors
    /// A storage error; the master then stops.
    fn append(&mut self, first_seq: u64, events: &[Event]) -> Result<(), CoreError>;

    /// [`Journal::append`] of events the caller shares (the core shares each batch with
    /// the committed-batch feed): a journal that keeps the events as they are, rather than
    /// encoding them, takes them without a copy. The default appends the slice.
    ///
    /// # Errors
    /// As [`Journal::append`].
    fn append_shared(
        &mut self,
        first_seq: u64,
        events: &std::sync::Arc<Vec<Event>>,
    ) -> Result<(), CoreError> {
        self.append(first_seq, events)
    }

    /// Stores `state` as of event `last_seq` and drops the records it covers.
    ///
    /// # Errors
    /// A storage error.
    fn snapshot(&mut self, last_seq: u64, state: &MasterState) -> Result<(), CoreError>;

    /// Drops the first damaged record and every record after it (events after a hole
    /// cannot be applied), so that [`Journal::recover`] succeeds again. An explicit,
    /// operator-chosen step: what it drops may include acknowledged work, and each dropped
    /// record is logged at error level. A sound journal is left as it is.
    ///
    /// # Errors
    /// [`CoreError::UnreadableJournal`] if an intact record this version cannot read comes
    /// first (dropping it would lose good work: run a version that reads it), or a storage
    /// error.
    fn repair(&mut self) -> Result<Repaired, CoreError>;

    /// A writer that stores snapshots from a thread of its own while this journal goes on
    /// appending, so that a snapshot never stops the core thread. `None` (the default): the
    /// core thread calls [`Journal::snapshot`] itself, deciding nothing meanwhile.
    ///
    /// The master asks for it once, after [`Journal::recover`], and writes at most one
    /// snapshot at a time through it, always of a sequence number it has already appended.
    ///
    /// # Errors
    /// A storage error (the master does not start).
    fn snapshot_writer(&mut self) -> Result<Option<Box<dyn SnapshotWriter>>, CoreError> {
        Ok(None)
    }

    /// The term of the leadership this journal writes under (a replicated log's; it never
    /// changes for one journal), 0 (the default) for a journal that has no election. Each
    /// pod session is welcomed with it, and a pod refuses a session of a lower term than
    /// one it has seen: a deposed leader cannot assign or cancel.
    fn term(&self) -> u64 {
        0
    }
}

/// Stores snapshots for a [`Journal`] on another thread (see [`Journal::snapshot_writer`]).
pub trait SnapshotWriter: Send + 'static {
    /// Does what [`Journal::snapshot`] does, while the journal may append events after
    /// `last_seq`: stores `state` as of event `last_seq` and drops the records it covers,
    /// never a record after it.
    ///
    /// # Errors
    /// A storage error; the master then stops.
    fn write(&mut self, last_seq: u64, state: &MasterState) -> Result<(), CoreError>;
}

/// A snapshot writer over a second handle of a journal whose handles share one storage and
/// may be used from two threads at once.
struct SharedHandle<J>(J);

impl<J: Journal> SnapshotWriter for SharedHandle<J> {
    fn write(&mut self, last_seq: u64, state: &MasterState) -> Result<(), CoreError> {
        self.0.snapshot(last_seq, state)
    }
}

/// What [`Journal::repair`] dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Repaired {
    /// The records dropped, in sequence order; empty when the journal was sound.
    pub dropped: Vec<DroppedRecord>,
}

/// One record a repair dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DroppedRecord {
    /// The sequence number (key) it was stored under.
    pub seq: u64,
    /// Its size in bytes.
    pub bytes: usize,
    /// Why it was dropped.
    pub reason: String,
}

/// What one record is worth to recovery.
enum Verdict {
    Good(Vec<Event>),
    Damaged(String),
    Unreadable(String),
}

/// Walks records in key order after a snapshot, judging each against the sequence number
/// the good records before it lead to.
struct Walk {
    after_seq: u64,
    expected: u64,
}

impl Walk {
    fn new(after_seq: u64) -> Result<Self, CoreError> {
        Ok(Walk {
            after_seq,
            expected: next_seq(after_seq)?,
        })
    }

    /// The verdict on the record under `seq`; `None` for one the snapshot covers (left
    /// behind by an interrupted truncation).
    fn judge(&mut self, seq: u64, bytes: &[u8]) -> Result<Option<Verdict>, CoreError> {
        if seq <= self.after_seq {
            return Ok(None);
        }
        if seq != self.expected {
            let reason = format!("expected a record starting at sequence {}", self.expected);
            return Ok(Some(Verdict::Damaged(reason)));
        }
        Ok(Some(match crate::codec::decode_record(bytes) {
            Ok(batch) if batch.is_empty() => Verdict::Damaged("record holds no events".to_owned()),
            Ok(batch) => {
                // The batch's numbers, and the next one after them, must exist.
                self.expected = u64::try_from(batch.len())
                    .ok()
                    .and_then(|n| seq.checked_add(n))
                    .filter(|next| *next < u64::MAX)
                    .ok_or_else(|| overflow(seq))?;
                Verdict::Good(batch)
            }
            Err(crate::codec::DecodeError::Damaged(reason)) => Verdict::Damaged(reason),
            Err(crate::codec::DecodeError::Unreadable(reason)) => Verdict::Unreadable(reason),
        }))
    }
}

/// Validates `(key, bytes)` records in key order, starting after `after_seq`, into events.
pub(crate) fn replay_records<I>(records: I, after_seq: u64) -> Result<Vec<(u64, Event)>, CoreError>
where
    I: IntoIterator<Item = Result<(u64, Vec<u8>), CoreError>>,
{
    let mut events = Vec::new();
    let mut walk = Walk::new(after_seq)?;
    for record in records {
        let (seq, bytes) = record?;
        match walk.judge(seq, &bytes)? {
            None => {}
            Some(Verdict::Good(batch)) => events.extend((seq..).zip(batch)),
            Some(Verdict::Damaged(reason)) => {
                return Err(CoreError::CorruptJournal { seq, reason })
            }
            Some(Verdict::Unreadable(reason)) => {
                return Err(CoreError::UnreadableJournal { seq, reason })
            }
        }
    }
    Ok(events)
}

/// The records a repair drops: the first damaged one after `after_seq` and all after it.
pub(crate) fn records_to_drop<I>(records: I, after_seq: u64) -> Result<Repaired, CoreError>
where
    I: IntoIterator<Item = Result<(u64, Vec<u8>), CoreError>>,
{
    let mut dropped: Vec<DroppedRecord> = Vec::new();
    let mut walk = Walk::new(after_seq)?;
    for record in records {
        let (seq, bytes) = record?;
        let reason = match dropped.first() {
            // Keys are in order: what follows a damaged record is after the snapshot too.
            Some(first) => format!("follows the damaged record at sequence {}", first.seq),
            None => match walk.judge(seq, &bytes)? {
                None | Some(Verdict::Good(_)) => continue,
                Some(Verdict::Damaged(reason)) => reason,
                Some(Verdict::Unreadable(reason)) => {
                    return Err(CoreError::UnreadableJournal { seq, reason })
                }
            },
        };
        error!(
            seq,
            bytes = bytes.len(),
            %reason,
            "journal repair drops a record; any work acknowledged in it is lost"
        );
        dropped.push(DroppedRecord {
            seq,
            bytes: bytes.len(),
            reason,
        });
    }
    Ok(Repaired { dropped })
}

fn next_seq(seq: u64) -> Result<u64, CoreError> {
    seq.checked_add(1).ok_or_else(|| overflow(seq))
}

fn overflow(seq: u64) -> CoreError {
    CoreError::CorruptJournal {
        seq,
        reason: "sequence numbers run past 2^64".to_owned(),
    }
}
