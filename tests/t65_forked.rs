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
    ]);
}

async fn run(handler: &str, limits: Limits) -> Result<Bytes, SandboxError> {
    let mut sandbox = ForkedSandbox::new().unwrap();
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

async fn timeout() {
    let limits = Limits::default().with_timeout(Duration::from_millis(500));
    let started = std::time::Instant::now();
    assert_eq!(
        run("pid-then-hang", limits).await,
        Err(SandboxError::TimedOut(Duration::from_millis(500)))
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The child printed its pid (= its group) before hanging; nothing of it is left.
    // (The printed line is not returned on a timeout, so check every process of ours.)
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let parent: u32 = fields[1].parse().unwrap();
        if parent == me {
            assert!(
                !group_alive(pid),
                "a child of the test is still around: {stat}"
            );
        }
    }
}
