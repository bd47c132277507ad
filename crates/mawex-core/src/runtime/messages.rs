//! What the core thread can be asked: the closed set of requests and their answer channels.

use std::sync::Arc;

use mawex_api::pod::{MasterMessage, PodHello, PodMessage, Welcome};
use mawex_api::{
    ApiError, BroadcastId, BroadcastLock, BroadcastPage, BroadcastPlan, BroadcastQuery,
    BroadcastSpec, BroadcastView, CancelAck, FailedFilter, GraphAck, GraphId, GroupName,
    GroupSettings, PendingChange, PodId, ResultCursor, ScheduleName, ScheduleSpec, ScheduleView,
    SubmitAck, TaskId, TaskResult, TaskSpec, TaskView,
};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use super::streams::FeedState;
use crate::state::MasterState;

/// Answer channel of a request, with the permit that counts the request against the
/// master's budget (see `admission`) until it is answered or dropped.
pub(crate) struct Reply<T> {
    tx: oneshot::Sender<Result<T, ApiError>>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<T> Reply<T> {
    /// A reply counted by `permit`.
    pub(crate) fn counted(
        tx: oneshot::Sender<Result<T, ApiError>>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Reply {
            tx,
            _permit: Some(permit),
        }
    }

    /// Answers; gives the answer back if the requester is gone. The permit goes first, so
    /// that a caller who hears the answer finds the budget already given back.
    pub(crate) fn send(self, value: Result<T, ApiError>) -> Result<(), Result<T, ApiError>> {
        let Reply { tx, _permit } = self;
        drop(_permit);
        tx.send(value)
    }

    /// Has the requester stopped waiting?
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A reply counted against no budget: requests the master makes of itself at start.
impl<T> From<oneshot::Sender<Result<T, ApiError>>> for Reply<T> {
    fn from(tx: oneshot::Sender<Result<T, ApiError>>) -> Self {
        Reply { tx, _permit: None }
    }
}

/// Everything the core loop can be asked. Closed: adding a request means adding a variant.
pub(crate) enum CoreMsg {
    Submit {
        specs: Vec<TaskSpec>,
        reply: Reply<Vec<SubmitAck>>,
    },
    Get {
        id: TaskId,
        reply: Reply<TaskView>,
    },
    Cancel {
        id: TaskId,
        reply: Reply<CancelAck>,
    },
    AwaitResult {
        id: TaskId,
        reply: Reply<TaskResult>,
    },
    Subscribe {
        group: GroupName,
        after: Option<ResultCursor>,
        results: mpsc::UnboundedSender<Result<TaskResult, ApiError>>,
        feed: Arc<FeedState>,
        reply: Reply<()>,
    },
    RetryFailed {
        filter: FailedFilter,
        reply: Reply<u64>,
    },
    PurgeFailed {
        filter: FailedFilter,
        reply: Reply<u64>,
    },
    ConfigureGroup {
        group: GroupName,
        settings: GroupSettings,
        reply: Reply<()>,
    },
    GroupSettings {
        group: GroupName,
        reply: Reply<GroupSettings>,
    },
    UpdatePending {
        ids: Vec<TaskId>,
        change: PendingChange,
        reply: Reply<u64>,
    },
    CreateSchedule {
        /// Boxed: a schedule (with its task template) is much larger than other requests.
        spec: Box<ScheduleSpec>,
        reply: Reply<()>,
    },
    ListSchedules {
        reply: Reply<Vec<ScheduleView>>,
    },
    PauseSchedule {
        name: ScheduleName,
        paused: bool,
        reply: Reply<()>,
    },
    DeleteSchedule {
        name: ScheduleName,
        reply: Reply<()>,
    },
    FireBroadcast {
        spec: Box<BroadcastSpec>,
        reply: Reply<BroadcastView>,
    },
    PlanBroadcast {
        spec: Box<BroadcastSpec>,
        reply: Reply<BroadcastPlan>,
    },
    GetBroadcast {
        id: BroadcastId,
        reply: Reply<BroadcastView>,
    },
    ListBroadcasts {
        query: BroadcastQuery,
        reply: Reply<BroadcastPage>,
    },
    AwaitBroadcast {
        id: BroadcastId,
        reply: Reply<BroadcastView>,
    },
    BroadcastLocks {
        reply: Reply<Vec<BroadcastLock>>,
    },
    ClearBroadcastLock {
        app: String,
        reply: Reply<Option<BroadcastId>>,
    },
    DrainPod {
        pod: PodId,
        reply: Reply<bool>,
    },
    /// A graph, validated and ordered by the caller (dependencies first).
    SubmitGraph {
        id: GraphId,
        tasks: Vec<(String, TaskSpec)>,
        reply: Reply<GraphAck>,
    },
    CancelGraph {
        id: GraphId,
        reply: Reply<u64>,
    },
    TaskOutput {
        id: TaskId,
        after: u64,
        reply: Reply<mawex_api::TaskOutput>,
    },
    PodConnect {
        hello: PodHello,
        outbox: mpsc::Sender<MasterMessage>,
        reply: Reply<Welcome>,
    },
    Pod {
        session: u64,
        message: PodMessage,
        /// One of the session's permits, given back when the core has handled the message:
        /// what bounds the messages of one pod waiting in the inbox.
        _permit: OwnedSemaphorePermit,
    },
    PodDisconnected {
        session: u64,
    },
    /// Wake up and run timers now (tests with a manual clock).
    Tick,
    /// Stop cleanly: finish the batch, snapshot, close.
    Shutdown {
        done: oneshot::Sender<()>,
    },
    /// A copy of the committed state's durable parts (`MasterState::durable_copy`: no
    /// indexes), answered between batches.
    CopyState {
        reply: oneshot::Sender<(u64, MasterState)>,
    },
    /// Stop at once as a crash would: the current batch is not committed, no snapshot.
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    Halt,
}
