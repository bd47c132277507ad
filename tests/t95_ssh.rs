//! Broadcasts to plain hosts over ssh (grifork's standalone mode), against a real `sshd` on
//! 127.0.0.1: every "host" is an alias of it with a directory of its own.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;
#[path = "common/sshd.rs"]
mod sshd;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use mawex::sandbox::{SandboxSet, SshSandbox, SshStep};
use mawex::{
    BroadcastSpec, BroadcastView, ErrorKind, Pod, PodConfig, RetryPolicy, Source, Strategy,
    TargetState,
};
use sshd::{files_under, LocalSshd};

const HOSTS: [&str; 6] = ["h1", "h2", "h3", "h4", "h5", "h6"];

/// A pod that runs host steps: `sync` copies the source host's directory to the target's
/// (run on the source, as `ssh parent rsync -a dir child:dir`), `sync-not-h3` fails on h3
/// with status 7.
fn deployer(m: &TestMaster, sshd: &LocalSshd, base: &Path) -> Pod {
    let cfg = sshd.client_config.display().to_string();
    let base = base.display();
    let rsync =
        format!("rsync -a -e 'ssh -F {cfg}' {base}/{{source}}/ {{target}}:{base}/{{target}}/");
    let mut ssh = SshSandbox::new().with_options(["-F", cfg.as_str()]);
    ssh.step("sync", SshStep::on_source(rsync.clone()))
        .unwrap()
        .step(
            "sync-not-h3",
            SshStep::on_source(format!("test {{target}} != h3 || exit 7; {rsync}")),
        )
        .unwrap();
    Pod::start(
        PodConfig::new(pod_id("deployer"), vec![group("deployers")]).with_slots(4),
        SandboxSet::new(Arc::new(ssh)),
        m.connector(),
    )
    .unwrap()
}

fn site(base: &Path) {
    let origin = base.join("origin");
    std::fs::create_dir_all(origin.join("assets/css")).unwrap();
    std::fs::write(origin.join("index.html"), "<h1>v1</h1>").unwrap();
    std::fs::write(origin.join("assets/css/site.css"), "body {}").unwrap();
    std::fs::write(origin.join("assets/logo.bin"), vec![7u8; 100_000]).unwrap();
    for host in HOSTS {
        std::fs::create_dir_all(base.join(host)).unwrap();
    }
}

/// Broadcasts the site to the six hosts with `handler` and `strategy` (no retries) and
/// returns the finished view and the hosts' base directory (alive while the daemon is);
/// `None` where sshd is not installed.
async fn broadcast_site(
    handler: &str,
    strategy: Strategy,
) -> Option<(BroadcastView, PathBuf, LocalSshd)> {
    let sshd = LocalSshd::start().await?;
    let base = sshd.scratch().join("hosts");
    site(&base);
    let m = TestMaster::start().await;
    let pod = deployer(&m, &sshd, &base);
    let proxy = m.proxy();
    let fired = proxy
        .fire_broadcast(
            BroadcastSpec::new("site", group("deployers"), handler)
                .with_hosts(HOSTS)
                .with_strategy(strategy)
                .with_retry(RetryPolicy::never()),
        )
        .await
        .unwrap();
    let view = proxy.wait_broadcast(fired.id, DEADLINE).await.unwrap();
    assert!(view.is_finished(), "{view:?}");
    pod.shutdown().await.unwrap();
    m.shutdown().await;
    Some((view, base, sshd))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_goes_down_a_tree_of_hosts_over_ssh() {
    let Some((view, base, _sshd)) = broadcast_site("sync", Strategy::Tree { branches: 2 }).await
    else {
        return;
    };
    let expected = files_under(&base.join("origin"));
    assert_eq!(expected.len(), 3);
    for t in &view.targets {
        assert_eq!(t.state, TargetState::Done, "{t:?}");
        assert_eq!(
            files_under(&base.join(t.pod.as_str())),
            expected,
            "{} has the site",
            t.pod
        );
    }
    let source = |host: &str| {
        view.targets
            .iter()
            .find(|t| t.pod.as_str() == host)
            .and_then(|t| t.source.clone())
    };
    let from = |host: &str| Some(Source::Pod(pod_id(host)));
    assert_eq!(source("h1"), Some(Source::Origin));
    assert_eq!(source("h2"), Some(Source::Origin));
    assert_eq!(source("h3"), from("h1"));
    assert_eq!(source("h4"), from("h1"));
    assert_eq!(source("h5"), from("h2"));
    assert_eq!(source("h6"), from("h2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_remote_command_fails_its_target_with_its_exit_code() {
    let Some((view, base, _sshd)) =
        broadcast_site("sync-not-h3", Strategy::Pull { per_source: 2 }).await
    else {
        return;
    };
    assert_eq!(view.done(), 5, "everyone else finishes");
    let h3 = view
        .targets
        .iter()
        .find(|t| t.pod.as_str() == "h3")
        .unwrap();
    assert_eq!(h3.state, TargetState::Failed);
    let error = h3.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::NonZeroExit, "{error}");
    assert!(error.message.contains("status 7"), "{error}");
    assert!(
        files_under(&base.join("h3")).is_empty(),
        "nothing copied to h3"
    );
    assert!(
        view.targets
            .iter()
            .all(|t| t.source != Some(Source::Pod(pod_id("h3")))),
        "a failed host is never a source"
    );
}

/// A target "host" that is an ssh option (`-F<file>`, whose ProxyCommand would run on the
/// pod) is refused: by the master when the broadcast is fired, and by the sandbox should one
/// reach it anyway. Nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_is_an_ssh_option_is_refused_and_runs_nothing() {
    use mawex::sandbox::{Sandbox, TaskInput};
    use tokio_util::sync::CancellationToken;

    let Some(sshd) = LocalSshd::start().await else {
        return;
    };
    let marker = sshd.scratch().join("proxy-command-ran");
    let evil = sshd.scratch().join("evil.conf");
    std::fs::write(
        &evil,
        format!("Host *\n  ProxyCommand touch {}\n", marker.display()),
    )
    .unwrap();
    let host = format!("-F{}", evil.display());

    let m = TestMaster::start().await;
    let fire = m
        .proxy()
        .fire_broadcast(
            BroadcastSpec::new("site", group("deployers"), "restart").with_hosts([host.as_str()]),
        )
        .await;
    assert!(
        matches!(&fire, Err(mawex::ApiError::InvalidArgument(msg)) if msg.contains("option")),
        "{fire:?}"
    );
    m.shutdown().await;

    let cfg = sshd.client_config.display().to_string();
    let mut ssh = SshSandbox::new().with_options(["-F", cfg.as_str()]);
    ssh.step("restart", SshStep::on_target("true")).unwrap();
    let mut input = TaskInput::for_test("restart", "");
    input.env = [
        ("MAWEX_SOURCE_HOST".to_owned(), "@origin".to_owned()),
        ("MAWEX_TARGET_HOST".to_owned(), host.clone()),
    ]
    .into_iter()
    .collect();
    let ran = ssh.run(input, CancellationToken::new()).await;
    assert!(ran.is_err(), "{ran:?}");
    assert!(
        !marker.exists(),
        "ssh read {host} as an option and ran its ProxyCommand"
    );
}
