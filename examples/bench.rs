//! Benchmarks of mawex. Each scenario prints one JSON line.
//!
//! `cargo run --release --example bench -- --scenario local --tasks 100000`

#[path = "bench/backlog.rs"]
mod backlog;
#[path = "bench/dag.rs"]
mod dag;
#[path = "bench/failover.rs"]
mod failover;
#[path = "bench/pods.rs"]
mod pods;
#[path = "bench/raft.rs"]
mod raft;
#[path = "bench/web.rs"]
mod web;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use mawex::{
    Bytes, GroupName, GrpcPodConnector, HandlerRegistry, InProcess, Master, MasterConfig,
    MasterProxy, Pod, PodConfig, PodConnector, PodId, RemoteMasterProxy, Server, SledJournal,
    TaskInput, TaskSpec,
};

#[derive(Parser, Debug)]
struct Args {
    /// Which scenario to run: `local`, `grpc`, `fair` (local, 1,000 fairness keys),
    /// `sandbox` (per-task overhead of each sandbox against a bare spawn), `broadcast`, or
    /// `backlog` (`--tasks` pending with no pod: memory, journal, snapshot pause, list,
    /// restart after kill -9), or `pods` (`--pods` one-slot pods over gRPC: the idle
    /// master's CPU, then throughput), or `raft` (batches of events through a one-node
    /// openraft cluster on the Raft log store: throughput and syncs a batch), or `failover`
    /// (three master processes, the leader killed `--kills` times under load: time to the
    /// first accepted submit, lost and double-recorded tasks), or `web` (`--tasks` finished
    /// tasks retained: the dashboard's task list at page 50 and a search by error text, and
    /// the `grpc` throughput with every page open against without), or `dag` (`--nodes` no-op
    /// nodes in layers of `--width`, each after two of the layer before, as one graph: its
    /// throughput against as many flat tasks, and the latency each edge adds).
    #[arg(long, default_value = "local")]
    scenario: String,
    /// Tasks in the throughput phase.
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// Tasks per submit batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Pod slots.
    #[arg(long, default_value_t = 2)]
    slots: u32,
    /// Leases a pod holds queued beyond its slots: a number (fixed), or `default` (the
    /// library's default: adaptive, up to 1,024).
    #[arg(long, default_value = "1024", value_parser = parse_prefetch)]
    prefetch: Prefetch,
    /// Events between snapshots (0: only at shutdown).
    #[arg(long, default_value_t = MasterConfig::default().snapshot_every)]
    snapshot_every: u64,
    /// Sequential single-task round trips measured for latency.
    #[arg(long, default_value_t = 1000)]
    rtt_samples: usize,
    /// `pods`: how many pods connect.
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// `broadcast`: pods to reach.
    #[arg(long, default_value_t = 100)]
    targets: usize,
    /// `broadcast`: concurrent pulls one source serves.
    #[arg(long, default_value_t = 5)]
    per_source: u32,
    /// `broadcast`: how long one pull takes.
    #[arg(long, default_value_t = 200)]
    pull_ms: u64,
    /// `grpc`: serve over TLS (a certificate authority made for the run).
    #[arg(long)]
    tls: bool,
    /// `grpc`: require tokens (a client and a pod token made for the run).
    #[arg(long)]
    tokens: bool,
    /// `failover`: how many times the leader of three is killed.
    #[arg(long, default_value_t = 5)]
    kills: usize,
    /// `failover`: the nodes' shortest election timeout in ms (the longest is twice it,
    /// heartbeats a fifth of it); without it, `NodeConfig`'s defaults.
    #[arg(long)]
    election_ms: Option<u64>,
    /// `local`, `grpc`, `fair`: where the master keeps its journal: `sled` (a `SledJournal`)
    /// or `raft` (the Raft log of a one-node cluster, `mawex_raft::ReplicatedMaster`).
    #[arg(long, default_value = "sled", value_parser = ["sled", "raft"])]
    log: String,
    /// `grpc`: masters of a cluster on loopback (in this process, over gRPC with
    /// `GrpcNetwork`); the client and the pod are given every node. 1: one master alone,
    /// on `--log`.
    #[arg(long, default_value_t = 1)]
    masters: u64,
    /// `dag`: nodes of the graph (in layers of `--width`; the flat comparison runs as many).
    #[arg(long, default_value_t = 100_000)]
    nodes: usize,
    /// `dag`: nodes a layer.
    #[arg(long, default_value_t = 1000)]
    width: usize,
}

