use std::collections::HashSet;
use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use tracing::debug;

use super::{
    records_to_drop, replay_records, FreeSpace, Journal, Recovered, Repaired, SharedHandle,
    SnapshotWriter, MAX_RECORD_BYTES,
};
use crate::codec::{decode_snapshot, encode_records, encode_snapshot};
use crate::error::CoreError;
use crate::state::{Event, MasterState};

const JOURNAL_TREE: &str = "journal";
/// The tree where snapshots were kept before they moved to files (still read).
const SNAPSHOT_TREE: &str = "snapshot";
/// Snapshots are files in the journal's directory, named by the sequence number they cover:
/// `mawex-snapshot-<last_seq, 20 digits>`.
const SNAPSHOT_FILE_PREFIX: &str = "mawex-snapshot-";
/// A snapshot file is written under this name, synced, then renamed into place.
const SNAPSHOT_FILE_TEMP: &str = "mawex-snapshot.tmp";
/// The manifest once snapshots are files: not 12 bytes long, so a version that kept them in
/// the tree refuses the journal ("manifest of 46 bytes, expected 12") instead of finding no
/// snapshot and starting empty.
const SNAPSHOTS_IN_FILES: &[u8] = b"snapshots are files named mawex-snapshot-<seq>";
/// In that tree: names the chunks of the snapshot, `[last_seq u64 BE][chunk count u32 BE]`,
/// or holds [`SNAPSHOTS_IN_FILES`].
const SNAPSHOT_MANIFEST_KEY: &[u8] = b"manifest";
/// Snapshot chunks are keyed `chunk/[last_seq u64 BE][index u32 BE]`.
const SNAPSHOT_CHUNK_PREFIX: &[u8] = b"chunk/";
/// sled writes values much larger than this to unsynced side files ("blobs"); snapshots in
/// the tree were cut into chunks below it so everything went through the synced log.
const SNAPSHOT_CHUNK_BYTES: usize = 120 * 1024;
/// Disk space sled 0.34 takes per byte of records appended (measured: 1.6, with 16 KiB
/// tasks), rounded up: what the space check asks for.
const RECORD_AMPLIFICATION: usize = 2;
/// ... and per byte of snapshot: the new file, while the one before it still exists.
const SNAPSHOT_AMPLIFICATION: usize = 2;
/// sled 0.34 keeps its log in this file of the database directory.
const SLED_DATA_FILE: &str = "db";
/// ... and writes pages too large for its log into files of this directory, unsynced.
const SLED_BLOB_DIR: &str = "blobs";

