//! The configuration: one TOML file, `MAWEX_<SECTION>__<KEY>` environment variables over it,
//! and flags over both. Unknown keys and bad values are refused, naming the key.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::CliError;

/// The file read when no `--config` (or `MAWEX_CONFIG`) names one, if it exists.
pub const DEFAULT_FILE: &str = "mawex.toml";

/// Everything the binary is configured with.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How commands reach the master.
    pub client: ClientSection,
    /// `mawex master` (and the master of `mawex standalone`).
    pub master: MasterSection,
    /// `mawex worker` (and the pod of `mawex standalone`).
    pub worker: WorkerSection,
    /// Logs, on stderr.
    pub log: LogSection,
    /// Finding masters on the LAN with no address configured.
    pub discovery: DiscoverySection,
    /// The dashboard's HTTP side: the REST API and `/metrics`.
    pub web: WebSection,
}

/// The dashboard's HTTP side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSection {
    /// Where it is served: beside `mawex master` and `mawex standalone` when set; `mawex
    /// web` serves here (default `127.0.0.1:7080`).
    pub listen: Option<SocketAddr>,
    /// The largest request body (`"8MiB"`).
    pub max_body: bytesize::ByteSize,
    /// The dashboard's certificate chain (PEM): with `tls_key`, it serves HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for WebSection {
    fn default() -> Self {
        WebSection {
            listen: None,
            max_body: bytesize::ByteSize::mib(8),
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Where a client reaches the master when `client.masters` names none and discovery is off.
pub const LOCAL_MASTER: &str = "http://127.0.0.1:7070";

/// Zero-configuration discovery: masters announce themselves by UDP multicast, signed with
/// the cluster key; clients and workers with no `client.masters` listen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoverySection {
    /// The cluster's name: announcements of other names are ignored.
    pub cluster: String,
    /// The key announcements are signed with (HMAC-SHA256), at least 16 characters. Set, a
    /// master announces itself, and a client or worker with no `client.masters` listens.
    pub key: Option<String>,
    /// The multicast group and port.
    pub group: SocketAddrV4,
    /// The local IPv4 address of the interface to announce and listen on (default: the
    /// system's choice, by its routes).
    pub interface: Option<Ipv4Addr>,
    /// How often a master announces itself.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long a client or worker listens before it gives up.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// The endpoint a master announces (default: its scheme and port, at its listening
    /// address, or, listening on all, at the address of the interface that reaches the
    /// group).
    pub advertise: Option<String>,
}

impl Default for DiscoverySection {
    fn default() -> Self {
        DiscoverySection {
            cluster: "mawex".into(),
            key: None,
            group: SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, 77), 7071),
            interface: None,
            interval: Duration::from_secs(1),
            wait: Duration::from_secs(5),
            advertise: None,
        }
    }
}

/// How commands (and workers) reach the master.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSection {
    /// The master's endpoint, or any of a cluster's masters' endpoints. None: the masters
    /// discovery finds when `discovery.key` is set, else [`LOCAL_MASTER`].
    pub masters: Vec<String>,
    /// The bearer token sent with every call.
    pub token: Option<String>,
    /// PEM authorities the master's certificate is checked against (`https://` endpoints).
    pub ca: Option<PathBuf>,
    /// How long a call keeps trying while no master answers (restarting, failing over).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ClientSection {
    fn default() -> Self {
        ClientSection {
            masters: Vec::new(),
            token: None,
            ca: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Which journal a master keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalKind {
    /// The Raft log of a cluster (of one, unless `master.cluster` names peers).
    Raft,
    /// A plain sled journal (no cluster).
    Sled,
}

/// `mawex master`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterSection {
    /// Where the master serves gRPC.
    pub listen: SocketAddr,
    /// Where it keeps its data (created if missing).
    pub data_dir: PathBuf,
    /// `raft` (a cluster, of one by default) or `sled` (a plain journal).
    pub journal: JournalKind,
    /// How long a silent pod keeps its leases.
    #[serde(with = "humantime_serde")]
    pub lease_timeout: Duration,
    /// How often pods heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// The token file (TOML): every call then needs a token.
    pub tokens: Option<PathBuf>,
    /// PEM certificate chain to serve TLS with.
    pub tls_cert: Option<PathBuf>,
    /// Its private key.
    pub tls_key: Option<PathBuf>,
    /// PEM authorities whose client certificates are required (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// Serve on a non-loopback address without TLS and tokens.
    pub insecure: bool,
    /// A node of a cluster of masters.
    pub cluster: ClusterSection,
}

impl Default for MasterSection {
    fn default() -> Self {
        MasterSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("./mawex-data"),
            journal: JournalKind::Raft,
            lease_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(2),
            tokens: None,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            insecure: false,
            cluster: ClusterSection::default(),
        }
    }
}

