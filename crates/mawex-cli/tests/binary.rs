//! The `mawex` binary end to end: a `mawex master` and two `mawex worker`s as real processes
//! on loopback, tasks submitted with `mawex submit`, every exit code, JSON output, batch
//! submits from stdin; and the configuration's layers and errors.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

fn mawex() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mawex"));
    // Only what a test sets: no stray `MAWEX_*__*` of the machine's.
    for (key, _) in std::env::vars() {
        if key.starts_with("MAWEX_") {
            command.env_remove(key);
        }
    }
    command
}

/// A process stopped when the test ends, however it ends: SIGTERM (it drains), then SIGKILL
/// if it has not ended within a few seconds.
struct Running(Child);

impl Running {
    /// SIGTERM, and how the process ended, if it did within a few seconds (then killed).
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.terminate();
        }
    }
}

/// A config file `name` in `dir` for a cluster of one on `master` and workers of group
/// `sh`. Written once: a process starting meanwhile must never read it half-written.
fn write_config(dir: &Path, name: &str, master: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            r#"
[client]
masters = ["{master}"]
timeout = "20s"

[master]
listen = "127.0.0.1:0"
data_dir = "{data}"

[worker]
groups = ["sh"]
slots = 2
shutdown_grace = "1s"

[worker.handlers.upper]
argv = ["tr", "a-z", "A-Z"]

[worker.handlers.fail]
argv = ["sh", "-c", "echo broken >&2; exit 3"]

[worker.handlers.slow]
argv = ["sleep", "30"]

[worker.handlers.nap]
argv = ["sleep", "1"]

[worker.handlers.first-input]
argv = ["sh", "-c", 'cat "$MAWEX_INPUTS_DIR/$(head -n 1 "$MAWEX_INPUTS_DIR/inputs")"']

[worker.handlers.count]
argv = ["sh", "-c", "seq 1 10000; echo done >&2"]

[worker.handlers.tick]
argv = ["sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 0.2; done"]
"#,
            data = dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

/// Starts `mawex worker --id ID` (labelled `name=ID`) on `config`.
fn start_worker(config: &Path, id: &str) -> Running {
    Running(
        mawex()
            .arg("--config")
            .arg(config)
            .args(["worker", "--id", id, "--label", &format!("name={id}")])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

/// Starts `mawex master` and returns it with the endpoint it printed.
fn start_master(dir: &Path) -> (Running, String) {
    start_serving(dir, "master")
}

/// Starts `mawex COMMAND` (`master` or `standalone`) and returns it with the endpoint its
/// master printed.
fn start_serving(dir: &Path, command: &str) -> (Running, String) {
    let config = write_config(dir, "master.toml", "http://127.0.0.1:1");
    serve_with(&config, &[command])
}

/// Starts `mawex --config CONFIG ARGS…` and returns it with the endpoint its master printed.
fn serve_with(config: &Path, args: &[&str]) -> (Running, String) {
    let mut child = mawex()
        .arg("--config")
        .arg(config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Stopped with the test even if it never says where it listens.
    let master = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(endpoint) = line.strip_prefix("mawex master listening on ") {
                let _ = tx.send(endpoint.to_owned());
            }
        }
    });
    let endpoint = rx
        .recv_timeout(DEADLINE)
        .expect("the master prints where it listens");
    (master, endpoint)
}

/// `mawex` with the config of `dir` pointed at `endpoint` (`mawex.toml`, written once before),
/// run to its end (bounded).
fn run(dir: &Path, endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let config = dir.join("mawex.toml");
    assert!(
        std::fs::read_to_string(&config).is_ok_and(|text| text.contains(endpoint)),
        "mawex.toml points at {endpoint}"
    );
    run_with(&config, args, stdin)
}

/// `mawex --config CONFIG ARGS…` with `stdin`, run to its end (bounded). Its output is read
/// as it comes (a full pipe never stalls it).
fn run_with(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = mawex()
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("mawex {args:?} did not finish");
        }
    }
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("an exit code, not a signal")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_master_two_workers_and_every_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let (_master, endpoint) = start_master(dir.path());
    let config = write_config(dir.path(), "mawex.toml", &endpoint);
    let _workers = [start_worker(&config, "w1"), start_worker(&config, "w2")];
    let dir = dir.path();

    // Both pods show up, with their groups, slots and labels.
    let started = Instant::now();
    let pods = loop {
        let listed = run(dir, &endpoint, &["pods", "-o", "json"], None);
        assert_eq!(code(&listed), 0, "{}", stderr(&listed));
        let pods: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
        if pods.len() == 2 {
            break pods;
        }
        assert!(started.elapsed() < DEADLINE, "two pods connect: {pods:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    for (pod, id) in pods.iter().zip(["w1", "w2"]) {
        assert_eq!(pod["id"], id);
        assert_eq!(pod["groups"], serde_json::json!(["sh"]));
        assert_eq!(pod["slots"], 2);
        assert_eq!(pod["labels"]["name"], id);
    }
    let drained = run(dir, &endpoint, &["pods", "drain", "nobody"], None);
    assert_eq!(code(&drained), 1, "{}", stderr(&drained));
    let table = stdout(&run(dir, &endpoint, &["pods"], None));
    assert!(
        table.lines().next().unwrap().contains("RUNNING") && table.contains("name=w2"),
        "{table}"
    );

    // 0: the command's output, as it printed it.
    let done = run(
        dir,
        &endpoint,
        &["submit", "sh", "upper", "hello", "--wait"],
        None,
    );
    assert_eq!(code(&done), 0, "{}", stderr(&done));
    assert_eq!(stdout(&done), "HELLO");
    // The payload from stdin.
    let done = run(
        dir,
        &endpoint,
        &["submit", "sh", "upper", "-", "--wait"],
        Some("piped"),
    );
    assert_eq!((code(&done), stdout(&done)), (0, "PIPED".to_owned()));

    // 3: the task failed (after its retries), and says why.
    let failed = run(
        dir,
        &endpoint,
        &["submit", "sh", "fail", "--retry", "1", "--wait"],
        None,
    );
    assert_eq!(code(&failed), 3, "{}", stderr(&failed));
    assert!(stderr(&failed).contains("broken"), "{}", stderr(&failed));

    // 4: the wait timed out; the task goes on.
    let slow = run(
        dir,
        &endpoint,
        &["submit", "sh", "slow", "--wait", "--timeout", "300ms"],
        None,
    );
    assert_eq!(code(&slow), 4, "{}", stderr(&slow));
    let slow_id = stderr(&slow)
        .lines()
        .find_map(|line| line.strip_prefix("submitted "))
        .and_then(|rest| rest.split(';').next())
        .expect("the submit says which task it waits for")
        .to_owned();

    // 5: the task waited for is cancelled meanwhile.
    let waiting = std::thread::spawn({
        let (dir, endpoint) = (dir.to_path_buf(), endpoint.clone());
        move || run(&dir, &endpoint, &["submit", "sh", "slow", "--wait"], None)
    });
    let started = Instant::now();
    let listed = loop {
        let listed = run(
            dir,
            &endpoint,
            &["list", "--state", "running", "-o", "json"],
            None,
        );
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
        let other: Vec<String> = rows
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .filter(|id| *id != slow_id)
            .collect();
        if let Some(id) = other.first() {
            break id.clone();
        }
        assert!(started.elapsed() < DEADLINE, "the second slow task runs");
        std::thread::sleep(Duration::from_millis(50));
    };
    let cancel = run(dir, &endpoint, &["cancel", &listed], None);
    assert_eq!(code(&cancel), 0, "{}", stderr(&cancel));
    let cancelled = waiting.join().unwrap();
    assert_eq!(code(&cancelled), 5, "{}", stderr(&cancelled));

    // 2: usage; 1: an error from the master.
    assert_eq!(code(&run(dir, &endpoint, &["submit", "--bogus"], None)), 2);
    assert_eq!(code(&run(dir, &endpoint, &["get", "not-an-id"], None)), 2);
    let unknown = run(
        dir,
        &endpoint,
        &["get", "0190b7d0-0000-7000-8000-000000000000"],
        None,
    );
    assert_eq!(code(&unknown), 1);
    assert!(
        stderr(&unknown).contains("not found"),
        "{}",
        stderr(&unknown)
    );

    // Batch submit from stdin, JSON output; the tasks then run, as `get -o json` shows.
    let batch = run(
        dir,
        &endpoint,
        &["submit", "--batch", "-o", "json"],
        Some("{\"group\":\"sh\",\"handler\":\"upper\",\"payload\":\"one\"}\n\n{\"group\":\"sh\",\"handler\":\"upper\",\"payload\":\"two\",\"priority\":5}\n"),
    );
    assert_eq!(code(&batch), 0, "{}", stderr(&batch));
    let acks: Vec<serde_json::Value> = serde_json::from_slice(&batch.stdout).unwrap();
    assert_eq!(acks.len(), 2);
    for (ack, expected) in acks.iter().zip(["ONE", "TWO"]) {
        let id = ack["id"].as_str().unwrap();
        let started = Instant::now();
        loop {
            let got = run(dir, &endpoint, &["get", id, "-o", "jsonl"], None);
            let view: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
            if view["state"] == "succeeded" {
                assert_eq!(view["output"], expected);
                break;
            }
            assert!(started.elapsed() < DEADLINE, "{id} finishes: {view}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // A bad line refuses the whole batch, naming the line.
    let bad = run(
        dir,
        &endpoint,
        &["submit", "--batch"],
        Some("{\"group\":\"sh\",\"handler\":\"upper\"}\n{\"group\":\"sh\"}\n"),
    );
    assert_eq!(code(&bad), 2);
    assert!(stderr(&bad).contains("stdin line 2"), "{}", stderr(&bad));

    // The failed queue: a summary, a dry run that counts, a retry that needs --yes.
    let summary = run(dir, &endpoint, &["failed", "-o", "json"], None);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&summary.stdout).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["kind"], "non-zero-exit");
    let dry = run(dir, &endpoint, &["failed", "purge", "--dry-run"], None);
    assert_eq!(stdout(&dry).trim(), "1");
    assert_eq!(code(&run(dir, &endpoint, &["failed", "purge"], None)), 2);
    let purged = run(dir, &endpoint, &["failed", "purge", "--yes"], None);
    assert_eq!(
        (code(&purged), stdout(&purged).trim().to_owned()),
        (0, "1".into())
    );

    // Groups: paused, a task waits; moved and preferred; limits set and shown.
    let ok = |args: &[&str]| {
        let out = run(dir, &endpoint, args, None);
        assert_eq!(code(&out), 0, "mawex {args:?}: {}", stderr(&out));
        out
    };
    let json =
        |args: &[&str]| -> serde_json::Value { serde_json::from_slice(&ok(args).stdout).unwrap() };
    ok(&["groups", "pause", "sh"]);
    let waiting = json(&["submit", "sh", "upper", "wait", "-o", "json"]);
    let waiting = waiting[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(stdout(&ok(&["prefer", &waiting])).trim(), "1");
    assert_eq!(
        stdout(&ok(&["move", "--to", "elsewhere", &waiting])).trim(),
        "1"
    );
    ok(&["groups", "ceiling", "sh", "1"]);
    ok(&["groups", "rate", "sh", "5"]);
    ok(&["groups", "retry", "sh", "2"]);
    ok(&["groups", "resume", "sh"]);
    let groups = json(&["groups", "-o", "json"]);
    let named = |name: &str| {
        groups
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["group"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {groups}"))
    };
    assert_eq!(named("elsewhere")["pending"], 1);
    let sh = named("sh");
    assert_eq!(
        [
            &sh["paused"],
            &sh["ceiling"],
            &sh["rate"],
            &sh["retry_attempts"]
        ],
        [
            &serde_json::json!(false),
            &serde_json::json!(1),
            &serde_json::json!(5),
            &serde_json::json!(2)
        ],
        "{sh}"
    );
    assert!(sh["succeeded"].as_u64().unwrap() >= 4, "{sh}");
    assert_eq!(
        code(&run(
            dir,
            &endpoint,
            &["groups", "rate", "sh", "lots"],
            None
        )),
        2
    );
    ok(&["groups", "ceiling", "sh", "off"]);
    ok(&["groups", "rate", "sh", "off"]);

    // A schedule fires every second until it is paused, and is gone once deleted.
    ok(&["cron", "add", "tick", "* * * * * *", "sh", "upper", "tick"]);
    let fired = || -> u64 {
        let rows = json(&["cron", "list", "-o", "json"]);
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "tick")
            .map_or(0, |r| r["fired"].as_u64().unwrap())
    };
    let started = Instant::now();
    while fired() == 0 {
        assert!(started.elapsed() < DEADLINE, "the schedule fires");
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(&["cron", "pause", "tick"]);
    assert_eq!(json(&["cron", "list", "-o", "json"])[0]["paused"], true);
    ok(&["cron", "delete", "tick"]);
    assert_eq!(json(&["cron", "list", "-o", "json"]), serde_json::json!([]));
    let refused = run(
        dir,
        &endpoint,
        &["cron", "add", "bad", "not cron", "sh", "upper"],
        None,
    );
    assert_eq!(code(&refused), 1);
    assert!(stderr(&refused).contains("cron"), "{}", stderr(&refused));

    // Workflows: a graph from a file runs in order and is waited for; a failed node cancels
    // what runs after it (exit 3), which `graph status` shows; a task runs after another.
    let graph = dir.join("graph.toml");
    std::fs::write(
        &graph,
        "[[node]]\nname = \"extract\"\ngroup = \"sh\"\nhandler = \"upper\"\npayload = \"rows\"\n\
         [[node]]\nname = \"load\"\ngroup = \"sh\"\nhandler = \"first-input\"\nafter = [\"extract\"]\n",
    )
    .unwrap();
    let graph_path = graph.to_str().unwrap();
    let nodes = json(&["graph", "submit", graph_path, "--wait", "-o", "json"]);
    let states: Vec<(&str, &str)> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("extract", "succeeded"), ("load", "succeeded")]);
    assert_eq!(nodes[1]["after"], serde_json::json!(["extract"]));
    // The command that ran after `extract` read its output from its inputs directory.
    let load = json(&["get", nodes[1]["task"].as_str().unwrap(), "-o", "json"]);
    assert_eq!(load[0]["output"], "ROWS", "{load}");
    std::fs::write(
        &graph,
        "[[node]]\nname = \"broken\"\ngroup = \"sh\"\nhandler = \"fail\"\nretry = 1\n\
         [[node]]\nname = \"next\"\ngroup = \"sh\"\nhandler = \"upper\"\nafter = [\"broken\"]\n",
    )
    .unwrap();
    let submitted = json(&["graph", "submit", graph_path, "-o", "json"]);
    let graph_id = submitted[0]["id"].as_str().unwrap().to_owned();
    let waited = run(
        dir,
        &endpoint,
        &["graph", "status", &graph_id, "--wait"],
        None,
    );
    assert_eq!(code(&waited), 3, "{}", stderr(&waited));
    assert!(stderr(&waited).contains("broken"), "{}", stderr(&waited));
    let nodes = json(&["graph", "status", &graph_id, "-o", "json"]);
    assert_eq!(nodes[1]["state"], "cancelled");
    assert_eq!(
        code(&run(dir, &endpoint, &["graph", "cancel", &graph_id], None)),
        0
    );
    let bad = run(
        dir,
        &endpoint,
        &["graph", "submit", "/nonexistent.toml"],
        None,
    );
    assert_eq!(code(&bad), 1, "{}", stderr(&bad));
    let first = json(&["submit", "sh", "upper", "first", "-o", "json"]);
    let first = first[0]["id"].as_str().unwrap().to_owned();
    let then = run(
        dir,
        &endpoint,
        &["submit", "sh", "upper", "then", "--after", &first, "--wait"],
        None,
    );
    assert_eq!((code(&then), stdout(&then)), (0, "THEN".to_owned()));

    // Live output: a command's 10,000 lines are kept as a bounded tail, the last ones last;
    // `logs -f` follows a running task and ends when it finishes.
    let count = run(dir, &endpoint, &["submit", "sh", "count", "--wait"], None);
    assert_eq!(code(&count), 0, "{}", stderr(&count));
    let count = stderr(&count)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(';')
        .to_owned();
    let logs = run(dir, &endpoint, &["logs", &count, "-o", "json"], None);
    assert_eq!(code(&logs), 0, "{}", stderr(&logs));
    let lines: Vec<serde_json::Value> = stdout(&logs)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines
        .iter()
        .rev()
        .find(|l| l["stream"] == "stdout")
        .unwrap();
    assert_eq!(last["text"], "10000", "the last line is kept");
    assert!(
        lines.len() < 10_000,
        "a bounded tail: {} lines",
        lines.len()
    );
    assert!(stderr(&logs).contains("lines dropped"), "{}", stderr(&logs));
    let ticking = json(&["submit", "sh", "tick", "-o", "json"]);
    let ticking = ticking[0]["id"].as_str().unwrap().to_owned();
    let followed = run(dir, &endpoint, &["logs", "-f", &ticking], None);
    assert_eq!(code(&followed), 0, "{}", stderr(&followed));
    assert_eq!(stdout(&followed), "tick 1\ntick 2\ntick 3\n");

    // Broadcasts: planned, fired and waited for, shown; a lock held, and cleared.
    let plan = json(&[
        "broadcast",
        "plan",
        "site",
        "--group",
        "sh",
        "--handler",
        "upper",
        "-o",
        "json",
    ]);
    let planned: Vec<&str> = plan
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["pod"].as_str().unwrap())
        .collect();
    assert_eq!(planned, ["w1", "w2"]);
    let fired = json(&[
        "broadcast",
        "fire",
        "site",
        "--group",
        "sh",
        "--handler",
        "upper",
        "--payload",
        "v",
        "--version",
        "v1",
        "--wait",
        "-o",
        "json",
    ]);
    let states: Vec<(&str, &str)> = fired
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["pod"].as_str().unwrap(), t["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("w1", "done"), ("w2", "done")]);
    let status = json(&["broadcast", "status", "--app", "site", "-o", "json"]);
    assert_eq!(status.as_array().unwrap().len(), 2);
    assert!(status
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["version"] == "v1"));
    let held = ok(&[
        "broadcast",
        "fire",
        "long",
        "--group",
        "sh",
        "--handler",
        "slow",
        "--tree",
        "1",
    ]);
    let id = stdout(&held).trim().to_owned();
    let locks = json(&["broadcast", "locks", "-o", "json"]);
    assert_eq!(locks[0]["app"], "long");
    assert_eq!(locks[0]["broadcast"].to_string(), id);
    ok(&["broadcast", "unlock", "long"]);
    assert_eq!(
        json(&["broadcast", "locks", "-o", "json"]),
        serde_json::json!([])
    );
    // A tree of one branch: the first target runs (and finishes, aborted or not), the
    // second waited for it and is cancelled.
    let targets = json(&["broadcast", "status", &id, "-o", "json"]);
    assert_eq!(targets[1]["state"], "cancelled", "{targets}");

    // A drained pod is shown so; an unknown one is not found.
    ok(&["pods", "drain", "w2"]);
    let pods = json(&["pods", "-o", "json"]);
    let draining: Vec<&serde_json::Value> = pods
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["draining"])
        .collect();
    assert_eq!(
        draining,
        [&serde_json::json!(false), &serde_json::json!(true)]
    );

    // The slow task the timed-out wait left running is stopped, not left behind.
    ok(&["cancel", &slow_id]);
}

