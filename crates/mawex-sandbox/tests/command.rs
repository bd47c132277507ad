//! The command sandbox against real processes.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::Path;
use std::time::Duration;

use mawex_api::Limits;
use mawex_sandbox::process::group_alive;
use mawex_sandbox::{CommandSandbox, CommandSpec, Sandbox, SandboxError, TaskInput};
use tokio_util::sync::CancellationToken;

fn sh(script: &str) -> CommandSpec {
    CommandSpec::new(["/bin/sh", "-c", script])
}

fn sandbox() -> CommandSandbox {
    let mut s = CommandSandbox::new();
    s.max_output_bytes = 1000;
    s.stderr_tail_bytes = 100;
    s.grace = Duration::from_millis(200);
    s.command("cat", CommandSpec::new(["/bin/cat"])).unwrap();
    s.command(
        "env",
        sh("echo \"home=$HOME mine=$MINE\"").env("MINE", "yes"),
    )
    .unwrap();
    s.command(
        "attempt-env",
        sh("echo \"pod=$MAWEX_SOURCE_POD preload=$LD_PRELOAD path=$PATH listed=$LISTED\"")
            .from_attempt("LISTED"),
    )
    .unwrap();
    s.command("fail", sh("echo 'it broke' >&2; exit 3"))
        .unwrap();
    s.command("segv", sh("kill -SEGV $$")).unwrap();
    s.command("big-out", sh("head -c 5000 /dev/zero")).unwrap();
    s.command(
        "big-err",
        sh("head -c 200000 /dev/zero | tr '\\0' x >&2; exit 1"),
    )
    .unwrap();
    // Records its group (its own pid) in the file named by the payload, starts a background
    // child in the group, then waits forever.
    s.command(
        "hang",
        sh("read f; echo $$ > \"$f\"; sleep 600 & sleep 600"),
    )
    .unwrap();
    s.command(
        "stubborn",
        sh("read f; trap '' TERM; echo $$ > \"$f\"; while :; do sleep 1; done"),
    )
    .unwrap();
    s.command(
        "hog",
        CommandSpec::new(["python3", "-c", "x = bytearray(2 * 1024 ** 3)"]).inherit("PATH"),
    )
    .unwrap();
    s
}

async fn run(handler: &str, payload: &str, limits: Limits) -> Result<bytes::Bytes, SandboxError> {
    let mut input = TaskInput::for_test(handler, payload.to_owned());
    input.limits = limits;
    sandbox().run(input, CancellationToken::new()).await
}

#[tokio::test]
async fn success_takes_stdin_and_gives_stdout_with_an_explicit_environment() {
    assert_eq!(
        run("cat", "hello", Limits::default()).await.unwrap(),
        "hello"
    );
    assert_eq!(
        run("env", "", Limits::default()).await.unwrap(),
        "home= mine=yes\n",
        "nothing of the pod's environment leaks in"
    );
}

