//! The basics through the public API: submit, schedule, run, record; groups, pods, slots.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::sync::Arc;

use common::*;
use futures::StreamExt;
use mawex::pod::{MasterMessage, PodHello, PodMessage};
use mawex::{ErrorKind, ListQuery, Outcome, PodConfig, RetryPolicy, TaskSpec, TaskState};

async fn single_task_is_accepted_scheduled_and_recorded(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let proxy = m.proxy();
    let g = group("single");
    let ack = proxy
        .submit(TaskSpec::new(g.clone(), "echo", "hi"))
        .await
        .unwrap();
    assert!(ack.created);
    assert_eq!(proxy.get(ack.id).await.unwrap().state, TaskState::Pending);

    let (handlers, runs, _) = instrumented();
    let pod = m.pod(PodConfig::new(pod_id("p-single"), vec![g]), handlers);
    let result = proxy.await_result(ack.id).await.unwrap();
    assert_eq!(result.outcome, Outcome::Succeeded("hi".into()));
    assert_eq!(result.attempt.0, 1);

    let view = proxy.get(ack.id).await.unwrap();
    assert_eq!(view.state, TaskState::Succeeded);
    assert_eq!(view.result.as_ref(), Some(&result));
    assert!(view.started_at.is_some());
    let stats = m
        .wait_stats("no lease held", |s| s.pods.iter().all(|p| p.leased == 0))
        .await;
    assert!(stats.is_idle(), "nothing pending or running: {stats:?}");
    assert_eq!(stats.counts.succeeded, 1);
    assert_eq!(runs.count(&ack.id), 1);
    // Heartbeats carry the pod's resource use to the master.
    m.wait_stats("the pod's memory use", |s| {
        s.pods.iter().any(|p| p.usage.memory_bytes > 0)
    })
    .await;
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

async fn errors_and_panics_are_recorded_as_failures(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let g = group("mixed");
    let (handlers, _, _) = instrumented();
    let pod = m.pod(
        PodConfig::new(pod_id("p-mixed"), vec![g.clone()]).with_slots(3),
        handlers,
    );
    let mut specs: Vec<TaskSpec> = (0..4)
        .map(|i| TaskSpec::new(g.clone(), "echo", format!("ok {i}")))
        .collect();
    // No retries: the failures are recorded at once.
    specs.push(TaskSpec::new(g.clone(), "fail", "").with_retry(RetryPolicy::never()));
    specs.push(TaskSpec::new(g.clone(), "panic", "").with_retry(RetryPolicy::never()));
    let acks = m.proxy().submit_many(specs).await.unwrap();

    let mut kinds = Vec::new();
    let mut successes = 0;
    for ack in &acks {
        match m.proxy().await_result(ack.id).await.unwrap().outcome {
            Outcome::Succeeded(_) => successes += 1,
            Outcome::Failed(e) => kinds.push(e.kind),
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    kinds.sort_by_key(|k| format!("{k:?}"));
    assert_eq!(successes, 4);
    assert_eq!(kinds, vec![ErrorKind::Handler, ErrorKind::Panicked]);
    let stats = m
        .wait_stats("all workers idle", |s| s.pods.iter().all(|p| p.leased == 0))
        .await;
    assert_eq!((stats.counts.succeeded, stats.counts.failed), (4, 2));
    assert!(stats.is_idle());
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

async fn a_pod_joining_mid_stream_receives_work(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let g = group("scale-out");
    let (handlers, _, _) = instrumented();
    let first = m.pod(PodConfig::new(pod_id("p-out-1"), vec![g.clone()]), handlers);
    let specs: Vec<_> = (0..60)
        .map(|_| TaskSpec::new(g.clone(), "sleep", "10"))
        .collect();
    let acks = m.proxy().submit_many(specs).await.unwrap();
    m.wait_stats("a few results", |s| s.counts.succeeded >= 3)
        .await;

    let (handlers, _, _) = instrumented();
    let second = m.pod(PodConfig::new(pod_id("p-out-2"), vec![g.clone()]), handlers);
    for ack in &acks {
        m.proxy().await_result(ack.id).await.unwrap();
    }
    assert!(second.executed() > 0, "the new pod received work");
    assert_eq!(first.executed() + second.executed(), 60);
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    m.shutdown().await;
}

async fn pods_leaving_mid_stream_hand_their_work_to_the_rest(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let g = group("scale-down");
    let (handlers, runs, _) = instrumented();
    let pods: Vec<_> = (0..3)
        .map(|i| {
            m.pod(
                PodConfig::new(pod_id(&format!("p-down-{i}")), vec![g.clone()]).with_prefetch(2),
                handlers.clone(),
            )
        })
        .collect();
    let specs: Vec<_> = (0..90)
        .map(|_| TaskSpec::new(g.clone(), "sleep", "5"))
        .collect();
    let acks = m.proxy().submit_many(specs).await.unwrap();
    m.wait_stats("some results", |s| s.counts.succeeded >= 10)
        .await;

    let mut pods = pods.into_iter();
    let (a, b, last) = (
        pods.next().unwrap(),
        pods.next().unwrap(),
        pods.next().unwrap(),
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    let before = last.executed();
    for ack in &acks {
        let r = m.proxy().await_result(ack.id).await.unwrap();
        assert!(matches!(r.outcome, Outcome::Succeeded(_)));
    }
    assert!(
        last.executed() > before,
        "the remaining pod finished the rest"
    );
    assert_eq!(m.stats().pods.len(), 1, "the others left");
    // Leaving pods handed queued work back; nothing ran twice.
    assert_eq!(runs.total(), 90);
    last.shutdown().await.unwrap();
    m.shutdown().await;
}

async fn one_slot_pod_never_overlaps_across_groups_and_two_pods_run_in_parallel(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let groups = [group("seq-a"), group("seq-b"), group("seq-c")];
    let (handlers, _, overlap) = instrumented();
    let pod = m.pod(PodConfig::new(pod_id("p-seq"), groups.to_vec()), handlers);
    let specs: Vec<_> = (0..30)
        .map(|i| TaskSpec::new(groups[i % 3].clone(), "track", "3"))
        .collect();
    for ack in m.proxy().submit_many(specs).await.unwrap() {
        m.proxy().await_result(ack.id).await.unwrap();
    }
    assert_eq!(overlap.max(), 1, "tasks of a one-slot pod never overlap");
    pod.shutdown().await.unwrap();

    // Two one-slot pods of one group: two tasks at once.
    let g = group("parallel");
    let (handlers, _, overlap) = instrumented();
    let p1 = m.pod(
        PodConfig::new(pod_id("p-par-1"), vec![g.clone()]),
        handlers.clone(),
    );
    let p2 = m.pod(PodConfig::new(pod_id("p-par-2"), vec![g.clone()]), handlers);
    m.wait_stats("both pods registered", |s| s.pods.len() == 2)
        .await;
    let specs: Vec<_> = (0..8)
        .map(|_| TaskSpec::new(g.clone(), "track", "40"))
        .collect();
    for ack in m.proxy().submit_many(specs).await.unwrap() {
        m.proxy().await_result(ack.id).await.unwrap();
    }
    assert_eq!(
        overlap.max(),
        2,
        "two pods, one slot each: exactly two at a time"
    );
    assert!(
        p1.executed() > 0 && p2.executed() > 0,
        "work is balanced over both pods"
    );
    p1.shutdown().await.unwrap();
    p2.shutdown().await.unwrap();
    m.shutdown().await;
}

async fn tasks_wait_for_a_worker_of_their_group(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let (late, busy) = (group("late"), group("busy"));
    let late_acks = m
        .proxy()
        .submit_many(
            (0..5)
                .map(|_| TaskSpec::new(late.clone(), "echo", "x"))
                .collect(),
        )
        .await
        .unwrap();
    // A pod of another group runs its own task: dispatch ran, and still left these alone.
    let (handlers, _, _) = instrumented();
    let other = m.pod(
        PodConfig::new(pod_id("p-busy"), vec![busy.clone()]),
        handlers.clone(),
    );
    let ack = m
        .proxy()
        .submit(TaskSpec::new(busy, "echo", "y"))
        .await
        .unwrap();
    m.proxy().await_result(ack.id).await.unwrap();
    for a in &late_acks {
        assert_eq!(m.proxy().get(a.id).await.unwrap().state, TaskState::Pending);
    }
    assert_eq!(m.stats().counts.pending, 5);

    let worker = m.pod(PodConfig::new(pod_id("p-late"), vec![late]), handlers);
    for a in &late_acks {
        assert!(matches!(
            m.proxy().await_result(a.id).await.unwrap().outcome,
            Outcome::Succeeded(_)
        ));
    }
    other.shutdown().await.unwrap();
    worker.shutdown().await.unwrap();
    m.shutdown().await;
}

async fn a_duplicate_submit_runs_once(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let g = group("dup");
    let spec = TaskSpec::new(g.clone(), "sleep", "20");
    let first = m.proxy().submit(spec.clone()).await.unwrap();
    let (handlers, runs, _) = instrumented();
    let pod = m.pod(PodConfig::new(pod_id("p-dup"), vec![g]), handlers);
    let second = m.proxy().submit(spec.clone()).await.unwrap();
    assert!(first.created && !second.created);
    assert_eq!(first.id, second.id);
    m.proxy().await_result(spec.id).await.unwrap();
    let third = m.proxy().submit(spec.clone()).await.unwrap();
    assert!(!third.created, "a finished task is not run again");
    // Same id, different task: refused.
    let other = spec.clone().with_priority(7);
    assert!(matches!(
        m.proxy().submit(other).await,
        Err(mawex::ApiError::Conflict(_))
    ));
    m.wait_stats("idle", |s| s.is_idle()).await;
    assert_eq!(runs.count(&spec.id), 1);
    assert_eq!(m.stats().counts.succeeded, 1);
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

/// Plays a pod by hand through the connector to make an old attempt answer late.
async fn a_late_result_of_an_old_attempt_is_ignored(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let g = group("fenced");
    let ack = m
        .proxy()
        .submit(TaskSpec::new(g.clone(), "echo", "x"))
        .await
        .unwrap();
    let connector = m.connector();

    let mut first = connector
        .connect(PodHello::new(pod_id("p-hand"), vec![g.clone()]))
        .await
        .unwrap();
    let Some(MasterMessage::Assign {
        assignments: list, ..
    }) = first.inbox.recv().await
    else {
        panic!("expected an assignment");
    };
    let old = list[0].attempt;
    assert_eq!((old.task, old.attempt.0), (ack.id, 1));

    // The pod comes back without that attempt: it runs again as attempt 2.
    let mut second = connector
        .connect(PodHello::new(pod_id("p-hand"), vec![g.clone()]))
        .await
        .unwrap();
    let Some(MasterMessage::Assign {
        assignments: list, ..
    }) = second.inbox.recv().await
    else {
        panic!("expected a second assignment");
    };
    let new = list[0].attempt;
    assert_eq!((new.task, new.attempt.0), (ack.id, 2));

    // Attempt 1 answers late, on both sessions: dropped.
    for outbox in [&first.outbox, &second.outbox] {
        let _ = outbox.send(PodMessage::Finished {
            attempt: old,
            outcome: Ok("stale".into()),
        });
    }
    second
        .outbox
        .send(PodMessage::Finished {
            attempt: new,
            outcome: Ok("fresh".into()),
        })
        .unwrap();
    let result = m.proxy().await_result(ack.id).await.unwrap();
    assert_eq!(result.attempt.0, 2);
    assert_eq!(result.outcome, Outcome::Succeeded("fresh".into()));
    drop(first);
    drop(second);
    m.shutdown().await;
}

async fn a_silent_pod_loses_its_lease_and_the_task_runs_elsewhere(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let g = group("silent");
    let ack = m
        .proxy()
        .submit(TaskSpec::new(g.clone(), "echo", "x"))
        .await
        .unwrap();
    // Connected but never heartbeating nor answering.
    let mut ghost = m
        .connector()
        .connect(PodHello::new(pod_id("p-ghost"), vec![g.clone()]))
        .await
        .unwrap();
    assert!(matches!(
        ghost.inbox.recv().await,
        Some(MasterMessage::Assign { .. })
    ));
    let (handlers, runs, _) = instrumented();
    let pod = m.pod(PodConfig::new(pod_id("p-alive"), vec![g]), handlers);
    let result = m.proxy().await_result(ack.id).await.unwrap();
    assert_eq!(result.attempt.0, 2, "ran again after the lease expired");
    assert_eq!(runs.count(&ack.id), 1);
    // The master closed the silent pod's session.
    wait_for("the ghost's session to close", || {
        let closed = ghost.inbox.is_closed();
        async move { closed.then_some(()) }
    })
    .await;
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

async fn cancel_stops_pending_and_running_tasks(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let g = group("cancel");
    let (handlers, runs, _) = instrumented();
    let pod = m.pod(
        PodConfig::new(pod_id("p-cancel"), vec![g.clone()]),
        handlers,
    );
    let running = m
        .proxy()
        .submit(TaskSpec::new(g.clone(), "sleep", "60000"))
        .await
        .unwrap();
    let pending = m
        .proxy()
        .submit(TaskSpec::new(g.clone(), "echo", "x"))
        .await
        .unwrap();
    wait_for("the long task to start", || {
        let n = runs.count(&running.id);
        async move { (n == 1).then_some(()) }
    })
    .await;
    assert_eq!(
        m.proxy().get(pending.id).await.unwrap().state,
        TaskState::Pending
    );
    assert_eq!(
        m.proxy().cancel(pending.id).await.unwrap(),
        mawex::CancelAck::Cancelled
    );
    assert_eq!(
        m.proxy().cancel(running.id).await.unwrap(),
        mawex::CancelAck::Cancelled
    );
    for id in [running.id, pending.id] {
        assert_eq!(
            m.proxy().await_result(id).await.unwrap().outcome,
            Outcome::Cancelled
        );
    }
    // The running attempt was stopped, so the pod is free again and idle.
    wait_for("the pod to stop the cancelled attempt", || {
        let n = pod.executed();
        async move { (n == 1).then_some(()) }
    })
    .await;
    assert_eq!(
        runs.count(&pending.id),
        0,
        "a cancelled pending task never runs"
    );
    assert!(matches!(
        m.proxy().cancel(mawex::TaskId::new()).await,
        Err(mawex::ApiError::NotFound(_))
    ));
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

async fn result_streams_resume_from_a_cursor(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let g = group("stream");
    let (handlers, _, _) = instrumented();
    let pod = m.pod(
        PodConfig::new(pod_id("p-stream"), vec![g.clone()]),
        handlers,
    );
    let mut live = m.proxy().results(g.clone(), None).await.unwrap();
    let specs: Vec<_> = (0..5)
        .map(|i| TaskSpec::new(g.clone(), "echo", format!("{i}")))
        .collect();
    m.proxy().submit_many(specs.clone()).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(live.next().await.unwrap().unwrap());
    }
    let ids: Vec<_> = seen.iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        specs.iter().map(|s| s.id).collect::<Vec<_>>(),
        "one slot runs them in order"
    );

    let mut resumed = m
        .proxy()
        .results(g.clone(), Some(mawex::ResultCursor::after(&seen[2])))
        .await
        .unwrap();
    assert_eq!(resumed.next().await.unwrap().unwrap().id, seen[3].id);
    assert_eq!(resumed.next().await.unwrap().unwrap().id, seen[4].id);
    pod.shutdown().await.unwrap();
    m.shutdown().await;
    // The stream says the master is gone instead of ending silently.
    assert!(matches!(
        resumed.next().await,
        Some(Err(mawex::ApiError::Unavailable(_)))
    ));
}

async fn list_filters_and_pages(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let (a, b) = (group("list-a"), group("list-b"));
    let specs: Vec<_> = (0..25)
        .map(|i| TaskSpec::new(if i % 5 == 0 { b.clone() } else { a.clone() }, "echo", ""))
        .collect();
    m.proxy().submit_many(specs.clone()).await.unwrap();
    let mut collected = Vec::new();
    let mut query = ListQuery::default().group(a.clone()).limit(7);
    loop {
        let page = m.proxy().list(query.clone()).await.unwrap();
        assert!(page.tasks.len() <= 7);
        collected.extend(page.tasks.iter().map(|t| t.spec.id));
        match page.next {
            Some(next) => query = query.after(next),
            None => break,
        }
    }
    let expected: Vec<_> = specs
        .iter()
        .filter(|s| s.group == a)
        .map(|s| s.id)
        .collect();
    assert_eq!(
        collected, expected,
        "all of group a, in submission order, once"
    );
    let pending = m
        .proxy()
        .list(ListQuery::default().state(TaskState::Pending).limit(1000))
        .await
        .unwrap();
    assert_eq!(pending.tasks.len(), 25);
    assert!(pending.next.is_none());
    assert!(matches!(
        m.proxy().list(ListQuery::default().limit(5000)).await,
        Err(mawex::ApiError::InvalidArgument(_))
    ));
    m.shutdown().await;
}

/// Every page of `query`, followed to the end.
async fn list_all(m: &TestMaster, mut query: ListQuery) -> Vec<mawex::TaskId> {
    let mut ids = Vec::new();
    loop {
        let page = m.proxy().list(query.clone()).await.unwrap();
        ids.extend(page.tasks.iter().map(|t| t.spec.id));
        match page.next {
            Some(next) => query = query.after(next),
            None => return ids,
        }
    }
}

async fn list_searches_by_handler_keys_payload_error_time_and_order(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let (g, other) = (group("search"), group("search-other"));
    let (handlers, _, _) = instrumented();
    let pod = m.pod(
        PodConfig::new(pod_id("p-search"), vec![g.clone()]).with_slots(4),
        handlers,
    );
    let mut specs = Vec::new();
    for i in 0..12 {
        let handler = if i % 3 == 0 { "fail" } else { "echo" };
        let mut spec = TaskSpec::new(
            g.clone(),
            handler,
            format!("order {i} for customer-{}", i % 2),
        )
        .with_retry(RetryPolicy::never());
        if i % 4 == 1 {
            spec = spec.with_fairness_key("tenant-a");
        }
        if i == 5 {
            spec = spec.with_dedup("nightly-5", std::time::Duration::from_secs(60));
        }
        specs.push(spec);
    }
    // Waiting in a group no pod serves: never run, so never failed.
    specs.push(TaskSpec::new(
        other.clone(),
        "fail",
        "order 12 for customer-0",
    ));
    let ids: Vec<_> = specs.iter().map(|s| s.id).collect();
    m.proxy().submit_many(specs).await.unwrap();
    for id in &ids[..12] {
        m.proxy().await_result(*id).await.unwrap();
    }
    let pick = |wanted: &[usize]| wanted.iter().map(|&i| ids[i]).collect::<Vec<_>>();
    let by_three = [0, 3, 6, 9];

    let q = ListQuery::default().limit(2);
    assert_eq!(
        list_all(&m, q.clone().handler("fail")).await,
        pick(&[0, 3, 6, 9, 12])
    );
    assert_eq!(
        list_all(&m, q.clone().handler("fail").group(g.clone())).await,
        pick(&by_three)
    );
    assert_eq!(
        list_all(&m, q.clone().fairness_key("tenant-a")).await,
        pick(&[1, 5, 9])
    );
    assert_eq!(
        list_all(&m, q.clone().dedup_key("nightly-5")).await,
        pick(&[5])
    );
    assert_eq!(
        list_all(&m, q.clone().error_text("always fails")).await,
        pick(&by_three),
        "the task that never ran has no error"
    );
    assert_eq!(
        list_all(&m, q.clone().error_text("Always")).await,
        [],
        "case-sensitive"
    );
    assert_eq!(
        list_all(&m, q.clone().error_kind(ErrorKind::Handler)).await,
        pick(&by_three)
    );
    assert_eq!(
        list_all(&m, q.clone().error_kind(ErrorKind::Panicked)).await,
        []
    );
    assert_eq!(
        list_all(&m, q.clone().payload_contains(&b"customer-1"[..])).await,
        pick(&[1, 3, 5, 7, 9, 11])
    );
    assert_eq!(
        list_all(
            &m,
            q.clone()
                .payload_contains(&b"customer-1"[..])
                .state(TaskState::Failed)
        )
        .await,
        pick(&[3, 9])
    );
    // Newest first: the reverse, across pages, with and without an index.
    let mut newest = ids.clone();
    newest.reverse();
    assert_eq!(list_all(&m, q.clone().newest_first()).await, newest);
    assert_eq!(
        list_all(&m, q.clone().newest_first().state(TaskState::Failed)).await,
        pick(&[9, 6, 3, 0])
    );
    // A time range: everything was accepted before now, nothing after it.
    let now = mawex::Timestamp::now();
    let later = now.saturating_add(std::time::Duration::from_secs(3600));
    assert_eq!(
        list_all(&m, q.clone().submitted_between(None, Some(later))).await,
        ids
    );
    assert_eq!(
        list_all(&m, q.clone().submitted_between(Some(later), None)).await,
        []
    );
    // Bad filters are refused, naming them.
    for bad in [
        ListQuery::default().handler(""),
        ListQuery::default().error_text("x".repeat(mawex::MAX_LIST_FILTER_LEN + 1)),
        ListQuery::default().submitted_between(Some(later), Some(now)),
    ] {
        let refused = match m.proxy().list(bad).await {
            Err(mawex::ApiError::InvalidArgument(message)) => message,
            other => panic!(
                "expected InvalidArgument, got {:?}",
                other.map(|_| "a page")
            ),
        };
        assert!(
            refused.contains("handler")
                || refused.contains("error_text")
                || refused.contains("submitted_before"),
            "{refused}"
        );
    }
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

async fn bad_input_gets_clear_errors(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let g = group("bad");
    let empty_handler = TaskSpec::new(g.clone(), "", "");
    assert!(matches!(
        m.proxy().submit(empty_handler).await,
        Err(mawex::ApiError::InvalidArgument(m)) if m.contains("handler")
    ));
    let huge = TaskSpec::new(g.clone(), "echo", vec![0u8; m.config.max_payload_bytes + 1]);
    assert!(matches!(
        m.proxy().submit(huge).await,
        Err(mawex::ApiError::ResourceExhausted(_))
    ));
    assert!(matches!(
        m.proxy().get(mawex::TaskId::new()).await,
        Err(mawex::ApiError::NotFound(_))
    ));
    let mut zero_slots = PodHello::new(pod_id("p-zero"), vec![g]);
    zero_slots.slots = 0;
    assert!(matches!(
        m.connector().connect(zero_slots).await,
        Err(mawex::ApiError::InvalidArgument(_))
    ));
    assert!(mawex::Pod::start(
        PodConfig::new(pod_id("p-none"), vec![]),
        Arc::new(mawex::InProcess::new(Default::default())),
        m.connector(),
    )
    .is_err());
    assert_eq!(m.stats().counts, Default::default(), "nothing was accepted");
    m.shutdown().await;
}

on_both_transports!(
    single_task_is_accepted_scheduled_and_recorded,
    errors_and_panics_are_recorded_as_failures,
    a_pod_joining_mid_stream_receives_work,
    pods_leaving_mid_stream_hand_their_work_to_the_rest,
    one_slot_pod_never_overlaps_across_groups_and_two_pods_run_in_parallel,
    tasks_wait_for_a_worker_of_their_group,
    a_duplicate_submit_runs_once,
    a_late_result_of_an_old_attempt_is_ignored,
    a_silent_pod_loses_its_lease_and_the_task_runs_elsewhere,
    cancel_stops_pending_and_running_tasks,
    result_streams_resume_from_a_cursor,
    list_filters_and_pages,
    list_searches_by_handler_keys_payload_error_time_and_order,
    bad_input_gets_clear_errors,
);
