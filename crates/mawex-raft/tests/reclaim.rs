//! A state machine takes its state back after the master it was lent to stops, rebuilt from
//! its snapshot and the log after it (never from the master's own state, which may hold a
//! batch that was not committed), and can lend it again to the next master.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mawex_api::{GroupName, MasterProxy, TaskSpec};
use mawex_core::{Master, MasterConfig};
use mawex_raft::{MasterRaft, MasterStateMachine, RaftJournal, SingleNode, SledLogStore};
use openraft::{BasicNode, Config, Raft, ServerState};

const DEADLINE: Option<Duration> = Some(Duration::from_secs(30));

async fn master_on(
    raft: &Raft<MasterRaft, MasterStateMachine>,
    machine: &MasterStateMachine,
) -> Master {
    let mut config = MasterConfig::default();
    config.snapshot_every = 30;
    let journal = RaftJournal::new(
        raft.clone(),
        machine.clone(),
        tokio::runtime::Handle::current(),
    )
    .expect("the node leads");
    Master::builder()
        .config(config)
        .start(journal)
        .await
        .expect("the master starts")
}

async fn submit(master: &Master, group: &GroupName, tasks: usize) {
    let specs: Vec<TaskSpec> = (0..tasks)
        .map(|_| TaskSpec::new(group.clone(), "h", &b"payload"[..]))
        .collect();
    master.proxy().submit_many(specs).await.expect("accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_takes_back_the_committed_state_and_lends_it_again() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let group = GroupName::new("reclaimed").expect("a valid name");
    let config = Config {
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        ..Config::default()
    };
    let store = SledLogStore::open(dir.path().join("log")).expect("the log opens");
    let machine = MasterStateMachine::open(dir.path().join("machine")).expect("the machine");
    let raft = Raft::new(
        1,
        Arc::new(config.validate().expect("a valid config")),
        SingleNode,
        store.clone(),
        machine.clone(),
    )
    .await
    .expect("the node starts");
    raft.initialize(BTreeMap::from([(1, BasicNode::new(""))]))
        .await
        .expect("initialises");
    raft.wait(DEADLINE)
        .metrics(
            |m| m.state == ServerState::Leader && m.vote.is_committed(),
            "the node leads",
        )
        .await
        .expect("a leader");
    raft.write_blank().await.expect("a blank entry applied");

    let master = master_on(&raft, &machine).await;
    for _ in 0..5 {
        submit(&master, &group, 20).await;
    }
    // Offers every 30 events: a snapshot built from one, and the log purged behind it, so
    // that taking the state back needs both the snapshot and the entries after it.
    raft.wait(DEADLINE)
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index > 1) && m.purged.is_some(),
            "a snapshot and a purge",
        )
        .await
        .expect("a snapshot");
    submit(&master, &group, 7).await;
    let (seq, committed) = master.read_state().await.expect("a copy");
    assert_eq!(seq, 107);
    assert_eq!(machine.read(|_| ()), None, "lent while the master runs");
    master.halt().await.expect("stops as a crash would");

    let reclaiming = machine.clone();
    let log = store.clone();
    tokio::task::spawn_blocking(move || reclaiming.reclaim(&log))
        .await
        .expect("the reclaim ran")
        .expect("the state is back");
    assert_eq!(
        machine.read(|state| *state == committed),
        Some(true),
        "the committed state, rebuilt from the snapshot and the log"
    );
    assert_eq!(machine.events(), 107);
    machine
        .reclaim(&store)
        .expect("taking back what is held is a no-op");

    // Lent again, to a master that goes on where the last one stopped.
    let master = master_on(&raft, &machine).await;
    submit(&master, &group, 3).await;
    assert_eq!(master.stats().borrow().last_seq, 110);
    assert_eq!(master.read_state().await.expect("a copy").1.len(), 110);
    master.shutdown().await.expect("a clean stop");
    raft.shutdown().await.expect("the node stops");
}
