//! Masters, each a real process, replicating over gRPC with the default timeouts. The leader
//! is killed with SIGKILL five times while 10,000 tasks are submitted and run and a cron
//! schedule ticks every second: each time another node accepts submits within 2 s, every
//! acknowledged task ends with exactly one recorded result, and no tick fires twice. A
//! follower away while the log is purged catches up from a snapshot; a leader cut off from
//! both followers (each node reaches each peer through a TCP proxy of its own, one per link,
//! that the test can cut) stops taking work while the majority goes on.
//! The test binary re-executes itself as the nodes (`MAWEX_TEST_ROLE=node`).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mawex::auth::Role;
use mawex::{
    ApiError, GroupName, GrpcPodConnector, HandlerRegistry, InProcess, ListQuery, MasterConfig,
    MasterProxy, Outcome, Pod, PodConfig, PodId, RemoteConfig, RemoteMasterProxy, ScheduleName,
    ScheduleSpec, Server, TaskId, TaskInput, TaskSpec,
};
use mawex_raft::{
    admin_service, raft_service, GrpcNetwork, GrpcPeer, MasterNode, MasterRaft, NodeConfig,
    NodeIdentity, NodeNetwork, RemoteClusterAdmin,
};
use openraft::rt::WatchReceiver;
use openraft::{BasicNode, RaftNetworkFactory};

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
        (
            "a_follower_back_after_the_log_was_purged_catches_up_from_a_snapshot",
            &|| runtime().block_on(follower_catches_up()),
        ),
        (
            "a_leader_cut_off_from_both_followers_stops_and_the_majority_goes_on",
            &|| runtime().block_on(partitioned_leader()),
        ),
    ]);
}

// ------------------------------------------------------------------ the node

/// `1=host:port,2=…` as members.
fn members(peers: &str) -> BTreeMap<u64, BasicNode> {
    members_of(peers)
        .into_iter()
        .map(|(id, addr)| (id, BasicNode::new(addr)))
        .collect()
}

/// `1=host:port,2=…` as a map.
fn members_of(peers: &str) -> BTreeMap<u64, String> {
    peers
        .split(',')
        .map(|peer| {
            let (id, addr) = peer.split_once('=').unwrap();
            (id.parse().unwrap(), addr.to_owned())
        })
        .collect()
}

/// `1=host:port,…` of `map`.
fn peer_list(map: &BTreeMap<u64, String>) -> String {
    let peers: Vec<String> = map.iter().map(|(id, a)| format!("{id}={a}")).collect();
    peers.join(",")
}

/// The gRPC network of a node whose calls to some peers go to another address (the test's
/// proxy of that link) than the membership says.
#[derive(Clone)]
struct Routed {
    inner: GrpcNetwork,
    routes: BTreeMap<u64, String>,
}

impl NodeNetwork for Routed {
    fn attach(&mut self, identity: NodeIdentity) {
        self.inner.attach(identity);
    }
}

impl RaftNetworkFactory<MasterRaft> for Routed {
    type Network = GrpcPeer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> GrpcPeer {
        match self.routes.get(&target) {
            Some(via) => self.inner.new_client(target, &BasicNode::new(via)).await,
            None => self.inner.new_client(target, node).await,
        }
    }
}

