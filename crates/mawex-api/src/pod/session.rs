//! The contract between a pod and its transport: a connector opens sessions, a session is an
//! outbox towards the master and an inbox from it. In-process and gRPC transports implement
//! it; the pod runtime only sees this.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{MasterMessage, PodHello, PodMessage, Welcome, MAX_POD_PREFETCH, MAX_POD_SLOTS};
use crate::error::ApiError;

/// Where a pod sends its messages. Implementations must not block.
pub trait PodOutbox: Send + Sync + 'static {
    /// Sends `message` to the master.
    ///
    /// # Errors
    /// [`ApiError::Unavailable`] when the session is closed.
    fn send(&self, message: PodMessage) -> Result<(), ApiError>;
}

/// One registered connection of a pod to a master.
#[non_exhaustive]
pub struct PodSession {
    /// The master's answer to the hello.
    pub welcome: Welcome,
    /// Messages to the master.
    pub outbox: Arc<dyn PodOutbox>,
    /// Messages from the master; closed when the master drops the session. Bounded: a
    /// master drops the session of a pod that falls [`session_backlog`] messages behind.
    pub inbox: mpsc::Receiver<MasterMessage>,
}

/// How many messages a master queues for a pod's session before it gives up on the pod (it
/// does not read its stream) and closes the session: room for a cancel of everything the
/// pod may hold, twice over, and as many batches of acks and assignments again. A pod that
/// reads never comes close; one that never reads costs the master this much at most.
pub fn session_backlog(hello: &PodHello) -> usize {
    let slots = hello.slots.min(MAX_POD_SLOTS) as usize;
    // An adaptive pod may be leased up to its cap, which it sends apart from `prefetch`.
    let prefetch = hello
        .prefetch
        .max(hello.adaptive_prefetch)
        .min(MAX_POD_PREFETCH) as usize;
    2 * (slots + prefetch) + MIN_SESSION_BACKLOG
}

/// The part of [`session_backlog`] that does not depend on the pod's capacity.
pub const MIN_SESSION_BACKLOG: usize = 1024;

impl PodSession {
    /// A session from its parts (for transports outside this crate).
    pub fn new(
        welcome: Welcome,
        outbox: Arc<dyn PodOutbox>,
        inbox: mpsc::Receiver<MasterMessage>,
    ) -> Self {
        PodSession {
            welcome,
            outbox,
            inbox,
        }
    }
}

impl std::fmt::Debug for PodSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodSession")
            .field("welcome", &self.welcome)
            .finish_non_exhaustive()
    }
}

/// Opens sessions to a master: in-process, or over the network.
#[async_trait]
pub trait PodConnector: Send + Sync + 'static {
    /// Registers the pod and opens a session.
    ///
    /// # Errors
    /// `Unavailable` when the master cannot be reached, `InvalidArgument` when it refuses
    /// the hello.
    async fn connect(&self, hello: PodHello) -> Result<PodSession, ApiError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GroupName, PodId};

    #[test]
    fn the_backlog_covers_an_adaptive_pods_cap() {
        let hello = |prefetch: u32, adaptive: u32| {
            let mut h = PodHello::new(
                PodId::new("p").expect("valid"),
                vec![GroupName::new("g").expect("valid")],
            );
            h.slots = 2;
            h.prefetch = prefetch;
            h.adaptive_prefetch = adaptive;
            h
        };
        assert_eq!(session_backlog(&hello(0, 0)), 4 + MIN_SESSION_BACKLOG);
        assert_eq!(
            session_backlog(&hello(0, 1024)),
            session_backlog(&hello(1024, 0))
        );
        assert_eq!(
            session_backlog(&hello(0, u32::MAX)),
            2 * (2 + MAX_POD_PREFETCH as usize) + MIN_SESSION_BACKLOG
        );
    }
}
