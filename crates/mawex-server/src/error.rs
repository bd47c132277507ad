use std::net::SocketAddr;

/// Errors of the gRPC server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A setting is out of range; the message says which and why.
    #[error("invalid server configuration: {0}")]
    Config(String),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("the gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
    /// A token file or token set is wrong; the message says which entry and why.
    #[error("tokens: {0}")]
    Tokens(String),
    /// The server's task ended abnormally (it panicked).
    #[error("the gRPC server's task failed: {0}")]
    Task(String),
}