/// A fixed number of leases, or `None`: the library's default.
#[derive(Debug, Clone, Copy)]
struct Prefetch(Option<u32>);

/// `default` or a number.
fn parse_prefetch(text: &str) -> Result<Prefetch, String> {
    match text {
        "default" => Ok(Prefetch(None)),
        n => n
            .parse()
            .map(|n| Prefetch(Some(n)))
            .map_err(|e| format!("a number or `default`: {e}")),
    }
}

/// What the `grpc` scenario's server, client and pod are set up with.
struct Security {
    server_tls: Option<mawex::ServerTls>,
    tokens: Option<mawex::auth::TokenStore>,
    client: mawex::ChannelConfig,
    pod: mawex::ChannelConfig,
}

/// TLS from a fresh authority and a server certificate for `localhost`, and a client and a
/// pod token, as asked for.
fn security(args: &Args) -> anyhow::Result<Security> {
    use mawex::auth::{generate_token, Role, TokenEntry, TokenStore, Tokens};
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut out = Security {
        server_tls: None,
        tokens: None,
        client: mawex::ChannelConfig::default(),
        pod: mawex::ChannelConfig::default(),
    };
    if args.tls {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&key, &ca)?;
        out.server_tls = Some(mawex::ServerTls::new(cert.pem(), key.serialize_pem()));
        let tls = mawex::ClientTls::new(ca.pem());
        out.client = out.client.with_tls(tls.clone());
        out.pod = out.pod.with_tls(tls);
    }
    if args.tokens {
        let (client, _) = generate_token("bench-client", Role::Client)?;
        let (pod, _) = generate_token("bench-pod", Role::Pod)?;
        out.tokens = Some(TokenStore::new(Tokens::new([
            TokenEntry::new("bench-client", Role::Client, &client),
            TokenEntry::new("bench-pod", Role::Pod, &pod),
        ])?));
        out.client = out.client.with_token(client);
        out.pod = out.pod.with_token(pod);
    }
    Ok(out)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// How the client and the pod reach the master.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Local,
    Grpc,
}

/// The master of a scenario: on the sled journal, on the Raft log of a cluster of one, or
/// the nodes of a cluster, each with its server.
enum Running {
    Plain(Master),
    Replicated(mawex_raft::ReplicatedMaster),
    Cluster(Vec<(mawex_raft::MasterNode, mawex::RunningServer)>),
}

/// `n` master nodes in `dir`, each served on a loopback port (the Raft link among them,
/// for `peer` tokens), made a cluster; and their endpoints.
async fn cluster(
    n: u64,
    dir: &std::path::Path,
    config: &MasterConfig,
) -> anyhow::Result<(Running, Vec<String>)> {
    let mut nodes = Vec::new();
    let mut members = std::collections::BTreeMap::new();
    for id in 1..=n {
        let node = mawex_raft::MasterNode::start(
            dir.join(format!("node-{id}")),
            mawex_raft::NodeConfig::new(id),
            mawex_raft::GrpcNetwork::new(),
            config.clone(),
        )
        .await?;
        let server = Server::over(
            Arc::new(node.client()),
            Arc::new(node.pod_connector()),
            config.max_payload_bytes,
        )
        .add_service_for(mawex::auth::Role::Peer, mawex_raft::raft_service(&node))
        .start("127.0.0.1:0".parse()?)
        .await?;
        members.insert(
            id,
            openraft::BasicNode::new(server.local_addr().to_string()),
        );
        nodes.push((node, server));
    }
    let endpoints = nodes.iter().map(|(_, s)| s.endpoint()).collect();
    nodes
        .first()
        .ok_or_else(|| anyhow::anyhow!("no node"))?
        .0
        .initialize(members)
        .await?;
    Ok((Running::Cluster(nodes), endpoints))
}

