//! The forked sandbox: this test binary is also the child it forks (its `main` calls
//! `run_if_child` first, as an application's would).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::time::Duration;

use mawex::sandbox::{forked, process::group_alive, ForkedSandbox};
use mawex::{
    Bytes, HandlerError, HandlerRegistry, Limits, RetryHint, Sandbox, SandboxError, TaskInput,
};
use tokio_util::sync::CancellationToken;

#[path = "common/own_main.rs"]
mod own_main;
#[path = "common/procs.rs"]
mod procs;

fn handlers() -> HandlerRegistry {
    let mut r = HandlerRegistry::new();
    r.register("upper", |t: TaskInput| async move {
        Ok(Bytes::from(t.payload.to_ascii_uppercase()))
    })
    .unwrap()
    .register("refuse", |_: TaskInput| async {
        Err(HandlerError::retry_after("busy", Duration::from_secs(7)))
    })
    .unwrap()
    .register("panic", |_: TaskInput| async { panic!("child panicked") })
    .unwrap()
    .register("abort", |_: TaskInput| async { std::process::abort() })
    .unwrap()
    .register("pid-then-hang", |_: TaskInput| async {
        println!("{}", std::process::id());
        std::future::pending::<()>().await;
        Ok(Bytes::new())
    })
    .unwrap()
    .register("pid", |_: TaskInput| async {
        Ok(Bytes::from(std::process::id().to_string()))
    })
    .unwrap()
    .register("echo", |t: TaskInput| async move { Ok(t.payload) })
    .unwrap()
    .register("fail", |_: TaskInput| async {
        Err(HandlerError::new("no"))
    })
    .unwrap()
    .register("crash", |_: TaskInput| async { std::process::abort() })
    .unwrap()
    .register("sleep", |_: TaskInput| async {
        std::future::pending::<()>().await;
        Ok(Bytes::new())
    })
    .unwrap()
    .register("big", |_: TaskInput| async {
        Ok(Bytes::from(vec![b'x'; 5000]))
    })
    .unwrap()
    .register("hog", |_: TaskInput| async {
        let v: Vec<u8> = vec![1; 3 << 30];
        Ok(Bytes::from(vec![v[v.len() - 1]]))
    })
    .unwrap();
    r
}

fn main() {
    forked::run_if_child(&handlers());
    let rt = tokio::runtime::Runtime::new().unwrap();
    own_main::run_tests(&[
        ("the_forked_sandbox_passes_the_conformance_suite", &|| {
            rt.block_on(async {
                let mut sandbox = ForkedSandbox::new().unwrap();
                sandbox.max_output_bytes = 1000;
                sandbox.grace = Duration::from_millis(200);
                mawex::sandbox::testing::sandbox_suite(
                    &sandbox,
                    mawex::sandbox::testing::Kind::Child,
                )
                .await
            })
        }),
        ("results_and_errors_cross_the_process_boundary", &|| {
            rt.block_on(results_and_errors())
        }),
        ("crashes_and_memory_limits_are_reported", &|| {
            rt.block_on(crashes())
        }),
        ("a_timeout_kills_the_child_and_its_group", &|| {
            rt.block_on(timeout())
        }),
        (
            "warm_children_serve_one_attempt_each_and_die_with_the_sandbox",
            &|| rt.block_on(warm_children()),
        ),
        (
            "the_fork_server_forks_a_fresh_child_per_attempt_and_cleans_up",
            &|| rt.block_on(fork_server()),
        ),
        ("spawned_children_pass_the_conformance_suite_too", &|| {
            rt.block_on(async {
                let mut sandbox = ForkedSandbox::new().unwrap();
                sandbox.fork_server = false;
                sandbox.max_output_bytes = 1000;
                sandbox.grace = Duration::from_millis(200);
                mawex::sandbox::testing::sandbox_suite(
                    &sandbox,
                    mawex::sandbox::testing::Kind::Child,
                )
                .await
            })
        }),
    ]);
}

async fn run(handler: &str, limits: Limits) -> Result<Bytes, SandboxError> {
    run_warm(handler, limits, 2).await
}

async fn run_warm(handler: &str, limits: Limits, warm: usize) -> Result<Bytes, SandboxError> {
    let mut sandbox = ForkedSandbox::new().unwrap();
    sandbox.fork_server = false;
    sandbox.warm = warm;
    sandbox.grace = Duration::from_millis(200);
    let mut input = TaskInput::for_test(handler, "abc");
    input.limits = limits;
    sandbox.run(input, CancellationToken::new()).await
}