/// Prints `STATUS log=… applied=… snapshot=… purged=…` (log indexes: the last entry, the last
/// applied, the last in the snapshot, the last purged) each time one changes.
fn print_status(node: &MasterNode) {
    let mut metrics = node.raft().metrics();
    let line = move |metrics: &openraft::alias::WatchReceiverOf<
        MasterRaft,
        openraft::RaftMetrics<MasterRaft>,
    >| {
        let index = |id: Option<&openraft::alias::LogIdOf<MasterRaft>>| id.map_or(0, |id| id.index);
        let m = metrics.borrow_watched();
        format!(
            "STATUS log={} applied={} snapshot={} purged={}",
            m.last_log_index.unwrap_or(0),
            index(m.last_applied.as_ref()),
            index(m.snapshot.as_ref()),
            index(m.purged.as_ref())
        )
    };
    let mut last = line(&metrics);
    println!("{last}");
    tokio::spawn(async move {
        while metrics.changed().await.is_ok() {
            let now = line(&metrics);
            if now != last {
                println!("{now}");
                last = now;
            }
        }
    });
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
    // How this node reaches each peer, when not at its address: through the test's proxies.
    let routes = std::env::var("MAWEX_ROUTES")
        .map(|routes| members_of(&routes))
        .unwrap_or_default();
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
    let mut master = MasterConfig::default();
    let mut config = NodeConfig::new(id);
    if let Ok(every) = std::env::var("MAWEX_SNAPSHOT_EVERY") {
        // Snapshots often, and no log kept behind them: a node away needs a snapshot.
        master.snapshot_every = every.parse().unwrap();
        config.keep_after_snapshot = 0;
    }
    let max_payload = master.max_payload_bytes;
    // The last entry on disk, read before the node opens it: what it has before any peer
    // can send it more.
    let on_disk = {
        use openraft::storage::RaftLogStorage;
        let mut log = mawex_raft::ReplicatedMaster::open_log(&dir).unwrap();
        let state = log.get_log_state().await.unwrap();
        state.last_log_id.map_or(0, |id| id.index)
    };
    println!("DISK log={on_disk}");
    let network = Routed {
        inner: GrpcNetwork::new(),
        routes,
    };
    let node = MasterNode::start(&dir, config, network, master)
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
    .add_service_for(Role::Peer, raft_service(&node))
    .add_service_for(Role::Admin, admin_service(node.admin()));
    println!("LISTENING");
    print_status(&node);
    server
        .serve(listener, std::future::pending::<()>())
        .await
        .unwrap();
}

// ------------------------------------------------------------------ the parent

/// A node's log as it last printed it (`STATUS` lines).
#[derive(Debug, Clone, Copy, Default)]
struct Status {
    log: u64,
    applied: u64,
    snapshot: u64,
    purged: u64,
}

impl Status {
    fn parse(line: &str) -> Option<Status> {
        let mut status = Status::default();
        for field in line.strip_prefix("STATUS ")?.split(' ') {
            let (name, value) = field.split_once('=')?;
            let value = value.parse().ok()?;
            match name {
                "log" => status.log = value,
                "applied" => status.applied = value,
                "snapshot" => status.snapshot = value,
                "purged" => status.purged = value,
                _ => return None,
            }
        }
        Some(status)
    }
}

struct NodeProcess {
    child: Child,
    /// The last entry of its log on disk when it started.
    on_disk: u64,
    status: Arc<Mutex<Status>>,
}

/// How a node is started: its peers' addresses (the membership), and how it reaches each
/// peer if not there.
#[derive(Clone, Default)]
struct Launch {
    peers: String,
    /// Per node, its routes (`peer_list` form).
    routes: BTreeMap<u64, String>,
    snapshot_every: Option<u64>,
}

fn spawn_node(id: u64, dir: &Path, launch: &Launch, initialize: bool) -> NodeProcess {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(ROLE, "node")
        .env("MAWEX_NODE_ID", id.to_string())
        .env("MAWEX_DIR", dir)
        .env("MAWEX_PEERS", &launch.peers)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if initialize {
        cmd.env("MAWEX_INITIALIZE", "1");
    }
    if let Some(routes) = launch.routes.get(&id) {
        cmd.env("MAWEX_ROUTES", routes);
    }
    if let Some(every) = launch.snapshot_every {
        cmd.env("MAWEX_SNAPSHOT_EVERY", every.to_string());
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut on_disk = None;
    while !line.starts_with("LISTENING") {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "node {id} exited before listening"
        );
        if let Some(index) = line.trim_end().strip_prefix("DISK log=") {
            on_disk = Some(index.parse().unwrap());
        }
    }
    let on_disk = on_disk.expect("the log on disk, before listening");
    // Read on until the node ends, keeping the latest status.
    let status: Arc<Mutex<Status>> = Arc::default();
    let latest = status.clone();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { return };
            if let Some(now) = Status::parse(&line) {
                *latest.lock().unwrap() = now;
            }
        }
    });
    NodeProcess {
        child,
        on_disk,
        status,
    }
}

