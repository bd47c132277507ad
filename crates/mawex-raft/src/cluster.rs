//! A node of a cluster of masters: it runs a master while it leads, and only then.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mawex_core::{LocalMasterProxy, Master, MasterConfig};

use crate::access::{ClusterPodConnector, ClusterProxy, LeaderHandles};
use openraft::network::NetSnapshot;
use openraft::{BasicNode, Config, Raft, WatchChangeHandle};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::node::{lead, Opened};
use crate::{
    ClusterAdmin, MasterRaft, MasterStateMachine, NodeIdentity, NodeNetwork, RaftStoreError,
    SledLogStore,
};

/// The settings of one node of a cluster of masters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeConfig {
    /// This node's id, unique in its cluster and never reused by a node with another disk.
    pub id: u64,
    /// How often the leader tells the others it is there.
    pub heartbeat: Duration,
    /// A follower that hears nothing for a time drawn between these two stands for election.
    pub election_timeout: (Duration, Duration),
    /// Entries kept after a snapshot, so that a follower a little behind catches up from
    /// the log rather than from a whole snapshot.
    pub keep_after_snapshot: u64,
    /// A follower builds a snapshot (and purges its log behind it) every this many entries.
    /// The leader's master starts its own every `MasterConfig::snapshot_every` events.
    pub snapshot_every_entries: u64,
    /// The longest sending a snapshot to a follower, and its installing it, may take; after
    /// that it is sent again.
    pub snapshot_timeout: Duration,
    /// Bytes the node keeps free on its disk: an append or a snapshot that would leave less
    /// is refused before it begins, and the node stops saying why (sled must never meet a
    /// full disk). 0 turns the check off.
    pub free_space_reserve: u64,
    /// Where the other nodes reach this one (`host:port`). A node that leads records it in
    /// the membership when the membership says otherwise: how a cluster of one, made with no
    /// address, becomes reachable once it grows. `None` leaves the membership as it is.
    pub address: Option<String>,
}

impl NodeConfig {
    /// The defaults for node `id`: heartbeats every 50 ms, election timeouts of 300 – 600 ms
    /// (so another node leads 0.9 – 1.2 s after the leader's last heartbeat: see
    /// [`NodeConfig::takeover_bound`]), 1,000 entries kept after a snapshot, a follower's
    /// snapshot every 2,000 entries, 60 s to send and install a snapshot, 64 MiB kept free
    /// on the disk.
    pub fn new(id: u64) -> Self {
        NodeConfig {
            id,
            heartbeat: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(300), Duration::from_millis(600)),
            keep_after_snapshot: 1_000,
            snapshot_every_entries: 2_000,
            snapshot_timeout: Duration::from_secs(60),
            free_space_reserve: mawex_core::FreeSpace::DEFAULT_RESERVE,
            address: None,
        }
    }

    /// The settings of the node of a cluster of one (the embedded default): node 1, keeping
    /// no entry behind a snapshot (it has no follower that could use one).
    pub fn single() -> Self {
        let mut config = NodeConfig::new(1);
        config.keep_after_snapshot = 0;
        config
    }

    /// The longest a leader's silence lasts before another node is elected: a follower
    /// votes only once the leader's lease (the longest election timeout) has run out, and
    /// stands only after its own election timeout on top.
    pub fn takeover_bound(&self) -> Duration {
        self.election_timeout.1.saturating_mul(2)
    }

    pub(crate) fn raft(&self) -> Result<Arc<Config>, RaftStoreError> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = Config {
            cluster_name: "mawex".into(),
            heartbeat_interval: millis(self.heartbeat),
            election_timeout_min: millis(self.election_timeout.0),
            election_timeout_max: millis(self.election_timeout.1),
            enable_pre_vote: Some(true),
            // On a follower, openraft starts snapshots by this count. On the leader the
            // master starts them from the copies it offers (see `RaftJournal`); a lent
            // machine with no offer defers a build this count asks for.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.keep_after_snapshot,
            install_snapshot_timeout: millis(self.snapshot_timeout),
            ..Config::default()
        };
        config
            .validate()
            .map(Arc::new)
            .map_err(|e| RaftStoreError::Raft(e.to_string()))
    }
}

