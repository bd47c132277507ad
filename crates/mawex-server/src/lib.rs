//! The gRPC face of a master: the client service, the pod link, health and reflection,
//! composed with whatever else the embedding program serves on the same port.
//!
//! Both mawex services are thin: they convert at the edge (`mawex_api::convert`) and call the
//! same in-process handles as everyone else (`LocalMasterProxy`, `LocalPodConnector`), so the
//! network adds no second code path to the master. Errors become `tonic::Status` through the
//! one `From<ApiError>` mapping in `mawex_api::convert`.
//!
//! A [`Server`] is built from parts and then served: [`Server::serve`] takes a bound listener
//! and a shutdown future (tests, systemd sockets and the binary all bind their own way), and
//! [`Server::start`] binds an address and serves in the background.
//!
//! ```
//! use mawex_core::{Master, MemoryJournal};
//! use mawex_server::Server;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let master = Master::builder().start(MemoryJournal::new()).await.unwrap();
//! let server = Server::new(&master)
//!     .start("127.0.0.1:0".parse().unwrap())
//!     .await
//!     .unwrap();
//! println!("serving on {}", server.endpoint());
//! server.shutdown().await.unwrap();
//! master.shutdown().await.unwrap();
//! # });
//! ```

pub mod auth;
mod client_service;
mod connections;
mod error;
mod pod_service;
mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mawex_api::pod::PodConnector;
use mawex_api::proto;
use mawex_api::MasterProxy;
use mawex_core::Master;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::service::{Interceptor, Routes};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Status};
use tracing::info;

pub use error::ServerError;
pub use tls::{ServerTls, TlsHandle};

use client_service::ClientService;
use pod_service::PodLinkService;

/// Settings of the gRPC server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Largest message accepted or sent, in bytes. Bigger requests fail with a clear error
    /// before they reach the master; payloads are further limited by
    /// `MasterConfig::max_payload_bytes`. Default: 16 MiB.
    pub max_message_bytes: usize,
    /// TCP keepalive of accepted connections, so a vanished peer is noticed. Default: 10 s.
    pub tcp_keepalive: Option<Duration>,
    /// TLS on the listener (clients then use `https://`). Default: none.
    pub tls: Option<ServerTls>,
    /// Connections served at once; one more is closed as soon as it is accepted (its
    /// client sees a reset and retries), and a warning says so. Default: 10,000.
    pub max_connections: usize,
    /// Connections one peer address may hold at once (pods and clients behind one NAT
    /// count together); one more is closed on accept. Default: 1,024.
    pub max_connections_per_peer: usize,
    /// Streams (calls in flight, pod sessions, result streams) one connection may open at
    /// once; a client opening more waits for one to end. Default: 1,024.
    pub max_concurrent_streams: u32,
    /// A connection that sends nothing for this long after it was accepted is closed, and
    /// with TLS its handshake must be done by then, so silent or stalling sockets cannot
    /// hold every connection. Default: 10 s.
    pub first_bytes_timeout: Duration,
    /// Interval of HTTP/2 pings on each connection; a connection whose ping goes
    /// unanswered for twice as long is closed. `None`: no pings. Default: 10 s.
    pub http2_keepalive: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_message_bytes: 16 * 1024 * 1024,
            tcp_keepalive: Some(Duration::from_secs(10)),
            tls: None,
            max_connections: 10_000,
            max_connections_per_peer: 1024,
            max_concurrent_streams: 1024,
            first_bytes_timeout: Duration::from_secs(10),
            http2_keepalive: Some(Duration::from_secs(10)),
        }
    }
}

type CheckFn = dyn Fn(Request<()>) -> Result<Request<()>, Status> + Send + Sync;

/// The interceptor every mawex service runs behind: the configured checks, or none.
#[derive(Clone, Default)]
struct Checks(Option<Arc<CheckFn>>);

