use std::path::Path;

use tracing::debug;

use super::record::{decode_snapshot, encode_records, encode_snapshot};
use super::{replay_records, Journal, Recovered, MAX_RECORD_BYTES};
use crate::error::CoreError;
use crate::master::{Event, MasterState};

const JOURNAL_TREE: &str = "journal";
const SNAPSHOT_TREE: &str = "snapshot";
const SNAPSHOT_KEY: &str = "latest";

/// A journal in a sled database: one value per commit batch (packed, size-capped), one
/// `flush` (fsync) per append.
///
/// Packing a batch into a few large values instead of one key per event is what makes
/// group commit pay off: sled's per-key work, not the disk, is the limit otherwise.
#[derive(Debug)]
pub struct SledJournal {
    db: sled::Db,
    journal: sled::Tree,
    snapshots: sled::Tree,
}

impl SledJournal {
    /// Opens (or creates) the journal in directory `path`.
    ///
    /// # Errors
    /// A storage error, e.g. the directory is in use by another master.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CoreError> {
        let db = sled::Config::new()
            .path(path.as_ref())
            // Every append flushes itself; a background flusher would only add fsyncs.
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let journal = db.open_tree(JOURNAL_TREE)?;
        let snapshots = db.open_tree(SNAPSHOT_TREE)?;
        Ok(SledJournal {
            db,
            journal,
            snapshots,
        })
    }

    /// Writes raw bytes under a sequence number, bypassing encoding: for fault-injection
    /// tests that simulate torn or corrupt records.
    ///
    /// # Errors
    /// A storage error.
    #[doc(hidden)]
    pub fn write_raw_record(&self, seq: u64, bytes: &[u8]) -> Result<(), CoreError> {
        self.journal.insert(seq.to_be_bytes(), bytes)?;
        self.db.flush()?;
        Ok(())
    }

    /// The raw bytes stored under a sequence number: for fault-injection tests.
    ///
    /// # Errors
    /// A storage error.
    #[doc(hidden)]
    pub fn raw_record(&self, seq: u64) -> Result<Option<Vec<u8>>, CoreError> {
        Ok(self.journal.get(seq.to_be_bytes())?.map(|v| v.to_vec()))
    }

    /// Reads every event in the journal (after the latest snapshot): for tools and tests
    /// that audit what was recorded.
    ///
    /// # Errors
    /// As [`Journal::recover`].
    pub fn read_events(&mut self) -> Result<Vec<(u64, Event)>, CoreError> {
        Ok(self.recover()?.events)
    }
}

fn key_seq(key: &[u8]) -> Result<u64, CoreError> {
    let arr: [u8; 8] = key.try_into().map_err(|_| CoreError::CorruptJournal {
        seq: 0,
        reason: format!(
            "journal key of {} bytes is not a sequence number",
            key.len()
        ),
    })?;
    Ok(u64::from_be_bytes(arr))
}

impl Journal for SledJournal {
    fn recover(&mut self) -> Result<Recovered, CoreError> {
        let snapshot = match self.snapshots.get(SNAPSHOT_KEY)? {
            Some(bytes) => Some(decode_snapshot(&bytes)?),
            None => None,
        };
        let after = snapshot.as_ref().map_or(0, |(seq, _)| *seq);
        let records = self.journal.iter().map(|r| {
            let (k, v) = r?;
            Ok((key_seq(&k)?, v.to_vec()))
        });
        let (events, torn) = replay_records(records, after)?;
        if let Some(seq) = torn {
            self.journal.remove(seq.to_be_bytes())?;
            self.db.flush()?;
        }
        debug!(snapshot = after, events = events.len(), "journal recovered");
        Ok(Recovered { snapshot, events })
    }

    fn append(&mut self, first_seq: u64, events: &[Event]) -> Result<(), CoreError> {
        let records = encode_records(first_seq, events, MAX_RECORD_BYTES)?;
        match records.as_slice() {
            [] => return Ok(()),
            [(seq, bytes)] => {
                self.journal.insert(seq.to_be_bytes(), bytes.as_slice())?;
            }
            _ => {
                let mut batch = sled::Batch::default();
                for (seq, bytes) in records {
                    batch.insert(&seq.to_be_bytes(), bytes);
                }
                self.journal.apply_batch(batch)?;
            }
        }
        self.db.flush()?;
        Ok(())
    }

    fn snapshot(&mut self, last_seq: u64, state: &MasterState) -> Result<(), CoreError> {
        let bytes = encode_snapshot(last_seq, state)?;
        self.snapshots.insert(SNAPSHOT_KEY, bytes)?;
        self.db.flush()?;
        // Records wholly covered by the snapshot; losing this removal to a crash is harmless
        // because recovery skips covered records.
        let mut batch = sled::Batch::default();
        for key in self.journal.range(..=last_seq.to_be_bytes()).keys() {
            batch.remove(key?);
        }
        self.journal.apply_batch(batch)?;
        Ok(())
    }
}