/// Distinct fairness keys of the `fair` scenario.
const FAIR_KEYS: usize = 1000;

async fn run(args: &Args, transport: Transport, fair: bool) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let mut config = MasterConfig::default();
    config.snapshot_every = args.snapshot_every;
    let security = security(args)?;
    let (running, endpoints) = if args.masters > 1 {
        anyhow::ensure!(
            transport == Transport::Grpc && !fair && !args.tls && !args.tokens,
            "--masters is for the grpc scenario, without --tls and --tokens"
        );
        cluster(args.masters, dir.path(), &config).await?
    } else {
        let builder = Master::builder().config(config);
        let running = if args.log == "raft" {
            let node = mawex_raft::ReplicatedMaster::start_single(dir.path().join("raft"), builder)
                .await?;
            Running::Replicated(node)
        } else {
            let journal = SledJournal::open(dir.path().join("journal"))?;
            Running::Plain(builder.start(journal).await?)
        };
        (running, Vec::new())
    };
    let master = match &running {
        Running::Replicated(node) => Some(node.master()),
        Running::Plain(master) => Some(master),
        Running::Cluster(_) => None,
    };
    let server = match (transport, master) {
        (Transport::Grpc, Some(master)) => {
            let mut server = Server::new(master);
            if let Some(tls) = security.server_tls.clone() {
                server = server.tls(tls);
            }
            if let Some(tokens) = security.tokens.clone() {
                server = server.tokens(tokens);
            }
            Some(server.start("127.0.0.1:0".parse()?).await?)
        }
        _ => None,
    };
    let (proxy, connector): (Arc<dyn MasterProxy>, Arc<dyn PodConnector>) = match (&server, master)
    {
        (None, None) => (
            Arc::new(RemoteMasterProxy::with_config(
                &endpoints,
                mawex::RemoteConfig::default(),
            )?),
            Arc::new(GrpcPodConnector::with_config(
                &endpoints,
                Default::default(),
            )?),
        ),
        (None, Some(master)) => (Arc::new(master.proxy()), Arc::new(master.pod_connector())),
        (Some(server), _) => {
            let endpoint = match security.server_tls {
                Some(_) => format!("https://localhost:{}", server.local_addr().port()),
                None => server.endpoint(),
            };
            let mut remote = mawex::RemoteConfig::default();
            remote.channel = security.client.clone();
            (
                Arc::new(RemoteMasterProxy::with_config([endpoint.as_str()], remote)?),
                Arc::new(GrpcPodConnector::with_config(
                    [endpoint.as_str()],
                    security.pod.clone(),
                )?),
            )
        }
    };
    let group = GroupName::new("bench")?;
    let mut handlers = HandlerRegistry::new();
    handlers.register("noop", |_: TaskInput| async { Ok(Bytes::new()) })?;
    let mut pod_config =
        PodConfig::new(PodId::new("bench-pod")?, vec![group.clone()]).with_slots(args.slots);
    if let Prefetch(Some(n)) = args.prefetch {
        pod_config = pod_config.with_prefetch(n);
    }
    let pod = Pod::start(pod_config, Arc::new(InProcess::new(handlers)), connector)?;

    let seconds = throughput(&proxy, &group, args.tasks, args.batch, fair).await?;

    // Latency: one task at a time on an idle master.
    let mut rtts = Vec::with_capacity(args.rtt_samples);
    for _ in 0..args.rtt_samples {
        let t = Instant::now();
        let ack = proxy
            .submit(TaskSpec::new(group.clone(), "noop", Bytes::new()))
            .await?;
        proxy.await_result(ack.id).await?;
        rtts.push(t.elapsed());
    }
    rtts.sort();

    pod.shutdown().await?;
    if let Some(server) = server {
        server.shutdown().await?;
    }
    match running {
        Running::Replicated(node) => node.shutdown().await?,
        Running::Plain(master) => master.shutdown().await?,
        Running::Cluster(nodes) => {
            for (node, server) in nodes {
                server.shutdown().await?;
                node.shutdown().await?;
            }
        }
    }
    Ok(serde_json::json!({
        "scenario": match (transport, fair) {
            (_, true) => "fair",
            (Transport::Local, false) => "local",
            (Transport::Grpc, false) => "grpc",
        },
        "fairness_keys": if fair { FAIR_KEYS } else { 0 },
        "tasks": args.tasks,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "tasks_per_s": (args.tasks as f64 / seconds).round(),
        "rtt_ms_p50": (percentile(&rtts, 0.50) * 1000.0).round() / 1000.0,
        "rtt_ms_p99": (percentile(&rtts, 0.99) * 1000.0).round() / 1000.0,
        "slots": args.slots,
        "prefetch": args.prefetch.0.map_or_else(|| serde_json::json!("default"), |n| serde_json::json!(n)),
        "log": if args.masters > 1 { "raft" } else { args.log.as_str() },
        "masters": args.masters,
        "tls": transport == Transport::Grpc && args.tls,
        "tokens": transport == Transport::Grpc && args.tokens,
    }))
}

