//! The Raft log in sled.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use mawex_core::SledSync;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};

use crate::codec::{open, seal};
use crate::{MasterRaft, RaftStoreError};

/// The tree of entries, keyed by index (big-endian, so that sled's order is the log's).
const LOG_TREE: &str = "raft-log";
/// The tree of the vote, the committed position and the last purged entry.
const META_TREE: &str = "raft-meta";
const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const PURGED_KEY: &[u8] = b"purged";

/// The Raft log, the vote and the committed position of one master, in a sled database.
///
/// Durability is the journal's (`mawex_core::SledSync`): an append is reported flushed, a
/// vote saved, a truncation or purge done, only once it is on disk. Each entry is stored with
/// a checksum and read back checked: damage is an error naming the entry, never a silently
/// shorter log. Cloning gives another handle on the same store (the log reader is one).
///
/// Reads take no lock (sled's trees are safe to share); writers take turns only for the
/// sync. The sync runs on the calling task, so it holds a tokio worker for as long as the disk
/// takes: a flusher thread that syncs once for many appends comes with the master writing
/// through Raft.
#[derive(Debug, Clone)]
pub struct SledLogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    durability: Arc<Mutex<SledSync>>,
}

impl SledLogStore {
    /// Opens (or creates) the store in directory `path`.
    ///
    /// # Errors
    /// A storage error, e.g. the directory is in use.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RaftStoreError> {
        let db = sled::Config::new()
            .path(path.as_ref())
            // Every write that must be durable syncs itself.
            .flush_every_ms(None)
            .open()?;
        let log = db.open_tree(LOG_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        let durability = SledSync::new(path.as_ref())?;
        Ok(SledLogStore {
            db,
            log,
            meta,
            durability: Arc::new(Mutex::new(durability)),
        })
    }

    /// Makes every write so far durable.
    fn sync(&self) -> Result<(), RaftStoreError> {
        // A panic during a sync leaves nothing half-done: the next sync covers all of it.
        let mut durability = self
            .durability
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(durability.sync(&self.db)?)
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, RaftStoreError> {
        let what = || format!("the stored {}", String::from_utf8_lossy(key));
        self.meta.get(key)?.map(|v| open(&v, &what)).transpose()
    }

    fn write_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), RaftStoreError> {
        let what = || format!("the {}", String::from_utf8_lossy(key));
        self.meta.insert(key, seal(value, &what)?)?;
        Ok(())
    }

    fn entries<RB: RangeBounds<u64>>(
        &self,
        range: RB,
    ) -> Result<Vec<EntryOf<MasterRaft>>, RaftStoreError> {
        let bound = |b: Bound<&u64>| match b {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let range = (bound(range.start_bound()), bound(range.end_bound()));
        self.log
            .range(range)
            .map(|kv| {
                let (k, v) = kv?;
                entry(&k, &v)
            })
            .collect()
    }

    /// Removes the entries whose keys `keys` yields, durably.
    fn remove(
        &self,
        keys: impl Iterator<Item = sled::Result<sled::IVec>>,
    ) -> Result<(), RaftStoreError> {
        let mut batch = sled::Batch::default();
        for key in keys {
            batch.remove(key?);
        }
        self.log.apply_batch(batch)?;
        self.sync()
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn entry(key: &[u8], value: &[u8]) -> Result<EntryOf<MasterRaft>, RaftStoreError> {
    let index: [u8; 8] = key.try_into().map_err(|_| RaftStoreError::Damaged {
        what: "a log key".into(),
        reason: format!("{} bytes, not an index", key.len()),
    })?;
    let index = u64::from_be_bytes(index);
    let entry: EntryOf<MasterRaft> = open(value, &|| format!("log entry {index}"))?;
    if entry.index() != index {
        return Err(RaftStoreError::Damaged {
            what: format!("log entry {index}"),
            reason: format!("it holds entry {}", entry.index()),
        });
    }
    Ok(entry)
}

impl RaftLogReader<MasterRaft> for SledLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + openraft::OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<MasterRaft>>, io::Error> {
        Ok(self.entries(range)?)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<MasterRaft>>, io::Error> {
        Ok(self.read_meta(VOTE_KEY)?)
    }
}

impl RaftLogStorage<MasterRaft> for SledLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<MasterRaft>, io::Error> {
        let purged: Option<LogIdOf<MasterRaft>> = self.read_meta(PURGED_KEY)?;
        let last = match self.log.last().map_err(RaftStoreError::from)? {
            // Entries a crash kept below the purged position do not count.
            Some((k, v)) => Some(entry(&k, &v)?.log_id()).max(purged),
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<MasterRaft>) -> Result<(), io::Error> {
        self.write_meta(VOTE_KEY, vote)?;
        // Durable before it returns: a vote forgotten in a crash could be cast twice.
        self.sync()?;
        Ok(())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<MasterRaft>>,
    ) -> Result<(), io::Error> {
        // Not synced on its own: a committed position lost to a crash is learnt again from
        // the leader, and the next append syncs it.
        Ok(self.write_meta(COMMITTED_KEY, &committed)?)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<MasterRaft>>, io::Error> {
        let committed: Option<Option<LogIdOf<MasterRaft>>> = self.read_meta(COMMITTED_KEY)?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<MasterRaft>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<MasterRaft>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut sealed = Ok(());
        for entry in entries {
            let index = entry.index();
            match seal(&entry, &|| format!("log entry {index}")) {
                Ok(bytes) => batch.insert(&index_key(index), bytes),
                Err(e) => {
                    sealed = Err(e);
                    break;
                }
            }
        }
        let written = sealed
            .and_then(|()| Ok(self.log.apply_batch(batch)?))
            .and_then(|()| self.sync());
        // The callback hears the outcome either way, as the caller does.
        match written {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let e = io::Error::from(e);
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<MasterRaft>>,
    ) -> Result<(), io::Error> {
        let start = last_log_id.map_or(0, |id| id.index().saturating_add(1));
        Ok(self.remove(self.log.range(index_key(start)..).keys())?)
    }

    async fn purge(&mut self, log_id: LogIdOf<MasterRaft>) -> Result<(), io::Error> {
        let purged: Option<LogIdOf<MasterRaft>> = self.read_meta(PURGED_KEY)?;
        if purged >= Some(log_id) {
            return Ok(()); // Purged that far already: a purge never moves back.
        }
        // The purged position first: entries gone without it would read as a log that starts
        // later than it does.
        self.write_meta(PURGED_KEY, &log_id)?;
        Ok(self.remove(self.log.range(..=index_key(log_id.index())).keys())?)
    }
}
