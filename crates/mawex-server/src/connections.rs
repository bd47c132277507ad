//! The bound on accepted connections: each holds a permit until it closes, and a connection
//! accepted with none left is closed at once (the client sees a reset and retries), so a
//! flood of connections cannot grow the server's tasks and buffers without limit.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

/// How often a refused connection is reported at `warn` (the others go to `debug`).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// An accepted connection and the permit it holds while open.
pub(crate) struct Counted<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
}

/// The connections of `incoming` that fit in `permits`; the others are closed on accept.
pub(crate) fn limit<IO, S>(
    incoming: S,
    permits: Arc<Semaphore>,
    max: usize,
) -> impl Stream<Item = Result<Counted<IO>, io::Error>>
where
    S: Stream<Item = Result<IO, io::Error>>,
{
    let mut last_warning: Option<Instant> = None;
    let mut refused_since_warning: u64 = 0;
    incoming.filter_map(move |accepted| {
        let admitted = match accepted {
            Err(e) => Some(Err(e)),
            Ok(io) => match permits.clone().try_acquire_owned() {
                Ok(permit) => Some(Ok(Counted {
                    io,
                    _permit: permit,
                })),
                Err(_) => {
                    refused_since_warning = refused_since_warning.saturating_add(1);
                    if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                        tracing::warn!(
                            max_connections = max,
                            refused = refused_since_warning,
                            "connections refused: the server holds as many as it may \
                             (ServerConfig::max_connections)"
                        );
                        last_warning = Some(Instant::now());
                        refused_since_warning = 0;
                    } else {
                        tracing::debug!(max_connections = max, "connection refused");
                    }
                    // Dropping the stream closes it.
                    None
                }
            },
        };
        std::future::ready(admitted)
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
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
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
