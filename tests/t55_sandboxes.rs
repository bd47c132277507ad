//! A pod offering several sandboxes: per-group defaults, tasks naming one, and a clear error
//! for a sandbox the pod does not offer.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mawex::sandbox::{CommandSandbox, CommandSpec, SandboxSet};
use mawex::{ErrorKind, InProcess, Limits, Outcome, Pod, PodConfig, RetryPolicy, TaskSpec};

/// The instrumented handlers in-process, and `name` as a command in a sandbox named
/// `command`, which is `shell`'s default.
fn in_process_and_command(
    handlers: mawex::HandlerRegistry,
    name: &str,
    command: CommandSpec,
    shell: &mawex::GroupName,
) -> SandboxSet {
    let mut commands = CommandSandbox::new();
    commands.command(name, command).unwrap();
    SandboxSet::new(Arc::new(InProcess::new(handlers)))
        .with("command", Arc::new(commands))
        .group_default(shell.clone(), "command")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_in_the_sandbox_their_group_or_they_name() {
    let m = TestMaster::start().await;
    let (shell, plain) = (group("shell"), group("plain"));
    let (handlers, runs, _) = instrumented();
    let sandboxes = in_process_and_command(
        handlers,
        "echo",
        CommandSpec::new(["/bin/sh", "-c", "printf 'from a process: '; cat"]),
        &shell,
    );
    let pod = Pod::start(
        PodConfig::new(
            pod_id("p-mixed-sandboxes"),
            vec![shell.clone(), plain.clone()],
        ),
        sandboxes,
        m.connector(),
    )
    .unwrap();

    let by_group = TaskSpec::new(shell.clone(), "echo", "hi");
    let in_process = TaskSpec::new(plain.clone(), "echo", "hi");
    let named = TaskSpec::new(plain.clone(), "echo", "hi").with_sandbox("command");
    let missing = TaskSpec::new(plain.clone(), "echo", "hi").with_sandbox("kubernetes");
    m.proxy()
        .submit_many(vec![
            by_group.clone(),
            in_process.clone(),
            named.clone(),
            missing.clone(),
        ])
        .await
        .unwrap();

    let out = |r: mawex::TaskResult| match r.outcome {
        Outcome::Succeeded(b) => String::from_utf8(b.to_vec()).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        out(m.proxy().await_result(by_group.id).await.unwrap()),
        "from a process: hi"
    );
    assert_eq!(
        out(m.proxy().await_result(in_process.id).await.unwrap()),
        "hi"
    );
    assert_eq!(
        out(m.proxy().await_result(named.id).await.unwrap()),
        "from a process: hi"
    );
    assert_eq!(runs.count(&in_process.id), 1);
    assert_eq!(runs.count(&named.id), 0, "not run in-process");

    let r = m.proxy().await_result(missing.id).await.unwrap();
    match r.outcome {
        Outcome::Failed(e) => {
            assert_eq!(e.kind, ErrorKind::Sandbox);
            assert!(e.message.contains("kubernetes"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.attempt.0, 1, "failed at once, not retried");
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

/// A pod's default limits apply to tasks that set none; a task's own limit wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_default_limits_apply_where_the_task_sets_none() {
    let m = TestMaster::start().await;
    let g = group("limited");
    let (handlers, _, _) = instrumented();
    let pod = Pod::start(
        PodConfig::new(pod_id("p-limited"), vec![g.clone()])
            .with_slots(2)
            .with_default_limits(Limits::default().with_timeout(Duration::from_millis(200))),
        Arc::new(InProcess::new(handlers)),
        m.connector(),
    )
    .unwrap();
    let no_retry = RetryPolicy::new(1);
    let defaulted = TaskSpec::new(g.clone(), "sleep", "5000").with_retry(no_retry);
    let mut own = TaskSpec::new(g.clone(), "sleep", "500").with_retry(no_retry);
    own.limits = Limits::default().with_timeout(Duration::from_secs(20));
    m.proxy()
        .submit_many(vec![defaulted.clone(), own.clone()])
        .await
        .unwrap();
    match m.proxy().await_result(defaulted.id).await.unwrap().outcome {
        Outcome::Failed(e) => assert_eq!(e.kind, ErrorKind::TimedOut, "{e}"),
        other => panic!("the pod's timeout applies: {other:?}"),
    }
    match m.proxy().await_result(own.id).await.unwrap().outcome {
        Outcome::Succeeded(out) => assert_eq!(out, "500"),
        other => panic!("the task's own timeout wins: {other:?}"),
    }
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

/// A pod's ceilings bound every attempt, in-process or in a child process: a task asking
/// for an hour gets the pod's 200 ms, and one asking for less keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cannot_raise_the_pods_ceilings() {
    let m = TestMaster::start().await;
    let (inline, shell) = (group("capped"), group("capped-shell"));
    let (handlers, _, _) = instrumented();
    let sandboxes = in_process_and_command(
        handlers,
        "sleep",
        CommandSpec::new(["/bin/sleep", "30"]),
        &shell,
    );
    let pod = Pod::start(
        PodConfig::new(pod_id("p-capped"), vec![inline.clone(), shell.clone()])
            .with_slots(3)
            .with_max_limits(Limits::default().with_timeout(Duration::from_millis(200))),
        sandboxes,
        m.connector(),
    )
    .unwrap();
    let hour = Limits::default().with_timeout(Duration::from_secs(3600));
    let mut greedy =
        TaskSpec::new(inline.clone(), "sleep", "30000").with_retry(RetryPolicy::new(1));
    greedy.limits = hour.clone();
    let mut greedy_child = TaskSpec::new(shell, "sleep", "").with_retry(RetryPolicy::new(1));
    greedy_child.limits = hour;
    let mut modest = TaskSpec::new(inline, "sleep", "5000").with_retry(RetryPolicy::new(1));
    modest.limits = Limits::default().with_timeout(Duration::from_millis(50));
    m.proxy()
        .submit_many(vec![greedy.clone(), greedy_child.clone(), modest.clone()])
        .await
        .unwrap();
    for spec in [&greedy, &greedy_child, &modest] {
        let result = m.proxy().await_result(spec.id).await.unwrap();
        match result.outcome {
            Outcome::Failed(e) => {
                assert_eq!(e.kind, ErrorKind::TimedOut, "{e}");
                let expected = if spec.id == modest.id {
                    "50ms"
                } else {
                    "200ms"
                };
                assert!(e.message.contains(expected), "{e}");
            }
            other => panic!("the ceiling applies: {other:?}"),
        }
    }
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}
