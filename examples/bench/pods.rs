//! `--scenario pods`: many pods over gRPC, one slot each. How much of a core the master
//! spends on their heartbeats alone, then the no-op throughput they reach together.
//!
//! The master runs in a child process (this binary again), so that its CPU time is its own:
//! the pods, the client and their connections are this process's. Each process holds a
//! socket per pod: `ulimit -n` must allow somewhat more than `--pods`.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mawex::{
    GroupName, GrpcPodConnector, InProcess, Master, MasterConfig, MasterProxy, Pod, PodConfig,
    PodId, RemoteMasterProxy, Server, SledJournal,
};

/// Set in the child: how many pods to wait for before it says it is ready.
const CHILD_PODS: &str = "MAWEX_BENCH_PODS";
/// How long the master's CPU time is sampled while every pod is connected and idle.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// In the child process, runs the master and never returns; else does nothing.
pub(crate) fn run_if_child() -> anyhow::Result<()> {
    let Ok(pods) = std::env::var(CHILD_PODS) else {
        return Ok(());
    };
    let pods: usize = pods.parse()?;
    tokio::runtime::Runtime::new()?.block_on(child(pods))?;
    std::process::exit(0);
}

async fn child(pods: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = MasterConfig::default();
    config.max_pods = config.max_pods.max(pods);
    let master = Master::builder()
        .config(config)
        .start(SledJournal::open(dir.path().join("journal"))?)
        .await?;
    // Every pod connects from 127.0.0.1: room for all of them from one peer.
    let mut server_config = mawex::ServerConfig::default();
    server_config.max_connections_per_peer = server_config.max_connections_per_peer.max(pods + 16);
    let server = Server::new(&master)
        .config(server_config)
        .start("127.0.0.1:0".parse()?)
        .await?;
    println!("{}", server.endpoint());
    let mut stats = master.stats();
    let deadline = Instant::now() + Duration::from_secs(120);
    while stats.borrow().pods.len() < pods {
        anyhow::ensure!(Instant::now() < deadline, "the pods did not all connect");
        tokio::time::timeout(Duration::from_secs(1), stats.changed())
            .await
            .ok();
    }
    println!("ready");
    // Wait to be stopped; should the parent go first, its end of stdin closes.
    tokio::task::spawn_blocking(|| {
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())
    })
    .await??;
    server.shutdown().await?;
    master.shutdown().await?;
    Ok(())
}

/// The CPU time (user and system, all threads) process `pid` has used.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no command in /proc/pid/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the command.
    let ticks: u64 = fields
        .get(11..13)
        .context("a short /proc/pid/stat")?
        .iter()
        .map(|f| f.parse::<u64>())
        .sum::<Result<u64, _>>()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .context("no clock tick rate")?;
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// The parent: starts the master, connects `pods` pods, samples the idle master, then runs
/// `tasks` no-op tasks through them.
pub(crate) async fn pods(
    pods: usize,
    tasks: usize,
    batch: usize,
) -> anyhow::Result<serde_json::Value> {
    let mut child = super::KillOnDrop(
        Command::new(std::env::current_exe()?)
            .env(CHILD_PODS, pods.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let pid = child.0.id();
    let mut lines = std::io::BufReader::new(child.0.stdout.take().context("no stdout")?).lines();
    let endpoint = lines.next().context("the master said nothing")??;

    let group = GroupName::new("pods")?;
    let sandbox = Arc::new(InProcess::new(super::noop_handlers()?));
    let started = Instant::now();
    let mut running = Vec::with_capacity(pods);
    for i in 0..pods {
        let config =
            PodConfig::new(PodId::new(format!("pod-{i:04}"))?, vec![group.clone()]).with_slots(1);
        let connector = Arc::new(GrpcPodConnector::new(&endpoint)?);
        running.push(Pod::start(config, sandbox.clone(), connector)?);
    }
    let ready = tokio::task::spawn_blocking(move || lines.next()).await?;
    anyhow::ensure!(
        matches!(
            ready.as_ref().map(|l| l.as_ref().map(String::as_str)),
            Some(Ok("ready"))
        ),
        "the master did not see every pod: {ready:?}"
    );
    let connect_s = started.elapsed().as_secs_f64();

    // Idle: every pod connected, heartbeating, nothing to run.
    let cpu_before = cpu_time(pid)?;
    let idle_started = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_cpu = cpu_time(pid)?.saturating_sub(cpu_before);
    let idle_pct = idle_cpu.as_secs_f64() / idle_started.elapsed().as_secs_f64() * 100.0;

    // Throughput: submit in batches while a result stream counts completions.
    let proxy: Arc<dyn MasterProxy> = Arc::new(RemoteMasterProxy::with_config(
        [endpoint.as_str()],
        mawex::RemoteConfig::default(),
    )?);
    let cpu_before = cpu_time(pid)?;
    let seconds = super::throughput(&proxy, &group, tasks, batch, false).await?;
    let busy_cpu = cpu_time(pid)?.saturating_sub(cpu_before);

    for pod in running {
        pod.kill();
    }
    drop(child);
    Ok(serde_json::json!({
        "scenario": "pods",
        "pods": pods,
        "tasks": tasks,
        "connect_all_s": (connect_s * 1000.0).round() / 1000.0,
        "idle_master_cpu_pct": (idle_pct * 100.0).round() / 100.0,
        "heartbeat_interval_ms": MasterConfig::default().heartbeat_interval.as_millis() as u64,
        "tasks_per_s": (tasks as f64 / seconds).round(),
        "master_cores_busy": (busy_cpu.as_secs_f64() / seconds * 100.0).round() / 100.0,
    }))
}