/// The master this node runs while it leads.
#[derive(Default)]
struct Leading {
    master: Option<Master>,
    /// Counts starts and stops of the lead: a supervisor of an earlier one leaves.
    generation: u64,
}

/// Resolves when a master stops on its own, with why.
type Stopped = std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>;

/// What starting and stopping this node's master takes.
struct Ctx {
    raft: Raft<MasterRaft, MasterStateMachine>,
    machine: MasterStateMachine,
    log: SledLogStore,
    runtime: tokio::runtime::Handle,
    master: MasterConfig,
    lead_within: Duration,
    /// Where the others reach this node, if set (`NodeConfig::address`).
    address: Option<String>,
    /// Which disk this node is, and what it knows of its peers'.
    identity: NodeIdentity,
    /// Held while a master starts or stops, so that the two never overlap.
    leading: tokio::sync::Mutex<Leading>,
    handles: watch::Sender<Option<LeaderHandles>>,
    /// The generation of the lead, as `Leading::generation`, for supervisors to watch.
    generations: watch::Sender<u64>,
}

impl Ctx {
    /// Moves `leading` to the next generation of the lead; a supervisor of the last one
    /// leaves.
    fn next_generation(&self, leading: &mut Leading) -> u64 {
        leading.generation = leading.generation.wrapping_add(1);
        self.generations.send_replace(leading.generation);
        leading.generation
    }

    /// Starts a master on this leader and publishes its handles; what tells when it stops.
    async fn start_master(&self, leading: &mut Leading) -> Result<Stopped, RaftStoreError> {
        let builder = Master::builder().config(self.master.clone());
        let master = lead(
            &self.raft,
            &self.machine,
            &self.log,
            builder,
            self.runtime.clone(),
            self.lead_within,
        )
        .await?;
        let stopped: Stopped = Box::pin(master.stopped());
        self.handles.send_replace(Some(LeaderHandles {
            proxy: master.proxy(),
            pods: master.pod_connector(),
        }));
        leading.master = Some(master);
        Ok(stopped)
    }

    /// Withdraws the handles of the master, if there is one, and stops it.
    async fn stop_running(&self, leading: &mut Leading) {
        self.handles.send_replace(None);
        if let Some(master) = leading.master.take() {
            // Its last batch may not be committed under the old leadership: an error is
            // expected.
            if let Err(e) = master.shutdown().await {
                info!(error = %e, "the master of the last leadership stopped");
            }
        }
    }

    /// Stops the master, if there is one, and takes the state back. A node that cannot take
    /// it back cannot apply what comes next: it stops (fail-stop), and the others go on.
    /// False if it stopped.
    async fn stop_master(&self, leading: &mut Leading) -> bool {
        self.stop_running(leading).await;
        if let Err(e) = self.machine.reclaim_blocking(&self.log).await {
            error!(error = %e, "the state could not be taken back; this node stops");
            // Not awaited here: this may run on the task that a shutdown waits for.
            let raft = self.raft.clone();
            tokio::spawn(async move {
                let _ = raft.shutdown().await;
            });
            return false;
        }
        true
    }

    /// This node won the lead: starts a master, and watches it for as long as the lead is
    /// this generation's.
    async fn on_lead(self: Arc<Self>) {
        let mut leading = self.leading.lock().await;
        let generation = self.next_generation(&mut leading);
        let first = self.start_master(&mut leading).await;
        drop(leading);
        let stopped = match first {
            Ok(stopped) => Some(stopped),
            Err(e) => {
                warn!(error = %e, "the master did not start on this leader");
                None
            }
        };
        if let Some(address) = &self.address {
            let admin = ClusterAdmin {
                raft: self.raft.clone(),
            };
            let address = address.clone();
            tokio::spawn(async move {
                if let Err(e) = admin.record_own_address(&address).await {
                    warn!(error = %e, %address, "this node's address could not be recorded");
                }
            });
        }
        tokio::spawn(self.supervise(generation, stopped));
    }