/// Only `MAWEX_*` variables and those the operator listed come from the attempt: whoever
/// shapes an attempt cannot set `LD_PRELOAD` or `PATH` for the pod's programs.
#[tokio::test]
async fn attempt_variables_are_limited_to_mawex_and_listed_names() {
    let mut input = TaskInput::for_test("attempt-env", "");
    input.env = [
        ("MAWEX_SOURCE_POD", "p1"),
        ("LD_PRELOAD", "/tmp/evil.so"),
        ("PATH", "/tmp/evil"),
        ("LISTED", "yes"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let out = sandbox()
        .run(input, CancellationToken::new())
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("pod=p1 preload= path="), "{out}");
    assert!(out.ends_with(" listed=yes\n"), "{out}");
    // The shell has a default PATH of its own; the attempt's never arrives.
    assert!(!out.contains("/tmp/evil"), "{out}");
}

#[tokio::test]
async fn failures_carry_their_kind_and_stderr() {
    match run("fail", "", Limits::default()).await {
        Err(SandboxError::NonZeroExit { code, stderr }) => {
            assert_eq!(code, 3);
            assert_eq!(stderr, "it broke\n");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        run("segv", "", Limits::default()).await,
        Err(SandboxError::Crashed { signal: 11, .. })
    ));
    assert!(matches!(
        run("nope", "", Limits::default()).await,
        Err(SandboxError::UnknownHandler(_))
    ));
}

#[tokio::test]
async fn large_outputs_are_bounded_not_buffered_whole() {
    assert_eq!(
        run("big-out", "", Limits::default()).await,
        Err(SandboxError::OutputTooLarge { limit: 1000 })
    );
    match run("big-err", "", Limits::default()).await {
        Err(SandboxError::NonZeroExit { stderr, .. }) => {
            assert!(stderr.starts_with('…'), "marked as cut");
            assert!(stderr.chars().count() <= 101, "only the tail is kept");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_memory_limit_is_enforced_and_reported() {
    let limits = Limits::default().with_memory_bytes(256 * 1024 * 1024);
    match run("hog", "", limits).await {
        Err(SandboxError::OutOfMemory { limit, .. }) => assert_eq!(limit, 256 * 1024 * 1024),
        other => panic!("{other:?}"),
    }
}

fn pid_in(file: &Path) -> i32 {
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

async fn wait_for_file(file: &Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !file.exists() || std::fs::read_to_string(file).unwrap().trim().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the child never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn timeout_and_cancel_kill_the_whole_group_and_leave_no_zombie() {
    let dir = tempfile::tempdir().unwrap();

    // Timeout.
    let file = dir.path().join("timeout");
    let limits = Limits::default().with_timeout(Duration::from_millis(300));
    let r = run("hang", &format!("{}\n", file.display()), limits).await;
    assert_eq!(r, Err(SandboxError::TimedOut(Duration::from_millis(300))));
    let pgid = pid_in(&file);
    assert!(!group_alive(pgid), "no process of the group is left");
    assert!(
        !Path::new(&format!("/proc/{pgid}")).exists(),
        "the leader was reaped"
    );

    // Cancel, with a child that ignores SIGTERM: SIGKILL after the grace period.
    let file = dir.path().join("cancel");
    let cancel = CancellationToken::new();
    let input = TaskInput::for_test("stubborn", format!("{}\n", file.display()));
    let s = sandbox();
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move { s.run(input, cancel).await }
    });
    wait_for_file(&file).await;
    cancel.cancel();
    assert_eq!(task.await.unwrap(), Err(SandboxError::Cancelled));
    let pgid = pid_in(&file);
    assert!(!group_alive(pgid));
    assert!(!Path::new(&format!("/proc/{pgid}")).exists());
}

#[tokio::test]
async fn an_abandoned_attempt_takes_its_group_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dropped");
    let input = TaskInput::for_test("hang", format!("{}\n", file.display()));
    let s = sandbox();
    let task = tokio::spawn(async move { s.run(input, CancellationToken::new()).await });
    wait_for_file(&file).await;
    let pgid = pid_in(&file);
    assert!(group_alive(pgid));
    task.abort();
    let _ = task.await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // The killed processes are gone once reaped (by tokio for the leader, by init or the
    // subreaper for the rest); what matters is that none is running.
    loop {
        let running = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|stat| {
                let rest = &stat[stat.rfind(')').unwrap() + 2..];
                let fields: Vec<&str> = rest.split(' ').collect();
                fields[2] == pgid.to_string() && fields[0] != "Z"
            })
            .count();
        if running == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{running} processes of the group still run"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_command_sandbox_passes_the_conformance_suite() {
    let mut s = CommandSandbox::new();
    s.max_output_bytes = 1000;
    s.grace = Duration::from_millis(200);
    s.command("echo", CommandSpec::new(["/bin/cat"])).unwrap();
    s.command("fail", sh("exit 1")).unwrap();
    s.command("crash", sh("kill -SEGV $$")).unwrap();
    s.command("sleep", sh("sleep 600")).unwrap();
    s.command("big", sh("head -c 5000 /dev/zero")).unwrap();
    s.command(
        "hog",
        CommandSpec::new(["python3", "-c", "x = bytearray(2 * 1024 ** 3)"]).inherit("PATH"),
    )
    .unwrap();
    mawex_sandbox::testing::sandbox_suite(&s, mawex_sandbox::testing::Kind::Child).await;
}
