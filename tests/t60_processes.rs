//! Real processes killed with SIGKILL: a master while clients submit and a pod executes, and
//! a pod in the middle of a task. The test binary re-executes itself as the master or pod
//! child (`MAWEX_TEST_ROLE`), so no other binary is needed.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mawex::testing::Event;
use mawex::{
    GroupName, GrpcPodConnector, HandlerRegistry, InProcess, Master, MasterConfig, MasterProxy,
    Outcome, Pod, PodConfig, PodId, RemoteConfig, RemoteMasterProxy, SledJournal, TaskId,
    TaskInput, TaskSpec,
};

#[path = "common/own_main.rs"]
mod own_main;

use own_main::runtime;
#[path = "common/procs.rs"]
mod procs;

const ROLE: &str = "MAWEX_TEST_ROLE";

fn main() {
    // A pod of this binary may fork it again to run a task (the forked sandbox).
    mawex::sandbox::forked::run_if_child(&handlers());
    if let Ok(role) = std::env::var(ROLE) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        match role.as_str() {
            "master" => rt.block_on(child_master()),
            "pod" => rt.block_on(child_pod()),
            other => panic!("unknown role {other}"),
        }
        return;
    }
    own_main::run_tests(&[
        ("kill_9_of_the_master_loses_no_acknowledged_task", &|| {
            runtime().block_on(kill_master())
        }),
        (
            "kill_9_of_the_master_in_a_thousand_node_graph_runs_each_node_once_in_order",
            &|| runtime().block_on(kill_master_in_a_graph()),
        ),
        ("kill_9_of_a_forking_pod_leaves_no_process_behind", &|| {
            runtime().block_on(kill_forked_pod())
        }),
        ("kill_9_of_a_pod_reruns_its_task_elsewhere", &|| {
            runtime().block_on(kill_pod())
        }),
        ("sigterm_to_a_forking_pod_loses_no_task", &|| {
            runtime().block_on(sigterm_forked_pod())
        }),
    ]);
}

// ------------------------------------------------------------------ children

/// Ends the child when the parent goes away (its stdin closes), so no process outlives a test.
fn exit_with_parent() {
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
}

