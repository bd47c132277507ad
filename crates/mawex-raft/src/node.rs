//! A master whose journal is a Raft log: for now the one node of its cluster (the embedded
//! default), on the same path a cluster's leader takes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use mawex_core::{LocalMasterProxy, LocalPodConnector, Master, MasterBuilder};
use openraft::errors::ForwardReason;
use openraft::network::NetSnapshot;
use openraft::{BasicNode, Raft, ServerState};
use tracing::{info, warn};

use crate::{
    MasterRaft, MasterStateMachine, NodeConfig, NodeIdentity, NodeNetwork, RaftJournal,
    RaftStoreError, SingleNode, SledLogStore,
};

/// Where in a node's directory its Raft log and its state machine's snapshot are.
pub(crate) const LOG_DIR: &str = "raft-log";
pub(crate) const MACHINE_DIR: &str = "raft-machine";
/// How long a node of one may take to lead after it starts (it elects itself at once).
const LEAD_WITHIN: Duration = Duration::from_secs(30);
/// How long a leader waits before it tries again a write refused for want of a lease.
pub(crate) const LEASE_RETRY: Duration = Duration::from_millis(20);
/// How long a clean stop waits for the master's last snapshot to be stored.
const SNAPSHOT_AT_STOP_WITHIN: Duration = Duration::from_secs(30);
/// How long each ask for that snapshot waits before asking again.
const SNAPSHOT_RETRY: Duration = Duration::from_millis(500);

/// A running master on a replicated log: the Raft node, its state machine, and the
/// [`Master`] that leads it (its journal a [`RaftJournal`]).
///
/// Stop it with [`ReplicatedMaster::shutdown`]; dropping it stops the master but leaves the
/// Raft node's tasks to the runtime's end.
pub struct ReplicatedMaster {
    master: Master,
    raft: Raft<MasterRaft, MasterStateMachine>,
    machine: MasterStateMachine,
    log: SledLogStore,
}

impl std::fmt::Debug for ReplicatedMaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedMaster")
            .field("master", &self.master)
            .finish_non_exhaustive()
    }
}

impl ReplicatedMaster {
    /// Starts the master of a cluster of one, its Raft log and snapshots in `dir` (created
    /// if missing): the node elects itself, applies every committed entry, and hands the
    /// state to a master built by `builder`, which then writes each batch as one entry.
    ///
    /// # Errors
    /// The log or the snapshot cannot be opened or is damaged, the node does not lead
    /// within 30 s, or the master does not start.
    pub async fn start_single(
        dir: impl AsRef<Path>,
        builder: MasterBuilder,
    ) -> Result<Self, RaftStoreError> {
        Self::start_single_with(dir, NodeConfig::single(), builder).await
    }

    /// [`ReplicatedMaster::start_single`] with the node's settings: the disk's reserve, say.
    /// The node's id must be the one its data was made with ([`NodeConfig::single`]'s).
    ///
    /// # Errors
    /// As [`ReplicatedMaster::start_single`], and a setting out of range.
    pub async fn start_single_with(
        dir: impl AsRef<Path>,
        config: NodeConfig,
        builder: MasterBuilder,
    ) -> Result<Self, RaftStoreError> {
        let id = config.id;
        let Opened {
            runtime,
            log,
            machine,
            raft,
            ..
        } = Opened::open(dir.as_ref(), &config, SingleNode).await?;
        let started = async {
            let initialized = raft
                .is_initialized()
                .await
                .map_err(|e| RaftStoreError::Raft(e.to_string()))?;
            if !initialized {
                let members = BTreeMap::from([(id, BasicNode::new(""))]);
                raft.initialize(members)
                    .await
                    .map_err(|e| RaftStoreError::Raft(e.to_string()))?;
            }
            lead(&raft, &machine, &log, builder, runtime, LEAD_WITHIN).await
        }
        .await;
        match started {
            Ok(master) => Ok(ReplicatedMaster {
                master,
                raft,
                machine,
                log,
            }),
            Err(e) => {
                // The node holds its log locked until it stops: stopped, a retry can open it.
                if let Err(stop) = raft.shutdown().await {
                    warn!(error = %stop, "the Raft node did not stop cleanly");
                }
                Err(e)
            }
        }
    }