/// A TCP proxy for one link (one node calling one peer) that the test can cut: while cut,
/// nothing passes either way (connections stay open and silent, as when packets are
/// dropped); once healed, every connection that saw the cut is closed and new ones pass.
struct Link {
    addr: String,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Link {
    async fn to(target: String) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (cut, state) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let mut state = state.clone();
                tokio::spawn(async move {
                    let cut_already = *state.borrow_and_update();
                    if cut_already {
                        Link::until(state, false).await;
                        return;
                    }
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = Link::until(state.clone(), true) => {
                            Link::until(state, false).await;
                        }
                    }
                });
            }
        });
        Link { addr, cut }
    }

    /// Waits until the link is `cut` (or not).
    async fn until(mut state: tokio::sync::watch::Receiver<bool>, cut: bool) {
        let _ = state.wait_for(|now| *now == cut).await.map(drop);
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
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
    launch: Launch,
    /// The proxy of each link (from, to), if the nodes were started behind them.
    links: BTreeMap<(u64, u64), Link>,
    nodes: BTreeMap<u64, NodeProcess>,
    endpoints: Vec<String>,
    client: Arc<RemoteMasterProxy>,
    probes: BTreeMap<u64, RemoteMasterProxy>,
}

impl Cluster {
    async fn start(n: u64) -> Cluster {
        Cluster::start_with(n, false, None).await
    }

    /// `n` nodes; with `linked`, each calls each peer through a [`Link`] of its own.
    async fn start_with(n: u64, linked: bool, snapshot_every: Option<u64>) -> Cluster {
        let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut addrs = BTreeMap::new();
        for id in 1..=n {
            // A free port for each node: bound here to learn it, let go for the node.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            addrs.insert(id, listener.local_addr().unwrap().to_string());
        }
        let mut launch = Launch {
            peers: peer_list(&addrs),
            snapshot_every,
            ..Launch::default()
        };
        let mut links = BTreeMap::new();
        if linked {
            for from in 1..=n {
                let mut routes = BTreeMap::new();
                for to in (1..=n).filter(|to| *to != from) {
                    let link = Link::to(addrs[&to].clone()).await;
                    routes.insert(to, link.addr.clone());
                    links.insert((from, to), link);
                }
                launch.routes.insert(from, peer_list(&routes));
            }
        }
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let dir = dirs[id as usize - 1].path();
            nodes.insert(id, spawn_node(id, dir, &launch, id == 1));
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
            launch,
            links,
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
            .insert(id, spawn_node(id, dir, &self.launch, false));
    }

    /// Cuts (or heals) every link between node `id` and the others, both ways.
    fn isolate(&self, id: u64, cut: bool) {
        for ((from, to), link) in &self.links {
            if *from == id || *to == id {
                link.set_cut(cut);
            }
        }
    }

    /// Node `id`'s log as it last printed it.
    fn status(&self, id: u64) -> Status {
        *self.nodes[&id].status.lock().unwrap()
    }