async fn child_master() {
    exit_with_parent();
    let dir = std::env::var("MAWEX_DIR").unwrap();
    let addr: SocketAddr = std::env::var("MAWEX_ADDR").unwrap().parse().unwrap();
    let mut config = MasterConfig::default();
    config.lease_timeout = Duration::from_millis(1500);
    config.heartbeat_interval = Duration::from_millis(250);
    config.snapshot_every = 0;
    let master = Master::builder()
        .config(config)
        .start(SledJournal::open(&dir).unwrap())
        .await
        .unwrap();
    // The port of a just-killed master may take a moment to be free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let server = loop {
        match mawex::Server::new(&master).start(addr).await {
            Ok(server) => break server,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying bind: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    println!("LISTENING {}", server.local_addr());
    std::future::pending::<()>().await;
}

async fn child_pod() {
    exit_with_parent();
    let endpoint = std::env::var("MAWEX_ENDPOINT").unwrap();
    let id = std::env::var("MAWEX_POD_ID").unwrap();
    let forked = std::env::var_os("MAWEX_FORKED").is_some();
    let sandboxes: mawex::sandbox::SandboxSet = if forked {
        Arc::new(mawex::sandbox::ForkedSandbox::new().unwrap()).into()
    } else {
        Arc::new(InProcess::new(handlers())).into()
    };
    let pod = Pod::start(
        PodConfig::new(PodId::new(id).unwrap(), vec![group()])
            .with_slots(2)
            .with_prefetch(if forked { 4 } else { 32 })
            .with_shutdown_grace(Duration::from_secs(10)),
        sandboxes,
        Arc::new(GrpcPodConnector::new(&endpoint).unwrap()),
    )
    .unwrap();
    println!("READY");
    // SIGTERM: leave cleanly, as a deployment tool would ask.
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    term.recv().await;
    pod.shutdown().await.unwrap();
    std::process::exit(0);
}

fn group() -> GroupName {
    GroupName::new("procs").unwrap()
}

/// `work`: sleeps the payload's milliseconds, returns the payload.
fn handlers() -> HandlerRegistry {
    let mut r = HandlerRegistry::new();
    r.register("work", |t: TaskInput| async move {
        let ms: u64 = std::str::from_utf8(&t.payload)
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(t.payload)
    })
    .unwrap();
    r
}

// ------------------------------------------------------------------ parent side

struct ChildProcess {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl ChildProcess {
    fn spawn(role: &str, env: &[(&str, String)]) -> ChildProcess {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(ROLE, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        ChildProcess { child, stdout }
    }

    /// The first line starting with `prefix`, without it.
    fn wait_line(&mut self, prefix: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "child exited before printing {prefix}");
            if let Some(rest) = line.trim().strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
    }

    /// SIGKILL, and reap it.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn start_master(dir: &Path, addr: &str) -> (ChildProcess, SocketAddr) {
    let mut master = ChildProcess::spawn(
        "master",
        &[
            ("MAWEX_DIR", dir.display().to_string()),
            ("MAWEX_ADDR", addr.to_owned()),
        ],
    );
    let addr = master.wait_line("LISTENING").parse().unwrap();
    (master, addr)
}

fn start_pod(endpoint: &str, id: &str) -> ChildProcess {
    let mut pod = ChildProcess::spawn(
        "pod",
        &[
            ("MAWEX_ENDPOINT", endpoint.to_owned()),
            ("MAWEX_POD_ID", id.to_owned()),
        ],
    );
    pod.wait_line("READY");
    pod
}

/// A pod process whose group runs in the forked sandbox.
fn start_forking_pod(endpoint: &str) -> ChildProcess {
    let mut pod = ChildProcess::spawn(
        "pod",
        &[
            ("MAWEX_ENDPOINT", endpoint.to_owned()),
            ("MAWEX_POD_ID", "pod-forking".to_owned()),
            ("MAWEX_FORKED", "1".to_owned()),
        ],
    );
    pod.wait_line("READY");
    pod
}

fn patient_client(endpoint: &str) -> RemoteMasterProxy {
    let mut config = RemoteConfig::default();
    config.retry_for = Duration::from_secs(60);
    RemoteMasterProxy::with_config([endpoint], config).unwrap()
}

/// Counts, per task, the acceptances and results recorded in a stopped master's journal.
fn audit(dir: &Path) -> (HashMap<TaskId, usize>, HashMap<TaskId, usize>) {
    let r = recorded(dir);
    (r.accepted, r.results)
}

async fn kill_master() {
    const BATCHES: usize = 100;
    const PER_BATCH: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let (master, addr) = start_master(&journal, "127.0.0.1:0");
    let endpoint = format!("http://{addr}");
    let pod = start_pod(&endpoint, "pod-a");
    let client = patient_client(&endpoint);

    // Submit 10,000 tasks in batches; a batch counts once its submit returned Ok.
    let acked: Arc<Mutex<Vec<TaskId>>> = Arc::default();
    let submitter = {
        let (client, acked) = (client.clone(), acked.clone());
        tokio::spawn(async move {
            for _ in 0..BATCHES {
                let specs: Vec<TaskSpec> = (0..PER_BATCH)
                    .map(|_| TaskSpec::new(group(), "work", "1"))
                    .collect();
                let ids: Vec<TaskId> = specs.iter().map(|s| s.id).collect();
                client.submit_many(specs).await.unwrap();
                acked.lock().unwrap().extend(ids);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < BATCHES * PER_BATCH / 3 {
        assert!(Instant::now() < deadline, "submits stalled before the kill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    master.kill();
    let (master, _) = start_master(&journal, &addr.to_string());

    submitter.await.unwrap();
    let ids = acked.lock().unwrap().clone();
    assert_eq!(ids.len(), BATCHES * PER_BATCH);
    for id in &ids {
        let r = tokio::time::timeout(Duration::from_secs(60), client.await_result(*id))
            .await
            .expect("every acknowledged task completes")
            .unwrap();
        assert_eq!(r.outcome, Outcome::Succeeded("1".into()));
    }

    master.kill();
    pod.kill();
    let (accepted, finished) = audit(&journal);
    for id in &ids {
        assert_eq!(accepted.get(id), Some(&1), "task {id} accepted once");
        assert_eq!(
            finished.get(id),
            Some(&1),
            "task {id} has exactly one result"
        );
    }
}

/// What a stopped master's journal recorded: how often each task was accepted and finished,
/// when each was first assigned and last finished (by the master's clock), and the graphs.
struct Recorded {
    accepted: HashMap<TaskId, usize>,
    first_start: HashMap<TaskId, u64>,
    finished_at: HashMap<TaskId, u64>,
    results: HashMap<TaskId, usize>,
    graphs: usize,
}

fn recorded(dir: &Path) -> Recorded {
    let mut journal = SledJournal::open(dir).unwrap();
    let mut r = Recorded {
        accepted: HashMap::new(),
        first_start: HashMap::new(),
        finished_at: HashMap::new(),
        results: HashMap::new(),
        graphs: 0,
    };
    for (_, event) in journal.read_events().unwrap() {
        match event {
            Event::TaskAccepted { spec, .. } => *r.accepted.entry(spec.id).or_insert(0) += 1,
            Event::WorkflowAccepted { graph, tasks, .. } => {
                r.graphs += usize::from(graph.is_some());
                for (spec, _) in tasks {
                    *r.accepted.entry(spec.id).or_insert(0) += 1;
                }
            }
            Event::TaskAssigned { attempt, at, .. } => {
                r.first_start.entry(attempt.task).or_insert(at.0);
            }
            Event::TaskFinished { attempt, at, .. } => {
                r.finished_at.insert(attempt.task, at.0);
                *r.results.entry(attempt.task).or_insert(0) += 1;
            }
            _ => {}
        }
    }
    r
}

/// A graph of 20 layers of 50 nodes, each node after two of the layer before, and the
/// master killed with SIGKILL when about half of it has run: every node runs to one recorded
/// result, after each of its dependencies finished.
async fn kill_master_in_a_graph() {
    const LAYERS: usize = 20;
    const WIDTH: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let (master, addr) = start_master(&journal, "127.0.0.1:0");
    let endpoint = format!("http://{addr}");
    let pod = start_pod(&endpoint, "pod-a");
    let client = patient_client(&endpoint);
    let name = |layer: usize, i: usize| format!("n{layer}-{i}");
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    for layer in 0..LAYERS {
        for i in 0..WIDTH {
            let spec = TaskSpec::new(group(), "work", "2").with_output_limit(16);
            nodes.push(mawex::GraphNode::new(name(layer, i), spec));
            if layer > 0 {
                for j in [i, (i + 1) % WIDTH] {
                    edges.push(mawex::GraphEdge::new(name(layer - 1, j), name(layer, i)));
                }
            }
        }
    }
    let graph = mawex::GraphSpec::new(nodes, edges.clone());
    client.submit_graph(graph.clone()).await.unwrap();
    // Polls the graph until `done` says so, or fails with `what` after `limit`.
    let until = |limit: u64, what: &'static str, done: fn(&mawex::GraphView) -> bool| {
        let (client, id) = (client.clone(), graph.id);
        async move {
            let deadline = Instant::now() + Duration::from_secs(limit);
            loop {
                let view = client.graph(id).await.unwrap();
                if done(&view) {
                    return view;
                }
                assert!(Instant::now() < deadline, "{what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    until(60, "half the graph runs before the kill", |view| {
        view.count(mawex::TaskState::Succeeded) >= LAYERS * WIDTH / 2
    })
    .await;

    master.kill();
    let (master, _) = start_master(&journal, &addr.to_string());
    let view = until(120, "the graph finishes after the restart", |view| {
        view.is_finished()
    })
    .await;
    assert_eq!(view.count(mawex::TaskState::Succeeded), LAYERS * WIDTH);
    master.kill();
    pod.kill();

    let r = recorded(&journal);
    assert_eq!(r.graphs, 1, "the graph was accepted once");
    for node in &graph.nodes {
        let id = graph.id.node_id(&node.name);
        assert_eq!(r.accepted.get(&id), Some(&1), "{} accepted once", node.name);
        assert_eq!(r.results.get(&id), Some(&1), "{} has one result", node.name);
    }
    for edge in &edges {
        let (from, to) = (graph.id.node_id(&edge.from), graph.id.node_id(&edge.to));
        assert!(
            r.first_start[&to] >= r.finished_at[&from],
            "{} started before {} finished",
            edge.to,
            edge.from
        );
    }
}

async fn sigterm_forked_pod() {
    const TASKS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let (master, addr) = start_master(&journal, "127.0.0.1:0");
    let endpoint = format!("http://{addr}");
    let mut forking = start_forking_pod(&endpoint);
    let client = patient_client(&endpoint);
    let specs: Vec<TaskSpec> = (0..TASKS)
        .map(|i| TaskSpec::new(group(), "work", if i % 10 == 0 { "30" } else { "1" }))
        .collect();
    client.submit_many(specs.clone()).await.unwrap();

    // Mid-run, the pod is asked to stop.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = client
            .list(
                mawex::ListQuery::default()
                    .state(mawex::TaskState::Succeeded)
                    .limit(1000),
            )
            .await
            .unwrap()
            .tasks
            .len();
        if done >= 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the forking pod made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = forking.child.id().to_string();
    let term = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(term.success());
    let status = forking.child.wait().unwrap();
    assert!(status.success(), "the pod left cleanly: {status:?}");

    // Another pod finishes the rest; nothing was lost, nothing recorded twice.
    let survivor = Pod::start(
        PodConfig::new(PodId::new("pod-after").unwrap(), vec![group()]).with_slots(2),
        Arc::new(InProcess::new(handlers())),
        Arc::new(GrpcPodConnector::new(&endpoint).unwrap()),
    )
    .unwrap();
    for spec in &specs {
        let r = tokio::time::timeout(Duration::from_secs(120), client.await_result(spec.id))
            .await
            .expect("every task completes")
            .unwrap();
        assert!(
            matches!(r.outcome, Outcome::Succeeded(_)),
            "{:?}",
            r.outcome
        );
    }
    survivor.shutdown().await.unwrap();
    master.kill();
    let (accepted, finished) = audit(&journal);
    for spec in &specs {
        assert_eq!(accepted.get(&spec.id), Some(&1));
        assert_eq!(finished.get(&spec.id), Some(&1), "exactly one result");
    }
}

async fn kill_forked_pod() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let (master, addr) = start_master(&journal, "127.0.0.1:0");
    let endpoint = format!("http://{addr}");
    let forking = start_forking_pod(&endpoint);
    let client = patient_client(&endpoint);
    client
        .submit(TaskSpec::new(group(), "work", "600000"))
        .await
        .unwrap();
    // The fork server and the attempt's child run below the pod.
    let pod = forking.child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let below = loop {
        let below = procs::descendants(pod);
        if below.len() >= 2 {
            break below;
        }
        assert!(
            Instant::now() < deadline,
            "the attempt never started: {below:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    forking.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while below.iter().any(|p| procs::running(*p)) {
        let left: Vec<u32> = below
            .iter()
            .copied()
            .filter(|p| procs::running(*p))
            .collect();
        assert!(
            Instant::now() < deadline,
            "processes outlived their pod: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    master.kill();
}

async fn kill_pod() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let (master, addr) = start_master(&journal, "127.0.0.1:0");
    let endpoint = format!("http://{addr}");
    let doomed = start_pod(&endpoint, "pod-doomed");
    let client = patient_client(&endpoint);

    let ack = client
        .submit(TaskSpec::new(group(), "work", "3000"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = client.get(ack.id).await.unwrap();
        if view.pod.as_ref().map(|p| p.as_str()) == Some("pod-doomed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the task never started on the doomed pod"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    doomed.kill();
    let survivor = Pod::start(
        PodConfig::new(PodId::new("pod-survivor").unwrap(), vec![group()]),
        Arc::new(InProcess::new(handlers())),
        Arc::new(GrpcPodConnector::new(&endpoint).unwrap()),
    )
    .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), client.await_result(ack.id))
        .await
        .expect("the task runs again")
        .unwrap();
    assert_eq!(result.attempt.0, 2, "a new attempt after the lease expired");
    let view = client.get(ack.id).await.unwrap();
    assert!(view.pod.is_none());
    survivor.shutdown().await.unwrap();
    master.kill();
    let (_, finished) = audit(&journal);
    assert_eq!(finished.get(&ack.id), Some(&1));
}
