//! Discovery across a network: two network namespaces made by the test, joined by a veth
//! pair (root and iproute2 needed; CI runs as root and `.ci/run` installs iproute2). A master
//! in one announces itself; in the other, a worker and clients with no master address find
//! it with the right key and cluster name, and find nothing with another key or name.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

#[path = "../../../tests/common/tools.rs"]
mod common;
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use support::{line_with, run, start};

/// A network namespace held by a thread of this process: it ends with the test process,
/// even one that crashes, and takes its end of the veth pair with it.
struct Namespace {
    tid: i32,
    _held: mpsc::Sender<()>,
}

impl Namespace {
    fn new() -> Result<Namespace, String> {
        let (made, tid) = mpsc::channel();
        let (held, release) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let unshared = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map(|()| nix::unistd::gettid().as_raw())
                .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"));
            let _ = made.send(unshared);
            // Blocks until the test is done with the namespace.
            let _ = release.recv();
        });
        let tid = tid.recv().map_err(|e| e.to_string())??;
        Ok(Namespace { tid, _held: held })
    }

    /// `program args` run in this namespace (`nsenter` then execs it).
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .args(["-t", &self.tid.to_string(), "-n", "--", program])
            .stdin(Stdio::null());
        command
    }

    /// Runs `ip args` in the namespace; panics if it fails.
    fn ip(&self, args: &[&str]) {
        let out = self.command("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }
}

/// Two namespaces joined by a veth pair: 10.77.0.1 and 10.77.0.2, multicast routed over it.
fn two_namespaces() -> Option<(Namespace, Namespace)> {
    const TEST: &str = "discovery between network namespaces";
    for tool in ["ip", "nsenter"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|out| out.status.success());
        if !found {
            common::missing_tool(
                TEST,
                &format!("{tool} (apt-get install iproute2 util-linux)"),
            );
            return None;
        }
    }
    let (a, b) = match (Namespace::new(), Namespace::new()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            // Root is needed; CI runs as root, so there this fails the test.
            assert!(std::env::var_os("CI").is_none(), "{TEST}: {e}");
            common::skipped(TEST, &e);
            return None;
        }
    };
    let out = Command::new("ip")
        .args([
            "link",
            "add",
            "veth-a",
            "netns",
            &a.tid.to_string(),
            "type",
            "veth",
        ])
        .args(["peer", "name", "veth-b", "netns", &b.tid.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "a veth pair: {out:?}");
    for (ns, device, address) in [
        (&a, "veth-a", "10.77.0.1/24"),
        (&b, "veth-b", "10.77.0.2/24"),
    ] {
        ns.ip(&["addr", "add", address, "dev", device]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["link", "set", device, "up"]);
        ns.ip(&["route", "add", "224.0.0.0/4", "dev", device]);
    }
    Some((a, b))
}

/// `mawex --config CONFIG args` in `ns`.
fn mawex_in(ns: &Namespace, config: &Path, args: &[&str]) -> Command {
    let mut command = ns.command(env!("CARGO_BIN_EXE_mawex"));
    for (key, _) in std::env::vars() {
        if key.starts_with("MAWEX_") {
            command.env_remove(key);
        }
    }
    command.arg("--config").arg(config).args(args);
    command
}

fn config(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn clients_and_workers_find_the_master_by_its_signed_announcements_only() {
    let Some((a, b)) = two_namespaces() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = "blue-cluster-key-0123456789";
    let discovery = |cluster: &str, key: &str| {
        format!("[discovery]\ncluster = \"{cluster}\"\nkey = \"{key}\"\ninterval = \"300ms\"\nwait = \"3s\"\n")
    };
    let master = config(
        dir.path(),
        "master.toml",
        &format!(
            "[master]\nlisten = \"0.0.0.0:7070\"\ninsecure = true\ndata_dir = \"{}\"\n{}",
            dir.path().join("data").display(),
            discovery("blue", key)
        ),
    );
    let here = config(
        dir.path(),
        "here.toml",
        &format!(
            "[worker]\nid = \"pod-b\"\ngroups = [\"sh\"]\n[worker.handlers.upper]\nargv = [\"tr\", \"a-z\", \"A-Z\"]\n{}",
            discovery("blue", key)
        ),
    );
    let (_master, listening) = start(mawex_in(&a, &master, &["master"]));
    line_with(&listening, "listening on http://0.0.0.0:7070");

    // A worker and a client in the other namespace, neither given an address.
    let (_worker, _) = start(mawex_in(&b, &here, &["worker"]));
    let submitted = run(mawex_in(
        &b,
        &here,
        &[
            "--log-level",
            "info",
            "submit",
            "sh",
            "upper",
            "hello",
            "--wait",
            "--timeout",
            "30s",
        ],
    ));
    let stderr = String::from_utf8_lossy(&submitted.stderr);
    assert!(submitted.status.success(), "{submitted:?}");
    assert_eq!(String::from_utf8_lossy(&submitted.stdout), "HELLO");
    assert!(
        stderr.contains("http://10.77.0.1:7070"),
        "the master found at its announcement's address: {stderr}"
    );
    let pods = run(mawex_in(&b, &here, &["pods", "--output", "json"]));
    assert!(pods.status.success(), "{pods:?}");
    assert!(String::from_utf8_lossy(&pods.stdout).contains("\"pod-b\""));

    // Another key, or another cluster's name: nothing is found, and the error says what.
    for (name, cluster, key) in [
        ("other-key.toml", "blue", "not-the-blue-key-0123456789"),
        ("other-name.toml", "green", key),
    ] {
        let other = config(dir.path(), name, &discovery(cluster, key));
        let refused = run(mawex_in(&b, &other, &["groups"]));
        assert_eq!(refused.status.code(), Some(1), "{name}: {refused:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains(&format!(
                "no master of cluster \"{cluster}\" announced itself"
            )),
            "{name}: {stderr}"
        );
    }
}