    /// The Raft log of the node whose data is in `dir`: to inspect the log of a node that is
    /// not running (a running node holds it locked).
    ///
    /// # Errors
    /// The log cannot be opened.
    pub fn open_log(dir: impl AsRef<Path>) -> Result<SledLogStore, RaftStoreError> {
        SledLogStore::open(dir.as_ref().join(LOG_DIR))
    }

    /// The master. It stops on its own when it can no longer write the log (see
    /// [`Master::stopped`]), and this still returns it then.
    pub fn master(&self) -> &Master {
        &self.master
    }

    /// A client of the master: [`Master::proxy`].
    pub fn proxy(&self) -> LocalMasterProxy {
        self.master.proxy()
    }

    /// The in-process pod connector of the master: [`Master::pod_connector`].
    pub fn pod_connector(&self) -> LocalPodConnector {
        self.master.pod_connector()
    }

    /// The Raft node.
    pub fn raft(&self) -> &Raft<MasterRaft, MasterStateMachine> {
        &self.raft
    }

    /// The state machine.
    pub fn machine(&self) -> &MasterStateMachine {
        &self.machine
    }

    /// The Raft log (its [`SledLogStore::syncs`], say).
    pub fn log(&self) -> &SledLogStore {
        &self.log
    }

    /// Stops the master cleanly (its last batch committed), stores the snapshot it offers as
    /// it stops (so that the next start replays nothing), then stops the Raft node.
    ///
    /// # Errors
    /// What stopped the master earlier, if anything did, or a Raft node that did not stop.
    pub async fn shutdown(self) -> Result<(), RaftStoreError> {
        let stopped = self.master.shutdown().await;
        // The offer the master made as it stopped may be taken already by a build that
        // is still running: wait for a snapshot as new as it either way.
        if let Some(offered) = self.machine.last_offer() {
            store_offered_snapshot(&self.raft, offered.index).await;
        }
        self.raft
            .shutdown()
            .await
            .map_err(|e| RaftStoreError::Raft(e.to_string()))?;
        stopped.map_err(RaftStoreError::Master)
    }

    /// Stops as a crash would: the master without committing its last batch, then the
    /// Raft node. For fault-injection tests.
    ///
    /// # Errors
    /// As [`ReplicatedMaster::shutdown`].
    #[cfg(feature = "testing")]
    pub async fn halt(self) -> Result<(), RaftStoreError> {
        let stopped = self.master.halt().await;
        self.raft
            .shutdown()
            .await
            .map_err(|e| RaftStoreError::Raft(e.to_string()))?;
        stopped.map_err(RaftStoreError::Master)
    }
}

/// Builds the snapshot of the copy the master offered last, the state as of entry
/// `index`, and waits (a bounded time) until it is stored. Not storing it loses nothing:
/// a restart replays the log instead.
pub(crate) async fn store_offered_snapshot(
    raft: &Raft<MasterRaft, MasterStateMachine>,
    index: u64,
) {
    let deadline = std::time::Instant::now() + SNAPSHOT_AT_STOP_WITHIN;
    // A trigger while an earlier build runs is ignored: asked again until one takes.
    while std::time::Instant::now() < deadline {
        if let Err(e) = raft.trigger().snapshot().await {
            warn!(error = %e, index, "the snapshot asked for could not be started");
            return;
        }
        let built = raft
            .wait(Some(SNAPSHOT_RETRY))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= index),
                "the last snapshot stored",
            )
            .await;
        if built.is_ok() {
            return;
        }
    }
    warn!(
        index,
        "the snapshot asked for was not stored in time; a restart replays the log behind it"
    );
}

/// A node's parts, opened from its directory: the runtime it runs on, its log, its state
/// machine and its Raft node.
pub(crate) struct Opened {
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) log: SledLogStore,
    pub(crate) machine: MasterStateMachine,
    pub(crate) raft: Raft<MasterRaft, MasterStateMachine>,
    pub(crate) identity: NodeIdentity,
}