async fn results_and_errors() {
    assert_eq!(run("upper", Limits::default()).await.unwrap(), "ABC");
    match run("refuse", Limits::default()).await {
        Err(SandboxError::Handler(e)) => {
            assert_eq!(e.message, "busy");
            assert_eq!(e.retry, RetryHint::After(Duration::from_secs(7)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        run("panic", Limits::default()).await,
        Err(SandboxError::Panicked("child panicked".into()))
    );
    assert_eq!(
        run("nope", Limits::default()).await,
        Err(SandboxError::UnknownHandler("nope".into()))
    );
}

async fn crashes() {
    assert!(matches!(
        run("abort", Limits::default()).await,
        Err(SandboxError::Crashed { signal: 6, .. })
    ));
    let limits = Limits::default().with_memory_bytes(512 << 20);
    match run("hog", limits).await {
        Err(SandboxError::OutOfMemory { limit, .. }) => assert_eq!(limit, 512 << 20),
        other => panic!("{other:?}"),
    }
}

/// Waits until `check` gives a value, or panics with `what` after 30 s.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The outputs of six `pid` attempts: each child's process id.
async fn six_attempt_pids(sandbox: &ForkedSandbox) -> std::collections::BTreeSet<String> {
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let out = sandbox
            .run(TaskInput::for_test("pid", ""), CancellationToken::new())
            .await
            .unwrap();
        pids.insert(String::from_utf8(out.to_vec()).unwrap());
    }
    pids
}

async fn timeout() {
    let me = std::process::id();
    let before: Vec<u32> = procs::children_of(me).iter().map(|p| p.pid).collect();
    let limits = Limits::default().with_timeout(Duration::from_millis(500));
    let started = std::time::Instant::now();
    // No warm children: every child of this call is the attempt's.
    assert_eq!(
        run_warm("pid-then-hang", limits, 0).await,
        Err(SandboxError::TimedOut(Duration::from_millis(500)))
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The child printed its pid (= its group) before hanging; nothing of it is left.
    // (The printed line is not returned on a timeout, so check every new process of ours.)
    for child in procs::children_of(me) {
        if !before.contains(&child.pid) {
            assert!(
                !group_alive(i32::try_from(child.pid).unwrap()),
                "a child of the test is still around: {}",
                child.stat
            );
        }
    }
}

/// The fork server: a fresh process per attempt, forked (not a child of the pod); after a
/// timeout the attempt's whole group is gone and reaped; the server dies with the sandbox.
async fn fork_server() {
    let mut sandbox = ForkedSandbox::new().unwrap();
    sandbox.grace = Duration::from_millis(200);
    let pids = six_attempt_pids(&sandbox).await;
    assert_eq!(pids.len(), 6, "a fresh process per attempt: {pids:?}");
    let server = sandbox.fork_server_pid().expect("a fork server runs");
    assert!(!pids.contains(&server.to_string()));

    let mut hang = TaskInput::for_test("pid-then-hang", "");
    hang.limits = Limits::default().with_timeout(Duration::from_millis(300));
    assert_eq!(
        sandbox.run(hang, CancellationToken::new()).await,
        Err(SandboxError::TimedOut(Duration::from_millis(300)))
    );
    eventually("the timed-out child to be gone and reaped", || {
        procs::children_of(server).is_empty().then_some(())
    })
    .await;
    // If the fork server dies (it does when its pod dies, even by kill -9), its running
    // children die with it.
    let running = {
        let sandbox = sandbox.clone();
        tokio::spawn(async move {
            sandbox
                .run(
                    TaskInput::for_test("pid-then-hang", ""),
                    CancellationToken::new(),
                )
                .await
        })
    };
    let child = eventually("the attempt to start", || {
        procs::children_of(server).first().map(|p| p.pid)
    })
    .await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &server.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let result = running.await.unwrap();
    assert!(result.is_err(), "{result:?}");
    eventually("the child to die with its fork server", || {
        (!procs::running(child)).then_some(())
    })
    .await;
    // The next attempt starts a new server.
    let out = sandbox
        .run(
            TaskInput::for_test("echo", "again"),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(out, "again");
    let server = sandbox.fork_server_pid().expect("a new fork server");

    drop(sandbox);
    eventually("the fork server to die with its sandbox", || {
        (!procs::running(server)).then_some(())
    })
    .await;
}

/// Warm children: one fresh process per attempt, the pool refilled, and every waiting
/// child killed and reaped with the sandbox.
async fn warm_children() {
    let mut sandbox = ForkedSandbox::new().unwrap();
    sandbox.fork_server = false;
    sandbox.warm = 3;
    let pids = six_attempt_pids(&sandbox).await;
    assert_eq!(pids.len(), 6, "a child serves one attempt: {pids:?}");
    let warm = eventually("the pool to refill to 3", || {
        Some(sandbox.warm_children()).filter(|w| w.len() == 3)
    })
    .await;
    for pid in &warm {
        assert!(
            !pids.contains(&pid.to_string()),
            "waiting children ran nothing yet"
        );
    }
    let limits = Limits::default().with_memory_bytes(256 << 20);
    let mut hog = TaskInput::for_test("hog", "");
    hog.limits = limits;
    assert!(
        matches!(
            sandbox.run(hog, CancellationToken::new()).await,
            Err(SandboxError::OutOfMemory { .. })
        ),
        "a warm child takes its attempt's memory limit"
    );
    let warm = sandbox.warm_children();
    drop(sandbox);
    // A refill still running holds the pool a moment longer; then every waiting child is
    // killed and reaped (no zombie either: it would still be listed as our child).
    let me = std::process::id();
    eventually("the waiting children to be killed and reaped", || {
        let ours: Vec<u32> = procs::children_of(me).iter().map(|p| p.pid).collect();
        warm.iter().all(|pid| !ours.contains(pid)).then_some(())
    })
    .await;
}
