//! The Raft log in sled.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use mawex_core::{FreeSpace, SledSync};
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
/// This disk's incarnation: drawn when the store is made, never changed.
const INCARNATION_KEY: &[u8] = b"incarnation";
/// The incarnation each peer answered with first, by its id (`peer/<id>`).
const PEER_PREFIX: &str = "peer/";

/// The Raft log, the vote and the committed position of one master, in a sled database.
///
/// Durability is the journal's (`mawex_core::SledSync`): an append is reported flushed, a
/// vote saved, a truncation or purge done, only once it is on disk. Each entry is stored with
/// a checksum and read back checked: damage is an error naming the entry, never a silently
/// shorter log. Cloning gives another handle on the same store (the log reader is one).
///
/// Reads take no lock (sled's trees are safe to share). An append writes its entries and
/// returns; a `mawex-raft-flush` thread syncs and then tells openraft, one sync for every
/// append that came before it (group commit, as the journal's). A vote, a truncation and a
/// purge sync before they return. A failed sync fails every append waiting on it and every
/// one after: the store stops, as the journal does.
#[derive(Debug, Clone)]
pub struct SledLogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    durability: Arc<Mutex<Durability>>,
    flusher: Arc<FlusherHandle>,
    /// Checked before each append: sled must never meet a full disk.
    free_space: FreeSpace,
}

/// What syncs the store, and why a sync failed once one has: after that no sync is trusted
/// (an `fsync` after a failed one may report success for pages that were lost), so every
/// later one fails too. Kept under the one lock every sync takes.
#[derive(Debug)]
struct Durability {
    sync: SledSync,
    failed: Option<String>,
    /// Syncs run so far, for any reason.
    syncs: u64,
}

impl Durability {
    fn sync(&mut self, db: &sled::Db) -> Result<(), String> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.syncs = self.syncs.saturating_add(1);
        // A panic inside the sync counts as its failure.
        let synced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.sync.sync(db)))
            .unwrap_or_else(|_| {
                Err(mawex_core::CoreError::Thread(
                    "the sync of the Raft log panicked".into(),
                ))
            });
        synced.map_err(|e| {
            let e = format!("the Raft log could not be synced: {e}");
            self.failed = Some(e.clone());
            e
        })
    }
}

/// The appends waiting for a sync, shared with the flush thread.
#[derive(Debug, Default)]
struct Flushes {
    queue: Mutex<FlushQueue>,
    wake: Condvar,
    /// Syncs the thread ran (for tests: one covers many appends).
    syncs: AtomicU64,
}

#[derive(Default)]
struct FlushQueue {
    waiting: Vec<IOFlushed<MasterRaft>>,
    /// Why a sync failed, once one has: every later append fails too.
    failed: Option<String>,
    closed: bool,
}

impl std::fmt::Debug for FlushQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushQueue")
            .field("waiting", &self.waiting.len())
            .field("failed", &self.failed)
            .field("closed", &self.closed)
            .finish()
    }
}

/// Stops the flush thread (after it has synced what waits) when the last handle goes.
#[derive(Debug)]
struct FlusherHandle {
    flushes: Arc<Flushes>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for FlusherHandle {
    fn drop(&mut self) {
        lock(&self.flushes.queue).closed = true;
        self.flushes.wake.notify_all();
        let thread = self
            .thread
            .get_mut()
            .map_or_else(|poisoned| poisoned.into_inner().take(), Option::take);
        if let Some(thread) = thread {
            // The thread holds the database: joined, so that the directory can be opened
            // again as soon as the store is gone.
            let _ = thread.join();
        }
    }
}

/// A lock a panic left behind is still usable: every value under these locks is whole
/// between two statements.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn flush_thread(db: sled::Db, durability: Arc<Mutex<Durability>>, flushes: Arc<Flushes>) {
    loop {
        let waiting = {
            let mut queue = lock(&flushes.queue);
            while queue.waiting.is_empty() && !queue.closed {
                queue = flushes
                    .wake
                    .wait(queue)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if queue.waiting.is_empty() {
                return; // Closed, and nothing left to sync.
            }
            std::mem::take(&mut queue.waiting)
        };
        // Every append in `waiting` wrote its entries before it was queued: this sync
        // covers them all.
        let failure = lock(&durability).sync(&db).err();
        flushes.syncs.fetch_add(1, Ordering::Relaxed);
        for callback in waiting {
            callback.io_completed(match &failure {
                None => Ok(()),
                Some(e) => Err(io::Error::other(e.clone())),
            });
        }
        if let Some(e) = failure {
            tracing::error!(error = %e, "the Raft log could not be synced; the store stops");
            let mut queue = lock(&flushes.queue);
            queue.failed = Some(e);
            // Appends queued while the sync failed hear it too.
            for callback in std::mem::take(&mut queue.waiting) {
                callback.io_completed(Err(io::Error::other("the Raft log could not be synced")));
            }
        }
    }
}

impl SledLogStore {
    /// Opens (or creates) the store in directory `path`.
    ///
    /// # Errors
    /// A storage error, e.g. the directory is in use.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RaftStoreError> {
        let config = sled::Config::new()
            .path(path.as_ref())
            // Every write that must be durable syncs itself.
            .flush_every_ms(None);
        // A node stopped a moment ago in this process may still hold the directory.
        let db = mawex_core::journal::open_waiting_for_lock(&config)?;
        let log = db.open_tree(LOG_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        let durability = Arc::new(Mutex::new(Durability {
            sync: SledSync::new(path.as_ref())?,
            failed: None,
            syncs: 0,
        }));
        let flushes = Arc::new(Flushes::default());
        let thread = {
            let (db, durability, flushes) = (db.clone(), durability.clone(), flushes.clone());
            std::thread::Builder::new()
                .name("mawex-raft-flush".into())
                .spawn(move || flush_thread(db, durability, flushes))
                .map_err(|e| RaftStoreError::Storage(e.into()))?
        };
        let store = SledLogStore {
            db,
            log,
            meta,
            durability,
            flusher: Arc::new(FlusherHandle {
                flushes,
                thread: Mutex::new(Some(thread)),
            }),
            free_space: FreeSpace::new(path.as_ref(), FreeSpace::DEFAULT_RESERVE),
        };
        if store.read_meta::<u64>(INCARNATION_KEY)?.is_none() {
            store.write_meta(INCARNATION_KEY, &new_incarnation())?;
            store.sync()?;
        }
        Ok(store)
    }