impl Interceptor for Checks {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match &self.0 {
            Some(check) => check(request),
            None => Ok(request),
        }
    }
}

/// A gRPC server of one master, built from parts: settings, an interceptor in front of the
/// mawex services, and extra services served on the same port.
pub struct Server {
    proxy: Arc<dyn MasterProxy>,
    /// Resolves when the master stops on its own: health turns NOT_SERVING.
    master_stopped: std::pin::Pin<Box<dyn Future<Output = String> + Send>>,
    connector: Arc<dyn PodConnector>,
    max_payload_bytes: usize,
    config: ServerConfig,
    checks: Checks,
    routes: Routes,
    /// Services open only to one role's tokens, added to the routes once the tokens are
    /// known (see [`Server::add_service_for`]).
    guarded: Vec<GuardedService>,
    tokens: Option<auth::TokenStore>,
    insecure: bool,
    tls_handle: Option<TlsHandle>,
}

/// Adds a service behind the token check of its role to the routes.
type GuardedService = Box<dyn FnOnce(Routes, Option<auth::TokenStore>) -> Routes + Send>;

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server of `master` with default settings, serving the `mawex.v1` client and pod
    /// services, `grpc.health.v1` and reflection.
    pub fn new(master: &Master) -> Self {
        Self::over(
            Arc::new(master.proxy()),
            Arc::new(master.pod_connector()),
            master.max_payload_bytes(),
        )
        .stops_with(master.stopped())
    }

    /// A server of a master reached through `proxy` and `connector` rather than a
    /// [`Master`] of this process: a node of a cluster, say, whose calls go to the master it
    /// runs while it leads and answer `NotLeader` while it does not. `max_payload_bytes`
    /// sizes its messages (`MasterConfig::max_payload_bytes`).
    pub fn over(
        proxy: Arc<dyn MasterProxy>,
        connector: Arc<dyn PodConnector>,
        max_payload_bytes: usize,
    ) -> Self {
        Server {
            proxy,
            master_stopped: Box::pin(std::future::pending()),
            connector,
            max_payload_bytes,
            config: ServerConfig::default(),
            checks: Checks::default(),
            routes: Routes::default(),
            guarded: Vec::new(),
            tokens: None,
            insecure: false,
            tls_handle: None,
        }
    }

    /// Reports the master as stopped (health NOT_SERVING) once `stopped` resolves, with why.
    pub fn stops_with<F>(mut self, stopped: F) -> Self
    where
        F: Future<Output = String> + Send + 'static,
    {
        self.master_stopped = Box::pin(stopped);
        self
    }

    /// Uses `config` instead of the defaults.
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        // Its TLS settings, if any, are the ones to serve with.
        self.tls_handle = None;
        self
    }

    /// Serves over TLS (see [`ServerConfig::tls`]).
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.config.tls = Some(tls);
        self.tls_handle = None;
        self
    }

    /// The handle that replaces the TLS certificate while this server runs (for
    /// [`Server::serve`]; [`RunningServer::tls`] gives the same).
    ///
    /// # Errors
    /// [`ServerError::Config`] for TLS settings that do not work, or none configured.
    pub fn tls_handle(&mut self) -> Result<TlsHandle, ServerError> {
        if let Some(handle) = &self.tls_handle {
            return Ok(handle.clone());
        }
        let tls = self
            .config
            .tls
            .as_ref()
            .ok_or_else(|| ServerError::Config("no TLS configured".into()))?;
        let handle = TlsHandle::new(tls)?;
        self.tls_handle = Some(handle.clone());
        Ok(handle)
    }

    /// Requires a token on every call of the mawex services (client and pod link): a call
    /// without one is refused with `Unauthenticated`, one whose role does not allow it with
    /// `PermissionDenied`, and client and pod tokens may only use the groups (and pod ids)
    /// they name. Health and reflection stay open. The store may be replaced or reloaded
    /// while serving ([`auth::TokenStore::watch`]).
    pub fn tokens(mut self, tokens: auth::TokenStore) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Serves on an address other machines can reach even without TLS and tokens. Without
    /// this, [`Server::start`] and [`Server::serve`] refuse to: anyone who reaches such a
    /// master could register as a pod and receive every payload, or cancel and purge work.
    pub fn insecure(mut self) -> Self {
        self.insecure = true;
        self
    }

    /// Runs `check` on every request to the mawex services (client and pod link) before it
    /// is handled; an `Err` is the answer. Health and reflection stay open.
    pub fn interceptor<F>(mut self, check: F) -> Self
    where
        F: Fn(Request<()>) -> Result<Request<()>, Status> + Send + Sync + 'static,
    {
        self.checks = Checks(Some(Arc::new(check)));
        self
    }

    /// Serves another tonic service on the same port (e.g. replication between masters).
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower_service::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes = self.routes.add_service(service);
        self
    }

    /// Serves another tonic service on the same port, open only to tokens of `role` when the
    /// server checks tokens ([`Server::tokens`]): the Raft link between the masters of a
    /// cluster, say, for [`auth::Role::Peer`].
    pub fn add_service_for<S>(mut self, role: auth::Role, service: S) -> Self
    where
        S: tower_service::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.guarded.push(Box::new(move |routes: Routes, tokens| {
            routes.add_service(auth::Guarded::for_role(service, tokens, role))
        }));
        self
    }

    /// Binds `addr` (port 0 picks a free port) and serves in the background until
    /// [`RunningServer::shutdown`]. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`ServerError::Config`] for a bad setting, [`ServerError::Bind`] if the address
    /// cannot be bound.
    pub async fn start(self, addr: SocketAddr) -> Result<RunningServer, ServerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        self.check_exposure(local_addr)?;
        let stop = CancellationToken::new();
        let serving = self.prepare(stop.clone()).await?;
        let connections = serving.connections.clone();
        let max_connections = serving.max_connections;
        let tls = serving.tls.clone();
        let shutdown = stop.clone();
        let task = tokio::spawn(serving.run(listener, async move {
            shutdown.cancelled().await;
        }));
        info!(%local_addr, "gRPC server listening");
        Ok(RunningServer {
            local_addr,
            stop,
            task: Some(task),
            connections,
            max_connections,
            tls,
        })
    }

    /// Serves on `listener` until `shutdown` completes: then stops accepting, ends open
    /// streams and long waits (their clients resume elsewhere), and returns.
    ///
    /// # Errors
    /// [`ServerError::Config`] for a bad setting, [`ServerError::Serve`] if serving failed.
    ///
    /// # Cancel safety
    /// Dropping the future stops the server at once, without ending streams gracefully.
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> Result<(), ServerError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let addr = listener
            .local_addr()
            .map_err(|e| ServerError::Config(format!("the listener has no local address: {e}")))?;
        self.check_exposure(addr)?;
        let stop = CancellationToken::new();
        let serving = self.prepare(stop.clone()).await?;
        serving
            .run(listener, async move {
                shutdown.await;
                stop.cancel();
            })
            .await
    }

    /// Refuses an address reachable from other machines without TLS and tokens, unless the
    /// operator said [`Server::insecure`] (then it warns).
    fn check_exposure(&self, addr: SocketAddr) -> Result<(), ServerError> {
        let missing: Vec<&str> = [
            (self.config.tls.is_none(), "TLS (ServerConfig::tls)"),
            (self.tokens.is_none(), "tokens (Server::tokens)"),
        ]
        .into_iter()
        .filter_map(|(missing, what)| missing.then_some(what))
        .collect();
        if addr.ip().is_loopback() || missing.is_empty() {
            return Ok(());
        }
        let missing = missing.join(" and ");
        if self.insecure {
            tracing::warn!(
                target: "mawex::audit",
                %addr,
                "serving without {missing} on an address other machines can reach (insecure)"
            );
            return Ok(());
        }
        Err(ServerError::Config(format!(
            "refusing to serve on {addr} without {missing}: anyone who reaches it could \
             register as a pod and receive every payload. Configure them, bind a loopback \
             address, or call Server::insecure() to serve anyway"
        )))
    }

    /// Checks the settings and assembles the services; `stop` ends long waits and streams.
    async fn prepare(mut self, stop: CancellationToken) -> Result<Serving, ServerError> {
        // Room for the largest payload plus the rest of a message.
        let needed = self.max_payload_bytes.saturating_add(64 * 1024);
        if self.config.max_message_bytes < needed {
            return Err(ServerError::Config(format!(
                "max_message_bytes ({}) must be at least max_payload_bytes + 64 KiB ({needed})",
                self.config.max_message_bytes
            )));
        }
        // TLS settings are checked here, so `start` reports bad ones before it returns.
        let tls = match self.config.tls {
            Some(_) => Some(self.tls_handle()?),
            None => None,
        };
        let max_connections = self.config.max_connections;
        if max_connections == 0 || max_connections > Semaphore::MAX_PERMITS {
            return Err(ServerError::Config(format!(
                "max_connections must be between 1 and {}, got {max_connections}",
                Semaphore::MAX_PERMITS
            )));
        }
        if self.config.max_connections_per_peer == 0 {
            return Err(ServerError::Config(
                "max_connections_per_peer must be positive".into(),
            ));
        }
        if self.config.max_concurrent_streams == 0 {
            return Err(ServerError::Config(
                "max_concurrent_streams must be positive".into(),
            ));
        }
        let max = self.config.max_message_bytes;
        let client =
            proto::master_server::MasterServer::new(ClientService::new(self.proxy, stop.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max);
        let pods = proto::pod_link_server::PodLinkServer::new(PodLinkService::new(
            self.connector,
            stop.clone(),
        ))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<proto::master_server::MasterServer<ClientService>>()
            .await;
        health
            .set_serving::<proto::pod_link_server::PodLinkServer<PodLinkService>>()
            .await;
        // A master that stopped answers every call with why; health says so too, so load
        // balancers and orchestrators stop sending it work.
        let master_stopped = self.master_stopped;
        let reporter = health.clone();
        let serving_ended = stop.clone();
        tokio::spawn(async move {
            let reason = tokio::select! {
                reason = master_stopped => reason,
                () = serving_ended.cancelled() => return,
            };
            tracing::error!(%reason, "the master stopped: health is NOT_SERVING");
            reporter
                .set_not_serving::<proto::master_server::MasterServer<ClientService>>()
                .await;
            reporter
                .set_not_serving::<proto::pod_link_server::PodLinkServer<PodLinkService>>()
                .await;
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        });
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServerError::Config(format!("reflection: {e}")))?;

        let tokens = self.tokens.clone();
        let routes = self
            .guarded
            .into_iter()
            .fold(self.routes, |routes, add| add(routes, tokens.clone()))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(InterceptedService::new(
                auth::Guarded::new(client, tokens.clone()),
                self.checks.clone(),
            ))
            .add_service(InterceptedService::new(
                auth::Guarded::new(pods, tokens),
                self.checks,
            ));
        let transport = tonic::transport::Server::builder()
            .layer(tls::RefuseConnections)
            .max_concurrent_streams(self.config.max_concurrent_streams)
            .http2_keepalive_interval(self.config.http2_keepalive)
            .http2_keepalive_timeout(self.config.http2_keepalive.map(|d| d.saturating_mul(2)));
        Ok(Serving {
            routes,
            tcp_keepalive: self.config.tcp_keepalive,
            transport,
            connections: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            max_connections_per_peer: self.config.max_connections_per_peer,
            first_bytes_timeout: self.config.first_bytes_timeout,
            tls,
            stop,
        })
    }
}

