//! `mawex tree` against a real `sshd` on 127.0.0.1, every "host" an alias of it with a
//! directory of its own: a directory goes down a binary tree to every host, `--dry-run`
//! prints the tree and runs nothing, and a host whose command fails is named, with exit 3.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

#[path = "../../../tests/common/tools.rs"]
mod common;
#[path = "../../../tests/common/sshd.rs"]
mod sshd;

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use sshd::{files_under, LocalSshd};

const HOSTS: [&str; 7] = ["h1", "h2", "h3", "h4", "h5", "h6", "h7"];

/// `mawex ARGS` in `dir`, bounded in time.
async fn mawex(dir: &Path, args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_mawex"))
        .args(args)
        .current_dir(dir)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(common::DEADLINE * 2, run)
        .await
        .expect("mawex tree ends in time")
        .unwrap()
}

fn rows(output: &Output) -> Vec<Value> {
    let text = String::from_utf8_lossy(&output.stdout);
    match serde_json::from_str(&text) {
        Ok(Value::Array(rows)) => rows,
        other => panic!("not a JSON array ({other:?}): {text}"),
    }
}

/// The row of `host`.
fn row<'a>(rows: &'a [Value], host: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["host"] == host)
        .unwrap_or_else(|| panic!("no row of {host}: {rows:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_goes_down_a_tree_of_hosts_and_a_dry_run_runs_nothing() {
    let Some(sshd) = LocalSshd::start().await else {
        return;
    };
    let base = sshd.scratch().join("hosts");
    let origin = base.join("origin");
    std::fs::create_dir_all(origin.join("assets")).unwrap();
    std::fs::write(origin.join("index.html"), "<h1>v2</h1>").unwrap();
    std::fs::write(origin.join("assets/app.bin"), vec![9u8; 50_000]).unwrap();
    for host in HOSTS {
        std::fs::create_dir_all(base.join(host)).unwrap();
    }
    let hosts = base.join("Hostsfile");
    std::fs::write(
        &hosts,
        format!(
            "# the web tier\n{}\n\n{} # last\n",
            HOSTS[..6].join("\n"),
            HOSTS[6]
        ),
    )
    .unwrap();
    let hosts = hosts.display().to_string();
    let config = sshd.client_config.display().to_string();
    let base_text = base.display();
    let rsync = format!(
        "rsync -a -e 'ssh -F {config}' {base_text}/{{source}}/ {{target}}:{base_text}/{{target}}/"
    );
    let tree = |command: String, extra: &'static [&'static str]| {
        let mut args: Vec<String> = [
            "--output",
            "json",
            "tree",
            "--hosts",
            &hosts,
            "--branches",
            "2",
            "--origin",
            "origin",
            "--ssh-config",
            &config,
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args.push("--".into());
        args.push(command);
        args
    };
    let scratch = sshd.scratch().to_path_buf();
    let run = |args: Vec<String>| {
        let scratch = scratch.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            mawex(&scratch, &args).await
        }
    };

    // The plan: waves and parents of a binary tree, the command as each host gets it.
    let planned = run(tree(rsync.clone(), &["--dry-run"])).await;
    assert!(planned.status.success(), "{planned:?}");
    let plan = rows(&planned);
    assert_eq!(plan.len(), 7);
    for (host, wave, parent) in [
        ("h1", 1, "origin"),
        ("h2", 1, "origin"),
        ("h3", 2, "h1"),
        ("h4", 2, "h1"),
        ("h5", 2, "h2"),
        ("h6", 2, "h2"),
        ("h7", 3, "h3"),
    ] {
        let r = row(&plan, host);
        assert_eq!(
            (r["wave"].as_u64(), r["parent"].as_str()),
            (Some(wave), Some(parent)),
            "{r}"
        );
        assert_eq!(r["runs_on"], parent);
        let command = r["command"].as_str().unwrap();
        assert!(
            command.contains(&format!("/{parent}/ {host}:")),
            "{host}: {command}"
        );
    }
    for host in HOSTS {
        assert!(
            files_under(&base.join(host)).is_empty(),
            "the dry run copied to {host}"
        );
    }

    // The run: every host has the directory, each from its parent.
    let ran = run(tree(rsync.clone(), &[])).await;
    assert!(ran.status.success(), "{ran:?}");
    let done = rows(&ran);
    let expected = files_under(&origin);
    assert_eq!(expected.len(), 2);
    for host in HOSTS {
        assert_eq!(
            files_under(&base.join(host)),
            expected,
            "{host} has the directory"
        );
        assert_eq!(row(&done, host)["state"], "done");
    }
    assert_eq!(row(&done, "h1")["parent"], "origin");
    assert_eq!(row(&done, "h4")["parent"], "h1");
    assert_eq!(row(&done, "h6")["parent"], "h2");

    // A host whose command fails is named with the command's status; the exit code is 3.
    std::fs::write(origin.join("index.html"), "<h1>v3</h1>").unwrap();
    let failing = format!("test {{target}} != h5 || exit 7; {rsync}");
    let failed = run(tree(failing, &[])).await;
    assert_eq!(failed.status.code(), Some(3), "{failed:?}");
    let after = rows(&failed);
    let h5 = row(&after, "h5");
    assert_eq!(h5["state"], "failed");
    assert!(h5["error"].as_str().unwrap().contains("status 7"), "{h5}");
    assert_eq!(
        std::fs::read_to_string(base.join("h5/index.html")).unwrap(),
        "<h1>v2</h1>",
        "h5 kept the old version"
    );
    assert_eq!(
        std::fs::read_to_string(base.join("h1/index.html")).unwrap(),
        "<h1>v3</h1>"
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("1 of 7 hosts did not get the command"),
        "{stderr}"
    );
}
