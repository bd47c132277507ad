//! [`GrpcPodConnector`]: the pod side of the `mawex.v1.PodLink` service.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{debug, warn};

use super::channel::{ChannelConfig, Masters};
use crate::convert::MasterFrame;
use crate::error::ApiError;
use crate::pod::{PodConnector, PodHello, PodMessage, PodOutbox, PodSession};
use crate::proto;
use crate::proto::pod_link_client::PodLinkClient;

/// Connects pods to a master over gRPC: one bidirectional stream per session.
#[derive(Debug, Clone)]
pub struct GrpcPodConnector {
    masters: Arc<Masters>,
    config: ChannelConfig,
}

impl GrpcPodConnector {
    /// A connector for the master at `endpoint` (e.g. `http://127.0.0.1:7070`) with the
    /// default [`ChannelConfig`]; connects on first use and again after every failure.
    ///
    /// # Errors
    /// `InvalidArgument` for a malformed endpoint.
    pub fn new(endpoint: &str) -> Result<Self, ApiError> {
        Self::with_config([endpoint], ChannelConfig::default())
    }

    /// A connector for the masters at `endpoints`: each session is opened with the current
    /// one, and a session that cannot be opened moves on to the next (the pod's reconnect
    /// loop tries again).
    ///
    /// # Errors
    /// `InvalidArgument` for an empty list or a malformed endpoint.
    pub fn with_config<I, S>(endpoints: I, config: ChannelConfig) -> Result<Self, ApiError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let masters = Arc::new(Masters::new(endpoints, &config)?);
        Ok(GrpcPodConnector { masters, config })
    }

    async fn open(
        &self,
        client: PodLinkClient<super::channel::AuthChannel>,
        hello: PodHello,
    ) -> Result<PodSession, ApiError> {
        let mut client = client
            .max_decoding_message_size(self.config.max_message_bytes)
            .max_encoding_message_size(self.config.max_message_bytes);
        let (tx, rx) = mpsc::unbounded_channel::<proto::PodToMaster>();
        let backlog = crate::pod::session_backlog(&hello);
        tx.send(hello.into())
            .map_err(|_| ApiError::Internal("a fresh channel refused a message".into()))?;
        let mut inbound = client
            .session(UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
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
        let (inbox_tx, inbox) = mpsc::channel(backlog);
        let term = welcome.term;
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    // Not of the session's term: not the leader that welcomed the pod.
                    Ok(Some(m)) if m.term < term => {
                        warn!(
                            term = m.term,
                            session_term = term,
                            "a message of an earlier term is dropped"
                        );
                    }
                    Ok(Some(m)) => match MasterFrame::try_from(m) {
                        Ok(MasterFrame::Message(message)) => {
                            // Waiting here holds back the stream: the master sees a slow
                            // reader, as it should.
                            if inbox_tx.send(message).await.is_err() {
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
    /// Opens the session with the current master; one that cannot be reached, or that does
    /// not lead, hands over to the next (or to the leader it names) at once: up to
    /// `2n - 1` tries for `n` masters (one round, then a leader named late). The error of
    /// the last try is returned: `NotLeader` while the masters are electing one (worth
    /// trying again soon), `Unavailable` when none answered.
    async fn connect(&self, hello: PodHello) -> Result<PodSession, ApiError> {
        let tries = self.masters.len().saturating_mul(2).saturating_sub(1);
        let mut last = None;
        for _ in 0..tries {
            let (index, channel) = self.masters.current();
            match self.open(PodLinkClient::new(channel), hello.clone()).await {
                // A follower: the next try goes to the leader it names, if it knows it.
                Err(ApiError::NotLeader { leader }) => {
                    self.masters.follow(index, leader.as_deref());
                    last = Some(ApiError::NotLeader { leader });
                }
                Err(ApiError::Unavailable(reason)) => {
                    self.masters.failed(index);
                    let error = ApiError::Unavailable(format!(
                        "cannot open a pod session with {}: {reason}",
                        self.masters.endpoint(index)
                    ));
                    // A master that does not lead says more than one that is down.
                    if !matches!(last, Some(ApiError::NotLeader { .. })) {
                        last = Some(error);
                    }
                }
                opened => return opened,
            }
        }
        Err(last.unwrap_or_else(|| ApiError::Unavailable("no master to connect to".into())))
    }
}
