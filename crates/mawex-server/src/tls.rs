//! TLS of the server, terminated here (rustls with the `ring` provider) rather than by
//! tonic, so that the certificate can be replaced while serving: each handshake takes the
//! configuration current at that moment ([`TlsHandle::reload`], [`TlsHandle::watch_files`]).
//! Handshakes run concurrently, each bounded in time, so a peer that stalls holds nothing
//! for long.
//!
//! A connection the server will not serve is still accepted, so that the client hears why
//! in a gRPC status instead of a reset: plain text on the TLS port, and (with mutual TLS) a
//! client certificate that is missing, expired or signed by another authority. Such a
//! connection carries its refusal in [`PeerInfo`], and [`RefuseConnections`], in front of
//! every service, answers each of its calls with `Unauthenticated` and the reason. The
//! handshake itself still proves the client holds its certificate's key.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::connections::Counted;
use crate::ServerError;

/// TLS of the server: a certificate chain and its key, and optionally the authorities whose
/// client certificates are required (mutual TLS).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerTls {
    /// PEM certificate chain of the server.
    pub cert_pem: Vec<u8>,
    /// PEM private key of the certificate.
    pub key_pem: Vec<u8>,
    /// PEM certificates of the authorities whose client certificates are required (mutual
    /// TLS); none: clients present no certificate.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl ServerTls {
    /// Serves with the certificate chain `cert_pem` and its private key `key_pem`.
    pub fn new(cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        ServerTls {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            client_ca_pem: None,
        }
    }

    /// Reads the chain and key from PEM files.
    ///
    /// # Errors
    /// [`ServerError::Config`] naming a file that cannot be read.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, ServerError> {
        Ok(ServerTls::new(read(cert)?, read(key)?))
    }

    /// Reads the chain and key from PEM files, and with `client_ca` the authorities whose
    /// client certificates are required (mutual TLS): what the server was started with, in
    /// the form [`TlsHandle::watch_files`] and a SIGHUP handler reload.
    ///
    /// # Errors
    /// [`ServerError::Config`] naming a file that cannot be read.
    pub fn from_files_with_clients(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Self, ServerError> {
        let tls = ServerTls::from_files(cert, key)?;
        Ok(match client_ca {
            Some(ca) => tls.require_client_certificates(read(ca)?),
            None => tls,
        })
    }

    /// Requires every client to present a certificate signed by an authority in `ca_pem`.
    pub fn require_client_certificates(mut self, ca_pem: impl Into<Vec<u8>>) -> Self {
        self.client_ca_pem = Some(ca_pem.into());
        self
    }

    /// The rustls configuration, checked.
    fn load(&self) -> Result<Loaded, ServerError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            ServerError::Config(format!("TLS settings: {what}: {e}"))
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad("the certificate chain", &e))?;
        if certs.is_empty() {
            return Err(bad("the certificate chain", &"no certificate in the PEM"));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| bad("the key", &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("protocol versions", &e))?;
        let mut clients = None;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    let cert = cert.map_err(|e| bad("the client authorities", &e))?;
                    roots
                        .add(cert)
                        .map_err(|e| bad("the client authorities", &e))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| bad("the client authorities", &e))?;
                clients = Some(verifier.clone());
                builder.with_client_cert_verifier(Arc::new(AfterHandshake(verifier)))
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| bad("the certificate and key", &e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Loaded {
            config: Arc::new(config),
            clients,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))
}

/// The private key stays out of logs.
impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"(hidden)")
            .field("client_ca_pem", &self.client_ca_pem.as_ref().map(Vec::len))
            .finish()
    }
}

/// The longest client certificate subject accepted.
const MAX_SUBJECT_BYTES: usize = 1024;

/// TLS settings ready for handshakes.
struct Loaded {
    config: Arc<rustls::ServerConfig>,
    /// With mutual TLS: what checks the client certificates once a handshake is done.
    clients: Option<Arc<dyn ClientCertVerifier>>,
}

impl Loaded {
    /// Who the client of a finished handshake is (`Ok(None)` without mutual TLS), or why
    /// its calls are refused.
    fn client(&self, certs: Option<&[CertificateDer<'_>]>) -> Result<Option<String>, String> {
        let Some(verifier) = &self.clients else {
            return Ok(None);
        };
        let Some((end, intermediates)) = certs.and_then(<[_]>::split_first) else {
            return Err(
                "this master requires a client certificate signed by its authority \
                        (mutual TLS): set one with ClientTls::with_identity"
                    .to_owned(),
            );
        };
        verifier
            .verify_client_cert(end, intermediates, UnixTime::now())
            .map_err(|e| format!("the client certificate was refused: {e}"))?;
        let subject = subject(end.as_ref()).ok_or_else(|| {
            "the client certificate names no subject (a common name or a subject \
             alternative name)"
                .to_owned()
        })?;
        // The subject is journaled as the owner of the pod ids it registers.
        if subject.len() > MAX_SUBJECT_BYTES {
            return Err(format!(
                "the client certificate's subject is {} bytes, more than {MAX_SUBJECT_BYTES}",
                subject.len()
            ));
        }
        Ok(Some(subject))
    }
}

/// The name a client certificate gives its holder, with its kind: the first URI subject
/// alternative name (a SPIFFE id, say), else the first DNS one, else the subject's common
/// name. Alternative names first, because name constraints of an intermediate authority
/// apply to them and not to the common name; the kind keeps a common name from passing for
/// an alternative name of the same text.
pub(crate) fn subject(cert: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let names = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    let uri = names.iter().find_map(|name| match name {
        GeneralName::URI(uri) if !uri.is_empty() => Some(format!("uri:{uri}")),
        _ => None,
    });
    let dns = || {
        names.iter().find_map(|name| match name {
            GeneralName::DNSName(dns) if !dns.is_empty() => Some(format!("dns:{dns}")),
            _ => None,
        })
    };
    let cn = || {
        parsed
            .subject()
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok())
            .filter(|cn| !cn.is_empty())
            .map(|cn| format!("cn:{cn}"))
    };
    uri.or_else(dns).or_else(cn)
}

