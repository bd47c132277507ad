//! A one-node cluster on the store and the state machine, run by openraft itself: it elects
//! itself, commits batches of the master's events, applies them, and after a restart of the
//! node comes back with every committed event applied once.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mawex_api::GroupName;
use mawex_core::MasterState;
use mawex_raft::{Applied, MasterRaft, MasterStateMachine, SingleNode, SledLogStore};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Config, Raft, ServerState};

const DEADLINE: Option<Duration> = Some(Duration::from_secs(30));

async fn start(
    dir: &std::path::Path,
) -> (
    Raft<MasterRaft, MasterStateMachine>,
    MasterStateMachine,
    SledLogStore,
) {
    let config = Config {
        // Snapshots (and purges) often enough that the restart below crosses one.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20),
        max_in_snapshot_log_to_keep: 0,
        ..Config::default()
    };
    let config = Arc::new(config.validate().expect("a valid config"));
    let store = SledLogStore::open(dir.join("log")).expect("the log opens");
    let machine = MasterStateMachine::open(dir.join("machine")).expect("the machine opens");
    let raft = Raft::new(1, config, SingleNode, store.clone(), machine.clone())
        .await
        .expect("the node starts");
    (raft, machine, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_node_cluster_commits_applies_and_comes_back_after_a_restart() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let group = GroupName::new("replicated").expect("a valid name");
    let mut expected = MasterState::new();
    let last_index;
    {
        let (raft, machine, mut store) = start(dir.path()).await;
        let members = BTreeMap::from([(1, BasicNode::new("127.0.0.1:0"))]);
        raft.initialize(members).await.expect("initialises");
        raft.wait(DEADLINE)
            .state(ServerState::Leader, "the one node leads")
            .await
            .expect("a leader");
        let mut events = 0;
        let mut last = 0;
        for _ in 0..50 {
            let batch = common::accepted(&group, 10);
            batch.events.iter().for_each(|e| expected.apply(e));
            events += 10;
            let written = raft.client_write(batch).await.expect("committed");
            assert_eq!(written.data, Applied { events }, "each batch applied once");
            last = written.log_id.index;
        }
        assert!(
            machine.read(|state| *state == expected) == Some(true),
            "the state of the events"
        );
        last_index = last;
        raft.shutdown().await.expect("shuts down");
        let log = store.get_log_state().await.expect("a log state");
        assert!(
            log.last_purged_log_id.is_some(),
            "the log was purged behind a snapshot, so the restart starts from one"
        );
    }
    // Restarted on the same directories: the snapshot and the log after it give the same
    // state again, and the node goes on committing.
    let (raft, machine, _store) = start(dir.path()).await;
    raft.wait(DEADLINE)
        .state(ServerState::Leader, "the one node leads again")
        .await
        .expect("a leader");
    raft.wait(DEADLINE)
        .applied_index_at_least(Some(last_index), "the committed entries applied again")
        .await
        .expect("applied");
    assert!(
        machine.read(|state| *state == expected) == Some(true),
        "the same state after the restart"
    );
    let batch = common::accepted(&group, 1);
    batch.events.iter().for_each(|e| expected.apply(e));
    let written = raft
        .client_write(batch)
        .await
        .expect("committed after the restart");
    assert_eq!(written.data, Applied { events: 501 });
    assert_eq!(machine.read(|state| *state == expected), Some(true));
    raft.shutdown().await.expect("shuts down");
}