fn chunk_key(last_seq: u64, index: u32) -> Vec<u8> {
    let mut key = SNAPSHOT_CHUNK_PREFIX.to_vec();
    key.extend_from_slice(&last_seq.to_be_bytes());
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// A journal in a sled database: one value per commit batch (packed, size-capped), one
/// durable flush per append.
///
/// Packing a batch into a few large values instead of one key per event is what makes
/// group commit pay off: sled's per-key work, not the disk, is the limit otherwise.
///
/// Durability: sled's own flush uses `sync_file_range`, which neither flushes the device's
/// write cache nor file metadata, and it never syncs the side files it writes for very large
/// pages. So after sled's flush the journal `fdatasync`s sled's data file and `fsync`s every
/// side file it has not synced yet. Records are kept small so that side files stay rare.
///
/// Snapshots are plain files beside sled's (`mawex-snapshot-<last_seq>`), written whole,
/// synced and renamed into place. In sled they cost a million-task master four times their
/// size on disk, a second more to open, and a flush that every append waited behind. A
/// snapshot an older version kept in sled's `snapshot` tree is still read, and removed with
/// the first new snapshot.
///
/// A full disk: sled 0.34 does not survive a failed write well (it may wait forever for the
/// write when closing), so the journal never lets a write reach a full disk. Before each
/// append and snapshot it checks the space left on its filesystem and refuses with
/// [`CoreError::DiskFull`] (the master then stops) when the write would leave less than a
/// reserve ([`SledJournal::DEFAULT_FREE_SPACE_RESERVE`], or
/// [`with_free_space_reserve`](SledJournal::with_free_space_reserve)) free.
#[derive(Debug)]
pub struct SledJournal {
    db: sled::Db,
    dir: PathBuf,
    free_space: FreeSpace,
    journal: sled::Tree,
    snapshots: sled::Tree,
    durability: SledSync,
}

/// What makes writes to a sled database durable beyond sled's own flush, which neither
/// flushes the disk's write cache nor syncs the side files sled writes for very large pages
/// (see [`SledJournal`]): after the flush, `fdatasync` of sled's data file and `fsync` of each
/// side file not synced yet. Shared with other stores kept in sled (the Raft log).
#[derive(Debug)]
pub struct SledSync {
    data_file: std::fs::File,
    blob_dir: PathBuf,
    /// Side files already synced (pruned to those that still exist).
    synced_blobs: HashSet<OsString>,
}

/// Where a journal's latest snapshot is.
enum LatestSnapshot {
    None,
    /// A snapshot file, by the sequence number it covers.
    File(u64, PathBuf),
    /// A snapshot in the tree (sequence number, chunks), as an older version kept it.
    Tree(u64, u32),
}

impl LatestSnapshot {
    /// The sequence number it covers (0 without one).
    fn seq(&self) -> u64 {
        match self {
            LatestSnapshot::None => 0,
            LatestSnapshot::File(seq, _) | LatestSnapshot::Tree(seq, _) => *seq,
        }
    }
}

impl SledSync {
    /// For the sled database in `dir` (opened already); makes the directory entries of its
    /// files durable.
    ///
    /// # Errors
    /// The data file cannot be opened, or the directory not synced.
    pub fn new(dir: &Path) -> Result<Self, CoreError> {
        let data_path = dir.join(SLED_DATA_FILE);
        let data_file = std::fs::File::open(&data_path).map_err(|e| {
            CoreError::Config(format!(
                "cannot open sled's data file {} to sync it: {e}",
                data_path.display()
            ))
        })?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(SledSync {
            data_file,
            blob_dir: dir.join(SLED_BLOB_DIR),
            synced_blobs: HashSet::new(),
        })
    }

    /// Another handle, for a second thread (each syncs the side files it sees itself).
    ///
    /// # Errors
    /// The data file cannot be opened again.
    pub fn try_clone(&self) -> Result<Self, CoreError> {
        Ok(SledSync {
            data_file: self.data_file.try_clone()?,
            blob_dir: self.blob_dir.clone(),
            synced_blobs: HashSet::new(),
        })
    }

    /// Flushes `db` and makes what it wrote durable.
    ///
    /// # Errors
    /// A storage error.
    pub fn sync(&mut self, db: &sled::Db) -> Result<(), CoreError> {
        db.flush()?;
        self.data_file.sync_data()?;
        self.sync_new_blobs()
    }
}

impl SledJournal {
    /// The space the journal keeps free on its filesystem unless told otherwise.
    pub const DEFAULT_FREE_SPACE_RESERVE: u64 = FreeSpace::DEFAULT_RESERVE;

    /// Opens (or creates) the journal in directory `path`.
    ///
    /// # Errors
    /// A storage error, e.g. the directory is in use by another master.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CoreError> {
        let config = sled::Config::new()
            .path(path.as_ref())
            // Every append flushes itself; a background flusher would only add fsyncs.
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput);
        let db = open_waiting_for_lock(&config)?;
        let journal = db.open_tree(JOURNAL_TREE)?;
        let snapshots = db.open_tree(SNAPSHOT_TREE)?;
        // What a crash while writing a snapshot left behind.
        match std::fs::remove_file(path.as_ref().join(SNAPSHOT_FILE_TEMP)) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let mut journal = SledJournal {
            durability: SledSync::new(path.as_ref())?,
            db,
            dir: path.as_ref().to_path_buf(),
            free_space: FreeSpace::new(path.as_ref(), Self::DEFAULT_FREE_SPACE_RESERVE),
            journal,
            snapshots,
        };
        journal.sync()?;
        Ok(journal)
    }

    /// Keeps `bytes` free on the journal's filesystem: a write that would leave less is
    /// refused with [`CoreError::DiskFull`] before it begins. 0 turns the check off (a full
    /// disk then fails inside the storage itself).
    #[must_use]
    pub fn with_free_space_reserve(mut self, bytes: u64) -> Self {
        self.free_space = self.free_space.with_reserve(bytes);
        self
    }

    /// Another handle on the same database, for a second thread: sled's trees take writes
    /// from several threads, and each handle syncs what it wrote itself.
    fn second_handle(&self) -> Result<SledJournal, CoreError> {
        Ok(SledJournal {
            db: self.db.clone(),
            dir: self.dir.clone(),
            free_space: self.free_space.clone(),
            journal: self.journal.clone(),
            snapshots: self.snapshots.clone(),
            durability: self.durability.try_clone()?,
        })
    }

    /// Makes everything written so far durable.
    fn sync(&mut self) -> Result<(), CoreError> {
        self.durability.sync(&self.db)
    }
}

