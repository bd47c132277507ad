//! Three masters, each a real process, replicating over gRPC with the default timeouts. The
//! leader is killed with SIGKILL five times while 10,000 tasks are submitted and run and a
//! cron schedule ticks every second: each time another node accepts submits within 2 s,
//! every acknowledged task ends with exactly one recorded result, and no tick fires twice.
//! The test binary re-executes itself as the nodes (`MAWEX_TEST_ROLE=node`).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mawex::auth::Role;
use mawex::{
    ApiError, GroupName, GrpcPodConnector, HandlerRegistry, InProcess, ListQuery, MasterConfig,
    MasterProxy, Outcome, Pod, PodConfig, PodId, RemoteConfig, RemoteMasterProxy, ScheduleName,
    ScheduleSpec, Server, TaskId, TaskInput, TaskSpec,
};
use mawex_raft::{raft_service, GrpcNetwork, MasterNode, NodeConfig};
use openraft::BasicNode;

#[path = "common/own_main.rs"]
mod own_main;

const ROLE: &str = "MAWEX_TEST_ROLE";
const TASKS: usize = 10_000;
const KILLS: usize = 5;
/// How long a new leader may take to accept submits after the old one is killed.
const TAKEOVER: Duration = Duration::from_secs(2);

fn main() {
    if std::env::var(ROLE).as_deref() == Ok("node") {
        runtime().block_on(child_node());
        return;
    }
    own_main::run_tests(&[(
        "kill_9_of_the_leader_five_times_under_load_loses_nothing_and_fires_no_tick_twice",
        &|| runtime().block_on(kill_leaders()),
    )]);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ------------------------------------------------------------------ the node

/// `1=host:port,2=…` as members.
fn members(peers: &str) -> BTreeMap<u64, BasicNode> {
    peers
        .split(',')
        .map(|peer| {
            let (id, addr) = peer.split_once('=').unwrap();
            (id.parse().unwrap(), BasicNode::new(addr))
        })
        .collect()
}

async fn child_node() {
    // Ends with the parent (its stdin closes), so no node outlives the test.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let id: u64 = std::env::var("MAWEX_NODE_ID").unwrap().parse().unwrap();
    let dir = std::env::var("MAWEX_DIR").unwrap();
    let members = members(&std::env::var("MAWEX_PEERS").unwrap());
    let addr = members[&id].addr.clone();
    // The port of a node just killed may take a moment to be free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match tokio::net::TcpListener::bind(&addr).await {
            Ok(listener) => break listener,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying bind: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let master = MasterConfig::default();
    let max_payload = master.max_payload_bytes;
    let node = MasterNode::start(&dir, NodeConfig::new(id), GrpcNetwork::new(), master)
        .await
        .unwrap();
    if std::env::var_os("MAWEX_INITIALIZE").is_some() {
        node.initialize(members).await.unwrap();
    }
    let server = Server::over(
        Arc::new(node.client()),
        Arc::new(node.pod_connector()),
        max_payload,
    )
    .add_service_for(Role::Peer, raft_service(node.raft().clone()));
    println!("LISTENING");
    server
        .serve(listener, std::future::pending::<()>())
        .await
        .unwrap();
}

// ------------------------------------------------------------------ the parent

struct NodeProcess {
    child: Child,
    _stdout: BufReader<ChildStdout>,
}

fn spawn_node(id: u64, dir: &Path, peers: &str, initialize: bool) -> NodeProcess {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(ROLE, "node")
        .env("MAWEX_NODE_ID", id.to_string())
        .env("MAWEX_DIR", dir)
        .env("MAWEX_PEERS", peers)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if initialize {
        cmd.env("MAWEX_INITIALIZE", "1");
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("LISTENING") {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "node {id} exited before listening"
        );
    }
    NodeProcess {
        child,
        _stdout: stdout,
    }
}

/// The node that leads: the one whose read of an unknown task says `NotFound` (the others
/// say `NotLeader`).
async fn leader(probes: &BTreeMap<u64, RemoteMasterProxy>) -> u64 {
    let started = Instant::now();
    loop {
        for (id, probe) in probes {
            if let Err(ApiError::NotFound(_)) = probe.get(TaskId::new()).await {
                return *id;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn group() -> GroupName {
    GroupName::new("failover").unwrap()
}

fn cron_group() -> GroupName {
    GroupName::new("ticks").unwrap()
}

async fn kill_leaders() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut addrs = BTreeMap::new();
    for id in 1..=3u64 {
        // A free port for each node: bound here to learn it, let go for the node.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        addrs.insert(id, listener.local_addr().unwrap().to_string());
    }
    let peers: Vec<String> = addrs.iter().map(|(id, a)| format!("{id}={a}")).collect();
    let peers = peers.join(",");
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        let dir = dirs[id as usize - 1].path();
        nodes.insert(id, spawn_node(id, dir, &peers, id == 1));
    }
    let endpoints: Vec<String> = addrs.values().map(|a| format!("http://{a}")).collect();
    let mut config = RemoteConfig::default();
    config.retry_for = Duration::from_secs(60);
    let client = Arc::new(RemoteMasterProxy::with_config(&endpoints, config).unwrap());
    let probes: BTreeMap<u64, RemoteMasterProxy> = addrs
        .iter()
        .map(|(id, a)| {
            let mut config = RemoteConfig::default();
            config.retry_for = Duration::ZERO;
            let probe = RemoteMasterProxy::with_config([format!("http://{a}")], config);
            (*id, probe.unwrap())
        })
        .collect();
    leader(&probes).await;

    let mut handlers = HandlerRegistry::new();
    handlers
        .register("noop", |t: TaskInput| async move { Ok(t.payload) })
        .unwrap();
    let pod = Pod::start(
        PodConfig::new(PodId::new("pod-1").unwrap(), vec![group(), cron_group()]).with_slots(4),
        Arc::new(InProcess::new(handlers)),
        Arc::new(GrpcPodConnector::with_config(&endpoints, Default::default()).unwrap()),
    )
    .unwrap();
    let schedule = ScheduleName::new("every-second").unwrap();
    client
        .create_schedule(ScheduleSpec::new(
            schedule.clone(),
            "* * * * * *",
            TaskSpec::new(cron_group(), "noop", "tick"),
        ))
        .await
        .unwrap();

    // Every result recorded, by task, from the start: a task seen twice was recorded twice.
    let seen: Arc<Mutex<HashMap<TaskId, u32>>> = Arc::default();
    let mut results = client.results(group(), None).await.unwrap();
    let counting = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(result) = futures::StreamExt::next(&mut results).await {
                let result = result.unwrap();
                assert_eq!(result.outcome, Outcome::Succeeded("work".into()));
                *seen.lock().unwrap().entry(result.id).or_default() += 1;
            }
        })
    };
    // Batches of 50, without pause, remembering what was acknowledged.
    let acknowledged: Arc<Mutex<Vec<TaskId>>> = Arc::default();
    let submitting = {
        let (client, acknowledged) = (client.clone(), acknowledged.clone());
        tokio::spawn(async move {
            for _ in 0..TASKS / 50 {
                let specs: Vec<TaskSpec> = (0..50)
                    .map(|_| TaskSpec::new(group(), "noop", "work"))
                    .collect();
                let ids: Vec<TaskId> = specs.iter().map(|s| s.id).collect();
                client.submit_many(specs).await.unwrap();
                acknowledged.lock().unwrap().extend(ids);
            }
        })
    };

    let mut takeovers = Vec::new();
    for kill in 0..KILLS {
        // Work under way before each kill.
        let before = (kill + 1) * TASKS / (KILLS + 2);
        let started = Instant::now();
        while acknowledged.lock().unwrap().len() < before {
            assert!(started.elapsed() < Duration::from_secs(60), "no progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let killed_id = leader(&probes).await;
        let node = nodes.remove(&killed_id).unwrap();
        let mut child = node.child;
        child.kill().unwrap();
        let killed = Instant::now();
        child.wait().unwrap();
        let probe = TaskSpec::new(group(), "noop", "work");
        client.submit(probe.clone()).await.unwrap();
        takeovers.push(killed.elapsed());
        acknowledged.lock().unwrap().push(probe.id);
        // Back, to follow: three again for the next kill.
        let dir = dirs[killed_id as usize - 1].path();
        nodes.insert(killed_id, spawn_node(killed_id, dir, &peers, false));
    }
    submitting.await.unwrap();
    println!("kill to first accepted submit: {takeovers:?}");

    // Every acknowledged task ends, succeeded (the stream checks each outcome), with one
    // result recorded.
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > TASKS);
    let wanted: HashSet<TaskId> = acknowledged.iter().copied().collect();
    let started = Instant::now();
    loop {
        let all_seen = {
            let seen = seen.lock().unwrap();
            wanted.iter().all(|id| seen.contains_key(id))
        };
        if all_seen {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not every acknowledged task has a result"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    counting.abort();
    let twice: Vec<TaskId> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    assert!(twice.is_empty(), "recorded twice: {twice:?}");

    // Each tick fired once: one task per tick (a tick's task id is derived from it), and as
    // many as the schedule counts.
    let fired = client
        .list_schedules()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.spec.name == schedule)
        .unwrap()
        .fired;
    let mut ticks = 0;
    let mut query = ListQuery::default();
    query.group = Some(cron_group());
    loop {
        let page = client.list(query.clone()).await.unwrap();
        ticks += page.tasks.len();
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    println!("ticks fired: {fired}, tasks of ticks: {ticks}");
    assert!(fired >= 2, "the schedule ticked through the run");
    assert_eq!(u64::try_from(ticks).unwrap(), fired);

    for (i, took) in takeovers.iter().enumerate() {
        assert!(*took <= TAKEOVER, "kill {i}: took {took:?} to accept again");
    }
    pod.shutdown().await.unwrap();
    for (_, mut node) in nodes {
        node.child.kill().unwrap();
        node.child.wait().unwrap();
    }
}