#[test]
fn the_configuration_layers_and_its_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mawex.toml");
    let show = |command: &mut Command| -> Vec<serde_json::Value> {
        let output = command
            .arg("--config")
            .arg(&file)
            .args(["config", "show", "-o", "json"])
            .output()
            .unwrap();
        assert_eq!(code(&output), 0, "{}", stderr(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let entry = |rows: &[serde_json::Value], key: &str| {
        rows.iter()
            .find(|row| row["key"] == key)
            .cloned()
            .unwrap_or_else(|| panic!("{key} is shown"))
    };

    std::fs::write(
        &file,
        "[client]\nmasters = [\"http://file:1\"]\n[worker]\nslots = 2\n",
    )
    .unwrap();
    let rows = show(&mut mawex());
    assert_eq!(entry(&rows, "worker.slots")["value"], 2);
    assert_eq!(
        entry(&rows, "worker.slots")["origin"],
        file.display().to_string()
    );
    assert_eq!(entry(&rows, "log.level")["origin"], "default");

    // The environment over the file, flags over the environment.
    let rows = show(
        mawex()
            .env("MAWEX_WORKER__SLOTS", "3")
            .env("MAWEX_CLIENT__MASTERS", "[\"http://env:1\"]")
            .args(["--master", "http://flag:1"]),
    );
    assert_eq!(entry(&rows, "worker.slots")["value"], 3);
    assert_eq!(
        entry(&rows, "worker.slots")["origin"],
        "env MAWEX_WORKER__SLOTS"
    );
    assert_eq!(
        entry(&rows, "client.masters")["value"],
        serde_json::json!(["http://flag:1"])
    );
    assert_eq!(entry(&rows, "client.masters")["origin"], "command line");
    // Secrets are masked.
    let rows = show(mawex().args(["--token", "s3cret"]));
    assert_eq!(entry(&rows, "client.token")["value"], "***");

    // An unknown key, a bad value in the file and in the environment: refused, named.
    let check = |command: &mut Command| {
        let output = command
            .arg("--config")
            .arg(&file)
            .args(["config", "check"])
            .output()
            .unwrap();
        (code(&output), stderr(&output))
    };
    std::fs::write(&file, "[master]\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let (code_, message) = check(&mut mawex());
    assert_eq!(code_, 2);
    assert!(
        message.contains("master.lisen") && message.contains("unknown field"),
        "{message}"
    );
    std::fs::write(&file, "[worker]\nslots = \"many\"\n").unwrap();
    let (code_, message) = check(&mut mawex());
    assert_eq!(code_, 2);
    assert!(message.contains("worker.slots"), "{message}");
    std::fs::write(&file, "").unwrap();
    let (code_, message) = check(mawex().env("MAWEX_MASTER__LEASE_TIMEOUT", "soon"));
    assert_eq!(code_, 2);
    assert!(
        message.contains("master.lease_timeout") && message.contains("MAWEX_"),
        "{message}"
    );
    let (code_, message) = check(mawex().env("MAWEX_WORKER__SLOTS", "0"));
    assert_eq!(code_, 2);
    assert!(
        message.contains("worker.slots: must be 1 to 4096"),
        "{message}"
    );
    let (code_, message) = check(mawex().env("MAWEX_WORKER__DEFAULT_MEMORY", "lots"));
    assert_eq!(code_, 2);
    assert!(message.contains("worker.default_memory"), "{message}");
    // A master beyond loopback without TLS and tokens is refused before it opens anything.
    let exposed = mawex()
        .arg("--config")
        .arg(&file)
        .args(["master", "--listen", "0.0.0.0:0"])
        .arg("--data-dir")
        .arg(dir.path().join("never"))
        .output()
        .unwrap();
    assert_eq!(code(&exposed), 2, "{}", stderr(&exposed));
    assert!(
        stderr(&exposed).contains("master.insecure") && !dir.path().join("never").exists(),
        "{}",
        stderr(&exposed)
    );
    // A variable that is not a key (no `__`) is left alone.
    let (code_, message) = check(mawex().env("MAWEX_TASK_ID", "x"));
    assert_eq!(code_, 0, "{message}");
}

/// A tmux server of the test's own (its own socket), killed with the test.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// `None` where tmux is missing, outside CI; in CI (which installs it) a failure.
    fn start(test: &str) -> Option<Tmux> {
        let found = Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test} needs tmux; .ci/run installs it"
            );
            eprintln!("mawex-test-skipped: {test}: tmux is not installed");
            return None;
        }
        Some(Tmux {
            socket: format!("mawex-test-{}-{test}", std::process::id()),
        })
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `command` in a new 160×45 session `name`.
    fn run(&self, name: &str, command: &str) {
        let started = self.tmux(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "160",
            "-y",
            "45",
            command,
        ]);
        assert!(started.status.success(), "{}", stderr(&started));
    }

    fn screen(&self, name: &str) -> String {
        stdout(&self.tmux(&["capture-pane", "-p", "-t", name]))
    }

    /// Waits until the screen of `name` satisfies `ready`; returns it.
    fn wait_for(&self, name: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let screen = self.screen(name);
            if ready(&screen) {
                return screen;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn alive(&self, name: &str) -> bool {
        self.tmux(&["has-session", "-t", name]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// The row of `screen` that holds `needle`, split into its cells.
fn row_of<'a>(screen: &'a str, needle: &str) -> Vec<&'a str> {
    screen
        .lines()
        .find(|line| line.contains(needle))
        .map(|line| {
            line.split(|c: char| c.is_whitespace() || c == '│')
                .filter(|cell| !cell.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn top_and_broadcast_monitor_render_in_a_terminal() {
    let Some(tmux) = Tmux::start("top_and_broadcast_monitor_render_in_a_terminal") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut master, endpoint) = start_master(dir.path());
    let config = write_config(dir.path(), "mawex.toml", &endpoint);
    let mut workers = [start_worker(&config, "w1"), start_worker(&config, "w2")];
    let dir = dir.path();
    let done = run(
        dir,
        &endpoint,
        &["submit", "sh", "upper", "x", "--wait"],
        None,
    );
    assert_eq!(code(&done), 0, "{}", stderr(&done));
    let failed = run(
        dir,
        &endpoint,
        &["submit", "sh", "fail", "--retry", "1", "--wait"],
        None,
    );
    assert_eq!(code(&failed), 3, "{}", stderr(&failed));

    // Only what the test sets: the tmux server's environment may hold `MAWEX_*` variables.
    let mawex = format!(
        "env -i PATH={} {} --config {}",
        std::env::var("PATH").unwrap_or_default(),
        env!("CARGO_BIN_EXE_mawex"),
        config.display()
    );
    tmux.run("top", &format!("{mawex} top"));
    let screen = tmux.wait_for(
        "top",
        "top shows both pods, the group and the failure",
        |s| s.contains("w1") && s.contains("w2") && s.contains("non-zero-exit"),
    );
    assert!(screen.contains("2 pods"), "{screen}");
    let pod = row_of(&screen, "w2");
    assert_eq!(pod.get(1..3), Some(&["sh", "0/2"][..]), "{screen}");
    let group = row_of(&screen, "SUCCEEDED");
    assert!(!group.is_empty(), "{screen}");
    // GROUP PENDING RUNNING SUCCEEDED FAILED: one succeeded, one failed.
    let sh = screen
        .lines()
        .filter(|line| line.contains("│sh "))
        .map(|line| row_of(line, "sh"))
        .find(|cells| cells.len() >= 5)
        .unwrap_or_default();
    assert_eq!(
        sh.get(..5),
        Some(&["sh", "0", "0", "1", "1"][..]),
        "{screen}"
    );
    tmux.tmux(&["send-keys", "-t", "top", "q"]);
    let started = Instant::now();
    while tmux.alive("top") {
        assert!(started.elapsed() < DEADLINE, "q quits top");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A broadcast of a one-second step down a tree of one branch: live, then finished.
    let fired = run(
        dir,
        &endpoint,
        &[
            "broadcast",
            "fire",
            "nap",
            "--group",
            "sh",
            "--handler",
            "nap",
            "--tree",
            "1",
        ],
        None,
    );
    assert_eq!(code(&fired), 0, "{}", stderr(&fired));
    let id = stdout(&fired).trim().to_owned();
    // The view stays on screen once the monitor ends.
    tmux.run(
        "monitor",
        &format!("{mawex} broadcast monitor {id}; sleep 60"),
    );
    let live = tmux.wait_for("monitor", "the monitor shows a running target", |s| {
        s.contains("running") && s.contains("w1") && s.contains("w2")
    });
    assert!(live.contains(&format!("broadcast {id} of nap")), "{live}");
    let finished = tmux.wait_for("monitor", "the monitor shows the end", |s| {
        s.contains("2/2 targets finished, finished")
    });
    let first = row_of(&finished, "w1");
    let second = row_of(&finished, "w2");
    assert_eq!(first.get(2..4), Some(&["origin", "done"][..]), "{finished}");
    assert_eq!(second.get(2..4), Some(&["w1", "done"][..]), "{finished}");

    // SIGTERM drains: each worker, then the master, ends by itself with status 0.
    for worker in &mut workers {
        let ended = worker.terminate();
        assert!(
            ended.is_some_and(|s| s.success()),
            "a worker drains: {ended:?}"
        );
    }
    let ended = master.terminate();
    assert!(
        ended.is_some_and(|s| s.success()),
        "the master drains: {ended:?}"
    );
}

/// `mawex standalone`: a master and a worker in one process, reached like a master, draining
/// on SIGTERM; its data survives a restart.
#[test]
fn standalone_runs_tasks_and_keeps_them_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut standalone, endpoint) = start_serving(dir.path(), "standalone");
    write_config(dir.path(), "mawex.toml", &endpoint);
    let dir = dir.path();
    let done = run(
        dir,
        &endpoint,
        &["submit", "sh", "upper", "alone", "--wait"],
        None,
    );
    assert_eq!(
        (code(&done), stdout(&done)),
        (0, "ALONE".to_owned()),
        "{}",
        stderr(&done)
    );
    let pods = run(dir, &endpoint, &["pods", "-o", "json"], None);
    let pods: Vec<serde_json::Value> = serde_json::from_slice(&pods.stdout).unwrap();
    assert_eq!(pods.len(), 1, "{pods:?}");
    let ended = standalone.terminate();
    assert!(
        ended.is_some_and(|s| s.success()),
        "standalone drains: {ended:?}"
    );

    let (_again, endpoint) = start_serving(dir, "standalone");
    write_config(dir, "mawex.toml", &endpoint);
    let listed = run(
        dir,
        &endpoint,
        &["list", "--state", "succeeded", "-o", "json"],
        None,
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["output"], "ALONE");
    // The search filters: found by its payload, newest first; nothing by another handler.
    let found = run(
        dir,
        &endpoint,
        &["list", "--payload", "alone", "--newest", "-o", "json"],
        None,
    );
    let found: Vec<serde_json::Value> = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let none = run(
        dir,
        &endpoint,
        &["list", "--handler", "nobody", "-o", "json"],
        None,
    );
    let none: Vec<serde_json::Value> = serde_json::from_slice(&none.stdout).unwrap();
    assert!(none.is_empty(), "{none:?}");
}

/// A free loopback port (bound and released: the node that takes it binds it again).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three `mawex master`s as one cluster (`master.cluster`, `--initialize` on one), a worker
/// and a client given all three: `mawex cluster` lists the members and hands the lead to
/// node 2, and tasks run before and after node 2 is killed.
#[test]
fn three_masters_from_one_configuration_each_fail_over() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: String = ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!("\"{}\" = \"127.0.0.1:{port}\"\n", i + 1))
        .collect();
    let masters: Vec<String> = ports
        .iter()
        .map(|port| format!("\"http://127.0.0.1:{port}\""))
        .collect();
    let common = format!(
        "[client]\nmasters = [{}]\ntimeout = \"20s\"\n\n[worker]\ngroups = [\"sh\"]\n\
         shutdown_grace = \"1s\"\n[worker.handlers.upper]\nargv = [\"tr\", \"a-z\", \"A-Z\"]\n",
        masters.join(", ")
    );
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let id = i + 1;
        let config = dir.path().join(format!("node-{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "{common}\n[master]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\
                 lease_timeout = \"3s\"\nheartbeat_interval = \"500ms\"\n\
                 [master.cluster]\nnode_id = {id}\n[master.cluster.peers]\n{peers}",
                dir.path().join(format!("data-{id}")).display()
            ),
        )
        .unwrap();
        let args: &[&str] = if id == 1 {
            &["master", "--initialize"]
        } else {
            &["master"]
        };
        nodes.push(serve_with(&config, args).0);
    }
    let client = dir.path().join("mawex.toml");
    std::fs::write(&client, &common).unwrap();
    let _worker = start_worker(&client, "w1");
    let submit = |payload: &str| {
        run_with(
            &client,
            &[
                "submit",
                "sh",
                "upper",
                payload,
                "--wait",
                "--timeout",
                "50s",
            ],
            None,
        )
    };
    let first = submit("before");
    assert_eq!(
        (code(&first), stdout(&first)),
        (0, "BEFORE".to_owned()),
        "{}",
        stderr(&first)
    );
    // The members, asked of any node; the lead handed to node 2; a bad change refused.
    let members = run_with(&client, &["cluster", "members", "-o", "json"], None);
    assert_eq!(code(&members), 0, "{}", stderr(&members));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&members)).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r["role"] == "voter"), "{rows:?}");
    assert_eq!(rows.iter().filter(|r| r["leads"] == true).count(), 1);
    let moved = run_with(&client, &["cluster", "transfer", "2", "-o", "json"], None);
    assert_eq!(code(&moved), 0, "{}", stderr(&moved));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&moved)).unwrap();
    let leader: Vec<&serde_json::Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["leads"] == true)
        .collect();
    assert_eq!(leader.len(), 1);
    assert_eq!(leader[0]["id"], 2);
    let refused = run_with(&client, &["cluster", "remove", "9"], None);
    assert_eq!(code(&refused), 1);
    assert!(
        stderr(&refused).contains("node 9 is not a member"),
        "{}",
        stderr(&refused)
    );
    // Node 2, which leads, dies hard: the others go on.
    let mut leading = nodes.remove(1);
    let _ = leading.0.kill();
    let _ = leading.0.wait();
    let after = submit("after");
    assert_eq!(
        (code(&after), stdout(&after)),
        (0, "AFTER".to_owned()),
        "{}",
        stderr(&after)
    );
}
