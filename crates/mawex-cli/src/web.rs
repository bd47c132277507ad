//! The dashboard's HTTP side (`mawex-web`: the REST API, its OpenAPI document, `/metrics`) in
//! the binary: beside a master when `web.listen` is set, recording the master's metrics, or
//! on its own over the masters of `client.masters` (`mawex web`). With `master.tokens`, every
//! call needs a viewer, client or admin token of that file.

use std::net::SocketAddr;
use std::sync::Arc;

use mawex::{MasterMetrics, MasterProxy};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::CliError;

/// Where `mawex web` serves when `web.listen` names nothing.
pub(crate) const DEFAULT_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 7080);

/// Beyond loopback, the dashboard takes TLS (`web.tls_cert`, or its tokens and session
/// cookies would cross the network in the clear) and tokens (`master.tokens`, or anyone who
/// reaches it may do anything an admin may); or `master.insecure = true`, as a master
/// without TLS and tokens does.
pub(crate) fn check_exposure(config: &Config, listen: SocketAddr) -> Result<(), CliError> {
    if listen.ip().is_loopback() || config.master.insecure {
        return Ok(());
    }
    let missing = match (
        config.web.tls_cert.is_some(),
        config.master.tokens.is_some(),
    ) {
        (true, true) => return Ok(()),
        (false, true) => "web.tls_cert and web.tls_key (HTTPS)",
        (true, false) => "master.tokens (a login)",
        (false, false) => "web.tls_cert and web.tls_key (HTTPS) and master.tokens (a login)",
    };
    Err(CliError::Config(format!(
        "web.listen: {listen} is reachable beyond this machine: that takes {missing}; or keep \
         it on loopback, or set master.insecure = true"
    )))
}

/// The TLS settings of `web.tls_cert` and `web.tls_key`, if set.
async fn tls(config: &Config) -> Result<Option<axum_server::tls_rustls::RustlsConfig>, CliError> {
    let (Some(cert), Some(key)) = (&config.web.tls_cert, &config.web.tls_key) else {
        return Ok(None);
    };
    // The process's TLS provider: ring, as the gRPC side uses (set once; a second call
    // finds it set, which is as good).
    let _ = rustls::crypto::ring::default_provider().install_default();
    axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .map(Some)
        .map_err(|e| {
            CliError::Config(format!(
                "web.tls_cert: {} with {}: {e}",
                cert.display(),
                key.display()
            ))
        })
}

/// A task aborted when this is dropped: the web server of a master stops with it.
pub(crate) struct Serving(tokio::task::JoinHandle<()>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds `listen` and serves the web side over `proxy` (with `metrics` recorded, if given)
/// on a task of its own; prints where on stdout.
pub(crate) async fn start(
    config: &Config,
    listen: SocketAddr,
    proxy: Arc<dyn MasterProxy>,
    metrics: Option<Arc<MasterMetrics>>,
    status: Status,
) -> Result<(Serving, SocketAddr), CliError> {
    check_exposure(config, listen)?;
    let tls = tls(config).await?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(CliError::io(format!("binding web.listen {listen}")))?;
    let address = listener
        .local_addr()
        .map_err(CliError::io("reading the web address"))?;
    let mut settings = mawex_web::WebConfig::default();
    settings.max_body_bytes = usize::try_from(config.web.max_body.as_u64()).unwrap_or(usize::MAX);
    if let Some(metrics) = metrics {
        settings = settings.with_metrics(move |registry| metrics.register(registry));
    }
    let status = Arc::new(StatusCache::new(status));
    settings = settings.with_status(move || {
        let status = status.clone();
        async move { status.facts().await }
    });
    if let Some(path) = &config.master.tokens {
        let tokens = mawex::auth::Tokens::from_file(path)
            .map_err(|e| CliError::Config(format!("master.tokens: {e}")))?;
        let store = mawex::auth::TokenStore::new(tokens);
        settings = settings.with_auth(move |secret| web_user(&store, secret));
    }
    settings.secure_cookies = tls.is_some();
    let app = mawex_web::router(proxy, settings);
    let task = match tls {
        None => {
            println!("mawex web listening on http://{address}");
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "the web server stopped");
                }
            })
        }
        Some(tls) => {
            println!("mawex web listening on https://{address}");
            let listener = listener
                .into_std()
                .map_err(CliError::io("handing the web listener to TLS"))?;
            let server = axum_server::from_tcp_rustls(listener, tls);
            tokio::spawn(async move {
                if let Err(e) = server.serve(app.into_make_service()).await {
                    tracing::error!(error = %e, "the web server stopped");
                }
            })
        }
    };
    Ok((Serving(task), address))
}

