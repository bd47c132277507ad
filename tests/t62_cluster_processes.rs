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

use own_main::runtime;

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
    own_main::run_tests(&[
        (
            "kill_9_of_the_leader_five_times_under_load_loses_nothing_and_fires_no_tick_twice",
            &|| runtime().block_on(kill_leaders()),
        ),
        (
            "a_rolling_restart_of_every_master_under_load_loses_nothing",
            &|| runtime().block_on(rolling_restart()),
        ),
        ("five_masters_survive_two_failures", &|| {
            runtime().block_on(five_survive_two())
        }),
    ]);
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
    .add_service_for(Role::Peer, raft_service(&node));
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

/// `n` master processes of a new cluster, a client that knows them all, and one probe a
/// node that asks only that node.
struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    peers: String,
    nodes: BTreeMap<u64, NodeProcess>,
    endpoints: Vec<String>,
    client: Arc<RemoteMasterProxy>,
    probes: BTreeMap<u64, RemoteMasterProxy>,
}

impl Cluster {
    async fn start(n: u64) -> Cluster {
        let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut addrs = BTreeMap::new();
        for id in 1..=n {
            // A free port for each node: bound here to learn it, let go for the node.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            addrs.insert(id, listener.local_addr().unwrap().to_string());
        }
        let peers: Vec<String> = addrs.iter().map(|(id, a)| format!("{id}={a}")).collect();
        let peers = peers.join(",");
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
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
        let cluster = Cluster {
            dirs,
            peers,
            nodes,
            endpoints,
            client,
            probes,
        };
        cluster.leader().await;
        cluster
    }

    /// The node that leads.
    async fn leader(&self) -> u64 {
        leader(&self.probes).await
    }

    /// SIGKILL to node `id`, reaped.
    fn kill(&mut self, id: u64) {
        let mut node = self.nodes.remove(&id).unwrap();
        node.child.kill().unwrap();
        node.child.wait().unwrap();
    }

    /// Node `id` again, on its data and address.
    fn restart(&mut self, id: u64) {
        let dir = self.dirs[id as usize - 1].path();
        self.nodes
            .insert(id, spawn_node(id, dir, &self.peers, false));
    }

    /// A pod of one process that knows every node, serving `groups`.
    fn pod(&self, groups: Vec<GroupName>) -> Pod {
        let mut handlers = HandlerRegistry::new();
        handlers
            .register("noop", |t: TaskInput| async move { Ok(t.payload) })
            .unwrap();
        Pod::start(
            PodConfig::new(PodId::new("pod-1").unwrap(), groups).with_slots(4),
            Arc::new(InProcess::new(handlers)),
            Arc::new(GrpcPodConnector::with_config(&self.endpoints, Default::default()).unwrap()),
        )
        .unwrap()
    }

    fn stop(self) {
        for (_, mut node) in self.nodes {
            node.child.kill().unwrap();
            node.child.wait().unwrap();
        }
    }
}

/// Submits `tasks` tasks of [`group`] in batches of 50 without pause; what was acknowledged
/// is in the list as soon as it is.
fn submit_in_background(
    client: Arc<RemoteMasterProxy>,
    tasks: usize,
) -> (Arc<Mutex<Vec<TaskId>>>, tokio::task::JoinHandle<()>) {
    let acknowledged: Arc<Mutex<Vec<TaskId>>> = Arc::default();
    let submitting = {
        let acknowledged = acknowledged.clone();
        tokio::spawn(async move {
            for _ in 0..tasks / 50 {
                let specs: Vec<TaskSpec> = (0..50)
                    .map(|_| TaskSpec::new(group(), "noop", "work"))
                    .collect();
                let ids: Vec<TaskId> = specs.iter().map(|s| s.id).collect();
                client.submit_many(specs).await.unwrap();
                acknowledged.lock().unwrap().extend(ids);
            }
        })
    };
    (acknowledged, submitting)
}