    /// Keeps `bytes` free on the store's filesystem: an append that would leave less is
    /// refused before it reaches sled ([`mawex_core::CoreError::DiskFull`]), and openraft then
    /// stops the node. 0 turns the check off.
    #[must_use]
    pub fn with_free_space_reserve(mut self, bytes: u64) -> Self {
        self.free_space = self.free_space.with_reserve(bytes);
        self
    }

    /// Makes every write so far durable, now.
    fn sync(&self) -> Result<(), RaftStoreError> {
        let synced = lock(&self.durability).sync(&self.db);
        synced.map_err(|e| {
            // Appends check the queue, not the sync's lock (a sync may hold it long).
            lock(&self.flusher.flushes.queue).failed = Some(e.clone());
            RaftStoreError::Storage(io::Error::other(e).into())
        })
    }

    /// Syncs of the store so far, for any reason (appends, votes, truncations, purges): a
    /// cluster of one syncs once per batch of its master, as the sled journal does.
    pub fn syncs(&self) -> u64 {
        lock(&self.durability).syncs
    }

    /// Syncs the flush thread ran so far.
    #[doc(hidden)]
    pub fn syncs_for_appends(&self) -> u64 {
        self.flusher.flushes.syncs.load(Ordering::Relaxed)
    }

    /// Holds every sync back until the value is dropped (for tests of the flush thread).
    #[doc(hidden)]
    pub fn hold_syncs(&self) -> SyncsHeld<'_> {
        SyncsHeld(lock(&self.durability))
    }
}

/// Syncs held back (see [`SledLogStore::hold_syncs`]). A vote, truncation or purge on the
/// same thread meanwhile would wait for itself.
#[doc(hidden)]
#[derive(Debug)]
pub struct SyncsHeld<'a>(#[allow(dead_code)] MutexGuard<'a, Durability>);

impl SledLogStore {
    /// This disk's incarnation: a number drawn when the store was made. A node that comes
    /// back with an empty disk has another one, which its peers tell from the one they knew.
    ///
    /// # Errors
    /// The stored value cannot be read.
    pub fn incarnation(&self) -> Result<u64, RaftStoreError> {
        self.read_meta(INCARNATION_KEY)?
            .ok_or_else(|| RaftStoreError::Damaged {
                what: "the Raft log".into(),
                reason: "its incarnation is missing".into(),
            })
    }

    /// The incarnation peer `id` answered with first, if it ever answered.
    pub(crate) fn peer_incarnation(&self, id: u64) -> Result<Option<u64>, RaftStoreError> {
        self.read_meta(format!("{PEER_PREFIX}{id}").as_bytes())
    }

    /// Remembers (durably) that peer `id` is the disk of `incarnation`.
    pub(crate) fn remember_peer(&self, id: u64, incarnation: u64) -> Result<(), RaftStoreError> {
        self.write_meta(format!("{PEER_PREFIX}{id}").as_bytes(), &incarnation)?;
        self.sync()
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

    pub(crate) fn entries<RB: RangeBounds<u64>>(
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
        let mut bytes = 0usize;
        for entry in entries {
            let index = entry.index();
            match seal(&entry, &|| format!("log entry {index}")) {
                Ok(sealed) => {
                    bytes = bytes.saturating_add(sealed.len());
                    batch.insert(&index_key(index), sealed);
                }
                Err(e) => {
                    sealed = Err(e);
                    break;
                }
            }
        }
        let written = sealed
            .and_then(|()| {
                // sled keeps about twice what it is given until it compacts.
                Ok(self.free_space.check("write", bytes.saturating_mul(2))?)
            })
            .and_then(|()| Ok(self.log.apply_batch(batch)?));
        let flushes = &self.flusher.flushes;
        let mut queue = lock(&flushes.queue);
        let written = match (&queue.failed, written) {
            (Some(e), _) => Err(RaftStoreError::Storage(io::Error::other(e.clone()).into())),
            (None, written) => written,
        };
        match written {
            Ok(()) => {
                // Readable now; flushed once the thread has synced.
                queue.waiting.push(callback);
                drop(queue);
                flushes.wake.notify_one();
                Ok(())
            }
            Err(e) => {
                drop(queue);
                // The callback hears the outcome too, as the caller does.
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

/// A fresh incarnation: never 0 (which means "none" on the wire), and with the process's
/// random hasher keys, the time and the process id in it, unlike any other disk's.
fn new_incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}
