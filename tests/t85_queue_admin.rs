//! The failed queue, deduplication and group controls, through both transports.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::time::Duration;

use common::*;
use mawex::{
    ErrorKind, FailedFilter, GroupSettings, Outcome, PodConfig, RetryPolicy, TaskSpec, TaskState,
};

async fn failed_tasks_are_counted_retried_and_purged(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let (a, b) = (group("dead-a"), group("dead-b"));
    let (handlers, _, _) = instrumented();
    let pod = m.pod(
        PodConfig::new(pod_id("p-dead"), vec![a.clone(), b.clone()]),
        handlers,
    );
    let never = RetryPolicy::never();
    let flaky: Vec<TaskSpec> = (0..3)
        .map(|i| TaskSpec::new(a.clone(), "flaky", format!("{i}")).with_retry(never))
        .collect();
    let broken = TaskSpec::new(b.clone(), "fail", "").with_retry(never);
    let mut all = flaky.clone();
    all.push(broken.clone());
    m.proxy().submit_many(all).await.unwrap();
    m.wait_stats("four failures", |s| s.counts.failed == 4)
        .await;

    let mut summary = m.proxy().failed_summary().await.unwrap();
    summary.sort_by(|x, y| x.group.cmp(&y.group));
    let rows: Vec<_> = summary
        .iter()
        .map(|c| (c.group.as_str(), c.kind, c.count))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("dead-a", ErrorKind::Handler, 3),
            ("dead-b", ErrorKind::Handler, 1)
        ]
    );

    // Retry everything of group a: the flaky tasks succeed on their second attempt.
    let retried = m
        .proxy()
        .retry_failed(FailedFilter::all().group(a.clone()))
        .await
        .unwrap();
    assert_eq!(retried, 3);
    for spec in &flaky {
        let r = m.proxy().await_result(spec.id).await.unwrap();
        assert_eq!(r.outcome, Outcome::Succeeded(spec.payload.clone()));
        assert_eq!(r.attempt.0, 2);
        let view = m.proxy().get(spec.id).await.unwrap();
        assert_eq!(view.failures.len(), 1, "the first failure stays on record");
    }

    // Retry one by id, then purge what is left.
    assert_eq!(
        m.proxy()
            .retry_failed(FailedFilter::ids(vec![flaky[0].id]))
            .await
            .unwrap(),
        0,
        "only failed tasks are retried"
    );
    let purged = m
        .proxy()
        .purge_failed(FailedFilter::all().kind(ErrorKind::Handler))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert!(matches!(
        m.proxy().get(broken.id).await,
        Err(mawex::ApiError::NotFound(_))
    ));
    assert!(m.proxy().failed_summary().await.unwrap().is_empty());
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

