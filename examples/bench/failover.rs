//! `--scenario failover`: three master nodes, each a process of its own (this binary again)
//! serving clients, pods and its peers on one loopback port. While a client submits without
//! pause and a pod runs the tasks, the leader is killed with SIGKILL, `--kills` times (each
//! time brought back, to follow): how long from the kill to the first submit accepted, and,
//! at the end, whether every acknowledged task has exactly one result.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mawex::{
    ApiError, GroupName, GrpcPodConnector, InProcess, MasterConfig, MasterProxy, Pod, PodConfig,
    PodId, RemoteConfig, RemoteMasterProxy, Server, TaskId, TaskSpec,
};
use mawex_raft::{raft_service, GrpcNetwork, MasterNode, NodeConfig};

/// Set in a child: its node id, its data directory, and every member as `id=host:port,…`.
const CHILD_ID: &str = "MAWEX_BENCH_NODE_ID";
const CHILD_DIR: &str = "MAWEX_BENCH_NODE_DIR";
const CHILD_MEMBERS: &str = "MAWEX_BENCH_MEMBERS";
/// Set in the child that makes the cluster.
const CHILD_INIT: &str = "MAWEX_BENCH_NODE_INIT";
/// Set in a child when `--election-ms` is given: the shortest election timeout (the longest
/// is twice it, heartbeats a fifth of it).
const CHILD_ELECTION_MS: &str = "MAWEX_BENCH_ELECTION_MS";

fn members_from(text: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    text.split(',')
        .map(|member| {
            let (id, addr) = member
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("a member without '=': {member:?}"))?;
            Ok((id.parse()?, addr.to_owned()))
        })
        .collect()
}

/// In a child, runs its node until its standard input closes (or it is killed), and never
/// returns; else does nothing.
pub(crate) fn run_if_child() -> anyhow::Result<()> {
    let (Ok(id), Ok(dir), Ok(members)) = (
        std::env::var(CHILD_ID),
        std::env::var(CHILD_DIR),
        std::env::var(CHILD_MEMBERS),
    ) else {
        return Ok(());
    };
    let id: u64 = id.parse()?;
    let members = members_from(&members)?;
    let init = std::env::var_os(CHILD_INIT).is_some();
    tokio::runtime::Runtime::new()?.block_on(child(id, dir.into(), members, init))?;
    std::process::exit(0);
}

async fn child(
    id: u64,
    dir: std::path::PathBuf,
    members: BTreeMap<u64, String>,
    init: bool,
) -> anyhow::Result<()> {
    let addr = members
        .get(&id)
        .ok_or_else(|| anyhow::anyhow!("node {id} is not a member"))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let master = MasterConfig::default();
    let max_payload = master.max_payload_bytes;
    let mut config = NodeConfig::new(id);
    if let Ok(ms) = std::env::var(CHILD_ELECTION_MS) {
        let ms: u64 = ms.parse()?;
        config.election_timeout = (Duration::from_millis(ms), Duration::from_millis(2 * ms));
        config.heartbeat = Duration::from_millis(ms / 5);
    }
    let node = MasterNode::start(&dir, config, GrpcNetwork::new(), master).await?;
    let server = Server::over(
        Arc::new(node.client()),
        Arc::new(node.pod_connector()),
        max_payload,
    )
    .add_service_for(mawex::auth::Role::Peer, raft_service(&node));
    let serving = tokio::spawn(server.serve(listener, std::future::pending()));
    if init {
        let members = members
            .iter()
            .map(|(id, addr)| (*id, openraft::BasicNode::new(addr.clone())))
            .collect();
        node.initialize(members).await?;
    }
    println!("ready");
    // Until the parent goes (its end of stdin closes) or kills this process.
    tokio::task::spawn_blocking(|| {
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())
    })
    .await??;
    serving.abort();
    node.shutdown().await?;
    Ok(())
}

/// A node's process.
struct Child {
    process: super::KillOnDrop,
}

fn spawn(
    id: u64,
    dir: &std::path::Path,
    members: &str,
    init: bool,
    election_ms: Option<u64>,
) -> anyhow::Result<Child> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .env(CHILD_ID, id.to_string())
        .env(CHILD_DIR, dir)
        .env(CHILD_MEMBERS, members)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    if init {
        command.env(CHILD_INIT, "1");
    }
    if let Some(ms) = election_ms {
        command.env(CHILD_ELECTION_MS, ms.to_string());
    }
    let mut process = super::KillOnDrop(command.spawn()?);
    let stdout = process
        .0
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    anyhow::ensure!(line.trim() == "ready", "node {id} said {line:?}");
    Ok(Child { process })
}

