/// Errors of the pod runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A configuration value is out of range; the message says which and why.
    #[error("invalid pod configuration: {0}")]
    Config(String),
    /// The pod's task ended abnormally (it panicked).
    #[error("the pod's task failed: {0}")]
    Task(String),
}