    /// Hands the lead to node `to` (asked of the node that leads) and waits until it leads.
    async fn hand_lead_to(&self, to: u64) {
        let from = self.leader().await;
        // A node can take the lead once it has the leader's log.
        let applied = self.status(from).applied;
        until(
            &format!("node {to} caught up with node {from}"),
            || self.status(to),
            |status| status.applied >= applied,
        )
        .await;
        let addr = self.endpoints[from as usize - 1].clone();
        let admin = RemoteClusterAdmin::new(&addr, &Default::default()).unwrap();
        let view = admin.transfer_leader(to).await.unwrap();
        assert_eq!(view.leader, Some(to));
        let started = Instant::now();
        while self.leader().await != to {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "node {to} does not lead"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

/// Waits until `done` holds, or fails after 60 s with `what` and the last `state`.
async fn until<T: std::fmt::Debug>(
    what: &str,
    mut state: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) {
    let started = Instant::now();
    loop {
        let now = state();
        if done(&now) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A follower killed while the others go on past snapshots that purge the log it lacks is
/// sent a snapshot when it is back, and then leads with every acknowledged task.
async fn follower_catches_up() {
    const AWAY: usize = 2_000;
    let mut cluster = Cluster::start_with(3, false, Some(50)).await;
    let client = cluster.client.clone();
    let pod = cluster.pod(vec![group()]);
    let (seen, counting) = count_results(&client).await;
    let (acknowledged, submitting) = submit_in_background(client.clone(), AWAY);
    until_acknowledged(&acknowledged, AWAY / 4).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let had = cluster.status(follower).log;
    cluster.kill(follower);

    // The others go on until the leader's log no longer holds what the follower lacks.
    until(
        "the leader's log purged past what the follower had",
        || cluster.status(leader),
        |status| status.purged > had,
    )
    .await;
    let purged = cluster.status(leader).purged;
    cluster.restart(follower);
    // Entries from its disk's last up to `purged` are in no log any more: applying them
    // takes a snapshot.
    let on_disk = cluster.nodes[&follower].on_disk;
    assert!(
        purged > on_disk,
        "the follower's disk ends at {on_disk}, the leader's log after {purged}"
    );
    until(
        "the follower caught up",
        || cluster.status(follower),
        |status| status.applied >= purged && status.snapshot >= purged,
    )
    .await;
    println!(
        "the follower's log ended at {on_disk}, the leader's began after {purged}, it caught up to {:?}",
        cluster.status(follower)
    );
    submitting.await.unwrap();

    // Leading, it answers for every acknowledged task, each run once.
    cluster.hand_lead_to(follower).await;
    let acknowledged = acknowledged.lock().unwrap().clone();
    for id in &acknowledged {
        cluster.probes[&follower].get(*id).await.unwrap();
    }
    each_recorded_once(&acknowledged, &seen, counting).await;
    pod.shutdown().await.unwrap();
    cluster.stop();
}

/// An answer that a node on the minority side must give: it does not lead, or cannot
/// reach enough of the others to be sure it does.
fn refused<T: std::fmt::Debug>(answer: Result<T, ApiError>) {
    assert!(
        matches!(
            answer,
            Err(ApiError::NotLeader { .. } | ApiError::Unavailable(_))
        ),
        "{answer:?}"
    );
}

/// The leader cut off from both followers (every link between them cut by its proxy):
/// no split brain, a clear refusal to a client on its side, the majority goes on, and once
/// healed the old leader, made to lead again, has every acknowledged task and nothing of
/// what it took in while cut off.
async fn partitioned_leader() {
    let cluster = Cluster::start_with(3, true, None).await;
    let client = cluster.client.clone();
    let pod = cluster.pod(vec![group()]);
    let (seen, counting) = count_results(&client).await;
    let mut acknowledged = Vec::new();
    let submit_some = |n: usize| {
        let client = client.clone();
        async move {
            let specs: Vec<TaskSpec> = (0..n)
                .map(|_| TaskSpec::new(group(), "noop", "work"))
                .collect();
            let ids: Vec<TaskId> = specs.iter().map(|s| s.id).collect();
            client.submit_many(specs).await.unwrap();
            ids
        }
    };
    acknowledged.extend(submit_some(20).await);

    let first = cluster.leader().await;
    cluster.isolate(first, true);
    let cut_off = &cluster.probes[&first];
    let stray = TaskSpec::new(group(), "noop", "stray");
    refused(cut_off.submit(stray.clone()).await);
    refused(cut_off.get(acknowledged[0]).await);

    // The majority elects another leader, with every acknowledged task, and goes on.
    let started = Instant::now();
    let second = loop {
        let now = cluster.leader().await;
        if now != first {
            break now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the cut-off node still leads"
        );
    };
    println!("node {first} cut off, node {second} leads");
    for id in &acknowledged {
        client.get(*id).await.unwrap();
    }
    acknowledged.extend(submit_some(20).await);
    // Meanwhile the node cut off still accepts nothing: no second master.
    refused(cut_off.submit(stray.clone()).await);

    // Healed, the old leader follows, and led again it holds what was acknowledged.
    cluster.isolate(first, false);
    cluster.hand_lead_to(first).await;
    for id in &acknowledged {
        cut_off.get(*id).await.unwrap();
    }
    assert!(
        matches!(cut_off.get(stray.id).await, Err(ApiError::NotFound(_))),
        "the stray task is known"
    );
    each_recorded_once(&acknowledged, &seen, counting).await;
    assert!(
        !seen.lock().unwrap().contains_key(&stray.id),
        "the stray task has a result"
    );
    pod.shutdown().await.unwrap();
    cluster.stop();
}