async fn a_dedup_key_returns_the_live_task_until_its_window_passes(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let g = group("dedup");
    let window = Duration::from_millis(300);
    let first = TaskSpec::new(g.clone(), "sleep", "50").with_dedup("nightly", window);
    let ack = m.proxy().submit(first.clone()).await.unwrap();
    assert!(ack.created);
    let again = TaskSpec::new(g.clone(), "sleep", "50").with_dedup("nightly", window);
    let dup = m.proxy().submit(again.clone()).await.unwrap();
    assert_eq!(
        (dup.id, dup.created, dup.deduplicated),
        (first.id, false, true),
        "pending: deduplicated"
    );
    assert!(!ack.deduplicated);
    // A plain repeat of the same spec is told apart from a dedup hit.
    let repeat = m.proxy().submit(first.clone()).await.unwrap();
    assert_eq!(
        (repeat.id, repeat.created, repeat.deduplicated),
        (first.id, false, false)
    );

    let (handlers, runs, _) = instrumented();
    let pod = m.pod(PodConfig::new(pod_id("p-dedup"), vec![g.clone()]), handlers);
    m.proxy().await_result(first.id).await.unwrap();
    let dup = m
        .proxy()
        .submit(TaskSpec::new(g.clone(), "sleep", "50").with_dedup("nightly", window))
        .await
        .unwrap();
    assert_eq!(
        dup.id, first.id,
        "finished within the window: still deduplicated"
    );

    // Once the window has passed, the key runs again.
    let fresh = wait_for("the dedup window to pass", || {
        let proxy = m.proxy();
        let g = g.clone();
        async move {
            let spec = TaskSpec::new(g, "sleep", "1").with_dedup("nightly", window);
            let ack = proxy.submit(spec).await.unwrap();
            ack.created.then_some(ack.id)
        }
    })
    .await;
    assert_ne!(fresh, first.id);
    m.proxy().await_result(fresh).await.unwrap();
    assert_eq!(runs.count(&first.id), 1);
    assert_eq!(m.stats().counts.succeeded, 2, "exactly two tasks ever ran");
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

async fn paused_groups_wait_and_concurrency_ceilings_hold(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let (slow, other) = (group("ceiling"), group("elsewhere"));
    let paused = GroupSettings::default().with_paused(true);
    m.proxy()
        .configure_group(slow.clone(), paused)
        .await
        .unwrap();
    assert_eq!(
        m.proxy().group_settings(slow.clone()).await.unwrap(),
        paused
    );

    let (handlers, _, overlap) = instrumented();
    let pods: Vec<_> = (0..5)
        .map(|i| {
            m.pod(
                PodConfig::new(
                    pod_id(&format!("p-ceil-{i}")),
                    vec![slow.clone(), other.clone()],
                ),
                handlers.clone(),
            )
        })
        .collect();
    let specs: Vec<_> = (0..10)
        .map(|_| TaskSpec::new(slow.clone(), "track", "30"))
        .collect();
    m.proxy().submit_many(specs.clone()).await.unwrap();
    // Dispatch runs (another group's task completes) and still leaves the paused group alone.
    let probe = m
        .proxy()
        .submit(TaskSpec::new(other, "echo", "x"))
        .await
        .unwrap();
    m.proxy().await_result(probe.id).await.unwrap();
    assert_eq!(
        m.proxy().get(specs[0].id).await.unwrap().state,
        TaskState::Pending
    );

    let ceiling = GroupSettings::default().with_max_concurrency(Some(2));
    m.proxy()
        .configure_group(slow.clone(), ceiling)
        .await
        .unwrap();
    for spec in &specs {
        m.proxy().await_result(spec.id).await.unwrap();
    }
    assert_eq!(
        overlap.max(),
        2,
        "five free pods, never more than two at once"
    );

    let bad = GroupSettings::default().with_max_concurrency(Some(0));
    assert!(matches!(
        m.proxy().configure_group(slow, bad).await,
        Err(mawex::ApiError::InvalidArgument(_))
    ));
    for pod in pods {
        pod.shutdown().await.unwrap();
    }
    m.shutdown().await;
}

/// Collects the next `n` results of a stream: with a one-slot pod, the order tasks ran in.
async fn run_order(stream: &mut mawex::ResultStream, n: usize) -> Vec<mawex::TaskId> {
    use futures::StreamExt;
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(stream.next().await.unwrap().unwrap().id);
    }
    ids
}

async fn pending_tasks_can_be_moved_reprioritized_and_reordered(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let (g, other) = (group("admin"), group("admin-other"));
    let specs: Vec<_> = (0..5)
        .map(|i| TaskSpec::new(g.clone(), "echo", format!("{i}")))
        .collect();
    m.proxy().submit_many(specs.clone()).await.unwrap();
    let ids: Vec<_> = specs.iter().map(|s| s.id).collect();
    let change = |c: mawex::PendingChange, which: &[usize]| {
        let proxy = m.proxy();
        let ids: Vec<_> = which.iter().map(|&i| ids[i]).collect();
        async move { proxy.update_pending(ids, c).await.unwrap() }
    };
    assert_eq!(
        change(mawex::PendingChange::default().to_front(), &[4]).await,
        1
    );
    assert_eq!(
        change(mawex::PendingChange::default().to_back(), &[0]).await,
        1
    );
    assert_eq!(
        change(mawex::PendingChange::default().priority(5), &[3]).await,
        1
    );
    assert_eq!(
        change(mawex::PendingChange::default().move_to(other.clone()), &[2]).await,
        1
    );
    assert!(matches!(
        m.proxy()
            .update_pending(vec![ids[1]], mawex::PendingChange::default())
            .await,
        Err(mawex::ApiError::InvalidArgument(_))
    ));

    let mut results = m.proxy().results(g.clone(), None).await.unwrap();
    let (handlers, _, _) = instrumented();
    let pod = m.pod(
        PodConfig::new(pod_id("p-admin"), vec![g.clone()]),
        handlers.clone(),
    );
    let order = run_order(&mut results, 4).await;
    assert_eq!(
        order,
        vec![ids[3], ids[4], ids[1], ids[0]],
        "priority, front, FIFO, back"
    );
    let moved = m.proxy().get(ids[2]).await.unwrap();
    assert_eq!(
        (moved.state, moved.spec.group.clone()),
        (TaskState::Pending, other.clone())
    );
    let elsewhere = m.pod(PodConfig::new(pod_id("p-admin-2"), vec![other]), handlers);
    m.proxy().await_result(ids[2]).await.unwrap();
    assert_eq!(
        change(mawex::PendingChange::default().to_front(), &[0]).await,
        0,
        "finished tasks are left alone"
    );
    pod.shutdown().await.unwrap();
    elsewhere.shutdown().await.unwrap();
    m.shutdown().await;
}

