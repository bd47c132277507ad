//! A master whose journal is a Raft log: for now the one node of its cluster (the embedded
//! default), on the same path a cluster's leader takes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mawex_core::{Master, MasterBuilder};
use openraft::{BasicNode, Config, Raft, ServerState};
use tracing::info;

use crate::{
    MasterRaft, MasterStateMachine, RaftJournal, RaftStoreError, SingleNode, SledLogStore,
};

/// Where in a node's directory its Raft log and its state machine's snapshot are.
const LOG_DIR: &str = "raft-log";
const MACHINE_DIR: &str = "raft-machine";
/// The id of the node of a cluster of one.
const SINGLE_NODE_ID: u64 = 1;
/// How long a node of one may take to lead after it starts (it elects itself at once).
const LEAD_WITHIN: Duration = Duration::from_secs(30);

/// The Raft settings of a master node: snapshots are started by the master (every
/// `MasterConfig::snapshot_every` events, from a copy its core offers), never by openraft's
/// count of entries, whose batches vary from one event to thousands.
fn raft_config() -> Result<Arc<Config>, RaftStoreError> {
    let config = Config {
        cluster_name: "mawex".into(),
        snapshot_policy: openraft::SnapshotPolicy::Never,
        // A cluster of one has no follower that could use the entries a snapshot covers.
        max_in_snapshot_log_to_keep: 0,
        ..Config::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| RaftStoreError::Raft(e.to_string()))
}

/// A running master on a replicated log: the Raft node, its state machine, and the
/// [`Master`] that leads it (its journal a [`RaftJournal`]).
///
/// Stop it with [`ReplicatedMaster::shutdown`]; dropping it stops the master but leaves the
/// Raft node's tasks to the runtime's end.
pub struct ReplicatedMaster {
    master: Option<Master>,
    raft: Raft<MasterRaft, MasterStateMachine>,
    machine: MasterStateMachine,
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
        let dir = dir.as_ref();
        let store = Self::open_log(dir)?;
        let machine = MasterStateMachine::open(dir.join(MACHINE_DIR))?;
        let raft = Raft::new(
            SINGLE_NODE_ID,
            raft_config()?,
            SingleNode,
            store,
            machine.clone(),
        )
        .await
        .map_err(|e| RaftStoreError::Raft(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| RaftStoreError::Raft(e.to_string()))?;
        if !initialized {
            let members = BTreeMap::from([(SINGLE_NODE_ID, BasicNode::new(""))]);
            raft.initialize(members)
                .await
                .map_err(|e| RaftStoreError::Raft(e.to_string()))?;
        }
        Self::lead(raft, machine, builder).await
    }

    /// The Raft log of the node whose data is in `dir`: to inspect the log of a node that is
    /// not running (a running node holds it locked).
    ///
    /// # Errors
    /// The log cannot be opened.
    pub fn open_log(dir: impl AsRef<Path>) -> Result<SledLogStore, RaftStoreError> {
        SledLogStore::open(dir.as_ref().join(LOG_DIR))
    }

    /// Waits for `raft` to lead, applies everything committed, and starts the master on it.
    async fn lead(
        raft: Raft<MasterRaft, MasterStateMachine>,
        machine: MasterStateMachine,
        builder: MasterBuilder,
    ) -> Result<Self, RaftStoreError> {
        let started = std::time::Instant::now();
        let id = *raft.node_id();
        // Leading with a committed vote (what `RaftJournal::new` checks), as the metrics
        // tell, which are published a little after the state changes.
        raft.wait(Some(LEAD_WITHIN))
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
        // A blank entry of this term, applied: every entry committed before it is applied
        // too, so the state handed to the master is the whole committed state.
        raft.write_blank()
            .await
            .map_err(|e| match e.forward_to_leader() {
                Some(forward) => RaftStoreError::NotLeader {
                    leader: forward.leader_id,
                },
                None => RaftStoreError::Raft(e.to_string()),
            })?;
        let journal = RaftJournal::new(
            raft.clone(),
            machine.clone(),
            tokio::runtime::Handle::current(),
        )?;
        let master = builder
            .start(journal)
            .await
            .map_err(RaftStoreError::Master)?;
        info!(
            lead_ms = started.elapsed().as_millis() as u64,
            events = machine.events(),
            "the master leads its cluster"
        );
        Ok(ReplicatedMaster {
            master: Some(master),
            raft,
            machine,
        })
    }

    /// The master (while it runs: it stops when it can no longer write its log).
    pub fn master(&self) -> Option<&Master> {
        self.master.as_ref()
    }

    /// The Raft node.
    pub fn raft(&self) -> &Raft<MasterRaft, MasterStateMachine> {
        &self.raft
    }

    /// The state machine.
    pub fn machine(&self) -> &MasterStateMachine {
        &self.machine
    }

    /// Stops the master cleanly (its last batch committed), then the Raft node.
    ///
    /// # Errors
    /// What stopped the master earlier, if anything did, or a Raft node that did not stop.
    pub async fn shutdown(mut self) -> Result<(), RaftStoreError> {
        let stopped = match self.master.take() {
            Some(master) => master.shutdown().await,
            None => Ok(()),
        };
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
    pub async fn halt(mut self) -> Result<(), RaftStoreError> {
        let stopped = match self.master.take() {
            Some(master) => master.halt().await,
            None => Ok(()),
        };
        self.raft
            .shutdown()
            .await
            .map_err(|e| RaftStoreError::Raft(e.to_string()))?;
        stopped.map_err(RaftStoreError::Master)
    }
}
