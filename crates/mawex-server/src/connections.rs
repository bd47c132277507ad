//! The bound on accepted connections: each holds a permit until it closes, and a connection
//! accepted with none left is closed at once (the client sees a reset and retries), so a
//! flood of connections cannot grow the server's tasks and buffers without limit. One peer
//! address may hold only so many of them, so one host cannot take every permit.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

/// How often a refused connection is reported at `warn` (the others go to `debug`).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Connections open per peer address.
type PeerCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One of a peer's connections; given back when the connection closes.
struct PeerSlot {
    counts: PeerCounts,
    ip: IpAddr,
}

impl PeerSlot {
    /// A slot for `ip`, if it holds fewer than `max`.
    fn take(counts: &PeerCounts, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut map = counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// An accepted connection and the permits it holds while open.
pub(crate) struct Counted<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
    _peer: Option<PeerSlot>,
    /// Until the peer has sent its first bytes: a connection that says nothing is closed
    /// when this fires, so silent sockets cannot hold every permit.
    first_bytes: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The limits `limit` applies.
pub(crate) struct Limits {
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) max: usize,
    pub(crate) max_per_peer: usize,
    pub(crate) first_bytes_within: Duration,
}

/// The connections of `incoming` that fit in the server's permits and their peer's share;
/// the others are closed on accept. A connection that sends nothing within
/// `first_bytes_within` is closed.
pub(crate) fn limit<S>(
    incoming: S,
    limits: Limits,
) -> impl Stream<Item = Result<Counted<tokio::net::TcpStream>, io::Error>>
where
    S: Stream<Item = Result<tokio::net::TcpStream, io::Error>>,
{
    let peers: PeerCounts = Arc::default();
    let mut last_warning: Option<Instant> = None;
    let mut refused_since_warning: u64 = 0;
    incoming.filter_map(move |accepted| {
        let io = match accepted {
            Err(e) => return std::future::ready(Some(Err(e))),
            Ok(io) => io,
        };
        let peer = match io.peer_addr() {
            Ok(addr) => match PeerSlot::take(&peers, addr.ip().to_canonical(), limits.max_per_peer) {
                Some(slot) => Ok(Some(slot)),
                None => Err("its address holds as many as one peer may (ServerConfig::max_connections_per_peer)"),
            },
            Err(_) => Ok(None),
        };
        let admitted = peer.and_then(|peer| {
            limits
                .permits
                .clone()
                .try_acquire_owned()
                .map(|permit| (permit, peer))
                .map_err(|_| "the server holds as many as it may (ServerConfig::max_connections)")
        });
        match admitted {
            Ok((permit, peer)) => std::future::ready(Some(Ok(Counted {
                io,
                _permit: permit,
                _peer: peer,
                first_bytes: Some(Box::pin(tokio::time::sleep(limits.first_bytes_within))),
            }))),
            Err(why) => {
                refused_since_warning = refused_since_warning.saturating_add(1);
                if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    tracing::warn!(
                        max_connections = limits.max,
                        refused = refused_since_warning,
                        "connections refused: {why}"
                    );
                    last_warning = Some(Instant::now());
                    refused_since_warning = 0;
                } else {
                    tracing::debug!(why, "connection refused");
                }
                // Dropping the stream closes it.
                std::future::ready(None)
            }
        }
    })
}

impl Counted<tokio::net::TcpStream> {
    /// The peer's address.
    pub(crate) fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        self.io.peer_addr().ok()
    }

    /// Reads the first bytes without taking them from the stream.
    pub(crate) async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.peek(buf).await
    }
}

/// Where a request came from: plain TCP, or TLS terminated by this server.
pub(crate) fn peer_addr(extensions: &http::Extensions) -> Option<std::net::SocketAddr> {
    extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(tonic::transport::server::TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<crate::tls::PeerInfo>()
                .and_then(|p| p.remote_addr)
        })
}

impl<IO: Connected> Connected for Counted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(deadline) = this.first_bytes.as_mut() {
            match &read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => this.first_bytes = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    tracing::debug!("a connection sent nothing in time; closed");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer sent nothing in time",
                    )));
                }
                _ => {}
            }
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
