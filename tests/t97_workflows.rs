//! Workflows end to end on a real master, over both transports: a diamond runs its fan-in
//! once, after both branches, with both outputs; a failed branch cancels it under the default
//! policy and not under "all finished"; retrying the failed branch brings it back; bad graphs
//! are refused naming the node at fault.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::*;
use mawex::{
    ApiError, Bytes, DependencyPolicy, FailedFilter, GraphEdge, GraphNode, GraphSpec, HandlerError,
    HandlerRegistry, Outcome, PodConfig, TaskId, TaskInput, TaskSpec, TaskState,
};

/// When each task's handler started and ended, and how often it ran.
#[derive(Default)]
struct Journey {
    spans: Mutex<HashMap<TaskId, Vec<(Instant, Instant)>>>,
}

impl Journey {
    fn runs(&self, id: &TaskId) -> usize {
        self.spans.lock().unwrap().get(id).map_or(0, Vec::len)
    }

    fn span(&self, id: &TaskId) -> (Instant, Instant) {
        self.spans.lock().unwrap()[id][0]
    }
}

/// `step`: answers its payload, then `(` and its inputs' outputs (or `!` for a failed one)
/// joined by `+`, then `)`. `flaky`: fails for good the first `fail_first` times.
fn handlers(journey: Arc<Journey>, fail_first: usize) -> HandlerRegistry {
    let mut r = HandlerRegistry::new();
    let steps = journey.clone();
    r.register("step", move |t: TaskInput| {
        let journey = steps.clone();
        async move {
            let start = Instant::now();
            let inputs: Vec<String> = t
                .inputs
                .iter()
                .map(|r| match &r.outcome {
                    Outcome::Succeeded(out) => String::from_utf8_lossy(out).into_owned(),
                    _ => "!".to_owned(),
                })
                .collect();
            let out = format!(
                "{}({})",
                String::from_utf8_lossy(&t.payload),
                inputs.join("+")
            );
            let end = Instant::now();
            journey
                .spans
                .lock()
                .unwrap()
                .entry(t.task)
                .or_default()
                .push((start, end));
            Ok(Bytes::from(out))
        }
    })
    .unwrap();
    let failures = Arc::new(AtomicUsize::new(0));
    r.register("flaky", move |t: TaskInput| {
        let journey = journey.clone();
        let failures = failures.clone();
        async move {
            let now = Instant::now();
            journey
                .spans
                .lock()
                .unwrap()
                .entry(t.task)
                .or_default()
                .push((now, now));
            if failures.fetch_add(1, Ordering::SeqCst) < fail_first {
                return Err(HandlerError::permanent("flaky failed"));
            }
            Ok(t.payload)
        }
    })
    .unwrap();
    r
}

fn node(name: &str, handler: &str) -> GraphNode {
    GraphNode::new(
        name,
        TaskSpec::new(group("wf"), handler, Bytes::from(name.to_owned())).with_output_limit(1000),
    )
}

fn diamond(b_handler: &str, policy: DependencyPolicy) -> GraphSpec {
    GraphSpec::new(
        vec![
            node("a", "step"),
            node("b", b_handler),
            node("c", "step"),
            node("d", "step"),
        ],
        vec![
            GraphEdge::new("a", "b"),
            GraphEdge::new("a", "c"),
            GraphEdge::new("b", "d").with_policy(policy),
            GraphEdge::new("c", "d").with_policy(policy),
        ],
    )
}

async fn a_diamond_runs_d_once_after_both_with_both_outputs(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let journey = Arc::new(Journey::default());
    let _pod = m.pod(
        PodConfig::new(pod_id("p1"), vec![group("wf")]).with_slots(4),
        handlers(journey.clone(), 0),
    );
    let graph = diamond("step", DependencyPolicy::AllSucceeded);
    let id = |name: &str| graph.id.node_id(name);
    let proxy = m.proxy();
    let ack = proxy.submit_graph(graph.clone()).await.unwrap();
    assert!(ack.created);
    let again = proxy.submit_graph(graph.clone()).await.unwrap();
    assert!(!again.created, "the same graph again is recognised");
    let d = proxy.await_result(id("d")).await.unwrap();
    assert_eq!(
        d.outcome,
        Outcome::Succeeded(Bytes::from_static(b"d(b(a())+c(a()))")),
        "D got both outputs, in the order of its edges"
    );
    assert_eq!(journey.runs(&id("d")), 1, "D ran once");
    let (d_start, _) = journey.span(&id("d"));
    for dep in ["b", "c"] {
        assert!(
            journey.span(&id(dep)).1 <= d_start,
            "D started after {dep} ended"
        );
    }
    let view = proxy.graph(graph.id).await.unwrap();
    assert!(view.is_finished());
    assert_eq!(view.count(TaskState::Succeeded), 4);
    let d_view = proxy.get(id("d")).await.unwrap();
    assert_eq!(d_view.graph, Some(graph.id));
    assert_eq!(d_view.spec.after.len(), 2);
    m.shutdown().await;
}

