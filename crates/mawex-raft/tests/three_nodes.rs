//! Three nodes on the store and the state machine, joined by an in-process network: they
//! replicate the master's events, lose their leader and go on under a new one; the lost node,
//! back, catches up; and a fourth node that joins after the log was purged gets the state by
//! a snapshot sent over the network.
//! The fail-over of the replicated log itself; the master on top of it comes next.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mawex_api::GroupName;
use mawex_core::MasterState;
use mawex_raft::{Batch, MasterStateMachine, SledLogStore};
use openraft::errors::{ClientWriteError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Config, Raft};

use common::{Node, Router};

const DEADLINE: Duration = Duration::from_secs(30);

async fn start(
    router: &Router,
    id: u64,
    dir: &std::path::Path,
) -> (Node, MasterStateMachine, SledLogStore) {
    let config = Config {
        // Wide enough that syncs on a loaded machine do not look like a dead leader.
        heartbeat_interval: 150,
        election_timeout_min: 1_000,
        election_timeout_max: 2_000,
        // Snapshots and purges often, so that a node that was away needs a snapshot.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Config::default()
    };
    let config = Arc::new(config.validate().expect("a valid config"));
    let store = SledLogStore::open(dir.join("log")).expect("the log opens");
    let machine = MasterStateMachine::open(dir.join("machine")).expect("the machine opens");
    let node = Raft::new(id, config, router.clone(), store.clone(), machine.clone())
        .await
        .expect("the node starts");
    router
        .0
        .lock()
        .expect("the router's lock")
        .insert(id, node.clone());
    (node, machine, store)
}

/// The leader the nodes in `ids` agree on, once they do.
async fn leader(router: &Router, ids: &[u64]) -> u64 {
    let started = Instant::now();
    loop {
        let mut seen = BTreeSet::new();
        for id in ids {
            let node = router.get(*id).expect("the node is up");
            seen.insert(node.current_leader().await);
        }
        if let [Some(leader)] = seen.into_iter().collect::<Vec<_>>()[..] {
            if ids.contains(&leader) {
                return leader;
            }
        }
        assert!(started.elapsed() < DEADLINE, "no leader among {ids:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every machine of `machines` holds `expected`.
async fn converge(machines: &[&MasterStateMachine], expected: &MasterState) {
    let started = Instant::now();
    while !machines
        .iter()
        .all(|m| m.read(|state| state == expected) == Some(true))
    {
        assert!(
            started.elapsed() < DEADLINE,
            "the machines did not converge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Commits `batch` through whichever of `ids` leads. A leader that lost its place before it
/// took the write says so (`ForwardToLeader`), and the write goes to the next one; any other
/// error fails the test (the write might have been committed).
async fn write(router: &Router, ids: &[u64], batch: Batch) {
    let started = Instant::now();
    loop {
        let node = router
            .get(leader(router, ids).await)
            .expect("the leader is up");
        match node.client_write(batch.clone()).await {
            Ok(_) => return,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) => {
                assert!(
                    started.elapsed() < DEADLINE,
                    "no leader takes the write: {to}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the write failed: {e}"),
        }
    }
}

fn batch(group: &GroupName, expected: &mut MasterState) -> Batch {
    let batch = common::accepted(group, 5);
    batch.events.iter().for_each(|e| expected.apply(e));
    batch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_lose_their_leader_and_catch_a_returning_node_up() {
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("a temporary directory"))
        .collect();
    let router = Router::default();
    let (mut machines, mut stores) = (BTreeMap::new(), BTreeMap::new());
    for id in 1..=3 {
        let (_, machine, store) = start(&router, id, dirs[id as usize - 1].path()).await;
        machines.insert(id, machine);
        stores.insert(id, store);
    }
    let members: BTreeMap<u64, BasicNode> = (1..=3)
        .map(|id| (id, BasicNode::new(format!("node-{id}"))))
        .collect();
    router
        .get(1)
        .expect("node 1 is up")
        .initialize(members)
        .await
        .expect("initialises");

    let group = GroupName::new("replicated").expect("a valid name");
    let mut expected = MasterState::new();
    let first = leader(&router, &[1, 2, 3]).await;
    for _ in 0..30 {
        write(&router, &[1, 2, 3], batch(&group, &mut expected)).await;
    }
    converge(&machines.values().collect::<Vec<_>>(), &expected).await;

    // The leader goes down: the other two elect one of themselves and go on.
    let down = router
        .0
        .lock()
        .expect("the router's lock")
        .remove(&first)
        .expect("the leader was up");
    down.shutdown().await.expect("shuts down");
    drop(down);
    machines.remove(&first);
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != first).collect();
    let second = leader(&router, &survivors).await;
    assert_ne!(second, first);
    for _ in 0..30 {
        write(&router, &survivors, batch(&group, &mut expected)).await;
    }
    converge(&machines.values().collect::<Vec<_>>(), &expected).await;

    // Back on its old directories, the first leader catches up with what it missed (the
    // leader keeps the log a follower still needs while it retries).
    drop(stores.remove(&first)); // Its old handle holds the directory's lock.
    let (_, returned, store) = start(&router, first, dirs[first as usize - 1].path()).await;
    stores.insert(first, store);
    machines.insert(first, returned);
    converge(&machines.values().collect::<Vec<_>>(), &expected).await;

    // A fourth node joins as a learner once the leader has purged its log behind a
    // snapshot: the only way to the state is the snapshot, sent over the network.
    let now = leader(&router, &[1, 2, 3]).await;
    let mut leading = stores.get(&now).expect("the leader's store").clone();
    let started = Instant::now();
    while leading
        .get_log_state()
        .await
        .expect("a log state")
        .last_purged_log_id
        .is_none()
    {
        assert!(started.elapsed() < DEADLINE, "the leader never purged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let learner_dir = tempfile::tempdir().expect("a temporary directory");
    let (_, learner, mut learner_store) = start(&router, 4, learner_dir.path()).await;
    let leading_node = router.get(now).expect("the leader is up");
    let joined = leading_node.add_learner(4, BasicNode::new("node-4"), true);
    tokio::time::timeout(DEADLINE, joined)
        .await
        .expect("the learner joins within the deadline")
        .expect("the learner joins and catches up");
    converge(&[&learner], &expected).await;
    let installed = learner_store
        .get_log_state()
        .await
        .expect("a log state")
        .last_purged_log_id;
    assert!(
        installed.is_some(),
        "the learner's log starts after a snapshot it installed"
    );

    for id in 1..=4 {
        let node = router.get(id).expect("the node is up");
        node.shutdown().await.expect("shuts down");
    }
}
