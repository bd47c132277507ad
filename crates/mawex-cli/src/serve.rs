//! The long-running commands: `master`, `worker`, `standalone`. Each runs until SIGTERM or
//! Ctrl-C and then drains: a master finishes its batch, snapshots and closes; a pod stops
//! taking work and finishes or hands back what it runs within its grace period.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use mawex::cluster::{GrpcNetwork, MasterNode, NodeConfig};
use mawex::{
    GroupName, GrpcPodConnector, Limits, Master, MasterConfig, Pod, PodConfig, PodConnector, PodId,
    ReplicatedMaster, Sandbox, Server, ServerTls, SledJournal,
};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::cli::MasterArgs;
use crate::config::{Config, JournalKind};
use crate::CliError;

/// SIGTERM and SIGINT, caught from the moment this is made (a signal before the first wait
/// is not lost, and does not kill the process undrained).
pub(crate) struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub(crate) fn new() -> Result<Self, CliError> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate()).map_err(CliError::io("catching SIGTERM"))?,
            interrupt: signal(SignalKind::interrupt()).map_err(CliError::io("catching SIGINT"))?,
        })
    }

    /// Resolves when the process is asked to stop.
    pub(crate) async fn wait(mut self) {
        tokio::select! {
            _ = self.terminate.recv() => info!("SIGTERM: draining"),
            _ = self.interrupt.recv() => info!("interrupted: draining"),
        }
    }
}

/// The master settings of the configuration.
fn master_config(config: &Config) -> MasterConfig {
    let mut master = MasterConfig::default();
    master.lease_timeout = config.master.lease_timeout;
    master.heartbeat_interval = config.master.heartbeat_interval;
    master
}

/// What serves: a master on a plain journal, a cluster of one, or a node of a cluster.
enum Running {
    Plain(Master),
    Single(ReplicatedMaster),
    Node(MasterNode),
}

/// Resolves with why a master stopped on its own.
type Stopped = Pin<Box<dyn Future<Output = String> + Send>>;

impl Running {
    /// Opens what the configuration describes, and the server for it (no TLS or tokens yet).
    async fn open(config: &Config, initialize: bool) -> Result<(Running, Server), CliError> {
        let section = &config.master;
        let settings = master_config(config);
        let max_payload = settings.max_payload_bytes;
        match (section.journal, section.cluster.node_id) {
            (JournalKind::Sled, Some(_)) => Err(CliError::Config(
                "master.journal: a node of a cluster (master.cluster.node_id) keeps the raft \
                 journal"
                    .into(),
            )),
            (JournalKind::Sled, None) => {
                if initialize {
                    return Err(CliError::Usage(
                        "--initialize makes a cluster: master.journal = \"sled\" has none".into(),
                    ));
                }
                if section.data_dir.join("raft-log").exists() {
                    return Err(CliError::Config(format!(
                        "master.journal: {} holds a node's Raft log, not a sled journal: \
                         keep master.journal = \"raft\", or give the master another directory",
                        section.data_dir.display()
                    )));
                }
                let journal = SledJournal::open(&section.data_dir).map_err(CliError::serve)?;
                let master = Master::builder()
                    .config(settings)
                    .start(journal)
                    .await
                    .map_err(CliError::serve)?;
                let server = Server::new(&master);
                Ok((Running::Plain(master), server))
            }
            (JournalKind::Raft, None) => {
                if initialize {
                    return Err(CliError::Usage(
                        "--initialize makes a cluster of master.cluster.peers: set \
                         master.cluster.node_id and peers"
                            .into(),
                    ));
                }
                let node = ReplicatedMaster::start_single(
                    &section.data_dir,
                    Master::builder().config(settings),
                )
                .await
                .map_err(CliError::serve)?;
                let server = Server::new(node.master());
                Ok((Running::Single(node), server))
            }
            (JournalKind::Raft, Some(id)) => {
                let peers = config.peers()?;
                let mut node_config = NodeConfig::new(id);
                node_config.address = peers.get(&id).cloned();
                let node = MasterNode::start(
                    &section.data_dir,
                    node_config,
                    GrpcNetwork::with_config(peer_channel(config)?),
                    settings,
                )
                .await
                .map_err(CliError::serve)?;
                let initialized = node
                    .raft()
                    .is_initialized()
                    .await
                    .map_err(CliError::serve)?;
                if initialize && initialized {
                    warn!("--initialize: this node's cluster is made already; ignored");
                }
                if initialize && !initialized {
                    let members = peers
                        .into_iter()
                        .map(|(id, address)| (id, mawex::cluster::BasicNode::new(address)))
                        .collect::<BTreeMap<_, _>>();
                    node.initialize(members).await.map_err(CliError::serve)?;
                }
                let server = Server::over(
                    Arc::new(node.client()),
                    Arc::new(node.pod_connector()),
                    max_payload,
                )
                .add_service_for(mawex::auth::Role::Peer, mawex::cluster::raft_service(&node))
                .add_service_for(
                    mawex::auth::Role::Admin,
                    mawex::cluster::admin_service(node.admin()),
                );
                Ok((Running::Node(node), server))
            }
        }
    }

