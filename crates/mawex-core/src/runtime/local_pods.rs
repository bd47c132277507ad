//! In-process pod sessions: a pod in the master's own process talks to the core directly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use async_trait::async_trait;
use mawex_api::pod::{
    session_backlog, PodConnector, PodHello, PodMessage, PodOutbox, PodSession, Welcome,
};
use mawex_api::ApiError;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::admission::{Admission, Budget};
use super::messages::CoreMsg;

/// Connects pods to a master in the same process. A hello counts against the master's
/// request budget until it is answered, so a flood of hellos cannot grow the inbox.
#[derive(Debug, Clone)]
pub struct LocalPodConnector {
    inbox: std_mpsc::Sender<CoreMsg>,
    admission: Arc<Admission>,
}

impl LocalPodConnector {
    pub(crate) fn new(inbox: std_mpsc::Sender<CoreMsg>, admission: Arc<Admission>) -> Self {
        LocalPodConnector { inbox, admission }
    }
}

fn stopped() -> ApiError {
    ApiError::Unavailable("the master is not running".into())
}

#[async_trait]
impl PodConnector for LocalPodConnector {
    async fn connect(&self, hello: PodHello) -> Result<PodSession, ApiError> {
        let backlog = session_backlog(&hello);
        let (outbox_tx, outbox_rx) = mpsc::channel(backlog);
        let (reply, answer) = oneshot::channel();
        let reply = self.admission.reply(Budget::Request, reply)?;
        self.inbox
            .send(CoreMsg::PodConnect {
                hello,
                outbox: outbox_tx,
                reply,
            })
            .map_err(|_| stopped())?;
        // If this future is dropped while the master registers the pod, the guard still tells
        // the master the session is gone, so its leases do not wait for a timeout.
        let mut guard = PendingSession {
            inbox: self.inbox.clone(),
            answer,
            armed: true,
        };
        let welcome = (&mut guard.answer).await.map_err(|_| stopped())??;
        let outbox = Arc::new(LocalOutbox {
            session: welcome.session,
            inbox: self.inbox.clone(),
            permits: Arc::new(Semaphore::new(backlog)),
            backlog,
            hung_up: AtomicBool::new(false),
        });
        guard.armed = false;
        Ok(PodSession::new(welcome, outbox, outbox_rx))
    }
}

/// A registration in flight: dropped before the welcome arrives, it hangs up the session the
/// master may already have opened.
struct PendingSession {
    inbox: std_mpsc::Sender<CoreMsg>,
    answer: oneshot::Receiver<Result<Welcome, ApiError>>,
    /// Cleared once the session is handed to the pod.
    armed: bool,
}

impl Drop for PendingSession {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(Ok(welcome)) = self.answer.try_recv() {
            let _ = self.inbox.send(CoreMsg::PodDisconnected {
                session: welcome.session,
            });
        }
    }
}

/// The pod side of an in-process session. Dropping it is the pod hanging up.
struct LocalOutbox {
    session: u64,
    inbox: std_mpsc::Sender<CoreMsg>,
    /// As many as the session may have waiting in the core's inbox ([`session_backlog`]).
    permits: Arc<Semaphore>,
    backlog: usize,
    /// Set once the master was told this session is gone (on drop, or after a flood).
    hung_up: AtomicBool,
}

impl LocalOutbox {
    /// Tells the master, once, that this session is gone.
    fn hang_up(&self) {
        if !self.hung_up.swap(true, Ordering::AcqRel) {
            let _ = self.inbox.send(CoreMsg::PodDisconnected {
                session: self.session,
            });
        }
    }
}

impl PodOutbox for LocalOutbox {
    fn send(&self, message: PodMessage) -> Result<(), ApiError> {
        if self.hung_up.load(Ordering::Acquire) {
            return Err(ApiError::Unavailable("the session is closed".into()));
        }
        // Live output is what gives way when the master is busy: dropped once half the
        // session's backlog waits, so that it never costs the session (nor crowds out the
        // results and heartbeats that need the rest).
        if matches!(message, PodMessage::Output { .. })
            && self.permits.available_permits() < self.backlog / 2
        {
            return Ok(());
        }
        // A pod that sends faster than the master handles its messages would grow the
        // inbox without end: it is disconnected instead (what it holds is re-reported, or
        // runs elsewhere, as after any disconnect).
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.hang_up();
            return Err(ApiError::ResourceExhausted(format!(
                "the pod sent {} messages the master had not handled yet; session closed",
                self.backlog
            )));
        };
        self.inbox
            .send(CoreMsg::Pod {
                session: self.session,
                message,
                _permit: permit,
            })
            .map_err(|_| stopped())
    }
}

impl Drop for LocalOutbox {
    fn drop(&mut self) {
        self.hang_up();
    }
}
