//! Retries with backoff, permanent failures, retry-after hints, delayed tasks, and a restart
//! between a failure and its retry. Time is a manual clock: nothing here waits for backoff.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mawex::clock::ManualClock;
use mawex::testing::Event;
use mawex::{
    ErrorKind, HandlerError, HandlerRegistry, InProcess, Journal, Master, MasterConfig,
    MasterProxy, MemoryJournal, Outcome, Pod, PodConfig, RetryPolicy, TaskId, TaskInput, TaskSpec,
    TaskState, TaskView, Timestamp,
};

const START: Timestamp = Timestamp(1_800_000_000_000);

fn config() -> MasterConfig {
    let mut c = MasterConfig::default();
    // Pods heartbeat in real time while the test moves the clock by minutes: long leases.
    c.lease_timeout = Duration::from_secs(24 * 3600);
    c.heartbeat_interval = Duration::from_secs(3600);
    c
}

fn handlers() -> HandlerRegistry {
    let mut r = HandlerRegistry::new();
    r.register("fail", |_: TaskInput| async {
        Err(HandlerError::new("flaky"))
    })
    .unwrap()
    .register("bad-input", |_: TaskInput| async {
        Err(HandlerError::permanent("cannot parse"))
    })
    .unwrap()
    .register("throttled", |_: TaskInput| async {
        Err(HandlerError::retry_after(
            "slow down",
            Duration::from_secs(5),
        ))
    })
    .unwrap()
    .register("ok", |t: TaskInput| async move { Ok(t.payload) })
    .unwrap();
    r
}

struct Setup {
    master: Master,
    clock: ManualClock,
    journal: MemoryJournal,
    pod: Pod,
}

async fn setup(journal: MemoryJournal, clock: ManualClock) -> Setup {
    let master = Master::builder()
        .config(config())
        .clock(Arc::new(clock.clone()))
        .start(journal.clone())
        .await
        .unwrap();
    let pod = Pod::start(
        PodConfig::new(pod_id("p-retry"), vec![group("retry")]),
        Arc::new(InProcess::new(handlers())),
        Arc::new(master.pod_connector()),
    )
    .unwrap();
    Setup {
        master,
        clock,
        journal,
        pod,
    }
}

