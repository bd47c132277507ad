//! The log store and the state machine with the master's own events: what is appended
//! survives a reopen, damage is refused by name, and a snapshot carries the whole state.

mod common;

use mawex_api::GroupName;
use mawex_core::MasterState;
use mawex_raft::{MasterRaft, MasterStateMachine, SledLogStore};
use openraft::alias::EntryOf;
use openraft::entry::RaftEntry;
use openraft::storage::{
    IOFlushed, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine,
};
use openraft::testing::log_id;
use openraft::type_config::TypeConfigExt;

fn entry(index: u64, tasks: usize) -> EntryOf<MasterRaft> {
    let group = GroupName::new("replicated").expect("a valid name");
    EntryOf::<MasterRaft>::new_normal(
        log_id::<MasterRaft>(1, 0, index),
        common::accepted(&group, tasks),
    )
}

#[tokio::test]
async fn appended_entries_and_the_vote_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let written: Vec<_> = (1..=3).map(|i| entry(i, 10)).collect();
    {
        let mut store = SledLogStore::open(dir.path()).expect("opens");
        store
            .append(written.clone(), IOFlushed::noop())
            .await
            .expect("appends");
        let vote = openraft::impls::Vote::new(2, 0);
        store.save_vote(&vote).await.expect("saves the vote");
    }
    let mut store = SledLogStore::open(dir.path()).expect("reopens");
    let read = store.try_get_log_entries(0..).await.expect("reads");
    assert_eq!(read, written);
    let vote = store.read_vote().await.expect("reads the vote");
    assert_eq!(vote, Some(openraft::impls::Vote::new(2, 0)));
    let state = store.get_log_state().await.expect("a log state");
    assert_eq!(state.last_log_id, Some(written[2].log_id()));
}

#[tokio::test]
async fn a_damaged_entry_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    {
        let mut store = SledLogStore::open(dir.path()).expect("opens");
        store
            .append([entry(1, 1), entry(2, 1)], IOFlushed::noop())
            .await
            .expect("appends");
    }
    {
        // Flip a byte of entry 2 behind the store's back.
        let db = sled::open(dir.path()).expect("sled opens");
        let log = db.open_tree("raft-log").expect("the log tree");
        let mut bytes = log
            .get(2u64.to_be_bytes())
            .expect("reads")
            .expect("present")
            .to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        log.insert(2u64.to_be_bytes(), bytes).expect("writes");
        db.flush().expect("flushes");
    }
    let mut store = SledLogStore::open(dir.path()).expect("reopens");
    let error = store
        .try_get_log_entries(0..)
        .await
        .expect_err("the damage is seen");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    assert!(error.to_string().contains("log entry 2"), "{error}");
}

#[tokio::test]
async fn a_snapshot_carries_the_state_to_another_machine_and_across_a_restart() {
    let dirs = (
        tempfile::tempdir().expect("a temporary directory"),
        tempfile::tempdir().expect("a temporary directory"),
    );
    let mut leader = MasterStateMachine::open(dirs.0.path()).expect("opens");
    let entries = [entry(1, 5), entry(2, 7)];
    let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    leader.apply(stream).await.expect("applies");
    assert_eq!(
        leader.read(MasterState::len),
        Some(12),
        "every event applied"
    );

    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("a snapshot");
    let at = Some(log_id::<MasterRaft>(1, 0, 2));
    assert_eq!(snapshot.meta.last_log_id, at);
    let mut follower = MasterStateMachine::open(dirs.1.path()).expect("opens");
    follower
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .expect("installs");
    assert_eq!(
        leader.read(|l| follower.read(|f| l == f)),
        Some(Some(true)),
        "the same state"
    );
    let (applied, _) = follower.applied_state().await.expect("an applied state");
    assert_eq!(applied, at);

    // Both start again from their snapshots: the log before them may be gone.
    for (dir, before) in [(&dirs.0, &leader), (&dirs.1, &follower)] {
        let mut again = MasterStateMachine::open(dir.path()).expect("reopens");
        let (applied, _) = again.applied_state().await.expect("an applied state");
        assert_eq!(applied, at);
        assert_eq!(
            before.read(|b| again.read(|a| a == b)),
            Some(Some(true)),
            "the state it had"
        );
        let current = again.get_current_snapshot().await.expect("reads");
        assert_eq!(current.map(|c| c.meta.last_log_id), Some(at));
    }
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused_at_open() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut machine = MasterStateMachine::open(dir.path()).expect("opens");
    let stream = futures::stream::iter([Ok((entry(1, 3), None))]);
    machine.apply(stream).await.expect("applies");
    machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("a snapshot");
    let path = dir.path().join("raft-snapshot");
    let mut bytes = std::fs::read(&path).expect("the file");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).expect("writes");
    let error = MasterStateMachine::open(dir.path()).expect_err("refused");
    assert!(
        std::io::Error::from(error).kind() == std::io::ErrorKind::InvalidData,
        "a damaged snapshot reads as invalid data"
    );
}

/// An append returns once its entries are written; openraft hears it is flushed only after a
/// sync, and one sync covers every append that waited for it.
#[tokio::test]
async fn appends_wait_for_one_sync_together() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = SledLogStore::open(dir.path()).expect("opens");
    let mut flushed = Vec::new();
    {
        let held = store.clone();
        let _held = held.hold_syncs();
        for index in 1..=100 {
            let (tx, rx) = MasterRaft::oneshot();
            store
                .append([entry(index, 1)], IOFlushed::signal(tx))
                .await
                .expect("appends without waiting for the disk");
            flushed.push(rx);
        }
        let readable = store.try_get_log_entries(1..=100).await.expect("reads");
        assert_eq!(readable.len(), 100, "written entries are readable at once");
        for rx in &mut flushed {
            assert!(rx.try_recv().is_err(), "reported flushed before any sync");
        }
    }
    for rx in flushed {
        let result = tokio::time::timeout(std::time::Duration::from_secs(30), rx)
            .await
            .expect("flushed within the deadline")
            .expect("the callback was called");
        assert!(result.is_ok(), "{result:?}");
    }
    assert!(
        store.syncs_for_appends() <= 2,
        "{} syncs for 100 appends",
        store.syncs_for_appends()
    );
}