impl Opened {
    /// Opens node `config.id` with its data in `dir` (created if missing), reaching the
    /// others through `network` (told the node's identity first). Must be called on a
    /// tokio runtime.
    pub(crate) async fn open<N>(
        dir: &Path,
        config: &NodeConfig,
        mut network: N,
    ) -> Result<Self, RaftStoreError>
    where
        N: NodeNetwork,
        N::Network: NetSnapshot<MasterRaft, SnapshotData = Vec<u8>>,
    {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            RaftStoreError::Raft(format!("a master node runs on a tokio runtime: {e}"))
        })?;
        refuse_a_plain_journal(dir)?;
        let log = SledLogStore::open(dir.join(LOG_DIR))?
            .with_free_space_reserve(config.free_space_reserve);
        let machine = MasterStateMachine::open(dir.join(MACHINE_DIR))?
            .with_free_space_reserve(config.free_space_reserve);
        let identity = NodeIdentity::new(config.id, log.clone())?;
        network.attach(identity.clone());
        let raft = Raft::new(
            config.id,
            config.raft()?,
            network,
            log.clone(),
            machine.clone(),
        )
        .await
        .map_err(|e| RaftStoreError::Raft(e.to_string()))?;
        Ok(Opened {
            runtime,
            log,
            machine,
            raft,
            identity,
        })
    }
}

/// A directory that holds a master's plain sled journal (sled's `conf` and `db` files, no
/// Raft log) is not a node's: opened as one, it would start empty beside the tasks it holds.
fn refuse_a_plain_journal(dir: &Path) -> Result<(), RaftStoreError> {
    let plain = dir.join("conf").is_file() && dir.join("db").is_file();
    if plain && !dir.join(LOG_DIR).exists() {
        return Err(RaftStoreError::Storage(mawex_core::CoreError::Config(
            format!(
                "{} holds a master's sled journal, not a node's Raft log: open it with \
             SledJournal, or give the node another directory",
                dir.display()
            ),
        )));
    }
    Ok(())
}

/// Waits (up to `within`) for `raft` to lead, applies everything committed, and starts the
/// master on it.
pub(crate) async fn lead(
    raft: &Raft<MasterRaft, MasterStateMachine>,
    machine: &MasterStateMachine,
    log: &SledLogStore,
    builder: MasterBuilder,
    runtime: tokio::runtime::Handle,
    within: Duration,
) -> Result<Master, RaftStoreError> {
    let started = std::time::Instant::now();
    let id = *raft.node_id();
    // Leading with a committed vote (what `RaftJournal::new` checks), as the metrics tell,
    // which are published a little after the state changes.
    raft.wait(Some(within))
        .metrics(
            |m| {
                m.state == ServerState::Leader
                    && m.current_leader == Some(id)
                    && m.vote.is_committed()
            },
            "the node leads",
        )
        .await
        .map_err(|e| RaftStoreError::Raft(e.to_string()))?;
    // A blank entry of this term, applied: every entry committed before it is applied too,
    // so the state handed to the master is the whole committed state.
    let deadline = std::time::Instant::now() + within;
    loop {
        let Err(e) = raft.write_blank().await else {
            break;
        };
        match e.forward_to_leader() {
            // Just elected, the leader has no quorum's ack yet (its lease): one heartbeat on,
            // it has.
            Some(forward)
                if forward.reason == ForwardReason::LeaseExpired
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(LEASE_RETRY).await;
            }
            Some(forward) => {
                return Err(RaftStoreError::NotLeader {
                    leader: forward.leader_id,
                })
            }
            None => return Err(RaftStoreError::Raft(e.to_string())),
        }
    }
    let journal = RaftJournal::new(raft.clone(), machine.clone(), runtime)?;
    let master = match builder.start(journal).await {
        Ok(master) => master,
        Err(e) => {
            // The master may have borrowed the state before it failed.
            if let Err(reclaim) = machine.reclaim_blocking(log).await {
                warn!(error = %reclaim, "the state could not be taken back");
            }
            return Err(RaftStoreError::Master(e));
        }
    };
    info!(
        lead_ms = started.elapsed().as_millis() as u64,
        events = machine.events(),
        "the master leads its cluster"
    );
    Ok(master)
}
