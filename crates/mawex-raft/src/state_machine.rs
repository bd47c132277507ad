//! `MasterState` as the Raft state machine.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{Stream, TryStreamExt};
use mawex_core::{FreeSpace, MasterState};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::EntryPayload;

use crate::codec::{open, seal};
use crate::{Applied, MasterRaft, RaftStoreError, SledLogStore};

/// The snapshot file in the machine's directory, and the file it is written to first.
const SNAPSHOT_FILE: &str = "raft-snapshot";
const SNAPSHOT_TEMP: &str = "raft-snapshot.tmp";

/// The master's state, fed committed entries in log order.
///
/// The state lives in memory; its latest snapshot lives on disk, so that a restarted master
/// starts from it and the log replays only what came after (the log before it may be
/// purged). A snapshot is the master's own snapshot format (`mawex_core::journal::
/// encode_snapshot`) after a checksummed header with the Raft metadata, built from an O(1)
/// copy of the state (`MasterState::durable_copy`), so that building one never holds up
/// applying. Cloning gives another handle on the same machine (its snapshot builder is one).
///
/// On the leader the state is **lent** to the master's core ([`MasterStateMachine::lend`]):
/// the core applies each batch as it decides it, before writing it, so applying it again
/// here would do the work twice and keep two states. While lent, applying a batch only
/// counts its events, and a snapshot is built from the copy the core offers after a commit
/// (see `RaftJournal`).
#[derive(Debug, Clone)]
pub struct MasterStateMachine {
    inner: Arc<Mutex<Machine>>,
    /// The directory of the snapshot file, and the metadata of the snapshot in it: held
    /// while a snapshot is written, so that an older one never replaces a newer.
    snapshots: Arc<Mutex<Snapshots>>,
}

#[derive(Debug)]
struct Machine {
    /// The state, or `None` while it is lent to the master's core.
    state: Option<MasterState>,
    /// Events applied in all: the master's sequence number of the last one.
    events: u64,
    last_applied: Option<LogIdOf<MasterRaft>>,
    membership: StoredMembershipOf<MasterRaft>,
    /// The memberships before `membership`, newest last (a few): a snapshot of the lent state
    /// is as of an entry that may come before the latest membership change.
    earlier_memberships: Vec<StoredMembershipOf<MasterRaft>>,
    /// The copy of the lent state a snapshot is to be built from, offered by the core.
    offered: Option<Offered>,
    /// The entry of the latest copy offered, built since or not.
    last_offer: Option<LogIdOf<MasterRaft>>,
}

/// A copy of the lent state as of one entry, for the next snapshot.
#[derive(Debug)]
struct Offered {
    state: MasterState,
    events: u64,
    meta: SnapshotMetaOf<MasterRaft>,
}

/// How many earlier memberships a machine remembers.
const EARLIER_MEMBERSHIPS: usize = 4;

impl Machine {
    /// The membership in effect at entry `log_id`, if the machine still knows it.
    fn membership_at(
        &self,
        log_id: Option<&LogIdOf<MasterRaft>>,
    ) -> Option<StoredMembershipOf<MasterRaft>> {
        std::iter::once(&self.membership)
            .chain(self.earlier_memberships.iter().rev())
            .find(|m| m.log_id().as_ref() <= log_id)
            .cloned()
    }
}

#[derive(Debug)]
struct Snapshots {
    dir: PathBuf,
    stored: Option<SnapshotMetaOf<MasterRaft>>,
    /// Checked before a snapshot is written, so that it leaves the log its reserve.
    free_space: FreeSpace,
}

