//! Workflows: dependants unblocked, cancelled, revived and fed, command in, exact events out.

use bytes::Bytes;
use mawex_api::pod::PodMessage;
use mawex_api::{
    ApiError, Dependency, DependencyPolicy, ErrorKind, FailedFilter, GraphEdge, GraphNode,
    GraphSpec, Outcome, RetryHint, TaskError, TaskSpec, TaskState,
};

use super::{at, attempt, engine, hello, replayed, spec, T0};
use crate::engine::{Engine, Output};
use crate::state::Event;

/// Runs one batch as the core loop does: the command, then settle and dispatch.
fn batch(
    e: &mut Engine,
    now: mawex_api::Timestamp,
    command: impl FnOnce(&mut Engine, &mut Output),
) -> Output {
    let mut out = Output::default();
    command(e, &mut out);
    e.tick(now, &mut out);
    e.settle(now, &mut out);
    e.dispatch(now, &mut out);
    out
}

fn finish(
    e: &mut Engine,
    task: &TaskSpec,
    output: &'static [u8],
    now: mawex_api::Timestamp,
) -> Output {
    let message = PodMessage::Finished {
        attempt: attempt(task, e.state().task(&task.id).unwrap().attempt.0),
        outcome: Ok(Bytes::from_static(output)),
    };
    batch(e, now, |e, out| e.pod_message(1, message, now, out))
}

fn fail(e: &mut Engine, task: &TaskSpec, now: mawex_api::Timestamp) -> Output {
    let error = TaskError::new(ErrorKind::Handler, "no good").with_retry(RetryHint::Never);
    let message = PodMessage::Finished {
        attempt: attempt(task, e.state().task(&task.id).unwrap().attempt.0),
        outcome: Err(error),
    };
    batch(e, now, |e, out| e.pod_message(1, message, now, out))
}

fn state_of(e: &Engine, task: &TaskSpec) -> TaskState {
    e.state().task(&task.id).unwrap().state
}

/// Everything the events of `out` that `pick` takes name, in order.
fn picked<T: Clone>(out: &Output, pick: impl Fn(&Event) -> Option<&Vec<T>>) -> Vec<T> {
    out.events
        .iter()
        .filter_map(pick)
        .flatten()
        .cloned()
        .collect()
}

fn unblocked(out: &Output) -> Vec<mawex_api::TaskId> {
    picked(out, |ev| match ev {
        Event::TasksUnblocked { tasks, .. } => Some(tasks),
        _ => None,
    })
}

/// A diamond, A → B, A → C, B + C → D, submitted as a batch with a pod of two slots.
fn diamond() -> (Engine, [TaskSpec; 4], Vec<Event>) {
    let a = spec("g");
    let b = spec("g").after(a.id).with_output_limit(100);
    let c = spec("g").after(a.id).with_output_limit(100);
    let d = spec("g").after(b.id).after(c.id);
    let mut e = engine();
    let mut events = Vec::new();
    let out = batch(&mut e, T0, |e, out| {
        e.submit(vec![a.clone(), b.clone(), c.clone(), d.clone()], T0, out)
            .unwrap();
        e.pod_hello(1, hello("p1", &["g"], 2), T0, out).unwrap();
    });
    events.extend(out.events);
    (e, [a, b, c, d], events)
}

