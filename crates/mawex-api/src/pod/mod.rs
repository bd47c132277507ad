//! Messages between a pod and the master, and the session contract that carries them.
//!
//! Transport-agnostic: in-process pods exchange these values over channels, remote pods over
//! one bidirectional gRPC stream that carries exactly these messages.

mod session;

pub use session::{session_backlog, PodConnector, PodOutbox, PodSession, MIN_SESSION_BACKLOG};

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::failure::TaskError;
use crate::ids::{Attempt, GroupName, PodId, TaskId};
use crate::task::TaskSpec;

/// Most slots a pod may declare.
pub const MAX_POD_SLOTS: u32 = 4096;
/// Most leases a pod may hold queued beyond its slots.
pub const MAX_POD_PREFETCH: u32 = 65_536;

/// One attempt of one task: the fencing token of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptRef {
    /// The task.
    pub task: TaskId,
    /// Its attempt.
    pub attempt: Attempt,
}

/// The first message of a pod on a new connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PodHello {
    /// The pod's identity; a second registration under the same id replaces the first.
    pub pod: PodId,
    /// Groups the pod hosts a worker for.
    pub groups: Vec<GroupName>,
    /// How many attempts it runs at once (1: strictly one after another).
    pub slots: u32,
    /// How many more leases it holds queued beyond its slots, to hide the round trip to the
    /// master. 0 keeps dispatch strict: a task is leased only when a slot is free.
    pub prefetch: u32,
    /// If not 0: the master sizes the queue beyond the slots to what the pod starts in
    /// 10 ms at the pace it finished attempts lately (none for a fresh pod or long tasks),
    /// up to this many (and never below `prefetch`). A field of its own, so that a master
    /// that does not know it sees `prefetch` only (0 from an adaptive pod: strict), and
    /// never a large fixed queue.
    #[serde(default)]
    pub adaptive_prefetch: u32,
    /// Free-form labels (zone, machine type, ...).
    pub labels: BTreeMap<String, String>,
    /// Address other pods can reach it at, if any.
    pub address: Option<String>,
    /// Attempts it still holds from an earlier connection, for the master to re-adopt.
    pub holding: Vec<AttemptRef>,
    /// It was told to drain ([`MasterMessage::Drain`]) and takes no new work until it
    /// restarts: the master gives it none either.
    #[serde(default)]
    pub draining: bool,
    /// Who the pod proved it is, set by the server that authenticated it and never taken
    /// from the wire. The first credential to register a pod id owns it while the state
    /// names the pod: a hello whose credential does not match is refused. `None` (an
    /// in-process pod, or a server without tokens or client certificates) is not checked.
    #[serde(skip)]
    pub credential: Option<PodCredential>,
}

/// Who a pod proved it is, as the server that authenticated it saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PodCredential {
    /// The id of its token.
    pub token: Option<String>,
    /// The subject of its client certificate (mutual TLS), with its kind: `uri:…`, `dns:…`
    /// or `cn:…`. It names one pod where a token may be shared by a fleet, so it decides
    /// when both the owner of an id and a hello have one.
    pub certificate: Option<String>,
    /// How many pods of its token may be connected at once; `None`: only the master's own
    /// `max_pods`.
    pub token_max_pods: Option<u32>,
}

impl PodCredential {
    /// A credential of token `id`.
    pub fn token(id: impl Into<String>) -> Self {
        PodCredential {
            token: Some(id.into()),
            ..PodCredential::default()
        }
    }

    /// A credential of a client certificate's `subject` (`uri:…`, `dns:…` or `cn:…`).
    pub fn certificate(subject: impl Into<String>) -> Self {
        PodCredential {
            certificate: Some(subject.into()),
            ..PodCredential::default()
        }
    }

    /// The same credential with a client certificate's `subject` too.
    pub fn with_certificate(mut self, subject: impl Into<String>) -> Self {
        self.certificate = Some(subject.into());
        self
    }

    /// The same credential, whose token may have at most `n` pods connected.
    pub fn with_token_max_pods(mut self, n: u32) -> Self {
        self.token_max_pods = Some(n);
        self
    }
}

impl std::fmt::Display for PodCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.token, &self.certificate) {
            (Some(t), Some(c)) => write!(f, "token {t} with certificate {c}"),
            (Some(t), None) => write!(f, "token {t}"),
            (None, Some(c)) => write!(f, "certificate {c}"),
            (None, None) => f.write_str("no credential"),
        }
    }
}

impl PodHello {
    /// A hello for `pod` serving `groups` with one slot and no prefetch.
    pub fn new(pod: PodId, groups: Vec<GroupName>) -> Self {
        PodHello {
            pod,
            groups,
            slots: 1,
            prefetch: 0,
            adaptive_prefetch: 0,
            labels: BTreeMap::new(),
            address: None,
            holding: Vec::new(),
            draining: false,
            credential: None,
        }
    }
}

