//! Which role each RPC needs: one table, so that a call without a rule is refused and a test
//! over the service descriptors finds it.

use super::tokens::Role;

/// The RPCs a `client` token may call; an `admin` token may call them too.
const CLIENT: &[&str] = &[
    "/mawex.v1.Master/Submit",
    "/mawex.v1.Master/SubmitBatch",
    "/mawex.v1.Master/Get",
    "/mawex.v1.Master/Cancel",
    "/mawex.v1.Master/AwaitResult",
    "/mawex.v1.Master/List",
    "/mawex.v1.Master/StreamResults",
    "/mawex.v1.Master/SubmitGraph",
    "/mawex.v1.Master/GetGraph",
    "/mawex.v1.Master/CancelGraph",
    "/mawex.v1.Master/GetOutput",
];

/// The RPCs only an `admin` token may call.
const ADMIN: &[&str] = &[
    "/mawex.v1.Master/FailedSummary",
    "/mawex.v1.Master/RetryFailed",
    "/mawex.v1.Master/PurgeFailed",
    "/mawex.v1.Master/ConfigureGroup",
    "/mawex.v1.Master/GetGroupSettings",
    "/mawex.v1.Master/UpdatePending",
    "/mawex.v1.Master/CreateSchedule",
    "/mawex.v1.Master/ListSchedules",
    "/mawex.v1.Master/PauseSchedule",
    "/mawex.v1.Master/DeleteSchedule",
    "/mawex.v1.Master/FireBroadcast",
    "/mawex.v1.Master/PlanBroadcast",
    "/mawex.v1.Master/GetBroadcast",
    "/mawex.v1.Master/ListBroadcasts",
    "/mawex.v1.Master/WaitBroadcast",
    "/mawex.v1.Master/ListBroadcastLocks",
    "/mawex.v1.Master/ClearBroadcastLock",
    "/mawex.v1.Master/ListPods",
    "/mawex.v1.Master/ListGroups",
    "/mawex.v1.Master/History",
    "/mawex.v1.Master/DrainPod",
];

/// The RPCs that change nothing: a `viewer` token may call these (and only these), whatever
/// role they need otherwise.
const READS: &[&str] = &[
    "/mawex.v1.Master/Get",
    "/mawex.v1.Master/AwaitResult",
    "/mawex.v1.Master/List",
    "/mawex.v1.Master/StreamResults",
    "/mawex.v1.Master/FailedSummary",
    "/mawex.v1.Master/GetGroupSettings",
    "/mawex.v1.Master/ListSchedules",
    "/mawex.v1.Master/PlanBroadcast",
    "/mawex.v1.Master/GetBroadcast",
    "/mawex.v1.Master/ListBroadcasts",
    "/mawex.v1.Master/WaitBroadcast",
    "/mawex.v1.Master/ListBroadcastLocks",
    "/mawex.v1.Master/ListPods",
    "/mawex.v1.Master/ListGroups",
    "/mawex.v1.Master/History",
    "/mawex.v1.Master/GetGraph",
    "/mawex.v1.Master/GetOutput",
];

/// Whether `path` changes nothing (a `viewer` token may call it).
pub(crate) fn is_read(path: &str) -> bool {
    READS.contains(&path)
}

/// The RPCs only a `pod` token may call.
const POD: &[&str] = &["/mawex.v1.PodLink/Session"];

/// The role an RPC (by its HTTP/2 path) needs, or `None` for a path without a rule.
pub(crate) fn needed(path: &str) -> Option<Role> {
    if CLIENT.contains(&path) {
        Some(Role::Client)
    } else if ADMIN.contains(&path) {
        Some(Role::Admin)
    } else if POD.contains(&path) {
        Some(Role::Pod)
    } else {
        None
    }
}

/// May `role` call what needs `needed`?
pub(crate) fn allows(role: Role, needed: Role) -> bool {
    match needed {
        Role::Client => matches!(role, Role::Client | Role::Admin),
        Role::Admin => role == Role::Admin,
        Role::Pod => role == Role::Pod,
        Role::Peer => role == Role::Peer,
        Role::Viewer => matches!(role, Role::Viewer | Role::Client | Role::Admin),
    }
}
