//! Broadcasts: pull with a per-source limit, the k-ary tree, failure isolation, versions and
//! catching up, the app lock, dry runs, and a master restart in the middle.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use mawex::broadcast::{APP_ENV, SOURCE_ADDR_ENV, SOURCE_POD_ENV, VERSION_ENV};
use mawex::{
    ApiError, BroadcastQuery, BroadcastSpec, BroadcastView, Bytes, GroupName, HandlerError,
    HandlerRegistry, InProcess, MasterProxy, Pod, PodConfig, RetryPolicy, Source, Strategy,
    TargetFilter, TargetState, TaskInput,
};

/// One pull as the handler saw it.
#[derive(Debug, Clone)]
struct Pull {
    pod: String,
    source: String,
    address: String,
    version: String,
    started: Instant,
    ended: Instant,
    ok: bool,
}

/// The pulls of a test, and which pods fail how.
#[derive(Default)]
struct Fleet {
    pulls: Mutex<Vec<Pull>>,
    /// Pods whose pulls always fail.
    broken: Mutex<HashSet<String>>,
    /// Pods whose first pull fails.
    flaky: Mutex<HashSet<String>>,
}

impl Fleet {
    fn pulls(&self) -> Vec<Pull> {
        self.pulls.lock().unwrap().clone()
    }

    fn handlers(self: &Arc<Self>, pod: &str, pull_time: Duration) -> HandlerRegistry {
        let fleet = self.clone();
        let pod = pod.to_owned();
        let mut r = HandlerRegistry::new();
        r.register("deploy", move |t: TaskInput| {
            let fleet = fleet.clone();
            let pod = pod.clone();
            async move {
                let started = Instant::now();
                tokio::time::sleep(pull_time).await;
                let ok = !fleet.broken.lock().unwrap().contains(&pod)
                    && !fleet.flaky.lock().unwrap().remove(&pod);
                let env = |k: &str| t.env.get(k).cloned().unwrap_or_default();
                fleet.pulls.lock().unwrap().push(Pull {
                    pod: pod.clone(),
                    source: env(SOURCE_POD_ENV),
                    address: env(SOURCE_ADDR_ENV),
                    version: env(VERSION_ENV),
                    started,
                    ended: Instant::now(),
                    ok,
                });
                assert_eq!(env(APP_ENV), "web");
                if ok {
                    Ok(Bytes::new())
                } else {
                    Err(HandlerError::new(format!("{pod}: rsync failed")))
                }
            }
        })
        .unwrap();
        r
    }
}

fn name(i: usize) -> String {
    format!("p{i:03}")
}

/// `n` pods of `group`, named p000…, each advertising `addr-<name>`.
fn start_pods(
    m: &TestMaster,
    fleet: &Arc<Fleet>,
    group: &GroupName,
    range: std::ops::Range<usize>,
    pull_time: Duration,
) -> Vec<Pod> {
    range
        .map(|i| {
            let mut config = PodConfig::new(pod_id(&name(i)), vec![group.clone()]);
            config.address = Some(format!("addr-{}", name(i)));
            Pod::start(
                config,
                Arc::new(InProcess::new(fleet.handlers(&name(i), pull_time))),
                m.connector(),
            )
            .unwrap()
        })
        .collect()
}

async fn wait_pods(m: &TestMaster, n: usize) {
    m.wait_stats(&format!("{n} pods"), |s| s.pods.len() == n)
        .await;
}

async fn wait_done(proxy: &Arc<dyn MasterProxy>, id: u64) -> BroadcastView {
    let view = proxy.wait_broadcast(id, DEADLINE).await.unwrap();
    assert!(
        view.is_finished(),
        "broadcast #{id} did not finish: {view:?}"
    );
    view
}

async fn stop(pods: Vec<Pod>) {
    for pod in pods {
        pod.shutdown().await.unwrap();
    }
}

fn spec(group: &GroupName, strategy: Strategy) -> BroadcastSpec {
    BroadcastSpec::new("web", group.clone(), "deploy")
        .with_strategy(strategy)
        .with_origin_address("origin:873")
        .with_retry(RetryPolicy::new(1))
}

