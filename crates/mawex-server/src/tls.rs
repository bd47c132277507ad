//! TLS of the server, terminated here (rustls with the `ring` provider) rather than by
//! tonic, so that the certificate can be replaced while serving: each handshake takes the
//! configuration current at that moment ([`TlsHandle::reload`], [`TlsHandle::watch_files`]).
//! Handshakes run concurrently, each bounded in time, so a peer that stalls holds nothing
//! for long.

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
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
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

    /// Requires every client to present a certificate signed by an authority in `ca_pem`.
    pub fn require_client_certificates(mut self, ca_pem: impl Into<Vec<u8>>) -> Self {
        self.client_ca_pem = Some(ca_pem.into());
        self
    }

    /// The rustls configuration, checked.
    pub(crate) fn rustls_config(&self) -> Result<Arc<rustls::ServerConfig>, ServerError> {
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
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| bad("the certificate and key", &e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
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

/// Replaces the TLS settings of a serving server: new connections use the new certificate
/// (and client authorities), open ones keep theirs. Cheap to clone.
#[derive(Clone)]
pub struct TlsHandle {
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

impl std::fmt::Debug for TlsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsHandle").finish_non_exhaustive()
    }
}

impl TlsHandle {
    pub(crate) fn new(tls: &ServerTls) -> Result<Self, ServerError> {
        Ok(TlsHandle {
            current: Arc::new(RwLock::new(tls.rustls_config()?)),
        })
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Serves new connections with `tls`.
    ///
    /// # Errors
    /// [`ServerError::Config`] for settings that do not work; the old ones stay.
    pub fn reload(&self, tls: &ServerTls) -> Result<(), ServerError> {
        let config = tls.rustls_config()?;
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
        let load = move || -> Result<ServerTls, ServerError> {
            let tls = ServerTls::from_files(&cert, &key)?;
            Ok(match &client_ca {
                Some(ca) => tls.require_client_certificates(read(ca)?),
                None => tls,
            })
        };
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

/// Who is on the other end of a TLS connection: what the services find in a request's
/// extensions.
#[derive(Debug, Clone)]
pub(crate) struct PeerInfo {
    pub(crate) remote_addr: Option<SocketAddr>,
    /// The client's certificate chain, with mutual TLS.
    #[allow(dead_code)] // Read by pod identity from certificates, next.
    pub(crate) certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// A connection once its TLS handshake is done.
pub(crate) struct TlsIo {
    stream: tokio_rustls::server::TlsStream<Counted<TcpStream>>,
    info: PeerInfo,
}

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
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
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
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                        handshakes.spawn(async move {
                            let remote_addr = io.remote_addr();
                            let stream = tokio::time::timeout(timeout, acceptor.accept(io))
                                .await
                                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
                            let certs = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()));
                            Ok::<_, io::Error>(TlsIo {
                                stream,
                                info: PeerInfo { remote_addr, certs },
                            })
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