#[test]
fn the_last_dependency_unblocks_in_its_own_batch_and_a_fan_in_gets_every_output() {
    let (mut e, [a, b, c, d], mut events) = diamond();
    for (task, state) in [
        (&a, TaskState::Running),
        (&b, TaskState::Blocked),
        (&c, TaskState::Blocked),
        (&d, TaskState::Blocked),
    ] {
        assert_eq!(state_of(&e, task), state);
    }
    let out = finish(&mut e, &a, b"A", at(1));
    let mut both = vec![b.id, c.id];
    both.sort();
    assert_eq!(unblocked(&out), both, "B and C leave Blocked in A's batch");
    assert_eq!(state_of(&e, &b), TaskState::Running);
    assert_eq!(state_of(&e, &c), TaskState::Running);
    let inputs = e.inputs(&b.id);
    assert_eq!(inputs.len(), 1);
    assert_eq!(inputs[0].id, a.id);
    assert_eq!(
        inputs[0].outcome,
        Outcome::Succeeded(Bytes::from_static(b"A"))
    );
    events.extend(out.events);
    let out = finish(&mut e, &b, b"B", at(2));
    assert!(unblocked(&out).is_empty(), "D waits for C");
    events.extend(out.events);
    let out = finish(&mut e, &c, b"C", at(3));
    assert_eq!(unblocked(&out), vec![d.id]);
    events.extend(out.events);
    let inputs: Vec<_> = e
        .inputs(&d.id)
        .into_iter()
        .map(|r| (r.id, r.outcome))
        .collect();
    assert_eq!(
        inputs,
        vec![
            (b.id, Outcome::Succeeded(Bytes::from_static(b"B"))),
            (c.id, Outcome::Succeeded(Bytes::from_static(b"C"))),
        ],
        "both outputs, in the order D names them"
    );
    let out = finish(&mut e, &d, b"D", at(4));
    events.extend(out.events);
    assert_eq!(state_of(&e, &d), TaskState::Succeeded);
    assert_eq!(
        &replayed(&events),
        e.state(),
        "a replay builds the same state"
    );
}

#[test]
fn a_failed_dependency_cancels_with_the_root_cause_and_retrying_it_revives_the_cascade() {
    let (mut e, [a, b, c, d], mut events) = diamond();
    let out = fail(&mut e, &a, at(1));
    let cancelled = picked(&out, |ev| match ev {
        Event::TasksCancelledByDependency { tasks, .. } => Some(tasks),
        _ => None,
    });
    assert_eq!(cancelled.len(), 3, "B, C, then D: {cancelled:?}");
    assert!(
        cancelled.iter().all(|(_, root)| *root == a.id),
        "A is every one's root"
    );
    assert_eq!(cancelled.last().map(|c| c.0), Some(d.id), "D after B and C");
    events.extend(out.events);
    let view = e.view(&d.id).unwrap();
    assert_eq!(view.state, TaskState::Cancelled);
    assert_eq!(view.cancelled_by, Some(a.id));
    assert_eq!(view.result.map(|r| r.outcome), Some(Outcome::Cancelled));

    // Retrying A from the failed queue brings back what it cancelled, blocked again.
    let out = batch(&mut e, at(2), |e, out| {
        assert_eq!(
            e.retry_failed(&FailedFilter::ids(vec![a.id]), at(2), out),
            1
        );
    });
    let revived = picked(&out, |ev| match ev {
        Event::TasksRevived { tasks, .. } => Some(tasks),
        _ => None,
    });
    assert_eq!(revived.len(), 3, "{revived:?}");
    events.extend(out.events);
    for task in [&b, &c, &d] {
        assert_eq!(state_of(&e, task), TaskState::Blocked);
        assert_eq!(e.view(&task.id).unwrap().cancelled_by, None);
    }
    assert_eq!(state_of(&e, &a), TaskState::Running);
    let out = finish(&mut e, &a, b"A", at(3));
    assert_eq!(unblocked(&out).len(), 2, "B and C run this time");
    events.extend(out.events);
    assert_eq!(&replayed(&events), e.state());
}

#[test]
fn all_finished_runs_after_a_failure_with_the_error_as_input() {
    let a = spec("g");
    let b =
        spec("g").after_dependency(Dependency::on(a.id).with_policy(DependencyPolicy::AllFinished));
    let mut e = engine();
    batch(&mut e, T0, |e, out| {
        e.submit(vec![a.clone(), b.clone()], T0, out).unwrap();
        e.pod_hello(1, hello("p1", &["g"], 1), T0, out).unwrap();
    });
    let out = fail(&mut e, &a, at(1));
    assert_eq!(unblocked(&out), vec![b.id]);
    assert_eq!(state_of(&e, &b), TaskState::Running);
    let inputs = e.inputs(&b.id);
    assert!(
        matches!(&inputs[0].outcome, Outcome::Failed(err) if err.message == "no good"),
        "{inputs:?}"
    );
}

