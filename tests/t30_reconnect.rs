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