/// Waits until `acknowledged` holds at least `n` tasks.
async fn until_acknowledged(acknowledged: &Mutex<Vec<TaskId>>, n: usize) {
    let started = Instant::now();
    while acknowledged.lock().unwrap().len() < n {
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every result of [`group`] recorded from the start, counted by task (a task counted twice
/// was recorded twice); each outcome checked.
async fn count_results(
    client: &RemoteMasterProxy,
) -> (
    Arc<Mutex<HashMap<TaskId, u32>>>,
    tokio::task::JoinHandle<()>,
) {
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
    (seen, counting)
}

/// Every task of `acknowledged` gets a result, each exactly one.
async fn each_recorded_once(
    acknowledged: &[TaskId],
    seen: &Mutex<HashMap<TaskId, u32>>,
    counting: tokio::task::JoinHandle<()>,
) {
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
}

async fn kill_leaders() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client.clone();
    let pod = cluster.pod(vec![group(), cron_group()]);
    let schedule = ScheduleName::new("every-second").unwrap();
    client
        .create_schedule(ScheduleSpec::new(
            schedule.clone(),
            "* * * * * *",
            TaskSpec::new(cron_group(), "noop", "tick"),
        ))
        .await
        .unwrap();
    let (seen, counting) = count_results(&client).await;
    let (acknowledged, submitting) = submit_in_background(client.clone(), TASKS);

    let mut takeovers = Vec::new();
    for kill in 0..KILLS {
        // Work under way before each kill.
        until_acknowledged(&acknowledged, (kill + 1) * TASKS / (KILLS + 2)).await;
        let leader = cluster.leader().await;
        cluster.kill(leader);
        let killed = Instant::now();
        let probe = TaskSpec::new(group(), "noop", "work");
        client.submit(probe.clone()).await.unwrap();
        takeovers.push(killed.elapsed());
        acknowledged.lock().unwrap().push(probe.id);
        // Back, to follow: three again for the next kill.
        cluster.restart(leader);
    }
    submitting.await.unwrap();
    println!("kill to first accepted submit: {takeovers:?}");
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > TASKS);
    each_recorded_once(&acknowledged, &seen, counting).await;

    // Each tick fired once: one task per tick (a tick's task id is derived from it), and as
    // many as the schedule counts. Paused first, so that no tick comes between the two reads.
    client.pause_schedule(schedule.clone(), true).await.unwrap();
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
    cluster.stop();
}

/// Every node in turn is stopped and started again, the leader last, each back before the
/// next goes, while tasks are submitted and run.
async fn rolling_restart() {
    const ROLLING: usize = 3_000;
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client.clone();
    let pod = cluster.pod(vec![group()]);
    let (seen, counting) = count_results(&client).await;
    let (acknowledged, submitting) = submit_in_background(client.clone(), ROLLING);
    let leader = cluster.leader().await;
    let mut order: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    order.push(leader);
    for (i, id) in order.into_iter().enumerate() {
        until_acknowledged(&acknowledged, (i + 1) * ROLLING / 4).await;
        cluster.kill(id);
        cluster.restart(id);
        // Back and following (or leading) before the next one goes: it answers a read
        // either itself (it leads) or by naming the leader (a probe that may not go
        // elsewhere reports that as unavailable, with the leader's address).
        let started = Instant::now();
        loop {
            let answer = cluster.probes[&id].get(TaskId::new()).await;
            match &answer {
                Err(ApiError::NotFound(_)) => break,
                Err(ApiError::Unavailable(why)) if why.contains("the leader is at") => break,
                _ => {}
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "node {id} did not come back: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    submitting.await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert_eq!(acknowledged.len(), ROLLING);
    each_recorded_once(&acknowledged, &seen, counting).await;
    pod.shutdown().await.unwrap();
    cluster.stop();
}

/// Five nodes lose two, the leader among them, and go on with every acknowledged task.
async fn five_survive_two() {
    const FIVE: usize = 2_000;
    let mut cluster = Cluster::start(5).await;
    let client = cluster.client.clone();
    let pod = cluster.pod(vec![group()]);
    let (seen, counting) = count_results(&client).await;
    let (acknowledged, submitting) = submit_in_background(client.clone(), FIVE);
    until_acknowledged(&acknowledged, FIVE / 4).await;
    let leader = cluster.leader().await;
    let follower = (1..=5).find(|id| *id != leader).unwrap();
    cluster.kill(leader);
    cluster.kill(follower);
    submitting.await.unwrap();
    let probe = TaskSpec::new(group(), "noop", "work");
    client.submit(probe.clone()).await.unwrap();
    let mut acknowledged = acknowledged.lock().unwrap().clone();
    acknowledged.push(probe.id);
    each_recorded_once(&acknowledged, &seen, counting).await;
    let now = cluster.leader().await;
    assert!(cluster.nodes.contains_key(&now), "a survivor leads");
    pod.shutdown().await.unwrap();
    cluster.stop();
}