impl SledSync {
    fn sync_new_blobs(&mut self) -> Result<(), CoreError> {
        let entries = match std::fs::read_dir(&self.blob_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut present = HashSet::with_capacity(self.synced_blobs.len());
        let mut synced_any = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !self.synced_blobs.contains(&name) {
                match std::fs::File::open(entry.path()) {
                    Ok(file) => file.sync_all()?,
                    // Garbage-collected by sled in the meantime.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                }
                synced_any = true;
            }
            present.insert(name);
        }
        if synced_any {
            std::fs::File::open(&self.blob_dir)?.sync_all()?;
        }
        self.synced_blobs = present;
        Ok(())
    }
}

impl SledJournal {
    /// The `(last_seq, chunk count)` of a snapshot an older version kept in the tree, from
    /// its manifest alone.
    fn manifest(&self) -> Result<Option<(u64, u32)>, CoreError> {
        let Some(manifest) = self.snapshots.get(SNAPSHOT_MANIFEST_KEY)? else {
            return Ok(None);
        };
        if manifest.as_ref() == SNAPSHOTS_IN_FILES {
            return Ok(None);
        }
        let manifest: [u8; 12] = manifest.as_ref().try_into().map_err(|_| {
            CoreError::CorruptSnapshot(format!("manifest of {} bytes, expected 12", manifest.len()))
        })?;
        let last_seq = u64::from_be_bytes([
            manifest[0],
            manifest[1],
            manifest[2],
            manifest[3],
            manifest[4],
            manifest[5],
            manifest[6],
            manifest[7],
        ]);
        let chunks = u32::from_be_bytes([manifest[8], manifest[9], manifest[10], manifest[11]]);
        Ok(Some((last_seq, chunks)))
    }

