//! The durable, append-only record of every task state change.

mod memory;
mod sled_journal;
#[cfg(test)]
mod tests;

use tracing::warn;

pub use memory::MemoryJournal;
pub use sled_journal::SledJournal;

use crate::error::CoreError;
use crate::state::{Event, MasterState};

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
        state.rebuild_indexes();
        for (_, event) in &self.events {
            state.apply(event);
        }
        (last, state)
    }
}

/// Durable storage of events.
///
/// Architecture invariant (journal first): when `append` returns `Ok`, the events are on
/// stable storage. The master applies nothing visibly, answers no client and sends no
/// assignment before that. An `Err` from `append` is fatal to the master.
pub trait Journal: Send + 'static {
    /// Reads the latest snapshot and every valid event after it.
    ///
    /// A last record that fails its checksum or decode (a torn write) is dropped with a
    /// warning; a bad record followed by good ones is an error naming its sequence number.
    ///
    /// # Errors
    /// [`CoreError::CorruptJournal`], [`CoreError::CorruptSnapshot`] or a storage error.
    fn recover(&mut self) -> Result<Recovered, CoreError>;

    /// Appends `events`, numbered from `first_seq`, and makes them durable.
    ///
    /// # Errors
    /// A storage error; the master then stops.
    fn append(&mut self, first_seq: u64, events: &[Event]) -> Result<(), CoreError>;

    /// Stores `state` as of event `last_seq` and drops the records it covers.
    ///
    /// # Errors
    /// A storage error.
    fn snapshot(&mut self, last_seq: u64, state: &MasterState) -> Result<(), CoreError>;
}

/// Events with their sequence numbers, and the key of a torn last record to delete.
pub(crate) type Replayed = (Vec<(u64, Event)>, Option<u64>);

/// Validates `(key, bytes)` records in key order, starting after `after_seq`.
pub(crate) fn replay_records<I>(records: I, after_seq: u64) -> Result<Replayed, CoreError>
where
    I: IntoIterator<Item = Result<(u64, Vec<u8>), CoreError>>,
{
    let mut events = Vec::new();
    let mut expected = after_seq + 1;
    let mut bad: Option<(u64, String)> = None;
    for record in records {
        let (seq, bytes) = record?;
        if seq <= after_seq {
            // Covered by the snapshot; left behind by an interrupted truncation.
            continue;
        }
        if let Some((bad_seq, reason)) = bad.take() {
            return Err(CoreError::CorruptJournal {
                seq: bad_seq,
                reason,
            });
        }
        if seq != expected {
            return Err(CoreError::CorruptJournal {
                seq,
                reason: format!("expected a record starting at sequence {expected}"),
            });
        }
        match crate::codec::decode_record(&bytes) {
            Ok(batch) if !batch.is_empty() => {
                for event in batch {
                    events.push((expected, event));
                    expected += 1;
                }
            }
            Ok(_) => bad = Some((seq, "record holds no events".to_owned())),
            Err(crate::codec::DecodeError::Torn(reason)) => bad = Some((seq, reason)),
            // Intact bytes this version cannot read: never a torn write, never to be deleted.
            Err(crate::codec::DecodeError::Unreadable(reason)) => {
                return Err(CoreError::CorruptJournal { seq, reason });
            }
        }
    }
    let torn = bad.map(|(seq, reason)| {
        warn!(seq, %reason, "dropping a torn last journal record (a write interrupted by a crash)");
        seq
    });
    Ok((events, torn))
}