impl MasterStateMachine {
    /// The machine whose snapshots live in directory `dir` (created if missing), as the
    /// latest of them left it, or empty without one.
    ///
    /// # Errors
    /// The directory cannot be read or written, or its snapshot is damaged.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, RaftStoreError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(storage)?;
        match std::fs::remove_file(dir.join(SNAPSHOT_TEMP)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(storage(e)),
            _ => {} // What a crash while writing a snapshot left behind, if anything.
        }
        let mut machine = Machine {
            state: Some(MasterState::new()),
            events: 0,
            last_applied: None,
            membership: StoredMembershipOf::<MasterRaft>::default(),
            earlier_memberships: Vec::new(),
            offered: None,
            last_offer: None,
        };
        let stored = match read_snapshot_file(&dir)? {
            Some((meta, data)) => {
                let (events, state) = mawex_core::journal::decode_snapshot(&data)?;
                machine.state = Some(state);
                machine.events = events;
                machine.last_applied = meta.last_log_id;
                machine.membership = meta.last_membership.clone();
                Some(meta)
            }
            None => None,
        };
        Ok(MasterStateMachine {
            inner: Arc::new(Mutex::new(machine)),
            snapshots: Arc::new(Mutex::new(Snapshots {
                free_space: FreeSpace::new(&dir, FreeSpace::DEFAULT_RESERVE),
                dir,
                stored,
            })),
        })
    }

    /// Keeps `bytes` free on the snapshots' filesystem: a snapshot that would leave less is
    /// refused before it is written ([`mawex_core::CoreError::DiskFull`]). 0 turns the check
    /// off.
    #[must_use]
    pub fn with_free_space_reserve(self, bytes: u64) -> Self {
        {
            let mut snapshots = self.snapshots();
            snapshots.free_space = snapshots.free_space.clone().with_reserve(bytes);
        }
        self
    }

    fn lock(&self) -> MutexGuard<'_, Machine> {
        // Each entry is applied whole before `last_applied` names it, and `apply` is total:
        // a state a panic left behind is still one a prefix of the log produced.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn snapshots(&self) -> MutexGuard<'_, Snapshots> {
        // The file is replaced whole or not at all: nothing half-written to recover from.
        self.snapshots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `read` on the state as the entries applied so far left it; `None` while the
    /// state is lent to a master's core.
    pub fn read<T>(&self, read: impl FnOnce(&MasterState) -> T) -> Option<T> {
        self.lock().state.as_ref().map(read)
    }

    /// Events applied so far: the master's sequence number of the last one.
    pub fn events(&self) -> u64 {
        self.lock().events
    }

    /// The last entry applied.
    pub fn last_applied(&self) -> Option<LogIdOf<MasterRaft>> {
        self.lock().last_applied
    }

    /// Hands the state to a master's core, which from now on applies the batches it writes
    /// itself: `(events applied, state)`. Lend it only once every committed entry is
    /// applied, and only to the one core that writes every later batch.
    ///
    /// # Errors
    /// [`RaftStoreError::Lent`] if the state is lent already.
    pub fn lend(&self) -> Result<(u64, MasterState), RaftStoreError> {
        let mut machine = self.lock();
        let state = machine.state.take().ok_or(RaftStoreError::Lent)?;
        Ok((machine.events, state))
    }

    /// Takes the state back after the master it was lent to has stopped (this node lost the
    /// lead, or its master failed), so that the node can go on applying as a follower. The
    /// state is rebuilt from the stored snapshot and the entries of `log` after it, up to the
    /// last one applied; the master's own state may hold a batch that was never committed, so
    /// it is not taken back. Entries applied meanwhile are replayed under the machine's lock
    /// at the end. Does nothing if the state is not lent (or a snapshot installed since
    /// replaced it).
    ///
    /// Blocks for as long as the replay takes: call it off the runtime's threads (with
    /// `spawn_blocking`).
    ///
    /// # Errors
    /// The snapshot or the log cannot be read, an entry the machine applied is missing from
    /// the log, or the rebuilt state does not hold as many events as were applied.
    pub fn reclaim(&self, log: &SledLogStore) -> Result<(), RaftStoreError> {
        {
            let mut machine = self.lock();
            if machine.state.is_some() {
                return Ok(());
            }
            // The stopped master's last copy is not built now: a build, and the purge of the
            // log behind it, would race the replay below.
            machine.offered = None;
        }
        // A build already running may still store a newer snapshot and purge the entries
        // this replay needs: then the replay starts over from that snapshot.
        let mut tries = 0;
        loop {
            match self.rebuild(log) {
                Err(RaftStoreError::Damaged { .. }) if tries < RECLAIM_TRIES => tries += 1,
                rebuilt => return rebuilt,
            }
        }
    }

    /// [`MasterStateMachine::reclaim`] on a blocking thread, from async code.
    pub(crate) async fn reclaim_blocking(&self, log: &SledLogStore) -> Result<(), RaftStoreError> {
        let (machine, log) = (self.clone(), log.clone());
        match tokio::task::spawn_blocking(move || machine.reclaim(&log)).await {
            Ok(reclaimed) => reclaimed,
            Err(e) => Err(RaftStoreError::Raft(format!(
                "the reclaim did not finish: {e}"
            ))),
        }
    }

    /// One try of [`MasterStateMachine::reclaim`]: the stored snapshot, the log after it up
    /// to what is applied now (without the lock), then whatever was applied meanwhile and
    /// the move of the state into the machine (under it).
    fn rebuild(&self, log: &SledLogStore) -> Result<(), RaftStoreError> {
        let (mut events, mut state, mut replayed) = {
            let snapshots = self.snapshots();
            match read_snapshot_file(&snapshots.dir)? {
                Some((meta, data)) => {
                    let (events, state) = mawex_core::journal::decode_snapshot(&data)?;
                    (events, state, meta.last_log_id)
                }
                None => (0, MasterState::new(), None),
            }
        };
        let upto = self.last_applied();
        replay(log, &mut state, &mut events, &mut replayed, upto)?;
        let mut machine = self.lock();
        if machine.state.is_some() {
            return Ok(());
        }
        replay(
            log,
            &mut state,
            &mut events,
            &mut replayed,
            machine.last_applied,
        )?;
        if events != machine.events {
            return Err(RaftStoreError::Damaged {
                what: "the Raft log".into(),
                reason: format!(
                    "its entries up to {:?} hold {events} events, where {} were applied",
                    machine.last_applied, machine.events
                ),
            });
        }
        machine.state = Some(state);
        machine.offered = None;
        Ok(())
    }

    /// Offers `state`, the lent state as of event `events` (a copy taken right after the
    /// commit of the entry `log_id`, whose batch ends at that event), for the next snapshot.
    /// Replaces any earlier offer not yet built. False if the offer is not taken: the state
    /// is not lent, the entry is not applied yet, or the membership in effect at it is
    /// forgotten (the next offer will do).
    pub(crate) fn offer(
        &self,
        events: u64,
        log_id: LogIdOf<MasterRaft>,
        state: MasterState,
    ) -> bool {
        let mut machine = self.lock();
        // A snapshot must never name an entry whose state it may not hold.
        if machine.state.is_some() || Some(&log_id) > machine.last_applied.as_ref() {
            return false;
        }
        let Some(membership) = machine.membership_at(Some(&log_id)) else {
            tracing::debug!(%log_id, "a snapshot offer skipped: its membership is gone");
            return false;
        };
        machine.last_offer = Some(log_id);
        machine.offered = Some(Offered {
            state,
            events,
            meta: SnapshotMetaOf::<MasterRaft> {
                last_log_id: Some(log_id),
                last_membership: membership,
            },
        });
        true
    }

    /// The entry of the latest copy offered, whether a snapshot was built of it yet or not.
    pub fn last_offer(&self) -> Option<LogIdOf<MasterRaft>> {
        self.lock().last_offer
    }
}

