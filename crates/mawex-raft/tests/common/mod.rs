//! What the tests of the Raft stores share.

use mawex_api::{GroupName, TaskSpec, Timestamp};
use mawex_core::Event;
use mawex_raft::Batch;

/// A batch of `tasks` tasks of `group` accepted.
pub(crate) fn accepted(group: &GroupName, tasks: usize) -> Batch {
    Batch {
        events: (0..tasks)
            .map(|_| Event::TaskAccepted {
                spec: TaskSpec::new(group.clone(), "h", &b"payload"[..]).into(),
                at: Timestamp(5),
            })
            .collect(),
    }
}
