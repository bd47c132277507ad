//! The `mawex.v1.PodLink` service and its client side, [`GrpcPodConnector`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{stream, Stream, StreamExt};
use mawex_api::convert::{MasterFrame, PodFrame};
use mawex_api::pod::{PodHello, PodMessage};
use mawex_api::proto::pod_link_client::PodLinkClient;
use mawex_api::{proto, ApiError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::pod::{LocalPodConnector, PodConnector, PodOutbox, PodSession};

/// How long a new pod stream may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct PodLinkService {
    connector: LocalPodConnector,
    stop: CancellationToken,
}

impl PodLinkService {
    pub(crate) fn new(connector: LocalPodConnector, stop: CancellationToken) -> Self {
        PodLinkService { connector, stop }
    }
}

type ToPodStream = Pin<Box<dyn Stream<Item = Result<proto::MasterToPod, Status>> + Send>>;

#[tonic::async_trait]
impl proto::pod_link_server::PodLink for PodLinkService {
    type SessionStream = ToPodStream;

    async fn session(
        &self,
        request: Request<Streaming<proto::PodToMaster>>,
    ) -> Result<Response<ToPodStream>, Status> {
        let mut inbound = request.into_inner();
        // A peer that opens a stream and says nothing must not hold the server open.
        let first = tokio::select! {
            first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message()) => first
                .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??,
            () = self.stop.cancelled() => return Err(Status::unavailable("the server is shutting down")),
        }
        .ok_or_else(|| Status::invalid_argument("the stream ended before a hello"))?;
        let hello = match PodFrame::try_from(first)? {
            PodFrame::Hello(hello) => hello,
            PodFrame::Message(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a pod session must be a hello",
                ))
            }
        };
        let pod = hello.pod.clone();
        let PodSession {
            welcome,
            outbox,
            inbox,
            ..
        } = self.connector.connect(hello).await?;

        // Pod → master. The session ends for the master when this task drops `outbox`.
        let stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    m = inbound.message() => m,
                    () = stop.cancelled() => break,
                };
                match next {
                    Ok(Some(m)) => match PodFrame::try_from(m) {
                        Ok(PodFrame::Message(message)) => {
                            if outbox.send(message).is_err() {
                                break;
                            }
                        }
                        Ok(PodFrame::Hello(_)) => {
                            warn!(%pod, "a second hello on one session is ignored")
                        }
                        Err(e) => warn!(%pod, error = %e, "malformed pod message ignored"),
                    },
                    Ok(None) => break,
                    Err(status) => {
                        debug!(%pod, %status, "pod stream failed");
                        break;
                    }
                }
            }
        });

        // Master → pod: the welcome, then whatever the master sends, until it closes the
        // session or the server stops.
        let stop = self.stop.clone();
        let rest = receiver_stream(inbox).map(|m| Ok(m.into()));
        let out = stream::once(async move { Ok(welcome.into()) })
            .chain(rest)
            .take_until(async move { stop.cancelled().await });
        Ok(Response::new(Box::pin(out)))
    }
}

/// The messages of `rx` as a stream.
fn receiver_stream<T: Send + 'static>(
    rx: mpsc::UnboundedReceiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    async fn next<T>(
        mut rx: mpsc::UnboundedReceiver<T>,
    ) -> Option<(T, mpsc::UnboundedReceiver<T>)> {
        rx.recv().await.map(|m| (m, rx))
    }
    stream::unfold(rx, next)
}

/// Connects pods to a master over gRPC: one bidirectional stream per session.
#[derive(Debug, Clone)]
pub struct GrpcPodConnector {
    client: PodLinkClient<Channel>,
}

impl GrpcPodConnector {
    /// A connector for the master at `endpoint` (e.g. `http://127.0.0.1:7070`); connects on
    /// first use and again after every failure.
    ///
    /// # Errors
    /// `InvalidArgument` for a malformed endpoint.
    pub fn new(endpoint: &str) -> Result<Self, ApiError> {
        let channel = mawex_api::lazy_channel(endpoint, Duration::from_secs(5))?;
        let client = PodLinkClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        Ok(GrpcPodConnector { client })
    }
}

struct GrpcOutbox {
    tx: mpsc::UnboundedSender<proto::PodToMaster>,
}

impl PodOutbox for GrpcOutbox {
    fn send(&self, message: PodMessage) -> Result<(), ApiError> {
        self.tx
            .send(message.into())
            .map_err(|_| ApiError::Unavailable("the pod session is closed".into()))
    }
}

#[async_trait]
impl PodConnector for GrpcPodConnector {
    async fn connect(&self, hello: PodHello) -> Result<PodSession, ApiError> {
        let (tx, rx) = mpsc::unbounded_channel::<proto::PodToMaster>();
        tx.send(hello.into())
            .map_err(|_| ApiError::Internal("a fresh channel refused a message".into()))?;
        let outbound = receiver_stream(rx);
        let mut inbound = self.client.clone().session(outbound).await?.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| ApiError::Unavailable("the master closed the session at once".into()))?;
        let welcome = match MasterFrame::try_from(first)? {
            MasterFrame::Welcome(welcome) => welcome,
            MasterFrame::Message(_) => {
                return Err(ApiError::Internal(
                    "the master spoke before welcoming the pod".into(),
                ))
            }
        };
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(m)) => match MasterFrame::try_from(m) {
                        Ok(MasterFrame::Message(message)) => {
                            if inbox_tx.send(message).is_err() {
                                break;
                            }
                        }
                        Ok(MasterFrame::Welcome(_)) => warn!("a second welcome is ignored"),
                        Err(e) => warn!(error = %e, "malformed master message ignored"),
                    },
                    Ok(None) => break,
                    Err(status) => {
                        debug!(%status, "master stream failed");
                        break;
                    }
                }
            }
        });
        Ok(PodSession::new(welcome, Arc::new(GrpcOutbox { tx }), inbox))
    }
}
