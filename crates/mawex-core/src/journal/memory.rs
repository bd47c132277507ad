use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    records_to_drop, replay_records, Journal, Recovered, Repaired, SharedHandle, SnapshotWriter,
    MAX_RECORD_BYTES,
};
use crate::codec::{decode_snapshot, encode_records, encode_snapshot};
use crate::error::CoreError;
use crate::state::{Event, MasterState};

#[derive(Debug, Default)]
struct Inner {
    records: BTreeMap<u64, Vec<u8>>,
    snapshot: Option<Vec<u8>>,
}

/// A journal in memory, encoded exactly like the sled one. Clones share the same storage,
/// so a test can "restart" a master on the journal a previous one wrote.
#[derive(Debug, Clone, Default)]
pub struct MemoryJournal {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryJournal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes raw bytes under a sequence number: for fault-injection tests.
    #[doc(hidden)]
    pub fn write_raw_record(&self, seq: u64, bytes: &[u8]) {
        self.lock().records.insert(seq, bytes.to_vec());
    }

    /// The stored records as `(first sequence number, bytes)`: for golden-file tests.
    #[doc(hidden)]
    pub fn raw_records(&self) -> Vec<(u64, Vec<u8>)> {
        self.lock()
            .records
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// The stored snapshot bytes: for golden-file tests.
    #[doc(hidden)]
    pub fn raw_snapshot(&self) -> Option<Vec<u8>> {
        self.lock().snapshot.clone()
    }

    /// Replaces the stored snapshot bytes: for golden-file and fault-injection tests.
    #[doc(hidden)]
    pub fn write_raw_snapshot(&self, bytes: &[u8]) {
        self.lock().snapshot = Some(bytes.to_vec());
    }

    /// Number of records stored (after truncation by snapshots).
    pub fn record_count(&self) -> usize {
        self.lock().records.len()
    }
}

impl Journal for MemoryJournal {
    fn recover(&mut self) -> Result<Recovered, CoreError> {
        let inner = self.lock();
        let snapshot = match &inner.snapshot {
            Some(bytes) => Some(decode_snapshot(bytes)?),
            None => None,
        };
        let after = snapshot.as_ref().map_or(0, |(seq, _)| *seq);
        let records = inner.records.iter().map(|(k, v)| Ok((*k, v.clone())));
        let events = replay_records(records, after)?;
        Ok(Recovered { snapshot, events })
    }

    fn append(&mut self, first_seq: u64, events: &[Event]) -> Result<(), CoreError> {
        let records = encode_records(first_seq, events, MAX_RECORD_BYTES)?;
        self.lock().records.extend(records);
        Ok(())
    }

    fn snapshot(&mut self, last_seq: u64, state: &MasterState) -> Result<(), CoreError> {
        let bytes = encode_snapshot(last_seq, state)?;
        let mut inner = self.lock();
        inner.snapshot = Some(bytes);
        inner.records.retain(|seq, _| *seq > last_seq);
        Ok(())
    }

    fn repair(&mut self) -> Result<Repaired, CoreError> {
        let mut inner = self.lock();
        let after = match &inner.snapshot {
            Some(bytes) => decode_snapshot(bytes)?.0,
            None => 0,
        };
        let records = inner.records.iter().map(|(k, v)| Ok((*k, v.clone())));
        let repaired = records_to_drop(records, after)?;
        for record in &repaired.dropped {
            inner.records.remove(&record.seq);
        }
        Ok(repaired)
    }

    fn snapshot_writer(&mut self) -> Result<Option<Box<dyn SnapshotWriter>>, CoreError> {
        Ok(Some(Box::new(SharedHandle(self.clone()))))
    }
}
