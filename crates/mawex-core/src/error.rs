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
    /// A journal record is damaged (short, failing its checksum, empty, or out of sequence).
    ///
    /// The storage writes each record whole or not at all, so a damaged record is not an
    /// interrupted write: it may hold work that was acknowledged. Start-up refuses to guess:
    /// restore the journal from a copy, or drop the record and everything after it with
    /// [`Journal::repair`](crate::Journal::repair), which logs what it drops.
    #[error(
        "journal record at sequence {seq} is damaged ({reason}); refusing to start, since it \
         may hold acknowledged work: restore the journal from a copy, or repair it (which \
         drops this record and every record after it)"
    )]
    CorruptJournal {
        /// Sequence number (key) of the bad record.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A journal record is intact but this version cannot read it (a newer format, say).
    /// Neither start-up nor a repair drops it: run a version that reads it.
    #[error("journal record at sequence {seq} is intact but unreadable by this version ({reason}); refusing to start")]
    UnreadableJournal {
        /// Sequence number (key) of the record.
        seq: u64,
        /// Why it cannot be read.
        reason: String,
    },
    /// The journal's disk has too little space for a write, which was refused before it
    /// began (so the journal is intact and closes cleanly). Fatal, like any storage failure:
    /// the master stops; free space and start it again.
    #[error(
        "journal {operation} refused: no space left on the journal's disk ({free} bytes free, \
         {reserve} kept in reserve, {needed} needed); free space and restart the master"
    )]
    DiskFull {
        /// What was refused: "write" or "snapshot".
        operation: &'static str,
        /// Bytes free on the journal's filesystem.
        free: u64,
        /// Bytes the journal keeps free (`SledJournal::with_free_space_reserve`).
        reserve: u64,
        /// Bytes the refused operation would have written.
        needed: u64,
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