/// `mawex web`: the web side over the masters of `client.masters`, until SIGTERM or Ctrl-C.
///
/// # Errors
/// A bad configuration, or an address that cannot be bound.
pub(crate) async fn web(config: &Config) -> Result<(), CliError> {
    let listen = config
        .web
        .listen
        .unwrap_or_else(|| SocketAddr::from(DEFAULT_LISTEN));
    let proxy: Arc<dyn MasterProxy> = Arc::new(crate::tasks::connect(config)?);
    let stop = crate::serve::StopSignals::new()?;
    let status = Status::Remote {
        masters: config.client.masters.clone(),
        channel: crate::tasks::channel(config)?,
    };
    let _serving = start(config, listen, proxy, None, status).await?;
    stop.wait().await;
    Ok(())
}

/// The web caller `secret` stands for in `store`: a viewer, client or admin token (a client
/// limited to groups stays limited to them). Pod and peer tokens are not valid for the web.
fn web_user(store: &mawex::auth::TokenStore, secret: &str) -> Option<mawex_web::WebUser> {
    use mawex::auth::Role;
    use mawex_web::WebRole;
    let tokens = store.current();
    let token = tokens.find(secret)?;
    let role = match token.role() {
        Role::Viewer => WebRole::Viewer,
        Role::Client => WebRole::Client,
        Role::Admin => WebRole::Admin,
        _ => return None,
    };
    let user = mawex_web::WebUser::new(token.id(), role);
    Some(match token.limited_to() {
        Some(groups) => user.limited_to(groups.iter().cloned()),
        None => user,
    })
}

/// How long the overview's facts stand before they are asked again.
const STATUS_FOR: std::time::Duration = std::time::Duration::from_secs(10);
/// How long the facts have to be found (a disk walk, the masters' answers).
const STATUS_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);
/// How long one master has to say who leads.
const MEMBERS_WITHIN: std::time::Duration = std::time::Duration::from_millis(800);

/// Facts, and when they were asked.
type Facts = (std::time::Instant, Vec<(String, String)>);

/// The overview's facts, asked at most once per [`STATUS_FOR`] by one task at a time,
/// whatever number of pages show them each second: a slow disk or a master that does not
/// answer costs one walk or one call, never a pile of them.
pub(crate) struct StatusCache {
    status: Arc<Status>,
    latest: Arc<std::sync::Mutex<Option<Facts>>>,
    refreshing: Arc<std::sync::atomic::AtomicBool>,
    filled: Arc<tokio::sync::Notify>,
}

impl StatusCache {
    fn new(status: Status) -> Self {
        StatusCache {
            status: Arc::new(status),
            latest: Arc::default(),
            refreshing: Arc::default(),
            filled: Arc::default(),
        }
    }

    /// The latest facts: fresh ones, or the last known while new ones are asked for (the
    /// first time, waiting for them up to a second).
    async fn facts(&self) -> Vec<(String, String)> {
        use std::sync::atomic::Ordering;
        let lock = || {
            self.latest
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let stale = match &*lock() {
            Some((at, facts)) if at.elapsed() < STATUS_FOR => return facts.clone(),
            Some((_, facts)) => Some(facts.clone()),
            None => None,
        };
        let filled = self.filled.notified();
        if !self.refreshing.swap(true, Ordering::AcqRel) {
            let (status, latest, refreshing, notify) = (
                self.status.clone(),
                self.latest.clone(),
                self.refreshing.clone(),
                self.filled.clone(),
            );
            tokio::spawn(async move {
                /// Lets the next render ask again however this ends (a panic included).
                struct Done(Arc<std::sync::atomic::AtomicBool>);
                impl Drop for Done {
                    fn drop(&mut self) {
                        self.0.store(false, std::sync::atomic::Ordering::Release);
                    }
                }
                let _done = Done(refreshing);
                let facts = tokio::time::timeout(STATUS_WITHIN, status.facts())
                    .await
                    .unwrap_or_else(|_| {
                        vec![(
                            "masters".to_owned(),
                            format!("did not answer within {STATUS_WITHIN:?}"),
                        )]
                    });
                *latest
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((std::time::Instant::now(), facts));
                notify.notify_waiters();
            });
        }
        if let Some(stale) = stale {
            return stale;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), filled).await;
        lock()
            .as_ref()
            .map(|(_, facts)| facts.clone())
            .unwrap_or_default()
    }
}