/// The id of the node that runs the master: the one that answers a read (the others say
/// they do not lead).
async fn find_leader(
    clients: &BTreeMap<u64, RemoteMasterProxy>,
    within: Duration,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    loop {
        for (id, client) in clients {
            if let Err(ApiError::NotFound(_)) = client.get(TaskId::new()).await {
                return Ok(*id);
            }
        }
        anyhow::ensure!(started.elapsed() < within, "no leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) async fn failover(
    kills: usize,
    election_ms: Option<u64>,
) -> anyhow::Result<serde_json::Value> {
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        // A free port for each node: bound here to learn it, and let go for the node.
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        members.insert(id, listener.local_addr()?.to_string());
    }
    let member_list = members
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = BTreeMap::new();
    for id in 1..=3u64 {
        let dir = dirs[id as usize - 1].path();
        children.insert(id, spawn(id, dir, &member_list, id == 1, election_ms)?);
    }
    let endpoints: Vec<String> = members.values().map(|a| format!("http://{a}")).collect();
    let mut config = RemoteConfig::default();
    config.retry_for = Duration::from_secs(60);
    let client = Arc::new(RemoteMasterProxy::with_config(&endpoints, config)?);
    // One client per node, that does not look elsewhere, to tell who leads.
    let mut probes = BTreeMap::new();
    for (id, addr) in &members {
        let mut config = RemoteConfig::default();
        config.retry_for = Duration::ZERO;
        probes.insert(
            *id,
            RemoteMasterProxy::with_config([format!("http://{addr}")], config)?,
        );
    }
    find_leader(&probes, Duration::from_secs(30)).await?;

    let group = GroupName::new("failover")?;
    let pod = Pod::start(
        PodConfig::new(PodId::new("failover-pod")?, vec![group.clone()]).with_slots(4),
        Arc::new(InProcess::new(super::noop_handlers()?)),
        Arc::new(GrpcPodConnector::with_config(
            &endpoints,
            Default::default(),
        )?),
    )?;
    // Every result recorded, by task, from the start: a task seen twice was recorded twice.
    let seen: Arc<Mutex<HashMap<TaskId, u32>>> = Arc::default();
    let mut results = client.results(group.clone(), None).await?;
    let counting = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(result) = results.next().await {
                match result {
                    Ok(result) => {
                        *seen
                            .lock()
                            .expect("the counts")
                            .entry(result.id)
                            .or_default() += 1
                    }
                    Err(e) => return Err(anyhow::anyhow!("the result stream ended: {e}")),
                }
            }
            Ok(())
        })
    };
    // Submits without pause, batches of 50, remembering what was acknowledged.
    let acknowledged: Arc<Mutex<Vec<TaskId>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let submitting = {
        let (client, group, acknowledged, stop) = (
            client.clone(),
            group.clone(),
            acknowledged.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let specs: Vec<TaskSpec> = (0..50)
                    .map(|_| TaskSpec::new(group.clone(), "noop", &b""[..]))
                    .collect();
                let ids: Vec<TaskId> = specs.iter().map(|s| s.id).collect();
                client.submit_many(specs).await?;
                acknowledged.lock().expect("the ids").extend(ids);
            }
            anyhow::Ok(())
        })
    };

    let mut takeovers = Vec::with_capacity(kills);
    for _ in 0..kills {
        // Some work under way before each kill.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let leader = find_leader(&probes, Duration::from_secs(30)).await?;
        let mut child = children
            .remove(&leader)
            .ok_or_else(|| anyhow::anyhow!("no child"))?;
        child.process.0.kill()?;
        let killed = Instant::now();
        child.process.0.wait()?;
        // The first submit accepted after the kill, through the client that knows every node.
        client
            .submit(TaskSpec::new(group.clone(), "noop", &b""[..]))
            .await?;
        takeovers.push(killed.elapsed());
        // Back, to follow: the cluster is three again for the next kill.
        let dir = dirs[leader as usize - 1].path();
        children.insert(
            leader,
            spawn(leader, dir, &member_list, false, election_ms)?,
        );
    }
    stop.cancel();
    submitting.await??;

    // Every acknowledged task runs, and is recorded once.
    let acknowledged = acknowledged.lock().expect("the ids").clone();
    let mut lost = 0usize;
    for id in &acknowledged {
        match client.await_result(*id).await {
            Ok(_) => {}
            Err(_) => lost += 1,
        }
    }
    // The stream catches up with the last results.
    let started = Instant::now();
    let wanted: HashSet<TaskId> = acknowledged.iter().copied().collect();
    while started.elapsed() < Duration::from_secs(30) {
        let all_seen = {
            let seen = seen.lock().expect("the counts");
            wanted.iter().all(|id| seen.contains_key(id))
        };
        if all_seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    counting.abort();
    let (double_recorded, streamed) = {
        let seen = seen.lock().expect("the counts");
        (seen.values().filter(|n| **n > 1).count(), seen.len())
    };
    pod.shutdown().await?;
    drop(children);

    takeovers.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1000.0).round();
    Ok(serde_json::json!({
        "scenario": "failover",
        "kills": kills,
        "election_timeout_ms": election_ms.map_or_else(
            || serde_json::json!("default"),
            |ms| serde_json::json!([ms, 2 * ms]),
        ),
        "kill_to_first_accept_ms": takeovers.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        "kill_to_first_accept_ms_p50": ms(takeovers[takeovers.len() / 2]),
        "kill_to_first_accept_ms_max": takeovers.last().map_or(0.0, |d| ms(*d)),
        "acknowledged": acknowledged.len(),
        "lost": lost,
        "double_recorded": double_recorded,
        // Distinct tasks the result stream delivered (all acknowledged ones, unless it
        // ended early: then `double_recorded` counts only what it saw).
        "results_streamed": streamed,
    }))
}