/// A master that is one node of a cluster.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// This node's id (with `peers`); without one the master is a cluster of one.
    pub node_id: Option<u64>,
    /// Every node, this one included: id → the `host:port` it serves on.
    pub peers: BTreeMap<String, String>,
    /// PEM authority of the other nodes' certificates (the node calls them over TLS).
    pub peer_ca: Option<PathBuf>,
    /// The `peer` token this node sends to the others.
    pub peer_token: Option<String>,
}

/// `mawex worker`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSection {
    /// The pod's id: keep it stable across restarts (default: the host's name).
    pub id: Option<String>,
    /// The consumer groups it serves.
    pub groups: Vec<String>,
    /// Attempts run at once.
    pub slots: u32,
    /// Free-form labels, shown with the pod.
    pub labels: BTreeMap<String, String>,
    /// Where other pods reach this one (broadcasts pulled pod to pod).
    pub advertise: Option<String>,
    /// On SIGTERM, how long running attempts may finish before they are handed back.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Leases queued beyond the slots, at most (sized to the pod's pace); 0: a task is
    /// leased only when a slot is free.
    pub prefetch: u32,
    /// Time limit of attempts whose task sets none.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Option<Duration>,
    /// Memory limit of attempts whose task sets none (`"512MiB"`).
    pub default_memory: Option<bytesize::ByteSize>,
    /// The longest time limit any attempt gets here (a task may ask for less).
    #[serde(with = "humantime_serde")]
    pub max_timeout: Option<Duration>,
    /// The largest memory limit any attempt gets here (a task may ask for less).
    pub max_memory: Option<bytesize::ByteSize>,
    /// The handlers it offers, each a command: name → how to run it.
    pub handlers: BTreeMap<String, HandlerSection>,
    /// The Jobs of handlers that run on Kubernetes (`runs_on = "kubernetes"`).
    pub kubernetes: Option<KubernetesSection>,
}

/// Where a worker's handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunsOn {
    /// A child process of the worker.
    #[default]
    Local,
    /// A Kubernetes Job per attempt (`worker.kubernetes`; a binary built with the
    /// `kubernetes` feature).
    Kubernetes,
}

/// The Jobs of a worker's Kubernetes handlers. The cluster is the one of the worker's
/// environment: its service account in a cluster, else `KUBECONFIG` or `~/.kube/config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSection {
    /// The namespace of the Jobs.
    pub namespace: String,
    /// The image of handlers that name none.
    pub image: String,
    /// `imagePullPolicy` (default: the cluster's).
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    /// The service account the Jobs run as (default: the namespace's).
    #[serde(default)]
    pub service_account: Option<String>,
    /// The environment of every Job, exactly (nothing of the worker's is passed).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// CPU request of every Job (`"250m"`).
    #[serde(default)]
    pub cpu_request: Option<String>,
    /// Memory request of every Job (`"128Mi"`).
    #[serde(default)]
    pub memory_request: Option<String>,
    /// CPU limit of every Job.
    #[serde(default)]
    pub cpu_limit: Option<String>,
    /// Memory limit of every Job (a task's own memory limit overrides it).
    #[serde(default)]
    pub memory_limit: Option<String>,
    /// Finished Jobs left behind are removed by the cluster after this.
    #[serde(default = "ten_minutes", with = "humantime_serde")]
    pub ttl_after_finished: Duration,
}

fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}

impl Default for WorkerSection {
    fn default() -> Self {
        WorkerSection {
            id: None,
            groups: Vec::new(),
            slots: 1,
            labels: BTreeMap::new(),
            advertise: None,
            shutdown_grace: Duration::from_secs(30),
            prefetch: mawex::DEFAULT_PREFETCH,
            default_timeout: None,
            default_memory: None,
            max_timeout: None,
            max_memory: None,
            handlers: BTreeMap::new(),
            kubernetes: None,
        }
    }
}