    /// While this node leads (in generation `generation`), keeps a master running on it: one
    /// that stops on its own (writes it could not commit, say) or did not start is replaced,
    /// its state taken back first, a pause between tries.
    async fn supervise(self: Arc<Self>, generation: u64, mut stopped: Option<Stopped>) {
        let mut generations = self.generations.subscribe();
        loop {
            let waited = async {
                match stopped.take() {
                    Some(running) => {
                        let reason = running.await;
                        warn!(%reason, "the master stopped while this node leads; starting another");
                    }
                    None => tokio::time::sleep(RESTART_PAUSE).await,
                }
            };
            tokio::select! {
                () = waited => {}
                // The lead moved on (or the node stops): its stop takes care of the rest.
                _ = generations.wait_for(|g| *g != generation) => return,
            }
            let mut leading = self.leading.lock().await;
            if leading.generation != generation || !self.raft.is_leader() {
                return; // the lead moved on: its stop takes care of the rest
            }
            if !self.stop_master(&mut leading).await {
                return;
            }
            match self.start_master(&mut leading).await {
                Ok(running) => stopped = Some(running),
                Err(e) => warn!(error = %e, "the master did not start again on this leader"),
            }
        }
    }

    /// Another node leads: stops this node's master and takes the state back.
    async fn on_lose(self: Arc<Self>) {
        let mut leading = self.leading.lock().await;
        self.next_generation(&mut leading);
        self.stop_master(&mut leading).await;
    }
}

/// How long a leader waits before it tries again to start a master that did not start.
const RESTART_PAUSE: Duration = Duration::from_millis(200);

/// One node of a cluster of masters.
///
/// Every node keeps the Raft log and applies what is committed to its state machine. The
/// node that leads also runs a [`Master`]: when it wins an election it waits until every
/// committed entry is applied, lends the state machine's state to a new master
/// (`RaftJournal`), and from then on that master decides and writes. When another node
/// leads, the master here stops (its next write would fail anyway: every write is made
/// under the leadership it started with) and the state machine rebuilds its state from its
/// snapshot and log, never from the stopped master's, which may hold a batch that was never
/// committed. Starting and stopping take turns: a master starts only after the last one
/// stopped.
pub struct MasterNode {
    ctx: Arc<Ctx>,
    leading_handles: watch::Receiver<Option<LeaderHandles>>,
    watch: Option<WatchChangeHandle<MasterRaft>>,
}

impl std::fmt::Debug for MasterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterNode")
            .field("id", self.ctx.raft.node_id())
            .finish_non_exhaustive()
    }
}

impl MasterNode {
    /// Starts node `config.id` with its data in `dir` (created if missing), reaching the
    /// others through `network`. A node of a new cluster waits for
    /// [`MasterNode::initialize`] on one of them; a node that has data rejoins its cluster.
    ///
    /// # Errors
    /// The log or the snapshot cannot be opened or is damaged, or a setting is out of range.
    pub async fn start<N>(
        dir: impl AsRef<Path>,
        config: NodeConfig,
        network: N,
        master: MasterConfig,
    ) -> Result<Self, RaftStoreError>
    where
        N: NodeNetwork,
        N::Network: NetSnapshot<MasterRaft, SnapshotData = Vec<u8>>,
    {
        let mut master = master;
        // Pods of the last leader look for this one while it is elected: their attempts
        // wait that long on top of the lease.
        master.recovery_grace = master.recovery_grace.max(config.takeover_bound());
        // Long enough for a node that just won to apply what is committed and start.
        let lead_within = config.election_timeout.1.saturating_mul(4);
        let Opened {
            runtime,
            log,
            machine,
            raft,
            identity,
        } = Opened::open(dir.as_ref(), &config, network).await?;
        let (handles, leading_handles) = watch::channel(None);
        let ctx = Arc::new(Ctx {
            raft: raft.clone(),
            machine: machine.clone(),
            log,
            identity,
            runtime,
            master,
            lead_within,
            address: config.address.clone(),
            leading: tokio::sync::Mutex::new(Leading::default()),
            handles,
            generations: watch::channel(0).0,
        });
        let on_start = {
            let ctx = ctx.clone();
            move |_leader| ctx.clone().on_lead()
        };
        let on_stop = {
            let ctx = ctx.clone();
            move |_leader| ctx.clone().on_lose()
        };
        let watch = raft.on_leader_change(on_start, on_stop);
        Ok(MasterNode {
            ctx,
            leading_handles,
            watch: Some(watch),
        })
    }

