//! Client requests and answers.

use crate::convert::task::error_kind_filter;
use crate::convert::{in_field, invalid, task_id, task_state};
use crate::error::ApiError;
use crate::ids::GroupName;
use crate::proto;
use crate::proxy::{CancelAck, ListQuery, SubmitAck, TaskPage};
use crate::task::TaskState;
use crate::time::Timestamp;

#[doc(hidden)]
impl From<SubmitAck> for proto::SubmitResponse {
    fn from(a: SubmitAck) -> Self {
        proto::SubmitResponse {
            id: a.id.to_string(),
            created: a.created,
            deduplicated: a.deduplicated,
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::SubmitResponse> for SubmitAck {
    type Error = ApiError;

    fn try_from(a: proto::SubmitResponse) -> Result<Self, ApiError> {
        let id = task_id("ack.id", &a.id)?;
        Ok(if a.deduplicated {
            SubmitAck::duplicate_of(id)
        } else {
            SubmitAck::new(id, a.created)
        })
    }
}

#[doc(hidden)]
impl From<CancelAck> for proto::CancelResponse {
    fn from(a: CancelAck) -> Self {
        match a {
            CancelAck::Cancelled => proto::CancelResponse {
                cancelled: true,
                state: proto::TaskState::Cancelled as i32,
            },
            CancelAck::AlreadyFinished(state) => proto::CancelResponse {
                cancelled: false,
                state: proto::TaskState::from(state) as i32,
            },
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::CancelResponse> for CancelAck {
    type Error = ApiError;

    fn try_from(a: proto::CancelResponse) -> Result<Self, ApiError> {
        if a.cancelled {
            return Ok(CancelAck::Cancelled);
        }
        let state: TaskState = task_state("cancel.state", a.state)?
            .ok_or_else(|| invalid("cancel.state is required"))?;
        Ok(CancelAck::AlreadyFinished(state))
    }
}

#[doc(hidden)]
impl From<ListQuery> for proto::ListRequest {
    fn from(q: ListQuery) -> Self {
        proto::ListRequest {
            group: q.group.map(|g| g.to_string()),
            state: q
                .state
                .map_or(proto::TaskState::Unspecified, proto::TaskState::from)
                as i32,
            after: q.after.map(|id| id.to_string()),
            limit: u32::try_from(q.limit).unwrap_or(u32::MAX),
            omit_bodies: q.omit_bodies,
            handler: q.handler,
            dedup_key: q.dedup_key,
            fairness_key: q.fairness_key,
            error_text: q.error_text,
            error_kind: q
                .error_kind
                .map_or(proto::ErrorKind::Unspecified, proto::ErrorKind::from)
                as i32,
            payload_contains: q.payload_contains,
            submitted_from_ms: q.submitted_from.map(|t| t.0),
            submitted_before_ms: q.submitted_before.map(|t| t.0),
            newest_first: q.newest_first,
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::ListRequest> for ListQuery {
    type Error = ApiError;

    fn try_from(r: proto::ListRequest) -> Result<Self, ApiError> {
        if r.error_kind != 0 && error_kind_filter(r.error_kind).is_none() {
            return Err(invalid(format!(
                "list.error_kind: unknown error kind {}",
                r.error_kind
            )));
        }
        Ok(ListQuery {
            group: r
                .group
                .map(|g| GroupName::new(g).map_err(in_field("list.group")))
                .transpose()?,
            state: task_state("list.state", r.state)?,
            after: r.after.map(|a| task_id("list.after", &a)).transpose()?,
            limit: if r.limit == 0 {
                ListQuery::default().limit
            } else {
                r.limit as usize
            },
            omit_bodies: r.omit_bodies,
            handler: r.handler,
            dedup_key: r.dedup_key,
            fairness_key: r.fairness_key,
            error_text: r.error_text,
            error_kind: error_kind_filter(r.error_kind),
            payload_contains: r.payload_contains,
            submitted_from: r.submitted_from_ms.map(Timestamp),
            submitted_before: r.submitted_before_ms.map(Timestamp),
            newest_first: r.newest_first,
        })
    }
}

#[doc(hidden)]
impl From<TaskPage> for proto::ListResponse {
    fn from(p: TaskPage) -> Self {
        proto::ListResponse {
            tasks: p.tasks.into_iter().map(Into::into).collect(),
            next: p.next.map(|id| id.to_string()),
            searched: true,
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::ListResponse> for TaskPage {
    type Error = ApiError;

    fn try_from(r: proto::ListResponse) -> Result<Self, ApiError> {
        Ok(TaskPage::new(
            r.tasks
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            r.next.map(|n| task_id("list.next", &n)).transpose()?,
        ))
    }
}