/// Services assembled and ready to run on a listener.
struct Serving {
    routes: Routes,
    tcp_keepalive: Option<Duration>,
    transport:
        tonic::transport::Server<tower_layer::Stack<tls::RefuseConnections, tower_layer::Identity>>,
    /// A permit per open connection.
    connections: Arc<Semaphore>,
    max_connections: usize,
    max_connections_per_peer: usize,
    first_bytes_timeout: Duration,
    /// TLS, terminated here (see `tls.rs`).
    tls: Option<TlsHandle>,
    /// Ends the TLS accept loop with the server.
    stop: CancellationToken,
}

impl Serving {
    async fn run<F>(self, listener: TcpListener, shutdown: F) -> Result<(), ServerError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(self.tcp_keepalive);
        let incoming = connections::limit(
            incoming,
            connections::Limits {
                permits: self.connections,
                max: self.max_connections,
                max_per_peer: self.max_connections_per_peer,
                first_bytes_within: self.first_bytes_timeout,
            },
        );
        let mut transport = self.transport;
        let router = transport.add_routes(self.routes);
        match self.tls {
            Some(tls) => {
                let incoming = tls::accept(incoming, tls, self.first_bytes_timeout, self.stop);
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
        }
        .map_err(ServerError::Serve)
    }
}

