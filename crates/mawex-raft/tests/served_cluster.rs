//! Three nodes, each serving the mawex client and pod services and the Raft service on one
//! port (`Server::over` a node's `ClusterProxy` and `ClusterPodConnector`). A client and a
//! pod given all three addresses find the leader by themselves, before and after the leader
//! is killed, and every task runs to its result.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{leader, CLUSTER_DEADLINE};
use mawex_api::{
    ApiError, GroupName, MasterProxy, Outcome, PodId, RemoteConfig, RemoteMasterProxy, TaskSpec,
    TaskState,
};
use mawex_core::MasterConfig;
use mawex_raft::{raft_service, GrpcNetwork, MasterNode, NodeConfig};
use mawex_sandbox::{HandlerRegistry, InProcess, TaskInput};
use mawex_server::Server;
use mawex_worker::{Pod, PodConfig};
use openraft::BasicNode;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A node and the server that serves it.
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
    let mut master = MasterConfig::default();
    master.lease_timeout = Duration::from_secs(2);
    master.heartbeat_interval = Duration::from_millis(200);
    let max_payload = master.max_payload_bytes;
    let node = MasterNode::start(dir, config, GrpcNetwork::new(), master)
        .await
        .expect("the node starts");
    let server = Server::over(
        Arc::new(node.client()),
        Arc::new(node.pod_connector()),
        max_payload,
    )
    .add_service(raft_service(node.raft().clone()));
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

fn nodes(running: &BTreeMap<u64, Running>) -> BTreeMap<u64, &MasterNode> {
    running.iter().map(|(id, r)| (*id, &r.node)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_pods_follow_the_leader_through_a_fail_over() {
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("a temporary directory"))
        .collect();
    let group = GroupName::new("served").expect("a valid name");
    let mut listeners = BTreeMap::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("an address");
        members.insert(id, BasicNode::new(addr.to_string()));
        listeners.insert(id, listener);
    }
    let endpoints: Vec<String> = members
        .values()
        .map(|n| format!("http://{}", n.addr))
        .collect();
    let mut running = BTreeMap::new();
    for (id, listener) in listeners {
        running.insert(id, start(id, dirs[id as usize - 1].path(), listener).await);
    }
    running[&1]
        .node
        .initialize(members.clone())
        .await
        .expect("initialised");
    let (first, _) = leader(&nodes(&running)).await;

    // A follower answers NotLeader, naming the leader's address.
    let follower = running
        .keys()
        .copied()
        .find(|id| *id != first)
        .expect("a follower");
    let refused = running[&follower]
        .node
        .client()
        .get(mawex_api::TaskId::new())
        .await;
    assert_eq!(
        refused.err(),
        Some(ApiError::NotLeader {
            leader: Some(members[&first].addr.clone())
        })
    );

    let mut remote = RemoteConfig::default();
    remote.retry_for = CLUSTER_DEADLINE;
    let client = RemoteMasterProxy::with_config(&endpoints, remote).expect("a client");
    let mut handlers = HandlerRegistry::new();
    handlers
        .register("echo", |t: TaskInput| async move { Ok(t.payload) })
        .expect("a handler");
    let connector = mawex_api::GrpcPodConnector::with_config(&endpoints, Default::default())
        .expect("a connector");
    let pod = Pod::start(
        PodConfig::new(PodId::new("p-1").expect("an id"), vec![group.clone()]).with_slots(2),
        Arc::new(InProcess::new(handlers)),
        Arc::new(connector),
    )
    .expect("the pod starts");

    let specs: Vec<TaskSpec> = (0..200)
        .map(|i| TaskSpec::new(group.clone(), "echo", format!("before {i}")))
        .collect();
    client.submit_many(specs.clone()).await.expect("accepted");
    client
        .await_result(specs[100].id)
        .await
        .expect("work runs before the kill");

    let killed = Instant::now();
    running.remove(&first).expect("the leader").kill().await;
    // The same client, unchanged, submits to whichever node leads now.
    let after: Vec<TaskSpec> = (0..100)
        .map(|i| TaskSpec::new(group.clone(), "echo", format!("after {i}")))
        .collect();
    client
        .submit_many(after.clone())
        .await
        .expect("accepted after the fail-over");
    println!(
        "the first submit after the kill was accepted {} ms after it",
        killed.elapsed().as_millis()
    );
    let (second, _) = leader(&nodes(&running)).await;
    assert_ne!(second, first);
    for spec in specs.iter().chain(&after) {
        let result = client.await_result(spec.id).await.expect("a result");
        assert_eq!(result.outcome, Outcome::Succeeded(spec.payload.clone()));
    }
    let view = client.get(after[0].id).await.expect("a task");
    assert_eq!(view.state, TaskState::Succeeded);
    pod.shutdown().await.expect("the pod stops");
    for (_, node) in running {
        node.kill().await;
    }
}