/// One handler of a worker: a program run per attempt, the payload on its stdin, its stdout
/// the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerSection {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Its environment, exactly (plus `inherit`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of the worker's environment variables passed through.
    #[serde(default)]
    pub inherit: Vec<String>,
    /// Its working directory (default: the worker's).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// CPU-time limit, in seconds.
    #[serde(default)]
    pub cpu_seconds: Option<u64>,
    /// Open-file limit.
    #[serde(default)]
    pub open_files: Option<u64>,
    /// Where it runs: `local` or `kubernetes`.
    #[serde(default)]
    pub runs_on: RunsOn,
    /// The image of its Jobs (`kubernetes` only; default: `worker.kubernetes.image`).
    #[serde(default)]
    pub image: Option<String>,
}

/// How logs are written (on stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `warn`, `mawex_core=debug,info`, ….
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Text,
            // openraft warns of routine races at a node's start (a vote that moved on).
            level: "warn,openraft=error".into(),
        }
    }
}

/// A provider of values under a name `config show` reports (the defaults, the flags).
struct Named<T: Serialize> {
    name: &'static str,
    value: T,
}

impl<T: Serialize> Provider for Named<T> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(&self.value).data()
    }
}

/// Values set by flags, by key path (`["master", "listen"]`).
#[derive(Debug, Default, Clone)]
pub struct Overrides(BTreeMap<Vec<String>, serde_json::Value>);

impl Overrides {
    /// Sets `key` (dotted: `master.listen`) to `value`, if there is one.
    pub fn set<T: Serialize>(&mut self, key: &str, value: Option<T>) {
        self.set_path(key.split('.').map(str::to_owned).collect(), value);
    }

    /// Sets the key at `path` to `value`, if there is one: for map keys that may hold a dot
    /// themselves (a label `app.kubernetes.io/name`).
    pub fn set_path<T: Serialize>(&mut self, path: Vec<String>, value: Option<T>) {
        if let Some(value) = value {
            if let Ok(value) = serde_json::to_value(value) {
                self.0.insert(path, value);
            }
        }
    }

    /// The values as one nested object.
    fn nested(&self) -> serde_json::Value {
        let mut root = serde_json::Map::new();
        for (path, value) in &self.0 {
            let parts: Vec<&str> = path.iter().map(String::as_str).collect();
            insert(&mut root, &parts, value.clone());
        }
        serde_json::Value::Object(root)
    }
}

/// Sets `value` at the path `parts` under `map`, making the objects on the way.
fn insert(
    map: &mut serde_json::Map<String, serde_json::Value>,
    parts: &[&str],
    value: serde_json::Value,
) {
    match parts {
        [] => {}
        [last] => {
            map.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = map
                .entry((*first).to_owned())
                .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
            if !entry.is_object() {
                *entry = serde_json::Value::Object(serde_json::Map::new());
            }
            if let serde_json::Value::Object(next) = entry {
                insert(next, rest, value);
            }
        }
    }
}

/// The configuration in effect, and where each of its values came from.
pub struct Loaded {
    /// The values.
    pub config: Config,
    /// The file read, if any.
    pub file: Option<PathBuf>,
    figment: Figment,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("config", &self.config)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// The environment variables read: `MAWEX_<SECTION>__<KEY>`, nested keys joined by `__`
/// (`MAWEX_MASTER__CLUSTER__NODE_ID`). Variables without `__` (`MAWEX_CONFIG`, the
/// `MAWEX_*` variables an attempt gets) are not configuration keys and are left alone.
fn environment() -> Env {
    Env::prefixed("MAWEX_")
        .filter(|key| key.as_str().contains("__"))
        .split("__")
}

/// Loads the configuration: the defaults, then `file` (or `mawex.toml` if it exists), then the
/// environment, then `flags`.
///
/// # Errors
/// [`CliError::Config`] naming the key: unknown, or a value of the wrong kind or out of
/// range; or a named file that cannot be read.
pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Loaded, CliError> {
    let file = match file {
        Some(path) => {
            if !path.is_file() {
                return Err(CliError::Config(format!(
                    "the configuration file {} does not exist",
                    path.display()
                )));
            }
            Some(path.to_path_buf())
        }
        None => Some(PathBuf::from(DEFAULT_FILE)).filter(|path| path.is_file()),
    };
    let mut figment = Figment::new().merge(Named {
        name: "default",
        value: Config::default(),
    });
    if let Some(path) = &file {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(environment()).merge(Named {
        name: "command line",
        value: flags.nested(),
    });
    let config: Config = figment.extract().map_err(|e| config_error(&e))?;
    config.check()?;
    Ok(Loaded {
        config,
        file,
        figment,
    })
}

/// One error of figment's, naming the key and where its value came from.
fn config_error(error: &figment::Error) -> CliError {
    let messages: Vec<String> = error
        .clone()
        .into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                String::new()
            } else {
                format!("{}: ", e.path.join("."))
            };
            let origin = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(source) => format!(" (from {source})"),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            format!("{key}{}{origin}", e.kind)
        })
        .collect();
    CliError::Config(messages.join("; "))
}

