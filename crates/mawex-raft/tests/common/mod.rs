//! What the tests of the Raft stores share.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use mawex_api::{MasterProxy, TaskId};
use mawex_core::LocalMasterProxy;
use mawex_core::MasterConfig;
use mawex_raft::{
    admin_service, raft_service, GrpcNetwork, MasterNode, MasterRaft, MasterStateMachine,
    NodeConfig,
};
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use mawex_api::{GroupName, TaskSpec, Timestamp};
use mawex_core::Event;
use mawex_raft::Batch;

/// A batch of `tasks` tasks of `group` accepted.
pub(crate) fn accepted(group: &GroupName, tasks: usize) -> Batch {
    Batch::new(
        (0..tasks)
            .map(|_| Event::TaskAccepted {
                spec: TaskSpec::new(group.clone(), "h", &b"payload"[..]).into(),
                at: Timestamp(5),
            })
            .collect(),
    )
}

pub(crate) type Node = Raft<MasterRaft, MasterStateMachine>;

/// The nodes that are up, by id: a call to one that is not there is unreachable. A router
/// made for a node ([`Router::for_node`]) also drops its calls across a partition.
#[derive(Clone, Default)]
pub(crate) struct Router(pub(crate) Arc<Mutex<BTreeMap<u64, Node>>>, Links);

/// Which nodes are cut off from the rest, and whose calls a router carries.
#[derive(Clone, Default)]
pub(crate) struct Links {
    isolated: Arc<Mutex<std::collections::BTreeSet<u64>>>,
    from: Option<u64>,
}

impl Router {
    pub(crate) fn get(&self, id: u64) -> Result<Node, Unreachable<MasterRaft>> {
        let nodes = self.0.lock().expect("the router's lock");
        nodes
            .get(&id)
            .cloned()
            .ok_or_else(|| Unreachable::from_string(format!("node {id} is down")))
    }

    /// The same network, for the calls of node `id`.
    pub(crate) fn for_node(&self, id: u64) -> Router {
        let mut router = self.clone();
        router.1.from = Some(id);
        router
    }

    /// Cuts node `id` off from every other node (both ways) until [`Router::heal`].
    pub(crate) fn isolate(&self, id: u64) {
        self.1.isolated.lock().expect("the links' lock").insert(id);
    }

    /// Ends every partition.
    pub(crate) fn heal(&self) {
        self.1.isolated.lock().expect("the links' lock").clear();
    }

    /// Node `target`, if this router's node can reach it.
    fn reach(&self, target: u64) -> Result<Node, Unreachable<MasterRaft>> {
        let isolated = self.1.isolated.lock().expect("the links' lock");
        let cut = |id: Option<u64>| id.is_some_and(|id| isolated.contains(&id));
        if cut(self.1.from) != cut(Some(target)) {
            return Err(Unreachable::from_string(format!(
                "node {target} is across a partition"
            )));
        }
        drop(isolated);
        self.get(target)
    }
}

pub(crate) struct Connection {
    router: Router,
    target: u64,
}

impl mawex_raft::NodeNetwork for Router {}

impl RaftNetworkFactory<MasterRaft> for Router {
    type Network = Connection;
    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Connection {
        Connection {
            router: self.clone(),
            target,
        }
    }
}

impl RaftNetworkV2<MasterRaft> for Connection {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<MasterRaft>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<MasterRaft>, RPCError<MasterRaft>> {
        let node = self.router.reach(self.target)?;
        node.append_entries(rpc)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MasterRaft>,
        _option: RPCOption,
    ) -> Result<VoteResponse<MasterRaft>, RPCError<MasterRaft>> {
        let node = self.router.reach(self.target)?;
        node.vote(rpc)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<MasterRaft>,
        snapshot: SnapshotOf<MasterRaft, Vec<u8>>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<MasterRaft>, StreamingError<MasterRaft>> {
        let node = self.router.reach(self.target)?;
        node.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
    }
}

impl Router {
    /// Makes `node` reachable as `id`.
    pub(crate) fn add(&self, id: u64, node: Node) {
        self.0.lock().expect("the router's lock").insert(id, node);
    }

