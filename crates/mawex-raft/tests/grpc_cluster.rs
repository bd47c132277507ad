//! Three master nodes that talk gRPC on loopback (`GrpcNetwork`, `raft_service`): the
//! leader is killed, the next one runs the master with every acknowledged task, and the
//! killed node, back with its log purged behind the others' snapshots, is sent a snapshot in
//! chunks and follows.

mod common;

use std::time::{Duration, Instant};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_with_an_empty_disk_under_its_old_id_is_refused_and_joins_as_a_new_one() {
    let dirs = temporary_dirs(4);
    let group = GroupName::new("disks").expect("a valid name");
    let (mut running, members) = served_three(&dirs, settings).await;
    let (first, proxy) = leader(&nodes(&running)).await;
    let mut ids = submit(&proxy, &group, 20).await;
    let lost = *running.keys().find(|id| **id != first).expect("a follower");
    // The follower has answered the leader: each knows the other's disk.
    holds_every_task(&running[&lost].node, ids.len(), "the follower").await;
    running.remove(&lost).expect("the follower").kill().await;

    // Its disk is lost: the same id comes back on an empty directory.
    let empty = tempfile::tempdir().expect("a temporary directory");
    let listener = TcpListener::bind(&members[&lost].addr)
        .await
        .expect("the follower's port again");
    running.insert(
        lost,
        serve_node(empty.path(), settings(lost), listener).await,
    );
    // Both sides refuse it, saying what to do.
    let started = Instant::now();
    loop {
        let leader_refuses = running[&first].node.refused_peers().get(&lost).cloned();
        let refused = running[&lost].node.refused_peers();
        if let Some(why) = leader_refuses.filter(|_| !refused.is_empty()) {
            assert!(why.contains("must join under a new id"), "{why}");
            assert!(
                refused
                    .values()
                    .all(|why| why.contains("must join under a new id")),
                "{refused:?}"
            );
            break;
        }
        assert!(
            started.elapsed() < CLUSTER_DEADLINE,
            "the empty disk was not refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The others go on without it, and it gets nothing of theirs.
    ids.extend(submit(&proxy, &group, 20).await);
    assert_eq!(running[&lost].node.machine().events(), 0);

    // It joins as a new node: the old id removed, a new disk added under id 4.
    running
        .remove(&lost)
        .expect("the refused node")
        .kill()
        .await;
    running[&first].node.remove(lost).await.expect("removed");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address = listener.local_addr().expect("an address").to_string();
    running.insert(4, serve_node(dirs[3].path(), settings(4), listener).await);
    running[&first]
        .node
        .add_learner(4, address)
        .await
        .expect("added as a new node");
    holds_every_task(&running[&4].node, ids.len(), "the new node").await;
    for (_, node) in running {
        node.kill().await;
    }
}