/// Asks for a client certificate but leaves judging it to [`Loaded::client`] after the
/// handshake, so a refused client is told why. The handshake signature is still checked
/// here: a certificate is only ever accepted from the holder of its key.
#[derive(Debug)]
struct AfterHandshake(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for AfterHandshake {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Replaces the TLS settings of a serving server: new connections use the new certificate
/// (and client authorities), open ones keep theirs. Cheap to clone.
#[derive(Clone)]
pub struct TlsHandle {
    current: Arc<RwLock<Arc<Loaded>>>,
}

impl std::fmt::Debug for TlsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsHandle").finish_non_exhaustive()
    }
}

impl TlsHandle {
    pub(crate) fn new(tls: &ServerTls) -> Result<Self, ServerError> {
        Ok(TlsHandle {
            current: Arc::new(RwLock::new(Arc::new(tls.load()?))),
        })
    }

    fn current(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Serves new connections with `tls`.
    ///
    /// # Errors
    /// [`ServerError::Config`] for settings that do not work, or that would drop the client
    /// certificate requirement; the old ones stay.
    pub fn reload(&self, tls: &ServerTls) -> Result<(), ServerError> {
        let config = Arc::new(tls.load()?);
        // Dropping mutual TLS by a file change would open the server to every client that
        // reaches it: that takes a restart.
        if self.current().clients.is_some() && config.clients.is_none() {
            return Err(ServerError::Config(
                "the new TLS settings require no client certificates, but the server does: \
                 pass the client authorities too (turning mutual TLS off takes a restart)"
                    .into(),
            ));
        }
        match self.current.write() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        tracing::info!(target: "mawex::audit", "TLS certificate reloaded");
        Ok(())
    }

    /// Reloads from the PEM files `cert` and `key` (and `client_ca`, for mutual TLS)
    /// whenever their content changes (read every `every`), until the returned task is
    /// aborted. Files that do not work are logged and the old settings stay.
    pub fn watch_files(
        &self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        client_ca: Option<PathBuf>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let handle = self.clone();
        let (cert, key) = (cert.into(), key.into());
        let load = move || ServerTls::from_files_with_clients(&cert, &key, client_ca.as_deref());
        let mut seen = load().ok();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let now = load();
                match now {
                    Ok(tls) if seen.as_ref() != Some(&tls) => match handle.reload(&tls) {
                        Ok(()) => seen = Some(tls),
                        Err(e) => {
                            tracing::error!(target: "mawex::audit", error = %e, "TLS files not reloaded; the old settings stay")
                        }
                    },
                    Ok(_) => {}
                    // A rotation in progress (one file written, not the other) settles by
                    // the next look.
                    Err(e) => tracing::debug!(error = %e, "TLS files unreadable for now"),
                }
            }
        })
    }
}

/// Who is on the other end of a connection of the TLS listener: what the services find in
/// a request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct PeerInfo {
    pub(crate) remote_addr: Option<SocketAddr>,
    /// The subject of the client's certificate, verified (mutual TLS).
    pub(crate) client: Option<String>,
    /// Why every call of this connection is refused, if it is.
    pub(crate) refusal: Option<String>,
}

/// An accepted connection: TLS once its handshake is done, or plain text that is only
/// ever told to use TLS.
pub(crate) struct TlsIo {
    stream: Transport,
    info: PeerInfo,
    /// A refused connection is closed when this fires: time enough to hear why, not to
    /// hold a connection place.
    closes: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// How long a refused connection stays open to carry its refusals.
const REFUSED_CONNECTION_GRACE: Duration = Duration::from_secs(2);

impl TlsIo {
    fn new(stream: Transport, info: PeerInfo) -> Self {
        let closes = info
            .refusal
            .is_some()
            .then(|| Box::pin(tokio::time::sleep(REFUSED_CONNECTION_GRACE)));
        TlsIo {
            stream,
            info,
            closes,
        }
    }
}

enum Transport {
    Tls(Box<tokio_rustls::server::TlsStream<Counted<TcpStream>>>),
    Plain(Counted<TcpStream>),
}

/// What a plain-text client of the TLS listener is told.
const TLS_REQUIRED: &str = "this master requires TLS: connect to its https:// endpoint and \
                            trust its authority (ClientTls)";

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

impl Connected for TlsIo {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(closes) = self.closes.as_mut() {
            if std::future::Future::poll(closes.as_mut(), cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "a refused connection is closed",
                )));
            }
        }
        match &mut self.stream {
            Transport::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.stream {
            Transport::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Transport::Tls(s) => Pin::new(s).poll_flush(cx),
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Transport::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.stream {
            Transport::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Transport::Tls(s) => s.is_write_vectored(),
            Transport::Plain(s) => s.is_write_vectored(),
        }
    }
}