/// Submits `tasks` no-op tasks of `group` in batches of `batch` (each of one of
/// [`FAIR_KEYS`] fairness keys if `fair`) while a result stream counts them. Returns the
/// seconds from the first submit to the last result.
async fn throughput(
    proxy: &Arc<dyn MasterProxy>,
    group: &GroupName,
    tasks: usize,
    batch: usize,
    fair: bool,
) -> anyhow::Result<f64> {
    let mut results = proxy.results(group.clone(), None).await?;
    let started = Instant::now();
    let submitter = {
        let proxy = proxy.clone();
        let group = group.clone();
        tokio::spawn(async move {
            let mut left = tasks;
            while left > 0 {
                let n = left.min(batch);
                let specs = (0..n)
                    .map(|i| {
                        let spec = TaskSpec::new(group.clone(), "noop", Bytes::new());
                        if fair {
                            spec.with_fairness_key(format!("tenant-{}", (left + i) % FAIR_KEYS))
                        } else {
                            spec
                        }
                    })
                    .collect();
                proxy.submit_many(specs).await?;
                left -= n;
            }
            anyhow::Ok(())
        })
    };
    let mut done = 0;
    while done < tasks {
        let next = tokio::time::timeout(Duration::from_secs(60), results.next()).await;
        let Ok(next) = next else {
            if submitter.is_finished() {
                submitter.await??;
            }
            anyhow::bail!("no result for 60 s after {done} of {tasks}");
        };
        let r = next.context("result stream ended")??;
        anyhow::ensure!(
            matches!(r.outcome, mawex::Outcome::Succeeded(_)),
            "a no-op failed: {:?}",
            r.outcome
        );
        done += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    submitter.await??;
    Ok(seconds)
}

/// A child process of the bench, killed when this is dropped, whatever the parent's path
/// out.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Median and p99 of `samples` in ms, as a JSON line for `sandbox`.
fn overhead_line(sandbox: &str, samples: &mut [Duration]) -> serde_json::Value {
    samples.sort();
    serde_json::json!({
        "scenario": "sandbox",
        "sandbox": sandbox,
        "runs": samples.len(),
        "ms_p50": (percentile(samples, 0.50) * 1000.0).round() / 1000.0,
        "ms_p99": (percentile(samples, 0.99) * 1000.0).round() / 1000.0,
    })
}

/// Times `runs` attempts of a no-op in each sandbox, and bare spawns of `/bin/true`.
async fn sandboxes(runs: usize) -> anyhow::Result<Vec<serde_json::Value>> {
    use mawex::sandbox::{CommandSandbox, CommandSpec};
    use mawex::Sandbox;
    use tokio_util::sync::CancellationToken;

    let in_process = InProcess::new(noop_handlers()?);
    let mut command = CommandSandbox::new();
    command.command("noop", CommandSpec::new(["/bin/true"]))?;
    let forked = mawex::sandbox::ForkedSandbox::new()?;
    let mut forked_warm = mawex::sandbox::ForkedSandbox::new()?;
    forked_warm.fork_server = false;
    let mut forked_cold = mawex::sandbox::ForkedSandbox::new()?;
    forked_cold.fork_server = false;
    forked_cold.warm = 0;

    let mut lines = Vec::new();
    let candidates: [(&str, &dyn Sandbox); 5] = [
        ("in-process", &in_process),
        ("forked", &forked),
        ("forked-spawn-warm", &forked_warm),
        ("forked-spawn-cold", &forked_cold),
        ("command", &command),
    ];
    for (name, sandbox) in candidates {
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            sandbox
                .run(
                    TaskInput::for_test("noop", Bytes::new()),
                    CancellationToken::new(),
                )
                .await?;
            samples.push(t.elapsed());
        }
        lines.push(overhead_line(name, &mut samples));
    }
    // Tasks that arrive with gaps (every 5 ms) find a warm child ready.
    let mut samples = Vec::with_capacity(runs / 4);
    for _ in 0..runs / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t = Instant::now();
        forked_warm
            .run(
                TaskInput::for_test("noop", Bytes::new()),
                CancellationToken::new(),
            )
            .await?;
        samples.push(t.elapsed());
    }
    lines.push(overhead_line("forked-spawn-warm-paced", &mut samples));
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let status = std::process::Command::new("/bin/true").status()?;
        anyhow::ensure!(status.success(), "/bin/true failed");
        samples.push(t.elapsed());
    }
    lines.push(overhead_line("bare-spawn", &mut samples));
    Ok(lines)
}