impl MasterStateMachine {
    /// The snapshot in the file, if there is one.
    fn stored_snapshot(&self) -> Result<Option<SnapshotOf<MasterRaft, Vec<u8>>>, RaftStoreError> {
        let snapshots = self.snapshots();
        Ok(
            read_snapshot_file(&snapshots.dir)?.map(|(meta, data)| SnapshotOf::<
                MasterRaft,
                Vec<u8>,
            > {
                meta,
                snapshot: data,
            }),
        )
    }
}

/// How many times a reclaim starts over when the log it replays was purged behind a newer
/// snapshot meanwhile (a real damage fails every try).
const RECLAIM_TRIES: u32 = 3;

/// How many entries a replay reads from the log at a time.
const REPLAY_CHUNK: u64 = 256;

/// Applies to `state` the batches of the entries of `log` after `replayed` up to `upto`,
/// counting their events.
fn replay(
    log: &SledLogStore,
    state: &mut MasterState,
    events: &mut u64,
    replayed: &mut Option<LogIdOf<MasterRaft>>,
    upto: Option<LogIdOf<MasterRaft>>,
) -> Result<(), RaftStoreError> {
    let Some(upto) = upto.filter(|upto| Some(upto) > replayed.as_ref()) else {
        return Ok(());
    };
    let from = replayed.map_or(0, |r| r.index.saturating_add(1));
    // A chunk at a time: the log since the last snapshot may be large.
    let mut next = from;
    while next <= upto.index {
        let last = next.saturating_add(REPLAY_CHUNK - 1).min(upto.index);
        let entries = log.entries(next..=last)?;
        let expected = last.saturating_sub(next).saturating_add(1);
        if u64::try_from(entries.len()).ok() != Some(expected) {
            return Err(RaftStoreError::Damaged {
                what: "the Raft log".into(),
                reason: format!(
                    "entries {next}..={last} are applied but {} of them are in the log",
                    entries.len()
                ),
            });
        }
        for entry in entries {
            if let EntryPayload::Normal(batch) = entry.payload {
                let count = u64::try_from(batch.events.len()).unwrap_or(u64::MAX);
                for event in std::sync::Arc::unwrap_or_clone(batch.events) {
                    state.apply_owned(event);
                }
                *events = events.saturating_add(count);
            }
        }
        let Some(after) = last.checked_add(1) else {
            break;
        };
        next = after;
    }
    *replayed = Some(upto);
    Ok(())
}