    /// Why the master stopped on its own, when it does. A node's master may stop while
    /// another node leads: only the node itself stopping (its storage failed, say) counts.
    fn stopped(&self) -> Stopped {
        match self {
            Running::Plain(master) => Box::pin(master.stopped()),
            Running::Single(node) => Box::pin(node.master().stopped()),
            Running::Node(node) => Box::pin(node.stopped()),
        }
    }

    /// What the web side serves over: the master's proxy, and its recorded metrics (a node
    /// of a cluster runs a master only while it leads: its metrics are not recorded).
    async fn web_parts(
        &self,
        config: &Config,
    ) -> (
        Arc<dyn mawex::MasterProxy>,
        Option<Arc<mawex::MasterMetrics>>,
        crate::web::Status,
    ) {
        let data_dir = config.master.data_dir.clone();
        match self {
            Running::Plain(master) => (
                Arc::new(master.proxy()),
                master.metrics().await.ok(),
                crate::web::Status::Local {
                    kind: "one master, sled journal",
                    data_dir,
                },
            ),
            Running::Single(node) => (
                Arc::new(node.proxy()),
                node.master().metrics().await.ok(),
                crate::web::Status::Local {
                    kind: "a cluster of one, Raft log",
                    data_dir,
                },
            ),
            Running::Node(node) => (
                Arc::new(node.client()),
                None,
                crate::web::Status::Node {
                    admin: node.admin(),
                    data_dir,
                },
            ),
        }
    }

    /// The in-process pod connector, for `standalone`.
    fn pod_connector(&self) -> Option<Arc<dyn PodConnector>> {
        match self {
            Running::Plain(master) => Some(Arc::new(master.pod_connector())),
            Running::Single(node) => Some(Arc::new(node.pod_connector())),
            Running::Node(_) => None,
        }
    }

    /// Finishes the batch, snapshots and closes.
    async fn shutdown(self) -> Result<(), CliError> {
        match self {
            Running::Plain(master) => master.shutdown().await.map_err(CliError::serve),
            Running::Single(node) => node.shutdown().await.map_err(CliError::serve),
            Running::Node(node) => node.shutdown().await.map_err(CliError::serve),
        }
    }
}

/// How a node calls its peers: over TLS with `master.cluster.peer_ca` (presenting its own
/// certificate when peers require client certificates), with `peer_token` if set.
fn peer_channel(config: &Config) -> Result<mawex::ChannelConfig, CliError> {
    let section = &config.master;
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(CliError::io(format!("reading {}", path.display())))
    };
    let mut channel = mawex::ChannelConfig::default();
    if let Some(ca) = &section.cluster.peer_ca {
        let mut tls = mawex::ClientTls::new(read(ca)?);
        if let (Some(_), Some(cert), Some(key)) =
            (&section.client_ca, &section.tls_cert, &section.tls_key)
        {
            tls = tls.with_identity(read(cert)?, read(key)?);
        }
        channel = channel.with_tls(tls);
    } else if section.tls_cert.is_some() && section.cluster.node_id.is_some() {
        return Err(CliError::Config(
            "master.cluster.peer_ca: a node serving TLS calls its peers over TLS: set it".into(),
        ));
    }
    if let Some(token) = &section.cluster.peer_token {
        channel = channel.with_token(token.clone());
    }
    Ok(channel)
}