impl Config {
    /// Checks what the types alone do not: names, ids, ranges.
    ///
    /// # Errors
    /// [`CliError::Config`] naming the key.
    pub fn check(&self) -> Result<(), CliError> {
        let bad = |key: &str, why: String| Err(CliError::Config(format!("{key}: {why}")));
        for master in &self.client.masters {
            if !(master.starts_with("http://") || master.starts_with("https://")) {
                return bad(
                    "client.masters",
                    format!("{master:?} is not an http:// or https:// endpoint"),
                );
            }
        }
        if self.client.timeout.is_zero() {
            return bad("client.timeout", "must be more than 0".into());
        }
        if self.master.lease_timeout.is_zero() {
            return bad("master.lease_timeout", "must be more than 0".into());
        }
        if self.master.heartbeat_interval.is_zero()
            || self.master.heartbeat_interval >= self.master.lease_timeout
        {
            return bad(
                "master.heartbeat_interval",
                "must be more than 0 and less than master.lease_timeout".into(),
            );
        }
        if self.master.tls_cert.is_some() != self.master.tls_key.is_some() {
            return bad(
                "master.tls_cert",
                "master.tls_cert and master.tls_key go together".into(),
            );
        }
        if self.web.tls_cert.is_some() != self.web.tls_key.is_some() {
            return bad(
                "web.tls_cert",
                "web.tls_cert and web.tls_key go together".into(),
            );
        }
        self.peers()?;
        if let Some(id) = &self.worker.id {
            if let Err(e) = mawex::PodId::new(id) {
                return bad("worker.id", e.to_string());
            }
        }
        for group in &self.worker.groups {
            if let Err(e) = mawex::GroupName::new(group) {
                return bad("worker.groups", e.to_string());
            }
        }
        if !(1..=mawex::pod::MAX_POD_SLOTS).contains(&self.worker.slots) {
            return bad(
                "worker.slots",
                format!("must be 1 to {}", mawex::pod::MAX_POD_SLOTS),
            );
        }
        if self.worker.prefetch > mawex::pod::MAX_POD_PREFETCH {
            return bad(
                "worker.prefetch",
                format!("must be at most {}", mawex::pod::MAX_POD_PREFETCH),
            );
        }
        for (key, limit) in [
            ("worker.default_timeout", self.worker.default_timeout),
            ("worker.max_timeout", self.worker.max_timeout),
        ] {
            if limit.is_some_and(|d| d.is_zero()) {
                return bad(key, "must be more than 0".into());
            }
        }
        for (key, limit) in [
            ("worker.default_memory", self.worker.default_memory),
            ("worker.max_memory", self.worker.max_memory),
        ] {
            if limit.is_some_and(|m| m.as_u64() == 0) {
                return bad(key, "must be more than 0".into());
            }
        }
        if let (Some(default), Some(max)) = (self.worker.default_timeout, self.worker.max_timeout) {
            if default > max {
                return bad(
                    "worker.default_timeout",
                    "must not be more than worker.max_timeout".into(),
                );
            }
        }
        if let (Some(default), Some(max)) = (self.worker.default_memory, self.worker.max_memory) {
            if default > max {
                return bad(
                    "worker.default_memory",
                    "must not be more than worker.max_memory".into(),
                );
            }
        }
        for (name, handler) in &self.worker.handlers {
            let key = |field: &str| format!("worker.handlers.{name}.{field}");
            if handler.argv.is_empty() {
                return bad(&key("argv"), "names no program".into());
            }
            match handler.runs_on {
                RunsOn::Local if handler.image.is_some() => {
                    return bad(
                        &key("image"),
                        "only a kubernetes handler has an image".into(),
                    );
                }
                RunsOn::Local => {}
                RunsOn::Kubernetes => {
                    if self.worker.kubernetes.is_none() {
                        return bad(
                            "worker.kubernetes",
                            format!("needed by handler {name} (runs_on = \"kubernetes\")"),
                        );
                    }
                    let local_only = [
                        ("inherit", !handler.inherit.is_empty()),
                        ("cwd", handler.cwd.is_some()),
                        ("cpu_seconds", handler.cpu_seconds.is_some()),
                        ("open_files", handler.open_files.is_some()),
                    ];
                    if let Some((field, _)) = local_only.iter().find(|(_, set)| *set) {
                        return bad(
                            &key(field),
                            "a kubernetes handler runs in its Job's container: not used".into(),
                        );
                    }
                }
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return bad("log.level", e.to_string());
        }
        let discovery = &self.discovery;
        if discovery
            .key
            .as_ref()
            .is_some_and(|key| key.chars().count() < 16)
        {
            return bad("discovery.key", "must be at least 16 characters".into());
        }
        if discovery.cluster.is_empty() || discovery.cluster.len() > 128 {
            return bad("discovery.cluster", "must be 1 to 128 bytes".into());
        }
        if !discovery.group.ip().is_multicast() {
            return bad(
                "discovery.group",
                format!(
                    "{} is not a multicast address (224.0.0.0/4)",
                    discovery.group.ip()
                ),
            );
        }
        if self.web.max_body.as_u64() == 0 {
            return bad("web.max_body", "must be more than 0".into());
        }
        if discovery.interval.is_zero() {
            return bad("discovery.interval", "must be more than 0".into());
        }
        if discovery.wait.is_zero() {
            return bad("discovery.wait", "must be more than 0".into());
        }
        if let Some(endpoint) = &discovery.advertise {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return bad(
                    "discovery.advertise",
                    format!("{endpoint:?} is not an http:// or https:// endpoint"),
                );
            }
        }
        Ok(())
    }

