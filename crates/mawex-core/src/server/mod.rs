//! The gRPC face of a master: the client service, the pod link, health and reflection.
//!
//! Both services are thin: they convert at the edge (`mawex_api::convert`) and call the same
//! in-process handles as everyone else (`LocalMasterProxy`, `LocalPodConnector`), so the
//! network adds no second code path to the master. Errors become `tonic::Status` through the
//! one `From<ApiError>` mapping in `mawex_api::convert`.

mod client;
mod pod_link;

use std::net::SocketAddr;
use std::time::Duration;

use mawex_api::proto;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tracing::info;

use crate::error::CoreError;
use crate::pod::LocalPodConnector;
use crate::proxy::LocalMasterProxy;

pub use pod_link::GrpcPodConnector;

/// Settings of the gRPC server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Largest message accepted or sent, in bytes. Bigger requests fail with a clear error
    /// before they reach the master; payloads are further limited by
    /// `MasterConfig::max_payload_bytes`.
    pub max_message_bytes: usize,
    /// TCP keepalive of accepted connections, so a vanished peer is noticed.
    pub tcp_keepalive: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_message_bytes: 16 * 1024 * 1024,
            tcp_keepalive: Some(Duration::from_secs(10)),
        }
    }
}

/// A running gRPC server. [`GrpcServer::shutdown`] stops it and waits; dropping it stops it
/// without waiting.
#[derive(Debug)]
pub struct GrpcServer {
    local_addr: SocketAddr,
    stop: CancellationToken,
    /// Taken by `shutdown`.
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl GrpcServer {
    /// The address it listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The `http://` endpoint clients and pods connect to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Stops accepting, ends open streams, and waits for the server task.
    ///
    /// # Errors
    /// [`CoreError::Thread`] if the server failed.
    pub async fn shutdown(mut self) -> Result<(), CoreError> {
        self.stop.cancel();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CoreError::Thread(format!("gRPC server failed: {e}"))),
            Err(e) => Err(CoreError::Thread(format!("gRPC server task failed: {e}"))),
        }
    }
}

pub(crate) async fn start(
    proxy: LocalMasterProxy,
    connector: LocalPodConnector,
    addr: SocketAddr,
    config: ServerConfig,
) -> Result<GrpcServer, CoreError> {
    let incoming = TcpIncoming::bind(addr)
        .map_err(|e| CoreError::Config(format!("cannot listen on {addr}: {e}")))?
        .with_nodelay(Some(true))
        .with_keepalive(config.tcp_keepalive);
    let local_addr = incoming
        .local_addr()
        .map_err(|e| CoreError::Config(format!("cannot read the bound address: {e}")))?;

    let stop = CancellationToken::new();
    let client =
        proto::master_server::MasterServer::new(client::ClientService::new(proxy, stop.clone()))
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);
    let pods = proto::pod_link_server::PodLinkServer::new(pod_link::PodLinkService::new(
        connector,
        stop.clone(),
    ))
    .max_decoding_message_size(config.max_message_bytes)
    .max_encoding_message_size(config.max_message_bytes);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<proto::master_server::MasterServer<client::ClientService>>()
        .await;
    health
        .set_serving::<proto::pod_link_server::PodLinkServer<pod_link::PodLinkService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| CoreError::Config(format!("reflection: {e}")))?;

    let shutdown = stop.clone();
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(client)
            .add_service(pods)
            .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await }),
    );
    info!(%local_addr, "gRPC server listening");
    Ok(GrpcServer {
        local_addr,
        stop,
        task: Some(task),
    })
}