    /// Snapshot files, by the sequence number they cover, oldest first.
    fn snapshot_files(&self) -> Result<Vec<(u64, PathBuf)>, CoreError> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let seq = name
                .to_str()
                .and_then(|n| n.strip_prefix(SNAPSHOT_FILE_PREFIX))
                .and_then(|digits| digits.parse::<u64>().ok());
            if let Some(seq) = seq {
                files.push((seq, entry.path()));
            }
        }
        files.sort();
        Ok(files)
    }

    /// The sequence number the latest snapshot covers (0 without one), without reading it.
    fn latest_snapshot_seq(&self) -> Result<u64, CoreError> {
        Ok(self.latest_snapshot()?.seq())
    }

    /// Where the latest snapshot is: its file, or the tree where a version before snapshot
    /// files kept it, whichever covers more.
    fn latest_snapshot(&self) -> Result<LatestSnapshot, CoreError> {
        let file = self.snapshot_files()?.pop();
        let in_tree = self.manifest()?;
        let tree_seq = in_tree.map_or(0, |(seq, _)| seq);
        Ok(match (file, in_tree) {
            (Some((seq, path)), _) if seq >= tree_seq => LatestSnapshot::File(seq, path),
            (_, Some((seq, chunks))) => LatestSnapshot::Tree(seq, chunks),
            _ => LatestSnapshot::None,
        })
    }

    fn read_snapshot(
        &self,
        latest: LatestSnapshot,
    ) -> Result<Option<(u64, MasterState)>, CoreError> {
        match latest {
            LatestSnapshot::File(seq, path) => {
                let bytes = std::fs::read(&path)?;
                check_covers(seq, decode_snapshot(&bytes)?).map(Some)
            }
            LatestSnapshot::Tree(seq, chunks) => self.read_snapshot_in_tree(seq, chunks).map(Some),
            LatestSnapshot::None => Ok(None),
        }
    }

    fn read_snapshot_in_tree(
        &self,
        last_seq: u64,
        chunks: u32,
    ) -> Result<(u64, MasterState), CoreError> {
        let mut bytes = Vec::new();
        for index in 0..chunks {
            let chunk = self
                .snapshots
                .get(chunk_key(last_seq, index))?
                .ok_or_else(|| {
                    CoreError::CorruptSnapshot(format!(
                    "chunk {index} of {chunks} of the snapshot at sequence {last_seq} is missing"
                ))
                })?;
            bytes.extend_from_slice(&chunk);
        }
        check_covers(last_seq, decode_snapshot(&bytes)?)
    }

    /// Stores a snapshot in the tree, as versions before snapshot files did: for tests of
    /// journals those versions wrote.
    ///
    /// # Errors
    /// A storage error.
    #[doc(hidden)]
    pub fn write_snapshot_in_tree(
        &mut self,
        last_seq: u64,
        state: &MasterState,
    ) -> Result<(), CoreError> {
        let bytes = encode_snapshot(last_seq, state)?;
        let mut batch = sled::Batch::default();
        let mut chunks: u32 = 0;
        for chunk in bytes.chunks(SNAPSHOT_CHUNK_BYTES) {
            batch.insert(chunk_key(last_seq, chunks), chunk);
            chunks += 1;
        }
        let mut manifest = last_seq.to_be_bytes().to_vec();
        manifest.extend_from_slice(&chunks.to_be_bytes());
        batch.insert(SNAPSHOT_MANIFEST_KEY, manifest);
        self.snapshots.apply_batch(batch)?;
        self.sync()
    }

    /// Writes `bytes` as the snapshot file covering `last_seq`: a temporary file, synced,
    /// renamed into place, and the directory synced, so that a crash leaves the old
    /// snapshot or the new one, never a part of one.
    fn write_snapshot_file(&self, last_seq: u64, bytes: &[u8]) -> Result<(), CoreError> {
        use std::io::Write;
        let temp = self.dir.join(SNAPSHOT_FILE_TEMP);
        let written = std::fs::File::create(&temp).and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
        if let Err(e) = written {
            // A part of a snapshot must not hold on to the space a full disk needs back.
            let _ = std::fs::remove_file(&temp);
            return Err(e.into());
        }
        let path = self
            .dir
            .join(format!("{SNAPSHOT_FILE_PREFIX}{last_seq:020}"));
        std::fs::rename(&temp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Writes raw bytes under a sequence number, bypassing encoding: for fault-injection
    /// tests that simulate damaged records.
    ///
    /// # Errors
    /// A storage error.
    #[doc(hidden)]
    pub fn write_raw_record(&mut self, seq: u64, bytes: &[u8]) -> Result<(), CoreError> {
        self.journal.insert(seq.to_be_bytes(), bytes)?;
        self.sync()
    }

    /// The raw bytes stored under a sequence number: for fault-injection tests.
    ///
    /// # Errors
    /// A storage error.
    #[doc(hidden)]
    pub fn raw_record(&self, seq: u64) -> Result<Option<Vec<u8>>, CoreError> {
        Ok(self.journal.get(seq.to_be_bytes())?.map(|v| v.to_vec()))
    }

    /// Every stored record as `(first sequence number, bytes)`, in order: for
    /// fault-injection tests.
    ///
    /// # Errors
    /// A storage error, or a key that is not a sequence number.
    #[doc(hidden)]
    pub fn raw_records(&self) -> Result<Vec<(u64, Vec<u8>)>, CoreError> {
        self.journal
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                Ok((key_seq(&key)?, value.to_vec()))
            })
            .collect()
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

/// How long `open` waits for the directory's lock: sled's I/O threads may still hold the
/// database of a master that stopped a moment ago in this same process.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a sled database, waiting up to a few seconds for its directory's lock: the threads
/// of a database closed a moment ago in this process (a master, a Raft node) may still hold
/// it.
///
/// # Errors
/// A storage error, or the lock still held after the wait.
pub fn open_waiting_for_lock(config: &sled::Config) -> Result<sled::Db, CoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return Ok(other?),
        }
    }
}

