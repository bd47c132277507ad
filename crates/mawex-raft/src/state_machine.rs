//! `MasterState` as the Raft state machine.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{Stream, TryStreamExt};
use mawex_core::MasterState;
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::EntryPayload;

use crate::{Applied, MasterRaft, RaftStoreError};

/// The master's state, fed committed entries in log order.
///
/// A snapshot is the master's own snapshot format (`mawex_core::journal::encode_snapshot`),
/// built from an O(1) copy of the state (`MasterState::durable_copy`), so building one never
/// holds up applying. Cloning gives another handle on the same machine (its snapshot builder
/// is one).
#[derive(Debug, Clone, Default)]
pub struct MasterStateMachine {
    inner: Arc<Mutex<Machine>>,
}

#[derive(Debug, Default)]
struct Machine {
    state: MasterState,
    /// Events applied in all: the master's sequence number of the last one.
    events: u64,
    last_applied: Option<LogIdOf<MasterRaft>>,
    membership: StoredMembershipOf<MasterRaft>,
    current: Option<Stored>,
}

/// The latest snapshot, built or installed.
#[derive(Debug, Clone)]
struct Stored {
    meta: SnapshotMetaOf<MasterRaft>,
    data: Vec<u8>,
}

impl MasterStateMachine {
    fn lock(&self) -> MutexGuard<'_, Machine> {
        // Applying is all or nothing per event, and `apply` is total: a state a panic left
        // behind is still one the log produced.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `read` on the state as the entries applied so far left it.
    pub fn read<T>(&self, read: impl FnOnce(&MasterState) -> T) -> T {
        read(&self.lock().state)
    }
}

impl RaftSnapshotBuilder<MasterRaft> for MasterStateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<MasterRaft, Vec<u8>>, io::Error> {
        let (state, events, meta) = {
            let machine = self.lock();
            let meta = SnapshotMetaOf::<MasterRaft> {
                last_log_id: machine.last_applied,
                last_membership: machine.membership.clone(),
            };
            (machine.state.durable_copy(), machine.events, meta)
        };
        // Encoded without the lock: entries go on being applied meanwhile.
        let data =
            mawex_core::journal::encode_snapshot(events, &state).map_err(RaftStoreError::from)?;
        self.lock().current = Some(Stored {
            meta: meta.clone(),
            data: data.clone(),
        });
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
                machine.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(batch) => {
                        for event in &batch.events {
                            machine.state.apply(event);
                        }
                        let count = u64::try_from(batch.events.len()).unwrap_or(u64::MAX);
                        machine.events = machine.events.saturating_add(count);
                    }
                    EntryPayload::Membership(membership) => {
                        machine.membership =
                            StoredMembershipOf::<MasterRaft>::new(Some(entry.log_id), membership);
                    }
                }
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

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<MasterRaft>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let (events, state) =
            mawex_core::journal::decode_snapshot(&snapshot).map_err(RaftStoreError::from)?;
        let mut machine = self.lock();
        machine.state = state;
        machine.events = events;
        machine.last_applied = meta.last_log_id;
        machine.membership = meta.last_membership.clone();
        machine.current = Some(Stored {
            meta: meta.clone(),
            data: snapshot,
        });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<MasterRaft, Vec<u8>>>, io::Error> {
        Ok(self
            .lock()
            .current
            .clone()
            .map(|stored| SnapshotOf::<MasterRaft, Vec<u8>> {
                meta: stored.meta,
                snapshot: stored.data,
            }))
    }
}
