//! Pods that lose their master and find it again: nothing they ran is lost or run twice.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mawex::{InProcess, Outcome, Pod, PodConfig, TaskSpec};

fn patient_config() -> mawex::MasterConfig {
    let mut c = fast_config();
    // Long enough that a short outage never expires the lease, even on a loaded machine.
    c.lease_timeout = Duration::from_secs(20);
    c.heartbeat_interval = Duration::from_millis(200);
    c
}

/// A master, a pod behind a test network, and a 300 ms task running on it.
struct Sleeper {
    m: TestMaster,
    network: Arc<Network>,
    pod: Pod,
    runs: Arc<Runs>,
    task: mawex::TaskId,
}

async fn sleeper(name: &str) -> Sleeper {
    let m = TestMaster::start_with(patient_config()).await;
    let g = group(name);
    let network = Network::new(m.master().pod_connector());
    let (handlers, runs, _) = instrumented();
    let pod = Pod::start(
        PodConfig::new(pod_id(&format!("p-{name}")), vec![g.clone()]),
        Arc::new(InProcess::new(handlers)),
        network.clone(),
    )
    .unwrap();
    let task = m
        .proxy()
        .submit(TaskSpec::new(g, "sleep", "300"))
        .await
        .unwrap()
        .id;
    wait_for("the task to start", || {
        let n = runs.count(&task);
        async move { (n == 1).then_some(()) }
    })
    .await;
    Sleeper {
        m,
        network,
        pod,
        runs,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_finished_while_disconnected_is_delivered_after_reconnect() {
    let Sleeper {
        m,
        network,
        pod,
        runs,
        task,
    } = sleeper("outage").await;

    network.refuse(true);
    network.cut();
    wait_for("the attempt to finish while disconnected", || {
        let n = pod.executed();
        async move { (n == 1).then_some(()) }
    })
    .await;
    assert_eq!(m.stats().counts.running, 1, "the master has no result yet");
    network.refuse(false);

    let result = m.proxy().await_result(task).await.unwrap();
    assert_eq!(
        result.attempt.0, 1,
        "the first attempt's result, re-adopted"
    );
    assert_eq!(result.outcome, Outcome::Succeeded("300".into()));
    assert_eq!(runs.count(&task), 1, "it ran once");
    assert!(network.connects.load(Ordering::SeqCst) >= 2);
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_master_crash_pods_reconnect_and_their_running_attempts_are_readopted() {
    let m = TestMaster::start_with(patient_config()).await;
    let g = group("readopt");
    let network = Network::new(m.master().pod_connector());
    let (handlers, runs, _) = instrumented();
    let pod = Pod::start(
        PodConfig::new(pod_id("p-readopt"), vec![g.clone()]),
        Arc::new(InProcess::new(handlers)),
        network.clone(),
    )
    .unwrap();
    let long = m
        .proxy()
        .submit(TaskSpec::new(g.clone(), "sleep", "500"))
        .await
        .unwrap();
    let next = m
        .proxy()
        .submit(TaskSpec::new(g.clone(), "echo", "next"))
        .await
        .unwrap();
    wait_for("the long task to start", || {
        let n = runs.count(&long.id);
        async move { (n == 1).then_some(()) }
    })
    .await;

    let dir = m.halt().await;
    let m = TestMaster::restart(dir, patient_config()).await;
    network.point_at(m.master().pod_connector());

    let result = m.proxy().await_result(long.id).await.unwrap();
    assert_eq!(result.attempt.0, 1, "re-adopted, not re-run");
    assert_eq!(runs.count(&long.id), 1);
    let result = m.proxy().await_result(next.id).await.unwrap();
    assert_eq!(result.outcome, Outcome::Succeeded("next".into()));
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

/// A result the pod sent into a connection that then died (the master never got it) is
/// sent again after the reconnect: the pod keeps every report until the master acknowledges
/// it, so the task is not run a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_lost_in_flight_is_sent_again_not_rerun() {
    let Sleeper {
        m,
        network,
        pod,
        runs,
        task,
    } = sleeper("in-flight").await;

    // The result leaves the pod and is lost on the way; then the connection drops.
    network.swallow(true);
    wait_for("the attempt to finish", || {
        let n = pod.executed();
        async move { (n == 1).then_some(()) }
    })
    .await;
    let view = m.proxy().get(task).await.unwrap();
    assert_eq!(
        view.state,
        mawex::TaskState::Running,
        "the master never heard"
    );
    let before = network.connects.load(Ordering::SeqCst);
    network.cut();
    network.swallow(false);

    let result = m.proxy().await_result(task).await.unwrap();
    assert_eq!(result.outcome, Outcome::Succeeded("300".into()));
    assert_eq!(
        result.attempt.0, 1,
        "the first attempt's result, sent again"
    );
    assert_eq!(runs.count(&task), 1, "not run twice");
    assert!(network.connects.load(Ordering::SeqCst) > before);
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_refuses_a_master_of_an_earlier_term_than_it_has_seen() {
    let m = TestMaster::start_with(patient_config()).await;
    let g = group("fenced");
    let network = Network::new(m.master().pod_connector());
    // Leaders of terms 5, then a deposed one of term 3 (it still believes it leads), then 7.
    network.welcome_terms([5, 3, 7]);
    let (handlers, runs, _) = instrumented();
    let pod = Pod::start(
        PodConfig::new(pod_id("p-fenced"), vec![g.clone()]),
        Arc::new(InProcess::new(handlers)),
        network.clone(),
    )
    .unwrap();
    wait_for("the pod to use its session of term 5", || {
        let used = network.sent_on(0).unwrap_or(0) > 0;
        async move { used.then_some(()) }
    })
    .await;

    network.cut();
    wait_for("the pod to use a session of term 7", || {
        let used = network.sent_on(2).unwrap_or(0) > 0;
        async move { used.then_some(()) }
    })
    .await;
    assert_eq!(
        network.sent_on(1),
        Some(0),
        "the session of term 3 is refused before the pod says anything on it"
    );
    let task = m
        .proxy()
        .submit(TaskSpec::new(g, "echo", "fenced"))
        .await
        .unwrap()
        .id;
    let result = m.proxy().await_result(task).await.unwrap();
    assert_eq!(result.outcome, Outcome::Succeeded("fenced".into()));
    assert_eq!(runs.count(&task), 1);
    assert_eq!(network.connects.load(Ordering::SeqCst), 3);
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

/// An operator drain: the pod hands back the leases it has queued (they run on another
/// pod), finishes the one it runs, and stays drained when it reconnects to a master that
/// restarted, which knows nothing of the drain but what the pod's hello says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_pod_hands_back_its_queue_and_stays_drained_after_a_master_restart() {
    let m = TestMaster::start_with(patient_config()).await;
    let g = group("drained");
    let network = Network::new(m.master().pod_connector());
    let (handlers, runs, _) = instrumented();
    let drained = Pod::start(
        PodConfig::new(pod_id("p-drained"), vec![g.clone()])
            .with_slots(1)
            .with_prefetch(3),
        Arc::new(InProcess::new(handlers.clone())),
        network.clone(),
    )
    .unwrap();
    m.wait_stats("the pod", |s| s.pods.len() == 1).await;
    let long = m
        .proxy()
        .submit(TaskSpec::new(g.clone(), "sleep", "1500"))
        .await
        .unwrap();
    wait_for("the long task to start", || {
        let n = runs.count(&long.id);
        async move { (n == 1).then_some(()) }
    })
    .await;
    let mut queued = Vec::new();
    for i in 0..3 {
        let spec = TaskSpec::new(g.clone(), "echo", format!("queued-{i}"));
        queued.push(m.proxy().submit(spec).await.unwrap().id);
    }
    m.wait_stats("one running and three queued on the pod", |s| {
        s.pods.iter().any(|p| p.leased == 4)
    })
    .await;

    assert!(m.proxy().drain_pod(pod_id("p-drained")).await.unwrap());
    // The queue comes back at once; the running attempt stays.
    m.wait_stats("the queue handed back", |s| {
        s.pods.iter().any(|p| p.draining && p.leased == 1)
    })
    .await;
    let other = m.pod(PodConfig::new(pod_id("p-other"), vec![g.clone()]), handlers);
    for id in &queued {
        let result = m.proxy().await_result(*id).await.unwrap();
        assert!(
            matches!(result.outcome, Outcome::Succeeded(_)),
            "{result:?}"
        );
    }
    let result = m.proxy().await_result(long.id).await.unwrap();
    assert_eq!(
        result.attempt.0, 1,
        "the running attempt finished where it ran"
    );
    for id in &queued {
        assert_eq!(runs.count(id), 1, "each queued task ran once");
    }
    other.shutdown().await.unwrap();

    // A restarted master learns of the drain from the pod's hello: it gives it no work.
    let dir = m.shutdown().await;
    let m = TestMaster::restart(dir, patient_config()).await;
    network.point_at(m.master().pod_connector());
    m.wait_stats("the pod back, draining", |s| {
        s.pods.iter().any(|p| p.draining)
    })
    .await;
    let waiting = m
        .proxy()
        .submit(TaskSpec::new(g.clone(), "echo", "after"))
        .await
        .unwrap();
    // A pod that is not drained takes it: the drained one was never offered it.
    let fresh = m.pod(
        PodConfig::new(pod_id("p-fresh"), vec![g.clone()]),
        instrumented().0,
    );
    m.proxy().await_result(waiting.id).await.unwrap();
    assert_eq!(
        runs.count(&waiting.id),
        0,
        "the drained pod ran nothing new"
    );
    fresh.shutdown().await.unwrap();
    drained.shutdown().await.unwrap();
    m.shutdown().await;
}

/// The last lines of an attempt that ends while its pod is cut off wait with its result and
/// reach the master after the reconnect, before the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_lines_of_an_attempt_that_ended_while_disconnected_are_kept() {
    let m = TestMaster::start_with(patient_config()).await;
    let g = group("lines");
    let network = Network::new(m.master().pod_connector());
    let go_on = Arc::new(tokio::sync::Notify::new());
    let mut handlers = mawex::HandlerRegistry::new();
    {
        let go_on = go_on.clone();
        handlers
            .register("chatty", move |t: mawex::TaskInput| {
                let go_on = go_on.clone();
                async move {
                    t.log.line("first");
                    go_on.notified().await;
                    t.log.line("last");
                    Ok(mawex::Bytes::from_static(b"done"))
                }
            })
            .unwrap();
    }
    let pod = Pod::start(
        PodConfig::new(pod_id("p-lines"), vec![g.clone()]),
        Arc::new(InProcess::new(handlers)),
        network.clone(),
    )
    .unwrap();
    let task = m
        .proxy()
        .submit(TaskSpec::new(g, "chatty", ""))
        .await
        .unwrap()
        .id;
    let proxy = m.proxy();
    wait_for("the first line to reach the master", || {
        let proxy = proxy.clone();
        async move {
            let output = proxy.task_output(task, 0).await.ok()?;
            output.lines.iter().any(|l| l.text == "first").then_some(())
        }
    })
    .await;

    network.refuse(true);
    network.cut();
    go_on.notify_one();
    wait_for("the attempt to end while disconnected", || {
        let n = pod.executed();
        async move { (n == 1).then_some(()) }
    })
    .await;
    network.refuse(false);

    let result = m.proxy().await_result(task).await.unwrap();
    assert_eq!(result.outcome, Outcome::Succeeded("done".into()));
    let output = m.proxy().task_output(task, 0).await.unwrap();
    let texts: Vec<&str> = output.lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["first", "last"], "{output:?}");
    assert_eq!(output.dropped, 0);
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}
