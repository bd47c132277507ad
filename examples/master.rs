//! A standalone master: durable journal, gRPC for clients and pods.
//!
//! `cargo run --example master -- --listen 127.0.0.1:7070 --journal ./mawex-journal`
//! Stop it with Ctrl-C (clean: snapshot and close). It is the one node of its cluster (the
//! default); `--sled` keeps a plain sled journal instead.
//!
//! Or one node of a cluster of masters (`--node-id`, `--peers`; `--initialize` on one node,
//! once), whose `--journal` directory holds the node's Raft log: see the README. A cluster of
//! one grows on its data: start it again as node 1 with `--peers`, then add the others.
//!
//! On a network: `--tls-cert server.pem --tls-key server.key --tokens tokens.toml` (the
//! files are watched and reloaded when they change, and on SIGHUP); `--client-ca ca.pem`
//! requires client certificates too. Without TLS and tokens it serves only on loopback, unless `--insecure`.
//! A node of a cluster calls its peers over TLS with `--peer-ca ca.pem`, sending the `peer`
//! token in `MAWEX_PEER_TOKEN`.

use std::time::Duration;

use clap::Parser;
use mawex::auth::{TokenStore, Tokens};
use mawex::{Master, MasterConfig, ReplicatedMaster, Server, ServerTls, SledJournal};

#[derive(Parser, Debug)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: std::net::SocketAddr,
    /// Journal directory (created if missing).
    #[arg(long, default_value = "./mawex-journal")]
    journal: std::path::PathBuf,
    /// A plain sled journal rather than the Raft log of a cluster of one (a directory holds
    /// one or the other).
    #[arg(long, conflicts_with = "node_id")]
    sled: bool,
    /// Seconds a silent pod keeps its leases.
    #[arg(long, default_value_t = 10.0)]
    lease_timeout: f64,
    /// Token file (TOML, see `mawex::auth`): every call then needs a token.
    #[arg(long)]
    tokens: Option<std::path::PathBuf>,
    /// PEM certificate chain to serve TLS with (with `--tls-key`).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// PEM authorities whose client certificates are required (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<std::path::PathBuf>,
    /// Serve on a non-loopback address even without TLS and tokens.
    #[arg(long)]
    insecure: bool,
    /// This node's id in a cluster of masters (with `--peers`).
    #[arg(long, requires = "peers")]
    node_id: Option<u64>,
    /// Every node of the cluster, this one included: `1=127.0.0.1:7070,2=…` (the address
    /// each serves on).
    #[arg(long, requires = "node_id")]
    peers: Option<String>,
    /// Makes the cluster of `--peers`: on one node, the first time only.
    #[arg(long, requires = "node_id")]
    initialize: bool,
    /// PEM authority of the other nodes' certificates: the node calls its peers over TLS
    /// (needed with `--tls-cert`, since the peers serve TLS only). The peer token, if the
    /// nodes check tokens, comes from the environment variable `MAWEX_PEER_TOKEN`.
    #[arg(long, requires = "node_id")]
    peer_ca: Option<std::path::PathBuf>,
    /// The name the peers' certificates are checked against (default: the host of each
    /// address in `--peers`).
    #[arg(long, requires = "peer_ca")]
    peer_domain: Option<String>,
}

/// How this node calls its peers: over TLS with `--peer-ca`, with the token in
/// `MAWEX_PEER_TOKEN` if it is set.
fn peer_channel(args: &Args) -> anyhow::Result<mawex::ChannelConfig> {
    let mut channel = mawex::ChannelConfig::default();
    if let Some(ca) = &args.peer_ca {
        let mut tls = mawex::ClientTls::new(std::fs::read(ca)?);
        if let Some(domain) = &args.peer_domain {
            tls = tls.with_domain(domain.clone());
        }
        // Peers that require client certificates (`--client-ca`) get this node's own.
        if let (Some(_), Some(cert), Some(key)) = (&args.client_ca, &args.tls_cert, &args.tls_key) {
            tls = tls.with_identity(std::fs::read(cert)?, std::fs::read(key)?);
        }
        channel = channel.with_tls(tls);
    }
    if let Ok(token) = std::env::var("MAWEX_PEER_TOKEN") {
        channel = channel.with_token(token);
    }
    Ok(channel)
}

/// `1=host:port,2=host:port` as members.
fn parse_peers(text: &str) -> anyhow::Result<std::collections::BTreeMap<u64, openraft::BasicNode>> {
    text.split(',')
        .map(|peer| {
            let (id, addr) = peer
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--peers: {peer:?} is not id=host:port"))?;
            Ok((id.trim().parse()?, openraft::BasicNode::new(addr.trim())))
        })
        .collect()
}

