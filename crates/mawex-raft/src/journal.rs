//! The master's journal on the Raft log: the leader's core writes each batch it commits as
//! one entry, and it is durable once the entry is committed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mawex_core::{CoreError, Event, Journal, MasterState, Recovered, Repaired};
use openraft::alias::{CommittedLeaderIdOf, LogIdOf};
use openraft::errors::{ClientWriteError, ForwardReason};
use openraft::impls::ProgressResponder;
use openraft::rt::WatchReceiver;
use openraft::Raft;
use tracing::debug;

use crate::node::{store_offered_snapshot, LEASE_RETRY};
use crate::{Batch, MasterRaft, MasterStateMachine, RaftStoreError};

/// The [`Journal`] of a master that leads a cluster: [`Journal::recover`] borrows the state
/// machine's state (every committed entry applied), [`Journal::append`] writes one Raft entry
/// per batch and returns once it is committed, and [`Journal::snapshot`] offers the state
/// machine an O(1) copy to build its next snapshot from.
///
/// Each write is conditional on the leadership the journal was opened under: once another
/// node leads (or this one again, in a later term), a write fails with
/// [`RaftStoreError::NotLeader`] instead of landing in the log, and the master stops, as it
/// does on any journal failure. A deposed leader therefore appends nothing new. (An entry it
/// appended while it still led may yet be committed by its successor, though its own master
/// reported the write failed: the clients it did not answer retry, and submits are
/// idempotent by id.)
///
/// [`Journal::snapshot`] only offers the copy: the snapshot is built and stored on openraft's
/// task afterwards, and one not stored before a crash costs only a longer replay.
///
/// The core thread or the journal's thread calls it (one at a time); its waits run on the
/// tokio runtime it was opened on, which must be a multi-thread runtime (or one whose thread
/// is free to drive it).
pub struct RaftJournal {
    raft: Raft<MasterRaft, MasterStateMachine>,
    machine: MasterStateMachine,
    runtime: tokio::runtime::Handle,
    /// The leadership every write is made under.
    leader: CommittedLeaderIdOf<MasterRaft>,
    /// The term of that leadership, for the pods' fencing.
    term: u64,
    /// The last batch written: the master's sequence number of its last event, and its entry.
    last_written: Option<(u64, LogIdOf<MasterRaft>)>,
    /// The entry of the newest copy offered for a snapshot.
    snapshots_wanted: Arc<AtomicU64>,
    /// Whether a task is asking openraft for that snapshot.
    snapshot_asker: Arc<AtomicBool>,
}

impl std::fmt::Debug for RaftJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftJournal")
            .field("leader", &self.leader)
            .field("last_written", &self.last_written)
            .finish_non_exhaustive()
    }
}

