//! Three master nodes that talk gRPC on loopback (`GrpcNetwork`, `raft_service`): the
//! leader is killed, the next one runs the master with every acknowledged task, and the
//! killed node, back with its log purged behind the others' snapshots, is sent a snapshot in
//! chunks and follows.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{leader, submit, CLUSTER_DEADLINE};
use mawex_api::{GroupName, MasterProxy, TaskState};
use mawex_core::MasterConfig;
use mawex_raft::{raft_service, GrpcNetwork, MasterNode, NodeConfig};
use openraft::BasicNode;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A node and the gRPC server its peers reach it on.
struct Running {
    node: MasterNode,
    stop_server: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn kill(self) {
        let _ = self.stop_server.send(());
        self.server.await.expect("the server task ends");
        self.node.shutdown().await.expect("the node stops");
    }
}

async fn start(id: u64, dir: &Path, listener: TcpListener) -> Running {
    let mut config = NodeConfig::new(id);
    // Wide enough that syncs on a loaded machine do not look like a dead leader.
    config.heartbeat = Duration::from_millis(150);
    config.election_timeout = (Duration::from_millis(1_000), Duration::from_millis(2_000));
    // Nothing kept behind a snapshot: a node that was away needs one.
    config.keep_after_snapshot = 0;
    let mut master = MasterConfig::default();
    master.snapshot_every = 50;
    let node = MasterNode::start(dir, config, GrpcNetwork::new(), master)
        .await
        .expect("the node starts");
    let (stop_server, stopped) = oneshot::channel::<()>();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let service = raft_service(node.raft().clone());
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
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

/// The nodes of `running`, for the shared helpers.
fn nodes(running: &BTreeMap<u64, Running>) -> BTreeMap<u64, &MasterNode> {
    running.iter().map(|(id, r)| (*id, &r.node)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_grpc_fails_over_and_sends_a_returning_node_a_snapshot() {
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("a temporary directory"))
        .collect();
    let group = GroupName::new("replicated").expect("a valid name");
    let mut listeners = BTreeMap::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("an address");
        members.insert(id, BasicNode::new(addr.to_string()));
        listeners.insert(id, listener);
    }
    let mut running = BTreeMap::new();
    for (id, listener) in listeners {
        running.insert(id, start(id, dirs[id as usize - 1].path(), listener).await);
    }
    running[&1]
        .node
        .initialize(members.clone())
        .await
        .expect("initialised");

    let (first, proxy) = leader(&nodes(&running)).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.extend(submit(&proxy, &group, 20).await);
    }

    let killed = Instant::now();
    let dead = running.remove(&first).expect("the leader");
    let applied_before = dead.node.machine().last_applied().map_or(0, |id| id.index);
    dead.kill().await;
    let (second, proxy) = leader(&nodes(&running)).await;
    println!(
        "over gRPC, a new master took over {} ms after the kill",
        killed.elapsed().as_millis()
    );
    assert_ne!(second, first);
    for id in &ids {
        let view = proxy.get(*id).await.expect("an acknowledged task is there");
        assert_eq!(view.state, TaskState::Pending);
    }
    // More work, past more snapshots: the leader's log no longer reaches back to where the
    // killed node stopped.
    for _ in 0..5 {
        ids.extend(submit(&proxy, &group, 20).await);
    }

    let listener = TcpListener::bind(&members[&first].addr)
        .await
        .expect("the killed node's port again");
    let back = start(first, dirs[first as usize - 1].path(), listener).await;
    let started = Instant::now();
    while back.node.machine().read(|state| state.len()) != Some(ids.len()) {
        assert!(
            started.elapsed() < CLUSTER_DEADLINE,
            "the returning node did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    back.node
        .raft()
        .wait(Some(CLUSTER_DEADLINE))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index > applied_before),
            "a snapshot sent to the returning node",
        )
        .await
        .expect("the returning node was sent a snapshot past what it had");
    assert!(back.node.proxy().is_none(), "the returning node follows");
    running.insert(first, back);
    for (_, node) in running {
        node.kill().await;
    }
}
