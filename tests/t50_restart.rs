//! Restarts and journal damage: nothing acknowledged is lost, nothing is recorded twice.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use mawex::testing::Event;
use mawex::{
    Bytes, CoreError, HandlerRegistry, Journal, ListQuery, Outcome, PodConfig, SledJournal, TaskId,
    TaskInput, TaskResult, TaskSpec, TaskState,
};

/// Every task of the master, through paginated `list`.
async fn all_tasks(m: &TestMaster) -> Vec<mawex::TaskView> {
    let mut out = Vec::new();
    let mut query = ListQuery::default().limit(1000);
    loop {
        let page = m.proxy().list(query.clone()).await.expect("list");
        out.extend(page.tasks);
        match page.next {
            Some(next) => query = query.after(next),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_master_restarts_with_every_task_and_no_double_result() {
    const TASKS: usize = 10_000;
    const BEFORE_CRASH: usize = TASKS / 2;
    let mut config = fast_config();
    // Keep every event in the journal so the test can audit it.
    config.snapshot_every = 0;
    let m = TestMaster::start_with(config.clone()).await;
    let g = group("restart");

    // The first pod completes half, then every further attempt hangs: those are running
    // when the master dies.
    let started = Arc::new(AtomicUsize::new(0));
    let mut hanging = HandlerRegistry::new();
    let s = started.clone();
    hanging
        .register("work", move |t: TaskInput| {
            let n = s.fetch_add(1, Ordering::SeqCst);
            async move {
                if n >= BEFORE_CRASH {
                    futures::future::pending::<()>().await;
                }
                Ok(t.payload)
            }
        })
        .unwrap();
    let pod = m.pod(
        PodConfig::new(pod_id("p-before"), vec![g.clone()])
            .with_slots(2)
            .with_prefetch(16),
        hanging,
    );
    let specs: Vec<TaskSpec> = (0..TASKS)
        .map(|i| TaskSpec::new(g.clone(), "work", format!("{i}")))
        .collect();
    for chunk in specs.chunks(1000) {
        m.proxy().submit_many(chunk.to_vec()).await.unwrap();
    }
    m.wait_stats("half the tasks done", |s| {
        s.counts.succeeded as usize >= BEFORE_CRASH
    })
    .await;
    let mut before: HashMap<TaskId, TaskResult> = HashMap::new();
    for view in all_tasks(&m).await {
        if let Some(r) = view.result {
            before.insert(view.spec.id, r);
        }
    }
    assert_eq!(before.len(), BEFORE_CRASH);

    let dir = m.halt().await;
    pod.kill();

    let m = TestMaster::restart(dir, config).await;
    let tasks = all_tasks(&m).await;
    assert_eq!(tasks.len(), TASKS, "every accepted task is there");
    for view in &tasks {
        if let Some(r) = before.get(&view.spec.id) {
            assert_eq!(
                view.result.as_ref(),
                Some(r),
                "finished tasks keep their results"
            );
        } else {
            assert!(matches!(
                view.state,
                TaskState::Pending | TaskState::Running
            ));
        }
    }

    // A new pod runs the rest; the attempts that were running at the crash run again once
    // their orphaned leases expire.
    let (handlers, _, _) = instrumented();
    let mut registry = handlers;
    registry
        .register("work", |t: TaskInput| async move { Ok(t.payload) })
        .unwrap();
    let pod = m.pod(
        PodConfig::new(pod_id("p-after"), vec![g.clone()])
            .with_slots(2)
            .with_prefetch(16),
        registry,
    );
    let stats = m
        .wait_stats("all tasks done", |s| s.counts.succeeded as usize == TASKS)
        .await;
    assert!(stats.is_idle());
    for spec in &specs {
        let r = m.proxy().await_result(spec.id).await.unwrap();
        assert_eq!(r.outcome, Outcome::Succeeded(spec.payload.clone()));
    }
    pod.shutdown().await.unwrap();
    let dir = m.halt().await;

    // Audit the journal: exactly one recorded result per task.
    let mut results: HashMap<TaskId, usize> = HashMap::new();
    for event in logged_events(dir.path()).await {
        if let Event::TaskFinished { attempt, .. } = event {
            *results.entry(attempt.task).or_default() += 1;
        }
    }
    assert_eq!(results.len(), TASKS);
    assert!(
        results.values().all(|&n| n == 1),
        "no task result is recorded twice"
    );
}

/// Three submits, three commits, three records (keys 1, 2, 3); then a crash.
async fn three_records() -> (Arc<tempfile::TempDir>, Vec<TaskId>) {
    let mut config = fast_config();
    config.snapshot_every = 0;
    // These tests damage the sled journal's records: always on sled.
    let m = TestMaster::start_on_sled(config).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let ack = m
            .proxy()
            .submit(TaskSpec::new(group("torn"), "echo", format!("{i}")))
            .await
            .expect("submit");
        ids.push(ack.id);
    }
    assert_eq!(m.stats().last_seq, 3);
    (m.halt().await, ids)
}

/// The error of starting a master on the journal in `dir`.
async fn start_error(dir: &tempfile::TempDir) -> CoreError {
    let journal = SledJournal::open(journal_path(dir.path())).unwrap();
    match mawex::Master::builder().start(journal).await {
        Ok(master) => {
            master.shutdown().await.unwrap();
            panic!("the master started on a damaged journal")
        }
        Err(err) => err,
    }
}

/// sled writes a value whole or not at all, so a last record that fails its checksum was
/// damaged after it was written, and may hold acknowledged work: the master refuses to
/// start until an operator repairs the journal, and the repair says what it dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_last_record_stops_start_up_until_a_repair_drops_it() {
    let (dir, ids) = three_records().await;
    {
        let mut journal = SledJournal::open(journal_path(dir.path())).unwrap();
        let mut damaged = journal.raw_record(3).unwrap().expect("record 3");
        damaged.truncate(damaged.len() / 2);
        journal.write_raw_record(3, &damaged).unwrap();
    }
    let err = start_error(&dir).await;
    assert!(
        matches!(err, CoreError::CorruptJournal { seq: 3, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("sequence 3") && message.contains("repair"),
        "{message}"
    );
    // Refusing deleted nothing: the damaged record is still there for a restore or a repair.
    let mut journal = SledJournal::open(journal_path(dir.path())).unwrap();
    assert!(journal.raw_record(3).unwrap().is_some());

    let repaired = journal.repair().unwrap();
    assert_eq!(repaired.dropped.len(), 1);
    assert_eq!(repaired.dropped[0].seq, 3);
    assert!(repaired.dropped[0].reason.contains("checksum"));
    drop(journal);

    let m = TestMaster::restart_on_sled(dir.clone(), fast_config()).await;
    assert_eq!(m.stats().last_seq, 2);
    for id in &ids[..2] {
        assert_eq!(m.proxy().get(*id).await.unwrap().state, TaskState::Pending);
    }
    assert!(matches!(
        m.proxy().get(ids[2]).await,
        Err(mawex::ApiError::NotFound(_))
    ));
    // The journal goes on after the last good record.
    m.proxy()
        .submit(TaskSpec::new(group("torn"), "echo", "again"))
        .await
        .unwrap();
    assert_eq!(m.stats().last_seq, 3);
    m.shutdown().await;

    // Garbage (not even a header) after the last record is refused the same way.
    let (dir, _) = three_records().await;
    SledJournal::open(journal_path(dir.path()))
        .unwrap()
        .write_raw_record(4, b"\x01garbage")
        .unwrap();
    let err = start_error(&dir).await;
    assert!(
        matches!(err, CoreError::CorruptJournal { seq: 4, .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_record_followed_by_good_ones_stops_start_up_naming_it() {
    let (dir, _) = three_records().await;
    {
        let mut journal = SledJournal::open(journal_path(dir.path())).unwrap();
        let mut bad = journal.raw_record(2).unwrap().expect("record 2");
        let last = bad.len() - 1;
        bad[last] ^= 0x5a;
        journal.write_raw_record(2, &bad).unwrap();
    }
    let err = start_error(&dir).await;
    match &err {
        CoreError::CorruptJournal { seq, .. } => assert_eq!(*seq, 2),
        other => panic!("expected CorruptJournal, got {other:?}"),
    }
    assert!(err.to_string().contains("sequence 2"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_bound_replay_and_restart_is_exact() {
    let mut config = fast_config();
    config.snapshot_every = 50;
    let m = TestMaster::start_with(config.clone()).await;
    let g = group("snap");
    let (handlers, _, _) = instrumented();
    let pod = m.pod(
        PodConfig::new(pod_id("p-snap"), vec![g.clone()]).with_slots(2),
        handlers,
    );
    // 2 KiB payloads and outputs: a snapshot of some size.
    let specs: Vec<_> = (0..200)
        .map(|i| TaskSpec::new(g.clone(), "echo", format!("{i:>2048}")))
        .collect();
    m.proxy().submit_many(specs.clone()).await.unwrap();
    m.wait_stats("all done", |s| s.counts.succeeded == 200)
        .await;
    let before = all_tasks(&m).await;
    pod.shutdown().await.unwrap();
    m.snapshots_stored().await;
    let dir = m.halt().await;

    {
        let tail = logged_events(dir.path()).await;
        assert!(
            tail.len() < 100,
            "snapshots truncated the journal ({} events left)",
            tail.len()
        );
    }
    let m = TestMaster::restart(dir, config).await;
    assert_eq!(all_tasks(&m).await, before);
    assert_eq!(m.stats().counts.succeeded, 200);
    m.shutdown().await;
}

/// A snapshot due after every batch, while the core decides batches as the journal writes
/// the one before: one starts at a time (the others are skipped), none stops the master,
/// and a restart is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_due_after_every_batch_under_load_keep_everything() {
    let mut config = fast_config();
    config.snapshot_every = 1;
    let m = TestMaster::start_with(config.clone()).await;
    let g = group("snap-every");
    let (handlers, _, _) = instrumented();
    let pod = m.pod(
        PodConfig::new(pod_id("p-snap-every"), vec![g.clone()]).with_slots(2),
        handlers,
    );
    let submits = (0..50).map(|i| {
        let proxy = m.proxy();
        let specs: Vec<_> = (0..20)
            .map(|j| TaskSpec::new(g.clone(), "echo", format!("{i}.{j}")))
            .collect();
        async move { proxy.submit_many(specs).await }
    });
    for submitted in futures::future::join_all(submits).await {
        submitted.unwrap();
    }
    m.wait_stats("all done", |s| s.counts.succeeded == 1000)
        .await;
    let before = all_tasks(&m).await;
    pod.shutdown().await.unwrap();
    let dir = m.shutdown().await;
    let m = TestMaster::restart(dir, config).await;
    assert_eq!(all_tasks(&m).await, before);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_shutdown_and_restart_keeps_results_and_pending_work() {
    let m = TestMaster::start().await;
    let g = group("clean");
    let done = m
        .proxy()
        .submit(TaskSpec::new(g.clone(), "echo", "kept"))
        .await
        .unwrap();
    let (handlers, _, _) = instrumented();
    let pod = m.pod(
        PodConfig::new(pod_id("p-clean"), vec![g.clone()]),
        handlers.clone(),
    );
    m.proxy().await_result(done.id).await.unwrap();
    pod.shutdown().await.unwrap();
    let waiting = m
        .proxy()
        .submit(TaskSpec::new(g.clone(), "echo", "later"))
        .await
        .unwrap();
    let dir = m.shutdown().await;
    let m = TestMaster::restart(dir, fast_config()).await;
    let proxy = m.proxy();
    assert_eq!(
        proxy.get(done.id).await.unwrap().result.unwrap().outcome,
        Outcome::Succeeded(Bytes::from_static(b"kept"))
    );
    let pod = m.pod(PodConfig::new(pod_id("p-clean"), vec![g]), handlers);
    assert_eq!(
        proxy.await_result(waiting.id).await.unwrap().outcome,
        Outcome::Succeeded(Bytes::from_static(b"later"))
    );
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

/// The last minutes' counts summed: (accepted, started, succeeded, failed, pending now).
async fn recent_history(m: &TestMaster) -> (u64, u64, u64, u64, u64) {
    let minutes = m.proxy().history(5).await.unwrap();
    assert_eq!(minutes.len(), 5);
    assert!(minutes
        .windows(2)
        .all(|w| w[1].minute.0 == w[0].minute.0 + 60_000));
    let sum = |f: fn(&mawex::MinuteCounts) -> u64| minutes.iter().map(f).sum::<u64>();
    (
        sum(|m| m.accepted),
        sum(|m| m.started),
        sum(|m| m.succeeded),
        sum(|m| m.failed),
        minutes.last().unwrap().pending,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minute_history_counts_what_happened_and_survives_a_restart() {
    let m = TestMaster::start_on(Transport::Grpc).await;
    let g = group("history");
    let specs: Vec<TaskSpec> = (0..30)
        .map(|i| {
            let handler = if i % 3 == 0 { "fail" } else { "echo" };
            TaskSpec::new(g.clone(), handler, "").with_retry(mawex::RetryPolicy::never())
        })
        .collect();
    let acks = m.proxy().submit_many(specs).await.unwrap();
    // Two more that no pod serves: they wait.
    m.proxy()
        .submit_many(vec![
            TaskSpec::new(group("history-idle"), "echo", ""),
            TaskSpec::new(group("history-idle"), "echo", ""),
        ])
        .await
        .unwrap();
    let (handlers, _, _) = instrumented();
    let pod = m.pod(PodConfig::new(pod_id("p-history"), vec![g]), handlers);
    for ack in &acks {
        m.proxy().await_result(ack.id).await.unwrap();
    }
    assert_eq!(recent_history(&m).await, (32, 30, 20, 10, 2));
    for bad in [0, mawex::HISTORY_MINUTES + 1] {
        assert!(matches!(
            m.proxy().history(bad).await,
            Err(mawex::ApiError::InvalidArgument(_))
        ));
    }
    pod.shutdown().await.unwrap();
    // Rebuilt from the retained tasks after a restart: the same minutes.
    let dir = m.shutdown().await;
    let m = TestMaster::restart(dir, fast_config()).await;
    assert_eq!(recent_history(&m).await, (32, 30, 20, 10, 2));
    m.shutdown().await;
}

/// A memory journal whose snapshot writer waits at a gate: the snapshot stays in flight
/// until the test opens it.
struct GatedSnapshots {
    inner: mawex::MemoryJournal,
    gate: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

struct GatedWriter {
    inner: Box<dyn mawex::SnapshotWriter>,
    gate: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl mawex::SnapshotWriter for GatedWriter {
    fn write(
        &mut self,
        last_seq: u64,
        state: &mawex::testing::MasterState,
    ) -> Result<(), CoreError> {
        let (open, changed) = &*self.gate;
        let mut open = open.lock().unwrap();
        while !*open {
            open = changed.wait(open).unwrap();
        }
        self.inner.write(last_seq, state)
    }
}

impl Journal for GatedSnapshots {
    fn recover(&mut self) -> Result<mawex::testing::Recovered, CoreError> {
        self.inner.recover()
    }

    fn append(&mut self, first_seq: u64, events: &[Event]) -> Result<(), CoreError> {
        self.inner.append(first_seq, events)
    }

    fn snapshot(
        &mut self,
        last_seq: u64,
        state: &mawex::testing::MasterState,
    ) -> Result<(), CoreError> {
        self.inner.snapshot(last_seq, state)
    }

    fn repair(&mut self) -> Result<mawex::Repaired, CoreError> {
        self.inner.repair()
    }

    fn snapshot_writer(&mut self) -> Result<Option<Box<dyn mawex::SnapshotWriter>>, CoreError> {
        let inner = self
            .inner
            .snapshot_writer()?
            .expect("the memory journal has a writer");
        Ok(Some(Box::new(GatedWriter {
            inner,
            gate: self.gate.clone(),
        })))
    }
}

/// A snapshot is written beside the core thread: while one is stuck, submits are still
/// answered; once it is stored it covers its records, and a restart finds every task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_in_flight_does_not_stop_the_master() {
    let journal = mawex::MemoryJournal::new();
    let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let mut config = fast_config();
    config.snapshot_every = 10;
    let m = TestMaster::start_on_journal(
        Transport::Local,
        config.clone(),
        GatedSnapshots {
            inner: journal.clone(),
            gate: gate.clone(),
        },
    )
    .await;
    let g = group("beside");
    let mut submitted = Vec::new();
    for i in 0..60 {
        let spec = TaskSpec::new(g.clone(), "echo", format!("{i}"));
        submitted.push(m.proxy().submit(spec).await.unwrap().id);
    }
    // Every submit past the tenth was answered while the first snapshot was stuck.
    assert_eq!(m.stats().snapshots, 0);
    assert!(journal.raw_snapshot().is_none());
    let records_before = journal.record_count();

    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    m.wait_stats("the snapshot stored", |s| s.snapshots >= 1)
        .await;
    assert!(journal.raw_snapshot().is_some());
    assert!(
        journal.record_count() < records_before,
        "the snapshot dropped the records it covers"
    );
    m.shutdown().await;

    let m = TestMaster::start_on_journal(Transport::Local, config, journal).await;
    for id in &submitted {
        assert_eq!(m.proxy().get(*id).await.unwrap().state, TaskState::Pending);
    }
    assert_eq!(m.stats().counts.pending, 60);
    m.shutdown().await;
}