#[test]
fn a_dependency_on_a_finished_task_runs_at_once_and_one_on_an_unknown_task_is_refused() {
    let a = spec("g");
    let mut e = engine();
    batch(&mut e, T0, |e, out| {
        e.submit(vec![a.clone()], T0, out).unwrap();
        e.pod_hello(1, hello("p1", &["g"], 1), T0, out).unwrap();
    });
    finish(&mut e, &a, b"A", at(1));
    let b = spec("g").after(a.id);
    let out = batch(&mut e, at(2), |e, out| {
        e.submit(vec![b.clone()], at(2), out).unwrap();
    });
    assert_eq!(
        unblocked(&out),
        vec![b.id],
        "accepted and unblocked in one batch"
    );
    let unknown = spec("g").after(mawex_api::TaskId::new());
    let mut out = Output::default();
    match e.submit(vec![spec("g"), unknown], at(3), &mut out) {
        Err(ApiError::NotFound(m)) => assert!(
            m.contains("task #1 of the batch") && m.contains("unknown"),
            "{m}"
        ),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(out.events.is_empty(), "the batch is atomic");
    // A dependency later in the batch is not yet known either.
    let first = spec("g");
    let second = spec("g");
    let first = first.after(second.id);
    assert!(matches!(
        e.submit(vec![first, second], at(4), &mut out),
        Err(ApiError::NotFound(_))
    ));
}

#[test]
fn an_oversize_fan_in_is_refused_naming_the_node() {
    let a = spec("g");
    let b = spec("g");
    let mut e = engine();
    let mut out = Output::default();
    // Two outputs of up to the payload limit each could not fit in one.
    let d = spec("g").after(a.id).after(b.id);
    let graph = GraphSpec::new(
        vec![
            GraphNode::new("a", a.clone()),
            GraphNode::new("b", b.clone()),
            GraphNode::new("d", spec("g")),
        ],
        vec![GraphEdge::new("a", "d"), GraphEdge::new("b", "d")],
    );
    match e.submit(vec![a.clone(), b.clone(), d.clone()], T0, &mut out) {
        Err(ApiError::ResourceExhausted(m)) => {
            assert!(m.contains("task #2") && m.contains("output_limit"), "{m}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match e.submit_graph(graph.id, graph.clone().into_tasks().unwrap(), T0, &mut out) {
        Err(ApiError::ResourceExhausted(m)) => assert!(m.contains("node \"d\""), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(out.events.is_empty());
    // Declared limits, or outputs left out, make it fit.
    let mut fits = graph.clone();
    for node in &mut fits.nodes[..2] {
        node.spec.output_limit = Some(100);
    }
    e.submit_graph(fits.id, fits.into_tasks().unwrap(), T0, &mut out)
        .unwrap();
    let mut ordered = GraphSpec::new(
        graph.nodes.clone(),
        graph
            .edges
            .iter()
            .map(|e| e.clone().without_output())
            .collect(),
    );
    ordered.id = mawex_api::GraphId::new();
    e.submit_graph(ordered.id, ordered.into_tasks().unwrap(), T0, &mut out)
        .unwrap();
}

#[test]
fn a_graph_is_atomic_idempotent_by_id_and_cancelled_as_one() {
    let graph = GraphSpec::new(
        ["extract", "transform", "load"]
            .iter()
            .map(|n| GraphNode::new(*n, spec("g").with_output_limit(10)))
            .collect(),
        vec![
            GraphEdge::new("extract", "transform"),
            GraphEdge::new("transform", "load"),
        ],
    );
    let mut e = engine();
    let out = batch(&mut e, T0, |e, out| {
        let ack = e
            .submit_graph(graph.id, graph.clone().into_tasks().unwrap(), T0, out)
            .unwrap();
        assert!(ack.created);
    });
    assert_eq!(out.events.len(), 1, "one event: {:?}", out.events);
    let again = batch(&mut e, at(1), |e, out| {
        let ack = e
            .submit_graph(graph.id, graph.clone().into_tasks().unwrap(), at(1), out)
            .unwrap();
        assert!(!ack.created, "the same graph again");
    });
    assert!(again.events.is_empty());
    let mut other = graph.clone();
    other.nodes[2].spec.payload = Bytes::from_static(b"changed");
    let mut out = Output::default();
    assert!(matches!(
        e.submit_graph(other.id, other.into_tasks().unwrap(), at(2), &mut out),
        Err(ApiError::Conflict(_))
    ));
    let view = e.state().graph_view(&graph.id).unwrap();
    let states: Vec<_> = view
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.state))
        .collect();
    assert_eq!(
        states,
        vec![
            ("extract", TaskState::Pending),
            ("transform", TaskState::Blocked),
            ("load", TaskState::Blocked)
        ]
    );
    assert_eq!(view.nodes[1].task, graph.id.node_id("transform"));
    assert_eq!(view.nodes[1].after, vec![graph.id.node_id("extract")]);
    let out = batch(&mut e, at(3), |e, out| {
        assert_eq!(e.cancel_graph(&graph.id, at(3), out).unwrap(), 3);
    });
    assert!(e.state().graph_view(&graph.id).unwrap().is_finished());
    assert!(
        !out.events
            .iter()
            .any(|ev| matches!(ev, Event::TasksCancelledByDependency { .. })),
        "cancelled as asked, not by a dependency"
    );
}

#[test]
fn a_needed_dependency_outlives_its_retention() {
    let a = spec("g");
    let b = spec("g").after(a.id);
    let mut e = engine();
    batch(&mut e, T0, |e, out| {
        e.submit(vec![a.clone(), b.clone()], T0, out).unwrap();
        e.pod_hello(1, hello("p1", &["g"], 1), T0, out).unwrap();
    });
    // B is held back: pause its group... by making A finish while no slot is free is
    // simpler: A's result is B's input, and B cannot run while A's pod is gone.
    finish(&mut e, &a, b"A", at(1));
    e.pod_disconnected(1, at(1));
    assert_eq!(
        state_of(&e, &b),
        TaskState::Running,
        "assigned before the pod left"
    );
    let later = at(2 * 3_600_000);
    let out = batch(&mut e, later, |_, _| {});
    assert!(
        e.state().task(&a.id).is_some(),
        "A stays while B may still run: {:?}",
        out.events
    );
    assert_eq!(e.inputs(&b.id).len(), 1);
}

#[test]
fn retention_goes_on_past_tasks_that_are_still_needed() {
    let a = spec("g");
    let b = spec("other").after(a.id);
    let x = spec("g");
    let mut e = engine();
    batch(&mut e, T0, |e, out| {
        e.submit(vec![a.clone(), b.clone(), x.clone()], T0, out)
            .unwrap();
        e.pod_hello(1, hello("p1", &["g"], 2), T0, out).unwrap();
    });
    finish(&mut e, &a, b"A", at(1));
    finish(&mut e, &x, b"X", at(2));
    // B is pending in a group no pod serves: A stays, X, finished after A, goes.
    assert_eq!(state_of(&e, &b), TaskState::Pending);
    let later = at(2 + 3_600_000 + 1);
    let out = batch(&mut e, later, |_, _| {});
    let forgotten = picked(&out, |ev| match ev {
        Event::TasksForgotten { tasks } => Some(tasks),
        _ => None,
    });
    assert_eq!(forgotten, vec![x.id]);
    assert!(e.state().task(&a.id).is_some());
    // Once B is gone (cancelled, then past its retention), A goes too.
    batch(&mut e, later, |e, out| {
        e.cancel(b.id, later, out).unwrap();
    });
    let much_later = at(2 * 3_600_000 + 10);
    batch(&mut e, much_later, |_, _| {});
    assert!(e.state().task(&a.id).is_none(), "released");
}

#[test]
fn a_task_cancelled_as_asked_after_its_dependency_cancelled_it_is_not_revived() {
    let (mut e, [a, b, c, d], _) = diamond();
    fail(&mut e, &a, at(1));
    assert_eq!(state_of(&e, &d), TaskState::Cancelled);
    let out = batch(&mut e, at(2), |e, out| {
        assert_eq!(
            e.cancel(d.id, at(2), out).unwrap(),
            mawex_api::CancelAck::Cancelled
        );
    });
    assert_eq!(out.events.len(), 1, "{:?}", out.events);
    batch(&mut e, at(3), |e, out| {
        e.retry_failed(&FailedFilter::ids(vec![a.id]), at(3), out);
    });
    assert_eq!(state_of(&e, &b), TaskState::Blocked);
    assert_eq!(state_of(&e, &c), TaskState::Blocked);
    assert_eq!(state_of(&e, &d), TaskState::Cancelled, "stays cancelled");
}

#[test]
fn a_failed_dependency_is_not_retried_while_what_runs_after_it_is_still_to_run() {
    let a = spec("g");
    let b =
        spec("g").after_dependency(Dependency::on(a.id).with_policy(DependencyPolicy::AllFinished));
    let mut e = engine();
    batch(&mut e, T0, |e, out| {
        e.submit(vec![a.clone(), b.clone()], T0, out).unwrap();
        e.pod_hello(1, hello("p1", &["g"], 1), T0, out).unwrap();
    });
    fail(&mut e, &a, at(1));
    assert_eq!(
        state_of(&e, &b),
        TaskState::Running,
        "B runs on A's failure"
    );
    batch(&mut e, at(2), |e, out| {
        assert_eq!(
            e.retry_failed(&FailedFilter::ids(vec![a.id]), at(2), out),
            0
        );
    });
    assert_eq!(state_of(&e, &a), TaskState::Failed, "B was judged on it");
    finish(&mut e, &b, b"B", at(3));
    batch(&mut e, at(4), |e, out| {
        assert_eq!(
            e.retry_failed(&FailedFilter::ids(vec![a.id]), at(4), out),
            1
        );
    });
}

#[test]
fn a_graph_submitted_again_after_a_node_was_forgotten_is_still_the_same() {
    let graph = GraphSpec::new(
        vec![
            GraphNode::new("a", spec("g")),
            GraphNode::new("b", spec("g")),
        ],
        Vec::new(),
    );
    let mut e = engine();
    batch(&mut e, T0, |e, out| {
        e.submit_graph(graph.id, graph.clone().into_tasks().unwrap(), T0, out)
            .unwrap();
        e.pod_hello(1, hello("p1", &["g"], 1), T0, out).unwrap();
    });
    let a = spec("g").with_id(graph.id.node_id("a"));
    finish(&mut e, &a, b"A", at(1));
    let later = at(1 + 3_600_000 + 1);
    batch(&mut e, later, |_, _| {});
    assert!(e.state().task(&a.id).is_none(), "a was forgotten");
    let mut out = Output::default();
    let ack = e
        .submit_graph(
            graph.id,
            graph.clone().into_tasks().unwrap(),
            later,
            &mut out,
        )
        .unwrap();
    assert!(!ack.created);
    let mut deduped = graph.clone().with_id(mawex_api::GraphId::new());
    deduped.nodes[0].spec = deduped.nodes[0]
        .spec
        .clone()
        .with_dedup("k", std::time::Duration::from_secs(1));
    assert!(matches!(
        e.submit_graph(deduped.id, deduped.into_tasks().unwrap(), later, &mut out),
        Err(ApiError::InvalidArgument(m)) if m.contains("dedup")
    ));
}

/// The order a one-slot pod is given `tasks` in, finishing each as it comes, until none is
/// left, after `submit` submitted them; and a replay of the events agrees with the engine.
fn run_order(submit: impl FnOnce(&mut Engine, &mut Output), tasks: &[&TaskSpec]) -> Vec<usize> {
    let mut e = engine();
    let mut events = batch(&mut e, T0, |e, out| {
        submit(e, out);
        e.pod_hello(1, hello("p1", &["g"], 1), T0, out).unwrap();
    })
    .events;
    let mut order = Vec::new();
    for step in 1..=tasks.len() as u64 {
        let Some(next) = tasks
            .iter()
            .position(|t| state_of(&e, t) == TaskState::Running)
        else {
            break;
        };
        order.push(next);
        events.extend(finish(&mut e, tasks[next], b"", at(step)).events);
    }
    assert_eq!(&replayed(&events), e.state());
    order
}

/// A graph of A and B (after A), submitted before X and Y, all of group `g`: the tasks
/// in the order `[a, b, x, y]`.
fn graph_then_two(
    a: TaskSpec,
    b: TaskSpec,
    x: TaskSpec,
    y: TaskSpec,
) -> (GraphSpec, [TaskSpec; 4]) {
    let graph = GraphSpec::new(
        vec![GraphNode::new("a", a), GraphNode::new("b", b)],
        vec![GraphEdge::new("a", "b")],
    );
    let tasks = graph.clone().into_tasks().unwrap();
    let (a, b) = (tasks[0].1.clone(), tasks[1].1.clone());
    (graph, [a, b, x, y])
}

#[test]
fn a_graphs_task_takes_its_dependencys_place_in_line_unless_other_keys_wait() {
    // One fairness key: B, unblocked by A, goes ahead of X and Y, submitted after the graph.
    let (graph, [a, b, x, y]) = graph_then_two(spec("g"), spec("g"), spec("g"), spec("g"));
    let submit = |e: &mut Engine, out: &mut Output| {
        let tasks = graph.clone().into_tasks().unwrap();
        e.submit_graph(graph.id, tasks, T0, out).unwrap();
        e.submit(vec![x.clone(), y.clone()], T0, out).unwrap();
    };
    assert_eq!(
        run_order(submit, &[&a, &b, &x, &y]),
        [0, 1, 2, 3],
        "A, then B in A's place, then X and Y"
    );

    // Another key has live tasks: B goes to the back of its own key's line (behind Z, of its
    // key), so keys keep taking turns: X and Y (the other key's) run before it.
    let (graph, [a, b, x, y]) = graph_then_two(
        spec("g").with_fairness_key("k1"),
        spec("g").with_fairness_key("k1"),
        spec("g").with_fairness_key("k2"),
        spec("g").with_fairness_key("k2"),
    );
    let z = spec("g").with_fairness_key("k1");
    let submit = |e: &mut Engine, out: &mut Output| {
        let tasks = graph.clone().into_tasks().unwrap();
        e.submit_graph(graph.id, tasks, T0, out).unwrap();
        e.submit(vec![x.clone(), y.clone(), z.clone()], T0, out)
            .unwrap();
    };
    assert_eq!(
        run_order(submit, &[&a, &b, &x, &y, &z]),
        [0, 2, 3, 4, 1],
        "A, X, Y, Z, then B, at the back of its key's line"
    );

    // A task that is no graph's node, submitted after X and Y to run after A, does not
    // jump them: it joins the line when it is unblocked.
    let (a, x, y) = (spec("g"), spec("g"), spec("g"));
    let d = spec("g").after(a.id);
    let submit = |e: &mut Engine, out: &mut Output| {
        e.submit(vec![a.clone(), x.clone(), y.clone(), d.clone()], T0, out)
            .unwrap();
    };
    assert_eq!(run_order(submit, &[&a, &x, &y, &d]), [0, 1, 2, 3]);
}