fn storage(e: io::Error) -> RaftStoreError {
    RaftStoreError::Storage(e.into())
}

/// A snapshot as its file holds it: the Raft metadata and the master's snapshot.
type SnapshotFile = (SnapshotMetaOf<MasterRaft>, Vec<u8>);

/// The snapshot file: `[u32 LE length][the sealed metadata][the master's snapshot]`.
fn read_snapshot_file(dir: &Path) -> Result<Option<SnapshotFile>, RaftStoreError> {
    let bytes = match std::fs::read(dir.join(SNAPSHOT_FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(storage(e)),
    };
    let damaged = |reason: String| RaftStoreError::Damaged {
        what: "the Raft snapshot".into(),
        reason,
    };
    let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
        return Err(damaged("shorter than its header".into()));
    };
    let len = usize::try_from(u32::from_le_bytes(*len)).map_err(|e| damaged(e.to_string()))?;
    if len > rest.len() {
        return Err(damaged(format!(
            "its metadata is {len} bytes, more than the {} left",
            rest.len()
        )));
    }
    let (meta, data) = rest.split_at(len);
    let meta = open(meta, &|| "the Raft snapshot's metadata".to_owned())?;
    Ok(Some((meta, data.to_vec())))
}

/// Replaces the snapshot file with `meta` and `data`: written to a temporary file, synced,
/// renamed into place, the directory synced.
fn write_snapshot_file(
    snapshots: &Snapshots,
    meta: &SnapshotMetaOf<MasterRaft>,
    data: &[u8],
) -> Result<(), RaftStoreError> {
    let dir = &snapshots.dir;
    let meta = seal(meta, &|| "the Raft snapshot's metadata".to_owned())?;
    // The old file stays until the new one is in place: room for both.
    snapshots
        .free_space
        .check("snapshot", data.len().saturating_add(meta.len()))?;
    let len = u32::try_from(meta.len()).map_err(|e| RaftStoreError::Encode {
        what: "the Raft snapshot's metadata".into(),
        reason: e.to_string(),
    })?;
    let temp = dir.join(SNAPSHOT_TEMP);
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&len.to_le_bytes())?;
        file.write_all(&meta)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&temp, dir.join(SNAPSHOT_FILE))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.map_err(storage)
}