/// The connections of `incoming` once their handshakes are done, each within `timeout`,
/// many at once. Ends when `stop` is cancelled.
pub(crate) fn accept<S>(
    incoming: S,
    tls: TlsHandle,
    timeout: Duration,
    stop: CancellationToken,
) -> impl Stream<Item = Result<TlsIo, io::Error>>
where
    S: Stream<Item = Result<Counted<TcpStream>, io::Error>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<TlsIo>(64);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        let mut handshakes = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                accepted = incoming.next() => match accepted {
                    Some(Ok(io)) => {
                        let loaded = tls.current();
                        handshakes.spawn(async move {
                            tokio::time::timeout(timeout, handshake(io, loaded))
                                .await
                                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
                        });
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, "accept failed"),
                    None => return,
                },
                Some(done) = handshakes.join_next(), if !handshakes.is_empty() => match done {
                    Ok(Ok(io)) => {
                        if tx.send(io).await.is_err() {
                            return;
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(e) => tracing::debug!(error = %e, "TLS handshake task failed"),
                },
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|io| (Ok(io), rx))
    })
}

/// The TLS handshake of `io` with `loaded`, or a plain-text connection marked refused.
async fn handshake(io: Counted<TcpStream>, loaded: Arc<Loaded>) -> io::Result<TlsIo> {
    let remote_addr = io.remote_addr();
    let mut first = [0_u8; 1];
    if io.peek(&mut first).await? == 1 && first[0] != TLS_HANDSHAKE_RECORD {
        let info = PeerInfo {
            remote_addr,
            client: None,
            refusal: Some(TLS_REQUIRED.to_owned()),
        };
        return Ok(TlsIo::new(Transport::Plain(io), info));
    }
    let stream = tokio_rustls::TlsAcceptor::from(loaded.config.clone())
        .accept(io)
        .await?;
    let (client, refusal) = match loaded.client(stream.get_ref().1.peer_certificates()) {
        Ok(client) => (client, None),
        Err(refusal) => (None, Some(refusal)),
    };
    let info = PeerInfo {
        remote_addr,
        client,
        refusal,
    };
    Ok(TlsIo::new(Transport::Tls(Box::new(stream)), info))
}

/// In front of every service: answers each call of a connection marked refused (see
/// [`PeerInfo::refusal`]) with `Unauthenticated` and the reason.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RefuseConnections;

impl<S> tower_layer::Layer<S> for RefuseConnections {
    type Service = Refusing<S>;

    fn layer(&self, inner: S) -> Refusing<S> {
        Refusing(inner)
    }
}

/// The service [`RefuseConnections`] makes.
#[derive(Debug, Clone)]
pub(crate) struct Refusing<S>(S);

impl<S, B, R> tower_service::Service<http::Request<B>> for Refusing<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future =
        futures::future::Either<std::future::Ready<Result<http::Response<R>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let refused = request.extensions().get::<PeerInfo>().and_then(|p| {
            p.refusal
                .as_ref()
                .map(|reason| (reason.clone(), p.remote_addr))
        });
        match refused {
            Some((reason, peer)) => {
                let status = tonic::Status::unauthenticated(reason);
                let peer = peer.map_or_else(|| "-".to_owned(), |a| a.to_string());
                crate::auth::log_refused(request.uri().path(), &peer, &status);
                futures::future::Either::Left(std::future::ready(Ok(status.into_http())))
            }
            None => futures::future::Either::Right(self.0.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(common_name: Option<&str>, names: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = common_name {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = names;
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("signed").der().to_vec()
    }

    #[test]
    fn the_subject_prefers_alternative_names_and_names_its_kind() {
        let dns = |n: &str| SanType::DnsName(n.try_into().expect("dns name"));
        let uri = |n: &str| SanType::URI(n.try_into().expect("uri"));
        for (common_name, names, expected) in [
            (
                Some("pod-1"),
                vec![dns("pod-1.example"), uri("spiffe://example/pod-1")],
                Some("uri:spiffe://example/pod-1"),
            ),
            (
                Some("pod-1"),
                vec![dns("pod-1.example")],
                Some("dns:pod-1.example"),
            ),
            (Some("pod-1"), vec![], Some("cn:pod-1")),
            (Some(""), vec![], None),
            (None, vec![], None),
        ] {
            assert_eq!(
                super::subject(&cert(common_name, names.clone())).as_deref(),
                expected,
                "{common_name:?} {names:?}"
            );
        }
        assert_eq!(super::subject(b"not a certificate"), None);
    }
}
