//! Three master nodes that talk gRPC on loopback (`GrpcNetwork`, `raft_service`): the
//! leader is killed, the next one runs the master with every acknowledged task, and the
//! killed node, back with its log purged behind the others' snapshots, is sent a snapshot in
//! chunks and follows.

mod common;

use std::time::Instant;

use common::{
    holds_every_task, leader, nodes, serve_node, served_three, submit, temporary_dirs,
    test_node_config, CLUSTER_DEADLINE,
};
use mawex_api::{GroupName, MasterProxy, TaskState};
use mawex_core::MasterConfig;
use mawex_raft::NodeConfig;
use tokio::net::TcpListener;

/// Node `id`'s settings: snapshots every 50 events, and nothing kept behind one, so a node
/// that was away needs a snapshot.
fn settings(id: u64) -> (NodeConfig, MasterConfig) {
    let mut config = test_node_config(id);
    config.keep_after_snapshot = 0;
    let mut master = MasterConfig::default();
    master.snapshot_every = 50;
    (config, master)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_grpc_fails_over_and_sends_a_returning_node_a_snapshot() {
    let dirs = temporary_dirs(3);
    let group = GroupName::new("replicated").expect("a valid name");
    let (mut running, members) = served_three(&dirs, settings).await;

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
    let back = serve_node(dirs[first as usize - 1].path(), settings(first), listener).await;
    holds_every_task(&back.node, ids.len(), "the returning node").await;
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
