//! A master on a one-node Raft cluster: it borrows the state machine's state, writes each
//! batch as one entry, offers copies for snapshots, and comes back after a clean stop and
//! after a crash with every acknowledged change.

use std::time::Duration;

use mawex_api::{GroupName, MasterProxy, TaskId, TaskSpec, TaskState};
use mawex_core::{Master, MasterConfig};
use mawex_raft::{MasterStateMachine, ReplicatedMaster};
use openraft::rt::WatchReceiver;

const DEADLINE: Duration = Duration::from_secs(30);

fn config() -> MasterConfig {
    let mut config = MasterConfig::default();
    // Snapshots every few batches, so that the test crosses several.
    config.snapshot_every = 40;
    config
}

async fn start(dir: &std::path::Path) -> ReplicatedMaster {
    ReplicatedMaster::start_single(dir, Master::builder().config(config()))
        .await
        .expect("the replicated master starts")
}

/// Submits `batches` batches of 20 tasks of `group`, one call each; their ids.
async fn submit(node: &ReplicatedMaster, group: &GroupName, batches: usize) -> Vec<TaskId> {
    let proxy = node.master().proxy();
    let mut ids = Vec::new();
    for _ in 0..batches {
        let specs: Vec<TaskSpec> = (0..20)
            .map(|_| TaskSpec::new(group.clone(), "h", &b"payload"[..]))
            .collect();
        ids.extend(specs.iter().map(|s| s.id));
        proxy.submit_many(specs).await.expect("accepted");
    }
    ids
}

async fn states(node: &ReplicatedMaster, ids: &[TaskId]) -> Vec<TaskState> {
    let proxy = node.master().proxy();
    let mut states = Vec::new();
    for id in ids {
        states.push(proxy.get(*id).await.expect("a known task").state);
    }
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_master_keeps_every_acknowledged_change_across_stops_and_crashes() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let group = GroupName::new("replicated").expect("a valid name");

    let node = start(dir.path()).await;
    assert_eq!(
        node.machine().read(|_| ()),
        None,
        "the state is lent to the master"
    );
    let mut ids = submit(&node, &group, 10).await;
    let proxy = node.master().proxy();
    proxy.cancel(ids[0]).await.expect("cancelled");
    // 200 accepted and one cancelled: snapshots were offered every 40 events, and the node
    // builds them from the copies while the master holds the state.
    node.raft()
        .wait(Some(DEADLINE))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index > 1),
            "a snapshot built from an offered copy",
        )
        .await
        .expect("a snapshot");
    let events = node.machine().events();
    assert_eq!(events, 201, "every event counted once by the state machine");
    let before = states(&node, &ids).await;
    assert_eq!(before[0], TaskState::Cancelled);
    node.shutdown().await.expect("a clean stop");
    // The stop stored a snapshot of everything (the machine's directory, as
    // `start_single` lays it out): the next start replays nothing.
    let stored = MasterStateMachine::open(dir.path().join("raft-machine")).expect("it opens");
    assert_eq!(stored.events(), events, "a snapshot of every event");
    drop(stored);

    // Clean restart: the snapshot plus the log after it.
    let node = start(dir.path()).await;
    assert_eq!(states(&node, &ids).await, before, "the same tasks");
    assert_eq!(node.machine().events(), events, "no event applied twice");
    ids.extend(submit(&node, &group, 3).await);
    let before = states(&node, &ids).await;
    node.halt().await.expect("a crash");

    // Crash: everything acknowledged is in the log.
    let node = start(dir.path()).await;
    assert_eq!(
        states(&node, &ids).await,
        before,
        "nothing acknowledged lost"
    );
    assert_eq!(node.machine().events(), events + 60);
    node.shutdown().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_machine_serves_one_master_at_a_time() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let node = start(dir.path()).await;
    let lent_again = node.machine().lend();
    assert!(
        matches!(lent_again, Err(mawex_raft::RaftStoreError::Lent)),
        "a second borrower is refused: {lent_again:?}"
    );
    node.shutdown().await.expect("a clean stop");
}

/// The embedded default costs no more syncs than the sled journal: one per batch the master
/// commits (the flush thread's group commit may cover several), none for applying it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_one_syncs_at_most_once_per_batch() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = MasterConfig::default();
    config.snapshot_every = 0; // No snapshot (and no purge) in the window measured.
    let node = ReplicatedMaster::start_single(dir.path(), Master::builder().config(config))
        .await
        .expect("the replicated master starts");
    let group = GroupName::new("syncs").expect("a valid name");
    let proxy = node.proxy();
    let last_index = || {
        node.raft()
            .metrics()
            .borrow_watched()
            .last_log_index
            .unwrap_or(0)
    };
    let (syncs_before, index_before) = (node.log().syncs(), last_index());
    // One submit at a time: each is a batch of its own.
    const SUBMITS: u64 = 100;
    for _ in 0..SUBMITS {
        proxy
            .submit(TaskSpec::new(group.clone(), "h", &b"payload"[..]))
            .await
            .expect("accepted");
    }
    let syncs = node.log().syncs() - syncs_before;
    let entries = last_index() - index_before;
    assert!(
        entries >= SUBMITS,
        "every submit was its own entry: {entries} entries for {SUBMITS} submits"
    );
    assert!(
        syncs <= entries,
        "{syncs} syncs for {entries} entries: more than one per batch"
    );
    assert!(syncs > 0, "the appends were synced");
    node.shutdown().await.expect("a clean stop");
}

/// A directory that holds a plain sled journal is refused, naming it, rather than opened as
/// an empty node beside the tasks it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_a_plain_journal_is_refused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let master = Master::builder()
        .start(mawex_core::SledJournal::open(dir.path()).expect("a journal"))
        .await
        .expect("a master on sled");
    master.shutdown().await.expect("a clean stop");
    let refused = ReplicatedMaster::start_single(dir.path(), Master::builder())
        .await
        .expect_err("not a node's directory");
    let message = refused.to_string();
    assert!(
        message.contains("holds a master's sled journal") && message.contains("SledJournal"),
        "{message}"
    );
}