/// What serves: a master of its own, or a node of a cluster.
enum Running {
    Plain(Master),
    Single(ReplicatedMaster),
    Node(mawex_raft::MasterNode),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = MasterConfig::default();
    config.lease_timeout = std::time::Duration::from_secs_f64(args.lease_timeout);
    config.heartbeat_interval = config.lease_timeout / 5;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let (running, mut server) = match (args.node_id, &args.peers) {
        (Some(id), Some(peers)) => {
            // Peers serve TLS only once this node does: it must call them over TLS too.
            anyhow::ensure!(
                args.tls_cert.is_none() || args.peer_ca.is_some(),
                "a node serving TLS calls its peers over TLS: give --peer-ca"
            );
            let peers = parse_peers(peers)?;
            anyhow::ensure!(peers.contains_key(&id), "--peers does not name node {id}");
            let max_payload = config.max_payload_bytes;
            let mut node_config = mawex_raft::NodeConfig::new(id);
            node_config.address = Some(peers[&id].addr.clone());
            let node = mawex_raft::MasterNode::start(
                &args.journal,
                node_config,
                mawex_raft::GrpcNetwork::with_config(peer_channel(&args)?),
                config,
            )
            .await?;
            if args.initialize {
                node.initialize(peers).await?;
            }
            let server = Server::over(
                std::sync::Arc::new(node.client()),
                std::sync::Arc::new(node.pod_connector()),
                max_payload,
            )
            .add_service_for(mawex::auth::Role::Peer, mawex_raft::raft_service(&node))
            .add_service_for(
                mawex::auth::Role::Admin,
                mawex_raft::admin_service(node.admin()),
            );
            (Running::Node(node), server)
        }
        _ if args.sled => {
            let master = Master::builder()
                .config(config)
                .start(SledJournal::open(&args.journal)?)
                .await?;
            let server = Server::new(&master);
            (Running::Plain(master), server)
        }
        _ => {
            let node =
                ReplicatedMaster::start_single(&args.journal, Master::builder().config(config))
                    .await?;
            let server = Server::new(node.master());
            (Running::Single(node), server)
        }
    };
    println!(
        "mawex master listening on http://{}",
        listener.local_addr()?
    );
    // Serves until Ctrl-C, or until the master stops on its own (a journal write failed):
    // then ends open streams so clients and pods move on at once. (A node of a cluster
    // goes on: another node takes over.)
    let stopped: std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>> =
        match &running {
            Running::Plain(master) => Box::pin(master.stopped()),
            Running::Single(node) => Box::pin(node.master().stopped()),
            Running::Node(_) => Box::pin(std::future::pending()),
        };
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
    let mut watchers = Vec::new();
    let mut reload_tokens = None;
    if let Some(path) = &args.tokens {
        let tokens = TokenStore::new(Tokens::from_file(path)?);
        watchers.push(tokens.watch(path, Duration::from_secs(2)));
        reload_tokens = Some((tokens.clone(), path.clone()));
        server = server.tokens(tokens);
    }
    let mut reload_tls = None;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let tls = ServerTls::from_files_with_clients(cert, key, args.client_ca.as_deref())?;
        server = server.tls(tls);
        let handle = server.tls_handle()?;
        watchers.push(handle.watch_files(
            cert,
            key,
            args.client_ca.clone(),
            Duration::from_secs(5),
        ));
        reload_tls = Some((handle, cert.clone(), key.clone(), args.client_ca.clone()));
    }
    // SIGHUP reloads both at once, for operators who rotate files and then signal.
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    watchers.push(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if let Some((tokens, path)) = &reload_tokens {
                match tokens.reload(path) {
                    Ok(n) => println!("SIGHUP: {n} tokens loaded"),
                    Err(e) => eprintln!("SIGHUP: tokens not reloaded: {e}"),
                }
            }
            if let Some((handle, cert, key, ca)) = &reload_tls {
                let loaded = ServerTls::from_files_with_clients(cert, key, ca.as_deref());
                match loaded.and_then(|tls| handle.reload(&tls)) {
                    Ok(()) => println!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => eprintln!("SIGHUP: TLS not reloaded: {e}"),
                }
            }
        }
    }));
    if args.insecure {
        server = server.insecure();
    }
    server
        .serve(listener, async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => println!("shutting down"),
                reason = stopped => {
                    let _ = failed_tx.send(reason);
                }
            }
        })
        .await?;
    watchers.iter().for_each(tokio::task::JoinHandle::abort);
    if let Ok(reason) = failed_rx.await {
        anyhow::bail!("the master stopped: {reason}");
    }
    match running {
        Running::Plain(master) => master.shutdown().await?,
        Running::Single(node) => node.shutdown().await?,
        Running::Node(node) => node.shutdown().await?,
    }
    Ok(())
}