async fn with_b_failing_d_is_cancelled_by_default_and_runs_when_all_finished(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let journey = Arc::new(Journey::default());
    let _pod = m.pod(
        PodConfig::new(pod_id("p1"), vec![group("wf")]).with_slots(4),
        handlers(journey.clone(), usize::MAX),
    );
    let proxy = m.proxy();

    let strict = diamond("flaky", DependencyPolicy::AllSucceeded);
    proxy.submit_graph(strict.clone()).await.unwrap();
    let d = proxy.await_result(strict.id.node_id("d")).await.unwrap();
    assert_eq!(d.outcome, Outcome::Cancelled);
    let view = proxy.get(strict.id.node_id("d")).await.unwrap();
    assert_eq!(
        view.cancelled_by,
        Some(strict.id.node_id("b")),
        "B is the cause"
    );
    assert_eq!(journey.runs(&strict.id.node_id("d")), 0);

    let lenient = diamond("flaky", DependencyPolicy::AllFinished);
    proxy.submit_graph(lenient.clone()).await.unwrap();
    let d = proxy.await_result(lenient.id.node_id("d")).await.unwrap();
    assert_eq!(
        d.outcome,
        Outcome::Succeeded(Bytes::from_static(b"d(!+c(a()))")),
        "D ran with B's failure and C's output"
    );
    m.shutdown().await;
}

async fn retrying_a_failed_node_unblocks_its_dependants(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let journey = Arc::new(Journey::default());
    let _pod = m.pod(
        PodConfig::new(pod_id("p1"), vec![group("wf")]).with_slots(4),
        handlers(journey.clone(), 1),
    );
    let proxy = m.proxy();
    let graph = diamond("flaky", DependencyPolicy::AllSucceeded);
    let id = |name: &str| graph.id.node_id(name);
    proxy.submit_graph(graph.clone()).await.unwrap();
    assert_eq!(
        proxy.await_result(id("d")).await.unwrap().outcome,
        Outcome::Cancelled
    );
    assert_eq!(
        proxy
            .retry_failed(FailedFilter::ids(vec![id("b")]))
            .await
            .unwrap(),
        1
    );
    let d = wait_for("D to succeed", || {
        let proxy = proxy.clone();
        let d = id("d");
        async move {
            let view = proxy.get(d).await.ok()?;
            (view.state == TaskState::Succeeded).then_some(view)
        }
    })
    .await;
    assert_eq!(
        d.result.map(|r| r.outcome),
        Some(Outcome::Succeeded(Bytes::from_static(b"d(b+c(a()))")))
    );
    assert_eq!(journey.runs(&id("d")), 1, "D ran once, after B's retry");
    m.shutdown().await;
}

async fn bad_graphs_are_refused_naming_the_node(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let proxy = m.proxy();
    let refused = |r: Result<mawex::GraphAck, ApiError>| match r {
        Err(ApiError::InvalidArgument(m))
        | Err(ApiError::ResourceExhausted(m))
        | Err(ApiError::NotFound(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let cycle = GraphSpec::new(
        vec![
            node("extract", "step"),
            node("transform", "step"),
            node("load", "step"),
        ],
        vec![
            GraphEdge::new("extract", "transform"),
            GraphEdge::new("transform", "load"),
            GraphEdge::new("load", "transform"),
        ],
    );
    let m1 = refused(proxy.submit_graph(cycle).await);
    assert!(
        m1.contains("cycle")
            && (m1.contains("transform → load → transform")
                || m1.contains("load → transform → load")),
        "{m1}"
    );
    let dangling = GraphSpec::new(
        vec![node("extract", "step")],
        vec![GraphEdge::new("extract", "lod")],
    );
    let m2 = refused(proxy.submit_graph(dangling).await);
    assert!(m2.contains("no node \"lod\""), "{m2}");
    let stranger = GraphSpec::new(
        vec![GraphNode::new(
            "late",
            TaskSpec::new(group("wf"), "step", Bytes::new()).after(TaskId::new()),
        )],
        Vec::new(),
    );
    let m3 = refused(proxy.submit_graph(stranger).await);
    assert!(
        m3.contains("node \"late\"") && m3.contains("unknown"),
        "{m3}"
    );
    let mut wide = diamond("step", DependencyPolicy::AllSucceeded);
    wide.nodes[1].spec.output_limit = None;
    wide.nodes[2].spec.output_limit = None;
    let m4 = refused(proxy.submit_graph(wide).await);
    assert!(
        m4.contains("node \"d\"") && m4.contains("output_limit"),
        "{m4}"
    );
    m.shutdown().await;
}

on_both_transports!(
    a_diamond_runs_d_once_after_both_with_both_outputs,
    with_b_failing_d_is_cancelled_by_default_and_runs_when_all_finished,
    retrying_a_failed_node_unblocks_its_dependants,
    bad_graphs_are_refused_naming_the_node,
);