/// `snapshot`, checked to cover the sequence number its name or manifest says.
fn check_covers(named: u64, snapshot: (u64, MasterState)) -> Result<(u64, MasterState), CoreError> {
    if snapshot.0 != named {
        return Err(CoreError::CorruptSnapshot(format!(
            "the snapshot is named for sequence {named} but holds {}",
            snapshot.0
        )));
    }
    Ok(snapshot)
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
        // The tail is read and decoded on a thread of its own while the snapshot decodes:
        // where the snapshot ends is in its name.
        let latest = self.latest_snapshot()?;
        let after = latest.seq();
        let journal = &self.journal;
        let read_tail = move || {
            let records = journal.iter().map(|r| {
                let (k, v) = r?;
                Ok((key_seq(&k)?, v.to_vec()))
            });
            replay_records(records, after)
        };
        let (snapshot, events) = std::thread::scope(|scope| {
            let tail = std::thread::Builder::new()
                .name("mawex-tail".into())
                .spawn_scoped(scope, read_tail);
            let snapshot = self.read_snapshot(latest);
            let events = match tail {
                Ok(tail) => tail.join().unwrap_or_else(|_| {
                    Err(CoreError::Thread(
                        "the thread reading the journal's tail panicked".into(),
                    ))
                }),
                // No thread to spare: read it here.
                Err(_) => read_tail(),
            };
            (snapshot, events)
        });
        // Both read from the one lookup, and the snapshot is checked to cover what its
        // name says: the tail starts where the snapshot ends.
        let (snapshot, events) = (snapshot?, events?);
        debug!(snapshot = after, events = events.len(), "journal recovered");
        Ok(Recovered { snapshot, events })
    }

    fn append(&mut self, first_seq: u64, events: &[Event]) -> Result<(), CoreError> {
        let records = encode_records(first_seq, events, MAX_RECORD_BYTES)?;
        let bytes: usize = records.iter().map(|(_, bytes)| bytes.len()).sum();
        self.free_space
            .check("write", bytes.saturating_mul(RECORD_AMPLIFICATION))?;
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
        self.sync()
    }

    fn snapshot(&mut self, last_seq: u64, state: &MasterState) -> Result<(), CoreError> {
        let bytes = encode_snapshot(last_seq, state)?;
        self.free_space.check(
            "snapshot",
            bytes.len().saturating_mul(SNAPSHOT_AMPLIFICATION),
        )?;
        self.write_snapshot_file(last_seq, &bytes)?;

        // Now that the new snapshot is durable: drop older ones (files, and the tree an
        // older version kept them in) and the records the new one covers. Losing these
        // removals to a crash is harmless: recovery reads the latest snapshot and skips the
        // records it covers.
        for (seq, older) in self.snapshot_files()? {
            if seq < last_seq {
                std::fs::remove_file(older)?;
            }
        }
        if self.snapshots.get(SNAPSHOT_MANIFEST_KEY)?.as_deref() != Some(SNAPSHOTS_IN_FILES) {
            self.snapshots.clear()?;
            self.snapshots
                .insert(SNAPSHOT_MANIFEST_KEY, SNAPSHOTS_IN_FILES)?;
            self.sync()?;
        }
        let mut covered = sled::Batch::default();
        for key in self.journal.range(..=last_seq.to_be_bytes()).keys() {
            covered.remove(key?);
        }
        self.journal.apply_batch(covered)?;
        debug!(last_seq, bytes = bytes.len(), "snapshot stored");
        Ok(())
    }

    fn repair(&mut self) -> Result<Repaired, CoreError> {
        // Only the snapshot's sequence number matters here, not its state.
        let after = self.latest_snapshot_seq()?;
        let records = self.journal.iter().map(|r| {
            let (k, v) = r?;
            Ok((key_seq(&k)?, v.to_vec()))
        });
        let repaired = records_to_drop(records, after)?;
        if !repaired.dropped.is_empty() {
            let mut batch = sled::Batch::default();
            for record in &repaired.dropped {
                batch.remove(&record.seq.to_be_bytes());
            }
            self.journal.apply_batch(batch)?;
            self.sync()?;
        }
        Ok(repaired)
    }

    /// Snapshots go into files of their own while the core appends to the journal's tree,
    /// and the records a snapshot drops all come before any the core writes.
    fn snapshot_writer(&mut self) -> Result<Option<Box<dyn SnapshotWriter>>, CoreError> {
        Ok(Some(Box::new(SharedHandle(self.second_handle()?))))
    }
}