impl RaftJournal {
    /// The journal of node `raft`, which must lead now with every committed entry applied to
    /// `machine` (its state machine); writes are made under this leadership only.
    ///
    /// # Errors
    /// [`RaftStoreError::NotLeader`] if `raft` does not lead.
    pub fn new(
        raft: Raft<MasterRaft, MasterStateMachine>,
        machine: MasterStateMachine,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, RaftStoreError> {
        let leading = raft
            .as_leader()
            .map_err(|forward| RaftStoreError::NotLeader {
                leader: forward.leader_id,
            })?;
        let (leader, term) = (
            leading.to_committed_leader_id(),
            openraft::vote::RaftLeaderId::term(leading.leader_id()),
        );
        Ok(RaftJournal {
            raft,
            machine,
            runtime,
            leader,
            term,
            last_written: None,
            snapshots_wanted: Arc::new(AtomicU64::new(0)),
            snapshot_asker: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Writes `batch` and waits for it to be applied. A write refused because this leader
    /// has heard from no quorum lately (its lease ran out: it may be cut off) is refused
    /// before it reaches the log, so it is tried again, for as long as a lease lasts; after
    /// that the leader is most likely deposed, and the write fails.
    async fn write(
        &self,
        events: &Arc<Vec<Event>>,
    ) -> Result<openraft::raft::ClientWriteResponse<MasterRaft>, RaftStoreError> {
        let lease = Duration::from_millis(self.raft.config().election_timeout_max);
        let deadline = Instant::now() + lease.saturating_mul(2);
        loop {
            let (responder, answer) = ProgressResponder::<MasterRaft, _>::complete_only();
            // The entry shares the core's events: no copy.
            let batch = Batch {
                events: events.clone(),
            };
            self.raft
                .write(batch)
                .with_leader(self.leader)
                .responder(responder)
                .await
                .map_err(|e| self.stopped_because(&e.to_string()))?;
            match self.decided(answer, lease).await? {
                Ok(Ok(written)) => return Ok(written),
                Ok(Err(ClientWriteError::ForwardToLeader(forward)))
                    if forward.reason == ForwardReason::LeaseExpired
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(LEASE_RETRY).await;
                }
                Ok(Err(ClientWriteError::ForwardToLeader(forward))) => {
                    return Err(RaftStoreError::NotLeader {
                        leader: forward.leader_id,
                    })
                }
                Ok(Err(e)) => return Err(RaftStoreError::Raft(e.to_string())),
                Err(_) => {
                    return Err(
                        self.stopped_because("the Raft node stopped before the write was decided")
                    )
                }
            }
        }
    }

    /// A write failed with `error`: with why the Raft node stopped, if it stopped on an
    /// error (a storage error names the cause: a full disk, say).
    fn stopped_because(&self, error: &str) -> RaftStoreError {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        match &metrics.running_state {
            Err(fatal) if !error.contains(&fatal.to_string()) => {
                RaftStoreError::Raft(format!("{error}: the Raft node stopped: {fatal}"))
            }
            _ => RaftStoreError::Raft(error.to_owned()),
        }
    }

    /// Waits for the `answer` to a write that reached the log. A leader cut off from its
    /// followers would wait for ever (the entry can be committed only by a quorum, and no
    /// one tells it that another node leads): once no quorum has acknowledged it for two
    /// leases, the write is given up, and the master stops.
    async fn decided<T>(
        &self,
        answer: impl std::future::Future<Output = T>,
        lease: Duration,
    ) -> Result<T, RaftStoreError> {
        let mut answer = std::pin::pin!(answer);
        loop {
            tokio::select! {
                decided = &mut answer => return Ok(decided),
                () = tokio::time::sleep(QUORUM_CHECK) => {}
            }
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow_watched();
            // A node of one is its own quorum: no follower acknowledges it.
            if metrics.membership_config.membership().voter_ids().count() < 2 {
                continue;
            }
            let silence = metrics
                .last_quorum_acked
                .map(|at| openraft::Instant::elapsed(&at.into_inner()));
            if silence.is_some_and(|silence| silence > lease.saturating_mul(2)) {
                return Err(RaftStoreError::Raft(format!(
                    "no quorum acknowledged this leader for {:?} (twice its lease): it may be \
                     cut off from the others; the write is given up",
                    lease.saturating_mul(2)
                )));
            }
        }
    }
}

/// How often a write waiting for its commit checks that a quorum still hears the leader.
const QUORUM_CHECK: Duration = Duration::from_millis(100);

fn failed(e: RaftStoreError) -> CoreError {
    CoreError::Storage(Box::new(e))
}

impl Journal for RaftJournal {
    fn term(&self) -> u64 {
        self.term
    }

    fn recover(&mut self) -> Result<Recovered, CoreError> {
        let (events, state) = self.machine.lend().map_err(failed)?;
        debug!(events, "the master borrows the state machine's state");
        Ok(Recovered::from_state(events, state))
    }

    fn append(&mut self, first_seq: u64, events: &[Event]) -> Result<(), CoreError> {
        self.append_shared(first_seq, &Arc::new(events.to_vec()))
    }

    fn append_shared(&mut self, first_seq: u64, events: &Arc<Vec<Event>>) -> Result<(), CoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let count =
            u64::try_from(events.len()).map_err(|e| failed(RaftStoreError::Raft(e.to_string())))?;
        let last_seq = first_seq.checked_add(count - 1).ok_or_else(|| {
            failed(RaftStoreError::Raft(format!(
                "a batch of {count} events from {first_seq} runs past 2^64"
            )))
        })?;
        // Numbered after the last event applied, or something else wrote meanwhile: refused
        // before it reaches the log.
        let applied = self.machine.events();
        if applied.checked_add(1) != Some(first_seq) {
            return Err(failed(RaftStoreError::Raft(format!(
                "a batch numbered from event {first_seq} follows event {applied}"
            ))));
        }
        let written = self.runtime.block_on(self.write(events)).map_err(failed)?;
        // The entry's events are the ones the core numbered: no other writer came between.
        if written.data.events != last_seq {
            return Err(failed(RaftStoreError::Raft(format!(
                "the batch of events {first_seq}..={last_seq} was applied as ending at event {}",
                written.data.events
            ))));
        }
        self.last_written = Some((last_seq, written.log_id));
        Ok(())
    }

    fn snapshot(&mut self, last_seq: u64, state: &MasterState) -> Result<(), CoreError> {
        // Only a state this journal wrote the last entry of has an entry to be named after;
        // before the first write, the machine's own latest snapshot stands.
        let Some((written, log_id)) = self.last_written else {
            return Ok(());
        };
        if written != last_seq {
            return Ok(());
        }
        if !self.machine.offer(last_seq, log_id, state.durable_copy()) {
            return Ok(());
        }
        // openraft ignores a trigger while a build runs (that build may have taken an older
        // offer): one task asks until a snapshot covers the newest offer.
        self.snapshots_wanted
            .fetch_max(log_id.index, Ordering::SeqCst);
        if !self.snapshot_asker.swap(true, Ordering::SeqCst) {
            let (raft, wanted, asker) = (
                self.raft.clone(),
                self.snapshots_wanted.clone(),
                self.snapshot_asker.clone(),
            );
            self.runtime.spawn(async move {
                loop {
                    let index = wanted.load(Ordering::SeqCst);
                    store_offered_snapshot(&raft, index).await;
                    asker.store(false, Ordering::SeqCst);
                    // An offer that came meanwhile, unless another asker took it.
                    if wanted.load(Ordering::SeqCst) <= index || asker.swap(true, Ordering::SeqCst)
                    {
                        return;
                    }
                }
            });
        }
        Ok(())
    }

    fn repair(&mut self) -> Result<Repaired, CoreError> {
        Err(failed(RaftStoreError::Raft(
            "a replicated log is not repaired in place: remove this node's data and add it \
             back as a new member, which copies the log from the others"
                .into(),
        )))
    }
}