    /// `master.cluster.peers` with their ids as numbers, this node checked to be among them.
    ///
    /// # Errors
    /// [`CliError::Config`] for an id that is not a number, or a node id with no peers.
    pub fn peers(&self) -> Result<BTreeMap<u64, String>, CliError> {
        let cluster = &self.master.cluster;
        let mut peers = BTreeMap::new();
        for (id, address) in &cluster.peers {
            let id: u64 = id.parse().map_err(|_| {
                CliError::Config(format!(
                    "master.cluster.peers: {id:?} is not a node id (a number)"
                ))
            })?;
            peers.insert(id, address.clone());
        }
        match cluster.node_id {
            Some(id) if !peers.contains_key(&id) => Err(CliError::Config(format!(
                "master.cluster.peers: does not name this node ({id}, master.cluster.node_id)"
            ))),
            None if !peers.is_empty() => Err(CliError::Config(
                "master.cluster.node_id: needed with master.cluster.peers".into(),
            )),
            _ => Ok(peers),
        }
    }
}

/// One value in effect: its key, its value, where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Origin {
    /// The dotted key.
    pub key: String,
    /// The value (secrets masked).
    pub value: serde_json::Value,
    /// `default`, the file's path, an environment variable, or `command line`.
    pub origin: String,
}

/// Keys whose values `config show` masks.
const SECRETS: [&str; 3] = ["client.token", "master.cluster.peer_token", "discovery.key"];

impl Loaded {
    /// Every value in effect, with where it came from.
    pub fn origins(&self) -> Vec<Origin> {
        let mut leaves = Vec::new();
        if let Ok(value) = serde_json::to_value(&self.config) {
            flatten("", &value, &mut leaves);
        }
        leaves
            .into_iter()
            .map(|(key, value)| {
                let origin = self
                    .figment
                    .find_metadata(&key)
                    .map_or_else(|| "default".to_owned(), |m| describe(m, &key));
                let secret = SECRETS.contains(&key.as_str())
                    || (key.starts_with("worker.handlers.") && key.contains(".env."))
                    || key.starts_with("worker.kubernetes.env.");
                let value = if secret && !value.is_null() {
                    serde_json::Value::String("***".into())
                } else {
                    value
                };
                Origin { key, value, origin }
            })
            .collect()
    }
}

/// Where the value of `key` came from, as `config show` says it: the file, the variable, …
fn describe(metadata: &Metadata, key: &str) -> String {
    match &metadata.source {
        Some(figment::Source::File(path)) => path.display().to_string(),
        Some(source) => source.to_string(),
        None if metadata.name.contains("environment") => {
            format!("env MAWEX_{}", key.replace('.', "__").to_uppercase())
        }
        None => metadata.name.to_string(),
    }
}

