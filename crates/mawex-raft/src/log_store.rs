//! The Raft log in sled.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

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
#[derive(Debug, Clone)]
pub struct SledLogStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    durability: SledSync,
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
            inner: Arc::new(Mutex::new(Inner {
                db,
                log,
                meta,
                durability,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while the lock was held left nothing half-written that a sync would make
        // durable: sled's writes are atomic, so the store is usable as it is.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Result<u64, RaftStoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| RaftStoreError::Damaged {
        what: "a log key".into(),
        reason: format!("{} bytes, not an index", key.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

impl Inner {
    fn sync(&mut self) -> Result<(), RaftStoreError> {
        Ok(self.durability.sync(&self.db)?)
    }

    fn entry(key: &[u8], value: &[u8]) -> Result<EntryOf<MasterRaft>, RaftStoreError> {
        let index = key_index(key)?;
        let entry: EntryOf<MasterRaft> = open(value, &|| format!("log entry {index}"))?;
        if entry.index() != index {
            return Err(RaftStoreError::Damaged {
                what: format!("log entry {index}"),
                reason: format!("it holds entry {}", entry.index()),
            });
        }
        Ok(entry)
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
                Inner::entry(&k, &v)
            })
            .collect()
    }
}

impl RaftLogReader<MasterRaft> for SledLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + openraft::OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<MasterRaft>>, io::Error> {
        Ok(self.lock().entries(range)?)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<MasterRaft>>, io::Error> {
        Ok(self.lock().read_meta(VOTE_KEY)?)
    }
}

impl RaftLogStorage<MasterRaft> for SledLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<MasterRaft>, io::Error> {
        let inner = self.lock();
        let purged: Option<LogIdOf<MasterRaft>> = inner.read_meta(PURGED_KEY)?;
        let last = match inner.log.last()? {
            Some((k, v)) => Some(Inner::entry(&k, &v)?.log_id()),
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
        let mut inner = self.lock();
        inner.write_meta(VOTE_KEY, vote)?;
        // Durable before it returns: a vote forgotten in a crash could be cast twice.
        inner.sync()?;
        Ok(())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<MasterRaft>>,
    ) -> Result<(), io::Error> {
        // Not synced on its own: a committed position lost to a crash is learnt again from
        // the leader, and the next append syncs it.
        Ok(self.lock().write_meta(COMMITTED_KEY, &committed)?)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<MasterRaft>>, io::Error> {
        let committed: Option<Option<LogIdOf<MasterRaft>>> =
            self.lock().read_meta(COMMITTED_KEY)?;
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
        let mut inner = self.lock();
        let mut batch = sled::Batch::default();
        for entry in entries {
            let index = entry.index();
            let bytes = seal(&entry, &|| format!("log entry {index}"))?;
            batch.insert(&index_key(index), bytes);
        }
        inner.log.apply_batch(batch).map_err(RaftStoreError::from)?;
        let synced = inner.sync();
        drop(inner);
        match synced {
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
        let mut inner = self.lock();
        let start = last_log_id.map_or(0, |id| id.index().saturating_add(1));
        let mut batch = sled::Batch::default();
        for key in inner.log.range(index_key(start)..).keys() {
            batch.remove(key.map_err(RaftStoreError::from)?);
        }
        inner.log.apply_batch(batch).map_err(RaftStoreError::from)?;
        inner.sync()?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<MasterRaft>) -> Result<(), io::Error> {
        let mut inner = self.lock();
        // The purged position first: entries gone without it would read as a log that starts
        // later than it does.
        inner.write_meta(PURGED_KEY, &log_id)?;
        let mut batch = sled::Batch::default();
        for key in inner.log.range(..=index_key(log_id.index())).keys() {
            batch.remove(key.map_err(RaftStoreError::from)?);
        }
        inner.log.apply_batch(batch).map_err(RaftStoreError::from)?;
        inner.sync()?;
        Ok(())
    }
}
