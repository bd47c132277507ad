//! The `mawex.v1.PodLink` service: pod sessions, each handed to the master in-process.

use std::pin::Pin;
use std::time::Duration;

use futures::{stream, Stream, StreamExt};
use mawex_api::convert::PodFrame;
use mawex_api::pod::{PodConnector, PodCredential, PodSession};
use mawex_api::proto;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

/// How long a new pod stream may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct PodLinkService {
    connector: Arc<dyn PodConnector>,
    stop: CancellationToken,
}

impl PodLinkService {
    pub(crate) fn new(connector: Arc<dyn PodConnector>, stop: CancellationToken) -> Self {
        PodLinkService { connector, stop }
    }
}

/// The host of an advertised address: `host:port`, `[v6]:port`, a bare host, or a URL.
fn advertised_host(address: &str) -> &str {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => authority,
    }
}

/// A pod may point others only at itself: the address it advertises (where other pods
/// pull a broadcast from) must name the IP it connected from, or match its token's
/// `addresses`.
fn check_advertised(
    pod: &mawex_api::PodId,
    address: &str,
    peer: Option<std::net::SocketAddr>,
    token: &crate::auth::TokenEntry,
) -> Result<(), Status> {
    if token.allows_address(address) {
        return Ok(());
    }
    let same = |ip: std::net::IpAddr, peer: std::net::IpAddr| {
        let canonical = |ip: std::net::IpAddr| ip.to_canonical();
        canonical(ip) == canonical(peer) || (ip.is_loopback() && peer.is_loopback())
    };
    let host = advertised_host(address);
    match (host.parse::<std::net::IpAddr>(), peer) {
        (Ok(ip), Some(peer)) if same(ip, peer.ip()) => Ok(()),
        _ => Err(Status::permission_denied(format!(
            "pod {pod} advertises {address:?}, but connected from {}: a pod may advertise \
             only the address it connects from, or one its token lists in `addresses`",
            peer.map_or_else(|| "an unknown address".to_owned(), |p| p.ip().to_string())
        ))),
    }
}

/// Logs a refused hello on the audit target and gives the status back.
fn refused(status: Status) -> Status {
    warn!(target: "mawex::audit", reason = status.message(), "pod hello refused");
    status
}

type ToPodStream = Pin<Box<dyn Stream<Item = Result<proto::MasterToPod, Status>> + Send>>;

#[tonic::async_trait]
impl proto::pod_link_server::PodLink for PodLinkService {
    type SessionStream = ToPodStream;

    async fn session(
        &self,
        request: Request<Streaming<proto::PodToMaster>>,
    ) -> Result<Response<ToPodStream>, Status> {
        let caller = crate::auth::Caller::of(&request).cloned();
        let peer = crate::connections::peer_addr(request.extensions());
        // With mutual TLS, the certificate names the pod more narrowly than a token that
        // many pods share, so it is what the pod id is bound to.
        let certificate = request
            .extensions()
            .get::<crate::tls::PeerInfo>()
            .and_then(|p| p.client.clone());
        let mut inbound = request.into_inner();
        // A peer that opens a stream and says nothing must not hold the server open.
        let first = tokio::select! {
            first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message()) => first
                .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??,
            () = self.stop.cancelled() => return Err(Status::unavailable("the server is shutting down")),
        }
        .ok_or_else(|| Status::invalid_argument("the stream ended before a hello"))?;
        let mut hello = match PodFrame::try_from(first)? {
            PodFrame::Hello(hello) => hello,
            PodFrame::Message(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a pod session must be a hello",
                ))
            }
        };
        if let Some(caller) = &caller {
            let token = &caller.token;
            if !token.allows_pod(&hello.pod) {
                return Err(refused(Status::permission_denied(format!(
                    "token {} may not register pod {}",
                    token.id(),
                    hello.pod
                ))));
            }
            for group in &hello.groups {
                caller.check_group(group).map_err(refused)?;
            }
            if let Some(address) = &hello.address {
                check_advertised(&hello.pod, address, peer, token).map_err(refused)?;
            }
            let mut credential = PodCredential::token(token.id());
            credential.token_max_pods = token.pod_limit();
            hello.credential = Some(credential);
        }
        if let Some(subject) = certificate {
            hello.credential = Some(match hello.credential.take() {
                Some(credential) => credential.with_certificate(subject),
                None => PodCredential::certificate(subject),
            });
        }
        let pod = hello.pod.clone();
        let PodSession {
            welcome,
            outbox,
            inbox,
            ..
        } = self.connector.connect(hello).await.map_err(|e| match e {
            e @ mawex_api::ApiError::PermissionDenied(_) => refused(e.into()),
            e => e.into(),
        })?;

        // A session ends when its token is revoked (removed or changed in the store).
        let revoked = futures::future::FutureExt::shared(crate::auth::revoked(caller.as_ref()));
        // Pod → master. The session ends for the master when this task drops `outbox`.
        let stop = self.stop.clone();
        let inbound_revoked = revoked.clone();
        tokio::spawn(async move {
            let mut revoked = std::pin::pin!(inbound_revoked);
            loop {
                let next = tokio::select! {
                    m = inbound.message() => m,
                    () = stop.cancelled() => break,
                    () = &mut revoked => {
                        warn!(target: "mawex::audit", %pod, "pod session ended: its token was revoked");
                        break;
                    }
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
        let term = welcome.term;
        let rest = ReceiverStream::new(inbox).map(move |m| {
            let mut message: proto::MasterToPod = m.into();
            message.term = term;
            Ok(message)
        });
        let out = stream::once(async move { Ok(welcome.into()) })
            .chain(rest)
            .take_until(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = revoked => {}
                }
            });
        Ok(Response::new(Box::pin(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::advertised_host;

    #[test]
    fn the_host_of_an_advertised_address() {
        for (address, host) in [
            ("10.0.0.5:873", "10.0.0.5"),
            ("10.0.0.5", "10.0.0.5"),
            ("[fe80::1]:873", "fe80::1"),
            ("fe80::1", "fe80::1"),
            ("rsync://10.0.0.5:873/module", "10.0.0.5"),
            ("http://user@cache.local:8080/x", "cache.local"),
            ("cache.local", "cache.local"),
        ] {
            assert_eq!(advertised_host(address), host, "{address}");
        }
    }
}