/// The leaves of `value` under `prefix`, by dotted key (arrays are leaves).
pub(crate) fn flatten(
    prefix: &str,
    value: &serde_json::Value,
    out: &mut Vec<(String, serde_json::Value)>,
) {
    match value {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, out);
            }
        }
        _ => out.push((prefix.to_owned(), value.clone())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A configuration with every optional value set and one entry in every map, its map
    /// keys the placeholders the documentation uses.
    fn everything() -> Config {
        let mut config = Config::default();
        config.client.token = Some("t".into());
        config.client.ca = Some("ca.pem".into());
        config.master.tokens = Some("tokens.toml".into());
        config.master.tls_cert = Some("cert.pem".into());
        config.master.tls_key = Some("key.pem".into());
        config.master.client_ca = Some("clients.pem".into());
        config.master.cluster.node_id = Some(1);
        config
            .master
            .cluster
            .peers
            .insert("<id>".into(), "host:port".into());
        config.master.cluster.peer_ca = Some("ca.pem".into());
        config.master.cluster.peer_token = Some("t".into());
        config.worker.id = Some("pod-1".into());
        config.worker.labels.insert("<label>".into(), "v".into());
        config.worker.advertise = Some("host:port".into());
        config.worker.default_timeout = Some(Duration::from_secs(1));
        config.worker.default_memory = Some(bytesize::ByteSize::mib(1));
        config.worker.max_timeout = Some(Duration::from_secs(1));
        config.worker.max_memory = Some(bytesize::ByteSize::mib(1));
        config.client.masters = vec!["http://host:7070".into()];
        config.web.listen = Some(SocketAddr::from(([127, 0, 0, 1], 7080)));
        config.web.tls_cert = Some("web.pem".into());
        config.web.tls_key = Some("web.key".into());
        config.discovery.key = Some("k".repeat(16));
        config.discovery.interface = Some(Ipv4Addr::LOCALHOST);
        config.discovery.advertise = Some("http://host:7070".into());
        config.worker.handlers.insert(
            "<name>".into(),
            HandlerSection {
                argv: vec!["true".into()],
                env: BTreeMap::from([("<variable>".into(), "v".into())]),
                inherit: vec!["PATH".into()],
                cwd: Some("/".into()),
                cpu_seconds: Some(1),
                open_files: Some(1),
                runs_on: RunsOn::Local,
                image: Some("image".into()),
            },
        );
        config.worker.kubernetes = Some(KubernetesSection {
            namespace: "jobs".into(),
            image: "image".into(),
            image_pull_policy: Some("IfNotPresent".into()),
            service_account: Some("account".into()),
            env: BTreeMap::from([("<variable>".into(), "v".into())]),
            cpu_request: Some("1".into()),
            memory_request: Some("1Mi".into()),
            cpu_limit: Some("1".into()),
            memory_limit: Some("1Mi".into()),
            ttl_after_finished: ten_minutes(),
        });
        config
    }

    fn leaves() -> Vec<(String, serde_json::Value)> {
        let mut leaves = Vec::new();
        flatten(
            "",
            &serde_json::to_value(everything()).unwrap(),
            &mut leaves,
        );
        leaves
    }

    fn keys() -> Vec<String> {
        leaves().into_iter().map(|(key, _)| key).collect()
    }

    /// Every key of the configuration is in `docs/configuration.md`, and every key the page
    /// documents exists.
    #[test]
    fn every_key_is_documented_and_every_documented_key_exists() {
        let page = include_str!("../../../docs/configuration.md");
        let keys = keys();
        let undocumented: Vec<&String> = keys
            .iter()
            .filter(|key| !page.contains(&format!("| `{key}` |")))
            .collect();
        assert!(
            undocumented.is_empty(),
            "keys missing from docs/configuration.md: {undocumented:?}"
        );
        let documented: Vec<&str> = page
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split_once("` |").map(|(key, _)| key))
            .collect();
        let unknown: Vec<&&str> = documented
            .iter()
            .filter(|key| !keys.iter().any(|k| k == **key))
            .collect();
        assert!(
            unknown.is_empty(),
            "docs/configuration.md documents keys that do not exist: {unknown:?}"
        );
    }

    #[test]
    fn the_placeholders_cover_every_map() {
        // A map left empty in `everything` would hide its keys from the check above.
        for (key, value) in leaves() {
            assert!(
                value != serde_json::json!({}) && !value.is_null(),
                "{key} is empty in `everything`: give it a value"
            );
        }
        assert!(keys().contains(&"worker.handlers.<name>.argv".to_owned()));
    }
}