/// TLS and tokens from the configuration.
fn secure(config: &Config, mut server: Server) -> Result<Server, CliError> {
    let section = &config.master;
    if let Some(path) = &section.tokens {
        let tokens = mawex::auth::Tokens::from_file(path)
            .map_err(|e| CliError::Config(format!("master.tokens: {e}")))?;
        server = server.tokens(mawex::auth::TokenStore::new(tokens));
    }
    if let (Some(cert), Some(key)) = (&section.tls_cert, &section.tls_key) {
        let tls = ServerTls::from_files_with_clients(cert, key, section.client_ca.as_deref())
            .map_err(|e| CliError::Config(format!("master.tls_cert: {e}")))?;
        server = server.tls(tls);
    }
    if section.insecure {
        server = server.insecure();
    }
    Ok(server)
}

/// A master beyond loopback serves only with TLS and tokens, or when told it may without:
/// refused here, naming the keys, before anything is opened.
fn check_exposure(config: &Config) -> Result<(), CliError> {
    let section = &config.master;
    let secured = section.tls_cert.is_some() && section.tokens.is_some();
    if section.listen.ip().is_loopback() || secured || section.insecure {
        return Ok(());
    }
    Err(CliError::Config(format!(
        "master.listen: {} is reachable beyond this machine: set master.tls_cert, \
         master.tls_key and master.tokens, or master.insecure = true",
        section.listen
    )))
}

/// Serves `running` until a stop is asked for, or its master stops on its own; with a pod
/// of `pod` beside it for `standalone`. Whatever happens, the pod then drains and the
/// master closes (its last batch, a snapshot).
async fn serve(
    config: &Config,
    stop: StopSignals,
    running: Running,
    server: Server,
    pod: Option<Pod>,
) -> Result<(), CliError> {
    let served = serve_until_stopped(config, stop, &running, server).await;
    let drained = match pod {
        Some(pod) => pod.shutdown().await.map_err(CliError::serve),
        None => Ok(()),
    };
    let closed = running.shutdown().await;
    served?;
    drained?;
    closed
}

async fn serve_until_stopped(
    config: &Config,
    stop: StopSignals,
    running: &Running,
    server: Server,
) -> Result<(), CliError> {
    let listener = TcpListener::bind(config.master.listen)
        .await
        .map_err(CliError::io(format!("binding {}", config.master.listen)))?;
    let address = listener
        .local_addr()
        .map_err(CliError::io("reading the bound address"))?;
    let scheme = if config.master.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    println!("mawex master listening on {scheme}://{address}");
    let _web = match config.web.listen {
        Some(listen) => {
            let (proxy, metrics, status) = running.web_parts(config).await;
            Some(crate::web::start(config, listen, proxy, metrics, status).await?)
        }
        None => None,
    };
    // Aborted when serving ends, whichever way.
    let _announcing = match config.discovery.key {
        Some(_) => Some(AbortOnDrop(crate::discovery::announce(
            &config.discovery,
            scheme,
            address,
        )?)),
        None => None,
    };
    let stopped = running.stopped();
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
    let served = server
        .serve(listener, async move {
            tokio::select! {
                () = stop.wait() => {}
                reason = stopped => {
                    let _ = failed_tx.send(reason);
                }
            }
        })
        .await;
    if let Ok(reason) = failed_rx.await {
        return Err(CliError::Serve(format!("the master stopped: {reason}")));
    }
    served.map_err(CliError::serve)
}

/// `mawex master`.
///
/// # Errors
/// A bad configuration, a data directory that cannot be opened, or a master that stopped
/// on its own (a full disk, say).
pub(crate) async fn master(config: &Config, args: &MasterArgs) -> Result<(), CliError> {
    check_exposure(config)?;
    let stop = StopSignals::new()?;
    let (running, server) = Running::open(config, args.initialize).await?;
    let server = match secure(config, server) {
        Ok(server) => server,
        Err(e) => {
            running.shutdown().await?;
            return Err(e);
        }
    };
    serve(config, stop, running, server, None).await
}

