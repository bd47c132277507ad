use mawex_api::ApiError;

/// Errors of the master and pod runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// A configuration value is out of range; the message says which and why.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The journal's storage failed. Fatal: the master stops, and the journal is the truth.
    #[error("journal storage failed: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A journal record failed its checksum or decode, with good records after it.
    /// Start-up refuses to guess: repair or restore the journal.
    #[error("journal record at sequence {seq} is corrupt ({reason}) and is followed by good records; refusing to start")]
    CorruptJournal {
        /// Sequence number (key) of the bad record.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The journal's snapshot is unreadable.
    #[error("journal snapshot is corrupt: {0}")]
    CorruptSnapshot(String),
    /// A record could not be encoded (a bug: every event is encodable).
    #[error("could not encode a journal record: {0}")]
    Encode(String),
    /// A subscriber of the committed-batch feed fell behind by `missed` batches, which are
    /// gone: re-read the state (`Master::read_state`) and go on from there.
    #[error("the committed-batch feed dropped {missed} batches this subscriber had not read")]
    Lagged {
        /// Batches dropped.
        missed: u64,
    },
    /// The master's core is not running.
    #[error("the master is stopped")]
    Stopped,
    /// The master's core thread could not be started or ended abnormally.
    #[error("the master's core thread failed: {0}")]
    Thread(String),
    /// A request was refused.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl From<sled::Error> for CoreError {
    fn from(e: sled::Error) -> Self {
        CoreError::Storage(Box::new(e))
    }
}

impl From<std::io::Error> for CoreError {
    fn from(e: std::io::Error) -> Self {
        CoreError::Storage(Box::new(e))
    }
}