async fn queued_tasks_show_an_estimated_wait(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let g = group("eta");
    let (handlers, runs, _) = instrumented();
    let pod = m.pod(PodConfig::new(pod_id("p-eta"), vec![g.clone()]), handlers);
    // One finished task gives the group a mean run time.
    let first = m
        .proxy()
        .submit(TaskSpec::new(g.clone(), "sleep", "30"))
        .await
        .unwrap();
    m.proxy().await_result(first.id).await.unwrap();
    let busy = m
        .proxy()
        .submit(TaskSpec::new(g.clone(), "sleep", "300"))
        .await
        .unwrap();
    wait_for("the long task to start", || {
        let n = runs.count(&busy.id);
        async move { (n == 1).then_some(()) }
    })
    .await;
    let queued: Vec<_> = (0..3)
        .map(|_| TaskSpec::new(g.clone(), "echo", ""))
        .collect();
    m.proxy().submit_many(queued.clone()).await.unwrap();
    let mut etas = Vec::new();
    for spec in &queued {
        etas.push(
            m.proxy()
                .get(spec.id)
                .await
                .unwrap()
                .eta
                .expect("an estimate"),
        );
    }
    assert_eq!(etas[0], Duration::ZERO, "next in line");
    assert!(etas[0] < etas[1] && etas[1] < etas[2], "{etas:?}");
    let page = m
        .proxy()
        .list(
            mawex::ListQuery::default()
                .group(g)
                .state(TaskState::Pending),
        )
        .await
        .unwrap();
    assert!(page.tasks.iter().all(|v| v.eta.is_some()));
    assert!(
        m.proxy().get(busy.id).await.unwrap().eta.is_none(),
        "running: no estimate"
    );
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

async fn connected_pods_are_listed_with_their_leases_and_labels(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let (a, b) = (group("pods-a"), group("pods-b"));
    let (handlers, _, _) = instrumented();
    let mut first = PodConfig::new(pod_id("p-list-1"), vec![a.clone(), b.clone()]).with_slots(2);
    first.labels.insert("zone".into(), "east".into());
    first.address = Some("10.0.0.1:9000".into());
    let first = m.pod(first, handlers.clone());
    let second = m.pod(
        PodConfig::new(pod_id("p-list-2"), vec![b.clone()]).with_prefetch(0),
        handlers,
    );
    m.wait_stats("two pods", |s| s.pods.len() == 2).await;
    let before = mawex::Timestamp::now();
    // One long task, on whichever pod takes it.
    let busy = m
        .proxy()
        .submit(TaskSpec::new(b.clone(), "sleep", "30000"))
        .await
        .unwrap();
    m.wait_stats("the task leased", |s| s.pods.iter().any(|p| p.leased == 1))
        .await;

    let pods = m.proxy().list_pods().await.unwrap();
    let ids: Vec<&str> = pods.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["p-list-1", "p-list-2"], "by id");
    let one = &pods[0];
    assert_eq!(one.groups, [a.clone(), b.clone()]);
    assert_eq!(one.slots, 2);
    assert_eq!(one.labels.get("zone").map(String::as_str), Some("east"));
    assert_eq!(one.address.as_deref(), Some("10.0.0.1:9000"));
    assert!(!one.draining);
    for pod in &pods {
        assert!(pod.connected_at <= before, "{pod:?}");
        assert!(pod.last_heartbeat >= pod.connected_at, "{pod:?}");
    }
    let holding: Vec<(u32, u32)> = pods.iter().map(|p| (p.held, p.running)).collect();
    assert!(
        holding == [(1, 1), (0, 0)] || holding == [(0, 0), (1, 1)],
        "one pod holds and runs the task: {holding:?}"
    );

    // Drained: shown so, and given no new work (the engine's draining rule); an unknown pod
    // is not found.
    assert!(m.proxy().drain_pod(pod_id("p-list-1")).await.unwrap());
    assert!(!m.proxy().drain_pod(pod_id("p-list-9")).await.unwrap());
    let pods = m.proxy().list_pods().await.unwrap();
    let draining: Vec<bool> = pods.iter().map(|p| p.draining).collect();
    assert_eq!(draining, [true, false]);

    m.proxy().cancel(busy.id).await.unwrap();
    second.shutdown().await.unwrap();
    m.wait_stats("one pod", |s| s.pods.len() == 1).await;
    let pods = m.proxy().list_pods().await.unwrap();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].id.as_str(), "p-list-1");
    first.shutdown().await.unwrap();
    let proxy = m.proxy();
    m.shutdown().await;
    assert!(
        proxy.list_pods().await.is_err(),
        "a stopped master lists no pods"
    );
}