/// Where the overview's facts about the masters come from.
pub(crate) enum Status {
    /// A master in this process, alone or a cluster of one, keeping its journal in
    /// `data_dir`.
    Local {
        kind: &'static str,
        data_dir: std::path::PathBuf,
    },
    /// A node of a cluster in this process.
    Node {
        admin: mawex::cluster::ClusterAdmin,
        data_dir: std::path::PathBuf,
    },
    /// Masters reached over the network (`mawex web`).
    Remote {
        masters: Vec<String>,
        channel: mawex::ChannelConfig,
    },
}

impl Status {
    /// The facts, as label and value.
    async fn facts(&self) -> Vec<(String, String)> {
        match self {
            Status::Local { kind, data_dir } => vec![
                ("masters".to_owned(), (*kind).to_owned()),
                ("journal on disk".to_owned(), disk_use(data_dir).await),
            ],
            Status::Node { admin, data_dir } => {
                let mut facts = members(&admin.members());
                facts.push(("journal on disk".to_owned(), disk_use(data_dir).await));
                facts
            }
            Status::Remote { masters, channel } => {
                // Every master at once, each with its own deadline: one that does not
                // answer does not hold up the others.
                let asked = futures::future::join_all(masters.iter().map(|endpoint| async move {
                    let admin = mawex::cluster::RemoteClusterAdmin::new(endpoint, channel)?;
                    tokio::time::timeout(MEMBERS_WITHIN, admin.members())
                        .await
                        .unwrap_or_else(|_| {
                            Err(mawex::ApiError::Unavailable(format!(
                                "{endpoint} did not answer within {MEMBERS_WITHIN:?}"
                            )))
                        })
                }))
                .await;
                if let Some(found) = asked.iter().find_map(|a| a.as_ref().ok()) {
                    return members(found);
                }
                // A master that is no node of a cluster: one alone.
                let alone = masters
                    .iter()
                    .zip(&asked)
                    .find(|(_, answer)| matches!(answer, Err(mawex::ApiError::Unimplemented(_))));
                if let Some((endpoint, _)) = alone {
                    return vec![("masters".to_owned(), format!("one, at {endpoint}"))];
                }
                vec![(
                    "masters".to_owned(),
                    format!("none of {} answers", masters.join(", ")),
                )]
            }
        }
    }
}

/// The leader and the members of a cluster, as facts.
fn members(members: &mawex::cluster::Members) -> Vec<(String, String)> {
    let node = |id: &u64, address: &String| {
        if address.is_empty() {
            format!("node {id}")
        } else {
            format!("node {id} ({address})")
        }
    };
    let list = |nodes: &std::collections::BTreeMap<u64, String>| {
        nodes
            .iter()
            .map(|(id, address)| node(id, address))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let leader = match members.leader {
        Some(id) => match members.voters.get(&id) {
            Some(address) => node(&id, address),
            None => format!("node {id}"),
        },
        None => "none (an election?)".to_owned(),
    };
    let mut facts = vec![
        ("leader".to_owned(), leader),
        ("voters".to_owned(), list(&members.voters)),
    ];
    if !members.learners.is_empty() {
        facts.push(("learners".to_owned(), list(&members.learners)));
    }
    facts
}

/// The bytes under `dir`, for people (`12.3 MiB`).
async fn disk_use(dir: &std::path::Path) -> String {
    let dir = dir.to_owned();
    let bytes = tokio::task::spawn_blocking(move || bytes_under(&dir))
        .await
        .unwrap_or(0);
    bytesize::ByteSize(bytes).display().iec().to_string()
}

/// The size of every file under `path`, what cannot be read counted as nothing.
fn bytes_under(path: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| bytes_under(&e.path()))
                .fold(0u64, u64::saturating_add)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_loopback_the_dashboard_takes_https_and_tokens_or_insecure() {
        let anywhere: SocketAddr = ([0, 0, 0, 0], 7080).into();
        let mut config = Config::default();
        assert!(check_exposure(&config, ([127, 0, 0, 1], 7080).into()).is_ok());
        let refused = check_exposure(&config, anywhere).map_err(|e| e.to_string());
        assert!(
            matches!(&refused, Err(m) if m.contains("web.tls_cert") && m.contains("master.tokens")),
            "{refused:?}"
        );
        config.web.tls_cert = Some("cert.pem".into());
        config.web.tls_key = Some("key.pem".into());
        let refused = check_exposure(&config, anywhere).map_err(|e| e.to_string());
        assert!(
            matches!(&refused, Err(m) if m.contains("master.tokens") && !m.contains("tls_cert")),
            "{refused:?}"
        );
        config.master.tokens = Some("tokens.toml".into());
        assert!(check_exposure(&config, anywhere).is_ok());
        config.web.tls_cert = None;
        config.web.tls_key = None;
        config.master.insecure = true;
        assert!(check_exposure(&config, anywhere).is_ok());
    }
}