/// A server running in the background. [`RunningServer::shutdown`] stops it and waits;
/// dropping it stops it without waiting.
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    stop: CancellationToken,
    /// Taken by `shutdown`.
    task: Option<JoinHandle<Result<(), ServerError>>>,
    connections: Arc<Semaphore>,
    max_connections: usize,
    tls: Option<TlsHandle>,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl RunningServer {
    /// The address it listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The handle that replaces its TLS certificate while it runs; `None` without TLS.
    pub fn tls(&self) -> Option<&TlsHandle> {
        self.tls.as_ref()
    }

    /// Connections open now (at most `ServerConfig::max_connections`).
    pub fn open_connections(&self) -> usize {
        self.max_connections
            .saturating_sub(self.connections.available_permits())
    }

    /// The `http://` endpoint clients and pods connect to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Stops accepting, ends open streams, and waits for the server task.
    ///
    /// # Errors
    /// [`ServerError::Serve`] if serving failed, [`ServerError::Task`] if its task panicked.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.stop.cancel();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        task.await.map_err(|e| ServerError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mawex_core::MemoryJournal;

    /// An address other machines can reach needs TLS and tokens, or an explicit insecure.
    #[tokio::test]
    async fn an_exposed_address_needs_tls_and_tokens_or_insecure() {
        let master = Master::builder()
            .start(MemoryJournal::new())
            .await
            .expect("master");
        let exposed: SocketAddr = "10.1.2.3:7070".parse().expect("address");
        let loopback: SocketAddr = "127.0.0.1:7070".parse().expect("address");
        let err = Server::new(&master)
            .check_exposure(exposed)
            .expect_err("plain and open");
        let message = err.to_string();
        assert!(
            message.contains("without TLS (ServerConfig::tls) and tokens (Server::tokens)")
                && message.contains("Server::insecure()"),
            "{message}"
        );
        let tokens = auth::TokenStore::new(auth::Tokens::default());
        let err = Server::new(&master)
            .tokens(tokens.clone())
            .check_exposure(exposed)
            .expect_err("tokens but no TLS");
        assert!(err.to_string().contains("without TLS"), "{err}");
        assert!(!err.to_string().contains("and tokens"), "{err}");
        assert!(Server::new(&master).check_exposure(loopback).is_ok());
        assert!(Server::new(&master)
            .insecure()
            .check_exposure(exposed)
            .is_ok());
        let tls = ServerTls::new("cert", "key");
        assert!(Server::new(&master)
            .tls(tls)
            .tokens(tokens)
            .check_exposure(exposed)
            .is_ok());
        master.shutdown().await.expect("shutdown");
    }
}