impl RaftSnapshotBuilder<MasterRaft> for MasterStateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<MasterRaft, Vec<u8>>, io::Error> {
        let (state, events, meta) = {
            let mut machine = self.lock();
            match &machine.state {
                Some(state) => {
                    let meta = SnapshotMetaOf::<MasterRaft> {
                        last_log_id: machine.last_applied,
                        last_membership: machine.membership.clone(),
                    };
                    (state.durable_copy(), machine.events, meta)
                }
                None => match machine.offered.take() {
                    Some(offered) => (offered.state, offered.events, offered.meta),
                    None => {
                        drop(machine);
                        // Lent and nothing offered since the last build: that one stands.
                        return self.stored_snapshot()?.ok_or_else(|| {
                            io::Error::other(
                                "no snapshot to build: the state is lent to the master's \
                                 core, which has offered no copy yet",
                            )
                        });
                    }
                },
            }
        };
        // Encoded without the lock: entries go on being applied meanwhile.
        let data =
            mawex_core::journal::encode_snapshot(events, &state).map_err(RaftStoreError::from)?;
        let mut snapshots = self.snapshots();
        // A snapshot installed meanwhile may be newer than this one: it stays.
        let newer_stored = snapshots
            .stored
            .as_ref()
            .is_some_and(|stored| stored.last_log_id > meta.last_log_id);
        if !newer_stored {
            write_snapshot_file(&snapshots, &meta, &data)?;
            snapshots.stored = Some(meta.clone());
        }
        Ok(SnapshotOf::<MasterRaft, Vec<u8>> {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<MasterRaft> for MasterStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<MasterRaft>>, StoredMembershipOf<MasterRaft>), io::Error> {
        let machine = self.lock();
        Ok((machine.last_applied, machine.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<MasterRaft>, io::Error>>
            + Unpin
            + openraft::OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let applied = {
                let mut machine = self.lock();
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(batch) => {
                        let count = u64::try_from(batch.events.len()).unwrap_or(u64::MAX);
                        // Lent: the core applied the batch before writing it.
                        if let Some(state) = &mut machine.state {
                            // Decoded from the log, the events are this entry's alone.
                            for event in std::sync::Arc::unwrap_or_clone(batch.events) {
                                state.apply_owned(event);
                            }
                        }
                        machine.events = machine.events.saturating_add(count);
                    }
                    EntryPayload::Membership(membership) => {
                        let new =
                            StoredMembershipOf::<MasterRaft>::new(Some(entry.log_id), membership);
                        let old = std::mem::replace(&mut machine.membership, new);
                        machine.earlier_memberships.push(old);
                        if machine.earlier_memberships.len() > EARLIER_MEMBERSHIPS {
                            machine.earlier_memberships.remove(0);
                        }
                    }
                }
                machine.last_applied = Some(entry.log_id);
                Applied {
                    events: machine.events,
                }
            };
            if let Some(responder) = responder {
                responder.send(applied);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        // Lent with nothing offered: no state to build from until the core offers a copy.
        let deferred = {
            let machine = self.lock();
            machine.state.is_none() && machine.offered.is_none()
        };
        (force || !deferred).then(|| self.clone())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<MasterRaft>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let (events, state) =
            mawex_core::journal::decode_snapshot(&snapshot).map_err(RaftStoreError::from)?;
        // Durable before the state moves to it: a restart must not find the log purged
        // past a snapshot it never kept.
        let mut snapshots = self.snapshots();
        write_snapshot_file(&snapshots, meta, &snapshot)?;
        snapshots.stored = Some(meta.clone());
        let mut machine = self.lock();
        machine.state = Some(state);
        machine.events = events;
        machine.last_applied = meta.last_log_id;
        machine.membership = meta.last_membership.clone();
        machine.earlier_memberships.clear();
        machine.offered = None;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<MasterRaft, Vec<u8>>>, io::Error> {
        Ok(self.stored_snapshot()?)
    }
}