    /// Makes node `id` unreachable.
    pub(crate) fn remove(&self, id: u64) {
        self.0.lock().expect("the router's lock").remove(&id);
    }
}

/// How long a cluster may take to do what a test waits for.
pub(crate) const CLUSTER_DEADLINE: Duration = Duration::from_secs(30);

/// The node among `nodes` that runs the master, once one does, and a client of it.
pub(crate) async fn leader<N: std::borrow::Borrow<MasterNode>>(
    nodes: &BTreeMap<u64, N>,
) -> (u64, LocalMasterProxy) {
    let started = Instant::now();
    loop {
        for (id, node) in nodes {
            if let Some(proxy) = node.borrow().proxy() {
                return (*id, proxy);
            }
        }
        assert!(
            started.elapsed() < CLUSTER_DEADLINE,
            "no node runs the master"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) async fn submit(
    proxy: &LocalMasterProxy,
    group: &GroupName,
    tasks: usize,
) -> Vec<TaskId> {
    let specs: Vec<TaskSpec> = (0..tasks)
        .map(|_| TaskSpec::new(group.clone(), "h", &b"payload"[..]))
        .collect();
    let ids = specs.iter().map(|s| s.id).collect();
    proxy.submit_many(specs).await.expect("accepted");
    ids
}

/// A node's settings in the tests: wide enough that syncs on a loaded machine do not look
/// like a dead leader.
pub(crate) fn test_node_config(id: u64) -> NodeConfig {
    let mut config = NodeConfig::new(id);
    config.heartbeat = Duration::from_millis(150);
    config.election_timeout = (Duration::from_millis(1_000), Duration::from_millis(2_000));
    config
}

/// Three loopback listeners, and the members of a cluster whose nodes serve on them.
pub(crate) async fn three_listeners() -> (BTreeMap<u64, TcpListener>, BTreeMap<u64, BasicNode>) {
    let mut listeners = BTreeMap::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("an address");
        members.insert(id, BasicNode::new(addr.to_string()));
        listeners.insert(id, listener);
    }
    (listeners, members)
}

/// A node of a test and the server it is reached on: the mawex client and pod services
/// through the node (`Server::over`) and its peers' Raft service, on one port.
pub(crate) struct Running {
    pub(crate) node: MasterNode,
    stop_server: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Serves `node` on `listener`, sized for payloads of up to `max_payload` bytes.
    pub(crate) fn serve(node: MasterNode, listener: TcpListener, max_payload: usize) -> Self {
        let server = mawex_server::Server::over(
            Arc::new(node.client()),
            Arc::new(node.pod_connector()),
            max_payload,
        )
        .add_service_for(mawex_server::auth::Role::Peer, raft_service(&node))
        .add_service_for(mawex_server::auth::Role::Admin, admin_service(node.admin()));
        let (stop_server, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .expect("the server runs");
        });
        Running {
            node,
            stop_server,
            server,
        }
    }

    /// Stops the server, then the node.
    pub(crate) async fn kill(self) {
        let _ = self.stop_server.send(());
        self.server.await.expect("the server task ends");
        self.node.shutdown().await.expect("the node stops");
    }
}

/// `n` temporary directories, one a node.
pub(crate) fn temporary_dirs(n: usize) -> Vec<tempfile::TempDir> {
    (0..n)
        .map(|_| tempfile::tempdir().expect("a temporary directory"))
        .collect()
}

/// Starts a node over gRPC with its data in `dir`, and serves it on `listener`.
pub(crate) async fn serve_node(
    dir: &std::path::Path,
    (config, master): (NodeConfig, MasterConfig),
    listener: TcpListener,
) -> Running {
    let max_payload = master.max_payload_bytes;
    let node = MasterNode::start(dir, config, GrpcNetwork::new(), master)
        .await
        .expect("the node starts");
    Running::serve(node, listener, max_payload)
}

/// Nodes 1 – 3 of a new cluster over gRPC on loopback, their data in `dirs`, each with the
/// settings `settings` gives it; and the members, with their addresses.
pub(crate) async fn served_three(
    dirs: &[tempfile::TempDir],
    settings: impl Fn(u64) -> (NodeConfig, MasterConfig),
) -> (BTreeMap<u64, Running>, BTreeMap<u64, BasicNode>) {
    let (listeners, members) = three_listeners().await;
    let mut running = BTreeMap::new();
    for (id, listener) in listeners {
        let dir = dirs[id as usize - 1].path();
        running.insert(id, serve_node(dir, settings(id), listener).await);
    }
    running[&1]
        .node
        .initialize(members.clone())
        .await
        .expect("initialised");
    (running, members)
}

/// Waits until `node`'s state machine holds `tasks` tasks.
pub(crate) async fn holds_every_task(node: &MasterNode, tasks: usize, who: &str) {
    let started = Instant::now();
    while node.machine().read(|state| state.len()) != Some(tasks) {
        assert!(
            started.elapsed() < CLUSTER_DEADLINE,
            "{who} did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The nodes of `running`, for the helpers above.
pub(crate) fn nodes(running: &BTreeMap<u64, Running>) -> BTreeMap<u64, &MasterNode> {
    running.iter().map(|(id, r)| (*id, &r.node)).collect()
}