async fn groups_are_listed_with_their_tasks_by_state_and_settings(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let (busy, configured) = (group("groups-busy"), group("groups-configured"));
    m.proxy()
        .configure_group(
            configured.clone(),
            GroupSettings::default()
                .with_paused(true)
                .with_max_concurrency(Some(3)),
        )
        .await
        .unwrap();
    let never = RetryPolicy::never();
    let specs = vec![
        TaskSpec::new(busy.clone(), "echo", "a"),
        TaskSpec::new(busy.clone(), "echo", "b"),
        TaskSpec::new(busy.clone(), "fail", "").with_retry(never),
        TaskSpec::new(busy.clone(), "sleep", "30000"),
    ];
    let sleeping = specs[3].id;
    m.proxy().submit_many(specs).await.unwrap();
    let cancelled = m
        .proxy()
        .submit(
            TaskSpec::new(busy.clone(), "echo", "never")
                .with_run_at(mawex::Timestamp::after(Duration::from_secs(3600))),
        )
        .await
        .unwrap();
    m.proxy().cancel(cancelled.id).await.unwrap();
    m.proxy()
        .submit(
            TaskSpec::new(busy.clone(), "echo", "later")
                .with_run_at(mawex::Timestamp::after(Duration::from_secs(3600))),
        )
        .await
        .unwrap();
    let (handlers, _, _) = instrumented();
    let pod = m.pod(
        PodConfig::new(pod_id("p-groups"), vec![busy.clone()]).with_slots(2),
        handlers,
    );
    m.wait_stats("three finished", |s| {
        s.counts.succeeded == 2 && s.counts.failed == 1 && s.counts.running == 1
    })
    .await;

    let groups = m.proxy().list_groups().await.unwrap();
    let names: Vec<&str> = groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(names, ["groups-busy", "groups-configured"], "by name");
    let counts = |g: &mawex::GroupView| (g.pending, g.running, g.succeeded, g.failed, g.cancelled);
    assert_eq!(counts(&groups[0]), (1, 1, 2, 1, 1));
    assert!(groups[0].mean_run_time.is_some());
    assert!(!groups[0].settings.paused);
    assert_eq!(counts(&groups[1]), (0, 0, 0, 0, 0));
    assert!(groups[1].settings.paused);
    assert_eq!(groups[1].settings.max_concurrency, Some(3));

    m.proxy().cancel(sleeping).await.unwrap();
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

on_both_transports!(
    groups_are_listed_with_their_tasks_by_state_and_settings,
    connected_pods_are_listed_with_their_leases_and_labels,
    failed_tasks_are_counted_retried_and_purged,
    a_dedup_key_returns_the_live_task_until_its_window_passes,
    paused_groups_wait_and_concurrency_ceilings_hold,
    pending_tasks_can_be_moved_reprioritized_and_reordered,
    queued_tasks_show_an_estimated_wait,
);