/// A broadcast to `--targets` pods whose pull takes `--pull-ms`, against the same pulls all
/// served by the origin, `--per-source` at a time (a group capped at that concurrency).
async fn broadcast(args: &Args) -> anyhow::Result<serde_json::Value> {
    use mawex::{BroadcastSpec, GroupSettings, Strategy};

    let dir = tempfile::tempdir()?;
    let journal = SledJournal::open(dir.path().join("journal"))?;
    let master = Master::builder().start(journal).await?;
    let pull = Duration::from_millis(args.pull_ms);
    let (fleet, origin) = (GroupName::new("fleet")?, GroupName::new("origin-push")?);
    let mut handlers = HandlerRegistry::new();
    handlers.register("pull", move |_: TaskInput| async move {
        tokio::time::sleep(pull).await;
        Ok(Bytes::new())
    })?;
    let mut pods = Vec::with_capacity(args.targets);
    for i in 0..args.targets {
        let mut config = PodConfig::new(
            PodId::new(format!("pod-{i:04}"))?,
            vec![fleet.clone(), origin.clone()],
        );
        config.address = Some(format!("10.0.{}.{}:873", i / 250, i % 250 + 1));
        pods.push(Pod::start(
            config,
            Arc::new(InProcess::new(handlers.clone())),
            Arc::new(master.pod_connector()),
        )?);
    }
    let proxy = master.proxy();
    let mut stats = master.stats();
    stats
        .wait_for(|s| s.pods.len() == args.targets)
        .await
        .context("pods connect")?;

    let started = Instant::now();
    let fired = proxy
        .fire_broadcast(
            BroadcastSpec::new("bench", fleet.clone(), "pull")
                .with_strategy(Strategy::Pull {
                    per_source: args.per_source,
                })
                .with_origin_address("origin:873"),
        )
        .await?;
    let view = proxy
        .wait_broadcast(fired.id, Duration::from_secs(3600))
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        view.done() == args.targets,
        "{} of {} targets done",
        view.done(),
        args.targets
    );

    // Origin push: the same pulls, all from the origin, `per_source` at a time.
    let settings = GroupSettings::default().with_max_concurrency(Some(args.per_source));
    proxy.configure_group(origin.clone(), settings).await?;
    let specs: Vec<TaskSpec> = (0..args.targets)
        .map(|_| TaskSpec::new(origin.clone(), "pull", Bytes::new()))
        .collect();
    let ids: Vec<_> = specs.iter().map(|s| s.id).collect();
    let started = Instant::now();
    proxy.submit_many(specs).await?;
    for id in ids {
        proxy.await_result(id).await?;
    }
    let seconds_origin_push = started.elapsed().as_secs_f64();

    for pod in pods {
        pod.shutdown().await?;
    }
    master.shutdown().await?;
    // ⌈log_(c+1) (N+1)⌉: each wave, every finished node (and the origin) serves c.
    let mut waves_ideal = 0u32;
    let mut reached = 1u64;
    while reached < args.targets as u64 + 1 {
        reached *= u64::from(args.per_source) + 1;
        waves_ideal += 1;
    }
    let seconds_ideal = f64::from(waves_ideal) * pull.as_secs_f64();
    Ok(serde_json::json!({
        "scenario": "broadcast",
        "targets": args.targets,
        "per_source": args.per_source,
        "pull_ms": args.pull_ms,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "waves_ideal": waves_ideal,
        "seconds_ideal": (seconds_ideal * 1000.0).round() / 1000.0,
        "seconds_origin_push": (seconds_origin_push * 1000.0).round() / 1000.0,
        "vs_ideal": (seconds / seconds_ideal * 100.0).round() / 100.0,
        "speedup_vs_origin_push": (seconds_origin_push / seconds * 10.0).round() / 10.0,
    }))
}

