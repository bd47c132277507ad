//! Three master nodes on an in-process network: the leader runs the master; when it dies,
//! another node takes over with every acknowledged task and goes on; the dead node, back,
//! follows and catches up.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{leader, submit, test_node_config, Router};
use mawex_api::{GroupName, MasterProxy, TaskState};
use mawex_core::MasterConfig;
use mawex_raft::MasterNode;
use openraft::BasicNode;

const DEADLINE: Duration = Duration::from_secs(30);

async fn start(router: &Router, id: u64, dir: &std::path::Path) -> MasterNode {
    let mut master = MasterConfig::default();
    master.snapshot_every = 50;
    let node = MasterNode::start(dir, test_node_config(id), router.clone(), master)
        .await
        .expect("the node starts");
    router.add(id, node.raft().clone());
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_moves_to_the_next_leader_with_every_acknowledged_task() {
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("a temporary directory"))
        .collect();
    let group = GroupName::new("replicated").expect("a valid name");
    let router = Router::default();
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        nodes.insert(id, start(&router, id, dirs[id as usize - 1].path()).await);
    }
    let members: BTreeMap<u64, BasicNode> = (1..=3).map(|id| (id, BasicNode::new(""))).collect();
    nodes[&1].initialize(members).await.expect("initialised");

    let (first, proxy) = leader(&nodes).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.extend(submit(&proxy, &group, 20).await);
    }
    proxy.cancel(ids[0]).await.expect("cancelled");
    let others: Vec<u64> = nodes.keys().copied().filter(|id| *id != first).collect();
    assert!(
        others.iter().all(|id| nodes[id].proxy().is_none()),
        "one master at a time"
    );

    // The leader dies: unreachable at once, then stopped.
    router.remove(first);
    let killed = Instant::now();
    let dead = nodes.remove(&first).expect("the leader's node");
    dead.shutdown().await.expect("the node stops");
    let (second, proxy) = leader(&nodes).await;
    let took = killed.elapsed();
    assert_ne!(second, first);
    println!(
        "a new master took over {} ms after the kill",
        took.as_millis()
    );
    for (i, id) in ids.iter().enumerate() {
        let view = proxy.get(*id).await.expect("an acknowledged task is there");
        let expected = if i == 0 {
            TaskState::Cancelled
        } else {
            TaskState::Pending
        };
        assert_eq!(view.state, expected, "task {i}");
    }
    ids.extend(submit(&proxy, &group, 20).await);
    assert_eq!(
        proxy.get(ids[130]).await.expect("new work").state,
        TaskState::Pending
    );

    // Back, the old leader follows and catches up: its machine holds every task.
    let back = start(&router, first, dirs[first as usize - 1].path()).await;
    let started = Instant::now();
    while back.machine().read(|state| state.len()) != Some(ids.len()) {
        assert!(
            started.elapsed() < DEADLINE,
            "the returning node did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back.proxy().is_none(), "the returning node follows");
    nodes.insert(first, back);
    for (_, node) in nodes {
        node.shutdown().await.expect("the node stops");
    }
}
