//! Three master nodes on an in-process network: the leader runs the master; when it dies,
//! another node takes over with every acknowledged task and goes on; the dead node, back,
//! follows and catches up. A leader cut off from the others stops accepting, and what it
//! took in while cut off leaves no trace once the partition heals.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::{holds_every_task, leader, submit, temporary_dirs, test_node_config, Router};
use mawex_api::{ApiError, GroupName, MasterProxy, TaskSpec, TaskState};
use mawex_core::MasterConfig;
use mawex_raft::MasterNode;
use openraft::BasicNode;

async fn start(router: &Router, id: u64, dir: &std::path::Path) -> MasterNode {
    let mut master = MasterConfig::default();
    master.snapshot_every = 50;
    let node = MasterNode::start(dir, test_node_config(id), router.for_node(id), master)
        .await
        .expect("the node starts");
    router.add(id, node.raft().clone());
    node
}

/// Nodes 1 – 3 of a new cluster, their data in the first three of `dirs`.
async fn three_nodes(router: &Router, dirs: &[tempfile::TempDir]) -> BTreeMap<u64, MasterNode> {
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        nodes.insert(id, start(router, id, dirs[id as usize - 1].path()).await);
    }
    let members: BTreeMap<u64, BasicNode> = (1..=3).map(|id| (id, BasicNode::new(""))).collect();
    nodes[&1].initialize(members).await.expect("initialised");
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_moves_to_the_next_leader_with_every_acknowledged_task() {
    let dirs = temporary_dirs(3);
    let group = GroupName::new("replicated").expect("a valid name");
    let router = Router::default();
    let mut nodes = three_nodes(&router, &dirs).await;

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
    holds_every_task(&back, ids.len(), "the returning node").await;
    assert!(back.proxy().is_none(), "the returning node follows");
    nodes.insert(first, back);
    for (_, node) in nodes {
        node.shutdown().await.expect("the node stops");
    }
}

/// An answer of a node that must not take the call: it does not lead, or cannot reach enough
/// of the others to be sure it does.
fn refused<T: std::fmt::Debug>(answer: Result<T, ApiError>) {
    assert!(
        matches!(
            answer,
            Err(ApiError::NotLeader { .. } | ApiError::Unavailable(_))
        ),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_followers_stops_and_the_majority_goes_on() {
    let dirs = temporary_dirs(3);
    let group = GroupName::new("partitioned").expect("a valid name");
    let router = Router::default();
    let nodes = three_nodes(&router, &dirs).await;
    let (first, proxy) = leader(&nodes).await;
    let mut ids = submit(&proxy, &group, 20).await;

    router.isolate(first);
    let cut_off = &nodes[&first];
    // A client on the minority side: a submit is not accepted, a read is not answered.
    let stray = TaskSpec::new(group.clone(), "h", &b"stray"[..]);
    refused(cut_off.client().submit(stray.clone()).await);
    refused(cut_off.client().get(ids[0]).await);

    // The majority elects another leader, with every acknowledged task, and goes on.
    let majority: BTreeMap<u64, &MasterNode> = nodes
        .iter()
        .filter(|(id, _)| **id != first)
        .map(|(id, node)| (*id, node))
        .collect();
    let (second, proxy) = leader(&majority).await;
    for id in &ids {
        assert_eq!(
            proxy.get(*id).await.expect("an acknowledged task").state,
            TaskState::Pending
        );
    }
    ids.extend(submit(&proxy, &group, 20).await);
    // Meanwhile the node cut off still accepts nothing: no second master (no split brain).
    refused(cut_off.client().submit(stray.clone()).await);

    // Healed, the old leader follows, holds every acknowledged task, and nothing of what
    // it took in while cut off.
    router.heal();
    holds_every_task(cut_off, ids.len(), "the old leader").await;
    assert!(cut_off.proxy().is_none(), "the old leader follows");
    assert_eq!(
        cut_off
            .machine()
            .read(|state| state.view(&stray.id).is_some()),
        Some(false)
    );
    assert!(matches!(
        proxy.get(stray.id).await,
        Err(ApiError::NotFound(_))
    ));
    let (now, _) = leader(&nodes).await;
    assert_eq!(now, second, "the lead stays with the majority's leader");
    for (_, node) in nodes {
        node.shutdown().await.expect("the node stops");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joins_is_promoted_and_a_voter_leaves_while_the_master_runs() {
    let dirs = temporary_dirs(4);
    let group = GroupName::new("members").expect("a valid name");
    let router = Router::default();
    let mut nodes = three_nodes(&router, &dirs).await;
    let (first, proxy) = leader(&nodes).await;
    // Ten batches, snapshots among them, before the learner joins.
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.extend(submit(&proxy, &group, 20).await);
    }
    let follower = *nodes.keys().find(|id| **id != first).expect("a follower");

    // Asked of a follower, a change names the leader.
    assert!(matches!(
        nodes[&follower].add_learner(4, "").await,
        Err(mawex_raft::RaftStoreError::NotLeader { leader: Some(l) }) if l == first
    ));
    // Bad requests are refused, naming the node.
    let refused = nodes[&first]
        .promote([7].into())
        .await
        .expect_err("not a learner");
    assert!(
        refused.to_string().contains("node 7 is not a learner"),
        "{refused}"
    );
    let refused = nodes[&first].remove(9).await.expect_err("not a member");
    assert!(
        refused.to_string().contains("node 9 is not a member"),
        "{refused}"
    );
    let refused = nodes[&first]
        .add_learner(follower, "")
        .await
        .expect_err("a voter");
    assert!(refused.to_string().contains("is a voter"), "{refused}");

    // Node 4 joins as a learner, catches up, and is promoted.
    nodes.insert(4, start(&router, 4, dirs[3].path()).await);
    nodes[&first].add_learner(4, "").await.expect("added");
    holds_every_task(&nodes[&4], ids.len(), "the learner").await;
    assert!(nodes[&first].members().learners.contains_key(&4));
    nodes[&first].promote([4].into()).await.expect("promoted");
    ids.extend(submit(&proxy, &group, 20).await);

    // A follower leaves; the other three go on, and agree on who is in.
    nodes[&first].remove(follower).await.expect("removed");
    let members = nodes[&first].members();
    assert_eq!(
        members.voters.keys().copied().collect::<Vec<_>>(),
        nodes
            .keys()
            .copied()
            .filter(|id| *id != follower)
            .collect::<Vec<_>>()
    );
    assert!(members.learners.is_empty());
    ids.extend(submit(&proxy, &group, 20).await);
    holds_every_task(&nodes[&4], ids.len(), "the new voter").await;
    for (_, node) in nodes {
        node.shutdown().await.expect("the node stops");
    }
}