fn noop_handlers() -> anyhow::Result<HandlerRegistry> {
    let mut handlers = HandlerRegistry::new();
    handlers.register("noop", |_: TaskInput| async { Ok(Bytes::new()) })?;
    Ok(handlers)
}

fn main() -> anyhow::Result<()> {
    // The `sandbox` scenario forks this binary: in the child, run the attempt and exit.
    mawex::sandbox::forked::run_if_child(&noop_handlers()?);
    // The `backlog` scenario runs its master in a child process, to kill it.
    backlog::run_if_child()?;
    // ... and so does `pods`, to measure the master's CPU apart from the pods'.
    pods::run_if_child()?;
    // `failover` runs each master node in a process of its own, to kill the leader.
    failover::run_if_child()?;
    tokio::runtime::Runtime::new()?.block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.scenario == "sandbox" {
        for line in sandboxes(args.rtt_samples).await? {
            println!("{line}");
        }
        return Ok(());
    }
    let line = match args.scenario.as_str() {
        "local" => run(&args, Transport::Local, false).await?,
        "grpc" => run(&args, Transport::Grpc, false).await?,
        "fair" => run(&args, Transport::Local, true).await?,
        "broadcast" => broadcast(&args).await?,
        "backlog" => backlog::backlog(args.tasks).await?,
        "pods" => pods::pods(args.pods, args.tasks, args.batch).await?,
        "raft" => raft::raft(args.tasks).await?,
        "failover" => failover::failover(args.kills, args.election_ms).await?,
        "web" => web::web(args.tasks, args.batch).await?,
        "dag" => {
            dag::dag(
                args.nodes,
                args.width,
                args.slots,
                args.prefetch.0,
                &args.log,
            )
            .await?
        }
        other => anyhow::bail!(
            "unknown scenario {other:?}; known: local, grpc, fair, sandbox, broadcast, \
             backlog, pods, raft, failover, web, dag"
        ),
    };
    println!("{line}");
    Ok(())
}