/// Waits until the task satisfies `pred`, ticking the master so timers run.
async fn wait_task(
    s: &Setup,
    id: TaskId,
    what: &str,
    pred: impl Fn(&TaskView) -> bool,
) -> TaskView {
    let proxy = s.master.proxy();
    wait_for(what, || {
        s.master.tick();
        let proxy = proxy.clone();
        let pred = &pred;
        async move { proxy.get(id).await.ok().filter(|v| pred(v)) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_failing_every_attempt_is_retried_with_backoff_then_fails() {
    let s = setup(MemoryJournal::new(), ManualClock::new(START)).await;
    let policy = RetryPolicy::new(3)
        .with_base_delay(Duration::from_secs(10))
        .with_max_delay(Duration::from_secs(60));
    let spec = TaskSpec::new(group("retry"), "fail", "").with_retry(policy);
    s.master.proxy().submit(spec.clone()).await.unwrap();

    for failures in 1..=2u32 {
        let view = wait_task(&s, spec.id, "a scheduled retry", |v| {
            v.failures.len() == failures as usize && v.state == TaskState::Pending
        })
        .await;
        let failed_at = view.failures.last().unwrap().at;
        let retry_at = view.not_before.expect("a retry time");
        let gap = retry_at.saturating_since(failed_at);
        assert!(
            gap < policy.delay_cap(failures),
            "retry {failures}: gap {gap:?} within the backoff bound {:?}",
            policy.delay_cap(failures)
        );
        // Not before its time, however often the master ticks.
        s.clock
            .advance(gap.saturating_sub(Duration::from_millis(1)));
        s.master.tick();
        // Two round trips: the second answer comes from a batch after the tick's dispatch.
        s.master.proxy().get(spec.id).await.unwrap();
        assert_eq!(
            s.master.proxy().get(spec.id).await.unwrap().attempt.0,
            failures
        );
        s.clock.advance(Duration::from_millis(1));
    }
    let view = wait_task(&s, spec.id, "the final failure", |v| {
        v.state == TaskState::Failed
    })
    .await;
    assert_eq!(view.failures.len(), 3, "every attempt's error is kept");
    assert!(view
        .failures
        .iter()
        .all(|f| f.error.kind == ErrorKind::Handler));
    assert_eq!(
        view.failures
            .iter()
            .map(|f| f.attempt.0)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(matches!(view.result.unwrap().outcome, Outcome::Failed(_)));
    s.pod.shutdown().await.unwrap();
    s.master.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_fail_at_once_and_retry_after_hints_set_the_delay() {
    let s = setup(MemoryJournal::new(), ManualClock::new(START)).await;
    let bad = TaskSpec::new(group("retry"), "bad-input", "").with_retry(RetryPolicy::new(5));
    let throttled = TaskSpec::new(group("retry"), "throttled", "").with_retry(RetryPolicy::new(5));
    s.master
        .proxy()
        .submit_many(vec![bad.clone(), throttled.clone()])
        .await
        .unwrap();

    let view = wait_task(&s, bad.id, "the permanent failure", |v| {
        v.state == TaskState::Failed
    })
    .await;
    assert_eq!(view.failures.len(), 1);
    assert_eq!(view.attempt.0, 1);

    let view = wait_task(&s, throttled.id, "a hinted retry", |v| {
        v.not_before.is_some()
    })
    .await;
    let failed_at = view.failures[0].at;
    assert_eq!(
        view.not_before,
        Some(failed_at.saturating_add(Duration::from_secs(5)))
    );
    s.pod.shutdown().await.unwrap();
    s.master.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_a_failure_and_its_retry_neither_loses_nor_doubles_it() {
    let clock = ManualClock::new(START);
    let journal = MemoryJournal::new();
    let s = setup(journal.clone(), clock.clone()).await;
    let spec = TaskSpec::new(group("retry"), "fail", "").with_retry(
        RetryPolicy::new(2)
            .with_base_delay(Duration::from_secs(30))
            .with_max_delay(Duration::from_secs(30)),
    );
    s.master.proxy().submit(spec.clone()).await.unwrap();
    let before = wait_task(&s, spec.id, "the first failure", |v| v.failures.len() == 1).await;
    s.pod.kill();
    s.master.halt().await.unwrap();

    let s = setup(journal, clock).await;
    let after = s.master.proxy().get(spec.id).await.unwrap();
    assert_eq!(after.state, TaskState::Pending);
    assert_eq!(after.failures, before.failures, "the failure is remembered");
    assert_eq!(
        after.not_before, before.not_before,
        "and so is the retry time"
    );
    s.clock.advance(Duration::from_secs(30));
    let view = wait_task(&s, spec.id, "the retry", |v| v.state == TaskState::Failed).await;
    assert_eq!(view.failures.len(), 2);
    s.pod.shutdown().await.unwrap();
    s.master.halt().await.unwrap();

    let mut journal = s.journal;
    let retries = journal
        .recover()
        .unwrap()
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::TaskRetryScheduled { attempt, .. } if attempt.task == spec.id))
        .count();
    assert_eq!(retries, 1, "one scheduled retry, recorded once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_task_runs_at_its_time_not_before() {
    let s = setup(MemoryJournal::new(), ManualClock::new(START)).await;
    let spec = TaskSpec::new(group("retry"), "ok", "later")
        .with_run_at(START.saturating_add(Duration::from_secs(60)));
    let now = TaskSpec::new(group("retry"), "ok", "now");
    s.master
        .proxy()
        .submit_many(vec![spec.clone(), now.clone()])
        .await
        .unwrap();
    s.master.proxy().await_result(now.id).await.unwrap();
    s.master.tick();
    let view = s.master.proxy().get(spec.id).await.unwrap();
    assert_eq!(
        view.state,
        TaskState::Pending,
        "the pod is idle, the task waits for its time"
    );
    assert_eq!(view.not_before, spec.run_at);

    s.clock.advance(Duration::from_secs(60));
    let view = wait_task(&s, spec.id, "the delayed run", |v| {
        v.state == TaskState::Succeeded
    })
    .await;
    assert!(view.started_at.unwrap() >= spec.run_at.unwrap());
    s.pod.shutdown().await.unwrap();
    s.master.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_over_the_pods_limit_fails_the_task_for_good() {
    let master = Master::builder()
        .config(config())
        .start(MemoryJournal::new())
        .await
        .unwrap();
    let mut pod_config = PodConfig::new(pod_id("p-small"), vec![group("retry")]);
    pod_config.max_output_bytes = 10;
    let pod = Pod::start(
        pod_config,
        Arc::new(InProcess::new(handlers())),
        Arc::new(master.pod_connector()),
    )
    .unwrap();
    let big = TaskSpec::new(group("retry"), "ok", "twenty bytes of text");
    let small = TaskSpec::new(group("retry"), "ok", "tiny");
    master
        .proxy()
        .submit_many(vec![big.clone(), small.clone()])
        .await
        .unwrap();
    let r = master.proxy().await_result(big.id).await.unwrap();
    match r.outcome {
        Outcome::Failed(e) => {
            assert_eq!(e.kind, ErrorKind::Sandbox);
            assert!(e.message.contains("exceeds"), "{e}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(r.attempt.0, 1, "not retried: it would fail the same way");
    let r = master.proxy().await_result(small.id).await.unwrap();
    assert_eq!(r.outcome, Outcome::Succeeded("tiny".into()));
    pod.shutdown().await.unwrap();
    master.shutdown().await.unwrap();
}

async fn fired(master: &Master, name: &str) -> u64 {
    master
        .proxy()
        .list_schedules()
        .await
        .unwrap()
        .iter()
        .find(|s| s.spec.name.as_str() == name)
        .map_or(0, |s| s.fired)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_schedule_fires_once_per_tick_across_a_restart_and_not_while_paused() {
    let clock = ManualClock::new(START);
    let journal = MemoryJournal::new();
    let s = setup(journal.clone(), clock.clone()).await;
    let template = TaskSpec::new(group("retry"), "ok", "tick");
    let every_minute =
        mawex::ScheduleSpec::new(schedule("every-minute"), "*/1 * * * *", template.clone());
    let paused = mawex::ScheduleSpec::new(schedule("paused"), "*/1 * * * *", template.clone());
    s.master
        .proxy()
        .create_schedule(every_minute.clone())
        .await
        .unwrap();
    s.master
        .proxy()
        .create_schedule(every_minute.clone())
        .await
        .unwrap();
    s.master
        .proxy()
        .create_schedule(paused.clone())
        .await
        .unwrap();
    s.master
        .proxy()
        .pause_schedule(schedule("paused"), true)
        .await
        .unwrap();
    let other = mawex::ScheduleSpec::new(schedule("every-minute"), "*/5 * * * *", template.clone());
    assert!(matches!(
        s.master.proxy().create_schedule(other).await,
        Err(mawex::ApiError::Conflict(_))
    ));
    let bad = mawex::ScheduleSpec::new(schedule("bad"), "every minute", template.clone());
    assert!(matches!(
        s.master.proxy().create_schedule(bad).await,
        Err(mawex::ApiError::InvalidArgument(_))
    ));

    let mut s = s;
    for minute in 1..=10u64 {
        if minute == 6 {
            // A crash and a restart in the middle: no tick is lost or repeated.
            s.pod.kill();
            s.master.halt().await.unwrap();
            s = setup(journal.clone(), clock.clone()).await;
            assert_eq!(fired(&s.master, "every-minute").await, 5);
        }
        s.clock.advance(Duration::from_secs(60));
        wait_for("the tick to fire", || {
            s.master.tick();
            let master = &s.master;
            async move { (fired(master, "every-minute").await == minute).then_some(()) }
        })
        .await;
        // Ticking again within the same minute fires nothing more.
        s.master.tick();
        assert_eq!(fired(&s.master, "every-minute").await, minute);
    }
    assert_eq!(
        fired(&s.master, "paused").await,
        0,
        "a paused schedule never fires"
    );

    // Every firing submitted one task, with its own id, and they all ran.
    let page = s
        .master
        .proxy()
        .list(mawex::ListQuery::default().group(group("retry")).limit(100))
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), 10);
    for view in &page.tasks {
        s.master.proxy().await_result(view.spec.id).await.unwrap();
    }
    // The schedule's view links to what it submitted: its last tick's task is the newest one.
    let views = s.master.proxy().list_schedules().await.unwrap();
    let view = views
        .iter()
        .find(|v| v.spec.name.as_str() == "every-minute")
        .expect("the schedule is listed");
    let newest = page.tasks.iter().map(|t| t.spec.id).max();
    assert_eq!(view.last_task(), newest);

    // Resuming does not owe the ticks that passed while paused.
    s.master
        .proxy()
        .pause_schedule(schedule("paused"), false)
        .await
        .unwrap();
    s.master.tick();
    s.master.proxy().list_schedules().await.unwrap();
    assert_eq!(fired(&s.master, "paused").await, 0);
    s.master
        .proxy()
        .delete_schedule(schedule("paused"))
        .await
        .unwrap();
    s.master
        .proxy()
        .delete_schedule(schedule("paused"))
        .await
        .unwrap();
    assert_eq!(s.master.proxy().list_schedules().await.unwrap().len(), 1);
    s.pod.shutdown().await.unwrap();
    s.master.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_default_retry_policy_applies_to_tasks_without_their_own() {
    let s = setup(MemoryJournal::new(), ManualClock::new(START)).await;
    let two_quick = RetryPolicy::new(2)
        .with_base_delay(Duration::ZERO)
        .with_max_delay(Duration::ZERO);
    let settings = mawex::GroupSettings::default().with_retry(Some(two_quick));
    s.master
        .proxy()
        .configure_group(group("retry"), settings)
        .await
        .unwrap();
    let inherits = TaskSpec::new(group("retry"), "fail", "");
    let own = TaskSpec::new(group("retry"), "fail", "").with_retry(RetryPolicy::never());
    s.master
        .proxy()
        .submit_many(vec![inherits.clone(), own.clone()])
        .await
        .unwrap();
    let view = wait_task(&s, inherits.id, "the group's policy to run out", |v| {
        v.state == TaskState::Failed
    })
    .await;
    assert_eq!(view.failures.len(), 2, "the group's two attempts");
    let view = wait_task(&s, own.id, "the task's own policy", |v| {
        v.state == TaskState::Failed
    })
    .await;
    assert_eq!(view.failures.len(), 1, "its own policy wins");
    s.pod.shutdown().await.unwrap();
    s.master.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_settings_can_come_from_the_configuration() {
    let journal = MemoryJournal::new();
    let mut paused = config();
    paused.groups.insert(
        group("retry"),
        mawex::GroupSettings::default().with_paused(true),
    );
    let s = Master::builder()
        .config(paused)
        .start(journal.clone())
        .await
        .unwrap();
    assert!(
        s.proxy()
            .group_settings(group("retry"))
            .await
            .unwrap()
            .paused
    );
    s.shutdown().await.unwrap();

    // A restart with other configured settings changes them; without, they stay as journaled.
    let master = Master::builder()
        .config(config())
        .start(journal.clone())
        .await
        .unwrap();
    assert!(
        master
            .proxy()
            .group_settings(group("retry"))
            .await
            .unwrap()
            .paused
    );
    master.shutdown().await.unwrap();
    let mut resumed = config();
    resumed
        .groups
        .insert(group("retry"), mawex::GroupSettings::default());
    let master = Master::builder()
        .config(resumed)
        .start(journal)
        .await
        .unwrap();
    assert!(
        !master
            .proxy()
            .group_settings(group("retry"))
            .await
            .unwrap()
            .paused
    );
    master.shutdown().await.unwrap();

    let mut bad = config();
    bad.groups.insert(
        group("retry"),
        mawex::GroupSettings::default().with_max_concurrency(Some(0)),
    );
    assert!(matches!(
        Master::builder()
            .config(bad)
            .start(MemoryJournal::new())
            .await,
        Err(mawex::CoreError::Config(_))
    ));
}

fn schedule(name: &str) -> mawex::ScheduleName {
    mawex::ScheduleName::new(name).unwrap()
}
