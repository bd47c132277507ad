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
    /// The state machine's state is lent to a master's core already (see
    /// [`MasterStateMachine::lend`](crate::MasterStateMachine::lend)).
    #[error("the state machine's state is lent to a master already")]
    Lent,
    /// This node does not lead (any longer): a write of the leader's was refused.
    #[error("this master does not lead the cluster{}", match leader { Some(id) => format!(" (node {id} does)"), None => String::new() })]
    NotLeader {
        /// The node that leads, if known.
        leader: Option<u64>,
    },
    /// A membership change that cannot be made as asked (the message names the node).
    #[error("membership: {0}")]
    Membership(String),
    /// openraft failed or refused a request for a reason other than leadership.
    #[error("raft: {0}")]
    Raft(String),
    /// The master on top of the log did not start or stopped with an error.
    #[error("the master failed: {0}")]
    Master(#[source] mawex_core::CoreError),
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