/// Most pulls any one source served at the same time.
fn max_concurrent_per_source(pulls: &[Pull]) -> usize {
    let sources: BTreeSet<&str> = pulls.iter().map(|p| p.source.as_str()).collect();
    sources
        .into_iter()
        .map(|s| {
            let mine: Vec<&Pull> = pulls.iter().filter(|p| p.source == s).collect();
            mine.iter()
                .map(|p| {
                    mine.iter()
                        .filter(|o| o.started <= p.started && p.started < o.ended)
                        .count()
                })
                .max()
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_reaches_100_pods_in_log_waves_with_at_most_c_pulls_per_source() {
    let m = TestMaster::start().await;
    let g = group("web-pull");
    let fleet = Arc::new(Fleet::default());
    // Long enough that dispatch latency on a loaded 2-core machine stays small beside it.
    let pull_time = Duration::from_millis(500);
    let pods = start_pods(&m, &fleet, &g, 0..100, pull_time);
    wait_pods(&m, 100).await;
    let proxy = m.proxy();

    let fired = proxy
        .fire_broadcast(spec(&g, Strategy::Pull { per_source: 5 }))
        .await
        .unwrap();
    assert_eq!(fired.version, "1", "the first version of an app");
    let view = wait_done(&proxy, fired.id).await;
    assert_eq!(view.done(), 100);
    let took = view.finished_at.unwrap().saturating_since(view.fired_at);
    // Ideal: ⌈log₆ 101⌉ = 3 waves of 500 ms.
    assert!(took <= pull_time * 4, "took {took:?}, more than 4 pulls");

    let pulls = fleet.pulls();
    assert_eq!(pulls.len(), 100, "one pull per pod");
    assert!(max_concurrent_per_source(&pulls) <= 5);
    let by_pod: BTreeMap<&str, &Pull> = pulls.iter().map(|p| (p.pod.as_str(), p)).collect();
    let mut sources = BTreeSet::new();
    for p in &pulls {
        assert_eq!(p.version, "1");
        if p.source == "@origin" {
            assert_eq!(p.address, "origin:873");
            continue;
        }
        let source = by_pod[p.source.as_str()];
        assert!(
            source.ended <= p.started,
            "{} pulled from {} before it finished",
            p.pod,
            p.source
        );
        assert_eq!(p.address, format!("addr-{}", p.source));
        sources.insert(p.source.clone());
    }
    assert!(
        sources.len() > 10,
        "pulls spread over many sources: {sources:?}"
    );
    for t in &view.targets {
        let pull = by_pod[t.pod.as_str()];
        assert_eq!(
            t.source.as_ref().unwrap().to_string(),
            pull.source,
            "the view agrees"
        );
        assert_eq!(t.state, TargetState::Done);
        assert!(t.duration().unwrap() >= pull_time);
    }
    stop(pods).await;
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_targets_pull_from_their_parent() {
    let m = TestMaster::start().await;
    let g = group("web-tree");
    let fleet = Arc::new(Fleet::default());
    let pods = start_pods(&m, &fleet, &g, 0..40, Duration::from_millis(20));
    wait_pods(&m, 40).await;
    let proxy = m.proxy();
    // Node 1 fails for good: its children (6, 7, 8) re-attach to the origin.
    fleet.broken.lock().unwrap().insert(name(1));

    let fired = proxy
        .fire_broadcast(spec(&g, Strategy::Tree { branches: 3 }))
        .await
        .unwrap();
    let view = wait_done(&proxy, fired.id).await;
    assert_eq!(view.done(), 39);
    for (i, t) in view.targets.iter().enumerate() {
        assert_eq!(t.pod.as_str(), name(i), "targets in sorted order");
        let parent = (i / 3).checked_sub(1);
        let expected = match parent {
            None | Some(1) => Source::Origin,
            Some(p) => Source::Pod(pod_id(&name(p))),
        };
        assert_eq!(t.source.as_ref(), Some(&expected), "source of {}", t.pod);
        if i == 1 {
            assert_eq!(t.state, TargetState::Failed);
        } else {
            assert_eq!(t.state, TargetState::Done, "{}", t.pod);
        }
    }
    let plan = proxy
        .plan_broadcast(spec(&g, Strategy::Tree { branches: 3 }).with_version("2"))
        .await
        .unwrap();
    assert_eq!(plan.targets.len(), 40);
    assert_eq!(plan.waves, 4, "1 + 3 + 9 + 27 ≥ 40 in four levels");
    assert_eq!(plan.targets[12].source, Source::Pod(pod_id(&name(3))));
    stop(pods).await;
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_targets_never_serve_and_recover_with_retries() {
    let m = TestMaster::start().await;
    let g = group("web-fail");
    let fleet = Arc::new(Fleet::default());
    let pods = start_pods(&m, &fleet, &g, 0..100, Duration::from_millis(20));
    wait_pods(&m, 100).await;
    let proxy = m.proxy();
    let bad: HashSet<String> = [7, 42, 90].map(name).into();
    *fleet.broken.lock().unwrap() = bad.clone();

    let view = wait_done(
        &proxy,
        proxy
            .fire_broadcast(spec(&g, Strategy::Pull { per_source: 5 }))
            .await
            .unwrap()
            .id,
    )
    .await;
    assert_eq!(view.done(), 97, "everyone else finishes");
    for t in &view.targets {
        let failed = t.state == TargetState::Failed;
        assert_eq!(failed, bad.contains(t.pod.as_str()), "{t:?}");
        let expected = (!failed).then(|| "1".to_owned());
        assert_eq!(t.version, expected, "the version each pod has now");
        if failed {
            assert!(t.error.as_ref().unwrap().message.contains("rsync failed"));
        }
    }
    for p in fleet.pulls() {
        assert!(
            !bad.contains(&p.source),
            "{} pulled from failed {}",
            p.pod,
            p.source
        );
    }

    // Version 2, with retries: the three fail once, then recover from another source.
    fleet.broken.lock().unwrap().clear();
    *fleet.flaky.lock().unwrap() = bad.clone();
    let before = fleet.pulls().len();
    let retrying = spec(&g, Strategy::Pull { per_source: 5 }).with_retry(
        RetryPolicy::new(3)
            .with_base_delay(Duration::from_millis(10))
            .with_max_delay(Duration::from_millis(50)),
    );
    let fired = proxy.fire_broadcast(retrying).await.unwrap();
    assert_eq!(fired.version, "2");
    let view = wait_done(&proxy, fired.id).await;
    assert_eq!(view.done(), 100);
    let pulls: Vec<Pull> = fleet.pulls().split_off(before);
    for pod in &bad {
        let mine: Vec<&Pull> = pulls.iter().filter(|p| &p.pod == pod).collect();
        assert_eq!(mine.len(), 2, "{pod}: failed once, then recovered");
        assert!(!mine[0].ok && mine[1].ok);
        let target = view.targets.iter().find(|t| t.pod.as_str() == pod).unwrap();
        assert_eq!(target.attempts, 2);
        if mine[0].source != "@origin" || mine[1].source != "@origin" {
            assert_ne!(
                mine[0].source, mine[1].source,
                "{pod}: retried from another source"
            );
        }
    }
    stop(pods).await;
    m.shutdown().await;
}

on_both_transports!(
    versions_are_applied_once_and_late_pods_catch_up,
    a_dry_run_changes_nothing
);

async fn versions_are_applied_once_and_late_pods_catch_up(transport: Transport) {
    let m = TestMaster::start_on(transport).await;
    let g = group("web-version");
    let fleet = Arc::new(Fleet::default());
    let mut pods = start_pods(&m, &fleet, &g, 0..5, Duration::from_millis(200));
    wait_pods(&m, 5).await;
    let proxy = m.proxy();

    let first = spec(&g, Strategy::Pull { per_source: 2 }).with_version("v0.3.1");
    let fired = proxy.fire_broadcast(first.clone()).await.unwrap();
    // One fire per app at a time: the lock is visible and refuses a second fire.
    let locks = proxy.broadcast_locks().await.unwrap();
    assert_eq!(locks.len(), 1);
    assert_eq!(locks[0].broadcast, fired.id);
    assert_eq!(locks[0].version, "v0.3.1");
    let retried = proxy.fire_broadcast(first.clone()).await.unwrap();
    assert_eq!(
        retried.id, fired.id,
        "the same fire again is the same broadcast"
    );
    match proxy.fire_broadcast(first.clone().with_version("v9")).await {
        Err(ApiError::Conflict(m)) => assert!(m.contains("lock"), "{m}"),
        other => panic!("another fire while the first runs: {other:?}"),
    }
    wait_done(&proxy, fired.id).await;
    assert!(
        proxy.broadcast_locks().await.unwrap().is_empty(),
        "released at the end"
    );
    assert_eq!(fleet.pulls().len(), 5);

    // The same version again changes nothing.
    let again = proxy.fire_broadcast(first).await.unwrap();
    assert!(again.is_finished());
    assert!(again
        .targets
        .iter()
        .all(|t| t.state == TargetState::AlreadyApplied));
    assert_eq!(fleet.pulls().len(), 5, "nothing ran");

    // The next version by default, and a pod that joins later catches up by itself.
    let next = proxy
        .fire_broadcast(spec(&g, Strategy::Pull { per_source: 2 }))
        .await
        .unwrap();
    assert_eq!(next.version, "v0.3.2");
    wait_done(&proxy, next.id).await;
    pods.extend(start_pods(&m, &fleet, &g, 5..6, Duration::from_millis(20)));
    let late = wait_for("the late pod to catch up", || async {
        let view = proxy.broadcast(next.id).await.unwrap();
        let t = view
            .targets
            .iter()
            .find(|t| t.pod.as_str() == name(5))
            .cloned();
        t.filter(|t| t.state == TargetState::Done)
    })
    .await;
    assert!(
        matches!(late.source, Some(Source::Pod(_))),
        "pulled from a finished pod"
    );
    let late_pulls: Vec<Pull> = fleet
        .pulls()
        .into_iter()
        .filter(|p| p.pod == name(5))
        .collect();
    assert_eq!(late_pulls.len(), 1);
    assert_eq!(late_pulls[0].version, "v0.3.2", "only the latest version");

    // An admin clears a lock: the running broadcast is aborted, its waiting targets cancelled.
    fleet.pulls.lock().unwrap().clear();
    let slow = spec(&g, Strategy::Pull { per_source: 1 }).with_version("v0.4.0");
    let fired = proxy.fire_broadcast(slow).await.unwrap();
    assert_eq!(
        proxy.clear_broadcast_lock("web").await.unwrap(),
        Some(fired.id)
    );
    let view = wait_done(&proxy, fired.id).await;
    assert!(view.aborted);
    assert!(view
        .targets
        .iter()
        .any(|t| t.state == TargetState::Cancelled));
    assert!(proxy.broadcast_locks().await.unwrap().is_empty());
    stop(pods).await;
    m.shutdown().await;
}

async fn a_dry_run_changes_nothing(transport: Transport) {
    let m = TestMaster::start_on(transport).await;
    let g = group("web-dry");
    let fleet = Arc::new(Fleet::default());
    let pods = start_pods(&m, &fleet, &g, 0..20, Duration::from_millis(10));
    wait_pods(&m, 20).await;
    let proxy = m.proxy();
    let before = m.stats().last_seq;
    let state_before = proxy
        .list_broadcasts(BroadcastQuery::default())
        .await
        .unwrap();

    let plan = proxy
        .plan_broadcast(spec(&g, Strategy::Pull { per_source: 2 }))
        .await
        .unwrap();
    assert_eq!(plan.version, "1");
    assert_eq!(plan.targets.len(), 20);
    // 1 → 3 → 9 → 27: three waves.
    assert_eq!(plan.waves, 3);
    assert_eq!(
        plan.targets.iter().filter(|t| t.wave == 1).count(),
        2,
        "the origin serves 2 in the first wave"
    );

    // Only the pods the filter selects.
    let mut filter = TargetFilter::default();
    filter.name_pattern = Some("p01?".into());
    let filtered = proxy
        .plan_broadcast(spec(&g, Strategy::Tree { branches: 3 }).with_filter(filter))
        .await
        .unwrap();
    let names: Vec<&str> = filtered.targets.iter().map(|t| t.pod.as_str()).collect();
    assert_eq!(names, (10..20).map(name).collect::<Vec<_>>());
    assert_eq!(filtered.targets[3].source, Source::Pod(pod_id("p010")));

    // Bad input gets a clear error, and records nothing either.
    match proxy
        .plan_broadcast(spec(&g, Strategy::Pull { per_source: 0 }))
        .await
    {
        Err(ApiError::InvalidArgument(m)) => assert!(m.contains("per_source"), "{m}"),
        other => panic!("{other:?}"),
    }
    match proxy
        .fire_broadcast(spec(&g, Strategy::Tree { branches: 2 }).with_version("no spaces"))
        .await
    {
        Err(ApiError::InvalidArgument(m)) => assert!(m.contains("version"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        proxy.broadcast(999).await,
        Err(ApiError::NotFound(m)) if m.contains("#999")
    ));
    let mut huge = spec(&g, Strategy::Pull { per_source: 2 });
    huge.payload = vec![0u8; (4 << 20) + 1].into();
    match proxy.plan_broadcast(huge).await {
        Err(ApiError::InvalidArgument(m) | ApiError::ResourceExhausted(m)) => {
            assert!(m.contains("broadcast") && m.contains("payload"), "{m}")
        }
        other => panic!("a payload over the master's limit: {other:?}"),
    }

    assert_eq!(m.stats().last_seq, before, "nothing journaled");
    assert_eq!(
        proxy
            .list_broadcasts(BroadcastQuery::default())
            .await
            .unwrap(),
        state_before
    );
    assert!(fleet.pulls().is_empty(), "nothing ran");
    stop(pods).await;
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_restart_mid_broadcast_resumes_without_rerunning_finished_targets() {
    let m = TestMaster::start_with(fast_config()).await;
    let g = group("web-restart");
    let fleet = Arc::new(Fleet::default());
    let network = Network::new(m.master().pod_connector());
    let pods: Vec<Pod> = (0..30)
        .map(|i| {
            let mut config = PodConfig::new(pod_id(&name(i)), vec![g.clone()]);
            config.address = Some(format!("addr-{}", name(i)));
            Pod::start(
                config,
                Arc::new(InProcess::new(
                    fleet.handlers(&name(i), Duration::from_millis(150)),
                )),
                network.clone(),
            )
            .unwrap()
        })
        .collect();
    wait_pods(&m, 30).await;
    let proxy = m.proxy();
    let fired = proxy
        .fire_broadcast(spec(&g, Strategy::Pull { per_source: 2 }))
        .await
        .unwrap();
    wait_for("a few targets to finish", || async {
        let view = proxy.broadcast(fired.id).await.unwrap();
        (view.done() >= 3).then_some(())
    })
    .await;

    let dir = m.halt().await;
    let m = TestMaster::restart(dir, fast_config()).await;
    network.point_at(m.master().pod_connector());
    let proxy = m.proxy();
    let view = wait_done(&proxy, fired.id).await;
    assert_eq!(view.done(), 30);
    let pulls = fleet.pulls();
    for i in 0..30 {
        let ok = pulls.iter().filter(|p| p.pod == name(i) && p.ok).count();
        assert_eq!(ok, 1, "{} applied once, not re-run", name(i));
    }
    stop(pods).await;
    m.shutdown().await;
}

/// A target whose pod goes away fails once it has been away longer than a lease, so the
/// broadcast finishes without it; when the pod comes back it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_target_fails_and_catches_up_when_it_returns() {
    let m = TestMaster::start().await;
    let g = group("web-absent");
    let fleet = Arc::new(Fleet::default());
    let mut pods = start_pods(&m, &fleet, &g, 0..4, Duration::from_millis(300));
    wait_pods(&m, 4).await;
    let proxy = m.proxy();
    let mut live = proxy.results(g.clone(), None).await.unwrap();
    let fired = proxy
        .fire_broadcast(spec(&g, Strategy::Pull { per_source: 1 }))
        .await
        .unwrap();
    let absent_task = fired
        .targets
        .iter()
        .find(|t| t.pod.as_str() == name(3))
        .and_then(|t| t.task)
        .unwrap();
    let waiting = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.await_result(absent_task).await })
    };
    // p003 is last in line (one pull per source): it leaves before its turn.
    pods.pop().unwrap().shutdown().await.unwrap();
    let view = wait_done(&proxy, fired.id).await;
    // The failure of the absent target is a recorded result like any other: its waiter
    // hears of it, and so do the live stream and a stream that starts later.
    let result = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("await_result answers")
        .unwrap()
        .unwrap();
    assert!(
        matches!(&result.outcome, mawex::Outcome::Failed(e) if e.kind == mawex::ErrorKind::LeaseExpired),
        "{result:?}"
    );
    let mut streamed = Vec::new();
    for _ in 0..4 {
        let next = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("the live stream delivers every target's result");
        streamed.push(next.unwrap().unwrap());
    }
    assert!(streamed.iter().any(|r| r.id == absent_task), "{streamed:?}");
    let mut later = proxy.results(g.clone(), None).await.unwrap();
    let mut replayed = Vec::new();
    for _ in 0..4 {
        replayed.push(later.next().await.unwrap().unwrap());
    }
    assert_eq!(
        replayed, streamed,
        "a later stream replays the same results"
    );
    assert_eq!(view.done(), 3);
    let away = view
        .targets
        .iter()
        .find(|t| t.pod.as_str() == name(3))
        .unwrap();
    assert_eq!(away.state, TargetState::Failed, "{away:?}");
    assert_eq!(
        away.error.as_ref().unwrap().kind,
        mawex::ErrorKind::LeaseExpired
    );
    assert!(fleet.pulls().iter().all(|p| p.pod != name(3)));

    pods.extend(start_pods(&m, &fleet, &g, 3..4, Duration::from_millis(20)));
    let back = wait_for("the returning pod to catch up", || async {
        let view = proxy.broadcast(fired.id).await.unwrap();
        let t = view
            .targets
            .iter()
            .find(|t| t.pod.as_str() == name(3))
            .cloned();
        t.filter(|t| t.state == TargetState::Done)
    })
    .await;
    assert_eq!(back.version.as_deref(), Some("1"));
    stop(pods).await;
    m.shutdown().await;
}
