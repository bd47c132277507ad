//! The one error type of this crate.

/// Why a Raft store could not do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftStoreError {
    /// The storage under the store failed (sled, the file system), or a snapshot of the
    /// master's state did not encode or decode.
    #[error("raft storage: {0}")]
    Storage(#[from] mawex_core::CoreError),
    /// Bytes read back are not what was written: short, failing their checksum, or not
    /// decodable by this version.
    #[error("raft storage: {what} is damaged: {reason}")]
    Damaged {
        /// What was read (an entry and its index, the vote, …).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A value does not encode.
    #[error("raft storage: cannot encode {what}: {reason}")]
    Encode {
        /// What was written.
        what: String,
        /// Why it failed.
        reason: String,
    },
}

impl From<sled::Error> for RaftStoreError {
    fn from(e: sled::Error) -> Self {
        RaftStoreError::Storage(e.into())
    }
}

impl From<RaftStoreError> for std::io::Error {
    fn from(e: RaftStoreError) -> Self {
        let kind = match e {
            RaftStoreError::Damaged { .. }
            | RaftStoreError::Storage(mawex_core::CoreError::CorruptSnapshot(_)) => {
                std::io::ErrorKind::InvalidData
            }
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}