    /// Makes a new cluster of `members` (this node among them); call it once, on one node.
    ///
    /// # Errors
    /// The cluster is initialised already, or `members` does not hold this node.
    pub async fn initialize(
        &self,
        members: BTreeMap<u64, BasicNode>,
    ) -> Result<(), RaftStoreError> {
        self.ctx
            .raft
            .initialize(members)
            .await
            .map_err(|e| RaftStoreError::Raft(e.to_string()))
    }

    /// A client of the master this node runs, while it leads.
    pub fn proxy(&self) -> Option<LocalMasterProxy> {
        self.leading_handles
            .borrow()
            .as_ref()
            .map(|handles| handles.proxy.clone())
    }

    /// A client of the cluster through this node, for any time: the calls of its master
    /// while it leads, `NotLeader { leader }` while it does not. What a server of this node
    /// serves (`mawex_server::Server::over`).
    pub fn client(&self) -> ClusterProxy {
        ClusterProxy::new(self.leading_handles.clone(), self.ctx.raft.clone())
    }

    /// The pod connector of the cluster through this node, as [`MasterNode::client`] is
    /// its client.
    pub fn pod_connector(&self) -> ClusterPodConnector {
        ClusterPodConnector::new(self.leading_handles.clone(), self.ctx.raft.clone())
    }

    /// The Raft node.
    pub fn raft(&self) -> &Raft<MasterRaft, MasterStateMachine> {
        &self.ctx.raft
    }

    /// The state machine.
    pub fn machine(&self) -> &MasterStateMachine {
        &self.ctx.machine
    }

    /// Which disk this node is (see [`NodeIdentity`]).
    pub fn identity(&self) -> &NodeIdentity {
        &self.ctx.identity
    }

    /// The peers this node refused, or that refused it, because a node came back with
    /// another disk under its id; and why (the error says what to do).
    pub fn refused_peers(&self) -> BTreeMap<u64, String> {
        self.ctx.identity.refused()
    }

    /// Resolves when the Raft node stops on its own (its storage failed: a full disk, say),
    /// with why. A node whose master stops because another node leads goes on: that is not
    /// a stop.
    pub fn stopped(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        use openraft::rt::WatchReceiver;
        let mut metrics = self.ctx.raft.metrics();
        async move {
            loop {
                if let Err(fatal) = &metrics.borrow_watched().running_state {
                    return format!("the Raft node stopped: {fatal}");
                }
                if metrics.changed().await.is_err() {
                    return "the Raft node stopped".to_owned();
                }
            }
        }
    }

    /// Stops the master (if this node runs one) and the Raft node.
    ///
    /// # Errors
    /// The Raft node did not stop cleanly.
    pub async fn shutdown(mut self) -> Result<(), RaftStoreError> {
        if let Some(mut watch) = self.watch.take() {
            watch.close().await;
        }
        {
            let mut leading = self.ctx.leading.lock().await;
            // A supervisor still waiting leaves.
            self.ctx.next_generation(&mut leading);
            self.ctx.stop_running(&mut leading).await;
        }
        self.ctx
            .raft
            .shutdown()
            .await
            .map_err(|e| RaftStoreError::Raft(e.to_string()))
    }
}