/// The pod of the configuration, its handlers the commands of `worker.handlers`.
fn pod_config(config: &Config) -> Result<PodConfig, CliError> {
    let section = &config.worker;
    if section.groups.is_empty() {
        return Err(CliError::Config(
            "worker.groups: names no group to serve".into(),
        ));
    }
    if section.handlers.is_empty() {
        return Err(CliError::Config(
            "worker.handlers: names no handler to run".into(),
        ));
    }
    let id = match &section.id {
        Some(id) => id.clone(),
        None => host_name(),
    };
    let id = PodId::new(&id).map_err(|e| CliError::Config(format!("worker.id: {e}")))?;
    let groups = section
        .groups
        .iter()
        .map(GroupName::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::Config(format!("worker.groups: {e}")))?;
    let mut pod = PodConfig::new(id, groups).with_slots(section.slots);
    pod = pod.with_shutdown_grace(section.shutdown_grace);
    pod.labels = section.labels.clone();
    pod.address = section.advertise.clone();
    pod.prefetch = section.prefetch;
    pod.default_limits = limits(section.default_timeout, section.default_memory);
    pod.max_limits = limits(section.max_timeout, section.max_memory);
    Ok(pod)
}

fn limits(timeout: Option<std::time::Duration>, memory: Option<bytesize::ByteSize>) -> Limits {
    let mut limits = Limits::default();
    limits.timeout = timeout;
    limits.memory_bytes = memory.map(|m| m.as_u64());
    limits
}

/// This machine's name, for a pod with no `worker.id`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "pod".into())
}

fn start_pod(
    config: &Config,
    sandbox: Arc<dyn Sandbox>,
    connector: Arc<dyn PodConnector>,
) -> Result<Pod, CliError> {
    Pod::start(pod_config(config)?, sandbox, connector).map_err(CliError::serve)
}

/// `mawex worker`.
///
/// # Errors
/// A bad configuration, or a pod that cannot start.
pub(crate) async fn worker(config: &Config) -> Result<(), CliError> {
    let connector = GrpcPodConnector::with_config(
        config.client.masters.iter(),
        crate::tasks::channel(config)?,
    )?;
    let stop = StopSignals::new()?;
    let sandbox = crate::handlers::sandbox(config).await?;
    let pod = start_pod(config, sandbox, Arc::new(connector))?;
    eprintln!(
        "mawex worker serving {:?} for {}",
        config.worker.groups,
        config.client.masters.join(",")
    );
    stop.wait().await;
    pod.shutdown().await.map_err(CliError::serve)
}

/// `mawex standalone`: a master (a cluster of one, or a plain journal) and one worker.
///
/// # Errors
/// As `master` and `worker`.
pub(crate) async fn standalone(config: &Config) -> Result<(), CliError> {
    if config.master.cluster.node_id.is_some() {
        return Err(CliError::Config(
            "master.cluster.node_id: standalone runs a cluster of one".into(),
        ));
    }
    check_exposure(config)?;
    pod_config(config)?;
    let sandbox = crate::handlers::sandbox(config).await?;
    let stop = StopSignals::new()?;
    let (running, server) = Running::open(config, false).await?;
    let started = secure(config, server).and_then(|server| {
        let connector = running
            .pod_connector()
            .ok_or_else(|| CliError::Serve("no in-process pod connector".into()))?;
        Ok((server, start_pod(config, sandbox, connector)?))
    });
    let (server, pod) = match started {
        Ok(started) => started,
        Err(e) => {
            running.shutdown().await?;
            return Err(e);
        }
    };
    serve(config, stop, running, server, Some(pod)).await
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_section_becomes_the_pods_settings() {
        let mut config = Config::default();
        config.worker.id = Some("pod-7".into());
        config.worker.groups = vec!["sh".into()];
        config.worker.slots = 3;
        config.worker.prefetch = 0;
        config.worker.default_timeout = Some(std::time::Duration::from_secs(5));
        config.worker.max_memory = Some(bytesize::ByteSize::mib(256));
        config.worker.handlers.insert(
            "echo".into(),
            crate::config::HandlerSection {
                argv: vec!["cat".into()],
                env: BTreeMap::new(),
                inherit: Vec::new(),
                cwd: None,
                cpu_seconds: None,
                open_files: None,
                runs_on: crate::config::RunsOn::Local,
                image: None,
            },
        );
        let pod = pod_config(&config).expect("a valid worker");
        assert_eq!(pod.id.as_str(), "pod-7");
        assert_eq!((pod.slots, pod.prefetch), (3, 0));
        assert_eq!(
            pod.default_limits.timeout,
            Some(std::time::Duration::from_secs(5))
        );
        assert_eq!(pod.default_limits.memory_bytes, None);
        assert_eq!(pod.max_limits.memory_bytes, Some(256 * 1024 * 1024));
        assert_eq!(pod.max_limits.timeout, None);
    }
}
