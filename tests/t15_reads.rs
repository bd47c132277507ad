//! Bulk reads from the read model, and the committed-batch feed it follows.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mawex::testing::{CommittedBatch, MasterState};
use mawex::{
    CoreError, ErrorKind, ListQuery, Master, MasterConfig, MasterProxy, MemoryJournal, PodConfig,
    RetryPolicy, TaskSpec, TaskState,
};

/// Every acknowledged change is in the very next `list` and failed summary: no waiting, no
/// polling, although they are served off the core thread.
async fn bulk_reads_see_every_acknowledged_change(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let g = group("reads");
    let proxy = m.proxy();
    let in_group = || ListQuery::default().group(g.clone()).limit(1000);
    for i in 1..=40 {
        proxy
            .submit(TaskSpec::new(g.clone(), "flaky", format!("{i}")))
            .await
            .unwrap();
        let page = proxy.list(in_group()).await.unwrap();
        assert_eq!(page.tasks.len(), i, "after submit #{i}");
        assert!(page.tasks.iter().all(|v| v.state == TaskState::Pending));
    }
    let first = proxy.list(in_group()).await.unwrap().tasks[0].spec.id;
    proxy.cancel(first).await.unwrap();
    let page = proxy
        .list(in_group().state(TaskState::Cancelled))
        .await
        .unwrap();
    assert_eq!(
        page.tasks.iter().map(|v| v.spec.id).collect::<Vec<_>>(),
        [first]
    );

    // A failure shows up in the summary as soon as its result is heard.
    let broken = TaskSpec::new(group("reads-broken"), "fail", "").with_retry(RetryPolicy::never());
    proxy.submit(broken.clone()).await.unwrap();
    let (handlers, _, _) = instrumented();
    let pod = m.pod(
        PodConfig::new(pod_id("p-reads"), vec![group("reads-broken")]),
        handlers,
    );
    proxy.await_result(broken.id).await.unwrap();
    let summary = proxy.failed_summary().await.unwrap();
    assert_eq!(
        summary
            .iter()
            .map(|c| (c.group.as_str(), c.kind, c.count))
            .collect::<Vec<_>>(),
        [("reads-broken", ErrorKind::Handler, 1)]
    );
    proxy
        .purge_failed(mawex::FailedFilter::all())
        .await
        .unwrap();
    assert!(proxy.failed_summary().await.unwrap().is_empty());
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

on_both_transports!(bulk_reads_see_every_acknowledged_change);

/// What a `Lagged` from the feed means to a test.
#[derive(PartialEq)]
enum Lag {
    Fails,
    Skipped,
}

/// The batches of `feed` after sequence number `from` up to `last`, within 10 s.
async fn read_up_to(
    feed: &mut mawex::testing::CommittedFeed,
    from: u64,
    last: u64,
    lag: Lag,
) -> Vec<Arc<CommittedBatch>> {
    let read = async {
        let mut batches: Vec<Arc<CommittedBatch>> = Vec::new();
        while batches.last().map_or(from, |b| b.last_seq()) < last {
            match feed.next().await {
                Ok(batch) => batches.push(batch),
                Err(CoreError::Lagged { .. }) if lag == Lag::Skipped => {}
                Err(e) => panic!("feed: {e}"),
            }
        }
        batches
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the feed delivers every committed batch")
}

/// Folds `batches` onto `state`, checking that they follow each other without a gap.
fn fold_in_order(mut seq: u64, state: &mut MasterState, batches: &[Arc<CommittedBatch>]) -> u64 {
    for batch in batches {
        if batch.last_seq() <= seq {
            continue;
        }
        assert_eq!(batch.first_seq, seq + 1, "a gap in the feed");
        batch.events.iter().for_each(|e| state.apply(e));
        seq = batch.last_seq();
    }
    seq
}

#[tokio::test]
async fn the_feed_carries_every_committed_batch_in_order() {
    let master = Master::builder().start(MemoryJournal::new()).await.unwrap();
    let mut feed = master.committed();
    let (start, mut state) = master.read_state().await.unwrap();
    let proxy = master.proxy();
    let g = group("feed");
    for i in 0..25 {
        proxy
            .submit(TaskSpec::new(g.clone(), "noop", format!("{i}")))
            .await
            .unwrap();
    }
    let specs: Vec<TaskSpec> = (0..10)
        .map(|i| TaskSpec::new(g.clone(), "noop", format!("batch {i}")))
        .collect();
    proxy.submit_many(specs).await.unwrap();
    let last = master.stats().borrow().last_seq;
    let batches = read_up_to(&mut feed, start, last, Lag::Fails).await;
    let seq = fold_in_order(start, &mut state, &batches);
    assert_eq!(seq, last);
    // The feed's events rebuild exactly the master's state.
    let (now, expected) = master.read_state().await.unwrap();
    assert_eq!(now, last);
    assert_eq!(state, expected);
    master.shutdown().await.unwrap();
    // Once the master has stopped, the feed says so.
    assert!(matches!(feed.next().await, Err(CoreError::Stopped)));
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_told_and_catches_up() {
    let mut config = MasterConfig::default();
    config.feed_capacity = 4;
    let master = Master::builder()
        .config(config)
        .start(MemoryJournal::new())
        .await
        .unwrap();
    let proxy = master.proxy();
    let g = group("lag");
    // The read model starts now, so it too has to keep up with a small feed.
    assert!(proxy
        .list(ListQuery::default())
        .await
        .unwrap()
        .tasks
        .is_empty());
    let mut feed = master.committed();
    for i in 0..12 {
        proxy
            .submit(TaskSpec::new(g.clone(), "noop", format!("{i}")))
            .await
            .unwrap();
    }
    match feed.next().await {
        Err(CoreError::Lagged { missed }) => assert!(missed >= 8, "missed {missed}"),
        other => panic!("expected Lagged, got {other:?}"),
    }
    // Catch up: a copy of the state, then whatever the feed still holds beyond it.
    let (seq, mut state) = master.read_state().await.unwrap();
    proxy
        .submit(TaskSpec::new(g.clone(), "noop", "after"))
        .await
        .unwrap();
    let last = master.stats().borrow().last_seq;
    // Batches the copy already covers may still be dropped; a real gap fails the order
    // check of `fold_in_order`.
    let batches = read_up_to(&mut feed, seq, last, Lag::Skipped).await;
    assert_eq!(fold_in_order(seq, &mut state, &batches), last);
    assert_eq!(state, master.read_state().await.unwrap().1);
    // The read model went through the same and still sees everything.
    let page = proxy
        .list(ListQuery::default().group(g.clone()))
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), 13);
    master.shutdown().await.unwrap();
}