/// The master's answer to a [`PodHello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Welcome {
    /// Identifies this connection; messages of a replaced connection are ignored.
    pub session: u64,
    /// How often the pod should heartbeat.
    pub heartbeat_interval: Duration,
    /// After this long without a heartbeat the pod's leases expire.
    pub lease_timeout: Duration,
    /// The master acknowledges each report ([`MasterMessage::Ack`]) once it is durable; the
    /// pod keeps reports (and re-sends them after a reconnect) until then. A master that
    /// does not say so gets the older behaviour: a report counts as delivered once sent.
    pub acks_reports: bool,
    /// The term the master leads in (a cluster's Raft term; 0 for a master with no
    /// election). Every message of the session is of this term. A pod refuses a session of
    /// a lower term than one it has seen, so a deposed leader cannot assign or cancel.
    pub term: u64,
    /// The master takes live output ([`PodMessage::Output`]); an older one does not, and
    /// the pod sends it none.
    pub takes_output: bool,
}

impl Welcome {
    /// A welcome for `session`, of term 0.
    pub fn new(session: u64, heartbeat_interval: Duration, lease_timeout: Duration) -> Self {
        Welcome {
            session,
            heartbeat_interval,
            lease_timeout,
            acks_reports: false,
            term: 0,
            takes_output: false,
        }
    }
}

/// A lease: run this attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The attempt being leased.
    pub attempt: AttemptRef,
    /// What to run.
    pub spec: TaskSpec,
    /// Environment of this attempt beyond the task's (a broadcast target's source, say):
    /// child sandboxes pass it to the process, in-process handlers read it from their input.
    pub env: BTreeMap<String, String>,
    /// The results of the tasks it runs after that pass their output (see
    /// [`crate::Dependency::pass_output`]), in the order the spec names them: the same on
    /// every attempt, from whichever master assigns it.
    pub inputs: Vec<crate::TaskResult>,
    /// Where the task stood in the master's queue; `None` from a master that does not say.
    #[serde(default)]
    pub rank: Option<QueueRank>,
}

/// Where a task stood in its master's queue when it was leased. A pod starts the leases it
/// holds lowest rank first (then in the order they came), so that leasing ahead does not
/// change the order tasks start in: a task the master ranks ahead of leases it gave before
/// (one of a higher priority, a workflow's task taking the place of the dependency that
/// just finished) does not wait behind them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QueueRank {
    /// The task's priority: higher first.
    pub priority: i32,
    /// Then its fairness round: lower first.
    pub round: u64,
    /// Then the order the master accepted it in: lower first.
    pub order: u64,
}

impl QueueRank {
    /// Behind every other rank: where a lease the master did not rank goes.
    pub const LAST: QueueRank = QueueRank {
        priority: i32::MIN,
        round: u64::MAX,
        order: u64::MAX,
    };
}

impl Ord for QueueRank {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let key = |r: &QueueRank| (std::cmp::Reverse(r.priority), r.round, r.order);
        key(self).cmp(&key(other))
    }
}

impl PartialOrd for QueueRank {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What a pod process uses, reported with its heartbeats for monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResourceUsage {
    /// CPU time per wall-clock time since the last report, in thousandths (1000 = one core).
    pub cpu_permille: u32,
    /// Resident memory in bytes.
    pub memory_bytes: u64,
}

/// Messages a pod sends after its hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PodMessage {
    /// I am alive; these are the attempts I hold (queued, running, or finished with the
    /// result not yet delivered). Renews all my leases. A lease from an `Assign` up to
    /// `received` that is missing here is lost and runs again elsewhere.
    Heartbeat {
        /// Attempts held.
        holding: Vec<AttemptRef>,
        /// The `batch` of the last `Assign` this session received (0 if none).
        received: u64,
        /// The pod's resource use, if it measures it.
        usage: Option<ResourceUsage>,
    },
    /// An attempt finished.
    Finished {
        /// Which attempt.
        attempt: AttemptRef,
        /// Its output or error.
        outcome: Result<Bytes, TaskError>,
    },
    /// I give these attempts back unfinished (shutting down): run them elsewhere now.
    Returned {
        /// Attempts handed back.
        attempts: Vec<AttemptRef>,
    },
    /// I am shutting down: lease me nothing more; results and returns follow.
    Drain,
    /// Lines an attempt printed or logged since the last such message (sent only to a
    /// master that [`Welcome::takes_output`]; before the attempt's `Finished`).
    Output {
        /// Which attempt.
        attempt: AttemptRef,
        /// The lines, oldest first (at most [`crate::MAX_OUTPUT_LINES_PER_MESSAGE`]).
        lines: Vec<crate::OutputLine>,
    },
    /// I am leaving: whatever I still hold runs elsewhere.
    Leave,
}

/// Messages the master sends to a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MasterMessage {
    /// New leases, in the order they should start.
    Assign {
        /// Numbers the assignments of a session in increasing order; echoed in heartbeats.
        batch: u64,
        /// The leases.
        assignments: Vec<Assignment>,
        /// More `Assign`s of the same batch follow (a batch too large for one message).
        more: bool,
    },
    /// Stop this attempt: it was cancelled, or it is no longer yours.
    Cancel(AttemptRef),
    /// The reports (results, returns) of these attempts are durable, or were stale: forget
    /// them.
    Ack(Vec<AttemptRef>),
    /// Take no new work until you restart (an operator drains you): hand back what is
    /// queued, finish what runs, and say you drain in every hello from now on, so that
    /// another master (after a fail-over or a restart) keeps you drained.
    Drain,
}
